//! What one instantiation of a guest will make the host hold, known from its
//! bytes before anything is allocated: the state of every core instance
//! (wasmtime's per-instance context: globals, function references, table
//! and memory definitions, imports) and how many core instances, memories
//! and tables it creates.
//!
//! A component's instantiation is fixed by its sections (there are no
//! loops), so this is a sum over its `instance` sections: each core
//! instantiation adds its module's state, each nested component
//! instantiation adds that component's total.
//!
//! The figures are estimates from wasmtime's layout (16 bytes a global, 32
//! a function reference, ...), meant to refuse a guest whose instance state
//! could never fit its memory cap *before* the host allocates it; what the
//! instances really allocate is charged to the invocation's account anyway.

use wasmparser::{
    ComponentAlias, ComponentExternalKind, ComponentOuterAliasKind, ComponentTypeRef, Encoding,
    Instance, Parser, Payload, TypeRef,
};

/// The static footprint of one instantiation of a guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Estimated bytes of host memory its instances' state takes.
    pub instance_state_bytes: u64,
    /// Core instances it creates.
    pub core_instances: u64,
    /// Linear memories its instances define.
    pub memories: u64,
    /// Tables its instances define.
    pub tables: u64,
}

impl Footprint {
    fn add(&mut self, other: &Footprint) {
        self.instance_state_bytes = self
            .instance_state_bytes
            .saturating_add(other.instance_state_bytes);
        self.core_instances = self.core_instances.saturating_add(other.core_instances);
        self.memories = self.memories.saturating_add(other.memories);
        self.tables = self.tables.saturating_add(other.tables);
    }

    fn max(&self, other: &Footprint) -> Footprint {
        Footprint {
            instance_state_bytes: self.instance_state_bytes.max(other.instance_state_bytes),
            core_instances: self.core_instances.max(other.core_instances),
            memories: self.memories.max(other.memories),
            tables: self.tables.max(other.tables),
        }
    }
}

/// Fixed part of one core instance: wasmtime's `Instance` and the head of
/// its context.
const INSTANCE_BASE: u64 = 512;
/// A defined global (`VMGlobalDefinition`).
const GLOBAL: u64 = 16;
/// A function reference (`VMFuncRef`), one per function that may escape.
const FUNC_REF: u64 = 32;
/// An imported function (`VMFunctionImport`).
const FUNC_IMPORT: u64 = 32;
/// An imported table, memory, global or tag.
const OTHER_IMPORT: u64 = 16;
/// A defined memory (its definition and the host's handle to it).
const MEMORY: u64 = 64;
/// A defined table (its definition and the host's handle to it).
const TABLE: u64 = 96;
/// A defined tag.
const TAG: u64 = 16;
/// A type id.
const TYPE: u64 = 4;

/// The footprint of one instantiation of `binary` (a core module or a
/// component). Bytes that do not parse count as nothing: compiling them has
/// already failed or will.
pub fn of(binary: &[u8]) -> Footprint {
    walk(binary).unwrap_or_default()
}

/// What is being parsed at one nesting level.
enum Frame {
    Module(ModuleCounts),
    Component(ComponentScope),
}

/// What a core module defines and imports, counted section by section.
#[derive(Default)]
struct ModuleCounts {
    types: u64,
    func_imports: u64,
    other_imports: u64,
    funcs: u64,
    globals: u64,
    memories: u64,
    tables: u64,
    tags: u64,
}

