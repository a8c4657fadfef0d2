//! `host-shim soak`: many block requests and packets through one shim, and nothing grows
//! (#16).
//!
//! One child `host-shim run` (this binary, `run`) boots the guest with a PV disk
//! (blkback on an image file) and a PV NIC (netback on a TAP), inside a network
//! namespace this command makes (its TAP, its addresses and every packet stay in it).
//! The guest runs its block workload first and then serves the network, so the soak
//! has two windows, each bracketed by samples taken when nothing is in flight:
//!
//! - block: `write-pattern` over the region (the warm-up: blkfront grows its pool of
//!   granted buffers to the queue depth and keeps it), then `rand-rw` phases with
//!   verification; the guest prints `blk: resources: ...` after each phase
//!   (`kernel::memory::resources`), and the soak samples the shim when it reads one.
//!   The window runs from the line after the warm-up to the last.
//! - network: flood pings from the host side (`ping -f`, several in flight) in chunks;
//!   before the first chunk and after each, the control port's `stats` answer gives the
//!   guest's counters and its resources, and the soak samples the shim.
//!
//! A sample: the shim's RSS (`VmRSS`), open file descriptors (`/proc/PID/fd`) and
//! threads (`Threads`), and the guest's free grant references, free frames and free
//! heap. In each window the first and last sample must agree: free grants and frames
//! not fewer, fds and threads not more, RSS at most [`RSS_SLACK_KIB`] more (the guest's
//! RAM is the shim's anonymous memory, so pages the guest touches for the first time
//! count too, as do the allocator's arenas). The heap is reported, not judged (smoltcp's
//! buffers for a connection come and go). Requests and frames are counted by the
//! shim's own blkback and netback (its `--stats-file`), not by the guest.
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

/// The guest's block region (and the image's size).
pub const REGION: u64 = 1 << 20;
/// Requests the guest keeps in flight.
pub const QUEUE_DEPTH: u32 = 8;
/// Echo requests `ping` keeps in flight (`-l`).
pub const PING_PRELOAD: u32 = 8;
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
    /// Block requests, at least (after the warm-up).
    pub requests: u64,
    /// Frames through netback, both ways, at least.
    pub packets: u64,
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

    /// The guest's command line.
    pub fn cmdline(&self) -> String {
        let phases = vec!["rand-rw"; self.block_phases as usize].join(",");
        format!(
            "blk.workload=write-pattern,{phases} blk.ops={} blk.size={REGION} blk.qd={QUEUE_DEPTH} \
             blk.device=xen:51712 net.device=xen:0 net.ip={GUEST_IP}/24",
            self.ops_per_phase
        )
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
    /// The guest.
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
            "free_grants": self.guest.free_grants,
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
    /// At the window's first and last sample.
    pub first: i64,
    pub last: i64,
    /// The growth allowed (in use; for free counts, the drop allowed).
    pub slack: i64,
    /// Whether it grew beyond the slack.
    pub grew: bool,
}

