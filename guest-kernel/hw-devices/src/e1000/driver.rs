//! The guest's driver for the Intel 82540EM ([`E1000`]), a [`NetDevice`] like netfront.
//!
//! Initialisation follows Linux's `e1000_reset_hw` / `e1000_init_hw` /
//! `e1000_configure_{tx,rx}` for this part, minus what a fixed, emulated copper link
//! does not need (PHY setup, flow control, VLAN, offloads): mask interrupts, stop the
//! queues, `CTRL.RST` (waited for with a bounded poll), read and check the EEPROM
//! through EERD (82540EM layout), program RAL0/RAH0 and clear the MTA, set up one
//! receive and one transmit ring of legacy descriptors with a fixed 2048-byte buffer
//! per descriptor, enable the receiver (`EN | BAM | SECRC`, 2048-byte buffers) and the
//! transmitter (`EN | PSP`, Linux's collision fields), unmask `RXT0 | TXDW | LSC |
//! RXDMT0 | RXO`.
//!
//! Data path: [`NetDevice::transmit`] copies a frame into the buffer of the next
//! transmit descriptor (`EOP | IFCS | RS`); [`NetDevice::kick`] writes TDT once for
//! the batch. [`NetDevice::receive`] takes the descriptor at the driver's receive head
//! when the device set DD; the RDT write that returns consumed descriptors happens
//! once per batch (when no more frames wait, when a quarter of the ring is
//! outstanding, and in [`NetDevice::poll`]). [`NetDevice::poll`] reads ICR (which
//! acknowledges the interrupt) and reaps transmit descriptors with DD.
//!
//! Ring convention: the device owns descriptors `RDH..RDT`; the driver keeps one
//! descriptor back (the "gap" at RDT) so a full ring is told apart from an empty one.
//! A device that sets DD on the gap has written a descriptor it was never given: that
//! is a protocol error. Lengths and status bits the device writes back are checked
//! against the driver's own record of each buffer; the buffer address in a completed
//! descriptor is never read back.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::Ordering;

use pv_drivers::device::{NetDevice, NetError, NetInfo};
use pv_drivers::shmem::SharedMemory;

use super::{
    DESC_SIZE, RxDesc, TxDesc, ctrl, eeprom, eerd, icr, mdic, rah, rctl, reg, rx_status, status,
    tctl, tipg, tx_cmd, tx_status,
};
use crate::{DmaMemory, Mmio, PAGE_SIZE};

/// Bytes of each receive and transmit buffer (RCTL.BSIZE 2048).
pub const BUFFER_SIZE: usize = 2048;
/// Largest Ethernet frame (no FCS) the driver sends or accepts.
pub const MAX_FRAME: usize = 1514;
/// Smallest frame the driver accepts from the device (an Ethernet header).
const MIN_FRAME: usize = 14;
/// Register reads a bounded wait makes before giving up (reset, EERD, MDIC). An
/// emulated device answers at once; real hardware within a few hundred reads.
const POLL_LIMIT: u32 = 10_000;
/// Causes the driver unmasks.
pub const IRQ_MASK: u32 = icr::RXT0 | icr::TXDW | icr::LSC | icr::RXDMT0 | icr::RXO;

/// Ring sizes and interrupt throttling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E1000Config {
    /// Receive descriptors (a multiple of 8, 8..=4096).
    pub rx_descs: usize,
    /// Transmit descriptors (a multiple of 8, 8..=4096).
    pub tx_descs: usize,
    /// ITR value (256 ns units; 0: no throttling asked, the device's minimum applies).
    pub itr: u32,
}

impl Default for E1000Config {
    fn default() -> Self {
        Self {
            rx_descs: 256,
            tx_descs: 256,
            itr: 0,
        }
    }
}

