//! Loading a guest: read the bytes, detect the kind (core module or
//! component), compile once, link once (`InstancePre` / `CommandPre`).
//!
//! A [`Guest`] is a cheap `Clone` handle; every call made through it creates
//! its own store. Its calls ([`Guest::run`], [`Guest::handle_http`]) are
//! defined in [`crate::invoke`], which builds on this module: loading needs
//! nothing of invoking, so the two stay one-way.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{InstancePre, Linker, Module};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::binary::{is_component, to_binary};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::footprint::Footprint;
use crate::outbound::OutboundPolicy;
use crate::store::StoreState;

/// What kind of guest a module is, detected from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuestKind {
    /// A wasm32-wasip1 core module with a `_start` export.
    CoreCommand,
    /// A component exporting `wasi:cli/run` (a `wasi:cli/command`).
    ComponentCommand,
    /// A component exporting `wasi:http/incoming-handler` (a `wasi:http/proxy`),
    /// called once per HTTP request by `wasm-run serve`.
    HttpComponent,
    /// A WASI 0.3 component exporting `wasi:cli/run@0.3.x` (an async
    /// `wasi:cli/command`).
    ComponentCommandP3,
    /// A WASI 0.3 component exporting `wasi:http/handler@0.3.x` (the
    /// `wasi:http/service` world), called once per HTTP request, each in a
    /// fresh store like every other guest.
    HttpComponentP3,
}

impl GuestKind {
    /// Whether this guest runs as a command (`_start` / `wasi:cli/run`),
    /// which `wasm-run run` and the CGI path of `wasm-run serve` need.
    pub fn is_command(self) -> bool {
        matches!(
            self,
            GuestKind::CoreCommand | GuestKind::ComponentCommand | GuestKind::ComponentCommandP3
        )
    }

    /// Whether this guest handles HTTP requests ([`crate::Guest::handle_http`]),
    /// of either WASI generation.
    pub fn is_http(self) -> bool {
        matches!(self, GuestKind::HttpComponent | GuestKind::HttpComponentP3)
    }

    /// Whether this guest is a WASI 0.3 (async) component, which runs on
    /// the engine with the component model's concurrency support.
    pub fn is_p3(self) -> bool {
        matches!(
            self,
            GuestKind::ComponentCommandP3 | GuestKind::HttpComponentP3
        )
    }
}

/// A compiled and pre-linked guest, ready to be invoked many times.
#[derive(Clone)]
pub struct Guest {
    inner: Arc<GuestInner>,
}

struct GuestInner {
    name: String,
    engine: Engine,
    pre: Pre,
    /// Whether the guest imports wasi:http (serves it, or may send requests).
    uses_http: bool,
    /// What one instantiation makes the host hold, read from the wasm (for
    /// an artifact, when `wasm-run compile` read it).
    footprint: Footprint,
}

