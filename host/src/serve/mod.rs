//! `wasm-run serve`: an HTTP function host in which every request runs in
//! its own fresh store with its own limits.
//!
//! # Flow of a request
//!
//! The accept loop ([`Server::serve`]) hands each connection to hyper; each
//! request gets an id and a `RequestRecord`, is matched to the
//! route with the longest path prefix, has its declared `Content-Length`
//! checked against `--max-body`, and goes to one of two paths by guest kind:
//!
//! - `http_guest`: a wasi:http component is handed the request through
//!   [`crate::Guest::handle_http`];
//! - `cgi_guest`: a command (core module or component) is run CGI-style
//!   through [`crate::Guest::run`], its stdout parsed for a CGI head.
//!
//! The library prepares and runs both the same way (one store factory, one
//! deadline, one classifier, as `wasm-run run`). What is common to serving
//! them lives once, in `guest_task`: the guest runs in its own tokio task
//! that reports one `Finished` value and releases the budget permit; the
//! head goes out as soon as the guest produces it and the body streams
//! while the guest runs; a guest killed before its head gets the host's
//! answer (`response::HostAnswer`, from the one `answer_for` mapping); one
//! killed after it has its body aborted.

//! # Admission, and what clients may hold
//!
//! Before a guest runs, the first `--body-buffer` bytes of its request body
//! are read (`request_body`; a client that dribbles holds no budget and
//! gets 408), then its route's memory cap plus its guest's host allowance
//! must fit in the host's memory budget ([`admission`]); the permit is held
//! until the guest's task ends. Connections are capped (`--max-connections`)
//! and a response write that makes no progress for `--write-timeout` drops
//! its connection (`conn_io`).
//!
//! # Scheduling: the kernel decides
//!
//! Guests start as ordinary tasks on tokio's multi-threaded runtime, beside
//! the socket I/O, at normal priority. wasmtime's epoch ticker (every 1 ms)
//! makes each running guest call back into the host, and the store's epoch
//! callback answers "yield" (or traps once the deadline has passed; a tokio
//! timeout bounds time blocked in host calls), so no guest holds a worker
//! for more than a tick.
//!
//! Between polls the [`crate::scheduler`] adds up the time spent in them: a
//! request that has used 1 ms of CPU — in wasm or in synchronous host calls;
//! waiting does not count — is handed to a pool of threads at a low
//! kernel priority (nice 10), one per core, and finishes there. From then
//! on the kernel preempts it the moment a fresh request, the accept loop or
//! any socket I/O is runnable: spinning guests get about a tenth of a
//! contended core (enough to release the locks they hold and keep moving
//! toward their deadline) and every idle core. There is no userspace
//! scheduler and no queue of slots; a request that ends within its first
//! 1 ms never touches the pool. (An earlier design kept demoted guests on
//! the same threads and made them take turns on cores − 1 userspace
//! "slots"; kernel priorities cut hello's p99 under abuse further, see
//! benches/RESULTS.md.)

/// Admission by memory budget (the library's [`crate::admission`]).
pub use crate::admission;
pub mod cgi;
mod cgi_guest;
pub mod config;
mod conn_io;
pub mod descriptors;
mod guest_log;
mod guest_task;
mod http_guest;
mod listener;
pub mod metrics;
mod record;
mod request_body;
pub(crate) mod response;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use self::admission::{Admission, AdmissionConfig, Need, Permit, Rejected, Slots, TenantId};
use self::config::{ModuleSource, RouteSpec, ServeConfig};
use self::conn_io::WriteTimeout;
use self::guest_task::{Exchange, Standing};
use self::listener::{Accepted, Listener};
use self::metrics::Metrics;
use self::record::RequestRecord;
use self::request_body::{BodyFault, BodyFlag, LimitedBody};
use self::response::{Body, HostAnswer, full};
use crate::{Engine, Guest, GuestKind, OutboundPolicy, Priority};

/// Header carrying the request id, also used in the guest's log lines.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Where a connection came from and arrived at (for CGI variables), and
/// its standing (how its last request ended).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    local: SocketAddr,
    remote: SocketAddr,
    standing: Standing,
}

