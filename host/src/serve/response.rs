//! Response bodies and the host's own answers: the one mapping from what
//! happened to a request to its HTTP status, `x-wasm-run-outcome` header and
//! JSON error body (the status table in the README).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::OutcomeKind;

/// Error type of response bodies: a body that fails makes hyper abort the
/// response, so the client sees a truncated message, never a clean end.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the server sends.
pub(crate) type Body = UnsyncBoxBody<Bytes, BodyError>;

/// Name of the header that says why the host answered instead of the guest.
pub(crate) const OUTCOME_HEADER: &str = "x-wasm-run-outcome";

/// Why the host, not the guest, produced a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostAnswer {
    /// The guest was killed or trapped before sending a response head.
    Killed(OutcomeKind, String),
    /// The request body is larger than `--max-body`.
    BodyTooLarge(u64),
    /// The client did not send the request body in time (`--body-timeout`).
    BodyTimeout(std::time::Duration),
    /// The guest gave no usable response: a CGI guest printed no valid CGI
    /// head, or a wasi:http guest ended without a response or with an
    /// informational (1xx) status.
    BadGateway(String),
    /// No route matches the path.
    NotFound(String),
    /// The host could not run the guest (e.g. a preopened directory is
    /// missing). The message is for the server log only: the client is told
    /// to look there, under the request id, so host paths and engine errors
    /// never leave the host.
    HostError(String),
    /// The memory budget is full and the queue is full or the wait too long.
    Overloaded(String),
}

