//! Counter deltas between two snapshots and the cost of one I/O operation.
//!
//! A snapshot is the JSON object of docs/bench-protocol.md, item 2 (`exits`, `pio_ports`,
//! `devices`, `irq_asserts`, `xen`, `backends`, `kvm`, `cpu_ns`, `mark_exits`).
//! [`delta`] subtracts every numeric leaf; [`Costs::from_delta`] turns a delta into the
//! per-operation figures of the report. A figure that cannot be computed (no KVM
//! statistics, zero operations) is `null` with a reason, never NaN.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

/// The port the guest's phase marks are written to (`hw_devices::bench::MARK_PORT`).
pub const MARK_PORT_KEY: &str = "0xf8";

/// `end - start` of every numeric leaf of `end`; a leaf missing from `start` counts
/// from 0; non-numeric leaves (names, addresses) are dropped.
pub fn delta(start: &Value, end: &Value) -> Value {
    match end {
        Value::Object(fields) => {
            let mut out = Map::new();
            for (k, v) in fields {
                let d = delta(start.get(k).unwrap_or(&Value::Null), v);
                if !d.is_null() {
                    out.insert(k.clone(), d);
                }
            }
            Value::Object(out)
        }
        Value::Number(n) => {
            let s = start.as_number();
            match (n.as_i64(), s.map_or(Some(0), |s| s.as_i64())) {
                (Some(e), Some(s)) => json!(e.wrapping_sub(s)),
                _ => json!(n.as_f64().unwrap_or(0.0) - s.and_then(|s| s.as_f64()).unwrap_or(0.0)),
            }
        }
        _ => Value::Null,
    }
}

/// A numeric leaf, 0 when absent.
pub fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(0.0)
}

/// The sum of every numeric leaf under `v`.
pub fn sum_leaves(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::Object(m) => m.values().map(sum_leaves).sum(),
        _ => 0.0,
    }
}

/// Removes the phase marker's own port writes from a delta: `mark_exits` says how many
/// marker writes the interval holds; each was one `io_out` exit (and one KVM exit) that
/// the measured I/O did not cause.
pub fn without_marks(mut d: Value) -> Value {
    let marks = num(&d, &["mark_exits"]);
    if marks <= 0.0 {
        return d;
    }
    let sub = |v: &mut Value, path: &[&str]| {
        let mut cur = &mut *v;
        for p in path {
            match cur.get_mut(*p) {
                Some(next) => cur = next,
                None => return,
            }
        }
        if let Some(x) = cur.as_f64() {
            *cur = json!((x - marks).max(0.0) as i64);
        }
    };
    sub(&mut d, &["exits", "io_out"]);
    sub(&mut d, &["pio_ports", MARK_PORT_KEY]);
    sub(&mut d, &["kvm", "exits"]);
    sub(&mut d, &["kvm", "io_exits"]);
    d
}

/// Which device a path's own exits and notifications are counted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Xen PV: no device registers; its "device exits" are hypercalls.
    Xen,
    /// The PIIX IDE controller (`devices.ide`).
    Ide,
    /// An e1000 NIC (`devices.e1000-*`).
    E1000,
    /// A virtio-blk or virtio-net device (`devices.virtio-blk-*`, `devices.virtio-net-*`).
    Virtio,
}

impl From<crate::paths::DiskPath> for DeviceKind {
    fn from(p: crate::paths::DiskPath) -> Self {
        use crate::paths::DiskPath;
        match p {
            DiskPath::Xen => Self::Xen,
            DiskPath::IdeDma | DiskPath::IdePio => Self::Ide,
            DiskPath::Virtio => Self::Virtio,
        }
    }
}

impl From<crate::paths::NetPath> for DeviceKind {
    fn from(p: crate::paths::NetPath) -> Self {
        use crate::paths::NetPath;
        match p {
            NetPath::Xen => Self::Xen,
            NetPath::E1000 => Self::E1000,
            NetPath::Virtio => Self::Virtio,
        }
    }
}

/// What one I/O costs, from a delta of snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Costs {
    /// The unit of an operation ("request", "frame", "ping", "round trip").
    pub op: String,
    /// Operations in the interval.
    pub ops: f64,
    /// Totals over the interval.
    pub totals: BTreeMap<String, Option<f64>>,
    /// Totals divided by `ops` (`cpu_ns_per_gib` divides by GiB moved instead).
    pub per_op: BTreeMap<String, Option<f64>>,
    /// Why a figure is `null`.
    pub null_reasons: BTreeMap<String, String>,
}

