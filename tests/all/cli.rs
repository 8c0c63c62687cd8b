//! The `wasm-run run` contract: exit statuses, the JSON report, messages on
//! stderr, bad input and bad usage.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use wasm_run_tests::{Target, guest};

use crate::{MIB, wasm_run, wat_file};

fn path(name: &str, target: Target) -> String {
    guest(name, target).display().to_string()
}

/// Runs with `--report -` and returns (status, stdout, stderr, report).
pub(crate) fn run_report(
    flags: &[&str],
    module: &str,
    args: &[&str],
) -> (i32, String, String, Value) {
    let mut all = vec!["run", "--report", "-"];
    all.extend_from_slice(flags);
    all.push(module);
    all.extend_from_slice(args);
    let out = wasm_run(&all);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stderr
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no report on stderr: {stderr}"));
    let report: Value = serde_json::from_str(line).expect("report is JSON");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().expect("exited"), stdout, stderr, report)
}

/// Runs `module` with `--report -`; returns (status, report).
pub(crate) fn status_and_report(flags: &[&str], module: &Path, args: &[&str]) -> (i32, Value) {
    let module = module.to_str().expect("module path is UTF-8");
    let (status, _, _, report) = run_report(flags, module, args);
    (status, report)
}

/// Asserts that a run exited with `code` and reported `outcome`.
#[track_caller]
pub(crate) fn assert_ended(status: i32, report: &Value, code: i32, outcome: &str) {
    assert_eq!(status, code, "{report}");
    assert_eq!(report["outcome"], outcome, "{report}");
}

#[test]
fn hello_exits_zero_and_reports_every_field() {
    for target in Target::ALL {
        let (status, stdout, stderr, report) = run_report(&[], &path("hello", target), &[]);
        assert_eq!(status, 0, "{stderr}");
        assert_eq!(stdout, "Hello from wasm-run!\n");
        assert!(
            !stderr.contains("wasm-run:"),
            "no message on success: {stderr}"
        );
        let obj = report.as_object().unwrap();
        let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "cpu_time_us",
                "exit_code",
                "fuel_consumed",
                "host_memory_peak_bytes",
                "host_peak_rss_bytes",
                "message",
                "outcome",
                "peak_memory_bytes",
                "wall_time_us"
            ]
        );
        assert!(report["host_peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
        assert_eq!(report["outcome"], "exited");
        assert_eq!(report["exit_code"], 0);
        assert!(report["fuel_consumed"].as_u64().unwrap() > 0);
        assert!(report["peak_memory_bytes"].as_u64().unwrap() > 0);
        assert!(report["wall_time_us"].as_u64().unwrap() > 0);
        assert!(report["message"].is_null());
    }
}

#[test]
fn guest_exit_code_passes_through() {
    for target in Target::ALL {
        let (status, _, _, report) = run_report(&[], &path("exit-code", target), &["42"]);
        // wasi:cli 0.2's `exit` carries only success or failure.
        let expected = if target == Target::P1 { 42 } else { 1 };
        assert_ended(status, &report, expected, "exited");
        assert_eq!(report["exit_code"], expected);
    }
}

#[test]
fn memory_bomb_exits_137_within_the_cap() {
    for target in Target::ALL {
        let (status, _, stderr, report) =
            run_report(&["--max-memory", "32MiB"], &path("bomb", target), &[]);
        assert_ended(status, &report, 137, "memory_exceeded");
        assert!(report["exit_code"].is_null());
        assert!(report["peak_memory_bytes"].as_u64().unwrap() <= 32 * MIB);
        assert!(report["message"].as_str().unwrap().contains("memory"));
        assert!(stderr.contains("wasm-run: "), "{stderr}");
        assert!(stderr.contains("memory_exceeded"), "{stderr}");

        let (status, stdout, _, report) =
            run_report(&["--max-memory", "64MiB"], &path("alloc", target), &["16"]);
        assert_ended(status, &report, 0, "exited");
        assert!(stdout.contains("allocated 16 MiB"), "{stdout}");
    }
}

