//! The 8042 keyboard controller's reset line: the one thing a guest without ACPI uses
//! it for. Linux reboots (`reboot=kbd`, its fallback when there is no ACPI) by writing
//! command 0xFE ("pulse output line 0", the CPU reset) to port 0x64; a guest kept
//! waiting for that reset would otherwise spin on the port forever.
//!
//! Two single-port devices: the data port 0x60 and the status/command port 0x64 (port
//! 0x61, between them, belongs to KVM's in-kernel PIT). Like Firecracker's i8042 this is
//! no keyboard: the status register reads 0 (no data, input buffer empty), data reads
//! 0, every other command is ignored, so an OS probing for a keyboard finds none. The
//! reset ends the run as a reboot would with QEMU's `-no-reboot`
//! ([`Action::Reset`]).

use super::{Action, BusDevice};

/// The data port.
pub const DATA_PORT: u16 = 0x60;
/// The status (read) and command (write) port.
pub const COMMAND_PORT: u16 = 0x64;
/// Command: pulse output line 0 low (the CPU reset).
pub const CMD_RESET_CPU: u8 = 0xfe;

/// One of the controller's two ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct I8042Port {
    command: bool,
}

impl I8042Port {
    /// The data port (0x60).
    pub fn data() -> Self {
        Self { command: false }
    }

    /// The status/command port (0x64).
    pub fn command() -> Self {
        Self { command: true }
    }
}

impl BusDevice for I8042Port {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Action {
        if self.command && data.first() == Some(&CMD_RESET_CPU) {
            Action::Reset
        } else {
            Action::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reset_command_on_the_command_port_resets() {
        let mut cmd = I8042Port::command();
        let mut data = I8042Port::data();
        assert_eq!(cmd.write(0, &[CMD_RESET_CPU]), Action::Reset);
        assert_eq!(cmd.write(0, &[0xaa]), Action::Continue);
        assert_eq!(cmd.write(0, &[]), Action::Continue);
        assert_eq!(data.write(0, &[CMD_RESET_CPU]), Action::Continue);
        let mut b = [0xffu8; 2];
        cmd.read(0, &mut b);
        assert_eq!(b, [0, 0], "no data, input buffer empty");
    }
}
