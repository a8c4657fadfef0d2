//! `xen/include/public/xen.h` with `arch-x86/xen.h` and `arch-x86/xen-x86_64.h`:
//! hypercall numbers, virtual IRQs, domain ids, and the shared-info page.
//!
//! Only the x86_64 layout is mirrored: `xen_ulong_t`, `xen_pfn_t` and `unsigned long`
//! are 64 bits, so `vcpu_info` is 64 bytes and `shared_info` 3136.

/// `domid_t`.
pub type DomId = u16;
/// `xen_ulong_t` (`unsigned long` on x86_64).
pub type XenUlong = u64;
/// `xen_pfn_t` (`unsigned long` on x86_64).
pub type XenPfn = u64;

// `enum hypercall_num`: the index into the hypercall page ("call hypercall_page +
// hypercall-number * 32", `arch-x86/xen-x86_64.h`). All numbers the header defines are
// listed so that the shim can name what it rejects; a PVH guest uses memory_op,
// xen_version, console_io, grant_table_op, vcpu_op, sched_op, event_channel_op and
// hvm_op.

/// `__HYPERVISOR_set_trap_table`.
pub const HYPERVISOR_SET_TRAP_TABLE: u32 = 0;
/// `__HYPERVISOR_mmu_update`.
pub const HYPERVISOR_MMU_UPDATE: u32 = 1;
/// `__HYPERVISOR_set_gdt`.
pub const HYPERVISOR_SET_GDT: u32 = 2;
/// `__HYPERVISOR_stack_switch`.
pub const HYPERVISOR_STACK_SWITCH: u32 = 3;
/// `__HYPERVISOR_set_callbacks`.
pub const HYPERVISOR_SET_CALLBACKS: u32 = 4;
/// `__HYPERVISOR_fpu_taskswitch`.
pub const HYPERVISOR_FPU_TASKSWITCH: u32 = 5;
/// `__HYPERVISOR_sched_op_compat` (compat since 0x00030101).
pub const HYPERVISOR_SCHED_OP_COMPAT: u32 = 6;
/// `__HYPERVISOR_platform_op`.
pub const HYPERVISOR_PLATFORM_OP: u32 = 7;
/// `__HYPERVISOR_set_debugreg`.
pub const HYPERVISOR_SET_DEBUGREG: u32 = 8;
/// `__HYPERVISOR_get_debugreg`.
pub const HYPERVISOR_GET_DEBUGREG: u32 = 9;
/// `__HYPERVISOR_update_descriptor`.
pub const HYPERVISOR_UPDATE_DESCRIPTOR: u32 = 10;
/// `__HYPERVISOR_memory_op`.
pub const HYPERVISOR_MEMORY_OP: u32 = 12;
/// `__HYPERVISOR_multicall`.
pub const HYPERVISOR_MULTICALL: u32 = 13;
/// `__HYPERVISOR_update_va_mapping`.
pub const HYPERVISOR_UPDATE_VA_MAPPING: u32 = 14;
/// `__HYPERVISOR_set_timer_op`.
pub const HYPERVISOR_SET_TIMER_OP: u32 = 15;
/// `__HYPERVISOR_event_channel_op_compat` (compat since 0x00030202).
pub const HYPERVISOR_EVENT_CHANNEL_OP_COMPAT: u32 = 16;
/// `__HYPERVISOR_xen_version`.
pub const HYPERVISOR_XEN_VERSION: u32 = 17;
/// `__HYPERVISOR_console_io`.
pub const HYPERVISOR_CONSOLE_IO: u32 = 18;
/// `__HYPERVISOR_physdev_op_compat` (compat since 0x00030202).
pub const HYPERVISOR_PHYSDEV_OP_COMPAT: u32 = 19;
/// `__HYPERVISOR_grant_table_op`.
pub const HYPERVISOR_GRANT_TABLE_OP: u32 = 20;
/// `__HYPERVISOR_vm_assist`.
pub const HYPERVISOR_VM_ASSIST: u32 = 21;
/// `__HYPERVISOR_update_va_mapping_otherdomain`.
pub const HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN: u32 = 22;
/// `__HYPERVISOR_iret` (x86 only).
pub const HYPERVISOR_IRET: u32 = 23;
/// `__HYPERVISOR_vcpu_op`.
pub const HYPERVISOR_VCPU_OP: u32 = 24;
/// `__HYPERVISOR_set_segment_base` (x86/64 only).
pub const HYPERVISOR_SET_SEGMENT_BASE: u32 = 25;
/// `__HYPERVISOR_mmuext_op`.
pub const HYPERVISOR_MMUEXT_OP: u32 = 26;
/// `__HYPERVISOR_xsm_op`.
pub const HYPERVISOR_XSM_OP: u32 = 27;
/// `__HYPERVISOR_nmi_op`.
pub const HYPERVISOR_NMI_OP: u32 = 28;
/// `__HYPERVISOR_sched_op`.
pub const HYPERVISOR_SCHED_OP: u32 = 29;
/// `__HYPERVISOR_callback_op`.
pub const HYPERVISOR_CALLBACK_OP: u32 = 30;
/// `__HYPERVISOR_xenoprof_op` (Dropped in Xen 4.22).
pub const HYPERVISOR_XENOPROF_OP: u32 = 31;
/// `__HYPERVISOR_event_channel_op`.
pub const HYPERVISOR_EVENT_CHANNEL_OP: u32 = 32;
/// `__HYPERVISOR_physdev_op`.
pub const HYPERVISOR_PHYSDEV_OP: u32 = 33;
/// `__HYPERVISOR_hvm_op`.
pub const HYPERVISOR_HVM_OP: u32 = 34;
/// `__HYPERVISOR_sysctl`.
pub const HYPERVISOR_SYSCTL: u32 = 35;
/// `__HYPERVISOR_domctl`.
pub const HYPERVISOR_DOMCTL: u32 = 36;
/// `__HYPERVISOR_kexec_op`.
pub const HYPERVISOR_KEXEC_OP: u32 = 37;
/// `__HYPERVISOR_tmem_op`.
pub const HYPERVISOR_TMEM_OP: u32 = 38;
/// `__HYPERVISOR_argo_op`.
pub const HYPERVISOR_ARGO_OP: u32 = 39;
/// `__HYPERVISOR_xenpmu_op`.
pub const HYPERVISOR_XENPMU_OP: u32 = 40;
/// `__HYPERVISOR_dm_op`.
pub const HYPERVISOR_DM_OP: u32 = 41;
/// `__HYPERVISOR_hypfs_op`.
pub const HYPERVISOR_HYPFS_OP: u32 = 42;