impl ModuleCounts {
    /// Counts what one section of the module adds.
    fn count(&mut self, payload: Payload<'_>) -> wasmparser::Result<()> {
        match payload {
            Payload::TypeSection(r) => self.types += u64::from(r.count()),
            Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    match import?.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => self.func_imports += 1,
                        _ => self.other_imports += 1,
                    }
                }
            }
            Payload::FunctionSection(r) => self.funcs += u64::from(r.count()),
            Payload::GlobalSection(r) => self.globals += u64::from(r.count()),
            Payload::MemorySection(r) => self.memories += u64::from(r.count()),
            Payload::TableSection(r) => self.tables += u64::from(r.count()),
            Payload::TagSection(r) => self.tags += u64::from(r.count()),
            _ => {}
        }
        Ok(())
    }

    /// One instance of the module, at wasmtime's sizes.
    fn footprint(&self) -> Footprint {
        let state = INSTANCE_BASE
            .saturating_add(self.types.saturating_mul(TYPE))
            .saturating_add(self.func_imports.saturating_mul(FUNC_IMPORT))
            .saturating_add(self.other_imports.saturating_mul(OTHER_IMPORT))
            .saturating_add(
                self.func_imports
                    .saturating_add(self.funcs)
                    .saturating_mul(FUNC_REF),
            )
            .saturating_add(self.globals.saturating_mul(GLOBAL))
            .saturating_add(self.memories.saturating_mul(MEMORY))
            .saturating_add(self.tables.saturating_mul(TABLE))
            .saturating_add(self.tags.saturating_mul(TAG));
        Footprint {
            instance_state_bytes: state,
            core_instances: 1,
            memories: self.memories,
            tables: self.tables,
        }
    }
}

/// A component's index spaces of modules and components, and what one
/// instantiation of it adds up to.
#[derive(Default)]
struct ComponentScope {
    /// Footprint of each core module in the module index space (`None`
    /// for one imported or aliased from outside).
    modules: Vec<Option<Footprint>>,
    /// Footprint of each component in the component index space.
    components: Vec<Option<Footprint>>,
    /// One instantiation of this component.
    total: Footprint,
}