impl HostAnswer {
    /// The status, per the status table in the README.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            HostAnswer::Killed(OutcomeKind::DeadlineExceeded, _) => StatusCode::GATEWAY_TIMEOUT,
            HostAnswer::Killed(_, _) => StatusCode::INTERNAL_SERVER_ERROR,
            HostAnswer::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HostAnswer::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            HostAnswer::BadGateway(_) => StatusCode::BAD_GATEWAY,
            HostAnswer::NotFound(_) => StatusCode::NOT_FOUND,
            HostAnswer::HostError(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HostAnswer::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The outcome name used in the header, the JSON body, logs and metrics.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            HostAnswer::Killed(kind, _) => kind.name(),
            HostAnswer::BodyTooLarge(_) => "body_too_large",
            HostAnswer::BodyTimeout(_) => "body_timeout",
            HostAnswer::BadGateway(_) => "bad_gateway",
            HostAnswer::NotFound(_) => "not_found",
            HostAnswer::HostError(_) => "host_error",
            HostAnswer::Overloaded(_) => "overloaded",
        }
    }

    /// The message of the JSON error body: what the client may know.
    pub(crate) fn message(&self) -> String {
        match self {
            HostAnswer::Killed(_, m)
            | HostAnswer::BadGateway(m)
            | HostAnswer::NotFound(m)
            | HostAnswer::Overloaded(m) => m.clone(),
            HostAnswer::HostError(_) => "the host could not run this request; the server log \
                                         has the details under its x-request-id"
                .to_string(),
            HostAnswer::BodyTooLarge(max) => {
                format!("request body is larger than the limit of {max} bytes")
            }
            HostAnswer::BodyTimeout(t) => format!(
                "the request body did not arrive in time (the host waits {} ms for each part)",
                t.as_millis()
            ),
        }
    }

    /// What the server log records beside the client's message: the full
    /// detail of a host error.
    pub(crate) fn detail(&self) -> Option<&str> {
        match self {
            HostAnswer::HostError(m) => Some(m),
            _ => None,
        }
    }

    /// The response: status, `x-wasm-run-outcome` (for the outcomes of the
    /// table), and `{"error": outcome, "message": ...}`.
    pub(crate) fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.outcome(), "message": self.message() });
        let mut response = Response::new(full(format!("{body}\n")));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if !matches!(self, HostAnswer::NotFound(_) | HostAnswer::HostError(_)) {
            headers.insert(OUTCOME_HEADER, HeaderValue::from_static(self.outcome()));
        }
        if matches!(self, HostAnswer::Overloaded(_)) {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A complete body from bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Whether the guest finished cleanly, reported when its task ends.
pub(crate) type Verdict = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Wraps a streamed guest body: when the stream ends, waits for the guest's
/// task to finish and turns the end into an error if the guest was killed,
/// so that hyper aborts the response instead of ending it cleanly.
pub(crate) struct GuardedBody<B> {
    /// Frames already read from `inner` (while coalescing), sent first.
    prefix: std::collections::VecDeque<Frame<Bytes>>,
    inner: B,
    verdict: Option<Verdict>,
    /// Bytes still to come when the response declares a Content-Length:
    /// hyper ends the message by itself once they are sent, so the frame
    /// that completes it is held back until the verdict is known.
    remaining: Option<u64>,
    held: Option<Frame<Bytes>>,
}

impl<B> std::fmt::Debug for GuardedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedBody")
            .field("remaining", &self.remaining)
            .field("held", &self.held.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> GuardedBody<B> {
    /// Guards `inner` with the task's verdict (`true`: finished cleanly);
    /// `content_length` is the response's declared length, if any.
    pub(crate) fn new(inner: B, verdict: Verdict, content_length: Option<u64>) -> Self {
        GuardedBody {
            prefix: std::collections::VecDeque::new(),
            inner,
            verdict: Some(verdict),
            remaining: content_length,
            held: None,
        }
    }

    /// Sends `frames` (already read from `inner`) before the rest of it.
    pub(crate) fn prefixed(mut self, frames: impl IntoIterator<Item = Frame<Bytes>>) -> Self {
        self.prefix.extend(frames);
        self
    }
}

/// Removes from a guest's response head what a guest must not send: the
/// hop-by-hop headers (the host owns the connection) and the host's own
/// outcome header (its absence means the guest answered). `Trailer` stays:
/// it is end-to-end (RFC 9110 §6.6.2), and the trailer fields it declares
/// are the only ones hyper sends after a chunked body.
pub(crate) fn sanitize_guest_headers(headers: &mut http::HeaderMap) {
    use http::header;
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .filter(|n| !n.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection", OUTCOME_HEADER] {
        headers.remove(name);
    }
}

/// A guest's trailers pass the same filter as its head: no hop-by-hop
/// fields and no `x-wasm-run-outcome`, whose presence means the host
/// answered.
fn sanitize_trailers(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            sanitize_guest_headers(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

/// How long a response head is held back to gather the body that follows
/// it, so that a small response goes out in one write.
pub(crate) const COALESCE_WINDOW: std::time::Duration = std::time::Duration::from_millis(1);

/// Most body bytes gathered before the head is sent.
const COALESCE_MAX: usize = 64 * 1024;

/// What [`coalesce`] made of a guest's response.
#[derive(Debug)]
pub(crate) enum Coalesced {
    /// The guest finished its body and ended cleanly within the window: a
    /// complete response with an exact Content-Length.
    Complete(Response<Body>),
    /// The guest finished its body but was then killed (or its body failed)
    /// before the head was sent: the caller answers for the host instead.
    Killed,
    /// Still running: the head, then the gathered body and the rest,
    /// guarded so that a later kill aborts it.
    Streaming(Response<Body>),
}

/// Holds a guest's response head for up to [`COALESCE_WINDOW`] while its
/// body arrives. Small responses become one complete message (one write,
/// no chunked encoding); others start streaming when the window closes.
pub(crate) async fn coalesce<B>(
    parts: http::response::Parts,
    mut body: B,
    mut verdict: Verdict,
) -> Coalesced
where
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BodyError>,
{
    let window = tokio::time::sleep(COALESCE_WINDOW);
    tokio::pin!(window);
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut size = 0;
    let mut ended = false;
    while size < COALESCE_MAX {
        tokio::select! {
            biased;
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    size += frame.data_ref().map_or(0, Bytes::len);
                    frames.push(frame);
                }
                Some(Err(_)) => return Coalesced::Killed,
                None => {
                    ended = true;
                    break;
                }
            },
            () = &mut window => break,
        }
    }
    let all_data = frames.iter().all(Frame::is_data);
    if ended && all_data {
        let deadline = window.deadline();
        match tokio::time::timeout_at(deadline, &mut verdict).await {
            Ok(true) => {
                let mut bytes = bytes::BytesMut::with_capacity(size);
                for frame in frames {
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
                let mut response = Response::from_parts(parts, full(bytes.freeze()));
                response.headers_mut().remove(http::header::CONTENT_LENGTH);
                return Coalesced::Complete(response);
            }
            Ok(false) => return Coalesced::Killed,
            Err(_) => {}
        }
    }
    let length = content_length(&parts.headers);
    let guarded = GuardedBody::new(body, verdict, length).prefixed(frames);
    Coalesced::Streaming(Response::from_parts(parts, guarded.boxed_unsync()))
}

/// The declared Content-Length of a response head, if valid.
pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The error that aborts a response whose guest was killed mid-body.
#[derive(Debug, thiserror::Error)]
#[error("the guest was killed after sending the response head; response aborted")]
pub(crate) struct Aborted;

impl<B> HttpBody for GuardedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.held.is_none() {
            let next = match self.prefix.pop_front() {
                Some(frame) => Some(Ok(frame)),
                None => ready!(Pin::new(&mut self.inner).poll_frame(cx)),
            };
            match next {
                Some(Ok(frame)) => {
                    let frame = sanitize_trailers(frame);
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    match self.remaining {
                        Some(left) if len > 0 && len >= left => {
                            self.remaining = Some(0);
                            self.held = Some(frame);
                        }
                        Some(left) => {
                            self.remaining = Some(left - len);
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        None => return Poll::Ready(Some(Ok(frame))),
                    }
                }
                Some(Err(e)) => {
                    self.verdict = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {}
            }
        }
        let Some(verdict) = self.verdict.as_mut() else {
            return Poll::Ready(self.held.take().map(Ok));
        };
        let clean = ready!(verdict.as_mut().poll(cx));
        self.verdict = None;
        if clean {
            Poll::Ready(self.held.take().map(Ok))
        } else {
            self.held = None;
            Poll::Ready(Some(Err(Box::new(Aborted))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[test]
    fn a_guests_trailers_cannot_carry_the_outcome_header() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert(OUTCOME_HEADER, HeaderValue::from_static("exited"));
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        let frame = sanitize_trailers(Frame::trailers(trailers));
        let trailers = frame.into_trailers().expect("still trailers");
        assert!(trailers.get(OUTCOME_HEADER).is_none());
        assert_eq!(trailers["x-checksum"], "abc");
        let data = sanitize_trailers(Frame::data(Bytes::from_static(b"x")));
        assert_eq!(data.into_data().unwrap(), "x");
    }

    #[test]
    fn statuses_and_headers_follow_the_table() {
        let cases = [
            (
                HostAnswer::Killed(OutcomeKind::FuelExhausted, String::new()),
                500,
                Some("fuel_exhausted"),
            ),
            (
                HostAnswer::Killed(OutcomeKind::MemoryExceeded, String::new()),
                500,
                Some("memory_exceeded"),
            ),
            (
                HostAnswer::Killed(
                    OutcomeKind::Trapped(crate::Trap::new(crate::TrapReason::Other, "x")),
                    String::new(),
                ),
                500,
                Some("trapped"),
            ),
            (
                HostAnswer::Killed(OutcomeKind::DeadlineExceeded, String::new()),
                504,
                Some("deadline_exceeded"),
            ),
            (HostAnswer::BodyTooLarge(10), 413, Some("body_too_large")),
            (
                HostAnswer::BadGateway("no head".into()),
                502,
                Some("bad_gateway"),
            ),
            (HostAnswer::NotFound("/x".into()), 404, None),
            (
                HostAnswer::Overloaded("full".into()),
                503,
                Some("overloaded"),
            ),
        ];
        for (answer, status, header) in cases {
            let r = answer.into_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(
                r.headers().get(OUTCOME_HEADER).map(|v| v.to_str().unwrap()),
                header
            );
            assert_eq!(r.headers()["content-type"], "application/json");
        }
    }

    /// A verdict the test gives.
    fn verdict_channel() -> (oneshot::Sender<bool>, Verdict) {
        let (tx, rx) = oneshot::channel();
        (tx, Box::pin(async move { rx.await.unwrap_or(false) }))
    }

    /// A guarded body of `chunks`, then its end.
    fn chunks(
        chunks: &[&'static [u8]],
        verdict: Verdict,
        length: Option<u64>,
    ) -> GuardedBody<http_body_util::Empty<Bytes>> {
        GuardedBody::new(http_body_util::Empty::new(), verdict, length)
            .prefixed(chunks.iter().map(|c| Frame::data(Bytes::from_static(c))))
    }

    /// What one poll of a body gives when it is ready.
    type Polled<B> = Option<Result<Frame<<B as HttpBody>::Data>, <B as HttpBody>::Error>>;

    /// Polls `body` once: `None` while it is pending.
    fn poll_once<B: HttpBody + Unpin>(body: &mut B) -> Option<Polled<B>> {
        let waker = std::task::Waker::noop();
        match Pin::new(body).poll_frame(&mut Context::from_waker(waker)) {
            Poll::Ready(frame) => Some(frame),
            Poll::Pending => None,
        }
    }

    #[test]
    fn the_frame_that_completes_a_declared_length_waits_for_the_verdict() {
        for clean in [true, false] {
            let (tx, verdict) = verdict_channel();
            let mut body = chunks(&[b"abcd", b"efghij"], verdict, Some(10));
            // The first frame leaves 6 bytes to come: it goes out at once.
            let first = poll_once(&mut body).unwrap().unwrap().unwrap();
            assert_eq!(first.into_data().unwrap(), "abcd");
            // The last would let hyper end the response: it waits.
            assert!(poll_once(&mut body).is_none());
            assert!(poll_once(&mut body).is_none());
            tx.send(clean).unwrap();
            let last = poll_once(&mut body).unwrap().unwrap();
            if clean {
                assert_eq!(last.unwrap().into_data().unwrap(), "efghij");
                assert!(poll_once(&mut body).unwrap().is_none());
            } else {
                // A killed guest's response is aborted, never completed.
                assert!(last.unwrap_err().is::<Aborted>());
            }
        }
    }

    #[test]
    fn without_a_declared_length_frames_flow_and_the_end_waits() {
        let (tx, verdict) = verdict_channel();
        let mut body = chunks(&[b"ab", b"cd"], verdict, None);
        assert!(poll_once(&mut body).unwrap().is_some());
        assert!(poll_once(&mut body).unwrap().is_some());
        assert!(
            poll_once(&mut body).is_none(),
            "the end waits for the verdict"
        );
        tx.send(false).unwrap();
        assert!(
            poll_once(&mut body)
                .unwrap()
                .unwrap()
                .unwrap_err()
                .is::<Aborted>()
        );
    }

    #[test]
    fn guests_cannot_send_hop_by_hop_or_outcome_headers() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
            (OUTCOME_HEADER, "exited"),
            ("content-type", "text/plain"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        sanitize_guest_headers(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }
}
