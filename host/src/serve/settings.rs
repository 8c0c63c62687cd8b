//! The resolved server configuration: what a [`ServeConfig`] holds once
//! the file and the flags are layered and checked (see [`super::config`]),
//! and which of it a server fixes at start ([`FixedSettings`]) and which a
//! reload replaces (the routes and tenants, per-request settings).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::invocation::DirMapping;
use crate::limits::Limits;
use crate::outbound::OutboundPolicy;

/// A resolved tenant: its name and how it shares the budget.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSpec {
    /// The tenant's name.
    pub name: String,
    /// How it shares the budget.
    pub config: crate::admission::TenantConfig,
}

/// Where a route's module comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModuleSource {
    /// A file on disk (re-read on reload).
    File(PathBuf),
    /// Bytes built into the binary (the demo).
    Embedded {
        /// Name used in logs and errors.
        name: String,
        /// The module's bytes.
        bytes: &'static [u8],
    },
}

/// A fully resolved route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Path prefix, normalised: starts with `/`, no trailing `/` except `/`.
    pub prefix: String,
    /// The module to serve.
    pub module: ModuleSource,
    /// Limits of every request on this route.
    pub limits: Limits,
    /// Environment variables for the guest (CGI variables are added per request).
    pub env: Vec<(String, String)>,
    /// Preopened directories.
    pub dirs: Vec<DirMapping>,
    /// Where wasi:http guests may send requests, and how many at once.
    pub outbound: OutboundPolicy,
    /// The tenant the route's requests belong to: a name from
    /// [`ServeConfig::tenants`], or (by default) the route's own prefix.
    pub tenant: String,
    /// Whether the module may be an artifact of `wasm-run compile` (native
    /// code the operator vouches for); otherwise one is refused.
    pub allow_precompiled: bool,
}

/// The whole resolved server configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// HTTP listener address.
    pub addr: SocketAddr,
    /// Admin listener address, if any.
    pub admin_addr: Option<SocketAddr>,
    /// Largest request body accepted, in bytes.
    pub max_body: u64,
    /// Time a client has to send a request head.
    pub header_timeout: Duration,
    /// Cap on a guest's log output per request, in bytes.
    pub max_log: u64,
    /// Memory budget: the sum, over admitted requests, of each one's memory
    /// cap plus its guest's host allowance, in bytes.
    pub memory_budget: u64,
    /// Requests that may wait for budget.
    pub max_queue: usize,
    /// Longest wait for budget.
    pub queue_timeout: Duration,
    /// Bytes of a request body read before the request waits for budget.
    pub body_buffer: u64,
    /// Time a client has to send the buffered part of a body, and then
    /// each further part the guest asks for.
    pub body_timeout: Duration,
    /// Time a response write may wait for a client that does not read
    /// before the connection is dropped.
    pub write_timeout: Duration,
    /// Most client connections open at once; further ones wait in the
    /// kernel's listen backlog until one closes.
    pub max_connections: usize,
    /// The kernel's send buffer of each client connection, in bytes
    /// (`SO_SNDBUF`, which Linux doubles for its bookkeeping); `None`
    /// leaves it to the kernel, which grows it up to `net.ipv4.tcp_wmem`'s
    /// maximum. What a client that does not read makes the kernel hold.
    pub send_buffer: Option<u64>,
    /// Threads of the low-priority pool that requests finish on once they
    /// have used their first slice of CPU (see [`crate::EngineConfig`]'s
    /// `background_threads`); `None`: one per CPU. Read by `wasm-run serve`
    /// when it builds its engine: a [`crate::serve::Server`] uses the pool
    /// of the engine it is given, whatever this says. Fewer threads than
    /// CPUs leave cores that long requests never take, so fresh requests
    /// find an idle core under abuse, at the price of the long requests'
    /// throughput (see the README).
    pub background_threads: Option<usize>,
    /// Name servers that resolve the host names of guests' outgoing
    /// requests; empty: the system's (see [`crate::dns`]).
    pub dns_servers: Vec<SocketAddr>,
    /// Wasm proposals the engine turns on (read by `wasm-run serve` when it
    /// builds its engine, like `background_threads`).
    pub wasm_proposals: Vec<crate::Proposal>,
    /// Where each request's trace is exported (OTLP over HTTP, protobuf),
    /// if anywhere (see [`crate::serve::otlp`]).
    pub otlp_endpoint: Option<http::Uri>,
    /// Routes, in any order (matching picks the longest prefix).
    pub routes: Vec<RouteSpec>,
    /// Named tenants (`[[tenant]]`); a route that names none is a tenant of
    /// its own with weight 1.
    pub tenants: Vec<TenantSpec>,
}