/// A route with its guest loaded.
pub(crate) struct RouteRuntime {
    spec: RouteSpec,
    guest: Guest,
    outbound: OutboundPolicy,
    /// The tenant its requests are admitted as.
    tenant: TenantId,
    max_body: u64,
    /// Bytes of a request body read before the request waits for budget.
    body_buffer: u64,
    /// Longest wait for the (next part of the) request body.
    body_timeout: Duration,
    log_cap: usize,
}

impl RouteRuntime {
    /// What one request on this route takes while admitted: its memory cap
    /// plus its guest's host allowance ([`Guest::host_allowance`]), and the
    /// instance-pool slots of its guest.
    fn admission_need(&self) -> Need {
        Need {
            bytes: self
                .spec
                .limits
                .max_memory
                .saturating_add(self.guest.host_allowance()),
            slots: Slots::of(&self.guest)
                .with_fds(Slots::fds_of(self.spec.dirs.len(), &self.outbound)),
        }
    }
}

/// The routes of one configuration generation; replaced whole on reload,
/// so requests in flight finish on the generation they started with.
struct RouteTable {
    /// Longest prefix first.
    routes: Vec<RouteRuntime>,
}

impl RouteTable {
    fn find(&self, path: &str) -> Option<&RouteRuntime> {
        self.routes
            .iter()
            .find(|r| prefix_matches(&r.spec.prefix, path))
    }
}

/// `/api` matches `/api` and `/api/...` but not `/apix`; `/` matches all.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// A loading failure, naming the route. Its message includes the
/// error's, which is therefore not also its `source()` (a chain printer
/// such as anyhow's `{:#}` shows each cause once).
#[derive(Debug, thiserror::Error)]
#[error("route {prefix}: {error}")]
pub struct LoadError {
    /// The route whose module failed.
    pub prefix: String,
    /// Why it failed.
    pub error: crate::Error,
}

