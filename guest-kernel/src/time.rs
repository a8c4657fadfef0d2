//! Time arithmetic: TSC calibration against the 8254 PIT and tick/nanosecond
//! conversion. The hardware access lives in the kernel binary; this is the math.
//!
//! Calibration measures TSC ticks over a span of PIT counts, the PIT running at
//! 1.193182 MHz from its own crystal, so the result does not depend on how fast the
//! (possibly emulated) CPU executes.

/// Input clock of the 8254 PIT.
pub const PIT_HZ: u64 = 1_193_182;

/// PIT counts that the calibration waits for: 10 ms.
pub const PIT_CALIBRATION_TICKS: u16 = 11_932;

/// Elapsed counts of a down-counting 16-bit PIT counter between two reads.
pub fn pit_elapsed(earlier: u16, later: u16) -> u16 {
    earlier.wrapping_sub(later)
}

/// TSC frequency in kHz from `tsc_ticks` measured over `pit_ticks` PIT counts.
pub fn tsc_khz_from_pit(tsc_ticks: u64, pit_ticks: u64) -> Option<u64> {
    if pit_ticks == 0 {
        return None;
    }
    let khz = u128::from(tsc_ticks) * u128::from(PIT_HZ) / u128::from(pit_ticks) / 1000;
    u64::try_from(khz).ok().filter(|&k| k > 0)
}

/// Whether a TSC frequency is believable (1 MHz .. 100 GHz).
pub fn plausible_tsc_khz(khz: u64) -> bool {
    (1_000..=100_000_000).contains(&khz)
}

/// A calibrated TSC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscClock {
    /// TSC ticks per millisecond.
    pub khz: u64,
    /// TSC value taken as time zero.
    pub base: u64,
}

impl TscClock {
    /// Nanoseconds from `base` to `tsc` (0 if `tsc` is earlier).
    pub fn ns_at(&self, tsc: u64) -> u64 {
        let d = u128::from(tsc.saturating_sub(self.base));
        u64::try_from(d * 1_000_000 / u128::from(self.khz)).unwrap_or(u64::MAX)
    }

    /// TSC ticks spanning `ns` nanoseconds (rounded up).
    pub fn ticks_for_ns(&self, ns: u64) -> u64 {
        let t = (u128::from(ns) * u128::from(self.khz)).div_ceil(1_000_000);
        u64::try_from(t).unwrap_or(u64::MAX)
    }
}

/// The safety-net poll of a waiting driver (events can be lost: issue #6): how long a
/// wait may last before the driver is polled without an event.
///
/// While events come or polls find work, the tick is [`RecoveryTick::BASE_NS`], the
/// bound on how long a lost event can stall busy I/O. Each tick that ends a wait with
/// nothing to do doubles it, up to [`RecoveryTick::IDLE_MAX_NS`]: an idle guest does
/// not wake (and exit to its hypervisor) 50 times a second only to find nothing, and
/// the first event or found work brings the tick back down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryTick {
    tick_ns: u64,
}

impl Default for RecoveryTick {
    fn default() -> Self {
        Self::new()
    }
}

impl RecoveryTick {
    /// The tick while there is work: 20 ms.
    pub const BASE_NS: u64 = 20_000_000;
    /// The longest tick of an idle driver: 1 s.
    pub const IDLE_MAX_NS: u64 = 1_000_000_000;

    /// A tick at [`Self::BASE_NS`].
    pub const fn new() -> Self {
        RecoveryTick {
            tick_ns: Self::BASE_NS,
        }
    }

    /// How long the next wait may last without an event.
    pub fn ns(&self) -> u64 {
        self.tick_ns
    }

    /// After a wait and the poll that followed it: `by_deadline` if the wait ended at
    /// its deadline (no event), `found_work` if the poll found anything to do.
    pub fn update(&mut self, by_deadline: bool, found_work: bool) {
        self.tick_ns = if by_deadline && !found_work {
            self.tick_ns.saturating_mul(2).min(Self::IDLE_MAX_NS)
        } else {
            Self::BASE_NS
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_recovery_tick_backs_off_and_work_resets_it() {
        let mut t = RecoveryTick::new();
        assert_eq!(t.ns(), RecoveryTick::BASE_NS);
        let mut seen = alloc::vec::Vec::new();
        for _ in 0..10 {
            t.update(true, false);
            seen.push(t.ns() / 1_000_000);
        }
        assert_eq!(seen, [40, 80, 160, 320, 640, 1000, 1000, 1000, 1000, 1000]);
        // An event resets it, and so does a deadline whose poll found work (a lost
        // event: the next one may be lost too).
        t.update(false, false);
        assert_eq!(t.ns(), RecoveryTick::BASE_NS);
        t.update(true, false);
        t.update(true, true);
        assert_eq!(t.ns(), RecoveryTick::BASE_NS);
        t.update(false, true);
        assert_eq!(t.ns(), RecoveryTick::BASE_NS);
    }

    #[test]
    fn pit_elapsed_handles_wrap() {
        assert_eq!(pit_elapsed(0xffff, 0xfff0), 0xf);
        assert_eq!(pit_elapsed(0x0005, 0xfffb), 10);
    }

    #[test]
    fn calibration_math() {
        // A 2.5 GHz TSC over 10 ms of PIT counts.
        let pit = u64::from(PIT_CALIBRATION_TICKS);
        let tsc = 2_500_000_000u64 * pit / PIT_HZ;
        let khz = tsc_khz_from_pit(tsc, pit).unwrap();
        assert!((2_499_000..=2_500_000).contains(&khz), "{khz}");
        assert_eq!(tsc_khz_from_pit(1, 0), None);
        assert_eq!(tsc_khz_from_pit(0, 10), None);
        assert!(plausible_tsc_khz(khz));
        assert!(!plausible_tsc_khz(10));
    }

    #[test]
    fn conversions_round_trip() {
        let c = TscClock {
            khz: 3_000_000,
            base: 1000,
        };
        assert_eq!(c.ns_at(1000 + 3_000_000), 1_000_000);
        assert_eq!(c.ns_at(0), 0);
        assert_eq!(c.ticks_for_ns(1_000_000), 3_000_000);
        assert_eq!(c.ticks_for_ns(1), 3);
        assert_eq!(c.ticks_for_ns(u64::MAX), u64::MAX);
        let slow = TscClock { khz: 1, base: 0 };
        assert_eq!(slow.ns_at(u64::MAX), u64::MAX);
    }
}
