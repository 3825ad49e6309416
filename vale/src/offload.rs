//! Software offloads for virtio-net frames: checksum completion and
//! segmentation (GSO), for a destination port that lacks an offload its
//! source used.
//!
//! Frames come from guests and are untrusted: every header is parsed from the
//! frame itself (the vnet header's `hdr_len` is ignored), every access is
//! bounds-checked, and anything malformed is an [`OffloadError`] saying what
//! was wrong. Nothing here panics or allocates beyond the caller's scratch
//! buffer.

use thiserror::Error;

/// `virtio_net_hdr_v1` (12 bytes, little endian). The 10-byte legacy form is
/// the same without `num_buffers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM`, `F_DATA_VALID`.
    pub flags: u8,
    /// `GSO_*`, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers (a hint; guests may get it wrong).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed region starts (from the Ethernet header).
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is.
    pub csum_offset: u16,
    /// Buffers merged into this frame (`VIRTIO_NET_F_MRG_RXBUF`).
    pub num_buffers: u16,
}

/// Not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// TCP over IPv4 segmentation.
pub const GSO_TCPV4: u8 = 1;
/// UDP fragmentation offload (IP fragments; not supported here).
pub const GSO_UDP: u8 = 3;
/// TCP over IPv6 segmentation.
pub const GSO_TCPV6: u8 = 4;
/// UDP segmentation (each segment its own datagram).
pub const GSO_UDP_L4: u8 = 5;
/// The TCP segments carry ECN (CWR must stay on the first only).
pub const GSO_ECN: u8 = 0x80;
/// The checksum from `csum_start` to the end is left to complete.
pub const F_NEEDS_CSUM: u8 = 1;
/// The checksums were already verified.
pub const F_DATA_VALID: u8 = 2;

/// Most segments one GSO frame may become.
pub const MAX_SEGMENTS: usize = 1024;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// Offset of the UDP checksum field in the UDP header.
const UDP_CSUM_OFFSET: u16 = 6;

impl VnetHdr {
    /// Length of the `virtio_net_hdr_v1` form.
    pub const LEN: usize = 12;

    /// Reads a header from the first 12 (or 10) bytes of `b`; bytes missing
    /// from a shorter `b` read as 0.
    pub fn parse(b: &[u8]) -> VnetHdr {
        let mut r = [0u8; Self::LEN];
        let n = b.len().min(Self::LEN);
        r[..n].copy_from_slice(&b[..n]);
        let w = |i: usize| u16::from_le_bytes([r[i], r[i + 1]]);
        VnetHdr {
            flags: r[0],
            gso_type: r[1],
            hdr_len: w(2),
            gso_size: w(4),
            csum_start: w(6),
            csum_offset: w(8),
            num_buffers: w(10),
        }
    }

    /// The 12-byte wire form.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Writes the first `min(out.len(), 12)` bytes of the wire form (10 for
    /// the legacy header).
    pub fn write(&self, out: &mut [u8]) {
        let b = self.to_bytes();
        let n = out.len().min(Self::LEN);
        out[..n].copy_from_slice(&b[..n]);
    }

    /// Whether the frame carries a partial checksum to complete.
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// The GSO type without the ECN bit.
    pub fn gso(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    /// Whether the ECN bit is set.
    pub fn ecn(&self) -> bool {
        self.gso_type & GSO_ECN != 0
    }
}

/// What was wrong with a frame handed to [`complete_csum`] or [`segment`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OffloadError {
    /// The checksum field lies (partly) outside the frame.
    #[error("csum_start {start} + csum_offset {offset} past frame length {len}")]
    CsumOutOfFrame {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Frame length.
        len: usize,
    },
    /// The frame ends inside a header.
    #[error("frame length {len} too short for {what} (needs {need} bytes)")]
    Truncated {
        /// The header.
        what: &'static str,
        /// Bytes the frame would need to hold it.
        need: usize,
        /// Frame length.
        len: usize,
    },
    /// A GSO type this module cannot segment (UFO, or unknown).
    #[error("GSO type {0} unsupported")]
    Unsupported(u8),
    /// A GSO frame with `gso_size` 0.
    #[error("gso_size 0")]
    ZeroGsoSize,
    /// The ethertype (after at most one VLAN tag) does not fit the GSO type.
    #[error("ethertype {ethertype:#06x} does not fit GSO type {gso}")]
    EtherType {
        /// The ethertype found.
        ethertype: u16,
        /// The GSO type.
        gso: u8,
    },
    /// The IP header's version does not fit the ethertype.
    #[error("IP version {found}, expected {expected}")]
    IpVersion {
        /// Version the ethertype calls for.
        expected: u8,
        /// Version in the header.
        found: u8,
    },
    /// IPv4 IHL below 5.
    #[error("IPv4 header length {0} below 20")]
    Ipv4HeaderLen(usize),
    /// A GSO frame that is an IPv4 fragment.
    #[error("IPv4 fragment (flags/offset {0:#06x}) cannot be segmented")]
    Ipv4Fragment(u16),
    /// The L4 protocol (IPv4 protocol, IPv6 next header) does not fit the
    /// GSO type; IPv6 extension headers are not supported.
    #[error("L4 protocol {proto} does not fit GSO type {gso}")]
    Protocol {
        /// IPv4 protocol or IPv6 next header.
        proto: u8,
        /// The GSO type.
        gso: u8,
    },
    /// TCP data offset below 5.
    #[error("TCP header length {0} below 20")]
    TcpHeaderLen(usize),
    /// The frame would become more than [`MAX_SEGMENTS`] segments.
    #[error("{payload} payload bytes in segments of {gso_size} make {segments} segments, over {max}", max = MAX_SEGMENTS)]
    TooManySegments {
        /// Payload bytes after the headers.
        payload: usize,
        /// `gso_size`.
        gso_size: u16,
        /// Segments it would take.
        segments: usize,
    },
    /// A segment would not fit the IP (or UDP) length field.
    #[error("segment of {len} IP payload bytes over 65535")]
    SegmentTooLong {
        /// Bytes the length field would have to count.
        len: usize,
    },
}

