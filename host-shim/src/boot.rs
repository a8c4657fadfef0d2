//! Guest memory layout and the PVH boot protocol (Xen's `docs/misc/pvh.pandoc`).
//!
//! RAM starts at guest-physical 0. Above 3 GiB the RAM is split so that nothing is mapped
//! in the MMIO hole `[3 GiB, 4 GiB)` (IOAPIC at 0xfec00000, LAPIC at 0xfee00000); the rest
//! continues at 4 GiB. The shim's boot information lives in low memory:
//!
//! | guest-physical | contents |
//! |---|---|
//! | 0x5000 | GDT: null, flat 32-bit code (0x08), flat data (0x10), busy TSS (0x18) |
//! | 0x6000 | `hvm_start_info` version 1 (`xen/include/public/arch-x86/hvm/start_info.h`) |
//! | 0x6038 | its memory map (`hvm_memmap_table_entry[]`) |
//! | 0x7000 | the NUL-terminated command line (at most 4095 bytes) |
//! | 0xf0000 | the MP table ([`write_mp_table`]), in the reserved BIOS area |
//!
//! The vCPU starts as the PVH spec requires: protected mode, paging off, `CR0 = PE|ET`,
//! `CR4 = EFER = 0`, flat 32-bit `CS`/data segments, a 32-bit busy TSS with base 0 and
//! limit 0x67, `EIP` at the note's entry and `EBX` = the `hvm_start_info` address.
//! Everything here is hypervisor-neutral; [`crate::kvm`] translates [`CpuStartState`].

use pv_drivers::abi::start_info::{
    HvmMemmapTableEntry, HvmModlistEntry, HvmStartInfo, XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_MEMMAP_TYPE_UNUSABLE, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::elf::KernelImage;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// Smallest guest memory the shim accepts, in MiB.
pub const MIN_MEM_MIB: u64 = 2;
/// Largest guest memory the shim accepts, in MiB.
pub const MAX_MEM_MIB: u64 = 65536;
/// Start of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 3 << 30;
/// Where RAM resumes above the MMIO hole.
pub const HIGH_RAM_START: u64 = 4 << 30;
/// The IOAPIC's MMIO page.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APIC's MMIO page.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// Start of the region PC firmware reserves below 1 MiB (EBDA, VGA, option ROMs, BIOS).
pub const LOW_RESERVED_START: u64 = 0x9_fc00;
/// Start of RAM above the legacy region.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Guest-physical address of the boot GDT.
pub const GDT_ADDR: u64 = 0x5000;
/// Guest-physical address of `hvm_start_info`.
pub const START_INFO_ADDR: u64 = 0x6000;
/// Guest-physical address of the memory map, right after `hvm_start_info`.
pub const MEMMAP_ADDR: u64 = START_INFO_ADDR + HvmStartInfo::SIZE as u64;
/// Guest-physical address of the command line page.
pub const CMDLINE_ADDR: u64 = 0x7000;
/// Longest command line, in bytes, without its NUL (it must fit in one page).
pub const CMDLINE_MAX: usize = 4095;
/// Where the module list (`hvm_modlist_entry[]`) goes when there are boot modules; the
/// modules' command lines follow the entries in the same page.
pub const MODLIST_ADDR: u64 = CMDLINE_ADDR + 0x1000;
/// The boot information area, `[start, end)`: no kernel segment may overlap it.
pub const BOOT_INFO_AREA: (u64, u64) = (GDT_ADDR, MODLIST_ADDR + 0x1000);

/// Selector of the flat 32-bit code segment in the boot GDT.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the flat 32-bit data segment in the boot GDT.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS in the boot GDT.
pub const TSS_SELECTOR: u16 = 0x18;

/// Errors in the guest's memory, command line and boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Memory size outside the accepted range.
    #[error("memory size {0} MiB is out of range ({MIN_MEM_MIB}..={MAX_MEM_MIB} MiB)")]
    MemSize(u64),
    /// Command line longer than its page.
    #[error("command line is {0} bytes; at most {CMDLINE_MAX} fit in its page")]
    CmdlineTooLong(usize),
    /// Command line with an embedded NUL.
    #[error("command line contains a NUL byte")]
    CmdlineNul,
    /// A kernel segment outside guest RAM (or spanning the MMIO hole).
    #[error(
        "segment {index} [{start:#x}, {end:#x}) does not fit in the guest's {mib} MiB of RAM ({ram})"
    )]
    SegmentOutsideRam {
        /// Program header index.
        index: usize,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Guest memory size.
        mib: u64,
        /// The RAM ranges, for the message.
        ram: String,
    },
    /// A kernel segment over the shim's boot information.
    #[error(
        "segment {index} [{start:#x}, {end:#x}) overlaps the shim's boot information area [{:#x}, {:#x})",
        BOOT_INFO_AREA.0, BOOT_INFO_AREA.1
    )]
    SegmentOverlapsBootInfo {
        /// Program header index.
        index: usize,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// A kernel segment over the MP table.
    #[error(
        "segment {index} [{start:#x}, {end:#x}) overlaps the MP table area [{:#x}, {:#x})",
        MP_TABLE_AREA.0, MP_TABLE_AREA.1
    )]
    SegmentOverlapsMpTable {
        /// Program header index.
        index: usize,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// The boot modules do not fit between the kernel and the end of low RAM.
    #[error(
        "the boot modules ({len} bytes in all, page aligned) do not fit in guest RAM above \
         the kernel (which ends at {kernel_end:#x}); give the guest more memory (--mem)"
    )]
    InitrdTooLarge {
        /// Bytes the modules need.
        len: u64,
        /// First byte after the kernel's segments.
        kernel_end: u64,
    },
    /// The module list and the modules' command lines do not fit their page.
    #[error(
        "{count} boot modules with {cmdline_bytes} bytes of command lines do not fit the \
         module list's page (32 bytes per module, each command line and its NUL)"
    )]
    ModuleListTooLong {
        /// Modules.
        count: usize,
        /// Bytes of their command lines, NULs included.
        cmdline_bytes: usize,
    },
    /// A module's command line holds a NUL byte.
    #[error("a boot module's command line contains a NUL byte")]
    ModuleCmdlineNul,
    /// The MP table does not fit its area.
    #[error("the MP table needs {0} bytes, more than its area")]
    MpTableTooLarge(usize),
    /// The host could not provide the guest's memory.
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Allocate {
        /// Guest memory size.
        mib: u64,
        /// What vm-memory reported.
        source: vm_memory::mmap::FromRangesError,
    },
    /// A validated segment could not be copied (its file bytes are gone).
    #[error("segment {0}: its file bytes are not in the image")]
    Load(usize),
    /// Writing the boot information failed.
    #[error("writing boot information to guest memory failed: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// First page of the Xen "special pages" (xenstore and console rings), where Xen's
