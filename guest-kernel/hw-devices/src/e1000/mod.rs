//! The Intel 82540EM Gigabit Ethernet controller (8086:100E, QEMU's default `e1000`):
//! register offsets and bits, the 16-byte legacy receive and transmit descriptors, the
//! EEPROM and PHY layouts, shared by the guest's driver ([`driver`]) and host-shim's
//! model (`host_shim::devices::e1000`).
//!
//! Sources: Intel's "PCI/PCI-X Family of Gigabit Ethernet Controllers Software
//! Developer's Manual" (8254x SDM) chapters 3 (descriptors), 5 (EEPROM) and 13
//! (registers); Linux's `drivers/net/ethernet/intel/e1000/e1000_hw.h`; QEMU's
//! `hw/net/e1000.c` and `e1000_regs.h` for what the emulated part reports.
//!
//! The 82540EM's EERD differs from later parts: START is bit 0, DONE bit 4, the word
//! address starts at bit 8 and the data at bit 16 (82571 and later: DONE bit 1,
//! address shift 2). Mixing them up reads garbage.

pub mod driver;

pub use driver::{E1000, E1000Config, E1000Stats, InitError};

/// PCI vendor id (Intel).
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device id of the 82540EM.
pub const DEVICE_ID: u16 = 0x100e;
/// PCI revision QEMU reports.
pub const REVISION: u8 = 0x03;
/// Subsystem vendor id QEMU gives every device that sets none (Red Hat / Qumranet).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem id QEMU gives every device that sets none.
pub const SUBSYSTEM_ID: u16 = 0x1100;
/// Size of BAR0, the memory-mapped register file.
pub const MMIO_SIZE: u64 = 0x2_0000;
/// Size of BAR1, the I/O window (IOADDR at +0, IODATA at +4).
pub const IO_SIZE: u64 = 0x40;

/// Register offsets in BAR0 (8254x SDM table 13-2).
pub mod reg {
    /// Device control.
    pub const CTRL: u32 = 0x0000;
    /// Device status (read-only).
    pub const STATUS: u32 = 0x0008;
    /// EEPROM/flash control (Microwire bit-banging).
    pub const EECD: u32 = 0x0010;
    /// EEPROM read (82540EM layout: see [`super::eerd`]).
    pub const EERD: u32 = 0x0014;
    /// Extended device control.
    pub const CTRL_EXT: u32 = 0x0018;
    /// MDI control: PHY register access.
    pub const MDIC: u32 = 0x0020;
    /// Flow control address low.
    pub const FCAL: u32 = 0x0028;
    /// Flow control address high.
    pub const FCAH: u32 = 0x002c;
    /// Flow control type.
    pub const FCT: u32 = 0x0030;
    /// VLAN ether type.
    pub const VET: u32 = 0x0038;
    /// Interrupt cause read (clear on read).
    pub const ICR: u32 = 0x00c0;
    /// Interrupt throttling (256 ns units).
    pub const ITR: u32 = 0x00c4;
    /// Interrupt cause set.
    pub const ICS: u32 = 0x00c8;
    /// Interrupt mask set (reads the mask).
    pub const IMS: u32 = 0x00d0;
    /// Interrupt mask clear.
    pub const IMC: u32 = 0x00d8;
    /// Receive control.
    pub const RCTL: u32 = 0x0100;
    /// Flow control transmit timer value.
    pub const FCTTV: u32 = 0x0170;
    /// Transmit configuration word.
    pub const TXCW: u32 = 0x0178;
    /// Transmit control.
    pub const TCTL: u32 = 0x0400;
    /// Transmit inter-packet gap.
    pub const TIPG: u32 = 0x0410;
    /// LED control.
    pub const LEDCTL: u32 = 0x0e00;
    /// Packet buffer allocation.
    pub const PBA: u32 = 0x1000;
    /// Receive descriptor base address, low 32 bits.
    pub const RDBAL: u32 = 0x2800;
    /// Receive descriptor base address, high 32 bits.
    pub const RDBAH: u32 = 0x2804;
    /// Receive descriptor ring length in bytes (a multiple of 128).
    pub const RDLEN: u32 = 0x2808;
    /// Receive descriptor head.
    pub const RDH: u32 = 0x2810;
    /// Receive descriptor tail.
    pub const RDT: u32 = 0x2818;
    /// Receive delay timer (1.024 us units).
    pub const RDTR: u32 = 0x2820;
    /// Receive descriptor control.
    pub const RXDCTL: u32 = 0x2828;
    /// Receive absolute delay timer (1.024 us units).
    pub const RADV: u32 = 0x282c;
    /// Transmit descriptor base address, low 32 bits.
    pub const TDBAL: u32 = 0x3800;
    /// Transmit descriptor base address, high 32 bits.
    pub const TDBAH: u32 = 0x3804;
    /// Transmit descriptor ring length in bytes (a multiple of 128).
    pub const TDLEN: u32 = 0x3808;
    /// Transmit descriptor head.
    pub const TDH: u32 = 0x3810;
    /// Transmit descriptor tail.
    pub const TDT: u32 = 0x3818;
    /// Transmit interrupt delay value (1.024 us units).
    pub const TIDV: u32 = 0x3820;
    /// Transmit descriptor control.
    pub const TXDCTL: u32 = 0x3828;
    /// Transmit absolute interrupt delay (1.024 us units).
    pub const TADV: u32 = 0x382c;
    /// Receive checksum control.
    pub const RXCSUM: u32 = 0x5000;
    /// Multicast table array: 128 registers.
    pub const MTA: u32 = 0x5200;
    /// Entries of [`MTA`].
    pub const MTA_LEN: u32 = 128;
    /// Receive address low, entry 0 (MAC bytes 0-3).
    pub const RAL0: u32 = 0x5400;
    /// Receive address high, entry 0 (MAC bytes 4-5, [`super::rah::AV`]).
    pub const RAH0: u32 = 0x5404;
    /// Receive address table: 16 (RAL, RAH) pairs from [`RAL0`].
    pub const RA: u32 = RAL0;
    /// Pairs in [`RA`].
    pub const RA_ENTRIES: u32 = 16;
    /// VLAN filter table array: 128 registers.
    pub const VFTA: u32 = 0x5600;
    /// Wake-up control.
    pub const WUC: u32 = 0x5800;
    /// Wake-up filter control.
    pub const WUFC: u32 = 0x5808;
    /// Management control.
    pub const MANC: u32 = 0x5820;

