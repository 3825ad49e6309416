//! Guest memory files that shrink while valed has them mapped.
//!
//! A VMM's memory file is checked when it is mapped (`memory.rs`), but the
//! VMM keeps the file and may truncate it later; valed's next access to a
//! page past the new end raises SIGBUS, which would kill valed and every
//! VM's network with it. A file sealed against shrinking (`F_SEAL_SHRINK`,
//! which QEMU's memfd backend sets by default) cannot do that; hugetlbfs
//! and tmpfs files and DPDK's memfds cannot be sealed after the fact, so
//! valed catches the fault instead:
//!
//! - Every guest region valed maps is listed here (address range, fixed
//!   table, lock-free for the handler).
//! - The SIGBUS handler looks the faulting address up. Inside a listed
//!   region, it maps private zero pages over the faulting page
//!   (`MAP_FIXED|MAP_ANONYMOUS`), marks the region faulted, rings
//!   [`notifier`], and returns: the access is retried and succeeds, reading
//!   zeros or writing into memory nobody reads. Elsewhere, it hands the
//!   signal to the handler that was there before (Rust's stack-overflow
//!   handler, then the default action: the process dies as it would have).
//! - Each session watches the notifier and, when its memory has a faulted
//!   region, ends with an error naming the region: that VMM is dropped and
//!   its mapping released; nothing else is disturbed.
//!
//! A listed range leaves the table only after its mapping is gone (the
//! region's last `Arc` dropped), so a late access by a batch still holding
//! the old map is covered too.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock, Weak};

use netmap::sys::EventFd;

/// Most guest regions mapped at once by the process (64 per session;
/// each user other than root may hold `memory::USER_MAX_REGIONS`).
pub const SLOTS: usize = 16384;

struct Slot {
    start: AtomicUsize,
    /// 0: free. Set last when a range is listed, cleared first when it
    /// leaves.
    len: AtomicUsize,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// The regions behind the table's slots, to learn when their mappings go.
static OWNERS: Mutex<Vec<(usize, Weak<dyn Send + Sync>)>> = Mutex::new(Vec::new());

static NOTIFY: OnceLock<EventFd> = OnceLock::new();
/// The notifier's descriptor for the handler (-1: none).
static NOTIFY_FD: AtomicUsize = AtomicUsize::new(usize::MAX);
static INSTALL: Once = Once::new();
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// A listed guest region: its slot in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed(usize);

impl Listed {
    /// Whether an access to the region faulted (its file shrank).
    pub fn faulted(self) -> bool {
        TABLE[self.0].faulted.load(Ordering::Acquire)
    }
}

/// The eventfd every fault rings (edge-triggered watchers: never read).
pub fn notifier() -> Option<BorrowedFd<'static>> {
    install();
    NOTIFY.get().map(|e| e.as_fd())
}

/// Lists the mapping `[start, start + len)` of `owner` until `owner` is
/// dropped. None if the table is full: the caller must not keep the
/// mapping (guest memory is then refused, `MemError::GuardFull`).
pub fn list(start: usize, len: usize, owner: Weak<dyn Send + Sync>) -> Option<Listed> {
    install();
    let mut owners = OWNERS.lock().unwrap_or_else(|e| e.into_inner());
    // Free the slots whose mappings are gone.
    owners.retain(|(i, w)| {
        if w.strong_count() > 0 {
            return true;
        }
        TABLE[*i].len.store(0, Ordering::Release);
        TABLE[*i].start.store(0, Ordering::Relaxed);
        false
    });
    let mut used = vec![false; SLOTS];
    for (i, _) in owners.iter() {
        used[*i] = true;
    }
    let Some(i) = used.iter().position(|u| !u) else {
        tracing::error!("SIGBUS guard table full: guest memory refused until regions go");
        return None;
    };
    TABLE[i].faulted.store(false, Ordering::Relaxed);
    TABLE[i].start.store(start, Ordering::Relaxed);
    TABLE[i].len.store(len, Ordering::Release);
    owners.push((i, owner));
    Some(Listed(i))
}

/// Lists `region`'s mapping until the region is dropped.
pub fn list_arc<T: Send + Sync + 'static>(
    start: usize,
    len: usize,
    region: &Arc<T>,
) -> Option<Listed> {
    let w: Weak<T> = Arc::downgrade(region);
    list(start, len, w)
}

fn install() {
    INSTALL.call_once(|| {
        match EventFd::new() {
            Ok(e) => {
                use std::os::fd::AsRawFd;
                NOTIFY_FD.store(e.as_fd().as_raw_fd() as usize, Ordering::Relaxed);
                let _ = NOTIFY.set(e);
            }
            Err(e) => tracing::error!("SIGBUS notifier: {e}"),
        }
        PAGE.store(netmap::sys::page_size(), Ordering::Relaxed);
        // SAFETY: sigaction with a zeroed struct naming our handler
        // (SA_SIGINFO, so it gets the faulting address; SA_ONSTACK, so it
        // runs on the alternate stack Rust's threads have). A SIGBUS that
        // comes before PREVIOUS is set takes the default action, which is
        // what it would have had anyway.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as extern "C" fn(_, _, _) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &sa, &mut old) == 0 {
                let _ = PREVIOUS.set(old);
            } else {
                tracing::error!("no SIGBUS guard: {}", std::io::Error::last_os_error());
            }
        }
    });
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers;
    // si_addr is the faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in TABLE.iter() {
        let len = s.len.load(Ordering::Acquire);
        if len == 0 {
            continue;
        }
        let start = s.start.load(Ordering::Relaxed);
        if addr < start || addr - start >= len {
            continue;
        }
        let size = PAGE.load(Ordering::Relaxed);
        let page = addr & !(size - 1);
        // SAFETY: mmap and write are async-signal-safe system calls. The
        // page lies inside a mapping valed made of guest memory (listed,
        // and listed ranges outlive their mappings); replacing it with a
        // private zero page changes nothing outside that guest's memory.
        unsafe {
            let p = libc::mmap(
                page as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                break;
            }
            s.faulted.store(true, Ordering::Release);
            let fd = NOTIFY_FD.load(Ordering::Relaxed);
            if fd != usize::MAX {
                let one = 1u64;
                libc::write(fd as libc::c_int, (&one as *const u64).cast(), 8);
            }
        }
        return;
    }
    // Not guest memory: what would have happened without us.
    // SAFETY: calls the previous handler with the arguments the kernel gave
    // us, as the kernel would have (its kind told by SA_SIGINFO), or
    // restores the default action.
    unsafe {
        match PREVIOUS.get() {
            Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
                if old.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(old.sa_sigaction);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(old.sa_sigaction);
                    f(sig);
                }
            }
            _ => {
                // Default action: restore it and return; the access faults
                // again and the process dies of SIGBUS, as without us.
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
            }
        }
    }
}
