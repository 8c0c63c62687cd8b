//! Outgoing HTTP from wasi:http guests: denied unless the route allows the
//! destination, checked again on the address DNS gives, and sent to exactly
//! the address that was checked.
//!
//! An allow-list entry is `[SCHEME://]HOST[:PORT]`, or `*`:
//!
//! - the scheme (`http` or `https`) must match when given; without it both
//!   are allowed;
//! - the port must equal the request's *effective* port (the explicit one,
//!   or 80 for http / 443 for https); an entry without a port allows only
//!   the scheme's default port;
//! - `*` allows any public host on the default ports (with a port, `*:8080`,
//!   that port).
//!
//! Requests with userinfo (`user:pass@host`) are denied. The host name is
//! resolved by wasm-run; addresses that are loopback, private, link-local
//! (which includes cloud metadata at 169.254.169.254), unique-local,
//! shared (CGNAT), multicast, unspecified or otherwise reserved are denied
//! unless the entry names that host or address itself — `*` never covers
//! them; link-local and metadata addresses only an IP-literal entry (or
//! `localhost`) reaches, so a named host's DNS cannot point a guest at
//! 169.254.169.254. The connection then goes to the vetted address, so a
//! second DNS answer cannot redirect it.
//!
//! One invocation may have at most [`DEFAULT_MAX_OUTGOING`] requests in
//! flight (per policy: [`OutboundPolicy::with_max_outgoing`]); names resolve
//! within [`DNS_TIMEOUT`]; upstream heads are capped at
//! [`crate::http_client::MAX_RESPONSE_HEAD_BYTES`]; and everything an outgoing request makes the
//! host hold is charged to the invocation's account (`crate::accounting`).
//!
//! A denied request reaches the guest as the wasi:http error code
//! `HTTP-request-denied` (the guest decides what to answer); it is not a
//! trap. Allowed requests run inside the request's deadline like any other
//! host call.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::dns::Resolver;

pub use crate::dns::DNS_TIMEOUT;

/// Default for [`OutboundPolicy::with_max_outgoing`]: at most 16 outgoing
/// requests of one invocation in flight at once (each holds a socket, a
/// connection task and its buffers). One more fails with the wasi:http
/// error `connection-limit-reached` until an earlier one is done.
pub const DEFAULT_MAX_OUTGOING: usize = 16;

/// Which destinations a guest may send HTTP requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Empty (the default) denies every outgoing request.
    rules: Arc<[Rule]>,
    /// Outgoing requests one invocation may have in flight at once.
    max_outgoing: usize,
    /// Who resolves host names; `None`: the system's ([`Resolver::system`]).
    resolver: Option<Resolver>,
}

impl Default for OutboundPolicy {
    fn default() -> Self {
        OutboundPolicy {
            rules: Arc::new([]),
            max_outgoing: DEFAULT_MAX_OUTGOING,
            resolver: None,
        }
    }
}

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// `Some(true)` https only, `Some(false)` http only, `None` either.
    https: Option<bool>,
    host: HostPattern,
    /// `None`: the scheme's default port only.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any host whose addresses are all public.
    Any,
    /// A lower-case host name.
    Name(String),
    /// An IP address literal.
    Ip(IpAddr),
}

/// An allow-list entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid outbound entry `{entry}`: {reason} (for example `example.com`, \
     `https://api.example.com:8443`, `127.0.0.1:8080` or `*`)"
)]
pub struct InvalidRule {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Why an outgoing request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Denied {
    /// Not `http` or `https`, no host, or userinfo in the authority.
    #[error("the URL is not an allowed http(s) URL without userinfo")]
    BadUrl,
    /// No allow-list entry matches scheme, host and port.
    #[error("the destination is not on the route's allow-list")]
    NotListed,
    /// The name did not resolve.
    #[error("the host name did not resolve")]
    Unresolved,
    /// Every address is loopback, private, link-local, metadata or otherwise
    /// not public, and the entry that matched was `*`.
    #[error("the host resolves only to non-public addresses, which need an explicit entry")]
    NonPublic,
}

/// A destination that passed every check: connect to exactly this address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vetted {
    /// The address to dial.
    pub(crate) addr: SocketAddr,
    /// Whether to speak TLS.
    pub(crate) https: bool,
    /// The host name (or address) as the guest wrote it, for TLS.
    pub(crate) host: String,
}