/// The HTTP function host.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    admission: Arc<Admission>,
    table: RwLock<Arc<RouteTable>>,
    config: RwLock<ServeConfig>,
    metrics: Arc<Metrics>,
    /// Client connections served at once: `max_connections`, or fewer if
    /// the open-files limit leaves less room (`descriptors`).
    connection_cap: usize,
    draining: AtomicBool,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    /// Loads every route's guest (compiling each module once).
    ///
    /// The process's open-files limit (read now; the `wasm-run` command
    /// raises it to the hard limit first) is split between a reserve of
    /// [`descriptors::FD_RESERVE`] for the host, client connections (at most
    /// `max_connections`, lowered with a warning so that guests keep at
    /// least a quarter of the rest) and the descriptors admitted guests
    /// may hold, which admission counts per request.
    pub fn new(engine: Engine, config: ServeConfig) -> Result<Server, LoadError> {
        let limit = descriptors::open_files_limit();
        let fds = descriptors::split(limit, config.max_connections);
        if fds.connections < config.max_connections {
            tracing::warn!(
                open_files_limit = limit,
                max_connections = config.max_connections,
                lowered_to = fds.connections,
                "the open-files limit leaves room for fewer connections than --max-connections; \
                 lowering the cap"
            );
        }
        let admission_config = AdmissionConfig {
            budget: config.memory_budget,
            max_queue: config.max_queue,
            queue_timeout: config.queue_timeout,
        };
        // Requests also take instance-pool slots: counted, so that a route
        // whose guests take many cannot make another route's fail.
        let pool = Slots::pool_of(engine.config()).unwrap_or(Slots {
            invocations: u64::MAX,
            instances: u64::MAX,
            memories: u64::MAX,
            tables: u64::MAX,
            fds: u64::MAX,
        });
        let admission = Admission::with_slots(admission_config, pool.with_fds(fds.guests));
        let table = load_table(&engine, &config, &admission)?;
        Ok(Server {
            shared: Arc::new(Shared {
                engine,
                admission,
                table: RwLock::new(Arc::new(table)),
                config: RwLock::new(config),
                metrics: Arc::new(Metrics::new()),
                connection_cap: fds.connections,
                draining: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// Replaces the routes with those of `config`, loading every module
    /// first; on failure the current routes keep serving. Each reload is
    /// logged and counted (`reloads{result}`).
    ///
    /// What a reload may change: the routes (modules, limits, environment,
    /// directories, outbound policies) and the per-route request settings
    /// (`max-body`, `max-log`, `body-buffer`, `body-timeout`). What is fixed
    /// at start — listener addresses, `max-connections`, `header-timeout`,
    /// `write-timeout`, `memory-budget`, `max-queue`, `queue-timeout` — keeps
    /// its running value, and a reload that changes one says so in the log.
    pub fn reload(&self, mut config: ServeConfig) -> Result<(), LoadError> {
        let running = self.config();
        for name in fixed_settings_changed(&running, &config) {
            tracing::warn!(
                setting = name,
                "a reload cannot change this setting; it keeps its value until a restart"
            );
        }
        keep_fixed_settings(&running, &mut config);
        let table = match load_table(&self.shared.engine, &config, &self.shared.admission) {
            Ok(table) => table,
            Err(e) => {
                self.reload_failed(&e);
                return Err(e);
            }
        };
        *self.shared.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(|e| e.into_inner()) = config;
        tracing::info!("reloaded");
        self.shared.metrics.reloaded(true);
        Ok(())
    }

    /// Logs and counts a reload that failed before it reached
    /// [`Server::reload`] (e.g. a configuration file that does not parse);
    /// the current routes keep serving.
    pub fn reload_failed(&self, error: &dyn std::fmt::Display) {
        tracing::error!(error = %error, "reload failed; keeping the old configuration");
        self.shared.metrics.reloaded(false);
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Serves HTTP on `listener` until `shutdown` completes, then stops
    /// accepting, lets requests in flight finish (each bounded by its
    /// deadline) and returns.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let config = self.config();
        let graceful = GracefulShutdown::new();
        let mut listener = Listener::new(listener, "main", self.shared.connection_cap);
        let mut shutdown = std::pin::pin!(shutdown);
        while let Some(Accepted {
            stream,
            remote,
            slot,
        }) = listener.accept(&mut shutdown).await
        {
            let _ = stream.set_nodelay(true);
            if let Some(bytes) = config.send_buffer
                && let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(
                    &stream,
                    usize::try_from(bytes).unwrap_or(usize::MAX),
                )
            {
                tracing::debug!(error = %e, "cannot set the connection's send buffer");
            }
            let Ok(local) = stream.local_addr() else {
                continue;
            };
            let conn_info = ConnInfo {
                local,
                remote,
                standing: Standing::default(),
            };
            let shared = self.shared.clone();
            let service = service_fn(move |req| {
                let shared = shared.clone();
                let conn_info = conn_info.clone();
                async move { Ok::<_, Infallible>(shared.handle(req, conn_info).await) }
            });
            let io = TokioIo::new(WriteTimeout::new(stream, config.write_timeout));
            let conn =
                graceful.watch(http1_builder(config.header_timeout).serve_connection(io, service));
            let metrics = self.shared.metrics.clone();
            metrics.open_connections.inc();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                metrics.open_connections.dec();
                drop(slot);
            });
        }
        drop(listener);
        self.shared.draining.store(true, Ordering::Relaxed);
        let drain_for = self.drain_timeout();
        tracing::info!(
            timeout_ms = drain_for.as_millis() as u64,
            "draining requests in flight"
        );
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(drain_for) => tracing::warn!("drain timed out; closing"),
        }
    }

    /// Serves the admin endpoints (`/healthz`, `/readyz`, `/metrics`) on
    /// `listener` until `shutdown` completes. At most
    /// [`ADMIN_MAX_CONNECTIONS`] connections at once, each with the same
    /// head and write timeouts as the main listener.
    pub async fn serve_admin(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let config = self.config();
        let mut listener = Listener::new(listener, "admin", ADMIN_MAX_CONNECTIONS);
        let mut shutdown = std::pin::pin!(shutdown);
        while let Some(Accepted { stream, slot, .. }) = listener.accept(&mut shutdown).await {
            let shared = self.shared.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(shared.admin(req.uri().path())) }
            });
            let io = TokioIo::new(WriteTimeout::new(stream, config.write_timeout));
            let conn = http1_builder(config.header_timeout).serve_connection(io, service);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
                drop(slot);
            });
        }
    }

    fn config(&self) -> ServeConfig {
        self.shared
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Longest route deadline plus a margin (30 s when a route has none).
    fn drain_timeout(&self) -> Duration {
        self.config()
            .routes
            .iter()
            .map(|r| r.limits.timeout.unwrap_or(Duration::from_secs(30)))
            .max()
            .unwrap_or_default()
            + Duration::from_secs(1)
    }
}

