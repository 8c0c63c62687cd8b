//! The epoch tickers: a thread per engine that advances its epoch every
//! tick while any invocation runs (and for [`IDLE_GRACE`] after), so that
//! deadlines, CPU and memory checks and the scheduler's yields happen; an
//! idle process parks it instead of waking a thousand times a second. The
//! thread holds only a weak reference to its engine and ends with it.
//!
//! The tickers also ring the invocations' deadlines ([`Activity::alarm`]):
//! a guest blocked in a host call gives no epoch check, so something must
//! wake its invocation when its time is up. The tickers do it at their
//! next tick, which needs nothing of the runtime the invocation is polled
//! on (no Tokio timers). They keep ticking while any alarm waits, also
//! after every invocation ended (a WASI 0.3 response body or an outgoing
//! connection keeps its request's deadline after the store is gone).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a ticker keeps ticking after the last invocation ended before
/// it parks. A server that gets a request at least every second never
/// parks its ticker: parking between requests 200 ms apart measured a
/// little worse for hello's latency at that rate (p50 +0.1–0.6 ms in four
/// of five runs; likely the cores had gone idle), so only a server idle
/// for longer stops the ticks.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// How long a parked ticker waits before it looks again whether its engine
/// is gone (and its thread should end).
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub(crate) fn spawn_epoch_ticker(
    engine: &wasmtime::Engine,
    tick: Duration,
    activity: Arc<Activity>,
) -> Result<()> {
    let weak = engine.weak();
    let grace = IDLE_GRACE.as_nanos() / tick.as_nanos().max(1);
    std::thread::Builder::new()
        .name("wasm-run-epoch".into())
        .spawn(move || {
            let mut idle_ticks = 0;
            loop {
                if activity.busy() {
                    idle_ticks = 0;
                } else if idle_ticks >= grace {
                    if !activity.park(IDLE_CHECK) {
                        if weak.upgrade().is_none() {
                            break;
                        }
                        continue;
                    }
                    idle_ticks = 0;
                } else {
                    idle_ticks += 1;
                }
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => {
                        engine.increment_epoch();
                        activity.ticks.fetch_add(1, Ordering::Relaxed);
                        activity.ring();
                    }
                    None => break,
                }
            }
        })
        .map_err(|e| Error::Engine {
            message: format!("cannot start the epoch ticker thread: {e}"),
        })?;
    Ok(())
}

/// Whether any invocation of an engine is running. Its epoch tickers tick
/// only then (and for [`IDLE_GRACE`], 1 s, after): the ticks exist to interrupt
/// running wasm (deadlines, CPU and memory checks, the yields the scheduler
/// demotes at), and a store only exists while its invocation runs. A parked
/// ticker waits on a condition variable, waking every [`IDLE_CHECK`] (1 s)
/// to see whether its engine is gone.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    running: AtomicUsize,
    /// Tickers parked (or about to park) on `work`.
    parked: AtomicUsize,
    lock: Mutex<()>,
    work: Condvar,
    /// Ticks given so far, by every ticker of the engine.
    ticks: AtomicU64,
    /// The deadlines waited on, rung at the first tick past them: one
    /// entry per invocation (or response body, or connection) waiting on
    /// [`Activity::alarm`].
    alarms: Mutex<Vec<Arc<Alarm>>>,
    /// `alarms.len()`, read without the lock.
    pending: AtomicUsize,
}

/// One deadline and the task to wake at it.
#[derive(Debug)]
struct Alarm {
    at: Instant,
    waker: Mutex<Option<Waker>>,
}

/// Resolves once its deadline has passed (see [`Activity::alarm`]).
#[derive(Debug)]
pub(crate) struct AlarmAt {
    activity: Arc<Activity>,
    at: Instant,
    /// Set on the first poll that found the deadline ahead.
    alarm: Option<Arc<Alarm>>,
}

