//! Starting a guest ([`Guest`]) from a [`GuestSpec`]: QEMU's command line, or
//! Cloud Hypervisor's where it applies ([`Vmm::choose`]), the child process,
//! its agent, its console and its monitor.
//!
//! The QEMU line (TCG; under KVM `accel=kvm`, `-cpu host` and
//! `vectors=2*Q+2`):
//!
//! ```text
//! qemu-system-x86_64 -name guest=vm1 -machine q35,accel=tcg -cpu max -smp 1 -m 512
//!   -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem
//!   -nographic -nodefaults -no-reboot
//!   -kernel vmlinuz -initrd initramfs.cpio.gz -append 'console=ttyS0 panic=-1 …'
//!   -chardev file,id=console,path=DIR/console.log -serial chardev:console
//!   -chardev socket,id=monitor,path=DIR/monitor.sock,server=on,wait=off
//!   -mon chardev=monitor,mode=readline
//!   -device virtio-serial-pci,id=vser0
//!   -chardev socket,id=agent,path=DIR/agent.sock,server=on,wait=off
//!   -device virtserialport,bus=vser0.0,chardev=agent,name=vale.agent
//!   -chardev socket,id=c0,path=/run/vale/vm1.sock,reconnect=1
//!   -netdev vhost-user,id=n0,chardev=c0,queues=1
//!   -device virtio-net-pci,netdev=n0,mac=52:54:00:56:00:01,vectors=0
//! ```
//!
//! The console and monitor go through `-chardev` (rather than `-serial
//! file:` and `-monitor unix:`) so that a comma in a path can be escaped
//! (`,,`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::accel::Accel;
use crate::agent::{AgentClient, AgentError, Output, Secs, PING_INTERVAL};

/// How long a reconnection waits for the agent to answer a ping.
const RECONNECT_READY: Duration = Duration::from_secs(30);
use crate::config::{cloud_hypervisor_argv, shell_words, CLOUD_HYPERVISOR};
use crate::spec::{GuestSpec, SpecError, AGENT_PORT_NAME};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// How much of the console an error message quotes.
const CONSOLE_TAIL_BYTES: usize = 3000;

/// Which VMM runs a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// QEMU (KVM or TCG).
    Qemu,
    /// Cloud Hypervisor (real KVM only).
    CloudHypervisor,
}

impl Vmm {
    /// Cloud Hypervisor when `accel` is KVM and `cloud-hypervisor` is on
    /// `PATH`, QEMU otherwise; logs the choice.
    pub fn choose(accel: &Accel) -> Vmm {
        let ch = find_on_path(CLOUD_HYPERVISOR);
        let (vmm, why) = match (accel, &ch) {
            (Accel::Kvm, Some(p)) => (Vmm::CloudHypervisor, format!("KVM and {}", p.display())),
            (Accel::Kvm, None) => (Vmm::Qemu, format!("KVM, but no {CLOUD_HYPERVISOR} on PATH")),
            (Accel::Tcg { .. }, _) => (
                Vmm::Qemu,
                format!("TCG (only QEMU emulates; {CLOUD_HYPERVISOR} needs KVM)"),
            ),
        };
        tracing::info!("VMM: {} ({why})", vmm.program());
        vmm
    }

    /// The program run.
    pub fn program(&self) -> &'static str {
        match self {
            Vmm::Qemu => QEMU,
            Vmm::CloudHypervisor => CLOUD_HYPERVISOR,
        }
    }

    /// Its arguments for `spec`.
    pub fn argv(&self, spec: &GuestSpec) -> Vec<String> {
        match self {
            Vmm::Qemu => qemu_argv(spec),
            Vmm::CloudHypervisor => cloud_hypervisor_argv(spec),
        }
    }
}

