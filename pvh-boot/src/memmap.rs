//! Sanitising the PVH memory map (`hvm_memmap_table_entry[]`).
//!
//! The table comes from the loader and is not trusted: entries may be unsorted, empty,
//! overlapping, or wrap past 2^64. [`MemoryMap::sanitize`] turns it into sorted,
//! non-overlapping, merged regions. An entry that wraps or is empty is dropped; where
//! entries overlap the more restrictive type wins (any non-RAM type beats RAM, as
//! Linux's e820 sanitiser does), so the kernel never allocates memory that some entry
//! says is not RAM. Every such repair is reported as an [`Anomaly`].

use pv_drivers::abi::start_info::{
    HvmMemmapTableEntry, XEN_HVM_MEMMAP_TYPE_ACPI, XEN_HVM_MEMMAP_TYPE_DISABLED,
    XEN_HVM_MEMMAP_TYPE_NVS, XEN_HVM_MEMMAP_TYPE_PMEM, XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_MEMMAP_TYPE_UNUSABLE,
};

/// Most memory-map entries accepted from the loader (Xen's domain builder writes a
/// handful; QEMU about six).
pub const MAX_MEMMAP_ENTRIES: usize = 128;

/// The type of a memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Usable RAM.
    Ram,
    /// Persistent memory.
    Pmem,
    /// ACPI reclaimable.
    Acpi,
    /// ACPI NVS.
    Nvs,
    /// Reserved.
    Reserved,
    /// Unusable (bad memory).
    Unusable,
    /// Disabled.
    Disabled,
    /// A type this kernel does not know; never used as RAM.
    Other(u32),
}

impl RegionKind {
    /// Maps an `XEN_HVM_MEMMAP_TYPE_*` value.
    pub fn from_raw(t: u32) -> Self {
        match t {
            XEN_HVM_MEMMAP_TYPE_RAM => Self::Ram,
            XEN_HVM_MEMMAP_TYPE_RESERVED => Self::Reserved,
            XEN_HVM_MEMMAP_TYPE_ACPI => Self::Acpi,
            XEN_HVM_MEMMAP_TYPE_NVS => Self::Nvs,
            XEN_HVM_MEMMAP_TYPE_UNUSABLE => Self::Unusable,
            XEN_HVM_MEMMAP_TYPE_DISABLED => Self::Disabled,
            XEN_HVM_MEMMAP_TYPE_PMEM => Self::Pmem,
            other => Self::Other(other),
        }
    }

    /// Which type wins where entries overlap: higher is more restrictive.
    fn precedence(self) -> u8 {
        match self {
            Self::Ram => 0,
            Self::Pmem => 1,
            Self::Acpi => 2,
            Self::Nvs => 3,
            Self::Reserved => 4,
            Self::Unusable => 5,
            Self::Disabled => 6,
            Self::Other(_) => 7,
        }
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ram => "ram",
            Self::Pmem => "pmem",
            Self::Acpi => "acpi",
            Self::Nvs => "nvs",
            Self::Reserved => "reserved",
            Self::Unusable => "unusable",
            Self::Disabled => "disabled",
            Self::Other(_) => "unknown",
        }
    }
}

/// A half-open physical range `[start, end)` with its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Type.
    pub kind: RegionKind,
}

/// Something wrong with the loader's table that [`MemoryMap::sanitize`] repaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// Entry `index` has size 0; dropped.
    Empty {
        /// Index in the loader's table.
        index: usize,
    },
    /// Entry `index` runs past the end of the 64-bit address space; dropped.
    Wraps {
        /// Index in the loader's table.
        index: usize,
    },
    /// Entries `a` and `b` overlap; the more restrictive type was kept.
    Overlap {
        /// Index of one entry.
        a: usize,
        /// Index of the other.
        b: usize,
    },
    /// The table has more entries than [`MAX_MEMMAP_ENTRIES`]; the rest were ignored.
    Truncated {
        /// How many entries the loader claimed.
        entries: usize,
    },
}

impl core::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Empty { index } => write!(f, "memmap entry {index} is empty; ignored"),
            Self::Wraps { index } => {
                write!(f, "memmap entry {index} wraps the address space; ignored")
            }
            Self::Overlap { a, b } => write!(
                f,
                "memmap entries {a} and {b} overlap; the more restrictive type wins"
            ),
            Self::Truncated { entries } => write!(
                f,
                "memmap has {entries} entries; only the first {MAX_MEMMAP_ENTRIES} are used"
            ),
        }
    }
}

