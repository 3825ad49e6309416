//! The frames pkt-gen sends: Ethernet, then IPv4 or IPv6, then UDP, with
//! valid checksums, and the payload netmap's pkt-gen puts after the UDP
//! header. Sizes are without the CRC: a 60-byte frame is the minimum.
//!
//! A [`Template`] holds one frame (after an optional, zeroed virtio-net
//! header). Senders copy it into netmap buffers; address ranges, random
//! addresses, random sizes and sequence numbers change it in place and keep
//! both checksums right with incremental updates (RFC 1624).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// IPv4 header length (no options).
pub const IP4_HLEN: usize = 20;
/// IPv6 header length.
pub const IP6_HLEN: usize = 40;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// Ethertype of IPv4.
pub const ETHERTYPE_IP: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Largest frame pkt-gen builds (netmap's `MAX_PKTSIZE`).
pub const MAX_PKT_SIZE: usize = 65536;
/// Default UDP port of both ends (netmap's).
pub const DEFAULT_PORT: u16 = 1234;
/// IPv6 address word that ranges vary unless `N@` says otherwise.
pub const DEFAULT_V6_GROUP: u8 = 7;

/// The payload netmap's pkt-gen writes after the UDP header, repeated.
pub const DIRECT_PAYLOAD: &[u8] =
    b"netmap pkt-gen DIRECT payload\nhttp://info.iet.unipi.it/~luigi/netmap/ ";
/// The payload it writes with `-I`.
pub const INDIRECT_PAYLOAD: &[u8] =
    b"netmap pkt-gen indirect payload\nhttp://info.iet.unipi.it/~luigi/netmap/ ";

/// Address family (`-4`, `-6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Af {
    /// IPv4 (the default).
    V4,
    /// IPv6.
    V6,
}

impl Af {
    /// Bytes of Ethernet, IP and UDP headers.
    pub fn headers(self) -> usize {
        ETH_HLEN
            + UDP_HLEN
            + match self {
                Af::V4 => IP4_HLEN,
                Af::V6 => IP6_HLEN,
            }
    }
}

// ---------------------------------------------------------------------------
// Checksums

/// Adds the big-endian 16-bit words of `data` to `sum` (an odd last byte is
/// the high byte of a word padded with zero). Not folded.
pub fn sum_words(data: &[u8], mut sum: u64) -> u64 {
    let mut pairs = data.chunks_exact(2);
    for w in &mut pairs {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = pairs.remainder() {
        sum += u64::from(*b) << 8;
    }
    sum
}

/// Folds a sum of words into 16 bits, one's complement.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data, 0))
}

/// Updates checksum `hc` for a change of `old` into `new` (equal lengths,
/// starting on a word boundary of the checksummed data): RFC 1624 eqn. 3,
/// `HC' = ~(~HC + ~m + m')`.
pub fn checksum_adjust(hc: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    let mut s = u64::from(!hc);
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        let ow = word(o);
        let nw = word(n);
        s += u64::from(!ow) + u64::from(nw);
    }
    !fold(s)
}

fn word(b: &[u8]) -> u16 {
    match b {
        [h, l] => u16::from_be_bytes([*h, *l]),
        [h] => u16::from(*h) << 8,
        _ => 0,
    }
}

/// A computed UDP checksum of 0 is sent as 0xffff (0 means "none").
fn udp_wire(c: u16) -> u16 {
    if c == 0 {
        0xffff
    } else {
        c
    }
}

// ---------------------------------------------------------------------------
// Addresses

/// A MAC address.
pub type Mac = [u8; 6];

/// The broadcast address, pkt-gen's default destination.
pub const BROADCAST: Mac = [0xff; 6];

/// Parses a MAC in colon notation as `ether_aton(3)` does: six groups of
/// one or two hex digits.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in m.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

