//! The PC's CMOS real-time clock (a Motorola MC146818 as the PC/AT wired it): the
//! index port 0x70 and the data port 0x71, the date and time from the host's clock, and
//! the 128 bytes of CMOS RAM.
//!
//! An OS reads the clock for its wall time at boot (Linux's `mach_get_cmos_time` and
//! its `rtc_cmos` driver). Without one, port reads return all-ones, which is the
//! "update in progress" bit of register A: Linux waits it out thousands of times over
//! (about 40,000 port exits at boot here) and then calls the clock broken.
//!
//! What is modelled: registers 0x00-0x09 (seconds, minutes, hours, day of week, day,
//! month, year; the alarms are plain RAM) and 0x32 (century) in BCD or binary and 12-
//! or 24-hour form as register B says; register A never shows an update in progress
//! (the values are computed when read, so a read never sees a torn update); register
//! B's SET bit freezes the clock so the guest can write a new time, which holds as an
//! offset from the host's clock once SET is cleared; register C reads 0 (no interrupt
//! flags: periodic, alarm and update interrupts on IRQ 8 are not modelled) and register
//! D says the clock and RAM are valid. The index port's bit 7 (NMI disable) is
//! accepted and ignored. Times before 1970 or after 9999 are refused as a clock
//! without its battery would keep them: the previous offset stays.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Action, BusDevice};

/// The index port (the data port follows it).
pub const RTC_PORT: u16 = 0x70;
/// Ports the device spans.
pub const RTC_PORTS: u16 = 2;

const REG_SECONDS: usize = 0x00;
const REG_MINUTES: usize = 0x02;
const REG_HOURS: usize = 0x04;
const REG_WEEKDAY: usize = 0x06;
const REG_DAY: usize = 0x07;
const REG_MONTH: usize = 0x08;
const REG_YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const REG_CENTURY: usize = 0x32;

/// Register A: time base 32.768 kHz, periodic rate 1024 Hz (what firmware leaves);
/// bit 7 (update in progress) is never set.
const REG_A_DEFAULT: u8 = 0x26;
/// Register B bits.
const B_SET: u8 = 0x80;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
/// Register D: valid RAM and time.
const D_VALID: u8 = 0x80;
/// 12-hour mode's PM flag in the hours register.
const HOUR_PM: u8 = 0x80;

/// A date and time of day, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 (Sunday) to 7, as the MC146818 counts.
    weekday: u8,
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A civil date to days since 1970-01-01.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday (5 counting Sunday as 1).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    /// Seconds since the Unix epoch, if every field is in range.
    fn to_unix(self) -> Option<i64> {
        let days_in_month = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if self.year % 4 == 0 && (self.year % 100 != 0 || self.year % 400 == 0) => 29,
            2 => 28,
            _ => return None,
        };
        let valid = (1970..=9999).contains(&self.year)
            && (1..=days_in_month).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60;
        valid.then(|| {
            days_from_civil(self.year, self.month, self.day) * 86_400
                + i64::from(self.hour) * 3600
                + i64::from(self.minute) * 60
                + i64::from(self.second)
        })
    }
}

/// The host's clock, in seconds since the Unix epoch; a closure so tests can set it.
pub type Clock = Box<dyn Fn() -> i64 + Send>;

/// The CMOS RTC at ports 0x70-0x71.
pub struct CmosRtc {
    index: usize,
    ram: [u8; 128],
    /// Guest time minus host time, in seconds (what the guest set).
    offset: i64,
    /// The time the registers hold while register B's SET bit is on.
    frozen: Option<DateTime>,
    clock: Clock,
}

impl std::fmt::Debug for CmosRtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmosRtc")
            .field("index", &self.index)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Default for CmosRtc {
    fn default() -> Self {
        Self::new()
    }
}

