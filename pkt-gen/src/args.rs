//! The command line, with netmap pkt-gen's options and meanings.
//!
//! Parsing is getopt-style (`-n100`, `-n 100`, clustered flags `-vvN`,
//! `--` ends options) over netmap's option string
//! `46a:f:F:Nn:i:Il:d:s:D:S:b:c:o:p:T:w:WvR:XC:H:rP:zZAhBM:`, plus the long
//! options `--json` and `--socket PATH`. Numbers must be numbers (netmap's
//! `atoi` would read garbage as 0).

use std::path::PathBuf;

use netmap::portname::{self, PortKind};

use crate::frame::{self, Af, IpRange, Mac};

/// `-o` bits (netmap's `OPT_*`).
pub mod opt {
    /// Prefetch buffers (accepted; a no-op here).
    pub const PREFETCH: u32 = 1;
    /// Touch the data (accepted; a no-op here, as in netmap).
    pub const ACCESS: u32 = 2;
    /// Copy the frame into every buffer, every time (`nm_pkt_copy`).
    pub const COPY: u32 = 4;
    /// Copy with `memcpy` (same as COPY here).
    pub const MEMCPY: u32 = 8;
    /// Timestamps (accepted; unused, as in netmap).
    pub const TS: u32 = 16;
    /// Indirect buffers (`-I`).
    pub const INDIRECT: u32 = 32;
    /// Dump every frame (`-X`).
    pub const DUMP: u32 = 64;
    /// Send whatever the buffers hold (`-r`).
    pub const RUBBISH: u32 = 256;
    /// Random source address and port (`-z`).
    pub const RANDOM_SRC: u32 = 512;
    /// Random destination address and port (`-Z`).
    pub const RANDOM_DST: u32 = 1024;
    /// Sliding-window rate statistics (`-A`).
    pub const PPS_STATS: u32 = 2048;
    /// Keep checksums right when sizes change (always done here).
    pub const UPDATE_CSUM: u32 = 4096;
}

/// `-f`: what to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// Receive and count (the default).
    Rx,
    /// Transmit.
    Tx,
    /// Send requests and measure round trips.
    Ping,
    /// Answer pings.
    Pong,
    /// Transmit numbered frames.
    TxSeq,
    /// Receive numbered frames and check them.
    RxSeq,
}

/// netmap's thread types: senders and receivers get final lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// tx, txseq.
    Sender,
    /// rx, rxseq.
    Receiver,
    /// ping, pong.
    Other,
}

impl Func {
    /// From its `-f` name.
    pub fn parse(s: &str) -> Option<Func> {
        Some(match s {
            "rx" => Func::Rx,
            "tx" => Func::Tx,
            "ping" => Func::Ping,
            "pong" => Func::Pong,
            "txseq" => Func::TxSeq,
            "rxseq" => Func::RxSeq,
            _ => return None,
        })
    }

    /// Its `-f` name.
    pub fn name(self) -> &'static str {
        match self {
            Func::Rx => "rx",
            Func::Tx => "tx",
            Func::Ping => "ping",
            Func::Pong => "pong",
            Func::TxSeq => "txseq",
            Func::RxSeq => "rxseq",
        }
    }

    /// Sender, receiver or other.
    pub fn role(self) -> Role {
        match self {
            Func::Tx | Func::TxSeq => Role::Sender,
            Func::Rx | Func::RxSeq => Role::Receiver,
            Func::Ping | Func::Pong => Role::Other,
        }
    }

    /// Burst when `-b` is not given (netmap's table).
    pub fn default_burst(self) -> u32 {
        match self {
            Func::Ping | Func::Pong => 1,
            _ => 512,
        }
    }
}

/// What kind of port `-i` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevKind {
    /// A netmap port served by valed (VALE, pipe, NIC).
    Netmap,
    /// `null`: TX discards, RX never receives, inside pkt-gen.
    Null,
    /// `virtio:SOCK` (or `virtio:PCI`): a virtio-net device driven by
    /// pkt-gen's own user-space driver.
    Virtio,
}

