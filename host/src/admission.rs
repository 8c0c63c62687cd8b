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
//! # Tenants
//!
//! Requests belong to tenants ([`Admission::tenant`]; `wasm-run serve`
//! makes each route one, or groups routes into a named tenant). Each tenant
//! has its own FIFO queue, bounded on its own, so one tenant's flood fills
//! only its own queue. When budget frees, it goes to the waiting tenant
//! whose budget in use, divided by its weight, is smallest (ties: the one
//! served least recently): tenants that are waiting share the budget in
//! proportion to their weights, and a tenant that has been quiet for longer
//! than [`RESERVE_WINDOW`] leaves its share to the others. A tenant seen
//! within the window keeps its next request's budget from the others'
//! floods (see [`RESERVE_WINDOW`]), so its requests are admitted at once
//! instead of waiting for a flood's requests to end. A tenant may also be
//! held to a maximum share of the budget, even when the rest is idle.
//!
//! Because each request is *killed* at its cap (never allowed past it), the
//! budget — which counts each request's cap plus its guest's fixed host
//! allowance — is a real bound on the memory guests make the host hold, not
//! a guess: an
//! event-loop server must pick a concurrency limit and hope; this host knows
//! what each admitted request may use.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use crate::slots::Slots;
pub use crate::tenant::{Need, RESERVE_WINDOW, TenantConfig, TenantId, TenantStats};
use crate::tenant::{State, TenantState, Waiter};

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

/// How a request joined: admitted at once (its budget is held), or in its
/// tenant's line with a ticket and the channel its grant comes by.
enum Joined {
    Now(TenantId),
    Waiting(TenantId, u64, oneshot::Receiver<()>),
}

/// Cleans up after an `admit` future dropped while queued.
struct QueueGuard<'a> {
    admission: &'a Arc<Admission>,
    tenant: TenantId,
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
        if !s.leave_queue(self.tenant, self.ticket) {
            // Granted, but nobody will hold the permit: give it back.
            s.take_back(self.tenant, self.need);
        }
        self.admission.grant_waiters(&mut s);
    }
}

