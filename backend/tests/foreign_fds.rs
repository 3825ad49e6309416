//! A descriptor a VMM sends that valed does not use (not shared memory,
//! an eventfd or a socket: a file on some file system, which could be a
//! FUSE mount whose daemon never answers `close`'s FLUSH) is set aside as
//! it arrives, closed off the session's thread, and its request refused
//! by name; the session goes on.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use backend::testing::{session_on, NullDevice};

const GET_FEATURES: u32 = 1;
const SET_VRING_CALL: u32 = 13;
/// REPLY_ACK asked for.
const NEED_REPLY: u32 = 1 | 0x8;

fn reply(s: &mut UnixStream) -> (u32, u64) {
    let mut m = [0u8; 20];
    s.read_exact(&mut m).unwrap();
    (
        u32::from_le_bytes(m[0..4].try_into().unwrap()),
        u64::from_le_bytes(m[12..20].try_into().unwrap()),
    )
}

#[test]
fn a_file_sent_as_a_call_fd_is_set_aside_and_refused_by_name() {
    let dev = NullDevice::default();
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut s = session_on(&dev, b);
    let f = std::fs::File::open("/proc/self/status").unwrap();
    let mut m = Vec::new();
    m.extend(SET_VRING_CALL.to_le_bytes());
    m.extend(NEED_REPLY.to_le_bytes());
    m.extend(8u32.to_le_bytes());
    m.extend(0u64.to_le_bytes());
    let n = netmap::sys::send_with_fds(&a, &m, &[f.as_fd()]).unwrap();
    a.write_all(&m[n..]).unwrap();
    s.serve_one().unwrap();
    assert_eq!(reply(&mut a), (SET_VRING_CALL, 1), "refused");
    assert_eq!(dev.refused.load(Ordering::Relaxed), 1);
    // The session goes on.
    let mut m = Vec::new();
    m.extend(GET_FEATURES.to_le_bytes());
    m.extend(1u32.to_le_bytes());
    m.extend(0u32.to_le_bytes());
    a.write_all(&m).unwrap();
    s.serve_one().unwrap();
    assert_eq!(reply(&mut a).0, GET_FEATURES);
}
