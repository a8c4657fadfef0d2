//! The benchmark's phase-mark port: [`hw_devices::bench::MARK_PORT`] (0xf8, 4 ports),
//! the shim's half of the protocol in `hw_devices::bench` and docs/bench-protocol.md item 2.
//!
//! A 32-bit write at offset 0 that decodes as a mark ([`hw_devices::bench::decode`])
//! records `(phase, kind, snapshot of every counter)` in order; the run's report pairs
//! them into [`Phase`]s ([`MarkLog::phases`]). Every other access is the guest's
//! mistake (or a hostile guest): reads answer all-ones as an unclaimed port would,
//! other writes are dropped, and both are counted apart from the marks.
//!
//! Accounting of the mark's own exit: the vCPU loop counts an exit before it hands the
//! access to a device, so a mark's snapshot already includes that mark's exit (in
//! `exits.io_out`, `pio_ports["0xf8"]`, `devices["bench-mark"].exits.pio_write`, KVM's
//! `exits`/`io_exits`) and the mark itself in `mark_exits`. A phase's delta (end -
//! start) therefore holds exactly one mark exit, the End's; a consumer subtracts the
//! delta of `mark_exits` from the exit counters to get the phase's own work.
//!
//! A hostile guest may write marks without end: at most [`MAX_MARKS`] are kept with
//! snapshots, later ones are only counted (`dropped`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use hw_devices::bench::{self, MarkKind};
use serde::Serialize;

use super::{Action, BusDevice};
use crate::stats::Counters;

/// The port's base.
pub const MARK_PORT: u16 = bench::MARK_PORT;
/// The port's size in bytes (one 32-bit register).
pub const MARK_PORT_SIZE: u16 = 4;
/// The device's name on the port bus and in `stats.devices`.
pub const NAME: &str = "bench-mark";
/// Marks kept with their snapshots; a benchmark run writes a few hundred.
pub const MAX_MARKS: usize = 1024;

/// One mark as written.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkRecord {
    /// The phase number (bits 0..30 of the value).
    pub phase: u32,
    /// Start or End.
    pub kind: MarkKind,
    /// Every counter at the mark ([`Counters::snapshot`]).
    pub snapshot: serde_json::Value,
}

/// A measured phase of the report: the snapshots at its Start and End marks; `None`
/// (JSON null) for a mark the guest did not write.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    /// The phase number.
    pub phase: u32,
    /// The snapshot at the Start mark.
    pub start: Option<serde_json::Value>,
    /// The snapshot at the End mark.
    pub end: Option<serde_json::Value>,
}

/// The port's counters and the marks written so far, shared between the device (on
/// the vCPU thread) and [`Counters`] (any thread).
#[derive(Debug, Default)]
pub struct MarkLog {
    marks: AtomicU64,
    bad_writes: AtomicU64,
    reads: AtomicU64,
    dropped: AtomicU64,
    records: Mutex<Vec<MarkRecord>>,
}

impl MarkLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn records(&self) -> MutexGuard<'_, Vec<MarkRecord>> {
        // Every change is one push: a poisoned log is still consistent.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mark writes so far (kept or dropped).
    pub fn mark_exits(&self) -> u64 {
        self.marks.load(Ordering::Acquire)
    }

    /// The port's counters as JSON: `marks`, `bad_writes` (writes that are not a
    /// 32-bit mark at offset 0), `reads`, `dropped` (marks past [`MAX_MARKS`]).
    pub fn counters_json(&self) -> serde_json::Value {
        serde_json::json!({
            "marks": self.marks.load(Ordering::Relaxed),
            "bad_writes": self.bad_writes.load(Ordering::Relaxed),
            "reads": self.reads.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
        })
    }

    /// A copy of the marks kept, in the order written.
    pub fn records_now(&self) -> Vec<MarkRecord> {
        self.records().clone()
    }

    /// The marks paired into phases ([`pair_marks`]).
    pub fn phases(&self) -> Vec<Phase> {
        pair_marks(self.records().iter().cloned())
    }
}

/// Pairs marks into phases, in the order of each phase's first mark: a Start opens
/// its phase; the next End of the same phase closes it. A second Start of a phase still
/// open leaves the first with `end: None`; an End with no open Start of its phase is
/// kept with `start: None`; a Start never closed keeps `end: None`. Every mark lands in
/// exactly one phase.
pub fn pair_marks(marks: impl IntoIterator<Item = MarkRecord>) -> Vec<Phase> {
    let mut phases: Vec<Phase> = Vec::new();
    // Phase number -> index of its open entry in `phases`.
    let mut open = std::collections::BTreeMap::new();
    for m in marks {
        match m.kind {
            MarkKind::Start => {
                open.insert(m.phase, phases.len());
                phases.push(Phase {
                    phase: m.phase,
                    start: Some(m.snapshot),
                    end: None,
                });
            }
            MarkKind::End => match open.remove(&m.phase) {
                Some(i) => phases[i].end = Some(m.snapshot),
                None => phases.push(Phase {
                    phase: m.phase,
                    start: None,
                    end: Some(m.snapshot),
                }),
            },
        }
    }
    phases
}

/// The mark port device.
pub struct MarkPort {
    counters: Counters,
}

impl MarkPort {
    /// A port that snapshots `counters` at every mark and logs into their
    /// [`Counters::mark_log`].
    pub fn new(counters: Counters) -> Self {
        Self { counters }
    }
}

