//! Host memory charged to the request that causes it.
//!
//! [`Accounting`] is a [`GlobalAlloc`] around the system allocator. Each
//! block it hands out carries a small header naming the [`Account`] that was
//! *current on the thread* when the block was allocated; the block's bytes
//! are charged to that account, and credited back when the block is freed —
//! on whatever thread frees it, however long after the request ended.
//!
//! The scheduler makes an invocation's account current around every poll of
//! its future (instantiation, host calls, the guest's wasm), and futures
//! wasm-run hands to other tasks on a request's behalf (outgoing requests,
//! their connections) carry the account with them ([`Account::scope`]). So
//! instance state, WASI and wasi:http resources, stream and body buffers and
//! copies of host-call arguments are all charged to the request, with no
//! list of cases to keep up to date.
//!
//! An allocation cannot fail gracefully in Rust, so passing the limit does
//! not fail the allocation: it raises the account's [`Account::exceeded`]
//! flag, and the invocation is killed as `memory_exceeded` at the next
//! check — when the host call returns, at the next epoch tick, or when its
//! future next yields, whichever is first.
//!
//! Without the allocator installed (an embedder that does not set it as its
//! `#[global_allocator]`), accounts count nothing ([`is_installed`] says
//! which) and the per-resource bounds of the `store` module still hold.
//!
//! Cost: a header of 16 bytes per block (more for blocks aligned past 16)
//! and a thread-local read per allocation and free. A thread gathers what it
//! charges to its current account and adds it to the account's shared
//! counter every 64 KiB and when it stops polling the invocation, so the
//! common case takes no atomic operation; a block freed on another thread
//! (or while another account is current) is credited with one.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::{self, NonNull};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::task::{Context, Poll};

/// The accounting allocator: install it as the program's global allocator
/// so that host memory is charged to the invocation that causes it.
///
/// ```
/// #[global_allocator]
/// static ALLOC: wasm_run::Accounting = wasm_run::Accounting;
/// # fn main() { assert!(wasm_run::accounting::is_installed()); }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Accounting;

/// Bytes of header in front of every block aligned to 16 or less.
const HEADER: usize = 16;

/// Live bytes are kept in the low 40 bits of an account's counter, handles
/// in the bits above (up to 16 million).
///
/// The bytes are read as a *signed* 40-bit number: a thread may credit a
/// block to the shared counter before the thread that charged it has added
/// its pending charge, so the shared figure can dip below zero for a moment
/// (by at most 64 KiB per thread). Such a dip never reaches the handle bits
/// in a way that matters: while any handle lives the counter cannot be
/// zero, and once none does, no thread has the account current, so every
/// pending charge has been added and the figure is exact. Live bytes above
/// 512 GiB are not representable, far past what any cap allows.
const HANDLE: u64 = 1 << 40;
const BYTES: u64 = HANDLE - 1;
const SIGN: u64 = HANDLE >> 1;

/// The signed live bytes held in a counter's low bits.
fn live(count: u64) -> i64 {
    let low = count & BYTES;
    if low >= SIGN {
        low as i64 - HANDLE as i64
    } else {
        low as i64
    }
}

/// The shared state of one account. Allocated with the system allocator,
/// not through [`Accounting`], and freed when the last handle is dropped and
/// the last block charged to it is freed.
struct Inner {
    /// Live bytes charged (low bits) plus one [`HANDLE`] per live handle.
    count: AtomicU64,
    /// Most bytes live at once.
    peak: AtomicU64,
    /// Past this many bytes, `exceeded` is raised.
    limit: AtomicU64,
    exceeded: AtomicBool,
}

/// What a thread charges to its current account is gathered here and
/// added to the account's shared counter in one step when it reaches
/// [`FLUSH_BYTES`] either way, and when the account stops being current:
/// the common case — a request allocating and freeing on the thread that
/// polls it — then costs no atomic operation at all.
struct Local {
    /// The account charged for allocations made on this thread now.
    current: Cell<*const Inner>,
    /// Bytes charged (positive) or credited (negative) to `current` on this
    /// thread and not yet added to its counter.
    pending: Cell<i64>,
    /// The highest `pending` since the last flush, for the peak.
    pending_max: Cell<i64>,
}

