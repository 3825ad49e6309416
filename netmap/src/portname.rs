//! Parsing of netmap port names ("port specifications").
//!
//! This module accepts exactly the language of libnetmap's `nmport_parse()`
//! (`libnetmap/nmreq.c`: `nmreq_header_decode`, `nmreq_register_decode`,
//! `nmreq_options_decode`; options from `libnetmap/nmport.c`), further
//! restricted by the checks the kernel applies to the resulting `nr_name`
//! (`netmap_get_pipe_na`, `nm_bdg_name_validate`), so that every name this
//! parser accepts is one that netmap could register.
//!
//! # Grammar
//!
//! ```text
//! portspec  := header [mode] { '/' flag* | '@' memid } { '@' option }
//! header    := "netmap:" vpname            (nr_name = vpname)
//!            | "vale" swid ':' vpname      (nr_name = "vale" swid ':' vpname)
//! swid      := [A-Za-z0-9_]{0,11}          (empty: the default switch)
//! vpname    := port [ ('{' | '}') pipeid ] (ends at the first of - * ^ / @)
//! pipeid    := [A-Za-z0-9_]+
//! mode      := '^' | '^' N | '*' | '-' N   (N decimal, 0 <= N < 4095)
//! flag      := x | z | t | r | R | T
//! memid     := decimal in [1, 65535]
//! option    := name | name '=' value | name ':' key '=' value { ',' key '=' value }
//! ```
//!
//! * `netmap:eth0` binds all NIC rings (`NR_REG_ALL_NIC`), `^` the host rings
//!   (`NR_REG_SW`), `^N` host ring N (`NR_REG_ONE_SW`), `*` NIC and host rings
//!   (`NR_REG_NIC_SW`), `-N` NIC ring N (`NR_REG_ONE_NIC`).
//! * `x{id` / `x}id` are the master / slave ends of netmap pipe `id` created in
//!   the memory region of port `x`.
//! * `/` flags: `x` `NR_EXCLUSIVE`, `z` `NR_ZCOPY_MON`, `t` `NR_MONITOR_TX`,
//!   `r` `NR_MONITOR_RX`, `R` `NR_RX_RINGS_ONLY`, `T` `NR_TX_RINGS_ONLY`.
//! * `@N` selects memory region N. `@` followed by a non-digit starts the
//!   option list; from then on every `@` starts another option, so `@N` is no
//!   longer a memory id (`eth0@conf:rings=1@2` is an error, as in C).
//! * Options: `share` (default key `port`), `conf` (keys `rings`, `host-rings`,
//!   `slots`, `tx-rings`, `rx-rings`, `host-tx-rings`, `host-rx-rings`,
//!   `tx-slots`, `rx-slots`; no default key), `extmem` (default key `file`,
//!   plus `if-num`, `if-size`, `ring-num`, `ring-size`, `buf-num`, `buf-size`),
//!   `offset` (default key `initial`, plus `bits`; disabled by default in
//!   libnetmap, enabled here with [`ParseOptions::enable_offset`]). In key names
//!   `-` and `_` are interchangeable.
//!
//! # Where this parser deliberately differs from the C code
//!
//! The C code is sloppy in a few places; this parser rejects what C would
//! silently mangle, and otherwise follows C:
//!
//! * Numbers in option values must be plain decimal and fit their field. C
//!   uses `atoi()`, so `rings=abc` silently means 0 and `rings=70000` wraps.
//!   Likewise `@70000` (C truncates the memory id to 16 bits) is an error.
//! * Port names must consist of printable ASCII (`!`..=`~`). C copies any byte
//!   into `nr_name`; the kernel then fails to find such an interface.
//! * `vale0:` (empty VALE port) and `vale0:{1` are rejected. libnetmap accepts
//!   them and the kernel creates a VALE port with an empty name.
//! * `x{1^`, `x{1^N` and `x{1*` are rejected: libnetmap accepts them but
//!   `netmap_get_pipe_na()` always answers `EINVAL` (pipes only accept
//!   `NR_REG_ALL_NIC` / `NR_REG_ONE_NIC`). Likewise `netmap:{1` (empty parent).
//! * A pipe id must be non-empty (`x{` and `x{-1` are errors; the kernel
//!   rejects them).
//! * `@share` given twice must name the same port; C accepts two different
//!   ports if they happen to live in the same memory region (a run-time fact).
//! * `@extmem` and `@offset` may appear once (C: "extmem already in use"; the
//!   kernel rejects duplicate `NETMAP_REQ_OPT_OFFSETS`).
//! * After `@share=PORT`, C ignores whatever follows the port name inside the
//!   value (`@share=netmap:eth1-1` looks up `eth1`); here that remainder must
//!   still be a valid mode/flags suffix (it is then ignored, as in C).
//! * A `,` at the end of an option body or a key without `=value` are errors
//!   here; in C they read past the end of the buffer.
//! * The kernel's VALE check compares only the first three characters of
//!   `"vale"` (`strlen(ops->name) - 1`), so in real netmap `netmap:val0` fails.
//!   Here only names that start with `vale` are VALE names; `netmap:val0` is a
//!   NIC name.
//!
//! Things the sources accept and that are kept as-is:
//!
//! * `netmap:vale0:p` is the same port as `vale0:p` (the `netmap:` prefix is
//!   stripped and the kernel sees `vale0:p`); both parse to [`PortKind::Vale`].
//! * A VALE port name may contain any printable character except the
//!   separators `- * ^ / @ { }`, including `:` (the switch name ends at the
//!   first `:`). The man pages document `[0-9a-zA-Z_]+`, but neither libnetmap
//!   nor the kernel checks it. Its length is at most 15 (`IFNAMSIZ - 1`, from
//!   `nm_bdg_name_validate`), the switch name `"vale" + id` at most 15 too.
//! * The whole `nr_name` (pipe suffix included) is at most 63 bytes
//!   (`NETMAP_REQ_IFNAMSIZ - 1`). NIC names are not limited to `IFNAMSIZ`.
//! * `eth0/@1` (a `/` with no flags followed by `@`) is accepted.
//! * `@N@N` with the same N twice is accepted; different values are an error.
//! * `@conf:` with an empty body and keys with an empty value (`rings=`) are
//!   accepted and leave the key unset, as in C. Several `@conf` options merge,
//!   later ones overriding earlier ones field by field.
//! * Within one `@conf`, the general keys (`rings`, `host-rings`, `slots`) are
//!   applied before the specific ones regardless of their order in the text.
//!
//! There is no "null" port in the naming grammar: netmap's null adapter is
//! selected by `nr_mode == NR_REG_NULL`, which no port name produces.
//! A name with no `netmap:`/`vale` prefix is an error for `nmport_parse()`;
//! pkt-gen prepends `netmap:` to such names, which
//! [`ParseOptions::default_netmap_prefix`] reproduces.

use std::fmt;
use std::num::NonZeroU16;
use std::ops::{BitOr, BitOrAssign};
use std::str::FromStr;

// Values from sys/net/netmap.h (nr_mode).
/// `NR_REG_ALL_NIC` (netmap.h: 1).
const NR_REG_ALL_NIC: u32 = 1;
/// `NR_REG_SW` (netmap.h: 2).
const NR_REG_SW: u32 = 2;
/// `NR_REG_NIC_SW` (netmap.h: 3).
const NR_REG_NIC_SW: u32 = 3;
/// `NR_REG_ONE_NIC` (netmap.h: 4).
const NR_REG_ONE_NIC: u32 = 4;
/// `NR_REG_ONE_SW` (netmap.h: 8).
const NR_REG_ONE_SW: u32 = 8;

// Values from sys/net/netmap.h (nr_flags).
/// `NR_MONITOR_TX` (netmap.h: 0x100).
const NR_MONITOR_TX: u64 = 0x100;
/// `NR_MONITOR_RX` (netmap.h: 0x200).
const NR_MONITOR_RX: u64 = 0x200;
/// `NR_ZCOPY_MON` (netmap.h: 0x400).
const NR_ZCOPY_MON: u64 = 0x400;
/// `NR_EXCLUSIVE` (netmap.h: 0x800).
const NR_EXCLUSIVE: u64 = 0x800;
/// `NR_RX_RINGS_ONLY` (netmap.h: 0x2000).
const NR_RX_RINGS_ONLY: u64 = 0x2000;
/// `NR_TX_RINGS_ONLY` (netmap.h: 0x4000).
const NR_TX_RINGS_ONLY: u64 = 0x4000;

/// `NETMAP_RING_MASK` (netmap_legacy.h: 0x0fff); ring numbers must be below it.
const NETMAP_RING_MASK: u32 = 0x0fff;
/// `NETMAP_REQ_IFNAMSIZ` (netmap.h: 64), size of `nmreq_header.nr_name`.
const NETMAP_REQ_IFNAMSIZ: usize = 64;
/// `IFNAMSIZ` (= `NM_BDG_IFNAMSIZ`, 16): bound on VALE switch and port names.
const IFNAMSIZ: usize = 16;
/// `NM_BDG_NAME` (netmap.h: "vale").
const NM_BDG_NAME: &str = "vale";
/// The `netmap` subsystem prefix (libnetmap `nmreq_prefixes`).
const NETMAP_PREFIX: &str = "netmap";

/// The largest ring number accepted after `-` or `^` (`NETMAP_RING_MASK - 1`).
pub const MAX_RING_ID: u16 = (NETMAP_RING_MASK - 1) as u16;
/// The longest `nr_name` (pipe suffix included) a port name may produce.
pub const MAX_NR_NAME_LEN: usize = NETMAP_REQ_IFNAMSIZ - 1;
/// The longest VALE port name (the part after `valeX:`).
pub const MAX_VALE_PORT_LEN: usize = IFNAMSIZ - 1;
/// The longest VALE switch name, `"vale"` included (so the id is at most 11).
pub const MAX_VALE_SWITCH_LEN: usize = IFNAMSIZ - 1;

/// What kind of port the name selects (before any pipe suffix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortKind {
    /// A network interface: `netmap:IFNAME`.
    Nic {
        /// The interface name (`nr_name` without pipe suffix).
        ifname: String,
    },
    /// A port of a VALE switch: `valeSWITCH:PORT`.
    Vale {
        /// The switch id after `vale` (may be empty: the default switch).
        switch: String,
        /// The port name after the `:`.
        port: String,
    },
}

/// Which end of a netmap pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipeEnd {
    /// `x{id`.
    Master,
    /// `x}id`.
    Slave,
}

impl PipeEnd {
    /// The character that introduces this end in a port name.
    pub const fn brace(self) -> char {
        match self {
            PipeEnd::Master => '{',
            PipeEnd::Slave => '}',
        }
    }
}

