//! The ring synchronisation protocol between an application and the switch,
//! over the CSB.
//!
//! In kernel netmap the application's `ioctl(NIOCTXSYNC)` runs the kernel's
//! txsync in the same thread. Here the switch (valed) is another process, so
//! each side publishes its indexes in the CSB and rings the other's eventfd
//! only when that side said it is going to sleep:
//!
//! ```text
//!  application                          switch
//!  STORE cur; STORE(release) head       LOAD(acquire) head; LOAD cur
//!  fence(SeqCst)                        ... forward ...
//!  LOAD kern_need_kick -> kick?         STORE hwcur; STORE(release) hwtail
//!  LOAD(acquire) hwtail; LOAD hwcur     fence(SeqCst)
//!                                       LOAD appl_need_kick -> kick?
//! ```
//!
//! Going to sleep is the mirror image: store `*_need_kick = 1`, a SeqCst
//! fence, then re-read the index the peer advances. Store-then-load on both
//! sides is Dekker's pattern; without the fence on either side a CPU may
//! perform the load before the store becomes visible, both sides conclude
//! the other will kick, and a wake-up is lost.
//!
//! The switch side ([`KringState`]) keeps its own copy of every index, reads
//! `head` and `cur` once per sync, and resets the ring when they fall outside
//! the window the ring contract allows. The application side ([`AppRing`])
//! trusts the switch but still clamps what it reads, so a broken peer cannot
//! make it index out of bounds.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::csb::CsbEntry;
use crate::ring::{self, RingView};
use crate::sys::{poll, EventFd, PollFd, PollFlags};

/// Errors of the sync protocol.
#[derive(Debug, Error)]
pub enum SyncError {
    /// The peer (valed, or the client) closed its end or died.
    #[error("peer went away")]
    PeerGone,
    /// A wait ran out of time.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// An index outside the ring: the application's head or cur, or an
    /// index the switch published.
    #[error("ring {ring}: {what} {value} outside {num_slots} slots")]
    BadIndex {
        /// Ring number in the CSB.
        ring: u32,
        /// Which index.
        what: &'static str,
        /// The value read.
        value: u32,
        /// Ring size.
        num_slots: u32,
    },
    /// A system call failed.
    #[error("sync: {0}")]
    Io(#[from] io::Error),
}

/// Direction of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Application transmits, switch consumes.
    Tx,
    /// Switch fills, application receives.
    Rx,
}

/// The application side of one ring: the `netmap_ring` the user manipulates,
/// its CSB entry, and the doorbells.
#[derive(Debug, Clone, Copy)]
pub struct AppRing<'a> {
    /// The ring in the shared region.
    pub ring: RingView<'a>,
    /// Its CSB entry.
    pub csb: CsbEntry<'a>,
    /// Rung to wake the switch.
    pub kick: &'a EventFd,
    /// Rung by the switch to wake us.
    pub irq: &'a EventFd,
    /// Direction.
    pub dir: Dir,
    /// Index of the ring in the CSB (for error messages).
    pub id: u32,
}

impl<'a> AppRing<'a> {
    /// Publishes `head` and `cur`, kicks the switch if it sleeps, and takes
    /// the new `tail`. This is `ioctl(NIOCTXSYNC)` / `ioctl(NIOCRXSYNC)`:
    /// for RX it also stamps `ring->ts`.
    #[inline]
    pub fn sync(&self) -> Result<(), SyncError> {
        self.sync_with(|| ())
    }

