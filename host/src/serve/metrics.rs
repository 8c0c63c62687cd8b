//! Prometheus metrics of the server, served by the admin listener.
//!
//! Requests by route, status and outcome; histograms of wall time, fuel
//! consumed and peak memory per route; requests in flight; instantiation
//! failures are counted under the `host_error` outcome.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's path prefix, or `none` when no route matched.
    pub route: String,
    /// The HTTP status sent.
    pub status: u16,
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

type Hist = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Every metric the server records.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests finished, by route, status and outcome.
    pub(crate) requests: Family<RequestLabels, Counter>,
    /// Requests being handled right now.
    pub(crate) in_flight: Gauge,
    /// Wall time per request, in seconds.
    pub(crate) wall_seconds: Hist,
    /// Fuel consumed per request.
    pub(crate) fuel: Hist,
    /// CPU time per request (wasm and host calls, not waiting), in seconds.
    pub(crate) cpu_seconds: Hist,
    /// Peak memory (linear memory and tables) per request, in bytes.
    pub(crate) peak_memory: Hist,
    /// Peak host memory charged to a request (its account), in bytes.
    pub(crate) host_memory: Hist,
    /// Memory budget: the sum, over admitted requests, of each one's memory
    /// cap plus its guest's host allowance, in bytes.
    pub(crate) budget_in_use: Gauge,
    /// Requests waiting for memory budget.
    pub(crate) queue_length: Gauge,
    /// Time requests waited for memory budget, in seconds.
    pub(crate) queue_wait_seconds: Histogram,
    /// Requests turned away (503), by reason.
    pub(crate) rejected: Family<ReasonLabels, Counter>,
    /// Configuration reloads (SIGHUP), by result (`ok` or `failed`).
    reloads: Family<ResultLabels, Counter>,
    /// Client connections open right now.
    pub(crate) open_connections: Gauge,
    /// Request bodies that the client did not send in time (408), before
    /// or after admission.
    pub(crate) body_timeouts: Counter,
    /// Per tenant: budget its admitted requests hold, in bytes.
    tenant_budget_in_use: Family<TenantLabels, Gauge>,
    /// Per tenant: its requests waiting for budget.
    tenant_queue_length: Family<TenantLabels, Gauge>,
    /// Per tenant: requests admitted.
    tenant_admitted: Family<TenantLabels, Counter>,
    /// Per tenant: requests turned away, by reason.
    tenant_rejected: Family<TenantReasonLabels, Counter>,
    /// Per tenant: requests finished, by outcome.
    tenant_requests: Family<TenantOutcomeLabels, Counter>,
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

impl Metrics {
    /// Creates and registers every metric. (One registration per metric,
    /// each beside its name and help text: long, but one list to read.)
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wasm_run");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests handled, by route, status and outcome",
            requests.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests being handled",
            in_flight.clone(),
        );
        let wall_seconds: Hist =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 20)));
        registry.register(
            "request_wall_seconds",
            "Wall time of a request, from instantiation to the guest's end",
            wall_seconds.clone(),
        );
        let fuel: Hist =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(1000.0, 4.0, 16)));
        registry.register("request_fuel", "Fuel consumed by a request", fuel.clone());
        let cpu_seconds: Hist =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.00001, 2.0, 20)));
        registry.register(
            "request_cpu_seconds",
            "CPU time of a request: wasm and host calls, not waiting",
            cpu_seconds.clone(),
        );
        let peak_memory: Hist =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(65536.0, 2.0, 16)));
        registry.register(
            "request_peak_memory_bytes",
            "Peak total memory (linear memory and tables) of a request",
            peak_memory.clone(),
        );
        let host_memory: Hist =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(16384.0, 2.0, 18)));
        registry.register(
            "request_host_memory_peak_bytes",
            "Peak host memory charged to a request (instance state, resources, buffers)",
            host_memory.clone(),
        );
        let budget_in_use = Gauge::default();
        registry.register(
            "memory_budget_in_use_bytes",
            "Memory budget held by admitted requests: each one's memory cap plus its guest's host allowance",
            budget_in_use.clone(),
        );
        let queue_length = Gauge::default();
        registry.register(
            "admission_queue_length",
            "Requests waiting for memory budget",
            queue_length.clone(),
        );
        let queue_wait_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "admission_queue_wait_seconds",
            "Time requests waited for memory budget",
            queue_wait_seconds.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "admission_rejected",
            "Requests turned away with 503 because the memory budget was full",
            rejected.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reloads",
            "Configuration reloads (SIGHUP), by result; on failure the old routes keep serving",
            reloads.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open (at most --max-connections)",
            open_connections.clone(),
        );
        let body_timeouts = Counter::default();
        registry.register(
            "request_body_timeouts",
            "Request bodies the client did not send within --body-timeout",
            body_timeouts.clone(),
        );
        let tenant_budget_in_use = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "tenant_budget_in_use_bytes",
            "Memory budget held by a tenant's admitted requests",
            tenant_budget_in_use.clone(),
        );
        let tenant_queue_length = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "tenant_queue_length",
            "A tenant's requests waiting for memory budget",
            tenant_queue_length.clone(),
        );
        let tenant_admitted = Family::<TenantLabels, Counter>::default();
        registry.register(
            "tenant_admitted",
            "A tenant's requests admitted",
            tenant_admitted.clone(),
        );
        let tenant_rejected = Family::<TenantReasonLabels, Counter>::default();
        registry.register(
            "tenant_rejected",
            "A tenant's requests turned away (503), by reason",
            tenant_rejected.clone(),
        );
        let tenant_requests = Family::<TenantOutcomeLabels, Counter>::default();
        registry.register(
            "tenant_requests",
            "A tenant's requests finished, by outcome",
            tenant_requests.clone(),
        );
        Metrics {
            registry,
            tenant_budget_in_use,
            tenant_queue_length,
            tenant_admitted,
            tenant_rejected,
            tenant_requests,
            reloads,
            open_connections,
            body_timeouts,
            budget_in_use,
            queue_length,
            queue_wait_seconds,
            rejected,
            requests,
            in_flight,
            wall_seconds,
            fuel,
            cpu_seconds,
            peak_memory,
            host_memory,
        }
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
                status,
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
