//! Real QEMU guests on valed (end to end): the guest image from `images/`
//! booted by `vmm-integration` (KVM where it can run a guest, TCG here),
//! virtio-net on valed's vhost-user ports, commands run in the guests
//! through their agent.
//!
//! They need `qemu-system-x86_64` and `images/out` (`images/build.sh`;
//! `scripts/test.sh` builds it). Without them they fail, saying so, unless
//! `VALE_SKIP_VM_TESTS=1`. They run one at a time (each boots several
//! guests; the machine has two cores).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::field;
use netmap::abi::{NmreqValeAttach, NETMAP_REQ_VALE_ATTACH};
use netmap::ctrl::{CtrlConn, Request, VALE_REQ_STATS};
use vmm_integration::qemu::{find_on_path, QEMU};
use vmm_integration::{Accel, Guest, GuestSpec, MacAddr, NicSpec, Vmm};

/// One VM test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const BOOT: Duration = Duration::from_secs(240);
const CMD: Duration = Duration::from_secs(60);

fn image() -> Option<(PathBuf, PathBuf)> {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/out");
    let (k, i) = (out.join("vmlinuz"), out.join("initramfs.cpio.gz"));
    if find_on_path(QEMU).is_some() && k.is_file() && i.is_file() {
        return Some((k, i));
    }
    if std::env::var("VALE_SKIP_VM_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped (VALE_SKIP_VM_TESTS=1): no {QEMU} or no images/out");
        return None;
    }
    panic!(
        "VM tests need {QEMU} (apt-get install qemu-system-x86) and images/out \
         (images/build.sh); VALE_SKIP_VM_TESTS=1 skips them"
    );
}

/// valed on a private directory, restartable with the same ports.
struct Daemon {
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// The network namespace valed runs in (a "host"), if not ours.
    netns: Option<String>,
}

impl Daemon {
    /// valed with vhost-user ports `name=queues` on `vale0`.
    fn start(tag: &str, ports: &[(&str, u16)]) -> Daemon {
        Daemon::start_in(tag, ports, None)
    }

    /// The same, in network namespace `netns` (its NIC ports are there;
    /// its sockets are files, which QEMU reaches from ours).
    fn start_in(tag: &str, ports: &[(&str, u16)], netns: Option<&str>) -> Daemon {
        let dir = std::env::temp_dir().join(format!("vale-vm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // valed refuses socket directories others can write, whatever the umask.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut args = vec![
            "--socket".to_string(),
            dir.join("valed.sock").display().to_string(),
            "--log".into(),
            // VALED_TEST_LOG=info,backend=debug shows the vhost-user
            // requests in the log kept when a test fails.
            std::env::var("VALED_TEST_LOG").unwrap_or_else(|_| "info".into()),
        ];
        for (name, q) in ports {
            args.push("--vhost-user".into());
            args.push(format!(
                "{name}={},attach=vale0,queues={q}",
                dir.join(format!("{name}.sock")).display()
            ));
        }
        let mut d = Daemon {
            dir,
            args,
            child: None,
            netns: netns.map(str::to_string),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("valed.log"))
            .unwrap();
        let mut cmd = match &self.netns {
            // `ip netns exec` execs valed: the child's pid is valed's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_valed")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_valed")),
        };
        let child = cmd
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t0 = Instant::now();
        while CtrlConn::connect(&self.sock()).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "valed did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("valed.sock")
    }

    fn port_socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// Stops valed with `sig` and starts it again with the same ports.
    fn restart(&mut self, sig: i32) {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, sig) };
        let t0 = Instant::now();
        while c.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(10), "valed did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        if sig == libc::SIGKILL {
            // A killed valed leaves its control socket behind.
            let _ = std::fs::remove_file(self.sock());
        }
        self.spawn();
    }

    /// Attaches `name` (e.g. a NIC, `vale0:eth0`) to its switch.
    fn attach(&self, name: &str) {
        let c = CtrlConn::connect(&self.sock()).unwrap();
        let req = Request::new(NETMAP_REQ_VALE_ATTACH, name, &NmreqValeAttach::default()).unwrap();
        let (r, _) = c.call(&req).unwrap();
        assert_eq!(r.error, 0, "attach {name}: {}", self.log());
    }

    /// The stats document of `port`.
    fn stats(&self, port: &str) -> String {
        let c = CtrlConn::connect(&self.sock()).unwrap();
        let (r, _) = c
            .call(&Request::with_body(VALE_REQ_STATS, port, Vec::new()).unwrap())
            .unwrap();
        assert_eq!(r.error, 0, "stats {port}");
        String::from_utf8(r.req.body).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("valed.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("valed log kept in {}", self.dir.display());
        }
    }
}

fn mac(i: u8) -> MacAddr {
    format!("52:54:00:00:00:{:02x}", i).parse().unwrap()
}

/// Guest `i` (address 10.0.0.i) on port `name` of `d`.
fn guest(
    d: &Daemon,
    img: &(PathBuf, PathBuf),
    name: &str,
    i: u8,
    pairs: u16,
    tso: bool,
) -> GuestSpec {
    let mut nic = NicSpec::new(d.port_socket(name), mac(i)).queue_pairs(pairs);
    if !tso {
        nic = nic.no_guest_tso();
    }
    GuestSpec::new(name, img.0.clone(), img.1.clone())
        .memory_mib(384)
        .cpus(u32::from(pairs))
        .append(&format!("quiet vale.ip=10.0.0.{i}/24 vale.hostname={name}"))
        .accel(Accel::from_env_or_probe())
        .dir(d.dir.join(format!("vm-{name}")))
        .nic(nic)
}

