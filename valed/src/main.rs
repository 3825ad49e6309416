//! valed: the VALE switch daemon. See valed(8).

use valed::{fwd, metrics, server, signal, state, vhost};

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

struct Args {
    socket: Option<PathBuf>,
    threads: usize,
    cpus: Vec<usize>,
    busy: Duration,
    log: String,
    huge_pages: bool,
    mem_ports: u32,
    vhost: Vec<vhost::VhostSpec>,
    config: Option<PathBuf>,
    vhost_inline: bool,
    metrics: Option<metrics::MetricsAddr>,
    vhost_dir: Option<PathBuf>,
    quotas: state::Quotas,
    admode: nic::AdMode,
    vm_socket_group: Option<u32>,
}

const USAGE: &str =
    "usage: valed [--socket PATH] [--threads N] [--cpus LIST] [--busy-poll USECS] [--log LEVEL]
             [--hugepages] [--mem-ports N] [--vhost-inline] [--config FILE] [--metrics HOST:PORT|unix:PATH] [--vhost-dir DIR]
             [--quota-mem MIB] [--quota-vhost N] [--quota-ports N] [--quota-switches N] [--quota-conns N]
             [--admode best|native|generic] [--vm-socket-group GROUP]
             [--vhost-user NAME=PATH[,client][,queues=N][,batch=N][,attach=valeX]]...";

fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut v = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("--cpus: bad entry {part:?} (want N or N-M, comma separated)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b >= 1024 {
                    return Err(bad());
                }
                v.extend(a..=b);
            }
            None => v.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(v)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        socket: None,
        threads: 1,
        cpus: Vec::new(),
        busy: Duration::from_micros(50),
        log: "info".into(),
        huge_pages: false,
        mem_ports: 4,
        vhost: Vec::new(),
        config: None,
        vhost_inline: false,
        metrics: None,
        vhost_dir: None,
        quotas: state::Quotas::default(),
        vm_socket_group: None,
        admode: nic::AdMode::Best,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--socket" => a.socket = Some(PathBuf::from(val("--socket")?)),
            "--threads" => {
                let v = val("--threads")?;
                a.threads = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or(format!("--threads {v}: want 1..=256"))?;
            }
            "--cpus" => a.cpus = parse_cpus(&val("--cpus")?)?,
            "--busy-poll" => {
                let v = val("--busy-poll")?;
                a.busy = Duration::from_micros(
                    v.parse()
                        .map_err(|_| format!("--busy-poll {v}: want microseconds"))?,
                );
            }
            "--log" => a.log = val("--log")?,
            "--hugepages" => a.huge_pages = true,
            "--mem-ports" => {
                let v = val("--mem-ports")?;
                a.mem_ports = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or(format!(
                        "--mem-ports {v}: want 1..=64 ports per shared region"
                    ))?;
            }
            "--vhost-inline" => a.vhost_inline = true,
            "--vhost-user" => a
                .vhost
                .push(vhost::VhostSpec::parse_arg(&val("--vhost-user")?)?),
            "--config" => a.config = Some(PathBuf::from(val("--config")?)),
            "--vhost-dir" => a.vhost_dir = Some(PathBuf::from(val("--vhost-dir")?)),
            "--quota-mem" => {
                let v = val("--quota-mem")?;
                let mib: u64 = v
                    .parse()
                    .ok()
                    .filter(|&m| m >= 1)
                    .ok_or(format!("--quota-mem {v}: want MiB, at least 1"))?;
                a.quotas.mem_bytes = mib.saturating_mul(1 << 20);
            }
            "--quota-vhost" => {
                let v = val("--quota-vhost")?;
                a.quotas.vhost_ports = v
                    .parse()
                    .map_err(|_| format!("--quota-vhost {v}: want a number of ports"))?;
            }
            "--quota-ports" => {
                let v = val("--quota-ports")?;
                a.quotas.ports = v
                    .parse()
                    .map_err(|_| format!("--quota-ports {v}: want a number of ports"))?;
            }
            "--quota-switches" => {
                let v = val("--quota-switches")?;
                a.quotas.switches = v
                    .parse()
                    .map_err(|_| format!("--quota-switches {v}: want a number of switches"))?;
            }
            "--quota-conns" => {
                let v = val("--quota-conns")?;
                a.quotas.connections = v.parse().ok().filter(|&n| n >= 1).ok_or(format!(
                    "--quota-conns {v}: want a number of connections, at least 1"
                ))?;
            }
            "--admode" => a.admode = val("--admode")?.parse()?,
            "--vm-socket-group" => {
                let v = val("--vm-socket-group")?;
                a.vm_socket_group = Some(
                    netmap::sys::group_id(&v).map_err(|e| format!("--vm-socket-group {v}: {e}"))?,
                );
            }
            "--metrics" => a.metrics = Some(metrics::MetricsAddr::parse(&val("--metrics")?)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("valed: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs redirected to files or journald
        // stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    #[cfg(feature = "ab")]
    if let Some(out) = std::env::var_os("VALE_AB") {
        ab_flipper(out.into());
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A/B builds (feature `ab`): flips `vale::ab`'s variant every
/// `vale::ab::FLIP` and writes "FRAMES_A FRAMES_B" to `out` every second,
/// for scripts/bench-ab.sh to read after the run.
#[cfg(feature = "ab")]
fn ab_flipper(out: std::path::PathBuf) {
    tracing::warn!(file = %out.display(), "A/B build: two variants flipped every {:?}", vale::ab::FLIP);
    let per_second = (1000 / vale::ab::FLIP.as_millis().max(1)) as u64;
    std::thread::spawn(move || {
        // An even number of flips between writes: both variants have
        // run equally long whenever the file is written.
        let per_write = (per_second + per_second % 2).max(2);
        for n in 1u64.. {
            std::thread::sleep(vale::ab::FLIP);
            vale::ab::flip();
            if n % per_write == 0 {
                let (a, b) = vale::ab::frames();
                let (busy_a, busy_b) = vale::ab::busy();
                // Whole or not at all: the script reads it after valed
                // was killed, possibly mid-write.
                let tmp = out.with_extension("tmp");
                let w = std::fs::write(&tmp, format!("{a} {b}\n{busy_a:.4} {busy_b:.4}\n"))
                    .and_then(|()| std::fs::rename(&tmp, &out));
                if let Err(e) = w {
                    tracing::warn!(file = %out.display(), "A/B counts not written: {e}");
                }
            }
        }
    });
}

/// Creates the vhost directory (mode 0755: tenants' VMMs need to search
/// it; only valed creates entries). An existing one must be a directory
/// owned by root, not a symlink, writable by nobody else.
fn make_vhost_dir(d: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let made = match std::fs::symlink_metadata(d) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => make_dirs("--vhost-dir", d),
        Err(e) => Err(e),
        Ok(md) => {
            let me = netmap::sys::euid();
            if !md.is_dir() || md.uid() != me || md.mode() & 0o022 != 0 {
                return Err(std::io::Error::other(format!(
                    "--vhost-dir {}: must be a directory of uid {me}, not a symlink, writable by no one else",
                    d.display()
                )));
            }
            Ok(())
        }
    };
    made?;
    no_open_ancestor("--vhost-dir", d)
}

/// Makes `d` and the directories above it that are missing, each mode
/// 0755 whatever the umask (the unit's 0007 would make them 0750, which
/// VMMs outside the group cannot search). What exists of the path is
/// checked first (`no_open_ancestor`), so that valed does not create
/// directories, as root, where another user's symlink points.
fn make_dirs(what: &str, d: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let d = std::env::current_dir()?.join(d);
    let mut missing = Vec::new();
    let mut cur = d.as_path();
    loop {
        match std::fs::symlink_metadata(cur) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(cur.to_path_buf());
                cur = cur.parent().ok_or(e)?;
            }
            Err(e) => return Err(std::io::Error::other(format!("{}: {e}", cur.display()))),
        }
    }
    no_open_ancestor(what, cur)?;
    let me = netmap::sys::euid();
    for m in missing.iter().rev() {
        if let Err(e) = std::fs::create_dir(m) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(std::io::Error::other(format!("{}: {e}", m.display())));
            }
        }
        // Made by us, or by someone faster: then it must be a directory
        // of ours, not a symlink, before it is chmodded, and the chmod
        // goes to what was opened.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY)
            .open(m)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", m.display())))?;
        let md = f.metadata()?;
        if md.uid() != me {
            return Err(std::io::Error::other(format!(
                "{}: made meanwhile by uid {}",
                m.display(),
                md.uid()
            )));
        }
        use std::os::fd::AsRawFd;
        std::fs::set_permissions(
            format!("/proc/self/fd/{}", f.as_raw_fd()),
            std::fs::Permissions::from_mode(0o755),
        )?;
    }
    Ok(())
}

