//! Reading and validating `hvm_start_info` (`arch-x86/hvm/start_info.h`).
//!
//! The loader (Xen, QEMU, host-shim) is outside the kernel's control, so every pointer
//! and count in the block is checked before use: the magic, the version, that the
//! command line is NUL-terminated within [`MAX_CMDLINE`] bytes, that the module list
//! and memory map fit their limits and do not wrap. Guest memory is read through
//! [`PhysRead`], so the same code runs against a byte buffer in host tests.

use crate::memmap::{MAX_MEMMAP_ENTRIES, MemoryMap};
use pv_drivers::abi::start_info::{
    HVM_START_INFO_V0_SIZE, HvmMemmapTableEntry, HvmModlistEntry, HvmStartInfo,
    XEN_HVM_START_MAGIC_VALUE,
};

/// Longest command line accepted, including its NUL (Xen's `MAX_GUEST_CMDLINE` is
/// 1024; QEMU passes up to a page).
pub const MAX_CMDLINE: usize = 4096;
/// Most boot modules accepted.
pub const MAX_MODULES: usize = 16;

/// Reads guest-physical memory.
pub trait PhysRead {
    /// Fills `buf` from physical address `paddr`; `Err` if any byte is not readable.
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), Unreadable>;
}

/// A physical range could not be read (not mapped, or outside memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unreadable;

/// Why the start_info block was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// `%ebx` was 0.
    NullStartInfo,
    /// A structure the block points at cannot be read.
    Unreadable {
        /// What was being read.
        what: &'static str,
        /// Its physical address.
        paddr: u64,
    },
    /// The magic is not `XEN_HVM_START_MAGIC_VALUE`.
    BadMagic(u32),
    /// The command line has no NUL within [`MAX_CMDLINE`] bytes.
    CmdlineUnterminated,
    /// The command line is not UTF-8.
    CmdlineNotUtf8,
    /// Version 0, or an empty memory map: this kernel needs the loader's memory map.
    NoMemoryMap,
    /// More modules than [`MAX_MODULES`].
    TooManyModules(u32),
    /// Module `index` runs past the end of the address space.
    ModuleWraps(usize),
    /// The memory-map array itself wraps the address space.
    MemmapWraps,
    /// Modules are announced but the module-list address is 0 ("not present").
    NullModuleList(u32),
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NullStartInfo => write!(f, "start_info pointer is null"),
            Self::Unreadable { what, paddr } => {
                write!(f, "cannot read {what} at physical address {paddr:#x}")
            }
            Self::BadMagic(m) => write!(
                f,
                "start_info magic is {m:#010x}, expected {XEN_HVM_START_MAGIC_VALUE:#010x}"
            ),
            Self::CmdlineUnterminated => {
                write!(f, "command line has no NUL within {MAX_CMDLINE} bytes")
            }
            Self::CmdlineNotUtf8 => write!(f, "command line is not UTF-8"),
            Self::NoMemoryMap => write!(f, "start_info has no memory map (version 0 or 0 entries)"),
            Self::TooManyModules(n) => write!(f, "{n} modules; at most {MAX_MODULES} supported"),
            Self::ModuleWraps(i) => write!(f, "module {i} wraps the address space"),
            Self::MemmapWraps => write!(f, "memory map array wraps the address space"),
            Self::NullModuleList(n) => write!(f, "{n} modules announced at address 0"),
        }
    }
}

/// A boot module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Module {
    /// Physical address.
    pub paddr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Physical address of its command line (0: none).
    pub cmdline_paddr: u64,
}

/// The validated content of `hvm_start_info`, copied out of guest memory.
#[derive(Clone, Debug)]
pub struct BootInfo {
    /// Where the block itself lives.
    pub start_info_paddr: u64,
    /// Structure version as given by the loader.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Where the command line lives (0: none given).
    pub cmdline_paddr: u64,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Where the module list lives.
    pub modlist_paddr: u64,
    modules: [Module; MAX_MODULES],
    nr_modules: usize,
    /// Physical address of the ACPI RSDP, if the loader gave one.
    pub rsdp_paddr: Option<u64>,
    /// Where the loader's memory-map array lives and how many entries it has.
    pub memmap_paddr: u64,
    /// Number of entries in the loader's table.
    pub memmap_entries: u32,
    /// The sanitised memory map.
    pub memmap: MemoryMap,
}