    /// [`sync`](Self::sync) with `work` run between publishing `head` and
    /// `cur` and taking `tail`: the switch's side of the sync, for rings
    /// served in the caller's own process (an interface opened without
    /// valed).
    #[inline]
    pub fn sync_with(&self, work: impl FnOnce()) -> Result<(), SyncError> {
        let head = self.ring.head();
        let cur = self.ring.cur();
        let n = self.ring.num_slots();
        // netmap's ioctl fails with EINVAL here; so do we, before the
        // switch sees the values and resets the ring.
        for (what, value) in [("head", head), ("cur", cur)] {
            if value >= n {
                return Err(SyncError::BadIndex {
                    ring: self.id,
                    what,
                    value,
                    num_slots: n,
                });
            }
        }
        // cur first, head with release: the switch reads head with acquire
        // and then cur, so it never sees a head newer than cur, and it sees
        // every slot written before head moved.
        self.csb.cur.store(cur, Ordering::Relaxed);
        self.csb.head.store(head, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.csb.kern_need_kick.load(Ordering::Relaxed) != 0 {
            self.kick.kick()?;
        }
        work();
        let tail = self.read_hwtail()?;
        self.ring.set_tail(tail);
        if self.dir == Dir::Rx {
            let (sec, usec) = now_timeval();
            self.ring.set_ts(sec, usec);
        }
        Ok(())
    }

    fn read_hwtail(&self) -> Result<u32, SyncError> {
        let n = self.ring.num_slots();
        let tail = self.csb.hwtail.load(Ordering::Acquire);
        if tail >= n {
            return Err(SyncError::BadIndex {
                ring: self.id,
                what: "hwtail",
                value: tail,
                num_slots: n,
            });
        }
        Ok(tail)
    }

    /// Whether the user can make progress: TX has free slots, RX has frames.
    #[inline]
    pub fn ready(&self) -> bool {
        let n = self.ring.num_slots();
        let (cur, tail) = (self.ring.cur(), self.ring.tail());
        cur < n && tail < n && ring::space(cur, tail, n) > 0
    }

    /// Whether every slot handed to the switch has been consumed
    /// (`hwcur == head`).
    pub fn drained(&self) -> bool {
        self.csb.hwcur.load(Ordering::Acquire) == self.ring.head()
    }

    /// Asks for a kick and re-checks (see the module docs). Returns `true`
    /// if the caller may block on `irq`; `false` if progress became possible
    /// in the meantime (the request is withdrawn then).
    fn arm(&self, cond: impl Fn(&Self) -> bool) -> Result<bool, SyncError> {
        self.csb.appl_need_kick.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let tail = self.read_hwtail()?;
        self.ring.set_tail(tail);
        if cond(self) {
            self.csb.appl_need_kick.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    /// Withdraws a kick request made by [`arm_ready`](Self::arm_ready).
    pub fn disarm(&self) {
        self.csb.appl_need_kick.store(0, Ordering::Relaxed);
    }

    /// Before sleeping on `irq` together with other descriptors (an
    /// emulated `poll()` over several files): asks the switch for a kick
    /// and re-checks. Returns `true` if the caller may sleep; `false` if the
    /// ring became ready meanwhile (the request is withdrawn then). Call
    /// [`disarm`](Self::disarm) after the sleep.
    pub fn arm_ready(&self) -> Result<bool, SyncError> {
        self.arm(|r| r.ready())
    }
}

/// What [`poll_rings`] waits for on each ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A TX ring with free slots or an RX ring with frames.
    Ready,
    /// A TX ring whose every slot the switch has consumed (close drains).
    Drained,
}

/// netmap's `poll()`: syncs the rings and blocks, with no busy wait, until
/// one of them satisfies `want`, the peer dies (`peer` becomes readable with
/// EOF or hangs up), or `timeout` passes. Returns the index of the first ring
/// that satisfies `want`.
///
/// It blocks only after asking the switch for a kick on every ring and
/// re-checking, so a wake-up cannot fall between the check and the sleep.
pub fn poll_rings(
    rings: &[AppRing<'_>],
    want: Want,
    peer: Option<BorrowedFd<'_>>,
    timeout: Option<Duration>,
) -> Result<usize, SyncError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let cond = |r: &AppRing<'_>| match want {
        Want::Ready => r.ready(),
        Want::Drained => r.drained(),
    };
    loop {
        for (i, r) in rings.iter().enumerate() {
            r.sync()?;
            if cond(r) {
                return Ok(i);
            }
        }
        let mut armed = 0;
        let mut ready = None;
        for (i, r) in rings.iter().enumerate() {
            if r.arm(cond)? {
                armed += 1;
            } else {
                ready = Some(i);
                break;
            }
        }
        if let Some(i) = ready {
            rings[..armed].iter().for_each(AppRing::disarm);
            return Ok(i);
        }
        let left = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    rings.iter().for_each(AppRing::disarm);
                    return Err(SyncError::TimedOut(timeout.unwrap_or_default()));
                }
                Some(d - now)
            }
        };
        let mut irqs: Vec<&EventFd> = Vec::with_capacity(rings.len());
        for r in rings {
            if !irqs.iter().any(|e| same_fd(e.as_fd(), r.irq.as_fd())) {
                irqs.push(r.irq);
            }
        }
        let mut fds: Vec<PollFd<'_>> = irqs
            .iter()
            .map(|e| PollFd::new(e.as_fd(), PollFlags::IN))
            .collect();
        if let Some(p) = peer {
            // RDHUP only: HUP/ERR/NVAL are always reported, and a pending
            // control message must not make this poll return at once.
            fds.push(PollFd::new(p, PollFlags::RDHUP));
        }
        let res = poll(&mut fds, left);
        rings.iter().for_each(AppRing::disarm);
        res?;
        for (e, p) in irqs.iter().zip(&fds) {
            if p.revents.intersects(PollFlags::IN) {
                e.drain()?;
            }
        }
        if peer.is_some() && peer_dead(&fds[irqs.len()]) {
            return Err(SyncError::PeerGone);
        }
    }
}