/// A sorted, non-overlapping, merged memory map of at most
/// `2 * MAX_MEMMAP_ENTRIES` regions (each input entry can split at most one region).
#[derive(Clone, Debug)]
pub struct MemoryMap {
    regions: [Region; 2 * MAX_MEMMAP_ENTRIES],
    len: usize,
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self {
            regions: [Region {
                start: 0,
                end: 0,
                kind: RegionKind::Reserved,
            }; 2 * MAX_MEMMAP_ENTRIES],
            len: 0,
        }
    }
}

impl MemoryMap {
    /// Builds a clean map from the loader's entries, reporting each repair.
    pub fn sanitize(raw: &[HvmMemmapTableEntry], mut report: impl FnMut(Anomaly)) -> Self {
        if raw.len() > MAX_MEMMAP_ENTRIES {
            report(Anomaly::Truncated { entries: raw.len() });
        }
        let raw = &raw[..raw.len().min(MAX_MEMMAP_ENTRIES)];

        // Valid entries as half-open ranges, with their table index.
        let mut valid = [(0u64, 0u64, RegionKind::Ram, 0usize); MAX_MEMMAP_ENTRIES];
        let mut nvalid = 0;
        for (index, e) in raw.iter().enumerate() {
            if e.size == 0 {
                report(Anomaly::Empty { index });
                continue;
            }
            let Some(end) = e.addr.checked_add(e.size) else {
                report(Anomaly::Wraps { index });
                continue;
            };
            valid[nvalid] = (e.addr, end, RegionKind::from_raw(e.type_), index);
            nvalid += 1;
        }
        let valid = &valid[..nvalid];

        // Report each overlapping pair once.
        for (i, a) in valid.iter().enumerate() {
            for b in &valid[i + 1..] {
                if a.0 < b.1 && b.0 < a.1 {
                    report(Anomaly::Overlap { a: a.3, b: b.3 });
                }
            }
        }

        // Elementary intervals between consecutive boundaries; each takes the most
        // restrictive type of the entries covering it.
        let mut points = [0u64; 2 * MAX_MEMMAP_ENTRIES];
        let mut npoints = 0;
        for &(s, e, _, _) in valid {
            points[npoints] = s;
            points[npoints + 1] = e;
            npoints += 2;
        }
        let points = &mut points[..npoints];
        points.sort_unstable();

        let mut map = Self::default();
        for w in points.windows(2) {
            let (s, e) = (w[0], w[1]);
            if s == e {
                continue;
            }
            let kind = valid
                .iter()
                .filter(|v| v.0 <= s && e <= v.1)
                .map(|v| v.2)
                .max_by_key(|k| k.precedence());
            if let Some(kind) = kind {
                map.push_merged(Region {
                    start: s,
                    end: e,
                    kind,
                });
            }
        }
        map
    }

    fn push_merged(&mut self, r: Region) {
        if let Some(last) = self.regions[..self.len].last_mut()
            && last.end == r.start
            && last.kind == r.kind
        {
            last.end = r.end;
            return;
        }
        // Capacity: n entries give at most 2n - 1 elementary intervals.
        self.regions[self.len] = r;
        self.len += 1;
    }

    /// The regions, sorted by address.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    /// The RAM regions, sorted by address.
    pub fn ram(&self) -> impl Iterator<Item = &Region> {
        self.regions().iter().filter(|r| r.kind == RegionKind::Ram)
    }

    /// Total bytes of RAM.
    pub fn total_ram(&self) -> u64 {
        self.ram().map(|r| r.end - r.start).sum()
    }

    /// Whether `[start, end)` lies entirely inside one RAM region.
    pub fn is_ram(&self, start: u64, end: u64) -> bool {
        self.ram().any(|r| r.start <= start && end <= r.end)
    }
}

/// A fixed-capacity set of disjoint half-open ranges, for carving reserved areas out of
/// RAM before any heap exists.
#[derive(Clone, Debug)]
pub struct RangeSet<const N: usize> {
    ranges: [(u64, u64); N],
    len: usize,
}

/// [`RangeSet::insert`] found the set full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeSetFull;

impl<const N: usize> Default for RangeSet<N> {
    fn default() -> Self {
        Self {
            ranges: [(0, 0); N],
            len: 0,
        }
    }
}

