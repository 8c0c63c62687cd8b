//! A batch embedder: many CPU-bound invocations started at once through the
//! library, as a job runner would. Reports the wall time, the process's CPU
//! time over the batch (from `/proc/self/stat`) and their ratio: how many
//! cores the batch kept busy; and the wall time the batch would take if
//! each job cost what it costs alone, spread over every core.
//! Long-running invocations move to the engine's low-priority threads after
//! their first millisecond; this checks that they still use every core.
//!
//! ```text
//! batch [JOBS] [N]    # default 40 jobs, each counting the primes below N = 600000
//! ```
//!
//! Prints one JSON object.

use std::time::Instant;

use wasm_run::{Engine, EngineConfig, Guest, Invocation, OutcomeKind};
use wasm_run_tests::{Target, guest};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map_or(40, |a| a.parse().expect("JOBS"));
    let n: String = args.next().unwrap_or_else(|| "600000".into());
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    let search = Guest::from_file(&engine, guest("search", Target::P1)).expect("guest");

    // One job alone first: the CPU one job needs.
    let one = run(&search, &n).await;

    let cpu_before = process_cpu_s();
    let started = Instant::now();
    let tasks: Vec<_> = (0..jobs)
        .map(|_| {
            let (search, n) = (search.clone(), n.clone());
            tokio::spawn(async move { run(&search, &n).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("job");
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = process_cpu_s() - cpu_before;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{}",
        serde_json::json!({
            "jobs": jobs,
            "n": n,
            "cores": cores,
            "one_job_alone_s": one,
            "wall_s": wall,
            "cpu_s": cpu,
            "cores_kept_busy": cpu / wall,
            "ideal_wall_s": one * jobs as f64 / cores as f64,
        })
    );
}

/// User + system CPU seconds of this process so far.
fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which ends with the last ')').
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
        .split(' ')
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// Runs one job; returns the time it spent running, in seconds.
async fn run(search: &Guest, n: &str) -> f64 {
    let outcome = search
        .run(Invocation {
            args: vec![n.to_string()],
            ..Invocation::default()
        })
        .await
        .expect("runs");
    assert_eq!(outcome.kind, OutcomeKind::Exited(0));
    outcome.usage.cpu_time.as_secs_f64()
}
