//! Every byte a request causes is charged to it: host memory outside linear
//! memory (instance state, body buffers, outgoing connections) counts
//! against the request's one memory cap, and these tests measure the
//! process (VmHWM / VmRSS, open descriptors from `/proc`) so that they fail
//! without the bound. Each attack comes as a pair: the obeyed case is served,
//! the violated one is killed alone and the host stays bounded.

use std::time::{Duration, Instant};

use wasm_run_tests::http_guest;

use crate::cli::{assert_ended, status_and_report};
use crate::serve::{
    ServeGuard, assert_all_killed, assert_killed, assert_served, eventually, fds_of, flags, get,
};
use crate::{MIB, wat_file};

/// A `wasi:cli/run` command component that instantiates a core module
/// defining `globals` i64 globals `instances` times, then returns.
fn instance_state_component(globals: usize, instances: usize) -> String {
    let mut wat = String::with_capacity(globals * 28 + 1024);
    wat.push_str("(component\n  (core module $state\n");
    for _ in 0..globals {
        wat.push_str("    (global i64 (i64.const 0))\n");
    }
    wat.push_str("  )\n");
    for i in 0..instances {
        wat.push_str(&format!("  (core instance $s{i} (instantiate $state))\n"));
    }
    wat.push_str(
        r#"  (core module $main (func (export "run") (result i32) (i32.const 0)))
  (core instance $m (instantiate $main))
  (func $run (result (result)) (canon lift (core func $m "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli))
)"#,
    );
    wat
}

#[test]
fn instance_state_counts_against_the_cap_and_a_bomb_is_never_allocated() {
    // ~250k globals: about 4 MiB of instance state per instance.
    const GLOBALS: usize = 250_000;
    let once = wat_file("state-once", &instance_state_component(GLOBALS, 1));
    let (status, report) = status_and_report(&["--max-memory", "16MiB"], &once, &[]);
    assert_eq!(status, 0, "{report}");
    let host = report["host_memory_peak_bytes"].as_u64().unwrap();
    assert!(
        host >= 16 * GLOBALS as u64,
        "instance state is charged to the invocation: {report}"
    );
    let base = report["host_peak_rss_bytes"].as_u64().unwrap();

    // 62 instances would hold ~250 MiB of host memory: refused before any
    // of it is allocated, as memory, and the process never holds it.
    let bomb = wat_file("state-bomb", &instance_state_component(GLOBALS, 62));
    let (status, report) = status_and_report(&["--max-memory", "64MiB"], &bomb, &[]);
    assert_ended(status, &report, 137, "memory_exceeded");
    let rss = report["host_peak_rss_bytes"].as_u64().unwrap();
    assert!(
        rss < base + 64 * MIB,
        "process peaked at {} MiB (one instance: {} MiB)",
        rss >> 20,
        base >> 20
    );

    // The same bomb as an artifact of `wasm-run compile` (trusted): it
    // carries the footprint read from its wasm, so it is refused the same
    // way, not taken as needing nothing.
    let artifact = bomb.with_extension("cwasm");
    let o = crate::wasm_run(&[
        "compile",
        bomb.to_str().unwrap(),
        "-o",
        artifact.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let (status, report) = status_and_report(
        &["--max-memory", "64MiB", "--allow-precompiled"],
        &artifact,
        &[],
    );
    assert_ended(status, &report, 137, "memory_exceeded");
    let rss = report["host_peak_rss_bytes"].as_u64().unwrap();
    assert!(
        rss < base + 64 * MIB,
        "the artifact's process peaked at {} MiB (one instance: {} MiB)",
        rss >> 20,
        base >> 20
    );
}

#[tokio::test]
async fn outgoing_bodies_kept_unsent_count_against_the_request() {
    let limits = flags("--timeout 30s --max-memory 16MiB --memory-budget 1GiB");
    let server = ServeGuard::serving(&http_guest(), &limits);
    let a = server.addr;
    // Obeyed: four bodies of 1 MiB fit a 16 MiB cap.
    assert_served(
        &get(a, "/keep-bodies?n=4&kib=1024").await,
        "kept 4 bodies\n",
    );
    let before = server.rss();

    // Violated: four requests that each keep 1,000 bodies of 2 MiB (2 GB
    // each without the bound) are killed as memory, well before their
    // deadline, and the server holds at most their caps.
    let started = Instant::now();
    assert_all_killed(a, "/keep-bodies?n=1000&kib=2048", 4, 500, "memory_exceeded").await;
    assert!(started.elapsed() < Duration::from_secs(20));
    server.assert_peak_under(before, 4 * 16 * MIB + 64 * MIB);
    assert_eq!(get(a, "/hello").await.status, 200);
}

#[tokio::test]
async fn outgoing_requests_are_bounded_per_request() {
    // A loopback listener that accepts and never answers; it holds what it
    // accepts until the test ends.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.push(conn);
            if held.len() > 2000 {
                break;
            }
        }
    });
    let limits = format!("--timeout 5s --max-memory 32MiB --allow-outbound {upstream}");
    let server = ServeGuard::serving(&http_guest(), &flags(&limits));
    let a = server.addr;
    let fds_before = fds_of(server.pid());
    let url = format!("http://{upstream}/");
    let path = format!("/outgoing-flood?n=1000&url={url}");
    // Eight requests each try to start 1,000 outgoing GETs at once.
    let floods: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { get(a, &path).await })
        })
        .collect();
    // Wait until the listener has seen what the floods may open.
    eventually(Duration::from_secs(10), "outgoing connections", || {
        let accepted = accepted.clone();
        async move {
            accepted.load(std::sync::atomic::Ordering::Relaxed)
                >= 8 * wasm_run::outbound::DEFAULT_MAX_OUTGOING
        }
    })
    .await;
    let fds = fds_of(server.pid());
    assert!(
        fds <= fds_before + 8 * wasm_run::outbound::DEFAULT_MAX_OUTGOING + 32,
        "server holds {fds} descriptors ({fds_before} before)"
    );
    // A well-behaved request on another connection is served meanwhile.
    let started = Instant::now();
    assert_eq!(get(a, "/hello").await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    for flood in floods {
        // Each blocks on its first (never answered) request until its
        // deadline: killed alone, with the documented outcome.
        assert_killed(&flood.await.unwrap(), 504, "deadline_exceeded");
    }
    assert!(
        accepted.load(std::sync::atomic::Ordering::Relaxed)
            <= 8 * wasm_run::outbound::DEFAULT_MAX_OUTGOING
    );
    holder.abort();
}

