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

/// Whether a component uses the component model's async features —
/// async functions, streams, futures, error contexts, or the canonical
/// built-ins of the async ABI — as WASI 0.3 components do. Read from the
/// bytes (every nested component and type included) before anything is
/// compiled: it decides which engine compiles the component.
pub(crate) fn uses_component_model_async(binary: &[u8]) -> bool {
    use wasmparser::{Parser, Payload};
    Parser::new(0)
        .parse_all(binary)
        .any(|payload| match payload {
            Ok(Payload::ComponentTypeSection(types)) => types
                .into_iter()
                .any(|t| t.is_ok_and(|t| type_is_async(&t))),
            Ok(Payload::ComponentCanonicalSection(functions)) => functions
                .into_iter()
                .any(|f| f.is_ok_and(|f| canonical_is_async(&f))),
            _ => false,
        })
}

fn type_is_async(ty: &wasmparser::ComponentType<'_>) -> bool {
    use wasmparser::{ComponentType, ComponentTypeDeclaration, InstanceTypeDeclaration};
    match ty {
        ComponentType::Defined(defined) => matches!(
            defined,
            wasmparser::ComponentDefinedType::Stream(_)
                | wasmparser::ComponentDefinedType::Future(_)
                | wasmparser::ComponentDefinedType::Primitive(
                    wasmparser::PrimitiveValType::ErrorContext
                )
        ),
        ComponentType::Func(func) => {
            func.async_
                || func.params.iter().any(|(_, v)| value_is_async(v))
                || func.result.as_ref().is_some_and(value_is_async)
        }
        ComponentType::Component(declarations) => declarations
            .iter()
            .any(|d| matches!(d, ComponentTypeDeclaration::Type(t) if type_is_async(t))),
        ComponentType::Instance(declarations) => declarations
            .iter()
            .any(|d| matches!(d, InstanceTypeDeclaration::Type(t) if type_is_async(t))),
        ComponentType::Resource { .. } => false,
    }
}

fn value_is_async(value: &wasmparser::ComponentValType) -> bool {
    matches!(
        value,
        wasmparser::ComponentValType::Primitive(wasmparser::PrimitiveValType::ErrorContext)
    )
}

fn canonical_is_async(function: &wasmparser::CanonicalFunction) -> bool {
    use wasmparser::{CanonicalFunction as F, CanonicalOption};
    match function {
        F::Lift { options, .. } | F::Lower { options, .. } => options
            .iter()
            .any(|o| matches!(o, CanonicalOption::Async | CanonicalOption::Callback(_))),
        F::ResourceNew { .. }
        | F::ResourceDrop { .. }
        | F::ResourceRep { .. }
        | F::ThreadSpawnRef { .. }
        | F::ThreadSpawnIndirect { .. }
        | F::ThreadAvailableParallelism => false,
        // Tasks, subtasks, streams, futures, error contexts, waitables,
        // backpressure, context: the async ABI's built-ins.
        _ => true,
    }
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
    fn async_components_are_told_apart_from_their_bytes() {
        let sync = wat::parse_str(
            r#"(component
                 (core module $m (func (export "f") (result i32) (i32.const 0)))
                 (core instance $i (instantiate $m))
                 (func (export "f") (result u32) (canon lift (core func $i "f"))))"#,
        )
        .unwrap();
        assert!(!uses_component_model_async(&sync));
        let stream =
            wat::parse_str(r#"(component (type $s (stream u8)) (export "s" (type $s)))"#).unwrap();
        assert!(uses_component_model_async(&stream));
        let nested = wat::parse_str(
            r#"(component (type (instance (type (future u32)) (export "f" (type (eq 0))))))"#,
        )
        .unwrap();
        assert!(uses_component_model_async(&nested));
        assert!(!uses_component_model_async(b"not wasm"));
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