fn boot(specs: &[GuestSpec]) -> Vec<Guest> {
    let mut gs: Vec<Guest> = specs
        .iter()
        .map(|s| Guest::start_with(s, Vmm::Qemu).expect("QEMU starts"))
        .collect();
    for g in &mut gs {
        g.wait_ready(BOOT).expect("guest boots");
    }
    gs
}

/// Pings `to` from `g` until one answer comes back; how long it took.
fn ping_until(g: &mut Guest, to: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let out = g.run(&format!("ping -c 1 -W 1 {to}"), CMD).expect("agent");
        if out.code == 0 {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{}: no answer from {to} in {limit:?}: {}",
            g.name(),
            out.stdout
        );
    }
}

/// `iperf3 -c` from `g` to `to` (a server started on the other side),
/// returning the receiver's Gbit/s line.
fn iperf(client: &mut Guest, server: &mut Guest, to: &str, extra: &str) -> String {
    server.spawn_bg("iperf3 -s -1").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = client
        .run_ok(&format!("iperf3 -c {to} -t 3 {extra}"), CMD)
        .expect("iperf3 runs");
    let line = out
        .lines()
        .rfind(|l| l.contains("receiver"))
        .unwrap_or_else(|| panic!("no receiver line in {out}"))
        .to_string();
    eprintln!("iperf3 {extra}: {line}");
    line
}

/// Two guests ping each other, then TCP both ways. Both send TSO frames;
/// A's device offers guest TSO, so B's frames reach A whole (GSO, no
/// software segmentation counted); B's does not, so the switch segments
/// A's frames for B, and counts it. A's device also offers no mergeable
/// buffers, so Linux posts each receive buffer as a chain of a header
/// and pages ("big packets") and a 64 KiB frame fills one such chain;
/// B's are mergeable, one frame to a buffer. (`two_queue_pairs` covers
/// GSO frames spread over mergeable buffers.)
#[test]
fn two_guests_ping_and_tcp_with_and_without_guest_tso() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(img) = image() else { return };
    let d = Daemon::start("tso", &[("ga", 1), ("gb", 1)]);
    // B's device does not offer guest TSO: frames to B need software
    // segmentation; frames to A pass as they are.
    let mut ga = guest(&d, &img, "ga", 1, 1, true);
    ga.nics[0] = ga.nics[0].clone().no_mergeable_rx();
    let mut vms = boot(&[ga, guest(&d, &img, "gb", 2, 1, false)]);
    let (a, b) = vms.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    // What each guest's driver took (bit 15 is VIRTIO_NET_F_MRG_RXBUF).
    let mrg = |g: &mut Guest| {
        let f = g
            .run_ok("cat /sys/class/net/eth0/device/features", CMD)
            .expect("virtio features");
        f.trim().as_bytes().get(15).copied()
    };
    assert_eq!(
        mrg(&mut *a),
        Some(b'0'),
        "A's device still has mergeable buffers"
    );
    assert_eq!(
        mrg(&mut *b),
        Some(b'1'),
        "B's device lost mergeable buffers"
    );
    let out = a.run_ok("ping -c 3 -W 2 10.0.0.2", CMD).expect("A pings B");
    assert!(out.contains("3 packets received"), "{out}");
    let out = b.run_ok("ping -c 3 -W 2 10.0.0.1", CMD).expect("B pings A");
    assert!(out.contains("3 packets received"), "{out}");

    // B -> A: B sends TSO frames (the host side takes them), A takes them
    // whole.
    iperf(b, a, "10.0.0.1", "");
    let sa = d.stats("vale0:ga");
    assert_eq!(field(&sa, "soft_offload"), 0, "A: {sa}");
    assert!(
        field(&sa, "out_bytes") / field(&sa, "out_packets").max(1) > 1514,
        "frames to A were not GSO: {sa}"
    );
    // A -> B: B lacks guest TSO: segmented in software, counted.
    iperf(a, b, "10.0.0.2", "");
    let sb = d.stats("vale0:gb");
    assert!(field(&sb, "soft_offload") > 0, "B: {sb}");
    assert!(
        field(&sb, "out_bytes") / field(&sb, "out_packets").max(1) <= 1514 + 12,
        "frames to B larger than the MTU: {sb}"
    );
    for p in ["vale0:ga", "vale0:gb"] {
        let s = d.stats(p);
        assert!(s.contains("\"state\":\"running\""), "{s}");
        assert!(s.contains("\"last_error\":null"), "{s}");
    }
    assert!(!d.log().contains("session ended"), "{}", d.log());
}

/// Two queue pairs per guest (QEMU 7.2 sends ADD_MEM_REG once per pair):
/// all four queues run, flows use both queue pairs each way, and TCP
/// frames cross whole (GSO) into mergeable buffers.
#[test]
fn two_queue_pairs() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(img) = image() else { return };
    let d = Daemon::start("mq", &[("ma", 2), ("mb", 2)]);
    let mut vms = boot(&[
        guest(&d, &img, "ma", 1, 2, true),
        guest(&d, &img, "mb", 2, 2, true),
    ]);
    for p in ["vale0:ma", "vale0:mb"] {
        let s = d.stats(p);
        assert_eq!(field(&s, "queues_running"), 4, "{s}");
    }
    let (a, b) = vms.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    ping_until(a, "10.0.0.2", Duration::from_secs(20));
    iperf(a, b, "10.0.0.2", "-P 8");
    iperf(b, a, "10.0.0.1", "-P 8");
    // Both devices offer guest TSO and mergeable buffers: TSO frames
    // cross whole, each spread over several of the receiver's buffers.
    for p in ["vale0:ma", "vale0:mb"] {
        let s = d.stats(p);
        assert_eq!(field(&s, "soft_offload"), 0, "{p}: {s}");
        assert!(
            field(&s, "out_bytes") / field(&s, "out_packets").max(1) > 1514,
            "frames to {p} were not GSO: {s}"
        );
    }
    for g in [a, b] {
        let st = g.run_ok("ethtool -S eth0", CMD).unwrap();
        for q in [
            "rx_queue_0_packets",
            "rx_queue_1_packets",
            "tx_queue_0_packets",
            "tx_queue_1_packets",
        ] {
            let n: u64 = st
                .lines()
                .find(|l| l.trim_start().starts_with(q))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{q} in {st}"));
            assert!(n > 100, "{}: {q} = {n}\n{st}", g.name());
        }
    }
}

