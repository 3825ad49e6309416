//! Command line of `vale-ctl`.
//!
//! netmap's vale-ctl reads its options with `getopt(argc, argv,
//! "d:a:h:g:l:n:r:C:p:P:m:v")`; this parser accepts the same language (clustered
//! short options, `-aNAME` and `-a NAME`, `--` ends the options, the last command
//! option wins, operands are an error) plus long options of our own:
//! `--stats [PORT]`, `--config PORT [SPEC]`, `--config SWITCH [share=UIDS]`,
//! `--vhost-user PATH[,client][,queues=N]`
//! (with `-n NAME`), `--json` and `--socket PATH`.

use std::path::{Component, Path, PathBuf};

use netmap::abi::{
    NmreqValePolling, NETMAP_POLLING_MODE_MULTI_CPU, NETMAP_POLLING_MODE_SINGLE_CPU, NM_BDG_NAME,
    NR_REG_ALL_NIC, NR_REG_NIC_SW,
};
use netmap::ctrl::VALE_SHARE_MAX;
use netmap::portname::MAX_VALE_SWITCH_LEN;

/// The program name used in diagnostics, as getopt prints `argv[0]`.
pub const PROG: &str = "vale-ctl";

/// netmap's usage text, with our long options added before the last line.
pub const USAGE: &str = "Usage:\n\
vale-ctl [arguments]\n\
\t-g interface\tinterface name to get info\n\
\t-d interface\tinterface name to be detached\n\
\t-a interface\tinterface name to be attached\n\
\t-h interface\tinterface name to be attached with the host stack\n\
\t-n interface\tinterface name to be created\n\
\t-r interface\tinterface name to be deleted\n\
\t-l vale-port\tshow bridge and port indices\n\
\t-C string ring/slot setting of an interface creating by -n\n\
\t-p interface start polling. Additional -C x,y,z configures\n\
\t\t x: 0 (REG_ALL_NIC) or 1 (REG_ONE_NIC),\n\
\t\t y: CPU core id for ALL_NIC and core/ring for ONE_NIC\n\
\t\t z: (ONE_NIC only) num of total cores/rings\n\
\t-P interface stop polling\n\
\t-m memid to use when creating a new interface\n\
\t-v increase verbosity\n\
\t--stats [port]\tshow the counters of one port or of all ports\n\
\t--config port [spec]\tshow or change a vale port's options; spec:\n\
\t\t backpressure=on|off,port-mask=on|off,mac-limit=N (0: the default, 1024)\n\
\t--config switch [share=uids]\tshow or set whom a switch is shared with;\n\
\t\t uids: uid,... (the new list; empty: none), +uid, -uid\n\
\t--vhost-user path[,client][,queues=N]\n\
\t\twith -n: create a vhost-user-net port on socket path\n\
\t\t (client: valed connects to the VMM; queues: 1..16 pairs)\n\
\t--json\t\twith --stats or --config: print JSON\n\
\t--socket path\tvaled's control socket (default $VALE_SOCKET, else /run/vale/valed.sock)\n\
with no arguments: list all existing vale ports\n";

/// Ring and slot counts from `-C`, as netmap's `parse_ring_config()` reads them:
/// `tx_slots[,rx_slots[,tx_rings[,rx_rings]]]`, each number with `atoi()`, empty
/// fields skipped (`strtok`), zero meaning "default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingConfig {
    /// Slots per TX ring.
    pub tx_slots: u32,
    /// Slots per RX ring.
    pub rx_slots: u32,
    /// Number of TX rings.
    pub tx_rings: u16,
    /// Number of RX rings.
    pub rx_rings: u16,
    /// Fields past the fourth, which netmap reports as `ignored config: FIELD`.
    pub ignored: Vec<String>,
}

impl RingConfig {
    /// Parses `-C` for `-n`, `-a` and `-h`; `None` (no `-C`) gives all zeros.
    pub fn parse(conf: Option<&str>) -> RingConfig {
        let mut c = RingConfig::default();
        for (i, tok) in c_tokens(conf.unwrap_or("")).enumerate() {
            let v = atoi(tok);
            match i {
                0 => {
                    c.tx_slots = v as u32;
                    c.rx_slots = v as u32;
                }
                1 => c.rx_slots = v as u32,
                2 => {
                    c.tx_rings = v as u16;
                    c.rx_rings = v as u16;
                }
                3 => c.rx_rings = v as u16,
                _ => c.ignored.push(tok.to_owned()),
            }
        }
        c
    }
}

/// The polling body from `-C` for `-p`, as netmap's `parse_poll_config()` reads it:
/// `mode[,first_cpu[,num_cpus]]`, mode 0 = one thread for all rings, non-zero = one
/// thread per ring. netmap prints its complaints and sends the request anyway, with
/// the fields filled so far; so do we.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollConfig {
    /// The `nmreq_vale_polling` body to send.
    pub body: NmreqValePolling,
    /// netmap's complaint about the string, if any (printed, not fatal).
    pub warning: Option<String>,
}

impl PollConfig {
    /// Parses `-C` for `-p` (`required`: an absent or empty string draws netmap's
    /// `invalid null/empty config`) or for `-P` (`!required`: zeros, silently).
    pub fn parse(conf: Option<&str>, required: bool) -> PollConfig {
        let mut c = PollConfig::default();
        let s = match conf {
            Some(s) if !s.is_empty() => s,
            _ => {
                if required {
                    c.warning = Some("invalid null/empty config".to_owned());
                }
                return c;
            }
        };
        for (i, tok) in c_tokens(s).enumerate() {
            let v = atoi(tok) as u32;
            match i {
                0 => {
                    c.body.nr_mode = if v != 0 {
                        NETMAP_POLLING_MODE_MULTI_CPU
                    } else {
                        NETMAP_POLLING_MODE_SINGLE_CPU
                    }
                }
                1 => c.body.nr_first_cpu_id = v,
                2 if c.body.nr_mode == NETMAP_POLLING_MODE_MULTI_CPU => {
                    c.body.nr_num_polling_cpus = v
                }
                _ => {
                    c.warning = Some(format!("too many numbers in '{s}'"));
                    break;
                }
            }
        }
        c
    }
}

/// The changes `--config PORT SPEC` asks for; `None` leaves a setting as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortConfigSpec {
    /// `backpressure=on|off`.
    pub backpressure: Option<bool>,
    /// `port-mask=on|off`.
    pub port_mask: Option<bool>,
    /// `mac-limit=N` (0: the switch default, 1024).
    pub mac_limit: Option<u32>,
}

impl PortConfigSpec {
    /// Reads `item[,item...]`, each `backpressure=on|off`, `port-mask=on|off` or
    /// `mac-limit=N` (decimal, 0 to 4294967295); a later item overrides an
    /// earlier one for the same setting.
    ///
    /// # Errors
    ///
    /// The first item that is none of these (an empty one included), as given.
    pub fn parse(spec: &str) -> Result<PortConfigSpec, String> {
        let mut c = PortConfigSpec::default();
        for item in spec.split(',') {
            let bad = || item.to_owned();
            let (key, value) = item.split_once('=').ok_or_else(bad)?;
            let on_off = || match value {
                "on" => Ok(true),
                "off" => Ok(false),
                _ => Err(bad()),
            };
            match key {
                "backpressure" => c.backpressure = Some(on_off()?),
                "port-mask" => c.port_mask = Some(on_off()?),
                "mac-limit" => {
                    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(bad());
                    }
                    c.mac_limit = Some(value.parse().map_err(|_| bad())?);
                }
                _ => return Err(bad()),
            }
        }
        Ok(c)
    }

    /// Whether the spec changes nothing (the request only reads).
    pub fn is_read(&self) -> bool {
        *self == PortConfigSpec::default()
    }
}

