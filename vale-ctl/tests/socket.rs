//! The `vale-ctl` binary against a scripted valed on a real control socket:
//! socket selection, exit status, and what reaches stdout and stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use netmap::abi::{
    NmreqValeAttach, NmreqValeList, NETMAP_REQ_VALE_ATTACH, NETMAP_REQ_VALE_DELIF,
    NETMAP_REQ_VALE_LIST, NR_REG_NIC_SW,
};
use netmap::ctrl::{
    recv_request, send_reply, Reply, Request, ValePortConfig, ValeSwitchConfig, ValeVhostNewif,
    VALE_PORT_BACKPRESSURE, VALE_PORT_MASK_OVERRIDE, VALE_REQ_PORT_CONFIG, VALE_REQ_STATS,
    VALE_REQ_SWITCH_CONFIG, VALE_REQ_VHOST_NEWIF, VALE_SET_FLAGS, VALE_SET_MAC_LIMIT,
    VALE_SET_SHARE, VALE_VHOST_CLIENT,
};
use netmap::sys::{accept, seqpacket_listen};

const ENOENT: i32 = 2;
const ENXIO: i32 = 6;
const EADDRINUSE: i32 = 98;

type Seen = Arc<Mutex<Vec<Request>>>;

/// A directory of its own for each test's socket, removed at the end.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

fn scratch() -> Scratch {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "vale-ctl-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// Listens on `dir/valed.sock` and answers every request with `answer`, one
/// connection after another, for the rest of the test process.
fn fake_valed(dir: &Path, answer: fn(&Request) -> Reply) -> (PathBuf, Seen) {
    let path = dir.join("valed.sock");
    let listener = seqpacket_listen(&path, 4).unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || loop {
        let Ok(conn) = accept(&listener) else { return };
        while let Ok(Some((req, _fds))) = recv_request(&conn) {
            log.lock().unwrap().push(req.clone());
            if send_reply(&conn, &answer(&req), &[]).is_err() {
                break;
            }
        }
    });
    (path, seen)
}

/// Two ports, vale0:a (0, 0) and vale1:b (1, 3); stats for all; port options
/// for vale0:vm1 only (port-mask on, MAC limit 5, before any change; ENXIO for
/// any other port); switch vale0 owned by uid 1000 and shared with 1001 before
/// any change (ENXIO for any other switch); vhost-user ports on any socket but
/// `/busy.sock`; everything
/// else succeeds except DELIF, which finds nothing.
fn model(req: &Request) -> Reply {
    let mut r = req.clone();
    match req.reqtype() {
        NETMAP_REQ_VALE_LIST => {
            let at: NmreqValeList = req.body_as().unwrap();
            let ports = [(0u16, 0u32, "vale0:a"), (1, 3, "vale1:b")];
            let Some(&(b, p, n)) = ports
                .iter()
                .find(|(b, p, _)| (*b, *p) >= (at.nr_bridge_idx, at.nr_port_idx))
            else {
                return Reply::new(ENOENT, r);
            };
            r.hdr.set_name(n).unwrap();
            r.set_body(&NmreqValeList {
                nr_bridge_idx: b,
                pad1: 0,
                nr_port_idx: p,
            });
            Reply::new(0, r)
        }
        NETMAP_REQ_VALE_DELIF => Reply::new(ENOENT, r),
        VALE_REQ_VHOST_NEWIF => {
            let b: ValeVhostNewif = req.body_as().unwrap();
            let e = if b.path_str() == Some("/busy.sock") {
                EADDRINUSE
            } else {
                0
            };
            Reply::new(e, r)
        }
        VALE_REQ_PORT_CONFIG => {
            if req.name() != b"vale0:vm1" {
                return Reply::new(ENXIO, r);
            }
            let b: ValePortConfig = req.body_as().unwrap();
            let mut now = ValePortConfig {
                flags: VALE_PORT_MASK_OVERRIDE,
                mac_limit: 5,
                set: 0,
                pad: 0,
            };
            if b.set & VALE_SET_FLAGS != 0 {
                now.flags = b.flags;
            }
            if b.set & VALE_SET_MAC_LIMIT != 0 {
                now.mac_limit = b.mac_limit;
            }
            r.set_body(&now);
            Reply::new(0, r)
        }
        VALE_REQ_SWITCH_CONFIG => {
            if req.name() != b"vale0" {
                return Reply::new(ENXIO, r);
            }
            let b: ValeSwitchConfig = req.body_as().unwrap();
            let mut now = if b.set & VALE_SET_SHARE != 0 {
                b
            } else {
                let mut c = ValeSwitchConfig {
                    nshare: 1,
                    ..ValeSwitchConfig::default()
                };
                c.share[0] = 1001;
                c
            };
            now.owner = 1000;
            now.set = 0;
            r.set_body(&now);
            Reply::new(0, r)
        }
        VALE_REQ_STATS => {
            r.body = br#"{"ports":[{"name":"vale0:a","in_packets":3}]}"#.to_vec();
            Reply::new(0, r)
        }
        _ => Reply::new(0, r),
    }
}

