//! The emulated Intel 82540EM attacked from the guest (8254x SDM chapter 3, the legacy
//! descriptor rings; chapter 13, the registers), as host-shim's model implements it
//! after QEMU's `hw/net/e1000.c`:
//!
//! - transmit: the ring at 3 GiB, beyond RAM (64 GiB), at 2^52, and wrapping the
//!   address space; TDLEN 0, 100 (not a multiple of 128: kept to 0) and 2^32 - 1 (kept
//!   to the largest ring) with the head beyond it; TDH beyond the ring; TDT beyond it
//!   with no descriptor ending a frame, over a ring of 8 and over the largest ring
//!   (65528 descriptors); buffers at 3 GiB, beyond RAM, at 2^52, wrapping 4 GiB and the
//!   address space, a good fragment then one outside RAM; frames of 0 and 13 bytes; a
//!   descriptor of 65535 bytes and two of them; context descriptors whose checksum
//!   offsets lie beyond the frame or end before they start, and a TSO context of a
//!   255-byte header and MSS 0. No frame may count as sent (GPTC, TPT) or reach the wire.
//! - receive, with frames asked of the host test's peer ([`super::peer`]) one at a
//!   time: the ring at 3 GiB, beyond RAM, at 2^52 and wrapping; RDLEN 0, 100, and
//!   2^32 - 1 with the head beyond it; RDH beyond the ring; RDT beyond it with a jumbo
//!   frame longer than the ring's buffers (one lap, then an overrun); buffers at 3 GiB,
//!   beyond RAM and wrapping the address space; a null buffer address (skipped, SDM
//!   3.2.3). Each must end as a missed packet (MPC, RXO) or a descriptor given back
//!   with an error (RXE), never as a good frame (GPRC), or (the null address) as the
//!   frame in the next descriptor.
//! - the I/O window (BAR1, SDM 13.2.2; QEMU's e1000 stubs it, host-shim implements
//!   it as the SDM and QEMU's e1000e do): IOADDR/IODATA must reach the registers BAR0
//!   does (reads, a write, an unaligned IOADDR naming its dword, narrow reads giving
//!   their bytes); IODATA writes with IOADDR at reserved offsets (0x0004, 0x1004)
//!   must land nowhere; an IOADDR beyond the register file (2^17, the flash window's
//!   last dword, 2^32 - 1) must write nothing (a CTRL.RST there resets nothing) and
//!   read 0;
//!   byte and word writes to IOADDR and IODATA, reserved offsets (+8, +0x3c) and
//!   dwords straddling IOADDR and IODATA (+2) must be ignored (read 0).
//! - the PHY through MDIC, each outcome as QEMU's `set_mdic` and `phy_regcap` give
//!   it: reads at PHY addresses 0, 2 and 31 and a BMCR reset written at PHY 2, reads
//!   of registers 7, 8 and 31 (not implemented), writes to the read-only PHYID1, BMSR
//!   and ANLPAR must end with MDIC.ERROR and change nothing; opcode 0 (neither read nor
//!   write) must do nothing and opcode 3 must read (QEMU tests the read bit first).
//! - the EEPROM: EERD reads of words 64, 128 and 255 (beyond the 64 words) must
//!   give DONE and no data, EERD with every bit set must echo them, as QEMU's
//!   `flash_eerd_read`; over EECD, a Microwire WRITE of word 0 and an ERAL must change
//!   nothing (the EEPROM is read-only), a READ run past word 63 must wrap to word 0,
//!   and after 2000 garbage EECD writes the words must still sum to 0xBABA and hold
//!   the MAC.
//! - a storm of thousands of garbage register writes over the whole BAR (reserved
//!   offsets and narrow writes among them; MDIC spared, its attacks are counted
//!   above) with bus mastering off.
//!
//! A canary page that the unusable rings name, and the bytes of the ring and buffer
//! pages beyond what the guest offered, must be untouched; the peer must have seen no
//! attack frame. Then a reset, and a good frame must go out (DD written back, GPTC and
//! TPT 1) and the peer's answer come in.
//!
//! Runs on the first e1000, when the machine has one. Its INTx is disabled (PCI command
//! register): everything here polls.

use alloc::vec::Vec;

use hw_devices::Mmio as _;
use hw_devices::e1000::reg::{self, stat};
use hw_devices::e1000::{
    DESC_SIZE, DLEN_MASK, RxDesc, TxContextDesc, TxDesc, ctrl, dtyp, eecd, eeprom, eerd, icr, mdic,
    phy, popts, rctl, rx_errors, rx_status, tctl, tx_cmd, tx_status,
};
use hw_devices::pci::{self, ConfigAccess as _, command};
use pv_drivers::shmem::{RawSharedMemory, SharedMemory};

use super::super::{arch, memory, platform, pv};
use super::peer::{self, Wire};
use super::{Cat, REPLY_NS, Tally};
use crate::kprintln;

const CANARY: u8 = 0x5c;
/// Where no RAM is: the PCI hole at 3 GiB, 64 GiB (beyond the RAM the shim gives a
/// guest), and 2^52 (beyond any physical address).
const HOLE: u64 = 0xc000_0000;
const BEYOND: u64 = 1 << 36;
const FAR: u64 = 1 << 52;
/// A ring base 128 bytes below 2^64: descriptor 7 would end past it.
const WRAPPING_RING: u64 = u64::MAX - 127;
/// Descriptors of the rings used here (the smallest ring: TDLEN/RDLEN 128).
const RING: u32 = 8;
const RING_BYTES: u32 = RING * DESC_SIZE as u32;
/// Transmit and receive buffers of the good rings: 2 KiB each, one per descriptor.
const SLOT: usize = 2048;
/// Pages of transmit and of receive buffers.
const BUF_PAGES: usize = 4;
/// Bytes asked of the peer for a receive attack, and for the jumbo one (more than the
/// eight 256-byte buffers of its ring hold).
const RX_FRAME: u16 = 100;
const JUMBO_FRAME: u16 = 3000;
/// Register writes of the storm.
const STORM_WRITES: u32 = 3000;

/// Offsets in BAR0 that the 82540EM does not have (SDM table 13-2 leaves them
/// reserved), written in the storm.
const RESERVED: [u32; 14] = [
    0x0004, 0x000c, 0x001c, 0x0024, 0x0034, 0x00cc, 0x00d4, 0x0108, 0x0404, 0x1004, 0x6000, 0x8000,
    0x1_0000, 0x1_fffc,
];