/// A netmap pipe suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pipe {
    /// Master (`{`) or slave (`}`).
    pub end: PipeEnd,
    /// The pipe id (`[A-Za-z0-9_]+`).
    pub id: String,
}

/// The name part of a port specification: what ends up in `nr_name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortName {
    /// The port (or pipe parent).
    pub kind: PortKind,
    /// The pipe end, if the name has a `{id` / `}id` suffix.
    pub pipe: Option<Pipe>,
}

impl PortName {
    /// The `nr_name` of the parent port (no pipe suffix): `eth0` or `vale0:p`.
    pub fn parent_nr_name(&self) -> String {
        match &self.kind {
            PortKind::Nic { ifname } => ifname.clone(),
            PortKind::Vale { switch, port } => format!("{NM_BDG_NAME}{switch}:{port}"),
        }
    }

    /// The full `nmreq_header.nr_name` netmap would see: `eth0{1`, `vale0:p`.
    pub fn nr_name(&self) -> String {
        let mut n = self.parent_nr_name();
        if let Some(p) = &self.pipe {
            n.push(p.end.brace());
            n.push_str(&p.id);
        }
        n
    }

    /// The VALE switch name (`"vale" + id`), if this is a VALE port.
    pub fn vale_switch(&self) -> Option<String> {
        match &self.kind {
            PortKind::Vale { switch, .. } => Some(format!("{NM_BDG_NAME}{switch}")),
            PortKind::Nic { .. } => None,
        }
    }
}

impl fmt::Display for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            PortKind::Nic { ifname } => write!(f, "{NETMAP_PREFIX}:{ifname}")?,
            PortKind::Vale { switch, port } => write!(f, "{NM_BDG_NAME}{switch}:{port}")?,
        }
        if let Some(p) = &self.pipe {
            write!(f, "{}{}", p.end.brace(), p.id)?;
        }
        Ok(())
    }
}

/// Which rings to bind (`nr_mode` and `nr_ringid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RingSel {
    /// No suffix: all NIC rings (`NR_REG_ALL_NIC`).
    #[default]
    AllNic,
    /// `^`: all host rings (`NR_REG_SW`).
    Sw,
    /// `^N`: host ring N (`NR_REG_ONE_SW`).
    OneSw(u16),
    /// `*`: NIC and host rings (`NR_REG_NIC_SW`).
    NicSw,
    /// `-N`: NIC ring N (`NR_REG_ONE_NIC`).
    OneNic(u16),
}

impl RingSel {
    /// The `NR_REG_*` value for `nmreq_register.nr_mode`.
    pub const fn nr_mode(self) -> u32 {
        match self {
            RingSel::AllNic => NR_REG_ALL_NIC,
            RingSel::Sw => NR_REG_SW,
            RingSel::OneSw(_) => NR_REG_ONE_SW,
            RingSel::NicSw => NR_REG_NIC_SW,
            RingSel::OneNic(_) => NR_REG_ONE_NIC,
        }
    }

    /// The value for `nmreq_register.nr_ringid` (0 unless one ring is chosen).
    pub const fn nr_ringid(self) -> u16 {
        match self {
            RingSel::OneSw(n) | RingSel::OneNic(n) => n,
            RingSel::AllNic | RingSel::Sw | RingSel::NicSw => 0,
        }
    }
}

impl fmt::Display for RingSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingSel::AllNic => Ok(()),
            RingSel::Sw => f.write_str("^"),
            RingSel::OneSw(n) => write!(f, "^{n}"),
            RingSel::NicSw => f.write_str("*"),
            RingSel::OneNic(n) => write!(f, "-{n}"),
        }
    }
}

/// `nmreq_register.nr_flags` bits that a port name can set (after `/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RegFlags(u64);

impl RegFlags {
    /// `x`: `NR_EXCLUSIVE`.
    pub const EXCLUSIVE: RegFlags = RegFlags(NR_EXCLUSIVE);
    /// `z`: `NR_ZCOPY_MON`.
    pub const ZCOPY_MON: RegFlags = RegFlags(NR_ZCOPY_MON);
    /// `t`: `NR_MONITOR_TX`.
    pub const MONITOR_TX: RegFlags = RegFlags(NR_MONITOR_TX);
    /// `r`: `NR_MONITOR_RX`.
    pub const MONITOR_RX: RegFlags = RegFlags(NR_MONITOR_RX);
    /// `R`: `NR_RX_RINGS_ONLY`.
    pub const RX_RINGS_ONLY: RegFlags = RegFlags(NR_RX_RINGS_ONLY);
    /// `T`: `NR_TX_RINGS_ONLY`.
    pub const TX_RINGS_ONLY: RegFlags = RegFlags(NR_TX_RINGS_ONLY);

    /// The flag letters in canonical order, with their flags.
    pub const LETTERS: [(char, RegFlags); 6] = [
        ('x', RegFlags::EXCLUSIVE),
        ('z', RegFlags::ZCOPY_MON),
        ('t', RegFlags::MONITOR_TX),
        ('r', RegFlags::MONITOR_RX),
        ('R', RegFlags::RX_RINGS_ONLY),
        ('T', RegFlags::TX_RINGS_ONLY),
    ];

    /// No flags.
    pub const fn empty() -> RegFlags {
        RegFlags(0)
    }

    /// The raw `NR_*` bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether all flags of `other` are set in `self`.
    pub const fn contains(self, other: RegFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The flag a letter after `/` stands for.
    pub fn from_letter(c: char) -> Option<RegFlags> {
        RegFlags::LETTERS
            .iter()
            .find(|(l, _)| *l == c)
            .map(|&(_, f)| f)
    }
}

impl BitOr for RegFlags {
    type Output = RegFlags;
    fn bitor(self, rhs: RegFlags) -> RegFlags {
        RegFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for RegFlags {
    fn bitor_assign(&mut self, rhs: RegFlags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for RegFlags {
    /// The letters, in canonical order, without the leading `/`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (l, flag) in RegFlags::LETTERS {
            if self.contains(flag) {
                write!(f, "{l}")?;
            }
        }
        Ok(())
    }
}

/// The `@conf:` option, resolved to the `nmreq_register` fields it sets.
/// Zero means "not specified, netmap chooses", exactly as in `nmreq_register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Conf {
    /// `nr_tx_rings` (`rings`, `tx-rings`).
    pub tx_rings: u16,
    /// `nr_rx_rings` (`rings`, `rx-rings`).
    pub rx_rings: u16,
    /// `nr_host_tx_rings` (`host-rings`, `host-tx-rings`).
    pub host_tx_rings: u16,
    /// `nr_host_rx_rings` (`host-rings`, `host-rx-rings`).
    pub host_rx_rings: u16,
    /// `nr_tx_slots` (`slots`, `tx-slots`).
    pub tx_slots: u32,
    /// `nr_rx_slots` (`slots`, `rx-slots`).
    pub rx_slots: u32,
}

impl Conf {
    /// Whether every field is zero (nothing requested).
    pub fn is_empty(&self) -> bool {
        *self == Conf::default()
    }
}

/// The `@extmem:` option: map this file and use it as the memory region.
/// Zero sizes/counts mean "use the `priv_*` sysctl defaults".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Extmem {
    /// The file to `mmap()` (`file`, the default key).
    pub file: String,
    /// `nr_if_pool_objtotal` (`if-num`).
    pub if_num: u32,
    /// `nr_if_pool_objsize` (`if-size`).
    pub if_size: u32,
    /// `nr_ring_pool_objtotal` (`ring-num`).
    pub ring_num: u32,
    /// `nr_ring_pool_objsize` (`ring-size`).
    pub ring_size: u32,
    /// `nr_buf_pool_objtotal` (`buf-num`).
    pub buf_num: u32,
    /// `nr_buf_pool_objsize` (`buf-size`).
    pub buf_size: u32,
}

impl Extmem {
    fn numbers_are_zero(&self) -> bool {
        self.if_num == 0
            && self.if_size == 0
            && self.ring_num == 0
            && self.ring_size == 0
            && self.buf_num == 0
            && self.buf_size == 0
    }
}

/// The `@offset:` option (`NETMAP_REQ_OPT_OFFSETS`; max offset = `initial`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Offset {
    /// Initial (and maximum) offset (`initial`, the default key).
    pub initial: u64,
    /// Number of bits of the slot `ptr` used for the offset (`bits`; 0: all).
    pub bits: u64,
}

/// A parsed port specification.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// The port name (`nr_name`).
    pub name: PortName,
    /// The ring selection (`nr_mode`, `nr_ringid`).
    pub rings: RingSel,
    /// The `/` flags (`nr_flags`).
    pub flags: RegFlags,
    /// `@N`: the memory region to use (`nr_mem_id`).
    pub mem_id: Option<NonZeroU16>,
    /// `@conf:`: ring and slot numbers (all zero if absent).
    pub conf: Conf,
    /// `@share=PORT`: use the memory region of that port.
    pub share: Option<PortName>,
    /// `@extmem:`: external memory.
    pub extmem: Option<Extmem>,
    /// `@offset:` (only with [`ParseOptions::enable_offset`]).
    pub offset: Option<Offset>,
}

impl PortSpec {
    /// A specification for `name` with every other part at its default.
    pub fn new(name: PortName) -> PortSpec {
        PortSpec {
            name,
            rings: RingSel::AllNic,
            flags: RegFlags::empty(),
            mem_id: None,
            conf: Conf::default(),
            share: None,
            extmem: None,
            offset: None,
        }
    }

    /// `nmreq_header.nr_name`.
    pub fn nr_name(&self) -> String {
        self.name.nr_name()
    }

    /// `nmreq_register.nr_mode`.
    pub fn nr_mode(&self) -> u32 {
        self.rings.nr_mode()
    }

    /// `nmreq_register.nr_ringid`.
    pub fn nr_ringid(&self) -> u16 {
        self.rings.nr_ringid()
    }

    /// `nmreq_register.nr_flags`.
    pub fn nr_flags(&self) -> u64 {
        self.flags.bits()
    }

    /// `nmreq_register.nr_mem_id` (0: let netmap choose).
    pub fn nr_mem_id(&self) -> u16 {
        self.mem_id.map_or(0, NonZeroU16::get)
    }
}

