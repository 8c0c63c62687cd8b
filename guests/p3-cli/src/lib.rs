//! A WASI 0.3 `wasi:cli/command` component for `wasm-run run`: exports
//! `wasi:cli/run@0.3.0` (an async function) and acts on its first argument.
//!
//! | argument | behaviour |
//! | --- | --- |
//! | none, `hello` | writes `Hello from a WASI 0.3 command!` to stdout through a WASI 0.3 stream, exits 0 |
//! | `echo` | copies stdin to stdout, both WASI 0.3 streams |
//! | `exit N` | exits with code `N` (`wasi:cli/exit.exit-with-code`) |
//! | `fail` | returns `Err(())` from `run` (exit status 1) |
//! | `spin` | loops forever (fuel, CPU time, deadline) |
//! | `bomb` | allocates touched 1 MiB chunks forever (memory cap) |
//! | `subtasks N` | spawns `N` subtasks that spin forever, then waits on them |
//! | `flood` | writes 64 KiB chunks to stdout forever (output cap) |
//! | `dirs PATH` | prints `p3 preopens: N` (the directories WASI 0.3's filesystem offers) and `std read: LEN` (the file at `PATH` read through std, which speaks WASI 0.2), or the error |
//!
//! Built for `wasm32-wasip2` only.

use wasip3::wit_stream;

#[path = "../../hogs.rs"]
mod hogs;
#[path = "../../p3_streams.rs"]
mod p3_streams;
use hogs::{bomb, spin};

wasip3::cli::command::export!(Command);

struct Command;

impl wasip3::exports::cli::run::Guest for Command {
    async fn run() -> Result<(), ()> {
        let args = wasip3::cli::environment::get_arguments();
        let arg = |i: usize| args.get(i).map(String::as_str);
        match arg(1).unwrap_or("hello") {
            "hello" => write_stdout(vec![b"Hello from a WASI 0.3 command!\n".to_vec()]).await,
            "echo" => echo().await,
            "exit" => {
                let code = arg(2).and_then(|c| c.parse().ok()).unwrap_or(1);
                wasip3::cli::exit::exit_with_code(code);
            }
            "fail" => return Err(()),
            "spin" => spin(),
            "bomb" => bomb(),
            "subtasks" => {
                let n: u32 = arg(2).and_then(|c| c.parse().ok()).unwrap_or(8);
                for _ in 0..n {
                    wasip3::spawn_local(async {
                        wasip3::clocks::monotonic_clock::wait_for(1_000_000).await;
                        spin();
                    });
                }
                wasip3::clocks::monotonic_clock::wait_for(u64::MAX / 2).await;
            }
            "flood" => {
                let chunks = std::iter::repeat_with(|| vec![b'x'; 64 * 1024]);
                write_stdout(chunks).await;
            }
            "dirs" => {
                let p3 = wasip3::filesystem::preopens::get_directories().len();
                let read = match std::fs::read_to_string(arg(2).unwrap_or("/")) {
                    Ok(text) => format!("std read: {}", text.len()),
                    Err(e) => format!("std read failed: {e}"),
                };
                write_stdout(vec![format!("p3 preopens: {p3}\n{read}\n").into_bytes()]).await;
            }
            other => {
                let message = format!("unknown argument {other}\n").into_bytes();
                write_stdout(vec![message]).await;
                return Err(());
            }
        }
        Ok(())
    }
}

/// Writes `chunks` to stdout through one WASI 0.3 stream.
async fn write_stdout(chunks: impl IntoIterator<Item = Vec<u8>> + 'static) {
    let (mut tx, rx) = wit_stream::new();
    wasip3::spawn_local(async move {
        for chunk in chunks {
            if !tx.write_all(chunk).await.is_empty() {
                return;
            }
        }
    });
    let _ = wasip3::cli::stdout::write_via_stream(rx).await;
}

async fn echo() {
    let (mut stdin, _done) = wasip3::cli::stdin::read_via_stream();
    let (mut tx, rx) = wit_stream::new();
    wasip3::spawn_local(async move {
        p3_streams::pump(&mut stdin, &mut tx).await;
    });
    let _ = wasip3::cli::stdout::write_via_stream(rx).await;
}
