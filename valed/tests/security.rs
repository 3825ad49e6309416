//! Tenants against valed (root): each attack of the hardening issue that
//! this covers, run as a second uid (`nobody`, 65534) with access to the
//! control socket, and what it now gets. The tenant's requests are made by
//! this test binary re-executed under that uid (`tenant_helper`).

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use netmap::ctrl::{CtrlConn, Request, ValeVhostNewif, VALE_REQ_VHOST_NEWIF};

const TENANT: u32 = 65534;

/// `vale-ctl -n NAME --vhost-user PATH[,client]` as sent on `sock`; the
/// errno valed answered.
fn newif(sock: &Path, name: &str, path: &str, client: bool) -> i32 {
    let c = CtrlConn::connect(sock).expect("control socket");
    let body = ValeVhostNewif::new(path, client, 1).expect("body");
    let (r, _) = c
        .call(&Request::new(VALE_REQ_VHOST_NEWIF, name, &body).unwrap())
        .expect("reply");
    r.error
}

/// The tenant's side: runs only when re-executed by [`as_tenant`] (the
/// variable names the request), under the tenant's uid.
#[test]
fn tenant_helper() {
    let Ok(req) = std::env::var("VALE_TENANT_REQUEST") else {
        return;
    };
    let f: Vec<&str> = req.split('\u{1f}').collect();
    let want: u32 = std::env::var("VALE_TENANT_UID")
        .ok()
        .and_then(|u| u.parse().ok())
        .unwrap_or(TENANT);
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(uid, want, "not running as the tenant");
    let e = if f[3] == "newif-mem" {
        // A persistent port `f[1]` in memory region `f[2]`
        // (`vale-ctl -n f1 -m f2`).
        use netmap::abi::*;
        let c = CtrlConn::connect(Path::new(f[0])).expect("control socket");
        let body = NmreqValeNewif {
            nr_mem_id: f[2].parse().unwrap(),
            ..Default::default()
        };
        let (r, _) = c
            .call(&Request::new(NETMAP_REQ_VALE_NEWIF, f[1], &body).unwrap())
            .unwrap();
        r.error
    } else if f[3] == "newif-attach" {
        // A persistent port `f[1]`, attached to switch `f[2]`.
        use netmap::abi::*;
        let c = CtrlConn::connect(Path::new(f[0])).expect("control socket");
        let (r, _) = c
            .call(&Request::new(NETMAP_REQ_VALE_NEWIF, f[1], &NmreqValeNewif::default()).unwrap())
            .unwrap();
        if r.error != 0 {
            r.error
        } else {
            let full = format!("{}:{}", f[2], f[1]);
            let (r, _) = c
                .call(
                    &Request::new(NETMAP_REQ_VALE_ATTACH, &full, &NmreqValeAttach::default())
                        .unwrap(),
                )
                .unwrap();
            r.error
        }
    } else if f[3] == "attach" {
        // ATTACH of `f[1]` (valeX:name).
        use netmap::abi::*;
        let c = CtrlConn::connect(Path::new(f[0])).expect("control socket");
        let (r, _) = c
            .call(&Request::new(NETMAP_REQ_VALE_ATTACH, f[1], &NmreqValeAttach::default()).unwrap())
            .unwrap();
        r.error
    } else if f[3] == "share" {
        // Switch `f[1]` shared with the uids listed in f[2].
        use netmap::ctrl::{ValeSwitchConfig, VALE_REQ_SWITCH_CONFIG, VALE_SET_SHARE};
        let mut b = ValeSwitchConfig {
            set: VALE_SET_SHARE,
            ..Default::default()
        };
        for (i, u) in f[2].split(',').filter(|u| !u.is_empty()).enumerate() {
            b.share[i] = u.parse().unwrap();
            b.nshare += 1;
        }
        let c = CtrlConn::connect(Path::new(f[0])).expect("control socket");
        let (r, _) = c
            .call(&Request::new(VALE_REQ_SWITCH_CONFIG, f[1], &b).unwrap())
            .unwrap();
        r.error
    } else if f[3] == "conns" {
        // f[2] connections, each answered once and kept open; then one
        // more: 0 if it was answered too, -1 if valed closed it.
        use netmap::abi::*;
        let ask = |c: &CtrlConn| {
            c.call(
                &Request::new(
                    NETMAP_REQ_PORT_INFO_GET,
                    "vale0:nowhere",
                    &NmreqPortInfoGet::default(),
                )
                .unwrap(),
            )
        };
        let n: usize = f[2].parse().unwrap();
        let mut kept = Vec::new();
        for _ in 0..n {
            let c = CtrlConn::connect(Path::new(f[0])).expect("control socket");
            ask(&c).expect("a connection within the quota is served");
            kept.push(c);
        }
        match CtrlConn::connect(Path::new(f[0])).map(|c| ask(&c).is_ok()) {
            Ok(true) => 0,
            _ => -1,
        }
    } else if f[3] == "register" {
        // f[2]: extra buffers asked for.
        let req = netmap::abi::NmreqRegister {
            nr_extra_bufs: f[2].parse().unwrap(),
            ..Default::default()
        };
        match netmap::port::NmPort::open_with(Path::new(f[0]), f[1], req) {
            Ok(_) => 0,
            Err(netmap::port::PortError::Refused { source, .. }) => {
                source.raw_os_error().unwrap_or(-1)
            }
            Err(e) => panic!("{e}"),
        }
    } else {
        newif(Path::new(f[0]), f[1], f[2], f[3] == "client")
    };
    println!("TENANT-ERRNO={e}");
}

