//! Everything `vale-ctl` prints, in netmap's vale-ctl wording.
//!
//! netmap's strings are kept as they are, including their oddities
//! (`rx_rings    ` without a colon in `-g`, `rx_ring:` in `-n -v`).

use std::fmt::Write as _;

use netmap::abi::{NmreqPortInfoGet, NmreqValeList, NmreqValeNewif};
use netmap::ctrl::{
    ValePortConfig, ValeSwitchConfig, ValeVhostNewif, VALE_PORT_BACKPRESSURE,
    VALE_PORT_MASK_OVERRIDE, VALE_VHOST_CLIENT,
};

use crate::stats::{Json, StatsError};

/// C's `strerror(errno)`: the text of [`std::io::Error::from_raw_os_error`] without
/// Rust's ` (os error N)` suffix.
pub fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.strip_suffix(&format!(" (os error {errno})")) {
        Some(t) => t.to_owned(),
        None => s,
    }
}

/// `failed to ACTION NAME: REASON`, netmap's message for a refused request.
pub fn failed(action: &str, name: &str, reason: &str) -> String {
    format!("failed to {action} {name}: {reason}\n")
}

/// `failed to list all: REASON`, for a refused enumeration (no arguments).
pub fn failed_list_all(reason: &str) -> String {
    format!("failed to list all: {reason}\n")
}

/// One line of the port list: `NAME bridge_idx B port_idx P`.
pub fn list_line(name: &str, v: &NmreqValeList) -> String {
    format!(
        "{name} bridge_idx {} port_idx {}\n",
        v.nr_bridge_idx, v.nr_port_idx
    )
}

/// `-l PORT`.
pub fn vale_list(v: &NmreqValeList) -> String {
    format!(
        "bridge_idx: {}\nport_idx:   {}\n",
        v.nr_bridge_idx, v.nr_port_idx
    )
}

/// `-g PORT`.
pub fn port_info(v: &NmreqPortInfoGet) -> String {
    format!(
        "memsize:    {}\ntx_slots:   {}\nrx_slots:   {}\ntx_rings:   {}\nrx_rings    {}\nmem_id:     {}\n",
        v.nr_memsize, v.nr_tx_slots, v.nr_rx_slots, v.nr_tx_rings, v.nr_rx_rings, v.nr_mem_id
    )
}

/// `-n IF -v`.
pub fn newif(v: &NmreqValeNewif) -> String {
    format!(
        "tx_slots:   {}\nrx_slots:   {}\ntx_rings:   {}\nrx_ring:    {}\nmem_id:     {}\n",
        v.nr_tx_slots, v.nr_rx_slots, v.nr_tx_rings, v.nr_rx_rings, v.nr_mem_id
    )
}

/// `-n IF --vhost-user PATH -v`: the port valed made, in the style of `-n -v`.
pub fn vhost_newif(v: &ValeVhostNewif) -> String {
    let end = v.path.iter().position(|&c| c == 0).unwrap_or(v.path.len());
    format!(
        "socket:     {}\nmode:       {}\nqueues:     {}\n",
        String::from_utf8_lossy(&v.path[..end]),
        if v.flags & VALE_VHOST_CLIENT != 0 {
            "client"
        } else {
            "server"
        },
        v.queue_pairs.max(1)
    )
}

/// `-a`, `-h`, `-d` with `-v`.
pub fn port_index(idx: u32) -> String {
    format!("port_index: {idx}\n")
}

/// A `-C` field past the fourth, which netmap ignores (netmap's message has no
/// newline; ours ends the line).
pub fn ignored_config(tok: &str) -> String {
    format!("ignored config: {tok}\n")
}

/// `-m` names a port netmap's parser rejects for want of a prefix.
pub fn invalid_mem_id(arg: &str) -> String {
    format!("invalid format in '-m {arg}' (missing 'netmap:'?)\n")
}

/// `-m PORT` and valed refused the `NETMAP_REQ_PORT_INFO_GET` (libnetmap's text).
pub fn mem_id_info_failed(arg: &str, reason: &str) -> String {
    format!("cannot get info for '{arg}': {reason}\n")
}

/// `--config PORT`: the options in force, as
/// `PORT backpressure=on|off port-mask=on|off mac-limit=N`.
pub fn port_config(name: &str, c: &ValePortConfig) -> String {
    let on_off = |bit: u32| if c.flags & bit != 0 { "on" } else { "off" };
    format!(
        "{name} backpressure={} port-mask={} mac-limit={}\n",
        on_off(VALE_PORT_BACKPRESSURE),
        on_off(VALE_PORT_MASK_OVERRIDE),
        c.mac_limit
    )
}

