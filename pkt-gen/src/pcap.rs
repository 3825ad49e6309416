//! Reading the frame `-P` sends: the first packet of a classic pcap file
//! (microsecond or nanosecond timestamps, either byte order, Ethernet).

use std::path::Path;

/// Link type of Ethernet frames.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// Why a pcap file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// Reading failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Not a pcap file we read.
    #[error("{0}: {1}")]
    Format(String, &'static str),
}

/// The first packet of the pcap file at `path` (its captured bytes).
pub fn first_packet(path: &Path) -> Result<Vec<u8>, PcapError> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|e| PcapError::Io(name.clone(), e))?;
    first_packet_of(&data).map_err(|what| PcapError::Format(name, what))
}

/// The first packet of a pcap file held in memory.
pub fn first_packet_of(data: &[u8]) -> Result<Vec<u8>, &'static str> {
    let hdr = data.get(..24).ok_or("shorter than a pcap header")?;
    let magic = [hdr[0], hdr[1], hdr[2], hdr[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        [0x0a, 0x0d, 0x0d, 0x0a] => return Err("pcapng is not supported, convert it to pcap"),
        _ => return Err("not a pcap file"),
    };
    let u32_at = |b: &[u8], at: usize| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    if u32_at(hdr, 20) & 0x0fff_ffff != LINKTYPE_ETHERNET {
        return Err("link type is not Ethernet");
    }
    let rec = data.get(24..40).ok_or("no packet in the file")?;
    let caplen = u32_at(rec, 8) as usize;
    if caplen == 0 || caplen > crate::frame::MAX_PKT_SIZE {
        return Err("first packet has a bad length");
    }
    data.get(40..40 + caplen)
        .map(<[u8]>::to_vec)
        .ok_or("first packet is truncated")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(le: bool, nano: bool, pkt: &[u8]) -> Vec<u8> {
        let w = |v: u32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let h = |v: u16| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let mut f = Vec::new();
        f.extend_from_slice(&w(if nano { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
        f.extend_from_slice(&h(2));
        f.extend_from_slice(&h(4));
        f.extend_from_slice(&w(0));
        f.extend_from_slice(&w(0));
        f.extend_from_slice(&w(65535));
        f.extend_from_slice(&w(1));
        f.extend_from_slice(&w(1));
        f.extend_from_slice(&w(2));
        f.extend_from_slice(&w(pkt.len() as u32));
        f.extend_from_slice(&w(pkt.len() as u32));
        f.extend_from_slice(pkt);
        f.extend_from_slice(&[0xee; 10]);
        f
    }

    #[test]
    fn reads_first_packet_any_order() {
        let pkt: Vec<u8> = (0..60).collect();
        for le in [true, false] {
            for nano in [true, false] {
                assert_eq!(first_packet_of(&file(le, nano, &pkt)).unwrap(), pkt);
            }
        }
    }

    #[test]
    fn rejects_bad_files() {
        let pkt = [1u8; 60];
        let good = file(true, false, &pkt);
        assert!(first_packet_of(&good[..30]).is_err());
        assert!(first_packet_of(&good[..60]).is_err());
        assert!(first_packet_of(b"\x0a\x0d\x0d\x0a rest of a pcapng header").is_err());
        let mut other = good.clone();
        other[20] = 113;
        assert!(first_packet_of(&other).is_err());
        assert!(first_packet_of(&[0u8; 40]).is_err());
    }
}