/// Sends NEWIF as uid 65534; the errno.
fn as_tenant(sock: &Path, name: &str, path: &str, client: bool) -> i32 {
    tenant_run(sock, name, path, if client { "client" } else { "server" })
}

/// Opens `name` (REGISTER) with `extra` extra buffers as uid 65534; the
/// errno.
fn register_as_tenant(sock: &Path, name: &str, extra: u32) -> i32 {
    tenant_run(sock, name, &extra.to_string(), "register")
}

/// This test binary, copied where any uid can run it: the checkout may
/// sit under a directory the tenant cannot enter (`/root` is 0700).
fn tenant_exe() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vale-tenant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("security-test");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        exe
    })
    .clone()
}

fn tenant_run(sock: &Path, name: &str, arg: &str, op: &str) -> i32 {
    tenant_run_as(TENANT, sock, name, arg, op)
}

fn tenant_run_as(uid: u32, sock: &Path, name: &str, arg: &str, op: &str) -> i32 {
    let out = Command::new(tenant_exe())
        .args([
            "tenant_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "VALE_TENANT_REQUEST",
            format!("{}\u{1f}{name}\u{1f}{arg}\u{1f}{op}", sock.display()),
        )
        .env("VALE_TENANT_UID", uid.to_string())
        .uid(uid)
        .gid(uid)
        .output()
        .expect("re-exec as the tenant");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("TENANT-ERRNO=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "tenant run failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

struct Setup {
    v: common::Valed,
    dir: PathBuf,
    vhost_dir: PathBuf,
}

/// valed with a config file; its control socket open to every uid (as if
/// the tenant were in its group).
fn setup(tag: &str, extra: &[&str]) -> Setup {
    let v = common::start(tag, extra);
    let dir = v.dir.0.clone();
    std::fs::set_permissions(&v.sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let vhost_dir = dir.join("vhost");
    Setup { v, dir, vhost_dir }
}

#[test]
fn a_tenant_cannot_delete_or_take_over_files() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (valed's tenants are other uids)");
        return;
    }
    let s = setup("sec-files", &[]);
    let victim = s.dir.join("victim");
    std::fs::write(&victim, b"root's file").unwrap();
    // Attack: a socket path on a root-owned file, on valed's own control
    // socket, outside the vhost directory: EPERM, nothing touched.
    for (name, path) in [
        ("evil1", victim.display().to_string()),
        ("evil2", s.v.sock.display().to_string()),
        ("evil3", "/tmp/anywhere.sock".to_string()),
        ("evil4", "../escape.sock".to_string()),
    ] {
        let e = as_tenant(&s.v.sock, name, &path, false);
        assert!(e == libc::EPERM || e == libc::EINVAL, "{path}: errno {e}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's file");
    assert!(
        CtrlConn::connect(&s.v.sock).is_ok(),
        "control socket intact"
    );
    assert!(!Path::new("/tmp/anywhere.sock").exists());

    // A plain name: the tenant's own socket in the vhost directory.
    assert_eq!(as_tenant(&s.v.sock, "mine", "mine.sock", false), 0);
    let md = std::fs::symlink_metadata(s.vhost_dir.join("mine.sock")).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!((md.uid(), md.mode() & 0o777), (TENANT, 0o600));

    // Something root put in the vhost directory is not replaced, for a
    // tenant or for root.
    let planted = s.vhost_dir.join("planted");
    std::fs::write(&planted, b"keep").unwrap();
    assert_eq!(as_tenant(&s.v.sock, "p1", "planted", false), libc::EEXIST);
    assert_eq!(newif(&s.v.sock, "p2", "planted", false), libc::EEXIST);
    assert_eq!(
        newif(&s.v.sock, "p3", victim.to_str().unwrap(), false),
        libc::EEXIST
    );
    assert_eq!(std::fs::read(&planted).unwrap(), b"keep");
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's file");

    // Another tenant's socket name is taken: not replaced either.
    assert_eq!(newif(&s.v.sock, "r1", "mine.sock", false), libc::EADDRINUSE);

    // A symlink in the tenant's path is never followed.
    std::os::unix::fs::symlink(&victim, s.vhost_dir.join("link")).unwrap();
    assert_eq!(as_tenant(&s.v.sock, "l1", "link", false), libc::EEXIST);
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's file");
}

#[test]
fn a_tenant_cannot_connect_its_port_to_another_uids_vm() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let s = setup("sec-client", &[]);
    // Root's VMM listening (QEMU server=on) on a socket root owns.
    let vmm = s.dir.join("root-vm.sock");
    let _l = std::os::unix::net::UnixListener::bind(&vmm).unwrap();
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(
        as_tenant(&s.v.sock, "steal", vmm.to_str().unwrap(), true),
        libc::EPERM
    );
    assert_eq!(
        as_tenant(&s.v.sock, "gone", "/nonexistent/x.sock", true),
        libc::ENOENT
    );
}

#[test]
fn hostile_paths_never_reach_the_config_file() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let cfg_dir = std::env::temp_dir().join(format!("vale-sec-cfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cfg_dir);
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let cfg = cfg_dir.join("ports.conf");
    let s = setup("sec-config", &["--config", cfg.to_str().unwrap()]);
    for (name, path) in [
        ("n1", "a\nvhost-user evil /etc/shadow"),
        ("n2", "a b"),
        ("n3", "a#b"),
    ] {
        assert_eq!(
            as_tenant(&s.v.sock, name, path, false),
            libc::EINVAL,
            "{path:?}"
        );
    }
    assert_eq!(as_tenant(&s.v.sock, "t1", "t1.sock", false), 0);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains(&format!(
            "vhost-user t1 {}",
            s.vhost_dir.join("t1.sock").display()
        )),
        "{text}"
    );
    assert!(text.contains(&format!("owner={TENANT}")), "{text}");
    assert!(!text.contains("evil"), "{text}");
    // After a restart the port is the tenant's again, socket and all.
    let sock = s.v.sock.clone();
    let vhost_dir = s.vhost_dir.clone();
    drop(s);
    let s2 = setup("sec-config", &["--config", cfg.to_str().unwrap()]);
    assert_eq!(s2.v.sock, sock);
    // The control socket listens before the config's ports are made.
    // valed binds the socket, then hands it to its owner: wait for both
    // (a check between the two saw root's, the moment before the chown).
    let t1 = vhost_dir.join("t1.sock");
    let t0 = std::time::Instant::now();
    let owner = || std::fs::symlink_metadata(&t1).ok().map(|m| m.uid());
    while owner() != Some(TENANT) && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        owner(),
        Some(TENANT),
        "{} not made again as the tenant's",
        t1.display()
    );
    drop(s2);
    let _ = std::fs::remove_dir_all(&cfg_dir);
}

/// A client that sends requests and never reads the replies is dropped
/// once its receive queue is full; meanwhile and afterwards every other
/// client is answered at once.
#[test]
fn a_client_that_never_reads_does_not_stop_the_control_plane() {
    use netmap::abi::{NmreqValeList, NETMAP_REQ_VALE_LIST};
    use std::time::{Duration, Instant};
    let v = common::start("sec-noread", &[]);
    let bad = netmap::sys::seqpacket_connect(&v.sock).unwrap();
    netmap::sys::set_nonblocking(&bad).unwrap();
    let msg = Request::new(NETMAP_REQ_VALE_LIST, "", &NmreqValeList::default())
        .unwrap()
        .encode()
        .unwrap();
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut dropped = false;
    while t0.elapsed() < Duration::from_secs(10) {
        match netmap::sys::send_with_fds(&bad, &msg, &[] as &[std::os::fd::BorrowedFd<'_>]) {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => {
                dropped = true;
                break;
            }
        }
        if sent % 64 == 0 {
            // Another client is answered promptly all along.
            let t = Instant::now();
            let c = CtrlConn::connect(&v.sock).unwrap();
            let (r, _) = c
                .call(&Request::new(NETMAP_REQ_VALE_LIST, "", &NmreqValeList::default()).unwrap())
                .unwrap();
            assert_eq!(r.error, libc::ENOENT);
            assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        }
    }
    assert!(
        dropped,
        "valed kept a client that never reads ({sent} requests sent)"
    );
    eprintln!("the silent client was dropped after {sent} requests");
    let c = CtrlConn::connect(&v.sock).unwrap();
    let (r, _) = c
        .call(&Request::new(NETMAP_REQ_VALE_LIST, "", &NmreqValeList::default()).unwrap())
        .unwrap();
    assert_eq!(r.error, libc::ENOENT);
}

/// CPU ticks (user + system) of process `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// valed out of descriptors (EMFILE on accept) does not spin on its
/// listener, and serves clients again once descriptors are free.
#[test]
fn accept_out_of_descriptors_does_not_spin() {
    use netmap::abi::{NmreqValeList, NETMAP_REQ_VALE_LIST};
    use std::time::Duration;
    let v = common::start("sec-emfile", &[]);
    let pid = v.child.id();
    let st = Command::new("prlimit")
        .args([&format!("--pid={pid}"), "--nofile=48:48"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(st.success());
    let mut conns = Vec::new();
    for _ in 0..64 {
        conns.push(netmap::sys::seqpacket_connect(&v.sock).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - t0;
    // 100 ticks a second: spinning takes ~100.
    assert!(
        used < 20,
        "valed used {used} ticks in 1 s with accept failing"
    );
    conns.clear();
    std::thread::sleep(Duration::from_millis(700));
    let c = CtrlConn::connect(&v.sock).unwrap();
    let (r, _) = c
        .call(&Request::new(NETMAP_REQ_VALE_LIST, "", &NmreqValeList::default()).unwrap())
        .unwrap();
    assert_eq!(r.error, libc::ENOENT);
}

/// One uid's share: VM ports and region memory past the quotas are
/// refused (ENOSPC, ENOMEM) for a tenant, not for root.
#[test]
fn tenants_are_held_to_their_quotas() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let s = setup("sec-quota", &["--quota-mem", "64", "--quota-vhost", "2"]);
    assert_eq!(as_tenant(&s.v.sock, "q1", "q1.sock", false), 0);
    assert_eq!(as_tenant(&s.v.sock, "q2", "q2.sock", false), 0);
    assert_eq!(as_tenant(&s.v.sock, "q3", "q3.sock", false), libc::ENOSPC);
    assert_eq!(
        newif(&s.v.sock, "r3", "r3.sock", false),
        0,
        "root has no quota"
    );
    // 2^16 extra buffers of 2 KiB: 128 MiB, past 64.
    assert_eq!(
        register_as_tenant(&s.v.sock, "vale0:big", 1 << 16),
        libc::ENOMEM
    );
    assert_eq!(register_as_tenant(&s.v.sock, "vale0:small", 16), 0);
}

/// One user cannot take every descriptor valed has by opening control
/// connections: past `--quota-conns` the next is closed at once, root's
/// still get through, and the user's count goes down as they close.
#[test]
fn tenants_are_held_to_a_number_of_control_connections() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let s = setup("sec-conns", &["--quota-conns", "4"]);
    assert_eq!(tenant_run(&s.v.sock, "-", "4", "conns"), -1, "a fifth");
    // The tenant's connections closed with its process: four again, once
    // valed has seen them go.
    let t0 = std::time::Instant::now();
    while tenant_run(&s.v.sock, "-", "3", "conns") != 0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "a fourth connection, after the first four closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let root: Vec<_> = (0..8)
        .map(|_| CtrlConn::connect(&s.v.sock).unwrap())
        .collect();
    for c in &root {
        let body = netmap::abi::NmreqPortInfoGet::default();
        c.call(&Request::new(netmap::abi::NETMAP_REQ_PORT_INFO_GET, "vale0:x", &body).unwrap())
            .expect("root has no connection quota");
    }
}

/// Switches belong to the uid whose port made them: another uid's port is
/// refused (EPERM); root's switches are shared, and root's ports go
/// anywhere.
#[test]
fn a_tenants_switch_is_its_own() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    const OTHER: u32 = 1; // Debian's `daemon`
    let s = setup("sec-switch", &[]);
    // Tenant A's persistent port makes valeA, A's.
    assert_eq!(tenant_run(&s.v.sock, "pa", "valeA", "newif-attach"), 0);
    // Another uid's port may not join it, by REGISTER or by ATTACH.
    assert_eq!(
        tenant_run_as(OTHER, &s.v.sock, "valeA:b", "16", "register"),
        libc::EPERM
    );
    assert_eq!(
        tenant_run_as(OTHER, &s.v.sock, "pb", "valeA", "newif-attach"),
        libc::EPERM
    );
    // A's own ports may; so may root's.
    assert_eq!(register_as_tenant(&s.v.sock, "valeA:c", 16), 0);
    let root_port = s.v.open("valeA:r");
    assert!(root_port.is_ok(), "{:?}", root_port.err());
    // A switch root made is shared.
    let _r0 = s.v.open("vale0:r").unwrap();
    assert_eq!(
        tenant_run_as(OTHER, &s.v.sock, "vale0:o", "16", "register"),
        0
    );
}

/// A switch root's ports made stays root's name when its last port goes:
/// a user who made a switch of that name meanwhile would get root's next
/// attach, and its frames, on the user's own switch.
#[test]
fn a_switch_name_root_used_cannot_be_taken() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let s = setup("sec-squat", &[]);
    let r = s.v.open("valeR:r").unwrap();
    drop(r);
    // valeR went with its last port; its name did not.
    let t0 = std::time::Instant::now();
    while s.v.list().iter().any(|p| p.starts_with("valeR:")) {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(register_as_tenant(&s.v.sock, "valeR:t", 16), libc::EPERM);
    assert_eq!(
        tenant_run(&s.v.sock, "pt", "valeR", "newif-attach"),
        libc::EPERM
    );
    // A name root never used is the tenant's to take, as before.
    assert_eq!(register_as_tenant(&s.v.sock, "valeT:t", 16), 0);
    // Root takes its name back.
    let _r = s.v.open("valeR:r2").unwrap();
}

/// A switch's owner, and only its owner (or root), shares it with chosen
/// uids (`VALE_REQ_SWITCH_CONFIG`, `vale-ctl --config valeA share=UID`);
/// a shared uid's ports may attach, and no longer once the share is gone.
#[test]
fn a_switch_is_shared_only_by_its_owner() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    const OTHER: u32 = 1;
    let s = setup("sec-share", &[]);
    let sock = &s.v.sock;
    assert_eq!(tenant_run(sock, "pa", "valeA", "newif-attach"), 0);
    let other_joins = || tenant_run_as(OTHER, sock, "valeA:b", "0", "register");
    assert_eq!(other_joins(), libc::EPERM);
    // The other uid cannot share A's switch with itself.
    assert_eq!(
        tenant_run_as(OTHER, sock, "valeA", "1", "share"),
        libc::EPERM
    );
    assert_eq!(tenant_run(sock, "valeA", "1", "share"), 0);
    assert_eq!(other_joins(), 0);
    assert_eq!(tenant_run(sock, "valeA", "", "share"), 0);
    assert_eq!(other_joins(), libc::EPERM);
    assert_eq!(tenant_run(sock, "valeZ", "1", "share"), libc::ENXIO);
    // Root may share anyone's switch.
    use netmap::ctrl::{ValeSwitchConfig, VALE_REQ_SWITCH_CONFIG, VALE_SET_SHARE};
    let mut b = ValeSwitchConfig {
        set: VALE_SET_SHARE,
        nshare: 2,
        ..Default::default()
    };
    b.share[..2].copy_from_slice(&[OTHER, OTHER]);
    let (e, r) =
        s.v.call(&Request::new(VALE_REQ_SWITCH_CONFIG, "valeA", &b).unwrap());
    assert_eq!(e, 0);
    let now: ValeSwitchConfig = r.body_as().unwrap();
    assert_eq!((now.owner, now.nshare, now.share[0]), (TENANT, 1, OTHER));
    assert_eq!(other_joins(), 0);
}

/// A host interface is root's: a tenant cannot put one on a switch, even
/// its own, or take one off.
#[test]
fn a_tenant_cannot_attach_a_host_interface() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let s = setup("sec-nic", &[]);
    let sock = &s.v.sock;
    assert_eq!(tenant_run(sock, "valeT:lo", "", "attach"), libc::EPERM);
    assert_eq!(tenant_run(sock, "pt", "valeT", "newif-attach"), 0);
    assert_eq!(tenant_run(sock, "valeT:lo", "", "attach"), libc::EPERM);
}

/// Ports and switches per uid are bounded (`--quota-ports`,
/// `--quota-switches`): past them ENOSPC; root is not held to them.
#[test]
fn tenants_are_held_to_port_and_switch_quotas() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let s = setup(
        "sec-quota2",
        &["--quota-ports", "2", "--quota-switches", "1"],
    );
    let sock = &s.v.sock;
    assert_eq!(tenant_run(sock, "p1", "valeA", "newif-attach"), 0);
    // A second switch: over the switch quota (the port p2 is made).
    assert_eq!(
        tenant_run(sock, "p2", "valeB", "newif-attach"),
        libc::ENOSPC
    );
    // A third port: over the port quota.
    assert_eq!(
        tenant_run(sock, "p3", "valeA", "newif-attach"),
        libc::ENOSPC
    );
    assert_eq!(register_as_tenant(sock, "valeA:e", 0), libc::ENOSPC);
    // Root is not held to them.
    let _r1 = s.v.open("valeB:r1").unwrap();
    let _r2 = s.v.open("valeC:r2").unwrap();
    let _r3 = s.v.open("valeC:r3").unwrap();
}

