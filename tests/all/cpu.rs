//! `--max-cpu` / `Limits::max_cpu`: a CPU-time limit like `RLIMIT_CPU`.
//! CPU spent in wasm and host calls counts, on whichever thread runs the
//! guest; time blocked does not. Past it: `cpu_exceeded`, exit 152, 500.

use std::time::Duration;

use wasm_run::{Invocation, Limits, OutcomeKind};
use wasm_run_tests::{Target, guest, http_guest};

use crate::cli::{assert_ended, status_and_report};
use crate::serve::{ServeGuard, assert_killed, get};
use crate::{load, wasm_run};

fn run_report(
    flags: &[&str],
    name: &str,
    target: Target,
    args: &[&str],
) -> (i32, serde_json::Value) {
    status_and_report(flags, &guest(name, target), args)
}

#[test]
fn a_spinning_guest_is_killed_for_cpu_and_a_sleeping_one_is_not() {
    for target in Target::ALL {
        // Violated: a spinner under a 100 ms limit, with a far deadline.
        let (status, report) = run_report(
            &["--max-cpu", "100ms", "--timeout", "60s"],
            "spin",
            target,
            &[],
        );
        assert_eq!(status, 152, "{target:?}: {report}");
        assert_eq!(report["outcome"], "cpu_exceeded");
        let cpu = report["cpu_time_us"].as_u64().unwrap();
        assert!(cpu >= 100_000, "{report}");
        assert!(
            report["message"].as_str().unwrap().contains("CPU"),
            "{report}"
        );
        // Obeyed: sleeping 0.5 s uses next to no CPU, so a 50 ms limit holds.
        let (status, report) = run_report(&["--max-cpu", "50ms"], "sleeper", target, &["0.5"]);
        assert_eq!(status, 0, "{target:?}: {report}");
        // Obeyed: a guest well under its limit completes.
        let (status, report) = run_report(&["--max-cpu", "2s"], "hello", target, &[]);
        assert_eq!(status, 0, "{target:?}: {report}");
        assert_eq!(report["outcome"], "exited");
    }
}

#[test]
fn bad_cpu_limits_are_usage_errors() {
    let hello = guest("hello", Target::P1);
    for bad in ["lots", "0ms", "0", "400d"] {
        let out = wasm_run(&["run", "--max-cpu", bad, hello.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains(bad), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_contention_the_verdict_is_cpu_not_the_deadline() {
    // Eight spinners on two cores: each one's wall time stretches, but each
    // is killed once it has used its own 100 ms of CPU.
    let spin = load("spin", Target::P1);
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let spin = spin.clone();
            tokio::spawn(async move {
                spin.run(Invocation {
                    limits: Limits {
                        max_cpu: Some(Duration::from_millis(100)),
                        timeout: Some(Duration::from_secs(60)),
                        ..Limits::default()
                    },
                    ..Invocation::default()
                })
                .await
                .expect("runs")
            })
        })
        .collect();
    for run in runs {
        let outcome = run.await.unwrap();
        assert_eq!(
            outcome.kind,
            OutcomeKind::CpuExceeded,
            "{:?}",
            outcome.usage
        );
        assert!(outcome.usage.cpu_time >= Duration::from_millis(100));
        assert!(
            outcome.usage.cpu_time < Duration::from_secs(2),
            "{:?}",
            outcome.usage
        );
    }
}

#[tokio::test]
async fn serve_answers_500_cpu_exceeded() {
    let server = ServeGuard::serving(&http_guest(), &["--timeout", "30s", "--max-cpu", "100ms"]);
    assert_killed(&get(server.addr, "/spin").await, 500, "cpu_exceeded");
    // Sleeping is not CPU: the same route's sleeper answers.
    assert_eq!(get(server.addr, "/sleep?s=0.3").await.status, 200);
    assert_eq!(get(server.addr, "/hello").await.status, 200);
}

/// A core module that counts while the budget interface says more than
/// 30 ms of CPU is left, then exits 0 (its partial result); with
/// `ignore` set it never looks, and is killed.
fn cpu_aware(ignore: bool) -> String {
    let check = if ignore {
        "(i32.const 1)"
    } else {
        "(i64.gt_s (call $cpu_left) (i64.const 30000000))"
    };
    format!(
        r#"(module
  (import "wasm_run_budget" "cpu_remaining_ns" (func $cpu_left (result i64)))
  (func (export "_start")
    (local $n i64)
    ;; Without a CPU-time limit the figure is -1 (none): say so by exit 3.
    (if (i64.eq (call $cpu_left) (i64.const -1)) (then unreachable))
    (loop $work
      (local.set $n (i64.add (local.get $n) (i64.const 1)))
      (br_if $work {check}))))"#
    )
}

#[test]
fn a_guest_that_reads_its_cpu_left_stops_in_time() {
    let aware = crate::wat_file("cpu-aware", &cpu_aware(false));
    let path = aware.to_str().unwrap();
    // Obeyed: it stops with 30 ms to spare.
    let (status, _, _, report) =
        crate::cli::run_report(&["--max-cpu", "150ms", "--timeout", "60s"], path, &[]);
    assert_eq!(status, 0, "{report}");
    assert!(
        report["cpu_time_us"].as_u64().unwrap() >= 100_000,
        "{report}"
    );
    // Without a limit the figure is none (-1): this guest traps on it.
    let (status, _, _, report) = crate::cli::run_report(&["--timeout", "5s"], path, &[]);
    assert_eq!(status, 134, "{report}");
    // Violated: the same loop that never looks is killed for CPU.
    let heedless = crate::wat_file("cpu-heedless", &cpu_aware(true));
    let (status, _, _, report) = crate::cli::run_report(
        &["--max-cpu", "150ms", "--timeout", "60s"],
        heedless.to_str().unwrap(),
        &[],
    );
    assert_ended(status, &report, 152, "cpu_exceeded");
}
