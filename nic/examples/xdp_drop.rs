//! Holds an XDP_DROP program on an interface for a while, for
//! `scripts/bench-nic.sh`: the far end of the veth then drops frames in
//! XDP instead of running its stack, so the sender's rate shows what the
//! adapter can do rather than what the far stack can take.
//!
//! usage: xdp_drop IFNAME SECS

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: xdp_drop IFNAME SECS");
        std::process::exit(2);
    }
    let secs: u64 = args[2].parse().expect("SECS");
    let _link = nic::testing::xdp_drop(&args[1]).unwrap_or_else(|e| {
        eprintln!("xdp_drop: {}: {e}", args[1]);
        std::process::exit(1);
    });
    std::thread::sleep(std::time::Duration::from_secs(secs));
}
