//! A `wasi:http/proxy` component for `wasm-run serve`: exports
//! `wasi:http/incoming-handler` and routes on the request path.
//!
//! | path | response |
//! | --- | --- |
//! | `/`, `/hello` | 200 `Hello from wasm-run over wasi:http!` |
//! | `/echo` | 200: the method, the path, each header as `name: value`, a blank line, then the request body streamed through chunk by chunk |
//! | `/spin` | loops forever (fuel) |
//! | `/bomb` | allocates touched 1 MiB chunks forever (memory cap) |
//! | `/fields?kib=K&n=N` | makes host-side `fields` resources, each holding one `K` KiB header (default 15), and keeps them all: with `n` it stops after `N` and answers 200 `made N fields`; without, it never stops (the host's resource cap, or its field-size limit when `K` is larger) |
//! | `/sleep?s=N` | sleeps `N` seconds (a float, default 10) on the monotonic clock, then 200 `slept` (deadline) |
//! | `/crash` | panics before responding (trap) |
//! | `/late-crash` | starts a 200 response, writes and flushes `partial body`, panics 200 ms later without finishing the body |
//! | `/stream?n=N&ms=M` | 200: `N` lines `line i` (default 100), one write and flush each, `M` ms apart (default 0) |
//! | `/status/404` | 404 `not found` |
//! | `/outbound?url=URL` | a GET of `URL` through `wasi:http/outgoing-handler`: 200 `outbound ok: STATUS`, or 502 `outbound error: ERROR` (e.g. `ErrorCode::HttpRequestDenied`) |
//! | `/keep-bodies?n=N&kib=K` | `N` times: makes an outgoing POST request, writes up to `K` KiB (default 2048) into its body as fast as the host takes it, finishes the body and keeps the request without sending it; then 200 `kept N bodies` (host memory held outside linear memory) |
//! | `/outgoing-flood?url=URL&n=N` | starts `N` outgoing GETs of `URL` (default 1000) without waiting for them, then waits on them all: 200 `ok A, failed F` with the first error, e.g. `ConnectionLimitReached` |
//! | `/env` | 200: the environment from `wasi:cli/environment`, sorted `KEY=VALUE` lines |
//! | `/stdout` | prints a line to stdout and one to stderr, then 200 `logged` |
//! | anything else | 404 `no route` |
//!
//! Every body is `text/plain`. Query parameters are split on `&` and `=`, with
//! `+` and `%XX` decoded. Built for `wasm32-wasip2` only.

use std::hint::black_box;
use std::time::Duration;

#[path = "../../query.rs"]
mod query;
use query::{query_param, query_parsed};

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme, StatusCode,
};
use wasi::io::streams::{OutputStream, StreamError};

wasi::http::proxy::export!(Handler);

const MIB: usize = 1 << 20;

/// The most `blocking-write-and-flush` and `blocking-read` take at once.
const CHUNK: usize = 4096;

struct Handler;

impl Guest for Handler {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((&path_with_query, ""));
        // Write errors mean the client is gone: there is no one to tell.
        let _ = match path {
            "/" | "/hello" => respond(response_out, 200, b"Hello from wasm-run over wasi:http!\n"),
            "/echo" => echo(&request, &path_with_query, response_out),
            "/spin" => spin(),
            "/bomb" => bomb(),
            "/fields" => fields(response_out, query),
            "/sleep" => sleep(response_out, query),
            "/crash" => panic!("http guest crash"),
            "/late-crash" => late_crash(response_out),
            "/stream" => stream(response_out, query),
            "/status/404" => respond(response_out, 404, b"not found\n"),
            "/status/103" => respond(response_out, 103, b"early hints cannot end a response\n"),
            "/outbound" => outbound(response_out, query),
            "/keep-bodies" => keep_bodies(response_out, query),
            "/empty-writes" => empty_writes(response_out, query),
            "/outgoing-flood" => outgoing_flood(response_out, query),
            "/open-files" => open_files(response_out, query),
            "/big-write" => big_write(response_out, query),
            "/blob" => blob(response_out, query),
            "/env" => env(response_out),
            "/stdout" => {
                println!("hello from guest stdout");
                eprintln!("and stderr");
                respond(response_out, 200, b"logged\n")
            }
            _ => respond(response_out, 404, b"no route\n"),
        };
    }
}

/// A response body being written. The stream is declared, and so dropped,
/// before the body it belongs to.
struct Body {
    stream: OutputStream,
    body: OutgoingBody,
}

