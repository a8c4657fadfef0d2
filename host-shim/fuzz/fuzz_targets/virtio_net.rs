//! Fuzzes virtio-net on the modern virtio-pci transport
//! (`host_shim::devices::{virtio_pci, virtio_net}`) on an in-memory link: register
//! accesses of every width in BAR 0 and through the configuration-access window,
//! bring-ups with valid and misplaced queues, MSI-X entries, masks and enables,
//! descriptor tables (looping, indirect, outside RAM, odd lengths), transmit headers
//! asking for checksums anywhere and offloads not offered, receive buffers of any size,
//! frames of any length from the host, available indices far ahead, notifies.
//!
//! The body is `host_shim::testing::fuzz_virtio_net`, which checks after every step
//! that the INTx line follows ISR, INTx disable and MSI-X, that every frame sent to the
//! host is a whole Ethernet frame within the MTU, and at the end that no byte above the
//! buffers changed; `cargo test` runs the same function on seeded pseudo-random inputs.
//! Run with `cargo +nightly fuzz run virtio_net` from `host-shim/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    host_shim::testing::fuzz_virtio_net(data);
});
