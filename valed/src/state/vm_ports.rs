//! VM (vhost-user) ports: creation with the socket policy, attach and
//! detach, and the state file that brings them back after a restart.

use super::*;

impl Registry {
    /// Creates a vhost-user port (and attaches it if the spec says so).
    pub fn vhost_create(&mut self, spec: VhostSpec) -> Result<(), (Errno, String)> {
        if self.ports.contains_key(&spec.name)
            || self.vhost.contains_key(&spec.name)
            || std::path::Path::new("/sys/class/net")
                .join(&spec.name)
                .exists()
        {
            return Err((libc::EEXIST, format!("port {} exists", spec.name)));
        }
        self.check_port_quota(spec.owner, &spec.name, true)
            .map_err(|r| (r.errno(), r.to_string()))?;
        let mut cfg = spec.net_config();
        cfg.group = self.vm_socket_group;
        // Inline, the session's thread forwards at each kick; otherwise
        // the forwarding thread waits on the kicks itself.
        cfg.fwd_watches_tx_kicks = !self.vhost_inline;
        let port = backend::NetPort::start(cfg).map_err(|e| (e.errno(), e.to_string()))?;
        let name = spec.name.clone();
        let attach = spec.attach.clone();
        let unit_id = self.next_unit;
        self.next_unit += 1;
        info!(port = name, socket = %spec.path.display(), client = spec.client, queues = spec.queues, "vhost-user port created");
        self.vhost.insert(
            name.clone(),
            VhostPort {
                spec: VhostSpec {
                    attach: None,
                    ..spec
                },
                port,
                attached: None,
                unit_id,
                fwd: Vec::new(),
            },
        );
        if let Some(sw) = attach {
            self.vhost_attach(&name, &sw)
                .map_err(|e| (e, format!("attaching {name} to {sw}")))?;
        }
        Ok(())
    }

    pub(super) fn vhost_attach(&mut self, name: &str, switch: &str) -> Result<PortId, Errno> {
        let id = self.vhost_attach_inner(name, switch)?;
        let owner = self.vhost.get(name).map_or(0, |v| v.spec.owner);
        self.reattach_monitors(switch, &format!("{switch}:{name}"), owner);
        Ok(id)
    }

    fn vhost_attach_inner(&mut self, name: &str, switch: &str) -> Result<PortId, Errno> {
        let owner = self.vhost.get(name).ok_or(libc::ENXIO)?.spec.owner;
        let sw = self.switch(switch, owner)?;
        let nfwd = self.fwd.len().max(1);
        let v = self.vhost.get_mut(name).ok_or(libc::ENXIO)?;
        if v.attached.is_some() {
            return Err(libc::EBUSY);
        }
        let full = format!("{switch}:{name}");
        let cfg = PortConfig {
            vnet_hdr_len: backend::VNET_HDR_LEN as u16,
            ..Default::default()
        };
        let id = sw
            .attach(&full, cfg, v.port.rx_sink())
            .map_err(|e| match e {
                vale::SwitchError::Full(_) => libc::ENOMEM,
                vale::SwitchError::Exists { .. } => libc::EEXIST,
                _ => libc::EINVAL,
            })?;
        v.fwd.clear();
        if self.vhost_inline {
            let queues = (0..v.port.queue_pairs())
                .map(|p| Mutex::new((v.port.tx_queue(p), vale::Scratch::default())))
                .collect();
            v.port.set_hook(Arc::new(crate::vhost::Inline {
                switch: sw.clone(),
                port: id,
                queues,
            }));
            v.attached = Some((switch.to_string(), id));
            v.spec.attach = Some(switch.to_string());
            info!(
                port = name,
                switch,
                index = id,
                "vhost-user port attached (inline)"
            );
            return Ok(id);
        }
        let mut kicks = Vec::new();
        for pair in 0..v.port.queue_pairs() {
            let kick = match EventFd::new() {
                Ok(k) => Arc::new(k),
                Err(_) => {
                    let _ = sw.detach(id);
                    return Err(libc::EMFILE);
                }
            };
            // Queue pairs spread over the forwarding threads.
            let f = self.next_fwd % nfwd;
            self.next_fwd += 1;
            if let Some(fw) = self.fwd.get(f) {
                fw.add(Unit {
                    reg: v.unit_id,
                    path: Path::Switch {
                        switch: sw.clone(),
                        port: id,
                        source: Box::new(v.port.tx_queue(pair)),
                    },
                    kick: kick.clone(),
                    drain: true,
                });
            }
            v.fwd.push(f);
            kicks.push(kick);
        }
        v.port.set_hook(Arc::new(Relay(kicks)));
        v.attached = Some((switch.to_string(), id));
        v.spec.attach = Some(switch.to_string());
        info!(port = name, switch, index = id, "vhost-user port attached");
        Ok(id)
    }