// `enum virq`. The header's class letter: (V) per-vCPU, (D) per-domain, (G) global.

/// `VIRQ_TIMER`: V. Timebase update, and/or requested timeout.
pub const VIRQ_TIMER: u32 = 0;
/// `VIRQ_DEBUG`: V. Request guest to dump debug info.
pub const VIRQ_DEBUG: u32 = 1;
/// `VIRQ_CONSOLE`: G. Bytes received on emergency console.
pub const VIRQ_CONSOLE: u32 = 2;
/// `VIRQ_DOM_EXC`: G. Exceptional event for some domain.
pub const VIRQ_DOM_EXC: u32 = 3;
/// `VIRQ_TBUF`: G. Trace buffer has records available.
pub const VIRQ_TBUF: u32 = 4;
/// `VIRQ_DEBUGGER`: G. A domain has paused for debugging.
pub const VIRQ_DEBUGGER: u32 = 6;
/// `VIRQ_XENOPROF`: V. XenOprofile interrupt: new sample available.
pub const VIRQ_XENOPROF: u32 = 7;
/// `VIRQ_CON_RING`: G. Bytes received on console.
pub const VIRQ_CON_RING: u32 = 8;
/// `VIRQ_PCPU_STATE`: G. PCPU state changed.
pub const VIRQ_PCPU_STATE: u32 = 9;
/// `VIRQ_MEM_EVENT`: G. A memory event has occurred.
pub const VIRQ_MEM_EVENT: u32 = 10;
/// `VIRQ_ARGO`: D. Argo interdomain message notification.
pub const VIRQ_ARGO: u32 = 11;
/// `VIRQ_ENOMEM`: G. Low on heap memory.
pub const VIRQ_ENOMEM: u32 = 12;
/// `VIRQ_XENPMU`: V. PMC interrupt.
pub const VIRQ_XENPMU: u32 = 13;
/// `VIRQ_ARCH_0`.
pub const VIRQ_ARCH_0: u32 = 16;
/// `VIRQ_ARCH_1`.
pub const VIRQ_ARCH_1: u32 = 17;
/// `VIRQ_ARCH_2`.
pub const VIRQ_ARCH_2: u32 = 18;
/// `VIRQ_ARCH_3`.
pub const VIRQ_ARCH_3: u32 = 19;
/// `VIRQ_ARCH_4`.
pub const VIRQ_ARCH_4: u32 = 20;
/// `VIRQ_ARCH_5`.
pub const VIRQ_ARCH_5: u32 = 21;
/// `VIRQ_ARCH_6`.
pub const VIRQ_ARCH_6: u32 = 22;
/// `VIRQ_ARCH_7`.
pub const VIRQ_ARCH_7: u32 = 23;

