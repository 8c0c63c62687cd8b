//! The process-wide engine: one `wasmtime::Engine` configured for many short
//! sandboxed invocations, plus the epoch ticker thread that drives deadlines.
//!
//! Settings follow measurements recorded in `benches/RESULTS.md`: the pooling instance allocator with
//! copy-on-write memory images, linear memory and tables kept resident between
//! uses and reset with the `PAGEMAP_SCAN` ioctl where the kernel has it. That
//! removes page faults and TLB-shootdown IPIs from the per-invocation path.
//!
//! The engine also owns the [`crate::scheduler`]'s pool of low-priority
//! threads that long-running invocations move to, so that the kernel
//! preempts them whenever a fresh request is runnable.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::{Error, Result};
pub use crate::proposals::Proposal;
use crate::proposals::set_proposals;
use crate::scheduler::Scheduler;
pub use crate::swap::MemoryReset;
use crate::ticker::{Activity, spawn_epoch_ticker};

/// Default interval between epoch ticks: 1 ms. Deadlines are checked and
/// running guests yield to other tasks at this granularity.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(1);

/// Default wasm stack limit: 1 MiB.
pub const DEFAULT_MAX_WASM_STACK: usize = 1 << 20;

/// Room on each invocation's stack for host frames, beyond the wasm stack
/// limit: 1 MiB.
pub const STACK_HOST_FRAMES: usize = 1 << 20;

/// Default number of instances that may be live at once in the pool: 1000.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

/// Core instances and tables in the pool per component instance: a
/// component has several (real ones 5-20), so those pools are larger.
pub(crate) const CORE_INSTANCES_PER_COMPONENT: u64 = 4;

/// How the process-wide engine is built.
///
/// Plain data with safe defaults; see [`Engine::new`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Count fuel in every invocation so that budgets can be enforced and
    /// usage reported. Default `true`.
    pub fuel: bool,
    /// Interval of the epoch ticker that drives deadlines and periodic
    /// yields. Default [`DEFAULT_EPOCH_TICK`].
    pub epoch_tick: Duration,
    /// Largest wasm call stack, in bytes; a guest that recurses deeper traps
    /// with "call stack exhausted". wasmtime fixes this per engine, not per
    /// store, which is why it lives here rather than in [`crate::Limits`].
    /// Default [`DEFAULT_MAX_WASM_STACK`].
    pub max_wasm_stack: usize,
    /// Use the pooling instance allocator (pre-reserved slots, fast reuse).
    /// Default `true`.
    pub pooling: bool,
    /// Upper bound on concurrently live instances (and memories, tables and
    /// stacks) in the pool. Default [`DEFAULT_MAX_INSTANCES`]. WASI 0.3
    /// guests run on a second engine with a pool of its own of this size
    /// (reserved address space, not memory, until used).
    pub max_instances: u32,
    /// Bytes of each linear memory and table kept resident between uses.
    /// Default 1 MiB. Used only where slots are reset with the page-map
    /// scan ([`MemoryReset::PagemapScan`]); where memory can be swapped out
    /// nothing is kept resident.
    pub keep_resident: usize,
    /// Directory of the compiled-module cache, so repeated runs of the same
    /// module skip compilation. `None` (the default) disables the cache.
    /// Needs the crate's `cache` feature (the `wasm-run` command has it); without
    /// it a directory given here is ignored with a warning.
    pub cache_dir: Option<PathBuf>,
    /// CPU time (in wasm and in host calls, not waiting) after which an
    /// invocation counts as long-running and moves to the low-priority
    /// background threads. Default [`DEFAULT_DEMOTE_AFTER`] (1 ms);
    /// `Duration::MAX` keeps every invocation where it started (what
    /// `wasm-run run` does: one guest, nobody to make way for).
    pub demote_after: Duration,
    /// Threads of the low-priority (nice 10) pool that long-running
    /// invocations finish on, created on first use. Default: the number of
    /// CPUs, so demoted work still uses every idle core (all but one while
    /// short invocations are about: see [`crate::scheduler`]). Fewer keep
    /// cores that long-running invocations never take, always: fresh ones
    /// find an idle core instead of preempting demoted work, and demoted
    /// work gets only those threads (`wasm-run serve --background-threads`).
    pub background_threads: usize,
    /// Wasm proposals turned on beyond the set wasm-run's guests need (see
    /// [`Proposal`]); every proposal is engine code a guest can reach, so
    /// these are off unless asked for. An artifact made with a proposal on is
    /// refused by an engine that has it off. Default
    /// none.
    pub proposals: Vec<Proposal>,
    /// How the instance pool resets a slot between invocations. `None`
    /// (the default): decided from the system when the engine is built
    /// ([`MemoryReset::for_this_system`]): the page-map scan only where no
    /// page can be swapped out. `Some(MemoryReset::Decommit)` suits a host
    /// where swap may be turned on while wasm-run runs.
    pub memory_reset: Option<MemoryReset>,
}

pub use crate::scheduler::DEFAULT_DEMOTE_AFTER;

