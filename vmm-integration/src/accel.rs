//! Which accelerator a guest gets: KVM when `/dev/kvm` runs guest code at
//! hardware speed, TCG (QEMU's translator) otherwise.
//!
//! The probe asks `/dev/kvm` itself, with two tiny guests:
//!
//! 1. **Real mode** (how every PC guest starts, and where SeaBIOS runs): one
//!    page of memory, `mov al,0; 1: out 0x10,al; inc al; cmp al,3; jne 1b;
//!    hlt`. The vCPU must exit with `KVM_EXIT_IO` for 0, 1, 2 on port 0x10,
//!    then `KVM_EXIT_HLT`, within 100 ms.
//! 2. **64-bit long mode, ring 0, paging on** (where a stock kernel spends its
//!    life): identity-mapped page tables, a countdown of 16 × 65536 iterations
//!    of `dec ecx; jnz` (2.1 M instructions), reporting to port 0x10 after each
//!    65536. It must finish within 100 ms of the vCPU thread's CPU time, i.e.
//!    run at ≥ 21 M instructions/s. Hardware virtualisation (VMX/SVM, nested
//!    or not) runs it in about a millisecond; an instruction emulator takes
//!    about a second.
//!
//! What the probe found on the development machine: its `/dev/kvm` is the
//! `kvm_pvm` module (PVM, a pagetable-based KVM for hosts without VMX/SVM).
//! Both programs *run correctly* there: the real-mode sequence exits exactly
//! as expected (0, 1, 2, HLT), and so do the protected-mode and long-mode
//! loops, and QEMU with `accel=kvm -cpu qemu64` even runs SeaBIOS to "No
//! bootable device". But PVM runs only PVM-aware guest kernels natively;
//! everything else goes through KVM's instruction emulator, at about 2 M
//! instructions/s: stage 2 stops after two chunks (262 k instructions in
//! ~130 ms). A stock kernel would take hours to boot (and QEMU's `-cpu host`
//! aborts at start on PVM: "failed to set MSR 0x10a"). So a correct-exit
//! check alone says KVM; the speed check is what tells PVM from real KVM.
//!
//! `VALE_ACCEL=kvm|tcg` overrides the probe (see [`Accel::from_env_or_probe`]).
//!
//! All of this crate's `unsafe` is in this module: the probe's guest memory
//! (an anonymous mapping) and the thread CPU clock.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// The KVM device the probe opens by default.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// The environment variable that overrides the probe: `kvm`, `tcg` or `auto`.
pub const ACCEL_ENV: &str = "VALE_ACCEL";

/// How long each stage may take (stage 2: vCPU thread CPU time).
pub const STAGE_LIMIT: Duration = Duration::from_millis(100);

/// How long the whole probe may take (wall clock) before it is abandoned.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// The port both probe programs write to.
const PROBE_PORT: u16 = 0x10;

/// Stage 2: `CHUNKS` reports, each after `INNER` iterations of `dec; jnz`.
const CHUNKS: u8 = 16;
const INNER: u32 = 65536;
/// Instructions per chunk: the inner loop, then `mov eax,ebx; out; dec ebx;
/// jnz; mov ecx,imm`.
const CHUNK_INSNS: u64 = 2 * INNER as u64 + 5;

/// The accelerator QEMU (or Cloud Hypervisor, or libvirt) should use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accel {
    /// `/dev/kvm` runs guest code at hardware speed.
    Kvm,
    /// QEMU's TCG, and why KVM is not used.
    Tcg {
        /// What the probe saw, e.g. "stage 2 (long mode): 262148 instructions
        /// took 131 ms …".
        why: String,
    },
}

impl Accel {
    /// Probes `/dev/kvm` (see the module documentation) and logs the result.
    pub fn probe() -> Accel {
        Accel::probe_device(Path::new(KVM_DEVICE))
    }

    /// Probes the KVM device at `path` and logs the result.
    pub fn probe_device(path: &Path) -> Accel {
        match probe_kvm(path) {
            Ok(report) => {
                tracing::info!(device = %path.display(), "accelerator: KVM ({report})");
                Accel::Kvm
            }
            Err(e) => {
                let mut why = e.to_string();
                if Path::new("/sys/module/kvm_pvm").exists() {
                    why.push_str(" [module kvm_pvm is loaded: PVM runs only PVM-aware kernels]");
                }
                tracing::info!(device = %path.display(), "accelerator: TCG, because {why}");
                Accel::Tcg { why }
            }
        }
    }

