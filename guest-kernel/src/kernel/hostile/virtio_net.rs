//! The emulated virtio-net device attacked from the guest (virtio 1.x, 5.1: the
//! receive queue 0, the transmit queue 1, `struct virtio_net_hdr`), through the
//! hand-driven queues of [`super::virtio`]:
//!
//! - queues the device must not activate (the transmit queue): sizes 3 and 32768,
//!   rings outside RAM;
//! - transmit chains: the header at 3 GiB, the frame beyond RAM (64 GiB) or wrapping
//!   the address space, 4 GiB - 1 bytes of frame (more than 2^32 in all), a loop of
//!   two, a chain through every descriptor and on (longer than the queue), `next`
//!   beyond the queue, an indirect table at 3 GiB; then whole chains with a header of
//!   8 bytes (shorter than `virtio_net_hdr`), GSO types 1 (TCPv4, not negotiated) and
//!   0xff, `NEEDS_CSUM` with `csum_start` beyond the frame, `csum_offset` beyond it and
//!   both 65535, a frame of 13 bytes and one of 1600 (beyond the MTU). Each chain must
//!   come back (used, nothing written) and no frame of theirs reach the wire;
//! - receive buffers, each posted before a good one and a frame asked of the host
//!   test's peer ([`super::peer`]): one the device may only read, at 3 GiB, beyond RAM,
//!   wrapping the address space, of 11 bytes (smaller than the header), a loop, `next`
//!   beyond the queue. The device must give each back unused (length 0) and put the
//!   frame in the good buffer; none may be written (their canary page is checked);
//! - an available index 1000 ahead on the transmit queue: the device must stop and set
//!   `DEVICE_NEEDS_RESET`;
//! - with `VIRTIO_NET_F_MRG_RXBUF` (5.1.6.3.1, 5.1.6.4): receive buffers of 1 and of
//!   11 bytes (shorter than the header) must come back unused with the frame in the
//!   next buffer (QEMU writes what fits of the header into them); a frame across seven
//!   buffers of 16 bytes must say `num_buffers` 7 and arrive whole; a frame that needs
//!   more buffers than are posted must wait, unwritten, for the next one and then fill
//!   all three (QEMU's `virtio_net_has_buffers` holds it too); one that needs more
//!   room than the whole queue (eight buffers of 12 bytes) must wait without writing
//!   them or spinning, and go with the reset; a chain of seven 1-byte descriptors and a
//!   larger one must get the header across its descriptors (`num_buffers` 1);
//! - with `VIRTIO_F_EVENT_IDX` (2.7.10): `used_event` 0x8000 ahead, one behind, 0x7fff
//!   behind (wrapping), and `avail_event` overwritten by the driver: every request must
//!   still be served; and a driver that notifies only as `avail_event` asks must get a
//!   frame that waited for buffers (the device must ask for the next buffer);
//! - a register storm on BAR 0 (4.1.4.3, 3.1.1, 2.1): queue registers of queues 2 and
//!   0xffff (there are two), `DRIVER_OK` without `FEATURES_OK`, `FEATURES_OK` with a
//!   feature not offered, driver features after `FEATURES_OK`, `queue_size`,
//!   `queue_desc` and `queue_enable` 0 on an enabled queue, `queue_desc` after
//!   `DRIVER_OK`, `num_queues` and the ISR byte written: each refused (the transport's
//!   `refused_writes`); the MAC written in the device configuration and `device_status`
//!   bits cleared (both ignored), notifies of queues that do not exist, and 2000
//!   garbage accesses over the ISR, device configuration and notify regions; the live
//!   device must then still serve a frame.
//!
//! Then the peer must have seen no attack frame, and after a reset a good frame goes
//! out and the peer's answer comes in.
//!
//! Runs on the first virtio-net function, when the machine has one.

use alloc::vec::Vec;

use hw_devices::Mmio as _;
use hw_devices::virtio::{device_type, virtio_drivers};
use pv_drivers::shmem::{RawSharedMemory, SharedMemory};
use virtio_drivers::transport::{DeviceStatus, Transport};

use super::super::{memory, platform};
use super::peer::{self, Wire};
use super::virtio::{
    Desc, Dev, F_INDIRECT, F_NEXT, F_VERSION_1, F_WRITE, OUTSIDE, QUEUE_SIZE, Ring,
    avail_far_ahead, queue_attacks,
};
use super::{Cat, Tally};
use crate::kprintln;

