//! Ring benchmarks: slots per second handed from an application to a switch
//! in another process through the CSB protocol, and the cost of one txsync
//! with and without a kick.
//!
//! `cargo bench -p netmap --bench ring`. The switch side runs in a child
//! process (this binary re-executed with `VALE_BENCH_CHILD=1`), so the
//! handoff crosses address spaces and, when the machine has them, cores.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use netmap::ring;
use netmap::sync::{drain_tx, poll_rings, AppRing, KringState, Want};
use netmap::sys::{recv_with_fds, send_with_fds};
use netmap::testing::{LoopClient, Loopback};

const TIMEOUT: Duration = Duration::from_secs(30);
const SLOTS: u32 = 1024;

/// Child: the switch, discarding every slot until the parent hangs up.
fn child() {
    let conn = UnixStream::connect(std::env::var("VALE_BENCH_SOCK").unwrap()).unwrap();
    let lb = Loopback::new(SLOTS, 2048).unwrap();
    let meta = [lb.region.memsize() as u64, lb.nifp as u64];
    let bytes: Vec<u8> = meta.iter().flat_map(|v| v.to_le_bytes()).collect();
    send_with_fds(&conn, &bytes, &lb.fds().unwrap()).unwrap();
    let stop = AtomicBool::new(false);
    let _ = lb.sink(&stop, Some(conn.as_fd()), Duration::from_secs(3600));
}

/// Parent side: starts the child switch and maps what it sends.
fn spawn_switch() -> (Child, UnixStream, LoopClient) {
    let path = std::env::temp_dir().join(format!("vale-bench-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .env("VALE_BENCH_CHILD", "1")
        .env("VALE_BENCH_SOCK", &path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (conn, _) = l.accept().unwrap();
    let _ = std::fs::remove_file(&path);
    let mut buf = [0u8; 16];
    let (n, fds) = recv_with_fds(&conn, &mut buf).unwrap();
    assert_eq!(n, 16);
    let memsize = u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize;
    let nifp = u64::from_le_bytes(buf[8..].try_into().unwrap()) as usize;
    (
        child,
        conn,
        LoopClient::from_fds(fds, memsize, nifp).unwrap(),
    )
}

/// Publishes `n` slots `batch` at a time (one txsync per batch), blocking in
/// poll when the ring is full, then waits until the switch took them all.
fn handoff(tx: &AppRing<'_>, n: u64, batch: u32, peer: &UnixStream) -> Duration {
    let r = &tx.ring;
    let ns = r.num_slots();
    let t0 = Instant::now();
    let mut left = n;
    while left > 0 {
        let mut room = ring::space(r.cur(), r.tail(), ns);
        if room == 0 {
            tx.sync().unwrap();
            room = ring::space(r.cur(), r.tail(), ns);
            if room == 0 {
                poll_rings(
                    std::slice::from_ref(tx),
                    Want::Ready,
                    Some(peer.as_fd()),
                    Some(TIMEOUT),
                )
                .unwrap();
                continue;
            }
        }
        let k = (room.min(batch) as u64).min(left) as u32;
        let cur = ring::advance(r.cur(), k, ns);
        r.set_cur(cur);
        r.set_head(cur);
        tx.sync().unwrap();
        left -= k as u64;
    }
    drain_tx(std::slice::from_ref(tx), Some(peer.as_fd()), TIMEOUT).unwrap();
    t0.elapsed()
}

fn bench_handoff(c: &mut Criterion) {
    let (mut child, conn, cl) = spawn_switch();
    let tx = cl.tx().unwrap();
    let mut g = c.benchmark_group("two_process_handoff");
    g.throughput(Throughput::Elements(1));
    for batch in [1u32, 32, 512] {
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| handoff(&tx, iters, batch, &conn))
        });
    }
    g.finish();
    drop(conn);
    let _ = child.wait();
}

fn bench_txsync(c: &mut Criterion) {
    // In one process: the switch side only sets kern_need_kick, so what is
    // measured is the application's txsync alone.
    let lb = Loopback::new(SLOTS, 2048).unwrap();
    let cl = LoopClient::from_fds(lb.fds().unwrap(), lb.region.memsize(), lb.nifp).unwrap();
    let tx = cl.tx().unwrap();
    let csb = lb.csb.entry(0).unwrap();
    let k = KringState::new(netmap::sync::Dir::Tx, SLOTS);
    let mut g = c.benchmark_group("txsync");
    g.bench_function("no_kick", |b| {
        k.woken(&csb);
        b.iter(|| tx.sync().unwrap())
    });
    g.bench_function("kick", |b| {
        assert!(k.prepare_sleep(&csb));
        b.iter(|| {
            tx.sync().unwrap();
        });
        lb.kick_tx.drain().unwrap();
        k.woken(&csb);
    });
    g.finish();
}

fn main() {
    if std::env::var_os("VALE_BENCH_CHILD").is_some() {
        child();
        return;
    }
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench_handoff(&mut c);
    bench_txsync(&mut c);
    c.final_summary();
}
