//! The Xen PV clock: `struct vcpu_time_info` and the wallclock fields of `struct
//! shared_info` (`xen/include/public/xen.h`), both halves.
//!
//! * [`TscScale`] turns a TSC frequency into the `tsc_to_system_mul`/`tsc_shift` pair
//!   exactly as Xen's `set_time_scale()` (`xen/arch/x86/time.c`) does, and
//!   [`scale_delta`] applies it with a 128-bit intermediate.
//! * The guest reads its vCPU's time record with the version protocol of `xen.h`
//!   ("Updates to the following values are preceded and followed by an increment of
//!   'version'. The guest can therefore detect updates by looking for changes to
//!   'version'. If the least-significant bit of the version number is set then an
//!   update is in progress and the guest must wait to read a consistent set of
//!   values"): [`read_time_info`], [`system_time_now`].
//! * The hypervisor side (the shim) writes it the way Xen's
//!   `__update_vcpu_system_time()` does: [`write_time_info`].
//! * The wallclock (`wc_version`, `wc_sec`, `wc_nsec`, `wc_sec_hi`) uses the same
//!   protocol: [`read_wallclock`], [`write_wallclock`]. It is the wall time at system
//!   time 0, so "now" is the wallclock plus the current system time
//!   ([`WallClock::unix_ns_at`]).
//!
//! The seqlock is written in Rust's memory model (Boehm, "Can seqlocks get along with
//! programming language memory models?"): every field is accessed atomically, the
//! reader uses an acquire load of `version`, relaxed field loads, an acquire fence,
//! and a second relaxed load of `version`; the writer a relaxed odd `version`, a
//! release fence, relaxed field stores and a release store of the even `version`. On
//! x86 all of these are plain moves; Xen's `smp_wmb()`/`smp_rmb()` are compiler
//! barriers there.
//!
//! Neither side trusts the other: the reader gives up after a bounded number of
//! attempts instead of spinning forever on an odd `version`, and the writer derives
//! its versions from the value it wrote, not from what the guest may have scribbled.

use core::fmt;
use core::mem::offset_of;
use core::sync::atomic::{Ordering, fence};

use crate::abi::xen::{SharedInfo, VcpuInfo, VcpuTimeInfo, XEN_LEGACY_MAX_VCPUS};
use crate::shmem::SharedMemory;

/// Nanoseconds per second (`MILLISECS(1000)` in Xen).
pub const NSEC_PER_SEC: u64 = 1_000_000_000;

/// How many times [`read_time_info`] and [`read_wallclock`] look for a consistent
/// record before giving up. An update by a well-behaved writer takes well under a
/// microsecond; this bound (a few milliseconds of spinning) only stops a writer that
/// leaves `version` odd, or a host thread descheduled mid-update, from hanging the
/// guest forever.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 1 << 20;

/// Errors of the PV clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvclockError {
    /// A TSC frequency of zero (or one too large to express in Hz) has no scale.
    BadFrequency,
    /// The vCPU has no `vcpu_info` slot in `shared_info` (only the first
    /// `XEN_LEGACY_MAX_VCPUS` do).
    BadVcpu(u32),
    /// The shared memory is too small to be a `shared_info` page.
    SharedInfoTooSmall(usize),
    /// The record was being updated on every attempt: the writer never finished.
    Unstable,
    /// The wallclock's nanoseconds are not below one second.
    BadWallclock,
}

impl fmt::Display for PvclockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadFrequency => write!(f, "TSC frequency out of range"),
            Self::BadVcpu(v) => write!(f, "vCPU {v} has no vcpu_info in shared_info"),
            Self::SharedInfoTooSmall(len) => {
                write!(f, "{len} bytes is too small for shared_info")
            }
            Self::Unstable => write!(f, "time record never stopped changing"),
            Self::BadWallclock => write!(f, "wallclock nanoseconds out of range"),
        }
    }
}

impl core::error::Error for PvclockError {}

/// A TSC-to-nanoseconds conversion in Xen's form:
/// `ns = ((delta << shift) * mul) >> 32`, shifting right when `shift` is negative.
///
/// `mul` is a 0.32 fixed-point fraction, always at least one half, so the scale keeps
/// 31 significant bits: the rounding error is below 2^-31 (0.0005 ppm) relative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TscScale {
    /// `tsc_to_system_mul`.
    pub mul: u32,
    /// `tsc_shift`.
    pub shift: i8,
}

impl TscScale {
    /// The scale for a TSC running at `hz` ticks per second, computed as Xen's
    /// `set_time_scale()` does: halve the frequency until it is at most 2 GHz (each
    /// halving is a shift of -1), double it until it is above 1 GHz (+1 each), then
    /// `mul = floor(10^9 * 2^32 / scaled_frequency)`, a fraction in [1/2, 1).
    pub fn from_hz(hz: u64) -> Result<Self, PvclockError> {
        if hz == 0 {
            return Err(PvclockError::BadFrequency);
        }
        let mut tps = hz;
        let mut shift: i32 = 0;
        while tps > 2 * NSEC_PER_SEC {
            tps >>= 1;
            shift -= 1;
        }
        while tps <= NSEC_PER_SEC {
            tps <<= 1;
            shift += 1;
        }
        // Now 10^9 < tps <= 2 * 10^9, so the quotient is below 2^32 (Xen's
        // `div_frac(MILLISECS(1000), tps32)` asserts dividend < divisor).
        let mul = (u128::from(NSEC_PER_SEC) << 32) / u128::from(tps);
        Ok(Self {
            mul: u32::try_from(mul).map_err(|_| PvclockError::BadFrequency)?,
            // -34 <= shift <= 30 for any u64 frequency (u64::MAX needs 34 halvings,
            // 1 Hz 30 doublings), so this always fits.
            shift: i8::try_from(shift).map_err(|_| PvclockError::BadFrequency)?,
        })
    }