/// toolstack puts them for HVM/PVH guests: just below 0xff00_0000, in the hole below
/// 4 GiB, marked reserved in the memory map so the guest does not take them for RAM.
pub const SPECIAL_PAGES_START: u64 = 0xfeff_8000;
/// Number of special pages.
pub const SPECIAL_PAGES: u64 = 8;
/// The xenstore ring page (libxl's special page 4, `SPECIALPAGE_XENSTORE`).
pub const XENSTORE_PAGE: u64 = SPECIAL_PAGES_START + 4 * 0x1000;
/// The PV console ring page (libxl's special page 7, `SPECIALPAGE_CONSOLE`).
pub const CONSOLE_PAGE: u64 = SPECIAL_PAGES_START + 7 * 0x1000;

/// The Xen guest's pool of "unpopulated" frames: memory the shim backs but the memory
/// map calls unusable, in the MMIO hole below the PCI windows. A PVH Linux takes
/// unusable ranges as its extra-memory pool (`pvh_reserve_extra_memory`) and places the
/// frames that have no RAM of their own there (its grant table,
/// `xen_alloc_unpopulated_pages`); Xen would populate any frame the guest names, the
/// shim populates this window (the 2 MiB under the PCI windows). Other guests see an
/// unusable range and ignore it.
pub const XEN_EXTRA_START: u64 = 0xdfe0_0000;
/// Size of [`XEN_EXTRA_START`]'s window: 512 frames (Linux's grant table takes 64).
pub const XEN_EXTRA_SIZE: u64 = 2 * MIB;

/// Where the guest's RAM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Bytes of RAM from 0 (at most 3 GiB).
    pub low_size: u64,
    /// Bytes of RAM from 4 GiB.
    pub high_size: u64,
    /// The Xen extra-frame window ([`XEN_EXTRA_START`]) is there.
    pub xen_extra: bool,
}

impl MemoryLayout {
    /// The layout for `mem_mib` MiB of RAM.
    pub fn new(mem_mib: u64) -> Result<Self, BootError> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mem_mib) {
            return Err(BootError::MemSize(mem_mib));
        }
        let total = mem_mib * MIB;
        let low_size = total.min(MMIO_HOLE_START);
        Ok(Self {
            low_size,
            high_size: total - low_size,
            xen_extra: false,
        })
    }

    /// The layout with the Xen extra-frame window ([`XEN_EXTRA_START`]).
    pub fn with_xen_extra(self) -> Self {
        Self {
            xen_extra: true,
            ..self
        }
    }

    /// Total RAM in MiB.
    pub fn mib(&self) -> u64 {
        (self.low_size + self.high_size) / MIB
    }

    /// The RAM ranges as `(start, size)`, ascending.
    pub fn ram_ranges(&self) -> Vec<(u64, u64)> {
        let mut ranges = vec![(0, self.low_size)];
        if self.high_size > 0 {
            ranges.push((HIGH_RAM_START, self.high_size));
        }
        ranges
    }

    /// Whether `[start, end)` lies inside one RAM range.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        start <= end
            && self
                .ram_ranges()
                .iter()
                .any(|&(base, size)| start >= base && end <= base + size)
    }

    /// The memory map handed to the guest: sorted, non-overlapping.
    pub fn memmap(&self) -> Vec<HvmMemmapTableEntry> {
        let entry = |addr: u64, size: u64, type_: u32| HvmMemmapTableEntry {
            addr,
            size,
            type_,
            reserved: 0,
        };
        let mut map = vec![entry(0, LOW_RESERVED_START, XEN_HVM_MEMMAP_TYPE_RAM)];
        map.push(entry(
            LOW_RESERVED_START,
            HIGH_MEMORY_START - LOW_RESERVED_START,
            XEN_HVM_MEMMAP_TYPE_RESERVED,
        ));
        if self.low_size > HIGH_MEMORY_START {
            map.push(entry(
                HIGH_MEMORY_START,
                self.low_size - HIGH_MEMORY_START,
                XEN_HVM_MEMMAP_TYPE_RAM,
            ));
        }
        if self.xen_extra {
            map.push(entry(
                XEN_EXTRA_START,
                XEN_EXTRA_SIZE,
                XEN_HVM_MEMMAP_TYPE_UNUSABLE,
            ));
        }
        map.push(entry(IOAPIC_ADDR, 0x1000, XEN_HVM_MEMMAP_TYPE_RESERVED));
        map.push(entry(LAPIC_ADDR, 0x1000, XEN_HVM_MEMMAP_TYPE_RESERVED));
        map.push(entry(
            SPECIAL_PAGES_START,
            SPECIAL_PAGES * 0x1000,
            XEN_HVM_MEMMAP_TYPE_RESERVED,
        ));
        if self.high_size > 0 {
            map.push(entry(
                HIGH_RAM_START,
                self.high_size,
                XEN_HVM_MEMMAP_TYPE_RAM,
            ));
        }
        map
    }

    fn describe(&self) -> String {
        self.ram_ranges()
            .iter()
            .map(|&(base, size)| format!("[{base:#x}, {:#x})", base + size))
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// Checks that every segment of `image` lies in RAM and clear of the boot information.
    pub fn check_fits(&self, image: &KernelImage) -> Result<(), BootError> {
        for seg in &image.segments {
            let (start, end) = (seg.paddr, seg.end());
            if !self.contains(start, end) {
                return Err(BootError::SegmentOutsideRam {
                    index: seg.index,
                    start,
                    end,
                    mib: self.mib(),
                    ram: self.describe(),
                });
            }
            if start < BOOT_INFO_AREA.1 && end > BOOT_INFO_AREA.0 {
                return Err(BootError::SegmentOverlapsBootInfo {
                    index: seg.index,
                    start,
                    end,
                });
            }
            if start < MP_TABLE_AREA.1 && end > MP_TABLE_AREA.0 {
                return Err(BootError::SegmentOverlapsMpTable {
                    index: seg.index,
                    start,
                    end,
                });
            }
        }
        Ok(())
    }

    /// Allocates the guest's RAM and the special pages (anonymous, `MAP_NORESERVE`,
    /// zero-filled).
    pub fn allocate(&self) -> Result<GuestMemoryMmap, BootError> {
        let mut ranges: Vec<(GuestAddress, usize)> = self
            .ram_ranges()
            .iter()
            .map(|&(base, size)| (GuestAddress(base), size as usize))
            .collect();
        // Between the low RAM (at most 3 GiB) and 4 GiB: sorted order is kept.
        ranges.insert(
            1,
            (
                GuestAddress(SPECIAL_PAGES_START),
                (SPECIAL_PAGES * 0x1000) as usize,
            ),
        );
        if self.xen_extra {
            ranges.insert(1, (GuestAddress(XEN_EXTRA_START), XEN_EXTRA_SIZE as usize));
        }
        GuestMemoryMmap::from_ranges(&ranges).map_err(|source| BootError::Allocate {
            mib: self.mib(),
            source,
        })
    }
}

