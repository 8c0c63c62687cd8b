//! The process-per-request baseline: a hyper server that, like a classic CGI
//! server, fork/execs a native program for every request and returns its
//! output (head parsed by wasm-run's own CGI codec).
//!
//! ```text
//! cgi-fork PROGRAM [ADDR]    # prints "Serving HTTP on http://ADDR/"
//! ```

use bytes::Bytes;
use http_body_util::Full;
use wasm_run::serve::cgi::CgiHeadParser;

#[path = "../baseline.rs"]
mod baseline;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let program: &'static str = Box::leak(
        args.next()
            .expect("usage: cgi-fork PROGRAM [ADDR]")
            .into_boxed_str(),
    );
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    baseline::serve(&addr, move || run(program)).await
}

/// Fork/execs `program` as a CGI script and answers with its output.
async fn run(program: &str) -> hyper::Response<Full<Bytes>> {
    let output = tokio::process::Command::new(program)
        .env_clear()
        .env("REQUEST_METHOD", "GET")
        .output()
        .await;
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    match output {
        Ok(out) => {
            let mut parser = CgiHeadParser::new();
            if let Ok(Some(head)) = parser.push(&out.stdout) {
                *response.status_mut() = head.status;
                *response.headers_mut() = head.headers;
                *response.body_mut() = Full::new(head.body_start);
            } else {
                *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            }
        }
        Err(_) => *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR,
    }
    response
}