impl Shared {
    async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id: Arc<str> = format!("{n:08x}").into();
        let record = RequestRecord::start(
            id.clone(),
            req.method(),
            req.uri().path(),
            self.metrics.clone(),
        );
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut response = match table.find(req.uri().path()) {
            None => record.answer(HostAnswer::NotFound(format!(
                "no route for {}",
                req.uri().path()
            ))),
            Some(route) => {
                record.set_route(&route.spec.prefix, &route.spec.tenant);
                self.route_request(route, req, conn, record).await
            }
        };
        if let Ok(v) = HeaderValue::from_str(&id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        response
    }

    async fn route_request(
        &self,
        route: &RouteRuntime,
        req: Request<Incoming>,
        conn: ConnInfo,
        record: record::Record,
    ) -> Response<Body> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > route.max_body) {
            return record.answer(HostAnswer::BodyTooLarge(route.max_body));
        }
        // Read a small body whole (a large one's head) before taking budget,
        // so a client that dribbles its body holds no permit while it does.
        let flag = BodyFlag::default();
        let (parts, body) = req.into_parts();
        let mut body = LimitedBody::new(body, route.max_body, route.body_timeout, flag.clone());
        if !body.is_end_stream()
            && let Err(fault) = body.prebuffer(route.body_buffer, route.body_timeout).await
        {
            return record.answer(body_answer(route, fault));
        }
        let permit = match self.admit(route).await {
            Ok(permit) => permit,
            Err(answer) => return record.answer(answer),
        };
        let req = Request::from_parts(parts, body);
        let priority = conn.standing.priority();
        if priority == Priority::Background {
            self.metrics.penalized.inc();
        }
        let exchange = Exchange {
            route,
            record,
            body_flag: flag,
            priority,
            standing: conn.standing.clone(),
        };
        if route.guest.kind().is_http() {
            http_guest::handle(exchange, req, permit).await
        } else {
            cgi_guest::handle(exchange, req, conn, permit).await
        }
    }

    /// Waits for the route's memory cap, plus the host memory its guest may
    /// make the host hold, to fit in the budget.
    async fn admit(&self, route: &RouteRuntime) -> Result<Permit, HostAnswer> {
        let need = route.admission_need();
        match self.admission.admit_as(route.tenant, need).await {
            Ok((permit, waited)) => {
                self.metrics
                    .queue_wait_seconds
                    .observe(waited.as_secs_f64());
                Ok(permit)
            }
            Err(rejected) => {
                let (reason, message) = match rejected {
                    Rejected::QueueFull => (
                        "queue_full",
                        "the host's memory budget is in use and its admission queue is full",
                    ),
                    Rejected::Timeout => (
                        "queue_timeout",
                        "the host's memory budget stayed in use for longer than the queue timeout",
                    ),
                    // Routes that could never fit are refused when they
                    // load; this is for completeness.
                    Rejected::TooLarge => (
                        "too_large",
                        "the request needs more than the host's whole memory budget",
                    ),
                };
                self.metrics
                    .rejected
                    .get_or_create(&metrics::ReasonLabels {
                        reason: reason.to_string(),
                    })
                    .inc();
                Err(HostAnswer::Overloaded(format!("{message}; retry later")))
            }
        }
    }

    fn admin(&self, path: &str) -> Response<Body> {
        let (status, content_type, body) = match path {
            "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            "/readyz" if self.draining.load(Ordering::Relaxed) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "draining\n".to_string(),
            ),
            "/readyz" if self.admission.saturated() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "saturated: the admission queue is full\n".to_string(),
            ),
            "/readyz" => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            "/metrics" => {
                let in_use = i64::try_from(self.admission.in_use()).unwrap_or(i64::MAX);
                self.metrics.budget_in_use.set(in_use);
                self.metrics
                    .queue_length
                    .set(self.admission.queued() as i64);
                self.metrics.tenants(&self.admission.tenant_stats());
                (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.metrics.encode(),
                )
            }
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "admin endpoints: /healthz /readyz /metrics\n".to_string(),
            ),
        };
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}

