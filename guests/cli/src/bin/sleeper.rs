//! Sleeps argv[1] seconds (default 60) in the host, then prints `slept`: wall-clock timeouts.

use std::process::exit;
use std::time::Duration;

#[path = "../../../args.rs"]
mod args;

fn main() {
    let secs: f64 = args::first_arg_or(60.0, "sleeper: not a number of seconds");
    let Ok(duration) = Duration::try_from_secs_f64(secs) else {
        eprintln!("sleeper: not a valid duration: {secs}");
        exit(2)
    };
    std::thread::sleep(duration);
    println!("slept");
}
