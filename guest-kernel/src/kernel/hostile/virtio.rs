//! The emulated virtio devices attacked from the guest (virtio 1.x: the modern PCI
//! transport, 4.1; split virtqueues, 2.7), and the hand-driven split queue both
//! attacks use ([`Dev`], [`Ring`], [`queue_attacks`], [`avail_far_ahead`]): one page of
//! ours per queue, descriptors written here, so that chains no `virtio-drivers` queue
//! would build can be sent.
//!
//! Here, virtio-blk (5.2.6): queues of absurd sizes or with rings outside RAM, then on a
//! valid queue chains whose buffers lie outside RAM or wrap, lengths of 4 GiB, loops,
//! `next` beyond the queue, an indirect table outside RAM, a header too short, a sector
//! past the end, an unknown request type, and an available index far ahead (the device
//! must then ask for a reset: `DEVICE_NEEDS_RESET`). None may complete with
//! `VIRTIO_BLK_S_OK`; after a reset a good read must return the disk's data.
//! virtio-net is in [`super::virtio_net`].
//!
//! Runs on the first virtio-blk function, when the machine has one.

use core::sync::atomic::Ordering;

use hw_devices::virtio::{device_type, virtio_drivers};
use pv_drivers::shmem::{RawSharedMemory, SharedMemory};
use virtio_drivers::transport::{DeviceStatus, Transport};

use super::super::{memory, platform, pv};
use super::{Cat, REPLY_NS, Tally};
use crate::kprintln;

/// The pattern seed the host writes on the virtio image (`tests/tests/hostile_guest.rs`).
pub const VIRTIO_SEED: u64 = 13;

/// `VIRTIO_F_VERSION_1`.
pub(super) const F_VERSION_1: u64 = 1 << 32;
/// Entries of every hand-driven queue.
pub(super) const QUEUE_SIZE: u16 = 8;
/// Offsets in a ring page: descriptors, then the available ring, then the used ring
/// (2.7: alignments 16, 2 and 4).
const DESC: usize = 0;
const AVAIL: usize = 128;
const USED: usize = 256;

/// `VIRTQ_DESC_F_NEXT`, `_WRITE`, `_INDIRECT`.
pub(super) const F_NEXT: u16 = 1;
pub(super) const F_WRITE: u16 = 2;
pub(super) const F_INDIRECT: u16 = 4;

/// Where no RAM is: the PCI hole at 3 GiB.
pub(super) const OUTSIDE: u64 = 0xc000_0000;

/// A descriptor: address, length, flags, next.
pub(super) type Desc = (u64, u32, u16, u16);

type Pci = hw_devices::virtio::transport::PciTransport<platform::MmioRegion>;

/// A virtio device driven by hand: its transport, the event its interrupt sets
/// (INTx; polled here, with the event as the wake-up), and its BAR 0 for accesses the
/// transport would never make (the register storms).
pub(super) struct Dev {
    pub t: Pci,
    pub event: pv::DeviceEvent,
    pub bar0: Option<platform::MmioRegion>,
}

impl Dev {
    /// Finds the first device of type `kind` and prepares it (INTx, no MSI-X).
    pub fn prepare(kind: u16) -> Result<Self, alloc::string::String> {
        let target = platform::prepare_virtio(kind, 0, false)?;
        let bar0 = target.function.bars[0]
            .filter(hw_devices::pci::Bar::is_memory)
            .and_then(|b| platform::MmioRegion::map(&b).ok());
        Ok(Self {
            t: target.transport,
            event: target.event,
            bar0,
        })
    }

