//! vhost-user-net ports hosted by valed: created by the control request
//! `vale-ctl -n NAME --vhost-user PATH` sends, attached with VALE_ATTACH,
//! saved in the config file and back after a restart; fake guests and a
//! real driver (DPDK's testpmd with virtio-user) exchange frames through
//! them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backend::testing::{frame, FakeGuest, GuestConfig};
use common::{field, start, Valed};
use netmap::abi::*;
use netmap::ctrl::{Request, ValeVhostNewif, VALE_REQ_STATS, VALE_REQ_VHOST_NEWIF};

const T: Duration = Duration::from_secs(5);
const MA: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MB: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

fn newif(v: &Valed, name: &str, path: &Path, client: bool, queues: u16) -> i32 {
    let body = ValeVhostNewif::new(path.to_str().unwrap(), client, queues).unwrap();
    v.call(&Request::new(VALE_REQ_VHOST_NEWIF, name, &body).unwrap())
        .0
}

fn attach(v: &Valed, full: &str) -> i32 {
    v.call(&Request::new(NETMAP_REQ_VALE_ATTACH, full, &NmreqValeAttach::default()).unwrap())
        .0
}

fn detach(v: &Valed, full: &str) -> i32 {
    v.call(&Request::new(NETMAP_REQ_VALE_DETACH, full, &NmreqValeDetach::default()).unwrap())
        .0
}

fn delif(v: &Valed, name: &str) -> i32 {
    // netmap's DELIF has no body.
    v.call(&Request::with_body(NETMAP_REQ_VALE_DELIF, name, Vec::new()).unwrap())
        .0
}

fn stats(v: &Valed, port: &str) -> String {
    let (e, r) = v.call(&Request::with_body(VALE_REQ_STATS, port, Vec::new()).unwrap());
    assert_eq!(e, 0, "stats {port}");
    String::from_utf8(r.body).unwrap()
}

fn exchange(a: &mut FakeGuest, b: &mut FakeGuest, n: u32) {
    let hdr = [0u8; 12];
    for i in 0..n {
        let f = frame(MB, MA, 60 + (i as usize * 53) % 1455, i);
        assert!(a.send(0, &hdr, &f, &[12]));
        let (_, got) = b.recv(0, T).unwrap_or_else(|| panic!("A->B frame {i}"));
        assert_eq!(got, f, "A->B frame {i}");
        let g = frame(MA, MB, 1514 - (i as usize * 31) % 1400, i);
        assert!(b.send(0, &hdr, &g, &[]));
        let (_, got) = a.recv(0, T).unwrap_or_else(|| panic!("B->A frame {i}"));
        assert_eq!(got, g, "B->A frame {i}");
        a.reap_tx(0);
        b.reap_tx(0);
    }
}

/// valed with `extra` arguments and two VM ports, vma and vmb, on vale0;
/// their sockets.
fn two_ports(tag: &str, extra: &[&str]) -> (Valed, PathBuf, PathBuf) {
    let v = start(tag, extra);
    let (pa, pb) = (v.dir.0.join("a.sock"), v.dir.0.join("b.sock"));
    assert_eq!(newif(&v, "vma", &pa, false, 1), 0);
    assert_eq!(newif(&v, "vmb", &pb, false, 1), 0);
    assert_eq!(attach(&v, "vale0:vma"), 0);
    assert_eq!(attach(&v, "vale0:vmb"), 0);
    (v, pa, pb)
}

fn guest(path: &Path) -> FakeGuest {
    let mut g = FakeGuest::connect(
        path,
        GuestConfig {
            mrg_rxbuf: true,
            event_idx: true,
            ..Default::default()
        },
    )
    .expect("guest connects");
    g.set_repost(true);
    g.post_rx(0, 128, 2048);
    g
}

#[test]
fn vm_ports_created_attached_and_exchanging() {
    let (v, pa, pb) = two_ports("vhost-xchg", &["--threads", "1"]);
    assert!(
        v.list().contains(&"vale0:vma".to_string()),
        "{:?}",
        v.list()
    );
    let mut a = guest(&pa);
    let mut b = guest(&pb);
    exchange(&mut a, &mut b, 200);
    let s = stats(&v, "vale0:vma");
    assert!(s.contains("\"connected\":true"), "{s}");
    assert_eq!(field(&s, "bad_chains"), 0);
    let deadline = Instant::now() + T;
    while field(&stats(&v, "vale0:vma"), "in_packets") < 200 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }

    // netmap's rules: busy while attached, gone after detach + delete.
    assert_eq!(delif(&v, "vma"), libc::EBUSY);
    assert_eq!(
        newif(&v, "vma", &v.dir.0.join("c.sock"), false, 1),
        libc::EEXIST
    );
    drop(a);
    assert_eq!(detach(&v, "vale0:vma"), 0);
    assert_eq!(delif(&v, "vma"), 0);
    assert!(!v.list().contains(&"vale0:vma".to_string()));
    assert_eq!(delif(&v, "vma"), libc::ENXIO);
    // Deleted, its socket goes with it: the name is free again.
    assert!(!pa.exists(), "{} left behind", pa.display());
    assert_eq!(newif(&v, "vmc", &pa, false, 1), 0);
    assert!(pa.exists());
}

