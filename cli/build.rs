//! Builds the demo guest (`guests/cli/src/bin/demo.rs`) for wasm32-wasip1
//! with a nested cargo, so the `wasm-run` binary can embed it and serve the
//! built-in demo. Sets `WASM_RUN_DEMO_WASM` to the built module's path.
//!
//! Only the binary's package does this: the library alone builds no guest
//! and needs no wasm target. The guest is built under `OUT_DIR`.

use std::env;
use std::path::PathBuf;

#[path = "../guests/nested_cargo.rs"]
mod nested_cargo;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../guests/nested_cargo.rs");
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
        "query.rs",
    ] {
        println!("cargo::rerun-if-changed={}", guests.join(path).display());
    }
    let mut cmd = nested_cargo::command(&guests, "wasm32-wasip1", &target_dir);
    cmd.args(["--package", "wasm-run-guests", "--bin", "demo"]);
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
