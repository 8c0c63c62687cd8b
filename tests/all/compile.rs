//! `wasm-run compile`: artifacts that `run`, `serve` and the library load
//! without compiling — only when trusted explicitly (`--allow-precompiled`,
//! the `unsafe` library constructors), since an artifact is native code —
//! and refusal of artifacts from another version or engine configuration.

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
        let o = wasm_run(&[
            "run",
            "--allow-precompiled",
            "--report",
            "-",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello from wasm-run!\n");
        assert!(String::from_utf8_lossy(&o.stderr).contains(r#""outcome":"exited""#));
    }
    // Limits hold for artifacts too.
    let bomb = artifact("bomb.cwasm");
    compile(&guest("bomb", Target::P1), &bomb);
    let o = wasm_run(&[
        "run",
        "--allow-precompiled",
        "--max-memory",
        "16MiB",
        bomb.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(137), "{o:?}");
}

#[tokio::test]
async fn serve_loads_a_compiled_http_component() {
    let out = artifact("http.cwasm");
    compile(&http_guest(), &out);
    let server = ServeGuard::start(&["--allow-precompiled", out.to_str().unwrap()]);
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
    let o = wasm_run(&["run", "--allow-precompiled", old_path.to_str().unwrap()]);
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
    assert!(trusted(&no_fuel, "hello", &artifact).is_ok());
    // ...one that meters fuel refuses it.
    let err = trusted(crate::engine(), "hello", &artifact).unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
    // One compiled with a proposal turned on is refused by an engine that
    // has it off.
    let gc = Engine::new(EngineConfig {
        proposals: vec![wasm_run::Proposal::Gc],
        ..EngineConfig::default()
    })
    .unwrap();
    let with_gc = gc.precompile("hello", &bytes).unwrap();
    assert!(trusted(&gc, "hello", &with_gc).is_ok());
    let err = trusted(crate::engine(), "hello", &with_gc).unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
}

#[tokio::test]
async fn the_library_runs_a_precompiled_guest() {
    let bytes = std::fs::read(guest("hello", Target::P2)).unwrap();
    let artifact = crate::engine().precompile("hello", &bytes).unwrap();
    let g = trusted(crate::engine(), "hello.cwasm", &artifact).unwrap();
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

/// Loads `bytes` through the constructor that accepts artifacts.
#[expect(unsafe_code, reason = "the tests made these artifacts themselves")]
fn trusted(engine: &Engine, name: &str, bytes: &[u8]) -> wasm_run::Result<Guest> {
    // SAFETY: every artifact these tests load this way was made by
    // `Engine::precompile` or `wasm-run compile` in this test run (or is
    // the patched one, run on purpose to show what trusting means).
    unsafe { Guest::from_bytes_allow_precompiled(engine, name, bytes) }
}

/// The byte range of the ELF section `name` in `elf` (64-bit, little-endian).
fn elf_section(elf: &[u8], name: &str) -> std::ops::Range<usize> {
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..4], b"\x7fELF", "wasmtime's code is an ELF image");
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(header(shstrndx) + 24);
    (0..shnum)
        .find_map(|i| {
            let h = header(i);
            let at = names + u32_at(h);
            let end = at + elf[at..].iter().position(|&b| b == 0).unwrap();
            (&elf[at..end] == name.as_bytes()).then(|| {
                let (offset, size) = (u64_at(h + 24), u64_at(h + 32));
                offset..offset + size
            })
        })
        .unwrap_or_else(|| panic!("no {name} section"))
}

/// An artifact of `wasm-run compile` whose machine code was replaced, as an
/// attacker would: every byte of `.text` a NOP, ending in `payload`.
/// Whatever wasm function the host calls runs `payload` inside the host
/// process. Saved as `name` in the test's artifacts directory.
#[cfg(target_arch = "x86_64")]
pub(crate) fn patched_artifact_with(name: &str, payload: &[u8]) -> PathBuf {
    let out = artifact(&format!("{name}.source"));
    compile(&guest("hello", Target::P1), &out);
    let mut bytes = std::fs::read(&out).unwrap();
    let elf_at = bytes
        .windows(4)
        .position(|w| w == b"\x7fELF")
        .expect("the artifact holds an ELF image");
    let text = elf_section(&bytes[elf_at..], ".text");
    let text = elf_at + text.start..elf_at + text.end;
    let code = &mut bytes[text];
    code.fill(0x90);
    let tail = code.len() - payload.len();
    code[tail..].copy_from_slice(payload);
    let evil = artifact(name);
    std::fs::write(&evil, bytes).unwrap();
    evil
}

/// [`patched_artifact_with`] `mov edi, 42; mov eax, 231 (exit_group);
/// syscall`: the process exits with status 42.
#[cfg(target_arch = "x86_64")]
fn patched_artifact() -> PathBuf {
    let exit_42: &[u8] = &[0xbf, 42, 0, 0, 0, 0xb8, 231, 0, 0, 0, 0x0f, 0x05];
    patched_artifact_with("evil.cwasm", exit_42)
}

/// The attack of a file that looks like an artifact: `run`, `serve` (MODULE
/// and config routes) and the library's safe constructors refuse it without
/// running any of it; only the explicit opt-in runs it — and then the host
/// process executes the file's own system call, which is why the opt-in
/// exists.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_patched_artifact_is_refused_and_runs_only_when_trusted_explicitly() {
    let evil = patched_artifact();
    let evil_path = evil.to_str().unwrap();
    let o = wasm_run(&["run", evil_path]);
    assert_eq!(o.status.code(), Some(125), "refused, never run: {o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("--allow-precompiled"),
        "names the flag: {stderr}"
    );
    assert!(stderr.contains("evil.cwasm"), "names the file: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");

    // serve: MODULE, and a config route, refused before binding.
    let o = crate::wasm_run_command(&["serve", "--addr", "127.0.0.1:0", evil_path])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--allow-precompiled"), "{stderr}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("Serving HTTP"));
    let config = crate::serve::write_config(
        "evil-route.toml",
        &format!("[[route]]\npath = \"/evil\"\nmodule = \"{evil_path}\"\n"),
    );
    let o = crate::wasm_run_command(&["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("/evil") && stderr.contains("allow-precompiled"),
        "{stderr}"
    );

    // The library's safe constructors.
    let bytes = std::fs::read(&evil).unwrap();
    let err = Guest::from_bytes(crate::engine(), "evil", &bytes).unwrap_err();
    assert!(matches!(err, Error::Precompiled { .. }), "{err}");
    let err = Guest::from_file(crate::engine(), &evil).unwrap_err();
    assert!(matches!(err, Error::Precompiled { .. }), "{err}");
    // A bare wasmtime artifact (no wasm-run header) is native code too.
    let elf_at = bytes.windows(4).position(|w| w == b"\x7fELF").unwrap();
    let err = Guest::from_bytes(crate::engine(), "bare", &bytes[elf_at..]).unwrap_err();
    assert!(matches!(err, Error::Precompiled { .. }), "{err}");

    // Trusted explicitly, it runs as what it is: the host's own code.
    let o = wasm_run(&["run", "--allow-precompiled", evil_path]);
    assert_eq!(o.status.code(), Some(42), "the file's syscall ran: {o:?}");
}
