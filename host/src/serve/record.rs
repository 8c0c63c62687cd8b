//! One record per request, completed from two sides: the response path sets
//! the status (or the host's answer), the guest's task sets the outcome and
//! usage. When the last side lets go, the record becomes exactly one log
//! event and one set of metric updates.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;

use http::Response;

use super::metrics::Metrics;
use super::otlp::{Exporter, SpanData, SpanKind, Value};
use super::response::{Body, HostAnswer};
use crate::trace::{InvocationTrace, OutgoingResult, OutgoingSpan, TraceContext};
use crate::{OutcomeKind, Usage};

/// Most outgoing requests one request's trace records: 64 (the rest are
/// counted in the request's span, `wasm_run.outgoing.unrecorded`).
pub(super) const MAX_OUTGOING_SPANS: usize = 64;

/// The request's span, when traces are exported.
#[derive(Debug)]
pub(super) struct RecordTrace {
    /// The request's own span (its outgoing requests are children).
    pub context: TraceContext,
    /// The caller's span, from its `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// When the request started, on the wall clock.
    pub start: SystemTime,
    pub exporter: Arc<Exporter>,
}
/// Shared handle to a request's record.
pub(super) type Record = Arc<RequestRecord>;

/// What is known about one request.
#[derive(Debug)]
pub(super) struct RequestRecord {
    /// The request id, also given to the guest's log lines.
    pub id: Arc<str>,
    method: String,
    path: String,
    started: Instant,
    metrics: Arc<Metrics>,
    trace: Option<RecordTrace>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    route: Option<String>,
    tenant: Option<String>,
    status: Option<StatusCode>,
    host_outcome: Option<&'static str>,
    detail: Option<String>,
    kind: Option<OutcomeKind>,
    usage: Option<Usage>,
    guest_kind: Option<&'static str>,
    admitted: Option<Instant>,
    head: Option<Instant>,
    guest_ended: Option<Instant>,
    penalized: bool,
    outgoing: Vec<OutgoingSpan>,
    outgoing_unrecorded: u64,
}

impl RequestRecord {
    /// Starts the record of a request and counts it in flight.
    pub(super) fn start(
        id: Arc<str>,
        method: &http::Method,
        path: &str,
        metrics: Arc<Metrics>,
        trace: Option<RecordTrace>,
    ) -> Record {
        metrics.in_flight.inc();
        Arc::new(RequestRecord {
            id,
            method: method.to_string(),
            path: path.to_string(),
            started: Instant::now(),
            metrics,
            trace,
            state: Mutex::new(State::default()),
        })
    }

    /// The trace of the request's guest: its outgoing requests are children
    /// of the request's span and are recorded here (at most
    /// [`MAX_OUTGOING_SPANS`]). `None` when traces are not exported.
    pub(super) fn invocation_trace(self: &Arc<Self>) -> Option<InvocationTrace> {
        let context = self.trace.as_ref()?.context;
        let record: Weak<RequestRecord> = Arc::downgrade(self);
        Some(InvocationTrace {
            context,
            on_outgoing: Some(Arc::new(move |span| {
                if let Some(record) = record.upgrade() {
                    record.with(|s| {
                        if s.outgoing.len() < MAX_OUTGOING_SPANS {
                            s.outgoing.push(span);
                        } else {
                            s.outgoing_unrecorded += 1;
                        }
                    });
                }
            })),
        })
    }

