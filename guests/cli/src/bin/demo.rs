//! A CGI (RFC 3875, WAGI-style) program for `wasm-run serve`: routes on PATH_INFO, one per limit.
//!
//! The host runs it once per request, with the CGI meta-variables in the
//! environment (`REQUEST_METHOD`, `PATH_INFO`, `QUERY_STRING`, `SCRIPT_NAME`,
//! `CONTENT_TYPE`, `CONTENT_LENGTH`, `HTTP_*`), the request body on stdin, and
//! reads a CGI response from stdout: header lines, a blank line, the body.
//!
//! | `PATH_INFO` | response |
//! | --- | --- |
//! | `/` (or empty) | an HTML page describing the demo routes |
//! | `/hello` | `Hello from wasm-run!`, or `Hello, X!` with `?name=X` |
//! | `/echo` | the method, path, query, script name, `HTTP_*` variables, content type and length, then the body copied from stdin |
//! | `/spin` | loops forever (fuel) |
//! | `/bomb` | allocates touched 1 MiB chunks forever (memory cap) |
//! | `/sleep` | sleeps 10 s, or `?s=N` seconds, then `slept` (deadline) |
//! | `/crash` | panics before printing anything (trap) |
//! | `/stream` | `?n=N` lines (default 100) `line i`, flushed one by one, `?ms=M` apart (default 0) |
//! | `/late-crash` | a valid head and `partial body`, flushed, then panics 200 ms later |
//! | `/nohead` | `this is not a CGI response`, no header block, exit 0 |
//! | `/status` | `Status: 404 Not Found`, body `no such thing` |
//! | `/redirect` | `Location: /hello` alone |
//! | `/flood` | writes lines forever (output caps, closed pipes) |
//! | anything else | `Status: 404 Not Found`, `no route for PATH` |
//!
//! Every write goes through one locked stdout that is flushed explicitly; a
//! failed write (the host stopped reading) ends the program quietly with
//! status 1.

use std::env;
use std::hint::black_box;
use std::io::{self, Read, StdoutLock, Write};
use std::process::exit;
use std::time::Duration;

#[path = "../../../query.rs"]
mod query;
use query::{query_param, query_parsed};

const MIB: usize = 1 << 20;

/// The demo route a request is for: the first segment of `PATH_INFO`, or,
/// when the host routes by prefix (`/spin` → this guest, `PATH_INFO` empty),
/// the last segment of `SCRIPT_NAME`. `/` is the index.
fn route_key() -> String {
    let info = env::var("PATH_INFO").unwrap_or_default();
    let script = env::var("SCRIPT_NAME").unwrap_or_default();
    let first = info.split('/').find(|s| !s.is_empty());
    let last = script.rsplit('/').find(|s| !s.is_empty());
    match (first, last) {
        (Some(seg), _) => format!("/{seg}"),
        (None, Some(seg)) if ROUTES.contains(&seg) => format!("/{seg}"),
        _ => "/".to_owned(),
    }
}

/// Route names, for [`route_key`].
const ROUTES: &[&str] = &[
    "hello",
    "echo",
    "spin",
    "bomb",
    "sleep",
    "crash",
    "stream",
    "late-crash",
    "nohead",
    "status",
    "redirect",
    "flood",
];

fn main() {
    let path = env::var("PATH_INFO").unwrap_or_default();
    let query = env::var("QUERY_STRING").unwrap_or_default();
    let mut out = io::stdout().lock();
    let result = match route_key().as_str() {
        "/" => index(&mut out),
        "/hello" => hello(&mut out, &query),
        "/echo" => echo(&mut out, &path, &query),
        "/spin" => spin(),
        "/bomb" => bomb(),
        "/sleep" => sleep(&mut out, &query),
        "/crash" => panic!("demo crash"),
        "/stream" => stream(&mut out, &query),
        "/late-crash" => late_crash(&mut out),
        "/nohead" => out.write_all(b"this is not a CGI response\n"),
        "/status" => {
            out.write_all(b"Status: 404 Not Found\nContent-Type: text/plain\n\nno such thing\n")
        }
        "/redirect" => out.write_all(b"Location: /hello\n\n"),
        "/flood" => flood(&mut out),
        other => write!(
            out,
            "Status: 404 Not Found\nContent-Type: text/plain\n\nno route for {other}\n"
        ),
    };
    if result.and_then(|()| out.flush()).is_err() {
        exit(1);
    }
}

/// Escapes text for HTML content and attribute values.
fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The index page: every route, the limit it exercises and what a client sees.
fn index(out: &mut StdoutLock<'_>) -> io::Result<()> {
    // Links and curl examples follow where the host mounted the program.
    let script = env::var("SCRIPT_NAME").unwrap_or_default();
    let base = html_escape(script.trim_end_matches('/'));
    let host = env::var("HTTP_HOST")
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let url = format!("http://{}{base}", html_escape(&host));
    let page = INDEX.replace("{base}", &base).replace("{url}", &url);
    out.write_all(b"Content-Type: text/html; charset=utf-8\n\n")?;
    out.write_all(page.as_bytes())
}