impl BootInfo {
    /// The command line (empty if none was given).
    pub fn cmdline(&self) -> &str {
        // Validated as UTF-8 in `parse`.
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// The boot modules.
    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.nr_modules]
    }

    /// The physical ranges the loader's own structures occupy (start_info, memory-map
    /// array, module list, command line, modules), which the kernel must not reuse.
    pub fn occupied(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let fixed = [
            (self.start_info_paddr, HvmStartInfo::SIZE as u64),
            (
                self.memmap_paddr,
                u64::from(self.memmap_entries) * HvmMemmapTableEntry::SIZE as u64,
            ),
            (
                self.modlist_paddr,
                self.nr_modules as u64 * HvmModlistEntry::SIZE as u64,
            ),
            (self.cmdline_paddr, self.cmdline_len as u64 + 1),
        ];
        fixed
            .into_iter()
            .chain(self.modules().iter().map(|m| (m.paddr, m.size)))
            .filter(|&(p, len)| p != 0 && len != 0)
            .map(|(p, len)| (p, p.saturating_add(len)))
    }
}

fn read_pod<const N: usize>(
    mem: &impl PhysRead,
    paddr: u64,
    what: &'static str,
) -> Result<[u8; N], BootError> {
    let mut buf = [0u8; N];
    if paddr.checked_add(N as u64).is_none() {
        return Err(BootError::Unreadable { what, paddr });
    }
    mem.read(paddr, &mut buf)
        .map_err(|_| BootError::Unreadable { what, paddr })?;
    Ok(buf)
}

