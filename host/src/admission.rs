//! Admission by memory budget: an invocation is admitted when what it may
//! make the host hold — its memory cap plus its guest's host allowance
//! ([`crate::Guest::host_allowance`]) — fits in what is left of the budget,
//! so the sum over admitted invocations never exceeds the budget. One that
//! does not fit waits in a FIFO queue bounded in length and in time; past
//! either it is turned away (`wasm-run serve` answers 503 `overloaded`).
//!
//! `wasm-run serve` admits every request this way; an embedder can do the
//! same, so that a burst queues instead of failing:
//!
//! ```no_run
//! # async fn demo(guest: wasm_run::Guest) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use wasm_run::admission::{Admission, AdmissionConfig};
//! use wasm_run::{Invocation, Limits};
//!
//! let admission = Admission::new(AdmissionConfig {
//!     budget: 1 << 30,
//!     max_queue: 1024,
//!     queue_timeout: Duration::from_secs(30),
//! });
//! let limits = Limits { max_memory: 32 << 20, ..Limits::default() };
//! let need = limits.max_memory + guest.host_allowance();
//! let (permit, _waited) = admission.admit(need).await?; // waits its turn
//! let outcome = guest.run(Invocation { limits, ..Invocation::default() }).await?;
//! drop(permit); // the budget is free again
//! # Ok(()) }
//! ```
//!
//! Memory is not all an invocation takes: each also takes slots of the
//! engine's instance pool (core instances, linear memories, tables; see
//! [`crate::Guest::footprint`]). A controller made with
//! [`Admission::with_slots`] counts those too, and admits a request only
//! when its slots fit in what the pool has left, so that requests of a
//! slot-hungry guest wait their turn instead of making other requests fail
//! with [`crate::Error::Capacity`]. `wasm-run serve` does this.
//!
//! Because each request is *killed* at its cap (never allowed past it), the
//! budget — which counts each request's cap plus its guest's fixed host
//! allowance — is a real bound on the memory guests make the host hold, not
//! a guess: an
//! event-loop server must pick a concurrency limit and hope; this host knows
//! what each admitted request may use.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The queue already holds `max_queue` requests.
    #[error("the memory budget is in use and the admission queue is full")]
    QueueFull,
    /// The request waited `queue_timeout` without fitting.
    #[error("the memory budget stayed in use for longer than the queue timeout")]
    Timeout,
    /// The request needs more bytes than the whole budget: it could never
    /// be admitted, so it is turned away at once instead of holding the
    /// line for its queue timeout.
    #[error("the request needs more than the whole memory budget")]
    TooLarge,
}

/// Settings of the admission controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Sum of memory caps that may be admitted at once, in bytes.
    pub budget: u64,
    /// Requests that may wait for budget at once.
    pub max_queue: usize,
    /// Longest a request may wait.
    pub queue_timeout: Duration,
}

/// The admission controller, shared by every request.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    /// Pool slots counted, when the controller counts them.
    pool: Option<Slots>,
    state: Mutex<State>,
}

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
    fn add(self, other: Slots) -> Slots {
        Slots {
            invocations: self.invocations.saturating_add(other.invocations),
            instances: self.instances.saturating_add(other.instances),
            memories: self.memories.saturating_add(other.memories),
            tables: self.tables.saturating_add(other.tables),
            fds: self.fds.saturating_add(other.fds),
        }
    }

    fn sub(self, other: Slots) -> Slots {
        Slots {
            invocations: self.invocations.saturating_sub(other.invocations),
            instances: self.instances.saturating_sub(other.instances),
            memories: self.memories.saturating_sub(other.memories),
            tables: self.tables.saturating_sub(other.tables),
            fds: self.fds.saturating_sub(other.fds),
        }
    }

    fn fits_in(self, pool: Slots) -> bool {
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

    /// The slots one instantiation of `guest` takes; for a precompiled
    /// artifact (whose footprint is unknown), the most one invocation may
    /// take ([`crate::MAX_INSTANCES`], [`crate::MAX_MEMORIES`],
    /// [`crate::MAX_TABLES`]).
    pub fn of(guest: &crate::Guest) -> Slots {
        let f = guest.footprint();
        if f.core_instances == 0 {
            return Slots {
                invocations: 1,
                instances: crate::MAX_INSTANCES as u64,
                memories: crate::MAX_MEMORIES as u64,
                tables: crate::MAX_TABLES as u64,
                fds: 0,
            };
        }
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

/// What one request takes while admitted: bytes of budget and pool slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    /// Bytes of the memory budget (its cap plus its guest's host allowance).
    pub bytes: u64,
    /// Slots of the instance pool.
    pub slots: Slots,
}

#[derive(Debug, Default)]
struct State {
    in_use: u64,
    slots_in_use: Slots,
    next_ticket: u64,
    queue: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    need: Need,
    grant: oneshot::Sender<()>,
}

/// Cleans up after an `admit` future dropped while queued.
struct QueueGuard<'a> {
    admission: &'a Arc<Admission>,
    ticket: u64,
    need: Need,
    armed: bool,
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut s = self.admission.lock();
        if let Some(i) = s.queue.iter().position(|w| w.ticket == self.ticket) {
            s.queue.remove(i);
        } else {
            // Granted, but nobody will hold the permit: give it back.
            s.take_back(self.need);
        }
        self.admission.grant_waiters(&mut s);
    }
}

