//! `wasm-run run`: run one guest under limits, like `timeout` + `ulimit` for
//! wasm, and report what it used.

use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use anyhow::Context as _;
use clap::Args;
use tokio::io::AsyncWrite;
use wasm_run::limits::{CpuLimit, DEFAULT_MAX_MEMORY, HumanDuration, MemoryCap};
use wasm_run::{
    DirMapping, Engine, EngineConfig, Guest, Input, Invocation, Limits, OutboundPolicy, Outcome,
    Output, Proposal,
};

use super::{EXIT_LOAD_FAILED, cache_dir, make_cache_dir, parse_env};
use crate::confine::{self, Mode};

const AFTER_HELP: &str = "\
Limits:
  --fuel 50000000        kill the guest after ~50 million wasm instructions
  --max-memory 64MiB     kill the guest when its memory (linear + tables + the host
                         memory it makes wasm-run hold) would pass 64 MiB
  --timeout 2s           kill the guest 2 seconds after it starts, even while it sleeps
  --max-cpu 100ms        kill the guest once it has used 100 ms of CPU (not while blocked)

Exit status:
  the guest's own exit code when it exits;
  124 deadline_exceeded, 137 memory_exceeded, 152 fuel_exhausted or cpu_exceeded
  (128 + SIGXCPU),
  134 trapped, 125 wasm-run could not load or instantiate the guest, 2 bad usage.

Report (--report PATH, or - for stderr), one JSON object:
  {\"outcome\": \"exited\"|\"fuel_exhausted\"|\"cpu_exceeded\"|\"memory_exceeded\"|\"deadline_exceeded\"|\"trapped\",
   \"exit_code\": N|null, \"fuel_consumed\": N, \"peak_memory_bytes\": N,
   \"wall_time_us\": N, \"message\": \"...\"|null,
   \"host_memory_peak_bytes\": N, (host memory charged to the guest: instance state,
                                resources, buffers)
   \"cpu_time_us\": N,            (CPU used in wasm and host calls, not waiting)
   \"host_peak_rss_bytes\": N,   (peak memory of the wasm-run process itself)
   \"trap\": \"...\"}               (only when trapped: stack_overflow, unreachable,
                                out_of_bounds, arithmetic, bad_reference,
                                output_cap_exceeded, host_call, other)

Memory: --max-memory is one number: linear memory, tables (8 bytes an
element) and every byte of host memory the guest makes wasm-run hold
(instance state, WASI resources, buffers, copies of host-call arguments).
A guest whose instance state alone cannot fit is refused before it is
allocated. A guest may also hold at most 1024 WASI resources (open files,
streams, ...). Past either it is killed as memory_exceeded. The cap is at
most 4GiB.

Examples:
  wasm-run run hello.wasm
  wasm-run run --max-memory 32MiB --timeout 500ms --report - bomb.wasm
  wasm-run run --dir ./data::/data --env GREETING=hi app.wasm arg1 arg2";

/// Loads MODULE: wasm or WAT always, an artifact of `wasm-run compile`
/// only with `--allow-precompiled`.
#[expect(
    unsafe_code,
    reason = "the user vouched for artifacts with --allow-precompiled"
)]
fn load(
    engine: &Engine,
    module: &std::path::Path,
    allow_precompiled: bool,
) -> wasm_run::Result<Guest> {
    if allow_precompiled {
        // SAFETY: `--allow-precompiled` is the user's statement that an
        // artifact given as MODULE is one they made or trust as a binary.
        unsafe { Guest::from_file_allow_precompiled(engine, module) }
    } else {
        Guest::from_file(engine, module)
    }
}

/// Run a WASI command module or component under limits.
///
/// MODULE is a wasm32-wasip1 core module with `_start`, a wasi:cli command
/// component (WASI 0.2 `wasi:cli/run@0.2.x` or 0.3 `wasi:cli/run@0.3.x`),
/// WebAssembly text of either, or (with --allow-precompiled) an artifact of
/// `wasm-run compile`. Its stdin, stdout and stderr are
/// this process's; it sees only the environment variables and directories
/// given with --env and --dir. wasm-run's own messages go to stderr, prefixed
/// with `wasm-run:`.
#[derive(Debug, Args)]
#[command(
    after_help = AFTER_HELP,
    args_override_self = true,
    override_usage = "wasm-run run [OPTIONS] <MODULE> [ARGS]..."
)]
pub struct RunCommand {
    /// Fuel budget: roughly one unit per wasm instruction. The guest is
    /// killed (exit 152) when it runs out. Default: unlimited (fuel is still
    /// counted and reported).
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,

    /// Cap on the guest's total memory (all linear memories and tables, and
    /// the host memory it causes), e.g. `64MiB`, `1GiB`, `65536`; at most
    /// `4GiB`. Passing it kills the guest (exit 137).
    #[arg(long, value_name = "SIZE", default_value_t = MemoryCap(DEFAULT_MAX_MEMORY))]
    max_memory: MemoryCap,

