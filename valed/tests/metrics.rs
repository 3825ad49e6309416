//! `valed --metrics`: the counters in Prometheus' text format over HTTP on
//! a Unix socket.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

fn get(path: &std::path::Path, req: &str) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("valed-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // valed refuses socket directories others can write, whatever the umask.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let m = dir.join("metrics.sock");
    let vm = format!("vm1={},attach=vale0", dir.join("vm1.sock").display());
    let v = common::start(
        "metrics",
        &[
            "--metrics",
            &format!("unix:{}", m.display()),
            "--vhost-user",
            &vm,
        ],
    );
    // A netmap client port too, on another switch.
    let _p = v.open("vale1:c").unwrap();
    let t0 = std::time::Instant::now();
    while !m.exists() {
        assert!(t0.elapsed().as_secs() < 5, "no metrics socket");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let r = get(&m, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    for want in [
        "# TYPE vale_port_in_packets_total counter",
        "vale_port_in_packets_total{switch=\"vale0\",port=\"vm1\"} 0",
        "vale_port_in_packets_total{switch=\"vale1\",port=\"c\"} 0",
        "vale_port_drops_total{switch=\"vale0\",port=\"vm1\",reason=\"dst_full\"} 0",
        "# TYPE vale_vhost_connected gauge",
        "vale_vhost_connected{switch=\"vale0\",port=\"vm1\"} 0",
        "vale_vhost_rx_drops_total{switch=\"vale0\",port=\"vm1\",reason=\"not_running\"} 0",
    ] {
        assert!(body.contains(want), "missing {want:?} in\n{body}");
    }
    // Every family's samples follow its one TYPE line.
    let types: Vec<&str> = body.lines().filter(|l| l.starts_with("# TYPE")).collect();
    let mut seen = std::collections::HashSet::new();
    for t in &types {
        assert!(seen.insert(*t), "{t} twice");
    }
    // The client port has no vhost metrics.
    assert!(!body.contains("vale_vhost_connected{switch=\"vale1\""));
    assert!(get(&m, "GET /nope HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
    assert!(get(&m, "POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405"));
    // A scraper that never sends its request does not stop the next one.
    let _idle = UnixStream::connect(&m).unwrap();
    let r = get(&m, "GET / HTTP/1.0\r\n\r\n");
    assert!(r.starts_with("HTTP/1.0 200"), "{r}");
    drop(v);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn metrics_refuses_non_loopback_and_files() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_valed"))
        .args(["--metrics", "0.0.0.0:9469"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}
