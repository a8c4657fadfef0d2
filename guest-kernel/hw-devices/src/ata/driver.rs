//! The guest's driver for one ATA disk on a PIIX IDE channel in compatibility mode:
//! PIO (READ/WRITE SECTORS) or bus-master DMA (READ/WRITE DMA), implementing
//! `pv_drivers::device::BlockDevice`.
//!
//! - Probe ([`AtaDisk::new`]): soft reset of the channel, the ATA signature, IDENTIFY
//!   DEVICE, checks of what it says (an ATA device, LBA, sane capacities), SET FEATURES
//!   to the best DMA mode in DMA mode, then interrupts enabled.
//! - One command in flight (an IDE channel runs one); [`BlockDevice::submit`] queues up
//!   to [`QUEUE_DEPTH`] requests, [`BlockDevice::kick`] starts the next when idle,
//!   [`BlockDevice::poll`] looks at the device (bus-master status, then the Status
//!   register, whose read acknowledges the interrupt), completes the request and starts
//!   the next. It never waits: a poll that finds the device busy returns.
//! - Addressing: LBA28 whenever the request fits it (`sector + count < 2^28`, as
//!   Linux's `lba_28_ok`), LBA48 otherwise; LBA28 costs four register writes less.
//! - A request moves at most [`MAX_SECTORS`] sectors (128 KiB): one LBA28 command. In
//!   DMA mode the data goes through one contiguous 128 KiB buffer described by a PRD
//!   table of page-sized entries (so none crosses a 64 KiB boundary); both are
//!   allocated once, at probe.
//! - PIO moves 32-bit words when IDENTIFY word 48 offers doubleword I/O.
//! - The device is hostile: every status, error and bus-master bit is checked; a data
//!   phase longer or shorter than asked, or a bus master that stops without finishing,
//!   is [`BlockError::Protocol`] and shuts the driver down; an error the device reports
//!   (ERR, DF, bus-master error) fails that request with [`BlockError::Io`]. Waits are
//!   bounded by counts, never by time: a probe gives up after `spin_limit` status
//!   reads, a command after `poll_limit` polls that found it busy (the driver is then
//!   shut down: no reset-and-retry).
//! - Not done: the ATA 400 ns delays (an emulated device needs none), ATAPI devices,
//!   CHS addressing, READ/WRITE MULTIPLE. The disk cannot say it is read-only, so
//!   `info().read_only` is false and a refused write fails with [`BlockError::Io`].

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use pv_drivers::device::{BlockCompletion, BlockDevice, BlockError, BlockInfo, BlockOp};
use pv_drivers::shmem::SharedMemory;

use super::{
    CONTROL_OFFSET, Identify, LBA28_LIMIT, LBA48_LIMIT, PRD_EOT, PRIMARY_CONTROL,
    PRIMARY_TASK_FILE, PrdEntry, SECONDARY_CONTROL, SECONDARY_TASK_FILE, SECTOR_SIZE, bm, cmd,
    control, device, features, id, reg, status,
};
use crate::{DmaMemory, PAGE_SIZE, PortIo};

/// Requests queued at once (one runs on the device, the others wait).
pub const QUEUE_DEPTH: usize = 32;
/// Sectors one request moves at most (the LBA28 maximum).
pub const MAX_SECTORS: u32 = 256;
/// Bytes one request moves at most.
pub const MAX_TRANSFER: usize = MAX_SECTORS as usize * SECTOR_SIZE;
/// Pages of the DMA data buffer.
const DATA_PAGES: usize = MAX_TRANSFER / PAGE_SIZE;
/// Default bound of status reads while probing.
pub const DEFAULT_SPIN_LIMIT: u32 = 1_000_000;
/// Default bound of polls that find a command still busy.
pub const DEFAULT_POLL_LIMIT: u32 = 10_000_000;

/// How data moves (the guest's `blk.ata=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtaMode {
    /// Programmed I/O through the data port.
    Pio,
    /// Bus-master DMA (needs the bus-master block of BAR4).
    #[default]
    Dma,
}

