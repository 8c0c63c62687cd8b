//! Host names of guests' outgoing requests resolve by futures the request
//! owns: lookups nobody answers hold no threads and outlive no request, and
//! one route's flood of them does not stall another route's requests.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasm_run_tests::http_guest;

use crate::serve::{ServeGuard, get, write_config};

/// Threads of process `pid` (from `/proc`).
fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: in /proc status")
}

#[tokio::test]
async fn lookups_nobody_answers_hold_no_threads_and_stall_no_other_route() {
    // A name server on loopback that takes every query and never answers.
    let dns = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns_addr = dns.local_addr().unwrap();
    let silent_dns = tokio::spawn(async move {
        let mut query = [0u8; 1500];
        while dns.recv_from(&mut query).await.is_ok() {}
    });
    // An upstream on loopback that the other route reaches as `localhost`
    // (answered from /etc/hosts, no query).
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    let answering = tokio::spawn(async move {
        while let Ok((mut conn, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let module = http_guest();
    let config = write_config(
        "dns-flood.toml",
        &format!(
            "[server]\ndns-servers = [\"{dns_addr}\"]\n\
             [limits]\ntimeout = \"20s\"\n\
             [[route]]\npath = \"/outgoing-flood\"\nmodule = \"{m}\"\n\
             allowed-outbound-hosts = [\"*\"]\n\
             [[route]]\npath = \"/outbound\"\nmodule = \"{m}\"\n\
             allowed-outbound-hosts = [\"localhost:{port}\"]\n",
            m = module.display()
        ),
    );
    let server = ServeGuard::with_config(&config, &[]);
    let (addr, pid) = (server.addr, server.pid());
    let other = format!("/outbound?url=http://localhost:{port}/");
    assert_eq!(get(addr, &other).await.text(), "outbound ok: 200\n");
    let threads_before = threads_of(pid);

    // The flood: 8 requests, each keeping 16 lookups of names nobody
    // answers in flight (each given up after 5 s).
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..8 {
        flood.spawn(async move {
            get(
                addr,
                &format!("/outgoing-flood?n=16&url=http://flood-{i}.invalid.test/"),
            )
            .await
        });
    }
    // Meanwhile the other route's requests reach their upstream at once,
    // and the server's threads stay where they were.
    let mut most_threads = threads_before;
    for _ in 0..10 {
        let started = Instant::now();
        let reply = get(addr, &other).await;
        assert_eq!(reply.text(), "outbound ok: 200\n");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        most_threads = most_threads.max(threads_of(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while let Some(reply) = flood.join_next().await {
        let reply = reply.unwrap();
        assert!(
            reply.text().starts_with("ok 0, failed 16"),
            "{:?}",
            reply.body
        );
        most_threads = most_threads.max(threads_of(pid));
    }
    assert!(
        most_threads <= threads_before + 4,
        "threads went from {threads_before} to {most_threads} while 128 lookups hung"
    );
    silent_dns.abort();
    answering.abort();
}
