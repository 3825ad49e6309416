//! vhost-user-net ports in valed: their specification (command line,
//! config file, `vale-ctl -n NAME --vhost-user PATH`), and the relay of
//! guest kicks from vhost-user-backend's workers to the forwarding threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backend::{KickHook, NetConfig, SocketMode};
use netmap::sys::EventFd;
use vale::PortId;

/// What creates a vhost-user port: one line of the config file, one
/// `--vhost-user` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostSpec {
    /// Port name (`vm1`).
    pub name: String,
    /// Socket path.
    pub path: PathBuf,
    /// valed connects instead of listening.
    pub client: bool,
    /// Queue pairs offered.
    pub queues: u16,
    /// Most frames per forwarding batch from one TX queue.
    pub batch: u16,
    /// Switch to attach to (`vale0`), if any.
    pub attach: Option<String>,
}

/// Why a port name is refused (netmap's NEWIF rules).
pub fn bad_name(name: &str) -> bool {
    name.is_empty()
        || name.len() > 15
        || name.starts_with("vale")
        || name.contains(|c: char| c == ':' || c == '/' || c == '=' || c.is_whitespace())
}

impl VhostSpec {
    /// Parses `NAME=PATH[,client][,queues=N][,batch=N][,attach=valeX]`.
    pub fn parse_arg(s: &str) -> Result<VhostSpec, String> {
        let (name, rest) = s.split_once('=').ok_or_else(|| {
            format!(
                "--vhost-user {s:?}: want NAME=PATH[,client][,queues=N][,batch=N][,attach=valeX]"
            )
        })?;
        let mut parts = rest.split(',');
        let path = parts.next().unwrap_or_default();
        let mut spec = VhostSpec {
            name: name.to_string(),
            path: PathBuf::from(path),
            client: false,
            queues: 1,
            batch: backend::device::DEFAULT_BATCH,
            attach: None,
        };
        for p in parts {
            spec.option(p)
                .map_err(|e| format!("--vhost-user {s:?}: {e}"))?;
        }
        spec.check()
            .map_err(|e| format!("--vhost-user {s:?}: {e}"))?;
        Ok(spec)
    }

    fn option(&mut self, p: &str) -> Result<(), String> {
        match p.split_once('=') {
            None if p == "client" => self.client = true,
            None if p == "server" => self.client = false,
            Some(("queues", n)) => {
                self.queues = n
                    .parse()
                    .ok()
                    .filter(|q| (1..=backend::device::MAX_QUEUE_PAIRS).contains(q))
                    .ok_or_else(|| {
                        format!("queues={n}: want 1..={}", backend::device::MAX_QUEUE_PAIRS)
                    })?
            }
            Some(("batch", n)) => {
                self.batch = n
                    .parse()
                    .ok()
                    .filter(|&b: &u16| b >= 1 && b as usize <= backend::device::MAX_BATCH)
                    .ok_or_else(|| format!("batch={n}: want 1..={}", backend::device::MAX_BATCH))?
            }
            Some(("attach", sw)) => {
                if !sw.starts_with("vale") || sw.len() <= 4 || sw.contains(':') {
                    return Err(format!("attach={sw}: want a switch name such as vale0"));
                }
                self.attach = Some(sw.to_string());
            }
            _ => return Err(format!("unknown option {p:?}")),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        if bad_name(&self.name) {
            return Err(format!(
                "port name {:?}: want 1-15 characters, no ':', '/', '=', spaces, not starting with \"vale\"",
                self.name
            ));
        }
        let p = self.path.as_os_str().len();
        if p == 0 || p >= 108 {
            return Err(format!("socket path {:?}: want 1-107 bytes", self.path));
        }
        Ok(())
    }

    /// Parses a config file: one port per line,
    /// `vhost-user NAME PATH [client] [queues=N] [batch=N] [attach=valeX]`; `#`
    /// starts a comment.
    pub fn parse_file(text: &str, file: &Path) -> Result<Vec<VhostSpec>, String> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let at = || format!("{}:{}", file.display(), n + 1);
            let mut w = line.split_whitespace();
            match w.next() {
                Some("vhost-user") => {}
                Some(k) => return Err(format!("{}: unknown keyword {k:?}", at())),
                None => continue,
            }
            let (Some(name), Some(path)) = (w.next(), w.next()) else {
                return Err(format!("{}: want \"vhost-user NAME PATH [options]\"", at()));
            };
            let mut spec = VhostSpec {
                name: name.into(),
                path: path.into(),
                client: false,
                queues: 1,
                batch: backend::device::DEFAULT_BATCH,
                attach: None,
            };
            for o in w {
                spec.option(o).map_err(|e| format!("{}: {e}", at()))?;
            }
            spec.check().map_err(|e| format!("{}: {e}", at()))?;
            out.push(spec);
        }
        Ok(out)
    }

    /// The config-file line for this port.
    pub fn to_line(&self) -> String {
        let mut s = format!("vhost-user {} {}", self.name, self.path.display());
        if self.client {
            s.push_str(" client");
        }
        if self.queues != 1 {
            s.push_str(&format!(" queues={}", self.queues));
        }
        if self.batch != backend::device::DEFAULT_BATCH {
            s.push_str(&format!(" batch={}", self.batch));
        }
        if let Some(a) = &self.attach {
            s.push_str(&format!(" attach={a}"));
        }
        s
    }

    /// The backend's settings for this port.
    pub fn net_config(&self) -> NetConfig {
        let mut c = NetConfig::new(&self.name, &self.path);
        c.mode = if self.client {
            SocketMode::Client
        } else {
            SocketMode::Server
        };
        c.queue_pairs = self.queues;
        c.batch = self.batch;
        c
    }
}

