//! The per-invocation store: its host state, its memory limiter, and the one
//! function that installs an invocation's limits on a fresh `Store`.
//!
//! Every path that runs guest code (the CLI, CGI and wasi:http requests,
//! embedders) gets its store from [`new_store`], so limits are applied in
//! exactly one place.

use std::time::Instant;

use wasmtime::{CallHook, ResourceLimiter, Store, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::Limits;
use crate::accounting::Account;
use crate::engine::Engine;
use crate::http_client::OutboundHooks;
use crate::limits::{MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES};
use crate::outbound::OutboundPolicy;

/// Most WASI resources (open files and directories, streams, pollables,
/// wasi:http fields, requests, responses and bodies...) one invocation may
/// hold at once, like `ulimit -n` for a process. A guest that needs one more
/// is killed as `memory_exceeded`: each resource is host memory (and
/// sometimes a host file descriptor) held on the guest's behalf.
pub const MAX_RESOURCES: usize = 1024;

/// Largest in-memory size of one wasi:http `fields` resource a guest builds
/// (header names and values plus wasmtime's per-entry overhead): 16 KiB.
/// Mutations past it fail with the wasi:http `size-exceeded` header error.
pub const MAX_FIELDS_BYTES: usize = 16 << 10;

/// Largest `get-random-bytes` / `random_get` request served in one call:
/// 1 MiB. Larger requests fail instead of making the host allocate them.
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Bytes counted against the memory cap for each table element: the size
/// of a function reference in wasmtime's tables (tables are host memory).
pub const TABLE_ELEMENT_BYTES: u64 = 8;

/// Host memory any invocation may make the host hold besides its linear
/// memory and tables, as a fixed allowance: its store and instance state,
/// WASI context, up to [`MAX_RESOURCES`] resources, stdio pipes (64 KiB
/// each), one random-bytes buffer ([`MAX_RANDOM_BYTES`]): 4 MiB.
/// `wasm-run serve` counts it, with the memory cap, against its memory
/// budget. Output captured for an embedder ([`crate::Limits::max_output`])
/// comes on top.
pub const HOST_ALLOWANCE: u64 = 4 << 20;

/// The extra allowance of a guest that imports wasi:http: up to
/// [`MAX_RESOURCES`] `fields` resources of up to 32 KiB each (a copy of an
/// incoming request's headers, which the server caps at 32 KiB, or a field
/// map the guest built, capped at [`MAX_FIELDS_BYTES`]): 32 MiB.
pub const HTTP_HOST_ALLOWANCE: u64 = MAX_RESOURCES as u64 * (32 << 10);

/// Host memory of an invocation that does not count against its cap: the
/// first 64 KiB its account is charged — its empty store and WASI context
/// (about 11–25 KiB for a hello guest) — so that a guest whose linear
/// memory is exactly its cap still runs. Every byte past it counts. It is
/// part of [`UNATTRIBUTED_ALLOWANCE`], which admission counts beside the cap.
pub const HOST_BASE: u64 = 64 << 10;

/// Host memory an invocation makes the host hold *outside* its account
/// when the accounting allocator is installed: the server's task, timer and
/// log record for the request, which run outside the invocation's polls,
/// and its [`HOST_BASE`]: 256 KiB. Admission counts it beside each memory
/// cap.
pub const UNATTRIBUTED_ALLOWANCE: u64 = 256 << 10;

/// What the store knows about its budget beyond what wasmtime keeps (read
/// by the `wasm-run:sandbox/budget` functions, `crate::budget`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BudgetInfo {
    /// Whether the invocation has a fuel budget (the store's fuel is
    /// `u64::MAX` without one).
    pub(crate) fuel_limited: bool,
    /// When the invocation is killed for time, if ever.
    pub(crate) deadline: Option<Instant>,
}

/// Host state of one store: WASI context and the memory limiter.
pub(crate) struct StoreState {
    /// The WASI context. `WasiP1Ctx` also implements the p2 (`WasiView`)
    /// interfaces, so one type serves core modules and components.
    pub(crate) wasi: WasiP1Ctx,
    /// wasi:http state; unused by guests that do not import wasi:http.
    pub(crate) http: WasiHttpCtx,
    /// Which outgoing HTTP requests the guest may make, and how many at once.
    pub(crate) outbound: OutboundHooks,
    /// Caps and records the invocation's total linear memory.
    pub(crate) limiter: MemoryLimiter,
    /// What the guest may read about its budget (`crate::budget`).
    pub(crate) budget: BudgetInfo,
    /// The host memory charged to this invocation (`crate::accounting`).
    pub(crate) account: Account,
    /// The CPU-time limit, when the invocation has one.
    pub(crate) cpu: Option<std::sync::Arc<crate::scheduler::CpuBudget>>,
    /// When instantiation finished (for [`crate::Usage::instantiate_time`]).
    pub(crate) instantiated: Option<std::time::Instant>,
}