/// Registers the storm writes garbage into besides random offsets (not MDIC: its
/// errors are counted attack by attack in [`phy_attacks`]).
const HOT: [u32; 28] = [
    reg::CTRL,
    reg::EECD,
    reg::EERD,
    reg::ICR,
    reg::ICS,
    reg::IMS,
    reg::IMC,
    reg::ITR,
    reg::RCTL,
    reg::TCTL,
    reg::TIPG,
    reg::RDBAL,
    reg::RDBAH,
    reg::RDLEN,
    reg::RDH,
    reg::RDT,
    reg::RDTR,
    reg::RADV,
    reg::TDBAL,
    reg::TDBAH,
    reg::TDLEN,
    reg::TDH,
    reg::TDT,
    reg::TIDV,
    reg::TADV,
    reg::RXCSUM,
    reg::MANC,
    reg::VET,
];

/// What the registers said after a transmit attempt.
struct TxSeen {
    tdh: u32,
    tdlen: u32,
    /// GPTC + TPT: frames the device counts as sent.
    sent: u32,
}

/// The NIC and the guest memory the attacks use.
struct Nic {
    mmio: platform::MmioRegion,
    /// The first port of the I/O window (IOADDR; IODATA at +4), if it has one.
    io: Option<u16>,
    bdf: pci::Bdf,
    event: pv::DeviceEvent,
    mac: [u8; 6],
    /// The rings (descriptors 0-7; canary beyond).
    tx_pa: u64,
    tx: RawSharedMemory,
    rx_pa: u64,
    rx: RawSharedMemory,
    /// Transmit buffers (and the frames of attacks), receive buffers.
    buf_pa: u64,
    buf: RawSharedMemory,
    rxb_pa: u64,
    rxb: RawSharedMemory,
    /// Named by the rings the device must not use.
    canary_pa: u64,
    canary: RawSharedMemory,
    /// The good rings' next transmit descriptor and next receive descriptor.
    tdt: u32,
    rdh: u32,
    /// Missed packets counted (MPC clears when read).
    missed: u32,
}

impl Nic {
    fn r(&mut self, off: u32) -> u32 {
        self.mmio.read32(off)
    }

    fn w(&mut self, off: u32, v: u32) {
        self.mmio.write32(off, v)
    }

    /// Memory decode on, INTx off, bus mastering as asked.
    fn bus_master(&mut self, on: bool) {
        let mut cmd = command::MEMORY_SPACE | command::IO_SPACE | command::INTX_DISABLE;
        if on {
            cmd |= command::BUS_MASTER;
        }
        platform::config().write16(self.bdf, pci::reg::COMMAND as u8, cmd);
    }

    /// CTRL.RST (registers, statistics and rings back to their reset values), every
    /// interrupt masked. True if RST cleared.
    fn reset(&mut self) -> bool {
        self.w(reg::IMC, u32::MAX);
        let c = self.r(reg::CTRL);
        self.w(reg::CTRL, c | ctrl::RST);
        let done = (0..10_000).any(|_| self.r(reg::CTRL) & ctrl::RST == 0);
        self.w(reg::IMC, u32::MAX);
        self.missed = 0;
        done
    }

    fn tx_desc(&self, i: u32, d: &TxDesc) {
        self.tx.write_bytes(i as usize * DESC_SIZE, &d.to_bytes());
    }

    /// Legacy data descriptors `(address, length, command)` from the ring's start.
    fn tx_descs(&self, descs: &[(u64, u16, u8)]) {
        for (i, &(addr, length, cmd)) in descs.iter().enumerate() {
            let d = TxDesc {
                addr,
                length,
                cmd,
                ..Default::default()
            };
            self.tx_desc(i as u32, &d);
        }
    }

    fn tx_status(&self, i: u32) -> u8 {
        let mut s = [0u8];
        self.tx
            .read_bytes(i as usize * DESC_SIZE + TxDesc::STATUS, &mut s);
        s[0]
    }

    fn rx_desc(&self, i: u32) -> RxDesc {
        let mut b = [0u8; DESC_SIZE];
        self.rx.read_bytes(i as usize * DESC_SIZE, &mut b);
        RxDesc::from_bytes(&b)
    }

    fn set_rx_desc(&self, i: u32, addr: u64) {
        let d = RxDesc {
            addr,
            ..Default::default()
        };
        self.rx.write_bytes(i as usize * DESC_SIZE, &d.to_bytes());
    }

    /// Where transmit slot `i` is, and puts `frame` there.
    fn stage(&self, i: usize, frame: &[u8]) -> u64 {
        let at = (i % (BUF_PAGES * 4096 / SLOT)) * SLOT;
        self.buf.write_bytes(at, frame);
        self.buf_pa + at as u64
    }

    /// Programs the transmit ring at `base` (TDLEN `len`, TDH `head`), enables the
    /// transmitter, then writes TDT `tail` (the device walks in that write).
    fn tx_run(&mut self, base: u64, len: u32, head: u32, tail: u32) -> TxSeen {
        self.w(reg::TDBAL, base as u32);
        self.w(reg::TDBAH, (base >> 32) as u32);
        self.w(reg::TDLEN, len);
        self.w(reg::TDH, head);
        self.w(reg::TDT, head);
        self.w(reg::TCTL, tctl::EN | tctl::PSP);
        self.w(reg::TDT, tail);
        let (tdh, tdlen) = (self.r(reg::TDH), self.r(reg::TDLEN));
        let sent = self.r(stat::GPTC) + self.r(stat::TPT);
        TxSeen { tdh, tdlen, sent }
    }

    /// The good transmit ring: ours, eight descriptors, empty.
    fn good_tx(&mut self) {
        self.tx.write_bytes(0, &[0u8; RING_BYTES as usize]);
        self.tx_run(self.tx_pa, RING_BYTES, 0, 0);
        self.tdt = 0;
    }

    /// The good receive ring: ours, eight descriptors with a 2 KiB buffer each, seven
    /// given to the device (the eighth is the gap at RDT).
    fn good_rx(&mut self) {
        for i in 0..RING {
            self.set_rx_desc(i, self.rxb_pa + u64::from(i) * SLOT as u64);
        }
        self.rx_ring(self.rx_pa, RING_BYTES, 0, RING - 1);
        self.w(reg::RCTL, rctl::EN | rctl::SECRC | rctl::BSIZE_2048);
        self.rdh = 0;
    }

    fn rx_ring(&mut self, base: u64, len: u32, head: u32, tail: u32) {
        self.w(reg::RDBAL, base as u32);
        self.w(reg::RDBAH, (base >> 32) as u32);
        self.w(reg::RDLEN, len);
        self.w(reg::RDH, head);
        self.w(reg::RDT, tail);
    }

