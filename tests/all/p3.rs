//! WASI 0.3 guests (async components built with the `wasip3` crate from
//! `guests/p3-http` and `guests/p3-cli`): served and run like every other
//! guest, each invocation in a fresh store under its limits, including
//! what their concurrent subtasks do.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasm_run::{Guest, GuestKind, Invocation, Limits, OutcomeKind, Output, TrapReason};
use wasm_run_tests::{p3_cli_guest, p3_http_guest};

use crate::serve::{
    ServeGuard, assert_a_late_kill_truncates, assert_answers, assert_killed,
    assert_killed_at_deadline, assert_outbound_denied, assert_spin_bomb_and_crash_are_killed, echo,
    flags, frames_body, get, serve_beside_an_allowed_upstream, wait_for_metric,
};
use crate::{MIB, engine, wasm_run};

fn p3_server(extra: &[&str]) -> ServeGuard {
    let limits = ["--timeout", "5s", "--max-memory", "32MiB"];
    ServeGuard::serving(&p3_http_guest(), &[&limits, extra].concat())
}

#[test]
fn p3_components_load_as_their_own_kinds() {
    let service = Guest::from_file(engine(), p3_http_guest()).expect("p3 service loads");
    assert_eq!(service.kind(), GuestKind::HttpComponentP3);
    assert!(service.kind().is_http() && service.kind().is_p3());
    let command = Guest::from_file(engine(), p3_cli_guest()).expect("p3 command loads");
    assert_eq!(command.kind(), GuestKind::ComponentCommandP3);
    assert!(command.kind().is_command() && command.kind().is_p3());
}

#[tokio::test]
async fn p3_status_table() {
    let server = p3_server(&["--fuel", "1000000000"]);
    let a = server.addr;
    assert_answers(a, "/hello", "Hello from wasm-run over WASI 0.3!\n").await;
    assert_spin_bomb_and_crash_are_killed(a).await;
    assert_killed_at_deadline(a, "/sleep?ms=10000").await;
    // An error code instead of a response is the guest's failure: 502.
    assert_killed(&get(a, "/error-code").await, 502, "bad_gateway");
    let missing = get(a, "/nothing").await;
    assert_eq!(missing.status, 404);
    assert!(missing.outcome().is_none());
    // Killed after its head: the status stands, the body is cut off.
    assert_a_late_kill_truncates(a).await;
    // The server serves on after all of that.
    assert_eq!(get(a, "/hello").await.status, 200);
}

#[tokio::test]
async fn p3_bodies_stream_both_ways_and_outbound_is_denied() {
    let server = p3_server(&[]);
    let a = server.addr;
    // 1 MB through the guest, read and written chunk by chunk.
    let body = "0123456789".repeat(100_000);
    let echoed = echo(a, &body).await;
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body);
    let stream = get(a, "/stream?n=300").await;
    assert_eq!(stream.text().lines().count(), 300);
    assert!(stream.text().ends_with("line 299\n"));
    // wasi:http/client.send goes through the route's allow-list (empty).
    let outbound = assert_outbound_denied(a, "http://example.com/").await;
    assert_eq!(outbound.status, 502, "{}", outbound.text());
}

#[tokio::test]
async fn limits_cover_every_subtask_of_the_store() {
    let server = p3_server(&flags(
        "--max-cpu 300ms --fuel 100000000000 --admin-addr 127.0.0.1:0",
    ));
    let (a, admin) = (server.addr, server.admin());
    // Eight subtasks spin after the handler has started waiting: CPU time
    // is the store's, whoever spends it.
    assert_killed(&get(a, "/subtasks?n=8").await, 500, "cpu_exceeded");
    // Eight subtasks allocate: the memory cap is the store's.
    assert_killed(
        &get(a, "/subtasks?n=8&what=bomb").await,
        500,
        "memory_exceeded",
    );
    // Spinning subtasks do not hold up a fresh request of the same guest.
    let spinners: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get(a, "/subtasks?n=4")))
        .collect();
    let in_flight = "wasm_run_requests_in_flight";
    wait_for_metric(admin, in_flight, |n| n >= 4, Duration::from_secs(5)).await;
    let hello = get(a, "/hello").await;
    assert_eq!(hello.status, 200);
    for s in spinners {
        assert_eq!(s.await.unwrap().outcome(), Some("cpu_exceeded"));
    }
}