/// A URL that an allow-list entry matches (before DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    /// The host, lower-case, without brackets.
    host: String,
    /// The effective port.
    port: u16,
    /// Whether the URL is https.
    https: bool,
    /// Whether the matching entry names the host (rather than `*`).
    explicit: bool,
}

impl OutboundPolicy {
    /// Parses allow-list entries (`example.com`, `https://api.example.com:8443`,
    /// `127.0.0.1:8080`, `[::1]:8080`, `*`).
    pub fn new(entries: impl IntoIterator<Item = impl AsRef<str>>) -> Result<Self, InvalidRule> {
        let rules = entries
            .into_iter()
            .map(|e| parse_rule(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OutboundPolicy {
            rules: rules.into(),
            max_outgoing: DEFAULT_MAX_OUTGOING,
            resolver: None,
        })
    }

    /// Resolves host names with `resolver` instead of the system's
    /// configuration (see [`crate::dns`]).
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Sets how many outgoing requests one invocation may have in flight at
    /// once (at least 1); default [`DEFAULT_MAX_OUTGOING`].
    pub fn with_max_outgoing(mut self, n: usize) -> Self {
        self.max_outgoing = n.max(1);
        self
    }

    /// How many outgoing requests one invocation may have in flight at once.
    pub fn max_outgoing(&self) -> usize {
        self.max_outgoing
    }

    /// Whether no destination at all is allowed.
    pub fn denies_all(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first check, before any DNS: scheme, userinfo, and an entry for
    /// this scheme, host and effective port.
    fn check_url(&self, uri: &http::Uri) -> Result<Listed, Denied> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Denied::BadUrl),
        };
        let authority = uri.authority().ok_or(Denied::BadUrl)?;
        if authority.as_str().contains('@') {
            return Err(Denied::BadUrl);
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(Denied::BadUrl);
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let default_port = if https { 443 } else { 80 };
        let literal: Option<IpAddr> = host.parse().ok();
        let mut explicit = false;
        let mut matched = false;
        for rule in self.rules.iter() {
            if rule.https.is_some_and(|h| h != https) {
                continue;
            }
            if rule.port.unwrap_or(default_port) != port {
                continue;
            }
            match &rule.host {
                HostPattern::Any => matched = true,
                HostPattern::Name(name) if *name == host => {
                    matched = true;
                    explicit = true;
                }
                HostPattern::Ip(ip) if Some(*ip) == literal => {
                    matched = true;
                    explicit = true;
                }
                _ => {}
            }
        }
        if !matched {
            return Err(Denied::NotListed);
        }
        Ok(Listed {
            host,
            port,
            https,
            explicit,
        })
    }

    /// Resolves and vets a request's destination: the URL check, then DNS,
    /// then the address check. Only the returned address may be dialled.
    pub(crate) async fn vet(&self, uri: &http::Uri) -> Result<Vetted, Denied> {
        let Listed {
            host,
            port,
            https,
            explicit,
        } = self.check_url(uri)?;
        let resolver = self.resolver.clone().unwrap_or_else(Resolver::system);
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(DNS_TIMEOUT, resolver.lookup(&host, port))
                .await
                .map_err(|_| Denied::Unresolved)?
                .ok_or(Denied::Unresolved)?;
        let reach = if !explicit {
            Reach::Public
        } else if host.parse::<IpAddr>().is_ok() || host == "localhost" {
            Reach::Any
        } else {
            Reach::NotLinkLocal
        };
        let addr = choose_address(&addrs, reach)?;
        Ok(Vetted { addr, https, host })
    }
}

/// Which resolved addresses an entry lets a request reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// `*`: public addresses only.
    Public,
    /// An entry naming the host by name: also private and loopback ones, but
    /// never link-local or metadata addresses, which only an IP-literal
    /// entry reaches — a name's DNS (perhaps a partner's) must not be able
    /// to point a guest at 169.254.169.254.
    NotLinkLocal,
    /// An IP-literal entry, or `localhost`: exactly what it names.
    Any,
}

/// The first address that may be dialled under `reach`.
fn choose_address(addrs: &[SocketAddr], reach: Reach) -> Result<SocketAddr, Denied> {
    if addrs.is_empty() {
        return Err(Denied::Unresolved);
    }
    addrs
        .iter()
        .find(|a| match reach {
            Reach::Any => true,
            Reach::NotLinkLocal => !is_link_local(a.ip()),
            Reach::Public => is_public(a.ip()),
        })
        .copied()
        .ok_or(Denied::NonPublic)
}