    /// The scale for a TSC of `khz` kHz (Xen keeps guest TSC rates in kHz and calls
    /// `set_time_scale(..., khz * 1000)`).
    pub fn from_khz(khz: u64) -> Result<Self, PvclockError> {
        Self::from_hz(khz.checked_mul(1000).ok_or(PvclockError::BadFrequency)?)
    }

    /// The scale a time record carries.
    pub fn of(info: &VcpuTimeInfo) -> Self {
        Self {
            mul: info.tsc_to_system_mul,
            shift: info.tsc_shift,
        }
    }

    /// The TSC frequency in Hz the scale stands for, by the header's formula
    /// `((10^9 << 32) / tsc_to_system_mul) >> tsc_shift` (a guest on Xen learns its
    /// TSC rate this way); `None` for a zero `mul` or a result beyond `u64`.
    pub fn tsc_hz(&self) -> Option<u64> {
        if self.mul == 0 {
            return None;
        }
        let base = (u128::from(NSEC_PER_SEC) << 32) / u128::from(self.mul);
        let hz = if self.shift >= 0 {
            base.checked_shr(u32::from(self.shift.unsigned_abs()))
                .unwrap_or(0)
        } else {
            let up = u32::from(self.shift.unsigned_abs());
            if base.leading_zeros() < up {
                return None;
            }
            base << up
        };
        u64::try_from(hz).ok()
    }

    /// Nanoseconds in `delta` TSC ticks ([`scale_delta`]).
    pub fn ticks_to_ns(&self, delta: u64) -> u64 {
        scale_delta(delta, self.mul, self.shift)
    }

    /// A time record (version 0; the writer sets it) saying that the system time was
    /// `system_time` ns at TSC `tsc_timestamp`, with this scale.
    pub fn time_info(&self, tsc_timestamp: u64, system_time: u64, flags: u8) -> VcpuTimeInfo {
        VcpuTimeInfo {
            tsc_timestamp,
            system_time,
            tsc_to_system_mul: self.mul,
            tsc_shift: self.shift,
            flags,
            ..VcpuTimeInfo::default()
        }
    }
}

/// The guest TSC frequency in kHz from Xen's CPUID time leaf (`arch-x86/cpuid.h`,
/// leaf base+3): from subleaf 1's `mul`/`shift` (the TSC-to-ns scale Xen itself uses
/// for the guest's time records) when `sub1_mul` is non-zero, else subleaf 0's ECX
/// ("guest TSC frequency in kHz"); `None` when neither gives a frequency.
///
/// Subleaf 1 comes first because one implementation gets subleaf 0 wrong: under QEMU's
/// Xen emulation (KVM_CAP_XEN_HVM) KVM writes the scale into the leaf's only entry, so
/// subleaf 0 ECX reads the multiplier (3303823538 "kHz" for a 2.6 GHz TSC).
pub fn tsc_khz_from_cpuid(sub0_ecx: u32, sub1_mul: u32, sub1_shift: u32) -> Option<u32> {
    if sub1_mul != 0 {
        let scale = TscScale {
            mul: sub1_mul,
            shift: sub1_shift as u8 as i8,
        };
        // Nearest kHz: the scale's own rounding leaves a few Hz off.
        let khz = scale.tsc_hz().map(|hz| (hz + 500) / 1000)?;
        return u32::try_from(khz).ok().filter(|&k| k != 0);
    }
    (sub0_ecx != 0).then_some(sub0_ecx)
}

/// Xen's `scale_delta()`: `((delta << shift) * mul) >> 32` (`>> -shift` when `shift` is
/// negative), with a 128-bit intermediate so that no delta overflows; a result beyond
/// `u64::MAX` ns (584 years) saturates.
///
/// For a negative shift the low bits of `delta` are dropped before the multiply, as Xen
/// and Linux do, so guest and hypervisor agree to the nanosecond. Any `shift` is
/// accepted (the value comes from the other side): one of -64 or less leaves 0.
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let delta = if shift < 0 {
        delta
            .checked_shr(u32::from(shift.unsigned_abs()))
            .unwrap_or(0)
    } else {
        delta
    };
    // Below 2^96: fits with room to spare.
    let product = u128::from(delta) * u128::from(mul);
    let ns = if shift <= 0 {
        product >> 32
    } else {
        let up = u32::from(shift.unsigned_abs());
        if up <= 32 {
            product >> (32 - up)
        } else if product.leading_zeros() >= up - 32 {
            product << (up - 32)
        } else {
            u128::MAX
        }
    };
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Byte offset of `vcpu`'s `vcpu_time_info` in `shared_info`.
pub const fn time_info_offset(vcpu: usize) -> usize {
    offset_of!(SharedInfo, vcpu_info)
        + vcpu * core::mem::size_of::<VcpuInfo>()
        + offset_of!(VcpuInfo, time)
}

/// Byte offset of vCPU 0's `vcpu_time_info` in `shared_info` (32).
pub const VCPU0_TIME_INFO_OFFSET: usize = time_info_offset(0);

const VERSION: usize = offset_of!(VcpuTimeInfo, version);
const PAD0: usize = offset_of!(VcpuTimeInfo, pad0);
const TSC_TIMESTAMP: usize = offset_of!(VcpuTimeInfo, tsc_timestamp);
const SYSTEM_TIME: usize = offset_of!(VcpuTimeInfo, system_time);
/// `tsc_to_system_mul`, `tsc_shift`, `flags` and `pad1` share one 8-byte word.
const SCALE_WORD: usize = offset_of!(VcpuTimeInfo, tsc_to_system_mul);

