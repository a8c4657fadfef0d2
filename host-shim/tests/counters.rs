//! Counters read while the VM runs ([`host_shim::stats::Counters`]) and the phase-mark
//! port (0xf8): tiny hand-assembled guests under KVM, in-process. Each test prints
//! `SKIPPED: ...` and passes when KVM is absent; a host without KVM's binary statistics
//! prints `SKIPPED:` for that part and checks that `kvm` is null.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Asm, kvm_usable};
use host_shim::devices::bench_mark::{self, MAX_MARKS};
use host_shim::devices::{Action, BusDevice};
use host_shim::stats::Counters;
use host_shim::testing::Rng;
use host_shim::{Capture, ConsoleSink, Kernel, Outcome, RunReport, VmConfig, Vmm};
use hw_devices::bench::{MarkKind, mark};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
/// An unclaimed port (no device, not in KVM's in-kernel PIC/PIT ranges).
const SINK_PORT: u16 = 0x300;
/// The gate port of [`Gate`].
const GATE_PORT: u16 = 0x310;

fn vmm(asm: &Asm) -> (Vmm, Capture) {
    let capture = Capture::new();
    let mut config = VmConfig::new(Kernel::from_bytes("counters.elf", asm.kernel()));
    config.mem_mib = 16;
    config.timeout = Some(TIMEOUT);
    config.console = ConsoleSink::new(capture.clone());
    (Vmm::new(config).expect("VM set up"), capture)
}

/// `mov eax, value; out 0xf8, eax`.
fn out_mark(a: &mut Asm, value: u32) {
    a.raw(&[0xb8]).raw(&value.to_le_bytes()).raw(&[0xe7, 0xf8]);
}

/// `mov ecx, n; mov dx, port; l: out dx, al; loop l` (n > 0).
fn out_loop(a: &mut Asm, port: u16, n: u32, label: &'static str) {
    a.raw(&[0xb9]).raw(&n.to_le_bytes());
    a.mov_dx(port);
    a.label(label).raw(&[0xee]).jump(0xe2, label);
}

