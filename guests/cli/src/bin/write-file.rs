//! Writes argv[2] (default `written`) to the file named by argv[1]: read-only
//! and read-write preopened directories.

use std::process::exit;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: write-file <path> [text]");
        exit(2)
    };
    let text = args.next().map_or_else(
        || "written".to_string(),
        |t| t.to_string_lossy().into_owned(),
    );
    if let Err(err) = std::fs::write(&path, text) {
        eprintln!("write-file: {}: {err}", path.to_string_lossy());
        exit(1);
    }
}
