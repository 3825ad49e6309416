//! REGISTER of a VALE port and the end of a registration: rings bound,
//! doorbells made, units given to a forwarding thread, and everything
//! taken back when the connection goes.

use super::*;

impl Bells {
    pub(super) fn new() -> std::io::Result<Bells> {
        let (kick_r, kick_w) = EventFd::pipe()?;
        let (irq_r, irq_w) = EventFd::pipe()?;
        Ok(Bells {
            kick: Arc::new(kick_r),
            irq: Arc::new(irq_w),
            peer: [kick_w.into_fd(), irq_r.into_fd()],
        })
    }

    /// A registration's CSB for `rings` bound rings, and its doorbells.
    pub(super) fn with_csb(rings: u32) -> std::io::Result<(Arc<Csb>, Bells)> {
        Ok((Arc::new(Csb::create(rings)?), Bells::new()?))
    }
}

/// What a registration's client gets, in this order: the region, the CSB,
/// its end of the kick pipe and its end of the irq pipe.
pub(super) fn client_fds(
    region: &Region,
    csb: &Csb,
    peer: [OwnedFd; 2],
) -> std::io::Result<Vec<OwnedFd>> {
    let [kick, irq] = peer;
    Ok(vec![region.share_fd()?, csb.share_fd()?, kick, irq])
}

/// `nmreq_header.nr_name` as the `netmap_if` keeps it (15 bytes).
pub(super) fn if_name(name: &str) -> String {
    name.chars().take(15).collect()
}

impl Registry {
    pub(super) fn register(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        self.just_created = None;
        let ans = self.register_inner(conn, req, name);
        if let (Some(key), true) = (self.just_created.take(), ans.0 != 0) {
            // A port made for this registration must not outlive its failure.
            let _ = self.detach(&key);
            self.ports.remove(&key);
        }
        if ans.0 != 0 {
            // Nor a pipe made for it: a pipe lives while an end is open.
            self.pipes
                .retain(|_, p| p.ends.iter().any(|e| e.reg.is_some()));
        }
        ans
    }

