//! The parts of the guest kernel that do not touch hardware, kept in a library so that
//! they are unit-tested on the host: command-line options, the physical-frame
//! allocator, time arithmetic, the exit-status contract, and the I/O layers above the
//! device traits (their options, the smoltcp services).
//!
//! The kernel binary itself (`main.rs`) is built only for `x86_64-unknown-none`.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cmdline;
pub mod exit_status;
pub mod frames;
pub mod ioopts;
pub mod iperf;
pub mod netstack;
pub mod time;
