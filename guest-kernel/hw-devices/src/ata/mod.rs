//! ATA/ATAPI-6 task-file interface of a PIIX3 IDE controller (Intel 82371SB, 8086:7010)
//! in compatibility mode, and its SFF-8038i bus-master DMA block: the register offsets,
//! bits, commands, PRD entry and IDENTIFY DEVICE words that both the guest's driver
//! ([`driver`]) and host-shim's model (`host_shim::devices::ide`) use.
//!
//! Sources: ATA/ATAPI-6 (T13/1410D) sections 6-8 (registers, commands) and 8.15
//! (IDENTIFY DEVICE words); SFF-8038i rev 1.0 (bus-master IDE); the PIIX3 datasheet
//! (compatibility-mode ports and BMIBA); QEMU's `hw/ide/core.c` and `hw/ide/pci.c`
//! for what an emulated disk answers.

pub mod driver;

pub use driver::{AtaConfig, AtaDisk, AtaError, AtaMode, AtaPorts};

/// Bytes per sector (the only sector size this interface uses).
pub const SECTOR_SIZE: usize = 512;

/// Task-file base of the primary channel (8 ports).
pub const PRIMARY_TASK_FILE: u16 = 0x1f0;
/// Device control / alternate status port of the primary channel.
pub const PRIMARY_CONTROL: u16 = 0x3f6;
/// ISA IRQ of the primary channel.
pub const PRIMARY_IRQ: u8 = 14;
/// Task-file base of the secondary channel.
pub const SECONDARY_TASK_FILE: u16 = 0x170;
/// Device control / alternate status port of the secondary channel.
pub const SECONDARY_CONTROL: u16 = 0x376;
/// ISA IRQ of the secondary channel.
pub const SECONDARY_IRQ: u8 = 15;
/// Ports of one task file.
pub const TASK_FILE_LEN: u16 = 8;
/// The control port sits this far above its channel's task-file base.
pub const CONTROL_OFFSET: u16 = 0x206;

/// Task-file register offsets from the channel's base.
pub mod reg {
    /// Data (16 bits; 32-bit accesses move two words).
    pub const DATA: u16 = 0;
    /// Error (read).
    pub const ERROR: u16 = 1;
    /// Features (write).
    pub const FEATURES: u16 = 1;
    /// Sector count.
    pub const SECTOR_COUNT: u16 = 2;
    /// LBA bits 0-7 (sector number).
    pub const LBA_LOW: u16 = 3;
    /// LBA bits 8-15 (cylinder low).
    pub const LBA_MID: u16 = 4;
    /// LBA bits 16-23 (cylinder high).
    pub const LBA_HIGH: u16 = 5;
    /// Device/head: see [`super::device`].
    pub const DEVICE: u16 = 6;
    /// Status (read; reading it clears the pending interrupt).
    pub const STATUS: u16 = 7;
    /// Command (write).
    pub const COMMAND: u16 = 7;
}

/// Status register bits (also the alternate status).
pub mod status {
    /// Busy: no other bit is valid.
    pub const BSY: u8 = 0x80;
    /// Device ready.
    pub const DRDY: u8 = 0x40;
    /// Device fault.
    pub const DF: u8 = 0x20;
    /// Seek complete (obsolete, still set by disks).
    pub const DSC: u8 = 0x10;
    /// Data request: the data port has (or wants) a block.
    pub const DRQ: u8 = 0x08;
    /// Corrected data (obsolete).
    pub const CORR: u8 = 0x04;
    /// Index (obsolete).
    pub const IDX: u8 = 0x02;
    /// Error: see the error register.
    pub const ERR: u8 = 0x01;
}

/// Error register bits.
pub mod error {
    /// Interface CRC error (Ultra DMA).
    pub const ICRC: u8 = 0x80;
    /// Uncorrectable data.
    pub const UNC: u8 = 0x40;
    /// Media changed.
    pub const MC: u8 = 0x20;
    /// ID not found: the address is outside the device.
    pub const IDNF: u8 = 0x10;
    /// Media change request.
    pub const MCR: u8 = 0x08;
    /// Command aborted.
    pub const ABRT: u8 = 0x04;
    /// Track 0 not found.
    pub const TK0NF: u8 = 0x02;
    /// Address mark not found.
    pub const AMNF: u8 = 0x01;
    /// After a reset or EXECUTE DEVICE DIAGNOSTIC: the diagnostic code "device 0
    /// passed, device 1 passed or not present".
    pub const DIAG_PASSED: u8 = 0x01;
}

