//! Limits that hold: whatever a guest or a client makes the host hold is
//! bounded by that request's limits or by a documented host-wide cap, and
//! these tests measure it (the process's resident memory from `/proc`, the
//! server's open-connection gauge) so that they fail without the bound.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wasm_run_tests::{Target, guest, http_guest};

use crate::cli::{assert_ended, status_and_report};
use crate::serve::{
    ServeGuard, assert_all_killed, assert_connections_capped_at, assert_killed,
    assert_outbound_denied, assert_served, connect_all, demo_config, flags, get, metric,
    read_reply, serve_beside_an_allowed_upstream, wait_for_metric,
};
use crate::{MIB, wasm_run, wat_file};

/// A module whose `_start` grows a funcref table by `step` elements at a
/// time, forever: host memory, not linear memory.
fn table_bomb(step: u32) -> String {
    format!(
        r#"(module
  (table $t 0 funcref)
  (func (export "_start")
    (loop $grow
      (drop (table.grow $t (ref.null func) (i32.const {step})))
      (br $grow))))"#
    )
}

/// Grows a table once by `elements`, then exits cleanly.
fn table_once(elements: u32) -> String {
    format!(
        r#"(module
  (table $t 0 funcref)
  (func (export "_start")
    (if (i32.lt_s (table.grow $t (ref.null func) (i32.const {elements})) (i32.const 0))
      (then unreachable))))"#
    )
}

/// The memory of a whole `wasm-run run` process that runs nothing heavy:
/// the baseline the bounds below are measured from.
fn baseline_rss() -> u64 {
    let hello = guest("hello", Target::P1);
    let (status, report) = status_and_report(&[], &hello, &[]);
    assert_eq!(status, 0);
    report["host_peak_rss_bytes"]
        .as_u64()
        .expect("rss reported")
}

#[test]
fn table_growth_counts_against_the_memory_cap_in_run() {
    let base = baseline_rss();
    // 8 MiB of table elements (1M × 8 bytes) fits a 16 MiB cap.
    let ok = wat_file("table-once", &table_once(1 << 20));
    let (status, report) = status_and_report(&["--max-memory", "16MiB"], &ok, &[]);
    assert_eq!(status, 0, "{report}");
    assert!(report["peak_memory_bytes"].as_u64().unwrap() >= 8 * MIB);

    // Growing without end is killed at the cap, as memory, promptly, and the
    // process never holds much more than the cap.
    let bomb = wat_file("table-bomb", &table_bomb(1 << 20));
    let started = Instant::now();
    let (status, report) =
        status_and_report(&["--max-memory", "16MiB", "--timeout", "10s"], &bomb, &[]);
    assert_ended(status, &report, 137, "memory_exceeded");
    assert!(started.elapsed() < Duration::from_secs(5));
    let rss = report["host_peak_rss_bytes"].as_u64().unwrap();
    assert!(
        rss < base + 16 * MIB + 32 * MIB,
        "process peaked at {} MiB (baseline {} MiB)",
        rss >> 20,
        base >> 20
    );
}

#[test]
fn an_initial_table_over_the_cap_is_killed_at_instantiation() {
    let big = wat_file(
        "table-initial",
        r#"(module (table 3000000 funcref) (func (export "_start")))"#,
    );
    let (status, report) = status_and_report(&["--max-memory", "16MiB"], &big, &[]);
    assert_ended(status, &report, 137, "memory_exceeded");
}

