//! Leaf wrappers for the privileged instructions the kernel uses: port I/O, MSRs,
//! CPUID, TSC, interrupt flag, halting.

use x86_64::instructions::port::Port;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes have no memory-safety effect on this kernel; the callers
    // address devices (UART, PIT, PIC, debug ports, PCI configuration and the emulated
    // devices' registers) whose side effects they intend. A device's bus-master DMA is
    // only ever pointed at memory from `memory::alloc_zeroed`, which its driver owns.
    unsafe { Port::<u8>::new(port).write(value) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`; reads of absent ports return all-ones.
    unsafe { Port::<u8>::new(port).read() }
}

/// Writes a doubleword to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { Port::<u32>::new(port).write(value) }
}

/// Reads a doubleword from an I/O port.
pub fn inl(port: u16) -> u32 {
    // SAFETY: as for `inb`.
    unsafe { Port::<u32>::new(port).read() }
}

/// Writes a word to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe { Port::<u16>::new(port).write(value) }
}

/// Reads a word from an I/O port.
pub fn inw(port: u16) -> u16 {
    // SAFETY: as for `inb`.
    unsafe { Port::<u16>::new(port).read() }
}

/// Runs `f` with interrupts disabled, restoring the interrupt flag afterwards: for
/// register sequences an interrupt handler also uses (an index/data register pair).
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(f)
}

/// Enables interrupts and halts, atomically: an interrupt that became pending while
/// interrupts were off wakes the `hlt` (`sti` takes effect after the next instruction).
pub fn sti_hlt() {
    x86_64::instructions::interrupts::enable_and_hlt();
}

/// Reads an MSR.
///
/// # Safety
/// The MSR must exist (else #GP) and reading it must have no side effect the caller
/// has not accounted for.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: the caller guarantees the MSR is readable.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
}

/// Writes an MSR.
///
/// # Safety
/// The MSR must exist and the value must be valid for it; the caller owns the effect.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR and value are valid.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).write(value) }
}

/// `cpuid` with a subleaf: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86_64 CPU and has no side effects.
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    #[allow(unused_unsafe)]
    // SAFETY: RDTSC is unprivileged and side-effect free (CR4.TSD is clear).
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}

/// Enables interrupts.
pub fn sti() {
    x86_64::instructions::interrupts::enable();
}

/// Disables interrupts.
pub fn cli() {
    x86_64::instructions::interrupts::disable();
}

/// Stops the CPU for good: interrupts off, halt forever.
pub fn halt_forever() -> ! {
    loop {
        cli();
        x86_64::instructions::hlt();
    }
}
