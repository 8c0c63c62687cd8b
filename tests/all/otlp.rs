//! Traces (`--otlp-endpoint`): a real OTLP/HTTP receiver on loopback,
//! which decodes what the server sends with opentelemetry-proto's own
//! message definitions, sees a span per request — served, killed, with an
//! allowed and a denied outgoing request — the caller's trace continued,
//! and the trace context arriving at the upstream the guest called; with
//! the receiver gone, requests are served as before and the spans are
//! dropped and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use wasm_run_tests::{Target, guest, http_guest};

use crate::serve::{ServeGuard, eventually, get, send};

/// A loopback HTTP server that answers every request with `reply` and
/// keeps each request's headers and body.
struct Peer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn peer(reply: &'static [u8]) -> Peer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let kept = kept.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = BodyExt::collect(body)
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        kept.lock().unwrap().push((parts.headers, body));
                        Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from_static(
                            reply,
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Peer { addr, seen, task }
}

/// Every span the receiver got so far, decoded as OTLP.
fn spans(receiver: &Peer) -> Vec<Span> {
    receiver
        .seen
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(headers, body)| {
            assert_eq!(headers["content-type"], "application/x-protobuf");
            let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("valid OTLP");
            request.resource_spans.into_iter().flat_map(|rs| {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.clone()?.value);
                assert_eq!(service, Some(Value::StringValue("wasm-run".into())));
                rs.scope_spans.into_iter().flat_map(|ss| ss.spans)
            })
        })
        .collect()
}