/// The numeric leaf at `path` ("exits.io_out"), 0 when absent (a counter not yet
/// touched).
fn leaf(v: &Value, path: &str) -> u64 {
    let mut at = v;
    for key in path.split('.') {
        match at.get(key) {
            Some(next) => at = next,
            None => return 0,
        }
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number: {at}"))
}

fn delta(start: &Value, end: &Value, path: &str) -> u64 {
    let (s, e) = (leaf(start, path), leaf(end, path));
    assert!(e >= s, "{path} went back from {s} to {e}");
    e - s
}

/// Every numeric leaf of `old` is present in `new` and not smaller (`xen.grant_maps`
/// is a current count, not a counter).
fn assert_monotonic(old: &Value, new: &Value, path: &str) {
    match old {
        Value::Object(fields) => {
            for (k, v) in fields {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if p == "xen.grant_maps" {
                    continue;
                }
                let n = new
                    .get(k)
                    .unwrap_or_else(|| panic!("{p} vanished from a later snapshot"));
                assert_monotonic(v, n, &p);
            }
        }
        Value::Number(a) => {
            let (a, b) = (a.as_u64(), new.as_u64());
            assert!(
                matches!((a, b), (Some(a), Some(b)) if b >= a),
                "{path} went from {a:?} to {b:?}"
            );
        }
        _ => {}
    }
}

/// Checks the snapshot's `kvm` part: the vCPU's counters by name, or null (with a loud
/// skip) on a host without KVM's binary statistics.
fn kvm_present(counters: &Counters, snap: &Value, test: &str) -> bool {
    if let Some(why) = counters.kvm_unavailable() {
        eprintln!("SKIPPED: KVM binary stats: {why} ({test})");
        assert!(snap["kvm"].is_null());
        return false;
    }
    let kvm = snap["kvm"].as_object().expect("kvm stats object");
    for name in [
        "exits",
        "io_exits",
        "mmio_exits",
        "halt_exits",
        "irq_injections",
    ] {
        assert!(
            kvm.get(name).is_some_and(Value::is_u64),
            "kvm.{name}: {kvm:?}"
        );
    }
    assert!(
        !kvm.keys().any(|k| k.ends_with("_hist")),
        "histograms are left out"
    );
    true
}

fn run(vmm: Vmm, out: &Capture) -> RunReport {
    let report = vmm.run().expect("run");
    assert_eq!(
        report.outcome,
        Outcome::Exited { status: 0 },
        "{}",
        out.text()
    );
    report
}

#[test]
fn a_phase_delta_counts_exactly_its_exits_plus_the_end_mark() {
    const TEST: &str = "a_phase_delta_counts_exactly_its_exits_plus_the_end_mark";
    if !kvm_usable(TEST) {
        return;
    }
    const N: u32 = 100;
    let mut a = Asm::new();
    out_mark(&mut a, mark(7, MarkKind::Start));
    out_loop(&mut a, SINK_PORT, N, "sink");
    out_mark(&mut a, mark(7, MarkKind::End));
    a.exit(0);
    let (vmm, out) = vmm(&a);
    let counters = vmm.counters();
    let report = run(vmm, &out);

    assert_eq!(report.phases.len(), 1, "{:?}", report.phases);
    let phase = &report.phases[0];
    assert_eq!(phase.phase, 7);
    let (start, end) = (
        phase.start.as_ref().expect("start"),
        phase.end.as_ref().expect("end"),
    );
    // The accounting rule: a mark's snapshot includes its own exit, so the delta holds
    // the N writes and the End mark's exit; `mark_exits` says how many to subtract.
    assert_eq!(delta(start, end, "mark_exits"), 1);
    assert_eq!(delta(start, end, "exits.io_out"), u64::from(N) + 1);
    assert_eq!(
        delta(start, end, "exits.io_out") - delta(start, end, "mark_exits"),
        u64::from(N)
    );
    assert_eq!(delta(start, end, "pio_ports.0x300"), u64::from(N));
    assert_eq!(delta(start, end, "pio_ports.0xf8"), 1);
    assert_eq!(delta(start, end, "unclaimed.pio_writes"), u64::from(N));
    assert_eq!(delta(start, end, "devices.bench-mark.exits.pio_write"), 1);
    assert_eq!(leaf(start, "mark_exits"), 1, "the start mark counts itself");
    for path in [
        "exits.io_in",
        "exits.mmio_read",
        "exits.mmio_write",
        "exits.hlt",
    ] {
        assert_eq!(delta(start, end, path), 0, "{path}");
    }
    assert!(start["cpu_ns"]["user"].is_u64() && start["cpu_ns"]["system"].is_u64());
    assert_eq!(
        start["backends"],
        serde_json::json!({}),
        "no PV backends here"
    );
    if kvm_present(&counters, start, TEST) {
        // KVM counts every exit, those that reached user space among them. Not
        // `io_exits`: kvm-pvm runs port I/O through its instruction emulator and leaves
        // that counter at 0.
        assert!(delta(start, end, "kvm.exits") > u64::from(N));
    }

    // The final report: as before, plus the port's own counters and the phases.
    let s = &report.stats;
    assert_eq!(s.exits.io_out, u64::from(N) + 3);
    assert_eq!(s.pio_ports.get(&0xf8), Some(&2));
    let port = &s.devices[bench_mark::NAME];
    assert_eq!(port["marks"], 2);
    assert_eq!(port["bad_writes"], 0);
    assert_eq!(port["exits"]["pio_write"], 2);
    let json: Value = serde_json::from_str(&report.to_json()).expect("json");
    assert_eq!(json["phases"][0]["phase"], 7);
    assert_eq!(
        json["phases"][0]["end"]["exits"]["io_out"],
        u64::from(N) + 2
    );
    assert_eq!(json["stats"]["pio_ports"]["0x300"], u64::from(N));
}

/// A port the guest polls until the test opens it; reads are counted.
struct Gate {
    open: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
}

impl BusDevice for Gate {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        data.fill(u8::from(self.open.load(Ordering::Acquire)));
    }
    fn write(&mut self, _: u64, _: &[u8]) -> Action {
        Action::Continue
    }
}

