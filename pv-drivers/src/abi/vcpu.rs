//! `xen/include/public/vcpu.h`: per-vCPU operations
//! (`HYPERVISOR_vcpu_op(cmd, vcpuid, extra_arg)`): the one-shot timer and the
//! placement of `vcpu_info` outside `shared_info`.

/// `VCPUOP_initialise` (x86 HVM/PVH: arg is a `vcpu_hvm_context`, not mirrored here).
pub const VCPUOP_INITIALISE: u32 = 0;
/// `VCPUOP_up`: make an initialised vCPU runnable.
pub const VCPUOP_UP: u32 = 1;
/// `VCPUOP_down`.
pub const VCPUOP_DOWN: u32 = 2;
/// `VCPUOP_is_up`: returns 1 if the vCPU is up.
pub const VCPUOP_IS_UP: u32 = 3;
/// `VCPUOP_get_runstate_info`.
pub const VCPUOP_GET_RUNSTATE_INFO: u32 = 4;
/// `VCPUOP_register_runstate_memory_area`.
pub const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u32 = 5;
/// `VCPUOP_set_periodic_timer`: arg is [`VcpuSetPeriodicTimer`].
pub const VCPUOP_SET_PERIODIC_TIMER: u32 = 6;
/// `VCPUOP_stop_periodic_timer`: arg is NULL.
pub const VCPUOP_STOP_PERIODIC_TIMER: u32 = 7;
/// `VCPUOP_set_singleshot_timer`: arg is [`VcpuSetSingleshotTimer`].
pub const VCPUOP_SET_SINGLESHOT_TIMER: u32 = 8;
/// `VCPUOP_stop_singleshot_timer`: arg is NULL.
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u32 = 9;
/// `VCPUOP_register_vcpu_info`: arg is [`VcpuRegisterVcpuInfo`]; once per vCPU.
pub const VCPUOP_REGISTER_VCPU_INFO: u32 = 10;
/// `VCPUOP_send_nmi`: arg is NULL.
pub const VCPUOP_SEND_NMI: u32 = 11;
/// `VCPUOP_get_physid`.
pub const VCPUOP_GET_PHYSID: u32 = 12;
/// `VCPUOP_register_vcpu_time_memory_area`.
pub const VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA: u32 = 13;
/// `VCPUOP_register_runstate_phys_area`.
pub const VCPUOP_REGISTER_RUNSTATE_PHYS_AREA: u32 = 14;
/// `VCPUOP_register_vcpu_time_phys_area`.
pub const VCPUOP_REGISTER_VCPU_TIME_PHYS_AREA: u32 = 15;

/// `struct vcpu_set_periodic_timer`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuSetPeriodicTimer {
    /// Period in ns (below 1 ms may be unsupported).
    pub period_ns: u64,
}

/// `VCPU_SSHOTTMR_future` (`_VCPU_SSHOTTMR_future` = 0): fail with `-ETIME` if the
/// timeout has already passed (the hypervisor may ignore it).
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1 << 0;

/// `struct vcpu_set_singleshot_timer`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuSetSingleshotTimer {
    /// Absolute system time value in nanoseconds.
    pub timeout_abs_ns: u64,
    /// `VCPU_SSHOTTMR_*`.
    pub flags: u32,
    /// Implicit C padding to the 8-byte alignment.
    pub _pad: u32,
}

/// `struct vcpu_register_vcpu_info`: place this vCPU's `vcpu_info` at
/// `offset` in frame `mfn` (a guest frame for PVH). It need not be page aligned but
/// must not cross a page boundary.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuRegisterVcpuInfo {
    /// Frame of the page to hold the `vcpu_info`.
    pub mfn: u64,
    /// Offset within the page.
    pub offset: u32,
    /// `rsvd` (unused).
    pub rsvd: u32,
}

impl VcpuRegisterVcpuInfo {
    /// Whether a `vcpu_info` at `offset` stays within its page, as Xen requires.
    pub fn fits_in_page(&self) -> bool {
        let size = core::mem::size_of::<super::xen::VcpuInfo>() as u64;
        u64::from(self.offset) + size <= 4096
    }
}

pod_bytes!(VcpuSetPeriodicTimer { period_ns });
pod_bytes!(VcpuSetSingleshotTimer {
    timeout_abs_ns,
    flags,
    _pad
});
pod_bytes!(VcpuRegisterVcpuInfo { mfn, offset, rsvd });

const _: () = assert!(core::mem::size_of::<VcpuSetPeriodicTimer>() == 8);
const _: () = assert!(core::mem::size_of::<VcpuSetSingleshotTimer>() == 16);
const _: () = assert!(core::mem::offset_of!(VcpuSetSingleshotTimer, flags) == 8);
const _: () = assert!(core::mem::size_of::<VcpuRegisterVcpuInfo>() == 16);
const _: () = assert!(core::mem::offset_of!(VcpuRegisterVcpuInfo, offset) == 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singleshot_timer_bytes() {
        let t = VcpuSetSingleshotTimer {
            timeout_abs_ns: 1_000_000_007,
            flags: VCPU_SSHOTTMR_FUTURE,
            _pad: 0,
        };
        let b = t.to_bytes();
        assert_eq!(&b[0..8], &1_000_000_007u64.to_le_bytes());
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(VcpuSetSingleshotTimer::from_bytes(&b), t);
    }

    #[test]
    fn vcpu_info_must_not_cross_a_page() {
        let at = |offset| VcpuRegisterVcpuInfo {
            mfn: 1,
            offset,
            rsvd: 0,
        };
        assert!(at(0).fits_in_page());
        assert!(at(4096 - 64).fits_in_page());
        assert!(!at(4096 - 63).fits_in_page());
        assert!(!at(u32::MAX).fits_in_page());
    }
}
