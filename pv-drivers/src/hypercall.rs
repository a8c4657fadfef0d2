//! Hypercalls: the raw [`Hypercall`] interface (one method: number and five
//! arguments in, `long` out) and typed wrappers ([`XenHypercalls`]) that marshal
//! each operation exactly as its header lays it out (`xen/include/public/`:
//! `version.h`, `memory.h`, `hvm/hvm_op.h`, `event_channel.h`, `grant_table.h`,
//! `vcpu.h`, `sched.h`, `xen.h` for `console_io`).
//!
//! The guest kernel implements [`Hypercall`] with a `call` into the hypercall page
//! (`hypercall_page + 32 * nr`, arguments in `rdi, rsi, rdx, r10, r8`, result in
//! `rax`), which on Xen and under host-shim alike is the way in. Tests implement it
//! with a fake that decodes the arguments in place.
//!
//! Errors: a hypercall returns `-errno` on failure ([`HypercallError::Xen`]); a
//! negative value `errno.h` does not define is kept as [`HypercallError::Unknown`];
//! grant-table operations also report a per-operation `GNTST_*` status, checked here
//! ([`HypercallError::Grant`]).

use core::fmt;
use core::mem::size_of;

use crate::abi::errno::XenErrno;
use crate::abi::event_channel::{
    EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_BIND_VIRQ, EVTCHNOP_CLOSE,
    EVTCHNOP_SEND, EVTCHNOP_STATUS, EVTCHNOP_UNMASK, EvtchnAllocUnbound, EvtchnBindInterdomain,
    EvtchnBindVirq, EvtchnClose, EvtchnPort, EvtchnSend, EvtchnStatus, EvtchnUnmask,
};
use crate::abi::grant_table::{
    GNTST_GENERAL_ERROR, GNTST_OKAY, GNTTABOP_COPY, GNTTABOP_QUERY_SIZE, GNTTABOP_SET_VERSION,
    GNTTABOP_SETUP_TABLE, GnttabCopy, GnttabQuerySize, GnttabSetVersion, GnttabSetupTable,
    gntst_message,
};
use crate::abi::hvm::{
    HVMOP_GET_PARAM, HVMOP_SET_EVTCHN_UPCALL_VECTOR, HVMOP_SET_PARAM, XenHvmEvtchnUpcallVector,
    XenHvmParam,
};
use crate::abi::memory::{
    XENMAPSPACE_GRANT_TABLE, XENMAPSPACE_SHARED_INFO, XENMEM_ADD_TO_PHYSMAP, XenAddToPhysmap,
};
use crate::abi::sched::{
    SCHEDOP_BLOCK, SCHEDOP_POLL, SCHEDOP_SHUTDOWN, SCHEDOP_YIELD, SchedPoll, SchedShutdown,
};
use crate::abi::vcpu::{
    VCPU_SSHOTTMR_FUTURE, VCPUOP_SET_SINGLESHOT_TIMER, VCPUOP_STOP_SINGLESHOT_TIMER,
    VcpuSetSingleshotTimer,
};
use crate::abi::xen::{
    CONSOLEIO_WRITE, DOMID_SELF, DomId, HYPERVISOR_CONSOLE_IO, HYPERVISOR_EVENT_CHANNEL_OP,
    HYPERVISOR_GRANT_TABLE_OP, HYPERVISOR_HVM_OP, HYPERVISOR_MEMORY_OP, HYPERVISOR_SCHED_OP,
    HYPERVISOR_VCPU_OP, HYPERVISOR_XEN_VERSION, XenPfn, XenUlong,
};

// `xen/include/public/version.h` (not mirrored in `abi`; only what the wrappers use).

/// `XENVER_version`: arg NULL; returns `major << 16 | minor`.
pub const XENVER_VERSION: u32 = 0;
/// `XENVER_extraversion`: arg is a `xen_extraversion_t` (`char[16]`).
pub const XENVER_EXTRAVERSION: u32 = 1;
/// `XENVER_get_features`: arg is a [`XenFeatureInfo`].
pub const XENVER_GET_FEATURES: u32 = 6;
/// `XENVER_pagesize`: arg NULL; returns the host page size.
pub const XENVER_PAGESIZE: u32 = 7;
/// `XEN_EXTRAVERSION_LEN`: `sizeof(xen_extraversion_t)`.
pub const XEN_EXTRAVERSION_LEN: usize = 16;

// `xen/include/public/features.h` (bit numbers in the `XENVER_get_features` submaps).

/// `XENFEAT_auto_translated_physmap`.
pub const XENFEAT_AUTO_TRANSLATED_PHYSMAP: u32 = 2;
/// `XENFEAT_hvm_callback_vector`: `HVM_PARAM_CALLBACK_IRQ` may name a vector.
pub const XENFEAT_HVM_CALLBACK_VECTOR: u32 = 8;
/// `XENFEAT_hvm_safe_pvclock`: the PV clock is usable by an HVM/PVH guest.
pub const XENFEAT_HVM_SAFE_PVCLOCK: u32 = 9;
/// `XENFEAT_hvm_pirqs`.
pub const XENFEAT_HVM_PIRQS: u32 = 10;
/// `XENFEAT_NR_SUBMAPS`: number of 32-bit submaps.
pub const XENFEAT_NR_SUBMAPS: u32 = 1;

/// `struct xen_feature_info` (`version.h`): IN which 32-bit submap, OUT its bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenFeatureInfo {
    /// IN: which 32-bit submap to return.
    pub submap_idx: u32,
    /// OUT: the submap.
    pub submap: u32,
}

impl XenFeatureInfo {
    /// Size of the structure in bytes.
    pub const SIZE: usize = size_of::<Self>();
}

const _: () = assert!(size_of::<XenFeatureInfo>() == 8);
const _: () = assert!(core::mem::offset_of!(XenFeatureInfo, submap) == 4);

