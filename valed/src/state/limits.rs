//! Every limit a uid is held to and every ownership rule, checked here and
//! only here: ports, switches and VM ports per uid, shared memory per uid,
//! whose switch a port may join, whose port a request may change. Root is
//! held to none of them.
//!
//! A check that fails returns a [`Refused`] naming the uid, the thing and
//! the limit. It becomes an errno at the wire (`From<Refused> for Errno`),
//! and that conversion is where the refusal is logged, once.

use super::*;

/// Why a request was refused by policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// The uid holds its quota of ports of every kind.
    #[error("uid {uid} holds {have} ports, its quota (--quota-ports {quota}): {what} not made")]
    Ports {
        /// Who asked.
        uid: u32,
        /// What it asked for.
        what: String,
        /// Ports it holds.
        have: usize,
        /// Its quota.
        quota: usize,
    },
    /// The uid holds its quota of VM ports.
    #[error("uid {uid} has {have} VM ports, its quota (--quota-vhost {quota}): {what} not made")]
    VmPorts {
        /// Who asked.
        uid: u32,
        /// What it asked for.
        what: String,
        /// VM ports it holds.
        have: usize,
        /// Its quota.
        quota: usize,
    },
    /// The uid made its quota of switches.
    #[error(
        "uid {uid} made {have} switches, its quota (--quota-switches {quota}): {what} not made"
    )]
    Switches {
        /// Who asked.
        uid: u32,
        /// The switch it would have made.
        what: String,
        /// Switches it owns.
        have: usize,
        /// Its quota.
        quota: usize,
    },
    /// Every switch index is taken.
    #[error("all {MAX_SWITCHES} switches exist: {what} not made")]
    NoSwitchIndex {
        /// The switch that would have been made.
        what: String,
    },
    /// The uid would hold more shared memory than its quota.
    #[error("uid {uid} holds {have} bytes of shared memory, {asked} more is past its quota (--quota-mem, {quota} bytes)")]
    Memory {
        /// Who asked.
        uid: u32,
        /// Bytes it holds.
        have: u64,
        /// Bytes it asked for.
        asked: u64,
        /// Its quota.
        quota: u64,
    },
    /// The switch is another uid's and not shared with this one.
    #[error("switch {switch} belongs to uid {owner}, not shared with uid {uid}")]
    NotYourSwitch {
        /// The switch.
        switch: String,
        /// Who asked.
        uid: u32,
        /// Whose it is.
        owner: u32,
    },
    /// The name is of a switch root made: it stays root's after its last
    /// port goes, so that root's next attach cannot land on a switch a
    /// user made under that name meanwhile.
    #[error("switch {switch} is root's (root's ports made it): uid {uid} may not make a switch of that name")]
    RootsSwitchName {
        /// The switch.
        switch: String,
        /// Who asked.
        uid: u32,
    },
    /// Only root may put a host interface on a switch.
    #[error("{ifname} is a host interface: only root may attach or detach it (uid {uid})")]
    NicNeedsRoot {
        /// The interface.
        ifname: String,
        /// Who asked.
        uid: u32,
    },
    /// The port (or pipe) is another uid's.
    #[error("{port} belongs to uid {owner}, not to uid {uid}")]
    NotYourPort {
        /// The port.
        port: String,
        /// Who asked.
        uid: u32,
        /// Whose it is.
        owner: u32,
    },
}

impl Refused {
    /// The errno netmap's clients get for it.
    pub fn errno(&self) -> Errno {
        match self {
            Refused::Ports { .. } | Refused::VmPorts { .. } | Refused::Switches { .. } => {
                libc::ENOSPC
            }
            Refused::NoSwitchIndex { .. } | Refused::Memory { .. } => libc::ENOMEM,
            Refused::NotYourSwitch { .. }
            | Refused::RootsSwitchName { .. }
            | Refused::NotYourPort { .. }
            | Refused::NicNeedsRoot { .. } => libc::EPERM,
        }
    }
}

impl From<Refused> for Errno {
    fn from(r: Refused) -> Errno {
        tracing::warn!("refused: {r}");
        r.errno()
    }
}

/// `uid` using or changing `what`, which belongs to `owner`: the owner or
/// root only.
pub(super) fn check_owner(what: &str, owner: u32, uid: u32) -> Result<(), Refused> {
    if uid != 0 && uid != owner {
        return Err(Refused::NotYourPort {
            port: what.into(),
            uid,
            owner,
        });
    }
    Ok(())
}

/// `uid` attaching or detaching host interface `ifname`: root only.
pub(super) fn check_nic(ifname: &str, uid: u32) -> Result<(), Refused> {
    if uid != 0 {
        return Err(Refused::NicNeedsRoot {
            ifname: ifname.into(),
            uid,
        });
    }
    Ok(())
}

impl Registry {
    /// Ports of every kind `uid` holds.
    fn ports_of(&self, uid: u32) -> usize {
        self.ports.values().filter(|p| p.owner == uid).count()
            + self.vhost.values().filter(|v| v.spec.owner == uid).count()
    }