/// A guest's QEMU killed (SIGKILL) and started again gets its port back
/// while another pair's traffic never stops; then valed itself is
/// restarted (SIGTERM, then SIGKILL) under running guests, which
/// reconnect.
#[test]
fn qemu_killed_and_valed_restarted() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(img) = image() else { return };
    let mut d = Daemon::start("restart", &[("ra", 1), ("rb", 1), ("rc", 1)]);
    let specs = [
        guest(&d, &img, "ra", 1, 1, true),
        guest(&d, &img, "rb", 2, 1, true),
        guest(&d, &img, "rc", 3, 1, true),
    ];
    let mut vms = boot(&specs);
    ping_until(&mut vms[2], "10.0.0.2", Duration::from_secs(20));
    ping_until(&mut vms[0], "10.0.0.2", Duration::from_secs(20));

    // C pings B every 0.2 s for as long as A's restart takes.
    vms[2]
        .spawn_bg("ping -i 0.2 -c 150 -W 1 10.0.0.2 > /tmp/cb.log 2>&1")
        .unwrap();
    vms[0].kill().unwrap();
    let t0 = Instant::now();
    vms[0] = Guest::start_with(&specs[0], Vmm::Qemu).expect("QEMU restarts");
    vms[0].wait_ready(BOOT).expect("A boots again");
    let back = ping_until(&mut vms[0], "10.0.0.2", Duration::from_secs(30));
    eprintln!(
        "A killed and restarted: boot {:?}, then ping after {back:?}",
        t0.elapsed() - back
    );
    let conns = field(&d.stats("vale0:ra"), "connections");
    assert_eq!(conns, 2, "A's port saw the new QEMU");
    // C's pings over A's restart.
    let t1 = Instant::now();
    let log = loop {
        let l = vms[2].run_ok("cat /tmp/cb.log", CMD).unwrap();
        if l.contains("packets received") || t1.elapsed() > Duration::from_secs(60) {
            break l;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let summary = log
        .lines()
        .find(|l| l.contains("packets received"))
        .unwrap_or_else(|| panic!("C's ping did not finish: {log}"));
    eprintln!("C -> B during A's restart: {summary}");
    // busybox: "150 packets transmitted, N packets received, ...". Under
    // TCG a booting guest can starve the others for a moment: a reply
    // later than the 1 s deadline counts as lost. More than two lost is a
    // stop, not a delay.
    let received: u32 = summary
        .split(", ")
        .nth(1)
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {summary:?}"));
    assert!(
        received >= 148,
        "C -> B lost pings while A restarted: {summary}"
    );

    for (sig, what) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        d.restart(sig);
        let t = ping_until(&mut vms[0], "10.0.0.2", Duration::from_secs(20));
        let t2 = ping_until(&mut vms[2], "10.0.0.1", Duration::from_secs(20));
        eprintln!("valed restarted by {what}: A->B back in {t:?}, C->A in {t2:?}");
    }
}

/// `virsh -c qemu:///system ARGS`, its output; panics with it on failure.
fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "virsh {args:?}: {text}");
    text
}

/// A libvirt domain, destroyed and undefined when dropped.
struct Domain(String);

impl Drop for Domain {
    fn drop(&mut self) {
        for verb in ["destroy", "undefine"] {
            let _ = Command::new("virsh")
                .args(["-c", "qemu:///system", verb, &self.0])
                .output();
        }
    }
}