/// `prog`'s path if it is an executable file in a `PATH` directory.
pub fn find_on_path(prog: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Escapes a value inside a QEMU option list (`,` is written `,,`).
fn qopt(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// QEMU's arguments (after the program name) for `spec`; see the module
/// documentation for the shape. Per NIC: `vectors=0` under TCG (QEMU 7.2
/// with vhost-user needs it there), `2*Q+2` under KVM; `mq=on` when Q > 1.
pub fn qemu_argv(spec: &GuestSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let machine = format!("q35,accel={}", spec.accel.qemu_accel());
    let mem = format!(
        "memory-backend-memfd,id=mem,size={}M,share=on",
        spec.memory_mib
    );
    push(&["-name", &format!("guest={}", spec.name)]);
    push(&["-machine", &machine, "-cpu", spec.accel.qemu_cpu()]);
    push(&[
        "-smp",
        &spec.cpus.to_string(),
        "-m",
        &spec.memory_mib.to_string(),
    ]);
    push(&["-object", &mem, "-numa", "node,memdev=mem"]);
    push(&["-nographic", "-nodefaults", "-no-reboot"]);
    push(&["-kernel", &spec.kernel.to_string_lossy()]);
    push(&["-initrd", &spec.initrd.to_string_lossy()]);
    push(&["-append", &spec.cmdline()]);
    let console = format!("file,id=console,path={}", qopt(&spec.console_log()));
    push(&["-chardev", &console, "-serial", "chardev:console"]);
    let monitor = format!(
        "socket,id=monitor,path={},server=on,wait=off",
        qopt(&spec.monitor_socket())
    );
    push(&[
        "-chardev",
        &monitor,
        "-mon",
        "chardev=monitor,mode=readline",
    ]);
    let agent = format!(
        "socket,id=agent,path={},server=on,wait=off",
        qopt(&spec.agent_socket())
    );
    let port = format!("virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT_NAME}");
    push(&["-device", "virtio-serial-pci,id=vser0"]);
    push(&["-chardev", &agent, "-device", &port]);
    for (i, nic) in spec.nics.iter().enumerate() {
        let q = nic.queue_pairs;
        let chardev = format!("socket,id=c{i},path={},reconnect=1", qopt(&nic.socket));
        let netdev = format!("vhost-user,id=n{i},chardev=c{i},queues={q}");
        let mut device = format!("virtio-net-pci,netdev=n{i},mac={}", nic.mac);
        if q > 1 {
            device.push_str(",mq=on");
        }
        if !nic.guest_tso {
            device.push_str(",guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off");
        }
        if !nic.mergeable_rx {
            device.push_str(",mrg_rxbuf=off");
        }
        let vectors = if spec.accel.is_kvm() { 2 * q + 2 } else { 0 };
        device.push_str(&format!(",vectors={vectors}"));
        push(&["-chardev", &chardev, "-netdev", &netdev, "-device", &device]);
    }
    if let Some(uri) = &spec.incoming {
        push(&["-incoming", uri]);
    }
    if spec.paused {
        push(&["-S"]);
    }
    a
}

/// What went wrong with a guest. Every message starts with the guest's name.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A file or directory the guest needs.
    #[error("guest {guest}: {what} {path}: {source}")]
    File {
        /// The guest.
        guest: String,
        /// What the file is for ("kernel", "runtime directory", …).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The VMM could not be started.
    #[error("guest {guest}: cannot start {program}: {source}")]
    Spawn {
        /// The guest.
        guest: String,
        /// The VMM binary.
        program: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The VMM exited.
    #[error(
        "guest {guest}: {program} (pid {pid}) exited ({status}); its output:\n{vmm_log}\n\
         console tail:\n{console_tail}"
    )]
    Exited {
        /// The guest.
        guest: String,
        /// The VMM binary.
        program: &'static str,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// The end of its stdout/stderr.
        vmm_log: String,
        /// The end of the serial console.
        console_tail: String,
    },
    /// The agent did not answer in time.
    #[error(
        "guest {guest}: the agent did not answer within {after}; VMM output:\n{vmm_log}\n\
         console tail:\n{console_tail}"
    )]
    NotReady {
        /// The guest.
        guest: String,
        /// How long we waited.
        after: Secs,
        /// The end of the VMM's stdout/stderr (QEMU 7.2 waits for each
        /// vhost-user socket before the guest starts: "Failed to connect").
        vmm_log: String,
        /// The end of the serial console.
        console_tail: String,
    },
    /// The agent failed (timeout, closed, bad reply).
    #[error("guest {guest}: {source}; console tail:\n{console_tail}")]
    Agent {
        /// The guest.
        guest: String,
        /// The cause.
        #[source]
        source: AgentError,
        /// The end of the serial console.
        console_tail: String,
    },
    /// [`Guest::run_ok`]: the command ran and failed.
    #[error("guest {guest}: command `{cmd}` exited with {code}; output:\n{output}")]
    Failed {
        /// The guest.
        guest: String,
        /// The command.
        cmd: String,
        /// Its exit code.
        code: i32,
        /// What it printed.
        output: String,
    },
    /// The monitor socket failed.
    #[error("guest {guest}: monitor {path}: {source}")]
    Monitor {
        /// The guest.
        guest: String,
        /// The monitor socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Monitor commands need QEMU.
    #[error("guest {guest}: no monitor under {program}")]
    NoMonitor {
        /// The guest.
        guest: String,
        /// The VMM binary.
        program: &'static str,
    },
    /// Killing or reaping the VMM failed.
    #[error("guest {guest}: {what} pid {pid}: {source}")]
    Process {
        /// The guest.
        guest: String,
        /// "kill" or "wait for".
        what: &'static str,
        /// The VMM's pid.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A running guest. Dropping it kills the VMM (SIGKILL to the child's pid:
/// only the process this `Guest` started) and reaps it.
#[derive(Debug)]
pub struct Guest {
    name: String,
    vmm: Vmm,
    child: Child,
    status: Option<ExitStatus>,
    agent: Option<AgentClient>,
    agent_socket: PathBuf,
    monitor_socket: PathBuf,
    console_log: PathBuf,
    vmm_log: PathBuf,
}

impl Guest {
    /// Starts `spec` under the VMM [`Vmm::choose`] picks.
    pub fn start(spec: &GuestSpec) -> Result<Guest, GuestError> {
        Guest::start_with(spec, Vmm::choose(&spec.accel))
    }

    /// Starts `spec` under `vmm`. Returns once the process runs; call
    /// [`Guest::wait_ready`] to wait for the guest's agent.
    pub fn start_with(spec: &GuestSpec, vmm: Vmm) -> Result<Guest, GuestError> {
        spec.validate()?;
        let file_err = |what, path: &Path| {
            let guest = spec.name.clone();
            let path = path.to_path_buf();
            move |source| GuestError::File {
                guest,
                what,
                path,
                source,
            }
        };
        for (what, path) in [("kernel", &spec.kernel), ("initrd", &spec.initrd)] {
            File::open(path).map_err(file_err(what, path))?;
        }
        std::fs::create_dir_all(&spec.dir).map_err(file_err("runtime directory", &spec.dir))?;
        for stale in [
            spec.agent_socket(),
            spec.monitor_socket(),
            spec.dir.join("api.sock"),
            spec.console_log(),
        ] {
            match std::fs::remove_file(&stale) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(file_err("stale file", &stale)(e));
                }
                _ => {}
            }
        }
        let log_path = spec.vmm_log();
        let log = File::create(&log_path).map_err(file_err("VMM log", &log_path))?;
        let log2 = log.try_clone().map_err(file_err("VMM log", &log_path))?;
        let argv = vmm.argv(spec);
        let program = spec
            .vmm_binary
            .clone()
            .unwrap_or_else(|| PathBuf::from(vmm.program()));
        tracing::info!(
            guest = %spec.name,
            accel = %spec.accel,
            "starting {}",
            shell_words(&program.to_string_lossy(), &argv)
        );
        let child = Command::new(&program)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| GuestError::Spawn {
                guest: spec.name.clone(),
                program: vmm.program(),
                source,
            })?;
        tracing::info!(guest = %spec.name, pid = child.id(), dir = %spec.dir.display(), "started");
        Ok(Guest {
            name: spec.name.clone(),
            vmm,
            child,
            status: None,
            agent: None,
            agent_socket: spec.agent_socket(),
            monitor_socket: spec.monitor_socket(),
            console_log: spec.console_log(),
            vmm_log: log_path,
        })
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The VMM running it.
    pub fn vmm(&self) -> Vmm {
        self.vmm
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent socket (for `vale-vm exec --agent`).
    pub fn agent_socket(&self) -> &Path {
        &self.agent_socket
    }

    /// The serial console log file.
    pub fn console_path(&self) -> &Path {
        &self.console_log
    }

    /// Everything the guest printed on its serial console so far.
    pub fn console_log(&self) -> String {
        std::fs::read(&self.console_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `bytes` of the console (from a line start where possible).
    pub fn console_tail(&self, bytes: usize) -> String {
        file_tail(&self.console_log, bytes)
    }

    /// The VMM's exit status, if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, GuestError> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|source| self.process_err("wait for", source))?;
        }
        Ok(self.status)
    }

    /// Kills the VMM with SIGKILL and reaps it. Does nothing if it has
    /// already exited.
    pub fn kill(&mut self) -> Result<(), GuestError> {
        self.agent = None;
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        match self.child.kill() {
            Ok(()) => {}
            // Exited since: reaped below.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
            Err(source) => return Err(self.process_err("kill", source)),
        }
        let status = self
            .child
            .wait()
            .map_err(|source| self.process_err("wait for", source))?;
        tracing::info!(guest = %self.name, pid = self.child.id(), %status, "killed");
        self.status = Some(status);
        Ok(())
    }

    /// Asks QEMU to quit (monitor `quit`) and waits up to `timeout`; kills
    /// it if it is still there then (and always under Cloud Hypervisor).
    pub fn quit(&mut self, timeout: Duration) -> Result<(), GuestError> {
        self.agent = None;
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        if self.vmm == Vmm::Qemu {
            // The monitor closes as QEMU exits: an error here is no news.
            let _ = self.hmp("quit", timeout);
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if self.try_wait()?.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill()
    }

    /// Runs one HMP command on QEMU's monitor and returns its output
    /// (without the echo and prompt).
    pub fn hmp(&mut self, cmd: &str, timeout: Duration) -> Result<String, GuestError> {
        if self.vmm != Vmm::Qemu {
            return Err(GuestError::NoMonitor {
                guest: self.name.clone(),
                program: self.vmm.program(),
            });
        }
        let err = |source| GuestError::Monitor {
            guest: self.name.clone(),
            path: self.monitor_socket.clone(),
            source,
        };
        hmp_command(&self.monitor_socket, cmd, timeout).map_err(err)
    }

    /// Waits until the guest's agent answers (pinging about once a second),
    /// failing early if the VMM exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), GuestError> {
        self.wait_ready_while(timeout, || true).map(|_| ())
    }

    /// [`Guest::wait_ready`], giving up (`Ok(false)`) as soon as `keep_going`
    /// returns false (it is called a few times a second), e.g. on Ctrl-C.
    pub fn wait_ready_while(
        &mut self,
        timeout: Duration,
        mut keep_going: impl FnMut() -> bool,
    ) -> Result<bool, GuestError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut pings = Vec::new();
        loop {
            self.check_running()?;
            if !keep_going() {
                return Ok(false);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(GuestError::NotReady {
                    guest: self.name.clone(),
                    after: Secs(timeout),
                    vmm_log: file_tail(&self.vmm_log, CONSOLE_TAIL_BYTES),
                    console_tail: self.console_tail(CONSOLE_TAIL_BYTES),
                });
            }
            let Some(agent) = self.agent.as_mut() else {
                match AgentClient::connect(&self.agent_socket) {
                    Ok(a) => self.agent = Some(a),
                    Err(_) => std::thread::sleep(Duration::from_millis(100).min(left)),
                }
                continue;
            };
            let slice = left.min(Duration::from_millis(250));
            let ping = if start.elapsed() >= PING_INTERVAL * pings.len() as u32 {
                agent.ping(&mut pings, slice)
            } else {
                agent.poll_pings(&pings, slice)
            };
            match ping {
                Ok(true) => {
                    tracing::info!(
                        guest = %self.name,
                        "agent ready after {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                    return Ok(true);
                }
                Ok(false) => {}
                Err(e) => {
                    self.agent = None;
                    self.check_running()?;
                    return Err(self.agent_err(e));
                }
            }
        }
    }

    /// Closes the agent connection (the VMM accepts one client at a time:
    /// do this before another process, e.g. `vale-vm exec`, talks to it).
    pub fn disconnect_agent(&mut self) {
        self.agent = None;
    }

    /// Runs `cmd` in the guest's shell, waiting up to `timeout`.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<Output, GuestError> {
        let r = self.agent()?.run(cmd, timeout);
        self.agent_result(r)
    }

    /// [`Guest::run`], and a non-zero exit is an error; returns the output.
    pub fn run_ok(&mut self, cmd: &str, timeout: Duration) -> Result<String, GuestError> {
        let out = self.run(cmd, timeout)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(GuestError::Failed {
                guest: self.name.clone(),
                cmd: cmd.to_string(),
                code: out.code,
                output: out.stdout,
            })
        }
    }

    /// Starts `cmd` detached in the guest (`!bg`).
    pub fn spawn_bg(&mut self, cmd: &str) -> Result<(), GuestError> {
        let r = self.agent()?.spawn_bg(cmd, Duration::from_secs(10));
        self.agent_result(r)
    }

    fn agent(&mut self) -> Result<&mut AgentClient, GuestError> {
        self.check_running()?;
        if self.agent.is_none() {
            // A new connection pings until the agent answers before the
            // command goes: after the previous connection closed, the agent
            // reopens its port a moment later, and QEMU drops what the host
            // sends while the guest's end is closed.
            self.wait_ready(RECONNECT_READY)?;
        }
        if self.agent.is_none() {
            return Err(GuestError::NotReady {
                guest: self.name.clone(),
                after: Secs(RECONNECT_READY),
                vmm_log: file_tail(&self.vmm_log, CONSOLE_TAIL_BYTES),
                console_tail: self.console_tail(CONSOLE_TAIL_BYTES),
            });
        }
        Ok(self.agent.as_mut().expect("checked above"))
    }

    fn agent_result<T>(&mut self, r: Result<T, AgentError>) -> Result<T, GuestError> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                // After anything but a clean timeout the stream may be out of
                // step: reconnect next time.
                if !matches!(
                    e,
                    AgentError::Timeout { .. } | AgentError::BadCommand { .. }
                ) {
                    self.agent = None;
                }
                self.check_running()?;
                Err(self.agent_err(e))
            }
        }
    }

    fn check_running(&mut self) -> Result<(), GuestError> {
        match self.try_wait()? {
            None => Ok(()),
            Some(status) => Err(GuestError::Exited {
                guest: self.name.clone(),
                program: self.vmm.program(),
                pid: self.child.id(),
                status,
                vmm_log: file_tail(&self.vmm_log, CONSOLE_TAIL_BYTES),
                console_tail: self.console_tail(CONSOLE_TAIL_BYTES),
            }),
        }
    }

    fn agent_err(&self, source: AgentError) -> GuestError {
        GuestError::Agent {
            guest: self.name.clone(),
            source,
            console_tail: self.console_tail(CONSOLE_TAIL_BYTES),
        }
    }

    fn process_err(&self, what: &'static str, source: io::Error) -> GuestError {
        GuestError::Process {
            guest: self.name.clone(),
            what,
            pid: self.child.id(),
            source,
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!("{e}");
        }
        for sock in [&self.agent_socket, &self.monitor_socket] {
            let _ = std::fs::remove_file(sock);
        }
    }
}

