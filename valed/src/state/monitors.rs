//! Monitors: a registration whose RX rings get what a port on a switch
//! sends or receives.
//!
//! - Copy monitors (`vale0:a/r`, `/t`, `/rt`) have a region of their own
//!   (netmap's copy monitors use private memory too); the switch copies
//!   into it (`vale::Switch::add_monitor`), and nothing is done for a port
//!   that has no monitor.
//! - Zero-copy monitors (`/rz`, `/tz`, `/rtz`) have their rings in the
//!   monitored port's region, so they need room there (a port in a shared
//!   region, `@N`); the port's rings trade the buffers of the slots it is
//!   done with for the monitor's (`vale::ring_port::ZmonHook`).

use super::*;

/// One monitor registration.
pub(super) struct MonitorRec {
    owner: u32,
    region: Region,
    sw: Arc<Switch>,
    /// The monitored port's switch and name (`vale0`, `vale0:a`): a port
    /// detached and attached again gets its monitors back.
    switch: String,
    full: String,
    port: PortId,
    id: vale::MonitorId,
    dirs: u8,
    sink: vale::SharedSink,
    /// valed's end of the kick pipe, held open so a client that kicks
    /// anyway gets no EPIPE.
    _kick: Arc<EventFd>,
}

impl MonitorRec {
    pub(super) fn owner(&self) -> u32 {
        self.owner
    }
    pub(super) fn memsize(&self) -> u64 {
        self.region.memsize() as u64
    }
    pub(super) fn mem_id(&self) -> u16 {
        self.region.mem_id()
    }
}

impl ZmonRec {
    pub(super) fn mem_id(&self) -> u16 {
        self.mem_id
    }
    pub(super) fn mem(&self) -> &MemRef {
        &self.mem
    }
    /// Its region's owner and size.
    pub(super) fn region(&self) -> (u32, u64) {
        let m = lock(&self.mem);
        (m.region.owner(), m.region.memsize() as u64)
    }
}

/// One zero-copy monitor registration: its rings and `netmap_if` in the
/// monitored port's region, and the port's hooks it set.
pub(super) struct ZmonRec {
    mem: MemRef,
    /// Its region's id: the region lives while the monitor does, also
    /// after the port has gone, and is counted as the port's was.
    mem_id: u16,
    rings: Vec<usize>,
    nifp: usize,
    hooks: Vec<Arc<ZmonHook>>,
    /// The forwarding thread that sweeps the port's RX rings when the
    /// monitor's client kicks.
    fwd: usize,
    /// valed's end of the kick pipe, held open so a client that kicks
    /// gets no EPIPE.
    _kick: Arc<EventFd>,
}

/// What a monitor registration binds, by netmap's rules, for copy and
/// zero-copy monitors alike: one TX ring, which carries nothing, and an RX
/// ring per ring of the port (of either kind), each of the port's ring
/// size unless the request asks for another.
struct MonitorShape {
    rings: u32,
    slots: u32,
    /// The RX rings bound (`NR_REG_ALL_NIC` or `NR_REG_ONE_NIC`).
    sel: Vec<u16>,
    /// Whether the TX ring is bound too.
    with_tx: bool,
}

impl MonitorShape {
    /// For a port of `rings` rings of `slots` slots; EINVAL for a ring
    /// out of range, another mode, TX rings only (such a monitor could
    /// never see a frame) or more extra buffers than a port's.
    fn new(
        body: &NmreqRegister,
        mode: u32,
        ringid: u16,
        flags: u64,
        rings: u32,
        slots: u32,
    ) -> Result<MonitorShape, Errno> {
        let sel: Vec<u16> = match mode {
            NR_REG_ALL_NIC => (0..rings as u16).collect(),
            NR_REG_ONE_NIC if u32::from(ringid) < rings => vec![ringid],
            _ => return Err(libc::EINVAL),
        };
        if flags & NR_TX_RINGS_ONLY != 0 || body.nr_extra_bufs > PERSISTENT_EXTRA_BUFS {
            return Err(libc::EINVAL);
        }
        Ok(MonitorShape {
            rings,
            slots: if body.nr_rx_slots != 0 {
                body.nr_rx_slots
            } else {
                slots
            },
            sel,
            with_tx: (mode == NR_REG_ALL_NIC || ringid == 0) && flags & NR_RX_RINGS_ONLY == 0,
        })
    }