impl<const N: usize> RangeSet<N> {
    /// The ranges, sorted by address, disjoint.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges[..self.len]
    }

    /// Adds `[start, end)`, merging with neighbours it touches.
    pub fn insert(&mut self, mut start: u64, mut end: u64) -> Result<(), RangeSetFull> {
        if start >= end {
            return Ok(());
        }
        // Absorb every range that overlaps or touches the new one.
        let mut i = 0;
        while i < self.len {
            let (s, e) = self.ranges[i];
            if s <= end && start <= e {
                start = start.min(s);
                end = end.max(e);
                self.remove_at(i);
            } else {
                i += 1;
            }
        }
        if self.len == N {
            return Err(RangeSetFull);
        }
        let pos = self.ranges[..self.len].partition_point(|r| r.0 < start);
        self.ranges.copy_within(pos..self.len, pos + 1);
        self.ranges[pos] = (start, end);
        self.len += 1;
        Ok(())
    }

    /// Removes `[start, end)` from the set, splitting a range where needed.
    pub fn remove(&mut self, start: u64, end: u64) -> Result<(), RangeSetFull> {
        if start >= end {
            return Ok(());
        }
        let mut i = 0;
        while i < self.len {
            let (s, e) = self.ranges[i];
            if e <= start || end <= s {
                i += 1;
                continue;
            }
            match (s < start, end < e) {
                (false, false) => self.remove_at(i),
                (true, false) => {
                    self.ranges[i].1 = start;
                    i += 1;
                }
                (false, true) => {
                    self.ranges[i].0 = end;
                    i += 1;
                }
                (true, true) => {
                    if self.len == N {
                        return Err(RangeSetFull);
                    }
                    self.ranges.copy_within(i + 1..self.len, i + 2);
                    self.ranges[i] = (s, start);
                    self.ranges[i + 1] = (end, e);
                    self.len += 1;
                    i += 2;
                }
            }
        }
        Ok(())
    }

    fn remove_at(&mut self, i: usize) {
        self.ranges.copy_within(i + 1..self.len, i);
        self.len -= 1;
    }

    /// Total bytes covered.
    pub fn total(&self) -> u64 {
        self.ranges().iter().map(|r| r.1 - r.0).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(addr: u64, size: u64, t: u32) -> HvmMemmapTableEntry {
        HvmMemmapTableEntry {
            addr,
            size,
            type_: t,
            reserved: 0,
        }
    }

    fn sanitize(raw: &[HvmMemmapTableEntry]) -> (Vec<(u64, u64, RegionKind)>, Vec<Anomaly>) {
        let mut anomalies = Vec::new();
        let map = MemoryMap::sanitize(raw, |a| anomalies.push(a));
        let regions = map
            .regions()
            .iter()
            .map(|r| (r.start, r.end, r.kind))
            .collect();
        (regions, anomalies)
    }

    const RAM: u32 = XEN_HVM_MEMMAP_TYPE_RAM;
    const RES: u32 = XEN_HVM_MEMMAP_TYPE_RESERVED;

    #[test]
    fn a_clean_pc_map_passes_through_sorted() {
        let (r, a) = sanitize(&[
            e(0x10_0000, 0x7f0_0000, RAM),
            e(0, 0x9_fc00, RAM),
            e(0x9_fc00, 0x6_0400, RES),
        ]);
        assert!(a.is_empty());
        assert_eq!(
            r,
            vec![
                (0, 0x9_fc00, RegionKind::Ram),
                (0x9_fc00, 0x10_0000, RegionKind::Reserved),
                (0x10_0000, 0x800_0000, RegionKind::Ram),
            ]
        );
    }

    #[test]
    fn adjacent_ram_merges() {
        let (r, a) = sanitize(&[e(0, 0x1000, RAM), e(0x1000, 0x1000, RAM)]);
        assert!(a.is_empty());
        assert_eq!(r, vec![(0, 0x2000, RegionKind::Ram)]);
    }

    #[test]
    fn reserved_inside_ram_wins_and_is_reported() {
        let (r, a) = sanitize(&[e(0, 0x10_0000, RAM), e(0x4000, 0x1000, RES)]);
        assert_eq!(a, vec![Anomaly::Overlap { a: 0, b: 1 }]);
        assert_eq!(
            r,
            vec![
                (0, 0x4000, RegionKind::Ram),
                (0x4000, 0x5000, RegionKind::Reserved),
                (0x5000, 0x10_0000, RegionKind::Ram),
            ]
        );
    }

    #[test]
    fn overlapping_ram_entries_merge() {
        let (r, a) = sanitize(&[e(0, 0x3000, RAM), e(0x2000, 0x3000, RAM)]);
        assert_eq!(a, vec![Anomaly::Overlap { a: 0, b: 1 }]);
        assert_eq!(r, vec![(0, 0x5000, RegionKind::Ram)]);
    }

    #[test]
    fn wrapping_and_empty_entries_are_dropped() {
        let (r, a) = sanitize(&[
            e(u64::MAX - 0xfff, 0x2000, RAM),
            e(0x1000, 0, RAM),
            e(0x10_0000, 0x1000, RAM),
        ]);
        assert_eq!(
            a,
            vec![Anomaly::Wraps { index: 0 }, Anomaly::Empty { index: 1 }]
        );
        assert_eq!(r, vec![(0x10_0000, 0x10_1000, RegionKind::Ram)]);
    }

    #[test]
    fn an_entry_ending_exactly_at_2_pow_64_is_rejected_as_wrapping() {
        // [2^64 - 4096, 2^64) cannot be expressed as a half-open u64 range.
        let (r, a) = sanitize(&[e(u64::MAX - 0xfff, 0x1000, RAM)]);
        assert_eq!(a, vec![Anomaly::Wraps { index: 0 }]);
        assert!(r.is_empty());
    }

    #[test]
    fn unknown_types_are_never_ram_and_beat_ram() {
        let (r, _) = sanitize(&[e(0, 0x2000, RAM), e(0, 0x1000, 0xf000_0001)]);
        assert_eq!(r[0], (0, 0x1000, RegionKind::Other(0xf000_0001)));
        assert_eq!(r[1], (0x1000, 0x2000, RegionKind::Ram));
    }

    #[test]
    fn too_many_entries_are_truncated_not_fatal() {
        let raw: Vec<_> = (0..200).map(|i| e(i * 0x2000, 0x1000, RAM)).collect();
        let (r, a) = sanitize(&raw);
        assert_eq!(a, vec![Anomaly::Truncated { entries: 200 }]);
        assert_eq!(r.len(), MAX_MEMMAP_ENTRIES);
    }

    #[test]
    fn worst_case_interleaving_fits_capacity() {
        // Nested reserved holes inside one RAM span: 2n - 1 intervals at most.
        let mut raw = vec![e(0, 1 << 40, RAM)];
        for i in 1..MAX_MEMMAP_ENTRIES as u64 {
            raw.push(e(i * 0x10_0000, 0x1000, RES));
        }
        let (r, _) = sanitize(&raw);
        assert_eq!(r.len(), 2 * (MAX_MEMMAP_ENTRIES - 1) + 1);
    }

    #[test]
    fn totals_and_is_ram() {
        let map = MemoryMap::sanitize(&[e(0, 0x9_f000, RAM), e(0x10_0000, 0x10_0000, RAM)], |_| {
            panic!("no anomaly expected")
        });
        assert_eq!(map.total_ram(), 0x9_f000 + 0x10_0000);
        assert!(map.is_ram(0x10_0000, 0x20_0000));
        assert!(!map.is_ram(0x9_f000, 0x10_1000));
    }

    #[test]
    fn range_set_insert_merges_and_remove_splits() {
        let mut s = RangeSet::<4>::default();
        s.insert(0x3000, 0x4000).unwrap();
        s.insert(0x1000, 0x2000).unwrap();
        s.insert(0x2000, 0x3000).unwrap(); // touches both: one range
        assert_eq!(s.ranges(), &[(0x1000, 0x4000)]);
        s.remove(0x1800, 0x2800).unwrap();
        assert_eq!(s.ranges(), &[(0x1000, 0x1800), (0x2800, 0x4000)]);
        s.remove(0, 0x1900).unwrap();
        assert_eq!(s.ranges(), &[(0x2800, 0x4000)]);
        s.remove(0x3000, 0x9000).unwrap();
        assert_eq!(s.ranges(), &[(0x2800, 0x3000)]);
        assert_eq!(s.total(), 0x800);
        s.remove(0, u64::MAX).unwrap();
        assert!(s.ranges().is_empty());
    }

    #[test]
    fn range_set_reports_full_instead_of_losing_data() {
        let mut s = RangeSet::<2>::default();
        s.insert(0, 0x1000).unwrap();
        s.insert(0x2000, 0x3000).unwrap();
        assert_eq!(s.insert(0x5000, 0x6000), Err(RangeSetFull));
        assert_eq!(s.remove(0x2400, 0x2800), Err(RangeSetFull));
        assert_eq!(s.ranges(), &[(0, 0x1000), (0x2000, 0x3000)]);
    }
}
