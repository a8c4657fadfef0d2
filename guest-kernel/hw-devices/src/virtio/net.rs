//! The guest's virtio-net driver (virtio 1.2, 5.1), a `NetDevice` like netfront and the
//! e1000 driver, on `virtio-drivers`' `VirtIONetRaw` over [`PciTransport`].
//!
//! - `VirtIONetRaw` negotiates `VERSION_1`, `MAC`, `STATUS`, `INDIRECT_DESC` and
//!   `EVENT_IDX`, sets up the receive (0) and transmit (1) queues and fills in the
//!   `virtio_net_hdr` (12 bytes with `VERSION_1`: no offloads asked, no mergeable
//!   buffers). It notifies after every buffer it adds (its `should_notify`, called once
//!   per add, is then correct across the index wrap; see `super::blk` for the batched
//!   case it gets wrong), so [`NetDevice::kick`] has nothing to do.
//! - Buffers: [`VirtioNetConfig::rx_buffers`] receive and
//!   [`VirtioNetConfig::tx_buffers`] transmit buffers of [`BUFFER_SIZE`] bytes (two per
//!   page of DMA memory), each receive buffer posted at init and again right after its
//!   frame was handed up. [`NetDevice::poll`] reads the ISR byte (acknowledging INTx; a
//!   configuration change re-reads the link status) and reaps transmit completions.
//!
//! The device is hostile, and `VirtIONetRaw` trusts the used length it returns: here a
//! used element is only popped if the used index is ahead of the last one seen by at
//! most the buffers outstanding on that queue and its id is the token of a buffer
//! posted there; a length beyond the buffer posted is a protocol error (the device is
//! reset and the driver answers `NetError::Protocol` from then on); a length shorter
//! than the header plus an Ethernet header, or a frame longer than [`MAX_FRAME`], drops
//! that frame (counted) and the buffer is posted again.
//!
//! Not done: checksum and segmentation offloads, mergeable receive buffers, multiple
//! queue pairs, the control queue, MSI-X (INTx only), transmit batching (one notify per
//! frame unless the device suppresses it).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use pv_drivers::device::{NetDevice, NetError, NetInfo};
use virtio_drivers::PAGE_SIZE;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};

use super::transport::PciTransport;
use super::{DmaBuf, VirtioHal, used_idx};
use crate::Mmio;

/// Entries of each queue (the device must offer at least this many).
pub const QUEUE_SIZE: usize = 128;
/// Bytes of each buffer: header and a whole frame fit (`virtio-drivers` asks 1526).
pub const BUFFER_SIZE: usize = 2048;
/// Largest Ethernet frame (no FCS) sent or accepted.
pub const MAX_FRAME: usize = 1514;
/// Smallest frame accepted (an Ethernet header).
const MIN_FRAME: usize = 14;
const RECEIVE_QUEUE: u16 = 0;
const TRANSMIT_QUEUE: u16 = 1;
/// Feature bits looked at before `VirtIONetRaw` negotiates (5.1.3).
const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const F_VERSION_1: u64 = 1 << 32;
/// `struct virtio_net_config`: `status` (u16) at 6, bit 0 link up.
const CFG_STATUS: usize = 6;
const S_LINK_UP: u16 = 1;

/// Buffer counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioNetConfig {
    /// Receive buffers posted (1..=[`QUEUE_SIZE`]).
    pub rx_buffers: usize,
    /// Transmit buffers (1..=[`QUEUE_SIZE`]).
    pub tx_buffers: usize,
}

impl Default for VirtioNetConfig {
    fn default() -> Self {
        Self {
            rx_buffers: QUEUE_SIZE,
            tx_buffers: 64,
        }
    }
}

/// Why [`VirtioNet::new`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// A buffer count out of range.
    BadConfig,
    /// The function is not a network device.
    WrongType(DeviceType),
    /// The device does not offer `VIRTIO_F_VERSION_1` (a legacy device).
    Legacy,
    /// The device offers no MAC address.
    NoMac,
    /// Its MAC is zero or multicast.
    BadMac([u8; 6]),
    /// `virtio-drivers` refused the device (a queue too small, no memory, ...).
    Device(virtio_drivers::Error),
    /// The device broke the transport's rules (see `PciTransport::broken`).
    Transport,
    /// The device refused the features or `DRIVER_OK`, or asked for a reset.
    NotAccepted(u32),
    /// DMA memory ran out.
    OutOfMemory,
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadConfig => f.write_str("buffer counts out of range"),
            Self::WrongType(t) => write!(f, "not a network device but {t:?}"),
            Self::Legacy => f.write_str("the device does not offer VIRTIO_F_VERSION_1"),
            Self::NoMac => f.write_str("the device offers no MAC address"),
            Self::BadMac(m) => write!(
                f,
                "invalid MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            Self::Device(e) => write!(f, "virtio: {e}"),
            Self::Transport => f.write_str("the device broke the virtio-pci transport rules"),
            Self::NotAccepted(s) => write!(
                f,
                "the device did not accept the features or DRIVER_OK (status {s:#x})"
            ),
            Self::OutOfMemory => f.write_str("out of DMA memory"),
        }
    }
}

