//! The guests' outgoing HTTP client: wasmtime-wasi-http's hooks for one
//! invocation ([`crate::outbound::OutboundPolicy`] decides where a request
//! may go), the connection to exactly the vetted address (TLS verified
//! against the name the guest used), the bounds on what a request holds
//! (its in-flight slots, 64 KiB body chunks, a 64 KiB upstream head), and
//! a budget of log lines for the requests it is refused.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::log_text::LogText;
use crate::outbound::{OutboundPolicy, Vetted};
use crate::trace::{InvocationTrace, OutgoingResult, OutgoingSpan, TraceContext};

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

/// Largest response head accepted from an upstream: 64 KiB (hyper's
/// default is ~400 KiB); a larger one fails the request.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 << 10;

/// Longest a connection attempt may take when the guest sets no timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One invocation's outgoing HTTP: its policy, and the slots that bound
/// how many of its requests are in flight at once.
#[derive(Debug)]
pub(crate) struct OutboundHooks {
    policy: OutboundPolicy,
    slots: Arc<tokio::sync::Semaphore>,
    /// Log lines this invocation's refused requests may still cause.
    log: Arc<LogBudget>,
    /// The invocation's deadline (and the ticker that rings it): no
    /// connection it opened lives past it.
    deadline: Option<(Instant, Arc<crate::ticker::Activity>)>,
    /// The invocation's CPU budget, which its connections' tasks draw on.
    cpu: Option<Arc<crate::scheduler::CpuBudget>>,
    /// The invocation's trace: each request gets a child span's
    /// `traceparent` and is reported to the observer.
    trace: Option<crate::trace::InvocationTrace>,
}

impl OutboundHooks {
    pub(crate) fn new(policy: OutboundPolicy) -> Self {
        let slots = Arc::new(tokio::sync::Semaphore::new(policy.max_outgoing()));
        OutboundHooks {
            policy,
            slots,
            log: Arc::new(LogBudget::new(MAX_REFUSED_LOG_LINES)),
            deadline: None,
            cpu: None,
            trace: None,
        }
    }

    /// Sets the invocation's trace (see [`crate::trace`]).
    pub(crate) fn set_trace(&mut self, trace: Option<crate::trace::InvocationTrace>) {
        self.trace = trace;
    }

    /// Sets the invocation's deadline and CPU budget, which every
    /// connection it opens keeps after its store is gone: the connection
    /// ends at the deadline, and the CPU its task spends (TLS, HTTP
    /// parsing) counts against the budget, ending it once the budget is
    /// passed.
    pub(crate) fn set_limits(
        &mut self,
        deadline: Option<(Instant, Arc<crate::ticker::Activity>)>,
        cpu: Option<Arc<crate::scheduler::CpuBudget>>,
    ) {
        self.deadline = deadline;
        self.cpu = cpu;
    }
}

/// Most log lines one invocation's refused outgoing requests (denied, or
/// over its in-flight cap) cause: 16, then one line saying the rest are
/// not logged. A guest may make millions of refused requests; the log
/// must not grow with them.
pub const MAX_REFUSED_LOG_LINES: usize = 16;

/// A count of log lines an invocation may still cause.
#[derive(Debug)]
struct LogBudget {
    left: std::sync::atomic::AtomicUsize,
}

impl LogBudget {
    fn new(lines: usize) -> LogBudget {
        LogBudget {
            left: std::sync::atomic::AtomicUsize::new(lines + 1),
        }
    }

    /// Whether one more line may be written: `Some(true)` a normal line,
    /// `Some(false)` the last one (which should say the rest are not
    /// logged), `None` nothing more.
    fn take(&self) -> Option<bool> {
        use std::sync::atomic::Ordering;
        let was = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()?;
        Some(was > 1)
    }
}

/// Logs an error of an outgoing request's connection at debug level,
/// within the invocation's budget.
fn log_error(budget: &LogBudget, what: &'static str, err: &dyn std::fmt::Display) {
    if budget.take().is_some() {
        let err = err.to_string();
        tracing::debug!(error = %LogText::new(&err), "outgoing HTTP {what} error");
    }
}

