//! The budget a guest can read about itself: the `wasm-run:sandbox/budget`
//! interface of `wit/budget.wit` for components, and the same five
//! functions as plain imports of the module [`CORE_MODULE`] for core
//! modules (an `i64` each, `-1` for "none"). Version 0.2 added
//! `cpu-remaining-ns`; guests built against 0.1.x link as before.
//!
//! The figures are the live ones of the calling invocation: fuel from its
//! store, memory from its limiter, time from its deadline. Each function is
//! linked only into guests that import it.

use std::time::{Duration, Instant};

use wasmtime::component::Linker as ComponentLinker;
use wasmtime::{AsContext, Linker};

/// What the budget functions read of the calling invocation's host state
/// (implemented by the store's state, as wasmtime-wasi's `WasiView` keeps
/// its interfaces from knowing the host's types).
pub(crate) trait BudgetView: Send + 'static {
    /// Whether the invocation has a fuel budget.
    fn fuel_limited(&self) -> bool;
    /// The invocation's memory cap, in bytes.
    fn memory_cap(&self) -> u64;
    /// The memory it uses now (linear memory, tables, host memory).
    fn memory_used(&self) -> u64;
    /// When it is killed for time, if ever.
    fn deadline(&self) -> Option<Instant>;
    /// Its CPU-time limit and the CPU used so far, if it has a limit.
    fn cpu(&self) -> Option<(Duration, Duration)>;
}

/// The WIT of the interface (`wit/budget.wit`), for guests' bindings
/// generators: write it to a `wit/` directory and point `wit-bindgen`,
/// componentize-py or jco at it.
pub const WIT: &str = include_str!("../wit/budget.wit");

/// The WIT interface components import (any 0.1.x or 0.2.x version is
/// accepted).
pub const INTERFACE: &str = "wasm-run:sandbox/budget@0.2.0";

/// The import module of the core-module flavour.
pub const CORE_MODULE: &str = "wasm_run_budget";

fn fuel_remaining<T: BudgetView>(store: impl AsContext<Data = T>) -> Option<u64> {
    let store = store.as_context();
    if !store.data().fuel_limited() {
        return None;
    }
    store.get_fuel().ok()
}

fn memory_cap<T: BudgetView>(store: impl AsContext<Data = T>) -> u64 {
    store.as_context().data().memory_cap()
}

fn memory_used<T: BudgetView>(store: impl AsContext<Data = T>) -> u64 {
    store.as_context().data().memory_used()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn time_remaining_ns<T: BudgetView>(store: impl AsContext<Data = T>) -> Option<u64> {
    let deadline = store.as_context().data().deadline()?;
    Some(nanos(deadline.saturating_duration_since(Instant::now())))
}

fn cpu_remaining_ns<T: BudgetView>(store: impl AsContext<Data = T>) -> Option<u64> {
    let (limit, used) = store.as_context().data().cpu()?;
    Some(nanos(limit.saturating_sub(used)))
}

/// `None` as `-1`, for the core flavour (every real figure fits in an
/// `i64`: fuel and nanoseconds are clamped to `i64::MAX`).
fn core(value: Option<u64>) -> i64 {
    value.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// Whether a component import name is this interface (any 0.1.x or 0.2.x).
pub(crate) fn is_interface(import: &str) -> bool {
    import.starts_with("wasm-run:sandbox/budget@0.1.")
        || import.starts_with("wasm-run:sandbox/budget@0.2.")
}

/// Defines the interface under `import` (the exact name the component
/// imports, so that any 0.1.x patch version links).
pub(crate) fn add_to_component_linker<T: BudgetView>(
    linker: &mut ComponentLinker<T>,
    import: &str,
) -> wasmtime::Result<()> {
    let mut budget = linker.instance(import)?;
    budget.func_wrap("fuel-remaining", |store, (): ()| {
        Ok((fuel_remaining(store),))
    })?;
    budget.func_wrap("memory-cap", |store, (): ()| Ok((memory_cap(store),)))?;
    budget.func_wrap("memory-used", |store, (): ()| Ok((memory_used(store),)))?;
    budget.func_wrap("time-remaining-ns", |store, (): ()| {
        Ok((time_remaining_ns(store),))
    })?;
    // A 0.1 importer does not ask for it; an extra function is harmless.
    budget.func_wrap("cpu-remaining-ns", |store, (): ()| {
        Ok((cpu_remaining_ns(store),))
    })?;
    Ok(())
}

/// Defines the core flavour's functions.
pub(crate) fn add_to_core_linker<T: BudgetView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.func_wrap(
        CORE_MODULE,
        "fuel_remaining",
        |c: wasmtime::Caller<'_, T>| core(fuel_remaining(c)),
    )?;
    linker.func_wrap(CORE_MODULE, "memory_cap", |c: wasmtime::Caller<'_, T>| {
        core(Some(memory_cap(c)))
    })?;
    linker.func_wrap(CORE_MODULE, "memory_used", |c: wasmtime::Caller<'_, T>| {
        core(Some(memory_used(c)))
    })?;
    linker.func_wrap(
        CORE_MODULE,
        "time_remaining_ns",
        |c: wasmtime::Caller<'_, T>| core(time_remaining_ns(c)),
    )?;
    linker.func_wrap(
        CORE_MODULE,
        "cpu_remaining_ns",
        |c: wasmtime::Caller<'_, T>| core(cpu_remaining_ns(c)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_minus_one_and_large_values_clamp() {
        assert_eq!(core(None), -1);
        assert_eq!(core(Some(7)), 7);
        assert_eq!(core(Some(u64::MAX)), i64::MAX);
    }

    #[test]
    fn every_0_1_version_of_the_interface_is_recognised() {
        assert!(is_interface(INTERFACE));
        assert!(is_interface("wasm-run:sandbox/budget@0.1.3"));
        assert!(is_interface("wasm-run:sandbox/budget@0.2.0"));
        assert!(!is_interface("wasm-run:sandbox/budget@0.3.0"));
        assert!(!is_interface("wasi:cli/environment@0.2.0"));
    }

    #[test]
    fn the_crate_ships_the_repositorys_wit() {
        assert_eq!(WIT, include_str!("../../wit/budget.wit"));
    }

    #[test]
    fn the_wit_file_declares_what_is_linked() {
        let wit = WIT;
        assert!(wit.contains("package wasm-run:sandbox@0.2.0;"));
        for function in [
            "fuel-remaining: func() -> option<u64>;",
            "memory-cap: func() -> u64;",
            "memory-used: func() -> u64;",
            "time-remaining-ns: func() -> option<u64>;",
            "cpu-remaining-ns: func() -> option<u64>;",
        ] {
            assert!(wit.contains(function), "{function}");
        }
    }
}
