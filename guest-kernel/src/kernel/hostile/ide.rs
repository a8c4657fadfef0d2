//! The emulated IDE controller attacked from the guest (SFF-8038i bus-master DMA, the
//! ATA task file): PRD tables and buffers outside RAM or wrapping the 32-bit space, a
//! table without an end that is too short, a transfer past the end of the disk, and a
//! storm of garbage register writes; then a software reset and a good DMA read must
//! still return the disk's data. Canary pages that a refused transfer names must be
//! untouched.
//!
//! Runs on the primary master (`ide:0`) only when the machine has one.

use hw_devices::ata::{PrdEntry, bm, cmd, control, device, reg, status};
use pv_drivers::shmem::SharedMemory;

use super::super::{arch, memory, platform};
use super::{Cat, Tally};
use crate::kprintln;

/// The pattern seed the host writes on the IDE image (`tests/tests/hostile_guest.rs`).
pub const IDE_SEED: u64 = 11;

const CANARY: u8 = 0x3c;

/// Task-file and bus-master ports of the primary channel.
struct Channel {
    tf: u16,
    ctl: u16,
    bm: u16,
}

impl Channel {
    fn status(&self) -> u8 {
        arch::inb(self.tf + reg::STATUS)
    }

    /// Waits (bounded by iterations: the model answers synchronously) for BSY to drop.
    fn settle(&self) -> u8 {
        let mut s = self.status();
        for _ in 0..100_000 {
            if s & status::BSY == 0 {
                break;
            }
            s = self.status();
        }
        s
    }

    /// Clears the bus-master engine: Start off, Error and Interrupt acknowledged.
    fn bm_reset(&self) {
        arch::outb(self.bm + bm::COMMAND, 0);
        arch::outb(self.bm + bm::STATUS, bm::status::W1C);
    }

    /// A READ DMA of `count` sectors at `lba` through the PRD table at `table`;
    /// returns the bus-master status and the ATA status after it.
    fn read_dma(&self, table: u32, lba: u32, count: u8) -> (u8, u8) {
        self.bm_reset();
        arch::outl(self.bm + bm::PRD_TABLE, table);
        arch::outb(
            self.tf + reg::DEVICE,
            device::OBS | device::LBA | ((lba >> 24) as u8 & device::HEAD_MASK),
        );
        self.settle();
        arch::outb(self.tf + reg::SECTOR_COUNT, count);
        arch::outb(self.tf + reg::LBA_LOW, lba as u8);
        arch::outb(self.tf + reg::LBA_MID, (lba >> 8) as u8);
        arch::outb(self.tf + reg::LBA_HIGH, (lba >> 16) as u8);
        arch::outb(self.tf + reg::COMMAND, cmd::READ_DMA);
        arch::outb(
            self.bm + bm::COMMAND,
            bm::command::START | bm::command::READ,
        );
        let ata = self.settle();
        let bms = arch::inb(self.bm + bm::STATUS);
        self.bm_reset();
        (bms, ata)
    }

    /// Software reset of the channel (SRST), then the drive selected again.
    fn reset(&self) {
        arch::outb(self.ctl, control::SRST | control::NIEN);
        arch::outb(self.ctl, control::NIEN);
        self.settle();
        arch::outb(self.tf + reg::DEVICE, device::OBS | device::LBA);
        self.settle();
    }
}

/// A page of our own for tables and buffers, at a 32-bit physical address.
fn page() -> Option<(u32, pv_drivers::shmem::RawSharedMemory)> {
    let (pa, view) = memory::alloc_zeroed(1)?;
    Some((u32::try_from(pa).ok()?, view))
}

fn write_prds(view: &impl SharedMemory, prds: &[PrdEntry]) {
    for (i, p) in prds.iter().enumerate() {
        view.write_bytes(i * 8, &p.to_bytes());
    }
}