/// Logs a refused outgoing request, within the invocation's budget.
fn log_refused(budget: &LogBudget, uri: &http::Uri, what: &str, reason: Option<&str>) {
    match budget.take() {
        Some(true) => {
            let uri = uri.to_string();
            tracing::info!(uri = %LogText::new(&uri), reason, "{what}");
        }
        Some(false) => tracing::info!(
            "further refused outgoing HTTP requests of this invocation are not logged \
             (at most {MAX_REFUSED_LOG_LINES} lines)"
        ),
        None => {}
    }
}

/// Largest chunk one `output-stream.write` may pass to a wasi:http body
/// (request or response): 64 KiB, the `check-write` permit the guest gets
/// (wasmtime's default is 1 MiB). It bounds the host-side copy of one
/// write, and the frames a connection may still hold once its guest ended.
pub const BODY_CHUNK_BYTES: usize = 64 << 10;

impl WasiHttpHooks for OutboundHooks {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    // wasmtime's defaults log every hyper, connect and TLS error of a
    // guest's requests at `warn`, without bound; these log within the
    // invocation's budget of refused-request lines instead.
    fn p2_error_from_hyper(
        &mut self,
        err: &hyper::Error,
    ) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        log_error(&self.log, "hyper", err);
        wasmtime_wasi_http::p2::bindings::http::types::ErrorCode::HttpProtocolError
    }

    fn p2_error_from_connect(
        &mut self,
        err: &std::io::Error,
    ) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        log_error(&self.log, "connect", err);
        wasmtime_wasi_http::p2::bindings::http::types::ErrorCode::ConnectionRefused
    }

    fn p2_error_from_tls(
        &mut self,
        err: &std::io::Error,
    ) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        log_error(&self.log, "tls", err);
        wasmtime_wasi_http::p2::bindings::http::types::ErrorCode::TlsProtocolError
    }

    fn p3_error_from_hyper(
        &mut self,
        err: &hyper::Error,
    ) -> wasmtime_wasi_http::p3::bindings::http::types::ErrorCode {
        log_error(&self.log, "hyper", err);
        wasmtime_wasi_http::p3::bindings::http::types::ErrorCode::HttpProtocolError
    }

    fn p3_error_from_connect(
        &mut self,
        err: &std::io::Error,
    ) -> wasmtime_wasi_http::p3::bindings::http::types::ErrorCode {
        log_error(&self.log, "connect", err);
        wasmtime_wasi_http::p3::bindings::http::types::ErrorCode::ConnectionRefused
    }

    fn p3_error_from_tls(
        &mut self,
        err: &std::io::Error,
    ) -> wasmtime_wasi_http::p3::bindings::http::types::ErrorCode {
        log_error(&self.log, "tls", err);
        wasmtime_wasi_http::p3::bindings::http::types::ErrorCode::TlsProtocolError
    }

    /// The same 64 KiB for WASI 0.3 bodies (wasmtime's default is 1 MiB),
    /// so a slow reader of a WASI 0.3 response holds no more per frame than
    /// one of a WASI 0.2 response.
    fn p3_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    /// Sends a request the policy allows. wasmtime runs the returned
    /// futures on tasks of their own: both carry the invocation's account
    /// (so what they allocate — connection, buffers, response — is charged
    /// to it) and one of its outgoing slots, held until the connection is
    /// done.
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _io: IoFuture,
    ) -> SendFuture {
        let traced = self.trace.as_ref().map(|trace| traced(trace, &mut request));
        let policy = self.policy.clone();
        let log = Arc::clone(&self.log);
        let slot = Arc::clone(&self.slots).try_acquire_owned();
        let deadline = self
            .deadline
            .as_ref()
            .map(|(at, activity)| activity.alarm(*at));
        let cpu = self.cpu.clone();
        let account = crate::accounting::Account::current();
        let send = async move {
            let mut traced = traced;
            let mut report = |result| {
                if let Some(traced) = traced.take() {
                    traced.report(result);
                }
            };
            let Ok(slot) = slot else {
                log_refused(
                    &log,
                    request.uri(),
                    "outgoing HTTP request over the invocation's limit",
                    None,
                );
                report(OutgoingResult::OverLimit);
                return Err(HttpError::ConnectionLimitReached);
            };
            let vetted = match policy.vet(request.uri()).await {
                Ok(v) => v,
                Err(reason) => {
                    let reason = reason.to_string();
                    log_refused(
                        &log,
                        request.uri(),
                        "outgoing HTTP request denied",
                        Some(&reason),
                    );
                    report(OutgoingResult::Denied(reason));
                    return Err(HttpError::HttpRequestDenied);
                }
            };
            let (response, io) = match send(vetted, request, options).await {
                Ok(sent) => {
                    report(OutgoingResult::Response(sent.0.status().as_u16()));
                    sent
                }
                Err(e) => {
                    report(OutgoingResult::Failed(e.to_string()));
                    return Err(e);
                }
            };
            let io = until_deadline(Box::into_pin(io), deadline);
            let io: IoFuture = match cpu {
                Some(cpu) => Box::new(crate::scheduler::Charged::new(io, cpu, || {
                    Err(HttpError::InternalError(Some(
                        "the invocation passed its CPU-time limit; its connection was closed"
                            .into(),
                    )))
                })),
                None => Box::new(io),
            };
            let io = Box::into_pin(io);
            let io: IoFuture = match crate::accounting::Account::current() {
                Some(account) => Box::new(account.scope(async move {
                    let _slot = slot;
                    io.await
                })),
                None => Box::new(async move {
                    let _slot = slot;
                    io.await
                }),
            };
            Ok((response, io))
        };
        let send: SendFuture = match self.cpu.clone() {
            // Connecting (TLS included) runs on a task of its own in
            // WASI 0.2, outside the guest's polls: charged too.
            Some(cpu) => Box::new(crate::scheduler::Charged::new(send, cpu, || {
                Err(HttpError::InternalError(Some(
                    "the invocation passed its CPU-time limit".into(),
                )))
            })),
            None => Box::new(send),
        };
        let send = Box::into_pin(send);
        match account {
            Some(account) => Box::new(account.scope(send)),
            None => Box::new(send),
        }
    }
}

