//! vhost-user-net ports in valed: their specification (command line,
//! config file, `vale-ctl -n NAME --vhost-user PATH`), and the relay by
//! which a port's session wakes the forwarding threads (a queue enabled,
//! a new kick fd, an announcement; the guest's own TX kicks wake them
//! directly, see [`crate::fwd`]).

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
    /// The uid it belongs to (0: root's).
    pub owner: u32,
}

/// Characters no port name or socket path may hold: the config file and
/// `--vhost-user` separate fields by spaces and commas and start comments
/// with `#`; control characters would break lines. One rule everywhere,
/// so nothing written to the config file reads back differently.
fn unsafe_char(c: char) -> bool {
    c.is_whitespace() || c.is_control() || c == '#' || c == ','
}

/// Why a port name is refused (netmap's NEWIF rules, and `unsafe_char`).
pub fn bad_name(name: &str) -> bool {
    name.is_empty()
        || name.len() > 15
        || name.starts_with("vale")
        || name.contains(|c: char| c == ':' || c == '/' || c == '=' || unsafe_char(c))
}

/// A socket path that [`VhostSpec`] can carry: 1-107 bytes, UTF-8, none of
/// `unsafe_char`.
pub fn check_path(path: &Path) -> Result<(), String> {
    let Some(s) = path.to_str() else {
        return Err(format!("socket path {path:?}: not UTF-8"));
    };
    if s.is_empty() || s.len() >= 108 {
        return Err(format!("socket path {s:?}: want 1-107 bytes"));
    }
    if s.contains(unsafe_char) {
        return Err(format!(
            "socket path {s:?}: no spaces, control characters, '#' or ','"
        ));
    }
    Ok(())
}

/// A plain socket file name a tenant may give: `[A-Za-z0-9._-]`, 1-64
/// characters, not starting with a dot.
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
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
            owner: 0,
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
            Some(("owner", n)) => {
                self.owner = n
                    .parse()
                    .map_err(|_| format!("owner={n}: want a numeric uid"))?
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
                "port name {:?}: want 1-15 characters, no ':', '/', '=', ',', '#', spaces, not starting with \"vale\"",
                self.name
            ));
        }
        check_path(&self.path)
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
                owner: 0,
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
        if self.owner != 0 {
            s.push_str(&format!(" owner={}", self.owner));
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
        c.owner = (self.owner != 0).then_some(self.owner);
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
    /// (switch, index) when attached.
    pub attached: Option<(String, PortId)>,
    /// Forwarding units' registration id.
    pub unit_id: u64,
    /// Forwarding threads holding its TX queues.
    pub fwd: Vec<usize>,
}

/// Wakes the forwarding threads through the eventfds they sleep on (one
/// per queue pair) when the session has news for a TX queue. The guest's
/// TX kicks themselves reach the threads without it (the port is made
/// with `fwd_watches_tx_kicks`). RX kicks wake held senders through the
/// port's own eventfd ([`backend::RxSet`]).
#[derive(Debug)]
pub struct Relay(pub Vec<Arc<EventFd>>);

impl KickHook for Relay {
    fn tx_kick(&self, pair: u16) -> bool {
        if let Some(k) = self.0.get(pair as usize) {
            let _ = k.kick();
        }
        false
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
}

impl std::fmt::Debug for Inline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inline").field("port", &self.port).finish()
    }
}

/// Batches one call of [`Inline::tx_kick`] forwards at most (a ring of
/// 1024 chains in 64-frame batches, four times over).
const INLINE_BATCHES: u32 = 64;

impl KickHook for Inline {
    fn tx_kick(&self, pair: u16) -> bool {
        let Some(m) = self.queues.get(pair as usize) else {
            return false;
        };
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        let (q, sc) = &mut *g;
        let now = crate::fwd::now_secs();
        // A guest that posts as fast as this thread forwards would keep it
        // here for good, and the session (its socket, its stop signal)
        // with it: after INLINE_BATCHES batches the rest waits for the
        // session's next call, kicks still off.
        let mut left = INLINE_BATCHES;
        loop {
            vale::Source::disarm(q);
            while self.switch.forward(self.port, q, sc, now).frames > 0 {
                left -= 1;
                if left == 0 {
                    return true;
                }
            }
            if vale::Source::arm(q) {
                return false;
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

    /// Whatever names and paths a client sends, what is written to the
    /// config file reads back as the same ports: the characters that
    /// would split a field or a line are refused up front.
    #[test]
    fn hostile_names_and_paths_cannot_reach_the_config_file() {
        for name in ["a b", "a\nb", "a#b", "a,b", "a\tb", "x\u{7f}"] {
            assert!(bad_name(name), "{name:?}");
        }
        for path in [
            "/tmp/a b.sock",
            "/tmp/a\nvhost-user evil /etc/shadow",
            "/tmp/a#b",
            "/tmp/a,client",
            "/tmp/\u{1b}[31m",
        ] {
            assert!(check_path(Path::new(path)).is_err(), "{path:?}");
            // (On the command line a comma starts an option instead.)
            if !path.contains(',') {
                assert!(
                    VhostSpec::parse_arg(&format!("vm1={path}")).is_err(),
                    "{path:?}"
                );
            }
        }
        // Every accepted spec round-trips, owner included.
        let mut specs = Vec::new();
        for (i, path) in ["/run/vale/vhost/vm-1.sock", "/tmp/x_y.z", "/a/b/c"]
            .iter()
            .enumerate()
        {
            let mut s = VhostSpec::parse_arg(&format!("p{i}={path},queues=2")).unwrap();
            s.owner = 1000 + i as u32 * 7;
            specs.push(s);
        }
        let text: String = specs.iter().map(|s| s.to_line() + "\n").collect();
        let back = VhostSpec::parse_file(&text, Path::new("f")).unwrap();
        assert_eq!(back, specs);
        assert_eq!(back[1].net_config().owner, Some(1007));
        let root = VhostSpec::parse_arg("r=/x").unwrap();
        assert_eq!(root.net_config().owner, None);
        assert!(!root.to_line().contains("owner"));
        assert!(VhostSpec::parse_arg("r=/x,owner=bob").is_err());
    }

    #[test]
    fn plain_names() {
        for ok in ["vm1", "vm1.sock", "a-b_c.d", "X"] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "..", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }
}
