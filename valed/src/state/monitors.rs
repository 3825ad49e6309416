//! Copy monitors (`vale0:a/r`, `/t`, `/rt`): a registration whose RX
//! rings get a copy of what a port on a switch sends or receives. The
//! monitor has a region of its own (netmap's copy monitors use private
//! memory too); the switch copies into it (`vale::Switch::add_monitor`),
//! and nothing is done for a port that has no monitor.

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
        let slots = if body.nr_rx_slots != 0 {
            body.nr_rx_slots
        } else {
            slots
        };
        let layout = PortLayout {
            tx_rings: 1,
            rx_rings: rings,
            tx_slots: slots,
            rx_slots: slots,
            extra_bufs: body.nr_extra_bufs,
            ..Default::default()
        };
        if body.nr_extra_bufs > PERSISTENT_EXTRA_BUFS {
            return err(req, libc::EINVAL);
        }
        let sel: Vec<u16> = match mode {
            NR_REG_ALL_NIC => (0..rings as u16).collect(),
            NR_REG_ONE_NIC if u32::from(ringid) < rings => vec![ringid],
            _ => return err(req, libc::EINVAL),
        };
        if flags & NR_TX_RINGS_ONLY != 0 {
            // A monitor's TX ring carries nothing: such a registration
            // could never see a frame.
            return err(req, libc::EINVAL);
        }
        let mut region = match self.new_region(conn.uid, &layout, 1, 1, None) {
            Ok(r) => r,
            Err(e) => return err(req, e),
        };
        let Ok(tx0) = region.alloc_ring(Dir::Tx, 0, slots) else {
            return err(req, libc::EINVAL);
        };
        let mut rx = Vec::new();
        for i in 0..rings {
            match region.alloc_ring(Dir::Rx, i as u16, slots) {
                Ok(off) => rx.push(off),
                Err(e) => return err(req, region_errno(&e)),
            }
        }
        let with_tx = mode == NR_REG_ALL_NIC || ringid == 0;
        let with_tx = with_tx && flags & NR_RX_RINGS_ONLY == 0;
        let rings_if = IfRings {
            tx: vec![with_tx.then_some(tx0)],
            host_tx: vec![None],
            rx: (0..rings as u16)
                .map(|i| sel.contains(&i).then(|| rx[i as usize]))
                .collect(),
            host_rx: vec![None],
        };
        let if_name: String = req
            .hdr
            .name_str()
            .unwrap_or_default()
            .chars()
            .take(15)
            .collect();
        let nif = match region.pending_if(&if_name, &rings_if, body.nr_extra_bufs) {
            Ok(n) => n,
            Err(e) => return err(req, region_errno(&e)),
        };
        let bound: Vec<(Dir, usize)> = with_tx
            .then_some((Dir::Tx, tx0))
            .into_iter()
            .chain(sel.iter().map(|&i| (Dir::Rx, rx[i as usize])))
            .collect();
        let Ok((csb, Bells { kick, irq, peer })) = (|| -> std::io::Result<(Arc<Csb>, Bells)> {
            Ok((Arc::new(Csb::create(bound.len() as u32)?), Bells::new()?))
        })() else {
            return err(req, libc::ENOMEM);
        };
        let map = nif.map_arc();
        let mut sinks = Vec::new();
        for (idx, (dir, off)) in bound.into_iter().enumerate() {
            let idx = idx as u32;
            let Ok((ns, base, bs, nb)) = nif.ring_params(off) else {
                return err(req, libc::EIO);
            };
            KringState::new(dir, ns).publish(&csb.entry(idx).expect("sized"));
            if dir == Dir::Rx {
                let geo = RingGeometry {
                    off,
                    num_slots: ns,
                    buf_base: base,
                    buf_size: bs,
                    nbufs: nb,
                };
                match RingSink::new(map.clone(), geo, csb.clone(), idx, irq.clone()) {
                    Ok(s) => sinks.push(s),
                    Err(_) => return err(req, libc::EIO),
                }
            }
        }
        // Nothing reads the kick end: a monitor never holds a sender, so
        // it never asks its client for kicks.
        let fds = match (|| -> std::io::Result<Vec<OwnedFd>> {
            let [k, i] = peer;
            Ok(vec![nif.share_fd()?, csb.share_fd()?, k, i])
        })() {
            Ok(f) => f,
            Err(_) => return err(req, libc::EMFILE),
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
        body.nr_offset = nifp as u64;
        body.nr_memsize = region.memsize() as u64;
        body.nr_tx_slots = slots;
        body.nr_rx_slots = slots;
        body.nr_tx_rings = 1;
        body.nr_rx_rings = rings as u16;
        body.nr_host_tx_rings = 0;
        body.nr_host_rx_rings = 0;
        body.nr_mem_id = region.mem_id();
        body.nr_mode = mode;
        body.nr_ringid = ringid;
        body.nr_flags = flags;
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
        conn.reg = Some(Registration {
            port_key: target,
            nifp,
            fwd: usize::MAX,
            pipe_end: None,
            monitor: true,
        });
        let mut r = req.clone();
        r.set_body(&body);
        (0, r, fds)
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
    /// the region goes.
    pub(super) fn unregister_monitor(&mut self, conn: u64) {
        if let Some(m) = self.monitors.remove(&conn) {
            m.sw.remove_monitor(m.port, m.id);
            info!(conn, "monitor unregistered");
        }
    }
}