/// Why [`E1000::new`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// A ring size is not a multiple of 8 in 8..=4096.
    BadConfig,
    /// DMA memory ran out.
    OutOfMemory,
    /// CTRL.RST did not clear.
    ResetTimeout,
    /// An EERD read never reported DONE.
    EepromTimeout,
    /// The EEPROM's words do not add up to 0xBABA.
    EepromChecksum,
    /// The EEPROM's MAC is zero or multicast.
    BadMac([u8; 6]),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadConfig => f.write_str("ring sizes must be multiples of 8 in 8..=4096"),
            Self::OutOfMemory => f.write_str("out of DMA memory"),
            Self::ResetTimeout => f.write_str("device reset did not complete"),
            Self::EepromTimeout => f.write_str("EEPROM read did not complete"),
            Self::EepromChecksum => f.write_str("EEPROM checksum is not 0xBABA"),
            Self::BadMac(m) => write!(
                f,
                "invalid MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
        }
    }
}

impl core::error::Error for InitError {}

impl From<InitError> for NetError {
    fn from(e: InitError) -> Self {
        match e {
            InitError::BadConfig | InitError::OutOfMemory => Self::Disconnected,
            _ => Self::Protocol,
        }
    }
}

/// The driver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct E1000Stats {
    /// Register reads (each one a vCPU exit).
    pub mmio_reads: u64,
    /// Register writes.
    pub mmio_writes: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// TDT writes (transmit batches).
    pub tx_kicks: u64,
    /// Transmit descriptors reaped with DD.
    pub tx_reaped: u64,
    /// `transmit` refused for lack of a descriptor.
    pub tx_busy: u64,
    /// Frames received and handed up.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// RDT writes (receive buffers returned).
    pub rdt_writes: u64,
    /// Frames dropped: the device reported a receive error.
    pub rx_error_frames: u64,
    /// Frames dropped: length beyond the buffer (a lying device).
    pub rx_bad_length: u64,
    /// Frames dropped: shorter than an Ethernet header.
    pub rx_runts: u64,
    /// Frames dropped: spread over several descriptors (larger than a buffer).
    pub rx_multi_desc: u64,
    /// ICR reads.
    pub icr_reads: u64,
    /// ICR reads that returned no cause.
    pub icr_empty: u64,
    /// ICR reads with RXT0.
    pub irq_rxt0: u64,
    /// ICR reads with TXDW.
    pub irq_txdw: u64,
    /// ICR reads with TXQE.
    pub irq_txqe: u64,
    /// ICR reads with LSC.
    pub irq_lsc: u64,
    /// ICR reads with RXDMT0.
    pub irq_rxdmt0: u64,
    /// ICR reads with RXO.
    pub irq_rxo: u64,
    /// Protocol errors (the driver shut down).
    pub protocol_errors: u64,
}

/// A ring of descriptors, each with its own buffer.
struct Ring<P> {
    /// Descriptors.
    descs: P,
    descs_paddr: u64,
    /// Buffer pages (two 2048-byte buffers per page).
    pages: Vec<(u64, P)>,
    len: usize,
}

impl<P: SharedMemory> Ring<P> {
    fn alloc<D: DmaMemory<Pages = P>>(dma: &mut D, len: usize) -> Result<Self, InitError> {
        let ring_pages = (len * DESC_SIZE).div_ceil(PAGE_SIZE);
        let (descs_paddr, descs) = dma.alloc_pages(ring_pages).ok_or(InitError::OutOfMemory)?;
        let mut ring = Self {
            descs,
            descs_paddr,
            pages: Vec::new(),
            len,
        };
        let per_page = PAGE_SIZE / BUFFER_SIZE;
        for _ in 0..len.div_ceil(per_page) {
            match dma.alloc_pages(1) {
                Some(p) => ring.pages.push(p),
                None => {
                    ring.free(dma);
                    return Err(InitError::OutOfMemory);
                }
            }
        }
        Ok(ring)
    }

    fn free<D: DmaMemory<Pages = P>>(self, dma: &mut D) {
        for (paddr, p) in self.pages {
            dma.free_pages(paddr, p);
        }
        dma.free_pages(self.descs_paddr, self.descs);
    }

    /// The page and offset of buffer `i`, and its guest-physical address.
    fn buffer(&self, i: usize) -> (&P, usize, u64) {
        let per_page = PAGE_SIZE / BUFFER_SIZE;
        let (paddr, page) = &self.pages[i / per_page];
        let off = (i % per_page) * BUFFER_SIZE;
        (page, off, paddr + off as u64)
    }