/// Link-local addresses (169.254/16, fe80::/10, also IPv4-mapped), which
/// include cloud metadata services, and AWS's IPv6 metadata fd00:ec2::254.
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4.is_link_local();
            }
            let s = v6.segments();
            (s[0] & 0xffc0) == 0xfe80 || s == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254]
        }
    }
}

fn parse_rule(entry: &str) -> Result<Rule, InvalidRule> {
    let err = |reason| InvalidRule {
        entry: entry.to_string(),
        reason,
    };
    let text = entry.trim().to_ascii_lowercase();
    let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
        (Some(true), rest)
    } else if let Some(rest) = text.strip_prefix("http://") {
        (Some(false), rest)
    } else if text.contains("://") {
        return Err(err("only http:// and https:// are supported"));
    } else {
        (None, text.as_str())
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(err("no host"));
    }
    if rest.contains(['@', '/', '?', '#']) {
        return Err(err("an entry is a scheme, a host and a port, nothing else"));
    }
    // `[v6]:port`, `[v6]`, `host:port`, `host`, or a bare IPv6 literal.
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or_else(|| err("unclosed `[`"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| err("bad port"))?),
        };
        (addr, port)
    } else if rest.parse::<Ipv6Addr>().is_ok() {
        (rest, None)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port = port
        .map(|p| p.parse::<u16>().map_err(|_| err("bad port")))
        .transpose()?;
    let host = if host == "*" {
        HostPattern::Any
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        HostPattern::Ip(ip)
    } else if host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        HostPattern::Name(host.to_string())
    } else {
        return Err(err("not a host name or IP address"));
    };
    Ok(Rule { https, host, port })
}

