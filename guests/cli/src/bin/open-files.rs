//! Opens the file argv[1] argv[2] times (default 1,000), holding every one, prints `opened K of N` (and the error that stopped it on stderr), then sleeps argv[3] seconds (default 0): the per-invocation cap on open files.

use std::io::Write;
use std::process::exit;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: open-files <path> [count] [seconds]");
        exit(2)
    };
    let number = |arg: Option<String>, default: f64| {
        arg.map_or(Ok(default), |a| a.parse::<f64>().map_err(|_| a))
            .unwrap_or_else(|a| {
                eprintln!("open-files: not a number: {a}");
                exit(2)
            })
    };
    let count = number(args.next(), 1000.0) as usize;
    let secs = number(args.next(), 0.0);
    let mut files = Vec::new();
    while files.len() < count {
        match std::fs::File::open(&path) {
            Ok(file) => files.push(file),
            Err(err) => {
                eprintln!("open-files: {path}: {err}");
                break;
            }
        }
    }
    println!("opened {} of {count}", files.len());
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs_f64(secs));
    drop(files);
}