/// Refuses a directory that another user could redirect: one on the way
/// to it (itself included) in which someone other than root could rename
/// entries. valed makes, unlinks and chowns sockets there as root, and
/// VMMs and clients find them by path; a tenant able to rename the vhost
/// directory, or the control socket, could put its own in their place
/// (valed.8, SECURITY).
fn no_open_ancestor(what: &str, d: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = netmap::sys::euid();
    match netmap::sys::first_open_ancestor(d, me)? {
        None => Ok(()),
        Some(open) => {
            let md = std::fs::metadata(&open)?;
            let who = if me == 0 {
                "root".to_string()
            } else {
                format!("uid {me} and root")
            };
            Err(std::io::Error::other(format!(
                "{what} {}: {} (uid {}, mode {:04o}) can be changed by users other than {who}, \
                 who could then swap the sockets in it or the way to them; make it theirs or root's, \
                 writable by its owner only (chmod go-w) or sticky",
                d.display(),
                open.display(),
                md.uid(),
                md.mode() & 0o7777
            )))
        }
    }
}

fn run(args: Args) -> std::io::Result<()> {
    // Before any thread exists, so all of them inherit the blocked mask.
    let signals = signal::StopSignals::install()?;
    let path = netmap::ctrl::socket_path(args.socket.as_deref());
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        make_dirs("the control socket's directory", dir)?;
        no_open_ancestor("the control socket's directory", dir)?;
    }
    server::prepare_path(&path)?;
    let listener = netmap::sys::seqpacket_listen(&path, 64)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut fwd = Vec::new();
    for i in 0..args.threads {
        let cpu = (!args.cpus.is_empty()).then(|| args.cpus[i % args.cpus.len()]);
        fwd.push(fwd::Forwarder::start(i, cpu, args.busy, stop.clone())?);
    }
    info!(socket = %path.display(), threads = args.threads, busy_poll_us = args.busy.as_micros() as u64, "valed ready");
    let mut reg = state::Registry::new(fwd);
    reg.huge_pages = args.huge_pages;
    reg.mem_ports = args.mem_ports;
    reg.vhost_inline = args.vhost_inline;
    reg.quotas = args.quotas;
    reg.admode = args.admode;
    reg.vm_socket_group = args.vm_socket_group;
    // Tenants' vhost-user sockets: beside the control socket unless told.
    reg.vhost_dir = match &args.vhost_dir {
        Some(d) => d.clone(),
        None => path
            .parent()
            .map_or_else(|| PathBuf::from("/run/vale"), |p| p.to_path_buf())
            .join("vhost"),
    };
    make_vhost_dir(&reg.vhost_dir)?;
    // Ports from the config file (valed's own record of what vale-ctl
    // created), then the command line's.
    let mut specs = Vec::new();
    if let Some(cf) = &args.config {
        match std::fs::read_to_string(cf) {
            Ok(text) => {
                specs = vhost::VhostSpec::parse_file(&text, cf).map_err(std::io::Error::other)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(std::io::Error::other(format!("{}: {e}", cf.display()))),
        }
    }
    for s in args.vhost {
        specs.retain(|o| o.name != s.name);
        specs.push(s);
    }
    for s in specs {
        let name = s.name.clone();
        if let Err((_, msg)) = reg.vhost_create(s) {
            error!(port = name, "vhost-user port: {msg}");
            stop.store(true, Ordering::Relaxed);
            reg.shutdown();
            return Err(std::io::Error::other(format!(
                "vhost-user port {name}: {msg}"
            )));
        }
    }
    reg.state_file = args.config.clone();
    reg.save_state();
    if let Some(m) = &args.metrics {
        metrics::start(m, path.clone())?;
    }
    let res = server::serve(listener, &mut reg, &signals);
    stop.store(true, Ordering::Relaxed);
    reg.shutdown();
    let _ = std::fs::remove_file(&path);
    info!("valed stopped");
    res
}