/// `a / b`, or `None` with the reason when `b` is zero.
pub fn ratio(a: f64, b: f64, what: &str) -> Result<f64, String> {
    if b == 0.0 || !b.is_finite() || !a.is_finite() {
        Err(format!("{what} is zero"))
    } else {
        Ok(a / b)
    }
}

impl Costs {
    /// Per-operation costs of `d` (a delta already passed through [`without_marks`])
    /// for `ops` operations of `op` that moved `bytes` bytes on a path whose device is
    /// `dev`.
    pub fn from_delta(d: &Value, op: &str, ops: f64, bytes: f64, dev: DeviceKind) -> Self {
        let mut c = Costs {
            op: op.into(),
            ops,
            ..Self::default()
        };
        let ex = &d["exits"];
        // Hypercalls through the shim's page are port reads (also in `io_in`); those
        // KVM's Xen support hands over (`xen_hcall`) are exits of their own.
        let page_calls = num(ex, &["hypercall"]);
        let hyper = page_calls + num(ex, &["xen_hcall"]);
        let pio = num(ex, &["io_in"]) + num(ex, &["io_out"]) - page_calls;
        let mmio = num(ex, &["mmio_read"]) + num(ex, &["mmio_write"]);
        // Every exit kind but `hypercall`, which is also counted in `io_in`.
        let user = sum_leaves(ex) - page_calls;
        let devices = d["devices"].as_object().cloned().unwrap_or_default();
        let mine = |prefix: &str| {
            devices
                .iter()
                .filter(move |(k, _)| k.as_str() == prefix || k.starts_with(&format!("{prefix}-")))
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        let device_exits = match dev {
            DeviceKind::Xen => hyper,
            DeviceKind::Ide => mine("ide").iter().map(|v| sum_leaves(&v["exits"])).sum(),
            DeviceKind::E1000 => mine("e1000").iter().map(|v| sum_leaves(&v["exits"])).sum(),
            DeviceKind::Virtio => mine("virtio-blk")
                .iter()
                .chain(&mine("virtio-net"))
                .map(|v| {
                    // `isr_read` is a subset of the reads: not added again.
                    let e = &v["transport"]["exits"];
                    num(e, &["mmio_read"]) + num(e, &["mmio_write"]) + num(e, &["cfg_window"])
                })
                .sum(),
        };
        let virtio: Vec<Value> = mine("virtio-blk")
            .into_iter()
            .chain(mine("virtio-net"))
            .collect();
        let xen = &d["xen"];
        let irqs = d["irq_asserts"]
            .as_object()
            .map_or(0.0, |m| m.values().filter_map(Value::as_f64).sum())
            + num(xen, &["upcalls_injected"])
            // MSI-X messages raise no line.
            + virtio
                .iter()
                .map(|v| num(v, &["transport", "msix_messages"]))
                .sum::<f64>();
        let evtchn_sends: f64 = xen["hypercalls"].as_object().map_or(0.0, |m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("event_channel_op.send"))
                .filter_map(|(_, v)| v.as_f64())
                .sum()
        });
        let mut notifications = evtchn_sends;
        for v in mine("e1000") {
            notifications += num(&v, &["tdt_writes"]) + num(&v, &["rdt_writes"]);
        }
        // virtio: notifies that exited, plus those KVM absorbed into the doorbell (its
        // signals, less the ones the device's own link made).
        for v in &virtio {
            notifications += num(v, &["transport", "notifies"])
                + num(v, &["transport", "doorbell_rings"])
                - num(v, &["device", "net", "link_wakeups"]);
        }
        for v in mine("ide") {
            if let Some(w) = v["register_writes"].as_object() {
                notifications += w
                    .iter()
                    .filter(|(k, _)| k.ends_with("command"))
                    .filter_map(|(_, v)| v.as_f64())
                    .sum::<f64>();
            }
        }
        let mut copied = 0.0;
        if let Some(backends) = d["backends"].as_object() {
            for b in backends.values() {
                copied += if b.get("grant_copy_bytes").is_some() {
                    num(b, &["grant_copy_bytes"])
                } else {
                    num(b, &["bytes_read"]) + num(b, &["bytes_written"])
                };
            }
        }
        for v in devices.values() {
            copied += num(v, &["dma_bytes_read"])
                + num(v, &["dma_bytes_written"])
                + num(v, &["pio_bytes_in"])
                + num(v, &["pio_bytes_out"])
                + num(v, &["dma", "read_bytes"])
                + num(v, &["dma", "write_bytes"])
                + num(v, &["device", "bytes_read"])
                + num(v, &["device", "bytes_written"])
                + num(v, &["device", "net", "tx_bytes"])
                + num(v, &["device", "net", "rx_bytes"]);
        }
        let cpu = &d["cpu_ns"];
        let cpu_ns = cpu
            .is_object()
            .then(|| num(cpu, &["user"]) + num(cpu, &["system"]));
        let kvm = d["kvm"].is_object().then(|| num(&d["kvm"], &["exits"]));
        let kvm_irqs = d["kvm"]
            .is_object()
            .then(|| num(&d["kvm"], &["irq_injections"]));

