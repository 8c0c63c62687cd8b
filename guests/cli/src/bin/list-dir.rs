//! Lists the directory argv[1] and prints `N entries`: directory listings, which the host reads whole, count against the memory cap.

use std::process::exit;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: list-dir <path>");
        exit(2)
    };
    match std::fs::read_dir(&path) {
        Ok(entries) => println!("{} entries", entries.count()),
        Err(err) => {
            eprintln!("list-dir: {path}: {err}");
            exit(1)
        }
    }
}
