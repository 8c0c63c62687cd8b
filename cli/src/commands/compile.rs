//! `wasm-run compile`: compile a module or component ahead of time into an
//! artifact that `run` and `serve` load without compiling.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use wasm_run::{Engine, EngineConfig};

use super::EXIT_LOAD_FAILED;

const AFTER_HELP: &str = "\
The artifact is native code for this machine's CPU. `wasm-run run` and
`wasm-run serve` (and config routes) accept it wherever they accept a module,
and start it in milliseconds instead of compiling. An artifact made by another
wasm-run or wasmtime version, or with another engine configuration, is refused
with exit status 125 and a message saying so: compile again.

Load only artifacts you made or trust as you would a binary: unlike wasm, they
cannot be validated.

Exit status: 0 compiled; 125 the module could not be read or compiled; 2 bad usage.

Examples:
  wasm-run compile app.wasm -o app.cwasm
  wasm-run run app.cwasm
  wasm-run serve app.cwasm";

/// Compile a module or component ahead of time.
///
/// MODULE is a wasm32-wasip1 core module, a component, or WebAssembly text of
/// either.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct CompileCommand {
    /// Where to write the compiled artifact.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: PathBuf,

    /// The module or component to compile.
    #[arg(value_name = "MODULE")]
    module: PathBuf,
}

impl CompileCommand {
    /// Compiles MODULE into OUT.
    pub fn execute(self) -> ExitCode {
        match self.compile() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wasm-run: {e:#}");
                ExitCode::from(EXIT_LOAD_FAILED)
            }
        }
    }

    fn compile(&self) -> anyhow::Result<()> {
        let bytes = std::fs::read(&self.module)
            .with_context(|| format!("cannot read {}", self.module.display()))?;
        // The same engine settings as `run` and `serve`, so either loads it.
        let engine = Engine::new(EngineConfig::default())?;
        let artifact = engine.precompile(&self.module.display().to_string(), &bytes)?;
        std::fs::write(&self.output, artifact)
            .with_context(|| format!("cannot write {}", self.output.display()))?;
        Ok(())
    }
}