impl fmt::Display for PortSpec {
    /// The canonical form: `parse_with(&spec.to_string(), o) == Ok(spec)` for
    /// every `spec` that `parse_with(_, o)` returned.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.name, self.rings)?;
        if !self.flags.is_empty() {
            write!(f, "/{}", self.flags)?;
        }
        if let Some(m) = self.mem_id {
            write!(f, "@{m}")?;
        }
        if !self.conf.is_empty() {
            let c = &self.conf;
            let mut parts: Vec<String> = Vec::new();
            push_pair(
                &mut parts,
                c.tx_rings.into(),
                c.rx_rings.into(),
                "rings",
                "tx-rings",
                "rx-rings",
            );
            push_pair(
                &mut parts,
                c.host_tx_rings.into(),
                c.host_rx_rings.into(),
                "host-rings",
                "host-tx-rings",
                "host-rx-rings",
            );
            push_pair(
                &mut parts, c.tx_slots, c.rx_slots, "slots", "tx-slots", "rx-slots",
            );
            write!(f, "@conf:{}", parts.join(","))?;
        }
        if let Some(s) = &self.share {
            write!(f, "@share={s}")?;
        }
        if let Some(e) = &self.extmem {
            if e.numbers_are_zero() {
                // The '=' form keeps a ',' in the file name intact.
                write!(f, "@extmem={}", e.file)?;
            } else {
                write!(f, "@extmem:file={}", e.file)?;
                for (k, v) in [
                    ("if-num", e.if_num),
                    ("if-size", e.if_size),
                    ("ring-num", e.ring_num),
                    ("ring-size", e.ring_size),
                    ("buf-num", e.buf_num),
                    ("buf-size", e.buf_size),
                ] {
                    if v != 0 {
                        write!(f, ",{k}={v}")?;
                    }
                }
            }
        }
        if let Some(o) = &self.offset {
            write!(f, "@offset:initial={}", o.initial)?;
            if o.bits != 0 {
                write!(f, ",bits={}", o.bits)?;
            }
        }
        Ok(())
    }
}

fn push_pair(parts: &mut Vec<String>, tx: u32, rx: u32, both: &str, txk: &str, rxk: &str) {
    if tx == rx {
        if tx != 0 {
            parts.push(format!("{both}={tx}"));
        }
    } else {
        if tx != 0 {
            parts.push(format!("{txk}={tx}"));
        }
        if rx != 0 {
            parts.push(format!("{rxk}={rx}"));
        }
    }
}

impl FromStr for PortSpec {
    type Err = PortNameError;
    fn from_str(s: &str) -> Result<PortSpec, PortNameError> {
        parse(s)
    }
}

/// Knobs for [`parse_with`]; the default is exactly `nmport_parse()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// Like pkt-gen: a name that starts with neither `netmap:` nor `vale` is
    /// parsed as `netmap:NAME` (error positions still refer to `NAME`).
    pub default_netmap_prefix: bool,
    /// Accept the `@offset` option (libnetmap: `nmport_enable_option("offset")`).
    pub enable_offset: bool,
}

/// A port name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port name {name:?}: position {pos}: {kind}")]
pub struct PortNameError {
    /// The name as given.
    pub name: String,
    /// 0-based byte position of the offending character (the length of the
    /// name if something was expected at its end).
    pub pos: usize,
    /// What went wrong.
    pub kind: PortNameErrorKind,
}

/// What went wrong in a port name (see [`PortNameError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortNameErrorKind {
    /// The name is empty.
    #[error("expected a port name, got an empty string")]
    Empty,
    /// Neither `netmap` nor `vale` at the start.
    #[error("expected prefix \"netmap:\" or \"vale\"")]
    MissingPrefix,
    /// `netmap` not directly followed by `:`.
    #[error("expected ':' right after \"netmap\"")]
    ExpectedNetmapColon,
    /// A VALE switch name not terminated by `:`.
    #[error("expected ':' after the VALE switch name")]
    ExpectedValeColon,
    /// A bad character in a VALE switch id.
    #[error("expected a VALE switch id character [A-Za-z0-9_] or ':'")]
    BadSwitchChar,
    /// `"vale" + id` longer than 15 characters.
    #[error("expected ':', VALE switch name is limited to {max} characters")]
    SwitchNameTooLong {
        /// The limit (including `"vale"`).
        max: usize,
    },
    /// Nothing where the port name should be.
    #[error("expected a port name")]
    EmptyPortName,
    /// A non-printable or non-ASCII character in a port name.
    #[error("expected a printable ASCII character in port name, got {ch:?}")]
    BadNameChar {
        /// The offending character.
        ch: char,
    },
    /// A VALE port name longer than 15 characters.
    #[error("expected end of VALE port name, limited to {max} characters")]
    PortNameTooLong {
        /// The limit.
        max: usize,
    },
    /// `nr_name` longer than 63 bytes.
    #[error("expected end of port name, limited to {max} bytes")]
    NameTooLong {
        /// The limit.
        max: usize,
    },
    /// `{` or `}` with nothing after it.
    #[error("expected pipe id after '{brace}'")]
    MissingPipeId {
        /// `{` or `}`.
        brace: char,
    },
    /// A bad character in a pipe id.
    #[error("expected a pipe id character [A-Za-z0-9_]")]
    BadPipeIdChar,
    /// `^` or `*` on a pipe.
    #[error("expected '-N', '/', '@' or end after a pipe name, '{ch}' is not valid for pipes")]
    PipeRingMode {
        /// `^` or `*`.
        ch: char,
    },
    /// `-` or `^` (with digits expected) not followed by a number.
    #[error("expected ring number after '{after}'")]
    ExpectedRingNumber {
        /// `-` or `^`.
        after: char,
    },
    /// A ring number `>= NETMAP_RING_MASK`.
    #[error("expected ring number in [0, {limit})")]
    RingOutOfRange {
        /// `NETMAP_RING_MASK`.
        limit: u32,
    },
    /// A character where only `/`, `@` or the end may follow.
    #[error("expected '/', '@' or end of name, got {ch:?}")]
    UnexpectedChar {
        /// The offending character.
        ch: char,
    },
    /// `/` at the end of the name.
    #[error("expected flag letter (x z t r R T) or '@' after '/'")]
    ExpectedFlag,
    /// A character after `/` that is not a flag letter.
    #[error("expected flag letter (x z t r R T) or '@', got {ch:?}")]
    UnknownFlag {
        /// The offending character.
        ch: char,
    },
    /// `@` at the end of the name.
    #[error("expected memory id or option after '@'")]
    EmptyMemId,
    /// `@0` or a memory id above 65535.
    #[error("expected memory id in [1, 65535]")]
    MemIdOutOfRange,
    /// `@A...@B` with `A != B`.
    #[error("expected memory id {old} again (already set), got {new}")]
    ConflictingMemId {
        /// The first memory id.
        old: u16,
        /// The conflicting one.
        new: u16,
    },
    /// `@@` or `@` at the end of the option list.
    #[error("expected option name after '@'")]
    EmptyOption,
    /// An option name that is not share, conf, extmem or offset.
    #[error("expected option share, conf, extmem or offset, got {name:?}")]
    UnknownOption {
        /// The option name as written.
        name: String,
    },
    /// `@offset` without [`ParseOptions::enable_offset`].
    #[error("option {name:?} is not enabled")]
    OptionDisabled {
        /// The option name.
        name: &'static str,
    },
    /// An option name with neither `:` nor `=` after it.
    #[error("expected ':' or '=' after option {name:?}")]
    MissingOptionBody {
        /// The option name.
        name: &'static str,
    },
    /// `@conf=...`: the option has no default key.
    #[error("expected ':' after option {name:?} ('=' needs a default key)")]
    NoDefaultKey {
        /// The option name.
        name: &'static str,
    },
    /// `@share=` with nothing after `=`.
    #[error("expected value after '=' for option {name:?}")]
    MissingOptionValue {
        /// The option name.
        name: &'static str,
    },
    /// An empty key (`@conf:=1`, trailing `,`).
    #[error("expected a key of option {option:?}")]
    ExpectedKey {
        /// The option name.
        option: &'static str,
    },
    /// A key the option does not have.
    #[error("expected a key of option {option:?}, got {key:?}")]
    UnknownKey {
        /// The option name.
        option: &'static str,
        /// The key as written.
        key: String,
    },
    /// The same key twice in one option.
    #[error("expected each key once, {key:?} of option {option:?} is already set")]
    DuplicateKey {
        /// The option name.
        option: &'static str,
        /// The key as written.
        key: String,
    },
    /// A key without `=value`.
    #[error("expected '=value' after key {key:?}")]
    MissingKeyValue {
        /// The key as written.
        key: String,
    },
    /// A mandatory key (`file`, `port`, `initial`) was not given.
    #[error("expected mandatory key {key:?} of option {option:?}")]
    MissingMandatoryKey {
        /// The option name.
        option: &'static str,
        /// The key.
        key: &'static str,
    },
    /// A value that is not a decimal number.
    #[error("expected a decimal digit")]
    BadNumber,
    /// A number too big for its field.
    #[error("expected a number no greater than {max}")]
    NumberOutOfRange {
        /// The largest accepted value.
        max: u64,
    },
    /// A control character in an option value.
    #[error("expected a non-control character in option value, got {ch:?}")]
    BadValueChar {
        /// The offending character.
        ch: char,
    },
    /// `@extmem`/`@offset` twice, or `@share` naming two different ports.
    #[error("expected option {name:?} at most once")]
    DuplicateOption {
        /// The option name.
        name: &'static str,
    },
}

/// Parses a port name exactly as `nmport_parse()` does (see the module docs).
pub fn parse(name: &str) -> Result<PortSpec, PortNameError> {
    parse_with(name, ParseOptions::default())
}

/// Parses a port name with the given [`ParseOptions`].
pub fn parse_with(name: &str, opts: ParseOptions) -> Result<PortSpec, PortNameError> {
    let wrap = |(pos, kind): (usize, PortNameErrorKind), shift: usize| PortNameError {
        name: name.to_owned(),
        pos: pos.saturating_sub(shift),
        kind,
    };
    if name.is_empty() {
        return Err(wrap((0, PortNameErrorKind::Empty), 0));
    }
    let prefixed = format!("{NETMAP_PREFIX}:");
    if opts.default_netmap_prefix
        && !name.starts_with(prefixed.as_str())
        && !name.starts_with(NM_BDG_NAME)
    {
        let full = format!("{prefixed}{name}");
        return parse_inner(&full, opts).map_err(|e| wrap(e, prefixed.len()));
    }
    parse_inner(name, opts).map_err(|e| wrap(e, 0))
}