/// Budget held by one admitted request; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    amount: Need,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release(self.amount);
    }
}

impl Admission {
    /// A controller with nothing admitted.
    pub fn new(config: AdmissionConfig) -> Arc<Admission> {
        Admission::with_pool(config, None)
    }

    /// A controller that also counts instance-pool slots: the slots of
    /// admitted requests never exceed `pool` (see the module doc).
    pub fn with_slots(config: AdmissionConfig, pool: Slots) -> Arc<Admission> {
        Admission::with_pool(config, Some(pool))
    }

    fn with_pool(config: AdmissionConfig, pool: Option<Slots>) -> Arc<Admission> {
        Arc::new(Admission {
            config,
            pool,
            state: Mutex::new(State::default()),
        })
    }

    /// The pool slots counted, if any.
    pub fn pool(&self) -> Option<Slots> {
        self.pool
    }

    /// Pool slots held by admitted requests.
    pub fn slots_in_use(&self) -> Slots {
        self.lock().slots_in_use
    }

    /// Whether `need` fits beside what is admitted now. A need larger than
    /// the whole pool is held to the pool (so it is admitted alone rather
    /// than never).
    fn fits(&self, s: &State, need: Need) -> bool {
        if s.in_use.saturating_add(need.bytes) > self.config.budget {
            return false;
        }
        match self.pool {
            None => true,
            Some(pool) => {
                let need = Slots {
                    invocations: need.slots.invocations.min(pool.invocations),
                    instances: need.slots.instances.min(pool.instances),
                    memories: need.slots.memories.min(pool.memories),
                    tables: need.slots.tables.min(pool.tables),
                    fds: need.slots.fds.min(pool.fds),
                };
                s.slots_in_use.add(need).fits_in(pool)
            }
        }
    }