/// Sends `request` through the library to the WASI 0.3 HTTP guest (a 5 s
/// deadline, a 32 MiB cap), and returns the response's status and body
/// once the guest has exited cleanly.
async fn p3_call(request: http::Request<Full<Bytes>>) -> (u16, Bytes) {
    let guest = Guest::from_file(engine(), p3_http_guest()).unwrap();
    let invocation = Invocation {
        limits: Limits {
            timeout: Some(Duration::from_secs(5)),
            max_memory: 32 * MIB,
            ..Limits::default()
        },
        ..Invocation::default()
    };
    let call = guest.handle_http(request, invocation).unwrap();
    let run = tokio::spawn(call.run);
    let response = call.response.await.unwrap().unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(run.await.unwrap().unwrap().kind, OutcomeKind::Exited(0));
    (status, body)
}

/// A WASI 0.3 request with a deadline, served through the library on a
/// runtime without Tokio timers: the response body keeps its request's
/// deadline through the engine's ticker, so nothing panics for want of a
/// timer, and the body arrives whole.
#[test]
fn a_p3_request_with_a_deadline_needs_no_tokio_timers() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let request = http::Request::get("/stream?n=3")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body) = runtime.block_on(p3_call(request));
    assert_eq!((status, &body[..]), (200, &b"line 0\nline 1\nline 2\n"[..]));
}

#[tokio::test]
async fn the_library_serves_a_p3_request() {
    let request = http::Request::post("/echo")
        .body(Full::new(Bytes::from_static(b"through a WASI 0.3 guest")))
        .unwrap();
    let (status, body) = p3_call(request).await;
    assert_eq!((status, &body[..]), (200, &b"through a WASI 0.3 guest"[..]));

    // A command is not an HTTP handler, and the reverse.
    let command = Guest::from_file(engine(), p3_cli_guest()).unwrap();
    let request = http::Request::get("/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(command.handle_http(request, Invocation::default()).is_err());
    let guest = Guest::from_file(engine(), p3_http_guest()).unwrap();
    assert!(guest.run(Invocation::default()).await.is_err());
}

#[tokio::test]
async fn the_library_runs_p3_commands_under_limits() {
    let guest = Guest::from_file(engine(), p3_cli_guest()).unwrap();
    let run = |args: &[&str], limits: Limits| {
        let invocation = Invocation {
            args: args.iter().map(|a| a.to_string()).collect(),
            stdout: Output::Capture,
            limits,
            ..Invocation::default()
        };
        guest.run(invocation)
    };
    let hello = run(&[], Limits::default()).await.unwrap();
    assert_eq!(hello.kind, OutcomeKind::Exited(0));
    assert_eq!(
        &hello.stdout.unwrap().bytes[..],
        b"Hello from a WASI 0.3 command!\n"
    );
    let fuel = Limits {
        fuel: Some(50_000_000),
        ..Limits::default()
    };
    let spun = run(&["subtasks", "4"], fuel).await.unwrap();
    assert_eq!(spun.kind, OutcomeKind::FuelExhausted);
    // Killed by the clock, the report still counts what its subtasks burnt.
    let clock = Limits {
        timeout: Some(Duration::from_millis(300)),
        ..Limits::default()
    };
    let timed = run(&["subtasks", "2"], clock).await.unwrap();
    assert_eq!(timed.kind, OutcomeKind::DeadlineExceeded);
    let fuel = timed.usage.fuel_consumed.unwrap();
    assert!(fuel > 10_000_000, "fuel reported {fuel}");
    // A flood past a capture that kills stops there, as in WASI 0.2 (where
    // the write itself traps; a WASI 0.3 stream only tells the guest).
    let capped = Limits {
        max_output: 1 << 20,
        ..Limits::default()
    };
    let invocation = Invocation {
        args: vec!["flood".into()],
        stdout: Output::CaptureOrKill,
        limits: capped,
        ..Invocation::default()
    };
    let flood = guest.run(invocation).await.unwrap();
    match &flood.kind {
        OutcomeKind::Trapped(trap) => assert_eq!(trap.reason, TrapReason::OutputCapExceeded),
        other => panic!("a flood of output must hit the cap: {other:?}"),
    }
}

#[test]
fn wasm_run_runs_p3_commands_with_the_documented_statuses() {
    let module = p3_cli_guest();
    let module = module.to_str().unwrap();
    let hello = wasm_run(&["run", module]);
    assert_eq!(hello.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&hello.stdout),
        "Hello from a WASI 0.3 command!\n"
    );
    assert_eq!(
        wasm_run(&["run", module, "exit", "7"]).status.code(),
        Some(7)
    );
    assert_eq!(wasm_run(&["run", module, "fail"]).status.code(), Some(1));
    let spin = wasm_run(&["run", "--timeout", "300ms", module, "spin"]);
    assert_eq!(spin.status.code(), Some(124));
    let stderr = String::from_utf8_lossy(&spin.stderr);
    assert!(stderr.contains("deadline_exceeded"), "{stderr}");
    let bomb = wasm_run(&["run", "--max-memory", "16MiB", module, "bomb"]);
    assert_eq!(bomb.status.code(), Some(137));
    let cpu = wasm_run(&["run", "--max-cpu", "200ms", module, "subtasks", "4"]);
    let stderr = String::from_utf8_lossy(&cpu.stderr);
    assert!(stderr.contains("cpu_exceeded"), "{stderr}");
}