#[test]
fn snapshots_from_another_thread_during_a_run_only_grow() {
    const TEST: &str = "snapshots_from_another_thread_during_a_run_only_grow";
    if !kvm_usable(TEST) {
        return;
    }
    const N1: u32 = 500;
    const N2: u32 = 300;
    let mut a = Asm::new();
    out_loop(&mut a, SINK_PORT, N1, "first");
    // Spin on the gate: every read is an exit, so the counters move while the test
    // snapshots, and the guest cannot finish before the test has seen it mid-run.
    a.mov_dx(GATE_PORT);
    a.label("gate")
        .raw(&[0xec, 0x84, 0xc0]) // in al, dx; test al, al
        .jump(0x74, "gate");
    out_loop(&mut a, SINK_PORT, N2, "second");
    a.exit(0);
    let (mut vmm, out) = vmm(&a);
    let open = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let gate = Gate {
        open: open.clone(),
        reads: reads.clone(),
    };
    vmm.pio_bus()
        .insert(GATE_PORT.into(), 1, Arc::new(std::sync::Mutex::new(gate)))
        .expect("gate port");
    let counters = vmm.counters();
    let done = Arc::new(AtomicBool::new(false));

    let poller = {
        let (counters, done, open) = (counters.clone(), done.clone(), open.clone());
        std::thread::spawn(move || {
            let mut snaps: Vec<Value> = Vec::new();
            let mut gated = 0;
            let limit = Instant::now() + TIMEOUT;
            loop {
                let finished = done.load(Ordering::Acquire);
                let s = counters.snapshot();
                if let Some(prev) = snaps.last() {
                    assert_monotonic(prev, &s, "");
                }
                // Mid-run: the first loop is done and the guest is spinning on the gate.
                if leaf(&s, "exits.io_out") == u64::from(N1) && leaf(&s, "pio_ports.0x310") > 0 {
                    gated += 1;
                }
                if gated >= 5 || Instant::now() > limit {
                    open.store(true, Ordering::Release);
                }
                snaps.push(s);
                if finished {
                    return (snaps, gated);
                }
                std::thread::yield_now();
            }
        })
    };
    let report = vmm.run();
    done.store(true, Ordering::Release);
    let (snaps, gated) = poller.join().expect("poller");
    let report = report.expect("run");
    assert_eq!(
        report.outcome,
        Outcome::Exited { status: 0 },
        "{}",
        out.text()
    );
    assert!(gated >= 5, "no snapshot saw the guest at the gate");
    let last = snaps.last().expect("snapshots");
    // Taken after the run ended: the same counts as the report.
    assert_eq!(leaf(last, "exits.io_out"), report.stats.exits.io_out);
    assert_eq!(leaf(last, "exits.io_in"), report.stats.exits.io_in);
    assert_eq!(report.stats.exits.io_out, u64::from(N1 + N2) + 1);
    assert_eq!(report.stats.exits.io_in, reads.load(Ordering::Relaxed));
    assert_eq!(leaf(last, "pio_ports.0x310"), reads.load(Ordering::Relaxed));
    assert!(report.phases.is_empty());
    if kvm_present(&counters, last, TEST) {
        assert!(leaf(last, "kvm.exits") >= report.exits_total);
    }
    assert!(leaf(last, "cpu_ns.user") + leaf(last, "cpu_ns.system") > 0);
}

/// What the hostile guest wrote, as the test expects the port to see it.
#[derive(Default)]
struct Expected {
    marks: Vec<(u32, MarkKind)>,
    bad_writes: u64,
    reads: u64,
}

/// Phases by the rule, written independently of the shim's pairing: mark `i` (a Start)
/// pairs with the first later mark of its phase if that is an End; an End is unpaired
/// if the last earlier mark of its phase is not a Start. Marks are 1-based, as in
/// `mark_exits`. Order: by each entry's first mark.
fn reference_phases(marks: &[(u32, MarkKind)]) -> Vec<(u32, Option<u64>, Option<u64>)> {
    let mut out = Vec::new();
    for (i, &(phase, kind)) in marks.iter().enumerate() {
        let n = i as u64 + 1;
        match kind {
            MarkKind::Start => {
                let next = marks[i + 1..]
                    .iter()
                    .position(|m| m.0 == phase)
                    .map(|k| i + 1 + k);
                let end = next
                    .filter(|&j| marks[j].1 == MarkKind::End)
                    .map(|j| j as u64 + 1);
                out.push((phase, Some(n), end));
            }
            MarkKind::End => {
                let prev = marks[..i].iter().rposition(|m| m.0 == phase);
                if !prev.is_some_and(|j| marks[j].1 == MarkKind::Start) {
                    out.push((phase, None, Some(n)));
                }
            }
        }
    }
    out
}