fn vale_ctl(args: &[&str], env_socket: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vale-ctl"));
    c.args(args);
    match env_socket {
        Some(p) => c.env("VALE_SOCKET", p),
        None => c.env_remove("VALE_SOCKET"),
    };
    c.output().unwrap()
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap()
}

#[test]
fn lists_through_vale_socket_env() {
    let dir = scratch();
    let (path, seen) = fake_valed(&dir, model);
    let o = vale_ctl(&[], Some(&path));
    assert_eq!(text(&o.stderr), "");
    assert_eq!(
        text(&o.stdout),
        "vale0:a bridge_idx 0 port_idx 0\nvale1:b bridge_idx 1 port_idx 3\n"
    );
    assert!(o.status.success());
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn socket_option_beats_env_and_attach_sends_nic_sw() {
    let dir = scratch();
    let (path, seen) = fake_valed(&dir, model);
    let o = vale_ctl(
        &["--socket", path.to_str().unwrap(), "-h", "vale0:eth0"],
        Some(&dir.join("absent.sock")),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reqtype(), NETMAP_REQ_VALE_ATTACH);
    assert_eq!(seen[0].name(), b"vale0:eth0");
    let a: NmreqValeAttach = seen[0].body_as().unwrap();
    assert_eq!(a.reg.nr_mode, NR_REG_NIC_SW);
}

#[test]
fn refusal_exits_1() {
    let dir = scratch();
    let (path, _) = fake_valed(&dir, model);
    let o = vale_ctl(&["-r", "v9"], Some(&path));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "failed to remove v9: No such file or directory\n"
    );
}

#[test]
fn stats_json_and_table() {
    let dir = scratch();
    let (path, _) = fake_valed(&dir, model);
    let o = vale_ctl(&["--stats", "--json"], Some(&path));
    assert!(o.status.success());
    assert_eq!(
        text(&o.stdout),
        "{\"ports\":[{\"name\":\"vale0:a\",\"in_packets\":3}]}\n"
    );
    let o = vale_ctl(&["--stats"], Some(&path));
    assert!(o.status.success());
    assert_eq!(text(&o.stdout), "vale0:a in_packets=3\n");
}

#[test]
fn config_reads_then_sets_both_flags() {
    let dir = scratch();
    let (path, seen) = fake_valed(&dir, model);
    let o = vale_ctl(&["--config", "vale0:vm1", "backpressure=on"], Some(&path));
    assert_eq!(text(&o.stderr), "");
    assert!(o.status.success());
    assert_eq!(
        text(&o.stdout),
        "vale0:vm1 backpressure=on port-mask=on mac-limit=5\n"
    );
    {
        let seen = seen.lock().unwrap();
        let sent: Vec<ValePortConfig> = seen
            .iter()
            .inspect(|r| {
                assert_eq!(r.reqtype(), VALE_REQ_PORT_CONFIG);
                assert_eq!(r.name(), b"vale0:vm1");
            })
            .map(|r| r.body_as().unwrap())
            .collect();
        // The read keeps port-mask as it was; the change carries both bits.
        assert_eq!(
            sent,
            vec![
                ValePortConfig::default(),
                ValePortConfig {
                    flags: VALE_PORT_BACKPRESSURE | VALE_PORT_MASK_OVERRIDE,
                    mac_limit: 0,
                    set: VALE_SET_FLAGS,
                    pad: 0,
                },
            ]
        );
    }

    let o = vale_ctl(&["--config", "vale0:vm1", "--json"], Some(&path));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "{\"name\":\"vale0:vm1\",\"backpressure\":false,\"port_mask\":true,\"mac_limit\":5}\n"
    );

    let o = vale_ctl(&["--config", "vale0:nope", "mac-limit=8"], Some(&path));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stdout), "");
    assert_eq!(
        text(&o.stderr),
        "failed to configure vale0:nope: No such device or address\n"
    );
    assert_eq!(seen.lock().unwrap().len(), 4);

    // A bad SPEC is a usage error; nothing is sent.
    let o = vale_ctl(
        &["--config", "vale0:vm1", "backpressure=maybe"],
        Some(&path),
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stdout), "");
    assert!(text(&o.stderr)
        .starts_with("vale-ctl: --config: bad item \"backpressure=maybe\"\nUsage:\n"));
    assert_eq!(seen.lock().unwrap().len(), 4);
}

