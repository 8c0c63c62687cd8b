//! Host names of outgoing requests, resolved asynchronously.
//!
//! A lookup is a future on the task of the request that needs it: when the
//! request lets go of it — its [`DNS_TIMEOUT`], the guest
//! dropping its outgoing request, the request being killed — the lookup is
//! dropped and nothing of it goes on. (`getaddrinfo` on Tokio's blocking
//! threads, which this replaces, kept a thread per lookup until the system
//! resolver gave up, 10–30 s later: a route whose requests looked up names
//! nobody answers filled both runtimes' blocking pools, ~1,000 threads, and
//! every other route's lookups queued behind them.)
//!
//! Names in `/etc/hosts` (`localhost` among them) are answered from it
//! without a query. The name servers are the system's (`/etc/resolv.conf`),
//! or those the operator gives ([`Resolver::with_servers`], `wasm-run serve
//! --dns-server`). What lookups may hold is bounded: each request has at
//! most its outgoing-request cap of lookups in flight, each at most
//! [`DNS_TIMEOUT`]; the resolver keeps at most
//! [`MAX_PENDING_PER_SERVER`] queries pending on each connection to a name
//! server (more fail at once as unresolved) and caches at most
//! [`CACHE_ENTRIES`] answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// Longest a host name may take to resolve: 5 s. A lookup is a future of
/// the request's own, dropped when the request lets go of it; at most
/// [`crate::outbound::DEFAULT_MAX_OUTGOING`] of them per invocation.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Most queries pending at once on one connection to a name server: 64.
pub const MAX_PENDING_PER_SERVER: usize = 64;

/// Most answers the resolver caches: 4,096.
pub const CACHE_ENTRIES: u64 = 4096;

/// Resolves the host names of outgoing requests. Cheap to clone; clones
/// share the cache and the connections to the name servers.
#[derive(Clone)]
pub struct Resolver {
    inner: Option<Arc<TokioResolver>>,
    /// What the resolver asks, for logs and errors.
    servers: Arc<str>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Resolver {
    fn eq(&self, other: &Self) -> bool {
        match (&self.inner, &other.inner) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl Eq for Resolver {}

impl Resolver {
    /// The process's resolver with the system's configuration
    /// (`/etc/resolv.conf`, `/etc/hosts`), built on first use. Without a
    /// readable configuration, names are answered from `/etc/hosts` only
    /// (a warning says so): wasm-run never falls back to name servers
    /// nobody configured.
    pub fn system() -> Resolver {
        static SYSTEM: OnceLock<Resolver> = OnceLock::new();
        SYSTEM
            .get_or_init(|| match hickory_resolver::system_conf::read_system_conf() {
                Ok((config, _options)) => build(config, "the system's (/etc/resolv.conf)"),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "cannot read the system's DNS configuration; outgoing requests' \
                         host names resolve from /etc/hosts only"
                    );
                    build(
                        ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                        "none",
                    )
                }
            })
            .clone()
    }

    /// A resolver that asks exactly `servers` (over UDP, and TCP for long
    /// answers), with no search domains, and answers names in `/etc/hosts`
    /// from it.
    pub fn with_servers(servers: &[SocketAddr]) -> Resolver {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let shown: Vec<String> = servers.iter().map(ToString::to_string).collect();
        build(
            ResolverConfig::from_parts(None, Vec::new(), name_servers),
            &shown.join(", "),
        )
    }

    /// The addresses of `host`, with `port`; an IP literal is itself.
    pub(crate) async fn lookup(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(vec![SocketAddr::new(ip, port)]);
        }
        let inner = self.inner.as_ref()?;
        let found = inner.lookup_ip(host).await.ok()?;
        let mut addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        // IPv4 first, as `getaddrinfo` orders most hosts' answers: only the
        // first allowed address is dialled.
        addrs.sort_by_key(|a| a.is_ipv6());
        Some(addrs)
    }
}

/// A resolver of `config` with wasm-run's bounds; `servers` names it.
fn build(config: ResolverConfig, servers: &str) -> Resolver {
    let mut options = ResolverOpts::default();
    options.use_hosts_file = ResolveHosts::Always;
    options.max_active_requests = MAX_PENDING_PER_SERVER;
    options.cache_size = CACHE_ENTRIES;
    options.timeout = DNS_TIMEOUT;
    let built = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build();
    match built {
        Ok(resolver) => Resolver {
            inner: Some(Arc::new(resolver)),
            servers: servers.into(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the DNS resolver; outgoing requests by name fail");
            Resolver {
                inner: None,
                servers: servers.into(),
            }
        }
    }
}
