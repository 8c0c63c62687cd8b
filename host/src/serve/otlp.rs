//! Request traces, exported over OTLP/HTTP with protobuf bodies
//! (`POST <endpoint>`, `application/x-protobuf`, an
//! `ExportTraceServiceRequest` of opentelemetry-proto's `trace/v1`).
//!
//! A request's spans are queued when its record ends; one task sends them
//! in batches. Nothing here can slow a request or hold memory without
//! bound: the queue holds at most [`QUEUE_SPANS`] spans (a span that finds
//! it full is dropped and counted, `trace_spans_dropped{reason="queue_full"}`),
//! a batch is at most [`BATCH_SPANS`] spans, and an export that fails or
//! takes longer than [`EXPORT_TIMEOUT`] drops its batch
//! (`reason="export_failed"`) with at most one log line a minute.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;

use super::metrics::Metrics;

/// Most spans waiting to be exported: 4,096 (a few MiB at most).
pub const QUEUE_SPANS: usize = 4096;

/// Most spans in one export: 512.
pub const BATCH_SPANS: usize = 512;

/// Longest a batch waits for more spans before it is sent: 1 s.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);

/// Longest one export may take (connect, send, answer): 5 s.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoint `url` names, if it is one the exporter can send to: an
/// `http://` URL with a host (the collector's OTLP/HTTP receiver,
/// conventionally `http://HOST:4318/v1/traces`). `https` is not supported
/// yet: run a collector beside the server and let it forward.
pub fn endpoint(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{url}`: https endpoints are not supported yet; give a collector's http:// \
                 endpoint (a collector beside the server can forward over TLS)"
            ));
        }
        _ => return Err(format!("`{url}` is not an http:// URL")),
    }
    if uri.host().is_none() {
        return Err(format!("`{url}` names no host"));
    }
    Ok(uri)
}

/// A span's kind, as OTLP numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    /// A request the server answered.
    Server = 2,
    /// A request a guest sent.
    Client = 3,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// One finished span.
#[derive(Debug, Clone)]
pub(crate) struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// Named moments in the span (`admitted`, `guest ended`).
    pub events: Vec<(SystemTime, &'static str)>,
    /// `Some(message)`: the span's status is an error.
    pub error: Option<String>,
}

/// Sends spans to one endpoint; see the module documentation.
#[derive(Debug)]
pub(crate) struct Exporter {
    endpoint: http::Uri,
    service: String,
    queue: tokio::sync::mpsc::Sender<SpanData>,
    receiver: Mutex<Option<tokio::sync::mpsc::Receiver<SpanData>>>,
    started: OnceLock<()>,
    metrics: Arc<Metrics>,
}

impl Exporter {
    /// An exporter to `endpoint`, naming the service `service`. Its task
    /// starts with the first span, on the runtime that queues it.
    pub(crate) fn new(endpoint: http::Uri, service: String, metrics: Arc<Metrics>) -> Exporter {
        let (queue, receiver) = tokio::sync::mpsc::channel(QUEUE_SPANS);
        Exporter {
            endpoint,
            service,
            queue,
            receiver: Mutex::new(Some(receiver)),
            started: OnceLock::new(),
            metrics,
        }
    }

    /// Whether the queue has room: when it has none, a request's spans are
    /// counted as dropped without being built.
    pub(crate) fn has_room(&self) -> bool {
        self.queue.capacity() > 0
    }

    /// Counts `n` spans dropped because the queue was full.
    pub(crate) fn dropped_unbuilt(&self, n: u64) {
        self.metrics.trace_spans_dropped("queue_full", n);
    }

    /// Queues `spans` for export, dropping (and counting) those that find
    /// the queue full. Never waits.
    pub(crate) fn submit(&self, spans: Vec<SpanData>) {
        self.started.get_or_init(|| {
            let receiver = self
                .receiver
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let (Some(receiver), Ok(runtime)) = (receiver, tokio::runtime::Handle::try_current())
            {
                runtime.spawn(export_loop(
                    receiver,
                    self.endpoint.clone(),
                    self.service.clone(),
                    self.metrics.clone(),
                ));
            }
        });
        for span in spans {
            if self.queue.try_send(span).is_err() {
                self.metrics.trace_spans_dropped("queue_full", 1);
            }
        }
    }
}

/// Collects batches from `queue` and sends each until the queue closes.
async fn export_loop(
    mut queue: tokio::sync::mpsc::Receiver<SpanData>,
    endpoint: http::Uri,
    service: String,
    metrics: Arc<Metrics>,
) {
    let mut last_warning: Option<Instant> = None;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH_SPANS {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&service, &batch);
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, post(&endpoint, body)).await;
        let failure = match sent {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("no answer within {EXPORT_TIMEOUT:?}")),
        };
        match failure {
            None => metrics.trace_spans_exported(batch.len() as u64),
            Some(error) => {
                metrics.trace_spans_dropped("export_failed", batch.len() as u64);
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        endpoint = %endpoint,
                        spans = batch.len(),
                        error = %crate::log_text::LogText::new(&error),
                        "trace export failed; its spans are dropped (at most one such line a minute)"
                    );
                }
            }
        }
    }
}

/// One `POST` of `body` to `endpoint`, on a connection of its own.
async fn post(endpoint: &http::Uri, body: Vec<u8>) -> Result<(), String> {
    let host = endpoint.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = endpoint.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let connection = tokio::spawn(connection);
    let authority = endpoint
        .authority()
        .map_or_else(|| host.to_string(), |a| a.to_string());
    let request = http::Request::post(endpoint.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    drop(response);
    connection.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {status}"))
    }
}

/// Protobuf's wire format, as much of it as OTLP traces need.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn tag(&mut self, field: u32, wire_type: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire_type));
    }

    fn uint(&mut self, field: u32, v: u64) {
        self.tag(field, 0);
        self.varint(v);
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        self.tag(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.tag(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    fn message(&mut self, field: u32, build: impl FnOnce(&mut Pb)) {
        let mut inner = Pb::default();
        build(&mut inner);
        self.bytes(field, &inner.0);
    }

    /// A `KeyValue` (`key` = 1, `value` = 2, an `AnyValue`).
    fn attribute(&mut self, field: u32, key: &str, value: &Value) {
        self.message(field, |kv| {
            kv.string(1, key);
            kv.message(2, |any| match value {
                Value::Str(s) => any.string(1, s),
                Value::Bool(b) => any.uint(2, u64::from(*b)),
                Value::Int(i) => any.uint(3, *i as u64),
            });
        });
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An `ExportTraceServiceRequest` of `spans`, from service `service`.
fn encode(service: &str, spans: &[SpanData]) -> Vec<u8> {
    let mut request = Pb::default();
    // ExportTraceServiceRequest.resource_spans = 1
    request.message(1, |resource_spans| {
        // ResourceSpans.resource = 1: Resource.attributes = 1
        resource_spans.message(1, |resource| {
            resource.attribute(1, "service.name", &Value::Str(service.to_string()));
            resource.attribute(
                1,
                "service.version",
                &Value::Str(env!("CARGO_PKG_VERSION").to_string()),
            );
        });
        // ResourceSpans.scope_spans = 2
        resource_spans.message(2, |scope_spans| {
            // ScopeSpans.scope = 1: name = 1, version = 2
            scope_spans.message(1, |scope| {
                scope.string(1, "wasm-run");
                scope.string(2, env!("CARGO_PKG_VERSION"));
            });
            for span in spans {
                // ScopeSpans.spans = 2
                scope_spans.message(2, |s| {
                    s.bytes(1, &span.trace_id);
                    s.bytes(2, &span.span_id);
                    if let Some(parent) = &span.parent_span_id {
                        s.bytes(4, parent);
                    }
                    s.string(5, &span.name);
                    s.uint(6, span.kind as u64);
                    s.fixed64(7, unix_nanos(span.start));
                    s.fixed64(8, unix_nanos(span.end));
                    for (key, value) in &span.attributes {
                        s.attribute(9, key, value);
                    }
                    for (at, name) in &span.events {
                        // Span.events = 11: time_unix_nano = 1, name = 2
                        s.message(11, |event| {
                            event.fixed64(1, unix_nanos(*at));
                            event.string(2, name);
                        });
                    }
                    if let Some(message) = &span.error {
                        // Span.status = 15: message = 2, code = 3 (2: error)
                        s.message(15, |status| {
                            status.string(2, message);
                            status.uint(3, 2);
                        });
                    }
                });
            }
        });
    });
    request.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_urls_with_a_host() {
        assert!(endpoint("http://127.0.0.1:4318/v1/traces").is_ok());
        assert!(
            endpoint("https://collector/v1/traces")
                .unwrap_err()
                .contains("https")
        );
        assert!(endpoint("collector:4318").is_err());
        assert!(endpoint("not a url").is_err());
    }

    #[test]
    fn varints_and_nested_messages_follow_the_wire_format() {
        let mut pb = Pb::default();
        pb.uint(1, 300);
        assert_eq!(pb.0, [0x08, 0xac, 0x02]);
        let mut pb = Pb::default();
        pb.message(2, |m| m.string(1, "hi"));
        assert_eq!(pb.0, [0x12, 4, 0x0a, 2, b'h', b'i']);
    }
}