/// With `--busy-poll 0` the forwarding thread sleeps at the first poll
/// that finds nothing, so every frame sent after a pause must wake it. It
/// waits on the guest's TX kick fd itself: the kick wakes it, not its 1 s
/// nap (20 frames would then take 20 s), also on the fd a reconnecting
/// VMM brings.
#[test]
fn a_guests_kick_wakes_the_sleeping_forwarder() {
    let (_v, pa, pb) = two_ports("vhost-bell", &["--threads", "1", "--busy-poll", "0"]);
    let mut b = guest(&pb);
    let hdr = [0u8; 12];
    let t0 = Instant::now();
    let mut slow = Vec::new();
    for round in 0..2 {
        let mut a = guest(&pa);
        for i in 0..10 {
            std::thread::sleep(Duration::from_millis(20));
            let f = frame(MB, MA, 60, round * 10 + i);
            let sent = Instant::now();
            assert!(a.send(0, &hdr, &f, &[]));
            let (_, got) = b
                .recv(0, T)
                .unwrap_or_else(|| panic!("round {round} frame {i}"));
            assert_eq!(got, f);
            if sent.elapsed() > Duration::from_millis(500) {
                slow.push((round, i, sent.elapsed()));
            }
            a.reap_tx(0);
        }
    }
    // Each frame is a wake-up, not the 1 s nap (one slow frame is allowed
    // for a busy host).
    assert!(slow.len() <= 1, "frames that waited for the nap: {slow:?}");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "20 frames after pauses took {took:?}: the kicks did not wake the forwarder"
    );
}

#[test]
fn bad_requests_are_refused_with_the_right_errno() {
    let v = start("vhost-bad", &[]);
    let ok = v.dir.0.join("x.sock");
    assert_eq!(newif(&v, "vale1", &ok, false, 1), libc::EINVAL, "name");
    assert_eq!(newif(&v, "a:b", &ok, false, 1), libc::EINVAL, "name");
    assert_eq!(newif(&v, "x", &ok, false, 17), libc::EINVAL, "queues");
    assert_eq!(
        newif(&v, "x", Path::new("/nonexistent-dir/x.sock"), false, 1),
        libc::ENOENT,
        "unbindable path"
    );
    // Nothing was left behind by the failures.
    assert_eq!(newif(&v, "x", &ok, false, 1), 0);
    assert_eq!(attach(&v, "vale0:nope"), libc::ENXIO);
}

