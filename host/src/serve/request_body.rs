//! Request bodies on their way to the guest: streamed, never buffered whole,
//! and cut off at `--max-body`.
//!
//! [`LimitedBody`] counts bytes as they arrive; past the limit it fails the
//! stream (the guest sees a read error) and raises a flag the server checks
//! to answer 413, or to abort a response already under way.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

/// Set when a request body went past the limit.
#[derive(Debug, Clone, Default)]
pub struct TooLarge(Arc<AtomicBool>);

impl TooLarge {
    /// Whether the body went past the limit.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The error a guest sees when its request body passes the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A body that fails once more than `limit` bytes have come through.
#[derive(Debug)]
pub struct LimitedBody<B> {
    inner: B,
    limit: u64,
    seen: u64,
    flag: TooLarge,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `flag` is raised when the limit is passed.
    pub fn new(inner: B, limit: u64, flag: TooLarge) -> Self {
        LimitedBody {
            inner,
            limit,
            seen: 0,
            flag,
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
        if self.flag.is_set() {
            return Poll::Ready(Some(Err(Box::new(BodyTooLarge(self.limit)))));
        }
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            self.seen += data.len() as u64;
            if self.seen > self.limit {
                self.flag.set();
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge(self.limit)))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Presents a body as an `AsyncRead`, for a CGI guest's stdin.
pub struct BodyReader<B> {
    body: B,
    chunk: Bytes,
    done: bool,
}

impl<B> BodyReader<B> {
    /// Reads `body`'s data frames in order; trailers are ignored.
    pub fn new(body: B) -> Self {
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
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;

    /// A body yielding the given chunks, one frame each.
    struct Chunks(std::collections::VecDeque<&'static [u8]>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c)))),
            )
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        Chunks(parts.iter().copied().collect())
    }

    #[tokio::test]
    async fn under_the_limit_passes_through() {
        let flag = TooLarge::default();
        let body = LimitedBody::new(chunks(&[b"hello ", b"world"]), 11, flag.clone());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello world");
        assert!(!flag.is_set());
    }

    #[tokio::test]
    async fn over_the_limit_fails_and_raises_the_flag() {
        let flag = TooLarge::default();
        let body = LimitedBody::new(chunks(&[b"hello ", b"world"]), 10, flag.clone());
        assert!(body.collect().await.is_err());
        assert!(flag.is_set());
    }

    #[tokio::test]
    async fn reader_streams_every_chunk() {
        let mut reader = BodyReader::new(chunks(&[b"a", b"", b"bc", b"def"]));
        let mut out = String::new();
        reader.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "abcdef");
    }
}
