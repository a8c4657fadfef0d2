//! Fuzzes PCI bus 0 as a guest reaches it: configuration mechanism #1 at 0xCF8..0xCFF
//! (any size, any lane, absent functions, other buses) and accesses to whatever BARs
//! are mapped, on `PciBus::pc` with the PIIX3 IDE at 00:01.1 and an e1000 at 00:03.0.
//!
//! The body is `host_shim::testing::fuzz_pci_config`, which checks after every step
//! that the port and memory buses hold only the configuration ports, the IDE's legacy
//! ranges and BARs their headers say decode there, without overlap; `cargo test` runs
//! the same function on seeded pseudo-random inputs. Run with
//! `cargo +nightly fuzz run pci_config` from `host-shim/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    host_shim::testing::fuzz_pci_config(data);
});
