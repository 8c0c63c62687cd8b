//! One invocation of a guest: a fresh store with its own WASI context and
//! limits, instantiate, call the entry point, classify, drop.

use std::path::PathBuf;
use std::time::Instant;

use wasmtime::Store;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::Limits;
use crate::error::{Error, Result};
use crate::guest::{Guest, Pre};
use crate::io::{self, Input, Output, Stream};
use crate::outbound::OutboundPolicy;
use crate::outcome::{CallEnd, Outcome, OutcomeKind, Usage, classify};
use crate::store::{StoreState, new_store};

/// A directory of the host made visible to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirMapping {
    /// Path on the host.
    pub host: PathBuf,
    /// Path the guest sees it as, e.g. `/data` or `.`.
    pub guest: String,
    /// Whether the guest may only read it. `wasm-run run` maps directories
    /// read-write unless told `:ro`; `wasm-run serve` routes read-only
    /// unless told `:rw`.
    pub read_only: bool,
}

impl DirMapping {
    /// Parses the CLI spelling `HOST[::GUEST][:ro|:rw]`, read-write unless
    /// it ends in `:ro` (as `wasm-run run` does, like wasmtime). The guest
    /// path defaults to the host path.
    pub fn parse(spec: &str) -> DirMapping {
        DirMapping::parse_with_default(spec, false)
    }

    /// Parses `HOST[::GUEST][:ro|:rw]`: a trailing `:ro` makes the mapping
    /// read-only, `:rw` read-write, and without either it is read-only when
    /// `read_only_by_default` (as for `wasm-run serve` routes).
    pub fn parse_with_default(spec: &str, read_only_by_default: bool) -> DirMapping {
        let (paths, read_only) = if let Some(p) = spec.strip_suffix(":ro") {
            (p, true)
        } else if let Some(p) = spec.strip_suffix(":rw") {
            (p, false)
        } else {
            (spec, read_only_by_default)
        };
        let (host, guest) = paths.split_once("::").unwrap_or((paths, paths));
        DirMapping {
            host: host.into(),
            guest: guest.to_string(),
            read_only,
        }
    }
}

/// Everything one invocation needs besides the guest itself.
#[derive(Debug, Default)]
pub struct Invocation {
    /// Arguments after the program name; the guest's `argv[0]` is
    /// [`Invocation::program_name`].
    pub args: Vec<String>,
    /// `argv[0]`; defaults to the guest's name.
    pub program_name: Option<String>,
    /// Environment variables, in order. Nothing is inherited from the host.
    pub env: Vec<(String, String)>,
    /// Preopened directories. None by default: no filesystem access.
    pub dirs: Vec<DirMapping>,
    /// The guest's stdin. Default: empty.
    pub stdin: Input,
    /// The guest's stdout. Default: discarded.
    pub stdout: Output,
    /// The guest's stderr. Default: discarded.
    pub stderr: Output,
    /// The limits this invocation runs under.
    pub limits: Limits,
    /// Hosts a component may send wasi:http requests to. Default: none
    /// (every outgoing request is denied).
    pub outbound: OutboundPolicy,
}

impl Guest {
    /// Runs the guest once in a fresh store under `invocation.limits`.
    ///
    /// Returns `Ok(outcome)` whenever the guest ran, including when it was
    /// killed for exceeding a limit; `Err` only when the host could not set
    /// up or instantiate it (e.g. a preopened directory is missing or the
    /// instance pool is exhausted).
    pub async fn run(&self, invocation: Invocation) -> Result<Outcome> {
        if !self.kind().is_command() {
            return Err(Error::WrongShape {
                name: self.name().to_string(),
                message: "this is a wasi:http component (it exports \
                          `wasi:http/incoming-handler`, not `wasi:cli/run`); serve it with \
                          `wasm-run serve`"
                    .into(),
            });
        }
        let started = Instant::now();
        let Invocation {
            args,
            program_name,
            env,
            dirs,
            stdin,
            stdout,
            stderr,
            limits,
            outbound,
        } = invocation;

        let mut builder = wasi_builder(self.name(), program_name.as_deref(), &args, &env, &dirs)?;
        io::set_stdin(&mut builder, stdin);
        let out_capture = io::set_output(&mut builder, Stream::Stdout, stdout, limits.max_output);
        let err_capture = io::set_output(&mut builder, Stream::Stderr, stderr, limits.max_output);

        let state = StoreState::new(builder.build_p1(), outbound, limits.max_memory);
        let guest = self.clone();
        let invocation = async move {
            let mut store = new_store(&guest.inner.engine, state, &limits, started);
            let call = call_entry(&guest.inner.pre, &mut store);
            let result = with_deadline(&limits, started, call).await;
            conclude(&guest, &store, &limits, started, result)
        };
        let (concluded, cpu_time) = self.inner.engine.scheduler().run(invocation).await;
        let (kind, mut usage) = concluded?;
        usage.cpu_time = cpu_time;
        Ok(Outcome {
            kind,
            usage,
            stdout: out_capture.map(|c| c.take()),
            stderr: err_capture.map(|c| c.take()),
        })
    }
}

