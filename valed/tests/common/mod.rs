//! The valed harness the integration tests share: a daemon on a private
//! socket in a temporary directory, killed when dropped.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netmap::abi::*;
use netmap::ctrl::{CtrlConn, Request};
use netmap::port::{NmPort, PortError};

pub struct Valed {
    pub child: Child,
    pub sock: PathBuf,
    pub dir: TempDir,
}

pub struct TempDir(pub PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn start(tag: &str, extra: &[&str]) -> Valed {
    start_in(None, tag, extra)
}

/// As [`start`], with valed inside network namespace `ns` (`ip netns
/// exec`, which execs valed: the child is valed).
pub fn start_in(ns: Option<&str>, tag: &str, extra: &[&str]) -> Valed {
    let dir = std::env::temp_dir().join(format!("valed-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // valed refuses socket directories others can write, whatever the umask.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sock = dir.join("valed.sock");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_valed")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_valed")),
    };
    let child = cmd
        .arg("--socket")
        .arg(&sock)
        .args(["--log", "warn"])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while CtrlConn::connect(&sock).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "valed did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Valed {
        child,
        sock,
        dir: TempDir(dir),
    }
}

impl Valed {
    pub fn open(&self, name: &str) -> Result<NmPort, PortError> {
        NmPort::open_with(&self.sock, name, NmreqRegister::default())
    }
    pub fn call(&self, req: &Request) -> (i32, Request) {
        let c = CtrlConn::connect(&self.sock).unwrap();
        let (r, _) = c.call(req).unwrap();
        (r.error, r.req)
    }
    pub fn list(&self) -> Vec<String> {
        let c = CtrlConn::connect(&self.sock).unwrap();
        let mut out = Vec::new();
        let mut b = NmreqValeList::default();
        loop {
            let req = Request::new(NETMAP_REQ_VALE_LIST, "", &b).unwrap();
            let (r, _) = c.call(&req).unwrap();
            if r.error != 0 {
                assert_eq!(r.error, libc::ENOENT);
                return out;
            }
            let got: NmreqValeList = r.req.body_as().unwrap();
            out.push(String::from_utf8_lossy(r.req.name()).into_owned());
            b = got;
            b.nr_port_idx += 1;
        }
    }
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "valed ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Valed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after the first `"key":` in a stats document.
pub fn field(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    let at = json.find(&pat).unwrap_or_else(|| panic!("{key} in {json}")) + pat.len();
    json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {json}"))
}

/// pkt-gen's configuration for `args` on valed's socket `sock`.
pub fn pktgen_cfg(sock: &std::path::Path, args: &[&str]) -> pkt_gen::args::Config {
    let mut v: Vec<&str> = args.to_vec();
    v.extend(["--socket", sock.to_str().unwrap()]);
    match pkt_gen::args::parse(&v).unwrap() {
        pkt_gen::args::Parsed::Run(c) => *c,
        pkt_gen::args::Parsed::Help => unreachable!(),
    }
}

/// Runs pkt-gen's `cfg` in a thread; returns once its port is open.
pub fn spawn(
    cfg: pkt_gen::args::Config,
    stop: &'static std::sync::atomic::AtomicBool,
) -> std::thread::JoinHandle<pkt_gen::stats::Outcome> {
    use std::sync::atomic::Ordering;
    let opened: &'static std::sync::atomic::AtomicBool = leak_flag();
    let h = std::thread::spawn(move || {
        pkt_gen::run::run_with(&cfg, stop, Some(opened)).expect("pkt-gen run")
    });
    let t0 = Instant::now();
    while !opened.load(Ordering::Acquire) {
        assert!(!h.is_finished(), "pkt-gen ended before opening its port");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "pkt-gen did not open its port"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    h
}

/// A flag that lives as long as the test process (pkt-gen threads hold it).
pub fn leak_flag() -> &'static std::sync::atomic::AtomicBool {
    Box::leak(Box::new(std::sync::atomic::AtomicBool::new(false)))
}
