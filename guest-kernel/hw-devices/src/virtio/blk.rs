//! The guest's virtio-blk driver (virtio 1.2, 5.2), a `BlockDevice` like blkfront and
//! the ATA driver, on `virtio-drivers`' `VirtQueue` over [`PciTransport`].
//!
//! Why not `virtio-drivers`' own `VirtIOBlk`: it has no non-blocking flush (`flush`
//! spins in `add_notify_wait_pop`, which also assumes nothing else is in flight), a
//! fixed 16-entry queue, and it negotiates `VIRTIO_F_EVENT_IDX`, whose
//! `VirtQueue::should_notify` (`avail_idx >= avail_event + 1`, not the wrapping
//! `vring_need_event`) misses a notification when a batch of requests crosses the
//! 16-bit index wrap. So this driver uses the crate's queue, feature handshake and
//! configuration access, and does the request layout (16-byte header, data, status
//! byte; 5.2.6) itself.
//!
//! - Negotiated: `VERSION_1`, `RO`, `FLUSH`, `BLK_SIZE`, `SIZE_MAX`, `SEG_MAX`,
//!   `INDIRECT_DESC` (one descriptor per request then; three without). Not
//!   `EVENT_IDX` (above): notifications are suppressed by the used ring's flag only.
//! - Requests: up to [`VirtioBlkConfig::queue_depth`] in flight, each with one
//!   contiguous data buffer of DMA memory (allocated when a slot first needs it, kept
//!   for reuse), its header and status byte in one control page. [`BlockDevice::submit`]
//!   adds the chain to the available ring; [`BlockDevice::kick`] notifies once per
//!   batch unless the device asked for no notifications; [`BlockDevice::poll`] reaps
//!   the used ring, after reading the ISR byte (acknowledging the INTx line) only when
//!   the device interrupts through INTx: with MSI-X on ([`PciTransport::msix_active`])
//!   the message was the interrupt, and the poll makes no exit.
//! - Sectors are 512 bytes (virtio-blk addresses 512-byte sectors whatever `blk_size`
//!   says); a request moves at most [`VirtioBlkConfig::max_transfer`] bytes, less if
//!   the device's `size_max` says so.
//!
//! The device is hostile: before a used element is popped, the used index may run
//! ahead of the last one seen by at most the number of requests outstanding, and the
//! element's id must be the token of an outstanding request; its length must not
//! exceed what the request let the device write (data of a read, plus the status byte);
//! the status byte must be `OK`, `IOERR` (the request fails with `BlockError::Io`) or
//! `UNSUPP` (`BlockError::Unsupported`), and is set to an invalid value before each
//! request so one the device never wrote is caught. Anything else is a protocol error:
//! the device is reset, counted, and the driver answers `BlockError::Protocol` from then
//! on. A device that never completes makes no call block: the caller's stall limit
//! decides.
//!
//! Not done: `GET_ID`, discard/write-zeroes, multiple queues.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use bitflags::bitflags;
use pv_drivers::device::{BlockCompletion, BlockDevice, BlockError, BlockInfo, BlockOp};
use virtio_drivers::PAGE_SIZE;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};

use super::transport::PciTransport;
use super::{DmaBuf, InitError, VirtioHal, used_idx};
use crate::Mmio;

/// Entries of the request queue (a power of two; the device must offer at least this
/// many).
pub const QUEUE_SIZE: usize = 128;
/// The request queue's index.
const REQUEST_QUEUE: u16 = 0;
/// Bytes per sector in virtio-blk requests.
pub const SECTOR_SIZE: u32 = 512;
/// Bytes of a request header (`struct virtio_blk_req` up to the data).
const HEADER: usize = 16;
/// Bytes of the control page per slot: header, status byte, padding.
const CONTROL: usize = 32;
/// Request types (5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
/// Status values; [`STATUS_UNWRITTEN`] is what the driver leaves there.
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const STATUS_UNWRITTEN: u8 = 0xff;
/// `struct virtio_blk_config` offsets (5.2.4).
const CFG_CAPACITY: usize = 0;
const CFG_SIZE_MAX: usize = 8;

bitflags! {
    /// The feature bits this driver knows (5.2.3, 6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Features: u64 {
        /// `size_max` is valid.
        const SIZE_MAX = 1 << 1;
        /// `seg_max` is valid.
        const SEG_MAX = 1 << 2;
        /// The disk is read-only.
        const RO = 1 << 5;
        /// `blk_size` is valid.
        const BLK_SIZE = 1 << 6;
        /// Flush requests are served.
        const FLUSH = 1 << 9;
        /// Indirect descriptor tables.
        const INDIRECT_DESC = 1 << 28;
        /// `used_event`/`avail_event` (never negotiated here: see the module docs).
        const EVENT_IDX = 1 << 29;
        /// virtio 1.x.
        const VERSION_1 = 1 << 32;
    }
}

