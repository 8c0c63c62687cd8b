//! The tenants of an admission controller ([`crate::admission`]): who they
//! are, how each shares the budget, and the state the controller keeps of
//! them — what each holds, its line of waiting requests, when it was last
//! seen and served — with the choice of whose turn it is.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::slots::Slots;

/// How long after its last request a tenant keeps a reserve: 5 s. While
/// two or more tenants are recently active, each one's fair share of the
/// budget (in proportion to the weights of the recently active tenants) is
/// its own: a tenant past its share is admitted only if what is left still
/// covers the next request of every other recently active tenant below its
/// share. So a flood cannot take the budget a quiet tenant's next request
/// needs, and a victim never waits for a flood's requests to reach their
/// deadlines; a tenant idle for longer leaves its share to the others.
pub const RESERVE_WINDOW: Duration = Duration::from_secs(5);

/// What one request takes while admitted: bytes of budget and pool slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    /// Bytes of the memory budget (its cap plus its guest's host allowance).
    pub bytes: u64,
    /// Slots of the instance pool.
    pub slots: Slots,
}

/// A tenant of an [`Admission`](crate::admission::Admission) controller ([`Admission::tenant`](crate::admission::Admission::tenant)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantId(pub(crate) usize);

impl TenantId {
    /// The tenant every controller has: requests admitted with
    /// [`Admission::admit`](crate::admission::Admission::admit) or [`Admission::admit_need`](crate::admission::Admission::admit_need) belong to it.
    pub const DEFAULT: TenantId = TenantId(0);
}

/// How a tenant shares the budget.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    /// Relative share when tenants contend for the budget (at least 1).
    pub weight: u32,
    /// Requests of this tenant that may wait at once; default the
    /// controller's `max_queue`.
    pub max_queue: Option<usize>,
    /// The most of the budget this tenant may hold at once, as a fraction
    /// (0 < f ≤ 1), even when the rest is idle; `None`: all of it.
    pub max_share: Option<f64>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            weight: 1,
            max_queue: None,
            max_share: None,
        }
    }
}

/// What a tenant holds and has had, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStats {
    /// The tenant's name.
    pub name: Arc<str>,
    /// Its weight.
    pub weight: u32,
    /// Bytes of budget its admitted requests hold.
    pub in_use: u64,
    /// Its requests waiting.
    pub queued: usize,
    /// Requests admitted so far.
    pub admitted: u64,
    /// Requests turned away because its queue was full.
    pub rejected_queue_full: u64,
    /// Requests turned away after waiting `queue_timeout`.
    pub rejected_timeout: u64,
}

#[derive(Debug)]
pub(crate) struct TenantState {
    pub(crate) name: Arc<str>,
    pub(crate) weight: u32,
    pub(crate) max_queue: usize,
    /// Bytes this tenant may hold at once.
    pub(crate) max_bytes: u64,
    pub(crate) queue: VecDeque<Waiter>,
    pub(crate) in_use: u64,
    /// When this tenant was last granted budget (a grant counter), for
    /// round robin between tenants with equal shares.
    pub(crate) last_served: u64,
    /// When a request of this tenant last arrived, and what it needed: a
    /// tenant seen within [`RESERVE_WINDOW`] has its next request's budget
    /// kept from the others' floods.
    pub(crate) last_seen: Option<tokio::time::Instant>,
    pub(crate) last_need: u64,
    pub(crate) admitted: u64,
    pub(crate) rejected_queue_full: u64,
    pub(crate) rejected_timeout: u64,
}

impl TenantState {
    /// A tenant named `name`, sharing `budget` as `config` says; its queue
    /// holds `max_queue` requests unless `config` says otherwise.
    pub(crate) fn new(
        name: Arc<str>,
        config: &TenantConfig,
        budget: u64,
        max_queue: usize,
    ) -> Self {
        let mut t = TenantState {
            name,
            weight: 1,
            max_queue: 0,
            max_bytes: u64::MAX,
            queue: VecDeque::new(),
            in_use: 0,
            last_served: 0,
            last_seen: None,
            last_need: 0,
            admitted: 0,
            rejected_queue_full: 0,
            rejected_timeout: 0,
        };
        t.configure(config, budget, max_queue);
        t
    }

