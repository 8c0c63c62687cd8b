//! Loops forever without calling the host: only fuel or epoch interruption stops it.

use std::hint::black_box;

fn main() {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}