    fn desc(&self, i: usize) -> usize {
        i * DESC_SIZE
    }
}

/// The 82540EM driver.
pub struct E1000<M: Mmio, D: DmaMemory> {
    mmio: M,
    dma: D,
    mac: [u8; 6],
    link_up: bool,
    rx: Ring<D::Pages>,
    tx: Ring<D::Pages>,
    /// Next receive descriptor the device will complete.
    rx_next: usize,
    /// Last RDT written (the gap descriptor).
    rdt: usize,
    /// Descriptors consumed since the last RDT write.
    rx_unreturned: usize,
    /// A frame larger than a buffer is being skipped.
    rx_discarding: bool,
    /// Next transmit descriptor to fill.
    tx_tail: usize,
    /// Last TDT written.
    tx_kicked: usize,
    /// Oldest transmit descriptor not yet reaped.
    tx_clean: usize,
    scratch: Vec<u8>,
    broken: bool,
    stats: E1000Stats,
}

impl<M: Mmio, D: DmaMemory> E1000<M, D> {
    /// Resets and initialises the device behind `mmio` (BAR0), with rings and buffers
    /// from `dma`. The PCI command register must already enable memory decoding and
    /// bus mastering.
    pub fn new(mmio: M, mut dma: D, config: E1000Config) -> Result<Self, InitError> {
        let ok = |n: usize| n.is_multiple_of(8) && (8..=4096).contains(&n);
        if !ok(config.rx_descs) || !ok(config.tx_descs) {
            return Err(InitError::BadConfig);
        }
        let rx = Ring::alloc(&mut dma, config.rx_descs)?;
        let tx = match Ring::alloc(&mut dma, config.tx_descs) {
            Ok(t) => t,
            Err(e) => {
                rx.free(&mut dma);
                return Err(e);
            }
        };
        let mut dev = Self {
            mmio,
            dma,
            mac: [0; 6],
            link_up: false,
            rx,
            tx,
            rx_next: 0,
            rdt: 0,
            rx_unreturned: 0,
            rx_discarding: false,
            tx_tail: 0,
            tx_kicked: 0,
            tx_clean: 0,
            scratch: Vec::with_capacity(BUFFER_SIZE),
            broken: false,
            stats: E1000Stats::default(),
        };
        // Nothing points the device at the rings yet, so the memory can go back.
        if let Err(e) = dev.reset().and_then(|()| dev.read_mac()) {
            let Self {
                rx, tx, mut dma, ..
            } = dev;
            rx.free(&mut dma);
            tx.free(&mut dma);
            return Err(e);
        }
        dev.configure(config.itr);
        Ok(dev)
    }

    fn read(&mut self, offset: u32) -> u32 {
        self.stats.mmio_reads += 1;
        self.mmio.read32(offset)
    }

    fn write(&mut self, offset: u32, value: u32) {
        self.stats.mmio_writes += 1;
        self.mmio.write32(offset, value);
    }

    /// Linux's `e1000_reset_hw`: quiesce, then reset and wait for RST to clear.
    fn reset(&mut self) -> Result<(), InitError> {
        self.write(reg::IMC, u32::MAX);
        self.write(reg::RCTL, 0);
        self.write(reg::TCTL, tctl::PSP);
        // Flush the posted writes before the reset.
        self.read(reg::STATUS);
        let c = self.read(reg::CTRL);
        self.write(reg::CTRL, c | ctrl::RST);
        let mut done = false;
        for _ in 0..POLL_LIMIT {
            if self.read(reg::CTRL) & ctrl::RST == 0 {
                done = true;
                break;
            }
        }
        if !done {
            return Err(InitError::ResetTimeout);
        }
        self.write(reg::IMC, u32::MAX);
        self.read(reg::ICR);
        Ok(())
    }

