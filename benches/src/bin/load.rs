//! HTTP load generator for wasm-run's benchmarks: N keep-alive connections
//! on loopback, each sending requests back to back for a fixed duration;
//! prints one JSON line with throughput and latency percentiles.
//!
//! ```text
//! load --url http://127.0.0.1:8080/hello --connections 32 --duration 10s [--label NAME]
//!      [--mix /spin=0.5]   # half of the requests go to /spin; stats per path
//! load --url http://127.0.0.1:8080/hello --rate 200 --duration 20s
//!      # open loop: one request every 5 ms at fixed times, whatever the
//!      # server does; latency counts from each request's scheduled time
//! ```
//!
//! Closed loop (the default) measures throughput: each connection sends its
//! next request when the last one is answered. Open loop (`--rate`)
//! measures latency as a client with its own schedule feels it, without
//! coordinated omission: a slow answer delays no later request, and every
//! request's latency includes any time it spent waiting to be sent.
//!
//! Bounded on purpose: loopback addresses only, at most 1024 connections and
//! 10 minutes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

struct Args {
    addr: SocketAddr,
    path: String,
    mix: Vec<(String, f64)>,
    connections: usize,
    duration: Duration,
    label: String,
    /// Requests per second, open loop; `None` for closed loop.
    rate: Option<f64>,
}

fn usage(msg: &str) -> ! {
    eprintln!("load: {msg}");
    eprintln!(
        "usage: load --url http://127.0.0.1:PORT/PATH [--connections N] [--duration 10s] \
         [--label NAME] [--mix /path=FRACTION]..."
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut url = None;
    let mut connections = 32;
    let mut duration = Duration::from_secs(10);
    let mut label = String::new();
    let mut mix = Vec::new();
    let mut rate = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--url" => url = Some(value),
            "--connections" => {
                connections = value.parse().unwrap_or_else(|_| usage("bad --connections"))
            }
            "--duration" => {
                duration = wasm_run::limits::parse_duration(&value)
                    .unwrap_or_else(|e| usage(&e.to_string()))
            }
            "--label" => label = value,
            "--rate" => {
                let r: f64 = value.parse().unwrap_or_else(|_| usage("bad --rate"));
                if !(r > 0.0 && r <= 20_000.0) {
                    usage("--rate must be in (0, 20000] requests per second");
                }
                rate = Some(r);
            }
            "--mix" => {
                let (path, frac) = value
                    .rsplit_once('=')
                    .unwrap_or_else(|| usage("--mix is /path=FRACTION"));
                let frac: f64 = frac.parse().unwrap_or_else(|_| usage("bad --mix fraction"));
                mix.push((path.to_string(), frac));
            }
            other => usage(&format!("unknown flag {other}")),
        }
    }
    let url = url.unwrap_or_else(|| usage("--url is required"));
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| usage("only http:// URLs"));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr: SocketAddr = authority
        .parse()
        .unwrap_or_else(|_| usage("the URL needs an IP:PORT"));
    if !addr.ip().is_loopback() {
        usage("loopback addresses only");
    }
    if connections == 0 || connections > 1024 {
        usage("--connections must be 1..=1024");
    }
    if duration > Duration::from_secs(600) {
        usage("--duration must be at most 10m");
    }
    Args {
        addr,
        path,
        mix,
        connections,
        duration,
        label,
        rate,
    }
}

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

/// Picks a path for request number `n`: the mix's paths in proportion,
/// deterministically interleaved, else the main path.
fn pick(args: &Args, n: u64) -> &str {
    let x = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    let mut acc = 0.0;
    for (path, frac) in &args.mix {
        acc += frac;
        if x < acc {
            return path;
        }
    }
    &args.path
}

async fn connection(args: &Args, worker: u64, deadline: Instant) -> BTreeMap<String, Stats> {
    let mut stats: BTreeMap<String, Stats> = BTreeMap::new();
    let mut n = worker.wrapping_mul(1_000_003);
    'reconnect: while Instant::now() < deadline {
        let Ok(stream) = tokio::net::TcpStream::connect(args.addr).await else {
            stats.entry(args.path.clone()).or_default().errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) = http1::handshake(TokioIo::new(stream)).await else {
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < deadline {
            n += 1;
            let path = pick(args, n);
            let req = http::Request::get(path)
                .header("host", args.addr.to_string())
                .body(Empty::<Bytes>::new())
                .expect("valid request");
            let start = Instant::now();
            let s = stats.entry(path.to_string()).or_default();
            let Ok(response) = sender.send_request(req).await else {
                s.errors += 1;
                continue 'reconnect;
            };
            let status = response.status().as_u16();
            if response.into_body().collect().await.is_err() {
                s.errors += 1;
                continue 'reconnect;
            }
            s.latencies_us
                .push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
            *s.statuses.entry(status).or_default() += 1;
            if sender.ready().await.is_err() {
                continue 'reconnect;
            }
        }
    }
    stats
}

