//! The pkt-gen binary on the `null` port (no valed needed): netmap's
//! output lines, `--json`, `-h`, bad options, and ^C ending a run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pkt_gen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pkt-gen"))
        .args(args)
        .env("VALE_SOCKET", "/nonexistent/valed.sock")
        .output()
        .unwrap()
}

#[test]
fn tx_on_null_prints_netmaps_final_lines() {
    let o = pkt_gen(&["-i", "null", "-f", "tx", "-n", "100000"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("Sending on null: 1 queues, 1 threads and 1 cpus."),
        "{out}"
    );
    assert!(
        out.contains("10.0.0.1 -> 10.1.0.1 (00:00:00:00:00:00 -> ff:ff:ff:ff:ff:ff)"),
        "{out}"
    );
    assert!(out.contains("Sent 100000 packets 6000000 bytes "), "{out}");
    assert!(out.contains(" events 60 bytes each in "), "{out}");
    let speed = out.lines().find(|l| l.starts_with("Speed: ")).expect(&out);
    assert!(
        speed.contains("pps Bandwidth: ") && speed.contains("bps (raw "),
        "{speed}"
    );
    assert!(
        speed.ends_with(" pkts") && speed.contains("). Average batch: "),
        "{speed}"
    );
    // The periodic line goes to stderr with netmap's D() prefix.
    assert!(
        err.lines().any(|l| l.contains(" main_thread [")
            && l.contains("pps (")
            && l.contains(" usec) ")
            && l.ends_with(" min_space")),
        "{err}"
    );
}

#[test]
fn json_result_and_threads() {
    let o = pkt_gen(&[
        "-i", "null", "-f", "tx", "-n", "40000", "-p", "2", "-a", "0", "-c", "0", "-l", "1514",
        "-l", "60", "--json",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    let line = out.lines().last().unwrap();
    assert!(line.starts_with("{\"function\":\"tx\",\"interface\":\"null\",\"threads\":2,\"ok\":true,\"packets\":40000,"), "{line}");
    assert!(line.ends_with("\"thread_errors\":[]}"), "{line}");
    // Header lines move to stderr with --json.
    assert!(!out.contains("Sending on"), "{out}");
}

#[test]
fn help_and_bad_options() {
    let o = pkt_gen(&["-h"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("-f function"));
    let o = pkt_gen(&["-i", "null", "-q"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad option q"));
    let o = pkt_gen(&["-f", "tx"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing ifname"));
}

#[test]
fn no_valed_is_a_clear_error() {
    let o = pkt_gen(&["-i", "vale0:a", "-f", "tx", "-n", "1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("vale0:a") && err.contains("aborting"), "{err}");
}

#[test]
fn interrupt_ends_rx_with_final_lines() {
    let child = Command::new(env!("CARGO_BIN_EXE_pkt-gen"))
        .args(["-i", "null", "-f", "rx"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "^C took too long");
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Receiving from null:"), "{out}");
    assert!(out.contains("Received nothing."), "{out}");
}