impl Future for AlarmAt {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        match &self.alarm {
            Some(alarm) => {
                let mut waker = alarm.waker.lock().unwrap_or_else(|e| e.into_inner());
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
            }
            None => {
                let alarm = Arc::new(Alarm {
                    at: self.at,
                    waker: Mutex::new(Some(cx.waker().clone())),
                });
                self.activity.add_alarm(Arc::clone(&alarm));
                self.alarm = Some(alarm);
            }
        }
        // The ticker may have rung between the check above and the waker
        // stored: look again, so that no ring is lost.
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Activity {
    /// An invocation begins: the tickers tick until the guard is dropped.
    /// Two atomic operations, and a lock and notify only when a ticker is
    /// parked.
    pub(crate) fn enter(&self) -> Running<'_> {
        // Sequentially consistent with `park`: either this sees the parked
        // ticker, or the ticker sees this invocation before it waits.
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) > 0 {
            let _locked = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.work.notify_all();
        }
        Running(self)
    }

    /// A future that resolves at the first tick past `at` (at once if `at`
    /// has passed). The tickers keep ticking while it waits, even after
    /// every invocation ended (a response body that outlives its store
    /// keeps its request's deadline this way).
    pub(crate) fn alarm(self: &Arc<Self>, at: Instant) -> AlarmAt {
        AlarmAt {
            activity: Arc::clone(self),
            at,
            alarm: None,
        }
    }

    /// Adds an alarm to ring, and wakes a parked ticker to ring it.
    fn add_alarm(&self, alarm: Arc<Alarm>) {
        let mut alarms = self.alarms.lock().unwrap_or_else(|e| e.into_inner());
        alarms.push(alarm);
        self.pending.store(alarms.len(), Ordering::SeqCst);
        drop(alarms);
        if self.parked.load(Ordering::SeqCst) > 0 {
            let _locked = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.work.notify_all();
        }
    }

    /// Wakes the tasks whose deadline has passed, and forgets the alarms
    /// nobody waits on any more.
    fn ring(&self) {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut alarms = self.alarms.lock().unwrap_or_else(|e| e.into_inner());
        alarms.retain(|alarm| {
            if Arc::strong_count(alarm) == 1 {
                return false;
            }
            if alarm.at > now {
                return true;
            }
            due.push(Arc::clone(alarm));
            false
        });
        self.pending.store(alarms.len(), Ordering::SeqCst);
        drop(alarms);
        for alarm in due {
            let waker = alarm.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Whether an invocation runs, or an alarm waits to be rung.
    fn busy(&self) -> bool {
        self.running.load(Ordering::SeqCst) > 0 || self.pending.load(Ordering::SeqCst) > 0
    }

    /// Parks the calling ticker until an invocation runs or `at_most`
    /// passed; returns whether one runs.
    fn park(&self, at_most: Duration) -> bool {
        let mut locked = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.parked.fetch_add(1, Ordering::SeqCst);
        while !self.busy() {
            let (relocked, waited) = self
                .work
                .wait_timeout(locked, at_most)
                .unwrap_or_else(|e| e.into_inner());
            locked = relocked;
            if waited.timed_out() {
                break;
            }
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
        drop(locked);
        self.busy()
    }

    /// Ticks given so far.
    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Tickers parked now.
    #[cfg(test)]
    fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }
}

/// Held by a running invocation (see [`Activity::enter`]).
#[derive(Debug)]
pub(crate) struct Running<'a>(&'a Activity);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (up to 10 s) until `done` holds of `activity`.
    fn wait_until(activity: &Activity, what: &str, done: impl Fn(&Activity) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done(activity) {
            assert!(
                std::time::Instant::now() < deadline,
                "not within 10 s: {what} ({} ticks, {} parked)",
                activity.ticks(),
                activity.parked()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_epoch_ticker_parks_while_nothing_runs() {
        let engine = wasmtime::Engine::default();
        let shared = Arc::new(Activity::default());
        spawn_epoch_ticker(&engine, Duration::from_millis(1), shared.clone()).expect("ticker");
        let activity = &*shared;
        // Nothing ran yet: after its grace the ticker parks.
        wait_until(activity, "the idle ticker parks", |a| a.parked() == 1);
        let parked_at = activity.ticks();
        let running = activity.enter();
        wait_until(activity, "ticks while running", |a| {
            a.ticks() >= parked_at + 3
        });
        assert_eq!(activity.parked(), 0);
        drop(running);
        wait_until(activity, "the ticker parks again", |a| a.parked() == 1);
        // Parked, it gives no tick. The 200 ms here is the interval
        // measured, not a wait for something: a ticker that kept ticking
        // would give ~200 in it (fewer on a loaded machine, never more).
        let settled = activity.ticks();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(activity.ticks(), settled, "ticks while nothing ran");
        let _running = activity.enter();
        wait_until(activity, "woken", |a| a.ticks() >= settled + 3);
    }

    /// An alarm is rung by the ticker (no Tokio timer), even one waited on
    /// while no invocation runs (the ticker had parked): a future waiting on
    /// it on a runtime without timers resolves once its deadline passed,
    /// and an alarm dropped before its deadline leaves no entry behind.
    #[test]
    fn the_ticker_rings_alarms_without_tokio_timers() {
        let engine = wasmtime::Engine::default();
        let shared = Arc::new(Activity::default());
        spawn_epoch_ticker(&engine, Duration::from_millis(1), shared.clone()).expect("ticker");
        let activity = &*shared;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime without timers");
        // Nothing runs: the ticker parks, and an alarm wakes it.
        wait_until(activity, "the idle ticker parks", |a| a.parked() == 1);
        let at = Instant::now() + Duration::from_millis(50);
        runtime.block_on(shared.alarm(at));
        assert!(Instant::now() >= at);
        let dropped = Instant::now() + Duration::from_secs(3600);
        runtime.block_on(async {
            let mut alarm = std::pin::pin!(shared.alarm(dropped));
            std::future::poll_fn(|cx| {
                assert!(alarm.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
        });
        wait_until(activity, "the dropped alarm forgotten", |a| {
            a.alarms.lock().unwrap().is_empty()
        });
    }
}