/// What libnetmap's `nmreq_register_decode` reads from an opening mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterMode {
    /// `-N`, `^`, `^N`, `*` or nothing.
    pub rings: RingSel,
    /// The `/` flags.
    pub flags: RegFlags,
    /// `@N`.
    pub mem_id: Option<NonZeroU16>,
    /// Bytes read: the mode ends there, at the end of the input or at an
    /// `@` that starts options (`@conf:...`), left to the caller.
    pub len: usize,
}

/// libnetmap's `nmreq_header_decode`: the port name at the start of `s`
/// (`vale0:a`, `netmap:eth0`, `vale0:p{1`) and how many bytes it takes,
/// so that the opening mode starts there.
pub fn decode_header(s: &str) -> Result<(PortName, usize), PortNameError> {
    parse_header(s, 0, s.len()).map_err(|(pos, kind)| PortNameError {
        name: s.to_owned(),
        pos,
        kind,
    })
}

/// libnetmap's `nmreq_register_decode` on an opening mode (what follows
/// the port name: `-1/t@3`); `pipe` refuses the host-ring modes, which a
/// pipe has none of.
pub fn decode_register(s: &str, pipe: bool) -> Result<RegisterMode, PortNameError> {
    let r = parse_register(s, 0, s.len(), pipe).map_err(|(pos, kind)| PortNameError {
        name: s.to_owned(),
        pos,
        kind,
    })?;
    Ok(RegisterMode {
        rings: r.rings,
        flags: r.flags,
        mem_id: r.mem_id,
        len: r.options_at.unwrap_or(s.len()),
    })
}

/// Internal error: (absolute byte position, kind).
type PErr = (usize, PortNameErrorKind);
type PResult<T> = Result<T, PErr>;

fn byte(b: &[u8], i: usize) -> Option<u8> {
    b.get(i).copied()
}

fn sub(s: &str, from: usize, to: usize) -> &str {
    s.get(from..to).unwrap_or_default()
}

/// The character starting at byte `i` (for error messages).
fn char_at(s: &str, i: usize) -> char {
    s.get(i..)
        .and_then(|t| t.chars().next())
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

fn is_id_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn is_separator(c: u8) -> bool {
    matches!(c, b'-' | b'*' | b'^' | b'/' | b'@')
}

fn is_brace(c: u8) -> bool {
    c == b'{' || c == b'}'
}

/// Consumes the decimal digits at `b[i..end]`; returns (saturated value, end).
fn digits(b: &[u8], mut i: usize, end: usize) -> (u64, usize) {
    let mut v: u64 = 0;
    while i < end {
        match byte(b, i) {
            Some(c) if c.is_ascii_digit() => {
                v = v.saturating_mul(10).saturating_add(u64::from(c - b'0'));
                i += 1;
            }
            _ => break,
        }
    }
    (v, i)
}

fn parse_inner(s: &str, opts: ParseOptions) -> PResult<PortSpec> {
    let b = s.as_bytes();
    let end = b.len();
    let (name, i) = parse_header(s, 0, end)?;
    let reg = parse_register(s, i, end, name.pipe.is_some())?;
    let mut spec = PortSpec {
        rings: reg.rings,
        flags: reg.flags,
        mem_id: reg.mem_id,
        ..PortSpec::new(name)
    };
    if let Some(at) = reg.options_at {
        parse_options(s, at, end, &mut spec, opts)?;
    }
    Ok(spec)
}

/// `nmreq_header_decode` plus the kernel's name checks on `s[start..end]`.
/// Returns the name and the position just after it.
fn parse_header(s: &str, start: usize, end: usize) -> PResult<(PortName, usize)> {
    use PortNameErrorKind as K;
    let b = s.as_bytes();
    let rest = b.get(start..end).unwrap_or_default();
    if rest.is_empty() {
        return Err((start, K::EmptyPortName));
    }

    // Prefix and the ':' that ends it.
    let vale_prefix;
    let colon;
    if rest.starts_with(NETMAP_PREFIX.as_bytes()) {
        vale_prefix = false;
        let p = start + NETMAP_PREFIX.len();
        if p >= end || byte(b, p) != Some(b':') {
            return Err((p, K::ExpectedNetmapColon));
        }
        colon = p;
    } else if rest.starts_with(NM_BDG_NAME.as_bytes()) {
        vale_prefix = true;
        colon = scan_switch_id(b, start, end)?;
    } else {
        return Err((start, K::MissingPrefix));
    }
    let vp = colon + 1;

    // The name runs up to the first separator.
    let mut name_end = vp;
    while name_end < end && byte(b, name_end).is_some_and(|c| !is_separator(c)) {
        name_end += 1;
    }
    // The first brace, if any, starts the pipe id.
    let mut parent_end = vp;
    while parent_end < name_end && byte(b, parent_end).is_some_and(|c| !is_brace(c)) {
        parent_end += 1;
    }
    for i in vp..parent_end {
        if !byte(b, i).is_some_and(|c| c.is_ascii_graphic()) {
            return Err((i, K::BadNameChar { ch: char_at(s, i) }));
        }
    }
    if parent_end == vp {
        return Err((vp, K::EmptyPortName));
    }
    let pipe = match byte(b, parent_end) {
        Some(brace) if parent_end < name_end => {
            let id_start = parent_end + 1;
            for i in id_start..name_end {
                if !byte(b, i).is_some_and(is_id_byte) {
                    return Err((i, K::BadPipeIdChar));
                }
            }
            let (end_kind, brace_ch) = if brace == b'{' {
                (PipeEnd::Master, '{')
            } else {
                (PipeEnd::Slave, '}')
            };
            if id_start >= name_end {
                return Err((id_start, K::MissingPipeId { brace: brace_ch }));
            }
            Some(Pipe {
                end: end_kind,
                id: sub(s, id_start, name_end).to_owned(),
            })
        }
        _ => None,
    };

    // What the kernel sees in nr_name ("netmap:" is stripped, "vale" is not).
    let nr_start = if vale_prefix { start } else { vp };
    let parent = sub(s, nr_start, parent_end);
    let kind = if parent.starts_with(NM_BDG_NAME) {
        // nm_bdg_name_validate(): switch id chars up to ':' and length limits.
        let c2 = if vale_prefix {
            colon
        } else {
            scan_switch_id(b, nr_start, parent_end)?
        };
        let port_start = c2 + 1;
        if port_start >= parent_end {
            return Err((port_start, K::EmptyPortName));
        }
        if parent_end - port_start > MAX_VALE_PORT_LEN {
            return Err((
                port_start + MAX_VALE_PORT_LEN,
                K::PortNameTooLong {
                    max: MAX_VALE_PORT_LEN,
                },
            ));
        }
        PortKind::Vale {
            switch: sub(s, nr_start + NM_BDG_NAME.len(), c2).to_owned(),
            port: sub(s, port_start, parent_end).to_owned(),
        }
    } else {
        PortKind::Nic {
            ifname: parent.to_owned(),
        }
    };
    if name_end - nr_start > MAX_NR_NAME_LEN {
        return Err((
            nr_start + MAX_NR_NAME_LEN,
            K::NameTooLong {
                max: MAX_NR_NAME_LEN,
            },
        ));
    }
    Ok((PortName { kind, pipe }, name_end))
}

/// Scans the switch id of a VALE name starting at `start` (which holds
/// "vale"), up to `end`; returns the position of the ':'.
fn scan_switch_id(b: &[u8], start: usize, end: usize) -> PResult<usize> {
    use PortNameErrorKind as K;
    let mut i = start + NM_BDG_NAME.len();
    loop {
        if i >= end {
            return Err((i, K::ExpectedValeColon));
        }
        match byte(b, i) {
            Some(b':') => return Ok(i),
            Some(c) if is_id_byte(c) => {
                if i - start >= MAX_VALE_SWITCH_LEN {
                    return Err((
                        i,
                        K::SwitchNameTooLong {
                            max: MAX_VALE_SWITCH_LEN,
                        },
                    ));
                }
                i += 1;
            }
            _ => return Err((i, K::BadSwitchChar)),
        }
    }
}

struct RegPart {
    rings: RingSel,
    flags: RegFlags,
    mem_id: Option<NonZeroU16>,
    /// Position of the '@' that starts the option list, if any.
    options_at: Option<usize>,
}

#[derive(Clone, Copy)]
enum St {
    Start,
    RngSfxOk,
    GetNum { one_sw: bool },
    Flags,
    FlagsOk,
    MemId,
    OneSw,
}

/// `nmreq_register_decode` on `s[start..end]`.
fn parse_register(s: &str, start: usize, end: usize, pipe: bool) -> PResult<RegPart> {
    use PortNameErrorKind as K;
    let b = s.as_bytes();
    let mut st = St::Start;
    let mut rings = RingSel::AllNic;
    let mut flags = RegFlags::empty();
    let mut mem_id: Option<NonZeroU16> = None;
    let mut i = start;
    while i < end {
        let Some(c) = byte(b, i) else { break };
        match st {
            St::Start => {
                st = match c {
                    b'^' | b'*' if pipe => {
                        return Err((i, K::PipeRingMode { ch: char::from(c) }));
                    }
                    b'^' => {
                        rings = RingSel::Sw;
                        St::OneSw
                    }
                    b'*' => {
                        rings = RingSel::NicSw;
                        St::RngSfxOk
                    }
                    b'-' => St::GetNum { one_sw: false },
                    b'/' => St::Flags,
                    b'@' => St::MemId,
                    _ => return Err((i, K::UnexpectedChar { ch: char_at(s, i) })),
                };
                i += 1;
            }
            St::RngSfxOk => {
                st = match c {
                    b'/' => St::Flags,
                    b'@' => St::MemId,
                    _ => return Err((i, K::UnexpectedChar { ch: char_at(s, i) })),
                };
                i += 1;
            }
            St::GetNum { one_sw } => {
                let after = if one_sw { '^' } else { '-' };
                if !c.is_ascii_digit() {
                    return Err((i, K::ExpectedRingNumber { after }));
                }
                let (v, j) = digits(b, i, end);
                let n = match u16::try_from(v) {
                    Ok(n) if v < u64::from(NETMAP_RING_MASK) => n,
                    _ => {
                        return Err((
                            i,
                            K::RingOutOfRange {
                                limit: NETMAP_RING_MASK,
                            },
                        ))
                    }
                };
                rings = if one_sw {
                    RingSel::OneSw(n)
                } else {
                    RingSel::OneNic(n)
                };
                i = j;
                st = St::RngSfxOk;
            }
            St::Flags | St::FlagsOk => {
                if c == b'@' {
                    st = St::MemId;
                } else {
                    let Some(f) = RegFlags::from_letter(char::from(c)) else {
                        return Err((i, K::UnknownFlag { ch: char_at(s, i) }));
                    };
                    flags |= f;
                    st = St::FlagsOk;
                }
                i += 1;
            }
            St::MemId => {
                if !c.is_ascii_digit() {
                    // An '@' not followed by a digit starts the options.
                    return Ok(RegPart {
                        rings,
                        flags,
                        mem_id,
                        options_at: Some(i - 1),
                    });
                }
                let (v, j) = digits(b, i, end);
                let Some(m) = u16::try_from(v).ok().and_then(NonZeroU16::new) else {
                    return Err((i, K::MemIdOutOfRange));
                };
                if let Some(old) = mem_id {
                    if old != m {
                        return Err((
                            i,
                            K::ConflictingMemId {
                                old: old.get(),
                                new: m.get(),
                            },
                        ));
                    }
                }
                mem_id = Some(m);
                i = j;
                st = St::RngSfxOk;
            }
            St::OneSw => {
                // Not consuming: a digit selects one host ring.
                st = if c.is_ascii_digit() {
                    St::GetNum { one_sw: true }
                } else {
                    St::RngSfxOk
                };
            }
        }
    }
    match st {
        St::GetNum { one_sw } => Err((
            end,
            K::ExpectedRingNumber {
                after: if one_sw { '^' } else { '-' },
            },
        )),
        St::Flags => Err((end, K::ExpectedFlag)),
        St::MemId => Err((end, K::EmptyMemId)),
        St::Start | St::RngSfxOk | St::FlagsOk | St::OneSw => Ok(RegPart {
            rings,
            flags,
            mem_id,
            options_at: None,
        }),
    }
}

/// Description of an option (libnetmap `NPOPT_DECL` / `NPKEY_DECL`).
struct OptDesc {
    name: &'static str,
    /// Key names with '_' (as in nmport.c); '-' is accepted in their place.
    keys: &'static [&'static str],
    /// Index of the default key (`NMREQ_OPTK_DEFAULT`), which is also the
    /// only mandatory one (`NMREQ_OPTK_MUSTSET`) for every option.
    default_key: Option<usize>,
}