pub(crate) enum Pre {
    Core(InstancePre<StoreState>),
    Command(CommandPre<StoreState>),
    Http(ProxyPre<StoreState>),
    CommandP3(wasmtime_wasi::p3::bindings::CommandPre<StoreState>),
    HttpP3(wasmtime_wasi_http::p3::bindings::ServicePre<StoreState>),
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("name", &self.inner.name)
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl Guest {
    /// Reads, compiles and links the module or component at `path` (binary
    /// wasm or WAT text). A precompiled artifact is refused with
    /// [`Error::Precompiled`]: see [`Guest::from_file_allow_precompiled`].
    pub fn from_file(engine: &Engine, path: impl AsRef<Path>) -> Result<Guest> {
        let (name, bytes) = read(path.as_ref())?;
        load(engine, name, &bytes, Trust::WasmOnly)
    }

    /// Compiles and links a module or component from bytes (binary wasm or
    /// WAT text). `name` identifies the guest in errors and logs.
    ///
    /// Never loads native code: an artifact of [`Engine::precompile`]
    /// (`wasm-run compile`), or any other bytes that look like one, is
    /// refused with [`Error::Precompiled`]. Whoever made an artifact chose
    /// the machine code the host would execute; loading one takes
    /// [`Guest::from_bytes_allow_precompiled`].
    pub fn from_bytes(engine: &Engine, name: impl Into<String>, bytes: &[u8]) -> Result<Guest> {
        load(engine, name.into(), bytes, Trust::WasmOnly)
    }

    /// As [`Guest::from_bytes`], and also loads an artifact of
    /// [`Engine::precompile`] (`wasm-run compile`) without compiling.
    ///
    /// An artifact made by another wasm-run or wasmtime version, or with
    /// another engine configuration, is refused with
    /// [`Error::Incompatible`]; so is a bare wasmtime artifact, which lacks
    /// the footprint `wasm-run compile` records from the wasm (what each
    /// instantiation makes the host hold, see [`Guest::footprint`]).
    ///
    /// # Safety
    ///
    /// An artifact is native code that the host process executes as it
    /// stands; nothing can validate it. The caller vouches that `bytes`, if
    /// they are an artifact, were made by [`Engine::precompile`] of this
    /// wasm-run and have not been modified since by anyone the caller does
    /// not trust with the process itself — as if they were a binary the
    /// caller is about to run. (Wasm and WAT text are validated as by
    /// [`Guest::from_bytes`] and need no such promise.)
    #[expect(
        unsafe_code,
        reason = "the caller vouches for the native code it may load"
    )]
    pub unsafe fn from_bytes_allow_precompiled(
        engine: &Engine,
        name: impl Into<String>,
        bytes: &[u8],
    ) -> Result<Guest> {
        load(engine, name.into(), bytes, Trust::AllowPrecompiled)
    }

    /// As [`Guest::from_file`], and also loads an artifact of `wasm-run
    /// compile`; see [`Guest::from_bytes_allow_precompiled`].
    ///
    /// # Safety
    ///
    /// As for [`Guest::from_bytes_allow_precompiled`]: the caller vouches
    /// that the file, if it is an artifact, is one this wasm-run made and
    /// that nobody it does not trust with the process could have changed.
    #[expect(
        unsafe_code,
        reason = "the caller vouches for the native code it may load"
    )]
    pub unsafe fn from_file_allow_precompiled(
        engine: &Engine,
        path: impl AsRef<Path>,
    ) -> Result<Guest> {
        let (name, bytes) = read(path.as_ref())?;
        load(engine, name, &bytes, Trust::AllowPrecompiled)
    }

    /// The guest's name (its path when loaded from a file).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Host memory one invocation of this guest may make the host hold
    /// *outside* its memory cap. A server that admits invocations by memory
    /// budget should count this beside each invocation's memory cap, as
    /// `wasm-run serve` does.
    ///
    /// With the accounting allocator installed ([`crate::Accounting`]),
    /// every byte the host allocates for the invocation is charged to its
    /// cap, and this is only [`crate::UNATTRIBUTED_ALLOWANCE`]. Without it,
    /// it is the fixed per-resource allowance: [`crate::HOST_ALLOWANCE`],
    /// plus [`crate::HTTP_HOST_ALLOWANCE`] when the guest imports wasi:http.
    /// Either way it includes the stack the invocation runs on
    /// ([`Engine::stack_bytes`], 2 MiB by default), whose pages a guest
    /// that recurses deeply touches and no allocator sees.
    pub fn host_allowance(&self) -> u64 {
        let held = if crate::accounting::is_installed() {
            crate::UNATTRIBUTED_ALLOWANCE
        } else if self.inner.uses_http {
            crate::HOST_ALLOWANCE + crate::HTTP_HOST_ALLOWANCE
        } else {
            crate::HOST_ALLOWANCE
        };
        held.saturating_add(self.inner.engine.stack_bytes())
    }

    /// What one instantiation of this guest creates, as known from its
    /// wasm: estimated instance state, core instances, memories and tables.
    /// An artifact carries the footprint `wasm-run compile` read from its
    /// wasm, so it is the same as the wasm's.
    pub fn footprint(&self) -> Footprint {
        self.inner.footprint
    }

    /// The engine the guest was compiled for (what invocations run on).
    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The wasmtime engine the guest was compiled on: the engine's first
    /// one, or its concurrent one for a WASI 0.3 component.
    pub(crate) fn wasmtime_engine(&self) -> &wasmtime::Engine {
        match &self.inner.pre {
            Pre::Core(pre) => pre.module().engine(),
            Pre::Command(pre) => pre.engine(),
            Pre::Http(pre) => pre.engine(),
            Pre::CommandP3(pre) => pre.engine(),
            Pre::HttpP3(pre) => pre.engine(),
        }
    }

    /// The pre-linked guest, ready to instantiate in a fresh store.
    pub(crate) fn pre(&self) -> &Pre {
        &self.inner.pre
    }

    /// What kind of guest this is.
    pub fn kind(&self) -> GuestKind {
        match self.inner.pre {
            Pre::Core(_) => GuestKind::CoreCommand,
            Pre::Command(_) => GuestKind::ComponentCommand,
            Pre::Http(_) => GuestKind::HttpComponent,
            Pre::CommandP3(_) => GuestKind::ComponentCommandP3,
            Pre::HttpP3(_) => GuestKind::HttpComponentP3,
        }
    }
}

