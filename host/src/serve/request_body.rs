//! Request bodies on their way to the guest: a small head of the body read
//! before the request takes any budget, the rest streamed (never buffered
//! whole), cut off at `--max-body`, and timed out when the client stalls.
//!
//! Policy (like nginx's `client_body_buffer_size` and `client_body_timeout`):
//!
//! - Before admission, [`LimitedBody::prebuffer`] reads the body until it
//!   ends or `--body-buffer` bytes have arrived, all within
//!   `--body-timeout`. A client that dribbles its body therefore waits
//!   without holding any memory budget, and one that stops is answered 408.
//! - After admission the rest streams to the guest; each further part must
//!   arrive within `--body-timeout` of the moment the guest asked for it, or
//!   the body fails (408 if no response was sent yet, else the response is
//!   aborted). The request's deadline bounds the whole exchange.
//!
//! [`BodyFlag`] records which of these went wrong, for the response path.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What went wrong with a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFault {
    /// More than `--max-body` bytes.
    TooLarge,
    /// The client did not send the next part within `--body-timeout`.
    TimedOut,
}

/// Shared record of a request body's fault, if any: set by the body, read
/// by the response path to answer 413 or 408.
#[derive(Debug, Clone, Default)]
pub(super) struct BodyFlag(Arc<AtomicU8>);

impl BodyFlag {
    /// The fault, if the body failed.
    pub(super) fn fault(&self) -> Option<BodyFault> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(BodyFault::TooLarge),
            2 => Some(BodyFault::TimedOut),
            _ => None,
        }
    }

    /// Whether the body failed.
    pub(super) fn is_set(&self) -> bool {
        self.fault().is_some()
    }

    fn set(&self, fault: BodyFault) {
        let code = match fault {
            BodyFault::TooLarge => 1,
            BodyFault::TimedOut => 2,
        };
        let _ = self
            .0
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The error a guest sees when its request body passes the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub(super) struct BodyTooLarge(pub u64);

/// The error a guest sees when the client stops sending its body.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no more of the request body for {0:?}")]
pub(super) struct BodyTimedOut(pub Duration);

/// A request body with a buffered head, a size limit and an idle timeout.
#[derive(Debug)]
pub(super) struct LimitedBody<B> {
    buffered: VecDeque<Bytes>,
    /// Trailers read ahead with the buffered head (they end the body).
    trailers: Option<http::HeaderMap>,
    /// `None` once the client's body has ended.
    inner: Option<B>,
    limit: u64,
    seen: u64,
    idle_timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
    flag: BodyFlag,
}

impl<B> LimitedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    /// Wraps `inner`: more than `limit` bytes, or a wait of more than
    /// `idle_timeout` for the next part, fails the body and raises `flag`.
    pub(super) fn new(inner: B, limit: u64, idle_timeout: Duration, flag: BodyFlag) -> Self {
        let ended = inner.is_end_stream();
        LimitedBody {
            buffered: VecDeque::new(),
            trailers: None,
            inner: (!ended).then_some(inner),
            limit,
            seen: 0,
            idle_timeout,
            idle: None,
            flag,
        }
    }

    /// Reads the body until it ends or `want` bytes are buffered, giving the
    /// client `within` for all of it. A body with nothing to read returns at
    /// once. On failure the flag says why.
    pub(super) async fn prebuffer(&mut self, want: u64, within: Duration) -> Result<(), BodyFault> {
        let deadline = Instant::now() + within;
        while let Some(inner) = self.inner.as_mut() {
            if self.seen >= want {
                return Ok(());
            }
            let frame = match tokio::time::timeout_at(deadline, inner.frame()).await {
                Err(_) => {
                    self.flag.set(BodyFault::TimedOut);
                    return Err(BodyFault::TimedOut);
                }
                Ok(None) => {
                    self.inner = None;
                    return Ok(());
                }
                // A broken connection: let the guest see the error later.
                Ok(Some(Err(_))) => return Ok(()),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    self.count(data.len())?;
                    self.buffered.push_back(data);
                }
                Err(frame) => self.trailers = frame.into_trailers().ok(),
            }
            if self.inner.as_ref().is_some_and(HttpBody::is_end_stream) {
                self.inner = None;
            }
        }
        Ok(())
    }

    /// Bytes read ahead and not yet handed on.
    pub(super) fn buffered_len(&self) -> usize {
        self.buffered.iter().map(Bytes::len).sum()
    }

    fn count(&mut self, n: usize) -> Result<(), BodyFault> {
        self.seen = self.seen.saturating_add(n as u64);
        if self.seen > self.limit {
            self.flag.set(BodyFault::TooLarge);
            return Err(BodyFault::TooLarge);
        }
        Ok(())
    }

    fn fault_error(&self, fault: BodyFault) -> Box<dyn std::error::Error + Send + Sync> {
        match fault {
            BodyFault::TooLarge => Box::new(BodyTooLarge(self.limit)),
            BodyFault::TimedOut => Box::new(BodyTimedOut(self.idle_timeout)),
        }
    }
}

