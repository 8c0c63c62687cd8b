//! The routes of one configuration generation — everything a reload
//! replaces: each route's loaded guest, limits, tenant and request
//! settings, matched by longest path prefix. Built (and validated: every
//! module loads, every route's requests fit the budget) before it replaces
//! the running table, so a failed reload changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use super::request_body::BodyFault;
use super::response::HostAnswer;
use super::settings::{ModuleSource, RouteSpec, ServeConfig};
use crate::admission::{Admission, Need, Slots, TenantId};
use crate::{Engine, Guest, GuestKind, OutboundPolicy};

/// A route with its guest loaded.
pub(crate) struct RouteRuntime {
    pub(crate) spec: RouteSpec,
    pub(crate) guest: Guest,
    pub(crate) outbound: OutboundPolicy,
    /// The tenant its requests are admitted as.
    pub(crate) tenant: TenantId,
    pub(crate) max_body: u64,
    /// Bytes of a request body read before the request waits for budget.
    pub(crate) body_buffer: u64,
    /// Longest wait for the (next part of the) request body.
    pub(crate) body_timeout: Duration,
    pub(crate) log_cap: usize,
}

impl RouteRuntime {
    /// What one request on this route takes while admitted: its memory cap
    /// plus its guest's host allowance ([`Guest::host_allowance`]), and the
    /// instance-pool slots of its guest.
    pub(crate) fn admission_need(&self) -> Need {
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

    /// The answer to a request on this route whose body failed, if the
    /// body is why.
    pub(crate) fn body_answer(&self, fault: BodyFault) -> HostAnswer {
        match fault {
            BodyFault::TooLarge => HostAnswer::BodyTooLarge(self.max_body),
            BodyFault::TimedOut => HostAnswer::BodyTimeout(self.body_timeout),
        }
    }
}

/// The routes of one configuration generation; replaced whole on reload,
/// so requests in flight finish on the generation they started with.
pub(crate) struct RouteTable {
    /// Longest prefix first.
    routes: Vec<RouteRuntime>,
}

impl RouteTable {
    pub(crate) fn find(&self, path: &str) -> Option<&RouteRuntime> {
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

/// How a guest of `kind` is served, for the log.
pub(super) fn served_as(kind: GuestKind) -> &'static str {
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

pub(crate) fn load_table(
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
        // The running budget: a reload cannot change it.
        fits_the_budget(spec, &guest, admission.config().budget)?;
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
    use super::prefix_matches;

    #[test]
    fn prefixes_match_at_segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/"));
    }
}