#[test]
fn a_hostile_guest_on_the_mark_port_gets_marks_paired_and_garbage_counted() {
    const TEST: &str = "a_hostile_guest_on_the_mark_port_gets_marks_paired_and_garbage_counted";
    if !kvm_usable(TEST) {
        return;
    }
    let mut rng = Rng(0x6d61_726b_2d70_6f72);
    let mut a = Asm::new();
    let mut want = Expected::default();
    for _ in 0..400 {
        match rng.below(10) {
            // A well-formed mark of a few phases, so that they collide.
            0..=3 => {
                let phase = rng.below(4) as u32;
                let kind = if rng.below(2) == 0 {
                    MarkKind::Start
                } else {
                    MarkKind::End
                };
                out_mark(&mut a, mark(phase, kind));
                want.marks.push((phase, kind));
            }
            // Any 32-bit value: a mark of a random phase when bit 31 is set.
            4 | 5 => {
                let v = rng.next_u64() as u32;
                out_mark(&mut a, v);
                match hw_devices::bench::decode(v) {
                    Some(m) => want.marks.push(m),
                    None => want.bad_writes += 1,
                }
            }
            // A byte or word write: never a mark, whatever the value.
            6 => {
                a.raw(&[0xb0, rng.next_u64() as u8, 0xe6, 0xf8]);
                want.bad_writes += 1;
            }
            7 => {
                let [lo, hi] = (rng.next_u64() as u16 | 0x8000).to_le_bytes();
                a.raw(&[0x66, 0xb8, lo, hi, 0x66, 0xe7, 0xf8]);
                want.bad_writes += 1;
            }
            // A 32-bit mark value at an offset inside the port: not a mark.
            8 => {
                let port = 0xf9 + rng.below(3) as u8;
                let v = mark(1, MarkKind::Start).to_le_bytes();
                a.raw(&[0xb8, v[0], v[1], v[2], v[3], 0xe7, port]);
                want.bad_writes += 1;
            }
            // Reads of any width.
            _ => {
                let op = [0xe4, 0xe5][rng.below(2) as usize];
                a.raw(&[op, 0xf8]);
                want.reads += 1;
            }
        }
    }
    a.exit(0);
    assert!(want.marks.len() < MAX_MARKS);
    let (vmm, out) = vmm(&a);
    let report = run(vmm, &out);

    let port = &report.stats.devices[bench_mark::NAME];
    assert_eq!(port["marks"], want.marks.len() as u64);
    assert_eq!(port["bad_writes"], want.bad_writes);
    assert_eq!(port["reads"], want.reads);
    assert_eq!(port["dropped"], 0);
    // Each mark's snapshot says which mark it was: `mark_exits` counts itself.
    let got: Vec<(u32, Option<u64>, Option<u64>)> = report
        .phases
        .iter()
        .map(|p| {
            let n = |s: &Option<Value>| s.as_ref().map(|s| leaf(s, "mark_exits"));
            (p.phase, n(&p.start), n(&p.end))
        })
        .collect();
    let expected = reference_phases(&want.marks);
    assert!(
        expected.iter().any(|p| p.1.is_none()) && expected.iter().any(|p| p.2.is_none()),
        "the sequence should hold unpaired marks of both kinds"
    );
    assert!(expected.iter().any(|p| p.1.is_some() && p.2.is_some()));
    assert_eq!(got, expected);
    for p in &report.phases {
        if let (Some(s), Some(e)) = (&p.start, &p.end) {
            assert_monotonic(s, e, "");
        }
    }
}

#[test]
fn marks_beyond_the_cap_are_counted_not_kept() {
    const TEST: &str = "marks_beyond_the_cap_are_counted_not_kept";
    if !kvm_usable(TEST) {
        return;
    }
    let extra = 10u32;
    let mut a = Asm::new();
    // mov ecx, n; l: mov eax, mark(3, Start); out 0xf8, eax; loop l
    a.raw(&[0xb9])
        .raw(&(MAX_MARKS as u32 + extra).to_le_bytes())
        .label("l");
    out_mark(&mut a, mark(3, MarkKind::Start));
    a.jump(0xe2, "l").exit(0);
    let (vmm, out) = vmm(&a);
    let report = run(vmm, &out);
    let port = &report.stats.devices[bench_mark::NAME];
    assert_eq!(port["marks"], MAX_MARKS as u64 + u64::from(extra));
    assert_eq!(port["dropped"], u64::from(extra));
    assert_eq!(report.phases.len(), MAX_MARKS);
    assert!(report.phases.iter().all(|p| p.end.is_none()));
}
