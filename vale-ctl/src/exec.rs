//! Running a [`Command`]: the requests it sends to valed and what it prints.
//!
//! This follows netmap's `bdg_ctl()` and `list_all()`: one `NIOCCTRL`-style
//! request per command (two for `-m PORT`, as `nmreq_get_mem_id()` asks first),
//! `failed to ACTION NAME: REASON` and exit status 1 when valed refuses.

use std::io::Write;

use netmap::abi::{
    NmreqPortInfoGet, NmreqRegister, NmreqValeAttach, NmreqValeDetach, NmreqValeList,
    NmreqValeNewif, NETMAP_REQ_IFNAMSIZ, NETMAP_REQ_PORT_INFO_GET, NETMAP_REQ_VALE_ATTACH,
    NETMAP_REQ_VALE_DELIF, NETMAP_REQ_VALE_DETACH, NETMAP_REQ_VALE_LIST, NETMAP_REQ_VALE_NEWIF,
    NETMAP_REQ_VALE_POLLING_DISABLE, NETMAP_REQ_VALE_POLLING_ENABLE,
};
use netmap::ctrl::{
    CtrlConn, CtrlError, Reply, Request, ValePortConfig, ValeSwitchConfig, ValeVhostNewif,
    VALE_PORT_BACKPRESSURE, VALE_PORT_MASK_OVERRIDE, VALE_REQ_PORT_CONFIG, VALE_REQ_STATS,
    VALE_REQ_SWITCH_CONFIG, VALE_REQ_VHOST_NEWIF, VALE_SET_FLAGS, VALE_SET_MAC_LIMIT,
    VALE_SET_SHARE, VALE_SHARE_MAX,
};
use netmap::pod::Pod;
use netmap::portname::{self, PortNameErrorKind};

use crate::cli::{
    Command, Invocation, MemSpec, PortConfigSpec, RingConfig, ShareChange, SwitchConfigSpec,
};
use crate::format;

/// `ENOENT`: ends the port enumeration.
const ENOENT: i32 = 2;
/// `EPROTO`: valed answered something that breaks the protocol.
const EPROTO: i32 = 71;

/// Something that answers control requests: valed's socket, or a fake in tests.
pub trait Control {
    /// Sends one request and returns valed's reply (a refusal is an `Ok` reply
    /// with a non-zero `error`).
    ///
    /// # Errors
    ///
    /// If the exchange itself failed (socket error, valed hung up, bad reply).
    fn call(&mut self, req: &Request) -> Result<Reply, CtrlError>;
}

impl Control for CtrlConn {
    fn call(&mut self, req: &Request) -> Result<Reply, CtrlError> {
        // vale-ctl asks for nothing that comes with descriptors; any that do
        // arrive are closed here.
        CtrlConn::call(self, req).map(|(reply, _fds)| reply)
    }
}

/// A failure already worded for the user.
struct Failed(String);

/// Where the output goes: stdout and stderr, or buffers in tests.
pub struct Out<'a> {
    /// Normal output.
    pub out: &'a mut dyn Write,
    /// Diagnostics.
    pub err: &'a mut dyn Write,
}

impl Out<'_> {
    fn out(&mut self, s: &str) {
        // Like printf, a failed write to stdout is not an error of the request.
        let _ = self.out.write_all(s.as_bytes());
    }

    fn err(&mut self, s: &str) {
        let _ = self.err.write_all(s.as_bytes());
    }
}

/// Runs `inv` against `ctl`; returns the exit status (0 or 1).
pub fn run(inv: &Invocation, ctl: &mut dyn Control, io: &mut Out<'_>) -> i32 {
    let r = match &inv.command {
        Command::ListAll => list_all(ctl, io),
        cmd => one(cmd, inv.verbose, ctl, io),
    };
    let _ = io.out.flush();
    match r {
        Ok(()) => 0,
        Err(Failed(msg)) => {
            io.err(&msg);
            1
        }
    }
}