/// Device/head register bits.
pub mod device {
    /// Obsolete bits 7 and 5, set by convention.
    pub const OBS: u8 = 0xa0;
    /// LBA addressing (else CHS).
    pub const LBA: u8 = 0x40;
    /// Selects device 1 (the slave).
    pub const DEV1: u8 = 0x10;
    /// LBA bits 24-27 in LBA28 mode, the head in CHS mode.
    pub const HEAD_MASK: u8 = 0x0f;
}

/// Device control register bits (write-only; reads of the port give alternate status).
pub mod control {
    /// High-order byte: task-file reads return the previous (LBA48 "HOB") values.
    pub const HOB: u8 = 0x80;
    /// Software reset of both devices on the channel, held while set.
    pub const SRST: u8 = 0x04;
    /// Interrupt disable (INTRQ is not driven while set).
    pub const NIEN: u8 = 0x02;
}

/// Command codes.
pub mod cmd {
    /// DEVICE RESET (packet devices only; a disk aborts it).
    pub const DEVICE_RESET: u8 = 0x08;
    /// RECALIBRATE (obsolete; completes).
    pub const RECALIBRATE: u8 = 0x10;
    /// READ SECTORS (PIO, LBA28).
    pub const READ_SECTORS: u8 = 0x20;
    /// READ SECTORS without retry (obsolete alias).
    pub const READ_SECTORS_NORETRY: u8 = 0x21;
    /// READ SECTORS EXT (PIO, LBA48).
    pub const READ_SECTORS_EXT: u8 = 0x24;
    /// READ DMA EXT (LBA48).
    pub const READ_DMA_EXT: u8 = 0x25;
    /// READ NATIVE MAX ADDRESS EXT.
    pub const READ_NATIVE_MAX_EXT: u8 = 0x27;
    /// READ MULTIPLE EXT.
    pub const READ_MULTIPLE_EXT: u8 = 0x29;
    /// WRITE SECTORS (PIO, LBA28).
    pub const WRITE_SECTORS: u8 = 0x30;
    /// WRITE SECTORS without retry (obsolete alias).
    pub const WRITE_SECTORS_NORETRY: u8 = 0x31;
    /// WRITE SECTORS EXT (PIO, LBA48).
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    /// WRITE DMA EXT (LBA48).
    pub const WRITE_DMA_EXT: u8 = 0x35;
    /// WRITE MULTIPLE EXT.
    pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
    /// WRITE VERIFY (obsolete; a PIO write).
    pub const WRITE_VERIFY: u8 = 0x3c;
    /// READ VERIFY SECTORS.
    pub const READ_VERIFY: u8 = 0x40;
    /// READ VERIFY SECTORS without retry.
    pub const READ_VERIFY_NORETRY: u8 = 0x41;
    /// READ VERIFY SECTORS EXT.
    pub const READ_VERIFY_EXT: u8 = 0x42;
    /// SEEK (obsolete; completes).
    pub const SEEK: u8 = 0x70;
    /// EXECUTE DEVICE DIAGNOSTIC.
    pub const EXECUTE_DIAGNOSTIC: u8 = 0x90;
    /// INITIALIZE DEVICE PARAMETERS (CHS translation; completes).
    pub const INITIALIZE_DEVICE_PARAMETERS: u8 = 0x91;
    /// PACKET (packet devices only).
    pub const PACKET: u8 = 0xa0;
    /// IDENTIFY PACKET DEVICE (a disk aborts it: that is how a host tells them apart).
    pub const IDENTIFY_PACKET: u8 = 0xa1;
    /// SMART (not offered by the model; aborted).
    pub const SMART: u8 = 0xb0;
    /// READ MULTIPLE (PIO, blocks of the multiple count).
    pub const READ_MULTIPLE: u8 = 0xc4;
    /// WRITE MULTIPLE.
    pub const WRITE_MULTIPLE: u8 = 0xc5;
    /// SET MULTIPLE MODE (sector count = sectors per DRQ block, a power of two).
    pub const SET_MULTIPLE: u8 = 0xc6;
    /// READ DMA (LBA28).
    pub const READ_DMA: u8 = 0xc8;
    /// READ DMA without retry (obsolete alias).
    pub const READ_DMA_NORETRY: u8 = 0xc9;
    /// WRITE DMA (LBA28).
    pub const WRITE_DMA: u8 = 0xca;
    /// WRITE DMA without retry (obsolete alias).
    pub const WRITE_DMA_NORETRY: u8 = 0xcb;
    /// STANDBY IMMEDIATE.
    pub const STANDBY_IMMEDIATE: u8 = 0xe0;
    /// IDLE IMMEDIATE.
    pub const IDLE_IMMEDIATE: u8 = 0xe1;
    /// STANDBY.
    pub const STANDBY: u8 = 0xe2;
    /// IDLE.
    pub const IDLE: u8 = 0xe3;
    /// CHECK POWER MODE (sector count := 0xFF, active).
    pub const CHECK_POWER_MODE: u8 = 0xe5;
    /// SLEEP.
    pub const SLEEP: u8 = 0xe6;
    /// FLUSH CACHE.
    pub const FLUSH_CACHE: u8 = 0xe7;
    /// FLUSH CACHE EXT.
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
    /// IDENTIFY DEVICE.
    pub const IDENTIFY: u8 = 0xec;
    /// SET FEATURES (features register: see [`super::features`]).
    pub const SET_FEATURES: u8 = 0xef;
    /// SECURITY FREEZE LOCK (completes).
    pub const SECURITY_FREEZE_LOCK: u8 = 0xf5;
    /// READ NATIVE MAX ADDRESS (LBA28).
    pub const READ_NATIVE_MAX: u8 = 0xf8;
}

