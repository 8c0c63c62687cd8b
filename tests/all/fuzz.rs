//! Fuzzing the host with generated modules: wasm-smith builds valid core
//! modules (memories, tables, bulk memory, reference types, SIMD, tail
//! calls, memory64, GC, exceptions, …) that all export `_start: [] -> []`,
//! and each one is loaded and run through the library under small limits
//! (fuel 100 000, 16 MiB of memory, 1 s). Every other module is wrapped
//! into a `wasi:cli/run` command component first: the module instantiated
//! up to eight times, inside nested components instantiated up to four
//! times, and a `run` that calls the first instance's `_start` — many core
//! instances, nested instances, and their state charged to the run.
//!
//! Every module must either fail to load with a host [`Error`] that blames
//! the module, or run to one of the outcomes; the host must never panic,
//! never report itself at capacity (runs are sequential, so that would be a
//! leaked pool slot), never let a guest's memory exceed its cap or outlive
//! its deadline, and the process's resident memory must stay flat.
//!
//! The default run is short: a deterministic sequence of
//! [`DEFAULT_MODULES`] modules or [`DEFAULT_TIME_CAP`], whichever comes
//! first. `WASM_RUN_FUZZ_MODULES=N` runs exactly N modules with no time cap;
//! `WASM_RUN_FUZZ_SEED` changes the sequence. A module that makes the host
//! panic is kept under `target/fuzz-crashes/`; the module being run is
//! always in `target/fuzz-crashes/in-flight.wasm`, so that a hard crash
//! (abort, signal) leaves it behind too.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use wasm_run::{Error, Guest, Invocation, Limits, OutcomeKind};

use crate::{MIB, engine};

/// Modules in the default run.
const DEFAULT_MODULES: u64 = 2500;
/// Wall-clock cap of the default run.
const DEFAULT_TIME_CAP: Duration = Duration::from_secs(60);
/// Largest growth of resident memory allowed between the first 10% of the
/// run and its end.
const RSS_GROWTH_BOUND: u64 = 256 * MIB;
/// Limits of every run.
const FUEL: u64 = 100_000;
const MAX_MEMORY: u64 = 16 * MIB;
const TIMEOUT: Duration = Duration::from_secs(1);
/// How late past its deadline a run may end: epoch ticks are 1 ms, but the
/// machine may be busy with other tests.
const DEADLINE_SLACK: Duration = Duration::from_secs(4);

/// SplitMix64: a tiny deterministic generator for the raw bytes wasm-smith
/// turns into modules.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The wasm-smith configuration for one module: a fixed base (no imports,
/// no threads or shared memory, bounded memories and tables, a `_start`
/// export) plus proposals switched per module ("swarm testing") so that
/// simple and feature-rich modules are both common. Every proposal switched
/// on here is on in wasm-run's default engine; those it leaves off unless
/// asked (`gc`, `exceptions`, `memory64`, `threads`) are not generated, so
/// that the modules exercise what every server exposes.
fn smith_config(rng: &mut SplitMix64) -> wasm_smith::Config {
    let start = wat::parse_str(r#"(module (func (export "_start")))"#).expect("export shape");
    let bits = rng.next();
    let bit = |n: u32| bits & (1 << n) != 0;
    wasm_smith::Config {
        exports: Some(start),
        // No imports: the host provides only WASI, and a missing import is a
        // load error rather than anything interesting.
        max_imports: 0,
        min_funcs: 1,
        max_funcs: 30,
        max_instructions: 200,
        max_memories: 2,
        max_tables: 3,
        // Up to 64 MiB so that some modules start over the 16 MiB cap.
        max_memory32_bytes: 64 * MIB,
        max_memory64_bytes: u128::from(64 * MIB),
        max_table_elements: 20_000,
        max_data_segments: 20,
        max_element_segments: 20,
        max_elements: 100,
        bulk_memory_enabled: true,
        reference_types_enabled: true,
        multi_value_enabled: true,
        saturating_float_to_int_enabled: true,
        sign_extension_ops_enabled: true,
        simd_enabled: bit(0),
        relaxed_simd_enabled: bit(0) && bit(1),
        tail_call_enabled: bit(2),
        memory64_enabled: false,
        extended_const_enabled: bit(4),
        exceptions_enabled: false,
        gc_enabled: false,
        threads_enabled: false,
        shared_everything_threads_enabled: false,
        custom_page_sizes_enabled: false,
        wide_arithmetic_enabled: false,
        canonicalize_nans: bit(5),
        // Half the modules avoid traps so that more of them run to the end
        // (and to the fuel or memory limit) instead of trapping early.
        disallow_traps: bit(6),
        ..wasm_smith::Config::default()
    }
}

/// Generates module `index` of the sequence seeded by `seed`.
fn generate(seed: u64, index: u64) -> Result<Vec<u8>, arbitrary::Error> {
    let mut rng = SplitMix64(seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407));
    let config = smith_config(&mut rng);
    let len = 64 + (rng.next() % 16_384) as usize;
    let raw = rng.bytes(len);
    let mut u = Unstructured::new(&raw);
    let module = wasm_smith::Module::new(config, &mut u)?;
    Ok(module.to_bytes())
}