/// The raw hypercall interface.
///
/// **Addresses.** Every pointer argument the wrappers pass is the address of the
/// caller's own memory (a local structure, a slice) as the guest kernel sees it: a
/// guest-virtual address. Xen (`copy_from_guest`) and host-shim alike translate it
/// through the calling vCPU's current page tables, page by page, so the memory passed
/// to a hypercall (stack, heap, statics) must be mapped (and writable where the
/// hypercall writes) in the address space that makes the call; it need not be
/// identity-mapped, nor physically contiguous.
///
/// # Safety
///
/// Implementors promise that [`hypercall`](Self::hypercall) performs hypercall `nr`
/// with exactly the arguments given, in the calling domain and on the calling vCPU,
/// and returns its result unchanged (or, for a test double, that it touches no
/// memory except what the hypercall `nr` would, as the header defines it). The safe
/// wrappers of [`XenHypercalls`] rely on this to hand out pointers to their locals.
pub unsafe trait Hypercall {
    /// Issues hypercall `nr` (`__HYPERVISOR_*`) with `args` (unused ones are ignored
    /// by the hypervisor) and returns its `long` result.
    ///
    /// # Safety
    ///
    /// Every argument that hypercall `nr` (with its sub-command) interprets as a
    /// guest address must point to memory valid for the reads and writes the header
    /// specifies, for the duration of the call, and not otherwise accessed meanwhile.
    unsafe fn hypercall(&self, nr: u32, args: [u64; 5]) -> i64;
}

/// Why a hypercall failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallError {
    /// The hypervisor returned `-errno`.
    Xen(XenErrno),
    /// The hypervisor returned a negative value `errno.h` does not define.
    Unknown(i64),
    /// Grant-table operation `index` of the batch failed with status `status`
    /// (`GNTST_*`).
    Grant {
        /// Position in the batch.
        index: usize,
        /// The `GNTST_*` status.
        status: i16,
    },
    /// The request does not fit the interface (a count beyond 32 bits); nothing was
    /// sent.
    TooLarge,
}

impl HypercallError {
    /// The error value, if the hypervisor returned one `errno.h` defines.
    pub fn errno(&self) -> Option<XenErrno> {
        match self {
            Self::Xen(e) => Some(*e),
            _ => None,
        }
    }
}

impl From<XenErrno> for HypercallError {
    fn from(e: XenErrno) -> Self {
        Self::Xen(e)
    }
}

impl fmt::Display for HypercallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xen(e) => write!(f, "hypercall failed: {e}"),
            Self::Unknown(r) => write!(f, "hypercall failed with unknown error {r}"),
            Self::Grant { index, status } => write!(
                f,
                "grant operation {index} failed: {} ({status})",
                gntst_message(*status).unwrap_or("unknown status")
            ),
            Self::TooLarge => write!(f, "request too large for the hypercall interface"),
        }
    }
}

impl core::error::Error for HypercallError {}

/// Maps a raw result: non-negative is success.
pub fn check(ret: i64) -> Result<u64, HypercallError> {
    if ret >= 0 {
        Ok(ret as u64)
    } else {
        Err(XenErrno::from_raw(ret).map_or(HypercallError::Unknown(ret), HypercallError::Xen))
    }
}

/// Checks a grant-table status (`GNTST_*`) of batch entry `index`.
fn check_status(index: usize, status: i16) -> Result<(), HypercallError> {
    if status == GNTST_OKAY {
        Ok(())
    } else {
        Err(HypercallError::Grant { index, status })
    }
}

/// The guest address of `value`, which the hypervisor only reads (see
/// [`Hypercall`] on addresses).
fn addr<T: ?Sized>(value: &T) -> u64 {
    (value as *const T).cast::<u8>() as usize as u64
}

/// The guest address of `value`, which the hypervisor may write (derived from a
/// unique borrow, so that writes through it are allowed).
fn addr_mut<T: ?Sized>(value: &mut T) -> u64 {
    (value as *mut T).cast::<u8>() as usize as u64
}

/// Issues hypercall `nr` with the address of `arg` in argument position `at` (the
/// other arguments as given, none of them an address) and checks the result.
///
/// Private, like [`call_plain`]: only the wrappers below, which pair each
/// sub-command with the structure its header names, may choose `T`.
fn call_with<H: Hypercall + ?Sized, T>(
    h: &H,
    nr: u32,
    mut args: [u64; 5],
    at: usize,
    arg: &mut T,
) -> Result<u64, HypercallError> {
    if let Some(slot) = args.get_mut(at) {
        *slot = addr_mut(arg);
    }
    // SAFETY: the only address among `args` is `arg`'s (the callers pass no other), a
    // live, exclusively borrowed value of the type the header gives for `nr` and its
    // sub-command, valid for the whole call.
    check(unsafe { h.hypercall(nr, args) })
}

/// Issues hypercall `nr` with `args`, none of which is an address (or only NULL).
fn call_plain<H: Hypercall + ?Sized>(
    h: &H,
    nr: u32,
    args: [u64; 5],
) -> Result<u64, HypercallError> {
    // SAFETY: the callers pass only sub-commands whose arguments carry no address, so
    // the hypervisor touches none of the guest's memory.
    check(unsafe { h.hypercall(nr, args) })
}

/// `HYPERVISOR_event_channel_op(cmd, op)`, where `op` is the structure of `cmd`.
fn evtchn_op<H: Hypercall + ?Sized, T>(h: &H, cmd: u32, op: &mut T) -> Result<(), HypercallError> {
    call_with(
        h,
        HYPERVISOR_EVENT_CHANNEL_OP,
        [u64::from(cmd), 0, 0, 0, 0],
        1,
        op,
    )?;
    Ok(())
}

/// `XENVER_version`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct XenVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

/// `GNTTABOP_query_size`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantTableSize {
    /// Frames the table has now.
    pub nr_frames: u32,
    /// Frames it may grow to.
    pub max_nr_frames: u32,
}

/// Longest console write handed over in one hypercall (`console_io`'s count is an
/// `unsigned int`; Xen itself works through 127 bytes at a time).
const CONSOLE_CHUNK: usize = 4096;