impl<B> HttpBody for LimitedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(fault) = this.flag.fault() {
            return Poll::Ready(Some(Err(this.fault_error(fault))));
        }
        if let Some(chunk) = this.buffered.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let Poll::Ready(next) = polled else {
            // Waiting for the client: it has `idle_timeout` to send more.
            let timeout = this.idle_timeout;
            let idle = this
                .idle
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            ready!(idle.as_mut().poll(cx));
            this.flag.set(BodyFault::TimedOut);
            return Poll::Ready(Some(Err(this.fault_error(BodyFault::TimedOut))));
        };
        this.idle = None;
        let frame = match next {
            None => {
                this.inner = None;
                return Poll::Ready(None);
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref()
            && let Err(fault) = this.count(data.len())
        {
            return Poll::Ready(Some(Err(this.fault_error(fault))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty()
            && self.trailers.is_none()
            && self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let buffered = self.buffered_len() as u64;
        match &self.inner {
            None => SizeHint::with_exact(buffered),
            Some(inner) => {
                let hint = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower().saturating_add(buffered));
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper.saturating_add(buffered));
                }
                out
            }
        }
    }
}

/// Presents a body as an `AsyncRead`, for a CGI guest's stdin.
pub(super) struct BodyReader<B> {
    body: B,
    chunk: Bytes,
    done: bool,
}

impl<B> BodyReader<B> {
    /// Reads `body`'s data frames in order; trailers are ignored.
    pub(super) fn new(body: B) -> Self {
        BodyReader {
            body,
            chunk: Bytes::new(),
            done: false,
        }
    }
}

impl<B> AsyncRead for BodyReader<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.chunk.is_empty() {
                let n = self.chunk.len().min(buf.remaining());
                buf.put_slice(&self.chunk[..n]);
                self.chunk.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Err(std::io::Error::other(e.into())));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.chunk = data;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A body yielding the given chunks, one frame each, then its end
    /// (or, if it `stalls`, nothing ever again).
    struct Chunks {
        left: std::collections::VecDeque<&'static [u8]>,
        stalls: bool,
    }

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            match self.left.pop_front() {
                Some(c) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(c))))),
                None if self.stalls => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        Chunks {
            left: parts.iter().copied().collect(),
            stalls: false,
        }
    }

    /// A body that sends one chunk and then nothing, forever.
    fn stalls() -> Chunks {
        Chunks {
            stalls: true,
            ..chunks(&[b"x"])
        }
    }

    const IDLE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn under_the_limit_passes_through() {
        let flag = BodyFlag::default();
        let body = LimitedBody::new(chunks(&[b"hello ", b"world"]), 11, IDLE, flag.clone());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello world");
        assert!(!flag.is_set());
    }

    #[tokio::test]
    async fn over_the_limit_fails_and_raises_the_flag() {
        let flag = BodyFlag::default();
        let body = LimitedBody::new(chunks(&[b"hello ", b"world"]), 10, IDLE, flag.clone());
        assert!(body.collect().await.is_err());
        assert_eq!(flag.fault(), Some(BodyFault::TooLarge));
    }

    #[tokio::test]
    async fn prebuffer_reads_a_small_body_whole_then_replays_it() {
        let flag = BodyFlag::default();
        let mut body = LimitedBody::new(chunks(&[b"ab", b"cd"]), 100, IDLE, flag.clone());
        body.prebuffer(64, IDLE).await.unwrap();
        assert_eq!(body.buffered_len(), 4);
        assert!(body.inner.is_none(), "the whole body was read");
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcd");
    }

    #[tokio::test]
    async fn prebuffer_stops_at_its_size_and_the_rest_streams() {
        let flag = BodyFlag::default();
        let mut body = LimitedBody::new(chunks(&[b"ab", b"cd", b"ef"]), 100, IDLE, flag.clone());
        body.prebuffer(3, IDLE).await.unwrap();
        assert_eq!(body.buffered_len(), 4);
        assert!(body.inner.is_some());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcdef");
    }

    #[tokio::test]
    async fn prebuffer_over_the_limit_is_too_large() {
        let flag = BodyFlag::default();
        let mut body = LimitedBody::new(chunks(&[b"hello ", b"world"]), 8, IDLE, flag.clone());
        assert_eq!(body.prebuffer(64, IDLE).await, Err(BodyFault::TooLarge));
        assert_eq!(flag.fault(), Some(BodyFault::TooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_before_admission() {
        let flag = BodyFlag::default();
        let mut body = LimitedBody::new(stalls(), 100, IDLE, flag.clone());
        let started = Instant::now();
        assert_eq!(
            body.prebuffer(64, Duration::from_secs(3)).await,
            Err(BodyFault::TimedOut)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(flag.fault(), Some(BodyFault::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_while_streaming() {
        let flag = BodyFlag::default();
        let mut body = LimitedBody::new(stalls(), 100, IDLE, flag.clone());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "x");
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyTimedOut>(), "{err}");
        assert_eq!(started.elapsed(), IDLE);
        assert_eq!(flag.fault(), Some(BodyFault::TimedOut));
    }

    #[tokio::test]
    async fn reader_streams_every_chunk() {
        let mut reader = BodyReader::new(chunks(&[b"a", b"", b"bc", b"def"]));
        let mut out = String::new();
        reader.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "abcdef");
    }
}
