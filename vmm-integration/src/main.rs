//! `vale-vm`: probe the accelerator, boot a guest on valed's vhost-user
//! ports, run commands in a running guest, print a guest's VMM config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_integration::accel::{Accel, ACCEL_ENV};
use vmm_integration::config::{shell_line, CLOUD_HYPERVISOR};
use vmm_integration::qemu::QEMU;
use vmm_integration::{
    cloud_hypervisor_argv, libvirt_domain_xml, qemu_argv, AgentClient, Guest, GuestSpec, MacAddr,
    NicSpec, Vmm,
};

const USAGE: &str = "\
Usage:
  vale-vm probe [--device PATH]
      print KVM or TCG, and why
  vale-vm run --kernel FILE --initrd FILE [GUEST OPTIONS]
      boot a guest, wait for its agent, keep it running until Ctrl-C
  vale-vm exec --agent SOCK [--timeout SECS] -- COMMAND...
      run COMMAND in a running guest, print its output, exit with its code
      (125 if it could not be run)
  vale-vm print qemu|libvirt|cloud-hypervisor --kernel FILE --initrd FILE [GUEST OPTIONS]
      print the guest's QEMU line, libvirt domain XML or Cloud Hypervisor line

Guest options:
  --name NAME          guest name (default vm1)
  --memory MIB         memory in MiB, a shared memfd (default 512)
  --cpus N             vCPUs (default 1)
  --ip CIDR            adds vale.ip=CIDR to the kernel command line
  --append ARGS        more kernel command line
  --socket PATH        a NIC on valed's vhost-user socket PATH (repeatable);
  --mac MAC            ... its MAC (default 52:54:00:<hash of NAME>:<n>)
  --queues N           ... its queue pairs (default 1)
  --no-guest-tso       ... its device offers the guest no TSO/UFO/ECN on
                       receive: the switch segments large frames for it
  --no-mergeable-rx    ... its device offers no mergeable receive buffers
  --dir DIR            runtime directory (default $TMPDIR/vale-vm-NAME-PID)
  --accel auto|kvm|tcg accelerator (default auto: $VALE_ACCEL, else the probe)
  --vmm auto|qemu|cloud-hypervisor
                       VMM (default auto: Cloud Hypervisor with KVM if on PATH)
  --timeout SECS       how long run waits for the agent (default 300)
";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("probe") => probe(&args[1..]),
        Some("run") => run(&args[1..]),
        Some("exec") => return exec(&args[1..]),
        Some("print") => print(&args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("expected a subcommand\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vale-vm: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Takes the value of option `flag` from `it`.
fn value(it: &mut std::slice::Iter<'_, String>, flag: &str) -> Result<String, String> {
    it.next()
        .cloned()
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("{flag} {s:?}: not a number"))
}

fn probe(args: &[String]) -> Result<(), String> {
    let mut device = PathBuf::from(vmm_integration::accel::KVM_DEVICE);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => device = value(&mut it, a)?.into(),
            other => return Err(format!("probe: unknown option {other}")),
        }
    }
    match Accel::probe_device(&device) {
        Accel::Kvm => println!("KVM"),
        Accel::Tcg { why } => println!("TCG: {why}"),
    }
    Ok(())
}

/// The guest a `run` or `print` command line describes.
struct GuestArgs {
    spec: GuestSpec,
    vmm: Option<Vmm>,
    timeout: Duration,
}

