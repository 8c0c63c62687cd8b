//! Recurses without bound (not a tail call) until the stack overflows: the
//! wasm stack limit.
//!
//! With a depth — the first argument, or `depth=N` in CGI's `QUERY_STRING`
//! — it recurses that many calls deep instead, waits there `hold` ms (the
//! second argument, or `hold=MS`; default 0) with its stack in use, and
//! prints the depth: a request that holds stack pages. `fill=KIB` (the
//! third argument) first fills that many KiB of linear memory. Served
//! CGI-style (`GATEWAY_INTERFACE` set), it writes a response head first.

use std::hint::black_box;
use std::time::Duration;

#[path = "../../../query.rs"]
mod query;

fn depth(n: u64, bottom: u64, hold: Duration) -> u64 {
    if black_box(n) >= bottom {
        std::thread::sleep(hold);
        return 0;
    }
    // Passing the result through `black_box` keeps LLVM from turning this
    // into a loop with an accumulator.
    black_box(depth(n + 1, bottom, hold)) + 1
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let query = std::env::var("QUERY_STRING").unwrap_or_default();
    let bottom = args
        .first()
        .and_then(|a| a.parse().ok())
        .or_else(|| query::query_parsed(&query, "depth"));
    let hold = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .or_else(|| query::query_parsed(&query, "hold"))
        .unwrap_or(0);
    let fill: usize = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .or_else(|| query::query_parsed(&query, "fill"))
        .unwrap_or(0);
    let filled = black_box(vec![1u8; fill << 10]);
    if std::env::var_os("GATEWAY_INTERFACE").is_some() {
        // Served CGI-style: a response head first.
        println!("content-type: text/plain\n");
    }
    match bottom {
        Some(bottom) => println!("{}", depth(0, bottom, Duration::from_millis(hold))),
        None => {
            eprintln!("recurse: recursing until the stack overflows");
            println!("{}", depth(0, u64::MAX, Duration::ZERO));
        }
    }
    drop(filled);
}