/// The ports of one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtaPorts {
    /// Task-file base (0x1F0 primary, 0x170 secondary).
    pub task_file: u16,
    /// Device control / alternate status (0x3F6, 0x376).
    pub control: u16,
    /// This channel's bus-master registers (BAR4, plus 8 for the secondary), if any.
    pub bus_master: Option<u16>,
}

impl AtaPorts {
    /// The primary channel's legacy ports, with the bus-master block at `bar4`.
    pub const fn primary(bar4: Option<u16>) -> Self {
        Self {
            task_file: PRIMARY_TASK_FILE,
            control: PRIMARY_CONTROL,
            bus_master: bar4,
        }
    }

    /// The secondary channel's legacy ports, with the bus-master block at `bar4`.
    pub const fn secondary(bar4: Option<u16>) -> Self {
        Self {
            task_file: SECONDARY_TASK_FILE,
            control: SECONDARY_CONTROL,
            bus_master: match bar4 {
                Some(b) => Some(b.wrapping_add(bm::SECONDARY)),
                None => None,
            },
        }
    }

    /// A channel whose control port sits at the usual distance from its task file.
    pub const fn at(task_file: u16, bus_master: Option<u16>) -> Self {
        Self {
            task_file,
            control: task_file.wrapping_add(CONTROL_OFFSET),
            bus_master,
        }
    }
}

/// What the driver is to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtaConfig {
    /// The channel.
    pub ports: AtaPorts,
    /// PIO or DMA.
    pub mode: AtaMode,
    /// Drive 1 (slave) instead of drive 0 (master).
    pub slave: bool,
    /// Status reads a probe step waits at most for BSY to clear.
    pub spin_limit: u32,
    /// Polls that may find a command busy before it fails.
    pub poll_limit: u32,
}

impl AtaConfig {
    /// The master drive of `ports` in `mode`, default limits.
    pub const fn new(ports: AtaPorts, mode: AtaMode) -> Self {
        Self {
            ports,
            mode,
            slave: false,
            spin_limit: DEFAULT_SPIN_LIMIT,
            poll_limit: DEFAULT_POLL_LIMIT,
        }
    }
}

/// Soft resets the probe tries before it gives up on a drive.
const RESET_TRIES: u32 = 6;
/// Alternate-status reads after clearing SRST before BSY is looked at (the ATA spec
/// asks for 2 ms; the driver has no clock, so it counts reads).
const SRST_SETTLE_READS: u32 = 64;
/// Alternate-status reads between two reset tries.
const RETRY_SETTLE_READS: u32 = 2_000;

/// Why a probe failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtaError {
    /// Nothing answers at the ports, or the drive is absent.
    NoDevice,
    /// The device is a packet (ATAPI) device, not a disk.
    NotAta,
    /// BSY did not clear within the spin limit.
    Timeout,
    /// The device failed a probe command.
    Device {
        /// Its status register.
        status: u8,
        /// Its error register.
        error: u8,
    },
    /// IDENTIFY DEVICE data that cannot be true, or not usable here.
    BadIdentify(&'static str),
    /// DMA mode asked for but the device or the channel cannot do it.
    NoDma,
    /// DMA memory could not be had (or lies above 4 GiB).
    NoMemory,
    /// The device broke the protocol while probing.
    Protocol(&'static str),
}

impl fmt::Display for AtaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice => f.write_str("no ATA device"),
            Self::NotAta => f.write_str("a packet device, not an ATA disk"),
            Self::Timeout => f.write_str("the device stayed busy"),
            Self::Device { status, error } => {
                write!(f, "device error: status {status:#04x}, error {error:#04x}")
            }
            Self::BadIdentify(why) => write!(f, "bad IDENTIFY data: {why}"),
            Self::NoDma => f.write_str("DMA is not available"),
            Self::NoMemory => f.write_str("no DMA memory"),
            Self::Protocol(why) => write!(f, "device broke the protocol: {why}"),
        }
    }
}

impl core::error::Error for AtaError {}

/// A queued request.
struct Request {
    tag: u64,
    op: BlockOp,
    sector: u64,
    count: u32,
    /// Write payload, or the read buffer once the command runs.
    data: Vec<u8>,
}

/// Where the running command is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// PIO data-in: sectors received so far.
    PioIn(u32),
    /// PIO data-out: sectors sent so far.
    PioOut(u32),
    /// Bus-master DMA started.
    Dma,
    /// A command without data (flush).
    NoData,
}

