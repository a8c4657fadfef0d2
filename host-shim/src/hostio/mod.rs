//! Host I/O resources shared by every device path: the disk image ([`disk`]) and the
//! TAP network link ([`tap`]), and the private network namespace a run
//! with TAP devices lives in ([`netns`]). blkback and netback use them, and so do the emulated
//! devices, so the PV-against-emulated numbers differ only by the device protocol.

pub mod disk;
pub mod netns;
pub mod tap;
