//! The per-invocation cap on files opened through preopened directories
//! ([`crate::MAX_OPEN_FILES`]).
//!
//! wasmtime-wasi opens a host file for every `open-at` (WASI 0.2) and
//! `path_open` (preview 1) and keeps it open while any descriptor or
//! stream of the guest refers to it. Its only bound is the resource
//! table's size, so one request could hold a thousand of the server's
//! descriptors. wasm-run wraps the two open calls: before opening, it
//! counts what the invocation's table holds that can keep a file open
//! (descriptors and streams, which cost a scan of at most
//! [`crate::MAX_RESOURCES`] entries, only on an open) and refuses the open
//! at the cap. Every other filesystem call is wasmtime-wasi's own.
//!
//! The invocation's file I/O runs on the thread that polls it, not on
//! Tokio's blocking pool, so its CPU time and the memory of a directory
//! listing are charged to the invocation like the rest of its host calls.
//! wasmtime-wasi ties that choice (`allow_blocking_current_thread`) to the
//! WASI context, where it also turns a preview 1 sleep into a blocking
//! `thread::sleep`; so the context keeps it off, the preopens are made with
//! it on (`invoke.rs`), and the two open calls turn it on while they open,
//! which the file or directory they open keeps.

use std::sync::OnceLock;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::filesystem::Descriptor;

use wasmtime_wasi::filesystem::{WasiFilesystemCtx, WasiFilesystemView};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};

use crate::MAX_OPEN_FILES;
use crate::store::StoreState;

/// The WASI 0.2 filesystem interface as wasmtime-wasi 48 defines it in the
/// linker (guests importing any 0.2.x version link to it).
const P2_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Entries of `table` that may keep a host file open.
fn held(table: &mut ResourceTable) -> usize {
    table
        .iter_mut()
        .filter(|entry| {
            entry.is::<Descriptor>()
                || entry.is::<DynInputStream>()
                || entry.is::<DynOutputStream>()
        })
        .count()
}

/// A filesystem context whose opens give files and directories that do
/// their I/O on the calling thread.
fn on_this_thread() -> WasiFilesystemCtx {
    static CTX: OnceLock<WasiFilesystemCtx> = OnceLock::new();
    CTX.get_or_init(|| {
        let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
        builder.allow_blocking_current_thread(true);
        builder.build().filesystem().clone()
    })
    .clone()
}

/// Runs `open` with the invocation's filesystem context swapped for
/// [`on_this_thread`]'s, then puts the context back.
async fn opening<R>(state: &mut StoreState, open: impl AsyncFnOnce(&mut StoreState) -> R) -> R {
    let saved = std::mem::replace(state.wasi.ctx().ctx.filesystem(), on_this_thread());
    let result = open(state).await;
    *state.wasi.ctx().ctx.filesystem() = saved;
    result
}

/// Whether the invocation may open one more file.
fn may_open(state: &mut StoreState) -> bool {
    held(state.wasi.ctx().table) < MAX_OPEN_FILES
}