const WC_VERSION: usize = offset_of!(SharedInfo, wc_version);
const WC_SEC: usize = offset_of!(SharedInfo, wc_sec);
const WC_NSEC: usize = offset_of!(SharedInfo, wc_nsec);
const WC_SEC_HI: usize = offset_of!(SharedInfo, wc_sec_hi);

// The word-wise access below relies on the header's layout: 8-aligned 64-bit fields,
// and the last four fields packed into the fourth word.
const _: () = assert!(VCPU0_TIME_INFO_OFFSET == 32);
const _: () = assert!(VCPU0_TIME_INFO_OFFSET.is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<VcpuInfo>().is_multiple_of(8));
const _: () = assert!(TSC_TIMESTAMP == 8 && SYSTEM_TIME == 16 && SCALE_WORD == 24);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_shift) == 28);
const _: () = assert!(offset_of!(VcpuTimeInfo, flags) == 29);
const _: () = assert!(offset_of!(VcpuTimeInfo, pad1) == 30);
const _: () = assert!(WC_SEC == WC_VERSION + 4 && WC_NSEC == WC_VERSION + 8);
const _: () = assert!(WC_SEC_HI == WC_VERSION + 12);
const _: () = assert!(crate::evtchn::SharedInfoAbi::Long.wallclock_offset() == WC_VERSION);
const _: () = assert!(crate::evtchn::SharedInfoAbi::Long.wc_sec_hi_offset() == WC_SEC_HI);
// The 32-bit layout (Xen's `compat_shared_info`): 32 words of PENDING at 0x800, of MASK
// at 0x880, the wallclock at 0x900, `arch` at 0x90c with `wc_sec_hi` its seventh word.
const _: () = assert!(crate::evtchn::SharedInfoAbi::Compat.wallclock_offset() == 0x900);

/// Checks that `mem` holds a `shared_info` and returns `vcpu`'s time-record offset.
fn time_base<M: SharedMemory + ?Sized>(mem: &M, vcpu: u32) -> Result<usize, PvclockError> {
    if mem.len() < SharedInfo::SIZE {
        return Err(PvclockError::SharedInfoTooSmall(mem.len()));
    }
    match usize::try_from(vcpu) {
        Ok(v) if v < XEN_LEGACY_MAX_VCPUS => Ok(time_info_offset(v)),
        _ => Err(PvclockError::BadVcpu(vcpu)),
    }
}

/// Reads the record at `base` under the version protocol, calling `inside` between
/// the two reads of `version` (so that a TSC read there belongs to the same epoch as
/// the record). Returns the record and what `inside` returned on the good attempt.
fn read_consistent<M: SharedMemory + ?Sized, T>(
    mem: &M,
    base: usize,
    max_attempts: u32,
    mut inside: impl FnMut() -> T,
) -> Result<(VcpuTimeInfo, T), PvclockError> {
    for _ in 0..max_attempts {
        let version = mem.load_u32(base + VERSION, Ordering::Acquire);
        if version & 1 == 0 {
            let tsc_timestamp = mem.load_u64(base + TSC_TIMESTAMP, Ordering::Relaxed);
            let system_time = mem.load_u64(base + SYSTEM_TIME, Ordering::Relaxed);
            let scale = mem
                .load_u64(base + SCALE_WORD, Ordering::Relaxed)
                .to_le_bytes();
            let extra = inside();
            // Orders the loads above before the re-check of `version` (Linux's
            // `pvclock_read_retry`: "Make sure that the version is re-read after the
            // data").
            fence(Ordering::Acquire);
            if mem.load_u32(base + VERSION, Ordering::Relaxed) == version {
                let info = VcpuTimeInfo {
                    version,
                    pad0: 0,
                    tsc_timestamp,
                    system_time,
                    tsc_to_system_mul: u32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]),
                    tsc_shift: i8::from_le_bytes([scale[4]]),
                    flags: scale[5],
                    pad1: [scale[6], scale[7]],
                };
                return Ok((info, extra));
            }
        }
        core::hint::spin_loop();
    }
    Err(PvclockError::Unstable)
}

/// A consistent copy of `vcpu`'s time record from the `shared_info` page `mem`, trying
/// at most [`DEFAULT_MAX_ATTEMPTS`] times.
pub fn read_time_info<M: SharedMemory + ?Sized>(
    mem: &M,
    vcpu: u32,
) -> Result<VcpuTimeInfo, PvclockError> {
    read_time_info_bounded(mem, vcpu, DEFAULT_MAX_ATTEMPTS)
}

/// [`read_time_info`] with an explicit bound on the attempts.
pub fn read_time_info_bounded<M: SharedMemory + ?Sized>(
    mem: &M,
    vcpu: u32,
    max_attempts: u32,
) -> Result<VcpuTimeInfo, PvclockError> {
    let base = time_base(mem, vcpu)?;
    read_consistent(mem, base, max_attempts, || ()).map(|(info, ())| info)
}

/// System time in ns at TSC value `tsc` by `info`: `system_time` plus the scaled ticks
/// `tsc - tsc_timestamp`.
///
/// The difference is taken modulo 2^64, as Xen and Linux (`__pvclock_read_cycles`)
/// take it: `tsc_timestamp` is in the guest's TSC, which for an HVM/PVH domain is the
/// host's TSC plus a (usually negative) offset, so a record stamped before the domain's
/// TSC passed zero carries a "negative" timestamp, e.g. 2^64 - 506842270 a few hundred
/// milliseconds after the domain was built (seen on Xen 4.17, until its next 1 s time
/// calibration). Read as a signed difference, a `tsc` slightly before the timestamp
/// (a record a hostile or sloppy writer stamped in the future) extrapolates backwards
/// instead of jumping 2^64 ticks ahead; the result saturates at 0.
pub fn system_time_at(info: &VcpuTimeInfo, tsc: u64) -> u64 {
    let delta = tsc.wrapping_sub(info.tsc_timestamp) as i64;
    let ns = scale_delta(delta.unsigned_abs(), info.tsc_to_system_mul, info.tsc_shift);
    if delta >= 0 {
        info.system_time.wrapping_add(ns)
    } else {
        info.system_time.saturating_sub(ns)
    }
}

