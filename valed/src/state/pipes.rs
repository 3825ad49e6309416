//! netmap pipes: two ends in one region, frames crossing by buffer swap.

use super::*;

/// The two forwarding units of an open pipe: each end's TX ring i into the
/// other end's RX ring i.
fn pipe_units(region: &Region, ends: &[PipeSide; 2], unit_id: u64) -> std::io::Result<Vec<Unit>> {
    let map = region.map_arc();
    let mut units = Vec::new();
    for from in 0..2 {
        let (a, b) = (&ends[from], &ends[1 - from]);
        let (Some(ra), Some(rb)) = (&a.reg, &b.reg) else {
            continue;
        };
        for i in 0..a.tx.len() {
            let geo = |off: usize| RingGeometry::of(region, off).map_err(std::io::Error::other);
            let src = RingSource::new(
                map.clone(),
                geo(a.tx[i])?,
                ra.csb.clone(),
                i as u32,
                ra.irq.clone(),
            )?;
            let rx_idx = (b.tx.len() + i) as u32;
            let dst = RingSink::new(
                map.clone(),
                geo(b.rx[i])?,
                rb.csb.clone(),
                rx_idx,
                rb.irq.clone(),
            )?
            .with_kick(rb.kick.clone());
            units.push(Unit {
                reg: unit_id,
                path: Path::Pipe {
                    source: src,
                    dst: Box::new(dst),
                },
                kick: ra.kick.clone(),
                drain: true,
            });
        }
    }
    Ok(units)
}