/// `-C tx_slots[,rx_slots[,tx_rings[,rx_rings]]]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmrConfig {
    /// Slots per TX ring (0: default).
    pub tx_slots: u32,
    /// Slots per RX ring.
    pub rx_slots: u32,
    /// TX rings.
    pub tx_rings: u16,
    /// RX rings.
    pub rx_rings: u16,
}

impl NmrConfig {
    /// netmap's `parse_nmr_config`: one number sets both slot counts, a
    /// third without a fourth sets both ring counts.
    pub fn parse(s: &str) -> Result<NmrConfig, String> {
        let mut c = NmrConfig::default();
        for (i, tok) in s.split(',').filter(|t| !t.is_empty()).enumerate() {
            let v: u32 = tok
                .trim()
                .parse()
                .map_err(|_| format!("-C: bad number {tok:?}"))?;
            let ring = || u16::try_from(v).map_err(|_| format!("-C: {v} rings"));
            match i {
                0 => {
                    c.tx_slots = v;
                    c.rx_slots = v;
                }
                1 => c.rx_slots = v,
                2 => {
                    c.tx_rings = ring()?;
                    c.rx_rings = c.tx_rings;
                }
                3 => c.rx_rings = ring()?,
                _ => return Err(format!("-C: ignored config {tok:?}")),
            }
        }
        Ok(c)
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// `-f`.
    pub func: Func,
    /// `-i`, with `netmap:` prepended where netmap does.
    pub ifname: String,
    /// Port kind.
    pub dev: DevKind,
    /// Which adapter an interface opened in this process gets
    /// (`VALE_ADMODE`: best, native or generic; netmap's `admode`).
    pub admode: nic::AdMode,
    /// `-n` (0: forever).
    pub npackets: u64,
    /// `-l`: frame size without CRC.
    pub pkt_size: usize,
    /// Second `-l`: smallest random size (0: fixed size).
    pub pkt_min_size: usize,
    /// `-b` (or the function's default).
    pub burst: u32,
    /// `-4` / `-6`.
    pub af: Af,
    /// `-s` as given.
    pub src_ip_name: String,
    /// `-s` parsed.
    pub src_ip: IpRange,
    /// `-d` as given.
    pub dst_ip_name: String,
    /// `-d` parsed.
    pub dst_ip: IpRange,
    /// `-S` as given (or found).
    pub src_mac_name: String,
    /// Source MAC.
    pub src_mac: Mac,
    /// `-D` as given.
    pub dst_mac_name: String,
    /// Destination MAC.
    pub dst_mac: Mac,
    /// `-a`: CPU of the first thread.
    pub affinity: Option<usize>,
    /// `-c`: CPUs to use (resolved: 0 means all).
    pub cpus: usize,
    /// CPUs the system has.
    pub system_cpus: usize,
    /// `-p`.
    pub nthreads: usize,
    /// `-T` in milliseconds.
    pub report_ms: u64,
    /// `-w` in seconds (0 on VALE and null ports unless given).
    pub wait_link: u64,
    /// Not `-W`: receivers keep waiting through silence.
    pub forever: bool,
    /// `-R` in packets per second (0: as fast as possible).
    pub tx_rate: u64,
    /// `-F`.
    pub frags: u32,
    /// `-M` (`u32::MAX`: the buffer size).
    pub frag_size: u32,
    /// `-o` bits and the flags that set them.
    pub options: u32,
    /// `-v` count.
    pub verbose: u32,
    /// Not `-N`.
    pub normalize: bool,
    /// `-H`.
    pub virt_header: usize,
    /// `-P`.
    pub packet_file: Option<PathBuf>,
    /// `-C`.
    pub nmr_config: Option<NmrConfig>,
    /// `-B`: bits of framing per packet (24 * 8) for raw bandwidth.
    pub framing: u32,
    /// `--json`.
    pub json: bool,
    /// `--socket`: valed's control socket.
    pub socket: Option<PathBuf>,
    /// Warnings netmap would print while parsing.
    pub notes: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// Run with this configuration.
    Run(Box<Config>),
    /// `-h`: print the usage and exit 0.
    Help,
}

/// A bad command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, ArgError> {
    Err(ArgError(msg.into()))
}

