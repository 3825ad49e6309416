//! The baseline of `scripts/bench-nic.sh`: 60-byte frames on an interface,
//! one `send` each, for a while. Prints the frames the kernel took.
//!
//! usage: sendto IFNAME SECS DST_MAC

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: sendto IFNAME SECS DST_MAC");
        std::process::exit(2);
    }
    let secs: u64 = args[2].parse().expect("SECS");
    let mut frame = vec![0u8; 60];
    for (i, b) in args[3].split(':').enumerate().take(6) {
        frame[i] = u8::from_str_radix(b, 16).expect("DST_MAC");
    }
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0x77, 0, 2]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let s = nic::baseline::PlainSocket::open(&args[1]).unwrap_or_else(|e| {
        eprintln!("sendto: {e}");
        std::process::exit(1)
    });
    let n = s.blast(&frame, std::time::Duration::from_secs(secs));
    println!("{n}");
}