/// Wraps a generated core module (exporting `_start`, importing nothing)
/// into a command component: a nested component instantiates the module
/// `inner` times and is itself instantiated `nested` times; the outer one
/// instantiates the module `outer` times and exports `wasi:cli/run` with a
/// `run` that calls the first of those instances' `_start`.
fn wrap_in_component(module: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ComponentBuilder, ComponentExportKind, ComponentValType, EntityType,
        ExportKind, ExportSection, Function, FunctionSection, ImportSection, Instruction,
        ModuleArg, TypeSection, ValType,
    };
    let outer = 1 + (rng.next() % 4) as u32;
    let inner = (rng.next() % 4) as u32;
    let nested = (rng.next() % 5) as u32;
    let mut c = ComponentBuilder::default();
    if inner > 0 && nested > 0 {
        let mut nest = ComponentBuilder::default();
        let m = nest.core_module_raw(None, module);
        for _ in 0..inner {
            nest.core_instantiate(None, m, []);
        }
        let n = c.component(None, nest);
        for _ in 0..nested {
            c.instantiate(None, n, Vec::<(&str, ComponentExportKind, u32)>::new());
        }
    }
    let m = c.core_module_raw(None, module);
    let first = c.core_instantiate(None, m, []);
    for _ in 1..outer {
        c.core_instantiate(None, m, []);
    }
    // `run: () -> i32` calls `_start` of the first instance, returns 0 (ok).
    let mut main = wasm_encoder::Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    types.ty().function([], [ValType::I32]);
    main.section(&types);
    let mut imports = ImportSection::new();
    imports.import("g", "_start", EntityType::Function(0));
    main.section(&imports);
    let mut funcs = FunctionSection::new();
    funcs.function(1);
    main.section(&funcs);
    let mut exports = ExportSection::new();
    exports.export("run", ExportKind::Func, 1);
    main.section(&exports);
    let mut code = CodeSection::new();
    let mut body = Function::new([]);
    body.instruction(&Instruction::Call(0));
    body.instruction(&Instruction::I32Const(0));
    body.instruction(&Instruction::End);
    code.function(&body);
    main.section(&code);
    let main = c.core_module(None, &main);
    let main = c.core_instantiate(None, main, [("g", ModuleArg::Instance(first))]);
    let run = c.core_alias_export(None, main, "run", ExportKind::Func);
    let (result, ty) = c.ty(None);
    ty.defined_type().result(None, None);
    let (func_ty, ty) = c.ty(None);
    ty.function()
        .params(Vec::<(&str, ComponentValType)>::new())
        .result(Some(ComponentValType::Type(result)));
    let run = c.lift_func(None, run, func_ty, []);
    let cli = c.instantiate_exports(None, [("run", ComponentExportKind::Func, run)]);
    c.export(
        "wasi:cli/run@0.2.0",
        ComponentExportKind::Instance,
        cli,
        None,
    );
    c.finish()
}

/// The process's resident set size (`VmRSS`), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

fn crash_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let target = target.parent().map(PathBuf::from).unwrap_or(target);
    target.join("fuzz-crashes")
}

/// The name of an error variant, for the summary.
fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Read { .. } => "read",
        Error::NotWasm { .. } => "not_wasm",
        Error::Invalid { .. } => "invalid",
        Error::WrongShape { .. } => "wrong_shape",
        Error::UnsatisfiedImport { .. } => "unsatisfied_import",
        Error::Instantiate { .. } => "instantiate",
        Error::Capacity { .. } => "capacity",
        Error::Setup { .. } => "setup",
        Error::Engine { .. } => "engine",
        Error::InvalidLimits { .. } => "invalid_limits",
        Error::BadRequest { .. } => "bad_request",
        _ => "other",
    }
}

