//! The local APIC: x2APIC through MSRs where the CPU has it (no MMIO exits), else
//! xAPIC through its MMIO page; one-shot timer in TSC-deadline mode where available,
//! else in one-shot count mode calibrated against the TSC.

use super::{arch, time};
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

const IA32_APIC_BASE: u32 = 0x1b;
const IA32_TSC_DEADLINE: u32 = 0x6e0;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;

// Register numbers as x2APIC MSR offsets (MSR 0x800 + n; xAPIC MMIO offset n << 4).
const REG_ID: u32 = 0x02;
const REG_VERSION: u32 = 0x03;
const REG_TPR: u32 = 0x08;
const REG_EOI: u32 = 0x0b;
const REG_SVR: u32 = 0x0f;
const REG_LVT_TIMER: u32 = 0x32;
const REG_LVT_LINT0: u32 = 0x35;
const REG_LVT_ERROR: u32 = 0x37;
const REG_TIMER_INIT: u32 = 0x38;
const REG_TIMER_CURRENT: u32 = 0x39;
const REG_TIMER_DIVIDE: u32 = 0x3e;

const LVT_MASKED: u32 = 1 << 16;
const LVT_TSC_DEADLINE: u32 = 0b10 << 17;

const MODE_NONE: u8 = 0;
const MODE_X2APIC: u8 = 1;
const MODE_XAPIC: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(MODE_NONE);
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0);
static TSC_DEADLINE: AtomicU8 = AtomicU8::new(0);
/// APIC timer ticks per millisecond (count mode only).
static TIMER_KHZ: AtomicU64 = AtomicU64::new(0);
/// This CPU's APIC id (the IOAPIC's destination).
static ID: AtomicU32 = AtomicU32::new(0);

fn read(reg: u32) -> u32 {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is enabled, so MSRs 0x800.. are the APIC registers.
        MODE_X2APIC => unsafe { arch::rdmsr(0x800 + reg) as u32 },
        MODE_XAPIC => {
            let addr = XAPIC_BASE.load(Ordering::Relaxed) + (u64::from(reg) << 4);
            // SAFETY: the xAPIC page is identity-mapped uncached (pvh-boot maps 3-4 GiB
            // with PCD|PWT) and `reg` is an APIC register offset.
            unsafe { core::ptr::read_volatile(addr as *const u32) }
        }
        _ => 0,
    }
}

fn write(reg: u32, value: u32) {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: as in `read`; APIC register writes affect only interrupt delivery.
        MODE_X2APIC => unsafe { arch::wrmsr(0x800 + reg, u64::from(value)) },
        MODE_XAPIC => {
            let addr = XAPIC_BASE.load(Ordering::Relaxed) + (u64::from(reg) << 4);
            // SAFETY: as in `read`.
            unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
        }
        _ => {}
    }
}

/// What [`init`] found.
pub struct ApicInfo {
    pub x2apic: bool,
    pub id: u32,
    pub version: u32,
    pub tsc_deadline: bool,
}

