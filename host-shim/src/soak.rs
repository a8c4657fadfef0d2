//! `host-shim soak`: many block requests and packets through one shim, and nothing grows
//! (#16).
//!
//! One child `host-shim run` (this binary, `run`) boots the guest with one disk on an
//! image file and one NIC on a TAP, each on the path `--disk`/`--net` names
//! ([`crate::paths`]: the PV disk or NIC, IDE with DMA or PIO, e1000, virtio-blk or
//! virtio-net), inside a network namespace this command makes (its TAP, its addresses
//! and every packet stay in it).
//! The guest runs its block workload first and then serves the network, so the soak
//! has two windows, each bracketed by samples taken when nothing is in flight:
//!
//! - block: `write-pattern` over the region (the warm-up: blkfront grows its pool of
//!   granted buffers to the queue depth and keeps it; other drivers touch their DMA
//!   memory), then `rand-rw` phases of [`Options::block_size`] requests, every read
//!   verified; the guest prints `blk: resources: ...` after each phase
//!   (`kernel::memory::resources`), and the soak samples the shim when it reads one.
//!   The window runs from the line after the warm-up to the last.
//! - network: flood pings from the host side (`ping -f`, several in flight) in chunks;
//!   before the first chunk and after each, the control port's `stats` answer gives the
//!   guest's counters and its resources, and the soak samples the shim.
//!
//! A sample: the shim's RSS (`VmRSS`), open file descriptors (`/proc/PID/fd`) and
//! threads (`Threads`), and the guest's free grant references, free frames and free
//! heap. In each window the first and last sample must agree: free grants (only where
//! the window's path uses grants: elsewhere they are reported as not applicable) and
//! frames not fewer, fds and threads not more, RSS at most [`RSS_SLACK_KIB`] more (the
//! guest's RAM is the shim's anonymous memory, so pages the guest touches for the first
//! time count too, as do the allocator's arenas). The heap is reported, not judged (smoltcp's
//! buffers for a connection come and go). Requests and frames are counted by the
//! shim's own device of each path (blkback, the IDE controller's commands, virtio-blk;
//! netback, e1000, virtio-net: [`DiskPath::requests`], [`NetPath::frames`] on its
//! `--stats-file`), not by the guest.
//!
//! Where the time goes on a kvm-pvm host (every guest ring-0 instruction emulated, about
//! 0.8 us each; counted with KVM's `insn_emulation`): a PV `rand-rw` request of 4 KiB
//! costs about 8,300 emulated instructions, one of 512 bytes about 2,700 (about 470 of
//! them filling the written blocks with the pattern, 470 verifying the read ones, the
//! rest the workload engine, blkfront, its ring and its wake-ups); IDE with DMA 1,840,
//! virtio-blk 2,190, IDE with PIO 2,550 and 137 port exits. The bytes are the part that
//! a soak need not pay for, so its requests are [`DEFAULT_BLOCK_SIZE`] bytes by default:
//! the same ring, grant, descriptor and interrupt work per request, every read still
//! verified. A flood-ping frame costs 1,000-1,600 (smoltcp, the driver, the wake-ups).
//!
//! Every wait is bounded: a phase may take [`Options::timeout`] plus its work at
//! [`MIN_RATE`] per second; the child gets SIGKILL if this process dies.

use std::fs;
use std::io::{self, BufRead as _, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::paths::{DiskPath, NetPath};

/// The guest's block region (and the image's size).
pub const REGION: u64 = 1 << 20;
/// Requests the guest keeps in flight.
pub const QUEUE_DEPTH: u32 = 8;
/// Bytes per block request unless `--block-size` says otherwise: one sector.
pub const DEFAULT_BLOCK_SIZE: u32 = 512;
/// Smallest and largest `--block-size` (sectors, up to one 64 KiB request).
pub const BLOCK_SIZE_RANGE: (u32, u32) = (512, 64 << 10);
/// Echo requests `ping` keeps in flight (`-l`) unless `--ping-preload` says otherwise.
/// Each wake-up of the guest's network loop then finds more frames to serve: measured
/// here (KVM's `insn_emulation` over netback's frames), 1,385 emulated guest
/// instructions a frame at 32 against 1,633 at 8 and 2,501 at 2; 64 gains nothing more.
pub const DEFAULT_PING_PRELOAD: u32 = 32;
/// How much the shim's RSS may grow over a window, KiB.
pub const RSS_SLACK_KIB: u64 = 4096;
/// The slowest rate (requests or echoes per second) a bounded wait allows for.
pub const MIN_RATE: u64 = 10;
/// Most `rand-rw` phases (the guest runs at most 8 phases, one is the warm-up).
pub const MAX_BLOCK_PHASES: u32 = 7;
/// Exit status when something grew or a count was not reached.
pub const EXIT_GREW: u8 = 1;
/// Exit status when the soak could not run to its end.
pub const EXIT_FAILED: u8 = 2;

const TAP: &str = "soak0";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 7, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 7, 2);
const CONTROL_PORT: u16 = 5;

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The `host-shim` binary started as the shim (normally this one).
    pub shim: PathBuf,
    /// The disk's path.
    pub disk: DiskPath,
    /// The NIC's path.
    pub net: NetPath,
    /// Bytes per block request: a multiple of 512 in [`BLOCK_SIZE_RANGE`].
    pub block_size: u32,
    /// Block requests after the warm-up, at least.
    pub requests: u64,
    /// Frames through the NIC, both ways, at least.
    pub packets: u64,
    /// Echo requests in flight (`ping -l`), 1..=64.
    pub ping_preload: u32,
    /// Samples between the first and the last of each window.
    pub samples: u32,
    /// Where the image and the shim's counters go (kept); default a temporary
    /// directory, removed afterwards.
    pub dir: Option<PathBuf>,
    /// The longest wait for a step beyond its work at [`MIN_RATE`].
    pub timeout: Duration,
    /// Only the JSON report on stdout.
    pub json: bool,
}