    /// Reset, then the feature handshake with `features` (which must include
    /// [`F_VERSION_1`]). True if the device took them.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.t.set_status(DeviceStatus::empty());
        self.t
            .set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let _ = self.t.read_device_features();
        self.t.write_driver_features(features);
        self.t.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        self.t.get_status().contains(DeviceStatus::FEATURES_OK)
    }

    /// Sets `DRIVER_OK`; returns the status the device shows after it.
    pub fn driver_ok(&mut self) -> DeviceStatus {
        self.t.set_status(
            DeviceStatus::ACKNOWLEDGE
                | DeviceStatus::DRIVER
                | DeviceStatus::FEATURES_OK
                | DeviceStatus::DRIVER_OK,
        );
        self.t.get_status()
    }

    /// Sets queue `index` up as given and sets `DRIVER_OK`; returns whether the device
    /// refused it (`DEVICE_NEEDS_RESET`, the queue not enabled, or the size not taken).
    fn try_queue(
        &mut self,
        index: u16,
        size: u32,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> (bool, DeviceStatus) {
        self.t.queue_set(index, size, desc, avail, used);
        let st = self.driver_ok();
        // A size that is not a power of two or above the maximum is ignored (the
        // register reads back the old one): that is a refusal too.
        let refused = st.contains(DeviceStatus::DEVICE_NEEDS_RESET)
            || !self.t.queue_used(index)
            || self.t.max_queue_size(index) != size;
        (refused, st)
    }

    /// Waits (bounded) for the device to set `DEVICE_NEEDS_RESET`.
    pub fn wait_needs_reset(&mut self) -> bool {
        let deadline = pv::now_ns().saturating_add(REPLY_NS);
        loop {
            if self
                .t
                .get_status()
                .contains(DeviceStatus::DEVICE_NEEDS_RESET)
            {
                return true;
            }
            if pv::now_ns() >= deadline {
                return false;
            }
            self.pause(deadline);
        }
    }

    /// Halts until the device's interrupt or a millisecond has passed (never beyond
    /// `deadline`), and acknowledges the interrupt.
    pub fn pause(&mut self, deadline: u64) {
        pv::wait_for_event(
            &self.event,
            deadline.min(pv::now_ns().saturating_add(1_000_000)),
        );
        let _ = self.t.ack_interrupt();
        self.event.rearm();
    }
}

/// A split virtqueue of [`QUEUE_SIZE`] entries in one page of ours, driven by hand.
pub(super) struct Ring {
    pub index: u16,
    pub pa: u64,
    pub page: RawSharedMemory,
    avail_idx: u16,
    used_idx: u16,
}

impl Ring {
    /// Queue `index` in a fresh page; `None` when memory is short.
    pub fn new(index: u16) -> Option<Self> {
        let (pa, page) = memory::alloc_zeroed(1)?;
        Some(Self {
            index,
            pa,
            page,
            avail_idx: 0,
            used_idx: 0,
        })
    }

    /// Empties the rings (after a device reset) and hands the queue to the device.
    pub fn set_up(&mut self, dev: &mut Dev) {
        self.page
            .write_bytes(0, &[0u8; USED + 8 + 8 * QUEUE_SIZE as usize]);
        self.avail_idx = 0;
        self.used_idx = 0;
        dev.t.queue_set(
            self.index,
            QUEUE_SIZE.into(),
            self.pa + DESC as u64,
            self.pa + AVAIL as u64,
            self.pa + USED as u64,
        );
    }

    /// Writes descriptor `i`.
    pub fn desc(&self, i: u16, (addr, len, flags, next): Desc) {
        let at = DESC + usize::from(i % QUEUE_SIZE) * 16;
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.page.write_bytes(at, &d);
    }

    /// Writes `descs` from descriptor 0 on.
    pub fn descs(&self, descs: &[Desc]) {
        for (i, &d) in descs.iter().enumerate() {
            self.desc(i as u16, d);
        }
    }