/// libvirt (Debian's libvirt-daemon-system, the system instance: QEMU runs
/// as libvirt-qemu) runs a domain from our XML (`libvirt_domain_xml`:
/// memfd shared memory, `<interface type='vhostuser'>`, TCG here), attached
/// to valed, and it pings a second VM started by QEMU directly. Its NIC
/// is made without mergeable buffers and guest TSO, as libvirt spells
/// them (`<host mrg_rxbuf='off'/>`, `<guest tso4='off' …/>`), and the
/// guest's driver is checked to have neither.
#[test]
fn libvirt_domain_pings_a_second_vm() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(img) = image() else { return };
    let ok = Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("VALE_SKIP_VM_TESTS").as_deref() == Ok("1") {
            eprintln!("skipped (VALE_SKIP_VM_TESTS=1): libvirtd not reachable");
            return;
        }
        panic!(
            "needs libvirtd (apt-get install libvirt-daemon-system; without systemd \
             start `virtlogd -d; libvirtd -d`, as scripts/setup-debian.sh does)"
        );
    }
    let d = Daemon::start("libvirt", &[("lv1", 1), ("lv2", 1)]);
    // QEMU under libvirt runs as libvirt-qemu (group kvm on Debian): the
    // operator gives that group the socket, as valed.8 says.
    for p in ["lv1", "lv2"] {
        let sock = d.port_socket(p);
        let st = Command::new("chgrp")
            .arg("kvm")
            .arg(&sock)
            .status()
            .unwrap();
        assert!(st.success());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660)).unwrap();
    }
    let name = format!("vale-test-{}", std::process::id());
    // QEMU runs as libvirt-qemu, which may not enter the checkout (it can
    // sit under /root, mode 0700): the kernel and initramfs go beside
    // valed's sockets.
    let boot_dir = d.dir.join("boot");
    std::fs::create_dir_all(&boot_dir).unwrap();
    let mut copied = Vec::new();
    for f in [&img.0, &img.1] {
        let to = boot_dir.join(f.file_name().unwrap());
        std::fs::copy(f, &to).unwrap();
        copied.push(to);
    }
    let lv_img = (copied[0].clone(), copied[1].clone());
    let mut spec = guest(&d, &lv_img, "lv1", 5, 1, false);
    spec.nics[0] = spec.nics[0].clone().no_mergeable_rx();
    let spec = GuestSpec {
        name: name.clone(),
        ..spec
    };
    std::fs::create_dir_all(&spec.dir).unwrap();
    let xml = vmm_integration::libvirt_domain_xml(&spec);
    let file = d.dir.join("domain.xml");
    std::fs::write(&file, &xml).unwrap();
    let _dom = Domain(name.clone());
    virsh(&["define", file.to_str().unwrap()]);
    virsh(&["start", &name]);
    let mut other = boot(&[guest(&d, &img, "lv2", 6, 1, true)]);
    let mut agent = vmm_integration::AgentClient::connect_timeout(
        &spec.agent_socket(),
        Duration::from_secs(30),
    )
    .expect("the domain's agent socket");
    agent.wait_ready(BOOT).expect("the libvirt domain boots");
    let out = agent
        .run("cat /sys/class/net/eth0/device/features", CMD)
        .expect("agent reads the virtio features");
    let bits = out.stdout.trim().as_bytes();
    // Bit 7 is VIRTIO_NET_F_GUEST_TSO4, 8 GUEST_TSO6, 15 MRG_RXBUF.
    for bit in [7, 8, 15] {
        assert_eq!(
            bits.get(bit),
            Some(&b'0'),
            "feature bit {bit}: {}",
            out.stdout
        );
    }
    // and what the device still offers is there (bit 0, CSUM).
    assert_eq!(bits.first(), Some(&b'1'), "{}", out.stdout);
    let out = agent
        .run("ping -c 3 -W 2 10.0.0.6", CMD)
        .expect("agent runs ping");
    assert_eq!(out.code, 0, "libvirt domain -> QEMU guest: {}", out.stdout);
    let out = other[0]
        .run_ok("ping -c 3 -W 2 10.0.0.5", CMD)
        .expect("QEMU guest -> libvirt domain");
    assert!(out.contains("3 packets received"), "{out}");
    let s = d.stats("vale0:lv1");
    assert!(s.contains("\"state\":\"running\""), "{s}");
    assert!(virsh(&["dominfo", &name]).contains("running"));
}