fn default_background_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl EngineConfig {
    /// The size of each invocation's stack (see [`Engine::stack_bytes`]).
    fn stack_bytes(&self) -> usize {
        self.max_wasm_stack.saturating_add(STACK_HOST_FRAMES)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            fuel: true,
            epoch_tick: DEFAULT_EPOCH_TICK,
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
            pooling: true,
            max_instances: DEFAULT_MAX_INSTANCES,
            keep_resident: 1 << 20,
            cache_dir: None,
            demote_after: DEFAULT_DEMOTE_AFTER,
            background_threads: default_background_threads(),
            proposals: Vec::new(),
            memory_reset: None,
        }
    }
}

/// The process-wide engine: cheap to clone, shared by every guest and call.
///
/// Owns the epoch ticker thread, which holds only a weak reference to the
/// engine and stops by itself once the last clone is dropped. The ticker
/// only ticks while an invocation runs, and for a second after: an idle
/// process does not wake a thousand times a second.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    /// WASI 0.3 guests' engine, built on first use (see [`Engine::concurrent`]).
    concurrent: Arc<OnceLock<wasmtime::Engine>>,
    config: Arc<EngineConfig>,
    scheduler: Arc<Scheduler>,
    activity: Arc<Activity>,
    /// How pool slots are reset, decided from the system at start.
    reset: MemoryReset,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(config: EngineConfig) -> Result<Engine> {
        let activity = Arc::new(Activity::default());
        let reset = config
            .memory_reset
            .unwrap_or_else(MemoryReset::for_this_system);
        let inner = build(&config, false, &activity, reset)?;
        tracing::debug!(memory_reset = reset.name(), "engine built");
        Ok(Engine {
            inner,
            activity,
            reset,
            concurrent: Arc::new(OnceLock::new()),
            scheduler: Arc::new(Scheduler::new(
                config.demote_after,
                config.background_threads,
            )),
            config: Arc::new(config),
        })
    }

    /// The engine of WASI 0.3 guests: the same settings with the component
    /// model's async features and concurrency support on. Built (with its
    /// own instance pool and epoch ticker) the first time a WASI 0.3 guest
    /// loads, so that a process serving only WASI 0.2 and preview 1 guests
    /// never pays for it.
    pub(crate) fn concurrent(&self) -> Result<&wasmtime::Engine> {
        if let Some(engine) = self.concurrent.get() {
            return Ok(engine);
        }
        let engine = build(&self.config, true, &self.activity, self.reset)?;
        // Two first loads at once build two; one is kept, the other (and
        // its ticker, which holds only a weak reference) goes away.
        Ok(self.concurrent.get_or_init(|| engine))
    }

    /// Compiles a component on the engine it needs: the WASI 0.3 one when
    /// its bytes use the component model's async features
    /// (`binary::uses_component_model_async`), the first one otherwise.
    pub(crate) fn compile_component(&self, binary: &[u8]) -> wasmtime::Result<Component> {
        Component::new(self.engine_for(binary)?, binary)
    }

    /// The engine a component's bytes need (see [`Engine::compile_component`]).
    fn engine_for(&self, binary: &[u8]) -> wasmtime::Result<&wasmtime::Engine> {
        if crate::binary::uses_component_model_async(binary) {
            self.concurrent_or_error()
        } else {
            Ok(&self.inner)
        }
    }

    fn concurrent_or_error(&self) -> wasmtime::Result<&wasmtime::Engine> {
        self.concurrent()
            .map_err(|e| wasmtime::Error::msg(e.to_string()))
    }

    /// Compiles a module or component (binary wasm or WAT) ahead of time
    /// into an artifact that [`crate::Guest::from_bytes_allow_precompiled`]
    /// loads without compiling. The artifact carries the guest's
    /// [`crate::footprint::Footprint`], read from the wasm here, so limits and
    /// admission treat it exactly like its wasm. It only loads in an engine
    /// of the same wasm-run/wasmtime version and configuration (e.g. fuel
    /// on or off, the same wasm proposals).
    pub fn precompile(&self, name: &str, bytes: &[u8]) -> Result<Vec<u8>> {
        let binary = crate::binary::to_binary(name, bytes)?;
        let compiled = if crate::binary::is_component(&binary) {
            self.engine_for(&binary)
                .and_then(|engine| engine.precompile_component(&binary))
        } else {
            self.inner.precompile_module(&binary)
        };
        let code = compiled.map_err(|e| Error::Invalid {
            name: name.to_string(),
            message: format!("{e:#}"),
        })?;
        let footprint = crate::footprint::of(&binary);
        Ok(crate::artifact::encode(
            &artifact_version(),
            &footprint,
            &code,
        ))
    }

    /// The wasmtime engine of WASI 0.2 and preview 1 guests, for embedders
    /// that need it directly. (WASI 0.3 guests run on a second engine with
    /// the component model's concurrency support.)
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// The configuration this engine was built from.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The size of the stack each invocation runs on (its wasm frames and
    /// the host's): [`EngineConfig::max_wasm_stack`] plus
    /// [`STACK_HOST_FRAMES`], 2 MiB by default. Its pages are mapped
    /// memory the accounting allocator does not see, so a guest's
    /// [`crate::Guest::host_allowance`] includes it.
    pub fn stack_bytes(&self) -> u64 {
        self.config.stack_bytes() as u64
    }

    /// How the instance pool resets a slot between invocations: decided
    /// when the engine was built from whether this process's memory can be
    /// swapped out (see [`MemoryReset`]), so that no invocation can read a
    /// byte another one wrote on any host.
    pub fn memory_reset(&self) -> MemoryReset {
        self.reset
    }

    /// What the epoch tickers watch: an invocation holds a [`Running`]
    /// while its store exists.
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Where invocations run, and at what priority.
    pub(crate) fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }
}

