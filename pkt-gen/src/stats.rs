//! pkt-gen's output, in netmap's formats: the log prefix of its `D()`
//! macro, the periodic rate line, the final `Sent|Received` lines, ping's
//! RTT lines and histogram, the `-X` hex dump, and a JSON final result.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::seq::SeqReport;

/// `norm()` of netmap's `ctrs.h`: a value scaled to K/M/G/T with three
/// decimals ("14.880 M"), or unscaled with none ("14880000 ").
pub fn norm(val: f64, normalize: bool) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    if !normalize {
        return format!("{val:.0} ");
    }
    let mut v = val;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.3} {}", UNITS[i])
}

/// The prefix netmap's `D()` puts before a message: seconds modulo 1000,
/// microseconds, function, line.
pub fn prefix(func: &str, line: u32) -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:03}.{:06} {} [{}] ",
        d.as_secs() % 1000,
        d.subsec_micros(),
        func,
        line
    )
}

/// Writes one `D()` line to stderr.
pub fn log(func: &str, line: u32, args: fmt::Arguments<'_>) {
    eprintln!("{}{}", prefix(func, line), args);
}

/// netmap's `D(fmt, ...)`: a message on stderr with the time, the
/// function and the line.
#[macro_export]
macro_rules! d {
    ($func:expr, $($arg:tt)*) => {
        $crate::stats::log($func, line!(), format_args!($($arg)*))
    };
}

/// netmap's `RD(lps, …)`: lets at most `lps` messages a second through.
#[derive(Debug, Default, Clone)]
pub struct RateLimit {
    sec: u64,
    count: u32,
}

impl RateLimit {
    /// Whether a message may be printed now.
    pub fn allow(&mut self, lps: u32) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if now != self.sec {
            self.sec = now;
            self.count = 0;
        }
        self.count += 1;
        self.count <= lps
    }
}

/// Packet, byte and event counts (netmap's `struct my_ctrs`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ctrs {
    /// Packets (complete frames).
    pub pkts: u64,
    /// Bytes.
    pub bytes: u64,
    /// Batches (syncs that moved something).
    pub events: u64,
}

/// Window of recent rates for `-A` (netmap's `STATS_WIN`).
pub const STATS_WIN: usize = 15;

/// The sliding window of `-A`.
#[derive(Debug, Clone, Default)]
pub struct PpsWindow {
    win: [u64; STATS_WIN],
    idx: usize,
}

impl PpsWindow {
    /// Adds a sample; returns (average, standard deviation) over the
    /// non-zero samples in the window.
    pub fn push(&mut self, pps: u64) -> (f64, f64) {
        self.win[self.idx] = pps;
        self.idx = (self.idx + 1) % STATS_WIN;
        let n = self.win.iter().filter(|&&v| v != 0).count();
        if n == 0 {
            return (0.0, 0.0);
        }
        let avg = self.win.iter().sum::<u64>() as f64 / n as f64;
        let var = self
            .win
            .iter()
            .filter(|&&v| v != 0)
            .map(|&v| (v as f64 - avg) * (v as f64 - avg))
            .sum::<f64>()
            / n as f64;
        (avg, var.sqrt())
    }
}

/// The periodic line (without the `D()` prefix):
/// `14.880 Mpps (14.895 Mpkts 7.142 Gbps in 1001012 usec) 512.00 avg_batch 99999 min_space`.
pub fn periodic_line(
    x: &Ctrs,
    usec: u64,
    min_space: u64,
    framing: u32,
    normalize: bool,
    window: Option<&mut PpsWindow>,
) -> String {
    let usec = usec.max(1);
    let pps = (x.pkts * 1_000_000 + usec / 2) / usec;
    let avg_batch = if x.events > 0 {
        x.pkts as f64 / x.events as f64
    } else {
        0.0
    };
    let b4 = match window {
        Some(w) => {
            let (avg, dev) = w.push(pps);
            format!(
                "[avg/std {}/{} pps]",
                norm(avg, normalize),
                norm(dev, normalize)
            )
        }
        None => String::new(),
    };
    let bps = 1e6 * (x.bytes as f64 * 8.0 + x.pkts as f64 * f64::from(framing)) / usec as f64;
    format!(
        "{}pps {}({}pkts {}bps in {} usec) {:.2} avg_batch {} min_space",
        norm(pps as f64, normalize),
        b4,
        norm(x.pkts as f64, normalize),
        norm(bps, normalize),
        usec,
        avg_batch,
        min_space as i32
    )
}

