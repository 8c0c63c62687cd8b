//! Server configuration: the TOML file, its layering under command-line
//! flags, and validation before anything is bound.
//!
//! Layers, lowest first: built-in defaults < the file's `[limits]` < flags;
//! a `[[route]]`'s own `limits` are more specific and win over all three for
//! that route. Unknown keys are rejected with the key and the file named.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use super::settings::{FixedSettings, ModuleSource, RouteSpec, ServeConfig, TenantSpec};
use crate::limits::{ByteSize, CpuLimit, HumanDuration, MemoryCap};
use crate::{DirMapping, Limits, OutboundPolicy};

/// Default address of the HTTP listener.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Default cap on a request body: 16 MiB.
pub const DEFAULT_MAX_BODY: u64 = 16 << 20;
/// Default per-request deadline of the server: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a client has to send a request head: 10 s.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on a guest's log output per request: 64 KiB.
pub const DEFAULT_LOG_CAP: u64 = 64 << 10;
/// Default number of requests that may wait for memory budget.
pub const DEFAULT_MAX_QUEUE: usize = 256;
/// Default longest wait for memory budget: 5 s.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bytes of a request body read before it waits for budget: 64 KiB.
pub const DEFAULT_BODY_BUFFER: u64 = 64 << 10;
/// Default time a client has to send the buffered part of a body, and then
/// each further part: 10 s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a response write may wait for a client that does not read: 30 s.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on open client connections: 8192 (lowered at start to what
/// the open-files limit allows).
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;

/// The limits a server applies when nothing else is said: the library's
/// defaults plus a 30 s deadline, since a server must not wait forever.
pub fn default_limits() -> Limits {
    Limits {
        timeout: Some(DEFAULT_TIMEOUT),
        ..Limits::default()
    }
}

/// The TOML configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    /// `[server]`: listeners and host-wide settings.
    #[serde(default)]
    pub server: ServerSection,
    /// `[limits]`: default limits of every route.
    #[serde(default)]
    pub limits: LimitsOverlay,
    /// `[[route]]`: path prefix → module.
    #[serde(default)]
    pub route: Vec<RouteSection>,
    /// `[[tenant]]`: named tenants that routes may belong to.
    #[serde(default)]
    pub tenant: Vec<TenantSection>,
}

/// One `[[tenant]]` of the configuration file: how a group of routes
/// shares the memory budget with the others (see
/// [`crate::admission`]'s Tenants section).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TenantSection {
    /// The tenant's name, which routes give as their `tenant`.
    pub name: String,
    /// Relative share of the budget when tenants contend. Default 1.
    pub weight: Option<u32>,
    /// Requests of this tenant that may wait at once. Default the server's
    /// `max-queue`.
    pub max_queue: Option<usize>,
    /// The most of the budget the tenant may hold at once, as a fraction
    /// (e.g. 0.5), even when the rest is idle. Default: no cap.
    pub max_share: Option<f64>,
}

/// Most threads `background-threads` may ask for.
pub const MAX_BACKGROUND_THREADS: usize = 1024;

