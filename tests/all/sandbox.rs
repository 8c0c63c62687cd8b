//! What the engine lets a guest reach, and what one guest can learn of
//! another: wasm proposals beyond what guests need are off unless turned
//! on, and a pool slot reused by the next invocation shows it nothing the
//! last one wrote, whichever way slots are reset.

use wasm_run::{
    Engine, EngineConfig, Error, Guest, Invocation, MemoryReset, OutcomeKind, Proposal,
};

/// A command module that fails (exit 1-3) if its memory or table holds
/// anything it did not write, then grows its memory by a random number of
/// pages and fills every byte and every table slot, for the next invocation
/// in the same slot to find.
const SNOOP: &str = r#"(module
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1 64)
  (table $t 64 funcref)
  (elem declare func $dirty)
  (func $dirty (result i32)
    (local $i i32) (local $end i32)
    (local.set $end (i32.mul (memory.size) (i32.const 65536)))
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (if (i64.ne (i64.load (local.get $i)) (i64.const 0)) (then (return (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 8)))
        (br $scan)))
    (i32.const 0))
  (func $table_dirty (result i32)
    (local $i i32)
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $i) (i32.const 64)))
        (if (i32.eqz (ref.is_null (table.get $t (local.get $i)))) (then (return (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.const 0))
  (func (export "_start")
    (if (call $dirty) (then (call $exit (i32.const 1))))
    (if (call $table_dirty) (then (call $exit (i32.const 3))))
    (drop (call $random (i32.const 0) (i32.const 4)))
    (drop (memory.grow (i32.rem_u (i32.load (i32.const 0)) (i32.const 48))))
    (i32.store (i32.const 0) (i32.const 0))
    (if (call $dirty) (then (call $exit (i32.const 2))))
    (memory.fill (i32.const 0) (i32.const 0xa5) (i32.mul (memory.size) (i32.const 65536)))
    (table.fill $t (i32.const 0) (ref.func $dirty) (i32.const 64))))"#;

/// Runs SNOOP `rounds` times, `parallel` at once, on `engine`; every run
/// must find a clean slot.
async fn snoop(engine: &Engine, rounds: usize, parallel: usize) {
    let guest = Guest::from_bytes(engine, "snoop", SNOOP.as_bytes()).expect("loads");
    for _ in 0..rounds / parallel {
        let mut runs = tokio::task::JoinSet::new();
        for _ in 0..parallel {
            let guest = guest.clone();
            runs.spawn(async move { guest.run(Invocation::default()).await });
        }
        while let Some(outcome) = runs.join_next().await {
            let outcome = outcome.expect("joins").expect("runs");
            assert_eq!(
                outcome.kind,
                OutcomeKind::Exited(0),
                "an invocation saw what an earlier one wrote (exit 1/2: memory, 3: table): \
                 {outcome:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_slot_shows_nothing_another_invocation_wrote() {
    // The process's engine, reset as this system calls for; then each way
    // of resetting explicitly.
    snoop(crate::engine(), 200, 4).await;
    for reset in [MemoryReset::PagemapScan, MemoryReset::Decommit] {
        let engine = Engine::new(EngineConfig {
            memory_reset: Some(reset),
            max_instances: 8,
            ..EngineConfig::default()
        })
        .unwrap();
        assert_eq!(engine.memory_reset(), reset);
        snoop(&engine, 200, 4).await;
    }
}

#[test]
fn the_reset_is_chosen_from_the_systems_swap_settings() {
    let swaps = std::fs::read_to_string("/proc/swaps").expect("/proc/swaps");
    let swap_active = swaps.lines().skip(1).any(|l| !l.trim().is_empty());
    let engine = crate::engine();
    if swap_active {
        // A cgroup may still forbid swap; the decision must then be the scan.
        let decided = engine.memory_reset();
        assert!(
            decided == MemoryReset::Decommit || decided == MemoryReset::PagemapScan,
            "{decided:?}"
        );
    } else {
        assert_eq!(
            engine.memory_reset(),
            MemoryReset::PagemapScan,
            "no swap is active, so no page can be swapped out"
        );
    }
    assert_eq!(engine.memory_reset(), MemoryReset::for_this_system());
}

/// Modules that each need one proposal wasm-run leaves off.
const NEEDS: [(Proposal, &str); 4] = [
    (
        Proposal::Gc,
        r#"(module (type $s (struct (field i32)))
             (func (export "_start") (drop (struct.new $s (i32.const 1)))))"#,
    ),
    (
        Proposal::Exceptions,
        r#"(module (tag $e)
             (func (export "_start") (block $h (try_table (catch_all $h) (throw $e)))))"#,
    ),
    (
        Proposal::Threads,
        r#"(module (memory 1)
             (func (export "_start") (drop (i32.atomic.load (i32.const 0)))))"#,
    ),
    (
        Proposal::Memory64,
        r#"(module (memory i64 1)
             (func (export "_start") (drop (i32.load (i64.const 0)))))"#,
    ),
];

#[tokio::test]
async fn proposals_are_off_unless_turned_on() {
    for (proposal, wat) in NEEDS {
        let err = Guest::from_bytes(crate::engine(), proposal.name(), wat.as_bytes()).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{proposal}: {err}");
        let engine = Engine::new(EngineConfig {
            proposals: vec![proposal],
            ..EngineConfig::default()
        })
        .unwrap();
        let guest = Guest::from_bytes(&engine, proposal.name(), wat.as_bytes())
            .unwrap_or_else(|e| panic!("{proposal} turned on: {e}"));
        let outcome = guest.run(Invocation::default()).await.unwrap();
        assert_eq!(
            outcome.kind,
            OutcomeKind::Exited(0),
            "{proposal}: {outcome:?}"
        );
    }
    assert_eq!("gc".parse::<Proposal>(), Ok(Proposal::Gc));
    let unknown = "simd".parse::<Proposal>().unwrap_err();
    assert!(
        unknown.contains("exceptions, gc, memory64, threads"),
        "{unknown}"
    );
}

#[test]
fn the_cli_turns_a_proposal_on_by_name() {
    let gc = crate::wat_file("needs-gc", NEEDS[0].1);
    let path = gc.to_str().unwrap();
    let o = crate::wasm_run(&["run", path]);
    assert_eq!(o.status.code(), Some(125), "{o:?}");
    let o = crate::wasm_run(&["run", "--wasm-proposal", "gc", path]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = crate::wasm_run(&["run", "--wasm-proposal", "nope", path]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
