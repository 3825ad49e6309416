//! The CSB need-kick handshake of `netmap::sync`, model-checked with `loom`
//! (issue 11): every interleaving and every value the memory model lets a
//! load return, for one application thread and one switch thread.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p netmap --test loom_csb --release
//! ```
//!
//! A separate model, not the real functions made generic: `AppRing` and
//! `KringState` reach the CSB through `CsbEntry`, whose words are
//! `&AtomicU32` into the shared mapping, and ring the peer through an
//! eventfd; making them generic over the atomic and the doorbell would
//! thread type parameters through `CsbEntry`, `AppRing`, `poll_rings` and
//! every switch loop for the sake of a test. So the steps that touch the
//! CSB are copied here line for line, each under the name of the function
//! it copies (keep them in step with `src/sync.rs`), while the index
//! arithmetic is the real one (`KringState`, `ring::space`,
//! `ring::window_ok`). Slot buffers are loom `UnsafeCell`s, so an access the
//! protocol does not order is reported. An eventfd is a counter whose
//! owner parks while it is zero; a lost wake-up leaves a side parked with
//! no thread left to unpark it, and loom reports the deadlock.
//!
//! Shared state sits in a `std::sync::Arc` and no thread holds a loom
//! guard while it sleeps: loom raises a deadlock from its scheduler, and a
//! loom object dropped while that panic unwinds (a loom `Arc`, a
//! `MutexGuard` held in `Condvar::wait`) panics again and aborts the
//! process, so the failure could not be caught.
//!
//! Every weakening of one fence or one ordering that matters is checked to
//! make loom fail: each of the four fences removed or made `AcqRel` (a lost
//! wake-up), each release/acquire on `head`, `hwcur` and `hwtail` made
//! `Relaxed` (a slot buffer, or `cur`, read unordered). The one `Acquire`
//! that does not matter is `prepare_sleep`'s re-read of `head`: when it
//! sees a new head the switch loops back to `prologue`, which reads `head`
//! again with `Acquire` before touching a slot;
//! `sleep_head_load_is_redundant` records that.
//!
//! Loom models `fence(SeqCst)` more strongly than C++ does: each such fence
//! joins the causality of every earlier one, as if the fences were
//! release/acquire pairs. That cannot hide a lost wake-up (the handshake
//! needs only the store-load ordering the fences give anyway), but it could
//! hide a slot handed over by fences alone; none is: every slot access
//! follows an acquire of the index that hands it over, as the `Relaxed`
//! tests show.
#![cfg(loom)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use loom::thread::{self, Thread};
use netmap::ring;
use netmap::sync::{Dir, KringState};

use Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};

/// Slots per ring: the smallest ring that carries a frame.
const SLOTS: u32 = 2;
/// What the producer writes into a slot's buffer.
const FRAME: u32 = 0xf4a3e;

/// Every fence and every ordering of the handshake, as `src/sync.rs` has
/// them in [`REAL`]. A fence is `None` when removed.
#[derive(Debug, Clone, Copy)]
struct Orderings {
    /// `AppRing::sync`: `STORE head` (after `STORE(relaxed) cur`).
    app_head_store: Ordering,
    /// `AppRing::sync`: the fence between `head` and `LOAD kern_need_kick`.
    app_sync_fence: Option<Ordering>,
    /// `AppRing::read_hwtail` (in `sync` and `arm`): `LOAD hwtail`.
    app_hwtail_load: Ordering,
    /// `AppRing::drained`: `LOAD hwcur`.
    app_hwcur_load: Ordering,
    /// `AppRing::arm`: the fence between `appl_need_kick = 1` and the
    /// re-read of `hwtail`.
    app_arm_fence: Option<Ordering>,
    /// `KringState::prologue`: `LOAD head` (before `LOAD(relaxed) cur`).
    sw_head_load: Ordering,
    /// `KringState::publish`: `STORE hwcur`.
    sw_hwcur_store: Ordering,
    /// `KringState::publish`: `STORE hwtail`.
    sw_hwtail_store: Ordering,
    /// `KringState::notify`: the fence between `publish` and
    /// `LOAD appl_need_kick`.
    sw_notify_fence: Option<Ordering>,
    /// `KringState::prepare_sleep`: the fence between `kern_need_kick = 1`
    /// and the re-read of `head`.
    sw_sleep_fence: Option<Ordering>,
    /// `KringState::prepare_sleep`: the re-read of `head`.
    sw_sleep_head_load: Ordering,
}

