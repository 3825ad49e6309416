//! NIC ports: a Linux interface attached to a switch through the generic
//! adapter (`vale-ctl -a vale0:eth0`), detached with `-d`. Root only: an
//! interface is the host's, not a tenant's. The switch a NIC joins is
//! made by root (shared) if it does not exist yet.

use std::os::fd::AsFd;

use super::*;

/// One side of a NIC on a switch: its index there and its receive units.
pub struct DevicePort {
    /// Index on the switch.
    pub id: PortId,
    /// Each receive queue's forwarding unit: its registration id and the
    /// forwarding thread holding it.
    pub units: Vec<(u64, usize)>,
}

/// A NIC on a switch, and its host stack port when attached with `-h`.
pub struct NicPort {
    /// Its switch.
    pub switch: String,
    /// The interface's side.
    pub nic: DevicePort,
    /// The host stack's side (`eth0^`, a TAP).
    pub host: Option<DevicePort>,
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

/// A host stack port's configuration: its TAP carries virtio-net headers
/// and takes partial checksums and TSO.
fn host_cfg() -> PortConfig {
    PortConfig {
        vnet_hdr_len: nic::VNET_HDR_LEN as u16,
        offloads: vale::port::OFFLOAD_CSUM | vale::port::OFFLOAD_TSO4 | vale::port::OFFLOAD_TSO6,
        ..Default::default()
    }
}

impl Registry {
    /// Attaches interface `ifname` to `switch`, and with `host` its host
    /// stack as `ifname^` (a TAP); the interface's index there.
    pub(super) fn nic_attach(
        &mut self,
        conn: &Conn,
        ifname: &str,
        switch: &str,
        host: bool,
    ) -> Result<PortId, Errno> {
        limits::check_nic(ifname, conn.uid)?;
        if self.nics.contains_key(ifname) {
            return Err(libc::EBUSY);
        }
        let refuse = |e: nic::NicError| {
            tracing::warn!("NIC {ifname} not attached: {e}");
            e.errno()
        };
        let nic = nic::open(ifname, self.admode).map_err(refuse)?;
        let kind = nic.kind();
        let tap = if host {
            Some(nic::HostTap::create(&format!("{ifname}^")).map_err(refuse)?)
        } else {
            None
        };
        let sw = self.switch(switch, 0)?;
        let ifindex = nic.ifindex();
        let full = format!("{switch}:{ifname}");
        let (queues, cfg) = nic.into_queues();
        // The switch sends through queue 0's transmit side; every queue's
        // receive side is a forwarding unit of its own.
        let mut rxs = Vec::new();
        let mut sink = None;
        for (rx, tx) in queues {
            sink.get_or_insert(tx);
            rxs.push(rx);
        }
        let sink = sink.ok_or(libc::ENXIO)?;
        let port = self.device_port(&sw, &full, (sink, cfg), rxs)?;
        let host = match tap {
            Some(t) => {
                match self.device_port(
                    &sw,
                    &format!("{full}^"),
                    (Box::new(t.tx), host_cfg()),
                    vec![t.rx],
                ) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        self.drop_device_port(&sw, &port);
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let id = port.id;
        let with_host = host.is_some();
        self.nics.insert(
            ifname.to_string(),
            NicPort {
                switch: switch.to_string(),
                nic: port,
                host,
                ifindex,
            },
        );
        info!(
            port = full,
            index = id,
            host_stack = with_host,
            adapter = kind,
            "NIC attached"
        );
        Ok(id)
    }

    /// Puts a device on `sw` as `name`: `sink` for what the switch sends
    /// it, and a forwarding unit reading each of `rxs`, woken by its fd
    /// (the device's, never read by the forwarding thread: that would take
    /// a frame).
    fn device_port<R: AsFd + vale::Source + Send + 'static>(
        &mut self,
        sw: &Arc<Switch>,
        name: &str,
        (sink, cfg): (Box<dyn Sink>, PortConfig),
        rxs: Vec<R>,
    ) -> Result<DevicePort, Errno> {
        let fds = rxs
            .iter()
            .map(|r| r.as_fd().try_clone_to_owned())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|_| libc::EMFILE)?;
        let id = sw.attach(name, cfg, sink).map_err(|e| match e {
            vale::SwitchError::Full(_) => libc::ENOMEM,
            vale::SwitchError::Exists { .. } => libc::EEXIST,
            _ => libc::EINVAL,
        })?;
        let mut units = Vec::new();
        for (rx, fd) in rxs.into_iter().zip(fds) {
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
                        source: Box::new(rx),
                    },
                    kick: Arc::new(EventFd::from_fd(fd)),
                    drain: false,
                });
            }
            units.push((unit_id, fwd));
        }
        Ok(DevicePort { id, units })
    }

    /// Takes a device port off its switch and its units off their threads.
    fn drop_device_port(&mut self, sw: &Arc<Switch>, p: &DevicePort) {
        for &(unit_id, fwd) in &p.units {
            if let Some(f) = self.fwd.get(fwd) {
                f.remove(unit_id);
            }
        }
        let _ = sw.detach(p.id);
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
        if let Some(s) = self.switches.get(&n.switch) {
            let sw = s.sw.clone();
            for p in std::iter::once(&n.nic).chain(n.host.as_ref()) {
                self.drop_device_port(&sw, p);
            }
            if sw.ports().is_empty() {
                info!(switch = n.switch, "switch removed (no ports)");
                self.switches.remove(&n.switch);
            }
        }
        info!(port = format!("{switch}:{ifname}"), "NIC detached");
        Ok(n.nic.id)
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