    /// The `netmap_if`'s rings, given the TX ring and the RX rings made.
    fn if_rings(&self, tx0: usize, rx: &[usize]) -> IfRings {
        IfRings {
            tx: vec![self.with_tx.then_some(tx0)],
            host_tx: vec![None],
            rx: (0..self.rings as u16)
                .map(|i| self.sel.contains(&i).then(|| rx[i as usize]))
                .collect(),
            host_rx: vec![None],
        }
    }

    /// The bound rings in CSB order (the TX ring, then the RX rings), with
    /// the ring index each stands for.
    fn bound(&self, tx0: usize, rx: &[usize]) -> Vec<(Dir, usize, u16)> {
        self.with_tx
            .then_some((Dir::Tx, tx0, 0))
            .into_iter()
            .chain(self.sel.iter().map(|&i| (Dir::Rx, rx[i as usize], i)))
            .collect()
    }

    /// REGISTER's answer for the monitor.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        body: &mut NmreqRegister,
        nifp: usize,
        region: &Region,
        mode: u32,
        ringid: u16,
        flags: u64,
    ) {
        body.nr_offset = nifp as u64;
        body.nr_memsize = region.memsize() as u64;
        body.nr_tx_slots = self.slots;
        body.nr_rx_slots = self.slots;
        body.nr_tx_rings = 1;
        body.nr_rx_rings = self.rings as u16;
        body.nr_host_tx_rings = 0;
        body.nr_host_rx_rings = 0;
        body.nr_mem_id = region.mem_id();
        body.nr_mode = mode;
        body.nr_ringid = ringid;
        body.nr_flags = flags;
    }
}