impl CmosRtc {
    /// A clock on the host's wall time, in 24-hour BCD form as PC firmware leaves it.
    pub fn new() -> Self {
        Self::with_clock(Box::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        }))
    }

    /// A clock on `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A] = REG_A_DEFAULT;
        ram[REG_B] = B_24H;
        ram[REG_D] = D_VALID;
        Self {
            index: 0,
            ram,
            offset: 0,
            frozen: None,
            clock,
        }
    }

    fn now(&self) -> DateTime {
        self.frozen
            .unwrap_or_else(|| DateTime::from_unix((self.clock)().saturating_add(self.offset)))
    }

    /// `value` in the guest's format (BCD unless register B says binary).
    fn encode(&self, value: u8) -> u8 {
        if self.ram[REG_B] & B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    /// A register value in the guest's format, back to binary.
    fn decode(&self, raw: u8) -> u8 {
        if self.ram[REG_B] & B_BINARY != 0 {
            raw
        } else {
            (raw >> 4).wrapping_mul(10).wrapping_add(raw & 0x0f)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.ram[REG_B] & B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, raw: u8) -> u8 {
        if self.ram[REG_B] & B_24H != 0 {
            return self.decode(raw);
        }
        let h12 = self.decode(raw & !HOUR_PM) % 12;
        if raw & HOUR_PM != 0 { h12 + 12 } else { h12 }
    }

    fn read_register(&mut self, reg: usize) -> u8 {
        let t = self.now();
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hour(t.hour),
            REG_WEEKDAY => self.encode(t.weekday),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(t.year.div_euclid(100).clamp(0, 99) as u8),
            // Reading C clears its flags; none are ever raised.
            REG_C => 0,
            _ => self.ram[reg],
        }
    }

    fn write_register(&mut self, reg: usize, value: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY => {
                // The time changes only while SET freezes it (a guest sets the clock
                // that way); writes at other times change nothing, as the running
                // chip's next update would overwrite them.
                let Some(mut t) = self.frozen else {
                    return;
                };
                let v = self.decode(value);
                match reg {
                    REG_SECONDS => t.second = v,
                    REG_MINUTES => t.minute = v,
                    REG_HOURS => t.hour = self.decode_hour(value),
                    REG_WEEKDAY => t.weekday = v,
                    REG_DAY => t.day = v,
                    REG_MONTH => t.month = v,
                    REG_YEAR => t.year = t.year.div_euclid(100) * 100 + i64::from(v % 100),
                    _ => t.year = i64::from(v) * 100 + t.year.rem_euclid(100),
                }
                self.frozen = Some(t);
            }
            REG_B => {
                let was_set = self.ram[REG_B] & B_SET != 0;
                let set = value & B_SET != 0;
                if set && !was_set {
                    self.frozen = Some(self.now());
                } else if !set
                    && was_set
                    && let Some(t) = self.frozen.take()
                    && let Some(secs) = t.to_unix()
                {
                    self.offset = secs - (self.clock)();
                }
                self.ram[REG_B] = value;
            }
            // Update-in-progress (A bit 7), C and D are read-only.
            REG_A => self.ram[REG_A] = value & 0x7f,
            REG_C | REG_D => {}
            _ => self.ram[reg] = value,
        }
    }
}