struct Active {
    req: Request,
    phase: Phase,
    busy_polls: u32,
}

/// What one look at the device found.
enum Step {
    /// Still running.
    Busy,
    /// Finished, with this result.
    Done(Result<(), BlockError>),
    /// The device broke the protocol.
    Broken,
}

struct DmaBuffers<P> {
    prd_paddr: u32,
    prd: P,
    data_paddr: u32,
    data: P,
}

/// An ATA disk on an IDE channel. See the module documentation.
pub struct AtaDisk<P: PortIo, D: DmaMemory> {
    io: P,
    dma: D,
    cfg: AtaConfig,
    identify: Identify,
    info: BlockInfo,
    flush_cmd: Option<u8>,
    dword_io: bool,
    /// Bus-master status bits to write back with each clear (the drive-capable bits).
    bm_keep: u8,
    buffers: Option<DmaBuffers<D::Pages>>,
    queue: VecDeque<Request>,
    active: Option<Active>,
    done: Vec<BlockCompletion>,
    next_tag: u64,
    broken: bool,
}

impl<P: PortIo, D: DmaMemory> AtaDisk<P, D> {
    /// Probes the drive described by `cfg` and sets it up; see the module
    /// documentation. `dma` is used only in [`AtaMode::Dma`].
    pub fn new(io: P, dma: D, cfg: AtaConfig) -> Result<Self, AtaError> {
        let mut disk = Self {
            io,
            dma,
            cfg,
            identify: Identify::default(),
            info: BlockInfo {
                sectors: 0,
                sector_size: SECTOR_SIZE as u32,
                read_only: false,
                flush: false,
                queue_depth: QUEUE_DEPTH as u32,
                max_transfer: MAX_TRANSFER as u32,
            },
            flush_cmd: None,
            dword_io: false,
            bm_keep: 0,
            buffers: None,
            queue: VecDeque::with_capacity(QUEUE_DEPTH),
            active: None,
            done: Vec::new(),
            next_tag: 1,
            broken: false,
        };
        disk.probe()?;
        Ok(disk)
    }

    /// The IDENTIFY DEVICE data read at probe.
    pub fn identify(&self) -> &Identify {
        &self.identify
    }

    /// The mode chosen at construction.
    pub fn mode(&self) -> AtaMode {
        self.cfg.mode
    }

    /// Whether the disk takes LBA48 commands.
    pub fn lba48(&self) -> bool {
        self.identify.lba48()
    }

    /// Ends the driver and gives back its port I/O and DMA memory. The DMA buffers
    /// are returned to `dma` unless a command is still running (the device may yet
    /// write them: they are leaked instead, as [`DmaMemory::free_pages`] asks).
    pub fn into_inner(mut self) -> (P, D) {
        if let Some(b) = self.buffers.take() {
            if self.active.is_none() {
                self.dma.free_pages(b.prd_paddr.into(), b.prd);
                self.dma.free_pages(b.data_paddr.into(), b.data);
            } else {
                core::mem::forget(b);
            }
        }
        (self.io, self.dma)
    }

    /// The port I/O, to inspect in tests.
    pub fn io(&mut self) -> &mut P {
        &mut self.io
    }

    fn tf(&self, r: u16) -> u16 {
        self.cfg.ports.task_file.wrapping_add(r)
    }

    fn dev_bits(&self) -> u8 {
        device::OBS | if self.cfg.slave { device::DEV1 } else { 0 }
    }

    fn alt_status(&mut self) -> u8 {
        self.io.read8(self.cfg.ports.control)
    }

    fn status(&mut self) -> u8 {
        let p = self.tf(reg::STATUS);
        self.io.read8(p)
    }

    fn error_reg(&mut self) -> u8 {
        let p = self.tf(reg::ERROR);
        self.io.read8(p)
    }

    fn bm_port(&self, r: u16) -> Option<u16> {
        self.cfg.ports.bus_master.map(|b| b.wrapping_add(r))
    }