pub(super) fn attacks(t: &mut Tally) {
    let c = Cat::Ide;
    if platform::ide_controller().is_none() {
        kprintln!("hostile: ide: no IDE controller, skipped");
        return;
    }
    let target = match platform::prepare_ide(0, guest_kernel::ioopts::AtaMode::Dma) {
        Ok(t) => t,
        Err(e) => {
            t.broken("ide", e);
            return;
        }
    };
    let Some(bm_base) = target.bus_master else {
        t.broken("ide", "no bus-master block");
        return;
    };
    let ch = Channel {
        tf: target.command_base,
        ctl: target.control_port,
        bm: bm_base,
    };
    ch.reset();
    let (Some((table_pa, table)), Some((buf_pa, buf))) = (page(), page()) else {
        t.broken("ide pages", "out of memory");
        return;
    };
    let canary = [CANARY; 4096];
    buf.write_bytes(0, &canary);
    let eot = hw_devices::ata::PRD_EOT;
    let refused_dma = |bms: u8, ata: u8| bms & bm::status::ERROR != 0 && ata & status::ERR != 0;

    // The table itself outside RAM: beyond it, in the 4 GiB hole's top page.
    for (what, at) in [
        ("a PRD table at 3 GiB", 0xc000_0000u32),
        ("a PRD table in the last page below 4 GiB", 0xffff_f000),
    ] {
        let (bms, ata) = ch.read_dma(at, 0, 1);
        t.check(
            c,
            what,
            refused_dma(bms, ata),
            format_args!("bm status {bms:#x}, status {ata:#x}"),
        );
    }
    // Buffers (of the transfer's 1 KiB) outside RAM or wrapping 4 GiB, or a good entry
    // (a canary page of ours, which must not be written either) then one outside.
    for (what, entries) in [
        (
            "a buffer at 3 GiB",
            [
                PrdEntry {
                    addr: 0xc000_0000,
                    count: 1024,
                    flags: eot,
                },
                PrdEntry::default(),
            ],
        ),
        (
            "a buffer wrapping 4 GiB",
            [
                PrdEntry {
                    addr: 0xffff_ff00,
                    count: 1024,
                    flags: eot,
                },
                PrdEntry::default(),
            ],
        ),
        (
            "a good entry then one at 3 GiB",
            [
                PrdEntry {
                    addr: buf_pa,
                    count: 512,
                    flags: 0,
                },
                PrdEntry {
                    addr: 0xc000_0000,
                    count: 512,
                    flags: eot,
                },
            ],
        ),
    ] {
        write_prds(&table, &entries);
        let (bms, ata) = ch.read_dma(table_pa, 0, 2);
        t.check(
            c,
            what,
            refused_dma(bms, ata),
            format_args!("bm status {bms:#x}, status {ata:#x}"),
        );
    }
    // A table with no end-of-table bit, 512 entries of 2 bytes (1 KiB) for 4 KiB: the
    // model stops at its fail-safe; nothing moves, Active drops.
    let tiny: alloc::vec::Vec<PrdEntry> = (0..512)
        .map(|_| PrdEntry {
            addr: buf_pa,
            count: 2,
            flags: 0,
        })
        .collect();
    write_prds(&table, &tiny);
    let (bms, ata) = ch.read_dma(table_pa, 0, 8);
    t.check(
        c,
        "an endless table of 2-byte entries",
        bms & bm::status::ACTIVE == 0,
        format_args!("bm status {bms:#x}, status {ata:#x}"),
    );
    // Past the end of the disk (an absurd LBA): IDNF or ABRT, nothing moves.
    write_prds(
        &table,
        &[PrdEntry {
            addr: buf_pa,
            count: 0,
            flags: eot,
        }],
    );
    let (bms, ata) = ch.read_dma(table_pa, 0x0fff_fff0, 128);
    t.check(
        c,
        "a transfer past the end of the disk",
        ata & status::ERR != 0,
        format_args!("bm status {bms:#x}, status {ata:#x}"),
    );
    let mut check = [0u8; 4096];
    buf.read_bytes(0, &mut check);
    let changed = check.iter().filter(|&&b| b != CANARY).count();
    t.check(
        c,
        "the canary of the refused transfers",
        changed == 0,
        format_args!("{changed} bytes changed"),
    );

    // A register storm: garbage in every task-file register and harmless commands
    // (unknown opcodes, IDENTIFY, SET FEATURES of anything), data port drained; the
    // bus-master table register gets garbage too, but Start is never set.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let commands = [
        0x00u8, 0x01, 0x7f, 0xff, 0xec, 0xef, 0xa1, 0x91, 0xe7, 0x40, 0xf8,
    ];
    let mut storm_writes = 0u32;
    for _ in 0..2000 {
        let r = next();
        for port in 1..=6u16 {
            arch::outb(ch.tf + port, (r >> (port * 8)) as u8);
            storm_writes += 1;
        }
        arch::outl(ch.bm + bm::PRD_TABLE, r as u32);
        arch::outb(ch.ctl, (r >> 56) as u8 & !control::SRST);
        arch::outb(
            ch.tf + reg::COMMAND,
            commands[(r % commands.len() as u64) as usize],
        );
        storm_writes += 3;
        for _ in 0..256 {
            if ch.settle() & status::DRQ == 0 {
                break;
            }
            let _ = arch::inw(ch.tf + reg::DATA);
        }
    }
    kprintln!("hostile: ide: register storm of {storm_writes} writes done");

    // Reset, then a good read must still return the disk's pattern.
    ch.reset();
    buf.write_bytes(0, &canary);
    write_prds(
        &table,
        &[PrdEntry {
            addr: buf_pa,
            count: 4096,
            flags: eot,
        }],
    );
    let (bms, ata) = ch.read_dma(table_pa, 0, 8);
    buf.read_bytes(0, &mut check);
    let mut want = [0u8; 4096];
    pv_drivers::pattern::fill(IDE_SEED, 0, &mut want);
    let good = ata & status::ERR == 0 && bms & bm::status::ERROR == 0 && check == want;
    if good {
        kprintln!("hostile: ide: a good DMA read after the storm returns the disk's data");
    } else {
        t.broken(
            "a good DMA read after the IDE attacks",
            format_args!(
                "bm status {bms:#x}, status {ata:#x}, data matches: {}",
                check == want
            ),
        );
    }
}
