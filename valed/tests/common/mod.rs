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
    let dir = std::env::temp_dir().join(format!("valed-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("valed.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_valed"))
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