/// netmap's `tx_output()`: the two final lines (or `"<msg> nothing."`).
pub fn final_lines(msg: &str, c: &Ctrs, delta: f64, framing: u32, normalize: bool) -> String {
    if c.pkts == 0 {
        return format!("{msg} nothing.");
    }
    let size = (c.bytes / c.pkts) as i32;
    let mut out = format!(
        "{msg} {} packets {} bytes {} events {} bytes each in {:.2} seconds.\n",
        c.pkts, c.bytes, c.events, size, delta
    );
    let delta = if delta == 0.0 { 1e-6 } else { delta };
    let pps = c.pkts as f64 / delta;
    let bw = 8.0 * c.bytes as f64 / delta;
    let raw = (8.0 * c.bytes as f64 + c.pkts as f64 * f64::from(framing)) / delta;
    let abs = c.pkts as f64 / c.events as f64;
    let _ = write!(
        out,
        "Speed: {}pps Bandwidth: {}bps (raw {}bps). Average batch: {:.2} pkts",
        norm(pps, normalize),
        norm(bw, normalize),
        norm(raw, normalize),
        abs
    );
    out
}

/// Index of the highest bit set (netmap's `msb64`; 0 for 0).
pub fn msb64(x: u64) -> usize {
    if x == 0 {
        0
    } else {
        63 - x.leading_zeros() as usize
    }
}

/// ping's per-second RTT statistics, netmap's buckets by power of two.
#[derive(Debug, Clone)]
pub struct RttInterval {
    buckets: [u64; 64],
    count: u64,
    min: u64,
    sum: u64,
}

impl Default for RttInterval {
    fn default() -> Self {
        RttInterval {
            buckets: [0; 64],
            count: 0,
            min: u64::MAX,
            sum: 0,
        }
    }
}

impl RttInterval {
    /// Records one round trip.
    pub fn add(&mut self, ns: u64) {
        self.buckets[msb64(ns)] += 1;
        self.count += 1;
        self.min = self.min.min(ns);
        self.sum += ns;
    }

    /// Round trips recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// `count N RTT: min N av N ns`.
    pub fn count_line(&self) -> String {
        let (min, av) = match self.sum.checked_div(self.count) {
            None => (0, 0),
            Some(av) => (self.min, av),
        };
        format!("count {} RTT: min {} av {} ns", self.count, min, av)
    }

    /// `k: LO .. HI\n\t  N  N …`: the non-empty span of buckets.
    pub fn histogram_line(&self) -> Option<String> {
        let kmin = self.buckets.iter().position(|&b| b != 0)?;
        let kmax = self.buckets.iter().rposition(|&b| b != 0)?;
        let mut cells = String::new();
        for b in &self.buckets[kmin..=kmax] {
            let _ = write!(cells, " {b:5}");
        }
        Some(format!(
            "k: {} .. {}\n\t{}",
            1u64 << kmin,
            1u64 << kmax,
            cells
        ))
    }
}

/// All round trips of a ping run.
#[derive(Debug, Clone, Default)]
pub struct RttAll {
    samples: Vec<u64>,
    sum: u128,
}

/// At most this many round trips are kept for percentiles.
pub const MAX_RTT_SAMPLES: usize = 1 << 24;

impl RttAll {
    /// Records one round trip.
    pub fn add(&mut self, ns: u64) {
        self.sum += u128::from(ns);
        if self.samples.len() < MAX_RTT_SAMPLES {
            self.samples.push(ns);
        }
    }

    /// Summary of the run, `sent` pings sent.
    pub fn summary(&mut self, sent: u64) -> RttSummary {
        self.samples.sort_unstable();
        let n = self.samples.len();
        let pct = |p: f64| -> u64 {
            if n == 0 {
                return 0;
            }
            let i = ((p / 100.0) * n as f64).ceil() as usize;
            self.samples[i.clamp(1, n) - 1]
        };
        RttSummary {
            sent,
            received: n as u64,
            min_ns: self.samples.first().copied().unwrap_or(0),
            avg_ns: if n == 0 {
                0
            } else {
                (self.sum / n as u128) as u64
            },
            p50_ns: pct(50.0),
            p99_ns: pct(99.0),
            max_ns: self.samples.last().copied().unwrap_or(0),
        }
    }
}

/// Round-trip results of `ping`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttSummary {
    /// Requests sent.
    pub sent: u64,
    /// Replies received.
    pub received: u64,
    /// Smallest RTT.
    pub min_ns: u64,
    /// Mean RTT.
    pub avg_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest.
    pub max_ns: u64,
}

impl RttSummary {
    /// netmap's final line: `RTT over N packets: min N av N ns`.
    pub fn line(&self) -> String {
        format!(
            "RTT over {} packets: min {} av {} ns",
            self.sent, self.min_ns, self.avg_ns
        )
    }
}