#[test]
fn config_file_brings_ports_back_after_restart() {
    let dir = std::env::temp_dir().join(format!("vhost-cfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // valed refuses socket directories others can write, whatever the umask.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = dir.join("ports.conf");
    let (pa, pb) = (dir.join("a.sock"), dir.join("b.sock"));
    let cfg_arg = cfg.to_str().unwrap().to_string();
    {
        let v = start("vhost-cfg1", &["--config", &cfg_arg]);
        assert_eq!(newif(&v, "vma", &pa, false, 1), 0);
        assert_eq!(attach(&v, "vale3:vma"), 0);
        // A port on the command line comes with the config's.
        assert_eq!(newif(&v, "vmb", &pb, false, 2), 0);
        assert_eq!(attach(&v, "vale3:vmb"), 0);
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains("vhost-user vma"), "{text}");
        assert!(text.contains("attach=vale3"), "{text}");
        assert!(text.contains("queues=2"), "{text}");
        v.stop();
    }
    let v = start("vhost-cfg2", &["--config", &cfg_arg]);
    let l = v.list();
    assert!(l.contains(&"vale3:vma".to_string()), "{l:?}");
    assert!(l.contains(&"vale3:vmb".to_string()), "{l:?}");
    let mut a = guest(&pa);
    let mut b = guest(&pb);
    exchange(&mut a, &mut b, 20);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vmm_reconnects_to_the_same_port() {
    let (v, pa, pb) = two_ports("vhost-reconn", &[]);
    let mut b = guest(&pb);
    for round in 0..3 {
        let mut a = guest(&pa);
        exchange(&mut a, &mut b, 30);
        drop(a);
        // B keeps talking to the gone A: counted drops, nothing breaks.
        let hdr = [0u8; 12];
        for i in 0..20 {
            assert!(b.send(0, &hdr, &frame(MA, MB, 100, i), &[]));
        }
        assert!(b.wait_tx(0, 20, T) >= 20, "round {round}");
    }
    let s = stats(&v, "vale0:vma");
    assert_eq!(field(&s, "connections"), 3, "{s}");
    // SIGTERM with a VMM still connected: valed closes the session and
    // exits cleanly, promptly.
    let t0 = Instant::now();
    assert!(v.stop().success());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    drop(b);
}

/// DPDK's testpmd with two virtio-user ports in io forwarding, as a real
/// virtio-net driver: both ports must see traffic going round through the
/// switch, with `queues` queue pairs each.
fn testpmd_loop(tag: &str, queues: u16) {
    if Command::new("dpdk-testpmd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        panic!("dpdk-testpmd not found: scripts/setup-debian.sh installs dpdk-dev");
    }
    let v = start(tag, &["--threads", "1"]);
    let (pa, pb) = (v.dir.0.join("a.sock"), v.dir.0.join("b.sock"));
    assert_eq!(newif(&v, "vma", &pa, false, queues), 0);
    assert_eq!(newif(&v, "vmb", &pb, false, queues), 0);
    assert_eq!(attach(&v, "vale0:vma"), 0);
    assert_eq!(attach(&v, "vale0:vmb"), 0);
    let q = queues.to_string();
    let mut pmd = Command::new("timeout")
        .args([
            "-s",
            "INT",
            "60",
            "dpdk-testpmd",
            "--no-pci",
            "--no-huge",
            "-m",
            "1024",
        ])
        .args(["--file-prefix", &format!("{tag}-{}", std::process::id())])
        .args(["--lcores", "0@0,1@0"])
        .arg("--vdev")
        .arg(format!("net_virtio_user0,path={},queues={q}", pa.display()))
        .arg("--vdev")
        .arg(format!("net_virtio_user1,path={},queues={q}", pb.display()))
        .args(["--", "--forward-mode=io", "--nb-cores=1"])
        .args([format!("--rxq={q}"), format!("--txq={q}")])
        .args(["-i", "--txpkts=60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run testpmd");
    // Forwarding starts at testpmd's first prompt, when both ports and all
    // their queues are up, and runs 3 s from there. Fixed delays from the
    // spawn were wrong on a loaded host: testpmd's start-up (shared
    // libraries, 1 GiB of memory) can take most of them, leaving a window
    // in which only the first bursts went round once.
    let mut stdout = pmd.stdout.take().expect("testpmd stdout");
    let (prompt_tx, prompt_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut told = false;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if !told && all.windows(9).any(|w| w == b"testpmd> ") {
                told = true;
                let _ = prompt_tx.send(());
            }
        }
        all
    });
    let mut stdin = pmd.stdin.take().expect("testpmd stdin");
    {
        use std::io::Write;
        let ready = prompt_rx.recv_timeout(Duration::from_secs(40)).is_ok();
        if ready {
            let _ = stdin.write_all(b"start tx_first\n");
            std::thread::sleep(Duration::from_secs(3));
        }
        let _ = stdin.write_all(b"stop\nquit\n");
    }
    drop(stdin);
    let out = pmd.wait_with_output().expect("testpmd output");
    let stdout = reader.join().expect("testpmd reader");
    let text = String::from_utf8_lossy(&stdout).to_string();
    // The last "RX-packets:" of each port in the final statistics.
    let rx: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("RX-packets:") && l.contains("RX-total"))
        .filter_map(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .collect();
    let (sa, sb) = (stats(&v, "vale0:vma"), stats(&v, "vale0:vmb"));
    assert!(
        rx.len() >= 2 && rx[0] > 1000 && rx[1] > 1000,
        "testpmd saw too little traffic: {rx:?}\nvaled: {sa}\n{sb}\n{}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    // valed's view balances: what one port took in went out of the other,
    // less counted drops.
    let dst_drops = ["drop_dst_full", "drop_bad_slot", "drop_offload"]
        .iter()
        .map(|k| field(&sb, k))
        .sum::<u64>();
    let src_drops = [
        "drop_no_dst",
        "drop_runt",
        "drop_bad_chain",
        "drop_empty_frag",
    ]
    .iter()
    .map(|k| field(&sa, k))
    .sum::<u64>();
    assert_eq!(
        field(&sa, "in_packets"),
        field(&sb, "out_packets") + dst_drops + src_drops,
        "{sa}\n{sb}"
    );
    assert_eq!(field(&sa, "bad_chains"), 0);
    assert_eq!(field(&sb, "bad_chains"), 0);
}

#[test]
fn testpmd_virtio_user_through_valed() {
    testpmd_loop("pmd1", 1);
}

#[test]
fn testpmd_virtio_user_multiqueue() {
    testpmd_loop("pmd2", 2);
}