/// How the work is split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `rand-rw` phases after the warm-up.
    pub block_phases: u32,
    /// Requests per phase.
    pub ops_per_phase: u64,
    /// Ping runs.
    pub ping_chunks: u32,
    /// Echo requests per run (each is two frames through netback).
    pub echoes_per_chunk: u64,
}

impl Plan {
    /// Splits `requests` and `packets` for `samples` samples inside each window.
    pub fn new(requests: u64, packets: u64, samples: u32) -> Self {
        let block_phases = samples.saturating_add(1).min(MAX_BLOCK_PHASES);
        let ping_chunks = samples.saturating_add(1);
        Self {
            block_phases,
            ops_per_phase: requests.div_ceil(u64::from(block_phases)).max(1),
            ping_chunks,
            echoes_per_chunk: packets.div_ceil(2).div_ceil(u64::from(ping_chunks)).max(1),
        }
    }

    /// The guest's command line for a disk on `disk`, a NIC on `net` and requests of
    /// `block_size` bytes.
    pub fn cmdline(&self, disk: DiskPath, net: NetPath, block_size: u32) -> String {
        let phases = vec!["rand-rw"; self.block_phases as usize].join(",");
        format!(
            "blk.workload=write-pattern,{phases} blk.ops={} blk.size={REGION} blk.bs={block_size} \
             blk.qd={QUEUE_DEPTH} {} {} net.ip={GUEST_IP}/24",
            self.ops_per_phase,
            disk.device().1,
            net.guest_option()
        )
    }
}

/// Checks `--block-size`: whole sectors, within [`BLOCK_SIZE_RANGE`].
pub fn check_block_size(bytes: u64) -> Result<u32, String> {
    let (lo, hi) = BLOCK_SIZE_RANGE;
    match u32::try_from(bytes) {
        Ok(b) if (lo..=hi).contains(&b) && b.is_multiple_of(512) => Ok(b),
        _ => Err(format!(
            "--block-size {bytes} is not a multiple of 512 between {lo} and {hi} bytes"
        )),
    }
}

/// The guest's resources, from a `free_grants=G free_frames=F heap_free=H` text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestResources {
    /// Free grant references (`None`: no Xen).
    pub free_grants: Option<u64>,
    /// Free frames of the frame allocator.
    pub free_frames: u64,
    /// Free heap bytes.
    pub heap_free: u64,
}

impl GuestResources {
    /// Parses the `key=value` words anywhere in `text`; `None` if one is missing or bad.
    pub fn parse(text: &str) -> Option<Self> {
        let word = |key: &str| {
            text.split([' ', ','])
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        };
        let free_grants = match word("free_grants")? {
            "none" => None,
            g => Some(g.parse().ok()?),
        };
        Some(Self {
            free_grants,
            free_frames: word("free_frames")?.parse().ok()?,
            heap_free: word("heap_free")?.parse().ok()?,
        })
    }
}

/// The shim process's resources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostResources {
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
}

/// `VmRSS` (KiB) and `Threads` of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some((field("VmRSS")?, field("Threads")?))
}

/// Samples process `pid`.
pub fn sample_process(pid: u32) -> io::Result<HostResources> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let (rss_kib, threads) = parse_status(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no VmRSS or Threads in its status",
        )
    })?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(HostResources {
        rss_kib,
        fds,
        threads,
    })
}

/// Echo requests sent and replies received, from `ping -q`'s summary.
pub fn parse_ping(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(',')
        .map(|part| part.split_whitespace().next()?.parse::<u64>().ok());
    Some((nums.next()??, nums.next()??))
}

/// Requests, errors and mismatches of a block workload result line
/// (`blk: rand-rw: ops N (...), ..., errors E, protocol errors P, mismatches M, ...`).
pub fn parse_block_result(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.strip_prefix("blk: ")?;
    let (_, rest) = rest.split_once(": ops ")?;
    let ops = rest.split_whitespace().next()?.parse().ok()?;
    let after = |key: &str| -> Option<u64> {
        let at = rest.find(key)? + key.len();
        rest[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let errors = after(", errors ")? + after("protocol errors ")?;
    Some((ops, errors, after("mismatches ")?))
}

/// Frames the guest received and sent, from its `stats` answer (`rx N frames ..., tx M
/// frames ...`).
pub fn parse_guest_frames(answer: &str) -> Option<(u64, u64)> {
    let num = |key: &str| -> Option<u64> {
        let at = answer.find(key)? + key.len();
        answer[at..].split_whitespace().next()?.parse().ok()
    };
    Some((num("rx ")?, num("tx ")?))
}

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// `block` or `network`.
    pub window: &'static str,
    /// What preceded it (`warm-up`, `phase 2`, `chunk 1`, ...).
    pub label: String,
    /// Seconds since the shim started.
    pub at_s: f64,
    /// Requests (block) or frames (network) the guest reported so far in this window.
    pub work: u64,
    /// The shim.
    pub host: HostResources,
    /// The guest; its free grants `None` where the window's path uses no grants.
    pub guest: GuestResources,
}

impl Sample {
    fn to_json(&self) -> Value {
        json!({
            "window": self.window,
            "after": self.label,
            "at_s": (self.at_s * 10.0).round() / 10.0,
            "work": self.work,
            "rss_kib": self.host.rss_kib,
            "fds": self.host.fds,
            "threads": self.host.threads,
            "free_grants": self.guest.free_grants.map_or(json!("n/a"), |g| json!(g)),
            "free_frames": self.guest.free_frames,
            "heap_free": self.guest.heap_free,
        })
    }
}

/// One judged quantity of a window: first, last, and whether it grew.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// What.
    pub what: &'static str,
    /// Whether it applies to the window's path (free grants do only on Xen paths); one
    /// that does not has no figures and never grew.
    pub applies: bool,
    /// At the window's first and last sample.
    pub first: i64,
    pub last: i64,
    /// The growth allowed (in use; for free counts, the drop allowed).
    pub slack: i64,
    /// Whether it grew beyond the slack.
    pub grew: bool,
}