/// The name as netmap's `strncpy(hdr.nr_name, name, 63)` leaves it: at most 63
/// bytes (cut at a character boundary here, since names are `str`).
fn nr_name(name: &str) -> &str {
    let max = NETMAP_REQ_IFNAMSIZ - 1;
    if name.len() <= max {
        return name;
    }
    let mut end = max;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Sends a request; a refusal becomes `failed to ACTION NAME: REASON`.
fn call(
    ctl: &mut dyn Control,
    req: Result<Request, CtrlError>,
    action: &str,
    name: &str,
) -> Result<Request, Failed> {
    let fail = |reason: String| Failed(format::failed(action, name, &reason));
    let reply = req
        .and_then(|r| ctl.call(&r))
        .map_err(|e| fail(e.to_string()))?;
    if reply.error != 0 {
        return Err(fail(format::strerror(reply.error)));
    }
    Ok(reply.req)
}

/// The reply's body as a `T`, or `failed to ACTION NAME: ...`.
fn body<T: Pod + Default>(req: &Request, action: &str, name: &str) -> Result<T, Failed> {
    req.body_as::<T>()
        .map_err(|e| Failed(format::failed(action, name, &e.to_string())))
}

/// No arguments: every port, `NAME bridge_idx B port_idx P` each.
fn list_all(ctl: &mut dyn Control, io: &mut Out<'_>) -> Result<(), Failed> {
    let fail = |reason: String| Failed(format::failed_list_all(&reason));
    let mut at = NmreqValeList::default();
    loop {
        let reply = Request::new(NETMAP_REQ_VALE_LIST, "", &at)
            .and_then(|r| ctl.call(&r))
            .map_err(|e| fail(e.to_string()))?;
        match reply.error {
            0 => {}
            ENOENT => return Ok(()),
            e => return Err(fail(format::strerror(e))),
        }
        let got: NmreqValeList = reply.req.body_as().map_err(|e| fail(e.to_string()))?;
        // valed answers the port at or after the one asked for; anything else
        // would loop forever.
        if (got.nr_bridge_idx, got.nr_port_idx) < (at.nr_bridge_idx, at.nr_port_idx) {
            return Err(fail(format::strerror(EPROTO)));
        }
        let name = String::from_utf8_lossy(reply.req.name());
        io.out(&format::list_line(&name, &got));
        let Some(next) = got.nr_port_idx.checked_add(1) else {
            return Ok(());
        };
        at = NmreqValeList {
            nr_port_idx: next,
            ..got
        };
    }
}

/// The `nr_mem_id` for `-m`, as netmap's `parse_mem_id()` computes it.
fn mem_id(mem: &MemSpec, ctl: &mut dyn Control) -> Result<u16, Failed> {
    let arg = match mem {
        MemSpec::Default => return Ok(0),
        MemSpec::Id(id) => return Ok(*id),
        MemSpec::Port(arg) => arg,
    };
    let spec = portname::parse(arg).map_err(|e| {
        if e.kind == PortNameErrorKind::MissingPrefix {
            Failed(format::invalid_mem_id(arg))
        } else {
            Failed(format!("{e}\n"))
        }
    })?;
    let req = Request::new(
        NETMAP_REQ_PORT_INFO_GET,
        nr_name(&spec.nr_name()),
        &NmreqPortInfoGet::default(),
    );
    let info_failed = |reason: String| Failed(format::mem_id_info_failed(arg, &reason));
    let reply = req
        .and_then(|r| ctl.call(&r))
        .map_err(|e| info_failed(e.to_string()))?;
    if reply.error != 0 {
        return Err(info_failed(format::strerror(reply.error)));
    }
    let info: NmreqPortInfoGet = reply
        .req
        .body_as()
        .map_err(|e| info_failed(e.to_string()))?;
    if info.nr_mem_id == 0 {
        return Err(Failed(format::invalid_mem_id(arg)));
    }
    Ok(info.nr_mem_id)
}

/// `--config PORT [SPEC]`: the options now in force, after the change if any.
///
/// valed's `VALE_SET_FLAGS` sets both flag bits at once, so when SPEC names only
/// one of them the other is first read (a `set: 0` request) and sent back as it is.
fn port_config(
    ctl: &mut dyn Control,
    name: &str,
    spec: &PortConfigSpec,
) -> Result<ValePortConfig, Failed> {
    let action = "configure";
    let mut ask = |cfg: &ValePortConfig| -> Result<ValePortConfig, Failed> {
        let req = Request::new(VALE_REQ_PORT_CONFIG, nr_name(name), cfg);
        let rep = call(ctl, req, action, name)?;
        body(&rep, action, name)
    };
    let read = ValePortConfig::default();
    if spec.is_read() {
        return ask(&read);
    }
    let mut want = ValePortConfig::default();
    if spec.backpressure.is_some() || spec.port_mask.is_some() {
        let current = if spec.backpressure.is_none() || spec.port_mask.is_none() {
            ask(&read)?.flags
        } else {
            0
        };
        let bit = |wanted: Option<bool>, bit: u32| match wanted {
            Some(true) => bit,
            Some(false) => 0,
            None => current & bit,
        };
        want.flags = bit(spec.backpressure, VALE_PORT_BACKPRESSURE)
            | bit(spec.port_mask, VALE_PORT_MASK_OVERRIDE);
        want.set |= VALE_SET_FLAGS;
    }
    if let Some(limit) = spec.mac_limit {
        want.mac_limit = limit;
        want.set |= VALE_SET_MAC_LIMIT;
    }
    ask(&want)
}

/// `--config SWITCH [share=...]`: the switch's owner and share list, after the
/// change if any.
///
/// `share=+UID` and `share=-UID` read the list first (a `set: 0` request) and
/// send it back changed; valed only replaces whole lists.
fn switch_config(
    ctl: &mut dyn Control,
    name: &str,
    spec: &SwitchConfigSpec,
) -> Result<ValeSwitchConfig, Failed> {
    let action = "configure";
    let fail = |reason: &str| Failed(format::failed(action, name, reason));
    let mut ask = |cfg: &ValeSwitchConfig| -> Result<ValeSwitchConfig, Failed> {
        let req = Request::new(VALE_REQ_SWITCH_CONFIG, nr_name(name), cfg);
        let rep = call(ctl, req, action, name)?;
        let got: ValeSwitchConfig = body(&rep, action, name)?;
        if got.nshare as usize > VALE_SHARE_MAX {
            return Err(fail(&format!(
                "valed answered a share list of {} uids (at most {VALE_SHARE_MAX})",
                got.nshare
            )));
        }
        Ok(got)
    };
    let read = ValeSwitchConfig::default();
    let Some(change) = &spec.share else {
        return ask(&read);
    };
    let current = match change {
        ShareChange::Set(_) => Vec::new(),
        ShareChange::Edit(_) => format::shared(&ask(&read)?).to_vec(),
    };
    let list = change.apply(&current);
    if list.len() > VALE_SHARE_MAX {
        return Err(fail(&format!(
            "cannot share with {} uids (at most {VALE_SHARE_MAX})",
            list.len()
        )));
    }
    let mut want = ValeSwitchConfig {
        nshare: list.len() as u32,
        set: VALE_SET_SHARE,
        ..ValeSwitchConfig::default()
    };
    want.share[..list.len()].copy_from_slice(&list);
    ask(&want)
}

fn warn_ignored(rings: &RingConfig, io: &mut Out<'_>) {
    for tok in &rings.ignored {
        io.err(&format::ignored_config(tok));
    }
}

/// Every command but the port list.
fn one(cmd: &Command, verbose: u32, ctl: &mut dyn Control, io: &mut Out<'_>) -> Result<(), Failed> {
    match cmd {
        Command::ListAll => unreachable!("handled by list_all"),
        Command::List { name } => {
            let action = "list";
            let req = Request::new(
                NETMAP_REQ_VALE_LIST,
                nr_name(name),
                &NmreqValeList::default(),
            );
            let rep = call(ctl, req, action, name)?;
            let v: NmreqValeList = body(&rep, action, name)?;
            io.out(&format::vale_list(&v));
        }
        Command::Attach {
            name,
            mode,
            rings,
            mem,
        } => {
            let action = "attach";
            warn_ignored(rings, io);
            let mem_id = mem_id(mem, ctl)?;
            let attach = NmreqValeAttach {
                reg: NmreqRegister {
                    nr_mode: *mode,
                    nr_tx_slots: rings.tx_slots,
                    nr_rx_slots: rings.rx_slots,
                    nr_tx_rings: rings.tx_rings,
                    nr_rx_rings: rings.rx_rings,
                    nr_mem_id: mem_id,
                    ..NmreqRegister::default()
                },
                ..NmreqValeAttach::default()
            };
            let req = Request::new(NETMAP_REQ_VALE_ATTACH, nr_name(name), &attach);
            let rep = call(ctl, req, action, name)?;
            if verbose > 0 {
                let v: NmreqValeAttach = body(&rep, action, name)?;
                io.out(&format::port_index(v.port_index));
            }
        }
        Command::Detach { name } => {
            let action = "detach";
            let req = Request::new(
                NETMAP_REQ_VALE_DETACH,
                nr_name(name),
                &NmreqValeDetach::default(),
            );
            let rep = call(ctl, req, action, name)?;
            if verbose > 0 {
                let v: NmreqValeDetach = body(&rep, action, name)?;
                io.out(&format::port_index(v.port_index));
            }
        }
        Command::NewIf { name, rings, mem } => {
            let action = "create";
            warn_ignored(rings, io);
            let newif = NmreqValeNewif {
                nr_tx_slots: rings.tx_slots,
                nr_rx_slots: rings.rx_slots,
                nr_tx_rings: rings.tx_rings,
                nr_rx_rings: rings.rx_rings,
                nr_mem_id: mem_id(mem, ctl)?,
                pad1: 0,
            };
            let req = Request::new(NETMAP_REQ_VALE_NEWIF, nr_name(name), &newif);
            let rep = call(ctl, req, action, name)?;
            if verbose > 0 {
                let v: NmreqValeNewif = body(&rep, action, name)?;
                io.out(&format::newif(&v));
            }
        }
        Command::VhostNewIf { name, vhost } => {
            let action = "create";
            // The spec was checked when parsed; this only fails if it was not.
            let newif = ValeVhostNewif::new(&vhost.path, vhost.client, vhost.queues.unwrap_or(0))
                .ok_or_else(|| {
                Failed(format::failed(
                    action,
                    name,
                    &format!("bad socket path {:?}", vhost.path),
                ))
            })?;
            let req = Request::new(VALE_REQ_VHOST_NEWIF, nr_name(name), &newif);
            let rep = call(ctl, req, action, name)?;
            if verbose > 0 {
                let v: ValeVhostNewif = body(&rep, action, name)?;
                io.out(&format::vhost_newif(&v));
            }
        }
        Command::DelIf { name } => {
            // netmap sends no body: nmreq_size_by_type(DELIF) is 0.
            let req = Request::with_body(NETMAP_REQ_VALE_DELIF, nr_name(name), Vec::new());
            call(ctl, req, "remove", name)?;
        }
        Command::PortInfo { name } => {
            let action = "obtain info for";
            let req = Request::new(
                NETMAP_REQ_PORT_INFO_GET,
                nr_name(name),
                &NmreqPortInfoGet::default(),
            );
            let rep = call(ctl, req, action, name)?;
            let v: NmreqPortInfoGet = body(&rep, action, name)?;
            io.out(&format::port_info(&v));
        }
        Command::PollingEnable { name, poll } | Command::PollingDisable { name, poll } => {
            let (reqtype, action) = match cmd {
                Command::PollingEnable { .. } => {
                    (NETMAP_REQ_VALE_POLLING_ENABLE, "enable polling on")
                }
                _ => (NETMAP_REQ_VALE_POLLING_DISABLE, "disable polling on"),
            };
            if let Some(w) = &poll.warning {
                io.err(&format!("{w}\n"));
            }
            let req = Request::new(reqtype, nr_name(name), &poll.body);
            call(ctl, req, action, name)?;
        }
        Command::Config { name, spec, json } => {
            let now = port_config(ctl, name, spec)?;
            io.out(&if *json {
                format::port_config_json(name, &now)
            } else {
                format::port_config(name, &now)
            });
        }
        Command::SwitchConfig { name, spec, json } => {
            let now = switch_config(ctl, name, spec)?;
            io.out(&if *json {
                format::switch_config_json(name, &now)
            } else {
                format::switch_config(name, &now)
            });
        }
        Command::Stats { port, json } => {
            let req = Request::with_body(
                VALE_REQ_STATS,
                nr_name(port.as_deref().unwrap_or("")),
                Vec::new(),
            );
            let fail = |reason: String| match port {
                Some(p) => Failed(format::failed("get stats for", p, &reason)),
                None => Failed(format!("failed to get stats: {reason}\n")),
            };
            let reply = req
                .and_then(|r| ctl.call(&r))
                .map_err(|e| fail(e.to_string()))?;
            if reply.error != 0 {
                return Err(fail(format::strerror(reply.error)));
            }
            let doc = std::str::from_utf8(&reply.req.body)
                .map_err(|_| fail("statistics are not UTF-8".to_owned()))?;
            if *json {
                io.out(&format::stats_json(doc));
            } else {
                let table = format::stats_table(doc).map_err(|e| fail(e.to_string()))?;
                io.out(&table);
            }
        }
    }
    Ok(())
}

/// `PATH: REASON`, as netmap's `perror("/dev/netmap")` when it cannot open the
/// device.
pub fn connect_failed(path: &std::path::Path, e: &CtrlError) -> String {
    let reason = match e {
        CtrlError::Connect { source, .. } => match source.raw_os_error() {
            Some(errno) => format::strerror(errno),
            None => source.to_string(),
        },
        other => other.to_string(),
    };
    format!("{}: {reason}\n", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse;
    use netmap::abi::{
        NmreqValePolling, NETMAP_POLLING_MODE_MULTI_CPU, NR_REG_ALL_NIC, NR_REG_NIC_SW,
    };
    use netmap::ctrl::VALE_VHOST_CLIENT;

    /// A scripted valed: records every request, answers from a closure.
    struct Fake<F: FnMut(&Request) -> Reply> {
        seen: Vec<Request>,
        answer: F,
    }

    impl<F: FnMut(&Request) -> Reply> Control for Fake<F> {
        fn call(&mut self, req: &Request) -> Result<Reply, CtrlError> {
            // What goes on the wire must decode on valed's side.
            let wire = req.encode()?;
            let decoded = Request::decode(&wire)?;
            assert_eq!(&decoded.body, &req.body);
            self.seen.push(req.clone());
            Ok((self.answer)(req))
        }
    }

    /// Runs a command line against `answer`; returns (status, stdout, stderr,
    /// requests seen).
    fn drive(
        args: &[&str],
        answer: impl FnMut(&Request) -> Reply,
    ) -> (i32, String, String, Vec<Request>) {
        let inv = parse(args).expect("valid command line");
        let mut fake = Fake {
            seen: vec![],
            answer,
        };
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let rc = run(
            &inv,
            &mut fake,
            &mut Out {
                out: &mut o,
                err: &mut e,
            },
        );
        (
            rc,
            String::from_utf8(o).unwrap(),
            String::from_utf8(e).unwrap(),
            fake.seen,
        )
    }

    fn ok_with<T: Pod>(req: &Request, body: &T) -> Reply {
        let mut r = req.clone();
        r.set_body(body);
        Reply::new(0, r)
    }

    fn echo(req: &Request) -> Reply {
        Reply::new(0, req.clone())
    }

    fn name(req: &Request) -> &str {
        std::str::from_utf8(req.name()).unwrap()
    }

    #[test]
    fn list_all_walks_indexes() {
        let ports = [
            (0u16, 0u32, "vale0:a"),
            (0, 2, "vale0:b"),
            (3, 1, "vale3:c"),
        ];
        let (rc, out, err, seen) = drive(&[], |req| {
            assert_eq!(req.reqtype(), NETMAP_REQ_VALE_LIST);
            assert!(req.name().is_empty());
            let at: NmreqValeList = req.body_as().unwrap();
            let next = ports
                .iter()
                .find(|(b, p, _)| (*b, *p) >= (at.nr_bridge_idx, at.nr_port_idx));
            match next {
                None => Reply::new(ENOENT, req.clone()),
                Some(&(b, p, n)) => {
                    let mut r = Request::new(
                        NETMAP_REQ_VALE_LIST,
                        n,
                        &NmreqValeList {
                            nr_bridge_idx: b,
                            pad1: 0,
                            nr_port_idx: p,
                        },
                    )
                    .unwrap();
                    r.hdr.nr_version = req.hdr.nr_version;
                    Reply::new(0, r)
                }
            }
        });
        assert_eq!(rc, 0, "{err}");
        assert_eq!(
            out,
            "vale0:a bridge_idx 0 port_idx 0\n\
             vale0:b bridge_idx 0 port_idx 2\n\
             vale3:c bridge_idx 3 port_idx 1\n"
        );
        // netmap's loop: port_idx + 1 after each answer, bridge_idx as answered.
        let asked: Vec<(u16, u32)> = seen
            .iter()
            .map(|r| {
                let l: NmreqValeList = r.body_as().unwrap();
                (l.nr_bridge_idx, l.nr_port_idx)
            })
            .collect();
        assert_eq!(asked, vec![(0, 0), (0, 1), (0, 3), (3, 2)]);
    }

    #[test]
    fn list_all_errors() {
        let (rc, out, err, _) = drive(&[], |req| Reply::new(13, req.clone()));
        assert_eq!((rc, out.as_str()), (1, ""));
        assert_eq!(err, "failed to list all: Permission denied\n");

        // A server that goes backwards is cut off instead of looping.
        let (rc, _, err, seen) = drive(&[], |req| ok_with(req, &NmreqValeList::default()));
        assert_eq!(rc, 1);
        assert_eq!(err, "failed to list all: Protocol error\n");
        assert_eq!(seen.len(), 2);

        // No ports at all: nothing printed, success.
        let (rc, out, err, _) = drive(&[], |req| Reply::new(ENOENT, req.clone()));
        assert_eq!((rc, out.as_str(), err.as_str()), (0, "", ""));
    }

    #[test]
    fn list_one() {
        let (rc, out, _, seen) = drive(&["-l", "vale2:x"], |req| {
            ok_with(
                req,
                &NmreqValeList {
                    nr_bridge_idx: 2,
                    pad1: 0,
                    nr_port_idx: 5,
                },
            )
        });
        assert_eq!(rc, 0);
        assert_eq!(out, "bridge_idx: 2\nport_idx:   5\n");
        assert_eq!(name(&seen[0]), "vale2:x");
        assert_eq!(seen[0].reqtype(), NETMAP_REQ_VALE_LIST);
    }

    #[test]
    fn attach_bodies() {
        let (rc, out, err, seen) = drive(&["-a", "vale0:eth0"], echo);
        assert_eq!((rc, out.as_str(), err.as_str()), (0, "", ""));
        let a: NmreqValeAttach = seen[0].body_as().unwrap();
        assert_eq!(seen[0].reqtype(), NETMAP_REQ_VALE_ATTACH);
        assert_eq!(name(&seen[0]), "vale0:eth0");
        assert_eq!(a.reg.nr_mode, NR_REG_ALL_NIC);
        assert_eq!(a.reg.nr_mem_id, 0);

        let (rc, out, err, seen) = drive(
            &["-v", "-h", "vale0:eth0", "-C", "256,128,2,1,7", "-m", "3"],
            |req| {
                let mut a: NmreqValeAttach = req.body_as().unwrap();
                a.port_index = 4;
                ok_with(req, &a)
            },
        );
        assert_eq!(rc, 0);
        assert_eq!(out, "port_index: 4\n");
        assert_eq!(err, "ignored config: 7\n");
        let a: NmreqValeAttach = seen[0].body_as().unwrap();
        assert_eq!(a.reg.nr_mode, NR_REG_NIC_SW);
        assert_eq!(
            (
                a.reg.nr_tx_slots,
                a.reg.nr_rx_slots,
                a.reg.nr_tx_rings,
                a.reg.nr_rx_rings,
                a.reg.nr_mem_id
            ),
            (256, 128, 2, 1, 3)
        );
    }

    #[test]
    fn failures_use_netmaps_words() {
        let cases: &[(&[&str], i32, &str)] = &[
            (
                &["-a", "vale0:eth9"],
                19,
                "failed to attach vale0:eth9: No such device\n",
            ),
            (
                &["-h", "vale0:eth9"],
                16,
                "failed to attach vale0:eth9: Device or resource busy\n",
            ),
            (
                &["-d", "vale0:x"],
                22,
                "failed to detach vale0:x: Invalid argument\n",
            ),
            (&["-n", "v0"], 17, "failed to create v0: File exists\n"),
            (
                &["-n", "vm1", "--vhost-user", "/run/vm1.sock"],
                98,
                "failed to create vm1: Address already in use\n",
            ),
            (
                &["-v", "-n", "vm1", "--vhost-user", "/run/vm1.sock,client"],
                17,
                "failed to create vm1: File exists\n",
            ),
            (
                &["-r", "v0"],
                2,
                "failed to remove v0: No such file or directory\n",
            ),
            (
                &["-g", "vale0:q"],
                6,
                "failed to obtain info for vale0:q: No such device or address\n",
            ),
            (
                &["-l", "vale0:q"],
                2,
                "failed to list vale0:q: No such file or directory\n",
            ),
            (
                &["-P", "vale0:q"],
                95,
                "failed to disable polling on vale0:q: Operation not supported\n",
            ),
            (
                &["--stats", "vale0:q"],
                2,
                "failed to get stats for vale0:q: No such file or directory\n",
            ),
            (
                &["--stats"],
                1,
                "failed to get stats: Operation not permitted\n",
            ),
            (
                &["--config", "vale0:q"],
                6,
                "failed to configure vale0:q: No such device or address\n",
            ),
            (
                &["--config", "vale0:q", "backpressure=on"],
                1,
                "failed to configure vale0:q: Operation not permitted\n",
            ),
            (
                &["--config", "vale0:q", "mac-limit=2", "--json"],
                22,
                "failed to configure vale0:q: Invalid argument\n",
            ),
        ];
        for &(args, errno, want) in cases {
            let (rc, out, err, _) = drive(args, |req| Reply::new(errno, req.clone()));
            assert_eq!(rc, 1, "{args:?}");
            assert_eq!(out, "", "{args:?}");
            assert_eq!(err, want, "{args:?}");
        }
    }

    #[test]
    fn polling() {
        let (rc, _, err, seen) = drive(&["-p", "vale0:eth0"], |req| Reply::new(95, req.clone()));
        assert_eq!(rc, 1);
        assert_eq!(
            err,
            "invalid null/empty config\n\
             failed to enable polling on vale0:eth0: Operation not supported\n"
        );
        assert_eq!(seen[0].reqtype(), NETMAP_REQ_VALE_POLLING_ENABLE);
        let (rc, _, err, seen) = drive(&["-p", "vale0:eth0", "-C", "1,2,3"], echo);
        assert_eq!((rc, err.as_str()), (0, ""));
        let p: NmreqValePolling = seen[0].body_as().unwrap();
        assert_eq!(
            (p.nr_mode, p.nr_first_cpu_id, p.nr_num_polling_cpus),
            (NETMAP_POLLING_MODE_MULTI_CPU, 2, 3)
        );
        let (rc, _, err, seen) = drive(&["-P", "vale0:eth0"], echo);
        assert_eq!((rc, err.as_str()), (0, ""));
        assert_eq!(seen[0].reqtype(), NETMAP_REQ_VALE_POLLING_DISABLE);
        assert_eq!(seen[0].body.len(), size_of::<NmreqValePolling>());
    }

    #[test]
    fn newif_delif_info() {
        let (rc, out, _, seen) = drive(&["-v", "-n", "v0", "-C", "2048"], |req| {
            let mut n: NmreqValeNewif = req.body_as().unwrap();
            n.nr_tx_rings = 1;
            n.nr_rx_rings = 1;
            n.nr_mem_id = 6;
            ok_with(req, &n)
        });
        assert_eq!(rc, 0);
        assert_eq!(
            out,
            "tx_slots:   2048\nrx_slots:   2048\ntx_rings:   1\nrx_ring:    1\nmem_id:     6\n"
        );
        assert_eq!(seen[0].reqtype(), NETMAP_REQ_VALE_NEWIF);

        // Without -v, -n prints nothing.
        let (rc, out, _, _) = drive(&["-n", "v0"], echo);
        assert_eq!((rc, out.as_str()), (0, ""));

        let (rc, out, _, seen) = drive(&["-r", "v0"], echo);
        assert_eq!((rc, out.as_str()), (0, ""));
        assert_eq!(seen[0].reqtype(), NETMAP_REQ_VALE_DELIF);
        assert!(seen[0].body.is_empty());

        let (rc, out, _, seen) = drive(&["-g", "vale0:v0"], |req| {
            ok_with(
                req,
                &NmreqPortInfoGet {
                    nr_memsize: 4096,
                    nr_tx_slots: 1024,
                    nr_rx_slots: 1024,
                    nr_tx_rings: 1,
                    nr_rx_rings: 1,
                    nr_mem_id: 2,
                    ..Default::default()
                },
            )
        });
        assert_eq!(rc, 0);
        assert_eq!(
            out,
            "memsize:    4096\ntx_slots:   1024\nrx_slots:   1024\ntx_rings:   1\n\
             rx_rings    1\nmem_id:     2\n"
        );
        assert_eq!(seen[0].reqtype(), NETMAP_REQ_PORT_INFO_GET);
    }

    #[test]
    fn vhost_newif() {
        let (rc, out, err, seen) = drive(&["-n", "vm1", "--vhost-user", "/run/vm1.sock"], echo);
        assert_eq!((rc, out.as_str(), err.as_str()), (0, "", ""));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].reqtype(), VALE_REQ_VHOST_NEWIF);
        assert_eq!(name(&seen[0]), "vm1");
        assert_eq!(seen[0].body.len(), size_of::<ValeVhostNewif>());
        let b: ValeVhostNewif = seen[0].body_as().unwrap();
        assert_eq!(b, ValeVhostNewif::new("/run/vm1.sock", false, 0).unwrap());
        assert_eq!(b.path_str(), Some("/run/vm1.sock"));
        assert_eq!((b.flags, b.queue_pairs, b.queue_size), (0, 0, 0));

        // client and queues=N: the flag and the pairs; -v prints what valed made.
        let (rc, out, err, seen) = drive(
            &[
                "-v",
                "-n",
                "vm2",
                "--vhost-user",
                "/run/vale/vm2.sock,client,queues=4",
            ],
            echo,
        );
        assert_eq!((rc, err.as_str()), (0, ""));
        assert_eq!(
            out,
            "socket:     /run/vale/vm2.sock\nmode:       client\nqueues:     4\n"
        );
        let b: ValeVhostNewif = seen[0].body_as().unwrap();
        assert_eq!(b.flags, VALE_VHOST_CLIENT);
        assert_eq!(b.queue_pairs, 4);
        assert_eq!(b.path_str(), Some("/run/vale/vm2.sock"));

        let (_, _, _, seen) = drive(&["-n", "vm3", "--vhost-user", "/s,queues=16"], echo);
        let b: ValeVhostNewif = seen[0].body_as().unwrap();
        assert_eq!((b.flags, b.queue_pairs), (0, 16));

        // A relative path goes out absolute.
        let (_, _, _, seen) = drive(&["-n", "vm4", "--vhost-user", "vm4.sock"], echo);
        let b: ValeVhostNewif = seen[0].body_as().unwrap();
        let want = std::env::current_dir().unwrap().join("vm4.sock");
        assert_eq!(b.path_str().map(std::path::Path::new), Some(want.as_path()));

        // A -v reply without a proper body: the failure names the port.
        let (rc, _, err, _) = drive(&["-v", "-n", "vm1", "--vhost-user", "/x"], |req| {
            let mut r = req.clone();
            r.body.truncate(8);
            Reply::new(0, r)
        });
        assert_eq!(rc, 1);
        assert!(err.starts_with("failed to create vm1: "), "{err}");

        // Attach, detach and remove are netmap's requests, unchanged.
        let (rc, _, _, seen) = drive(&["-a", "vale0:vm1"], echo);
        assert_eq!(rc, 0);
        assert_eq!(seen[0].reqtype(), NETMAP_REQ_VALE_ATTACH);
        let (rc, _, _, seen) = drive(&["-r", "vm1"], echo);
        assert_eq!(rc, 0);
        assert_eq!(seen[0].reqtype(), NETMAP_REQ_VALE_DELIF);
    }

    #[test]
    fn stats_vhost_user_lines() {
        let doc = r#"{"ports":[{"name":"vale0:vm1","switch":"vale0","port_idx":0,"in_packets":1,"vhost_user":{"connected":true,"connections":1,"acked_features":4294967296,"bad_chains":0,"no_rx_buffer":0,"rx_too_small":0}}]}"#;
        let reply = |req: &Request| {
            let mut r = req.clone();
            r.body = doc.as_bytes().to_vec();
            Reply::new(0, r)
        };
        let (rc, out, err, _) = drive(&["--stats"], reply);
        assert_eq!((rc, err.as_str()), (0, ""));
        assert_eq!(
            out,
            "vale0:vm1 switch=vale0 port_idx=0 in_packets=1\n  vhost_user connected=true \
             connections=1 acked_features=0x100000000 bad_chains=0 no_rx_buffer=0 rx_too_small=0\n"
        );
        let (rc, out, _, _) = drive(&["--stats", "--json"], reply);
        assert_eq!(rc, 0);
        assert_eq!(out, format!("{doc}\n"));
    }

    #[test]
    fn mem_id_from_a_port() {
        let (rc, _, err, seen) = drive(&["-n", "v1", "-m", "vale0:v0"], |req| {
            if req.reqtype() == NETMAP_REQ_PORT_INFO_GET {
                ok_with(
                    req,
                    &NmreqPortInfoGet {
                        nr_mem_id: 9,
                        ..Default::default()
                    },
                )
            } else {
                echo(req)
            }
        });
        assert_eq!((rc, err.as_str()), (0, ""));
        assert_eq!(seen.len(), 2);
        assert_eq!(name(&seen[0]), "vale0:v0");
        let n: NmreqValeNewif = seen[1].body_as().unwrap();
        assert_eq!(n.nr_mem_id, 9);

        // netmap:eth0 asks about eth0.
        let (_, _, _, seen) = drive(&["-a", "vale0:x", "-m", "netmap:eth0"], |req| {
            ok_with(
                req,
                &NmreqPortInfoGet {
                    nr_mem_id: 1,
                    ..Default::default()
                },
            )
        });
        assert_eq!(name(&seen[0]), "eth0");

        let (rc, _, err, seen) = drive(&["-n", "v1", "-m", "eth0"], echo);
        assert_eq!(rc, 1);
        assert_eq!(err, "invalid format in '-m eth0' (missing 'netmap:'?)\n");
        assert!(seen.is_empty());

        let (rc, _, err, seen) = drive(&["-n", "v1", "-m", "vale0:nope"], |req| {
            Reply::new(2, req.clone())
        });
        assert_eq!(rc, 1);
        assert_eq!(
            err,
            "cannot get info for 'vale0:nope': No such file or directory\n"
        );
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn long_names_are_cut_like_strncpy() {
        let long = format!("vale0:{}", "p".repeat(80));
        let (rc, _, _, seen) = drive(&["-d", &long], echo);
        assert_eq!(rc, 0);
        assert_eq!(seen[0].name().len(), 63);
        assert!(long.starts_with(name(&seen[0])));
        assert_eq!(nr_name("é".repeat(40).as_str()).len(), 62);
    }

    /// valed's `port_config` on one port, starting from `now`.
    fn config_server(mut now: ValePortConfig) -> impl FnMut(&Request) -> Reply {
        move |req| {
            assert_eq!(req.reqtype(), VALE_REQ_PORT_CONFIG);
            let b: ValePortConfig = req.body_as().unwrap();
            assert_eq!(b.pad, 0);
            if b.set & VALE_SET_FLAGS != 0 {
                now.flags = b.flags;
            }
            if b.set & VALE_SET_MAC_LIMIT != 0 {
                now.mac_limit = b.mac_limit;
            }
            ok_with(req, &now)
        }
    }

    fn cfg(flags: u32, mac_limit: u32, set: u32) -> ValePortConfig {
        ValePortConfig {
            flags,
            mac_limit,
            set,
            pad: 0,
        }
    }

    fn bodies(seen: &[Request]) -> Vec<ValePortConfig> {
        seen.iter().map(|r| r.body_as().unwrap()).collect()
    }

    #[test]
    fn config() {
        const BP: u32 = VALE_PORT_BACKPRESSURE;
        const PM: u32 = VALE_PORT_MASK_OVERRIDE;
        const SF: u32 = VALE_SET_FLAGS;
        const SM: u32 = VALE_SET_MAC_LIMIT;
        // (args, config before, requests sent, line printed)
        let cases: &[(&[&str], ValePortConfig, Vec<ValePortConfig>, &str)] = &[
            // No SPEC: one read.
            (
                &["--config", "vale0:vm1"],
                cfg(PM, 7, 0),
                vec![cfg(0, 0, 0)],
                "vale0:vm1 backpressure=off port-mask=on mac-limit=7\n",
            ),
            // One flag named: read first, keep the other bit.
            (
                &["--config", "vale0:vm1", "backpressure=on"],
                cfg(PM, 7, 0),
                vec![cfg(0, 0, 0), cfg(BP | PM, 0, SF)],
                "vale0:vm1 backpressure=on port-mask=on mac-limit=7\n",
            ),
            (
                &["--config", "vale0:vm1", "port-mask=off"],
                cfg(BP | PM, 0, 0),
                vec![cfg(0, 0, 0), cfg(BP, 0, SF)],
                "vale0:vm1 backpressure=on port-mask=off mac-limit=0\n",
            ),
            (
                &["--config", "vale0:vm1", "port-mask=on,mac-limit=3"],
                cfg(0, 0, 0),
                vec![cfg(0, 0, 0), cfg(PM, 3, SF | SM)],
                "vale0:vm1 backpressure=off port-mask=on mac-limit=3\n",
            ),
            // Both flags named: no read.
            (
                &["--config", "vale0:vm1", "backpressure=off,port-mask=on"],
                cfg(BP, 9, 0),
                vec![cfg(PM, 0, SF)],
                "vale0:vm1 backpressure=off port-mask=on mac-limit=9\n",
            ),
            // Only the MAC limit: flags untouched, no read.
            (
                &["--config", "vale0:vm1", "mac-limit=0"],
                cfg(BP, 9, 0),
                vec![cfg(0, 0, SM)],
                "vale0:vm1 backpressure=on port-mask=off mac-limit=0\n",
            ),
        ];
        for (args, before, sent, line) in cases {
            let (rc, out, err, seen) = drive(args, config_server(*before));
            assert_eq!((rc, err.as_str()), (0, ""), "{args:?}");
            assert_eq!(out, *line, "{args:?}");
            assert_eq!(bodies(&seen), *sent, "{args:?}");
            assert!(seen.iter().all(|r| name(r) == "vale0:vm1"), "{args:?}");
        }

        let (rc, out, _, _) = drive(
            &["--config", "vale0:vm1", "backpressure=on", "--json"],
            config_server(cfg(0, 4, 0)),
        );
        assert_eq!(rc, 0);
        assert_eq!(
            out,
            "{\"name\":\"vale0:vm1\",\"backpressure\":true,\"port_mask\":false,\"mac_limit\":4}\n"
        );

        // The read before the change fails: nothing is changed.
        let (rc, out, err, seen) = drive(&["--config", "vale0:x", "port-mask=on"], |req| {
            Reply::new(6, req.clone())
        });
        assert_eq!((rc, out.as_str()), (1, ""));
        assert_eq!(
            err,
            "failed to configure vale0:x: No such device or address\n"
        );
        assert_eq!(bodies(&seen), vec![cfg(0, 0, 0)]);

        // A reply without a proper body.
        let (rc, _, err, _) = drive(&["--config", "vale0:x"], |req| {
            let mut r = req.clone();
            r.body.clear();
            Reply::new(0, r)
        });
        assert_eq!(rc, 1);
        assert!(err.starts_with("failed to configure vale0:x: "), "{err}");
    }

    /// valed's switch sharing on one switch, `vale0`, owned by uid 1000 with
    /// `share` as its list: reads answer it, `VALE_SET_SHARE` replaces it. Any
    /// other name is ENXIO, as a switch with no port.
    fn switch_server(share: &[u32]) -> impl FnMut(&Request) -> Reply {
        let mut now = sw(1000, share, 0);
        move |req| {
            assert_eq!(req.reqtype(), VALE_REQ_SWITCH_CONFIG);
            assert_eq!(req.body.len(), size_of::<ValeSwitchConfig>());
            if name(req) != "vale0" {
                return Reply::new(6, req.clone());
            }
            let b: ValeSwitchConfig = req.body_as().unwrap();
            assert_eq!((b.pad, b.owner), (0, 0));
            assert!(b.nshare as usize <= VALE_SHARE_MAX);
            // Past nshare, the list is zeros.
            assert!(b.share[b.nshare as usize..].iter().all(|&u| u == 0));
            if b.set & VALE_SET_SHARE != 0 {
                now.nshare = b.nshare;
                now.share = b.share;
            }
            ok_with(req, &now)
        }
    }

    fn sw(owner: u32, share: &[u32], set: u32) -> ValeSwitchConfig {
        let mut c = ValeSwitchConfig {
            owner,
            nshare: share.len() as u32,
            set,
            ..ValeSwitchConfig::default()
        };
        c.share[..share.len()].copy_from_slice(share);
        c
    }

    fn switch_bodies(seen: &[Request]) -> Vec<ValeSwitchConfig> {
        seen.iter().map(|r| r.body_as().unwrap()).collect()
    }

    #[test]
    fn switch_config() {
        const SS: u32 = VALE_SET_SHARE;
        let read = sw(0, &[], 0);
        /// (args, list before, requests sent, line printed)
        type Case<'a> = (&'a [&'a str], &'a [u32], Vec<ValeSwitchConfig>, &'a str);
        let cases: &[Case<'_>] = &[
            // No SPEC: one read.
            (
                &["--config", "vale0"],
                &[1001, 1002],
                vec![read],
                "vale0 owner=1000 share=1001,1002\n",
            ),
            (
                &["--config", "vale0"],
                &[],
                vec![read],
                "vale0 owner=1000 share=\n",
            ),
            // A new list: sent as is, no read.
            (
                &["--config", "vale0", "share=1001,1002"],
                &[7],
                vec![sw(0, &[1001, 1002], SS)],
                "vale0 owner=1000 share=1001,1002\n",
            ),
            (
                &["--config", "vale0", "share=5,5,6,5"],
                &[],
                vec![sw(0, &[5, 6], SS)],
                "vale0 owner=1000 share=5,6\n",
            ),
            // share= clears.
            (
                &["--config", "vale0", "share="],
                &[1001, 1002],
                vec![sw(0, &[], SS)],
                "vale0 owner=1000 share=\n",
            ),
            // +UID / -UID: read, then the changed list.
            (
                &["--config", "vale0", "share=+1003"],
                &[1001, 1002],
                vec![read, sw(0, &[1001, 1002, 1003], SS)],
                "vale0 owner=1000 share=1001,1002,1003\n",
            ),
            (
                &["--config", "vale0", "share=-1001"],
                &[1001, 1002],
                vec![read, sw(0, &[1002], SS)],
                "vale0 owner=1000 share=1002\n",
            ),
            // Already there / not there: the same list is still sent (valed
            // decides whether the caller may set it).
            (
                &["--config", "vale0", "share=+1002"],
                &[1001, 1002],
                vec![read, sw(0, &[1001, 1002], SS)],
                "vale0 owner=1000 share=1001,1002\n",
            ),
            (
                &["--config", "vale0", "share=-9"],
                &[],
                vec![read, sw(0, &[], SS)],
                "vale0 owner=1000 share=\n",
            ),
            (
                &["--config", "vale0", "share=-1001,+4,+5"],
                &[1001],
                vec![read, sw(0, &[4, 5], SS)],
                "vale0 owner=1000 share=4,5\n",
            ),
        ];
        for (args, before, sent, line) in cases {
            let (rc, out, err, seen) = drive(args, switch_server(before));
            assert_eq!((rc, err.as_str()), (0, ""), "{args:?}");
            assert_eq!(out, *line, "{args:?}");
            assert_eq!(switch_bodies(&seen), *sent, "{args:?}");
            assert!(seen.iter().all(|r| name(r) == "vale0"), "{args:?}");
        }

        // 16 uids fit; a full list sent as a new list.
        let full: Vec<u32> = (1..=16).collect();
        let spec = format!(
            "share={}",
            full.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let (rc, out, _, seen) = drive(&["--config", "vale0", &spec], switch_server(&[]));
        assert_eq!(rc, 0);
        assert_eq!(switch_bodies(&seen), vec![sw(0, &full, SS)]);
        assert_eq!(out, format!("vale0 owner=1000 {}\n", &spec));

        // JSON, read and after a change.
        let (rc, out, _, _) = drive(
            &["--config", "vale0", "--json"],
            switch_server(&[1001, 1002]),
        );
        assert_eq!(rc, 0);
        assert_eq!(
            out,
            "{\"switch\":\"vale0\",\"owner\":1000,\"share\":[1001,1002]}\n"
        );
        let (rc, out, _, _) = drive(
            &["--config", "vale0", "share=", "--json"],
            switch_server(&[1001]),
        );
        assert_eq!(rc, 0);
        assert_eq!(out, "{\"switch\":\"vale0\",\"owner\":1000,\"share\":[]}\n");
    }

    #[test]
    fn switch_config_errors() {
        // valed's refusals, named by the switch, as for a port.
        let cases: &[(&[&str], i32, &str)] = &[
            (
                &["--config", "vale3"],
                6,
                "failed to configure vale3: No such device or address\n",
            ),
            (
                &["--config", "vale0", "share=1001"],
                1,
                "failed to configure vale0: Operation not permitted\n",
            ),
            (
                &["--config", "vale0", "share=", "--json"],
                22,
                "failed to configure vale0: Invalid argument\n",
            ),
        ];
        for &(args, errno, want) in cases {
            let (rc, out, err, seen) = drive(args, |req| Reply::new(errno, req.clone()));
            assert_eq!((rc, out.as_str()), (1, ""), "{args:?}");
            assert_eq!(err, want, "{args:?}");
            assert_eq!(seen.len(), 1, "{args:?}");
        }

        // No such switch (no ports): the read before +UID fails, nothing is set.
        let (rc, out, err, seen) = drive(&["--config", "vale7", "share=+1"], switch_server(&[]));
        assert_eq!((rc, out.as_str()), (1, ""));
        assert_eq!(
            err,
            "failed to configure vale7: No such device or address\n"
        );
        assert_eq!(switch_bodies(&seen), vec![sw(0, &[], 0)]);

        // Not the owner: the read succeeds, the set is refused.
        let mut inner = switch_server(&[1001]);
        let (rc, out, err, seen) = drive(&["--config", "vale0", "share=-1001"], |req| {
            let b: ValeSwitchConfig = req.body_as().unwrap();
            if b.set != 0 {
                Reply::new(1, req.clone())
            } else {
                inner(req)
            }
        });
        assert_eq!((rc, out.as_str()), (1, ""));
        assert_eq!(err, "failed to configure vale0: Operation not permitted\n");
        assert_eq!(
            switch_bodies(&seen),
            vec![sw(0, &[], 0), sw(0, &[], VALE_SET_SHARE)]
        );

        // +UID onto a full list: refused here, nothing is set.
        let full: Vec<u32> = (1..=16).collect();
        let (rc, out, err, seen) = drive(&["--config", "vale0", "share=+17"], switch_server(&full));
        assert_eq!((rc, out.as_str()), (1, ""));
        assert_eq!(
            err,
            "failed to configure vale0: cannot share with 17 uids (at most 16)\n"
        );
        assert_eq!(seen.len(), 1);
        // ... but removing one and adding another fits.
        let (rc, _, err, seen) =
            drive(&["--config", "vale0", "share=-1,+17"], switch_server(&full));
        assert_eq!((rc, err.as_str()), (0, ""));
        let want: Vec<u32> = (2..=17).collect();
        assert_eq!(switch_bodies(&seen)[1], sw(0, &want, VALE_SET_SHARE));

        // A reply without a proper body.
        let (rc, out, err, _) = drive(&["--config", "vale0"], |req| {
            let mut r = req.clone();
            r.body.truncate(16);
            Reply::new(0, r)
        });
        assert_eq!((rc, out.as_str()), (1, ""));
        assert!(err.starts_with("failed to configure vale0: "), "{err}");

        // A reply claiming more than 16 uids.
        let (rc, out, err, _) = drive(&["--config", "vale0"], |req| {
            let mut c = sw(1000, &[1; 16], 0);
            c.nshare = 17;
            ok_with(req, &c)
        });
        assert_eq!((rc, out.as_str()), (1, ""));
        assert_eq!(
            err,
            "failed to configure vale0: valed answered a share list of 17 uids (at most 16)\n"
        );
    }

    const DOC: &str = r#"{"ports":[{"name":"vale0:a","switch":"vale0","port_idx":0,"in_packets":5,"drop_runt":1}]}"#;

    fn stats_reply(req: &Request) -> Reply {
        let mut r = req.clone();
        r.body = DOC.as_bytes().to_vec();
        Reply::new(0, r)
    }

    #[test]
    fn stats() {
        let (rc, out, _, seen) = drive(&["--stats"], stats_reply);
        assert_eq!(rc, 0);
        assert_eq!(
            out,
            "vale0:a switch=vale0 port_idx=0 in_packets=5 drop_runt=1\n"
        );
        assert_eq!(seen[0].reqtype(), VALE_REQ_STATS);
        assert!(seen[0].name().is_empty());
        assert!(seen[0].body.is_empty());

        let (rc, out, _, seen) = drive(&["--stats", "vale0:a", "--json"], stats_reply);
        assert_eq!(rc, 0);
        assert_eq!(out, format!("{DOC}\n"));
        assert_eq!(name(&seen[0]), "vale0:a");

        let (rc, out, err, _) = drive(&["--stats"], |req| {
            let mut r = req.clone();
            r.body = b"{\"ports\":".to_vec();
            Reply::new(0, r)
        });
        assert_eq!((rc, out.as_str()), (1, ""));
        assert!(err.starts_with("failed to get stats: bad JSON"), "{err}");
    }

    #[test]
    fn transport_errors() {
        struct Dead;
        impl Control for Dead {
            fn call(&mut self, _: &Request) -> Result<Reply, CtrlError> {
                Err(CtrlError::Closed)
            }
        }
        let inv = parse(&["-r", "v0"]).unwrap();
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let rc = run(
            &inv,
            &mut Dead,
            &mut Out {
                out: &mut o,
                err: &mut e,
            },
        );
        assert_eq!(rc, 1);
        assert_eq!(
            String::from_utf8(e).unwrap(),
            "failed to remove v0: valed closed the control connection\n"
        );

        let err = CtrlError::Connect {
            path: "/run/vale/valed.sock".into(),
            source: std::io::Error::from_raw_os_error(2),
        };
        assert_eq!(
            connect_failed(std::path::Path::new("/run/vale/valed.sock"), &err),
            "/run/vale/valed.sock: No such file or directory\n"
        );
    }
}