/// Checks that `cmdline` fits its page and can be NUL-terminated.
pub fn check_cmdline(cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() > CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(cmdline.len()));
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    Ok(())
}

/// Copies the segments of `kernel`, parsed and checked against the layout
/// ([`MemoryLayout::check_fits`]) from `image`, into guest memory. `p_memsz` beyond
/// `p_filesz` needs no clearing: guest memory is freshly mapped and therefore zero.
/// (linux-loader's ELF loader takes ELF64 only; this serves both classes.)
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    image: &[u8],
    kernel: &KernelImage,
) -> Result<(), BootError> {
    for seg in &kernel.segments {
        let bytes = usize::try_from(seg.offset)
            .ok()
            .and_then(|start| image.get(start..start.checked_add(seg.filesz as usize)?))
            .ok_or(BootError::Load(seg.index))?;
        mem.write_slice(bytes, GuestAddress(seg.paddr))?;
    }
    Ok(())
}

/// One boot module: its bytes and an optional command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootModule {
    /// Its contents.
    pub bytes: Vec<u8>,
    /// Its command line (`hvm_modlist_entry.cmdline_paddr`), if any.
    pub cmdline: Option<String>,
}

/// Where the boot modules go, in order: each page aligned, the first at the top of low
/// RAM (below the MMIO hole, as Linux wants its initrd below 4 GiB), each next one
/// below the previous, all above `kernel_end`. They stay RAM in the memory map, as Xen
/// and QEMU leave them: the guest reserves what it keeps (Linux frees its initramfs
/// after unpacking it).
pub fn module_addresses(
    layout: &MemoryLayout,
    modules: &[BootModule],
    kernel_end: u64,
) -> Result<Vec<u64>, BootError> {
    let total: u64 = modules
        .iter()
        .map(|m| (m.bytes.len() as u64).next_multiple_of(0x1000))
        .sum();
    let too_large = || BootError::InitrdTooLarge {
        len: total,
        kernel_end,
    };
    let floor = kernel_end.max(HIGH_MEMORY_START).next_multiple_of(0x1000);
    let mut top = layout.low_size & !0xfff;
    let mut at = Vec::with_capacity(modules.len());
    for m in modules {
        let start = top
            .checked_sub(m.bytes.len() as u64)
            .ok_or_else(too_large)?
            & !0xfff;
        if start < floor {
            return Err(too_large());
        }
        at.push(start);
        top = start;
    }
    Ok(at)
}

