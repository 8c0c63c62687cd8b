//! The admin endpoints: `/healthz` (the process answers), `/readyz` (not
//! draining, and the admission queue not saturated) and `/metrics` (a
//! Prometheus snapshot, with the admission state read at the time of the
//! request).

use http::{HeaderValue, Response, StatusCode, header};

use super::metrics::Metrics;
use super::response::{Body, full};
use crate::admission::Admission;

/// Most connections the admin listener serves at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The answer to an admin request for `path`.
pub(crate) fn answer(
    path: &str,
    admission: &Admission,
    metrics: &Metrics,
    draining: bool,
) -> Response<Body> {
    let (status, content_type, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_string(),
        ),
        "/readyz" if admission.saturated() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "saturated: the admission queue is full\n".to_string(),
        ),
        "/readyz" => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/metrics" => {
            let in_use = i64::try_from(admission.in_use()).unwrap_or(i64::MAX);
            metrics.budget_in_use.set(in_use);
            metrics.queue_length.set(admission.queued() as i64);
            metrics.tenants(&admission.tenant_stats());
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.encode(),
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
