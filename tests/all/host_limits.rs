//! Limits that hold: whatever a guest or a client makes the host hold is
//! bounded by that request's limits or by a documented host-wide cap, and
//! these tests measure it (the process's resident memory from `/proc`, the
//! server's open-connection gauge) so that they fail without the bound.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasm_run_tests::{Target, guest, http_guest};

use crate::serve::{ServeGuard, assert_killed, eventually, get, metric, write_config};
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

/// Runs `wasm-run run --report - FLAGS... MODULE`; returns (status, report).
fn run_with_report(flags: &[&str], module: &std::path::Path) -> (i32, serde_json::Value) {
    let (status, _, _, report) = crate::cli::run_report(flags, module.to_str().unwrap(), &[]);
    (status, report)
}

/// The memory of a whole `wasm-run run` process that runs nothing heavy:
/// the baseline the bounds below are measured from.
fn baseline_rss() -> u64 {
    let hello = guest("hello", Target::P1);
    let (status, report) = run_with_report(&[], &hello);
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
    let (status, report) = run_with_report(&["--max-memory", "16MiB"], &ok);
    assert_eq!(status, 0, "{report}");
    assert!(report["peak_memory_bytes"].as_u64().unwrap() >= 8 * MIB);

    // Growing without end is killed at the cap, as memory, promptly, and the
    // process never holds much more than the cap.
    let bomb = wat_file("table-bomb", &table_bomb(1 << 20));
    let started = Instant::now();
    let (status, report) = run_with_report(&["--max-memory", "16MiB", "--timeout", "10s"], &bomb);
    assert_eq!(status, 137, "{report}");
    assert_eq!(report["outcome"], "memory_exceeded");
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
    let (status, report) = run_with_report(&["--max-memory", "16MiB"], &big);
    assert_eq!(status, 137, "{report}");
    assert_eq!(report["outcome"], "memory_exceeded");
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

/// `(VmRSS, VmHWM)` of process `pid`, in bytes.
pub(crate) fn rss_of(pid: u32) -> (u64, u64) {
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

#[tokio::test]
async fn wasi_http_fields_count_against_the_request_and_the_host_stays_bounded() {
    let module = http_guest();
    let server = ServeGuard::start(&[
        "--timeout",
        "10s",
        "--max-memory",
        "32MiB",
        "--memory-budget",
        "1GiB",
        module.to_str().unwrap(),
    ]);
    let a = server.addr;
    // Obeyed: a guest that keeps 500 fields of 15 KiB is served.
    let ok = get(a, "/fields?n=500").await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.text(), "made 500 fields\n");
    let (before, _) = rss_of(server.pid());

    // Violated: four at once that never stop are each killed as memory, well
    // before their deadline, and the server holds at most their caps plus
    // their host allowances.
    let started = Instant::now();
    let bombs: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get(a, "/fields?kib=15")))
        .collect();
    for bomb in bombs {
        assert_killed(&bomb.await.unwrap(), 500, "memory_exceeded");
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    // Values over the field-size limit are refused; the resource count still
    // ends it.
    assert_killed(&get(a, "/fields?kib=64").await, 500, "memory_exceeded");
    let (_, peak) = rss_of(server.pid());
    let per_request = (32 + 36) * MIB;
    assert!(
        peak < before + 4 * per_request,
        "server peaked at {} MiB, {} MiB before",
        peak >> 20,
        before >> 20
    );
    assert_eq!(get(a, "/hello").await.status, 200);
}