/// Whether `ip` is a globally reachable unicast address: not loopback,
/// private, link-local (cloud metadata lives there), shared (CGNAT),
/// unique-local, multicast, unspecified, documentation, benchmarking or
/// reserved. IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64)
/// are judged as IPv4.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // IPv4-compatible (deprecated) ::a.b.c.d and NAT64 64:ff9b::/96.
            if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let v4 =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return is_public_v4(v4);
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (AWS metadata fd00:ec2::254)
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (b & 0xc0) == 64) // shared address space 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18/15
        || a >= 240) // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OutboundPolicy {
        OutboundPolicy::new(entries).expect("valid entries")
    }

    fn url_ok(p: &OutboundPolicy, url: &str) -> bool {
        p.check_url(&url.parse().unwrap()).is_ok()
    }

    /// Checks that `entries` allow every URL of `allowed` and deny every
    /// URL of `denied`.
    fn admits(entries: &[&str], allowed: &[&str], denied: &[&str]) {
        let p = policy(entries);
        for url in allowed {
            assert!(url_ok(&p, url), "{entries:?} must allow {url}");
        }
        for url in denied {
            assert!(!url_ok(&p, url), "{entries:?} must deny {url}");
        }
    }

    #[test]
    fn denies_by_default_and_allows_listed_hosts() {
        assert!(!url_ok(&OutboundPolicy::default(), "http://example.com/x"));
        let url = "http://example.com/x";
        admits(&["Example.COM"], &[url, "https://example.com/x"], &[]);
        admits(&["other.com"], &[], &[url]);
        admits(&["*"], &[url], &[]);
    }

    #[test]
    fn the_effective_port_must_match() {
        let (on_80, on_443) = ("http://example.com:80/", "https://example.com/");
        let elsewhere = ["http://example.com:22/", "https://example.com:8443/"];
        admits(&["example.com"], &[on_80, on_443], &elsewhere);
        admits(&["example.com:8443"], &[elsewhere[1]], &[on_443]);
        admits(&["*"], &[], &["http://example.com:6379/"]);
        admits(&["*:8080"], &["http://example.com:8080/"], &[]);
    }

    #[test]
    fn the_scheme_must_match_when_given() {
        let denied = ["http://api.example.com/", "http://api.example.com:443/"];
        admits(
            &["https://api.example.com"],
            &["https://api.example.com/"],
            &denied,
        );
        admits(&["*"], &[], &["ftp://example.com/"]);
    }

    #[test]
    fn userinfo_is_refused() {
        let p = policy(&["*", "example.com"]);
        assert_eq!(
            p.check_url(&"http://user:pw@example.com/".parse().unwrap()),
            Err(Denied::BadUrl)
        );
        assert_eq!(
            p.check_url(&"http://example.com@evil.test/".parse().unwrap()),
            Err(Denied::BadUrl)
        );
    }

    #[test]
    fn entries_parse_or_are_refused_with_a_reason() {
        for ok in [
            "example.com",
            "https://example.com",
            "http://example.com:8080/",
            "127.0.0.1:8080",
            "[::1]:8080",
            "::1",
            "*",
            "*:8443",
        ] {
            assert!(OutboundPolicy::new([ok]).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ftp://example.com",
            "example.com:http",
            "user@example.com",
            "example.com/path",
            "[::1",
            "exa mple.com",
        ] {
            let e = OutboundPolicy::new([bad]).unwrap_err();
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }

    fn addr(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 80)
    }

    /// The address chosen from DNS answers `addrs`.
    fn chosen(addrs: &[&str], reach: Reach) -> Result<SocketAddr, Denied> {
        choose_address(&addrs.iter().map(|a| addr(a)).collect::<Vec<_>>(), reach)
    }

    #[test]
    fn non_public_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.0.170",
            "198.18.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} counted as public");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as not public");
        }
    }

    #[test]
    fn wildcard_never_reaches_non_public_addresses() {
        // `*` matched: only public addresses may be dialled, in DNS order.
        assert_eq!(
            chosen(&["127.0.0.1", "10.0.0.1"], Reach::Public),
            Err(Denied::NonPublic)
        );
        assert_eq!(
            chosen(&["169.254.169.254", "93.184.216.34"], Reach::Public),
            Ok(addr("93.184.216.34"))
        );
        // An explicit entry may name a private host.
        assert_eq!(chosen(&["127.0.0.1"], Reach::Any), Ok(addr("127.0.0.1")));
        assert_eq!(chosen(&[], Reach::Any), Err(Denied::Unresolved));
    }

    #[test]
    fn explicit_entries_are_told_apart_from_the_wildcard() {
        let p = policy(&["*", "localhost:8080", "10.0.0.5"]);
        let explicit = |url: &str| p.check_url(&url.parse().unwrap()).map(|r| r.explicit);
        assert_eq!(explicit("http://example.com/"), Ok(false));
        assert_eq!(explicit("http://localhost:8080/"), Ok(true));
        assert_eq!(explicit("http://10.0.0.5/"), Ok(true));
        assert_eq!(explicit("http://localhost/"), Ok(false));
        // A literal private address under `*` passes the URL check but
        // fails the address check: it is never dialled.
        let explicit = p
            .check_url(&"http://127.0.0.1/".parse().unwrap())
            .unwrap()
            .explicit;
        assert!(!explicit);
        assert_eq!(
            chosen(&["127.0.0.1"], Reach::Public),
            Err(Denied::NonPublic)
        );
    }

    #[test]
    fn a_named_entry_never_reaches_link_local_or_metadata_addresses() {
        // What a name resolves to is up to its DNS: private and loopback
        // answers are allowed for an explicit name, metadata never.
        for metadata in [
            "169.254.169.254",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert_eq!(
                choose_address(&[addr(metadata)], Reach::NotLinkLocal),
                Err(Denied::NonPublic),
                "{metadata}"
            );
        }
        assert_eq!(
            chosen(&["169.254.169.254", "10.0.0.7"], Reach::NotLinkLocal),
            Ok(addr("10.0.0.7"))
        );
        assert_eq!(
            chosen(&["127.0.0.1"], Reach::NotLinkLocal),
            Ok(addr("127.0.0.1"))
        );
        // Only an entry that is the address itself reaches it.
        assert_eq!(
            chosen(&["169.254.169.254"], Reach::Any),
            Ok(addr("169.254.169.254"))
        );
    }

    #[tokio::test]
    async fn vetting_a_literal_address_needs_no_dns_and_dials_nothing() {
        let p = policy(&["*", "127.0.0.1:9"]);
        let v = p
            .vet(&"http://127.0.0.1:9/x".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(v.addr, "127.0.0.1:9".parse().unwrap());
        assert!(!v.https);
        assert_eq!(
            p.vet(&"http://169.254.169.254/latest".parse().unwrap())
                .await,
            Err(Denied::NonPublic)
        );
    }
}