/// `--config PORT --json`: the options in force as one JSON object,
/// `{"name":"PORT","backpressure":B,"port_mask":B,"mac_limit":N}`.
pub fn port_config_json(name: &str, c: &ValePortConfig) -> String {
    format!(
        "{{\"name\":{},\"backpressure\":{},\"port_mask\":{},\"mac_limit\":{}}}\n",
        json_string(name),
        c.flags & VALE_PORT_BACKPRESSURE != 0,
        c.flags & VALE_PORT_MASK_OVERRIDE != 0,
        c.mac_limit
    )
}

/// The uids a switch is shared with: `share[..nshare]` (all 16 at most).
pub fn shared(c: &ValeSwitchConfig) -> &[u32] {
    &c.share[..(c.nshare as usize).min(c.share.len())]
}

/// `uids` as `A,B,C` (empty for none).
fn uid_list(uids: &[u32]) -> String {
    let mut out = String::new();
    for (i, uid) in uids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{uid}");
    }
    out
}

/// `--config SWITCH`: `SWITCH owner=UID share=UID,UID` (`share=` alone when the
/// switch is shared with nobody).
pub fn switch_config(name: &str, c: &ValeSwitchConfig) -> String {
    format!("{name} owner={} share={}\n", c.owner, uid_list(shared(c)))
}

/// `--config SWITCH --json`: `{"switch":"SWITCH","owner":UID,"share":[UID,...]}`.
pub fn switch_config_json(name: &str, c: &ValeSwitchConfig) -> String {
    format!(
        "{{\"switch\":{},\"owner\":{},\"share\":[{}]}}\n",
        json_string(name),
        c.owner,
        uid_list(shared(c))
    )
}

/// `s` as a JSON string literal, quotes included.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `--stats` without `--json`: one line per port, the name first, then every other
/// scalar member of the port's object as `key=value`, in valed's order. A member
/// that is an object (`"vhost_user":{...}` for a vhost-user port) gets a line of
/// its own after the port's, indented: `  vhost_user key=value ...`
/// (`acked_features` in hex).
///
/// # Errors
///
/// If `doc` is not valid JSON of the shape `{"ports":[{...}, ...]}`.
pub fn stats_table(doc: &str) -> Result<String, StatsError> {
    let root = Json::parse(doc)?;
    let ports = root
        .get("ports")
        .and_then(Json::as_array)
        .ok_or(StatsError::Shape("no \"ports\" array"))?;
    let mut out = String::new();
    for port in ports {
        let members = port
            .as_object()
            .ok_or(StatsError::Shape("a port is not an object"))?;
        let name = port.get("name").and_then(Json::as_str).unwrap_or("?");
        out.push_str(name);
        let mut groups = Vec::new();
        for (k, v) in members {
            if k == "name" {
                continue;
            }
            match v.as_object() {
                Some(inner) => groups.push((k, inner)),
                None => {
                    let _ = write!(out, " {k}={}", v.display_scalar());
                }
            }
        }
        out.push('\n');
        for (group, inner) in groups {
            let _ = write!(out, "  {group}");
            for (k, v) in inner {
                let _ = write!(out, " {k}={}", stat_value(k, v));
            }
            out.push('\n');
        }
    }
    // The switches' bridges, when valed sent them (all ports asked for).
    for sw in root.get("switches").and_then(Json::as_array).unwrap_or(&[]) {
        let Some(members) = sw.as_object() else {
            continue;
        };
        let name = sw.get("name").and_then(Json::as_str).unwrap_or("?");
        let _ = write!(out, "{name} bridge");
        for (k, v) in members.iter().filter(|(k, _)| k.as_str() != "name") {
            let _ = write!(out, " {k}={}", stat_value(k, v));
        }
        out.push('\n');
    }
    Ok(out)
}