impl core::error::Error for InitError {}

/// The driver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetStats {
    /// Frames queued for transmission, and their bytes.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Transmit buffers the device returned.
    pub tx_reaped: u64,
    /// `transmit` refused for lack of a buffer.
    pub tx_busy: u64,
    /// Frames received and handed up, and their bytes.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames dropped: shorter than the header plus an Ethernet header.
    pub rx_runts: u64,
    /// Frames dropped: longer than [`MAX_FRAME`].
    pub rx_oversize: u64,
    /// ISR reads, and those that found no cause.
    pub isr_reads: u64,
    /// ISR reads with no cause.
    pub isr_empty: u64,
    /// Configuration-change interrupts (link status re-read).
    pub config_changes: u64,
    /// Protocol errors, by kind: a used id that is no buffer posted on that queue, ...
    pub bad_ids: u64,
    /// ... a used length beyond the buffer posted, ...
    pub bad_lengths: u64,
    /// ... a used index more buffers ahead than are outstanding.
    pub used_ahead: u64,
    /// The driver stopped.
    pub protocol_errors: u64,
}

/// Buffers of [`BUFFER_SIZE`], two to a page.
struct Buffers<H: VirtioHal> {
    pages: Vec<DmaBuf<H>>,
}

impl<H: VirtioHal> Buffers<H> {
    const PER_PAGE: usize = PAGE_SIZE / BUFFER_SIZE;

    fn new(count: usize) -> Option<Self> {
        let pages = (0..count.div_ceil(Self::PER_PAGE))
            .map(|_| DmaBuf::new(1))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { pages })
    }

    /// Buffer `i`, `len` bytes of it.
    ///
    /// # Safety
    ///
    /// As `DmaBuf::slice`: one slice of a buffer at a time, and while the device owns
    /// the buffer only handed to `virtio-drivers`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self, i: usize, len: usize) -> &mut [u8] {
        let page = &self.pages[i / Self::PER_PAGE];
        // SAFETY: buffer `i` is bytes [(i % 2) * BUFFER_SIZE, +BUFFER_SIZE) of its page
        // and `len <= BUFFER_SIZE` (callers pass posted lengths); the caller keeps the
        // slice unaliased.
        unsafe { page.slice((i % Self::PER_PAGE) * BUFFER_SIZE, len.min(BUFFER_SIZE)) }
    }
}

/// One queue's bookkeeping: which buffer (and how many bytes of it) each outstanding
/// token stands for.
struct Tokens {
    by_token: Vec<Option<(u16, u16)>>,
    outstanding: usize,
    /// Used elements consumed (free-running, as the used index).
    seen: u16,
    used_ring: u64,
}

impl Tokens {
    fn new(used_ring: u64) -> Self {
        Self {
            by_token: vec![None; QUEUE_SIZE],
            outstanding: 0,
            seen: 0,
            used_ring,
        }
    }

    fn post(&mut self, token: u16, buffer: usize, len: usize) {
        self.by_token[usize::from(token)] = Some((buffer as u16, len as u16));
        self.outstanding += 1;
    }

    fn take(&mut self, token: u16) {
        self.by_token[usize::from(token)] = None;
        self.outstanding -= 1;
        self.seen = self.seen.wrapping_add(1);
    }
}

/// What the used ring of a queue says next.
enum Next {
    Empty,
    Token(u16, usize, usize),
    Ahead,
    BadId,
}

/// A virtio-net NIC.
pub struct VirtioNet<H: VirtioHal, M: Mmio> {
    /// Boxed: two queues' shadow tables are 8 KiB, too much to move around a 64 KiB
    /// boot stack.
    dev: Option<Box<VirtIONetRaw<H, PciTransport<M>, QUEUE_SIZE>>>,
    transport: PciTransport<M>,
    rx: Option<Buffers<H>>,
    tx: Option<Buffers<H>>,
    rx_tokens: Tokens,
    tx_tokens: Tokens,
    tx_free: Vec<u16>,
    hdr_len: usize,
    mac: [u8; 6],
    status_feature: bool,
    link_up: bool,
    broken: bool,
    stats: VirtioNetStats,
}

