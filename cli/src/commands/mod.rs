//! One module per subcommand, each with a clap struct and `execute(self)`.

pub mod compile;
pub mod run;
pub mod serve;

use std::path::PathBuf;

use tracing_subscriber::EnvFilter;

/// Exit status when wasm-run could not load or instantiate the guest.
pub const EXIT_LOAD_FAILED: u8 = 125;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the log subscriber: stderr, level from `WASM_RUN_LOG` (or
/// `RUST_LOG`), else `default_level`.
pub fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = std::env::var("WASM_RUN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_level.to_string());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// Parses `--env KEY=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "`{s}` is not KEY=VALUE (for example GREETING=hello)"
        )),
    }
}

/// Creates the compile cache's directory (mode 0700) before the process
/// confines itself, so that the confinement's rule for it has a directory to
/// name. The library checks it again before using it.
pub fn make_cache_dir(dir: &std::path::Path) {
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
}

/// Where compiled code is cached between runs.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WASM_RUN_CACHE_DIR") {
        return Some(dir.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("wasm-run"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_flag_needs_key_and_value() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("NOEQUALS").unwrap_err().contains("NOEQUALS"));
    }
}
