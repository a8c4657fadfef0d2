//! COM1: a 16550A UART at ports 0x3f8..0x400 on IRQ 4, modelled by vm-superio's `Serial`.
//!
//! Transmitted bytes go to the console sink. The interrupt is an [`EventFd`] that the VMM
//! wires to GSI 4 with an irqfd, so raising it never involves the vCPU thread. The
//! scratch register works, which is how guests probe for the port.

use std::io;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::console::ConsoleSink;
use super::{Action, BusDevice};

/// COM1's base port.
pub const COM1_PORT: u16 = 0x3f8;
/// Number of UART registers.
pub const COM1_SIZE: u16 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt by signalling an eventfd.
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The COM1 device.
pub struct SerialPort {
    uart: Serial<IrqTrigger, NoEvents, ConsoleSink>,
}

impl SerialPort {
    /// A UART writing to `sink`.
    pub fn new(sink: ConsoleSink) -> io::Result<Self> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        Ok(Self {
            uart: Serial::new(IrqTrigger(evt), sink),
        })
    }

    /// The eventfd that signals the UART's interrupt.
    pub fn irq_evt(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }
}

/// The UART register at byte `i` of an access at `offset`, if there is one.
fn register(offset: u64, i: usize) -> Option<u8> {
    offset
        .checked_add(i as u64)
        .filter(|&r| r < u64::from(COM1_SIZE))
        .map(|r| r as u8)
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // A wider access reads consecutive registers, as on an 8-bit ISA device.
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match register(offset, i) {
                Some(reg) => self.uart.read(reg),
                None => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        for (i, &byte) in data.iter().enumerate() {
            if let Some(reg) = register(offset, i) {
                // Errors are a console that cannot be written or an interrupt that
                // cannot be raised; a 16550 has no way to report either to the guest.
                let _ = self.uart.write(reg, byte);
            }
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::console::Capture;

    #[test]
    fn transmits_and_keeps_the_scratch_register() {
        let cap = Capture::new();
        let mut com = SerialPort::new(ConsoleSink::new(cap.clone())).expect("eventfd");
        com.write(7, &[0x5a]);
        let mut d = [0u8; 1];
        com.read(7, &mut d);
        assert_eq!(d, [0x5a]);
        com.write(0, b"o");
        com.write(0, b"k");
        assert_eq!(cap.text(), "ok");
        // Line status: transmitter empty.
        com.read(5, &mut d);
        assert_eq!(d[0] & 0x60, 0x60);
    }

    #[test]
    fn transmit_interrupt_signals_the_eventfd() {
        let mut com = SerialPort::new(ConsoleSink::new(Capture::new())).expect("eventfd");
        com.write(1, &[0x02]); // IER: transmitter-empty interrupt
        assert_eq!(com.irq_evt().read().expect("signalled"), 1);
    }

    #[test]
    fn hostile_offsets_and_widths_do_not_panic() {
        let mut com = SerialPort::new(ConsoleSink::new(Capture::new())).expect("eventfd");
        let mut big = [0u8; 16];
        com.read(6, &mut big);
        assert_eq!(&big[2..], &[0xff; 14]);
        com.write(u64::MAX, &[1, 2, 3]);
        com.read(u64::MAX - 1, &mut big);
        com.write(5, &[0; 64]);
    }
}