/// Typed hypercalls, for every [`Hypercall`]. Each marshals its header's structure in
/// a local, passes its address, and checks the result.
pub trait XenHypercalls: Hypercall {
    /// `XENVER_version`.
    fn xen_version(&self) -> Result<XenVersion, HypercallError> {
        let v = call_plain(
            self,
            HYPERVISOR_XEN_VERSION,
            [u64::from(XENVER_VERSION), 0, 0, 0, 0],
        )?;
        Ok(XenVersion {
            major: (v >> 16) as u16,
            minor: v as u16,
        })
    }

    /// `XENVER_extraversion`: the version suffix (e.g. `.0`), NUL-padded.
    fn xen_extraversion(&self) -> Result<[u8; XEN_EXTRAVERSION_LEN], HypercallError> {
        let mut buf = [0u8; XEN_EXTRAVERSION_LEN];
        call_with(
            self,
            HYPERVISOR_XEN_VERSION,
            [u64::from(XENVER_EXTRAVERSION), 0, 0, 0, 0],
            1,
            &mut buf,
        )?;
        Ok(buf)
    }

    /// `XENVER_get_features`: feature submap `submap_idx` (bit `n` of submap `i` is
    /// feature `32 * i + n`).
    fn xen_get_features(&self, submap_idx: u32) -> Result<u32, HypercallError> {
        let mut info = XenFeatureInfo {
            submap_idx,
            submap: 0,
        };
        call_with(
            self,
            HYPERVISOR_XEN_VERSION,
            [u64::from(XENVER_GET_FEATURES), 0, 0, 0, 0],
            1,
            &mut info,
        )?;
        Ok(info.submap)
    }

    /// Whether `XENFEAT_*` `feature` is offered.
    fn xen_has_feature(&self, feature: u32) -> Result<bool, HypercallError> {
        let submap = self.xen_get_features(feature / 32)?;
        Ok(submap & (1 << (feature % 32)) != 0)
    }

    /// `XENVER_pagesize`.
    fn xen_pagesize(&self) -> Result<u64, HypercallError> {
        call_plain(
            self,
            HYPERVISOR_XEN_VERSION,
            [u64::from(XENVER_PAGESIZE), 0, 0, 0, 0],
        )
    }

