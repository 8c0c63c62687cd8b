//! W3C trace context (<https://www.w3.org/TR/trace-context/>) for an
//! invocation: the trace it belongs to, the span its outgoing requests are
//! children of, and what each outgoing request did, for whoever records
//! the trace (`wasm-run serve` exports it over OTLP).
//!
//! With [`crate::Invocation::trace`] set, every outgoing wasi:http request
//! of the invocation (WASI 0.2 and 0.3) carries a `traceparent` header of a
//! new child span of the invocation's, whatever the guest set: a guest
//! cannot join another trace, or forge its parent. A `tracestate` the guest
//! set is removed with it.

use std::sync::Arc;
use std::time::SystemTime;

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";

/// The `tracestate` header.
pub const TRACESTATE: &str = "tracestate";

/// One span's place in a trace: the trace id, the span id and whether the
/// caller sampled it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
}

impl std::fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.traceparent())
    }
}

impl TraceContext {
    /// A new trace: random trace and span ids, sampled.
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: random_id(),
            span_id: random_id(),
            sampled: true,
        }
    }

    /// The context a `traceparent` header value carries, if it is valid:
    /// `VERSION-TRACEID-SPANID-FLAGS` in lower-case hex, with neither id
    /// all zeros and a version other than `ff`; a later version's extra
    /// fields are ignored, as the specification asks.
    pub fn from_traceparent(value: &str) -> Option<TraceContext> {
        let mut fields = value.trim().split('-');
        let version = fields.next()?;
        let (trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?);
        if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
            return None;
        }
        if version == "00" && fields.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = hex_bytes(trace)?;
        let span_id: [u8; 8] = hex_bytes(span)?;
        let [flags]: [u8; 1] = hex_bytes(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new span of the same trace, a child of this one.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: random_id(),
            ..*self
        }
    }

    /// The `traceparent` header value (version 00).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The trace id in hex, as logs show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// Whether the trace is sampled (the caller's flag; new traces are).
    pub fn sampled(&self) -> bool {
        self.sampled
    }
}

/// What became of one outgoing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutgoingResult {
    /// The upstream answered with this status (the span ends at its head).
    Response(u16),
    /// The policy denied the destination (nothing was sent).
    Denied(String),
    /// The invocation already had its limit of requests in flight.
    OverLimit,
    /// Connecting or sending failed.
    Failed(String),
}

/// One outgoing request of an invocation, as its trace records it.
#[derive(Debug, Clone)]
pub struct OutgoingSpan {
    /// Its own span (a child of the invocation's), as sent in its
    /// `traceparent`.
    pub context: TraceContext,
    /// The request method.
    pub method: String,
    /// Scheme and authority (`https://api.example.com`): the destination,
    /// without the path or query, which may carry data.
    pub destination: String,
    /// When the guest sent it.
    pub start: SystemTime,
    /// When its response head arrived, or it failed.
    pub end: SystemTime,
    /// What became of it.
    pub result: OutgoingResult,
}

/// Receives each outgoing request's span as the request completes.
pub type OutgoingObserver = Arc<dyn Fn(OutgoingSpan) + Send + Sync>;

/// Tracing of one invocation: its span, and who records its outgoing
/// requests.
#[derive(Clone)]
pub struct InvocationTrace {
    /// The invocation's span: outgoing requests are its children.
    pub context: TraceContext,
    /// Called once per outgoing request, on the request's own task.
    pub on_outgoing: Option<OutgoingObserver>,
}

impl std::fmt::Debug for InvocationTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvocationTrace")
            .field("context", &self.context)
            .field("on_outgoing", &self.on_outgoing.is_some())
            .finish()
    }
}

/// `N` random bytes, never all zero (an invalid id): from a per-thread
/// generator (SplitMix64) seeded once from the kernel, so that an id costs
/// no system call. Trace ids need to be unique, not secret.
fn random_id<const N: usize>() -> [u8; N] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    fn seed() -> u64 {
        let mut bytes = [0u8; 8];
        if rustix::rand::getrandom(&mut bytes[..], rustix::rand::GetRandomFlags::empty()).is_err() {
            // No kernel randomness (never on Linux 3.17 or later): the
            // clock, the thread and an address keep generators apart.
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let here = &bytes as *const _ as u64;
            bytes = (nanos ^ here.rotate_left(32)).to_le_bytes();
        }
        u64::from_le_bytes(bytes)
    }
    fn next(state: &Cell<u64>) -> u64 {
        let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    STATE.with(|state| {
        loop {
            let mut id = [0u8; N];
            for chunk in id.chunks_mut(8) {
                let bytes = next(state).to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            if id.iter().any(|&b| b != 0) {
                return id;
            }
        }
    })
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_invalid_values_are_refused() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::from_traceparent(v).unwrap();
        assert_eq!(ctx.traceparent(), v);
        assert!(ctx.sampled());
        let child = ctx.child();
        assert_eq!(child.trace_id(), ctx.trace_id());
        assert_ne!(child.span_id(), ctx.span_id());
        // A later version's extra fields are ignored; version 00 has none.
        assert!(TraceContext::from_traceparent(&format!("01-{}-x", &v[3..])).is_some());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
            "",
        ] {
            assert_eq!(TraceContext::from_traceparent(bad), None, "{bad}");
        }
        let root = TraceContext::new_root();
        assert_eq!(
            TraceContext::from_traceparent(&root.traceparent()),
            Some(root)
        );
    }
}