#[test]
fn switch_config_reads_then_sets_the_share_list() {
    let dir = scratch();
    let (path, seen) = fake_valed(&dir, model);
    let o = vale_ctl(&["--config", "vale0"], Some(&path));
    assert_eq!(text(&o.stderr), "");
    assert!(o.status.success());
    assert_eq!(text(&o.stdout), "vale0 owner=1000 share=1001\n");

    // +UID: a read, then the whole list.
    let o = vale_ctl(&["--config", "vale0", "share=+1002", "--json"], Some(&path));
    assert_eq!(text(&o.stderr), "");
    assert!(o.status.success());
    assert_eq!(
        text(&o.stdout),
        "{\"switch\":\"vale0\",\"owner\":1000,\"share\":[1001,1002]}\n"
    );
    {
        let seen = seen.lock().unwrap();
        let sent: Vec<ValeSwitchConfig> = seen
            .iter()
            .inspect(|r| {
                assert_eq!(r.reqtype(), VALE_REQ_SWITCH_CONFIG);
                assert_eq!(r.name(), b"vale0");
            })
            .map(|r| r.body_as().unwrap())
            .collect();
        let mut set = ValeSwitchConfig {
            nshare: 2,
            set: VALE_SET_SHARE,
            ..ValeSwitchConfig::default()
        };
        set.share[..2].copy_from_slice(&[1001, 1002]);
        assert_eq!(
            sent,
            vec![
                ValeSwitchConfig::default(),
                ValeSwitchConfig::default(),
                set
            ]
        );
    }

    let o = vale_ctl(&["--config", "vale9", "share="], Some(&path));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stdout), "");
    assert_eq!(
        text(&o.stderr),
        "failed to configure vale9: No such device or address\n"
    );
    assert_eq!(seen.lock().unwrap().len(), 4);

    // A bad uid is a usage error; nothing is sent.
    let o = vale_ctl(&["--config", "vale0", "share=bob"], Some(&path));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stdout), "");
    assert!(text(&o.stderr).starts_with(
        "vale-ctl: --config: share=: bad uid \"bob\" (want a decimal uid, 0 to 4294967294)\nUsage:\n"
    ));
    assert_eq!(seen.lock().unwrap().len(), 4);
}

#[test]
fn vhost_user_port() {
    let dir = scratch();
    let (path, seen) = fake_valed(&dir, model);
    let o = vale_ctl(
        &[
            "-n",
            "vm1",
            "--vhost-user",
            "/run/vale/vm1.sock,client,queues=2",
        ],
        Some(&path),
    );
    assert_eq!(text(&o.stderr), "");
    assert_eq!(text(&o.stdout), "");
    assert!(o.status.success());
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].reqtype(), VALE_REQ_VHOST_NEWIF);
        assert_eq!(seen[0].name(), b"vm1");
        let b: ValeVhostNewif = seen[0].body_as().unwrap();
        assert_eq!(b.path_str(), Some("/run/vale/vm1.sock"));
        assert_eq!((b.flags, b.queue_pairs), (VALE_VHOST_CLIENT, 2));
    }

    let o = vale_ctl(&["-n", "vm2", "--vhost-user", "/busy.sock"], Some(&path));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stdout), "");
    assert_eq!(
        text(&o.stderr),
        "failed to create vm2: Address already in use\n"
    );

    // A usage error sends nothing.
    let o = vale_ctl(&["--vhost-user", "/run/vale/vm3.sock"], Some(&path));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).starts_with("vale-ctl: --vhost-user needs -n NAME\nUsage:\n"));
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn no_valed() {
    let dir = scratch();
    let absent = dir.join("absent.sock");
    let o = vale_ctl(&["-a", "vale0:x"], Some(&absent));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        format!("{}: No such file or directory\n", absent.display())
    );
}

#[test]
fn usage() {
    let o = vale_ctl(&["-x"], None);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("vale-ctl: invalid option -- 'x'\nUsage:\nvale-ctl [arguments]\n"),
        "{err}"
    );
    assert!(err.ends_with("with no arguments: list all existing vale ports\n"));
    assert_eq!(text(&o.stdout), "");

    let o = vale_ctl(&["vale0:a"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).starts_with("Usage:\n"));

    let o = vale_ctl(&["--help"], None);
    assert!(o.status.success());
    assert!(text(&o.stdout).starts_with("Usage:\n"));
}
