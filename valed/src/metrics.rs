//! `valed --metrics ADDR`: the counters of `vale-ctl --stats` in
//! Prometheus' text exposition format, served over HTTP on a loopback TCP
//! address or a Unix socket.
//!
//! The exporter is a client of valed's own control socket (it lists the
//! ports, then asks `VALE_REQ_METRICS` for each), so the registry keeps
//! its one owner, the control thread, and a slow scraper can hold up only
//! this thread. One scrape at a time, each bounded by read and write
//! timeouts.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netmap::abi::{NmreqValeList, NETMAP_REQ_VALE_LIST};
use netmap::ctrl::{CtrlConn, Request, VALE_REQ_METRICS};

/// Where metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    /// A loopback TCP address (`127.0.0.1:9469`, `[::1]:9469`).
    Tcp(SocketAddr),
    /// A Unix socket (`unix:/run/vale/metrics.sock`).
    Unix(PathBuf),
}

impl MetricsAddr {
    /// Parses `--metrics`' value. Only loopback TCP addresses: valed is
    /// root and its counters name every tenant's ports.
    pub fn parse(s: &str) -> Result<MetricsAddr, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("--metrics unix: needs a path".into());
            }
            return Ok(MetricsAddr::Unix(PathBuf::from(p)));
        }
        let a: SocketAddr = s.parse().map_err(|_| {
            format!("--metrics {s:?}: want HOST:PORT on loopback (127.0.0.1:9469) or unix:PATH")
        })?;
        let lo = match a.ip() {
            IpAddr::V4(ip) => ip.is_loopback(),
            IpAddr::V6(ip) => ip.is_loopback(),
        };
        if !lo {
            return Err(format!(
                "--metrics {s}: {} is not a loopback address (valed's counters name every tenant's ports)",
                a.ip()
            ));
        }
        Ok(MetricsAddr::Tcp(a))
    }
}

/// HELP text and type of each metric family, in output order.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "vale_port_in_packets_total",
        "counter",
        "Frames the port sent into the switch.",
    ),
    (
        "vale_port_in_bytes_total",
        "counter",
        "Bytes the port sent into the switch.",
    ),
    (
        "vale_port_out_packets_total",
        "counter",
        "Frames delivered to the port.",
    ),
    (
        "vale_port_out_bytes_total",
        "counter",
        "Bytes delivered to the port.",
    ),
    (
        "vale_port_soft_offload_total",
        "counter",
        "Frames for the port segmented or checksummed in software.",
    ),
    (
        "vale_port_drops_total",
        "counter",
        "Frames for or from the port dropped, by reason.",
    ),
    (
        "vale_vhost_connected",
        "gauge",
        "1 if a VMM is connected to the VM port.",
    ),
    (
        "vale_vhost_running",
        "gauge",
        "1 if at least one queue of the VM port runs.",
    ),
    (
        "vale_vhost_queues_running",
        "gauge",
        "Queues (RX and TX) of the VM port running.",
    ),
    (
        "vale_vhost_connections_total",
        "counter",
        "VMM connections to the VM port.",
    ),
    (
        "vale_vhost_bad_chains_total",
        "counter",
        "Guest descriptor chains refused as malformed.",
    ),
    (
        "vale_vhost_rx_drops_total",
        "counter",
        "Frames for the guest dropped, by reason (no_rx_buffer, rx_too_small, not_running).",
    ),
    (
        "vale_vhost_last_error_timestamp_seconds",
        "gauge",
        "When the VM port last refused a request or lost its session (0: never).",
    ),
];