    /// A new port `what` for `uid`, and if `vm`, a VM port.
    pub(super) fn check_port_quota(&self, uid: u32, what: &str, vm: bool) -> Result<(), Refused> {
        if uid == 0 {
            return Ok(());
        }
        let have = self.ports_of(uid);
        if have >= self.quotas.ports {
            return Err(Refused::Ports {
                uid,
                what: what.into(),
                have,
                quota: self.quotas.ports,
            });
        }
        let vms = self.vhost.values().filter(|v| v.spec.owner == uid).count();
        if vm && vms >= self.quotas.vhost_ports {
            return Err(Refused::VmPorts {
                uid,
                what: what.into(),
                have: vms,
                quota: self.quotas.vhost_ports,
            });
        }
        Ok(())
    }

    /// A new switch `what` made by `uid`'s port.
    pub(super) fn check_switch_quota(&self, uid: u32, what: &str) -> Result<(), Refused> {
        if self.switches.len() >= MAX_SWITCHES {
            return Err(Refused::NoSwitchIndex { what: what.into() });
        }
        let have = self.switches.values().filter(|s| s.owner == uid).count();
        if uid != 0 && have >= self.quotas.switches {
            return Err(Refused::Switches {
                uid,
                what: what.into(),
                have,
                quota: self.quotas.switches,
            });
        }
        Ok(())
    }

    /// `uid`'s port joining switch `name` (which exists): its owner's,
    /// root's, a root switch, or one shared with `uid`.
    pub(super) fn check_may_join(&self, name: &str, uid: u32) -> Result<(), Refused> {
        match self.switches.get(name) {
            Some(s) if uid != 0 && s.owner != 0 && s.owner != uid && !s.share.contains(&uid) => {
                Err(Refused::NotYourSwitch {
                    switch: name.into(),
                    uid,
                    owner: s.owner,
                })
            }
            _ => Ok(()),
        }
    }

    /// `uid` changing switch `name`'s sharing: its owner or root.
    pub(super) fn check_switch_owner(&self, name: &str, uid: u32) -> Result<(), Refused> {
        match self.switches.get(name) {
            Some(s) if uid != 0 && s.owner != uid => Err(Refused::NotYourSwitch {
                switch: name.into(),
                uid,
                owner: s.owner,
            }),
            _ => Ok(()),
        }
    }

    /// `conn` changing or removing port `key` (which exists): its owner or
    /// root.
    pub(super) fn check_port_owner(&self, conn: &Conn, key: &str) -> Result<(), Refused> {
        match self.ports.get(key) {
            Some(p) => check_owner(key, p.owner, conn.uid),
            None => Ok(()),
        }
    }

    /// Bytes of regions `uid` holds now.
    fn mem_of(&self, uid: u32) -> u64 {
        // A region shared by several ports counts once, to its owner.
        let mut regions = BTreeMap::new();
        for p in self.ports.values() {
            let m = lock(&p.mem);
            if m.region.owner() == uid {
                regions.insert(p.mem_id, m.region.memsize() as u64);
            }
        }
        // A zero-copy monitor keeps its port's region after the port goes.
        for z in self.zmons.values() {
            let (owner, size) = z.region();
            if owner == uid {
                regions.insert(z.mem_id(), size);
            }
        }
        let ports = regions.into_values();
        let pipes = self
            .pipes
            .values()
            .filter(|p| p.owner == uid)
            .map(|p| p.region.memsize() as u64);
        let monitors = self
            .monitors
            .values()
            .filter(|m| m.owner() == uid)
            .map(|m| m.memsize());
        ports.chain(pipes).chain(monitors).sum()
    }

    /// `more` bytes of region for `uid`.
    pub(super) fn check_mem_quota(&self, uid: u32, more: u64) -> Result<(), Refused> {
        let have = self.mem_of(uid);
        if uid != 0 && have.saturating_add(more) > self.quotas.mem_bytes {
            return Err(Refused::Memory {
                uid,
                have,
                asked: more,
                quota: self.quotas.mem_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_netmaps_errnos_and_name_the_limit() {
        let r = Refused::Ports {
            uid: 1000,
            what: "vale0:a".into(),
            have: 64,
            quota: 64,
        };
        assert_eq!(r.errno(), libc::ENOSPC);
        assert!(r.to_string().contains("--quota-ports 64"), "{r}");
        let r = Refused::NotYourSwitch {
            switch: "valeA".into(),
            uid: 1,
            owner: 65534,
        };
        assert_eq!(Errno::from(r), libc::EPERM);
        let r = Refused::Memory {
            uid: 7,
            have: 1,
            asked: 2,
            quota: 2,
        };
        assert_eq!(r.errno(), libc::ENOMEM);
    }

    #[test]
    fn root_is_held_to_nothing() {
        let mut reg = Registry::new(Vec::new());
        reg.quotas = Quotas {
            mem_bytes: 0,
            vhost_ports: 0,
            ports: 0,
            switches: 0,
            connections: 0,
        };
        assert_eq!(reg.check_port_quota(0, "x", true), Ok(()));
        assert_eq!(reg.check_switch_quota(0, "vale0"), Ok(()));
        assert_eq!(reg.check_mem_quota(0, 1 << 40), Ok(()));
        assert!(reg.check_port_quota(5, "x", false).is_err());
        assert!(reg.check_switch_quota(5, "vale0").is_err());
        assert!(reg.check_mem_quota(5, 1).is_err());
    }
}