const OPT_SHARE: OptDesc = OptDesc {
    name: "share",
    keys: &["port"],
    default_key: Some(0),
};
const OPT_EXTMEM: OptDesc = OptDesc {
    name: "extmem",
    keys: &[
        "file",
        "if_num",
        "if_size",
        "ring_num",
        "ring_size",
        "buf_num",
        "buf_size",
    ],
    default_key: Some(0),
};
const OPT_CONF: OptDesc = OptDesc {
    name: "conf",
    keys: &[
        "rings",
        "host_rings",
        "slots",
        "tx_rings",
        "rx_rings",
        "host_tx_rings",
        "host_rx_rings",
        "tx_slots",
        "rx_slots",
    ],
    default_key: None,
};
const OPT_OFFSET: OptDesc = OptDesc {
    name: "offset",
    keys: &["initial", "bits"],
    default_key: Some(0),
};

/// Up to 9 keys per option; each a (value position, value) if set.
type KeyVals<'a> = [Option<(usize, &'a str)>; 9];

/// `nmreq_options_decode` on `s[at..end]`, where `s[at] == '@'`.
fn parse_options(
    s: &str,
    at: usize,
    end: usize,
    spec: &mut PortSpec,
    opts: ParseOptions,
) -> PResult<()> {
    let b = s.as_bytes();
    let mut i = at;
    loop {
        let ostart = i + 1;
        let mut oend = ostart;
        while oend < end && byte(b, oend) != Some(b'@') {
            oend += 1;
        }
        if oend == ostart {
            return Err((ostart, PortNameErrorKind::EmptyOption));
        }
        parse_one_option(s, ostart, oend, spec, opts)?;
        if oend >= end {
            return Ok(());
        }
        i = oend;
    }
}

fn parse_one_option(
    s: &str,
    ostart: usize,
    oend: usize,
    spec: &mut PortSpec,
    opts: ParseOptions,
) -> PResult<()> {
    use PortNameErrorKind as K;
    let b = s.as_bytes();
    let mut p = ostart;
    while p < oend && !matches!(byte(b, p), Some(b':' | b'=')) {
        p += 1;
    }
    let prefix = sub(s, ostart, p);
    let desc = match prefix {
        "share" => &OPT_SHARE,
        "extmem" => &OPT_EXTMEM,
        "conf" => &OPT_CONF,
        "offset" => &OPT_OFFSET,
        _ => {
            return Err((
                ostart,
                K::UnknownOption {
                    name: prefix.to_owned(),
                },
            ))
        }
    };
    if desc.name == OPT_OFFSET.name && !opts.enable_offset {
        return Err((ostart, K::OptionDisabled { name: desc.name }));
    }
    let mut keys: KeyVals<'_> = [None; 9];
    match byte(b, p).filter(|_| p < oend) {
        Some(b'=') => {
            let Some(dk) = desc.default_key else {
                return Err((p, K::NoDefaultKey { name: desc.name }));
            };
            if p + 1 >= oend {
                return Err((p + 1, K::MissingOptionValue { name: desc.name }));
            }
            if let Some(slot) = keys.get_mut(dk) {
                *slot = Some((p + 1, sub(s, p + 1, oend)));
            }
        }
        Some(_) => parse_keys(s, p + 1, oend, desc, &mut keys)?,
        None => return Err((p, K::MissingOptionBody { name: desc.name })),
    }
    if let Some(dk) = desc.default_key {
        if keys.get(dk).copied().flatten().is_none() {
            return Err((
                oend,
                K::MissingMandatoryKey {
                    option: desc.name,
                    key: desc.keys.get(dk).copied().unwrap_or_default(),
                },
            ));
        }
    }
    let key = |n: usize| keys.get(n).copied().flatten();
    match desc.name {
        "share" => {
            let Some((vpos, v)) = key(0) else {
                return Ok(());
            };
            let target = parse_share_target(s, vpos, vpos + v.len())?;
            if spec.share.as_ref().is_some_and(|old| *old != target) {
                return Err((ostart, K::DuplicateOption { name: desc.name }));
            }
            spec.share = Some(target);
        }
        "conf" => {
            let c = &mut spec.conf;
            // nmport.c applies the general keys first, then the specific ones.
            if let Some(v) = key(0) {
                let n = num_u16(b, v)?;
                c.tx_rings = n;
                c.rx_rings = n;
            }
            if let Some(v) = key(1) {
                let n = num_u16(b, v)?;
                c.host_tx_rings = n;
                c.host_rx_rings = n;
            }
            if let Some(v) = key(2) {
                let n = num_u32(b, v)?;
                c.tx_slots = n;
                c.rx_slots = n;
            }
            if let Some(v) = key(3) {
                c.tx_rings = num_u16(b, v)?;
            }
            if let Some(v) = key(4) {
                c.rx_rings = num_u16(b, v)?;
            }
            if let Some(v) = key(5) {
                c.host_tx_rings = num_u16(b, v)?;
            }
            if let Some(v) = key(6) {
                c.host_rx_rings = num_u16(b, v)?;
            }
            if let Some(v) = key(7) {
                c.tx_slots = num_u32(b, v)?;
            }
            if let Some(v) = key(8) {
                c.rx_slots = num_u32(b, v)?;
            }
        }
        "extmem" => {
            let Some((fpos, file)) = key(0) else {
                return Ok(());
            };
            check_value_chars(fpos, file)?;
            let n = |k: usize| key(k).map_or(Ok(0), |v| num_u32(b, v));
            let e = Extmem {
                file: file.to_owned(),
                if_num: n(1)?,
                if_size: n(2)?,
                ring_num: n(3)?,
                ring_size: n(4)?,
                buf_num: n(5)?,
                buf_size: n(6)?,
            };
            if spec.extmem.is_some() {
                return Err((ostart, K::DuplicateOption { name: desc.name }));
            }
            spec.extmem = Some(e);
        }
        _ => {
            // "offset"
            let n = |k: usize| key(k).map_or(Ok(0), |v| num(b, v, u64::MAX));
            let o = Offset {
                initial: n(0)?,
                bits: n(1)?,
            };
            if spec.offset.is_some() {
                return Err((ostart, K::DuplicateOption { name: desc.name }));
            }
            spec.offset = Some(o);
        }
    }
    Ok(())
}

/// `nmreq_option_parsekeys` on the body `s[start..oend]` ("k=v,k=v").
fn parse_keys<'a>(
    s: &'a str,
    start: usize,
    oend: usize,
    desc: &OptDesc,
    keys: &mut KeyVals<'a>,
) -> PResult<()> {
    use PortNameErrorKind as K;
    let b = s.as_bytes();
    let mut i = start;
    if i >= oend {
        return Ok(()); // an empty body assigns no key
    }
    loop {
        let kstart = i;
        while i < oend && !matches!(byte(b, i), Some(b'=' | b',')) {
            i += 1;
        }
        let raw = sub(s, kstart, i);
        if raw.is_empty() {
            return Err((kstart, K::ExpectedKey { option: desc.name }));
        }
        let norm = raw.replace('-', "_");
        let Some(idx) = desc.keys.iter().position(|k| *k == norm) else {
            return Err((
                kstart,
                K::UnknownKey {
                    option: desc.name,
                    key: raw.to_owned(),
                },
            ));
        };
        if keys.get(idx).copied().flatten().is_some() {
            return Err((
                kstart,
                K::DuplicateKey {
                    option: desc.name,
                    key: raw.to_owned(),
                },
            ));
        }
        if i >= oend || byte(b, i) != Some(b'=') {
            return Err((
                i,
                K::MissingKeyValue {
                    key: raw.to_owned(),
                },
            ));
        }
        i += 1;
        let vstart = i;
        while i < oend && byte(b, i) != Some(b',') {
            i += 1;
        }
        // As in C, an empty value leaves the key unset.
        if i > vstart {
            if let Some(slot) = keys.get_mut(idx) {
                *slot = Some((vstart, sub(s, vstart, i)));
            }
        }
        if i >= oend {
            return Ok(());
        }
        i += 1; // skip ','
    }
}

/// The value of `@share`: a port name, optionally followed by a mode/flags
/// suffix that C ignores (we validate it, then ignore it too).
fn parse_share_target(s: &str, start: usize, end: usize) -> PResult<PortName> {
    let (name, after) = parse_header(s, start, end)?;
    // No '@' can occur here (it would have ended the option), so the suffix
    // cannot contain a memory id or options.
    parse_register(s, after, end, name.pipe.is_some())?;
    Ok(name)
}

fn check_value_chars(pos: usize, v: &str) -> PResult<()> {
    match v.char_indices().find(|(_, c)| c.is_control()) {
        Some((off, ch)) => Err((pos + off, PortNameErrorKind::BadValueChar { ch })),
        None => Ok(()),
    }
}

