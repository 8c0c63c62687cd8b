//! Allocates argv[1] MiB (default 16) in touched 1 MiB chunks, then exits 0: fits under a cap.

use std::hint::black_box;

#[path = "../../../args.rs"]
mod args;

const MIB: usize = 1 << 20;

fn main() {
    let mib: usize = args::first_arg_or(16, "alloc: not a number of MiB");
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(mib);
    for _ in 0..mib {
        // Nonzero fill so every page is written, not just reserved.
        held.push(black_box(vec![0x5A; MIB]));
    }
    black_box(&held);
    println!("allocated {mib} MiB");
}
