//! The Intel 82540EM Gigabit Ethernet controller (8086:100E), as QEMU's
//! `hw/net/e1000.c` models it, on a [`Link`] (a TAP in real runs, [`MemLink`] in tests).
//!
//! Layouts come from `hw_devices::e1000`, shared with the guest's driver. BAR0 is the
//! 128 KiB register file; BAR1 the 64-byte I/O window with IOADDR (+0) and IODATA (+4),
//! the indirect way to the same registers (8254x SDM 13.2.2; see [`E1000::io_read`]).
//! INTA#.
//!
//! What it does, as QEMU does:
//! - EEPROM through EERD (82540EM layout) and EECD Microwire bit-banging (64 words,
//!   MAC in words 0-2, checksum word 0x3F); RAL0/RAH0 hold the MAC after reset; STATUS
//!   reports link up, full duplex, 1000 Mb/s; MDIC reaches the PHY at address 1
//!   (88E1011 ids, link up, auto-negotiation complete; restarting auto-negotiation
//!   completes it at once and raises LSC, where QEMU waits 500 ms).
//! - ICR clears on read (and, as QEMU allows, by writing ones); ICS reads as ICR;
//!   IMS/IMC; the INTx level is `(ICR & IMS) != 0`, with QEMU's interrupt mitigation
//!   (a rising edge opens a window of `max(ITR, TADV*4 if IDE, RADV*4 if RDTR, 500)`
//!   x 256 ns in which further rising edges wait: at most ~7813 interrupts/s).
//!   The command register's INTx-disable keeps the line low.
//! - Transmit runs synchronously on the TDT (or TCTL) write: descriptors from TDH to
//!   TDT, fragments gathered until EOP, legacy and extended data descriptors, a
//!   context descriptor's IP and TCP/UDP checksum insertion (POPTS IXSM/TXSM); DD
//!   written back when RS or RPS is set; TXDW, and TXQE after every walk.
//! - Receive: the [`E1000Worker`] thread moves frames from the link into the
//!   descriptor at RDH while RDH != RDT (a frame larger than the buffer size of RCTL
//!   spreads over several descriptors), DD|EOP|IXSM, RDH advances; RXT0, and RXDMT0
//!   when the free descriptors fall to the RCTL.RDMTS threshold. Frames wait in the
//!   link while there is no descriptor (QEMU's `can_receive`; a RDT write wakes the
//!   worker); a multi-descriptor frame with too few descriptors is dropped with RXO,
//!   MPC and RNBC, as in QEMU. Short frames are padded to 60 bytes. RCTL's unicast
//!   (RAL/RAH), multicast (MTA), broadcast and promiscuous filters apply.
//! - Statistics registers clear on read (a 64-bit pair when its high half is read).
//!
//! Where it differs from QEMU, on purpose:
//! - The I/O window works as the SDM describes it (QEMU's `e1000_io_read/write` are
//!   stubs that read 0 and drop writes; its `e1000e` implements the window as here):
//!   IODATA reaches the register IOADDR names, with the side effects of a BAR0 access.
//! - CTRL.RST resets the MAC registers (QEMU only clears the bit); the PHY stays.
//! - A head index beyond the ring (or an empty ring) is refused without touching
//!   memory (QEMU fetches one descriptor past the ring first); frames arriving while
//!   the receiver is off, the link down or bus mastering disabled are dropped and
//!   counted (QEMU holds them); no DMA at all without bus mastering.
//! - DMA outside RAM fails (QEMU reads zeros and drops writes): a transmit descriptor
//!   that cannot be fetched ends the walk; a frame with a fragment that cannot be read
//!   is dropped. A received frame whose descriptor cannot be fetched is a missed
//!   packet (MPC, RXO), as for a ring without room, so the driver can tell; one whose
//!   buffer cannot be written comes back with RXE (data error) on its descriptors and
//!   counts in RXERRC, not as a good frame.
//! - A transmitted frame shorter than an Ethernet header, or one that asks for a
//!   checksum at offsets outside it (a context descriptor's css/cso/cse), is dropped
//!   and counted (QEMU sends the first, and the second without the checksum).
//! - Transmit frames are limited to 16 KiB (QEMU: 64 KiB); TCP segmentation (TSE),
//!   VLAN insertion/stripping/filtering, PHY loopback and the 1 s receive hold-off
//!   after an RCTL write are not modelled (a TSE frame is dropped and counted).
//!
//! The guest is hostile: every access of any size at any offset is accepted, every
//! DMA goes through [`GuestMemory`]'s checked accessors, and every walk is bounded by
//! the ring size (at most 65528 descriptors per TDT write, per received frame).
//!
//! # Integration
//! ```text
//! let dev = Arc::new(Mutex::new(E1000::new(mac, Box::new(tap), irq, mem)));
//! let worker = E1000Worker::start(dev.clone())?;   // thread "e1000-rx"
//! pci_bus.add(dev.clone() as Arc<Mutex<dyn PciDevice>>);  // BAR0 = region 0, BAR1 = 1
//! ...
//! let stats = worker.stop();   // joins the thread; the model's counters as JSON
//! ```

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hw_devices::e1000::{
    self as hw, DESC_SIZE, RxDesc, TxContextDesc, TxDesc, ctrl, dtyp, eecd, eeprom, eerd, icr,
    mdic, phy, popts, rah, rctl, reg, reg::stat, rx_errors, rx_status, status, tctl, tx_cmd,
    tx_status,
};
use hw_devices::pci::class;
use serde_json::json;
use vm_memory::{Bytes, GuestAddress};

use super::pci::{BarKind, ConfigSpace, PciDevice, PciIds};
use super::{GuestMemory, IrqLine};
use crate::hostio::tap::Link;
#[cfg(doc)]
use crate::hostio::tap::MemLink;

/// Registers in the 128 KiB file (one `u32` each).
const NREGS: usize = (hw::MMIO_SIZE / 4) as usize;
/// Largest transmit frame gathered; longer ones are dropped.
const MAX_TX_FRAME: usize = hw::MAX_FRAME_HW;
/// Largest frame accepted with RCTL.LPE (16 KiB less the FCS).
const MAX_RX_LONG: usize = hw::MAX_FRAME_HW - 4;
/// Largest frame accepted without RCTL.LPE (header, VLAN tag, 1500-byte MTU).
const MAX_RX_SHORT: usize = 14 + 4 + 1500;
/// Minimum Ethernet frame (no FCS): shorter frames are padded.
const MIN_FRAME: usize = 60;
/// An Ethernet header: a transmitted frame shorter than this has no destination.
const ETH_HEADER: usize = 14;
/// Frames the worker delivers per lock hold before letting a vCPU in.
const RX_BATCH: usize = 64;
/// QEMU's minimum mitigation interval, in ITR units (256 ns): 7813 interrupts/s.
const MIT_MIN: u32 = 500;
/// ITR's unit.
const ITR_UNIT_NS: u64 = 256;

/// Wake-up reasons of the worker.
const WAKE_LINK: u32 = 1;
const WAKE_RX: u32 = 2;
const WAKE_TIMER: u32 = 4;

/// The worker's wake-up: reasons, a stop flag, and a condition variable.
#[derive(Default)]
struct Wake {
    state: Mutex<(u32, bool)>,
    cv: Condvar,
}