#[tokio::test]
async fn tables_count_against_the_cap_in_serve_too() {
    // Steps of 2 MiB of elements: killed on the third under a 4 MiB cap
    // (well inside the pool's own limit of a million elements per table).
    let bomb = wat_file("serve-table-bomb", &table_bomb(1 << 18));
    let server = ServeGuard::start(&[
        "--timeout",
        "10s",
        "--max-memory",
        "4MiB",
        bomb.to_str().unwrap(),
    ]);
    let started = Instant::now();
    assert_killed(&get(server.addr, "/").await, 500, "memory_exceeded");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A server whose budget fits four requests of the demo CGI guest, with a
/// deadline long enough that a request holding budget would hold it for
/// the whole test.
fn budget_of_four(extra: &[&str]) -> ServeGuard {
    let demo = guest("demo", Target::P1);
    let mut args = vec![
        "--timeout",
        "30s",
        "--max-memory",
        "32MiB",
        // 4 × (32 MiB cap + 4 MiB host allowance)
        "--memory-budget",
        "144MiB",
        "--admin-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let demo = demo.to_str().unwrap().to_string();
    args.push(&demo);
    ServeGuard::start(&args)
}

#[tokio::test]
async fn clients_that_dribble_bodies_hold_no_budget_and_get_408() {
    let server = budget_of_four(&["--body-timeout", "2s"]);
    let (a, admin) = (server.addr, server.admin.unwrap());
    // 16 clients announce a large body and send three bytes of it.
    let mut dribblers = Vec::new();
    for _ in 0..16 {
        let mut c = TcpStream::connect(a).await.unwrap();
        c.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc")
            .await
            .unwrap();
        dribblers.push(c);
    }
    // Slowloris heads too.
    let mut heads = Vec::new();
    for _ in 0..16 {
        let mut c = TcpStream::connect(a).await.unwrap();
        c.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        heads.push(c);
    }
    eventually(
        Duration::from_secs(5),
        "all connections accepted",
        || async { metric(admin, "wasm_run_open_connections").await >= 32 },
    )
    .await;
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
    let mut c = dribblers.pop().unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        reply.contains("x-wasm-run-outcome: body_timeout"),
        "{reply}"
    );
    eventually(Duration::from_secs(10), "body timeouts counted", || async {
        metric(admin, "wasm_run_request_body_timeouts_total").await >= 16
    })
    .await;
}

#[tokio::test]
async fn a_body_that_stalls_after_admission_is_cut_off() {
    let server = budget_of_four(&["--body-timeout", "1s", "--body-buffer", "16KiB"]);
    let (a, admin) = (server.addr, server.admin.unwrap());
    let mut c = TcpStream::connect(a).await.unwrap();
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    // More than the buffer: the request is admitted, then the client stops.
    c.write_all(&[b'x'; 20 << 10]).await.unwrap();
    eventually(Duration::from_secs(5), "the request admitted", || async {
        metric(admin, "wasm_run_memory_budget_in_use_bytes").await > 0
    })
    .await;
    let started = Instant::now();
    eventually(Duration::from_secs(5), "the budget given back", || async {
        metric(admin, "wasm_run_memory_budget_in_use_bytes").await == 0
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn clients_that_never_read_are_dropped() {
    let server = budget_of_four(&["--write-timeout", "1s", "--memory-budget", "1GiB"]);
    let (a, admin) = (server.addr, server.admin.unwrap());
    let mut stuck = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(a).await.unwrap();
        // The demo's /flood writes output forever, as fast as it can.
        c.write_all(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        stuck.push(c);
    }
    eventually(Duration::from_secs(5), "8 connections open", || async {
        metric(admin, "wasm_run_open_connections").await >= 8
    })
    .await;
    let started = Instant::now();
    assert_eq!(get(a, "/hello").await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Their writes stall, the write timeout fires, the connections close.
    eventually(
        Duration::from_secs(15),
        "stuck connections dropped",
        || async { metric(admin, "wasm_run_open_connections").await == 0 },
    )
    .await;
    eventually(Duration::from_secs(15), "their guests ended", || async {
        metric(admin, "wasm_run_requests_in_flight").await == 0
    })
    .await;
    let (rss, _) = rss_of(server.pid());
    assert!(rss < 512 * MIB, "server holds {} MiB", rss >> 20);
    drop(stuck);
}

#[tokio::test]
async fn open_connections_are_capped() {
    let server = budget_of_four(&["--max-connections", "8", "--header-timeout", "2s"]);
    let (a, admin) = (server.addr, server.admin.unwrap());
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(a).await.unwrap());
    }
    eventually(Duration::from_secs(5), "the cap reached", || async {
        metric(admin, "wasm_run_open_connections").await == 8
    })
    .await;
    for _ in 0..10 {
        assert!(metric(admin, "wasm_run_open_connections").await <= 8);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let server = ServeGuard::start_with_ulimit("-Sn 256", &[demo.to_str().unwrap()]);
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
    let demo = guest("demo", Target::P1);
    let config = write_config(
        "leaky.toml",
        &format!(
            "[[route]]\npath = \"/\"\nmodule = \"{}\"\ndirs = [\"/no/such/secret-dir::/data\"]\n",
            demo.display()
        ),
    );
    let server = ServeGuard::start(&["--config", config.to_str().unwrap()]);
    let reply = get(server.addr, "/hello").await;
    assert_eq!(reply.status, 500);
    let text = reply.text().to_string();
    assert!(text.contains("host_error"), "{text}");
    assert!(!text.contains("secret-dir"), "path leaked: {text}");
    assert!(!text.contains("demo"), "guest path leaked: {text}");
    let id = reply.headers["x-request-id"].to_str().unwrap().to_string();
    server.signal("TERM");
    let (_, stderr) = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&id) && l.contains("secret-dir")),
        "the log keeps the detail:\n{stderr}"
    );
}

#[tokio::test]
async fn outbound_requests_reach_only_vetted_destinations() {
    // The upstream: another server on loopback.
    let upstream = ServeGuard::start(&[guest("demo", Target::P1).to_str().unwrap()]);
    let up = upstream.addr;
    let module = http_guest();
    let explicit = format!("127.0.0.1:{}", up.port());
    let server = ServeGuard::start(&[
        "--allow-outbound",
        &explicit,
        "--allow-outbound",
        "*",
        module.to_str().unwrap(),
    ]);
    let a = server.addr;
    // Listed explicitly: sent, to the address that was checked.
    let ok = get(a, &format!("/outbound?url=http://{up}/hello")).await;
    assert_eq!(ok.text(), "outbound ok: 200\n");
    // `*` does not cover loopback, link-local (metadata) or private hosts.
    for url in [
        format!("http://127.0.0.1:{}/hello", up.port() ^ 1),
        "http://localhost/".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
        format!("http://user:pw@{up}/hello"),
    ] {
        let denied = get(a, &format!("/outbound?url={url}")).await;
        assert!(
            denied.text().contains("HttpRequestDenied"),
            "{url}: {}",
            denied.text()
        );
    }
}

#[tokio::test]
async fn request_heads_over_32_kib_are_refused() {
    let server = budget_of_four(&[]);
    for (size, status) in [(20_000, "200"), (40_000, "431")] {
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(size)
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{size}: {reply}"
        );
    }
}