    /// One EEPROM word through EERD (82540EM layout).
    fn eeprom_word(&mut self, addr: usize) -> Result<u16, InitError> {
        self.write(reg::EERD, eerd::START | ((addr as u32) << eerd::ADDR_SHIFT));
        for _ in 0..POLL_LIMIT {
            let v = self.read(reg::EERD);
            if v & eerd::DONE != 0 {
                return Ok((v >> eerd::DATA_SHIFT) as u16);
            }
        }
        Err(InitError::EepromTimeout)
    }

    /// Reads the whole EEPROM, checks its checksum (as Linux does before trusting
    /// it), and takes the MAC from words 0-2.
    fn read_mac(&mut self) -> Result<(), InitError> {
        let mut words = [0u16; eeprom::WORDS];
        for (i, w) in words.iter_mut().enumerate() {
            *w = self.eeprom_word(i)?;
        }
        if !eeprom::valid(&words) {
            return Err(InitError::EepromChecksum);
        }
        let mut mac = [0u8; 6];
        for (i, w) in words[eeprom::MAC_WORDS].iter().enumerate() {
            mac[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
        }
        if mac == [0; 6] || mac[0] & 1 != 0 {
            return Err(InitError::BadMac(mac));
        }
        self.mac = mac;
        Ok(())
    }

    fn configure(&mut self, itr: u32) {
        let m = self.mac;
        self.write(reg::RAL0, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
        self.write(
            reg::RAH0,
            u32::from(u16::from_le_bytes([m[4], m[5]])) | rah::AV,
        );
        for i in 0..reg::MTA_LEN {
            self.write(reg::MTA + 4 * i, 0);
        }
        let c = self.read(reg::CTRL);
        self.write(
            reg::CTRL,
            (c | ctrl::SLU) & !(ctrl::FRCSPD | ctrl::FRCDPX | ctrl::PHY_RST),
        );

        // Transmit ring: descriptors are written when frames are queued.
        let (lo, hi) = split(self.tx.descs_paddr);
        self.write(reg::TDBAL, lo);
        self.write(reg::TDBAH, hi);
        self.write(reg::TDLEN, (self.tx.len * DESC_SIZE) as u32);
        self.write(reg::TDH, 0);
        self.write(reg::TDT, 0);
        self.write(reg::TIPG, tipg::IPGT_COPPER | tipg::IPGR1 | tipg::IPGR2);
        self.write(reg::TIDV, 0);
        self.write(reg::TADV, 0);
        self.write(
            reg::TCTL,
            tctl::EN
                | tctl::PSP
                | tctl::RTLC
                | tctl::CT_DEFAULT << tctl::CT_SHIFT
                | tctl::COLD_FULL_DUPLEX << tctl::COLD_SHIFT,
        );

        // Receive ring: every descriptor but the gap is posted.
        for i in 0..self.rx.len {
            self.post_rx(i);
        }
        let (lo, hi) = split(self.rx.descs_paddr);
        self.write(reg::RDBAL, lo);
        self.write(reg::RDBAH, hi);
        self.write(reg::RDLEN, (self.rx.len * DESC_SIZE) as u32);
        self.write(reg::RDH, 0);
        self.write(reg::RDT, 0);
        self.write(reg::RDTR, 0);
        self.write(reg::RADV, 0);
        self.write(reg::ITR, itr);
        self.write(
            reg::RCTL,
            rctl::EN | rctl::BAM | rctl::SECRC | rctl::BSIZE_2048,
        );
        self.rdt = self.rx.len - 1;
        self.write(reg::RDT, self.rdt as u32);
        self.stats.rdt_writes += 1;

        self.write(reg::IMS, IRQ_MASK);
        self.link_up = self.read(reg::STATUS) & status::LU != 0;
    }

    /// Gives receive descriptor `i` its buffer, with the status cleared.
    fn post_rx(&mut self, i: usize) {
        let (_, _, paddr) = self.rx.buffer(i);
        let d = self.rx.desc(i);
        self.rx.descs.store_u64(d + 8, 0, Ordering::Relaxed);
        self.rx.descs.store_u64(d, paddr, Ordering::Release);
    }

    /// The MAC address read from the EEPROM.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether STATUS reported the link up (at init and on each LSC).
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// The driver's counters.
    pub fn stats(&self) -> E1000Stats {
        self.stats
    }

    /// Reads PHY register `reg` through MDIC (`None` on an error or no answer).
    pub fn phy_read(&mut self, phy_reg: u32) -> Option<u16> {
        self.write(
            reg::MDIC,
            (phy_reg << mdic::REG_SHIFT) & mdic::REG_MASK
                | mdic::PHY_ADDR << mdic::PHY_SHIFT
                | mdic::OP_READ,
        );
        for _ in 0..POLL_LIMIT {
            let v = self.read(reg::MDIC);
            if v & mdic::READY != 0 {
                return (v & mdic::ERROR == 0).then_some((v & mdic::DATA_MASK) as u16);
            }
        }
        None
    }

    /// Stops the device (reset) and returns its register window and the DMA memory,
    /// with the rings' pages freed if the reset completed (leaked otherwise: the
    /// device might still write them).
    pub fn shutdown(mut self) -> (M, D) {
        let stopped = self.reset().is_ok();
        let Self {
            mmio,
            rx,
            tx,
            mut dma,
            ..
        } = self;
        if stopped {
            rx.free(&mut dma);
            tx.free(&mut dma);
        }
        (mmio, dma)
    }

    fn check(&self) -> Result<(), NetError> {
        if self.broken {
            Err(NetError::Protocol)
        } else {
            Ok(())
        }
    }

    fn protocol_error(&mut self) -> NetError {
        self.broken = true;
        self.stats.protocol_errors += 1;
        // Stop the device from writing into buffers the driver no longer tracks.
        self.write(reg::IMC, u32::MAX);
        self.write(reg::RCTL, 0);
        self.write(reg::TCTL, 0);
        NetError::Protocol
    }

    fn tx_in_flight(&self) -> usize {
        (self.tx_tail + self.tx.len - self.tx_clean) % self.tx.len
    }

    fn reap_tx(&mut self) {
        while self.tx_clean != self.tx_kicked {
            let d = self.tx.desc(self.tx_clean);
            if self.tx.descs.load_u8(d + TxDesc::STATUS, Ordering::Acquire) & tx_status::DD == 0 {
                break;
            }
            self.tx
                .descs
                .store_u8(d + TxDesc::STATUS, 0, Ordering::Relaxed);
            self.tx_clean = (self.tx_clean + 1) % self.tx.len;
            self.stats.tx_reaped += 1;
        }
    }

    /// Returns consumed receive descriptors to the device (one RDT write). Those
    /// descriptors, from the old gap to the last one consumed, were the driver's: a
    /// DD on any of them was written by a device that did not own it.
    fn return_rx(&mut self) -> Result<(), NetError> {
        if self.rx_unreturned == 0 || self.broken {
            return Ok(());
        }
        let new_rdt = (self.rx_next + self.rx.len - 1) % self.rx.len;
        let mut i = self.rdt;
        while i != new_rdt {
            let d = self.rx.desc(i) + RxDesc::STATUS;
            if self.rx.descs.load_u8(d, Ordering::Acquire) & rx_status::DD != 0 {
                return Err(self.protocol_error());
            }
            i = (i + 1) % self.rx.len;
        }
        self.rdt = new_rdt;
        self.rx_unreturned = 0;
        self.stats.rdt_writes += 1;
        self.write(reg::RDT, self.rdt as u32);
        Ok(())
    }
}

fn split(paddr: u64) -> (u32, u32) {
    (paddr as u32, (paddr >> 32) as u32)
}

impl<M: Mmio, D: DmaMemory> NetDevice for E1000<M, D> {
    fn info(&self) -> NetInfo {
        NetInfo {
            mac: self.mac,
            max_frame: MAX_FRAME,
        }
    }

    fn can_transmit(&self, len: usize) -> bool {
        !self.broken && (1..=MAX_FRAME).contains(&len) && self.tx_in_flight() + 1 < self.tx.len
    }

    fn transmit(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<(), NetError> {
        self.check()?;
        if len == 0 || len > MAX_FRAME {
            return Err(NetError::BadFrame);
        }
        if self.tx_in_flight() + 1 >= self.tx.len {
            self.reap_tx();
            if self.tx_in_flight() + 1 >= self.tx.len {
                self.stats.tx_busy += 1;
                return Err(NetError::Busy);
            }
        }
        self.scratch.clear();
        self.scratch.resize(len, 0);
        fill(&mut self.scratch);
        let i = self.tx_tail;
        let (page, off, paddr) = self.tx.buffer(i);
        page.write_bytes(off, &self.scratch);
        let desc = TxDesc {
            addr: paddr,
            length: len as u16,
            cmd: tx_cmd::EOP | tx_cmd::IFCS | tx_cmd::RS,
            ..TxDesc::default()
        };
        let b = desc.to_bytes();
        let d = self.tx.desc(i);
        let upper = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        self.tx.descs.store_u64(d, paddr, Ordering::Relaxed);
        self.tx.descs.store_u64(d + 8, upper, Ordering::Release);
        self.tx_tail = (i + 1) % self.tx.len;
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        Ok(())
    }

    fn kick(&mut self) {
        if self.broken || self.tx_tail == self.tx_kicked {
            return;
        }
        self.tx_kicked = self.tx_tail;
        self.stats.tx_kicks += 1;
        self.write(reg::TDT, self.tx_tail as u32);
    }

    fn receive(&mut self, take: &mut dyn FnMut(&[u8])) -> Result<bool, NetError> {
        self.check()?;
        // Bounded: each turn consumes a posted descriptor, and the loop stops at the
        // gap (checked first).
        loop {
            let i = self.rx_next;
            let d = self.rx.desc(i);
            let st = self.rx.descs.load_u8(d + RxDesc::STATUS, Ordering::Acquire);
            if st & rx_status::DD == 0 {
                self.return_rx()?;
                return Ok(false);
            }
            if i == self.rdt {
                // DD on the descriptor the driver kept back: never posted.
                return Err(self.protocol_error());
            }
            let len = usize::from(
                self.rx
                    .descs
                    .load_u16(d + RxDesc::LENGTH, Ordering::Relaxed),
            );
            let errors = self.rx.descs.load_u8(d + RxDesc::ERRORS, Ordering::Relaxed);
            let eop = st & rx_status::EOP != 0;
            let discarding = self.rx_discarding;
            self.rx_discarding = !eop;
            let mut delivered = false;
            if !eop || discarding {
                if eop {
                    self.stats.rx_multi_desc += 1;
                }
            } else if errors != 0 {
                self.stats.rx_error_frames += 1;
            } else if len > BUFFER_SIZE {
                self.stats.rx_bad_length += 1;
            } else if len < MIN_FRAME {
                self.stats.rx_runts += 1;
            } else {
                self.scratch.clear();
                self.scratch.resize(len, 0);
                let (page, off, _) = self.rx.buffer(i);
                page.read_bytes(off, &mut self.scratch);
                take(&self.scratch);
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += len as u64;
                delivered = true;
            }
            self.post_rx(i);
            self.rx_next = (i + 1) % self.rx.len;
            self.rx_unreturned += 1;
            if self.rx_unreturned >= self.rx.len / 4 {
                self.return_rx()?;
            }
            if delivered {
                return Ok(true);
            }
        }
    }

    fn poll(&mut self) -> Result<(), NetError> {
        self.check()?;
        let cause = self.read(reg::ICR);
        self.stats.icr_reads += 1;
        let s = &mut self.stats;
        for (bit, n) in [
            (icr::RXT0, &mut s.irq_rxt0),
            (icr::TXDW, &mut s.irq_txdw),
            (icr::TXQE, &mut s.irq_txqe),
            (icr::LSC, &mut s.irq_lsc),
            (icr::RXDMT0, &mut s.irq_rxdmt0),
            (icr::RXO, &mut s.irq_rxo),
        ] {
            if cause & bit != 0 {
                *n += 1;
            }
        }
        if cause == 0 {
            s.icr_empty += 1;
        }
        if cause & icr::LSC != 0 {
            self.link_up = self.read(reg::STATUS) & status::LU != 0;
        }
        self.reap_tx();
        self.return_rx()
    }
}
