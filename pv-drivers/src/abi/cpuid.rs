//! `xen/include/public/arch-x86/cpuid.h`: how a guest finds Xen through CPUID.
//!
//! The Xen leaves start at the first 0x100-aligned base from 0x4000_0000 whose
//! signature is `XenVMMXenVMM` (another hypervisor interface, e.g. Viridian, may sit at
//! 0x4000_0000 and push Xen's to 0x4000_0100).

/// `XEN_CPUID_FIRST_LEAF`: where the scan starts.
pub const XEN_CPUID_FIRST_LEAF: u32 = 0x4000_0000;
/// Where the scan stops (exclusive): bases are tried up to 0x4001_0000.
pub const XEN_CPUID_SCAN_END: u32 = 0x4001_0000;
/// Step between candidate bases.
pub const XEN_CPUID_SCAN_STEP: u32 = 0x100;

/// `XEN_CPUID_SIGNATURE_EBX`: "XenV".
pub const XEN_CPUID_SIGNATURE_EBX: u32 = 0x566e_6558;
/// `XEN_CPUID_SIGNATURE_ECX`: "MMXe".
pub const XEN_CPUID_SIGNATURE_ECX: u32 = 0x6558_4d4d;
/// `XEN_CPUID_SIGNATURE_EDX`: "nVMM".
pub const XEN_CPUID_SIGNATURE_EDX: u32 = 0x4d4d_566e;

/// Leaf base+0: EAX = largest Xen leaf; EBX..EDX = signature.
pub const LEAF_SIGNATURE: u32 = 0;
/// Leaf base+1: EAX = major << 16 | minor.
pub const LEAF_VERSION: u32 = 1;
/// Leaf base+2: EAX = number of hypercall pages, EBX = base of Xen's MSRs (the
/// hypercall-page MSR), ECX/EDX = feature bits.
pub const LEAF_HYPERCALL: u32 = 2;
/// Leaf base+3: time. Sub-leaf 0: EAX flags, EBX tsc_mode, ECX guest TSC kHz, EDX
/// incarnation; sub-leaf 1: EAX/EBX TSC offset, ECX mul, EDX shift; sub-leaf 2: EAX host
/// TSC kHz.
pub const LEAF_TIME: u32 = 3;
/// Leaf base+4: HVM features (EAX), vCPU id (EBX), domain id (ECX).
pub const LEAF_HVM: u32 = 4;

/// `XEN_HVM_CPUID_APIC_ACCESS_VIRT`.
pub const XEN_HVM_CPUID_APIC_ACCESS_VIRT: u32 = 1 << 0;
/// `XEN_HVM_CPUID_X2APIC_VIRT`.
pub const XEN_HVM_CPUID_X2APIC_VIRT: u32 = 1 << 1;
/// `XEN_HVM_CPUID_IOMMU_MAPPINGS`.
pub const XEN_HVM_CPUID_IOMMU_MAPPINGS: u32 = 1 << 2;
/// `XEN_HVM_CPUID_VCPU_ID_PRESENT`: EBX of the HVM leaf is the vCPU id.
pub const XEN_HVM_CPUID_VCPU_ID_PRESENT: u32 = 1 << 3;
/// `XEN_HVM_CPUID_DOMID_PRESENT`: ECX of the HVM leaf is the domain id.
pub const XEN_HVM_CPUID_DOMID_PRESENT: u32 = 1 << 4;
/// `XEN_HVM_CPUID_EXT_DEST_ID`: MSI address bits 11:5 extend the destination id.
pub const XEN_HVM_CPUID_EXT_DEST_ID: u32 = 1 << 5;
/// `XEN_HVM_CPUID_UPCALL_VECTOR`: `HVMOP_set_evtchn_upcall_vector` works per vCPU.
/// (Bit 6: this project once had it as bit 5, `EXT_DEST_ID`, in the shim and the
/// guest alike; a stock Linux, which reads bit 6, found the mistake.)
pub const XEN_HVM_CPUID_UPCALL_VECTOR: u32 = 1 << 6;

/// Size of one hypercall stub in the hypercall page: hypercall `n` is called at
/// `page + n * 32` (`arch-x86/xen-x86_64.h`).
pub const HYPERCALL_STUB_SIZE: u64 = 32;

/// Whether `ebx`, `ecx`, `edx` from a signature leaf spell `XenVMMXenVMM`.
pub const fn is_xen_signature(ebx: u32, ecx: u32, edx: u32) -> bool {
    ebx == XEN_CPUID_SIGNATURE_EBX
        && ecx == XEN_CPUID_SIGNATURE_ECX
        && edx == XEN_CPUID_SIGNATURE_EDX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_spells_xenvmmxenvmm() {
        let mut s = [0u8; 12];
        s[..4].copy_from_slice(&XEN_CPUID_SIGNATURE_EBX.to_le_bytes());
        s[4..8].copy_from_slice(&XEN_CPUID_SIGNATURE_ECX.to_le_bytes());
        s[8..].copy_from_slice(&XEN_CPUID_SIGNATURE_EDX.to_le_bytes());
        assert_eq!(&s, b"XenVMMXenVMM");
        assert!(is_xen_signature(
            XEN_CPUID_SIGNATURE_EBX,
            XEN_CPUID_SIGNATURE_ECX,
            XEN_CPUID_SIGNATURE_EDX
        ));
        assert!(!is_xen_signature(0, 0, 0));
    }

    #[test]
    fn hvm_leaf_bits_are_xens() {
        // xen/include/public/arch-x86/cpuid.h, transcribed: bit 5 is EXT_DEST_ID and
        // the per-vCPU upcall vector is bit 6.
        assert_eq!(
            [
                XEN_HVM_CPUID_APIC_ACCESS_VIRT,
                XEN_HVM_CPUID_X2APIC_VIRT,
                XEN_HVM_CPUID_IOMMU_MAPPINGS,
                XEN_HVM_CPUID_VCPU_ID_PRESENT,
                XEN_HVM_CPUID_DOMID_PRESENT,
                XEN_HVM_CPUID_EXT_DEST_ID,
                XEN_HVM_CPUID_UPCALL_VECTOR,
            ],
            [0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40]
        );
    }
}