/// How far a thread's pending charge may drift before it is added to the
/// account: 64 KiB. This is also how late, at most, the account sees that
/// it passed its limit.
const FLUSH_BYTES: i64 = 64 << 10;

thread_local! {
    static LOCAL: Local = const {
        Local {
            current: Cell::new(ptr::null()),
            pending: Cell::new(0),
            pending_max: Cell::new(0),
        }
    };
}

fn current() -> *const Inner {
    LOCAL.try_with(|l| l.current.get()).unwrap_or(ptr::null())
}

impl Local {
    /// Charges (or credits, when negative) `delta` bytes to the current
    /// account, which is `account`.
    #[inline]
    fn note(&self, account: &Inner, delta: i64) {
        let pending = self.pending.get() + delta;
        self.pending.set(pending);
        if pending > self.pending_max.get() {
            self.pending_max.set(pending);
        }
        if !(-FLUSH_BYTES..FLUSH_BYTES).contains(&pending) {
            self.flush(account);
        }
    }

    /// Adds what is pending to `account`, the current account.
    fn flush(&self, account: &Inner) {
        let pending = self.pending.replace(0);
        let pending_max = self.pending_max.replace(0);
        if pending > 0 {
            account.charge(pending as u64, pending_max as u64);
        } else if pending < 0 {
            // The current account is entered, so a handle holds it: this
            // never takes its count to zero.
            account
                .count
                .fetch_sub(pending.unsigned_abs(), Ordering::Relaxed);
        }
    }
}

impl Inner {
    /// Adds `bytes` to the counter; `peak_extra` (at least `bytes`) is the
    /// most the live bytes rose above the counter's old value meanwhile.
    /// Raises `exceeded` past the limit.
    fn charge(&self, bytes: u64, peak_extra: u64) {
        let before = live(self.count.fetch_add(bytes, Ordering::Relaxed)).max(0) as u64;
        let now = before + bytes;
        // A plain store, not a read-modify-write: an account is polled by
        // one thread at a time, and a peak a racing thread lowers by a few
        // bytes is still a peak.
        let peak = before + peak_extra.max(bytes);
        if peak > self.peak.load(Ordering::Relaxed) {
            self.peak.store(peak, Ordering::Relaxed);
        }
        if now > self.limit.load(Ordering::Relaxed) {
            self.exceeded.store(true, Ordering::Relaxed);
        }
    }

    /// Takes `amount` off the counter (bytes or a handle); frees the account
    /// when nothing is left.
    ///
    /// # Safety
    /// `this` is a live account and `amount` was added to it before.
    unsafe fn release(this: *const Inner, amount: u64) {
        // SAFETY: the caller holds `amount` of the count, so `this` is live.
        let prev = unsafe { &*this }.count.fetch_sub(amount, Ordering::Release);
        if prev == amount {
            fence(Ordering::Acquire);
            // SAFETY: nothing else refers to the account any more; it was
            // allocated by `System` with this layout in `Account::new`.
            unsafe { System.dealloc(this as *mut u8, Layout::new::<Inner>()) };
        }
    }
}

/// Charges `bytes` to `account`: through the thread's pending charge when
/// it is the current account, otherwise to its counter directly.
///
/// # Safety
/// `account` is live (a block is charged to it, or it is current).
#[inline]
unsafe fn charge_to(account: *const Inner, bytes: u64) {
    let local = LOCAL.try_with(|l| {
        if l.current.get() == account {
            // SAFETY: the current account is live.
            l.note(unsafe { &*account }, bytes as i64);
            true
        } else {
            false
        }
    });
    if local != Ok(true) {
        // SAFETY: as the caller says.
        unsafe { &*account }.charge(bytes, bytes);
    }
}

