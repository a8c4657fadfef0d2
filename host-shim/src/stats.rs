//! Per-run counters, reported as JSON by `--stats`/`--stats-file`, and [`Counters`], the
//! handle that reads them while the VM runs (docs/bench-protocol.md item 2: snapshots at phase marks
//! and from the host side).
//!
//! On machines where the guest's kernel code runs through an instruction emulator,
//! wall-clock time says little; counts of exits by kind and by port say what an I/O path
//! costs. New devices add their own counters here as fields (serde serialises them with
//! no further work).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::devices::bench_mark::{self, MarkLog, Phase};
use crate::devices::pci_bus::{self, PciBus};
use crate::kvm::{GsiLine, VcpuStats};
use crate::xen::Xen;

/// vCPU exits by kind. `other` counts every exit kind not listed; their names are in
/// [`RunStats::other_exits`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExitCounters {
    /// Port reads.
    pub io_in: u64,
    /// Port writes.
    pub io_out: u64,
    /// MMIO reads.
    pub mmio_read: u64,
    /// MMIO writes.
    pub mmio_write: u64,
    /// `rdmsr` forwarded to user space.
    pub msr_read: u64,
    /// `wrmsr` forwarded to user space.
    pub msr_write: u64,
    /// `hlt` forwarded to user space (none with the in-kernel irqchip).
    pub hlt: u64,
    /// Triple faults.
    pub shutdown: u64,
    /// Xen hypercalls through the shim's hypercall page (port reads; also counted in
    /// `io_in`).
    pub hypercall: u64,
    /// Xen hypercalls made with `vmcall`/`vmmcall`, handed over by KVM's Xen support
    /// (`KVM_EXIT_XEN`).
    pub xen_hcall: u64,
    /// `KVM_RUN` interrupted by a signal.
    pub intr: u64,
    /// KVM system events.
    pub system_event: u64,
    /// Failed VM entries.
    pub fail_entry: u64,
    /// KVM internal errors.
    pub internal_error: u64,
    /// Anything else.
    pub other: u64,
}

impl ExitCounters {
    /// All exits.
    pub fn total(&self) -> u64 {
        let Self {
            io_in,
            io_out,
            mmio_read,
            mmio_write,
            msr_read,
            msr_write,
            hlt,
            shutdown,
            hypercall: _,
            xen_hcall,
            intr,
            system_event,
            fail_entry,
            internal_error,
            other,
        } = self;
        io_in
            + io_out
            + mmio_read
            + mmio_write
            + msr_read
            + msr_write
            + hlt
            + shutdown
            + xen_hcall
            + intr
            + system_event
            + fail_entry
            + internal_error
            + other
    }
}

/// Accesses no device claimed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Unclaimed {
    /// Port reads answered with all-ones.
    pub pio_reads: u64,
    /// Port writes dropped.
    pub pio_writes: u64,
    /// MMIO reads answered with all-ones.
    pub mmio_reads: u64,
    /// MMIO writes dropped.
    pub mmio_writes: u64,
}

/// Everything counted during one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// Exits by kind.
    pub exits: ExitCounters,
    /// Port-I/O exits per port, in and out together. A string instruction (`rep outsb`)
    /// that KVM hands over as one exit counts once. Serialised with hex keys ("0xe9").
    #[serde(serialize_with = "hex_keys")]
    pub pio_ports: BTreeMap<u16, u64>,
    /// Exits counted in `exits.other`, by name.
    pub other_exits: BTreeMap<String, u64>,
    /// Accesses no device claimed.
    pub unclaimed: Unclaimed,
    /// The Xen interface's counters, when the guest had it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xen: Option<crate::xen::XenStats>,
    /// Each PV backend's counters, by device name ("vbd-51712", "vif-0").
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, serde_json::Value>,
    /// Emulated devices by name: for each, `exits` (the vCPU exits that reached it, a
    /// [`DeviceExits`]), `pci` (its address, for a PCI function) and the model's own
    /// counters (`PciDevice::stats()`: an object's fields are merged in, any other
    /// value is under `counters`). The PCI host's counters are under "pci-host".
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub devices: BTreeMap<String, serde_json::Value>,
    /// Interrupt lines the devices drove through `KVM_IRQ_LINE`: low-to-high changes
    /// per GSI.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub irq_asserts: BTreeMap<u32, u64>,
}

