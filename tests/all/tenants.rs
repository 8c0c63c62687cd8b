//! Tenants share the memory budget: one route's flood fills its own queue
//! and takes its share, and a victim route beside it is served — the
//! scenario of a flood of 2 s sleepers against a budget of four requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::serve::{Reply, ServeGuard, demo_config, get};

/// A server with `/a` (sleeps into its 1 s deadline) and `/b` (answers at
/// once), a budget that fits four requests, and queues of 16. With
/// `shared`, both routes are one tenant — the single FIFO queue of a host
/// without tenants.
fn server(name: &str, shared: bool) -> ServeGuard {
    let (tenancy, tenant) = if shared {
        ("[[tenant]]\nname = \"everyone\"\n", "tenant = \"everyone\"")
    } else {
        ("", "")
    };
    let limits = format!("limits = {{ max-memory = \"16MiB\", timeout = \"1s\" }}\n{tenant}");
    let config = demo_config(
        name,
        &format!(
            "[server]\nmemory-budget = \"74MiB\"\nmax-queue = 16\nqueue-timeout = \"5s\"\n{tenancy}"
        ),
        &[("/a", &limits), ("/b", &limits)],
    );
    ServeGuard::with_config(&config, &[])
}

/// Runs 40 connections looping on `/a` while `victims` sequential requests
/// go to `/b`; returns the victims' replies and latencies, and how many
/// flood requests reached their deadline.
async fn flood_beside_victims(
    server: &ServeGuard,
    victims: usize,
) -> (Vec<(Reply, Duration)>, usize) {
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut served = 0;
                while !stop.load(Ordering::Relaxed) {
                    let reply = get(addr, "/a/sleep?s=10").await;
                    if reply.status == 504 {
                        served += 1;
                    }
                }
                served
            })
        })
        .collect();
    // Let the flood fill the budget and the queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut replies = Vec::new();
    for _ in 0..victims {
        let started = Instant::now();
        let reply = get(addr, "/b/hello").await;
        replies.push((reply, started.elapsed()));
        // One victim request every 100 ms: the pace of the load, not a wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for f in flood {
        served += f.await.unwrap();
    }
    (replies, served)
}

#[tokio::test]
async fn a_flooded_tenant_beside_a_victim() {
    // Violated: one tenant for both routes, as a host without tenants. The
    // flood keeps the one queue full, and the victim is turned away.
    let shared = server("tenants-shared.toml", true);
    let (replies, _) = flood_beside_victims(&shared, 5).await;
    assert!(
        replies.iter().any(|(r, _)| r.status == 503),
        "with one queue the flood should crowd the victim out: {:?}",
        replies.iter().map(|(r, _)| r.status).collect::<Vec<_>>()
    );
    drop(shared);

    // Obeyed, with the defaults: a tenant per route. Every victim request
    // is served. The first waits at most about one flood request's
    // deadline (1 s): the flood held the budget before the victim came.
    // From then on the victim's next request is kept from the flood, so
    // each is admitted at once instead of behind a flood request.
    let server = server("tenants-own.toml", false);
    let (replies, served) = flood_beside_victims(&server, 20).await;
    for (i, (reply, latency)) in replies.iter().enumerate() {
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let bound = if i == 0 { 2_500 } else { 400 };
        assert!(
            *latency < Duration::from_millis(bound),
            "victim request {i} took {latency:?}"
        );
    }
    assert!(
        served >= 4,
        "the flood was served too ({served} reached their deadline)"
    );
}