    /// Wall-clock deadline, e.g. `250ms`, `2s`, `1m`; it also fires while the
    /// guest sleeps or waits on I/O (exit 124). Default: none.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<HumanDuration>,

    /// CPU-time limit, e.g. `50ms`, like RLIMIT_CPU: CPU the guest spends in
    /// wasm and in host calls, not time it is blocked (exit 152,
    /// cpu_exceeded). Default: none.
    #[arg(long, value_name = "DURATION")]
    max_cpu: Option<CpuLimit>,

    /// Set an environment variable in the guest (repeatable). Nothing is
    /// inherited from wasm-run's own environment.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Give the guest a host directory, as GUEST path if given (repeatable),
    /// e.g. `--dir ./data::/data`; read-write, or read-only with a trailing
    /// `:ro` (`--dir ./data::/data:ro`). Default: no filesystem access.
    #[arg(long = "dir", value_name = "HOST[::GUEST][:ro]")]
    dirs: Vec<String>,

    /// Write a JSON usage report to PATH, or to stderr with `-`.
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,

    /// Also accept MODULE as an artifact of `wasm-run compile` (native code,
    /// loaded without compiling). Without this flag an artifact is refused
    /// (exit 125): it runs inside wasm-run as machine code, not as sandboxed
    /// wasm, so pass it only for artifacts you made or trust as a binary.
    #[arg(long)]
    allow_precompiled: bool,

    /// Turn on a wasm proposal wasm-run leaves off (repeatable): `gc`,
    /// `exceptions`, `threads` or `memory64`. None of the guests built for
    /// wasm-run today needs one, and each is engine code a guest can reach,
    /// so they are off by default. An artifact of `wasm-run compile` made
    /// with a proposal on is refused where that proposal is off.
    #[arg(long = "wasm-proposal", value_name = "NAME")]
    proposals: Vec<Proposal>,

    /// Do not use the compiled-module cache (by default compiled code is
    /// cached in $WASM_RUN_CACHE_DIR, or $XDG_CACHE_HOME/wasm-run, or
    /// ~/.cache/wasm-run, so repeated runs skip compilation).
    #[arg(long)]
    no_cache: bool,

    /// Confine the wasm-run process, a second wall in case code ever escapes
    /// the wasm sandbox: `on` lets it read only MODULE, read and write only
    /// the --dir directories, the --report file and the compile cache, and
    /// make only the system calls the host needs (others fail with ENOSYS:
    /// no exec, no new processes or namespaces); `audit` confines files and
    /// lets the kernel log system calls outside the list instead of refusing
    /// them; `off` for debugging or a kernel without Landlock and seccomp.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Mode::On, env = "WASM_RUN_CONFINE")]
    confine: Mode,

    /// The module or component to run, then the arguments passed to the
    /// guest (after its own name). Options go before MODULE: everything after
    /// it is the guest's, `--help` and `--version` included.
    #[arg(
        value_name = "MODULE [ARGS]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    command: Vec<String>,
}

impl RunCommand {
    /// The module or component to run (the first of `command`).
    fn module(&self) -> PathBuf {
        PathBuf::from(&self.command[0])
    }