/// SET FEATURES subcommands (features register) and transfer-mode values (sector
/// count register of [`SET_TRANSFER_MODE`]).
pub mod features {
    /// Enable the volatile write cache.
    pub const ENABLE_WRITE_CACHE: u8 = 0x02;
    /// Set the transfer mode to the sector count's value.
    pub const SET_TRANSFER_MODE: u8 = 0x03;
    /// Disable the volatile write cache (flushes it).
    pub const DISABLE_WRITE_CACHE: u8 = 0x82;
    /// Transfer mode: PIO default.
    pub const XFER_PIO_DEFAULT: u8 = 0x00;
    /// Transfer mode: PIO flow-control mode n (`| n`).
    pub const XFER_PIO: u8 = 0x08;
    /// Transfer mode: multiword DMA mode n (`| n`).
    pub const XFER_MWDMA: u8 = 0x20;
    /// Transfer mode: Ultra DMA mode n (`| n`).
    pub const XFER_UDMA: u8 = 0x40;
}

/// Sectors one LBA28 command moves at most (a sector count of 0 means 256).
pub const LBA28_MAX_COUNT: u32 = 256;
/// Sectors one LBA48 command moves at most (a sector count of 0 means 65536).
pub const LBA48_MAX_COUNT: u32 = 65536;
/// Sectors LBA28 can address (IDENTIFY words 60-61 stop at `LBA28_LIMIT - 1`).
pub const LBA28_LIMIT: u64 = 1 << 28;
/// Sectors LBA48 can address.
pub const LBA48_LIMIT: u64 = 1 << 48;

/// The bus-master IDE block (BAR4 of the PIIX IDE function, SFF-8038i): 8 bytes per
/// channel, primary first.
pub mod bm {
    /// BAR index of the block.
    pub const BAR_INDEX: usize = 4;
    /// Size of the block (both channels).
    pub const BAR_SIZE: u64 = 16;
    /// Offset of the secondary channel's registers.
    pub const SECONDARY: u16 = 8;
    /// Command register (8 bits): see [`command`].
    pub const COMMAND: u16 = 0;
    /// Status register (8 bits): see [`status`].
    pub const STATUS: u16 = 2;
    /// PRD table address (32 bits, dword aligned; bits 0-1 read as zero).
    pub const PRD_TABLE: u16 = 4;

    /// Bus-master command bits.
    pub mod command {
        /// Start (1) / stop (0) the bus master.
        pub const START: u8 = 0x01;
        /// Direction: 1 = device to memory (a read command), 0 = memory to device.
        pub const READ: u8 = 0x08;
        /// The bits that are stored.
        pub const MASK: u8 = START | READ;
    }

