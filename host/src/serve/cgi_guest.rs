//! Serving one request with a command guest, CGI-style (RFC 3875, as WAGI
//! does): request meta-variables in the environment, the body streamed to
//! stdin, the response read from stdout — a head parsed by [`super::cgi`],
//! then the body streamed to the client while the guest still runs.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, header};
use http_body::{Body as HttpBody, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, DuplexStream, ReadBuf};
use tokio::sync::oneshot;

use super::admission::Permit;
use super::body_answer;
use super::cgi::{self, CgiHeadParser, RequestMeta};
use super::guest_log::GuestLog;
use super::http_guest::{CAPACITY_MESSAGE, kill_message};
use super::record::Record;
use super::request_body::{BodyFlag, BodyReader};
use super::response::{Body, Coalesced, HostAnswer, coalesce, sanitize_guest_headers};
use super::{ConnInfo, RouteRuntime};
use crate::{Input, Invocation, OutcomeKind, Output};

/// Bytes of guest stdout buffered between the guest and the client.
const PIPE_BYTES: usize = 64 * 1024;

/// Handles one request by running the route's command guest as CGI.
pub(crate) async fn handle<B>(
    route: &RouteRuntime,
    request: Request<B>,
    conn: ConnInfo,
    body_flag: BodyFlag,
    record: Record,
    permit: Permit,
) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let meta = request_meta(&route.spec.prefix, &parts, conn);
    let mut env = route.spec.env.clone();
    env.extend(cgi::meta_variables(&meta));

    let (stdout_writer, mut stdout) = tokio::io::duplex(PIPE_BYTES);
    let invocation = Invocation {
        args: Vec::new(),
        program_name: None,
        env,
        dirs: route.spec.dirs.clone(),
        stdin: Input::Reader(Box::new(BodyReader::new(body))),
        stdout: Output::Writer(Box::new(stdout_writer)),
        stderr: Output::Sink(Box::new(GuestLog::new(
            record.id.clone(),
            "stderr",
            route.log_cap,
        ))),
        limits: route.spec.limits.clone(),
        outbound: route.outbound.clone(),
    };

    let (verdict_tx, verdict_rx) = oneshot::channel::<bool>();
    let (done_tx, done_rx) = oneshot::channel::<Result<OutcomeKind, crate::Error>>();
    let guest = route.guest.clone();
    let task_record = record.clone();
    let task_body_flag = body_flag.clone();
    tokio::spawn(async move {
        let result = match guest.run(invocation).await {
            Ok(outcome) => {
                task_record.set_outcome(outcome.kind.clone(), outcome.usage);
                Ok(outcome.kind)
            }
            Err(e) => Err(e),
        };
        drop(permit);
        let clean = matches!(result, Ok(OutcomeKind::Exited(_))) && !task_body_flag.is_set();
        let _ = verdict_tx.send(clean);
        let _ = done_tx.send(result);
    });

    // Read stdout until the head is complete, the head is invalid, or the
    // guest is gone.
    let mut parser = CgiHeadParser::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let failure = loop {
        buf.clear();
        match stdout.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break parser.finish().err().map(|e| e.to_string()),
            Ok(_) => {}
        }
        match parser.push(&buf) {
            Ok(None) => continue,
            Ok(Some(head)) => {
                if let Some(fault) = body_flag.fault() {
                    return record.answer(body_answer(route, fault));
                }
                if head.status.is_informational() {
                    let message = format!(
                        "the CGI response head has the informational status {}, which cannot \
                         end a response",
                        head.status.as_u16()
                    );
                    return answer(&record, &body_flag, route, HostAnswer::BadGateway(message));
                }
                let mut response = Response::new(());
                *response.status_mut() = head.status;
                *response.headers_mut() = head.headers;
                sanitize_guest_headers(response.headers_mut());
                if !response.headers().contains_key(header::CONTENT_TYPE)
                    && response.headers().contains_key(header::LOCATION)
                {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                }
                let body = StdoutBody {
                    first: Some(head.body_start),
                    pipe: stdout,
                    buf: vec![0; 16 * 1024],
                };
                let (parts, ()) = response.into_parts();
                return match coalesce(parts, body, verdict_rx).await {
                    Coalesced::Complete(response) | Coalesced::Streaming(response) => {
                        record.set_status(head.status);
                        response
                    }
                    Coalesced::Killed => {
                        let killed = match done_rx.await {
                            Ok(Ok(kind)) if !matches!(kind, OutcomeKind::Exited(_)) => {
                                let message = kill_message(&kind);
                                HostAnswer::Killed(kind, message)
                            }
                            _ => HostAnswer::BadGateway("the guest's output failed".into()),
                        };
                        answer(&record, &body_flag, route, killed)
                    }
                };
            }
            // An invalid head: stop reading; the guest's further writes fail.
            Err(e) => {
                drop(stdout);
                return answer(
                    &record,
                    &body_flag,
                    route,
                    HostAnswer::BadGateway(e.to_string()),
                );
            }
        }
    };
    let answer_for = match done_rx.await {
        Ok(Ok(OutcomeKind::Exited(code))) => {
            let what = failure.unwrap_or_else(|| "no CGI response head".into());
            let exit = if code == 0 {
                String::new()
            } else {
                format!(" (the guest exited with code {code})")
            };
            HostAnswer::BadGateway(format!("{what}{exit}"))
        }
        Ok(Ok(kind)) => {
            let message = kill_message(&kind);
            HostAnswer::Killed(kind, message)
        }
        Ok(Err(crate::Error::Capacity { .. })) => HostAnswer::Overloaded(CAPACITY_MESSAGE.into()),
        Ok(Err(host_error)) => HostAnswer::HostError(host_error.to_string()),
        Err(_) => HostAnswer::HostError("the request's task failed".into()),
    };
    answer(&record, &body_flag, route, answer_for)
}

fn answer(
    record: &Record,
    body_flag: &BodyFlag,
    route: &RouteRuntime,
    answer: HostAnswer,
) -> Response<Body> {
    match body_flag.fault() {
        Some(fault) => record.answer(body_answer(route, fault)),
        None => record.answer(answer),
    }
}

fn request_meta(prefix: &str, parts: &http::request::Parts, conn: ConnInfo) -> RequestMeta {
    let (script_name, path_info) = cgi::split_path(prefix, parts.uri.path());
    let header_str = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let server_name = header_str(header::HOST)
        .map(|h| match h.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
            _ => h,
        })
        .unwrap_or_else(|| conn.local.ip().to_string());
    RequestMeta {
        method: parts.method.clone(),
        script_name,
        path_info,
        query_string: parts.uri.query().unwrap_or("").to_string(),
        server_name,
        server_port: conn.local.port(),
        server_protocol: format!("{:?}", parts.version),
        remote_addr: conn.remote.ip(),
        remote_port: conn.remote.port(),
        content_type: header_str(header::CONTENT_TYPE),
        content_length: header_str(header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        headers: parts.headers.clone(),
    }
}

/// The rest of the guest's stdout after the head, as a response body.
struct StdoutBody {
    first: Option<Bytes>,
    pipe: DuplexStream,
    buf: Vec<u8>,
}

impl HttpBody for StdoutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(first) = self.first.take()
            && !first.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let this = &mut *self;
        let mut read = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.pipe).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                let chunk = Bytes::copy_from_slice(read.filled());
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }
}