impl<H: VirtioHal, M: Mmio> VirtioNet<H, M> {
    /// Initialises the NIC behind `transport` and posts the receive buffers. The
    /// function's memory decode and bus mastering must be on.
    pub fn new(mut transport: PciTransport<M>, config: VirtioNetConfig) -> Result<Self, InitError> {
        let ok = |n: usize| (1..=QUEUE_SIZE).contains(&n);
        if !ok(config.rx_buffers) || !ok(config.tx_buffers) {
            return Err(InitError::BadConfig);
        }
        let kind = transport.device_type();
        if kind != DeviceType::Network {
            return Err(InitError::WrongType(kind));
        }
        match Self::setup(transport.clone(), config) {
            Ok(dev) => Ok(dev),
            Err(e) => {
                transport.reset();
                transport.fail();
                Err(e)
            }
        }
    }

    fn setup(mut transport: PciTransport<M>, config: VirtioNetConfig) -> Result<Self, InitError> {
        let offered = transport.read_device_features();
        if offered & F_VERSION_1 == 0 {
            return Err(InitError::Legacy);
        }
        if offered & F_MAC == 0 {
            return Err(InitError::NoMac);
        }
        let mut keep = transport.clone();
        let mut dev =
            Box::new(VirtIONetRaw::<H, _, QUEUE_SIZE>::new(transport).map_err(InitError::Device)?);
        match Self::start(&mut dev, &keep, config, offered) {
            Ok((mut net, rx, tx)) => {
                net.dev = Some(dev);
                net.rx = Some(rx);
                net.tx = Some(tx);
                Ok(net)
            }
            Err(e) => {
                // The queues' memory goes with `dev`: stop the device first.
                keep.reset();
                Err(e)
            }
        }
        .map(|mut net| {
            net.read_link();
            net
        })
    }

    /// The rest of the set-up, once `VirtIONetRaw` took the device: checks, buffers.
    #[allow(clippy::type_complexity)]
    fn start(
        dev: &mut VirtIONetRaw<H, PciTransport<M>, QUEUE_SIZE>,
        keep: &PciTransport<M>,
        config: VirtioNetConfig,
        offered: u64,
    ) -> Result<(Self, Buffers<H>, Buffers<H>), InitError> {
        let status = keep.get_status();
        if keep.broken() {
            return Err(InitError::Transport);
        }
        if !status.contains(DeviceStatus::FEATURES_OK | DeviceStatus::DRIVER_OK)
            || status.contains(DeviceStatus::DEVICE_NEEDS_RESET)
        {
            return Err(InitError::NotAccepted(status.bits()));
        }
        let mac = dev.mac_address();
        if mac == [0; 6] || mac[0] & 1 != 0 {
            return Err(InitError::BadMac(mac));
        }
        let hdr_len = dev
            .fill_buffer_header(&mut [0u8; 16])
            .map_err(InitError::Device)?;
        let (Some(rx_used), Some(tx_used)) = (
            keep.used_ring(RECEIVE_QUEUE),
            keep.used_ring(TRANSMIT_QUEUE),
        ) else {
            return Err(InitError::Transport);
        };
        let rx = Buffers::<H>::new(config.rx_buffers).ok_or(InitError::OutOfMemory)?;
        let tx = Buffers::<H>::new(config.tx_buffers).ok_or(InitError::OutOfMemory)?;
        let mut rx_tokens = Tokens::new(rx_used);
        for i in 0..config.rx_buffers {
            // SAFETY: buffer `i` is fresh DMA memory nothing else references; it is
            // not touched until its token is popped in `receive`.
            let token =
                unsafe { dev.receive_begin(rx.get(i, BUFFER_SIZE)) }.map_err(InitError::Device)?;
            rx_tokens.post(token, i, BUFFER_SIZE);
        }
        let status_feature = offered & F_STATUS != 0;
        let net = Self {
            dev: None,
            transport: keep.clone(),
            rx: None,
            tx: None,
            rx_tokens,
            tx_tokens: Tokens::new(tx_used),
            tx_free: (0..config.tx_buffers as u16).rev().collect(),
            hdr_len,
            mac,
            status_feature,
            link_up: true,
            broken: false,
            stats: VirtioNetStats::default(),
        };
        Ok((net, rx, tx))
    }

