//! `wasm-run serve` end to end, over loopback with a real HTTP client: the
//! status table for both guest kinds, CGI round trips, streaming, body
//! limits, fairness, graceful shutdown, reload, metrics and bad config.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasm_run_tests::{Target, guest, http_guest};

/// The flags of a command line `line`, split on whitespace (so no value
/// may hold a space).
pub fn flags(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// A running `wasm-run serve`, killed on drop (its stderr is printed then,
/// to explain failures).
pub struct ServeGuard {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl ServeGuard {
    /// Starts `wasm-run serve --addr 127.0.0.1:0 ARGS...` and waits for its
    /// "Serving HTTP on" line.
    pub fn start(args: &[&str]) -> ServeGuard {
        ServeGuard::spawn(Command::new(env!("CARGO_BIN_EXE_wasm-run")), args)
    }

    /// Starts `wasm-run serve FLAGS... MODULE`.
    pub fn serving(module: &Path, flags: &[&str]) -> ServeGuard {
        let module = module.to_str().expect("module path is UTF-8");
        ServeGuard::start(&[flags, &[module]].concat())
    }

    /// Starts `wasm-run serve --config CONFIG FLAGS...`.
    pub fn with_config(config: &Path, flags: &[&str]) -> ServeGuard {
        let config = config.to_str().expect("config path is UTF-8");
        ServeGuard::start(&[&["--config", config], flags].concat())
    }

    /// As [`ServeGuard::serving`], after `ulimit ULIMIT` (e.g. `-Sn 256`: a
    /// lower soft limit on open files, as a login shell's default would be).
    pub fn serving_with_ulimit(ulimit: &str, module: &Path, flags: &[&str]) -> ServeGuard {
        let module = module.to_str().expect("module path is UTF-8");
        let mut sh = Command::new("sh");
        sh.args([
            "-c",
            &format!("ulimit {ulimit} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_wasm-run"),
        ]);
        ServeGuard::spawn(sh, &[flags, &[module]].concat())
    }

    fn spawn(mut command: Command, args: &[&str]) -> ServeGuard {
        let mut child = command
            .arg("serve")
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env(
                "WASM_RUN_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wasm-run starts");
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let mut guard = ServeGuard {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            stderr: Some(stderr),
        };
        let Some(addr) = first
            .strip_prefix("Serving HTTP on http://")
            .and_then(|a| a.strip_suffix('/'))
        else {
            let status = guard.child.as_mut().unwrap().wait().ok();
            let err = guard.stderr.take().unwrap().join().unwrap_or_default();
            panic!("serve did not start ({status:?}); stdout {first:?}; stderr:\n{err}");
        };
        guard.addr = addr.parse().unwrap();
        if args.contains(&"--admin-addr") {
            let line = lines.next().and_then(Result::ok).unwrap_or_default();
            let admin = line
                .strip_prefix("Admin endpoints on http://")
                .and_then(|a| a.strip_suffix('/'))
                .unwrap_or_else(|| panic!("no admin line: {line:?}"));
            guard.admin = Some(admin.parse().unwrap());
        }
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        guard
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The admin address; the server must have been started with
    /// `--admin-addr`.
    pub fn admin(&self) -> SocketAddr {
        self.admin
            .expect("the server was started with --admin-addr")
    }

    /// The server's resident memory now (VmRSS), to measure a peak from.
    pub fn rss(&self) -> u64 {
        rss_of(self.pid()).0
    }

    /// Asserts that the server's peak resident memory (VmHWM) stayed under
    /// `before + allowance` bytes.
    pub fn assert_peak_under(&self, before: u64, allowance: u64) {
        let (_, peak) = rss_of(self.pid());
        assert!(
            peak < before + allowance,
            "server peaked at {} MiB, {} MiB before",
            peak >> 20,
            before >> 20
        );
    }

    /// Sends SIGTERM, waits (at most `within`) for the server to exit and
    /// returns its status code and stderr.
    pub async fn terminate(self, within: Duration) -> (Option<i32>, String) {
        self.signal("TERM");
        tokio::task::spawn_blocking(move || self.wait(within))
            .await
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the server to exit (after a signal) and returns its status
    /// code and stderr.
    pub fn wait(mut self, within: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > within {
                let _ = child.kill();
                panic!("server did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = self.stderr.take().unwrap().join().unwrap_or_default();
        (status.code(), err)
    }
}

impl Drop for ServeGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if let Some(h) = self.stderr.take()
                && std::thread::panicking()
            {
                eprintln!(
                    "--- wasm-run serve stderr ---\n{}",
                    h.join().unwrap_or_default()
                );
            }
        }
    }
}

/// A response as the client saw it; `body` is `Err` when the body was cut off.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Result<String, String>,
}

impl Reply {
    pub fn outcome(&self) -> Option<&str> {
        self.headers
            .get("x-wasm-run-outcome")
            .map(|v| v.to_str().unwrap())
    }

    pub fn request_id(&self) -> String {
        self.headers["x-request-id"].to_str().unwrap().to_string()
    }

    pub fn text(&self) -> &str {
        self.body
            .as_deref()
            .unwrap_or_else(|e| panic!("body failed: {e}"))
    }
}

/// Sends one request on a fresh connection.
pub async fn send(addr: SocketAddr, req: http::Request<Full<Bytes>>) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let response = sender.send_request(req).await.expect("response head");
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(b) => Ok(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
        Err(e) => Err(e.to_string()),
    };
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, request("GET", addr, path, Bytes::new())).await
}