    /// Bus-master status bits.
    pub mod status {
        /// Active: the PRD table is not exhausted (read-only).
        pub const ACTIVE: u8 = 0x01;
        /// Error: a DMA transfer failed (write 1 to clear).
        pub const ERROR: u8 = 0x02;
        /// Interrupt: the device raised INTRQ (write 1 to clear).
        pub const INTERRUPT: u8 = 0x04;
        /// Drive 0 is DMA capable (read-write, set by firmware).
        pub const DRIVE0_DMA: u8 = 0x20;
        /// Drive 1 is DMA capable.
        pub const DRIVE1_DMA: u8 = 0x40;
        /// Simplex: only one channel may DMA at a time (read-only; 0 on PIIX).
        pub const SIMPLEX: u8 = 0x80;
        /// Write-1-to-clear bits.
        pub const W1C: u8 = ERROR | INTERRUPT;
        /// Plain read-write bits.
        pub const RW: u8 = DRIVE0_DMA | DRIVE1_DMA;
    }
}

/// One physical region descriptor: a memory region of a DMA transfer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrdEntry {
    /// Physical address (bit 0 must be zero).
    pub addr: u32,
    /// Byte count (bit 0 must be zero; 0 means 64 KiB).
    pub count: u16,
    /// Flags: [`PRD_EOT`].
    pub flags: u16,
}

const _: () = assert!(core::mem::size_of::<PrdEntry>() == 8);

impl PrdEntry {
    /// The entry as the device reads it from memory.
    pub const fn to_bytes(self) -> [u8; 8] {
        let a = self.addr.to_le_bytes();
        let c = self.count.to_le_bytes();
        let f = self.flags.to_le_bytes();
        [a[0], a[1], a[2], a[3], c[0], c[1], f[0], f[1]]
    }

    /// Parses an entry read from memory.
    pub const fn from_bytes(b: [u8; 8]) -> Self {
        Self {
            addr: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            count: u16::from_le_bytes([b[4], b[5]]),
            flags: u16::from_le_bytes([b[6], b[7]]),
        }
    }

    /// Bytes the entry covers as the device counts them (bit 0 ignored, 0 = 64 KiB).
    pub const fn bytes(self) -> u32 {
        match self.count & !1 {
            0 => PRD_MAX_BYTES,
            n => n as u32,
        }
    }

    /// Whether this is the last entry of its table.
    pub const fn end_of_table(self) -> bool {
        self.flags & PRD_EOT != 0
    }
}

/// Flag of the last entry of a PRD table.
pub const PRD_EOT: u16 = 0x8000;
/// Largest region of one PRD entry.
pub const PRD_MAX_BYTES: u32 = 0x1_0000;
/// A PRD region must not cross a multiple of this.
pub const PRD_BOUNDARY: u64 = 0x1_0000;
/// Bytes of PRD table a device reads at most before it gives up (QEMU's fail-safe of
/// one page: 512 entries).
pub const PRD_TABLE_MAX_BYTES: u64 = 4096;