/// One wasmtime engine with wasm-run's settings, its epoch ticker started;
/// `concurrent` turns on the component model's async features (WASI 0.3).
fn build(
    config: &EngineConfig,
    concurrent: bool,
    activity: &Arc<Activity>,
    reset: MemoryReset,
) -> Result<wasmtime::Engine> {
    let engine_error = |e: wasmtime::Error| Error::Engine {
        message: format!("{e:#}"),
    };
    let mut wt = wasmtime::Config::new();
    wt.consume_fuel(config.fuel);
    wt.epoch_interruption(true);
    wt.max_wasm_stack(config.max_wasm_stack);
    // Async stacks must hold the wasm stack plus host frames.
    wt.async_stack_size(config.stack_bytes());
    wt.memory_init_cow(true);
    set_proposals(&mut wt, &config.proposals);
    // Precompiled artifacts (and cache entries) record this, so one made
    // by another wasm-run release is refused, not trusted.
    wt.module_version(wasmtime::ModuleVersionStrategy::Custom(artifact_version()))
        .map_err(engine_error)?;
    // Concurrency support makes every component instantiation dearer
    // (about 31 → 20 µs per hello component without it), so only WASI 0.3
    // guests, which need it, run on an engine that has it.
    wt.concurrency_support(concurrent);
    wt.wasm_component_model_async(concurrent);
    if config.pooling {
        wt.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(
            config, reset,
        )));
    }
    crate::cache::set_up_cache(&mut wt, config.cache_dir.as_deref());
    let engine = wasmtime::Engine::new(&wt).map_err(engine_error)?;
    spawn_epoch_ticker(&engine, config.epoch_tick, activity.clone())?;
    Ok(engine)
}

/// The wasmtime release this crate is built against (pinned with `=` in
/// the workspace's Cargo.toml; keep the two in step).
const WASMTIME_VERSION: &str = "48.0.8";

/// The version string artifacts of `wasm-run compile` carry: wasm-run's own
/// and wasmtime's.
pub fn artifact_version() -> String {
    format!(
        "wasm-run {} (wasmtime {WASMTIME_VERSION})",
        env!("CARGO_PKG_VERSION")
    )
}

/// The pooling allocator's settings: slots for `config.max_instances`
/// invocations, and per-component limits that keep one request from taking
/// a large share of them; slots reset as `reset` says.
fn pool_config(config: &EngineConfig, reset: MemoryReset) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    // A component has several core instances and tables (real ones
    // 5-20), so those pools are larger than the component pool.
    let per_component_share = config
        .max_instances
        .saturating_mul(CORE_INSTANCES_PER_COMPONENT as u32);
    pool.total_core_instances(per_component_share)
        .total_component_instances(config.max_instances)
        .total_memories(config.max_instances)
        .total_tables(per_component_share)
        .total_stacks(config.max_instances)
        // Room for real-world guests (componentize-py/-js runtimes have
        // big function tables and instance state); these are bounds,
        // reserved lazily, not memory spent per instance.
        .table_elements(1_000_000)
        .max_tables_per_module(8)
        .max_memories_per_module(2)
        // One request may not take a large share of the pool's slots:
        // the same bounds the store's limiter enforces per invocation.
        .max_core_instances_per_component(crate::limits::MAX_INSTANCES as u32)
        .max_tables_per_component(crate::limits::MAX_TABLES as u32)
        .max_memories_per_component(crate::limits::MAX_MEMORIES as u32)
        .max_core_instance_size(16 << 20)
        .max_component_instance_size(16 << 20);
    match reset {
        MemoryReset::PagemapScan => {
            pool.linear_memory_keep_resident(config.keep_resident)
                .table_keep_resident(config.keep_resident)
                .pagemap_scan(Enabled::Auto);
        }
        // Without the scan, kept-resident bytes are rewritten on every
        // reset, which measured slower than decommitting them.
        MemoryReset::Decommit => {
            pool.linear_memory_keep_resident(0)
                .table_keep_resident(0)
                .pagemap_scan(Enabled::No);
        }
    }
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_versions_name_both_releases() {
        let v = artifact_version();
        assert!(
            v.starts_with("wasm-run ") && v.contains("wasmtime 48."),
            "{v}"
        );
    }
}
