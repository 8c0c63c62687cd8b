//! Test support for wasm-run: the guest programs of `guests/`, built for the
//! tests.
//!
//! The build script builds the `guests` workspace for `wasm32-wasip1` and
//! `wasm32-wasip2` (into `target/guests`, shared by every profile) and
//! generates one constant per guest and target, such as [`HELLO_P1`] and
//! [`HELLO_P2`], plus the table [`GUESTS`], and [`HTTP_GUEST`], the
//! `wasi:http/proxy` component of `guests/http` (built for `wasm32-wasip2`
//! only). If that build fails, for example because a target is not installed,
//! the crate still compiles: the error is kept in [`GUEST_BUILD_ERROR`] and
//! [`guest`] and [`http_guest`] panic with it, so only the tests that run a
//! guest fail.
//!
//! ```no_run
//! use wasm_run_tests::{Target, guest, guest_bytes, http_guest};
//!
//! let module = guest("hello", Target::P1);
//! let component = guest_bytes("hello", Target::P2);
//! let proxy = http_guest();
//! # let _ = (module, component, proxy);
//! ```
#![deny(missing_docs)]

use std::path::PathBuf;

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// The rustup command that installs both guest targets.
const INSTALL_TARGETS: &str = "rustup target add wasm32-wasip1 wasm32-wasip2";

/// Which build of a guest to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `wasm32-wasip1`: a core WebAssembly module importing
    /// `wasi_snapshot_preview1` and exporting `_start`.
    P1,
    /// `wasm32-wasip2`: a WASI 0.2 command component exporting
    /// `wasi:cli/run`.
    P2,
}

impl Target {
    /// Both targets.
    pub const ALL: [Target; 2] = [Target::P1, Target::P2];

    /// The Rust target triple the guests are built for.
    #[must_use]
    pub fn triple(self) -> &'static str {
        match self {
            Target::P1 => "wasm32-wasip1",
            Target::P2 => "wasm32-wasip2",
        }
    }

    /// Why building the guests for this target failed, if it did.
    #[must_use]
    pub fn build_error(self) -> Option<&'static str> {
        match self {
            Target::P1 => GUEST_BUILD_ERROR_P1,
            Target::P2 => GUEST_BUILD_ERROR_P2,
        }
    }
}

/// The path of guest `name` (a file name of `guests/cli/src/bin` without
/// `.rs`, such as `"hello"` or `"exit-code"`) built for `target`.
///
/// # Panics
///
/// If there is no such guest, if the guests could not be built for `target`,
/// or if the file is gone.
#[must_use]
#[track_caller]
pub fn guest(name: &str, target: Target) -> PathBuf {
    let Some(&(_, p1, p2)) = GUESTS.iter().find(|(guest, _, _)| *guest == name) else {
        if let Some(error) = target.build_error() {
            not_built(error);
        }
        let known = GUESTS
            .iter()
            .map(|(guest, _, _)| *guest)
            .collect::<Vec<_>>();
        panic!(
            "no guest named `{name}`; the guests are: {}",
            known.join(", ")
        );
    };
    if let Some(error) = target.build_error() {
        not_built(error);
    }
    let path = PathBuf::from(match target {
        Target::P1 => p1,
        Target::P2 => p2,
    });
    assert!(
        path.is_file(),
        "guest `{name}` for {} is missing at {}; rebuild the guests with \
         `cargo clean -p wasm-run-tests` and run the tests again",
        target.triple(),
        path.display()
    );
    path
}

/// The path of the `wasi:http/proxy` component built from `guests/http` for
/// `wasm32-wasip2` ([`HTTP_GUEST`]); it exports `wasi:http/incoming-handler`.
///
/// # Panics
///
/// If the guests could not be built for `wasm32-wasip2`, or if the file is
/// gone.
#[must_use]
#[track_caller]
pub fn http_guest() -> PathBuf {
    component("http guest", HTTP_GUEST)
}

/// The path of the WASI 0.3 `wasi:http/service` component of
/// `guests/p3-http` (built for `wasm32-wasip2` with the `wasip3` crate).
///
/// # Panics
///
/// As [`http_guest`].
#[must_use]
#[track_caller]
pub fn p3_http_guest() -> PathBuf {
    component("WASI 0.3 http guest", P3_HTTP_GUEST)
}

/// The path of the WASI 0.3 `wasi:cli/command` component of
/// `guests/p3-cli`.
///
/// # Panics
///
/// As [`http_guest`].
#[must_use]
#[track_caller]
pub fn p3_cli_guest() -> PathBuf {
    component("WASI 0.3 command guest", P3_CLI_GUEST)
}

#[track_caller]
fn component(what: &str, path: &str) -> PathBuf {
    if let Some(error) = Target::P2.build_error() {
        not_built(error);
    }
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "the {what} for {} is missing at {}; rebuild the guests with \
         `cargo clean -p wasm-run-tests` and run the tests again",
        Target::P2.triple(),
        path.display()
    );
    path
}

/// The contents of [`guest`]`(name, target)`.
///
/// # Panics
///
/// As [`guest`] does, or if the file cannot be read.
#[must_use]
#[track_caller]
pub fn guest_bytes(name: &str, target: Target) -> Vec<u8> {
    let path = guest(name, target);
    std::fs::read(&path).unwrap_or_else(|err| panic!("cannot read guest {}: {err}", path.display()))
}

#[track_caller]
fn not_built(error: &str) -> ! {
    let (summary, details) = error.split_once('\n').unwrap_or((error, ""));
    panic!(
        "guest modules were not built: {summary}; install the targets with `{INSTALL_TARGETS}`\n{details}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Core modules start with `\0asm` and version 1.
    const MODULE_HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";
    /// Components start with `\0asm`, version 0xd and layer 1.
    const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\0\x01\0";

    #[test]
    fn every_guest_is_built_for_both_targets() {
        assert!(GUESTS.len() >= 11, "too few guests: {GUESTS:?}");
        for &(name, _, _) in GUESTS {
            assert!(
                guest_bytes(name, Target::P1).starts_with(&MODULE_HEADER),
                "{name} P1"
            );
            assert!(
                guest_bytes(name, Target::P2).starts_with(&COMPONENT_HEADER),
                "{name} P2"
            );
        }
    }

    #[test]
    fn http_guest_is_a_component() {
        let path = http_guest();
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
        assert!(bytes.starts_with(&COMPONENT_HEADER), "{}", path.display());
    }

    #[test]
    fn constants_match_the_table() {
        assert_eq!(guest("hello", Target::P1), PathBuf::from(HELLO_P1));
        assert_eq!(guest("exit-code", Target::P2), PathBuf::from(EXIT_CODE_P2));
        assert_eq!(GUEST_BUILD_ERROR, None);
    }

    #[test]
    #[should_panic(expected = "no guest named `nope`")]
    fn unknown_guest_panics() {
        let _ = guest("nope", Target::P1);
    }
}