/// Formats a MAC as `ether_ntoa(3)` on Linux would, with two digits each.
pub fn fmt_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The address part of an [`IpRange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addrs {
    /// IPv4 addresses, host order, `start <= end`.
    V4 {
        /// First address.
        start: u32,
        /// Last address.
        end: u32,
    },
    /// IPv6 addresses; a range varies one 16-bit word, the group.
    V6 {
        /// First address.
        start: [u8; 16],
        /// Last address.
        end: [u8; 16],
        /// Word index (0..=7) that varies, from the start's `N@`.
        sgroup: u8,
        /// Word index given with the end address.
        egroup: u8,
    },
}

/// An address and port range, `-s` / `-d`:
/// `ip[:port][-ip[:port]]`, IPv6 as `[N@][addr]:port` or `[N@]addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRange {
    /// The addresses.
    pub addrs: Addrs,
    /// First port.
    pub port0: u16,
    /// Last port.
    pub port1: u16,
}

fn parse_port(p: &str) -> Result<u16, String> {
    let v = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else {
        p.parse::<u32>()
    };
    v.ok()
        .and_then(|v| u16::try_from(v).ok())
        .ok_or_else(|| format!("bad port {p:?}"))
}

fn parse_v4_side(s: &str) -> Result<(u32, Option<u16>), String> {
    let (ip, port) = match s.split_once(':') {
        Some((ip, p)) => (ip, Some(parse_port(p)?)),
        None => (s, None),
    };
    let a: Ipv4Addr = ip.parse().map_err(|_| format!("bad IPv4 address {ip:?}"))?;
    Ok((u32::from(a), port))
}

/// An IPv6 side of a range: address, port, group.
type V6Side = ([u8; 16], Option<u16>, Option<u8>);

fn parse_v6_side(s: &str) -> Result<V6Side, String> {
    let (group, rest) = match s.split_once('@') {
        Some((g, r)) => {
            let g: u32 = g.parse().map_err(|_| format!("bad group {g:?}"))?;
            (Some(g.min(7) as u8), r)
        }
        None => (None, s),
    };
    let (addr, port) = match rest.strip_prefix('[') {
        Some(r) => {
            let (a, tail) = r
                .split_once(']')
                .ok_or_else(|| format!("missing ']' in {s:?}"))?;
            let port = match tail.strip_prefix(':') {
                Some(p) => Some(parse_port(p)?),
                None if tail.is_empty() => None,
                None => return Err(format!("junk after ']' in {s:?}")),
            };
            (a, port)
        }
        None => (rest, None),
    };
    let a: Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("bad IPv6 address {addr:?}"))?;
    Ok((a.octets(), port, group))
}

impl IpRange {
    /// Parses a range with netmap's rules: the first `-` splits start and
    /// end; the default port is 1234; a missing end port repeats the start
    /// port; IPv4 ends and ports are swapped into order.
    pub fn parse(s: &str, af: Af) -> Result<IpRange, String> {
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        match af {
            Af::V4 => {
                let (start, p0) = parse_v4_side(lo)?;
                let port0 = p0.unwrap_or(DEFAULT_PORT);
                let (end, port1) = match hi {
                    Some(h) => {
                        let (e, p1) = parse_v4_side(h)?;
                        (e, p1.unwrap_or(port0))
                    }
                    None => (start, port0),
                };
                Ok(IpRange {
                    addrs: Addrs::V4 {
                        start: start.min(end),
                        end: start.max(end),
                    },
                    port0: port0.min(port1),
                    port1: port0.max(port1),
                })
            }
            Af::V6 => {
                let (start, p0, g) = parse_v6_side(lo)?;
                let port0 = p0.unwrap_or(DEFAULT_PORT);
                let sgroup = g.unwrap_or(DEFAULT_V6_GROUP);
                let (end, port1, egroup) = match hi {
                    Some(h) => {
                        let (e, p1, eg) = parse_v6_side(h)?;
                        (e, p1.unwrap_or(port0), eg.unwrap_or(sgroup))
                    }
                    None => (start, port0, sgroup),
                };
                Ok(IpRange {
                    addrs: Addrs::V6 {
                        start,
                        end,
                        sgroup,
                        egroup,
                    },
                    port0: port0.min(port1),
                    port1: port0.max(port1),
                })
            }
        }
    }

    /// Whether more than one address or port is covered (netmap then turns
    /// on `OPT_COPY`, since every frame differs).
    pub fn is_range(&self) -> bool {
        self.port0 != self.port1
            || match &self.addrs {
                Addrs::V4 { start, end } => start != end,
                Addrs::V6 { start, end, .. } => start != end,
            }
    }

    /// First address in wire order (4 or 16 bytes).
    fn start_bytes(&self) -> Vec<u8> {
        match &self.addrs {
            Addrs::V4 { start, .. } => start.to_be_bytes().to_vec(),
            Addrs::V6 { start, .. } => start.to_vec(),
        }
    }

    /// The first and last word of the varying IPv6 group.
    fn v6_group(&self) -> (usize, u16, u16) {
        match &self.addrs {
            Addrs::V6 {
                start, end, sgroup, ..
            } => {
                let g = usize::from(*sgroup);
                let w = |a: &[u8; 16]| u16::from_be_bytes([a[2 * g], a[2 * g + 1]]);
                (g, w(start), w(end))
            }
            Addrs::V4 { .. } => (0, 0, 0),
        }
    }
}