    /// Statistics registers (SDM 13.7; every one clears when read; a 64-bit pair
    /// clears when its high half is read).
    pub mod stat {
        /// CRC error count.
        pub const CRCERRS: u32 = 0x4000;
        /// Alignment error count.
        pub const ALGNERRC: u32 = 0x4004;
        /// Symbol error count.
        pub const SYMERRS: u32 = 0x4008;
        /// Receive error count.
        pub const RXERRC: u32 = 0x400c;
        /// Missed packets count (no room in the receive FIFO / no descriptors).
        pub const MPC: u32 = 0x4010;
        /// Single collision count.
        pub const SCC: u32 = 0x4014;
        /// Excessive collisions count.
        pub const ECOL: u32 = 0x4018;
        /// Multiple collision count.
        pub const MCC: u32 = 0x401c;
        /// Late collisions count.
        pub const LATECOL: u32 = 0x4020;
        /// Collision count.
        pub const COLC: u32 = 0x4028;
        /// Defer count.
        pub const DC: u32 = 0x4030;
        /// Transmit with no CRS.
        pub const TNCRS: u32 = 0x4034;
        /// Sequence error count.
        pub const SEC: u32 = 0x4038;
        /// Carrier extension error count.
        pub const CEXTERR: u32 = 0x403c;
        /// Receive length error count.
        pub const RLEC: u32 = 0x4040;
        /// XON received count.
        pub const XONRXC: u32 = 0x4048;
        /// XON transmitted count.
        pub const XONTXC: u32 = 0x404c;
        /// XOFF received count.
        pub const XOFFRXC: u32 = 0x4050;
        /// XOFF transmitted count.
        pub const XOFFTXC: u32 = 0x4054;
        /// Flow control receive unsupported count.
        pub const FCRUC: u32 = 0x4058;
        /// Packets received of 64 bytes (with FCS).
        pub const PRC64: u32 = 0x405c;
        /// Packets received of 65-127 bytes.
        pub const PRC127: u32 = 0x4060;
        /// Packets received of 128-255 bytes.
        pub const PRC255: u32 = 0x4064;
        /// Packets received of 256-511 bytes.
        pub const PRC511: u32 = 0x4068;
        /// Packets received of 512-1023 bytes.
        pub const PRC1023: u32 = 0x406c;
        /// Packets received of 1024 bytes and more.
        pub const PRC1522: u32 = 0x4070;
        /// Good packets received.
        pub const GPRC: u32 = 0x4074;
        /// Broadcast packets received.
        pub const BPRC: u32 = 0x4078;
        /// Multicast packets received.
        pub const MPRC: u32 = 0x407c;
        /// Good packets transmitted.
        pub const GPTC: u32 = 0x4080;
        /// Good octets received, low.
        pub const GORCL: u32 = 0x4088;
        /// Good octets received, high.
        pub const GORCH: u32 = 0x408c;
        /// Good octets transmitted, low.
        pub const GOTCL: u32 = 0x4090;
        /// Good octets transmitted, high.
        pub const GOTCH: u32 = 0x4094;
        /// Receive no buffers count.
        pub const RNBC: u32 = 0x40a0;
        /// Receive undersize count.
        pub const RUC: u32 = 0x40a4;
        /// Receive fragment count.
        pub const RFC: u32 = 0x40a8;
        /// Receive oversize count.
        pub const ROC: u32 = 0x40ac;
        /// Receive jabber count.
        pub const RJC: u32 = 0x40b0;
        /// Management packets received.
        pub const MGTPRC: u32 = 0x40b4;
        /// Management packets dropped.
        pub const MGTPDC: u32 = 0x40b8;
        /// Management packets transmitted.
        pub const MGTPTC: u32 = 0x40bc;
        /// Total octets received, low.
        pub const TORL: u32 = 0x40c0;
        /// Total octets received, high.
        pub const TORH: u32 = 0x40c4;
        /// Total octets transmitted, low.
        pub const TOTL: u32 = 0x40c8;
        /// Total octets transmitted, high.
        pub const TOTH: u32 = 0x40cc;
        /// Total packets received.
        pub const TPR: u32 = 0x40d0;
        /// Total packets transmitted.
        pub const TPT: u32 = 0x40d4;
        /// Packets transmitted of 64 bytes (with FCS).
        pub const PTC64: u32 = 0x40d8;
        /// Packets transmitted of 65-127 bytes.
        pub const PTC127: u32 = 0x40dc;
        /// Packets transmitted of 128-255 bytes.
        pub const PTC255: u32 = 0x40e0;
        /// Packets transmitted of 256-511 bytes.
        pub const PTC511: u32 = 0x40e4;
        /// Packets transmitted of 512-1023 bytes.
        pub const PTC1023: u32 = 0x40e8;
        /// Packets transmitted of 1024 bytes and more.
        pub const PTC1522: u32 = 0x40ec;
        /// Multicast packets transmitted.
        pub const MPTC: u32 = 0x40f0;
        /// Broadcast packets transmitted.
        pub const BPTC: u32 = 0x40f4;
        /// TCP segmentation context transmitted.
        pub const TSCTC: u32 = 0x40f8;
        /// TCP segmentation context transmit failed.
        pub const TSCTFC: u32 = 0x40fc;
        /// First statistics register.
        pub const FIRST: u32 = CRCERRS;
        /// Last statistics register.
        pub const LAST: u32 = TSCTFC;
    }
}

