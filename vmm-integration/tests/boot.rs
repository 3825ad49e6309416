//! Boots the guest from `images/out` (no NICs) and drives it through the
//! agent and the monitor. Skipped, with a message, when QEMU or the image is
//! missing (`images/build.sh` makes it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_integration::qemu::{find_on_path, QEMU};
use vmm_integration::{Accel, Guest, GuestError, GuestSpec, Vmm};

fn image() -> Option<(PathBuf, PathBuf)> {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/out");
    let (k, i) = (out.join("vmlinuz"), out.join("initramfs.cpio.gz"));
    (k.is_file() && i.is_file()).then_some((k, i))
}

fn test_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmmi-{tag}-{}", std::process::id()))
}

#[test]
fn guest_boots_and_runs_commands() {
    if find_on_path(QEMU).is_none() {
        eprintln!("skipped: no {QEMU} on PATH");
        return;
    }
    let Some((kernel, initrd)) = image() else {
        eprintln!("skipped: no images/out/vmlinuz and initramfs.cpio.gz (run images/build.sh)");
        return;
    };
    let spec = GuestSpec::new("boot", kernel, initrd)
        .memory_mib(256)
        .append("quiet vale.hostname=boot")
        .accel(Accel::from_env_or_probe())
        .dir(test_dir("boot"));
    // QEMU here whatever the probe says: this test has no Cloud Hypervisor
    // agent channel to offer the guest.
    let mut vm = Guest::start_with(&spec, Vmm::Qemu).unwrap();
    vm.wait_ready(Duration::from_secs(180)).unwrap();

    let out = vm
        .run("uname -s; echo oops >&2; exit 7", Duration::from_secs(30))
        .unwrap();
    assert_eq!(out.code, 7);
    assert_eq!(out.stdout, "Linux\noops\n");
    assert_eq!(
        vm.run_ok("hostname", Duration::from_secs(30)).unwrap(),
        "boot\n"
    );
    let e = vm.run_ok("false", Duration::from_secs(30)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("guest boot: command `false` exited with 1"),
        "{e}"
    );

    // A timed-out command's late reply does not confuse the next one.
    let e = vm
        .run("sleep 2; echo late", Duration::from_millis(300))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("guest boot: command `sleep 2; echo late` timed out after 0.3 s"),
        "{e}"
    );
    assert_eq!(
        vm.run_ok("echo next", Duration::from_secs(30)).unwrap(),
        "next\n"
    );

    // Detached commands keep running.
    vm.spawn_bg("sleep 1; echo bg > /tmp/bg.out").unwrap();
    let mut seen = String::new();
    for _ in 0..50 {
        seen = vm
            .run("cat /tmp/bg.out 2>/dev/null", Duration::from_secs(30))
            .unwrap()
            .stdout;
        if seen == "bg\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(seen, "bg\n");

    // Large output survives framing.
    let big = vm.run_ok("seq 1 20000", Duration::from_secs(60)).unwrap();
    assert_eq!(big.lines().count(), 20000);
    assert!(big.ends_with("19999\n20000\n"));

    // A new connection (as `vale-vm exec` makes) works after this one.
    vm.disconnect_agent();
    assert_eq!(
        vm.run_ok("echo again", Duration::from_secs(30)).unwrap(),
        "again\n"
    );

    assert!(vm.console_log().contains("vale-guest: ready"));
    let status = vm.hmp("info status", Duration::from_secs(10)).unwrap();
    assert!(status.contains("running"), "{status:?}");

    vm.kill().unwrap();
    let e = vm.run("true", Duration::from_secs(5)).unwrap_err();
    assert!(matches!(e, GuestError::Exited { .. }), "{e}");
}

#[test]
fn vmm_that_exits_is_reported() {
    if find_on_path(QEMU).is_none() {
        eprintln!("skipped: no {QEMU} on PATH");
        return;
    }
    let dir = test_dir("badkernel");
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("not-a-kernel");
    std::fs::write(&junk, b"this is not a kernel").unwrap();
    let spec = GuestSpec::new("bad", &junk, &junk)
        .accel(Accel::Tcg { why: "test".into() })
        .dir(&dir);
    let mut vm = Guest::start_with(&spec, Vmm::Qemu).unwrap();
    let e = vm.wait_ready(Duration::from_secs(60)).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, GuestError::Exited { .. }), "{text}");
    assert!(
        text.starts_with("guest bad: qemu-system-x86_64 (pid "),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
