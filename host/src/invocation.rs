//! What one invocation is given besides its guest: arguments, environment,
//! preopened directories, stdio, limits, outbound policy and priority
//! ([`Invocation`]), and the WASI context built from them.

use std::path::PathBuf;

use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::error::{Error, Result};
use crate::io::{Input, Output};
use crate::limits::Limits;
use crate::outbound::OutboundPolicy;
use crate::scheduler::Priority;

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
    /// Where it starts: at normal priority (the default), or on the
    /// low-priority threads from the first poll.
    pub priority: Priority,
    /// The trace it belongs to: its outgoing requests carry a
    /// `traceparent` of a child span (replacing the guest's), and each is
    /// reported to the observer. Default: none (headers pass as the guest
    /// set them).
    pub trace: Option<crate::trace::InvocationTrace>,
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
    builder.max_random_size(crate::store::MAX_RANDOM_BYTES);
    // The preopens do their I/O on the thread that polls the invocation, so
    // its CPU time and the memory of a directory listing are the
    // invocation's own; the context itself does not (in preview 1 that
    // would make a sleep block the thread). See `crate::open_files`.
    builder.allow_blocking_current_thread(true);
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
    builder.allow_blocking_current_thread(false);
    Ok(builder)
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