/// Adds `data` to a ones-complement sum, as 16-bit big-endian words from
/// `data[0]` (a final odd byte is padded with zero). Chain calls only on
/// even-length pieces: an odd-length piece shifts the following words, which
/// the caller must handle. The result is unfolded; see [`csum_fold`].
pub fn csum_add(sum: u64, data: &[u8]) -> u64 {
    // 2^32 ≡ 1 (mod 2^16 - 1), so carries out of 32 bits may be folded in
    // at any time. Starting below 2^33 and adding under 2^33 per 8 bytes,
    // the sum cannot overflow before 16 GiB of data.
    let mut s = (sum & 0xffff_ffff) + (sum >> 32);
    let mut words = data.chunks_exact(8);
    for c in &mut words {
        if let Ok(w) = <[u8; 8]>::try_from(c) {
            let v = u64::from_be_bytes(w);
            s += (v >> 32) + (v & 0xffff_ffff);
        }
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for p in &mut pairs {
        s += u16::from_be_bytes([p[0], p[1]]) as u64;
    }
    if let [b] = pairs.remainder() {
        s += (*b as u64) << 8;
    }
    s
}

/// Folds a ones-complement sum to 16 bits (not complemented: a checksum
/// field holds `!csum_fold(..)`, and a region with a correct checksum folds
/// to 0xffff).
pub fn csum_fold(sum: u64) -> u16 {
    let mut s = sum;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// `frame[at..at + n]`, or why not.
fn need<'a>(
    frame: &'a [u8],
    what: &'static str,
    at: usize,
    n: usize,
) -> Result<&'a [u8], OffloadError> {
    let end = at.saturating_add(n);
    frame.get(at..end).ok_or(OffloadError::Truncated {
        what,
        need: end,
        len: frame.len(),
    })
}

/// Fills in the partial checksum a `F_NEEDS_CSUM` frame carries: the
/// ones-complement sum from `csum_start` to the end of `frame` (Ethernet
/// header onward, no vnet header), folded, complemented and stored
/// big-endian at `csum_start + csum_offset` (the field already holds the
/// pseudo-header sum, as Linux leaves it). A result of 0 in a UDP checksum
/// field (`csum_offset` 6) becomes 0xffff. Without `F_NEEDS_CSUM` the frame
/// is left alone.
pub fn complete_csum(hdr: &VnetHdr, frame: &mut [u8]) -> Result<(), OffloadError> {
    if !hdr.needs_csum() {
        return Ok(());
    }
    let start = hdr.csum_start as usize;
    let field = start + hdr.csum_offset as usize;
    if field + 2 > frame.len() {
        return Err(OffloadError::CsumOutOfFrame {
            start: hdr.csum_start,
            offset: hdr.csum_offset,
            len: frame.len(),
        });
    }
    let mut c = !csum_fold(csum_add(0, &frame[start..]));
    if c == 0 && hdr.csum_offset == UDP_CSUM_OFFSET {
        c = 0xffff;
    }
    put16(frame, field, c);
    Ok(())
}

/// Where the headers of a GSO frame are, as parsed from the frame.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Offset of the IP header.
    l3: usize,
    /// IPv4 header length, or 0 for IPv6.
    ihl: usize,
    /// Offset of the TCP/UDP header.
    l4: usize,
    /// Offset of the payload (end of the headers).
    payload: usize,
    tcp: bool,
}