    /// The settings.
    pub fn config(&self) -> AdmissionConfig {
        self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of budget held by admitted requests.
    pub fn in_use(&self) -> u64 {
        self.lock().in_use
    }

    /// Requests waiting for budget.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether the queue is full (new requests would be turned away).
    pub fn saturated(&self) -> bool {
        let queued = self.queued();
        queued > 0 && queued >= self.config.max_queue
    }

    /// Admits a request needing `need` bytes (and no pool slots), waiting
    /// in line if it does not fit yet. Returns the permit and how long the
    /// request waited.
    pub async fn admit(self: &Arc<Self>, need: u64) -> Result<(Permit, Duration), Rejected> {
        self.admit_need(Need {
            bytes: need,
            slots: Slots::default(),
        })
        .await
    }

    /// Admits a request needing `need` (bytes and pool slots), waiting in
    /// line if it does not fit yet. Returns the permit and how long the
    /// request waited; [`Rejected::TooLarge`] at once if `need.bytes` is
    /// more than the whole budget. (A need for more pool slots than the pool
    /// has is admitted alone, once the pool is otherwise free.)
    pub async fn admit_need(self: &Arc<Self>, need: Need) -> Result<(Permit, Duration), Rejected> {
        let start = Instant::now();
        if need.bytes > self.config.budget {
            return Err(Rejected::TooLarge);
        }
        let (ticket, mut granted) = {
            let mut s = self.lock();
            // FIFO: nobody overtakes a waiting request.
            if s.queue.is_empty() && self.fits(&s, need) {
                s.hold(need);
                return Ok((self.permit(need), Duration::ZERO));
            }
            if s.queue.len() >= self.config.max_queue {
                return Err(Rejected::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            s.next_ticket += 1;
            let ticket = s.next_ticket;
            s.queue.push_back(Waiter {
                ticket,
                need,
                grant: tx,
            });
            (ticket, rx)
        };
        // If this future is dropped while waiting (the client went away),
        // the guard takes the waiter out of the line, or gives back a grant
        // that raced with the drop.
        let mut guard = QueueGuard {
            admission: self,
            ticket,
            need,
            armed: true,
        };
        // `granted` stays alive until the queue is checked under the lock, so
        // a grant racing with the timeout is never lost.
        let result = match tokio::time::timeout(self.config.queue_timeout, &mut granted).await {
            Ok(Ok(())) => Ok((self.permit(need), start.elapsed())),
            _ => {
                let mut s = self.lock();
                if let Some(i) = s.queue.iter().position(|w| w.ticket == ticket) {
                    s.queue.remove(i);
                    // Leaving may let the next in line through.
                    self.grant_waiters(&mut s);
                    Err(Rejected::Timeout)
                } else {
                    // Granted just as the wait timed out: the budget is ours.
                    drop(s);
                    Ok((self.permit(need), start.elapsed()))
                }
            }
        };
        guard.armed = false;
        result
    }

    fn permit(self: &Arc<Self>, amount: Need) -> Permit {
        Permit {
            admission: self.clone(),
            amount,
        }
    }

    fn release(&self, amount: Need) {
        let mut s = self.lock();
        s.take_back(amount);
        self.grant_waiters(&mut s);
    }

    /// Admits waiters from the head of the queue while they fit.
    fn grant_waiters(&self, s: &mut State) {
        while let Some(head) = s.queue.front() {
            if !self.fits(s, head.need) {
                break;
            }
            let w = s.queue.pop_front().expect("head exists");
            s.hold(w.need);
            // The receiver lives as long as the waiter's `admit` future, whose
            // guard handles a grant that arrives as it is dropped.
            let _ = w.grant.send(());
        }
    }
}

impl State {
    fn hold(&mut self, need: Need) {
        self.in_use = self.in_use.saturating_add(need.bytes);
        self.slots_in_use = self.slots_in_use.add(need.slots);
    }

    fn take_back(&mut self, need: Need) {
        self.in_use = self.in_use.saturating_sub(need.bytes);
        self.slots_in_use = self.slots_in_use.sub(need.slots);
    }
}

/// The default budget: half of the machine's memory (from /proc/meminfo),
/// or 1 GiB where that cannot be read.
pub fn default_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(1 << 30, |kb| kb * 1024 / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(budget: u64, max_queue: usize, ms: u64) -> Arc<Admission> {
        Admission::new(AdmissionConfig {
            budget,
            max_queue,
            queue_timeout: Duration::from_millis(ms),
        })
    }

    #[tokio::test]
    async fn admits_while_caps_fit_and_never_exceeds_the_budget() {
        let a = admission(100, 10, 50);
        let (p1, _) = a.admit(60).await.unwrap();
        let (p2, _) = a.admit(40).await.unwrap();
        assert_eq!(a.in_use(), 100);
        assert_eq!(a.admit(1).await.unwrap_err(), Rejected::Timeout);
        assert_eq!(a.in_use(), 100);
        drop(p1);
        assert_eq!(a.in_use(), 40);
        drop(p2);
        assert_eq!(a.in_use(), 0);
    }

    /// Lets other tasks run until `n` requests wait in line.
    async fn until_queued(a: &Admission, n: usize) {
        while a.queued() != n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_no_trace() {
        let a = admission(10, 10, 5_000);
        let (held, _) = a.admit(10).await.unwrap();
        let a2 = a.clone();
        let waiting = tokio::spawn(async move { a2.admit(10).await.map(|_| ()) });
        until_queued(&a, 1).await;
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(a.queued(), 0);
        drop(held);
        assert_eq!(a.in_use(), 0);
        // The whole budget is available again.
        let (_p, waited) = a.admit(10).await.unwrap();
        assert_eq!(waited, Duration::ZERO);
    }

    #[tokio::test]
    async fn a_full_queue_rejects_at_once() {
        let a = admission(10, 1, 5_000);
        let (_held, _) = a.admit(10).await.unwrap();
        let a2 = a.clone();
        let waiting = tokio::spawn(async move { a2.admit(5).await.map(|_| ()) });
        until_queued(&a, 1).await;
        assert!(a.saturated());
        assert_eq!(a.admit(5).await.unwrap_err(), Rejected::QueueFull);
        waiting.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_budget_is_turned_away_at_once() {
        let a = admission(100, 10, 1_000);
        let (_held, _) = a.admit(50).await.unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(a.admit(200).await.unwrap_err(), Rejected::TooLarge);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(a.queued(), 0);
        // It holds no one up: a request that fits is admitted at once.
        let (_p, waited) = a.admit(10).await.unwrap();
        assert_eq!(waited, Duration::ZERO);
    }

    #[tokio::test]
    async fn waiters_are_admitted_in_order_when_budget_frees() {
        let a = admission(10, 10, 5_000);
        let (held, _) = a.admit(10).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let a2 = a.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let (p, waited) = a2.admit(10).await.unwrap();
                order.lock().unwrap().push(i);
                drop(p);
                waited
            }));
            // Each joins the line before the next is spawned.
            until_queued(&a, i + 1).await;
        }
        drop(held);
        for t in tasks {
            assert!(t.await.unwrap() > Duration::ZERO);
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        assert_eq!(a.in_use(), 0);
    }
}