/// netmap's `dump_payload()`: a slot header line, then 16 bytes a line in
/// hex and as characters.
pub fn dump_payload(ring_off: usize, cur: u32, buf_idx: u32, flags: u16, data: &[u8]) -> String {
    let mut out = format!(
        "ring 0x{ring_off:x} cur {cur:5} [buf {buf_idx:6} flags 0x{flags:04x} len {:5}]\n",
        data.len()
    );
    for (k, chunk) in data.chunks(16).enumerate() {
        let mut hex = String::new();
        for b in chunk {
            let _ = write!(hex, "{b:02x} ");
        }
        let text: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(out, "{:5}: {:<48}{}", k * 16, hex, text);
    }
    out
}

/// The final result of a run, for the human lines and `--json`.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// `tx`, `rx`, …
    pub function: String,
    /// The port name used.
    pub interface: String,
    /// Threads.
    pub threads: usize,
    /// Totals.
    pub ctrs: Ctrs,
    /// Seconds between the first start and the last end.
    pub seconds: f64,
    /// `txseq`/`rxseq` sender or receiver: `Sent` / `Received`; `None`
    /// for ping and pong.
    pub message: Option<&'static str>,
    /// rxseq's findings.
    pub seq: Option<SeqReport>,
    /// ping's round trips.
    pub rtt: Option<RttSummary>,
    /// Threads that failed, with why.
    pub errors: Vec<String>,
}

impl Outcome {
    /// Whether the run succeeded: no thread failed and rxseq found no error.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.seq.as_ref().is_none_or(|s| s.error_count() == 0)
    }
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".into()
    }
}

