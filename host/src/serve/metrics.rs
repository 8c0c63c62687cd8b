//! Prometheus metrics of the server, served by the admin listener.
//!
//! Requests by route, status and outcome; histograms of wall time, fuel
//! consumed and peak memory per route; requests in flight; instantiation
//! failures are counted under the `host_error` outcome.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's path prefix, or `none` when no route matched.
    pub route: String,
    /// The HTTP status sent, from a bounded set ([`status_label`]): the
    /// statuses of [`KNOWN_STATUSES`] as themselves, any other as its
    /// class (`2xx`, ..., `5xx`), so a guest choosing statuses cannot
    /// create a series per status. `0` when no response was sent.
    pub status: String,
    /// The outcome (`exited`, `fuel_exhausted`, ..., `body_too_large`).
    pub outcome: String,
    /// For a trap, its reason (`stack_overflow`, `unreachable`, ...);
    /// empty otherwise.
    pub trap: String,
}

/// Labels of the per-route histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's path prefix.
    pub route: String,
}

type Hist = Family<RouteLabels, Histogram, Buckets>;

/// The buckets of a per-route histogram: `count` of them, from `start`,
/// each `factor` times the last.
#[derive(Clone, Debug)]
pub(crate) struct Buckets {
    start: f64,
    factor: f64,
    count: u16,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, self.factor, self.count))
    }
}

/// A per-route histogram of `count` buckets from `start`, each `factor`
/// times the last.
fn per_route(start: f64, factor: f64, count: u16) -> Hist {
    Family::new_with_constructor(Buckets {
        start,
        factor,
        count,
    })
}