    /// `VALE_ACCEL=kvm` (no probe, trusted), `VALE_ACCEL=tcg`, else the probe
    /// of `/dev/kvm`, run once per process (later calls reuse its answer).
    pub fn from_env_or_probe() -> Accel {
        static PROBED: std::sync::OnceLock<Accel> = std::sync::OnceLock::new();
        match std::env::var(ACCEL_ENV).ok().as_deref() {
            Some("kvm") => {
                tracing::warn!("accelerator: KVM, forced by {ACCEL_ENV}=kvm (not probed)");
                Accel::Kvm
            }
            Some("tcg") => {
                let why = format!("{ACCEL_ENV}=tcg");
                tracing::info!("accelerator: TCG, because {why}");
                Accel::Tcg { why }
            }
            _ => PROBED.get_or_init(Accel::probe).clone(),
        }
    }

    /// Whether this is KVM.
    pub fn is_kvm(&self) -> bool {
        matches!(self, Accel::Kvm)
    }

    /// QEMU's `-machine …,accel=` value.
    pub fn qemu_accel(&self) -> &'static str {
        if self.is_kvm() {
            "kvm"
        } else {
            "tcg"
        }
    }

    /// QEMU's `-cpu` model: `host` under KVM, `max` (every feature TCG can
    /// emulate) under TCG.
    pub fn qemu_cpu(&self) -> &'static str {
        if self.is_kvm() {
            "host"
        } else {
            "max"
        }
    }

    /// libvirt's `<domain type=…>`: `kvm`, or `qemu` for TCG.
    pub fn libvirt_domain_type(&self) -> &'static str {
        if self.is_kvm() {
            "kvm"
        } else {
            "qemu"
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accel::Kvm => write!(f, "KVM"),
            Accel::Tcg { why } => write!(f, "TCG ({why})"),
        }
    }
}

/// Why the probe did not accept the KVM device.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The device cannot be opened (absent, or no permission).
    #[error("cannot open {path}: {source}")]
    Open {
        /// The device.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An unexpected `KVM_GET_API_VERSION`.
    #[error("{path}: KVM API version {got}, expected 12")]
    ApiVersion {
        /// The device.
        path: PathBuf,
        /// What it reported.
        got: i32,
    },
    /// A KVM ioctl failed.
    #[error("{stage}: {what} failed: {source}")]
    Ioctl {
        /// Which probe stage.
        stage: &'static str,
        /// Which ioctl.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The probe guest's memory could not be mapped.
    #[error("cannot map the probe guest's memory: {0}")]
    Mmap(#[source] io::Error),
    /// The vCPU exited otherwise than the program says.
    #[error("{stage}: expected {expected}, the vCPU exited with {got}")]
    UnexpectedExit {
        /// Which probe stage.
        stage: &'static str,
        /// The exit the program should cause.
        expected: String,
        /// The exit KVM reported.
        got: String,
    },
    /// The program ran correctly but far below hardware speed.
    #[error(
        "{stage}: {instructions} guest instructions took {} ms of vCPU time \
         ({mips:.1} M/s; hardware virtualisation runs them at > {min_mips} M/s): \
         this KVM emulates guest instructions and cannot boot a stock kernel in useful time",
        took.as_millis()
    )]
    TooSlow {
        /// Which probe stage.
        stage: &'static str,
        /// Instructions completed when the probe gave up.
        instructions: u64,
        /// The vCPU thread's CPU time for them.
        took: Duration,
        /// Millions of instructions per second.
        mips: f64,
        /// The rate required.
        min_mips: u64,
    },
    /// The probe did not finish in time (a vCPU stuck in the kernel).
    #[error("the probe did not finish within {0:?}")]
    Hung(Duration),
    /// The probe thread could not be started or died.
    #[error("the probe thread failed: {0}")]
    Thread(String),
}