#[test]
fn spin_with_fuel_exits_152_within_the_budget() {
    for target in Target::ALL {
        let spin = path("spin", target);
        let (status, _, _, report) = run_report(&["--fuel", "10000000"], &spin, &[]);
        assert_ended(status, &report, 152, "fuel_exhausted");
        assert!(report["fuel_consumed"].as_u64().unwrap() <= 10_000_000);
    }
}

#[test]
fn spin_and_sleeper_exit_124_at_the_deadline() {
    for target in Target::ALL {
        for (name, args) in [("spin", &[][..]), ("sleeper", &["30"][..])] {
            let start = Instant::now();
            let (status, _, _, report) =
                run_report(&["--timeout", "500ms"], &path(name, target), args);
            assert_eq!(status, 124, "{name} {target:?}");
            assert_eq!(report["outcome"], "deadline_exceeded");
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{name}: {:?}",
                start.elapsed()
            );
        }
    }
}

#[test]
fn trap_exits_134_with_a_message() {
    for target in Target::ALL {
        let (status, _, stderr, report) = run_report(&[], &path("recurse", target), &[]);
        assert_ended(status, &report, 134, "trapped");
        assert!(
            report["message"].as_str().unwrap().contains("stack"),
            "{report}"
        );
        assert_eq!(report["trap"], "stack_overflow", "{report}");
        assert!(stderr.contains("wasm-run: "), "{stderr}");
    }
}

#[test]
fn report_can_be_written_to_a_file() {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.json");
    let _ = std::fs::remove_file(&file);
    let out = wasm_run(&[
        "run",
        "--report",
        file.to_str().unwrap(),
        &path("hello", Target::P1),
    ]);
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(report["outcome"], "exited");
}