impl Body {
    /// Sends a `text/plain` response head with `status` and opens its body.
    fn start(response_out: ResponseOutparam, status: StatusCode) -> Body {
        let headers = Fields::from_list(&[("content-type".to_owned(), b"text/plain".to_vec())])
            .expect("content-type is a valid header");
        let response = OutgoingResponse::new(headers);
        response
            .set_status_code(status)
            .expect("the guest uses valid status codes");
        let body = response.body().expect("the body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let stream = body.write().expect("the body stream is taken once");
        Body { stream, body }
    }

    /// Writes and flushes `bytes`, blocking, in chunks the host accepts.
    fn write(&self, bytes: &[u8]) -> Result<(), StreamError> {
        for chunk in bytes.chunks(CHUNK) {
            self.stream.blocking_write_and_flush(chunk)?;
        }
        Ok(())
    }

    /// Ends the body (no trailers).
    fn finish(self) -> Result<(), ErrorCode> {
        let Body { stream, body } = self;
        drop(stream);
        OutgoingBody::finish(body, None)
    }
}

/// What a route returns; the error is only ever ignored.
type Outcome = Result<(), StreamError>;

/// A whole `text/plain` response.
fn respond(response_out: ResponseOutparam, status: StatusCode, text: &[u8]) -> Outcome {
    let body = Body::start(response_out, status);
    body.write(text)?;
    let _ = body.finish();
    Ok(())
}

fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
}

/// Describes the request, then copies its body to the response chunk by
/// chunk as it arrives.
fn echo(
    request: &IncomingRequest,
    path_with_query: &str,
    response_out: ResponseOutparam,
) -> Outcome {
    let mut head = format!("{}\n{path_with_query}\n", method_name(&request.method()));
    for (name, value) in request.headers().entries() {
        head += &format!("{name}: {}\n", String::from_utf8_lossy(&value));
    }
    head += "\n";
    let body = Body::start(response_out, 200);
    body.write(head.as_bytes())?;

    let incoming = request
        .consume()
        .expect("the request body is consumed once");
    let input = incoming
        .stream()
        .expect("the request body stream is taken once");
    loop {
        match input.blocking_read(CHUNK as u64) {
            Ok(chunk) => body.write(&chunk)?,
            Err(StreamError::Closed) => break,
            Err(err) => return Err(err),
        }
    }
    drop(input);
    drop(incoming);
    let _ = body.finish();
    Ok(())
}

fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

fn bomb() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Nonzero fill so every page is written, not just reserved.
        hoard.push(black_box(vec![0xA5; MIB]));
    }
}

/// Makes the host hold memory for the guest: `fields` resources live in the
/// host, not in the guest's linear memory.
fn fields(response_out: ResponseOutparam, query: &str) -> Outcome {
    let kib: usize = query_parsed(query, "kib").unwrap_or(15);
    let limit: Option<usize> = query_parsed(query, "n");
    let value = vec![b'a'; kib * 1024];
    let mut hoard = Vec::new();
    while limit.is_none_or(|n| hoard.len() < n) {
        let fields = Fields::new();
        // wasmtime makes a value over its field-size limit a trap; a
        // refused header (an error) still leaves the resource held.
        let _ = fields.append("x-pad", &value);
        hoard.push(fields);
    }
    respond(
        response_out,
        200,
        format!("made {} fields\n", hoard.len()).as_bytes(),
    )
}

/// Blocks in the host on the monotonic clock.
fn block_for(duration: Duration) {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    wasi::clocks::monotonic_clock::subscribe_duration(nanos).block();
}

fn sleep(response_out: ResponseOutparam, query: &str) -> Outcome {
    let secs = query_param(query, "s").map_or(Ok(10.0), |s| s.parse::<f64>());
    let Some(duration) = secs
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
    else {
        return respond(response_out, 400, b"?s= must be a number of seconds\n");
    };
    block_for(duration);
    respond(response_out, 200, b"slept\n")
}

/// Opens `/d/f` (a preopened directory's file) `?n=` times (default 1,000),
/// holding every one, sleeps `?s=` seconds (default 0), then answers
/// `opened K of N`: the per-invocation cap on open files.
fn open_files(response_out: ResponseOutparam, query: &str) -> Outcome {
    let n = query_parsed::<usize>(query, "n").unwrap_or(1000);
    let secs = query_parsed::<f64>(query, "s").unwrap_or(0.0);
    let mut files = Vec::new();
    while files.len() < n {
        match std::fs::File::open("/d/f") {
            Ok(file) => files.push(file),
            Err(_) => break,
        }
    }
    block_for(Duration::try_from_secs_f64(secs).unwrap_or_default());
    let text = format!("opened {} of {n}\n", files.len());
    drop(files);
    respond(response_out, 200, text.as_bytes())
}

