//! Writes lines to stdout forever: output caps and closed pipes (exits 1 on a write error).

use std::io::{BufWriter, Write};

const LINE: &[u8] = b"flood flood flood flood flood flood flood flood\n";

fn main() {
    let mut out = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    loop {
        if out.write_all(LINE).is_err() {
            std::process::exit(1);
        }
    }
}