/// The checks of one window, `first` against `last`; `grants`: whether the window's
/// path uses grants (else its free grants are not judged, and say so).
pub fn judge(first: &Sample, last: &Sample, grants: bool) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut used = |what, a: u64, b: u64, slack: u64| {
        let (a, b, s) = (a as i64, b as i64, slack as i64);
        checks.push(Check {
            what,
            applies: true,
            first: a,
            last: b,
            slack: s,
            grew: b - a > s,
        });
    };
    used(
        "shim RSS (KiB)",
        first.host.rss_kib,
        last.host.rss_kib,
        RSS_SLACK_KIB,
    );
    used("shim open fds", first.host.fds, last.host.fds, 0);
    used("shim threads", first.host.threads, last.host.threads, 0);
    // `None`: not applicable to the window's path.
    let mut free = |what, figures: Option<(u64, u64)>| {
        let (a, b) = figures.map_or((0, 0), |(a, b)| (a as i64, b as i64));
        checks.push(Check {
            what,
            applies: figures.is_some(),
            first: a,
            last: b,
            slack: 0,
            grew: b < a,
        });
    };
    free(
        "guest free grant refs",
        grants.then(|| {
            (
                first.guest.free_grants.unwrap_or(0),
                last.guest.free_grants.unwrap_or(0),
            )
        }),
    );
    free(
        "guest free frames",
        Some((first.guest.free_frames, last.guest.free_frames)),
    );
    checks
}

/// The run's outcome before the report.
struct Outcome {
    samples: Vec<Sample>,
    requests: u64,
    frames: u64,
    echoes: (u64, u64),
    seconds: f64,
    error: Option<String>,
}

/// Runs the soak; returns the exit status. Errors of the checks are one line on
/// `stderr` and status 125.
pub fn run(opts: &Options, stdout: &mut dyn Write, stderr: &mut dyn Write) -> u8 {
    if let Err(e) = preflight(opts) {
        crate::cli::report(stderr, &e);
        return crate::EXIT_SHIM_ERROR;
    }
    let (dir, temporary) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("host-shim-soak-{}", std::process::id())),
            true,
        ),
    };
    if let Err(e) = fs::create_dir_all(&dir) {
        crate::cli::report(stderr, &format!("cannot create {}: {e}", dir.display()));
        return crate::EXIT_SHIM_ERROR;
    }
    let plan = Plan::new(opts.requests, opts.packets, opts.samples);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (progress_tx, progress_rx) = mpsc::channel::<String>();
    let (o, d) = (opts.clone(), dir.clone());
    // The child is started by this thread and dies with it (PR_SET_PDEATHSIG follows
    // the thread), so the thread lives until the child is gone.
    let worker = thread::Builder::new().name("soak".into()).spawn(move || {
        if let Err(e) = crate::hostio::netns::enter_private() {
            let _ = ready_tx.send(Err(format!(
                "cannot enter a private network namespace (needs CAP_SYS_ADMIN and \
                 CAP_NET_ADMIN; run as root): {e}"
            )));
            return None;
        }
        let tap = crate::hostio::netns::ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])
            .and_then(|()| crate::hostio::netns::address_tap(TAP, HOST_IP));
        if let Err(e) = tap {
            let _ = ready_tx.send(Err(format!("cannot set up {TAP}: {e}")));
            return None;
        }
        let _ = ready_tx.send(Ok(()));
        Some(soak(&o, &plan, &d, &progress_tx))
    });
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            crate::cli::report(stderr, &format!("cannot start the soak thread: {e}"));
            return crate::EXIT_SHIM_ERROR;
        }
    };
    if let Ok(Err(e)) | Err(e) = ready_rx
        .recv()
        .map_err(|_| "the soak thread died".to_owned())
    {
        let _ = worker.join();
        if temporary {
            let _ = fs::remove_dir_all(&dir);
        }
        crate::cli::report(stderr, &e);
        return crate::EXIT_SHIM_ERROR;
    }
    for line in progress_rx {
        if !opts.json {
            let _ = writeln!(stderr, "soak: {line}");
        }
    }
    let outcome = match worker.join() {
        Ok(Some(o)) => o,
        _ => {
            crate::cli::report(stderr, "the soak thread panicked");
            return EXIT_FAILED;
        }
    };
    if temporary {
        let _ = fs::remove_dir_all(&dir);
    }
    let (report, status) = report(opts, &plan, &outcome);
    if opts.json {
        let _ = writeln!(stdout, "{report}");
    } else {
        let _ = write!(stdout, "{}", text(&report));
    }
    if let Some(e) = &outcome.error {
        crate::cli::report(stderr, e);
    }
    status
}

