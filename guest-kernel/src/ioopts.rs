//! Command-line options of the I/O workloads: the network services (`net.*`), the
//! block workload (`blk.*`) and how the virtio drivers take interrupts (`virtio.*`). Parsed apart from [`crate::cmdline`] (which only learns
//! their names through [`is_known`]) so that the two grow independently.
//!
//! | option | values | default |
//! |---|---|---|
//! | `net.ip=` | `A.B.C.D/N`: starts the network services on the first (or chosen) vif | off |
//! | `net.gw=` | `A.B.C.D`, the default route | none |
//! | `net.exit-after=` | stop after K TCP connections completed (0: no limit) | `0` |
//! | `net.time-limit=` | stop after S seconds (0: no limit) | `0` |
//! | `net.bulk=` | bytes the bulk service (port 19) sends per connection | `64K` |
//! | `net.seed=` | pattern seed of the bulk stream | `1` |
//! | `net.device=` | `xen:ID` or `ID` (a vif), `e1000:N` (the Nth e1000 on PCI, from 0), `virtio:N` (the Nth virtio-net PCI function, from 0) | Xen's first vif, else the first e1000 |
//! | `blk.workload=` | comma list of `write-pattern`, `verify-pattern`, `seq-read`, `seq-write`, `rand-read`, `rand-write`, `rand-rw`, `durable-writes`, run in order (`durable-writes`: generations of the pattern with flushes at random points, a `blk-durable:` line per completed flush, until killed or `blk.ops=` writes; `host-shim crashtest` drives it) | off |
//! | `blk.device=` | `xen:ID` or `ID` (a vbd), `ide:N` (ATA drive N: 0 primary master, 1 primary slave, 2 secondary master, 3 secondary slave), `virtio:N` (the Nth virtio-blk PCI function, from 0) | Xen's first vbd, else `ide:0` |
//! | `blk.ata=` | `dma` (bus-master DMA) or `pio`, for an `ide:` device | `dma` |
//! | `blk.offset=` | region start, bytes | `0` |
//! | `blk.size=` | region size, bytes | `256K` |
//! | `blk.bs=` | bytes per request | `4K` |
//! | `blk.qd=` | requests in flight, 1..=256 | `8` |
//! | `blk.seed=` | pattern seed | `1` |
//! | `blk.ops=` | requests of a random phase (0: one per block); writes of `durable-writes` (0: until killed) | `0` |
//! | `blk.read-pct=` | reads in `rand-rw`, 0..=100 | `50` |
//! | `blk.verify=` | `on`/`off`: compare reads with the pattern | `on` |
//! | `blk.bench=` | `on`: run the benchmark matrix (`pv_drivers::workload::bench_matrix`) instead of `blk.workload=`, over the region of `blk.offset=`/`blk.size=` | `off` |
//! | `blk.bench-ops=` | requests per benchmark phase, 1..=65536 | `256` |
//! | `blk.bench-idle-ms=` | before the matrix, an idle phase (number 0) of this many milliseconds with no I/O, 0..=60000: the idle guest's exit rate | `0` (none) |
//! | `virtio.msix=` | `on`: a virtio device with a usable MSI-X capability interrupts by message (no ISR read, so no exit, per interrupt); `off`: INTx and the ISR byte, to measure one against the other | `on` |
//!
//! Sizes take `K`/`M`/`G` suffixes ([`crate::cmdline::parse_size`]). Options of a
//! service that is off (e.g. `net.gw=` without `net.ip=`) are errors, so a typo in the
//! enabling option is not silently ignored. For the same reason `blk.bench=on` refuses
//! `blk.workload=` and the options only a workload uses (`blk.bs=`, `blk.qd=`,
//! `blk.ops=`, `blk.read-pct=`, `blk.verify=`: the matrix sets them), and
//! `blk.bench-ops=` and `blk.bench-idle-ms=` need `blk.bench=on`. `blk.seed=` seeds the benchmark's random
//! blocks.