/// An outgoing request of a traced invocation, until it completes.
struct Traced {
    context: TraceContext,
    method: String,
    destination: String,
    start: SystemTime,
    observer: Option<crate::trace::OutgoingObserver>,
}

/// Gives `request` a child span of the invocation's: its `traceparent`
/// replaces whatever the guest set (and the guest's `tracestate` goes
/// with it), so a guest can neither join another trace nor pick its parent.
fn traced(trace: &InvocationTrace, request: &mut http::Request<WasiBody>) -> Traced {
    let context = trace.context.child();
    let headers = request.headers_mut();
    headers.remove(crate::trace::TRACESTATE);
    headers.remove(crate::trace::TRACEPARENT);
    if let Ok(value) = http::HeaderValue::from_str(&context.traceparent()) {
        headers.insert(crate::trace::TRACEPARENT, value);
    }
    let uri = request.uri();
    let destination = match (uri.host(), uri.port_u16()) {
        (Some(host), Some(port)) => {
            format!("{}://{host}:{port}", uri.scheme_str().unwrap_or("http"))
        }
        (Some(host), None) => format!("{}://{host}", uri.scheme_str().unwrap_or("http")),
        (None, _) => String::new(),
    };
    Traced {
        context,
        method: request.method().to_string(),
        destination,
        start: SystemTime::now(),
        observer: trace.on_outgoing.clone(),
    }
}

impl Traced {
    fn report(mut self, result: OutgoingResult) {
        self.finish(result);
    }