fn preflight(opts: &Options) -> Result<(), String> {
    for (tool, package) in [("ping", "iputils-ping"), ("ip", "iproute2")] {
        if !crate::bench::on_path(tool) {
            return Err(format!("{tool} is not on PATH (Debian package {package})"));
        }
    }
    let kernel = crate::vmm::Kernel::from_file(&opts.kernel).map_err(|e| e.to_string())?;
    crate::elf::parse(&kernel.image)
        .map_err(|e| format!("kernel {} is not a PVH ELF: {e}", opts.kernel.display()))?;
    Ok(())
}

/// The report as JSON, and the exit status.
fn report(opts: &Options, plan: &Plan, o: &Outcome) -> (Value, u8) {
    let window =
        |name: &str| -> Vec<&Sample> { o.samples.iter().filter(|s| s.window == name).collect() };
    let mut windows = Vec::new();
    let mut grew = false;
    let paths = [
        ("block", opts.disk.name(), opts.disk.uses_grants()),
        ("network", opts.net.name(), opts.net.uses_grants()),
    ];
    for (name, path, grants) in paths {
        let w = window(name);
        let (checks, span) = match (w.first(), w.last()) {
            (Some(a), Some(b)) if w.len() >= 2 => (
                judge(a, b, grants),
                Some((b.at_s - a.at_s, b.work - a.work)),
            ),
            _ => (Vec::new(), None),
        };
        grew |= checks.iter().any(|c| c.grew);
        windows.push(json!({
            "window": name,
            "path": path,
            "seconds": span.map(|(t, _)| (t * 10.0).round() / 10.0),
            "work": span.map(|(_, n)| n),
            "work_per_s": span.map(|(t, n)| rate(n, t)),
            "checks": checks.iter().map(|c| if c.applies {
                json!({
                    "what": c.what, "applies": true, "first": c.first, "last": c.last,
                    "slack": c.slack, "grew": c.grew,
                })
            } else {
                json!({
                    "what": c.what, "applies": false, "first": null, "last": null,
                    "slack": null, "grew": false,
                    "why": format!("the {path} path uses no grants"),
                })
            }).collect::<Vec<_>>(),
        }));
    }
    // The device's count includes the warm-up (one write a block of the region), so
    // the requests after it are what the device counted beyond those; the guest's own
    // count of them must agree, or the device did not serve what the guest says.
    let warm_up = REGION / u64::from(opts.block_size);
    let after_warm_up = o.requests.saturating_sub(warm_up);
    let guest_after_warm_up = o
        .samples
        .iter()
        .filter(|s| s.window == "block")
        .map(|s| s.work)
        .max()
        .unwrap_or(0);
    let reached = after_warm_up >= opts.requests
        && after_warm_up >= guest_after_warm_up
        && o.frames >= opts.packets;
    let status = if o.error.is_some() {
        EXIT_FAILED
    } else if grew || !reached {
        EXIT_GREW
    } else {
        0
    };
    let doc = json!({
        "passed": status == 0,
        "error": o.error,
        "disk": {
            "path": opts.disk.name(),
            "device": opts.disk.describe(),
            "counted_by": opts.disk.counted_by(),
        },
        "net": {
            "path": opts.net.name(),
            "device": opts.net.describe(),
            "counted_by": opts.net.counted_by(),
        },
        "requests_wanted": opts.requests,
        "packets_wanted": opts.packets,
        "block_requests": o.requests,
        "block_requests_after_warm_up": after_warm_up,
        "guest_requests_after_warm_up": guest_after_warm_up,
        "frames": o.frames,
        "echo_requests_sent": o.echoes.0,
        "echo_replies": o.echoes.1,
        "counts_reached": reached,
        "grew": grew,
        "seconds": (o.seconds * 10.0).round() / 10.0,
        "requests_per_s": rate(o.requests, o.seconds),
        "plan": {
            "block_phases": plan.block_phases,
            "ops_per_phase": plan.ops_per_phase,
            "ping_runs": plan.ping_chunks,
            "echoes_per_run": plan.echoes_per_chunk,
            "region_bytes": REGION,
            "block_size": opts.block_size,
            "queue_depth": QUEUE_DEPTH,
            "ping_preload": opts.ping_preload,
        },
        "rss_slack_kib": RSS_SLACK_KIB,
        "windows": windows,
        "samples": o.samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
    });
    (doc, status)
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs).round()
    } else {
        0.0
    }
}

