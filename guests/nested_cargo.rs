//! The nested cargo that builds the guests, shared by the build scripts of
//! the `wasm-run` binary (`cli/build.rs`, the demo guest) and of the tests
//! (`tests/build.rs`, every guest). Each includes this file as a module.

use std::env;
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// Variables set for a build script (or for the outer build) that would
/// misdirect the nested cargo: flags meant for the host target, the outer
/// target directory and target, the outer jobserver, and compiler wrappers
/// such as clippy-driver.
const CLEARED_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
];

/// Prefixes of variables that describe the outer package and its target to
/// build scripts; none of them is meant for the nested build.
const CLEARED_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "__CARGO",
];

/// `cargo build --release --target TRIPLE` of the guests' workspace in
/// `guests_dir`, into `target_dir`, with an environment cleared of what the
/// outer build set; the caller adds the package selection.
pub fn command(guests_dir: &Path, triple: &str, target_dir: &Path) -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(guests_dir)
        .args(["build", "--release", "--target", triple])
        .arg("--manifest-path")
        .arg(guests_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .env("CARGO_TERM_COLOR", "never");
    for (var, _) in env::vars_os() {
        let Some(var) = var.to_str() else { continue };
        if CLEARED_VARS.contains(&var)
            || CLEARED_PREFIXES
                .iter()
                .any(|prefix| var.starts_with(prefix))
        {
            cmd.env_remove(var);
        }
    }
    if env::var_os("CARGO_CFG_MIRI").is_some() {
        // Miri's RUSTC is its own driver; use the real rustc.
        cmd.env_remove("RUSTC");
    }
    cmd
}
