//! Fuzzes the guest's PV network driver (`pv_drivers::netfront`) against a lying
//! backend: xenstore nodes with good and bad MACs and features, then transmit
//! responses and received frames given honestly or with lies (wrong and duplicate ids,
//! statuses outside the protocol, offsets and lengths beyond the page, endless
//! `more_data` chains, blank checksums on frames without one, response producers
//! ahead, ring scribbles, state flips).
//!
//! The body is `host_shim::testing::fuzz_netfront` (one process, a loopback domain
//! pair), which checks that every received frame fits the driver's maximum and that,
//! while the backend told no lie, the guest receives exactly the frames it was given,
//! in order; `cargo test` runs the same function on seeded pseudo-random inputs. Run
//! with `cargo +nightly fuzz run netfront` from `host-shim/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    host_shim::testing::fuzz_netfront(data);
});