/// Everything a run counted.
#[derive(Debug, Default)]
struct Tally {
    generated: u64,
    /// Of the generated, wrapped into components.
    components: u64,
    generation_failed: u64,
    loaded: u64,
    load_errors: BTreeMap<&'static str, u64>,
    run_errors: BTreeMap<&'static str, u64>,
    outcomes: BTreeMap<&'static str, u64>,
    /// One example message per error kind, to help read the summary.
    examples: BTreeMap<String, String>,
    /// What must not happen: panics and broken limits, with the module kept.
    failures: Vec<String>,
}

impl Tally {
    fn example(&mut self, key: String, message: String) {
        if self.examples.len() >= 24 && !self.examples.contains_key(&key) {
            return;
        }
        let mut message = message;
        if let Some((cut, _)) = message.char_indices().nth(300) {
            message.truncate(cut);
        }
        self.examples.entry(key).or_insert(message);
    }
}

#[tokio::test]
async fn generated_modules_never_break_the_host() {
    let requested: Option<u64> = std::env::var("WASM_RUN_FUZZ_MODULES")
        .ok()
        .map(|n| n.parse().expect("WASM_RUN_FUZZ_MODULES is a number"));
    let seed: u64 = std::env::var("WASM_RUN_FUZZ_SEED")
        .ok()
        .map_or(0x5EED_F00D, |n| {
            n.parse().expect("WASM_RUN_FUZZ_SEED is a number")
        });
    let (modules, time_cap) = match requested {
        Some(n) => (n, None),
        None => (DEFAULT_MODULES, Some(DEFAULT_TIME_CAP)),
    };
    let crashes = crash_dir();
    std::fs::create_dir_all(&crashes).expect("crash dir");
    let in_flight = crashes.join("in-flight.wasm");
    let engine = engine();
    let limits = Limits {
        fuel: Some(FUEL),
        max_memory: MAX_MEMORY,
        timeout: Some(TIMEOUT),
        ..Limits::default()
    };

    let started = Instant::now();
    let rss_start = rss();
    // (modules done, RSS) every 1% of the run, to find the 10% mark and
    // the end even when the time cap cuts the run short.
    let sample_every = (modules / 100).max(1);
    let mut samples: Vec<(u64, u64)> = vec![(0, rss_start)];
    let mut tally = Tally::default();
    let mut done = 0;
    while done < modules {
        if time_cap.is_some_and(|cap| started.elapsed() >= cap) {
            break;
        }
        let index = done;
        done += 1;
        if done % sample_every == 0 {
            samples.push((done, rss()));
        }
        if requested.is_some() && done % 5000 == 0 {
            eprintln!(
                "fuzz: {done}/{modules} modules, {:.0?}, RSS {} MiB",
                started.elapsed(),
                rss() / MIB
            );
        }
        let bytes = match generate(seed, index) {
            Ok(bytes) if index % 2 == 1 => {
                tally.components += 1;
                let mut rng = SplitMix64(seed ^ index.rotate_left(17));
                wrap_in_component(&bytes, &mut rng)
            }
            Ok(bytes) => bytes,
            Err(e) => {
                tally.generation_failed += 1;
                tally.example("generation".into(), e.to_string());
                continue;
            }
        };
        tally.generated += 1;
        std::fs::write(&in_flight, &bytes).expect("write in-flight module");
        let keep = |what: &str| {
            let path = crashes.join(format!("seed-{seed}-module-{index}-{what}.wasm"));
            std::fs::write(&path, &bytes).expect("keep crashing module");
            path
        };

        let name = format!("fuzz-{index}");
        let loaded =
            std::panic::catch_unwind(AssertUnwindSafe(|| Guest::from_bytes(engine, name, &bytes)));
        let guest = match loaded {
            Err(_) => {
                let path = keep("load-panic");
                tally.failures.push(format!(
                    "module {index}: the host panicked loading it (kept as {})",
                    path.display()
                ));
                continue;
            }
            Ok(Err(e)) => {
                let kind = error_kind(&e);
                *tally.load_errors.entry(kind).or_default() += 1;
                tally.example(format!("load {kind}"), e.to_string());
                if !matches!(
                    e,
                    Error::Invalid { .. } | Error::WrongShape { .. } | Error::Instantiate { .. }
                ) {
                    let path = keep("load-error");
                    tally.failures.push(format!(
                        "module {index}: unexpected load error ({}): {e}",
                        path.display()
                    ));
                }
                continue;
            }
            Ok(Ok(guest)) => guest,
        };
        tally.loaded += 1;

        let invocation = Invocation {
            limits: limits.clone(),
            ..Invocation::default()
        };
        // In a task of its own so that a panic is caught, not fatal.
        let run = tokio::spawn(async move { guest.run(invocation).await }).await;
        match run {
            Err(join) => {
                let path = keep("run-panic");
                tally.failures.push(format!(
                    "module {index}: the host panicked running it: {join} (kept as {})",
                    path.display()
                ));
            }
            Ok(Err(e)) => {
                // Every module that loaded must end in an outcome: a run
                // error is the host's fault.
                let kind = error_kind(&e);
                *tally.run_errors.entry(kind).or_default() += 1;
                tally.example(format!("run {kind}"), e.to_string());
                let path = keep("run-error");
                tally.failures.push(format!(
                    "module {index}: unexpected run error ({}): {e}",
                    path.display()
                ));
            }
            Ok(Ok(outcome)) => {
                let kind = outcome.kind.name();
                *tally.outcomes.entry(kind).or_default() += 1;
                if let OutcomeKind::Trapped(trap) = &outcome.kind {
                    tally.example(
                        format!("trapped {}", trap.reason.name()),
                        trap.message.clone(),
                    );
                }
                if outcome.usage.peak_memory_bytes > MAX_MEMORY {
                    let path = keep("over-memory");
                    tally.failures.push(format!(
                        "module {index}: peak memory {} over the {MAX_MEMORY} cap ({})",
                        outcome.usage.peak_memory_bytes,
                        path.display()
                    ));
                }
                if outcome.usage.wall_time > TIMEOUT + DEADLINE_SLACK {
                    let path = keep("over-deadline");
                    tally.failures.push(format!(
                        "module {index}: ran {:?}, past its {TIMEOUT:?} deadline ({})",
                        outcome.usage.wall_time,
                        path.display()
                    ));
                }
                if outcome.usage.fuel_consumed.is_some_and(|f| f > FUEL) {
                    tally.failures.push(format!(
                        "module {index}: consumed {:?} fuel of {FUEL}",
                        outcome.usage.fuel_consumed
                    ));
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let rss_end = rss();
    samples.push((done, rss_end));

    // Baseline: RSS once 10% of the run is done (allocator pools, code
    // memory and caches have warmed up by then). End: the lowest RSS over
    // the last 5% of the run, so that a transient peak from a test running
    // beside this one is not taken for a leak; a leak keeps even that high.
    let mark = done / 10;
    let rss_10 = samples
        .iter()
        .find(|(n, _)| *n >= mark)
        .map_or(rss_start, |(_, r)| *r);
    let tail_from = done - done / 20;
    let rss_tail = samples
        .iter()
        .filter(|(n, _)| *n >= tail_from)
        .map(|(_, r)| *r)
        .min()
        .unwrap_or(rss_end);
    let rss_max = samples.iter().map(|(_, r)| *r).max().unwrap_or(rss_end);

    let per_module = elapsed / u32::try_from(done.max(1)).unwrap_or(u32::MAX);
    println!(
        "fuzz summary: seed {seed}, {done} modules in {elapsed:.1?} ({per_module:.1?}/module); \
         generated {} ({} as components), generation failed {}, loaded {}, load errors {:?}, \
         run errors {:?}, outcomes {:?}; RSS start {} MiB, at 10% {} MiB, end {} MiB (last 5% \
         min {} MiB, max {} MiB)",
        tally.generated,
        tally.components,
        tally.generation_failed,
        tally.loaded,
        tally.load_errors,
        tally.run_errors,
        tally.outcomes,
        rss_start / MIB,
        rss_10 / MIB,
        rss_end / MIB,
        rss_tail / MIB,
        rss_max / MIB,
    );
    for (kind, message) in &tally.examples {
        println!("  e.g. {kind}: {message}");
    }

    assert!(
        tally.failures.is_empty(),
        "{} modules broke the host:\n{}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
    // Only now: a hard crash would have left it behind.
    let _ = std::fs::remove_file(&in_flight);
    assert!(done >= 100, "only {done} modules in {elapsed:?}");
    // The generator must keep producing modules that load and run, or the
    // test proves nothing.
    assert!(
        tally.loaded * 2 >= tally.generated,
        "only {} of {} generated modules loaded: {:?}",
        tally.loaded,
        tally.generated,
        tally.load_errors
    );
    let ran: u64 = tally.outcomes.values().sum();
    assert!(
        ran * 2 >= tally.loaded,
        "only {ran} of {} ran",
        tally.loaded
    );
    assert!(
        tally.outcomes.len() >= 3,
        "too few kinds of outcome: {:?}",
        tally.outcomes
    );
    assert!(
        rss_tail <= rss_10 + RSS_GROWTH_BOUND,
        "resident memory grew from {} MiB (10% of the run) to {} MiB (end)",
        rss_10 / MIB,
        rss_tail / MIB
    );
}