/// What the driver accepts.
const SUPPORTED: Features = Features::SIZE_MAX
    .union(Features::SEG_MAX)
    .union(Features::RO)
    .union(Features::BLK_SIZE)
    .union(Features::FLUSH)
    .union(Features::INDIRECT_DESC)
    .union(Features::VERSION_1);

/// Queue depth and request size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioBlkConfig {
    /// Requests in flight at most (1..=[`QUEUE_SIZE`]; a third of it without indirect
    /// descriptors).
    pub queue_depth: usize,
    /// Largest request, bytes (a multiple of [`PAGE_SIZE`]).
    pub max_transfer: u32,
}

impl Default for VirtioBlkConfig {
    fn default() -> Self {
        Self {
            queue_depth: 32,
            max_transfer: 64 << 10,
        }
    }
}

/// The driver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioBlkStats {
    /// Requests submitted, by kind.
    pub reads: u64,
    /// Writes.
    pub writes: u64,
    /// Flushes.
    pub flushes: u64,
    /// Bytes read and written.
    pub bytes: u64,
    /// Requests completed (any status).
    pub completions: u64,
    /// Queue notifications written (each a doorbell, or an exit without ioeventfd).
    pub notifies: u64,
    /// Kicks the device's `NO_NOTIFY` flag made unnecessary.
    pub notifies_suppressed: u64,
    /// ISR reads, and those that found no cause.
    pub isr_reads: u64,
    /// ISR reads with no cause.
    pub isr_empty: u64,
    /// Requests the device failed with `IOERR` / `UNSUPP`.
    pub io_errors: u64,
    /// `UNSUPP` answers.
    pub unsupported: u64,
    /// Used lengths shorter than what the request let the device write (accepted: the
    /// status byte is what tells success).
    pub short_lengths: u64,
    /// Protocol errors, by kind: a used id that is no outstanding request, ...
    pub bad_ids: u64,
    /// ... a used length beyond the buffers posted, ...
    pub bad_lengths: u64,
    /// ... a status byte that is none of OK/IOERR/UNSUPP, ...
    pub bad_status: u64,
    /// ... a used index more requests ahead than are outstanding.
    pub used_ahead: u64,
    /// The driver stopped (the sum of the four above, or a failure inside the queue).
    pub protocol_errors: u64,
    /// DMA allocations that failed at submit (the request failed with `Io`).
    pub out_of_memory: u64,
}

/// A request in flight.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    tag: u64,
    op: BlockOp,
    /// Data bytes.
    len: usize,
    /// The virtqueue token.
    token: u16,
}

struct Slot<H: VirtioHal> {
    data: Option<DmaBuf<H>>,
    req: Option<InFlight>,
}

/// The header, data and status slices of slot `i` for a request of `len` data bytes.
///
/// # Safety
///
/// The slot's data buffer holds `len` bytes; the slices are only used to fill the
/// request, hand it to the queue and take it back (the same slices each time), or to
/// read the answer after the request completed.
#[allow(clippy::type_complexity, clippy::mut_from_ref)]
unsafe fn parts<'a, H: VirtioHal>(
    control: &'a DmaBuf<H>,
    slot: &'a Slot<H>,
    i: usize,
    len: usize,
) -> (&'a mut [u8], &'a mut [u8], &'a mut [u8]) {
    // SAFETY: slot `i` owns bytes [i * CONTROL, (i + 1) * CONTROL) of the control page
    // and its own data buffer; the caller keeps `len` within it.
    unsafe {
        let header = control.slice(i * CONTROL, HEADER);
        let status = control.slice(i * CONTROL + HEADER, 1);
        let data = match &slot.data {
            Some(d) if len > 0 => d.slice(0, len),
            _ => &mut [],
        };
        (header, data, status)
    }
}