/// Writes the GDT, `hvm_start_info`, memory map, command line and the boot modules
/// (at `module_addresses`, listed in the module list in order: Linux takes the first as
/// its initramfs); returns the `hvm_start_info` address (the guest's `EBX`).
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    cmdline: &str,
    modules: &[(&BootModule, u64)],
) -> Result<u64, BootError> {
    check_cmdline(cmdline)?;
    let gdt: Vec<u8> = boot_gdt().iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&gdt, GuestAddress(GDT_ADDR))?;

    let memmap = layout.memmap();
    let map_bytes: Vec<u8> = memmap.iter().flat_map(|e| e.to_bytes()).collect();
    debug_assert!(MEMMAP_ADDR + map_bytes.len() as u64 <= CMDLINE_ADDR);
    mem.write_slice(&map_bytes, GuestAddress(MEMMAP_ADDR))?;

    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    mem.write_slice(&line, GuestAddress(CMDLINE_ADDR))?;

    // The entries, then the command lines, in the module list's page.
    let entries = modules.len() * HvmModlistEntry::SIZE;
    let cmdline_bytes: usize = modules
        .iter()
        .filter_map(|(m, _)| m.cmdline.as_ref().map(|c| c.len() + 1))
        .sum();
    if entries + cmdline_bytes > 0x1000 {
        return Err(BootError::ModuleListTooLong {
            count: modules.len(),
            cmdline_bytes,
        });
    }
    let mut text_at = MODLIST_ADDR + entries as u64;
    for (i, (module, paddr)) in modules.iter().enumerate() {
        mem.write_slice(&module.bytes, GuestAddress(*paddr))?;
        let cmdline_paddr = match &module.cmdline {
            Some(text) => {
                if text.as_bytes().contains(&0) {
                    return Err(BootError::ModuleCmdlineNul);
                }
                let at = text_at;
                let mut bytes = text.as_bytes().to_vec();
                bytes.push(0);
                mem.write_slice(&bytes, GuestAddress(at))?;
                text_at += bytes.len() as u64;
                at
            }
            None => 0,
        };
        let entry = HvmModlistEntry {
            paddr: *paddr,
            size: module.bytes.len() as u64,
            cmdline_paddr,
            reserved: 0,
        };
        let at = MODLIST_ADDR + (i * HvmModlistEntry::SIZE) as u64;
        mem.write_slice(&entry.to_bytes(), GuestAddress(at))?;
    }
    let (nr_modules, modlist_paddr) = if modules.is_empty() {
        (0, 0)
    } else {
        (modules.len() as u32, MODLIST_ADDR)
    };
    let info = HvmStartInfo {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules,
        modlist_paddr,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: 0,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    mem.write_slice(&info.to_bytes(), GuestAddress(START_INFO_ADDR))?;
    Ok(START_INFO_ADDR)
}

/// Where the MP floating pointer structure is written: the start of the BIOS area that
/// Linux scans for "_MP_" (`smp_scan_config(0xF0000, 0x10000)`), reserved in the
/// memory map ([`LOW_RESERVED_START`]..1 MiB). The configuration table follows it.
pub const MP_TABLE_ADDR: u64 = 0xf_0000;
/// The MP table area `[start, end)`: no kernel segment may overlap it.
pub const MP_TABLE_AREA: (u64, u64) = (MP_TABLE_ADDR, MP_TABLE_ADDR + 0x1000);
/// The IOAPIC's id in the MP table: after the one CPU's LAPIC id 0, as Firecracker
/// and SeaBIOS number it. (A 64-bit Linux takes the table's id as it is.)
pub const MP_IOAPIC_ID: u8 = 1;
/// Version the in-kernel IOAPIC reports.
pub const MP_IOAPIC_VERSION: u8 = 0x11;
/// Bus id of PCI bus 0 in the MP table.
pub const MP_BUS_PCI: u8 = 0;
/// Bus id of the ISA bus in the MP table.
pub const MP_BUS_ISA: u8 = 1;

const MP_SPEC_REV: u8 = 4; // MP spec 1.4
const MP_ENTRY_CPU: u8 = 0;
const MP_ENTRY_BUS: u8 = 1;
const MP_ENTRY_IOAPIC: u8 = 2;
const MP_ENTRY_IO_INT: u8 = 3;
const MP_ENTRY_LOCAL_INT: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
/// Interrupt entry flags: polarity active low (bits 0-1 = 3), trigger level (bits
/// 2-3 = 3). 0 means "conforms to the bus" (ISA: edge, active high).
const MP_FLAGS_LEVEL_LOW: u16 = 0x000f;

