//! The 32-bit ("compat") layouts of the hypercall structures whose layout differs from
//! the 64-bit one, as Xen's compat layer reads them for a guest calling from 32-bit
//! code (`xen/include/compat/`, generated from the public headers with
//! `unsigned long`/`xen_pfn_t`/guest handles 4 bytes wide and `uint64_t` 4-byte
//! aligned, the i386 psABI).
//!
//! Each decoder turns the compat bytes into the 64-bit structure the dispatcher works
//! on (zero-extending the narrow fields); the few results a hypercall writes back are
//! written at their compat offsets by the encoders here. Structures not listed have the
//! same layout in both modes (every field is 16 or 32 bits, or a `uint64_t` that falls
//! on an 8-byte offset and ends the structure on one).

use pv_drivers::abi::grant_table::{GnttabCopy, GnttabCopyPtr};
use pv_drivers::abi::memory::{XenAddToPhysmap, XenMemoryReservation};
use pv_drivers::abi::sched::SchedPoll;
use pv_drivers::abi::vcpu::VcpuSetSingleshotTimer;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

/// `struct compat_add_to_physmap`: domid, size, space, then `idx` and `gpfn` of 32 bits.
pub fn add_to_physmap(b: &[u8; 16]) -> XenAddToPhysmap {
    XenAddToPhysmap {
        domid: u16_at(b, 0),
        size: u16_at(b, 2),
        space: u32_at(b, 4),
        idx: u32_at(b, 8).into(),
        gpfn: u32_at(b, 12).into(),
    }
}

/// `struct compat_memory_reservation`: a 32-bit handle and `nr_extents`, then
/// `extent_order`, `mem_flags`, `domid` (20 bytes).
pub fn memory_reservation(b: &[u8; 20]) -> XenMemoryReservation {
    XenMemoryReservation {
        extent_start: u32_at(b, 0).into(),
        nr_extents: u32_at(b, 4).into(),
        extent_order: u32_at(b, 8),
        mem_flags: u32_at(b, 12),
        domid: u16_at(b, 16),
        _pad: [0; 3],
    }
}

/// Bytes of one extent-list entry (`compat_pfn_t`).
pub const PFN_SIZE: u64 = 4;

/// `struct compat_sched_poll`: a 32-bit handle, `nr_ports`, and a 4-byte aligned
/// `uint64_t timeout` (16 bytes).
pub fn sched_poll(b: &[u8; 16]) -> SchedPoll {
    SchedPoll {
        ports: u32_at(b, 0).into(),
        nr_ports: u32_at(b, 4),
        _pad: 0,
        timeout: u64_at(b, 8),
    }
}

/// `struct compat_gnttab_copy` (24 bytes): two 8-byte ends (`u` is a 32-bit ref or
/// `compat_pfn_t`, then domid and offset), `len`, `flags`, `status`.
pub fn gnttab_copy(b: &[u8; COPY_SIZE]) -> GnttabCopy {
    let end = |at: usize| GnttabCopyPtr {
        u: u32_at(b, at).into(),
        domid: u16_at(b, at + 4),
        offset: u16_at(b, at + 6),
        _pad: 0,
    };
    GnttabCopy {
        source: end(0),
        dest: end(8),
        len: u16_at(b, 16),
        flags: u16_at(b, 18),
        status: u16_at(b, 20) as i16,
        _pad: 0,
    }
}

/// Size of one compat `gnttab_copy` element.
pub const COPY_SIZE: usize = 24;
/// Offset of `status` in a compat `gnttab_copy` element.
pub const COPY_STATUS_AT: u64 = 20;

/// `struct vcpu_set_singleshot_timer` in 32-bit code: `uint64_t` then `uint32_t`, 12
/// bytes (no tail padding at 4-byte alignment).
pub fn singleshot_timer(b: &[u8; 12]) -> VcpuSetSingleshotTimer {
    VcpuSetSingleshotTimer {
        timeout_abs_ns: u64_at(b, 0),
        flags: u32_at(b, 8),
        ..Default::default()
    }
}