/// vCPU exits that reached one device. A string instruction that KVM hands over as one
/// exit counts once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeviceExits {
    /// Port reads.
    pub pio_read: u64,
    /// Port writes.
    pub pio_write: u64,
    /// MMIO reads.
    pub mmio_read: u64,
    /// MMIO writes.
    pub mmio_write: u64,
}

impl DeviceExits {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.pio_read + self.pio_write + self.mmio_read + self.mmio_write
    }
}

impl RunStats {
    /// Counts one port-I/O exit at `port`.
    pub fn count_port(&mut self, port: u16) {
        *self.pio_ports.entry(port).or_default() += 1;
    }

    /// Records device `name`: its exits, its PCI address and the model's counters
    /// (see [`RunStats::devices`]).
    pub fn add_device(
        &mut self,
        name: &str,
        exits: DeviceExits,
        pci: Option<String>,
        counters: serde_json::Value,
    ) {
        let mut entry = serde_json::Map::new();
        if let Ok(v) = serde_json::to_value(exits) {
            entry.insert("exits".into(), v);
        }
        if let Some(pci) = pci {
            entry.insert("pci".into(), pci.into());
        }
        match counters {
            serde_json::Value::Null => {}
            serde_json::Value::Object(fields) => {
                for (k, v) in fields {
                    entry.entry(k).or_insert(v);
                }
            }
            other => {
                entry.insert("counters".into(), other);
            }
        }
        self.devices
            .insert(name.to_owned(), serde_json::Value::Object(entry));
    }

    /// Counts one exit of a kind without its own counter.
    pub fn count_other(&mut self, name: &str) {
        self.exits.other += 1;
        *self.other_exits.entry(name.to_owned()).or_default() += 1;
    }
}

/// What the vCPU thread counts per exit: the exit kinds, ports, unclaimed accesses of
/// [`RunStats`] and the exits per named bus range. Updated under one mutex that only a
/// snapshot contends for (an uncontended lock is a compare-and-swap, no system call).
#[derive(Debug, Clone, Default)]
pub struct LiveExits {
    /// `exits`, `pio_ports`, `other_exits`, `unclaimed` (the other fields stay empty).
    pub stats: RunStats,
    /// Exits per named bus range (the device names of [`RunStats::devices`]).
    pub device_exits: BTreeMap<Arc<str>, DeviceExits>,
}

/// Which of a device's exit counters an exit increments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// A port read.
    PioRead,
    /// A port write.
    PioWrite,
    /// An MMIO read.
    MmioRead,
    /// An MMIO write.
    MmioWrite,
}

impl LiveExits {
    /// Counts an exit of `kind` for the device named `name` (none: an unnamed range).
    pub fn count_device(&mut self, name: Option<Arc<str>>, kind: ExitKind) {
        let Some(name) = name else {
            return;
        };
        let e = self.device_exits.entry(name).or_default();
        let n = match kind {
            ExitKind::PioRead => &mut e.pio_read,
            ExitKind::PioWrite => &mut e.pio_write,
            ExitKind::MmioRead => &mut e.mmio_read,
            ExitKind::MmioWrite => &mut e.mmio_write,
        };
        *n += 1;
    }
}

/// The process's CPU time so far (`getrusage(RUSAGE_SELF)`: every thread of the shim,
/// the vCPU's time in the guest included), in nanoseconds (microsecond resolution).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CpuTime {
    /// User time.
    pub user: u64,
    /// System time.
    pub system: u64,
}

impl CpuTime {
    /// Now. Zero if `getrusage` fails (it cannot for `RUSAGE_SELF`).
    pub fn now() -> Self {
        // SAFETY: `usage` is a plain C struct, zeroed, which getrusage only writes to.
        let (rc, usage) = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            let rc = libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            (rc, usage)
        };
        if rc != 0 {
            return Self::default();
        }
        let ns = |t: libc::timeval| {
            (t.tv_sec.max(0) as u64) * 1_000_000_000 + (t.tv_usec.max(0) as u64) * 1_000
        };
        Self {
            user: ns(usage.ru_utime),
            system: ns(usage.ru_stime),
        }
    }
}

