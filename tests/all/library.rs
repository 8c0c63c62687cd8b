//! The library API: every outcome, in obeyed/violated pairs, for core modules
//! and their component twins; bad inputs give the right error.

use std::time::{Duration, Instant};

use bytes::Bytes;
use wasm_run::{DirMapping, Error, Guest, GuestKind, Input, OutcomeKind, TrapReason};
use wasm_run_tests::Target;

use crate::{MIB, engine, load, run_guest, stdout_of, wat_file};

#[tokio::test]
async fn hello_exits_zero_with_its_output_and_usage() {
    for target in Target::ALL {
        let o = run_guest("hello", target, |_| {}).await;
        assert_eq!(o.kind, OutcomeKind::Exited(0), "{target:?}");
        assert_eq!(stdout_of(&o), "Hello from wasm-run!\n");
        assert!(o.usage.fuel_consumed.unwrap() > 0);
        assert!(o.usage.peak_memory_bytes > 0);
        assert!(o.message().is_none());
    }
}

#[tokio::test]
async fn kinds_are_detected() {
    assert_eq!(load("hello", Target::P1).kind(), GuestKind::CoreCommand);
    assert_eq!(
        load("hello", Target::P2).kind(),
        GuestKind::ComponentCommand
    );
}

#[tokio::test]
async fn exit_code_is_the_guests_own() {
    for target in Target::ALL {
        let o = run_guest("exit-code", target, |i| i.args = vec!["7".into()]).await;
        // wasi:cli 0.2's `exit` carries only success or failure.
        let expected = if target == Target::P1 { 7 } else { 1 };
        assert_eq!(o.kind, OutcomeKind::Exited(expected), "{target:?}");
        assert_eq!(o.kind.exit_status(), expected);
    }
}

#[tokio::test]
async fn memory_bomb_is_killed_at_the_cap_and_a_bounded_allocator_is_not() {
    for target in Target::ALL {
        let cap = 32 * MIB;
        let bomb = run_guest("bomb", target, |i| i.limits.max_memory = cap).await;
        assert_eq!(bomb.kind, OutcomeKind::MemoryExceeded, "{target:?}");
        assert!(bomb.usage.peak_memory_bytes <= cap);
        assert!(bomb.usage.peak_memory_bytes > cap / 2);
        assert_eq!(bomb.kind.exit_status(), 137);

        let alloc = run_guest("alloc", target, |i| {
            i.limits.max_memory = cap;
            i.args = vec!["16".into()];
        })
        .await;
        assert_eq!(alloc.kind, OutcomeKind::Exited(0), "{target:?}");
        assert!(alloc.usage.peak_memory_bytes >= 16 * MIB);
        assert!(alloc.usage.peak_memory_bytes <= cap);
    }
}

#[tokio::test]
async fn spin_runs_out_of_fuel_and_hello_fits_in_the_same_budget() {
    let budget = 20_000_000;
    for target in Target::ALL {
        let spin = run_guest("spin", target, |i| i.limits.fuel = Some(budget)).await;
        assert_eq!(spin.kind, OutcomeKind::FuelExhausted, "{target:?}");
        let used = spin.usage.fuel_consumed.unwrap();
        assert!(used <= budget && used > budget / 2, "used {used}");

        let hello = run_guest("hello", target, |i| i.limits.fuel = Some(budget)).await;
        assert_eq!(hello.kind, OutcomeKind::Exited(0), "{target:?}");
        assert!(hello.usage.fuel_consumed.unwrap() < budget);
    }
}

#[tokio::test]
async fn deadline_kills_spinning_and_sleeping_guests() {
    for target in Target::ALL {
        for (name, args) in [("spin", vec![]), ("sleeper", vec!["30".to_string()])] {
            let start = Instant::now();
            let o = run_guest(name, target, |i| {
                i.limits.timeout = Some(Duration::from_millis(500));
                i.args = args;
            })
            .await;
            assert_eq!(o.kind, OutcomeKind::DeadlineExceeded, "{name} {target:?}");
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{name} took {:?}",
                start.elapsed()
            );
            if name == "spin" {
                // Half a second of looping is hundreds of millions of
                // units: the report counts them although the kill came
                // from the clock, not from fuel.
                let fuel = o.usage.fuel_consumed.unwrap();
                assert!(fuel > 10_000_000, "{target:?}: fuel reported {fuel}");
            }
        }
        let o = run_guest("sleeper", target, |i| {
            i.limits.timeout = Some(Duration::from_secs(5));
            i.args = vec!["0.1".into()];
        })
        .await;
        assert_eq!(o.kind, OutcomeKind::Exited(0), "{target:?}");
        assert_eq!(stdout_of(&o), "slept\n");
    }
}

