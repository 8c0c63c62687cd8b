//! Who runs a guest, and at what kernel priority: fresh invocations run where
//! they were started (the caller's threads, normal priority); one that has
//! used its first slice of CPU moves to a pool of low-priority threads
//! (nice 10), so the kernel — not a userspace scheduler — preempts it the
//! moment a fresh request is runnable.
//!
//! The policy (the private `Meter`):
//!
//! - every poll of the invocation's future is timed, so time running wasm
//!   *and* synchronous host calls counts, and time spent waiting (sleeping,
//!   I/O: the future is not being polled then) does not. The clock is the
//!   monotonic one (a vDSO read, ~20 ns): the thread CPU clock is a system
//!   call, and four of them per hello cost more than the rest of the fast
//!   path's bookkeeping. A poll only differs from CPU time when the kernel
//!   preempts the thread mid-poll, which makes demotion come sooner;
//! - once the total reaches `demote_after` (1 ms by default) the future is
//!   handed, between two polls, to the background pool and finishes there
//!   (guests yield at every 1 ms epoch tick, so this happens within a tick);
//! - an invocation that ends within its first slice never touches the pool:
//!   the fast path pays two clock reads per poll and nothing else;
//! - an invocation started at [`Priority::Background`] skips the first
//!   slice and runs on the pool from its first poll (`wasm-run serve` starts
//!   a request so when the previous one on its connection was killed: short
//!   requests that keep trapping never reach the 1 ms that would demote
//!   them).
//!
//! The background pool has one thread per CPU, so demoted work still uses
//! every idle core; it only loses to normal-priority work.
//!
//! Why nice 10 and not 19 (or `SCHED_IDLE`): a demoted guest still takes
//! locks that fresh requests need (the instance pool's, when its store is
//! dropped; the allocator's). At nice 19 a thread competing with busy
//! normal-priority threads gets ~1.5% of a core, so a lock it holds can
//! stall a fresh request for tens of milliseconds (priority inversion: one
//! open-loop run measured hello's p99 at 15× its p99 alone). At nice 10 it
//! gets ~10% — enough to release locks and to keep making progress toward
//! its own deadline on a busy machine — while fresh requests still win
//! every contest for a core (p99 under abuse 1.26–1.36× alone, see
//! benches/RESULTS.md).

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Default CPU time an invocation runs at normal priority before it is
/// moved to the low-priority pool: 1 ms.
pub const DEFAULT_DEMOTE_AFTER: Duration = Duration::from_millis(1);

/// Nice value of the background threads (see the module doc for why 10).
const BACKGROUND_NICE: i32 = 10;

/// Where an invocation starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Priority {
    /// Where it was started, at normal priority, until it has used its
    /// first slice of CPU; then on the low-priority pool.
    #[default]
    Normal,
    /// On the low-priority pool from its first poll: it only gets the CPU
    /// that normal-priority work leaves. `wasm-run serve` starts a request
    /// so when the previous request on its connection was killed, so a
    /// client that keeps sending requests that trap or exhaust their
    /// limits competes with nobody's fresh requests.
    Background,
}

/// The low-priority pool, created on first use.
pub(crate) struct Scheduler {
    demote_after: Duration,
    threads: usize,
    pool: OnceLock<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("demote_after", &self.demote_after)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    pub(crate) fn new(demote_after: Duration, threads: usize) -> Self {
        Scheduler {
            demote_after,
            threads: threads.max(1),
            pool: OnceLock::new(),
        }
    }