impl StoreState {
    /// Host state with the host-side bounds installed: at most
    /// [`MAX_RESOURCES`] WASI resources and [`MAX_FIELDS_BYTES`] per
    /// wasi:http fields resource.
    pub(crate) fn new(
        mut wasi: WasiP1Ctx,
        outbound: OutboundPolicy,
        max_memory: u64,
        account: Account,
        tables_on_heap: bool,
    ) -> Self {
        wasi.ctx().table.set_max_capacity(MAX_RESOURCES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_BYTES);
        StoreState {
            wasi,
            http,
            outbound: OutboundHooks::new(outbound),
            limiter: MemoryLimiter::new(max_memory, account.clone(), tables_on_heap),
            budget: BudgetInfo::default(),
            account,
            cpu: None,
            instantiated: None,
        }
    }

    /// Kills the invocation for CPU time once it passed its limit: the
    /// check at each epoch tick (about every millisecond of wasm).
    fn check_cpu(&mut self) -> wasmtime::Result<()> {
        match &self.cpu {
            Some(cpu) if cpu.check() => Err(wasmtime::Error::new(CpuLimitExceeded {
                limit: cpu.limit(),
            })),
            _ => Ok(()),
        }
    }

    /// Kills the invocation for memory if its host memory passed what its
    /// cap leaves (`crate::accounting`): the checks at host-call returns and
    /// epoch ticks.
    fn check_host_memory(&mut self) -> wasmtime::Result<()> {
        if !self.account.exceeded() {
            return Ok(());
        }
        self.limiter.killed = true;
        Err(wasmtime::Error::new(MemoryCapExceeded {
            cap: self.limiter.cap,
            wanted: self.limiter.in_use(),
        }))
    }
}

impl crate::budget::BudgetView for StoreState {
    fn fuel_limited(&self) -> bool {
        self.budget.fuel_limited
    }

    fn memory_cap(&self) -> u64 {
        self.limiter.cap()
    }

    fn memory_used(&self) -> u64 {
        self.limiter.in_use()
    }

    fn deadline(&self) -> Option<Instant> {
        self.budget.deadline
    }

    fn cpu(&self) -> Option<(std::time::Duration, std::time::Duration)> {
        self.cpu.as_ref().map(|cpu| (cpu.limit(), cpu.used()))
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let WasiCtxView { table, .. } = self.wasi.ctx();
        WasiHttpCtxView {
            ctx: &mut self.http,
            table,
            hooks: &mut self.outbound,
        }
    }
}

/// Caps the invocation's *total* memory — every linear memory of every
/// instance plus every table (elements × [`TABLE_ELEMENT_BYTES`], which the
/// host allocates) plus the host memory charged to its account — and
/// records the peak of linear memory and tables. As linear memory grows,
/// the account's limit shrinks to what the cap leaves. Also caps how many instances,
/// tables and memories the invocation may create.
///
/// A grow past the cap is refused with an error, which wasmtime turns into a
/// trap at the growing instruction: the guest is killed there, it never sees
/// a failed allocation it might mishandle. `killed` records that this
/// happened, so the outcome does not depend on how the error surfaces.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    cap: u64,
    total: u64,
    peak: u64,
    last_grant: u64,
    account: Account,
    /// Whether tables live on the host heap (the on-demand allocator), where
    /// the account sees them too, rather than in the pool's own mapping.
    tables_on_heap: bool,
    /// Bytes of tables granted that are on the heap, hence also in the
    /// account: counted once.
    heap_tables: u64,
    last_grant_on_heap: bool,
    pub(crate) killed: bool,
}

/// The error that kills an invocation past its CPU-time limit.
#[derive(Debug, thiserror::Error)]
#[error("CPU-time limit of {limit:?} exceeded")]
pub(crate) struct CpuLimitExceeded {
    limit: std::time::Duration,
}

/// The error the limiter returns to wasmtime to kill a grow.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory cap of {cap} bytes exceeded: {wanted} bytes of linear memory, tables and host \
     memory wanted"
)]
pub(crate) struct MemoryCapExceeded {
    cap: u64,
    wanted: u64,
}

impl MemoryLimiter {
    pub(crate) fn new(cap: u64, account: Account, tables_on_heap: bool) -> Self {
        account.set_limit(cap.saturating_add(HOST_BASE));
        MemoryLimiter {
            cap,
            total: 0,
            peak: 0,
            last_grant: 0,
            account,
            tables_on_heap,
            heap_tables: 0,
            last_grant_on_heap: false,
            killed: false,
        }
    }

