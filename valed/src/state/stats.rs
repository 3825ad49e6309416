//! Counters out: `vale-ctl --stats` (JSON through serde) and
//! `valed --metrics` samples.

use super::*;

/// `vale-ctl --stats --json`: `{"ports":[...]}`.
#[derive(Debug, Serialize)]
struct StatsDoc<'a> {
    ports: Vec<PortStatsDoc<'a>>,
    /// The switches' learning bridges (all ports asked for only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    switches: Vec<SwitchStatsDoc<'a>>,
}

/// A switch's learning bridge: stations learned, moved between ports (a
/// migrated VM's announcement moves its MAC), refused, aged, and live.
#[derive(Debug, Serialize)]
struct SwitchStatsDoc<'a> {
    name: &'a str,
    learned: u64,
    moves: u64,
    table_full: u64,
    port_limit: u64,
    aged: u64,
    entries: u64,
}

/// One port's counters; the drop counters by reason follow
/// `soft_offload`, a VM port's counters come last as `vhost_user`.
#[derive(Debug, Serialize)]
struct PortStatsDoc<'a> {
    name: String,
    switch: &'a str,
    port_idx: PortId,
    in_packets: u64,
    in_bytes: u64,
    out_packets: u64,
    out_bytes: u64,
    soft_offload: u64,
    #[serde(flatten)]
    drops: Drops,
    #[serde(skip_serializing_if = "Option::is_none")]
    vhost_user: Option<VhostStatsDoc>,
}

/// A port's drops as `"drop_<reason>": n`, in [`DropReason::ALL`] order.
#[derive(Debug)]
struct Drops(vale::PortStats);

impl Serialize for Drops {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(DropReason::ALL.len()))?;
        for r in DropReason::ALL {
            m.serialize_entry(r.name(), &self.0.drop(r))?;
        }
        m.end()
    }
}