/// `NR_VIRQS`.
pub const NR_VIRQS: u32 = 24;

/// `CONSOLEIO_write`: `HYPERVISOR_console_io(CONSOLEIO_write, count, buffer)`.
pub const CONSOLEIO_WRITE: u32 = 0;
/// `CONSOLEIO_read`: reads up to `count` bytes from the Xen console.
pub const CONSOLEIO_READ: u32 = 1;

/// `DOMID_FIRST_RESERVED`: ids from here up are not real domains.
pub const DOMID_FIRST_RESERVED: DomId = 0x7FF0;
/// `DOMID_SELF`: the calling domain.
pub const DOMID_SELF: DomId = 0x7FF0;
/// `DOMID_IO`: owner of I/O memory.
pub const DOMID_IO: DomId = 0x7FF1;
/// `DOMID_XEN`: the hypervisor itself.
pub const DOMID_XEN: DomId = 0x7FF2;
/// `DOMID_COW`: owner of shared copy-on-write pages.
pub const DOMID_COW: DomId = 0x7FF3;
/// `DOMID_INVALID`: no domain.
pub const DOMID_INVALID: DomId = 0x7FF4;
/// `DOMID_ANY`: any domain (a wildcard some operations accept).
pub const DOMID_ANY: DomId = 0x7FF5;
/// `DOMID_IDLE`: the idle domain.
pub const DOMID_IDLE: DomId = 0x7FFF;
/// `DOMID_MASK`.
pub const DOMID_MASK: DomId = 0x7FFF;

/// `XEN_LEGACY_MAX_VCPUS`: the `vcpu_info` slots inside `shared_info`; further vCPUs
/// need `VCPUOP_register_vcpu_info`.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;

