//! Prints its arguments as `arg=VALUE` then its environment as sorted `KEY=VALUE`: args and env passing.

use std::io::Write;

fn main() {
    let mut out = std::io::stdout().lock();
    let mut lines = String::new();
    for arg in std::env::args_os().skip(1) {
        lines += &format!("arg={}\n", arg.to_string_lossy());
    }
    let mut vars: Vec<_> = std::env::vars_os().collect();
    vars.sort();
    for (key, value) in vars {
        lines += &format!("{}={}\n", key.to_string_lossy(), value.to_string_lossy());
    }
    if out
        .write_all(lines.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(1);
    }
}