    /// Reads alternate status until BSY clears; returns it.
    fn wait_not_busy(&mut self) -> Result<u8, AtaError> {
        for _ in 0..self.cfg.spin_limit.max(1) {
            let st = self.alt_status();
            if st & status::BSY == 0 {
                return Ok(st);
            }
        }
        Err(AtaError::Timeout)
    }

    /// Runs a probe command without data; returns the final status.
    fn probe_command(&mut self, command: u8) -> Result<u8, AtaError> {
        let p = self.tf(reg::COMMAND);
        self.io.write8(p, command);
        self.wait_not_busy()?;
        let st = self.status();
        if st & (status::ERR | status::DF) != 0 {
            let error = self.error_reg();
            return Err(AtaError::Device { status: st, error });
        }
        Ok(st)
    }

    fn probe(&mut self) -> Result<(), AtaError> {
        // QEMU performs a soft reset asynchronously (a bottom half after the SRST
        // edge), and a busy host has been seen to leave a probe failing (with 13
        // QEMUs on 2 cores, about one boot in three failed all of three back-to-back
        // tries); Linux's libata waits after a reset and retries a failed one too. A
        // bounded number of tries, with a pause between them: a channel without a
        // drive fails all of them.
        let mut result = Err(AtaError::NoDevice);
        for attempt in 0..RESET_TRIES {
            if attempt > 0 {
                for _ in 0..RETRY_SETTLE_READS {
                    self.alt_status();
                }
            }
            // A floating bus reads all ones: no controller decodes these ports.
            result = if self.alt_status() == 0xff {
                Err(AtaError::NoDevice)
            } else {
                self.reset_and_check_signature()
            };
            if !matches!(result, Err(AtaError::NoDevice | AtaError::Timeout)) {
                break;
            }
        }
        result?;
        self.probe_identified()
    }

    /// Soft reset, select the drive, check the ATA signature.
    fn reset_and_check_signature(&mut self) -> Result<(), AtaError> {
        let ctl = self.cfg.ports.control;
        // Select the drive before the reset, as Linux's libata does. QEMU performs the
        // reset later (a bottom half), with both drives' BSY set until then, and
        // ignores task-file writes while BSY: a select after the reset does not take
        // until the reset has run. With the other drive left selected (SeaBIOS probes
        // the slave last), an absent slave reads status 0, which would pass for "not
        // busy" and then for "no drive" (seen on a loaded host, one boot in three).
        let device = self.tf(reg::DEVICE);
        let dev = self.dev_bits();
        self.io.write8(device, dev);
        self.alt_status();
        // Soft reset with interrupts off; the ATA signature appears in the task file.
        self.io.write8(ctl, control::NIEN | control::SRST);
        self.alt_status();
        self.io.write8(ctl, control::NIEN);
        for _ in 0..SRST_SETTLE_READS {
            self.alt_status();
        }
        self.wait_not_busy()?;
        self.io.write8(device, dev);
        let st = self.wait_not_busy()?;
        // QEMU and real channels read 0 for an absent drive.
        if st == 0 || st == 0xff {
            return Err(AtaError::NoDevice);
        }
        let mid = self.io.read8(self.tf(reg::LBA_MID));
        let high = self.io.read8(self.tf(reg::LBA_HIGH));
        match (mid, high) {
            (0, 0) => {}
            (0x14, 0xeb) | (0x69, 0x96) => return Err(AtaError::NotAta),
            _ => return Err(AtaError::NoDevice),
        }
        Ok(())
    }

    /// The rest of the probe, once the signature says an ATA drive is there.
    fn probe_identified(&mut self) -> Result<(), AtaError> {
        let ctl = self.cfg.ports.control;
        self.read_identify()?;
        self.check_identify()?;

        if self.cfg.mode == AtaMode::Dma {
            self.setup_dma()?;
        }
        // Interrupts on (the bus-master interrupt bit follows INTRQ), and drop any
        // pending one.
        self.io.write8(ctl, 0);
        self.status();
        Ok(())
    }

