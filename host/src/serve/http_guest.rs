//! Serving one request with a wasi:http component: the request handed to
//! `wasi:http/incoming-handler.handle` in a fresh store
//! ([`crate::Guest::handle_http`]), the response head returned as soon as
//! the guest sets it and the body streamed while the guest keeps running in
//! its own task.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;

use super::guest_log::GuestLog;
use super::guest_task::{Exchange, GuestTask};
use super::request_body::{BodyTimedOut, BodyTooLarge};
use super::response::{Body, HostAnswer};
use crate::admission::Permit;
use crate::{Invocation, Output};

/// Handles one request with the route's wasi:http guest.
pub(crate) async fn handle<B>(
    exchange: Exchange<'_>,
    request: Request<B>,
    permit: Permit,
) -> Response<Body>
where
    B: HttpBody<Data = Bytes, Error = Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let route = exchange.route;
    let log = |name| {
        Output::Sink(Box::new(GuestLog::new(
            exchange.record.id.clone(),
            name,
            route.log_cap,
        )))
    };
    let invocation = Invocation {
        env: route.spec.env.clone(),
        dirs: route.spec.dirs.clone(),
        stdout: log("stdout"),
        stderr: log("stderr"),
        limits: route.spec.limits.clone(),
        outbound: route.outbound.clone(),
        priority: exchange.priority,
        trace: exchange.record.invocation_trace(),
        ..Invocation::default()
    };
    let request = request.map(|body| body.map_err(to_wasi_http_error));
    let call = match route.guest.handle_http_request(request, invocation) {
        Ok(call) => call,
        Err(e) => return exchange.answer(HostAnswer::HostError(e.to_string())),
    };
    let task = GuestTask::spawn(call.run, &exchange, permit);
    match call.response.await {
        Ok(Ok(response)) => {
            let (head, body) = response.into_parts();
            exchange.respond(task, head, body).await
        }
        Ok(Err(code)) => {
            let message = format!("the guest answered with the wasi:http error code {code:?}");
            exchange.fail(task, message).await
        }
        Err(_) => {
            let message = "the guest returned without sending a response".to_string();
            exchange.fail(task, message).await
        }
    }
}

fn to_wasi_http_error(e: Box<dyn std::error::Error + Send + Sync>) -> wasmtime_wasi_http::Error {
    let e = match e.downcast::<BodyTooLarge>() {
        Ok(too_large) => return wasmtime_wasi_http::Error::HttpRequestBodySize(Some(too_large.0)),
        Err(e) => e,
    };
    let e = match e.downcast::<BodyTimedOut>() {
        Ok(_) => return wasmtime_wasi_http::Error::ConnectionReadTimeout,
        Err(e) => e,
    };
    crate::http_call::body_error(e)
}