/// Open loop: request `i` is due at `start + i / rate`; it goes out on an
/// idle keep-alive connection, or a new one, and its latency counts from
/// the time it was due.
async fn open_loop(args: &'static Args, rate: f64, deadline: Instant) -> BTreeMap<String, Stats> {
    type Sender = http1::SendRequest<Empty<Bytes>>;
    let (idle_tx, mut idle_rx) = tokio::sync::mpsc::unbounded_channel::<Sender>();
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, Option<u16>, u32)>();
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut open = 0usize;
    let mut i: u64 = 0;
    loop {
        let due = start + interval.mul_f64(i as f64);
        if due >= deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        i += 1;
        let path = pick(args, i).to_string();
        let idle = idle_rx.try_recv().ok();
        if idle.is_none() && open >= 1024 {
            // Never more than 1024 connections: count it as failed.
            let _ = done_tx.send((path, None, 0));
            continue;
        }
        if idle.is_none() {
            open += 1;
        }
        let (idle_tx, done_tx) = (idle_tx.clone(), done_tx.clone());
        let addr = args.addr;
        tokio::spawn(async move {
            let sender = match idle {
                Some(s) => Some(s),
                None => match tokio::net::TcpStream::connect(addr).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        match http1::handshake(TokioIo::new(stream)).await {
                            Ok((sender, conn)) => {
                                tokio::spawn(conn);
                                Some(sender)
                            }
                            Err(_) => None,
                        }
                    }
                    Err(_) => None,
                },
            };
            let Some(mut sender) = sender else {
                let _ = done_tx.send((path, None, 0));
                return;
            };
            let req = http::Request::get(path.as_str())
                .header("host", addr.to_string())
                .body(Empty::<Bytes>::new())
                .expect("valid request");
            let status = match sender.send_request(req).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.into_body().collect().await.ok().map(|_| status)
                }
                Err(_) => None,
            };
            let latency = u32::try_from(due.elapsed().as_micros()).unwrap_or(u32::MAX);
            let _ = done_tx.send((path, status, latency));
            if status.is_some() && sender.ready().await.is_ok() {
                let _ = idle_tx.send(sender);
            }
        });
    }
    drop(done_tx);
    let mut stats: BTreeMap<String, Stats> = BTreeMap::new();
    // Answers still outstanding get until the duration plus 30 s.
    let grace = tokio::time::sleep_until((deadline + Duration::from_secs(30)).into());
    tokio::pin!(grace);
    let mut received = 0u64;
    while received < i {
        tokio::select! {
            done = done_rx.recv() => {
                let Some((path, status, latency)) = done else { break };
                received += 1;
                let s = stats.entry(path).or_default();
                match status {
                    Some(status) => {
                        s.latencies_us.push(latency);
                        *s.statuses.entry(status).or_default() += 1;
                    }
                    None => s.errors += 1,
                }
            }
            () = &mut grace => break,
        }
    }
    stats.entry(args.path.clone()).or_default().errors += i - received;
    stats
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Box::leak(Box::new(parse_args()));
    let args: &'static Args = args;
    let start = Instant::now();
    let deadline = start + args.duration;
    let tasks: Vec<_> = match args.rate {
        Some(rate) => vec![tokio::spawn(open_loop(args, rate, deadline))],
        None => (0..args.connections as u64)
            .map(|w| tokio::spawn(connection(args, w, deadline)))
            .collect(),
    };
    let mut all: BTreeMap<String, Stats> = BTreeMap::new();
    for t in tasks {
        for (path, s) in t.await.expect("worker panicked") {
            let e = all.entry(path).or_default();
            e.latencies_us.extend(s.latencies_us);
            e.errors += s.errors;
            for (k, v) in s.statuses {
                *e.statuses.entry(k).or_default() += v;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut per_path = serde_json::Map::new();
    for (path, mut s) in all {
        s.latencies_us.sort_unstable();
        let ok = s
            .statuses
            .iter()
            .filter(|(k, _)| **k < 400)
            .map(|(_, v)| v)
            .sum::<u64>();
        per_path.insert(
            path,
            serde_json::json!({
                "requests": s.latencies_us.len(),
                "ok": ok,
                "errors": s.errors,
                "statuses": s.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
                "rps": s.latencies_us.len() as f64 / elapsed,
                "p50_ms": percentile(&s.latencies_us, 0.50),
                "p99_ms": percentile(&s.latencies_us, 0.99),
                "p999_ms": percentile(&s.latencies_us, 0.999),
                "max_ms": percentile(&s.latencies_us, 1.0),
            }),
        );
    }
    let report = serde_json::json!({
        "label": args.label,
        "connections": args.connections,
        "rate": args.rate,
        "duration_s": elapsed,
        "paths": per_path,
    });
    println!("{report}");
}