    /// Reads MPC into `missed`; whether any packet was missed.
    fn any_missed(&mut self) -> bool {
        self.missed += self.r(stat::MPC);
        self.missed > 0
    }

    /// Resets, sets the good transmit ring up, programs the receive ring as given
    /// (RCTL last), asks the peer for one frame of `len` bytes and waits (bounded)
    /// until `done` says the device dealt with it. Whether it did in time.
    fn rx_try(
        &mut self,
        ring: (u64, u32, u32, u32),
        rctl: u32,
        len: u16,
        mut done: impl FnMut(&mut Nic) -> bool,
    ) -> bool {
        if !self.reset() {
            return false;
        }
        self.good_tx();
        let (base, rdlen, head, tail) = ring;
        self.rx_ring(base, rdlen, head, tail);
        self.w(reg::RCTL, rctl);
        if !peer::request(self, 1, len) {
            return false;
        }
        let deadline = pv::now_ns().saturating_add(REPLY_NS);
        loop {
            if done(self) {
                return true;
            }
            if pv::now_ns() >= deadline {
                return false;
            }
            self.pause(deadline);
        }
    }

    /// Halts a millisecond (never beyond `deadline`): the device's interrupt is off.
    fn pause(&self, deadline: u64) {
        pv::wait_for_event(
            &self.event,
            deadline.min(pv::now_ns().saturating_add(1_000_000)),
        );
    }

    /// Bytes of `view` from `from` on that are no longer [`CANARY`].
    fn canary_changed(view: &RawSharedMemory, from: usize) -> usize {
        let mut b = [0u8; 4096];
        let mut changed = 0;
        let mut at = from;
        while at < view.len() {
            let n = (view.len() - at).min(b.len());
            view.read_bytes(at, &mut b[..n]);
            changed += b[..n].iter().filter(|&&x| x != CANARY).count();
            at += n;
        }
        changed
    }
}

