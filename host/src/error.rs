//! Host errors: things that went wrong in wasm-run itself or with the module
//! it was given, as opposed to a guest hitting a limit (an [`crate::Outcome`]).

use std::path::PathBuf;

/// `Result` with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A host error: the guest could not be loaded, linked or started, or the
/// engine could not be built. Every variant names the guest it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The module file could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why reading failed (already part of the message, so not also
        /// the error's `source()`: a chain printer shows it once).
        cause: std::io::Error,
    },
    /// The bytes are neither a wasm binary nor WebAssembly text.
    #[error(
        "{name}: not a WebAssembly module or component (no `\\0asm` header and not valid WAT text)"
    )]
    NotWasm {
        /// The guest's name (usually its path).
        name: String,
    },
    /// The bytes look like wasm but failed to validate or compile.
    #[error("{name}: invalid WebAssembly: {message}")]
    Invalid {
        /// The guest's name (usually its path).
        name: String,
        /// What the validator or compiler said.
        message: String,
    },
    /// Native code (an artifact of `wasm-run compile`, or one that looks
    /// like it) given where only wasm is accepted. An artifact runs as the
    /// host's own code, so it is loaded only when trusted explicitly:
    /// `--allow-precompiled` for the `wasm-run` command (a config route:
    /// `allow-precompiled = true`), [`crate::Guest::from_bytes_allow_precompiled`]
    /// in the library.
    #[error(
        "{name}: a precompiled artifact (native code that would run inside wasm-run, not \
         sandboxed wasm) is refused unless trusted explicitly with --allow-precompiled (a \
         config route: `allow-precompiled = true`)"
    )]
    Precompiled {
        /// The guest's name (usually its path).
        name: String,
    },
    /// A precompiled artifact (from `wasm-run compile`) that this engine
    /// cannot load: made by another wasm-run or wasmtime version, for
    /// another CPU, or with another engine configuration.
    #[error(
        "{name}: a precompiled artifact this wasm-run cannot load (built by another wasm-run \
         or wasmtime version, or with another engine configuration; run `wasm-run compile` \
         again): {message}"
    )]
    Incompatible {
        /// The guest's name (usually its path).
        name: String,
        /// What wasmtime said.
        message: String,
    },
    /// The guest does not have the entry point this host calls.
    #[error("{name}: {message}")]
    WrongShape {
        /// The guest's name (usually its path).
        name: String,
        /// What is missing, e.g. "core module has no `_start` export".
        message: String,
    },
    /// The guest imports something the host does not provide.
    #[error("{name}: unsatisfied import `{import}`: {message}")]
    UnsatisfiedImport {
        /// The guest's name (usually its path).
        name: String,
        /// The import, as `module::name` or a component interface name.
        import: String,
        /// What the linker said.
        message: String,
    },
    /// Linking or instantiating failed for another reason.
    #[error("{name}: cannot instantiate: {message}")]
    Instantiate {
        /// The guest's name (usually its path).
        name: String,
        /// What wasmtime said.
        message: String,
    },
    /// The engine had no free instance slot (every pooled instance, memory
    /// or stack is in use); the invocation may succeed later.
    #[error("{name}: the host is at capacity: {message}")]
    Capacity {
        /// The guest's name (usually its path).
        name: String,
        /// What ran out.
        message: String,
    },
    /// A host resource needed for the invocation could not be set up, e.g. a
    /// preopened directory that does not exist.
    #[error("{name}: {message}")]
    Setup {
        /// The guest's name (usually its path).
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The HTTP request handed to [`crate::Guest::handle_http`] cannot be
    /// given to a guest (e.g. a `Host` header that is not text): the
    /// caller's request is at fault, not the host.
    #[error("{name}: bad request: {message}")]
    BadRequest {
        /// The guest's name (usually its path).
        name: String,
        /// What is wrong with the request.
        message: String,
    },
    /// The invocation's [`crate::Limits`] cannot be honoured (see
    /// [`crate::Limits::validate`]).
    #[error("{name}: invalid limits: {reason}")]
    InvalidLimits {
        /// The guest's name (usually its path).
        name: String,
        /// Which limit, and why.
        reason: crate::limits::InvalidLimits,
    },
    /// The engine could not be built.
    #[error("cannot build the wasm engine: {message}")]
    Engine {
        /// What went wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<super::Error>();
    }
}