fn late_crash(response_out: ResponseOutparam) -> Outcome {
    let body = Body::start(response_out, 200);
    body.write(b"partial body\n")?;
    block_for(Duration::from_millis(200));
    panic!("http guest late crash");
}

fn stream(response_out: ResponseOutparam, query: &str) -> Outcome {
    let number = |key: &str, default: u64| query_parsed::<u64>(query, key).unwrap_or(default);
    let (n, ms) = (number("n", 100), number("ms", 0));
    let body = Body::start(response_out, 200);
    for i in 0..n {
        if i > 0 && ms > 0 {
            block_for(Duration::from_millis(ms));
        }
        body.write(format!("line {i}\n").as_bytes())?;
    }
    let _ = body.finish();
    Ok(())
}

/// A GET request for `url` (`[SCHEME://]AUTHORITY[/PATH][?QUERY]`, scheme
/// `http` by default), or `None` if the host refuses one of its parts.
fn outgoing_get(url: &str) -> Option<OutgoingRequest> {
    outgoing_get_with(url, Fields::new())
}

/// A GET of `url` with `headers`.
fn outgoing_get_with(url: &str, headers: Fields) -> Option<OutgoingRequest> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((other, rest)) => (Scheme::Other(other.to_owned()), rest),
        None => (Scheme::Http, url),
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_with_query) = rest.split_at(split);
    let path_with_query = match path_with_query {
        "" => "/".to_owned(),
        pq if pq.starts_with('?') => format!("/{pq}"),
        pq => pq.to_owned(),
    };
    let request = OutgoingRequest::new(headers);
    request.set_method(&Method::Get).ok()?;
    request.set_scheme(Some(&scheme)).ok()?;
    request.set_authority(Some(authority)).ok()?;
    request.set_path_with_query(Some(&path_with_query)).ok()?;
    Some(request)
}

fn outbound(response_out: ResponseOutparam, query: &str) -> Outcome {
    let Some(url) = query_param(query, "url").filter(|url| !url.is_empty()) else {
        return respond(response_out, 400, b"missing ?url=\n");
    };
    // `?traceparent=`: a header of the guest's own (which a traced host
    // replaces).
    let headers = Fields::new();
    if let Some(value) = query_param(query, "traceparent") {
        let _ = headers.append("traceparent", value.as_bytes());
    }
    let Some(request) = outgoing_get_with(&url, headers) else {
        return respond(response_out, 400, format!("bad url: {url}\n").as_bytes());
    };
    let result = match outgoing_handler::handle(request, None) {
        Err(code) => Err(format!("{code:?}")),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => Ok(response.status()),
                Some(Ok(Err(code))) => Err(format!("{code:?}")),
                Some(Err(())) => Err("the response was already taken".to_owned()),
                None => Err("the response is not ready".to_owned()),
            }
        }
    };
    match result {
        Ok(status) => respond(
            response_out,
            200,
            format!("outbound ok: {status}\n").as_bytes(),
        ),
        Err(error) => respond(
            response_out,
            502,
            format!("outbound error: {error}\n").as_bytes(),
        ),
    }
}

fn keep_bodies(response_out: ResponseOutparam, query: &str) -> Outcome {
    let n: usize = query_parsed(query, "n").unwrap_or(1000);
    let kib: usize = query_parsed(query, "kib").unwrap_or(2048);
    let chunk = vec![b'x'; MIB];
    let mut kept = Vec::with_capacity(n);
    for _ in 0..n {
        let request = OutgoingRequest::new(Fields::new());
        let _ = request.set_method(&Method::Post);
        let _ = request.set_authority(Some("example.com"));
        let body = request.body().expect("the body is taken once");
        {
            let stream = body.write().expect("the stream is taken once");
            let mut left = kib << 10;
            while left > 0 {
                let permit = match stream.check_write() {
                    Ok(0) | Err(_) => break,
                    Ok(p) => p as usize,
                };
                let len = permit.min(left).min(chunk.len());
                if stream.write(&chunk[..len]).is_err() {
                    break;
                }
                left -= len;
            }
        }
        let _ = OutgoingBody::finish(body, None);
        kept.push(request);
    }
    respond(
        response_out,
        200,
        format!("kept {} bodies\n", kept.len()).as_bytes(),
    )
}

