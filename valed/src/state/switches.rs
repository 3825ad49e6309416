//! Switches: who owns one, who may attach to it (its owner, root, and the
//! uids it is shared with), listing, and per-port options.

use super::*;

impl Registry {
    /// Switch `name` for a port of `uid`, made on first use and then
    /// `uid`'s. EPERM when it is another uid's (not root's, and `uid` is
    /// not root), or when `uid` is not root and root made a switch of
    /// that name before.
    pub(super) fn switch(&mut self, name: &str, uid: u32) -> Result<Arc<Switch>, Errno> {
        if let Some(s) = self.switches.get(name) {
            self.check_may_join(name, uid)?;
            return Ok(s.sw.clone());
        }
        if uid != 0 && self.root_switch_names.contains(name) {
            return Err(limits::Refused::RootsSwitchName {
                switch: name.into(),
                uid,
            }
            .into());
        }
        self.check_switch_quota(uid, name)?;
        if uid == 0 {
            self.root_switch_names.insert(name.to_string());
        }
        let used: Vec<u16> = self.switches.values().map(|s| s.idx).collect();
        let idx = (0..).find(|i| !used.contains(i)).unwrap_or(0);
        let sw = Arc::new(Switch::new(name));
        info!(switch = name, idx, "switch created");
        self.switches.insert(
            name.to_string(),
            SwitchRec {
                sw: sw.clone(),
                idx,
                owner: uid,
                share: Vec::new(),
            },
        );
        Ok(sw)
    }

    pub(super) fn attach(&mut self, key: &str, switch: &str) -> Result<PortId, Errno> {
        let owner = self.ports.get(key).ok_or(libc::ENXIO)?.owner;
        let sw = self.switch(switch, owner)?;
        let port = self.ports.get_mut(key).ok_or(libc::ENXIO)?;
        if port.attached.is_some() {
            return Err(libc::EBUSY);
        }
        let full = format!("{switch}:{}", port.name);
        let cfg = PortConfig {
            vnet_hdr_len: port.hdr_len,
            // netmap passes frames untouched between ports with headers.
            offloads: if port.hdr_len > 0 {
                vale::port::OFFLOAD_ALL
            } else {
                0
            },
            ..Default::default()
        };
        let id = sw
            .attach_shared(&full, cfg, port.sink.clone())
            .map_err(|e| match e {
                vale::SwitchError::Full(_) => libc::ENOMEM,
                vale::SwitchError::Exists { .. } => libc::EEXIST,
                _ => libc::EINVAL,
            })?;
        port.attached = Some((switch.to_string(), id));
        self.reattach_monitors(switch, &full, owner);
        Ok(id)
    }

    pub(super) fn detach(&mut self, key: &str) -> Result<(), Errno> {
        let port = self.ports.get_mut(key).ok_or(libc::ENXIO)?;
        let (swname, id) = port.attached.take().ok_or(libc::EINVAL)?;
        if let Some(s) = self.switches.get(&swname) {
            let _ = s.sw.detach(id);
            if s.sw.ports().is_empty() {
                info!(switch = swname, "switch removed (no ports)");
                self.switches.remove(&swname);
            }
        }
        Ok(())
    }

    /// Finds the port a `valeX:Y` name refers to: the ephemeral port of that
    /// full name, or persistent port `Y` attached to `valeX`.
    pub(super) fn lookup(&self, switch: &str, name: &str) -> Option<String> {
        let full = format!("{switch}:{name}");
        if self.ports.contains_key(&full) {
            return Some(full);
        }
        match self.ports.get(name) {
            Some(p) if p.persistent && p.attached.as_ref().is_some_and(|(s, _)| s == switch) => {
                Some(name.to_string())
            }
            _ => None,
        }
    }

