//! The Bochs/QEMU debug console ("debugcon", port 0xe9).
//!
//! A write sends its low byte to the console, as QEMU's `isa-debugcon` does. A read
//! returns 0xe9 (QEMU's default `readback`), so a guest can probe for the port.

use std::io::Write;

use super::console::ConsoleSink;
use super::{Action, BusDevice};

/// The debug console's conventional port.
pub const DEBUGCON_PORT: u16 = 0xe9;
/// What a read returns.
pub const READBACK: u8 = 0xe9;

/// The debug console device.
pub struct DebugCon {
    sink: ConsoleSink,
}

impl DebugCon {
    /// A debug console writing to `sink`.
    pub fn new(sink: ConsoleSink) -> Self {
        Self { sink }
    }
}

impl BusDevice for DebugCon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = READBACK;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Action {
        if let Some(&byte) = data.first() {
            // A console that cannot be written (closed stdout) must not stop the guest,
            // and the guest has no way to be told: drop the byte.
            let _ = self
                .sink
                .write_all(&[byte])
                .and_then(|()| self.sink.flush());
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::console::Capture;

    #[test]
    fn writes_low_byte_and_reads_back_e9() {
        let cap = Capture::new();
        let mut dev = DebugCon::new(ConsoleSink::new(cap.clone()));
        for b in b"hi\n" {
            assert_eq!(dev.write(0, &[*b]), Action::Continue);
        }
        assert_eq!(dev.write(0, b"!?"), Action::Continue);
        assert_eq!(dev.write(0, &[]), Action::Continue);
        assert_eq!(cap.text(), "hi\n!");
        let mut d = [0u8; 1];
        dev.read(0, &mut d);
        assert_eq!(d, [0xe9]);
        let mut d = [0xffu8; 2];
        dev.read(0, &mut d);
        assert_eq!(d, [0xe9, 0]);
        dev.read(0, &mut []);
    }
}
