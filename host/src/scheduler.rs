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
//! every idle core; it only loses to normal-priority work. While short
//! invocations are about (one finished within its first slice in the last
//! [`SHORT_WORK_WINDOW`]), the pool's threads keep off one core (their CPU
//! affinity, changed on the two transitions only), so a fresh request finds
//! an idle core instead of preempting a spinning guest; a service whose
//! invocations are all long keeps every core (the private `Reserve`).
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
    reserve: std::sync::Arc<Reserve>,
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
        let threads = threads.max(1);
        Scheduler {
            demote_after,
            threads,
            pool: OnceLock::new(),
            reserve: std::sync::Arc::new(Reserve::new()),
        }
    }

    fn pool(&self) -> &tokio::runtime::Runtime {
        self.pool.get_or_init(|| {
            let (started, stopped) = (self.reserve.clone(), self.reserve.clone());
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.threads)
                .thread_name("wasm-run-bg")
                .on_thread_start(move || {
                    lower_this_threads_priority();
                    started.thread_started();
                })
                .on_thread_stop(move || stopped.thread_stopped())
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
                self.reserve.short_finished(PollClock.now());
                return (out, metered.meter.used);
            }
        }
        // Demoted: finish on the low-priority pool. If the caller gives up
        // (drops this future), the guest is cancelled there too.
        let reserve = std::sync::Arc::clone(&self.reserve);
        let task = AbortOnDrop(self.pool().spawn(async move {
            let background = Background {
                inner: &mut metered,
                reserve: &reserve,
            };
            let out = background.await;
            (out, metered.meter.used)
        }));
        match task.await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => unreachable!("the background task is only aborted with its caller: {e}"),
        }
    }
}

/// How long after a short invocation (one that finished within its first
/// slice) the background threads keep off one core: 1 s.
pub const SHORT_WORK_WINDOW: Duration = Duration::from_secs(1);

/// Where the background threads may run: on every CPU this process may
/// use, unless an invocation finished within its first slice in the last
/// [`SHORT_WORK_WINDOW`] — then on all but one, so that one core is left
/// to short, latency-sensitive work while there is some. A service whose
/// requests are all long (every one demoted) keeps every core; beside
/// short requests, long ones share one core fewer. The kernel still
/// schedules; this only moves the threads' CPU affinity, on the two
/// transitions (a system call per background thread), never per request.
#[derive(Debug)]
struct Reserve {
    /// The background threads (added as each starts, removed as it stops).
    threads: std::sync::Mutex<Vec<rustix::thread::Pid>>,
    /// Every CPU the process may use, and all but one of them (`None`
    /// with a single CPU: nothing to keep free).
    all: rustix::thread::CpuSet,
    fewer: Option<rustix::thread::CpuSet>,
    /// When an invocation last finished within its first slice, in
    /// nanoseconds of the poll clock; `u64::MAX`: never.
    last_short_ns: std::sync::atomic::AtomicU64,
    /// Whether the threads are kept off a core now.
    keeping: std::sync::atomic::AtomicBool,
}

impl Reserve {
    fn new() -> Reserve {
        let all = rustix::thread::sched_getaffinity(None).unwrap_or_else(|_| {
            let mut one = rustix::thread::CpuSet::new();
            one.set(0);
            one
        });
        let fewer = (all.count() > 1).then(|| {
            let mut fewer = all;
            if let Some(last) = (0..rustix::thread::CpuSet::MAX_CPU)
                .rev()
                .find(|&c| all.is_set(c))
            {
                fewer.unset(last);
            }
            fewer
        });
        Reserve {
            threads: Default::default(),
            all,
            fewer,
            last_short_ns: u64::MAX.into(),
            keeping: false.into(),
        }
    }

    /// A background thread starts (on it): it takes the current affinity.
    fn thread_started(&self) {
        let tid = rustix::thread::gettid();
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.push(tid);
        // Whatever it inherited from the thread that started it.
        if let Some(fewer) = &self.fewer {
            let set = if self.keeping.load(std::sync::atomic::Ordering::SeqCst) {
                fewer
            } else {
                &self.all
            };
            let _ = rustix::thread::sched_setaffinity(Some(tid), set);
        }
    }