/// Declares every metric once: its field (doc, visibility, type), how it
/// is made, and the name and help text it is registered under.
macro_rules! metrics {
    ($($(#[$doc:meta])* $vis:vis $field:ident: $ty:ty = $make:expr, $name:literal, $help:literal;)*) => {
        /// Every metric the server records.
        #[derive(Debug)]
        pub struct Metrics {
            registry: Registry,
            $($(#[$doc])* $vis $field: $ty,)*
        }

        impl Metrics {
            /// Creates and registers every metric.
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("wasm_run");
                $(
                    let $field: $ty = $make;
                    registry.register($name, $help, $field.clone());
                )*
                Metrics { registry, $($field,)* }
            }
        }
    };
}

metrics! {
    /// Requests finished, by route, status and outcome.
    pub(crate) requests: Family<RequestLabels, Counter> = Default::default(), "requests", "HTTP requests handled, by route, status and outcome";
    /// Requests being handled right now.
    pub(crate) in_flight: Gauge = Default::default(), "requests_in_flight", "Requests being handled";
    /// Wall time per request, in seconds.
    pub(crate) wall_seconds: Hist = per_route(0.0001, 2.0, 20), "request_wall_seconds", "Wall time of a request, from instantiation to the guest's end";
    /// Fuel consumed per request.
    pub(crate) fuel: Hist = per_route(1000.0, 4.0, 16), "request_fuel", "Fuel consumed by a request";
    /// CPU time per request (wasm and host calls, not waiting), in seconds.
    pub(crate) cpu_seconds: Hist = per_route(0.00001, 2.0, 20), "request_cpu_seconds", "CPU time of a request: wasm and host calls, not waiting";
    /// Peak memory (linear memory and tables) per request, in bytes.
    pub(crate) peak_memory: Hist = per_route(65536.0, 2.0, 16), "request_peak_memory_bytes", "Peak total memory (linear memory and tables) of a request";
    /// Peak host memory charged to a request (its account), in bytes.
    pub(crate) host_memory: Hist = per_route(16384.0, 2.0, 18), "request_host_memory_peak_bytes", "Peak host memory charged to a request (instance state, resources, buffers)";
    /// Memory budget: the sum, over admitted requests, of each one's memory
    /// cap plus its guest's host allowance, in bytes.
    pub(crate) budget_in_use: Gauge = Default::default(), "memory_budget_in_use_bytes", "Memory budget held by admitted requests: each one's memory cap plus its guest's host allowance";
    /// Requests waiting for memory budget.
    pub(crate) queue_length: Gauge = Default::default(), "admission_queue_length", "Requests waiting for memory budget";
    /// Time requests waited for memory budget, in seconds.
    pub(crate) queue_wait_seconds: Histogram = Histogram::new(exponential_buckets(0.0001, 2.0, 18)), "admission_queue_wait_seconds", "Time requests waited for memory budget";
    /// Requests turned away (503), by reason.
    pub(crate) rejected: Family<ReasonLabels, Counter> = Default::default(), "admission_rejected", "Requests turned away with 503 because the memory budget was full";
    /// Configuration reloads (SIGHUP), by result (`ok` or `failed`).
    reloads: Family<ResultLabels, Counter> = Default::default(), "reloads", "Configuration reloads (SIGHUP), by result; on failure the old routes keep serving";
    /// Client connections open right now.
    pub(crate) open_connections: Gauge = Default::default(), "open_connections", "Client connections open (at most --max-connections)";
    /// Request bodies that the client did not send in time (408), before
    /// or after admission.
    pub(crate) body_timeouts: Counter = Default::default(), "request_body_timeouts", "Request bodies the client did not send within --body-timeout";
    /// Requests started at low priority because the previous request on
    /// their connection was killed.
    pub(crate) penalized: Counter = Default::default(), "requests_penalized", "Requests started at low priority because the previous request on their connection was killed";
    /// Trace spans the collector accepted.
    trace_exported: Counter = Default::default(), "trace_spans_exported", "Trace spans sent to the OTLP endpoint and accepted";
    /// Trace spans dropped, by reason (`queue_full`, `export_failed`).
    trace_dropped: Family<ReasonLabels, Counter> = Default::default(), "trace_spans_dropped", "Trace spans dropped: the export queue was full, or the export failed";
    /// Per tenant: budget its admitted requests hold, in bytes.
    tenant_budget_in_use: Family<TenantLabels, Gauge> = Default::default(), "tenant_budget_in_use_bytes", "Memory budget held by a tenant's admitted requests";
    /// Per tenant: its requests waiting for budget.
    tenant_queue_length: Family<TenantLabels, Gauge> = Default::default(), "tenant_queue_length", "A tenant's requests waiting for memory budget";
    /// Per tenant: requests admitted.
    tenant_admitted: Family<TenantLabels, Counter> = Default::default(), "tenant_admitted", "A tenant's requests admitted";
    /// Per tenant: requests turned away, by reason.
    tenant_rejected: Family<TenantReasonLabels, Counter> = Default::default(), "tenant_rejected", "A tenant's requests turned away (503), by reason";
    /// Per tenant: requests finished, by outcome.
    tenant_requests: Family<TenantOutcomeLabels, Counter> = Default::default(), "tenant_requests", "A tenant's requests finished, by outcome";
}

/// Labels of the per-tenant outcome counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantOutcomeLabels {
    /// The tenant's name.
    pub tenant: String,
    /// The outcome, as in `requests`.
    pub outcome: String,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `failed`.
    pub result: String,
}

/// Labels of the per-tenant metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// The tenant's name (a route's path for a route of its own).
    pub tenant: String,
}

/// Labels of the per-tenant rejection counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantReasonLabels {
    /// The tenant's name.
    pub tenant: String,
    /// `queue_full` or `queue_timeout`.
    pub reason: String,
}

/// Labels of the rejection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `queue_full` or `queue_timeout`.
    pub reason: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Statuses counted as themselves: those the host answers with, and the
/// ones services commonly send.
pub const KNOWN_STATUSES: [u16; 20] = [
    0, 200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408, 409, 413, 429, 500, 502, 503,
    504,
];