/// Credits `bytes` of a block charged to `account` that is freed (or
/// shrunk, when `shrink`: the block stays charged, so the account cannot be
/// freed by it).
///
/// # Safety
/// `account` is live: the block being freed or shrunk is charged to it.
#[inline]
unsafe fn credit_to(account: *const Inner, bytes: u64, shrink: bool) {
    let local = LOCAL.try_with(|l| {
        if l.current.get() == account {
            // SAFETY: the current account is live.
            l.note(unsafe { &*account }, -(bytes as i64));
            true
        } else {
            false
        }
    });
    if local != Ok(true) {
        if shrink {
            // SAFETY: as the caller says.
            unsafe { &*account }
                .count
                .fetch_sub(bytes, Ordering::Relaxed);
        } else {
            // SAFETY: as the caller says.
            unsafe { Inner::release(account, bytes) };
        }
    }
}

/// Header size and the layout actually asked of the system allocator.
fn padded(layout: Layout) -> Option<(usize, Layout)> {
    let header = layout.align().max(HEADER);
    let size = layout.size().checked_add(header)?;
    Layout::from_size_align(size, header)
        .ok()
        .map(|l| (header, l))
}

/// Writes the tag in front of the block's user part and charges the block
/// to the current account, with one look at the thread-local state.
///
/// # Safety
/// `base` is a fresh block of `full` bytes with `header` bytes of header.
#[inline]
unsafe fn tag(base: *mut u8, header: usize, full: usize) -> *mut u8 {
    // SAFETY: the header lies inside the block, 8-aligned (header ≥ 16).
    let user = unsafe { base.add(header) };
    let slot = unsafe { user.sub(size_of::<usize>()) } as *mut *const Inner;
    let tagged = LOCAL.try_with(|l| {
        let account = l.current.get();
        // SAFETY: `slot` is inside the fresh block.
        unsafe { slot.write(account) };
        // SAFETY: the current account is live.
        if let Some(a) = unsafe { account.as_ref() } {
            l.note(a, full as i64);
        }
    });
    if tagged.is_err() {
        // SAFETY: as above; a thread being torn down charges nothing.
        unsafe { slot.write(ptr::null()) };
    }
    user
}

/// Allocates a system block of `layout`'s padded layout with `system` and
/// tags it; null if that fails.
///
/// # Safety
/// `system` must return null or a fresh block of the layout it is given.
unsafe fn alloc_tagged(layout: Layout, system: impl FnOnce(Layout) -> *mut u8) -> *mut u8 {
    let Some((header, full)) = padded(layout) else {
        return ptr::null_mut();
    };
    let base = system(full);
    if base.is_null() {
        return base;
    }
    // SAFETY: a fresh block of `full`.
    unsafe { tag(base, header, full.size()) }
}

// SAFETY: every block is a system block of the padded layout; the pointer
// handed out is `header` bytes into it and aligned as asked, and the tag in
// front of it is read back only by these functions.
unsafe impl GlobalAlloc for Accounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `System.alloc` is given the non-zero-sized padded layout.
        unsafe { alloc_tagged(layout, |full| System.alloc(full)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { alloc_tagged(layout, |full| System.alloc_zeroed(full)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (header, full) = padded(layout).expect("the block was allocated with this layout");
        // SAFETY: `ptr` came from `alloc` with this layout: its tag is in
        // front of it and its block starts `header` bytes before.
        unsafe {
            let account = (ptr.sub(size_of::<usize>()) as *const *const Inner).read();
            System.dealloc(ptr.sub(header), full);
            if !account.is_null() {
                credit_to(account, full.size() as u64, false);
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (header, full) = padded(layout).expect("the block was allocated with this layout");
        let Some(new_full) = new_size.checked_add(header) else {
            return ptr::null_mut();
        };
        // SAFETY: as in `dealloc`; the tag moves with the block's contents,
        // and the account stays live while the block is charged to it.
        unsafe {
            let account = (ptr.sub(size_of::<usize>()) as *const *const Inner).read();
            let base = System.realloc(ptr.sub(header), full, new_full);
            if base.is_null() {
                return base;
            }
            if !account.is_null() {
                let (old, new) = (full.size() as u64, new_full as u64);
                if new >= old {
                    charge_to(account, new - old);
                } else {
                    credit_to(account, old - new, true);
                }
            }
            base.add(header)
        }
    }
}

/// Whether [`Accounting`] is this program's global allocator, so that
/// accounts really count.
pub fn is_installed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let probe = Account::new(u64::MAX);
        let _in = probe.enter();
        let block = std::hint::black_box(vec![0u8; 64]);
        let counted = probe.bytes() >= 64;
        drop(block);
        counted
    })
}

/// One invocation's account of host memory; cheap to clone (all clones are
/// the same account).
pub struct Account {
    inner: NonNull<Inner>,
}

// SAFETY: `Inner` is only atomics.
unsafe impl Send for Account {}
// SAFETY: as above.
unsafe impl Sync for Account {}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("bytes", &self.bytes())
            .field("peak", &self.peak())
            .field("exceeded", &self.exceeded())
            .finish()
    }
}