/// A counter for the table: as valed wrote it, but feature bits in hex.
/// (`last_error_at`, seconds since the epoch, as UTC; strings with spaces
/// quoted.)
fn stat_value(key: &str, v: &Json) -> String {
    match v {
        Json::Number(n) if key == "acked_features" => match n.parse::<u64>() {
            Ok(bits) => format!("{bits:#x}"),
            Err(_) => n.clone(),
        },
        Json::Number(n) if key.ends_with("_at") => match n.parse::<u64>() {
            Ok(t) => utc(t),
            Err(_) => n.clone(),
        },
        Json::String(s) if s.contains([' ', '"', '=']) || s.is_empty() => json_string(s),
        _ => v.display_scalar().to_owned(),
    }
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (the civil calendar from
/// a day count, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `--stats --json`: valed's document unchanged, newline-terminated.
pub fn stats_json(doc: &str) -> String {
    let mut s = doc.to_owned();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmap_strings() {
        let l = NmreqValeList {
            nr_bridge_idx: 1,
            pad1: 0,
            nr_port_idx: 3,
        };
        assert_eq!(
            list_line("vale1:b", &l),
            "vale1:b bridge_idx 1 port_idx 3\n"
        );
        assert_eq!(vale_list(&l), "bridge_idx: 1\nport_idx:   3\n");
        let pi = NmreqPortInfoGet {
            nr_memsize: 34_603_008,
            nr_tx_slots: 1024,
            nr_rx_slots: 512,
            nr_tx_rings: 2,
            nr_rx_rings: 1,
            nr_mem_id: 5,
            ..Default::default()
        };
        assert_eq!(
            port_info(&pi),
            "memsize:    34603008\n\
             tx_slots:   1024\n\
             rx_slots:   512\n\
             tx_rings:   2\n\
             rx_rings    1\n\
             mem_id:     5\n"
        );
        let n = NmreqValeNewif {
            nr_tx_slots: 1024,
            nr_rx_slots: 1024,
            nr_tx_rings: 1,
            nr_rx_rings: 1,
            nr_mem_id: 4,
            pad1: 0,
        };
        assert_eq!(
            newif(&n),
            "tx_slots:   1024\n\
             rx_slots:   1024\n\
             tx_rings:   1\n\
             rx_ring:    1\n\
             mem_id:     4\n"
        );
        assert_eq!(port_index(7), "port_index: 7\n");
        assert_eq!(
            vhost_newif(&ValeVhostNewif::new("/run/vale/vm1.sock", false, 0).unwrap()),
            "socket:     /run/vale/vm1.sock\nmode:       server\nqueues:     1\n"
        );
        assert_eq!(
            vhost_newif(&ValeVhostNewif::new("/x", true, 4).unwrap()),
            "socket:     /x\nmode:       client\nqueues:     4\n"
        );
        assert_eq!(
            failed("attach", "vale0:eth9", &strerror(2)),
            "failed to attach vale0:eth9: No such file or directory\n"
        );
        assert_eq!(
            failed("enable polling on", "vale0:x", &strerror(95)),
            "failed to enable polling on vale0:x: Operation not supported\n"
        );
        assert_eq!(
            failed_list_all(&strerror(13)),
            "failed to list all: Permission denied\n"
        );
        assert_eq!(ignored_config("9"), "ignored config: 9\n");
        assert_eq!(
            invalid_mem_id("eth0"),
            "invalid format in '-m eth0' (missing 'netmap:'?)\n"
        );
        assert_eq!(
            mem_id_info_failed("vale0:x", "No such file or directory"),
            "cannot get info for 'vale0:x': No such file or directory\n"
        );
    }

    #[test]
    fn port_config_line_and_json() {
        let c = ValePortConfig {
            flags: VALE_PORT_BACKPRESSURE,
            mac_limit: 0,
            set: 0,
            pad: 0,
        };
        assert_eq!(
            port_config("vale0:vm1", &c),
            "vale0:vm1 backpressure=on port-mask=off mac-limit=0\n"
        );
        assert_eq!(
            port_config_json("vale0:vm1", &c),
            "{\"name\":\"vale0:vm1\",\"backpressure\":true,\"port_mask\":false,\"mac_limit\":0}\n"
        );
        let c = ValePortConfig {
            flags: VALE_PORT_MASK_OVERRIDE | 1 << 7,
            mac_limit: 64,
            set: 0,
            pad: 0,
        };
        assert_eq!(
            port_config("vale1:b", &c),
            "vale1:b backpressure=off port-mask=on mac-limit=64\n"
        );
        assert_eq!(
            port_config_json("vale1:b", &c),
            "{\"name\":\"vale1:b\",\"backpressure\":false,\"port_mask\":true,\"mac_limit\":64}\n"
        );
        // The JSON stays valid whatever the name.
        let j = port_config_json("v\"\\\n\u{1}é", &c);
        assert!(j.starts_with(r#"{"name":"v\"\\\n\u0001é","#), "{j}");
        let doc = Json::parse(&j).unwrap();
        assert_eq!(
            doc.get("name").and_then(Json::as_str),
            Some("v\"\\\n\u{1}é")
        );
    }

    #[test]
    fn switch_config_line_and_json() {
        let mut c = ValeSwitchConfig {
            owner: 1000,
            nshare: 2,
            ..ValeSwitchConfig::default()
        };
        c.share[..2].copy_from_slice(&[1001, 1002]);
        assert_eq!(
            switch_config("vale0", &c),
            "vale0 owner=1000 share=1001,1002\n"
        );
        assert_eq!(
            switch_config_json("vale0", &c),
            "{\"switch\":\"vale0\",\"owner\":1000,\"share\":[1001,1002]}\n"
        );
        // Nobody: share= empty, [] in JSON; entries past nshare are not shown.
        c.nshare = 0;
        assert_eq!(switch_config("vale12", &c), "vale12 owner=1000 share=\n");
        assert_eq!(
            switch_config_json("vale12", &c),
            "{\"switch\":\"vale12\",\"owner\":1000,\"share\":[]}\n"
        );
        // A count past the array shows the array, no more.
        c.nshare = 99;
        assert_eq!(shared(&c).len(), 16);
        c.owner = 0;
        c.nshare = 1;
        let j = switch_config_json("vale_x", &c);
        assert_eq!(j, "{\"switch\":\"vale_x\",\"owner\":0,\"share\":[1001]}\n");
        let doc = Json::parse(&j).unwrap();
        assert_eq!(doc.get("switch").and_then(Json::as_str), Some("vale_x"));
        assert_eq!(
            doc.get("share").and_then(Json::as_array).map(<[Json]>::len),
            Some(1)
        );
    }

    #[test]
    fn strerror_has_no_rust_suffix() {
        assert_eq!(strerror(22), "Invalid argument");
        assert_eq!(strerror(16), "Device or resource busy");
        assert_eq!(strerror(17), "File exists");
        assert!(!strerror(100_000).contains("os error"));
    }

    #[test]
    fn stats() {
        let doc = r#"{"ports":[
            {"name":"vale0:a","switch":"vale0","port_idx":0,"in_packets":10,"in_bytes":600,
             "out_packets":9,"out_bytes":540,"drop_dst_full":1,"drop_no_dst":0,"drop_runt":0,
             "drop_bad_chain":0,"drop_empty_frag":0,"drop_offload":0,"drop_bad_slot":0},
            {"name":"vale0:b","switch":"vale0","port_idx":1,"in_packets":0}
        ]}"#;
        assert_eq!(
            stats_table(doc).unwrap(),
            "vale0:a switch=vale0 port_idx=0 in_packets=10 in_bytes=600 out_packets=9 \
             out_bytes=540 drop_dst_full=1 drop_no_dst=0 drop_runt=0 drop_bad_chain=0 \
             drop_empty_frag=0 drop_offload=0 drop_bad_slot=0\n\
             vale0:b switch=vale0 port_idx=1 in_packets=0\n"
        );
        assert_eq!(stats_table(r#"{"ports":[]}"#).unwrap(), "");
        // A vhost-user port: its backend's counters on a line of their own.
        let doc = r#"{"ports":[
            {"name":"vale0:vm1","switch":"vale0","port_idx":0,"in_packets":4,
             "vhost_user":{"connected":true,"connections":2,"acked_features":5100273667,
                           "bad_chains":0,"no_rx_buffer":7,"rx_too_small":0},
             "drop_bad_slot":0},
            {"name":"vale0:v0","port_idx":1,"in_packets":0}
        ]}"#;
        assert_eq!(
            stats_table(doc).unwrap(),
            "vale0:vm1 switch=vale0 port_idx=0 in_packets=4 drop_bad_slot=0\n\
             \x20 vhost_user connected=true connections=2 acked_features=0x130000003 \
             bad_chains=0 no_rx_buffer=7 rx_too_small=0\n\
             vale0:v0 port_idx=1 in_packets=0\n"
        );
        // A port that failed: its last error quoted, its time in UTC.
        let doc = r#"{"ports":[{"name":"vale0:vm2","vhost_user":{"state":"waiting",
            "last_error":"vhost-user session ended: SET_FEATURES acks GUEST_UFO (0x400), never offered",
            "last_error_at":1796428800,"not_running":3}}]}"#;
        assert_eq!(
            stats_table(doc).unwrap(),
            "vale0:vm2\n\
             \x20 vhost_user state=waiting last_error=\"vhost-user session ended: SET_FEATURES \
             acks GUEST_UFO (0x400), never offered\" last_error_at=2026-12-05T00:00:00Z \
             not_running=3\n"
        );
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400 + 86_399), "2000-02-29T23:59:59Z");
        // Unknown members, nested or not, are shown, not refused.
        assert_eq!(
            stats_table(
                r#"{"ports":[{"name":"x","new":{"a":[1],"b":{},"acked_features":-1}}],"more":1}"#
            )
            .unwrap(),
            "x\n  new a=[...] b={...} acked_features=-1\n"
        );
        // The switches' bridges follow the ports, one line each.
        assert_eq!(
            stats_table(
                r#"{"ports":[{"name":"vale0:a"}],"switches":[{"name":"vale0","learned":3,"moves":1,"entries":2}]}"#
            )
            .unwrap(),
            "vale0:a\nvale0 bridge learned=3 moves=1 entries=2\n"
        );
        assert!(stats_table(r#"{"port":[]}"#).is_err());
        assert!(stats_table(r#"{"ports":[1]}"#).is_err());
        assert!(stats_table("{").is_err());
        assert_eq!(stats_json("{}"), "{}\n");
        assert_eq!(stats_json("{}\n"), "{}\n");
    }
}