/// The report as text: the samples, then each window's first and last.
pub fn text(doc: &Value) -> String {
    let mut s = String::new();
    let path = |key: &str| {
        format!(
            "{} ({})",
            doc[key]["path"].as_str().unwrap_or("?"),
            doc[key]["device"].as_str().unwrap_or("?")
        )
    };
    s.push_str(&format!(
        "soak: disk {}, NIC {}\n",
        path("disk"),
        path("net")
    ));
    s.push_str(&format!(
        "soak: {} block requests of {} bytes ({}), {} frames ({}; {} echo requests, {} \
         replies) in {} s\n",
        doc["block_requests"],
        doc["plan"]["block_size"],
        doc["disk"]["counted_by"].as_str().unwrap_or("?"),
        doc["frames"],
        doc["net"]["counted_by"].as_str().unwrap_or("?"),
        doc["echo_requests_sent"],
        doc["echo_replies"],
        doc["seconds"]
    ));
    s.push_str(&format!(
        "{:<8} {:<10} {:>8} {:>9} {:>9} {:>5} {:>7} {:>11} {:>11} {:>9}\n",
        "window",
        "after",
        "at s",
        "work",
        "RSS KiB",
        "fds",
        "threads",
        "free grants",
        "free frames",
        "heap free"
    ));
    for x in doc["samples"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:<8} {:<10} {:>8} {:>9} {:>9} {:>5} {:>7} {:>11} {:>11} {:>9}\n",
            x["window"].as_str().unwrap_or("?"),
            x["after"].as_str().unwrap_or("?"),
            x["at_s"].to_string(),
            x["work"].to_string(),
            x["rss_kib"].to_string(),
            x["fds"].to_string(),
            x["threads"].to_string(),
            x["free_grants"]
                .as_str()
                .map_or_else(|| x["free_grants"].to_string(), str::to_owned),
            x["free_frames"].to_string(),
            x["heap_free"].to_string()
        ));
    }
    for w in doc["windows"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{} window on {}: {} {} in {} s ({} a second), first sample against last:\n",
            w["window"].as_str().unwrap_or("?"),
            w["path"].as_str().unwrap_or("?"),
            w["work"],
            if w["window"] == "block" {
                "requests (guest's count)"
            } else {
                "frames (guest's count)"
            },
            w["seconds"],
            w["work_per_s"]
        ));
        let checks = w["checks"].as_array().cloned().unwrap_or_default();
        if checks.is_empty() {
            s.push_str("  (not reached)\n");
        }
        for c in checks {
            if c["applies"] == false {
                s.push_str(&format!(
                    "  {:<22} n/a ({})\n",
                    c["what"].as_str().unwrap_or("?"),
                    c["why"].as_str().unwrap_or("")
                ));
                continue;
            }
            let (a, b) = (
                c["first"].as_i64().unwrap_or(0),
                c["last"].as_i64().unwrap_or(0),
            );
            s.push_str(&format!(
                "  {:<22} {:>9} -> {:>9} ({:+}) {}\n",
                c["what"].as_str().unwrap_or("?"),
                a,
                b,
                b - a,
                if c["grew"] == true {
                    "GREW".to_owned()
                } else if c["slack"].as_i64().unwrap_or(0) > 0 {
                    format!("ok (up to +{} allowed)", c["slack"])
                } else {
                    "ok".to_owned()
                }
            ));
        }
    }
    let verdict = if doc["error"].is_string() {
        format!("soak: FAILED: {}", doc["error"].as_str().unwrap_or(""))
    } else if doc["passed"] == true {
        "soak: PASS (nothing grew, counts reached)".to_owned()
    } else if doc["counts_reached"] != true {
        format!(
            "soak: FAIL: counts not reached ({} of {} requests, {} of {} frames)",
            doc["block_requests"], doc["requests_wanted"], doc["frames"], doc["packets_wanted"]
        )
    } else {
        "soak: FAIL: something grew".to_owned()
    };
    s.push_str(&verdict);
    s.push('\n');
    s
}

/// The running shim: its process, console lines and stderr tail.
struct Shim {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
    started: Instant,
}

