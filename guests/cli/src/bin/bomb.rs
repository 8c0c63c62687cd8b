//! Allocates and touches 1 MiB chunks until memory runs out: the linear-memory cap.

use std::hint::black_box;

const MIB: usize = 1 << 20;

fn main() {
    eprintln!("bomb: allocating until killed");
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Nonzero fill so every page is written, not just reserved.
        hoard.push(black_box(vec![0xA5; MIB]));
    }
}
