//! The shim's hypercall page.
//!
//! On Xen the guest writes a page's address to the hypercall-page MSR and Xen fills the
//! page with one 32-byte stub per hypercall (`mov $nr, %eax; vmcall; ret`). KVM on this
//! project's machines (kvm-pvm, without `KVM_CAP_XEN_HVM`) cannot intercept `vmcall`,
//! so the shim's stubs leave the guest with
//! a port read instead:
//!
//! ```text
//! mov  $nr, %eax        b8 nn nn nn nn
//! in   $PORT, %eax      e5 PORT          exits to the shim, which reads the arguments
//!                                        (rdi rsi rdx r10 r8) and answers in eax
//! cltq                  48 98            sign-extend: results are 0, -errno or small
//! ret                   c3
//! ```
//!
//! The guest calls `page + 32 * nr` on Xen and on the shim alike and cannot tell the
//! two apart, except that a result is limited to 32 bits sign-extended (every hypercall
//! the shim implements returns a value in that range). Only 64-bit callers are
//! supported (the argument registers and `cltq` are those of long mode).

use pv_drivers::abi::cpuid::HYPERCALL_STUB_SIZE;

/// The port the stubs read. Below 0x100 so the stub can use the immediate form of
/// `in` and leave `dx` (the third argument) alone; unused by PC devices.
pub const HYPERCALL_PORT: u8 = 0xe2;

/// Hypercall stubs per page.
pub const STUBS: u64 = 4096 / HYPERCALL_STUB_SIZE;

/// The contents of the hypercall page.
pub fn hypercall_page() -> [u8; 4096] {
    // Unused bytes are `int3` so that a jump into the middle of a stub traps.
    let mut page = [0xcc; 4096];
    for nr in 0..STUBS as u32 {
        let at = (nr as u64 * HYPERCALL_STUB_SIZE) as usize;
        let [a, b, c, d] = nr.to_le_bytes();
        let stub = [0xb8, a, b, c, d, 0xe5, HYPERCALL_PORT, 0x48, 0x98, 0xc3];
        page[at..at + stub.len()].copy_from_slice(&stub);
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_loads_its_number_and_reads_the_port() {
        let page = hypercall_page();
        for nr in [0u32, 17, 29, 34, 127] {
            let s = &page[nr as usize * 32..][..32];
            assert_eq!(s[0], 0xb8);
            assert_eq!(u32::from_le_bytes(s[1..5].try_into().unwrap()), nr);
            assert_eq!(&s[5..10], &[0xe5, HYPERCALL_PORT, 0x48, 0x98, 0xc3]);
            assert!(s[10..].iter().all(|&b| b == 0xcc));
        }
    }
}
