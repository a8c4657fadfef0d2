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
//!   `DEVICE_NEEDS_RESET`.
//!
//! Then the peer must have seen no attack frame, and after a reset a good frame goes
//! out and the peer's answer comes in.
//!
//! Runs on the first virtio-net function, when the machine has one.

use alloc::vec::Vec;

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
/// `struct virtio_net_hdr` with `num_buffers` (every header under `VERSION_1`).
const HDR_LEN: usize = 12;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const NEEDS_CSUM: u8 = 1;
/// Receive buffers of the good path.
const RX_BUF: u32 = 2048;
/// Bytes asked of the peer per receive attack.
const RX_FRAME: u16 = 100;
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
        if !self.dev.negotiate(FEATURES) {
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
    let mut b = [0u8; 4096];
    n.canary.read_bytes(0, &mut b);
    let changed = b.iter().filter(|&&x| x != CANARY).count();
    t.check(
        c,
        "the canary page of the refused receive buffers",
        changed == 0,
        format_args!("{changed} bytes changed"),
    );
}
