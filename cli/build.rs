//! Builds the demo guest (`guests/cli/src/bin/demo.rs`) for wasm32-wasip1
//! with a nested cargo, so the `wasm-run` binary can embed it and serve the
//! built-in demo. Sets `WASM_RUN_DEMO_WASM` to the built module's path.
//!
//! Only the binary's package does this: the library alone builds no guest
//! and needs no wasm target. The guest is built under `OUT_DIR`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Variables of the outer build that would misdirect the nested cargo.
const CLEARED_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf();
    let guests = root.join("guests");
    let target_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("guests");
    for path in [
        "Cargo.toml",
        "Cargo.lock",
        "cli/Cargo.toml",
        "cli/src/bin/demo.rs",
    ] {
        println!("cargo::rerun-if-changed={}", guests.join(path).display());
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", "wasm32-wasip1"])
        .args(["--package", "wasm-run-guests", "--bin", "demo"])
        .arg("--manifest-path")
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_TERM_COLOR", "never");
    for var in CLEARED_VARS {
        cmd.env_remove(var);
    }
    let output = cmd
        .output()
        .expect("cannot run cargo to build the demo guest");
    if !output.status.success() {
        panic!(
            "building the demo guest for wasm32-wasip1 failed; install the target with \
             `rustup target add wasm32-wasip1` (scripts/setup.sh does it).\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let wasm = target_dir.join("wasm32-wasip1/release/demo.wasm");
    assert!(
        wasm.exists(),
        "the demo guest build produced no {}",
        wasm.display()
    );
    println!("cargo::rustc-env=WASM_RUN_DEMO_WASM={}", wasm.display());
}