/// A VM port's vhost-user counters (`null` for no error yet).
#[derive(Debug, Serialize)]
struct VhostStatsDoc {
    state: &'static str,
    connected: bool,
    connections: u64,
    queues_running: usize,
    acked_features: u64,
    last_error: Option<String>,
    last_error_at: Option<u64>,
    bad_chains: u64,
    no_rx_buffer: u64,
    rx_too_small: u64,
    not_running: u64,
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Registry {
    /// Counters of vhost-user port `name`, for the stats request.
    fn vhost_stats(&self, name: &str) -> Option<VhostStatsDoc> {
        let s = self.vhost.get(name)?.port.stats();
        Some(VhostStatsDoc {
            state: s.state.as_str(),
            connected: s.connected,
            connections: s.connections,
            queues_running: s.queues_running,
            acked_features: s.acked_features,
            last_error: s.last_error,
            last_error_at: s.last_error_at,
            bad_chains: s.bad_chains,
            no_rx_buffer: s.no_rx_buffer,
            rx_too_small: s.rx_too_small,
            not_running: s.not_running,
        })
    }

    /// Per-port counters as JSON, for `vale-ctl --stats`.
    pub(super) fn stats(&mut self, req: &Request, name: &str) -> Answer {
        let mut doc = StatsDoc {
            ports: Vec::new(),
            switches: Vec::new(),
        };
        for (swname, s) in &self.switches {
            if name.is_empty() {
                let b = s.sw.with_lookup_mut(|l| vale::Lookup::stats(l));
                doc.switches.push(SwitchStatsDoc {
                    name: swname,
                    learned: b.learned,
                    moves: b.moves,
                    table_full: b.table_full,
                    port_limit: b.port_limit,
                    aged: b.aged,
                    entries: b.entries,
                });
            }
            for (pid, full) in s.sw.ports() {
                if !name.is_empty() && name != full {
                    continue;
                }
                let Some(st) = s.sw.stats(pid) else { continue };
                let short = full.split_once(':').map_or("", |x| x.1);
                let vhost_user = self.vhost_stats(short);
                doc.ports.push(PortStatsDoc {
                    switch: swname,
                    port_idx: pid,
                    in_packets: st.in_packets,
                    in_bytes: st.in_bytes,
                    out_packets: st.out_packets,
                    out_bytes: st.out_bytes,
                    soft_offload: st.soft_offload,
                    drops: Drops(st),
                    vhost_user,
                    name: full,
                });
            }
        }
        if !name.is_empty() && doc.ports.is_empty() {
            return err(req, libc::ENXIO);
        }
        let Ok(out) = serde_json::to_vec(&doc) else {
            return err(req, libc::EIO);
        };
        let mut r = req.clone();
        r.body = out;
        (0, r, Vec::new())
    }

    /// The counters of port `name` (`valeX:Y`) as Prometheus samples, for
    /// `valed --metrics`.
    pub(super) fn metrics(&mut self, req: &Request, name: &str) -> Answer {
        let mut out = String::new();
        for (swname, s) in &self.switches {
            for (pid, full) in s.sw.ports() {
                if name != full {
                    continue;
                }
                let Some(st) = s.sw.stats(pid) else { continue };
                let short = full.split_once(':').map_or("", |x| x.1);
                let l = format!("switch=\"{}\",port=\"{}\"", label(swname), label(short));
                for (f, v) in [
                    ("vale_port_in_packets_total", st.in_packets),
                    ("vale_port_in_bytes_total", st.in_bytes),
                    ("vale_port_out_packets_total", st.out_packets),
                    ("vale_port_out_bytes_total", st.out_bytes),
                    ("vale_port_soft_offload_total", st.soft_offload),
                ] {
                    out.push_str(&format!("{f}{{{l}}} {v}\n"));
                }
                for r in DropReason::ALL {
                    let reason = r.name().trim_start_matches("drop_");
                    out.push_str(&format!(
                        "vale_port_drops_total{{{l},reason=\"{reason}\"}} {}\n",
                        st.drop(r)
                    ));
                }
                if let Some(v) = self.vhost.get(short) {
                    let p = v.port.stats();
                    for (f, v) in [
                        ("vale_vhost_connected", u64::from(p.connected)),
                        (
                            "vale_vhost_running",
                            u64::from(p.state == backend::PortState::Running),
                        ),
                        ("vale_vhost_queues_running", p.queues_running as u64),
                        ("vale_vhost_connections_total", p.connections),
                        ("vale_vhost_bad_chains_total", p.bad_chains),
                        (
                            "vale_vhost_last_error_timestamp_seconds",
                            p.last_error_at.unwrap_or(0),
                        ),
                    ] {
                        out.push_str(&format!("{f}{{{l}}} {v}\n"));
                    }
                    for (reason, v) in [
                        ("no_rx_buffer", p.no_rx_buffer),
                        ("rx_too_small", p.rx_too_small),
                        ("not_running", p.not_running),
                    ] {
                        out.push_str(&format!(
                            "vale_vhost_rx_drops_total{{{l},reason=\"{reason}\"}} {v}\n"
                        ));
                    }
                }
            }
        }
        if out.is_empty() {
            return err(req, libc::ENXIO);
        }
        let mut r = req.clone();
        r.body = out.into_bytes();
        (0, r, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stats document as serde writes it: the fields in the order
    /// `vale-ctl` and the tests know, and any name or error text (quotes,
    /// backslashes, control characters) back unchanged through a parser.
    #[test]
    fn stats_document_keeps_its_shape_and_escapes_everything() {
        let mut st = vale::PortStats {
            in_packets: 7,
            ..Default::default()
        };
        st.drops[DropReason::NoDst as usize] = 2;
        let name = "vale0:a\"b\\c\u{1}\u{1f}";
        let error = "SET_FEATURES \"x\"\\\n\t\u{7}";
        let doc = StatsDoc {
            ports: vec![PortStatsDoc {
                name: name.into(),
                switch: "vale0",
                port_idx: 3,
                in_packets: st.in_packets,
                in_bytes: 0,
                out_packets: 0,
                out_bytes: 0,
                soft_offload: 0,
                drops: Drops(st),
                vhost_user: Some(VhostStatsDoc {
                    state: "waiting",
                    connected: false,
                    connections: 1,
                    queues_running: 0,
                    acked_features: 0,
                    last_error: Some(error.into()),
                    last_error_at: None,
                    bad_chains: 0,
                    no_rx_buffer: 0,
                    rx_too_small: 0,
                    not_running: 0,
                }),
            }],
            switches: Vec::new(),
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert!(!text.contains('\n') && !text.contains('\u{1}'), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let p = &v["ports"][0];
        assert_eq!(p["name"], name);
        assert_eq!(p["vhost_user"]["last_error"], error);
        assert_eq!(p["vhost_user"]["last_error_at"], serde_json::Value::Null);
        assert_eq!(
            (p["port_idx"].as_u64(), p["in_packets"].as_u64()),
            (Some(3), Some(7))
        );
        assert_eq!(p["drop_no_dst"].as_u64(), Some(2));
        let mut keys = vec!["name", "switch", "port_idx", "in_packets", "in_bytes"];
        keys.extend(["out_packets", "out_bytes", "soft_offload"]);
        keys.extend(DropReason::ALL.map(|r| r.name()));
        keys.push("vhost_user");
        let at: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        // No VM port: no vhost_user key.
        let doc = StatsDoc {
            ports: vec![PortStatsDoc {
                vhost_user: None,
                ..doc.ports.into_iter().next().unwrap()
            }],
            switches: vec![SwitchStatsDoc {
                name: "vale0",
                learned: 1,
                moves: 1,
                table_full: 0,
                port_limit: 0,
                aged: 0,
                entries: 1,
            }],
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert!(!text.contains("vhost_user"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["switches"][0]["moves"].as_u64(), Some(1));
    }
}
