//! What the two core probes (`core-probe`, `line-pull`) share: pinning a
//! thread to a CPU, and reading a numeric argument.

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::other(format!("no CPU {cpu}")));
    }
    // SAFETY: cpu_set_t is plain data, zeroed is its empty set; CPU_SET
    // writes inside it for a cpu below CPU_SETSIZE (checked above).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Argument `i` as a number, `default` if absent.
pub fn arg(args: &[String], i: usize, default: u64) -> Result<u64, String> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|e| format!("argument {i} {s:?}: {e}")),
    }
}
