//! Transport 2, inside a guest: a virtio 1.0 ("modern") PCI network
//! function driven from user space through `uio_pci_generic` (Debian's
//! guest kernel has no VFIO no-IOMMU mode). The function is taken from its
//! kernel driver on open and handed back on close; its queues and buffers
//! are in 2 MiB huge pages, addressed physically (the guest has no IOMMU),
//! the addresses read from `/proc/self/pagemap`.
//!
//! One queue pair: more would need the control queue to switch them on
//! (VIRTIO_NET_CTRL_MQ), which this driver does not have. No interrupts
//! either: a wait looks at the used rings every 50 us.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use netmap::sys::SharedMap;

use crate::mmio::{Bar, Notify};
use crate::name::PciAddr;
use crate::net::{
    BusLayout, BusMap, DriverConfig, Kick, Memory, Negotiated, QueueEvents, Transport, VirtioRings,
    HUGE_PAGE,
};
use crate::DriverError;

const SYSFS: &str = "/sys/bus/pci";
const UIO: &str = "uio_pci_generic";
const VENDOR_VIRTIO: u16 = 0x1af4;
/// Modern virtio-net, and the transitional id QEMU gives it by default.
const DEVICE_NET: [u16; 2] = [0x1041, 0x1000];

// virtio_pci_cap cfg_type.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;

// struct virtio_pci_common_cfg.
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const NUM_QUEUES: usize = 0x12;
const DEVICE_STATUS: usize = 0x14;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_MSIX_VECTOR: usize = 0x1a;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;

// Device status bits.
const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const FAILED: u8 = 0x80;
const NO_VECTOR: u16 = 0xffff;

fn err(addr: PciAddr, what: impl std::fmt::Display) -> DriverError {
    DriverError::Config(format!("virtio:{addr}: {what}"))
}

fn sysfs_write(path: &Path, v: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all_at(v.as_bytes(), 0)
}