    pub(super) fn vale_name(name: &str) -> Result<(String, String), Errno> {
        let spec = portname::parse_with(name, NR_NAME).map_err(|_| libc::EINVAL)?;
        match spec.name.kind {
            PortKind::Vale { switch, port } if spec.name.pipe.is_none() => {
                Ok((format!("vale{switch}"), port))
            }
            _ => Err(libc::ENXIO),
        }
    }

    /// Every attached port as (bridge idx, port idx, full name), in order.
    pub(super) fn listing(&self) -> Vec<(u16, u32, String)> {
        let mut v: Vec<(u16, u32, String)> = self
            .switches
            .values()
            .flat_map(|s| {
                s.sw.ports()
                    .into_iter()
                    .map(move |(p, full)| (s.idx, u32::from(p), full))
            })
            .collect();
        v.sort();
        v
    }

    pub(super) fn vale_list(&mut self, req: &Request, name: &str) -> Answer {
        let Ok(mut b) = req.body_as::<NmreqValeList>() else {
            return err(req, libc::EINVAL);
        };
        let all = self.listing();
        let hit = if name.is_empty() {
            all.into_iter()
                .find(|(bi, pi, _)| (*bi, *pi) >= (b.nr_bridge_idx, b.nr_port_idx))
        } else {
            all.into_iter().find(|(_, _, n)| n == name)
        };
        match hit {
            Some((bi, pi, full)) => {
                b.nr_bridge_idx = bi;
                b.nr_port_idx = pi;
                let mut r = req.clone();
                r.set_body(&b);
                if r.hdr.set_name(&full).is_err() {
                    return err(req, libc::EINVAL);
                }
                (0, r, Vec::new())
            }
            None if name.is_empty() => err(req, libc::ENOENT),
            None => err(req, libc::ENXIO),
        }
    }

    /// The key of VALE port `name` (`valeX:Y`): EINVAL/ENXIO for a name
    /// that is not one, ENXIO for a port that does not exist.
    fn vale_key(&self, name: &str) -> Result<String, Errno> {
        let (switch, pname) = Self::vale_name(name)?;
        self.lookup(&switch, &pname).ok_or(libc::ENXIO)
    }

    pub(super) fn hdr_set(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let Ok(b) = req.body_as::<NmreqPortHdr>() else {
            return err(req, libc::EINVAL);
        };
        if ![0, 10, 12].contains(&b.nr_hdr_len) {
            return err(req, libc::EINVAL);
        }
        let key = match self.vale_key(name) {
            Ok(k) => k,
            Err(e) => return err(req, e),
        };
        if let Err(e) = self.owned(conn, &key) {
            return err(req, e);
        }
        let p = self.ports.get_mut(&key).expect("found");
        if p.regs.iter().any(|r| r.conn != conn.id) {
            return err(req, libc::EBUSY);
        }
        p.hdr_len = b.nr_hdr_len as u16;
        if let Some((sw, id)) = p.attached.clone() {
            if let Some(s) = self.switches.get(&sw) {
                let mut cfg = s.sw.config(id).unwrap_or_default();
                cfg.vnet_hdr_len = b.nr_hdr_len as u16;
                cfg.offloads = if cfg.vnet_hdr_len > 0 {
                    vale::port::OFFLOAD_ALL
                } else {
                    0
                };
                if s.sw.reconfigure(id, cfg).is_err() {
                    return err(req, libc::EINVAL);
                }
            }
        }
        (0, req.clone(), Vec::new())
    }

    pub(super) fn hdr_get(&mut self, req: &Request, name: &str) -> Answer {
        let p = match self.find_any(name) {
            Ok(p) => p,
            Err(e) => return err(req, e),
        };
        let mut r = req.clone();
        r.set_body(&NmreqPortHdr {
            nr_hdr_len: u32::from(p.hdr_len),
            ..Default::default()
        });
        (0, r, Vec::new())
    }

