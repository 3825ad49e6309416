//! The baseline of `scripts/bench-nic.sh`: 60-byte frames on an interface,
//! one `send` each, for a while. Prints the frames the kernel took.
//!
//! The frame is pkt-gen's (UDP, 10.0.0.1:1234 -> 10.1.0.1:4321, valid IPv4
//! header), so the far end's stack does the same work for both: a frame
//! with a malformed header would be dropped sooner and flatter the
//! baseline.
//!
//! With `--as-generic`, the socket is set up as the generic adapter's
//! transmit side (virtio-net header, no qdisc) and sends `sendmmsg`
//! batches of 64: the adapter's kernel work with none of its own.
//!
//! usage: sendto IFNAME SECS DST_MAC [--as-generic]

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let generic = args.get(4).map(String::as_str) == Some("--as-generic");
    if !(args.len() == 4 || args.len() == 5 && generic) {
        eprintln!("usage: sendto IFNAME SECS DST_MAC [--as-generic]");
        std::process::exit(2);
    }
    let secs: u64 = args[2].parse().expect("SECS");
    let mut frame = vec![0u8; 60];
    for (i, b) in args[3].split(':').enumerate().take(6) {
        frame[i] = u8::from_str_radix(b, 16).expect("DST_MAC");
    }
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0x77, 0, 2]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    // IPv4: 46 bytes, TTL 64, UDP, 10.0.0.1 -> 10.1.0.1.
    let ip = [
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 1, 0, 1,
    ];
    frame[14..34].copy_from_slice(&ip);
    let c = nic::testing::csum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    // UDP: 26 bytes, no checksum.
    frame[34..42].copy_from_slice(&[0x04, 0xd2, 0x10, 0xe1, 0, 26, 0, 0]);
    let open = if generic {
        nic::baseline::PlainSocket::open_as_generic
    } else {
        nic::baseline::PlainSocket::open
    };
    let s = open(&args[1]).unwrap_or_else(|e| {
        eprintln!("sendto: {e}");
        std::process::exit(1)
    });
    let secs = std::time::Duration::from_secs(secs);
    let n = if generic {
        s.blast_batched(&frame, secs)
    } else {
        s.blast(&frame, secs)
    };
    println!("{n}");
}
