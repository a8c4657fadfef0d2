//! The device paths that `host-shim bench`, `crashtest` and `soak` name: one disk path
//! per way the guest reaches a disk, one network path per NIC, each with the shim's
//! `--disk`/`--net` option, the guest's `blk.device=`/`net.device=` option, and where
//! the shim's own counters (its `--stats-file`, `docs/bench-protocol.md` item 2) count
//! the path's requests or frames.

use serde_json::Value;

/// How the guest reaches its disk.
///
/// The order is part of `host-shim crashtest`'s seeds (`path as u64`): append only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskPath {
    /// The PV disk: blkfront to the shim's blkback.
    Xen,
    /// The emulated PIIX3 IDE disk with bus-master DMA.
    IdeDma,
    /// The emulated PIIX3 IDE disk with PIO.
    IdePio,
    /// virtio-blk on the modern virtio-pci transport.
    Virtio,
}

impl DiskPath {
    /// Every path, in report order.
    pub const ALL: [Self; 4] = [Self::Xen, Self::IdeDma, Self::IdePio, Self::Virtio];

    /// The name on every command line (`--paths`, `--disk`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xen => "xen",
            Self::IdeDma => "ide-dma",
            Self::IdePio => "ide-pio",
            Self::Virtio => "virtio",
        }
    }

    /// Parses a name (surrounding blanks allowed).
    pub fn parse(s: &str) -> Result<Self, String> {
        by_name(s, Self::ALL, Self::name)
    }

    /// What the path is, for a report.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Xen => "PV disk, blkfront/blkback",
            Self::IdeDma => "emulated PIIX3 IDE, bus-master DMA",
            Self::IdePio => "emulated PIIX3 IDE, PIO",
            Self::Virtio => "virtio-blk over virtio-pci",
        }
    }

    /// The suffix of the shim's `--disk FILE` and the guest's device options.
    pub const fn device(self) -> (&'static str, &'static str) {
        match self {
            Self::Xen => ("", "blk.device=xen:51712"),
            Self::IdeDma => (",if=ide", "blk.device=ide:0 blk.ata=dma"),
            Self::IdePio => (",if=ide", "blk.device=ide:0 blk.ata=pio"),
            Self::Virtio => (",if=virtio", "blk.device=virtio:0"),
        }
    }

    /// Whether the guest grants pages to the device on this path.
    pub const fn uses_grants(self) -> bool {
        matches!(self, Self::Xen)
    }

    /// Which of the shim's counters [`Self::requests`] reads.
    pub const fn counted_by(self) -> &'static str {
        match self {
            Self::Xen => "blkback: requests of every vbd",
            Self::IdeDma | Self::IdePio => "IDE controller: read, write and flush commands",
            Self::Virtio => "virtio-blk: reads, writes and flushes",
        }
    }

    /// The block requests the shim's device for this path served, from a `stats`
    /// object (one with `devices` and `backends`); `None` if it has no such device.
    pub fn requests(self, stats: &Value) -> Option<u64> {
        match self {
            Self::Xen => sum_named(&stats["backends"], "vbd-", |b| b["requests"].as_u64()),
            Self::IdeDma | Self::IdePio => {
                let commands = stats["devices"]["ide"]["commands"].as_object()?;
                Some(
                    commands
                        .iter()
                        .filter(|(name, _)| is_ata_request(name))
                        .filter_map(|(_, n)| n.as_u64())
                        .sum(),
                )
            }
            Self::Virtio => sum_named(&stats["devices"], "virtio-blk-", |d| {
                let s = &d["device"];
                Some(s["reads"].as_u64()? + s["writes"].as_u64()? + s["flushes"].as_u64()?)
            }),
        }
    }
}

/// Whether an ATA command name (the IDE model's `commands` keys) moves data or flushes.
fn is_ata_request(name: &str) -> bool {
    const REQUESTS: [&str; 7] = [
        "read_sectors",
        "write_sectors",
        "read_multiple",
        "write_multiple",
        "read_dma",
        "write_dma",
        "flush_cache",
    ];
    REQUESTS
        .iter()
        .any(|r| name == *r || name.strip_prefix(r) == Some("_ext"))
}

/// The guest's NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetPath {
    /// The PV NIC: netfront to the shim's netback.
    Xen,
    /// An emulated Intel 82540EM on PCI.
    E1000,
    /// virtio-net on the modern virtio-pci transport.
    Virtio,
}

impl NetPath {
    /// Every path, in report order.
    pub const ALL: [Self; 3] = [Self::Xen, Self::E1000, Self::Virtio];