/// The current system time in ns of `vcpu` (Xen's "system time": ns since the
/// domain's clock started). `read_tsc` reads this vCPU's TSC (`rdtsc`, ordered); it is
/// called inside the version protocol, as Linux's `pvclock_clocksource_read` does, so
/// the TSC and the record it is scaled by belong together.
pub fn system_time_now<M: SharedMemory + ?Sized>(
    mem: &M,
    vcpu: u32,
    read_tsc: impl FnMut() -> u64,
) -> Result<u64, PvclockError> {
    read_now(mem, vcpu, read_tsc).map(|(now, _)| now)
}

/// The system time now and the record's flags.
fn read_now<M: SharedMemory + ?Sized>(
    mem: &M,
    vcpu: u32,
    read_tsc: impl FnMut() -> u64,
) -> Result<(u64, u8), PvclockError> {
    let base = time_base(mem, vcpu)?;
    let (info, tsc) = read_consistent(mem, base, DEFAULT_MAX_ATTEMPTS, read_tsc)?;
    Ok((system_time_at(&info, tsc), info.flags))
}

/// A clock that never goes back: the last time handed out.
///
/// When the hypervisor does not set `XEN_PVCLOCK_TSC_STABLE_BIT`, each physical CPU
/// has its own time record, and a vCPU that moves between them can see system time
/// step back by milliseconds (measured on Xen 4.17 under QEMU TCG: -2.5 ms). Linux's
/// `pvclock_clocksource_read` then returns the larger of the reading and the last value
/// it returned; [`MonotonicClock::system_time_now`] does the same.
#[derive(Debug, Default)]
pub struct MonotonicClock {
    last: core::sync::atomic::AtomicU64,
}

impl MonotonicClock {
    /// A clock that has handed out nothing yet.
    pub const fn new() -> Self {
        Self {
            last: core::sync::atomic::AtomicU64::new(0),
        }
    }

    /// [`system_time_now`], clamped to never be less than an earlier result unless the
    /// record says the TSC is stable across CPUs (then readings are monotonic anyway).
    pub fn system_time_now<M: SharedMemory + ?Sized>(
        &self,
        mem: &M,
        vcpu: u32,
        read_tsc: impl FnMut() -> u64,
    ) -> Result<u64, PvclockError> {
        let (now, flags) = read_now(mem, vcpu, read_tsc)?;
        if flags & crate::abi::xen::XEN_PVCLOCK_TSC_STABLE_BIT != 0 {
            return Ok(now);
        }
        Ok(self.clamp(now))
    }

    /// `now`, or the latest earlier result if that is larger; records the result.
    pub fn clamp(&self, now: u64) -> u64 {
        let prev = self.last.fetch_max(now, Ordering::AcqRel);
        prev.max(now)
    }
}

/// Hypervisor side: publishes `info` (all fields but `version`) as `vcpu`'s time record
/// in the guest's `shared_info` `mem`, as Xen's `__update_vcpu_system_time()` does:
/// `version` made odd, a write barrier, the fields, a write barrier, `version` made
/// even. Returns the new (even) version.
///
/// The odd value is `(v + 1) | 1` from whatever the guest left in `version`
/// (`version_update_begin`), and the even one is that plus one, computed here rather
/// than re-read, so a guest writing `version` concurrently cannot leave it odd.
pub fn write_time_info<M: SharedMemory + ?Sized>(
    mem: &M,
    vcpu: u32,
    info: &VcpuTimeInfo,
) -> Result<u32, PvclockError> {
    let base = time_base(mem, vcpu)?;
    Ok(write_time_info_at(mem, base, info))
}

/// [`write_time_info`] into a `vcpu_time_info` at byte `base` of `mem` (a `vcpu_info`
/// the guest placed with `VCPUOP_register_vcpu_info`, whose `time` is at offset 32).
/// The caller checks that the record (32 bytes, 8-aligned) lies inside `mem`.
pub fn write_time_info_at<M: SharedMemory + ?Sized>(
    mem: &M,
    base: usize,
    info: &VcpuTimeInfo,
) -> u32 {
    let begin = mem
        .load_u32(base + VERSION, Ordering::Relaxed)
        .wrapping_add(1)
        | 1;
    mem.store_u32(base + VERSION, begin, Ordering::Relaxed);
    // "1. Update guest kernel version. smp_wmb();": a reader that sees any of the new
    // fields below also sees the odd version on its re-check.
    fence(Ordering::Release);
    mem.store_u32(base + PAD0, 0, Ordering::Relaxed);
    mem.store_u64(base + TSC_TIMESTAMP, info.tsc_timestamp, Ordering::Relaxed);
    mem.store_u64(base + SYSTEM_TIME, info.system_time, Ordering::Relaxed);
    let mut scale = [0u8; 8];
    scale[..4].copy_from_slice(&info.tsc_to_system_mul.to_le_bytes());
    scale[4] = info.tsc_shift.to_le_bytes()[0];
    scale[5] = info.flags;
    scale[6..].copy_from_slice(&info.pad1);
    mem.store_u64(
        base + SCALE_WORD,
        u64::from_le_bytes(scale),
        Ordering::Relaxed,
    );
    // "2. Update all other guest kernel fields. smp_wmb(); 3. Update guest kernel
    // version.": the release store publishes the fields with the even version.
    let end = begin.wrapping_add(1);
    mem.store_u32(base + VERSION, end, Ordering::Release);
    end
}

