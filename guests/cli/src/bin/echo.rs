//! Copies stdin to stdout until EOF: stdin plumbing.

fn main() {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = std::io::copy(&mut stdin, &mut stdout) {
        eprintln!("echo: {err}");
        std::process::exit(1);
    }
}