fn same_fd(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    a.as_raw_fd() == b.as_raw_fd()
}

/// A control socket signals its peer's death with HUP/RDHUP, or with
/// readability and a zero-length read; anything readable but alive is a
/// message for the control path, not for us, so only hang-ups count here.
fn peer_dead(p: &PollFd<'_>) -> bool {
    p.revents
        .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL)
}

/// Drains every TX ring before close, as netmap's close does implicitly:
/// waits, up to `timeout`, until the switch has consumed every slot the
/// application published. Rings are synced first, so a `head` advanced
/// without a txsync is published too.
pub fn drain_tx(
    rings: &[AppRing<'_>],
    peer: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<(), SyncError> {
    let deadline = Instant::now() + timeout;
    for r in rings.iter().filter(|r| r.dir == Dir::Tx) {
        loop {
            r.sync()?;
            if r.drained() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SyncError::TimedOut(timeout));
            }
            poll_rings(std::slice::from_ref(r), Want::Drained, peer, Some(left))?;
        }
    }
    Ok(())
}

fn now_timeval() -> (i64, i64) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_micros() as i64)
}

/// Why the switch reset a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("head {head} cur {cur} outside window [{rhead}, {rtail}] of {num_slots} slots: ring reset")]
pub struct RingReset {
    /// head read from the CSB.
    pub head: u32,
    /// cur read from the CSB.
    pub cur: u32,
    /// the previous head accepted.
    pub rhead: u32,
    /// the tail last given to the user.
    pub rtail: u32,
    /// ring size.
    pub num_slots: u32,
}

/// The switch's private state of one ring (netmap's `netmap_kring`): the
/// indexes it trusts, never re-read from shared memory.
#[derive(Debug, Clone)]
pub struct KringState {
    num_slots: u32,
    /// First slot the switch has not consumed (TX) / the user has not
    /// released (RX).
    pub nr_hwcur: u32,
    /// First slot the switch has not given to the user.
    pub nr_hwtail: u32,
    /// Last `head` accepted from the user.
    pub rhead: u32,
    /// Last `cur` accepted from the user.
    pub rcur: u32,
    /// Rings resets for contract violations.
    pub resets: u64,
    dir: Dir,
}

impl KringState {
    /// A fresh ring: TX starts with every slot but one free, RX empty.
    pub fn new(dir: Dir, num_slots: u32) -> KringState {
        let nr_hwtail = match dir {
            Dir::Tx => num_slots - 1,
            Dir::Rx => 0,
        };
        KringState {
            num_slots,
            nr_hwcur: 0,
            nr_hwtail,
            rhead: 0,
            rcur: 0,
            resets: 0,
            dir,
        }
    }

    /// Ring size.
    pub fn num_slots(&self) -> u32 {
        self.num_slots
    }

    /// Direction.
    pub fn dir(&self) -> Dir {
        self.dir
    }