/// The PCI address of `g`'s eth0 (`0000:00:02.0`).
fn eth0_pci(g: &mut Guest) -> String {
    let out = g
        // eth0's device is the virtio device; its parent the PCI function.
        .run_ok("readlink -f /sys/class/net/eth0/device/..", CMD)
        .expect("eth0 is a PCI device");
    out.trim()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// pkt-gen's own virtio driver inside the guests (the guest-driver
/// crate's PCI transport through uio_pci_generic, memory in huge pages):
/// txseq in guest A -> valed -> rxseq in guest B, exact through a
/// backpressure port; then both functions are back with virtio_net and
/// the guests ping each other.
#[test]
fn pkt_gen_drives_the_virtio_function_inside_guests() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(img) = image() else { return };
    let d = Daemon::start("pci", &[("pa", 1), ("pb", 1)]);
    let mut vms = boot(&[
        guest(&d, &img, "pa", 1, 1, true),
        guest(&d, &img, "pb", 2, 1, true),
    ]);
    // Backpressure on B's port: a slow guest is waited for, not dropped.
    {
        use netmap::ctrl::{
            ValePortConfig, VALE_PORT_BACKPRESSURE, VALE_REQ_PORT_CONFIG, VALE_SET_FLAGS,
        };
        let bp = ValePortConfig {
            flags: VALE_PORT_BACKPRESSURE,
            set: VALE_SET_FLAGS,
            ..Default::default()
        };
        let c = CtrlConn::connect(&d.sock()).unwrap();
        let (r, _) = c
            .call(&Request::new(VALE_REQ_PORT_CONFIG, "vale0:pb", &bp).unwrap())
            .unwrap();
        assert_eq!(r.error, 0, "backpressure on vale0:pb");
    }
    let (a, b) = vms.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    for g in [&mut *a, &mut *b] {
        let has = g.run("test -x /bin/pkt-gen", CMD).expect("agent");
        assert!(
            has.success(),
            "the image has no /bin/pkt-gen: build it with VALE_PKTGEN (scripts/test.sh does)"
        );
        g.run_ok("echo 16 > /proc/sys/vm/nr_hugepages", CMD)
            .expect("huge pages");
        // The guests' own kernels stay quiet: no IPv6 neighbour or router
        // solicitation from A's eth0 may reach B's rxseq, which counts
        // every frame.
        g.run_ok(
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; ip link set eth0 down",
            CMD,
        )
        .expect("eth0 down");
    }
    // What A's kernel sent before its eth0 went down (IPv6 solicitations
    // and reports, when the boot was slow enough for them) is not txseq's:
    // counted from here, once the count settled.
    let mut sent_before = field(&d.stats("vale0:pa"), "in_packets");
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = field(&d.stats("vale0:pa"), "in_packets");
        if now == sent_before {
            break;
        }
        sent_before = now;
    }
    let (pa, pb) = (eth0_pci(a), eth0_pci(b));
    let n = 20_000;
    b.spawn_bg(&format!(
        "pkt-gen -i virtio:{pb},slots=256 -f rxseq -n {n} > /tmp/rx.log 2>&1"
    ))
    .unwrap();
    // The receiver's function leaves virtio_net when pkt-gen opens it.
    let t0 = Instant::now();
    while b.run("test -e /sys/class/net/eth0", CMD).unwrap().success() {
        if t0.elapsed() > Duration::from_secs(60) {
            let log = b.run_ok(
                "cat /tmp/rx.log; ls -l /sys/class/net/eth0/device/driver",
                CMD,
            );
            panic!("B's pkt-gen did not take eth0: {log:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = a
        .run_ok(
            &format!("pkt-gen -i virtio:{pa},slots=256 -f txseq -n {n} -l 200 2>&1"),
            Duration::from_secs(180),
        )
        .unwrap_or_else(|e| panic!("txseq in A: {e}"));
    assert!(out.contains(&format!("Sent {n} packets")), "{out}");
    let t0 = Instant::now();
    let rx = loop {
        let log = b.run_ok("cat /tmp/rx.log", CMD).unwrap_or_default();
        if log.contains("rxseq:") {
            break log;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "rxseq in B did not finish:\n{log}\nvaled: {}",
            d.stats("vale0:pb")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        rx.contains(&format!(
            "rxseq: {n} frames, seq 0..{}: 0 gaps (0 lost), 0 errors",
            n - 1
        )),
        "{rx}"
    );
    assert_eq!(
        field(&d.stats("vale0:pa"), "in_packets") - sent_before,
        n,
        "frames from A's port, {sent_before} of them before txseq"
    );
    eprintln!("guest A:\n{out}\nguest B:\n{rx}");
    // A receiver stopped by SIGTERM gives its function back as well.
    a.spawn_bg(&format!("pkt-gen -i virtio:{pa} -f rx > /tmp/rx.log 2>&1"))
        .unwrap();
    let t0 = Instant::now();
    while a.run("test -e /sys/class/net/eth0", CMD).unwrap().success() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "A's pkt-gen did not take eth0"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    a.run_ok("killall -TERM pkt-gen", CMD).unwrap();
    // Both functions went back to virtio_net: eth0 again, and the guests
    // reach each other through it.
    for g in [&mut *a, &mut *b] {
        let t0 = Instant::now();
        while !g.run("test -e /sys/class/net/eth0", CMD).unwrap().success() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{}: eth0 did not come back",
                g.name()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    a.run_ok("ip addr add 10.0.0.1/24 dev eth0; ip link set eth0 up", CMD)
        .unwrap();
    b.run_ok("ip addr add 10.0.0.2/24 dev eth0; ip link set eth0 up", CMD)
        .unwrap();
    ping_until(a, "10.0.0.2", Duration::from_secs(30));
}

/// Waits until `cmd` in `g` prints something containing `want`; its output.
fn wait_output(g: &mut Guest, cmd: &str, want: &str, limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let out = g.run(cmd, CMD).expect("agent");
        if out.stdout.contains(want) {
            return out.stdout;
        }
        assert!(
            t0.elapsed() < limit,
            "{}: `{cmd}` did not print {want:?} in {limit:?}: {}",
            g.name(),
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs `cmd` on `g`'s monitor, waiting for `info migrate` to say the
/// migration ended; its status (`completed`, `failed`, `cancelled`) and
/// how long it took.
fn migrate(g: &mut Guest, to: &Path) -> (String, Duration) {
    let t0 = Instant::now();
    let out = g
        .hmp(&format!("migrate -d unix:{}", to.display()), CMD)
        .expect("migrate");
    assert!(!out.contains("rror"), "migrate: {out}");
    loop {
        let info = g.hmp("info migrate", CMD).expect("info migrate");
        let st = info
            .lines()
            .find_map(|l| l.strip_prefix("Migration status: "))
            .unwrap_or("")
            .trim()
            .to_string();
        if st == "completed" || st == "failed" || st == "cancelled" {
            // QEMU's own figures: total time and downtime (7.2 and 10
            // word them differently).
            for l in info.lines().filter(|l| l.to_lowercase().contains("time")) {
                eprintln!("info migrate: {}", l.trim());
            }
            return (st, t0.elapsed());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "migration did not end: {info}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Guest pages (4 KiB, of `mib` MiB from address 0) that differ between
/// two stopped guests, as their monitors' `pmemsave` write them.
fn differing_pages(a: &mut Guest, b: &mut Guest, mib: u64, dir: &Path) -> Vec<u64> {
    let len = mib << 20;
    let mut mem = Vec::new();
    for (g, f) in [(a, "a.mem"), (b, "b.mem")] {
        let path = dir.join(f);
        g.hmp(&format!("pmemsave 0 {len} \"{}\"", path.display()), CMD)
            .expect("pmemsave");
        let t0 = Instant::now();
        while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < len {
            assert!(
                t0.elapsed() < CMD,
                "pmemsave of {} did not finish",
                g.name()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        mem.push(std::fs::read(&path).unwrap());
        let _ = std::fs::remove_file(&path);
    }
    (0..len / 4096)
        .filter(|&p| {
            let r = (p * 4096) as usize..((p + 1) * 4096) as usize;
            mem[0][r.clone()] != mem[1][r]
        })
        .collect()
}

/// QEMU 7.2 migrating under TCG loses guest-CPU writes: a guest with no
/// NIC at all (valed plays no part), busy writing files, migrated to a
/// stopped destination, whose memory then differs from the stopped
/// source's on some pages in most runs. This is why
/// `a_guest_migrates_under_traffic` runs its migrating guest under a newer
/// QEMU where KVM is missing: under TCG, a 7.2 destination guest can crash
/// whatever the NIC does. QEMU 10.0 passes it every time:
/// `PATH=$(dirname $(scripts/fetch-qemu-backports.sh)):$PATH cargo test …`.
#[test]
#[ignore = "shows a QEMU 7.2 TCG migration defect (no valed involved); run by hand"]
fn qemu_tcg_migration_of_a_busy_guest_without_nics() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(img) = image() else { return };
    let d = Daemon::start("tcg-control", &[]);
    let mut spec = guest(&d, &img, "busy", 1, 1, true);
    spec.nics.clear();
    let mut a = boot(std::slice::from_ref(&spec)).pop().unwrap();
    let mig = d.dir.join("busy.mig");
    let dst_spec = GuestSpec {
        dir: d.dir.join("vm-busy-dst"),
        ..spec.clone()
    }
    .incoming(&format!("unix:{}", mig.display()))
    .paused();
    let mut dst = Guest::start_with(&dst_spec, Vmm::Qemu).expect("destination QEMU starts");
    wait_for_file(&mig);
    a.spawn_bg(
        "while true; do dd if=/dev/urandom of=/tmp/x bs=1M count=20 2>/dev/null; \
         ls -R /proc >/dev/null 2>&1; done",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (st, _) = migrate(&mut a, &mig);
    assert_eq!(st, "completed");
    let diff = differing_pages(&mut a, &mut dst, 384, &d.dir);
    assert!(
        diff.is_empty(),
        "{} pages differ between the stopped source and destination: {:?}",
        diff.len(),
        &diff[..diff.len().min(20)]
    );
}

/// Waits for a destination QEMU to listen on its migration socket.
fn wait_for_file(p: &Path) {
    let t0 = Instant::now();
    while !p.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "destination QEMU did not listen on {}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Live migration (QEMU): guest A moves from its QEMU on port vm1 to a
/// second, stopped QEMU on port vm1b of the same switch (`-incoming`,
/// `migrate` over a local socket) while guest B sends it a 48 MiB file
/// over HTTP, an iperf3 TCP stream and pings. With both stopped, the
/// destination's memory equals the source's page for page (every page
/// valed wrote during the copy was logged and copied again); then it runs:
/// the file arrives bit for bit, the stream completes, ping loss is
/// bounded, and the switch moved A's MAC to vm1b (SEND_RARP) and counted
/// the station move.
///
/// QEMU 7.2 (Debian 12's) under TCG loses guest-CPU writes in a migration
/// even with no NIC (`qemu_tcg_migration_of_a_busy_guest_without_nics`),
/// so there the memory check fails, and the guest may crash, whatever valed
/// does. QEMU 10.0 does not. So the migrating guest (source and
/// destination) runs the QEMU named by `VALE_MIGRATION_QEMU` when it is set
/// (`scripts/test.sh` sets it to bookworm-backports' QEMU, unpacked by
/// `scripts/fetch-qemu-backports.sh`); guest B keeps the system's QEMU.
/// Without it the test runs under KVM, or with `VALE_MIGRATION_TCG=1`.
#[test]
fn a_guest_migrates_under_traffic() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(img) = image() else { return };
    let mig_qemu = std::env::var_os("VALE_MIGRATION_QEMU").map(PathBuf::from);
    if let Some(q) = &mig_qemu {
        assert!(
            q.is_file(),
            "VALE_MIGRATION_QEMU={}: no such file (scripts/fetch-qemu-backports.sh prints one)",
            q.display()
        );
    } else if !Accel::from_env_or_probe().is_kvm()
        && std::env::var("VALE_MIGRATION_TCG").as_deref() != Ok("1")
    {
        eprintln!(
            "skipped: no KVM, and QEMU 7.2 under TCG loses guest writes in migration; \
             VALE_MIGRATION_QEMU=$(scripts/fetch-qemu-backports.sh) runs it with QEMU 10 \
             (VALE_MIGRATION_TCG=1 with the system's QEMU)"
        );
        return;
    }
    let d = Daemon::start("migrate", &[("vm1", 1), ("vm1b", 1), ("vm2", 1)]);
    let mut spec_a = guest(&d, &img, "vm1", 1, 1, true);
    if let Some(q) = &mig_qemu {
        eprintln!("the migrating guest runs {}", q.display());
        spec_a = spec_a.vmm_binary(q);
    }
    let mut vms = boot(&[spec_a.clone(), guest(&d, &img, "vm2", 2, 1, true)]);
    let mut b = vms.pop().unwrap();
    let mut a = vms.pop().unwrap();
    ping_until(&mut b, "10.0.0.1", Duration::from_secs(30));

    // The destination: the same machine and guest, on vm1b, stopped.
    let mig = d.dir.join("vm1.mig");
    let spec_dst = GuestSpec {
        dir: d.dir.join("vm-vm1-dst"),
        nics: vec![NicSpec::new(d.port_socket("vm1b"), mac(1)).queue_pairs(1)],
        ..spec_a.clone()
    }
    .incoming(&format!("unix:{}", mig.display()))
    .paused();
    let mut dst = Guest::start_with(&spec_dst, Vmm::Qemu).expect("destination QEMU starts");
    wait_for_file(&mig);

    // Traffic B -> A: a 48 MiB file over HTTP (busybox httpd and wget;
    // iperf3 -F is not byte-exact), an iperf3 TCP stream at 40 Mbit/s for
    // 10 s, and pings every 100 ms for 15 s.
    let sum = b
        .run_ok(
            "mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/f bs=1M count=48 2>/dev/null \
             && httpd -p 8080 -h /tmp/www && sha256sum /tmp/www/f",
            CMD,
        )
        .expect("file served");
    let sum = sum.split_whitespace().next().unwrap().to_string();
    // Control: the same transfer without a migration arrives whole.
    fetch_whole(&mut a, &sum, "the control transfer");
    stream_and_ping(&mut a, &mut b, 150);
    std::thread::sleep(Duration::from_secs(1));
    a.spawn_bg("wget -q -O /tmp/got http://10.0.0.2:8080/f; echo exit=$? > /tmp/wget.txt")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let (status, took) = migrate(&mut a, &mig);
    let t_done = Instant::now();
    assert_eq!(status, "completed", "valed log:\n{}", d.log());
    eprintln!("migration completed in {:.1} s", took.as_secs_f64());
    // Both stopped: the copy is exact.
    let diff = differing_pages(&mut a, &mut dst, 384, &d.dir);
    assert!(
        diff.is_empty(),
        "{} guest pages differ between the stopped source and destination: {:?}",
        diff.len(),
        &diff[..diff.len().min(20)]
    );
    let held = t_done.elapsed();
    dst.hmp("cont", CMD).expect("cont");
    // QEMU's own announcement went out while the test held the guest
    // stopped (and was dropped there): announce again, as an operator
    // would after `cont` (without GUEST_ANNOUNCE, QEMU asks the port:
    // SEND_RARP).
    dst.hmp("announce_self", CMD).expect("announce_self");
    dst.wait_ready(Duration::from_secs(60))
        .expect("the migrated guest answers on the destination");

    // The stream completed; the file is whole on the destination.
    stream_done(&mut b, "over the migration");
    let w = wait_output(
        &mut dst,
        "cat /tmp/wget.txt",
        "exit=",
        Duration::from_secs(120),
    );
    assert!(w.contains("exit=0"), "wget over the migration: {w}");
    let got = dst.run_ok("sha256sum /tmp/got", CMD).expect("sum");
    assert!(
        got.contains(&sum),
        "the file that reached the migrated guest changed (sent {sum}): {got}"
    );
    let (tx, rx, ping) = pings_done(&mut b);
    eprintln!(
        "ping every 100 ms over the migration: {rx}/{tx} answered, about {} ms lost, \
         {:.1} s of which the test held the destination stopped to compare memory",
        (tx - rx) * 100,
        held.as_secs_f64()
    );
    // Beyond the time the test held the guest: at most 2 s.
    let lost_ms = (tx - rx) * 100;
    assert!(
        lost_ms <= held.as_millis() as u64 + 2000,
        "{lost_ms} ms of pings lost: {ping}"
    );

    // The switch moved A's MAC to vm1b: frames go there. (On a fast host
    // the transfer above can end before the switchover, and TCP's backoff
    // over the held destination can keep the stream quiet after it: a
    // second transfer, after the migration, goes through vm1b for sure.)
    let all = d.stats("");
    assert!(field(&all, "moves") >= 1, "no station move: {all}");
    let before = field(&d.stats("vale0:vm1b"), "out_bytes");
    fetch_whole(&mut dst, &sum, "the transfer after the migration");
    let s = d.stats("vale0:vm1b");
    eprintln!(
        "vm1b: {} MiB out during and after the migration, then {} MiB for the second transfer",
        before >> 20,
        (field(&s, "out_bytes") - before) >> 20
    );
    assert!(field(&s, "out_bytes") - before > 40 << 20, "{s}");
    assert!(d.log().contains("SEND_RARP"), "{}", d.log());
    let _ = a.quit(Duration::from_secs(10));
    let _ = dst.quit(Duration::from_secs(10));
}

/// Two "hosts" (network namespaces), each with its own valed and a switch
/// `vale0`, joined by a veth pair attached to both switches as NIC ports.
/// Guests A and B run on host 1; A migrates to a QEMU on host 2 while B
/// pings it and streams iperf3 to it. QEMU's announcement (SEND_RARP)
/// leaves host 2's port, crosses the wire and moves A's MAC on host 1's
/// switch from A's old port to the NIC port: B's traffic follows A to the
/// other host, the stream completes and ping loss is bounded.
/// Runs under the same conditions as `a_guest_migrates_under_traffic`.
#[test]
fn a_guest_migrates_to_another_host() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(img) = image() else { return };
    if !nic::testing::root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let mig_qemu = std::env::var_os("VALE_MIGRATION_QEMU").map(PathBuf::from);
    if mig_qemu.is_none()
        && !Accel::from_env_or_probe().is_kvm()
        && std::env::var("VALE_MIGRATION_TCG").as_deref() != Ok("1")
    {
        eprintln!(
            "skipped: no KVM and no VALE_MIGRATION_QEMU (see a_guest_migrates_under_traffic)"
        );
        return;
    }
    let id = std::process::id();
    let hosts = Netns(vec![format!("vale-mig1-{id}"), format!("vale-mig2-{id}")]);
    let (h1, h2) = (&hosts.0[0], &hosts.0[1]);
    let (w1, w2) = (format!("mg{id}a"), format!("mg{id}b"));
    for ns in [h1, h2] {
        ip(&["netns", "add", ns]);
    }
    ip(&[
        "link", "add", &w1, "netns", h1, "type", "veth", "peer", "name", &w2, "netns", h2,
    ]);
    for (ns, dev) in [(h1, &w1), (h2, &w2)] {
        // The hosts' own stacks stay quiet on the wire (no IPv6 neighbour
        // discovery into the switches).
        ip(&[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
        ]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    let d1 = Daemon::start_in("mig-h1", &[("vm1", 1), ("vm2", 1)], Some(h1));
    let d2 = Daemon::start_in("mig-h2", &[("vm1", 1)], Some(h2));
    d1.attach(&format!("vale0:{w1}"));
    d2.attach(&format!("vale0:{w2}"));

    let mut spec_a = guest(&d1, &img, "vm1", 1, 1, true);
    if let Some(q) = &mig_qemu {
        spec_a = spec_a.vmm_binary(q);
    }
    let mut vms = boot(&[spec_a.clone(), guest(&d1, &img, "vm2", 2, 1, true)]);
    let mut b = vms.pop().unwrap();
    let mut a = vms.pop().unwrap();
    ping_until(&mut b, "10.0.0.1", Duration::from_secs(30));

    // The destination: the same guest on host 2's port vm1, running as
    // soon as the migration completes.
    let mig = d2.dir.join("vm1.mig");
    let spec_dst = GuestSpec {
        dir: d2.dir.join("vm-vm1-dst"),
        nics: vec![NicSpec::new(d2.port_socket("vm1"), mac(1)).queue_pairs(1)],
        ..spec_a.clone()
    }
    .incoming(&format!("unix:{}", mig.display()));
    let mut dst = Guest::start_with(&spec_dst, Vmm::Qemu).expect("destination QEMU starts");
    wait_for_file(&mig);

    stream_and_ping(&mut a, &mut b, 120);
    std::thread::sleep(Duration::from_secs(2));
    let (status, took) = migrate(&mut a, &mig);
    assert_eq!(status, "completed", "host 1's valed log:\n{}", d1.log());
    eprintln!(
        "migration to the other host completed in {:.1} s",
        took.as_secs_f64()
    );
    dst.wait_ready(Duration::from_secs(60))
        .expect("the migrated guest answers on host 2");

    stream_done(&mut b, "over the migration to the other host");
    let (tx, rx, ping) = pings_done(&mut b);
    eprintln!(
        "ping every 100 ms over the migration to the other host: {rx}/{tx} answered, \
         about {} ms lost",
        (tx - rx) * 100
    );
    assert!(
        (tx - rx) * 100 <= 2000,
        "more than 2 s of pings lost: {ping}"
    );

    // Host 1's switch moved A's MAC from vm1 to the wire; the stream's
    // bytes crossed it into host 2's vm1.
    let all = d1.stats("");
    assert!(
        field(&all, "moves") >= 1,
        "no station move on host 1: {all}"
    );
    let s = d2.stats("vale0:vm1");
    assert!(field(&s, "out_bytes") > 10 << 20, "host 2's vm1: {s}");
    assert!(d2.log().contains("SEND_RARP"), "{}", d2.log());
    let _ = a.quit(Duration::from_secs(10));
    let _ = dst.quit(Duration::from_secs(10));
}

/// Network namespaces made by a test, deleted when it ends.
struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `ip args`, which must succeed.
fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {args:?}");
}

/// In the background: B streams iperf3 to A (10.0.0.1) for 10 s at
/// 40 Mbit/s, and pings it `pings` times, every 100 ms.
/// B's file (`/tmp/www/f`, served on 10.0.0.2:8080) fetched by `g` arrives
/// whole: its sha256 is `sum`.
fn fetch_whole(g: &mut Guest, sum: &str, what: &str) {
    let got = g
        .run_ok(
            "wget -q -O /tmp/got0 http://10.0.0.2:8080/f && sha256sum /tmp/got0 && rm /tmp/got0",
            CMD,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(got.contains(sum), "{what} changed the file: {got}");
}

fn stream_and_ping(a: &mut Guest, b: &mut Guest, pings: u32) {
    a.spawn_bg("iperf3 -s -1 > /tmp/iperf-s.txt 2>&1").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    b.spawn_bg(
        "iperf3 -c 10.0.0.1 -t 10 -b 40M > /tmp/iperf.txt 2>&1; echo exit=$? >> /tmp/iperf.txt",
    )
    .unwrap();
    b.spawn_bg(&format!(
        "ping -i 0.1 -c {pings} -W 1 10.0.0.1 > /tmp/ping.txt 2>&1; echo exit=$? >> /tmp/ping.txt"
    ))
    .unwrap();
}

/// Waits for [`stream_and_ping`]'s stream: it completed; its 1-s
/// intervals are printed, labelled `what`.
fn stream_done(b: &mut Guest, what: &str) {
    let iperf = wait_output(b, "cat /tmp/iperf.txt", "exit=", Duration::from_secs(120));
    assert!(iperf.contains("exit=0"), "iperf3 client: {iperf}");
    eprintln!("iperf3 {what}:");
    for l in iperf.lines().filter(|l| l.contains("bits/sec")) {
        eprintln!("  {l}");
    }
}

/// Waits for [`stream_and_ping`]'s pings: (sent, answered, ping's output).
fn pings_done(b: &mut Guest) -> (u64, u64, String) {
    let ping = wait_output(b, "cat /tmp/ping.txt", "exit=", Duration::from_secs(60));
    let (tx, rx) = ping_counts(&ping);
    (tx, rx, ping)
}

/// (transmitted, received) from ping's summary.
fn ping_counts(ping: &str) -> (u64, u64) {
    ping.lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| {
            let n: Vec<u64> = l
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            Some((*n.first()?, *n.get(1)?))
        })
        .unwrap_or_else(|| panic!("no ping summary: {ping}"))
}