/// CTRL bits.
pub mod ctrl {
    /// Full duplex.
    pub const FD: u32 = 1 << 0;
    /// Auto-speed detection enable.
    pub const ASDE: u32 = 1 << 5;
    /// Set link up.
    pub const SLU: u32 = 1 << 6;
    /// Speed selection: 1000 Mb/s.
    pub const SPD_1000: u32 = 2 << 8;
    /// Force speed.
    pub const FRCSPD: u32 = 1 << 11;
    /// Force duplex.
    pub const FRCDPX: u32 = 1 << 12;
    /// Software-definable pin 0.
    pub const SWDPIN0: u32 = 1 << 18;
    /// Software-definable pin 2.
    pub const SWDPIN2: u32 = 1 << 20;
    /// Device reset (self-clearing).
    pub const RST: u32 = 1 << 26;
    /// VLAN mode enable.
    pub const VME: u32 = 1 << 30;
    /// PHY reset.
    pub const PHY_RST: u32 = 1 << 31;
}

/// STATUS bits.
pub mod status {
    /// Full duplex.
    pub const FD: u32 = 1 << 0;
    /// Link up.
    pub const LU: u32 = 1 << 1;
    /// Transmission paused.
    pub const TXOFF: u32 = 1 << 4;
    /// Speed field (bits 6-7).
    pub const SPEED_MASK: u32 = 3 << 6;
    /// Speed: 1000 Mb/s.
    pub const SPEED_1000: u32 = 2 << 6;
    /// Auto-speed detection value (bits 8-9).
    pub const ASDV: u32 = 3 << 8;
    /// MTX clock running.
    pub const MTXCKOK: u32 = 1 << 10;
    /// GIO master enable (bus mastering allowed).
    pub const GIO_MASTER_ENABLE: u32 = 1 << 19;
}

