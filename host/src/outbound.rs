//! Outgoing HTTP from wasi:http guests: denied unless the route allows the
//! destination host.
//!
//! A denied request reaches the guest as the wasi:http error code
//! `HTTP-request-denied` (the guest decides what to answer); it is not a
//! trap. Allowed requests run inside the request's deadline like any other
//! host call.

use std::future::Future;
use std::sync::Arc;

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

/// Which hosts a guest may send HTTP requests to.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    /// Lower-case host names (optionally `host:port`); `*` allows any host.
    /// Empty (the default) denies every outgoing request.
    allowed: Arc<[String]>,
}

impl OutboundPolicy {
    /// Allows requests to these hosts (`example.com`, `api.example.com:8443`,
    /// or `*` for any host).
    pub fn allow(hosts: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        OutboundPolicy {
            allowed: hosts
                .into_iter()
                .map(|h| h.as_ref().trim().to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a request to `uri` is allowed.
    pub fn permits(&self, uri: &http::Uri) -> bool {
        let Some(host) = uri.host().map(str::to_ascii_lowercase) else {
            return false;
        };
        let with_port = uri.port_u16().map(|p| format!("{host}:{p}"));
        self.allowed
            .iter()
            .any(|a| a == "*" || *a == host || with_port.as_deref() == Some(a.as_str()))
    }
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _io: IoFuture,
    ) -> SendFuture {
        if !self.permits(request.uri()) {
            tracing::info!(uri = %request.uri(), "outgoing HTTP request denied");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as IoFuture,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_by_default_and_allows_listed_hosts() {
        let uri: http::Uri = "http://example.com/x".parse().unwrap();
        assert!(!OutboundPolicy::default().permits(&uri));
        assert!(OutboundPolicy::allow(["Example.COM"]).permits(&uri));
        assert!(!OutboundPolicy::allow(["other.com"]).permits(&uri));
        assert!(OutboundPolicy::allow(["*"]).permits(&uri));
        let with_port: http::Uri = "http://example.com:8443/".parse().unwrap();
        assert!(OutboundPolicy::allow(["example.com:8443"]).permits(&with_port));
        assert!(!OutboundPolicy::allow(["example.com:80"]).permits(&with_port));
    }
}
