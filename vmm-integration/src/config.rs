//! The same guest for libvirt (domain XML from `configs/libvirt-*.xml`) and
//! for Cloud Hypervisor (a command line; `configs/cloud-hypervisor.sh` is a
//! documented example).

use crate::spec::GuestSpec;

/// The domain template.
pub const LIBVIRT_DOMAIN_TEMPLATE: &str = include_str!("../configs/libvirt-domain.xml");
/// One `<interface type='vhostuser'>`, repeated per NIC.
pub const LIBVIRT_INTERFACE_TEMPLATE: &str = include_str!("../configs/libvirt-interface.xml");
/// The `<qemu:override>` block (TCG only).
pub const LIBVIRT_OVERRIDE_TEMPLATE: &str = include_str!("../configs/libvirt-override.xml");
/// One overridden device in it, repeated per NIC.
pub const LIBVIRT_OVERRIDE_DEVICE_TEMPLATE: &str =
    include_str!("../configs/libvirt-override-device.xml");

/// The Cloud Hypervisor binary.
pub const CLOUD_HYPERVISOR: &str = "cloud-hypervisor";

/// Escapes text for an XML attribute or element.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Replaces each `@KEY@` in `template` by its value, in one pass (a value
/// is never scanned for placeholders). Values are inserted as given: escape
/// them first where needed. Text between at-signs that is not a key stays.
fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let value = after.find('@').and_then(|end| {
            let key = &after[..end];
            vars.iter().find(|(k, _)| *k == key).map(|(_, v)| (v, end))
        });
        match value {
            Some((v, end)) => {
                out.push_str(v);
                rest = &after[end + 1..];
            }
            None => {
                out.push('@');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A libvirt domain for `spec`: memfd shared memory, one `vhostuser`
/// interface per NIC (QEMU as the socket's client, reconnecting), the
/// kernel console to `console.log` and the agent channel on `agent.sock` in
/// the spec's directory. Under TCG, `type='qemu'`, `<cpu mode='maximum'/>`
/// and a `<qemu:override>` setting `vectors=0` on each NIC.
pub fn libvirt_domain_xml(spec: &GuestSpec) -> String {
    let esc = |p: &std::path::Path| xml_escape(&p.to_string_lossy());
    let interfaces: String = spec
        .nics
        .iter()
        .enumerate()
        .map(|(i, nic)| {
            // The same device options as QEMU's command line gets
            // (`qemu::qemu_argv`), as libvirt spells them.
            let mut options = String::new();
            if !nic.mergeable_rx {
                options.push_str("<host mrg_rxbuf='off'/>");
            }
            if !nic.guest_tso {
                options.push_str("<guest tso4='off' tso6='off' ecn='off' ufo='off'/>");
            }
            fill(
                LIBVIRT_INTERFACE_TEMPLATE,
                &[
                    ("MAC", nic.mac.to_string()),
                    ("SOCKET", esc(&nic.socket)),
                    ("QUEUES", nic.queue_pairs.to_string()),
                    ("INDEX", i.to_string()),
                    ("DRIVER_OPTIONS", options),
                ],
            )
        })
        .collect();
    let overrides = if spec.accel.is_kvm() || spec.nics.is_empty() {
        String::new()
    } else {
        let devices: String = (0..spec.nics.len())
            .map(|i| {
                fill(
                    LIBVIRT_OVERRIDE_DEVICE_TEMPLATE,
                    &[("INDEX", i.to_string())],
                )
            })
            .collect();
        fill(
            LIBVIRT_OVERRIDE_TEMPLATE,
            &[("DEVICES", devices.trim_end().to_string())],
        )
    };
    let cpu_mode = if spec.accel.is_kvm() {
        "host-passthrough"
    } else {
        "maximum"
    };
    fill(
        LIBVIRT_DOMAIN_TEMPLATE,
        &[
            ("DOMAIN_TYPE", spec.accel.libvirt_domain_type().to_string()),
            ("NAME", xml_escape(&spec.name)),
            ("MEMORY_MIB", spec.memory_mib.to_string()),
            ("CPUS", spec.cpus.to_string()),
            ("KERNEL", esc(&spec.kernel)),
            ("INITRD", esc(&spec.initrd)),
            ("CMDLINE", xml_escape(&spec.cmdline())),
            ("CPU_MODE", cpu_mode.to_string()),
            ("INTERFACES", interfaces.trim_end().to_string()),
            ("CONSOLE_LOG", esc(&spec.console_log())),
            ("AGENT_SOCKET", esc(&spec.agent_socket())),
            ("QEMU_OVERRIDE", overrides.trim_end().to_string()),
        ],
    )
}

/// Cloud Hypervisor's arguments (after the program name) for `spec`. Only
/// for real KVM (Cloud Hypervisor has no emulator). The agent channel is a
/// virtio-console on `agent.sock` (the guest's `/dev/hvc0`); `num_queues`
/// counts RX and TX queues, so it is twice the queue pairs.
pub fn cloud_hypervisor_argv(spec: &GuestSpec) -> Vec<String> {
    let p = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let mut argv = vec![
        "--kernel".to_string(),
        spec.kernel.to_string_lossy().into_owned(),
        "--initramfs".to_string(),
        spec.initrd.to_string_lossy().into_owned(),
        "--cmdline".to_string(),
        spec.cmdline(),
        "--cpus".to_string(),
        format!("boot={}", spec.cpus),
        "--memory".to_string(),
        format!("size={}M,shared=on", spec.memory_mib),
    ];
    if !spec.nics.is_empty() {
        argv.push("--net".to_string());
        for nic in &spec.nics {
            argv.push(format!(
                "vhost_user=true,socket={},vhost_mode=client,num_queues={},queue_size=256,mac={}",
                nic.socket.to_string_lossy(),
                2 * nic.queue_pairs,
                nic.mac
            ));
        }
    }
    argv.extend([
        "--serial".to_string(),
        format!("file={}", p(spec.console_log())),
        "--console".to_string(),
        format!("socket={}", p(spec.agent_socket())),
        "--api-socket".to_string(),
        format!("path={}", p(spec.dir.join("api.sock"))),
    ]);
    argv
}

/// Quotes one argument for a POSIX shell (for logs and `vale-vm print`).
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `program` and `argv` as one line of shell words.
pub fn shell_words(program: &str, argv: &[String]) -> String {
    let mut out = program.to_string();
    for a in argv {
        out.push(' ');
        out.push_str(&shell_quote(a));
    }
    out
}

/// `program` and `argv` as a shell command, each option on its own line.
pub fn shell_line(program: &str, argv: &[String]) -> String {
    let mut out = program.to_string();
    for a in argv {
        if a.starts_with('-') {
            out.push_str(" \\\n    ");
        } else {
            out.push(' ');
        }
        out.push_str(&shell_quote(a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::Accel;
    use crate::spec::{MacAddr, NicSpec};

    fn spec(accel: Accel) -> GuestSpec {
        GuestSpec::new("vm1", "/img/vmlinuz", "/img/initramfs.cpio.gz")
            .memory_mib(768)
            .cpus(2)
            .append("vale.ip=10.0.0.1/24 a&b")
            .nic(NicSpec::new("/run/vale/vm1.sock", MacAddr::local(1)))
            .nic(
                NicSpec::new("/run/vale/vm1b.sock", MacAddr::local(2))
                    .queue_pairs(4)
                    .no_mergeable_rx(),
            )
            .nic(NicSpec::new("/run/vale/vm1c.sock", MacAddr::local(3)).no_guest_tso())
            .accel(accel)
            .dir("/tmp/vm1")
    }

    fn tcg() -> Accel {
        Accel::Tcg { why: "test".into() }
    }

    #[test]
    fn libvirt_xml_parses_and_has_the_lines() {
        let xml = libvirt_domain_xml(&spec(tcg()));
        assert!(!xml.contains('@'), "unfilled placeholder in\n{xml}");
        let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "domain");
        assert_eq!(root.attribute("type"), Some("qemu"));
        let find = |name: &'static str| doc.descendants().filter(move |n| n.has_tag_name(name));
        let source = find("source")
            .find(|n| n.attribute("type") == Some("memfd"))
            .expect("memfd source");
        assert_eq!(source.parent().unwrap().tag_name().name(), "memoryBacking");
        assert_eq!(
            find("access").next().unwrap().attribute("mode"),
            Some("shared")
        );
        let ifaces: Vec<_> = find("interface").collect();
        assert_eq!(ifaces.len(), 3);
        for (i, (iface, (sock, q))) in ifaces
            .iter()
            .zip([
                ("/run/vale/vm1.sock", "1"),
                ("/run/vale/vm1b.sock", "4"),
                ("/run/vale/vm1c.sock", "1"),
            ])
            .enumerate()
        {
            assert_eq!(iface.attribute("type"), Some("vhostuser"));
            let child = |n: &str| iface.children().find(|c| c.has_tag_name(n)).unwrap();
            let src = child("source");
            assert_eq!(src.attribute("type"), Some("unix"));
            assert_eq!(src.attribute("path"), Some(sock));
            assert_eq!(src.attribute("mode"), Some("client"));
            assert_eq!(child("model").attribute("type"), Some("virtio"));
            let driver = child("driver");
            assert_eq!(driver.attribute("queues"), Some(q));
            // The second NIC's device offers no mergeable buffers, the
            // third's no guest TSO; the first keeps QEMU's defaults.
            let opt = |tag: &str, attr: &str| {
                driver
                    .children()
                    .find(|c| c.has_tag_name(tag))
                    .and_then(|c| c.attribute(attr))
            };
            assert_eq!(opt("host", "mrg_rxbuf"), (i == 1).then_some("off"));
            for a in ["tso4", "tso6", "ecn", "ufo"] {
                assert_eq!(opt("guest", a), (i == 2).then_some("off"), "{a}");
            }
            assert_eq!(
                child("mac").attribute("address"),
                Some(MacAddr::local(i as u16 + 1).to_string().as_str())
            );
        }
        let cmdline = find("cmdline").next().unwrap().text().unwrap();
        assert_eq!(cmdline, "console=ttyS0 panic=-1 vale.ip=10.0.0.1/24 a&b");
        assert_eq!(
            find("cpu").next().unwrap().attribute("mode"),
            Some("maximum")
        );
        let channel = find("channel").next().unwrap();
        let target = channel
            .children()
            .find(|c| c.has_tag_name("target"))
            .unwrap();
        assert_eq!(target.attribute("name"), Some("vale.agent"));
        // vectors=0 for every NIC under TCG.
        let props: Vec<_> = find("property").collect();
        assert_eq!(props.len(), 3);
        assert!(props.iter().all(|p| p.attribute("value") == Some("0")));
    }

    #[test]
    fn libvirt_xml_under_kvm() {
        let xml = libvirt_domain_xml(&spec(Accel::Kvm));
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(doc.root_element().attribute("type"), Some("kvm"));
        assert!(!doc.descendants().any(|n| n.has_tag_name("override")));
        assert!(xml.contains("<cpu mode='host-passthrough'/>"));
    }

    #[test]
    fn cloud_hypervisor_line() {
        let argv = cloud_hypervisor_argv(&spec(Accel::Kvm));
        let line = argv.join(" ");
        assert!(line.contains("--memory size=768M,shared=on"), "{line}");
        assert!(line.contains(
            "--net vhost_user=true,socket=/run/vale/vm1.sock,vhost_mode=client,num_queues=2,\
             queue_size=256,mac=52:54:00:56:00:01 vhost_user=true,socket=/run/vale/vm1b.sock,\
             vhost_mode=client,num_queues=8,"
        ));
        assert!(line.contains("--console socket=/tmp/vm1/agent.sock"));
        assert!(line.contains("--serial file=/tmp/vm1/console.log"));
        let i = argv.iter().position(|a| a == "--cmdline").unwrap();
        assert_eq!(
            argv[i + 1],
            "console=ttyS0 panic=-1 vale.ip=10.0.0.1/24 a&b"
        );
    }

    #[test]
    fn fill_is_one_pass() {
        let vars = [("A", "@B@".to_string()), ("B", "b".to_string())];
        assert_eq!(fill("x@A@y@B@z@C@ me@", &vars), "x@B@ybz@C@ me@");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc=1,2"), "abc=1,2");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