/// The wallclock: the wall time (seconds and nanoseconds since the Unix epoch) at which
/// the domain's system time was zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WallClock {
    /// Seconds: `wc_sec_hi << 32 | wc_sec`.
    pub sec: u64,
    /// Nanoseconds, below 10^9.
    pub nsec: u32,
}

impl WallClock {
    /// Nanoseconds since the Unix epoch when the system time is `system_time_ns`, or
    /// `None` past the year 2554 (where a `u64` of ns ends).
    pub fn unix_ns_at(&self, system_time_ns: u64) -> Option<u64> {
        self.sec
            .checked_mul(NSEC_PER_SEC)?
            .checked_add(u64::from(self.nsec))?
            .checked_add(system_time_ns)
    }
}

/// Reads the wallclock from the `shared_info` page `mem` under its version protocol
/// (`wc_version`), as Linux's `pvclock_read_wallclock` does.
pub fn read_wallclock<M: SharedMemory + ?Sized>(mem: &M) -> Result<WallClock, PvclockError> {
    read_wallclock_bounded(mem, DEFAULT_MAX_ATTEMPTS)
}

/// [`read_wallclock`] with an explicit bound on the attempts.
pub fn read_wallclock_bounded<M: SharedMemory + ?Sized>(
    mem: &M,
    max_attempts: u32,
) -> Result<WallClock, PvclockError> {
    if mem.len() < SharedInfo::SIZE {
        return Err(PvclockError::SharedInfoTooSmall(mem.len()));
    }
    for _ in 0..max_attempts {
        let version = mem.load_u32(WC_VERSION, Ordering::Acquire);
        if version & 1 == 0 {
            let lo = mem.load_u32(WC_SEC, Ordering::Relaxed);
            let nsec = mem.load_u32(WC_NSEC, Ordering::Relaxed);
            let hi = mem.load_u32(WC_SEC_HI, Ordering::Relaxed);
            fence(Ordering::Acquire);
            if mem.load_u32(WC_VERSION, Ordering::Relaxed) == version {
                if u64::from(nsec) >= NSEC_PER_SEC {
                    return Err(PvclockError::BadWallclock);
                }
                return Ok(WallClock {
                    sec: (u64::from(hi) << 32) | u64::from(lo),
                    nsec,
                });
            }
        }
        core::hint::spin_loop();
    }
    Err(PvclockError::Unstable)
}

/// Hypervisor side: publishes the wallclock in the guest's `shared_info` `mem`, as Xen's
/// `update_domain_wallclock_time()` does (same version protocol as
/// [`write_time_info`]). Returns the new `wc_version`.
pub fn write_wallclock<M: SharedMemory + ?Sized>(
    mem: &M,
    wc: WallClock,
) -> Result<u32, PvclockError> {
    write_wallclock_in(mem, wc, crate::evtchn::SharedInfoAbi::Long)
}

/// [`write_wallclock`] in `shared_info` layout `abi` (a 32-bit guest's wallclock sits
/// at 0x900, its `wc_sec_hi` in `arch_shared_info` at 0x924).
pub fn write_wallclock_in<M: SharedMemory + ?Sized>(
    mem: &M,
    wc: WallClock,
    abi: crate::evtchn::SharedInfoAbi,
) -> Result<u32, PvclockError> {
    if mem.len() < SharedInfo::SIZE {
        return Err(PvclockError::SharedInfoTooSmall(mem.len()));
    }
    if u64::from(wc.nsec) >= NSEC_PER_SEC {
        return Err(PvclockError::BadWallclock);
    }
    let version = abi.wallclock_offset();
    let begin = mem.load_u32(version, Ordering::Relaxed).wrapping_add(1) | 1;
    mem.store_u32(version, begin, Ordering::Relaxed);
    fence(Ordering::Release);
    mem.store_u32(version + 4, wc.sec as u32, Ordering::Relaxed);
    mem.store_u32(version + 8, wc.nsec, Ordering::Relaxed);
    mem.store_u32(
        abi.wc_sec_hi_offset(),
        (wc.sec >> 32) as u32,
        Ordering::Relaxed,
    );
    let end = begin.wrapping_add(1);
    mem.store_u32(version, end, Ordering::Release);
    Ok(end)
}

#[cfg(test)]
mod monotonic_tests {
    use super::*;
    use crate::shmem::HeapSharedMemory;