/// What a successful probe measured.
#[derive(Debug, Clone, Copy)]
pub struct ProbeReport {
    /// Stage 1 (real mode, three port writes and HLT), wall clock.
    pub real_mode: Duration,
    /// Stage 2 (long mode countdown), vCPU thread CPU time.
    pub long_mode: Duration,
    /// Instructions stage 2 ran.
    pub instructions: u64,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.long_mode.as_secs_f64().max(1e-9);
        write!(
            f,
            "real-mode program exited as expected in {:?}; long-mode loop ran {} instructions \
             in {:?} ({:.0} M/s)",
            self.real_mode,
            self.instructions,
            self.long_mode,
            self.instructions as f64 / secs / 1e6
        )
    }
}

/// Runs both probe stages against the KVM device at `path`, in a thread that
/// is abandoned if it does not finish within a few seconds.
pub fn probe_kvm(path: &Path) -> Result<ProbeReport, ProbeError> {
    let (tx, rx) = mpsc::channel();
    let dev = path.to_path_buf();
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            // The receiver may be gone after a timeout: nothing to do then.
            let _ = tx.send(run_probe(&dev));
        })
        .map_err(|e| ProbeError::Thread(e.to_string()))?;
    match rx.recv_timeout(PROBE_DEADLINE) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(ProbeError::Hung(PROBE_DEADLINE)),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(ProbeError::Thread("panicked".to_string()))
        }
    }
}

fn run_probe(path: &Path) -> Result<ProbeReport, ProbeError> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| ProbeError::Open {
        path: path.to_path_buf(),
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|source| ProbeError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let api = kvm.get_api_version();
    if api != 12 {
        return Err(ProbeError::ApiVersion {
            path: path.to_path_buf(),
            got: api,
        });
    }
    let real_mode = real_mode_stage(&kvm)?;
    tracing::debug!("KVM probe stage 1 (real mode): exits as expected in {real_mode:?}");
    let (instructions, long_mode) = long_mode_stage(&kvm)?;
    Ok(ProbeReport {
        real_mode,
        long_mode,
        instructions,
    })
}