    /// Applies `config` (see [`TenantState::new`]).
    pub(crate) fn configure(&mut self, config: &TenantConfig, budget: u64, max_queue: usize) {
        self.weight = config.weight.max(1);
        self.max_queue = config.max_queue.unwrap_or(max_queue);
        self.max_bytes = match config.max_share {
            Some(f) if f > 0.0 && f < 1.0 => (budget as f64 * f) as u64,
            _ => u64::MAX,
        };
    }

    /// Whether this tenant has been active within [`RESERVE_WINDOW`] of
    /// `now`: it holds budget, waits for it, or a request of it arrived.
    pub(crate) fn recent(&self, now: tokio::time::Instant) -> bool {
        self.in_use > 0
            || !self.queue.is_empty()
            || self
                .last_seen
                .is_some_and(|at| now.saturating_duration_since(at) < RESERVE_WINDOW)
    }

    /// Whether this tenant may hold `bytes` more (one request at a time
    /// always may, however small its share).
    pub(crate) fn within_share(&self, bytes: u64) -> bool {
        self.in_use == 0 || self.in_use.saturating_add(bytes) <= self.max_bytes
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) in_use: u64,
    pub(crate) slots_in_use: Slots,
    pub(crate) next_ticket: u64,
    /// Grants made so far (orders tenants for round robin).
    pub(crate) grants: u64,
    /// Requests waiting, over every tenant.
    pub(crate) queued: usize,
    pub(crate) tenants: Vec<TenantState>,
}

#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) ticket: u64,
    pub(crate) need: Need,
    pub(crate) grant: oneshot::Sender<()>,
}

impl State {
    pub(crate) fn hold(&mut self, tenant: TenantId, need: Need) {
        self.in_use = self.in_use.saturating_add(need.bytes);
        self.slots_in_use = self.slots_in_use.add(need.slots);
        self.grants += 1;
        let t = &mut self.tenants[tenant.0];
        t.in_use = t.in_use.saturating_add(need.bytes);
        t.admitted += 1;
        t.last_served = self.grants;
    }

    pub(crate) fn take_back(&mut self, tenant: TenantId, need: Need) {
        self.in_use = self.in_use.saturating_sub(need.bytes);
        self.slots_in_use = self.slots_in_use.sub(need.slots);
        let t = &mut self.tenants[tenant.0];
        t.in_use = t.in_use.saturating_sub(need.bytes);
    }

    /// Takes waiter `ticket` out of `tenant`'s queue; false if it is not
    /// there (it was granted).
    pub(crate) fn leave_queue(&mut self, tenant: TenantId, ticket: u64) -> bool {
        let queue = &mut self.tenants[tenant.0].queue;
        match queue.iter().position(|w| w.ticket == ticket) {
            Some(i) => {
                queue.remove(i);
                self.queued -= 1;
                true
            }
            None => false,
        }
    }

    /// The waiting tenant whose turn it is: least budget in use per unit
    /// of weight, then the one served least recently; tenants whose head
    /// would take them past their maximum share wait.
    pub(crate) fn next_tenant(&self) -> Option<usize> {
        self.tenants
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                t.queue
                    .front()
                    .is_some_and(|w| t.within_share(w.need.bytes))
            })
            .min_by(|(_, a), (_, b)| {
                // a.in_use / a.weight vs b.in_use / b.weight, without division.
                let left = u128::from(a.in_use) * u128::from(b.weight);
                let right = u128::from(b.in_use) * u128::from(a.weight);
                left.cmp(&right).then(a.last_served.cmp(&b.last_served))
            })
            .map(|(i, _)| i)
    }
}
