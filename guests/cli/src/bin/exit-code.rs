//! Exits with the status given as argv[1] (default 3): exit-status propagation.

use std::process::exit;

fn main() {
    let code = match std::env::args().nth(1) {
        None => 3,
        Some(arg) => arg.parse::<i32>().unwrap_or_else(|_| {
            eprintln!("exit-code: not an integer: {arg}");
            exit(2)
        }),
    };
    exit(code);
}