        let mut put = |name: &str, total: Option<f64>, missing: &str| {
            c.totals.insert(name.into(), total);
            let per = match total {
                None => Err(missing.to_owned()),
                Some(t) => ratio(t, ops, &format!("the number of {op}s")),
            };
            match per {
                Ok(v) => {
                    c.per_op.insert(name.into(), Some(v));
                }
                Err(reason) => {
                    c.per_op.insert(name.into(), None);
                    c.null_reasons.insert(name.into(), reason);
                }
            }
        };
        const NO_KVM: &str = "KVM binary statistics are not available on this host";
        put("user_exits", Some(user), "");
        put("pio_exits", Some(pio), "");
        put("mmio_exits", Some(mmio), "");
        put("hypercall_exits", Some(hyper), "");
        put("hlt_exits", Some(num(ex, &["hlt"])), "");
        put("device_exits", Some(device_exits), "");
        put("kvm_exits", kvm, NO_KVM);
        put("interrupts", Some(irqs), "");
        put("kvm_irq_injections", kvm_irqs, NO_KVM);
        put("notifications", Some(notifications), "");
        put("bytes_copied", Some(copied), "");
        put(
            "cpu_ns",
            cpu_ns,
            "the snapshots hold no host CPU time (cpu_ns)",
        );
        // CPU time per GiB moved replaces the per-op CPU figure.
        c.per_op.remove("cpu_ns");
        c.null_reasons.remove("cpu_ns");
        let gib = bytes / (1u64 << 30) as f64;
        match cpu_ns.map(|ns| ratio(ns, gib, "the data moved")) {
            Some(Ok(v)) => {
                c.per_op.insert("cpu_ns_per_gib".into(), Some(v));
            }
            Some(Err(r)) => {
                c.per_op.insert("cpu_ns_per_gib".into(), None);
                c.null_reasons.insert("cpu_ns_per_gib".into(), r);
            }
            None => {
                c.per_op.insert("cpu_ns_per_gib".into(), None);
                c.null_reasons.insert(
                    "cpu_ns_per_gib".into(),
                    "the snapshots hold no host CPU time (cpu_ns)".into(),
                );
            }
        }
        c
    }
}

/// One entry of a RunReport's `phases`.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSnaps {
    /// Phase number.
    pub phase: u64,
    /// Snapshot at Start (`None`: an End without Start).
    pub start: Option<Value>,
    /// Snapshot at End.
    pub end: Option<Value>,
}

/// The `phases` array of a RunReport JSON (missing: empty).
pub fn phases(report: &Value) -> Vec<PhaseSnaps> {
    report["phases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some(PhaseSnaps {
                        phase: p["phase"].as_u64()?,
                        start: p.get("start").filter(|s| !s.is_null()).cloned(),
                        end: p.get("end").filter(|s| !s.is_null()).cloned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The delta of phase `n` (its last complete Start/End pair), marks removed, or why
/// there is none.
pub fn phase_delta(phases: &[PhaseSnaps], n: u64) -> Result<Value, String> {
    let p = phases
        .iter()
        .rev()
        .find(|p| p.phase == n)
        .ok_or_else(|| format!("no mark for phase {n} in the run's report"))?;
    match (&p.start, &p.end) {
        (Some(s), Some(e)) => Ok(without_marks(delta(s, e))),
        (None, _) => Err(format!("phase {n} has an End mark without a Start")),
        (_, None) => Err(format!("phase {n} has no End mark")),
    }
}