/// A change to a switch's share list (`--config SWITCH share=...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareChange {
    /// `share=UID,...`, or `share=` (none): replace the list. Duplicates are
    /// dropped (the first stays); at most [`VALE_SHARE_MAX`] uids.
    Set(Vec<u32>),
    /// `share=+UID` and `share=-UID` (several, comma-separated): add or remove
    /// uids from the list valed has, in the order given.
    Edit(Vec<ShareEdit>),
}

/// One `+UID` or `-UID` of `share=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareEdit {
    /// `+UID`: add the uid unless it is there.
    Add(u32),
    /// `-UID`: remove the uid if it is there.
    Remove(u32),
}

impl ShareChange {
    /// The list to send, given the one valed has (`current`, used by
    /// [`ShareChange::Edit`] only). An added uid goes last; the result may be
    /// longer than [`VALE_SHARE_MAX`], which the caller refuses.
    pub fn apply(&self, current: &[u32]) -> Vec<u32> {
        match self {
            ShareChange::Set(uids) => uids.clone(),
            ShareChange::Edit(edits) => {
                let mut list: Vec<u32> = Vec::with_capacity(current.len() + edits.len());
                for &uid in current {
                    if !list.contains(&uid) {
                        list.push(uid);
                    }
                }
                for edit in edits {
                    match *edit {
                        ShareEdit::Add(uid) if !list.contains(&uid) => list.push(uid),
                        ShareEdit::Add(_) => {}
                        ShareEdit::Remove(uid) => list.retain(|&u| u != uid),
                    }
                }
                list
            }
        }
    }
}

/// What `--config SWITCH SPEC` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchConfigSpec {
    /// `share=...`; `None` only reads.
    pub share: Option<ShareChange>,
}

/// The largest uid `share=` takes: `(uid_t)-1` is no uid.
const MAX_UID: u32 = u32::MAX - 1;

impl SwitchConfigSpec {
    /// Reads `share=LIST`: `LIST` is empty (share with nobody), or
    /// comma-separated decimal uids (the new list), or comma-separated `+UID`
    /// and `-UID` (changes to the current list); the two kinds do not mix.
    ///
    /// # Errors
    ///
    /// What is wrong, naming the item: `bad item "..." for a switch ...`,
    /// `share=: bad uid "..." ...`, `share=: 17 uids, at most 16`, ...
    pub fn parse(spec: &str) -> Result<SwitchConfigSpec, String> {
        let Some(list) = spec.strip_prefix("share=") else {
            return Err(format!(
                "bad item \"{spec}\" for a switch (want share=UID[,UID...])"
            ));
        };
        if list.is_empty() {
            return Ok(SwitchConfigSpec {
                share: Some(ShareChange::Set(Vec::new())),
            });
        }
        let uid = |item: &str, digits: &str| -> Result<u32, String> {
            Some(digits)
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u32>().ok())
                .filter(|&u| u <= MAX_UID)
                .ok_or_else(|| {
                    format!("share=: bad uid \"{item}\" (want a decimal uid, 0 to {MAX_UID})")
                })
        };
        let mut set: Vec<u32> = Vec::new();
        let mut edits: Vec<ShareEdit> = Vec::new();
        for item in list.split(',') {
            let edit = match item.as_bytes().first() {
                Some(b'+') => Some(ShareEdit::Add(uid(item, &item[1..])?)),
                Some(b'-') => Some(ShareEdit::Remove(uid(item, &item[1..])?)),
                _ => None,
            };
            match edit {
                Some(e) => edits.push(e),
                None => {
                    let u = uid(item, item)?;
                    if !set.contains(&u) {
                        set.push(u);
                    }
                }
            }
            if !set.is_empty() && !edits.is_empty() {
                return Err(format!(
                    "share=: \"{item}\": a new list (UID,...) and changes (+UID, -UID) do not mix"
                ));
            }
        }
        if set.len() > VALE_SHARE_MAX {
            return Err(format!(
                "share=: {} uids, at most {VALE_SHARE_MAX}",
                set.len()
            ));
        }
        let share = if edits.is_empty() {
            ShareChange::Set(set)
        } else {
            ShareChange::Edit(edits)
        };
        Ok(SwitchConfigSpec { share: Some(share) })
    }
}

/// Whether `name` is a switch name as valed's port names have them: `vale`
/// then up to 11 of `[A-Za-z0-9_]` (15 bytes in all).
pub fn is_switch_name(name: &str) -> bool {
    name.len() <= MAX_VALE_SWITCH_LEN
        && name
            .strip_prefix(NM_BDG_NAME)
            .is_some_and(|id| id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// Longest vhost-user socket path: a `sun_path` (108 bytes) less its NUL.
pub const VHOST_PATH_MAX: usize = 107;
/// Most queue pairs a vhost-user port may offer (valed's limit).
pub const VHOST_MAX_QUEUE_PAIRS: u16 = 16;

/// The vhost-user-net port `-n NAME --vhost-user PATH[,client][,queues=N]` asks
/// for (`VALE_REQ_VHOST_NEWIF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserSpec {
    /// The socket, absolute (a relative `PATH` is taken from the current
    /// directory, since valed's is another).
    pub path: String,
    /// `client`: valed connects to the VMM's socket instead of listening.
    pub client: bool,
    /// `queues=N`, 1..=16; `None` leaves valed's default (one pair).
    pub queues: Option<u16>,
}

impl VhostUserSpec {
    /// Reads `PATH[,item...]`, each item `client`, `server` (the default) or
    /// `queues=N`; a later item overrides an earlier one. A relative `PATH` is
    /// joined to `cwd()`, which is only called then.
    ///
    /// # Errors
    ///
    /// What is wrong, naming the bad part: `socket path "..." too long (max 107
    /// bytes)`, `queues=0: want 1..=16`, `bad item "..."`, ...
    pub fn parse(
        arg: &str,
        cwd: impl FnOnce() -> std::io::Result<PathBuf>,
    ) -> Result<VhostUserSpec, String> {
        let mut items = arg.split(',');
        let given = items.next().unwrap_or_default();
        if given.is_empty() {
            return Err("empty socket path".to_owned());
        }
        if given.contains('\0') {
            return Err(format!("socket path {given:?} contains a NUL byte"));
        }
        let path = if Path::new(given).is_absolute() {
            given.to_owned()
        } else {
            let dir = cwd().map_err(|e| {
                format!("relative socket path {given:?}: no current directory: {e}")
            })?;
            // Components drop "." and doubled slashes, keep "..".
            let abs: PathBuf = dir
                .join(given)
                .components()
                .filter(|c| *c != Component::CurDir)
                .collect();
            abs.into_os_string().into_string().map_err(|_| {
                format!("relative socket path {given:?}: the current directory is not UTF-8")
            })?
        };
        if path.len() > VHOST_PATH_MAX {
            return Err(format!(
                "socket path {path:?} too long (max {VHOST_PATH_MAX} bytes)"
            ));
        }
        let mut spec = VhostUserSpec {
            path,
            client: false,
            queues: None,
        };
        for item in items {
            match item.split_once('=') {
                None if item == "client" => spec.client = true,
                None if item == "server" => spec.client = false,
                Some(("queues", n)) => {
                    let q = Some(n)
                        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|n| n.parse::<u16>().ok())
                        .filter(|q| (1..=VHOST_MAX_QUEUE_PAIRS).contains(q))
                        .ok_or_else(|| format!("queues={n}: want 1..={VHOST_MAX_QUEUE_PAIRS}"))?;
                    spec.queues = Some(q);
                }
                _ => return Err(format!("bad item \"{item}\"")),
            }
        }
        Ok(spec)
    }
}