impl Account {
    /// A new account that raises [`Account::exceeded`] once more than
    /// `limit` bytes are charged to it at once.
    pub fn new(limit: u64) -> Account {
        let layout = Layout::new::<Inner>();
        // SAFETY: `Inner` has a non-zero size.
        let raw = unsafe { System.alloc(layout) } as *mut Inner;
        let Some(inner) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: a fresh, suitably aligned block for one `Inner`.
        unsafe {
            inner.as_ptr().write(Inner {
                count: AtomicU64::new(HANDLE),
                peak: AtomicU64::new(0),
                limit: AtomicU64::new(limit),
                exceeded: AtomicBool::new(false),
            })
        };
        Account { inner }
    }

    fn inner(&self) -> &Inner {
        // SAFETY: this handle keeps the account live.
        unsafe { self.inner.as_ref() }
    }

    /// The account current on this thread, if any.
    pub fn current() -> Option<Account> {
        let inner = NonNull::new(current() as *mut Inner)?;
        // SAFETY: the current account is kept live by the guard of whoever
        // entered it, further up this thread's stack.
        unsafe { inner.as_ref() }
            .count
            .fetch_add(HANDLE, Ordering::Relaxed);
        Some(Account { inner })
    }

    /// Makes this the account charged for allocations on this thread until
    /// the guard is dropped (which restores the previous one).
    pub fn enter(&self) -> Entered<'_> {
        let previous = LOCAL.with(|l| {
            let previous = l.current.get();
            // SAFETY: the previous account is current, hence live.
            if let Some(p) = unsafe { previous.as_ref() } {
                l.flush(p);
            }
            l.current.set(self.inner.as_ptr());
            previous
        });
        Entered {
            previous,
            _account: std::marker::PhantomData,
        }
    }

    /// Wraps `fut` so that every poll of it is charged to this account:
    /// what a request hands to another task keeps being its own.
    pub fn scope<F: Future>(&self, fut: F) -> Scoped<F> {
        Scoped {
            account: self.clone(),
            fut: Some(Box::pin(fut)),
        }
    }

    /// Bytes charged to the account now (what this thread has pending for
    /// it included; other threads' pending charges are at most 64 KiB each).
    pub fn bytes(&self) -> u64 {
        let shared = live(self.inner().count.load(Ordering::Relaxed));
        let pending = LOCAL
            .try_with(|l| {
                if std::ptr::eq(l.current.get(), self.inner.as_ptr()) {
                    l.pending.get()
                } else {
                    0
                }
            })
            .unwrap_or(0);
        shared.saturating_add(pending).max(0) as u64
    }

    /// Most bytes charged at once.
    pub fn peak(&self) -> u64 {
        self.inner().peak.load(Ordering::Relaxed)
    }

    /// Whether more than the limit was charged at some point (seen within
    /// 64 KiB of growth on the thread that polls the invocation, or at once
    /// when it stops polling).
    pub fn exceeded(&self) -> bool {
        let inner = self.inner();
        if inner.exceeded.load(Ordering::Relaxed) {
            return true;
        }
        // What this thread has pending may already be past the limit: the
        // flag, once raised, stays raised.
        if self.bytes() > inner.limit.load(Ordering::Relaxed) {
            inner.exceeded.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Changes the limit (e.g. as the invocation's linear memory grows, what
    /// is left of its cap for host memory shrinks). Raises the flag at once
    /// if the account is already past it.
    pub fn set_limit(&self, limit: u64) {
        let inner = self.inner();
        inner.limit.store(limit, Ordering::Relaxed);
        if self.bytes() > limit {
            inner.exceeded.store(true, Ordering::Relaxed);
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u64 {
        self.inner().limit.load(Ordering::Relaxed)
    }
}

impl Clone for Account {
    fn clone(&self) -> Account {
        self.inner().count.fetch_add(HANDLE, Ordering::Relaxed);
        Account { inner: self.inner }
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        // SAFETY: this handle holds one HANDLE of the count.
        unsafe { Inner::release(self.inner.as_ptr(), HANDLE) };
    }
}

/// Restores the previously current account when dropped; see
/// [`Account::enter`].
#[must_use = "the account is current only while the guard lives"]
pub struct Entered<'a> {
    previous: *const Inner,
    _account: std::marker::PhantomData<&'a Account>,
}

impl std::fmt::Debug for Entered<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entered").finish_non_exhaustive()
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        LOCAL.with(|l| {
            // SAFETY: the account being left is current, hence live (the
            // guard borrows its handle).
            if let Some(a) = unsafe { l.current.get().as_ref() } {
                l.flush(a);
            }
            l.current.set(self.previous);
        });
    }
}

/// A future whose polls are charged to an account; see [`Account::scope`].
pub struct Scoped<F> {
    account: Account,
    fut: Option<Pin<Box<F>>>,
}

impl<F> std::fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scoped")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _in = this.account.enter();
        match this.fut.as_mut() {
            Some(fut) => fut.as_mut().poll(cx),
            None => unreachable!("a Scoped future is not polled after it is dropped"),
        }
    }
}

