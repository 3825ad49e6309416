//! Unmodified netmap C applications on valed: a C program written against
//! netmap's headers (`compat/include`, no vale code in it), compiled here
//! with `cc` and run with `LD_PRELOAD=libvale_netmap.so`, registers
//! through NIOCCTRL and through the legacy NIOCREGIF, addresses rings and
//! buffers with netmap's macros, syncs with poll and the ioctls, and
//! exchanges frames with our pkt-gen through valed; its ABI structures
//! match ours byte for byte; bad requests get netmap's error codes; select,
//! ppoll and epoll wait on it, a dup of it is the same registration, and a
//! child forked after registering sends on the parent's registration.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{leak_flag, pktgen_cfg, spawn, start, Valed};
use netmap::abi::*;
use netmap::ctrl::{
    CtrlConn, Request, ValePortConfig, VALE_PORT_BACKPRESSURE, VALE_REQ_PORT_CONFIG, VALE_SET_FLAGS,
};

fn preload() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_valed"));
    let so = bin.with_file_name("deps").join("libvale_netmap.so");
    assert!(so.is_file(), "{} not built", so.display());
    so
}

/// nmapp.c, compiled once per test binary.
fn nmapp() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::env::temp_dir().join(format!("nmapp-{}", std::process::id()));
        let st = Command::new("cc")
            .args(["-Wall", "-Wextra", "-Werror", "-O2", "-I"])
            .arg(root.join("compat/include"))
            .arg("-o")
            .arg(&out)
            .arg(root.join("compat/tests/c/nmapp.c"))
            .status()
            .expect("cc (apt-get install gcc)");
        assert!(st.success(), "nmapp.c does not compile");
        out
    })
    .clone()
}