use core::net::Ipv4Addr;

use crate::cmdline::{BadOption, parse_size};
use pv_drivers::workload::{BenchConfig, Config, Phase};

/// Network service options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetOptions<'a> {
    /// The interface address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gw: Option<Ipv4Addr>,
    /// Stop after this many completed TCP connections (0: never).
    pub exit_after: u64,
    /// Stop after this many seconds (0: never).
    pub time_limit_s: u64,
    /// Bytes the bulk service sends per connection.
    pub bulk_bytes: u64,
    /// Pattern seed of the bulk stream.
    pub seed: u64,
    /// The NIC to use; if `None`, the first vif, else the first e1000.
    pub device: Option<NetDeviceSel<'a>>,
}

/// A NIC named by `net.device=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetDeviceSel<'a> {
    /// A Xen PV vif (its xenstore id).
    Xen(&'a str),
    /// The Nth (from 0) Intel e1000 found by the PCI scan.
    E1000(u8),
    /// The Nth (from 0) virtio-net function found by the PCI scan (modern, or
    /// transitional with the modern capabilities).
    Virtio(u8),
}

/// A disk named by `blk.device=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkDeviceSel<'a> {
    /// A Xen PV vbd (its xenstore id).
    Xen(&'a str),
    /// An ATA drive on the PCI IDE controller's legacy channels: 0 primary master,
    /// 1 primary slave, 2 secondary master, 3 secondary slave.
    Ide(u8),
    /// The Nth (from 0) virtio-blk function found by the PCI scan (modern, or
    /// transitional with the modern capabilities).
    Virtio(u8),
}

impl core::fmt::Display for BlkDeviceSel<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Xen(id) => write!(f, "xen:{id}"),
            Self::Ide(n) => write!(f, "ide:{n}"),
            Self::Virtio(n) => write!(f, "virtio:{n}"),
        }
    }
}

impl core::fmt::Display for NetDeviceSel<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Xen(id) => write!(f, "xen:{id}"),
            Self::E1000(n) => write!(f, "e1000:{n}"),
            Self::Virtio(n) => write!(f, "virtio:{n}"),
        }
    }
}

/// How an ATA disk moves data (`blk.ata=`): the driver's own mode.
pub use hw_devices::ata::driver::AtaMode;

/// Most phases one `blk.workload=` runs.
pub const MAX_PHASES: usize = 8;

/// Block workload options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkOptions<'a> {
    /// Phases in order (`phases[..count]`).
    pub phases: [Phase; MAX_PHASES],
    /// How many of `phases` are used.
    pub count: usize,
    /// Everything but the phase.
    pub config: Config,
    /// The disk to use; if `None`, the first vbd, else `ide:0`.
    pub device: Option<BlkDeviceSel<'a>>,
    /// Transfer mode of an ATA disk.
    pub ata: AtaMode,
    /// `blk.bench=on`: the benchmark matrix with this many requests per phase, instead
    /// of the phases (then `count` is 0).
    pub bench_ops: Option<u32>,
    /// `blk.bench-idle-ms=`: the benchmark's idle phase, milliseconds (0: none).
    pub bench_idle_ms: u32,
}

impl BlkOptions<'_> {
    /// The benchmark's settings, if `blk.bench=on`.
    pub fn bench(&self) -> Option<BenchConfig> {
        self.bench_ops.map(|ops| BenchConfig {
            offset: self.config.offset,
            size: self.config.size,
            ops,
            seed: self.config.seed,
        })
    }

    /// The workloads to run, in order.
    pub fn configs(&self) -> impl Iterator<Item = Config> + '_ {
        self.phases[..self.count].iter().map(|&phase| Config {
            phase,
            ..self.config
        })
    }
}

/// How the virtio drivers take interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioOptions {
    /// `virtio.msix=`: use MSI-X where the device has it (else INTx).
    pub msix: bool,
}