impl<F> Drop for Scoped<F> {
    fn drop(&mut self) {
        // What the future allocates while it is dropped counts too.
        let _in = self.account.enter();
        self.fut.take();
    }
}

#[cfg(test)]
impl Account {
    /// `n` bytes allocated (and written) while charged to this account.
    pub(crate) fn hold(&self, n: usize) -> Vec<u8> {
        let _in = self.enter();
        vec![1u8; n]
    }
}

#[cfg(test)]
mod tests {
    //! The host's unit tests run with [`Accounting`] installed (lib.rs).
    use super::*;

    #[test]
    fn the_allocator_is_installed_in_these_tests() {
        assert!(is_installed());
    }

    #[test]
    fn blocks_are_charged_while_entered_and_credited_when_freed() {
        let account = Account::new(u64::MAX);
        let block = account.hold(1 << 20);
        assert!(account.bytes() >= 1 << 20, "{account:?}");
        // Allocations outside the scope are not charged.
        let other = std::hint::black_box(vec![0u8; 1 << 20]);
        assert!(account.bytes() < 2 << 20);
        drop(block);
        assert_eq!(account.bytes(), 0);
        assert!(account.peak() >= 1 << 20);
        drop(other);
    }

    #[test]
    fn a_block_freed_on_another_thread_is_credited_to_its_own_account() {
        let account = Account::new(u64::MAX);
        let block = account.hold(100_000);
        assert!(account.bytes() >= 100_000);
        let elsewhere = Account::new(u64::MAX);
        std::thread::spawn(move || {
            let _in = elsewhere.enter();
            drop(block);
            assert_eq!(elsewhere.bytes(), 0);
        })
        .join()
        .unwrap();
        assert_eq!(account.bytes(), 0);
    }