    fn read_identify(&mut self) -> Result<(), AtaError> {
        let p = self.tf(reg::COMMAND);
        self.io.write8(p, cmd::IDENTIFY);
        self.wait_not_busy()?;
        let st = self.status();
        if st & (status::ERR | status::DF) != 0 {
            let error = self.error_reg();
            return Err(AtaError::Device { status: st, error });
        }
        if st & status::DRQ == 0 {
            return Err(AtaError::Protocol("IDENTIFY without data"));
        }
        let mut bytes = [0u8; SECTOR_SIZE];
        let data = self.tf(reg::DATA);
        for w in bytes.chunks_exact_mut(2) {
            w.copy_from_slice(&self.io.read16(data).to_le_bytes());
        }
        let st = self.wait_not_busy()?;
        if st & status::DRQ != 0 {
            return Err(AtaError::Protocol("IDENTIFY longer than 512 bytes"));
        }
        self.identify = Identify::from_bytes(&bytes);
        Ok(())
    }

    fn check_identify(&mut self) -> Result<(), AtaError> {
        let w = &self.identify.0;
        if w[id::CONFIG] & id::CONFIG_NOT_ATA != 0 {
            return Err(AtaError::NotAta);
        }
        if w[id::CAPABILITIES] & id::CAP_LBA == 0 {
            return Err(AtaError::BadIdentify("no LBA"));
        }
        let lba28 = u64::from(self.identify.lba28_sectors());
        if lba28 >= LBA28_LIMIT {
            return Err(AtaError::BadIdentify(
                "LBA28 capacity of 2^28 sectors or more",
            ));
        }
        let sectors = if self.identify.lba48() {
            let s = self.identify.lba48_sectors();
            if s >= LBA48_LIMIT {
                return Err(AtaError::BadIdentify(
                    "LBA48 capacity of 2^48 sectors or more",
                ));
            }
            if s < lba28 {
                return Err(AtaError::BadIdentify("LBA48 capacity below the LBA28 one"));
            }
            s
        } else {
            lba28
        };
        if sectors == 0 {
            return Err(AtaError::BadIdentify("no sectors"));
        }
        let cs2 = self.identify.command_set_2();
        self.flush_cmd = if self.identify.lba48() && cs2 & id::CS2_FLUSH_EXT != 0 {
            Some(cmd::FLUSH_CACHE_EXT)
        } else if cs2 & id::CS2_FLUSH != 0 {
            Some(cmd::FLUSH_CACHE)
        } else {
            None
        };
        self.dword_io = w[48] & 1 != 0;
        self.info.sectors = sectors;
        self.info.flush = self.flush_cmd.is_some();
        Ok(())
    }

    /// Picks the best DMA mode, tells the device, and allocates the DMA buffers.
    fn setup_dma(&mut self) -> Result<(), AtaError> {
        let w = &self.identify.0;
        let Some(bm_status) = self.bm_port(bm::STATUS) else {
            return Err(AtaError::NoDma);
        };
        if w[id::CAPABILITIES] & id::CAP_DMA == 0 {
            return Err(AtaError::NoDma);
        }
        let udma = w[id::UDMA_MODES] & 0x7f;
        let mwdma = w[id::MWDMA_MODES] & 0x07;
        let mode = if w[id::FIELD_VALID] & id::FIELD_VALID_88 != 0 && udma != 0 {
            features::XFER_UDMA | (15 - udma.leading_zeros()) as u8
        } else if mwdma != 0 {
            features::XFER_MWDMA | (15 - mwdma.leading_zeros()) as u8
        } else {
            return Err(AtaError::NoDma);
        };
        self.io
            .write8(self.tf(reg::FEATURES), features::SET_TRANSFER_MODE);
        self.io.write8(self.tf(reg::SECTOR_COUNT), mode);
        let dev = self.dev_bits();
        self.io.write8(self.tf(reg::DEVICE), dev);
        self.probe_command(cmd::SET_FEATURES)?;

        let (prd_paddr, prd) = self.dma.alloc_pages(1).ok_or(AtaError::NoMemory)?;
        let Some((data_paddr, data)) = self.dma.alloc_pages(DATA_PAGES) else {
            self.dma.free_pages(prd_paddr, prd);
            return Err(AtaError::NoMemory);
        };
        let below_4g = |a: u64, len: usize| a.checked_add(len as u64).is_some_and(|e| e <= 1 << 32);
        if !below_4g(prd_paddr, PAGE_SIZE) || !below_4g(data_paddr, MAX_TRANSFER) {
            self.dma.free_pages(prd_paddr, prd);
            self.dma.free_pages(data_paddr, data);
            return Err(AtaError::NoMemory);
        }
        self.buffers = Some(DmaBuffers {
            prd_paddr: prd_paddr as u32,
            prd,
            data_paddr: data_paddr as u32,
            data,
        });
        // Keep the drive-capable bits (firmware's business) and mark ours.
        let drive_bit = if self.cfg.slave {
            bm::status::DRIVE1_DMA
        } else {
            bm::status::DRIVE0_DMA
        };
        let bms = self.io.read8(bm_status);
        self.bm_keep = (bms & bm::status::RW) | drive_bit;
        self.io.write8(bm_status, bm::status::W1C | self.bm_keep);
        Ok(())
    }