    #[test]
    fn a_step_back_is_clamped_unless_the_tsc_is_stable() {
        let mem = HeapSharedMemory::new(4096);
        let scale = TscScale::from_khz(1_000_000).unwrap();
        let clock = MonotonicClock::new();
        // Record of CPU A: 1 GHz, time 10 ms at TSC 0.
        write_time_info(&mem, 0, &scale.time_info(0, 10_000_000, 0)).unwrap();
        assert_eq!(
            clock.system_time_now(&mem, 0, || 1_000).unwrap(),
            10_001_000
        );
        // The vCPU moved to CPU B, whose record is 2.5 ms behind.
        write_time_info(&mem, 0, &scale.time_info(0, 7_500_000, 0)).unwrap();
        assert_eq!(
            clock.system_time_now(&mem, 0, || 2_000).unwrap(),
            10_001_000
        );
        assert_eq!(
            clock.system_time_now(&mem, 0, || 3_600_000).unwrap(),
            11_100_000
        );
        // With the stable bit the hypervisor promises monotonic readings: no clamp.
        let stable = crate::abi::xen::XEN_PVCLOCK_TSC_STABLE_BIT;
        write_time_info(&mem, 0, &scale.time_info(0, 0, stable)).unwrap();
        assert_eq!(clock.system_time_now(&mem, 0, || 5).unwrap(), 5);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::xen::XEN_PVCLOCK_TSC_STABLE_BIT;
    use crate::shmem::HeapSharedMemory;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    /// The scale's relative error against the exact 10^9 / hz ns per tick, in ppm.
    fn error_ppm(scale: TscScale, hz: u64) -> f64 {
        // ns per tick = mul * 2^shift / 2^32; exact = 10^9 / hz.
        let mut lhs = u128::from(scale.mul) * u128::from(hz); // * 2^shift
        let mut rhs = u128::from(NSEC_PER_SEC) << 32;
        if scale.shift >= 0 {
            lhs <<= scale.shift;
        } else {
            rhs <<= -scale.shift;
        }
        (lhs.abs_diff(rhs) as f64) / (rhs as f64) * 1e6
    }

    #[test]
    fn known_frequencies_scale_within_one_ppm() {
        for (hz, shift) in [
            (1_000_000_000u64, 1i8),
            (2_500_000_000, -1),
            (3_000_000_000, -1),
            (100_000_000, 4),
            (25_000_000, 6),
            (3_192_614_000, -1),
            (1, 30),
            (u64::MAX, -34),
        ] {
            let s = TscScale::from_hz(hz).unwrap();
            assert_eq!(s.shift, shift, "{hz} Hz");
            assert!(s.mul >= 1 << 31, "{hz} Hz: mul {:#x} below 1/2", s.mul);
            assert!(error_ppm(s, hz) < 1.0, "{hz} Hz: {} ppm", error_ppm(s, hz));
        }
        // Exact cases: 1 GHz is 2 ticks of 0.5 ns, 25 MHz is 64 ticks of 0.625 ns.
        assert_eq!(TscScale::from_hz(1_000_000_000).unwrap().mul, 0x8000_0000);
        assert_eq!(TscScale::from_hz(25_000_000).unwrap().mul, 0xA000_0000);
        assert_eq!(
            TscScale::from_khz(2_500_000).unwrap(),
            TscScale::from_hz(2_500_000_000).unwrap()
        );
        assert_eq!(TscScale::from_hz(0), Err(PvclockError::BadFrequency));
        assert_eq!(TscScale::from_khz(0), Err(PvclockError::BadFrequency));
        assert_eq!(
            TscScale::from_khz(u64::MAX),
            Err(PvclockError::BadFrequency)
        );
    }

    #[test]
    fn frequency_round_trips_through_the_scale() {
        for hz in [
            1_000_000_000u64,
            2_500_000_000,
            3_000_000_000,
            100_000_000,
            25_000_000,
            3_192_614_000,
        ] {
            let back = TscScale::from_hz(hz).unwrap().tsc_hz().unwrap();
            assert!(
                back.abs_diff(hz) * 1_000_000 < hz,
                "{hz} Hz came back as {back}"
            );
        }
        let zero = TscScale { mul: 0, shift: 0 };
        assert_eq!(zero.tsc_hz(), None);
        assert_eq!(
            TscScale {
                mul: 1,
                shift: -100
            }
            .tsc_hz(),
            None
        );
        assert_eq!(TscScale { mul: 1, shift: 127 }.tsc_hz(), Some(0));
    }

    #[test]
    fn one_second_of_ticks_is_one_second() {
        for hz in [
            1_000_000_000u64,
            2_500_000_000,
            3_000_000_000,
            100_000_000,
            25_000_000,
        ] {
            let ns = TscScale::from_hz(hz).unwrap().ticks_to_ns(hz);
            assert!(NSEC_PER_SEC - ns <= 1, "{hz} Hz: 1 s = {ns} ns");
        }
    }

    #[test]
    fn large_deltas_do_not_overflow() {
        // Ten years at 3 GHz: the u64 product (delta * mul) would overflow at 4 s.
        let hz = 3_000_000_000u64;
        let s = TscScale::from_hz(hz).unwrap();
        let ten_years = 10 * 365 * 24 * 3600u64;
        let ns = s.ticks_to_ns(ten_years * hz);
        let exact = ten_years * NSEC_PER_SEC;
        assert!(exact.abs_diff(ns) * 1_000_000 < exact, "{ns} vs {exact}");

        // 25 MHz shifts left by 6, so Xen's u64 `delta << 6` wraps from 2^58 ticks
        // (365 years) on; here 1.5 * 2^58 ticks is still right to 1 ppm, and
        // u64::MAX ticks (23,000 years) saturates instead of wrapping.
        let slow = TscScale::from_hz(25_000_000).unwrap();
        let ticks = (1u64 << 58) + (1 << 57);
        let ns = slow.ticks_to_ns(ticks);
        let exact = u128::from(ticks) * 40;
        assert!(u128::from(ns).abs_diff(exact) * 1_000_000 < exact);
        assert_eq!(slow.ticks_to_ns(u64::MAX), u64::MAX);

        // Hostile scales: huge shifts saturate or vanish, never panic.
        assert_eq!(scale_delta(u64::MAX, u32::MAX, 127), u64::MAX);
        assert_eq!(scale_delta(1, 0x8000_0000, 63), 1 << 62);
        assert_eq!(scale_delta(u64::MAX, u32::MAX, -64), 0);
        assert_eq!(scale_delta(u64::MAX, u32::MAX, -128), 0);
        assert_eq!(scale_delta(0, u32::MAX, 100), 0);
    }

    #[test]
    fn matches_the_header_formula_where_it_does_not_overflow() {
        for shift in -8i8..=8 {
            for mul in [0x8000_0000u32, 0xAAAA_AAAA, 0xFFFF_FFFF, 0xC000_1234] {
                for delta in [0u64, 1, 999, 1 << 20, (1 << 28) + 12_345] {
                    // `(((tsc - tsc_timestamp) << tsc_shift) * mul) >> 32`, a
                    // negative shift shifting right.
                    let shifted = if shift >= 0 {
                        delta << shift
                    } else {
                        delta >> -shift
                    };
                    let header = ((u128::from(shifted) * u128::from(mul)) >> 32) as u64;
                    assert_eq!(
                        scale_delta(delta, mul, shift),
                        header,
                        "delta {delta} mul {mul:#x} shift {shift}"
                    );
                }
            }
        }
    }

    fn sample_info() -> VcpuTimeInfo {
        TscScale::from_hz(2_000_000_000).unwrap().time_info(
            10_000,
            7_000_000_000,
            XEN_PVCLOCK_TSC_STABLE_BIT,
        )
    }

    #[test]
    fn writer_and_reader_round_trip_for_each_vcpu() {
        let mem = HeapSharedMemory::new(4096);
        for vcpu in [0u32, 1, 31] {
            let mut info = sample_info();
            info.system_time += u64::from(vcpu);
            info.pad1 = [0xAB, 0xCD];
            assert_eq!(write_time_info(&mem, vcpu, &info), Ok(2));
            let got = read_time_info(&mem, vcpu).unwrap();
            assert_eq!(got, VcpuTimeInfo { version: 2, ..info });
            // The bytes sit where the abi says.
            let mut raw = [0u8; 4096];
            mem.read_bytes(0, &mut raw);
            let si = SharedInfo::from_prefix(&raw).unwrap();
            assert_eq!(si.vcpu_info[vcpu as usize].time, got);
        }
        assert_eq!(write_time_info(&mem, 0, &sample_info()), Ok(4));
        assert_eq!(
            read_time_info(&mem, 32),
            Err(PvclockError::BadVcpu(32)),
            "no legacy slot for vCPU 32"
        );
        let small = HeapSharedMemory::new(64);
        assert_eq!(
            read_time_info(&small, 0),
            Err(PvclockError::SharedInfoTooSmall(64))
        );
        assert_eq!(
            write_time_info(&small, 0, &sample_info()),
            Err(PvclockError::SharedInfoTooSmall(64))
        );
    }

    #[test]
    fn system_time_uses_the_record_of_its_tsc() {
        let mem = HeapSharedMemory::new(4096);
        write_time_info(&mem, 0, &sample_info()).unwrap();
        // 2 GHz: 2 ticks per ns.
        let now = system_time_now(&mem, 0, || 10_000 + 2_000).unwrap();
        assert_eq!(now, 7_000_001_000);
        let info = read_time_info(&mem, 0).unwrap();
        assert_eq!(system_time_at(&info, 10_000), 7_000_000_000);
        // A TSC before the stamp extrapolates backwards (2 ticks per ns).
        assert_eq!(system_time_at(&info, 8_000), 6_999_999_000);
        assert_eq!(
            system_time_at(
                &VcpuTimeInfo {
                    system_time: 10,
                    ..info
                },
                0
            ),
            0
        );
    }

    #[test]
    fn tsc_frequency_from_the_cpuid_time_leaf() {
        // Xen 4.17 under QEMU, a 2.6 GHz TSC: both subleaves agree.
        let s = TscScale::from_khz(2_599_998).unwrap();
        let shift = s.shift as u8 as u32;
        assert_eq!(tsc_khz_from_cpuid(2_599_998, s.mul, shift), Some(2_599_998));
        // QEMU's Xen emulation: subleaf 0 ECX holds the multiplier.
        assert_eq!(tsc_khz_from_cpuid(s.mul, s.mul, shift), Some(2_599_998));
        // Only subleaf 0; neither.
        assert_eq!(tsc_khz_from_cpuid(1_000_000, 0, 0), Some(1_000_000));
        assert_eq!(tsc_khz_from_cpuid(0, 0, 0), None);
        // A hostile scale gives no frequency rather than a wrong huge one.
        assert_eq!(tsc_khz_from_cpuid(0, 1, 0xe0), None);
        for khz in [1_000_000u64, 2_100_000, 3_303_823, 4_000_000] {
            let s = TscScale::from_khz(khz).unwrap();
            let got = tsc_khz_from_cpuid(0, s.mul, s.shift as u8 as u32);
            assert_eq!(got, Some(khz as u32), "{khz} kHz");
        }
    }

    #[test]
    fn a_timestamp_before_the_guest_tsc_passed_zero_wraps() {
        // Xen 4.17 under QEMU: a record stamped 506842270 ticks before the domain's
        // TSC passed zero, read 1245849577 ticks after it, at 2.6 GHz.
        let info = VcpuTimeInfo {
            tsc_timestamp: 0u64.wrapping_sub(506_842_270),
            system_time: 8_681_841_276,
            tsc_to_system_mul: 3_304_031_680,
            tsc_shift: -1,
            ..Default::default()
        };
        let now = system_time_at(&info, 1_245_849_577);
        let elapsed = now - info.system_time;
        // 1752691847 ticks at 2.6 GHz: 674 ms.
        assert!((674_000_000..675_000_000).contains(&elapsed), "{elapsed}");
    }

    #[test]
    fn writer_repairs_a_guest_scribbled_version() {
        let mem = HeapSharedMemory::new(4096);
        // A guest wrote an odd version; the writer still ends on an even one.
        mem.store_u32(VCPU0_TIME_INFO_OFFSET, 7, Ordering::Relaxed);
        assert_eq!(write_time_info(&mem, 0, &sample_info()), Ok(10));
        mem.store_u32(VCPU0_TIME_INFO_OFFSET, u32::MAX, Ordering::Relaxed);
        assert_eq!(write_time_info(&mem, 0, &sample_info()), Ok(2));
        assert!(read_time_info(&mem, 0).is_ok());
    }

    #[test]
    fn reader_gives_up_on_a_writer_that_never_finishes() {
        let mem = HeapSharedMemory::new(4096);
        write_time_info(&mem, 0, &sample_info()).unwrap();
        mem.store_u32(VCPU0_TIME_INFO_OFFSET, 3, Ordering::Relaxed);
        assert_eq!(
            read_time_info_bounded(&mem, 0, 1000),
            Err(PvclockError::Unstable)
        );
        mem.store_u32(WC_VERSION, 1, Ordering::Relaxed);
        assert_eq!(
            read_wallclock_bounded(&mem, 1000),
            Err(PvclockError::Unstable)
        );
    }

    #[test]
    fn reader_waits_for_a_writer_mid_update() {
        let mem = Arc::new(HeapSharedMemory::new(4096));
        write_time_info(&*mem, 0, &sample_info()).unwrap();
        // The writer is "mid-update": version odd and half the fields new.
        mem.store_u32(VCPU0_TIME_INFO_OFFSET, 3, Ordering::Relaxed);
        mem.store_u64(VCPU0_TIME_INFO_OFFSET + SYSTEM_TIME, 42, Ordering::Relaxed);
        let started = Arc::new(AtomicBool::new(false));
        let reader = {
            let (mem, started) = (Arc::clone(&mem), Arc::clone(&started));
            std::thread::spawn(move || {
                started.store(true, Ordering::Release);
                read_time_info_bounded(&*mem, 0, u32::MAX)
            })
        };
        while !started.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        // Finish the update by hand: the remaining field, then the even version.
        mem.store_u64(
            VCPU0_TIME_INFO_OFFSET + TSC_TIMESTAMP,
            43,
            Ordering::Relaxed,
        );
        mem.store_u32(VCPU0_TIME_INFO_OFFSET, 4, Ordering::Release);
        let got = reader.join().unwrap().unwrap();
        assert_eq!(
            (got.version, got.system_time, got.tsc_timestamp),
            (4, 42, 43)
        );
    }

    #[test]
    fn concurrent_readers_never_see_a_torn_record() {
        // Every record the writer publishes has system_time == 3 * tsc_timestamp, and
        // flags and mul derived from tsc_timestamp; a torn read would break one.
        let mem = Arc::new(HeapSharedMemory::new(4096));
        let done = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let record = |t: u64| VcpuTimeInfo {
            tsc_timestamp: t,
            system_time: 3 * t,
            tsc_to_system_mul: !(t as u32),
            flags: t as u8,
            ..Default::default()
        };
        write_time_info(&*mem, 0, &record(0)).unwrap();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (mem, done, reads) = (mem.clone(), done.clone(), reads.clone());
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        let i = read_time_info(&*mem, 0).unwrap();
                        assert_eq!(i.system_time, i.tsc_timestamp * 3);
                        assert_eq!(i.flags, i.tsc_timestamp as u8);
                        assert_eq!(i.tsc_to_system_mul, !(i.tsc_timestamp as u32));
                        assert_eq!(i.version & 1, 0);
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        // Keep writing until the readers have read plenty (or one has failed). A
        // short pause between updates leaves the readers windows to succeed in, as a
        // real writer (updating at most every few microseconds) does; without one, a
        // reader can be starved into `Unstable`, which is the bound doing its job.
        let mut t = 1u64;
        while (t < 20_000 || reads.load(Ordering::Relaxed) < 50_000)
            && !readers.iter().any(|r| r.is_finished())
            && t < 10_000_000
        {
            write_time_info(&*mem, 0, &record(t)).unwrap();
            t += 1;
            for _ in 0..(t % 64) {
                core::hint::spin_loop();
            }
        }
        done.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    }

    #[test]
    fn wallclock_round_trip_and_checks() {
        let mem = HeapSharedMemory::new(4096);
        let wc = WallClock {
            sec: 0x1_2345_6789,
            nsec: 999_999_999,
        };
        assert_eq!(write_wallclock(&mem, wc), Ok(2));
        assert_eq!(read_wallclock(&mem), Ok(wc));
        let mut raw = [0u8; 4096];
        mem.read_bytes(0, &mut raw);
        let si = SharedInfo::from_prefix(&raw).unwrap();
        assert_eq!(
            (si.wc_version, si.wc_sec, si.wc_sec_hi),
            (2, 0x2345_6789, 1)
        );
        assert_eq!(si.wc_nsec, 999_999_999);

        assert_eq!(
            write_wallclock(
                &mem,
                WallClock {
                    sec: 0,
                    nsec: 1_000_000_000
                }
            ),
            Err(PvclockError::BadWallclock)
        );
        // A hostile writer's nanoseconds are refused by the reader.
        mem.store_u32(WC_NSEC, 2_000_000_000, Ordering::Relaxed);
        assert_eq!(read_wallclock(&mem), Err(PvclockError::BadWallclock));

        let wc = WallClock {
            sec: 1_700_000_000,
            nsec: 500,
        };
        assert_eq!(wc.unix_ns_at(1_000), Some(1_700_000_000_000_001_500));
        assert_eq!(
            WallClock {
                sec: u64::MAX / 1000,
                nsec: 0
            }
            .unix_ns_at(0),
            None
        );
        assert_eq!(
            read_wallclock(&HeapSharedMemory::new(100)),
            Err(PvclockError::SharedInfoTooSmall(100))
        );
    }
}