/// Writes `?n=` (default 10 million) empty slices to one stream, chosen by
/// `?to=`: `response` (this response's body) or `stdout`. Each write is free for the
/// guest; a host that kept a record of each would grow without bound
/// (wasmtime advisories GHSA-f8mm-ggr3-89wh and GHSA-5m8g-xhq4-4h93).
fn empty_writes(response_out: ResponseOutparam, query: &str) -> Outcome {
    let n: u64 = query_parsed(query, "n").unwrap_or(10_000_000);
    let write_all = |stream: &OutputStream| {
        for _ in 0..n {
            // A write needs a permit, even an empty one.
            loop {
                match stream.check_write() {
                    Ok(0) => stream.subscribe().block(),
                    Ok(_) => break,
                    Err(_) => return,
                }
            }
            if stream.write(&[]).is_err() {
                break;
            }
        }
    };
    match query_param(query, "to").as_deref().unwrap_or("response") {
        "stdout" => {
            write_all(&wasi::cli::stdout::get_stdout());
            respond(response_out, 200, b"wrote nothing to stdout\n")
        }
        _ => {
            let body = Body::start(response_out, 200);
            write_all(&body.stream);
            body.write(b"wrote nothing to the response\n")?;
            let _ = body.finish();
            Ok(())
        }
    }
}

/// Answers `?kib=` KiB (default 16,384) of `x`, written as the host's
/// permits allow, saying on stderr after every 16 KiB how much it has
/// written: how far it gets against a client that does not read shows what
/// the host and the kernel buffer for a connection.
fn blob(response_out: ResponseOutparam, query: &str) -> Outcome {
    let kib: usize = query_parsed(query, "kib").unwrap_or(16 << 10);
    let chunk = [b'x'; 16 << 10];
    let body = Body::start(response_out, 200);
    for i in 1..=kib / 16 {
        body.write(&chunk)?;
        eprintln!("wrote {} KiB", i * 16);
    }
    let _ = body.finish();
    Ok(())
}

/// Hands the host `?mib=` MiB (default 32) in one `output-stream.write`
/// of an outgoing body, past any permit: the host copies the whole
/// argument before it can refuse it.
fn big_write(response_out: ResponseOutparam, query: &str) -> Outcome {
    let mib: usize = query_parsed(query, "mib").unwrap_or(32);
    let data = vec![b'x'; mib * MIB];
    let request = OutgoingRequest::new(Fields::new());
    let body = request.body().expect("the body is taken once");
    let stream = body.write().expect("the stream is taken once");
    let result = stream.write(black_box(&data));
    respond(response_out, 200, format!("write: {result:?}\n").as_bytes())
}

fn outgoing_flood(response_out: ResponseOutparam, query: &str) -> Outcome {
    let Some(url) = query_param(query, "url").filter(|url| !url.is_empty()) else {
        return respond(response_out, 400, b"missing ?url=\n");
    };
    let n: usize = query_parsed(query, "n").unwrap_or(1000);
    let mut futures = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = String::new();
    for _ in 0..n {
        let Some(request) = outgoing_get(&url) else {
            return respond(response_out, 400, format!("bad url: {url}\n").as_bytes());
        };
        match outgoing_handler::handle(request, None) {
            Ok(future) => futures.push(future),
            Err(code) => {
                failed += 1;
                if first_error.is_empty() {
                    first_error = format!("{code:?}");
                }
            }
        }
    }
    let mut ok = 0;
    for future in &futures {
        future.subscribe().block();
        match future.get() {
            Some(Ok(Ok(_))) => ok += 1,
            Some(Ok(Err(code))) => {
                failed += 1;
                if first_error.is_empty() {
                    first_error = format!("{code:?}");
                }
            }
            _ => failed += 1,
        }
    }
    let text = format!("ok {ok}, failed {failed}: {first_error}\n");
    respond(response_out, 200, text.as_bytes())
}

fn env(response_out: ResponseOutparam) -> Outcome {
    let mut vars = wasi::cli::environment::get_environment();
    vars.sort();
    let text = vars
        .iter()
        .map(|(key, value)| format!("{key}={value}\n"))
        .collect::<String>();
    respond(response_out, 200, text.as_bytes())
}