/// Replaces `[method]descriptor.open-at` in a component linker that already
/// has wasmtime-wasi's interfaces.
pub(crate) fn add_to_component_linker(
    linker: &mut wasmtime::component::Linker<StoreState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(P2_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store,
         (dir, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                if !may_open(state) {
                    return Ok((Err(ErrorCode::InsufficientMemory),));
                }
                let opened = opening(state, async |state| {
                    state
                        .filesystem()
                        .open_at(dir, path_flags, path, open_flags, flags)
                        .await
                })
                .await;
                match opened {
                    Ok(fd) => Ok((Ok(fd),)),
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// WASI 0.3's preopens interface as wasmtime-wasi 48 defines it.
const P3_PREOPENS: &str = "wasi:filesystem/preopens@0.3.0";

/// Links WASI 0.3's filesystem with no preopened directory: its types link
/// (real components import them, e.g. every componentize-py command), but
/// no descriptor is reachable through them, so no WASI 0.3 open can get
/// around the cap (its `open-at` is an async function and its file streams
/// keep files open outside the resource table, where the cap counts).
/// A WASI 0.3 guest reaches its preopened directories through WASI 0.2,
/// which is what Rust's std uses.
pub(crate) fn add_p3_filesystem_without_preopens(
    linker: &mut wasmtime::component::Linker<StoreState>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p3::filesystem::add_to_linker(linker)?;
    linker.allow_shadowing(true);
    linker
        .instance(P3_PREOPENS)?
        .func_wrap("get-directories", |_store, (): ()| {
            Ok((Vec::<(Resource<Descriptor>, String)>::new(),))
        })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `path_open`'s parameters in the core ABI: dirfd, lookup flags, path
/// pointer and length, open flags, base and inheriting rights, fd flags,
/// and where to write the new descriptor.
type PathOpenArgs = (i32, i32, i32, i32, i32, i64, i64, i32, i32);

/// Replaces `path_open` of `wasi_snapshot_preview1` and `wasi_unstable` in
/// a core linker that already has wasmtime-wasi's functions.
pub(crate) fn add_to_core_linker(
    linker: &mut wasmtime::Linker<StoreState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    add_capped_path_open(linker, "wasi_snapshot_preview1", preview1_path_open)?;
    add_capped_path_open(linker, "wasi_unstable", preview0_path_open)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The future of wasmtime-wasi's own `path_open`.
type OpenFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = wasmtime::Result<i32>> + Send + 'a>>;

/// wasmtime-wasi's own `path_open` of one preview 1 module.
type PathOpen = for<'a, 'm> fn(
    &'a mut WasiP1Ctx,
    &'a mut wiggle::GuestMemory<'m>,
    PathOpenArgs,
) -> OpenFuture<'a>;

/// Defines `module`'s `path_open` as the cap's check, then `open`.
fn add_capped_path_open(
    linker: &mut wasmtime::Linker<StoreState>,
    module: &'static str,
    open: PathOpen,
) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        module,
        "path_open",
        move |mut caller: wasmtime::Caller<'_, StoreState>, args: PathOpenArgs| {
            Box::new(async move {
                if !may_open(caller.data_mut()) {
                    return Ok(wasmtime_wasi::p1::types::Errno::Mfile as i32);
                }
                let memory = guest_memory(&mut caller)?;
                let (bytes, state) = memory.data_and_store_mut(&mut caller);
                let mut memory = wiggle::GuestMemory::Unshared(bytes);
                opening(state, async |state| {
                    open(&mut state.wasi, &mut memory, args).await
                })
                .await
            })
        },
    )?;
    Ok(())
}

/// `wasi_snapshot_preview1::path_open`.
fn preview1_path_open<'a>(
    wasi: &'a mut WasiP1Ctx,
    memory: &'a mut wiggle::GuestMemory<'_>,
    args: PathOpenArgs,
) -> OpenFuture<'a> {
    let (dir, lookup, path, path_len, oflags, base, inheriting, fdflags, fd_out) = args;
    Box::pin(wasmtime_wasi::p1::wasi_snapshot_preview1::path_open(
        wasi, memory, dir, lookup, path, path_len, oflags, base, inheriting, fdflags, fd_out,
    ))
}

/// `wasi_unstable::path_open` (preview 0): the same ABI.
fn preview0_path_open<'a>(
    wasi: &'a mut WasiP1Ctx,
    memory: &'a mut wiggle::GuestMemory<'_>,
    args: PathOpenArgs,
) -> OpenFuture<'a> {
    let (dir, lookup, path, path_len, oflags, base, inheriting, fdflags, fd_out) = args;
    Box::pin(wasmtime_wasi::p0::wasi_unstable::path_open(
        wasi, memory, dir, lookup, path, path_len, oflags, base, inheriting, fdflags, fd_out,
    ))
}

/// The guest's exported `memory`, which preview 1 calls read and write.
fn guest_memory(
    caller: &mut wasmtime::Caller<'_, StoreState>,
) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(wasmtime::Extern::Memory(memory)) => Ok(memory),
        _ => Err(wasmtime::Error::msg("missing required memory export")),
    }
}
