//! Guest code that hogs a limit on purpose, shared by the WASI 0.3 guests
//! (included with `#[path]`, as `query.rs` is).

use std::hint::black_box;

/// Loops forever (fuel, CPU time, deadline).
pub fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Allocates touched 1 MiB chunks forever (memory cap).
pub fn bomb() -> ! {
    let mut kept = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        for i in (0..chunk.len()).step_by(4096) {
            chunk[i] = 1;
        }
        kept.push(black_box(chunk));
    }
}