/// The memory region for `-n` and `-a` / `-h` (`-m`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MemSpec {
    /// No `-m`: a fresh region (`nr_mem_id` 0).
    #[default]
    Default,
    /// `-m N` (starts with a digit): `atoi(N)` truncated to 16 bits, as netmap stores it.
    Id(u16),
    /// `-m PORT`: the region of that port, asked from valed with
    /// `NETMAP_REQ_PORT_INFO_GET` (netmap's `nmreq_get_mem_id()`).
    Port(String),
}

impl MemSpec {
    /// Reads a `-m` argument.
    pub fn parse(arg: Option<&str>) -> MemSpec {
        match arg {
            None => MemSpec::Default,
            Some(s) if s.as_bytes().first().is_some_and(u8::is_ascii_digit) => {
                MemSpec::Id(atoi(s) as u16)
            }
            Some(s) => MemSpec::Port(s.to_owned()),
        }
    }
}

/// What `vale-ctl` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// No arguments: `NETMAP_REQ_VALE_LIST` with an empty name, repeated.
    ListAll,
    /// `-l valeX:Y`: `NETMAP_REQ_VALE_LIST` for one port.
    List {
        /// The port.
        name: String,
    },
    /// `-a valeX:IF` (`nr_mode` `NR_REG_ALL_NIC`) or `-h valeX:IF` (`NR_REG_NIC_SW`):
    /// `NETMAP_REQ_VALE_ATTACH`.
    Attach {
        /// `valeX:IF`.
        name: String,
        /// `nr_mode` of the embedded registration.
        mode: u32,
        /// From `-C`.
        rings: RingConfig,
        /// From `-m`.
        mem: MemSpec,
    },
    /// `-d valeX:IF`: `NETMAP_REQ_VALE_DETACH`.
    Detach {
        /// `valeX:IF`.
        name: String,
    },
    /// `-n IF`: `NETMAP_REQ_VALE_NEWIF`.
    NewIf {
        /// The new persistent port.
        name: String,
        /// From `-C`.
        rings: RingConfig,
        /// From `-m`.
        mem: MemSpec,
    },
    /// `-n IF --vhost-user SPEC`: `VALE_REQ_VHOST_NEWIF`, a vhost-user-net port.
    VhostNewIf {
        /// The new port.
        name: String,
        /// Its socket and queues.
        vhost: VhostUserSpec,
    },
    /// `-r IF`: `NETMAP_REQ_VALE_DELIF` (no body).
    DelIf {
        /// The persistent port.
        name: String,
    },
    /// `-g PORT`: `NETMAP_REQ_PORT_INFO_GET`.
    PortInfo {
        /// The port.
        name: String,
    },
    /// `-p PORT`: `NETMAP_REQ_VALE_POLLING_ENABLE`.
    PollingEnable {
        /// The port.
        name: String,
        /// From `-C`.
        poll: PollConfig,
    },
    /// `-P PORT`: `NETMAP_REQ_VALE_POLLING_DISABLE`.
    PollingDisable {
        /// The port.
        name: String,
        /// From `-C` (netmap fills the body the same way; valed ignores it).
        poll: PollConfig,
    },
    /// `--stats [PORT]`: `VALE_REQ_STATS`, one port or all.
    Stats {
        /// The port, or `None` for all.
        port: Option<String>,
        /// `--json`: print valed's document unchanged.
        json: bool,
    },
    /// `--config PORT [SPEC]`: `VALE_REQ_PORT_CONFIG`, reading or changing the
    /// port's switch options.
    Config {
        /// The port (`valeX:Y`).
        name: String,
        /// What to change; all `None` only reads.
        spec: PortConfigSpec,
        /// `--json`: print the result as a JSON object.
        json: bool,
    },
    /// `--config SWITCH [share=...]` (a name without `:`):
    /// `VALE_REQ_SWITCH_CONFIG`, reading or changing whom the switch is shared
    /// with.
    SwitchConfig {
        /// The switch (`valeX`).
        name: String,
        /// What to change; `share: None` only reads.
        spec: SwitchConfigSpec,
        /// `--json`: print the result as a JSON object.
        json: bool,
    },
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// What to do.
    pub command: Command,
    /// Number of `-v`.
    pub verbose: u32,
    /// `--socket PATH`, if given (else `$VALE_SOCKET`, else the default).
    pub socket: Option<PathBuf>,
}

/// Why the command line was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Print the message (if any), then [`USAGE`], to stderr; exit 1.
    Usage(Option<String>),
    /// `--help`: [`USAGE`] to stdout, exit 0.
    Help,
}

/// Which command option came last (netmap keeps only the last one).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Which {
    List,
    Attach(u32),
    Detach,
    NewIf,
    DelIf,
    PortInfo,
    PollOn,
    PollOff,
    Stats,
    Config(PortConfigSpec),
    SwitchConfig(SwitchConfigSpec),
}

/// Short options that take an argument.
const WITH_ARG: &[u8] = b"dahglnrCpPm";