/// `[server]` of the configuration file, and the same settings from the
/// command line: every field may be absent, and layers merge with
/// [`ServerSection::over`] (flags over the file) before
/// [`ServerSection::resolve`] fills in the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerSection {
    /// HTTP listener address. Default `127.0.0.1:8080`.
    pub addr: Option<SocketAddr>,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`). Default: off.
    pub admin_addr: Option<SocketAddr>,
    /// Largest request body accepted. Default 16 MiB.
    pub max_body: Option<ByteSize>,
    /// Time a client has to send a request head (also the keep-alive idle
    /// timeout). Default 10 s.
    pub header_timeout: Option<HumanDuration>,
    /// Cap on a guest's stdout+stderr logged per request. Default 64 KiB.
    pub max_log: Option<ByteSize>,
    /// Memory budget: the sum, over admitted requests, of each one's memory
    /// cap plus its guest's host allowance. Default: half of the machine's
    /// memory.
    pub memory_budget: Option<ByteSize>,
    /// Requests that may wait for budget. Default 256.
    pub max_queue: Option<usize>,
    /// Longest wait for budget. Default 5 s.
    pub queue_timeout: Option<HumanDuration>,
    /// Bytes of a request body read before it waits for budget. Default 64 KiB.
    pub body_buffer: Option<ByteSize>,
    /// Time a client has to send the buffered part of a body, and each
    /// further part. Default 10 s.
    pub body_timeout: Option<HumanDuration>,
    /// Time a response write may wait for the client to read. Default 30 s.
    pub write_timeout: Option<HumanDuration>,
    /// Most client connections open at once. Default 8192.
    pub max_connections: Option<usize>,
    /// The kernel's send buffer of each client connection (`SO_SNDBUF`).
    /// Default: the kernel's own sizing.
    pub send_buffer: Option<ByteSize>,
    /// Low-priority threads that long-running requests finish on. Default:
    /// one per CPU.
    pub background_threads: Option<usize>,
    /// Name servers (`IP:PORT`) that resolve the host names of guests'
    /// outgoing requests. Default: the system's (`/etc/resolv.conf`).
    pub dns_servers: Option<Vec<SocketAddr>>,
    /// Wasm proposals to turn on beyond what guests need (`gc`,
    /// `exceptions`, `threads`, `memory64`; see [`crate::Proposal`]).
    /// Default: none.
    pub wasm_proposals: Option<Vec<crate::Proposal>>,
    /// Where request traces go: an OTLP/HTTP endpoint
    /// (`http://collector:4318/v1/traces`). Default: no traces.
    pub otlp_endpoint: Option<String>,
}

impl ServerSection {
    /// This layer on top of `lower`: each setting this one has, else
    /// `lower`'s.
    #[must_use]
    pub fn over(&self, lower: &ServerSection) -> ServerSection {
        ServerSection {
            addr: self.addr.or(lower.addr),
            admin_addr: self.admin_addr.or(lower.admin_addr),
            max_body: self.max_body.or(lower.max_body),
            header_timeout: self.header_timeout.or(lower.header_timeout),
            max_log: self.max_log.or(lower.max_log),
            memory_budget: self.memory_budget.or(lower.memory_budget),
            max_queue: self.max_queue.or(lower.max_queue),
            queue_timeout: self.queue_timeout.or(lower.queue_timeout),
            body_buffer: self.body_buffer.or(lower.body_buffer),
            body_timeout: self.body_timeout.or(lower.body_timeout),
            write_timeout: self.write_timeout.or(lower.write_timeout),
            max_connections: self.max_connections.or(lower.max_connections),
            send_buffer: self.send_buffer.or(lower.send_buffer),
            background_threads: self.background_threads.or(lower.background_threads),
            dns_servers: self
                .dns_servers
                .clone()
                .or_else(|| lower.dns_servers.clone()),
            wasm_proposals: self
                .wasm_proposals
                .clone()
                .or_else(|| lower.wasm_proposals.clone()),
            otlp_endpoint: self
                .otlp_endpoint
                .clone()
                .or_else(|| lower.otlp_endpoint.clone()),
        }
    }

    /// Whether this layer sets the setting named `key` (its name in
    /// `[server]`); `false` for a name it does not know.
    pub fn has(&self, key: &str) -> bool {
        match key {
            "addr" => self.addr.is_some(),
            "admin-addr" => self.admin_addr.is_some(),
            "max-body" => self.max_body.is_some(),
            "header-timeout" => self.header_timeout.is_some(),
            "max-log" => self.max_log.is_some(),
            "memory-budget" => self.memory_budget.is_some(),
            "max-queue" => self.max_queue.is_some(),
            "queue-timeout" => self.queue_timeout.is_some(),
            "body-buffer" => self.body_buffer.is_some(),
            "body-timeout" => self.body_timeout.is_some(),
            "write-timeout" => self.write_timeout.is_some(),
            "max-connections" => self.max_connections.is_some(),
            "send-buffer" => self.send_buffer.is_some(),
            "background-threads" => self.background_threads.is_some(),
            "dns-servers" => self.dns_servers.is_some(),
            "wasm-proposals" => self.wasm_proposals.is_some(),
            "otlp-endpoint" => self.otlp_endpoint.is_some(),
            _ => false,
        }
    }