impl Shim {
    fn start(opts: &Options, plan: &Plan, dir: &Path) -> Result<Self, String> {
        let image = dir.join("soak.img");
        fs::write(&image, vec![0u8; REGION as usize])
            .map_err(|e| format!("cannot write {}: {e}", image.display()))?;
        let _ = fs::remove_file(dir.join("stats.json"));
        // A backstop only: every step has its own bound.
        let work = opts.requests + opts.packets;
        let backstop = opts.timeout.as_secs() * 8 + work / MIN_RATE * 2;
        let mut cmd = Command::new(&opts.shim);
        cmd.arg("run")
            .arg("--kernel")
            .arg(&opts.kernel)
            .arg("--disk")
            .arg(format!("{}{}", image.display(), opts.disk.device().0))
            .arg("--net")
            .arg(opts.net.net_spec(TAP))
            .arg("--cmdline")
            .arg(plan.cmdline(opts.disk, opts.net, opts.block_size))
            .arg("--stats-file")
            .arg(dir.join("stats.json"))
            .arg("--timeout")
            .arg(backstop.max(1).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        crate::crashtest::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", opts.shim.display()))?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = child
            .stderr
            .take()
            .map(|e| thread::spawn(move || crate::crashtest::read_tail(e)));
        Ok(Self {
            child,
            lines,
            stderr,
            started: Instant::now(),
        })
    }

    fn sample(&self) -> Result<HostResources, String> {
        sample_process(self.child.id()).map_err(|e| format!("cannot sample the shim: {e}"))
    }

    /// The next console line within `limit`.
    fn line(&self, limit: Duration, waiting_for: &str) -> Result<String, String> {
        match self.lines.recv_timeout(limit) {
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => {
                Err(format!("no {waiting_for} within {} s", limit.as_secs()))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(format!("the shim ended before {waiting_for}"))
            }
        }
    }

    /// Waits up to `grace` for the shim to end (it writes its counters as it exits),
    /// then kills it if it still runs; its stderr tail.
    fn stop(mut self, grace: Duration) -> String {
        let end = Instant::now() + grace;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < end {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// Sends `command` to the control port, returns the first answer line.
fn control(command: &str, limit: Duration) -> Result<String, String> {
    let addr = SocketAddr::from((GUEST_IP, CONTROL_PORT));
    let io = |e: io::Error| format!("control port: {e}");
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(io)?;
    s.set_read_timeout(Some(limit)).map_err(io)?;
    s.set_write_timeout(Some(limit)).map_err(io)?;
    s.write_all(format!("{command}\n").as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(io)?;
    if line.is_empty() {
        return Err("control port: closed without an answer".into());
    }
    Ok(line.trim_end().to_owned())
}

/// The block window, then the network window, then the shim's own counts.
fn soak(opts: &Options, plan: &Plan, dir: &Path, progress: &mpsc::Sender<String>) -> Outcome {
    let say = |s: String| {
        let _ = progress.send(s);
    };
    let mut out = Outcome {
        samples: Vec::new(),
        requests: 0,
        frames: 0,
        echoes: (0, 0),
        seconds: 0.0,
        error: None,
    };
    let shim = match Shim::start(opts, plan, dir) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    say(format!(
        "shim pid {} started (disk {}, NIC {}): {} rand-rw phases of {} requests of {} bytes \
         after a warm-up, then {} ping runs of {} echo requests",
        shim.child.id(),
        opts.disk.name(),
        opts.net.name(),
        plan.block_phases,
        plan.ops_per_phase,
        opts.block_size,
        plan.ping_chunks,
        plan.echoes_per_chunk
    ));
    let result = drive(opts, plan, &shim, &mut out, &say);
    out.seconds = shim.started.elapsed().as_secs_f64();
    let stderr = shim.stop(if result.is_ok() {
        opts.timeout
    } else {
        Duration::ZERO
    });
    if let Err(e) = result {
        let tail = stderr.trim().replace('\n', " | ");
        out.error = Some(if tail.is_empty() {
            e
        } else {
            format!("{e}; shim stderr: [{tail}]")
        });
        return out;
    }
    match counts(&dir.join("stats.json"), opts.disk, opts.net) {
        Ok((r, f)) => (out.requests, out.frames) = (r, f),
        Err(e) => out.error = Some(e),
    }
    out
}

/// Requests through the disk's device and frames through the NIC's (both ways), from
/// the shim's `--stats-file`.
fn counts(path: &Path, disk: DiskPath, net: NetPath) -> Result<(u64, u64), String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("cannot read the shim's counters {}: {e}", path.display()))?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the shim's counters {}: {e}", path.display()))?;
    let stats = &doc["stats"];
    let requests = disk
        .requests(stats)
        .ok_or_else(|| format!("no {} disk counters in {}", disk.name(), path.display()))?;
    let frames = net
        .frames(stats)
        .ok_or_else(|| format!("no {} NIC counters in {}", net.name(), path.display()))?;
    Ok((requests, frames))
}

fn drive(
    opts: &Options,
    plan: &Plan,
    shim: &Shim,
    out: &mut Outcome,
    say: &dyn Fn(String),
) -> Result<(), String> {
    let at = || shim.started.elapsed().as_secs_f64();
    // Block window: a resources line before the warm-up, after it, after each phase.
    let phase_limit = opts.timeout + Duration::from_secs(plan.ops_per_phase / MIN_RATE);
    let boot_limit =
        opts.timeout + Duration::from_secs(REGION / u64::from(opts.block_size) / MIN_RATE);
    let mut resources_lines = 0u32;
    let mut requests = 0u64;
    loop {
        let limit = if resources_lines < 2 {
            boot_limit
        } else {
            phase_limit
        };
        let line = shim.line(limit, "block workload progress")?;
        if let Some((ops, errors, mismatches)) = parse_block_result(&line) {
            if errors + mismatches > 0 {
                return Err(format!("the block workload failed: {line}"));
            }
            if resources_lines >= 2 {
                requests += ops;
            }
        }
        if line == "blk: FAIL" {
            return Err("the guest's block workload said FAIL".into());
        }
        if line == "blk: PASS" {
            break;
        }
        let Some(rest) = line.strip_prefix("blk: resources: ") else {
            continue;
        };
        let mut guest = GuestResources::parse(rest)
            .ok_or_else(|| format!("cannot read the guest's resources in '{line}'"))?;
        if !opts.disk.uses_grants() {
            guest.free_grants = None;
        }
        resources_lines += 1;
        // The line before any request is the boot's: blkfront's pool is not grown yet.
        if resources_lines == 1 {
            say(format!("guest before the warm-up: {rest}"));
            continue;
        }
        let label = if resources_lines == 2 {
            "warm-up".to_owned()
        } else {
            format!("phase {}", resources_lines - 2)
        };
        let host = shim.sample()?;
        say(format!(
            "block {label}: {requests} requests, RSS {} KiB, {} fds, {} threads, {rest}",
            host.rss_kib, host.fds, host.threads
        ));
        out.samples.push(Sample {
            window: "block",
            label,
            at_s: at(),
            work: requests,
            host,
            guest,
        });
    }
    if resources_lines != plan.block_phases + 2 {
        return Err(format!(
            "the guest printed {resources_lines} resource lines for {} phases",
            plan.block_phases + 1
        ));
    }
    // Network window.
    let limit = opts.timeout;
    loop {
        if shim
            .line(limit, "the network services")?
            .starts_with("net: serving")
        {
            break;
        }
    }
    let deadline = Instant::now() + limit;
    while !Command::new("ping")
        .args(["-c", "1", "-W", "1", &GUEST_IP.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        if Instant::now() > deadline {
            return Err(format!(
                "the guest did not answer pings within {} s",
                limit.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
    // One query first: the first connection's ARP and socket set-up are not the soak's.
    control("stats", limit)?;
    let grants = opts.net.uses_grants();
    let base = net_sample(shim, "start".into(), 0, at(), grants)?;
    let base_frames = base.1;
    say(format!("network start: {}", base.2));
    out.samples.push(base.0);
    let chunk_limit = opts.timeout + Duration::from_secs(plan.echoes_per_chunk / MIN_RATE);
    for k in 1..=plan.ping_chunks {
        let run = Command::new("ping")
            .args([
                "-f",
                "-q",
                "-l",
                &opts.ping_preload.to_string(),
                "-c",
                &plan.echoes_per_chunk.to_string(),
                "-w",
                &chunk_limit.as_secs().max(1).to_string(),
                &GUEST_IP.to_string(),
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ping: {e}"))?;
        let text = String::from_utf8_lossy(&run.stdout);
        let (sent, got) = parse_ping(&text).ok_or_else(|| {
            format!(
                "ping run {k} printed no summary: {}",
                String::from_utf8_lossy(&run.stderr).trim()
            )
        })?;
        out.echoes.0 += sent;
        out.echoes.1 += got;
        let (s, frames, rest) = net_sample(shim, format!("run {k}"), base_frames, at(), grants)?;
        say(format!(
            "network run {k}: {sent} echo requests, {got} replies; guest frames {}, RSS {} KiB, \
             {} fds, {} threads, {rest}",
            frames - base_frames,
            s.host.rss_kib,
            s.host.fds,
            s.host.threads
        ));
        out.samples.push(s);
    }
    let bye = control("exit", limit)?;
    if bye != "bye" {
        return Err(format!("the control port answered '{bye}' to exit"));
    }
    // The shim writes its counters when the guest has stopped.
    loop {
        let line = shim.line(limit, "the guest's end");
        match line {
            Ok(l) if l.starts_with("net: FAIL") => {
                return Err("the guest's network said FAIL".into());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// A network sample: the guest's `stats` answer and the shim's resources; also the
/// guest's frames so far (received plus sent) and the answer's resources text.
/// `grants`: whether the NIC's path uses grants (else the free grants are left out).
fn net_sample(
    shim: &Shim,
    label: String,
    base_frames: u64,
    at_s: f64,
    grants: bool,
) -> Result<(Sample, u64, String), String> {
    let answer = control("stats", Duration::from_secs(30))?;
    let mut guest = GuestResources::parse(&answer)
        .ok_or_else(|| format!("no resources in the guest's stats answer '{answer}'"))?;
    if !grants {
        guest.free_grants = None;
    }
    let (rx, tx) = parse_guest_frames(&answer)
        .ok_or_else(|| format!("no frame counters in the guest's stats answer '{answer}'"))?;
    let host = shim.sample()?;
    let rest = answer
        .find("free_grants=")
        .map_or(String::new(), |i| answer[i..].to_owned());
    Ok((
        Sample {
            window: "network",
            label,
            at_s,
            work: (rx + tx).saturating_sub(base_frames),
            host,
            guest,
        },
        rx + tx,
        rest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_the_counts() {
        let p = Plan::new(1_000_000, 1_000_000, 3);
        assert_eq!((p.block_phases, p.ops_per_phase), (4, 250_000));
        assert_eq!((p.ping_chunks, p.echoes_per_chunk), (4, 125_000));
        let p = Plan::new(10, 7, 100);
        assert_eq!((p.block_phases, p.ops_per_phase), (MAX_BLOCK_PHASES, 2));
        assert!(u64::from(p.block_phases) * p.ops_per_phase >= 10);
        assert!(u64::from(p.ping_chunks) * p.echoes_per_chunk * 2 >= 7);
        let line = Plan::new(100, 100, 1).cmdline(DiskPath::Xen, NetPath::Xen, 512);
        assert!(
            line.starts_with("blk.workload=write-pattern,rand-rw,rand-rw blk.ops=50 "),
            "{line}"
        );
        assert!(line.contains(" blk.bs=512 "), "{line}");
        assert!(
            line.contains(" blk.device=xen:51712 net.device=xen:0 "),
            "{line}"
        );
        let line = Plan::new(100, 100, 1).cmdline(DiskPath::IdePio, NetPath::E1000, 4096);
        assert!(line.contains(" blk.bs=4096 "), "{line}");
        assert!(
            line.contains(" blk.device=ide:0 blk.ata=pio net.device=e1000:0 "),
            "{line}"
        );
        let line = Plan::new(100, 100, 1).cmdline(DiskPath::Virtio, NetPath::Virtio, 512);
        assert!(
            line.contains(" blk.device=virtio:0 net.device=virtio:0 "),
            "{line}"
        );
    }

    #[test]
    fn block_sizes_are_whole_sectors_up_to_64k() {
        assert_eq!(check_block_size(512), Ok(512));
        assert_eq!(check_block_size(64 << 10), Ok(64 << 10));
        for bad in [0, 256, 1000, (64 << 10) + 512, 1 << 40] {
            assert!(check_block_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn guest_resources_parse_from_either_line() {
        let r = GuestResources::parse("free_grants=1004 free_frames=31310 heap_free=4117184");
        assert_eq!(
            r,
            Some(GuestResources {
                free_grants: Some(1004),
                free_frames: 31310,
                heap_free: 4117184
            })
        );
        let stats = "rx 4013 frames 3080920 bytes, tx 4004 frames 3080248 bytes, dropped rx 0 \
                     tx 0, ... 0 tx bytes, free_grants=822 free_frames=31128 heap_free=3083912";
        assert_eq!(GuestResources::parse(stats).unwrap().free_grants, Some(822));
        assert_eq!(parse_guest_frames(stats), Some((4013, 4004)));
        assert_eq!(
            GuestResources::parse("free_grants=none free_frames=1 heap_free=2")
                .unwrap()
                .free_grants,
            None
        );
        for bad in [
            "",
            "free_grants=1 free_frames=x heap_free=2",
            "free_frames=1 heap_free=2",
        ] {
            assert_eq!(GuestResources::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn proc_status_and_ping_summaries_parse() {
        let status = "Name:\thost-shim\nVmPeak:\t  9 kB\nVmRSS:\t   18432 kB\nThreads:\t7\n";
        assert_eq!(parse_status(status), Some((18432, 7)));
        assert_eq!(parse_status("Name: x\n"), None);
        let ping = "--- 10.0.7.2 ping statistics ---\n2000 packets transmitted, 1998 received, \
                    0% packet loss, time 12672ms\n";
        assert_eq!(parse_ping(ping), Some((2000, 1998)));
        assert_eq!(parse_ping("nothing"), None);
        let me = sample_process(std::process::id()).expect("own /proc");
        assert!(me.rss_kib > 0 && me.fds > 0 && me.threads > 0, "{me:?}");
    }

    #[test]
    fn block_results_parse() {
        let ok = "blk: rand-rw: ops 2000 (reads 991, writes 1009, flushes 0), bytes read 1 \
                  written 2, errors 0, protocol errors 0, mismatches 0, abandoned 0, in-flight \
                  max 8, 15257186 us";
        assert_eq!(parse_block_result(ok), Some((2000, 0, 0)));
        let bad = ok.replace(
            "errors 0, protocol errors 0, mismatches 0",
            "errors 1, protocol errors 2, mismatches 359",
        );
        assert_eq!(parse_block_result(&bad), Some((2000, 3, 359)));
        assert_eq!(parse_block_result("blk: rand-rw: 7 waits, 7 events"), None);
    }

    fn sample(rss: u64, fds: u64, threads: u64, grants: u64, frames: u64) -> Sample {
        Sample {
            window: "block",
            label: String::new(),
            at_s: 0.0,
            work: 0,
            host: HostResources {
                rss_kib: rss,
                fds,
                threads,
            },
            guest: GuestResources {
                free_grants: Some(grants),
                free_frames: frames,
                heap_free: 0,
            },
        }
    }

    #[test]
    fn growth_is_judged_against_the_stated_slack() {
        let a = sample(20_000, 12, 6, 1004, 31310);
        let same = judge(
            &a,
            &sample(20_000 + RSS_SLACK_KIB, 12, 6, 1004, 31310),
            true,
        );
        assert!(same.iter().all(|c| !c.grew), "{same:?}");
        let shrunk = judge(&a, &sample(19_000, 11, 5, 1010, 31400), true);
        assert!(shrunk.iter().all(|c| !c.grew), "{shrunk:?}");
        for (b, what) in [
            (
                sample(20_001 + RSS_SLACK_KIB, 12, 6, 1004, 31310),
                "shim RSS (KiB)",
            ),
            (sample(20_000, 13, 6, 1004, 31310), "shim open fds"),
            (sample(20_000, 12, 7, 1004, 31310), "shim threads"),
            (sample(20_000, 12, 6, 1003, 31310), "guest free grant refs"),
            (sample(20_000, 12, 6, 1004, 31309), "guest free frames"),
        ] {
            let grew: Vec<_> = judge(&a, &b, true).into_iter().filter(|c| c.grew).collect();
            assert_eq!(grew.len(), 1, "{what}: {grew:?}");
            assert_eq!(grew[0].what, what);
        }
    }

    #[test]
    fn grants_are_not_applicable_off_xen_and_the_rest_is_still_judged() {
        let a = sample(20_000, 12, 6, 1004, 31310);
        // Free grants would have dropped, but the path uses none: not judged, said so.
        let checks = judge(&a, &sample(20_000, 12, 6, 900, 31310), false);
        assert_eq!(checks.len(), 5, "{checks:?}");
        let grants = checks
            .iter()
            .find(|c| c.what == "guest free grant refs")
            .unwrap();
        assert!(!grants.applies && !grants.grew, "{grants:?}");
        assert!(
            checks
                .iter()
                .filter(|c| c.what != grants.what)
                .all(|c| c.applies)
        );
        for b in [
            sample(20_000, 13, 6, 1004, 31310),
            sample(20_000, 12, 7, 1004, 31310),
            sample(20_000, 12, 6, 1004, 31309),
            sample(20_001 + RSS_SLACK_KIB, 12, 6, 1004, 31310),
        ] {
            assert_eq!(
                judge(&a, &b, false).iter().filter(|c| c.grew).count(),
                1,
                "{b:?}"
            );
        }
    }
}
