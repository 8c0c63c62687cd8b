//! Command-line arguments for the command guests of `cli/src/bin` (included
//! with `#[path]`, as `query.rs` is; not in `src/bin` itself, where every
//! file is a guest).

use std::process::exit;
use std::str::FromStr;

/// The first argument parsed as a `T`, or `default` without one. An
/// argument that does not parse is a usage error: `{error}: ARG` on stderr,
/// exit status 2.
pub fn first_arg_or<T: FromStr>(default: T, error: &str) -> T {
    match std::env::args().nth(1) {
        None => default,
        Some(arg) => arg.parse().unwrap_or_else(|_| {
            eprintln!("{error}: {arg}");
            exit(2)
        }),
    }
}
