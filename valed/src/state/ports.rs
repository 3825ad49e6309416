//! Ports by name: NEWIF/DELIF of persistent ports, ATTACH/DETACH, and
//! the information requests. A port belongs to its creator's uid.

use super::*;

impl Registry {
    /// A region of `owner`'s for `nports` ports of `layout` and `regs`
    /// registrations, under the next memory id, within `owner`'s memory
    /// quota: the one place ports, pipes and monitors get their memory.
    pub(super) fn new_region(
        &mut self,
        owner: u32,
        layout: &PortLayout,
        nports: u32,
        regs: u32,
    ) -> Result<Region, Errno> {
        let mut cfg =
            RegionConfig::for_ports(layout, nports, regs).map_err(|e| region_errno(&e))?;
        // hugetlb only on request: a client can punch a hole in a hugetlb
        // memfd (seals do not stop fallocate), and if the pool is empty
        // valed's next touch of that page is a SIGBUS. Shared 4 KiB pages
        // just refault as zeroes.
        cfg.huge_pages = self.huge_pages;
        let mem_id = self.next_mem_id;
        self.next_mem_id = self.next_mem_id.checked_add(1).unwrap_or(1);
        let region = Region::new(mem_id, owner, &cfg).map_err(|e| region_errno(&e))?;
        self.check_mem_quota(owner, region.memsize() as u64)?;
        Ok(region)
    }

    pub(super) fn new_port(
        &mut self,
        name: &str,
        owner: u32,
        layout: PortLayout,
        persistent: bool,
    ) -> Result<Port, Errno> {
        self.check_port_quota(owner, name, false)?;
        // Each ring is bound by at most one registration at a time, so a
        // port has at most one registration per ring.
        let regs = layout.tx_rings + layout.rx_rings;
        let mut region = self.new_region(owner, &layout, 1, regs)?;
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        for i in 0..layout.tx_rings {
            tx.push(
                region
                    .alloc_ring(Dir::Tx, i as u16, layout.tx_slots)
                    .map_err(|e| region_errno(&e))?,
            );
        }
        for i in 0..layout.rx_rings {
            rx.push(
                region
                    .alloc_ring(Dir::Rx, i as u16, layout.rx_slots)
                    .map_err(|e| region_errno(&e))?,
            );
        }
        Ok(Port {
            name: name.to_string(),
            owner,
            persistent,
            region,
            layout,
            tx,
            rx,
            hdr_len: 0,
            attached: None,
            sink: SinkSlot::default(),
            regs: Vec::new(),
        })
    }

    /// A port for an information request: as [`lookup`](Self::lookup),
    /// or a persistent port of that name even if it is not attached.
    pub(super) fn find_any(&self, name: &str) -> Result<&Port, Errno> {
        let (switch, pname) = Self::vale_name(name)?;
        let key = self.lookup(&switch, &pname).unwrap_or(pname);
        match self.ports.get(&key) {
            Some(p) if p.persistent || key.contains(':') => Ok(p),
            _ => Err(libc::ENXIO),
        }
    }

    pub(super) fn port_info(&mut self, req: &Request, name: &str) -> Answer {
        let p = match self.find_any(name) {
            Ok(p) => p,
            Err(e) => return err(req, e),
        };
        let body = NmreqPortInfoGet {
            nr_memsize: p.region.memsize() as u64,
            nr_tx_slots: p.layout.tx_slots,
            nr_rx_slots: p.layout.rx_slots,
            nr_tx_rings: p.tx.len() as u16,
            nr_rx_rings: p.rx.len() as u16,
            nr_host_tx_rings: 1,
            nr_host_rx_rings: 1,
            nr_mem_id: p.region.mem_id(),
            ..Default::default()
        };
        let mut r = req.clone();
        r.set_body(&body);
        (0, r, Vec::new())
    }

    pub(super) fn pools_info(&mut self, req: &Request, name: &str) -> Answer {
        let p = match self.find_any(name) {
            Ok(p) => p,
            Err(e) => return err(req, e),
        };
        let body = p.region.pools_info();
        let mut r = req.clone();
        r.set_body(&body);
        (0, r, Vec::new())
    }

    pub(super) fn owned(&self, conn: &Conn, key: &str) -> Result<(), Errno> {
        self.ports.get(key).ok_or(libc::ENXIO)?;
        Ok(self.check_port_owner(conn, key)?)
    }

