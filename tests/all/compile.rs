//! `wasm-run compile`: artifacts that `run`, `serve` and the library load
//! without compiling, and refusal of artifacts from another version or
//! engine configuration.

use std::path::{Path, PathBuf};
use wasm_run::{Engine, EngineConfig, Error, Guest, Invocation, OutcomeKind, Output as Out};
use wasm_run_tests::{Target, guest, http_guest};

use crate::serve::{ServeGuard, get};
use crate::wasm_run;

fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn compile(module: &Path, out: &Path) {
    let o = wasm_run(&[
        "compile",
        module.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

#[test]
fn compiled_modules_and_components_run_like_their_sources() {
    for (target, name) in [
        (Target::P1, "hello-p1.cwasm"),
        (Target::P2, "hello-p2.cwasm"),
    ] {
        let out = artifact(name);
        compile(&guest("hello", target), &out);
        let bytes = std::fs::read(&out).unwrap();
        assert!(!bytes.starts_with(b"\0asm"), "an artifact, not wasm");
        let o = wasm_run(&["run", "--report", "-", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello from wasm-run!\n");
        assert!(String::from_utf8_lossy(&o.stderr).contains(r#""outcome":"exited""#));
    }
    // Limits hold for artifacts too.
    let bomb = artifact("bomb.cwasm");
    compile(&guest("bomb", Target::P1), &bomb);
    let o = wasm_run(&["run", "--max-memory", "16MiB", bomb.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(137), "{o:?}");
}

#[tokio::test]
async fn serve_loads_a_compiled_http_component() {
    let out = artifact("http.cwasm");
    compile(&http_guest(), &out);
    let server = ServeGuard::start(&[out.to_str().unwrap()]);
    let hello = get(server.addr, "/hello").await;
    assert_eq!(hello.status, 200);
    assert_eq!(hello.text(), "Hello from wasm-run over wasi:http!\n");
}

#[test]
fn artifacts_from_another_version_are_refused_with_125() {
    let out = artifact("versioned.cwasm");
    compile(&guest("hello", Target::P1), &out);
    let bytes = std::fs::read(&out).unwrap();
    let ours = wasm_run::engine::artifact_version();
    let theirs = ours.replace("wasm-run ", "wasm-run 9");
    let theirs = &theirs[..ours.len()]; // same length, another version
    let at = bytes
        .windows(ours.len())
        .position(|w| w == ours.as_bytes())
        .expect("the artifact records its version");
    let mut old = bytes.clone();
    old[at..at + ours.len()].copy_from_slice(theirs.as_bytes());
    let old_path = artifact("other-version.cwasm");
    std::fs::write(&old_path, old).unwrap();
    let o = wasm_run(&["run", old_path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(125), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("another wasm-run"), "{stderr}");
    assert!(stderr.contains("other-version.cwasm"), "{stderr}");
}

#[test]
fn artifacts_from_another_engine_configuration_are_refused() {
    let no_fuel = Engine::new(EngineConfig {
        fuel: false,
        ..EngineConfig::default()
    })
    .unwrap();
    let bytes = std::fs::read(guest("hello", Target::P1)).unwrap();
    let artifact = no_fuel.precompile("hello", &bytes).unwrap();
    // The engine that made it loads it...
    assert!(Guest::from_bytes(&no_fuel, "hello", &artifact).is_ok());
    // ...one that meters fuel refuses it.
    let err = Guest::from_bytes(crate::engine(), "hello", &artifact).unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
}

#[tokio::test]
async fn the_library_runs_a_precompiled_guest() {
    let bytes = std::fs::read(guest("hello", Target::P2)).unwrap();
    let artifact = crate::engine().precompile("hello", &bytes).unwrap();
    let g = Guest::from_bytes(crate::engine(), "hello.cwasm", &artifact).unwrap();
    let outcome = g
        .run(Invocation {
            stdout: Out::Capture,
            ..Invocation::default()
        })
        .await
        .unwrap();
    assert_eq!(outcome.kind, OutcomeKind::Exited(0));
    assert_eq!(crate::stdout_of(&outcome), "Hello from wasm-run!\n");
}

#[test]
fn compile_errors_and_usage() {
    let bad = artifact("not-wasm.txt");
    std::fs::write(&bad, "hello").unwrap();
    let o = wasm_run(&["compile", bad.to_str().unwrap(), "-o", "/dev/null"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not-wasm.txt"));
    let o = wasm_run(&["compile", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "-o is required");
}