    fn pool(&self) -> &tokio::runtime::Runtime {
        self.pool.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.threads)
                .thread_name("wasm-run-bg")
                .on_thread_start(lower_this_threads_priority)
                .enable_all()
                .build()
                .expect("the background pool's threads start")
        })
    }

    /// Runs `fut` to completion: here while it stays within its first slice
    /// of CPU (unless it starts at [`Priority::Background`]), then on the
    /// background pool. Returns its output and the CPU time it used.
    pub(crate) async fn run<F>(&self, fut: F, priority: Priority) -> (F::Output, Duration)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.run_with_clock(fut, PollClock, priority).await
    }

    async fn run_with_clock<F, C>(
        &self,
        fut: F,
        clock: C,
        priority: Priority,
    ) -> (F::Output, Duration)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
        C: CpuClock + Send + Unpin + 'static,
    {
        let mut metered = Metered {
            inner: Box::pin(fut),
            meter: Meter::new(self.demote_after),
            clock,
        };
        if priority == Priority::Normal {
            let first = std::future::poll_fn(|cx| match Pin::new(&mut metered).poll(cx) {
                Poll::Ready(out) => Poll::Ready(Some(out)),
                Poll::Pending if metered.meter.demote() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            })
            .await;
            if let Some(out) = first {
                return (out, metered.meter.used);
            }
        }
        // Demoted: finish on the low-priority pool. If the caller gives up
        // (drops this future), the guest is cancelled there too.
        let task = AbortOnDrop(self.pool().spawn(async move {
            let out = (&mut metered).await;
            (out, metered.meter.used)
        }));
        match task.await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => unreachable!("the background task is only aborted with its caller: {e}"),
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside another
        // runtime: let its threads finish in the background instead.
        if let Some(pool) = self.pool.take() {
            pool.shutdown_background();
        }
    }
}

/// Runs on each background thread as it starts.
fn lower_this_threads_priority() {
    // On Linux the nice value is per thread.
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), BACKGROUND_NICE) {
        tracing::warn!(error = %e, "cannot lower the priority of a background thread");
    }
}

/// A join handle that cancels its task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The per-invocation policy: CPU used so far against the foreground share.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meter {
    demote_after: Duration,
    used: Duration,
}

impl Meter {
    pub(crate) fn new(demote_after: Duration) -> Self {
        Meter {
            demote_after,
            used: Duration::ZERO,
        }
    }

    /// Records one poll that used `cpu`.
    pub(crate) fn record(&mut self, cpu: Duration) {
        self.used = self.used.saturating_add(cpu);
    }

    /// Whether the invocation has used its foreground share.
    pub(crate) fn demote(&self) -> bool {
        self.used >= self.demote_after
    }
}

/// Where CPU time is read from: the poll clock, or a fake in tests.
pub(crate) trait CpuClock {
    /// CPU time the current thread has used.
    fn now(&self) -> Duration;
}

/// The monotonic clock, read around each poll (see the module doc).
#[derive(Debug, Clone, Copy)]
struct PollClock;

impl CpuClock for PollClock {
    fn now(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

/// A future whose polls are timed with `clock`. The future is boxed so
/// that `Metered` itself may move between polls (and between threads).
struct Metered<F, C> {
    inner: Pin<Box<F>>,
    meter: Meter,
    clock: C,
}

impl<F: Future, C: CpuClock + Unpin> Future for Metered<F, C> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let start = this.clock.now();
        let polled = this.inner.as_mut().poll(cx);
        let cpu = this.clock.now().saturating_sub(start);
        this.meter.record(cpu);
        polled
    }
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): a
/// system call, so read only for invocations with a CPU-time limit.
pub(crate) fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// One invocation's CPU-time limit (`Limits::max_cpu`), measured with the
/// thread CPU clock around each poll of the guest's call, on whichever
/// thread polls it, and checked at every epoch tick inside a poll and after
/// every poll. Shared between the poll wrapper and the store's epoch
/// callback.
#[derive(Debug)]
pub(crate) struct CpuBudget {
    limit: Duration,
    /// CPU of the polls that ended, in nanoseconds.
    used_ns: std::sync::atomic::AtomicU64,
    /// The thread CPU clock when the current poll began, in nanoseconds;
    /// `u64::MAX` between polls.
    poll_start_ns: std::sync::atomic::AtomicU64,
    exceeded: std::sync::atomic::AtomicBool,
}

impl CpuBudget {
    pub(crate) fn new(limit: Duration) -> Self {
        CpuBudget {
            limit,
            used_ns: 0.into(),
            poll_start_ns: u64::MAX.into(),
            exceeded: false.into(),
        }
    }