    /// The configuration these settings make with `routes`: every absent
    /// setting takes its default (the memory budget: half of the machine's
    /// memory, [`crate::serve::admission::default_budget`]).
    pub fn resolve(&self, routes: Vec<RouteSpec>) -> Result<ServeConfig, InvalidSetting> {
        let invalid = |key, problem: String| InvalidSetting { key, problem };
        if self.max_connections == Some(0) {
            return Err(invalid("max-connections", "must be at least 1".into()));
        }
        if self
            .send_buffer
            .is_some_and(|b| b.0 < 4096 || b.0 > 1 << 30)
        {
            return Err(invalid(
                "send-buffer",
                "must be between 4KiB and 1GiB".into(),
            ));
        }
        if self
            .background_threads
            .is_some_and(|n| n == 0 || n > MAX_BACKGROUND_THREADS)
        {
            return Err(invalid(
                "background-threads",
                format!("must be between 1 and {MAX_BACKGROUND_THREADS}"),
            ));
        }
        let otlp_endpoint = match &self.otlp_endpoint {
            None => None,
            Some(url) => Some(
                crate::serve::otlp::endpoint(url)
                    .map_err(|problem| invalid("otlp-endpoint", problem))?,
            ),
        };
        let duration = |d: Option<HumanDuration>, default: Duration| d.map_or(default, |d| d.0);
        let bytes = |b: Option<ByteSize>, default: u64| b.map_or(default, |b| b.0);
        Ok(ServeConfig {
            addr: self
                .addr
                .unwrap_or_else(|| DEFAULT_ADDR.parse().expect("valid default address")),
            admin_addr: self.admin_addr,
            max_body: bytes(self.max_body, DEFAULT_MAX_BODY),
            header_timeout: duration(self.header_timeout, DEFAULT_HEADER_TIMEOUT),
            max_log: bytes(self.max_log, DEFAULT_LOG_CAP),
            memory_budget: self
                .memory_budget
                .map_or_else(crate::serve::admission::default_budget, |b| b.0),
            max_queue: self.max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
            queue_timeout: duration(self.queue_timeout, DEFAULT_QUEUE_TIMEOUT),
            body_buffer: bytes(self.body_buffer, DEFAULT_BODY_BUFFER),
            body_timeout: duration(self.body_timeout, DEFAULT_BODY_TIMEOUT),
            write_timeout: duration(self.write_timeout, DEFAULT_WRITE_TIMEOUT),
            max_connections: self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            send_buffer: self.send_buffer.map(|b| b.0),
            background_threads: self.background_threads,
            dns_servers: self.dns_servers.clone().unwrap_or_default(),
            wasm_proposals: self.wasm_proposals.clone().unwrap_or_default(),
            otlp_endpoint,
            routes,
            tenants: Vec::new(),
        })
    }
}

/// A `[server]` setting (or its flag) whose value cannot be used: which
/// key, and what is wrong with it. The caller, who knows where the value
/// came from, names the flag (`--key`) or the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {problem}")]
pub struct InvalidSetting {
    /// The setting's name in `[server]` (also its flag without `--`).
    pub key: &'static str,
    /// What is wrong, e.g. "must be at least 1".
    pub problem: String,
}

/// Limits where every field may be absent, for layering.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsOverlay {
    /// Fuel budget per request.
    pub fuel: Option<u64>,
    /// Cap on a request's total memory (linear memories and tables).
    pub max_memory: Option<MemoryCap>,
    /// Wall-clock deadline per request.
    pub timeout: Option<HumanDuration>,
    /// CPU-time limit per request.
    pub max_cpu: Option<CpuLimit>,
}