impl BusDevice for CmosRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            // The index register is write-only; the bus floats.
            0 => 0xff,
            1 => self.read_register(self.index),
            _ => 0xff,
        };
        data.fill(0xff);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let Some(&value) = data.first() else {
            return Action::Continue;
        };
        match offset {
            // Bit 7 disables NMIs on a PC: there are none to disable here.
            0 => self.index = usize::from(value & 0x7f),
            1 => self.write_register(self.index, value),
            _ => {}
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// 2026-12-07 02:46:05 UTC, a Monday.
    const T0: i64 = 1_796_611_565;

    fn rtc_at(now: Arc<AtomicI64>) -> CmosRtc {
        CmosRtc::with_clock(Box::new(move || now.load(Ordering::SeqCst)))
    }

    fn reg(rtc: &mut CmosRtc, r: u8) -> u8 {
        rtc.write(0, &[r | 0x80]);
        let mut b = [0u8; 1];
        rtc.read(1, &mut b);
        b[0]
    }

    fn set(rtc: &mut CmosRtc, r: u8, v: u8) {
        rtc.write(0, &[r]);
        rtc.write(1, &[v]);
    }

    #[test]
    fn civil_dates_round_trip_across_leap_years_and_centuries() {
        for days in [-1, 0, 59, 60, 365, 10_957, 11_016, 20_429, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let t = DateTime::from_unix(T0);
        assert_eq!(
            (
                t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday
            ),
            (2026, 12, 7, 2, 46, 5, 2)
        );
        assert_eq!(t.to_unix(), Some(T0));
    }

    #[test]
    fn reads_the_host_time_in_bcd_24_hour_form_and_says_it_is_valid() {
        let now = Arc::new(AtomicI64::new(T0));
        let mut rtc = rtc_at(now.clone());
        let regs: Vec<u8> = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32]
            .iter()
            .map(|&r| reg(&mut rtc, r))
            .collect();
        assert_eq!(regs, [0x05, 0x46, 0x02, 0x02, 0x07, 0x12, 0x26, 0x20]);
        assert_eq!(reg(&mut rtc, 0x0a) & 0x80, 0, "never an update in progress");
        assert_eq!(reg(&mut rtc, 0x0d), 0x80);
        assert_eq!(reg(&mut rtc, 0x0c), 0);
        now.store(T0 + 3600 * 13, Ordering::SeqCst);
        assert_eq!(reg(&mut rtc, 0x04), 0x15, "the clock follows the host's");
        // The index port reads as a floating bus; other bytes are RAM.
        let mut b = [0u8; 2];
        rtc.read(0, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        set(&mut rtc, 0x40, 0x5a);
        assert_eq!(reg(&mut rtc, 0x40), 0x5a);
    }

    #[test]
    fn binary_and_12_hour_forms_follow_register_b() {
        let now = Arc::new(AtomicI64::new(T0 + 13 * 3600));
        let mut rtc = rtc_at(now);
        set(&mut rtc, 0x0b, B_BINARY);
        assert_eq!(reg(&mut rtc, 0x04), 3 | HOUR_PM, "15:46 is 3 PM");
        assert_eq!(reg(&mut rtc, 0x08), 12);
        set(&mut rtc, 0x0b, 0);
        assert_eq!(reg(&mut rtc, 0x04), 0x03 | HOUR_PM);
        set(&mut rtc, 0x0b, B_24H | B_BINARY);
        assert_eq!(reg(&mut rtc, 0x04), 15);
    }

    #[test]
    fn a_time_set_under_the_set_bit_holds_as_an_offset() {
        let now = Arc::new(AtomicI64::new(T0));
        let mut rtc = rtc_at(now.clone());
        set(&mut rtc, 0x0b, B_SET | B_24H);
        // Frozen: the host's clock moves, the registers do not.
        now.store(T0 + 100, Ordering::SeqCst);
        assert_eq!(reg(&mut rtc, 0x00), 0x05);
        // 2030-01-02 03:04:05
        for (r, v) in [
            (0x09, 0x30),
            (0x08, 0x01),
            (0x07, 0x02),
            (0x04, 0x03),
            (0x02, 0x04),
        ] {
            set(&mut rtc, r, v);
        }
        set(&mut rtc, 0x00, 0x05);
        set(&mut rtc, 0x0b, B_24H);
        now.store(T0 + 110, Ordering::SeqCst);
        assert_eq!(
            [0x09, 0x08, 0x07, 0x04, 0x02, 0x00].map(|r| reg(&mut rtc, r)),
            [0x30, 0x01, 0x02, 0x03, 0x04, 0x15],
            "10 s later"
        );
        // An impossible date (February 30th) is refused: the old offset stays.
        set(&mut rtc, 0x0b, B_SET | B_24H);
        set(&mut rtc, 0x08, 0x02);
        set(&mut rtc, 0x07, 0x30);
        set(&mut rtc, 0x0b, B_24H);
        assert_eq!(reg(&mut rtc, 0x08), 0x01);
        // Writes to the time while it runs change nothing.
        set(&mut rtc, 0x00, 0x59);
        assert_eq!(reg(&mut rtc, 0x00), 0x15);
    }

    #[test]
    fn hostile_accesses_change_nothing_they_should_not() {
        let mut rtc = CmosRtc::new();
        // Read-only registers and the update-in-progress bit.
        set(&mut rtc, 0x0d, 0);
        set(&mut rtc, 0x0a, 0xff);
        assert_eq!(reg(&mut rtc, 0x0d), 0x80);
        assert_eq!(reg(&mut rtc, 0x0a) & 0x80, 0);
        // Garbage BCD, empty and wide accesses, offsets beyond the two ports.
        set(&mut rtc, 0x0b, B_SET);
        set(&mut rtc, 0x00, 0xff);
        set(&mut rtc, 0x0b, 0);
        assert_eq!(rtc.write(1, &[]), Action::Continue);
        assert_eq!(rtc.write(7, &[1, 2, 3, 4]), Action::Continue);
        let mut wide = [0u8; 4];
        rtc.read(1, &mut wide);
        assert_eq!(wide[1..], [0xff; 3]);
        rtc.read(9, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        let mut none = [0u8; 0];
        rtc.read(1, &mut none);
    }
}
