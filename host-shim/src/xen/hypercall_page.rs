//! The shim's hypercall page.
//!
//! On Xen the guest writes a page's address to the hypercall-page MSR and Xen fills the
//! page with one 32-byte stub per hypercall (`mov $nr, %eax; vmcall; ret`). Where KVM
//! cannot hand `vmcall` to the shim (kvm-pvm, without `KVM_CAP_XEN_HVM`), the shim's
//! stubs leave the guest with a port read instead, and are written for the mode the
//! guest was in when it wrote the MSR:
//!
//! ```text
//! 64-bit:  mov $nr, %eax       b8 nn nn nn nn
//!          in  $0xe2, %eax     e5 e2      exits; the shim reads rdi rsi rdx r10 r8
//!          cltq                48 98      sign-extend: results are 0, -errno or small
//!          ret                 c3
//! 32-bit:  mov $nr, %eax       b8 nn nn nn nn
//!          in  $0xe3, %eax     e5 e3      exits; the shim reads ebx ecx edx esi edi
//!          ret                 c3
//! ```
//!
//! The guest calls `page + 32 * nr` on Xen and on the shim alike and cannot tell the
//! two apart, except that a 64-bit result is limited to 32 bits sign-extended (every
//! hypercall the shim implements returns a value in that range). `cltq` decodes as
//! `dec %eax; cwde` in 32-bit code, hence two kinds of stub; the port says which kind
//! exited, and a call from the other mode is refused (see [`super::hypercall::Call`]).

use pv_drivers::abi::cpuid::HYPERCALL_STUB_SIZE;

use super::hypercall::Mode;

/// The port the 64-bit stubs read. Below 0x100 so the stub can use the immediate form
/// of `in` and leave `dx` (the third argument) alone; unused by PC devices.
pub const HYPERCALL_PORT: u8 = 0xe2;

/// The port the 32-bit stubs read.
pub const HYPERCALL_PORT_32: u8 = 0xe3;

/// Stubs per page.
pub const STUBS: u64 = 4096 / HYPERCALL_STUB_SIZE;

/// The mode whose stubs read `port`, if it is a hypercall port.
pub fn stub_mode(port: u16) -> Option<Mode> {
    match port {
        p if p == u16::from(HYPERCALL_PORT) => Some(Mode::Long),
        p if p == u16::from(HYPERCALL_PORT_32) => Some(Mode::Compat),
        _ => None,
    }
}

/// The contents of the hypercall page for a guest in `mode`.
pub fn hypercall_page(mode: Mode) -> [u8; 4096] {
    // Unused bytes are `int3` so that a jump into the middle of a stub traps.
    let mut page = [0xcc; 4096];
    for nr in 0..STUBS as u32 {
        let at = (nr as u64 * HYPERCALL_STUB_SIZE) as usize;
        let [a, b, c, d] = nr.to_le_bytes();
        let stub: &[u8] = match mode {
            Mode::Long => &[0xb8, a, b, c, d, 0xe5, HYPERCALL_PORT, 0x48, 0x98, 0xc3],
            Mode::Compat => &[0xb8, a, b, c, d, 0xe5, HYPERCALL_PORT_32, 0xc3],
        };
        page[at..at + stub.len()].copy_from_slice(stub);
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_loads_its_number_and_reads_the_port_of_its_mode() {
        for (mode, tail) in [
            (Mode::Long, &[0xe5, HYPERCALL_PORT, 0x48, 0x98, 0xc3][..]),
            (Mode::Compat, &[0xe5, HYPERCALL_PORT_32, 0xc3][..]),
        ] {
            let page = hypercall_page(mode);
            for nr in [0u32, 17, 29, 34, 127] {
                let s = &page[nr as usize * 32..][..32];
                assert_eq!(s[0], 0xb8);
                assert_eq!(u32::from_le_bytes(s[1..5].try_into().unwrap()), nr);
                assert_eq!(&s[5..5 + tail.len()], tail);
                assert!(s[5 + tail.len()..].iter().all(|&b| b == 0xcc));
            }
        }
        assert_eq!(stub_mode(0xe2), Some(Mode::Long));
        assert_eq!(stub_mode(0xe3), Some(Mode::Compat));
        assert_eq!(stub_mode(0xe4), None);
    }
}
