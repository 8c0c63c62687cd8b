//! Allocates argv[1] MiB (default 16) in touched 1 MiB chunks, then exits 0: fits under a cap.

use std::hint::black_box;
use std::process::exit;

const MIB: usize = 1 << 20;

fn main() {
    let mib = match std::env::args().nth(1) {
        None => 16,
        Some(arg) => arg.parse::<usize>().unwrap_or_else(|_| {
            eprintln!("alloc: not a number of MiB: {arg}");
            exit(2)
        }),
    };
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(mib);
    for _ in 0..mib {
        // Nonzero fill so every page is written, not just reserved.
        held.push(black_box(vec![0x5A; MIB]));
    }
    black_box(&held);
    println!("allocated {mib} MiB");
}