    /// Loads the task file for `count` sectors at `lba`.
    fn load_task_file(&mut self, lba: u64, count: u32, lba48: bool) {
        let dev = self.dev_bits() | device::LBA;
        if lba48 {
            self.io.write8(self.tf(reg::DEVICE), dev);
            // High-order bytes first: each register keeps the previous value as HOB.
            self.io
                .write8(self.tf(reg::SECTOR_COUNT), (count >> 8) as u8);
            self.io.write8(self.tf(reg::LBA_LOW), (lba >> 24) as u8);
            self.io.write8(self.tf(reg::LBA_MID), (lba >> 32) as u8);
            self.io.write8(self.tf(reg::LBA_HIGH), (lba >> 40) as u8);
        } else {
            self.io.write8(
                self.tf(reg::DEVICE),
                dev | ((lba >> 24) as u8 & device::HEAD_MASK),
            );
        }
        // 256 (LBA28) and 65536 (LBA48) are encoded as 0.
        self.io.write8(self.tf(reg::SECTOR_COUNT), count as u8);
        self.io.write8(self.tf(reg::LBA_LOW), lba as u8);
        self.io.write8(self.tf(reg::LBA_MID), (lba >> 8) as u8);
        self.io.write8(self.tf(reg::LBA_HIGH), (lba >> 16) as u8);
    }

    /// Sends `req` to the device.
    fn issue(&mut self, mut req: Request) {
        let phase = match req.op {
            BlockOp::Flush => {
                let dev = self.dev_bits();
                self.io.write8(self.tf(reg::DEVICE), dev);
                let c = self.flush_cmd.unwrap_or(cmd::FLUSH_CACHE);
                self.io.write8(self.tf(reg::COMMAND), c);
                Phase::NoData
            }
            BlockOp::Read | BlockOp::Write => {
                let write = req.op == BlockOp::Write;
                let lba48 = !(req.sector + u64::from(req.count) < LBA28_LIMIT
                    && req.count <= super::LBA28_MAX_COUNT);
                let bytes = req.count as usize * SECTOR_SIZE;
                if !write {
                    req.data = vec![0; bytes];
                }
                match (self.cfg.mode, &self.buffers) {
                    (AtaMode::Dma, Some(b)) => {
                        if write {
                            b.data.write_bytes(0, &req.data);
                        }
                        let pages = bytes.div_ceil(PAGE_SIZE);
                        for i in 0..pages {
                            let len = (bytes - i * PAGE_SIZE).min(PAGE_SIZE);
                            let e = PrdEntry {
                                addr: b.data_paddr + (i * PAGE_SIZE) as u32,
                                count: len as u16,
                                flags: if i + 1 == pages { PRD_EOT } else { 0 },
                            };
                            b.prd.write_bytes(i * 8, &e.to_bytes());
                        }
                        let prd_paddr = b.prd_paddr;
                        let (st, tab, com) = (
                            self.bm_port(bm::STATUS),
                            self.bm_port(bm::PRD_TABLE),
                            self.bm_port(bm::COMMAND),
                        );
                        if let (Some(st), Some(tab), Some(com)) = (st, tab, com) {
                            self.io.write8(st, bm::status::W1C | self.bm_keep);
                            self.io.write32(tab, prd_paddr);
                            self.load_task_file(req.sector, req.count, lba48);
                            let c = match (write, lba48) {
                                (false, false) => cmd::READ_DMA,
                                (false, true) => cmd::READ_DMA_EXT,
                                (true, false) => cmd::WRITE_DMA,
                                (true, true) => cmd::WRITE_DMA_EXT,
                            };
                            self.io.write8(self.tf(reg::COMMAND), c);
                            let dir = if write { 0 } else { bm::command::READ };
                            self.io.write8(com, bm::command::START | dir);
                        }
                        Phase::Dma
                    }
                    _ => {
                        self.load_task_file(req.sector, req.count, lba48);
                        let c = match (write, lba48) {
                            (false, false) => cmd::READ_SECTORS,
                            (false, true) => cmd::READ_SECTORS_EXT,
                            (true, false) => cmd::WRITE_SECTORS,
                            (true, true) => cmd::WRITE_SECTORS_EXT,
                        };
                        self.io.write8(self.tf(reg::COMMAND), c);
                        if write {
                            Phase::PioOut(0)
                        } else {
                            Phase::PioIn(0)
                        }
                    }
                }
            }
        };
        self.active = Some(Active {
            req,
            phase,
            busy_polls: 0,
        });
    }