/// Parses the arguments after the program name.
///
/// # Errors
///
/// [`ParseError::Usage`] where netmap's vale-ctl prints its usage and exits 1;
/// [`ParseError::Help`] for `--help`.
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Invocation, ParseError> {
    let mut which: Option<(Which, Option<String>)> = None;
    let mut config: Option<String> = None;
    let mut mem_id: Option<String> = None;
    let mut verbose = 0u32;
    let mut json = false;
    let mut socket: Option<PathBuf> = None;
    let mut vhost: Option<VhostUserSpec> = None;
    let mut operands = 0usize;

    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_ref();
        i += 1;
        if arg == "--" {
            operands += args.len() - i;
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (opt, inline) = match long.split_once('=') {
                Some((o, v)) => (o, Some(v)),
                None => (long, None),
            };
            match opt {
                "stats" => {
                    let port = match inline {
                        Some(v) => Some(v.to_owned()),
                        None => match args.get(i).map(AsRef::as_ref) {
                            Some(next) if !next.starts_with('-') => {
                                i += 1;
                                Some(next.to_owned())
                            }
                            _ => None,
                        },
                    };
                    which = Some((Which::Stats, port));
                }
                "config" => {
                    let port = match inline {
                        Some(v) => v.to_owned(),
                        None => match args.get(i) {
                            Some(v) => {
                                i += 1;
                                v.as_ref().to_owned()
                            }
                            None => {
                                return Err(ParseError::Usage(Some(format!(
                                    "{PROG}: option '--config' requires an argument"
                                ))))
                            }
                        },
                    };
                    // As with --stats: a next word not starting with '-' is SPEC.
                    let spec = match args.get(i).map(AsRef::as_ref) {
                        Some(next) if !next.starts_with('-') => {
                            i += 1;
                            Some(next)
                        }
                        _ => None,
                    };
                    let usage =
                        |m: String| ParseError::Usage(Some(format!("{PROG}: --config: {m}")));
                    // A port is valeX:Y; a name without ':' is a switch.
                    let w = if port.contains(':') {
                        Which::Config(match spec {
                            Some(s) => PortConfigSpec::parse(s)
                                .map_err(|item| usage(format!("bad item \"{item}\"")))?,
                            None => PortConfigSpec::default(),
                        })
                    } else {
                        if !is_switch_name(&port) {
                            return Err(usage(format!(
                                "bad switch name \"{port}\" (want valeX, X up to 11 of \
                                 [A-Za-z0-9_]; or valeX:PORT for a port)"
                            )));
                        }
                        Which::SwitchConfig(match spec {
                            Some(s) => SwitchConfigSpec::parse(s).map_err(usage)?,
                            None => SwitchConfigSpec::default(),
                        })
                    };
                    which = Some((w, Some(port)));
                }
                "json" | "help" => {
                    if inline.is_some() {
                        return Err(ParseError::Usage(Some(format!(
                            "{PROG}: option '--{opt}' doesn't allow an argument"
                        ))));
                    }
                    if opt == "help" {
                        return Err(ParseError::Help);
                    }
                    json = true;
                }
                "socket" => {
                    let path = match inline {
                        Some(v) => v.to_owned(),
                        None => match args.get(i) {
                            Some(v) => {
                                i += 1;
                                v.as_ref().to_owned()
                            }
                            None => {
                                return Err(ParseError::Usage(Some(format!(
                                    "{PROG}: option '--socket' requires an argument"
                                ))))
                            }
                        },
                    };
                    socket = Some(PathBuf::from(path));
                }
                "vhost-user" => {
                    let spec = match inline {
                        Some(v) => v.to_owned(),
                        None => match args.get(i) {
                            Some(v) => {
                                i += 1;
                                v.as_ref().to_owned()
                            }
                            None => {
                                return Err(ParseError::Usage(Some(format!(
                                    "{PROG}: option '--vhost-user' requires an argument"
                                ))))
                            }
                        },
                    };
                    let spec = VhostUserSpec::parse(&spec, std::env::current_dir).map_err(|e| {
                        ParseError::Usage(Some(format!("{PROG}: --vhost-user: {e}")))
                    })?;
                    vhost = Some(spec);
                }
                _ => {
                    return Err(ParseError::Usage(Some(format!(
                        "{PROG}: unrecognized option '{arg}'"
                    ))))
                }
            }
            continue;
        }
        let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) else {
            // getopt moves operands to the end; netmap then refuses them.
            operands += 1;
            continue;
        };
        for (pos, ch) in cluster.char_indices() {
            let takes_arg = ch.is_ascii() && WITH_ARG.contains(&(ch as u8));
            if ch == 'v' {
                verbose += 1;
                continue;
            }
            if !takes_arg {
                return Err(ParseError::Usage(Some(format!(
                    "{PROG}: invalid option -- '{ch}'"
                ))));
            }
            let rest = &cluster[pos + ch.len_utf8()..];
            let optarg = if !rest.is_empty() {
                rest.to_owned()
            } else if let Some(next) = args.get(i) {
                i += 1;
                next.as_ref().to_owned()
            } else {
                return Err(ParseError::Usage(Some(format!(
                    "{PROG}: option requires an argument -- '{ch}'"
                ))));
            };
            let cmd = match ch {
                'C' => {
                    config = Some(optarg);
                    break;
                }
                'm' => {
                    mem_id = Some(optarg);
                    break;
                }
                'd' => Which::Detach,
                'a' => Which::Attach(NR_REG_ALL_NIC),
                'h' => Which::Attach(NR_REG_NIC_SW),
                'g' => Which::PortInfo,
                'n' => Which::NewIf,
                'r' => Which::DelIf,
                'p' => Which::PollOn,
                'P' => Which::PollOff,
                'l' => {
                    if !optarg.starts_with(NM_BDG_NAME) {
                        return Err(ParseError::Usage(Some(format!(
                            "invalid vale port name: '{optarg}'"
                        ))));
                    }
                    Which::List
                }
                _ => unreachable!("every option in WITH_ARG is handled"),
            };
            which = Some((cmd, Some(optarg)));
            break;
        }
    }

    if operands > 0 {
        return Err(ParseError::Usage(None));
    }
    if let Some(spec) = vhost {
        let usage = |m: &str| Err(ParseError::Usage(Some(format!("{PROG}: {m}"))));
        return match which {
            Some((Which::NewIf, name)) if !json => {
                if config.is_some() {
                    return usage("--vhost-user: -C does not apply to vhost-user ports");
                }
                if mem_id.is_some() {
                    return usage("--vhost-user: -m does not apply to vhost-user ports");
                }
                Ok(Invocation {
                    command: Command::VhostNewIf {
                        name: name.unwrap_or_default(),
                        vhost: spec,
                    },
                    verbose,
                    socket,
                })
            }
            Some((Which::NewIf, _)) => usage("option '--json' needs '--stats' or '--config'"),
            _ => usage("--vhost-user needs -n NAME"),
        };
    }
    let command = match which {
        None if config.is_none() && mem_id.is_none() && !json => Command::ListAll,
        None => return Err(ParseError::Usage(None)),
        Some((Which::Stats, port)) => Command::Stats { port, json },
        Some((Which::Config(spec), name)) => Command::Config {
            name: name.unwrap_or_default(),
            spec,
            json,
        },
        Some((Which::SwitchConfig(spec), name)) => Command::SwitchConfig {
            name: name.unwrap_or_default(),
            spec,
            json,
        },
        Some(_) if json => {
            return Err(ParseError::Usage(Some(format!(
                "{PROG}: option '--json' needs '--stats' or '--config'"
            ))))
        }
        Some((w, name)) => {
            let name = name.unwrap_or_default();
            let conf = config.as_deref();
            match w {
                Which::List => Command::List { name },
                Which::Attach(mode) => Command::Attach {
                    name,
                    mode,
                    rings: RingConfig::parse(conf),
                    mem: MemSpec::parse(mem_id.as_deref()),
                },
                Which::Detach => Command::Detach { name },
                Which::NewIf => Command::NewIf {
                    name,
                    rings: RingConfig::parse(conf),
                    mem: MemSpec::parse(mem_id.as_deref()),
                },
                Which::DelIf => Command::DelIf { name },
                Which::PortInfo => Command::PortInfo { name },
                Which::PollOn => Command::PollingEnable {
                    name,
                    poll: PollConfig::parse(conf, true),
                },
                Which::PollOff => Command::PollingDisable {
                    name,
                    poll: PollConfig::parse(conf, false),
                },
                Which::Stats | Which::Config(_) | Which::SwitchConfig(_) => {
                    unreachable!("handled above")
                }
            }
        }
    };
    Ok(Invocation {
        command,
        verbose,
        socket,
    })
}

/// The non-empty comma-separated fields of `s`, as `strtok(s, ",")` yields them.
fn c_tokens(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').filter(|t| !t.is_empty())
}

