//! The per-invocation store: its host state, its memory limiter, and the one
//! function that installs an invocation's limits on a fresh `Store`.
//!
//! Every path that runs guest code (the CLI, CGI and wasi:http requests,
//! embedders) gets its store from [`new_store`], so limits are applied in
//! exactly one place.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use wasmtime::{CallHook, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::Limits;
use crate::engine::Engine;
use crate::outbound::OutboundPolicy;

/// Host state of one store: WASI context and the memory limiter.
pub(crate) struct StoreState {
    /// The WASI context. `WasiP1Ctx` also implements the p2 (`WasiView`)
    /// interfaces, so one type serves core modules and components.
    pub(crate) wasi: WasiP1Ctx,
    /// wasi:http state; unused by guests that do not import wasi:http.
    pub(crate) http: WasiHttpCtx,
    /// Which outgoing HTTP requests the guest may make.
    pub(crate) outbound: OutboundPolicy,
    /// Caps and records the invocation's total linear memory.
    pub(crate) limiter: MemoryLimiter,
}

impl StoreState {
    pub(crate) fn new(wasi: WasiP1Ctx, outbound: OutboundPolicy, max_memory: u64) -> Self {
        StoreState {
            wasi,
            http: WasiHttpCtx::new(),
            outbound,
            limiter: MemoryLimiter::new(max_memory),
        }
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

/// Caps the invocation's *total* linear memory across every memory of every
/// instance, and records the peak.
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
    pub(crate) killed: bool,
}

/// The error the limiter returns to wasmtime to kill a grow.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap} bytes exceeded: a grow to {wanted} bytes total was refused")]
pub(crate) struct MemoryCapExceeded {
    cap: u64,
    wanted: u64,
}

impl MemoryLimiter {
    pub(crate) fn new(cap: u64) -> Self {
        MemoryLimiter {
            cap,
            total: 0,
            peak: 0,
            last_grant: 0,
            killed: false,
        }
    }

    /// Highest total linear memory reached, in bytes.
    pub(crate) fn peak(&self) -> u64 {
        self.peak
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // Past the memory's own declared maximum: an ordinary failed
            // grow the guest asked for, not a breach of our cap.
            return Ok(false);
        }
        let delta = desired.saturating_sub(current) as u64;
        let wanted = self.total.saturating_add(delta);
        if wanted > self.cap {
            self.killed = true;
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                cap: self.cap,
                wanted,
            }));
        }
        self.total = wanted;
        self.peak = self.peak.max(wanted);
        self.last_grant = delta;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The engine could not back a grow we had granted: give it back.
        self.total = self.total.saturating_sub(self.last_grant);
        self.last_grant = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

/// Creates a store for one invocation and installs its limits: the memory
/// limiter, the fuel budget and the epoch deadline.
///
/// The epoch callback runs every engine tick (1 ms) while wasm code runs:
///
/// - past the deadline it traps with [`wasmtime::Trap::Interrupt`];
/// - otherwise it yields to the async executor, so a busy guest never holds
///   a thread shared with other requests for more than a tick;
/// - once the invocation has run wasm for about `demote_after` (counted in
///   epoch callbacks, which only happen while wasm runs) it is *demoted*: each further tick it gives back its background CPU slot and
///   waits (FIFO) for one before running again. With one slot fewer than
///   cores, spinning guests share what is left among themselves and short
///   requests always find a free core.
///
/// Time spent blocked in host calls (or waiting for a slot) is covered by the
/// caller's `tokio::time::timeout` around the whole call.
pub(crate) fn new_store(
    engine: &Engine,
    state: StoreState,
    limits: &Limits,
    started: Instant,
) -> Store<StoreState> {
    let mut store = Store::new(engine.wasmtime(), state);
    store.limiter(|s| &mut s.limiter);
    if engine.config().fuel {
        store
            .set_fuel(limits.fuel.unwrap_or(u64::MAX))
            .expect("fuel is enabled in this engine");
    }
    let deadline = limits.timeout.map(|t| started + t);
    // Epoch callbacks only happen while wasm runs, one per tick, so counting
    // them measures the guest's CPU time, not time spent waiting.
    let config = engine.config();
    let demote_after_ticks =
        (config.demote_after.as_nanos() / config.epoch_tick.as_nanos().max(1)).max(1) as u64;
    let mut ticks_run = 0u64;
    let slots = engine.background_slots().clone();
    let held: Arc<Mutex<Option<OwnedSemaphorePermit>>> = Arc::default();
    let demoted = Arc::new(AtomicBool::new(false));
    // A demoted guest gives its slot back whenever it enters a host call
    // (which may block: sleep, I/O), and on return must queue for a slot
    // again before running more wasm: the deadline of 0 ticks sends it to
    // the epoch callback at its next check.
    let (held_by_hook, demoted_by_hook) = (held.clone(), demoted.clone());
    store.call_hook(move |mut ctx, hook| {
        if demoted_by_hook.load(Ordering::Relaxed) {
            match hook {
                CallHook::CallingHost => {
                    if let Ok(mut slot) = held_by_hook.try_lock() {
                        slot.take();
                    }
                }
                CallHook::ReturningFromHost => ctx.set_epoch_deadline(0),
                _ => {}
            }
        }
        Ok(())
    });
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(wasmtime::Trap::Interrupt.into());
        }
        ticks_run += 1;
        if ticks_run < demote_after_ticks {
            return Ok(UpdateDeadline::Yield(1));
        }
        demoted.store(true, Ordering::Relaxed);
        // Demoted: give back the slot held for the last tick, queue for the next.
        drop(held.lock().unwrap_or_else(|e| e.into_inner()).take());
        let slots = slots.clone();
        let held = held.clone();
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                if let Ok(permit) = slots.acquire_owned().await {
                    *held.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
                }
            }),
        ))
    });
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_the_total_across_memories() {
        let mut l = MemoryLimiter::new(100);
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
    fn limiter_leaves_the_memorys_own_maximum_to_the_guest() {
        let mut l = MemoryLimiter::new(1000);
        assert!(!l.memory_growing(10, 20, Some(15)).unwrap());
        assert!(!l.killed);
    }

    #[test]
    fn failed_grow_is_given_back() {
        let mut l = MemoryLimiter::new(100);
        assert!(l.memory_growing(0, 80, None).unwrap());
        l.memory_grow_failed(wasmtime::Error::msg("no")).unwrap();
        assert!(l.memory_growing(0, 80, None).unwrap());
        assert!(!l.killed);
    }
}
