//! wasm-run: run WebAssembly guests with per-invocation limits.
//!
//! Every invocation is its own sandboxed computation, like a Unix process of
//! old: a fresh wasmtime `Store` with its own fuel budget, its own cap on total
//! linear memory and its own deadline. A guest that exceeds a limit is killed
//! and its [`Outcome`] says which limit it hit; the host and every other
//! invocation carry on.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasm_run::Error> {
//! use std::time::Duration;
//! use wasm_run::{Engine, EngineConfig, Guest, Invocation, Limits, Output};
//!
//! let engine = Engine::new(EngineConfig::default())?;
//! let guest = Guest::from_file(&engine, "hello.wasm")?; // compiled and linked once
//! let outcome = guest
//!     .run(Invocation {
//!         stdout: Output::Capture,
//!         limits: Limits {
//!             fuel: Some(10_000_000),
//!             max_memory: 32 << 20,
//!             timeout: Some(Duration::from_secs(1)),
//!             ..Limits::default()
//!         },
//!         ..Invocation::default()
//!     })
//!     .await?;
//! println!("{} after {:?}", outcome.kind.name(), outcome.usage.wall_time);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`accounting`]: the accounting allocator ([`Accounting`]) that charges
//!   host memory to the invocation that causes it; install it as your
//!   `#[global_allocator]` for the memory cap to cover host memory.
//! - [`footprint`]: what one instantiation creates, read from the guest's
//!   bytes (instance state, instances, memories, tables).
//! - [`admission`]: admission by memory budget, as `wasm-run serve` admits
//!   requests, for embedders that want bursts to queue instead of failing.
//! - [`budget`]: the `wasm-run:sandbox/budget` interface (`wit/budget.wit`)
//!   through which a guest reads its own fuel, memory and time left.
//! - [`engine`]: the process-wide [`Engine`] (pooling allocator, fuel, epochs)
//!   and its epoch ticker thread.
//! - [`guest`]: loading a [`Guest`]: read, detect core module or component,
//!   compile once, pre-link once.
//! - [`invoke`]: one [`Invocation`]: WASI context, fresh store, call, classify
//!   ([`Guest::run`] for commands, [`Guest::handle_http`] for wasi:http
//!   components).
//! - `binary` (private): guest bytes as binary wasm (WAT converted) and
//!   whether they are a component; used by loading and by precompiling.
//! - `store` (private): the store's host state, the memory limiter, and the
//!   single function that installs [`Limits`] on a store.
//! - `open_files` (private): the per-invocation cap on files opened
//!   through preopens ([`MAX_OPEN_FILES`]); their I/O runs on the
//!   invocation's own thread, so it is charged to it.
//! - [`outbound`]: the allow-list for a wasi:http guest's outgoing requests
//!   ([`OutboundPolicy`]) and the hooks that vet, resolve, dial and bound
//!   them per invocation.
//! - [`scheduler`]: where an invocation runs — in place for its first 1 ms
//!   of CPU, then on low-priority (nice 10) threads.
//! - [`limits`]: [`Limits`] and the human sizes and durations (`64MiB`, `250ms`).
//! - [`outcome`]: [`Outcome`], [`Usage`], the JSON [`Report`] and the one
//!   classifier that maps what happened to an outcome.
//! - [`io`]: where stdin comes from and stdout/stderr go.
//! - [`error`]: host [`Error`]s (bad module, failed set-up), as opposed to
//!   outcomes.
//! - `serve` (feature `serve`): the HTTP function host behind
//!   `wasm-run serve` — configuration, listeners, admission of requests,
//!   the CGI and wasi:http request paths, responses, metrics; its module
//!   doc draws a request's flow.
//!
//! A call flows `Guest::run` → `scheduler` (CPU metered; moved to the
//! low-priority pool once long-running) → `store::new_store` (limits
//! installed) → instantiate from the pre-linked guest → call `_start` /
//! `wasi:cli/run` → `outcome::classify` → [`Outcome`]. A wasi:http
//! component takes the same path through [`Guest::handle_http`], calling
//! `wasi:http/incoming-handler.handle` instead.

#![deny(missing_docs)]

pub mod accounting;
pub mod admission;
mod binary;
pub mod budget;
pub mod engine;
pub mod error;
pub mod footprint;
pub mod guest;
pub mod invoke;
pub mod io;
pub mod limits;
mod open_files;
pub mod outbound;
pub mod outcome;
pub mod scheduler;
#[cfg(feature = "serve")]
pub mod serve;
mod store;

pub use accounting::{Account, Accounting};

/// Host unit tests run with the accounting allocator, as the binary does.
#[cfg(test)]
#[global_allocator]
static ALLOC: Accounting = Accounting;

/// Byte buffers in the API ([`Input::Bytes`], [`CapturedOutput`]).
pub use bytes::Bytes;
pub use engine::{Engine, EngineConfig};
pub use error::{Error, Result};
pub use guest::{Guest, GuestKind};
pub use invoke::{DirMapping, HttpCall, HttpErrorCode, HttpResponse, Invocation};
pub use io::{Input, Output, OutputSink};
pub use limits::{
    ByteSize, CpuLimit, HumanDuration, InvalidLimits, Limits, MAX_INSTANCES, MAX_MEMORIES,
    MAX_OPEN_FILES, MAX_TABLES, MemoryCap,
};
pub use outbound::OutboundPolicy;
pub use outcome::{CapturedOutput, Outcome, OutcomeKind, Report, Trap, TrapReason, Usage};
pub use store::{
    HOST_ALLOWANCE, HOST_BASE, HTTP_HOST_ALLOWANCE, MAX_FIELDS_BYTES, MAX_RANDOM_BYTES,
    MAX_RESOURCES, TABLE_ELEMENT_BYTES, UNATTRIBUTED_ALLOWANCE,
};

/// The README's Rust examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