    fn read_link(&mut self) {
        if self.status_feature {
            let s: Result<u16, _> = self.transport.read_config_space(CFG_STATUS);
            self.link_up = s.is_ok_and(|s| s & S_LINK_UP != 0);
        }
    }

    /// The MAC address the device offers.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether the link is up (always, without `VIRTIO_NET_F_STATUS`).
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// The driver's counters.
    pub fn stats(&self) -> VirtioNetStats {
        self.stats
    }

    /// The transport (to look at the device in tests).
    pub fn transport(&self) -> &PciTransport<M> {
        &self.transport
    }

    /// The device broke the protocol: count it, reset the device so it stops using
    /// the buffers, answer `Protocol` from now on.
    fn protocol_error(&mut self) -> NetError {
        if !self.broken {
            self.broken = true;
            self.stats.protocol_errors += 1;
            if !self.transport.reset() {
                // It may still write the rings and buffers: never free them.
                core::mem::forget(self.dev.take());
                core::mem::forget(self.rx.take());
                core::mem::forget(self.tx.take());
            }
            self.transport.fail();
        }
        NetError::Protocol
    }

    fn check(&self) -> Result<(), NetError> {
        if self.broken {
            Err(NetError::Protocol)
        } else {
            Ok(())
        }
    }

    /// The next used element of the queue `tokens` tracks, checked, not yet popped.
    fn next_used(&mut self, receive: bool) -> Next {
        let (tokens, dev) = match (self.dev.as_mut(), receive) {
            (Some(d), true) => (&self.rx_tokens, d.poll_receive()),
            (Some(d), false) => (&self.tx_tokens, d.poll_transmit()),
            (None, _) => return Next::Empty,
        };
        let Some(idx) = used_idx::<H>(tokens.used_ring) else {
            return Next::Ahead;
        };
        let pending = usize::from(idx.wrapping_sub(tokens.seen));
        if pending == 0 {
            return Next::Empty;
        }
        if pending > tokens.outstanding {
            return Next::Ahead;
        }
        let Some(token) = dev else {
            return Next::Empty;
        };
        match tokens.by_token.get(usize::from(token)).copied().flatten() {
            Some((buffer, len)) => Next::Token(token, usize::from(buffer), usize::from(len)),
            None => Next::BadId,
        }
    }

    fn bad(&mut self, next: Next) -> NetError {
        match next {
            Next::Ahead => self.stats.used_ahead += 1,
            _ => self.stats.bad_ids += 1,
        }
        self.protocol_error()
    }

    /// Takes back every transmit buffer the device is done with.
    fn reap_tx(&mut self) -> Result<(), NetError> {
        // Bounded: each turn consumes an outstanding buffer.
        while self.tx_tokens.outstanding > 0 {
            let (token, buffer, len) = match self.next_used(false) {
                Next::Empty => return Ok(()),
                Next::Token(t, b, l) => (t, b, l),
                other => return Err(self.bad(other)),
            };
            let (Some(dev), Some(tx)) = (self.dev.as_mut(), self.tx.as_ref()) else {
                return Err(NetError::Protocol);
            };
            // SAFETY: the buffer and length `transmit` handed over with this token.
            let done = unsafe { dev.transmit_complete(token, tx.get(buffer, len)) };
            match done {
                Ok(used) => {
                    self.tx_tokens.take(token);
                    self.tx_free.push(buffer as u16);
                    self.stats.tx_reaped += 1;
                    // The device only reads a transmit buffer (5.1.6.2: it writes 0).
                    if used > len {
                        self.stats.bad_lengths += 1;
                        return Err(self.protocol_error());
                    }
                }
                Err(_) => {
                    self.stats.bad_ids += 1;
                    return Err(self.protocol_error());
                }
            }
        }
        Ok(())
    }
}

impl<H: VirtioHal, M: Mmio> NetDevice for VirtioNet<H, M> {
    fn info(&self) -> NetInfo {
        NetInfo {
            mac: self.mac,
            max_frame: MAX_FRAME,
        }
    }

    fn can_transmit(&self, len: usize) -> bool {
        !self.broken && (1..=MAX_FRAME).contains(&len) && !self.tx_free.is_empty()
    }