/// `VIRTIO_NET_F_CSUM`: the driver may leave a checksum for the device to complete.
const F_CSUM: u64 = 1 << 0;
const FEATURES: u64 = F_VERSION_1 | F_CSUM;
/// `VIRTIO_NET_F_MRG_RXBUF` and `VIRTIO_F_EVENT_IDX`.
const F_MRG_RXBUF: u64 = 1 << 15;
const F_EVENT_IDX: u64 = 1 << 29;
/// `struct virtio_net_hdr` with `num_buffers` (every header under `VERSION_1`).
const HDR_LEN: usize = 12;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const NEEDS_CSUM: u8 = 1;
/// Receive buffers of the good path.
const RX_BUF: u32 = 2048;
/// Bytes asked of the peer per receive attack, and what they take with the header.
const RX_FRAME: u16 = 100;
const RX_TOTAL: u32 = HDR_LEN as u32 + RX_FRAME as u32;
/// How long a frame must be seen to wait for buffers.
const HOLD_NS: u64 = 500_000_000;
const BEYOND: u64 = 1 << 36;
const CANARY: u8 = 0xa7;

/// Descriptor indices: the good receive buffer of the receive attacks, the one the
/// good path keeps posted.
const RX_GOOD: u16 = 4;
const RX_POSTED: u16 = 6;

/// The device, its queues and the pages the attacks use.
struct Net {
    dev: Dev,
    rx: Ring,
    tx: Ring,
    mac: [u8; 6],
    /// Transmit headers and frames (two pages).
    buf_pa: u64,
    buf: RawSharedMemory,
    /// Receive buffers of ours (two pages).
    rxb_pa: u64,
    rxb: RawSharedMemory,
    /// The receive buffers the device must not write.
    canary_pa: u64,
    canary: RawSharedMemory,
    /// The good path's receive buffer is posted.
    rx_posted: bool,
}

impl Net {
    /// A fresh device with both queues valid.
    fn valid_queues(&mut self) -> bool {
        self.valid_queues_with(FEATURES)
    }

    /// A fresh device with `features` and both queues valid.
    fn valid_queues_with(&mut self, features: u64) -> bool {
        if !self.dev.negotiate(features) {
            return false;
        }
        self.rx.set_up(&mut self.dev);
        self.tx.set_up(&mut self.dev);
        self.rx_posted = false;
        let st = self.dev.driver_ok();
        st.contains(DeviceStatus::DRIVER_OK) && !st.contains(DeviceStatus::DEVICE_NEEDS_RESET)
    }

    /// Publishes the transmit chain at descriptor 0 and waits for its used entry.
    fn transmit(&mut self, descs: &[Desc]) -> Option<(u32, u32)> {
        self.tx.descs(descs);
        self.tx.publish(&mut self.dev, 0);
        self.tx.wait_used(&mut self.dev)
    }

    fn post_rx(&mut self) {
        if !self.rx_posted {
            let at = self.rxb_pa + 2 * u64::from(RX_BUF);
            self.rx.desc(RX_POSTED, (at, RX_BUF, F_WRITE, 0));
            self.rx.publish(&mut self.dev, RX_POSTED);
            self.rx_posted = true;
        }
    }
}

impl Net {
    /// The canary page must hold nothing but [`CANARY`] bytes.
    fn check_canary(&self, t: &mut Tally, what: &str) {
        let mut b = [0u8; 4096];
        self.canary.read_bytes(0, &mut b);
        let changed = b.iter().filter(|&&x| x != CANARY).count();
        t.check(
            Cat::VirtioNet,
            what,
            changed == 0,
            format_args!("{changed} bytes changed"),
        );
    }

    /// `num_buffers` of the header at `at` in our receive buffers, and whether the
    /// peer's frame follows it whole.
    fn rx_frame_at(&self, at: usize) -> (u16, bool) {
        let mut h = [0u8; HDR_LEN];
        self.rxb.read_bytes(at, &mut h);
        let mut f = alloc::vec![0u8; RX_FRAME as usize];
        self.rxb.read_bytes(at + HDR_LEN, &mut f);
        (u16::from_le_bytes([h[10], h[11]]), peer::is_data(&f))
    }

    /// The next `count` used entries of the receive queue.
    fn rx_used(&mut self, count: usize) -> Vec<Option<(u32, u32)>> {
        (0..count)
            .map(|_| self.rx.wait_used(&mut self.dev))
            .collect()
    }

    /// Makes descriptors `descs` (from 0) available one chain each and notifies.
    fn post(&mut self, descs: &[Desc]) {
        self.rx.descs(descs);
        for i in 0..descs.len() as u16 {
            self.rx.offer(i);
        }
        self.dev.t.notify(self.rx.index);
    }
}