fn parse_layout(gso: u8, frame: &[u8]) -> Result<Layout, OffloadError> {
    let eth = need(frame, "Ethernet header", 0, 14)?;
    let mut ethertype = be16(eth, 12);
    let mut l3 = 14;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag = need(frame, "VLAN tag", 14, 4)?;
        ethertype = be16(tag, 2);
        l3 = 18;
    }
    let (ihl, proto) = match (ethertype, gso) {
        (ETH_P_IPV4, GSO_TCPV4 | GSO_UDP_L4) => {
            let ip = need(frame, "IPv4 header", l3, 20)?;
            if ip[0] >> 4 != 4 {
                return Err(OffloadError::IpVersion {
                    expected: 4,
                    found: ip[0] >> 4,
                });
            }
            let ihl = (ip[0] & 0xf) as usize * 4;
            if ihl < 20 {
                return Err(OffloadError::Ipv4HeaderLen(ihl));
            }
            let frag = be16(ip, 6);
            if frag & 0x3fff != 0 {
                return Err(OffloadError::Ipv4Fragment(frag));
            }
            let proto = ip[9];
            need(frame, "IPv4 options", l3, ihl)?;
            (ihl, proto)
        }
        (ETH_P_IPV6, GSO_TCPV6 | GSO_UDP_L4) => {
            let ip = need(frame, "IPv6 header", l3, 40)?;
            if ip[0] >> 4 != 6 {
                return Err(OffloadError::IpVersion {
                    expected: 6,
                    found: ip[0] >> 4,
                });
            }
            (0, ip[6])
        }
        _ => return Err(OffloadError::EtherType { ethertype, gso }),
    };
    let l4 = l3 + if ihl == 0 { 40 } else { ihl };
    let tcp = gso != GSO_UDP_L4;
    let want = if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
    if proto != want {
        return Err(OffloadError::Protocol { proto, gso });
    }
    let l4_len = if tcp {
        let th = need(frame, "TCP header", l4, 20)?;
        let doff = (th[12] >> 4) as usize * 4;
        if doff < 20 {
            return Err(OffloadError::TcpHeaderLen(doff));
        }
        need(frame, "TCP options", l4, doff)?;
        doff
    } else {
        need(frame, "UDP header", l4, 8)?;
        8
    };
    Ok(Layout {
        l3,
        ihl,
        l4,
        payload: l4 + l4_len,
        tcp,
    })
}