/// POSTs `body` to `path` on a fresh connection.
pub async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Reply {
    send(addr, request("POST", addr, path, body.into())).await
}

/// POSTs `body` to the guest's `/echo` route, asserts a 200 and returns
/// the reply's body.
pub async fn echo(addr: SocketAddr, body: &str) -> String {
    let reply = post(addr, "/echo", body.to_string()).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.text().to_string()
}

pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: Bytes,
) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body))
        .unwrap()
}

pub fn json_error(reply: &Reply) -> serde_json::Value {
    assert_eq!(reply.headers["content-type"], "application/json");
    serde_json::from_str(reply.text()).expect("JSON error body")
}

pub fn assert_killed(reply: &Reply, status: u16, outcome: &str) {
    assert_eq!(reply.status, status, "body: {:?}", reply.body);
    assert_eq!(reply.outcome(), Some(outcome));
    let body = json_error(reply);
    assert_eq!(body["error"], outcome);
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// The value of an untyped gauge or counter line in the server's metrics.
pub async fn metric(admin: std::net::SocketAddr, name: &str) -> u64 {
    let text = get(admin, "/metrics").await.text().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics:\n{text}"))
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most `within`) until the server's metric `name` satisfies
/// `holds`.
pub async fn wait_for_metric(
    admin: SocketAddr,
    name: &str,
    holds: impl Fn(u64) -> bool,
    within: Duration,
) {
    let start = Instant::now();
    loop {
        let value = metric(admin, name).await;
        if holds(value) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting on {name} (now {value})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `count` requests for `path` at once and asserts that each is
/// killed with `status` and `outcome`.
pub async fn assert_all_killed(
    addr: SocketAddr,
    path: &str,
    count: usize,
    status: u16,
    outcome: &str,
) {
    let requests: Vec<_> = (0..count)
        .map(|_| {
            let path = path.to_string();
            tokio::spawn(async move { get(addr, &path).await })
        })
        .collect();
    for request in requests {
        assert_killed(&request.await.unwrap(), status, outcome);
    }
}

/// Asserts the kills every guest kind answers alike: `/spin` out of fuel,
/// `/bomb` past its memory cap and `/crash` trapped, each a 500.
pub async fn assert_spin_bomb_and_crash_are_killed(addr: SocketAddr) {
    assert_killed(&get(addr, "/spin").await, 500, "fuel_exhausted");
    assert_killed(&get(addr, "/bomb").await, 500, "memory_exceeded");
    assert_killed(&get(addr, "/crash").await, 500, "trapped");
}

/// Asserts that `path`, which sleeps past the deadline, is killed at it
/// (504), well before the guest would have finished.
pub async fn assert_killed_at_deadline(addr: SocketAddr, path: &str) {
    let start = Instant::now();
    assert_killed(&get(addr, path).await, 504, "deadline_exceeded");
    assert!(start.elapsed() < Duration::from_secs(8), "{path}");
}

/// Starts a demo server on loopback as an upstream, then the server `start`
/// makes with `--allow-outbound` flags that list the upstream explicitly
/// and `*`, and asserts that the guest's `/outbound` reaches the upstream.
/// Returns the server and the upstream (which serves while it lives).
pub async fn serve_beside_an_allowed_upstream(
    start: impl FnOnce(&[&str]) -> ServeGuard,
) -> (ServeGuard, ServeGuard) {
    let upstream = ServeGuard::serving(&guest("demo", Target::P1), &[]);
    let up = upstream.addr;
    let explicit = format!("127.0.0.1:{}", up.port());
    let server = start(&["--allow-outbound", &explicit, "--allow-outbound", "*"]);
    // Listed explicitly: sent, to the address that was checked.
    let ok = get(server.addr, &format!("/outbound?url=http://{up}/hello")).await;
    assert_eq!(ok.text(), "outbound ok: 200\n");
    (server, upstream)
}

/// Asks the guest's `/outbound` route to fetch `url` and asserts that the
/// host denied the request; returns the guest's reply.
pub async fn assert_outbound_denied(addr: SocketAddr, url: &str) -> Reply {
    let denied = get(addr, &format!("/outbound?url={url}")).await;
    assert!(
        denied.text().contains("HttpRequestDenied"),
        "{url}: {}",
        denied.text()
    );
    denied
}

/// Opens `count` raw connections to `addr` and writes `bytes` on each.
pub async fn connect_all(addr: SocketAddr, count: usize, bytes: &[u8]) -> Vec<TcpStream> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        let mut connection = TcpStream::connect(addr).await.expect("connect");
        connection.write_all(bytes).await.expect("write");
        connections.push(connection);
    }
    connections
}

/// Reads what the server sends on `connection` until it closes it, for at
/// most `within`.
pub async fn read_reply(connection: &mut TcpStream, within: Duration) -> String {
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(within, connection.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

/// Waits until the server holds `cap` open connections, then checks that it
/// holds no more for a while.
pub async fn assert_connections_capped_at(admin: SocketAddr, cap: u64) {
    let open = "wasm_run_open_connections";
    wait_for_metric(admin, open, |n| n == cap, Duration::from_secs(5)).await;
    for _ in 0..10 {
        assert!(metric(admin, open).await <= cap);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `reply` is a 200 with body `text`.
pub fn assert_served(reply: &Reply, text: &str) {
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.text(), text);
}

/// GETs `path`, asserts that the guest answered it in full with `text`
/// (a 200 with no kill outcome), and returns the reply.
pub async fn assert_answers(addr: SocketAddr, path: &str, text: &str) -> Reply {
    let reply = get(addr, path).await;
    assert_served(&reply, text);
    assert!(reply.outcome().is_none(), "{path}: {:?}", reply.outcome());
    reply
}

/// A labelled counter's value (e.g. `wasm_run_reloads_total{result="ok"}`),
/// 0 while the series does not exist yet.
pub async fn counter(admin: std::net::SocketAddr, series: &str) -> u64 {
    let text = get(admin, "/metrics").await.text().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-config");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes config `name`: the `[server]` table `server` (TOML lines, may be
/// empty), then a route of the demo guest (P1) at each `(path, lines)` of
/// `routes`, with the route's extra TOML lines.
pub fn demo_config(name: &str, server: &str, routes: &[(&str, &str)]) -> PathBuf {
    let demo = guest("demo", Target::P1);
    let mut text = String::from(server);
    for (path, lines) in routes {
        text.push_str(&format!(
            "\n[[route]]\npath = \"{path}\"\nmodule = \"{}\"\n{lines}\n",
            demo.display()
        ));
    }
    write_config(name, &text)
}

/// `/proc/PID/status`'s `(VmRSS, VmHWM)` of process `pid`, in bytes.
pub fn rss_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Open descriptors of process `pid`.
pub fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

#[tokio::test]
async fn the_builtin_demo_serves_every_route_as_its_index_says() {
    let server = ServeGuard::start(&[]);
    let index = get(server.addr, "/").await;
    assert_eq!(index.status, 200);
    for route in ["/hello", "/spin", "/bomb", "/sleep"] {
        assert!(index.text().contains(route), "index lacks {route}");
    }
    let hello = assert_answers(server.addr, "/hello", "Hello from wasm-run!\n").await;
    assert!(hello.headers.contains_key("x-request-id"));
    // A small response that finished at once goes out whole, with its length.
    assert_eq!(hello.headers["content-length"], "21");

    assert_killed(&get(server.addr, "/spin").await, 500, "fuel_exhausted");
    assert_killed(&get(server.addr, "/bomb").await, 500, "memory_exceeded");
    assert_killed_at_deadline(server.addr, "/sleep").await;
}

/// Both CGI guest kinds: the demo as a core module and as a component.
pub fn cgi_server(target: Target, extra: &[&str]) -> ServeGuard {
    // Deadlines generous against the fuel budget: guests past their first
    // 1 ms run at a low kernel priority, slow on a machine busy with other
    // tests.
    let limits = flags("--timeout 5s --fuel 300000000 --max-memory 32MiB");
    ServeGuard::serving(&guest("demo", target), &[&limits, extra].concat())
}

#[tokio::test]
async fn cgi_status_table_for_core_modules_and_components() {
    for target in Target::ALL {
        let server = cgi_server(target, &[]);
        let a = server.addr;
        assert_spin_bomb_and_crash_are_killed(a).await;
        assert_killed(&get(a, "/sleep").await, 504, "deadline_exceeded");
        let nohead = get(a, "/nohead").await;
        assert_killed(&nohead, 502, "bad_gateway");
        let status = get(a, "/status").await;
        assert_eq!(status.status, 404, "{target:?}");
        assert!(status.outcome().is_none());
        assert_eq!(status.text(), "no such thing\n");
        let redirect = get(a, "/redirect").await;
        assert_eq!(redirect.status, 302);
        assert_eq!(redirect.headers["location"], "/hello");
    }
}

#[tokio::test]
async fn cgi_round_trip_carries_method_path_query_headers_and_body() {
    let server = cgi_server(Target::P1, &[]);
    let req = http::Request::builder()
        .method("POST")
        .uri("/echo/extra?x=1&y=two")
        .header("host", server.addr.to_string())
        .header("x-custom", "yes")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"the request body")))
        .unwrap();
    let reply = send(server.addr, req).await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    for needle in [
        "method: POST",
        "path: /echo/extra",
        "query: x=1&y=two",
        "header HTTP_X_CUSTOM=yes",
        "content-type: text/plain",
        "content-length: 16",
        "the request body",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[tokio::test]
async fn cgi_streams_the_response_and_aborts_on_a_late_kill() {
    let server = cgi_server(Target::P1, &[]);
    let reply = get(server.addr, "/stream?n=500").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text().lines().count(), 500);
    assert!(reply.text().ends_with("line 499\n"));
    assert_a_late_kill_truncates(server.addr).await;
}

/// A guest killed after its response head: the status stands, the body is
/// aborted (never ends cleanly).
pub async fn assert_a_late_kill_truncates(addr: SocketAddr) {
    let late = get(addr, "/late-crash").await;
    assert_eq!(late.status, 200);
    assert!(
        late.body.is_err(),
        "a late kill must truncate the body: {:?}",
        late.body
    );
}

#[tokio::test]
async fn oversize_bodies_get_413_both_ways() {
    let server = cgi_server(Target::P1, &["--max-body", "1KiB"]);
    let declared = post(server.addr, "/echo", vec![b'x'; 2048]).await;
    assert_killed(&declared, 413, "body_too_large");
    let fits = post(server.addr, "/echo", vec![b'x'; 1000]).await;
    assert_eq!(fits.status, 200);

    // A chunked body with no declared length that grows past the limit.
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let (tx, body) = mpsc_body();
    let req = http::Request::builder()
        .method("POST")
        .uri("/echo")
        .header("host", server.addr.to_string())
        .body(body)
        .unwrap();
    // Three chunks of 512 bytes pass the limit; then the client sends
    // nothing more (and keeps the body open), so it is not writing when the
    // server answers and closes.
    let feeder = tokio::spawn(async move {
        for _ in 0..3 {
            let chunk = Frame::data(Bytes::from(vec![b'y'; 512]));
            tx.send(chunk).await.unwrap();
        }
        tx
    });
    let response = sender.send_request(req).await.expect("a response");
    let _tx = feeder.await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the 413's body");
    let body: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
    assert_eq!(body["error"], "body_too_large");
}

/// A streaming request body fed from a channel (chunked, no length).
fn mpsc_body() -> (tokio::sync::mpsc::Sender<Frame<Bytes>>, ChannelBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    (tx, ChannelBody(rx))
}

/// A request body of the given frames (data and trailers), sent chunked.
pub fn frames_body(frames: Vec<Frame<Bytes>>) -> ChannelBody {
    let (tx, rx) = tokio::sync::mpsc::channel(frames.len().max(1));
    for frame in frames {
        tx.try_send(frame).expect("the channel holds every frame");
    }
    ChannelBody(rx)
}

/// A request body whose frames come from a channel; it ends once the
/// channel is closed and empty.
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

pub fn http_server(extra: &[&str]) -> ServeGuard {
    let limits = ["--timeout", "5s", "--max-memory", "32MiB"];
    ServeGuard::serving(&http_guest(), &[&limits, extra].concat())
}

#[tokio::test]
async fn wasi_http_status_table() {
    let server = http_server(&["--fuel", "1000000000"]);
    let a = server.addr;
    let hello = assert_answers(a, "/", "Hello from wasm-run over wasi:http!\n").await;
    assert_eq!(hello.headers["content-length"], "36");
    assert_spin_bomb_and_crash_are_killed(a).await;
    assert_killed_at_deadline(a, "/sleep?s=10").await;
    let missing = get(a, "/status/404").await;
    assert_eq!(missing.status, 404);
    assert!(missing.outcome().is_none());
    // An informational status cannot end a response: the host answers 502.
    assert_killed(&get(a, "/status/103").await, 502, "bad_gateway");
    assert_a_late_kill_truncates(a).await;
}

#[tokio::test]
async fn wasi_http_streams_bodies_both_ways_and_denies_outbound() {
    let server = http_server(&[]);
    let a = server.addr;
    let body = "0123456789".repeat(10_000);
    assert!(echo(a, &body).await.ends_with(&body));
    let stream = get(a, "/stream?n=300").await;
    assert_eq!(stream.text().lines().count(), 300);
    assert_outbound_denied(a, "http://example.com/").await;
}

#[tokio::test]
async fn hello_is_answered_promptly_while_other_requests_spin() {
    let server = cgi_server(
        Target::P1,
        &flags("--timeout 4s --fuel 100000000000 --admin-addr 127.0.0.1:0"),
    );
    let (a, admin) = (server.addr, server.admin());
    let spinners: Vec<_> = (0..6).map(|_| tokio::spawn(get(a, "/spin"))).collect();
    let in_flight = "wasm_run_requests_in_flight";
    wait_for_metric(admin, in_flight, |n| n >= 6, Duration::from_secs(5)).await;
    let start = Instant::now();
    let hello = get(a, "/hello").await;
    let took = start.elapsed();
    assert_eq!(hello.status, 200);
    assert!(
        took < Duration::from_secs(1),
        "hello took {took:?} behind spinning guests"
    );
    for s in spinners {
        assert_eq!(s.await.unwrap().outcome(), Some("deadline_exceeded"));
    }
}

/// Threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the server's threads are listed")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[tokio::test]
async fn long_requests_finish_on_as_many_background_threads_as_configured() {
    // Three: not the CPU count of the machines this runs on (2), so the
    // default (one per CPU) would start a different number.
    let server = http_server(&flags("--timeout 300ms --background-threads 3"));
    assert_eq!(
        threads_named(server.pid(), "wasm-run-bg"),
        0,
        "created on first use"
    );
    let spin = get(server.addr, "/spin").await;
    assert_killed(&spin, 504, "deadline_exceeded");
    assert_eq!(threads_named(server.pid(), "wasm-run-bg"), 3);
}

#[tokio::test]
async fn sigterm_drains_a_slow_request_then_exits_zero() {
    let server = cgi_server(Target::P1, &flags("--timeout 5s --admin-addr 127.0.0.1:0"));
    let (a, admin) = (server.addr, server.admin());
    let slow = tokio::spawn(get(a, "/sleep?s=1"));
    let in_flight = "wasm_run_requests_in_flight";
    wait_for_metric(admin, in_flight, |n| n >= 1, Duration::from_secs(5)).await;
    server.signal("TERM");
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "slept\n");
    let (code, _) = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn sighup_reloads_good_config_and_keeps_serving_on_bad() {
    let config = demo_config("reload.toml", "", &[("/", "")]);
    let server = ServeGuard::with_config(&config, &["--admin-addr", "127.0.0.1:0"]);
    let (a, admin) = (server.addr, server.admin());
    assert_eq!(get(a, "/hello").await.text(), "Hello from wasm-run!\n");
    let failed = r#"wasm_run_reloads_total{result="failed"}"#;
    let ok = r#"wasm_run_reloads_total{result="ok"}"#;

    // A bad config: the reload fails, and the old routes keep serving.
    std::fs::write(
        &config,
        "[[route]]\npath = \"/\"\nmodule = \"/no/such.wasm\"\n",
    )
    .unwrap();
    server.signal("HUP");
    eventually(Duration::from_secs(10), "the failed reload", || async {
        counter(admin, failed).await == 1
    })
    .await;
    assert_eq!(counter(admin, ok).await, 0);
    assert_eq!(get(a, "/hello").await.text(), "Hello from wasm-run!\n");

    // A good config with a new route.
    demo_config("reload.toml", "", &[("/", ""), ("/other", "")]);
    server.signal("HUP");
    eventually(Duration::from_secs(10), "the good reload", || async {
        counter(admin, ok).await == 1
    })
    .await;
    let r = get(a, "/other/hello").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from wasm-run!\n");
    assert_eq!(counter(admin, failed).await, 1);
}

#[tokio::test]
async fn metrics_count_requests_by_route_status_and_outcome() {
    let server = cgi_server(Target::P1, &["--admin-addr", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/readyz").await.status, 200);
    get(server.addr, "/hello").await;
    get(server.addr, "/hello").await;
    get(server.addr, "/crash").await;
    // A request is counted when its guest's task has ended, which may be
    // just after the client has its response.
    let start = Instant::now();
    let metrics = loop {
        let m = get(admin, "/metrics").await;
        let done = m.text().contains(r#"outcome="exited",trap=""} 2"#)
            && m.text()
                .contains(r#"outcome="trapped",trap="unreachable"} 1"#);
        if done || start.elapsed() > Duration::from_secs(3) {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = metrics.text();
    assert!(
        text.contains(
            r#"wasm_run_requests_total{route="/",status="200",outcome="exited",trap=""} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"wasm_run_requests_total{route="/",status="500",outcome="trapped",trap="unreachable"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("wasm_run_request_fuel_bucket"), "{text}");
    assert!(
        text.contains("wasm_run_request_peak_memory_bytes_bucket"),
        "{text}"
    );
}

#[test]
fn bad_configs_are_rejected_before_binding() {
    let cases = [
        ("unknown.toml", "[server]\nport = 8080\n", "port"),
        ("badsize.toml", "[limits]\nmax-memory = \"lots\"\n", "lots"),
        (
            "badpath.toml",
            "[[route]]\npath = \"api\"\nmodule = \"x.wasm\"\n",
            "must start with `/`",
        ),
        (
            "badqueue.toml",
            "[server]\nmax-queue = \"many\"\n",
            "max-queue",
        ),
        // A value that parses but cannot be used is the file's, not a flag's.
        (
            "badconns.toml",
            "[server]\nmax-connections = 0\n[[route]]\npath = \"/\"\nmodule = \"x.wasm\"\n",
            "badconns.toml: [server] max-connections must be at least 1",
        ),
    ];
    for (name, text, needle) in cases {
        let path = write_config(name, text);
        let out = Command::new(env!("CARGO_BIN_EXE_wasm-run"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(name), "file not named: {stderr}");
        assert!(stderr.contains(needle), "{needle} missing: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wasm-run"))
        .args([
            "serve",
            "--background-threads",
            "0",
            "--addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--background-threads must be between 1 and"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_wasm-run"))
        .args(["serve", "--addr", "127.0.0.1:0", "/no/such/module.wasm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/module.wasm"));
}

#[tokio::test]
async fn wasi_http_guest_output_goes_to_the_log_with_the_request_id() {
    let server = http_server(&[]);
    let reply = get(server.addr, "/stdout").await;
    assert_eq!(reply.status, 200);
    let id = reply.request_id();
    let (code, stderr) = server.terminate(Duration::from_secs(5)).await;
    assert_eq!(code, Some(0));
    let line = stderr
        .lines()
        .find(|l| l.contains("hello from guest stdout"))
        .unwrap_or_else(|| panic!("guest stdout not logged:\n{stderr}"));
    assert!(line.contains(&id), "line lacks request id {id}: {line}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("and stderr") && l.contains(&id))
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_do_not_block_others() {
    let server = cgi_server(Target::P1, &["--header-timeout", "500ms"]);
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Meanwhile others are served.
    assert_eq!(get(server.addr, "/hello").await.status, 200);
    let start = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow client was never cut off");
    assert!(start.elapsed() < Duration::from_secs(8));
}

/// A server of the demo guest at `/` (a 4 MiB cap) and `/slow` (32 MiB, 5 s),
/// with a memory budget of 80 MiB and a queue of one, after `flags`.
fn budget_server(name: &str, flags: &[&str]) -> ServeGuard {
    let config = demo_config(
        name,
        "[server]\nmemory-budget = \"80MiB\"\nmax-queue = 1\nqueue-timeout = \"400ms\"\n",
        &[
            ("/", r#"limits = { max-memory = "4MiB" }"#),
            (
                "/slow",
                r#"limits = { max-memory = "32MiB", timeout = "5s" }"#,
            ),
        ],
    );
    ServeGuard::with_config(&config, flags)
}

#[tokio::test]
async fn admission_queues_then_turns_away_with_503_and_retry_after() {
    let server = budget_server("budget-queue.toml", &["--admin-addr", "127.0.0.1:0"]);
    let (a, admin) = (server.addr, server.admin());
    // Two slow requests fill 68.5 of the 80 MiB budget (each: a 32 MiB cap,
    // which covers the host memory it causes, plus the 256 KiB the host
    // holds for it outside its account and its 2 MiB stack); a third would
    // not fit.
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get(a, "/slow/sleep?s=1.5")))
        .collect();
    let in_use = "wasm_run_memory_budget_in_use_bytes";
    wait_for_metric(admin, in_use, |n| n >= 64 << 20, Duration::from_secs(5)).await;

    // A hello on the route with the smaller cap still fits and is answered.
    let start = Instant::now();
    let hello = get(a, "/hello").await;
    assert_eq!(hello.status, 200);
    assert!(start.elapsed() < Duration::from_millis(500));

    // A third slow one waits in the queue (now full), so readyz says not ready
    // and a fourth is turned away at once; the third times out in the queue.
    let third = tokio::spawn(get(a, "/slow/hello"));
    let queued = "wasm_run_admission_queue_length";
    wait_for_metric(admin, queued, |n| n == 1, Duration::from_secs(5)).await;
    assert_eq!(get(admin, "/readyz").await.status, 503);
    let fourth = get(a, "/slow/hello").await;
    assert_killed(&fourth, 503, "overloaded");
    assert_eq!(fourth.headers["retry-after"], "1");
    let third = third.await.unwrap();
    assert_killed(&third, 503, "overloaded");
    assert_eq!(third.headers["retry-after"], "1");
    assert_eq!(get(admin, "/readyz").await.status, 200);

    for s in slow {
        assert_eq!(s.await.unwrap().text(), "slept\n");
    }
    let metrics = get(admin, "/metrics").await;
    assert!(
        metrics
            .text()
            .contains(r#"wasm_run_admission_rejected_total{reason="queue_full"} 1"#),
        "{}",
        metrics.text()
    );
    assert!(
        metrics
            .text()
            .contains(r#"wasm_run_admission_rejected_total{reason="queue_timeout"} 1"#)
    );
}

#[tokio::test]
async fn the_budget_bounds_the_host_under_a_flood_of_memory_bombs() {
    let queue = ["--max-queue", "100", "--queue-timeout", "30s"];
    let server = budget_server("budget-flood.toml", &queue);
    let a = server.addr;
    assert_eq!(get(a, "/hello").await.status, 200);
    let before = server.rss();
    // Eight requests that each grow to their 32 MiB cap: the 80 MiB budget
    // admits two at a time, the rest wait their turn.
    assert_all_killed(a, "/slow/bomb", 8, 500, "memory_exceeded").await;
    // Without admission all eight would be resident at once (256 MiB).
    server.assert_peak_under(before, (80 << 20) + (48 << 20));
    assert_eq!(get(a, "/hello").await.status, 200);
}

/// A client whose request was killed has its next request on the same
/// connection started at low priority (counted in
/// `wasm_run_requests_penalized_total`), until two have ended cleanly for
/// each one killed; other connections are untouched.
#[tokio::test]
async fn a_connection_whose_request_was_killed_is_penalized_until_one_ends_cleanly() {
    let server = ServeGuard::serving(&http_guest(), &["--admin-addr", "127.0.0.1:0"]);
    let admin = server.admin();
    let penalized = "wasm_run_requests_penalized_total";
    let stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut on_one_connection = async |path: &str| {
        let req = request("GET", server.addr, path, Bytes::new());
        let response = sender.send_request(req).await.expect("response head");
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        status
    };
    assert_eq!(on_one_connection("/crash").await, 500);
    assert_eq!(metric(admin, penalized).await, 0);
    // Another connection's request is not penalized.
    assert_served(
        &get(server.addr, "/hello").await,
        "Hello from wasm-run over wasi:http!\n",
    );
    assert_eq!(metric(admin, penalized).await, 0);
    // The next two on this connection are (one kill takes two clean
    // requests to undo), and still answered in full.
    assert_eq!(on_one_connection("/hello").await, 200);
    assert_eq!(metric(admin, penalized).await, 1);
    assert_eq!(on_one_connection("/hello").await, 200);
    assert_eq!(metric(admin, penalized).await, 2);
    // Both ended cleanly: the one after starts at normal priority again.
    assert_eq!(on_one_connection("/hello").await, 200);
    assert_eq!(metric(admin, penalized).await, 2);
    // Alternating kills and clean requests keeps the connection penalized.
    for round in 1..=3 {
        assert_eq!(on_one_connection("/crash").await, 500);
        assert_eq!(on_one_connection("/hello").await, 200);
        assert_eq!(metric(admin, penalized).await, 2 + 2 * round - 1);
    }
}