    pub(super) fn vhost_detach(&mut self, name: &str) -> Result<PortId, Errno> {
        let v = self.vhost.get_mut(name).ok_or(libc::ENXIO)?;
        let (swname, id) = v.attached.take().ok_or(libc::EINVAL)?;
        v.port.clear_hook();
        let mut seen = Vec::new();
        for &f in &v.fwd {
            if !seen.contains(&f) {
                seen.push(f);
                if let Some(fw) = self.fwd.get(f) {
                    fw.remove(v.unit_id);
                }
            }
        }
        v.fwd.clear();
        v.spec.attach = None;
        if let Some(s) = self.switches.get(&swname) {
            let _ = s.sw.detach(id);
            if s.sw.ports().is_empty() {
                info!(switch = swname, "switch removed (no ports)");
                self.switches.remove(&swname);
            }
        }
        info!(port = name, switch = swname, "vhost-user port detached");
        Ok(id)
    }

    /// Rewrites the state file with the vhost-user ports now present.
    pub fn save_state(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        let mut text =
            String::from("# vhost-user ports; valed rewrites this file on every change\n");
        for v in self.vhost.values() {
            text.push_str(&v.spec.to_line());
            text.push('\n');
        }
        let tmp = path.with_extension("tmp");
        let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            tracing::warn!(file = %path.display(), "cannot save vhost-user ports: {e}");
        }
    }

    pub(super) fn vale_vhost_newif(
        &mut self,
        conn: &mut Conn,
        req: &Request,
        name: &str,
    ) -> Answer {
        let Ok(b) = req.body_as::<ValeVhostNewif>() else {
            return err(req, libc::EINVAL);
        };
        let Some(path) = b.path_str() else {
            return err(req, libc::EINVAL);
        };
        if crate::vhost::bad_name(name) {
            return err(req, libc::EINVAL);
        }
        let client = b.flags & VALE_VHOST_CLIENT != 0;
        let path = match self.vhost_path(path, client, conn.uid) {
            Ok(p) => p,
            Err((e, msg)) => {
                tracing::warn!(
                    port = name,
                    uid = conn.uid,
                    "vhost-user port refused: {msg}"
                );
                return err(req, e);
            }
        };
        let spec = VhostSpec {
            name: name.to_string(),
            path,
            client,
            queues: if b.queue_pairs == 0 { 1 } else { b.queue_pairs },
            batch: backend::device::DEFAULT_BATCH,
            attach: None,
            owner: conn.uid,
        };
        if spec.queues > backend::device::MAX_QUEUE_PAIRS {
            return err(req, libc::EINVAL);
        }
        match self.vhost_create(spec) {
            Ok(()) => {
                self.save_state();
                (0, req.clone(), Vec::new())
            }
            Err((e, msg)) => {
                tracing::warn!(
                    port = name,
                    uid = conn.uid,
                    "vhost-user port not created: {msg}"
                );
                err(req, e)
            }
        }
    }

    /// The socket path a request from `uid` names, by valed's policy
    /// (valed.8, SECURITY): a plain file name is a socket in the vhost
    /// directory; root may name any absolute path; a tenant's listening
    /// socket must be in the vhost directory, and a tenant's client-mode
    /// port may only connect to a socket that tenant owns.
    pub(super) fn vhost_path(
        &self,
        given: &str,
        client: bool,
        uid: u32,
    ) -> Result<std::path::PathBuf, (Errno, String)> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let p = std::path::Path::new(given);
        crate::vhost::check_path(p).map_err(|m| (libc::EINVAL, m))?;
        let path = if crate::vhost::plain_name(given) {
            self.vhost_dir.join(given)
        } else if p.is_absolute() {
            p.to_path_buf()
        } else {
            return Err((
                libc::EINVAL,
                format!("socket path {given:?}: want a plain file name or an absolute path"),
            ));
        };
        if uid == 0 {
            return Ok(path);
        }
        if client {
            // As the port will connect (backend::socket::connect): to the
            // file at the path, a final symlink not followed. The VMM's
            // credentials are checked again once connected.
            let md = std::fs::symlink_metadata(&path).map_err(|e| {
                (
                    libc::ENOENT,
                    format!("client socket {}: {e}", path.display()),
                )
            })?;
            if !md.file_type().is_socket() || md.uid() != uid {
                return Err((
                    libc::EPERM,
                    format!(
                        "client socket {}: not a socket of uid {uid} (owner {})",
                        path.display(),
                        md.uid()
                    ),
                ));
            }
            return Ok(path);
        }
        let inside = path.parent() == Some(self.vhost_dir.as_path())
            && path
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(crate::vhost::plain_name);
        if !inside {
            return Err((
                libc::EPERM,
                format!(
                    "socket path {given:?}: uid {uid} may only make sockets in {} (give a plain file name)",
                    self.vhost_dir.display()
                ),
            ));
        }
        Ok(path)
    }
}
