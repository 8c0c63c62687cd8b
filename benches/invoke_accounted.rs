//! The `invoke` benchmarks with wasm-run's accounting allocator installed
//! (as the `wasm-run` binary has it): run both in one session and compare.

#[global_allocator]
static ALLOC: wasm_run::Accounting = wasm_run::Accounting;

include!("invoke.rs");