impl LimitsOverlay {
    /// This overlay on top of `lower`: each field this one sets, else
    /// `lower`'s.
    #[must_use]
    pub fn over(&self, lower: &LimitsOverlay) -> LimitsOverlay {
        LimitsOverlay {
            fuel: self.fuel.or(lower.fuel),
            max_memory: self.max_memory.or(lower.max_memory),
            timeout: self.timeout.or(lower.timeout),
            max_cpu: self.max_cpu.or(lower.max_cpu),
        }
    }

    /// `base` with every field this overlay sets replaced.
    pub fn apply(&self, base: &Limits) -> Limits {
        Limits {
            fuel: self.fuel.or(base.fuel),
            max_memory: self.max_memory.map_or(base.max_memory, |m| m.0),
            timeout: self.timeout.map(|t| t.0).or(base.timeout),
            max_cpu: self.max_cpu.map(|c| c.0).or(base.max_cpu),
            max_output: base.max_output,
        }
    }
}

/// One `[[route]]` of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RouteSection {
    /// Path prefix, e.g. `/api`; matches `/api` and `/api/...`.
    pub path: String,
    /// The module, relative to the configuration file's directory.
    pub module: PathBuf,
    /// This route's own limits.
    #[serde(default)]
    pub limits: LimitsOverlay,
    /// Environment variables for the guest.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Preopened directories, `HOST[::GUEST]`, relative to the file's directory.
    #[serde(default)]
    pub dirs: Vec<String>,
    /// Destinations wasi:http guests may send requests to,
    /// `[SCHEME://]HOST[:PORT]` or `*` (any public host on the default
    /// ports); loopback, private and link-local hosts need their own entry.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Outgoing HTTP requests one request's guest may have in flight at
    /// once (default 16, [`crate::outbound::DEFAULT_MAX_OUTGOING`]).
    #[serde(default)]
    pub max_outgoing_requests: Option<usize>,
    /// The `[[tenant]]` this route belongs to. Default: a tenant of its
    /// own, named by its path.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Whether `module` may be an artifact of `wasm-run compile`: native
    /// code that runs inside the server, not sandboxed wasm. Default
    /// `false`: an artifact is refused, naming this key.
    #[serde(default)]
    pub allow_precompiled: bool,
}

/// A configuration problem, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct ConfigError {
    /// The configuration file (or `command line`).
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// Reads and parses a configuration file.
pub fn read_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let err = |message: String| ConfigError {
        file: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    toml::from_str(&text).map_err(|e| err(e.to_string().trim_end().to_string()))
}

/// Normalises a route prefix; `None` if it is not an absolute path.
pub fn normalise_prefix(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.contains(['?', '#']) {
        return None;
    }
    let trimmed = path.trim_end_matches('/');
    Some(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.to_string()
    })
}

/// Resolves the routes of `file` (read from `path`; modules and
/// directories are relative to its directory) under `defaults`.
pub fn resolve_routes(
    file: &ConfigFile,
    path: &Path,
    defaults: &Limits,
) -> Result<Vec<RouteSpec>, ConfigError> {
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut routes: Vec<RouteSpec> = Vec::new();
    for (i, r) in file.route.iter().enumerate() {
        let route = resolve_route(file, r, base_dir, defaults)
            .and_then(|route| {
                if routes.iter().any(|x| x.prefix == route.prefix) {
                    Err(format!("path `{}` is routed twice", route.prefix))
                } else {
                    Ok(route)
                }
            })
            .map_err(|message| ConfigError {
                file: path.to_path_buf(),
                message: format!("route {}: {message}", i + 1),
            })?;
        routes.push(route);
    }
    Ok(routes)
}