/// The settings of a [`ServeConfig`] that a server fixes when it starts: a
/// reload ([`crate::serve::Server::reload`]) keeps their running values and
/// names those it was asked to change. Everything else in a `ServeConfig`
/// — the routes, tenants, name servers and per-request settings — a reload
/// replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedSettings {
    /// HTTP listener address (bound by the caller).
    pub addr: SocketAddr,
    /// Admin listener address (bound by the caller).
    pub admin_addr: Option<SocketAddr>,
    /// Time a client has to send a request head.
    pub header_timeout: Duration,
    /// Time a response write may wait for a client that does not read.
    pub write_timeout: Duration,
    /// The memory budget.
    pub memory_budget: u64,
    /// Requests that may wait for budget.
    pub max_queue: usize,
    /// Longest wait for budget.
    pub queue_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// The kernel's send buffer of each client connection.
    pub send_buffer: Option<u64>,
    /// Threads of the engine's low-priority pool (read by the binary).
    pub background_threads: Option<usize>,
    /// Wasm proposals the engine turns on (read by the binary).
    pub wasm_proposals: Vec<crate::Proposal>,
    /// Where traces are exported.
    pub otlp_endpoint: Option<http::Uri>,
}

impl FixedSettings {
    /// The fixed settings of `config`.
    pub fn of(config: &ServeConfig) -> FixedSettings {
        FixedSettings {
            addr: config.addr,
            admin_addr: config.admin_addr,
            header_timeout: config.header_timeout,
            write_timeout: config.write_timeout,
            memory_budget: config.memory_budget,
            max_queue: config.max_queue,
            queue_timeout: config.queue_timeout,
            max_connections: config.max_connections,
            send_buffer: config.send_buffer,
            background_threads: config.background_threads,
            wasm_proposals: config.wasm_proposals.clone(),
            otlp_endpoint: config.otlp_endpoint.clone(),
        }
    }

    /// The names (as in the configuration file) of the settings in which
    /// `other` differs from these.
    pub fn differences(&self, other: &FixedSettings) -> Vec<&'static str> {
        // Destructured, so that a new field cannot be left out here.
        let FixedSettings {
            addr,
            admin_addr,
            header_timeout,
            write_timeout,
            memory_budget,
            max_queue,
            queue_timeout,
            max_connections,
            send_buffer,
            background_threads,
            wasm_proposals,
            otlp_endpoint,
        } = self;
        [
            ("addr", *addr != other.addr),
            ("admin-addr", *admin_addr != other.admin_addr),
            ("header-timeout", *header_timeout != other.header_timeout),
            ("write-timeout", *write_timeout != other.write_timeout),
            ("memory-budget", *memory_budget != other.memory_budget),
            ("max-queue", *max_queue != other.max_queue),
            ("queue-timeout", *queue_timeout != other.queue_timeout),
            ("max-connections", *max_connections != other.max_connections),
            ("send-buffer", *send_buffer != other.send_buffer),
            (
                "background-threads",
                *background_threads != other.background_threads,
            ),
            ("wasm-proposals", *wasm_proposals != other.wasm_proposals),
            ("otlp-endpoint", *otlp_endpoint != other.otlp_endpoint),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }
}
