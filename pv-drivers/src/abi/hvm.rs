//! `xen/include/public/hvm/hvm_op.h` and `xen/include/public/hvm/params.h`: the HVM
//! operations a PVH guest uses (`HYPERVISOR_hvm_op(op, arg)`) and the parameters it
//! reads to find xenstore and the console and sets to choose event delivery.
//!
//! Two headers in one file because `params.h` only numbers the parameters that
//! `hvm_op.h`'s `HVMOP_{set,get}_param` carry.

use super::xen::DomId;

/// `HVMOP_set_param`: arg is [`XenHvmParam`].
pub const HVMOP_SET_PARAM: u32 = 0;
/// `HVMOP_get_param`: arg is [`XenHvmParam`].
pub const HVMOP_GET_PARAM: u32 = 1;
/// `HVMOP_flush_tlbs`: arg must be NULL.
pub const HVMOP_FLUSH_TLBS: u32 = 5;
/// `HVMOP_pagetable_dying`.
pub const HVMOP_PAGETABLE_DYING: u32 = 9;
/// `HVMOP_get_time`.
pub const HVMOP_GET_TIME: u32 = 10;
/// `HVMOP_get_mem_type`.
pub const HVMOP_GET_MEM_TYPE: u32 = 15;
/// `HVMOP_set_evtchn_upcall_vector` (x86 only): arg is [`XenHvmEvtchnUpcallVector`].
pub const HVMOP_SET_EVTCHN_UPCALL_VECTOR: u32 = 23;
/// `HVMOP_guest_request_vm_event`.
pub const HVMOP_GUEST_REQUEST_VM_EVENT: u32 = 24;
/// `HVMOP_altp2m`.
pub const HVMOP_ALTP2M: u32 = 25;

/// `struct xen_hvm_param`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenHvmParam {
    /// IN (`DOMID_SELF` for the caller).
    pub domid: DomId,
    /// `pad`.
    pub pad: u16,
    /// IN: `HVM_PARAM_*`.
    pub index: u32,
    /// IN (set) / OUT (get).
    pub value: u64,
}

/// `struct xen_hvm_evtchn_upcall_vector`: deliver `vcpu`'s event-channel upcalls as
/// interrupt `vector`, in preference to the domain-wide `HVM_PARAM_CALLBACK_IRQ`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenHvmEvtchnUpcallVector {
    /// IN.
    pub vcpu: u32,
    /// IN.
    pub vector: u8,
    /// Implicit C padding to the 4-byte alignment.
    pub _pad: [u8; 3],
}

/// `HVM_PARAM_CALLBACK_IRQ`: how vCPU 0's event-channel notifications are delivered.
/// 0 disables them; otherwise bits 63:56 hold an `HVM_PARAM_CALLBACK_TYPE_*` and the
/// low bits its argument (see [`hvm_callback_via_vector`]).
pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
/// `HVM_PARAM_CALLBACK_IRQ_TYPE_MASK`.
pub const HVM_PARAM_CALLBACK_IRQ_TYPE_MASK: u64 = 0xFF00_0000_0000_0000;
/// `HVM_PARAM_CALLBACK_TYPE_GSI`: bits 55:0 are a GSI (not 0).
pub const HVM_PARAM_CALLBACK_TYPE_GSI: u64 = 0;
/// `HVM_PARAM_CALLBACK_TYPE_PCI_INTX`: bits 55:0 are a PCI INTx line.
pub const HVM_PARAM_CALLBACK_TYPE_PCI_INTX: u64 = 1;
/// `HVM_PARAM_CALLBACK_TYPE_VECTOR` (x86): bits 7:0 are an interrupt vector; check
/// `XENFEAT_hvm_callback_vector` first.
pub const HVM_PARAM_CALLBACK_TYPE_VECTOR: u64 = 2;

/// Bit position of the type in an `HVM_PARAM_CALLBACK_IRQ` value ("val\[63:56\]").
const HVM_PARAM_CALLBACK_TYPE_SHIFT: u32 = 56;

/// The `HVM_PARAM_CALLBACK_IRQ` value for delivery by interrupt `vector`.
pub const fn hvm_callback_via_vector(vector: u8) -> u64 {
    (HVM_PARAM_CALLBACK_TYPE_VECTOR << HVM_PARAM_CALLBACK_TYPE_SHIFT) | vector as u64
}

/// Splits an `HVM_PARAM_CALLBACK_IRQ` value into `(type, bits 55:0)`.
pub const fn hvm_callback_decode(value: u64) -> (u64, u64) {
    (
        (value & HVM_PARAM_CALLBACK_IRQ_TYPE_MASK) >> HVM_PARAM_CALLBACK_TYPE_SHIFT,
        value & !HVM_PARAM_CALLBACK_IRQ_TYPE_MASK,
    )
}