    /// Makes the chain at `head` available, without telling the device.
    pub fn offer(&mut self, head: u16) {
        let slot = AVAIL + 4 + usize::from(self.avail_idx % QUEUE_SIZE) * 2;
        self.page.write_bytes(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.page
            .store_u16(AVAIL + 2, self.avail_idx, Ordering::Release);
    }

    /// Makes the chain at `head` available and notifies the device.
    pub fn publish(&mut self, dev: &mut Dev, head: u16) {
        self.offer(head);
        dev.t.notify(self.index);
    }

    /// Stores an available index `ahead` entries beyond what was offered, and notifies.
    pub fn publish_far_ahead(&mut self, dev: &mut Dev, ahead: u16) {
        self.page.store_u16(
            AVAIL + 2,
            self.avail_idx.wrapping_add(ahead),
            Ordering::Release,
        );
        dev.t.notify(self.index);
    }

    /// The used index read so far.
    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    /// The available index published so far.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Writes `used_event` (after the available ring; read by a device with
    /// `VIRTIO_F_EVENT_IDX`, 2.7.10).
    pub fn set_used_event(&self, v: u16) {
        self.page.store_u16(
            AVAIL + 4 + 2 * usize::from(QUEUE_SIZE),
            v,
            Ordering::Release,
        );
    }

    /// `avail_event` (after the used ring; written by a device with `EVENT_IDX`).
    pub fn avail_event(&self) -> u16 {
        self.page
            .load_u16(USED + 4 + 8 * usize::from(QUEUE_SIZE), Ordering::Acquire)
    }

    /// Overwrites `avail_event`, the device's field (a hostile driver's write).
    pub fn set_avail_event(&self, v: u16) {
        self.page
            .store_u16(USED + 4 + 8 * usize::from(QUEUE_SIZE), v, Ordering::Release);
    }

    /// Makes the chain at `head` available and notifies only if `avail_event` asks
    /// for it (2.7.10's `vring_need_event`), as a driver with `EVENT_IDX` does.
    /// Returns whether it notified.
    pub fn publish_as_asked(&mut self, dev: &mut Dev, head: u16) -> bool {
        let old = self.avail_idx;
        self.offer(head);
        core::sync::atomic::fence(Ordering::SeqCst);
        let event = self.avail_event();
        let new = self.avail_idx;
        let notify = new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old);
        if notify {
            dev.t.notify(self.index);
        }
        notify
    }

    /// Waits (bounded) for the next used entry: `(id, len)`, or `None` if the device
    /// used nothing in time.
    pub fn wait_used(&mut self, dev: &mut Dev) -> Option<(u32, u32)> {
        self.wait_used_for(dev, REPLY_NS)
    }

    /// As [`Self::wait_used`], for at most `ns` nanoseconds.
    pub fn wait_used_for(&mut self, dev: &mut Dev, ns: u64) -> Option<(u32, u32)> {
        let deadline = pv::now_ns().saturating_add(ns);
        loop {
            let used = self.page.load_u16(USED + 2, Ordering::Acquire);
            if used != self.used_idx {
                let at = USED + 4 + usize::from(self.used_idx % QUEUE_SIZE) * 8;
                self.used_idx = self.used_idx.wrapping_add(1);
                let id = self.page.load_u32(at, Ordering::Relaxed);
                return Some((id, self.page.load_u32(at + 4, Ordering::Relaxed)));
            }
            if pv::now_ns() >= deadline {
                return None;
            }
            dev.pause(deadline);
        }
    }
}