/// The final result as one JSON object.
pub fn json(o: &Outcome, framing: u32) -> String {
    let c = &o.ctrs;
    let secs = if o.seconds == 0.0 { 1e-6 } else { o.seconds };
    let mut s = format!(
        "{{\"function\":{},\"interface\":{},\"threads\":{},\"ok\":{},\"packets\":{},\"bytes\":{},\"events\":{},\"seconds\":{},\"pps\":{},\"bps\":{},\"raw_bps\":{},\"avg_batch\":{},\"bytes_each\":{}",
        esc(&o.function),
        esc(&o.interface),
        o.threads,
        o.ok(),
        c.pkts,
        c.bytes,
        c.events,
        num(o.seconds),
        num(c.pkts as f64 / secs),
        num(8.0 * c.bytes as f64 / secs),
        num((8.0 * c.bytes as f64 + c.pkts as f64 * f64::from(framing)) / secs),
        if c.events > 0 { num(c.pkts as f64 / c.events as f64) } else { "0".into() },
        c.bytes.checked_div(c.pkts).unwrap_or(0),
    );
    if let Some(r) = &o.rtt {
        let _ = write!(
            s,
            ",\"rtt\":{{\"sent\":{},\"received\":{},\"min_ns\":{},\"avg_ns\":{},\"p50_ns\":{},\"p99_ns\":{},\"max_ns\":{}}}",
            r.sent, r.received, r.min_ns, r.avg_ns, r.p50_ns, r.p99_ns, r.max_ns
        );
    }
    if let Some(q) = &o.seq {
        let opt = |v: Option<u32>| v.map_or("null".to_string(), |v| v.to_string());
        let _ = write!(
            s,
            ",\"seq\":{{\"frames\":{},\"first\":{},\"last\":{},\"gaps\":{},\"lost\":{},\"errors\":{},\"corrupt\":{},\"duplicates\":{},\"reordered\":{},\"error_list\":[",
            q.frames,
            opt(q.first),
            opt(q.last),
            q.gaps,
            q.lost,
            q.error_count(),
            q.corrupt,
            q.duplicates,
            q.reordered
        );
        for (i, e) in q.errors.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "{{\"kind\":\"{}\",\"seq\":{},\"detail\":{}}}",
                e.kind.name(),
                opt(e.seq),
                esc(&e.detail)
            );
        }
        s.push_str("],\"gap_list\":[");
        for (i, g) in q.gap_list.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{{\"first\":{},\"count\":{}}}", g.first, g.count);
        }
        s.push_str("]}");
    }
    s.push_str(",\"thread_errors\":[");
    for (i, e) in o.errors.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&esc(e));
    }
    s.push_str("]}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_like_ctrs_h() {
        assert_eq!(norm(14_880_000.0, true), "14.880 M");
        assert_eq!(norm(512.0, true), "512.000 ");
        assert_eq!(norm(7.142e9, true), "7.142 G");
        assert_eq!(norm(2e15, true), "2000.000 T");
        assert_eq!(norm(14_880_000.0, false), "14880000 ");
    }

    #[test]
    fn periodic_line_format() {
        let x = Ctrs {
            pkts: 14_895_000,
            bytes: 14_895_000 * 60,
            events: 29_091,
        };
        let l = periodic_line(&x, 1_001_012, 99999, 0, true, None);
        assert_eq!(
            l,
            "14.880 Mpps (14.895 Mpkts 7.142 Gbps in 1001012 usec) 512.01 avg_batch 99999 min_space"
        );
        let l = periodic_line(&x, 1_001_012, 0, 0, false, None);
        assert_eq!(
            l,
            "14879941 pps (14895000 pkts 7142371920 bps in 1001012 usec) 512.01 avg_batch 0 min_space"
        );
        let mut w = PpsWindow::default();
        let l = periodic_line(&x, 1_000_000, 0, 0, true, Some(&mut w));
        // netmap prints two spaces there too ("%s pps" after "0.000 ").
        assert!(
            l.starts_with("14.895 Mpps [avg/std 14.895 M/0.000  pps]("),
            "{l}"
        );
    }

    #[test]
    fn final_lines_format() {
        let c = Ctrs {
            pkts: 1000,
            bytes: 60_000,
            events: 10,
        };
        assert_eq!(
            final_lines("Sent", &c, 2.0, 0, true),
            "Sent 1000 packets 60000 bytes 10 events 60 bytes each in 2.00 seconds.\n\
             Speed: 500.000 pps Bandwidth: 240.000 Kbps (raw 240.000 Kbps). Average batch: 100.00 pkts"
        );
        assert_eq!(
            final_lines("Sent", &c, 2.0, 24 * 8, false),
            "Sent 1000 packets 60000 bytes 10 events 60 bytes each in 2.00 seconds.\n\
             Speed: 500 pps Bandwidth: 240000 bps (raw 336000 bps). Average batch: 100.00 pkts"
        );
        assert_eq!(
            final_lines("Received", &Ctrs::default(), 1.0, 0, true),
            "Received nothing."
        );
    }

    #[test]
    fn rtt_lines() {
        let mut r = RttInterval::default();
        assert_eq!(r.count_line(), "count 0 RTT: min 0 av 0 ns");
        assert!(r.histogram_line().is_none());
        for ns in [1000, 1500, 3000, 70_000] {
            r.add(ns);
        }
        assert_eq!(r.count_line(), "count 4 RTT: min 1000 av 18875 ns");
        assert_eq!(
            r.histogram_line().unwrap(),
            "k: 512 .. 65536\n\t     1     1     1     0     0     0     0     1"
        );
        let mut a = RttAll::default();
        for ns in 1..=100 {
            a.add(ns * 10);
        }
        let s = a.summary(120);
        assert_eq!(
            (s.sent, s.received, s.min_ns, s.max_ns),
            (120, 100, 10, 1000)
        );
        assert_eq!((s.p50_ns, s.p99_ns, s.avg_ns), (500, 990, 505));
        assert_eq!(s.line(), "RTT over 120 packets: min 10 av 505 ns");
    }

    #[test]
    fn dump_format() {
        let d = dump_payload(0x100, 3, 77, 0x20, b"netmap pkt-gen DIRECT\x00\x01");
        let lines: Vec<&str> = d.lines().collect();
        assert_eq!(
            lines[0],
            "ring 0x100 cur     3 [buf     77 flags 0x0020 len    23]"
        );
        assert_eq!(
            lines[1],
            "    0: 6e 65 74 6d 61 70 20 70 6b 74 2d 67 65 6e 20 44 netmap pkt-gen D"
        );
        assert_eq!(
            lines[2],
            "   16: 49 52 45 43 54 00 01                            IRECT.."
        );
    }

    #[test]
    fn json_shape() {
        let o = Outcome {
            function: "rxseq".into(),
            interface: "vale0:b".into(),
            threads: 1,
            ctrs: Ctrs {
                pkts: 10,
                bytes: 600,
                events: 2,
            },
            seconds: 1.0,
            message: Some("Received"),
            seq: Some(SeqReport {
                frames: 10,
                ..Default::default()
            }),
            rtt: None,
            errors: vec!["a \"b\"".into()],
        };
        let j = json(&o, 0);
        assert!(j.starts_with("{\"function\":\"rxseq\",\"interface\":\"vale0:b\",\"threads\":1,\"ok\":false,\"packets\":10,"), "{j}");
        assert!(j.contains("\"seq\":{\"frames\":10,\"first\":null"), "{j}");
        assert!(j.ends_with("\"thread_errors\":[\"a \\\"b\\\"\"]}"), "{j}");
    }
}
