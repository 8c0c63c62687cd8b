//! Recurses without bound (not a tail call) until the stack overflows: the wasm stack limit.

use std::hint::black_box;

fn depth(n: u64) -> u64 {
    if black_box(n) == u64::MAX {
        return 0;
    }
    // Passing the result through `black_box` keeps LLVM from turning this
    // into a loop with an accumulator.
    black_box(depth(n + 1)) + 1
}

fn main() {
    eprintln!("recurse: recursing until the stack overflows");
    println!("{}", depth(0));
}