    /// Moves one 512-byte block through the data port.
    fn pio_block(&mut self, data: &mut [u8], write: bool) {
        let port = self.tf(reg::DATA);
        if self.dword_io {
            for c in data.chunks_exact_mut(4) {
                if write {
                    let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    self.io.write32(port, v);
                } else {
                    c.copy_from_slice(&self.io.read32(port).to_le_bytes());
                }
            }
        } else {
            for c in data.chunks_exact_mut(2) {
                if write {
                    self.io.write16(port, u16::from_le_bytes([c[0], c[1]]));
                } else {
                    c.copy_from_slice(&self.io.read16(port).to_le_bytes());
                }
            }
        }
    }

    /// Looks at the device for the running command `a`.
    fn step(&mut self, a: &mut Active) -> Step {
        match a.phase {
            Phase::PioIn(_) | Phase::PioOut(_) => loop {
                let st = self.status();
                if st & status::BSY != 0 {
                    return Step::Busy;
                }
                if st & (status::ERR | status::DF) != 0 {
                    self.error_reg();
                    return Step::Done(Err(BlockError::Io));
                }
                let (moved, write) = match a.phase {
                    Phase::PioIn(n) => (n, false),
                    Phase::PioOut(n) => (n, true),
                    _ => return Step::Broken,
                };
                if st & status::DRQ == 0 {
                    // Not busy, no data phase: finished, and only right if every block
                    // moved.
                    return if moved == a.req.count && st & status::DRDY != 0 {
                        Step::Done(Ok(()))
                    } else {
                        Step::Broken
                    };
                }
                if moved >= a.req.count {
                    return Step::Broken; // a data phase beyond the request
                }
                let at = moved as usize * SECTOR_SIZE;
                let Some(block) = a.req.data.get_mut(at..at + SECTOR_SIZE) else {
                    return Step::Broken;
                };
                let mut buf = [0u8; SECTOR_SIZE];
                buf.copy_from_slice(block);
                self.pio_block(&mut buf, write);
                if !write {
                    a.req.data[at..at + SECTOR_SIZE].copy_from_slice(&buf);
                }
                a.phase = if write {
                    Phase::PioOut(moved + 1)
                } else {
                    Phase::PioIn(moved + 1)
                };
            },
            Phase::NoData => {
                let st = self.status();
                if st & status::BSY != 0 {
                    Step::Busy
                } else if st & (status::ERR | status::DF) != 0 {
                    self.error_reg();
                    Step::Done(Err(BlockError::Io))
                } else if st & status::DRQ != 0 || st & status::DRDY == 0 {
                    Step::Broken
                } else {
                    Step::Done(Ok(()))
                }
            }
            Phase::Dma => self.step_dma(a),
        }
    }