/// `struct vcpu_runstate_info` in the caller's layout: `int state`, `uint64_t
/// state_entry_time`, `uint64_t time[4]`; the 64-bit layout pads `state` to 8 bytes
/// (48 bytes in all), the compat one does not (44). Returns the bytes and the offset of
/// `state_entry_time`.
pub fn runstate_info(
    compat: bool,
    state: u32,
    entry_time: u64,
    time: &[u64; 4],
) -> (Vec<u8>, usize) {
    let entry_at = if compat { 4 } else { 8 };
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(&state.to_le_bytes());
    out.resize(entry_at, 0);
    out.extend_from_slice(&entry_time.to_le_bytes());
    for t in time {
        out.extend_from_slice(&t.to_le_bytes());
    }
    (out, entry_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_fields_are_read_at_their_compat_offsets() {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..12].copy_from_slice(&3u32.to_le_bytes());
        b[12..16].copy_from_slice(&0xfeedu32.to_le_bytes());
        let x = add_to_physmap(&b);
        assert_eq!((x.domid, x.space, x.idx, x.gpfn), (0x7ff0, 1, 3, 0xfeed));

        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&0x1234u32.to_le_bytes());
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        b[8..16].copy_from_slice(&0x1_0000_0005u64.to_le_bytes());
        let p = sched_poll(&b);
        assert_eq!((p.ports, p.nr_ports, p.timeout), (0x1234, 2, 0x1_0000_0005));

        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&0x8000u32.to_le_bytes());
        b[4..8].copy_from_slice(&5u32.to_le_bytes());
        b[8..12].copy_from_slice(&9u32.to_le_bytes());
        b[16..18].copy_from_slice(&0x7ff0u16.to_le_bytes());
        let r = memory_reservation(&b);
        assert_eq!(
            (r.extent_start, r.nr_extents, r.extent_order, r.domid),
            (0x8000, 5, 9, 0x7ff0)
        );

        let mut b = [0u8; COPY_SIZE];
        b[0..4].copy_from_slice(&7u32.to_le_bytes());
        b[4..6].copy_from_slice(&1u16.to_le_bytes());
        b[6..8].copy_from_slice(&16u16.to_le_bytes());
        b[8..12].copy_from_slice(&0x42u32.to_le_bytes());
        b[14..16].copy_from_slice(&32u16.to_le_bytes());
        b[16..18].copy_from_slice(&100u16.to_le_bytes());
        b[18..20].copy_from_slice(&1u16.to_le_bytes());
        let c = gnttab_copy(&b);
        assert_eq!((c.source.u, c.source.domid, c.source.offset), (7, 1, 16));
        assert_eq!(
            (c.dest.u, c.dest.offset, c.len, c.flags),
            (0x42, 32, 100, 1)
        );

        let mut b = [0u8; 12];
        b[0..8].copy_from_slice(&0x1234_5678_9abcu64.to_le_bytes());
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        let t = singleshot_timer(&b);
        assert_eq!((t.timeout_abs_ns, t.flags), (0x1234_5678_9abc, 1));
    }

    #[test]
    fn runstate_layouts_differ_only_in_the_padding_after_state() {
        let (long, at) = runstate_info(false, 2, 10, &[1, 2, 3, 4]);
        assert_eq!((long.len(), at), (48, 8));
        assert_eq!(u64_at(&long, 8), 10);
        assert_eq!(u64_at(&long, 16 + 3 * 8), 4);
        let (compat, at) = runstate_info(true, 2, 10, &[1, 2, 3, 4]);
        assert_eq!((compat.len(), at), (44, 4));
        assert_eq!(u32_at(&compat, 0), 2);
        assert_eq!(u64_at(&compat, 4), 10);
        assert_eq!(u64_at(&compat, 12 + 3 * 8), 4);
    }
}