impl fmt::Display for IpRange {
    /// netmap's "range is …" text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addrs {
            Addrs::V4 { start, end } => write!(
                f,
                "{}:{} to {}:{}",
                Ipv4Addr::from(*start),
                self.port0,
                Ipv4Addr::from(*end),
                self.port1
            ),
            Addrs::V6 {
                start,
                end,
                sgroup,
                egroup,
            } => write!(
                f,
                "{}@[{}]:{} to {}@[{}]:{}",
                sgroup,
                Ipv6Addr::from(*start),
                self.port0,
                egroup,
                Ipv6Addr::from(*end),
                self.port1
            ),
        }
    }
}

/// A small, fast generator for random addresses and sizes (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

// ---------------------------------------------------------------------------
// Templates

/// What a template frame carries.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    /// IPv4 or IPv6.
    pub af: Af,
    /// Source MAC.
    pub src_mac: Mac,
    /// Destination MAC.
    pub dst_mac: Mac,
    /// Source addresses and ports.
    pub src: IpRange,
    /// Destination addresses and ports.
    pub dst: IpRange,
    /// Frame size without CRC (and without the virtio-net header).
    pub size: usize,
    /// Bytes of zeroed virtio-net header before the frame (0, 10 or 12).
    pub virt_header: usize,
    /// Fill the payload with netmap's indirect text (`-I`).
    pub indirect_payload: bool,
}

/// Why a frame could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The size cannot hold the headers, or exceeds the maximum.
    #[error("bad pktsize {size} [{min}..{max}]")]
    Size {
        /// Asked size.
        size: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Addresses of the wrong family.
    #[error("address range of the wrong family")]
    Family,
}

/// One frame to send, kept valid as it changes.
#[derive(Debug, Clone)]
pub struct Template {
    buf: Vec<u8>,
    vh: usize,
    size: usize,
    af: Option<Af>,
    src: Option<IpRange>,
    dst: Option<IpRange>,
    /// Sums of the payload's words at every even length, so a size change
    /// recomputes the UDP checksum without reading the payload.
    paysum: Vec<u64>,
}

impl Template {
    /// Builds the frame `spec` describes.
    pub fn new(spec: &FrameSpec) -> Result<Template, FrameError> {
        let min = spec.af.headers();
        if spec.size < min || spec.size > MAX_PKT_SIZE {
            return Err(FrameError::Size {
                size: spec.size,
                min,
                max: MAX_PKT_SIZE,
            });
        }
        let fam_ok = |r: &IpRange| {
            matches!(
                (&r.addrs, spec.af),
                (Addrs::V4 { .. }, Af::V4) | (Addrs::V6 { .. }, Af::V6)
            )
        };
        if !fam_ok(&spec.src) || !fam_ok(&spec.dst) {
            return Err(FrameError::Family);
        }
        let vh = spec.virt_header;
        let mut buf = vec![0u8; vh + spec.size];
        let body_off = vh + min;
        let pattern = if spec.indirect_payload {
            INDIRECT_PAYLOAD
        } else {
            DIRECT_PAYLOAD
        };
        for (i, b) in buf[body_off..].iter_mut().enumerate() {
            *b = pattern[i % pattern.len()];
        }
        let f = &mut buf[vh..];
        f[0..6].copy_from_slice(&spec.dst_mac);
        f[6..12].copy_from_slice(&spec.src_mac);
        let sb = spec.src.start_bytes();
        let db = spec.dst.start_bytes();
        match spec.af {
            Af::V4 => {
                f[12..14].copy_from_slice(&ETHERTYPE_IP.to_be_bytes());
                let ip = &mut f[ETH_HLEN..ETH_HLEN + IP4_HLEN];
                ip[0] = 0x45;
                ip[1] = 0x10; // IPTOS_LOWDELAY
                ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
                ip[8] = 64; // IPDEFTTL
                ip[9] = IPPROTO_UDP;
                ip[12..16].copy_from_slice(&sb);
                ip[16..20].copy_from_slice(&db);
            }
            Af::V6 => {
                f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                let ip = &mut f[ETH_HLEN..ETH_HLEN + IP6_HLEN];
                ip[0] = 0x60;
                ip[6] = IPPROTO_UDP;
                ip[7] = 64; // IPV6_DEFHLIM
                ip[8..24].copy_from_slice(&sb);
                ip[24..40].copy_from_slice(&db);
            }
        }
        let l4 = vh + min - UDP_HLEN;
        buf[l4..l4 + 2].copy_from_slice(&spec.src.port0.to_be_bytes());
        buf[l4 + 2..l4 + 4].copy_from_slice(&spec.dst.port0.to_be_bytes());
        // Prefix sums of the payload's words, over the largest payload.
        let body = &buf[body_off..];
        let mut paysum = Vec::with_capacity(body.len() / 2 + 1);
        let mut s = 0u64;
        paysum.push(0);
        for w in body.chunks_exact(2) {
            s += u64::from(u16::from_be_bytes([w[0], w[1]]));
            paysum.push(s);
        }
        let mut t = Template {
            buf,
            vh,
            size: spec.size,
            af: Some(spec.af),
            src: Some(spec.src.clone()),
            dst: Some(spec.dst.clone()),
            paysum,
        };
        t.set_size(spec.size);
        Ok(t)
    }

