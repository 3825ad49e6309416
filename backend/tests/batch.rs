//! A port's TX batch limit: one fetch takes at most `NetConfig::batch`
//! chains, and the rest stay on the avail ring for the next fetch.

use std::time::{Duration, Instant};

use backend::testing::{frame, rig_dir, FakeGuest, GuestConfig};
use backend::{BackendError, NetConfig, NetPort};
use vale::{Frag, Source};

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

#[test]
fn a_fetch_takes_at_most_the_batch() {
    let dir = rig_dir("batch");
    let mut cfg = NetConfig::new("p0", &dir.join("p0.sock"));
    cfg.batch = 8;
    let port = NetPort::start(cfg).expect("start");
    let mut guest = FakeGuest::connect(&dir.join("p0.sock"), GuestConfig::default()).unwrap();
    let mut q = port.tx_queue(0);
    for i in 0..20u32 {
        assert!(guest.send(0, &[0; 12], &frame(B, A, 60, i), &[]));
    }
    let mut frags: Vec<Frag> = Vec::new();
    // The queue binds when the guest's rings are set up; wait for the
    // first fetch that sees them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.iter().sum::<usize>() < 20 {
        assert!(Instant::now() < deadline, "fetched only {got:?}");
        frags.clear();
        let n = q.fetch(&mut frags, vale::MAX_BATCH);
        q.complete(n);
        if n > 0 {
            got.push(n);
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(got, [8, 8, 4]);
    // Every chain went back to the guest.
    let deadline = Instant::now() + Duration::from_secs(5);
    while guest.tx_used_idx(0) != 20 {
        assert!(
            Instant::now() < deadline,
            "{} of 20 returned",
            guest.tx_used_idx(0)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_batch_is_refused() {
    let dir = rig_dir("batch");
    for b in [0u16, 1025] {
        let mut cfg = NetConfig::new("p0", &dir.join("p0.sock"));
        cfg.batch = b;
        match NetPort::start(cfg) {
            Err(e @ BackendError::Batch(_)) => {
                assert!(e.to_string().contains(&format!("batch {b}")), "{e}");
                assert_eq!(e.errno(), libc::EINVAL);
            }
            other => panic!("batch {b}: {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
