//! The benchmark's phase markers: how a guest tells host-shim where a measured phase
//! starts and ends, so the shim can count exits, interrupts and device work for that
//! phase alone (not for boot, console output or the gaps between phases).
//!
//! The guest writes a 32-bit value to [`MARK_PORT`]: [`mark`]`(phase, kind)`. The shim
//! takes a snapshot of every counter at each mark; each snapshot includes its own
//! mark's exit, so a phase's delta (end - start) holds exactly one mark exit, the End's,
//! which a consumer subtracts (the snapshots count marks in `mark_exits`). Elsewhere
//! (QEMU, real Xen) the port is unclaimed and the write is dropped, so a guest may
//! always mark.

/// The marker port (unused on a PC: between the exit port 0xf4..0xf8 and the math
/// coprocessor's 0xf0..0xf1 / 0xf8..0xff use on old machines, free under KVM).
pub const MARK_PORT: u16 = 0xf8;

/// What a mark says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    /// A measured phase starts.
    Start,
    /// The measured phase ends.
    End,
}

/// Largest phase number a mark carries.
pub const MAX_PHASE: u32 = (1 << 30) - 1;

/// The value to write: bit 31 set (so a stray zero write is not a mark), bit 30 the
/// kind (1: end), bits 0..30 the phase number.
pub const fn mark(phase: u32, kind: MarkKind) -> u32 {
    let end = match kind {
        MarkKind::Start => 0,
        MarkKind::End => 1 << 30,
    };
    1 << 31 | end | (phase & MAX_PHASE)
}

/// Decodes a value written to [`MARK_PORT`]; `None` if it is not a mark.
pub const fn decode(value: u32) -> Option<(u32, MarkKind)> {
    if value & 1 << 31 == 0 {
        return None;
    }
    let kind = if value & 1 << 30 != 0 {
        MarkKind::End
    } else {
        MarkKind::Start
    };
    Some((value & MAX_PHASE, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_zero_is_no_mark() {
        for phase in [0, 1, 77, MAX_PHASE] {
            for kind in [MarkKind::Start, MarkKind::End] {
                assert_eq!(decode(mark(phase, kind)), Some((phase, kind)));
            }
        }
        assert_eq!(decode(0), None);
        assert_eq!(decode(0x7fff_ffff), None);
    }
}