/// The protocol as `src/sync.rs` implements it.
const REAL: Orderings = Orderings {
    app_head_store: Release,
    app_sync_fence: Some(SeqCst),
    app_hwtail_load: Acquire,
    app_hwcur_load: Acquire,
    app_arm_fence: Some(SeqCst),
    sw_head_load: Acquire,
    sw_hwcur_store: Release,
    sw_hwtail_store: Release,
    sw_notify_fence: Some(SeqCst),
    sw_sleep_fence: Some(SeqCst),
    sw_sleep_head_load: Acquire,
};

fn fence_if(f: Option<Ordering>) {
    if let Some(o) = f {
        fence(o);
    }
}

/// An eventfd: `ring` is a `write` of 1 and wakes the owner; `wait` is
/// `poll` for readability followed by `drain`, with the thread parked
/// while the count is zero. A side parked for ever is a lost wake-up: loom
/// reports it as a deadlock once every thread is blocked.
#[derive(Debug, Default)]
struct EventFd {
    count: AtomicU64,
}

impl EventFd {
    fn ring(&self, owner: &Thread) {
        self.count.fetch_add(1, SeqCst);
        owner.unpark();
    }

    fn wait(&self) {
        while self.count.swap(0, SeqCst) == 0 {
            thread::park();
        }
    }
}

/// One ring as both sides share it: its CSB entry, its slot buffers and its
/// two doorbells.
#[derive(Debug)]
struct Shared {
    // atok: written by the application.
    head: AtomicU32,
    cur: AtomicU32,
    appl_need_kick: AtomicU32,
    // ktoa: written by the switch.
    hwcur: AtomicU32,
    hwtail: AtomicU32,
    kern_need_kick: AtomicU32,
    /// Slot buffers: plain memory that the indexes hand over.
    bufs: [UnsafeCell<u32>; SLOTS as usize],
    /// Rung by the application to wake the switch.
    kick: EventFd,
    /// Rung by the switch to wake the application.
    irq: EventFd,
}

// SAFETY: the slot buffers are the only fields that are not `Sync`; the
// protocol hands them between the two threads, and loom reports any access
// to them that it does not order, which is what this model checks.
unsafe impl Sync for Shared {}

impl Shared {
    /// A ring as the switch publishes it before the application starts.
    fn new(k: &KringState) -> Shared {
        Shared {
            head: AtomicU32::new(k.rhead),
            cur: AtomicU32::new(k.rcur),
            appl_need_kick: AtomicU32::new(0),
            hwcur: AtomicU32::new(k.nr_hwcur),
            hwtail: AtomicU32::new(k.nr_hwtail),
            kern_need_kick: AtomicU32::new(0),
            bufs: std::array::from_fn(|_| UnsafeCell::new(0)),
            kick: EventFd::default(),
            irq: EventFd::default(),
        }
    }

    fn write_buf(&self, i: u32, v: u32) {
        // SAFETY: the pointer is the cell's own and lives as long as `self`;
        // loom checks that no other access to the cell races with this one,
        // which is what the model is for.
        self.bufs[i as usize].with_mut(|p| unsafe { *p = v });
    }

    fn read_buf(&self, i: u32) -> u32 {
        // SAFETY: as in `write_buf`.
        self.bufs[i as usize].with(|p| unsafe { *p })
    }
}

/// The application side: `AppRing` with its `netmap_ring` head/cur/tail.
#[derive(Debug)]
struct App<'a> {
    s: &'a Shared,
    o: Orderings,
    /// The switch thread, which the kick eventfd wakes.
    switch: Thread,
    head: u32,
    cur: u32,
    tail: u32,
}

impl App<'_> {
    fn sync(&mut self) {
        self.s.cur.store(self.cur, Relaxed);
        self.s.head.store(self.head, self.o.app_head_store);
        fence_if(self.o.app_sync_fence);
        if self.s.kern_need_kick.load(Relaxed) != 0 {
            self.s.kick.ring(&self.switch);
        }
        self.tail = self.read_hwtail();
    }

    fn read_hwtail(&self) -> u32 {
        self.s.hwtail.load(self.o.app_hwtail_load)
    }

    fn ready(&self) -> bool {
        ring::space(self.cur, self.tail, SLOTS) > 0
    }

    fn drained(&self) -> bool {
        self.s.hwcur.load(self.o.app_hwcur_load) == self.head
    }

    fn arm(&mut self, cond: fn(&Self) -> bool) -> bool {
        self.s.appl_need_kick.store(1, Relaxed);
        fence_if(self.o.app_arm_fence);
        self.tail = self.read_hwtail();
        if cond(self) {
            self.s.appl_need_kick.store(0, Relaxed);
            return false;
        }
        true
    }

    fn disarm(&self) {
        self.s.appl_need_kick.store(0, Relaxed);
    }

    /// `poll_rings` on this one ring: returns once `cond` holds.
    fn poll(&mut self, cond: fn(&Self) -> bool) {
        loop {
            self.sync();
            if cond(self) || !self.arm(cond) {
                return;
            }
            self.s.irq.wait();
            self.disarm();
        }
    }
}