#[tokio::test]
async fn runaway_recursion_traps_with_a_stack_message() {
    for target in Target::ALL {
        let o = run_guest("recurse", target, |_| {}).await;
        match &o.kind {
            OutcomeKind::Trapped(trap) => {
                assert_eq!(trap.reason, TrapReason::StackOverflow, "{trap}");
                assert!(trap.message.contains("stack"), "{trap}");
                assert!(!trap.message.contains('\n'), "one line: {trap:?}");
            }
            other => panic!("{target:?}: expected a trap, got {other:?}"),
        }
        assert_eq!(o.kind.exit_status(), 134);
    }
}

#[tokio::test]
async fn output_flood_is_capped_and_only_hurts_itself() {
    for target in Target::ALL {
        let o = run_guest("flood", target, |i| {
            i.limits.max_output = 64 * 1024;
            i.limits.timeout = Some(Duration::from_millis(300));
        })
        .await;
        assert_eq!(o.kind, OutcomeKind::DeadlineExceeded, "{target:?}");
        let out = o.stdout.unwrap();
        assert_eq!(out.bytes.len(), 64 * 1024);
        assert!(out.truncated);
    }
}

#[tokio::test]
async fn an_output_cap_that_kills_stops_a_flood_at_once() {
    for target in Target::ALL {
        let o = run_guest("flood", target, |i| {
            i.stdout = wasm_run::Output::CaptureOrKill;
            i.limits.max_output = 64 * 1024;
            i.limits.timeout = Some(Duration::from_secs(30));
        })
        .await;
        let OutcomeKind::Trapped(trap) = &o.kind else {
            panic!("{target:?}: {:?}", o.kind);
        };
        // Typed, and the message is one line: the cap, and where.
        assert_eq!(trap.reason, TrapReason::OutputCapExceeded, "{trap:?}");
        assert!(
            trap.message
                .starts_with("output cap of 65536 bytes exceeded"),
            "{trap:?}"
        );
        assert!(!trap.message.contains('\n'), "one line: {trap:?}");
        assert!(o.usage.wall_time < Duration::from_secs(10));
        let out = o.stdout.unwrap();
        assert_eq!(out.bytes.len(), 64 * 1024);
        assert!(out.truncated);

        // Within the cap, the same capture is an ordinary one.
        let hello = run_guest("hello", target, |i| {
            i.stdout = wasm_run::Output::CaptureOrKill;
            i.limits.max_output = 64;
        })
        .await;
        assert_eq!(hello.kind, OutcomeKind::Exited(0));
        assert_eq!(stdout_of(&hello), "Hello from wasm-run!\n");
    }
}

#[tokio::test]
async fn args_env_stdin_and_dirs_reach_the_guest() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lib-dir");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("note.txt"), "from the host\n").unwrap();
    for target in Target::ALL {
        let o = run_guest("printenv", target, |i| {
            i.args = vec!["one".into(), "two".into()];
            i.env = vec![("GREETING".into(), "hi".into())];
        })
        .await;
        let out = stdout_of(&o);
        assert!(out.contains("arg=one\narg=two\n"), "{out}");
        assert!(out.contains("GREETING=hi\n"), "{out}");
        assert!(!out.contains("PATH="), "host env leaked: {out}");

        let o = run_guest("echo", target, |i| {
            i.stdin = Input::Bytes(Bytes::from_static(b"round trip\n"))
        })
        .await;
        assert_eq!(stdout_of(&o), "round trip\n");

        let o = run_guest("cat", target, |i| {
            i.args = vec!["/data/note.txt".into()];
            i.dirs = vec![DirMapping::parse(&format!("{}::/data", dir.display()))];
        })
        .await;
        assert_eq!(o.kind, OutcomeKind::Exited(0), "{target:?}");
        assert_eq!(stdout_of(&o), "from the host\n");

        // Without --dir the guest sees no filesystem.
        let o = run_guest("cat", target, |i| i.args = vec!["/data/note.txt".into()]).await;
        assert_eq!(o.kind, OutcomeKind::Exited(1), "{target:?}");
    }
}