impl Registry {
    /// REGISTER of a pipe end (`x{N` master, `x}N` slave).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn register_pipe(
        &mut self,
        conn: &mut Conn,
        req: &Request,
        mut body: NmreqRegister,
        parent: &str,
        id: &str,
        end: usize,
        name: &str,
    ) -> Answer {
        let mode = if body.nr_mode != 0 {
            body.nr_mode
        } else {
            NR_REG_ALL_NIC
        };
        if mode != NR_REG_ALL_NIC || body.nr_flags & (NR_TX_RINGS_ONLY | NR_RX_RINGS_ONLY) != 0 {
            return err(req, libc::EINVAL);
        }
        let key = format!("{parent}#{id}");
        if !self.pipes.contains_key(&key) {
            let d = self.default_slots;
            let pick = |v: u32| if v == 0 { d } else { v };
            let rings = u32::from(body.nr_tx_rings.max(body.nr_rx_rings)).clamp(1, 16);
            let slots = pick(body.nr_tx_slots.max(body.nr_rx_slots));
            let layout = PortLayout {
                tx_rings: rings,
                rx_rings: rings,
                tx_slots: slots,
                rx_slots: slots,
                extra_bufs: body.nr_extra_bufs,
                ..Default::default()
            };
            let mut region = match self.new_region(conn.uid, &layout, 2, 1, None) {
                Ok(r) => r,
                Err(e) => return err(req, e),
            };
            let mut ends: [PipeSide; 2] = Default::default();
            for e in ends.iter_mut() {
                for i in 0..rings {
                    match (
                        region.alloc_ring(Dir::Tx, i as u16, slots),
                        region.alloc_ring(Dir::Rx, i as u16, slots),
                    ) {
                        (Ok(t), Ok(r)) => {
                            e.tx.push(t);
                            e.rx.push(r);
                        }
                        (Err(x), _) | (_, Err(x)) => return err(req, region_errno(&x)),
                    }
                }
            }
            self.next_pipe += 1;
            let unit_id = (1 << 63) | self.next_pipe;
            let fwd = self.next_fwd % self.fwd.len().max(1);
            self.next_fwd += 1;
            self.pipes.insert(
                key.clone(),
                Pipe {
                    owner: conn.uid,
                    region,
                    layout,
                    ends,
                    unit_id,
                    fwd,
                },
            );
            info!(pipe = key, "pipe created");
        }
        let pipe = self.pipes.get_mut(&key).expect("present");
        if let Err(r) = limits::check_owner(&key, pipe.owner, conn.uid) {
            return err(req, r.into());
        }
        if pipe.ends[end].reg.is_some() {
            return err(req, libc::EBUSY);
        }
        let me = &pipe.ends[end];
        let rings = IfRings {
            tx: me.tx.iter().map(|&o| Some(o)).collect(),
            host_tx: vec![None],
            rx: me.rx.iter().map(|&o| Some(o)).collect(),
            host_rx: vec![None],
        };
        let nrings = (me.tx.len() + me.rx.len()) as u32;
        let (tx, rx) = (me.tx.clone(), me.rx.clone());
        let if_name = if_name(name);
        // Every early return from here drops `nif`, which frees the
        // netmap_if and its extra buffers; kept once nothing can fail.
        let nif = match pipe.region.pending_if(&if_name, &rings, body.nr_extra_bufs) {
            Ok(n) => n,
            Err(e) => return err(req, region_errno(&e)),
        };
        let made = (|| -> std::io::Result<Doorbells> {
            let (csb, Bells { kick, irq, peer }) = Bells::with_csb(nrings)?;
            let fds = client_fds(&nif, &csb, peer)?;
            Ok((csb, kick, irq, fds))
        })();
        let Ok((csb, kick, irq, fds)) = made else {
            return err(req, libc::ENOMEM);
        };
        let peer_open = pipe.ends[1 - end].reg.is_some();
        for (idx, (dir, off)) in tx
            .iter()
            .map(|&o| (Dir::Tx, o))
            .chain(rx.iter().map(|&o| (Dir::Rx, o)))
            .enumerate()
        {
            let ns = pipe.layout.tx_slots;
            // The pipe swaps buffers between its ends: while the other end
            // is open its rings may hold buffers these slots were given, so
            // only the pointers start over. Otherwise the rings are new.
            let fresh = if peer_open {
                nif.rewind_ring(off)
            } else {
                nif.reinit_ring(off)
            };
            if fresh.is_err() {
                return err(req, libc::EIO);
            }
            KringState::new(dir, ns).publish(&csb.entry(idx as u32).expect("sized"));
        }
        pipe.ends[end].reg = Some(PipeReg {
            conn: conn.id,
            csb,
            irq,
            kick,
        });
        // Both ends open: start both directions.
        if peer_open {
            match pipe_units(&nif, &pipe.ends, pipe.unit_id) {
                Ok(units) => {
                    if let Some(f) = self.fwd.get(pipe.fwd) {
                        units.into_iter().for_each(|u| f.add(u));
                    }
                }
                Err(_) => {
                    pipe.ends[end].reg = None;
                    return err(req, libc::EIO);
                }
            }
        }
        let nifp = nif.keep();
        body.nr_offset = nifp as u64;
        body.nr_memsize = pipe.region.memsize() as u64;
        body.nr_tx_slots = pipe.layout.tx_slots;
        body.nr_rx_slots = pipe.layout.rx_slots;
        body.nr_tx_rings = tx.len() as u16;
        body.nr_rx_rings = rx.len() as u16;
        body.nr_host_tx_rings = 1;
        body.nr_host_rx_rings = 1;
        body.nr_mem_id = pipe.region.mem_id();
        body.nr_mode = mode;
        conn.reg = Some(Registration {
            port_key: key.clone(),
            nifp,
            fwd: pipe.fwd,
            pipe_end: Some(end),
            monitor: false,
        });
        info!(pipe = key, end, conn = conn.id, "pipe end registered");
        let mut r = req.clone();
        r.set_body(&body);
        (0, r, fds)
    }

    pub(super) fn unregister_pipe(&mut self, conn: u64, reg: &Registration, end: usize) {
        let Some(pipe) = self.pipes.get_mut(&reg.port_key) else {
            return;
        };
        if let Some(f) = self.fwd.get(pipe.fwd) {
            f.remove(pipe.unit_id);
        }
        if pipe.ends[end].reg.as_ref().is_some_and(|r| r.conn == conn) {
            pipe.ends[end].reg = None;
        }
        // The pipe swapped buffers between its ends: what this end hands
        // back is what its list names (see Region::free_if_swapped).
        let _ = pipe.region.free_if_swapped(reg.nifp);
        info!(pipe = reg.port_key, end, conn, "pipe end unregistered");
        if pipe.ends.iter().all(|e| e.reg.is_none()) {
            self.pipes.remove(&reg.port_key);
        }
    }
}