/// Resolves one `[[route]]` section; the error says what is wrong in it.
fn resolve_route(
    file: &ConfigFile,
    r: &RouteSection,
    base_dir: &Path,
    defaults: &Limits,
) -> Result<RouteSpec, String> {
    let prefix = normalise_prefix(&r.path).ok_or_else(|| {
        format!(
            "path `{}` must start with `/` (for example \"/api\")",
            r.path
        )
    })?;
    let dirs = r
        .dirs
        .iter()
        .map(|d| {
            let mut m = DirMapping::parse_with_default(d, true);
            if m.host.is_relative() {
                m.host = base_dir.join(&m.host);
            }
            m
        })
        .collect();
    let max_outgoing = match r.max_outgoing_requests {
        Some(0) => return Err("max-outgoing-requests must be at least 1".into()),
        Some(n) => n,
        None => crate::outbound::DEFAULT_MAX_OUTGOING,
    };
    let outbound = OutboundPolicy::new(&r.allowed_outbound_hosts)
        .map_err(|e| e.to_string())?
        .with_max_outgoing(max_outgoing);
    let tenant = match &r.tenant {
        Some(name) if file.tenant.iter().any(|t| &t.name == name) => name.clone(),
        Some(name) => {
            return Err(format!(
                "tenant `{name}` is not declared in a [[tenant]] section"
            ));
        }
        None => prefix.clone(),
    };
    Ok(RouteSpec {
        prefix,
        module: ModuleSource::File(base_dir.join(&r.module)),
        limits: r.limits.apply(defaults),
        env: r.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        dirs,
        outbound,
        tenant,
        allow_precompiled: r.allow_precompiled,
    })
}