    pub(super) fn register_inner(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        if conn.reg.is_some() {
            return err(req, libc::EBUSY);
        }
        let Ok(mut body) = req.body_as::<NmreqRegister>() else {
            return err(req, libc::EINVAL);
        };
        let spec = match portname::parse_with(name, NR_NAME) {
            Ok(s) => s,
            Err(_) => return err(req, libc::EINVAL),
        };
        if let Some(pipe) = &spec.name.pipe {
            let end = usize::from(pipe.end != PipeEnd::Master);
            return self.register_pipe(
                conn,
                req,
                body,
                &spec.name.parent_nr_name(),
                &pipe.id,
                end,
                name,
            );
        }
        let (switch, pname) = match &spec.name.kind {
            PortKind::Vale { switch, port } => (format!("vale{switch}"), port.clone()),
            PortKind::Nic { .. } => return err(req, libc::ENXIO), // NIC ports: later issue
        };
        // The request's mode wins over the name's, as in netmap.
        let mode = if body.nr_mode != 0 {
            body.nr_mode
        } else {
            spec.nr_mode()
        };
        let ringid = if body.nr_mode != 0 {
            body.nr_ringid
        } else {
            spec.nr_ringid()
        };
        let flags = body.nr_flags | spec.nr_flags();
        // As in netmap, `/z` (NR_ZCOPY_MON) is a zero-copy monitor of
        // both directions, with or without `/r` and `/t`.
        let flags = if flags & NR_ZCOPY_MON != 0 {
            flags | NR_MONITOR_TX | NR_MONITOR_RX
        } else {
            flags
        };
        if flags & (NR_MONITOR_TX | NR_MONITOR_RX) != 0 {
            body.nr_rx_slots = body.nr_rx_slots.max(spec.conf.rx_slots);
            if flags & NR_ZCOPY_MON != 0 {
                return self.register_zmon(conn, req, body, &switch, &pname, mode, ringid, flags);
            }
            return self.register_monitor(conn, req, body, &switch, &pname, mode, ringid, flags);
        }
        if !matches!(mode, NR_REG_ALL_NIC | NR_REG_ONE_NIC) {
            return err(req, libc::EINVAL);
        }
        // A port in another port's memory: `@N` or `nr_mem_id`.
        let want_mem = match spec.mem_id {
            Some(m) => m.get(),
            None => body.nr_mem_id,
        };
        let key = match self.lookup(&switch, &pname) {
            Some(k) => {
                // As netmap: an id that names no region is EINVAL; any
                // other is ignored for a port that exists, whose own id
                // is answered.
                if want_mem != 0 && !self.mem_id_used(want_mem) {
                    return err(req, libc::EINVAL);
                }
                k
            }
            None => {
                let d = self.default_slots;
                let pick = |v: u32| if v == 0 { d } else { v };
                let layout = PortLayout {
                    tx_rings: u32::from(body.nr_tx_rings.max(spec.conf.tx_rings)).max(1),
                    rx_rings: u32::from(body.nr_rx_rings.max(spec.conf.rx_rings)).max(1),
                    tx_slots: pick(body.nr_tx_slots.max(spec.conf.tx_slots)),
                    rx_slots: pick(body.nr_rx_slots.max(spec.conf.rx_slots)),
                    extra_bufs: body.nr_extra_bufs,
                    ..Default::default()
                };
                if layout.tx_rings > 16 || layout.rx_rings > 16 {
                    return err(req, libc::EINVAL);
                }
                let mem = (want_mem != 0).then_some(want_mem);
                let port = match self.new_port(&pname, conn.uid, layout, false, mem) {
                    Ok(p) => p,
                    Err(e) => return err(req, e),
                };
                let key = format!("{switch}:{pname}");
                self.ports.insert(key.clone(), port);
                self.just_created = Some(key.clone());
                if let Err(e) = self.attach(&key, &switch) {
                    return err(req, e);
                }
                key
            }
        };
        let port = self.ports.get_mut(&key).expect("just found");
        if port.regs.iter().any(|r| r.exclusive)
            || (flags & NR_EXCLUSIVE != 0 && !port.regs.is_empty())
        {
            return err(req, libc::EBUSY);
        }
        if let Err(r) = limits::check_owner(name, port.owner, conn.uid) {
            return err(req, r.into());
        }
        if port.hdr_len > 0 && flags & NR_ACCEPT_VNET_HDR == 0 {
            return err(req, libc::EIO);
        }
        let n_tx = port.tx.len() as u16;
        let n_rx = port.rx.len() as u16;
        let (tx_sel, rx_sel): (Vec<u16>, Vec<u16>) = match mode {
            NR_REG_ONE_NIC => {
                if ringid >= n_tx.max(n_rx) {
                    return err(req, libc::EINVAL);
                }
                (
                    (ringid < n_tx).then_some(ringid).into_iter().collect(),
                    (ringid < n_rx).then_some(ringid).into_iter().collect(),
                )
            }
            _ => ((0..n_tx).collect(), (0..n_rx).collect()),
        };
        let tx_sel = if flags & NR_RX_RINGS_ONLY != 0 {
            Vec::new()
        } else {
            tx_sel
        };
        let rx_sel = if flags & NR_TX_RINGS_ONLY != 0 {
            Vec::new()
        } else {
            rx_sel
        };
        let nrings = (tx_sel.len() + rx_sel.len()) as u32;
        if nrings == 0 {
            return err(req, libc::EINVAL);
        }
        // A ring is bound by one registration at a time, as in netmap.
        let taken = port.regs.iter().any(|r| {
            r.tx.iter().any(|t| tx_sel.contains(t)) || r.rx.iter().any(|t| rx_sel.contains(t))
        });
        if taken {
            return err(req, libc::EBUSY);
        }
        let bound = |all: &[usize], sel: &[u16]| -> Vec<Option<usize>> {
            (0..all.len())
                .map(|i| sel.contains(&(i as u16)).then(|| all[i]))
                .collect()
        };
        let rings = IfRings {
            tx: bound(&port.tx, &tx_sel),
            host_tx: vec![None],
            rx: bound(&port.rx, &rx_sel),
            host_rx: vec![None],
        };
        let if_name = if_name(name);
        // From here on every early return drops `nif`, which frees the
        // netmap_if and its extra buffers: a failed registration leaks
        // nothing. It is kept only once nothing can fail.
        let mut mem = lock(&port.mem);
        // A shared region nobody has registered: every ring in it back on
        // its own buffers first (whatever earlier clients swapped).
        let (shared, first) = (mem.shared, mem.live == 0);
        if shared && first && mem.region.reinit_all_rings().is_err() {
            return err(req, libc::EIO);
        }
        let nif = match mem.region.pending_if(&if_name, &rings, body.nr_extra_bufs) {
            Ok(n) => n,
            Err(e) => return err(req, region_errno(&e)),
        };
        let Ok((csb, Bells { kick, irq, peer })) = Bells::with_csb(nrings) else {
            return err(req, libc::ENOMEM);
        };
        let map = nif.map_arc();
        // CSB entries: the bound TX rings, then the bound RX rings.
        let bound: Vec<(Dir, usize, usize)> = port
            .tx
            .iter()
            .enumerate()
            .filter(|(i, _)| tx_sel.contains(&(*i as u16)))
            .map(|(i, &off)| (Dir::Tx, off, i))
            .chain(
                port.rx
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| rx_sel.contains(&(*i as u16)))
                    .map(|(i, &off)| (Dir::Rx, off, i)),
            )
            .collect();
        let mut sources = Vec::new();
        let mut sinks = Vec::new();
        for (idx, (dir, off, ri)) in bound.into_iter().enumerate() {
            let idx = idx as u32;
            // Fresh rings for a fresh registration, as netmap gives: every
            // slot on one of the ring's own buffers, whatever the previous
            // client swapped in. In a shared region with clients running,
            // their slots may hold this ring's buffers: only the pointers
            // go back (a pipe end does the same).
            let fresh = if shared {
                nif.rewind_ring(off)
            } else {
                nif.reinit_ring(off)
            };
            if fresh.is_err() {
                return err(req, libc::EIO);
            }
            let Ok(geo) = RingGeometry::of(&nif, off) else {
                return err(req, libc::EIO);
            };
            KringState::new(dir, geo.num_slots).publish(&csb.entry(idx).expect("sized"));
            let made = match dir {
                Dir::Tx => RingSource::new(map.clone(), geo, csb.clone(), idx, irq.clone())
                    .map(|s| sources.push(s.with_zmon(port.zmon_tx[ri].clone()))),
                // Frames spread over the bound RX rings by flow.
                Dir::Rx => {
                    RingSink::new(map.clone(), geo, csb.clone(), idx, irq.clone()).map(|s| {
                        sinks.push(
                            s.with_kick(kick.clone())
                                .with_zmon(port.zmon_rx[ri].clone()),
                        )
                    })
                }
            };
            if made.is_err() {
                return err(req, libc::EIO);
            }
        }
        let Ok(fds) = client_fds(&nif, &csb, peer) else {
            return err(req, libc::EMFILE);
        };
        let nifp = nif.keep();
        mem.live += 1;
        drop(mem);
        lock(&port.sink).add(conn.id, sinks);
        port.regs.push(RegRec {
            conn: conn.id,
            tx: tx_sel.clone(),
            rx: rx_sel.clone(),
            exclusive: flags & NR_EXCLUSIVE != 0,
        });
        let (swname, pid) = port
            .attached
            .clone()
            .expect("registered ports are attached");
        let sw = self
            .switches
            .get(&swname)
            .expect("attached switch")
            .sw
            .clone();
        let fwd = self.next_fwd % self.fwd.len().max(1);
        self.next_fwd += 1;
        for source in sources {
            if let Some(f) = self.fwd.get(fwd) {
                f.add(Unit {
                    reg: conn.id,
                    path: Path::Switch {
                        switch: sw.clone(),
                        port: pid,
                        source: Box::new(source),
                    },
                    kick: kick.clone(),
                    drain: true,
                });
            }
        }
        let port = self.ports.get(&key).expect("present");
        body.nr_offset = nifp as u64;
        body.nr_memsize = lock(&port.mem).region.memsize() as u64;
        body.nr_tx_slots = port.layout.tx_slots;
        body.nr_rx_slots = port.layout.rx_slots;
        body.nr_tx_rings = port.tx.len() as u16;
        body.nr_rx_rings = port.rx.len() as u16;
        body.nr_host_tx_rings = 1;
        body.nr_host_rx_rings = 1;
        body.nr_mem_id = port.mem_id;
        body.nr_mode = mode;
        body.nr_ringid = ringid;
        body.nr_flags = flags;
        conn.reg = Some(Registration {
            port_key: key.clone(),
            nifp,
            fwd,
            pipe_end: None,
            monitor: false,
        });
        info!(port = key, conn = conn.id, uid = conn.uid, "registered");
        let mut r = req.clone();
        r.set_body(&body);
        (0, r, fds)
    }

    /// Drops `conn`'s registration (its connection closed). The rings are
    /// taken back from the forwarding thread first; an ephemeral port goes
    /// away with its last client.
    pub fn unregister(&mut self, conn: &mut Conn) {
        let Some(reg) = conn.reg.take() else { return };
        if reg.monitor {
            self.unregister_monitor(conn.id);
            return;
        }
        if let Some(end) = reg.pipe_end {
            self.unregister_pipe(conn.id, &reg, end);
            return;
        }
        if let Some(f) = self.fwd.get(reg.fwd) {
            f.remove(conn.id);
        }
        let Some(port) = self.ports.get_mut(&reg.port_key) else {
            return;
        };
        lock(&port.sink).remove(conn.id);
        port.regs.retain(|r| r.conn != conn.id);
        {
            let mut mem = lock(&port.mem);
            let _ = if mem.shared {
                mem.region.free_if_swapped(reg.nifp)
            } else {
                mem.region.free_if(reg.nifp)
            };
            mem.live = mem.live.saturating_sub(1);
        }
        info!(port = reg.port_key, conn = conn.id, "unregistered");
        if !port.persistent && port.regs.is_empty() {
            let _ = self.detach(&reg.port_key);
            self.ports.remove(&reg.port_key);
        }
    }
}