/// EECD bits: the EEPROM's Microwire pins as software drives them.
pub mod eecd {
    /// Clock input to the EEPROM.
    pub const SK: u32 = 1 << 0;
    /// Chip select.
    pub const CS: u32 = 1 << 1;
    /// Data input to the EEPROM.
    pub const DI: u32 = 1 << 2;
    /// Data output from the EEPROM.
    pub const DO: u32 = 1 << 3;
    /// Flash write enable (bits 4-5).
    pub const FWE_MASK: u32 = 3 << 4;
    /// Request EEPROM access.
    pub const REQ: u32 = 1 << 6;
    /// EEPROM access granted.
    pub const GNT: u32 = 1 << 7;
    /// EEPROM present.
    pub const PRES: u32 = 1 << 8;
    /// EEPROM size: set = 256 words (8 address bits), clear = 64 words (6 bits).
    pub const SIZE: u32 = 1 << 9;
    /// Microwire READ opcode (3 bits, `110`).
    pub const OPCODE_READ: u32 = 0x6;
    /// Opcode bits of a Microwire command.
    pub const OPCODE_BITS: u32 = 3;
    /// Address bits of a 64-word Microwire EEPROM.
    pub const ADDRESS_BITS: u32 = 6;
}

/// EERD fields of the 82540EM (not the 82571+ layout).
pub mod eerd {
    /// Start a read.
    pub const START: u32 = 1 << 0;
    /// The read is done; data is valid.
    pub const DONE: u32 = 1 << 4;
    /// Shift of the word address.
    pub const ADDR_SHIFT: u32 = 8;
    /// Shift of the data word.
    pub const DATA_SHIFT: u32 = 16;
}

/// The EEPROM: 64 16-bit words (SDM table 5-2).
pub mod eeprom {
    /// Words in the EEPROM.
    pub const WORDS: usize = 64;
    /// Words 0-2: the Ethernet address, low byte first.
    pub const MAC_WORDS: core::ops::Range<usize> = 0..3;
    /// Initialization control word 1.
    pub const INIT_CONTROL1: usize = 0x0a;
    /// Subsystem id.
    pub const SUBSYSTEM_ID: usize = 0x0b;
    /// Subsystem vendor id.
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x0c;
    /// Device id.
    pub const DEVICE_ID: usize = 0x0d;
    /// Vendor id.
    pub const VENDOR_ID: usize = 0x0e;
    /// Initialization control word 2.
    pub const INIT_CONTROL2: usize = 0x0f;
    /// The checksum word: chosen so that words `0..=CHECKSUM` sum to [`SUM`].
    pub const CHECKSUM: usize = 0x3f;
    /// What words `0..=CHECKSUM` add up to (wrapping) in a valid image.
    pub const SUM: u16 = 0xbaba;

    /// The checksum word that makes `words[0..CHECKSUM]` valid.
    pub fn checksum(words: &[u16; WORDS]) -> u16 {
        let sum = words[..CHECKSUM]
            .iter()
            .fold(0u16, |a, &w| a.wrapping_add(w));
        SUM.wrapping_sub(sum)
    }

    /// Whether the image's words `0..=CHECKSUM` add up to [`SUM`].
    pub fn valid(words: &[u16; WORDS]) -> bool {
        words.iter().fold(0u16, |a, &w| a.wrapping_add(w)) == SUM
    }
}

/// MDIC fields.
pub mod mdic {
    /// Data (bits 0-15).
    pub const DATA_MASK: u32 = 0xffff;
    /// PHY register address (bits 16-20).
    pub const REG_SHIFT: u32 = 16;
    /// Mask of the register address.
    pub const REG_MASK: u32 = 0x1f << REG_SHIFT;
    /// PHY address (bits 21-25); the internal PHY is at 1.
    pub const PHY_SHIFT: u32 = 21;
    /// Mask of the PHY address.
    pub const PHY_MASK: u32 = 0x1f << PHY_SHIFT;
    /// Write operation.
    pub const OP_WRITE: u32 = 1 << 26;
    /// Read operation.
    pub const OP_READ: u32 = 1 << 27;
    /// The operation completed.
    pub const READY: u32 = 1 << 28;
    /// Raise MDAC when done.
    pub const INT_EN: u32 = 1 << 29;
    /// The operation failed (no PHY there, unknown register).
    pub const ERROR: u32 = 1 << 30;
    /// Address of the internal PHY.
    pub const PHY_ADDR: u32 = 1;
}