/// Validates the block at `paddr` and copies out what the kernel needs; each repair of
/// the memory map is passed to `report`.
pub fn parse(
    mem: &impl PhysRead,
    paddr: u64,
    report: impl FnMut(crate::memmap::Anomaly),
) -> Result<BootInfo, BootError> {
    if paddr == 0 {
        return Err(BootError::NullStartInfo);
    }
    // Read the version-0 part first: a version-0 block may sit at the very end of
    // readable memory, so the v1 tail must not be read before the version says so.
    let head: [u8; HVM_START_INFO_V0_SIZE] = read_pod(mem, paddr, "start_info")?;
    let mut raw = [0u8; HvmStartInfo::SIZE];
    raw[..HVM_START_INFO_V0_SIZE].copy_from_slice(&head);
    let magic = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    if magic != XEN_HVM_START_MAGIC_VALUE {
        return Err(BootError::BadMagic(magic));
    }
    let version = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
    if version >= 1 {
        let tail: [u8; HvmStartInfo::SIZE - HVM_START_INFO_V0_SIZE] = read_pod(
            mem,
            paddr + HVM_START_INFO_V0_SIZE as u64,
            "start_info (version 1 fields)",
        )?;
        raw[HVM_START_INFO_V0_SIZE..].copy_from_slice(&tail);
    }
    let si = HvmStartInfo::from_bytes(&raw);

    // Command line: NUL-terminated, bounded, UTF-8. Read byte-chunk by chunk so a short
    // command line near the end of memory is still readable.
    let mut cmdline = [0u8; MAX_CMDLINE];
    let mut cmdline_len = 0;
    if si.cmdline_paddr != 0 {
        let mut found = false;
        let mut chunk = [0u8; 64];
        'outer: while cmdline_len < MAX_CMDLINE {
            let n = chunk.len().min(MAX_CMDLINE - cmdline_len);
            let at =
                si.cmdline_paddr
                    .checked_add(cmdline_len as u64)
                    .ok_or(BootError::Unreadable {
                        what: "command line",
                        paddr: si.cmdline_paddr,
                    })?;
            // Fall back to single bytes where a whole chunk is not readable.
            let got = if mem.read(at, &mut chunk[..n]).is_ok() {
                n
            } else {
                mem.read(at, &mut chunk[..1])
                    .map_err(|_| BootError::Unreadable {
                        what: "command line",
                        paddr: si.cmdline_paddr,
                    })?;
                1
            };
            for &b in &chunk[..got] {
                if b == 0 {
                    found = true;
                    break 'outer;
                }
                cmdline[cmdline_len] = b;
                cmdline_len += 1;
            }
        }
        if !found {
            return Err(BootError::CmdlineUnterminated);
        }
        if core::str::from_utf8(&cmdline[..cmdline_len]).is_err() {
            return Err(BootError::CmdlineNotUtf8);
        }
    }

    // Modules.
    // start_info.h: "a 0 value in any of the address fields should be treated as not
    // present".
    if si.nr_modules as usize > MAX_MODULES {
        return Err(BootError::TooManyModules(si.nr_modules));
    }
    if si.nr_modules > 0 && si.modlist_paddr == 0 {
        return Err(BootError::NullModuleList(si.nr_modules));
    }
    let mut modules = [Module::default(); MAX_MODULES];
    for (i, m) in modules.iter_mut().enumerate().take(si.nr_modules as usize) {
        let at = si
            .modlist_paddr
            .checked_add((i * HvmModlistEntry::SIZE) as u64)
            .ok_or(BootError::ModuleWraps(i))?;
        let e = HvmModlistEntry::from_bytes(&read_pod(mem, at, "module list")?);
        if e.paddr.checked_add(e.size).is_none() {
            return Err(BootError::ModuleWraps(i));
        }
        *m = Module {
            paddr: e.paddr,
            size: e.size,
            cmdline_paddr: e.cmdline_paddr,
        };
    }

    // Memory map (version 1): this kernel allocates only memory the loader called RAM.
    if version == 0 || si.memmap_entries == 0 || si.memmap_paddr == 0 {
        return Err(BootError::NoMemoryMap);
    }
    let n = (si.memmap_entries as usize).min(MAX_MEMMAP_ENTRIES);
    si.memmap_paddr
        .checked_add(n as u64 * HvmMemmapTableEntry::SIZE as u64)
        .ok_or(BootError::MemmapWraps)?;
    let mut entries = [HvmMemmapTableEntry::default(); MAX_MEMMAP_ENTRIES];
    for (i, slot) in entries.iter_mut().enumerate().take(n) {
        let at = si.memmap_paddr + (i * HvmMemmapTableEntry::SIZE) as u64;
        *slot = HvmMemmapTableEntry::from_bytes(&read_pod(mem, at, "memory map")?);
    }
    // Hand the sanitiser the loader's true count so that it reports truncation.
    let mut report = report;
    if si.memmap_entries as usize > MAX_MEMMAP_ENTRIES {
        report(crate::memmap::Anomaly::Truncated {
            entries: si.memmap_entries as usize,
        });
    }
    let memmap = MemoryMap::sanitize(&entries[..n], report);

    Ok(BootInfo {
        start_info_paddr: paddr,
        version,
        flags: si.flags,
        cmdline_paddr: si.cmdline_paddr,
        cmdline,
        cmdline_len,
        modlist_paddr: si.modlist_paddr,
        modules,
        nr_modules: si.nr_modules as usize,
        rsdp_paddr: (si.rsdp_paddr != 0).then_some(si.rsdp_paddr),
        memmap_paddr: si.memmap_paddr,
        memmap_entries: n as u32,
        memmap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::{Anomaly, RegionKind};
    use pv_drivers::abi::start_info::{XEN_HVM_MEMMAP_TYPE_RAM, XEN_HVM_MEMMAP_TYPE_RESERVED};

    /// Guest memory as a byte vector starting at physical address 0.
    struct Mem(Vec<u8>);

    impl PhysRead for Mem {
        fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), Unreadable> {
            let start = usize::try_from(paddr).map_err(|_| Unreadable)?;
            let end = start.checked_add(buf.len()).ok_or(Unreadable)?;
            buf.copy_from_slice(self.0.get(start..end).ok_or(Unreadable)?);
            Ok(())
        }
    }

    impl Mem {
        fn put(&mut self, at: u64, bytes: &[u8]) {
            self.0[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        }
    }

    const SI: u64 = 0x1000;
    const MEMMAP: u64 = 0x1100;
    const CMDLINE: u64 = 0x2000;
    const MODLIST: u64 = 0x3000;

    fn ram(addr: u64, size: u64) -> HvmMemmapTableEntry {
        HvmMemmapTableEntry {
            addr,
            size,
            type_: XEN_HVM_MEMMAP_TYPE_RAM,
            reserved: 0,
        }
    }

    /// A well-formed v1 block like QEMU's, with `cmdline` and the given memmap.
    fn guest(cmdline: &[u8], memmap: &[HvmMemmapTableEntry]) -> (Mem, HvmStartInfo) {
        let mut mem = Mem(vec![0; 0x10000]);
        let si = HvmStartInfo {
            magic: XEN_HVM_START_MAGIC_VALUE,
            version: 1,
            cmdline_paddr: CMDLINE,
            memmap_paddr: MEMMAP,
            memmap_entries: memmap.len() as u32,
            ..Default::default()
        };
        mem.put(SI, &si.to_bytes());
        mem.put(CMDLINE, cmdline);
        for (i, e) in memmap.iter().enumerate() {
            mem.put(MEMMAP + (i * 24) as u64, &e.to_bytes());
        }
        (mem, si)
    }

    fn parse_ok(mem: &Mem) -> (BootInfo, Vec<Anomaly>) {
        let mut a = Vec::new();
        let info = parse(mem, SI, |x| a.push(x)).expect("valid start_info");
        (info, a)
    }

    #[test]
    fn well_formed_block_parses() {
        let (mem, _) = guest(
            b"console=com1 selftest=boot\0",
            &[ram(0, 0x9_fc00), ram(0x10_0000, 0xf0_0000)],
        );
        let (info, anomalies) = parse_ok(&mem);
        assert!(anomalies.is_empty());
        assert_eq!(info.cmdline(), "console=com1 selftest=boot");
        assert_eq!(info.version, 1);
        assert_eq!(info.rsdp_paddr, None);
        assert_eq!(info.memmap.total_ram(), 0x9_fc00 + 0xf0_0000);
        assert_eq!(info.memmap.regions()[1].kind, RegionKind::Ram);
        let occupied: Vec<_> = info.occupied().collect();
        assert!(occupied.contains(&(SI, SI + 56)));
        assert!(occupied.contains(&(MEMMAP, MEMMAP + 48)));
        assert!(occupied.contains(&(CMDLINE, CMDLINE + 27)));
    }

    #[test]
    fn null_pointer_is_rejected() {
        let (mem, _) = guest(b"\0", &[ram(0, 0x1000)]);
        assert_eq!(
            parse(&mem, 0, |_| {}).unwrap_err(),
            BootError::NullStartInfo
        );
    }

    #[test]
    fn bad_magic_is_rejected() {
        let (mut mem, _) = guest(b"\0", &[ram(0, 0x1000)]);
        mem.put(SI, &0xdead_beefu32.to_le_bytes());
        assert_eq!(
            parse(&mem, SI, |_| {}).unwrap_err(),
            BootError::BadMagic(0xdead_beef)
        );
    }

    #[test]
    fn start_info_outside_memory_is_rejected() {
        let (mem, _) = guest(b"\0", &[ram(0, 0x1000)]);
        assert!(matches!(
            parse(&mem, 0xffff_ffff_ffff_fff0, |_| {}),
            Err(BootError::Unreadable {
                what: "start_info",
                ..
            })
        ));
    }

    #[test]
    fn version_0_has_no_memory_map() {
        let (mut mem, mut si) = guest(b"\0", &[ram(0, 0x1000)]);
        si.version = 0;
        mem.put(SI, &si.to_bytes());
        assert_eq!(parse(&mem, SI, |_| {}).unwrap_err(), BootError::NoMemoryMap);
    }

    #[test]
    fn version_0_block_at_end_of_memory_reads_only_v0_fields() {
        let mut mem = Mem(vec![0; 0x1000]);
        let at = 0x1000 - HVM_START_INFO_V0_SIZE as u64;
        let si = HvmStartInfo {
            magic: XEN_HVM_START_MAGIC_VALUE,
            ..Default::default()
        };
        mem.put(at, &si.to_bytes()[..HVM_START_INFO_V0_SIZE]);
        // Readable, valid magic; refused only for lacking a memory map.
        assert_eq!(parse(&mem, at, |_| {}).unwrap_err(), BootError::NoMemoryMap);
    }

    #[test]
    fn empty_memory_map_is_rejected() {
        let (mem, _) = guest(b"\0", &[]);
        assert_eq!(parse(&mem, SI, |_| {}).unwrap_err(), BootError::NoMemoryMap);
    }

    #[test]
    fn zero_addresses_mean_not_present() {
        let (mut mem, mut si) = guest(b"\0", &[ram(0, 0x1000)]);
        si.memmap_paddr = 0;
        mem.put(SI, &si.to_bytes());
        assert_eq!(parse(&mem, SI, |_| {}).unwrap_err(), BootError::NoMemoryMap);

        let (mut mem, mut si) = guest(b"\0", &[ram(0, 0x1000)]);
        si.nr_modules = 2;
        si.modlist_paddr = 0;
        mem.put(SI, &si.to_bytes());
        assert_eq!(
            parse(&mem, SI, |_| {}).unwrap_err(),
            BootError::NullModuleList(2)
        );
    }

    #[test]
    fn memory_map_outside_memory_is_rejected() {
        let (mut mem, mut si) = guest(b"\0", &[ram(0, 0x1000)]);
        si.memmap_paddr = 0x10_0000;
        mem.put(SI, &si.to_bytes());
        assert!(matches!(
            parse(&mem, SI, |_| {}),
            Err(BootError::Unreadable {
                what: "memory map",
                ..
            })
        ));
    }

    #[test]
    fn memory_map_array_that_wraps_is_rejected() {
        let (mut mem, mut si) = guest(b"\0", &[ram(0, 0x1000)]);
        si.memmap_paddr = u64::MAX - 8;
        mem.put(SI, &si.to_bytes());
        assert_eq!(parse(&mem, SI, |_| {}).unwrap_err(), BootError::MemmapWraps);
    }

    #[test]
    fn overlapping_and_wrapping_entries_are_repaired_and_reported() {
        let res = HvmMemmapTableEntry {
            addr: 0x10_0000,
            size: 0x1000,
            type_: XEN_HVM_MEMMAP_TYPE_RESERVED,
            reserved: 0,
        };
        let (mem, _) = guest(b"\0", &[ram(0x10_0000, 0x10_0000), res, ram(u64::MAX, 2)]);
        let (info, anomalies) = parse_ok(&mem);
        assert_eq!(
            anomalies,
            vec![Anomaly::Wraps { index: 2 }, Anomaly::Overlap { a: 0, b: 1 }]
        );
        assert!(!info.memmap.is_ram(0x10_0000, 0x10_1000));
        assert!(info.memmap.is_ram(0x10_1000, 0x20_0000));
    }

    #[test]
    fn oversized_memory_map_is_truncated_and_reported() {
        let (mut mem, mut si) = guest(b"\0", &[ram(0, 0x1000)]);
        si.memmap_entries = 100_000;
        mem.put(SI, &si.to_bytes());
        // Only MAX_MEMMAP_ENTRIES are read; the rest of the buffer is zeroes (empty).
        let mut a = Vec::new();
        let info = parse(&mem, SI, |x| a.push(x)).unwrap();
        assert_eq!(a[0], Anomaly::Truncated { entries: 100_000 });
        assert_eq!(info.memmap.total_ram(), 0x1000);
    }

    #[test]
    fn unterminated_cmdline_is_rejected() {
        let (mut mem, _) = guest(b"\0", &[ram(0, 0x1000)]);
        mem.put(CMDLINE, &[b'a'; MAX_CMDLINE]);
        assert_eq!(
            parse(&mem, SI, |_| {}).unwrap_err(),
            BootError::CmdlineUnterminated
        );
    }

    #[test]
    fn longest_cmdline_is_accepted() {
        let (mut mem, _) = guest(b"\0", &[ram(0, 0x1000)]);
        mem.put(CMDLINE, &[b'a'; MAX_CMDLINE - 1]);
        mem.put(CMDLINE + MAX_CMDLINE as u64 - 1, &[0]);
        let (info, _) = parse_ok(&mem);
        assert_eq!(info.cmdline().len(), MAX_CMDLINE - 1);
    }

    #[test]
    fn cmdline_ending_at_end_of_memory_is_read() {
        let (mut mem, mut si) = guest(b"\0", &[ram(0, 0x1000)]);
        si.cmdline_paddr = mem.0.len() as u64 - 3;
        mem.put(SI, &si.to_bytes());
        mem.put(si.cmdline_paddr, b"ab\0");
        let (info, _) = parse_ok(&mem);
        assert_eq!(info.cmdline(), "ab");
    }

    #[test]
    fn cmdline_running_off_memory_is_unreadable() {
        let (mut mem, mut si) = guest(b"\0", &[ram(0, 0x1000)]);
        si.cmdline_paddr = mem.0.len() as u64 - 2;
        mem.put(SI, &si.to_bytes());
        mem.put(si.cmdline_paddr, b"ab");
        assert!(matches!(
            parse(&mem, SI, |_| {}),
            Err(BootError::Unreadable {
                what: "command line",
                ..
            })
        ));
    }

    #[test]
    fn non_utf8_cmdline_is_rejected() {
        let (mem, _) = guest(b"\xff\xfe\0", &[ram(0, 0x1000)]);
        assert_eq!(
            parse(&mem, SI, |_| {}).unwrap_err(),
            BootError::CmdlineNotUtf8
        );
    }

    #[test]
    fn no_cmdline_means_empty() {
        let (mut mem, mut si) = guest(b"\0", &[ram(0, 0x1000)]);
        si.cmdline_paddr = 0;
        mem.put(SI, &si.to_bytes());
        let (info, _) = parse_ok(&mem);
        assert_eq!(info.cmdline(), "");
    }

    #[test]
    fn modules_are_read_and_checked() {
        let (mut mem, mut si) = guest(b"\0", &[ram(0, 0x1_0000)]);
        si.nr_modules = 1;
        si.modlist_paddr = MODLIST;
        si.rsdp_paddr = 0xe_0000;
        mem.put(SI, &si.to_bytes());
        let m = HvmModlistEntry {
            paddr: 0x8000,
            size: 0x800,
            cmdline_paddr: 0,
            reserved: 0,
        };
        mem.put(MODLIST, &m.to_bytes());
        let (info, _) = parse_ok(&mem);
        assert_eq!(
            info.modules(),
            &[Module {
                paddr: 0x8000,
                size: 0x800,
                cmdline_paddr: 0
            }]
        );
        assert_eq!(info.rsdp_paddr, Some(0xe_0000));
        assert!(info.occupied().any(|r| r == (0x8000, 0x8800)));

        let wrap = HvmModlistEntry {
            paddr: u64::MAX,
            size: 2,
            cmdline_paddr: 0,
            reserved: 0,
        };
        mem.put(MODLIST, &wrap.to_bytes());
        assert_eq!(
            parse(&mem, SI, |_| {}).unwrap_err(),
            BootError::ModuleWraps(0)
        );

        si.nr_modules = 1000;
        mem.put(SI, &si.to_bytes());
        assert_eq!(
            parse(&mem, SI, |_| {}).unwrap_err(),
            BootError::TooManyModules(1000)
        );
    }
}
