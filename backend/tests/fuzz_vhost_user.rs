//! The vhost_user fuzz target's seed corpus (`fuzz/corpus/vhost_user/`):
//! replayed through `backend::testing::fuzz_vhost_user` by `cargo test`
//! (no nightly needed). The seeds are QEMU 7.2's recorded set-up orders
//! (`shared/qemu-7.2-vhost-user-trace.txt`) with real descriptors, and the
//! hostile variants the session must refuse without ending.
//! `cargo test -p vale-backend --test fuzz_vhost_user -- --ignored` writes
//! them again after a change of the input format.

use std::fs;
use std::path::PathBuf;

use backend::testing::fuzz_vhost_user;

const MIN_SEEDS: usize = 5;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vhost_user")
}

/// Descriptor selectors of the input format.
const NONE: u8 = 0;
const MEM: u8 = 1;
const EVENT: u8 = 2;
const SHORT_MEM: u8 = 3;

fn msg(out: &mut Vec<u8>, fd: u8, code: u32, flags: u32, body: &[u8]) {
    out.push(fd);
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

fn u64b(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn state(i: u32, n: u32) -> Vec<u8> {
    [i.to_le_bytes(), n.to_le_bytes()].concat()
}

fn region(gpa: u64, size: u64, uaddr: u64, off: u64) -> Vec<u8> {
    [0, gpa, size, uaddr, off]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn addr(i: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut b = i.to_le_bytes().to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    for v in [desc, used, avail, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

const UADDR: u64 = 0x7f00_0000_0000;

/// QEMU 7.2's order for `pairs` queue pairs, memory a 1 MiB memfd.
fn qemu72(pairs: u32) -> Vec<u8> {
    let mut m = Vec::new();
    msg(&mut m, NONE, 1, 1, &[]);
    msg(&mut m, NONE, 15, 1, &[]);
    msg(&mut m, NONE, 16, 1, &u64b(0x8009));
    msg(&mut m, NONE, 36, 1, &[]);
    msg(&mut m, NONE, 3, 1, &[]);
    for q in 0..2 * pairs {
        msg(&mut m, EVENT, 13, 1, &u64b(q as u64));
        msg(&mut m, EVENT, 14, 1, &u64b(q as u64));
    }
    for _ in 0..5 {
        for q in 0..2 * pairs {
            msg(&mut m, NONE, 18, 1, &state(q, u32::from(q < 2)));
        }
    }
    let features = (1u64 << 32) | (1 << 30) | (1 << 29) | (1 << 15) | (1 << 22);
    for p in 0..pairs {
        msg(&mut m, NONE, 2, 1, &u64b(features));
        msg(&mut m, MEM, 37, 9, &region(0, 1 << 20, UADDR, 0));
        for q in [2 * p, 2 * p + 1] {
            let base = UADDR + 0x10000 * u64::from(q);
            msg(&mut m, NONE, 8, 1, &state(q, 256));
            msg(&mut m, NONE, 10, 1, &state(q, 0));
            msg(
                &mut m,
                NONE,
                9,
                1,
                &addr(q, base, base + 0x2000, base + 0x1000),
            );
            msg(&mut m, EVENT, 12, 1, &u64b(q as u64));
            msg(&mut m, EVENT, 13, 1, &u64b(q as u64));
        }
    }
    for q in 0..2 * pairs {
        msg(&mut m, NONE, 18, 1, &state(q, 1));
    }
    for q in 0..2 * pairs {
        msg(&mut m, NONE, 11, 1, &state(q, 0));
    }
    for _ in 0..pairs {
        msg(&mut m, NONE, 38, 9, &region(0, 1 << 20, UADDR, 0));
    }
    m
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut hostile = Vec::new();
    msg(&mut hostile, NONE, 16, 1, &u64b(0x8009));
    // 1 GiB announced over a 4 KiB memfd; an eventfd as memory; a region
    // wrapping the address space; two descriptors on one ADD_MEM_REG.
    msg(
        &mut hostile,
        SHORT_MEM,
        37,
        9,
        &region(0, 1 << 30, UADDR, 0),
    );
    msg(&mut hostile, EVENT, 37, 9, &region(0, 4096, UADDR, 0));
    msg(
        &mut hostile,
        MEM,
        37,
        9,
        &region(u64::MAX - 4095, 8192, UADDR, 0),
    );
    msg(&mut hostile, 4, 37, 9, &region(0, 4096, UADDR, 0));
    // Queues that do not exist, sizes that are not powers of two, rings
    // outside memory, a kick without a descriptor, an unknown request.
    msg(&mut hostile, NONE, 18, 9, &state(99, 1));
    msg(&mut hostile, NONE, 8, 9, &state(0, 300));
    msg(&mut hostile, NONE, 9, 9, &addr(0, 1, 2, 3));
    msg(&mut hostile, NONE, 12, 9, &u64b(0));
    msg(&mut hostile, NONE, 200, 9, &[1, 2, 3]);
    msg(&mut hostile, NONE, 5, 9, &[0xff; 48]);
    msg(&mut hostile, NONE, 1, 1, &[]);

    let mut ufo = Vec::new();
    msg(&mut ufo, NONE, 2, 1, &u64b((1 << 32) | (1 << 10)));
    msg(&mut ufo, NONE, 1, 1, &[]);

    let mut table = Vec::new();
    let mut t = 1u32.to_le_bytes().to_vec();
    t.extend_from_slice(&0u32.to_le_bytes());
    for v in [0u64, 1 << 20, UADDR, 0] {
        t.extend_from_slice(&v.to_le_bytes());
    }
    msg(&mut table, MEM, 5, 9, &t);
    msg(&mut table, NONE, 8, 1, &state(0, 64));
    msg(
        &mut table,
        NONE,
        9,
        9,
        &addr(0, UADDR, UADDR + 0x800, UADDR + 0x400),
    );
    msg(&mut table, EVENT, 12, 9, &u64b(0));

    let mut split = qemu72(1);
    // A header whose body never comes.
    split.extend_from_slice(&[0, 37, 0, 0, 0, 9, 0, 0, 0, 40, 0, 0, 0, 1, 2]);
    vec![
        ("qemu72-one-pair", qemu72(1)),
        ("qemu72-two-pairs", qemu72(2)),
        ("hostile-requests", hostile),
        ("features-never-offered", ufo),
        ("set-mem-table", table),
        ("truncated-body", split),
    ]
}

/// Each seed reaches what it is named for.
#[test]
fn seeds_reach_their_paths() {
    let run = |name: &str| {
        let (_, data) = seeds().into_iter().find(|(n, _)| *n == name).unwrap();
        let r = fuzz_vhost_user(&data);
        eprintln!("{name}: {r:?}");
        r
    };
    for (name, pairs) in [("qemu72-one-pair", 1u64), ("qemu72-two-pairs", 2)] {
        let r = run(name);
        assert_eq!(r.refused, 0, "{name}: QEMU's order is accepted whole");
        assert!(!r.features_refused);
        // Every queue started by its kick (and was enabled).
        assert_eq!(r.kicks, 2 * pairs, "{name}: {r:?}");
        // The region was added once per pair and removed as often.
        assert_eq!(r.regions, 0, "{name}");
    }
    let r = run("hostile-requests");
    assert!(r.refused >= 10, "{r:?}");
    assert!(!r.features_refused);
    assert_eq!(r.served, 12, "every request answered, the session went on");
    assert_eq!(r.regions, 0, "nothing mapped");
    assert!(run("features-never-offered").features_refused);
    let r = run("set-mem-table");
    assert_eq!((r.refused, r.regions), (0, 1), "{r:?}");
    let r = run("truncated-body");
    assert_eq!(r.refused, 0);
}

#[test]
fn vhost_user_corpus_replays() {
    netmap::testing::replay_corpus(&corpus(), MIN_SEEDS, |d| {
        fuzz_vhost_user(d);
    });
}

#[test]
#[ignore = "writes the seed corpus"]
fn write_vhost_user_seeds() {
    let dir = corpus();
    fs::create_dir_all(&dir).unwrap();
    for (name, data) in seeds() {
        fs::write(dir.join(name), data).unwrap();
    }
}
