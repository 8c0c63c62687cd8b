//! `wasm-run serve`: an HTTP function host in which every request runs in
//! its own fresh store with its own limits.
//!
//! # Rooms by lifetime
//!
//! - this module: what lives as long as the process — [`Server`], the
//!   settings fixed at start ([`config::FixedSettings`]), the two accept
//!   loops (`listener`, `conn_io`), draining on shutdown;
//! - `routes`: what a reload replaces — the route table, each route's loaded
//!   guest, tenant and request settings, loading and validation;
//! - `request`: one request's life from a parsed request to its answer —
//!   id and record, routing, the body's first part, admission, the
//!   connection's standing, dispatch by guest kind;
//! - `http_guest` / `cgi_guest`: how a request reaches each kind of guest
//!   and how its response head comes back; `guest_task`: what both share
//!   (the guest's own task, its end, the answer for a guest that gave none);
//!   `response`: the answer table, guarded and coalesced bodies;
//! - `admin`: `/healthz`, `/readyz`, `/metrics`;
//! - [`config`]: the configuration file and its layering under the flags;
//!   `settings`: what they resolve to ([`config::ServeConfig`]), split into
//!   what a server fixes at start and what a reload replaces.
//!
//! # Flow of a request
//!
//! accept (here) → `request` (route from `routes`, body, admission) →
//! `http_guest` or `cgi_guest` → `guest_task` (the guest in its task, the
//! head, the body guarded) → `response`. The library prepares and runs both
//! kinds the same way (one store factory, one deadline, one classifier, as
//! `wasm-run run`): a wasi:http component through
//! [`crate::Guest::handle_http`], a command CGI-style through
//! [`crate::Guest::run`] with its stdout parsed for a CGI head. The head
//! goes out as soon as the guest produces it and the body streams while the
//! guest runs; a guest killed before its head gets the host's answer, one
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
mod admin;
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
pub mod otlp;
mod record;
mod request;
mod request_body;
pub(crate) mod response;
mod routes;
mod settings;

pub use self::admin::ADMIN_MAX_CONNECTIONS;
pub use self::request::REQUEST_ID_HEADER;
pub use self::routes::LoadError;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use self::admission::{Admission, AdmissionConfig, Slots};
use self::conn_io::WriteTimeout;
use self::guest_task::{ConnInfo, Standing};
use self::listener::{Accepted, Listener};
use self::metrics::Metrics;
use self::request::Requests;
use self::routes::load_table;
use self::settings::{FixedSettings, ServeConfig};
use crate::Engine;

/// The HTTP function host.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

/// What lives as long as the server: the engine, the running
/// configuration, and what every request goes through.
struct Shared {
    engine: Engine,
    requests: Requests,
    /// What the server fixed at start (read from here, never from
    /// `config`, whose fixed settings a reload may have asked to change).
    fixed: FixedSettings,
    /// The running configuration: its routes and per-request settings.
    config: RwLock<ServeConfig>,
    /// Client connections served at once: `max_connections`, or fewer if
    /// the open-files limit leaves less room (`descriptors`).
    connection_cap: usize,
    draining: AtomicBool,
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
                requests: Requests::new(
                    admission,
                    table,
                    Arc::new(Metrics::new()),
                    config.otlp_endpoint.clone(),
                ),
                fixed: FixedSettings::of(&config),
                config: RwLock::new(config),
                connection_cap: fds.connections,
                draining: AtomicBool::new(false),
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
    pub fn reload(&self, config: ServeConfig) -> Result<(), LoadError> {
        for name in self.shared.fixed.differences(&FixedSettings::of(&config)) {
            tracing::warn!(
                setting = name,
                "a reload cannot change this setting; it keeps its value until a restart"
            );
        }
        let requests = &self.shared.requests;
        let table = match load_table(&self.shared.engine, &config, &requests.admission) {
            Ok(table) => table,
            Err(e) => {
                self.reload_failed(&e);
                return Err(e);
            }
        };
        requests.replace_table(table);
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(|e| e.into_inner()) = config;
        tracing::info!("reloaded");
        requests.metrics.reloaded(true);
        Ok(())
    }

    /// Logs and counts a reload that failed before it reached
    /// [`Server::reload`] (e.g. a configuration file that does not parse);
    /// the current routes keep serving.
    pub fn reload_failed(&self, error: &dyn std::fmt::Display) {
        tracing::error!(error = %error, "reload failed; keeping the old configuration");
        self.shared.requests.metrics.reloaded(false);
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.requests.metrics
    }

    /// Serves HTTP on `listener` until `shutdown` completes, then stops
    /// accepting, lets requests in flight finish (each bounded by its
    /// deadline) and returns.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let config = self.shared.fixed.clone();
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
                async move { Ok::<_, Infallible>(shared.requests.handle(req, conn_info).await) }
            });
            let io = TokioIo::new(WriteTimeout::new(stream, config.write_timeout));
            let conn =
                graceful.watch(http1_builder(config.header_timeout).serve_connection(io, service));
            let metrics = self.shared.requests.metrics.clone();
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
        let config = self.shared.fixed.clone();
        let mut listener = Listener::new(listener, "admin", ADMIN_MAX_CONNECTIONS);
        let mut shutdown = std::pin::pin!(shutdown);
        while let Some(Accepted { stream, slot, .. }) = listener.accept(&mut shutdown).await {
            let shared = self.shared.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                let draining = shared.draining.load(Ordering::Relaxed);
                let requests = &shared.requests;
                let answer = admin::answer(
                    req.uri().path(),
                    &requests.admission,
                    &requests.metrics,
                    draining,
                );
                async move { Ok::<_, Infallible>(answer) }
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

/// Largest request head (request line and headers) a client may send: 32 KiB,
/// as nginx allows by default; larger heads are answered 431. This also
/// bounds the incoming headers a wasi:http guest can copy into new fields.
pub const MAX_REQUEST_HEAD_BYTES: usize = 32 << 10;

/// Most bytes hyper buffers per connection in each direction: 64 KiB
/// (hyper's default is ~400 KiB). Past it, hyper stops reading the request
/// body, or stops taking frames from the response body, until the socket
/// drains — so a client that never reads holds at most this, one body frame
/// ([`crate::http_client::BODY_CHUNK_BYTES`]) and the body's one-chunk channel.
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
