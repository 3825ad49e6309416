//! NIC ports through valed: a veth pair into a network namespace whose
//! stack has an address, the near end attached to a switch as a NIC port
//! (`vale-ctl -a vale0:IF`, here the same request). A client port on that
//! switch resolves the namespace's address and pings it. Needs root
//! (skipped otherwise) and `ip`.

mod common;

use std::time::{Duration, Instant};

use netmap::abi::{
    NmreqValeAttach, NmreqValeDetach, NETMAP_REQ_VALE_ATTACH, NETMAP_REQ_VALE_DETACH,
};
use netmap::ctrl::Request;
use netmap::port::NmPort;
use nic::testing::{arp_request, echo_request, is_arp_reply, is_echo_reply, root, Veth, OUR_MAC};

/// Sends `frame` from `p` and waits for a frame `want` accepts (3 s).
fn ask(p: &NmPort, frame: &[u8], want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let tx = p.tx_ring(0);
    let rx = p.rx_ring(0);
    assert_eq!(
        netmap::testing::send_frames(&tx, &[frame.to_vec()]).unwrap(),
        1
    );
    let t0 = Instant::now();
    let mut got = Vec::new();
    while t0.elapsed() < Duration::from_secs(3) {
        let _ = p.poll(false, true, Some(Duration::from_millis(50)));
        got.clear();
        netmap::testing::recv_frames(&rx, &mut got).unwrap();
        if let Some(f) = got.iter().find(|f| want(f)) {
            return Some(f.clone());
        }
    }
    None
}

#[test]
fn a_client_port_pings_a_namespace_through_a_nic_port() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let veth = Veth::new("d");
    let v = common::start("nic", &[]);
    let name = format!("vale0:{}", veth.here);
    let (e, _) =
        v.call(&Request::new(NETMAP_REQ_VALE_ATTACH, &name, &NmreqValeAttach::default()).unwrap());
    assert_eq!(e, 0, "attach {name}");
    // Attached once only.
    let (e, _) = v.call(
        &Request::new(
            NETMAP_REQ_VALE_ATTACH,
            "vale1:x",
            &NmreqValeAttach::default(),
        )
        .unwrap(),
    );
    assert_eq!(e, libc::ENXIO, "an interface that does not exist");
    let (e, _) =
        v.call(&Request::new(NETMAP_REQ_VALE_ATTACH, &name, &NmreqValeAttach::default()).unwrap());
    assert_eq!(e, libc::EBUSY, "attached twice");
    assert!(v.list().contains(&name), "{:?}", v.list());
    let c = v.open("vale0:c").unwrap();
    let reply = ask(&c, &arp_request(veth.subnet), |f| {
        is_arp_reply(f, veth.subnet)
    })
    .expect("the namespace answers ARP through the NIC port");
    assert_eq!(&reply[0..6], &OUR_MAC);
    let their_mac: [u8; 6] = reply[6..12].try_into().unwrap();
    for seq in 1..=5u16 {
        assert!(
            ask(&c, &echo_request(their_mac, veth.subnet, seq), |f| {
                is_echo_reply(f, seq)
            })
            .is_some(),
            "echo reply {seq}"
        );
    }
    drop(c);
    let (e, _) =
        v.call(&Request::new(NETMAP_REQ_VALE_DETACH, &name, &NmreqValeDetach::default()).unwrap());
    assert_eq!(e, 0, "detach {name}");
    assert!(!v.list().contains(&name));
}
