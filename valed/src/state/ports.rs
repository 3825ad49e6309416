//! Ports by name: NEWIF/DELIF of persistent ports, ATTACH/DETACH, and
//! the information requests. A port belongs to its creator's uid.

use super::*;

impl Registry {
    /// A region of `owner`'s for `nports` ports of `layout` and `regs`
    /// registrations, under memory id `id` (the next free one if `None`),
    /// within `owner`'s memory quota: the one place ports, pipes and
    /// monitors get their memory.
    pub(super) fn new_region(
        &mut self,
        owner: u32,
        layout: &PortLayout,
        nports: u32,
        regs: u32,
        id: Option<u16>,
    ) -> Result<Region, Errno> {
        let mut cfg =
            RegionConfig::for_ports(layout, nports, regs).map_err(|e| region_errno(&e))?;
        // hugetlb only on request: a client can punch a hole in a hugetlb
        // memfd (seals do not stop fallocate), and if the pool is empty
        // valed's next touch of that page is a SIGBUS. Shared 4 KiB pages
        // just refault as zeroes.
        cfg.huge_pages = self.huge_pages;
        let mem_id = match id {
            Some(id) => id,
            None => self.alloc_mem_id()?,
        };
        let region = Region::new(mem_id, owner, &cfg).map_err(|e| region_errno(&e))?;
        self.check_mem_quota(owner, region.memsize() as u64)?;
        Ok(region)
    }

    /// Whether a port, pipe or monitor has region `id`.
    pub(super) fn mem_id_used(&self, id: u16) -> bool {
        self.ports.values().any(|p| p.mem_id == id)
            || self.pipes.values().any(|p| p.region.mem_id() == id)
            || self.monitors.values().any(|m| m.mem_id() == id)
            || self.zmons.values().any(|z| z.mem_id() == id)
    }

    /// The next memory id no region has, from 2 up and round again (1
    /// stays for clients to name, as netmap's global region), as netmap
    /// hands out its private allocators' ids.
    fn alloc_mem_id(&mut self) -> Result<u16, Errno> {
        let mut id = self.next_mem_id;
        for _ in 0..u16::MAX {
            if id < 2 {
                id = 2;
            }
            if !self.mem_id_used(id) {
                self.next_mem_id = id.wrapping_add(1);
                return Ok(id);
            }
            id = id.wrapping_add(1);
        }
        Err(libc::ENOMEM)
    }

    /// A port `name` of `owner`'s with `layout`'s rings: in a region of its
    /// own, or in the shared region `mem` (`@N`, `vale-ctl -m N`), which is
    /// made for `--mem-ports` ports of this one's shape if no region has
    /// that id yet (netmap has no such step: its allocators exist first).
    pub(super) fn new_port(
        &mut self,
        name: &str,
        owner: u32,
        layout: PortLayout,
        persistent: bool,
        mem: Option<u16>,
    ) -> Result<Port, Errno> {
        self.check_port_quota(owner, name, false)?;
        // Each ring is bound by at most one registration at a time, so a
        // port has at most one registration per ring.
        let regs = layout.tx_rings + layout.rx_rings;
        let (memref, joined) = match mem {
            None => {
                let region = self.new_region(owner, &layout, 1, regs, None)?;
                (Mem::new(region, false), false)
            }
            // The region: a port's, or one a zero-copy monitor keeps
            // after its port left.
            Some(id) => match self
                .ports
                .values()
                .find(|p| p.mem_id == id)
                .map(|p| &p.mem)
                .or_else(|| {
                    self.zmons
                        .values()
                        .find(|z| z.mem_id() == id)
                        .map(|z| z.mem())
                }) {
                Some(memref) => {
                    let m = lock(memref);
                    // Any registration can read and write every buffer of
                    // its region: a region holds one uid's ports only.
                    // Root too is refused another uid's region, so that no
                    // tenant can make a region root's ports then land in
                    // (`vale-ctl -m 1`, a guessed id or port name).
                    if m.region.owner() != owner {
                        tracing::warn!(
                            mem_id = id,
                            region_owner = m.region.owner(),
                            uid = owner,
                            port = name,
                            "refused: a port in another uid's region"
                        );
                        return Err(libc::EPERM);
                    }
                    if !m.shared {
                        // A port's own region is sized for it alone (a
                        // full netmap allocator).
                        return Err(libc::ENOMEM);
                    }
                    (memref.clone(), true)
                }
                None if self.mem_id_used(id) => return Err(libc::EINVAL),
                None => {
                    // Room for ports of the default ring size too, and
                    // for extra buffers, as a persistent port has.
                    let d = self.default_slots;
                    let shape = PortLayout {
                        tx_slots: layout.tx_slots.max(d),
                        rx_slots: layout.rx_slots.max(d),
                        extra_bufs: layout.extra_bufs.max(PERSISTENT_EXTRA_BUFS),
                        ..layout
                    };
                    let k = self.mem_ports;
                    let region = self.new_region(owner, &shape, k, regs, Some(id))?;
                    info!(
                        mem_id = id,
                        ports = k,
                        bytes = region.memsize(),
                        "shared region made"
                    );
                    (Mem::new(region, true), false)
                }
            },
        };
        let mem_id = lock(&memref).region.mem_id();
        if joined {
            lock(&memref).ports += 1;
        }
        // From here the port frees what it took when dropped.
        let mut port = Port {
            name: name.to_string(),
            owner,
            persistent,
            mem: memref,
            mem_id,
            layout,
            tx: Vec::new(),
            rx: Vec::new(),
            hdr_len: 0,
            attached: None,
            sink: SinkSlot::default(),
            regs: Vec::new(),
            zmon_tx: (0..layout.tx_rings).map(|_| ZmonHook::new()).collect(),
            zmon_rx: (0..layout.rx_rings).map(|_| ZmonHook::new()).collect(),
        };
        // In a shared region, ring objects too small for this port, or
        // no room left, are a full allocator: ENOMEM, as netmap.
        let errno = |e: RegionError| {
            if joined || mem.is_some() {
                libc::ENOMEM
            } else {
                region_errno(&e)
            }
        };
        for (dir, n, slots) in [
            (Dir::Tx, layout.tx_rings, layout.tx_slots),
            (Dir::Rx, layout.rx_rings, layout.rx_slots),
        ] {
            for i in 0..n {
                let off = lock(&port.mem)
                    .region
                    .alloc_ring(dir, i as u16, slots)
                    .map_err(errno)?;
                match dir {
                    Dir::Tx => port.tx.push(off),
                    Dir::Rx => port.rx.push(off),
                }
            }
        }
        if joined {
            info!(port = name, mem_id, "port joins shared region");
        }
        Ok(port)
    }

