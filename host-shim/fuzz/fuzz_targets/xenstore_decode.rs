//! Fuzzes the shim's xenstore daemon as guests reach it: wire requests
//! (`Xenstored::handle`) and the ring page they travel on (`RingServer::pump`).
//!
//! The body is `host_shim::testing::fuzz_xenstore`, which decodes the bytes into mostly
//! valid steps (requests from a vocabulary of real paths, tokens, permissions and
//! numbers, sent by guest 2 and dom0 directly or by guest 1 through its ring in pieces,
//! now and then with a lying length or a corrupted ring index) and checks the daemon
//! after every step; `cargo test` runs the same function on seeded pseudo-random
//! inputs. Run with `cargo +nightly fuzz run xenstore_decode` from `host-shim/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| host_shim::testing::fuzz_xenstore(data));