impl BusDevice for MarkPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        self.counters
            .mark_log()
            .reads
            .fetch_add(1, Ordering::Relaxed);
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let log = self.counters.mark_log();
        let mark = match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset == 0 => bench::decode(u32::from_le_bytes(bytes)),
            _ => None,
        };
        let Some((phase, kind)) = mark else {
            log.bad_writes.fetch_add(1, Ordering::Relaxed);
            return Action::Continue;
        };
        // Counted before the snapshot, like the exit itself (see the module doc).
        log.marks.fetch_add(1, Ordering::Release);
        if log.records().len() >= MAX_MARKS {
            log.dropped.fetch_add(1, Ordering::Relaxed);
            return Action::Continue;
        }
        let snapshot = self.counters.snapshot();
        log.records().push(MarkRecord {
            phase,
            kind,
            snapshot,
        });
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(phase: u32, kind: MarkKind, n: u64) -> MarkRecord {
        MarkRecord {
            phase,
            kind,
            snapshot: json!(n),
        }
    }

    /// Without KVM: counters over a bare PCI bus, the port driven directly.
    #[test]
    fn marks_snapshot_every_counter_and_garbage_is_counted_apart() {
        use crate::devices::Bus;
        use crate::devices::pci_bus::PciBus;
        use crate::stats::ExitKind;
        use std::sync::Arc;

        let pci = PciBus::new(Arc::new(Bus::new()), Arc::new(Bus::new())).expect("PCI bus");
        let c = Counters::new(pci, None, Err("no KVM in this test".into()));
        let snap = c.snapshot();
        for key in [
            "exits",
            "pio_ports",
            "devices",
            "irq_asserts",
            "xen",
            "backends",
            "kvm",
            "cpu_ns",
            "mark_exits",
        ] {
            assert!(snap.get(key).is_some(), "{key} missing: {snap}");
        }
        assert!(snap["kvm"].is_null() && snap["xen"].is_null());
        assert_eq!(
            snap["backends"],
            serde_json::json!({}),
            "no PV backends here"
        );
        assert!(snap["cpu_ns"]["user"].is_u64() && snap["cpu_ns"]["system"].is_u64());
        assert_eq!(c.kvm_unavailable(), Some("no KVM in this test"));

        let exit = || {
            c.count(|l| {
                l.stats.exits.io_out += 1;
                l.stats.count_port(MARK_PORT);
                l.count_device(Some(NAME.into()), ExitKind::PioWrite);
            })
        };
        let mut port = MarkPort::new(c.clone());
        exit();
        assert_eq!(
            port.write(0, &bench::mark(5, MarkKind::Start).to_le_bytes()),
            Action::Continue
        );
        for (offset, data) in [
            (0, vec![0x85]),
            (0, 0x8000_0005u32.to_le_bytes()[..2].to_vec()),
            (1, bench::mark(5, MarkKind::End).to_le_bytes().to_vec()),
            (0, 5u32.to_le_bytes().to_vec()),
            (0, vec![]),
            (0, vec![0xff; 8]),
        ] {
            exit();
            assert_eq!(port.write(offset, &data), Action::Continue);
        }
        let mut d = [0u8; 4];
        port.read(0, &mut d);
        assert_eq!(d, [0xff; 4]);
        exit();
        port.write(0, &bench::mark(5, MarkKind::End).to_le_bytes());

        let phases = c.phases();
        assert_eq!(phases.len(), 1);
        let (start, end) = (
            phases[0].start.as_ref().expect("start"),
            phases[0].end.as_ref().expect("end"),
        );
        assert_eq!(start["exits"]["io_out"], 1);
        assert_eq!(start["mark_exits"], 1);
        assert_eq!(end["exits"]["io_out"], 8);
        assert_eq!(end["mark_exits"], 2);
        assert_eq!(end["pio_ports"]["0xf8"], 8);
        let dev = &end["devices"][NAME];
        assert_eq!(dev["exits"]["pio_write"], 8);
        assert_eq!(dev["marks"], 2);
        assert_eq!(dev["bad_writes"], 6);
        assert_eq!(dev["reads"], 1);
        assert_eq!(c.mark_log().records_now().len(), 2);
    }

    #[test]
    fn pairs_starts_with_the_next_end_and_keeps_unpaired_marks() {
        use MarkKind::{End, Start};
        let marks = vec![
            rec(1, Start, 0),
            rec(1, End, 1),
            rec(2, End, 2),   // End without Start
            rec(3, Start, 3), // closed after 4 opens and closes
            rec(4, Start, 4),
            rec(4, End, 5),
            rec(3, End, 6),
            rec(5, Start, 7), // restarted: the first stays open
            rec(5, Start, 8),
            rec(5, End, 9),
            rec(6, Start, 10), // never ended
            rec(1, End, 11),   // phase 1 already closed
        ];
        let got: Vec<(u32, Option<u64>, Option<u64>)> = pair_marks(marks)
            .into_iter()
            .map(|p| {
                let n = |v: Option<serde_json::Value>| v.and_then(|v| v.as_u64());
                (p.phase, n(p.start), n(p.end))
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Some(0), Some(1)),
                (2, None, Some(2)),
                (3, Some(3), Some(6)),
                (4, Some(4), Some(5)),
                (5, Some(7), None),
                (5, Some(8), Some(9)),
                (6, Some(10), None),
                (1, None, Some(11)),
            ]
        );
        let v = serde_json::to_value(Phase {
            phase: 2,
            start: None,
            end: Some(json!({})),
        })
        .expect("json");
        assert_eq!(v, json!({"phase": 2, "start": null, "end": {}}));
    }
}