impl ComponentScope {
    /// Records what one section of the component adds: instantiations to
    /// the total, imports, aliases and exports to the index spaces.
    /// `largest` stands in for a module or component defined outside.
    fn record(&mut self, payload: Payload<'_>, largest: Footprint) -> wasmparser::Result<()> {
        match payload {
            Payload::InstanceSection(r) => {
                for instance in r {
                    if let Instance::Instantiate { module_index, .. } = instance? {
                        self.total.add(&entry(&self.modules, module_index, largest));
                    }
                }
            }
            Payload::ComponentInstanceSection(r) => {
                for instance in r {
                    if let wasmparser::ComponentInstance::Instantiate {
                        component_index, ..
                    } = instance?
                    {
                        self.total
                            .add(&entry(&self.components, component_index, largest));
                    }
                }
            }
            Payload::ComponentImportSection(r) => {
                for import in r {
                    match import?.ty {
                        ComponentTypeRef::Module(_) => self.modules.push(None),
                        ComponentTypeRef::Component(_) => self.components.push(None),
                        _ => {}
                    }
                }
            }
            Payload::ComponentAliasSection(r) => {
                for alias in r {
                    match alias? {
                        ComponentAlias::InstanceExport {
                            kind: ComponentExternalKind::Module,
                            ..
                        }
                        | ComponentAlias::Outer {
                            kind: ComponentOuterAliasKind::CoreModule,
                            ..
                        } => self.modules.push(None),
                        ComponentAlias::InstanceExport {
                            kind: ComponentExternalKind::Component,
                            ..
                        }
                        | ComponentAlias::Outer {
                            kind: ComponentOuterAliasKind::Component,
                            ..
                        } => self.components.push(None),
                        _ => {}
                    }
                }
            }
            Payload::ComponentExportSection(r) => {
                // An export of a module or component adds an index for it.
                for export in r {
                    let export = export?;
                    let space = match export.kind {
                        ComponentExternalKind::Module => &mut self.modules,
                        ComponentExternalKind::Component => &mut self.components,
                        _ => continue,
                    };
                    let fp = space.get(export.index as usize).copied().flatten();
                    space.push(fp);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The footprint at `index` of an index space; `largest` stands in for
/// one defined outside (imported or aliased) or out of range.
fn entry(space: &[Option<Footprint>], index: u32, largest: Footprint) -> Footprint {
    space
        .get(index as usize)
        .copied()
        .flatten()
        .unwrap_or(largest)
}

/// One pass over `binary`: a frame per module or component being parsed;
/// when one ends, its footprint goes into the enclosing component's index
/// space.
fn walk(binary: &[u8]) -> wasmparser::Result<Footprint> {
    let mut stack: Vec<Frame> = Vec::new();
    // The largest module or component seen, standing in for one whose
    // definition comes from outside (an import or an outer alias).
    let mut largest = Footprint::default();
    let mut result = Footprint::default();
    for payload in Parser::new(0).parse_all(binary) {
        let payload = payload?;
        match (payload, stack.last_mut()) {
            (Payload::Version { encoding, .. }, _) => stack.push(match encoding {
                Encoding::Module => Frame::Module(ModuleCounts::default()),
                Encoding::Component => Frame::Component(ComponentScope::default()),
            }),
            (Payload::End(_), _) => {
                let ended = stack.pop();
                let parent = match stack.last_mut() {
                    Some(Frame::Component(parent)) => Some(parent),
                    _ => None,
                };
                let done = match ended {
                    Some(Frame::Module(counts)) => {
                        let fp = counts.footprint();
                        if let Some(parent) = parent {
                            parent.modules.push(Some(fp));
                        }
                        fp
                    }
                    Some(Frame::Component(scope)) => {
                        if let Some(parent) = parent {
                            parent.components.push(Some(scope.total));
                        }
                        scope.total
                    }
                    None => Footprint::default(),
                };
                largest = largest.max(&done);
                if stack.is_empty() {
                    result = done;
                }
            }
            (payload, Some(Frame::Module(counts))) => counts.count(payload)?,
            (payload, Some(Frame::Component(scope))) => scope.record(payload, largest)?,
            (_, None) => {}
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(wat: &str) -> Footprint {
        of(&wat::parse_str(wat).expect("valid wat"))
    }

    #[test]
    fn a_core_module_is_one_instance_and_counts_its_globals() {
        let small = fp("(module (global i64 (i64.const 0)))");
        let mut globals = String::from("(module");
        for _ in 0..10_000 {
            globals.push_str(" (global i64 (i64.const 0))");
        }
        globals.push(')');
        let big = fp(&globals);
        assert_eq!(small.core_instances, 1);
        assert_eq!(
            big.instance_state_bytes - small.instance_state_bytes,
            9_999 * GLOBAL
        );
    }

    #[test]
    fn a_component_sums_every_instantiation_of_its_modules() {
        let component = |n: usize| {
            let mut s = String::from(
                "(component (core module $m (memory 1) (table 1 funcref) \
                 (global i64 (i64.const 0)) (global i64 (i64.const 0)))",
            );
            for i in 0..n {
                s.push_str(&format!(" (core instance $i{i} (instantiate $m))"));
            }
            s.push(')');
            fp(&s)
        };
        let one = component(1);
        let many = component(62);
        assert_eq!(many.core_instances, 62);
        assert_eq!(many.memories, 62);
        assert_eq!(many.tables, 62);
        assert_eq!(many.instance_state_bytes, 62 * one.instance_state_bytes);
        assert_eq!(component(0), Footprint::default());
    }

    #[test]
    fn nested_components_multiply() {
        let f = fp(r#"(component
              (component $inner
                (core module $m (global i64 (i64.const 0)))
                (core instance (instantiate $m))
                (core instance (instantiate $m)))
              (instance (instantiate $inner))
              (instance (instantiate $inner))
              (instance (instantiate $inner)))"#);
        assert_eq!(f.core_instances, 6);
    }

    #[test]
    fn bytes_that_do_not_parse_count_as_nothing() {
        assert_eq!(of(b"not wasm"), Footprint::default());
    }
}