    fn step_dma(&mut self, a: &mut Active) -> Step {
        let (Some(bms_port), Some(com)) = (self.bm_port(bm::STATUS), self.bm_port(bm::COMMAND))
        else {
            return Step::Broken;
        };
        let bms = self.io.read8(bms_port);
        if bms & bm::status::INTERRUPT == 0 {
            if bms & bm::status::ACTIVE != 0 {
                return Step::Busy;
            }
            // Stopped without an interrupt: the device says the PRD table ran out
            // before the transfer did, and ours covers it exactly.
            self.io.write8(com, 0);
            self.status();
            return Step::Broken;
        }
        let st = self.status();
        self.io.write8(com, 0);
        if st & status::BSY != 0 {
            return Step::Broken;
        }
        if bms & bm::status::ERROR != 0 || st & (status::ERR | status::DF) != 0 {
            if st & status::ERR != 0 {
                self.error_reg();
            }
            return Step::Done(Err(BlockError::Io));
        }
        if st & status::DRQ != 0 || bms & bm::status::ACTIVE != 0 {
            // Still wanting data, or a PRD table left over: the device moved less than
            // asked.
            return Step::Broken;
        }
        if a.req.op == BlockOp::Read
            && let Some(b) = &self.buffers
        {
            b.data.read_bytes(0, &mut a.req.data);
        }
        Step::Done(Ok(()))
    }

    fn start_next(&mut self) {
        if self.active.is_none()
            && !self.broken
            && let Some(req) = self.queue.pop_front()
        {
            self.issue(req);
        }
    }

    fn complete(&mut self, req: Request, result: Result<(), BlockError>) {
        let data = if result.is_ok() && req.op == BlockOp::Read {
            req.data
        } else {
            Vec::new()
        };
        self.done.push(BlockCompletion {
            tag: req.tag,
            op: req.op,
            result,
            data,
        });
    }

    /// Shuts the driver down: the running and queued requests fail.
    fn fail_all(&mut self) {
        self.broken = true;
        if let Some(a) = self.active.take() {
            self.complete(a.req, Err(BlockError::Protocol));
        }
        while let Some(r) = self.queue.pop_front() {
            self.complete(r, Err(BlockError::Protocol));
        }
    }

    /// Advances the running command as far as the device lets it, completing and
    /// starting commands.
    fn run(&mut self) {
        loop {
            self.start_next();
            let Some(mut a) = self.active.take() else {
                return;
            };
            match self.step(&mut a) {
                Step::Busy => {
                    a.busy_polls += 1;
                    if a.busy_polls > self.cfg.poll_limit {
                        // A device that never finishes: this request fails and the
                        // driver stops (the channel may still be mid-command).
                        self.complete(a.req, Err(BlockError::Io));
                        self.fail_all();
                    } else {
                        self.active = Some(a);
                    }
                    return;
                }
                Step::Done(r) => self.complete(a.req, r),
                Step::Broken => {
                    self.active = Some(a);
                    self.fail_all();
                    return;
                }
            }
        }
    }
}

impl<P: PortIo, D: DmaMemory> BlockDevice for AtaDisk<P, D> {
    fn info(&self) -> BlockInfo {
        self.info
    }

    fn submit(
        &mut self,
        op: BlockOp,
        sector: u64,
        count: u32,
        data: &[u8],
    ) -> Result<u64, BlockError> {
        if self.broken {
            return Err(BlockError::Protocol);
        }
        // max_transfer is MAX_SECTORS sectors; flush is offered when the drive has a
        // flush command.
        self.info.check(op, sector, count, data)?;
        if self.queue.len() + usize::from(self.active.is_some()) >= QUEUE_DEPTH {
            return Err(BlockError::Busy);
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        self.queue.push_back(Request {
            tag,
            op,
            sector,
            count,
            data: if op == BlockOp::Write {
                data.to_vec()
            } else {
                Vec::new()
            },
        });
        // A full queue cannot wait for the caller's kick.
        if self.queue.len() >= QUEUE_DEPTH {
            self.start_next();
        }
        Ok(tag)
    }

    fn kick(&mut self) {
        self.start_next();
    }

    fn poll(&mut self, done: &mut Vec<BlockCompletion>) -> Result<usize, BlockError> {
        if !self.broken {
            self.run();
        }
        let n = self.done.len();
        done.append(&mut self.done);
        if self.broken && n == 0 {
            return Err(BlockError::Protocol);
        }
        Ok(n)
    }

    fn in_flight(&self) -> u32 {
        (self.queue.len() + usize::from(self.active.is_some()) + self.done.len()) as u32
    }
}