/// Stage 1: real mode, `out` 0, 1, 2 to the probe port, then `hlt`.
fn real_mode_stage(kvm: &Kvm) -> Result<Duration, ProbeError> {
    const STAGE: &str = "stage 1 (real mode)";
    const GPA: u64 = 0x1000;
    #[rustfmt::skip]
    const CODE: [u8; 11] = [
        0xb0, 0x00,       //    mov al, 0
        0xe6, 0x10,       // 1: out 0x10, al
        0xfe, 0xc0,       //    inc al
        0x3c, 0x03,       //    cmp al, 3
        0x75, 0xf8,       //    jne 1b
        0xf4,             //    hlt
    ];
    let mut g = ProbeGuest::new(kvm, STAGE, GPA, 1)?;
    g.mem.write(0, &CODE);
    let mut sregs = g.vcpu.get_sregs().map_err(ioctl(STAGE, "KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    g.vcpu
        .set_sregs(&sregs)
        .map_err(ioctl(STAGE, "KVM_SET_SREGS"))?;
    let mut regs = g.vcpu.get_regs().map_err(ioctl(STAGE, "KVM_GET_REGS"))?;
    regs.rip = GPA;
    regs.rflags = 2;
    g.vcpu
        .set_regs(&regs)
        .map_err(ioctl(STAGE, "KVM_SET_REGS"))?;

    let start = Instant::now();
    for want in 0u8..3 {
        g.expect_out(STAGE, want)?;
    }
    g.expect_hlt(STAGE)?;
    let took = start.elapsed();
    if took > STAGE_LIMIT {
        return Err(ProbeError::TooSlow {
            stage: STAGE,
            instructions: 11,
            took,
            mips: 11.0 / took.as_secs_f64() / 1e6,
            min_mips: 0,
        });
    }
    Ok(took)
}

/// Stage 2: 64-bit ring 0 with paging, a 2.1 M instruction countdown that
/// must run at hardware speed.
fn long_mode_stage(kvm: &Kvm) -> Result<(u64, Duration), ProbeError> {
    const STAGE: &str = "stage 2 (64-bit long mode)";
    // Layout of the 4 pages at guest physical 0: GDT at 0x0, code at 0x100,
    // PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000 (one 2 MiB page at 0).
    const CODE_AT: u64 = 0x100;
    let inner = INNER.to_le_bytes();
    #[rustfmt::skip]
    let code: [u8; 23] = [
        0xbb, CHUNKS, 0, 0, 0,                          //    mov ebx, CHUNKS
        0xb9, inner[0], inner[1], inner[2], inner[3],   // 1: mov ecx, INNER
        0xff, 0xc9,                                     // 2: dec ecx
        0x75, 0xfc,                                     //    jnz 2b
        0x89, 0xd8,                                     //    mov eax, ebx
        0xe6, 0x10,                                     //    out 0x10, al
        0xff, 0xcb,                                     //    dec ebx
        0x75, 0xef,                                     //    jnz 1b
        0xf4,                                           //    hlt
    ];
    let mut g = ProbeGuest::new(kvm, STAGE, 0, 4)?;
    // Null, 64-bit code (0x08), data (0x10).
    let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        g.mem.write(8 * i, &d.to_le_bytes());
    }
    g.mem.write(CODE_AT as usize, &code);
    g.mem.write(0x1000, &(0x2000u64 | 0x3).to_le_bytes()); // present, writable
    g.mem.write(0x2000, &(0x3000u64 | 0x3).to_le_bytes());
    g.mem.write(0x3000, &0x83u64.to_le_bytes()); // present, writable, 2 MiB

    // KVM refuses EFER.LME unless the guest's CPUID has long mode.
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl(STAGE, "KVM_GET_SUPPORTED_CPUID"))?;
    g.vcpu
        .set_cpuid2(&cpuid)
        .map_err(ioctl(STAGE, "KVM_SET_CPUID2"))?;
    let mut sregs = g.vcpu.get_sregs().map_err(ioctl(STAGE, "KVM_GET_SREGS"))?;
    let seg = |selector: u16, type_: u8, l: u8, db: u8| kvm_segment {
        base: 0,
        limit: 0xf_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt.base = 0;
    sregs.gdt.limit = (8 * gdt.len() - 1) as u16;
    sregs.cs = seg(0x08, 0xb, 1, 0);
    let data = seg(0x10, 0x3, 0, 1);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.cr3 = 0x1000;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = (1 << 31) | (1 << 4) | 1; // PG | ET | PE
    sregs.efer = (1 << 10) | (1 << 8); // LMA | LME
    g.vcpu
        .set_sregs(&sregs)
        .map_err(ioctl(STAGE, "KVM_SET_SREGS"))?;
    let mut regs = g.vcpu.get_regs().map_err(ioctl(STAGE, "KVM_GET_REGS"))?;
    regs.rip = CODE_AT;
    regs.rflags = 2;
    regs.rsp = 0x1000;
    g.vcpu
        .set_regs(&regs)
        .map_err(ioctl(STAGE, "KVM_SET_REGS"))?;

    let min_mips = (CHUNKS as u64 * CHUNK_INSNS) / STAGE_LIMIT.as_micros() as u64;
    let start = ThreadClock::now();
    let mut done = 0u64;
    for left in (1..=CHUNKS).rev() {
        g.expect_out(STAGE, left)?;
        done += CHUNK_INSNS;
        let took = start.elapsed();
        if took > STAGE_LIMIT {
            return Err(ProbeError::TooSlow {
                stage: STAGE,
                instructions: done,
                took,
                mips: done as f64 / took.as_secs_f64() / 1e6,
                min_mips,
            });
        }
    }
    g.expect_hlt(STAGE)?;
    Ok((done + 2, start.elapsed()))
}

fn ioctl(stage: &'static str, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ProbeError {
    move |source| ProbeError::Ioctl {
        stage,
        what,
        source,
    }
}

/// A probe VM: one vCPU and `pages` pages of memory at `gpa`. Fields drop
/// in order: the vCPU and VM before the memory they map.
struct ProbeGuest {
    vcpu: VcpuFd,
    _vm: VmFd,
    mem: ProbeMemory,
}

impl ProbeGuest {
    fn new(kvm: &Kvm, stage: &'static str, gpa: u64, pages: usize) -> Result<Self, ProbeError> {
        let vm = kvm.create_vm().map_err(ioctl(stage, "KVM_CREATE_VM"))?;
        let mem = ProbeMemory::new(pages * 4096)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: gpa,
            memory_size: mem.len as u64,
            userspace_addr: mem.ptr as u64,
            flags: 0,
        };
        // SAFETY: `region` describes `mem`, a private anonymous mapping of
        // `mem.len` bytes that lives until after `vm` is closed (field order
        // of ProbeGuest), so KVM never maps memory we unmapped or reused.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl(stage, "KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = vm.create_vcpu(0).map_err(ioctl(stage, "KVM_CREATE_VCPU"))?;
        Ok(ProbeGuest { vcpu, _vm: vm, mem })
    }

    fn expect_out(&mut self, stage: &'static str, value: u8) -> Result<(), ProbeError> {
        let expected = format!("KVM_EXIT_IO out port {PROBE_PORT:#x} value {value}");
        match self.vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) if port == PROBE_PORT && data == [value] => Ok(()),
            Ok(exit) => Err(ProbeError::UnexpectedExit {
                stage,
                expected,
                got: format!("{exit:?}"),
            }),
            Err(source) => Err(ProbeError::Ioctl {
                stage,
                what: "KVM_RUN",
                source,
            }),
        }
    }

    fn expect_hlt(&mut self, stage: &'static str) -> Result<(), ProbeError> {
        match self.vcpu.run() {
            Ok(VcpuExit::Hlt) => Ok(()),
            Ok(exit) => Err(ProbeError::UnexpectedExit {
                stage,
                expected: "KVM_EXIT_HLT".to_string(),
                got: format!("{exit:?}"),
            }),
            Err(source) => Err(ProbeError::Ioctl {
                stage,
                what: "KVM_RUN",
                source,
            }),
        }
    }
}

