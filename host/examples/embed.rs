//! Embedding wasm-run: load a guest once, then run it several times at once,
//! each invocation in its own store with its own limits.
//!
//! ```text
//! cargo run -p wasm-run --example embed -- path/to/guest.wasm [ARGS]...
//! ```

use std::time::Duration;

use wasm_run::{Engine, EngineConfig, Guest, Invocation, Limits, OutcomeKind, Output, TrapReason};

/// Charges host memory to the invocation that causes it, so that each
/// `max_memory` covers it too.
#[global_allocator]
static ALLOC: wasm_run::Accounting = wasm_run::Accounting;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv = std::env::args().skip(1);
    let path = argv.next().ok_or("usage: embed <MODULE> [ARGS]...")?;
    let args: Vec<String> = argv.collect();

    // One engine per process; the guest is compiled and linked once.
    let engine = Engine::new(EngineConfig::default())?;
    let guest = Guest::from_file(&engine, &path)?;

    // Three invocations with different budgets, run concurrently.
    let budgets = [
        ("generous", Some(1_000_000_000), 64 << 20),
        ("little fuel", Some(10_000), 64 << 20),
        ("little memory", None, 2 << 20),
    ];
    let mut tasks = Vec::new();
    for (label, fuel, max_memory) in budgets {
        let guest = guest.clone();
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let invocation = Invocation {
                args,
                stdout: Output::Capture,
                limits: Limits {
                    fuel,
                    max_memory,
                    timeout: Some(Duration::from_secs(2)),
                    ..Limits::default()
                },
                ..Invocation::default()
            };
            (label, guest.run(invocation).await)
        }));
    }
    for task in tasks {
        let (label, result) = task.await?;
        let outcome = result?;
        let stdout = outcome.stdout.as_ref().map(|o| o.bytes.len()).unwrap_or(0);
        // Outcomes are typed: match them rather than their messages.
        let verdict = match &outcome.kind {
            OutcomeKind::Exited(0) => "ok".to_string(),
            OutcomeKind::Exited(code) => format!("exit {code}"),
            OutcomeKind::FuelExhausted => "out of fuel".to_string(),
            OutcomeKind::MemoryExceeded => "over its memory cap".to_string(),
            OutcomeKind::Trapped(trap) if trap.reason == TrapReason::StackOverflow => {
                "stack overflow".to_string()
            }
            OutcomeKind::Trapped(trap) => {
                format!("trap ({}): {}", trap.reason.name(), trap.message)
            }
            other => other.name().to_string(),
        };
        println!(
            "{label:>13}: {verdict:<20} fuel {:>10}  peak memory {:>9} B  {:>6} µs  stdout {stdout} B",
            outcome.usage.fuel_consumed.unwrap_or(0),
            outcome.usage.peak_memory_bytes,
            outcome.usage.wall_time.as_micros(),
        );
    }
    Ok(())
}