#[test]
fn env_dir_and_args_flags_reach_the_guest() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-dir");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.txt"), "hello file\n").unwrap();
    let spec = format!("{}::/d", dir.display());
    let out = wasm_run(&["run", "--dir", &spec, &path("cat", Target::P1), "/d/f.txt"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hello file\n");

    let out = wasm_run(&[
        "run",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        &path("printenv", Target::P2),
        "--flag",
        "v",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("arg=--flag\narg=v\n"), "{stdout}");
    assert!(stdout.contains("A=1\nB=x=y\n"), "{stdout}");
}

#[test]
fn messages_start_on_their_own_line() {
    // The guest prints without a trailing newline, then traps.
    let wat = wat_file(
        "partial-line",
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write"
               (func $fd_write (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (data (i32.const 16) "partial")
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 16))
               (i32.store (i32.const 4) (i32.const 7))
               (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
               unreachable))"#,
    );
    let out = wasm_run(&["run", wat.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(134));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("partial\nwasm-run: "), "{stderr:?}");
    let out = wasm_run(&["run", "--report", "-", wat.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("partial\n{\"outcome\""), "{stderr:?}");
    assert!(stderr.contains("}\nwasm-run: "), "{stderr:?}");
}

#[test]
fn bad_modules_exit_125_naming_the_file_and_reason() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let not_wasm = tmp.join("not-wasm.wasm");
    std::fs::write(&not_wasm, "#!/bin/sh\necho hi\n").unwrap();
    let no_start = wat_file("no-start", r#"(module (func (export "main")))"#);
    let bad_import = wat_file(
        "bad-import",
        r#"(module (import "env" "host_magic" (func)) (func (export "_start")))"#,
    );
    let cases = [
        ("/no/such/file.wasm".to_string(), "No such file"),
        (not_wasm.display().to_string(), "not a WebAssembly"),
        (no_start.display().to_string(), "_start"),
        (bad_import.display().to_string(), "env::host_magic"),
    ];
    for (file, reason) in cases {
        let out = wasm_run(&["run", &file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{file}: {stderr}");
        assert!(stderr.starts_with("wasm-run: "), "{stderr}");
        assert!(stderr.contains(&file), "{file} not named: {stderr}");
        assert!(stderr.contains(reason), "{reason} missing: {stderr}");
    }
}

#[test]
fn bad_flags_exit_2() {
    let hello = path("hello", Target::P1);
    for args in [
        vec!["run", "--max-memory", "lots", &hello],
        vec!["run", "--timeout", "5", &hello],
        vec!["run", "--fuel", "-3", &hello],
        vec!["run", "--env", "NOEQUALS", &hello],
        vec!["run"],
        vec!["frobnicate"],
    ] {
        let out = wasm_run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
    let out = wasm_run(&["run", "--max-memory", "lots", &hello]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`lots`") && stderr.contains("64MiB"),
        "{stderr}"
    );
}

#[test]
fn help_explains_limits_defaults_and_exit_codes() {
    let out = wasm_run(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--fuel",
        "--max-memory",
        "--timeout",
        "256MiB",
        "124",
        "137",
        "152",
        "125",
    ] {
        assert!(help.contains(needle), "help lacks {needle}");
    }
}

#[test]
fn http_components_are_pointed_at_serve() {
    let module = wasm_run_tests::http_guest();
    let out = wasm_run(&["run", module.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wasm-run serve"), "{stderr}");
}

#[test]
fn compiled_code_is_cached_between_runs() {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fresh-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let out = Command::new(env!("CARGO_BIN_EXE_wasm-run"))
        .args(["run", &path("hello", Target::P1)])
        .env("WASM_RUN_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert!(out.status.success());
    let cached = walk(&cache);
    assert!(cached > 0, "nothing written to the compile cache");
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn everything_after_the_module_is_the_guests_even_flags() {
    for target in Target::ALL {
        let printenv = path("printenv", target);
        let out = wasm_run(&[
            "run",
            "--fuel",
            "100000000",
            &printenv,
            "--fuel",
            "5",
            "--version",
            "-h",
        ]);
        assert_eq!(out.status.code(), Some(0), "{target:?}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("arg=--fuel\narg=5\narg=--version\narg=-h\n"),
            "{target:?}: {stdout}"
        );
    }
    // Before the module, an unknown flag is still a usage error.
    let out = wasm_run(&["run", "--bogus", &path("hello", Target::P1)]);
    assert_eq!(out.status.code(), Some(2));
}

/// An error is one line that names each cause once: a missing module, a
/// module that is not wasm, for `run`, `serve` and `compile`.
#[test]
fn load_errors_name_each_cause_once() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let missing = dir.join("no-such-module.wasm");
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, "not wasm").unwrap();
    let out_path = dir.join("garbage.cwasm");
    let (missing, garbage) = (missing.to_str().unwrap(), garbage.to_str().unwrap());
    for (args, cause) in [
        (vec!["run", missing], "No such file or directory"),
        (
            vec!["serve", "--addr", "127.0.0.1:0", missing],
            "No such file or directory",
        ),
        (vec!["run", garbage], "not a WebAssembly module"),
        (
            vec!["serve", "--addr", "127.0.0.1:0", garbage],
            "not a WebAssembly module",
        ),
        (
            vec!["compile", garbage, "-o", out_path.to_str().unwrap()],
            "not a WebAssembly module",
        ),
    ] {
        let out = wasm_run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("wasm-run: "))
            .unwrap_or_else(|| panic!("{args:?}: {stderr}"));
        assert_eq!(line.matches(cause).count(), 1, "{args:?}: {line}");
        assert_eq!(line.matches("wasm-run: ").count(), 1, "{args:?}: {line}");
    }
}

/// A component with WASI 0.3's async types loads (on the concurrent
/// engine) and, exporting nothing to call, gets one line naming what it
/// should export, not a parser error.
#[test]
fn an_async_component_without_an_entry_point_is_named_as_such() {
    let p3 = crate::wat_file("p3", "(component (type (stream u8)))");
    let out = wasm_run(&["run", p3.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`wasi:cli/run@0.2.x` or `@0.3.x`"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