impl Wire for Nic {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Through the good transmit ring: `EOP | IFCS | RS`, then DD (written back in the
    /// TDT write by the model; a bounded poll for anything slower).
    fn send(&mut self, frame: &[u8]) -> bool {
        let i = self.tdt;
        let addr = self.stage(i as usize, frame);
        self.tx_desc(
            i,
            &TxDesc {
                addr,
                length: frame.len() as u16,
                cmd: tx_cmd::EOP | tx_cmd::IFCS | tx_cmd::RS,
                ..Default::default()
            },
        );
        self.tdt = (i + 1) % RING;
        self.w(reg::TDT, self.tdt);
        (0..10_000).any(|_| self.tx_status(i) & tx_status::DD != 0)
    }

    /// From the good receive ring: the descriptor at the driver's head once it has DD
    /// (a frame in one buffer, without errors; others are skipped); it becomes the gap
    /// at RDT again.
    fn receive(&mut self, deadline: u64) -> Option<Vec<u8>> {
        loop {
            let i = self.rdh;
            let d = self.rx_desc(i);
            if d.status & rx_status::DD != 0 {
                let mut f = alloc::vec![0u8; usize::from(d.length).min(SLOT)];
                self.rxb.read_bytes(i as usize * SLOT, &mut f);
                self.set_rx_desc(i, self.rxb_pa + u64::from(i) * SLOT as u64);
                self.w(reg::RDT, i);
                self.rdh = (i + 1) % RING;
                if d.status & rx_status::EOP != 0 && d.errors == 0 {
                    return Some(f);
                }
                continue;
            }
            if pv::now_ns() >= deadline {
                return None;
            }
            self.pause(deadline);
        }
    }
}

pub(super) fn attacks(t: &mut Tally) {
    if platform::e1000s().next().is_none() {
        kprintln!("hostile: e1000: no e1000, skipped");
        return;
    }
    let target = match platform::prepare_e1000(0) {
        Ok(t) => t,
        Err(e) => {
            t.broken("e1000", e);
            return;
        }
    };
    let pages = (
        memory::alloc_zeroed(1),
        memory::alloc_zeroed(1),
        memory::alloc_zeroed(BUF_PAGES),
        memory::alloc_zeroed(BUF_PAGES),
        memory::alloc_zeroed(1),
    );
    let (
        Some((tx_pa, tx)),
        Some((rx_pa, rx)),
        Some((buf_pa, buf)),
        Some((rxb_pa, rxb)),
        Some((canary_pa, canary)),
    ) = pages
    else {
        t.broken("e1000 pages", "out of memory");
        return;
    };
    // The first I/O BAR, as Linux's e1000 finds it (QEMU and host-shim put it at 1).
    let io = target
        .function
        .bars
        .iter()
        .flatten()
        .find(|b| !b.is_memory())
        .and_then(|b| u16::try_from(b.address).ok());
    let mut n = Nic {
        mmio: target.mmio,
        io,
        bdf: target.function.bdf,
        event: target.event,
        mac: [0; 6],
        tx_pa,
        tx,
        rx_pa,
        rx,
        buf_pa,
        buf,
        rxb_pa,
        rxb,
        canary_pa,
        canary,
        tdt: 0,
        rdh: 0,
        missed: 0,
    };
    n.bus_master(true);
    if !n.reset() {
        t.broken("e1000 reset", "CTRL.RST did not clear");
        return;
    }
    let (ral, rah) = (n.r(reg::RAL0), n.r(reg::RAH0));
    n.mac[..4].copy_from_slice(&ral.to_le_bytes());
    n.mac[4..].copy_from_slice(&rah.to_le_bytes()[..2]);
    let fill = [CANARY; 4096];
    n.canary.write_bytes(0, &fill);
    n.tx.write_bytes(0, &fill);
    n.rx.write_bytes(0, &fill);
    kprintln!(
        "hostile: e1000: attacking {} ({:02x?})",
        target.function.bdf,
        n.mac
    );

    io_attacks(t, &mut n);
    phy_attacks(t, &mut n);
    eeprom_attacks(t, &mut n);
    if !n.reset() {
        t.broken(
            "e1000 reset after the register attacks",
            "CTRL.RST did not clear",
        );
        return;
    }
    transmit_attacks(t, &mut n);
    receive_attacks(t, &mut n);
    let c = Cat::E1000;
    let changed = Nic::canary_changed(&n.canary, 0);
    t.check(
        c,
        "the canary page the unusable rings named",
        changed == 0,
        format_args!("{changed} bytes changed"),
    );
    let changed = Nic::canary_changed(&n.tx, RING_BYTES as usize)
        + Nic::canary_changed(&n.rx, RING_BYTES as usize);
    t.check(
        c,
        "the ring pages beyond the eight descriptors offered",
        changed == 0,
        format_args!("{changed} bytes changed"),
    );

    let (writes, reserved, narrow) = storm(&mut n);
    kprintln!(
        "hostile: e1000: register storm of {writes} writes ({reserved} at reserved offsets, \
         {narrow} narrow) with bus mastering off done"
    );

    // A reset, and the device must work: the EEPROM reads, a good frame goes out and
    // counts, the peer's answer comes in and says no attack frame reached it.
    n.bus_master(true);
    if !n.reset() {
        t.broken("e1000 reset after the storm", "CTRL.RST did not clear");
        return;
    }
    n.w(reg::EERD, eerd::START);
    let word0 = (n.r(reg::EERD) >> eerd::DATA_SHIFT) as u16;
    n.good_tx();
    n.good_rx();
    match peer::good_exchange(&mut n, 1) {
        Ok(seen) => {
            let (gptc, tpt) = (n.r(stat::GPTC), n.r(stat::TPT));
            t.check(
                c,
                "no attack frame reached the wire (the peer's count)",
                seen == 0,
                format_args!("the peer saw {seen}"),
            );
            if gptc == 1 && tpt == 1 && word0.to_le_bytes() == n.mac[..2] {
                kprintln!(
                    "hostile: e1000: after a reset a good frame went out (DD, GPTC 1, TPT 1) \
                     and the peer's answer came back"
                );
            } else {
                t.broken(
                    "the e1000 after the attacks",
                    format_args!("GPTC {gptc}, TPT {tpt}, EEPROM word 0 {word0:#06x}"),
                );
            }
        }
        Err(e) => t.broken("a good frame through the e1000 after the attacks", e),
    }
    n.reset();
}

fn transmit_attacks(t: &mut Tally, n: &mut Nic) {
    let c = Cat::E1000;
    let eop = tx_cmd::EOP | tx_cmd::IFCS | tx_cmd::RS;
    let mut attack = 0u16;
    let check = |t: &mut Tally, what: &str, ok: bool, s: &TxSeen| {
        t.check(
            c,
            what,
            ok && s.sent == 0,
            format_args!("TDH {}, TDLEN {:#x}, sent {}", s.tdh, s.tdlen, s.sent),
        );
    };
    // Rings outside RAM: nothing walked.
    for (what, base, head) in [
        ("a transmit ring at 3 GiB", HOLE, 0),
        ("a transmit ring beyond RAM (64 GiB)", BEYOND, 0),
        ("a transmit ring at 2^52", FAR, 0),
        (
            "a transmit ring wrapping the address space",
            WRAPPING_RING,
            7,
        ),
    ] {
        n.reset();
        let s = n.tx_run(base, RING_BYTES, head, (head + 1) % RING);
        check(t, what, s.tdh == head, &s);
    }
    // Lengths and heads that leave no ring to walk (at the canary page).
    for (what, len, head, tail, kept) in [
        ("TDLEN 0", 0, 0, 1, 0),
        ("TDLEN 100 (not a multiple of 128)", 100, 0, 1, 0),
        (
            "TDLEN 2^32 - 1 with TDH beyond the largest ring",
            u32::MAX,
            0xffff,
            0,
            DLEN_MASK,
        ),
        (
            "TDH beyond the ring (200 of 8)",
            RING_BYTES,
            200,
            3,
            RING_BYTES,
        ),
    ] {
        n.reset();
        let s = n.tx_run(n.canary_pa, len, head, tail);
        check(t, what, s.tdh == head && s.tdlen == kept, &s);
    }
    // No descriptor ends a frame and TDT lies beyond the ring: one lap, then the walk
    // stops where it began.
    n.reset();
    n.tx.write_bytes(0, &[0u8; RING_BYTES as usize]);
    let s = n.tx_run(n.tx_pa, RING_BYTES, 0, 200);
    check(
        t,
        "TDT beyond the ring (200 of 8), no descriptor with EOP",
        s.tdh == 0,
        &s,
    );
    match memory::alloc_zeroed(256) {
        Some((pa, view)) => {
            n.reset();
            let s = n.tx_run(pa, u32::MAX, 0, 0xffff);
            check(
                t,
                "the largest ring (65528 descriptors) without EOP, TDT beyond it",
                s.tdh == 0 && s.tdlen == DLEN_MASK,
                &s,
            );
            memory::free_zeroed(pa, view);
        }
        None => t.broken("a 1 MiB transmit ring", "out of memory"),
    }
    // Frames from buffers outside RAM or wrapping: dropped.
    let mut frame = |n: &Nic, slot: usize, len: usize| {
        attack += 1;
        n.stage(slot, &peer::attack_frame(n.mac, attack, len))
    };
    let good = frame(n, 0, 64);
    for (what, descs) in [
        ("a buffer at 3 GiB", [(HOLE, 64, eop), (0, 0, 0)]),
        (
            "a buffer beyond RAM (64 GiB)",
            [(BEYOND, 64, eop), (0, 0, 0)],
        ),
        ("a buffer at 2^52", [(FAR, 64, eop), (0, 0, 0)]),
        (
            "a buffer wrapping 4 GiB",
            [(0xffff_ff00, 512, eop), (0, 0, 0)],
        ),
        (
            "a buffer wrapping the address space",
            [(u64::MAX - 31, 64, eop), (0, 0, 0)],
        ),
        (
            "a good fragment, then one at 3 GiB",
            [(good, 60, tx_cmd::IFCS), (HOLE, 64, eop)],
        ),
    ] {
        n.reset();
        let used = descs.iter().filter(|d| d.1 != 0).count() as u32;
        n.tx_descs(&descs);
        let s = n.tx_run(n.tx_pa, RING_BYTES, 0, used);
        check(t, what, s.tdh == used, &s);
    }
    // Lengths: no Ethernet header, and more than the device gathers (16 KiB) from
    // buffers of ours that hold it all.
    let short = frame(n, 1, 64);
    let big = n.buf_pa;
    for (what, descs) in [
        ("a frame of 0 bytes", [(short, 0, eop), (0, 0, 0)]),
        ("a frame of 13 bytes", [(short, 13, eop), (0, 0, 0)]),
        (
            "a descriptor of 65535 bytes",
            [(big, 65535, eop), (0, 0, 0)],
        ),
        (
            "two descriptors of 65535 bytes",
            [(big, 65535, tx_cmd::IFCS), (big, 65535, eop)],
        ),
    ] {
        n.reset();
        let used = if descs[1].2 == 0 { 1 } else { 2 };
        n.tx_descs(&descs[..used as usize]);
        let s = n.tx_run(n.tx_pa, RING_BYTES, 0, used);
        check(t, what, s.tdh == used, &s);
    }
    // Context descriptors with absurd offsets, then a data descriptor that asks for
    // the checksum (or for segmentation, with a TSO context).
    let data = frame(n, 2, 60);
    let ctx = |ipcso, ipcse, tucss, tucso, tucse, tse: bool| TxContextDesc {
        ipcss: 14,
        ipcso,
        ipcse,
        tucss,
        tucso,
        tucse,
        cmd_and_length: (u32::from(tx_cmd::DEXT | if tse { tx_cmd::TSE } else { 0 }) << 24)
            | if tse { 0xf_ffff } else { 0 },
        hdr_len: if tse { 255 } else { 0 },
        mss: 0,
        ..Default::default()
    };
    for (what, c_desc, popts, tse) in [
        (
            "a TCP/UDP checksum offset beyond the frame",
            ctx(24, 33, 200, 250, 0, false),
            popts::TXSM,
            false,
        ),
        (
            "an IP checksum offset beyond the frame",
            ctx(255, 0, 34, 40, 0, false),
            popts::IXSM,
            false,
        ),
        (
            "a checksum that ends before it starts",
            ctx(24, 33, 40, 42, 20, false),
            popts::TXSM,
            false,
        ),
        (
            "a TSO context (a 255-byte header, MSS 0) and a TSE frame",
            ctx(24, 33, 34, 50, 0, true),
            popts::TXSM | popts::IXSM,
            true,
        ),
    ] {
        n.reset();
        n.tx.write_bytes(0, &c_desc.to_bytes());
        let d = TxDesc {
            addr: data,
            length: 60,
            cso: dtyp::DATA << 4,
            cmd: tx_cmd::DEXT | eop | if tse { tx_cmd::TSE } else { 0 },
            css: popts,
            ..Default::default()
        };
        n.tx_desc(1, &d);
        let s = n.tx_run(n.tx_pa, RING_BYTES, 0, 2);
        check(t, what, s.tdh == 2, &s);
    }
}

fn receive_attacks(t: &mut Tally, n: &mut Nic) {
    let c = Cat::E1000;
    let plain = rctl::EN | rctl::SECRC | rctl::BSIZE_2048;
    // Rings that cannot be read, or that leave no ring: a missed packet each.
    let outside = [
        (
            "a receive ring at 3 GiB",
            (HOLE, RING_BYTES, 0, 4),
            RING_BYTES,
        ),
        (
            "a receive ring beyond RAM (64 GiB)",
            (BEYOND, RING_BYTES, 0, 4),
            RING_BYTES,
        ),
        (
            "a receive ring at 2^52",
            (FAR, RING_BYTES, 0, 4),
            RING_BYTES,
        ),
        (
            "a receive ring wrapping the address space",
            (WRAPPING_RING, RING_BYTES, 7, 0),
            RING_BYTES,
        ),
    ];
    let cp = n.canary_pa;
    let unusable = [
        ("RDLEN 0", (cp, 0, 0, 1), 0),
        ("RDLEN 100 (not a multiple of 128)", (cp, 100, 0, 1), 0),
        (
            "RDLEN 2^32 - 1 with RDH beyond the largest ring",
            (cp, u32::MAX, 0xffff, 0),
            DLEN_MASK,
        ),
        (
            "RDH beyond the ring (200 of 8)",
            (cp, RING_BYTES, 200, 3),
            RING_BYTES,
        ),
    ];
    for (what, ring, kept) in outside.into_iter().chain(unusable) {
        let seen = n.rx_try(ring, plain, RX_FRAME, Nic::any_missed);
        let (rdlen, gprc) = (n.r(reg::RDLEN), n.r(stat::GPRC));
        t.check(
            c,
            what,
            seen && n.missed == 1 && gprc == 0 && rdlen == kept,
            format_args!(
                "in time {seen}, missed {}, GPRC {gprc}, RDLEN {rdlen:#x}",
                n.missed
            ),
        );
    }

    // RDT beyond the ring and a frame longer than its eight 256-byte buffers: one lap
    // over the buffers offered, then an overrun; nothing beyond them written.
    let fill = [CANARY; 4096];
    for p in 0..BUF_PAGES {
        n.rxb.write_bytes(p * 4096, &fill);
    }
    for i in 0..RING {
        n.set_rx_desc(i, n.rxb_pa + u64::from(i) * 256);
    }
    let jumbo = rctl::EN | rctl::SECRC | rctl::LPE | (3 << rctl::BSIZE_SHIFT);
    let seen = n.rx_try(
        (n.rx_pa, RING_BYTES, 0, 200),
        jumbo,
        JUMBO_FRAME,
        Nic::any_missed,
    );
    let (rdh, rnbc, gprc) = (n.r(reg::RDH), n.r(stat::RNBC), n.r(stat::GPRC));
    let beyond = Nic::canary_changed(&n.rxb, RING as usize * 256);
    t.check(
        c,
        "RDT beyond the ring (200 of 8) and a frame longer than its buffers",
        seen && n.missed == 1 && rnbc == 1 && gprc == 0 && rdh == 0 && beyond == 0,
        format_args!(
            "in time {seen}, missed {}, RNBC {rnbc}, GPRC {gprc}, RDH {rdh}, \
             {beyond} bytes beyond the buffers changed",
            n.missed
        ),
    );

    // Buffers outside RAM: the descriptor comes back with RXE, not as a good frame.
    for (what, addr) in [
        ("a receive buffer at 3 GiB", HOLE),
        ("a receive buffer beyond RAM (64 GiB)", BEYOND),
        ("a receive buffer wrapping the address space", u64::MAX - 63),
    ] {
        n.set_rx_desc(0, addr);
        let seen = n.rx_try((n.rx_pa, RING_BYTES, 0, 1), plain, RX_FRAME, |n| {
            n.rx_desc(0).status & rx_status::DD != 0
        });
        let d = n.rx_desc(0);
        let (gprc, rxerrc) = (n.r(stat::GPRC), n.r(stat::RXERRC));
        t.check(
            c,
            what,
            seen && d.errors & rx_errors::RXE != 0 && gprc == 0 && rxerrc == 1,
            format_args!(
                "in time {seen}, status {:#x}, errors {:#x}, GPRC {gprc}, RXERRC {rxerrc}",
                d.status, d.errors
            ),
        );
    }

    // A null buffer address: skipped (DD, no EOP); the frame lands in the next one.
    n.set_rx_desc(0, 0);
    n.set_rx_desc(1, n.rxb_pa);
    let seen = n.rx_try((n.rx_pa, RING_BYTES, 0, 2), plain, RX_FRAME, |n| {
        n.rx_desc(1).status & rx_status::DD != 0
    });
    let (d0, d1) = (n.rx_desc(0), n.rx_desc(1));
    let mut f = alloc::vec![0u8; usize::from(d1.length).min(SLOT)];
    n.rxb.read_bytes(0, &mut f);
    t.check(
        c,
        "a null receive buffer address",
        seen && d0.status & (rx_status::DD | rx_status::EOP) == rx_status::DD
            && d1.status & rx_status::EOP != 0
            && peer::is_data(&f),
        format_args!(
            "in time {seen}, status {:#x} then {:#x}, the frame {} bytes, the peer's {}",
            d0.status,
            d1.status,
            f.len(),
            peer::is_data(&f)
        ),
    );
    n.reset();
}

/// Garbage into the whole BAR with bus mastering off: random offsets, the real
/// registers, reserved offsets, narrow writes; reads between. Returns (writes, at
/// reserved offsets, narrow).
fn storm(n: &mut Nic) -> (u32, u32, u32) {
    n.bus_master(false);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut reserved, mut narrow) = (0, 0);
    let bar = hw_devices::e1000::MMIO_SIZE as u32;
    for i in 0..STORM_WRITES {
        let r = next();
        let v = (r >> 32) as u32;
        match r % 10 {
            0 => {
                n.w(RESERVED[(r >> 8) as usize % RESERVED.len()], v);
                reserved += 1;
            }
            1 => {
                let off = (r >> 8) as u32 % bar;
                if r & 0x100 != 0 {
                    n.mmio.write8(off, v as u8);
                } else {
                    n.mmio.write16(off & !1, v as u16);
                }
                narrow += 1;
            }
            2..=4 => n.w(HOT[(r >> 8) as usize % HOT.len()], v),
            _ => {
                let off = ((r >> 8) as u32 % bar) & !3;
                if off != reg::MDIC {
                    n.w(off, v);
                }
            }
        }
        if i % 16 == 0 {
            let _ = n.r(((r >> 40) as u32 % bar) & !3);
        }
    }
    (STORM_WRITES, reserved, narrow)
}