impl Registry {
    /// REGISTER of `switch:pname` as a monitor (`flags` has
    /// `NR_MONITOR_TX` and/or `NR_MONITOR_RX`). The monitored port must be
    /// on the switch, and `conn`'s: a monitor sees all of its traffic.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn register_monitor(
        &mut self,
        conn: &mut Conn,
        req: &Request,
        mut body: NmreqRegister,
        switch: &str,
        pname: &str,
        mode: u32,
        ringid: u16,
        flags: u64,
    ) -> Answer {
        let target = format!("{switch}:{pname}");
        // A port that is not on the switch is, for netmap, a port not in
        // netmap mode: EINVAL.
        let (swname, port) = match self.configurable(conn, &target, true) {
            Ok(at) => at,
            Err(libc::ENXIO) => return err(req, libc::EINVAL),
            Err(e) => return err(req, e),
        };
        let sw = self.switches[&swname].sw.clone();
        // As many RX rings as the port has rings of either kind, and its
        // ring size, unless the request asks for another (netmap's rule).
        let (rings, slots) = match self.lookup(switch, pname) {
            Some(key) => {
                let p = &self.ports[&key];
                (p.tx.len().max(p.rx.len()) as u32, p.layout.rx_slots)
            }
            None => {
                let q = self.vhost.get(pname).map_or(1, |v| v.spec.queues);
                (u32::from(q).max(1), self.default_slots)
            }
        };
        let shape = match MonitorShape::new(&body, mode, ringid, flags, rings, slots) {
            Ok(m) => m,
            Err(e) => return err(req, e),
        };
        let layout = PortLayout {
            tx_rings: 1,
            rx_rings: rings,
            tx_slots: shape.slots,
            rx_slots: shape.slots,
            extra_bufs: body.nr_extra_bufs,
            ..Default::default()
        };
        let mut region = match self.new_region(conn.uid, &layout, 1, 1, None) {
            Ok(r) => r,
            Err(e) => return err(req, e),
        };
        let Ok(tx0) = region.alloc_ring(Dir::Tx, 0, shape.slots) else {
            return err(req, libc::EINVAL);
        };
        let mut rx = Vec::new();
        for i in 0..rings {
            match region.alloc_ring(Dir::Rx, i as u16, shape.slots) {
                Ok(off) => rx.push(off),
                Err(e) => return err(req, region_errno(&e)),
            }
        }
        let if_name = if_name(req.hdr.name_str().unwrap_or_default());
        let rings_if = shape.if_rings(tx0, &rx);
        let nif = match region.pending_if(&if_name, &rings_if, body.nr_extra_bufs) {
            Ok(n) => n,
            Err(e) => return err(req, region_errno(&e)),
        };
        let bound = shape.bound(tx0, &rx);
        let Ok((csb, Bells { kick, irq, peer })) = Bells::with_csb(bound.len() as u32) else {
            return err(req, libc::ENOMEM);
        };
        let map = nif.map_arc();
        let mut sinks = Vec::new();
        for (idx, (dir, off, _)) in bound.into_iter().enumerate() {
            let idx = idx as u32;
            let Ok(geo) = RingGeometry::of(&nif, off) else {
                return err(req, libc::EIO);
            };
            KringState::new(dir, geo.num_slots).publish(&csb.entry(idx).expect("sized"));
            if dir == Dir::Rx {
                match RingSink::new(map.clone(), geo, csb.clone(), idx, irq.clone()) {
                    Ok(s) => sinks.push(s),
                    Err(_) => return err(req, libc::EIO),
                }
            }
        }
        // Nothing reads the kick end: a monitor never holds a sender, so
        // it never asks its client for kicks.
        let Ok(fds) = client_fds(&nif, &csb, peer) else {
            return err(req, libc::EMFILE);
        };
        let mut set = RingSinkSet::new();
        set.add(conn.id, sinks);
        let sink: vale::SharedSink = Arc::new(Mutex::new(set));
        let mut dirs = 0;
        if flags & NR_MONITOR_TX != 0 {
            dirs |= vale::MONITOR_TX;
        }
        if flags & NR_MONITOR_RX != 0 {
            dirs |= vale::MONITOR_RX;
        }
        let id = match sw.add_monitor(port, dirs, sink.clone()) {
            Ok(id) => id,
            Err(vale::SwitchError::TooManyMonitors { .. }) => return err(req, libc::EBUSY),
            Err(_) => return err(req, libc::ENXIO),
        };
        let nifp = nif.keep();
        shape.answer(&mut body, nifp, &region, mode, ringid, flags);
        info!(
            port = target,
            conn = conn.id,
            uid = conn.uid,
            tx = dirs & vale::MONITOR_TX != 0,
            rx = dirs & vale::MONITOR_RX != 0,
            "monitor registered"
        );
        self.monitors.insert(
            conn.id,
            MonitorRec {
                owner: conn.uid,
                region,
                sw,
                switch: swname.clone(),
                full: target.clone(),
                port,
                id,
                dirs,
                sink,
                _kick: kick,
            },
        );
        monitor_answer(conn, req, target, nifp, &body, fds)
    }

    /// Port `full` (`vale0:a`) of `owner` was just attached to `switch`:
    /// the monitors of a port of that name, registered by its owner or
    /// root, watch it again (a persistent or VM port detached and attached
    /// again, an ephemeral port its client opened again). Another uid's
    /// port of the same name is not watched.
    pub(super) fn reattach_monitors(&mut self, switch: &str, full: &str, owner: u32) {
        let Some(sw) = self.switches.get(switch).map(|s| s.sw.clone()) else {
            return;
        };
        let Some(port) = sw.port_id(full) else {
            return;
        };
        for m in self.monitors.values_mut() {
            if m.switch != switch || m.full != full || (m.owner != 0 && m.owner != owner) {
                continue;
            }
            if let Ok(id) = sw.add_monitor(port, m.dirs, m.sink.clone()) {
                m.sw = sw.clone();
                m.port = port;
                m.id = id;
                info!(port = full, "monitor watches the port again");
            }
        }
    }

    /// The end of a monitor registration: the switch stops copying, then
    /// the region goes; or the port's rings stop trading buffers with a
    /// zero-copy monitor, then its rings go back to the port's region.
    pub(super) fn unregister_monitor(&mut self, conn: u64) {
        if let Some(m) = self.monitors.remove(&conn) {
            m.sw.remove_monitor(m.port, m.id);
            info!(conn, "monitor unregistered");
        }
        if let Some(z) = self.zmons.remove(&conn) {
            // The sweep first; once set(None) returns no forwarding thread
            // touches the monitor's rings; they hold the port's buffers
            // now, so they are freed where their slots point.
            if let Some(f) = self.fwd.get(z.fwd) {
                f.remove(conn);
            }
            for h in &z.hooks {
                h.set(None);
            }
            let mut m = lock(&z.mem);
            let _ = m.region.free_if_swapped(z.nifp);
            for off in z.rings {
                let _ = m.region.free_ring_swapped(off);
            }
            m.live = m.live.saturating_sub(1);
            info!(conn, "zero-copy monitor unregistered");
        }
    }

    /// REGISTER of `switch:pname` as a zero-copy monitor (`/z`, both
    /// directions, as netmap's): as a copy monitor, but its rings are made
    /// in the port's region and the port's rings give it the buffers of
    /// the slots they are done with. The port must be a client or
    /// persistent port (a VM port's frames are in guest memory: EINVAL)
    /// whose region has room (a shared region, `@N`; a port's own region
    /// is sized for it alone: ENOMEM); each ring takes one zero-copy
    /// monitor (EBUSY; netmap chains several).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn register_zmon(
        &mut self,
        conn: &mut Conn,
        req: &Request,
        mut body: NmreqRegister,
        switch: &str,
        pname: &str,
        mode: u32,
        ringid: u16,
        flags: u64,
    ) -> Answer {
        let target = format!("{switch}:{pname}");
        match self.configurable(conn, &target, true) {
            Ok(_) => {}
            Err(libc::ENXIO) => return err(req, libc::EINVAL),
            Err(e) => return err(req, e),
        }
        let Some(key) = self.lookup(switch, pname) else {
            return err(req, libc::EINVAL);
        };
        let p = &self.ports[&key];
        let rings = p.tx.len().max(p.rx.len()) as u32;
        let shape = match MonitorShape::new(&body, mode, ringid, flags, rings, p.layout.rx_slots) {
            Ok(m) => m,
            Err(e) => return err(req, e),
        };
        // The port's hooks this monitor takes, ring by ring.
        let mut hooks: Vec<(u16, Arc<ZmonHook>)> = Vec::new();
        for &i in &shape.sel {
            let i_ = i as usize;
            if flags & NR_MONITOR_TX != 0 && i_ < p.zmon_tx.len() {
                hooks.push((i, p.zmon_tx[i_].clone()));
            }
            if flags & NR_MONITOR_RX != 0 && i_ < p.zmon_rx.len() {
                hooks.push((i, p.zmon_rx[i_].clone()));
            }
        }
        // One zero-copy monitor per ring, as in netmap.
        if hooks.iter().any(|(_, h)| h.is_set()) {
            return err(req, libc::EBUSY);
        }
        let memref = p.mem.clone();
        let port_sink = p.sink.clone();
        let mut mem = lock(&memref);
        if !mem.shared {
            return err(req, libc::ENOMEM);
        }
        // Rings made here go back to the region on any failure below.
        struct Made<'a> {
            region: &'a mut Region,
            rings: Vec<usize>,
        }
        impl Drop for Made<'_> {
            fn drop(&mut self) {
                for &off in &self.rings {
                    let _ = self.region.free_ring(off);
                }
            }
        }
        let first = mem.live == 0;
        if first && mem.region.reinit_all_rings().is_err() {
            return err(req, libc::EIO);
        }
        let mut made = Made {
            region: &mut mem.region,
            rings: Vec::new(),
        };
        let Ok(tx0) = made.region.alloc_ring(Dir::Tx, 0, shape.slots) else {
            return err(req, libc::ENOMEM);
        };
        made.rings.push(tx0);
        let mut rx = Vec::new();
        for i in 0..rings {
            match made.region.alloc_ring(Dir::Rx, i as u16, shape.slots) {
                Ok(off) => {
                    made.rings.push(off);
                    rx.push(off);
                }
                Err(_) => return err(req, libc::ENOMEM),
            }
        }
        let rings_if = shape.if_rings(tx0, &rx);
        let if_name = if_name(req.hdr.name_str().unwrap_or_default());
        let bound = shape.bound(tx0, &rx);
        let Ok((csb, Bells { kick, irq, peer })) = Bells::with_csb(bound.len() as u32) else {
            return err(req, libc::ENOMEM);
        };
        let map = made.region.map_arc();
        let mut zrings: Vec<(u16, Arc<Mutex<ZmonRing>>)> = Vec::new();
        for (idx, (dir, off, i)) in bound.into_iter().enumerate() {
            let idx = idx as u32;
            let Ok(geo) = RingGeometry::of(made.region, off) else {
                return err(req, libc::EIO);
            };
            KringState::new(dir, geo.num_slots).publish(&csb.entry(idx).expect("sized"));
            if dir == Dir::Rx {
                match ZmonRing::new(map.clone(), geo, csb.clone(), idx, irq.clone()) {
                    Ok(z) => zrings.push((i, Arc::new(Mutex::new(z)))),
                    Err(_) => return err(req, libc::EIO),
                }
            }
        }
        let nif = match made
            .region
            .pending_if(&if_name, &rings_if, body.nr_extra_bufs)
        {
            Ok(n) => n,
            Err(e) => return err(req, region_errno(&e)),
        };
        let Ok(fds) = client_fds(&nif, &csb, peer) else {
            return err(req, libc::EMFILE);
        };
        let nifp = nif.keep();
        let ring_offs = std::mem::take(&mut made.rings);
        drop(made);
        // From here nothing fails: the port's rings start trading.
        for (i, h) in &hooks {
            if let Some((_, z)) = zrings.iter().find(|(j, _)| j == i) {
                h.set(Some(z.clone()));
            }
        }
        mem.live += 1;
        // RX slots the port's client released reach the monitor at the
        // next delivery to the port, or when the monitor's client syncs:
        // its kick makes a forwarding thread sweep the port's RX rings.
        let fwd = self.next_fwd % self.fwd.len().max(1);
        self.next_fwd += 1;
        if flags & NR_MONITOR_RX != 0 {
            if let Some(f) = self.fwd.get(fwd) {
                f.add(Unit {
                    reg: conn.id,
                    path: Path::Sweep {
                        watch: ZmonWatch::new(zrings.iter().map(|(_, z)| z.clone()).collect()),
                        sink: port_sink,
                    },
                    kick: kick.clone(),
                    drain: true,
                });
            }
        }
        shape.answer(&mut body, nifp, &mem.region, mode, ringid, flags);
        drop(mem);
        info!(
            port = target,
            conn = conn.id,
            uid = conn.uid,
            tx = flags & NR_MONITOR_TX != 0,
            rx = flags & NR_MONITOR_RX != 0,
            "zero-copy monitor registered"
        );
        self.zmons.insert(
            conn.id,
            ZmonRec {
                mem_id: body.nr_mem_id,
                mem: memref,
                rings: ring_offs,
                nifp,
                hooks: hooks.into_iter().map(|(_, h)| h).collect(),
                fwd,
                _kick: kick,
            },
        );
        monitor_answer(conn, req, target, nifp, &body, fds)
    }
}

/// `conn` is now the monitor registration at `nifp` of port `target`:
/// REGISTER's reply with `body` and the client's descriptors.
fn monitor_answer(
    conn: &mut Conn,
    req: &Request,
    target: String,
    nifp: usize,
    body: &NmreqRegister,
    fds: Vec<OwnedFd>,
) -> Answer {
    conn.reg = Some(Registration {
        port_key: target,
        nifp,
        fwd: usize::MAX,
        pipe_end: None,
        monitor: true,
    });
    let mut r = req.clone();
    r.set_body(body);
    (0, r, fds)
}
