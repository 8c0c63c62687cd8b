//! Guest bytes as binary wasm: binary as is, WAT text converted, anything
//! else refused; and whether they are a component. A leaf that both loading
//! (`guest`) and precompiling (`engine`) use.

use crate::error::{Error, Result};

/// Binary wasm as is; WAT text converted; anything else rejected.
pub(crate) fn to_binary<'a>(name: &str, bytes: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>> {
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes.into());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Error::NotWasm {
        name: name.to_string(),
    })?;
    let looks_like_wat = text.trim_start().starts_with('(') || text.trim_start().starts_with(";;");
    if !looks_like_wat {
        return Err(Error::NotWasm {
            name: name.to_string(),
        });
    }
    wat::parse_str(text)
        .map(Into::into)
        .map_err(|e| Error::Invalid {
            name: name.to_string(),
            message: format!("WAT text does not parse: {e}"),
        })
}

/// A component's header has layer 1 (bytes 6..8 of the preamble); a core
/// module's has layer 0.
pub(crate) fn is_component(binary: &[u8]) -> bool {
    binary.len() >= 8 && binary[6..8] == [1, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_components_from_the_preamble() {
        let core = wat::parse_str("(module)").unwrap();
        let comp = wat::parse_str("(component)").unwrap();
        assert!(!is_component(&core));
        assert!(is_component(&comp));
    }

    #[test]
    fn rejects_bytes_that_are_not_wasm() {
        assert!(matches!(
            to_binary("x", b"\x7fELF...."),
            Err(Error::NotWasm { .. })
        ));
        assert!(matches!(
            to_binary("x", b"hello"),
            Err(Error::NotWasm { .. })
        ));
        assert!(matches!(
            to_binary("x", b"(module"),
            Err(Error::Invalid { .. })
        ));
    }
}
