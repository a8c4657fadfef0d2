//! Time from the TSC, calibrated once at boot.
//!
//! Sources, first usable wins: CPUID leaf 0x15 (TSC/crystal ratio with a crystal
//! frequency), the hypervisor timing leaf 0x40000010 (VMware/KVM convention: EAX = TSC
//! kHz), then the 8254 PIT: count TSC ticks while PIT channel 0 counts 10 ms from its
//! own crystal. Reads of the PIT are bounded, so a machine without one (Xen PVH has
//! none) fails calibration instead of hanging. On Xen, the pvclock in shared_info is
//! the right source; it arrives with the Xen interface.

use super::arch::{self, inb, outb};
use guest_kernel::time::{self as tm, TscClock};
use spin::Once;

static CLOCK: Once<TscClock> = Once::new();

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    Cpuid15,
    HypervisorLeaf,
    Pit,
}

/// Why calibration failed.
#[derive(Clone, Copy, Debug)]
pub enum CalibrationError {
    /// PIT channel 0 did not count (no PIT).
    PitNotCounting,
    /// The measured frequency is implausible.
    Implausible(u64),
}

impl core::fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::PitNotCounting => write!(f, "no TSC frequency leaf and the PIT is not counting"),
            Self::Implausible(khz) => write!(f, "measured TSC frequency {khz} kHz is implausible"),
        }
    }
}

/// The calibrated clock, once [`calibrate`] succeeded.
pub fn clock() -> Option<TscClock> {
    CLOCK.get().copied()
}

/// Nanoseconds since calibration.
pub fn now_ns() -> Option<u64> {
    clock().map(|c| c.ns_at(arch::rdtsc()))
}

/// Calibrates the TSC.
pub fn calibrate() -> Result<(u64, Source), CalibrationError> {
    let (khz, source) = if let Some(k) = from_cpuid_15() {
        (k, Source::Cpuid15)
    } else if let Some(k) = from_hypervisor_leaf() {
        (k, Source::HypervisorLeaf)
    } else {
        (from_pit()?, Source::Pit)
    };
    if !tm::plausible_tsc_khz(khz) {
        return Err(CalibrationError::Implausible(khz));
    }
    CLOCK.call_once(|| TscClock {
        khz,
        base: arch::rdtsc(),
    });
    Ok((khz, source))
}

fn from_cpuid_15() -> Option<u64> {
    let (max, ..) = arch::cpuid(0, 0);
    if max < 0x15 {
        return None;
    }
    let (den, num, crystal_hz, _) = arch::cpuid(0x15, 0);
    if den == 0 || num == 0 || crystal_hz == 0 {
        return None;
    }
    Some(u64::from(crystal_hz) * u64::from(num) / u64::from(den) / 1000)
}

fn from_hypervisor_leaf() -> Option<u64> {
    // Xen's time leaf names the guest TSC frequency (Xen PVH has no PIT).
    if let Some(khz) = super::xen::detect().and_then(|x| x.tsc_khz) {
        return Some(u64::from(khz));
    }
    let (_, _, ecx, _) = arch::cpuid(1, 0);
    if ecx & (1 << 31) == 0 {
        return None; // not running on a hypervisor
    }
    let (max, ..) = arch::cpuid(0x4000_0000, 0);
    if !(0x4000_0010..0x4001_0000).contains(&max) {
        return None;
    }
    let (khz, ..) = arch::cpuid(0x4000_0010, 0);
    (khz != 0).then_some(u64::from(khz))
}

const PIT_CH0: u16 = 0x40;
const PIT_CMD: u16 = 0x43;
/// Consecutive identical PIT reads after which the PIT is declared stopped. The PIT
/// ticks every 838 ns and a port read takes longer than that on any machine, so a
/// live PIT never repeats a value this often.
const PIT_STUCK_READS: u32 = 10_000;

fn pit_read() -> u16 {
    outb(PIT_CMD, 0x00); // latch channel 0
    let lo = inb(PIT_CH0);
    let hi = inb(PIT_CH0);
    u16::from_le_bytes([lo, hi])
}

fn from_pit() -> Result<u64, CalibrationError> {
    // Mask the legacy PICs: channel 0 would raise IRQ 0 at terminal count.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    outb(PIT_CMD, 0x30); // channel 0, lobyte/hibyte, mode 0, binary
    outb(PIT_CH0, 0xff);
    outb(PIT_CH0, 0xff);

    // Synchronise with a counter edge, then count.
    let wait_change = |from: u16| -> Result<u16, CalibrationError> {
        for _ in 0..PIT_STUCK_READS {
            let v = pit_read();
            if v != from {
                return Ok(v);
            }
        }
        Err(CalibrationError::PitNotCounting)
    };
    let first = wait_change(pit_read())?;
    let t0 = arch::rdtsc();
    let mut now = first;
    while tm::pit_elapsed(first, now) < tm::PIT_CALIBRATION_TICKS {
        now = wait_change(now)?;
    }
    let t1 = arch::rdtsc();
    let elapsed = u64::from(tm::pit_elapsed(first, now));
    tm::tsc_khz_from_pit(t1.wrapping_sub(t0), elapsed).ok_or(CalibrationError::Implausible(0))
}
