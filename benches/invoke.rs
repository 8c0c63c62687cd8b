//! In-process cost of one invocation: fresh store + instantiate + run + drop,
//! for the hello guest as a core module and as a component, with and without
//! fuel metering. Results and how to read them: `benches/RESULTS.md`.
//!
//! ```text
//! cargo bench -p wasm-run-benches --bench invoke
//! ```

use criterion::{Criterion, criterion_group, criterion_main};
use wasm_run::{Engine, EngineConfig, Guest, Invocation};
use wasm_run_tests::{Target, guest};

fn invoke(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("invoke-hello");
    for fuel in [true, false] {
        let engine = Engine::new(EngineConfig {
            fuel,
            ..EngineConfig::default()
        })
        .expect("engine");
        for (kind, target) in [("core", Target::P1), ("component", Target::P2)] {
            let hello = Guest::from_file(&engine, guest("hello", target)).expect("loads");
            let label = format!("{kind}/{}", if fuel { "fuel" } else { "no-fuel" });
            group.bench_function(label, |b| {
                b.iter(|| {
                    let outcome = rt.block_on(hello.run(Invocation::default())).expect("runs");
                    assert_eq!(outcome.kind, wasm_run::OutcomeKind::Exited(0));
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, invoke);
criterion_main!(benches);