/// IOADDR and IODATA: ports of the I/O window.
const IOADDR: u16 = 0;
const IODATA: u16 = 4;

/// The I/O window (8254x SDM 13.2.2): IOADDR/IODATA reach the registers BAR0 reaches;
/// what lies outside the register file, narrow writes, reserved offsets and dwords
/// that straddle the two are ignored (counted by the model as `io_bad_address` and
/// `io_bad_access`, one per attack).
fn io_attacks(t: &mut Tally, n: &mut Nic) {
    let c = Cat::E1000;
    let Some(io) = n.io else {
        t.broken("the e1000's I/O window", "no I/O BAR");
        return;
    };
    let indirect = |off: u32| {
        arch::outl(io + IOADDR, off);
        arch::inl(io + IODATA)
    };
    // Reads reach what BAR0 reads.
    let mut same = true;
    for off in [reg::RAL0, reg::RAH0, reg::STATUS] {
        same &= indirect(off) == n.r(off);
    }
    let ioaddr = arch::inl(io + IOADDR);
    t.check(
        c,
        "IOADDR/IODATA read RAL0, RAH0 and STATUS as BAR0 does",
        same && ioaddr == reg::STATUS,
        format_args!("same {same}, IOADDR reads {ioaddr:#x}"),
    );
    // A write through IODATA lands in IMS.
    n.w(reg::IMC, u32::MAX);
    arch::outl(io + IOADDR, reg::IMS);
    arch::outl(io + IODATA, icr::TXDW);
    let ims = n.r(reg::IMS);
    t.check(
        c,
        "a write through IODATA reaches IMS",
        ims == icr::TXDW,
        format_args!("IMS {ims:#x}"),
    );
    // An unaligned IOADDR names its dword; narrow reads give their bytes.
    let ral0 = n.r(reg::RAL0);
    let got = indirect(reg::RAL0 + 3);
    t.check(
        c,
        "an unaligned IOADDR (RAL0 + 3) names its dword",
        got == ral0,
        format_args!("{got:#x}, RAL0 {ral0:#x}"),
    );
    // IOADDR at offsets the 82540EM does not have: IODATA writes land nowhere (the
    // model counts them as unknown registers, as BAR0 writes there).
    let mut kept = [0u32; 2];
    for (k, off) in kept.iter_mut().zip([0x0004u32, 0x1004]) {
        arch::outl(io + IOADDR, off);
        arch::outl(io + IODATA, u32::MAX);
        *k = arch::inl(io + IODATA);
    }
    t.check(
        c,
        "IODATA writes with IOADDR at reserved offsets 0x0004 and 0x1004",
        kept == [0, 0],
        format_args!("read back {kept:#x?}"),
    );
    arch::outl(io + IOADDR, reg::RAL0);
    let (w, b) = (arch::inw(io + IODATA + 2), arch::inb(io + IODATA + 1));
    t.check(
        c,
        "word and byte reads of IODATA give their bytes of the register",
        u32::from(w) == ral0 >> 16 && u32::from(b) == (ral0 >> 8) & 0xff,
        format_args!("{w:#x}, {b:#x}, RAL0 {ral0:#x}"),
    );
    // Beyond the register file: nothing written (a CTRL.RST would clear IMS), 0 read.
    for (what, addr) in [
        (
            "a CTRL.RST through IOADDR 2^17 (beyond the registers)",
            0x2_0000,
        ),
        (
            "a CTRL.RST through IOADDR 0x7fffc (the flash window)",
            0x7_fffc,
        ),
        ("a CTRL.RST through IOADDR 2^32 - 1", u32::MAX),
    ] {
        arch::outl(io + IOADDR, addr);
        arch::outl(io + IODATA, ctrl::RST);
        let ims = n.r(reg::IMS);
        t.check(c, what, ims == icr::TXDW, format_args!("IMS {ims:#x}"));
    }
    let got = arch::inl(io + IODATA);
    t.check(
        c,
        "an IODATA read with IOADDR beyond the registers",
        got == 0,
        format_args!("{got:#x}"),
    );
    // Narrow writes: ignored.
    arch::outl(io + IOADDR, reg::IMS);
    arch::outb(io + IOADDR, reg::ICS as u8);
    let a1 = arch::inl(io + IOADDR);
    arch::outw(io + IOADDR + 2, 1);
    let a2 = arch::inl(io + IOADDR);
    t.check(
        c,
        "a byte write to IOADDR",
        a1 == reg::IMS,
        format_args!("IOADDR {a1:#x}"),
    );
    t.check(
        c,
        "a word write to IOADDR",
        a2 == reg::IMS,
        format_args!("IOADDR {a2:#x}"),
    );
    arch::outw(io + IODATA, 0xffff);
    let i1 = n.r(reg::IMS);
    arch::outb(io + IODATA + 1, 0xff);
    let i2 = n.r(reg::IMS);
    t.check(
        c,
        "a word write to IODATA",
        i1 == icr::TXDW,
        format_args!("IMS {i1:#x}"),
    );
    t.check(
        c,
        "a byte write to IODATA",
        i2 == icr::TXDW,
        format_args!("IMS {i2:#x}"),
    );
    // Reserved offsets and dwords straddling IOADDR and IODATA.
    arch::outl(io + 8, reg::CTRL);
    let a = arch::inl(io + IOADDR);
    t.check(
        c,
        "a dword write at +8 (reserved)",
        a == reg::IMS && n.r(reg::IMS) == icr::TXDW,
        format_args!("IOADDR {a:#x}"),
    );
    let got = arch::inl(io + 0x3c);
    t.check(
        c,
        "a dword read at +0x3c (reserved)",
        got == 0,
        format_args!("{got:#x}"),
    );
    let got = arch::inl(io + 2);
    t.check(
        c,
        "a dword read at +2 (straddling IOADDR and IODATA)",
        got == 0,
        format_args!("{got:#x}"),
    );
    arch::outl(io + 2, u32::MAX);
    let (a, ims) = (arch::inl(io + IOADDR), n.r(reg::IMS));
    t.check(
        c,
        "a dword write at +2 (straddling IOADDR and IODATA)",
        a == reg::IMS && ims == icr::TXDW,
        format_args!("IOADDR {a:#x}, IMS {ims:#x}"),
    );
    n.w(reg::IMC, u32::MAX);
}

