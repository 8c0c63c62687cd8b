//! Prints the file named by argv[1]: preopened directories and filesystem sandboxing.

use std::io::Write;
use std::process::exit;

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: cat <path>");
        exit(2)
    };
    let contents = match std::fs::read(&path) {
        Ok(contents) => contents,
        Err(err) => {
            eprintln!("cat: {}: {err}", path.to_string_lossy());
            exit(1)
        }
    };
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_all(&contents).and_then(|()| out.flush()) {
        eprintln!("cat: {err}");
        exit(1);
    }
}
