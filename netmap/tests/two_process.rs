//! The region and the sync protocol across two processes: the test process
//! plays the switch, a child process (this same test binary, re-executed
//! with `VALE_TEST_CHILD` set) plays the application. Descriptors travel by
//! `SCM_RIGHTS`, as they do from valed.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use netmap::region::IfView;
use netmap::ring::RingView;
use netmap::sync::SyncError;
use netmap::sys::{recv_with_fds, send_with_fds, SharedMap};
use netmap::testing::{consume, produce, LoopClient, Loopback};

const TIMEOUT: Duration = Duration::from_secs(20);

/// The parameters sent along with the descriptors.
#[derive(Debug, Clone, Copy)]
struct Meta {
    memsize: u64,
    nifp: u64,
    frames: u64,
    batch: u64,
}

impl Meta {
    fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, v) in [self.memsize, self.nifp, self.frames, self.batch]
            .iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
    fn from_bytes(b: &[u8]) -> Meta {
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        Meta {
            memsize: w(0),
            nifp: w(1),
            frames: w(2),
            batch: w(3),
        }
    }
}

fn sock_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vale-2p-{}-{tag}.sock", std::process::id()))
}

/// Starts the child in `role`, accepts its connection and sends it the
/// loopback's descriptors.
fn start_child(role: &str, lb: &Loopback, frames: u64, batch: u64) -> (Child, UnixStream) {
    let path = sock_path(role);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("VALE_TEST_CHILD", role)
        .env("VALE_TEST_SOCK", &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    let _ = std::fs::remove_file(&path);
    let meta = Meta {
        memsize: lb.region.memsize() as u64,
        nifp: lb.nifp as u64,
        frames,
        batch,
    };
    send_with_fds(&conn, &meta.to_bytes(), &lb.fds().unwrap()).unwrap();
    (child, conn)
}

/// The application side, run in the child process.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var("VALE_TEST_CHILD") else {
        return; // Not a child: nothing to do in the normal test run.
    };
    let mut conn = UnixStream::connect(std::env::var("VALE_TEST_SOCK").unwrap()).unwrap();
    let mut buf = [0u8; 64];
    let (n, fds) = recv_with_fds(&conn, &mut buf).unwrap();
    assert_eq!(n, 32);
    let m = Meta::from_bytes(&buf[..n]);
    match role.as_str() {
        "pipeline" => {
            let cl = LoopClient::from_fds(fds, m.memsize as usize, m.nifp as usize).unwrap();
            let peer = conn.as_fd();
            std::thread::scope(|s| {
                let p = s.spawn(|| {
                    produce(
                        &cl.tx().unwrap(),
                        m.frames,
                        m.batch as u32,
                        1514,
                        Some(peer),
                        TIMEOUT,
                    )
                });
                consume(
                    &cl.rx().unwrap(),
                    m.frames,
                    m.batch as u32,
                    1514,
                    Some(peer),
                    TIMEOUT,
                )
                .expect("every frame in order");
                p.join().unwrap().expect("producer");
            });
            conn.write_all(b"done").unwrap();
        }
        "stall" => {
            // Sends forever; the parent kills us mid-stream.
            let cl = LoopClient::from_fds(fds, m.memsize as usize, m.nifp as usize).unwrap();
            conn.write_all(b"go").unwrap();
            let _ = produce(&cl.tx().unwrap(), u64::MAX, 8, 60, None, TIMEOUT);
        }
        "inspect" => {
            // Map the region as a client, find the rings through the
            // netmap_if, try to resize the memfd, and leave a mark.
            let mem = fds.into_iter().next().unwrap();
            let map = SharedMap::map(&mem, m.memsize as usize).unwrap();
            let nif = IfView::new(&map, m.nifp as usize).unwrap();
            assert_eq!(nif.name(), "vale0:lb");
            let tx = RingView::open(&map, nif.txring(0).unwrap()).unwrap();
            let rx = RingView::open(&map, nif.rxring(0).unwrap()).unwrap();
            assert_eq!((tx.num_slots(), tx.tail(), rx.tail()), (64, 63, 0));
            let file = std::fs::File::from(mem);
            let e = file.set_len(4096).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "shrink refused");
            let e = file.set_len(m.memsize * 2).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "grow refused");
            // SAFETY: fcntl with integer arguments on a descriptor we own.
            let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
            assert_eq!(r, -1, "seals are sealed");
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "F_SEAL_SEAL set: {e}");
            tx.write_buf(tx.slot(5).buf_idx, 0, b"from the child")
                .unwrap();
            conn.write_all(b"done").unwrap();
        }
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn handoff_across_processes_in_order() {
    let frames = std::env::var("VALE_SYNC_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000);
    for batch in [512, 1] {
        let frames = if batch == 1 { 100_000 } else { frames };
        let lb = Loopback::new(1024, 2048).unwrap();
        let (mut child, mut conn) = start_child("pipeline", &lb, frames, batch);
        let stop = AtomicBool::new(false);
        let st = std::thread::scope(|s| {
            let sw = s.spawn(|| lb.run(&stop, None, TIMEOUT));
            let mut done = [0u8; 4];
            conn.read_exact(&mut done)
                .expect("child reports completion");
            stop.store(true, Ordering::Relaxed);
            lb.kick_tx.kick().unwrap();
            lb.kick_rx.kick().unwrap();
            sw.join().unwrap().expect("switch")
        });
        assert!(child.wait().unwrap().success());
        assert_eq!(st.slots, frames);
        assert_eq!(st.bad_slots + st.resets, 0);
    }
}

#[test]
fn switch_sees_a_killed_client() {
    let lb = Loopback::new(256, 2048).unwrap();
    let (mut child, mut conn) = start_child("stall", &lb, 0, 0);
    let mut go = [0u8; 2];
    conn.read_exact(&mut go).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sw = s.spawn(|| lb.run(&stop, Some(conn.as_fd()), TIMEOUT));
        std::thread::sleep(Duration::from_millis(200));
        child.kill().unwrap();
        let e = sw.join().unwrap().unwrap_err();
        assert!(matches!(e, SyncError::PeerGone), "{e}");
    });
    child.wait().unwrap();
}

#[test]
fn client_maps_the_same_rings_and_cannot_resize() {
    let lb = Loopback::new(64, 2048).unwrap();
    let (mut child, mut conn) = start_child("inspect", &lb, 0, 0);
    let mut done = [0u8; 4];
    let got = conn.read_exact(&mut done);
    assert!(child.wait().unwrap().success(), "child checks failed");
    got.unwrap();
    let tx = lb.region.ring_view(lb.tx_off).unwrap();
    let mut mark = [0u8; 14];
    tx.read_buf(tx.slot(5).buf_idx, 0, &mut mark).unwrap();
    assert_eq!(&mark, b"from the child");
    assert_eq!(lb.region.map().len(), lb.region.memsize(), "size unchanged");
}