impl Default for VirtioOptions {
    fn default() -> Self {
        Self { msix: true }
    }
}

/// What the command line asks of the I/O layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoOptions<'a> {
    /// Network services, if `net.ip=` was given.
    pub net: Option<NetOptions<'a>>,
    /// Block workload, if `blk.workload=` was given.
    pub blk: Option<BlkOptions<'a>>,
    /// The virtio drivers' interrupts (for whichever workload uses a virtio device).
    pub virtio: VirtioOptions,
}

const NET_KEYS: [&str; 7] = [
    "net.ip",
    "net.gw",
    "net.exit-after",
    "net.time-limit",
    "net.bulk",
    "net.seed",
    "net.device",
];
const BLK_KEYS: [&str; 14] = [
    "blk.workload",
    "blk.bench",
    "blk.bench-ops",
    "blk.bench-idle-ms",
    "blk.device",
    "blk.ata",
    "blk.offset",
    "blk.size",
    "blk.bs",
    "blk.qd",
    "blk.seed",
    "blk.ops",
    "blk.read-pct",
    "blk.verify",
];
const VIRTIO_KEYS: [&str; 1] = ["virtio.msix"];
/// Options only `blk.workload=` uses.
const WORKLOAD_ONLY_KEYS: [&str; 5] = ["blk.bs", "blk.qd", "blk.ops", "blk.read-pct", "blk.verify"];
/// Requests per benchmark phase unless `blk.bench-ops=` says otherwise.
pub const DEFAULT_BENCH_OPS: u32 = 256;

/// Whether `key` is one of this module's options.
pub fn is_known(key: &str) -> bool {
    NET_KEYS.contains(&key) || BLK_KEYS.contains(&key) || VIRTIO_KEYS.contains(&key)
}

fn bad<'a>(word: &'a str, expected: &'static str) -> BadOption<'a> {
    BadOption { word, expected }
}

fn parse_cidr(v: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = v.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| (1..=32).contains(p))?;
    Some((addr.parse().ok()?, prefix))
}

fn parse_id(v: &str) -> Option<&str> {
    (!v.is_empty() && v.len() <= 16 && v.bytes().all(|b| b.is_ascii_digit())).then_some(v)
}

/// `N` of `kind:N`, a small decimal index up to `max`.
fn parse_index(v: &str, max: u8) -> Option<u8> {
    if v.is_empty() || v.len() > 3 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|&n| n <= max)
}

fn parse_blk_device(v: &str) -> Option<BlkDeviceSel<'_>> {
    match v.split_once(':') {
        None => parse_id(v).map(BlkDeviceSel::Xen),
        Some(("xen", id)) => parse_id(id).map(BlkDeviceSel::Xen),
        Some(("ide", n)) => parse_index(n, 3).map(BlkDeviceSel::Ide),
        Some(("virtio", n)) => parse_index(n, 31).map(BlkDeviceSel::Virtio),
        Some(_) => None,
    }
}

fn parse_net_device(v: &str) -> Option<NetDeviceSel<'_>> {
    match v.split_once(':') {
        None => parse_id(v).map(NetDeviceSel::Xen),
        Some(("xen", id)) => parse_id(id).map(NetDeviceSel::Xen),
        Some(("e1000", n)) => parse_index(n, 31).map(NetDeviceSel::E1000),
        Some(("virtio", n)) => parse_index(n, 31).map(NetDeviceSel::Virtio),
        Some(_) => None,
    }
}