    /// A template holding `frame` as is (a packet from a pcap file): it
    /// never changes, whatever the options.
    pub fn raw(frame: &[u8], virt_header: usize) -> Template {
        let mut buf = vec![0u8; virt_header];
        buf.extend_from_slice(frame);
        Template {
            buf,
            vh: virt_header,
            size: frame.len(),
            af: None,
            src: None,
            dst: None,
            paysum: Vec::new(),
        }
    }

    /// The bytes to put in a slot: virtio-net header, then the frame.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.vh + self.size]
    }

    /// The frame alone.
    pub fn frame(&self) -> &[u8] {
        &self.buf[self.vh..self.vh + self.size]
    }

    /// Bytes per slot payload: header plus frame.
    pub fn len(&self) -> usize {
        self.vh + self.size
    }

    /// Whether the template is empty (never, for a built one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frame size (without the virtio-net header).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The largest size [`set_size`](Self::set_size) accepts.
    pub fn max_size(&self) -> usize {
        self.buf.len() - self.vh
    }

    /// Address family, if this is a built (not raw) frame.
    pub fn af(&self) -> Option<Af> {
        self.af
    }

    /// Offset of the UDP payload in the frame, if built.
    pub fn body_offset(&self) -> Option<usize> {
        self.af.map(Af::headers)
    }

    fn l3(&self) -> usize {
        self.vh + ETH_HLEN
    }

    fn l4(&self) -> usize {
        match self.af {
            Some(Af::V4) => self.vh + ETH_HLEN + IP4_HLEN,
            _ => self.vh + ETH_HLEN + IP6_HLEN,
        }
    }

    fn udp_csum(&self) -> u16 {
        let l4 = self.l4();
        u16::from_be_bytes([self.buf[l4 + 6], self.buf[l4 + 7]])
    }

    fn set_udp_csum(&mut self, c: u16) {
        let l4 = self.l4();
        self.buf[l4 + 6..l4 + 8].copy_from_slice(&udp_wire(c).to_be_bytes());
    }

    /// Resizes the frame to `size` (headers..=max_size), rewriting the IP
    /// and UDP lengths and both checksums. The payload must be the one the
    /// template was built with. Raw templates ignore this.
    pub fn set_size(&mut self, size: usize) {
        let Some(af) = self.af else { return };
        let size = size.clamp(af.headers(), self.max_size());
        self.size = size;
        let l3 = self.l3();
        let l4 = self.l4();
        let udp_len = (size - (l4 - self.vh)) as u16;
        let mut pseudo = 0u64;
        match af {
            Af::V4 => {
                let ip_len = (size - ETH_HLEN) as u16;
                self.buf[l3 + 2..l3 + 4].copy_from_slice(&ip_len.to_be_bytes());
                self.buf[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
                let c = checksum(&self.buf[l3..l3 + IP4_HLEN]);
                self.buf[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
                pseudo = sum_words(&self.buf[l3 + 12..l3 + 20], pseudo);
            }
            Af::V6 => {
                self.buf[l3 + 4..l3 + 6].copy_from_slice(&udp_len.to_be_bytes());
                pseudo = sum_words(&self.buf[l3 + 8..l3 + 40], pseudo);
            }
        }
        pseudo += u64::from(IPPROTO_UDP) + u64::from(udp_len);
        self.buf[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
        self.buf[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        let hdr = sum_words(&self.buf[l4..l4 + UDP_HLEN], pseudo);
        let blen = usize::from(udp_len) - UDP_HLEN;
        let mut body = self.paysum[blen / 2];
        if blen % 2 == 1 {
            body += u64::from(self.buf[l4 + UDP_HLEN + blen - 1]) << 8;
        }
        let c = !fold(hdr + body);
        self.set_udp_csum(c);
    }

    /// Writes `data` into the UDP payload at `at`, keeping the UDP checksum
    /// right. `at` must be even. Returns false if it does not fit.
    pub fn write_payload(&mut self, at: usize, data: &[u8]) -> bool {
        let Some(b) = self.body_offset() else {
            return false;
        };
        let start = self.vh + b + at;
        if at % 2 != 0 || start + data.len() > self.vh + self.size {
            return false;
        }
        let old = self.buf[start..start + data.len()].to_vec();
        self.buf[start..start + data.len()].copy_from_slice(data);
        // An odd-length write ends on the high byte of a word: the low byte
        // is unchanged, so adjusting with the single byte is exact.
        let c = checksum_adjust(self.udp_csum(), &old, data);
        self.set_udp_csum(c);
        true
    }

    /// Moves to the next addresses, as netmap's `update_addresses`: the
    /// source port counts fastest, then the source address, the destination
    /// port and the destination address; `random_src` / `random_dst` draw
    /// those instead. Checksums are updated incrementally.
    pub fn next_addresses(&mut self, rng: &mut Rng, random_src: bool, random_dst: bool) {
        let (Some(af), Some(src), Some(dst)) = (self.af, self.src.clone(), self.dst.clone()) else {
            return;
        };
        let l3 = self.l3();
        let l4 = self.l4();
        let (alo, ahi) = match af {
            Af::V4 => (l3 + 12, l3 + 20),
            Af::V6 => (l3 + 8, l3 + 40),
        };
        let old_addrs = self.buf[alo..ahi].to_vec();
        let old_ports = self.buf[l4..l4 + 4].to_vec();
        let alen = (ahi - alo) / 2;
        // Offsets of the source and destination address fields.
        let (sa, da) = (alo, alo + alen);
        let wrapped = if random_src {
            self.randomize(af, &src, sa, l4, rng);
            true
        } else {
            !self.step(af, &src, sa, l4)
        };
        if wrapped {
            if random_dst {
                self.randomize(af, &dst, da, l4 + 2, rng);
            } else {
                self.step(af, &dst, da, l4 + 2);
            }
        }
        let new_addrs = self.buf[alo..ahi].to_vec();
        let new_ports = self.buf[l4..l4 + 4].to_vec();
        let mut c = checksum_adjust(self.udp_csum(), &old_addrs, &new_addrs);
        c = checksum_adjust(c, &old_ports, &new_ports);
        self.set_udp_csum(c);
        if af == Af::V4 {
            let ic = u16::from_be_bytes([self.buf[l3 + 10], self.buf[l3 + 11]]);
            let ic = checksum_adjust(ic, &old_addrs, &new_addrs);
            self.buf[l3 + 10..l3 + 12].copy_from_slice(&ic.to_be_bytes());
        }
    }

    fn get16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.buf[at], self.buf[at + 1]])
    }

    fn put16(&mut self, at: usize, v: u16) {
        self.buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// Advances one side's (port, address) odometer. Returns true if it
    /// did not wrap (netmap's `break`).
    fn step(&mut self, af: Af, r: &IpRange, addr_at: usize, port_at: usize) -> bool {
        let port = self.get16(port_at);
        if port < r.port1 {
            self.put16(port_at, port + 1);
            return true;
        }
        self.put16(port_at, r.port0);
        match (af, &r.addrs) {
            (Af::V4, Addrs::V4 { start, end }) => {
                let a =
                    u32::from_be_bytes(self.buf[addr_at..addr_at + 4].try_into().expect("4 bytes"));
                let (n, more) = if a < *end {
                    (a + 1, true)
                } else {
                    (*start, false)
                };
                self.buf[addr_at..addr_at + 4].copy_from_slice(&n.to_be_bytes());
                more
            }
            (Af::V6, Addrs::V6 { .. }) => {
                let (g, lo, hi) = r.v6_group();
                let at = addr_at + 2 * g;
                let w = self.get16(at);
                if w < hi {
                    self.put16(at, w + 1);
                    true
                } else {
                    self.put16(at, lo);
                    false
                }
            }
            _ => false,
        }
    }

    fn randomize(&mut self, af: Af, r: &IpRange, addr_at: usize, port_at: usize, rng: &mut Rng) {
        match af {
            Af::V4 => {
                let a = rng.next_u32();
                self.buf[addr_at..addr_at + 4].copy_from_slice(&a.to_be_bytes());
            }
            Af::V6 => {
                let (g, _, _) = r.v6_group();
                let w = rng.next_u32() as u16;
                self.put16(addr_at + 2 * g, w);
            }
        }
        let p = rng.next_u32() as u16;
        self.put16(port_at, p);
    }
}

// ---------------------------------------------------------------------------
// Checking received frames

/// What is wrong with a received frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Defect {
    /// Shorter than its headers say.
    #[error("frame of {0} bytes is too short")]
    Short(usize),
    /// Neither IPv4 nor IPv6.
    #[error("ethertype 0x{0:04x} is not IPv4 or IPv6")]
    Ethertype(u16),
    /// Version, header length or protocol is not IP/UDP as sent.
    #[error("IP header: {0}")]
    IpHeader(&'static str),
    /// IP length disagrees with the frame length.
    #[error("IP length {ip} for a {frame}-byte frame")]
    IpLen {
        /// Length the IP header states (total or payload).
        ip: usize,
        /// Frame length.
        frame: usize,
    },
    /// The IPv4 header checksum is wrong.
    #[error("IPv4 header checksum 0x{0:04x} is wrong")]
    IpChecksum(u16),
    /// UDP length disagrees with IP.
    #[error("UDP length {udp}, IP says {ip}")]
    UdpLen {
        /// UDP length field.
        udp: usize,
        /// What IP leaves for UDP.
        ip: usize,
    },
    /// The UDP checksum is wrong.
    #[error("UDP checksum 0x{0:04x} is wrong")]
    UdpChecksum(u16),
}

/// Where the parts of a good frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// IPv4 or IPv6.
    pub af: Af,
    /// Offset of the UDP payload.
    pub body: usize,
    /// Length of the UDP payload.
    pub body_len: usize,
}