/// Joins a pkt-gen thread, stopping it (and failing) if it has not ended
/// within 30 s.
fn join_within(
    h: std::thread::JoinHandle<pkt_gen::stats::Outcome>,
    stop: &'static std::sync::atomic::AtomicBool,
    what: &str,
) -> pkt_gen::stats::Outcome {
    let t0 = std::time::Instant::now();
    while !h.is_finished() {
        if t0.elapsed() > Duration::from_secs(30) {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let r = h.join().unwrap();
            panic!("{what}: pkt-gen did not get every frame: {r:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    h.join().unwrap()
}

/// nmport.c, linked with libnetmap through pkg-config (the .pc file made
/// from compat/libnetmap.pc.in for the built library).
fn nmport() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = std::env::temp_dir().join(format!("nmport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // valed refuses socket directories others can write, whatever the umask.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let libdir = preload().parent().unwrap().to_path_buf();
        let pc = std::fs::read_to_string(root.join("compat/libnetmap.pc.in"))
            .unwrap()
            .replace("@PREFIX@", &root.display().to_string())
            .replace("@LIBDIR@", &libdir.display().to_string())
            .replace(
                "@INCLUDEDIR@",
                &root.join("compat/include").display().to_string(),
            );
        std::fs::write(dir.join("libnetmap.pc"), pc).unwrap();
        let flags = Command::new("pkg-config")
            .args(["--cflags", "--libs", "libnetmap"])
            .env("PKG_CONFIG_PATH", &dir)
            .output()
            .expect("pkg-config (apt-get install pkg-config)");
        assert!(flags.status.success(), "pkg-config libnetmap");
        let flags = String::from_utf8(flags.stdout).unwrap();
        let out = dir.join("nmport");
        let st = Command::new("cc")
            .args(["-Wall", "-Wextra", "-Werror", "-O2", "-o"])
            .arg(&out)
            .arg(root.join("compat/tests/c/nmport.c"))
            .args(flags.split_whitespace())
            .status()
            .expect("cc");
        assert!(
            st.success(),
            "nmport.c does not compile and link with {flags}"
        );
        out
    })
    .clone()
}

fn run(v: &Valed, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(nmapp())
        .args(args)
        .env("LD_PRELOAD", preload())
        .env("VALE_SOCKET", &v.sock)
        .output()
        .expect("run nmapp")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A persistent port `switch:name` with backpressure, so nothing sent to
/// it is dropped.
fn port(v: &Valed, switch: &str, name: &str) -> String {
    port_with(v, switch, name, NmreqValeNewif::default())
}

/// As [`port`], in memory region `mem_id` (`vale-ctl -n name -m N`; 0:
/// a region of its own).
fn port_in(v: &Valed, switch: &str, name: &str, mem_id: u16) -> String {
    let newif = NmreqValeNewif {
        nr_mem_id: mem_id,
        ..Default::default()
    };
    port_with(v, switch, name, newif)
}

/// As [`port`], made by NEWIF with `newif` (ring sizes, memory id).
fn port_with(v: &Valed, switch: &str, name: &str, newif: NmreqValeNewif) -> String {
    let c = CtrlConn::connect(&v.sock).unwrap();
    let (r, _) = c
        .call(&Request::new(NETMAP_REQ_VALE_NEWIF, name, &newif).unwrap())
        .unwrap();
    assert_eq!(r.error, 0, "NEWIF {name}");
    let full = format!("{switch}:{name}");
    let (r, _) = c
        .call(&Request::new(NETMAP_REQ_VALE_ATTACH, &full, &NmreqValeAttach::default()).unwrap())
        .unwrap();
    assert_eq!(r.error, 0, "ATTACH {full}");
    let bp = ValePortConfig {
        flags: VALE_PORT_BACKPRESSURE,
        set: VALE_SET_FLAGS,
        ..Default::default()
    };
    let (r, _) = c
        .call(&Request::new(VALE_REQ_PORT_CONFIG, &full, &bp).unwrap())
        .unwrap();
    assert_eq!(r.error, 0, "backpressure on {full}");
    full
}

/// A capture: the C program receives 3000 frames on `monitor` while
/// pkt-gen sends them from `tx` and receives them on `rx` (a port that
/// holds its sender); both get every frame.
fn capture(v: &Valed, monitor: &str, tx: &str, rx: &str) {
    let stop = leak_flag();
    let prx = spawn(
        pktgen_cfg(&v.sock, &["-i", rx, "-f", "rx", "-n", "3000"]),
        stop,
    );
    let mon = std::thread::spawn({
        let v_sock = v.sock.clone();
        let monitor = monitor.to_string();
        move || {
            Command::new("timeout")
                .arg("60")
                .arg(nmapp())
                .args(["rx", &monitor, "3000"])
                .env("LD_PRELOAD", preload())
                .env("VALE_SOCKET", v_sock)
                .output()
                .expect("run nmapp rx on a monitor")
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let sent = pkt_gen::run::run(
        &pktgen_cfg(&v.sock, &["-i", tx, "-f", "tx", "-n", "3000"]),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(sent.ok(), "{sent:?}");
    let out = mon.join().unwrap();
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("received 3000 bad 0"),
        "{monitor}: {t}"
    );
    let r = join_within(prx, stop, &format!("pkt-gen -> {monitor} -> pkt-gen rx"));
    assert_eq!(r.ctrs.pkts, 3000, "{monitor}");
}

#[test]
fn the_c_headers_match_the_abi() {
    let out = Command::new(nmapp()).arg("layout").output().unwrap();
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let val = |k: &str| -> u64 {
        t.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{k} in {t}"))
    };
    use std::mem::{offset_of, size_of};
    assert_eq!(val("sizeof.netmap_slot"), size_of::<NetmapSlot>() as u64);
    assert_eq!(
        val("offsetof.netmap_ring.head"),
        offset_of!(NetmapRing, head) as u64
    );
    assert_eq!(
        val("offsetof.netmap_ring.tail"),
        offset_of!(NetmapRing, tail) as u64
    );
    assert_eq!(
        val("offsetof.netmap_ring.ts"),
        offset_of!(NetmapRing, ts) as u64
    );
    assert_eq!(
        val("offsetof.netmap_ring.sem"),
        offset_of!(NetmapRing, sem) as u64
    );
    assert_eq!(
        val("offsetof.netmap_ring.slot"),
        size_of::<NetmapRing>() as u64
    );
    assert_eq!(
        val("offsetof.netmap_if.ring_ofs"),
        size_of::<NetmapIf>() as u64
    );
    assert_eq!(val("sizeof.nmreq_header"), size_of::<NmreqHeader>() as u64);
    assert_eq!(
        val("offsetof.nmreq_header.nr_body"),
        offset_of!(NmreqHeader, nr_body) as u64
    );
    assert_eq!(
        val("sizeof.nmreq_register"),
        size_of::<NmreqRegister>() as u64
    );
    assert_eq!(
        val("offsetof.nmreq_register.nr_flags"),
        offset_of!(NmreqRegister, nr_flags) as u64
    );
    assert_eq!(val("sizeof.nmreq_option"), size_of::<NmreqOption>() as u64);
    assert_eq!(val("sizeof.nmreq"), size_of::<Nmreq>() as u64);
    assert_eq!(
        val("sizeof.nmreq_port_info_get"),
        size_of::<NmreqPortInfoGet>() as u64
    );
    assert_eq!(val("NIOCCTRL"), u64::from(NIOCCTRL));
    assert_eq!(val("NIOCREGIF"), u64::from(NIOCREGIF));
    assert_eq!(val("NIOCGINFO"), u64::from(NIOCGINFO));
    assert_eq!(val("NIOCTXSYNC"), u64::from(NIOCTXSYNC));
    assert_eq!(val("NIOCRXSYNC"), u64::from(NIOCRXSYNC));
    assert_eq!(
        val("NETMAP_REQ_PORT_HDR_GET"),
        u64::from(NETMAP_REQ_PORT_HDR_GET)
    );
    assert_eq!(
        val("NETMAP_REQ_CSB_ENABLE"),
        u64::from(NETMAP_REQ_CSB_ENABLE)
    );
}

#[test]
fn bad_requests_get_netmaps_error_codes() {
    let v = start("preload-errors", &[]);
    let out = run(&v, &["errors", "vale0:e"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(
        t.matches("\nok ").count() + usize::from(t.starts_with("ok ")),
        17,
        "{t}"
    );
}

/// ppoll and pselect on a netmap file apply their signal mask atomically
/// for the wait: a pending signal that only the mask unblocks ends the
/// wait at once with EINTR (it used to run its handler first, then the
/// wait slept its whole timeout).
#[test]
fn ppoll_and_pselect_masks_are_atomic() {
    let v = start("preload-sigmask", &[]);
    let out = run(&v, &["sigmask", "vale0:sg"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("ppoll rc=-1 eintr=1 handled=1"), "{t}");
    assert!(t.contains("pselect rc=-1 eintr=1 handled=2"), "{t}");
}

/// pkt-gen -> valed -> the C program (legacy register, poll), and the C
/// program (NIOCCTRL register, poll, NIOCTXSYNC) -> valed -> pkt-gen,
/// every frame, through backpressure ports.
#[test]
fn a_c_program_exchanges_frames_with_pkt_gen() {
    let v = start("preload-xchg", &[]);
    let n = 20_000u64;
    let ns = n.to_string();

    // pkt-gen sends, C receives.
    let cb = port(&v, "vale1", "cb");
    let rx = std::thread::spawn({
        let v_sock = v.sock.clone();
        let cb = cb.clone();
        let ns = ns.clone();
        move || {
            Command::new("timeout")
                .arg("60")
                .arg(nmapp())
                .args(["rx", &cb, &ns])
                .env("LD_PRELOAD", preload())
                .env("VALE_SOCKET", v_sock)
                .output()
                .expect("run nmapp rx")
        }
    });
    // Its port is registered once valed lists a registration on it;
    // pkt-gen's txseq waits a second anyway.
    std::thread::sleep(Duration::from_millis(500));
    let tx = pkt_gen::run::run(
        &pktgen_cfg(&v.sock, &["-i", "vale1:pa", "-f", "tx", "-n", &ns]),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(tx.ok(), "{tx:?}");
    let out = rx.join().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&format!("received {n} bad 0")), "{t}");

    // C sends, pkt-gen receives.
    let pb = port(&v, "vale2", "pb");
    let stop = leak_flag();
    let prx = spawn(
        pktgen_cfg(&v.sock, &["-i", &pb, "-f", "rx", "-n", &ns]),
        stop,
    );
    let out = run(&v, &["tx", "vale2:ca", &ns]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&format!("sent {n}")), "{t}");
    let r = join_within(prx, stop, "C tx -> pkt-gen rx");
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.ctrs.pkts, n);

    // select on a dup of the descriptor (the original closed), and ppoll.
    let cs = port(&v, "vale4", "cs");
    let rx = std::thread::spawn({
        let v_sock = v.sock.clone();
        let cs = cs.clone();
        move || {
            Command::new("timeout")
                .arg("60")
                .arg(nmapp())
                .args(["rxselect", &cs, "5000"])
                .env("LD_PRELOAD", preload())
                .env("VALE_SOCKET", v_sock)
                .output()
                .expect("run nmapp rxselect")
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = run(&v, &["txppoll", "vale4:ct", "5000"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = rx.join().unwrap();
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("received 5000 bad 0"),
        "{t}"
    );

    // epoll_wait, with a kernel descriptor (a pipe) in the same instance.
    let ce = port(&v, "vale6", "ce");
    let rx = std::thread::spawn({
        let v_sock = v.sock.clone();
        let ce = ce.clone();
        move || {
            Command::new("timeout")
                .arg("60")
                .arg(nmapp())
                .args(["rxepoll", &ce, "5000"])
                .env("LD_PRELOAD", preload())
                .env("VALE_SOCKET", v_sock)
                .output()
                .expect("run nmapp rxepoll")
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = run(&v, &["tx", "vale6:et", "5000"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = rx.join().unwrap();
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("received 5000 bad 0") && t.contains("pipe seen 1"),
        "{t}"
    );

    // A capture program: the C receiver on a copy monitor (`/r`) of a
    // port pkt-gen receives on, both getting every frame. The port's
    // 4096-slot ring, which the monitor takes, holds all of them.
    let big = NmreqValeNewif {
        nr_rx_slots: 4096,
        ..Default::default()
    };
    let cm = port_with(&v, "vale7", "cm", big);
    capture(&v, &format!("{cm}/r"), "vale7:tm", &cm);
    // The same capture through a zero-copy monitor (`/tz`) of a sender in
    // a shared region (`vale-ctl -n zm -m 70`): the frames pkt-gen sent
    // reach the C program in pkt-gen's own buffers.
    let zm = port_with(
        &v,
        "vale8",
        "zm",
        NmreqValeNewif {
            nr_mem_id: 70,
            ..big
        },
    );
    let zr = port(&v, "vale8", "zr");
    capture(&v, &format!("{zm}/tz"), &zm, &zr);

    // A child forked after registering sends on the parent's registration.
    let pc = port(&v, "vale3", "pc");
    let stop = leak_flag();
    let prx = spawn(
        pktgen_cfg(&v.sock, &["-i", &pc, "-f", "rx", "-n", "1000"]),
        stop,
    );
    let out = run(&v, &["fork", "vale3:cf", "1000"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let r = join_within(prx, stop, "a forked child -> pkt-gen rx");
    assert_eq!(r.ctrs.pkts, 1000);
}

/// A program that links libnetmap (pkg-config) instead of opening
/// /dev/netmap: nmport_open, nmport_inject, poll on d->fd, the rings by
/// d->nifp, nmport_close; its struct nmport_d is ours.
#[test]
fn a_program_linked_with_libnetmap_sends_and_receives() {
    let v = start("libnetmap", &[]);
    let out = Command::new(nmport())
        .arg("size")
        .env("VALE_SOCKET", &v.sock)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "sizeof.nmport_d {}",
            std::mem::size_of::<vale_netmap::nmport::NmportD>()
        )),
        "{t}"
    );
    assert!(t.contains("bad name: refused errno 22"), "{t}");
    let r = port(&v, "vale5", "lr");
    let rx = std::thread::spawn({
        let sock = v.sock.clone();
        move || {
            Command::new("timeout")
                .args(["60"])
                .arg(nmport())
                .args(["rx", &r, "20000"])
                .env("VALE_SOCKET", sock)
                .output()
                .expect("run nmport rx")
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("timeout")
        .arg("60")
        .arg(nmport())
        .args(["tx", "vale5:lt", "20000"])
        .env("VALE_SOCKET", &v.sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = rx.join().unwrap();
    let t = text(&out);
    assert!(out.status.success() && t.contains("received 20000"), "{t}");
}

/// netmap's bridge between two ports in one memory region, as a C program
/// linked with libnetmap: `a` and `b` made by NEWIF with memory id 50
/// (`vale-ctl -n a -m 50`), so `a->mem == b->mem` and the program swaps
/// buffers instead of copying. pkt-gen's txseq on vale1 reaches rxseq on
/// vale2 through it exactly, and closing a leaves b's mapping usable.
#[test]
fn a_bridge_swaps_buffers_between_ports_in_one_region() {
    let v = start("preload-bridge", &[]);
    let n = 20_000u64;
    let ns = n.to_string();
    let a = port_in(&v, "vale1", "a", 50);
    let b = port_in(&v, "vale2", "b", 50);
    let r = port(&v, "vale2", "r");
    let stop = leak_flag();
    let prx = spawn(
        pktgen_cfg(&v.sock, &["-i", &r, "-f", "rxseq", "-n", &ns]),
        stop,
    );
    let bridge = std::thread::spawn({
        let sock = v.sock.clone();
        let ns = ns.clone();
        move || {
            Command::new("timeout")
                .arg("60")
                .arg(nmport())
                .args(["bridge", &a, &b, &ns])
                .env("VALE_SOCKET", sock)
                .output()
                .expect("run nmport bridge")
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let tx = pkt_gen::run::run(
        &pktgen_cfg(&v.sock, &["-i", "vale1:s", "-f", "txseq", "-n", &ns]),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(tx.ok(), "{tx:?}");
    let out = bridge.join().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("mem_id 50 50 zerocopy 1"), "{t}");
    assert!(t.contains(&format!("forwarded {n} swapped {n}")), "{t}");
    assert!(
        t.contains("after closing a: b's ring has 1024 slots"),
        "{t}"
    );
    let rx = join_within(prx, stop, "bridge -> pkt-gen rxseq");
    let s = rx.seq.clone().expect("rxseq report");
    assert_eq!(
        (s.frames, s.lost, s.corrupt, s.duplicates, s.reordered),
        (n, 0, 0, 0, 0),
        "{s:?}"
    );
}

/// libnetmap's `nmreq_*` helpers, from C (`nmport nmreq`): a header and a
/// register body decoded from a port spec (and a bad one refused with
/// EINVAL, nothing changed), the option list pushed, found, removed and
/// freed, option names, and the memory id of a port asked of valed (a
/// port in region 7; ENXIO for none).
#[test]
fn the_nmreq_helpers_decode_specs_and_ask_valed() {
    let v = start("nmreq", &[]);
    let _p = v.open("vale0:held@7").unwrap();
    let out = Command::new("timeout")
        .arg("60")
        .arg(nmport())
        .args(["nmreq", "vale0:held"])
        .env("VALE_SOCKET", &v.sock)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("nmreq fails 0"), "{t}");
    assert_eq!(
        t.matches("\nok ").count() + usize::from(t.starts_with("ok ")),
        15,
        "{t}"
    );
}