impl Wire for Net {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// A zero header (no offload) and the frame in one descriptor.
    fn send(&mut self, frame: &[u8]) -> bool {
        self.buf.write_bytes(0, &[0u8; HDR_LEN]);
        self.buf.write_bytes(HDR_LEN, frame);
        let len = (HDR_LEN + frame.len()) as u32;
        self.transmit(&[(self.buf_pa, len, 0, 0)]) == Some((0, 0))
    }

    /// Through the posted buffer; the wait is the queue's own (as long as the caller's).
    fn receive(&mut self, _deadline: u64) -> Option<Vec<u8>> {
        self.post_rx();
        loop {
            let (id, len) = self.rx.wait_used(&mut self.dev)?;
            if id != u32::from(RX_POSTED) {
                continue;
            }
            self.rx_posted = false;
            let len = (len as usize).min(RX_BUF as usize);
            let mut f = alloc::vec![0u8; len.saturating_sub(HDR_LEN)];
            self.rxb.read_bytes(2 * RX_BUF as usize + HDR_LEN, &mut f);
            return Some(f);
        }
    }
}

/// A `virtio_net_hdr`: flags, GSO type, `csum_start`, `csum_offset`.
fn header(flags: u8, gso: u8, start: u16, offset: u16) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[0] = flags;
    h[1] = gso;
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&offset.to_le_bytes());
    h
}

pub(super) fn attacks(t: &mut Tally) {
    let c = Cat::VirtioNet;
    if platform::virtio_devices(device_type::NET).next().is_none() {
        kprintln!("hostile: virtio-net: no virtio-net device, skipped");
        return;
    }
    let dev = match Dev::prepare(device_type::NET) {
        Ok(d) => d,
        Err(e) => {
            t.broken("virtio-net", e);
            return;
        }
    };
    let (Some(rx), Some(tx), Some((buf_pa, buf)), Some((rxb_pa, rxb)), Some((canary_pa, canary))) = (
        Ring::new(0),
        Ring::new(1),
        memory::alloc_zeroed(2),
        memory::alloc_zeroed(2),
        memory::alloc_zeroed(1),
    ) else {
        t.broken("virtio-net pages", "out of memory");
        return;
    };
    canary.write_bytes(0, &[CANARY; 4096]);
    let mac = dev.t.read_config_space::<[u8; 6]>(0).unwrap_or([0; 6]);
    let mut n = Net {
        dev,
        rx,
        tx,
        mac,
        buf_pa,
        buf,
        rxb_pa,
        rxb,
        canary_pa,
        canary,
        rx_posted: false,
    };
    kprintln!("hostile: virtio-net: attacking the device at {mac:02x?}");

    if !queue_attacks(t, c, &mut n.dev, FEATURES, 1, n.tx.pa) {
        return;
    }
    if !n.valid_queues() {
        t.broken("valid virtio-net queues", "refused");
        return;
    }
    transmit_attacks(t, &mut n);
    receive_attacks(t, &mut n);

    // The available index far ahead on the transmit queue.
    let needs_reset = avail_far_ahead(&mut n.dev, &mut n.tx);
    t.check(
        c,
        "an available index 1000 ahead (DEVICE_NEEDS_RESET)",
        needs_reset,
        format_args!("status {:#x}", n.dev.t.get_status().bits()),
    );

    merged_attacks(t, &mut n);
    event_idx_attacks(t, &mut n);
    register_storm(t, &mut n);

    // A reset, and a good frame out and the peer's answer in.
    if !n.valid_queues() {
        t.broken("virtio-net queues after a reset", "refused");
        return;
    }
    n.post_rx();
    match peer::good_exchange(&mut n, 2) {
        Ok(seen) => {
            t.check(
                c,
                "no attack frame reached the wire (the peer's count)",
                seen == 0,
                format_args!("the peer saw {seen}"),
            );
            kprintln!(
                "hostile: virtio-net: after a reset a good frame went out and the peer's \
                 answer came back"
            );
        }
        Err(e) => t.broken("a good frame through virtio-net after the attacks", e),
    }
    n.dev.t.set_status(DeviceStatus::empty());
}