/// PHY (Marvell 88E1011 as QEMU reports it) registers and values.
pub mod phy {
    /// Basic mode control.
    pub const BMCR: u32 = 0x00;
    /// Basic mode status.
    pub const BMSR: u32 = 0x01;
    /// PHY identifier 1.
    pub const PHYID1: u32 = 0x02;
    /// PHY identifier 2.
    pub const PHYID2: u32 = 0x03;
    /// Auto-negotiation advertisement.
    pub const ANAR: u32 = 0x04;
    /// Link partner ability.
    pub const ANLPAR: u32 = 0x05;
    /// Auto-negotiation expansion.
    pub const ANER: u32 = 0x06;
    /// 1000BASE-T control.
    pub const CTRL1000: u32 = 0x09;
    /// 1000BASE-T status.
    pub const STAT1000: u32 = 0x0a;
    /// M88E1000 PHY specific control.
    pub const M88_SPEC_CTRL: u32 = 0x10;
    /// M88E1000 PHY specific status.
    pub const M88_SPEC_STATUS: u32 = 0x11;
    /// M88E1000 extended PHY specific control.
    pub const M88_EXT_SPEC_CTRL: u32 = 0x14;
    /// M88E1000 receive error counter.
    pub const M88_RX_ERR_CNTR: u32 = 0x15;

    /// PHYID1 of the 82540EM's PHY (Marvell OUI).
    pub const ID1: u16 = 0x0141;
    /// PHYID2 of the 82540EM's PHY (88E1011: id 0x01410C20 with revision 0).
    pub const ID2: u16 = 0x0c20;

    /// BMCR: restart auto-negotiation (self-clearing).
    pub const BMCR_ANRESTART: u16 = 1 << 9;
    /// BMCR: full duplex.
    pub const BMCR_FD: u16 = 1 << 8;
    /// BMCR: auto-negotiation enable.
    pub const BMCR_AUTOEN: u16 = 1 << 12;
    /// BMCR: speed 1000 (with bit 13 clear).
    pub const BMCR_SPEED1000: u16 = 1 << 6;
    /// BMCR: loopback.
    pub const BMCR_LOOPBACK: u16 = 1 << 14;
    /// BMCR: PHY reset (self-clearing).
    pub const BMCR_RESET: u16 = 1 << 15;

    /// BMSR: extended capabilities.
    pub const BMSR_EXTCAP: u16 = 1 << 0;
    /// BMSR: link up.
    pub const BMSR_LINK_ST: u16 = 1 << 2;
    /// BMSR: can auto-negotiate.
    pub const BMSR_AUTONEG: u16 = 1 << 3;
    /// BMSR: auto-negotiation complete.
    pub const BMSR_AN_COMP: u16 = 1 << 5;
    /// BMSR: management frames with preamble suppressed.
    pub const BMSR_MFPS: u16 = 1 << 6;
    /// BMSR: extended status in register 15.
    pub const BMSR_EXTSTAT: u16 = 1 << 8;
    /// BMSR: 10/100 half and full duplex abilities.
    pub const BMSR_10_100: u16 = 0xf << 11;
    /// BMSR with the link up and auto-negotiation complete.
    pub const BMSR_UP: u16 = BMSR_EXTCAP
        | BMSR_LINK_ST
        | BMSR_AUTONEG
        | BMSR_AN_COMP
        | BMSR_MFPS
        | BMSR_EXTSTAT
        | BMSR_10_100;
    /// ANLPAR: the link partner acknowledged.
    pub const ANLPAR_ACK: u16 = 1 << 14;
}

/// Interrupt cause bits (ICR, ICS, IMS, IMC).
pub mod icr {
    /// Transmit descriptor written back.
    pub const TXDW: u32 = 1 << 0;
    /// Transmit queue empty.
    pub const TXQE: u32 = 1 << 1;
    /// Link status change.
    pub const LSC: u32 = 1 << 2;
    /// Receive sequence error.
    pub const RXSEQ: u32 = 1 << 3;
    /// Receive descriptors below the minimum threshold.
    pub const RXDMT0: u32 = 1 << 4;
    /// Receiver overrun.
    pub const RXO: u32 = 1 << 6;
    /// Receiver timer (a frame was received).
    pub const RXT0: u32 = 1 << 7;
    /// MDI access complete.
    pub const MDAC: u32 = 1 << 9;
    /// Transmit descriptors low.
    pub const TXD_LOW: u32 = 1 << 15;
    /// Causes the model can raise.
    pub const ALL: u32 = 0x0001_ffff;
}