/// IDENTIFY DEVICE: word offsets and bits used here (ATA/ATAPI-6 section 8.15).
pub mod id {
    /// Words in the IDENTIFY data.
    pub const WORDS: usize = 256;
    /// General configuration; bit 15 set = not an ATA device.
    pub const CONFIG: usize = 0;
    /// Bit of [`CONFIG`]: ATAPI (packet) device.
    pub const CONFIG_NOT_ATA: u16 = 1 << 15;
    /// Default cylinders (CHS).
    pub const CYLINDERS: usize = 1;
    /// Default heads.
    pub const HEADS: usize = 3;
    /// Default sectors per track.
    pub const SECTORS_PER_TRACK: usize = 6;
    /// Serial number: 20 ASCII characters, two per word, first in the high byte.
    pub const SERIAL: usize = 10;
    /// Words of [`SERIAL`].
    pub const SERIAL_WORDS: usize = 10;
    /// Firmware revision: 8 characters.
    pub const FIRMWARE: usize = 23;
    /// Words of [`FIRMWARE`].
    pub const FIRMWARE_WORDS: usize = 4;
    /// Model number: 40 characters.
    pub const MODEL: usize = 27;
    /// Words of [`MODEL`].
    pub const MODEL_WORDS: usize = 20;
    /// Maximum sectors per READ/WRITE MULTIPLE block (low byte; high byte 0x80).
    pub const MAX_MULTIPLE: usize = 47;
    /// Capabilities.
    pub const CAPABILITIES: usize = 49;
    /// Bit of [`CAPABILITIES`]: DMA supported.
    pub const CAP_DMA: u16 = 1 << 8;
    /// Bit of [`CAPABILITIES`]: LBA supported.
    pub const CAP_LBA: u16 = 1 << 9;
    /// Bit of [`CAPABILITIES`]: IORDY supported.
    pub const CAP_IORDY: u16 = 1 << 11;
    /// Which of words 54-58 (bit 0), 64-70 (bit 1) and 88 (bit 2) are valid.
    pub const FIELD_VALID: usize = 53;
    /// Bit of [`FIELD_VALID`]: word 88 is valid.
    pub const FIELD_VALID_88: u16 = 1 << 2;
    /// Current multiple setting (bit 8: valid; low byte: sectors).
    pub const MULTIPLE_SETTING: usize = 59;
    /// LBA28 addressable sectors, low word first (words 60-61).
    pub const LBA28_SECTORS: usize = 60;
    /// Multiword DMA modes (low byte: supported, high byte: selected).
    pub const MWDMA_MODES: usize = 63;
    /// Advanced PIO modes supported.
    pub const PIO_MODES: usize = 64;
    /// Major version (bit n: ATA-n supported).
    pub const MAJOR_VERSION: usize = 80;
    /// Command sets supported (1): bit 5 write cache, bit 14 NOP.
    pub const COMMAND_SET_1: usize = 82;
    /// Command sets supported (2): bits 10 LBA48, 12 FLUSH CACHE, 13 FLUSH CACHE EXT;
    /// valid when bits 15-14 are 01.
    pub const COMMAND_SET_2: usize = 83;
    /// Command set/feature supported extension: valid when bits 15-14 are 01.
    pub const COMMAND_SET_EXT: usize = 84;
    /// Command sets enabled (1): bit 5 write cache enabled.
    pub const ENABLED_1: usize = 85;
    /// Command sets enabled (2): same bits as [`COMMAND_SET_2`].
    pub const ENABLED_2: usize = 86;
    /// Command set/feature default.
    pub const ENABLED_EXT: usize = 87;
    /// Ultra DMA modes (low byte: supported, high byte: selected).
    pub const UDMA_MODES: usize = 88;
    /// Hardware reset result.
    pub const HW_RESET_RESULT: usize = 93;
    /// LBA48 addressable sectors, four words, low first (words 100-103).
    pub const LBA48_SECTORS: usize = 100;
    /// Bit of [`COMMAND_SET_1`] / [`ENABLED_1`]: volatile write cache.
    pub const CS1_WRITE_CACHE: u16 = 1 << 5;
    /// Bit of [`COMMAND_SET_1`]: NOP.
    pub const CS1_NOP: u16 = 1 << 14;
    /// Bit of [`COMMAND_SET_2`]: 48-bit addressing.
    pub const CS2_LBA48: u16 = 1 << 10;
    /// Bit of [`COMMAND_SET_2`]: FLUSH CACHE.
    pub const CS2_FLUSH: u16 = 1 << 12;
    /// Bit of [`COMMAND_SET_2`]: FLUSH CACHE EXT.
    pub const CS2_FLUSH_EXT: u16 = 1 << 13;
    /// Bits 15-14 of words 83, 84, 86 (sic: 87) that mark them valid.
    pub const VALID_MASK: u16 = 0xc000;
    /// Value of [`VALID_MASK`] bits in a valid word.
    pub const VALID: u16 = 0x4000;
}

/// IDENTIFY DEVICE data as 256 little-endian words.
#[derive(Clone, PartialEq, Eq)]
pub struct Identify(pub [u16; id::WORDS]);

impl Default for Identify {
    fn default() -> Self {
        Self([0; id::WORDS])
    }
}

impl core::fmt::Debug for Identify {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Identify")
            .field("config", &self.0[id::CONFIG])
            .field("capabilities", &self.0[id::CAPABILITIES])
            .field("lba28_sectors", &self.lba28_sectors())
            .field("lba48_sectors", &self.lba48_sectors())
            .finish_non_exhaustive()
    }
}

impl Identify {
    /// The data as the data port delivers it (512 bytes, words little-endian).
    pub fn from_bytes(b: &[u8; SECTOR_SIZE]) -> Self {
        let mut w = [0u16; id::WORDS];
        for (i, v) in w.iter_mut().enumerate() {
            *v = u16::from_le_bytes([b[2 * i], b[2 * i + 1]]);
        }
        Self(w)
    }

