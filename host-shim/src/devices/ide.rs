//! The PIIX3 IDE controller (Intel 82371SB function 1, 8086:7010) in compatibility
//! mode, with one ATA disk: the model the guest's `hw_devices::ata` driver (and Linux's
//! `ata_piix`) drives.
//!
//! Behaviour follows QEMU's `hw/ide/core.c`, `hw/ide/pci.c` and `hw/ide/piix.c`
//! (layouts from `hw_devices::ata`, ATA/ATAPI-6 and SFF-8038i):
//! - PCI: class 01/01 prog-if 0x80 (both channels in compatibility mode, bus master
//!   capable), BAR4 the 16-byte bus-master block, interrupt pin 0. The task files and
//!   control ports are fixed legacy ranges ([`PciDevice::legacy_ranges`]): primary
//!   0x1F0 (8) + 0x3F6 (1) on ISA IRQ 14, secondary 0x170 + 0x376 on IRQ 15.
//! - Drives: only the primary master holds a disk. An absent drive reads as QEMU's
//!   do: a channel without drives reads 0 on every register; an absent slave reads 0
//!   in Status and Error, its signature after reset is 0xFF/0xFF, and commands to it
//!   are ignored. Linux's probe therefore skips them.
//! - Task file: writes go to both drives; writes other than Command are ignored while
//!   BSY or DRQ; Command is ignored while BSY or DRQ. Device control bit HOB selects
//!   the previous (LBA48 high-order) byte on reads; any register write clears HOB.
//! - Interrupts: the device raises INTRQ on completion (and per PIO block) unless nIEN
//!   is set (then, as in QEMU, nothing is remembered); reading Status (not Alternate
//!   Status) and writing Command lower it. INTRQ also sets the bus-master Interrupt
//!   bit. The ISA line is driven as a level through [`IrqLine`].
//! - SRST: setting it makes both drives BSY and cancels any transfer; clearing it
//!   resets them (registers, the ATA signature 01/01/00/00, diagnostic code 0x01,
//!   DRDY|DSC) and raises INTRQ (QEMU runs EXECUTE DEVICE DIAGNOSTIC after reset).
//! - Commands: IDENTIFY (model "PVH-SHIM HARDDISK", LBA28 and LBA48 sizes, MWDMA0-2
//!   and UDMA0-5 with UDMA5 selected, write cache and FLUSH CACHE (EXT)), READ/WRITE
//!   SECTORS (EXT) by 512-byte DRQ blocks, READ/WRITE MULTIPLE (EXT) by the multiple
//!   count (SET MULTIPLE, 16 at most), READ/WRITE DMA (EXT), FLUSH CACHE (EXT), SET
//!   FEATURES (write cache, transfer mode, QEMU's list of no-ops), READ NATIVE MAX
//!   (EXT), READ VERIFY, CHECK POWER MODE, EXECUTE DEVICE DIAGNOSTIC, and the no-ops
//!   INITIALIZE DEVICE PARAMETERS, RECALIBRATE, SEEK, standby/idle/sleep, SECURITY
//!   FREEZE LOCK. Anything else (IDENTIFY PACKET, PACKET, DEVICE RESET, SMART, ...) is
//!   aborted (ERR, ABRT), which is how a host tells a disk from a packet device. LBA28
//!   count 0 means 256 sectors, LBA48 count 0 means 65536.
//! - Errors: an address beyond the disk is ERR with IDNF (QEMU reports ABRT; ATA says
//!   IDNF); a host I/O error, a write to a read-only image or a failed flush is ERR
//!   with ABRT, as QEMU's `ide_rw_error`.
//! - Data port: 16- and 32-bit accesses each move their bytes of the current DRQ
//!   block (KVM hands a `rep insw` over as several accesses; each is handled on its
//!   own). 8-bit accesses to it read 0xFF and are dropped, as QEMU's; data accesses
//!   without DRQ, or in the wrong direction, read 0 and are dropped.
//! - Bus master: the PRD table (dword aligned) is read from guest RAM with checked
//!   reads, 8 bytes an entry, count bit 0 ignored and 0 meaning 64 KiB, up to EOT or
//!   QEMU's fail-safe of 4 KiB of table. DMA runs when both the DMA command and the
//!   Start bit are there (in either order). PRDs shorter than the transfer: nothing
//!   moves, Active clears, no interrupt (QEMU). PRDs longer: the transfer completes,
//!   the interrupt is raised and Active stays set. A PRD entry crossing a 64 KiB
//!   boundary is followed as QEMU does (counted in `prd_64k_crossings`). The
//!   direction bit is not used (QEMU). A PRD table or buffer outside guest RAM, or DMA
//!   while the PCI command's bus-master bit is clear, is a failed transfer: bus-master
//!   Error, ERR with ABRT, interrupt, and guest RAM is untouched (every region is
//!   checked before the first byte moves).
//! - Disk I/O is synchronous: it runs inside the register access that starts it (the
//!   Command write for PIO reads, the last data word of a block for PIO writes, the
//!   Command or Start write for DMA), so BSY is never seen. Simple and deterministic;
//!   a slow host disk stalls that vCPU exit. A write completes once `pwrite` returned;
//!   FLUSH CACHE is `fdatasync`; with the write cache disabled (SET FEATURES 0x82)
//!   every write is followed by `fdatasync`.
//!
//! Counters ([`PciDevice::stats`]): register reads and writes by channel and name,
//! commands by name, sectors and bytes read and written, PIO bytes, PRD entries, DMA
//! bytes, interrupts raised (and dropped under nIEN), errors by kind, and the total
//! number of register accesses (each one a vCPU exit in a real run).

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use hw_devices::ata::{
    self, Identify, LBA28_LIMIT, PRD_TABLE_MAX_BYTES, PrdEntry, SECTOR_SIZE, bm, cmd, control,
    device, error, features, id, reg, status,
};
use hw_devices::pci::{VENDOR_INTEL, class};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::pci::{BarKind, ConfigSpace, LEGACY_REGION_BASE, PciDevice, PciIds};
use super::{GuestMemory, IrqLine};
use crate::hostio::disk::DiskImage;

/// PCI device ID of the PIIX3 IDE function.
pub const DEVICE_ID: u16 = 0x7010;
/// Region number of the bus-master block (BAR4).
pub const REGION_BUS_MASTER: usize = bm::BAR_INDEX;
/// Region number of the primary task file (0x1F0, 8 ports).
pub const REGION_PRIMARY_TASK_FILE: usize = LEGACY_REGION_BASE;
/// Region number of the primary control port (0x3F6).
pub const REGION_PRIMARY_CONTROL: usize = LEGACY_REGION_BASE + 1;
/// Region number of the secondary task file (0x170).
pub const REGION_SECONDARY_TASK_FILE: usize = LEGACY_REGION_BASE + 2;
/// Region number of the secondary control port (0x376).
pub const REGION_SECONDARY_CONTROL: usize = LEGACY_REGION_BASE + 3;

/// Model number in IDENTIFY.
pub const MODEL: &str = "PVH-SHIM HARDDISK";
/// Most sectors per READ/WRITE MULTIPLE block (QEMU's `MAX_MULT_SECTORS`).
const MAX_MULT_SECTORS: u8 = 16;
/// CHS translation the model reports (and uses for CHS addresses).
const HEADS: u64 = 16;
const SECTORS_PER_TRACK: u64 = 63;
/// Bounce buffer of a DMA transfer: the disk is read or written in pieces this big.
const DMA_CHUNK: usize = 64 * 1024;
/// The transfer mode selected at power-on: UDMA5 (as QEMU's IDENTIFY word 88).
const DEFAULT_XFER: u8 = features::XFER_UDMA | 5;

/// Register names of the task file, read side, then write side.
const TF_READ: [&str; 8] = [
    "data",
    "error",
    "sector_count",
    "lba_low",
    "lba_mid",
    "lba_high",
    "device",
    "status",
];
const TF_WRITE: [&str; 8] = [
    "data",
    "features",
    "sector_count",
    "lba_low",
    "lba_mid",
    "lba_high",
    "device",
    "command",
];
const BM_REGS: [&str; 4] = ["bm_command", "bm_status", "bm_prd_table", "bm_reserved"];
const CHANNEL: [&str; 2] = ["primary", "secondary"];

/// Counters of one model.
#[derive(Default)]
struct Stats {
    tf_reads: [[u64; 8]; 2],
    tf_writes: [[u64; 8]; 2],
    ctl_reads: [u64; 2],
    ctl_writes: [u64; 2],
    bm_reads: [[u64; 4]; 2],
    bm_writes: [[u64; 4]; 2],
    invalid_accesses: u64,
    accesses: u64,
    commands: BTreeMap<u8, u64>,
    sectors_read: u64,
    sectors_written: u64,
    pio_bytes_in: u64,
    pio_bytes_out: u64,
    prds: u64,
    prd_64k_crossings: u64,
    dma_bytes_read: u64,
    dma_bytes_written: u64,
    flushes: u64,
    interrupts: u64,
    interrupts_masked: u64,
    errors: BTreeMap<&'static str, u64>,
}

