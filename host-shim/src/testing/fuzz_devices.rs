//! Bodies of the emulated-device fuzz targets in `host-shim/fuzz/` (`pci_config`,
//! `e1000`, `ide`), as library functions that `cargo test` also runs on seeded
//! pseudo-random inputs (see [`super::fuzz`] for the pattern).
//!
//! Each decodes the fuzzer's bytes into mostly valid, structured guest actions (Cloud
//! Hypervisor's style): configuration mechanism #1 cycles and BAR accesses for the PCI
//! bus (PCI Local Bus Specification 3.0, 3.2.2.3.2), register writes, descriptor rings
//! and link frames for the 82540EM (8254x SDM chapters 3 and 13), task-file, control
//! and SFF-8038i bus-master programs for the PIIX3 IDE. The models are hostile-guest
//! proof by contract, so beyond "no panic" each body checks an invariant a hostile
//! guest must not break:
//! - PCI: every range on the port and memory buses is the host's ports, a legacy range
//!   or a BAR its function's header says decodes there; the bus's view agrees with the
//!   headers; a BAR the header wants but the bus left off really has no room.
//! - e1000 and IDE: DMA writes only where the guest pointed rings and buffers. The
//!   harness sanitizes every address it hands the device so that a canary region of
//!   guest RAM is never pointed at, and checks the canary is intact at the end.
//! - e1000: the INTx level is `(ICR & IMS) != 0` unless the command register disables
//!   INTx (with mitigation on: never high without cause, and equal once the timer ran).
//! - IDE: the image file's size never changes, and BSY is never seen outside SRST
//!   (the model completes every command inside the access that starts it).

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hw_devices::ata;
use hw_devices::e1000::{self as hw, RxDesc, TxDesc, ctrl, rctl, reg, tctl, tx_cmd};
use hw_devices::pci::{bar_offset, command};
use vm_memory::{Bytes as _, GuestAddress, GuestMemoryBackend as _};

use super::fuzz::Bytes;
use crate::devices::e1000::E1000;
use crate::devices::ide::{
    self, PiixIde, REGION_BUS_MASTER, REGION_PRIMARY_CONTROL, REGION_PRIMARY_TASK_FILE,
    REGION_SECONDARY_CONTROL, REGION_SECONDARY_TASK_FILE,
};
use crate::devices::pci::{BarKind, MappedBar, PciDevice};
use crate::devices::pci_bus::{
    CONFIG_PORT, CONFIG_PORTS, HOST_NAME, IDE_FUNCTION, PciAddr, PciBus,
};
use crate::devices::{Bus, GuestMemory, IrqLine};
use crate::hostio::disk::{DiskImage, DiskOptions, SECTOR_SIZE};
use crate::hostio::tap::{Link, MemLink};

/// An interrupt line that remembers its level.
#[derive(Default)]
pub struct Level(AtomicBool);

impl Level {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl IrqLine for Level {
    fn set_level(&self, asserted: bool) {
        self.0.store(asserted, Ordering::SeqCst);
    }
}

/// Guest RAM of `bytes` bytes at address 0, all zeros, as a fresh mapping is.
///
/// The mapping is made once per thread and size and zeroed again for every call:
/// faulting in the pages of a fresh mapping cost a device input more than half its time.
/// Zeroing it all is a complete reset: guest RAM holds no state but its bytes
/// (`GuestMemoryMmap<()>`: no dirty bitmap), and nothing of an earlier input can still
/// write it (its devices were dropped with it, and none runs a thread here).
fn ram(bytes: u64) -> GuestMemory {
    thread_local! {
        static MAPPED: RefCell<Vec<(u64, GuestMemory)>> = const { RefCell::new(Vec::new()) };
    }
    MAPPED.with_borrow_mut(|mapped| {
        if let Some((_, mem)) = mapped.iter().find(|(size, _)| *size == bytes) {
            let all = mem
                .get_slice(GuestAddress(0), bytes as usize)
                .expect("fuzz guest RAM");
            let guard = all.ptr_guard_mut();
            // SAFETY: `all` is the whole of this thread's mapping, `bytes` bytes valid
            // for writes; no one else uses it now (the devices of earlier inputs are
            // gone and ran no threads), so a plain `memset` races with nothing.
            unsafe { std::ptr::write_bytes(guard.as_ptr(), 0, all.len()) };
            return mem.clone();
        }
        let mem =
            GuestMemory::from_ranges(&[(GuestAddress(0), bytes as usize)]).expect("fuzz guest RAM");
        mapped.push((bytes, mem.clone()));
        mem
    })
}

/// One of `pool`, chosen by the next byte.
fn pick<T: Copy>(b: &mut Bytes<'_>, pool: &[T]) -> T {
    pool[usize::from(b.u8()) % pool.len()]
}

/// An access width: 1, 2 or 4 (and 8 when `wide`).
fn width(b: &mut Bytes<'_>, wide: bool) -> usize {
    match b.u8() % if wide { 4 } else { 3 } {
        0 => 1,
        1 => 2,
        2 => 4,
        _ => 8,
    }
}

/// A canary range of guest RAM: filled with a pattern, which must be intact at the end.
struct Canary {
    at: u64,
    len: usize,
}

/// The canary's pattern: byte `i` of the range is `i * 13 ^ 0x5a` (mod 256), so every
/// 256-byte-aligned piece of it is the same; this is one 4 KiB piece.
fn canary_block() -> [u8; 4096] {
    let mut block = [0u8; 4096];
    for (i, x) in block.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(13) ^ 0x5a;
    }
    block
}

/// Fills `len` bytes of `mem` at `at` with the canary pattern.
fn plant_canary(mem: &GuestMemory, at: u64, len: usize) -> Canary {
    let block = canary_block();
    for off in (0..len).step_by(block.len()) {
        let n = block.len().min(len - off);
        mem.write_slice(&block[..n], GuestAddress(at + off as u64))
            .expect("canary");
    }
    Canary { at, len }
}

/// Whether the canary still holds its pattern (compared a piece at a time: no copy of
/// the whole range).
fn canary_intact(mem: &GuestMemory, canary: &Canary) -> bool {
    let block = canary_block();
    let mut now = [0u8; 4096];
    (0..canary.len).step_by(block.len()).all(|off| {
        let n = block.len().min(canary.len - off);
        mem.read_slice(&mut now[..n], GuestAddress(canary.at + off as u64))
            .expect("canary");
        now[..n] == block[..n]
    })
}

// ---- PCI configuration ------------------------------------------------------------------

/// Guest RAM of the PCI target (DMA of the models lands here; nothing is checked).
const PCI_RAM: u64 = 0x1_0000;
/// The e1000's slot.
const NIC_SLOT: PciAddr = PciAddr::new(3, 0);
/// Functions a configuration cycle names: the four present ones, an absent one, and
/// the IDE's sibling that does not exist.
const PCI_TARGETS: [PciAddr; 6] = [
    PciAddr::new(0, 0),
    PciAddr::new(1, 0),
    IDE_FUNCTION,
    NIC_SLOT,
    PciAddr::new(5, 0),
    PciAddr::new(1, 2),
];
/// BAR values a guest might write: sizing, zero, the firmware windows, the config
/// ports and the IDE's legacy ports (to collide), reserved RAM and the IOAPIC, the
/// top of the I/O and memory spaces.
const BAR_VALUES: [u32; 16] = [
    0xffff_ffff,
    0,
    0xc000,
    0xc001,
    0xc040,
    0xc041,
    0xcf8,
    0x1f0,
    0x3f4,
    0xfeb0_0000,
    0xfebc_0000,
    0xfeb0_0010,
    0x0010_0000,
    0xfec0_0000,
    0xfff0,
    0xffff_0000,
];

/// What the PCI target saw, for tests that check it reached past the first check.
#[derive(Debug, Default, Clone, Copy)]
pub struct PciRun {
    /// BAR ranges put on the buses (the host's `bar_maps`).
    pub bar_maps: u64,
    /// BARs left off for lack of room.
    pub bar_conflicts: u64,
    /// Accesses that reached a mapped BAR.
    pub bar_accesses: u64,
}

