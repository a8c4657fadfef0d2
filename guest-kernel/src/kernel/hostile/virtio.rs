//! The emulated virtio-blk device attacked from the guest (virtio 1.x: the modern PCI
//! transport, 4.1; split virtqueues, 2.7; virtio-blk requests, 5.2.6): queues of
//! absurd sizes or with rings outside RAM, then on a valid queue chains whose buffers
//! lie outside RAM or wrap, lengths of 4 GiB, loops, `next` beyond the queue, an
//! indirect table outside RAM, a header too short, a sector past the end, an unknown
//! request type, and an available index far ahead. None may complete with
//! `VIRTIO_BLK_S_OK`; after a reset a good read must return the disk's data.
//!
//! Runs on the first virtio-blk function, when the machine has one. The queue is
//! driven here by hand (one page for the rings, one for the request), not by the
//! `virtio-drivers` queue, which would never build such chains.

use hw_devices::virtio::{device_type, virtio_drivers};
use pv_drivers::shmem::{RawSharedMemory, SharedMemory};
use virtio_drivers::transport::{DeviceStatus, Transport};

use super::super::{memory, platform, pv};
use super::{Cat, REPLY_NS, Tally};
use crate::kprintln;

/// The pattern seed the host writes on the virtio image (`tests/tests/hostile_guest.rs`).
pub const VIRTIO_SEED: u64 = 13;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const QUEUE_SIZE: u16 = 8;
/// Offsets in the ring page: descriptors, then the available ring, then the used ring
/// (2.7: alignments 16, 2 and 4).
const DESC: usize = 0;
const AVAIL: usize = 128;
const USED: usize = 256;
/// Offsets in the request page.
const HEADER: usize = 0;
const DATA: usize = 512;
const STATUS: usize = 2048;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

const T_IN: u32 = 0;
const S_OK: u8 = 0;
const OUTSIDE: u64 = 0xc000_0000;

/// A descriptor: address, length, flags, next.
type Desc = (u64, u32, u16, u16);

type Pci = hw_devices::virtio::transport::PciTransport<platform::MmioRegion>;

struct Queue {
    t: Pci,
    event: pv::DeviceEvent,
    ring_pa: u64,
    ring: RawSharedMemory,
    req_pa: u64,
    req: RawSharedMemory,
    avail_idx: u16,
    used_idx: u16,
}

impl Queue {
    /// Reset, then the feature handshake with `VIRTIO_F_VERSION_1` only. True if the
    /// device took it.
    fn negotiate(&mut self) -> bool {
        self.t.set_status(DeviceStatus::empty());
        self.t
            .set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let _ = self.t.read_device_features();
        self.t.write_driver_features(VIRTIO_F_VERSION_1);
        self.t.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        self.t.get_status().contains(DeviceStatus::FEATURES_OK)
    }

    /// Sets queue 0 up as given and sets `DRIVER_OK`; returns whether the device
    /// refused it (`DEVICE_NEEDS_RESET`, the queue not enabled, or the size not taken).
    fn try_queue(&mut self, size: u32, desc: u64, avail: u64, used: u64) -> (bool, DeviceStatus) {
        self.t.queue_set(0, size, desc, avail, used);
        self.t.set_status(
            DeviceStatus::ACKNOWLEDGE
                | DeviceStatus::DRIVER
                | DeviceStatus::FEATURES_OK
                | DeviceStatus::DRIVER_OK,
        );
        let st = self.t.get_status();
        // A size that is not a power of two or above the maximum is ignored (the
        // register reads back the old one): that is a refusal too.
        let refused = st.contains(DeviceStatus::DEVICE_NEEDS_RESET)
            || !self.t.queue_used(0)
            || self.t.max_queue_size(0) != size;
        (refused, st)
    }

