//! One request's life, from a parsed request to its answer: an id and a
//! record, the route (longest prefix), the declared body length, the first
//! part of the body read before any budget is taken, admission by memory
//! budget and pool slots, the connection's standing, then the guest by kind
//! (`http_guest` or `cgi_guest`, which share `guest_task`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use http::{HeaderValue, Request, Response, header};
use http_body::Body as _;
use hyper::body::Incoming;

use super::guest_task::{ConnInfo, Exchange};
use super::metrics::{self, Metrics};
use super::otlp::Exporter;
use super::record::{Record, RecordTrace, RequestRecord};
use super::request_body::{BodyFlag, LimitedBody};
use super::response::{Body, HostAnswer};
use super::routes::{RouteRuntime, RouteTable};
use super::{cgi_guest, http_guest};
use crate::Priority;
use crate::admission::{Admission, Permit, Rejected};
use crate::trace::TraceContext;

/// Header carrying the request id, also used in the guest's log lines.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What every request goes through: the route table of the running
/// configuration (replaced whole on reload), admission, and the metrics.
pub(crate) struct Requests {
    pub(crate) admission: Arc<Admission>,
    table: RwLock<Arc<RouteTable>>,
    pub(crate) metrics: Arc<Metrics>,
    next_id: AtomicU64,
    /// Where each request's trace goes, if anywhere.
    exporter: Option<Arc<Exporter>>,
}

impl Requests {
    pub(crate) fn new(
        admission: Arc<Admission>,
        table: RouteTable,
        metrics: Arc<Metrics>,
        otlp_endpoint: Option<http::Uri>,
    ) -> Self {
        let exporter = otlp_endpoint.map(|endpoint| {
            let service = std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "wasm-run".to_string());
            Arc::new(Exporter::new(endpoint, service, metrics.clone()))
        });
        Requests {
            admission,
            table: RwLock::new(Arc::new(table)),
            metrics,
            next_id: AtomicU64::new(1),
            exporter,
        }
    }

    /// The request's span, when traces are exported: a child of the
    /// caller's (its `traceparent`), or the root of a new trace.
    fn trace_of(&self, req: &Request<Incoming>) -> Option<RecordTrace> {
        let exporter = self.exporter.as_ref()?;
        let caller = req
            .headers()
            .get(crate::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::from_traceparent);
        Some(RecordTrace {
            context: caller.map_or_else(TraceContext::new_root, |c| c.child()),
            parent: caller.map(|c| c.span_id()),
            start: std::time::SystemTime::now(),
            exporter: exporter.clone(),
        })
    }

    /// Serves later requests from `table`; requests in flight finish on the
    /// table they started with.
    pub(crate) fn replace_table(&self, table: RouteTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }

    /// Answers one request that arrived on a connection described by `conn`.
    pub(crate) async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id: Arc<str> = format!("{n:08x}").into();
        let record = RequestRecord::start(
            id.clone(),
            req.method(),
            req.uri().path(),
            self.metrics.clone(),
            self.trace_of(&req),
        );
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut response = match table.find(req.uri().path()) {
            None => record.answer(HostAnswer::NotFound(format!(
                "no route for {}",
                req.uri().path()
            ))),
            Some(route) => {
                record.set_route(
                    &route.spec.prefix,
                    &route.spec.tenant,
                    super::routes::served_as(route.guest.kind()),
                );
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
        record: Record,
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
            return record.answer(route.body_answer(fault));
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
        record.set_admitted(priority == Priority::Background);
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
}