    /// A port for an information request: as [`lookup`](Self::lookup),
    /// or a persistent port of that name even if it is not attached.
    pub(super) fn find_any(&self, name: &str) -> Result<&Port, Errno> {
        // A persistent port is an interface in netmap (`netmap:x`, as
        // `vale-ctl -n y -m netmap:x` names it).
        if let Ok(spec) = portname::parse_with(name, NR_NAME) {
            if let PortKind::Nic { ifname, .. } = &spec.name.kind {
                if let Some(p) = self.ports.get(ifname).filter(|p| p.persistent) {
                    return Ok(p);
                }
            }
        }
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
            nr_memsize: lock(&p.mem).region.memsize() as u64,
            nr_tx_slots: p.layout.tx_slots,
            nr_rx_slots: p.layout.rx_slots,
            nr_tx_rings: p.tx.len() as u16,
            nr_rx_rings: p.rx.len() as u16,
            nr_host_tx_rings: 1,
            nr_host_rx_rings: 1,
            nr_mem_id: p.mem_id,
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
        let body = lock(&p.mem).region.pools_info();
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
        let mem = (b.nr_mem_id != 0).then_some(b.nr_mem_id);
        match self.new_port(name, conn.uid, layout, true, mem) {
            Ok(p) => {
                info!(port = name, "persistent port created");
                // Answer with what was chosen, as netmap does.
                let chosen = NmreqValeNewif {
                    nr_tx_slots: p.layout.tx_slots,
                    nr_rx_slots: p.layout.rx_slots,
                    nr_tx_rings: p.tx.len() as u16,
                    nr_rx_rings: p.rx.len() as u16,
                    nr_mem_id: p.mem_id,
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
            if let Some(v) = self.vhost.remove(name) {
                v.port.delete();
            }
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
        // `vale-ctl -a vale0:x -m N`: an id that names no region is
        // EINVAL, as netmap, for every kind of port.
        if b.reg.nr_mem_id != 0 && !self.mem_id_used(b.reg.nr_mem_id) {
            return err(req, libc::EINVAL);
        }
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
            // A VM port's frames are in guest memory: no region to move.
            if b.reg.nr_mem_id != 0 {
                return err(req, libc::EOPNOTSUPP);
            }
            let res = self.vhost_attach(&pname, &switch);
            if res.is_ok() {
                self.save_state();
            }
            return attached(req, b, res);
        }
        if !self.ports.contains_key(&pname) && nics::is_interface(&pname) {
            // A NIC's rings are its own (AF_PACKET, AF_XDP): no region.
            if b.reg.nr_mem_id != 0 {
                return err(req, libc::EOPNOTSUPP);
            }
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
        // netmap moves an idle port into another region; valed does not
        // (its rings stay where they were made).
        let want = b.reg.nr_mem_id;
        if want != 0 && want != self.ports[&pname].mem_id {
            return err(req, libc::EOPNOTSUPP);
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