    /// `XENMEM_add_to_physmap` for the calling domain: page `idx` of `space` appears at
    /// guest frame `gpfn`.
    fn add_to_physmap(
        &self,
        space: u32,
        idx: XenUlong,
        gpfn: XenPfn,
    ) -> Result<(), HypercallError> {
        let mut op = XenAddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space,
            idx,
            gpfn,
        };
        call_with(
            self,
            HYPERVISOR_MEMORY_OP,
            [u64::from(XENMEM_ADD_TO_PHYSMAP), 0, 0, 0, 0],
            1,
            &mut op,
        )?;
        Ok(())
    }

    /// Maps the shared-info page at guest frame `gpfn`.
    fn map_shared_info(&self, gpfn: XenPfn) -> Result<(), HypercallError> {
        self.add_to_physmap(XENMAPSPACE_SHARED_INFO, 0, gpfn)
    }

    /// Maps grant-table frame `idx` at guest frame `gpfn` (the table grows to at least
    /// `idx + 1` frames).
    fn map_grant_table_frame(&self, idx: XenUlong, gpfn: XenPfn) -> Result<(), HypercallError> {
        self.add_to_physmap(XENMAPSPACE_GRANT_TABLE, idx, gpfn)
    }

    /// `HVMOP_get_param` for the calling domain.
    fn hvm_get_param(&self, index: u32) -> Result<u64, HypercallError> {
        let mut p = XenHvmParam {
            domid: DOMID_SELF,
            pad: 0,
            index,
            value: 0,
        };
        call_with(
            self,
            HYPERVISOR_HVM_OP,
            [u64::from(HVMOP_GET_PARAM), 0, 0, 0, 0],
            1,
            &mut p,
        )?;
        Ok(p.value)
    }

    /// `HVMOP_set_param` for the calling domain.
    fn hvm_set_param(&self, index: u32, value: u64) -> Result<(), HypercallError> {
        let mut p = XenHvmParam {
            domid: DOMID_SELF,
            pad: 0,
            index,
            value,
        };
        call_with(
            self,
            HYPERVISOR_HVM_OP,
            [u64::from(HVMOP_SET_PARAM), 0, 0, 0, 0],
            1,
            &mut p,
        )?;
        Ok(())
    }

    /// `HVMOP_set_evtchn_upcall_vector`: deliver `vcpu`'s event upcalls as `vector`.
    fn hvm_set_evtchn_upcall_vector(&self, vcpu: u32, vector: u8) -> Result<(), HypercallError> {
        let mut op = XenHvmEvtchnUpcallVector {
            vcpu,
            vector,
            _pad: [0; 3],
        };
        call_with(
            self,
            HYPERVISOR_HVM_OP,
            [u64::from(HVMOP_SET_EVTCHN_UPCALL_VECTOR), 0, 0, 0, 0],
            1,
            &mut op,
        )?;
        Ok(())
    }

    /// `EVTCHNOP_alloc_unbound`: a fresh local port that `remote_dom` may bind to.
    fn evtchn_alloc_unbound(&self, remote_dom: DomId) -> Result<EvtchnPort, HypercallError> {
        let mut op = EvtchnAllocUnbound {
            dom: DOMID_SELF,
            remote_dom,
            port: 0,
        };
        evtchn_op(self, EVTCHNOP_ALLOC_UNBOUND, &mut op)?;
        Ok(op.port)
    }

    /// `EVTCHNOP_bind_interdomain`: connects a fresh local port to `remote_port` of
    /// `remote_dom` (Xen sets the new port pending).
    fn evtchn_bind_interdomain(
        &self,
        remote_dom: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, HypercallError> {
        let mut op = EvtchnBindInterdomain {
            remote_dom,
            _pad: 0,
            remote_port,
            local_port: 0,
        };
        evtchn_op(self, EVTCHNOP_BIND_INTERDOMAIN, &mut op)?;
        Ok(op.local_port)
    }

    /// `EVTCHNOP_bind_virq`: a fresh port for `VIRQ_*` `virq` on `vcpu`.
    fn evtchn_bind_virq(&self, virq: u32, vcpu: u32) -> Result<EvtchnPort, HypercallError> {
        let mut op = EvtchnBindVirq {
            virq,
            vcpu,
            port: 0,
        };
        evtchn_op(self, EVTCHNOP_BIND_VIRQ, &mut op)?;
        Ok(op.port)
    }

    /// `EVTCHNOP_send`: notifies the remote end of `port`.
    fn evtchn_send(&self, port: EvtchnPort) -> Result<(), HypercallError> {
        evtchn_op(self, EVTCHNOP_SEND, &mut EvtchnSend { port })
    }

    /// `EVTCHNOP_unmask`: clears `port`'s mask and raises an upcall if it is pending
    /// (see [`crate::evtchn::Unmask::NeedsHypercall`]).
    fn evtchn_unmask(&self, port: EvtchnPort) -> Result<(), HypercallError> {
        evtchn_op(self, EVTCHNOP_UNMASK, &mut EvtchnUnmask { port })
    }

    /// `EVTCHNOP_close`.
    fn evtchn_close(&self, port: EvtchnPort) -> Result<(), HypercallError> {
        evtchn_op(self, EVTCHNOP_CLOSE, &mut EvtchnClose { port })
    }

    /// `EVTCHNOP_status` of the calling domain's `port`.
    fn evtchn_status(&self, port: EvtchnPort) -> Result<EvtchnStatus, HypercallError> {
        let mut op = EvtchnStatus {
            dom: DOMID_SELF,
            port,
            ..EvtchnStatus::default()
        };
        evtchn_op(self, EVTCHNOP_STATUS, &mut op)?;
        Ok(op)
    }

    /// `GNTTABOP_query_size` for the calling domain.
    fn gnttab_query_size(&self) -> Result<GrantTableSize, HypercallError> {
        let mut op = GnttabQuerySize {
            dom: DOMID_SELF,
            status: GNTST_GENERAL_ERROR,
            ..GnttabQuerySize::default()
        };
        call_with(
            self,
            HYPERVISOR_GRANT_TABLE_OP,
            [u64::from(GNTTABOP_QUERY_SIZE), 0, 1, 0, 0],
            1,
            &mut op,
        )?;
        check_status(0, op.status)?;
        Ok(GrantTableSize {
            nr_frames: op.nr_frames,
            max_nr_frames: op.max_nr_frames,
        })
    }

    /// `GNTTABOP_setup_table` for the calling domain: a table of at least
    /// `frames.len()` frames, whose frame numbers Xen writes to `frames`.
    fn gnttab_setup_table(&self, frames: &mut [XenPfn]) -> Result<(), HypercallError> {
        let nr_frames = u32::try_from(frames.len()).map_err(|_| HypercallError::TooLarge)?;
        let mut op = GnttabSetupTable {
            dom: DOMID_SELF,
            nr_frames,
            status: GNTST_GENERAL_ERROR,
            frame_list: addr_mut(frames),
            ..GnttabSetupTable::default()
        };
        // SAFETY: the addresses passed are `op` (a live local) and, inside it,
        // `frames`, exclusively borrowed for the call and `nr_frames` entries long,
        // exactly what Xen writes.
        check(unsafe {
            self.hypercall(
                HYPERVISOR_GRANT_TABLE_OP,
                [u64::from(GNTTABOP_SETUP_TABLE), addr_mut(&mut op), 1, 0, 0],
            )
        })?;
        check_status(0, op.status)
    }

    /// `GNTTABOP_copy` on a batch; every operation's status is checked, and the
    /// first failure reported with its index. Statuses are preset to
    /// `GNTST_general_error`, so an operation the hypervisor skipped counts as failed.
    fn gnttab_copy(&self, ops: &mut [GnttabCopy]) -> Result<(), HypercallError> {
        let count = u32::try_from(ops.len()).map_err(|_| HypercallError::TooLarge)?;
        if count == 0 {
            return Ok(());
        }
        for op in ops.iter_mut() {
            op.status = GNTST_GENERAL_ERROR;
        }
        // SAFETY: the one address is `ops`, exclusively borrowed for the call and
        // `count` entries long, which Xen reads and whose statuses it writes.
        check(unsafe {
            self.hypercall(
                HYPERVISOR_GRANT_TABLE_OP,
                [
                    u64::from(GNTTABOP_COPY),
                    addr_mut(ops),
                    u64::from(count),
                    0,
                    0,
                ],
            )
        })?;
        ops.iter()
            .enumerate()
            .try_for_each(|(i, op)| check_status(i, op.status))
    }

    /// `GNTTABOP_set_version`: asks for grant-table `version`; returns the version
    /// in force.
    fn gnttab_set_version(&self, version: u32) -> Result<u32, HypercallError> {
        let mut op = GnttabSetVersion { version };
        call_with(
            self,
            HYPERVISOR_GRANT_TABLE_OP,
            [u64::from(GNTTABOP_SET_VERSION), 0, 1, 0, 0],
            1,
            &mut op,
        )?;
        Ok(op.version)
    }

    /// `VCPUOP_set_singleshot_timer`: a `VIRQ_TIMER` on `vcpu` at system time
    /// `timeout_abs_ns`; with `future`, Xen may refuse (`-ETIME`) a time already past.
    fn vcpu_set_singleshot_timer(
        &self,
        vcpu: u32,
        timeout_abs_ns: u64,
        future: bool,
    ) -> Result<(), HypercallError> {
        let mut op = VcpuSetSingleshotTimer {
            timeout_abs_ns,
            flags: if future { VCPU_SSHOTTMR_FUTURE } else { 0 },
            _pad: 0,
        };
        call_with(
            self,
            HYPERVISOR_VCPU_OP,
            [
                u64::from(VCPUOP_SET_SINGLESHOT_TIMER),
                u64::from(vcpu),
                0,
                0,
                0,
            ],
            2,
            &mut op,
        )?;
        Ok(())
    }

    /// `VCPUOP_stop_singleshot_timer`.
    fn vcpu_stop_singleshot_timer(&self, vcpu: u32) -> Result<(), HypercallError> {
        call_plain(
            self,
            HYPERVISOR_VCPU_OP,
            [
                u64::from(VCPUOP_STOP_SINGLESHOT_TIMER),
                u64::from(vcpu),
                0,
                0,
                0,
            ],
        )?;
        Ok(())
    }

    /// `SCHEDOP_yield`.
    fn sched_yield(&self) -> Result<(), HypercallError> {
        call_plain(
            self,
            HYPERVISOR_SCHED_OP,
            [u64::from(SCHEDOP_YIELD), 0, 0, 0, 0],
        )?;
        Ok(())
    }

    /// `SCHEDOP_block`: until an event arrives.
    fn sched_block(&self) -> Result<(), HypercallError> {
        call_plain(
            self,
            HYPERVISOR_SCHED_OP,
            [u64::from(SCHEDOP_BLOCK), 0, 0, 0, 0],
        )?;
        Ok(())
    }

    /// `SCHEDOP_poll`: blocks until one of `ports` is pending or system time
    /// `timeout_abs_ns` passes (0: no timeout).
    fn sched_poll(&self, ports: &[EvtchnPort], timeout_abs_ns: u64) -> Result<(), HypercallError> {
        let nr_ports = u32::try_from(ports.len()).map_err(|_| HypercallError::TooLarge)?;
        let op = SchedPoll {
            ports: addr(ports),
            nr_ports,
            _pad: 0,
            timeout: timeout_abs_ns,
        };
        // SAFETY: the addresses are `op` (a live local) and, inside it, `ports`,
        // `nr_ports` entries long and borrowed for the call; Xen only reads both.
        check(unsafe {
            self.hypercall(
                HYPERVISOR_SCHED_OP,
                [u64::from(SCHEDOP_POLL), addr(&op), 0, 0, 0],
            )
        })?;
        Ok(())
    }

    /// `SCHEDOP_shutdown` with `SHUTDOWN_*` `reason`; does not return on success.
    fn sched_shutdown(&self, reason: u32) -> Result<(), HypercallError> {
        let mut op = SchedShutdown { reason };
        call_with(
            self,
            HYPERVISOR_SCHED_OP,
            [u64::from(SCHEDOP_SHUTDOWN), 0, 0, 0, 0],
            1,
            &mut op,
        )?;
        Ok(())
    }

    /// `CONSOLEIO_write`: writes `bytes` to Xen's console, in pieces. Xen's default
    /// policy refuses it (`-EPERM`) to an unprivileged domain unless the domain is
    /// marked as a console domain or Xen is a `CONFIG_VERBOSE_DEBUG` build; what it
    /// accepts from a domU it strips of non-printing bytes and logs per line.
    fn console_write(&self, bytes: &[u8]) -> Result<(), HypercallError> {
        for chunk in bytes.chunks(CONSOLE_CHUNK) {
            // SAFETY: the one address is `chunk`, borrowed for the call, of exactly
            // the length passed as count; Xen only reads it.
            check(unsafe {
                self.hypercall(
                    HYPERVISOR_CONSOLE_IO,
                    [
                        u64::from(CONSOLEIO_WRITE),
                        chunk.len() as u64,
                        addr(chunk),
                        0,
                        0,
                    ],
                )
            })?;
        }
        Ok(())
    }
}