    /// Reads or changes a port's switch options (backpressure, the
    /// NS_PORT_MASK override, its MAC limit).
    pub(super) fn port_config(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let Ok(b) = req.body_as::<ValePortConfig>() else {
            return err(req, libc::EINVAL);
        };
        let (swname, id) = match self.configurable(conn, name, b.set != 0) {
            Ok(at) => at,
            Err(e) => return err(req, e),
        };
        let sw = self.switches[&swname].sw.clone();
        let mut cfg = sw.config(id).unwrap_or_default();
        if b.set & VALE_SET_FLAGS != 0 {
            if b.flags & !(VALE_PORT_BACKPRESSURE | VALE_PORT_MASK_OVERRIDE) != 0 {
                return err(req, libc::EINVAL);
            }
            cfg.backpressure = b.flags & VALE_PORT_BACKPRESSURE != 0;
            cfg.port_mask_override = b.flags & VALE_PORT_MASK_OVERRIDE != 0;
        }
        if b.set & VALE_SET_MAC_LIMIT != 0 {
            cfg.mac_limit = b.mac_limit;
            sw.with_lookup_mut(|l| l.set_port_mac_limit(id, b.mac_limit));
        }
        if b.set & !(VALE_SET_FLAGS | VALE_SET_MAC_LIMIT) != 0 || sw.reconfigure(id, cfg).is_err() {
            return err(req, libc::EINVAL);
        }
        let now = ValePortConfig {
            flags: if cfg.backpressure {
                VALE_PORT_BACKPRESSURE
            } else {
                0
            } | if cfg.port_mask_override {
                VALE_PORT_MASK_OVERRIDE
            } else {
                0
            },
            mac_limit: cfg.mac_limit,
            set: 0,
            pad: 0,
        };
        let mut r = req.clone();
        r.set_body(&now);
        (0, r, Vec::new())
    }

    /// Where port `name` (`valeX:p`, a client or a VM port) is attached,
    /// checked for `conn` to change it when `set`.
    pub(super) fn configurable(
        &self,
        conn: &Conn,
        name: &str,
        set: bool,
    ) -> Result<(String, PortId), Errno> {
        if let Ok(key) = self.vale_key(name) {
            if set {
                self.owned(conn, &key)?;
            }
            return self.ports[&key].attached.clone().ok_or(libc::ENXIO);
        }
        let (switch, pname) = Self::vale_name(name)?;
        let v = self.vhost.get(&pname).ok_or(libc::ENXIO)?;
        match &v.attached {
            Some((sw, id)) if *sw == switch => {
                if set {
                    limits::check_owner(&pname, v.spec.owner, conn.uid)?;
                }
                Ok((sw.clone(), *id))
            }
            _ => Err(libc::ENXIO),
        }
    }

    /// VALE_REQ_SWITCH_CONFIG: reads, or (owner or root) sets, whom switch
    /// `name` is shared with.
    pub(super) fn switch_config(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let Ok(b) = req.body_as::<ValeSwitchConfig>() else {
            return err(req, libc::EINVAL);
        };
        if !self.switches.contains_key(name) {
            return err(req, libc::ENXIO);
        }
        if b.set & !VALE_SET_SHARE != 0 || b.nshare as usize > VALE_SHARE_MAX {
            return err(req, libc::EINVAL);
        }
        if b.set != 0 {
            if let Err(r) = self.check_switch_owner(name, conn.uid) {
                return err(req, r.into());
            }
        }
        let s = self.switches.get_mut(name).expect("checked above");
        if b.set & VALE_SET_SHARE != 0 {
            let mut share: Vec<u32> = b.share[..b.nshare as usize].to_vec();
            share.sort_unstable();
            share.dedup();
            info!(switch = name, uid = conn.uid, ?share, "switch shared");
            s.share = share;
        }
        let mut now = ValeSwitchConfig {
            owner: s.owner,
            nshare: s.share.len() as u32,
            ..Default::default()
        };
        now.share[..s.share.len()].copy_from_slice(&s.share);
        let mut r = req.clone();
        r.set_body(&now);
        (0, r, Vec::new())
    }
}