fn transmit_attacks(t: &mut Tally, n: &mut Net) {
    let c = Cat::VirtioNet;
    let hdr = n.buf_pa;
    let fr = n.buf_pa + HDR_LEN as u64;
    let mut attack = 0u16;
    // Puts header `h` at `hdr` and the frame of the next attack (`len` bytes) at `fr`.
    let mut stage = |n: &Net, h: [u8; HDR_LEN], len: usize| {
        attack += 1;
        n.buf.write_bytes(0, &h);
        n.buf
            .write_bytes(HDR_LEN, &peer::attack_frame(n.mac, 100 + attack, len));
    };
    let plain = header(0, 0, 0, 0);
    // Chains that are not whole or point outside RAM.
    let mut longer: Vec<Desc> = alloc::vec![(hdr, HDR_LEN as u32, F_NEXT, 1)];
    for i in 1..QUEUE_SIZE {
        longer.push((fr + 8 * u64::from(i), 8, F_NEXT, (i + 1) % QUEUE_SIZE));
    }
    let chains: [(&str, Vec<Desc>); 8] = [
        (
            "a header at 3 GiB",
            alloc::vec![(OUTSIDE, 12, F_NEXT, 1), (fr, 60, 0, 0)],
        ),
        (
            "a frame beyond RAM (64 GiB)",
            alloc::vec![(hdr, 12, F_NEXT, 1), (BEYOND, 60, 0, 0)],
        ),
        (
            "a frame wrapping the address space",
            alloc::vec![(hdr, 12, F_NEXT, 1), (u64::MAX - 31, 60, 0, 0)],
        ),
        (
            "a frame of 4 GiB - 1 bytes",
            alloc::vec![(hdr, 12, F_NEXT, 1), (fr, u32::MAX, 0, 0)],
        ),
        (
            "a chain that loops",
            alloc::vec![(hdr, 12, F_NEXT, 1), (fr, 60, F_NEXT, 0)],
        ),
        (
            "a chain through every descriptor and on (longer than the queue)",
            longer,
        ),
        (
            "next beyond the queue",
            alloc::vec![(hdr, 12, F_NEXT, 1), (fr, 60, F_NEXT, 200)],
        ),
        (
            "an indirect table at 3 GiB",
            alloc::vec![(OUTSIDE, 32, F_INDIRECT, 0)],
        ),
    ];
    for (what, descs) in chains {
        stage(n, plain, 60);
        let used = n.transmit(&descs);
        t.check(c, what, used == Some((0, 0)), format_args!("used {used:?}"));
    }
    // Whole chains in RAM whose header or frame the device must refuse.
    for (what, h, hlen, len) in [
        ("a header of 8 bytes", plain, 8, 0),
        (
            "GSO type 1 (TCPv4, not negotiated)",
            header(0, 1, 0, 0),
            12,
            60,
        ),
        ("GSO type 0xff", header(0, 0xff, 0, 0), 12, 60),
        (
            "csum_start beyond the frame",
            header(NEEDS_CSUM, 0, 1000, 6),
            12,
            60,
        ),
        (
            "csum_offset beyond the frame",
            header(NEEDS_CSUM, 0, 14, 2000),
            12,
            60,
        ),
        (
            "csum_start and csum_offset 65535",
            header(NEEDS_CSUM, 0, u16::MAX, u16::MAX),
            12,
            60,
        ),
        ("a frame of 13 bytes", plain, 12, 13),
        ("a frame of 1600 bytes (beyond the MTU)", plain, 12, 1600),
    ] {
        stage(n, h, len.max(60));
        let used = n.transmit(&[(hdr, (hlen + len) as u32, 0, 0)]);
        t.check(c, what, used == Some((0, 0)), format_args!("used {used:?}"));
    }
}

fn receive_attacks(t: &mut Tally, n: &mut Net) {
    let c = Cat::VirtioNet;
    let cp = n.canary_pa;
    let good: Desc = (n.rxb_pa, RX_BUF, F_WRITE, 0);
    let cases: [(&str, &[Desc]); 7] = [
        (
            "a receive buffer the device may only read",
            &[(cp, 256, 0, 0)],
        ),
        (
            "a receive buffer at 3 GiB",
            &[(OUTSIDE, RX_BUF, F_WRITE, 0)],
        ),
        (
            "a receive buffer beyond RAM (64 GiB)",
            &[(BEYOND, RX_BUF, F_WRITE, 0)],
        ),
        (
            "a receive buffer wrapping the address space",
            &[(u64::MAX - 63, RX_BUF, F_WRITE, 0)],
        ),
        (
            "a receive buffer of 11 bytes (smaller than the header)",
            &[(cp + 512, 11, F_WRITE, 0)],
        ),
        (
            "a receive chain that loops",
            &[
                (cp + 1024, 64, F_WRITE | F_NEXT, 1),
                (cp + 1088, 64, F_WRITE | F_NEXT, 0),
            ],
        ),
        (
            "a receive chain with next beyond the queue",
            &[(cp + 2048, 64, F_WRITE | F_NEXT, 200)],
        ),
    ];
    for (what, bad) in cases {
        n.rxb.write_bytes(0, &[0u8; HDR_LEN + RX_FRAME as usize]);
        n.rx.descs(bad);
        n.rx.desc(RX_GOOD, good);
        n.rx.offer(0);
        n.rx.publish(&mut n.dev, RX_GOOD);
        let asked = peer::request(n, 1, RX_FRAME);
        let first = n.rx.wait_used(&mut n.dev);
        let second = n.rx.wait_used(&mut n.dev);
        let mut f = alloc::vec![0u8; RX_FRAME as usize];
        n.rxb.read_bytes(HDR_LEN, &mut f);
        let want = (u32::from(RX_GOOD), (HDR_LEN + RX_FRAME as usize) as u32);
        t.check(
            c,
            what,
            asked && first == Some((0, 0)) && second == Some(want) && peer::is_data(&f),
            format_args!(
                "asked {asked}, used {first:?} then {second:?}, the peer's frame {}",
                peer::is_data(&f)
            ),
        );
    }
    n.check_canary(t, "the canary page of the refused receive buffers");
}

