//! NIC ports: a Linux interface attached to a switch through the generic
//! adapter (`vale-ctl -a vale0:eth0`), detached with `-d`. Root only: an
//! interface is the host's, not a tenant's. The switch a NIC joins is
//! made by root (shared) if it does not exist yet.

use std::os::fd::AsFd;

use super::*;

/// A NIC on a switch.
pub struct NicPort {
    /// Its switch and index there.
    pub switch: String,
    /// Index on the switch.
    pub id: PortId,
    /// The forwarding unit's registration id.
    pub unit_id: u64,
    /// The forwarding thread holding its receive ring.
    pub fwd: usize,
    /// The interface's index when attached.
    pub ifindex: u32,
}

/// Whether `name` names an interface of this host (and could be one: no
/// path separators, at most IFNAMSIZ - 1 bytes).
pub(super) fn is_interface(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && !name.contains(['/', '\0'])
        && name != "."
        && name != ".."
        && std::path::Path::new("/sys/class/net").join(name).exists()
}

impl Registry {
    /// Attaches interface `ifname` to `switch`; its index there.
    pub(super) fn nic_attach(
        &mut self,
        conn: &Conn,
        ifname: &str,
        switch: &str,
    ) -> Result<PortId, Errno> {
        limits::check_nic(ifname, conn.uid)?;
        if self.nics.contains_key(ifname) {
            return Err(libc::EBUSY);
        }
        let nic = nic::GenericNic::open(ifname).map_err(|e| {
            tracing::warn!("NIC {ifname} not attached: {e}");
            e.errno()
        })?;
        let ifindex = nic.ifindex;
        let sw = self.switch(switch, 0)?;
        let kick = nic
            .rx
            .as_fd()
            .try_clone_to_owned()
            .map_err(|_| libc::EMFILE)?;
        let cfg = PortConfig {
            vnet_hdr_len: nic::VNET_HDR_LEN as u16,
            offloads: vale::port::OFFLOAD_CSUM
                | vale::port::OFFLOAD_TSO4
                | vale::port::OFFLOAD_TSO6,
            ..Default::default()
        };
        let full = format!("{switch}:{ifname}");
        let id = sw
            .attach(&full, cfg, Box::new(nic.tx))
            .map_err(|e| match e {
                vale::SwitchError::Full(_) => libc::ENOMEM,
                vale::SwitchError::Exists { .. } => libc::EEXIST,
                _ => libc::EINVAL,
            })?;
        let unit_id = self.next_unit;
        self.next_unit += 1;
        let fwd = self.next_fwd % self.fwd.len().max(1);
        self.next_fwd += 1;
        if let Some(f) = self.fwd.get(fwd) {
            f.add(Unit {
                reg: unit_id,
                path: Path::Switch {
                    switch: sw.clone(),
                    port: id,
                },
                source: UnitSource::Nic(Box::new(nic.rx)),
                // The receive socket: readable when the kernel hands a
                // block over. Reading it returns nothing (frames go to the
                // ring), so the forwarding thread's drain is harmless.
                kick: Arc::new(EventFd::from_fd(kick)),
            });
        }
        self.nics.insert(
            ifname.to_string(),
            NicPort {
                switch: switch.to_string(),
                id,
                unit_id,
                fwd,
                ifindex,
            },
        );
        info!(port = full, index = id, "NIC attached (generic adapter)");
        Ok(id)
    }

    /// Detaches interface `ifname` from `switch`; the index it had.
    pub(super) fn nic_detach(
        &mut self,
        conn: &Conn,
        ifname: &str,
        switch: &str,
    ) -> Result<PortId, Errno> {
        limits::check_nic(ifname, conn.uid)?;
        match self.nics.get(ifname) {
            Some(n) if n.switch == switch => {}
            _ => return Err(libc::ENXIO),
        }
        let n = self.nics.remove(ifname).expect("checked");
        if let Some(f) = self.fwd.get(n.fwd) {
            f.remove(n.unit_id);
        }
        if let Some(s) = self.switches.get(&n.switch) {
            let _ = s.sw.detach(n.id);
            if s.sw.ports().is_empty() {
                info!(switch = n.switch, "switch removed (no ports)");
                self.switches.remove(&n.switch);
            }
        }
        info!(port = format!("{switch}:{ifname}"), "NIC detached");
        Ok(n.id)
    }

    /// Detaches, with a log line, every NIC whose interface is gone
    /// (deleted, renamed, or moved to another namespace): its rings pass
    /// nothing any more, and its port should not stay listed.
    pub fn check_nics(&mut self) {
        let gone: Vec<(String, String)> = self
            .nics
            .iter()
            .filter(|(name, n)| nic::if_index(name) != Some(n.ifindex))
            .map(|(name, n)| (name.clone(), n.switch.clone()))
            .collect();
        let root = Conn {
            id: 0,
            uid: 0,
            reg: None,
        };
        for (ifname, switch) in gone {
            tracing::warn!(
                port = format!("{switch}:{ifname}"),
                "interface gone while attached: detached"
            );
            let _ = self.nic_detach(&root, &ifname, &switch);
        }
    }
}