    /// A background thread stops (on it).
    fn thread_stopped(&self) {
        let tid = rustix::thread::gettid();
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| *t != tid);
    }

    /// An invocation finished within its first slice, at `now` of the poll
    /// clock: keep a core free from now on, for the window.
    fn short_finished(&self, now: Duration) {
        use std::sync::atomic::Ordering::SeqCst;
        let ns = now.as_nanos().min(u128::from(u64::MAX - 1)) as u64;
        self.last_short_ns.store(ns, SeqCst);
        if !self.keeping.load(SeqCst) {
            self.update(now);
        }
    }

    /// A background thread is about to poll a demoted invocation at `now`:
    /// give the core back once the window has passed.
    fn background_poll(&self, now: Duration) {
        if self.keeping.load(std::sync::atomic::Ordering::SeqCst) && !self.recent(now) {
            self.update(now);
        }
    }

    fn recent(&self, now: Duration) -> bool {
        let last = self.last_short_ns.load(std::sync::atomic::Ordering::SeqCst);
        last != u64::MAX
            && now.as_nanos().saturating_sub(u128::from(last)) < SHORT_WORK_WINDOW.as_nanos()
    }

    /// Moves the threads to where they should run at `now`, if they are not
    /// there yet.
    fn update(&self, now: Duration) {
        let Some(fewer) = &self.fewer else {
            return;
        };
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        // Decided again after each move: a short invocation that finished
        // meanwhile (seeing the old state, so not calling this) is not lost.
        loop {
            let keep = self.recent(now);
            if keep == self.keeping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let set = if keep { fewer } else { &self.all };
            for tid in threads.iter() {
                let _ = rustix::thread::sched_setaffinity(Some(*tid), set);
            }
            self.keeping
                .store(keep, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A demoted invocation's future: before each poll, the background threads
/// get back the core kept for short work once none has been seen for the
/// window.
struct Background<'a, F> {
    inner: F,
    reserve: &'a Reserve,
}

impl<F: Future + Unpin> Future for Background<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.reserve.background_poll(PollClock.now());
        Pin::new(&mut self.inner).poll(cx)
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
        use std::sync::atomic::Ordering::Relaxed;
        let spent = spent.as_nanos().min(u128::from(u64::MAX)) as u64;
        // Only what is counted already, not the guest's poll in flight:
        // that one is timed with another thread's clock, which this thread
        // cannot read (`used` is right only on the polling thread).
        let total = self.used_ns.fetch_add(spent, Relaxed).saturating_add(spent);
        if Duration::from_nanos(total) > self.limit {
            self.exceeded.store(true, Relaxed);
        }
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

    /// The background threads run on every CPU until a short invocation
    /// finishes; for the next second they keep off one CPU (read back from
    /// the kernel); once the window has passed, the next background poll
    /// gives it back.
    #[test]
    fn background_threads_keep_off_a_core_only_while_short_work_is_about() {
        let reserve = Arc::new(Reserve::new());
        let Some(fewer) = reserve.fewer else {
            return; // one CPU: nothing to keep free
        };
        let on = |reserve: &Arc<Reserve>, what: &'static str| {
            let reserve = reserve.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                reserve.thread_started();
                tx.send(()).unwrap();
                let _ = go_rx.recv();
                let now = rustix::thread::sched_getaffinity(None).unwrap();
                reserve.thread_stopped();
                now
            });
            rx.recv().unwrap();
            (thread, go_tx, what)
        };
        let count = |(thread, go, _): (
            std::thread::JoinHandle<rustix::thread::CpuSet>,
            std::sync::mpsc::Sender<()>,
            &str,
        )| {
            go.send(()).unwrap();
            thread.join().unwrap().count()
        };
        let t0 = Duration::from_secs(100);
        assert_eq!(count(on(&reserve, "before")), reserve.all.count());
        let during = on(&reserve, "during");
        reserve.short_finished(t0);
        assert_eq!(
            count(during),
            fewer.count(),
            "kept off one CPU beside short work"
        );
        let after = on(&reserve, "after");
        reserve.background_poll(t0 + SHORT_WORK_WINDOW + Duration::from_millis(1));
        assert_eq!(
            count(after),
            reserve.all.count(),
            "every CPU once the window passed"
        );
    }
}