/// Resolves the `[[tenant]]` sections of `file` (read from `path`).
pub fn resolve_tenants(file: &ConfigFile, path: &Path) -> Result<Vec<TenantSpec>, ConfigError> {
    let err = |message: String| ConfigError {
        file: path.to_path_buf(),
        message,
    };
    let mut tenants: Vec<TenantSpec> = Vec::new();
    for (i, t) in file.tenant.iter().enumerate() {
        let at = |what: String| err(format!("tenant {} (`{}`): {what}", i + 1, t.name));
        if t.name.is_empty() || t.name.starts_with('/') {
            return Err(at(
                "a tenant's name must not be empty or start with `/` (routes without a \
                 tenant are named by their path)"
                    .into(),
            ));
        }
        if tenants.iter().any(|x| x.name == t.name) {
            return Err(at("declared twice".into()));
        }
        if t.weight == Some(0) {
            return Err(at("weight must be at least 1".into()));
        }
        if t.max_queue == Some(0) {
            return Err(at("max-queue must be at least 1".into()));
        }
        if let Some(share) = t.max_share
            && !(share > 0.0 && share <= 1.0)
        {
            return Err(at(format!(
                "max-share must be above 0 and at most 1 (a fraction of the budget), not {share}"
            )));
        }
        tenants.push(TenantSpec {
            name: t.name.clone(),
            config: crate::admission::TenantConfig {
                weight: t.weight.unwrap_or(1),
                max_queue: t.max_queue,
                max_share: t.max_share,
            },
        });
    }
    Ok(tenants)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_proposals_are_read_from_the_file_by_name() {
        let f: ConfigFile = toml::from_str("[server]\nwasm-proposals = [\"gc\"]").unwrap();
        let config = f.server.resolve(Vec::new()).unwrap();
        assert_eq!(config.wasm_proposals, [crate::Proposal::Gc]);
        let bad = toml::from_str::<ConfigFile>("[server]\nwasm-proposals = [\"simd\"]")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("`simd` is not a wasm proposal"), "{bad}");
    }

    #[test]
    fn the_fixed_settings_name_what_a_reload_asked_to_change() {
        let running = ServerSection::default().resolve(Vec::new()).unwrap();
        let new = ServerSection {
            max_queue: Some(3),
            write_timeout: Some(HumanDuration(Duration::from_secs(1))),
            send_buffer: Some(ByteSize(64 << 10)),
            max_body: Some(ByteSize(10)),
            ..ServerSection::default()
        }
        .resolve(Vec::new())
        .unwrap();
        let (fixed, asked) = (FixedSettings::of(&running), FixedSettings::of(&new));
        assert_eq!(
            fixed.differences(&asked),
            ["write-timeout", "max-queue", "send-buffer"]
        );
        // What a reload may change is not among them.
        assert_eq!(new.max_body, 10);
        assert!(fixed.differences(&FixedSettings::of(&running)).is_empty());
    }

    #[test]
    fn a_full_file_parses() {
        let f: ConfigFile = toml::from_str(
            r#"
            [server]
            addr = "127.0.0.1:9000"
            max-body = "1MiB"
            [limits]
            timeout = "2s"
            [[route]]
            path = "/api/"
            module = "api.wasm"
            limits = { fuel = 1000, max-memory = "32MiB" }
            env = { MODE = "prod" }
            allowed-outbound-hosts = ["example.com"]
            "#,
        )
        .unwrap();
        assert_eq!(f.server.max_body, Some(ByteSize(1 << 20)));
        let defaults = f.limits.apply(&default_limits());
        let routes = resolve_routes(&f, Path::new("/etc/wr/config.toml"), &defaults).unwrap();
        assert_eq!(routes[0].prefix, "/api");
        assert_eq!(
            routes[0].module,
            ModuleSource::File("/etc/wr/api.wasm".into())
        );
        assert_eq!(routes[0].limits.fuel, Some(1000));
        assert_eq!(routes[0].limits.max_memory, 32 << 20);
        assert_eq!(routes[0].limits.timeout, Some(Duration::from_secs(2)));
        assert_eq!(routes[0].env, [("MODE".to_string(), "prod".to_string())]);
    }

    #[test]
    fn route_dirs_are_read_only_unless_marked_rw() {
        let f: ConfigFile = toml::from_str(
            "[[route]]\npath = \"/\"\nmodule = \"a.wasm\"\ndirs = [\"data::/data\", \"tmp::/tmp:rw\"]",
        )
        .unwrap();
        let routes = resolve_routes(&f, Path::new("/etc/wr/c.toml"), &Limits::default()).unwrap();
        let dirs = &routes[0].dirs;
        assert_eq!(dirs[0].host, PathBuf::from("/etc/wr/data"));
        assert!(dirs[0].read_only);
        assert_eq!(dirs[1].guest, "/tmp");
        assert!(!dirs[1].read_only);
    }

    #[test]
    fn outgoing_requests_per_request_are_a_route_setting() {
        let dir = std::env::temp_dir();
        let parse = |route: &str| {
            let file: ConfigFile = toml::from_str(&format!(
                "[[route]]\npath = \"/\"\nmodule = \"m.wasm\"\n{route}"
            ))
            .expect("parses");
            resolve_routes(&file, &dir.join("c.toml"), &default_limits())
        };
        let routes = parse("").unwrap();
        assert_eq!(
            routes[0].outbound.max_outgoing(),
            crate::outbound::DEFAULT_MAX_OUTGOING
        );
        let routes = parse("max-outgoing-requests = 2").unwrap();
        assert_eq!(routes[0].outbound.max_outgoing(), 2);
        let e = parse("max-outgoing-requests = 0").unwrap_err();
        assert!(e.to_string().contains("max-outgoing-requests"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let file: ConfigFile = toml::from_str(
            "[server]\nmax-queue = 7\nheader-timeout = \"3s\"\nmax-connections = 100\n\
             [limits]\nfuel = 10\ntimeout = \"2s\"",
        )
        .unwrap();
        let flags = ServerSection {
            max_queue: Some(9),
            ..ServerSection::default()
        };
        let config = flags.over(&file.server).resolve(Vec::new()).unwrap();
        assert_eq!(config.max_queue, 9, "the flag wins");
        assert_eq!(
            config.header_timeout,
            Duration::from_secs(3),
            "the file wins"
        );
        assert_eq!(config.max_connections, 100);
        assert_eq!(config.write_timeout, DEFAULT_WRITE_TIMEOUT, "the default");
        assert_eq!(config.addr, DEFAULT_ADDR.parse().unwrap());
        let flag_limits = LimitsOverlay {
            fuel: Some(20),
            ..LimitsOverlay::default()
        };
        let limits = flag_limits.over(&file.limits).apply(&default_limits());
        assert_eq!(limits.fuel, Some(20), "the flag wins");
        assert_eq!(
            limits.timeout,
            Some(Duration::from_secs(2)),
            "the file wins"
        );
        assert_eq!(
            limits.max_memory,
            crate::limits::DEFAULT_MAX_MEMORY,
            "the default"
        );
    }

    #[test]
    fn routes_belong_to_their_own_tenant_or_a_declared_one() {
        let parse = |text: &str| {
            let file: ConfigFile = toml::from_str(text).expect("parses");
            let path = Path::new("/etc/wr/c.toml");
            resolve_tenants(&file, path)
                .and_then(|t| resolve_routes(&file, path, &default_limits()).map(|r| (t, r)))
        };
        let (tenants, routes) = parse(
            "[[tenant]]\nname = \"team\"\nweight = 3\nmax-share = 0.5\n\
             [[route]]\npath = \"/a\"\nmodule = \"a.wasm\"\ntenant = \"team\"\n\
             [[route]]\npath = \"/b\"\nmodule = \"b.wasm\"",
        )
        .unwrap();
        assert_eq!(tenants[0].name, "team");
        assert_eq!(tenants[0].config.weight, 3);
        assert_eq!(tenants[0].config.max_share, Some(0.5));
        assert_eq!(routes[0].tenant, "team");
        assert_eq!(routes[1].tenant, "/b", "a tenant of its own");
        for (text, error) in [
            (
                "[[route]]\npath = \"/\"\nmodule = \"a\"\ntenant = \"nobody\"",
                "not declared",
            ),
            ("[[tenant]]\nname = \"t\"\nweight = 0", "weight"),
            ("[[tenant]]\nname = \"t\"\nmax-share = 1.5", "max-share"),
            ("[[tenant]]\nname = \"/t\"", "must not"),
            (
                "[[tenant]]\nname = \"t\"\n[[tenant]]\nname = \"t\"",
                "twice",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(error), "{text}: {e}");
        }
    }

    #[test]
    fn zero_connections_is_refused() {
        let zero = ServerSection {
            max_connections: Some(0),
            ..ServerSection::default()
        };
        let e = zero.resolve(Vec::new()).unwrap_err();
        assert_eq!(e.key, "max-connections");
        assert_eq!(e.to_string(), "max-connections must be at least 1");
    }

    #[test]
    fn background_threads_are_read_and_bounded() {
        let f: ConfigFile = toml::from_str("[server]\nbackground-threads = 1").unwrap();
        let config = f.server.resolve(Vec::new()).unwrap();
        assert_eq!(config.background_threads, Some(1));
        assert_eq!(
            ServerSection::default()
                .resolve(Vec::new())
                .unwrap()
                .background_threads,
            None
        );
        for n in [0, MAX_BACKGROUND_THREADS + 1] {
            let section = ServerSection {
                background_threads: Some(n),
                ..ServerSection::default()
            };
            let e = section.resolve(Vec::new()).unwrap_err();
            assert_eq!(e.key, "background-threads", "{n}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("[server]\nport = 1", "port"),
            ("[limits]\nmemory = \"1MiB\"", "memory"),
            ("[[route]]\npath = \"/\"\nmodule = \"a\"\nfuel = 3", "fuel"),
            ("[srever]", "srever"),
        ] {
            let e = toml::from_str::<ConfigFile>(text).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn prefixes_are_normalised_and_validated() {
        assert_eq!(normalise_prefix("/"), Some("/".into()));
        assert_eq!(normalise_prefix("/a/b/"), Some("/a/b".into()));
        assert_eq!(normalise_prefix("api"), None);
        assert_eq!(normalise_prefix("/a?b"), None);
        let f: ConfigFile = toml::from_str(
            "[[route]]\npath = \"/a\"\nmodule = \"x\"\n[[route]]\npath = \"/a/\"\nmodule = \"y\"",
        )
        .unwrap();
        let e = resolve_routes(&f, Path::new("c.toml"), &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("routed twice"), "{e}");
    }
}