/// `XEN_PVCLOCK_TSC_STABLE_BIT` in [`VcpuTimeInfo::flags`].
pub const XEN_PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// `XEN_PVCLOCK_GUEST_STOPPED` in [`VcpuTimeInfo::flags`].
pub const XEN_PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// `struct vcpu_time_info`: the per-vCPU clock. Xen brackets each update with two
/// increments of `version`; an odd `version` means an update is in progress, and a
/// reader retries until it sees the same even `version` before and after (a seqlock).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuTimeInfo {
    /// Update counter (see above).
    pub version: u32,
    /// `pad0`.
    pub pad0: u32,
    /// TSC at the last update of the time values.
    pub tsc_timestamp: u64,
    /// Time, in nanoseconds, since boot, at `tsc_timestamp`.
    pub system_time: u64,
    /// TSC-to-nanoseconds multiplier, a 32.32 fixed-point fraction.
    pub tsc_to_system_mul: u32,
    /// Power-of-two shift applied to a TSC delta before the multiply (may be negative).
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` flags (interface versions after 0x040600; `pad1[0]` before).
    pub flags: u8,
    /// `pad1`.
    pub pad1: [u8; 2],
}

/// `struct arch_vcpu_info` (x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchVcpuInfo {
    /// `cr2` (PV guests' page-fault address).
    pub cr2: u64,
    /// `pad`: keeps `sizeof(vcpu_info_t) == 64`.
    pub pad: u64,
}

/// `struct vcpu_info`: per-vCPU event-delivery state and clock.
///
/// Xen sets `evtchn_upcall_pending` and the bit for the pending word in
/// `evtchn_pending_sel`; the guest clears `evtchn_upcall_pending` *before* scanning for
/// work, which closes the set-and-check race. `evtchn_upcall_mask` (x86 defines
/// `XEN_HAVE_PV_UPCALL_MASK`) suppresses upcalls while non-zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuInfo {
    /// Written non-zero by Xen when an upcall is pending.
    pub evtchn_upcall_pending: u8,
    /// Non-zero: no upcall will be delivered to this vCPU.
    pub evtchn_upcall_mask: u8,
    /// Implicit C padding before the 8-byte-aligned selector.
    pub _pad: [u8; 6],
    /// One bit per `xen_ulong_t` word of `shared_info.evtchn_pending` with news.
    pub evtchn_pending_sel: XenUlong,
    /// `arch`.
    pub arch: ArchVcpuInfo,
    /// `time`.
    pub time: VcpuTimeInfo,
}

/// `struct arch_shared_info` (x86_64; all fields but `nmi_reason` serve PV guests).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchSharedInfo {
    /// Number of valid entries in the p2m table(s).
    pub max_pfn: u64,
    /// Frame of the list of frames of the p2m (PV).
    pub pfn_to_mfn_frame_list_list: XenPfn,
    /// `nmi_reason`.
    pub nmi_reason: u64,
    /// cr3 of the address space holding the linear p2m list (PV).
    pub p2m_cr3: u64,
    /// Virtual address of the linear p2m list (PV).
    pub p2m_vaddr: u64,
    /// Generation count of the p2m mapping (PV).
    pub p2m_generation: u64,
}

/// Words in [`SharedInfo::evtchn_pending`] / [`SharedInfo::evtchn_mask`]:
/// `sizeof(xen_ulong_t) * 8`.
pub const EVTCHN_WORDS: usize = core::mem::size_of::<XenUlong>() * 8;

/// `struct shared_info`: the page Xen shares with the domain (mapped by a PVH/HVM
/// guest with `XENMEM_add_to_physmap(XENMAPSPACE_shared_info)`).
///
/// Each event-channel port has a PENDING bit (set by Xen, cleared by the guest) and a
/// MASK bit (only the guest writes it). A 0-to-1 PENDING transition on an unmasked
/// port sets the port's word bit in the vCPU's `evtchn_pending_sel`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedInfo {
    /// `vcpu_info[XEN_LEGACY_MAX_VCPUS]`.
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// PENDING bits, port `p` at bit `p % 64` of word `p / 64`.
    pub evtchn_pending: [XenUlong; EVTCHN_WORDS],
    /// MASK bits, laid out as `evtchn_pending`.
    pub evtchn_mask: [XenUlong; EVTCHN_WORDS],
    /// Wallclock version counter (same protocol as [`VcpuTimeInfo::version`]).
    pub wc_version: u32,
    /// Wallclock seconds since the Unix epoch (low 32 bits), adjusted by the domain's
    /// time offset.
    pub wc_sec: u32,
    /// Wallclock nanoseconds.
    pub wc_nsec: u32,
    /// High 32 bits of the wallclock seconds (`xen_wc_sec_hi`; not i386).
    pub wc_sec_hi: u32,
    /// `arch`.
    pub arch: ArchSharedInfo,
}

impl Default for SharedInfo {
    fn default() -> Self {
        Self::zeroed()
    }
}

pod_bytes!(VcpuTimeInfo {
    version,
    pad0,
    tsc_timestamp,
    system_time,
    tsc_to_system_mul,
    tsc_shift,
    flags,
    pad1,
});
pod_bytes!(ArchVcpuInfo { cr2, pad });
pod_bytes!(VcpuInfo {
    evtchn_upcall_pending,
    evtchn_upcall_mask,
    _pad,
    evtchn_pending_sel,
    arch,
    time,
});
pod_bytes!(ArchSharedInfo {
    max_pfn,
    pfn_to_mfn_frame_list_list,
    nmi_reason,
    p2m_cr3,
    p2m_vaddr,
    p2m_generation,
});
pod_bytes!(SharedInfo {
    vcpu_info,
    evtchn_pending,
    evtchn_mask,
    wc_version,
    wc_sec,
    wc_nsec,
    wc_sec_hi,
    arch,
});

// "32 bytes" and "64 bytes (x86)" are the header's own comments.
const _: () = assert!(core::mem::size_of::<VcpuTimeInfo>() == 32);
const _: () = assert!(core::mem::offset_of!(VcpuTimeInfo, tsc_timestamp) == 8);
const _: () = assert!(core::mem::offset_of!(VcpuTimeInfo, system_time) == 16);
const _: () = assert!(core::mem::offset_of!(VcpuTimeInfo, tsc_to_system_mul) == 24);
const _: () = assert!(core::mem::offset_of!(VcpuTimeInfo, tsc_shift) == 28);
const _: () = assert!(core::mem::offset_of!(VcpuTimeInfo, flags) == 29);
const _: () = assert!(core::mem::size_of::<ArchVcpuInfo>() == 16);
const _: () = assert!(core::mem::size_of::<VcpuInfo>() == 64);
const _: () = assert!(core::mem::offset_of!(VcpuInfo, evtchn_upcall_mask) == 1);
const _: () = assert!(core::mem::offset_of!(VcpuInfo, evtchn_pending_sel) == 8);
const _: () = assert!(core::mem::offset_of!(VcpuInfo, arch) == 16);
const _: () = assert!(core::mem::offset_of!(VcpuInfo, time) == 32);
const _: () = assert!(core::mem::size_of::<ArchSharedInfo>() == 48);
const _: () = assert!(core::mem::offset_of!(SharedInfo, evtchn_pending) == 2048);
const _: () = assert!(core::mem::offset_of!(SharedInfo, evtchn_mask) == 2560);
const _: () = assert!(core::mem::offset_of!(SharedInfo, wc_version) == 3072);
const _: () = assert!(core::mem::offset_of!(SharedInfo, wc_sec_hi) == 3084);
const _: () = assert!(core::mem::offset_of!(SharedInfo, arch) == 3088);
const _: () = assert!(core::mem::size_of::<SharedInfo>() == 3136);
// The shared-info frame is one page.
const _: () = assert!(core::mem::size_of::<SharedInfo>() <= 4096);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_info_bytes_follow_the_header_offsets() {
        let mut si = SharedInfo::default();
        si.vcpu_info[1].evtchn_upcall_pending = 1;
        si.vcpu_info[1].evtchn_pending_sel = 1 << 3;
        si.vcpu_info[0].time.system_time = 0x0102_0304_0506_0708;
        si.evtchn_pending[3] = 1 << 5; // port 3 * 64 + 5 = 197
        si.evtchn_mask[63] = 1 << 63; // port 4095
        si.wc_sec = 0xAABB_CCDD;
        si.arch.p2m_generation = 7;
        let b = si.to_bytes();
        assert_eq!(b.len(), 3136);
        assert_eq!(b[64], 1);
        assert_eq!(&b[72..80], &8u64.to_le_bytes());
        // vcpu_info[0].time (offset 32) .system_time (offset 16).
        assert_eq!(&b[48..56], &0x0102_0304_0506_0708u64.to_le_bytes());
        // Port 197's PENDING bit: byte 2048 + 197 / 8, bit 197 % 8.
        assert_eq!(b[2048 + 197 / 8], 1 << (197 % 8));
        assert_eq!(b[2560 + 4095 / 8], 1 << (4095 % 8));
        assert_eq!(&b[3076..3080], &0xAABB_CCDDu32.to_le_bytes());
        assert_eq!(&b[3128..3136], &7u64.to_le_bytes());
        assert_eq!(SharedInfo::from_bytes(&b), si);
    }

    #[test]
    fn vcpu_time_info_fields_and_clock() {
        let t = VcpuTimeInfo {
            version: 2,
            tsc_timestamp: 1_000,
            system_time: 5_000_000,
            // 0.5 ns per (shifted) tick, and a shift of +1: one ns per TSC tick.
            tsc_to_system_mul: 0x8000_0000,
            tsc_shift: 1,
            flags: XEN_PVCLOCK_TSC_STABLE_BIT,
            ..Default::default()
        };
        let b = t.to_bytes();
        assert_eq!(&b[8..16], &1_000u64.to_le_bytes());
        assert_eq!(&b[24..28], &0x8000_0000u32.to_le_bytes());
        assert_eq!(b[28], 1);
        assert_eq!(b[29], XEN_PVCLOCK_TSC_STABLE_BIT);
        assert_eq!(VcpuTimeInfo::from_bytes(&b), t);
    }

    #[test]
    fn from_prefix_rejects_short_input() {
        assert_eq!(VcpuInfo::from_prefix(&[0; 63]), None);
        assert_eq!(VcpuInfo::from_prefix(&[0; 100]), Some(VcpuInfo::default()));
    }
}
