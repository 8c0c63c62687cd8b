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
//! # Guest kinds
//!
//! [`Guest::from_bytes`] detects the kind ([`GuestKind`]) from the bytes:
//! a wasm32-wasip1 core module exporting `_start`; a WASI 0.2 component
//! exporting `wasi:cli/run@0.2.x` or `wasi:http/incoming-handler@0.2.x`; a
//! WASI 0.3 (async) component exporting `wasi:cli/run@0.3.x` or
//! `wasi:http/handler@0.3.x`. Commands run with [`Guest::run`], HTTP
//! handlers of both generations with [`Guest::handle_http`]; each
//! invocation, whatever the kind, gets a fresh store with its own limits
//! (WASI 0.3 instances are never shared by requests, unlike `wasmtime
//! serve`'s default reuse). WASI 0.3 components compile and run on a second
//! wasmtime engine with the component model's concurrency support, which
//! the [`Engine`] builds the first time one loads, so that the others do
//! not pay for it (it makes every instantiation dearer); inside their store
//! the limits cover the export and every subtask it spawns, since the whole
//! store is one future that the deadline, the CPU meter and the scheduler
//! wrap.
//!
//! # Layout
//!
//! - [`accounting`]: the accounting allocator ([`Accounting`]) that charges
//!   host memory to the invocation that causes it; install it as your
//!   `#[global_allocator]` for the memory cap to cover host memory.
//! - [`footprint`]: what one instantiation creates, read from the guest's
//!   bytes (instance state, instances, memories, tables).
//! - [`admission`]: admission by memory budget, as `wasm-run serve` admits
//!   requests, for embedders that want bursts to queue instead of failing;
//!   what a request takes of the instance pool and of descriptors is
//!   counted by the private `slots`, and its tenants (their shares, lines
//!   and whose turn it is) are the private `tenant`.
//! - [`budget`]: the `wasm-run:sandbox/budget` interface (`wit/budget.wit`)
//!   through which a guest reads its own fuel, memory and time left.
//! - [`dns`]: the host names of outgoing requests, resolved by futures the
//!   request owns (no thread outlives a lookup).
//! - [`engine`]: the process-wide [`Engine`] (pooling allocator, fuel, epochs);
//!   its second, concurrent engine for WASI 0.3. Beside it, private:
//!   `ticker` (the epoch ticker threads, which park while no invocation
//!   runs), `proposals` (the wasm proposals enabled, [`Proposal`]) and
//!   `cache` (wasmtime's compile cache, used only in a private directory).
//! - [`guest`]: loading a [`Guest`]: read, detect core module or component,
//!   compile once, pre-link once.
//! - [`invoke`]: one invocation: fresh store, call, classify, under the
//!   deadline the engine's ticker rings ([`Guest::run`] for commands,
//!   [`Guest::handle_http`] for wasi:http components). These calls of
//!   [`Guest`] live here, not in [`guest`], which loads guests and knows
//!   nothing of invocations. What a call is given ([`Invocation`],
//!   [`DirMapping`]) and the WASI context built from it are the private
//!   `invocation`.
//! - `http_call` (private): a wasi:http invocation's two ends ([`HttpCall`]),
//!   and the WASI 0.3 call whose response body keeps the request's
//!   deadline.
//! - `artifact` (private): the file format of `wasm-run compile`, wasmtime's
//!   native code behind a header carrying the wasm's footprint; loaded only
//!   through the `unsafe` constructors ([`Guest::from_bytes_allow_precompiled`]).
//! - [`log_text`]: guest- and client-chosen text made safe for one log
//!   field or message (escaped, cut to a bounded length).
//! - [`http_client`]: the guests' outgoing HTTP — wasmtime-wasi-http's
//!   hooks, the connection to the address [`outbound`] vetted, and its
//!   bounds.
//! - `swap` (private): whether this process's memory can be swapped out,
//!   and so how pool slots are reset ([`MemoryReset`]).
//! - `binary` (private): guest bytes as binary wasm (WAT converted) and
//!   whether they are a component; used by loading and by precompiling.
//! - `store` (private): the store's host state, the memory limiter, and the
//!   single function that installs [`Limits`] on a store.
//! - `open_files` (private): the per-invocation cap on files opened
//!   through preopens ([`MAX_OPEN_FILES`]); their I/O runs on the
//!   invocation's own thread, so it is charged to it.
//! - [`outbound`]: the allow-list for a wasi:http guest's outgoing requests
//!   ([`OutboundPolicy`]): the URL check, resolution (through [`dns`]) and
//!   the check of the address that may be dialled.
//! - [`scheduler`]: where an invocation runs — in place for its first 1 ms
//!   of CPU, then on low-priority (nice 10) threads.
//! - [`limits`]: [`Limits`] and the human sizes and durations (`64MiB`, `250ms`).
//! - [`outcome`]: [`Outcome`], [`Usage`], the JSON [`Report`] and the one
//!   classifier that maps what happened to an outcome.
//! - [`io`]: where stdin comes from and stdout/stderr go.
//! - [`error`]: host [`Error`]s (bad module, failed set-up), as opposed to
//!   outcomes.
//! - `serve` (feature `serve`): the HTTP function host behind
//!   `wasm-run serve`, in rooms by lifetime — the server and its fixed
//!   settings, the routes a reload replaces, one request's life, the guest
//!   paths (wasi:http, CGI), responses, admin and metrics; its module doc
//!   names them and draws a request's flow.
//!
//! A call flows `Guest::run` → `scheduler` (CPU metered; moved to the
//! low-priority pool once long-running) → `store::new_store` (limits
//! installed) → instantiate from the pre-linked guest → call `_start` /
//! `wasi:cli/run` → `outcome::classify` → [`Outcome`]. A wasi:http
//! component takes the same path through [`Guest::handle_http`], calling
//! `wasi:http/incoming-handler.handle` instead; a WASI 0.3 one calls its
//! async export inside the store's `run_concurrent` event loop, which ends
//! when the store's last task does.

#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod accounting;
pub mod admission;
mod artifact;
mod binary;
pub mod budget;
mod cache;
pub mod dns;
pub mod engine;
pub mod error;
pub mod footprint;
pub mod guest;
mod http_call;
pub mod http_client;
mod invocation;
pub mod invoke;
pub mod io;
pub mod limits;
pub mod log_text;
mod open_files;
pub mod outbound;
pub mod outcome;
mod proposals;
pub mod scheduler;
#[cfg(feature = "serve")]
pub mod serve;
mod slots;
mod store;
mod swap;
mod tenant;
mod ticker;
pub mod trace;

pub use accounting::{Account, Accounting};

/// Host unit tests run with the accounting allocator, as the binary does.
#[cfg(test)]
#[global_allocator]
static ALLOC: Accounting = Accounting;

/// Byte buffers in the API ([`Input::Bytes`], [`CapturedOutput`]).
pub use bytes::Bytes;
pub use engine::{Engine, EngineConfig, MemoryReset, Proposal};
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
pub use scheduler::Priority;
pub use store::{
    HOST_ALLOWANCE, HOST_BASE, HTTP_HOST_ALLOWANCE, MAX_FIELDS_BYTES, MAX_RANDOM_BYTES,
    MAX_RESOURCES, TABLE_ELEMENT_BYTES, UNATTRIBUTED_ALLOWANCE,
};

/// The README's Rust examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