/// The switch side: the CSB steps of `KringState` around the real one.
#[derive(Debug)]
struct Switch<'a> {
    s: &'a Shared,
    o: Orderings,
    /// The application thread, which the irq eventfd wakes.
    app: Thread,
    k: KringState,
}

impl Switch<'_> {
    fn prologue(&mut self) {
        let head = self.s.head.load(self.o.sw_head_load);
        let cur = self.s.cur.load(Relaxed);
        if head == self.k.rhead && cur == self.k.rcur {
            return;
        }
        // The application keeps the contract, so a reset here means the
        // switch saw a head newer than the cur published before it.
        assert!(
            ring::window_ok(self.k.rhead, self.k.nr_hwtail, head, cur, SLOTS),
            "ring reset: the switch saw head {head} with cur {cur}"
        );
        self.k.rhead = head;
        self.k.rcur = cur;
        if self.k.dir() == Dir::Rx {
            self.k.nr_hwcur = head;
        }
    }

    fn publish(&self) {
        self.s.hwcur.store(self.k.nr_hwcur, self.o.sw_hwcur_store);
        self.s
            .hwtail
            .store(self.k.nr_hwtail, self.o.sw_hwtail_store);
    }

    fn notify(&self) {
        fence_if(self.o.sw_notify_fence);
        if self.s.appl_need_kick.load(Relaxed) != 0 {
            self.s.irq.ring(&self.app);
        }
    }

    fn prepare_sleep(&self) -> bool {
        self.s.kern_need_kick.store(1, Relaxed);
        fence_if(self.o.sw_sleep_fence);
        let head = self.s.head.load(self.o.sw_sleep_head_load);
        if head != self.k.rhead {
            self.s.kern_need_kick.store(0, Relaxed);
            return false;
        }
        true
    }

    fn woken(&self) {
        self.s.kern_need_kick.store(0, Relaxed);
    }
}

/// TX, both directions of the handshake: the application fills slot 0,
/// syncs and waits until the switch has taken it (`drain_tx`), then reuses
/// the buffer; the switch loops as `testing::Loopback` does, sleeping on
/// its kick eventfd while nothing is pending, and consumes the frame.
fn tx_one_frame(o: Orderings) {
    let k = KringState::new(Dir::Tx, SLOTS);
    let s = Arc::new(Shared::new(&k));
    let (s2, tail, switch) = (s.clone(), k.nr_hwtail, thread::current());
    let app = thread::spawn(move || {
        let s = &*s2;
        let mut a = App {
            s,
            o,
            switch,
            head: 0,
            cur: 0,
            tail,
        };
        s.write_buf(a.cur, FRAME);
        a.cur = ring::next(a.cur, SLOTS);
        a.head = a.cur;
        a.poll(App::drained);
        // Every slot handed over came back: the buffer is ours again.
        s.write_buf(0, 0);
    });
    // Not joined: the application rings this thread, and loom's `join`
    // does not survive an unpark. Loom still runs every thread to its end.
    let mut sw = Switch {
        s: &s,
        o,
        app: app.thread().clone(),
        k,
    };
    loop {
        sw.prologue();
        let (first, n) = sw.k.tx_pending();
        if n > 0 {
            for i in 0..n {
                assert_eq!(s.read_buf(ring::advance(first, i, SLOTS)), FRAME);
            }
            sw.k.tx_consumed(n);
            sw.publish();
            sw.notify();
            break;
        }
        if !sw.prepare_sleep() {
            continue;
        }
        s.kick.wait();
        sw.woken();
    }
}

