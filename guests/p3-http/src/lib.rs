//! A WASI 0.3 `wasi:http/service` component for `wasm-run serve`: exports
//! `wasi:http/handler@0.3.0` (an async function) and routes on the path.
//!
//! | path | response |
//! | --- | --- |
//! | `/`, `/hello` | 200 `Hello from wasm-run over WASI 0.3!` |
//! | `/echo` | 200: the request body streamed back through the guest, chunk by chunk, with the request's trailers (and its `trailer` header, which declares them) |
//! | `/spin` | loops forever (fuel, CPU time, deadline) |
//! | `/bomb` | allocates touched 1 MiB chunks forever (memory cap) |
//! | `/sleep?ms=N` | waits `N` ms (default 10,000) on the WASI 0.3 monotonic clock, then 200 `slept` (deadline while blocked) |
//! | `/crash` | panics before responding (trap) |
//! | `/late-crash` | returns a 200 response, writes `partial body`, then panics 200 ms later without finishing it (a kill after the head) |
//! | `/stream?n=N` | 200: `N` lines `line i` (default 100), one stream write each |
//! | `/blob?kib=K` | 200: `K` KiB of `x` (default 8,192), written 1 MiB at a time |
//! | `/error-code` | answers with the error code `internal-error` instead of a response |
//! | `/outbound?url=URL` | a GET of `URL` through `wasi:http/client.send`: 200 `outbound ok: STATUS`, or 502 `outbound error: ERROR` (e.g. `HttpRequestDenied`) |
//! | `/upload?url=URL&kib=K` | a POST of `K` KiB (default 32,768) to `URL` through `wasi:http/client.send`, the body written 64 KiB at a time by a subtask; 200 `upload answered: STATUS` as soon as the upstream answers, while the body may still be on its way (502 `upload error: ERROR` if it does not) |
//! | `/proxy?url=URL` | answers with the response of a GET of `URL` through `wasi:http/client.send` as it is: the upstream's head and body, streamed by the host after the handler returned (the proxy pattern) |
//! | `/subtasks?n=N&what=spin\|bomb` | spawns `N` concurrent subtasks (default 8) that spin or allocate forever, then waits (limits cover what the store runs, not just the export) |
//! | `/hoard` | creates stream and future pairs forever, keeping every end (host state of the component model's async ABI, which the host holds for the store) |
//! | `/stdout` | writes a line to stdout through WASI 0.3 `wasi:cli/stdout`, then 200 `logged` |
//! | anything else | 404 `no route` |
//!
//! Built for `wasm32-wasip2` only (the target whose components carry
//! WASI 0.3 imports and exports through the `wasip3` crate).

use wasip3::http::types::{ErrorCode, Fields, Request, Response, Trailers};
use wasip3::wit_bindgen::rt::async_support::{FutureReader, StreamReader};
use wasip3::{wit_future, wit_stream};

#[path = "../../query.rs"]
mod query;

#[path = "../../hogs.rs"]
mod hogs;
#[path = "../../p3_streams.rs"]
mod p3_streams;
use hogs::{bomb, spin};

wasip3::http::service::export!(Service);

struct Service;

impl wasip3::exports::http::handler::Guest for Service {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path_with_query = request.get_path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((&path_with_query, ""));
        let query = query.to_owned();
        match path {
            "/" | "/hello" => Ok(text(200, b"Hello from wasm-run over WASI 0.3!\n".to_vec())),
            "/echo" => Ok(echo(request)),
            "/spin" => spin(),
            "/bomb" => bomb(),
            "/sleep" => {
                let ms: u64 = query::query_parsed(&query, "ms").unwrap_or(10_000);
                wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
                Ok(text(200, b"slept\n".to_vec()))
            }
            "/crash" => panic!("p3 http guest crash"),
            "/late-crash" => Ok(late_crash()),
            "/stream" => Ok(stream(query::query_parsed(&query, "n").unwrap_or(100))),
            "/blob" => Ok(blob(query::query_parsed(&query, "kib").unwrap_or(8192))),
            "/error-code" => Err(ErrorCode::InternalError(Some("the guest says no".into()))),
            "/outbound" => Ok(outbound(&query).await),
            "/proxy" => proxy(&query).await,
            "/upload" => Ok(upload(&query).await),
            "/subtasks" => subtasks(&query).await,
            "/hoard" => hoard(),
            "/stdout" => {
                write_stdout(b"a line from the p3 guest\n".to_vec()).await;
                Ok(text(200, b"logged\n".to_vec()))
            }
            _ => Ok(text(404, b"no route\n".to_vec())),
        }
    }
}

