//! The used-ring fuzz harness: a split queue driven by arbitrary bytes
//! that stand for both the driver's calls and a hostile device's writes,
//! with a model of what is in flight to check every answer against.

use std::collections::HashMap;
use std::sync::Arc;

use netmap::sys::{Memfd, SharedMap};

use crate::virtq::{Buf, SplitQueue};
use crate::vqmem::{layout, VqMem};

/// Runs one input. Layout: byte 0 picks the size (8 << (b % 4)), byte 1
/// bit 0 EVENT_IDX; then operations of 7 bytes `[op, a0, a1, a2, a3, a4,
/// a5]`:
///
/// - 0: post a chain of `1 + a0 % 4` buffers (device-writable if `a1` is
///   odd, `a2` bytes each)
/// - 1: the device writes used entry `u16(a0,a1)`: id `u16(a2,a3)`, len
///   `u16(a4,a5)`
/// - 2: the device sets the used index to `u16(a0,a1)`
/// - 3: publish; 4: reap up to `a0` entries
/// - 5: interrupts on (`a0` odd) or off
/// - 6: the device writes `avail_event` `u16(a0,a1)` and used flags `a2`
///
/// Panics if the queue reports a chain that is not in flight, a length
/// past its chain, or loses track of its descriptors.
pub fn fuzz_used(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let size: u16 = 8 << (data[0] % 4);
    let event_idx = data[1] & 1 != 0;
    let (d, a, u, end) = layout(0, size);
    let len = end.next_multiple_of(4096);
    let Ok(fd) = Memfd::create_sealed("fuzz-virtq", len, false) else {
        return;
    };
    let Ok(map) = SharedMap::map(&fd, len) else {
        return;
    };
    let map = Arc::new(map);
    let Ok(mem) = VqMem::new(map.clone(), d, a, u, size) else {
        return;
    };
    let mut q = SplitQueue::new(mem, event_idx);
    // token -> (descriptors, writable bytes)
    let mut live: HashMap<u32, (usize, u32)> = HashMap::new();
    let mut next_token = 0u32;
    let w = |a: u8, b: u8| u16::from_le_bytes([a, b]);
    for op in data[2..].chunks_exact(7) {
        match op[0] % 7 {
            0 => {
                let n = 1 + usize::from(op[1] % 4);
                let write = op[2] & 1 != 0;
                let bufs: Vec<Buf> = (0..n)
                    .map(|k| Buf {
                        addr: 0x1000 * (k as u64 + 1),
                        len: u32::from(op[3]),
                        write,
                    })
                    .collect();
                let free = q.free();
                let ids = q.free_ids(n);
                match ids
                    .as_deref()
                    .and_then(|ids| q.post(ids, &bufs, next_token))
                {
                    Some(_) => {
                        assert_eq!(q.free(), free - n);
                        let cap = if write {
                            u32::from(op[3]) * n as u32
                        } else {
                            0
                        };
                        live.insert(next_token, (n, cap));
                        next_token += 1;
                    }
                    None => assert!(free < n, "refused with {free} free for {n}"),
                }
            }
            1 => {
                let pos = usize::from(w(op[1], op[2]) % size);
                let _ = map.write::<u32>(u + 4 + 8 * pos, u32::from(w(op[3], op[4])));
                let _ = map.write::<u32>(u + 8 + 8 * pos, u32::from(w(op[5], op[6])));
            }
            2 => {
                let _ = map.write::<u16>(u + 2, w(op[1], op[2]));
            }
            3 => {
                q.publish();
            }
            4 => {
                q.reap(usize::from(op[1]), |e| {
                    let (_, cap) = live
                        .remove(&e.token)
                        .unwrap_or_else(|| panic!("token {} reaped but not in flight", e.token));
                    assert!(e.len <= cap, "len {} past the chain's {cap}", e.len);
                });
            }
            5 => {
                if op[1] & 1 != 0 {
                    q.enable_irq();
                } else {
                    q.disable_irq();
                }
            }
            _ => {
                let _ = map.write::<u16>(u + 4 + 8 * usize::from(size), w(op[1], op[2]));
                let _ = map.write::<u16>(u, u16::from(op[3]));
            }
        }
        let held: usize = live.values().map(|&(n, _)| n).sum();
        assert_eq!(
            q.free() + held,
            usize::from(size),
            "descriptors lost or doubled"
        );
    }
}
