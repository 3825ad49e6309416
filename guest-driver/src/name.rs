//! `virtio:` port names, beside netmap's grammar (which has no such
//! prefix): the device, then options as DPDK's virtio-user takes them.
//!
//! ```text
//! name    := "virtio:" target { ',' key '=' value }
//! target  := PATH                  a vhost-user socket (transport 1)
//!          | DDDD:BB:DD.F          a PCI function (transport 2, in a guest)
//! key     := queues | slots | mrg_rxbuf | event_idx | offloads
//! ```
//!
//! `queues` (queue pairs, 1..=128), `slots` (per ring, 64..=16384), and
//! 0 or 1 for the three feature switches. A socket path cannot contain `,`.

use std::fmt;
use std::path::PathBuf;

use crate::net::DriverConfig;
use crate::DriverError;

/// The prefix.
pub const PREFIX: &str = "virtio:";

/// A PCI function address, `domain:bus:device.function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAddr {
    /// Domain (segment).
    pub domain: u16,
    /// Bus.
    pub bus: u8,
    /// Device (0..32).
    pub dev: u8,
    /// Function (0..8).
    pub func: u8,
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.dev, self.func
        )
    }
}

impl PciAddr {
    /// `DDDD:BB:DD.F`, hexadecimal, as `lspci -D` and sysfs print it.
    pub fn parse(s: &str) -> Option<PciAddr> {
        let (dom, rest) = s.split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (dev, func) = rest.split_once('.')?;
        let hex = |t: &str, len: usize| {
            (t.len() == len && t.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(t, 16).ok())
                .flatten()
        };
        let (domain, bus, dev, func) = (hex(dom, 4)?, hex(bus, 2)?, hex(dev, 2)?, hex(func, 1)?);
        (dev < 32 && func < 8).then_some(PciAddr {
            domain: domain as u16,
            bus: bus as u8,
            dev: dev as u8,
            func: func as u8,
        })
    }
}

/// What a `virtio:` name opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtioTarget {
    /// A vhost-user socket.
    Socket(PathBuf),
    /// A virtio-net PCI function.
    Pci(PciAddr),
}

impl fmt::Display for VirtioTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VirtioTarget::Socket(p) => write!(f, "{}", p.display()),
            VirtioTarget::Pci(a) => write!(f, "{a}"),
        }
    }
}

/// A parsed `virtio:` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioName {
    /// The device.
    pub target: VirtioTarget,
    /// `queues=`.
    pub queues: Option<u16>,
    /// `slots=`.
    pub slots: Option<u32>,
    /// `mrg_rxbuf=`.
    pub mrg_rxbuf: Option<bool>,
    /// `event_idx=`.
    pub event_idx: Option<bool>,
    /// `offloads=`.
    pub offloads: Option<bool>,
}

impl VirtioName {
    /// None when `s` is not a `virtio:` name; else the name or what is
    /// wrong with it.
    pub fn parse(s: &str) -> Option<Result<VirtioName, DriverError>> {
        let rest = s.strip_prefix(PREFIX)?;
        Some(parse_rest(s, rest))
    }

    /// Overrides `cfg` with the options the name gives.
    pub fn apply(&self, cfg: &mut DriverConfig) {
        if let Some(q) = self.queues {
            cfg.queue_pairs = q;
        }
        if let Some(s) = self.slots {
            cfg.slots = s;
        }
        if let Some(m) = self.mrg_rxbuf {
            cfg.mrg_rxbuf = m;
        }
        if let Some(e) = self.event_idx {
            cfg.event_idx = e;
        }
        if let Some(o) = self.offloads {
            cfg.offloads = o;
        }
    }
}

fn parse_rest(whole: &str, rest: &str) -> Result<VirtioName, DriverError> {
    let bad = |why: String| DriverError::Config(format!("{whole}: {why}"));
    let mut parts = rest.split(',');
    let target = parts.next().unwrap_or_default();
    if target.is_empty() {
        return Err(bad("no socket path or PCI address after virtio:".into()));
    }
    let target = match PciAddr::parse(target) {
        Some(a) => VirtioTarget::Pci(a),
        None => VirtioTarget::Socket(PathBuf::from(target)),
    };
    let mut name = VirtioName {
        target,
        queues: None,
        slots: None,
        mrg_rxbuf: None,
        event_idx: None,
        offloads: None,
    };
    for opt in parts {
        let Some((k, v)) = opt.split_once('=') else {
            return Err(bad(format!("option {opt:?} is not key=value")));
        };
        let num = |lo: u32, hi: u32| -> Result<u32, DriverError> {
            v.parse::<u32>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| bad(format!("{k}={v}: a number from {lo} to {hi}")))
        };
        let flag = || -> Result<bool, DriverError> {
            match v {
                "0" => Ok(false),
                "1" => Ok(true),
                _ => Err(bad(format!("{k}={v}: 0 or 1"))),
            }
        };
        match k {
            "queues" => name.queues = Some(num(1, 128)? as u16),
            "slots" => name.slots = Some(num(64, 16384)?),
            "mrg_rxbuf" => name.mrg_rxbuf = Some(flag()?),
            "event_idx" => name.event_idx = Some(flag()?),
            "offloads" => name.offloads = Some(flag()?),
            _ => {
                return Err(bad(format!(
                    "unknown option {k:?} (queues, slots, mrg_rxbuf, event_idx, offloads)"
                )))
            }
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_pci_and_options() {
        assert!(VirtioName::parse("vale0:a").is_none());
        assert!(VirtioName::parse("netmap:eth0").is_none());
        let n = VirtioName::parse("virtio:/run/a.sock").unwrap().unwrap();
        assert_eq!(n.target, VirtioTarget::Socket("/run/a.sock".into()));
        let n = VirtioName::parse("virtio:0000:00:03.0,queues=2,mrg_rxbuf=0,event_idx=1,slots=512")
            .unwrap()
            .unwrap();
        assert_eq!(
            n.target,
            VirtioTarget::Pci(PciAddr {
                domain: 0,
                bus: 0,
                dev: 3,
                func: 0
            })
        );
        assert_eq!(n.target.to_string(), "0000:00:03.0");
        let mut cfg = DriverConfig::default();
        n.apply(&mut cfg);
        assert_eq!(
            (cfg.queue_pairs, cfg.slots, cfg.mrg_rxbuf, cfg.event_idx),
            (2, 512, false, true)
        );
        // A relative path that is not a PCI address is a path.
        let n = VirtioName::parse("virtio:0000:00:33.0").unwrap().unwrap();
        assert_eq!(n.target, VirtioTarget::Socket("0000:00:33.0".into()));
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        for (s, why) in [
            ("virtio:", "no socket path"),
            ("virtio:/a,queues=0", "queues=0"),
            ("virtio:/a,queues=x", "queues=x"),
            ("virtio:/a,slots=100000", "slots=100000"),
            ("virtio:/a,mrg_rxbuf=yes", "0 or 1"),
            ("virtio:/a,foo=1", "unknown option"),
            ("virtio:/a,queues", "not key=value"),
        ] {
            let e = VirtioName::parse(s).unwrap().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