/// Whether loading may deserialize native code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// Wasm and WAT text only: what the safe constructors load.
    WasmOnly,
    /// Also artifacts of `wasm-run compile`: only the `unsafe` constructors
    /// pass this, their caller having vouched for the code.
    AllowPrecompiled,
}

/// Reads a guest's file; its name is its path.
fn read(path: &Path) -> Result<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|cause| Error::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    Ok((path.display().to_string(), bytes))
}

/// Loads wasm or WAT text (compiling it), or, when `trust` allows, an
/// artifact (deserializing it).
fn load(engine: &Engine, name: String, bytes: &[u8], trust: Trust) -> Result<Guest> {
    let (pre, uses_http, footprint) = if crate::artifact::is_native_code(bytes) {
        if trust != Trust::AllowPrecompiled {
            return Err(Error::Precompiled { name });
        }
        let artifact = crate::artifact::decode(&name, &crate::engine::artifact_version(), bytes)?;
        let (pre, uses_http) = match wasmtime::Engine::detect_precompiled(artifact.code) {
            Some(wasmtime::Precompiled::Component) => {
                link_component(&name, deserialize_component(engine, &name, artifact.code)?)?
            }
            _ => (
                link_core(&name, deserialize_module(engine, &name, artifact.code)?)?,
                false,
            ),
        };
        (pre, uses_http, artifact.footprint)
    } else {
        let binary = to_binary(&name, bytes)?;
        let footprint = crate::footprint::of(&binary);
        let invalid = |e: wasmtime::Error| Error::Invalid {
            name: name.clone(),
            message: format!("{e:#}"),
        };
        let (pre, uses_http) = if is_component(&binary) {
            let component = engine.compile_component(&binary).map_err(invalid)?;
            link_component(&name, component)?
        } else {
            let module = Module::new(engine.wasmtime(), &binary).map_err(invalid)?;
            (link_core(&name, module)?, false)
        };
        (pre, uses_http, footprint)
    };
    Ok(Guest {
        inner: Arc::new(GuestInner {
            name,
            engine: engine.clone(),
            pre,
            uses_http,
            footprint,
        }),
    })
}

/// Loads a core-module artifact of `wasm-run compile`.
#[expect(
    unsafe_code,
    reason = "wasmtime cannot verify native code: only reached from the `unsafe` constructors, \
              whose caller vouched for it; wasmtime still checks version and configuration"
)]
fn deserialize_module(engine: &Engine, name: &str, bytes: &[u8]) -> Result<Module> {
    // SAFETY: reached only with `Trust::AllowPrecompiled`, which only the
    // `unsafe` constructors pass: their caller vouched for the code (see
    // `Guest::from_bytes_allow_precompiled`). wasmtime refuses one from
    // another version or configuration.
    unsafe { Module::deserialize(engine.wasmtime(), bytes) }.map_err(|e| Error::Incompatible {
        name: name.to_string(),
        message: format!("{e:#}"),
    })
}

/// Loads a component artifact of `wasm-run compile`.
#[expect(
    unsafe_code,
    reason = "wasmtime cannot verify native code: only reached from the `unsafe` constructors, \
              whose caller vouched for it; wasmtime still checks version and configuration"
)]
fn deserialize_component(engine: &Engine, name: &str, bytes: &[u8]) -> Result<Component> {
    // SAFETY: as for `deserialize_module`.
    let first = unsafe { Component::deserialize(engine.wasmtime(), bytes) };
    // A WASI 0.3 component's artifact is made by the concurrent engine,
    // whose configuration the first one refuses; if that fails too, the
    // first engine's reason is the one to report.
    let component = first.or_else(|e| {
        let Ok(concurrent) = engine.concurrent() else {
            return Err(e);
        };
        // SAFETY: as above.
        unsafe { Component::deserialize(concurrent, bytes) }.map_err(|_| e)
    });
    component.map_err(|e| Error::Incompatible {
        name: name.to_string(),
        message: format!("{e:#}"),
    })
}