/// A response whose body `chunks` are written, one stream write each, by a
/// task that outlives the handler's return (as WASI 0.3 services do).
fn response_with(status: u16, chunks: Vec<Vec<u8>>, then_panic: bool) -> Response {
    let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
        .expect("a valid header");
    let (mut body_tx, body_rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _transmitted) = Response::new(headers, Some(body_rx), trailers_rx);
    response.set_status_code(status).expect("a valid status");
    wasip3::spawn_local(async move {
        for chunk in chunks {
            let left = body_tx.write_all(chunk).await;
            if !left.is_empty() {
                return; // the host stopped reading
            }
        }
        if then_panic {
            wasip3::clocks::monotonic_clock::wait_for(200_000_000).await;
            panic!("p3 http guest crash after the head");
        }
        drop(body_tx);
        let _ = trailers_tx.write(Ok(None)).await;
    });
    response
}

fn text(status: u16, body: Vec<u8>) -> Response {
    response_with(status, vec![body], false)
}

fn late_crash() -> Response {
    response_with(200, vec![b"partial body".to_vec()], true)
}

fn stream(n: u32) -> Response {
    let chunks = (0..n).map(|i| format!("line {i}\n").into_bytes()).collect();
    response_with(200, chunks, false)
}

/// `kib` KiB of `x`, written to the body stream 1 MiB at a time: what a
/// client that does not read makes the host hold is what the host takes
/// from the stream before its writes stop.
fn blob(kib: usize) -> Response {
    let mib = vec![b'x'; 1 << 20];
    let mut chunks: Vec<Vec<u8>> = (0..kib / 1024).map(|_| mib.clone()).collect();
    if !kib.is_multiple_of(1024) {
        chunks.push(vec![b'x'; (kib % 1024) << 10]);
    }
    response_with(200, chunks, false)
}

/// Streams the request body back through the guest: each chunk read from
/// the request is written to the response before the next is read, so the
/// host's backpressure reaches the client both ways.
fn echo(request: Request) -> Response {
    // The trailer fields the client declared are the response's too.
    let declared = request.get_headers().get("trailer");
    let headers = Fields::new();
    if !declared.is_empty() {
        headers.set("trailer", &declared).expect("a valid header");
    }
    let (_consumed_tx, consumed_rx) = wit_future::new(|| Ok(()));
    let (mut body_in, trailers_in): (
        StreamReader<u8>,
        FutureReader<Result<Option<Trailers>, ErrorCode>>,
    ) = Request::consume_body(request, consumed_rx);
    let (mut body_out, body_rx) = wit_stream::new();
    let (trailers_out, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _transmitted) = Response::new(headers, Some(body_rx), trailers_rx);
    wasip3::spawn_local(async move {
        if !p3_streams::pump(&mut body_in, &mut body_out).await {
            return;
        }
        drop(body_out);
        // The request's trailers, once its body has ended, end the response.
        let _ = trailers_out.write(trailers_in.await).await;
    });
    response
}

/// Sends a GET to `?url=` and says what status came back.
async fn outbound(query: &str) -> Response {
    let request = match outgoing(query, None) {
        Ok(request) => request,
        Err(response) => return response,
    };
    match wasip3::http::client::send(request).await {
        Ok(response) => {
            let status = response.get_status_code();
            text(200, format!("outbound ok: {status}\n").into_bytes())
        }
        Err(e) => text(502, format!("outbound error: {e:?}\n").into_bytes()),
    }
}