/// A virtio-blk disk.
pub struct VirtioBlk<H: VirtioHal, M: Mmio> {
    transport: PciTransport<M>,
    /// Boxed: its shadow tables are 4 KiB, too much to move around a 64 KiB boot
    /// stack.
    queue: Option<Box<VirtQueue<H, QUEUE_SIZE>>>,
    control: Option<DmaBuf<H>>,
    slots: Vec<Slot<H>>,
    /// Slot of each outstanding token.
    by_token: Vec<Option<u16>>,
    outstanding: usize,
    /// Used elements consumed (free-running, as the used index).
    used_seen: u16,
    used_ring: u64,
    unkicked: usize,
    next_tag: u64,
    info: BlockInfo,
    features: Features,
    broken: bool,
    stats: VirtioBlkStats,
}

impl<H: VirtioHal, M: Mmio> VirtioBlk<H, M> {
    /// Initialises the block device behind `transport` (3.1.1: reset, ACKNOWLEDGE,
    /// DRIVER, features, FEATURES_OK checked, configuration, queue, DRIVER_OK
    /// checked). The function's memory decode and bus mastering must be on.
    pub fn new(mut transport: PciTransport<M>, config: VirtioBlkConfig) -> Result<Self, InitError> {
        if !(1..=QUEUE_SIZE).contains(&config.queue_depth)
            || config.max_transfer < PAGE_SIZE as u32
            || !config.max_transfer.is_multiple_of(PAGE_SIZE as u32)
        {
            return Err(InitError::BadConfig);
        }
        let kind = transport.device_type();
        if kind != DeviceType::Block {
            return Err(InitError::WrongType {
                want: DeviceType::Block,
                got: kind,
            });
        }
        match Self::setup(&mut transport, config) {
            Ok(dev) => Ok(dev),
            Err(e) => {
                // Nothing of ours may stay in the device's hands.
                transport.reset();
                transport.fail();
                Err(e)
            }
        }
    }

    fn setup(transport: &mut PciTransport<M>, config: VirtioBlkConfig) -> Result<Self, InitError> {
        let features = transport.begin_init(SUPPORTED);
        if transport.broken() {
            return Err(InitError::Transport);
        }
        if !features.contains(Features::VERSION_1) {
            return Err(InitError::Legacy);
        }
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            return Err(InitError::FeaturesRefused);
        }
        let (capacity, size_max) = transport
            .read_consistent(|| {
                let lo: u32 = transport.read_config_space(CFG_CAPACITY)?;
                let hi: u32 = transport.read_config_space(CFG_CAPACITY + 4)?;
                let size_max: u32 = if features.contains(Features::SIZE_MAX) {
                    transport.read_config_space(CFG_SIZE_MAX)?
                } else {
                    u32::MAX
                };
                Ok((u64::from(hi) << 32 | u64::from(lo), size_max))
            })
            .map_err(InitError::Config)?;
        let indirect = features.contains(Features::INDIRECT_DESC);
        let mut queue = Box::new(
            VirtQueue::<H, QUEUE_SIZE>::new(transport, REQUEST_QUEUE, indirect, false)
                .map_err(InitError::Queue)?,
        );
        queue.set_dev_notify(true);
        if transport.broken() {
            return Err(InitError::Transport);
        }
        transport.finish_init();
        let status = transport.get_status();
        if !status.contains(DeviceStatus::DRIVER_OK)
            || status.contains(DeviceStatus::DEVICE_NEEDS_RESET)
        {
            return Err(InitError::NotAccepted(status.bits()));
        }
        let used_ring = transport
            .used_ring(REQUEST_QUEUE)
            .ok_or(InitError::Transport)?;