/// netmap's option string.
pub const OPTSTRING: &str = "46a:f:F:Nn:i:Il:d:s:D:S:b:c:o:p:T:w:WvR:XC:H:rP:zZAhBM:";

/// One option from the command line, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Opt {
    Short(char, Option<String>),
    Json,
    Socket(String),
    Operand(String),
}

fn takes_arg(c: char) -> Option<bool> {
    let i = OPTSTRING.find(c)?;
    Some(OPTSTRING[i + c.len_utf8()..].starts_with(':'))
}

fn getopt(args: &[String]) -> Result<Vec<Opt>, ArgError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            out.extend(args[i..].iter().cloned().map(Opt::Operand));
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            match name {
                "json" if val.is_none() => out.push(Opt::Json),
                "help" => out.push(Opt::Short('h', None)),
                "socket" => {
                    let v = match val {
                        Some(v) => v,
                        None => {
                            i += 1;
                            args.get(i - 1)
                                .cloned()
                                .ok_or_else(|| ArgError("--socket needs a path".into()))?
                        }
                    };
                    out.push(Opt::Socket(v));
                }
                _ => return bad(format!("unknown option --{name}")),
            }
            continue;
        }
        if a.len() < 2 || !a.starts_with('-') {
            out.push(Opt::Operand(a.clone()));
            continue;
        }
        for (k, c) in a[1..].char_indices() {
            let kind = if c == ':' { None } else { takes_arg(c) };
            match kind {
                None => return bad(format!("bad option {c}")),
                Some(false) => out.push(Opt::Short(c, None)),
                Some(true) => {
                    let rest = &a[1 + k + c.len_utf8()..];
                    let v = if !rest.is_empty() {
                        rest.to_string()
                    } else {
                        i += 1;
                        args.get(i - 1)
                            .cloned()
                            .ok_or_else(|| ArgError(format!("option -{c} needs an argument")))?
                    };
                    out.push(Opt::Short(c, Some(v)));
                    break;
                }
            }
        }
    }
    Ok(out)
}

fn int<T: std::str::FromStr>(opt: char, v: &str) -> Result<T, ArgError> {
    v.trim()
        .parse()
        .map_err(|_| ArgError(format!("-{opt}: bad number {v:?}")))
}

fn bits(v: &str) -> Result<u32, ArgError> {
    let v = v.trim();
    let r = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => v.parse(),
    };
    r.map_err(|_| ArgError(format!("-o: bad number {v:?}")))
}

/// The CPUs this process may run on.
pub fn system_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The MAC of a Linux interface, from sysfs.
pub fn interface_mac(ifname: &str) -> Option<Mac> {
    if ifname.is_empty() || ifname.contains('/') || ifname.starts_with('.') {
        return None;
    }
    let s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address")).ok()?;
    frame::parse_mac(s.trim())
}

/// Parses the command line (without the program name), reading the
/// system's CPU count and NIC addresses.
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Parsed, ArgError> {
    parse_with(args, system_cpus(), &interface_mac)
}