    /// Reads the user's `head`/`cur` once and checks them against the window.
    /// On success the new head is accepted: for TX, `[nr_hwcur, rhead)` is
    /// what there is to send; for RX the slots before it are released.
    #[inline]
    pub fn prologue(&mut self, csb: &CsbEntry<'_>) -> Result<u32, RingReset> {
        let head = csb.head.load(Ordering::Acquire);
        let cur = csb.cur.load(Ordering::Relaxed);
        if head == self.rhead && cur == self.rcur {
            return Ok(head);
        }
        if !ring::window_ok(self.rhead, self.nr_hwtail, head, cur, self.num_slots) {
            return Err(RingReset {
                head,
                cur,
                rhead: self.rhead,
                rtail: self.nr_hwtail,
                num_slots: self.num_slots,
            });
        }
        self.rhead = head;
        self.rcur = cur;
        if self.dir == Dir::Rx {
            self.nr_hwcur = head;
        }
        Ok(head)
    }

    /// Netmap's ring reinit after a contract violation: the user's indexes
    /// go back to what the switch last accepted, in the ring and the CSB.
    pub fn reset(&mut self, csb: &CsbEntry<'_>, ring: Option<&RingView<'_>>) {
        self.resets += 1;
        self.rhead = self.nr_hwcur;
        self.rcur = self.nr_hwcur;
        csb.cur.store(self.nr_hwcur, Ordering::Relaxed);
        csb.head.store(self.nr_hwcur, Ordering::Relaxed);
        if let Some(r) = ring {
            r.set_head(self.nr_hwcur);
            r.set_cur(self.nr_hwcur);
            r.set_tail(self.nr_hwtail);
        }
        self.publish(csb);
    }

    /// TX: the first slot to send and how many there are.
    #[inline]
    pub fn tx_pending(&self) -> (u32, u32) {
        (
            self.nr_hwcur,
            ring::distance(self.nr_hwcur, self.rhead, self.num_slots),
        )
    }

    /// TX: `k` slots were consumed; they become free for the user again.
    #[inline]
    pub fn tx_consumed(&mut self, k: u32) {
        debug_assert!(k <= self.tx_pending().1);
        self.nr_hwcur = ring::advance(self.nr_hwcur, k, self.num_slots);
        self.nr_hwtail = ring::prev(self.nr_hwcur, self.num_slots);
    }

    /// RX: the first free slot and how many the switch may fill.
    #[inline]
    pub fn rx_space(&self) -> (u32, u32) {
        let last = ring::prev(self.nr_hwcur, self.num_slots);
        (
            self.nr_hwtail,
            ring::distance(self.nr_hwtail, last, self.num_slots),
        )
    }

    /// RX: `k` slots were filled and are handed to the user.
    #[inline]
    pub fn rx_filled(&mut self, k: u32) {
        debug_assert!(k <= self.rx_space().1);
        self.nr_hwtail = ring::advance(self.nr_hwtail, k, self.num_slots);
    }

    /// Publishes `hwcur` and then `hwtail` (release), so the user never sees
    /// a tail newer than the cur that goes with it.
    #[inline]
    pub fn publish(&self, csb: &CsbEntry<'_>) {
        // Release on both: an application that sees hwcur pass a slot may
        // reuse its buffer, so the switch's reads of it must be done.
        csb.hwcur.store(self.nr_hwcur, Ordering::Release);
        csb.hwtail.store(self.nr_hwtail, Ordering::Release);
    }

    /// After [`publish`](Self::publish): kicks the application if it sleeps.
    #[inline]
    pub fn notify(&self, csb: &CsbEntry<'_>, irq: &EventFd) -> io::Result<bool> {
        fence(Ordering::SeqCst);
        if csb.appl_need_kick.load(Ordering::Relaxed) != 0 {
            // `irq` must be the switch's own description (a pipe's write
            // end, see `EventFd::pipe`), which no client can make blocking.
            irq.kick()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Before the switch sleeps on this ring's kick eventfd: asks for a kick
    /// and re-reads `head`. Returns `true` if it may sleep; `false` if the
    /// user moved in the meantime (the request is withdrawn then).
    #[inline]
    pub fn prepare_sleep(&self, csb: &CsbEntry<'_>) -> bool {
        csb.kern_need_kick.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let head = csb.head.load(Ordering::Acquire);
        if head != self.rhead {
            csb.kern_need_kick.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// After waking (or deciding not to sleep): stop asking for kicks, so
    /// the application's fast path makes no system call.
    #[inline]
    pub fn woken(&self, csb: &CsbEntry<'_>) {
        csb.kern_need_kick.store(0, Ordering::Relaxed);
    }
}
