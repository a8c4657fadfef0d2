//! Fuzzes the PIIX3 IDE model (`host_shim::devices::ide`) with a small in-memory disk image:
//! task-file command sequences (LBA28/48, DMA, PIO, absurd counts), control (nIEN,
//! SRST), bus-master starts and PRD tables in guest RAM, some pointing outside it.
//!
//! The body is `host_shim::testing::fuzz_ide`, which checks after every step that BSY
//! is clear unless SRST holds the drives, and at the end that DMA never reached a
//! canary region no PRD pointed at and that the image kept its size; `cargo test` runs
//! the same function on seeded pseudo-random inputs. Run with
//! `cargo +nightly fuzz run ide` from `host-shim/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    host_shim::testing::fuzz_ide(data);
});