/// [`parse`] with the CPU count and the MAC lookup given (for tests).
pub fn parse_with<S: AsRef<str>>(
    args: &[S],
    system_cpus: usize,
    mac_of: &dyn Fn(&str) -> Option<Mac>,
) -> Result<Parsed, ArgError> {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    let mut notes = Vec::new();
    let mut func = Func::Rx;
    let mut ifname: Option<String> = None;
    let mut dev = DevKind::Netmap;
    let mut npackets = 0u64;
    let mut pkt_size: Option<usize> = None;
    let mut pkt_min_size = 0usize;
    let mut burst = 0u32;
    let mut af = Af::V4;
    let mut src_ip_name: Option<String> = None;
    let mut dst_ip_name: Option<String> = None;
    let mut src_mac_name: Option<String> = None;
    let mut dst_mac_name = "ff:ff:ff:ff:ff:ff".to_string();
    let mut affinity: Option<usize> = None;
    let mut cpus: i64 = 1;
    let mut nthreads: i64 = 1;
    let mut report_ms: i64 = 1000;
    let mut wait_link: Option<u64> = None;
    let mut forever = true;
    let mut tx_rate = 0u64;
    let mut frags = 1u32;
    let mut frag_size = u32::MAX;
    let mut options = 0u32;
    let mut verbose = 0u32;
    let mut normalize = true;
    let mut virt_header = 0usize;
    let mut packet_file = None;
    let mut nmr_config = None;
    let mut framing = 0u32;
    let mut json = false;
    let mut socket = None;
    for o in getopt(&args)? {
        let (c, v) = match o {
            Opt::Json => {
                json = true;
                continue;
            }
            Opt::Socket(s) => {
                socket = Some(PathBuf::from(s));
                continue;
            }
            Opt::Operand(s) => {
                notes.push(format!("ignoring argument {s:?}"));
                continue;
            }
            Opt::Short(c, v) => (c, v.unwrap_or_default()),
        };
        match c {
            'h' => return Ok(Parsed::Help),
            '4' => af = Af::V4,
            '6' => af = Af::V6,
            'N' => normalize = false,
            'n' => npackets = int('n', &v)?,
            'F' => {
                let f: i64 = int('F', &v)?;
                if (1..=63).contains(&f) {
                    frags = f as u32;
                } else {
                    notes.push(format!("invalid frags {f} [1..63], ignore"));
                }
            }
            'M' => frag_size = int('M', &v)?,
            'f' => {
                func =
                    Func::parse(&v).ok_or_else(|| ArgError(format!("unrecognised function {v}")))?
            }
            'o' => options |= bits(&v)?,
            'a' => {
                let a: i64 = int('a', &v)?;
                affinity = usize::try_from(a).ok();
            }
            'i' => {
                if v == "null" {
                    dev = DevKind::Null;
                    ifname = Some(v);
                } else if v.starts_with(guest_driver::name::PREFIX) {
                    if let Some(Err(e)) = guest_driver::VirtioName::parse(&v) {
                        return bad(e.to_string());
                    }
                    dev = DevKind::Virtio;
                    ifname = Some(v);
                } else if v.starts_with("tap:") || v.starts_with("pcap:") {
                    return bad(format!(
                        "{v}: tap and pcap devices are not supported (netmap ports only)"
                    ));
                } else if v.starts_with("netmap:") || v.starts_with("vale") {
                    dev = DevKind::Netmap;
                    ifname = Some(v);
                } else {
                    dev = DevKind::Netmap;
                    ifname = Some(format!("netmap:{v}"));
                }
            }
            'I' => options |= opt::INDIRECT,
            'l' => {
                let l: usize = int('l', &v)?;
                if pkt_size.is_some() {
                    pkt_min_size = l;
                } else {
                    pkt_size = Some(l);
                }
            }
            'd' => dst_ip_name = Some(v),
            's' => src_ip_name = Some(v),
            'T' => report_ms = int('T', &v)?,
            'w' => wait_link = Some(int('w', &v)?),
            'W' => forever = false,
            'b' => burst = int('b', &v)?,
            'c' => cpus = int('c', &v)?,
            'p' => nthreads = int('p', &v)?,
            'D' => dst_mac_name = v,
            'S' => src_mac_name = Some(v),
            'v' => verbose += 1,
            'R' => tx_rate = int('R', &v)?,
            'X' => options |= opt::DUMP,
            'C' => {
                notes.push(
                    "WARNING: the 'C' option is deprecated, use the '+conf:' libnetmap option instead"
                        .into(),
                );
                nmr_config = Some(NmrConfig::parse(&v).map_err(ArgError)?);
            }
            'H' => virt_header = int('H', &v)?,
            'P' => packet_file = Some(PathBuf::from(v)),
            'r' => options |= opt::RUBBISH,
            'z' => options |= opt::RANDOM_SRC,
            'Z' => options |= opt::RANDOM_DST,
            'A' => options |= opt::PPS_STATS,
            'B' => framing = 24 * 8,
            _ => return bad(format!("bad option {c}")),
        }
    }
    let Some(ifname) = ifname else {
        return bad("missing ifname");
    };
    if burst == 0 {
        burst = func.default_burst();
    }
    if cpus < 0 || cpus as usize > system_cpus {
        return bad(format!(
            "{cpus} cpus is too high, have only {system_cpus} cpus"
        ));
    }
    let cpus = if cpus == 0 {
        system_cpus
    } else {
        cpus as usize
    };
    if !(1..=64).contains(&nthreads) {
        return bad(format!("bad nthreads {nthreads}"));
    }
    if report_ms < 1 {
        return bad(format!("bad report interval {report_ms} ms"));
    }
    let wait_link = wait_link.unwrap_or(if ifname.starts_with("vale") || dev != DevKind::Netmap {
        0
    } else {
        2
    });
    // 60 bytes, or the smallest IPv6/UDP frame (62) with -6.
    let pkt_size = pkt_size.unwrap_or(60.max(af.headers()));
    if packet_file.is_none() {
        let min = af.headers();
        if pkt_size < min || pkt_size > frame::MAX_PKT_SIZE {
            return bad(format!(
                "bad pktsize {pkt_size} [{min}..{}]",
                frame::MAX_PKT_SIZE
            ));
        }
        if pkt_min_size > 0 && (pkt_min_size < min || pkt_min_size > pkt_size) {
            return bad(format!("bad pktminsize {pkt_min_size} [{min}..{pkt_size}]"));
        }
    } else if pkt_min_size > 0 {
        return bad("-P sends the file's frame: a second -l does not apply");
    }
    if pkt_min_size == pkt_size {
        pkt_min_size = 0;
    }
    if ![0, 10, 12].contains(&virt_header) {
        return bad("bad virtio-net-header length");
    }
    let src_mac_name = match src_mac_name {
        Some(m) => m,
        None => {
            // The interface's own address for NIC ports, as netmap does.
            let nic = if dev == DevKind::Netmap {
                portname::parse(&ifname)
                    .ok()
                    .and_then(|s| match s.name.kind {
                        PortKind::Nic { ifname } if s.name.pipe.is_none() => mac_of(&ifname),
                        _ => None,
                    })
            } else {
                None
            };
            frame::fmt_mac(&nic.unwrap_or([0; 6]))
        }
    };
    let src_mac = frame::parse_mac(&src_mac_name)
        .ok_or_else(|| ArgError(format!("invalid MAC address '{src_mac_name}'")))?;
    let dst_mac = frame::parse_mac(&dst_mac_name)
        .ok_or_else(|| ArgError(format!("invalid MAC address '{dst_mac_name}'")))?;
    // netmap's defaults are IPv4 even with -6; IPv6 gets its own.
    let (ds, dd) = match af {
        Af::V4 => ("10.0.0.1", "10.1.0.1"),
        Af::V6 => ("fd00::1", "fd00:1::1"),
    };
    let src_ip_name = src_ip_name.unwrap_or_else(|| ds.to_string());
    let dst_ip_name = dst_ip_name.unwrap_or_else(|| dd.to_string());
    let src_ip = IpRange::parse(&src_ip_name, af).map_err(|e| ArgError(format!("-s: {e}")))?;
    let dst_ip = IpRange::parse(&dst_ip_name, af).map_err(|e| ArgError(format!("-d: {e}")))?;
    if src_ip.is_range() || dst_ip.is_range() {
        options |= opt::COPY;
    }
    // Random addresses change every frame: they need the copy too (netmap
    // leaves it to the user and then sends the same frame).
    if options & (opt::RANDOM_SRC | opt::RANDOM_DST) != 0 {
        options |= opt::COPY;
    }
    if options & opt::INDIRECT != 0 && (frags > 1 || pkt_min_size > 0) {
        return bad("-I sends one slot per frame of one size: not with -F or a second -l");
    }
    let admode = match std::env::var("VALE_ADMODE") {
        Ok(m) => m.parse().map_err(ArgError)?,
        Err(_) => nic::AdMode::Best,
    };
    Ok(Parsed::Run(Box::new(Config {
        admode,
        func,
        ifname,
        dev,
        npackets,
        pkt_size,
        pkt_min_size,
        burst,
        af,
        src_ip_name,
        src_ip,
        dst_ip_name,
        dst_ip,
        src_mac_name,
        src_mac,
        dst_mac_name,
        dst_mac,
        affinity,
        cpus,
        system_cpus,
        nthreads: nthreads as usize,
        report_ms: report_ms as u64,
        wait_link,
        forever,
        tx_rate,
        frags,
        frag_size,
        options,
        verbose,
        normalize,
        virt_header,
        packet_file,
        nmr_config,
        framing,
        json,
        socket,
        notes,
    })))
}