#[tokio::test]
async fn the_connection_cap_fits_under_the_open_files_limit() {
    let demo = guest("demo", Target::P1);
    let server = ServeGuard::start_with_ulimit(
        "-n 300",
        &[
            "--max-connections",
            "1000",
            "--header-timeout",
            "3s",
            "--admin-addr",
            "127.0.0.1:0",
            demo.to_str().unwrap(),
        ],
    );
    let admin = server.admin.unwrap();
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // 300 descriptors leave 44 beside the reserve of 256: a quarter (11)
    // stays for guests, 33 for connections.
    eventually(
        Duration::from_secs(5),
        "the lowered cap reached",
        || async { metric(admin, "wasm_run_open_connections").await == 33 },
    )
    .await;
    for _ in 0..10 {
        assert!(metric(admin, "wasm_run_open_connections").await <= 33);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(idle);
    server.signal("TERM");
    let (_, stderr) = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(stderr.contains("lowering the cap"), "{stderr}");
}

/// A client that does not read: what the guest could write before it
/// blocked is what the host and the kernel hold for the connection. With
/// `--send-buffer 64KiB` that is the kernel's (doubled) 128 KiB plus the
/// server's per-connection bounds (about 256 KiB); the kernel's own sizing
/// let the same guest write 2.8 MB here.
#[tokio::test]
async fn a_client_that_never_reads_holds_at_most_the_send_buffer_and_the_connection_bounds() {
    let http = http_guest();
    let server = ServeGuard::start(&[
        "--send-buffer",
        "64KiB",
        "--write-timeout",
        "1s",
        "--timeout",
        "30s",
        "--admin-addr",
        "127.0.0.1:0",
        http.to_str().unwrap(),
    ]);
    let (addr, admin) = (server.addr, server.admin.unwrap());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(addr).await.unwrap();
    client
        .write_all(b"GET /blob?kib=16384 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the request in flight", || async {
        metric(admin, "wasm_run_requests_in_flight").await == 1
    })
    .await;
    // Its writes stall; the write timeout drops the connection, the guest's
    // next write fails, and the request ends.
    eventually(
        Duration::from_secs(20),
        "the stalled request ended",
        || async { metric(admin, "wasm_run_requests_in_flight").await == 0 },
    )
    .await;
    drop(client);
    server.signal("TERM");
    let (_, stderr) = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(10)))
        .await
        .unwrap();
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
