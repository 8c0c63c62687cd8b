//! Many invocations on one engine at once: each is classified correctly and
//! none affects another.

use std::time::Duration;

use wasm_run::{Invocation, Limits, OutcomeKind, Output};
use wasm_run_tests::Target;

use crate::{MIB, load};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_mixed_invocations_are_each_classified_correctly() {
    let mut tasks = Vec::new();
    for i in 0..64 {
        let target = if i % 2 == 0 { Target::P1 } else { Target::P2 };
        let (name, args, limits, expected) = match i % 6 {
            0 => ("hello", vec![], Limits::default(), OutcomeKind::Exited(0)),
            1 => (
                "bomb",
                vec![],
                Limits {
                    max_memory: 16 * MIB,
                    ..Limits::default()
                },
                OutcomeKind::MemoryExceeded,
            ),
            2 => (
                "spin",
                vec![],
                Limits {
                    fuel: Some(5_000_000),
                    ..Limits::default()
                },
                OutcomeKind::FuelExhausted,
            ),
            3 => (
                "sleeper",
                vec!["30".to_string()],
                Limits {
                    timeout: Some(Duration::from_millis(300)),
                    ..Limits::default()
                },
                OutcomeKind::DeadlineExceeded,
            ),
            4 => {
                // wasi:cli 0.2's `exit` carries only success or failure.
                let code = if target == Target::P1 { i } else { 1 };
                (
                    "exit-code",
                    vec![format!("{i}")],
                    Limits::default(),
                    OutcomeKind::Exited(code),
                )
            }
            _ => (
                "alloc",
                vec!["8".to_string()],
                Limits {
                    max_memory: 16 * MIB,
                    ..Limits::default()
                },
                OutcomeKind::Exited(0),
            ),
        };
        let guest = load(name, target);
        tasks.push(tokio::spawn(async move {
            let invocation = Invocation {
                args,
                stdout: Output::Capture,
                limits,
                ..Invocation::default()
            };
            let outcome = guest.run(invocation).await.expect("runs");
            (i, name, target, expected, outcome)
        }));
    }
    for task in tasks {
        let (i, name, target, expected, outcome) = task.await.expect("task did not panic");
        assert_eq!(outcome.kind, expected, "invocation {i}: {name} {target:?}");
        if name == "hello" {
            assert_eq!(
                &outcome.stdout.unwrap().bytes[..],
                b"Hello from wasm-run!\n"
            );
        }
    }
}

#[test]
fn invocations_from_many_os_threads_share_one_guest() {
    let guest = load("hello", Target::P1);
    let spin = load("spin", Target::P1);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let guest = if t % 2 == 0 {
                guest.clone()
            } else {
                spin.clone()
            };
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                (0..10)
                    .map(|_| {
                        let inv = Invocation {
                            limits: Limits {
                                fuel: Some(2_000_000),
                                ..Limits::default()
                            },
                            ..Invocation::default()
                        };
                        rt.block_on(guest.run(inv)).unwrap().kind
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        let expected = if t % 2 == 0 {
            OutcomeKind::Exited(0)
        } else {
            OutcomeKind::FuelExhausted
        };
        for kind in h.join().unwrap() {
            assert_eq!(kind, expected, "thread {t}");
        }
    }
}