/// Queues the device must not activate, on queue `index`: sizes it must not take
/// (3, 32768), and a descriptor table, available ring or used ring outside RAM
/// (`DEVICE_NEEDS_RESET` at `DRIVER_OK`). `ring` is a page of ours for the rings that
/// are valid. False if the feature handshake failed (the run is then broken).
pub(super) fn queue_attacks(
    t: &mut Tally,
    c: Cat,
    dev: &mut Dev,
    features: u64,
    index: u16,
    ring: u64,
) -> bool {
    let (rp, avail, used) = (ring, ring + AVAIL as u64, ring + USED as u64);
    for (what, size, desc, a, u) in [
        ("a queue of size 3", 3u32, rp, avail, used),
        ("a queue of size 32768", 32768, rp, avail, used),
        ("a descriptor table at 3 GiB", 8, OUTSIDE, avail, used),
        (
            "an available ring wrapping the address space",
            8,
            rp,
            u64::MAX - 3,
            used,
        ),
        ("a used ring at 2^52", 8, rp, avail, 1 << 52),
    ] {
        if !dev.negotiate(features) {
            t.broken("virtio feature negotiation", "FEATURES_OK refused");
            return false;
        }
        let (refused, st) = dev.try_queue(index, size, desc, a, u);
        t.check(
            c,
            &alloc::format!("{what} (queue {index})"),
            refused,
            format_args!("status {:#x}", st.bits()),
        );
    }
    true
}

/// An available index 1000 entries ahead on `ring`: the device must stop serving and
/// set `DEVICE_NEEDS_RESET` (2.1.2). Returns whether it did.
pub(super) fn avail_far_ahead(dev: &mut Dev, ring: &mut Ring) -> bool {
    ring.publish_far_ahead(dev, 1000);
    dev.wait_needs_reset()
}

/// Offsets in the virtio-blk request page.
const HEADER: usize = 0;
const DATA: usize = 512;
const STATUS: usize = 2048;

const T_IN: u32 = 0;
const S_OK: u8 = 0;

/// The virtio-blk queue and its request page.
struct Blk {
    dev: Dev,
    ring: Ring,
    req_pa: u64,
    req: RawSharedMemory,
}

impl Blk {
    /// A fresh device with a valid queue 0.
    fn valid_queue(&mut self) -> bool {
        if !self.dev.negotiate(F_VERSION_1) {
            return false;
        }
        self.ring.set_up(&mut self.dev);
        let st = self.dev.driver_ok();
        st.contains(DeviceStatus::DRIVER_OK) && !st.contains(DeviceStatus::DEVICE_NEEDS_RESET)
    }

    /// The usual three descriptors of a read of `sector`: header, data, status.
    fn read_chain(&self, sector: u64, type_: u32) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&type_.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.req.write_bytes(HEADER, &h);
        self.ring.descs(&[
            (self.req_pa + HEADER as u64, 16, F_NEXT, 1),
            (self.req_pa + DATA as u64, 512, F_WRITE | F_NEXT, 2),
            (self.req_pa + STATUS as u64, 1, F_WRITE, 0),
        ]);
    }

    /// Publishes the chain at descriptor 0 and waits for its used entry. Returns the
    /// status byte (0xff, as set before, if the device wrote none), or `None` if
    /// nothing was used in time.
    fn run(&mut self) -> Option<u8> {
        self.req.write_bytes(STATUS, &[0xff]);
        self.ring.publish(&mut self.dev, 0);
        self.ring.wait_used(&mut self.dev)?;
        let mut s = [0u8];
        self.req.read_bytes(STATUS, &mut s);
        Some(s[0])
    }
}

