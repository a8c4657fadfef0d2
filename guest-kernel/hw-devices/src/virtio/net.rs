//! The guest's virtio-net driver (virtio 1.2, 5.1), a `NetDevice` like netfront and the
//! e1000 driver, on `virtio-drivers`' `VirtQueue` over [`PciTransport`].
//!
//! Why not `virtio-drivers`' own `VirtIONetRaw` (which this driver used before): it
//! notifies the device inside `transmit_begin`, once per frame, and negotiates
//! `EVENT_IDX`, whose `VirtQueue::should_notify` misses a notification when a batch of
//! adds crosses the 16-bit index wrap (see `super::blk`). So, as `super::blk` does,
//! this driver uses the crate's queues, feature handshake and configuration access,
//! and lays out the `virtio_net_hdr` itself.
//!
//! - Negotiated: `VERSION_1`, `MAC`, `STATUS`. Not `EVENT_IDX` (above): notifications
//!   are suppressed by the used ring's flag only. Receive (0) and transmit (1) queues of
//!   [`QUEUE_SIZE`] entries; every buffer is one descriptor starting with the 12-byte
//!   header (`VERSION_1`: no offloads asked, no mergeable buffers, all zero on transmit).
//! - Buffers: [`VirtioNetConfig::rx_buffers`] receive and
//!   [`VirtioNetConfig::tx_buffers`] transmit buffers of [`BUFFER_SIZE`] bytes (two per
//!   page of DMA memory), each receive buffer posted at init and again right after its
//!   frame was handed up (the receive queue is notified at once, unless the device
//!   suppresses it: it waits for buffers). While [`NetDevice::receive`] drains the
//!   receive queue the device is asked not to interrupt for it
//!   (`VIRTQ_AVAIL_F_NO_INTERRUPT`), and asked again before `receive` says the ring
//!   is empty, with one more look after that (as Linux's NAPI does): with MSI-X, where
//!   nothing holds a message back as a masked INTx line does, a stream of frames
//!   otherwise costs an interrupt each. Without `EVENT_IDX` the flag is a hint a
//!   device may ignore (QEMU and host-shim honour it).
//! - Transmit is batched: [`NetDevice::transmit`] adds the frame to the available ring
//!   without notifying; [`NetDevice::kick`] notifies once for all frames added since the
//!   last kick, unless the device set `VRING_USED_F_NO_NOTIFY`; a transmit that takes
//!   the last free buffer kicks at once (the frames must reach the device before
//!   buffers can come back).
//! - Transmit completions raise no interrupt (`VIRTQ_AVAIL_F_NO_INTERRUPT` on the
//!   transmit queue, as Linux's virtio-net keeps it) while a transmit buffer is free:
//!   they are reaped by [`NetDevice::poll`] and when a transmit finds none free; one
//!   that still finds none asks for the interrupt (and looks once more) before it
//!   answers `Busy`.
//! - Interrupts: [`NetDevice::poll`] reaps transmit completions; with INTx it first
//!   reads the ISR byte (acknowledging the line; a configuration change re-reads the
//!   link status); with MSI-X on ([`PciTransport::msix_active`]) it reads no ISR (no
//!   exit per interrupt), and configuration changes are not signalled (the link status
//!   is read at init only).
//!
//! The device is hostile, and `VirtQueue::pop_used` trusts the used length it returns:
//! here a used element is only popped if the used index is ahead of the last one seen by
//! at most the buffers outstanding on that queue and its id is the token of a buffer
//! posted there; a length beyond the buffer posted is a protocol error (the device is
//! reset and the driver answers `NetError::Protocol` from then on); a length shorter
//! than the header plus an Ethernet header, or a frame longer than [`MAX_FRAME`], drops
//! that frame (counted) and the buffer is posted again.
//!
//! Not done: checksum and segmentation offloads, mergeable receive buffers, multiple
//! queue pairs, the control queue, link-change interrupts under MSI-X.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use bitflags::bitflags;
use pv_drivers::device::{NetDevice, NetError, NetInfo};
use virtio_drivers::PAGE_SIZE;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};

use super::transport::PciTransport;
use super::{DmaBuf, InitError, VirtioHal, used_idx};
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
/// Bytes of `struct virtio_net_hdr` with `VERSION_1` (5.1.6: `num_buffers` included).
pub const HEADER: usize = 12;
/// `struct virtio_net_config`: `mac` (6 bytes) at 0, `status` (u16) at 6, bit 0 link
/// up.
const CFG_MAC: usize = 0;
const CFG_STATUS: usize = 6;
const S_LINK_UP: u16 = 1;