/// One MDIC operation; MDIC once READY (the model completes in the write).
fn mdic_op(n: &mut Nic, val: u32) -> u32 {
    n.w(reg::MDIC, val);
    let mut v = 0;
    for _ in 0..1000 {
        v = n.r(reg::MDIC);
        if v & mdic::READY != 0 {
            break;
        }
    }
    v
}

/// An MDIC read of PHY `addr` register `r`: the data, or `None` on ERROR.
fn phy_read(n: &mut Nic, addr: u32, r: u32) -> Option<u16> {
    let v = mdic_op(
        n,
        r << mdic::REG_SHIFT | addr << mdic::PHY_SHIFT | mdic::OP_READ,
    );
    (v & mdic::ERROR == 0 && v & mdic::READY != 0).then_some(v as u16)
}

/// The PHY through MDIC, every outcome as QEMU's `set_mdic` gives it; each error is
/// one in the model's `errors.mdic`.
fn phy_attacks(t: &mut Tally, n: &mut Nic) {
    let c = Cat::E1000;
    let bmcr = phy_read(n, mdic::PHY_ADDR, phy::BMCR);
    let bmsr = phy_read(n, mdic::PHY_ADDR, phy::BMSR);
    let anlpar = phy_read(n, mdic::PHY_ADDR, phy::ANLPAR);
    let (Some(bmcr), Some(bmsr), Some(anlpar)) = (bmcr, bmsr, anlpar) else {
        t.broken("the e1000's PHY", "BMCR, BMSR or ANLPAR unreadable");
        return;
    };
    let unchanged = |n: &mut Nic| {
        phy_read(n, mdic::PHY_ADDR, phy::BMCR) == Some(bmcr)
            && phy_read(n, mdic::PHY_ADDR, phy::BMSR) == Some(bmsr)
            && phy_read(n, mdic::PHY_ADDR, phy::PHYID1) == Some(phy::ID1)
            && phy_read(n, mdic::PHY_ADDR, phy::ANLPAR) == Some(anlpar)
    };
    let op = |addr: u32, r: u32, opc: u32, data: u16| {
        r << mdic::REG_SHIFT | addr << mdic::PHY_SHIFT | opc | u32::from(data)
    };
    let reset = phy::BMCR_RESET | phy::BMCR_AUTOEN | phy::BMCR_ANRESTART;
    for (what, val) in [
        (
            "an MDIC read at PHY address 0",
            op(0, phy::PHYID1, mdic::OP_READ, 0),
        ),
        (
            "an MDIC read at PHY address 2",
            op(2, phy::PHYID1, mdic::OP_READ, 0),
        ),
        (
            "an MDIC read at PHY address 31",
            op(31, phy::PHYID1, mdic::OP_READ, 0),
        ),
        (
            "an MDIC write of a BMCR reset at PHY address 2",
            op(2, phy::BMCR, mdic::OP_WRITE, reset),
        ),
        (
            "an MDIC read of PHY register 7 (not implemented)",
            op(1, 7, mdic::OP_READ, 0),
        ),
        (
            "an MDIC read of PHY register 8 (not implemented)",
            op(1, 8, mdic::OP_READ, 0),
        ),
        (
            "an MDIC read of PHY register 31 (not implemented)",
            op(1, 31, mdic::OP_READ, 0),
        ),
        (
            "an MDIC write to PHYID1 (read-only)",
            op(1, phy::PHYID1, mdic::OP_WRITE, 0xdead),
        ),
        (
            "an MDIC write to BMSR (read-only)",
            op(1, phy::BMSR, mdic::OP_WRITE, 0),
        ),
        (
            "an MDIC write to ANLPAR (read-only)",
            op(1, phy::ANLPAR, mdic::OP_WRITE, 0xffff),
        ),
    ] {
        let v = mdic_op(n, val);
        let kept = unchanged(n);
        t.check(
            c,
            what,
            v & (mdic::ERROR | mdic::READY) == mdic::ERROR | mdic::READY && kept,
            format_args!("MDIC {v:#x}, the PHY unchanged {kept}"),
        );
    }
    // Opcode 0: QEMU keeps the value (READY, no error) and touches no PHY register.
    let val = op(1, phy::BMCR, 0, reset);
    let v = mdic_op(n, val);
    let kept = unchanged(n);
    t.check(
        c,
        "MDIC opcode 0 (neither read nor write) with a BMCR reset",
        v == val | mdic::READY && kept,
        format_args!("MDIC {v:#x}, the PHY unchanged {kept}"),
    );
    // Opcode 3: a read (QEMU tests the read bit first); the data written is replaced.
    let v = mdic_op(n, op(1, phy::BMCR, mdic::OP_READ | mdic::OP_WRITE, reset));
    let kept = unchanged(n);
    t.check(
        c,
        "MDIC opcode 3 (read and write) with a BMCR reset",
        v & mdic::ERROR == 0 && v as u16 == bmcr && kept,
        format_args!("MDIC {v:#x}, BMCR {bmcr:#x}, the PHY unchanged {kept}"),
    );
}