/// The `status` label of a request: itself if it is one of
/// [`KNOWN_STATUSES`], else its class (`1xx` ... `5xx`). A guest picks its
/// statuses (100-999), so counting each as its own series would let one
/// route grow the metrics by up to 900 series.
pub fn status_label(status: u16) -> String {
    if KNOWN_STATUSES.contains(&status) {
        status.to_string()
    } else {
        format!("{}xx", (status / 100).min(9))
    }
}

impl Metrics {
    /// Counts `n` trace spans the collector accepted.
    pub(crate) fn trace_spans_exported(&self, n: u64) {
        self.trace_exported.inc_by(n);
    }

    /// Counts `n` trace spans dropped for `reason`.
    pub(crate) fn trace_spans_dropped(&self, reason: &str, n: u64) {
        self.trace_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    /// Counts a finished request by route, status, outcome and trap reason, and, for one
    /// whose guest ran, records its usage and wall time.
    pub(crate) fn finished(
        &self,
        route: String,
        status: u16,
        outcome: &str,
        trap: &str,
        ran: Option<(crate::Usage, std::time::Duration)>,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                status: status_label(status),
                outcome: outcome.to_string(),
                trap: trap.to_string(),
            })
            .inc();
        let Some((usage, wall)) = ran else { return };
        let labels = RouteLabels { route };
        self.wall_seconds
            .get_or_create(&labels)
            .observe(wall.as_secs_f64());
        if let Some(fuel) = usage.fuel_consumed {
            self.fuel.get_or_create(&labels).observe(fuel as f64);
        }
        self.peak_memory
            .get_or_create(&labels)
            .observe(usage.peak_memory_bytes as f64);
        self.host_memory
            .get_or_create(&labels)
            .observe(usage.host_memory_peak_bytes as f64);
        self.cpu_seconds
            .get_or_create(&labels)
            .observe(usage.cpu_time.as_secs_f64());
    }

    /// Counts a finished request of `tenant` by outcome.
    pub(crate) fn tenant_finished(&self, tenant: &str, outcome: &str) {
        self.tenant_requests
            .get_or_create(&TenantOutcomeLabels {
                tenant: tenant.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Brings the per-tenant gauges and counts up to `stats` (at a scrape).
    pub(crate) fn tenants(&self, stats: &[crate::admission::TenantStats]) {
        // The controller's built-in default tenant is not a route's unless
        // a `[[tenant]]` is named so: shown once it has been used.
        let unused_default = |i: usize, t: &crate::admission::TenantStats| {
            i == 0 && t.admitted == 0 && t.queued == 0 && t.rejected_queue_full == 0
        };
        for (i, t) in stats.iter().enumerate() {
            if unused_default(i, t) {
                continue;
            }
            let labels = TenantLabels {
                tenant: t.name.to_string(),
            };
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.tenant_budget_in_use
                .get_or_create(&labels)
                .set(gauge(t.in_use));
            self.tenant_queue_length
                .get_or_create(&labels)
                .set(gauge(t.queued as u64));
            let counter = self.tenant_admitted.get_or_create(&labels);
            counter.inc_by(t.admitted.saturating_sub(counter.get()));
            for (reason, count) in [
                ("queue_full", t.rejected_queue_full),
                ("queue_timeout", t.rejected_timeout),
            ] {
                let counter = self.tenant_rejected.get_or_create(&TenantReasonLabels {
                    tenant: t.name.to_string(),
                    reason: reason.to_string(),
                });
                counter.inc_by(count.saturating_sub(counter.get()));
            }
        }
    }

    /// Counts a reload that succeeded (`ok`) or failed.
    pub(crate) fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_a_bounded_set() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(504), "504");
        assert_eq!(status_label(0), "0");
        assert_eq!(status_label(299), "2xx");
        assert_eq!(status_label(999), "9xx");
        let labels: std::collections::HashSet<String> = (100..=999).map(status_label).collect();
        assert!(labels.len() <= KNOWN_STATUSES.len() + 9, "{}", labels.len());
    }
}
