//! A search that reads its own budget (`wasm-run:sandbox/budget`) and stops
//! with its best partial result before a limit would kill it.
//!
//! `search report` prints the four budget figures; `search [N]` counts the
//! primes below `N` (default 50,000,000), checking its fuel and time every
//! 1,024 candidates and stopping while it still has a reserve left;
//! `search N --ignore-budget` never checks, and is killed instead. Run as
//! CGI (`GATEWAY_INTERFACE` set, or `PATH_INFO` for `N`), it answers with
//! `X-Partial-Result: true` when it stopped early.

#![allow(
    unsafe_code,
    reason = "the core-module budget imports are foreign functions"
)]

use std::time::Duration;

/// Fuel the search keeps in reserve to print its result.
const FUEL_RESERVE: u64 = 2_000_000;
/// Time the search keeps in reserve to print its result.
const TIME_RESERVE: Duration = Duration::from_millis(50);

#[cfg(target_env = "p2")]
mod budget {
    wit_bindgen::generate!({ path: "../../wit", world: "wasm-run:sandbox/budget-aware" });
    use self::wasm_run::sandbox::budget as wit;

    pub fn fuel_remaining() -> Option<u64> {
        wit::fuel_remaining()
    }
    pub fn memory_cap() -> u64 {
        wit::memory_cap()
    }
    pub fn memory_used() -> u64 {
        wit::memory_used()
    }
    pub fn time_remaining_ns() -> Option<u64> {
        wit::time_remaining_ns()
    }
}

#[cfg(not(target_env = "p2"))]
mod budget {
    #[link(wasm_import_module = "wasm_run_budget")]
    unsafe extern "C" {
        #[link_name = "fuel_remaining"]
        fn raw_fuel_remaining() -> i64;
        #[link_name = "memory_cap"]
        fn raw_memory_cap() -> i64;
        #[link_name = "memory_used"]
        fn raw_memory_used() -> i64;
        #[link_name = "time_remaining_ns"]
        fn raw_time_remaining_ns() -> i64;
    }

    /// `-1` is "none".
    fn some(v: i64) -> Option<u64> {
        u64::try_from(v).ok()
    }

    pub fn fuel_remaining() -> Option<u64> {
        // SAFETY: a host function taking nothing and returning an i64.
        some(unsafe { raw_fuel_remaining() })
    }
    pub fn memory_cap() -> u64 {
        // SAFETY: as above.
        some(unsafe { raw_memory_cap() }).unwrap_or(0)
    }
    pub fn memory_used() -> u64 {
        // SAFETY: as above.
        some(unsafe { raw_memory_used() }).unwrap_or(0)
    }
    pub fn time_remaining_ns() -> Option<u64> {
        // SAFETY: as above.
        some(unsafe { raw_time_remaining_ns() })
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// Whether the budget left is down to the reserve.
fn must_stop() -> bool {
    budget::fuel_remaining().is_some_and(|f| f < FUEL_RESERVE)
        || budget::time_remaining_ns().is_some_and(|t| t < TIME_RESERVE.as_nanos() as u64)
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn main() {
    let cgi = std::env::var_os("GATEWAY_INTERFACE").is_some();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if cgi && let Ok(path) = std::env::var("PATH_INFO") {
        args.extend(
            path.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    if args.first().map(String::as_str) == Some("report") {
        if cgi {
            print!("Content-Type: text/plain\r\n\r\n");
        }
        println!("fuel_remaining={}", show(budget::fuel_remaining()));
        println!("memory_cap={}", budget::memory_cap());
        println!("memory_used={}", budget::memory_used());
        println!("time_remaining_ns={}", show(budget::time_remaining_ns()));
        return;
    }
    let limit: u64 = match args.first().map(|a| a.parse()) {
        None => 50_000_000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("search: usage: search [report | N [--ignore-budget]]");
            std::process::exit(2);
        }
    };
    let heed_budget = !args.iter().any(|a| a == "--ignore-budget");
    let mut found = 0u64;
    let mut next = 0u64;
    let mut partial = false;
    while next < limit {
        if heed_budget && next.is_multiple_of(1024) && must_stop() {
            partial = true;
            break;
        }
        if is_prime(next) {
            found += 1;
        }
        next += 1;
    }
    if cgi {
        print!("Content-Type: text/plain\r\n");
        if partial {
            print!("X-Partial-Result: true\r\n");
        }
        print!("\r\n");
    }
    if partial {
        println!(
            "partial: {found} primes below {next} (of {limit}); stopped with fuel {} and {} ns left",
            show(budget::fuel_remaining()),
            show(budget::time_remaining_ns())
        );
    } else {
        println!("complete: {found} primes below {limit}");
    }
}
