//! `wasm-run serve`: flags and config file → [`ServeConfig`], listeners,
//! signals (SIGTERM/SIGINT drain and exit, SIGHUP reloads).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use tokio::net::TcpListener;
use wasm_run::limits::{ByteSize, CpuLimit, HumanDuration, MemoryCap};
use wasm_run::serve::config::{
    self, ConfigFile, LimitsOverlay, ModuleSource, RouteSpec, ServeConfig, ServerSection,
};
use wasm_run::serve::{LoadError, Server};
use wasm_run::{DirMapping, Engine, EngineConfig, Limits, Proposal};

use super::{EXIT_LOAD_FAILED, LogFormat, cache_dir, make_cache_dir, parse_env};
use crate::confine::{self, Mode};

/// The built-in demo guest (guests/cli/src/bin/demo.rs, built for wasm32-wasip1).
static DEMO_WASM: &[u8] = include_bytes!(env!("WASM_RUN_DEMO_WASM"));

/// Exit status for a configuration that does not validate.
const EXIT_BAD_CONFIG: u8 = 2;

const AFTER_HELP: &str = "\
Guests:
  A component exporting wasi:http/incoming-handler@0.2.x, or a WASI 0.3
  component exporting wasi:http/handler@0.3.x, is called once per request,
  each request in a fresh store (WASI 0.3 instances are not reused).
  A wasm32-wasip1 command module or wasi:cli command component is run as CGI:
  request meta-variables (REQUEST_METHOD, PATH_INFO, QUERY_STRING, HTTP_*, ...)
  in its environment, the body on stdin, a CGI response (headers, blank line,
  body) on stdout. With no MODULE and no --config, a built-in demo is served.

