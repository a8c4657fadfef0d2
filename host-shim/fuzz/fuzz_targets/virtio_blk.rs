//! Fuzzes virtio-blk on the modern virtio-pci transport
//! (`host_shim::devices::{virtio_pci, virtio_blk}`) with a small in-memory disk image:
//! register accesses of every width in BAR 0 and through the configuration-access
//! window, bring-ups with valid and misplaced queues, descriptor tables (looping,
//! indirect, outside RAM, odd lengths), available indices far ahead, notifies.
//!
//! The body is `host_shim::testing::fuzz_virtio_blk`, which checks after every step
//! that the INTx line follows ISR and INTx disable, and at the end that no byte above
//! the buffers changed and the image kept its size; `cargo test` runs the same
//! function on seeded pseudo-random inputs. Run with
//! `cargo +nightly fuzz run virtio_blk` from `host-shim/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    host_shim::testing::fuzz_virtio_blk(data);
});
