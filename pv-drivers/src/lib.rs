//! The Xen guest interface, written once and used by both halves of the product.
//!
//! [`abi`] mirrors Xen's public headers (`xen/include/public/`) as `#[repr(C)]` types
//! with compile-time size checks. The guest kernel's drivers and the host shim's
//! backends both import these definitions; neither side re-declares a structure.
//!
//! The crate is `no_std` so that it links into the guest, and compiles for the host so
//! that everything here is unit-tested with plain `cargo test`.
#![cfg_attr(not(test), no_std)]

// Drivers and the xenstore client allocate; the guest kernel has a heap.
extern crate alloc;

pub mod abi;
pub mod blkfront;
pub mod console;
pub mod device;
pub mod evtchn;
pub mod follow;
pub mod frontend;
pub mod grant;
pub mod hypercall;
pub mod netfront;
pub mod netprobe;
pub mod pattern;
pub mod pvclock;
pub mod ring;
pub mod shmem;
pub mod workload;
pub mod xenbus;
pub mod xenstore;