#[tokio::test]
async fn wat_fixtures_cover_grow_kill_initial_memory_and_traps() {
    let run = |path: std::path::PathBuf, cap: u64| async move {
        let g = Guest::from_file(engine(), path).unwrap();
        let inv = wasm_run::Invocation {
            limits: wasm_run::Limits {
                max_memory: cap,
                ..Default::default()
            },
            ..Default::default()
        };
        g.run(inv).await.unwrap()
    };
    // A grow past the cap kills; the guest never sees -1.
    let grow = wat_file(
        "grow",
        r#"(module (memory 1)
             (func (export "_start")
               (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable))))"#,
    );
    let o = run(grow.clone(), MIB).await;
    assert_eq!(o.kind, OutcomeKind::MemoryExceeded);
    assert_eq!(o.usage.peak_memory_bytes, 64 * 1024);
    assert_eq!(run(grow, 16 * MIB).await.kind, OutcomeKind::Exited(0));

    // A grow past the memory's own maximum is the guest's business: -1.
    let own_max = wat_file(
        "own-max",
        r#"(module (memory 1 2)
             (func (export "_start")
               (if (i32.ne (memory.grow (i32.const 5)) (i32.const -1)) (then unreachable))))"#,
    );
    assert_eq!(run(own_max, MIB).await.kind, OutcomeKind::Exited(0));

    // Initial memory over the cap is killed at instantiation.
    let big = wat_file(
        "big-initial",
        r#"(module (memory 100) (func (export "_start")))"#,
    );
    assert_eq!(
        run(big.clone(), MIB).await.kind,
        OutcomeKind::MemoryExceeded
    );
    assert_eq!(run(big, 16 * MIB).await.kind, OutcomeKind::Exited(0));

    let trap = wat_file("trap", r#"(module (func (export "_start") unreachable))"#);
    match run(trap, MIB).await.kind {
        OutcomeKind::Trapped(trap) => {
            assert_eq!(trap.reason, TrapReason::Unreachable);
            assert!(trap.message.contains("unreachable"), "{trap}");
        }
        other => panic!("expected trapped, got {other:?}"),
    }
}

#[test]
fn bad_modules_are_clear_errors() {
    let e = engine();
    let err = Guest::from_file(e, "/no/such/module.wasm").unwrap_err();
    assert!(matches!(err, Error::Read { .. }), "{err}");
    assert!(err.to_string().contains("/no/such/module.wasm"), "{err}");

    let err = Guest::from_bytes(e, "elf", b"\x7fELF\x02\x01\x01").unwrap_err();
    assert!(matches!(err, Error::NotWasm { .. }), "{err}");

    let err = Guest::from_bytes(e, "truncated", b"\0asm\x01\0\0\0\x01").unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");

    let err = Guest::from_bytes(e, "lib", b"(module (func (export \"f\")))").unwrap_err();
    assert!(matches!(err, Error::WrongShape { .. }), "{err}");
    assert!(err.to_string().contains("_start"), "{err}");

    let err = Guest::from_bytes(
        e,
        "needs-env",
        b"(module (import \"env\" \"magic\" (func)) (func (export \"_start\")))",
    )
    .unwrap_err();
    match &err {
        Error::UnsatisfiedImport { import, .. } => assert_eq!(import, "env::magic"),
        other => panic!("expected an unsatisfied import, got {other}"),
    }

    let err = Guest::from_bytes(e, "empty-component", b"(component)").unwrap_err();
    assert!(matches!(err, Error::WrongShape { .. }), "{err}");
    assert!(err.to_string().contains("wasi:cli/run"), "{err}");
}

#[tokio::test]
async fn an_uncaught_exception_in_a_start_function_is_the_guests_trap() {
    // Found by the fuzz test: this used to be a host `Error::Instantiate`.
    let module = crate::wat_file(
        "throwing-start",
        r#"(module (tag $t) (func $s (throw $t)) (start $s) (func (export "_start")))"#,
    );
    // Exceptions are off by default: off, the module is refused as invalid.
    let off = wasm_run::Guest::from_file(crate::engine(), &module).unwrap_err();
    assert!(matches!(off, Error::Invalid { .. }), "{off}");
    let engine = wasm_run::Engine::new(wasm_run::EngineConfig {
        proposals: vec![wasm_run::Proposal::Exceptions],
        ..wasm_run::EngineConfig::default()
    })
    .expect("engine");
    let guest = wasm_run::Guest::from_file(&engine, module).expect("loads");
    let outcome = guest
        .run(wasm_run::Invocation::default())
        .await
        .expect("a guest's own failure is an outcome, not a host error");
    assert_eq!(outcome.kind.name(), "trapped", "{:?}", outcome.kind);
}