        // Three descriptors a request without indirect tables.
        let depth = if indirect {
            config.queue_depth
        } else {
            config.queue_depth.min(QUEUE_SIZE / 3)
        };
        let control = DmaBuf::<H>::new((depth * CONTROL).div_ceil(PAGE_SIZE))
            .ok_or(InitError::OutOfMemory)?;
        // size_max bounds the one data segment; whole sectors of it.
        let max_transfer = config
            .max_transfer
            .min(size_max & !(SECTOR_SIZE - 1))
            .max(SECTOR_SIZE);
        let info = BlockInfo {
            sectors: capacity,
            sector_size: SECTOR_SIZE,
            read_only: features.contains(Features::RO),
            flush: features.contains(Features::FLUSH),
            queue_depth: depth as u32,
            max_transfer,
        };
        Ok(Self {
            transport: transport.clone(),
            queue: Some(queue),
            control: Some(control),
            slots: (0..depth)
                .map(|_| Slot {
                    data: None,
                    req: None,
                })
                .collect(),
            by_token: vec![None; QUEUE_SIZE],
            outstanding: 0,
            used_seen: 0,
            used_ring,
            unkicked: 0,
            next_tag: 1,
            info,
            features,
            broken: false,
            stats: VirtioBlkStats::default(),
        })
    }

    /// The features negotiated.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The driver's counters.
    pub fn stats(&self) -> VirtioBlkStats {
        self.stats
    }

    /// Register accesses the transport made.
    pub fn register_accesses(&self) -> u64 {
        self.transport.accesses()
    }

    /// The transport (to look at the device in tests).
    pub fn transport(&self) -> &PciTransport<M> {
        &self.transport
    }

    /// The device broke the protocol: count it, reset the device so it stops using
    /// the buffers, answer `Protocol` from now on.
    fn protocol_error(&mut self) -> BlockError {
        if !self.broken {
            self.broken = true;
            self.stats.protocol_errors += 1;
            if !self.transport.reset() {
                // It may still write the rings and buffers: never free them.
                core::mem::forget(self.queue.take());
                core::mem::forget(self.control.take());
                for s in &mut self.slots {
                    core::mem::forget(s.data.take());
                }
            }
            self.transport.fail();
        }
        BlockError::Protocol
    }

    /// Reaps one used element, if any; `Err` on a protocol error.
    fn reap_one(&mut self) -> Result<Option<BlockCompletion>, BlockError> {
        // The used index may be ahead of what was consumed by at most what is out.
        let Some(idx) = used_idx::<H>(self.used_ring) else {
            return Err(self.protocol_error());
        };
        let pending = usize::from(idx.wrapping_sub(self.used_seen));
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.outstanding {
            self.stats.used_ahead += 1;
            return Err(self.protocol_error());
        }
        let Some(token) = self.queue.as_ref().and_then(|q| q.peek_used()) else {
            return Ok(None);
        };
        let slot = self
            .by_token
            .get(usize::from(token))
            .copied()
            .flatten()
            .map(usize::from);
        let found = slot.and_then(|i| Some((i, self.slots[i].req?)));
        let Some((i, req)) = found.filter(|(_, r)| r.token == token) else {
            self.stats.bad_ids += 1;
            return Err(self.protocol_error());
        };
        let popped = match (self.control.as_ref(), self.queue.as_mut()) {
            (Some(control), Some(queue)) => {
                // SAFETY: the same slices `submit` added under this token.
                let (header, data, status) = unsafe { parts(control, &self.slots[i], i, req.len) };
                // SAFETY: these are the buffers added with `token` (same addresses,
                // lengths and directions), still allocated (slot memory).
                unsafe {
                    match req.op {
                        BlockOp::Write => queue.pop_used(token, &[header, data], &mut [status]),
                        BlockOp::Read => queue.pop_used(token, &[header], &mut [data, status]),
                        BlockOp::Flush => queue.pop_used(token, &[header], &mut [status]),
                    }
                }
            }
            _ => Err(virtio_drivers::Error::NotReady),
        };
        let Ok(used_len) = popped.map(|l| l as usize) else {
            self.stats.bad_ids += 1;
            return Err(self.protocol_error());
        };
        self.used_seen = self.used_seen.wrapping_add(1);
        self.outstanding -= 1;
        self.by_token[usize::from(token)] = None;
        self.slots[i].req = None;
        self.stats.completions += 1;
        let writable = if req.op == BlockOp::Read {
            req.len + 1
        } else {
            1
        };
        if used_len > writable {
            self.stats.bad_lengths += 1;
            return Err(self.protocol_error());
        }
        if used_len < writable {
            self.stats.short_lengths += 1;
        }
        let Some(control) = self.control.as_ref() else {
            return Err(self.protocol_error());
        };
        // SAFETY: the request completed: the device no longer writes this slot.
        let (_, data, status) = unsafe { parts(control, &self.slots[i], i, req.len) };
        let code = status[0];
        let data = if req.op == BlockOp::Read && code == S_OK {
            data.to_vec()
        } else {
            Vec::new()
        };
        let result = match code {
            S_OK => Ok(()),
            S_IOERR => {
                self.stats.io_errors += 1;
                Err(BlockError::Io)
            }
            S_UNSUPP => {
                self.stats.io_errors += 1;
                self.stats.unsupported += 1;
                Err(BlockError::Unsupported)
            }
            _ => {
                self.stats.bad_status += 1;
                return Err(self.protocol_error());
            }
        };
        Ok(Some(BlockCompletion {
            tag: req.tag,
            op: req.op,
            result,
            data,
        }))
    }
}