/// C's `atoi()` as glibc has it (`(int)strtol(s, NULL, 10)`): leading white space,
/// an optional sign, then decimal digits up to the first non-digit; no digits is 0;
/// overflow saturates to the 64-bit `long` range before the cast to `int`.
pub fn atoi(s: &str) -> i32 {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r') {
        i += 1;
    }
    let neg = match b.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut v: i64 = 0;
    while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
        let d = i64::from(d - b'0');
        v = if neg {
            v.saturating_mul(10).saturating_sub(d)
        } else {
            v.saturating_mul(10).saturating_add(d)
        };
        i += 1;
    }
    v as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(args: &[&str]) -> Invocation {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e:?}"))
    }

    fn cmd(args: &[&str]) -> Command {
        ok(args).command
    }

    fn usage(args: &[&str]) -> Option<String> {
        match parse(args) {
            Err(ParseError::Usage(m)) => m,
            other => panic!("{args:?}: expected usage, got {other:?}"),
        }
    }

    fn rings(tx_slots: u32, rx_slots: u32, tx_rings: u16, rx_rings: u16) -> RingConfig {
        RingConfig {
            tx_slots,
            rx_slots,
            tx_rings,
            rx_rings,
            ignored: vec![],
        }
    }

    #[test]
    fn table() {
        let name = |s: &str| s.to_owned();
        let cases: Vec<(&[&str], Command)> = vec![
            (&[], Command::ListAll),
            (&["-v"], Command::ListAll),
            (
                &["-l", "vale0:a"],
                Command::List {
                    name: name("vale0:a"),
                },
            ),
            (
                &["-a", "vale0:eth0"],
                Command::Attach {
                    name: name("vale0:eth0"),
                    mode: NR_REG_ALL_NIC,
                    rings: RingConfig::default(),
                    mem: MemSpec::Default,
                },
            ),
            (
                &["-hvale0:eth0"],
                Command::Attach {
                    name: name("vale0:eth0"),
                    mode: NR_REG_NIC_SW,
                    rings: RingConfig::default(),
                    mem: MemSpec::Default,
                },
            ),
            (
                &["-d", "vale0:eth0"],
                Command::Detach {
                    name: name("vale0:eth0"),
                },
            ),
            (
                &["-n", "v0", "-C", "1024,2048,2,3", "-m", "3"],
                Command::NewIf {
                    name: name("v0"),
                    rings: rings(1024, 2048, 2, 3),
                    mem: MemSpec::Id(3),
                },
            ),
            (
                &["-C", "512", "-m", "netmap:eth0", "-n", "v1"],
                Command::NewIf {
                    name: name("v1"),
                    rings: rings(512, 512, 0, 0),
                    mem: MemSpec::Port(name("netmap:eth0")),
                },
            ),
            (&["-r", "v0"], Command::DelIf { name: name("v0") }),
            (
                &["-g", "vale0:v0"],
                Command::PortInfo {
                    name: name("vale0:v0"),
                },
            ),
            (
                &["-p", "vale0:eth0", "-C", "1,2,4"],
                Command::PollingEnable {
                    name: name("vale0:eth0"),
                    poll: PollConfig {
                        body: NmreqValePolling {
                            nr_mode: NETMAP_POLLING_MODE_MULTI_CPU,
                            nr_first_cpu_id: 2,
                            nr_num_polling_cpus: 4,
                            pad1: 0,
                        },
                        warning: None,
                    },
                },
            ),
            (
                &["-P", "vale0:eth0"],
                Command::PollingDisable {
                    name: name("vale0:eth0"),
                    poll: PollConfig::default(),
                },
            ),
            (
                &["--stats"],
                Command::Stats {
                    port: None,
                    json: false,
                },
            ),
            (
                &["--stats", "vale0:a", "--json"],
                Command::Stats {
                    port: Some(name("vale0:a")),
                    json: true,
                },
            ),
            (
                &["--json", "--stats=vale0:b"],
                Command::Stats {
                    port: Some(name("vale0:b")),
                    json: true,
                },
            ),
            (
                &["--stats", "-v"],
                Command::Stats {
                    port: None,
                    json: false,
                },
            ),
            // The last command option wins, as with netmap's getopt loop.
            (
                &["-a", "vale0:x", "-d", "vale0:y"],
                Command::Detach {
                    name: name("vale0:y"),
                },
            ),
            // -h then -a: -a sets NR_REG_ALL_NIC again.
            (
                &["-h", "vale0:x", "-a", "vale0:x"],
                Command::Attach {
                    name: name("vale0:x"),
                    mode: NR_REG_ALL_NIC,
                    rings: RingConfig::default(),
                    mem: MemSpec::Default,
                },
            ),
            // A cluster: -v then -n with its argument in the next word.
            (
                &["-vn", "v2"],
                Command::NewIf {
                    name: name("v2"),
                    rings: RingConfig::default(),
                    mem: MemSpec::Default,
                },
            ),
        ];
        for (args, want) in cases {
            assert_eq!(cmd(args), want, "{args:?}");
        }
    }

    fn spec(
        backpressure: Option<bool>,
        port_mask: Option<bool>,
        mac_limit: Option<u32>,
    ) -> PortConfigSpec {
        PortConfigSpec {
            backpressure,
            port_mask,
            mac_limit,
        }
    }

    #[test]
    fn config_table() {
        let config = |name: &str, spec: PortConfigSpec, json: bool| Command::Config {
            name: name.to_owned(),
            spec,
            json,
        };
        let cases: Vec<(&[&str], Command)> = vec![
            (
                &["--config", "vale0:vm1"],
                config("vale0:vm1", PortConfigSpec::default(), false),
            ),
            (
                &["--config=vale0:vm1"],
                config("vale0:vm1", PortConfigSpec::default(), false),
            ),
            (
                &["--config", "vale0:vm1", "backpressure=on"],
                config("vale0:vm1", spec(Some(true), None, None), false),
            ),
            (
                &["--config=vale0:vm1", "port-mask=off", "--json"],
                config("vale0:vm1", spec(None, Some(false), None), true),
            ),
            (
                &["--json", "--config", "vale0:a", "mac-limit=0"],
                config("vale0:a", spec(None, None, Some(0)), true),
            ),
            (
                &[
                    "--config",
                    "vale0:a",
                    "backpressure=off,port-mask=on,mac-limit=4294967295",
                ],
                config(
                    "vale0:a",
                    spec(Some(false), Some(true), Some(u32::MAX)),
                    false,
                ),
            ),
            // A later item for the same setting wins.
            (
                &[
                    "--config",
                    "vale0:a",
                    "mac-limit=8,backpressure=on,mac-limit=16",
                ],
                config("vale0:a", spec(Some(true), None, Some(16)), false),
            ),
            // A next word starting with '-' is an option, not SPEC.
            (
                &["--config", "vale0:a", "-v"],
                config("vale0:a", PortConfigSpec::default(), false),
            ),
            // The last command option wins, --config included.
            (
                &["--config", "vale0:a", "backpressure=on", "-g", "vale0:a"],
                Command::PortInfo {
                    name: "vale0:a".to_owned(),
                },
            ),
            (
                &["--stats", "--config", "vale0:b"],
                config("vale0:b", PortConfigSpec::default(), false),
            ),
        ];
        for (args, want) in cases {
            assert_eq!(cmd(args), want, "{args:?}");
        }
        assert!(PortConfigSpec::default().is_read());
        assert!(!spec(None, None, Some(0)).is_read());
    }

    #[test]
    fn config_bad_items() {
        let cases: &[(&str, &str)] = &[
            ("backpressure=maybe", "backpressure=maybe"),
            ("backpressure", "backpressure"),
            ("backpressure=ON", "backpressure=ON"),
            ("port-mask=on,port_mask=on", "port_mask=on"),
            ("mac-limit=-1", "mac-limit=-1"),
            ("mac-limit=+1", "mac-limit=+1"),
            ("mac-limit=", "mac-limit="),
            ("mac-limit=1k", "mac-limit=1k"),
            ("mac-limit=4294967296", "mac-limit=4294967296"),
            ("backpressure=on,", ""),
            ("", ""),
            ("speed=10", "speed=10"),
        ];
        for &(spec, item) in cases {
            assert_eq!(
                PortConfigSpec::parse(spec),
                Err(item.to_owned()),
                "{spec:?}"
            );
            assert_eq!(
                usage(&["--config", "vale0:a", spec]),
                Some(format!("vale-ctl: --config: bad item \"{item}\"")),
                "{spec:?}"
            );
        }
        assert_eq!(
            usage(&["--config"]).as_deref(),
            Some("vale-ctl: option '--config' requires an argument")
        );
        // A second word that is not SPEC is an operand, as anywhere else.
        assert_eq!(usage(&["--config", "vale0:a", "mac-limit=1", "x"]), None);
    }

    fn switch(name: &str, share: Option<ShareChange>, json: bool) -> Command {
        Command::SwitchConfig {
            name: name.to_owned(),
            spec: SwitchConfigSpec { share },
            json,
        }
    }

    #[test]
    fn switch_config_table() {
        use ShareChange::{Edit, Set};
        use ShareEdit::{Add, Remove};
        let cases: Vec<(&[&str], Command)> = vec![
            (&["--config", "vale0"], switch("vale0", None, false)),
            (&["--config=vale12", "--json"], switch("vale12", None, true)),
            // "vale" alone is the default switch; ids take [A-Za-z0-9_].
            (&["--config", "vale"], switch("vale", None, false)),
            (
                &["--config", "valeA_b9XYZ1234"],
                switch("valeA_b9XYZ1234", None, false),
            ),
            (
                &["--config", "vale0", "share=1001,1002"],
                switch("vale0", Some(Set(vec![1001, 1002])), false),
            ),
            (
                &["--json", "--config", "vale0", "share=0"],
                switch("vale0", Some(Set(vec![0])), true),
            ),
            // share= alone clears the list.
            (
                &["--config", "vale0", "share="],
                switch("vale0", Some(Set(vec![])), false),
            ),
            // Duplicates collapse, the first place kept; leading zeros are decimal.
            (
                &["--config", "vale0", "share=7,1001,7,01001,8"],
                switch("vale0", Some(Set(vec![7, 1001, 8])), false),
            ),
            (
                &["--config", "vale0", "share=4294967294"],
                switch("vale0", Some(Set(vec![u32::MAX - 1])), false),
            ),
            (
                &["--config", "vale1", "share=+1003"],
                switch("vale1", Some(Edit(vec![Add(1003)])), false),
            ),
            // "-1001" does not start the word with '-': it is SPEC, not an option.
            (
                &["--config", "vale1", "share=-1001"],
                switch("vale1", Some(Edit(vec![Remove(1001)])), false),
            ),
            (
                &["--config", "vale1", "share=+5,-6,+5"],
                switch("vale1", Some(Edit(vec![Add(5), Remove(6), Add(5)])), false),
            ),
            // A next word starting with '-' is an option, not SPEC.
            (&["--config", "vale0", "-v"], switch("vale0", None, false)),
            // The last command option wins.
            (
                &["--config", "vale0:a", "--config", "vale0", "share=1"],
                switch("vale0", Some(Set(vec![1])), false),
            ),
            (
                &["--config", "vale0", "share=1", "--config", "vale0:a"],
                config_cmd("vale0:a"),
            ),
        ];
        for (args, want) in cases {
            assert_eq!(cmd(args), want, "{args:?}");
        }
        // 16 distinct uids fit, duplicates not counted.
        let sixteen: Vec<String> = (1..=16).map(|u| u.to_string()).collect();
        let spec = format!("share={},1,16", sixteen.join(","));
        assert_eq!(
            cmd(&["--config", "vale0", &spec]),
            switch("vale0", Some(Set((1..=16).collect())), false)
        );
    }

    fn config_cmd(name: &str) -> Command {
        Command::Config {
            name: name.to_owned(),
            spec: PortConfigSpec::default(),
            json: false,
        }
    }

    #[test]
    fn switch_config_bad_specs() {
        let want_uid = "(want a decimal uid, 0 to 4294967294)";
        let cases: Vec<(&str, String)> = vec![
            (
                "backpressure=on",
                "bad item \"backpressure=on\" for a switch (want share=UID[,UID...])".into(),
            ),
            (
                "share",
                "bad item \"share\" for a switch (want share=UID[,UID...])".into(),
            ),
            (
                "Share=1",
                "bad item \"Share=1\" for a switch (want share=UID[,UID...])".into(),
            ),
            (
                "share=alice",
                format!("share=: bad uid \"alice\" {want_uid}"),
            ),
            ("share=1001,x", format!("share=: bad uid \"x\" {want_uid}")),
            ("share=0x10", format!("share=: bad uid \"0x10\" {want_uid}")),
            ("share=1.5", format!("share=: bad uid \"1.5\" {want_uid}")),
            ("share= 1", format!("share=: bad uid \" 1\" {want_uid}")),
            ("share=1,", format!("share=: bad uid \"\" {want_uid}")),
            ("share=,", format!("share=: bad uid \"\" {want_uid}")),
            ("share=1,,2", format!("share=: bad uid \"\" {want_uid}")),
            ("share=+", format!("share=: bad uid \"+\" {want_uid}")),
            ("share=-", format!("share=: bad uid \"-\" {want_uid}")),
            ("share=++1", format!("share=: bad uid \"++1\" {want_uid}")),
            ("share=+-1", format!("share=: bad uid \"+-1\" {want_uid}")),
            (
                "share=4294967295",
                format!("share=: bad uid \"4294967295\" {want_uid}"),
            ),
            (
                "share=-4294967296",
                format!("share=: bad uid \"-4294967296\" {want_uid}"),
            ),
            (
                "share=1,+2",
                "share=: \"+2\": a new list (UID,...) and changes (+UID, -UID) do not mix".into(),
            ),
            (
                "share=-1,2",
                "share=: \"2\": a new list (UID,...) and changes (+UID, -UID) do not mix".into(),
            ),
        ];
        for (spec, msg) in &cases {
            assert_eq!(SwitchConfigSpec::parse(spec), Err(msg.clone()), "{spec:?}");
            assert_eq!(
                usage(&["--config", "vale0", spec]),
                Some(format!("vale-ctl: --config: {msg}")),
                "{spec:?}"
            );
        }
        let seventeen: Vec<String> = (1..=17).map(|u| u.to_string()).collect();
        assert_eq!(
            usage(&[
                "--config",
                "vale0",
                &format!("share={}", seventeen.join(","))
            ]),
            Some("vale-ctl: --config: share=: 17 uids, at most 16".to_owned())
        );
        // Bad switch names, with or without SPEC.
        for name in ["foo", "vale-x", "vale0.1", "valeABCDEFGHIJKL", "Vale0", ""] {
            let msg = Some(format!(
                "vale-ctl: --config: bad switch name \"{name}\" (want valeX, X up to 11 of \
                 [A-Za-z0-9_]; or valeX:PORT for a port)"
            ));
            assert_eq!(usage(&["--config", name]), msg, "{name:?}");
            assert_eq!(usage(&["--config", name, "share=1"]), msg, "{name:?}");
        }
        assert!(is_switch_name("valeABCDEFGHIJK"));
        assert!(!is_switch_name("valeé"));
        // The port form is unchanged: share= is no port item.
        assert_eq!(
            usage(&["--config", "vale0:a", "share=1"]),
            Some("vale-ctl: --config: bad item \"share=1\"".to_owned())
        );
        assert_eq!(
            usage(&["--config=vale0:", "share="]),
            Some("vale-ctl: --config: bad item \"share=\"".to_owned())
        );
        // A second word that is not SPEC is an operand.
        assert_eq!(usage(&["--config", "vale0", "share=1", "x"]), None);
    }

    #[test]
    fn share_apply() {
        use ShareEdit::{Add, Remove};
        let edit = |e: Vec<ShareEdit>| ShareChange::Edit(e);
        assert_eq!(ShareChange::Set(vec![3, 1]).apply(&[9, 8]), vec![3, 1]);
        assert_eq!(ShareChange::Set(vec![]).apply(&[9]), Vec::<u32>::new());
        assert_eq!(edit(vec![Add(3)]).apply(&[1, 2]), vec![1, 2, 3]);
        assert_eq!(edit(vec![Add(2)]).apply(&[1, 2]), vec![1, 2]);
        assert_eq!(edit(vec![Remove(1)]).apply(&[1, 2]), vec![2]);
        assert_eq!(edit(vec![Remove(7)]).apply(&[1, 2]), vec![1, 2]);
        assert_eq!(edit(vec![Remove(2), Add(2)]).apply(&[2, 1]), vec![1, 2]);
        assert_eq!(edit(vec![Add(5), Remove(5)]).apply(&[]), Vec::<u32>::new());
        // A current list with duplicates (valed should not send one) collapses.
        assert_eq!(edit(vec![Add(4)]).apply(&[1, 1]), vec![1, 4]);
        // Growing past 16 is left to the caller to refuse.
        let full: Vec<u32> = (1..=16).collect();
        assert_eq!(edit(vec![Add(17)]).apply(&full).len(), 17);
    }

    fn vhost(path: &str, client: bool, queues: Option<u16>) -> VhostUserSpec {
        VhostUserSpec {
            path: path.to_owned(),
            client,
            queues,
        }
    }

    #[test]
    fn vhost_user_table() {
        let newif = |name: &str, vhost: VhostUserSpec| Command::VhostNewIf {
            name: name.to_owned(),
            vhost,
        };
        let cases: Vec<(&[&str], Command)> = vec![
            (
                &["-n", "vm1", "--vhost-user", "/run/vm1.sock"],
                newif("vm1", vhost("/run/vm1.sock", false, None)),
            ),
            // Either order; --vhost-user=ARG.
            (
                &["--vhost-user=/run/vm1.sock,client", "-n", "vm1"],
                newif("vm1", vhost("/run/vm1.sock", true, None)),
            ),
            (
                &["-vn", "vm2", "--vhost-user", "/s,queues=16,client,server"],
                newif("vm2", vhost("/s", false, Some(16))),
            ),
            (
                &["-n", "vm3", "--vhost-user", "/s,queues=2,queues=1"],
                newif("vm3", vhost("/s", false, Some(1))),
            ),
            // The last --vhost-user wins, as the last command option does.
            (
                &[
                    "--vhost-user",
                    "/a",
                    "-n",
                    "vm4",
                    "--vhost-user",
                    "/b,client",
                ],
                newif("vm4", vhost("/b", true, None)),
            ),
            // Without --vhost-user, -n is netmap's.
            (
                &["-n", "vm5"],
                Command::NewIf {
                    name: "vm5".to_owned(),
                    rings: RingConfig::default(),
                    mem: MemSpec::Default,
                },
            ),
        ];
        for (args, want) in cases {
            assert_eq!(cmd(args), want, "{args:?}");
        }
        assert_eq!(ok(&["-v", "-n", "vm1", "--vhost-user", "/x"]).verbose, 1);
    }

    #[test]
    fn vhost_user_paths() {
        let cwd = || Ok(PathBuf::from("/home/u/vms"));
        let path = |arg: &str| VhostUserSpec::parse(arg, cwd).map(|s| s.path);
        assert_eq!(
            path("/run/vale/vm1.sock").as_deref(),
            Ok("/run/vale/vm1.sock")
        );
        // Relative: from the current directory, since valed's is another.
        assert_eq!(path("vm1.sock").as_deref(), Ok("/home/u/vms/vm1.sock"));
        assert_eq!(path("./a//b.sock").as_deref(), Ok("/home/u/vms/a/b.sock"));
        assert_eq!(path("../b.sock").as_deref(), Ok("/home/u/vms/../b.sock"));
        // The current directory is only asked for a relative path.
        let no_cwd = || Err(std::io::Error::from_raw_os_error(2));
        assert!(VhostUserSpec::parse("/abs", no_cwd).is_ok());
        assert_eq!(
            VhostUserSpec::parse("rel", no_cwd),
            Err(format!(
                "relative socket path \"rel\": no current directory: {}",
                std::io::Error::from_raw_os_error(2)
            ))
        );
        // 107 bytes fit (with the NUL, a sun_path's 108), 108 do not.
        let max = format!("/{}", "s".repeat(VHOST_PATH_MAX - 1));
        assert_eq!(path(&max), Ok(max.clone()));
        let long = format!("{max}x");
        assert_eq!(
            path(&long),
            Err(format!("socket path \"{long}\" too long (max 107 bytes)"))
        );
        // Relative paths are measured once made absolute.
        let rel = "r".repeat(VHOST_PATH_MAX - 11);
        assert_eq!(
            path(&rel),
            Err(format!(
                "socket path \"/home/u/vms/{rel}\" too long (max 107 bytes)"
            ))
        );
        assert_eq!(
            VHOST_PATH_MAX,
            netmap::ctrl::ValeVhostNewif::default().path.len() - 1
        );
        assert_eq!(path(""), Err("empty socket path".to_owned()));
        assert_eq!(path(",client"), Err("empty socket path".to_owned()));
        assert_eq!(
            path("/a\0b"),
            Err("socket path \"/a\\0b\" contains a NUL byte".to_owned())
        );
    }

    #[test]
    fn vhost_user_errors() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["-n", "vm1", "--vhost-user", "/x,queues=0"],
                "vale-ctl: --vhost-user: queues=0: want 1..=16",
            ),
            (
                &["-n", "vm1", "--vhost-user", "/x,queues=17"],
                "vale-ctl: --vhost-user: queues=17: want 1..=16",
            ),
            (
                &["-n", "vm1", "--vhost-user", "/x,queues=+2"],
                "vale-ctl: --vhost-user: queues=+2: want 1..=16",
            ),
            (
                &["-n", "vm1", "--vhost-user", "/x,queues="],
                "vale-ctl: --vhost-user: queues=: want 1..=16",
            ),
            (
                &["-n", "vm1", "--vhost-user", "/x,queues=70000"],
                "vale-ctl: --vhost-user: queues=70000: want 1..=16",
            ),
            (
                &["-n", "vm1", "--vhost-user", "/x,Client"],
                "vale-ctl: --vhost-user: bad item \"Client\"",
            ),
            (
                &["-n", "vm1", "--vhost-user", "/x,"],
                "vale-ctl: --vhost-user: bad item \"\"",
            ),
            (
                &["-n", "vm1", "--vhost-user", "/x,mq=4"],
                "vale-ctl: --vhost-user: bad item \"mq=4\"",
            ),
            (
                &["-n", "vm1", "--vhost-user="],
                "vale-ctl: --vhost-user: empty socket path",
            ),
            (
                &["-n", "vm1", "--vhost-user"],
                "vale-ctl: option '--vhost-user' requires an argument",
            ),
            (
                &["--vhost-user", "/x"],
                "vale-ctl: --vhost-user needs -n NAME",
            ),
            (
                &["-a", "vale0:vm1", "--vhost-user", "/x"],
                "vale-ctl: --vhost-user needs -n NAME",
            ),
            // -n then another command: the last one counts.
            (
                &["-n", "vm1", "--vhost-user", "/x", "-r", "vm1"],
                "vale-ctl: --vhost-user needs -n NAME",
            ),
            (
                &["--stats", "--vhost-user", "/x"],
                "vale-ctl: --vhost-user needs -n NAME",
            ),
            (
                &["-n", "vm1", "--vhost-user", "/x", "-C", "1024"],
                "vale-ctl: --vhost-user: -C does not apply to vhost-user ports",
            ),
            (
                &["-n", "vm1", "--vhost-user", "/x", "-m", "2"],
                "vale-ctl: --vhost-user: -m does not apply to vhost-user ports",
            ),
            (
                &["-n", "vm1", "--vhost-user", "/x", "--json"],
                "vale-ctl: option '--json' needs '--stats' or '--config'",
            ),
        ];
        for &(args, want) in cases {
            assert_eq!(usage(args).as_deref(), Some(want), "{args:?}");
        }
        let long = format!("/{}", "p".repeat(200));
        assert_eq!(
            usage(&["-n", "vm1", "--vhost-user", &long]),
            Some(format!(
                "vale-ctl: --vhost-user: socket path \"{long}\" too long (max 107 bytes)"
            ))
        );
        // Operands are still plain usage.
        assert_eq!(usage(&["-n", "vm1", "--vhost-user", "/x", "y"]), None);
    }

    #[test]
    fn verbose_and_socket() {
        let inv = ok(&["-vv", "--socket", "/tmp/s", "-v", "-r", "x"]);
        assert_eq!(inv.verbose, 3);
        assert_eq!(inv.socket, Some(PathBuf::from("/tmp/s")));
        let inv = ok(&["--socket=/tmp/t"]);
        assert_eq!(inv.command, Command::ListAll);
        assert_eq!(inv.socket, Some(PathBuf::from("/tmp/t")));
        assert_eq!(ok(&[]).socket, None);
    }

    #[test]
    fn usage_errors() {
        assert_eq!(
            usage(&["-x"]).as_deref(),
            Some("vale-ctl: invalid option -- 'x'")
        );
        assert_eq!(
            usage(&["-a"]).as_deref(),
            Some("vale-ctl: option requires an argument -- 'a'")
        );
        assert_eq!(
            usage(&["-l", "foo:a"]).as_deref(),
            Some("invalid vale port name: 'foo:a'")
        );
        assert_eq!(
            usage(&["--bogus"]).as_deref(),
            Some("vale-ctl: unrecognized option '--bogus'")
        );
        assert_eq!(
            usage(&["--socket"]).as_deref(),
            Some("vale-ctl: option '--socket' requires an argument")
        );
        assert_eq!(
            usage(&["--json=1", "--stats"]).as_deref(),
            Some("vale-ctl: option '--json' doesn't allow an argument")
        );
        assert_eq!(
            usage(&["--json", "-a", "vale0:x"]).as_deref(),
            Some("vale-ctl: option '--json' needs '--stats' or '--config'")
        );
        // Operands, -C or -m alone, --json alone: plain usage.
        assert_eq!(usage(&["vale0:x"]), None);
        assert_eq!(usage(&["-a", "vale0:x", "extra"]), None);
        assert_eq!(usage(&["-r", "x", "--", "-a"]), None);
        assert_eq!(usage(&["-C", "1024"]), None);
        assert_eq!(usage(&["-m", "1"]), None);
        assert_eq!(usage(&["--json"]), None);
        assert_eq!(usage(&["-"]), None);
        assert_eq!(parse(&["--help"]), Err(ParseError::Help));
    }

    #[test]
    fn l_checks_prefix_only() {
        // netmap compares the first four characters with "vale", nothing more.
        assert_eq!(
            cmd(&["-l", "valeXYZ"]),
            Command::List {
                name: "valeXYZ".into()
            }
        );
    }

    #[test]
    fn ring_config() {
        assert_eq!(RingConfig::parse(None), RingConfig::default());
        assert_eq!(RingConfig::parse(Some("")), RingConfig::default());
        assert_eq!(RingConfig::parse(Some("1024")), rings(1024, 1024, 0, 0));
        assert_eq!(RingConfig::parse(Some("1024,512")), rings(1024, 512, 0, 0));
        assert_eq!(
            RingConfig::parse(Some("1024,512,4")),
            rings(1024, 512, 4, 4)
        );
        assert_eq!(
            RingConfig::parse(Some("1024,512,4,2")),
            rings(1024, 512, 4, 2)
        );
        // strtok skips empty fields, atoi stops at the first non-digit.
        assert_eq!(RingConfig::parse(Some(",,1024,,8")), rings(1024, 8, 0, 0));
        assert_eq!(RingConfig::parse(Some("12abc,x")), rings(12, 0, 0, 0));
        // Truncation to the C field widths.
        assert_eq!(RingConfig::parse(Some("1,1,65537")), rings(1, 1, 1, 1));
        let c = RingConfig::parse(Some("1,2,3,4,5,6"));
        assert_eq!(c.ignored, vec!["5".to_owned(), "6".to_owned()]);
        assert_eq!(
            (c.tx_slots, c.rx_slots, c.tx_rings, c.rx_rings),
            (1, 2, 3, 4)
        );
    }

    #[test]
    fn poll_config() {
        let p = PollConfig::parse(None, true);
        assert_eq!(p.warning.as_deref(), Some("invalid null/empty config"));
        assert_eq!(p.body, NmreqValePolling::default());
        assert_eq!(PollConfig::parse(Some(""), false), PollConfig::default());

        let p = PollConfig::parse(Some("0,3"), true);
        assert_eq!(p.warning, None);
        assert_eq!(p.body.nr_mode, NETMAP_POLLING_MODE_SINGLE_CPU);
        assert_eq!(p.body.nr_first_cpu_id, 3);
        assert_eq!(p.body.nr_num_polling_cpus, 0);

        // A third number is only for one thread per ring.
        let p = PollConfig::parse(Some("0,3,2"), true);
        assert_eq!(p.warning.as_deref(), Some("too many numbers in '0,3,2'"));
        assert_eq!(p.body.nr_first_cpu_id, 3);
        assert_eq!(p.body.nr_num_polling_cpus, 0);

        let p = PollConfig::parse(Some("1,0,2,9"), true);
        assert_eq!(p.warning.as_deref(), Some("too many numbers in '1,0,2,9'"));
        assert_eq!(p.body.nr_num_polling_cpus, 2);
    }

    #[test]
    fn mem_spec() {
        assert_eq!(MemSpec::parse(None), MemSpec::Default);
        assert_eq!(MemSpec::parse(Some("2")), MemSpec::Id(2));
        assert_eq!(MemSpec::parse(Some("65537")), MemSpec::Id(1));
        assert_eq!(MemSpec::parse(Some("7x")), MemSpec::Id(7));
        assert_eq!(
            MemSpec::parse(Some("vale0:a")),
            MemSpec::Port("vale0:a".into())
        );
        // Not a digit first: a port name, as in netmap.
        assert_eq!(MemSpec::parse(Some("-1")), MemSpec::Port("-1".into()));
    }

    #[test]
    fn c_atoi() {
        assert_eq!(atoi("42"), 42);
        assert_eq!(atoi("  \t-17x"), -17);
        assert_eq!(atoi("+8"), 8);
        assert_eq!(atoi("abc"), 0);
        assert_eq!(atoi(""), 0);
        assert_eq!(atoi("4294967297"), 1);
        assert_eq!(atoi("99999999999999999999999"), -1);
    }
}