bitflags! {
    /// The feature bits this driver knows (5.1.3, 6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Features: u64 {
        /// The device has a MAC address in its configuration.
        const MAC = 1 << 5;
        /// The configuration has the link status.
        const STATUS = 1 << 16;
        /// `used_event`/`avail_event` (never negotiated here: see the module docs).
        const EVENT_IDX = 1 << 29;
        /// virtio 1.x.
        const VERSION_1 = 1 << 32;
    }
}

/// What the driver accepts.
const SUPPORTED: Features = Features::MAC
    .union(Features::STATUS)
    .union(Features::VERSION_1);

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
    /// Transmit-queue notifications written (each a doorbell, or an exit without
    /// ioeventfd): one per kicked batch.
    pub tx_notifies: u64,
    /// Kicks the device's `NO_NOTIFY` flag made unnecessary.
    pub tx_notifies_suppressed: u64,
    /// Receive-queue notifications written.
    pub rx_notifies: u64,
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

/// The two queues (boxed: their shadow tables are 4 KiB each, too much to move around
/// a 64 KiB boot stack).
struct Queues<H: VirtioHal> {
    rx: Box<VirtQueue<H, QUEUE_SIZE>>,
    tx: Box<VirtQueue<H, QUEUE_SIZE>>,
}

/// A virtio-net NIC.
pub struct VirtioNet<H: VirtioHal, M: Mmio> {
    queues: Option<Queues<H>>,
    transport: PciTransport<M>,
    rx: Option<Buffers<H>>,
    tx: Option<Buffers<H>>,
    rx_tokens: Tokens,
    tx_tokens: Tokens,
    tx_free: Vec<u16>,
    /// Frames added to the transmit queue since the last kick.
    tx_unkicked: usize,
    /// Whether the receive queue asks the device to interrupt for used buffers (off
    /// while `receive` drains it).
    rx_interrupts: bool,
    /// Whether the transmit queue does (only while no transmit buffer is free).
    tx_interrupts: bool,
    mac: [u8; 6],
    features: Features,
    link_up: bool,
    broken: bool,
    stats: VirtioNetStats,
}