#[test]
fn a_compiled_p3_component_runs_like_its_source() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("p3-compile");
    std::fs::create_dir_all(&dir).unwrap();
    let artifact = dir.join("p3-cli.cwasm");
    let module = p3_cli_guest();
    let compiled = wasm_run(&[
        "compile",
        module.to_str().unwrap(),
        "-o",
        artifact.to_str().unwrap(),
    ]);
    assert!(compiled.status.success(), "{compiled:?}");
    let hello = wasm_run(&["run", "--allow-precompiled", artifact.to_str().unwrap()]);
    assert_eq!(hello.status.code(), Some(0), "{hello:?}");
    assert_eq!(
        String::from_utf8_lossy(&hello.stdout),
        "Hello from a WASI 0.3 command!\n"
    );
}

/// The echo route hands the request's trailers future to its response:
/// trailers pass through the host both ways.
#[tokio::test]
async fn p3_trailers_pass_through() {
    use hyper::client::conn::http1;
    use hyper_util::rt::TokioIo;

    let server = p3_server(&[]);
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let body = frames_body(vec![
        http_body::Frame::data(Bytes::from_static(b"with trailers")),
        http_body::Frame::trailers(trailers),
    ]);
    let request = http::Request::post("/echo")
        .header("host", server.addr.to_string())
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), "with trailers");
    let trailers = trailers.expect("the response carries the request's trailers");
    assert_eq!(trailers["x-checksum"], "abc123");
}

/// Streams and futures are state the host holds for the store (the
/// component model's async ABI): a guest that keeps creating them is
/// stopped by its memory cap through that host memory, long before its
/// own linear memory (8 bytes per pair kept) comes near the cap.
#[tokio::test]
async fn streams_and_futures_are_charged_to_the_request() {
    let guest = Guest::from_file(engine(), p3_http_guest()).unwrap();
    let cap = 32 * MIB;
    let request = http::Request::get("/hoard")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let invocation = Invocation {
        limits: Limits {
            timeout: Some(Duration::from_secs(30)),
            max_memory: cap,
            ..Limits::default()
        },
        ..Invocation::default()
    };
    let call = guest.handle_http(request, invocation).unwrap();
    let outcome = call.run.await.unwrap();
    assert_eq!(outcome.kind, OutcomeKind::MemoryExceeded);
    let usage = outcome.usage;
    assert!(
        usage.peak_memory_bytes < cap / 2,
        "linear memory {} is not what hit the cap",
        usage.peak_memory_bytes
    );
    assert!(
        usage.host_memory_peak_bytes > cap / 2 && usage.host_memory_peak_bytes <= cap,
        "host memory peak {} of a {cap}-byte cap",
        usage.host_memory_peak_bytes
    );
}

