//! Builds the guest programs of `<root>/guests` with a nested cargo, once for
//! `wasm32-wasip1` and once for `wasm32-wasip2`, into `<root>/target/guests`
//! (shared by every profile of the outer build), and writes
//! `$OUT_DIR/guests.rs` with the path of every guest and the build errors.
//!
//! The command programs of `guests/cli` are built for both targets; the
//! `wasi:http/proxy` component of `guests/http` only for `wasm32-wasip2`.
//!
//! A failed guest build does not fail this script: it emits a
//! `cargo::warning` and records the error, so that the tests that need a guest
//! fail at run time with a message that says what to do.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

#[path = "../guests/nested_cargo.rs"]
mod nested_cargo;

/// A target the guests are built for.
struct GuestTarget {
    /// Rust target triple.
    triple: &'static str,
    /// Suffix of the generated constants (`HELLO_P1`).
    suffix: &'static str,
    /// What the artifacts are, for the generated docs.
    kind: &'static str,
    /// The nested cargo's package selection for this target.
    packages: &'static [&'static str],
    /// The artifacts the build must produce besides the command programs,
    /// as file names without `.wasm`.
    others: &'static [&'static str],
}

/// File name, without `.wasm`, of the `wasi:http/proxy` component built
/// from `guests/http` (package `wasm-run-http-guest`, a `cdylib`).
const HTTP_GUEST: &str = "wasm_run_http_guest";

/// File names, without `.wasm`, of the WASI 0.3 components built from
/// `guests/p3-http` (a `wasi:http/service`) and `guests/p3-cli` (a
/// `wasi:cli/command`), both `cdylib`s of the `wasip3` crate.
const P3_HTTP_GUEST: &str = "wasm_run_p3_http_guest";
const P3_CLI_GUEST: &str = "wasm_run_p3_cli_guest";

const P1: GuestTarget = GuestTarget {
    triple: "wasm32-wasip1",
    suffix: "P1",
    kind: "a core module importing `wasi_snapshot_preview1`",
    // The command programs only: the http guest is a component, and its
    // `cdylib` built for this target would be a core module nothing uses.
    packages: &["--package", "wasm-run-guests"],
    others: &[],
};

const P2: GuestTarget = GuestTarget {
    triple: "wasm32-wasip2",
    suffix: "P2",
    kind: "a WASI 0.2 command component",
    packages: &["--workspace"],
    others: &[HTTP_GUEST, P3_HTTP_GUEST, P3_CLI_GUEST],
};

const TARGETS: [GuestTarget; 2] = [P1, P2];

/// How many trailing lines of cargo's output an error keeps.
const ERROR_LOG_LINES: usize = 60;

fn main() {
    let out_dir =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for build scripts"),
    );
    let root = manifest_dir
        .parent()
        .expect("the tests crate lives in a directory of the workspace root");
    let guests_dir = root.join("guests");
    let target_dir = root.join("target").join("guests");

    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "nested_cargo.rs",
        "query.rs",
        "args.rs",
        "hogs.rs",
        "p3_streams.rs",
        "cli/Cargo.toml",
        "cli/src",
        "http/Cargo.toml",
        "http/src",
        "p3-http/Cargo.toml",
        "p3-http/src",
        "p3-cli/Cargo.toml",
        "p3-cli/src",
    ] {
        println!(
            "cargo::rerun-if-changed={}",
            guests_dir.join(file).display()
        );
    }

    let generated = match guest_names(&guests_dir.join("cli").join("src").join("bin")) {
        Ok(names) => {
            let errors = TARGETS
                .iter()
                .map(|target| build(target, &names, &guests_dir, &target_dir).err())
                .collect::<Vec<_>>();
            generate(&names, &target_dir, &errors)
        }
        Err(err) => generate(&[], &target_dir, &[Some(err.clone()), Some(err)]),
    };
    if generated.failed {
        // Not a file: cargo takes a missing path as changed, so the script
        // runs again on the next build (for example once the targets are
        // installed) instead of keeping the error until a guest changes.
        println!(
            "cargo::rerun-if-changed={}",
            out_dir.join("retry-the-guest-build").display()
        );
    }
    let path = out_dir.join("guests.rs");
    fs::write(&path, generated.code)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}

/// The guests: one per `src/bin/*.rs` of the guests crate, sorted.
fn guest_names(bin_dir: &Path) -> Result<Vec<String>, String> {
    let cannot_list =
        |err: std::io::Error| format!("cannot list the guests in {}: {err}", bin_dir.display());
    let mut names = Vec::new();
    for entry in fs::read_dir(bin_dir).map_err(cannot_list)? {
        let path = entry.map_err(cannot_list)?.path();
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .filter(|stem| {
                stem.starts_with(|c: char| c.is_ascii_lowercase())
                    && stem.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                    })
            })
            .ok_or_else(|| {
                format!(
                    "guest {} must be named with lowercase ASCII letters, digits, `-` and `_`",
                    path.display()
                )
            })?;
        names.push(name.to_owned());
    }
    names.sort();
    Ok(names)
}