/// Software GSO: cuts a GSO frame (`frame` = Ethernet header onward) into
/// wire-sized frames, each handed to `emit` complete: IPv4 total length, id
/// incremented per segment and header checksum; IPv6 payload length; TCP
/// sequence numbers advanced, FIN/PSH only on the last segment, CWR only on
/// the first; UDP length; TCP/UDP checksums computed in full over
/// pseudo-header and L4 (whatever the frame's checksum fields held).
/// `scratch` holds each segment in turn and is reused between calls.
/// Returns the number of segments.
///
/// Supports `GSO_TCPV4`, `GSO_TCPV6` (with or without `GSO_ECN`) and
/// `GSO_UDP_L4`; `GSO_UDP` (UFO) and unknown types are
/// [`OffloadError::Unsupported`]. `GSO_NONE` emits the frame once, its
/// partial checksum completed if `F_NEEDS_CSUM`. At most one 802.1Q/802.1ad
/// tag; IPv4 options; IPv6 without extension headers. Headers are parsed
/// from the frame (`hdr_len` is ignored), the payload is everything after
/// them (IP length fields are ignored too). A frame whose payload fits one
/// segment is emitted once, lengths and checksums completed. On error
/// nothing has been emitted.
pub fn segment(
    hdr: &VnetHdr,
    frame: &[u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let gso = hdr.gso();
    match gso {
        GSO_NONE => {
            scratch.clear();
            scratch.extend_from_slice(frame);
            complete_csum(hdr, scratch)?;
            emit(scratch);
            return Ok(1);
        }
        GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4 => {}
        other => return Err(OffloadError::Unsupported(other)),
    }
    if hdr.gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    let lay = parse_layout(gso, frame)?;
    let (headers, payload) = frame.split_at(lay.payload);
    let mss = hdr.gso_size as usize;
    let nseg = payload.len().div_ceil(mss).max(1);
    if nseg > MAX_SEGMENTS {
        return Err(OffloadError::TooManySegments {
            payload: payload.len(),
            gso_size: hdr.gso_size,
            segments: nseg,
        });
    }
    // The largest segment's length fields: IPv4 total length counts the IP
    // header, IPv6 payload length and UDP length do not.
    let ip_counted = lay.payload - lay.l3 - if lay.ihl == 0 { 40 } else { 0 };
    let longest = ip_counted + payload.len().min(mss);
    if longest > 0xffff {
        return Err(OffloadError::SegmentTooLong { len: longest });
    }

    let (l3, l4) = (lay.l3, lay.l4);
    // Source and destination addresses, the part of the pseudo-header every
    // segment shares.
    let addrs = if lay.ihl == 0 {
        &headers[l3 + 8..l3 + 40]
    } else {
        &headers[l3 + 12..l3 + 20]
    };
    let proto = if lay.tcp { IPPROTO_TCP } else { IPPROTO_UDP };
    let pseudo = csum_add(0, addrs) + proto as u64;
    let ip_id = be16(headers, l3 + 4);
    let seq = u32::from_be_bytes([
        headers[l4 + 4],
        headers[l4 + 5],
        headers[l4 + 6],
        headers[l4 + 7],
    ]);

    for i in 0..nseg {
        let from = (i * mss).min(payload.len());
        let to = (from + mss).min(payload.len());
        scratch.clear();
        scratch.extend_from_slice(headers);
        scratch.extend_from_slice(&payload[from..to]);
        let seg = scratch.as_mut_slice();
        let len = seg.len();
        let l4_len = len - l4;
        if lay.ihl == 0 {
            put16(seg, l3 + 4, (len - l3 - 40) as u16);
        } else {
            put16(seg, l3 + 2, (len - l3) as u16);
            put16(seg, l3 + 4, ip_id.wrapping_add(i as u16));
            put16(seg, l3 + 10, 0);
            let c = !csum_fold(csum_add(0, &seg[l3..l3 + lay.ihl]));
            put16(seg, l3 + 10, c);
        }
        let sum = pseudo + l4_len as u64;
        if lay.tcp {
            let s = seq.wrapping_add(from as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&s.to_be_bytes());
            if i + 1 < nseg {
                seg[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                seg[l4 + 13] &= !TCP_CWR;
            }
            put16(seg, l4 + 16, 0);
            let c = !csum_fold(csum_add(sum, &seg[l4..]));
            put16(seg, l4 + 16, c);
        } else {
            put16(seg, l4 + 4, l4_len as u16);
            put16(seg, l4 + 6, 0);
            let c = !csum_fold(csum_add(sum, &seg[l4..]));
            put16(seg, l4 + 6, if c == 0 { 0xffff } else { c });
        }
        emit(seg);
    }
    Ok(nseg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fuzz_offload, inet_checksum, verify_segment};

    const ACK: u8 = 0x10;

    /// What test frame to build.
    #[derive(Debug, Clone, Copy)]
    struct Spec {
        v6: bool,
        udp: bool,
        /// Tag protocol identifier and TCI of one VLAN tag.
        vlan: Option<(u16, u16)>,
        ip_opts: usize,
        tcp_opts: usize,
        flags: u8,
        seq: u32,
        id: u16,
    }

    const TCP4: Spec = Spec {
        v6: false,
        udp: false,
        vlan: None,
        ip_opts: 0,
        tcp_opts: 12,
        flags: ACK | TCP_PSH | TCP_FIN,
        seq: 0xffff_f000,
        id: 0xfff0,
    };

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// A frame after `s` carrying `pl`, its L4 checksum field holding the
    /// pseudo-header sum the way Linux leaves it for `F_NEEDS_CSUM`, and the
    /// matching vnet header (`gso`, `mss`). Also returns the L3 and L4
    /// offsets.
    fn build(s: Spec, pl: &[u8], gso_type: u8, mss: u16) -> (VnetHdr, Vec<u8>, usize, usize) {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if let Some((tpid, tci)) = s.vlan {
            f.extend(tpid.to_be_bytes());
            f.extend(tci.to_be_bytes());
        }
        f.extend(if s.v6 { ETH_P_IPV6 } else { ETH_P_IPV4 }.to_be_bytes());
        let l3 = f.len();
        let proto = if s.udp { IPPROTO_UDP } else { IPPROTO_TCP };
        let l4_len = if s.udp { 8 } else { 20 + s.tcp_opts } + pl.len();
        let len16 = |n: usize| if n > 0xffff { 0 } else { n as u16 };
        if s.v6 {
            f.extend([0x60, 0, 0, 0]);
            f.extend(len16(l4_len).to_be_bytes());
            f.extend([proto, 64]);
            f.extend((0..16).map(|i| 0x20 + i));
            f.extend((0..16).map(|i| 0xfe - i));
        } else {
            let ihl = 20 + s.ip_opts;
            f.extend([0x40 | (ihl / 4) as u8, 0]);
            f.extend(len16(ihl + l4_len).to_be_bytes());
            f.extend(s.id.to_be_bytes());
            f.extend([0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            f.extend(std::iter::repeat_n(1, s.ip_opts));
            let c = inet_checksum(&[&f[l3..]]);
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let l4 = f.len();
        f.extend([0x04, 0xd2, 0x16, 0x2e]);
        if s.udp {
            f.extend(len16(l4_len).to_be_bytes());
            f.extend([0, 0]);
        } else {
            f.extend(s.seq.to_be_bytes());
            f.extend([1, 2, 3, 4, (((20 + s.tcp_opts) / 4) << 4) as u8, s.flags]);
            f.extend([0xff, 0xff, 0, 0, 0, 0]);
            let mut opts = vec![1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9];
            opts.resize(s.tcp_opts, 1);
            f.extend(opts);
        }
        f.extend_from_slice(pl);
        // Pseudo-header sum, folded, not complemented.
        let (ph, csum_offset) = pseudo(&f, l3, l4, s.v6, proto);
        let field = l4 + csum_offset as usize;
        f[field..field + 2].copy_from_slice(&(!inet_checksum(&[&ph])).to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: (l4_len - pl.len() + l4) as u16,
            gso_size: mss,
            csum_start: l4 as u16,
            csum_offset,
            num_buffers: 0,
        };
        (hdr, f, l3, l4)
    }

    /// The pseudo-header of `f` and the checksum field's offset in L4.
    fn pseudo(f: &[u8], l3: usize, l4: usize, v6: bool, proto: u8) -> (Vec<u8>, u16) {
        let l4_len = f.len() - l4;
        let mut ph = if v6 {
            f[l3 + 8..l3 + 40].to_vec()
        } else {
            f[l3 + 12..l3 + 20].to_vec()
        };
        if v6 {
            ph.extend((l4_len as u32).to_be_bytes());
            ph.extend([0, 0, 0, proto]);
        } else {
            ph.extend([0, proto]);
            ph.extend((l4_len as u16).to_be_bytes());
        }
        (ph, if proto == IPPROTO_UDP { 6 } else { 16 })
    }

    fn run(hdr: &VnetHdr, f: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut segs = Vec::new();
        let mut scratch = Vec::new();
        let n = segment(hdr, f, &mut scratch, |s| segs.push(s.to_vec()))?;
        assert_eq!(n, segs.len());
        Ok(segs)
    }

    /// Segments the frame `s` describes with `pl` and checks everything.
    fn check_gso(s: Spec, pl: &[u8], gso_type: u8, mss: u16) {
        let (hdr, f, l3, l4) = build(s, pl, gso_type, mss);
        let hdrs = l4 + if s.udp { 8 } else { 20 + s.tcp_opts };
        let segs = run(&hdr, &f).unwrap();
        let mss = mss as usize;
        assert_eq!(segs.len(), pl.len().div_ceil(mss).max(1));
        let mut joined = Vec::new();
        let mut next_seq = s.seq;
        let last = segs.len() - 1;
        for (i, seg) in segs.iter().enumerate() {
            verify_segment(seg).unwrap_or_else(|e| panic!("segment {i}: {e}"));
            let body = &seg[hdrs..];
            assert_eq!(
                body.len(),
                if i < last { mss } else { pl.len() - last * mss }
            );
            joined.extend_from_slice(body);
            // Ethernet and VLAN unchanged.
            assert_eq!(seg[..l3], f[..l3]);
            if !s.v6 {
                let id = u16::from_be_bytes([seg[l3 + 4], seg[l3 + 5]]);
                assert_eq!(id, s.id.wrapping_add(i as u16));
                assert_eq!(seg[l3 + 20..l4], f[l3 + 20..l4], "IPv4 options");
            }
            if !s.udp {
                let seq = u32::from_be_bytes(seg[l4 + 4..l4 + 8].try_into().unwrap());
                assert_eq!(seq, next_seq, "segment {i}");
                next_seq = seq.wrapping_add(body.len() as u32);
                let mut want = s.flags;
                if i < last {
                    want &= !(TCP_FIN | TCP_PSH);
                }
                if i > 0 {
                    want &= !TCP_CWR;
                }
                assert_eq!(seg[l4 + 13], want, "segment {i} flags");
                assert_eq!(seg[l4 + 20..hdrs], f[l4 + 20..hdrs], "TCP options");
            }
        }
        assert_eq!(joined, pl);
    }

    #[test]
    fn tcp4_64k_segments_verify() {
        let pl = bytes(65535 - 20 - 32, 1);
        check_gso(TCP4, &pl, GSO_TCPV4, 1448);
        // With ECN: CWR on the first segment only.
        let ecn = Spec {
            flags: TCP4.flags | TCP_CWR,
            ..TCP4
        };
        check_gso(ecn, &pl, GSO_TCPV4 | GSO_ECN, 1448);
    }

    #[test]
    fn tcp6_64k_segments_verify() {
        let s = Spec { v6: true, ..TCP4 };
        let pl = bytes(65535 - 32, 2);
        check_gso(s, &pl, GSO_TCPV6, 1448);
        let s = Spec {
            flags: s.flags | TCP_CWR,
            tcp_opts: 0,
            ..s
        };
        check_gso(s, &pl[..40001], GSO_TCPV6 | GSO_ECN, 1428);
    }

    #[test]
    fn udp_l4_segments_are_datagrams() {
        for v6 in [false, true] {
            let s = Spec {
                v6,
                udp: true,
                ..TCP4
            };
            check_gso(s, &bytes(20001, 3), GSO_UDP_L4, 1472);
            check_gso(s, &bytes(1472 * 3, 4), GSO_UDP_L4, 1472);
        }
    }

    #[test]
    fn vlan_tagged_and_ip_options() {
        let pl = bytes(9000, 5);
        for tpid in [ETH_P_8021Q, ETH_P_8021AD] {
            let s = Spec {
                vlan: Some((tpid, 0x2064)),
                ip_opts: 8,
                ..TCP4
            };
            check_gso(s, &pl, GSO_TCPV4, 1400);
            check_gso(Spec { v6: true, ..s }, &pl, GSO_TCPV6, 1400);
            check_gso(Spec { udp: true, ..s }, &pl, GSO_UDP_L4, 1400);
        }
    }

    #[test]
    fn one_segment_is_completed_and_keeps_flags() {
        let s = Spec {
            flags: TCP4.flags | TCP_CWR,
            ..TCP4
        };
        for (pl, mss) in [
            (bytes(1000, 6), 1448),
            (bytes(1448, 7), 1448),
            (vec![], 1448),
        ] {
            check_gso(s, &pl, GSO_TCPV4 | GSO_ECN, mss);
            let (hdr, f, _, _) = build(s, &pl, GSO_TCPV4, mss);
            let segs = run(&hdr, &f).unwrap();
            assert_eq!(segs.len(), 1);
            assert_eq!(segs[0].len(), f.len());
        }
        // GSO_NONE: emitted once, the partial checksum completed.
        let (mut hdr, f, _, _) = build(TCP4, &bytes(999, 8), GSO_NONE, 0);
        let segs = run(&hdr, &f).unwrap();
        verify_segment(&segs[0]).unwrap();
        hdr.flags = 0;
        assert_eq!(run(&hdr, &f).unwrap(), vec![f]);
    }

    #[test]
    fn complete_csum_matches_from_scratch() {
        for (v6, udp) in [(false, false), (false, true), (true, false), (true, true)] {
            for n in [0, 1, 2, 3, 7, 8, 9, 1001, 1500] {
                let s = Spec { v6, udp, ..TCP4 };
                let pl = bytes(n, n as u64 + 9);
                let (hdr, mut f, l3, l4) = build(s, &pl, GSO_NONE, 0);
                let proto = if udp { IPPROTO_UDP } else { IPPROTO_TCP };
                let (ph, off) = pseudo(&f, l3, l4, v6, proto);
                let field = l4 + off as usize;
                let mut zeroed = f.clone();
                zeroed[field..field + 2].fill(0);
                let mut want = inet_checksum(&[&ph, &zeroed[l4..]]);
                if udp && want == 0 {
                    want = 0xffff;
                }
                complete_csum(&hdr, &mut f).unwrap();
                assert_eq!(u16::from_be_bytes([f[field], f[field + 1]]), want);
                zeroed[field..field + 2].copy_from_slice(&want.to_be_bytes());
                assert_eq!(f, zeroed);
                verify_segment(&f).unwrap();
            }
        }
    }

    #[test]
    fn complete_csum_udp_zero_becomes_ffff() {
        // Pseudo-header sum in the field; choose payload so the checksum is 0.
        let s = Spec { udp: true, ..TCP4 };
        let (hdr, f, l3, l4) = build(s, &[0, 0], GSO_NONE, 0);
        let (ph, _) = pseudo(&f, l3, l4, false, IPPROTO_UDP);
        let mut g = f.clone();
        g[l4 + 6..l4 + 8].fill(0);
        // Make the whole sum 0xffff: the payload word is the complement of
        // the sum of everything else.
        let rest = !inet_checksum(&[&ph, &g[l4..]]);
        let len = g.len();
        g[len - 2..].copy_from_slice(&(!rest).to_be_bytes());
        g[l4 + 6..l4 + 8].copy_from_slice(&f[l4 + 6..l4 + 8]);
        complete_csum(&hdr, &mut g).unwrap();
        assert_eq!(g[l4 + 6..l4 + 8], [0xff, 0xff]);
        verify_segment(&g).unwrap();
    }

    #[test]
    fn csum_add_matches_naive() {
        let data = bytes(300, 10);
        for len in 0..data.len() {
            for start in [0, 1, 0xffff_ffff_ffff, u64::MAX] {
                let d = &data[..len];
                let got = !csum_fold(csum_add(start, d));
                let s = csum_fold(start).to_be_bytes();
                assert_eq!(got, inet_checksum(&[&s, d]), "len {len} start {start:#x}");
                // Chained over even pieces.
                let cut = (len / 3) & !1;
                let chained = csum_add(csum_add(start, &d[..cut]), &d[cut..]);
                assert_eq!(!csum_fold(chained), got);
            }
        }
        assert_eq!(csum_fold(0), 0);
        assert_eq!(csum_fold(0x1_fffe), 0xffff);
        assert_eq!(csum_fold(u64::MAX), 0xffff);
    }

    #[test]
    fn vnet_hdr_round_trips() {
        let h = VnetHdr {
            flags: 1,
            gso_type: GSO_TCPV6 | GSO_ECN,
            hdr_len: 0x1234,
            gso_size: 1448,
            csum_start: 54,
            csum_offset: 16,
            num_buffers: 3,
        };
        let mut b = [0u8; 12];
        h.write(&mut b);
        assert_eq!(b, [1, 0x84, 0x34, 0x12, 0xa8, 5, 54, 0, 16, 0, 3, 0]);
        assert_eq!(VnetHdr::parse(&b), h);
        assert_eq!(
            VnetHdr::parse(&b[..10]),
            VnetHdr {
                num_buffers: 0,
                ..h
            }
        );
        let mut legacy = [0xaa; 10];
        h.write(&mut legacy);
        assert_eq!(legacy, b[..10]);
        assert_eq!(
            VnetHdr::parse(&b[..3]),
            VnetHdr {
                flags: 1,
                gso_type: 0x84,
                hdr_len: 0x34,
                ..Default::default()
            }
        );
        assert_eq!(VnetHdr::parse(&[]), VnetHdr::default());
        assert!(h.needs_csum() && h.ecn() && h.gso() == GSO_TCPV6);
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 70,
            csum_offset: 16,
            ..Default::default()
        };
        let mut f = vec![0u8; 80];
        let e = complete_csum(&hdr, &mut f).unwrap_err();
        assert_eq!(
            e.to_string(),
            "csum_start 70 + csum_offset 16 past frame length 80"
        );
        assert!(f.iter().all(|&b| b == 0));
        let e = complete_csum(
            &VnetHdr {
                csum_start: 0xffff,
                csum_offset: 0xffff,
                ..hdr
            },
            &mut f,
        );
        assert!(matches!(e, Err(OffloadError::CsumOutOfFrame { .. })));

        let pl = bytes(3000, 11);
        let (h4, f4, l3, l4) = build(TCP4, &pl, GSO_TCPV4, 1448);
        let err = |h: VnetHdr, f: &[u8]| run(&h, f).unwrap_err();
        assert_eq!(
            err(
                VnetHdr {
                    gso_type: GSO_UDP,
                    ..h4
                },
                &f4
            ),
            OffloadError::Unsupported(3)
        );
        assert_eq!(
            err(VnetHdr { gso_type: 2, ..h4 }, &f4),
            OffloadError::Unsupported(2)
        );
        assert_eq!(
            err(VnetHdr { gso_size: 0, ..h4 }, &f4),
            OffloadError::ZeroGsoSize
        );
        assert_eq!(
            err(VnetHdr { gso_size: 2, ..h4 }, &f4),
            OffloadError::TooManySegments {
                payload: 3000,
                gso_size: 2,
                segments: 1500
            }
        );
        assert_eq!(
            run(&VnetHdr { gso_size: 3, ..h4 }, &f4).unwrap().len(),
            1000
        );
        assert_eq!(
            err(
                VnetHdr {
                    gso_type: GSO_TCPV6,
                    ..h4
                },
                &f4
            ),
            OffloadError::EtherType {
                ethertype: 0x0800,
                gso: GSO_TCPV6
            }
        );
        assert_eq!(
            err(h4, &f4[..l4 + 10]),
            OffloadError::Truncated {
                what: "TCP header",
                need: l4 + 20,
                len: l4 + 10
            }
        );
        assert_eq!(
            err(h4, &f4[..l4 + 30]).to_string(),
            format!(
                "frame length {} too short for TCP options (needs {} bytes)",
                l4 + 30,
                l4 + 32
            )
        );
        let mut g = f4.clone();
        g[l3 + 6] = 0x20; // MF
        assert_eq!(err(h4, &g), OffloadError::Ipv4Fragment(0x2000));
        let mut g = f4.clone();
        g[l3] = 0x44;
        assert_eq!(err(h4, &g), OffloadError::Ipv4HeaderLen(16));
        g[l3] = 0x65;
        assert_eq!(
            err(h4, &g),
            OffloadError::IpVersion {
                expected: 4,
                found: 6
            }
        );
        let mut g = f4.clone();
        g[l4 + 12] = 0x40;
        assert_eq!(err(h4, &g), OffloadError::TcpHeaderLen(16));
        assert_eq!(
            err(
                VnetHdr {
                    gso_type: GSO_UDP_L4,
                    ..h4
                },
                &f4
            ),
            OffloadError::Protocol {
                proto: 6,
                gso: GSO_UDP_L4
            }
        );
        // IPv6 with a hop-by-hop extension header.
        let s6 = Spec { v6: true, ..TCP4 };
        let (h6, mut f6, l3, _) = build(s6, &pl, GSO_TCPV6, 1448);
        f6[l3 + 6] = 0;
        assert_eq!(
            err(h6, &f6),
            OffloadError::Protocol {
                proto: 0,
                gso: GSO_TCPV6
            }
        );
        // Two VLAN tags.
        let s = Spec {
            vlan: Some((ETH_P_8021AD, 5)),
            ..TCP4
        };
        let (h, mut f, _, _) = build(s, &pl, GSO_TCPV4, 1448);
        f.splice(16..16, [0x81, 0x00, 0, 7]);
        assert_eq!(
            err(h, &f),
            OffloadError::EtherType {
                ethertype: 0x8100,
                gso: GSO_TCPV4
            }
        );
        assert_eq!(
            err(h, &f[..16]),
            OffloadError::Truncated {
                what: "VLAN tag",
                need: 18,
                len: 16
            }
        );
        // Segments whose length would overflow the IP length field.
        let big = bytes(70000, 12);
        let (h, f, _, _) = build(TCP4, &big, GSO_TCPV4, 65535);
        assert_eq!(err(h, &f), OffloadError::SegmentTooLong { len: 52 + 65535 });
        let (h, f, _, _) = build(s6, &big, GSO_TCPV6, 65503);
        assert_eq!(run(&h, &f).unwrap().len(), 2);
    }

    /// Mutated and truncated versions of valid frames, and random bytes,
    /// through both functions (via the fuzz body, which also verifies every
    /// segment emitted): Ok or Err, never a panic.
    #[test]
    fn hostile_input_never_panics() {
        let mut bases = Vec::new();
        for (i, (s, gso)) in [
            (TCP4, GSO_TCPV4),
            (Spec { v6: true, ..TCP4 }, GSO_TCPV6 | GSO_ECN),
            (Spec { udp: true, ..TCP4 }, GSO_UDP_L4),
            (
                Spec {
                    v6: true,
                    udp: true,
                    ..TCP4
                },
                GSO_UDP_L4,
            ),
            (
                Spec {
                    vlan: Some((ETH_P_8021Q, 1)),
                    ip_opts: 12,
                    ..TCP4
                },
                GSO_TCPV4,
            ),
            (Spec { udp: true, ..TCP4 }, GSO_NONE),
        ]
        .into_iter()
        .enumerate()
        {
            let (h, f, _, _) = build(s, &bytes(2000 + i, i as u64), gso, 536);
            bases.push((h, f));
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut data = Vec::new();
        for _ in 0..3000 {
            let (h, f) = &bases[rnd() as usize % bases.len()];
            let mut h = h.to_bytes();
            let mut f = f.clone();
            let r = rnd();
            if r & 1 != 0 {
                h[1 + (r >> 8) as usize % 9] = (r >> 16) as u8;
            }
            if r & 2 != 0 {
                let sizes = [0u16, 1, 2, 7, 64, 536, 1448, 65535, (r >> 32) as u16];
                h[4..6].copy_from_slice(&sizes[(r >> 24) as usize % sizes.len()].to_le_bytes());
            }
            for _ in 0..(r >> 40) % 4 {
                let k = rnd();
                let i = k as usize % 90;
                f[i] = (k >> 32) as u8;
            }
            if r & 4 != 0 {
                f.truncate((r >> 44) as usize % (f.len() + 1));
            }
            data.clear();
            data.extend_from_slice(&h);
            data.extend_from_slice(&f);
            fuzz_offload(&data);
        }
        for len in 0..300 {
            let mut d = bytes(len, rnd());
            if len > 1 {
                d[1] = [GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_NONE][len % 4];
            }
            fuzz_offload(&d);
        }
    }

    /// Writes the seed corpus of the `offload` fuzz target:
    /// `cargo test -p vale --lib offload::tests::write_fuzz_corpus -- --ignored`.
    #[test]
    #[ignore = "writes the seed corpus"]
    fn write_fuzz_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/offload");
        std::fs::create_dir_all(&dir).unwrap();
        let seeds = [
            ("tcp4-gso", TCP4, GSO_TCPV4, 1000, 0),
            (
                "tcp6-gso-ecn",
                Spec {
                    v6: true,
                    flags: TCP4.flags | TCP_CWR,
                    ..TCP4
                },
                GSO_TCPV6 | GSO_ECN,
                900,
                0,
            ),
            (
                "udp6-l4",
                Spec {
                    v6: true,
                    udp: true,
                    ..TCP4
                },
                GSO_UDP_L4,
                700,
                0,
            ),
            (
                "vlan-udp4-l4-ipopts",
                Spec {
                    udp: true,
                    vlan: Some((ETH_P_8021Q, 7)),
                    ip_opts: 4,
                    ..TCP4
                },
                GSO_UDP_L4,
                500,
                0,
            ),
            (
                "needs-csum-udp4",
                Spec { udp: true, ..TCP4 },
                GSO_NONE,
                301,
                0,
            ),
            ("truncated-tcp4", TCP4, GSO_TCPV4, 1000, 60),
        ];
        for (name, s, gso, n, cut) in seeds {
            let (h, mut f, _, _) = build(s, &bytes(n, n as u64), gso, 400);
            if cut > 0 {
                f.truncate(cut);
            }
            let mut data = h.to_bytes().to_vec();
            data.extend_from_slice(&f);
            fuzz_offload(&data);
            std::fs::write(dir.join(name), data).unwrap();
        }
    }
}