/// A PCI interrupt for the MP table: INTx `pin` (1 = INTA#) of `device` on bus 0
/// reaches IOAPIC input `ioapic_pin` (level, active low).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpPciIrq {
    /// Device number.
    pub device: u8,
    /// 1..=4.
    pub pin: u8,
    /// IOAPIC input (GSI).
    pub ioapic_pin: u8,
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP floating pointer and configuration table (Intel MultiProcessor
/// Specification 1.4, chapter 4) for one CPU (LAPIC id 0, the BSP), PCI bus 0 and the
/// ISA bus, the IOAPIC at [`IOAPIC_ADDR`], ISA IRQs 0..16 (IRQ 0 on pin 2, the cascade
/// IRQ 2 left out: the routing in [`crate::kvm`]), the PCI interrupts `pci`, ExtINT on
/// LINT0 and NMI on LINT1: the bytes to put at [`MP_TABLE_ADDR`].
pub fn mp_table(pci: &[MpPciIrq]) -> Vec<u8> {
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut push = |entries: &mut Vec<u8>, bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    // Processor: LAPIC id 0, version 0x14, enabled + bootstrap, family 6, FPU and APIC.
    let mut cpu = [0u8; 20];
    cpu[..4].copy_from_slice(&[MP_ENTRY_CPU, 0, 0x14, 0x3]);
    cpu[4..8].copy_from_slice(&0x600u32.to_le_bytes());
    cpu[8..12].copy_from_slice(&0x201u32.to_le_bytes());
    push(&mut entries, &cpu);
    push(
        &mut entries,
        &[MP_ENTRY_BUS, MP_BUS_PCI, b'P', b'C', b'I', b' ', b' ', b' '],
    );
    push(
        &mut entries,
        &[MP_ENTRY_BUS, MP_BUS_ISA, b'I', b'S', b'A', b' ', b' ', b' '],
    );
    let mut ioapic = [
        MP_ENTRY_IOAPIC,
        MP_IOAPIC_ID,
        MP_IOAPIC_VERSION,
        1,
        0,
        0,
        0,
        0,
    ];
    ioapic[4..].copy_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    push(&mut entries, &ioapic);
    let io_int = |flags: u16, bus: u8, irq: u8, pin: u8| {
        let [f0, f1] = flags.to_le_bytes();
        [MP_ENTRY_IO_INT, MP_INT, f0, f1, bus, irq, MP_IOAPIC_ID, pin]
    };
    for irq in (0..16u8).filter(|&i| i != 2) {
        let pin = if irq == 0 { 2 } else { irq };
        push(&mut entries, &io_int(0, MP_BUS_ISA, irq, pin));
    }
    for p in pci
        .iter()
        .filter(|p| (1..=4).contains(&p.pin) && p.device < 32)
    {
        let irq = p.device << 2 | (p.pin - 1);
        push(
            &mut entries,
            &io_int(MP_FLAGS_LEVEL_LOW, MP_BUS_PCI, irq, p.ioapic_pin),
        );
    }
    push(
        &mut entries,
        &[MP_ENTRY_LOCAL_INT, MP_EXTINT, 0, 0, MP_BUS_ISA, 0, 0xff, 0],
    );
    push(
        &mut entries,
        &[MP_ENTRY_LOCAL_INT, MP_NMI, 0, 0, MP_BUS_ISA, 0, 0xff, 1],
    );

    let table_addr = MP_TABLE_ADDR as u32 + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[MP_SPEC_REV, 0]);
    table.extend_from_slice(b"HOSTSHIM");
    table.extend_from_slice(b"PVH-PC      ");
    table.extend_from_slice(&[0; 4]); // OEM table pointer
    table.extend_from_slice(&[0; 2]); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16 + table.len());
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    // Length in 16-byte units, revision, checksum; feature byte 1 = 0: a configuration
    // table is present; feature byte 2 bit 7 = 0: no IMCR, virtual wire mode.
    fp.extend_from_slice(&[1, MP_SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    fp
}

/// Writes [`mp_table`] at [`MP_TABLE_ADDR`].
pub fn write_mp_table(mem: &GuestMemoryMmap, pci: &[MpPciIrq]) -> Result<(), BootError> {
    let bytes = mp_table(pci);
    if bytes.len() as u64 > MP_TABLE_AREA.1 - MP_TABLE_AREA.0 {
        return Err(BootError::MpTableTooLarge(bytes.len()));
    }
    mem.write_slice(&bytes, GuestAddress(MP_TABLE_ADDR))?;
    Ok(())
}

/// A segment register's hidden state, in the terms of the x86 descriptor format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Selector (index into the boot GDT).
    pub selector: u16,
    /// Linear base address.
    pub base: u32,
    /// Limit in bytes (0xffffffff with `g` set means the whole 4 GiB).
    pub limit: u32,
    /// Type field (code/data/system type).
    pub type_: u8,
    /// Code/data (true) or system (false) descriptor.
    pub s: bool,
    /// Privilege level.
    pub dpl: u8,
    /// Present.
    pub present: bool,
    /// Default operation size 32-bit.
    pub db: bool,
    /// Limit counts 4 KiB pages.
    pub g: bool,
}

impl Segment {
    /// Flat 4 GiB segment of the given type.
    const fn flat(selector: u16, type_: u8) -> Self {
        Segment {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            type_,
            s: true,
            dpl: 0,
            present: true,
            db: true,
            g: true,
        }
    }

    /// Its 8-byte GDT descriptor.
    pub fn descriptor(&self) -> u64 {
        let limit = if self.g { self.limit >> 12 } else { self.limit };
        let (base, limit) = (u64::from(self.base), u64::from(limit));
        let access = u64::from(self.type_ & 0xf)
            | u64::from(self.s) << 4
            | u64::from(self.dpl & 3) << 5
            | u64::from(self.present) << 7;
        let flags = u64::from(self.db) << 2 | u64::from(self.g) << 3;
        (limit & 0xffff)
            | (base & 0xff_ffff) << 16
            | access << 40
            | (limit >> 16 & 0xf) << 48
            | flags << 52
            | (base >> 24 & 0xff) << 56
    }
}

/// `CS` at entry: flat 32-bit execute/read code, accessed (type 0xb).
pub const PVH_CODE: Segment = Segment::flat(CODE_SELECTOR, 0xb);
/// `DS`/`ES`/`FS`/`GS`/`SS` at entry: flat 32-bit read/write data, accessed (type 0x3).
pub const PVH_DATA: Segment = Segment::flat(DATA_SELECTOR, 0x3);
/// `TR` at entry: a busy 32-bit TSS (type 0xb) with base 0 and limit 0x67.
pub const PVH_TSS: Segment = Segment {
    selector: TSS_SELECTOR,
    base: 0,
    limit: 0x67,
    type_: 0xb,
    s: false,
    dpl: 0,
    present: true,
    db: false,
    g: false,
};

/// The boot GDT written at [`GDT_ADDR`].
pub fn boot_gdt() -> [u64; 4] {
    [
        0,
        PVH_CODE.descriptor(),
        PVH_DATA.descriptor(),
        PVH_TSS.descriptor(),
    ]
}

/// `CR0.PE`.
pub const CR0_PE: u64 = 1 << 0;
/// `CR0.ET`.
pub const CR0_ET: u64 = 1 << 4;

/// The vCPU state at the PVH entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuStartState {
    /// The PVH entry point.
    pub rip: u64,
    /// The `hvm_start_info` address.
    pub rbx: u64,
    /// Only the reserved bit 1.
    pub rflags: u64,
    /// `PE | ET`.
    pub cr0: u64,
    /// Zero.
    pub cr4: u64,
    /// Zero.
    pub efer: u64,
    /// `CS`.
    pub code: Segment,
    /// `DS`, `ES`, `FS`, `GS`, `SS`.
    pub data: Segment,
    /// `TR`.
    pub tss: Segment,
    /// GDTR base.
    pub gdt_base: u64,
    /// GDTR limit.
    pub gdt_limit: u16,
}