const INDEX: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>wasm-run demo</title>
<style>
body { font-family: sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.4; }
code, pre { background: #f3f3f3; padding: 0 .2em; }
pre { padding: .5em; overflow-x: auto; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: .3em .5em; text-align: left; vertical-align: top; }
</style>
</head>
<body>
<h1>wasm-run demo</h1>
<p>This page is served by a WebAssembly guest. <code>wasm-run serve</code> runs
the guest once per request, as a CGI program, in a fresh sandbox with its own
memory cap, fuel (CPU) budget and deadline. When a request hits a limit, only
that request is killed: the host answers with an error status, an
<code>x-wasm-run-outcome</code> header naming the limit and a JSON error body,
and goes on serving.</p>

<h2>Routes</h2>
<table>
<tr><th>route</th><th>what the guest does</th><th>limit it exercises</th><th>what you see</th></tr>
<tr><td><a href="{base}/hello">/hello</a></td><td>greets you (try <a href="{base}/hello?name=you">?name=you</a>)</td><td>none: a normal run</td><td><code>200</code>, <code>Hello from wasm-run!</code></td></tr>
<tr><td><a href="{base}/spin">/spin</a></td><td>loops forever</td><td>fuel: 100,000,000 units (and a 2 s deadline)</td><td><code>500</code>, <code>x-wasm-run-outcome: fuel_exhausted</code>, JSON error</td></tr>
<tr><td><a href="{base}/bomb">/bomb</a></td><td>allocates memory forever</td><td>memory: 32 MiB</td><td><code>500</code>, <code>x-wasm-run-outcome: memory_exceeded</code>, JSON error</td></tr>
<tr><td><a href="{base}/sleep">/sleep</a></td><td>sleeps 10 s</td><td>deadline: 1 s</td><td><code>504</code>, <code>x-wasm-run-outcome: deadline_exceeded</code>, JSON error</td></tr>
<tr><td><a href="{base}/echo">/echo</a></td><td>echoes the request: method, path, query, headers and body</td><td>none</td><td><code>200</code>, the request as text</td></tr>
<tr><td><a href="{base}/crash">/crash</a></td><td>panics</td><td>a trap (<code>unreachable</code>)</td><td><code>500</code>, <code>x-wasm-run-outcome: trapped</code>, JSON error</td></tr>
</table>

<h2>Try it</h2>
<pre>
curl -i {url}/hello
curl -i '{url}/hello?name=curl'
curl -i {url}/spin
curl -i {url}/bomb
curl -i {url}/sleep
curl -i {url}/crash
curl -i -X POST --data-binary 'hi there' {url}/echo
</pre>
<p>Send many <code>/spin</code> or <code>/bomb</code> requests at once: each
is killed on its own, and <code>/hello</code> keeps answering.</p>

<h2>Test routes</h2>
<p><code>/stream?n=N&amp;ms=M</code> (N lines, flushed one by one, M ms apart),
<code>/late-crash</code> (a partial body, then a panic),
<code>/nohead</code> (output without a CGI header block),
<code>/status</code> (<code>Status: 404</code>),
<code>/redirect</code> (<code>Location: /hello</code>),
<code>/flood</code> (endless output).</p>
</body>
</html>
"#;

fn hello(out: &mut StdoutLock<'_>, query: &str) -> io::Result<()> {
    out.write_all(b"Content-Type: text/plain\n\n")?;
    match query_param(query, "name") {
        Some(name) => writeln!(out, "Hello, {name}!"),
        None => out.write_all(b"Hello from wasm-run!\n"),
    }
}

/// Describes the request, then copies the body from stdin as it arrives.
fn echo(out: &mut StdoutLock<'_>, path: &str, query: &str) -> io::Result<()> {
    let var = |name: &str| env::var(name).unwrap_or_default();
    let mut head = String::from("Content-Type: text/plain\n\n");
    head += &format!("method: {}\n", var("REQUEST_METHOD"));
    head += &format!("path: {path}\n");
    head += &format!("query: {query}\n");
    head += &format!("script: {}\n", var("SCRIPT_NAME"));
    let mut headers = env::vars()
        .filter(|(name, _)| name.starts_with("HTTP_"))
        .collect::<Vec<_>>();
    headers.sort();
    for (name, value) in headers {
        head += &format!("header {name}={value}\n");
    }
    for (name, label) in [
        ("CONTENT_TYPE", "content-type"),
        ("CONTENT_LENGTH", "content-length"),
    ] {
        let value = var(name);
        if !value.is_empty() {
            head += &format!("{label}: {value}\n");
        }
    }
    head += "body:\n";
    out.write_all(head.as_bytes())?;
    out.flush()?;

    let mut stdin = io::stdin().lock();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}

fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

fn bomb() -> ! {
    eprintln!("demo: /bomb allocating until killed");
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Nonzero fill so every page is written, not just reserved.
        hoard.push(black_box(vec![0xA5; MIB]));
    }
}

fn sleep(out: &mut StdoutLock<'_>, query: &str) -> io::Result<()> {
    let secs = query_param(query, "s").map_or(Ok(10.0), |s| s.parse::<f64>());
    let Some(duration) = secs
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
    else {
        return out.write_all(
            b"Status: 400 Bad Request\nContent-Type: text/plain\n\n?s= must be a number of seconds\n",
        );
    };
    std::thread::sleep(duration);
    out.write_all(b"Content-Type: text/plain\n\nslept\n")
}

fn stream(out: &mut StdoutLock<'_>, query: &str) -> io::Result<()> {
    let n = query_parsed::<u64>(query, "n").unwrap_or(100);
    let ms = query_parsed::<u64>(query, "ms").unwrap_or(0);
    out.write_all(b"Content-Type: text/plain\n\n")?;
    out.flush()?;
    for i in 0..n {
        if i > 0 && ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        writeln!(out, "line {i}")?;
        out.flush()?;
    }
    Ok(())
}

fn late_crash(out: &mut StdoutLock<'_>) -> io::Result<()> {
    out.write_all(b"Content-Type: text/plain\n\npartial body\n")?;
    out.flush()?;
    std::thread::sleep(Duration::from_millis(200));
    panic!("demo late crash");
}

fn flood(out: &mut StdoutLock<'_>) -> io::Result<()> {
    const LINE: &[u8] = b"flood flood flood flood flood flood flood flood\n";
    out.write_all(b"Content-Type: text/plain\n\n")?;
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        out.write_all(LINE)?;
    }
}