    /// A fresh device with a valid queue in our ring page.
    fn valid_queue(&mut self) -> bool {
        self.ring.write_bytes(0, &[0u8; 4096]);
        self.avail_idx = 0;
        self.used_idx = 0;
        if !self.negotiate() {
            return false;
        }
        let (refused, _) = self.try_queue(
            QUEUE_SIZE.into(),
            self.ring_pa + DESC as u64,
            self.ring_pa + AVAIL as u64,
            self.ring_pa + USED as u64,
        );
        !refused
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + usize::from(i) * 16;
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.ring.write_bytes(at, &d);
    }

    /// The usual three descriptors of a read of `sector`: header, data, status.
    fn read_chain(&self, sector: u64, type_: u32) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&type_.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.req.write_bytes(HEADER, &h);
        self.desc(0, self.req_pa + HEADER as u64, 16, F_NEXT, 1);
        self.desc(1, self.req_pa + DATA as u64, 512, F_WRITE | F_NEXT, 2);
        self.desc(2, self.req_pa + STATUS as u64, 1, F_WRITE, 0);
    }

    /// Publishes the chain at descriptor 0 and waits for its used entry. Returns the
    /// status byte (0xff, as set before, if the device wrote none), or `None` if
    /// nothing was used in time.
    fn run(&mut self) -> Option<u8> {
        self.req.write_bytes(STATUS, &[0xff]);
        let slot = AVAIL + 4 + usize::from(self.avail_idx % QUEUE_SIZE) * 2;
        self.ring.write_bytes(slot, &0u16.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ring.store_u16(
            AVAIL + 2,
            self.avail_idx,
            core::sync::atomic::Ordering::Release,
        );
        self.t.notify(0);
        let deadline = pv::now_ns().saturating_add(REPLY_NS);
        loop {
            let used = self
                .ring
                .load_u16(USED + 2, core::sync::atomic::Ordering::Acquire);
            if used != self.used_idx {
                self.used_idx = used;
                let mut s = [0u8];
                self.req.read_bytes(STATUS, &mut s);
                return Some(s[0]);
            }
            if pv::now_ns() >= deadline {
                return None;
            }
            pv::wait_for_event(
                &self.event,
                deadline.min(pv::now_ns().saturating_add(1_000_000)),
            );
            let _ = self.t.ack_interrupt();
            self.event.rearm();
        }
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
    let target = match platform::prepare_virtio(device_type::BLOCK, 0, false) {
        Ok(t) => t,
        Err(e) => {
            t.broken("virtio", e);
            return;
        }
    };
    let (Some((ring_pa, ring)), Some((req_pa, req))) =
        (memory::alloc_zeroed(1), memory::alloc_zeroed(1))
    else {
        t.broken("virtio pages", "out of memory");
        return;
    };
    let mut q = Queue {
        t: target.transport,
        event: target.event,
        ring_pa,
        ring,
        req_pa,
        req,
        avail_idx: 0,
        used_idx: 0,
    };

    // Queues the device must not activate.
    let (rp, avail, used) = (ring_pa, ring_pa + AVAIL as u64, ring_pa + USED as u64);
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
        if !q.negotiate() {
            t.broken("virtio feature negotiation", "FEATURES_OK refused");
            return;
        }
        let (refused, st) = q.try_queue(size, desc, a, u);
        t.check(c, what, refused, format_args!("status {:#x}", st.bits()));
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
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            q.desc(i as u16, addr, len, flags, next);
        }
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
    // The available index far ahead: the device stops looking at the ring (nothing is
    // served); after a reset it must work again.
    q.read_chain(0, T_IN);
    q.ring.store_u16(
        AVAIL + 2,
        q.avail_idx.wrapping_add(1000),
        core::sync::atomic::Ordering::Release,
    );
    q.t.notify(0);

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
        "an available index 1000 ahead (then a reset and a good read)",
        ok && got == want,
        format_args!("good read ok {ok}, data matches {}", got == want),
    );
    if ok && got == want {
        kprintln!("hostile: virtio: a good read after a reset returns the disk's data");
    }
    q.t.set_status(DeviceStatus::empty());
}