/// Checks the headers, lengths and both checksums of an Ethernet/IP/UDP
/// frame (no virtio-net header).
pub fn verify(f: &[u8]) -> Result<Parsed, Defect> {
    if f.len() < ETH_HLEN {
        return Err(Defect::Short(f.len()));
    }
    let et = u16::from_be_bytes([f[12], f[13]]);
    let af = match et {
        ETHERTYPE_IP => Af::V4,
        ETHERTYPE_IPV6 => Af::V6,
        other => return Err(Defect::Ethertype(other)),
    };
    if f.len() < af.headers() {
        return Err(Defect::Short(f.len()));
    }
    let ip = &f[ETH_HLEN..];
    let (l4, mut pseudo, udp_room) = match af {
        Af::V4 => {
            if ip[0] != 0x45 {
                return Err(Defect::IpHeader("not version 4 with a 20-byte header"));
            }
            if ip[9] != IPPROTO_UDP {
                return Err(Defect::IpHeader("protocol is not UDP"));
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if total != f.len() - ETH_HLEN {
                return Err(Defect::IpLen {
                    ip: total,
                    frame: f.len(),
                });
            }
            if fold(sum_words(&ip[..IP4_HLEN], 0)) != 0xffff {
                return Err(Defect::IpChecksum(u16::from_be_bytes([ip[10], ip[11]])));
            }
            (
                ETH_HLEN + IP4_HLEN,
                sum_words(&ip[12..20], 0),
                total - IP4_HLEN,
            )
        }
        Af::V6 => {
            if ip[0] >> 4 != 6 {
                return Err(Defect::IpHeader("not version 6"));
            }
            if ip[6] != IPPROTO_UDP {
                return Err(Defect::IpHeader("next header is not UDP"));
            }
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if plen != f.len() - ETH_HLEN - IP6_HLEN {
                return Err(Defect::IpLen {
                    ip: plen,
                    frame: f.len(),
                });
            }
            (ETH_HLEN + IP6_HLEN, sum_words(&ip[8..40], 0), plen)
        }
    };
    let udp = &f[l4..];
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if ulen != udp_room || ulen < UDP_HLEN {
        return Err(Defect::UdpLen {
            udp: ulen,
            ip: udp_room,
        });
    }
    let sum = u16::from_be_bytes([udp[6], udp[7]]);
    // IPv4 allows "no checksum" (0); IPv6 does not.
    if !(af == Af::V4 && sum == 0) {
        pseudo += u64::from(IPPROTO_UDP) + ulen as u64;
        if fold(sum_words(&udp[..ulen], pseudo)) != 0xffff {
            return Err(Defect::UdpChecksum(sum));
        }
    }
    Ok(Parsed {
        af,
        body: l4 + UDP_HLEN,
        body_len: ulen - UDP_HLEN,
    })
}

/// Swaps source and destination MAC and IP addresses in place, as netmap's
/// pong does (both checksums stay valid: their sums do not change).
pub fn swap_addresses(f: &mut [u8]) {
    if f.len() < ETH_HLEN {
        return;
    }
    for i in 0..6 {
        f.swap(i, i + 6);
    }
    match u16::from_be_bytes([f[12], f[13]]) {
        ETHERTYPE_IP if f.len() >= ETH_HLEN + IP4_HLEN => {
            for i in 0..4 {
                f.swap(ETH_HLEN + 12 + i, ETH_HLEN + 16 + i);
            }
        }
        ETHERTYPE_IPV6 if f.len() >= ETH_HLEN + IP6_HLEN => {
            for i in 0..16 {
                f.swap(ETH_HLEN + 8 + i, ETH_HLEN + 24 + i);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(af: Af, size: usize) -> FrameSpec {
        FrameSpec {
            af,
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: BROADCAST,
            src: IpRange::parse(
                if af == Af::V4 {
                    "10.0.0.1"
                } else {
                    "2001:db8::1"
                },
                af,
            )
            .unwrap(),
            dst: IpRange::parse(
                if af == Af::V4 {
                    "10.1.0.1"
                } else {
                    "2001:db8::2"
                },
                af,
            )
            .unwrap(),
            size,
            virt_header: 0,
            indirect_payload: false,
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn ipv4_header_checksum_known_vector() {
        // The classic example (RFC 1071 style walk-through): 0xb861.
        let h = hex("4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7");
        assert_eq!(checksum(&h), 0xb861);
        let mut h2 = h.clone();
        h2[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&h2), 0);
    }

    #[test]
    fn rfc1071_example_sum() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2.
        assert_eq!(fold(sum_words(&hex("0001f203f4f5f6f7"), 0)), 0xddf2);
        assert_eq!(checksum(&hex("0001f203f4f5f6f7")), !0xddf2);
    }

    // Frames built and checksummed by an independent implementation
    // (Python's struct + a straightforward RFC 1071 sum), byte for byte.
    const V4_60: &str = "ffffffffffff 020000000001 0800 \
        4510 002e 0000 4000 4011 26ad 0a000001 0a010001 \
        04d2 04d2 001a 1580 \
        6e65746d617020706b742d67656e20444952";
    const V6_62: &str = "ffffffffffff 020000000001 86dd \
        60000000 0008 11 40 20010db8000000000000000000000001 \
        20010db8000000000000000000000002 \
        04d2 04d2 0008 9ac5";

    #[test]
    fn ipv4_udp_frame_matches_known_vector() {
        let t = Template::new(&spec(Af::V4, 60)).unwrap();
        assert_eq!(t.frame(), &hex(V4_60)[..]);
        assert!(verify(t.frame()).is_ok());
    }

    #[test]
    fn ipv6_udp_frame_matches_known_vector() {
        let t = Template::new(&spec(Af::V6, 62)).unwrap();
        assert_eq!(t.frame(), &hex(V6_62)[..]);
        assert!(verify(t.frame()).is_ok());
    }

    #[test]
    fn sizes_and_min() {
        assert!(Template::new(&spec(Af::V4, 41)).is_err());
        assert!(Template::new(&spec(Af::V6, 61)).is_err());
        for size in [42, 60, 61, 64, 1000, 1514, 9000, MAX_PKT_SIZE] {
            let t = Template::new(&spec(Af::V4, size)).unwrap();
            assert_eq!(t.frame().len(), size);
            assert!(verify(t.frame()).is_ok(), "v4 size {size}");
        }
        for size in [62, 63, 1514, 9001] {
            let t = Template::new(&spec(Af::V6, size)).unwrap();
            assert!(verify(t.frame()).is_ok(), "v6 size {size}");
        }
    }

    #[test]
    fn set_size_keeps_checksums() {
        let mut t = Template::new(&spec(Af::V4, 1514)).unwrap();
        let mut rng = Rng::new(7);
        for _ in 0..500 {
            let s = 60 + rng.next_u32() as usize % (1514 - 60);
            t.set_size(s);
            assert_eq!(t.frame().len(), s);
            assert!(verify(t.frame()).is_ok(), "size {s}");
            // Same as building it at that size directly.
            assert_eq!(t.frame(), Template::new(&spec(Af::V4, s)).unwrap().frame());
        }
        let mut t = Template::new(&spec(Af::V6, 1514)).unwrap();
        for s in [62, 63, 100, 777, 1514] {
            t.set_size(s);
            assert!(verify(t.frame()).is_ok(), "v6 size {s}");
        }
    }

    #[test]
    fn ranges_walk_like_netmap() {
        let mut sp = spec(Af::V4, 60);
        sp.src = IpRange::parse("10.0.0.1:1000-10.0.0.2:1001", Af::V4).unwrap();
        sp.dst = IpRange::parse("10.1.0.1:2000-10.1.0.1:2001", Af::V4).unwrap();
        let mut t = Template::new(&sp).unwrap();
        let mut rng = Rng::new(1);
        let mut seen = Vec::new();
        for _ in 0..9 {
            let f = t.frame();
            assert!(verify(f).is_ok());
            seen.push((
                f[29],
                u16::from_be_bytes([f[34], f[35]]),
                u16::from_be_bytes([f[36], f[37]]),
            ));
            t.next_addresses(&mut rng, false, false);
        }
        assert_eq!(
            seen,
            vec![
                (1, 1000, 2000),
                (1, 1001, 2000),
                (2, 1000, 2000),
                (2, 1001, 2000),
                (1, 1000, 2001),
                (1, 1001, 2001),
                (2, 1000, 2001),
                (2, 1001, 2001),
                (1, 1000, 2000),
            ]
        );
    }

    #[test]
    fn random_and_v6_ranges_keep_checksums() {
        let mut t = Template::new(&spec(Af::V4, 60)).unwrap();
        let mut rng = Rng::new(99);
        for _ in 0..1000 {
            t.next_addresses(&mut rng, true, true);
            assert!(verify(t.frame()).is_ok());
        }
        let mut sp = spec(Af::V6, 80);
        sp.src = IpRange::parse("3@[2001:db8::1]:5-3@[2001:db8:0:ff::1]:7", Af::V6).unwrap();
        let mut t = Template::new(&sp).unwrap();
        for _ in 0..1000 {
            t.next_addresses(&mut rng, false, false);
            assert!(verify(t.frame()).is_ok());
        }
        for _ in 0..1000 {
            t.next_addresses(&mut rng, true, true);
            assert!(verify(t.frame()).is_ok());
        }
    }

    #[test]
    fn write_payload_keeps_checksum() {
        let mut t = Template::new(&spec(Af::V4, 60)).unwrap();
        for v in [0u32, 1, 0xffff_ffff, 0x1234_5678] {
            assert!(t.write_payload(0, &v.to_be_bytes()));
            assert!(verify(t.frame()).is_ok());
        }
        assert!(t.write_payload(4, &[1, 2, 3]));
        assert!(verify(t.frame()).is_ok());
        assert!(!t.write_payload(1, &[1]));
        assert!(!t.write_payload(16, &[1, 2, 3]));
    }

    #[test]
    fn every_single_byte_corruption_is_caught() {
        let t = Template::new(&spec(Af::V4, 60)).unwrap();
        // Past the Ethernet header, every byte is covered by a check.
        for i in ETH_HLEN..60 {
            for x in [0x01u8, 0x80, 0xff] {
                let mut f = t.frame().to_vec();
                f[i] ^= x;
                assert!(verify(&f).is_err(), "byte {i} ^ {x:#x}");
            }
        }
    }

    #[test]
    fn parse_ranges() {
        let r = IpRange::parse("10.0.0.9:99-10.0.0.1", Af::V4).unwrap();
        assert_eq!(
            r.addrs,
            Addrs::V4 {
                start: 0x0a00_0001,
                end: 0x0a00_0009
            }
        );
        assert_eq!((r.port0, r.port1), (99, 99));
        assert!(r.is_range());
        let r = IpRange::parse("10.0.0.1:2000-10.0.0.1:1000", Af::V4).unwrap();
        assert_eq!((r.port0, r.port1), (1000, 2000));
        let r = IpRange::parse("10.0.0.1", Af::V4).unwrap();
        assert_eq!((r.port0, r.port1), (1234, 1234));
        assert!(!r.is_range());
        assert_eq!(r.to_string(), "10.0.0.1:1234 to 10.0.0.1:1234");
        let r = IpRange::parse("2@[fe80::1]:80", Af::V6).unwrap();
        assert!(matches!(r.addrs, Addrs::V6 { sgroup: 2, .. }));
        assert_eq!(r.port0, 80);
        let r = IpRange::parse("fe80::1", Af::V6).unwrap();
        assert!(matches!(r.addrs, Addrs::V6 { sgroup: 7, .. }));
        assert_eq!(r.port0, 1234);
        assert!(IpRange::parse("10.0.0.256", Af::V4).is_err());
        assert!(IpRange::parse("10.0.0.1:x", Af::V4).is_err());
        assert!(IpRange::parse("[fe80::1", Af::V6).is_err());
        assert_eq!(parse_port("0x10"), Ok(16));
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("ff:ff:ff:ff:ff:ff"), Some(BROADCAST));
        assert_eq!(
            parse_mac("0:1:a:Bb:cc:d"),
            Some([0, 1, 0xa, 0xbb, 0xcc, 0xd])
        );
        assert_eq!(parse_mac("00:11:22:33:44"), None);
        assert_eq!(parse_mac("00:11:22:33:44:55:66"), None);
        assert_eq!(parse_mac("00:11:22:33:44:5g"), None);
        assert_eq!(parse_mac("000:11:22:33:44:55"), None);
        assert_eq!(fmt_mac(&[0, 1, 0xa, 0xbb, 0xcc, 0xd]), "00:01:0a:bb:cc:0d");
    }

    #[test]
    fn swap_keeps_frame_valid() {
        for af in [Af::V4, Af::V6] {
            let t = Template::new(&spec(af, 100)).unwrap();
            let mut f = t.frame().to_vec();
            swap_addresses(&mut f);
            assert!(verify(&f).is_ok());
            assert_eq!(&f[0..6], &t.frame()[6..12]);
            swap_addresses(&mut f);
            assert_eq!(f, t.frame());
        }
    }
}