    pub(super) fn vale_newif(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let Ok(b) = req.body_as::<NmreqValeNewif>() else {
            return err(req, libc::EINVAL);
        };
        // netmap: not a name of an existing interface, not "vale…", ≤ 15 chars.
        let bad = name.is_empty()
            || name.len() > 15
            || name.starts_with("vale")
            || name.contains(|c: char| c == ':' || c == '/' || c.is_whitespace());
        if bad {
            return err(req, libc::EINVAL);
        }
        if self.ports.contains_key(name)
            || self.vhost.contains_key(name)
            || std::path::Path::new("/sys/class/net").join(name).exists()
        {
            return err(req, libc::EEXIST);
        }
        let d = self.default_slots;
        let pick = |v: u32| if v == 0 { d } else { v };
        let layout = PortLayout {
            tx_rings: u32::from(b.nr_tx_rings).max(1),
            rx_rings: u32::from(b.nr_rx_rings).max(1),
            tx_slots: pick(b.nr_tx_slots),
            rx_slots: pick(b.nr_rx_slots),
            extra_bufs: PERSISTENT_EXTRA_BUFS,
            ..Default::default()
        };
        if layout.tx_rings > 16 || layout.rx_rings > 16 {
            return err(req, libc::EINVAL);
        }
        if b.nr_mem_id != 0 {
            // Regions are sized for their port when created, so a port
            // cannot move into another's yet.
            return err(req, libc::EOPNOTSUPP);
        }
        match self.new_port(name, conn.uid, layout, true) {
            Ok(p) => {
                info!(port = name, "persistent port created");
                // Answer with what was chosen, as netmap does.
                let chosen = NmreqValeNewif {
                    nr_tx_slots: p.layout.tx_slots,
                    nr_rx_slots: p.layout.rx_slots,
                    nr_tx_rings: p.tx.len() as u16,
                    nr_rx_rings: p.rx.len() as u16,
                    nr_mem_id: p.region.mem_id(),
                    ..Default::default()
                };
                self.ports.insert(name.to_string(), p);
                let mut r = req.clone();
                r.set_body(&chosen);
                (0, r, Vec::new())
            }
            Err(e) => err(req, e),
        }
    }

    pub(super) fn vale_delif(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        if let Some(v) = self.vhost.get(name) {
            if let Err(r) = limits::check_owner(name, v.spec.owner, conn.uid) {
                return err(req, r.into());
            }
            if v.attached.is_some() {
                return err(req, libc::EBUSY);
            }
            self.vhost.remove(name);
            self.save_state();
            info!(port = name, "vhost-user port removed");
            return (0, req.clone(), Vec::new());
        }
        match self.ports.get(name) {
            Some(p) if p.persistent => {
                if let Err(e) = self.owned(conn, name) {
                    return err(req, e);
                }
                if p.attached.is_some() || !p.regs.is_empty() {
                    return err(req, libc::EBUSY);
                }
                self.ports.remove(name);
                info!(port = name, "persistent port removed");
                (0, req.clone(), Vec::new())
            }
            _ => err(req, libc::ENXIO),
        }
    }

    pub(super) fn vale_attach(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let Ok(b) = req.body_as::<NmreqValeAttach>() else {
            return err(req, libc::EINVAL);
        };
        let (switch, pname) = match Self::vale_name(name) {
            Ok(v) => v,
            Err(e) => return err(req, e),
        };
        // `vale-ctl -h`: a NIC with its host stack.
        let host = b.reg.nr_mode == NR_REG_NIC_SW;
        if let Some(v) = self.vhost.get(&pname) {
            if let Err(r) = limits::check_owner(name, v.spec.owner, conn.uid) {
                return err(req, r.into());
            }
            let res = self.vhost_attach(&pname, &switch);
            if res.is_ok() {
                self.save_state();
            }
            return attached(req, b, res);
        }
        if !self.ports.contains_key(&pname) && nics::is_interface(&pname) {
            let res = self.nic_attach(conn, &pname, &switch, host);
            return attached(req, b, res);
        }
        match self.ports.get(&pname) {
            Some(p) if p.persistent && !host => {}
            _ => return err(req, libc::ENXIO),
        }
        if let Err(e) = self.owned(conn, &pname) {
            return err(req, e);
        }
        let res = self.attach(&pname, &switch);
        attached(req, b, res)
    }

    pub(super) fn vale_detach(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let (switch, pname) = match Self::vale_name(name) {
            Ok(v) => v,
            Err(e) => return err(req, e),
        };
        if let Some(v) = self.vhost.get(&pname) {
            if v.attached.as_ref().map(|a| a.0.as_str()) != Some(switch.as_str()) {
                return err(req, libc::ENXIO);
            }
            if let Err(r) = limits::check_owner(name, v.spec.owner, conn.uid) {
                return err(req, r.into());
            }
            return match self.vhost_detach(&pname) {
                Ok(idx) => {
                    self.save_state();
                    detached(req, idx)
                }
                Err(e) => err(req, e),
            };
        }
        if self.nics.contains_key(&pname) {
            return match self.nic_detach(conn, &pname, &switch) {
                Ok(idx) => detached(req, idx),
                Err(e) => err(req, e),
            };
        }
        let Some(key) = self.lookup(&switch, &pname) else {
            return err(req, libc::ENXIO);
        };
        let p = &self.ports[&key];
        if !p.persistent {
            return err(req, libc::EINVAL);
        }
        if !p.regs.is_empty() {
            return err(req, libc::EBUSY);
        }
        if let Err(e) = self.owned(conn, &key) {
            return err(req, e);
        }
        let idx = p.attached.as_ref().map_or(0, |a| a.1);
        match self.detach(&key) {
            Ok(()) => detached(req, idx),
            Err(e) => err(req, e),
        }
    }
}

/// ATTACH's answer: the index the port got, or the errno.
fn attached(req: &Request, mut b: NmreqValeAttach, res: Result<PortId, Errno>) -> Answer {
    match res {
        Ok(id) => {
            b.port_index = u32::from(id);
            let mut r = req.clone();
            r.set_body(&b);
            (0, r, Vec::new())
        }
        Err(e) => err(req, e),
    }
}

/// DETACH's answer: the index the port had.
fn detached(req: &Request, idx: PortId) -> Answer {
    let mut r = req.clone();
    r.set_body(&NmreqValeDetach {
        port_index: u32::from(idx),
        ..Default::default()
    });
    (0, r, Vec::new())
}