/// Answers with the response of a GET to `?url=` as it comes: head and
/// body are the upstream's, streamed by the host after this handler
/// returned (the proxy pattern).
async fn proxy(query: &str) -> Result<Response, ErrorCode> {
    match outgoing(query, None) {
        Ok(request) => wasip3::http::client::send(request).await,
        Err(response) => Ok(response),
    }
}

/// POSTs `?kib=` KiB to `?url=`, written by a subtask 64 KiB at a time,
/// and says what status came back as soon as the upstream answered: the
/// body may still be on its way, and the store stays until it is sent.
async fn upload(query: &str) -> Response {
    let kib: usize = query::query_parsed(query, "kib").unwrap_or(32 << 10);
    let (mut body_tx, body_rx) = wit_stream::new();
    let request = match outgoing(query, Some(body_rx)) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if request
        .set_method(&wasip3::http::types::Method::Post)
        .is_err()
    {
        return text(500, b"cannot set the method\n".to_vec());
    }
    wasip3::spawn_local(async move {
        let chunk = vec![b'u'; 64 << 10];
        for _ in 0..kib / 64 {
            if !body_tx.write_all(chunk.clone()).await.is_empty() {
                return;
            }
        }
    });
    match wasip3::http::client::send(request).await {
        Ok(response) => {
            let status = response.get_status_code();
            text(200, format!("upload answered: {status}\n").into_bytes())
        }
        Err(e) => text(502, format!("upload error: {e:?}\n").into_bytes()),
    }
}

/// A request for `?url=` (a GET, with `body` if any), or the response
/// saying why there is none.
fn outgoing(query: &str, body: Option<StreamReader<u8>>) -> Result<Request, Response> {
    let Some(url) = query::query_param(query, "url") else {
        return Err(text(400, b"missing url\n".to_vec()));
    };
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (wasip3::http::types::Scheme::Https, rest),
        Some((_, rest)) => (wasip3::http::types::Scheme::Http, rest),
        None => (wasip3::http::types::Scheme::Http, url.as_str()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (_trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    let (request, _sent) = Request::new(Fields::new(), body, trailers_rx, None);
    let set = request
        .set_scheme(Some(&scheme))
        .and_then(|()| request.set_authority(Some(authority)))
        .and_then(|()| request.set_path_with_query(Some(path)));
    if set.is_err() {
        return Err(text(400, b"bad url\n".to_vec()));
    }
    Ok(request)
}

/// Spawns `n` subtasks that spin or allocate forever and waits on them:
/// none of it is the handler's own code, all of it is the store's.
async fn subtasks(query: &str) -> Result<Response, ErrorCode> {
    let n: u32 = query::query_parsed(query, "n").unwrap_or(8);
    let bomb_them = query::query_param(query, "what").as_deref() == Some("bomb");
    for _ in 0..n {
        wasip3::spawn_local(async move {
            // Let the others start before this one runs for ever.
            wasip3::clocks::monotonic_clock::wait_for(1_000_000).await;
            if bomb_them {
                bomb();
            } else {
                spin();
            }
        });
    }
    wasip3::clocks::monotonic_clock::wait_for(u64::MAX / 2).await;
    Ok(text(200, b"subtasks ended\n".to_vec()))
}

/// Keeps creating streams and futures: each is state the host holds.
fn hoard() -> ! {
    let mut kept = Vec::new();
    loop {
        let stream = wit_stream::new::<u8>();
        let future = wit_future::new::<Result<(), ErrorCode>>(|| Ok(()));
        kept.push((stream, future));
    }
}

async fn write_stdout(bytes: Vec<u8>) {
    let (mut tx, rx) = wit_stream::new();
    wasip3::spawn_local(async move {
        let _ = tx.write_all(bytes).await;
    });
    let _ = wasip3::cli::stdout::write_via_stream(rx).await;
}