impl<H: Hypercall + ?Sized> XenHypercalls for H {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::event_channel::EVTCHNSTAT_INTERDOMAIN;
    use crate::abi::grant_table::{
        GNTCOPY_DEST_GREF, GNTST_BAD_COPY_ARG, GNTST_PERMISSION_DENIED, GnttabCopyPtr,
    };
    use crate::abi::hvm::HVM_PARAM_STORE_EVTCHN;
    use crate::abi::sched::SHUTDOWN_POWEROFF;
    use crate::abi::xen::VIRQ_TIMER;
    use std::cell::RefCell;
    use std::vec::Vec;

    /// One recorded call: number, arguments, and the bytes found at the pointer
    /// argument (if any) when the call was made.
    #[derive(Debug, Default)]
    struct Call {
        nr: u32,
        args: [u64; 5],
        arg: Vec<u8>,
    }

    /// A hypervisor double: records each call, reads the pointed-to structure (it runs
    /// in the caller's address space), and answers with `respond`, which may write
    /// the structure's OUT fields and picks the return value.
    struct Fake<F: Fn(u32, &[u64; 5], &mut [u8]) -> i64> {
        calls: RefCell<Vec<Call>>,
        respond: F,
    }

    fn fake<F: Fn(u32, &[u64; 5], &mut [u8]) -> i64>(respond: F) -> Fake<F> {
        Fake {
            calls: RefCell::new(Vec::new()),
            respond,
        }
    }

    /// Where the argument structure sits, and its size, for each call the wrappers
    /// make (what a decoder in the shim must know too).
    fn arg_layout(nr: u32, args: &[u64; 5]) -> Option<(u64, usize)> {
        let cmd = args[0] as u32;
        let size = match nr {
            HYPERVISOR_XEN_VERSION => match cmd {
                XENVER_EXTRAVERSION => XEN_EXTRAVERSION_LEN,
                XENVER_GET_FEATURES => XenFeatureInfo::SIZE,
                _ => return None,
            },
            HYPERVISOR_MEMORY_OP => XenAddToPhysmap::SIZE,
            HYPERVISOR_HVM_OP => match cmd {
                HVMOP_SET_EVTCHN_UPCALL_VECTOR => XenHvmEvtchnUpcallVector::SIZE,
                _ => XenHvmParam::SIZE,
            },
            HYPERVISOR_EVENT_CHANNEL_OP => match cmd {
                EVTCHNOP_ALLOC_UNBOUND => EvtchnAllocUnbound::SIZE,
                EVTCHNOP_BIND_INTERDOMAIN => EvtchnBindInterdomain::SIZE,
                EVTCHNOP_BIND_VIRQ => EvtchnBindVirq::SIZE,
                EVTCHNOP_STATUS => EvtchnStatus::SIZE,
                _ => 4,
            },
            HYPERVISOR_GRANT_TABLE_OP => {
                let each = match cmd {
                    GNTTABOP_QUERY_SIZE => GnttabQuerySize::SIZE,
                    GNTTABOP_SETUP_TABLE => GnttabSetupTable::SIZE,
                    GNTTABOP_COPY => GnttabCopy::SIZE,
                    _ => GnttabSetVersion::SIZE,
                };
                each * args[2] as usize
            }
            HYPERVISOR_VCPU_OP => match cmd {
                VCPUOP_SET_SINGLESHOT_TIMER => {
                    return Some((args[2], VcpuSetSingleshotTimer::SIZE));
                }
                _ => return None,
            },
            HYPERVISOR_SCHED_OP => match cmd {
                SCHEDOP_SHUTDOWN => SchedShutdown::SIZE,
                SCHEDOP_POLL => SchedPoll::SIZE,
                _ => return None,
            },
            HYPERVISOR_CONSOLE_IO => return Some((args[2], args[1] as usize)),
            _ => return None,
        };
        Some((args[1], size))
    }

