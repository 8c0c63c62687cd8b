//! `wasm-run:sandbox/budget` (`wit/budget.wit`, and the `wasm_run_budget`
//! imports of core modules): a guest reads its own fuel, memory and time,
//! and uses them to stop with a partial result instead of being killed.

use std::collections::HashMap;
use std::time::Duration;

use wasm_run::{Error, Guest, OutcomeKind};
use wasm_run_tests::{Target, guest};

use crate::serve::{ServeGuard, get};
use crate::{MIB, engine, run_guest, stdout_of, wat_file};

/// `search report`'s `key=value` lines.
fn report(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(report: &HashMap<String, String>, key: &str) -> u64 {
    report[key]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {report:?}"))
}

#[tokio::test]
async fn a_guest_reads_its_own_fuel_memory_and_time() {
    for target in Target::ALL {
        let o = run_guest("search", target, |i| {
            i.args = vec!["report".into()];
            i.limits.fuel = Some(100_000_000);
            i.limits.max_memory = 64 * MIB;
            i.limits.timeout = Some(Duration::from_secs(30));
        })
        .await;
        assert_eq!(o.kind, OutcomeKind::Exited(0), "{target:?}");
        let r = report(&stdout_of(&o));
        let fuel = number(&r, "fuel_remaining");
        assert!(fuel > 0 && fuel < 100_000_000, "{target:?}: {r:?}");
        assert_eq!(number(&r, "memory_cap"), 64 * MIB, "{target:?}");
        let used = number(&r, "memory_used");
        // Linear memory, tables and host memory: one number.
        assert!(
            used > 0 && used <= o.usage.peak_memory_bytes + o.usage.host_memory_peak_bytes,
            "{target:?}: {r:?} {:?}",
            o.usage
        );
        let time = number(&r, "time_remaining_ns");
        assert!(time > 0 && time <= 30_000_000_000, "{target:?}: {r:?}");
    }
}

#[tokio::test]
async fn without_a_fuel_budget_or_deadline_the_guest_is_told_none() {
    for target in Target::ALL {
        let o = run_guest("search", target, |i| {
            i.args = vec!["report".into()];
            i.limits.max_memory = 32 * MIB;
        })
        .await;
        let r = report(&stdout_of(&o));
        assert_eq!(r["fuel_remaining"], "none", "{target:?}");
        assert_eq!(r["time_remaining_ns"], "none", "{target:?}");
        assert_eq!(number(&r, "memory_cap"), 32 * MIB, "{target:?}");
    }
}

#[tokio::test]
async fn a_search_that_heeds_its_fuel_returns_a_partial_result_and_one_that_does_not_is_killed() {
    for target in Target::ALL {
        let fuel = |i: &mut wasm_run::Invocation| i.limits.fuel = Some(300_000_000);
        let heeds = run_guest("search", target, |i| {
            fuel(i);
            i.args = vec!["10000000".into()];
        })
        .await;
        assert_eq!(heeds.kind, OutcomeKind::Exited(0), "{target:?}");
        let out = stdout_of(&heeds);
        assert!(out.starts_with("partial: "), "{target:?}: {out}");
        assert!(heeds.usage.fuel_consumed.unwrap() < 300_000_000);

        let ignores = run_guest("search", target, |i| {
            fuel(i);
            i.args = vec!["10000000".into(), "--ignore-budget".into()];
        })
        .await;
        assert_eq!(ignores.kind, OutcomeKind::FuelExhausted, "{target:?}");
        assert!(stdout_of(&ignores).is_empty());
    }
}

#[tokio::test]
async fn a_search_that_heeds_its_deadline_finishes_before_it() {
    for target in Target::ALL {
        let deadline = Duration::from_millis(400);
        let heeds = run_guest("search", target, |i| {
            i.limits.timeout = Some(deadline);
            i.args = vec!["1000000000".into()];
        })
        .await;
        assert_eq!(heeds.kind, OutcomeKind::Exited(0), "{target:?}");
        assert!(stdout_of(&heeds).starts_with("partial: "), "{target:?}");
        assert!(heeds.usage.wall_time < deadline);

        let ignores = run_guest("search", target, |i| {
            i.limits.timeout = Some(deadline);
            i.args = vec!["1000000000".into(), "--ignore-budget".into()];
        })
        .await;
        assert_eq!(ignores.kind, OutcomeKind::DeadlineExceeded, "{target:?}");
    }
}

#[tokio::test]
async fn a_small_search_completes_within_its_budget() {
    for target in Target::ALL {
        let o = run_guest("search", target, |i| {
            i.limits.fuel = Some(300_000_000);
            i.args = vec!["1000".into()];
        })
        .await;
        assert_eq!(
            stdout_of(&o),
            "complete: 168 primes below 1000\n",
            "{target:?}"
        );
    }
}

#[tokio::test]
async fn memory_used_follows_the_guests_grows() {
    // A core module that grows its memory by 2 pages and reports the
    // difference in `memory_used` as its exit code, in pages.
    let path = wat_file(
        "budget-grow",
        r#"(module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (import "wasm_run_budget" "memory_used" (func $used (result i64)))
          (import "wasm_run_budget" "memory_cap" (func $cap (result i64)))
          (memory (export "memory") 1)
          (func (export "_start") (local $before i64)
            (local.set $before (call $used))
            (drop (memory.grow (i32.const 2)))
            (call $exit (i32.wrap_i64 (i64.div_u
              (i64.sub (call $used) (local.get $before)) (i64.const 65536))))))"#,
    );
    let guest = Guest::from_file(engine(), &path).expect("loads");
    let o = guest
        .run(wasm_run::Invocation::default())
        .await
        .expect("runs");
    assert_eq!(o.kind, OutcomeKind::Exited(2));
}

#[test]
fn an_unknown_budget_import_is_named() {
    let path = wat_file(
        "budget-unknown",
        r#"(module
          (import "wasm_run_budget" "fuel_left" (func (result i64)))
          (func (export "_start")))"#,
    );
    let err = Guest::from_file(engine(), &path).unwrap_err();
    assert!(matches!(err, Error::UnsatisfiedImport { .. }), "{err}");
    assert!(
        err.to_string().contains("wasm_run_budget::fuel_left"),
        "{err}"
    );
}

#[tokio::test]
async fn served_as_cgi_a_search_says_its_result_is_partial() {
    for target in Target::ALL {
        let budget = ["--fuel", "300000000", "--timeout", "10s"];
        let server = ServeGuard::serving(&guest("search", target), &budget);
        let partial = get(server.addr, "/10000000").await;
        assert_eq!(partial.status, 200, "{target:?}: {:?}", partial.body);
        assert_eq!(partial.headers["x-partial-result"], "true");
        assert!(partial.text().starts_with("partial: "));
        let complete = get(server.addr, "/1000").await;
        assert_eq!(complete.status, 200);
        assert!(!complete.headers.contains_key("x-partial-result"));
        assert_eq!(complete.text(), "complete: 168 primes below 1000\n");
        let killed = get(server.addr, "/10000000/--ignore-budget").await;
        assert_eq!(killed.status, 500);
        assert_eq!(killed.outcome(), Some("fuel_exhausted"));
    }
}