/// An EERD read of word `addr` (START, then the value once DONE).
fn eerd_read(n: &mut Nic, val: u32) -> u32 {
    n.w(reg::EERD, val);
    let mut v = 0;
    for _ in 0..1000 {
        v = n.r(reg::EERD);
        if v & eerd::DONE != 0 {
            break;
        }
    }
    v
}

/// The 64 words through EERD, or `None` if one did not read.
fn eeprom_words(n: &mut Nic) -> Option<[u16; eeprom::WORDS]> {
    let mut w = [0u16; eeprom::WORDS];
    for (i, word) in w.iter_mut().enumerate() {
        let v = eerd_read(n, eerd::START | (i as u32) << eerd::ADDR_SHIFT);
        if v & eerd::DONE == 0 {
            return None;
        }
        *word = (v >> eerd::DATA_SHIFT) as u16;
    }
    Some(w)
}

/// The Microwire pins as Linux's e1000 drives them (`e1000_shift_out_ee_bits`).
struct Microwire<'a> {
    n: &'a mut Nic,
    v: u32,
}

impl<'a> Microwire<'a> {
    /// Requests the EEPROM and raises CS.
    fn select(n: &'a mut Nic) -> Self {
        let v = (n.r(reg::EECD) | eecd::REQ) & !(eecd::DI | eecd::SK);
        n.w(reg::EECD, v);
        n.w(reg::EECD, v | eecd::CS);
        Self { n, v: v | eecd::CS }
    }

