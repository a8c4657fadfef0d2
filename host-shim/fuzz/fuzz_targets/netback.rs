//! Fuzzes the shim's PV network backend (`host_shim::backends::netback`) as a hostile
//! frontend domain reaches it: xenbus handshakes with good and bad keys (split or
//! shared event channels, page flipping, queues), transmit chains of every length
//! with bogus sizes, offsets, flags and grants, receive buffers in grants of every
//! kind, raw bytes over both rings and lying producer indices, and frames of every
//! size from the host side of its in-memory link.
//!
//! The body is `host_shim::testing::fuzz_netback`, which checks after every step that
//! pages the backend could not write kept their canary, that every response has a
//! netif status and stays within its page, and that every frame put on the link is a
//! whole Ethernet frame within the limit, and at the end that no grant is still
//! pinned; `cargo test` runs the same function on seeded pseudo-random inputs. Run with
//! `cargo +nightly fuzz run netback` from `host-shim/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    host_shim::testing::fuzz_netback(data);
});
