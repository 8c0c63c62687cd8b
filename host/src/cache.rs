//! wasmtime's compile cache, and the check that makes it trusted storage:
//! its entries load as native code, so only a directory that no other user
//! can write to or replace is used.

/// Turns on wasmtime's compile cache in `cache_dir` (the engine's
/// [`crate::EngineConfig::cache_dir`]), if any (and if
/// wasm-run was built with its `cache` feature).
///
/// The cache is trusted storage: wasmtime loads what it finds there as
/// native code. So a directory that anyone but this user (or root) could
/// write to, or replace, is not used (see [`check_private_dir`]): compiling
/// without the cache only costs time.
#[cfg_attr(not(feature = "cache"), allow(unused_variables))]
pub(crate) fn set_up_cache(wt: &mut wasmtime::Config, cache_dir: Option<&std::path::Path>) {
    #[cfg(not(feature = "cache"))]
    if let Some(dir) = cache_dir {
        tracing::warn!(
            dir = %dir.display(),
            "wasm-run was built without its `cache` feature; compiling without a cache"
        );
    }
    #[cfg(feature = "cache")]
    if let Some(dir) = cache_dir {
        if let Err(why) = check_private_dir(dir) {
            tracing::warn!(
                dir = %dir.display(),
                why,
                "compile cache not used: wasm-run loads its entries as native code, so only \
                 a directory no other user can write to is trusted; compiling without it"
            );
            return;
        }
        // The cache only saves time: if it cannot be set up (e.g. an
        // unwritable home directory), run without it.
        let mut cache = wasmtime::CacheConfig::new();
        cache.with_directory(dir.to_path_buf());
        match wasmtime::Cache::new(cache) {
            Ok(cache) => {
                wt.cache(Some(cache));
            }
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                error = %format!("{e:#}"),
                "compile cache unavailable; compiling without it"
            ),
        }
    }
}

/// Creates `dir` (mode 0700) if it is missing, then checks that no other
/// user can write to it or replace it: the directory is owned by this
/// user and writable by nobody else, and every directory above it is owned
/// by this user or root and writable by nobody else unless it has the
/// sticky bit (as `/tmp` does, where others cannot rename what they do not
/// own). Returns why not.
#[cfg(any(feature = "cache", test))]
pub(crate) fn check_private_dir(dir: &std::path::Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve it: {e}"))?;
    let me = rustix::process::geteuid().as_raw();
    for (depth, path) in dir.ancestors().enumerate() {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let owner_ok = meta.uid() == me || (depth > 0 && meta.uid() == 0);
        if !owner_ok {
            return Err(format!(
                "{} is owned by user {}, not by this user ({me}){}",
                path.display(),
                meta.uid(),
                if depth > 0 { " or root" } else { "" }
            ));
        }
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !(depth > 0 && sticky) {
            return Err(format!(
                "{} can be written by other users (mode {:o})",
                path.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_directory_others_can_write_to_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let base =
            std::env::temp_dir().join(format!("wasm-run-cache-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        // Created private when missing, and then trusted.
        let fresh = base.join("fresh/cache");
        check_private_dir(&fresh).expect("a fresh private directory is trusted");
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Writable by others: refused, naming it.
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = check_private_dir(&fresh).unwrap_err();
        assert!(why.contains("can be written by other users"), "{why}");
        // A directory above it others may write to (without the sticky bit):
        // they could replace the cache; refused too.
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(base.join("fresh"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let why = check_private_dir(&fresh).unwrap_err();
        assert!(
            why.contains("fresh can be written by other users (mode 777)"),
            "{why}"
        );
        // With the sticky bit (as /tmp), nobody else can rename it: trusted.
        std::fs::set_permissions(base.join("fresh"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        check_private_dir(&fresh).expect("under a sticky directory");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
