//! Guests on valed's vhost-user ports: start QEMU (or Cloud Hypervisor) VMs
//! from `images/`, attached to valed's sockets, and run commands in them.
//!
//! - [`accel`]: KVM or TCG, decided by running two tiny guests on `/dev/kvm`.
//! - [`spec`]: [`GuestSpec`] and [`NicSpec`], what a guest is.
//! - [`agent`]: the line protocol to the guest's agent on virtio-serial.
//! - [`config`]: the libvirt domain XML and the Cloud Hypervisor line.
//! - [`qemu`]: the QEMU line and [`Guest`], a running VM.
//!
//! ```no_run
//! use std::time::Duration;
//! use vmm_integration::{Accel, Guest, GuestSpec, MacAddr, NicSpec};
//!
//! let spec = GuestSpec::new("vm1", "images/out/vmlinuz", "images/out/initramfs.cpio.gz")
//!     .append("vale.ip=10.0.0.1/24")
//!     .nic(NicSpec::new("/run/vale/vm1.sock", MacAddr::local(1)))
//!     .accel(Accel::from_env_or_probe());
//! let mut vm = Guest::start(&spec)?;
//! vm.wait_ready(Duration::from_secs(120))?;
//! let out = vm.run("ip -br addr", Duration::from_secs(10))?;
//! println!("{} (exit {})", out.stdout, out.code);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod accel;
pub mod agent;
pub mod config;
pub mod qemu;
pub mod spec;

pub use accel::{Accel, ProbeError};
pub use agent::{AgentClient, AgentError, FrameError, Output, ReplyParser};
pub use config::{cloud_hypervisor_argv, libvirt_domain_xml};
pub use qemu::{qemu_argv, Guest, GuestError, Vmm};
pub use spec::{GuestSpec, MacAddr, NicSpec, SpecError};