/// RCTL bits.
pub mod rctl {
    /// Receiver enable.
    pub const EN: u32 = 1 << 1;
    /// Store bad packets.
    pub const SBP: u32 = 1 << 2;
    /// Unicast promiscuous.
    pub const UPE: u32 = 1 << 3;
    /// Multicast promiscuous.
    pub const MPE: u32 = 1 << 4;
    /// Long packet enable.
    pub const LPE: u32 = 1 << 5;
    /// Receive descriptor minimum threshold (bits 8-9): 1/2, 1/4, 1/8 of the ring.
    pub const RDMTS_SHIFT: u32 = 8;
    /// Multicast offset (bits 12-13).
    pub const MO_SHIFT: u32 = 12;
    /// Broadcast accept mode.
    pub const BAM: u32 = 1 << 15;
    /// Buffer size (bits 16-17): with BSEX clear 2048, 1024, 512, 256; with BSEX set
    /// (reserved), 16384, 8192, 4096.
    pub const BSIZE_SHIFT: u32 = 16;
    /// Mask of the buffer size field.
    pub const BSIZE_MASK: u32 = 3 << BSIZE_SHIFT;
    /// Buffer size 2048 (BSEX clear).
    pub const BSIZE_2048: u32 = 0;
    /// VLAN filter enable.
    pub const VFE: u32 = 1 << 18;
    /// Buffer size extension (multiplies BSIZE by 16).
    pub const BSEX: u32 = 1 << 25;
    /// Strip the Ethernet CRC from received frames.
    pub const SECRC: u32 = 1 << 26;

    /// Receive buffer size that `rctl` selects (SDM 13.4.22).
    pub const fn buffer_size(rctl: u32) -> usize {
        let sz = (rctl & BSIZE_MASK) >> BSIZE_SHIFT;
        if rctl & BSEX != 0 {
            match sz {
                1 => 16384,
                2 => 8192,
                3 => 4096,
                _ => 2048,
            }
        } else {
            match sz {
                1 => 1024,
                2 => 512,
                3 => 256,
                _ => 2048,
            }
        }
    }
}

/// TCTL bits.
pub mod tctl {
    /// Transmit enable.
    pub const EN: u32 = 1 << 1;
    /// Pad short packets.
    pub const PSP: u32 = 1 << 3;
    /// Collision threshold (bits 4-11).
    pub const CT_SHIFT: u32 = 4;
    /// Collision distance (bits 12-21).
    pub const COLD_SHIFT: u32 = 12;
    /// Re-transmit on late collision.
    pub const RTLC: u32 = 1 << 24;
    /// Linux's collision threshold.
    pub const CT_DEFAULT: u32 = 0x0f;
    /// Linux's full-duplex collision distance.
    pub const COLD_FULL_DUPLEX: u32 = 0x3f;
}

/// TIPG values Linux programs for copper 82540EM parts.
pub mod tipg {
    /// IPGT.
    pub const IPGT_COPPER: u32 = 8;
    /// IPGR1 (bits 10-19).
    pub const IPGR1: u32 = 8 << 10;
    /// IPGR2 (bits 20-29).
    pub const IPGR2: u32 = 6 << 20;
}

/// RAH bits.
pub mod rah {
    /// Address valid.
    pub const AV: u32 = 1 << 31;
}

/// Size of one descriptor (receive, transmit, or context).
pub const DESC_SIZE: usize = 16;
/// Ring lengths (RDLEN, TDLEN) are multiples of this many bytes (8 descriptors).
pub const RING_ALIGN: usize = 128;
/// Descriptors the largest ring holds (RDLEN/TDLEN keep bits 7-19).
pub const MAX_RING_DESCS: usize = 0xf_ff80 / DESC_SIZE;
/// Mask the device applies to RDLEN/TDLEN writes.
pub const DLEN_MASK: u32 = 0xf_ff80;
/// Largest frame the 82540EM takes (16 KiB jumbo frames, FCS included).
pub const MAX_FRAME_HW: usize = 16 * 1024;

/// A legacy receive descriptor (SDM 3.2.3).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxDesc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Bytes written to the buffer (device-written).
    pub length: u16,
    /// Packet checksum (device-written).
    pub csum: u16,
    /// Status, see [`rx_status`] (device-written).
    pub status: u8,
    /// Errors, see [`rx_errors`] (device-written).
    pub errors: u8,
    /// VLAN tag (device-written).
    pub special: u16,
}
const _: () = assert!(core::mem::size_of::<RxDesc>() == DESC_SIZE);

impl RxDesc {
    /// Offset of `length`.
    pub const LENGTH: usize = 8;
    /// Offset of `status`.
    pub const STATUS: usize = 12;
    /// Offset of `errors`.
    pub const ERRORS: usize = 13;

