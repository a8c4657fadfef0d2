//! The I/O APIC (Intel 82093AA datasheet): routes the emulated devices' interrupt lines
//! (GSIs) to vectors of this CPU's local APIC.
//!
//! One IOAPIC at the PC's standard address, GSI n on pin n, as QEMU `-M pc` and
//! host-shim (KVM's in-kernel IOAPIC) place it; an ACPI MADT would say so too, but this
//! kernel reads no ACPI. Registers are reached through the index/data pair IOREGSEL /
//! IOWIN, so every access runs with interrupts off (an interrupt handler masks pins
//! too). The low dword of each redirection entry is shadowed here, so masking and
//! unmasking from the interrupt path costs two register writes, no read.
//!
//! Trigger mode and polarity: an ISA IRQ (the IDE's 14 and 15) is edge-triggered,
//! active high; a PCI INTx line is level-triggered. Its polarity is what the platform's
//! MADT says: QEMU's PIIX-routed PCI IRQs (GSIs below 16) are active high (MADT
//! interrupt source overrides with flags 0xd), PCI's own pins (GSI 16 and up) active
//! low. Both emulated IOAPICs ignore the polarity bit (KVM's `ioapic_set_irq` and
//! QEMU's take the level the device model drives as "asserted"), so it matters only on
//! hardware; the trigger mode matters everywhere (level entries get Remote IRR and an
//! EOI broadcast).

use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use super::{arch, memory};

/// Physical address of the IOAPIC's registers.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_REDTBL: u32 = 0x10;

const ENTRY_MASKED: u32 = 1 << 16;
const ENTRY_LEVEL: u32 = 1 << 15;
const ENTRY_ACTIVE_LOW: u32 = 1 << 13;

/// Most pins handled (the 82093AA has 24; QEMU and KVM too).
pub const MAX_PINS: usize = 24;

/// Pins of the IOAPIC found by [`init`] (0: none).
static PINS: AtomicU8 = AtomicU8::new(0);
/// Shadow of each pin's redirection entry, low dword.
static LOW: [AtomicU32; MAX_PINS] = [const { AtomicU32::new(ENTRY_MASKED) }; MAX_PINS];

/// How a line signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Edge (ISA IRQs).
    Edge,
    /// Level (PCI INTx): delivered while asserted, once per EOI.
    Level,
}

/// Which level of the line means asserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    High,
    Low,
}

impl Polarity {
    /// The polarity of a PCI INTx line on `gsi` (see the module comment).
    pub fn pci(gsi: u8) -> Self {
        if gsi < 16 { Self::High } else { Self::Low }
    }
}

/// What [`init`] found.
#[derive(Clone, Copy, Debug)]
pub struct IoApicInfo {
    pub id: u8,
    pub version: u8,
    /// Pins (redirection entries), all masked by [`init`].
    pub pins: u8,
}

fn base() -> Option<u64> {
    memory::map_mmio(IOAPIC_BASE, 0x20).ok()
}

/// Reads register `reg`. Call with interrupts off.
fn read(base: u64, reg: u32) -> u32 {
    // SAFETY: `base` is the IOAPIC's register page, identity-mapped uncached
    // (`memory::map_mmio`); IOREGSEL and IOWIN are 32-bit registers in it.
    unsafe {
        core::ptr::write_volatile((base + IOREGSEL) as *mut u32, reg);
        core::ptr::read_volatile((base + IOWIN) as *const u32)
    }
}

/// Writes register `reg`. Call with interrupts off.
fn write(base: u64, reg: u32, value: u32) {
    // SAFETY: as in `read`; the registers only steer interrupt delivery.
    unsafe {
        core::ptr::write_volatile((base + IOREGSEL) as *mut u32, reg);
        core::ptr::write_volatile((base + IOWIN) as *mut u32, value);
    }
}

/// Probes the IOAPIC and masks every pin. `None` if nothing plausible answers (reads of
/// an absent device give all ones, or zeros): a version from 0x10 to 0x2f (82093AA and
/// its successors, KVM 0x11, QEMU 0x20) and 1 to 240 entries.
///
/// Probe only where an IOAPIC may be: reads of unbacked MMIO are emulated by a VMM, and
/// under Xen PVH without emulated devices there is none (the caller decides).
pub fn init() -> Option<IoApicInfo> {
    let base = base()?;
    let (id, ver) = arch::without_interrupts(|| (read(base, REG_ID), read(base, REG_VERSION)));
    let version = ver as u8;
    let entries = ((ver >> 16) & 0xff) + 1;
    if ver == u32::MAX || !(0x10..=0x2f).contains(&version) || entries > 240 {
        return None;
    }
    let pins = entries.min(MAX_PINS as u32) as u8;
    // The legacy PICs stay masked: the IOAPIC delivers instead (LINT0, where the PIC
    // would arrive, is masked in the local APIC too).
    arch::outb(0x21, 0xff);
    arch::outb(0xa1, 0xff);
    arch::without_interrupts(|| {
        for pin in 0..pins {
            LOW[usize::from(pin)].store(ENTRY_MASKED, Ordering::Relaxed);
            write(base, REG_REDTBL + 2 * u32::from(pin), ENTRY_MASKED);
            write(base, REG_REDTBL + 2 * u32::from(pin) + 1, 0);
        }
    });
    PINS.store(pins, Ordering::Release);
    Some(IoApicInfo {
        id: ((id >> 24) & 0xf) as u8,
        version,
        pins,
    })
}

/// Pins of the IOAPIC (0 if there is none).
pub fn pins() -> u8 {
    PINS.load(Ordering::Acquire)
}

/// Routes `pin` to `vector` on the local APIC `dest` (physical destination mode, fixed
/// delivery), unmasked. False if there is no such pin.
pub fn route(pin: u8, vector: u8, trigger: Trigger, polarity: Polarity, dest: u32) -> bool {
    if pin >= pins() {
        return false;
    }
    let Some(base) = base() else { return false };
    let mut low = u32::from(vector);
    if trigger == Trigger::Level {
        low |= ENTRY_LEVEL;
    }
    if polarity == Polarity::Low {
        low |= ENTRY_ACTIVE_LOW;
    }
    let reg = REG_REDTBL + 2 * u32::from(pin);
    arch::without_interrupts(|| {
        // Masked while the halves disagree, then the final low dword.
        write(base, reg, low | ENTRY_MASKED);
        write(base, reg + 1, (dest & 0xff) << 24);
        write(base, reg, low);
        LOW[usize::from(pin)].store(low, Ordering::Relaxed);
    });
    true
}

fn set_masked(pin: u8, masked: bool) {
    if pin >= pins() {
        return;
    }
    let Some(base) = base() else { return };
    arch::without_interrupts(|| {
        let shadow = &LOW[usize::from(pin)];
        let old = shadow.load(Ordering::Relaxed);
        let new = if masked {
            old | ENTRY_MASKED
        } else {
            old & !ENTRY_MASKED
        };
        if new != old {
            shadow.store(new, Ordering::Relaxed);
            write(base, REG_REDTBL + 2 * u32::from(pin), new);
        }
    });
}

/// Masks `pin`.
pub fn mask(pin: u8) {
    set_masked(pin, true);
}

/// Unmasks `pin`. A level-triggered line still asserted is delivered again.
pub fn unmask(pin: u8) {
    set_masked(pin, false);
}
