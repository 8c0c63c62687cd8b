//! One module per subcommand, each with a clap struct and `execute(self)`.

pub mod run;

use tracing_subscriber::EnvFilter;

/// Exit status when wasm-run could not load or instantiate the guest.
pub const EXIT_LOAD_FAILED: u8 = 125;

/// Installs the log subscriber: stderr, level from `WASM_RUN_LOG` (or
/// `RUST_LOG`), warnings only by default.
pub fn init_tracing() {
    let filter = std::env::var("WASM_RUN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