/// Enables the local APIC, masks LINT0 (the legacy PIC is not used), installs the
/// spurious and error vectors. `None` if the CPU reports no APIC.
pub fn init() -> Option<ApicInfo> {
    let (_, _, ecx, edx) = arch::cpuid(1, 0);
    if edx & (1 << 9) == 0 {
        return None;
    }
    let x2apic = ecx & (1 << 21) != 0;
    let tsc_deadline = ecx & (1 << 24) != 0;
    // SAFETY: CPUID says an APIC exists, so IA32_APIC_BASE exists.
    let base = unsafe { arch::rdmsr(IA32_APIC_BASE) };
    if x2apic {
        // xAPIC must be enabled before x2APIC (SDM 10.12.5: EN then EXTD).
        // SAFETY: setting EN and EXTD is the documented x2APIC enable sequence.
        unsafe {
            arch::wrmsr(IA32_APIC_BASE, base | APIC_BASE_ENABLE);
            arch::wrmsr(IA32_APIC_BASE, base | APIC_BASE_ENABLE | APIC_BASE_X2APIC);
        }
        MODE.store(MODE_X2APIC, Ordering::Relaxed);
    } else {
        // SAFETY: enabling the xAPIC at its current base.
        unsafe { arch::wrmsr(IA32_APIC_BASE, base | APIC_BASE_ENABLE) };
        XAPIC_BASE.store(base & 0x000f_ffff_ffff_f000, Ordering::Relaxed);
        MODE.store(MODE_XAPIC, Ordering::Relaxed);
    }
    TSC_DEADLINE.store(u8::from(tsc_deadline), Ordering::Relaxed);
    write(REG_TPR, 0);
    write(REG_LVT_LINT0, LVT_MASKED);
    write(
        REG_LVT_ERROR,
        u32::from(super::interrupts::APIC_ERROR_VECTOR),
    );
    write(REG_LVT_TIMER, LVT_MASKED);
    write(
        REG_SVR,
        0x100 | u32::from(super::interrupts::SPURIOUS_VECTOR),
    );
    let id = if x2apic {
        read(REG_ID)
    } else {
        read(REG_ID) >> 24
    };
    ID.store(id, Ordering::Relaxed);
    Some(ApicInfo {
        x2apic,
        id,
        version: read(REG_VERSION) & 0xff,
        tsc_deadline,
    })
}

/// This CPU's APIC id (0 before [`init`]).
pub fn id() -> u32 {
    ID.load(Ordering::Relaxed)
}

/// Signals end of interrupt.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// 1 ms calibration measurements of the count-mode timer.
const CALIBRATION_ROUNDS: u32 = 3;

/// Calibrates the APIC timer's count mode against the TSC (not needed with
/// TSC-deadline). Returns APIC timer ticks per millisecond.
pub fn calibrate_timer() -> Option<u64> {
    if TSC_DEADLINE.load(Ordering::Relaxed) != 0 {
        return None;
    }
    write(REG_TIMER_DIVIDE, 0b1011); // divide by 1
    write(REG_LVT_TIMER, LVT_MASKED);
    let span = time::clock()?.ticks_for_ns(1_000_000);
    // The fastest of a few 1 ms measurements: an emulated APIC (Xen's, under a busy
    // TCG host) was seen to count short once, which made a 1 ms one-shot fire after
    // 0.68 ms. A rate measured too high only makes timers fire late, which waits
    // tolerate; too low makes them fire early, which they must never do.
    let mut counted = 0;
    for _ in 0..CALIBRATION_ROUNDS {
        write(REG_TIMER_INIT, u32::MAX);
        let start = arch::rdtsc();
        while arch::rdtsc().wrapping_sub(start) < span {
            core::hint::spin_loop();
        }
        counted = counted.max(u64::from(u32::MAX - read(REG_TIMER_CURRENT)));
    }
    write(REG_TIMER_INIT, 0);
    let khz = counted.max(1);
    TIMER_KHZ.store(khz, Ordering::Relaxed);
    Some(khz)
}

/// Arms a one-shot timer interrupt on `vector` after `ns` nanoseconds.
pub fn oneshot(vector: u8, ns: u64) -> Result<(), &'static str> {
    let clock = time::clock().ok_or("TSC not calibrated")?;
    if TSC_DEADLINE.load(Ordering::Relaxed) != 0 {
        write(REG_LVT_TIMER, u32::from(vector) | LVT_TSC_DEADLINE);
        let deadline = arch::rdtsc().saturating_add(clock.ticks_for_ns(ns)).max(1);
        // SAFETY: TSC-deadline mode is selected in the LVT; the MSR exists (CPUID).
        unsafe { arch::wrmsr(IA32_TSC_DEADLINE, deadline) };
        return Ok(());
    }
    let khz = TIMER_KHZ.load(Ordering::Relaxed);
    if khz == 0 {
        return Err("APIC timer not calibrated");
    }
    let count = (u128::from(ns) * u128::from(khz))
        .div_ceil(1_000_000)
        .clamp(1, u128::from(u32::MAX));
    write(REG_TIMER_DIVIDE, 0b1011);
    write(REG_LVT_TIMER, u32::from(vector));
    write(REG_TIMER_INIT, count as u32);
    Ok(())
}