impl Stats {
    fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// What the data port is doing for a drive (QEMU's `end_transfer_func`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pio {
    /// No data phase.
    Idle,
    /// IDENTIFY data out; then done.
    Identify,
    /// Read data out; when the block is drained, the next one (if `remaining`).
    Read {
        lba: u64,
        remaining: u32,
        per_block: u32,
        lba48: bool,
    },
    /// Write data in; when the block is full, it goes to disk (`remaining` counts it).
    Write {
        lba: u64,
        remaining: u32,
        per_block: u32,
        lba48: bool,
    },
}

/// One drive position: its registers, and its disk if present.
struct Drive {
    disk: Option<DiskImage>,
    sectors: u64,
    serial: String,
    feature: u8,
    hob_feature: u8,
    nsector: u8,
    hob_nsector: u8,
    sector: u8,
    hob_sector: u8,
    lcyl: u8,
    hob_lcyl: u8,
    hcyl: u8,
    hob_hcyl: u8,
    select: u8,
    status: u8,
    error: u8,
    mult_sectors: u8,
    write_cache: bool,
    xfer: u8,
    pio: Pio,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl Drive {
    fn new(disk: Option<DiskImage>, serial: String) -> Self {
        let sectors = disk.as_ref().map_or(0, DiskImage::sectors);
        let mut d = Self {
            disk,
            sectors,
            serial,
            feature: 0,
            hob_feature: 0,
            nsector: 0,
            hob_nsector: 0,
            sector: 0,
            hob_sector: 0,
            lcyl: 0,
            hob_lcyl: 0,
            hcyl: 0,
            hob_hcyl: 0,
            select: device::OBS,
            status: 0,
            error: 0,
            mult_sectors: MAX_MULT_SECTORS,
            write_cache: true,
            xfer: DEFAULT_XFER,
            pio: Pio::Idle,
            buf: vec![0; usize::from(MAX_MULT_SECTORS) * SECTOR_SIZE],
            pos: 0,
            end: 0,
        };
        d.reset();
        d.error = error::DIAG_PASSED;
        d
    }

    fn present(&self) -> bool {
        self.disk.is_some()
    }

    /// QEMU's `ide_reset` then `ide_set_signature`.
    fn reset(&mut self) {
        self.mult_sectors = MAX_MULT_SECTORS;
        (self.feature, self.error, self.nsector, self.sector) = (0, 0, 0, 0);
        (self.lcyl, self.hcyl) = (0, 0);
        (self.hob_feature, self.hob_nsector, self.hob_sector) = (0, 0, 0);
        (self.hob_lcyl, self.hob_hcyl) = (0, 0);
        self.select = device::OBS;
        self.status = status::DRDY | status::DSC;
        self.stop_transfer();
        self.set_signature();
    }

    fn set_signature(&mut self) {
        self.select &= !device::HEAD_MASK;
        self.nsector = 1;
        self.sector = 1;
        let sig = if self.present() { 0 } else { 0xff };
        self.lcyl = sig;
        self.hcyl = sig;
    }

    fn stop_transfer(&mut self) {
        self.pio = Pio::Idle;
        self.pos = 0;
        self.end = 0;
        self.status &= !status::DRQ;
    }

    fn start_transfer(&mut self, len: usize, pio: Pio) {
        self.pio = pio;
        self.pos = 0;
        self.end = len;
        if self.status & status::ERR == 0 {
            self.status |= status::DRQ;
        }
    }

    fn abort(&mut self) {
        self.status = status::DRDY | status::ERR;
        self.error = error::ABRT;
    }

    fn idnf(&mut self) {
        self.status = status::DRDY | status::ERR;
        self.error = error::IDNF;
    }

    fn cylinders(&self) -> u64 {
        (self.sectors / (HEADS * SECTORS_PER_TRACK)).clamp(1, 16383)
    }

    /// The sector count of the command (QEMU's `ide_cmd_lba48_transform`).
    fn count(&self, lba48: bool) -> u32 {
        if lba48 {
            match u32::from(self.hob_nsector) << 8 | u32::from(self.nsector) {
                0 => ata::LBA48_MAX_COUNT,
                n => n,
            }
        } else {
            match self.nsector {
                0 => ata::LBA28_MAX_COUNT,
                n => u32::from(n),
            }
        }
    }

    /// The address in the task file; `None` for a CHS address with sector 0.
    fn get_sector(&self, lba48: bool) -> Option<u64> {
        let b = |v: u8, s: u32| u64::from(v) << s;
        if self.select & device::LBA != 0 {
            if lba48 {
                Some(
                    b(self.hob_hcyl, 40)
                        | b(self.hob_lcyl, 32)
                        | b(self.hob_sector, 24)
                        | b(self.hcyl, 16)
                        | b(self.lcyl, 8)
                        | b(self.sector, 0),
                )
            } else {
                Some(
                    b(self.select & device::HEAD_MASK, 24)
                        | b(self.hcyl, 16)
                        | b(self.lcyl, 8)
                        | b(self.sector, 0),
                )
            }
        } else {
            let cyl = b(self.hcyl, 8) | b(self.lcyl, 0);
            let head = u64::from(self.select & device::HEAD_MASK);
            let s = u64::from(self.sector).checked_sub(1)?;
            Some((cyl * HEADS + head) * SECTORS_PER_TRACK + s)
        }
    }

    /// Writes `lba` back into the task file (QEMU's `ide_set_sector`).
    fn set_sector(&mut self, lba: u64, lba48: bool) {
        if self.select & device::LBA != 0 {
            if lba48 {
                self.hob_hcyl = (lba >> 40) as u8;
                self.hob_lcyl = (lba >> 32) as u8;
                self.hob_sector = (lba >> 24) as u8;
            } else {
                self.select = (self.select & 0xf0) | ((lba >> 24) as u8 & device::HEAD_MASK);
            }
            self.hcyl = (lba >> 16) as u8;
            self.lcyl = (lba >> 8) as u8;
            self.sector = lba as u8;
        } else {
            let cyl = lba / (HEADS * SECTORS_PER_TRACK);
            let r = lba % (HEADS * SECTORS_PER_TRACK);
            self.hcyl = (cyl >> 8) as u8;
            self.lcyl = cyl as u8;
            self.select = (self.select & 0xf0) | ((r / SECTORS_PER_TRACK) as u8 & 0x0f);
            self.sector = (r % SECTORS_PER_TRACK + 1) as u8;
        }
    }

    fn in_range(&self, lba: u64, count: u32) -> bool {
        lba.checked_add(u64::from(count))
            .is_some_and(|end| end <= self.sectors)
    }

    /// IDENTIFY DEVICE as the drive's state is now (QEMU's `ide_identify`).
    fn identify(&self) -> Identify {
        let mut d = Identify::default();
        let w = &mut d.0;
        let cyl = self.cylinders();
        w[id::CONFIG] = 0x0040; // fixed, non-removable
        w[id::CYLINDERS] = cyl as u16;
        w[id::HEADS] = HEADS as u16;
        w[4] = (512 * SECTORS_PER_TRACK) as u16;
        w[5] = 512;
        w[id::SECTORS_PER_TRACK] = SECTORS_PER_TRACK as u16;
        w[20] = 3; // buffer type
        w[21] = 512; // cache size
        w[22] = 4; // ECC bytes
        w[id::MAX_MULTIPLE] = 0x8000 | u16::from(MAX_MULT_SECTORS);
        w[48] = 1; // doubleword I/O
        w[id::CAPABILITIES] = id::CAP_IORDY | id::CAP_LBA | id::CAP_DMA;
        w[51] = 0x200;
        w[52] = 0x200;
        w[id::FIELD_VALID] = 0x7;
        w[54] = cyl as u16;
        w[55] = HEADS as u16;
        w[56] = SECTORS_PER_TRACK as u16;
        let chs = cyl * HEADS * SECTORS_PER_TRACK;
        w[57] = chs as u16;
        w[58] = (chs >> 16) as u16;
        if self.mult_sectors != 0 {
            w[id::MULTIPLE_SETTING] = 0x100 | u16::from(self.mult_sectors);
        }
        let lba28 = self.sectors.min(LBA28_LIMIT - 1);
        w[id::LBA28_SECTORS] = lba28 as u16;
        w[id::LBA28_SECTORS + 1] = (lba28 >> 16) as u16;
        let (mode, n) = (self.xfer >> 3, self.xfer & 7);
        let sel = |m| if mode == m { 1u16 << (n + 8) } else { 0 };
        w[62] = 0x07 | sel(0x02);
        w[id::MWDMA_MODES] = 0x07 | sel(0x04);
        w[id::PIO_MODES] = 0x03;
        w[65..69].copy_from_slice(&[120; 4]);
        w[id::MAJOR_VERSION] = 0xf0;
        w[81] = 0x16;
        w[id::COMMAND_SET_1] = id::CS1_NOP | id::CS1_WRITE_CACHE;
        let cs2 = id::CS2_LBA48 | id::CS2_FLUSH | id::CS2_FLUSH_EXT;
        w[id::COMMAND_SET_2] = id::VALID | cs2;
        w[id::COMMAND_SET_EXT] = id::VALID;
        w[id::ENABLED_1] = id::CS1_NOP
            | if self.write_cache {
                id::CS1_WRITE_CACHE
            } else {
                0
            };
        w[id::ENABLED_2] = cs2;
        w[id::ENABLED_EXT] = id::VALID;
        w[id::UDMA_MODES] = 0x3f | sel(0x08);
        w[id::HW_RESET_RESULT] = 0x6001;
        for i in 0..4 {
            w[id::LBA48_SECTORS + i] = (self.sectors >> (16 * i)) as u16;
        }
        d.set_string(id::SERIAL, id::SERIAL_WORDS, &self.serial);
        d.set_string(id::FIRMWARE, id::FIRMWARE_WORDS, env!("CARGO_PKG_VERSION"));
        d.set_string(id::MODEL, id::MODEL_WORDS, MODEL);
        d
    }
}

/// A DMA command waiting for (or running on) the bus master.
#[derive(Clone, Copy, Debug)]
struct DmaReq {
    unit: usize,
    write: bool,
    lba: u64,
    count: u32,
    lba48: bool,
}

#[derive(Default)]
struct BusMaster {
    cmd: u8,
    status: u8,
    addr: u32,
    /// Next PRD entry to read (reset to `addr` by Start).
    cur: u64,
}

struct Channel {
    drives: [Drive; 2],
    unit: usize,
    ctrl: u8,
    irq: Arc<dyn IrqLine>,
    line: bool,
    bm: BusMaster,
    dma: Option<DmaReq>,
}

/// Why a DMA transfer failed.
enum DmaFail {
    /// Guest memory unreachable (PRD table or buffer outside RAM, no bus mastering).
    Memory(&'static str),
    /// Address beyond the disk.
    Range,
    /// The host disk failed.
    Io(&'static str),
}

/// The PIIX3 IDE function. See the module documentation.
pub struct PiixIde {
    config: ConfigSpace,
    ch: [Channel; 2],
    mem: GuestMemory,
    stats: Stats,
}

/// The IDE timing registers of the primary (0x40) and secondary (0x42) channel.
const IDETIM: usize = 0x40;

impl PiixIde {
    /// A controller with `primary_master` (if any) as the only disk; the primary
    /// channel interrupts on `irq14`, the secondary on `irq15`; bus-master DMA reaches
    /// `mem`.
    pub fn new(
        primary_master: Option<DiskImage>,
        irq14: Arc<dyn IrqLine>,
        irq15: Arc<dyn IrqLine>,
        mem: GuestMemory,
    ) -> Self {
        let mut config = ConfigSpace::new(PciIds {
            vendor: VENDOR_INTEL,
            device: DEVICE_ID,
            class: class::STORAGE,
            subclass: class::STORAGE_IDE,
            prog_if: 0x80,
            ..Default::default()
        });
        config.add_bar(bm::BAR_INDEX, BarKind::Io, bm::BAR_SIZE);
        config.set_interrupt_pin(0);
        // IDETIM of each channel (0x40 primary, 0x42 secondary), with bit 15 "IDE
        // decode enable" set as firmware leaves it (SeaBIOS writes 0x8000 to both):
        // Linux's ata_piix ignores a channel whose enable bit is clear. The timing bits
        // are the guest's to write and change nothing here.
        config.set_device_specific(IDETIM, &[0x00, 0x80, 0x00, 0x80], &[0xff; 4]);
        let serial = |n: u32| format!("PVHSHIM{n:05}");
        let channel = |master: Option<DiskImage>, base: u32, irq: Arc<dyn IrqLine>| Channel {
            drives: [
                Drive::new(master, serial(base + 1)),
                Drive::new(None, serial(base + 2)),
            ],
            unit: 0,
            ctrl: 0,
            irq,
            line: false,
            bm: BusMaster::default(),
            dma: None,
        };
        let mut ide = Self {
            config,
            ch: [channel(primary_master, 0, irq14), channel(None, 2, irq15)],
            mem,
            stats: Stats::default(),
        };
        // Firmware marks the drives it found DMA capable.
        for c in &mut ide.ch {
            if c.drives[0].present() {
                c.bm.status |= bm::status::DRIVE0_DMA;
            }
        }
        ide
    }

    /// The primary master's disk.
    pub fn disk(&self) -> Option<&DiskImage> {
        self.ch[0].drives[0].disk.as_ref()
    }

    fn set_line(&mut self, c: usize, level: bool) {
        let ch = &mut self.ch[c];
        if ch.line != level {
            ch.line = level;
            ch.irq.set_level(level);
        }
    }

    /// Raises INTRQ unless nIEN masks it (QEMU's `ide_set_irq` through `bmdma_irq`).
    fn raise(&mut self, c: usize) {
        if self.ch[c].ctrl & control::NIEN != 0 {
            self.stats.interrupts_masked += 1;
            return;
        }
        self.stats.interrupts += 1;
        self.ch[c].bm.status |= bm::status::INTERRUPT;
        self.set_line(c, true);
    }

    fn bus_empty(&self, c: usize) -> bool {
        !self.ch[c].drives.iter().any(Drive::present)
    }

    /// Whether reads of Status/Error on `c` give 0: no drives, or an absent slave.
    fn reads_absent(&self, c: usize) -> bool {
        let ch = &self.ch[c];
        self.bus_empty(c) || (ch.unit == 1 && !ch.drives[1].present())
    }

    // ---- task file ---------------------------------------------------------------

    fn tf_read_byte(&mut self, c: usize, r: u16) -> u8 {
        let hob = self.ch[c].ctrl & control::HOB != 0;
        let empty = self.bus_empty(c);
        let absent = self.reads_absent(c);
        let d = &self.ch[c].drives[self.ch[c].unit];
        let pick = |cur: u8, prev: u8| match (empty, hob) {
            (true, _) => 0,
            (false, false) => cur,
            (false, true) => prev,
        };
        match r {
            reg::DATA => 0xff,
            reg::ERROR if absent => 0,
            reg::ERROR => pick(d.error, d.hob_feature),
            reg::SECTOR_COUNT => pick(d.nsector, d.hob_nsector),
            reg::LBA_LOW => pick(d.sector, d.hob_sector),
            reg::LBA_MID => pick(d.lcyl, d.hob_lcyl),
            reg::LBA_HIGH => pick(d.hcyl, d.hob_hcyl),
            reg::DEVICE => pick(d.select, d.select),
            reg::STATUS => {
                let v = if absent { 0 } else { d.status };
                self.set_line(c, false);
                v
            }
            _ => 0xff,
        }
    }

    fn tf_write_byte(&mut self, c: usize, r: u16, v: u8) {
        let ch = &mut self.ch[c];
        let busy = ch.drives[ch.unit].status & (status::BSY | status::DRQ) != 0;
        if r != reg::COMMAND && busy {
            self.stats.error("task_file_write_while_busy");
            return;
        }
        if r != reg::DATA {
            ch.ctrl &= !control::HOB;
        }
        for d in &mut ch.drives {
            match r {
                reg::FEATURES => (d.hob_feature, d.feature) = (d.feature, v),
                reg::SECTOR_COUNT => (d.hob_nsector, d.nsector) = (d.nsector, v),
                reg::LBA_LOW => (d.hob_sector, d.sector) = (d.sector, v),
                reg::LBA_MID => (d.hob_lcyl, d.lcyl) = (d.lcyl, v),
                reg::LBA_HIGH => (d.hob_hcyl, d.hcyl) = (d.hcyl, v),
                reg::DEVICE => d.select = v | device::OBS,
                _ => {}
            }
        }
        match r {
            reg::DEVICE => ch.unit = usize::from(v & device::DEV1 != 0),
            reg::COMMAND => {
                self.set_line(c, false);
                self.exec(c, v);
            }
            _ => {}
        }
    }

    /// Reads `data.len()` (2 or 4) bytes of the current data-out block.
    fn data_read(&mut self, c: usize, data: &mut [u8]) {
        data.fill(0);
        let unit = self.ch[c].unit;
        let d = &mut self.ch[c].drives[unit];
        let out = matches!(d.pio, Pio::Identify | Pio::Read { .. });
        if d.status & status::DRQ == 0 || !out {
            self.stats.error("data_read_without_drq");
            return;
        }
        let Some(src) = d
            .buf
            .get(d.pos..d.pos + data.len())
            .filter(|_| d.pos + data.len() <= d.end)
        else {
            self.stats.error("data_read_past_block");
            return;
        };
        data.copy_from_slice(src);
        d.pos += data.len();
        self.stats.pio_bytes_out += data.len() as u64;
        if d.pos >= d.end {
            d.status &= !status::DRQ;
            self.end_transfer(c, unit);
        }
    }

    /// Takes `data` (2 or 4 bytes) into the current data-in block.
    fn data_write(&mut self, c: usize, data: &[u8]) {
        let unit = self.ch[c].unit;
        let d = &mut self.ch[c].drives[unit];
        if d.status & status::DRQ == 0 || !matches!(d.pio, Pio::Write { .. }) {
            self.stats.error("data_write_without_drq");
            return;
        }
        let (pos, end) = (d.pos, d.end);
        let Some(dst) = d
            .buf
            .get_mut(pos..pos + data.len())
            .filter(|_| pos + data.len() <= end)
        else {
            self.stats.error("data_write_past_block");
            return;
        };
        dst.copy_from_slice(data);
        d.pos += data.len();
        self.stats.pio_bytes_in += data.len() as u64;
        if d.pos >= d.end {
            d.status &= !status::DRQ;
            self.end_transfer(c, unit);
        }
    }

    /// A DRQ block was drained or filled.
    fn end_transfer(&mut self, c: usize, unit: usize) {
        match self.ch[c].drives[unit].pio {
            Pio::Idle | Pio::Identify => self.ch[c].drives[unit].stop_transfer(),
            Pio::Read {
                lba,
                remaining,
                per_block,
                lba48,
            } => self.sector_read(c, unit, lba, remaining, per_block, lba48),
            Pio::Write {
                lba,
                remaining,
                per_block,
                lba48,
            } => self.sector_write(c, unit, lba, remaining, per_block, lba48),
        }
    }

    /// Reads the next PIO block (QEMU's `ide_sector_read`).
    fn sector_read(&mut self, c: usize, unit: usize, lba: u64, rem: u32, per: u32, lba48: bool) {
        let d = &mut self.ch[c].drives[unit];
        d.status = status::DRDY | status::DSC;
        d.error = 0;
        if rem == 0 {
            d.stop_transfer();
            return;
        }
        let n = rem.min(per);
        if !d.in_range(lba, n) {
            d.stop_transfer();
            d.idnf();
            self.stats.error("lba_out_of_range");
            self.raise(c);
            return;
        }
        let len = n as usize * SECTOR_SIZE;
        let r = match d.disk.as_mut() {
            Some(disk) => disk.read_at(lba * SECTOR_SIZE as u64, &mut d.buf[..len]),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        if r.is_err() {
            d.stop_transfer();
            d.abort();
            self.stats.error("disk_read");
            self.raise(c);
            return;
        }
        self.stats.sectors_read += u64::from(n);
        d.set_sector(lba + u64::from(n), lba48);
        d.nsector = d.nsector.wrapping_sub(n as u8);
        d.start_transfer(
            len,
            Pio::Read {
                lba: lba + u64::from(n),
                remaining: rem - n,
                per_block: per,
                lba48,
            },
        );
        self.raise(c);
    }

    /// Writes a filled PIO block (QEMU's `ide_sector_write`).
    fn sector_write(&mut self, c: usize, unit: usize, lba: u64, rem: u32, per: u32, lba48: bool) {
        let d = &mut self.ch[c].drives[unit];
        d.status = status::DRDY | status::DSC;
        let n = rem.min(per);
        if !d.in_range(lba, n) {
            d.stop_transfer();
            d.idnf();
            self.stats.error("lba_out_of_range");
            self.raise(c);
            return;
        }
        let len = n as usize * SECTOR_SIZE;
        let wc = d.write_cache;
        let r = match d.disk.as_mut() {
            Some(disk) => disk
                .write_at(lba * SECTOR_SIZE as u64, &d.buf[..len])
                .and_then(|()| if wc { Ok(()) } else { disk.flush() }),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        if let Err(e) = r {
            d.stop_transfer();
            d.abort();
            self.stats.error(write_error_kind(&e));
            self.raise(c);
            return;
        }
        self.stats.sectors_written += u64::from(n);
        d.set_sector(lba + u64::from(n), lba48);
        d.nsector = d.nsector.wrapping_sub(n as u8);
        let rem = rem - n;
        if rem == 0 {
            d.stop_transfer();
        } else {
            let next = rem.min(per) as usize * SECTOR_SIZE;
            d.start_transfer(
                next,
                Pio::Write {
                    lba: lba + u64::from(n),
                    remaining: rem,
                    per_block: per,
                    lba48,
                },
            );
        }
        self.raise(c);
    }

    // ---- commands ----------------------------------------------------------------

    /// Runs command `v` on the selected drive (QEMU's `ide_exec_cmd`).
    fn exec(&mut self, c: usize, v: u8) {
        let unit = self.ch[c].unit;
        let d = &self.ch[c].drives[unit];
        if unit == 1 && !d.present() {
            self.stats.error("command_to_absent_drive");
            return;
        }
        if d.status & (status::BSY | status::DRQ) != 0 {
            self.stats.error("command_while_busy");
            return;
        }
        *self.stats.commands.entry(v).or_default() += 1;
        if !d.present() {
            self.ch[c].drives[unit].abort();
            self.stats.error("command_without_disk");
            self.raise(c);
            return;
        }
        let d = &mut self.ch[c].drives[unit];
        d.status = status::DRDY | status::BSY;
        d.error = 0;
        // `Some(set_dsc)`: the command completed here; `None`: it finished itself.
        let complete: Option<bool> = match v {
            cmd::IDENTIFY => {
                let bytes = d.identify().to_bytes();
                d.buf[..SECTOR_SIZE].copy_from_slice(&bytes);
                d.status = status::DRDY | status::DSC;
                d.start_transfer(SECTOR_SIZE, Pio::Identify);
                self.raise(c);
                None
            }
            cmd::READ_SECTORS | cmd::READ_SECTORS_NORETRY | cmd::READ_SECTORS_EXT => {
                self.start_pio(c, unit, false, v == cmd::READ_SECTORS_EXT, 1)
            }
            cmd::WRITE_SECTORS
            | cmd::WRITE_SECTORS_NORETRY
            | cmd::WRITE_SECTORS_EXT
            | cmd::WRITE_VERIFY => self.start_pio(c, unit, true, v == cmd::WRITE_SECTORS_EXT, 1),
            cmd::READ_MULTIPLE
            | cmd::READ_MULTIPLE_EXT
            | cmd::WRITE_MULTIPLE
            | cmd::WRITE_MULTIPLE_EXT => {
                let mult = u32::from(d.mult_sectors);
                if mult == 0 {
                    d.abort();
                    Some(false)
                } else {
                    let write = matches!(v, cmd::WRITE_MULTIPLE | cmd::WRITE_MULTIPLE_EXT);
                    let lba48 = matches!(v, cmd::READ_MULTIPLE_EXT | cmd::WRITE_MULTIPLE_EXT);
                    self.start_pio(c, unit, write, lba48, mult)
                }
            }
            cmd::READ_DMA | cmd::READ_DMA_NORETRY | cmd::READ_DMA_EXT => {
                self.start_dma(c, unit, false, v == cmd::READ_DMA_EXT)
            }
            cmd::WRITE_DMA | cmd::WRITE_DMA_NORETRY | cmd::WRITE_DMA_EXT => {
                self.start_dma(c, unit, true, v == cmd::WRITE_DMA_EXT)
            }
            cmd::FLUSH_CACHE | cmd::FLUSH_CACHE_EXT => {
                self.stats.flushes += 1;
                let r = d.disk.as_ref().map(DiskImage::flush);
                if matches!(r, Some(Err(_))) {
                    d.abort();
                    self.stats.error("disk_flush");
                } else {
                    d.status = status::DRDY | status::DSC;
                }
                self.raise(c);
                None
            }
            cmd::SET_FEATURES => {
                match d.feature {
                    features::ENABLE_WRITE_CACHE => d.write_cache = true,
                    features::DISABLE_WRITE_CACHE => {
                        d.write_cache = false;
                        if let Some(Err(_)) = d.disk.as_ref().map(DiskImage::flush) {
                            d.abort();
                            self.stats.error("disk_flush");
                        }
                    }
                    features::SET_TRANSFER_MODE => match d.nsector >> 3 {
                        0x00 | 0x01 | 0x02 | 0x04 | 0x08 => d.xfer = d.nsector,
                        _ => d.abort(),
                    },
                    // QEMU's accepted no-ops: power-on defaults, look-ahead, APM,
                    // acoustic management, vendor NOPs.
                    0xcc | 0x66 | 0xaa | 0x55 | 0x05 | 0x85 | 0x69 | 0x67 | 0x96 | 0x9a | 0x42
                    | 0xc2 => {}
                    _ => d.abort(),
                }
                Some(true)
            }
            cmd::SET_MULTIPLE => {
                let n = d.nsector;
                if n != 0 && (n > MAX_MULT_SECTORS || !n.is_power_of_two()) {
                    d.abort();
                } else {
                    d.mult_sectors = n;
                }
                Some(true)
            }
            cmd::READ_NATIVE_MAX | cmd::READ_NATIVE_MAX_EXT => {
                let max = d.sectors.saturating_sub(1);
                d.set_sector(max, v == cmd::READ_NATIVE_MAX_EXT);
                Some(true)
            }
            cmd::READ_VERIFY
            | cmd::READ_VERIFY_NORETRY
            | cmd::READ_VERIFY_EXT
            | cmd::RECALIBRATE
            | cmd::SEEK
            | cmd::INITIALIZE_DEVICE_PARAMETERS => Some(true),
            cmd::SECURITY_FREEZE_LOCK => {
                d.nsector = 0;
                Some(true)
            }
            cmd::CHECK_POWER_MODE | 0x98 => {
                d.nsector = 0xff;
                Some(true)
            }
            cmd::STANDBY_IMMEDIATE
            | cmd::IDLE_IMMEDIATE
            | cmd::STANDBY
            | cmd::IDLE
            | cmd::SLEEP
            | 0x94..=0x97
            | 0x99 => Some(false),
            cmd::EXECUTE_DIAGNOSTIC => {
                d.set_signature();
                d.status = status::DRDY | status::DSC;
                d.error = error::DIAG_PASSED;
                self.raise(c);
                None
            }
            _ => {
                d.abort();
                self.stats.error("unknown_command");
                Some(false)
            }
        };
        if let Some(set_dsc) = complete {
            let d = &mut self.ch[c].drives[unit];
            d.status &= !status::BSY;
            if d.status & status::ERR != 0 {
                if d.error & error::ABRT != 0 {
                    self.stats.error("command_aborted");
                }
            } else if set_dsc {
                d.status |= status::DSC;
            }
            self.raise(c);
        }
    }

    /// Starts a PIO read or write of the task file's address and count.
    fn start_pio(
        &mut self,
        c: usize,
        unit: usize,
        write: bool,
        lba48: bool,
        per: u32,
    ) -> Option<bool> {
        let d = &mut self.ch[c].drives[unit];
        let count = d.count(lba48);
        let Some(lba) = d.get_sector(lba48) else {
            d.idnf();
            self.stats.error("bad_chs_address");
            return Some(false);
        };
        if write {
            d.status = status::DRDY | status::DSC;
            let n = count.min(per) as usize * SECTOR_SIZE;
            d.start_transfer(
                n,
                Pio::Write {
                    lba,
                    remaining: count,
                    per_block: per,
                    lba48,
                },
            );
        } else {
            self.sector_read(c, unit, lba, count, per, lba48);
        }
        None
    }

    /// A DMA command: runs now if the bus master is started, else when it is.
    fn start_dma(&mut self, c: usize, unit: usize, write: bool, lba48: bool) -> Option<bool> {
        let d = &mut self.ch[c].drives[unit];
        let count = d.count(lba48);
        let Some(lba) = d.get_sector(lba48) else {
            d.idnf();
            self.stats.error("bad_chs_address");
            return Some(false);
        };
        d.status = status::DRDY | status::DSC | status::DRQ;
        self.ch[c].dma = Some(DmaReq {
            unit,
            write,
            lba,
            count,
            lba48,
        });
        if self.ch[c].bm.status & bm::status::ACTIVE != 0 {
            self.run_dma(c);
        }
        None
    }

    // ---- bus master --------------------------------------------------------------

    /// Walks the PRD table for `need` bytes: the regions to use, and whether the
    /// table was longer than the transfer. `Ok(None)`: the table ran out first.
    #[allow(clippy::type_complexity)]
    fn walk_prds(
        &mut self,
        c: usize,
        need: u64,
    ) -> Result<Option<(Vec<(u64, usize)>, bool)>, DmaFail> {
        let base = u64::from(self.ch[c].bm.addr);
        let mut cur = self.ch[c].bm.cur;
        let mut segs = Vec::new();
        let (mut total, mut consumed, mut last) = (0u64, 0u64, false);
        while total < need {
            if last || cur.wrapping_sub(base) >= PRD_TABLE_MAX_BYTES {
                self.ch[c].bm.cur = cur;
                return Ok(None);
            }
            let mut raw = [0u8; 8];
            if self.mem.read_slice(&mut raw, GuestAddress(cur)).is_err() {
                return Err(DmaFail::Memory("prd_table_outside_ram"));
            }
            cur += 8;
            self.stats.prds += 1;
            let e = PrdEntry::from_bytes(raw);
            let len = u64::from(e.bytes());
            last = e.end_of_table();
            let addr = u64::from(e.addr);
            if (addr % ata::PRD_BOUNDARY) + len > ata::PRD_BOUNDARY {
                self.stats.prd_64k_crossings += 1;
            }
            let take = len.min(need - total);
            segs.push((addr, take as usize));
            total += take;
            consumed += len;
        }
        self.ch[c].bm.cur = cur;
        Ok(Some((segs, consumed > need)))
    }

    /// Runs the channel's pending DMA command (QEMU's `ide_dma_cb`, all at once).
    fn run_dma(&mut self, c: usize) {
        let Some(req) = self.ch[c].dma.take() else {
            return;
        };
        let r = self.dma_transfer(c, req);
        let d = &mut self.ch[c].drives[req.unit];
        match r {
            Ok(Some(stay_active)) => {
                d.set_sector(req.lba + u64::from(req.count), req.lba48);
                d.nsector = 0;
                d.status = status::DRDY | status::DSC;
                self.raise(c);
                if !stay_active {
                    self.ch[c].bm.status &= !bm::status::ACTIVE;
                }
            }
            Ok(None) => {
                // PRDs too short: Active drops, no interrupt (QEMU).
                d.status = status::DRDY | status::DSC;
                self.ch[c].bm.status &= !bm::status::ACTIVE;
                self.stats.error("prd_table_short");
            }
            Err(fail) => {
                match fail {
                    DmaFail::Range => {
                        d.idnf();
                        self.stats.error("lba_out_of_range");
                    }
                    DmaFail::Io(kind) => {
                        d.abort();
                        self.stats.error(kind);
                    }
                    DmaFail::Memory(kind) => {
                        d.abort();
                        self.ch[c].bm.status |= bm::status::ERROR;
                        self.stats.error(kind);
                    }
                }
                self.ch[c].bm.status &= !bm::status::ACTIVE;
                self.raise(c);
            }
        }
    }

    /// Moves the data of `req`. `Ok(Some(stay_active))` on success, `Ok(None)` if
    /// the PRD table is too short.
    fn dma_transfer(&mut self, c: usize, req: DmaReq) -> Result<Option<bool>, DmaFail> {
        if !self.config.bus_master() {
            return Err(DmaFail::Memory("dma_without_bus_master"));
        }
        let need = u64::from(req.count) * SECTOR_SIZE as u64;
        let Some((segs, stay_active)) = self.walk_prds(c, need)? else {
            return Ok(None);
        };
        if !self.ch[c].drives[req.unit].in_range(req.lba, req.count) {
            return Err(DmaFail::Range);
        }
        // Every region is checked before a byte moves, so a bad one leaves RAM as it
        // was.
        if !segs
            .iter()
            .all(|&(a, l)| GuestMemoryBackend::check_range(&self.mem, GuestAddress(a), l))
        {
            return Err(DmaFail::Memory("dma_buffer_outside_ram"));
        }
        let mut chunk = vec![0u8; (need as usize).min(DMA_CHUNK)];
        let mut seg = 0usize;
        let mut seg_off = 0usize;
        let mut done = 0u64;
        let d = &mut self.ch[c].drives[req.unit];
        let Some(disk) = d.disk.as_mut() else {
            return Err(DmaFail::Io("command_without_disk"));
        };
        while done < need {
            let len = ((need - done) as usize).min(chunk.len());
            let buf = &mut chunk[..len];
            let offset = req.lba * SECTOR_SIZE as u64 + done;
            if !req.write {
                disk.read_at(offset, buf)
                    .map_err(|_| DmaFail::Io("disk_read"))?;
            }
            // Scatter to / gather from the PRD regions.
            let mut at = 0usize;
            while at < len {
                let (addr, slen) = segs[seg];
                let n = (slen - seg_off).min(len - at);
                let ga = GuestAddress(addr + seg_off as u64);
                let r = if req.write {
                    self.mem.read_slice(&mut buf[at..at + n], ga)
                } else {
                    self.mem.write_slice(&buf[at..at + n], ga)
                };
                r.map_err(|_| DmaFail::Memory("dma_buffer_outside_ram"))?;
                at += n;
                seg_off += n;
                if seg_off == slen {
                    seg += 1;
                    seg_off = 0;
                }
            }
            if req.write {
                disk.write_at(offset, buf)
                    .map_err(|e| DmaFail::Io(write_error_kind(&e)))?;
            }
            done += len as u64;
        }
        if req.write && !d.write_cache {
            disk.flush().map_err(|_| DmaFail::Io("disk_flush"))?;
        }
        let sectors = u64::from(req.count);
        if req.write {
            self.stats.sectors_written += sectors;
            self.stats.dma_bytes_written += need;
        } else {
            self.stats.sectors_read += sectors;
            self.stats.dma_bytes_read += need;
        }
        Ok(Some(stay_active))
    }

    fn bm_read_byte(&self, off: u64) -> u8 {
        let (c, r) = ((off / 8) as usize, off % 8);
        let b = &self.ch[c].bm;
        match r {
            0 => b.cmd,
            2 => b.status,
            4..=7 => (b.addr >> ((r - 4) * 8)) as u8,
            _ => 0,
        }
    }

    fn bm_write_byte(&mut self, off: u64, v: u8) {
        let (c, r) = ((off / 8) as usize, off % 8);
        match r {
            0 => {
                let b = &mut self.ch[c].bm;
                let old = b.cmd;
                b.cmd = v & bm::command::MASK;
                if (old ^ v) & bm::command::START != 0 {
                    if v & bm::command::START == 0 {
                        // Transfers run to completion inside the access that starts
                        // them, so there is nothing to cancel.
                        b.status &= !bm::status::ACTIVE;
                    } else {
                        b.cur = u64::from(b.addr);
                        if b.status & bm::status::ACTIVE == 0 {
                            b.status |= bm::status::ACTIVE;
                            self.run_dma(c);
                        }
                    }
                }
            }
            2 => {
                let b = &mut self.ch[c].bm;
                b.status = (v & bm::status::RW)
                    | (b.status & bm::status::ACTIVE)
                    | (b.status & !v & bm::status::W1C);
            }
            4..=7 => {
                let b = &mut self.ch[c].bm;
                let shift = (r - 4) * 8;
                b.addr = ((b.addr & !(0xff << shift)) | (u32::from(v) << shift)) & !3;
            }
            _ => {}
        }
    }

    // ---- control -----------------------------------------------------------------

    fn ctl_write(&mut self, c: usize, v: u8) {
        let old = self.ch[c].ctrl;
        self.ch[c].ctrl = v;
        if old & control::SRST == 0 && v & control::SRST != 0 {
            let ch = &mut self.ch[c];
            ch.dma = None;
            for d in &mut ch.drives {
                d.stop_transfer();
                d.status |= status::BSY;
            }
        } else if old & control::SRST != 0 && v & control::SRST == 0 {
            let ch = &mut self.ch[c];
            ch.unit = 0;
            for d in &mut ch.drives {
                d.reset();
                d.status = status::DRDY | status::DSC;
                d.error = error::DIAG_PASSED;
            }
            self.raise(c);
        }
    }

    fn alt_status(&self, c: usize) -> u8 {
        if self.reads_absent(c) {
            0
        } else {
            self.ch[c].drives[self.ch[c].unit].status
        }
    }
}

/// The error counter of a failed disk write.
fn write_error_kind(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        "write_to_read_only_disk"
    } else {
        "disk_write"
    }
}

/// A name for a command code in the counters.
fn command_name(v: u8) -> String {
    let known = match v {
        cmd::IDENTIFY => "identify",
        cmd::IDENTIFY_PACKET => "identify_packet",
        cmd::READ_SECTORS | cmd::READ_SECTORS_NORETRY => "read_sectors",
        cmd::READ_SECTORS_EXT => "read_sectors_ext",
        cmd::WRITE_SECTORS | cmd::WRITE_SECTORS_NORETRY => "write_sectors",
        cmd::WRITE_SECTORS_EXT => "write_sectors_ext",
        cmd::READ_MULTIPLE => "read_multiple",
        cmd::READ_MULTIPLE_EXT => "read_multiple_ext",
        cmd::WRITE_MULTIPLE => "write_multiple",
        cmd::WRITE_MULTIPLE_EXT => "write_multiple_ext",
        cmd::READ_DMA | cmd::READ_DMA_NORETRY => "read_dma",
        cmd::READ_DMA_EXT => "read_dma_ext",
        cmd::WRITE_DMA | cmd::WRITE_DMA_NORETRY => "write_dma",
        cmd::WRITE_DMA_EXT => "write_dma_ext",
        cmd::FLUSH_CACHE => "flush_cache",
        cmd::FLUSH_CACHE_EXT => "flush_cache_ext",
        cmd::SET_FEATURES => "set_features",
        cmd::SET_MULTIPLE => "set_multiple",
        cmd::READ_NATIVE_MAX => "read_native_max",
        cmd::READ_NATIVE_MAX_EXT => "read_native_max_ext",
        cmd::INITIALIZE_DEVICE_PARAMETERS => "initialize_device_parameters",
        cmd::EXECUTE_DIAGNOSTIC => "execute_diagnostic",
        cmd::CHECK_POWER_MODE => "check_power_mode",
        _ => return format!("cmd_{v:#04x}"),
    };
    known.to_string()
}

impl PciDevice for PiixIde {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn region_read(&mut self, region: usize, offset: u64, data: &mut [u8]) {
        self.stats.accesses += 1;
        match region {
            REGION_BUS_MASTER if offset < bm::BAR_SIZE => {
                let c = (offset / 8) as usize;
                let name = ((offset % 8) as usize / 2).min(3);
                self.stats.bm_reads[c][name] += 1;
                for (i, b) in data.iter_mut().enumerate() {
                    let o = offset + i as u64;
                    *b = if o < bm::BAR_SIZE {
                        self.bm_read_byte(o)
                    } else {
                        0xff
                    };
                }
            }
            REGION_PRIMARY_TASK_FILE | REGION_SECONDARY_TASK_FILE if offset < 8 => {
                let c = usize::from(region == REGION_SECONDARY_TASK_FILE);
                self.stats.tf_reads[c][offset as usize] += 1;
                if offset == 0 && matches!(data.len(), 2 | 4) {
                    if self.ch[c].drives[self.ch[c].unit].present() {
                        self.data_read(c, data);
                    } else {
                        data.fill(0);
                    }
                    return;
                }
                // Wider accesses to the byte registers split as the bus splits them.
                for (i, b) in data.iter_mut().enumerate() {
                    let o = offset + i as u64;
                    *b = if o < 8 {
                        self.tf_read_byte(c, o as u16)
                    } else {
                        0xff
                    };
                }
            }
            REGION_PRIMARY_CONTROL | REGION_SECONDARY_CONTROL if offset == 0 => {
                let c = usize::from(region == REGION_SECONDARY_CONTROL);
                self.stats.ctl_reads[c] += 1;
                data.fill(0xff);
                if let Some(b) = data.first_mut() {
                    *b = self.alt_status(c);
                }
            }
            _ => {
                self.stats.invalid_accesses += 1;
                data.fill(0xff);
            }
        }
    }

    fn region_write(&mut self, region: usize, offset: u64, data: &[u8]) {
        self.stats.accesses += 1;
        match region {
            REGION_BUS_MASTER if offset < bm::BAR_SIZE => {
                let c = (offset / 8) as usize;
                let name = ((offset % 8) as usize / 2).min(3);
                self.stats.bm_writes[c][name] += 1;
                for (i, &b) in data.iter().enumerate() {
                    let o = offset + i as u64;
                    if o < bm::BAR_SIZE {
                        self.bm_write_byte(o, b);
                    }
                }
            }
            REGION_PRIMARY_TASK_FILE | REGION_SECONDARY_TASK_FILE if offset < 8 => {
                let c = usize::from(region == REGION_SECONDARY_TASK_FILE);
                self.stats.tf_writes[c][offset as usize] += 1;
                if offset == 0 && matches!(data.len(), 2 | 4) {
                    if self.ch[c].drives[self.ch[c].unit].present() {
                        self.data_write(c, data);
                    }
                    return;
                }
                for (i, &b) in data.iter().enumerate() {
                    let o = offset + i as u64;
                    // An 8-bit write to the data port is dropped (QEMU).
                    if (1..8).contains(&o) {
                        self.tf_write_byte(c, o as u16, b);
                    }
                }
            }
            REGION_PRIMARY_CONTROL | REGION_SECONDARY_CONTROL if offset == 0 => {
                let c = usize::from(region == REGION_SECONDARY_CONTROL);
                self.stats.ctl_writes[c] += 1;
                if let Some(&b) = data.first() {
                    self.ctl_write(c, b);
                }
            }
            _ => self.stats.invalid_accesses += 1,
        }
    }

    fn legacy_ranges(&self) -> Vec<(BarKind, u64, u64, usize)> {
        let tf = u64::from(ata::TASK_FILE_LEN);
        vec![
            (
                BarKind::Io,
                ata::PRIMARY_TASK_FILE.into(),
                tf,
                REGION_PRIMARY_TASK_FILE,
            ),
            (
                BarKind::Io,
                ata::PRIMARY_CONTROL.into(),
                1,
                REGION_PRIMARY_CONTROL,
            ),
            (
                BarKind::Io,
                ata::SECONDARY_TASK_FILE.into(),
                tf,
                REGION_SECONDARY_TASK_FILE,
            ),
            (
                BarKind::Io,
                ata::SECONDARY_CONTROL.into(),
                1,
                REGION_SECONDARY_CONTROL,
            ),
        ]
    }

    fn stats(&self) -> serde_json::Value {
        let s = &self.stats;
        let mut reads = serde_json::Map::new();
        let mut writes = serde_json::Map::new();
        for (c, ch) in CHANNEL.iter().enumerate() {
            let put = |m: &mut serde_json::Map<String, serde_json::Value>, n: &str, v: u64| {
                if v != 0 {
                    m.insert(format!("{ch}.{n}"), v.into());
                }
            };
            for (r, (rn, wn)) in TF_READ.iter().zip(TF_WRITE).enumerate() {
                put(&mut reads, rn, s.tf_reads[c][r]);
                put(&mut writes, wn, s.tf_writes[c][r]);
            }
            put(&mut reads, "alt_status", s.ctl_reads[c]);
            put(&mut writes, "device_control", s.ctl_writes[c]);
            for (r, n) in BM_REGS.iter().enumerate() {
                put(&mut reads, n, s.bm_reads[c][r]);
                put(&mut writes, n, s.bm_writes[c][r]);
            }
        }
        // Aliases (the no-retry variants) share a name and add up.
        let mut commands = BTreeMap::<String, u64>::new();
        for (&c, &n) in &s.commands {
            *commands.entry(command_name(c)).or_default() += n;
        }
        serde_json::json!({
            "register_accesses": s.accesses,
            "invalid_accesses": s.invalid_accesses,
            "register_reads": reads,
            "register_writes": writes,
            "commands": commands,
            "sectors_read": s.sectors_read,
            "sectors_written": s.sectors_written,
            "bytes_read": s.sectors_read * SECTOR_SIZE as u64,
            "bytes_written": s.sectors_written * SECTOR_SIZE as u64,
            "pio_bytes_in": s.pio_bytes_in,
            "pio_bytes_out": s.pio_bytes_out,
            "prds": s.prds,
            "prd_64k_crossings": s.prd_64k_crossings,
            "dma_bytes_read": s.dma_bytes_read,
            "dma_bytes_written": s.dma_bytes_written,
            "flushes": s.flushes,
            "interrupts": s.interrupts,
            "interrupts_masked": s.interrupts_masked,
            "errors": s.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostio::disk::DiskOptions;
    use crate::testing::Rng;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    #[derive(Default)]
    struct Line {
        level: AtomicBool,
        rises: AtomicU64,
    }

    impl IrqLine for Line {
        fn set_level(&self, asserted: bool) {
            if asserted && !self.level.swap(true, Ordering::SeqCst) {
                self.rises.fetch_add(1, Ordering::SeqCst);
            } else if !asserted {
                self.level.store(false, Ordering::SeqCst);
            }
        }
    }

    struct Rig {
        ide: PiixIde,
        irq: Arc<Line>,
        path: PathBuf,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn rig(tag: &str, sectors: u64, read_only: bool) -> Rig {
        let path = std::env::temp_dir().join(format!("ide-unit-{}-{tag}.img", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut disk = DiskImage::open(
            &path,
            DiskOptions {
                create_size: Some(sectors * 512),
                ..Default::default()
            },
        )
        .unwrap();
        for s in 0..sectors.min(64) {
            disk.write_at(s * 512, &[s as u8; 512]).unwrap();
        }
        if read_only {
            drop(disk);
            disk = DiskImage::open(
                &path,
                DiskOptions {
                    read_only: true,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let irq = Arc::new(Line::default());
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let ide = PiixIde::new(Some(disk), irq.clone(), Arc::new(Line::default()), mem);
        Rig { ide, irq, path }
    }

    impl Rig {
        fn rb(&mut self, r: u16) -> u8 {
            let mut b = [0u8];
            self.ide
                .region_read(REGION_PRIMARY_TASK_FILE, r.into(), &mut b);
            b[0]
        }
        fn wb(&mut self, r: u16, v: u8) {
            self.ide
                .region_write(REGION_PRIMARY_TASK_FILE, r.into(), &[v]);
        }
        fn alt(&mut self) -> u8 {
            let mut b = [0u8];
            self.ide.region_read(REGION_PRIMARY_CONTROL, 0, &mut b);
            b[0]
        }
        fn ctl(&mut self, v: u8) {
            self.ide.region_write(REGION_PRIMARY_CONTROL, 0, &[v]);
        }
        fn data16(&mut self) -> u16 {
            let mut b = [0u8; 2];
            self.ide.region_read(REGION_PRIMARY_TASK_FILE, 0, &mut b);
            u16::from_le_bytes(b)
        }
        fn data32(&mut self) -> u32 {
            let mut b = [0u8; 4];
            self.ide.region_read(REGION_PRIMARY_TASK_FILE, 0, &mut b);
            u32::from_le_bytes(b)
        }
        fn lba28(&mut self, lba: u32, count: u8, command: u8) {
            self.wb(reg::DEVICE, device::OBS | device::LBA | (lba >> 24) as u8);
            self.wb(reg::SECTOR_COUNT, count);
            self.wb(reg::LBA_LOW, lba as u8);
            self.wb(reg::LBA_MID, (lba >> 8) as u8);
            self.wb(reg::LBA_HIGH, (lba >> 16) as u8);
            self.wb(reg::COMMAND, command);
        }
        fn stat(&self, key: &str) -> serde_json::Value {
            self.ide.stats()[key].clone()
        }
    }

    #[test]
    fn reset_signature_and_absent_drives_read_as_qemu_does() {
        let mut r = rig("sig", 100, false);
        r.ctl(control::SRST);
        assert_ne!(r.alt() & status::BSY, 0, "busy while SRST is held");
        r.ctl(0);
        assert_eq!(r.alt(), status::DRDY | status::DSC);
        assert_eq!(r.rb(reg::ERROR), error::DIAG_PASSED);
        let sig = [2, 3, 4, 5].map(|x| r.rb(x));
        assert_eq!(sig, [1, 1, 0, 0]);
        // The absent slave: Status and Error read 0, its signature is FF/FF.
        r.wb(reg::DEVICE, device::OBS | device::DEV1);
        assert_eq!(r.rb(reg::STATUS), 0);
        assert_eq!(r.alt(), 0);
        assert_eq!(r.rb(reg::ERROR), 0);
        r.ctl(control::SRST);
        r.ctl(0);
        r.wb(reg::DEVICE, device::OBS | device::DEV1);
        assert_eq!((r.rb(reg::LBA_MID), r.rb(reg::LBA_HIGH)), (0xff, 0xff));
        // Commands to it are ignored: no interrupt, nothing changes.
        let rises = r.irq.rises.load(Ordering::SeqCst);
        r.wb(reg::COMMAND, cmd::IDENTIFY);
        assert_eq!(r.irq.rises.load(Ordering::SeqCst), rises);
        // The secondary channel has no drives: everything reads 0.
        for off in 1..8 {
            let mut b = [0xaa];
            r.ide.region_read(REGION_SECONDARY_TASK_FILE, off, &mut b);
            assert_eq!(b[0], 0, "secondary register {off}");
        }
        let mut b = [0xaa];
        r.ide.region_read(REGION_SECONDARY_CONTROL, 0, &mut b);
        assert_eq!(b[0], 0);
    }

    #[test]
    fn both_channels_decode_as_firmware_leaves_them() {
        // Linux's ata_piix skips a channel whose IDETIM decode-enable bit is clear.
        let r = rig("idetim", 100, false);
        let idetim = r.ide.config().read32(IDETIM);
        assert_eq!(idetim & 0x8000_8000, 0x8000_8000, "{idetim:#x}");
    }

    #[test]
    fn identify_describes_the_disk() {
        let mut r = rig("id", 3000, false);
        r.wb(reg::DEVICE, device::OBS);
        r.wb(reg::COMMAND, cmd::IDENTIFY);
        assert_eq!(r.alt(), status::DRDY | status::DSC | status::DRQ);
        let mut bytes = [0u8; 512];
        for c in bytes.chunks_exact_mut(2) {
            c.copy_from_slice(&r.data16().to_le_bytes());
        }
        assert_eq!(r.alt() & status::DRQ, 0, "one block only");
        let id = Identify::from_bytes(&bytes);
        assert_eq!(id.lba28_sectors(), 3000);
        assert_eq!(id.lba48_sectors(), 3000);
        assert!(id.lba48());
        let mut model = [0u8; 40];
        let n = id.string(id::MODEL, id::MODEL_WORDS, &mut model);
        assert_eq!(&model[..n], MODEL.as_bytes());
        assert_ne!(id.0[id::CAPABILITIES] & id::CAP_DMA, 0);
        assert_eq!(id.0[id::UDMA_MODES], 0x3f | 1 << 13);
        // SET FEATURES transfer mode MWDMA2 shows up in the next IDENTIFY.
        r.wb(reg::FEATURES, features::SET_TRANSFER_MODE);
        r.wb(reg::SECTOR_COUNT, features::XFER_MWDMA | 2);
        r.wb(reg::COMMAND, cmd::SET_FEATURES);
        assert_eq!(r.rb(reg::STATUS), status::DRDY | status::DSC);
        r.wb(reg::COMMAND, cmd::IDENTIFY);
        for c in bytes.chunks_exact_mut(4) {
            c.copy_from_slice(&r.data32().to_le_bytes());
        }
        let id = Identify::from_bytes(&bytes);
        assert_eq!(id.0[id::MWDMA_MODES], 0x07 | 1 << 10);
        assert_eq!(id.0[id::UDMA_MODES], 0x3f);
    }

    #[test]
    fn status_read_acks_the_interrupt_alt_status_and_nien_do_not() {
        let mut r = rig("irq", 100, false);
        r.wb(reg::COMMAND, cmd::CHECK_POWER_MODE);
        assert!(r.irq.level.load(Ordering::SeqCst));
        r.alt();
        assert!(
            r.irq.level.load(Ordering::SeqCst),
            "alternate status keeps it"
        );
        assert_eq!(r.rb(reg::SECTOR_COUNT), 0xff);
        assert_eq!(r.rb(reg::STATUS), status::DRDY | status::DSC);
        assert!(!r.irq.level.load(Ordering::SeqCst), "status read drops it");
        // nIEN: no interrupt at all, and the bus-master Interrupt bit stays clear.
        r.ide.region_write(REGION_BUS_MASTER, 2, &[bm::status::W1C]);
        r.ctl(control::NIEN);
        let rises = r.irq.rises.load(Ordering::SeqCst);
        r.wb(reg::COMMAND, cmd::CHECK_POWER_MODE);
        assert_eq!(r.irq.rises.load(Ordering::SeqCst), rises);
        let mut b = [0u8];
        r.ide.region_read(REGION_BUS_MASTER, 2, &mut b);
        assert_eq!(b[0] & bm::status::INTERRUPT, 0);
        assert_eq!(r.stat("interrupts_masked"), 1);
    }

    #[test]
    fn pio_read_write_and_errors() {
        let mut r = rig("pio", 100, false);
        // Read sectors 5 and 6, the first by words, the second by dwords.
        r.lba28(5, 2, cmd::READ_SECTORS);
        assert_ne!(r.rb(reg::STATUS) & status::DRQ, 0);
        for _ in 0..256 {
            assert_eq!(r.data16(), 0x0505);
        }
        for _ in 0..128 {
            assert_eq!(r.data32(), 0x0606_0606);
        }
        assert_eq!(r.rb(reg::STATUS), status::DRDY | status::DSC);
        // Task file writes are ignored while DRQ is up.
        r.lba28(10, 1, cmd::WRITE_SECTORS);
        assert_eq!(r.alt() & status::DRQ, status::DRQ);
        r.wb(reg::LBA_LOW, 77);
        assert_eq!(r.rb(reg::LBA_LOW), 10);
        for _ in 0..128 {
            r.ide
                .region_write(REGION_PRIMARY_TASK_FILE, 0, &0xabcd_1234u32.to_le_bytes());
        }
        assert_eq!(r.rb(reg::STATUS), status::DRDY | status::DSC);
        // The model holds the image's lock: read the file itself.
        let back = std::fs::read(&r.path).unwrap();
        assert_eq!(&back[10 * 512..][..4], &[0x34, 0x12, 0xcd, 0xab]);
        // Beyond the end: ERR with IDNF, and an interrupt.
        r.lba28(100, 1, cmd::READ_SECTORS);
        assert_eq!(r.rb(reg::STATUS), status::DRDY | status::ERR);
        assert_eq!(r.rb(reg::ERROR), error::IDNF);
        // Unknown and packet commands abort.
        for c in [0x00, cmd::IDENTIFY_PACKET, cmd::PACKET, cmd::SMART, 0xff] {
            r.wb(reg::COMMAND, c);
            assert_eq!(r.rb(reg::STATUS), status::DRDY | status::ERR, "cmd {c:#x}");
            assert_eq!(r.rb(reg::ERROR), error::ABRT);
        }
        assert_eq!(r.stat("errors")["lba_out_of_range"], 1);
        // LBA48 registers and HOB read-back; count 0 would mean 65536.
        r.wb(reg::SECTOR_COUNT, 0);
        r.wb(reg::SECTOR_COUNT, 1);
        r.wb(reg::LBA_LOW, 0x12);
        r.wb(reg::LBA_LOW, 3);
        r.ctl(control::HOB);
        assert_eq!(r.rb(reg::LBA_LOW), 0x12);
        r.ctl(0);
        assert_eq!(r.rb(reg::LBA_LOW), 3);
        r.wb(reg::LBA_MID, 0);
        r.wb(reg::LBA_MID, 0);
        r.wb(reg::LBA_HIGH, 0);
        r.wb(reg::LBA_HIGH, 0);
        r.wb(reg::DEVICE, device::OBS | device::LBA);
        r.wb(reg::COMMAND, cmd::READ_SECTORS_EXT);
        assert_eq!(
            r.rb(reg::STATUS),
            status::DRDY | status::ERR,
            "LBA 0x12000003"
        );
        assert_eq!(r.rb(reg::ERROR), error::IDNF);
    }

    #[test]
    fn read_only_disk_refuses_pio_writes() {
        let mut r = rig("ro", 100, true);
        r.lba28(1, 1, cmd::WRITE_SECTORS);
        for _ in 0..256 {
            r.ide.region_write(REGION_PRIMARY_TASK_FILE, 0, &[9, 9]);
        }
        assert_eq!(r.rb(reg::STATUS), status::DRDY | status::ERR);
        assert_eq!(r.rb(reg::ERROR), error::ABRT);
        assert_eq!(r.stat("errors")["write_to_read_only_disk"], 1);
    }

    #[test]
    fn bus_master_registers() {
        let mut r = rig("bm", 100, false);
        let rd = |r: &mut Rig, off: u64| {
            let mut b = [0u8];
            r.ide.region_read(REGION_BUS_MASTER, off, &mut b);
            b[0]
        };
        assert_eq!(rd(&mut r, 2), bm::status::DRIVE0_DMA);
        // Active is read-only; Error/Interrupt are write-1-to-clear.
        r.ide.region_write(REGION_BUS_MASTER, 2, &[0xff]);
        assert_eq!(rd(&mut r, 2), bm::status::RW);
        r.ide
            .region_write(REGION_BUS_MASTER, 4, &0x1234_5677u32.to_le_bytes());
        let mut b = [0u8; 4];
        r.ide.region_read(REGION_BUS_MASTER, 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1234_5674);
        r.ide.region_write(REGION_BUS_MASTER, 0, &[0xff]);
        assert_eq!(rd(&mut r, 0), bm::command::MASK);
        assert_ne!(rd(&mut r, 2) & bm::status::ACTIVE, 0, "start sets Active");
        r.ide.region_write(REGION_BUS_MASTER, 0, &[0]);
        assert_eq!(rd(&mut r, 2) & bm::status::ACTIVE, 0);
        // The secondary channel's block is separate.
        assert_eq!(rd(&mut r, 10), 0);
    }

    #[test]
    fn pci_header_is_a_piix3_ide_in_compatibility_mode() {
        let r = rig("pci", 8, false);
        let c = r.ide.config();
        assert_eq!(c.read32(0), 0x7010_8086);
        assert_eq!(c.read32(8) >> 8, 0x01_01_80);
        assert_eq!(c.interrupt_pin(), 0);
        assert_eq!(c.read32(0x20), 1, "BAR4: I/O");
        let ranges = r.ide.legacy_ranges();
        assert_eq!(ranges.len(), 4);
        assert!(ranges.contains(&(BarKind::Io, 0x3f6, 1, REGION_PRIMARY_CONTROL)));
        assert!(ranges.iter().all(|r| r.3 >= LEGACY_REGION_BASE));
    }

    #[test]
    fn random_register_traffic_never_panics() {
        for seed in [1u64, 0xdead_beef, 42] {
            let mut r = rig(&format!("fuzz{seed}"), 64, false);
            let mut rng = Rng(seed);
            r.ide.config_mut().write(4, &[0x05, 0]); // I/O + bus master
            for _ in 0..20_000 {
                let region = [4, 8, 9, 10, 11, 3][rng.below(6) as usize];
                let offset = rng.below(20);
                let len = [1, 2, 4, 3, 8][rng.below(5) as usize];
                if rng.below(2) == 0 {
                    let mut d = vec![0u8; len];
                    r.ide.region_read(region, offset, &mut d);
                } else {
                    let mut d = vec![0u8; len];
                    rng.fill(&mut d);
                    // Mostly valid commands, so that transfers really start.
                    if region == 8 && offset == 7 && rng.below(2) == 0 {
                        d[0] = [
                            cmd::READ_DMA,
                            cmd::WRITE_DMA,
                            cmd::READ_SECTORS,
                            cmd::WRITE_SECTORS,
                        ][rng.below(4) as usize];
                    }
                    r.ide.region_write(region, offset, &d);
                }
            }
            let s = r.ide.stats();
            assert_eq!(s["register_accesses"], 20_000);
        }
    }
}
