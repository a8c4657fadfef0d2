//! Fuzzes the 82540EM model (`host_shim::devices::e1000`) as a guest reaches it:
//! register reads and writes biased to the rings, interrupts, reset, EEPROM and MDIC;
//! descriptors written into guest RAM (mostly valid-looking); frames from the link;
//! receive pumps and mitigation timers.
//!
//! The body is `host_shim::testing::fuzz_e1000`, which checks the INTx level against
//! ICR & IMS after every step and that DMA never reached a canary region no ring or
//! buffer was pointed at; `cargo test` runs the same function on seeded pseudo-random
//! inputs. Run with `cargo +nightly fuzz run e1000` from `host-shim/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    host_shim::testing::fuzz_e1000(data);
});