/// A request for the http guest, with an empty body.
fn http_request(path: &str) -> http::Request<http_body_util::Empty<Bytes>> {
    http::Request::builder()
        .uri(format!("http://localhost{path}"))
        .body(http_body_util::Empty::new())
        .expect("request builds")
}

#[tokio::test]
async fn a_wasi_http_guest_answers_through_the_library_in_a_fresh_store() {
    use http_body_util::BodyExt;
    let guest = Guest::from_file(engine(), wasm_run_tests::http_guest()).expect("guest loads");
    assert_eq!(guest.kind(), GuestKind::HttpComponent);
    // Twice: each call is its own store; the response streams from the
    // running guest, whose outcome arrives when it is done.
    for _ in 0..2 {
        let call = guest
            .handle_http(http_request("/hello"), wasm_run::Invocation::default())
            .expect("call is set up");
        let run = tokio::spawn(call.run);
        let response = call
            .response
            .await
            .expect("a response")
            .expect("not an error code");
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"Hello from wasm-run over wasi:http!\n");
        let outcome = run.await.expect("task").expect("outcome");
        assert_eq!(outcome.kind, OutcomeKind::Exited(0));
        assert!(outcome.usage.peak_memory_bytes > 0);
    }
}

#[tokio::test]
async fn a_wasi_http_guest_that_spins_is_killed_and_sends_no_response() {
    let guest = Guest::from_file(engine(), wasm_run_tests::http_guest()).expect("guest loads");
    let mut invocation = wasm_run::Invocation::default();
    invocation.limits.fuel = Some(50_000_000);
    let call = guest
        .handle_http(http_request("/spin"), invocation)
        .expect("call is set up");
    let outcome = call.run.await.expect("outcome");
    assert_eq!(outcome.kind, OutcomeKind::FuelExhausted);
    assert!(call.response.await.is_err(), "no response was set");
}

#[tokio::test]
async fn each_entry_point_refuses_the_other_kind_of_guest() {
    let http = Guest::from_file(engine(), wasm_run_tests::http_guest()).expect("guest loads");
    let err = http.run(wasm_run::Invocation::default()).await.unwrap_err();
    assert!(matches!(err, Error::WrongShape { .. }), "{err}");
    assert!(err.to_string().contains("handle_http"), "{err}");
    for target in Target::ALL {
        let command = load("hello", target);
        let err = command
            .handle_http(http_request("/"), wasm_run::Invocation::default())
            .unwrap_err();
        assert!(matches!(err, Error::WrongShape { .. }), "{target:?}: {err}");
    }
}

#[tokio::test]
async fn an_embedder_can_queue_invocations_on_a_memory_budget() {
    use std::sync::Arc;
    use wasm_run::admission::{Admission, AdmissionConfig};
    let guest = load("sleeper", Target::P1);
    let limits = wasm_run::Limits {
        max_memory: 16 * MIB,
        ..wasm_run::Limits::default()
    };
    let need = limits.max_memory + guest.host_allowance();
    // Room for two at a time; eight arrive at once and queue.
    let admission = Admission::new(AdmissionConfig {
        budget: 2 * need,
        max_queue: 8,
        queue_timeout: Duration::from_secs(60),
    });
    let started = Instant::now();
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (guest, limits, admission) = (guest.clone(), limits.clone(), admission.clone());
            let (running, most) = (running.clone(), most.clone());
            tokio::spawn(async move {
                let (permit, _) = admission.admit(need).await.expect("admitted");
                let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                assert!(admission.in_use() <= 2 * need);
                let outcome = guest
                    .run(wasm_run::Invocation {
                        args: vec!["0.1".into()],
                        limits,
                        ..wasm_run::Invocation::default()
                    })
                    .await
                    .expect("runs");
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                drop(permit);
                outcome.kind
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), OutcomeKind::Exited(0));
    }
    assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Four rounds of two 100 ms sleeps.
    assert!(started.elapsed() >= Duration::from_millis(400));
    // A queue that is full turns the next one away at once.
    let full = Admission::new(AdmissionConfig {
        budget: need,
        max_queue: 0,
        queue_timeout: Duration::from_secs(60),
    });
    let _held = full.admit(need).await.expect("first fits");
    assert_eq!(
        full.admit(need).await.unwrap_err(),
        wasm_run::admission::Rejected::QueueFull
    );
}

