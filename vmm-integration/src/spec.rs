//! What a guest is: [`GuestSpec`] and its NICs ([`NicSpec`]), shared by the
//! QEMU launcher, the libvirt XML and the Cloud Hypervisor command line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::accel::Accel;

/// Longest Unix socket path (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Most queue pairs a NIC may ask for (valed's limit).
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// The virtio-serial port name the guest agent listens on
/// (`/dev/virtio-ports/vale.agent` in the guest).
pub const AGENT_PORT_NAME: &str = "vale.agent";

/// A spec that cannot become a guest.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Names become file names and QEMU ids.
    #[error("guest name {0:?}: use 1-32 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Name(String),
    /// A MAC address that does not parse.
    #[error("MAC address {0:?}: expected six hex bytes separated by ':'")]
    Mac(String),
    /// A multicast source MAC cannot be a NIC's address.
    #[error("MAC address {0}: the multicast bit is set")]
    MulticastMac(MacAddr),
    /// Queue pairs out of range.
    #[error("NIC {socket}: {queue_pairs} queue pairs, expected 1..={max}", max = MAX_QUEUE_PAIRS)]
    QueuePairs {
        /// The NIC's socket.
        socket: PathBuf,
        /// The count asked for.
        queue_pairs: u16,
    },
    /// A Unix socket path longer than `sun_path`.
    #[error("socket path {path} is {len} bytes, longer than {max}", max = MAX_SOCKET_PATH)]
    SocketPath {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// Memory or CPUs out of range.
    #[error("guest {name}: {what}")]
    Size {
        /// The guest.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// The kernel command line would break out of its quoting.
    #[error("guest {name}: kernel command line extras contain a newline or NUL")]
    Append {
        /// The guest.
        name: String,
    },
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast address `52:54:00:56:<a>:<b>` (QEMU's
    /// OUI prefix, then "V" for vale and two bytes of `n`).
    pub fn local(n: u16) -> MacAddr {
        let [a, b] = n.to_be_bytes();
        MacAddr([0x52, 0x54, 0x00, 0x56, a, b])
    }

    /// A locally administered unicast address for NIC `index` of guest
    /// `name`: `52:54:00:<h>:<h>:<index+1>` with 16 bits of an FNV-1a hash of
    /// the name, so guests started separately (two `vale-vm run`) differ.
    pub fn for_guest(name: &str, index: u8) -> MacAddr {
        let mut h: u32 = 0x811c_9dc5;
        for b in name.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let h = (h ^ (h >> 16)) as u16;
        let [a, b] = h.to_be_bytes();
        MacAddr([0x52, 0x54, 0x00, a, b, index.wrapping_add(1)])
    }

    /// Whether the group (multicast) bit is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(|| SpecError::Mac(s.to_string()))?;
            if p.is_empty() || p.len() > 2 {
                return Err(SpecError::Mac(s.to_string()));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| SpecError::Mac(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(SpecError::Mac(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

/// One virtio-net NIC on a vhost-user socket (valed listens there; the VMM
/// connects and reconnects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// valed's vhost-user socket for this port.
    pub socket: PathBuf,
    /// The guest's MAC address (QEMU does not read it from the backend).
    pub mac: MacAddr,
    /// Queue pairs (1 = no multiqueue).
    pub queue_pairs: u16,
    /// Whether the device offers the guest TSO/UFO/ECN on receive
    /// (QEMU's `guest_tso4`, `guest_tso6`, `guest_ecn`, `guest_ufo`). Off,
    /// the switch must segment large frames in software for this guest.
    /// Set for QEMU and libvirt (`<guest tso4='off' …/>`); not passed to
    /// Cloud Hypervisor ([`cloud_hypervisor_argv`](crate::cloud_hypervisor_argv)).
    pub guest_tso: bool,
    /// Whether the device offers mergeable receive buffers (QEMU's
    /// `mrg_rxbuf`). Off, a Linux guest that takes TSO frames posts each
    /// receive buffer as a chain of a header and pages ("big packets").
    /// Set for QEMU and libvirt (`<host mrg_rxbuf='off'/>`); not passed to
    /// Cloud Hypervisor.
    pub mergeable_rx: bool,
}

impl NicSpec {
    /// One queue pair.
    pub fn new(socket: impl Into<PathBuf>, mac: MacAddr) -> NicSpec {
        NicSpec {
            socket: socket.into(),
            mac,
            queue_pairs: 1,
            guest_tso: true,
            mergeable_rx: true,
        }
    }

    /// Without receive segmentation offloads in the guest.
    pub fn no_guest_tso(mut self) -> NicSpec {
        self.guest_tso = false;
        self
    }

    /// Without mergeable receive buffers.
    pub fn no_mergeable_rx(mut self) -> NicSpec {
        self.mergeable_rx = false;
        self
    }

    /// With `n` queue pairs.
    pub fn queue_pairs(mut self, n: u16) -> NicSpec {
        self.queue_pairs = n;
        self
    }
}

/// A guest: kernel and initramfs from `images/`, memory shared with valed
/// (memfd), NICs on vhost-user sockets, and a runtime directory holding the
/// agent socket, the monitor socket and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSpec {
    /// Short name: QEMU's `-name`, log lines, the default runtime directory.
    pub name: String,
    /// Kernel image (`images/out/vmlinuz`).
    pub kernel: PathBuf,
    /// Initramfs (`images/out/initramfs.cpio.gz`).
    pub initrd: PathBuf,
    /// Guest memory in MiB (all of it a shared memfd).
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Kernel command line after `console=ttyS0 panic=-1`, e.g.
    /// `vale.ip=10.0.0.1/24`.
    pub append: String,
    /// NICs, in PCI order (the guest's eth0, eth1, …).
    pub nics: Vec<NicSpec>,
    /// KVM or TCG.
    pub accel: Accel,
    /// Runtime directory: `agent.sock`, `monitor.sock`, `console.log`,
    /// `vmm.log`. Default: `$TMPDIR/vale-vm-<name>-<pid>`.
    pub dir: PathBuf,
    /// Start paused, waiting for a live migration on this URI (QEMU's
    /// `-incoming`, e.g. `unix:/run/vm1.mig`).
    pub incoming: Option<String>,
    /// Start with the vCPUs stopped (QEMU's `-S`; `cont` on the monitor
    /// runs them), e.g. to compare a migrated guest's memory first.
    pub paused: bool,
    /// The VMM program to run instead of the one found on `PATH` (e.g. a
    /// newer QEMU unpacked beside the system's, see
    /// `scripts/fetch-qemu-backports.sh`).
    pub vmm_binary: Option<PathBuf>,
}

impl GuestSpec {
    /// A guest with 512 MiB, one vCPU, no NICs, TCG (set [`GuestSpec::accel`]
    /// from [`Accel::probe`] to use KVM where it works).
    pub fn new(
        name: impl Into<String>,
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
    ) -> GuestSpec {
        let name = name.into();
        let dir = std::env::temp_dir().join(format!("vale-vm-{}-{}", name, std::process::id()));
        GuestSpec {
            name,
            kernel: kernel.into(),
            initrd: initrd.into(),
            memory_mib: 512,
            cpus: 1,
            append: String::new(),
            nics: Vec::new(),
            accel: Accel::Tcg {
                why: "not probed".to_string(),
            },
            dir,
            incoming: None,
            paused: false,
            vmm_binary: None,
        }
    }

    /// Starts with the vCPUs stopped (QEMU's `-S`).
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self
    }

    /// Runs `program` instead of the VMM found on `PATH`.
    pub fn vmm_binary(mut self, program: impl Into<PathBuf>) -> Self {
        self.vmm_binary = Some(program.into());
        self
    }

    /// Waits for a live migration on `uri` instead of booting (QEMU).
    pub fn incoming(mut self, uri: &str) -> Self {
        self.incoming = Some(uri.to_string());
        self
    }

    /// Memory in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// vCPUs.
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }

    /// Appends `extra` (space-separated) to the kernel command line extras.
    pub fn append(mut self, extra: &str) -> Self {
        if !self.append.is_empty() && !extra.is_empty() {
            self.append.push(' ');
        }
        self.append.push_str(extra);
        self
    }

    /// Adds a NIC.
    pub fn nic(mut self, nic: NicSpec) -> Self {
        self.nics.push(nic);
        self
    }

    /// The accelerator.
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }

    /// The runtime directory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// The full kernel command line.
    pub fn cmdline(&self) -> String {
        let mut s = String::from("console=ttyS0 panic=-1");
        if !self.append.is_empty() {
            s.push(' ');
            s.push_str(&self.append);
        }
        s
    }

    /// The agent's socket (the VMM listens, the host connects).
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// QEMU's HMP monitor socket.
    pub fn monitor_socket(&self) -> PathBuf {
        self.dir.join("monitor.sock")
    }

    /// The serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The VMM's own stdout and stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }

    /// Checks names, sizes, MACs, queue counts and socket path lengths.
    pub fn validate(&self) -> Result<(), SpecError> {
        let n = &self.name;
        let name_ok = !n.is_empty()
            && n.len() <= 32
            && !n.starts_with(['.', '-'])
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(SpecError::Name(n.clone()));
        }
        if self.memory_mib < 64 {
            return Err(SpecError::Size {
                name: n.clone(),
                what: format!("{} MiB of memory, at least 64 needed", self.memory_mib),
            });
        }
        if !(1..=64).contains(&self.cpus) {
            return Err(SpecError::Size {
                name: n.clone(),
                what: format!("{} vCPUs, expected 1..=64", self.cpus),
            });
        }
        if self.append.contains(['\n', '\0']) {
            return Err(SpecError::Append { name: n.clone() });
        }
        for nic in &self.nics {
            if !(1..=MAX_QUEUE_PAIRS).contains(&nic.queue_pairs) {
                return Err(SpecError::QueuePairs {
                    socket: nic.socket.clone(),
                    queue_pairs: nic.queue_pairs,
                });
            }
            if nic.mac.is_multicast() {
                return Err(SpecError::MulticastMac(nic.mac));
            }
            check_socket_path(&nic.socket)?;
        }
        check_socket_path(&self.agent_socket())?;
        check_socket_path(&self.monitor_socket())?;
        Ok(())
    }
}

fn check_socket_path(p: &Path) -> Result<(), SpecError> {
    let len = p.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(SpecError::SocketPath {
            path: p.to_path_buf(),
            len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:0f:00".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:xz".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab::0f".parse::<MacAddr>().is_err());
        assert_eq!(MacAddr::local(0x0102).to_string(), "52:54:00:56:01:02");
        let (a, b) = (MacAddr::for_guest("vm1", 0), MacAddr::for_guest("vm2", 0));
        assert_ne!(a, b);
        assert_eq!(a, MacAddr::for_guest("vm1", 0));
        assert_eq!(MacAddr::for_guest("vm1", 1).0[..5], a.0[..5]);
        assert_eq!(MacAddr::for_guest("vm1", 1).0[5], 2);
        assert!(!a.is_multicast());
    }

    #[test]
    fn validate_catches_bad_specs() {
        let ok = GuestSpec::new("vm1", "/k", "/i").dir("/tmp/x");
        ok.validate().unwrap();
        assert!(matches!(
            GuestSpec::new("a b", "/k", "/i").validate(),
            Err(SpecError::Name(_))
        ));
        assert!(matches!(
            ok.clone().memory_mib(16).validate(),
            Err(SpecError::Size { .. })
        ));
        let nic = NicSpec::new("/run/vale/vm1.sock", MacAddr::local(1));
        assert!(matches!(
            ok.clone().nic(nic.clone().queue_pairs(0)).validate(),
            Err(SpecError::QueuePairs { .. })
        ));
        assert!(matches!(
            ok.clone()
                .nic(NicSpec::new("/s", "01:00:5e:00:00:01".parse().unwrap()))
                .validate(),
            Err(SpecError::MulticastMac(_))
        ));
        let long = format!("/tmp/{}", "x".repeat(120));
        assert!(matches!(
            ok.clone()
                .nic(NicSpec::new(long, MacAddr::local(1)))
                .validate(),
            Err(SpecError::SocketPath { .. })
        ));
        assert!(matches!(
            ok.clone().append("a\nb").validate(),
            Err(SpecError::Append { .. })
        ));
    }

    #[test]
    fn cmdline_has_console_first() {
        let s = GuestSpec::new("vm1", "/k", "/i")
            .append("vale.ip=10.0.0.1/24")
            .append("quiet");
        assert_eq!(
            s.cmdline(),
            "console=ttyS0 panic=-1 vale.ip=10.0.0.1/24 quiet"
        );
    }
}