    fn transmit(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<(), NetError> {
        self.check()?;
        if len == 0 || len > MAX_FRAME {
            return Err(NetError::BadFrame);
        }
        if self.tx_free.is_empty() {
            self.reap_tx()?;
        }
        let Some(buffer) = self.tx_free.pop() else {
            self.stats.tx_busy += 1;
            return Err(NetError::Busy);
        };
        let buffer = usize::from(buffer);
        let total = self.hdr_len + len;
        let (Some(dev), Some(tx)) = (self.dev.as_mut(), self.tx.as_ref()) else {
            return Err(NetError::Protocol);
        };
        // SAFETY: a free buffer: neither the device nor another slice has it.
        let buf = unsafe { tx.get(buffer, total) };
        let added = dev.fill_buffer_header(buf).and_then(|hdr| {
            fill(&mut buf[hdr..total]);
            // SAFETY: the buffer is not touched until `reap_tx` pops this token.
            unsafe { dev.transmit_begin(buf) }
        });
        match added {
            Ok(token) => {
                self.tx_tokens.post(token, buffer, total);
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += len as u64;
                Ok(())
            }
            Err(virtio_drivers::Error::QueueFull) => {
                self.tx_free.push(buffer as u16);
                self.stats.tx_busy += 1;
                Err(NetError::Busy)
            }
            Err(_) => Err(self.protocol_error()),
        }
    }

    fn kick(&mut self) {
        // `VirtIONetRaw` notified as it added each buffer.
    }

    fn receive(&mut self, take: &mut dyn FnMut(&[u8])) -> Result<bool, NetError> {
        self.check()?;
        // Bounded: each turn pops an outstanding buffer (and posts it again).
        for _ in 0..=self.rx_tokens.outstanding {
            let (token, buffer, len) = match self.next_used(true) {
                Next::Empty => return Ok(false),
                Next::Token(t, b, l) => (t, b, l),
                other => return Err(self.bad(other)),
            };
            let (Some(dev), Some(rx)) = (self.dev.as_mut(), self.rx.as_ref()) else {
                return Err(NetError::Protocol);
            };
            // SAFETY: the buffer and length posted with this token.
            let done = unsafe { dev.receive_complete(token, rx.get(buffer, len)) };
            let mut delivered = false;
            match done {
                Ok((hdr, frame)) => {
                    self.rx_tokens.take(token);
                    // virtio-drivers returns the device's length minus the header
                    // unchecked: a length beyond the buffer must never be sliced with.
                    if hdr.checked_add(frame).is_none_or(|end| end > len) {
                        self.stats.bad_lengths += 1;
                        return Err(self.protocol_error());
                    }
                    if frame < MIN_FRAME {
                        self.stats.rx_runts += 1;
                    } else if frame > MAX_FRAME {
                        self.stats.rx_oversize += 1;
                    } else {
                        // SAFETY: the device returned the buffer; the slice ends before
                        // it is posted again.
                        let b = unsafe { rx.get(buffer, len) };
                        take(&b[hdr..hdr + frame]);
                        self.stats.rx_frames += 1;
                        self.stats.rx_bytes += frame as u64;
                        delivered = true;
                    }
                }
                // Shorter than the header (popped all the same).
                Err(virtio_drivers::Error::IoError) => {
                    self.rx_tokens.take(token);
                    self.stats.rx_runts += 1;
                }
                Err(_) => {
                    self.stats.bad_ids += 1;
                    return Err(self.protocol_error());
                }
            }
            // SAFETY: the device gave the buffer back and no slice of it lives.
            match unsafe { dev.receive_begin(rx.get(buffer, BUFFER_SIZE)) } {
                Ok(t) => self.rx_tokens.post(t, buffer, BUFFER_SIZE),
                Err(_) => return Err(self.protocol_error()),
            }
            if delivered {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn poll(&mut self) -> Result<(), NetError> {
        self.check()?;
        // Reading ISR acknowledges the interrupt and lowers INTx (4.1.4.5).
        let isr = self.transport.ack_interrupt();
        self.stats.isr_reads += 1;
        if isr.is_empty() {
            self.stats.isr_empty += 1;
        }
        if isr.contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT) {
            self.stats.config_changes += 1;
            self.read_link();
        }
        self.reap_tx()
    }
}

impl<H: VirtioHal, M: Mmio> Drop for VirtioNet<H, M> {
    fn drop(&mut self) {
        if self.broken {
            return;
        }
        if !self.transport.reset() {
            core::mem::forget(self.dev.take());
            core::mem::forget(self.rx.take());
            core::mem::forget(self.tx.take());
        }
    }
}
