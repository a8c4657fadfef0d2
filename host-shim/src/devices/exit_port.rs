//! An `isa-debug-exit`-compatible exit port (QEMU `-device isa-debug-exit,iobase=0xf4,iosize=4`).
//!
//! A write of value `v` (1, 2 or 4 bytes, little-endian) ends the run with guest status
//! `v & 0xff`, and the `host-shim` binary exits with that status. QEMU instead exits
//! with `(v << 1) | 1`; the QEMU runner maps that back, the shim does not need to.
//! Reads return 0.

use super::{Action, BusDevice};

/// The port's base.
pub const EXIT_PORT: u16 = 0xf4;
/// The port's size in bytes.
pub const EXIT_PORT_SIZE: u16 = 4;

/// The exit port device.
#[derive(Debug, Default)]
pub struct ExitPort;

impl ExitPort {
    /// A new exit port.
    pub fn new() -> Self {
        Self
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Action {
        match data.first() {
            // `v & 0xff` is the first byte of the little-endian value, whatever its width.
            Some(&low) => Action::Exit(low),
            None => Action::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_width_write_exits_with_the_low_byte() {
        let mut p = ExitPort::new();
        assert_eq!(p.write(0, &[3]), Action::Exit(3));
        assert_eq!(p.write(0, &0x1234u16.to_le_bytes()), Action::Exit(0x34));
        assert_eq!(p.write(0, &0xdead_be00u32.to_le_bytes()), Action::Exit(0));
        assert_eq!(p.write(3, &[0xff]), Action::Exit(0xff));
        assert_eq!(p.write(0, &[]), Action::Continue);
        let mut d = [0xaau8; 4];
        p.read(0, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
