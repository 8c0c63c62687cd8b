//! The wasm proposals an engine enables: what wasm-run's guests need, and
//! those it leaves off unless asked for ([`Proposal`]).

/// A WebAssembly proposal that wasmtime supports but wasm-run leaves off
/// unless asked for: none of the guests people build for wasm-run today
/// (Rust for wasm32-wasip1/-wasip2 and WASI 0.3, componentize-py,
/// componentize-js) uses it, and each is engine code — a compiler, a
/// runtime, a garbage collector — that a hostile guest could reach. (Its
/// advisories are the engine's: a guest aborting the host through a stale
/// GC heap pointer needs `gc`.)
///
/// Always on: the WebAssembly 2.0 set (multi-value, bulk memory, reference
/// types, SIMD, sign extension, non-trapping float-to-int), relaxed SIMD,
/// tail calls, extended constant expressions, multiple memories, and the
/// component model (with its async features for WASI 0.3 components).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Proposal {
    /// Garbage-collected structs and arrays (`gc`), with the typed function
    /// references they build on: for languages compiled to Wasm GC (Kotlin,
    /// Dart, OCaml, Java through J2Wasm).
    Gc,
    /// Exception handling (`try_table`, `throw`, `exnref`): for C++ built
    /// with wasm exceptions, or `setjmp`/`longjmp` lowered to them. Needs
    /// wasmtime's GC types, so it brings the typed function references too.
    Exceptions,
    /// Threads: shared memories and atomics. wasm-run gives a guest no
    /// way to start a thread, and wasmtime's pooling allocator cannot hold
    /// a shared memory, so only atomics on ordinary memories become usable.
    Threads,
    /// 64-bit memories (`memory64`).
    Memory64,
}

impl Proposal {
    /// Every proposal, in the order of their names.
    pub const ALL: [Proposal; 4] = [
        Proposal::Exceptions,
        Proposal::Gc,
        Proposal::Memory64,
        Proposal::Threads,
    ];

    /// The name used on the command line and in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Proposal::Gc => "gc",
            Proposal::Exceptions => "exceptions",
            Proposal::Threads => "threads",
            Proposal::Memory64 => "memory64",
        }
    }
}

impl std::str::FromStr for Proposal {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Proposal::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Proposal::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "`{s}` is not a wasm proposal wasm-run can turn on (one of: {})",
                    names.join(", ")
                )
            })
    }
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Turns the wasm proposals on or off: the always-on set as wasmtime has
/// it, the rest of wasmtime's defaults off unless `proposals` names them.
pub(crate) fn set_proposals(wt: &mut wasmtime::Config, proposals: &[Proposal]) {
    let on = |p| proposals.contains(&p);
    let gc = on(Proposal::Gc);
    let exceptions = on(Proposal::Exceptions);
    wt.wasm_gc(gc);
    wt.wasm_exceptions(exceptions);
    // Typed function references come with either (wasmtime's GC types
    // carry both); alone they serve no guest of ours.
    wt.wasm_function_references(gc || exceptions);
    wt.wasm_threads(on(Proposal::Threads));
    wt.wasm_memory64(on(Proposal::Memory64));
    // Never on by default in wasmtime 48, and kept off here explicitly.
    wt.wasm_stack_switching(false);
    wt.wasm_wide_arithmetic(false);
    wt.wasm_custom_page_sizes(false);
    wt.wasm_shared_everything_threads(false);
}

impl TryFrom<String> for Proposal {
    type Error = String;

    fn try_from(name: String) -> std::result::Result<Self, Self::Error> {
        name.parse()
    }
}