/// `wasi:http/client.send` goes through the same vetting as WASI 0.2's
/// `outgoing-handler`: an allowed destination is reached, the rest denied.
#[tokio::test]
async fn p3_outbound_reaches_only_allowed_destinations() {
    let (server, upstream) = serve_beside_an_allowed_upstream(p3_server).await;
    let (a, up) = (server.addr, upstream.addr);
    for url in [
        format!("http://127.0.0.1:{}/hello", up.port() ^ 1),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
    ] {
        assert_outbound_denied(a, &url).await;
    }
}

/// WASI 0.3's filesystem links (componentize-py commands import it) but
/// offers no directory: a guest's preopens are reached through WASI 0.2,
/// whose opens the per-invocation cap counts.
#[test]
fn p3_filesystem_offers_no_directory_and_std_reads_through_wasi_0_2() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("p3-dirs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), "twelve bytes").unwrap();
    let mapping = format!("{}::/d", dir.display());
    let module = p3_cli_guest();
    let out = wasm_run(&[
        "run",
        "--dir",
        &mapping,
        module.to_str().unwrap(),
        "dirs",
        "/d/f",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "p3 preopens: 0\nstd read: 12\n"
    );
}

/// The proxy pattern: a WASI 0.3 guest answers with the response of its own
/// `client.send`, whose body wasmtime streams from the upstream connection
/// after the guest's store is gone. Against an upstream that sends a head
/// and one chunk and then goes silent, every upstream connection is closed
/// by the server once the requests' deadline passes (without the bound they
/// stayed open for as long as the clients did), the clients see their
/// responses truncated, and the server's sockets come back.
#[tokio::test]
async fn a_proxied_body_does_not_outlive_its_requests_deadline() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENTS: usize = 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a2, c2) = (accepted.clone(), closed.clone());
    let silent = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            a2.fetch_add(1, Ordering::SeqCst);
            let closed = c2.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n",
                    )
                    .await;
                // Silent from now on; the server closing its end ends this.
                let mut rest = [0u8; 64];
                while matches!(conn.read(&mut rest).await, Ok(n) if n > 0) {}
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let (server, sockets_before, mut clients) =
        p3_clients_of_an_upstream(upstream, "/proxy", "32MiB", CLIENTS).await;
    let replies = async {
        while let Some(reply) = clients.join_next().await {
            let reply = reply.unwrap();
            assert_eq!(reply.status, 200, "the upstream's head");
            assert!(
                reply.body.is_err(),
                "truncated, not ended: {:?}",
                reply.body
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(15), replies)
        .await
        .expect("every proxied body ended within 15 s of a 2 s deadline");
    assert_eq!(accepted.load(Ordering::SeqCst), CLIENTS);
    crate::serve::eventually(
        Duration::from_secs(10),
        "the upstream sockets closed",
        || {
            let closed = closed.load(Ordering::SeqCst);
            async move { closed == CLIENTS }
        },
    )
    .await;
    crate::serve::eventually(Duration::from_secs(10), "the server's sockets back", || {
        let now = sockets_of(server.pid());
        async move { now <= sockets_before }
    })
    .await;
    silent.abort();
}

/// The second half of the proxy case: an upstream that answers at once and
/// then stops reading a request body the guest is still sending. wasmtime
/// keeps the connection's task alive from inside the request body, so once
/// the guest's store is gone nothing would end it; the request's deadline
/// does. The guest is killed at its 2 s deadline with its body unsent, and
/// every upstream connection's socket in the server is closed soon after (without the bound they stayed open for as long
/// as the upstream kept them).
#[tokio::test]
async fn an_upload_an_upstream_stops_reading_does_not_outlive_its_requests_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENTS: usize = 10;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive buffer, so that the guest's body fills it at once.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let upstream = listener.local_addr().unwrap();
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    let stalling = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let held = held_tx.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                let _ = conn.read(&mut head).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                // Kept open and never read again, until the test ends.
                let _ = held.send(conn);
            });
        }
    });
    let (server, sockets_before, mut clients) =
        p3_clients_of_an_upstream(upstream, "/upload", "64MiB", CLIENTS).await;
    let replies = async {
        while let Some(reply) = clients.join_next().await {
            let reply = reply.unwrap();
            // The upstream's answer reached the guest; its response ends
            // with its store, which the body still being written keeps to
            // the deadline.
            assert_eq!(reply.status, 200, "{:?}", reply.body);
        }
    };
    tokio::time::timeout(Duration::from_secs(15), replies)
        .await
        .expect("every upload answered");
    let mut kept = Vec::new();
    while kept.len() < CLIENTS {
        kept.push(held.recv().await.expect("the upstream is running"));
    }
    crate::serve::eventually(Duration::from_secs(10), "the server's sockets back", || {
        let now = sockets_of(server.pid());
        async move { now <= sockets_before }
    })
    .await;
    // And the upstream sees each connection closed by the server.
    for mut conn in kept {
        let mut sink = vec![0u8; 64 << 10];
        let closed = async { while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {} };
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the server closed its end");
    }
    stalling.abort();
}