    /// Runs the guest and returns the exit status per the `run` contract.
    pub fn execute(self) -> ExitCode {
        // Before any thread: the file rules apply to the threads started
        // after them.
        let report_file = match self.open_report() {
            Ok(file) => file,
            Err(e) => return fail(&format!("{e:#}")),
        };
        confine::files(self.confine, &self.files());
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
        };
        let module = self.module().display().to_string();
        let report = self.report.clone().map(|path| (path, report_file));
        let stdout_tail = LineTracker::default();
        let stderr_tail = LineTracker::default();
        let result = runtime.block_on(self.run(&stdout_tail, &stderr_tail));
        // Our messages start on a fresh line even if the guest's did not end.
        let mid_line = stdout_tail.mid_line() || stderr_tail.mid_line();
        let lead = if mid_line { "\n" } else { "" };
        match result {
            Ok(outcome) => {
                let mut lead = lead;
                if let Some((path, file)) = report {
                    if let Err(e) = write_report(&path, file, &outcome, lead) {
                        eprintln!("{lead}wasm-run: {e:#}");
                        return ExitCode::from(EXIT_LOAD_FAILED);
                    }
                    if path.as_os_str() == "-" {
                        lead = "";
                    }
                }
                if let Some(message) = outcome.message() {
                    eprintln!(
                        "{lead}wasm-run: {module}: {}: {message}",
                        outcome.kind.name()
                    );
                }
                ExitCode::from(exit_byte(outcome.kind.exit_status()))
            }
            Err(e) => {
                eprintln!("{lead}wasm-run: {e:#}");
                ExitCode::from(EXIT_LOAD_FAILED)
            }
        }
    }

    /// What the guest's run may touch on the file system once confined.
    fn files(&self) -> confine::Files {
        let mut files = confine::Files::default();
        files.read(self.module());
        for dir in self.dirs.iter().map(|d| DirMapping::parse(d)) {
            if dir.read_only {
                files.read(dir.host);
            } else {
                files.write(dir.host);
            }
        }
        if let Some(report) = self.report.as_ref().filter(|p| p.as_os_str() != "-") {
            files.write(report);
        }
        if let Some(dir) = cache_dir().filter(|_| !self.no_cache) {
            make_cache_dir(&dir);
            files.write(dir);
        }
        files
    }

    /// Creates the --report file before the process confines itself (it may
    /// then write that file and no other), or `None` for stderr or none.
    fn open_report(&self) -> anyhow::Result<Option<std::fs::File>> {
        match &self.report {
            Some(path) if path.as_os_str() != "-" => std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map(Some)
                .with_context(|| format!("cannot open the report file {}", path.display())),
            _ => Ok(None),
        }
    }

    async fn run(self, stdout: &LineTracker, stderr: &LineTracker) -> anyhow::Result<Outcome> {
        let engine = Engine::new(EngineConfig {
            // One invocation per process: pre-reserving a pool buys nothing,
            // and there is no other request to make way for, so the guest
            // keeps the priority the user started wasm-run with.
            pooling: false,
            demote_after: std::time::Duration::MAX,
            proposals: self.proposals.clone(),
            cache_dir: if self.no_cache { None } else { cache_dir() },
            ..EngineConfig::default()
        })?;
        let guest = load(&engine, &self.module(), self.allow_precompiled)?;
        // Loaded and about to run: from here on, only the calls the host needs.
        confine::syscalls(self.confine);
        let invocation = Invocation {
            args: self.command[1..].to_vec(),
            program_name: None,
            env: self.env,
            dirs: self.dirs.iter().map(|d| DirMapping::parse(d)).collect(),
            stdin: Input::Inherit,
            stdout: Output::Writer(Box::new(stdout.wrap(tokio::io::stdout()))),
            stderr: Output::Writer(Box::new(stderr.wrap(tokio::io::stderr()))),
            limits: Limits {
                fuel: self.fuel,
                max_memory: self.max_memory.0,
                timeout: self.timeout.map(|t| t.0),
                max_cpu: self.max_cpu.map(|c| c.0),
                ..Limits::default()
            },
            outbound: OutboundPolicy::default(),
            ..Invocation::default()
        };
        Ok(guest.run(invocation).await?)
    }
}

/// Writes the report to `path`, or to stderr (after `lead`) for `-`.
///
/// Beside the contract's fields (and the library report's `trap` reason)
/// it adds `cpu_time_us`, the CPU the guest
/// used (in wasm and host calls, not waiting), and `host_peak_rss_bytes`: the peak
/// resident memory of the whole wasm-run process (engine, compiled code and
/// every byte the guest made the host hold), where Linux reports it.
fn write_report(
    path: &std::path::Path,
    file: Option<std::fs::File>,
    outcome: &Outcome,
    lead: &str,
) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct CliReport {
        #[serde(flatten)]
        report: wasm_run::Report,
        cpu_time_us: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        host_peak_rss_bytes: Option<u64>,
    }
    let json = serde_json::to_string(&CliReport {
        report: outcome.report(),
        cpu_time_us: u64::try_from(outcome.usage.cpu_time.as_micros()).unwrap_or(u64::MAX),
        host_peak_rss_bytes: host_peak_rss(),
    })?;
    if path.as_os_str() == "-" {
        let mut err = std::io::stderr().lock();
        writeln!(err, "{lead}{json}").context("writing the report to stderr")?;
    } else {
        let mut file = match file {
            Some(file) => file,
            None => std::fs::File::create(path)
                .with_context(|| format!("writing the report to {}", path.display()))?,
        };
        file.set_len(0)
            .and_then(|()| file.write_all(format!("{json}\n").as_bytes()))
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    Ok(())
}

/// The process's peak resident set size (`VmHWM` of `/proc/self/status`).
fn host_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Unix keeps the low 8 bits of an exit status.
fn exit_byte(status: i32) -> u8 {
    (status & 0xff) as u8
}

fn fail(message: &str) -> ExitCode {
    eprintln!("wasm-run: {message}");
    ExitCode::from(EXIT_LOAD_FAILED)
}

/// Remembers whether the last byte the guest wrote to a stream ended a line.
#[derive(Clone, Default)]
struct LineTracker(Arc<AtomicBool>);

impl LineTracker {
    fn mid_line(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn wrap<W>(&self, inner: W) -> Tracked<W> {
        Tracked {
            inner,
            mid_line: self.0.clone(),
        }
    }
}

struct Tracked<W> {
    inner: W,
    mid_line: Arc<AtomicBool>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Tracked<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll
            && let Some(last) = buf[..*n].last()
        {
            self.mid_line.store(*last != b'\n', Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_keeps_the_low_byte() {
        assert_eq!(exit_byte(3), 3);
        assert_eq!(exit_byte(256 + 7), 7);
        assert_eq!(exit_byte(-1), 255);
    }
}