/// Fuzzes PCI bus 0 (`PciBus::pc` with the PIIX3 IDE at 00:01.1 and an e1000 at
/// 00:03.0) through configuration mechanism #1 and the BARs it maps, checking after
/// every step that the buses hold exactly what the headers decode, without overlap.
pub fn fuzz_pci_config(data: &[u8]) -> PciRun {
    let mut b = Bytes::new(data);
    let pio = Arc::new(Bus::new());
    let mmio = Arc::new(Bus::new());
    let pci = PciBus::pc(pio.clone(), mmio.clone()).expect("pc bus");
    // What the device manager reserves: low RAM and the IOAPIC and LAPIC pages.
    pci.reserve(BarKind::Memory32, 0, 0x1000_0000);
    pci.reserve(BarKind::Memory32, 0xfec0_0000, 0x1000);
    pci.reserve(BarKind::Memory32, 0xfee0_0000, 0x1000);
    let mem = ram(PCI_RAM);
    let ide: Arc<Mutex<dyn PciDevice>> = Arc::new(Mutex::new(PiixIde::new(
        None,
        Level::new(),
        Level::new(),
        mem.clone(),
    )));
    let (dev_end, _host_end) = MemLink::pair(4);
    let nic: Arc<Mutex<dyn PciDevice>> = Arc::new(Mutex::new(E1000::new(
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        Box::new(dev_end),
        Level::new(),
        mem,
    )));
    pci.add("ide", ide.clone(), Some(IDE_FUNCTION))
        .expect("IDE at 00:01.1");
    pci.add("e1000", nic.clone(), Some(NIC_SLOT))
        .expect("e1000 at 00:03.0");
    let models = [("ide", &ide), ("e1000", &nic)];
    let legacy: Vec<(BarKind, u64, u64)> = lock(&ide)
        .legacy_ranges()
        .into_iter()
        .map(|(k, base, len, _)| (k, base, len))
        .collect();

    let mut run = PciRun::default();
    check_pci(&pci, &pio, &mmio, &models, &legacy);
    for _ in 0..96 {
        if b.is_empty() {
            break;
        }
        match b.u8() % 8 {
            // Select a function and register, then write it.
            0..=2 => {
                let f = pick(&mut b, &PCI_TARGETS);
                let r = match b.u8() % 4 {
                    0 => 0x04,
                    1 => bar_offset(usize::from(b.u8() % 6)) as u8,
                    2 => 0x3c,
                    _ => b.u8(),
                };
                let mut addr = f.config_address(r);
                if b.u8().is_multiple_of(16) {
                    // Disabled, another bus, or a type-1 cycle.
                    addr ^= pick(&mut b, &[1u32 << 31, 1 << 16, 1]);
                }
                pio.write(CONFIG_PORT, &addr.to_le_bytes());
                let value = match (r & 0xfc, b.u8() % 4) {
                    (0x04, _) => u32::from(b.u16()) & 0x0407 | u32::from(b.u8() % 2) << 2,
                    (0x10..=0x24, 0..=2) => pick(&mut b, &BAR_VALUES),
                    _ => b.u32(),
                };
                let w = width(&mut b, false);
                let lane = if w == 4 { 0 } else { u64::from(b.u8()) % 4 };
                pio.write(
                    CONFIG_PORT + 4 + lane,
                    &value.to_le_bytes()[..w.min(4 - lane as usize).max(1)],
                );
            }
            // Raw accesses to the configuration ports of any size and offset.
            3 => {
                let port = CONFIG_PORT + u64::from(b.u8()) % CONFIG_PORTS;
                let w = width(&mut b, false);
                if b.flag() {
                    let v = b.u32().to_le_bytes();
                    pio.write(port, &v[..w]);
                } else {
                    let mut d = [0u8; 4];
                    pio.read(port, &mut d[..w]);
                }
            }
            // A configuration read (vendor of absent functions must be all ones).
            4 => {
                let f = pick(&mut b, &PCI_TARGETS);
                pio.write(CONFIG_PORT, &f.config_address(0).to_le_bytes());
                let mut d = [0u8; 4];
                pio.read(CONFIG_PORT + 4, &mut d);
                let present = pci.functions().iter().any(|i| i.addr == f);
                assert_eq!(
                    present,
                    d != [0xff; 4],
                    "{f}: vendor/device {d:02x?} (present {present})"
                );
            }
            // An access inside a mapped range.
            _ => {
                let is_mmio = b.flag();
                let (bus, ranges) = if is_mmio {
                    (&mmio, mmio.ranges())
                } else {
                    (&pio, pio.ranges())
                };
                let ranges: Vec<_> = ranges
                    .into_iter()
                    .filter(|(base, _, _)| *base != CONFIG_PORT)
                    .collect();
                if ranges.is_empty() {
                    continue;
                }
                let (base, len, _) = ranges[usize::from(b.u8()) % ranges.len()];
                let off = match b.u8() % 4 {
                    0 => u64::from(b.u32()) % len,
                    // e1000 registers the harness does not want to miss.
                    1 => pick(&mut b, &[reg::CTRL, reg::ICR, reg::IMS, reg::TDT, reg::RDT]).into(),
                    _ => u64::from(b.u8()) % len,
                };
                let w = width(&mut b, is_mmio);
                let addr = base + off % len;
                if b.flag() {
                    let v = b.u64().to_le_bytes();
                    bus.write(addr, &v[..w]);
                } else {
                    let mut d = [0u8; 8];
                    bus.read(addr, &mut d[..w]);
                }
                run.bar_accesses += 1;
            }
        }
        check_pci(&pci, &pio, &mmio, &models, &legacy);
    }
    let stats = pci.stats();
    run.bar_maps = stats.bar_maps;
    run.bar_conflicts = stats.bar_conflicts;
    run
}

fn lock(dev: &Arc<Mutex<dyn PciDevice>>) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

fn bus_of(kind: BarKind) -> usize {
    match kind {
        BarKind::Io => 0,
        BarKind::Memory32 => 1,
    }
}

/// The buses hold the host's ports, the IDE's legacy ranges and the mapped BARs,
/// nothing else, without overlap; the bus's view matches the headers.
fn check_pci(
    pci: &PciBus,
    pio: &Bus,
    mmio: &Bus,
    models: &[(&str, &Arc<Mutex<dyn PciDevice>>)],
    legacy: &[(BarKind, u64, u64)],
) {
    let functions = pci.functions();
    let buses = [pio.ranges(), mmio.ranges()];
    for ranges in &buses {
        for w in ranges.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap: {ranges:x?}");
        }
    }
    // Every range has an owner that says it decodes there.
    for (kind, ranges) in [BarKind::Io, BarKind::Memory32].into_iter().zip(&buses) {
        for (base, len, name) in ranges {
            let name = name.as_deref().unwrap_or("<unnamed>");
            let host = kind == BarKind::Io && *base == CONFIG_PORT && *len == CONFIG_PORTS;
            let fixed = name == "ide" && legacy.contains(&(kind, *base, *len));
            let bar = MappedBar {
                index: 0,
                kind,
                base: *base,
                size: *len,
            };
            let owned = functions.iter().any(|f| {
                f.name == name && f.mapped.iter().any(|m| MappedBar { index: 0, ..*m } == bar)
            });
            assert!(
                (host && name == HOST_NAME) || fixed || owned,
                "{kind:?} range {base:#x}+{len:#x} ({name}) has no owner: {functions:x?}"
            );
        }
    }
    for (name, dev) in models {
        let info = functions
            .iter()
            .find(|f| f.name == *name)
            .expect("function");
        let want = lock(dev).config().mapped_bars();
        for m in &info.mapped {
            // Mapped only while the header decodes there, and really on its bus.
            assert!(
                want.contains(m),
                "{name}: {m:x?} mapped, header wants {want:x?}"
            );
            assert!(
                buses[bus_of(m.kind)]
                    .iter()
                    .any(|(b, l, n)| (*b, *l) == (m.base, m.size) && n.as_deref() == Some(name)),
                "{name}: {m:x?} not on the bus"
            );
        }
        // What the header wants but is off the bus has no room there.
        for w in want.iter().filter(|w| !info.mapped.contains(w)) {
            let bus = if w.kind == BarKind::Io { pio } else { mmio };
            let reserved = w.kind == BarKind::Memory32
                && (w.base < 0x1000_0000
                    || [0xfec0_0000u64, 0xfee0_0000]
                        .iter()
                        .any(|&p| w.base < p + 0x1000 && p < w.base + w.size));
            assert!(
                reserved || bus.check_free(w.base, w.size).is_err(),
                "{name}: {w:x?} wanted, free, but not mapped"
            );
        }
    }
}

// ---- e1000 ------------------------------------------------------------------------------