/// The answer to a request whose body failed, if the body is why.
pub(crate) fn body_answer(route: &RouteRuntime, fault: BodyFault) -> HostAnswer {
    match fault {
        BodyFault::TooLarge => HostAnswer::BodyTooLarge(route.max_body),
        BodyFault::TimedOut => HostAnswer::BodyTimeout(route.body_timeout),
    }
}

/// The settings fixed at start that `new` has and `running` does not.
fn fixed_settings_changed(running: &ServeConfig, new: &ServeConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("addr", running.addr != new.addr);
    check("admin-addr", running.admin_addr != new.admin_addr);
    check(
        "header-timeout",
        running.header_timeout != new.header_timeout,
    );
    check("write-timeout", running.write_timeout != new.write_timeout);
    check("memory-budget", running.memory_budget != new.memory_budget);
    check("max-queue", running.max_queue != new.max_queue);
    check("queue-timeout", running.queue_timeout != new.queue_timeout);
    // The running cap may have been lowered to fit the open-files limit.
    check(
        "max-connections",
        running.max_connections != new.max_connections,
    );
    check(
        "background-threads",
        running.background_threads != new.background_threads,
    );
    changed
}

/// Puts `running`'s fixed settings into `new`.
fn keep_fixed_settings(running: &ServeConfig, new: &mut ServeConfig) {
    new.addr = running.addr;
    new.admin_addr = running.admin_addr;
    new.header_timeout = running.header_timeout;
    new.write_timeout = running.write_timeout;
    new.memory_budget = running.memory_budget;
    new.max_queue = running.max_queue;
    new.queue_timeout = running.queue_timeout;
    new.max_connections = running.max_connections;
    new.send_buffer = running.send_buffer;
    new.background_threads = running.background_threads;
}

/// Most connections the admin listener serves at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Largest request head (request line and headers) a client may send: 32 KiB,
/// as nginx allows by default; larger heads are answered 431. This also
/// bounds the incoming headers a wasi:http guest can copy into new fields.
pub const MAX_REQUEST_HEAD_BYTES: usize = 32 << 10;

/// Most bytes hyper buffers per connection in each direction: 64 KiB
/// (hyper's default is ~400 KiB). Past it, hyper stops reading the request
/// body, or stops taking frames from the response body, until the socket
/// drains — so a client that never reads holds at most this, one body frame
/// ([`crate::outbound::BODY_CHUNK_BYTES`]) and the body's one-chunk channel.
pub const CONNECTION_BUFFER_BYTES: usize = 64 << 10;

/// The HTTP/1 settings of every connection: the head must arrive within
/// `header_timeout` (which also closes idle keep-alive connections) and fit
/// in [`MAX_REQUEST_HEAD_BYTES`]; buffers stop at [`CONNECTION_BUFFER_BYTES`].
fn http1_builder(header_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .max_buf_size(CONNECTION_BUFFER_BYTES)
        .keep_alive(true);
    builder
}

/// How a guest of `kind` is served, for the log.
fn served_as(kind: GuestKind) -> &'static str {
    match kind {
        GuestKind::HttpComponent => "wasi:http",
        GuestKind::HttpComponentP3 => "wasi:http 0.3",
        GuestKind::CoreCommand | GuestKind::ComponentCommand => "cgi",
        GuestKind::ComponentCommandP3 => "cgi (wasi 0.3)",
    }
}

/// Refuses a route whose requests could never be admitted: one request's
/// need (its memory cap plus its guest's host allowance) is more than the
/// whole budget.
fn fits_the_budget(spec: &RouteSpec, guest: &Guest, budget: u64) -> Result<(), LoadError> {
    let need = spec
        .limits
        .max_memory
        .saturating_add(guest.host_allowance());
    if need <= budget {
        return Ok(());
    }
    Err(LoadError {
        prefix: spec.prefix.clone(),
        error: crate::Error::Setup {
            name: guest.name().to_string(),
            message: format!(
                "a request on this route needs {need} bytes of the memory budget (its \
                 memory cap of {} bytes plus the guest's host allowance of {} bytes), \
                 more than the whole budget of {budget} bytes, so no request could ever be \
                 admitted",
                spec.limits.max_memory,
                guest.host_allowance(),
            ),
        },
    })
}

