//! A wasi:http invocation's two ends: what the caller gets ([`HttpCall`]:
//! the response as soon as the guest sets it, and the future that runs the
//! guest), and, for WASI 0.3, the call of `wasi:http/handler.handle` inside
//! the store's event loop with its response body held to the request's
//! deadline.

use http_body_util::BodyExt as _;
use wasmtime::Store;

use crate::error::Result;
use crate::outcome::Outcome;
use crate::store::StoreState;

/// A wasi:http guest handling one request; see [`crate::Guest::handle_http`].
pub struct HttpCall {
    /// The response head the guest sets (its body streams from the running
    /// guest), or the wasi:http error code it answered with. Closed without
    /// a value when the guest ended without answering.
    pub response: tokio::sync::oneshot::Receiver<std::result::Result<HttpResponse, HttpErrorCode>>,
    /// Runs the guest to its end. Nothing happens until it is polled; the
    /// response only arrives, and its body only streams, while it runs.
    pub run: std::pin::Pin<Box<dyn std::future::Future<Output = Result<Outcome>> + Send>>,
}

impl std::fmt::Debug for HttpCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCall").finish_non_exhaustive()
    }
}

/// A response set by a wasi:http guest.
pub type HttpResponse = http::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>;

/// The error a wasi:http guest may answer with instead of a response (its
/// `error-code`, of either WASI generation), and what a response body fails
/// with.
pub use wasmtime_wasi_http::Error as HttpErrorCode;

/// A WASI 0.3 request for `wasi:http/handler.handle`; the response (or
/// error code) goes to `response_tx`.
pub(crate) struct P3Call {
    pub(crate) request: wasmtime_wasi_http::p3::Request,
    /// Resolves when the host has read the request body (or failed to):
    /// what the guest learns from the response's transmit future.
    pub(crate) body_result: BodyResult,
    pub(crate) response_tx: ResponseSender,
    /// The request's deadline, which its response body keeps after the
    /// store is gone (see [`UntilDeadline`]), rung by the engine's ticker.
    pub(crate) deadline: Option<crate::ticker::AlarmAt>,
}

impl P3Call {
    /// Calls `handle` inside the store's event loop, sends its response as
    /// soon as it returns, and keeps the store until the guest's last task
    /// exits (so a body written after the return streams out).
    pub(crate) async fn call(
        self,
        store: &mut Store<StoreState>,
        service: wasmtime_wasi_http::p3::bindings::Service,
    ) -> wasmtime::Result<()> {
        let P3Call {
            request,
            body_result,
            response_tx,
            deadline,
        } = self;
        store
            .run_concurrent(async |store| {
                let response = match service.handle(store, request).await? {
                    Ok(response) => Ok(store
                        .with(|s| response.into_http(s, body_result))?
                        .map(|body| UntilDeadline::new(body, deadline).boxed_unsync())),
                    Err(code) => Err(HttpErrorCode::from(code)),
                };
                // A receiver gone (the host stopped waiting) is no error.
                let _ = response_tx.send(response);
                std::future::poll_fn(|cx| store.poll_no_interesting_tasks(cx)).await;
                wasmtime::Result::<()>::Ok(())
            })
            .await?
    }
}

/// A WASI 0.3 response body that fails once its request's deadline has
/// passed.
///
/// A WASI 0.3 guest may answer with a body the host produces: the body of
/// its own `wasi:http/client.send` response (the proxy pattern), which
/// wasmtime streams from the upstream connection after the guest's store
/// is gone. What the request started must not outlive it: past the
/// deadline the body fails — the client sees a truncated response, never a
/// false end — and is dropped, which aborts the upstream connection's task
/// and closes its socket. A body that ends in time is untouched.
struct UntilDeadline {
    inner: Option<wasmtime_wasi_http::p2::body::HyperOutgoingBody>,
    /// Rung by the engine's ticker (no Tokio timer needed).
    deadline: Option<crate::ticker::AlarmAt>,
}

impl UntilDeadline {
    fn new(
        inner: wasmtime_wasi_http::p2::body::HyperOutgoingBody,
        deadline: Option<crate::ticker::AlarmAt>,
    ) -> UntilDeadline {
        UntilDeadline {
            inner: Some(inner),
            deadline,
        }
    }
}

impl http_body::Body for UntilDeadline {
    type Data = bytes::Bytes;
    type Error = HttpErrorCode;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.inner.is_none() {
            return std::task::Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline.as_mut()
            && std::pin::Pin::new(deadline).poll(cx).is_ready()
        {
            this.inner = None;
            this.deadline = None;
            return std::task::Poll::Ready(Some(Err(HttpErrorCode::ConnectionReadTimeout)));
        }
        let inner = this.inner.as_mut().expect("checked above");
        std::pin::Pin::new(inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}

pub(crate) type BodyResult = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
>;
pub(crate) type ResponseSender =
    tokio::sync::oneshot::Sender<std::result::Result<HttpResponse, HttpErrorCode>>;

/// The wasi:http error a guest sees for a failed request body: hyper's
/// own, or an internal error with the cause's text.
pub(crate) fn body_error(e: Box<dyn std::error::Error + Send + Sync>) -> wasmtime_wasi_http::Error {
    match e.downcast::<hyper::Error>() {
        Ok(hyper) => wasmtime_wasi_http::Error::Hyper(*hyper),
        Err(other) => wasmtime_wasi_http::Error::InternalError(Some(other.to_string())),
    }
}