#[test]
fn a_guest_whose_memory_is_exactly_its_cap_still_runs() {
    // The empty store and WASI context are the host's own base, not the
    // guest's: one page of linear memory under a one-page cap runs, and
    // one page more is killed.
    let run = |name: &str, text: &str| {
        status_and_report(&["--max-memory", "64KiB"], &wat_file(name, text), &[])
    };
    let one_page = r#"(module (memory 1) (func (export "_start")))"#;
    let (status, report) = run("exactly-one-page", one_page);
    assert_eq!(status, 0, "{report}");
    let one_more =
        r#"(module (memory 1) (func (export "_start") (drop (memory.grow (i32.const 1)))))"#;
    let (status, report) = run("one-page-more", one_more);
    assert_ended(status, &report, 137, "memory_exceeded");
}

#[test]
fn memory_caps_past_the_ceiling_are_usage_errors() {
    let one = wat_file("ceiling", r#"(module (memory 1) (func (export "_start")))"#);
    let out = crate::wasm_run(&["run", "--max-memory", "5GiB", one.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("5GiB") && stderr.contains("4GiB"),
        "{stderr}"
    );
    let out = crate::wasm_run(&["run", "--max-memory", "4GiB", one.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
}

/// A host call's arguments are copied into the host before the call can
/// refuse them: a guest that hands `output-stream.write` a buffer of 40 MiB
/// under a 64 MiB cap has made the host hold linear memory + copy past the
/// cap, and is killed as memory when the call returns. Under the cap, a
/// smaller write past its permit is refused by wasmtime's stream (a trap,
/// not a memory kill), and the server stays within twice the caps it
/// admitted.
#[tokio::test]
async fn a_huge_host_call_argument_is_charged_to_the_request() {
    let server = ServeGuard::serving(
        &http_guest(),
        &["--max-memory", "64MiB", "--memory-budget", "1GiB"],
    );
    let a = server.addr;
    assert_killed(&get(a, "/big-write?mib=1").await, 500, "trapped");
    let before = server.rss();
    assert_all_killed(a, "/big-write?mib=40", 4, 500, "memory_exceeded").await;
    // Each request: at most its cap in linear memory plus a copy of it.
    server.assert_peak_under(before, 4 * 2 * 64 * MIB + 32 * MIB);
    assert_eq!(get(a, "/hello").await.status, 200);
}

/// Empty writes cost the guest nothing; a host that kept a record of each
/// would grow without bound (wasmtime advisories GHSA-f8mm-ggr3-89wh for
/// HTTP bodies, GHSA-5m8g-xhq4-4h93 for `AsyncWriteStream`). Whatever the
/// engine does with them, a request that makes 100 million of them to its
/// response body or its stdout ends with a
/// documented outcome, within its memory cap and deadline, and the server
/// stays bounded and serving.
#[tokio::test]
async fn empty_writes_are_contained_by_the_request() {
    let limits = flags("--timeout 4s --max-memory 16MiB --memory-budget 1GiB");
    let server = ServeGuard::serving(&http_guest(), &limits);
    let a = server.addr;
    // Obeyed: a few empty writes change nothing.
    for (to, text) in [
        ("response", "wrote nothing to the response\n"),
        ("stdout", "wrote nothing to stdout\n"),
    ] {
        assert_served(
            &get(a, &format!("/empty-writes?n=1000&to={to}")).await,
            text,
        );
    }
    let before = server.rss();
    // Violated: each either finishes (the engine kept nothing) or is
    // killed as memory, or at its deadline; never more than its cap.
    let started = Instant::now();
    for to in ["response", "stdout"] {
        let reply = get(a, &format!("/empty-writes?n=100000000&to={to}")).await;
        let contained = match reply.status {
            200 => true,
            500 => reply.outcome() == Some("memory_exceeded"),
            504 => reply.outcome() == Some("deadline_exceeded"),
            _ => false,
        };
        assert!(
            contained,
            "{to}: {} {:?} {:?}",
            reply.status,
            reply.outcome(),
            reply.body
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    server.assert_peak_under(before, 16 * MIB + 64 * MIB);
    assert_eq!(get(a, "/hello").await.status, 200);
}

/// What `readers` clients that read one byte of a 2 MiB response and stop
/// make `module`'s server hold once every guest has ended (at its 2 s
/// deadline, its writes blocked): resident memory over what it held before.
async fn held_for_stalled_readers(module: &std::path::Path, readers: usize) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = ServeGuard::serving(
        module,
        &flags(
            "--send-buffer 64KiB --timeout 2s --write-timeout 60s --max-memory 32MiB \
             --memory-budget 8GiB --admin-addr 127.0.0.1:0",
        ),
    );
    let (addr, admin) = (server.addr, server.admin());
    // The same requests with clients that read everything, as many at
    // once: the pool's slots and the allocator's arenas are then as warm as
    // the stalled readers' guests make them, so what is left is what the
    // stalled connections hold.
    let warm: Vec<_> = (0..readers)
        .map(|_| tokio::spawn(async move { get(addr, "/blob?kib=2048").await.status }))
        .collect();
    for w in warm {
        assert_eq!(w.await.unwrap(), 200);
    }
    let before = server.rss();
    let mut stalled = Vec::new();
    for _ in 0..readers {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut conn = socket.connect(addr).await.unwrap();
        conn.write_all(b"GET /blob?kib=2048 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut one = [0u8; 1];
        conn.read_exact(&mut one).await.unwrap();
        stalled.push(conn);
    }
    let in_flight = "wasm_run_requests_in_flight";
    crate::serve::wait_for_metric(admin, in_flight, |n| n == 0, Duration::from_secs(60)).await;
    let held = server.rss().saturating_sub(before);
    drop(stalled);
    held
}

/// A client that stops reading a WASI 0.3 response holds no more than one
/// of a WASI 0.2 response once the guest has ended: both kinds' bodies come
/// out in 64 KiB frames (wasmtime's WASI 0.3 default is 1 MiB, and the
/// body channel, the coalescing step and hyper may each hold a frame: the
/// issue measured ~1.47 MiB a reader against ~206 KiB).
#[tokio::test]
async fn stalled_readers_of_wasi_0_3_bodies_hold_no_more_than_of_wasi_0_2_ones() {
    const READERS: usize = 60;
    let p2 = held_for_stalled_readers(&http_guest(), READERS).await;
    let p3 = held_for_stalled_readers(&wasm_run_tests::p3_http_guest(), READERS).await;
    let per_reader = |bytes: u64| (bytes / READERS as u64) >> 10;
    // Measured: ~300 KiB a reader for WASI 0.3 (a frame in the body
    // channel, one in hand, the coalescing step's and hyper's buffers)
    // against ~70 KiB for WASI 0.2; ~1.8 MiB with 1 MiB frames.
    assert!(
        p3 <= p2 + READERS as u64 * (512 << 10),
        "{READERS} stalled readers: WASI 0.3 held {} MiB ({} KiB each), WASI 0.2 {} MiB ({} KiB each)",
        p3 >> 20,
        per_reader(p3),
        p2 >> 20,
        per_reader(p2)
    );
}

/// The stack a request runs on is mapped memory no allocator sees: a guest
/// that recurses ~0.75 MiB deep and spins there until its deadline keeps
/// those pages touched, beyond its 512 KiB cap. Admission counts each
/// request's stack (`Guest::host_allowance`), so 280 such requests keep the
/// server within its 192 MiB budget (measured: +~100 MiB); without counting
/// the stacks ~256 were admitted at once and it passed its budget.
#[tokio::test]
async fn deep_stacks_are_counted_by_admission() {
    let module = wat_file(
        "deep-stack.wat",
        r#"(module
  (memory (export "memory") 1)
  (func $down (param $n i32)
    (if (i32.eqz (local.get $n)) (then (loop $spin (br $spin))))
    (call $down (i32.sub (local.get $n) (i32.const 1))))
  (func (export "_start") (call $down (i32.const 12000))))"#,
    );
    let limits = flags(
        "--timeout 1s --max-memory 512KiB --memory-budget 192MiB --max-queue 1024 \
         --queue-timeout 60s",
    );
    let server = ServeGuard::serving(&module, &limits);
    let a = server.addr;
    let before = server.rss();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..280 {
        requests.spawn(async move { get(a, "/").await });
    }
    while let Some(reply) = requests.join_next().await {
        assert_killed(&reply.unwrap(), 504, "deadline_exceeded");
    }
    server.assert_peak_under(before, 192 * MIB + 32 * MIB);
}