/// Receive with `VIRTIO_NET_F_MRG_RXBUF`: buffers shorter than the header, frames over
/// several buffers, too few buffers, too little room in the whole queue, a header
/// across 1-byte descriptors.
fn merged_attacks(t: &mut Tally, n: &mut Net) {
    let c = Cat::VirtioNet;
    if !n.valid_queues_with(FEATURES | F_MRG_RXBUF) {
        t.broken("virtio-net queues with MRG_RXBUF", "refused");
        return;
    }
    let (cp, rb) = (n.canary_pa, n.rxb_pa);
    let clear = |n: &Net, fill: u8| n.rxb.write_bytes(0, &[fill; 256]);
    // Shorter than the header: used empty, the frame in the next buffer.
    for (what, len, at) in [
        ("(merged buffers) a receive buffer of 1 byte", 1, 3072),
        ("(merged buffers) a receive buffer of 11 bytes", 11, 3200),
    ] {
        clear(n, 0);
        n.post(&[(cp + at, len, F_WRITE, 0), (rb, RX_BUF, F_WRITE, 0)]);
        let asked = peer::request(n, 1, RX_FRAME);
        let used = n.rx_used(2);
        let (bufs, data) = n.rx_frame_at(0);
        t.check(
            c,
            what,
            asked && used == [Some((0, 0)), Some((1, RX_TOTAL))] && bufs == 1 && data,
            format_args!("asked {asked}, used {used:?}, num_buffers {bufs}, the frame {data}"),
        );
    }
    // Seven buffers of 16 bytes hold the 112 bytes exactly.
    clear(n, 0);
    let sixteen: Vec<Desc> = (0..7u64).map(|i| (rb + 16 * i, 16, F_WRITE, 0)).collect();
    n.post(&sixteen);
    let asked = peer::request(n, 1, RX_FRAME);
    let used = n.rx_used(7);
    let (bufs, data) = n.rx_frame_at(0);
    let want: Vec<_> = (0..7).map(|i| Some((i, 16))).collect();
    t.check(
        c,
        "(merged buffers) a frame across seven buffers of 16 bytes",
        asked && used == want && bufs == 7 && data,
        format_args!("asked {asked}, used {used:?}, num_buffers {bufs}, the frame {data}"),
    );
    // Two buffers of 16 bytes: the frame waits for a third.
    clear(n, 0);
    n.post(&sixteen[..2]);
    let asked = peer::request(n, 1, RX_FRAME);
    let early = n.rx.wait_used_for(&mut n.dev, HOLD_NS);
    n.rx.desc(2, (rb + 32, 1024, F_WRITE, 0));
    n.rx.publish(&mut n.dev, 2);
    let used = n.rx_used(3);
    let (bufs, data) = n.rx_frame_at(0);
    t.check(
        c,
        "(merged buffers) a frame that needs more buffers than are posted",
        asked
            && early.is_none()
            && used == [Some((0, 16)), Some((1, 16)), Some((2, RX_TOTAL - 32))]
            && bufs == 3
            && data,
        format_args!(
            "asked {asked}, early {early:?}, used {used:?}, num_buffers {bufs}, the frame {data}"
        ),
    );
    // Eight buffers of 12 bytes (96 < 112): nothing used, nothing written.
    clear(n, CANARY);
    let twelve: Vec<Desc> = (0..8u64).map(|i| (rb + 16 * i, 12, F_WRITE, 0)).collect();
    n.post(&twelve);
    let asked = peer::request(n, 1, RX_FRAME);
    let early = n.rx.wait_used_for(&mut n.dev, HOLD_NS);
    let mut b = [0u8; 128];
    n.rxb.read_bytes(0, &mut b);
    let changed = b.iter().filter(|&&x| x != CANARY).count();
    t.check(
        c,
        "(merged buffers) a frame that needs more room than the whole queue",
        asked && early.is_none() && changed == 0,
        format_args!("asked {asked}, used {early:?}, {changed} bytes written"),
    );
    // The reset drops the frame that waited.
    if !n.valid_queues_with(FEATURES | F_MRG_RXBUF) {
        t.broken("virtio-net queues with MRG_RXBUF after a reset", "refused");
        return;
    }
    // Seven 1-byte descriptors, then one of 1 KiB, in one chain (contiguous).
    clear(n, 0);
    for i in 0..7u16 {
        n.rx.desc(i, (rb + u64::from(i), 1, F_WRITE | F_NEXT, i + 1));
    }
    n.rx.desc(7, (rb + 7, 1024, F_WRITE, 0));
    n.rx.publish(&mut n.dev, 0);
    let asked = peer::request(n, 1, RX_FRAME);
    let used = n.rx.wait_used(&mut n.dev);
    let (bufs, data) = n.rx_frame_at(0);
    t.check(
        c,
        "(merged buffers) a chain of seven 1-byte descriptors and a larger one",
        asked && used == Some((0, RX_TOTAL)) && bufs == 1 && data,
        format_args!("asked {asked}, used {used:?}, num_buffers {bufs}, the frame {data}"),
    );
    n.check_canary(t, "the canary page of the short merged buffers");
}