    /// The 512 bytes the data port delivers.
    pub fn to_bytes(&self) -> [u8; SECTOR_SIZE] {
        let mut b = [0u8; SECTOR_SIZE];
        for (i, v) in self.0.iter().enumerate() {
            b[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Stores an ASCII string in `words` words from `at`, space padded, two characters
    /// per word with the first in the high byte (ATA string order).
    pub fn set_string(&mut self, at: usize, words: usize, s: &str) {
        let bytes = s.as_bytes();
        for i in 0..words {
            let hi = bytes.get(2 * i).copied().unwrap_or(b' ');
            let lo = bytes.get(2 * i + 1).copied().unwrap_or(b' ');
            if let Some(w) = self.0.get_mut(at + i) {
                *w = u16::from_be_bytes([hi, lo]);
            }
        }
    }

    /// Reads a string stored by [`Identify::set_string`] into `out` (2 bytes a word);
    /// returns the length without trailing spaces.
    pub fn string(&self, at: usize, words: usize, out: &mut [u8]) -> usize {
        let mut n = 0;
        for i in 0..words {
            let w = self.0.get(at + i).copied().unwrap_or(0x2020).to_be_bytes();
            for c in w {
                if let Some(o) = out.get_mut(n) {
                    *o = c;
                    n += 1;
                }
            }
        }
        while n > 0 && matches!(out[n - 1], b' ' | 0) {
            n -= 1;
        }
        n
    }

    /// Sectors addressable by LBA28 commands (words 60-61).
    pub fn lba28_sectors(&self) -> u32 {
        u32::from(self.0[id::LBA28_SECTORS]) | u32::from(self.0[id::LBA28_SECTORS + 1]) << 16
    }

    /// Sectors addressable by LBA48 commands (words 100-103).
    pub fn lba48_sectors(&self) -> u64 {
        (0..4).fold(0u64, |acc, i| {
            acc | u64::from(self.0[id::LBA48_SECTORS + i]) << (16 * i)
        })
    }

    /// Word 83 (command sets supported) if its validity bits say so, else 0.
    pub fn command_set_2(&self) -> u16 {
        let w = self.0[id::COMMAND_SET_2];
        if w & id::VALID_MASK == id::VALID {
            w
        } else {
            0
        }
    }

    /// Whether 48-bit addressing is supported.
    pub fn lba48(&self) -> bool {
        self.command_set_2() & id::CS2_LBA48 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prd_entries_encode_like_the_device_reads_them() {
        let e = PrdEntry {
            addr: 0x1234_5000,
            count: 0,
            flags: PRD_EOT,
        };
        let b = e.to_bytes();
        assert_eq!(b, [0x00, 0x50, 0x34, 0x12, 0, 0, 0x00, 0x80]);
        assert_eq!(PrdEntry::from_bytes(b), e);
        assert_eq!(e.bytes(), 65536);
        assert!(e.end_of_table());
        let odd = PrdEntry {
            count: 513,
            ..Default::default()
        };
        assert_eq!(odd.bytes(), 512);
    }

    #[test]
    fn identify_strings_and_sizes_round_trip() {
        let mut id = Identify::default();
        id.set_string(id::MODEL, id::MODEL_WORDS, "PVH-SHIM HARDDISK");
        // First character in the high byte of the first word.
        assert_eq!(id.0[id::MODEL], u16::from_be_bytes([b'P', b'V']));
        let mut out = [0u8; 40];
        let n = id.string(id::MODEL, id::MODEL_WORDS, &mut out);
        assert_eq!(&out[..n], b"PVH-SHIM HARDDISK");
        id.0[60] = 0xffff;
        id.0[61] = 0x0fff;
        id.0[100] = 1;
        id.0[102] = 2;
        assert_eq!(id.lba28_sectors(), 0x0fff_ffff);
        assert_eq!(id.lba48_sectors(), (2 << 32) | 1);
        id.0[id::COMMAND_SET_2] = id::CS2_LBA48;
        assert!(!id.lba48(), "word 83 without its validity bits");
        id.0[id::COMMAND_SET_2] |= id::VALID;
        assert!(id.lba48());
        assert_eq!(Identify::from_bytes(&id.to_bytes()), id);
    }
}