/// A private anonymous mapping: the probe guest's memory.
struct ProbeMemory {
    ptr: *mut u8,
    len: usize,
}

impl ProbeMemory {
    fn new(len: usize) -> Result<Self, ProbeError> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ProbeError::Mmap(io::Error::last_os_error()));
        }
        Ok(ProbeMemory {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Copies `bytes` to `offset`. Panics if that leaves the mapping (the
    /// probe's layouts are constants).
    fn write(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset.checked_add(bytes.len()).expect("offset overflow");
        assert!(end <= self.len, "probe write past its memory");
        // SAFETY: [offset, end) is inside the mapping (checked above); no
        // vCPU runs while the probe writes (we hold &mut self).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) }
    }
}

impl Drop for ProbeMemory {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing uses the
        // mapping after this (ProbeGuest drops the VM first).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// The calling thread's CPU time (user + system, which includes time in
/// `KVM_RUN`): a vCPU preempted by a busy host does not look slow.
struct ThreadClock(Duration);

impl ThreadClock {
    fn now() -> Self {
        ThreadClock(thread_cpu_time())
    }

    fn elapsed(&self) -> Duration {
        thread_cpu_time().saturating_sub(self.0)
    }
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_does_not_panic() {
        let accel = Accel::probe();
        // Whatever the machine, the answer is one of the two and printable.
        let text = accel.to_string();
        assert!(text == "KVM" || text.starts_with("TCG ("), "{text}");
    }

    #[test]
    fn missing_device_means_tcg() {
        let accel = Accel::probe_device(Path::new("/nonexistent/kvm"));
        match accel {
            Accel::Tcg { why } => assert!(why.contains("cannot open /nonexistent/kvm"), "{why}"),
            Accel::Kvm => panic!("a missing device cannot be KVM"),
        }
    }

    #[test]
    fn not_a_kvm_device_means_tcg() {
        // /dev/null opens but answers no KVM ioctl.
        assert!(!Accel::probe_device(Path::new("/dev/null")).is_kvm());
    }

    #[test]
    fn qemu_names() {
        assert_eq!(Accel::Kvm.qemu_accel(), "kvm");
        assert_eq!(Accel::Kvm.qemu_cpu(), "host");
        let tcg = Accel::Tcg { why: "x".into() };
        assert_eq!(tcg.qemu_accel(), "tcg");
        assert_eq!(tcg.qemu_cpu(), "max");
        assert_eq!(tcg.libvirt_domain_type(), "qemu");
    }

    #[test]
    fn thread_clock_advances() {
        let c = ThreadClock::now();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(c.elapsed() > Duration::ZERO, "{x}");
    }
}
