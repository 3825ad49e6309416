//! Which flow a frame belongs to, for spreading frames over a port's
//! rings or queues (as a multiqueue NIC's RSS does): one hash for every
//! port kind, so a flow stays in order on one ring whichever port it
//! reaches.

use crate::frag::Frag;

/// Hash of a frame's flow: the MAC pair and, for IPv4/IPv6, the address
/// pair and the L4 ports, read once into a local buffer.
pub fn flow_hash(frags: &[Frag], skip: usize) -> usize {
    let mut b = [0u8; 58];
    let mut at = 0;
    let mut off = skip;
    for f in frags {
        if at == b.len() {
            break;
        }
        let n = f.read(off, &mut b[at..]);
        off = off.saturating_sub(f.len() as usize);
        at += n;
    }
    let b = &b[..at];
    let mut key: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |s: &[u8]| {
        for &x in s {
            key = (key ^ x as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    let sym = |a: &[u8], c: &[u8], mix: &mut dyn FnMut(&[u8])| {
        // Symmetric: both directions of a flow hash alike.
        if a <= c {
            mix(a);
            mix(c);
        } else {
            mix(c);
            mix(a);
        }
    };
    if b.len() >= 14 {
        sym(&b[0..6], &b[6..12], &mut mix);
        let et = u16::from_be_bytes([b[12], b[13]]);
        // What follows the EtherType is hashed only if it looks like the
        // header it claims to be: otherwise a flow of malformed frames
        // would spread over the rings by their garbage.
        if et == 0x0800 && b.len() >= 14 + 20 && b[14] >> 4 == 4 && b[14] & 0xf >= 5 {
            let ihl = (b[14] & 0xf) as usize * 4;
            sym(&b[26..30], &b[30..34], &mut mix);
            // Ports only in a whole datagram: a later fragment carries
            // none, and every fragment (the first too) must go to one
            // ring, in order.
            let frag = u16::from_be_bytes([b[20], b[21]]) & 0x3fff != 0;
            if !frag && (b[14 + 9] == 6 || b[14 + 9] == 17) && b.len() >= 14 + ihl + 4 {
                sym(&b[14 + ihl..16 + ihl], &b[16 + ihl..18 + ihl], &mut mix);
            }
        } else if et == 0x86dd && b.len() >= 14 + 40 && b[14] >> 4 == 6 {
            sym(&b[22..38], &b[38..54], &mut mix);
        }
    }
    // FNV's low bits are a plain XOR of the inputs' low bits, and Linux
    // hands connect() even ephemeral ports: without a full avalanche,
    // every TCP flow between two hosts lands on the same queue of two.
    // murmur3's finalizer mixes every bit into every other.
    key ^= key >> 33;
    key = key.wrapping_mul(0xff51_afd7_ed55_8ccd);
    key ^= key >> 33;
    key = key.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    key ^= key >> 33;
    key as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frag::Frag;

    fn tcp4(sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 54];
        f[0..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0xb]);
        f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0xa]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    fn hash(f: &[u8]) -> usize {
        flow_hash(&[Frag::from_slice(f, 0)], 0)
    }

    /// Client ports as Linux hands them to connect() (even, in steps of
    /// two) and consecutive ones spread over 2 and 4 queues, and both
    /// directions of a flow hash alike.
    #[test]
    fn flows_spread_and_are_symmetric() {
        for (n, step) in [(2usize, 1u16), (2, 2), (4, 1), (4, 2), (4, 4)] {
            let mut per = vec![0usize; n];
            for p in 0..256u16 {
                per[hash(&tcp4(40_000 + step * p, 5201)) % n] += 1;
            }
            let fair = 256 / n;
            assert!(per.iter().all(|&c| c > fair / 2), "{n} queues: {per:?}");
        }
        let mut back = tcp4(5201, 40_000);
        back[0..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0xa]);
        back[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0xb]);
        back[26..30].copy_from_slice(&[10, 0, 0, 2]);
        back[30..34].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(hash(&tcp4(40_000, 5201)), hash(&back));
    }

    /// A frame that says IPv4 or IPv6 but is not (wrong version, short
    /// header) hashes by its MACs alone: its garbage does not spread its
    /// flow. Fragments of one datagram hash alike, ports or not.
    #[test]
    fn malformed_headers_and_fragments_keep_their_flow() {
        let mut a = tcp4(1, 2);
        let mut b = tcp4(3, 4);
        for f in [&mut a, &mut b] {
            f[14] = 0x15; // version 1
        }
        b[26] = 99;
        assert_eq!(hash(&a), hash(&b));
        let mut v6 = tcp4(1, 2);
        v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        v6.resize(80, 0);
        let mut v6b = v6.clone();
        v6b[30] = 7; // in the "addresses", but version 4 where 6 belongs
        assert_eq!(hash(&v6), hash(&v6b));
        let first = tcp4(40_000, 5201);
        let mut later = tcp4(0, 0);
        later[20] = 0x00;
        later[21] = 0xb9; // fragment offset 185 (1480 bytes)
        let mut first_mf = first.clone();
        first_mf[20] = 0x20; // more fragments, offset 0: the first one
        assert_eq!(hash(&first_mf), hash(&later), "fragments part ways");
        assert_ne!(hash(&first), hash(&later), "ports ignored when whole");
        let mut later2 = later.clone();
        later2[34..38].copy_from_slice(&[9, 9, 9, 9]); // payload, not ports
        assert_eq!(hash(&later), hash(&later2));
    }
}
