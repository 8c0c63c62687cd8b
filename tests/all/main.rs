//! End-to-end tests of wasm-run: the library and the `wasm-run` binary, on
//! the real guests of `guests/` and tiny `.wat` fixtures.
//!
//! One test binary with modules (built as a test of the `wasm-run` package so
//! that `CARGO_BIN_EXE_wasm-run` points at the freshly built binary).

mod budget;
mod cli;
mod compile;
mod concurrency;
mod confine;
mod cpu;
mod dns;
mod fuzz;
mod host_limits;
mod host_memory;
mod library;
mod logs;
mod open_files;
mod otlp;
mod p3;
mod properties;
mod sandbox;
mod serve;
mod tenants;

/// The library tests run with the accounting allocator, as the binary does.
#[global_allocator]
static ALLOC: wasm_run::Accounting = wasm_run::Accounting;

use std::path::{Path, PathBuf};
use std::process::{Command, Output as ProcessOutput};
use std::sync::OnceLock;

use wasm_run::{Engine, EngineConfig, Guest, Invocation, Limits, Outcome, Output};
use wasm_run_tests::{Target, guest};

/// One engine shared by every library test, as in a real host.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(EngineConfig::default()).expect("engine builds"))
}

/// Loads guest `name` built for `target`.
pub fn load(name: &str, target: Target) -> Guest {
    Guest::from_file(engine(), guest(name, target)).expect("guest loads")
}

/// Runs guest `name` once with captured output, after `tweak` adjusts the
/// invocation (limits, args, ...).
pub async fn run_guest(name: &str, target: Target, tweak: impl FnOnce(&mut Invocation)) -> Outcome {
    let mut invocation = Invocation {
        stdout: Output::Capture,
        stderr: Output::Capture,
        limits: Limits::default(),
        ..Invocation::default()
    };
    tweak(&mut invocation);
    load(name, target)
        .run(invocation)
        .await
        .expect("invocation runs")
}

/// Writes WAT `text` to a fresh file under the test scratch dir.
pub fn wat_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wat");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(text).expect("fixture parses")).expect("write fixture");
    path
}

/// Captured stdout as text.
pub fn stdout_of(outcome: &Outcome) -> String {
    let out = outcome.stdout.as_ref().expect("stdout was captured");
    String::from_utf8_lossy(&out.bytes).into_owned()
}

pub const MIB: u64 = 1 << 20;

/// The `wasm-run` binary with `args`, its compile cache under the test
/// scratch dir.
pub fn wasm_run_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasm-run"));
    command.args(args).env(
        "WASM_RUN_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
    );
    command
}

/// Runs the `wasm-run` binary with `args` and waits for it.
pub fn wasm_run(args: &[&str]) -> ProcessOutput {
    wasm_run_command(args).output().expect("wasm-run starts")
}