#[test]
fn absurd_durations_are_usage_errors() {
    let hello = guest("hello", Target::P1);
    for timeout in ["1000000000000000h", "400d", "9000h"] {
        let out = wasm_run(&["run", "--timeout", timeout, hello.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{timeout}: {stderr}");
        assert!(stderr.contains(timeout), "{stderr}");
    }
    let out = wasm_run(&["run", "--timeout", "8000h", hello.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn read_only_directories_cannot_be_written() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ro-dir");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let writer = guest("write-file", Target::P1);
    let writer = writer.to_str().unwrap();
    let ro = format!("{}::/data:ro", dir.display());
    let out = wasm_run(&["run", "--dir", &ro, writer, "/data/out.txt"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!dir.join("out.txt").exists());
    let rw = format!("{}::/data", dir.display());
    let out = wasm_run(&["run", "--dir", &rw, writer, "/data/out.txt"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "written"
    );
}

#[tokio::test]
async fn wasi_http_fields_count_against_the_request_and_the_host_stays_bounded() {
    let limits = flags("--timeout 10s --max-memory 32MiB --memory-budget 1GiB");
    let server = ServeGuard::serving(&http_guest(), &limits);
    let a = server.addr;
    // Obeyed: a guest that keeps 500 fields of 15 KiB is served.
    assert_served(&get(a, "/fields?n=500").await, "made 500 fields\n");
    let before = server.rss();

    // Violated: four at once that never stop are each killed as memory, well
    // before their deadline, and the server holds at most their caps plus
    // their host allowances.
    let started = Instant::now();
    assert_all_killed(a, "/fields?kib=15", 4, 500, "memory_exceeded").await;
    assert!(started.elapsed() < Duration::from_secs(8));
    // Values over the field-size limit are refused; the resource count still
    // ends it.
    assert_killed(&get(a, "/fields?kib=64").await, 500, "memory_exceeded");
    let per_request = (32 + 36) * MIB;
    server.assert_peak_under(before, 4 * per_request);
    assert_eq!(get(a, "/hello").await.status, 200);
}

#[tokio::test]
async fn tables_count_against_the_cap_in_serve_too() {
    // Steps of 2 MiB of elements: killed on the third under a 4 MiB cap
    // (well inside the pool's own limit of a million elements per table).
    let bomb = wat_file("serve-table-bomb", &table_bomb(1 << 18));
    let server = ServeGuard::serving(&bomb, &["--timeout", "10s", "--max-memory", "4MiB"]);
    let started = Instant::now();
    assert_killed(&get(server.addr, "/").await, 500, "memory_exceeded");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A server whose budget fits four requests of the demo CGI guest, with a
/// deadline long enough that a request holding budget would hold it for
/// the whole test.
fn budget_of_four(extra: &[&str]) -> ServeGuard {
    // The budget: 4 × (32 MiB cap + 256 KiB host allowance + 2 MiB stack).
    let limits =
        flags("--timeout 30s --max-memory 32MiB --memory-budget 144MiB --admin-addr 127.0.0.1:0");
    ServeGuard::serving(&guest("demo", Target::P1), &[&limits, extra].concat())
}

#[tokio::test]
async fn clients_that_dribble_bodies_hold_no_budget_and_get_408() {
    let server = budget_of_four(&["--body-timeout", "2s"]);
    let (a, admin) = (server.addr, server.admin());
    // 16 clients announce a large body and send three bytes of it.
    let large_body = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc";
    let mut dribblers = connect_all(a, 16, large_body).await;
    // Slowloris heads too.
    let _heads = connect_all(a, 16, b"GET /hello HTTP/1.1\r\nHost: x\r\n").await;
    let open = "wasm_run_open_connections";
    wait_for_metric(admin, open, |n| n >= 32, Duration::from_secs(5)).await;
    // None of them holds budget, so a well-behaved request is answered at once.
    assert_eq!(
        metric(admin, "wasm_run_memory_budget_in_use_bytes").await,
        0
    );
    let started = Instant::now();
    let hello = get(a, "/hello").await;
    assert_eq!(hello.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The dribblers are answered 408 once their time is up.
    let reply = read_reply(dribblers.last_mut().unwrap(), Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        reply.contains("x-wasm-run-outcome: body_timeout"),
        "{reply}"
    );
    let body_timeouts = "wasm_run_request_body_timeouts_total";
    wait_for_metric(admin, body_timeouts, |n| n >= 16, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_body_that_stalls_after_admission_is_cut_off() {
    let server = budget_of_four(&["--body-timeout", "1s", "--body-buffer", "16KiB"]);
    let (a, admin) = (server.addr, server.admin());
    let mut c = TcpStream::connect(a).await.unwrap();
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    // More than the buffer: the request is admitted, then the client stops.
    c.write_all(&[b'x'; 20 << 10]).await.unwrap();
    let in_use = "wasm_run_memory_budget_in_use_bytes";
    wait_for_metric(admin, in_use, |n| n > 0, Duration::from_secs(5)).await;
    let started = Instant::now();
    wait_for_metric(admin, in_use, |n| n == 0, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn clients_that_never_read_are_dropped() {
    let server = budget_of_four(&["--write-timeout", "1s", "--memory-budget", "1GiB"]);
    let (a, admin) = (server.addr, server.admin());
    // The demo's /flood writes output forever, as fast as it can.
    let stuck = connect_all(a, 8, b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (open, in_flight) = ("wasm_run_open_connections", "wasm_run_requests_in_flight");
    wait_for_metric(admin, open, |n| n >= 8, Duration::from_secs(5)).await;
    let started = Instant::now();
    assert_eq!(get(a, "/hello").await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Their writes stall, the write timeout fires, the connections close and
    // their guests end.
    wait_for_metric(admin, open, |n| n == 0, Duration::from_secs(15)).await;
    wait_for_metric(admin, in_flight, |n| n == 0, Duration::from_secs(15)).await;
    let rss = server.rss();
    assert!(rss < 512 * MIB, "server holds {} MiB", rss >> 20);
    drop(stuck);
}

#[tokio::test]
async fn open_connections_are_capped() {
    let server = budget_of_four(&["--max-connections", "8", "--header-timeout", "2s"]);
    let (a, admin) = (server.addr, server.admin());
    let idle = connect_all(a, 20, b"").await;
    assert_connections_capped_at(admin, 8).await;
    // Idle connections time out and a waiting client gets its turn.
    let hello = tokio::time::timeout(Duration::from_secs(15), get(a, "/hello"))
        .await
        .expect("served once idle connections closed");
    assert_eq!(hello.status, 200);
    drop(idle);
}

#[tokio::test]
async fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let demo = guest("demo", Target::P1);
    let server = ServeGuard::serving_with_ulimit("-Sn 256", &demo, &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    assert_eq!(fields[3], fields[4], "{line}");
    assert_ne!(fields[3], "256", "{line}");
}

#[tokio::test]
async fn host_errors_do_not_leak_paths_to_clients() {
    let dirs = r#"dirs = ["/no/such/secret-dir::/data"]"#;
    let config = demo_config("leaky.toml", "", &[("/", dirs)]);
    let server = ServeGuard::with_config(&config, &[]);
    let reply = get(server.addr, "/hello").await;
    assert_eq!(reply.status, 500);
    let text = reply.text().to_string();
    assert!(text.contains("host_error"), "{text}");
    assert!(!text.contains("secret-dir"), "path leaked: {text}");
    assert!(!text.contains("demo"), "guest path leaked: {text}");
    let id = reply.request_id();
    let (_, stderr) = server.terminate(Duration::from_secs(5)).await;
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&id) && l.contains("secret-dir")),
        "the log keeps the detail:\n{stderr}"
    );
}

#[tokio::test]
async fn outbound_requests_reach_only_vetted_destinations() {
    // The upstream: another server on loopback, listed explicitly.
    let (server, upstream) =
        serve_beside_an_allowed_upstream(|allow| ServeGuard::serving(&http_guest(), allow)).await;
    let (a, up) = (server.addr, upstream.addr);
    // `*` does not cover loopback, link-local (metadata) or private hosts.
    for url in [
        format!("http://127.0.0.1:{}/hello", up.port() ^ 1),
        "http://localhost/".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
        format!("http://user:pw@{up}/hello"),
    ] {
        assert_outbound_denied(a, &url).await;
    }
}

#[tokio::test]
async fn request_heads_over_32_kib_are_refused() {
    let server = budget_of_four(&[]);
    for (size, status) in [(20_000, "200"), (40_000, "431")] {
        let head = format!(
            "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(size)
        );
        let mut c = connect_all(server.addr, 1, head.as_bytes()).await;
        let reply = read_reply(&mut c[0], Duration::from_secs(5)).await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{size}: {reply}"
        );
    }
}

#[tokio::test]
async fn the_connection_cap_fits_under_the_open_files_limit() {
    let demo = guest("demo", Target::P1);
    let cap = flags("--max-connections 1000 --header-timeout 3s --admin-addr 127.0.0.1:0");
    let server = ServeGuard::serving_with_ulimit("-n 300", &demo, &cap);
    let idle = connect_all(server.addr, 80, b"").await;
    // 300 descriptors leave 44 beside the reserve of 256: a quarter (11)
    // stays for guests, 33 for connections.
    assert_connections_capped_at(server.admin(), 33).await;
    drop(idle);
    let (_, stderr) = server.terminate(Duration::from_secs(10)).await;
    assert!(stderr.contains("lowering the cap"), "{stderr}");
}

/// A client that does not read: what the guest could write before it
/// blocked is what the host and the kernel hold for the connection. With
/// `--send-buffer 64KiB` that is the kernel's (doubled) 128 KiB plus the
/// server's per-connection bounds (about 256 KiB); the kernel's own sizing
/// let the same guest write 2.8 MB here.
#[tokio::test]
async fn a_client_that_never_reads_holds_at_most_the_send_buffer_and_the_connection_bounds() {
    let bounds =
        flags("--send-buffer 64KiB --write-timeout 1s --timeout 30s --admin-addr 127.0.0.1:0");
    let server = ServeGuard::serving(&http_guest(), &bounds);
    let (addr, admin) = (server.addr, server.admin());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(addr).await.unwrap();
    client
        .write_all(b"GET /blob?kib=16384 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let in_flight = "wasm_run_requests_in_flight";
    wait_for_metric(admin, in_flight, |n| n == 1, Duration::from_secs(10)).await;
    // Its writes stall; the write timeout drops the connection, the guest's
    // next write fails, and the request ends.
    wait_for_metric(admin, in_flight, |n| n == 0, Duration::from_secs(20)).await;
    drop(client);
    let (_, stderr) = server.terminate(Duration::from_secs(10)).await;
    let wrote = stderr
        .lines()
        .filter_map(|l| l.split("wrote ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .max()
        .expect("the guest wrote something");
    assert!(
        wrote <= 512,
        "the guest wrote {wrote} KiB to a client that does not read"
    );
}