/// A decimal option value no greater than `max`.
fn num(b: &[u8], (pos, v): (usize, &str), max: u64) -> PResult<u64> {
    let end = pos + v.len();
    let (n, j) = digits(b, pos, end);
    if j != end {
        return Err((j, PortNameErrorKind::BadNumber));
    }
    if n > max {
        return Err((pos, PortNameErrorKind::NumberOutOfRange { max }));
    }
    Ok(n)
}

fn num_u16(b: &[u8], v: (usize, &str)) -> PResult<u16> {
    let max = u16::MAX;
    let n = num(b, v, max.into())?;
    u16::try_from(n).map_err(|_| (v.0, PortNameErrorKind::NumberOutOfRange { max: max.into() }))
}

fn num_u32(b: &[u8], v: (usize, &str)) -> PResult<u32> {
    let max = u32::MAX;
    let n = num(b, v, max.into())?;
    u32::try_from(n).map_err(|_| (v.0, PortNameErrorKind::NumberOutOfRange { max: max.into() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use PortNameErrorKind as K;

    fn nic(ifname: &str) -> PortName {
        PortName {
            kind: PortKind::Nic {
                ifname: ifname.into(),
            },
            pipe: None,
        }
    }

    fn vale(switch: &str, port: &str) -> PortName {
        PortName {
            kind: PortKind::Vale {
                switch: switch.into(),
                port: port.into(),
            },
            pipe: None,
        }
    }

    fn piped(mut n: PortName, end: PipeEnd, id: &str) -> PortName {
        n.pipe = Some(Pipe { end, id: id.into() });
        n
    }

    fn spec(name: PortName) -> PortSpec {
        PortSpec::new(name)
    }

    fn conf(tx: u16, rx: u16, htx: u16, hrx: u16, txs: u32, rxs: u32) -> Conf {
        Conf {
            tx_rings: tx,
            rx_rings: rx,
            host_tx_rings: htx,
            host_rx_rings: hrx,
            tx_slots: txs,
            rx_slots: rxs,
        }
    }

    /// Chaining setters to keep the tables short.
    trait With: Sized {
        fn r(self, rings: RingSel) -> Self;
        fn f(self, flags: RegFlags) -> Self;
        fn m(self, mem_id: u16) -> Self;
        fn c(self, conf: Conf) -> Self;
        fn sh(self, share: PortName) -> Self;
        fn x(self, file: &str, nums: [u32; 6]) -> Self;
    }

    impl With for PortSpec {
        fn r(self, rings: RingSel) -> Self {
            PortSpec { rings, ..self }
        }
        fn f(self, flags: RegFlags) -> Self {
            PortSpec { flags, ..self }
        }
        fn m(self, mem_id: u16) -> Self {
            PortSpec {
                mem_id: NonZeroU16::new(mem_id),
                ..self
            }
        }
        fn c(self, conf: Conf) -> Self {
            PortSpec { conf, ..self }
        }
        fn sh(self, share: PortName) -> Self {
            PortSpec {
                share: Some(share),
                ..self
            }
        }
        fn x(self, file: &str, nums: [u32; 6]) -> Self {
            let [if_num, if_size, ring_num, ring_size, buf_num, buf_size] = nums;
            let file = file.into();
            let e = Extmem {
                file,
                if_num,
                if_size,
                ring_num,
                ring_size,
                buf_num,
                buf_size,
            };
            PortSpec {
                extmem: Some(e),
                ..self
            }
        }
    }

    fn eth0() -> PortSpec {
        spec(nic("eth0"))
    }

    fn vp(switch: &str, port: &str) -> PortSpec {
        spec(vale(switch, port))
    }

    fn accepted() -> Vec<(&'static str, PortSpec)> {
        use PipeEnd::{Master, Slave};
        use RingSel::*;
        let all = RegFlags::LETTERS
            .iter()
            .fold(RegFlags::empty(), |a, &(_, f)| a | f);
        let xt = RegFlags::EXCLUSIVE | RegFlags::TX_RINGS_ONLY;
        let rt = RegFlags::MONITOR_RX | RegFlags::MONITOR_TX;
        vec![
            ("netmap:eth0", eth0()),
            ("netmap:eth0^", eth0().r(Sw)),
            ("netmap:eth0^3", eth0().r(OneSw(3))),
            ("netmap:eth0*", eth0().r(NicSw)),
            ("netmap:eth0-2", eth0().r(OneNic(2))),
            ("netmap:eth0-0", eth0().r(OneNic(0))),
            ("netmap:eth0-4094", eth0().r(OneNic(4094))),
            ("netmap:eth0-007", eth0().r(OneNic(7))),
            ("netmap:eth0^4094", eth0().r(OneSw(4094))),
            ("netmap:eth0.100", spec(nic("eth0.100"))),
            ("netmap:a:b", spec(nic("a:b"))),
            ("netmap:val0", spec(nic("val0"))),
            ("netmap:netmap:x", spec(nic("netmap:x"))),
            ("vale0:p", vp("0", "p")),
            ("vale:eph0", vp("", "eph0")),
            ("valeA_b9:port_1", vp("A_b9", "port_1")),
            ("valencia:x", vp("ncia", "x")),
            ("vale0:a:b", vp("0", "a:b")),
            ("vale0:a.b", vp("0", "a.b")),
            (
                "vale01234567890:012345678901234",
                vp("01234567890", "012345678901234"),
            ),
            ("netmap:vale1:a", vp("1", "a")),
            ("netmap:vale:a", vp("", "a")),
            ("vale0:p^", vp("0", "p").r(Sw)),
            ("vale0:p*/x", vp("0", "p").r(NicSw).f(RegFlags::EXCLUSIVE)),
            ("vale0:x{1", spec(piped(vale("0", "x"), Master, "1"))),
            ("vale:1}1", spec(piped(vale("", "1"), Slave, "1"))),
            (
                "netmap:eth0}pipe_A",
                spec(piped(nic("eth0"), Slave, "pipe_A")),
            ),
            (
                "vale0:x{1-0",
                spec(piped(vale("0", "x"), Master, "1")).r(OneNic(0)),
            ),
            (
                "netmap:eth0{p/xT@2",
                spec(piped(nic("eth0"), Master, "p")).f(xt).m(2),
            ),
            ("netmap:eth0/x", eth0().f(RegFlags::EXCLUSIVE)),
            ("netmap:eth0/xztrRT", eth0().f(all)),
            ("netmap:eth0/TRrtzx", eth0().f(all)),
            ("netmap:eth0/xx", eth0().f(RegFlags::EXCLUSIVE)),
            ("netmap:eth0^/t", eth0().r(Sw).f(RegFlags::MONITOR_TX)),
            ("netmap:eth0/@1", eth0().m(1)),
            ("netmap:eth0@2", eth0().m(2)),
            ("netmap:eth0@65535", eth0().m(65535)),
            ("netmap:eth0@2/z", eth0().m(2).f(RegFlags::ZCOPY_MON)),
            (
                "netmap:eth0-1/R@3",
                eth0().r(OneNic(1)).f(RegFlags::RX_RINGS_ONLY).m(3),
            ),
            ("netmap:eth0/r@3/t", eth0().f(rt).m(3)),
            ("netmap:eth0@1@1", eth0().m(1)),
            ("netmap:eth0^@1", eth0().r(Sw).m(1)),
            (
                "netmap:eth0@conf:rings=4,slots=1024",
                eth0().c(conf(4, 4, 0, 0, 1024, 1024)),
            ),
            (
                "vale0:p@conf:tx-rings=2,rx_rings=3,host-rings=1,tx-slots=256,rx-slots=512",
                vp("0", "p").c(conf(2, 3, 1, 1, 256, 512)),
            ),
            (
                "vale0:p@conf:host-tx-rings=2,host_rx-rings=3",
                vp("0", "p").c(conf(0, 0, 2, 3, 0, 0)),
            ),
            (
                "netmap:eth0@conf:tx-rings=2,rings=4",
                eth0().c(conf(2, 4, 0, 0, 0, 0)),
            ),
            (
                "netmap:eth0@conf:rings=4@conf:slots=8",
                eth0().c(conf(4, 4, 0, 0, 8, 8)),
            ),
            (
                "netmap:eth0@conf:tx-rings=2@conf:rings=4",
                eth0().c(conf(4, 4, 0, 0, 0, 0)),
            ),
            ("netmap:eth0@conf:rings=2@conf:rings=0", eth0()),
            (
                "netmap:eth0@conf:rings=65535,slots=4294967295",
                eth0().c(conf(65535, 65535, 0, 0, u32::MAX, u32::MAX)),
            ),
            ("netmap:eth0@conf:", eth0()),
            ("netmap:eth0@conf:rings=", eth0()),
            (
                "netmap:eth0@conf:rings=,rings=5",
                eth0().c(conf(5, 5, 0, 0, 0, 0)),
            ),
            ("netmap:eth0@share=vale0:p", eth0().sh(vale("0", "p"))),
            (
                "vale0:p@share:port=netmap:eth1",
                vp("0", "p").sh(nic("eth1")),
            ),
            (
                "vale0:p@share=netmap:eth1-1/x",
                vp("0", "p").sh(nic("eth1")),
            ),
            (
                "vale0:p@share=vale0:q{3",
                vp("0", "p").sh(piped(vale("0", "q"), Master, "3")),
            ),
            (
                "vale0:p@share=vale0:q@share=vale0:q",
                vp("0", "p").sh(vale("0", "q")),
            ),
            (
                "netmap:eth0@1@share=vale0:q",
                eth0().m(1).sh(vale("0", "q")),
            ),
            (
                "netmap:eth0@extmem:file=/dev/hugepages/x,if-num=10,buf-size=2048",
                eth0().x("/dev/hugepages/x", [10, 0, 0, 0, 0, 2048]),
            ),
            (
                "netmap:eth0@extmem:if_size=1,ring-num=2,ring_size=3,buf-num=4,file=f",
                eth0().x("f", [0, 1, 2, 3, 4, 0]),
            ),
            (
                "netmap:eth0@extmem=/tmp/a,b=c:d",
                eth0().x("/tmp/a,b=c:d", [0; 6]),
            ),
            ("netmap:eth0@extmem=/tmp/é", eth0().x("/tmp/é", [0; 6])),
            (
                "netmap:eth0-1/x@3@conf:rings=2@share=vale0:q@extmem=/f",
                eth0()
                    .r(OneNic(1))
                    .f(RegFlags::EXCLUSIVE)
                    .m(3)
                    .c(conf(2, 2, 0, 0, 0, 0))
                    .sh(vale("0", "q"))
                    .x("/f", [0; 6]),
            ),
        ]
    }

    #[test]
    fn accepted_names() {
        for (input, want) in accepted() {
            let got = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, want, "{input}");
            let canon = got.to_string();
            assert_eq!(parse(&canon).as_ref(), Ok(&got), "{input} -> {canon}");
            assert_eq!(canon.parse::<PortSpec>().as_ref(), Ok(&got), "{input}");
        }
    }

    #[test]
    fn canonical_forms() {
        for (input, canon) in [
            ("netmap:eth0-007/xx@1@1", "netmap:eth0-7/x@1"),
            ("netmap:vale1:a", "vale1:a"),
            ("netmap:eth0@2/z", "netmap:eth0/z@2"),
            ("netmap:eth0/TRrtzx", "netmap:eth0/xztrRT"),
            (
                "netmap:eth0@conf:tx-rings=2,rx-rings=2",
                "netmap:eth0@conf:rings=2",
            ),
            (
                "netmap:eth0@conf:tx-rings=2,rx-slots=9",
                "netmap:eth0@conf:tx-rings=2,rx-slots=9",
            ),
            ("netmap:eth0@conf:", "netmap:eth0"),
            (
                "netmap:eth0@share:port=netmap:x-1",
                "netmap:eth0@share=netmap:x",
            ),
            (
                "netmap:eth0@extmem:file=f,buf-num=3",
                "netmap:eth0@extmem:file=f,buf-num=3",
            ),
            ("netmap:eth0@extmem:file=f", "netmap:eth0@extmem=f"),
        ] {
            let spec = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(spec.to_string(), canon, "{input}");
        }
    }

    #[test]
    fn register_fields() {
        let s = parse("vale0:p{7-3/xR@5").unwrap();
        assert_eq!(s.nr_name(), "vale0:p{7");
        assert_eq!(s.name.parent_nr_name(), "vale0:p");
        assert_eq!(s.name.vale_switch().as_deref(), Some("vale0"));
        assert_eq!(s.nr_mode(), 4);
        assert_eq!(s.nr_ringid(), 3);
        assert_eq!(s.nr_flags(), 0x800 | 0x2000);
        assert_eq!(s.nr_mem_id(), 5);
        let s = parse("netmap:eth0}x").unwrap();
        assert_eq!(s.nr_name(), "eth0}x");
        assert_eq!((s.nr_mode(), s.nr_ringid(), s.nr_mem_id()), (1, 0, 0));
        assert_eq!(s.name.vale_switch(), None);
        assert_eq!(parse("netmap:e^").unwrap().nr_mode(), 2);
        assert_eq!(parse("netmap:e*").unwrap().nr_mode(), 3);
        assert_eq!(parse("netmap:e^2").unwrap().nr_mode(), 8);
        assert_eq!(parse("netmap:e^2").unwrap().nr_ringid(), 2);
        let f = parse("netmap:e/xztrRT").unwrap().nr_flags();
        assert_eq!(f, 0x800 | 0x400 | 0x100 | 0x200 | 0x2000 | 0x4000);
    }

    #[test]
    fn offset_option() {
        let on = ParseOptions {
            enable_offset: true,
            ..ParseOptions::default()
        };
        for (input, initial, bits) in [
            ("netmap:eth0@offset=64", 64, 0),
            ("netmap:eth0@offset:initial=64,bits=16", 64, 16),
            ("netmap:eth0@offset:bits=16,initial=0", 0, 16),
        ] {
            let s = parse_with(input, on).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(s.offset, Some(Offset { initial, bits }), "{input}");
            assert_eq!(parse_with(&s.to_string(), on), Ok(s.clone()), "{input}");
        }
        let e = parse("netmap:eth0@offset=64").unwrap_err();
        assert_eq!((e.pos, e.kind), (12, K::OptionDisabled { name: "offset" }));
        let e = parse_with("netmap:eth0@offset:bits=1", on).unwrap_err();
        assert_eq!(
            e.kind,
            K::MissingMandatoryKey {
                option: "offset",
                key: "initial"
            }
        );
        let e = parse_with("netmap:eth0@offset=1@offset=2", on).unwrap_err();
        assert_eq!((e.pos, e.kind), (21, K::DuplicateOption { name: "offset" }));
    }

    #[test]
    fn default_netmap_prefix() {
        let o = ParseOptions {
            default_netmap_prefix: true,
            ..ParseOptions::default()
        };
        let s = parse_with("eth0-1", o).unwrap();
        assert_eq!(s, eth0().r(RingSel::OneNic(1)));
        assert_eq!(parse_with("vale0:a", o).unwrap(), spec(vale("0", "a")));
        assert_eq!(parse_with("netmap:x", o).unwrap(), spec(nic("x")));
        // "netmapx" lacks the ':' so pkt-gen prepends "netmap:".
        assert_eq!(parse_with("netmapx", o).unwrap(), spec(nic("netmapx")));
        let e = parse_with("eth0/q", o).unwrap_err();
        assert_eq!((e.name.as_str(), e.pos), ("eth0/q", 5));
        assert_eq!(e.kind, K::UnknownFlag { ch: 'q' });
        let e = parse_with("", o).unwrap_err();
        assert_eq!((e.pos, e.kind), (0, K::Empty));
        let e = parse_with("-1", o).unwrap_err();
        assert_eq!((e.pos, e.kind), (0, K::EmptyPortName));
        // Without the option, a missing prefix is an error.
        assert_eq!(parse("eth0").unwrap_err().kind, K::MissingPrefix);
    }

    #[test]
    fn rejected_names() {
        let long_nic = format!("netmap:{}", "a".repeat(64));
        let ok_nic = format!("netmap:{}", "a".repeat(63));
        assert!(parse(&ok_nic).is_ok());
        let long_pipe = format!("vale0:p{{{}", "1".repeat(60));
        let ok_pipe = format!("vale0:p{{{}", "1".repeat(55));
        assert!(parse(&ok_pipe).is_ok());
        let fixed: Vec<(&str, usize, K)> = vec![
            ("", 0, K::Empty),
            ("eth0", 0, K::MissingPrefix),
            ("Netmap:eth0", 0, K::MissingPrefix),
            ("null:x", 0, K::MissingPrefix),
            ("valé:x", 0, K::MissingPrefix),
            ("netmap:", 7, K::EmptyPortName),
            ("netmap", 6, K::ExpectedNetmapColon),
            ("netmap0:eth0", 6, K::ExpectedNetmapColon),
            ("netmap-1", 6, K::ExpectedNetmapColon),
            ("vale0", 5, K::ExpectedValeColon),
            ("vale", 4, K::ExpectedValeColon),
            ("vale0:", 6, K::EmptyPortName),
            ("vale:", 5, K::EmptyPortName),
            ("vale0:-1", 6, K::EmptyPortName),
            ("vale-1:x", 4, K::BadSwitchChar),
            ("vale0.1:x", 5, K::BadSwitchChar),
            ("vale\u{e9}:x", 4, K::BadSwitchChar),
            ("vale012345678901:x", 15, K::SwitchNameTooLong { max: 15 }),
            ("vale0:0123456789abcdef", 21, K::PortNameTooLong { max: 15 }),
            (
                "netmap:vale0:0123456789abcdef",
                28,
                K::PortNameTooLong { max: 15 },
            ),
            ("netmap:valeX", 12, K::ExpectedValeColon),
            ("netmap:vale", 11, K::ExpectedValeColon),
            ("netmap:vale_x.y:z", 13, K::BadSwitchChar),
            ("netmap:vale0:", 13, K::EmptyPortName),
            ("netmap:vale0:{1", 13, K::EmptyPortName),
            (
                "netmap:vale012345678901:x",
                22,
                K::SwitchNameTooLong { max: 15 },
            ),
            (&long_nic, 70, K::NameTooLong { max: 63 }),
            (&long_pipe, 63, K::NameTooLong { max: 63 }),
            ("vale0:x{", 8, K::MissingPipeId { brace: '{' }),
            ("vale0:x}", 8, K::MissingPipeId { brace: '}' }),
            ("vale0:x{-1", 8, K::MissingPipeId { brace: '{' }),
            ("netmap:{1", 7, K::EmptyPortName),
            ("vale0:{1", 6, K::EmptyPortName),
            ("netmap:x{a.b", 10, K::BadPipeIdChar),
            ("netmap:x{1}2", 10, K::BadPipeIdChar),
            ("netmap:x{1{2", 10, K::BadPipeIdChar),
            ("netmap:x{1:2", 10, K::BadPipeIdChar),
            ("vale0:x{1^", 9, K::PipeRingMode { ch: '^' }),
            ("vale0:x{1^0", 9, K::PipeRingMode { ch: '^' }),
            ("netmap:x}1*", 10, K::PipeRingMode { ch: '*' }),
            ("netmap:eth0-", 12, K::ExpectedRingNumber { after: '-' }),
            ("netmap:eth0-x", 12, K::ExpectedRingNumber { after: '-' }),
            ("netmap:eth0--1", 12, K::ExpectedRingNumber { after: '-' }),
            ("netmap:eth0-+1", 12, K::ExpectedRingNumber { after: '-' }),
            ("netmap:eth0-99999", 12, K::RingOutOfRange { limit: 4095 }),
            ("netmap:eth0-4095", 12, K::RingOutOfRange { limit: 4095 }),
            (
                "netmap:eth0-99999999999999999999999",
                12,
                K::RingOutOfRange { limit: 4095 },
            ),
            ("netmap:eth0^4095", 12, K::RingOutOfRange { limit: 4095 }),
            ("netmap:eth0^x", 12, K::UnexpectedChar { ch: 'x' }),
            ("netmap:eth0^-1", 12, K::UnexpectedChar { ch: '-' }),
            ("netmap:eth0^^", 12, K::UnexpectedChar { ch: '^' }),
            ("netmap:eth0*3", 12, K::UnexpectedChar { ch: '3' }),
            ("netmap:eth0-1-2", 13, K::UnexpectedChar { ch: '-' }),
            ("netmap:eth0-1x", 13, K::UnexpectedChar { ch: 'x' }),
            ("netmap:eth0@1*", 13, K::UnexpectedChar { ch: '*' }),
            ("netmap:eth0/q", 12, K::UnknownFlag { ch: 'q' }),
            ("netmap:eth0/X", 12, K::UnknownFlag { ch: 'X' }),
            ("netmap:eth0/", 12, K::ExpectedFlag),
            ("netmap:eth0/x/r", 13, K::UnknownFlag { ch: '/' }),
            ("netmap:eth0/x^", 13, K::UnknownFlag { ch: '^' }),
            ("netmap:eth0/x-1", 13, K::UnknownFlag { ch: '-' }),
            ("netmap:eth0/\u{e9}", 12, K::UnknownFlag { ch: '\u{e9}' }),
            ("netmap:eth0@", 12, K::EmptyMemId),
            ("netmap:eth0/x@", 14, K::EmptyMemId),
            ("netmap:eth0@0", 12, K::MemIdOutOfRange),
            ("netmap:eth0@65536", 12, K::MemIdOutOfRange),
            (
                "netmap:eth0@99999999999999999999999",
                12,
                K::MemIdOutOfRange,
            ),
            (
                "netmap:eth0@1@2",
                14,
                K::ConflictingMemId { old: 1, new: 2 },
            ),
            ("netmap:eth0@@", 12, K::EmptyOption),
            ("netmap:eth0@conf:rings=1@", 25, K::EmptyOption),
            ("netmap:eth0@conf:rings=1@@conf:", 25, K::EmptyOption),
            (
                "netmap:eth0@foo",
                12,
                K::UnknownOption { name: "foo".into() },
            ),
            (
                "netmap:eth0@Conf:rings=1",
                12,
                K::UnknownOption {
                    name: "Conf".into(),
                },
            ),
            (
                "netmap:eth0@conf:rings=1@2",
                25,
                K::UnknownOption { name: "2".into() },
            ),
            (
                "netmap:eth0@conf",
                16,
                K::MissingOptionBody { name: "conf" },
            ),
            (
                "netmap:eth0@share",
                17,
                K::MissingOptionBody { name: "share" },
            ),
            ("netmap:eth0@conf=4", 16, K::NoDefaultKey { name: "conf" }),
            (
                "netmap:eth0@share=",
                18,
                K::MissingOptionValue { name: "share" },
            ),
            (
                "netmap:eth0@extmem=",
                19,
                K::MissingOptionValue { name: "extmem" },
            ),
            (
                "netmap:eth0@conf:bogus=1",
                17,
                K::UnknownKey {
                    option: "conf",
                    key: "bogus".into(),
                },
            ),
            (
                "netmap:eth0@conf:RINGS=1",
                17,
                K::UnknownKey {
                    option: "conf",
                    key: "RINGS".into(),
                },
            ),
            (
                "netmap:eth0@conf:rings=1,file=x",
                25,
                K::UnknownKey {
                    option: "conf",
                    key: "file".into(),
                },
            ),
            ("netmap:eth0@conf:rings=abc", 23, K::BadNumber),
            ("netmap:eth0@conf:rings=4abc", 24, K::BadNumber),
            ("netmap:eth0@conf:rings=-1", 23, K::BadNumber),
            ("netmap:eth0@conf:rings= 1", 23, K::BadNumber),
            (
                "netmap:eth0@conf:rings=70000",
                23,
                K::NumberOutOfRange { max: 65535 },
            ),
            (
                "netmap:eth0@conf:slots=4294967296",
                23,
                K::NumberOutOfRange { max: 4294967295 },
            ),
            ("netmap:eth0@extmem:file=f,if-num=x", 33, K::BadNumber),
            (
                "netmap:eth0@conf:rings",
                22,
                K::MissingKeyValue {
                    key: "rings".into(),
                },
            ),
            (
                "netmap:eth0@conf:rings,slots=1",
                22,
                K::MissingKeyValue {
                    key: "rings".into(),
                },
            ),
            (
                "netmap:eth0@conf:rings=1,rings=2",
                25,
                K::DuplicateKey {
                    option: "conf",
                    key: "rings".into(),
                },
            ),
            (
                "netmap:eth0@conf:tx_rings=1,tx-rings=2",
                28,
                K::DuplicateKey {
                    option: "conf",
                    key: "tx-rings".into(),
                },
            ),
            (
                "netmap:eth0@conf:rings=1,",
                25,
                K::ExpectedKey { option: "conf" },
            ),
            (
                "netmap:eth0@conf:,rings=1",
                17,
                K::ExpectedKey { option: "conf" },
            ),
            ("netmap:eth0@conf:=1", 17, K::ExpectedKey { option: "conf" }),
            (
                "netmap:eth0@share:",
                18,
                K::MissingMandatoryKey {
                    option: "share",
                    key: "port",
                },
            ),
            (
                "netmap:eth0@share:port=",
                23,
                K::MissingMandatoryKey {
                    option: "share",
                    key: "port",
                },
            ),
            (
                "netmap:eth0@extmem:if-num=1",
                27,
                K::MissingMandatoryKey {
                    option: "extmem",
                    key: "file",
                },
            ),
            ("netmap:eth0@share=eth1", 18, K::MissingPrefix),
            ("netmap:eth0@share=vale0:", 24, K::EmptyPortName),
            (
                "netmap:eth0@share=netmap:x/q",
                27,
                K::UnknownFlag { ch: 'q' },
            ),
            (
                "netmap:eth0@share=vale0:a@share=vale0:b",
                26,
                K::DuplicateOption { name: "share" },
            ),
            (
                "netmap:eth0@extmem=/a@extmem=/b",
                22,
                K::DuplicateOption { name: "extmem" },
            ),
            ("netmap:eth0@extmem=/a\tb", 21, K::BadValueChar { ch: '\t' }),
            ("netmap:\u{e9}th0", 7, K::BadNameChar { ch: '\u{e9}' }),
            ("netmap:eth 0", 10, K::BadNameChar { ch: ' ' }),
            ("netmap:eth0\0", 11, K::BadNameChar { ch: '\0' }),
            ("vale0:p\u{e9}", 7, K::BadNameChar { ch: '\u{e9}' }),
            ("netmap:x{\u{e9}", 9, K::BadPipeIdChar),
        ];
        for (input, pos, kind) in fixed {
            let e = match parse(input) {
                Ok(s) => panic!("{input:?} accepted as {s:?}"),
                Err(e) => e,
            };
            assert_eq!((e.pos, &e.kind), (pos, &kind), "{input:?}: {e}");
            assert_eq!(e.name, input);
            assert!(e.pos <= input.len(), "{input:?}");
        }
    }

    #[test]
    fn error_message() {
        let e = parse("vale0:x{").unwrap_err();
        assert_eq!(
            e.to_string(),
            "port name \"vale0:x{\": position 8: expected pipe id after '{'"
        );
        let e = parse("netmap:eth0-99999").unwrap_err();
        assert_eq!(
            e.to_string(),
            "port name \"netmap:eth0-99999\": position 12: expected ring number in [0, 4095)"
        );
    }

    /// xorshift64*: deterministic, no dependencies.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            // n is small; the modulo bias does not matter here.
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn never_panics_and_round_trips() {
        const HEADS: &[&str] = &[
            "netmap:",
            "vale",
            "vale0:",
            "vale:",
            "netmap:vale1:",
            "netmap",
            "val",
            "",
            "x",
        ];
        const TOKENS: &[&str] = &[
            "eth0",
            "p",
            "a",
            "_",
            "0",
            "1",
            "7",
            "4094",
            "4095",
            "99999",
            "65535",
            "65536",
            "{",
            "}",
            "^",
            "*",
            "-",
            "/",
            "@",
            ":",
            "=",
            ",",
            ".",
            " ",
            "\0",
            "é",
            "€",
            "x",
            "z",
            "t",
            "r",
            "R",
            "T",
            "q",
            "@1",
            "@2",
            "@0",
            "/x",
            "-1",
            "^2",
            "{1",
            "}p",
            "@conf:",
            "@conf=",
            "rings=",
            "tx-rings=",
            "rx_rings=",
            "host-rings=",
            "slots=",
            "tx-slots=",
            "bogus=",
            "@share=",
            "@share:port=",
            "@extmem:file=/f",
            "@extmem=",
            ",if-num=",
            ",buf-size=",
            "@offset=",
            "@offset:initial=",
            ",bits=",
            "@foo",
            "netmap:",
            "vale0:",
            "0123456789abcdef",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let on = ParseOptions {
            enable_offset: true,
            default_netmap_prefix: false,
        };
        let lenient = ParseOptions {
            default_netmap_prefix: true,
            enable_offset: false,
        };
        let mut n_ok = 0usize;
        for _ in 0..100_000 {
            let mut s = String::new();
            s.push_str(HEADS[rng.below(HEADS.len())]);
            for _ in 0..rng.below(9) {
                s.push_str(TOKENS[rng.below(TOKENS.len())]);
            }
            for opts in [ParseOptions::default(), on, lenient] {
                match parse_with(&s, opts) {
                    Ok(spec) => {
                        n_ok += 1;
                        let canon = spec.to_string();
                        assert_eq!(
                            parse_with(&canon, opts).as_ref(),
                            Ok(&spec),
                            "{s:?} -> {canon:?}"
                        );
                        assert!(spec.nr_name().len() <= MAX_NR_NAME_LEN, "{s:?}");
                    }
                    Err(e) => {
                        assert!(e.pos <= s.len(), "{s:?}: {e}");
                        assert!(s.is_char_boundary(e.pos), "{s:?}: {e}");
                        let _ = e.to_string();
                    }
                }
            }
        }
        eprintln!("accepted {n_ok} of 300000 parses");
        assert!(n_ok > 5_000, "only {n_ok} accepted: generator too weak");
    }

    /// libnetmap's two decoders split a spec where `parse` reads it whole.
    #[test]
    fn decoders_split_the_spec_as_libnetmap() {
        let s = "vale0:a{1/t@5@conf:rings=2";
        let (name, n) = decode_header(s).unwrap();
        assert_eq!(
            (name.nr_name().as_str(), &s[n..]),
            ("vale0:a{1", "/t@5@conf:rings=2")
        );
        let m = decode_register(&s[n..], true).unwrap();
        assert_eq!(m.flags, RegFlags::MONITOR_TX);
        assert_eq!(m.mem_id.map(NonZeroU16::get), Some(5));
        assert_eq!(&s[n..][m.len..], "@conf:rings=2");
        let (name, n) = decode_header("netmap:eth0-3").unwrap();
        assert_eq!((name.nr_name().as_str(), n), ("eth0", 11));
        let m = decode_register("-3", false).unwrap();
        assert_eq!((m.rings, m.len), (RingSel::OneNic(3), 2));
        assert!(decode_header("vale0:").is_err());
        assert!(
            decode_register("*", true).is_err(),
            "a pipe has no host rings"
        );
        assert!(decode_register("-x", false).is_err());
    }
}
