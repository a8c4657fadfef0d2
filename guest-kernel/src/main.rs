//! The guest kernel binary: a unikernel that boots by the Xen PVH ABI.
//!
//! Built for `x86_64-unknown-none` (`cargo xtask guest`). For any other target this
//! file compiles to a stub that explains how to build it, so that `cargo build` and
//! `cargo clippy --all-targets` work across the whole workspace on the host.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod kernel;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "guest-kernel is a bare-metal image: build it with \
         `cargo build -p guest-kernel --target x86_64-unknown-none --release` \
         (or `cargo xtask guest`) and boot it with host-shim or QEMU"
    );
    std::process::exit(2);
}