/// RX, the switch-to-application direction: the switch fills slot 0 and
/// publishes it; the application waits for a frame (`poll_rings`,
/// `Want::Ready`) and reads it.
fn rx_one_frame(o: Orderings) {
    let k = KringState::new(Dir::Rx, SLOTS);
    let s = Arc::new(Shared::new(&k));
    let (s2, tail, switch) = (s.clone(), k.nr_hwtail, thread::current());
    let app = thread::spawn(move || {
        let s = &*s2;
        let mut a = App {
            s,
            o,
            switch,
            head: 0,
            cur: 0,
            tail,
        };
        a.poll(App::ready);
        assert_eq!(s.read_buf(a.cur), FRAME);
    });
    // Not joined, as in `tx_one_frame`.
    let mut sw = Switch {
        s: &s,
        o,
        app: app.thread().clone(),
        k,
    };
    sw.prologue();
    let (first, n) = sw.k.rx_space();
    assert!(n > 0);
    s.write_buf(first, FRAME);
    sw.k.rx_filled(1);
    sw.publish();
    sw.notify();
}

/// Explores every execution of both scenarios (no preemption bound unless
/// `LOOM_MAX_PREEMPTIONS` sets one); panics on the first failure.
fn check(o: Orderings) {
    let b = loom::model::Builder::new();
    b.check(move || tx_one_frame(o));
    b.check(move || rx_one_frame(o));
}

/// What loom must find when `o` is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// A side asleep that no thread will wake (loom: deadlock).
    LostWakeup,
    /// A slot buffer or `cur` read without the ordering that hands it over.
    Unordered,
}

fn expect_failure(o: Orderings, want: Failure) {
    let err = match catch_unwind(AssertUnwindSafe(|| check(o))) {
        Ok(()) => panic!("loom found no failure with {o:?}"),
        Err(e) => e,
    };
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("");
    let found = if msg.contains("deadlock") {
        Failure::LostWakeup
    } else if msg.contains("Causality violation") || msg.contains("ring reset") {
        Failure::Unordered
    } else {
        panic!("loom failed for another reason with {o:?}: {msg}");
    };
    assert_eq!(found, want, "{msg}");
}

#[test]
fn correct_protocol_has_no_lost_wakeup() {
    check(REAL);
}

#[test]
fn sleep_head_load_is_redundant() {
    check(Orderings {
        sw_sleep_head_load: Relaxed,
        ..REAL
    });
}

// Direction 1, application to switch: `sync` publishes head, then looks at
// kern_need_kick; `prepare_sleep` stores kern_need_kick, then re-reads head.

/// A test that weakens one field of [`REAL`] and expects loom to find
/// `$failure`.
macro_rules! weakening {
    ($name:ident, $field:ident: $value:expr, $failure:ident) => {
        #[test]
        fn $name() {
            let o = Orderings {
                $field: $value,
                ..REAL
            };
            expect_failure(o, Failure::$failure);
        }
    };
}

weakening!(finds_lost_kick_without_sync_fence, app_sync_fence: None, LostWakeup);

weakening!(finds_lost_kick_with_acqrel_sync_fence, app_sync_fence: Some(AcqRel), LostWakeup);

weakening!(finds_lost_kick_without_prepare_sleep_fence, sw_sleep_fence: None, LostWakeup);

weakening!(finds_lost_kick_with_acqrel_prepare_sleep_fence, sw_sleep_fence: Some(AcqRel), LostWakeup);

// Direction 2, switch to application: `publish` + `notify` store hwcur and
// hwtail, then look at appl_need_kick; `arm` stores appl_need_kick, then
// re-reads hwtail (and hwcur, for `drained`).

weakening!(finds_lost_interrupt_without_notify_fence, sw_notify_fence: None, LostWakeup);

weakening!(finds_lost_interrupt_with_acqrel_notify_fence, sw_notify_fence: Some(AcqRel), LostWakeup);

weakening!(finds_lost_interrupt_without_arm_fence, app_arm_fence: None, LostWakeup);

weakening!(finds_lost_interrupt_with_acqrel_arm_fence, app_arm_fence: Some(AcqRel), LostWakeup);

// The release/acquire pairs hand over slot buffers (and `cur`), not
// wake-ups: each weakened alone lets a buffer access race.

weakening!(finds_race_with_relaxed_head_store, app_head_store: Relaxed, Unordered);

weakening!(finds_race_with_relaxed_prologue_head_load, sw_head_load: Relaxed, Unordered);

weakening!(finds_race_with_relaxed_hwtail_store, sw_hwtail_store: Relaxed, Unordered);

weakening!(finds_race_with_relaxed_hwtail_load, app_hwtail_load: Relaxed, Unordered);

weakening!(finds_race_with_relaxed_hwcur_store, sw_hwcur_store: Relaxed, Unordered);

weakening!(finds_race_with_relaxed_hwcur_load, app_hwcur_load: Relaxed, Unordered);