    /// A poll of the guest's call begins on this thread.
    pub(crate) fn begin(&self) {
        IN_METERED_POLL.set(true);
        let now = thread_cpu_time().as_nanos() as u64;
        self.poll_start_ns
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// The poll that began on this thread ended.
    pub(crate) fn end(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        IN_METERED_POLL.set(false);
        let start = self.poll_start_ns.swap(u64::MAX, Relaxed);
        if start != u64::MAX {
            let now = thread_cpu_time().as_nanos() as u64;
            self.used_ns.fetch_add(now.saturating_sub(start), Relaxed);
        }
        self.check();
    }

    /// CPU used so far, the current poll included (when read on the thread
    /// that polls).
    pub(crate) fn used(&self) -> Duration {
        use std::sync::atomic::Ordering::Relaxed;
        let mut ns = self.used_ns.load(Relaxed);
        let start = self.poll_start_ns.load(Relaxed);
        if start != u64::MAX {
            let now = thread_cpu_time().as_nanos() as u64;
            ns = ns.saturating_add(now.saturating_sub(start));
        }
        Duration::from_nanos(ns)
    }

    /// Whether the limit is passed (raising the flag, which stays raised).
    pub(crate) fn check(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.exceeded.load(Relaxed) {
            return true;
        }
        if self.used() > self.limit {
            self.exceeded.store(true, Relaxed);
            return true;
        }
        false
    }

    /// Adds `spent`, CPU the invocation caused outside its own polls (see
    /// [`Charged`]), and checks the limit.
    fn charge(&self, spent: Duration) {
        self.used_ns.fetch_add(
            spent.as_nanos().min(u128::from(u64::MAX)) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.check();
    }

    /// Whether the limit was passed.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The limit.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }
}

thread_local! {
    /// Whether this thread is inside a poll that [`CpuBudget::begin`]
    /// meters, so that work polled inside it is not counted twice.
    static IN_METERED_POLL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A future whose polls are charged to an invocation's CPU budget: work the
/// invocation started that runs outside its own polls, such as its outgoing
/// connections' tasks (TLS, HTTP parsing). Once the budget is passed it
/// ends with `exceeded()` instead of being polled again.
pub(crate) struct Charged<F, E> {
    inner: Pin<Box<F>>,
    cpu: std::sync::Arc<CpuBudget>,
    exceeded: E,
}

impl<F, E> Charged<F, E> {
    pub(crate) fn new(inner: F, cpu: std::sync::Arc<CpuBudget>, exceeded: E) -> Self {
        Charged {
            inner: Box::pin(inner),
            cpu,
            exceeded,
        }
    }
}

impl<F, E> Future for Charged<F, E>
where
    F: Future,
    E: Fn() -> F::Output + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.cpu.exceeded() {
            return Poll::Ready((self.exceeded)());
        }
        if IN_METERED_POLL.get() {
            // Inside the invocation's own poll, which is metered already.
            return self.inner.as_mut().poll(cx);
        }
        let started = thread_cpu_time();
        let polled = self.inner.as_mut().poll(cx);
        self.cpu.charge(thread_cpu_time().saturating_sub(started));
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A CPU clock that only moves when a test future says it "used" CPU.
    #[derive(Clone, Default)]
    struct FakeClock(Arc<AtomicU64>);

    impl FakeClock {
        fn spend(&self, d: Duration) {
            self.0.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    impl CpuClock for FakeClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::Relaxed))
        }
    }

    /// A guest stand-in: each poll "uses" `per_poll` of CPU, then yields,
    /// until it has been polled `polls` times; it returns the name of the
    /// thread that finished it.
    async fn guest(clock: FakeClock, per_poll: Duration, polls: u32) -> Option<String> {
        for _ in 0..polls {
            clock.spend(per_poll);
            tokio::task::yield_now().await;
        }
        clock.spend(per_poll);
        std::thread::current().name().map(str::to_string)
    }