impl Config {
    /// Whether an `-o` bit is set.
    pub fn has(&self, bit: u32) -> bool {
        self.options & bit != 0
    }

    /// The burst and the period between bursts for `-R` (netmap: about a
    /// hundredth of a second's worth of packets per burst, at least one).
    pub fn rate_plan(&self) -> Option<(u32, std::time::Duration)> {
        if self.tx_rate == 0 {
            return None;
        }
        let lim = (self.tx_rate / 300).min(u64::from(u32::MAX)) as u32;
        let burst = self.burst.min(lim).max(1);
        let ns = 1_000_000_000u64 * u64::from(burst) / self.tx_rate;
        Some((burst, std::time::Duration::from_nanos(ns)))
    }
}

/// The usage text (`-h`).
pub const USAGE: &str = "\
Usage:
pkt-gen arguments
     -h      Show program usage and exit.
     -i interface
             Port to use: a VALE port valeSSS:PPP (served by valed), a netmap
             pipe x{N / x}N, a NIC netmap:IF, or null. A name that does not
             start with netmap: or vale gets netmap: prepended.
     -f function
             tx, rx (default), ping, pong, txseq, rxseq.
     -n count
             Packets to send or receive, or ping-pong transactions (0: forever).
     -l pkt_size
             Frame size in bytes excluding CRC (default 60). A second -l gives
             random sizes at least the second and below the first.
     -b burst_size
             Packets per batch (default 512; ping and pong 1).
     -4 / -6 IPv4 (default) or IPv6 frames.
     -d dst_ip[:port[-dst_ip:port]]
             Destination address and port, single or range.
     -s src_ip[:port[-src_ip:port]]
             Source address and port, single or range.
     -D dst_mac
             Destination MAC (default ff:ff:ff:ff:ff:ff).
     -S src_mac
             Source MAC (default: the interface's, else 00:00:00:00:00:00).
     -a cpu_id
             Pin the first thread to cpu_id, the next ones to the following CPUs.
     -c cpus Number of CPUs to use for pinning (0: all; default 1).
     -p threads
             Threads, one ring each (default 1: one thread on all rings).
     -T report_ms
             Milliseconds between reports (default 1000).
     -w wait_for_link_time
             Seconds to wait before starting (default 2; 0 on VALE and null).
     -W      Receivers exit after a second without traffic.
     -R rate Packets per second to send (default: as fast as possible).
     -X      Dump every frame sent or received.
     -H len  Add an empty virtio-net header of len bytes (0, 10 or 12).
     -P file Send the first packet of a pcap file.
     -z / -Z Random source / destination address and port.
     -N      Do not normalize units.
     -F num_frags
             Send each frame in num_frags slots chained with NS_MOREFRAG.
     -M frag_size
             Largest fragment with -F (default: the buffer size).
     -I      Use indirect buffers (NS_INDIRECT).
     -v      More messages.
     -r      Send the buffers' contents as they are (rubbish mode).
     -A      Average and standard deviation of the rate (sliding window).
     -B      Count 24 bytes of framing and CRC per packet in the raw bandwidth.
     -C tx_slots[,rx_slots[,tx_rings[,rx_rings]]]
             Rings and slots of a port created by this open (deprecated:
             use @conf: in the name).
     -o options
             Bits: 1 PREFETCH, 2 ACCESS, 4 COPY, 8 MEMCPY, 16 TS, 32 INDIRECT,
             64 DUMP, 256 RUBBISH, 512 RANDOM_SRC, 1024 RANDOM_DST,
             2048 PPS_STATS, 4096 UPDATE_CSUM.
     --json  Print the final result as one JSON object on stdout.
     --socket path
             valed's control socket (default $VALE_SOCKET, else
             /run/vale/valed.sock).