impl<H: VirtioHal, M: Mmio> BlockDevice for VirtioBlk<H, M> {
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
        self.info.check(op, sector, count, data)?;
        let Some(i) = self.slots.iter().position(|s| s.req.is_none()) else {
            return Err(BlockError::Busy);
        };
        let len = match op {
            BlockOp::Flush => 0,
            _ => count as usize * SECTOR_SIZE as usize,
        };
        let pages = len.div_ceil(PAGE_SIZE);
        if self.slots[i].data.as_ref().map_or(0, |d| d.pages) < pages {
            // The slot is idle: its old buffer is the driver's to free.
            self.slots[i].data = None;
            match DmaBuf::<H>::new(pages) {
                Some(d) => self.slots[i].data = Some(d),
                None => {
                    self.stats.out_of_memory += 1;
                    return Err(BlockError::Io);
                }
            }
        }
        let kind = match op {
            BlockOp::Read => T_IN,
            BlockOp::Write => T_OUT,
            BlockOp::Flush => T_FLUSH,
        };
        let sector = if op == BlockOp::Flush { 0 } else { sector };
        let added = match (self.control.as_ref(), self.queue.as_mut()) {
            (Some(control), Some(queue)) => {
                // SAFETY: slot `i` is idle (no request uses its memory) and holds `len`
                // bytes; the slices are handed to the queue and taken back in
                // `reap_one`.
                let (header, buf, status) = unsafe { parts(control, &self.slots[i], i, len) };
                header[0..4].copy_from_slice(&kind.to_le_bytes());
                header[4..8].fill(0);
                header[8..16].copy_from_slice(&sector.to_le_bytes());
                status[0] = STATUS_UNWRITTEN;
                if op == BlockOp::Write {
                    buf.copy_from_slice(data);
                }
                // SAFETY: the buffers are slot memory that stays allocated and untouched
                // by the driver until `reap_one` pops this token with the same slices.
                unsafe {
                    match op {
                        BlockOp::Write => queue.add(&[header, buf], &mut [status]),
                        BlockOp::Read => queue.add(&[header], &mut [buf, status]),
                        BlockOp::Flush => queue.add(&[header], &mut [status]),
                    }
                }
            }
            _ => return Err(BlockError::Protocol),
        };
        let token = match added {
            Ok(t) => t,
            Err(virtio_drivers::Error::QueueFull) => return Err(BlockError::Busy),
            Err(_) => return Err(self.protocol_error()),
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        self.slots[i].req = Some(InFlight {
            tag,
            op,
            len,
            token,
        });
        self.by_token[usize::from(token)] = Some(i as u16);
        self.outstanding += 1;
        self.unkicked += 1;
        match op {
            BlockOp::Read => self.stats.reads += 1,
            BlockOp::Write => self.stats.writes += 1,
            BlockOp::Flush => self.stats.flushes += 1,
        }
        self.stats.bytes += len as u64;
        Ok(tag)
    }

    fn kick(&mut self) {
        if self.broken || self.unkicked == 0 {
            return;
        }
        self.unkicked = 0;
        let notify = self.queue.as_ref().is_some_and(|q| q.should_notify());
        if notify {
            self.stats.notifies += 1;
            self.transport.notify(REQUEST_QUEUE);
        } else {
            self.stats.notifies_suppressed += 1;
        }
    }

    fn poll(&mut self, done: &mut Vec<BlockCompletion>) -> Result<usize, BlockError> {
        if self.broken {
            return Err(BlockError::Protocol);
        }
        // With MSI-X the message was the interrupt: no ISR to read (and no exit).
        if !self.transport.msix_active() {
            // Reading ISR acknowledges the interrupt and lowers INTx (4.1.4.5).
            let isr = self.transport.ack_interrupt();
            self.stats.isr_reads += 1;
            if !isr.intersects(
                InterruptStatus::QUEUE_INTERRUPT | InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT,
            ) {
                self.stats.isr_empty += 1;
            }
        }
        let mut n = 0;
        // Bounded: each turn consumes one outstanding request.
        while self.outstanding > 0 {
            match self.reap_one()? {
                Some(c) => {
                    done.push(c);
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }

    fn in_flight(&self) -> u32 {
        self.outstanding as u32
    }
}

impl<H: VirtioHal, M: Mmio> Drop for VirtioBlk<H, M> {
    fn drop(&mut self) {
        if self.broken {
            // Already reset (or its memory forgotten).
            return;
        }
        if !self.transport.reset() {
            core::mem::forget(self.queue.take());
            core::mem::forget(self.control.take());
            for s in &mut self.slots {
                core::mem::forget(s.data.take());
            }
        }
    }
}