    /// The descriptor's little-endian bytes.
    pub fn to_bytes(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..10].copy_from_slice(&self.length.to_le_bytes());
        b[10..12].copy_from_slice(&self.csum.to_le_bytes());
        b[12] = self.status;
        b[13] = self.errors;
        b[14..16].copy_from_slice(&self.special.to_le_bytes());
        b
    }

    /// Parses a descriptor.
    pub fn from_bytes(b: &[u8; DESC_SIZE]) -> Self {
        Self {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            length: u16::from_le_bytes([b[8], b[9]]),
            csum: u16::from_le_bytes([b[10], b[11]]),
            status: b[12],
            errors: b[13],
            special: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// Receive descriptor status bits.
pub mod rx_status {
    /// Descriptor done.
    pub const DD: u8 = 1 << 0;
    /// End of packet.
    pub const EOP: u8 = 1 << 1;
    /// Ignore checksum indication.
    pub const IXSM: u8 = 1 << 2;
    /// 802.1Q tagged.
    pub const VP: u8 = 1 << 3;
    /// TCP checksum calculated.
    pub const TCPCS: u8 = 1 << 5;
    /// IP checksum calculated.
    pub const IPCS: u8 = 1 << 6;
}

/// Receive descriptor error bits.
pub mod rx_errors {
    /// CRC or alignment error.
    pub const CE: u8 = 1 << 0;
    /// Symbol error.
    pub const SE: u8 = 1 << 1;
    /// Sequence error.
    pub const SEQ: u8 = 1 << 2;
    /// Carrier extension error.
    pub const CXE: u8 = 1 << 4;
    /// TCP/UDP checksum error.
    pub const TCPE: u8 = 1 << 5;
    /// IP checksum error.
    pub const IPE: u8 = 1 << 6;
    /// Data error.
    pub const RXE: u8 = 1 << 7;
}

/// A legacy transmit descriptor (SDM 3.3.3), also the layout of an extended data
/// descriptor (`cmd` has [`tx_cmd::DEXT`], `length`'s high bits and `cso` hold
/// DTYP, `css` holds POPTS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxDesc {
    /// Guest-physical address of the data.
    pub addr: u64,
    /// Bytes of data at `addr`.
    pub length: u16,
    /// Checksum offset (legacy) / DTYP in bits 4-7 (extended).
    pub cso: u8,
    /// Command, see [`tx_cmd`].
    pub cmd: u8,
    /// Status, see [`tx_status`] (device-written).
    pub status: u8,
    /// Checksum start (legacy) / POPTS (extended data), see [`popts`].
    pub css: u8,
    /// VLAN tag.
    pub special: u16,
}
const _: () = assert!(core::mem::size_of::<TxDesc>() == DESC_SIZE);

impl TxDesc {
    /// Offset of `status`.
    pub const STATUS: usize = 12;

    /// The descriptor's little-endian bytes.
    pub fn to_bytes(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..10].copy_from_slice(&self.length.to_le_bytes());
        b[10] = self.cso;
        b[11] = self.cmd;
        b[12] = self.status;
        b[13] = self.css;
        b[14..16].copy_from_slice(&self.special.to_le_bytes());
        b
    }

    /// Parses a descriptor.
    pub fn from_bytes(b: &[u8; DESC_SIZE]) -> Self {
        Self {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            length: u16::from_le_bytes([b[8], b[9]]),
            cso: b[10],
            cmd: b[11],
            status: b[12],
            css: b[13],
            special: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// The descriptor type of an extended descriptor (bits 20-23 of the second dword).
    pub fn dtyp(&self) -> u8 {
        self.cso >> 4
    }
}

/// A TCP/IP context descriptor (SDM 3.3.6): checksum offsets for the data
/// descriptors that follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxContextDesc {
    /// IP checksum start.
    pub ipcss: u8,
    /// IP checksum offset (where the sum goes).
    pub ipcso: u8,
    /// IP checksum end (0: to the end of the frame).
    pub ipcse: u16,
    /// TCP/UDP checksum start.
    pub tucss: u8,
    /// TCP/UDP checksum offset.
    pub tucso: u8,
    /// TCP/UDP checksum end (0: to the end).
    pub tucse: u16,
    /// Payload length (bits 0-19), DTYP (20-23), command (24-31).
    pub cmd_and_length: u32,
    /// Status (device-written).
    pub status: u8,
    /// TSO header length.
    pub hdr_len: u8,
    /// TSO maximum segment size.
    pub mss: u16,
}
const _: () = assert!(core::mem::size_of::<TxContextDesc>() == DESC_SIZE);

impl TxContextDesc {
    /// Parses a descriptor.
    pub fn from_bytes(b: &[u8; DESC_SIZE]) -> Self {
        Self {
            ipcss: b[0],
            ipcso: b[1],
            ipcse: u16::from_le_bytes([b[2], b[3]]),
            tucss: b[4],
            tucso: b[5],
            tucse: u16::from_le_bytes([b[6], b[7]]),
            cmd_and_length: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            status: b[12],
            hdr_len: b[13],
            mss: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// The descriptor's little-endian bytes.
    pub fn to_bytes(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0] = self.ipcss;
        b[1] = self.ipcso;
        b[2..4].copy_from_slice(&self.ipcse.to_le_bytes());
        b[4] = self.tucss;
        b[5] = self.tucso;
        b[6..8].copy_from_slice(&self.tucse.to_le_bytes());
        b[8..12].copy_from_slice(&self.cmd_and_length.to_le_bytes());
        b[12] = self.status;
        b[13] = self.hdr_len;
        b[14..16].copy_from_slice(&self.mss.to_le_bytes());
        b
    }
}

/// Transmit command bits (the `cmd` byte).
pub mod tx_cmd {
    /// End of packet.
    pub const EOP: u8 = 1 << 0;
    /// Insert FCS.
    pub const IFCS: u8 = 1 << 1;
    /// Insert checksum (legacy descriptors).
    pub const IC: u8 = 1 << 2;
    /// Report status: write DD back.
    pub const RS: u8 = 1 << 3;
    /// Report packet sent.
    pub const RPS: u8 = 1 << 4;
    /// Extended descriptor (context or data).
    pub const DEXT: u8 = 1 << 5;
    /// VLAN packet enable.
    pub const VLE: u8 = 1 << 6;
    /// Interrupt delay enable (TIDV/TADV apply).
    pub const IDE: u8 = 1 << 7;
    /// Context descriptor command: TCP segmentation enable.
    pub const TSE: u8 = 1 << 2;
}

/// Extended descriptor types (`TxDesc::dtyp`).
pub mod dtyp {
    /// Context descriptor.
    pub const CONTEXT: u8 = 0;
    /// Data descriptor.
    pub const DATA: u8 = 1;
}

/// POPTS of an extended data descriptor.
pub mod popts {
    /// Insert the IP checksum.
    pub const IXSM: u8 = 1 << 0;
    /// Insert the TCP/UDP checksum.
    pub const TXSM: u8 = 1 << 1;
}

/// Transmit descriptor status bits.
pub mod tx_status {
    /// Descriptor done.
    pub const DD: u8 = 1 << 0;
    /// Excess collisions.
    pub const EC: u8 = 1 << 1;
    /// Late collision.
    pub const LC: u8 = 1 << 2;
    /// Transmit underrun.
    pub const TU: u8 = 1 << 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip() {
        let rx = RxDesc {
            addr: 0x1122_3344_5566_7788,
            length: 1514,
            csum: 0xabcd,
            status: rx_status::DD | rx_status::EOP,
            errors: rx_errors::CE,
            special: 7,
        };
        let b = rx.to_bytes();
        assert_eq!(b[RxDesc::STATUS], 3);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 1514);
        assert_eq!(RxDesc::from_bytes(&b), rx);
        let tx = TxDesc {
            addr: 0xdead_beef,
            length: 60,
            cso: 0x10,
            cmd: tx_cmd::EOP | tx_cmd::RS | tx_cmd::DEXT,
            status: 0,
            css: popts::TXSM,
            special: 0,
        };
        assert_eq!(tx.dtyp(), dtyp::DATA);
        assert_eq!(TxDesc::from_bytes(&tx.to_bytes()), tx);
        let ctx = TxContextDesc {
            ipcss: 14,
            ipcso: 24,
            ipcse: 33,
            tucss: 34,
            tucso: 40,
            tucse: 0,
            cmd_and_length: u32::from(tx_cmd::DEXT) << 24,
            status: 0,
            hdr_len: 0,
            mss: 0,
        };
        assert_eq!(TxContextDesc::from_bytes(&ctx.to_bytes()), ctx);
    }

    #[test]
    fn eeprom_checksum_sums_to_baba() {
        let mut w = [0xffffu16; eeprom::WORDS];
        w[0] = 0x5452;
        w[eeprom::CHECKSUM] = eeprom::checksum(&w);
        assert!(eeprom::valid(&w));
        w[1] ^= 1;
        assert!(!eeprom::valid(&w));
    }

    #[test]
    fn buffer_sizes_follow_bsize_and_bsex() {
        assert_eq!(rctl::buffer_size(0), 2048);
        assert_eq!(rctl::buffer_size(3 << 16), 256);
        assert_eq!(rctl::buffer_size(rctl::BSEX | 1 << 16), 16384);
        assert_eq!(rctl::buffer_size(rctl::BSEX), 2048);
        assert_eq!(eerd::DONE, 0x10);
        assert_eq!(phy::BMSR_UP, 0x796d);
    }
}