/// With `VIRTIO_F_EVENT_IDX`: event indices far ahead, behind and wrapping must not
/// keep the device from serving; a driver that notifies only when `avail_event` asks
/// must get a frame that waited for buffers.
fn event_idx_attacks(t: &mut Tally, n: &mut Net) {
    let c = Cat::VirtioNet;
    if !n.valid_queues_with(FEATURES | F_MRG_RXBUF | F_EVENT_IDX) {
        t.broken("virtio-net queues with EVENT_IDX", "refused");
        return;
    }
    let rb = n.rxb_pa;
    for (what, used_event, avail_event) in [
        (
            "used_event 0x8000 ahead of the used index",
            Some(0x8000u16),
            None,
        ),
        (
            "used_event one behind the used index (passed)",
            Some(0xffff),
            None,
        ),
        (
            "used_event 0x7fff behind the used index (wrapping)",
            Some(0x8001),
            None,
        ),
        (
            "avail_event overwritten by the driver (0x8000 ahead)",
            None,
            Some(0x8000u16),
        ),
    ] {
        for r in [&n.rx, &n.tx] {
            if let Some(e) = used_event {
                r.set_used_event(r.used_idx().wrapping_add(e));
            }
            if let Some(e) = avail_event {
                r.set_avail_event(r.avail_idx().wrapping_add(e));
            }
        }
        n.rxb.write_bytes(0, &[0u8; 256]);
        n.rx.desc(0, (rb, RX_BUF, F_WRITE, 0));
        n.rx.publish(&mut n.dev, 0);
        let asked = peer::request(n, 1, RX_FRAME);
        let used = n.rx.wait_used(&mut n.dev);
        let (bufs, data) = n.rx_frame_at(0);
        t.check(
            c,
            what,
            asked && used == Some((0, RX_TOTAL)) && bufs == 1 && data,
            format_args!("asked {asked}, used {used:?}, num_buffers {bufs}, the frame {data}"),
        );
    }
    // Too few buffers; the third notified only because avail_event asks for it.
    n.rxb.write_bytes(0, &[0u8; 256]);
    n.post(&[(rb, 16, F_WRITE, 0), (rb + 16, 16, F_WRITE, 0)]);
    let asked = peer::request(n, 1, RX_FRAME);
    let early = n.rx.wait_used_for(&mut n.dev, HOLD_NS);
    n.rx.desc(2, (rb + 32, 1024, F_WRITE, 0));
    let notified = n.rx.publish_as_asked(&mut n.dev, 2);
    let used = n.rx_used(3);
    let (bufs, data) = n.rx_frame_at(0);
    t.check(
        c,
        "a frame waiting for buffers, the driver notifying only as avail_event asks",
        asked
            && early.is_none()
            && notified
            && used == [Some((0, 16)), Some((1, 16)), Some((2, RX_TOTAL - 32))]
            && bufs == 3
            && data,
        format_args!(
            "asked {asked}, early {early:?}, notified {notified}, used {used:?}, \
             num_buffers {bufs}, the frame {data}"
        ),
    );
}