/// Guest RAM of the e1000 target.
const NIC_RAM: u64 = 0x10_0000;
/// `[0, CANARY_END)`: never pointed at; must never change.
const NIC_CANARY_END: u64 = 0x1_0000;
/// Receive and transmit buffers live in `[NIC_CANARY_END, NIC_BUF_END)`.
const NIC_BUF_END: u64 = 0x4_0000;
/// Rings live from here to the end of RAM; only descriptors the harness sanitized are
/// ever written there (the model writes back bytes 8..16 only), so whatever a ring
/// covers, every buffer address it holds is sanitized.
const NIC_RING_START: u64 = NIC_BUF_END;
/// The largest receive buffer (BSEX, 16 KiB).
const MAX_RX_BUF: u64 = 16 * 1024;
/// Ring bases a guest might program (`RDBAH:RDBAL` / `TDBAH:TDBAL`): the ring area,
/// the end of RAM (partly outside), out of RAM below and above 4 GiB.
const RING_BASES: [u64; 8] = [
    NIC_RING_START,
    NIC_RING_START + 0x1000,
    0x8_0000,
    0xc_0010,
    NIC_RAM - 0x80,
    NIC_RAM - 0x400,
    0x1000_0000,
    0x1_0000_0000,
];
const NIC_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xe1, 0x00, 0x01];
/// Registers the program writes, weighted towards the interesting ones.
const NIC_REGS: [u32; 28] = [
    reg::TDT,
    reg::TDT,
    reg::RDT,
    reg::RDT,
    reg::ICR,
    reg::IMS,
    reg::IMS,
    reg::IMC,
    reg::ICS,
    reg::CTRL,
    reg::EERD,
    reg::EECD,
    reg::MDIC,
    reg::RCTL,
    reg::TCTL,
    reg::RDH,
    reg::TDH,
    reg::RDLEN,
    reg::TDLEN,
    reg::ITR,
    reg::RDTR,
    reg::RADV,
    reg::TADV,
    reg::TIDV,
    reg::STATUS,
    reg::RAL0,
    reg::MTA,
    hw::reg::stat::GORCH,
];

/// A buffer address the guest might give: kept out of the canary (in the buffer area,
/// or outside RAM).
fn nic_buffer(b: &mut Bytes<'_>) -> u64 {
    let raw = match b.u8() % 8 {
        0 => b.u64(),
        1 => u64::from(b.u32()),
        2 => NIC_RAM - u64::from(b.u16() % 0x800),
        _ => NIC_CANARY_END + u64::from(b.u16()) * 2,
    };
    sanitize_nic_buffer(raw)
}

fn sanitize_nic_buffer(addr: u64) -> u64 {
    if addr < NIC_RAM {
        NIC_CANARY_END + addr % (NIC_BUF_END - MAX_RX_BUF - NIC_CANARY_END)
    } else {
        addr
    }
}

/// A ring base: the pool, or anything that stays out of the canary and buffers.
fn nic_ring_base(b: &mut Bytes<'_>) -> u64 {
    if b.u8().is_multiple_of(4) {
        let raw = b.u64() & !0xf;
        if raw < NIC_RAM {
            return NIC_RING_START + raw % (NIC_RAM - NIC_RING_START);
        }
        // Near the top of the address space the ring would wrap round to address 0:
        // a separate test probes that.
        if raw > u64::MAX - 0x20_0000 {
            return raw - 0x20_0000;
        }
        return raw;
    }
    pick(b, &RING_BASES)
}

/// Writes one descriptor into the ring whose base and length registers say where.
fn nic_descriptor(b: &mut Bytes<'_>, mem: &GuestMemory, base: u64, rdlen: u32, rx: bool) {
    let count = u64::from(rdlen.max(16)) / 16;
    let slot = u64::from(b.u16()) % count;
    let at = base.wrapping_add(slot * 16);
    let mut d = if rx {
        RxDesc {
            addr: nic_buffer(b),
            ..Default::default()
        }
        .to_bytes()
    } else {
        let cmd = match b.u8() % 4 {
            0 => b.u8(),
            1 => tx_cmd::EOP | tx_cmd::RS | tx_cmd::IFCS,
            2 => tx_cmd::RS,
            _ => tx_cmd::EOP | tx_cmd::RS | tx_cmd::DEXT | if b.flag() { 0 } else { 0x10 },
        };
        let length = match b.u8() % 4 {
            0 => b.u16(),
            _ => b.u16() % 1600,
        };
        TxDesc {
            addr: nic_buffer(b),
            length,
            cso: b.u8(),
            cmd,
            status: 0,
            css: b.u8(),
            special: 0,
        }
        .to_bytes()
    };
    if b.u8().is_multiple_of(8) {
        // A context descriptor or garbage: any bytes but the address.
        let tail = b.take(8);
        d[8..8 + tail.len()].copy_from_slice(tail);
    }
    // Ring slots outside RAM (or only partly inside) are simply not written.
    let _ = mem.write_slice(&d, GuestAddress(at));
}

fn frame(b: &mut Bytes<'_>) -> Vec<u8> {
    let len = match b.u8() % 8 {
        0 => usize::from(b.u16() % 20),
        1 => 1500 + usize::from(b.u16() % 3000),
        2 => 16 * 1024 + usize::from(b.u8()),
        _ => 60 + usize::from(b.u16() % 1500),
    };
    let dst: [u8; 6] = match b.u8() % 4 {
        0 => [0xff; 6],
        1 => [0x01, 0, 0x5e, 0, 0, 1],
        2 => [2, 0, 0, 0, 0, 9],
        _ => NIC_MAC,
    };
    let seed = b.u8();
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    let n = f.len().min(6);
    f[..n].copy_from_slice(&dst[..n]);
    f
}

/// What the e1000 target saw.
#[derive(Debug, Default, Clone)]
pub struct E1000Run {
    /// The model's counters at the end.
    pub counters: serde_json::Value,
    /// Frames the model sent to the link.
    pub sent: u64,
}

/// A register value for `r`, mostly meaningful.
fn nic_value(b: &mut Bytes<'_>, r: u32) -> u32 {
    if b.u8().is_multiple_of(8) {
        return b.u32();
    }
    match r {
        reg::RDLEN | reg::TDLEN => match b.u8() % 4 {
            0 => b.u32(),
            _ => u32::from(b.u8() % 16 + 1) * 128,
        },
        reg::RDT | reg::TDT | reg::RDH | reg::TDH => u32::from(b.u8() % 72),
        reg::RCTL => {
            rctl::EN
                | if b.flag() { rctl::BAM } else { 0 }
                | if b.flag() { rctl::UPE | rctl::MPE } else { 0 }
                | if b.flag() { rctl::SECRC } else { 0 }
                | if b.flag() { rctl::LPE } else { 0 }
                | u32::from(b.u8() % 4) << rctl::BSIZE_SHIFT
                | if b.u8().is_multiple_of(4) {
                    rctl::BSEX
                } else {
                    0
                }
                | u32::from(b.u8() % 4) << rctl::RDMTS_SHIFT
        }
        reg::TCTL => tctl::EN | tctl::PSP | if b.flag() { 0 } else { b.u32() & !tctl::EN },
        reg::CTRL => match b.u8() % 4 {
            0 => ctrl::RST,
            1 => ctrl::SLU | ctrl::FD,
            2 => ctrl::PHY_RST | ctrl::SLU,
            _ => b.u32(),
        },
        reg::EERD => hw::eerd::START | u32::from(b.u8() % 80) << hw::eerd::ADDR_SHIFT,
        reg::EECD => u32::from(b.u8() & 0x4f),
        reg::MDIC => {
            let phy = if b.u8().is_multiple_of(4) {
                b.u8() % 32
            } else {
                1
            };
            let op = pick(b, &[hw::mdic::OP_READ, hw::mdic::OP_WRITE, 0, 3 << 26]);
            u32::from(phy) << hw::mdic::PHY_SHIFT
                | u32::from(b.u8() % 32) << hw::mdic::REG_SHIFT
                | op
                | if b.flag() { hw::mdic::INT_EN } else { 0 }
                | u32::from(b.u16())
        }
        reg::ITR | reg::RDTR | reg::RADV | reg::TADV | reg::TIDV => u32::from(b.u16() % 2000),
        _ => u32::from(b.u16()) | u32::from(b.u8() % 4) << 16,
    }
}