When a request is killed (response header x-wasm-run-outcome):
  fuel_exhausted, memory_exceeded, trapped → 500; deadline_exceeded → 504;
  body over --max-body → 413 body_too_large; body not sent within
  --body-timeout → 408 body_timeout; CGI guest with no valid head → 502
  bad_gateway; memory budget full and queue full or wait over --queue-timeout
  → 503 overloaded with Retry-After. Error bodies are JSON {\"error\": ..., \"message\": ...}. A kill after
  the response head was sent aborts the body (the client sees a truncated reply).

Config file (TOML), flags override it:
  [server]  addr, admin-addr, max-body, header-timeout, max-log,
            memory-budget, max-queue, queue-timeout, body-buffer,
            body-timeout, write-timeout, max-connections, send-buffer,
            background-threads
  [limits]  fuel, max-memory, max-cpu, timeout   (defaults of every route)
  [[route]] path = \"/api\", module = \"api.wasm\" (relative to the file),
            limits = { fuel = 1000000, max-memory = \"32MiB\", timeout = \"2s\" },
            env = { KEY = \"value\" },
            dirs = [\"data::/data\", \"tmp::/tmp:rw\"]     (read-only unless :rw),
            allowed-outbound-hosts = [\"example.com\", \"https://api.example.com:8443\"]
            max-outgoing-requests = 16            (in flight at once per request)

Limits that hold: each request's memory cap is one number covering its
linear memory, tables and every byte of host memory it makes the server hold
(instance state, resources, body buffers, outgoing requests); it may also
hold at most 1024 WASI resources and 16 KiB per wasi:http fields map (past
any: memory_exceeded), and have at most 16 outgoing requests in flight.
--memory-budget counts each admitted request's cap plus 256KiB and its
2MiB stack, and the instance-pool slots its guest takes. See SECURITY.md for every bound.

Signals: SIGTERM/SIGINT stop accepting, let requests in flight finish, exit 0;
SIGHUP reloads the config file and modules (on failure the old ones keep serving).

Examples:
  wasm-run serve                                  # the built-in demo on 127.0.0.1:8080
  wasm-run serve --timeout 2s --max-memory 64MiB hello.wasm
  wasm-run serve --config wasm-run.toml --admin-addr 127.0.0.1:9090";

/// Serve HTTP: every request runs in its own sandbox with its own limits.
#[derive(Debug, Clone, Args)]
#[command(after_help = AFTER_HELP, args_override_self = true)]
pub struct ServeCommand {
    /// TOML configuration file with [server], [limits] and [[route]] tables.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to listen on (port 0 picks a free port). Default 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    addr: Option<SocketAddr>,

    /// Address of the admin listener with /healthz, /readyz and /metrics
    /// (Prometheus). Default: off.
    #[arg(long, value_name = "ADDR")]
    admin_addr: Option<SocketAddr>,

    /// Fuel budget per request. Default: unlimited.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,

    /// Cap on each request's total memory (linear memories, tables and the
    /// host memory it causes), e.g. `64MiB`; at most `4GiB`. Default 256MiB.
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<MemoryCap>,

    /// CPU-time limit per request, e.g. `50ms` (wasm and host calls on the
    /// request's behalf; time blocked does not count), like RLIMIT_CPU.
    /// Past it: 500 `cpu_exceeded`. Default: none.
    #[arg(long, value_name = "DURATION")]
    max_cpu: Option<CpuLimit>,

    /// Deadline per request, e.g. `2s`. Default 30s.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<HumanDuration>,

    /// Largest request body, e.g. `1MiB`; larger ones get 413. Default 16MiB.
    #[arg(long, value_name = "SIZE")]
    max_body: Option<ByteSize>,

    /// Host-wide memory budget: the sum, over admitted requests, of each
    /// one's memory cap (--max-memory, which covers the host memory the
    /// request causes) plus what the host holds for it outside its account
    /// (256KiB, and the 2MiB stack it runs on) never exceeds it; a request
    /// that does not fit waits in a FIFO queue.
    /// Default: half of this machine's memory.
    #[arg(long, value_name = "SIZE")]
    memory_budget: Option<ByteSize>,

    /// Requests that may wait for memory budget; past it → 503 overloaded
    /// with Retry-After. Default 256.
    #[arg(long, value_name = "N")]
    max_queue: Option<usize>,

    /// Longest a request waits for memory budget before 503 overloaded.
    /// Default 5s.
    #[arg(long, value_name = "DURATION")]
    queue_timeout: Option<HumanDuration>,

    /// Time a client has to send a request head, also the keep-alive idle
    /// timeout. Default 10s.
    #[arg(long, value_name = "DURATION")]
    header_timeout: Option<HumanDuration>,

    /// Bytes of a request body read before the request waits for memory
    /// budget: a body up to this size is read whole first, so a client that
    /// sends it slowly holds no budget. Default 64KiB.
    #[arg(long, value_name = "SIZE")]
    body_buffer: Option<ByteSize>,

    /// Time a client has to send the buffered part of a request body, and
    /// then each further part; past it → 408 body_timeout (or an aborted
    /// response). Default 10s.
    #[arg(long, value_name = "DURATION")]
    body_timeout: Option<HumanDuration>,

    /// Time a response write may wait for a client that does not read;
    /// past it the connection is dropped. Default 30s.
    #[arg(long, value_name = "DURATION")]
    write_timeout: Option<HumanDuration>,

    /// The kernel's send buffer of each client connection (SO_SNDBUF, e.g.
    /// 256KiB): what a client that does not read makes the kernel hold for
    /// it, and the most in flight per round trip. Default: the kernel's own
    /// sizing (up to net.ipv4.tcp_wmem's maximum, 4 MiB by default).
    #[arg(long, value_name = "SIZE")]
    send_buffer: Option<ByteSize>,

    /// Most client connections open at once. At the cap the server stops
    /// accepting: new connections wait in the kernel's listen backlog
    /// (and are refused once it is full) until one closes. The server raises
    /// its open-files limit to the hard limit at start, keeps 256
    /// descriptors for itself and at least a quarter of the rest for
    /// guests' files and outgoing connections, and lowers this cap (with a
    /// warning) if the limit leaves less room. Default 8192.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Low-priority (nice 10) threads that long-running requests finish on:
    /// a request moves there once it has used 1 ms of CPU, so fresh
    /// requests win every contest for a core. While short requests are
    /// about (one finished within 1 ms in the last second) these threads
    /// keep off one core by themselves, so the default needs no tuning;
    /// fewer threads than CPUs keep cores free always, at the price of the
    /// long requests' throughput (on 2 CPUs, 1 thread cut it to ~0.6×).
    /// Fixed at start. Default: one per CPU.
    #[arg(long, value_name = "N")]
    background_threads: Option<usize>,

    /// Name server that resolves the host names of guests' outgoing
    /// requests, `IP:PORT` (repeatable), instead of the system's
    /// (/etc/resolv.conf). Names in /etc/hosts are answered from it either
    /// way. Lookups are futures of the request that needs them, ended with
    /// it (at most 5 s each).
    #[arg(long = "dns-server", value_name = "IP:PORT")]
    dns_servers: Vec<std::net::SocketAddr>,

    /// Environment variable for MODULE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Preopened directory for MODULE, `HOST[::GUEST][:rw]` (repeatable);
    /// read-only unless it ends in `:rw`.
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,

    /// Destination MODULE may send outgoing HTTP requests to (repeatable):
    /// `[SCHEME://]HOST[:PORT]`, e.g. `api.example.com`,
    /// `https://api.example.com:8443`, `127.0.0.1:8080`; without a port only
    /// the scheme's default port. `*` allows any host whose addresses are
    /// public: loopback, private, link-local and metadata addresses need an
    /// entry of their own. Default: outgoing HTTP is denied.
    #[arg(long = "allow-outbound", value_name = "DEST")]
    allow_outbound: Vec<String>,

    /// Also accept MODULE as an artifact of `wasm-run compile` (native code,
    /// loaded without compiling); without it an artifact is refused as a
    /// configuration error. A config route says `allow-precompiled = true`
    /// instead. Pass it only for artifacts you made or trust as a binary:
    /// they run inside the server as machine code, not as sandboxed wasm.
    #[arg(long)]
    allow_precompiled: bool,

    /// Log format on stderr (level from WASM_RUN_LOG or RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Turn on a wasm proposal wasm-run leaves off (repeatable): `gc`,
    /// `exceptions`, `threads` or `memory64`. None of the guests built for
    /// wasm-run today needs one, and each is engine code a guest can reach,
    /// so they are off by default. An artifact of `wasm-run compile` made
    /// with a proposal on is refused where that proposal is off.
    #[arg(long = "wasm-proposal", value_name = "NAME")]
    proposals: Vec<Proposal>,

    /// Do not use the compiled-code cache.
    #[arg(long)]
    no_cache: bool,

    /// Export a trace of every request (OpenTelemetry: OTLP over HTTP,
    /// protobuf) to this endpoint, e.g. `http://127.0.0.1:4318/v1/traces`:
    /// a span per request with its route, outcome and usage, and a child
    /// span per outgoing request, which carries the trace on in its
    /// `traceparent`. An incoming `traceparent` continues the caller's
    /// trace. Batched and bounded: when the collector is slow or down,
    /// spans are dropped and counted, requests never wait. `otlp-endpoint`
    /// in [server]; else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or
    /// OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces. The service is named by
    /// OTEL_SERVICE_NAME (default wasm-run). Default: no traces.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// Confine the server process, a second wall in case code ever escapes
    /// the wasm sandbox: `on` lets it read only its config file's directory,
    /// its guests' directories and the routes' `dirs` (written only where a
    /// route says `:rw`) besides the compile cache, and make only the system
    /// calls the host needs (others fail with ENOSYS: no exec, no new
    /// processes or namespaces). A reload can load guests only from the
    /// directories readable at start. `audit` confines files and lets the
    /// kernel log system calls outside the list instead of refusing them;
    /// `off` for debugging or a kernel without Landlock and seccomp.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Mode::On, env = "WASM_RUN_CONFINE")]
    confine: Mode,

    /// Once the listeners are bound, run as this user (a name from
    /// /etc/passwd or a numeric uid) and its group, or GROUP (a name from
    /// /etc/group or a numeric gid); supplementary groups are dropped. For a
    /// server started as root to bind a low port. The compile cache must
    /// then be one the user owns (WASM_RUN_CACHE_DIR), else it is not used.
    #[arg(long, value_name = "USER[:GROUP]", env = "WASM_RUN_USER")]
    user: Option<String>,

    /// Module or component to serve at `/`.
    #[arg(value_name = "MODULE")]
    module: Option<PathBuf>,
}

impl ServeCommand {
    /// Runs the server until SIGTERM/SIGINT.
    pub fn execute(self) -> ExitCode {
        let config = match self.resolve() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("wasm-run: {e:#}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        };
        raise_open_files_limit();
        let listeners = match Listeners::bind(&config) {
            Ok(listeners) => listeners,
            Err(e) => {
                eprintln!("wasm-run: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        // Before any thread: a user is the process's only if no other
        // thread runs, and the file rules apply to the threads started
        // after them.
        if let Some(user) = &self.user
            && let Err(e) = confine::become_user(user)
        {
            eprintln!("wasm-run: --user {user}: {e:#}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
        confine::files(self.confine, &self.files(&config));
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("wasm-run: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(self.serve(config, listeners)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wasm-run: {e:#}");
                if e.downcast_ref::<LoadError>().is_some() {
                    ExitCode::from(EXIT_LOAD_FAILED)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
    }

    async fn serve(self, config: ServeConfig, listeners: Listeners) -> anyhow::Result<()> {
        let defaults = EngineConfig::default();
        let engine = Engine::new(EngineConfig {
            proposals: config.wasm_proposals.clone(),
            cache_dir: if self.no_cache { None } else { cache_dir() },
            background_threads: config
                .background_threads
                .unwrap_or(defaults.background_threads),
            ..defaults
        })?;
        let server = Server::new(engine, config.clone())?;
        let listener = TcpListener::from_std(listeners.main)?;
        let admin = listeners.admin.map(TcpListener::from_std).transpose()?;
        // Bound and loaded: from here on, only the calls the host needs.
        confine::syscalls(self.confine);
        println!("Serving HTTP on http://{}/", listener.local_addr()?);
        if let Some(admin) = &admin {
            println!("Admin endpoints on http://{}/", admin.local_addr()?);
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(admin) = admin {
            let server = server.clone();
            let mut rx = stop_rx.clone();
            tokio::spawn(async move {
                server
                    .serve_admin(admin, async move {
                        let _ = rx.wait_for(|stop| *stop).await;
                    })
                    .await;
            });
        }
        tokio::spawn(self.handle_signals(server.clone(), stop_tx));
        let mut rx = stop_rx;
        server
            .serve(listener, async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await;
        Ok(())
    }

    async fn handle_signals(self, server: Server, stop: tokio::sync::watch::Sender<bool>) {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration and modules");
                    // Reading files and compiling modules blocks: keep it off
                    // the threads that serve requests.
                    let (cmd, srv) = (self.clone(), server.clone());
                    let reload = tokio::task::spawn_blocking(move || match cmd.resolve() {
                        // `reload` logs and counts its own outcome.
                        Ok(config) => {
                            if let Err(e) = srv.reload(config)
                                && cmd.confine != Mode::Off
                                && format!("{e:#}").contains("Permission denied")
                            {
                                tracing::warn!(
                                    "the server confines itself (--confine): a reload reads \
                                     guests only beneath the directories readable at start \
                                     (its config's and its guests'); restart it to serve a guest \
                                     from another directory"
                                );
                            }
                        }
                        Err(e) => srv.reload_failed(&format!("{e:#}")),
                    });
                    if let Err(e) = reload.await {
                        server.reload_failed(&e);
                    }
                }
            }
        }
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        let _ = stop.send(true);
    }

    /// What the server may touch on the file system once confined: the
    /// directories of its config file and guests (a reload re-reads them),
    /// its routes' directories and the compile cache.
    fn files(&self, config: &ServeConfig) -> confine::Files {
        let mut files = confine::Files::default();
        if let Some(path) = &self.config {
            files.read_dir_of(path);
        }
        for route in &config.routes {
            if let ModuleSource::File(path) = &route.module {
                files.read_dir_of(path);
            }
            for dir in &route.dirs {
                if dir.read_only {
                    files.read(&dir.host);
                } else {
                    files.write(&dir.host);
                }
            }
        }
        if let Some(dir) = cache_dir().filter(|_| !self.no_cache) {
            make_cache_dir(&dir);
            files.write(dir);
        }
        files
    }

    /// Defaults < config file < flags; validated before anything is bound.
    fn resolve(&self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => config::read_file(path)?,
            None => ConfigFile::default(),
        };
        let limits = self.limit_flags().over(&file.limits);
        let defaults = limits.apply(&config::default_limits());
        let mut routes = match &self.config {
            Some(path) => config::resolve_routes(&file, path, &defaults)?,
            None => Vec::new(),
        };
        if let Some(module) = &self.module {
            if routes.iter().any(|r| r.prefix == "/") {
                bail!("MODULE is served at `/`, but the config file routes `/` too");
            }
            routes.push(RouteSpec {
                prefix: "/".into(),
                module: ModuleSource::File(module.clone()),
                limits: defaults.clone(),
                env: self.env.clone(),
                dirs: self
                    .dirs
                    .iter()
                    .map(|d| DirMapping::parse_with_default(d, true))
                    .collect(),
                outbound: wasm_run::OutboundPolicy::new(&self.allow_outbound)?,
                tenant: "/".into(),
                allow_precompiled: self.allow_precompiled,
            });
        } else if !self.env.is_empty()
            || !self.dirs.is_empty()
            || !self.allow_outbound.is_empty()
            || self.allow_precompiled
        {
            bail!(
                "--env, --dir, --allow-outbound and --allow-precompiled apply to MODULE, and no \
                 MODULE was given (a config route says `allow-precompiled = true`)"
            );
        }
        if routes.is_empty() {
            if self.config.is_some() {
                bail!("the config file has no [[route]] and no MODULE was given");
            }
            routes = demo_routes(&defaults);
        }
        let flags = self.server_flags();
        let environment = otlp_environment();
        let layers = flags.over(&file.server).over(&environment);
        let mut config = layers.resolve(routes).map_err(|e| {
            // Name where the value came from: the flag wins over the file,
            // the file over the environment.
            match &self.config {
                _ if flags.has(e.key) => anyhow::anyhow!("--{e}"),
                Some(path) if file.server.has(e.key) => {
                    anyhow::anyhow!("{}: [server] {e}", path.display())
                }
                _ if environment.has(e.key) => {
                    anyhow::anyhow!("the environment's OTEL_EXPORTER_OTLP_*: {e}")
                }
                _ => anyhow::anyhow!("--{e}"),
            }
        })?;
        if let Some(path) = &self.config {
            config.tenants = config::resolve_tenants(&file, path)?;
        }
        Ok(config)
    }

    /// The limit flags, as a layer over the config file's `[limits]`.
    fn limit_flags(&self) -> LimitsOverlay {
        LimitsOverlay {
            fuel: self.fuel,
            max_memory: self.max_memory,
            timeout: self.timeout,
            max_cpu: self.max_cpu,
        }
    }

    /// The server flags, as a layer over the config file's `[server]`.
    fn server_flags(&self) -> ServerSection {
        ServerSection {
            addr: self.addr,
            admin_addr: self.admin_addr,
            max_body: self.max_body,
            header_timeout: self.header_timeout,
            max_log: None,
            memory_budget: self.memory_budget,
            max_queue: self.max_queue,
            queue_timeout: self.queue_timeout,
            body_buffer: self.body_buffer,
            body_timeout: self.body_timeout,
            write_timeout: self.write_timeout,
            max_connections: self.max_connections,
            send_buffer: self.send_buffer,
            background_threads: self.background_threads,
            dns_servers: (!self.dns_servers.is_empty()).then(|| self.dns_servers.clone()),
            wasm_proposals: (!self.proposals.is_empty()).then(|| self.proposals.clone()),
            otlp_endpoint: self.otlp_endpoint.clone(),
        }
    }
}

/// The trace endpoint the OpenTelemetry variables name, as the lowest
/// layer: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, else
/// `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` appended.
fn otlp_environment() -> ServerSection {
    let var = |name| {
        std::env::var(name)
            .ok()
            .filter(|v: &String| !v.trim().is_empty())
    };
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = var(name).filter(|p| p != "http/protobuf") {
            tracing::warn!(
                "{name}={protocol}: wasm-run exports traces as http/protobuf only; give it a \
                 collector's OTLP/HTTP endpoint (port 4318, not gRPC's 4317)"
            );
        }
    }
    let otlp_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
        var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
    });
    ServerSection {
        otlp_endpoint,
        ..ServerSection::default()
    }
}

/// The server's listening sockets, bound before the process starts any
/// thread, drops to `--user` or confines itself.
struct Listeners {
    main: std::net::TcpListener,
    admin: Option<std::net::TcpListener>,
}

impl Listeners {
    fn bind(config: &ServeConfig) -> anyhow::Result<Listeners> {
        let main =
            listen(config.addr).with_context(|| format!("cannot listen on {}", config.addr))?;
        let admin = match config.admin_addr {
            Some(addr) => {
                Some(listen(addr).with_context(|| format!("cannot listen on {addr} (admin)"))?)
            }
            None => None,
        };
        Ok(Listeners { main, admin })
    }
}

/// A non-blocking listening socket on `addr`, as Tokio's `TcpListener::bind`
/// makes one: `SO_REUSEADDR`, a backlog of 1,024.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let socket = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    rustix::net::bind(&socket, &addr)?;
    rustix::net::listen(&socket, 1024)?;
    Ok(std::net::TcpListener::from(socket))
}

/// Raises the soft limit on open files to the hard limit; the server then
/// splits it between its reserve, connections and guests
/// (`wasm_run::serve::descriptors`).
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
        }
    }
}

/// The built-in demo: one CGI guest on four routes, each with the limit it
/// shows off (the guest's index page explains them).
fn demo_routes(defaults: &Limits) -> Vec<RouteSpec> {
    let route = |prefix: &str, limits: Limits| RouteSpec {
        prefix: prefix.into(),
        module: ModuleSource::Embedded {
            name: "demo.wasm (built in)".into(),
            bytes: DEMO_WASM,
        },
        limits,
        env: Vec::new(),
        dirs: Vec::new(),
        outbound: wasm_run::OutboundPolicy::default(),
        tenant: prefix.into(),
        allow_precompiled: false,
    };
    vec![
        route("/", defaults.clone()),
        route(
            "/spin",
            Limits {
                fuel: Some(100_000_000),
                timeout: Some(Duration::from_secs(2)),
                ..defaults.clone()
            },
        ),
        route(
            "/bomb",
            Limits {
                max_memory: 32 << 20,
                ..defaults.clone()
            },
        ),
        route(
            "/sleep",
            Limits {
                timeout: Some(Duration::from_secs(1)),
                ..defaults.clone()
            },
        ),
    ]
}
