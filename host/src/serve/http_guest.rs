//! Serving one request with a wasi:http component: a fresh store, the
//! request handed to `wasi:http/incoming-handler.handle`, the response head
//! returned as soon as the guest sets it and the body streamed while the
//! guest keeps running in its own task.

use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::RouteRuntime;
use super::admission::Permit;
use super::body_answer;
use super::guest_log::GuestLog;
use super::record::Record;
use super::request_body::{BodyFlag, BodyTimedOut, BodyTooLarge};
use super::response::{Body, Coalesced, HostAnswer, coalesce, sanitize_guest_headers};
use crate::OutcomeKind;
use crate::invoke::{Failure, conclude, wasi_builder, with_deadline};
use crate::io::{self, Output, Stream};
use crate::store::{StoreState, new_store};

/// Handles one request with the wasi:http guest `pre` of `route`.
pub(crate) async fn handle<B>(
    route: &RouteRuntime,
    pre: &ProxyPre<StoreState>,
    request: Request<B>,
    body_flag: BodyFlag,
    record: Record,
    permit: Permit,
) -> Response<Body>
where
    B: HttpBody<Data = Bytes, Error = Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let started = Instant::now();
    let guest = route.guest.clone();
    let limits = route.spec.limits.clone();
    let mut builder = match wasi_builder(guest.name(), None, &[], &route.spec.env, &route.spec.dirs)
    {
        Ok(b) => b,
        Err(e) => return record.answer(HostAnswer::HostError(e.to_string())),
    };
    let log_cap = route.log_cap;
    for (which, name) in [(Stream::Stdout, "stdout"), (Stream::Stderr, "stderr")] {
        let log = GuestLog::new(record.id.clone(), name, log_cap);
        io::set_output(&mut builder, which, Output::Sink(Box::new(log)), 0);
    }
    let state = StoreState::new(
        builder.build_p1(),
        route.outbound.clone(),
        limits.max_memory,
    );
    let mut store = new_store(&guest.inner.engine, state, &limits, started);

    let request = request.map(|body| body.map_err(to_wasi_http_error));
    let incoming = match store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
    {
        Ok(r) => r,
        Err(e) => {
            return record.answer(HostAnswer::HostError(format!(
                "cannot pass the request to the guest: {e:#}"
            )));
        }
    };
    let (head_tx, head_rx) = oneshot::channel();
    let outparam = match store.data_mut().http().new_response_outparam(head_tx) {
        Ok(o) => o,
        Err(e) => return record.answer(HostAnswer::HostError(format!("{e:#}"))),
    };

    let (verdict_tx, verdict_rx) = oneshot::channel::<bool>();
    let (done_tx, done_rx) = oneshot::channel::<Finished>();
    let task_record = record.clone();
    let task_body_flag = body_flag.clone();
    let pre = pre.clone();
    let engine = guest.inner.engine.clone();
    tokio::spawn(async move {
        let invocation = async move {
            let call = async {
                let proxy = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(Failure::Instantiating)?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
                    .map_err(Failure::Running)?;
                Ok(0)
            };
            let result = with_deadline(&limits, started, call).await;
            let concluded = conclude(&guest, &store, &limits, started, result);
            drop(store);
            concluded
        };
        let (concluded, cpu_time) = engine.scheduler().run(invocation).await;
        let finished = match concluded {
            Ok((kind, mut usage)) => {
                usage.cpu_time = cpu_time;
                task_record.set_outcome(kind.clone(), usage);
                Finished::Outcome(kind)
            }
            Err(crate::Error::Capacity { .. }) => Finished::Overloaded,
            Err(e) => Finished::HostError(e.to_string()),
        };
        drop(permit);
        let clean = matches!(finished, Finished::Outcome(OutcomeKind::Exited(0)))
            && !task_body_flag.is_set();
        let _ = verdict_tx.send(clean);
        let _ = done_tx.send(finished);
    });

    match head_rx.await {
        Ok(Ok(response)) => {
            if body_flag.is_set() {
                return answer(&record, &body_flag, route, Finished::Lost, String::new);
            }
            if response.status().is_informational() {
                let status = response.status().as_u16();
                return record.answer(HostAnswer::BadGateway(format!(
                    "the guest responded with the informational status {status}, which cannot \
                     end a response"
                )));
            }
            let (mut parts, body) = response.into_parts();
            sanitize_guest_headers(&mut parts.headers);
            let status = parts.status;
            match coalesce(parts, body, verdict_rx).await {
                Coalesced::Complete(response) | Coalesced::Streaming(response) => {
                    record.set_status(status);
                    response
                }
                Coalesced::Killed => {
                    let finished = done_rx.await.unwrap_or(Finished::Lost);
                    answer(&record, &body_flag, route, finished, || {
                        "the guest's response body failed".to_string()
                    })
                }
            }
        }
        Ok(Err(code)) => {
            let finished = done_rx.await.unwrap_or(Finished::Lost);
            answer(&record, &body_flag, route, finished, || {
                format!("the guest answered with the wasi:http error code {code:?}")
            })
        }
        Err(_) => {
            let finished = done_rx.await.unwrap_or(Finished::Lost);
            answer(&record, &body_flag, route, finished, || {
                "the guest returned without sending a response".to_string()
            })
        }
    }
}

/// How the guest's task ended.
enum Finished {
    Outcome(OutcomeKind),
    HostError(String),
    /// No free instance slot: answered 503 like a full memory budget.
    Overloaded,
    /// The task panicked (a host bug); answered as a host error.
    Lost,
}

fn answer(
    record: &Record,
    body_flag: &BodyFlag,
    route: &RouteRuntime,
    finished: Finished,
    no_response: impl FnOnce() -> String,
) -> Response<Body> {
    let answer = match body_flag.fault() {
        Some(fault) => body_answer(route, fault),
        None => match finished {
            Finished::Outcome(OutcomeKind::Exited(_)) => HostAnswer::BadGateway(no_response()),
            Finished::Outcome(kind) => {
                let message = kill_message(&kind);
                HostAnswer::Killed(kind, message)
            }
            Finished::HostError(m) => HostAnswer::HostError(m),
            Finished::Overloaded => HostAnswer::Overloaded(CAPACITY_MESSAGE.into()),
            Finished::Lost => HostAnswer::HostError("the request's task failed".into()),
        },
    };
    record.answer(answer)
}

/// What a client is told when no instance slot was free.
pub(crate) const CAPACITY_MESSAGE: &str =
    "the host has no free instance slot for this request; retry later";

/// The message of an error body for a killed guest.
pub(crate) fn kill_message(kind: &OutcomeKind) -> String {
    match kind {
        OutcomeKind::FuelExhausted => "the request ran out of fuel".into(),
        OutcomeKind::MemoryExceeded => "the request tried to grow its memory past its cap".into(),
        OutcomeKind::DeadlineExceeded => "the request did not finish within its deadline".into(),
        OutcomeKind::Trapped(m) => format!("the guest trapped: {m}"),
        OutcomeKind::Exited(code) => format!("the guest exited with code {code}"),
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
    match e.downcast::<hyper::Error>() {
        Ok(hyper) => wasmtime_wasi_http::Error::Hyper(*hyper),
        Err(other) => wasmtime_wasi_http::Error::InternalError(Some(other.to_string())),
    }
}