    fn finish(&mut self, result: OutgoingResult) {
        if let Some(observer) = self.observer.take() {
            observer(OutgoingSpan {
                context: self.context,
                method: std::mem::take(&mut self.method),
                destination: std::mem::take(&mut self.destination),
                start: self.start,
                end: SystemTime::now(),
                result,
            });
        }
    }
}

/// A request dropped before it completed (the guest let go of it, or its
/// invocation ended) is recorded too.
impl Drop for Traced {
    fn drop(&mut self) {
        self.finish(OutgoingResult::Failed(
            "cancelled before its response head arrived".to_string(),
        ));
    }
}

/// The future that drives a connection's I/O, ended (dropping the
/// connection, which closes its socket) once the invocation's deadline has
/// passed.
///
/// wasmtime runs this future on a task of its own, which the request and
/// response bodies can abort: a response body the guest returned as its
/// own keeps it alive while the client reads, and the request body inside
/// the connection keeps it alive too (so an upstream that answers early and
/// stops reading a body the guest is still sending would hold the
/// connection for as long as the upstream likes). The deadline ends both.
async fn until_deadline(
    mut io: std::pin::Pin<IoFuture>,
    deadline: Option<crate::ticker::AlarmAt>,
) -> Result<(), HttpError> {
    let Some(mut deadline) = deadline else {
        return io.await;
    };
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(done) = io.as_mut().poll(cx) {
            return std::task::Poll::Ready(done);
        }
        std::pin::Pin::new(&mut deadline).poll(cx).map(|()| {
            Err(HttpError::InternalError(Some(
                "the invocation's deadline passed; its connection was closed".into(),
            )))
        })
    })
    .await
}

/// Sends `request` to the vetted address (TLS for https, verified against
/// the host name the guest used), and returns the response with the future
/// that drives the rest of the connection.
async fn send(
    vetted: Vetted,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(vetted.addr))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Connect)?;
    let _ = tcp.set_nodelay(true);
    // Only the path goes on the wire: the authority stays in the Host header.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    if vetted.https {
        let tls = tls_connect(&vetted, tcp, connect_timeout).await?;
        exchange(hyper_util::rt::TokioIo::new(tls), request, connect_timeout).await
    } else {
        exchange(hyper_util::rt::TokioIo::new(tcp), request, connect_timeout).await
    }
}

async fn tls_connect(
    vetted: &Vetted,
    tcp: tokio::net::TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, HttpError> {
    use rustls::pki_types::ServerName;
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| HttpError::Tls(std::io::Error::other(e)))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = match vetted.host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(vetted.host.clone())
            .map_err(|_| HttpError::HttpRequestUriInvalid)?,
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Tls)
}

async fn exchange<S>(
    io: S,
    request: http::Request<WasiBody>,
    timeout: Duration,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError>
where
    S: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = tokio::time::timeout(
        timeout,
        hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_RESPONSE_HEAD_BYTES.max(8192))
            .handshake(io),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;
    // Drive the connection while waiting for the response head; afterwards
    // the caller drives it through the returned future.
    let mut conn = Box::pin(conn);
    let response = {
        let send = sender.send_request(request);
        tokio::pin!(send);
        tokio::select! {
            response = &mut send => response.map_err(HttpError::from)?,
            ended = &mut conn => {
                ended.map_err(HttpError::from)?;
                // The connection ended cleanly: the response is all there.
                send.await.map_err(HttpError::from)?
            }
        }
    };
    let response = response.map(|body| body.map_err(HttpError::from).boxed_unsync());
    let io: IoFuture = Box::new(async move { conn.await.map_err(HttpError::from) });
    Ok((response, io))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_requests_log_a_bounded_number_of_lines() {
        let budget = LogBudget::new(3);
        let taken: Vec<_> = (0..10).map(|_| budget.take()).collect();
        assert_eq!(
            taken,
            [
                Some(true),
                Some(true),
                Some(true),
                Some(false),
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
    }
}
