//! Mirrors of Xen's public headers. One file per header; each names its source.
//!
//! Layouts are those of an x86_64 guest: `xen_ulong_t`, `xen_pfn_t` and `unsigned long`
//! are 64 bits, and a `XEN_GUEST_HANDLE(...)` is a 64-bit guest address (`u64`).
//!
//! Structures that cross the guest/hypervisor boundary get byte access through
//! `pod_bytes!`, which refuses (at compile time) any structure with padding: where
//! the C layout has implicit padding, the Rust mirror spells it out as a `_pad` field.

/// Plain old data: a `#[repr(C)]` value that is nothing but initialised bytes.
///
/// # Safety
///
/// Implementors must have no padding bytes and must accept every bit pattern as a valid
/// value (integers, arrays of them, and `#[repr(C)]` structures of those). Inside this
/// crate, `pod_bytes!` implements it only after checking the no-padding half at
/// compile time.
pub unsafe trait Pod: Copy + 'static {}

macro_rules! impl_pod_for_ints {
    ($($t:ty),*) => {
        $(
            // SAFETY: a primitive integer has no padding and every bit pattern is valid.
            unsafe impl Pod for $t {}
        )*
    };
}
impl_pod_for_ints!(u8, u16, u32, u64, i8, i16, i32, i64);

// SAFETY: an array has no padding between elements of a padding-free type, and every
// bit pattern is valid if it is valid for each element.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// Size of the field that `project` selects; only [`Pod`] fields qualify. Used by
/// `pod_bytes!` to prove in a `const` that a structure is the sum of its fields.
#[doc(hidden)]
pub const fn pod_field_size<T, F: Pod>(_project: fn(&T) -> &F) -> usize {
    core::mem::size_of::<F>()
}

/// Gives a `#[repr(C)]` ABI structure byte-level (de)serialisation, so neither side
/// needs `unsafe` to move it in and out of guest memory.
///
/// `pod_bytes!(Type { field, field, ... })` must list every field. It asserts at compile
/// time that every field is [`Pod`] and that the sizes of the fields add up to the size
/// of the structure, i.e. that there is no padding; a structure that fails this needs an
/// explicit `_pad` field, not an exception.
macro_rules! pod_bytes {
    ($t:ident { $($f:ident),+ $(,)? }) => {
        const _: () = assert!(
            core::mem::size_of::<$t>() == 0 $(+ $crate::abi::pod_field_size(|v: &$t| &v.$f))+,
            concat!(stringify!($t), ": fields do not add up to its size (padding?)"),
        );

        // SAFETY: `$t` is `repr(C)`, every field is `Pod` (checked by `pod_field_size`'s
        // bound) and the fields' sizes add up to the structure's size (asserted just
        // above), so it has no padding and every bit pattern is a valid value.
        unsafe impl $crate::abi::Pod for $t {}

        impl $t {
            /// Size of the structure in bytes.
            pub const SIZE: usize = core::mem::size_of::<$t>();

            /// The structure's bytes in guest (little-endian) layout.
            pub fn to_bytes(&self) -> [u8; core::mem::size_of::<$t>()] {
                // SAFETY: the type is `Pod` (see above): every byte is initialised.
                unsafe { core::mem::transmute_copy(self) }
            }

            /// Reads the structure from its guest layout.
            pub fn from_bytes(bytes: &[u8; core::mem::size_of::<$t>()]) -> Self {
                // SAFETY: the type is `Pod`, so every bit pattern is a valid value, and
                // `read_unaligned` places no alignment demand on the source.
                unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<$t>()) }
            }

            /// Reads the structure from the start of `bytes`; `None` if it is too short.
            pub fn from_prefix(bytes: &[u8]) -> Option<Self> {
                let head = bytes.get(..Self::SIZE)?;
                Some(Self::from_bytes(head.try_into().ok()?))
            }

            /// The all-zero value.
            pub fn zeroed() -> Self {
                Self::from_bytes(&[0; core::mem::size_of::<$t>()])
            }
        }
    };
}

pub mod blkif;
pub mod console;
pub mod cpuid;
pub mod elfnote;
pub mod errno;
pub mod event_channel;
pub mod grant_table;
pub mod hvm;
pub mod memory;
pub mod netif;
pub mod sched;
pub mod start_info;
pub mod vcpu;
pub mod xen;
pub mod xs_wire;
