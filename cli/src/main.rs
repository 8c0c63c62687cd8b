//! The `wasm-run` binary: parses the command line and dispatches to one
//! command struct per subcommand. All the work lives in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod confine;

/// Host memory is charged to the invocation that causes it, so that
/// `--max-memory` covers it (see `wasm_run::accounting`).
#[cfg(feature = "accounting")]
#[global_allocator]
static ALLOC: wasm_run::Accounting = wasm_run::Accounting;

/// Run WebAssembly guests with per-invocation limits: fuel, memory, deadline.
///
/// Every run is its own sandbox, like a Unix process of old: a guest that
/// exceeds a limit is killed and wasm-run says which limit it hit.
#[derive(Debug, Parser)]
#[command(name = "wasm-run", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(commands::run::RunCommand),
    Compile(commands::compile::CompileCommand),
    Serve(Box<commands::serve::ServeCommand>),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(cmd) => {
            commands::init_tracing(commands::LogFormat::Text, "warn");
            cmd.execute()
        }
        Command::Compile(cmd) => {
            commands::init_tracing(commands::LogFormat::Text, "warn");
            cmd.execute()
        }
        Command::Serve(cmd) => {
            commands::init_tracing(cmd.log_format, "info");
            cmd.execute()
        }
    }
}