fn attributes(span: &Span) -> HashMap<String, Value> {
    span.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

fn text(value: Option<&Value>) -> &str {
    match value {
        Some(Value::StringValue(s)) => s,
        other => panic!("not a string: {other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until the receiver holds a server span for `path`, and returns it.
async fn server_span(receiver: &Peer, path: &str) -> Span {
    let find = || {
        spans(receiver)
            .into_iter()
            .rev()
            .find(|s| s.kind == 2 && text(attributes(s).get("url.path")) == path)
    };
    eventually(Duration::from_secs(20), "the request's span", || {
        let found = find().is_some();
        async move { found }
    })
    .await;
    find().unwrap()
}

#[tokio::test]
async fn requests_are_traced_end_to_end_into_the_guests_calls() {
    let receiver = peer(b"").await;
    let upstream = peer(b"from upstream").await;
    let endpoint = format!("http://{}/v1/traces", receiver.addr);
    let allowed = upstream.addr.to_string();
    let server = ServeGuard::serving(
        &http_guest(),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--allow-outbound",
            &allowed,
            "--fuel",
            "50000000",
        ],
    );

    // A caller's trace, continued; the guest's call carries it on, with a
    // forged traceparent of the guest's own replaced.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let forged = "00-11111111111111111111111111111111-2222222222222222-01";
    let url = format!(
        "/outbound?url=http://{}/call&traceparent={forged}",
        upstream.addr
    );
    let request = http::Request::get(&url)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(server.addr, request).await;
    assert_eq!(reply.text(), "outbound ok: 200\n");
    let sent = upstream.seen.lock().unwrap()[0].0.clone();
    let sent = sent["traceparent"].to_str().unwrap().to_string();
    assert!(
        sent.starts_with(&format!("00-{caller_trace}-")) && sent.ends_with("-01"),
        "the upstream got the caller's trace, not the guest's forgery: {sent}"
    );

    let span = server_span(&receiver, "/outbound").await;
    assert_eq!(hex(&span.trace_id), caller_trace);
    assert_eq!(hex(&span.parent_span_id), caller_span);
    let a = attributes(&span);
    assert_eq!(text(a.get("http.route")), "/");
    assert_eq!(text(a.get("wasm_run.outcome")), "exited");
    assert_eq!(text(a.get("wasm_run.guest_kind")), "wasi:http");
    assert_eq!(
        a.get("http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    for usage in [
        "wasm_run.fuel",
        "wasm_run.cpu_us",
        "wasm_run.peak_memory_bytes",
    ] {
        assert!(
            matches!(a.get(usage), Some(Value::IntValue(n)) if *n > 0),
            "{usage}: {a:?}"
        );
    }
    // The phases: admission, then instantiation; the response head and the
    // guest's end come in either order (a guest may end as its head goes).
    let events: Vec<&str> = span.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        events[..3],
        ["admitted", "instantiating", "instantiated"],
        "{events:?}"
    );
    let mut rest = events[3..].to_vec();
    rest.sort();
    assert_eq!(rest, ["guest ended", "response head"], "{events:?}");
    assert!(
        matches!(a.get("wasm_run.instantiate_us"), Some(Value::IntValue(n)) if *n > 0),
        "{a:?}"
    );
    // The outgoing request: a client span, the child the upstream saw.
    let all = spans(&receiver);
    let call = all
        .iter()
        .find(|s| s.kind == 3 && s.parent_span_id == span.span_id)
        .expect("a client span for the guest's request");
    assert_eq!(sent, format!("00-{caller_trace}-{}-01", hex(&call.span_id)));
    assert_eq!(
        attributes(call).get("http.response.status_code"),
        Some(&Value::IntValue(200))
    );

    // A killed request: its span says how, with an error status.
    let killed = get(server.addr, "/spin").await;
    assert_eq!(killed.status, 500);
    let span = server_span(&receiver, "/spin").await;
    assert_ne!(hex(&span.trace_id), caller_trace, "a new trace");
    assert!(span.parent_span_id.is_empty());
    let a = attributes(&span);
    assert_eq!(text(a.get("wasm_run.outcome")), "fuel_exhausted");
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(2), "error");

    // A denied outgoing request: a client span that says so.
    let denied = get(server.addr, "/outbound?url=http://169.254.169.254/latest").await;
    assert!(
        denied.text().contains("HttpRequestDenied"),
        "{}",
        denied.text()
    );
    let span = server_span(&receiver, "/outbound").await;
    let _ = span;
    eventually(Duration::from_secs(20), "the denied call's span", || {
        let denied = spans(&receiver).into_iter().any(|s| {
            s.kind == 3
                && attributes(&s).get("wasm_run.outbound.denied") == Some(&Value::BoolValue(true))
        });
        async move { denied }
    })
    .await;

    // The log line leads to the trace.
    let (_, stderr) = server.terminate(Duration::from_secs(30)).await;
    assert!(
        stderr.contains(&format!("trace_id={caller_trace}")),
        "the request's log line names its trace: {stderr}"
    );
}

#[tokio::test]
async fn a_collector_that_is_down_costs_requests_nothing() {
    // A port nothing listens on: every export fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/v1/traces", closed.local_addr().unwrap());
    drop(closed);
    let server = ServeGuard::serving(
        &guest("demo", Target::P1),
        &["--otlp-endpoint", &endpoint, "--admin-addr", "127.0.0.1:0"],
    );
    for _ in 0..20 {
        let reply = get(server.addr, "/hello").await;
        assert_eq!(reply.status, 200);
    }
    // Every span is dropped and counted (20 spans; the exporter sends
    // them in a batch or more, each failing at once).
    let admin = server.admin();
    eventually(
        Duration::from_secs(20),
        "the dropped spans counted",
        || async move {
            let text = get(admin, "/metrics").await.text().to_string();
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("wasm_run_trace_spans_dropped_total{reason=\"export_failed\"} ")
                })
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n >= 20)
        },
    )
    .await;
}

/// A WASI 0.3 guest's outgoing requests carry the trace on too.
#[tokio::test]
async fn a_wasi_0_3_guests_calls_carry_the_trace() {
    let receiver = peer(b"").await;
    let upstream = peer(b"from upstream").await;
    let endpoint = format!("http://{}/v1/traces", receiver.addr);
    let allowed = upstream.addr.to_string();
    let server = ServeGuard::serving(
        &wasm_run_tests::p3_http_guest(),
        &["--otlp-endpoint", &endpoint, "--allow-outbound", &allowed],
    );
    let reply = get(
        server.addr,
        &format!("/proxy?url=http://{}/", upstream.addr),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let span = server_span(&receiver, "/proxy").await;
    let sent = upstream.seen.lock().unwrap()[0].0["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let trace = hex(&span.trace_id);
    assert!(
        sent.starts_with(&format!("00-{trace}-")),
        "{sent} in trace {trace}"
    );
    assert!(
        !sent.contains(&hex(&span.span_id)),
        "a child span of its own"
    );
}
