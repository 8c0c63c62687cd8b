// In-process cost of one invocation: fresh store + instantiate + run + drop,
// for the hello guest as a core module and as a component, with and without
// fuel metering; and one request to the wasi:http guest's `/hello` through
// `Guest::handle_http` (the response body read to its end), no sockets. Results and how to read them: `benches/RESULTS.md`.
//
// ```text
// cargo bench -p wasm-run-benches --bench invoke
// ```

use criterion::{Criterion, criterion_group, criterion_main};
use wasm_run::{Engine, EngineConfig, Guest, Invocation};
use wasm_run_tests::{Target, guest};

fn invoke(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("invoke-hello");
    for fuel in [true, false] {
        let engine = engine(fuel);
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

    let mut group = c.benchmark_group("invoke-http-hello");
    for fuel in [true, false] {
        let engine = engine(fuel);
        let guest = Guest::from_file(&engine, wasm_run_tests::http_guest()).expect("loads");
        let label = if fuel { "fuel" } else { "no-fuel" };
        group.bench_function(label, |b| b.iter(|| http_hello(&rt, &guest, 36)));
    }
    group.finish();

    // WASI 0.3: the same two calls on the concurrent engine (built on the
    // first WASI 0.3 load), fuel on.
    let mut group = c.benchmark_group("invoke-p3");
    let engine = Engine::new(EngineConfig::default()).expect("engine");
    let command = Guest::from_file(&engine, wasm_run_tests::p3_cli_guest()).expect("loads");
    group.bench_function("command-hello", |b| {
        b.iter(|| {
            let outcome = rt
                .block_on(command.run(Invocation::default()))
                .expect("runs");
            assert_eq!(outcome.kind, wasm_run::OutcomeKind::Exited(0));
        })
    });
    let service = Guest::from_file(&engine, wasm_run_tests::p3_http_guest()).expect("loads");
    group.bench_function("http-hello", |b| b.iter(|| http_hello(&rt, &service, 35)));
    group.finish();
}

/// How much of each linear memory the pool keeps resident between
/// invocations: Rust guests use a 1 MiB stack below their data and heap,
/// so their heap pages lie just past 1 MiB.
fn keep_resident(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("keep-resident");
    for mib in [1, 2] {
        let engine = Engine::new(EngineConfig {
            keep_resident: mib << 20,
            ..EngineConfig::default()
        })
        .expect("engine");
        let http = Guest::from_file(&engine, wasm_run_tests::http_guest()).expect("loads");
        group.bench_function(format!("http-hello/{mib}MiB"), |b| {
            b.iter(|| http_hello(&rt, &http, 36))
        });
        let p3 = Guest::from_file(&engine, wasm_run_tests::p3_http_guest()).expect("loads");
        group.bench_function(format!("p3-http-hello/{mib}MiB"), |b| {
            b.iter(|| http_hello(&rt, &p3, 35))
        });
    }
    group.finish();
}

/// One GET /hello through `Guest::handle_http`, the body read to its end.
fn http_hello(rt: &tokio::runtime::Runtime, guest: &Guest, body_len: usize) {
    rt.block_on(async {
        use http_body_util::BodyExt;
        let request = http::Request::builder()
            .uri("http://localhost/hello")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let call = guest
            .handle_http(request, Invocation::default())
            .expect("call");
        let response = async {
            let response = call.response.await.expect("response").expect("ok");
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        };
        let (outcome, body) = tokio::join!(call.run, response);
        assert_eq!(
            outcome.expect("runs").kind,
            wasm_run::OutcomeKind::Exited(0)
        );
        assert_eq!(body.len(), body_len);
    })
}

/// The current-thread runtime each benchmark blocks on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An engine with fuel metering on or off.
fn engine(fuel: bool) -> Engine {
    Engine::new(EngineConfig {
        fuel,
        ..EngineConfig::default()
    })
    .expect("engine")
}

criterion_group!(benches, invoke, keep_resident);
criterion_main!(benches);