/// The last `bytes` of a file, starting after a newline where there is one;
/// "(empty)" if there is nothing.
fn file_tail(path: &Path, bytes: usize) -> String {
    let read = || -> io::Result<Vec<u8>> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(bytes as u64)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        if len > bytes as u64 {
            if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                buf.drain(..=nl);
            }
        }
        Ok(buf)
    };
    match read() {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim_end().to_string(),
        Ok(_) => "(empty)".to_string(),
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// One HMP command over QEMU's readline monitor: waits for the prompt,
/// sends `cmd`, reads to the next prompt (or to EOF, as after `quit`).
fn hmp_command(sock: &Path, cmd: &str, timeout: Duration) -> io::Result<String> {
    const PROMPT: &str = "(qemu) ";
    let deadline = Instant::now() + timeout;
    let mut s = UnixStream::connect(sock)?;
    let mut text = String::new();
    let read_to_prompt = |s: &mut UnixStream, text: &mut String| -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        loop {
            if text.ends_with(PROMPT) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no prompt within {timeout:?}"),
                ));
            }
            s.set_read_timeout(Some(left))?;
            match s.read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => text.push_str(&strip_ansi(&String::from_utf8_lossy(&buf[..n]))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    };
    read_to_prompt(&mut s, &mut text)?;
    text.clear();
    s.write_all(format!("{cmd}\n").as_bytes())?;
    read_to_prompt(&mut s, &mut text)?;
    let body = text.strip_suffix(PROMPT).unwrap_or(&text);
    // The first line is QEMU's echo of the command.
    let body = match body.split_once('\n') {
        Some((_echo, rest)) => rest,
        None => "",
    };
    Ok(body.replace('\r', "").trim_end().to_string())
}