    /// Linear memory and tables that the account does not see.
    fn outside_account(&self) -> u64 {
        self.total.saturating_sub(self.heap_tables)
    }

    /// Host memory counted against the cap now: what is charged, less heap
    /// tables already counted in `total`, less the [`HOST_BASE`].
    fn host(&self) -> u64 {
        self.account
            .bytes()
            .saturating_sub(self.heap_tables)
            .saturating_sub(HOST_BASE)
    }

    /// The account's limit: what the cap leaves besides linear memory and
    /// tables the account does not see, plus the [`HOST_BASE`].
    fn account_limit(&self) -> u64 {
        self.cap
            .saturating_sub(self.outside_account())
            .saturating_add(HOST_BASE)
    }

    /// The cap on total memory, in bytes.
    pub(crate) fn cap(&self) -> u64 {
        self.cap
    }

    /// Everything counted against the cap now, in bytes: linear memory,
    /// tables and host memory.
    pub(crate) fn in_use(&self) -> u64 {
        self.total.saturating_add(self.host())
    }

    /// What the cap leaves now for anything more: linear memory, tables or
    /// host memory.
    pub(crate) fn left(&self) -> u64 {
        self.cap.saturating_sub(self.in_use())
    }

    /// Highest total memory (linear memory and tables) reached, in bytes.
    pub(crate) fn peak(&self) -> u64 {
        self.peak
    }

    /// Grants `delta` more bytes, or kills the invocation if that would
    /// pass the cap.
    fn grant(&mut self, delta: u64, on_heap: bool) -> wasmtime::Result<bool> {
        let wanted = self.total.saturating_add(delta);
        let all = wanted.saturating_add(self.host());
        if all > self.cap {
            self.killed = true;
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                cap: self.cap,
                wanted: all,
            }));
        }
        self.total = wanted;
        self.peak = self.peak.max(wanted);
        self.last_grant = delta;
        self.last_grant_on_heap = on_heap;
        if on_heap {
            self.heap_tables = self.heap_tables.saturating_add(delta);
        }
        self.account.set_limit(self.account_limit());
        Ok(true)
    }

    /// The engine could not back a grow we had granted: give it back.
    fn give_back_last_grant(&mut self) {
        self.total = self.total.saturating_sub(self.last_grant);
        if self.last_grant_on_heap {
            self.heap_tables = self.heap_tables.saturating_sub(self.last_grant);
        }
        self.last_grant = 0;
        self.account.set_limit(self.account_limit());
    }

    /// A memory or table asks to grow from `current` to `desired` units
    /// (bytes, or elements of `unit` bytes each) under its own `maximum`.
    fn growing(
        &mut self,
        (current, desired, maximum): (usize, usize, Option<usize>),
        unit: u64,
        on_heap: bool,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // Past its own declared maximum: an ordinary failed grow the
            // guest asked for, not a breach of our cap.
            return Ok(false);
        }
        let units = desired.saturating_sub(current) as u64;
        self.grant(units.saturating_mul(unit), on_heap)
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.growing((current, desired, maximum), 1, false)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.give_back_last_grant();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let on_heap = self.tables_on_heap;
        self.growing((current, desired, maximum), TABLE_ELEMENT_BYTES, on_heap)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.give_back_last_grant();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Creates a store for one invocation and installs its limits: the memory
/// limiter, the fuel budget and the epoch deadline.
///
/// The epoch callback runs every engine tick (1 ms) while wasm code runs:
/// past the deadline it traps with [`wasmtime::Trap::Interrupt`]; otherwise
/// it yields to the async executor, so a busy guest never holds a thread
/// shared with other requests for more than a tick, and the
/// [`crate::scheduler`] gets to look at the CPU it has used between polls.
///
/// Time spent blocked in host calls is covered by the caller's deadline
/// around the whole call (rung by the engine's ticker).
/// Fuel a running guest burns between two write-backs of its count (see
/// [`new_store`]); at the usual ~1 unit per instruction, well under 1 ms.
const FUEL_SLICE: u64 = 1_000_000;