fn guest_args(args: &[String]) -> Result<GuestArgs, String> {
    let mut name = "vm1".to_string();
    let (mut kernel, mut initrd) = (None, None);
    let (mut memory, mut cpus) = (512u32, 1u32);
    let mut append: Vec<String> = Vec::new();
    // Each --socket's NIC; its MAC's default needs the guest's name,
    // which may come after it.
    let mut nics: Vec<(NicSpec, Option<MacAddr>)> = Vec::new();
    let mut dir = None;
    let mut accel = "auto".to_string();
    let mut vmm = None;
    let mut timeout = Duration::from_secs(300);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let flag = a.as_str();
        let last_nic = |nics: &mut Vec<_>| -> Result<usize, String> {
            nics.len()
                .checked_sub(1)
                .ok_or_else(|| format!("{flag} applies to the --socket before it"))
        };
        match flag {
            "--name" => name = value(&mut it, flag)?,
            "--kernel" => kernel = Some(PathBuf::from(value(&mut it, flag)?)),
            "--initrd" => initrd = Some(PathBuf::from(value(&mut it, flag)?)),
            "--memory" => memory = number(&value(&mut it, flag)?, flag)?,
            "--cpus" => cpus = number(&value(&mut it, flag)?, flag)?,
            "--ip" => append.push(format!("vale.ip={}", value(&mut it, flag)?)),
            "--append" => append.push(value(&mut it, flag)?),
            "--socket" => nics.push((NicSpec::new(value(&mut it, flag)?, MacAddr::local(0)), None)),
            "--mac" => {
                let v = value(&mut it, flag)?;
                let i = last_nic(&mut nics)?;
                nics[i].1 = Some(v.parse().map_err(|e| format!("{e}"))?);
            }
            "--queues" => {
                let v = number(&value(&mut it, flag)?, flag)?;
                let i = last_nic(&mut nics)?;
                nics[i].0.queue_pairs = v;
            }
            "--no-guest-tso" => {
                let i = last_nic(&mut nics)?;
                nics[i].0.guest_tso = false;
            }
            "--no-mergeable-rx" => {
                let i = last_nic(&mut nics)?;
                nics[i].0.mergeable_rx = false;
            }
            "--dir" => dir = Some(PathBuf::from(value(&mut it, flag)?)),
            "--accel" => accel = value(&mut it, flag)?,
            "--vmm" => {
                vmm = match value(&mut it, flag)?.as_str() {
                    "auto" => None,
                    "qemu" => Some(Vmm::Qemu),
                    "cloud-hypervisor" => Some(Vmm::CloudHypervisor),
                    v => {
                        return Err(format!(
                            "--vmm {v:?}: expected auto, qemu or cloud-hypervisor"
                        ))
                    }
                }
            }
            "--timeout" => timeout = Duration::from_secs(number(&value(&mut it, flag)?, flag)?),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    let kernel = kernel.ok_or("--kernel is required")?;
    let initrd = initrd.ok_or("--initrd is required")?;
    let accel = match accel.as_str() {
        "auto" => Accel::from_env_or_probe(),
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg {
            why: "--accel tcg".to_string(),
        },
        v => {
            return Err(format!(
                "--accel {v:?}: expected auto, kvm or tcg ({ACCEL_ENV} too)"
            ))
        }
    };
    let mut spec = GuestSpec::new(name, kernel, initrd)
        .memory_mib(memory)
        .cpus(cpus)
        .accel(accel);
    for extra in &append {
        spec = spec.append(extra);
    }
    for (i, (mut nic, mac)) in nics.into_iter().enumerate() {
        nic.mac = mac.unwrap_or(MacAddr::for_guest(&spec.name, i as u8));
        spec = spec.nic(nic);
    }
    if let Some(d) = dir {
        spec = spec.dir(d);
    }
    spec.validate().map_err(|e| e.to_string())?;
    Ok(GuestArgs { spec, vmm, timeout })
}

fn run(args: &[String]) -> Result<(), String> {
    let g = guest_args(args)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    let vmm = g.vmm.unwrap_or_else(|| Vmm::choose(&g.spec.accel));
    let mut guest = Guest::start_with(&g.spec, vmm).map_err(|e| e.to_string())?;
    // Ctrl-C is honoured while booting too.
    let ready = guest
        .wait_ready_while(g.timeout, || !stop.load(Ordering::Relaxed))
        .map_err(|e| e.to_string())?;
    if !ready {
        eprintln!("{}: stopping", guest.name());
        return guest
            .quit(Duration::from_secs(5))
            .map_err(|e| e.to_string());
    }
    // One client at a time: leave the agent to `vale-vm exec`.
    guest.disconnect_agent();
    println!(
        "{}: ready (pid {}, {}, {})\n  agent:   vale-vm exec --agent {} -- CMD\n  console: {}",
        guest.name(),
        guest.pid(),
        guest.vmm().program(),
        g.spec.accel,
        guest.agent_socket().display(),
        guest.console_path().display()
    );
    while !stop.load(Ordering::Relaxed) {
        if let Some(status) = guest.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "{}: {} exited ({status}); console tail:\n{}",
                guest.name(),
                guest.vmm().program(),
                guest.console_tail(2000)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{}: stopping", guest.name());
    guest
        .quit(Duration::from_secs(5))
        .map_err(|e| e.to_string())
}

fn exec(args: &[String]) -> ExitCode {
    let mut agent = None;
    let mut timeout = Duration::from_secs(60);
    let mut it = args.iter();
    let mut cmd = Vec::new();
    let parsed: Result<(), String> = (|| {
        while let Some(a) = it.next() {
            match a.as_str() {
                "--agent" => agent = Some(PathBuf::from(value(&mut it, a)?)),
                "--timeout" => timeout = Duration::from_secs(number(&value(&mut it, a)?, a)?),
                "--" => {
                    cmd.extend(it.by_ref().cloned());
                    break;
                }
                other => return Err(format!("exec: unknown option {other} (command after --)")),
            }
        }
        Ok(())
    })();
    let result = parsed.and_then(|()| {
        let agent = agent.ok_or("exec: --agent SOCK is required")?;
        if cmd.is_empty() {
            return Err("exec: no command after --".to_string());
        }
        let line = cmd.join(" ");
        let mut c = AgentClient::connect_timeout(&agent, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        c.run(&line, timeout).map_err(|e| e.to_string())
    });
    match result {
        Ok(out) => {
            print!("{}", out.stdout);
            let code = out.code & 0xff;
            ExitCode::from(if code == 0 && out.code != 0 {
                1
            } else {
                code as u8
            })
        }
        Err(e) => {
            eprintln!("vale-vm: {e}");
            ExitCode::from(125)
        }
    }
}

fn print(args: &[String]) -> Result<(), String> {
    let what = args
        .first()
        .ok_or("print: qemu, libvirt or cloud-hypervisor?")?;
    let g = guest_args(&args[1..])?;
    match what.as_str() {
        "qemu" => println!("{}", shell_line(QEMU, &qemu_argv(&g.spec))),
        "libvirt" => print!("{}", libvirt_domain_xml(&g.spec)),
        "cloud-hypervisor" => println!(
            "{}",
            shell_line(CLOUD_HYPERVISOR, &cloud_hypervisor_argv(&g.spec))
        ),
        other => {
            return Err(format!(
                "print {other:?}: expected qemu, libvirt or cloud-hypervisor"
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn nic_options_apply_to_the_socket_before_them() {
        let g = guest_args(&args(
            "--kernel k --initrd i --accel tcg \
             --socket /a.sock --no-mergeable-rx \
             --socket /b.sock --queues 2 --no-guest-tso --mac 02:00:00:00:00:0b \
             --name vm7",
        ))
        .unwrap();
        let [a, b] = &g.spec.nics[..] else {
            panic!("{:?}", g.spec.nics)
        };
        assert_eq!(a.socket, PathBuf::from("/a.sock"));
        assert!(!a.mergeable_rx && a.guest_tso);
        assert_eq!(a.queue_pairs, 1);
        // The default MAC follows the guest's name, given after the NIC.
        assert_eq!(a.mac, MacAddr::for_guest("vm7", 0));
        assert!(b.mergeable_rx && !b.guest_tso);
        assert_eq!(b.queue_pairs, 2);
        assert_eq!(b.mac.to_string(), "02:00:00:00:00:0b");
        let line = qemu_argv(&g.spec).join(" ");
        assert!(line.contains(",mrg_rxbuf=off"), "{line}");
        assert!(line.contains(",guest_tso4=off"), "{line}");
    }

    #[test]
    fn nic_options_need_a_socket() {
        for flag in ["--no-guest-tso", "--no-mergeable-rx", "--queues 2"] {
            let e = guest_args(&args(&format!("--kernel k --initrd i --accel tcg {flag}")))
                .err()
                .unwrap();
            assert!(
                e.contains("applies to the --socket before it"),
                "{flag}: {e}"
            );
        }
    }
}