";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Config, ArgError> {
        match parse_with(args, 4, &|n| (n == "eth9").then_some([2, 0, 0, 0, 0, 9]))? {
            Parsed::Run(c) => Ok(*c),
            Parsed::Help => Err(ArgError("help".into())),
        }
    }

    #[test]
    fn defaults_are_netmaps() {
        let c = p(&["-i", "vale0:a"]).unwrap();
        assert_eq!(c.func, Func::Rx);
        assert_eq!(c.ifname, "vale0:a");
        assert_eq!(c.pkt_size, 60);
        assert_eq!(c.burst, 512);
        assert_eq!(c.dst_mac, [0xff; 6]);
        assert_eq!(c.src_mac_name, "00:00:00:00:00:00");
        assert_eq!(c.src_ip_name, "10.0.0.1");
        assert_eq!(c.dst_ip_name, "10.1.0.1");
        assert_eq!((c.cpus, c.nthreads, c.report_ms), (1, 1, 1000));
        assert_eq!(c.wait_link, 0, "no PHY to wait for on VALE");
        assert!(c.forever && c.normalize && !c.json);
        assert_eq!(c.options, 0);
        assert_eq!(c.affinity, None);
        assert_eq!(c.frag_size, u32::MAX);
    }

    #[test]
    fn table() {
        // (args, check)
        type Check = fn(&Config) -> bool;
        let cases: &[(&[&str], Check)] = &[
            (&["-i", "eth9"], |c| {
                c.ifname == "netmap:eth9" && c.wait_link == 2 && c.src_mac == [2, 0, 0, 0, 0, 9]
            }),
            (&["-i", "netmap:eth0-1"], |c| c.ifname == "netmap:eth0-1"),
            (&["-i", "vale1:x{3"], |c| c.ifname == "vale1:x{3"),
            (&["-i", "null", "-f", "tx"], |c| {
                c.dev == DevKind::Null && c.wait_link == 0
            }),
            (&["-ivale0:a", "-ftx", "-n1000"], |c| {
                c.func == Func::Tx && c.npackets == 1000
            }),
            (&["-i", "vale0:a", "-f", "ping"], |c| c.burst == 1),
            (&["-i", "vale0:a", "-f", "pong", "-b", "8"], |c| {
                c.burst == 8
            }),
            (&["-i", "vale0:a", "-l", "1514", "-l", "64"], |c| {
                c.pkt_size == 1514 && c.pkt_min_size == 64
            }),
            (&["-i", "vale0:a", "-l", "64", "-l", "64"], |c| {
                c.pkt_min_size == 0
            }),
            (&["-i", "vale0:a", "-d", "10.0.0.5:80-10.0.0.9:90"], |c| {
                c.has(opt::COPY) && c.dst_ip.port1 == 90
            }),
            (&["-i", "vale0:a", "-D", "0:1:2:3:4:5", "-o", "4"], |c| {
                c.dst_mac == [0, 1, 2, 3, 4, 5] && c.options == opt::COPY
            }),
            (&["-i", "vale0:a", "-o", "0x1004", "-o8"], |c| {
                c.options == opt::COPY | opt::MEMCPY | opt::UPDATE_CSUM
            }),
            (&["-i", "vale0:a", "-a", "1", "-c", "0", "-p", "2"], |c| {
                c.affinity == Some(1) && c.cpus == 4 && c.nthreads == 2
            }),
            (&["-i", "vale0:a", "-a", "-1"], |c| c.affinity.is_none()),
            (&["-i", "vale0:a", "-T", "250", "-w", "3", "-W"], |c| {
                c.report_ms == 250 && c.wait_link == 3 && !c.forever
            }),
            (&["-i", "vale0:a", "-R", "3000", "-b", "512"], |c| {
                c.rate_plan() == Some((10, std::time::Duration::from_nanos(3_333_333)))
            }),
            (&["-i", "vale0:a", "-F", "4", "-M", "1024"], |c| {
                c.frags == 4 && c.frag_size == 1024
            }),
            (&["-i", "vale0:a", "-F", "99"], |c| {
                c.frags == 1 && !c.notes.is_empty()
            }),
            (&["-i", "vale0:a", "-I"], |c| c.has(opt::INDIRECT)),
            (&["-i", "vale0:a", "-H", "12", "-vv", "-N"], |c| {
                c.virt_header == 12 && c.verbose == 2 && !c.normalize
            }),
            (&["-i", "vale0:a", "-XrzZAB"], |c| {
                c.has(opt::DUMP)
                    && c.has(opt::RUBBISH)
                    && c.has(opt::RANDOM_SRC)
                    && c.has(opt::RANDOM_DST)
                    && c.has(opt::PPS_STATS)
                    && c.has(opt::COPY)
                    && c.framing == 192
            }),
            (&["-i", "vale0:a", "-P", "/tmp/x.pcap"], |c| {
                c.packet_file.as_deref() == Some(std::path::Path::new("/tmp/x.pcap"))
            }),
            (&["-i", "vale0:a", "-C", "2048"], |c| {
                c.nmr_config
                    == Some(NmrConfig {
                        tx_slots: 2048,
                        rx_slots: 2048,
                        tx_rings: 0,
                        rx_rings: 0,
                    })
            }),
            (&["-i", "vale0:a", "-C", "512,256,4"], |c| {
                c.nmr_config
                    == Some(NmrConfig {
                        tx_slots: 512,
                        rx_slots: 256,
                        tx_rings: 4,
                        rx_rings: 4,
                    })
            }),
            (&["-i", "vale0:a", "-C", "0,0,2,3"], |c| {
                c.nmr_config.unwrap().tx_rings == 2 && c.nmr_config.unwrap().rx_rings == 3
            }),
            (&["-i", "vale0:a", "-6", "-l", "62"], |c| {
                c.af == Af::V6 && c.src_ip_name == "fd00::1" && c.dst_ip_name == "fd00:1::1"
            }),
            (&["-i", "vale0:a", "-6", "-s", "[2001:db8::1]:99"], |c| {
                c.src_ip.port0 == 99
            }),
            (&["-i", "vale0:a", "--json", "--socket", "/x/s"], |c| {
                c.json && c.socket.as_deref() == Some(std::path::Path::new("/x/s"))
            }),
            (&["-i", "vale0:a", "--socket=/y"], |c| {
                c.socket.as_deref() == Some(std::path::Path::new("/y"))
            }),
            (&["-i", "vale0:a", "--", "-f", "tx"], |c| c.func == Func::Rx),
            (&["-i", "vale0:a", "-f", "txseq"], |c| {
                c.func.role() == Role::Sender
            }),
            (&["-i", "vale0:a", "-f", "rxseq"], |c| {
                c.func.role() == Role::Receiver
            }),
        ];
        for (args, check) in cases {
            let c = p(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(check(&c), "{args:?}: {c:?}");
        }
    }

    #[test]
    fn errors() {
        let cases: &[&[&str]] = &[
            &[],
            &["-f", "tx"],
            &["-i", "vale0:a", "-f", "bogus"],
            &["-i", "vale0:a", "-l", "41"],
            &["-i", "vale0:a", "-6", "-l", "61"],
            &["-i", "vale0:a", "-l", "65537"],
            &["-i", "vale0:a", "-l", "100", "-l", "200"],
            &["-i", "vale0:a", "-c", "5"],
            &["-i", "vale0:a", "-p", "0"],
            &["-i", "vale0:a", "-H", "8"],
            &["-i", "vale0:a", "-D", "ff:ff"],
            &["-i", "vale0:a", "-S", "zz:00:00:00:00:00"],
            &["-i", "vale0:a", "-d", "10.0.0.300"],
            &["-i", "vale0:a", "-n", "x"],
            &["-i", "vale0:a", "-q"],
            &["-i", "vale0:a", "-n"],
            &["-i", "vale0:a", "--bogus"],
            &["-i", "tap:tap0"],
            &["-i", "pcap:eth0"],
            &["-i", "vale0:a", "-I", "-F", "2"],
            &["-i", "vale0:a", "-T", "0"],
        ];
        for args in cases {
            assert!(p(args).is_err(), "{args:?} should fail");
        }
        assert!(matches!(
            parse_with(&["-h"], 1, &|_| None),
            Ok(Parsed::Help)
        ));
    }
}
