//! One record per request, completed from two sides: the response path sets
//! the status (or the host's answer), the guest's task sets the outcome and
//! usage. When the last side lets go, the record becomes exactly one log
//! event and one set of metric updates.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::StatusCode;

use http::Response;

use super::metrics::Metrics;
use super::response::{Body, HostAnswer};
use crate::{OutcomeKind, Usage};

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
}

impl RequestRecord {
    /// Starts the record of a request and counts it in flight.
    pub(super) fn start(
        id: Arc<str>,
        method: &http::Method,
        path: &str,
        metrics: Arc<Metrics>,
    ) -> Record {
        metrics.in_flight.inc();
        Arc::new(RequestRecord {
            id,
            method: method.to_string(),
            path: path.to_string(),
            started: Instant::now(),
            metrics,
            state: Mutex::new(State::default()),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The route that matched.
    pub(super) fn set_route(&self, route: &str, tenant: &str) {
        self.with(|s| {
            s.route = Some(route.to_string());
            s.tenant = Some(tenant.to_string());
        });
    }

    /// The guest sent a response head with this status.
    pub(super) fn set_status(&self, status: StatusCode) {
        self.with(|s| s.status = Some(status));
    }

    /// The host answers instead of the guest: records the answer (its detail
    /// goes to the log only) and returns the response.
    pub(super) fn answer(&self, answer: HostAnswer) -> Response<Body> {
        if matches!(answer, HostAnswer::BodyTimeout(_)) {
            self.metrics.body_timeouts.inc();
        }
        self.with(|s| {
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
        });
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let s = std::mem::take(&mut *self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.metrics.in_flight.dec();
        let route = s.route.unwrap_or_else(|| "none".to_string());
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
        tracing::info!(
            request_id = %self.id,
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