/// A vhost-user port valed hosts.
#[derive(Debug)]
pub struct VhostPort {
    /// How it was made.
    pub spec: VhostSpec,
    /// The backend.
    pub port: backend::NetPort,
    /// Who made it.
    pub owner: u32,
    /// (switch, index) when attached.
    pub attached: Option<(String, PortId)>,
    /// Forwarding units' registration id.
    pub unit_id: u64,
    /// Forwarding threads holding its TX queues.
    pub fwd: Vec<usize>,
}

/// Relays a guest's TX kicks to the eventfds the forwarding threads sleep
/// on (one per queue pair). RX kicks wake held senders through the port's
/// own eventfd ([`backend::RxSet`]).
#[derive(Debug)]
pub struct Relay(pub Vec<Arc<EventFd>>);

impl KickHook for Relay {
    fn tx_kick(&self, pair: u16) {
        if let Some(k) = self.0.get(pair as usize) {
            let _ = k.kick();
        }
    }

    fn rx_kick(&self, _pair: u16) {}
}

/// The other way to run a VM port's TX (`valed --vhost-inline`): the
/// vhost-user worker that sees the guest's kick forwards the queue itself,
/// until it is empty and the guest's kicks are back on. One thread wake-up
/// per kick instead of two, but the worker is not pinned, not shared with
/// other ports and does not busy-poll.
pub struct Inline {
    /// The switch.
    pub switch: Arc<vale::Switch>,
    /// The port.
    pub port: PortId,
    /// One per queue pair.
    pub queues: Vec<std::sync::Mutex<(backend::TxQueue, vale::Scratch)>>,
    /// Start of valed's clock, for MAC aging.
    pub t0: std::time::Instant,
}

impl std::fmt::Debug for Inline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inline").field("port", &self.port).finish()
    }
}

impl KickHook for Inline {
    fn tx_kick(&self, pair: u16) {
        let Some(m) = self.queues.get(pair as usize) else {
            return;
        };
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        let (q, sc) = &mut *g;
        let now = self.t0.elapsed().as_secs() as u32;
        loop {
            q.disable_notification();
            while self.switch.forward(self.port, q, sc, now).frames > 0 {}
            if !q.enable_notification() {
                break;
            }
        }
    }

    fn rx_kick(&self, _pair: u16) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_lines() {
        let s = VhostSpec::parse_arg("vm1=/tmp/vm1.sock,client,queues=4,batch=16,attach=vale0")
            .unwrap();
        assert_eq!(s.name, "vm1");
        assert!(s.client);
        assert_eq!(s.queues, 4);
        assert_eq!(s.batch, 16);
        assert_eq!(s.net_config().batch, 16);
        assert!(s.to_line().contains(" batch=16"));
        let d = VhostSpec::parse_arg("vm2=/x").unwrap();
        assert_eq!(d.batch, backend::device::DEFAULT_BATCH);
        assert!(!d.to_line().contains("batch"));
        assert_eq!(s.attach.as_deref(), Some("vale0"));
        let line = s.to_line();
        let back = VhostSpec::parse_file(&line, Path::new("f")).unwrap();
        assert_eq!(back, vec![s]);
        for bad in [
            "vm1",
            "=/x",
            "vale1=/x",
            "vm1=",
            "vm1=/x,queues=0",
            "vm1=/x,queues=17",
            "vm1=/x,batch=0",
            "vm1=/x,batch=1025",
            "vm1=/x,batch=x",
            "vm1=/x,attach=foo",
            "vm1=/x,bogus",
        ] {
            assert!(VhostSpec::parse_arg(bad).is_err(), "{bad}");
        }
        let e =
            VhostSpec::parse_file("# c\n\nvhost-user a /p\nfoo b\n", Path::new("f")).unwrap_err();
        assert!(e.contains("f:4"), "{e}");
    }
}
