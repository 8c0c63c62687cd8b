//! What an invocation takes of the engine's instance pool — core
//! instances, linear memories, tables, the invocation itself — and of the
//! process's file descriptors, as admission counts it ([`Slots`], re-exported
//! as [`crate::admission::Slots`]).

/// Slots of the engine's instance pool, and the process's file
/// descriptors that guests may hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slots {
    /// Invocations (each takes a component-instance slot and a stack).
    pub invocations: u64,
    /// Core instances.
    pub instances: u64,
    /// Linear memories.
    pub memories: u64,
    /// Tables.
    pub tables: u64,
    /// File descriptors: files opened through preopened directories (at
    /// most [`crate::MAX_OPEN_FILES`] per invocation) and outgoing
    /// connections (at most the policy's `max_outgoing`). A pool of
    /// `u64::MAX` does not count them.
    pub fds: u64,
}

impl Slots {
    pub(crate) fn add(self, other: Slots) -> Slots {
        Slots {
            invocations: self.invocations.saturating_add(other.invocations),
            instances: self.instances.saturating_add(other.instances),
            memories: self.memories.saturating_add(other.memories),
            tables: self.tables.saturating_add(other.tables),
            fds: self.fds.saturating_add(other.fds),
        }
    }

    pub(crate) fn sub(self, other: Slots) -> Slots {
        Slots {
            invocations: self.invocations.saturating_sub(other.invocations),
            instances: self.instances.saturating_sub(other.instances),
            memories: self.memories.saturating_sub(other.memories),
            tables: self.tables.saturating_sub(other.tables),
            fds: self.fds.saturating_sub(other.fds),
        }
    }

    pub(crate) fn fits_in(self, pool: Slots) -> bool {
        self.invocations <= pool.invocations
            && self.instances <= pool.instances
            && self.memories <= pool.memories
            && self.tables <= pool.tables
            && self.fds <= pool.fds
    }

    /// The slots of the pooling allocator of an engine built from
    /// `config` (invocations, core instances, memories, tables), or `None`
    /// without pooling.
    pub fn pool_of(config: &crate::EngineConfig) -> Option<Slots> {
        let per = crate::engine::CORE_INSTANCES_PER_COMPONENT;
        config.pooling.then(|| {
            let n = u64::from(config.max_instances);
            Slots {
                invocations: n,
                instances: n.saturating_mul(per),
                memories: n,
                tables: n.saturating_mul(per),
                fds: u64::MAX,
            }
        })
    }

    /// The slots one instantiation of `guest` takes, from its footprint
    /// (an artifact's is the one `wasm-run compile` read from its wasm).
    pub fn of(guest: &crate::Guest) -> Slots {
        let f = guest.footprint();
        Slots {
            invocations: 1,
            instances: f.core_instances,
            memories: f.memories,
            tables: f.tables,
            fds: 0,
        }
    }

    /// The descriptors an invocation may hold under `invocation`'s
    /// settings: [`crate::MAX_OPEN_FILES`] if it has preopened directories,
    /// plus its outgoing-request cap if its policy allows any destination.
    pub fn fds_of(dirs: usize, outbound: &crate::OutboundPolicy) -> u64 {
        let files = if dirs > 0 {
            crate::MAX_OPEN_FILES as u64
        } else {
            0
        };
        let sockets = if !outbound.denies_all() {
            outbound.max_outgoing() as u64
        } else {
            0
        };
        files + sockets
    }

    /// These slots with `fds` descriptors.
    #[must_use]
    pub fn with_fds(self, fds: u64) -> Slots {
        Slots { fds, ..self }
    }
}