/// `struct virtio_pci_common_cfg` (4.1.4.3) and where host-shim puts the structures
/// in BAR 0 (the capabilities say so; [`register_storm`] checks the device
/// configuration's MAC and `num_queues` there before it starts).
mod bar {
    pub const DRIVER_FEATURE_SELECT: u32 = 0x08;
    pub const DRIVER_FEATURE: u32 = 0x0c;
    pub const NUM_QUEUES: u32 = 0x12;
    pub const DEVICE_STATUS: u32 = 0x14;
    pub const QUEUE_SELECT: u32 = 0x16;
    pub const QUEUE_SIZE: u32 = 0x18;
    pub const QUEUE_ENABLE: u32 = 0x1c;
    pub const QUEUE_DESC: u32 = 0x20;
    pub const ISR: u32 = 0x1000;
    pub const DEVICE: u32 = 0x2000;
    pub const NOTIFY: u32 = 0x3000;
    pub const NOTIFY_END: u32 = 0x4000;
    /// Past the MSI-X table and pending bits, to the end of the BAR.
    pub const SPARE: u32 = 0x6000;
    pub const END: u32 = 0x8000;
}

/// Status bits (2.1).
const S_ACK: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;
const S_NEEDS_RESET: u8 = 0x40;

/// Garbage accesses of the storm's last part.
const STORM_ACCESSES: u32 = 2000;

/// Writes the spec has the device refuse (each one in the transport's
/// `refused_writes`), writes it ignores, garbage over the other regions; then the live
/// device must still serve a frame.
fn register_storm(t: &mut Tally, n: &mut Net) {
    let c = Cat::VirtioNet;
    let Some(mut b) = n.dev.bar0.take() else {
        t.broken("virtio-net BAR 0", "not mapped");
        return;
    };
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = b.read8(bar::DEVICE + i as u32);
    }
    if mac != n.mac || b.read16(bar::NUM_QUEUES) != 2 {
        t.broken(
            "virtio-net BAR 0",
            format_args!("not host-shim's layout (MAC {mac:02x?})"),
        );
        n.dev.bar0 = Some(b);
        return;
    }
    storm_refusals(t, c, n, &mut b);
    // Ignored without a refusal of the transport's: the MAC, cleared status bits.
    for i in 0..6 {
        b.write8(bar::DEVICE + i, 0xff);
    }
    let mut after = [0u8; 6];
    for (i, m) in after.iter_mut().enumerate() {
        *m = b.read8(bar::DEVICE + i as u32);
    }
    t.check(
        c,
        "the MAC written in the device configuration",
        after == n.mac,
        format_args!("{after:02x?}"),
    );
    b.write8(bar::DEVICE_STATUS, S_DRIVER_OK);
    let st = b.read8(bar::DEVICE_STATUS);
    t.check(
        c,
        "device_status written with its other bits cleared",
        st == S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        format_args!("status {st:#x}"),
    );
    // Notifies of queues that do not exist, a narrow one, an unaligned one; then
    // garbage over the ISR (never its byte: a refusal of its own), device
    // configuration, notify and spare regions.
    b.write16(bar::NOTIFY + 2 * 4, 2);
    b.write16(bar::NOTIFY_END - 4, 0x3ff);
    b.write8(bar::NOTIFY + 1, 0);
    b.write32(bar::NOTIFY, u32::MAX);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..STORM_ACCESSES {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let span = (bar::NOTIFY_END - bar::ISR) + (bar::END - bar::SPARE);
        let mut off = bar::ISR + (seed >> 8) as u32 % span;
        if off >= bar::NOTIFY_END {
            off += bar::SPARE - bar::NOTIFY_END;
        }
        if off == bar::ISR {
            continue;
        }
        let v = (seed >> 32) as u32;
        match seed % 4 {
            0 => b.write8(off, v as u8),
            1 => b.write16(off & !1, v as u16),
            2 => b.write32(off & !3, v),
            _ => {
                let _ = b.read32(off & !3);
            }
        }
    }
    n.dev.bar0 = Some(b);
    // The live device still serves.
    n.rx_posted = false;
    let asked = peer::request(n, 1, RX_FRAME);
    let got = n.receive(0);
    let data = got.as_deref().is_some_and(peer::is_data);
    let st = n.dev.t.get_status();
    t.check(
        c,
        "after the storm, the live device still carries a frame",
        asked && data && !st.contains(DeviceStatus::DEVICE_NEEDS_RESET),
        format_args!("asked {asked}, the frame {data}, status {:#x}", st.bits()),
    );
}