/// The state `docs/misc/pvh.pandoc` prescribes for entering at `entry`.
pub fn pvh_start_state(entry: u32, start_info: u64) -> CpuStartState {
    CpuStartState {
        rip: u64::from(entry),
        rbx: start_info,
        rflags: 0x2,
        cr0: CR0_PE | CR0_ET,
        cr4: 0,
        efer: 0,
        code: PVH_CODE,
        data: PVH_DATA,
        tss: PVH_TSS,
        gdt_base: GDT_ADDR,
        gdt_limit: (boot_gdt().len() * 8 - 1) as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf;
    use crate::testing::ElfBuilder;
    use pv_drivers::abi::start_info::XEN_HVM_MEMMAP_TYPE_RESERVED as RSV;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn memory_size_range_is_enforced() {
        for bad in [0, 1, MAX_MEM_MIB + 1, 10_000_000] {
            let err = MemoryLayout::new(bad).expect_err("out of range");
            assert_eq!(
                err.to_string(),
                format!("memory size {bad} MiB is out of range (2..=65536 MiB)")
            );
        }
        assert!(MemoryLayout::new(MIN_MEM_MIB).is_ok());
        assert!(MemoryLayout::new(MAX_MEM_MIB).is_ok());
    }

    #[test]
    fn small_memory_is_one_range() {
        let l = MemoryLayout::new(128).expect("layout");
        assert_eq!(l.ram_ranges(), vec![(0, 128 * MIB)]);
        assert_eq!(l.mib(), 128);
    }

    #[test]
    fn memory_above_3g_skips_the_mmio_hole() {
        let l = MemoryLayout::new(4096).expect("layout");
        assert_eq!(
            l.ram_ranges(),
            vec![(0, 3 << 30), (HIGH_RAM_START, 1 << 30)]
        );
        assert!(l.contains(0x1000, 0x2000));
        assert!(!l.contains(MMIO_HOLE_START - 0x1000, MMIO_HOLE_START + 0x1000));
        assert!(!l.contains(LAPIC_ADDR, LAPIC_ADDR + 4));
        assert!(l.contains(HIGH_RAM_START, HIGH_RAM_START + (1 << 30)));
        assert!(!l.contains(HIGH_RAM_START, HIGH_RAM_START + (1 << 30) + 1));
        let exactly_3g = MemoryLayout::new(3072).expect("layout");
        assert_eq!(exactly_3g.high_size, 0);
    }

    #[test]
    fn memmap_is_sorted_disjoint_and_marks_the_legacy_hole() {
        for mib in [2, 128, 3072, 5000] {
            let l = MemoryLayout::new(mib).expect("layout");
            let map = l.memmap();
            for pair in map.windows(2) {
                assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{map:?}");
            }
            assert_eq!((map[0].addr, map[0].size), (0, LOW_RESERVED_START));
            assert_eq!(map[0].type_, XEN_HVM_MEMMAP_TYPE_RAM);
            assert_eq!(map[1].type_, RSV);
            assert_eq!(map[1].addr + map[1].size, HIGH_MEMORY_START);
            let ram: u64 = map
                .iter()
                .filter(|e| e.type_ == XEN_HVM_MEMMAP_TYPE_RAM)
                .map(|e| e.size)
                .sum();
            assert_eq!(ram, mib * MIB - (HIGH_MEMORY_START - LOW_RESERVED_START));
        }
    }

    #[test]
    fn a_xen_guest_gets_an_unusable_window_that_is_backed() {
        for mib in [2, 3072, 5000] {
            let plain = MemoryLayout::new(mib).expect("layout");
            let l = plain.with_xen_extra();
            let map = l.memmap();
            for pair in map.windows(2) {
                assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{map:?}");
            }
            let unusable: Vec<_> = map
                .iter()
                .filter(|e| e.type_ == XEN_HVM_MEMMAP_TYPE_UNUSABLE)
                .map(|e| (e.addr, e.size))
                .collect();
            assert_eq!(unusable, [(XEN_EXTRA_START, XEN_EXTRA_SIZE)]);
            assert!(
                plain
                    .memmap()
                    .iter()
                    .all(|e| e.type_ != XEN_HVM_MEMMAP_TYPE_UNUSABLE)
            );
            // Not RAM for the kernel's segments, but memory the shim backs.
            assert!(!l.contains(XEN_EXTRA_START, XEN_EXTRA_START + 1));
            if mib == 2 {
                let mem = l.allocate().expect("memory");
                mem.write_obj(7u8, GuestAddress(XEN_EXTRA_START + XEN_EXTRA_SIZE - 1))
                    .expect("backed");
                assert_eq!(mem.num_regions(), 3);
            }
        }
    }

    #[test]
    fn start_info_memmap_and_cmdline_read_back() {
        let layout = MemoryLayout::new(64).expect("layout");
        let mem = layout.allocate().expect("memory");
        let addr = write_boot_info(&mem, &layout, "console=hvc0 io=pv", &[]).expect("write");
        assert_eq!(addr, START_INFO_ADDR);

        let mut raw = [0u8; HvmStartInfo::SIZE];
        mem.read_slice(&mut raw, GuestAddress(addr)).expect("read");
        let si = HvmStartInfo::from_bytes(&raw);
        assert_eq!(si.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(si.version, 1);
        assert_eq!((si.nr_modules, si.rsdp_paddr, si.flags), (0, 0, 0));
        assert_eq!(si.cmdline_paddr, CMDLINE_ADDR);

        let expected = layout.memmap();
        assert_eq!(si.memmap_entries as usize, expected.len());
        for (i, want) in expected.iter().enumerate() {
            let mut e = [0u8; HvmMemmapTableEntry::SIZE];
            let at = si.memmap_paddr + (i * HvmMemmapTableEntry::SIZE) as u64;
            mem.read_slice(&mut e, GuestAddress(at)).expect("read");
            assert_eq!(HvmMemmapTableEntry::from_bytes(&e), *want);
        }
        assert!(
            si.memmap_paddr + (expected.len() * HvmMemmapTableEntry::SIZE) as u64 <= CMDLINE_ADDR
        );

        let mut line = [0u8; 19];
        mem.read_slice(&mut line, GuestAddress(si.cmdline_paddr))
            .expect("read");
        assert_eq!(&line, b"console=hvc0 io=pv\0");
    }

    #[test]
    fn empty_cmdline_is_still_written() {
        let layout = MemoryLayout::new(8).expect("layout");
        let mem = layout.allocate().expect("memory");
        mem.write_slice(&[0xaa], GuestAddress(CMDLINE_ADDR))
            .expect("dirty");
        write_boot_info(&mem, &layout, "", &[]).expect("write");
        let b: u8 = mem.read_obj(GuestAddress(CMDLINE_ADDR)).expect("read");
        assert_eq!(b, 0);
    }

    #[test]
    fn cmdline_limits() {
        assert!(check_cmdline(&"x".repeat(CMDLINE_MAX)).is_ok());
        let err = check_cmdline(&"x".repeat(CMDLINE_MAX + 1)).expect_err("too long");
        assert_eq!(
            err.to_string(),
            "command line is 4096 bytes; at most 4095 fit in its page"
        );
        assert!(matches!(check_cmdline("a\0b"), Err(BootError::CmdlineNul)));
        let layout = MemoryLayout::new(8).expect("layout");
        let mem = layout.allocate().expect("memory");
        assert!(write_boot_info(&mem, &layout, &"y".repeat(CMDLINE_MAX), &[]).is_ok());
        let last: u8 = mem
            .read_obj(GuestAddress(CMDLINE_ADDR + CMDLINE_MAX as u64))
            .expect("read");
        assert_eq!(last, 0);
    }

    #[test]
    fn segments_must_fit_ram_and_avoid_boot_info() {
        let layout = MemoryLayout::new(16).expect("layout");
        let check = |b: ElfBuilder| layout.check_fits(&elf::parse(&b.build()).expect("elf"));
        let ok = ElfBuilder::new()
            .segment(0x10_0000, &[0x90; 4])
            .pvh_entry(0x10_0000);
        assert!(check(ok.clone()).is_ok());

        let beyond = ok.clone().segment_with_memsz(0xf0_0000, &[], 0x20_0000);
        let err = check(beyond).expect_err("beyond RAM");
        assert_eq!(
            err.to_string(),
            "segment 1 [0xf00000, 0x1100000) does not fit in the guest's 16 MiB of RAM \
             ([0x0, 0x1000000))"
        );

        let bss_beyond = ok.clone().segment_with_memsz(0x10_1000, &[1], 0x100_0000);
        assert!(matches!(
            check(bss_beyond),
            Err(BootError::SegmentOutsideRam { .. })
        ));

        let over_info = ok.clone().segment(0x7ff0, &[0; 0x20]);
        let err = check(over_info).expect_err("overlap");
        assert_eq!(
            err.to_string(),
            "segment 1 [0x7ff0, 0x8010) overlaps the shim's boot information area [0x5000, 0x9000)"
        );
        assert!(check(ok.clone().segment(0x9000, &[0; 16])).is_ok());
        assert!(check(ok.segment(0x4ff0, &[0; 16])).is_ok());
    }

    #[test]
    fn segment_in_the_mmio_hole_is_rejected() {
        let layout = MemoryLayout::new(5000).expect("layout");
        let img = ElfBuilder::new()
            .segment(0x10_0000, &[0x90])
            .pvh_entry(0x10_0000)
            .segment_with_memsz(MMIO_HOLE_START - 0x1000, &[], 0x2000)
            .build();
        let err = layout
            .check_fits(&elf::parse(&img).expect("elf"))
            .expect_err("hole");
        assert!(err.to_string().contains("and [0x100000000, "), "{err}");
    }

    #[test]
    fn kernel_segments_land_at_their_physical_addresses() {
        let layout = MemoryLayout::new(8).expect("layout");
        let mem = layout.allocate().expect("memory");
        let img = ElfBuilder::new()
            .segment(0x10_0000, &[1, 2, 3, 4])
            .segment_with_memsz(0x20_0000, &[9], 0x1000)
            .pvh_entry(0x10_0000)
            .build();
        load_kernel(&mem, &img, &elf::parse(&img).expect("elf")).expect("load");
        let mut b = [0u8; 4];
        mem.read_slice(&mut b, GuestAddress(0x10_0000))
            .expect("read");
        assert_eq!(b, [1, 2, 3, 4]);
        let v: u8 = mem.read_obj(GuestAddress(0x20_0000)).expect("read");
        assert_eq!(v, 9);
        // Low RAM and the special pages.
        assert_eq!(mem.num_regions(), 2);
    }

    #[test]
    fn gdt_descriptors_are_the_classic_flat_ones() {
        assert_eq!(PVH_CODE.descriptor(), 0x00cf_9b00_0000_ffff);
        assert_eq!(PVH_DATA.descriptor(), 0x00cf_9300_0000_ffff);
        assert_eq!(PVH_TSS.descriptor(), 0x0000_8b00_0000_0067);
    }

    #[test]
    fn start_state_follows_the_pvh_spec() {
        let s = pvh_start_state(0x10_0040, START_INFO_ADDR);
        assert_eq!((s.rip, s.rbx, s.rflags), (0x10_0040, START_INFO_ADDR, 2));
        assert_eq!((s.cr0, s.cr4, s.efer), (0x11, 0, 0));
        assert_eq!(
            (s.code.base, s.code.limit, s.code.type_),
            (0, 0xffff_ffff, 0xb)
        );
        assert!(s.code.db && s.code.g && s.code.s && s.code.present);
        assert_eq!((s.data.type_, s.tss.type_, s.tss.limit), (0x3, 0xb, 0x67));
        assert_eq!(s.gdt_limit, 31);
    }

    #[test]
    fn kernel_segment_over_the_mp_table_is_rejected() {
        let layout = MemoryLayout::new(16).expect("layout");
        let img = ElfBuilder::new()
            .segment(0x10_0000, &[0x90])
            .pvh_entry(0x10_0000)
            .segment(0xf_0800, &[0; 16])
            .build();
        let err = layout
            .check_fits(&elf::parse(&img).expect("elf"))
            .expect_err("overlap");
        assert!(
            matches!(err, BootError::SegmentOverlapsMpTable { .. }),
            "{err}"
        );
    }

    #[test]
    fn mp_table_checksums_and_counts() {
        let pci = [MpPciIrq {
            device: 3,
            pin: 1,
            ioapic_pin: 19,
        }];
        let t = mp_table(&pci);
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        // cpu, 2 buses, ioapic, 15 ISA, 1 PCI, 2 local
        assert_eq!(u16::from_le_bytes([table[34], table[35]]), 22);
        assert_eq!(len, 44 + 20 + 21 * 8);
        let layout = MemoryLayout::new(8).expect("layout");
        let mem = layout.allocate().expect("memory");
        write_mp_table(&mem, &pci).expect("write");
        let mut back = vec![0u8; t.len()];
        mem.read_slice(&mut back, GuestAddress(MP_TABLE_ADDR))
            .expect("read");
        assert_eq!(back, t);
        // Every device and pin of bus 0 fits the area.
        let all: Vec<MpPciIrq> = (0..32)
            .flat_map(|device| {
                (1..=4).map(move |pin| MpPciIrq {
                    device,
                    pin,
                    ioapic_pin: 16,
                })
            })
            .collect();
        assert!(write_mp_table(&mem, &all).is_ok());
    }

    #[test]
    fn modules_are_listed_in_order_below_the_top_of_low_ram_with_their_command_lines() {
        let layout = MemoryLayout::new(64).expect("layout");
        let mem = layout.allocate().expect("memory");
        let modules = [
            BootModule {
                bytes: vec![0xa5u8; 10_000],
                cmdline: None,
            },
            BootModule {
                bytes: vec![0x5a; 5],
                cmdline: Some("root=/dev/xvda ro".into()),
            },
            BootModule {
                bytes: Vec::new(),
                cmdline: Some(String::new()),
            },
        ];
        let at = module_addresses(&layout, &modules, 0x20_0000).expect("fits");
        assert_eq!(at[0], 64 * MIB - 0x3000, "the first at the top of RAM");
        assert_eq!(at[1], at[0] - 0x1000, "the next below it");
        assert!(at.iter().all(|a| a % 0x1000 == 0 && *a >= 0x20_0000));
        let placed: Vec<_> = modules.iter().zip(at.iter().copied()).collect();
        write_boot_info(&mem, &layout, "", &placed).expect("write");
        let mut si = [0u8; HvmStartInfo::SIZE];
        mem.read_slice(&mut si, GuestAddress(START_INFO_ADDR))
            .expect("read");
        let si = HvmStartInfo::from_bytes(&si);
        assert_eq!((si.nr_modules, si.modlist_paddr), (3, MODLIST_ADDR));
        let entry = |i: u64| {
            let mut e = [0u8; 32];
            mem.read_slice(&mut e, GuestAddress(MODLIST_ADDR + 32 * i))
                .expect("read");
            HvmModlistEntry::from_bytes(&e)
        };
        let e = entry(0);
        assert_eq!((e.paddr, e.size, e.cmdline_paddr), (at[0], 10_000, 0));
        let mut back = vec![0u8; 10_000];
        mem.read_slice(&mut back, GuestAddress(at[0]))
            .expect("read");
        assert_eq!(back, modules[0].bytes);
        let e = entry(1);
        assert_eq!((e.paddr, e.size), (at[1], 5));
        assert_eq!(e.cmdline_paddr, MODLIST_ADDR + 3 * 32);
        let mut text = [0u8; 18];
        mem.read_slice(&mut text, GuestAddress(e.cmdline_paddr))
            .expect("read");
        assert_eq!(&text, b"root=/dev/xvda ro\0");
        assert_eq!(entry(2).cmdline_paddr, MODLIST_ADDR + 3 * 32 + 18);

        // Too large for the RAM above the kernel, or larger than RAM: refused.
        let big = |mib: u64| BootModule {
            bytes: vec![0; (mib * MIB) as usize],
            cmdline: None,
        };
        assert!(module_addresses(&layout, &[big(63)], 0x20_0000).is_err());
        assert!(module_addresses(&layout, &[big(65)], 0).is_err());
        assert!(module_addresses(&layout, &[big(30), big(30), big(30)], 0).is_err());
        // A module list with command lines beyond its page, or a NUL in one: refused.
        let wordy = BootModule {
            bytes: vec![1],
            cmdline: Some("x".repeat(4096)),
        };
        let err = write_boot_info(&mem, &layout, "", &[(&wordy, at[0])]).unwrap_err();
        assert!(
            matches!(err, BootError::ModuleListTooLong { count: 1, .. }),
            "{err}"
        );
        let nul = BootModule {
            bytes: vec![1],
            cmdline: Some("a\0b".into()),
        };
        let err = write_boot_info(&mem, &layout, "", &[(&nul, at[0])]).unwrap_err();
        assert!(matches!(err, BootError::ModuleCmdlineNul), "{err}");
    }
}
