//! The parts of the guest kernel that do not touch hardware, kept in a library so that
//! they are unit-tested on the host: command-line options, the physical-frame
//! allocator, time arithmetic, and the exit-status contract.
//!
//! The kernel binary itself (`main.rs`) is built only for `x86_64-unknown-none`.
#![cfg_attr(not(test), no_std)]

pub mod cmdline;
pub mod exit_status;
pub mod frames;
pub mod time;