/// Descriptors a client attaches to its requests never enter valed: no
/// request carries one, and closing a hostile one (a FUSE file's flush)
/// could block the control thread. The kernel discards them: a request
/// with more descriptors than any receive buffer holds is still answered
/// as a request (not refused as truncated), 200 requests with 80 each
/// leave valed's descriptor count where it was.
#[test]
fn descriptors_a_client_attaches_never_enter_valed() {
    use netmap::abi::{NmreqValeList, NETMAP_REQ_VALE_LIST};
    use netmap::ctrl::Reply;
    let v = common::start("sec-fds", &[]);
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let c = netmap::sys::seqpacket_connect(&v.sock).unwrap();
    let msg = Request::new(NETMAP_REQ_VALE_LIST, "", &NmreqValeList::default())
        .unwrap()
        .encode()
        .unwrap();
    let pid = v.child.id();
    let mut buf = vec![0u8; 4096];
    // One round without descriptors first: valed has accepted us.
    netmap::sys::send_with_fds(&c, &msg, &[] as &[std::os::fd::BorrowedFd<'_>]).unwrap();
    assert!(netmap::sys::recv_discarding_fds(&c, &mut buf).unwrap() > 0);
    let before = fds(pid);
    let files: Vec<std::fs::File> = (0..netmap::sys::MAX_FDS + 16)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let borrowed: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    for i in 0..200 {
        send_many_fds(&c, &msg, &borrowed);
        let n = netmap::sys::recv_discarding_fds(&c, &mut buf).unwrap();
        let r = Reply::decode(&buf[..n]).unwrap();
        assert_eq!(r.error, libc::ENOENT, "request {i} answered as a request");
    }
    assert!(fds(pid) <= before, "descriptors stayed in valed");
}

/// sendmsg with one SCM_RIGHTS message of all of `fds` (more than the
/// netmap crate's own sender allows).
fn send_many_fds(sock: &std::os::fd::OwnedFd, msg: &[u8], fds: &[i32]) {
    let bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header; it is filled
    // below with pointers to iov and cbuf, which outlive the sendmsg; the
    // cmsg header is the first in cbuf, which has room for it and `bytes`.
    unsafe {
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        m.msg_control = cbuf.as_mut_ptr().cast();
        m.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<i32>(), fds.len());
        assert_eq!(
            libc::sendmsg(sock.as_raw_fd(), &m, 0),
            msg.len() as isize,
            "sendmsg: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A monitor sees all of a port's traffic: only the port's owner (or
/// root) may attach one. Another uid's monitor is refused whether the
/// port is root's, the other tenant's, or a persistent one.
#[test]
fn a_tenant_cannot_monitor_another_uids_port() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    const OTHER: u32 = 1; // Debian's `daemon`
    let s = setup("sec-monitor", &[]);
    let _root = s.v.open("vale0:rootport").unwrap();
    for m in [
        "vale0:rootport/r",
        "vale0:rootport/t",
        "vale0:rootport/rt",
        "vale0:rootport/tz",
    ] {
        assert_eq!(register_as_tenant(&s.v.sock, m, 0), libc::EPERM, "{m}");
    }
    // The tenant's own persistent port: its monitor is fine, another
    // tenant's is not; root's is.
    assert_eq!(tenant_run(&s.v.sock, "tp", "vale0", "newif-attach"), 0);
    assert_eq!(register_as_tenant(&s.v.sock, "vale0:tp/rt", 0), 0);
    assert_eq!(
        tenant_run_as(OTHER, &s.v.sock, "vale0:tp/r", "0", "register"),
        libc::EPERM
    );
    assert!(s.v.open("vale0:tp/r").is_ok());
}

/// A shared region (`@N`) is its maker's: another uid cannot put a port
/// in it (every registration there can read and write all its buffers),
/// and it counts once, whole, against its maker's memory quota.
#[test]
fn a_tenant_cannot_put_a_port_in_another_uids_region() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let s = setup("sec-mem-id", &["--quota-mem", "12"]);
    let _root = s.v.open("vale0:rootmem@200").unwrap();
    assert_eq!(register_as_tenant(&s.v.sock, "vale0:t@200", 0), libc::EPERM);
    // Its own port fits in 12 MiB (about 4.3 MiB); a region for 4 such
    // ports (about 19 MiB) does not.
    assert_eq!(register_as_tenant(&s.v.sock, "vale0:t", 0), 0);
    assert_eq!(
        register_as_tenant(&s.v.sock, "vale0:t@201", 0),
        libc::ENOMEM
    );
    // A tenant's region (kept by its persistent port) takes neither
    // another tenant's ports nor root's: root's ports must not land where
    // a tenant reads every buffer (`vale-ctl -m 1` included).
    const OTHER: u32 = 1;
    let s = setup("sec-mem-id2", &[]);
    assert_eq!(tenant_run(&s.v.sock, "tm", "1", "newif-mem"), 0);
    assert_eq!(
        tenant_run_as(OTHER, &s.v.sock, "vale0:o@1", "0", "register"),
        libc::EPERM
    );
    match s.v.open("vale0:rootmem2@1") {
        Err(netmap::port::PortError::Refused { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EPERM))
        }
        other => panic!(
            "root joined a tenant's region: {:?}",
            other.map(|p| p.name().to_string())
        ),
    }
    // The tenant's own ports join it.
    assert_eq!(register_as_tenant(&s.v.sock, "vale0:t2@1", 0), 0);
}

/// Runs valed to its exit (it should refuse to start); its stderr.
fn valed_refuses(args: &[&str]) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_valed"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let st = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > std::time::Duration::from_secs(20) {
            let _ = c.kill();
            panic!("valed started with {args:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!st.success(), "valed exited 0 with {args:?}: {err}");
    err
}

/// valed unlinks, binds and chowns sockets by name in its control socket's
/// directory and the vhost directory, and VMMs find them by path; a
/// directory on the way that another user can rename entries in would let
/// that user swap them (a symlink to /etc in place of the vhost directory
/// between a bind and a chown). valed refuses to start there, naming it.
#[test]
fn valed_refuses_directories_another_user_could_change() {
    let base = std::env::temp_dir().join(format!("vale-opendir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o770)).unwrap();
    let sock = base.join("valed.sock");
    let err = valed_refuses(&["--socket", sock.to_str().unwrap()]);
    assert!(err.contains("can be changed by users other than"), "{err}");
    assert!(err.contains("control socket"), "{err}");
    assert!(!sock.exists());

    // The control socket's directory private, the vhost directory under
    // an open one.
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o750)).unwrap();
    let open = base.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let vhost = open.join("vhost");
    let err = valed_refuses(&[
        "--socket",
        sock.to_str().unwrap(),
        "--vhost-dir",
        vhost.to_str().unwrap(),
    ]);
    assert!(err.contains("--vhost-dir"), "{err}");
    assert!(
        err.contains(std::fs::canonicalize(&open).unwrap().to_str().unwrap()),
        "{err}"
    );
    // Sticky (as /tmp): others' entries stay theirs, so it is accepted.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_valed"))
        .args(["--socket", sock.to_str().unwrap(), "--vhost-dir"])
        .arg(&vhost)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while CtrlConn::connect(&sock).is_err() {
        assert!(c.try_wait().unwrap().is_none(), "valed exited");
        assert!(t0.elapsed() < std::time::Duration::from_secs(20));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
    let _ = std::fs::remove_dir_all(&base);
}

/// Root's VM sockets are root's (0600) whatever the umask, or a named
/// group's (0660, `--vm-socket-group`): never open to the group tenants
/// use for the control socket, where a tenant could act as the VM while
/// its VMM is away.
#[test]
fn roots_vm_sockets_are_root_or_a_named_group() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let s = setup("sec-rootsock", &[]);
    assert_eq!(newif(&s.v.sock, "rs1", "rs1.sock", false), 0);
    let md = std::fs::symlink_metadata(s.vhost_dir.join("rs1.sock")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o600));
    drop(s);
    let s = setup("sec-rootsock-g", &["--vm-socket-group", "65534"]);
    assert_eq!(newif(&s.v.sock, "rs2", "rs2.sock", false), 0);
    let md = std::fs::symlink_metadata(s.vhost_dir.join("rs2.sock")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (0, 65534, 0o660));
}

/// Under the unit's umask (0007) the directories valed makes for its
/// sockets are still 0755: VMMs outside the group must search them.
#[test]
fn directories_valed_makes_are_searchable_whatever_the_umask() {
    let base = std::env::temp_dir().join(format!("vale-umask-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = base.join("run/vale/valed.sock");
    let mut c = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 0007; exec {} --socket {}",
            env!("CARGO_BIN_EXE_valed"),
            sock.display()
        ))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while CtrlConn::connect(&sock).is_err() {
        assert!(c.try_wait().unwrap().is_none(), "valed exited");
        assert!(t0.elapsed() < std::time::Duration::from_secs(20));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for d in ["run", "run/vale", "run/vale/vhost"] {
        let md = std::fs::metadata(base.join(d)).unwrap();
        assert_eq!(md.mode() & 0o777, 0o755, "{d}");
    }
    let _ = c.kill();
    let _ = c.wait();
    let _ = std::fs::remove_dir_all(&base);
}