/// A WASI context builder with argv, environment and preopened directories.
pub(crate) fn wasi_builder(
    name: &str,
    program_name: Option<&str>,
    args: &[String],
    env: &[(String, String)],
    dirs: &[DirMapping],
) -> Result<WasiCtxBuilder> {
    let mut builder = WasiCtxBuilder::new();
    builder.arg(program_name.unwrap_or(name));
    builder.args(args);
    builder.envs(env);
    builder.max_random_size(crate::MAX_RANDOM_BYTES);
    for dir in dirs {
        let perms = if dir.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| Error::Setup {
                name: name.to_string(),
                message: format!("cannot preopen directory {}: {e:#}", dir.host.display()),
            })?;
    }
    Ok(builder)
}

/// Runs `call` under the invocation's wall-clock deadline; `None` if the
/// deadline fired first (the call is dropped, which cancels the guest even
/// while it is blocked in a host call).
pub(crate) async fn with_deadline<T>(
    limits: &Limits,
    started: Instant,
    call: impl std::future::Future<Output = T>,
) -> Option<T> {
    // A deadline too far away to represent is no deadline.
    match limits.timeout.and_then(|t| started.checked_add(t)) {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), call).await.ok(),
        None => Some(call.await),
    }
}

/// Turns a finished (or timed-out) call into the outcome and usage, or into
/// a host error when instantiation failed for a reason not the guest's.
pub(crate) fn conclude(
    guest: &Guest,
    store: &Store<StoreState>,
    limits: &Limits,
    started: Instant,
    result: Option<Result<i32, Failure>>,
) -> Result<(OutcomeKind, Usage)> {
    let killed = store.data().limiter.killed;
    let end = match result {
        None => CallEnd::TimedOut,
        Some(Ok(code)) => CallEnd::Returned(Ok(code)),
        Some(Err(Failure::Running(e))) => CallEnd::Returned(Err(e)),
        Some(Err(Failure::Instantiating(e))) => {
            // The guest's own doing: a trap, an exit or an uncaught
            // exception in its start function, or a limit it hit.
            let guest_caused = killed
                || e.downcast_ref::<wasmtime::Trap>().is_some()
                || e.downcast_ref::<wasmtime::ThrownException>().is_some()
                || e.downcast_ref::<wasmtime_wasi::I32Exit>().is_some()
                || crate::outcome::exceeds_host_allowance(&e);
            if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
            {
                return Err(Error::Capacity {
                    name: guest.name().to_string(),
                    message: format!("{e:#}"),
                });
            }
            if !guest_caused {
                return Err(Error::Instantiate {
                    name: guest.name().to_string(),
                    message: format!("{e:#}"),
                });
            }
            CallEnd::Returned(Err(e))
        }
    };
    let kind = classify(end, killed);
    let fuel_consumed = match (guest.inner.engine.config().fuel, store.get_fuel()) {
        (true, Ok(left)) => Some(limits.fuel.unwrap_or(u64::MAX) - left),
        _ => None,
    };
    let usage = Usage {
        fuel_consumed,
        peak_memory_bytes: store.data().limiter.peak(),
        wall_time: started.elapsed(),
        cpu_time: std::time::Duration::ZERO,
    };
    Ok((kind, usage))
}

/// Where a failed call failed.
pub(crate) enum Failure {
    /// While instantiating: a trap or limit here is still the guest's
    /// outcome (e.g. initial memory over the cap, a trapping start function);
    /// anything else is a host failure.
    Instantiating(wasmtime::Error),
    /// While running the entry point.
    Running(wasmtime::Error),
}

/// Instantiates and calls the entry point; `Ok(code)` is the exit code.
async fn call_entry(pre: &Pre, store: &mut Store<StoreState>) -> Result<i32, Failure> {
    match pre {
        Pre::Core(pre) => {
            let instance = pre
                .instantiate_async(&mut *store)
                .await
                .map_err(Failure::Instantiating)?;
            let start = instance
                .get_typed_func::<(), ()>(&mut *store, "_start")
                .map_err(Failure::Instantiating)?;
            start
                .call_async(&mut *store, ())
                .await
                .map_err(Failure::Running)?;
            Ok(0)
        }
        Pre::Command(pre) => {
            let command = pre
                .instantiate_async(&mut *store)
                .await
                .map_err(Failure::Instantiating)?;
            let status = command
                .wasi_cli_run()
                .call_run(&mut *store)
                .await
                .map_err(Failure::Running)?;
            Ok(if status.is_ok() { 0 } else { 1 })
        }
        Pre::Http(_) => unreachable!("Guest::run rejects HTTP components before calling"),
    }
}

#[cfg(test)]
mod tests {
    use super::DirMapping;

    #[test]
    fn dir_specs_parse_with_their_access() {
        let m = DirMapping::parse("./data::/data");
        assert_eq!(
            (m.host.to_str(), m.guest.as_str()),
            (Some("./data"), "/data")
        );
        assert!(!m.read_only, "run maps read-write by default");
        assert!(DirMapping::parse("./data::/data:ro").read_only);
        let m = DirMapping::parse("/srv:ro");
        assert_eq!((m.host.to_str(), m.guest.as_str()), (Some("/srv"), "/srv"));
        assert!(m.read_only);
        assert!(DirMapping::parse_with_default("a::/a", true).read_only);
        assert!(!DirMapping::parse_with_default("a::/a:rw", true).read_only);
        assert_eq!(DirMapping::parse_with_default("a::/a:rw", true).guest, "/a");
    }
}