/// Every counter of a VM, readable from any thread while it runs: a cheap, `Clone +
/// Send + Sync` handle ([`crate::Vmm::counters`]). It keeps the PCI bus, the Xen
/// interface and the vCPU's stats descriptor alive as long as a clone exists.
#[derive(Clone)]
pub struct Counters {
    inner: Arc<Inner>,
}

struct Inner {
    live: Mutex<LiveExits>,
    pci: PciBus,
    irq_lines: Mutex<Vec<Arc<GsiLine>>>,
    xen: Option<Arc<Xen>>,
    kvm: Result<Arc<VcpuStats>, String>,
    marks: MarkLog,
    backends: Mutex<Vec<(String, crate::backends::LiveStats)>>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("xen", &self.inner.xen.is_some())
            .field("kvm", &self.inner.kvm.is_ok())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere: every update is a few adds.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Counters {
    /// Counters of a VM with PCI bus `pci`, the Xen interface `xen` if any, and its
    /// vCPU's binary statistics (or why there are none: `kvm` is null in snapshots).
    pub fn new(pci: PciBus, xen: Option<Arc<Xen>>, kvm: Result<VcpuStats, String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                live: Mutex::new(LiveExits::default()),
                pci,
                irq_lines: Mutex::new(Vec::new()),
                xen,
                kvm: kvm.map(Arc::new),
                marks: MarkLog::new(),
                backends: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Updates the per-exit counters (the vCPU thread, once or twice per exit). Never
    /// call it from inside a device access that snapshots (the lock is not reentrant):
    /// the vCPU loop counts, releases, then dispatches.
    pub fn count(&self, f: impl FnOnce(&mut LiveExits)) {
        f(&mut lock(&self.inner.live));
    }

    /// A copy of the per-exit counters now.
    pub fn live(&self) -> LiveExits {
        lock(&self.inner.live).clone()
    }

    /// Adds an interrupt line whose asserts are counted in `irq_asserts`.
    pub fn add_irq_line(&self, line: Arc<GsiLine>) {
        lock(&self.inner.irq_lines).push(line);
    }

    /// The phase-mark port's log and counters.
    pub fn mark_log(&self) -> &MarkLog {
        &self.inner.marks
    }

    /// The marks so far, paired into phases.
    pub fn phases(&self) -> Vec<Phase> {
        self.inner.marks.phases()
    }

    /// The vCPU's cumulative KVM counters by name; `None` when the host lacks
    /// `KVM_GET_STATS_FD` or the read failed.
    pub fn kvm(&self) -> Option<BTreeMap<String, u64>> {
        self.inner.kvm.as_ref().ok()?.read().ok()
    }

    /// Why [`Counters::kvm`] is `None` on this host, if it is.
    pub fn kvm_unavailable(&self) -> Option<&str> {
        self.inner.kvm.as_ref().err().map(String::as_str)
    }

    /// Puts the devices' exit counts (`exits`), the models' and the PCI host's counters,
    /// the mark port's counters and the interrupt lines' asserts into `stats`.
    pub fn add_devices(&self, stats: &mut RunStats, mut exits: BTreeMap<Arc<str>, DeviceExits>) {
        let pci = &self.inner.pci;
        for (name, addr, counters) in pci.device_stats() {
            let e = exits.remove(name.as_str()).unwrap_or_default();
            stats.add_device(&name, e, Some(addr.to_string()), counters);
        }
        let host = pci.stats_json();
        let host_exits = exits.remove(pci_bus::HOST_NAME);
        if host.is_some() || host_exits.is_some() {
            stats.add_device(
                pci_bus::HOST_NAME,
                host_exits.unwrap_or_default(),
                None,
                host.unwrap_or_default(),
            );
        }
        for (name, e) in exits {
            let counters = if &*name == bench_mark::NAME {
                self.inner.marks.counters_json()
            } else {
                Value::Null
            };
            stats.add_device(&name, e, None, counters);
        }
        for line in lock(&self.inner.irq_lines).iter() {
            *stats.irq_asserts.entry(line.gsi()).or_default() += line.asserts();
        }
    }

    /// Adds a PV backend's live counters to the snapshots, as `backends.<name>`.
    pub fn add_backend(&self, name: &str, live: crate::backends::LiveStats) {
        lock(&self.inner.backends).push((name.to_owned(), live));
    }

    /// Every counter now, as JSON (docs/bench-protocol.md's SNAP): `exits`, `pio_ports`,
    /// `other_exits`, `unclaimed`, `devices`, `irq_asserts` (every line, zeros too),
    /// `xen` (null without it), `backends` (each PV backend's counters as its thread
    /// last published them, whenever its thread went idle), `kvm` (null when
    /// the host lacks binary stats), `cpu_ns` and `mark_exits`. Every numeric leaf only
    /// grows during a run (except `xen.grant_maps`, a current count); a key missing from
    /// an earlier snapshot (a port, a device first touched later) counts as 0.
    pub fn snapshot(&self) -> Value {
        // Read before the exits (acquire, against the port's release): a mark counted
        // here has its exit counted below, never the other way round.
        let mark_exits = self.inner.marks.mark_exits();
        let LiveExits {
            mut stats,
            device_exits,
        } = self.live();
        self.add_devices(&mut stats, device_exits);
        let xen = self.inner.xen.as_ref().map(|x| x.stats());
        let mut snap = serde_json::Map::new();
        snap.insert("exits".into(), to_json(&stats.exits));
        let ports: serde_json::Map<String, Value> = stats
            .pio_ports
            .iter()
            .map(|(port, n)| (format!("{port:#x}"), Value::from(*n)))
            .collect();
        snap.insert("pio_ports".into(), Value::Object(ports));
        snap.insert("other_exits".into(), to_json(&stats.other_exits));
        snap.insert("unclaimed".into(), to_json(&stats.unclaimed));
        snap.insert("devices".into(), to_json(&stats.devices));
        snap.insert("irq_asserts".into(), to_json(&stats.irq_asserts));
        snap.insert("xen".into(), to_json(&xen));
        let backends: serde_json::Map<String, Value> = lock(&self.inner.backends)
            .iter()
            .map(|(name, live)| (name.clone(), lock(live).clone()))
            .collect();
        snap.insert("backends".into(), Value::Object(backends));
        snap.insert("kvm".into(), to_json(&self.kvm()));
        snap.insert("cpu_ns".into(), to_json(&CpuTime::now()));
        snap.insert("mark_exits".into(), mark_exits.into());
        Value::Object(snap)
    }
}

fn hex_keys<S: Serializer>(map: &BTreeMap<u16, u64>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(map.iter().map(|(port, n)| (format!("{port:#x}"), n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_ports_in_hex_and_counts_others() {
        let mut s = RunStats::default();
        s.exits.io_out = 3;
        s.count_port(0xe9);
        s.count_port(0xe9);
        s.count_port(0x3f8);
        s.count_other("debug");
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["pio_ports"]["0xe9"], 2);
        assert_eq!(v["pio_ports"]["0x3f8"], 1);
        assert_eq!(v["exits"]["io_out"], 3);
        assert_eq!(v["exits"]["other"], 1);
        assert_eq!(v["other_exits"]["debug"], 1);
        assert_eq!(s.exits.total(), 4);
        assert!(v.get("devices").is_none() && v.get("irq_asserts").is_none());
    }

    #[test]
    fn devices_merge_exits_address_and_model_counters() {
        let mut s = RunStats::default();
        let exits = DeviceExits {
            mmio_write: 3,
            ..Default::default()
        };
        s.add_device(
            "e1000-0",
            exits,
            Some("00:03.0".into()),
            serde_json::json!({"tx_packets": 7, "exits": "not mine"}),
        );
        s.add_device("odd", DeviceExits::default(), None, serde_json::json!(5));
        s.irq_asserts.insert(19, 2);
        let v = serde_json::to_value(&s).expect("json");
        let d = &v["devices"]["e1000-0"];
        assert_eq!(d["exits"]["mmio_write"], 3);
        assert_eq!(d["pci"], "00:03.0");
        assert_eq!(d["tx_packets"], 7);
        assert_eq!(v["devices"]["odd"]["counters"], 5);
        assert_eq!(v["irq_asserts"]["19"], 2);
        assert_eq!(exits.total(), 3);
    }
}