pub(crate) fn new_store(
    engine: &Engine,
    wasmtime: &wasmtime::Engine,
    state: StoreState,
    limits: &Limits,
    started: Instant,
) -> Store<StoreState> {
    // A deadline too far away to represent is no deadline.
    let deadline = limits.timeout.and_then(|t| started.checked_add(t));
    let mut state = state;
    state.budget = BudgetInfo {
        fuel_limited: engine.config().fuel && limits.fuel.is_some(),
        deadline,
    };
    state.cpu = limits
        .max_cpu
        .map(|limit| std::sync::Arc::new(crate::scheduler::CpuBudget::new(limit)));
    state.outbound.set_limits(
        deadline.map(|at| (at, std::sync::Arc::clone(engine.activity()))),
        state.cpu.clone(),
    );
    let mut store = Store::new(wasmtime, state);
    store.limiter(|s| &mut s.limiter);
    if engine.config().fuel {
        store
            .set_fuel(limits.fuel.unwrap_or(u64::MAX))
            .expect("fuel is enabled in this engine");
        // Compiled code keeps the fuel it burns in a register and writes it
        // back at calls, not at epoch checks: a guest killed by its deadline
        // or CPU limit while looping would report almost no fuel. Refilling
        // in slices makes it write back every slice, so the usage report is
        // right to within one slice (a yield per slice, like an epoch tick).
        store
            .fuel_async_yield_interval(Some(FUEL_SLICE))
            .expect("fuel is enabled and the slice is not zero");
    }
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut cx: StoreContextMut<'_, StoreState>| {
        cx.data_mut().check_host_memory()?;
        cx.data_mut().check_cpu()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(wasmtime::Trap::Interrupt.into());
        }
        Ok(UpdateDeadline::Yield(1))
    });
    // Host memory a host call caused is looked at as the call returns, so a
    // guest cannot run on past its cap between two epoch ticks.
    store.call_hook(|mut cx, hook| match hook {
        CallHook::ReturningFromHost => cx.data_mut().check_host_memory(),
        _ => Ok(()),
    });
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_the_total_across_memories() {
        let mut l = MemoryLimiter::new(100, Account::new(u64::MAX), false);
        assert!(l.memory_growing(0, 60, None).unwrap());
        // A second memory: its growth counts against the same total.
        assert!(l.memory_growing(0, 40, None).unwrap());
        assert_eq!(l.peak(), 100);
        assert!(!l.killed);
        assert!(l.memory_growing(60, 61, None).is_err());
        assert!(l.killed);
        assert_eq!(l.peak(), 100);
    }

    #[test]
    fn limiter_leaves_a_memorys_or_tables_own_maximum_to_the_guest() {
        let mut l = MemoryLimiter::new(1000, Account::new(u64::MAX), false);
        assert!(!l.memory_growing(10, 20, Some(15)).unwrap());
        assert!(!l.table_growing(10, 20, Some(15)).unwrap());
        assert!(!l.killed);
    }

    #[test]
    fn tables_count_against_the_same_cap() {
        let mut l = MemoryLimiter::new(1000, Account::new(u64::MAX), false);
        assert!(l.memory_growing(0, 600, None).unwrap());
        // 50 elements of 8 bytes: 400 bytes, exactly at the cap.
        assert!(l.table_growing(0, 50, None).unwrap());
        assert_eq!(l.peak(), 1000);
        assert!(l.table_growing(50, 51, None).is_err());
        assert!(l.killed);
    }

    #[test]
    fn host_memory_counts_against_the_same_cap() {
        let account = Account::new(u64::MAX);
        let mut l = MemoryLimiter::new(1 << 20, account.clone(), false);
        let held = account.hold((600 << 10) + HOST_BASE as usize);
        // 600 KiB held by the host past its base leave room for 300 KiB of
        // linear memory, not 500 KiB.
        assert!(l.memory_growing(0, 300 << 10, None).unwrap());
        assert!(l.memory_growing(300 << 10, 500 << 10, None).is_err());
        assert!(l.killed);
        // And linear memory lowers what the host may hold before the flag.
        assert!(!account.exceeded());
        let more = account.hold(200 << 10);
        assert!(account.exceeded());
        drop((held, more));
    }

    #[test]
    fn the_host_base_does_not_count() {
        // A guest whose linear memory is exactly its cap still runs while
        // the host holds no more than the base for it.
        let account = Account::new(u64::MAX);
        let mut l = MemoryLimiter::new(64 << 10, account.clone(), false);
        let held = account.hold(32 << 10);
        assert!(l.memory_growing(0, 64 << 10, None).unwrap());
        assert!(!account.exceeded());
        assert_eq!(l.in_use(), 64 << 10);
        drop(held);
    }

    #[test]
    fn failed_grow_is_given_back() {
        let mut l = MemoryLimiter::new(100, Account::new(u64::MAX), false);
        assert!(l.memory_growing(0, 80, None).unwrap());
        l.memory_grow_failed(wasmtime::Error::msg("no")).unwrap();
        assert!(l.memory_growing(0, 80, None).unwrap());
        assert!(!l.killed);
    }
}