/// The exposition of every port valed reports, from its control socket.
pub fn scrape(ctl: &Path) -> std::io::Result<String> {
    let c = CtrlConn::connect(ctl).map_err(std::io::Error::other)?;
    let mut names = Vec::new();
    let mut b = NmreqValeList::default();
    loop {
        let req = Request::new(NETMAP_REQ_VALE_LIST, "", &b).map_err(std::io::Error::other)?;
        let (r, _) = c.call(&req).map_err(std::io::Error::other)?;
        if r.error != 0 {
            break;
        }
        let Ok(got) = r.req.body_as::<NmreqValeList>() else {
            break;
        };
        names.push(String::from_utf8_lossy(r.req.name()).into_owned());
        b = got;
        b.nr_port_idx += 1;
        if names.len() > 1 << 16 {
            break;
        }
    }
    // Samples grouped by family, as the format wants.
    let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for n in &names {
        let req =
            Request::with_body(VALE_REQ_METRICS, n, Vec::new()).map_err(std::io::Error::other)?;
        let (r, _) = c.call(&req).map_err(std::io::Error::other)?;
        if r.error != 0 {
            // The port went away between the list and now.
            continue;
        }
        for line in String::from_utf8_lossy(&r.req.body).lines() {
            let fam = line.split(['{', ' ']).next().unwrap_or("");
            if let Some((f, _, _)) = FAMILIES.iter().find(|(f, _, _)| *f == fam) {
                by.entry(f).or_default().push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for (f, ty, help) in FAMILIES {
        if let Some(lines) = by.get(f) {
            out.push_str(&format!("# HELP {f} {help}\n# TYPE {f} {ty}\n"));
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// Answers one HTTP request on `s`, taking at most [`IO_TIMEOUT`] to
/// read it and as long again to write the answer, in all: a scraper that
/// sends or reads a byte a second must not hold the one metrics thread.
fn answer(mut s: impl Scraper, ctl: &Path) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + IO_TIMEOUT;
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        s.read_timeout(left);
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let first = line.lines().next().unwrap_or("");
    let mut parts = first.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    } else if target != "/metrics" && target != "/" {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    } else {
        match scrape(ctl) {
            Ok(b) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", b),
            Err(e) => (
                "503 Service Unavailable",
                "text/plain",
                format!("valed's control socket: {e}\n"),
            ),
        }
    };
    let msg = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut sent = 0;
    while sent < msg.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        s.write_timeout(left);
        match s.write(&msg.as_bytes()[sent..]) {
            Ok(0) => return,
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// How long a scraper may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A scraper's connection: TCP or Unix, each read and write bounded by
/// what is left of [`IO_TIMEOUT`].
trait Scraper: Read + Write {
    fn read_timeout(&self, t: Duration);
    fn write_timeout(&self, t: Duration);
}

impl Scraper for std::net::TcpStream {
    fn read_timeout(&self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
    }
    fn write_timeout(&self, t: Duration) {
        let _ = self.set_write_timeout(Some(t));
    }
}

impl Scraper for std::os::unix::net::UnixStream {
    fn read_timeout(&self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
    }
    fn write_timeout(&self, t: Duration) {
        let _ = self.set_write_timeout(Some(t));
    }
}

/// Answers scrapers one at a time, on a thread of its own.
fn spawn<S: Scraper>(
    incoming: impl Iterator<Item = std::io::Result<S>> + Send + 'static,
    ctl: PathBuf,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for s in incoming {
                match s {
                    Ok(s) => answer(s, &ctl),
                    // Out of descriptors, say: rest rather than spin.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })?;
    Ok(())
}

/// Binds `addr` and serves it on a thread of its own, scraping valed
/// through `ctl`.
pub fn start(addr: &MetricsAddr, ctl: PathBuf) -> std::io::Result<()> {
    match addr {
        MetricsAddr::Tcp(a) => {
            let l = TcpListener::bind(a)?;
            tracing::info!(addr = %a, "metrics on http://{a}/metrics");
            spawn(
                std::iter::from_fn(move || Some(l.accept().map(|(s, _)| s))),
                ctl,
            )
        }
        MetricsAddr::Unix(p) => {
            // The rule for every socket valed binds: a stale socket goes,
            // anything else at the path is refused, never removed.
            let l = backend::socket::bind(p, backend::socket::Perm::AsMade)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
            l.set_nonblocking(false)?;
            tracing::info!(path = %p.display(), "metrics on unix socket");
            spawn(
                std::iter::from_fn(move || Some(l.accept().map(|(s, _)| s))),
                ctl,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scraper that sends a byte every half second is let go after
    /// IO_TIMEOUT in all, not kept as long as it drips.
    #[test]
    fn a_dripping_scraper_is_let_go() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let drip = std::thread::spawn(move || {
            for byte in b"GET /metrics HTTP/1.0\r\n\r\n" {
                if a.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let t0 = Instant::now();
        answer(b, Path::new("/nonexistent/valed.sock"));
        let took = t0.elapsed();
        assert!(took >= IO_TIMEOUT && took < IO_TIMEOUT * 3, "{took:?}");
        drip.join().unwrap();
    }

    #[test]
    fn addresses() {
        assert_eq!(
            MetricsAddr::parse("127.0.0.1:9469"),
            Ok(MetricsAddr::Tcp("127.0.0.1:9469".parse().unwrap()))
        );
        assert!(MetricsAddr::parse("[::1]:9469").is_ok());
        assert_eq!(
            MetricsAddr::parse("unix:/run/vale/m.sock"),
            Ok(MetricsAddr::Unix("/run/vale/m.sock".into()))
        );
        let e = MetricsAddr::parse("0.0.0.0:9469").unwrap_err();
        assert!(e.contains("not a loopback"), "{e}");
        assert!(MetricsAddr::parse("localhost").is_err());
        assert!(MetricsAddr::parse("unix:").is_err());
    }
}
