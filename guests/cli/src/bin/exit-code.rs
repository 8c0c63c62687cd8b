//! Exits with the status given as argv[1] (default 3): exit-status propagation.

use std::process::exit;

#[path = "../../../args.rs"]
mod args;

fn main() {
    let code: i32 = args::first_arg_or(3, "exit-code: not an integer");
    exit(code);
}