/// Budget held by one admitted request; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    tenant: TenantId,
    amount: Need,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release(self.tenant, self.amount);
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
        let default = TenantState::new(
            "default".into(),
            &TenantConfig::default(),
            config.budget,
            config.max_queue,
        );
        Arc::new(Admission {
            config,
            pool,
            state: Mutex::new(State {
                in_use: 0,
                slots_in_use: Slots::default(),
                next_ticket: 0,
                grants: 0,
                queued: 0,
                tenants: vec![default],
            }),
        })
    }

    /// The tenant named `name`, created with `config` the first time it is
    /// asked for; asked for again, it keeps its queue and what it holds and
    /// takes the new `config` (a reload may change weights).
    pub fn tenant(&self, name: &str, config: &TenantConfig) -> TenantId {
        let mut s = self.lock();
        if let Some(i) = s.tenants.iter().position(|t| &*t.name == name) {
            s.tenants[i].configure(config, self.config.budget, self.config.max_queue);
            return TenantId(i);
        }
        s.tenants.push(TenantState::new(
            name.into(),
            config,
            self.config.budget,
            self.config.max_queue,
        ));
        TenantId(s.tenants.len() - 1)
    }

    /// What every tenant holds and has had.
    pub fn tenant_stats(&self) -> Vec<TenantStats> {
        self.lock()
            .tenants
            .iter()
            .map(|t| TenantStats {
                name: t.name.clone(),
                weight: t.weight,
                in_use: t.in_use,
                queued: t.queue.len(),
                admitted: t.admitted,
                rejected_queue_full: t.rejected_queue_full,
                rejected_timeout: t.rejected_timeout,
            })
            .collect()
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

    /// Whether tenant `t` may take `bytes` more without taking what the
    /// other recently active tenants' next requests need (see
    /// [`RESERVE_WINDOW`]): always within its own fair share; past it, only
    /// if the budget left covers, for every other recently active tenant
    /// below its share, its last request's need (or what its share has
    /// left, if less).
    fn leaves_reserves(&self, s: &State, t: usize, bytes: u64, now: tokio::time::Instant) -> bool {
        let budget = u128::from(self.config.budget);
        let recent = |i: usize, u: &TenantState| i == t || u.recent(now);
        let weights: u128 = s
            .tenants
            .iter()
            .enumerate()
            .filter(|(i, u)| recent(*i, u))
            .map(|(_, u)| u128::from(u.weight))
            .sum();
        let fair = |u: &TenantState| (budget * u128::from(u.weight) / weights.max(1)) as u64;
        let me = &s.tenants[t];
        if me.in_use.saturating_add(bytes) <= fair(me) {
            return true;
        }
        let reserved: u64 = s
            .tenants
            .iter()
            .enumerate()
            .filter(|(i, u)| *i != t && recent(*i, u))
            .map(|(_, u)| fair(u).saturating_sub(u.in_use).min(u.last_need))
            .sum();
        s.in_use.saturating_add(bytes).saturating_add(reserved) <= self.config.budget
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

    /// Requests waiting for budget, over every tenant.
    pub fn queued(&self) -> usize {
        self.lock().queued
    }

    /// Whether the instance is saturated: as many requests wait, over every
    /// tenant, as one queue holds (`max_queue`).
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
        self.admit_as(TenantId::DEFAULT, need).await
    }

    /// [`Admission::admit_need`] for a request of `tenant`: it waits in
    /// that tenant's queue, and the budget is shared between the tenants
    /// that wait (see the module doc).
    pub async fn admit_as(
        self: &Arc<Self>,
        tenant: TenantId,
        need: Need,
    ) -> Result<(Permit, Duration), Rejected> {
        let start = Instant::now();
        if need.bytes > self.config.budget {
            return Err(Rejected::TooLarge);
        }
        let (tenant, ticket, mut granted) = match self.join(tenant, need)? {
            Joined::Now(tenant) => return Ok((self.permit(tenant, need), Duration::ZERO)),
            Joined::Waiting(tenant, ticket, granted) => (tenant, ticket, granted),
        };
        // If this future is dropped while waiting (the client went away),
        // the guard takes the waiter out of the line, or gives back a grant
        // that raced with the drop.
        let mut guard = QueueGuard {
            admission: self,
            tenant,
            ticket,
            need,
            armed: true,
        };
        // `granted` stays alive until the queue is checked under the lock, so
        // a grant racing with the timeout is never lost.
        let result = match tokio::time::timeout(self.config.queue_timeout, &mut granted).await {
            Ok(Ok(())) => Ok((self.permit(tenant, need), start.elapsed())),
            _ => {
                let mut s = self.lock();
                if s.leave_queue(tenant, ticket) {
                    s.tenants[tenant.0].rejected_timeout += 1;
                    // Leaving may let the next in line through.
                    self.grant_waiters(&mut s);
                    Err(Rejected::Timeout)
                } else {
                    // Granted just as the wait timed out: the budget is ours.
                    drop(s);
                    Ok((self.permit(tenant, need), start.elapsed()))
                }
            }
        };
        guard.armed = false;
        result
    }

    /// Admits a request of `tenant` at once if nobody waits and it fits,
    /// or puts it in its tenant's line (unless that line is full).
    fn join(&self, tenant: TenantId, need: Need) -> Result<Joined, Rejected> {
        let mut s = self.lock();
        // A tenant of another controller is this one's default.
        let t = if tenant.0 < s.tenants.len() {
            tenant.0
        } else {
            0
        };
        let tenant = TenantId(t);
        let now = tokio::time::Instant::now();
        s.tenants[t].last_seen = Some(now);
        s.tenants[t].last_need = need.bytes;
        // Nobody waits and it fits (beside the other tenants' reserves).
        if s.queued == 0
            && self.fits(&s, need)
            && s.tenants[t].within_share(need.bytes)
            && self.leaves_reserves(&s, t, need.bytes, now)
        {
            s.hold(tenant, need);
            return Ok(Joined::Now(tenant));
        }
        if s.tenants[t].queue.len() >= s.tenants[t].max_queue {
            s.tenants[t].rejected_queue_full += 1;
            return Err(Rejected::QueueFull);
        }
        let (tx, rx) = oneshot::channel();
        s.next_ticket += 1;
        let ticket = s.next_ticket;
        s.tenants[t].queue.push_back(Waiter {
            ticket,
            need,
            grant: tx,
        });
        s.queued += 1;
        // It may be this tenant's turn already.
        self.grant_waiters(&mut s);
        Ok(Joined::Waiting(tenant, ticket, rx))
    }

    fn permit(self: &Arc<Self>, tenant: TenantId, amount: Need) -> Permit {
        Permit {
            admission: self.clone(),
            tenant,
            amount,
        }
    }

    fn release(&self, tenant: TenantId, amount: Need) {
        let mut s = self.lock();
        s.take_back(tenant, amount);
        self.grant_waiters(&mut s);
    }

    /// Grants budget to waiters while the one whose turn it is fits: the
    /// head of the waiting tenant with the least budget in use per unit of
    /// weight (among those within their maximum share).
    fn grant_waiters(&self, s: &mut State) {
        let now = tokio::time::Instant::now();
        while let Some(t) = s.next_tenant() {
            let need = s.tenants[t].queue.front().expect("a waiting tenant").need;
            // The tenant whose turn it is uses the least per unit of weight:
            // if it may not take this, no other waiting tenant may either.
            if !self.fits(s, need) || !self.leaves_reserves(s, t, need.bytes, now) {
                break;
            }
            let w = s.tenants[t].queue.pop_front().expect("head exists");
            s.queued -= 1;
            s.hold(TenantId(t), w.need);
            // The receiver lives as long as the waiter's `admit` future, whose
            // guard handles a grant that arrives as it is dropped.
            let _ = w.grant.send(());
        }
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

    /// Admits a request for `bytes`, which must not wait.
    async fn admitted_at_once(a: &Arc<Admission>, bytes: u64) {
        let (_permit, waited) = a.admit(bytes).await.unwrap();
        assert_eq!(waited, Duration::ZERO);
    }

    /// A request for `bytes` that has joined the line.
    async fn waiter(a: &Arc<Admission>, bytes: u64) -> tokio::task::JoinHandle<()> {
        let a2 = a.clone();
        let queued = a.queued();
        let waiting = tokio::spawn(async move { drop(a2.admit(bytes).await) });
        until_queued(a, queued + 1).await;
        waiting
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_no_trace() {
        let a = admission(10, 10, 5_000);
        let (held, _) = a.admit(10).await.unwrap();
        let waiting = waiter(&a, 10).await;
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(a.queued(), 0);
        drop(held);
        assert_eq!(a.in_use(), 0);
        // The whole budget is available again.
        admitted_at_once(&a, 10).await;
    }

    #[tokio::test]
    async fn a_full_queue_rejects_at_once() {
        let a = admission(10, 1, 5_000);
        let (_held, _) = a.admit(10).await.unwrap();
        let waiting = waiter(&a, 5).await;
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
        admitted_at_once(&a, 10).await;
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

    // The tenant policy, on Tokio's paused clock: time only moves when
    // every task waits, so service times are exact.

    /// A request of `tenant` that holds `bytes` for `service` once admitted;
    /// resolves to how long it waited, or why it was turned away.
    fn request(
        a: &Arc<Admission>,
        tenant: TenantId,
        bytes: u64,
        service: Duration,
    ) -> tokio::task::JoinHandle<Result<Duration, Rejected>> {
        let a = a.clone();
        tokio::spawn(async move {
            let need = Need {
                bytes,
                slots: Slots::default(),
            };
            let (permit, waited) = a.admit_as(tenant, need).await?;
            tokio::time::sleep(service).await;
            drop(permit);
            Ok(waited)
        })
    }

    /// Requests in flight, aborted when dropped.
    struct Backlog(Vec<tokio::task::JoinHandle<Result<Duration, Rejected>>>);

    impl Drop for Backlog {
        fn drop(&mut self) {
            self.0.iter().for_each(|t| t.abort());
        }
    }

    impl Backlog {
        /// `n` requests of `tenant`, each holding one byte for `service`
        /// once admitted, and a turn for them to reach the controller.
        async fn of(a: &Arc<Admission>, tenant: TenantId, n: usize, service: Duration) -> Self {
            let backlog = Backlog((0..n).map(|_| request(a, tenant, 1, service)).collect());
            tokio::task::yield_now().await;
            backlog
        }

        /// Awaits every request; how long each waited to be admitted.
        async fn waits(mut self) -> Vec<Duration> {
            let mut waits = Vec::new();
            for t in std::mem::take(&mut self.0) {
                waits.push(t.await.unwrap().unwrap());
            }
            waits
        }
    }

    fn weighted(weight: u32) -> TenantConfig {
        TenantConfig {
            weight,
            ..TenantConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backlogged_tenants_share_the_budget_by_weight() {
        let a = admission(4, 1_000, 3_600_000);
        let light = a.tenant("light", &weighted(1));
        let heavy = a.tenant("heavy", &weighted(3));
        let second = Duration::from_secs(1);
        let both = |_| [light, heavy].map(|t| request(&a, t, 1, second));
        let _backlog = Backlog((0..200).flat_map(both).collect());
        // After 20 s of both being backlogged, the 80 grants so far split
        // 1:3 (every second, 4 requests end and 4 are admitted).
        tokio::time::sleep(Duration::from_millis(20_500)).await;
        let stats = a.tenant_stats();
        let admitted = |name: &str| stats.iter().find(|t| &*t.name == name).unwrap().admitted;
        let (l, h) = (admitted("light"), admitted("heavy"));
        assert_eq!(l + h, 84, "4 at the start, then 4 a second");
        assert!(
            (20..=22).contains(&l) && (62..=64).contains(&h),
            "light {l}, heavy {h}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_alone_uses_the_whole_budget() {
        let a = admission(4, 1_000, 3_600_000);
        let _idle = a.tenant("idle", &weighted(100));
        let busy = a.tenant("busy", &weighted(1));
        let tasks = Backlog::of(&a, busy, 8, Duration::from_secs(1)).await;
        // Work-conserving: the idle tenant's (large) share is not held back.
        assert_eq!(a.in_use(), 4);
        let waits: Vec<_> = tasks.waits().await;
        assert_eq!(waits.iter().filter(|w| w.is_zero()).count(), 4);
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_delays_a_victim_by_at_most_one_service_time() {
        let a = admission(4, 1_000, 3_600_000);
        let flood = a.tenant("flood", &weighted(1));
        let victim = a.tenant("victim", &weighted(1));
        let service = Duration::from_secs(2);
        let _flooders = Backlog::of(&a, flood, 500, service).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.queued(), 496);
        // Every victim request, whenever it comes, waits at most until one
        // flood request ends — never behind the flood's queue.
        for _ in 0..5 {
            let waited = request(&a, victim, 1, Duration::from_millis(10))
                .await
                .unwrap()
                .unwrap();
            assert!(waited <= service, "waited {waited:?}");
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        // The flood is still served meanwhile, in its share.
        let stats = a.tenant_stats();
        assert!(stats.iter().find(|t| &*t.name == "flood").unwrap().admitted > 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recent_tenants_next_request_is_not_handed_to_a_flood() {
        let a = admission(4, 1_000, 3_600_000);
        let flood = a.tenant("flood", &weighted(1));
        let victim = a.tenant("victim", &weighted(1));
        // The victim was here a moment ago; then the flood comes.
        request(&a, victim, 1, Duration::from_millis(10))
            .await
            .unwrap()
            .unwrap();
        let _flooders = Backlog::of(&a, flood, 500, Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The flood holds all but the victim's next request...
        assert_eq!(a.in_use(), 3);
        // ...so each victim request is admitted at once, never behind one
        // of the flood's (2 s) requests.
        for _ in 0..20 {
            let waited = request(&a, victim, 1, Duration::from_millis(10))
                .await
                .unwrap()
                .unwrap();
            assert!(waited < Duration::from_millis(50), "waited {waited:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Quiet for longer than the window, the victim leaves its share to
        // the flood: work-conserving again.
        tokio::time::sleep(RESERVE_WINDOW + Duration::from_secs(3)).await;
        assert_eq!(a.in_use(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn no_tenant_starves_however_small_its_weight() {
        let a = admission(2, 1_000, 3_600_000);
        let small = a.tenant("small", &weighted(1));
        let big = a.tenant("big", &weighted(1_000));
        let _bigs = Backlog::of(&a, big, 300, Duration::from_secs(1)).await;
        // The big tenant holds the whole budget; a small request still gets
        // its turn as soon as one of them ends, not after all of them.
        let waited = request(&a, small, 1, Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert!(waited <= Duration::from_secs(1), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn each_tenant_has_its_own_queue_bound() {
        let a = admission(1, 2, 3_600_000);
        let flood = a.tenant("flood", &TenantConfig::default());
        let victim = a.tenant("victim", &TenantConfig::default());
        let _held = Backlog::of(&a, flood, 3, Duration::from_secs(10)).await;
        // One admitted, two queued: the flood's queue is full ...
        let turned_away = request(&a, flood, 1, Duration::ZERO).await.unwrap();
        assert_eq!(turned_away, Err(Rejected::QueueFull));
        // ... and the victim's is not.
        let victim_request = request(&a, victim, 1, Duration::ZERO);
        tokio::task::yield_now().await;
        assert_eq!(a.queued(), 3);
        assert!(victim_request.await.unwrap().is_ok());
        let stats = a.tenant_stats();
        let flood_stats = stats.iter().find(|t| &*t.name == "flood").unwrap();
        assert_eq!(flood_stats.rejected_queue_full, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_maximum_share_holds_even_when_the_rest_is_idle() {
        let a = admission(4, 1_000, 3_600_000);
        let capped = a.tenant(
            "capped",
            &TenantConfig {
                max_share: Some(0.5),
                ..TenantConfig::default()
            },
        );
        let tasks = Backlog::of(&a, capped, 4, Duration::from_secs(1)).await;
        assert_eq!(a.in_use(), 2);
        assert_eq!(a.queued(), 2);
        // The others are admitted as the first two end.
        let waits = tasks.waits().await;
        assert_eq!(waits.iter().filter(|w| w.is_zero()).count(), 2);
    }
}