    // SAFETY: the fake touches exactly the argument structure the header defines for
    // each call (located by `arg_layout`), reading and writing it in place.
    unsafe impl<F: Fn(u32, &[u64; 5], &mut [u8]) -> i64> Hypercall for Fake<F> {
        unsafe fn hypercall(&self, nr: u32, args: [u64; 5]) -> i64 {
            let mut bytes = Vec::new();
            let layout = arg_layout(nr, &args);
            if let Some((ptr, len)) = layout {
                assert_ne!(ptr, 0, "NULL argument for hypercall {nr}");
                bytes.resize(len, 0);
                // SAFETY: the caller's contract: `ptr` is valid for `len` bytes of
                // reads for the duration of the call.
                unsafe {
                    core::ptr::copy_nonoverlapping(ptr as *const u8, bytes.as_mut_ptr(), len)
                };
            } else {
                assert!(
                    args[1..]
                        .iter()
                        .all(|&a| a == 0 || nr == HYPERVISOR_VCPU_OP)
                );
            }
            let sent = bytes.clone();
            let ret = (self.respond)(nr, &args, &mut bytes);
            if let Some((ptr, len)) = layout
                && nr != HYPERVISOR_CONSOLE_IO
                && !(nr == HYPERVISOR_SCHED_OP && args[0] as u32 == SCHEDOP_POLL)
            {
                // SAFETY: the caller's contract: `ptr` is valid for `len` bytes of
                // writes (the header's IN/OUT structure) for the duration of the call.
                unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr as *mut u8, len) };
            }
            self.calls.borrow_mut().push(Call {
                nr,
                args,
                arg: sent,
            });
            ret
        }
    }

    impl<F: Fn(u32, &[u64; 5], &mut [u8]) -> i64> Fake<F> {
        fn only_call(&self) -> Call {
            let mut calls = self.calls.borrow_mut();
            assert_eq!(calls.len(), 1, "{calls:?}");
            calls.pop().unwrap()
        }
    }

    #[test]
    fn raw_results_map_to_errors() {
        assert_eq!(check(0), Ok(0));
        assert_eq!(check(5), Ok(5));
        assert_eq!(check(-22), Err(HypercallError::Xen(XenErrno::EINVAL)));
        assert_eq!(
            check(-4),
            Err(HypercallError::Unknown(-4)),
            "EINTR is internal"
        );
        assert_eq!(check(i64::MIN), Err(HypercallError::Unknown(i64::MIN)));
        assert_eq!(
            HypercallError::Xen(XenErrno::EPERM).errno(),
            Some(XenErrno::EPERM)
        );
        let e = HypercallError::Grant {
            index: 2,
            status: GNTST_BAD_COPY_ARG,
        };
        assert_eq!(
            std::format!("{e}"),
            "grant operation 2 failed: copy arguments cross page boundary (-10)"
        );
    }

    #[test]
    fn version_and_features() {
        let f = fake(|nr, args, arg| {
            assert_eq!(nr, HYPERVISOR_XEN_VERSION);
            match args[0] as u32 {
                XENVER_VERSION => 0x0004_0013,
                XENVER_PAGESIZE => 4096,
                XENVER_EXTRAVERSION => {
                    arg[..3].copy_from_slice(b".1-");
                    0
                }
                XENVER_GET_FEATURES => {
                    let idx = u32::from_le_bytes(arg[..4].try_into().unwrap());
                    assert_eq!(idx, 0);
                    arg[4..8].copy_from_slice(&(1u32 << XENFEAT_HVM_CALLBACK_VECTOR).to_le_bytes());
                    0
                }
                _ => XenErrno::ENOSYS.as_neg(),
            }
        });
        assert_eq!(
            f.xen_version(),
            Ok(XenVersion {
                major: 4,
                minor: 19
            })
        );
        assert_eq!(f.xen_pagesize(), Ok(4096));
        assert_eq!(&f.xen_extraversion().unwrap()[..4], b".1-\0");
        assert_eq!(f.xen_get_features(0), Ok(1 << 8));
        assert_eq!(f.xen_has_feature(XENFEAT_HVM_CALLBACK_VECTOR), Ok(true));
        assert_eq!(f.xen_has_feature(XENFEAT_HVM_SAFE_PVCLOCK), Ok(false));
        let calls = f.calls.borrow();
        assert_eq!(calls[3].arg, [0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn add_to_physmap_layout() {
        let f = fake(|_, _, _| 0);
        f.map_shared_info(0xFEFFF).unwrap();
        let c = f.only_call();
        assert_eq!((c.nr, c.args[0]), (HYPERVISOR_MEMORY_OP, 7));
        let op = XenAddToPhysmap::from_prefix(&c.arg).unwrap();
        assert_eq!(
            op,
            XenAddToPhysmap {
                domid: DOMID_SELF,
                size: 0,
                space: XENMAPSPACE_SHARED_INFO,
                idx: 0,
                gpfn: 0xFEFFF
            }
        );
        f.map_grant_table_frame(3, 0x1000).unwrap();
        let op = XenAddToPhysmap::from_prefix(&f.only_call().arg).unwrap();
        assert_eq!(
            (op.space, op.idx, op.gpfn),
            (XENMAPSPACE_GRANT_TABLE, 3, 0x1000)
        );
        let f = fake(|_, _, _| XenErrno::EINVAL.as_neg());
        assert_eq!(
            f.map_shared_info(1),
            Err(HypercallError::Xen(XenErrno::EINVAL))
        );
    }

    #[test]
    fn hvm_ops_layout() {
        let f = fake(|_, args, arg| {
            if args[0] as u32 == HVMOP_GET_PARAM {
                arg[8..16].copy_from_slice(&0x1234u64.to_le_bytes());
            }
            0
        });
        assert_eq!(f.hvm_get_param(HVM_PARAM_STORE_EVTCHN), Ok(0x1234));
        let c = f.only_call();
        assert_eq!((c.nr, c.args[0]), (HYPERVISOR_HVM_OP, 1));
        let p = XenHvmParam::from_prefix(&c.arg).unwrap();
        assert_eq!((p.domid, p.index, p.value), (DOMID_SELF, 2, 0));

        f.hvm_set_param(0, 0x0200_0000_0000_00F3).unwrap();
        let c = f.only_call();
        assert_eq!(c.args[0], 0);
        let p = XenHvmParam::from_prefix(&c.arg).unwrap();
        assert_eq!(
            (p.domid, p.index, p.value),
            (DOMID_SELF, 0, 0x0200_0000_0000_00F3)
        );

        f.hvm_set_evtchn_upcall_vector(1, 0xF3).unwrap();
        let c = f.only_call();
        assert_eq!(c.args[0], 23);
        assert_eq!(c.arg, [1, 0, 0, 0, 0xF3, 0, 0, 0]);
    }

    #[test]
    fn event_channel_ops_layout() {
        let f = fake(|nr, args, arg| {
            assert_eq!(nr, HYPERVISOR_EVENT_CHANNEL_OP);
            match args[0] as u32 {
                EVTCHNOP_ALLOC_UNBOUND => arg[4..8].copy_from_slice(&11u32.to_le_bytes()),
                EVTCHNOP_BIND_INTERDOMAIN => arg[8..12].copy_from_slice(&12u32.to_le_bytes()),
                EVTCHNOP_BIND_VIRQ => arg[8..12].copy_from_slice(&13u32.to_le_bytes()),
                EVTCHNOP_STATUS => {
                    arg[8..12].copy_from_slice(&EVTCHNSTAT_INTERDOMAIN.to_le_bytes());
                    arg[16..18].copy_from_slice(&3u16.to_le_bytes());
                    arg[20..24].copy_from_slice(&40u32.to_le_bytes());
                }
                EVTCHNOP_CLOSE => return XenErrno::EINVAL.as_neg(),
                _ => {}
            }
            0
        });
        assert_eq!(f.evtchn_alloc_unbound(0), Ok(11));
        let c = f.only_call();
        assert_eq!(c.args[0], 6);
        assert_eq!(c.arg, [0xF0, 0x7F, 0, 0, 0, 0, 0, 0]);

        assert_eq!(f.evtchn_bind_interdomain(0x1234, 77), Ok(12));
        let c = f.only_call();
        assert_eq!(c.args[0], 0);
        assert_eq!(c.arg, [0x34, 0x12, 0, 0, 77, 0, 0, 0, 0, 0, 0, 0]);

        assert_eq!(f.evtchn_bind_virq(VIRQ_TIMER, 2), Ok(13));
        let c = f.only_call();
        assert_eq!(c.args[0], 1);
        assert_eq!(c.arg, [0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);

        for (cmd, call) in [
            (EVTCHNOP_SEND, f.evtchn_send(300)),
            (EVTCHNOP_UNMASK, f.evtchn_unmask(300)),
        ] {
            call.unwrap();
            let c = f.calls.borrow_mut().remove(0);
            assert_eq!(c.args[0], u64::from(cmd));
            assert_eq!(c.arg, 300u32.to_le_bytes());
        }
        assert_eq!(
            f.evtchn_close(300),
            Err(HypercallError::Xen(XenErrno::EINVAL))
        );
        assert_eq!(f.only_call().args[0], 3);

        let st = f.evtchn_status(9).unwrap();
        let c = f.only_call();
        assert_eq!(c.args[0], 5);
        assert_eq!(&c.arg[..8], &[0xF0, 0x7F, 0, 0, 9, 0, 0, 0]);
        assert_eq!(st.interdomain(), Some((3, 40)));
    }

    #[test]
    fn grant_table_ops_layout_and_statuses() {
        let f = fake(|nr, args, arg| {
            assert_eq!(nr, HYPERVISOR_GRANT_TABLE_OP);
            match args[0] as u32 {
                GNTTABOP_QUERY_SIZE => {
                    assert_eq!(args[2], 1);
                    arg[4..8].copy_from_slice(&4u32.to_le_bytes());
                    arg[8..12].copy_from_slice(&64u32.to_le_bytes());
                    arg[12..14].copy_from_slice(&GNTST_OKAY.to_le_bytes());
                }
                GNTTABOP_SETUP_TABLE => {
                    let op = GnttabSetupTable::from_prefix(arg).unwrap();
                    // Xen writes the frame list through the embedded handle.
                    for i in 0..op.nr_frames as usize {
                        let p = (op.frame_list as usize + i * 8) as *mut u64;
                        // SAFETY: `frame_list` is the caller's slice of `nr_frames`
                        // entries (the wrapper's contract under test).
                        unsafe { p.write_unaligned(0x500 + i as u64) };
                    }
                    arg[8..10].copy_from_slice(&GNTST_OKAY.to_le_bytes());
                }
                GNTTABOP_COPY => {
                    for (i, op) in arg.chunks_mut(GnttabCopy::SIZE).enumerate() {
                        let status = if i == 2 {
                            GNTST_PERMISSION_DENIED
                        } else {
                            GNTST_OKAY
                        };
                        op[36..38].copy_from_slice(&status.to_le_bytes());
                    }
                }
                GNTTABOP_SET_VERSION => {
                    assert_eq!(args[2], 1);
                    arg.copy_from_slice(&1u32.to_le_bytes());
                }
                _ => unreachable!(),
            }
            0
        });
        assert_eq!(
            f.gnttab_query_size(),
            Ok(GrantTableSize {
                nr_frames: 4,
                max_nr_frames: 64
            })
        );
        let c = f.only_call();
        assert_eq!(c.args[0], 6);
        assert_eq!(&c.arg[..2], &[0xF0, 0x7F]);

        let mut frames = [0u64; 3];
        f.gnttab_setup_table(&mut frames).unwrap();
        assert_eq!(frames, [0x500, 0x501, 0x502]);
        let c = f.only_call();
        let op = GnttabSetupTable::from_prefix(&c.arg).unwrap();
        assert_eq!((c.args[0], c.args[2]), (2, 1));
        assert_eq!((op.dom, op.nr_frames), (DOMID_SELF, 3));
        assert_eq!(op.frame_list, frames.as_ptr() as u64);

        let op = |i: u32| GnttabCopy {
            source: GnttabCopyPtr::gmfn(0x100 + u64::from(i), DOMID_SELF, 0),
            dest: GnttabCopyPtr::gref(20 + i, 1, 8),
            len: 512,
            flags: GNTCOPY_DEST_GREF,
            status: 0,
            _pad: 0,
        };
        let mut ops = [op(0), op(1)];
        f.gnttab_copy(&mut ops).unwrap();
        let c = f.only_call();
        assert_eq!((c.args[0], c.args[2]), (5, 2));
        assert_eq!(c.arg.len(), 80);
        let sent = GnttabCopy::from_prefix(&c.arg[40..]).unwrap();
        assert_eq!(
            sent,
            GnttabCopy {
                status: GNTST_GENERAL_ERROR,
                ..op(1)
            }
        );
        assert_eq!(ops[1].status, GNTST_OKAY);

        let mut ops = [op(0), op(1), op(2), op(3)];
        assert_eq!(
            f.gnttab_copy(&mut ops),
            Err(HypercallError::Grant {
                index: 2,
                status: GNTST_PERMISSION_DENIED
            })
        );
        f.only_call();
        assert_eq!(f.gnttab_copy(&mut []), Ok(()));
        assert!(f.calls.borrow().is_empty(), "empty batch is not sent");

        assert_eq!(f.gnttab_set_version(1), Ok(1));
        assert_eq!(f.only_call().arg, 1u32.to_le_bytes());
    }

    #[test]
    fn grant_status_failures_and_skipped_ops() {
        // A "hypervisor" that returns 0 but writes no status: the preset makes it fail.
        let f = fake(|_, _, _| 0);
        let mut ops = [GnttabCopy::default()];
        assert_eq!(
            f.gnttab_copy(&mut ops),
            Err(HypercallError::Grant {
                index: 0,
                status: GNTST_GENERAL_ERROR
            })
        );
        assert!(f.gnttab_query_size().is_err());
        let f = fake(|_, _, _| XenErrno::EFAULT.as_neg());
        assert_eq!(
            f.gnttab_copy(&mut ops),
            Err(HypercallError::Xen(XenErrno::EFAULT))
        );
    }

    #[test]
    fn vcpu_and_sched_ops_layout() {
        let f = fake(|_, _, _| 0);
        f.vcpu_set_singleshot_timer(1, 123_456_789, true).unwrap();
        let c = f.only_call();
        assert_eq!((c.nr, c.args[0], c.args[1]), (HYPERVISOR_VCPU_OP, 8, 1));
        let op = VcpuSetSingleshotTimer::from_prefix(&c.arg).unwrap();
        assert_eq!(
            (op.timeout_abs_ns, op.flags),
            (123_456_789, VCPU_SSHOTTMR_FUTURE)
        );
        f.vcpu_stop_singleshot_timer(1).unwrap();
        let c = f.only_call();
        assert_eq!(c.args, [9, 1, 0, 0, 0]);

        f.sched_yield().unwrap();
        assert_eq!(f.only_call().args, [0, 0, 0, 0, 0]);
        f.sched_block().unwrap();
        assert_eq!(f.only_call().args, [1, 0, 0, 0, 0]);
        f.sched_shutdown(SHUTDOWN_POWEROFF).unwrap();
        let c = f.only_call();
        assert_eq!((c.nr, c.args[0]), (HYPERVISOR_SCHED_OP, 2));
        assert_eq!(c.arg, [0, 0, 0, 0]);

        let ports = [3u32, 4000];
        f.sched_poll(&ports, 77).unwrap();
        let c = f.only_call();
        assert_eq!(c.args[0], 3);
        let op = SchedPoll::from_prefix(&c.arg).unwrap();
        assert_eq!(
            (op.ports, op.nr_ports, op.timeout),
            (ports.as_ptr() as u64, 2, 77)
        );
    }

    #[test]
    fn console_write_in_chunks() {
        let f = fake(|nr, args, arg| {
            assert_eq!((nr, args[0]), (HYPERVISOR_CONSOLE_IO, 0));
            assert!(arg.iter().all(|&b| b == b'x'));
            0
        });
        let text = std::vec![b'x'; CONSOLE_CHUNK + 10];
        f.console_write(&text).unwrap();
        let calls = f.calls.borrow();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].args[1], calls[1].args[1]),
            (CONSOLE_CHUNK as u64, 10)
        );
        assert_eq!(calls[1].args[2], text[CONSOLE_CHUNK..].as_ptr() as u64);
        drop(calls);
        let f = fake(|_, _, _| XenErrno::EPERM.as_neg());
        assert_eq!(
            f.console_write(b"hi"),
            Err(HypercallError::Xen(XenErrno::EPERM))
        );
        f.calls.borrow_mut().clear();
        f.console_write(b"").unwrap();
        assert!(
            f.calls.borrow().is_empty(),
            "nothing to write, nothing sent"
        );
    }
}