/// Fuzzes the 82540EM model: register reads and writes, descriptors in guest RAM,
/// frames from the link, receive pumps and timers. Checks after every step the INTx
/// level against ICR and IMS, and at the end that no DMA reached the canary.
pub fn fuzz_e1000(data: &[u8]) -> E1000Run {
    let mut b = Bytes::new(data);
    let mem = ram(NIC_RAM);
    let canary = plant_canary(&mem, 0, NIC_CANARY_END as usize);
    let (dev_end, mut host) = MemLink::pair(8);
    let irq = Level::new();
    let mut dev = E1000::new(NIC_MAC, Box::new(dev_end), irq.clone(), mem.clone());
    let mitigation = b.u8().is_multiple_of(4);
    dev.set_mitigation(mitigation);
    dev.config_write(
        4,
        &(command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes(),
    );
    let mut rx_base = RING_BASES[0];
    let mut tx_base = RING_BASES[0] + 0x1000;
    let mut run = E1000Run::default();
    // The base registers (low, high) of the receive or the transmit ring.
    let base_regs = |rx: bool| {
        if rx {
            (reg::RDBAL, reg::RDBAH)
        } else {
            (reg::TDBAL, reg::TDBAH)
        }
    };
    let set_base = |dev: &mut E1000, rx: bool, base: u64| {
        let (lo, hi) = base_regs(rx);
        mmio_write(dev, lo, base as u32);
        mmio_write(dev, hi, (base >> 32) as u32);
    };
    set_base(&mut dev, true, rx_base);
    set_base(&mut dev, false, tx_base);
    // A well-set-up device half the time, so inputs reach the data paths at once.
    if b.flag() {
        mmio_write(&mut dev, reg::RDLEN, 16 * 16);
        mmio_write(&mut dev, reg::TDLEN, 16 * 16);
        mmio_write(&mut dev, reg::IMS, hw::icr::ALL);
        mmio_write(&mut dev, reg::RCTL, rctl::EN | rctl::BAM | rctl::SECRC);
        mmio_write(&mut dev, reg::TCTL, tctl::EN | tctl::PSP);
        for i in 0..16 {
            let d = RxDesc {
                addr: NIC_CANARY_END + i * 0x800,
                ..Default::default()
            };
            mem.write_slice(&d.to_bytes(), GuestAddress(rx_base + i * 16))
                .expect("ring");
        }
        mmio_write(&mut dev, reg::RDT, 15);
    }
    let far = Instant::now() + Duration::from_secs(3 * 3600);
    for _ in 0..128 {
        if b.is_empty() {
            break;
        }
        let mut timers_ran = false;
        match b.u8() % 16 {
            0..=4 => {
                let r = pick(&mut b, &NIC_REGS);
                let v = nic_value(&mut b, r);
                mmio_write(&mut dev, r, v);
                if r == reg::CTRL && v & ctrl::RST != 0 {
                    // A reset zeroes the ring bases: the guest puts them back (or they
                    // would point at the canary).
                    set_base(&mut dev, true, rx_base);
                    set_base(&mut dev, false, tx_base);
                }
            }
            5 => {
                let r = pick(&mut b, &NIC_REGS);
                let mut d = [0u8; 4];
                dev.region_read(0, r.into(), &mut d);
            }
            6 => {
                let rx = b.flag();
                let base = nic_ring_base(&mut b);
                if rx {
                    rx_base = base;
                } else {
                    tx_base = base;
                }
                set_base(&mut dev, rx, base);
            }
            7..=9 => {
                let rx = b.flag();
                let (base, len) = if rx {
                    (rx_base, mmio_read(&mut dev, reg::RDLEN))
                } else {
                    (tx_base, mmio_read(&mut dev, reg::TDLEN))
                };
                for _ in 0..1 + b.u8() % 4 {
                    nic_descriptor(&mut b, &mem, base, len, rx);
                }
            }
            10 | 11 => {
                let f = frame(&mut b);
                let _ = host.send_frame(&f);
                if b.flag() {
                    dev.pump_rx();
                }
            }
            12 => {
                dev.pump_rx();
            }
            13 => {
                dev.poll_timers(far);
                timers_ran = true;
            }
            14 => {
                // The guest's command register: bus mastering and INTx disable.
                let mut cmd = command::MEMORY_SPACE;
                if !b.u8().is_multiple_of(4) {
                    cmd |= command::BUS_MASTER;
                }
                if b.u8().is_multiple_of(4) {
                    cmd |= command::INTX_DISABLE;
                }
                dev.config_write(4, &cmd.to_le_bytes());
            }
            _ => {
                // Odd-sized and odd-placed accesses, and the I/O window (its IOADDR
                // lands in the register file once in 2^15: IODATA writes then stay
                // rare enough not to move the rings behind the harness's back).
                let region = usize::from(b.u8() % 3);
                let size = if region == 1 {
                    hw::IO_SIZE
                } else {
                    hw::MMIO_SIZE
                };
                let off = u64::from(b.u32()) % (size + 16);
                let w = width(&mut b, true);
                if b.flag() {
                    dev.region_write(region, off, &b.u64().to_le_bytes()[..w]);
                    // A stray write may have reset the device (CTRL.RST: the bases
                    // read 0) or moved a ring: the guest puts its bases back, as after
                    // a reset through CTRL, or the canary would become a ring.
                    for (rx, base) in [(true, rx_base), (false, tx_base)] {
                        let (lo, hi) = base_regs(rx);
                        let now = u64::from(mmio_read(&mut dev, lo))
                            | u64::from(mmio_read(&mut dev, hi)) << 32;
                        if now != base {
                            set_base(&mut dev, rx, base);
                        }
                    }
                } else {
                    let mut d = [0u8; 8];
                    dev.region_read(region, off, &mut d[..w]);
                }
                while host.recv_timeout(Duration::ZERO).is_some() {
                    run.sent += 1;
                }
            }
        }
        check_nic_irq(&mut dev, &irq, !mitigation || timers_ran);
    }
    while host.recv_timeout(Duration::ZERO).is_some() {
        run.sent += 1;
    }
    assert!(
        canary_intact(&mem, &canary),
        "e1000 DMA wrote outside the rings and buffers the guest gave it"
    );
    run.counters = dev.counters();
    run
}

fn mmio_write(dev: &mut E1000, r: u32, v: u32) {
    dev.region_write(0, r.into(), &v.to_le_bytes());
}

fn mmio_read(dev: &mut E1000, r: u32) -> u32 {
    let mut d = [0u8; 4];
    dev.region_read(0, r.into(), &mut d);
    u32::from_le_bytes(d)
}

/// The INTx level against the cause and mask registers (ICS reads as ICR without
/// clearing it). With mitigation a rising edge may wait for the timer, so the line
/// may be low with a cause pending until the timer has run; it is never high without.
fn check_nic_irq(dev: &mut E1000, irq: &Level, exact: bool) {
    let icr = mmio_read(dev, reg::ICS);
    let ims = mmio_read(dev, reg::IMS);
    let want = icr & ims != 0 && !dev.config().intx_disabled();
    let got = irq.get();
    if exact {
        assert_eq!(got, want, "INTx {got}, ICR {icr:#x} IMS {ims:#x}");
    } else {
        assert!(!got || want, "INTx high, ICR {icr:#x} IMS {ims:#x}");
    }
}

// ---- PIIX3 IDE --------------------------------------------------------------------------

/// Guest RAM of the IDE target.
const IDE_RAM: u64 = 0x10_0000;
/// `[0, IDE_CANARY_END)` and `[IDE_TABLES_END, IDE_BUF_START)`: never pointed at.
const IDE_CANARY_END: u64 = 0x1_0000;
/// PRD tables live in `[IDE_CANARY_END, IDE_TABLES_END)`: table bases are at most
/// 4 KiB (the model's fail-safe) below its end, and only sanitized entries are written
/// there, so whatever the walk reads names a sanitized buffer.
const IDE_TABLES_END: u64 = 0x1_2000;
/// DMA buffers start here and may run past the end of RAM.
const IDE_BUF_START: u64 = 0x2_0000;
/// Sectors of the disk image.
const IDE_SECTORS: u64 = 64;
/// Commands a program issues: the data movers, their setup, and one that aborts.
const IDE_COMMANDS: [u8; 16] = [
    ata::cmd::READ_DMA,
    ata::cmd::WRITE_DMA,
    ata::cmd::READ_DMA_EXT,
    ata::cmd::WRITE_DMA_EXT,
    ata::cmd::READ_SECTORS,
    ata::cmd::WRITE_SECTORS,
    ata::cmd::READ_SECTORS_EXT,
    ata::cmd::WRITE_MULTIPLE,
    ata::cmd::READ_MULTIPLE,
    ata::cmd::SET_MULTIPLE,
    ata::cmd::IDENTIFY,
    ata::cmd::FLUSH_CACHE,
    ata::cmd::SET_FEATURES,
    ata::cmd::READ_VERIFY,
    ata::cmd::READ_NATIVE_MAX_EXT,
    ata::cmd::PACKET,
];

/// A PRD buffer address: in the buffer area (possibly straddling the end of RAM) or
/// outside RAM.
fn ide_buffer(b: &mut Bytes<'_>) -> u32 {
    let raw = match b.u8() % 8 {
        0 => b.u32(),
        1 => (IDE_RAM as u32).wrapping_sub(u32::from(b.u16())),
        _ => IDE_BUF_START as u32 + u32::from(b.u16()) * 8,
    };
    if u64::from(raw) < IDE_BUF_START {
        IDE_BUF_START as u32 + raw % (IDE_RAM - IDE_BUF_START) as u32
    } else {
        raw
    }
}

/// A PRD table base: in the table area, or outside RAM.
fn ide_table(b: &mut Bytes<'_>) -> u32 {
    match b.u8() % 8 {
        0 => {
            let raw = b.u32();
            if u64::from(raw) < IDE_RAM {
                (IDE_CANARY_END as u32 + raw % 0x1000) & !7
            } else {
                raw
            }
        }
        1 => (IDE_RAM - 4) as u32,
        _ => IDE_CANARY_END as u32 + u32::from(b.u8()) * 16,
    }
}

/// A zeroed disk image of a fuzz run, in memory (`memfd_create(2)`): a real file, so
/// the disk code runs as on a host file (`open`, `flock`, `pread`, `pwrite`,
/// `fdatasync`), without the cost of a file system on disk (creating, syncing and
/// unlinking a file per input) and with nothing to clean up after a crash.
pub(super) struct MemImage {
    file: File,
    path: PathBuf,
}

impl MemImage {
    /// An image of `bytes` zero bytes.
    pub(super) fn new(bytes: u64) -> Self {
        // SAFETY: the name is a NUL-terminated string that outlives the call; the
        // flags are valid; no memory is handed over.
        let fd = unsafe { libc::memfd_create(c"fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just opened and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(bytes).expect("image size");
        Self {
            path: PathBuf::from(format!("/proc/self/fd/{fd}")),
            file,
        }
    }

    /// A path that opens the image (as `DiskImage::open` opens a host file) while
    /// this handle lives.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The image's size now.
    pub(super) fn len(&self) -> u64 {
        self.file.metadata().expect("image").len()
    }
}

/// What the IDE target saw.
#[derive(Debug, Default, Clone)]
pub struct IdeRun {
    /// The model's counters at the end.
    pub stats: serde_json::Value,
}

/// Fuzzes the PIIX3 IDE model with a small in-memory disk image ([`MemImage`]): task-file, control and
/// bus-master programs, PRD tables in guest RAM. Checks after every step that BSY is
/// clear unless SRST holds the drives, and at the end that DMA left the canary alone
/// and the image kept its size.
pub fn fuzz_ide(data: &[u8]) -> IdeRun {
    let mut b = Bytes::new(data);
    let size = IDE_SECTORS * SECTOR_SIZE;
    let image = MemImage::new(size);
    let disk = DiskImage::open(
        image.path(),
        DiskOptions {
            read_only: b.u8().is_multiple_of(8),
            ..Default::default()
        },
    )
    .expect("image");
    let mem = ram(IDE_RAM);
    let low = plant_canary(&mem, 0, IDE_CANARY_END as usize);
    let gap = plant_canary(
        &mem,
        IDE_TABLES_END,
        (IDE_BUF_START - IDE_TABLES_END) as usize,
    );
    // Every entry a walk can reach names a buffer (a zero entry would be 64 KiB at 0).
    let filler = ata::PrdEntry {
        addr: IDE_BUF_START as u32,
        count: 512,
        flags: 0,
    };
    let tables: Vec<u8> = (IDE_CANARY_END..IDE_TABLES_END)
        .step_by(8)
        .flat_map(|_| filler.to_bytes())
        .collect();
    mem.write_slice(&tables, GuestAddress(IDE_CANARY_END))
        .expect("table");
    let mut ide = PiixIde::new(Some(disk), Level::new(), Level::new(), mem.clone());
    ide.config_write(bar_offset(4), &0xc001u32.to_le_bytes());
    ide.config_write(4, &(command::IO_SPACE | command::BUS_MASTER).to_le_bytes());
    // The control register last written per channel: SRST holds the drives busy.
    let mut ctl = [0u8; 2];
    for _ in 0..160 {
        if b.is_empty() {
            break;
        }
        let c = usize::from(b.u8().is_multiple_of(8));
        let tf = [REGION_PRIMARY_TASK_FILE, REGION_SECONDARY_TASK_FILE][c];
        let bmo = 8 * c as u64;
        match b.u8() % 12 {
            // A whole command: device, count, LBA, command; DMA ones with a start.
            0..=2 => {
                let dev = ata::device::OBS
                    | ata::device::LBA
                    | if b.u8().is_multiple_of(8) {
                        ata::device::DEV1
                    } else {
                        0
                    };
                ide.region_write(tf, 6, &[dev]);
                let lba48 = b.flag();
                for _ in 0..if lba48 { 2 } else { 1 } {
                    let count = match b.u8() % 4 {
                        0 => b.u8(),
                        _ => b.u8() % 9,
                    };
                    let lba = if b.u8().is_multiple_of(4) {
                        b.u32()
                    } else {
                        u32::from(b.u8()) % (IDE_SECTORS as u32 + 4)
                    };
                    ide.region_write(tf, 1, &[b.u8()]);
                    ide.region_write(tf, 2, &[count]);
                    ide.region_write(tf, 3, &[lba as u8]);
                    ide.region_write(tf, 4, &[(lba >> 8) as u8]);
                    ide.region_write(tf, 5, &[(lba >> 16) as u8]);
                }
                let command = pick(&mut b, &IDE_COMMANDS);
                if b.flag() {
                    ide.region_write(REGION_BUS_MASTER, bmo + 4, &ide_table(&mut b).to_le_bytes());
                }
                let start =
                    ata::bm::command::START | if b.flag() { ata::bm::command::READ } else { 0 };
                let start_first = b.flag();
                if start_first {
                    ide.region_write(REGION_BUS_MASTER, bmo, &[start]);
                }
                ide.region_write(tf, 7, &[command]);
                if !start_first {
                    ide.region_write(REGION_BUS_MASTER, bmo, &[start]);
                }
            }
            // A PRD table.
            3 | 4 => {
                let at = u64::from(ide_table(&mut b));
                let n = 1 + u64::from(b.u8() % 6);
                for i in 0..n {
                    let e = ata::PrdEntry {
                        addr: ide_buffer(&mut b),
                        count: match b.u8() % 4 {
                            0 => b.u16(),
                            1 => 0,
                            _ => 512 * u16::from(b.u8() % 9),
                        },
                        flags: if i + 1 == n || b.u8().is_multiple_of(8) {
                            ata::PRD_EOT
                        } else {
                            0
                        },
                    };
                    // Only inside the table area (a table at the end of RAM is read
                    // there as it is).
                    let a = at + 8 * i;
                    if (IDE_CANARY_END..IDE_TABLES_END - 7).contains(&a) {
                        mem.write_slice(&e.to_bytes(), GuestAddress(a))
                            .expect("table");
                    }
                }
                ide.region_write(REGION_BUS_MASTER, bmo + 4, &(at as u32).to_le_bytes());
            }
            // Bus-master command and status.
            5 => {
                let v = b.u8();
                let off = bmo + pick(&mut b, &[0u64, 2, 2, 1, 3]);
                ide.region_write(REGION_BUS_MASTER, off, &[v]);
            }
            // Control: nIEN, SRST set and cleared, HOB.
            6 => {
                let v = match b.u8() % 4 {
                    0 => ata::control::SRST,
                    1 => ata::control::NIEN,
                    2 => 0,
                    _ => b.u8(),
                };
                ctl[c] = v;
                ide.region_write(
                    [REGION_PRIMARY_CONTROL, REGION_SECONDARY_CONTROL][c],
                    0,
                    &[v],
                );
            }
            // The data port: PIO blocks in and out, 16 or 32 bits at a time.
            7 | 8 => {
                let w = if b.flag() { 2 } else { 4 };
                let words = 1 + usize::from(b.u8()) * 2;
                let write = b.flag();
                let fill = b.u8();
                for _ in 0..words {
                    if write {
                        ide.region_write(tf, 0, &[fill; 4][..w]);
                    } else {
                        let mut d = [0u8; 4];
                        ide.region_read(tf, 0, &mut d[..w]);
                    }
                }
            }
            // Any register, any width, any offset (table base writes stay sanitized).
            9 | 10 => {
                let region = pick(
                    &mut b,
                    &[
                        REGION_PRIMARY_TASK_FILE,
                        REGION_SECONDARY_TASK_FILE,
                        REGION_PRIMARY_CONTROL,
                        REGION_SECONDARY_CONTROL,
                        REGION_BUS_MASTER,
                        ide::REGION_BUS_MASTER + 1,
                    ],
                );
                let off = u64::from(b.u8() % 20);
                let w = width(&mut b, true);
                let v = b.u64().to_le_bytes();
                if b.flag() {
                    let touches_table = region == REGION_BUS_MASTER
                        && (off..off + w as u64).any(|o| o < 16 && (4..8).contains(&(o % 8)));
                    let touches_ctl =
                        matches!(region, REGION_PRIMARY_CONTROL | REGION_SECONDARY_CONTROL)
                            && off == 0;
                    if !touches_table {
                        ide.region_write(region, off, &v[..w]);
                        if touches_ctl {
                            ctl[usize::from(region == REGION_SECONDARY_CONTROL)] = v[0];
                        }
                    }
                } else {
                    let mut d = [0u8; 8];
                    ide.region_read(region, off, &mut d[..w]);
                }
            }
            // Bus mastering on or off in the PCI command register.
            _ => {
                let mut cmd = command::IO_SPACE;
                if !b.u8().is_multiple_of(4) {
                    cmd |= command::BUS_MASTER;
                }
                ide.config_write(4, &cmd.to_le_bytes());
            }
        }
        for (ch, held) in ctl.iter().enumerate() {
            if held & ata::control::SRST != 0 {
                continue;
            }
            let mut s = [0u8];
            ide.region_read(
                [REGION_PRIMARY_CONTROL, REGION_SECONDARY_CONTROL][ch],
                0,
                &mut s,
            );
            assert_eq!(s[0] & ata::status::BSY, 0, "channel {ch}: BSY {:#x}", s[0]);
        }
    }
    assert!(
        canary_intact(&mem, &low),
        "IDE DMA wrote below the PRD tables"
    );
    assert!(
        canary_intact(&mem, &gap),
        "IDE DMA wrote between the PRD tables and the buffers"
    );
    assert_eq!(image.len(), size, "the disk image changed size");
    IdeRun { stats: ide.stats() }
}

// ---- virtio-blk on the virtio-pci transport -------------------------------------------

/// Guest RAM of the virtio fuzz target: rings at 0..64 KiB, buffers up to 512 KiB, a
/// canary above that no descriptor names.
const VIRTIO_RAM: u64 = 1 << 20;
const VIRTIO_RINGS: u64 = 0x1_0000;
const VIRTIO_BUFS: u64 = 0x8_0000;
const VIRTIO_QUEUE: u16 = 16;

/// What a [`fuzz_virtio_blk`] or [`fuzz_virtio_net`] run did.
#[derive(Debug, Clone)]
pub struct VirtioRun {
    /// The transport's and the device's counters at the end.
    pub stats: serde_json::Value,
    /// MSI-X messages sent.
    pub msix_messages: u64,
}

/// A buffer address a descriptor may name: in the buffer area, at its very end, in the
/// rings (a device may write there: the driver's problem, as on hardware), or outside
/// RAM; never in the canary.
fn virtio_addr(b: &mut Bytes<'_>) -> u64 {
    match b.u8() % 8 {
        0 => VIRTIO_RAM + u64::from(b.u16()) * 4096,
        1 => u64::from(b.u16()) % VIRTIO_RINGS,
        2 => VIRTIO_BUFS - 16,
        _ => VIRTIO_RINGS + u64::from(b.u32()) % (VIRTIO_BUFS - VIRTIO_RINGS - 0x1_0000),
    }
}

/// `len` for a descriptor at `addr`, cut so that it never reaches into the canary (a
/// length running past the end of RAM stays: the device must refuse it whole).
fn virtio_len(addr: u64, len: u32) -> u32 {
    let end = addr.saturating_add(u64::from(len));
    if addr < VIRTIO_BUFS && end > VIRTIO_BUFS && end <= VIRTIO_RAM {
        (VIRTIO_BUFS - addr) as u32
    } else {
        len
    }
}

/// MSI-X messages a virtio fuzz run sent.
#[derive(Default)]
struct Messages(AtomicU64);

impl crate::devices::MsiSink for Messages {
    fn send(&self, _address: u64, _data: u32) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Queue `q`'s rings in a virtio fuzz run: descriptors, available, used.
fn virtio_rings(q: u16) -> (u64, u64, u64) {
    let base = 0x1000 + u64::from(q) * 0x3000;
    (base, base + 0x1000, base + 0x2000)
}

/// Writes descriptor `i` of queue `q`.
fn virtio_desc(mem: &GuestMemory, q: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    let _ = mem.write_slice(&d, GuestAddress(virtio_rings(q).0 + 16 * u64::from(i)));
}

/// The driver's side of a virtio fuzz run: each queue's available index.
struct VirtioDriver {
    avail_idx: Vec<u16>,
}

impl VirtioDriver {
    /// Publishes `head` on queue `q` and notifies it.
    fn publish(
        &mut self,
        dev: &mut crate::devices::virtio_pci::VirtioPci,
        mem: &GuestMemory,
        q: u16,
        head: u16,
    ) {
        use crate::devices::virtio_pci::NOTIFY_AT;
        let (_, avail, _) = virtio_rings(q);
        let idx = &mut self.avail_idx[usize::from(q)];
        let slot = u64::from(*idx % VIRTIO_QUEUE);
        let _ = mem.write_obj(head, GuestAddress(avail + 4 + 2 * slot));
        *idx = idx.wrapping_add(1);
        let _ = mem.write_obj(*idx, GuestAddress(avail + 2));
        dev.region_write(0, NOTIFY_AT + 4 * u64::from(q), &q.to_le_bytes());
    }
}

/// The device-specific half of a virtio fuzz run: a plausible request, buffers or
/// frames for the device, from the fuzzer's bytes.
type VirtioAction<'f> = dyn FnMut(
        &mut Bytes<'_>,
        &mut crate::devices::virtio_pci::VirtioPci,
        &GuestMemory,
        &mut VirtioDriver,
    ) + 'f;

/// The transport half of the virtio fuzz targets: register accesses of every width
/// anywhere in BAR 0 and through the configuration-access window, bring-ups of every
/// queue with valid and broken rings and features (mostly `VERSION_1` and a subset of
/// `plausible`), descriptor tables (chains that loop, are indirect, point outside RAM
/// or carry odd lengths), available indices far ahead, notifies, MSI-X table entries,
/// masks and enables, and `action` for the device. Checks after every step that the
/// INTx line is up exactly when ISR is non-zero, INTx is enabled and MSI-X is off, and
/// at the end that the canary above the buffers is intact.
fn fuzz_virtio(
    b: &mut Bytes<'_>,
    device: Box<dyn crate::devices::virtio_pci::VirtioDevice>,
    plausible: u32,
    action: &mut VirtioAction<'_>,
) -> VirtioRun {
    use crate::devices::virtio_pci::{ISR_AT, MSIX_TABLE_AT, NOTIFY_AT, VirtioPci};
    let mem = ram(VIRTIO_RAM);
    let canary = plant_canary(&mem, VIRTIO_BUFS, (VIRTIO_RAM - VIRTIO_BUFS) as usize);
    let line = Level::new();
    let queues = device.num_queues();
    let messages = Arc::new(Messages::default());
    let mut dev = VirtioPci::new(device, line.clone(), mem.clone());
    if !b.u8().is_multiple_of(4) {
        dev = dev.with_msix(messages.clone());
    }
    let mut driver = VirtioDriver {
        avail_idx: vec![0; usize::from(queues)],
    };
    for _ in 0..120 {
        if b.is_empty() {
            break;
        }
        match b.u8() % 11 {
            // Any register, any width, anywhere in BAR 0.
            0 | 1 => {
                let offset = match b.u8() % 5 {
                    0 => u64::from(b.u8()) % 0x40,
                    1 => NOTIFY_AT + u64::from(b.u8() % 12),
                    2 => 0x2000 + u64::from(b.u8()),
                    3 => MSIX_TABLE_AT + u64::from(b.u8()) % 0x40,
                    _ => u64::from(b.u16()),
                };
                let len = [1, 2, 4, 8][usize::from(b.u8() % 4)];
                if b.flag() {
                    let v = b.u64().to_le_bytes();
                    dev.region_write(0, offset, &v[..len]);
                } else {
                    let mut v = [0u8; 8];
                    dev.region_read(0, offset, &mut v[..len]);
                }
            }
            // A bring-up: reset, features, every queue (sometimes misplaced), MSI-X
            // vectors, DRIVER_OK.
            2 => {
                let w = |dev: &mut VirtioPci, o: u64, v: u64, len: usize| {
                    dev.region_write(0, o, &v.to_le_bytes()[..len]);
                };
                w(&mut dev, 0x14, 0, 1);
                w(&mut dev, 0x14, 3, 1);
                let (high, low) = if b.u8().is_multiple_of(4) {
                    (b.u32(), b.u32())
                } else {
                    (1, b.u32() & plausible)
                };
                w(&mut dev, 0x08, 1, 4);
                w(&mut dev, 0x0c, u64::from(high), 4);
                w(&mut dev, 0x08, 0, 4);
                w(&mut dev, 0x0c, u64::from(low), 4);
                w(&mut dev, 0x14, 11, 1);
                w(&mut dev, 0x10, u64::from(b.u8() % 4), 2);
                for q in 0..queues {
                    let (desc, avail, used) = virtio_rings(q);
                    w(&mut dev, 0x16, u64::from(q), 2);
                    w(&mut dev, 0x18, u64::from(VIRTIO_QUEUE), 2);
                    w(&mut dev, 0x1a, u64::from(b.u8() % 4), 2);
                    let shift = if b.u8().is_multiple_of(8) { 1 << 40 } else { 0 };
                    w(&mut dev, 0x20, desc + shift, 8);
                    w(&mut dev, 0x28, avail, 8);
                    w(&mut dev, 0x30, used, 8);
                    w(&mut dev, 0x1c, 1, 2);
                    let _ = mem.write_slice(&[0u8; 0x3000], GuestAddress(desc));
                }
                w(&mut dev, 0x14, 15, 1);
                driver.avail_idx.fill(0);
            }
            // The device's own plausible action.
            3 | 4 => action(b, &mut dev, &mem, &mut driver),
            // A descriptor: address, length, flags (NEXT, WRITE, INDIRECT), next.
            5 | 6 => {
                let q = u16::from(b.u8()) % queues.max(1);
                let i = u16::from(b.u8() % VIRTIO_QUEUE as u8);
                let addr = virtio_addr(b);
                let len = match b.u8() % 4 {
                    0 => b.u32(),
                    1 => 16,
                    2 => 1,
                    _ => u32::from(b.u16()) % 8192,
                };
                let len = virtio_len(addr, len);
                let flags = u16::from(b.u8() & 7);
                let next = u16::from(b.u8() % 20);
                virtio_desc(&mem, q, i, addr, len, flags, next);
            }
            // Publish chains (heads anywhere, the index sometimes far ahead) and notify.
            7 | 8 => {
                let q = u16::from(b.u8()) % queues.max(1);
                let n = b.u8() % 4 + 1;
                for _ in 1..n {
                    let head = u16::from(b.u8() % (VIRTIO_QUEUE as u8 + 2));
                    let (_, avail, _) = virtio_rings(q);
                    let idx = &mut driver.avail_idx[usize::from(q)];
                    let _ = mem.write_obj(
                        head,
                        GuestAddress(avail + 4 + 2 * u64::from(*idx % VIRTIO_QUEUE)),
                    );
                    *idx = idx.wrapping_add(1);
                }
                if b.u8().is_multiple_of(16) {
                    let idx = &mut driver.avail_idx[usize::from(q)];
                    *idx = idx.wrapping_add(b.u16());
                }
                let head = u16::from(b.u8() % (VIRTIO_QUEUE as u8 + 2));
                driver.publish(&mut dev, &mem, q, head);
            }
            // MSI-X: enable, function mask, an entry's mask.
            9 => {
                let control = (u16::from(b.u8() & 0xc0) << 8).to_le_bytes();
                dev.config_write(0xa2, &control);
                let entry = MSIX_TABLE_AT + 16 * u64::from(b.u8() % 4);
                dev.region_write(0, entry, &0xfee0_0000u32.to_le_bytes());
                dev.region_write(0, entry + 8, &u32::from(b.u8()).to_le_bytes());
                dev.region_write(0, entry + 12, &u32::from(b.u8() & 1).to_le_bytes());
            }
            // ISR read, INTx disable toggles, the configuration-access window.
            _ => match b.u8() % 3 {
                0 => {
                    let mut v = [0u8];
                    dev.region_read(0, ISR_AT, &mut v);
                }
                1 => {
                    let cmd =
                        command::MEMORY_SPACE | if b.flag() { command::INTX_DISABLE } else { 0 };
                    dev.config_write(4, &cmd.to_le_bytes());
                }
                _ => {
                    let at = 0x88 + 4 * usize::from(b.u8() % 5);
                    dev.config_write(at, &b.u32().to_le_bytes());
                    let mut v = [0u8; 4];
                    dev.config_read(0x98, &mut v);
                }
            },
        }
        // The line is the ISR status under the command register's INTx disable, and
        // stays low while MSI-X is on.
        let status = dev.config().read32(4) >> 16;
        let pending = status & u32::from(hw_devices::pci::status::INTERRUPT) != 0;
        let msix = dev.config().read32(0xa0);
        let msix_on = msix & 0xff == 0x11 && msix >> 31 != 0;
        assert_eq!(
            line.get(),
            pending && !dev.config().intx_disabled() && !msix_on,
            "INTx line out of step with ISR"
        );
    }
    assert!(
        canary_intact(&mem, &canary),
        "the device wrote where no descriptor pointed"
    );
    VirtioRun {
        stats: dev.stats(),
        msix_messages: messages.0.load(Ordering::Relaxed),
    }
}

/// Fuzzes virtio-blk behind the virtio-pci transport ([`fuzz_virtio`]) with a small
/// in-memory disk image ([`MemImage`]); the device's action is a plausible request (header, data, status,
/// with a header of a real type in the buffer area) or a header written anywhere in
/// the buffer area. Checks at the end that the image kept its size.
pub fn fuzz_virtio_blk(data: &[u8]) -> VirtioRun {
    use crate::devices::virtio_blk::VirtioBlk;
    let mut b = Bytes::new(data);
    let size = 64 * SECTOR_SIZE;
    let image = MemImage::new(size);
    let disk = DiskImage::open(
        image.path(),
        DiskOptions {
            read_only: b.u8().is_multiple_of(4),
            ..Default::default()
        },
    )
    .expect("image");
    let header = |b: &mut Bytes<'_>| {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&[0u32, 1, 4, 8, 99][usize::from(b.u8() % 5)].to_le_bytes());
        h[8..16].copy_from_slice(&u64::from(b.u8() % 80).to_le_bytes());
        h
    };
    // VERSION_1 aside: SEG_MAX, RO, BLK_SIZE, FLUSH, INDIRECT_DESC, EVENT_IDX.
    let run = fuzz_virtio(
        &mut b,
        Box::new(VirtioBlk::new(disk, "fuzz")),
        0x3000_0264,
        &mut |b, dev, mem, driver| {
            let h = header(b);
            let at = VIRTIO_RINGS + u64::from(b.u16() % 0x1000) * 16;
            let _ = mem.write_slice(&h, GuestAddress(at));
            if b.flag() {
                return;
            }
            let i = u16::from(b.u8() % (VIRTIO_QUEUE as u8 - 3));
            let write = h[0] == 1;
            let data_len = 512 * u32::from(b.u8() % 9);
            let data_at = virtio_addr(b);
            let data_len = virtio_len(data_at, data_len);
            virtio_desc(mem, 0, i, at, 16, 1, i + 1);
            virtio_desc(
                mem,
                0,
                i + 1,
                data_at,
                data_len,
                if write { 1 } else { 3 },
                i + 2,
            );
            virtio_desc(mem, 0, i + 2, VIRTIO_BUFS - 1, 1, 2, 0);
            driver.publish(dev, mem, 0, i);
        },
    );
    assert_eq!(image.len(), size, "the disk image changed size");
    run
}

/// Fuzzes virtio-net behind the virtio-pci transport ([`fuzz_virtio`]) on an in-memory
/// link; the device's actions are a plausible transmit (a header, sometimes asking for
/// a checksum at any position or an offload, and a frame of any length in one or two
/// descriptors), receive buffers of any size, and frames of any length from the host,
/// with a receive notify. Checks that every frame the device sent to the host is a
/// whole Ethernet frame within the MTU.
pub fn fuzz_virtio_net(data: &[u8]) -> VirtioRun {
    use crate::devices::virtio_net::{HDR_LEN, MAX_FRAME, VirtioNet};
    let mut b = Bytes::new(data);
    let (dev_end, host) = MemLink::pair(8);
    let host = Mutex::new(host);
    let check_host = |host: &Mutex<MemLink>| {
        let host = host.lock().expect("host");
        while let Some(f) = host.recv_timeout(Duration::ZERO) {
            assert!(
                (14..=MAX_FRAME).contains(&f.len()),
                "sent a {}-byte frame",
                f.len()
            );
        }
    };
    // VERSION_1 aside: CSUM, GUEST_CSUM, MTU, MAC, MRG_RXBUF, STATUS, INDIRECT_DESC,
    // EVENT_IDX.
    let run = fuzz_virtio(
        &mut b,
        Box::new(VirtioNet::new(NIC_MAC, Box::new(dev_end))),
        0x3001_802b,
        &mut |b, dev, mem, driver| match b.u8() % 3 {
            0 => {
                let i = u16::from(b.u8() % (VIRTIO_QUEUE as u8 - 2));
                let mut hdr = [0u8; HDR_LEN];
                if b.u8().is_multiple_of(4) {
                    hdr[0] = b.u8() & 3;
                    hdr[1] = b.u8() % 3;
                    hdr[6..10].copy_from_slice(&b.u32().to_le_bytes());
                    if b.flag() {
                        hdr[6..10].copy_from_slice(&[34, 0, 6, 0]);
                    }
                }
                let len = match b.u8() % 4 {
                    0 => u32::from(b.u16()) % 2000,
                    _ => 60 + u32::from(b.u16()) % 1400,
                };
                let at = VIRTIO_RINGS + u64::from(b.u16() % 0x400) * 64;
                let _ = mem.write_slice(&hdr, GuestAddress(at));
                if b.flag() {
                    virtio_desc(mem, 1, i, at, HDR_LEN as u32 + len.min(4000), 0, 0);
                } else {
                    let data_at = virtio_addr(b);
                    let len = virtio_len(data_at, len);
                    virtio_desc(mem, 1, i, at, HDR_LEN as u32, 1, i + 1);
                    virtio_desc(mem, 1, i + 1, data_at, len, 0, 0);
                }
                driver.publish(dev, mem, 1, i);
            }
            1 => {
                let n = b.u8() % 4 + 1;
                for _ in 0..n {
                    let i = u16::from(b.u8() % VIRTIO_QUEUE as u8);
                    let at = virtio_addr(b);
                    let len = match b.u8() % 3 {
                        0 => u32::from(b.u16()),
                        1 => 2048,
                        _ => u32::from(b.u8()),
                    };
                    let len = virtio_len(at, len);
                    let flags = if b.u8().is_multiple_of(8) { 0 } else { 2 };
                    virtio_desc(mem, 0, i, at, len, flags, 0);
                    driver.publish(dev, mem, 0, i);
                }
            }
            _ => {
                let len = usize::from(b.u16() % 1600);
                let frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let _ = host.lock().expect("host").send_frame(&frame);
                dev.region_write(0, crate::devices::virtio_pci::NOTIFY_AT, &[0, 0]);
                check_host(&host);
            }
        },
    );
    check_host(&host);
    run
}

#[cfg(test)]
mod tests {
    use super::super::Rng;
    use super::*;

    #[test]
    fn pci_config_survives_pseudo_random_guests() {
        let mut rng = Rng(0x0ddb_a115_eed0_0101);
        let (mut maps, mut conflicts, mut accesses) = (0, 0, 0);
        for _ in 0..2000 {
            let run = fuzz_pci_config(&rng.bytes(600));
            maps += run.bar_maps;
            conflicts += run.bar_conflicts;
            accesses += run.bar_accesses;
        }
        // BARs really moved, collided and were reached.
        assert!(
            maps > 2000 * 3 && conflicts > 20 && accesses > 1000,
            "{maps} {conflicts} {accesses}"
        );
    }

    #[test]
    fn e1000_survives_pseudo_random_guests() {
        let mut rng = Rng(0x0ddb_a115_eed0_0102);
        let (mut tx, mut rx, mut sent) = (0, 0, 0);
        for _ in 0..2000 {
            let run = fuzz_e1000(&rng.bytes(900));
            tx += run.counters["tx"]["descriptors"].as_u64().unwrap_or(0);
            rx += run.counters["rx"]["frames"].as_u64().unwrap_or(0);
            sent += run.sent;
        }
        // Descriptors were walked, frames went out and came in.
        assert!(
            tx > 500 && rx > 200 && sent > 100,
            "tx {tx} rx {rx} sent {sent}"
        );
    }

    #[test]
    fn ide_survives_pseudo_random_guests() {
        let mut rng = Rng(0x0ddb_a115_eed0_0103);
        let (mut dma, mut pio) = (0, 0);
        for _ in 0..2000 {
            let run = fuzz_ide(&rng.bytes(700));
            dma += run.stats["dma_bytes_read"].as_u64().unwrap_or(0)
                + run.stats["dma_bytes_written"].as_u64().unwrap_or(0);
            pio += run.stats["pio_bytes_in"].as_u64().unwrap_or(0)
                + run.stats["pio_bytes_out"].as_u64().unwrap_or(0);
        }
        assert!(dma > 0 && pio > 0, "dma {dma} pio {pio}");
    }

    #[test]
    fn virtio_blk_survives_pseudo_random_guests() {
        let mut rng = Rng(0x0ddb_a115_eed0_0104);
        let (mut notifies, mut served) = (0, 0);
        for _ in 0..2000 {
            let run = fuzz_virtio_blk(&rng.bytes(900));
            notifies += run.stats["transport"]["notifies"].as_u64().unwrap_or(0);
            let d = &run.stats["device"];
            served += ["reads", "writes", "flushes", "get_ids", "unsupported"]
                .iter()
                .map(|k| d[*k].as_u64().unwrap_or(0))
                .sum::<u64>();
        }
        // Notifies arrived and requests were really served.
        assert!(notifies > 1000 && served > 50, "{notifies} {served}");
    }

    #[test]
    fn virtio_net_survives_pseudo_random_guests() {
        let mut rng = Rng(0x0ddb_a115_eed0_0105);
        let (mut tx, mut rx, mut bad, mut msix) = (0, 0, 0, 0);
        for _ in 0..2000 {
            let run = fuzz_virtio_net(&rng.bytes(900));
            let d = &run.stats["device"]["net"];
            tx += d["tx_frames"].as_u64().unwrap_or(0);
            rx += d["rx_frames"].as_u64().unwrap_or(0);
            bad += d["bad_tx"].as_u64().unwrap_or(0);
            msix += run.msix_messages;
        }
        // Frames really went both ways, hostile ones were refused, messages were sent.
        assert!(
            tx > 100 && rx > 100 && bad > 50 && msix > 10,
            "tx {tx} rx {rx} bad {bad} msix {msix}"
        );
    }

    #[test]
    fn short_and_empty_inputs_are_fine() {
        for len in 0..48 {
            let input: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
            fuzz_pci_config(&input);
            fuzz_e1000(&input);
            fuzz_ide(&input);
            fuzz_virtio_blk(&input);
            fuzz_virtio_net(&input);
        }
    }

    /// Regression (a harness defect `scripts/fuzz.sh` found at 513,511 executions): an
    /// 8-byte write of all ones at offset 0 sets CTRL.RST, which zeroes the ring bases;
    /// the harness put them back only after a reset through its CTRL register path, so
    /// the guest it plays enabled receive on a ring at address 0, in the canary, and
    /// the device rightly used it. The input is kept among the seeds.
    #[test]
    fn a_stray_reset_gets_the_ring_bases_back() {
        let input =
            include_bytes!("../../fuzz/seeds/e1000/e1032434af17eb95a49d656db4b7bb14ca7f2ee9");
        // The assertion is fuzz_e1000's own: the canary around the rings is intact.
        let run = fuzz_e1000(input);
        assert!(run.counters["rx"].is_object(), "{}", run.counters);
    }

    /// A receive ring the guest puts at the top of the 64-bit address space: the
    /// descriptors past 2^64 are not guest RAM at address 0 and up.
    #[test]
    fn a_ring_wrapping_past_2_64_touches_no_ram() {
        let mem = ram(NIC_RAM);
        let canary = plant_canary(&mem, 0, NIC_CANARY_END as usize);
        let (dev_end, mut host) = MemLink::pair(8);
        let mut dev = E1000::new(NIC_MAC, Box::new(dev_end), Level::new(), mem.clone());
        dev.config_write(
            4,
            &(command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes(),
        );
        mmio_write(&mut dev, reg::RDBAL, 0xffff_ff00);
        mmio_write(&mut dev, reg::RDBAH, 0xffff_ffff);
        mmio_write(&mut dev, reg::RDLEN, 0x200);
        mmio_write(&mut dev, reg::RDH, 16);
        mmio_write(&mut dev, reg::RDT, 20);
        mmio_write(&mut dev, reg::RCTL, rctl::EN | rctl::BAM | rctl::SECRC);
        host.send_frame(&[0xff; 64]).expect("send");
        dev.pump_rx();
        assert!(canary_intact(&mem, &canary), "{}", dev.counters());
    }
}