/// The checks of one window, `first` against `last`.
pub fn judge(first: &Sample, last: &Sample) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut used = |what, a: u64, b: u64, slack: u64| {
        let (a, b, s) = (a as i64, b as i64, slack as i64);
        checks.push(Check {
            what,
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
    let mut free = |what, a: u64, b: u64| {
        let (a, b) = (a as i64, b as i64);
        checks.push(Check {
            what,
            first: a,
            last: b,
            slack: 0,
            grew: b < a,
        });
    };
    free(
        "guest free grant refs",
        first.guest.free_grants.unwrap_or(0),
        last.guest.free_grants.unwrap_or(0),
    );
    free(
        "guest free frames",
        first.guest.free_frames,
        last.guest.free_frames,
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
    for name in ["block", "network"] {
        let w = window(name);
        let checks = match (w.first(), w.last()) {
            (Some(a), Some(b)) if w.len() >= 2 => judge(a, b),
            _ => Vec::new(),
        };
        grew |= checks.iter().any(|c| c.grew);
        windows.push(json!({
            "window": name,
            "checks": checks.iter().map(|c| json!({
                "what": c.what, "first": c.first, "last": c.last,
                "slack": c.slack, "grew": c.grew,
            })).collect::<Vec<_>>(),
        }));
    }
    let reached = o.requests >= opts.requests && o.frames >= opts.packets;
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
        "requests_wanted": opts.requests,
        "packets_wanted": opts.packets,
        "blkback_requests": o.requests,
        "netback_frames": o.frames,
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
            "queue_depth": QUEUE_DEPTH,
            "ping_preload": PING_PRELOAD,
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
    s.push_str(&format!(
        "soak: {} block requests (blkback), {} frames (netback; {} echo requests, {} replies) in {} s\n",
        doc["blkback_requests"], doc["netback_frames"], doc["echo_requests_sent"],
        doc["echo_replies"], doc["seconds"]
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
            x["free_grants"].to_string(),
            x["free_frames"].to_string(),
            x["heap_free"].to_string()
        ));
    }
    for w in doc["windows"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{} window, first sample against last:\n",
            w["window"].as_str().unwrap_or("?")
        ));
        let checks = w["checks"].as_array().cloned().unwrap_or_default();
        if checks.is_empty() {
            s.push_str("  (not reached)\n");
        }
        for c in checks {
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
            doc["blkback_requests"],
            doc["requests_wanted"],
            doc["netback_frames"],
            doc["packets_wanted"]
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
            .arg(&image)
            .arg("--net")
            .arg(format!("tap={TAP}"))
            .arg("--cmdline")
            .arg(plan.cmdline())
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
        "shim pid {} started: {} rand-rw phases of {} requests after a warm-up, then {} \
         ping runs of {} echo requests",
        shim.child.id(),
        plan.block_phases,
        plan.ops_per_phase,
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
    match counts(&dir.join("stats.json")) {
        Ok((r, f)) => (out.requests, out.frames) = (r, f),
        Err(e) => out.error = Some(e),
    }
    out
}

/// Requests through blkback and frames through netback (both ways), from the shim's
/// `--stats-file`.
fn counts(path: &Path) -> Result<(u64, u64), String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("cannot read the shim's counters {}: {e}", path.display()))?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the shim's counters {}: {e}", path.display()))?;
    backend_counts(&doc).ok_or_else(|| format!("no vbd or vif counters in {}", path.display()))
}

/// Requests of every vbd and frames of every vif in a `--stats` document.
pub fn backend_counts(doc: &Value) -> Option<(u64, u64)> {
    let backends = doc["stats"]["backends"].as_object()?;
    let (mut requests, mut frames, mut seen) = (0, 0, (false, false));
    for (name, b) in backends {
        if name.starts_with("vbd-") {
            requests += b["requests"].as_u64()?;
            seen.0 = true;
        } else if name.starts_with("vif-") {
            frames += b["tx_frames"].as_u64()? + b["rx_frames"].as_u64()?;
            seen.1 = true;
        }
    }
    (seen.0 && seen.1).then_some((requests, frames))
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
    let boot_limit = opts.timeout + Duration::from_secs(REGION / 4096 / MIN_RATE);
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
        let guest = GuestResources::parse(rest)
            .ok_or_else(|| format!("cannot read the guest's resources in '{line}'"))?;
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
    let base = net_sample(shim, "start".into(), 0, at())?;
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
                &PING_PRELOAD.to_string(),
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
        let (s, frames, rest) = net_sample(shim, format!("run {k}"), base_frames, at())?;
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
fn net_sample(
    shim: &Shim,
    label: String,
    base_frames: u64,
    at_s: f64,
) -> Result<(Sample, u64, String), String> {
    let answer = control("stats", Duration::from_secs(30))?;
    let guest = GuestResources::parse(&answer)
        .ok_or_else(|| format!("no resources in the guest's stats answer '{answer}'"))?;
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
        let line = Plan::new(100, 100, 1).cmdline();
        assert!(
            line.starts_with("blk.workload=write-pattern,rand-rw,rand-rw blk.ops=50 "),
            "{line}"
        );
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

    #[test]
    fn backend_counts_add_both_directions() {
        let doc = json!({"stats": {"backends": {
            "vbd-51712": {"requests": 2257},
            "vif-0": {"tx_frames": 10, "rx_frames": 12},
        }}});
        assert_eq!(backend_counts(&doc), Some((2257, 22)));
        assert_eq!(backend_counts(&json!({"stats": {"backends": {}}})), None);
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
        let same = judge(&a, &sample(20_000 + RSS_SLACK_KIB, 12, 6, 1004, 31310));
        assert!(same.iter().all(|c| !c.grew), "{same:?}");
        let shrunk = judge(&a, &sample(19_000, 11, 5, 1010, 31400));
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
            let grew: Vec<_> = judge(&a, &b).into_iter().filter(|c| c.grew).collect();
            assert_eq!(grew.len(), 1, "{what}: {grew:?}");
            assert_eq!(grew[0].what, what);
        }
    }
}