    /// The name on every command line (`--paths`, `--net`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xen => "xen",
            Self::E1000 => "e1000",
            Self::Virtio => "virtio",
        }
    }

    /// Parses a name (surrounding blanks allowed).
    pub fn parse(s: &str) -> Result<Self, String> {
        by_name(s, Self::ALL, Self::name)
    }

    /// What the path is, for a report.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Xen => "PV NIC, netfront/netback",
            Self::E1000 => "emulated e1000",
            Self::Virtio => "virtio-net over virtio-pci",
        }
    }

    /// The shim's `--net` value for a NIC on `tap`.
    pub fn net_spec(self, tap: &str) -> String {
        match self {
            Self::Xen => format!("tap={tap}"),
            Self::E1000 => format!("tap={tap},model=e1000"),
            Self::Virtio => format!("tap={tap},model=virtio"),
        }
    }

    /// The guest's device option.
    pub const fn guest_option(self) -> &'static str {
        match self {
            Self::Xen => "net.device=xen:0",
            Self::E1000 => "net.device=e1000:0",
            Self::Virtio => "net.device=virtio:0",
        }
    }

    /// Whether the guest grants pages to the device on this path.
    pub const fn uses_grants(self) -> bool {
        matches!(self, Self::Xen)
    }

    /// Which of the shim's counters [`Self::frames`] reads.
    pub const fn counted_by(self) -> &'static str {
        match self {
            Self::Xen => "netback: tx_frames + rx_frames of every vif",
            Self::E1000 => "e1000: tx.frames + rx.frames",
            Self::Virtio => "virtio-net: tx_frames + rx_frames",
        }
    }

    /// The frames the shim's NICs of this path moved, both ways, from a `stats` object
    /// (one with `devices` and `backends`); `None` if it has no such NIC.
    pub fn frames(self, stats: &Value) -> Option<u64> {
        let both = |v: &Value| Some(v["tx_frames"].as_u64()? + v["rx_frames"].as_u64()?);
        match self {
            Self::Xen => sum_named(&stats["backends"], "vif-", both),
            Self::E1000 => sum_named(&stats["devices"], "e1000-", |d| {
                Some(d["tx"]["frames"].as_u64()? + d["rx"]["frames"].as_u64()?)
            }),
            Self::Virtio => sum_named(&stats["devices"], "virtio-net-", |d| {
                both(&d["device"]["net"])
            }),
        }
    }
}

/// The sum of `count` over the members of `map` whose names start with `prefix`;
/// `None` if there is none, or one lacks the counter.
fn sum_named(map: &Value, prefix: &str, count: impl Fn(&Value) -> Option<u64>) -> Option<u64> {
    let mut found = None;
    for (name, v) in map.as_object()? {
        if name.starts_with(prefix) {
            found = Some(found.unwrap_or(0) + count(v)?);
        }
    }
    found
}

/// The path of `all` whose `name` is `s` (surrounding blanks allowed), or an error
/// that lists the known names.
fn by_name<P: Copy, const N: usize>(
    s: &str,
    all: [P; N],
    name: fn(P) -> &'static str,
) -> Result<P, String> {
    let s = s.trim();
    all.into_iter()
        .find(|&p| name(p) == s)
        .ok_or_else(|| format!("unknown path '{s}' (known: {})", all.map(name).join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_round_trip_and_bad_names_list_the_known() {
        for p in DiskPath::ALL {
            assert_eq!(DiskPath::parse(&format!(" {} ", p.name())), Ok(p));
        }
        for p in NetPath::ALL {
            assert_eq!(NetPath::parse(p.name()), Ok(p));
        }
        let e = DiskPath::parse("e1000").unwrap_err();
        assert!(e.contains("known: xen, ide-dma, ide-pio, virtio"), "{e}");
        let e = NetPath::parse("ide-dma").unwrap_err();
        assert!(e.contains("known: xen, e1000, virtio"), "{e}");
        assert!(NetPath::parse("").is_err());
        // crashtest's seeds use the discriminants.
        assert_eq!(DiskPath::ALL.map(|p| p as u64), [0, 1, 2, 3]);
    }

    #[test]
    fn the_benchmark_names_exactly_these_paths() {
        let ours: Vec<&str> = DiskPath::ALL
            .map(DiskPath::name)
            .into_iter()
            .chain(NetPath::ALL.map(NetPath::name))
            .collect();
        for p in crate::bench::PATHS {
            assert!(ours.contains(&p), "{p}");
            assert_eq!(crate::bench::parse_path(p), Ok(p.to_owned()));
        }
        for p in ours {
            assert!(crate::bench::PATHS.contains(&p), "{p}");
        }
        assert!(crate::bench::parse_path("ide").is_err());
    }

    /// The shapes the shim's `--stats-file` has (taken from real runs).
    fn stats() -> Value {
        json!({
            "backends": {
                "vbd-51712": {"requests": 2257},
                "vif-0": {"tx_frames": 10, "rx_frames": 12},
            },
            "devices": {
                "ide": {"commands": {"flush_cache_ext": 1, "identify": 1, "read_dma": 465,
                                     "set_features": 1, "write_dma": 2583,
                                     "read_native_max_ext": 1, "write_sectors_ext": 4}},
                "virtio-blk-0": {"device": {"reads": 465, "writes": 2583, "flushes": 1,
                                            "get_ids": 3}},
                "e1000-0": {"tx": {"frames": 7}, "rx": {"frames": 9}},
                "virtio-net-0": {"device": {"net": {"tx_frames": 100, "rx_frames": 101}}},
                "pci-host": {"config_reads": 53},
            },
        })
    }

    #[test]
    fn each_path_counts_its_own_device() {
        let s = stats();
        assert_eq!(DiskPath::Xen.requests(&s), Some(2257));
        assert_eq!(DiskPath::IdeDma.requests(&s), Some(1 + 465 + 2583 + 4));
        assert_eq!(DiskPath::IdePio.requests(&s), DiskPath::IdeDma.requests(&s));
        assert_eq!(DiskPath::Virtio.requests(&s), Some(465 + 2583 + 1));
        assert_eq!(NetPath::Xen.frames(&s), Some(22));
        assert_eq!(NetPath::E1000.frames(&s), Some(16));
        assert_eq!(NetPath::Virtio.frames(&s), Some(201));
    }

    #[test]
    fn an_absent_device_or_counter_is_none_not_zero() {
        let empty = json!({"backends": {}, "devices": {"pci-host": {}}});
        for p in DiskPath::ALL {
            assert_eq!(p.requests(&empty), None, "{p:?}");
        }
        for p in NetPath::ALL {
            assert_eq!(p.frames(&empty), None, "{p:?}");
        }
        let partial = json!({"backends": {"vif-0": {"tx_frames": 1}}, "devices": {}});
        assert_eq!(NetPath::Xen.frames(&partial), None);
    }
}
