//! The control-plane fuzz target's seed corpus (`fuzz/corpus/control/`):
//! replayed through `valed::fuzzing::control_sequence` so that `cargo test`
//! checks every file on stable. `cargo test -p valed --test fuzz_control
//! -- --ignored` writes the seeds again after a change of the input format.

use std::fs;
use std::mem::size_of;
use std::path::PathBuf;

use netmap::abi::{
    NmreqRegister, NmreqValeAttach, NmreqValeDetach, NmreqValeList, NmreqValeNewif, NR_REG_ALL_NIC,
};
use valed::fuzzing::{control_sequence, control_trace};

const MIN_SEEDS: usize = 6;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/control")
}

#[test]
fn control_corpus_replays() {
    netmap::testing::replay_corpus(&corpus(), MIN_SEEDS, control_sequence);
}

/// The hand-written seeds get the answers they are named for (so the
/// replay is not vacuous: requests decode and reach the registry).
#[test]
fn seeds_reach_their_paths() {
    let errnos = |name: &str| -> Vec<i32> {
        control_trace(&fs::read(corpus().join(name)).unwrap())
            .into_iter()
            .map(|(_, _, e)| e)
            .collect()
    };
    // uid 1000 makes vale0; uid 1001 is refused on it; after 1000 leaves,
    // the switch goes with its last port and 1001 may make it.
    assert_eq!(errnos("two-uids-one-switch"), [0, libc::EPERM, 0, 0]);
    let p = errnos("persistent-attach-register-close");
    assert_eq!(p[..3], [0, 0, 0], "newif, attach, register: {p:?}");
    assert_eq!(p[3], libc::EPERM, "another uid registers the port: {p:?}");
    assert_eq!(p[4..], [0, 0], "detach, delif: {p:?}");
    assert_eq!(errnos("reregister-with-extra-buffers"), [0, 0, 0, 0]);
    let q = errnos("quota-extra-buffers");
    assert_ne!(q[0], 0, "2^20 extra buffers: {q:?}");
}

/// Indexes into `valed::fuzzing`'s tables (kept in step by hand; a wrong
/// index only makes a weaker seed).
const REGISTER: u8 = 0;
const ATTACH: u8 = 2;
const DETACH: u8 = 3;
const LIST: u8 = 4;
const NEWIF: u8 = 7;
const DELIF: u8 = 8;
const STATS: u8 = 10;
const CLOSE: u8 = 63;
const VALE0_A: u8 = 0;
const VALE0_B: u8 = 1;
const P1: u8 = 4;
const VALE0_P1: u8 = 5;
const PIPE_MASTER: u8 = 9;
const PIPE_SLAVE: u8 = 10;

fn bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is one of the plain-data ABI structs; reading its bytes
    // is reading initialised memory of its size.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()).to_vec() }
}

struct Seq(Vec<u8>);

impl Seq {
    fn req(mut self, conn: u8, kind: u8, name: u8, body: &[u8]) -> Seq {
        self.0.push(conn | (kind << 2));
        self.0.push(name);
        self.0.extend_from_slice(body);
        self
    }
    fn close(mut self, conn: u8) -> Seq {
        self.0.push(conn | (CLOSE << 2));
        self
    }
}

fn register(extra: u32) -> Vec<u8> {
    bytes(&NmreqRegister {
        nr_mode: NR_REG_ALL_NIC,
        nr_tx_slots: 64,
        nr_rx_slots: 64,
        nr_extra_bufs: extra,
        ..Default::default()
    })
}

#[test]
#[ignore = "writes fuzz/corpus/control/; run after changing the input format"]
fn write_control_seeds() {
    let dir = corpus();
    fs::create_dir_all(&dir).unwrap();
    let newif = bytes(&NmreqValeNewif::default());
    let attach = bytes(&NmreqValeAttach {
        reg: NmreqRegister {
            nr_mode: NR_REG_ALL_NIC,
            ..Default::default()
        },
        ..Default::default()
    });
    let seeds: Vec<(&str, Seq)> = vec![
        (
            "two-uids-one-switch",
            Seq(Vec::new())
                .req(0, REGISTER, VALE0_A, &register(0))
                .req(1, REGISTER, VALE0_B, &register(0))
                .req(0, LIST, 0, &bytes(&NmreqValeList::default()))
                .close(0)
                .req(1, REGISTER, VALE0_B, &register(0)),
        ),
        (
            "persistent-attach-register-close",
            Seq(Vec::new())
                .req(0, NEWIF, P1, &newif)
                .req(0, ATTACH, VALE0_P1, &attach)
                .req(2, REGISTER, VALE0_P1, &register(4))
                .req(1, REGISTER, VALE0_P1, &register(0))
                .close(2)
                .req(0, DETACH, VALE0_P1, &bytes(&NmreqValeDetach::default()))
                .req(0, DELIF, P1, &[]),
        ),
        (
            "reregister-with-extra-buffers",
            Seq(Vec::new())
                .req(0, NEWIF, P1, &newif)
                .req(0, ATTACH, VALE0_P1, &attach)
                .req(0, REGISTER, VALE0_P1, &register(16))
                .close(0)
                .req(2, REGISTER, VALE0_P1, &register(16))
                .close(2),
        ),
        (
            "pipe-ends-two-uids",
            Seq(Vec::new())
                .req(0, REGISTER, PIPE_MASTER, &register(0))
                .req(1, REGISTER, PIPE_SLAVE, &register(0))
                .req(2, REGISTER, PIPE_SLAVE, &register(0))
                .close(0)
                .close(2),
        ),
        (
            "stats-and-garbage",
            Seq(Vec::new())
                .req(0, REGISTER, VALE0_A, &register(0))
                .req(1, STATS, VALE0_A, &[])
                .req(1, 13, 13, &[0xff; 64])
                .req(3, 12, VALE0_A, &[0xff; 32]),
        ),
        (
            "quota-extra-buffers",
            Seq(Vec::new())
                .req(0, REGISTER, VALE0_A, &register(1 << 20))
                .req(0, REGISTER, VALE0_A, &register(1000)),
        ),
    ];
    for (name, s) in seeds {
        fs::write(dir.join(name), &s.0).unwrap();
    }
}