    #[test]
    fn growing_a_block_charges_the_account_it_belongs_to() {
        let a = Account::new(u64::MAX);
        let b = Account::new(u64::MAX);
        let mut v: Vec<u8> = {
            let _in = a.enter();
            Vec::with_capacity(16)
        };
        {
            let _in = b.enter();
            v.reserve_exact(1 << 20);
        }
        assert!(a.bytes() >= 1 << 20);
        assert_eq!(b.bytes(), 0);
        v.shrink_to(16);
        assert!(a.bytes() < 1024);
        drop(v);
        assert_eq!(a.bytes(), 0);
    }

    #[test]
    fn passing_the_limit_raises_the_flag_and_a_lower_limit_does_too() {
        let account = Account::new(64 << 10);
        let small = account.hold(1024);
        assert!(!account.exceeded());
        let big = account.hold(100 << 10);
        assert!(account.exceeded());
        drop((small, big));
        let later = Account::new(u64::MAX);
        let _kept = later.hold(4096);
        assert!(!later.exceeded());
        later.set_limit(1024);
        assert!(later.exceeded());
    }

    #[test]
    fn a_credit_before_its_charge_is_added_is_no_false_alarm() {
        use std::sync::mpsc;
        // The account is current on two threads at once (an invocation and
        // its outgoing request's task); one frees what the other allocated
        // before the other has added its pending charge.
        let account = Account::new(16 << 10);
        let (to_main, from_worker) = mpsc::channel::<Vec<u8>>();
        let (to_worker, from_main) = mpsc::channel::<()>();
        let worker_account = account.clone();
        let worker = std::thread::spawn(move || {
            let _in = worker_account.enter();
            to_main.send(vec![0u8; 8 << 10]).unwrap();
            // Stay entered (the charge pending) until the main thread has
            // freed the block and left.
            from_main.recv().unwrap();
        });
        let block = from_worker.recv().unwrap();
        {
            let _in = account.enter();
            drop(block);
        }
        // The shared figure dipped below zero for a moment: read as none.
        assert_eq!(account.bytes(), 0);
        assert!(!account.exceeded());
        to_worker.send(()).unwrap();
        worker.join().unwrap();
        // The channels' own blocks (and the worker's waiter registration)
        // were allocated while the worker had the account entered.
        drop((from_worker, to_worker));
        assert_eq!(account.bytes(), 0);
        assert!(!account.exceeded());
    }

    #[test]
    fn small_charges_are_gathered_and_seen_when_the_scope_ends() {
        let account = Account::new(u64::MAX);
        let kept: Vec<Vec<u8>> = {
            let _in = account.enter();
            let kept = (0..10).map(|_| vec![0u8; 100]).collect();
            // Inside the scope the thread's pending charge is counted.
            assert!(account.bytes() >= 1000);
            kept
        };
        assert!(account.bytes() >= 1000);
        drop(kept);
        assert_eq!(account.bytes(), 0);
    }

    #[test]
    fn blocks_outliving_every_handle_keep_the_account_alive() {
        let account = Account::new(u64::MAX);
        let block = account.hold(4096);
        drop(account);
        // The account's state is freed by this drop, not before: reading
        // the tag must still find it (run under a sanitizer to see it).
        drop(block);
    }

    #[test]
    fn the_current_account_is_restored_after_nested_scopes() {
        let outer = Account::new(u64::MAX);
        let inner = Account::new(u64::MAX);
        let _o = outer.enter();
        {
            let _i = inner.enter();
            let cur = Account::current().expect("inner is current");
            assert_eq!(cur.inner, inner.inner);
        }
        let cur = Account::current().expect("outer is current again");
        assert_eq!(cur.inner, outer.inner);
    }

    #[tokio::test]
    async fn a_scoped_future_is_charged_on_every_poll_wherever_it_runs() {
        let account = Account::new(u64::MAX);
        let task = tokio::spawn(account.scope(async {
            let mut kept = Vec::new();
            for _ in 0..4 {
                kept.push(vec![0u8; 64 << 10]);
                tokio::task::yield_now().await;
            }
            kept
        }));
        let kept = task.await.unwrap();
        assert!(account.bytes() >= 4 * (64 << 10), "{account:?}");
        drop(kept);
        assert!(account.bytes() < 4096, "{account:?}");
    }
}