/// A command component whose one invocation takes three core instances with
/// a memory each, then spins until its deadline.
const SLOT_HUNGRY: &str = r#"(component
  (core module $m (memory 1))
  (core instance (instantiate $m))
  (core instance (instantiate $m))
  (core module $main (memory 1) (func (export "run") (result i32) (loop $l (br $l)) (i32.const 0)))
  (core instance $i (instantiate $main))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli))
)"#;

#[tokio::test]
async fn pool_slots_are_admitted_like_memory() {
    use wasm_run::admission::{Admission, AdmissionConfig, Need, Slots};
    // A pool of four memories: one invocation of the guest fits, two do not.
    let engine = wasm_run::Engine::new(wasm_run::EngineConfig {
        max_instances: 4,
        ..wasm_run::EngineConfig::default()
    })
    .expect("engine");
    let guest = Guest::from_bytes(&engine, "slot-hungry", SLOT_HUNGRY.as_bytes()).expect("loads");
    assert_eq!(guest.footprint().memories, 3);
    let pool = Slots::pool_of(engine.config()).expect("pooling");
    let limits = wasm_run::Limits {
        max_memory: 16 * MIB,
        timeout: Some(Duration::from_millis(300)),
        ..wasm_run::Limits::default()
    };
    let invoke = |guest: Guest, limits: wasm_run::Limits| async move {
        guest
            .run(wasm_run::Invocation {
                limits,
                ..wasm_run::Invocation::default()
            })
            .await
    };

    // Violated: without counting slots, the second invocation finds the
    // pool empty and fails as a host error.
    let (a, b) = tokio::join!(
        invoke(guest.clone(), limits.clone()),
        invoke(guest.clone(), limits.clone())
    );
    let capacity = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(Error::Capacity { .. })))
        .count();
    assert_eq!(capacity, 1, "{a:?} {b:?}");

    // Obeyed: admitted by slots as well as bytes, the second waits for the
    // first and both run to their deadline.
    let admission = Admission::with_slots(
        AdmissionConfig {
            budget: 1 << 30,
            max_queue: 8,
            queue_timeout: Duration::from_secs(30),
        },
        pool,
    );
    let need = Need {
        bytes: limits.max_memory + guest.host_allowance(),
        slots: Slots::of(&guest),
    };
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (guest, limits, admission) = (guest.clone(), limits.clone(), admission.clone());
            tokio::spawn(async move {
                let (_permit, _) = admission.admit_need(need).await.expect("admitted");
                invoke(guest, limits).await
            })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.unwrap().expect("no capacity error");
        assert_eq!(outcome.kind, OutcomeKind::DeadlineExceeded);
    }
}

/// Limits that cannot be honoured are an error of the invocation, never a
/// panic or a silently different limit.
#[tokio::test]
async fn impossible_limits_are_errors() {
    let guest = crate::load("hello", Target::P1);
    for (limits, what) in [
        (
            wasm_run::Limits {
                max_memory: 8 << 30,
                ..wasm_run::Limits::default()
            },
            "ceiling",
        ),
        (
            wasm_run::Limits {
                max_cpu: Some(Duration::ZERO),
                ..wasm_run::Limits::default()
            },
            "max_cpu",
        ),
    ] {
        let err = guest
            .run(wasm_run::Invocation {
                limits,
                ..wasm_run::Invocation::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidLimits { .. }), "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }
}

/// A deadline needs no Tokio timers: on a runtime built without them, a
/// guest that loops is killed at its deadline and one that finishes in
/// time exits (no panic, no error). A guest's own sleep does need them:
/// it ends as a trap in the host call, not as a panic in the caller.
#[test]
fn a_deadline_is_enforced_on_a_runtime_without_timers() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let limits = wasm_run::Limits {
        timeout: Some(Duration::from_millis(300)),
        ..wasm_run::Limits::default()
    };
    let run = |name: &str, args: Vec<String>| {
        let invocation = wasm_run::Invocation {
            limits: limits.clone(),
            args,
            ..wasm_run::Invocation::default()
        };
        runtime
            .block_on(crate::load(name, Target::P1).run(invocation))
            .expect("runs")
    };
    let started = Instant::now();
    assert_eq!(run("spin", vec![]).kind, OutcomeKind::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(run("hello", vec![]).kind, OutcomeKind::Exited(0));
    let slept = run("sleeper", vec!["0.05".into()]);
    assert!(
        matches!(slept.kind, OutcomeKind::Trapped(_)),
        "{:?}",
        slept.kind
    );
}
