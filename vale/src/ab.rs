//! A/B measurement inside one process (feature `ab`).
//!
//! This host's speed swings by 2× between minutes, and the two vCPUs move
//! between cores that share a cache and cores that do not every few tens
//! of seconds, so two builds run one after the other cannot be told apart
//! by less than that. Here both variants of a change live in one build:
//! the code under test asks [`on`] which one to run, a thread flips it
//! every [`FLIP`], and the forwarding loop counts the frames it moved
//! under each ([`count`]). Both variants then see the same placement and
//! the same neighbours, in 50 ms slices. A/A runs (nothing asks [`on`])
//! gave B/A between 0.996 and 1.018 over six 8-second loopback runs;
//! 250 ms slices gave 0.985 to 1.054. `scripts/bench-ab.sh` drives it;
//! docs/benchmarks.md ("Stop 27" under "VM ports: virtio-user loopback",
//! "Measuring a change A/B in one process") says how to use it.
//!
//! Without the feature [`on`] is a constant `false` and [`count`] does
//! nothing: release builds carry no trace of it.

#[cfg(feature = "ab")]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// How long each variant runs before the other takes over.
pub const FLIP: std::time::Duration = std::time::Duration::from_millis(50);

#[cfg(feature = "ab")]
static ON: AtomicBool = AtomicBool::new(false);
#[cfg(feature = "ab")]
static FRAMES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Whether variant B runs now. Always false without the feature.
#[inline(always)]
pub fn on() -> bool {
    #[cfg(feature = "ab")]
    {
        ON.load(Relaxed)
    }
    #[cfg(not(feature = "ab"))]
    {
        false
    }
}

/// Counts `frames` moved under the variant running now.
#[inline(always)]
pub fn count(frames: usize) {
    #[cfg(feature = "ab")]
    FRAMES[usize::from(on())].fetch_add(frames as u64, Relaxed);
    #[cfg(not(feature = "ab"))]
    let _ = frames;
}

#[cfg(feature = "ab")]
static CYCLES: [[AtomicU64; 2]; 2] = [
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
];

/// A time stamp in the core's cycles, for [`poll`] (0 without the
/// feature).
#[inline(always)]
pub fn stamp() -> u64 {
    #[cfg(all(feature = "ab", target_arch = "x86_64"))]
    {
        // SAFETY: RDTSC reads the time-stamp counter; it touches no
        // memory and has no precondition.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(all(feature = "ab", target_arch = "x86_64")))]
    {
        0
    }
}

/// Counts the cycles since `since` (a [`stamp`]: the end of the
/// forwarding loop's previous pass) as busy, if this pass moved frames,
/// or idle, under the variant running now: whether the switch core is
/// the bottleneck or waits for its peers. Returns the stamp for the next.
#[inline(always)]
pub fn poll(busy: bool, since: u64) -> u64 {
    #[cfg(feature = "ab")]
    {
        let now = stamp();
        CYCLES[usize::from(on())][usize::from(!busy)].fetch_add(now.wrapping_sub(since), Relaxed);
        now
    }
    #[cfg(not(feature = "ab"))]
    {
        let _ = (busy, since);
        0
    }
}

/// The share of the forwarding loops' cycles that moved frames, under A
/// and under B.
pub fn busy() -> (f64, f64) {
    #[cfg(feature = "ab")]
    {
        let share = |v: usize| {
            let (b, i) = (CYCLES[v][0].load(Relaxed), CYCLES[v][1].load(Relaxed));
            b as f64 / (b + i).max(1) as f64
        };
        (share(0), share(1))
    }
    #[cfg(not(feature = "ab"))]
    {
        (0.0, 0.0)
    }
}

/// Hands over to the other variant.
pub fn flip() {
    #[cfg(feature = "ab")]
    ON.fetch_xor(true, Relaxed);
}

/// Frames moved so far under A and under B.
pub fn frames() -> (u64, u64) {
    #[cfg(feature = "ab")]
    {
        (FRAMES[0].load(Relaxed), FRAMES[1].load(Relaxed))
    }
    #[cfg(not(feature = "ab"))]
    {
        (0, 0)
    }
}

#[cfg(all(test, feature = "ab"))]
mod tests {
    use super::*;

    #[test]
    fn frames_count_under_the_variant_running() {
        let (a0, b0) = frames();
        let first = on();
        count(3);
        flip();
        assert_ne!(on(), first);
        count(5);
        flip();
        let (a, b) = frames();
        let (on_a, on_b) = if first { (5, 3) } else { (3, 5) };
        assert_eq!((a - a0, b - b0), (on_a, on_b));
    }
}

#[cfg(all(test, not(feature = "ab")))]
mod tests {
    use super::*;

    #[test]
    fn without_the_feature_b_never_runs_and_nothing_counts() {
        flip();
        count(7);
        assert!(!on());
        assert_eq!(frames(), (0, 0));
    }
}