impl<H: VirtioHal, M: Mmio> VirtioNet<H, M> {
    /// Initialises the NIC behind `transport` (3.1.1: reset, ACKNOWLEDGE, DRIVER,
    /// features, FEATURES_OK checked, configuration, queues, DRIVER_OK checked) and
    /// posts the receive buffers. The function's memory decode and bus mastering must
    /// be on.
    pub fn new(mut transport: PciTransport<M>, config: VirtioNetConfig) -> Result<Self, InitError> {
        let ok = |n: usize| (1..=QUEUE_SIZE).contains(&n);
        if !ok(config.rx_buffers) || !ok(config.tx_buffers) {
            return Err(InitError::BadConfig);
        }
        let kind = transport.device_type();
        if kind != DeviceType::Network {
            return Err(InitError::WrongType {
                want: DeviceType::Network,
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

    fn setup(transport: &mut PciTransport<M>, config: VirtioNetConfig) -> Result<Self, InitError> {
        let offered = Features::from_bits_retain(transport.read_device_features());
        if !offered.contains(Features::VERSION_1) {
            return Err(InitError::Legacy);
        }
        if !offered.contains(Features::MAC) {
            return Err(InitError::NoMac);
        }
        let features = transport.begin_init(SUPPORTED);
        if transport.broken() {
            return Err(InitError::Transport);
        }
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            return Err(InitError::FeaturesRefused);
        }
        let mac: [u8; 6] = transport
            .read_consistent(|| transport.read_config_space(CFG_MAC))
            .map_err(InitError::Config)?;
        if mac == [0; 6] || mac[0] & 1 != 0 {
            return Err(InitError::BadMac(mac));
        }
        let rx_queue = Box::new(
            VirtQueue::<H, QUEUE_SIZE>::new(transport, RECEIVE_QUEUE, false, false)
                .map_err(InitError::Queue)?,
        );
        let tx_queue = Box::new(
            VirtQueue::<H, QUEUE_SIZE>::new(transport, TRANSMIT_QUEUE, false, false)
                .map_err(InitError::Queue)?,
        );
        // From here the driver owns the queues: a failure drops it, and its `Drop`
        // resets the device before their memory (and the buffers') is freed.
        let mut net = Self {
            queues: Some(Queues {
                rx: rx_queue,
                tx: tx_queue,
            }),
            transport: transport.clone(),
            rx: None,
            tx: None,
            rx_tokens: Tokens::new(0),
            tx_tokens: Tokens::new(0),
            tx_free: (0..config.tx_buffers as u16).rev().collect(),
            tx_unkicked: 0,
            rx_interrupts: true,
            tx_interrupts: true,
            mac,
            features,
            link_up: true,
            broken: false,
            stats: VirtioNetStats::default(),
        };
        if transport.broken() {
            return Err(InitError::Transport);
        }
        let (Some(rx_used), Some(tx_used)) = (
            transport.used_ring(RECEIVE_QUEUE),
            transport.used_ring(TRANSMIT_QUEUE),
        ) else {
            return Err(InitError::Transport);
        };
        net.rx_tokens = Tokens::new(rx_used);
        net.tx_tokens = Tokens::new(tx_used);
        let rx = net
            .rx
            .insert(Buffers::<H>::new(config.rx_buffers).ok_or(InitError::OutOfMemory)?);
        net.tx = Some(Buffers::<H>::new(config.tx_buffers).ok_or(InitError::OutOfMemory)?);
        let Some(queues) = net.queues.as_mut() else {
            return Err(InitError::Transport);
        };
        // 3.1.1: buffers may be posted before DRIVER_OK; the device looks at them once
        // it is live.
        for i in 0..config.rx_buffers {
            // SAFETY: buffer `i` is fresh DMA memory nothing else references; it is
            // not touched until its token is popped in `receive`.
            let token = unsafe { queues.rx.add(&[], &mut [rx.get(i, BUFFER_SIZE)]) }
                .map_err(InitError::Queue)?;
            net.rx_tokens.post(token, i, BUFFER_SIZE);
        }
        // Transmit completions are reaped as buffers are needed: no interrupt for them
        // until none is free.
        net.set_tx_interrupts(false);
        transport.finish_init();
        let status = transport.get_status();
        if transport.broken()
            || !status.contains(DeviceStatus::FEATURES_OK | DeviceStatus::DRIVER_OK)
            || status.contains(DeviceStatus::DEVICE_NEEDS_RESET)
        {
            return Err(InitError::NotAccepted(status.bits()));
        }
        net.notify_rx();
        net.read_link();
        Ok(net)
    }

    fn read_link(&mut self) {
        if self.features.contains(Features::STATUS) {
            let s: Result<u16, _> = self.transport.read_config_space(CFG_STATUS);
            self.link_up = s.is_ok_and(|s| s & S_LINK_UP != 0);
        }
    }

    /// Asks the device for used-buffer interrupts on the receive queue, or not (a hint
    /// without `EVENT_IDX`: 2.7.7.2).
    fn set_rx_interrupts(&mut self, on: bool) {
        if self.rx_interrupts != on
            && let Some(q) = self.queues.as_mut()
        {
            q.rx.set_dev_notify(on);
            self.rx_interrupts = on;
        }
    }

    /// The same for the transmit queue.
    fn set_tx_interrupts(&mut self, on: bool) {
        if self.tx_interrupts != on
            && let Some(q) = self.queues.as_mut()
        {
            q.tx.set_dev_notify(on);
            self.tx_interrupts = on;
        }
    }

    /// Tells the device of receive buffers posted, unless it suppressed that.
    fn notify_rx(&mut self) {
        if self.queues.as_ref().is_some_and(|q| q.rx.should_notify()) {
            self.stats.rx_notifies += 1;
            self.transport.notify(RECEIVE_QUEUE);
        }
    }

    /// The MAC address the device offers.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The features negotiated.
    pub fn features(&self) -> Features {
        self.features
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
                core::mem::forget(self.queues.take());
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
        let (tokens, peeked) = match (self.queues.as_ref(), receive) {
            (Some(q), true) => (&self.rx_tokens, q.rx.peek_used()),
            (Some(q), false) => (&self.tx_tokens, q.tx.peek_used()),
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
        let Some(token) = peeked else {
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
                Next::Empty => break,
                Next::Token(t, b, l) => (t, b, l),
                other => return Err(self.bad(other)),
            };
            let (Some(q), Some(tx)) = (self.queues.as_mut(), self.tx.as_ref()) else {
                return Err(NetError::Protocol);
            };
            // SAFETY: the buffer and length `transmit` added with this token.
            let done = unsafe { q.tx.pop_used(token, &[tx.get(buffer, len)], &mut []) };
            match done {
                Ok(used) => {
                    self.tx_tokens.take(token);
                    self.tx_free.push(buffer as u16);
                    self.stats.tx_reaped += 1;
                    // The device only reads a transmit buffer (5.1.6.2: it writes 0).
                    if used as usize > len {
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
        if !self.tx_free.is_empty() {
            self.set_tx_interrupts(false);
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
        if self.tx_free.is_empty() {
            // Wait for the device: ask for an interrupt when it returns a buffer, then
            // look once more (one may have come back before it saw the flag).
            self.set_tx_interrupts(true);
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            self.reap_tx()?;
        }
        let Some(buffer) = self.tx_free.pop() else {
            self.stats.tx_busy += 1;
            return Err(NetError::Busy);
        };
        let buffer = usize::from(buffer);
        let total = HEADER + len;
        let (Some(q), Some(tx)) = (self.queues.as_mut(), self.tx.as_ref()) else {
            return Err(NetError::Protocol);
        };
        // SAFETY: a free buffer: neither the device nor another slice has it.
        let buf = unsafe { tx.get(buffer, total) };
        // 5.1.6.2: no checksum or segmentation asked; `num_buffers` is 0 on transmit.
        buf[..HEADER].fill(0);
        fill(&mut buf[HEADER..total]);
        // SAFETY: the buffer is not touched until `reap_tx` pops this token with the
        // same slice.
        let added = unsafe { q.tx.add(&[buf], &mut []) };
        match added {
            Ok(token) => {
                self.tx_tokens.post(token, buffer, total);
                self.tx_unkicked += 1;
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += len as u64;
                if self.tx_free.is_empty() {
                    // No buffer comes back before the device sees these frames.
                    self.kick();
                }
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
        if self.broken || self.tx_unkicked == 0 {
            return;
        }
        self.tx_unkicked = 0;
        // 2.7.10: without EVENT_IDX the device's NO_NOTIFY flag says whether it wants
        // to hear of new buffers; one check for the whole batch.
        if self.queues.as_ref().is_some_and(|q| q.tx.should_notify()) {
            self.stats.tx_notifies += 1;
            self.transport.notify(TRANSMIT_QUEUE);
        } else {
            self.stats.tx_notifies_suppressed += 1;
        }
    }

    fn receive(&mut self, take: &mut dyn FnMut(&[u8])) -> Result<bool, NetError> {
        self.check()?;
        // While frames are taken, the device need not interrupt for more (2.7.7:
        // VIRTQ_AVAIL_F_NO_INTERRUPT); they are asked for again once the ring is found
        // empty, before this returns false.
        self.set_rx_interrupts(false);
        // Bounded: each turn pops an outstanding buffer (and posts it again), but one,
        // which looks again after turning interrupts back on.
        for _ in 0..=self.rx_tokens.outstanding + 1 {
            let (token, buffer, len) = match self.next_used(true) {
                Next::Empty if !self.rx_interrupts => {
                    // An element used after the last look and before the device saw
                    // the flag cleared raised no interrupt: look once more (the
                    // fence orders the flag's store before the index's load, as
                    // Linux's virtqueue_enable_cb + virtqueue_poll).
                    self.set_rx_interrupts(true);
                    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
                    continue;
                }
                Next::Empty => return Ok(false),
                Next::Token(t, b, l) => (t, b, l),
                other => return Err(self.bad(other)),
            };
            let (Some(q), Some(rx)) = (self.queues.as_mut(), self.rx.as_ref()) else {
                return Err(NetError::Protocol);
            };
            // SAFETY: the buffer and length posted with this token.
            let done = unsafe { q.rx.pop_used(token, &[], &mut [rx.get(buffer, len)]) };
            let mut delivered = false;
            match done {
                Ok(used) => {
                    self.rx_tokens.take(token);
                    let used = used as usize;
                    // The device's length: never sliced with unchecked.
                    if used > len {
                        self.stats.bad_lengths += 1;
                        return Err(self.protocol_error());
                    }
                    let frame = used.saturating_sub(HEADER);
                    if used < HEADER || frame < MIN_FRAME {
                        self.stats.rx_runts += 1;
                    } else if frame > MAX_FRAME {
                        self.stats.rx_oversize += 1;
                    } else {
                        // SAFETY: the device returned the buffer; the slice ends before
                        // it is posted again.
                        let b = unsafe { rx.get(buffer, len) };
                        take(&b[HEADER..used]);
                        self.stats.rx_frames += 1;
                        self.stats.rx_bytes += frame as u64;
                        delivered = true;
                    }
                }
                Err(_) => {
                    self.stats.bad_ids += 1;
                    return Err(self.protocol_error());
                }
            }
            let (Some(q), Some(rx)) = (self.queues.as_mut(), self.rx.as_ref()) else {
                return Err(NetError::Protocol);
            };
            // SAFETY: the device gave the buffer back and no slice of it lives.
            match unsafe { q.rx.add(&[], &mut [rx.get(buffer, BUFFER_SIZE)]) } {
                Ok(t) => self.rx_tokens.post(t, buffer, BUFFER_SIZE),
                Err(_) => return Err(self.protocol_error()),
            }
            self.notify_rx();
            if delivered {
                return Ok(true);
            }
        }
        // Only frames dropped, more than were posted: never return false with
        // interrupts off.
        self.set_rx_interrupts(true);
        Ok(false)
    }

    fn poll(&mut self) -> Result<(), NetError> {
        self.check()?;
        // With MSI-X the message was the interrupt: no ISR to read (and no exit).
        if !self.transport.msix_active() {
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
            core::mem::forget(self.queues.take());
            core::mem::forget(self.rx.take());
            core::mem::forget(self.tx.take());
        }
    }
}