impl Wake {
    fn lock(&self) -> MutexGuard<'_, (u32, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn raise(&self, reason: u32) {
        self.lock().0 |= reason;
        self.cv.notify_all();
    }

    fn stop(&self) {
        self.lock().1 = true;
        self.cv.notify_all();
    }

    /// Waits for a reason (returned), the deadline (returns 0), or stop (`None`).
    fn wait_until(&self, deadline: Option<Instant>) -> Option<u32> {
        let mut s = self.lock();
        loop {
            if s.1 {
                return None;
            }
            if s.0 != 0 {
                return Some(std::mem::take(&mut s.0));
            }
            match deadline {
                None => s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Some(0);
                    }
                    s = self
                        .cv
                        .wait_timeout(s, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

/// PHY registers the model implements: readable, writable (QEMU's `phy_regcap`).
fn phy_cap(r: u32) -> (bool, bool) {
    match r {
        phy::BMCR | phy::ANAR | phy::CTRL1000 | phy::M88_SPEC_CTRL | phy::M88_EXT_SPEC_CTRL => {
            (true, true)
        }
        phy::BMSR
        | phy::PHYID1
        | phy::PHYID2
        | phy::ANLPAR
        | phy::ANER
        | phy::STAT1000
        | phy::M88_SPEC_STATUS
        | phy::M88_RX_ERR_CNTR => (true, false),
        _ => (false, false),
    }
}

/// PHY registers after reset (QEMU's `phy_reg_init`, auto-negotiation complete).
fn phy_reset() -> [u16; 32] {
    let mut p = [0u16; 32];
    p[phy::BMCR as usize] = phy::BMCR_SPEED1000 | phy::BMCR_FD | phy::BMCR_AUTOEN;
    p[phy::BMSR as usize] = phy::BMSR_UP;
    p[phy::PHYID1 as usize] = phy::ID1;
    p[phy::PHYID2 as usize] = phy::ID2;
    // 10/100 half/full, pause, asymmetric pause, 802.3.
    p[phy::ANAR as usize] = 0x0de1;
    p[phy::ANLPAR as usize] = 0x01e0 | phy::ANLPAR_ACK;
    p[phy::CTRL1000 as usize] = 0x0e00;
    p[phy::STAT1000 as usize] = 0x3c00;
    p[phy::M88_SPEC_CTRL as usize] = 0x0360;
    p[phy::M88_SPEC_STATUS as usize] = 0xac00;
    p[phy::M88_EXT_SPEC_CTRL as usize] = 0x0d60;
    p
}

/// The EEPROM image for `mac` (SDM table 5-2 fields; unused words 0xFFFF).
fn eeprom_image(mac: [u8; 6]) -> [u16; eeprom::WORDS] {
    let mut w = [0xffffu16; eeprom::WORDS];
    for i in eeprom::MAC_WORDS {
        w[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
    }
    w[3] = 0;
    w[eeprom::INIT_CONTROL1] = 0x6403;
    w[eeprom::SUBSYSTEM_ID] = hw::DEVICE_ID;
    w[eeprom::SUBSYSTEM_VENDOR_ID] = hw::VENDOR_ID;
    w[eeprom::DEVICE_ID] = hw::DEVICE_ID;
    w[eeprom::VENDOR_ID] = hw::VENDOR_ID;
    w[eeprom::INIT_CONTROL2] = 0x3040;
    w[eeprom::CHECKSUM] = eeprom::checksum(&w);
    w
}

/// Microwire shift state (QEMU's `eecd_state`).
#[derive(Clone, Copy, Debug, Default)]
struct Microwire {
    val_in: u32,
    bits_in: u32,
    bit_out: u32,
    reading: bool,
    /// SK, CS, DI, FWE, REQ as last written.
    pins: u32,
}

/// The checksum context of a context descriptor.
#[derive(Clone, Copy, Debug, Default)]
struct TxContext {
    ipcss: usize,
    ipcso: usize,
    ipcse: usize,
    tucss: usize,
    tucso: usize,
    tucse: usize,
}

/// A frame being gathered from transmit descriptors.
#[derive(Default)]
struct TxFrame {
    data: Vec<u8>,
    /// POPTS of the frame's first data descriptor.
    sum_needed: u8,
    tso: bool,
    oversize: bool,
    dma_failed: bool,
}

/// What happened to a frame from the link.
enum RxOutcome {
    Delivered,
    Dropped,
    /// No descriptor: keep the frame until the guest posts one.
    NoBuffers,
}

/// The model's counters (see [`E1000::stats`]).
#[derive(Default)]
struct Counters {
    mmio_reads: u64,
    mmio_writes: u64,
    io_reads: u64,
    io_writes: u64,
    reads: Vec<u64>,
    writes: Vec<u64>,
    tdt_writes: u64,
    rdt_writes: u64,
    tx_frames: u64,
    tx_bytes: u64,
    tx_descs: u64,
    rx_frames: u64,
    rx_bytes: u64,
    rx_descs: u64,
    irq_raised: u64,
    icr_reads: u64,
    mit_deferred: u64,
    mit_fires: u64,
    rx_stalls: u64,
    resets: u64,
    dma_read_bytes: u64,
    dma_write_bytes: u64,
    drop_rx_disabled: u64,
    drop_rx_no_bus_master: u64,
    drop_rx_filtered: u64,
    drop_rx_oversize: u64,
    drop_rx_overrun: u64,
    drop_rx_bad_ring: u64,
    drop_rx_dma: u64,
    drop_tx_link: u64,
    drop_tx_oversize: u64,
    drop_tx_tso: u64,
    drop_tx_dma: u64,
    drop_tx_runt: u64,
    drop_tx_bad_checksum: u64,
    drop_rx_buffer_dma: u64,
    err_dma_read: u64,
    err_dma_write: u64,
    err_bad_access: u64,
    err_unknown_register: u64,
    err_tx_bad_ring: u64,
    err_tx_ring_dma: u64,
    err_tx_wrap: u64,
    err_tx_no_bus_master: u64,
    err_rx_null_desc: u64,
    err_mdic: u64,
    err_link_recv: u64,
    err_io_bad_access: u64,
    err_io_bad_address: u64,
}

/// Names of the registers counted one by one; the rest go by table or "other".
const REG_NAMES: [&str; 33] = [
    "CTRL", "STATUS", "EECD", "EERD", "CTRL_EXT", "MDIC", "ICR", "ITR", "ICS", "IMS", "IMC",
    "RCTL", "TCTL", "TIPG", "RDBAL", "RDBAH", "RDLEN", "RDH", "RDT", "RDTR", "RADV", "TDBAL",
    "TDBAH", "TDLEN", "TDH", "TDT", "TIDV", "TADV", "RA", "MTA", "VFTA", "STATS", "other",
];

fn reg_slot(off: u32) -> usize {
    match off {
        reg::CTRL => 0,
        reg::STATUS => 1,
        reg::EECD => 2,
        reg::EERD => 3,
        reg::CTRL_EXT => 4,
        reg::MDIC => 5,
        reg::ICR => 6,
        reg::ITR => 7,
        reg::ICS => 8,
        reg::IMS => 9,
        reg::IMC => 10,
        reg::RCTL => 11,
        reg::TCTL => 12,
        reg::TIPG => 13,
        reg::RDBAL => 14,
        reg::RDBAH => 15,
        reg::RDLEN => 16,
        reg::RDH => 17,
        reg::RDT => 18,
        reg::RDTR => 19,
        reg::RADV => 20,
        reg::TDBAL => 21,
        reg::TDBAH => 22,
        reg::TDLEN => 23,
        reg::TDH => 24,
        reg::TDT => 25,
        reg::TIDV => 26,
        reg::TADV => 27,
        o if in_table(o, reg::RA, reg::RA_ENTRIES * 2) => 28,
        o if in_table(o, reg::MTA, reg::MTA_LEN) => 29,
        o if in_table(o, reg::VFTA, 128) => 30,
        stat::FIRST..=stat::LAST => 31,
        _ => 32,
    }
}

fn in_table(off: u32, base: u32, entries: u32) -> bool {
    (base..base + 4 * entries).contains(&off)
}

/// Registers that hold what the guest writes (no side effect).
fn plain_register(off: u32) -> bool {
    matches!(
        off,
        reg::EERD
            | reg::CTRL_EXT
            | reg::FCAL
            | reg::FCAH
            | reg::FCT
            | reg::VET
            | reg::FCTTV
            | reg::TXCW
            | reg::TIPG
            | reg::LEDCTL
            | reg::PBA
            | reg::RDBAL
            | reg::RDBAH
            | reg::RXDCTL
            | reg::TDBAL
            | reg::TDBAH
            | reg::TXDCTL
            | reg::RXCSUM
            | reg::WUC
            | reg::WUFC
            | reg::MANC
    ) || in_table(off, reg::RA, reg::RA_ENTRIES * 2)
        || in_table(off, reg::MTA, reg::MTA_LEN)
        || in_table(off, reg::VFTA, 128)
}

/// The 82540EM model.
pub struct E1000 {
    config: ConfigSpace,
    regs: Vec<u32>,
    phy: [u16; 32],
    eeprom: [u16; eeprom::WORDS],
    microwire: Microwire,
    mac: [u8; 6],
    link: Box<dyn Link>,
    link_up: bool,
    irq: Arc<dyn IrqLine>,
    mem: GuestMemory,
    ctx: TxContext,
    tx: TxFrame,
    /// Interrupt mitigation on (QEMU's default `mitigation=on`).
    mitigation: bool,
    mit_timer: Option<Instant>,
    mit_irq_level: bool,
    mit_ide: bool,
    /// The level driven on `irq`.
    line: bool,
    rx_pending: Option<Vec<u8>>,
    rx_buf: Vec<u8>,
    waiting_for_buffers: bool,
    wake: Arc<Wake>,
    /// IOADDR of the I/O window: the register offset IODATA reaches. Not a MAC
    /// register: CTRL.RST leaves it.
    ioaddr: u32,
    c: Counters,
}

impl E1000 {
    /// A device with Ethernet address `mac` on `link`, interrupting through `irq`,
    /// reaching guest RAM `mem` by DMA. Interrupt mitigation is on, as in QEMU.
    pub fn new(mac: [u8; 6], link: Box<dyn Link>, irq: Arc<dyn IrqLine>, mem: GuestMemory) -> Self {
        let mut config = ConfigSpace::new(PciIds {
            vendor: hw::VENDOR_ID,
            device: hw::DEVICE_ID,
            revision: hw::REVISION,
            class: class::NETWORK,
            subclass: 0,
            prog_if: 0,
            subsystem_vendor: hw::SUBSYSTEM_VENDOR_ID,
            subsystem: hw::SUBSYSTEM_ID,
        });
        config.add_bar(0, BarKind::Memory32, hw::MMIO_SIZE);
        config.add_bar(1, BarKind::Io, hw::IO_SIZE);
        config.set_interrupt_pin(1);
        let mut d = Self {
            config,
            regs: vec![0; NREGS],
            phy: phy_reset(),
            eeprom: eeprom_image(mac),
            microwire: Microwire::default(),
            mac,
            link,
            link_up: true,
            irq,
            mem,
            ctx: TxContext::default(),
            tx: TxFrame::default(),
            mitigation: true,
            mit_timer: None,
            mit_irq_level: false,
            mit_ide: false,
            line: false,
            rx_pending: None,
            rx_buf: Vec::new(),
            waiting_for_buffers: false,
            wake: Arc::new(Wake::default()),
            ioaddr: 0,
            c: Counters {
                reads: vec![0; REG_NAMES.len()],
                writes: vec![0; REG_NAMES.len()],
                ..Counters::default()
            },
        };
        // The registers are fresh zeros: zeroing them again (reset) would only write
        // 128 KiB for nothing.
        d.power_on();
        d
    }

    /// Turns QEMU's interrupt mitigation on or off (QEMU's `mitigation` property).
    pub fn set_mitigation(&mut self, on: bool) {
        self.mitigation = on;
        if !on {
            self.mit_timer = None;
        }
    }

    /// The Ethernet address (EEPROM words 0-2).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sets the link state (as QEMU's `set_link`): STATUS.LU, the PHY's status, LSC.
    pub fn set_link_up(&mut self, up: bool) {
        if up == self.link_up {
            return;
        }
        self.link_up = up;
        self.apply_link();
        self.set_ics(icr::LSC);
        self.kick_rx();
    }

    fn apply_link(&mut self) {
        let s = &mut self.regs[idx(reg::STATUS)];
        let b = &mut self.phy[phy::BMSR as usize];
        if self.link_up {
            *s |= status::LU;
            *b |= phy::BMSR_LINK_ST | phy::BMSR_AN_COMP;
        } else {
            *s &= !status::LU;
            *b &= !(phy::BMSR_LINK_ST | phy::BMSR_AN_COMP);
        }
    }

    /// Power-on / CTRL.RST state of the MAC registers (QEMU's `mac_reg_init`); the
    /// PHY, EEPROM and link are kept.
    fn reset(&mut self) {
        self.regs.fill(0);
        self.power_on();
    }

    /// [`Self::reset`] on registers that are all zero already.
    fn power_on(&mut self) {
        self.regs[idx(reg::PBA)] = 0x0010_0030;
        self.regs[idx(reg::LEDCTL)] = 0x602;
        self.regs[idx(reg::CTRL)] = ctrl::SWDPIN2 | ctrl::SWDPIN0 | ctrl::SPD_1000 | ctrl::SLU;
        self.regs[idx(reg::STATUS)] = 0x8000_0000
            | status::GIO_MASTER_ENABLE
            | status::ASDV
            | status::MTXCKOK
            | status::SPEED_1000
            | status::FD
            | status::LU;
        // EN_MNG2HOST | RCV_TCO_EN | ARP_EN | 0298_EN | RMCP_EN.
        self.regs[idx(reg::MANC)] = 0x0022_2300;
        self.regs[idx(reg::VET)] = 0x8100;
        let m = self.mac;
        self.regs[idx(reg::RAL0)] = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        self.regs[idx(reg::RAH0)] = u32::from(u16::from_le_bytes([m[4], m[5]])) | rah::AV;
        self.apply_link();
        self.microwire = Microwire::default();
        self.ctx = TxContext::default();
        self.tx = TxFrame::default();
        self.mit_timer = None;
        self.mit_irq_level = false;
        self.mit_ide = false;
        self.update_line();
        self.kick_rx();
    }

    // ---- interrupts -------------------------------------------------------------

    /// QEMU's `set_interrupt_cause`: ICR (and its ICS mirror) become `val`; the line
    /// follows `ICR & IMS`, a rising edge inside a mitigation window waits for it.
    fn set_interrupt_cause(&mut self, val: u32) {
        self.regs[idx(reg::ICR)] = val;
        self.regs[idx(reg::ICS)] = val;
        let pending = self.regs[idx(reg::IMS)] & val;
        if !self.mit_irq_level && pending != 0 {
            if self.mit_timer.is_some() {
                self.c.mit_deferred += 1;
                return;
            }
            if self.mitigation {
                let mut delay = 0u32;
                let mut upd = |v: u32| {
                    if v != 0 && (delay == 0 || v < delay) {
                        delay = v;
                    }
                };
                if self.mit_ide && pending & (icr::TXQE | icr::TXDW) != 0 {
                    upd(self.regs[idx(reg::TADV)] * 4);
                }
                if self.regs[idx(reg::RDTR)] != 0 && pending & icr::RXT0 != 0 {
                    upd(self.regs[idx(reg::RADV)] * 4);
                }
                upd(self.regs[idx(reg::ITR)]);
                let delay = delay.max(MIT_MIN);
                self.mit_timer =
                    Some(Instant::now() + Duration::from_nanos(u64::from(delay) * ITR_UNIT_NS));
                self.mit_ide = false;
                self.wake.raise(WAKE_TIMER);
            }
        }
        self.mit_irq_level = pending != 0;
        self.update_line();
    }

    fn set_ics(&mut self, bits: u32) {
        self.set_interrupt_cause(self.regs[idx(reg::ICR)] | bits);
    }

    /// Drives the INTx line: the status bit follows the condition, the line also
    /// honours the command register's INTx disable.
    fn update_line(&mut self) {
        self.config.set_interrupt_status(self.mit_irq_level);
        let level = self.mit_irq_level && !self.config.intx_disabled();
        if level != self.line {
            self.line = level;
            if level {
                self.c.irq_raised += 1;
            }
            self.irq.set_level(level);
        }
    }

    /// Runs the mitigation timer if it is due at `now`; returns the next deadline.
    /// The worker calls this; tests may call it with a time of their choosing.
    pub fn poll_timers(&mut self, now: Instant) -> Option<Instant> {
        if let Some(t) = self.mit_timer
            && now >= t
        {
            self.mit_timer = None;
            self.c.mit_fires += 1;
            self.set_interrupt_cause(self.regs[idx(reg::ICR)]);
        }
        self.mit_timer
    }

    // ---- registers --------------------------------------------------------------

    fn read_reg(&mut self, off: u32) -> u32 {
        self.c.reads[reg_slot(off)] += 1;
        match off {
            reg::ICR => {
                self.c.icr_reads += 1;
                let v = self.regs[idx(reg::ICR)];
                self.set_interrupt_cause(0);
                v
            }
            reg::EECD => self.get_eecd(),
            reg::EERD => self.eerd_read(),
            stat::GORCH | stat::GOTCH | stat::TORH | stat::TOTH => {
                let v = self.regs[idx(off)];
                self.regs[idx(off)] = 0;
                self.regs[idx(off - 4)] = 0;
                v
            }
            stat::GORCL | stat::GOTCL | stat::TORL | stat::TOTL => self.regs[idx(off)],
            stat::FIRST..=stat::LAST => std::mem::take(&mut self.regs[idx(off)]),
            _ => self.regs[idx(off)],
        }
    }

    fn write_reg(&mut self, off: u32, val: u32) {
        self.c.writes[reg_slot(off)] += 1;
        let i = idx(off);
        match off {
            reg::CTRL => {
                if val & ctrl::RST != 0 {
                    self.c.resets += 1;
                    self.reset();
                } else {
                    self.regs[i] = val & !(ctrl::RST | ctrl::PHY_RST);
                }
            }
            reg::EECD => self.set_eecd(val),
            reg::MDIC => self.set_mdic(val),
            reg::ICR => self.set_interrupt_cause(self.regs[i] & !val),
            reg::ICS => self.set_ics(val),
            reg::IMS => {
                self.regs[i] |= val;
                self.set_ics(0);
            }
            reg::IMC => {
                self.regs[idx(reg::IMS)] &= !val;
                self.set_ics(0);
            }
            reg::ITR | reg::RDTR | reg::RADV | reg::TADV | reg::TIDV | reg::RDH | reg::TDH => {
                self.regs[i] = val & 0xffff;
            }
            reg::RDLEN | reg::TDLEN => self.regs[i] = val & hw::DLEN_MASK,
            reg::RCTL => {
                self.regs[i] = val;
                self.kick_rx();
            }
            reg::TCTL => {
                self.regs[i] = val;
                self.start_xmit();
            }
            reg::TDT => {
                self.c.tdt_writes += 1;
                self.regs[i] = val & 0xffff;
                self.start_xmit();
            }
            reg::RDT => {
                self.c.rdt_writes += 1;
                self.regs[i] = val & 0xffff;
                if self.has_rxbufs(1) {
                    self.kick_rx();
                }
            }
            o if plain_register(o) => self.regs[i] = val,
            _ => self.c.err_unknown_register += 1,
        }
    }

    fn get_eecd(&self) -> u32 {
        let m = &self.microwire;
        let mut v = eecd::PRES | eecd::GNT | m.pins;
        let word = self.eeprom[((m.bit_out >> 4) & 0x3f) as usize];
        if !m.reading || (word >> ((m.bit_out & 0xf) ^ 0xf)) & 1 != 0 {
            v |= eecd::DO;
        }
        v
    }

    /// Microwire, as the EEPROM sees the pins: on CS rising the state resets; DI is
    /// sampled on SK rising edges; after 3 opcode + 6 address bits of a READ, data bits
    /// come out MSB first, one per SK falling edge, running on into the next words.
    fn set_eecd(&mut self, val: u32) {
        let m = &mut self.microwire;
        let old = m.pins;
        m.pins = val & (eecd::SK | eecd::CS | eecd::DI | eecd::FWE_MASK | eecd::REQ);
        if val & eecd::CS == 0 {
            return;
        }
        if (val ^ old) & eecd::CS != 0 {
            *m = Microwire {
                pins: m.pins,
                ..Microwire::default()
            };
        }
        if (val ^ old) & eecd::SK == 0 {
            return;
        }
        if val & eecd::SK == 0 {
            m.bit_out = m.bit_out.wrapping_add(1);
            return;
        }
        m.val_in = (m.val_in << 1) | u32::from(val & eecd::DI != 0);
        m.bits_in = m.bits_in.saturating_add(1);
        if m.bits_in == eecd::OPCODE_BITS + eecd::ADDRESS_BITS && !m.reading {
            m.bit_out = ((m.val_in & 0x3f) << 4).wrapping_sub(1);
            m.reading = (m.val_in >> eecd::ADDRESS_BITS) & 7 == eecd::OPCODE_READ;
        }
    }

    fn eerd_read(&self) -> u32 {
        let v = self.regs[idx(reg::EERD)];
        if v & eerd::START == 0 {
            return v;
        }
        let r = v & !eerd::START;
        let addr = (r >> eerd::ADDR_SHIFT) as usize;
        match self.eeprom.get(addr) {
            Some(&w) => (u32::from(w) << eerd::DATA_SHIFT) | eerd::DONE | r,
            None => eerd::DONE | r,
        }
    }

    fn set_mdic(&mut self, mut val: u32) {
        let data = (val & mdic::DATA_MASK) as u16;
        let r = (val & mdic::REG_MASK) >> mdic::REG_SHIFT;
        let (can_read, can_write) = phy_cap(r);
        if (val & mdic::PHY_MASK) >> mdic::PHY_SHIFT != mdic::PHY_ADDR {
            val = self.regs[idx(reg::MDIC)] | mdic::ERROR;
            self.c.err_mdic += 1;
        } else if val & mdic::OP_READ != 0 {
            if can_read {
                val = (val & !mdic::DATA_MASK) | u32::from(self.phy[r as usize]);
            } else {
                val |= mdic::ERROR;
                self.c.err_mdic += 1;
            }
        } else if val & mdic::OP_WRITE != 0 {
            if !can_write {
                val |= mdic::ERROR;
                self.c.err_mdic += 1;
            } else if r == phy::BMCR {
                self.phy[r as usize] = data & !(0x3f | phy::BMCR_RESET | phy::BMCR_ANRESTART);
                if data & phy::BMCR_AUTOEN != 0 && data & phy::BMCR_ANRESTART != 0 && self.link_up {
                    // Auto-negotiation completes at once (QEMU: after 500 ms).
                    self.phy[phy::BMSR as usize] |= phy::BMSR_AN_COMP;
                    self.set_ics(icr::LSC);
                }
            } else {
                self.phy[r as usize] = data;
            }
        }
        self.regs[idx(reg::MDIC)] = val | mdic::READY;
        if val & mdic::INT_EN != 0 {
            self.set_ics(icr::MDAC);
        }
    }

    // ---- statistics registers -----------------------------------------------------

    fn inc(&mut self, r: u32) {
        let v = &mut self.regs[idx(r)];
        *v = v.saturating_add(1);
    }

    fn grow8(&mut self, lo: u32, n: usize) {
        let sum = u64::from(self.regs[idx(lo)]) | u64::from(self.regs[idx(lo + 4)]) << 32;
        let sum = sum.saturating_add(n as u64);
        self.regs[idx(lo)] = sum as u32;
        self.regs[idx(lo + 4)] = (sum >> 32) as u32;
    }

    fn size_stat(&mut self, base64: u32, size: usize) {
        let slot = match size {
            1024.. => 5,
            512.. => 4,
            256.. => 3,
            128.. => 2,
            65.. => 1,
            64 => 0,
            _ => return,
        };
        self.inc(base64 + 4 * slot);
    }

    // ---- DMA ----------------------------------------------------------------------

    fn dma_read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        match self.mem.read_slice(buf, GuestAddress(addr)) {
            Ok(()) => {
                self.c.dma_read_bytes += buf.len() as u64;
                true
            }
            Err(_) => {
                self.c.err_dma_read += 1;
                false
            }
        }
    }

    fn dma_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.mem.write_slice(data, GuestAddress(addr)) {
            Ok(()) => {
                self.c.dma_write_bytes += data.len() as u64;
                true
            }
            Err(_) => {
                self.c.err_dma_write += 1;
                false
            }
        }
    }

    fn ring_base(&self, bal: u32, bah: u32) -> u64 {
        u64::from(self.regs[idx(bah)]) << 32 | u64::from(self.regs[idx(bal)] & !0xf)
    }

    /// The address of descriptor `head` of a ring at `base`; `None` when the
    /// descriptor would run past the end of the address space (a guest's ring base
    /// near 2^64 must not wrap around to low RAM).
    fn desc_address(base: u64, head: usize) -> Option<u64> {
        let at = base.checked_add((head * DESC_SIZE) as u64)?;
        at.checked_add(DESC_SIZE as u64).map(|_| at)
    }

    // ---- transmit -----------------------------------------------------------------

    /// Walks the transmit ring from TDH to TDT (QEMU's `start_xmit`).
    fn start_xmit(&mut self) {
        if self.regs[idx(reg::TCTL)] & tctl::EN == 0 {
            return;
        }
        if !self.config.bus_master() {
            self.c.err_tx_no_bus_master += 1;
            return;
        }
        let count = self.regs[idx(reg::TDLEN)] as usize / DESC_SIZE;
        let start = self.regs[idx(reg::TDH)] as usize;
        let base = self.ring_base(reg::TDBAL, reg::TDBAH);
        let mut cause = icr::TXQE;
        if start >= count {
            if start != self.regs[idx(reg::TDT)] as usize {
                self.c.err_tx_bad_ring += 1;
            }
        } else {
            let mut head = start;
            while head != self.regs[idx(reg::TDT)] as usize {
                let Some(at) = Self::desc_address(base, head) else {
                    self.c.err_tx_bad_ring += 1;
                    break;
                };
                let mut b = [0u8; DESC_SIZE];
                if !self.dma_read(at, &mut b) {
                    self.c.err_tx_ring_dma += 1;
                    break;
                }
                let d = TxDesc::from_bytes(&b);
                self.process_tx_desc(&d, &b);
                if d.cmd & (tx_cmd::RS | tx_cmd::RPS) != 0 {
                    let st = (d.status | tx_status::DD)
                        & !(tx_status::EC | tx_status::LC | tx_status::TU);
                    self.dma_write(at + TxDesc::STATUS as u64, &[st]);
                    cause |= icr::TXDW;
                }
                self.c.tx_descs += 1;
                head = (head + 1) % count;
                self.regs[idx(reg::TDH)] = head as u32;
                if head == start {
                    // TDT outside the ring: one full lap, as QEMU stops.
                    self.c.err_tx_wrap += 1;
                    break;
                }
            }
        }
        self.set_ics(cause);
    }

    fn process_tx_desc(&mut self, d: &TxDesc, raw: &[u8; DESC_SIZE]) {
        if d.cmd & tx_cmd::IDE != 0 {
            self.mit_ide = true;
        }
        if d.cmd & tx_cmd::DEXT != 0 {
            match d.dtyp() {
                dtyp::CONTEXT => {
                    let c = TxContextDesc::from_bytes(raw);
                    // A TSE context only matters to segmentation, which is not modelled.
                    if (c.cmd_and_length >> 24) as u8 & tx_cmd::TSE == 0 {
                        self.ctx = TxContext {
                            ipcss: c.ipcss.into(),
                            ipcso: c.ipcso.into(),
                            ipcse: c.ipcse.into(),
                            tucss: c.tucss.into(),
                            tucso: c.tucso.into(),
                            tucse: c.tucse.into(),
                        };
                    }
                    return;
                }
                dtyp::DATA => {
                    if self.tx.data.is_empty() {
                        self.tx.sum_needed = d.css;
                    }
                    if d.cmd & tx_cmd::TSE != 0 {
                        self.tx.tso = true;
                    }
                }
                _ => {}
            }
        }
        let len = usize::from(d.length);
        let room = MAX_TX_FRAME - self.tx.data.len();
        if len > room {
            self.tx.oversize = true;
        }
        let n = len.min(room);
        if n > 0 {
            let at = self.tx.data.len();
            self.tx.data.resize(at + n, 0);
            let mut part = std::mem::take(&mut self.tx.data);
            if !self.dma_read(d.addr, &mut part[at..]) {
                self.tx.dma_failed = true;
            }
            self.tx.data = part;
        }
        if d.cmd & tx_cmd::EOP != 0 {
            let mut f = std::mem::take(&mut self.tx);
            if f.tso {
                self.c.drop_tx_tso += 1;
            } else if f.oversize {
                self.c.drop_tx_oversize += 1;
            } else if f.dma_failed {
                self.c.drop_tx_dma += 1;
            } else if f.data.len() < ETH_HEADER {
                self.c.drop_tx_runt += 1;
            } else {
                let c = self.ctx;
                let sums_fit = (f.sum_needed & popts::TXSM == 0
                    || put_checksum(&mut f.data, c.tucso, c.tucss, c.tucse))
                    && (f.sum_needed & popts::IXSM == 0
                        || put_checksum(&mut f.data, c.ipcso, c.ipcss, c.ipcse));
                if sums_fit {
                    self.send(&f.data);
                } else {
                    self.c.drop_tx_bad_checksum += 1;
                }
            }
            // Keep the allocation for the next frame.
            f.data.clear();
            self.tx.data = f.data;
        }
    }

    fn send(&mut self, frame: &[u8]) {
        if self.link.send_frame(frame).is_err() {
            self.c.drop_tx_link += 1;
        }
        self.c.tx_frames += 1;
        self.c.tx_bytes += frame.len() as u64;
        if is_broadcast(frame) {
            self.inc(stat::BPTC);
        } else if is_multicast(frame) {
            self.inc(stat::MPTC);
        }
        self.size_stat(stat::PTC64, frame.len() + 4);
        self.inc(stat::TPT);
        self.inc(stat::GPTC);
        self.grow8(stat::TOTL, frame.len() + 4);
        self.grow8(stat::GOTCL, frame.len() + 4);
    }

    // ---- receive ------------------------------------------------------------------

    fn rx_count(&self) -> usize {
        self.regs[idx(reg::RDLEN)] as usize / DESC_SIZE
    }

    fn rx_buffer_size(&self) -> usize {
        rctl::buffer_size(self.regs[idx(reg::RCTL)])
    }

    /// Whether descriptors RDH..RDT hold `total` bytes (QEMU's `e1000_has_rxbufs`).
    fn has_rxbufs(&self, total: usize) -> bool {
        let (h, t) = (
            self.regs[idx(reg::RDH)] as usize,
            self.regs[idx(reg::RDT)] as usize,
        );
        if total <= self.rx_buffer_size() {
            return h != t;
        }
        let bufs = if h < t {
            t - h
        } else if h > t {
            (self.rx_count() + t).saturating_sub(h)
        } else {
            0
        };
        total <= bufs * self.rx_buffer_size()
    }

    /// Wakes the worker if a frame waits for buffers (after RDT, RCTL, reset, ...).
    fn kick_rx(&mut self) {
        if self.waiting_for_buffers {
            self.waiting_for_buffers = false;
            self.wake.raise(WAKE_RX);
        }
    }

    fn overrun(&mut self) {
        self.c.drop_rx_overrun += 1;
        self.inc(stat::RNBC);
        self.missed();
    }

    /// A frame lost for want of a usable descriptor: a missed packet (MPC) and a
    /// receiver overrun interrupt (RXO), what the driver sees of a ring without room.
    fn missed(&mut self) {
        self.inc(stat::MPC);
        self.set_ics(icr::RXO);
    }

    /// RCTL's address filters (QEMU's `e1000x_rx_group_filter`).
    fn accept(&self, frame: &[u8]) -> bool {
        let rctl = self.regs[idx(reg::RCTL)];
        let dst = &frame[..6];
        if is_broadcast(frame) {
            if rctl & rctl::BAM != 0 {
                return true;
            }
        } else if is_multicast(frame) {
            if rctl & rctl::MPE != 0 {
                return true;
            }
        } else if rctl & rctl::UPE != 0 {
            return true;
        }
        for e in 0..reg::RA_ENTRIES {
            let lo = self.regs[idx(reg::RA + 8 * e)];
            let hi = self.regs[idx(reg::RA + 8 * e + 4)];
            if hi & rah::AV == 0 {
                continue;
            }
            let mut a = [0u8; 6];
            a[..4].copy_from_slice(&lo.to_le_bytes());
            a[4..].copy_from_slice(&hi.to_le_bytes()[..2]);
            if a == dst {
                return true;
            }
        }
        let shift = [4, 3, 2, 0][((rctl >> rctl::MO_SHIFT) & 3) as usize];
        let f = ((u32::from(dst[5]) << 8 | u32::from(dst[4])) >> shift) & 0xfff;
        self.regs[idx(reg::MTA + 4 * (f >> 5))] & (1 << (f & 0x1f)) != 0
    }

    /// Delivers one frame from the link (QEMU's `e1000_receive_iov`).
    fn receive_frame(&mut self, frame: &[u8]) -> RxOutcome {
        if self.regs[idx(reg::STATUS)] & status::LU == 0
            || self.regs[idx(reg::RCTL)] & rctl::EN == 0
        {
            self.c.drop_rx_disabled += 1;
            return RxOutcome::Dropped;
        }
        if !self.config.bus_master() {
            self.c.drop_rx_no_bus_master += 1;
            return RxOutcome::Dropped;
        }
        let mut padded = [0u8; MIN_FRAME];
        let frame = if frame.len() < MIN_FRAME {
            padded[..frame.len()].copy_from_slice(frame);
            &padded[..]
        } else {
            frame
        };
        let size = frame.len();
        let rctl = self.regs[idx(reg::RCTL)];
        if (size > MAX_RX_LONG || (size > MAX_RX_SHORT && rctl & rctl::LPE == 0))
            && rctl & rctl::SBP == 0
        {
            self.inc(stat::ROC);
            self.c.drop_rx_oversize += 1;
            return RxOutcome::Dropped;
        }
        if !self.accept(frame) {
            self.c.drop_rx_filtered += 1;
            return RxOutcome::Dropped;
        }
        let count = self.rx_count();
        let start = self.regs[idx(reg::RDH)] as usize;
        if start >= count {
            // No usable ring: the guest sees a receiver overrun.
            self.c.drop_rx_bad_ring += 1;
            self.missed();
            return RxOutcome::Dropped;
        }
        let fcs = if rctl & rctl::SECRC != 0 { 0 } else { 4 };
        let total = size + fcs;
        if !self.has_rxbufs(total) {
            if start == self.regs[idx(reg::RDT)] as usize {
                return RxOutcome::NoBuffers;
            }
            self.overrun();
            return RxOutcome::Dropped;
        }
        let bufsize = self.rx_buffer_size();
        let base = self.ring_base(reg::RDBAL, reg::RDBAH);
        let mut head = start;
        let mut offset = 0;
        // RXE once a buffer could not be written: on that descriptor and the rest of
        // the frame's, so the one with EOP says the frame is bad.
        let mut frame_error = 0;
        loop {
            let Some(at) = Self::desc_address(base, head) else {
                self.c.drop_rx_bad_ring += 1;
                self.missed();
                return RxOutcome::Dropped;
            };
            let mut b = [0u8; DESC_SIZE];
            if !self.dma_read(at, &mut b) {
                self.c.drop_rx_dma += 1;
                self.missed();
                return RxOutcome::Dropped;
            }
            let mut d = RxDesc::from_bytes(&b);
            let desc_size = (total - offset).min(bufsize);
            d.special = 0;
            d.status &= !rx_status::DD;
            if d.addr != 0 {
                if offset < size {
                    let n = (size - offset).min(bufsize);
                    if !self.dma_write(d.addr, &frame[offset..offset + n]) {
                        frame_error = rx_errors::RXE;
                    }
                }
                offset += desc_size;
                d.length = desc_size as u16;
                if offset >= total {
                    d.status |= rx_status::EOP | rx_status::IXSM;
                } else {
                    d.status &= !rx_status::EOP;
                }
            } else {
                self.c.err_rx_null_desc += 1;
            }
            // The errors byte is written whole, as the hardware writes back: a stale RXE
            // from an earlier use of the slot would make the driver drop a good frame.
            d.errors = frame_error;
            // Everything but DD first, then DD: the driver reads DD, then the rest.
            let wb = d.to_bytes();
            self.dma_write(at + 8, &wb[8..]);
            self.dma_write(at + RxDesc::STATUS as u64, &[d.status | rx_status::DD]);
            self.c.rx_descs += 1;
            head = (head + 1) % count;
            self.regs[idx(reg::RDH)] = head as u32;
            if head == start {
                self.overrun();
                return RxOutcome::Dropped;
            }
            if offset >= total {
                break;
            }
        }
        if frame_error != 0 {
            // The descriptors are the driver's again (DD): tell it to look.
            self.c.drop_rx_buffer_dma += 1;
            self.inc(stat::RXERRC);
            self.set_ics(icr::RXT0);
            return RxOutcome::Dropped;
        }
        self.c.rx_frames += 1;
        self.c.rx_bytes += size as u64;
        self.size_stat(stat::PRC64, total);
        self.inc(stat::TPR);
        self.inc(stat::GPRC);
        self.grow8(stat::TORL, size + 4);
        self.grow8(stat::GORCL, size + 4);
        if is_broadcast(frame) {
            self.inc(stat::BPRC);
        } else if is_multicast(frame) {
            self.inc(stat::MPRC);
        }
        let mut cause = icr::RXT0;
        let mut t = self.regs[idx(reg::RDT)] as usize;
        if t < head {
            t += count;
        }
        let min_shift = ((rctl >> rctl::RDMTS_SHIFT) & 3) + 1;
        if (t - head) * DESC_SIZE <= (self.regs[idx(reg::RDLEN)] >> min_shift) as usize {
            cause |= icr::RXDMT0;
        }
        self.set_ics(cause);
        RxOutcome::Delivered
    }

    /// Moves frames from the link into posted descriptors: up to a batch, until the
    /// link is empty (then re-arms it) or no descriptor is free (then waits for a
    /// RDT write). The worker calls this with the model locked; tests may too.
    /// Returns the number of frames taken from the link.
    pub fn pump_rx(&mut self) -> usize {
        let mut n = 0;
        loop {
            if n == RX_BATCH {
                // Let the vCPU in; the worker comes back at once.
                self.wake.raise(WAKE_RX);
                return n;
            }
            let frame = match self.rx_pending.take() {
                Some(f) => f,
                None => {
                    let mut buf = std::mem::take(&mut self.rx_buf);
                    match self.link.recv_frame(&mut buf) {
                        Ok(Some(_)) => buf,
                        res => {
                            if res.is_err() {
                                self.c.err_link_recv += 1;
                            }
                            self.rx_buf = buf;
                            let w = self.wake.clone();
                            self.link.arm(Arc::new(move || w.raise(WAKE_LINK)));
                            return n;
                        }
                    }
                }
            };
            match self.receive_frame(&frame) {
                RxOutcome::NoBuffers => {
                    self.rx_pending = Some(frame);
                    self.waiting_for_buffers = true;
                    self.c.rx_stalls += 1;
                    return n;
                }
                RxOutcome::Delivered | RxOutcome::Dropped => {
                    n += 1;
                    self.rx_buf = frame;
                }
            }
        }
    }

    // ---- BAR accesses -------------------------------------------------------------

    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        self.c.mmio_reads += 1;
        let ok = offset < hw::MMIO_SIZE && offset.checked_add(data.len() as u64).is_some();
        match data.len() {
            4 if ok && offset.is_multiple_of(4) => {
                let v = self.read_reg(offset as u32);
                data.copy_from_slice(&v.to_le_bytes());
            }
            8 if ok && offset.is_multiple_of(8) => {
                let lo = self.read_reg(offset as u32);
                let hi = self.read_reg(offset as u32 + 4);
                data[..4].copy_from_slice(&lo.to_le_bytes());
                data[4..].copy_from_slice(&hi.to_le_bytes());
            }
            1 | 2 if ok && (offset % 4) as usize + data.len() <= 4 => {
                // A narrow read sees (and has the side effects of) its dword.
                let v = self.read_reg((offset & !3) as u32).to_le_bytes();
                let s = (offset % 4) as usize;
                data.copy_from_slice(&v[s..s + data.len()]);
            }
            _ => {
                self.c.err_bad_access += 1;
                data.fill(0);
            }
        }
    }

    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        self.c.mmio_writes += 1;
        let ok = offset < hw::MMIO_SIZE;
        match data.len() {
            4 if ok && offset.is_multiple_of(4) => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.write_reg(offset as u32, v);
            }
            8 if ok && offset.is_multiple_of(8) => {
                let lo = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                let hi = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
                self.write_reg(offset as u32, lo);
                self.write_reg(offset as u32 + 4, hi);
            }
            // Narrow and unaligned writes have no defined effect on this part.
            _ => self.c.err_bad_access += 1,
        }
    }

    /// The I/O window (8254x SDM 13.2.2; the BAR is 64 bytes, only the first 8 decode):
    /// IOADDR at +0 reads back as written; IODATA at +4 reads the register IOADDR
    /// names, with the side effects of a BAR0 read of it (a read of ICR clears it).
    /// IOADDR's low two bits are ignored (the file is dword-addressed; QEMU's `e1000e`
    /// does the same); an IOADDR beyond the register file (the SDM's flash window and
    /// above) reads 0. A narrow read returns its bytes of the dword. Reserved offsets
    /// and accesses that straddle a register read 0. All refusals count in
    /// `errors.io_bad_access` / `io_bad_address`.
    fn io_read(&mut self, offset: u64, data: &mut [u8]) {
        self.c.io_reads += 1;
        data.fill(0);
        let (s, len) = ((offset % 4) as usize, data.len());
        if !matches!(len, 1 | 2 | 4) || s + len > 4 {
            self.c.err_io_bad_access += 1;
            return;
        }
        let dword = match offset & !3 {
            0 => Some(self.ioaddr),
            4 => self.io_target().map(|off| self.read_reg(off)),
            _ => {
                self.c.err_io_bad_access += 1;
                None
            }
        };
        if let Some(v) = dword {
            data.copy_from_slice(&v.to_le_bytes()[s..s + len]);
        }
    }

    /// Writes to the I/O window: only whole, aligned dwords to IOADDR or IODATA (the
    /// SDM: "writes less than 32 bits are ignored"); an IODATA write reaches the
    /// register IOADDR names as a BAR0 write would (a TDT write transmits).
    fn io_write(&mut self, offset: u64, data: &[u8]) {
        self.c.io_writes += 1;
        let v = match <[u8; 4]>::try_from(data) {
            Ok(b) => u32::from_le_bytes(b),
            Err(_) => {
                self.c.err_io_bad_access += 1;
                return;
            }
        };
        match offset {
            0 => self.ioaddr = v,
            4 => {
                if let Some(off) = self.io_target() {
                    self.write_reg(off, v);
                }
            }
            _ => self.c.err_io_bad_access += 1,
        }
    }

    /// The register IODATA reaches: IOADDR's dword, if it lies in the register file.
    fn io_target(&mut self) -> Option<u32> {
        if u64::from(self.ioaddr) < hw::MMIO_SIZE {
            Some(self.ioaddr & !3)
        } else {
            self.c.err_io_bad_address += 1;
            None
        }
    }

    /// The model's counters (also [`PciDevice::stats`]).
    pub fn counters(&self) -> serde_json::Value {
        let c = &self.c;
        let by_name = |v: &[u64]| -> serde_json::Map<String, serde_json::Value> {
            REG_NAMES
                .iter()
                .zip(v)
                .filter(|(_, n)| **n != 0)
                .map(|(k, n)| ((*k).to_string(), json!(n)))
                .collect()
        };
        let m = self.mac;
        json!({
            "device": "e1000",
            "mac": format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]),
            "mitigation": self.mitigation,
            "mmio_reads": c.mmio_reads,
            "mmio_writes": c.mmio_writes,
            "io_reads": c.io_reads,
            "io_writes": c.io_writes,
            "register_reads": by_name(&c.reads),
            "register_writes": by_name(&c.writes),
            "tdt_writes": c.tdt_writes,
            "rdt_writes": c.rdt_writes,
            "resets": c.resets,
            "tx": { "frames": c.tx_frames, "bytes": c.tx_bytes, "descriptors": c.tx_descs },
            "rx": { "frames": c.rx_frames, "bytes": c.rx_bytes, "descriptors": c.rx_descs,
                    "stalls_no_buffer": c.rx_stalls },
            "interrupts": { "raised": c.irq_raised, "icr_reads": c.icr_reads,
                            "mitigation_deferred": c.mit_deferred,
                            "mitigation_timer_fires": c.mit_fires },
            "dma": { "read_bytes": c.dma_read_bytes, "write_bytes": c.dma_write_bytes },
            "drops": {
                "rx_disabled": c.drop_rx_disabled,
                "rx_no_bus_master": c.drop_rx_no_bus_master,
                "rx_filtered": c.drop_rx_filtered,
                "rx_oversize": c.drop_rx_oversize,
                "rx_overrun": c.drop_rx_overrun,
                "rx_bad_ring": c.drop_rx_bad_ring,
                "rx_dma": c.drop_rx_dma,
                "tx_link": c.drop_tx_link,
                "tx_oversize": c.drop_tx_oversize,
                "tx_tso": c.drop_tx_tso,
                "tx_dma": c.drop_tx_dma,
                "tx_runt": c.drop_tx_runt,
                "tx_bad_checksum": c.drop_tx_bad_checksum,
                "rx_buffer_dma": c.drop_rx_buffer_dma,
            },
            "errors": {
                "dma_read": c.err_dma_read,
                "dma_write": c.err_dma_write,
                "bad_access": c.err_bad_access,
                "unknown_register": c.err_unknown_register,
                "tx_bad_ring": c.err_tx_bad_ring,
                "tx_ring_dma": c.err_tx_ring_dma,
                "tx_wrap": c.err_tx_wrap,
                "tx_no_bus_master": c.err_tx_no_bus_master,
                "rx_null_descriptor": c.err_rx_null_desc,
                "mdic": c.err_mdic,
                "link_recv": c.err_link_recv,
                "io_bad_access": c.err_io_bad_access,
                "io_bad_address": c.err_io_bad_address,
            },
            "link": self.link.stats(),
        })
    }

    /// Register accesses through BAR0 and BAR1 (each one a vCPU exit in a real run).
    pub fn accesses(&self) -> u64 {
        self.c.mmio_reads + self.c.mmio_writes + self.c.io_reads + self.c.io_writes
    }
}

