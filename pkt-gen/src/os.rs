//! The two places pkt-gen talks to the OS beyond netmap's crate: pinning a
//! thread to a CPU (`-a`) and turning SIGINT / SIGTERM into a stop flag,
//! as netmap's `^C` handler does.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpu {cpu} out of range"),
        ));
    }
    // SAFETY: cpu_set_t is plain data and all-zero is the empty set;
    // CPU_SET writes inside it for cpu < CPU_SETSIZE (checked above);
    // sched_setaffinity(0, …) reads the set we pass and only affects the
    // calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

/// Installs the SIGINT and SIGTERM handler; returns the flag it raises.
pub fn stop_flag() -> io::Result<&'static AtomicBool> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the sigaction struct is zero-initialised plain data with
        // sa_sigaction set to a handler of the right signature that only
        // stores to a static atomic; sigemptyset and sigaction receive
        // valid pointers to it.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(&STOP)
}
