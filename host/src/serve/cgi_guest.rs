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

use super::cgi::{self, CgiHeadParser, RequestMeta};
use super::guest_log::GuestLog;
use super::guest_task::{ConnInfo, Exchange, GuestTask};
use super::request_body::BodyReader;
use super::response::{Body, HostAnswer};
use crate::admission::Permit;
use crate::{Input, Invocation, Output};

/// Bytes of guest stdout buffered between the guest and the client.
const PIPE_BYTES: usize = 64 * 1024;

/// Handles one request by running the route's command guest as CGI.
pub(crate) async fn handle<B>(
    exchange: Exchange<'_>,
    request: Request<B>,
    conn: ConnInfo,
    permit: Permit,
) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let route = exchange.route;
    let (parts, body) = request.into_parts();
    let meta = request_meta(&route.spec.prefix, &parts, conn);
    let mut env = route.spec.env.clone();
    env.extend(cgi::meta_variables(&meta));

    let (stdout_writer, mut stdout) = tokio::io::duplex(PIPE_BYTES);
    let invocation = Invocation {
        env,
        dirs: route.spec.dirs.clone(),
        stdin: Input::Reader(Box::new(BodyReader::new(body))),
        stdout: Output::Writer(Box::new(stdout_writer)),
        stderr: Output::Sink(Box::new(GuestLog::new(
            exchange.record.id.clone(),
            "stderr",
            route.log_cap,
        ))),
        limits: route.spec.limits.clone(),
        outbound: route.outbound.clone(),
        priority: exchange.priority,
        trace: exchange.record.invocation_trace(),
        ..Invocation::default()
    };
    let guest = route.guest.clone();
    let run = async move { guest.run(invocation).await };
    let task = GuestTask::spawn(run, &exchange, permit);

    match read_head(&mut stdout).await {
        Ok(mut head) => {
            let body = StdoutBody {
                first: Some(std::mem::take(&mut head.body_start)),
                pipe: stdout,
                buf: vec![0; 16 * 1024],
            };
            exchange.respond(task, response_head(head), body).await
        }
        Err(NoHead::Gone(what)) => exchange.fail(task, what).await,
        // An invalid head: stop reading; the guest's further writes fail.
        Err(NoHead::Invalid(what)) => {
            drop(stdout);
            exchange.answer(HostAnswer::BadGateway(what))
        }
    }
}

/// Why the guest's stdout gave no CGI head.
enum NoHead {
    /// Stdout ended (the guest is gone) before a head was complete.
    Gone(String),
    /// The head is invalid.
    Invalid(String),
}

/// Reads the guest's stdout until its CGI head is complete, the head is
/// invalid, or the guest is gone.
async fn read_head(stdout: &mut DuplexStream) -> Result<cgi::ParsedHead, NoHead> {
    let mut parser = CgiHeadParser::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        buf.clear();
        if matches!(stdout.read_buf(&mut buf).await, Ok(0) | Err(_)) {
            let what = match parser.finish() {
                Err(e) => e.to_string(),
                Ok(_) => "no CGI response head".to_string(),
            };
            return Err(NoHead::Gone(what));
        }
        match parser.push(&buf) {
            Ok(None) => {}
            Ok(Some(head)) => return Ok(head),
            Err(e) => return Err(NoHead::Invalid(e.to_string())),
        }
    }
}

/// The response head a CGI head makes: its status and headers, and
/// `Content-Type: text/plain` for a redirect that names none.
fn response_head(head: cgi::ParsedHead) -> http::response::Parts {
    let mut response = Response::new(());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    if !response.headers().contains_key(header::CONTENT_TYPE)
        && response.headers().contains_key(header::LOCATION)
    {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response.into_parts().0
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
