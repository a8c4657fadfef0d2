//! Fuzzes the shim's hypercall dispatcher (`Xen::hypercall`) as a guest reaches it:
//! raw and mostly valid hypercalls with structures placed in guest memory, grant
//! entries and ring bytes written behind the shim's back, on a guest with paging off or
//! on, set up or not.
//!
//! The body is `host_shim::testing::fuzz_hypercall` (no KVM needed: the Xen interface
//! runs over plain memory with a recording interrupter), which checks after every
//! hypercall that the result is a value or a Xen errno, no grant stays pinned, no
//! upcall lands on an exception vector, and xenstored is consistent; `cargo test` runs
//! the same function on seeded pseudo-random inputs. Run with
//! `cargo +nightly fuzz run hypercall` from `host-shim/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    host_shim::testing::fuzz_hypercall(data);
});