pub(super) fn attacks(t: &mut Tally) {
    let c = Cat::Virtio;
    if platform::virtio_devices(device_type::BLOCK)
        .next()
        .is_none()
    {
        kprintln!("hostile: virtio: no virtio-blk device, skipped");
        return;
    }
    let dev = match Dev::prepare(device_type::BLOCK) {
        Ok(d) => d,
        Err(e) => {
            t.broken("virtio", e);
            return;
        }
    };
    let (Some(ring), Some((req_pa, req))) = (Ring::new(0), memory::alloc_zeroed(1)) else {
        t.broken("virtio pages", "out of memory");
        return;
    };
    let mut q = Blk {
        dev,
        ring,
        req_pa,
        req,
    };

    if !queue_attacks(t, c, &mut q.dev, F_VERSION_1, 0, q.ring.pa) {
        return;
    }

    // Chains on a valid queue that must not succeed.
    if !q.valid_queue() {
        t.broken("a valid virtio queue", "refused");
        return;
    }
    let hdr = req_pa + HEADER as u64;
    let data = req_pa + DATA as u64;
    let status = req_pa + STATUS as u64;
    let chains: [(&str, [Desc; 3]); 8] = [
        (
            "data at 3 GiB",
            [
                (hdr, 16, F_NEXT, 1),
                (OUTSIDE, 512, F_WRITE | F_NEXT, 2),
                (status, 1, F_WRITE, 0),
            ],
        ),
        (
            "data of 4 GiB - 1 bytes",
            [
                (hdr, 16, F_NEXT, 1),
                (data, u32::MAX, F_WRITE | F_NEXT, 2),
                (status, 1, F_WRITE, 0),
            ],
        ),
        (
            "the status at 3 GiB",
            [
                (hdr, 16, F_NEXT, 1),
                (data, 512, F_WRITE | F_NEXT, 2),
                (OUTSIDE, 1, F_WRITE, 0),
            ],
        ),
        (
            "a header wrapping the address space",
            [
                (u64::MAX - 7, 16, F_NEXT, 1),
                (data, 512, F_WRITE | F_NEXT, 2),
                (status, 1, F_WRITE, 0),
            ],
        ),
        (
            "a chain that loops",
            [
                (hdr, 16, F_NEXT, 1),
                (data, 512, F_WRITE | F_NEXT, 0),
                (status, 1, F_WRITE, 0),
            ],
        ),
        (
            "next beyond the queue",
            [
                (hdr, 16, F_NEXT, 1),
                (data, 512, F_WRITE | F_NEXT, 200),
                (status, 1, F_WRITE, 0),
            ],
        ),
        (
            "an indirect table at 3 GiB",
            [
                (OUTSIDE, 48, F_INDIRECT, 0),
                (data, 512, 0, 0),
                (status, 1, 0, 0),
            ],
        ),
        (
            "a 1-byte header",
            [
                (hdr, 1, F_NEXT, 2),
                (data, 512, 0, 0),
                (status, 1, F_WRITE, 0),
            ],
        ),
    ];
    for (what, descs) in chains {
        q.read_chain(0, T_IN);
        q.ring.descs(&descs);
        let r = q.run();
        t.check(
            c,
            what,
            r.is_some_and(|s| s != S_OK),
            format_args!("status {r:?}"),
        );
    }
    for (what, sector, type_) in [
        ("a read past the end of the disk", 1u64 << 40, T_IN),
        ("request type 99", 0, 99),
    ] {
        q.read_chain(sector, type_);
        let r = q.run();
        t.check(
            c,
            what,
            r.is_some_and(|s| s != S_OK),
            format_args!("status {r:?}"),
        );
    }
    // The available index far ahead: the device stops serving the ring and asks for a
    // reset; after one it must work again.
    q.read_chain(0, T_IN);
    let needs_reset = avail_far_ahead(&mut q.dev, &mut q.ring);

    // A reset and a good read.
    q.req.write_bytes(DATA, &[0x5a; 512]);
    let ok = q.valid_queue() && {
        q.read_chain(0, T_IN);
        q.run() == Some(S_OK)
    };
    let mut got = [0u8; 512];
    q.req.read_bytes(DATA, &mut got);
    let mut want = [0u8; 512];
    pv_drivers::pattern::fill(VIRTIO_SEED, 0, &mut want);
    t.check(
        c,
        "an available index 1000 ahead (DEVICE_NEEDS_RESET, then a reset and a good read)",
        needs_reset && ok && got == want,
        format_args!(
            "needs reset {needs_reset}, good read ok {ok}, data matches {}",
            got == want
        ),
    );
    if ok && got == want {
        kprintln!("hostile: virtio: a good read after a reset returns the disk's data");
    }
    q.dev.t.set_status(DeviceStatus::empty());
}