    fn clock(&mut self, di: bool) {
        self.v = if di {
            self.v | eecd::DI
        } else {
            self.v & !eecd::DI
        };
        self.n.w(reg::EECD, self.v | eecd::SK);
        self.n.w(reg::EECD, self.v);
    }

    /// Shifts `bits` bits of `val` out, MSB first.
    fn out(&mut self, val: u32, bits: u32) {
        for b in (0..bits).rev() {
            self.clock(val >> b & 1 != 0);
        }
    }

    /// Shifts 16 bits in.
    fn word(&mut self) -> u16 {
        let mut w = 0u16;
        for _ in 0..16 {
            self.n.w(reg::EECD, self.v | eecd::SK);
            let d = self.n.r(reg::EECD) & eecd::DO != 0;
            self.n.w(reg::EECD, self.v);
            w = w << 1 | u16::from(d);
        }
        w
    }

    /// Drops CS and the request.
    fn release(self) {
        let v = self.v & !(eecd::CS | eecd::DI | eecd::SK | eecd::REQ);
        self.n.w(reg::EECD, v);
    }
}

/// Microwire opcodes (3 bits): WRITE `101`, and `100` with `10` in the address bits
/// for ERAL (erase all).
const MW_WRITE: u32 = 0b101;
const MW_ERAL: u32 = 0b100 << eecd::ADDRESS_BITS | 0b10 << (eecd::ADDRESS_BITS - 2);

/// `count` words from `addr` on by one Microwire READ.
fn microwire_read(n: &mut Nic, addr: u32, out: &mut [u16]) {
    let mut m = Microwire::select(n);
    m.out(
        eecd::OPCODE_READ << eecd::ADDRESS_BITS | addr,
        eecd::OPCODE_BITS + eecd::ADDRESS_BITS,
    );
    for w in out.iter_mut() {
        *w = m.word();
    }
    m.release();
}

/// The EEPROM through EERD and EECD, as QEMU's `flash_eerd_read`/`set_eecd` give it;
/// none of these has a counter of its own (the EEPROM is read-only).
fn eeprom_attacks(t: &mut Tally, n: &mut Nic) {
    let c = Cat::E1000;
    let Some(before) = eeprom_words(n) else {
        t.broken("the e1000's EEPROM", "EERD did not finish");
        return;
    };
    let mac_words = [
        u16::from_le_bytes([n.mac[0], n.mac[1]]),
        u16::from_le_bytes([n.mac[2], n.mac[3]]),
        u16::from_le_bytes([n.mac[4], n.mac[5]]),
    ];
    // Beyond the 64 words: DONE, no data.
    let got: Vec<u32> = [64u32, 128, 255]
        .iter()
        .map(|&a| eerd_read(n, eerd::START | a << eerd::ADDR_SHIFT))
        .collect();
    t.check(
        c,
        "EERD reads of words 64, 128 and 255",
        got.iter()
            .all(|&v| v & eerd::DONE != 0 && v >> eerd::DATA_SHIFT == 0),
        format_args!("{got:#x?}"),
    );
    let v = eerd_read(n, u32::MAX);
    t.check(
        c,
        "EERD with START and every other bit set",
        v == !eerd::START,
        format_args!("{v:#x}"),
    );
    // A WRITE of word 0 and an erase-all, after the write-enable no one sent.
    let mut m = Microwire::select(n);
    m.out(
        MW_WRITE << eecd::ADDRESS_BITS,
        eecd::OPCODE_BITS + eecd::ADDRESS_BITS,
    );
    m.out(0xdead, 16);
    m.release();
    let mut m = Microwire::select(n);
    m.out(MW_ERAL, eecd::OPCODE_BITS + eecd::ADDRESS_BITS);
    m.release();
    let mut w = [0u16; 3];
    microwire_read(n, 0, &mut w);
    t.check(
        c,
        "a Microwire WRITE of word 0 and an ERAL",
        w == mac_words && eeprom_words(n) == Some(before),
        format_args!("words 0-2 {w:#06x?}"),
    );
    // A READ of word 63 run on for two more words: the address wraps to word 0.
    let mut w = [0u16; 3];
    microwire_read(n, 63, &mut w);
    t.check(
        c,
        "a Microwire READ run on past word 63",
        w == [before[63], before[0], before[1]],
        format_args!("{w:#06x?}"),
    );
    // Garbage on the pins.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        n.w(reg::EECD, (seed >> 16) as u32);
    }
    n.w(reg::EECD, 0);
    let after = eeprom_words(n);
    let mut w = [0u16; 3];
    microwire_read(n, 0, &mut w);
    let sum = after.map(|a| a.iter().fold(0u16, |s, &x| s.wrapping_add(x)));
    t.check(
        c,
        "2000 garbage EECD writes",
        after == Some(before)
            && sum == Some(eeprom::SUM)
            && before[..3] == mac_words
            && w == mac_words,
        format_args!("sum {sum:#06x?}, words 0-2 {w:#06x?}"),
    );
}