fn link_core(name: &str, module: Module) -> Result<Pre> {
    let wt = module.engine().clone();
    match module.get_export("_start") {
        Some(wasmtime::ExternType::Func(ty))
            if ty.params().len() == 0 && ty.results().len() == 0 => {}
        Some(_) => {
            return Err(Error::WrongShape {
                name: name.to_string(),
                message: "the `_start` export is not a function taking and returning nothing"
                    .into(),
            });
        }
        None => {
            return Err(Error::WrongShape {
                name: name.to_string(),
                message: "core module has no `_start` export; wasm-run runs WASI command \
                          modules (built as a binary for wasm32-wasip1), not libraries or reactors"
                    .into(),
            });
        }
    }
    let mut linker: Linker<StoreState> = Linker::new(&wt);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut StoreState| &mut s.wasi)
        .map_err(|e| link_error(name, e))?;
    // Old modules import the pre-preview-1 names (`wasi_unstable`).
    wasmtime_wasi::p0::add_to_linker_async(&mut linker, |s: &mut StoreState| &mut s.wasi)
        .map_err(|e| link_error(name, e))?;
    crate::open_files::add_to_core_linker(&mut linker).map_err(|e| link_error(name, e))?;
    if module
        .imports()
        .any(|i| i.module() == crate::budget::CORE_MODULE)
    {
        crate::budget::add_to_core_linker(&mut linker).map_err(|e| link_error(name, e))?;
    }
    // Name the first import the linker cannot satisfy, rather than leaving
    // the user to decode a link error.
    let mut probe = wasmtime::Store::new(
        &wt,
        StoreState::new(
            wasmtime_wasi::WasiCtxBuilder::new().build_p1(),
            OutboundPolicy::default(),
            0,
            crate::Account::new(u64::MAX),
            false,
        ),
    );
    for import in module.imports() {
        if linker
            .get(&mut probe, import.module(), import.name())
            .is_err()
        {
            return Err(Error::UnsatisfiedImport {
                name: name.to_string(),
                import: format!("{}::{}", import.module(), import.name()),
                message: "wasm-run provides WASI preview 1 (`wasi_snapshot_preview1`, and the \
                          older `wasi_unstable`) and its own `wasm_run_budget` functions to \
                          core modules"
                    .into(),
            });
        }
    }
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| link_error(name, e))?;
    Ok(Pre::Core(pre))
}

/// What a component is, by what it exports.
fn component_kind(name: &str, exports: &[String]) -> Result<GuestKind> {
    let exports_any = |prefix: &str| exports.iter().any(|e| e.starts_with(prefix));
    Ok(if exports_any("wasi:http/incoming-handler@0.2") {
        GuestKind::HttpComponent
    } else if exports_any("wasi:http/handler@0.3") {
        GuestKind::HttpComponentP3
    } else if exports_any("wasi:cli/run@0.2") {
        GuestKind::ComponentCommand
    } else if exports_any("wasi:cli/run@0.3") {
        GuestKind::ComponentCommandP3
    } else {
        let shown = if exports.is_empty() {
            "none".to_string()
        } else {
            exports.join(", ")
        };
        return Err(Error::WrongShape {
            name: name.to_string(),
            message: format!(
                "component exports none of `wasi:cli/run@0.2.x` or `@0.3.x` (a command), \
                 `wasi:http/incoming-handler@0.2.x` or `wasi:http/handler@0.3.x` (an HTTP \
                 handler); its exports: {shown}"
            ),
        });
    })
}