fn idx(off: u32) -> usize {
    (off as usize / 4) % NREGS
}

fn is_broadcast(frame: &[u8]) -> bool {
    frame.len() >= 6 && frame[..6] == [0xff; 6]
}

fn is_multicast(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 != 0)
}

/// Inserts a checksum as QEMU's `putsum`: the one's-complement sum of bytes
/// `css..=cse` (to the end when `cse` is 0), complemented (0 sent as 0xFFFF), stored
/// big-endian at `sloc`. Offsets outside the frame (or a start past the end) leave it
/// unchanged and return false.
fn put_checksum(data: &mut [u8], sloc: usize, css: usize, cse: usize) -> bool {
    let mut n = data.len();
    if cse != 0 && cse < n {
        n = cse + 1;
    }
    if sloc + 2 > n || css >= n {
        return false;
    }
    let mut sum: u32 = 0;
    let mut chunks = data[css..n].chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut csum = !(sum as u16);
    if csum == 0 {
        csum = 0xffff;
    }
    data[sloc..sloc + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

impl PciDevice for E1000 {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        // INTx disable may have changed; bus mastering may now allow DMA.
        self.update_line();
        if self.config.bus_master() {
            self.kick_rx();
        }
    }

    fn region_read(&mut self, region: usize, offset: u64, data: &mut [u8]) {
        match region {
            0 => self.mmio_read(offset, data),
            1 => self.io_read(offset, data),
            _ => data.fill(0xff),
        }
    }

    fn region_write(&mut self, region: usize, offset: u64, data: &[u8]) {
        match region {
            0 => self.mmio_write(offset, data),
            1 => self.io_write(offset, data),
            _ => {}
        }
    }

    fn stats(&self) -> serde_json::Value {
        self.counters()
    }
}

fn lock(dev: &Mutex<E1000>) -> MutexGuard<'_, E1000> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

/// The device's thread ("e1000-rx"): delivers frames from the link into the
/// guest's receive descriptors, and runs the interrupt-mitigation timer. Transmit
/// does not use it (it runs on the vCPU thread, in the TDT write).
pub struct E1000Worker {
    dev: Arc<Mutex<E1000>>,
    wake: Arc<Wake>,
    thread: Option<JoinHandle<()>>,
}

impl E1000Worker {
    /// Starts the thread for `dev`. It arms the link at once.
    pub fn start(dev: Arc<Mutex<E1000>>) -> io::Result<Self> {
        let wake = lock(&dev).wake.clone();
        let (d, w) = (dev.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("e1000-rx".into())
            .spawn(move || run(&d, &w))?;
        Ok(Self {
            dev,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops and joins the thread; returns the model's counters.
    pub fn stop(mut self) -> serde_json::Value {
        self.halt();
        lock(&self.dev).counters()
    }

    fn halt(&mut self) {
        self.wake.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for E1000Worker {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(dev: &Mutex<E1000>, wake: &Wake) {
    let mut deadline = {
        let mut d = lock(dev);
        d.pump_rx();
        d.mit_timer
    };
    while let Some(reasons) = wake.wait_until(deadline) {
        let mut d = lock(dev);
        d.poll_timers(Instant::now());
        if reasons & (WAKE_LINK | WAKE_RX) != 0 {
            d.pump_rx();
        }
        deadline = d.mit_timer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostio::tap::MemLink;
    use crate::testing::Rng;
    use hw_devices::pci::command;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const RAM: usize = 1 << 20;
    const TX_RING: u64 = 0x1_0000;
    const RX_RING: u64 = 0x1_1000;
    const BUFS: u64 = 0x2_0000;

    #[derive(Default)]
    struct Irq {
        level: AtomicBool,
        rises: AtomicU64,
    }
    impl IrqLine for Irq {
        fn set_level(&self, a: bool) {
            if a && !self.level.swap(a, Ordering::SeqCst) {
                self.rises.fetch_add(1, Ordering::SeqCst);
            }
            self.level.store(a, Ordering::SeqCst);
        }
    }
    impl Irq {
        fn up(&self) -> bool {
            self.level.load(Ordering::SeqCst)
        }
    }

    struct Rig {
        d: E1000,
        peer: MemLink,
        irq: Arc<Irq>,
        mem: GuestMemory,
    }

    fn rig() -> Rig {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM)]).expect("ram");
        let (a, b) = MemLink::pair(1024);
        let irq = Arc::new(Irq::default());
        let mut d = E1000::new(MAC, Box::new(a), irq.clone(), mem.clone());
        d.set_mitigation(false);
        d.config_write(
            4,
            &(command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes(),
        );
        Rig {
            d,
            peer: b,
            irq,
            mem,
        }
    }

    impl Rig {
        fn w(&mut self, off: u32, v: u32) {
            self.d.region_write(0, off.into(), &v.to_le_bytes());
        }
        fn r(&mut self, off: u32) -> u32 {
            let mut b = [0u8; 4];
            self.d.region_read(0, off.into(), &mut b);
            u32::from_le_bytes(b)
        }
        fn put(&self, addr: u64, data: &[u8]) {
            self.mem.write_slice(data, GuestAddress(addr)).expect("ram");
        }
        fn get(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0; len];
            self.mem
                .read_slice(&mut v, GuestAddress(addr))
                .expect("ram");
            v
        }
        fn tx_desc(&self, i: u64, d: TxDesc) {
            self.put(TX_RING + 16 * i, &d.to_bytes());
        }
        fn setup_tx(&mut self, descs: u32) {
            self.w(reg::TDBAL, TX_RING as u32);
            self.w(reg::TDBAH, 0);
            self.w(reg::TDLEN, descs * 16);
            self.w(reg::TCTL, tctl::EN | tctl::PSP);
        }
        /// Posts `n` descriptors of 2048-byte buffers (RDT = n).
        fn setup_rx(&mut self, descs: u32, n: u32, rctl_extra: u32) {
            for i in 0..u64::from(descs) {
                let d = RxDesc {
                    addr: BUFS + 0x800 * i,
                    ..Default::default()
                };
                self.put(RX_RING + 16 * i, &d.to_bytes());
            }
            self.w(reg::RDBAL, RX_RING as u32);
            self.w(reg::RDLEN, descs * 16);
            self.w(reg::RCTL, rctl::EN | rctl::BAM | rctl::SECRC | rctl_extra);
            self.w(reg::RDT, n);
        }
        fn rx_desc(&self, i: u64) -> RxDesc {
            let b = self.get(RX_RING + 16 * i, 16);
            RxDesc::from_bytes(b.as_slice().try_into().expect("16"))
        }
        fn counter(&self, path: &[&str]) -> u64 {
            let mut v = self.d.counters();
            for p in path {
                v = v[*p].clone();
            }
            v.as_u64().expect("counter")
        }
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
        f[..6].copy_from_slice(&MAC);
        f
    }

    #[test]
    fn identity_reset_state_and_eerd() {
        let mut t = rig();
        assert_eq!(t.d.config().read32(0), 0x100e_8086);
        assert_eq!(t.d.config().read32(8) >> 8, 0x02_0000);
        assert_eq!(t.d.config().read32(0x2c), 0x1100_1af4);
        assert_eq!(t.d.config().interrupt_pin(), 1);
        assert_eq!(t.r(reg::RAL0), 0x1200_5452);
        assert_eq!(t.r(reg::RAH0), 0x8000_5634);
        let st = t.r(reg::STATUS);
        assert_eq!(st & (status::LU | status::FD), status::LU | status::FD);
        assert_eq!(st & status::SPEED_MASK, status::SPEED_1000);
        let mut sum = 0u16;
        for a in 0..64u32 {
            t.w(reg::EERD, eerd::START | a << eerd::ADDR_SHIFT);
            let v = t.r(reg::EERD);
            assert_ne!(v & eerd::DONE, 0);
            let w = (v >> eerd::DATA_SHIFT) as u16;
            if a < 3 {
                assert_eq!(
                    w.to_le_bytes(),
                    [MAC[2 * a as usize], MAC[2 * a as usize + 1]]
                );
            }
            sum = sum.wrapping_add(w);
        }
        assert_eq!(sum, eeprom::SUM);
        // Beyond the EEPROM: DONE, no data.
        t.w(reg::EERD, eerd::START | 0x40 << eerd::ADDR_SHIFT);
        assert_eq!(t.r(reg::EERD) >> 16, 0);
        // Without START, EERD reads back as written.
        t.w(reg::EERD, 0x300);
        assert_eq!(t.r(reg::EERD), 0x300);
    }

    /// Linux's `e1000_read_eeprom` for Microwire parts, over EECD.
    fn microwire_read(t: &mut Rig, addr: u32) -> u16 {
        let mut v = t.r(reg::EECD) | eecd::REQ;
        t.w(reg::EECD, v);
        assert_ne!(t.r(reg::EECD) & eecd::GNT, 0);
        v &= !(eecd::DI | eecd::SK);
        t.w(reg::EECD, v);
        v |= eecd::CS;
        t.w(reg::EECD, v);
        let cmd = eecd::OPCODE_READ << eecd::ADDRESS_BITS | addr;
        for bit in (0..eecd::OPCODE_BITS + eecd::ADDRESS_BITS).rev() {
            v = if cmd >> bit & 1 != 0 {
                v | eecd::DI
            } else {
                v & !eecd::DI
            };
            t.w(reg::EECD, v);
            t.w(reg::EECD, v | eecd::SK);
            t.w(reg::EECD, v);
        }
        v &= !eecd::DI;
        let mut word = 0u16;
        for _ in 0..16 {
            t.w(reg::EECD, v | eecd::SK);
            let bit = t.r(reg::EECD) & eecd::DO != 0;
            word = word << 1 | u16::from(bit);
            t.w(reg::EECD, v);
        }
        t.w(reg::EECD, v & !(eecd::CS | eecd::REQ));
        word
    }

    #[test]
    fn eecd_bit_banging_reads_what_eerd_reads() {
        let mut t = rig();
        for a in [0u32, 1, 2, 0x0d, 0x3f] {
            t.w(reg::EERD, eerd::START | a << eerd::ADDR_SHIFT);
            let want = (t.r(reg::EERD) >> 16) as u16;
            assert_eq!(microwire_read(&mut t, a), want, "word {a}");
        }
    }

    #[test]
    fn mdic_reaches_the_phy_at_address_1() {
        let mut t = rig();
        let rd = |t: &mut Rig, phy_addr: u32, r: u32| {
            t.w(
                reg::MDIC,
                r << mdic::REG_SHIFT | phy_addr << mdic::PHY_SHIFT | mdic::OP_READ,
            );
            t.r(reg::MDIC)
        };
        let v = rd(&mut t, 1, phy::PHYID1);
        assert_ne!(v & mdic::READY, 0);
        assert_eq!(v & mdic::ERROR, 0);
        assert_eq!(v as u16, phy::ID1);
        assert_eq!(rd(&mut t, 1, phy::PHYID2) as u16, phy::ID2);
        let bmsr = rd(&mut t, 1, phy::BMSR) as u16;
        assert_ne!(bmsr & phy::BMSR_LINK_ST, 0);
        assert_ne!(bmsr & phy::BMSR_AN_COMP, 0);
        assert_ne!(rd(&mut t, 2, phy::PHYID1) & mdic::ERROR, 0, "no PHY at 2");
        assert_ne!(rd(&mut t, 1, 0x1f) & mdic::ERROR, 0, "unknown register");
        // PHYID is read-only.
        t.w(
            reg::MDIC,
            phy::PHYID1 << mdic::REG_SHIFT | 1 << mdic::PHY_SHIFT | mdic::OP_WRITE | 0x1234,
        );
        assert_ne!(t.r(reg::MDIC) & mdic::ERROR, 0);
        // Restarting auto-negotiation completes and signals LSC.
        t.w(reg::IMS, icr::LSC);
        let bmcr = u32::from(phy::BMCR_AUTOEN | phy::BMCR_ANRESTART);
        t.w(reg::MDIC, 1 << mdic::PHY_SHIFT | mdic::OP_WRITE | bmcr);
        assert!(t.irq.up());
        assert_eq!(t.r(reg::ICR), icr::LSC);
        assert_eq!(rd(&mut t, 1, phy::BMCR) as u16 & phy::BMCR_ANRESTART, 0);
    }

    #[test]
    fn icr_clears_on_read_and_the_line_follows_ims() {
        let mut t = rig();
        t.w(reg::ICS, icr::RXT0);
        assert!(!t.irq.up(), "masked");
        assert_eq!(t.r(reg::ICS), icr::RXT0, "ICS reads as ICR");
        t.w(reg::IMS, icr::RXT0 | icr::TXDW);
        assert!(t.irq.up());
        assert_ne!(t.d.config().read32(4) >> 16 & 8, 0, "status interrupt bit");
        assert_eq!(t.r(reg::IMS), icr::RXT0 | icr::TXDW);
        t.w(reg::IMC, icr::RXT0);
        assert!(!t.irq.up());
        t.w(reg::IMS, icr::RXT0);
        assert!(t.irq.up());
        assert_eq!(t.r(reg::ICR), icr::RXT0);
        assert!(!t.irq.up());
        assert_eq!(t.r(reg::ICR), 0);
        // Writing ones clears causes too.
        t.w(reg::ICS, icr::TXDW | icr::RXT0);
        t.w(reg::ICR, icr::RXT0);
        assert_eq!(t.r(reg::ICR), icr::TXDW);
        // INTx disable keeps the line low; the status bit still shows the condition.
        let cmd = command::MEMORY_SPACE | command::BUS_MASTER | command::INTX_DISABLE;
        t.d.config_write(4, &cmd.to_le_bytes());
        t.w(reg::ICS, icr::TXDW);
        assert!(!t.irq.up());
        assert_ne!(t.d.config().read32(4) >> 16 & 8, 0);
        t.d.config_write(4, &(cmd & !command::INTX_DISABLE).to_le_bytes());
        assert!(t.irq.up());
        assert_eq!(t.irq.rises.load(Ordering::SeqCst), 4);
        assert_eq!(t.counter(&["interrupts", "raised"]), 4);
        assert_eq!(t.counter(&["interrupts", "icr_reads"]), 3);
    }

    #[test]
    fn mitigation_holds_a_second_edge_until_the_timer() {
        let mut t = rig();
        t.d.set_mitigation(true);
        t.w(reg::IMS, icr::RXT0);
        t.w(reg::ICS, icr::RXT0);
        assert!(t.irq.up(), "the first edge goes out at once");
        let deadline = t.d.mit_timer.expect("window open");
        t.r(reg::ICR);
        t.w(reg::ICS, icr::RXT0);
        assert!(!t.irq.up(), "held inside the window");
        assert_eq!(
            t.d.poll_timers(deadline - Duration::from_nanos(1)),
            Some(deadline)
        );
        assert!(!t.irq.up());
        // 500 x 256 ns at least, even with ITR 0.
        assert!(deadline >= Instant::now() - Duration::from_secs(1));
        t.d.poll_timers(deadline);
        assert!(t.irq.up());
        assert_eq!(t.counter(&["interrupts", "mitigation_deferred"]), 1);
    }

    #[test]
    fn ctrl_rst_resets_the_mac_registers() {
        let mut t = rig();
        t.w(reg::IMS, icr::RXT0);
        t.w(reg::RCTL, rctl::EN);
        t.w(reg::RAL0, 0);
        t.w(reg::ICS, icr::RXT0);
        assert!(t.irq.up());
        let c = t.r(reg::CTRL);
        t.w(reg::CTRL, c | ctrl::RST);
        assert_eq!(t.r(reg::CTRL) & ctrl::RST, 0);
        assert!(!t.irq.up());
        assert_eq!(t.r(reg::IMS), 0);
        assert_eq!(t.r(reg::RCTL), 0);
        assert_eq!(t.r(reg::RAL0), 0x1200_5452);
    }

    #[test]
    fn transmit_gathers_fragments_writes_back_dd_and_counts() {
        let mut t = rig();
        t.setup_tx(8);
        t.w(reg::IMS, icr::TXDW);
        let f = frame(100, 1);
        t.put(BUFS, &f[..40]);
        t.put(BUFS + 0x1000, &f[40..]);
        t.tx_desc(
            0,
            TxDesc {
                addr: BUFS,
                length: 40,
                ..Default::default()
            },
        );
        t.tx_desc(
            1,
            TxDesc {
                addr: BUFS + 0x1000,
                length: 60,
                cmd: tx_cmd::EOP | tx_cmd::RS,
                ..Default::default()
            },
        );
        t.w(reg::TDT, 2);
        assert_eq!(t.peer.recv_timeout(Duration::ZERO).expect("frame"), f);
        assert_eq!(t.r(reg::TDH), 2);
        assert_eq!(t.get(TX_RING + 12, 1)[0], 0, "no RS: no write-back");
        assert_eq!(t.get(TX_RING + 16 + 12, 1)[0], tx_status::DD);
        assert!(t.irq.up());
        assert_eq!(t.r(reg::ICR), icr::TXDW | icr::TXQE);
        assert_eq!(t.r(stat::GPTC), 1);
        assert_eq!(t.r(stat::GPTC), 0, "clears on read");
        assert_eq!(t.r(stat::TPT), 1);
        assert_eq!(t.r(stat::GOTCL), 104);
        assert_eq!(t.r(stat::GOTCL), 104, "the low half does not clear");
        assert_eq!(t.r(stat::GOTCH), 0);
        assert_eq!(t.r(stat::GOTCL), 0, "reading the high half cleared both");
        assert_eq!(t.r(stat::PTC127), 1);
        assert_eq!(t.counter(&["tx", "frames"]), 1);
        assert_eq!(t.counter(&["tx", "descriptors"]), 2);
        assert_eq!(t.counter(&["tdt_writes"]), 1);
        assert_eq!(t.counter(&["register_writes", "TDT"]), 1);
    }

    #[test]
    fn transmit_inserts_checksums_from_a_context_descriptor() {
        let mut t = rig();
        t.setup_tx(8);
        // Ethernet + IPv4 (20 bytes, checksum at 24) + UDP (checksum at 40).
        let mut f = frame(60, 3);
        f[24] = 0;
        f[25] = 0;
        f[40] = 0;
        f[41] = 0;
        t.put(BUFS, &f);
        let ctx = TxContextDesc {
            ipcss: 14,
            ipcso: 24,
            ipcse: 33,
            tucss: 34,
            tucso: 40,
            tucse: 0,
            cmd_and_length: u32::from(tx_cmd::DEXT) << 24,
            ..Default::default()
        };
        t.put(TX_RING, &ctx.to_bytes());
        t.tx_desc(
            1,
            TxDesc {
                addr: BUFS,
                length: 60,
                cso: dtyp::DATA << 4,
                cmd: tx_cmd::DEXT | tx_cmd::EOP | tx_cmd::RS,
                css: popts::IXSM | popts::TXSM,
                ..Default::default()
            },
        );
        t.w(reg::TDT, 2);
        let out = t.peer.recv_timeout(Duration::ZERO).expect("frame");
        let fold = |b: &[u8]| {
            let mut s: u32 = b
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
                .sum();
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            s
        };
        assert_eq!(fold(&out[14..34]), 0xffff, "IP header sums to all ones");
        assert_eq!(fold(&out[34..]), 0xffff, "UDP part sums to all ones");
        assert_eq!(&out[..24], &f[..24]);
    }

    #[test]
    fn receive_fills_descriptors_and_waits_for_buffers() {
        let mut t = rig();
        t.setup_rx(8, 2, 0);
        t.w(reg::IMS, icr::RXT0);
        let f1 = frame(1514, 1);
        let f2 = frame(20, 2);
        let f3 = frame(300, 3);
        for f in [&f1, &f2, &f3] {
            t.peer.send_frame(f).expect("send");
        }
        assert_eq!(t.d.pump_rx(), 2, "two descriptors posted");
        let d0 = t.rx_desc(0);
        assert_eq!(d0.status, rx_status::DD | rx_status::EOP | rx_status::IXSM);
        assert_eq!(usize::from(d0.length), 1514);
        assert_eq!(t.get(BUFS, 1514), f1);
        let d1 = t.rx_desc(1);
        assert_eq!(d1.length, 60, "padded to the minimum");
        assert_eq!(&t.get(BUFS + 0x800, 60)[..20], &f2[..]);
        assert_eq!(t.r(reg::RDH), 2);
        assert!(t.irq.up());
        assert_eq!(t.r(reg::ICR) & icr::RXT0, icr::RXT0);
        assert_eq!(t.counter(&["rx", "stalls_no_buffer"]), 1);
        // The RDT write lets the held frame in.
        t.w(reg::RDT, 4);
        assert_eq!(t.d.pump_rx(), 1);
        assert_eq!(t.rx_desc(2).length, 300);
        assert_eq!(t.r(stat::GPRC), 3);
        assert_eq!(t.r(stat::MPC), 0);
    }

    #[test]
    fn large_frames_span_descriptors_or_overrun() {
        let mut t = rig();
        // 256-byte buffers, FCS counted.
        t.setup_rx(8, 7, 3 << rctl::BSIZE_SHIFT);
        t.w(reg::RCTL, rctl::EN | rctl::BAM | 3 << rctl::BSIZE_SHIFT);
        t.w(reg::IMS, icr::RXO);
        let f = frame(600, 4);
        t.peer.send_frame(&f).expect("send");
        t.d.pump_rx();
        let lens: Vec<u16> = (0..3).map(|i| t.rx_desc(i).length).collect();
        assert_eq!(lens, [256, 256, 92], "600 bytes + 4 FCS");
        assert_eq!(t.rx_desc(0).status & rx_status::EOP, 0);
        assert_ne!(t.rx_desc(2).status & rx_status::EOP, 0);
        assert_eq!(t.get(BUFS + 0x800, 256), f[256..512]);
        // 4 descriptors left; a 1500-byte frame needs 6: dropped with RXO and MPC.
        t.peer.send_frame(&frame(1500, 5)).expect("send");
        t.d.pump_rx();
        assert!(t.irq.up());
        assert_ne!(t.r(reg::ICR) & icr::RXO, 0);
        assert_eq!(t.r(stat::MPC), 1);
        assert_eq!(t.r(stat::RNBC), 1);
        assert_eq!(t.r(reg::RDH), 3);
    }

    #[test]
    fn receive_filters_and_disabled_receiver_drop_frames() {
        let mut t = rig();
        t.peer.send_frame(&frame(64, 1)).expect("send");
        t.d.pump_rx();
        assert_eq!(t.counter(&["drops", "rx_disabled"]), 1);
        t.setup_rx(8, 7, 0);
        let mut other = frame(64, 1);
        other[0] = 0x02;
        t.peer.send_frame(&other).expect("send");
        let mut mcast = frame(64, 1);
        mcast[0] = 0x01;
        t.peer.send_frame(&mcast).expect("send");
        t.peer.send_frame(&[0xff; 64]).expect("send");
        t.d.pump_rx();
        assert_eq!(t.counter(&["drops", "rx_filtered"]), 2);
        assert_eq!(t.counter(&["rx", "frames"]), 1, "broadcast with BAM");
        assert_eq!(t.r(stat::BPRC), 1);
        t.peer.send_frame(&frame(2000, 1)).expect("send");
        t.d.pump_rx();
        assert_eq!(t.counter(&["drops", "rx_oversize"]), 1);
        assert_eq!(t.r(stat::ROC), 1);
    }

    /// Whatever the guest programs, the model neither panics nor loops for long, and
    /// DMA stays inside RAM (GuestMemory refuses the rest; the counters say so).
    #[test]
    fn hostile_rings_and_lengths_are_bounded() {
        let mut t = rig();
        // Rings outside RAM.
        t.w(reg::TDBAL, 0xffff_0000);
        t.w(reg::TDBAH, 0x1234);
        t.w(reg::TDLEN, 0xffff_ffff);
        t.w(reg::TCTL, tctl::EN);
        t.w(reg::TDT, 5);
        assert!(t.counter(&["errors", "dma_read"]) >= 1);
        // Ring length 0, heads beyond the ring.
        t.w(reg::TDLEN, 0);
        t.w(reg::TDH, 9);
        t.w(reg::TDT, 3);
        assert!(t.counter(&["errors", "tx_bad_ring"]) >= 1);
        assert_eq!(t.r(reg::TDLEN), 0);
        t.w(reg::TDLEN, 130);
        assert_eq!(t.r(reg::TDLEN), 128, "kept to a multiple of 128");
        // The largest ring ending at the top of RAM, TDT beyond it: one bounded lap
        // of zero-length descriptors without EOP, then DMA errors past RAM.
        t.w(reg::TDBAL, (RAM - 16 * 8) as u32);
        t.w(reg::TDBAH, 0);
        t.w(reg::TDLEN, hw::DLEN_MASK);
        t.w(reg::TDH, 0);
        t.w(reg::TDT, 0xffff);
        assert_eq!(t.r(reg::TDH), 8);
        // TX without EOP, every length up to 0xffff, over a whole lap: bounded.
        t.setup_tx(4096 / 16 * 16);
        t.w(reg::TDH, 0);
        for i in 0..256u64 {
            t.tx_desc(
                i,
                TxDesc {
                    addr: 0,
                    length: 0xffff,
                    ..Default::default()
                },
            );
        }
        t.w(reg::TDT, 0xffff);
        assert!(t.d.tx.data.len() <= MAX_TX_FRAME);
        assert!(t.d.tx.oversize);
        t.tx_desc(
            0,
            TxDesc {
                addr: 0,
                length: 1,
                cmd: tx_cmd::EOP,
                ..Default::default()
            },
        );
        t.w(reg::TDH, 0);
        t.w(reg::TDT, 1);
        assert_eq!(t.counter(&["drops", "tx_oversize"]), 1);
        assert_eq!(t.peer.pending(), 0);
        // A buffer address outside RAM: the frame is dropped.
        t.tx_desc(
            1,
            TxDesc {
                addr: u64::MAX - 3,
                length: 64,
                cmd: tx_cmd::EOP,
                ..Default::default()
            },
        );
        t.w(reg::TDT, 2);
        assert_eq!(t.counter(&["drops", "tx_dma"]), 1);
        // RX: ring outside RAM, empty ring, head beyond the ring.
        t.w(reg::RCTL, rctl::EN | rctl::UPE);
        t.w(reg::RDBAL, 0xfff0_0000);
        t.w(reg::RDLEN, 128);
        t.w(reg::RDT, 3);
        t.peer.send_frame(&frame(64, 0)).expect("send");
        t.d.pump_rx();
        assert_eq!(t.counter(&["drops", "rx_dma"]), 1);
        t.w(reg::RDLEN, 0);
        t.peer.send_frame(&frame(64, 0)).expect("send");
        t.d.pump_rx();
        t.w(reg::RDLEN, 128);
        t.w(reg::RDH, 200);
        t.peer.send_frame(&frame(64, 0)).expect("send");
        t.d.pump_rx();
        assert_eq!(t.counter(&["drops", "rx_bad_ring"]), 2);
        // Null buffer addresses: skipped, bounded by one lap.
        t.w(reg::RDBAL, RX_RING as u32);
        t.put(RX_RING, &[0; 128]);
        t.w(reg::RDH, 0);
        t.w(reg::RDT, 0xffff);
        t.peer.send_frame(&frame(64, 0)).expect("send");
        t.d.pump_rx();
        assert_eq!(t.counter(&["errors", "rx_null_descriptor"]), 8);
        // Odd access sizes and offsets.
        let mut b = [0u8; 3];
        t.d.region_read(0, 1, &mut b);
        t.d.region_read(0, u64::MAX, &mut [0u8; 8]);
        t.d.region_write(0, u64::MAX - 1, &[1, 2, 3, 4]);
        t.d.region_write(0, 2, &[0xff, 0xff]);
        t.d.region_write(7, 0, &[1]);
        let mut b2 = [0u8; 2];
        t.d.region_read(0, reg::STATUS as u64 + 2, &mut b2);
        assert_eq!(b2, [0x08, 0x80], "a narrow read sees its dword");
        assert!(t.counter(&["errors", "bad_access"]) >= 3);
        // Without bus mastering, no DMA at all.
        t.d.config_write(4, &command::MEMORY_SPACE.to_le_bytes());
        let before = t.counter(&["dma", "read_bytes"]);
        t.setup_tx(8);
        t.w(reg::TDH, 0);
        t.w(reg::TDT, 3);
        assert_eq!(t.counter(&["dma", "read_bytes"]), before);
        // The TCTL write and the TDT write each asked.
        assert_eq!(t.counter(&["errors", "tx_no_bus_master"]), 2);
    }

    /// Regression (the hostile guest of #16): a frame shorter than an Ethernet header
    /// went to the link and counted as transmitted (GPTC, TPT); a checksum asked at
    /// offsets outside the frame sent the frame without it; a transmit descriptor
    /// that could not be fetched was only a DMA error among others.
    #[test]
    fn runts_and_checksums_outside_the_frame_are_dropped_not_sent() {
        let mut t = rig();
        t.setup_tx(8);
        t.put(BUFS, &frame(64, 1));
        let eop = tx_cmd::EOP | tx_cmd::RS;
        for (i, length) in [(0, 0), (1, 13)] {
            t.tx_desc(
                i,
                TxDesc {
                    addr: BUFS,
                    length,
                    cmd: eop,
                    ..Default::default()
                },
            );
        }
        let data = |css| TxDesc {
            addr: BUFS,
            length: 60,
            cso: dtyp::DATA << 4,
            cmd: tx_cmd::DEXT | eop,
            css,
            ..Default::default()
        };
        let ctx = |ipcss, ipcso, ipcse, tucss, tucso| TxContextDesc {
            ipcss,
            ipcso,
            ipcse,
            tucss,
            tucso,
            tucse: 0,
            cmd_and_length: u32::from(tx_cmd::DEXT) << 24,
            ..Default::default()
        };
        // The TCP checksum beyond a 60-byte frame; the IP one ending before its place.
        t.put(TX_RING + 32, &ctx(14, 24, 33, 200, 250).to_bytes());
        t.tx_desc(3, data(popts::TXSM));
        t.put(TX_RING + 64, &ctx(30, 24, 20, 34, 40).to_bytes());
        t.tx_desc(5, data(popts::IXSM));
        t.w(reg::TDT, 6);
        assert_eq!(t.r(reg::TDH), 6);
        assert_eq!(t.peer.pending(), 0, "nothing reached the link");
        assert_eq!(t.counter(&["drops", "tx_runt"]), 2);
        assert_eq!(t.counter(&["drops", "tx_bad_checksum"]), 2);
        assert_eq!(t.counter(&["tx", "frames"]), 0);
        assert_eq!(t.r(stat::GPTC), 0);
        assert_eq!(t.r(stat::TPT), 0);
        assert_eq!(
            t.get(TX_RING + 12, 1)[0],
            tx_status::DD,
            "still written back"
        );
        // A well-formed frame after them goes out.
        t.tx_desc(
            6,
            TxDesc {
                addr: BUFS,
                length: 64,
                cmd: eop,
                ..Default::default()
            },
        );
        t.w(reg::TDT, 7);
        assert_eq!(t.peer.recv_timeout(Duration::ZERO), Some(frame(64, 1)));
        assert_eq!(t.r(stat::GPTC), 1);
        // A ring outside RAM: the walk ends at once, counted as such.
        t.w(reg::TDBAL, 0xc000_0000);
        t.w(reg::TDH, 0);
        t.w(reg::TDT, 1);
        assert_eq!(t.r(reg::TDH), 0);
        assert_eq!(t.counter(&["errors", "tx_ring_dma"]), 1);
    }

    /// Regression (the hostile guest of #16): a received frame whose buffer lay outside
    /// RAM came back as a good frame (DD, EOP, its length; GPRC) though none of it
    /// landed; a descriptor that could not be fetched lost the frame without a sign
    /// the driver could see.
    #[test]
    fn receive_dma_failures_are_told_to_the_driver() {
        let mut t = rig();
        t.setup_rx(8, 7, 0);
        t.put(
            RX_RING,
            &RxDesc {
                addr: 0xc000_0000,
                ..Default::default()
            }
            .to_bytes(),
        );
        t.peer.send_frame(&frame(100, 1)).expect("send");
        t.d.pump_rx();
        let d0 = t.rx_desc(0);
        assert_eq!(
            d0.status & (rx_status::DD | rx_status::EOP),
            rx_status::DD | rx_status::EOP
        );
        assert_ne!(d0.errors & rx_errors::RXE, 0);
        assert_eq!(t.counter(&["drops", "rx_buffer_dma"]), 1);
        assert_eq!(t.counter(&["rx", "frames"]), 0);
        assert_eq!(t.r(stat::RXERRC), 1);
        assert_eq!(t.r(stat::GPRC), 0);
        assert_ne!(t.r(reg::ICR) & icr::RXT0, 0);
        // The next frame lands in the next buffer, unmarked.
        let f = frame(100, 2);
        t.peer.send_frame(&f).expect("send");
        t.d.pump_rx();
        assert_eq!(t.rx_desc(1).errors, 0);
        assert_eq!(t.get(BUFS + 0x800, 100), f);
        assert_eq!(t.r(stat::GPRC), 1);
        // Slot 0 used again, as Linux's e1000 refills it: a new buffer address and the
        // status byte cleared, the errors byte left as the device wrote it. A good
        // frame there must not inherit the old RXE (the driver would drop it).
        t.put(RX_RING, &BUFS.to_le_bytes());
        t.put(RX_RING + RxDesc::STATUS as u64, &[0]);
        t.w(reg::RDH, 0);
        t.w(reg::RDT, 1);
        t.peer.send_frame(&f).expect("send");
        t.d.pump_rx();
        let d0 = t.rx_desc(0);
        assert_ne!(d0.status & rx_status::DD, 0);
        assert_eq!(d0.errors, 0, "a stale RXE in a reused slot");
        assert_eq!(t.get(BUFS, 100), f);
        assert_eq!(t.r(stat::GPRC), 1, "read-to-clear: this frame alone");
        // A ring that cannot be fetched, or that wraps the address space: a missed
        // packet and a receiver overrun each.
        t.w(reg::RDBAL, 0xc000_0000);
        t.w(reg::RDH, 0);
        t.w(reg::RDT, 3);
        t.peer.send_frame(&f).expect("send");
        t.d.pump_rx();
        t.w(reg::RDBAH, 0xffff_ffff);
        t.w(reg::RDBAL, 0xffff_ff80);
        t.w(reg::RDH, 7);
        t.w(reg::RDT, 0);
        t.peer.send_frame(&f).expect("send");
        t.d.pump_rx();
        assert_eq!(t.r(stat::MPC), 2);
        assert_ne!(t.r(reg::ICR) & icr::RXO, 0);
        assert_eq!(t.counter(&["drops", "rx_dma"]), 1);
        assert_eq!(t.counter(&["drops", "rx_bad_ring"]), 1);
    }

    fn io_w(t: &mut Rig, off: u64, data: &[u8]) {
        t.d.region_write(1, off, data);
    }

    fn io_r(t: &mut Rig, off: u64, len: usize) -> u32 {
        let mut b = vec![0u8; len];
        t.d.region_read(1, off, &mut b);
        let mut v = [0u8; 4];
        let n = len.min(4);
        v[..n].copy_from_slice(&b[..n]);
        u32::from_le_bytes(v)
    }

    /// The I/O window (8254x SDM 13.2.2; QEMU's e1000 stubs it): IOADDR/IODATA reach
    /// BAR0's registers with their side effects; narrow writes, reserved offsets and an
    /// IOADDR beyond the register file are refused and counted, never reach a register.
    #[test]
    fn the_io_window_reaches_the_registers_and_refuses_the_rest() {
        let mut t = rig();
        let ral0 = t.r(reg::RAL0);
        io_w(&mut t, 0, &reg::RAL0.to_le_bytes());
        assert_eq!(io_r(&mut t, 0, 4), reg::RAL0, "IOADDR reads back");
        assert_eq!(io_r(&mut t, 4, 4), ral0, "IODATA reads RAL0");
        assert_eq!(io_r(&mut t, 6, 2), ral0 >> 16, "a narrow read: its bytes");
        assert_eq!(io_r(&mut t, 5, 1), (ral0 >> 8) & 0xff);
        // Writes land, with their side effects: IMS, ICS raises the line, reading ICR
        // through the window clears it.
        io_w(&mut t, 0, &reg::IMS.to_le_bytes());
        io_w(&mut t, 4, &icr::TXDW.to_le_bytes());
        assert_eq!(t.r(reg::IMS), icr::TXDW);
        io_w(&mut t, 0, &reg::ICS.to_le_bytes());
        io_w(&mut t, 4, &icr::TXDW.to_le_bytes());
        assert!(t.irq.up());
        io_w(&mut t, 0, &reg::ICR.to_le_bytes());
        assert_ne!(io_r(&mut t, 4, 4) & icr::TXDW, 0);
        assert!(!t.irq.up(), "the ICR read through IODATA cleared it");
        // An unaligned IOADDR names its dword.
        io_w(&mut t, 0, &(reg::RAL0 + 3).to_le_bytes());
        assert_eq!(io_r(&mut t, 4, 4), ral0);
        let (bad_access, bad_address) = (
            t.counter(&["errors", "io_bad_access"]),
            t.counter(&["errors", "io_bad_address"]),
        );
        assert_eq!((bad_access, bad_address), (0, 0));
        // Narrow writes are ignored, to IOADDR and to IODATA.
        io_w(&mut t, 0, &[0x08]);
        io_w(&mut t, 2, &[0x08, 0]);
        assert_eq!(io_r(&mut t, 0, 4), reg::RAL0 + 3);
        io_w(&mut t, 0, &reg::IMS.to_le_bytes());
        io_w(&mut t, 4, &[0xff, 0xff]);
        io_w(&mut t, 5, &[0xff]);
        assert_eq!(t.r(reg::IMS), icr::TXDW);
        // Beyond the register file: IODATA reads 0 and drops writes (a CTRL.RST
        // aliased at 2^17 would reset the device).
        for a in [hw::MMIO_SIZE as u32, 0x7_fffc, u32::MAX] {
            io_w(&mut t, 0, &a.to_le_bytes());
            assert_eq!(io_r(&mut t, 4, 4), 0);
            io_w(&mut t, 4, &ctrl::RST.to_le_bytes());
        }
        assert_eq!(t.counter(&["resets"]), 0);
        assert_eq!(t.r(reg::IMS), icr::TXDW);
        // Reserved offsets, and accesses that straddle IOADDR and IODATA.
        for off in [8u64, 0xc, 0x3c] {
            io_w(&mut t, off, &u32::MAX.to_le_bytes());
            assert_eq!(io_r(&mut t, off, 4), 0);
        }
        assert_eq!(io_r(&mut t, 2, 4), 0);
        assert_eq!(io_r(&mut t, 0, 8), 0);
        assert_eq!(
            t.counter(&["errors", "io_bad_access"]),
            4 + 3 * 2 + 2,
            "narrow writes, reserved offsets, straddling reads"
        );
        assert_eq!(t.counter(&["errors", "io_bad_address"]), 6);
        assert_eq!(t.r(reg::RAL0), ral0);
    }

    #[test]
    fn random_register_storms_do_not_panic() {
        for seed in 1..=4u64 {
            let mut t = rig();
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let hot = [
                reg::CTRL,
                reg::EECD,
                reg::EERD,
                reg::MDIC,
                reg::ICR,
                reg::ICS,
                reg::IMS,
                reg::IMC,
                reg::RCTL,
                reg::TCTL,
                reg::RDBAL,
                reg::RDBAH,
                reg::RDLEN,
                reg::RDH,
                reg::RDT,
                reg::TDBAL,
                reg::TDBAH,
                reg::TDLEN,
                reg::TDH,
                reg::TDT,
                reg::ITR,
            ];
            for _ in 0..5000 {
                let off = if rng.below(4) == 0 {
                    rng.below(hw::MMIO_SIZE + 16) as u32
                } else {
                    hot[rng.below(hot.len() as u64) as usize]
                };
                let val = match rng.below(4) {
                    0 => rng.next_u64() as u32,
                    1 => rng.below(RAM as u64) as u32,
                    2 => rng.below(64) as u32,
                    _ => 0,
                };
                match rng.below(10) {
                    0 => {
                        let mut b = vec![0u8; rng.below(9) as usize];
                        t.d.region_read(rng.below(3) as usize, off.into(), &mut b);
                    }
                    1 => {
                        let f = rng.bytes(2200);
                        let _ = t.peer.send_frame(&f);
                        t.d.pump_rx();
                    }
                    2 => {
                        let at = rng.below(RAM as u64 - 64);
                        let junk = rng.bytes(64);
                        t.put(at, &junk);
                    }
                    3 => {
                        t.d.poll_timers(Instant::now() + Duration::from_secs(1));
                    }
                    _ => t.w(off & !3, val),
                }
            }
            t.d.counters();
        }
    }

    #[test]
    fn the_worker_delivers_and_stops() {
        let t = rig();
        let Rig {
            mut d,
            peer,
            irq,
            mem,
        } = t;
        d.set_mitigation(true);
        let dev = Arc::new(Mutex::new(d));
        let worker = E1000Worker::start(dev.clone()).expect("start");
        {
            let mut d = lock(&dev);
            for i in 0..8u64 {
                let desc = RxDesc {
                    addr: BUFS + 0x800 * i,
                    ..Default::default()
                };
                mem.write_slice(&desc.to_bytes(), GuestAddress(RX_RING + 16 * i))
                    .expect("ram");
            }
            for (r, v) in [
                (reg::RDBAL, RX_RING as u32),
                (reg::RDLEN, 128),
                (reg::RCTL, rctl::EN | rctl::SECRC),
                (reg::IMS, icr::RXT0),
                (reg::RDT, 7),
            ] {
                d.region_write(0, r.into(), &v.to_le_bytes());
            }
        }
        let mut peer = peer;
        for i in 0..20u8 {
            peer.send_frame(&frame(64 + usize::from(i), i))
                .expect("send");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&dev).c.rx_frames < 7 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(irq.up());
        let stats = worker.stop();
        assert_eq!(stats["rx"]["frames"], 7, "{stats}");
        assert!(stats["rx"]["stalls_no_buffer"].as_u64().expect("n") >= 1);
    }
}