    /// Runs a [`guest`] under `s`, started at `priority`, on a fake clock: the thread that
    /// finished it and the CPU time the scheduler counted.
    async fn run_guest(
        s: &Scheduler,
        per_poll: Duration,
        polls: u32,
        priority: Priority,
    ) -> (Option<String>, Duration) {
        let clock = FakeClock::default();
        let work = guest(clock.clone(), per_poll, polls);
        s.run_with_clock(work, clock, priority).await
    }

    #[test]
    fn the_meter_demotes_once_the_share_is_used() {
        let mut m = Meter::new(Duration::from_millis(1));
        m.record(Duration::from_micros(400));
        assert!(!m.demote());
        m.record(Duration::from_micros(599));
        assert!(!m.demote());
        m.record(Duration::from_micros(1));
        assert!(m.demote());
    }

    #[tokio::test]
    async fn a_short_invocation_stays_and_never_starts_the_pool() {
        let s = Scheduler::new(Duration::from_millis(1), 2);
        let (thread, used) = run_guest(&s, Duration::from_micros(100), 3, Priority::Normal).await;
        assert_ne!(thread.as_deref(), Some("wasm-run-bg"));
        assert_eq!(used, Duration::from_micros(400));
        assert!(
            s.pool.get().is_none(),
            "the fast path must not create the pool"
        );
    }

    #[tokio::test]
    async fn a_long_invocation_moves_to_the_low_priority_pool() {
        let s = Scheduler::new(Duration::from_millis(1), 2);
        let (thread, used) = run_guest(&s, Duration::from_micros(300), 10, Priority::Normal).await;
        assert_eq!(thread.as_deref(), Some("wasm-run-bg"));
        assert_eq!(
            used,
            Duration::from_micros(3300),
            "CPU is counted on both sides"
        );
    }

    #[tokio::test]
    async fn a_background_invocation_runs_on_the_pool_from_its_first_poll() {
        let s = Scheduler::new(Duration::from_millis(1), 2);
        // Short enough to finish in place at normal priority.
        let (thread, used) =
            run_guest(&s, Duration::from_micros(100), 3, Priority::Background).await;
        assert_eq!(thread.as_deref(), Some("wasm-run-bg"));
        assert_eq!(used, Duration::from_micros(400));
    }

    #[tokio::test]
    async fn waiting_is_not_cpu() {
        let s = Scheduler::new(Duration::from_millis(1), 2);
        // Many polls, each using nothing (a guest blocked in host calls).
        let (thread, used) = run_guest(&s, Duration::ZERO, 50, Priority::Normal).await;
        assert_ne!(thread.as_deref(), Some("wasm-run-bg"));
        assert_eq!(used, Duration::ZERO);
    }

    #[test]
    fn background_threads_run_at_the_lowest_priority() {
        let s = Scheduler::new(Duration::from_millis(1), 1);
        let nice = s.pool().block_on(async {
            tokio::task::spawn(async {
                rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            })
            .await
            .unwrap()
        });
        assert_eq!(nice.unwrap(), BACKGROUND_NICE);
    }

    #[test]
    fn a_cpu_budget_counts_work_not_waiting() {
        let b = CpuBudget::new(Duration::from_millis(20));
        b.begin();
        std::thread::sleep(Duration::from_millis(30));
        b.end();
        assert!(!b.exceeded(), "sleeping is not CPU: {:?}", b.used());
        b.begin();
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        // Inside the poll the running total is seen (the epoch check).
        assert!(b.check(), "{x}: {:?}", b.used());
        b.end();
        assert!(b.exceeded());
        assert!(b.used() >= Duration::from_millis(20));
    }

    #[test]
    fn the_poll_clock_counts_the_time_a_poll_works() {
        // Demotion relies on this: 2 ms of work inside a poll reads as at
        // least 2 ms on the clock the meter uses.
        let before = PollClock.now();
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(2) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let counted = PollClock.now() - before;
        assert!(counted >= Duration::from_millis(2), "{counted:?} ({x})");
        assert!(
            Meter {
                demote_after: Duration::from_millis(1),
                used: counted,
            }
            .demote()
        );
    }
}