/// The CPU an outgoing connection's task spends (HTTP parsing, TLS) counts
/// against its request's `--max-cpu`, even after the guest has returned:
/// a proxy of an upstream that streams without end, on a 20 s deadline and
/// 100 ms of CPU, ends well before the deadline, when the connection's
/// parsing has used the request's CPU (without the charge it streamed
/// until the deadline).
#[tokio::test]
async fn a_proxied_connection_spends_its_requests_cpu() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let endless = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                // Small chunks: parsing them is the connection task's work.
                let chunk = [b"40\r\n".as_slice(), &[b'x'; 64], b"\r\n"].concat();
                let many = chunk.repeat(1024);
                while conn.write_all(&many).await.is_ok() {}
            });
        }
    });
    let allow = format!("127.0.0.1:{}", upstream.port());
    let server = ServeGuard::serving(
        &p3_http_guest(),
        &[
            "--timeout",
            "20s",
            "--max-cpu",
            "100ms",
            "--allow-outbound",
            &allow,
        ],
    );
    assert_eq!(get(server.addr, "/hello").await.status, 200);
    let started = std::time::Instant::now();
    let mut client = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request =
        format!("GET /proxy?url=http://{allow}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let drained = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} };
    tokio::time::timeout(Duration::from_secs(15), drained)
        .await
        .expect("the proxied body ended well before its 20 s deadline");
    assert!(started.elapsed() < Duration::from_secs(15));
    endless.abort();
}

/// Serves the WASI 0.3 guest with a 2 s deadline and `max_memory`,
/// allowed to reach `upstream`; once it answers, counts its sockets and
/// starts `clients` GETs of `route?url=http://UPSTREAM/`.
async fn p3_clients_of_an_upstream(
    upstream: std::net::SocketAddr,
    route: &str,
    max_memory: &str,
    clients: usize,
) -> (ServeGuard, usize, tokio::task::JoinSet<crate::serve::Reply>) {
    let allow = format!("127.0.0.1:{}", upstream.port());
    let server = ServeGuard::serving(
        &p3_http_guest(),
        &[
            "--timeout",
            "2s",
            "--max-memory",
            max_memory,
            "--allow-outbound",
            &allow,
        ],
    );
    assert_eq!(get(server.addr, "/hello").await.status, 200);
    let sockets_before = sockets_of(server.pid());
    let url = format!("{route}?url=http://127.0.0.1:{}/", upstream.port());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (addr, url) = (server.addr, url.clone());
        set.spawn(async move { get(addr, &url).await });
    }
    (server, sockets_before, set)
}

/// The sockets process `pid` has open (from `/proc`).
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}