/// `HVM_PARAM_STORE_PFN`: frame of the xenstore ring.
pub const HVM_PARAM_STORE_PFN: u32 = 1;
/// `HVM_PARAM_STORE_EVTCHN`: event channel of the xenstore ring.
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// `HVM_PARAM_IOREQ_PFN`.
pub const HVM_PARAM_IOREQ_PFN: u32 = 5;
/// `HVM_PARAM_BUFIOREQ_PFN`.
pub const HVM_PARAM_BUFIOREQ_PFN: u32 = 6;
/// `HVM_PARAM_VIRIDIAN` (x86).
pub const HVM_PARAM_VIRIDIAN: u32 = 9;
/// `HVM_PARAM_TIMER_MODE`.
pub const HVM_PARAM_TIMER_MODE: u32 = 10;
/// `HVM_PARAM_HPET_ENABLED`.
pub const HVM_PARAM_HPET_ENABLED: u32 = 11;
/// `HVM_PARAM_IDENT_PT`.
pub const HVM_PARAM_IDENT_PT: u32 = 12;
/// `HVM_PARAM_ACPI_S_STATE`.
pub const HVM_PARAM_ACPI_S_STATE: u32 = 14;
/// `HVM_PARAM_VM86_TSS`.
pub const HVM_PARAM_VM86_TSS: u32 = 15;
/// `HVM_PARAM_VPT_ALIGN`.
pub const HVM_PARAM_VPT_ALIGN: u32 = 16;
/// `HVM_PARAM_CONSOLE_PFN`: frame of the PV console ring.
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
/// `HVM_PARAM_CONSOLE_EVTCHN`: event channel of the PV console ring.
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
/// `HVM_PARAM_ACPI_IOPORTS_LOCATION`.
pub const HVM_PARAM_ACPI_IOPORTS_LOCATION: u32 = 19;
/// `HVM_PARAM_PAGING_RING_PFN`.
pub const HVM_PARAM_PAGING_RING_PFN: u32 = 27;
/// `HVM_PARAM_MONITOR_RING_PFN`.
pub const HVM_PARAM_MONITOR_RING_PFN: u32 = 28;
/// `HVM_PARAM_SHARING_RING_PFN`.
pub const HVM_PARAM_SHARING_RING_PFN: u32 = 29;
/// `HVM_PARAM_TRIPLE_FAULT_REASON`.
pub const HVM_PARAM_TRIPLE_FAULT_REASON: u32 = 31;
/// `HVM_PARAM_IOREQ_SERVER_PFN`.
pub const HVM_PARAM_IOREQ_SERVER_PFN: u32 = 32;
/// `HVM_PARAM_NR_IOREQ_SERVER_PAGES`.
pub const HVM_PARAM_NR_IOREQ_SERVER_PAGES: u32 = 33;
/// `HVM_PARAM_VM_GENERATION_ID_ADDR`.
pub const HVM_PARAM_VM_GENERATION_ID_ADDR: u32 = 34;
/// `HVM_PARAM_ALTP2M`.
pub const HVM_PARAM_ALTP2M: u32 = 35;
/// `HVM_PARAM_X87_FIP_WIDTH`.
pub const HVM_PARAM_X87_FIP_WIDTH: u32 = 36;
/// `HVM_PARAM_VM86_TSS_SIZED`.
pub const HVM_PARAM_VM86_TSS_SIZED: u32 = 37;
/// `HVM_PARAM_MCA_CAP`.
pub const HVM_PARAM_MCA_CAP: u32 = 38;
/// `HVM_NR_PARAMS`: parameter indices are below this.
pub const HVM_NR_PARAMS: u32 = 39;

pod_bytes!(XenHvmParam {
    domid,
    pad,
    index,
    value
});
pod_bytes!(XenHvmEvtchnUpcallVector { vcpu, vector, _pad });

const _: () = assert!(core::mem::size_of::<XenHvmParam>() == 16);
const _: () = assert!(core::mem::offset_of!(XenHvmParam, index) == 4);
const _: () = assert!(core::mem::offset_of!(XenHvmParam, value) == 8);
const _: () = assert!(core::mem::size_of::<XenHvmEvtchnUpcallVector>() == 8);
const _: () = assert!(core::mem::offset_of!(XenHvmEvtchnUpcallVector, vector) == 4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::xen::DOMID_SELF;

    #[test]
    fn callback_vector_encoding() {
        let v = hvm_callback_via_vector(0xF3);
        assert_eq!(v, 0x0200_0000_0000_00F3);
        assert_eq!(
            hvm_callback_decode(v),
            (HVM_PARAM_CALLBACK_TYPE_VECTOR, 0xF3)
        );
        assert_eq!(hvm_callback_decode(5), (HVM_PARAM_CALLBACK_TYPE_GSI, 5));
    }

    #[test]
    fn param_bytes() {
        let p = XenHvmParam {
            domid: DOMID_SELF,
            pad: 0,
            index: HVM_PARAM_STORE_EVTCHN,
            value: 0x1122_3344_5566_7788,
        };
        let b = p.to_bytes();
        assert_eq!(&b[0..2], &0x7FF0u16.to_le_bytes());
        assert_eq!(&b[4..8], &2u32.to_le_bytes());
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(XenHvmParam::from_bytes(&b), p);
    }
}
