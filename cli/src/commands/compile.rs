//! `wasm-run compile`: compile a module or component ahead of time into an
//! artifact that `run` and `serve` load without compiling.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use wasm_run::{Engine, EngineConfig, Proposal};

use super::EXIT_LOAD_FAILED;

const AFTER_HELP: &str = "\
The artifact is native code for this machine's CPU. `wasm-run run` and
`wasm-run serve` load it only when told to trust it, with --allow-precompiled
(a config route: `allow-precompiled = true`), and then start it in milliseconds
instead of compiling; without the flag they refuse it (exit 125 / a
configuration error). Unlike wasm, native code cannot be validated: whoever can
change the file chooses what runs inside wasm-run, outside the sandbox. Load
only artifacts you made, kept where only you can write, as you would a binary.

The artifact records what the wasm needs per instance (instance state, core
instances, memories, tables), so limits and admission treat it exactly like
its wasm. One made by another wasm-run or wasmtime version, or with another
engine configuration (such as other --wasm-proposal settings), is refused with
exit status 125 and a message saying so: compile again.

Exit status: 0 compiled; 125 the module could not be read or compiled; 2 bad usage.

Examples:
  wasm-run compile app.wasm -o app.cwasm
  wasm-run run --allow-precompiled app.cwasm
  wasm-run serve --allow-precompiled app.cwasm";

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

    /// Turn on a wasm proposal wasm-run leaves off (repeatable): `gc`,
    /// `exceptions`, `threads` or `memory64`. None of the guests built for
    /// wasm-run today needs one, and each is engine code a guest can reach,
    /// so they are off by default. An artifact of `wasm-run compile` made
    /// with a proposal on is refused where that proposal is off.
    #[arg(long = "wasm-proposal", value_name = "NAME")]
    proposals: Vec<Proposal>,

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
        let engine = Engine::new(EngineConfig {
            proposals: self.proposals.clone(),
            ..EngineConfig::default()
        })?;
        let artifact = engine.precompile(&self.module.display().to_string(), &bytes)?;
        std::fs::write(&self.output, artifact)
            .with_context(|| format!("cannot write {}", self.output.display()))?;
        Ok(())
    }
}