/// Parses the `net.*` and `blk.*` options of a command line.
pub fn parse(cmdline: &str) -> Result<IoOptions<'_>, BadOption<'_>> {
    let mut net = NetOptions {
        ip: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
        gw: None,
        exit_after: 0,
        time_limit_s: 0,
        bulk_bytes: 64 << 10,
        seed: 1,
        device: None,
    };
    let mut blk = BlkOptions {
        phases: [Phase::VerifyPattern; MAX_PHASES],
        count: 0,
        config: Config::default(),
        device: None,
        ata: AtaMode::Dma,
        bench_ops: None,
        bench_idle_ms: 0,
    };
    let (mut net_on, mut net_other) = (false, None);
    let (mut blk_on, mut blk_other) = (false, None);
    // The last `blk.bench=` word and whether it said on; the first option only a
    // workload uses, and the first only the benchmark uses.
    let (mut bench_word, mut bench_on) = (None, false);
    let (mut workload_only, mut bench_only) = (None, None);
    let mut bench_ops = DEFAULT_BENCH_OPS;
    let mut virtio = VirtioOptions::default();
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, v)) = word.split_once('=') else {
            continue;
        };
        if NET_KEYS.contains(&key) && key != "net.ip" {
            net_other.get_or_insert(word);
        }
        if BLK_KEYS.contains(&key) && key != "blk.workload" && key != "blk.bench" {
            blk_other.get_or_insert(word);
        }
        if WORKLOAD_ONLY_KEYS.contains(&key) {
            workload_only.get_or_insert(word);
        }
        if key == "blk.bench-ops" || key == "blk.bench-idle-ms" {
            bench_only.get_or_insert(word);
        }
        let num = |expected| v.parse::<u64>().map_err(|_| bad(word, expected));
        let size = |expected| parse_size(v).ok_or(bad(word, expected));
        match key {
            "net.ip" => {
                (net.ip, net.prefix) =
                    parse_cidr(v).ok_or(bad(word, "an IPv4 address with a prefix, A.B.C.D/N"))?;
                net_on = true;
            }
            "net.gw" => net.gw = Some(v.parse().map_err(|_| bad(word, "an IPv4 address"))?),
            "net.exit-after" => net.exit_after = num("a number of connections")?,
            "net.time-limit" => net.time_limit_s = num("a number of seconds")?,
            "net.bulk" => net.bulk_bytes = size("a size")?,
            "net.seed" => net.seed = num("a number")?,
            "net.device" => {
                net.device = Some(
                    parse_net_device(v)
                        .ok_or(bad(word, "xen:ID or ID (a vif id), e1000:N or virtio:N"))?,
                )
            }
            "blk.workload" => {
                blk.count = 0;
                for name in v.split(',') {
                    let phase = Phase::parse(name).ok_or(bad(
                        word,
                        "a comma list of write-pattern, verify-pattern, seq-read, seq-write, \
                         rand-read, rand-write, rand-rw, durable-writes",
                    ))?;
                    let slot = blk
                        .phases
                        .get_mut(blk.count)
                        .ok_or(bad(word, "at most 8 phases"))?;
                    *slot = phase;
                    blk.count += 1;
                }
                blk_on = true;
            }
            "blk.device" => {
                blk.device = Some(parse_blk_device(v).ok_or(bad(
                    word,
                    "xen:ID or ID (a vbd id), ide:N with N 0 to 3, or virtio:N",
                ))?)
            }
            "blk.ata" => {
                blk.ata = match v {
                    "dma" => AtaMode::Dma,
                    "pio" => AtaMode::Pio,
                    _ => return Err(bad(word, "dma or pio")),
                }
            }
            "blk.offset" => blk.config.offset = size("a size in bytes")?,
            "blk.size" => {
                blk.config.size = size("a size in bytes")?;
                if blk.config.size == 0 {
                    return Err(bad(word, "a non-zero size"));
                }
            }
            "blk.bs" => {
                blk.config.block = u32::try_from(size("a block size up to 1G")?)
                    .ok()
                    .filter(|&b| b > 0)
                    .ok_or(bad(word, "a block size from 1 to 1G"))?
            }
            "blk.qd" => {
                blk.config.queue_depth = num("a queue depth")?
                    .try_into()
                    .ok()
                    .filter(|q| (1..=256).contains(q))
                    .ok_or(bad(word, "a queue depth from 1 to 256"))?
            }
            "blk.seed" => blk.config.seed = num("a number")?,
            "blk.bench" => {
                bench_on = match v {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad(word, "on or off")),
                };
                bench_word = Some(word);
            }
            "blk.bench-ops" => {
                bench_ops = num("a number of requests")?
                    .try_into()
                    .ok()
                    .filter(|n| (1..=65536).contains(n))
                    .ok_or(bad(word, "a number of requests from 1 to 65536"))?
            }
            "blk.bench-idle-ms" => {
                blk.bench_idle_ms = num("a number of milliseconds")?
                    .try_into()
                    .ok()
                    .filter(|n| *n <= 60_000)
                    .ok_or(bad(word, "a number of milliseconds from 0 to 60000"))?
            }
            "blk.ops" => blk.config.ops = num("a number of requests")?,
            "blk.read-pct" => {
                blk.config.read_percent = num("a percentage")?
                    .try_into()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or(bad(word, "a percentage from 0 to 100"))?
            }
            "blk.verify" => {
                blk.config.verify = match v {
                    "on" | "1" => true,
                    "off" | "0" => false,
                    _ => return Err(bad(word, "on or off")),
                }
            }
            "virtio.msix" => {
                virtio.msix = match v {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad(word, "on or off")),
                }
            }
            _ => {}
        }
    }
    if let (false, Some(word)) = (net_on, net_other) {
        return Err(bad(word, "net.ip= to turn the network services on"));
    }
    if bench_on {
        if let Some(word) = bench_word.filter(|_| blk_on) {
            return Err(bad(word, "either blk.bench=on or blk.workload=, not both"));
        }
        if let Some(word) = workload_only {
            return Err(bad(
                word,
                "no workload option with blk.bench=on (the matrix sets bs and queue depth; \
                 blk.bench-ops= sets the requests)",
            ));
        }
        blk.bench_ops = Some(bench_ops);
        blk_on = true;
    } else if let Some(word) = bench_only {
        return Err(bad(word, "blk.bench=on to turn the benchmark on"));
    }
    if let (false, Some(word)) = (blk_on, blk_other) {
        return Err(bad(
            word,
            "blk.workload= or blk.bench=on to turn the block workload on",
        ));
    }
    Ok(IoOptions {
        net: net_on.then_some(net),
        blk: blk_on.then_some(blk),
        virtio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default() {
        assert_eq!(
            parse("selftest=boot heap=8M").unwrap(),
            IoOptions::default()
        );
    }

    #[test]
    fn net_options() {
        let o = parse(
            "net.ip=10.0.2.15/24 net.gw=10.0.2.2 net.exit-after=3 net.bulk=1M net.seed=7 \
             net.time-limit=30 net.device=1",
        )
        .unwrap();
        let n = o.net.unwrap();
        assert_eq!(n.ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(n.prefix, 24);
        assert_eq!(n.gw, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            (n.exit_after, n.bulk_bytes, n.seed, n.time_limit_s),
            (3, 1 << 20, 7, 30)
        );
        assert_eq!(n.device, Some(NetDeviceSel::Xen("1")));
        assert!(o.blk.is_none());
        let n = parse("net.ip=192.168.1.2/32").unwrap().net.unwrap();
        assert_eq!((n.gw, n.exit_after, n.bulk_bytes), (None, 0, 64 << 10));
    }

    #[test]
    fn blk_options() {
        let o = parse(
            "blk.workload=write-pattern,verify-pattern blk.qd=16 blk.size=1M blk.bs=8K \
             blk.seed=5 blk.offset=64K blk.ops=10 blk.read-pct=70 blk.verify=off blk.device=768",
        )
        .unwrap();
        let b = o.blk.unwrap();
        let phases: Vec<_> = b.configs().map(|c| c.phase).collect();
        assert_eq!(phases, [Phase::WritePattern, Phase::VerifyPattern]);
        let c = b.config;
        assert_eq!(
            (
                c.queue_depth,
                c.size,
                c.block,
                c.seed,
                c.offset,
                c.ops,
                c.read_percent
            ),
            (16, 1 << 20, 8192, 5, 64 << 10, 10, 70)
        );
        assert!(!c.verify);
        assert_eq!(b.device, Some(BlkDeviceSel::Xen("768")));
        assert_eq!(b.ata, AtaMode::Dma);
        let d = parse("blk.workload=rand-rw").unwrap().blk.unwrap();
        assert_eq!(
            d.config,
            Config {
                phase: Phase::VerifyPattern,
                ..Config::default()
            }
        );
        assert_eq!(d.configs().next().unwrap().phase, Phase::RandRw);
        let d = parse("blk.workload=durable-writes blk.ops=100")
            .unwrap()
            .blk
            .unwrap();
        let c = d.configs().next().unwrap();
        assert_eq!((c.phase, c.ops), (Phase::Durability, 100));
    }

    #[test]
    fn virtio_msix_is_on_unless_turned_off() {
        assert!(parse("").unwrap().virtio.msix);
        assert!(parse("virtio.msix=on").unwrap().virtio.msix);
        let o = parse("blk.workload=seq-read blk.device=virtio:0 virtio.msix=off").unwrap();
        assert!(!o.virtio.msix);
        assert!(o.blk.is_some(), "the workload is still on");
        // On its own it turns no workload on, and the last word wins.
        let o = parse("virtio.msix=off virtio.msix=on").unwrap();
        assert_eq!((o.virtio.msix, o.blk, o.net), (true, None, None));
        assert!(is_known("virtio.msix"));
        for bad in [
            "virtio.msix=",
            "virtio.msix=1",
            "virtio.msix=intx",
            "virtio.msix=OFF",
        ] {
            assert_eq!(parse(bad).unwrap_err().word, bad);
        }
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            "net.ip=10.0.2.15",
            "net.ip=10.0.2.15/33",
            "net.ip=10.0.2/24",
            "net.ip=10.0.2.15/0",
            "net.exit-after=many",
            "blk.workload=seq",
            "blk.workload=seq-read,,seq-write",
            "blk.workload=seq-read,seq-read,seq-read,seq-read,seq-read,seq-read,seq-read,seq-read,seq-read",
            "blk.qd=0",
            "blk.qd=257",
            "blk.bs=0",
            "blk.size=0",
            "blk.read-pct=101",
            "blk.verify=maybe",
            "blk.device=../x",
            "net.device=",
            "blk.device=ide:4",
            "blk.device=ide:",
            "blk.device=ide:-1",
            "blk.device=ide:00000",
            "blk.device=ide",
            "blk.device=sata:0",
            "blk.device=xen:",
            "blk.device=xen:a1",
            "blk.device=IDE:0",
            "blk.device=ide:0:1",
            "blk.ata=udma",
            "blk.ata=",
            "net.device=e1000:",
            "net.device=e1000:32",
            "net.device=e1000:x",
            "net.device=e1000",
            "net.device=virtio:",
            "net.device=virtio:32",
            "net.device=virtio",
            "net.device=virtio-net:0",
            "blk.device=virtio:32",
            "blk.device=virtio:x",
            "blk.device=virtio",
            "net.device=xen:",
            "net.device=xen:0x1",
        ] {
            let line = if bad.starts_with("net.ip") || bad.starts_with("blk.workload") {
                bad.to_string()
            } else if bad.starts_with("net.") {
                format!("net.ip=10.0.0.1/8 {bad}")
            } else {
                format!("blk.workload=seq-read {bad}")
            };
            let e = parse(&line).unwrap_err();
            assert_eq!(e.word, bad, "{line}");
        }
    }

    #[test]
    fn bench_options() {
        let b = parse("blk.bench=on blk.size=4M blk.offset=1M blk.device=ide:0 blk.ata=pio")
            .unwrap()
            .blk
            .unwrap();
        assert_eq!(b.count, 0);
        assert_eq!(b.configs().count(), 0);
        assert_eq!(
            (b.device, b.ata),
            (Some(BlkDeviceSel::Ide(0)), AtaMode::Pio)
        );
        assert_eq!(
            b.bench(),
            Some(BenchConfig {
                offset: 1 << 20,
                size: 4 << 20,
                ops: DEFAULT_BENCH_OPS,
                seed: 1,
            })
        );
        let b = parse("blk.bench-ops=32 blk.seed=4 blk.bench=on")
            .unwrap()
            .blk
            .unwrap();
        let c = b.bench().unwrap();
        assert_eq!((c.ops, c.seed, c.size), (32, 4, 256 << 10));
        assert_eq!(b.bench_idle_ms, 0);
        let b = parse("blk.bench=on blk.bench-idle-ms=60000")
            .unwrap()
            .blk
            .unwrap();
        assert_eq!(b.bench_idle_ms, 60_000);
        assert_eq!(
            parse("blk.bench=on blk.bench-ops=65536")
                .unwrap()
                .blk
                .unwrap()
                .bench_ops,
            Some(65536)
        );
        // Off is as if absent; the last word wins.
        assert_eq!(parse("blk.bench=off").unwrap(), IoOptions::default());
        assert!(parse("blk.bench=on blk.bench=off").unwrap().blk.is_none());
        let w = parse("blk.bench=off blk.workload=seq-read")
            .unwrap()
            .blk
            .unwrap();
        assert_eq!((w.count, w.bench_ops), (1, None));
        assert_eq!(w.bench(), None);
    }

    #[test]
    fn bad_bench_command_lines() {
        for (line, word) in [
            ("blk.bench=yes", "blk.bench=yes"),
            ("blk.bench=", "blk.bench="),
            ("blk.bench=ON", "blk.bench=ON"),
            ("blk.bench=on blk.bench-ops=0", "blk.bench-ops=0"),
            ("blk.bench=on blk.bench-ops=65537", "blk.bench-ops=65537"),
            ("blk.bench=on blk.bench-ops=-1", "blk.bench-ops=-1"),
            ("blk.bench=on blk.bench-ops=1K", "blk.bench-ops=1K"),
            (
                "blk.bench=on blk.bench-idle-ms=60001",
                "blk.bench-idle-ms=60001",
            ),
            ("blk.bench=on blk.bench-idle-ms=1s", "blk.bench-idle-ms=1s"),
            ("blk.bench=on blk.size=0", "blk.size=0"),
            ("blk.bench=on blk.size=4Q", "blk.size=4Q"),
            ("blk.bench=on blk.offset=x", "blk.offset=x"),
            // Both engines at once.
            ("blk.bench=on blk.workload=seq-read", "blk.bench=on"),
            ("blk.workload=seq-read blk.bench=on", "blk.bench=on"),
            // Options the matrix sets itself.
            ("blk.bench=on blk.bs=8K", "blk.bs=8K"),
            ("blk.bench=on blk.qd=4", "blk.qd=4"),
            ("blk.bench=on blk.ops=4", "blk.ops=4"),
            ("blk.bench=on blk.verify=off", "blk.verify=off"),
            ("blk.bench=on blk.read-pct=5", "blk.read-pct=5"),
            // The benchmark's option without the benchmark.
            ("blk.bench-ops=32", "blk.bench-ops=32"),
            ("blk.bench=off blk.bench-ops=32", "blk.bench-ops=32"),
            ("blk.bench-idle-ms=100", "blk.bench-idle-ms=100"),
            ("blk.workload=seq-read blk.bench-ops=32", "blk.bench-ops=32"),
            ("blk.bench=off blk.size=4M", "blk.size=4M"),
        ] {
            assert_eq!(parse(line).unwrap_err().word, word, "{line}");
        }
        assert!(is_known("blk.bench") && is_known("blk.bench-ops"));
    }

    #[test]
    fn device_selection() {
        let blk = |line: &str| {
            parse(format!("blk.workload=seq-read {line}").leak())
                .unwrap()
                .blk
                .unwrap()
        };
        let net = |line: &str| {
            parse(format!("net.ip=10.0.0.2/24 {line}").leak())
                .unwrap()
                .net
                .unwrap()
        };
        assert_eq!(blk("").device, None);
        assert_eq!(blk("").ata, AtaMode::Dma);
        assert_eq!(
            blk("blk.device=51712").device,
            Some(BlkDeviceSel::Xen("51712"))
        );
        assert_eq!(
            blk("blk.device=xen:768").device,
            Some(BlkDeviceSel::Xen("768"))
        );
        assert_eq!(blk("blk.device=ide:0").device, Some(BlkDeviceSel::Ide(0)));
        assert_eq!(blk("blk.device=ide:3").device, Some(BlkDeviceSel::Ide(3)));
        let b = blk("blk.device=ide:0 blk.ata=pio");
        assert_eq!(
            (b.device, b.ata),
            (Some(BlkDeviceSel::Ide(0)), AtaMode::Pio)
        );
        assert_eq!(blk("blk.ata=dma").ata, AtaMode::Dma);
        // The last of a repeated option wins, as for every other option.
        assert_eq!(blk("blk.ata=dma blk.ata=pio").ata, AtaMode::Pio);
        assert_eq!(net("").device, None);
        assert_eq!(net("net.device=0").device, Some(NetDeviceSel::Xen("0")));
        assert_eq!(net("net.device=xen:2").device, Some(NetDeviceSel::Xen("2")));
        assert_eq!(
            net("net.device=e1000:0").device,
            Some(NetDeviceSel::E1000(0))
        );
        assert_eq!(
            net("net.device=e1000:31").device,
            Some(NetDeviceSel::E1000(31))
        );
        assert_eq!(
            blk("blk.device=virtio:0").device,
            Some(BlkDeviceSel::Virtio(0))
        );
        assert_eq!(
            blk("blk.device=virtio:31").device,
            Some(BlkDeviceSel::Virtio(31))
        );
        assert_eq!(
            net("net.device=virtio:0").device,
            Some(NetDeviceSel::Virtio(0))
        );
        assert_eq!(
            net("net.device=virtio:7").device,
            Some(NetDeviceSel::Virtio(7))
        );
        assert_eq!(BlkDeviceSel::Virtio(2).to_string(), "virtio:2");
        assert_eq!(NetDeviceSel::Virtio(0).to_string(), "virtio:0");
        assert_eq!(BlkDeviceSel::Ide(0).to_string(), "ide:0");
        assert_eq!(NetDeviceSel::Xen("0").to_string(), "xen:0");
        // blk.ata= alone does not turn the workload on.
        assert_eq!(parse("blk.ata=pio").unwrap_err().word, "blk.ata=pio");
    }

    #[test]
    fn options_of_a_service_that_is_off_are_errors() {
        assert_eq!(
            parse("net.gw=10.0.0.1").unwrap_err().word,
            "net.gw=10.0.0.1"
        );
        assert_eq!(parse("blk.qd=4").unwrap_err().word, "blk.qd=4");
        assert!(is_known("blk.qd") && is_known("net.ip") && !is_known("net.foo"));
    }

    #[test]
    fn the_kernel_options_do_not_report_these_as_unknown() {
        let line = "net.ip=10.0.0.2/24 net.foo=1 blk.workload=seq-read blk.qd=2";
        let o = crate::cmdline::Options::parse(line).unwrap();
        assert_eq!(o.unknown().collect::<Vec<_>>(), ["net.foo=1"]);
    }
}
