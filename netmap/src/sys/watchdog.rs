//! The watchdog: bounds a write that a peer can make block.
//!
//! An eventfd a VMM shares with valed (its call fd) is one open file
//! description: the VMM can clear `O_NONBLOCK` on it and fill its counter
//! between valed's readiness check and valed's write, and Linux has no
//! per-call non-blocking write for eventfds (`RWF_NOWAIT` is refused). So
//! such writes go through [`write_bounded`]: the thread notes the write in
//! its slot (two relaxed stores, no system call), and a watchdog thread,
//! ticking every [`TICK`], sends the thread a signal whose handler does
//! nothing and is installed without `SA_RESTART` when it finds the same write
//! in progress on two ticks in a row. The write returns `EINTR`, and the
//! caller stops writing to that fd. A write is thus bounded by two ticks.
//!
//! A signal can reach a thread just after its write finished (the window
//! between the watchdog's check and its `pthread_kill`); it then interrupts
//! whatever that thread does next with `EINTR`, which every wrapper in
//! `sys` retries or treats as a spurious wake-up.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use super::cvt_isize;

/// How often the watchdog looks; a blocked write lasts at most two ticks.
pub const TICK: Duration = Duration::from_millis(50);

/// One thread that has made a bounded write.
struct Slot {
    thread: libc::pthread_t,
    /// The write in progress (a process-wide sequence number), 0 if none.
    writing: AtomicU64,
    /// What the watchdog saw on its last tick.
    seen: AtomicU64,
}

/// Every thread that has made a bounded write and has not exited. Holding
/// this lock keeps the listed threads alive: a thread's slot leaves the
/// list in its thread-local destructor, which takes the lock.
static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());
static SEQ: AtomicU64 = AtomicU64::new(1);
static START: Once = Once::new();

/// Removes the thread's slot when the thread exits.
struct Registered(Arc<Slot>);

impl Drop for Registered {
    fn drop(&mut self) {
        let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| !Arc::ptr_eq(s, &self.0));
    }
}

thread_local! {
    static MINE: Registered = Registered(register());
}

fn register() -> Arc<Slot> {
    START.call_once(start);
    let slot = Arc::new(Slot {
        // SAFETY: pthread_self has no preconditions.
        thread: unsafe { libc::pthread_self() },
        writing: AtomicU64::new(0),
        seen: AtomicU64::new(0),
    });
    SLOTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(slot.clone());
    slot
}

/// The signal the watchdog sends: a real-time one, so it neither collides
/// with a signal the process handles nor coalesces with one.
fn signal() -> libc::c_int {
    libc::SIGRTMAX() - 2
}

extern "C" fn interrupted(_: libc::c_int) {}

fn start() {
    // SAFETY: sigaction with a zeroed struct, a handler that touches no
    // state (async-signal-safe), an empty mask and no SA_RESTART, so a
    // blocked system call returns EINTR instead of resuming.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = interrupted as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        libc::sigaction(signal(), &sa, std::ptr::null_mut());
    }
    let spawned = std::thread::Builder::new()
        .name("write-watchdog".into())
        .spawn(|| loop {
            std::thread::sleep(TICK);
            let slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
            for s in slots.iter() {
                let now = s.writing.load(Ordering::Relaxed);
                if now != 0 && s.seen.load(Ordering::Relaxed) == now {
                    // SAFETY: the thread is alive: its slot is listed and
                    // we hold the lock its exit needs to unlist it.
                    unsafe { libc::pthread_kill(s.thread, signal()) };
                }
                s.seen.store(now, Ordering::Relaxed);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("no write watchdog, a peer's eventfd can stall valed: {e}");
    }
}

/// Writes `buf` to `fd` once. If the write blocks for two watchdog ticks
/// it fails with `Interrupted`; any other result is the write's own.
pub fn write_bounded(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    MINE.with(|m| {
        let slot = &m.0;
        slot.writing
            .store(SEQ.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        // SAFETY: writes at most buf.len() bytes from a live slice.
        let r = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        slot.writing.store(0, Ordering::Relaxed);
        cvt_isize(r)
    })
}
