//! Fuzzes the guest's PV block driver (`pv_drivers::blkfront`) against a lying
//! backend: xenstore nodes with good and bad geometry and features, then requests
//! answered honestly (read data in the granted pages) or with lies (wrong, duplicate
//! and stale ids, wrong operations, statuses outside the protocol, a response producer
//! ahead of the requests, bytes over the ring, backend state flips).
//!
//! The body is `host_shim::testing::fuzz_blkfront` (one process, a loopback domain
//! pair), which checks after every poll that each completion belongs to an accepted
//! request and arrives once, that an honest read returns exactly the backend's bytes,
//! and that after a violation the device holds nothing in flight; `cargo test` runs
//! the same function on seeded pseudo-random inputs. Run with
//! `cargo +nightly fuzz run blkfront` from `host-shim/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    host_shim::testing::fuzz_blkfront(data);
});