/// The storm's writes the transport must refuse, one `refused_writes` each.
fn storm_refusals(t: &mut Tally, c: Cat, n: &mut Net, b: &mut platform::MmioRegion) {
    b.write8(bar::DEVICE_STATUS, 0);
    b.write8(bar::DEVICE_STATUS, S_ACK | S_DRIVER);
    let max = b.read16(bar::QUEUE_SIZE);
    b.write16(bar::QUEUE_SELECT, 2);
    b.write16(bar::QUEUE_SIZE, 8);
    let size2 = b.read16(bar::QUEUE_SIZE);
    b.write16(bar::QUEUE_SELECT, 0);
    let size0 = b.read16(bar::QUEUE_SIZE);
    t.check(
        c,
        "queue_size written for queue 2 (there are two)",
        size2 == 0 && size0 == max,
        format_args!("queue 2 reads {size2}, queue 0 {size0} of {max}"),
    );
    b.write16(bar::QUEUE_SELECT, 0xffff);
    b.write16(bar::QUEUE_ENABLE, 1);
    let on = b.read16(bar::QUEUE_ENABLE);
    b.write16(bar::QUEUE_SELECT, 0);
    let on0 = b.read16(bar::QUEUE_ENABLE);
    t.check(
        c,
        "queue_enable written for queue 0xffff",
        on == 0 && on0 == 0,
        format_args!("queue 0xffff {on}, queue 0 {on0}"),
    );
    b.write8(bar::DEVICE_STATUS, S_ACK | S_DRIVER | S_DRIVER_OK);
    let st = b.read8(bar::DEVICE_STATUS);
    t.check(
        c,
        "DRIVER_OK without FEATURES_OK",
        st == S_ACK | S_DRIVER,
        format_args!("status {st:#x}"),
    );
    b.write32(bar::DRIVER_FEATURE_SELECT, 1);
    b.write32(bar::DRIVER_FEATURE, (FEATURES >> 32) as u32 | 1 << 8);
    b.write8(bar::DEVICE_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    let st = b.read8(bar::DEVICE_STATUS);
    t.check(
        c,
        "FEATURES_OK with feature 40 (not offered)",
        st == S_ACK | S_DRIVER,
        format_args!("status {st:#x}"),
    );
    // The features we mean, then an attempt to change them.
    b.write32(bar::DRIVER_FEATURE, (FEATURES >> 32) as u32);
    b.write32(bar::DRIVER_FEATURE_SELECT, 0);
    b.write32(bar::DRIVER_FEATURE, FEATURES as u32);
    b.write8(bar::DEVICE_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if b.read8(bar::DEVICE_STATUS) & S_FEATURES_OK == 0 {
        t.broken("virtio-net FEATURES_OK in the storm", "refused");
        return;
    }
    b.write32(bar::DRIVER_FEATURE, u32::MAX);
    let low = b.read32(bar::DRIVER_FEATURE);
    t.check(
        c,
        "driver features written after FEATURES_OK",
        low == FEATURES as u32,
        format_args!("{low:#x}"),
    );
    // Enabled queues keep their registers.
    n.rx.set_up(&mut n.dev);
    n.tx.set_up(&mut n.dev);
    n.rx_posted = false;
    b.write16(bar::QUEUE_SELECT, 0);
    b.write16(bar::QUEUE_SIZE, 4);
    let size = b.read16(bar::QUEUE_SIZE);
    t.check(
        c,
        "queue_size written while the queue is enabled",
        size == QUEUE_SIZE,
        format_args!("{size}"),
    );
    b.write32(bar::QUEUE_DESC, 0x1000);
    let desc = b.read32(bar::QUEUE_DESC);
    t.check(
        c,
        "queue_desc written while the queue is enabled",
        desc == n.rx.pa as u32,
        format_args!("{desc:#x}"),
    );
    b.write16(bar::QUEUE_ENABLE, 0);
    let on = b.read16(bar::QUEUE_ENABLE);
    t.check(
        c,
        "queue_enable 0 written to an enabled queue",
        on == 1,
        format_args!("{on}"),
    );
    b.write8(
        bar::DEVICE_STATUS,
        S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    let st = b.read8(bar::DEVICE_STATUS);
    if st & (S_DRIVER_OK | S_NEEDS_RESET) != S_DRIVER_OK {
        t.broken("virtio-net DRIVER_OK in the storm", format_args!("{st:#x}"));
        return;
    }
    b.write16(bar::QUEUE_SELECT, 1);
    b.write32(bar::QUEUE_DESC, 0x1000);
    let desc = b.read32(bar::QUEUE_DESC);
    t.check(
        c,
        "queue_desc written after DRIVER_OK",
        desc == n.tx.pa as u32,
        format_args!("{desc:#x}"),
    );
    b.write16(bar::NUM_QUEUES, 9);
    let queues = b.read16(bar::NUM_QUEUES);
    t.check(
        c,
        "num_queues written",
        queues == 2,
        format_args!("{queues}"),
    );
    b.write8(bar::ISR, 0xff);
    let isr = b.read8(bar::ISR);
    t.check(
        c,
        "the ISR byte written",
        isr & !3 == 0,
        format_args!("ISR {isr:#x}"),
    );
}
