//! Artifacts of `wasm-run compile`: wasmtime's native code behind a header
//! of wasm-run's own that carries what the wasm said about its footprint.
//!
//! An artifact is native code. wasmtime checks that one was made by the same
//! version and engine configuration, but nothing can check that the code is
//! the code wasmtime made: whoever writes the file chooses what the host
//! executes. So loading one is never implicit (see
//! [`crate::Guest::from_bytes`]): only the `unsafe` constructors
//! ([`crate::Guest::from_bytes_allow_precompiled`]) deserialize, and the
//! `wasm-run` command calls them only under `--allow-precompiled`.
//!
//! Layout, all integers little-endian:
//!
//! | bytes | what |
//! |---|---|
//! | 16 | [`MAGIC`] |
//! | 2 | length of the version string |
//! | n | the version string ([`crate::engine::artifact_version`]) |
//! | 4 × 8 | the [`Footprint`]: instance state bytes, core instances, memories, tables |
//! | rest | wasmtime's artifact (an ELF image) |
//!
//! The footprint is computed from the wasm when the artifact is made, so
//! admission and the instantiation check treat an artifact exactly like the
//! wasm it came from. It is no more to be trusted than the code beside it,
//! and no less: both come from whoever made the file.

use crate::error::{Error, Result};
use crate::footprint::Footprint;

/// The first bytes of every artifact of `wasm-run compile`. Starts with a
/// NUL like wasm's own magic, so no text editor mistakes it for text.
pub(crate) const MAGIC: &[u8; 16] = b"\0wasm-run cwasm\n";

/// An artifact taken apart: what the wasm said, and wasmtime's code.
#[derive(Debug)]
pub(crate) struct Artifact<'a> {
    /// The footprint `compile` computed from the wasm.
    pub(crate) footprint: Footprint,
    /// wasmtime's serialized module or component.
    pub(crate) code: &'a [u8],
}

/// Whether `bytes` are native code: an artifact of `wasm-run compile`, or a
/// bare wasmtime artifact (`wasmtime compile`, or wasm-run before artifacts
/// had a header).
pub(crate) fn is_native_code(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC) || wasmtime::Engine::detect_precompiled(bytes).is_some()
}

/// Puts wasm-run's header in front of wasmtime's `code`.
pub(crate) fn encode(version: &str, footprint: &Footprint, code: &[u8]) -> Vec<u8> {
    let version = version.as_bytes();
    let len = u16::try_from(version.len()).expect("the version string is short");
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + version.len() + 32 + code.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(version);
    for n in [
        footprint.instance_state_bytes,
        footprint.core_instances,
        footprint.memories,
        footprint.tables,
    ] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(code);
    out
}

/// Takes an artifact apart; refuses one made by another version (whose
/// header may differ) or one without wasm-run's header.
pub(crate) fn decode<'a>(name: &str, version: &str, bytes: &'a [u8]) -> Result<Artifact<'a>> {
    let incompatible = |message: String| Error::Incompatible {
        name: name.to_string(),
        message,
    };
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(incompatible(
            "a bare wasmtime artifact, without the header `wasm-run compile` writes (made by \
             `wasmtime compile` or an older wasm-run), so what its wasm needs per instance is \
             unknown"
                .into(),
        ));
    };
    let truncated = || incompatible("the artifact's header is truncated".into());
    let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(truncated)?;
    let len = usize::from(u16::from_le_bytes(*len));
    let (theirs, rest) = rest.split_at_checked(len).ok_or_else(truncated)?;
    if theirs != version.as_bytes() {
        return Err(incompatible(format!(
            "made by {}, this is {version}",
            String::from_utf8_lossy(theirs).escape_debug()
        )));
    }
    let mut numbers = [0u64; 4];
    let mut rest = rest;
    for n in &mut numbers {
        let (bytes, after) = rest.split_first_chunk::<8>().ok_or_else(truncated)?;
        *n = u64::from_le_bytes(*bytes);
        rest = after;
    }
    let [instance_state_bytes, core_instances, memories, tables] = numbers;
    Ok(Artifact {
        footprint: Footprint {
            instance_state_bytes,
            core_instances,
            memories,
            tables,
        },
        code: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: &str = "wasm-run 0.0.0 (wasmtime 0.0.0)";

    #[test]
    fn an_artifact_round_trips_its_footprint_and_code() {
        let footprint = Footprint {
            instance_state_bytes: 1 << 40,
            core_instances: 62,
            memories: 3,
            tables: 4,
        };
        let bytes = encode(VERSION, &footprint, b"\x7fELF code");
        assert!(is_native_code(&bytes));
        let artifact = decode("a", VERSION, &bytes).unwrap();
        assert_eq!(artifact.footprint, footprint);
        assert_eq!(artifact.code, b"\x7fELF code");
    }

    #[test]
    fn another_version_or_no_header_is_refused_with_the_reason() {
        let bytes = encode(VERSION, &Footprint::default(), b"code");
        let other = decode("a", "wasm-run 9.9.9 (wasmtime 9.9.9)", &bytes).unwrap_err();
        assert!(matches!(other, Error::Incompatible { .. }));
        assert!(
            other.to_string().contains("made by wasm-run 0.0.0"),
            "{other}"
        );
        let bare = decode("a", VERSION, b"\x7fELF\x02\x01").unwrap_err();
        assert!(
            bare.to_string().contains("bare wasmtime artifact"),
            "{bare}"
        );
        for cut in [MAGIC.len() + 1, MAGIC.len() + 2 + VERSION.len() + 9] {
            let short = decode("a", VERSION, &bytes[..cut]).unwrap_err();
            assert!(short.to_string().contains("truncated"), "{short}");
        }
    }

    #[test]
    fn wasm_and_text_are_not_native_code() {
        assert!(!is_native_code(b"\0asm\x01\0\0\0"));
        assert!(!is_native_code(b"(module)"));
    }
}