/// Removes ANSI escape sequences (QEMU's readline redraws the line).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{MacAddr, NicSpec};

    fn spec(accel: Accel, queues: &[u16]) -> GuestSpec {
        let mut s = GuestSpec::new("vm1", "/img/vmlinuz", "/img/initramfs.cpio.gz")
            .memory_mib(512)
            .append("vale.ip=10.0.0.1/24")
            .accel(accel)
            .dir("/tmp/vm,1");
        for (i, &q) in queues.iter().enumerate() {
            s = s.nic(
                NicSpec::new(format!("/run/vale/p{i}.sock"), MacAddr::local(i as u16 + 1))
                    .queue_pairs(q),
            );
        }
        s
    }

    fn tcg() -> Accel {
        Accel::Tcg { why: "test".into() }
    }

    /// The value after each occurrence of `flag`.
    fn values<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_argv() {
        let argv = qemu_argv(&spec(tcg(), &[1, 2]));
        assert_eq!(values(&argv, "-machine"), ["q35,accel=tcg"]);
        assert_eq!(values(&argv, "-cpu"), ["max"]);
        assert_eq!(values(&argv, "-m"), ["512"]);
        assert_eq!(
            values(&argv, "-object"),
            ["memory-backend-memfd,id=mem,size=512M,share=on"]
        );
        assert_eq!(values(&argv, "-numa"), ["node,memdev=mem"]);
        assert_eq!(
            values(&argv, "-append"),
            ["console=ttyS0 panic=-1 vale.ip=10.0.0.1/24"]
        );
        let devices = values(&argv, "-device");
        assert_eq!(
            devices,
            [
                "virtio-serial-pci,id=vser0",
                "virtserialport,bus=vser0.0,chardev=agent,name=vale.agent",
                "virtio-net-pci,netdev=n0,mac=52:54:00:56:00:01,vectors=0",
                "virtio-net-pci,netdev=n1,mac=52:54:00:56:00:02,mq=on,vectors=0",
            ]
        );
        assert_eq!(
            values(&argv, "-netdev"),
            [
                "vhost-user,id=n0,chardev=c0,queues=1",
                "vhost-user,id=n1,chardev=c1,queues=2"
            ]
        );
        let chardevs = values(&argv, "-chardev");
        assert!(chardevs.contains(&"socket,id=c0,path=/run/vale/p0.sock,reconnect=1"));
        // A comma in the runtime directory is doubled inside option lists.
        assert!(chardevs.contains(&"socket,id=agent,path=/tmp/vm,,1/agent.sock,server=on,wait=off"));
        assert!(chardevs.contains(&"file,id=console,path=/tmp/vm,,1/console.log"));
        assert!(argv.iter().any(|a| a == "-nographic"));
        assert!(argv.iter().any(|a| a == "-nodefaults"));
    }

    #[test]
    fn kvm_argv() {
        let argv = qemu_argv(&spec(Accel::Kvm, &[1, 4]));
        assert_eq!(values(&argv, "-machine"), ["q35,accel=kvm"]);
        assert_eq!(values(&argv, "-cpu"), ["host"]);
        let devices = values(&argv, "-device");
        assert_eq!(
            devices[2],
            "virtio-net-pci,netdev=n0,mac=52:54:00:56:00:01,vectors=4"
        );
        assert_eq!(
            devices[3],
            "virtio-net-pci,netdev=n1,mac=52:54:00:56:00:02,mq=on,vectors=10"
        );
    }

    #[test]
    fn offload_and_buffer_options() {
        // Each option on a NIC of its own, then both on one.
        let nic = |i: u16| NicSpec::new(format!("/run/vale/p{i}.sock"), MacAddr::local(i));
        let s = spec(tcg(), &[])
            .nic(nic(1).no_guest_tso())
            .nic(nic(2).no_mergeable_rx())
            .nic(nic(3).no_guest_tso().no_mergeable_rx());
        let argv = qemu_argv(&s);
        let tso = "guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off";
        assert_eq!(
            values(&argv, "-device")[2..],
            [
                format!("virtio-net-pci,netdev=n0,mac=52:54:00:56:00:01,{tso},vectors=0"),
                "virtio-net-pci,netdev=n1,mac=52:54:00:56:00:02,mrg_rxbuf=off,vectors=0"
                    .to_string(),
                format!(
                    "virtio-net-pci,netdev=n2,mac=52:54:00:56:00:03,{tso},mrg_rxbuf=off,vectors=0"
                ),
            ]
        );
    }

    #[test]
    fn no_nics_no_netdev() {
        let argv = qemu_argv(&spec(tcg(), &[]));
        assert!(values(&argv, "-netdev").is_empty());
        assert_eq!(values(&argv, "-device").len(), 2);
    }

    #[test]
    fn tcg_never_picks_cloud_hypervisor() {
        assert_eq!(Vmm::choose(&tcg()), Vmm::Qemu);
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("a\u{1b}[K\u{1b}[Db"), "ab");
    }

    #[test]
    fn missing_kernel_is_named() {
        let s = spec(tcg(), &[]).dir(std::env::temp_dir().join("vmmi-nokernel"));
        let e = Guest::start_with(&s, Vmm::Qemu).unwrap_err();
        assert_eq!(
            e.to_string(),
            "guest vm1: kernel /img/vmlinuz: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn tail_of_a_file() {
        let p = std::env::temp_dir().join(format!("vmmi-tail-{}", std::process::id()));
        std::fs::write(&p, "line one\nline two\nline three\n").unwrap();
        assert_eq!(file_tail(&p, 12), "line three");
        assert_eq!(file_tail(&p, 1000), "line one\nline two\nline three");
        std::fs::write(&p, "").unwrap();
        assert_eq!(file_tail(&p, 10), "(empty)");
        let _ = std::fs::remove_file(&p);
    }
}