fn read_hex(path: &Path) -> Option<u16> {
    let s = std::fs::read_to_string(path).ok()?;
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// The function, taken from its kernel driver and bound to
/// uio_pci_generic; given back on drop.
#[derive(Debug)]
struct Claim {
    addr: PciAddr,
    dir: PathBuf,
}

impl Claim {
    fn take(addr: PciAddr) -> Result<Claim, DriverError> {
        let dir = Path::new(SYSFS).join("devices").join(addr.to_string());
        if !dir.exists() {
            return Err(err(addr, "no such PCI function"));
        }
        let (vendor, device) = (read_hex(&dir.join("vendor")), read_hex(&dir.join("device")));
        if vendor != Some(VENDOR_VIRTIO) || !device.is_some_and(|d| DEVICE_NET.contains(&d)) {
            return Err(err(
                addr,
                format!("not a virtio-net function (vendor {vendor:04x?} device {device:04x?})"),
            ));
        }
        let uio = Path::new(SYSFS).join("drivers").join(UIO);
        if !uio.exists() {
            return Err(err(
                addr,
                "uio_pci_generic is not loaded (modprobe uio_pci_generic)",
            ));
        }
        let io = |what: &'static str| move |e: io::Error| err(addr, format!("{what}: {e}"));
        let current = std::fs::read_link(dir.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        if current.as_deref() != Some(UIO) {
            if current.is_some() {
                sysfs_write(&dir.join("driver/unbind"), &addr.to_string())
                    .map_err(io("unbinding from its driver"))?;
            }
            sysfs_write(&dir.join("driver_override"), UIO).map_err(io("driver_override"))?;
            let claim = Claim { addr, dir };
            sysfs_write(&uio.join("bind"), &addr.to_string())
                .map_err(io("binding to uio_pci_generic"))?;
            return Ok(claim);
        }
        Ok(Claim { addr, dir })
    }
}

impl Drop for Claim {
    /// Back to the kernel's driver (virtio-pci, then virtio_net).
    fn drop(&mut self) {
        let a = self.addr.to_string();
        let _ = sysfs_write(
            &Path::new(SYSFS).join("drivers").join(UIO).join("unbind"),
            &a,
        );
        let _ = sysfs_write(&self.dir.join("driver_override"), "\n");
        let _ = sysfs_write(&Path::new(SYSFS).join("drivers_probe"), &a);
    }
}

/// A virtio structure: which BAR, where in it.
#[derive(Debug, Clone, Copy)]
struct Cap {
    bar: u8,
    offset: u32,
    length: u32,
    /// The notify structure's `notify_off_multiplier`.
    mult: u32,
}

/// The function's config space, through sysfs.
struct Config(File);

impl Config {
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, off)
    }
    fn u8(&self, off: u64) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.read(off, &mut b)?;
        Ok(b[0])
    }
    fn u16(&self, off: u64) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.read(off, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    fn u32(&self, off: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// The virtio vendor capabilities: (cfg_type, where).
    fn virtio_caps(&self) -> io::Result<Vec<(u8, Cap)>> {
        let mut out = Vec::new();
        // Status bit 4: a capability list exists.
        if self.u16(6)? & 0x10 == 0 {
            return Ok(out);
        }
        let mut p = self.u8(0x34)? & !3;
        // A list longer than config space has room for is a loop.
        for _ in 0..48 {
            if p < 0x40 {
                break;
            }
            let (vndr, next) = (self.u8(p.into())?, self.u8(u64::from(p) + 1)?);
            if vndr == 0x09 {
                let at = u64::from(p);
                let cfg_type = self.u8(at + 3)?;
                let cap = Cap {
                    bar: self.u8(at + 4)?,
                    offset: self.u32(at + 8)?,
                    length: self.u32(at + 12)?,
                    mult: if cfg_type == CAP_NOTIFY {
                        self.u32(at + 16)?
                    } else {
                        0
                    },
                };
                out.push((cfg_type, cap));
            }
            p = next & !3;
        }
        Ok(out)
    }
}

/// The device once set up: what the rings keep of it.
#[derive(Debug)]
struct PciTransport {
    common: Arc<Bar>,
    common_off: usize,
    /// The memory the device addresses: leaked, never freed, if the
    /// device does not acknowledge its reset (it may still write there).
    keep: Option<(Arc<netmap::region::Region>, Arc<SharedMap>)>,
    _claim: Claim,
}

impl Transport for PciTransport {
    fn peer_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

impl Drop for PciTransport {
    /// Reset: the device stops touching memory before it is freed, and
    /// before the function goes back to the kernel.
    fn drop(&mut self) {
        let _ = self.common.write8(self.common_off + DEVICE_STATUS, 0);
        let t0 = Instant::now();
        while self
            .common
            .read8(self.common_off + DEVICE_STATUS)
            .unwrap_or(0)
            != 0
        {
            if t0.elapsed() > Duration::from_secs(1) {
                tracing::error!("virtio PCI device did not reset: its memory is leaked, not freed");
                std::mem::forget(self.keep.take());
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Bus (physical) addresses of the 2 MiB pages of `map`, each faulted in
/// first.
fn physical_pages(addr: PciAddr, map: &SharedMap) -> Result<Vec<u64>, DriverError> {
    let io = |what: &'static str| move |e: io::Error| err(addr, format!("{what}: {e}"));
    let pagemap = File::open("/proc/self/pagemap").map_err(io("/proc/self/pagemap"))?;
    let mut out = Vec::new();
    for i in 0..map.len().div_ceil(HUGE_PAGE) {
        // A read faults the page in without changing it.
        map.read::<u8>(i * HUGE_PAGE).map_err(io("huge page"))?;
        let va = map.as_ptr() as usize + i * HUGE_PAGE;
        let mut e = [0u8; 8];
        pagemap
            .read_exact_at(&mut e, (va / 4096 * 8) as u64)
            .map_err(io("/proc/self/pagemap"))?;
        let e = u64::from_le_bytes(e);
        let pfn = e & ((1 << 55) - 1);
        if e >> 63 == 0 || pfn == 0 {
            return Err(err(
                addr,
                "no physical address in /proc/self/pagemap (needs root)",
            ));
        }
        out.push(pfn * 4096);
    }
    Ok(out)
}

/// The features to ack out of `offered` (as on vhost-user, without the
/// protocol feature bit).
fn wanted(cfg: &DriverConfig, offered: u64) -> u64 {
    crate::user::wanted_features(cfg, offered) & !(1 << 30)
}

/// Opens the virtio-net function at `addr`: binds it to uio_pci_generic,
/// negotiates, lays the queues and buffers out in huge pages and starts
/// one queue pair.
pub fn open(addr: PciAddr, mut cfg: DriverConfig) -> Result<VirtioRings, DriverError> {
    if cfg.queue_pairs != 1 {
        return Err(err(
            addr,
            "one queue pair only (no control queue to enable more)",
        ));
    }
    cfg.validate()?;
    let claim = Claim::take(addr)?;
    let io = |what: &'static str| move |e: io::Error| err(addr, format!("{what}: {e}"));
    let config = Config(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(claim.dir.join("config"))
            .map_err(io("config space"))?,
    );
    // Memory space and bus mastering on: the device reads our memory.
    let cmd = config.u16(4).map_err(io("config space"))?;
    config
        .0
        .write_all_at(&(cmd | 0x6).to_le_bytes(), 4)
        .map_err(io("config space"))?;
    let caps = config.virtio_caps().map_err(io("capabilities"))?;
    let find = |t: u8| caps.iter().find(|(ct, _)| *ct == t).map(|(_, c)| *c);
    let (Some(common), Some(notify), Some(_isr)) =
        (find(CAP_COMMON), find(CAP_NOTIFY), find(CAP_ISR))
    else {
        return Err(err(
            addr,
            "no virtio 1.0 capabilities (a legacy-only device)",
        ));
    };
    let mut bars: Vec<Option<Arc<Bar>>> = vec![None; 6];
    let mut bar = |i: u8| -> Result<Arc<Bar>, DriverError> {
        let slot = bars
            .get_mut(usize::from(i))
            .ok_or_else(|| err(addr, format!("capability in BAR {i}")))?;
        if let Some(b) = slot {
            return Ok(b.clone());
        }
        let b = Arc::new(
            Bar::map(&claim.dir.join(format!("resource{i}"))).map_err(io("mapping a BAR"))?,
        );
        *slot = Some(b.clone());
        Ok(b)
    };
    let cbar = bar(common.bar)?;
    let nbar = bar(notify.bar)?;
    let c = common.offset as usize;
    if (common.length as usize) < 0x38 || c + 0x38 > cbar.len() {
        return Err(err(addr, "common configuration smaller than virtio 1.0's"));
    }
    let reg = |e: io::Error| err(addr, format!("register: {e}"));
    let status = |v: u8| cbar.write8(c + DEVICE_STATUS, v).map_err(reg);
    // Reset, then ACKNOWLEDGE and DRIVER.
    status(0)?;
    let t0 = Instant::now();
    while cbar.read8(c + DEVICE_STATUS).map_err(reg)? != 0 {
        if t0.elapsed() > Duration::from_secs(1) {
            return Err(err(addr, "the device does not reset"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    status(ACKNOWLEDGE)?;
    status(ACKNOWLEDGE | DRIVER)?;
    let mut offered = 0u64;
    for sel in 0..2u32 {
        cbar.write32(c + DEVICE_FEATURE_SELECT, sel).map_err(reg)?;
        offered |= u64::from(cbar.read32(c + DEVICE_FEATURE).map_err(reg)?) << (32 * sel);
    }
    if offered & (1 << VIRTIO_F_VERSION_1) == 0 {
        let _ = status(FAILED);
        return Err(DriverError::Missing("VIRTIO_F_VERSION_1"));
    }
    let acked = wanted(&cfg, offered);
    for sel in 0..2u32 {
        cbar.write32(c + DRIVER_FEATURE_SELECT, sel).map_err(reg)?;
        cbar.write32(c + DRIVER_FEATURE, (acked >> (32 * sel)) as u32)
            .map_err(reg)?;
    }
    status(ACKNOWLEDGE | DRIVER | FEATURES_OK)?;
    if cbar.read8(c + DEVICE_STATUS).map_err(reg)? & FEATURES_OK == 0 {
        let _ = status(FAILED);
        return Err(err(addr, format!("the device refused features {acked:#x}")));
    }
    if cbar.read16(c + NUM_QUEUES).map_err(reg)? < 2 {
        return Err(err(addr, "fewer than two queues"));
    }
    // The smaller of the two queues' maxima bounds both.
    let mut max = u16::MAX;
    for q in 0..2u16 {
        cbar.write16(c + QUEUE_SELECT, q).map_err(reg)?;
        max = max.min(cbar.read16(c + QUEUE_SIZE).map_err(reg)?);
    }
    if max < 2 {
        return Err(err(addr, format!("queue size {max}")));
    }
    cfg.queue_size_max = max;
    let neg = Negotiated {
        features: acked,
        mrg_rxbuf: acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
        event_idx: acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0,
    };
    let mem = Memory::group_with(&cfg, 1, true)?
        .pop()
        .ok_or_else(|| err(addr, "no memory"))?;
    let qphys = physical_pages(addr, &mem.queue_map)?;
    let rphys = physical_pages(addr, mem.region.map())?;
    let qbase = qphys[0];
    let l = mem.lanes[0];
    let mut events = Vec::new();
    for (q, (d, a, u)) in [(0u16, l.rx), (1u16, l.tx)] {
        cbar.write16(c + QUEUE_SELECT, q).map_err(reg)?;
        cbar.write16(c + QUEUE_SIZE, mem.queue_size).map_err(reg)?;
        cbar.write16(c + QUEUE_MSIX_VECTOR, NO_VECTOR)
            .map_err(reg)?;
        cbar.write64(c + QUEUE_DESC, qbase + d as u64)
            .map_err(reg)?;
        cbar.write64(c + QUEUE_DRIVER, qbase + a as u64)
            .map_err(reg)?;
        cbar.write64(c + QUEUE_DEVICE, qbase + u as u64)
            .map_err(reg)?;
        let off = cbar.read16(c + QUEUE_NOTIFY_OFF).map_err(reg)?;
        let at = u64::from(notify.offset) + u64::from(off) * u64::from(notify.mult);
        let kick = Notify::new(nbar.clone(), at as usize, q).map_err(io("notify register"))?;
        cbar.write16(c + QUEUE_ENABLE, 1).map_err(reg)?;
        events.push(QueueEvents {
            kick: Kick::Mmio(kick),
            call: None,
        });
    }
    status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)?;
    let tx = events.pop();
    let rx = events.pop();
    let (Some(rx), Some(tx)) = (rx, tx) else {
        return Err(err(addr, "queues"));
    };
    let bus = BusLayout {
        queues: qbase,
        bufs: BusMap::Pages {
            shift: HUGE_PAGE.ilog2(),
            pages: rphys,
        },
    };
    let transport = PciTransport {
        common: cbar.clone(),
        common_off: c,
        keep: Some((mem.region.clone(), mem.queue_map.clone())),
        _claim: claim,
    };
    VirtioRings::start(
        &format!("virtio:{addr}"),
        cfg,
        neg,
        mem,
        bus,
        vec![(rx, tx)],
        Box::new(transport),
    )
}