/// Builds every guest of `target`: the command programs `names` and
/// `target.others`; returns the error text on failure, its first line a
/// summary.
fn build(
    target: &GuestTarget,
    names: &[String],
    guests_dir: &Path,
    target_dir: &Path,
) -> Result<(), String> {
    let mut cmd = nested_cargo::command(guests_dir, target.triple, target_dir);
    cmd.args(target.packages);

    eprintln!("running: {cmd:?}");
    let output = cmd.output().map_err(|err| {
        format!(
            "cannot run cargo to build the guests for {}: {err}",
            target.triple
        )
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown by `cargo build -vv`; never on stdout, which cargo parses.
    eprint!("{stderr}");
    if !output.status.success() {
        let summary = stderr
            .lines()
            .find(|line| line.starts_with("error"))
            .unwrap_or("cargo failed");
        let lines = stderr.lines().collect::<Vec<_>>();
        let tail = lines[lines.len().saturating_sub(ERROR_LOG_LINES)..].join("\n");
        return Err(format!(
            "building the guests for {} failed ({}): {summary}\ncargo output:\n{tail}",
            target.triple, output.status
        ));
    }
    let missing = names
        .iter()
        .map(String::as_str)
        .chain(target.others.iter().copied())
        .map(|name| artifact(target_dir, target, name))
        .filter(|path| !path.is_file())
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "building the guests for {} succeeded but did not produce {}",
            target.triple,
            missing.join(", ")
        ))
    }
}

/// Where cargo puts guest `name` (a file name without `.wasm`) for `target`.
fn artifact(target_dir: &Path, target: &GuestTarget, name: &str) -> PathBuf {
    target_dir
        .join(target.triple)
        .join("release")
        .join(format!("{name}.wasm"))
}

/// The generated source and whether any build failed.
struct Generated {
    code: String,
    failed: bool,
}

/// Writes the constants; `errors` holds the build error of each of `TARGETS`.
fn generate(names: &[String], target_dir: &Path, errors: &[Option<String>]) -> Generated {
    let mut code = String::from(
        "// @generated by tests/build.rs from guests/cli/src/bin and guests/http.\n\n",
    );
    let mut table = String::new();
    for name in names {
        let ident = name.to_ascii_uppercase().replace('-', "_");
        let mut row = format!("    ({name:?}");
        for target in &TARGETS {
            let path = artifact(target_dir, target, name);
            let path = path.to_string_lossy();
            let (triple, kind, suffix) = (target.triple, target.kind, target.suffix);
            writeln!(code, "/// The `{name}` guest built for `{triple}`: {kind}.")
                .expect("writing to a String");
            writeln!(code, "pub const {ident}_{suffix}: &str = {path:?};")
                .expect("writing to a String");
            write!(row, ", {ident}_{suffix}").expect("writing to a String");
        }
        table += &row;
        table += "),\n";
    }
    let paths = TARGETS
        .map(|target| format!("its `{}` path", target.triple))
        .join(", ");
    writeln!(
        code,
        "\n/// Every guest as a tuple of its name, {paths}; sorted by name.\n\
         pub const GUESTS: &[(&str, &str, &str)] = &[\n{table}];"
    )
    .expect("writing to a String");

    let http_guest = artifact(target_dir, &P2, HTTP_GUEST);
    writeln!(
        code,
        "\n/// The `wasi:http/proxy` component of `guests/http`, built for `{}` only:\n\
         /// it exports `wasi:http/incoming-handler`.\n\
         pub const HTTP_GUEST: &str = {:?};",
        P2.triple,
        http_guest.to_string_lossy()
    )
    .expect("writing to a String");

    for (ident, file, what) in [
        (
            "P3_HTTP_GUEST",
            P3_HTTP_GUEST,
            "`guests/p3-http`: a WASI 0.3 `wasi:http/service` component (it exports\n\
             /// `wasi:http/handler@0.3.0`)",
        ),
        (
            "P3_CLI_GUEST",
            P3_CLI_GUEST,
            "`guests/p3-cli`: a WASI 0.3 `wasi:cli/command` component (it exports\n\
             /// `wasi:cli/run@0.3.0`)",
        ),
    ] {
        let path = artifact(target_dir, &P2, file);
        writeln!(
            code,
            "\n/// {what}, built for `{}`.\npub const {ident}: &str = {:?};",
            P2.triple,
            path.to_string_lossy()
        )
        .expect("writing to a String");
    }

    let mut failed = false;
    let mut all = Vec::new();
    for (target, error) in TARGETS.iter().zip(errors) {
        let (triple, suffix) = (target.triple, target.suffix);
        if let Some(error) = error {
            failed = true;
            let summary = error.lines().next().unwrap_or_default();
            println!("cargo::warning={summary}");
            all.push(error.as_str());
        }
        writeln!(
            code,
            "\n/// Why building the guests for `{triple}` failed, or `None` if they were built.\n\
             pub const GUEST_BUILD_ERROR_{suffix}: Option<&str> = {error:?};"
        )
        .expect("writing to a String");
    }
    if failed {
        println!(
            "cargo::warning=tests that run guests will fail; install the targets with \
             `rustup target add wasm32-wasip1 wasm32-wasip2`"
        );
    }
    // Both targets usually fail for the same reason: keep the first error.
    let first = all.first();
    writeln!(
        code,
        "\n/// Why building the guests failed (the first error of any target), or `None` if\n\
         /// every guest was built for every target.\n\
         pub const GUEST_BUILD_ERROR: Option<&str> = {first:?};"
    )
    .expect("writing to a String");
    Generated { code, failed }
}