/// Loads a route's guest: wasm or WAT always, an artifact of `wasm-run
/// compile` only on a route that allows precompiled code.
#[expect(unsafe_code, reason = "the operator vouched for the route's artifact")]
fn load_guest(engine: &Engine, spec: &RouteSpec) -> crate::Result<Guest> {
    match &spec.module {
        ModuleSource::File(path) if spec.allow_precompiled => {
            // SAFETY: `allow-precompiled` (or `--allow-precompiled` for
            // MODULE) is the operator's statement that the route's module,
            // if an artifact, is one they made or trust as a binary.
            unsafe { Guest::from_file_allow_precompiled(engine, path) }
        }
        ModuleSource::File(path) => Guest::from_file(engine, path),
        ModuleSource::Embedded { name, bytes } => Guest::from_bytes(engine, name, bytes),
    }
}

fn load_table(
    engine: &Engine,
    config: &ServeConfig,
    admission: &Admission,
) -> Result<RouteTable, LoadError> {
    let mut loaded: HashMap<&ModuleSource, Guest> = HashMap::new();
    let mut routes = Vec::new();
    let resolver = (!config.dns_servers.is_empty())
        .then(|| crate::dns::Resolver::with_servers(&config.dns_servers));
    for spec in &config.routes {
        let guest = match loaded.get(&spec.module) {
            Some(g) => g.clone(),
            None => {
                let guest = load_guest(engine, spec).map_err(|error| LoadError {
                    prefix: spec.prefix.clone(),
                    error,
                })?;
                loaded.insert(&spec.module, guest.clone());
                guest
            }
        };
        let outbound = match &resolver {
            Some(resolver) => spec.outbound.clone().with_resolver(resolver.clone()),
            None => spec.outbound.clone(),
        };
        fits_the_budget(spec, &guest, config.memory_budget)?;
        tracing::info!(
            route = %spec.prefix,
            guest = guest.name(),
            kind = served_as(guest.kind()),
            "route loaded"
        );
        // A declared tenant's settings, or a tenant of the route's own.
        let tenant = config
            .tenants
            .iter()
            .find(|t| t.name == spec.tenant)
            .map(|t| t.config.clone())
            .unwrap_or_default();
        routes.push(RouteRuntime {
            spec: spec.clone(),
            outbound,
            tenant: admission.tenant(&spec.tenant, &tenant),
            guest,
            max_body: config.max_body,
            body_buffer: config.body_buffer,
            body_timeout: config.body_timeout,
            log_cap: usize::try_from(config.max_log).unwrap_or(usize::MAX),
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.spec.prefix.len()));
    Ok(RouteTable { routes })
}

#[cfg(test)]
mod tests {
    use super::{fixed_settings_changed, keep_fixed_settings, prefix_matches};
    use crate::serve::config::ServerSection;
    use std::time::Duration;

    #[test]
    fn a_reload_keeps_what_is_fixed_at_start_and_names_it() {
        let running = ServerSection::default().resolve(Vec::new()).unwrap();
        let mut new = ServerSection {
            max_queue: Some(3),
            write_timeout: Some(crate::limits::HumanDuration(Duration::from_secs(1))),
            max_body: Some(crate::limits::ByteSize(10)),
            ..ServerSection::default()
        }
        .resolve(Vec::new())
        .unwrap();
        assert_eq!(
            fixed_settings_changed(&running, &new),
            ["write-timeout", "max-queue"]
        );
        keep_fixed_settings(&running, &mut new);
        assert_eq!(new.max_queue, running.max_queue);
        assert_eq!(new.write_timeout, running.write_timeout);
        // What a reload may change, it changes.
        assert_eq!(new.max_body, 10);
        assert!(fixed_settings_changed(&running, &new).is_empty());
    }

    #[test]
    fn prefixes_match_at_segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/"));
    }
}
