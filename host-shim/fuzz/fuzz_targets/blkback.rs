//! Fuzzes the shim's PV block backend (`host_shim::backends::blkback`) as a hostile
//! frontend domain reaches it: xenbus handshakes with good and bad keys, blkif
//! requests from pools of real and bogus operations, segments, sectors and grants
//! (read-only, foreign, revoked, never made, the ring itself), indirect pages of
//! hostile descriptors, raw bytes over the ring and lying producer indices, state
//! flips, on a small in-memory disk image.
//!
//! The body is `host_shim::testing::fuzz_blkback` (one process, a loopback domain pair
//! with real grant rules, the backend driven step by step), which checks after every
//! step that pages the backend could not write kept their canary, that every response
//! has a blkif status and that the image kept its size, and at the end that no grant is
//! still pinned; `cargo test` runs the same function on seeded pseudo-random inputs.
//! Run with `cargo +nightly fuzz run blkback` from `host-shim/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    host_shim::testing::fuzz_blkback(data);
});