    /// The request was admitted (after waiting for budget); `penalized`:
    /// it starts at low priority.
    pub(super) fn set_admitted(&self, penalized: bool) {
        self.with(|s| {
            s.admitted = Some(Instant::now());
            s.penalized = penalized;
        });
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The route that matched.
    pub(super) fn set_route(&self, route: &str, tenant: &str, guest_kind: &'static str) {
        self.with(|s| {
            s.route = Some(route.to_string());
            s.tenant = Some(tenant.to_string());
            s.guest_kind = Some(guest_kind);
        });
    }

    /// The guest sent a response head with this status.
    pub(super) fn set_status(&self, status: StatusCode) {
        self.with(|s| {
            s.status = Some(status);
            s.head = Some(Instant::now());
        });
    }

    /// The host answers instead of the guest: records the answer (its detail
    /// goes to the log only) and returns the response.
    pub(super) fn answer(&self, answer: HostAnswer) -> Response<Body> {
        if matches!(answer, HostAnswer::BodyTimeout(_)) {
            self.metrics.body_timeouts.inc();
        }
        self.with(|s| {
            s.head = Some(Instant::now());
            s.status = Some(answer.status());
            s.host_outcome = Some(answer.outcome());
            s.detail = answer.detail().map(str::to_string);
        });
        answer.into_response()
    }

    /// The guest's task finished.
    pub(super) fn set_outcome(&self, kind: OutcomeKind, usage: Usage) {
        self.with(|s| {
            s.kind = Some(kind);
            s.usage = Some(usage);
            s.guest_ended = Some(Instant::now());
        });
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let s = std::mem::take(&mut *self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.metrics.in_flight.dec();
        let route = s.route.clone().unwrap_or_else(|| "none".to_string());
        let status = s.status.map_or(0, |s| s.as_u16());
        let outcome = s
            .host_outcome
            .or_else(|| s.kind.as_ref().map(OutcomeKind::name))
            .unwrap_or("none");
        // A guest killed after its response head was sent: the body was aborted.
        let aborted = s.host_outcome.is_none()
            && s.kind
                .as_ref()
                .is_some_and(|k| !matches!(k, OutcomeKind::Exited(_)));
        let usage = s.usage.unwrap_or_default();
        let wall = if s.usage.is_some() {
            usage.wall_time
        } else {
            self.started.elapsed()
        };
        let (trap_reason, message) = match &s.kind {
            Some(OutcomeKind::Trapped(t)) => (t.reason.name(), t.message.as_str()),
            _ => ("", ""),
        };
        let detail = s.detail.as_deref().unwrap_or("");
        let trace_id = self
            .trace
            .as_ref()
            .map(|t| t.context.trace_id_hex())
            .unwrap_or_default();
        tracing::info!(
            request_id = %self.id,
            trace_id = %trace_id,
            method = %self.method,
            path = %crate::log_text::LogText::new(&self.path),
            route = %route,
            status,
            outcome,
            aborted,
            fuel = usage.fuel_consumed.unwrap_or(0),
            peak_memory = usage.peak_memory_bytes,
            host_memory_peak = usage.host_memory_peak_bytes,
            wall_us = u64::try_from(wall.as_micros()).unwrap_or(u64::MAX),
            cpu_us = u64::try_from(usage.cpu_time.as_micros()).unwrap_or(u64::MAX),
            trap_reason,
            trap = %crate::log_text::LogText::new(message),
            detail = %crate::log_text::LogText::new(detail),
            "request"
        );
        if let Some(trace) = self.trace.as_ref().filter(|t| t.context.sampled())
            && !trace.exporter.has_room()
        {
            trace.exporter.dropped_unbuilt(1 + s.outgoing.len() as u64);
        } else if let Some(trace) = self.trace.as_ref().filter(|t| t.context.sampled()) {
            let finished = Finished {
                route: &route,
                status,
                outcome,
                trap_reason,
                trap: message,
                detail,
                usage: &usage,
                ran: s.usage.is_some(),
                aborted,
            };
            trace.exporter.submit(self.spans(trace, &s, &finished));
        }
        if let Some(tenant) = &s.tenant {
            self.metrics.tenant_finished(tenant, outcome);
        }
        self.metrics.finished(
            route,
            status,
            outcome,
            trap_reason,
            s.usage.map(|u| (u, wall)),
        );
    }
}

/// What the record's end knows, for its span.
struct Finished<'a> {
    route: &'a str,
    status: u16,
    outcome: &'a str,
    trap_reason: &'a str,
    trap: &'a str,
    detail: &'a str,
    usage: &'a Usage,
    ran: bool,
    aborted: bool,
}

/// Longest string attribute a span carries (paths, messages): 1 KiB.
const MAX_ATTRIBUTE_BYTES: usize = 1024;

fn text(s: &str) -> Value {
    Value::Str(truncate(s).to_string())
}

fn int(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

impl RequestRecord {
    /// The request's span and one per outgoing request it recorded.
    fn spans(&self, trace: &RecordTrace, s: &State, f: &Finished<'_>) -> Vec<SpanData> {
        let at = |instant: Instant| trace.start + instant.saturating_duration_since(self.started);
        let end = at(Instant::now());
        let mut attributes = vec![
            ("http.request.method", text(&self.method)),
            ("url.path", text(&self.path)),
            ("http.route", text(f.route)),
            ("http.response.status_code", int(u64::from(f.status))),
            ("wasm_run.request_id", text(&self.id)),
            ("wasm_run.outcome", text(f.outcome)),
        ];
        if let Some(tenant) = &s.tenant {
            attributes.push(("wasm_run.tenant", text(tenant)));
        }
        if let Some(kind) = s.guest_kind {
            attributes.push(("wasm_run.guest_kind", text(kind)));
        }
        if let Some(admitted) = s.admitted {
            let waited = admitted.saturating_duration_since(self.started);
            attributes.push(("wasm_run.queue_wait_us", int(micros(waited))));
            attributes.push(("wasm_run.penalized", Value::Bool(s.penalized)));
        }
        if f.ran {
            let u = f.usage;
            attributes.extend([
                ("wasm_run.fuel", int(u.fuel_consumed.unwrap_or(0))),
                ("wasm_run.cpu_us", int(micros(u.cpu_time))),
                ("wasm_run.wall_us", int(micros(u.wall_time))),
                ("wasm_run.instantiate_us", int(micros(u.instantiate_time))),
                ("wasm_run.peak_memory_bytes", int(u.peak_memory_bytes)),
                (
                    "wasm_run.host_memory_peak_bytes",
                    int(u.host_memory_peak_bytes),
                ),
            ]);
        }
        if !f.trap_reason.is_empty() {
            attributes.push(("wasm_run.trap_reason", text(f.trap_reason)));
            attributes.push(("wasm_run.trap", text(f.trap)));
        }
        if f.aborted {
            attributes.push(("wasm_run.aborted", Value::Bool(true)));
        }
        attributes.push((
            "wasm_run.outgoing",
            int(s.outgoing.len() as u64 + s.outgoing_unrecorded),
        ));
        if s.outgoing_unrecorded > 0 {
            attributes.push(("wasm_run.outgoing.unrecorded", int(s.outgoing_unrecorded)));
        }
        let mut events = Vec::new();
        if let Some(admitted) = s.admitted {
            events.push((at(admitted), "admitted"));
        }
        // The guest's run: instantiation started `wall_time` before it
        // ended, and took `instantiate_time`.
        if let (Some(ended), true) = (s.guest_ended, f.ran)
            && let Some(began) = ended.checked_sub(f.usage.wall_time)
        {
            events.push((at(began), "instantiating"));
            if !f.usage.instantiate_time.is_zero() {
                events.push((at(began + f.usage.instantiate_time), "instantiated"));
            }
        }
        if let Some(head) = s.head {
            events.push((at(head), "response head"));
        }
        if let Some(ended) = s.guest_ended {
            events.push((at(ended), "guest ended"));
        }
        events.sort_by_key(|(at, _)| *at);
        // An error, as OpenTelemetry's HTTP conventions have it for a
        // server: a 5xx, a body cut off, or a guest killed.
        let error = (f.status >= 500 || f.aborted || !f.trap_reason.is_empty()).then(|| {
            match [f.trap, f.detail].into_iter().find(|m| !m.is_empty()) {
                Some(why) => format!("{}: {}", f.outcome, truncate(why)),
                None => f.outcome.to_string(),
            }
        });
        let mut spans = vec![SpanData {
            trace_id: trace.context.trace_id(),
            span_id: trace.context.span_id(),
            parent_span_id: trace.parent,
            name: format!("{} {}", self.method, f.route),
            kind: SpanKind::Server,
            start: trace.start,
            end,
            attributes,
            events,
            error,
        }];
        spans.extend(s.outgoing.iter().map(|o| outgoing_span(trace, o)));
        spans
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(MAX_ATTRIBUTE_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An outgoing request's span: a child of the request's.
fn outgoing_span(trace: &RecordTrace, o: &OutgoingSpan) -> SpanData {
    let mut attributes = vec![
        ("http.request.method", text(&o.method)),
        ("server.address", text(&o.destination)),
    ];
    let error = match &o.result {
        OutgoingResult::Response(status) => {
            attributes.push(("http.response.status_code", int(u64::from(*status))));
            (*status >= 500).then(|| format!("the upstream answered {status}"))
        }
        OutgoingResult::Denied(reason) => {
            attributes.push(("wasm_run.outbound.denied", Value::Bool(true)));
            Some(format!("denied: {}", truncate(reason)))
        }
        OutgoingResult::OverLimit => {
            attributes.push(("wasm_run.outbound.over_limit", Value::Bool(true)));
            Some("over the invocation's limit of requests in flight".to_string())
        }
        OutgoingResult::Failed(why) => Some(format!("failed: {}", truncate(why))),
    };
    SpanData {
        trace_id: o.context.trace_id(),
        span_id: o.context.span_id(),
        parent_span_id: Some(trace.context.span_id()),
        name: o.method.clone(),
        kind: SpanKind::Client,
        start: o.start,
        end: o.end,
        attributes,
        events: Vec::new(),
        error,
    }
}
