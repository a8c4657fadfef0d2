//! Per-run counters, reported as JSON by `--stats`/`--stats-file`.
//!
//! On machines where the guest's kernel code runs through an instruction emulator,
//! wall-clock time says little; counts of exits by kind and by port say what an I/O path
//! costs. New devices add their own counters here as fields (serde serialises them with
//! no further work).

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

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
    /// Xen hypercalls (port reads from the hypercall page; also counted in `io_in`).
    pub hypercall: u64,
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
