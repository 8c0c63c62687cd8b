//! Sleeps argv[1] seconds (default 60) in the host, then prints `slept`: wall-clock timeouts.

use std::process::exit;
use std::time::Duration;

fn main() {
    let secs = match std::env::args().nth(1) {
        None => 60.0,
        Some(arg) => arg.parse::<f64>().unwrap_or_else(|_| {
            eprintln!("sleeper: not a number of seconds: {arg}");
            exit(2)
        }),
    };
    let Ok(duration) = Duration::try_from_secs_f64(secs) else {
        eprintln!("sleeper: not a valid duration: {secs}");
        exit(2)
    };
    std::thread::sleep(duration);
    println!("slept");
}