/// Links a component; also says whether it imports wasi:http.
fn link_component(name: &str, component: Component) -> Result<(Pre, bool)> {
    let wt = component.engine().clone();
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(&wt).map(|(n, _)| n.to_string()).collect();
    let kind = component_kind(name, &exports)?;
    let uses_http = kind.is_http() || ty.imports(&wt).any(|(n, _)| n.starts_with("wasi:http/"));
    let mut linker: ComponentLinker<StoreState> = ComponentLinker::new(&wt);
    // The whole wasi:cli world for every component: real components
    // (componentize-py, componentize-js, Rust's `wasi` crate) import wasi:cli
    // interfaces even when they only serve HTTP. wasi:http only for those
    // that import it: HTTP handlers, and commands that send requests (denied
    // unless the route allows the destination).
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| link_error(name, e))?;
    crate::open_files::add_to_component_linker(&mut linker).map_err(|e| link_error(name, e))?;
    if uses_http {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| link_error(name, e))?;
    }
    if kind.is_p3() {
        link_p3(&mut linker, uses_http).map_err(|e| link_error(name, e))?;
    }
    for (import, _) in ty.imports(&wt) {
        if crate::budget::is_interface(import) {
            crate::budget::add_to_component_linker(&mut linker, import)
                .map_err(|e| link_error(name, e))?;
        }
    }
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| unsatisfied_component_import(&wt, name, &ty, &e))?;
    let wrong = |what: &str, e: wasmtime::Error| Error::WrongShape {
        name: name.to_string(),
        message: format!("not a {what}: {e:#}"),
    };
    let pre = match kind {
        GuestKind::HttpComponent => {
            Pre::Http(ProxyPre::new(pre).map_err(|e| wrong("wasi:http handler", e))?)
        }
        GuestKind::HttpComponentP3 => Pre::HttpP3(
            wasmtime_wasi_http::p3::bindings::ServicePre::new(pre)
                .map_err(|e| wrong("wasi:http 0.3 service", e))?,
        ),
        GuestKind::ComponentCommandP3 => Pre::CommandP3(
            wasmtime_wasi::p3::bindings::CommandPre::new(pre)
                .map_err(|e| wrong("wasi:cli 0.3 command", e))?,
        ),
        _ => Pre::Command(CommandPre::new(pre).map_err(|e| wrong("wasi:cli command", e))?),
    };
    Ok((pre, uses_http))
}

/// The WASI 0.3 interfaces a WASI 0.3 component gets beside the 0.2 ones
/// (guests built today import both: Rust's std still speaks 0.2): cli,
/// clocks, random and sockets (denied unless configured, as in 0.2),
/// wasi:http's types and client when it uses HTTP, and the filesystem with
/// no preopened directory (see `open_files`: its opens would escape the
/// per-invocation cap on open files, [`crate::MAX_OPEN_FILES`]; files stay
/// reachable through the 0.2 interfaces).
fn link_p3(linker: &mut ComponentLinker<StoreState>, uses_http: bool) -> wasmtime::Result<()> {
    wasmtime_wasi::p3::cli::add_to_linker(linker)?;
    wasmtime_wasi::p3::clocks::add_to_linker(linker)?;
    wasmtime_wasi::p3::random::add_to_linker(linker)?;
    wasmtime_wasi::p3::sockets::add_to_linker(linker)?;
    crate::open_files::add_p3_filesystem_without_preopens(linker)?;
    if uses_http {
        wasmtime_wasi_http::p3::add_to_linker(linker)?;
    }
    Ok(())
}

/// The error for a component the linker cannot instantiate: names the
/// first import that wasm-run does not provide.
fn unsatisfied_component_import(
    engine: &wasmtime::Engine,
    name: &str,
    ty: &wasmtime::component::types::Component,
    error: &wasmtime::Error,
) -> Error {
    let import = ty
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .find(|n| {
            // WASI 0.3 has no wasi:io.
            let p3 = n.contains("@0.3");
            let provided = WASI_P2_PACKAGES
                .iter()
                .any(|p| n.starts_with(p) && !(p3 && *p == "wasi:io/"))
                || n.starts_with("wasi:http/")
                || crate::budget::is_interface(n);
            !provided
        })
        .unwrap_or_else(|| "(see message)".into());
    Error::UnsatisfiedImport {
        name: name.to_string(),
        import,
        message: format!("{error:#}"),
    }
}

/// Interface packages the component linker provides (any 0.2.x version;
/// for WASI 0.3 components, any 0.3.x version but wasi:io, which 0.3 lacks).
const WASI_P2_PACKAGES: &[&str] = &[
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
];

fn link_error(name: &str, e: wasmtime::Error) -> Error {
    Error::Instantiate {
        name: name.to_string(),
        message: format!("{e:#}"),
    }
}
