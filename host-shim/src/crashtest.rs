//! `host-shim crashtest`: flush, then kill -9 (#16).
//!
//! Per disk path (the PV disk through blkback, IDE with FLUSH CACHE, virtio-blk with
//! its flush) and round: the region of one image file is filled with generation 0 of
//! the round's seed and synced; a child `host-shim run` boots the guest with the
//! `durable-writes` workload on it (`pv_drivers::workload::Phase::Durability`), which
//! writes generation after generation and prints a `blk-durable: gen=G next=N` line
//! after each flush that completed; after the k-th such line and a random delay (both
//! derived from `--seed`) the child gets SIGKILL; then every 512-byte sector of the
//! region is checked ([`check_region`]) against the last durable point the child
//! printed. A sector that holds no generation the point allows is data loss.
//!
//! Every round starts from a fresh generation 0 on the same image (so rounds do not
//! depend on each other's timing), and with a seed of its own.
//!
//! What this proves: a flush that the shim reported complete had put the data where
//! a SIGKILL of the shim cannot take it away, i.e. the shim answers a flush only after
//! the writes before it reached the host kernel (and its `fdatasync`). The host's page
//! cache survives the kill, so this is not a power-loss test.
//!
//! Lines are only counted when whole (ending in a newline), and every line the child
//! printed before it died counts, also those read after the kill: the guest prints a
//! point only after its flush completed. Lines lost in a buffer only make the check
//! weaker, never wrong. Every wait is bounded ([`Options::timeout`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use pv_drivers::pattern;
use pv_drivers::workload::{DurablePoint, generation_seed};
use serde_json::{Value, json};

use crate::paths::DiskPath;

/// Bytes per request of the guest's writer (its `blk.bs=`).
pub const BLOCK: u32 = 4096;
/// Sector size of the check.
pub const SECTOR: usize = 512;
/// The kill comes after durable line 1 to this.
pub const KILL_AFTER_LINES_MAX: u64 = 5;
/// Then after a delay of 0 to this many milliseconds.
pub const KILL_DELAY_MAX_MS: u64 = 1000;
/// Exit status when some sector was lost.
pub const EXIT_LOSS: u8 = 1;
/// Exit status when some round could not be run (no loss found in those that ran).
pub const EXIT_ROUND_FAILED: u8 = 2;
/// Smallest and largest `--size`.
pub const SIZE_RANGE: (u64, u64) = (2 * BLOCK as u64, 1 << 30);
/// Bytes of a console line kept; the rest of a longer line is dropped.
const LINE_MAX: usize = 4096;
/// How long the child's output may take to end after the kill.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);

/// Checks `--size`: whole blocks, within [`SIZE_RANGE`].
pub fn check_size(size: u64) -> Result<u64, String> {
    if !size.is_multiple_of(u64::from(BLOCK)) || !(SIZE_RANGE.0..=SIZE_RANGE.1).contains(&size) {
        return Err(format!(
            "--size {size} is not a multiple of {BLOCK} between {} and {} bytes",
            SIZE_RANGE.0, SIZE_RANGE.1
        ));
    }
    Ok(size)
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The `host-shim` binary started for each round (normally this one).
    pub shim: PathBuf,
    /// The paths, in order, without repeats.
    pub paths: Vec<DiskPath>,
    /// Kills per path.
    pub rounds: u32,
    /// Seed of everything random: the kill moments and each round's pattern seed.
    pub seed: u64,
    /// Bytes of the region (and of the image).
    pub size: u64,
    /// Where the images go; `None`: a temporary directory, removed afterwards unless
    /// a loss was found.
    pub dir: Option<PathBuf>,
    /// Requests the guest keeps in flight.
    pub queue_depth: u32,
    /// The longest wait for the first durable line of a round, and for each later one.
    pub timeout: Duration,
    /// Only the JSON report on stdout.
    pub json: bool,
}

/// splitmix64: the round's random numbers, each a function of the seed and a label.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The random choices of one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundPlan {
    /// The guest's pattern seed (`blk.seed=`).
    pub seed: u64,
    /// Kill after this many durable lines (1..=[`KILL_AFTER_LINES_MAX`]) ...
    pub after_lines: u64,
    /// ... and then this many milliseconds (0..[`KILL_DELAY_MAX_MS`]).
    pub delay_ms: u64,
}

impl RoundPlan {
    /// The plan of round `round` (from 0) on `path`, from `seed`.
    pub fn new(seed: u64, path: DiskPath, round: u32) -> Self {
        let base = mix(seed ^ mix(path as u64 + 1) ^ mix(u64::from(round) << 8));
        Self {
            seed: mix(base ^ 1),
            after_lines: 1 + mix(base ^ 2) % KILL_AFTER_LINES_MAX,
            delay_ms: mix(base ^ 3) % KILL_DELAY_MAX_MS,
        }
    }
}

/// Why one sector failed the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    /// It holds a whole generation older than the durable point allows.
    Stale(u64),
    /// Part of it holds a generation, the rest something else.
    Torn,
    /// All zero.
    Zero,
    /// It holds a generation the guest cannot have reached yet.
    Ahead(u64),
    /// Nothing the guest wrote.
    Garbage,
}

impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stale(g) => write!(f, "stale (generation {g})"),
            Self::Torn => f.write_str("torn"),
            Self::Zero => f.write_str("zeroed"),
            Self::Ahead(g) => write!(f, "generation {g}, beyond any the guest reached"),
            Self::Garbage => f.write_str("garbage"),
        }
    }
}

/// One lost sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loss {
    /// Byte offset of the sector in the image.
    pub offset: u64,
    /// The oldest generation it was allowed to hold.
    pub wanted: u64,
    /// What it held.
    pub kind: LossKind,
}

/// What [`check_region`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Sectors checked.
    pub sectors: u64,
    /// Sectors that failed.
    pub lost: u64,
    /// The first few of them.
    pub first_losses: Vec<Loss>,
    /// Sectors holding a generation newer than the point required (writes after it,
    /// or in flight at the kill: the kill landed while the guest was writing).
    pub newer: u64,
    /// The newest generation found.
    pub max_generation: u64,
}

/// Losses kept in [`Verdict::first_losses`].
const LOSSES_KEPT: usize = 8;
/// Generations searched past the plausible bound to name an [`LossKind::Ahead`].
const AHEAD_SEARCH: u64 = 4096;

/// Checks `region` (the bytes of the image from `offset`, written by the durability
/// phase in blocks of `block` bytes with pattern seed `seed`) against `point`, the last
/// durable point printed before the kill (`None`: none was printed, so only
/// generation 0 is promised). A sector of a block before `point.next` must hold a
/// whole generation of at least `point.generation`, any other one at least
/// `point.generation - 1`, and none newer than `max_generation`.
pub fn check_region(
    region: &[u8],
    offset: u64,
    block: u32,
    seed: u64,
    point: Option<DurablePoint>,
    max_generation: u64,
) -> Verdict {
    let mut v = Verdict::default();
    for (i, sector) in region.chunks(SECTOR).enumerate() {
        let at = i as u64 * SECTOR as u64;
        let wanted = match point {
            Some(p) if at / u64::from(block) < p.next => p.generation,
            Some(p) => p.generation - 1,
            None => 0,
        };
        v.sectors += 1;
        let holds =
            |g: u64| pattern::check(generation_seed(seed, g), offset + at, sector).is_none();
        if let Some(g) = (wanted..=max_generation).find(|&g| holds(g)) {
            v.newer += u64::from(g > wanted);
            v.max_generation = v.max_generation.max(g);
            continue;
        }
        let kind = if let Some(g) = (0..wanted).rev().find(|&g| holds(g)) {
            LossKind::Stale(g)
        } else if let Some(g) =
            (max_generation + 1..=max_generation + AHEAD_SEARCH).find(|&g| holds(g))
        {
            LossKind::Ahead(g)
        } else if sector.iter().all(|&b| b == 0) {
            LossKind::Zero
        } else if partly_written(sector, offset + at, seed, max_generation + AHEAD_SEARCH) {
            LossKind::Torn
        } else {
            LossKind::Garbage
        };
        v.lost += 1;
        if v.first_losses.len() < LOSSES_KEPT {
            v.first_losses.push(Loss {
                offset: offset + at,
                wanted,
                kind,
            });
        }
    }
    v
}

/// Whether some 8-byte word of `sector` (at byte `at` of the disk) holds the pattern
/// of a generation up to `max`.
fn partly_written(sector: &[u8], at: u64, seed: u64, max: u64) -> bool {
    sector.chunks_exact(8).enumerate().any(|(j, w)| {
        let index = (at + 8 * j as u64) / 8;
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        (0..=max).any(|g| pattern::word(generation_seed(seed, g), index) == w)
    })
}

/// Blocks written up to `p`.
fn written(p: DurablePoint, blocks: u64) -> u64 {
    (p.generation - 1)
        .saturating_mul(blocks)
        .saturating_add(p.next)
}

/// One console line of the child and when it arrived.
struct Line {
    at: Instant,
    text: String,
}

/// Reads whole lines from `r` into `tx`; returns the last lines seen (for errors).
fn read_lines(mut r: impl Read, tx: mpsc::Sender<Line>) -> Vec<String> {
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let mut line = Vec::new();
    let mut overlong = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                line.clear();
                if !std::mem::take(&mut overlong) {
                    if tail.len() == 20 {
                        tail.pop_front();
                    }
                    tail.push_back(text.clone());
                    let _ = tx.send(Line {
                        at: Instant::now(),
                        text,
                    });
                }
            } else if line.len() < LINE_MAX {
                line.push(b);
            } else {
                overlong = true;
            }
        }
    }
    tail.into()
}

/// Has the child `cmd` starts get SIGKILL when the thread that starts it dies
/// (`PR_SET_PDEATHSIG`): a shim left behind by a crashed or killed command must not run
/// on alone.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only makes one
    // async-signal-safe system call; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Reads everything from `r`, keeping the last 8 KiB (a child's stderr, for errors).
pub(crate) fn read_tail(mut r: impl Read) -> String {
    let mut keep = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        keep.extend_from_slice(&buf[..n]);
        if keep.len() > 8192 {
            keep.drain(..keep.len() - 8192);
        }
    }
    String::from_utf8_lossy(&keep).into_owned()
}

/// The result of the reader thread `h` if it ends before `deadline` (a pipe that
/// something else still holds open may keep it reading: then it is left behind).
fn join_by<T>(h: thread::JoinHandle<T>, deadline: Instant) -> Option<T> {
    while !h.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    if h.is_finished() { h.join().ok() } else { None }
}

/// What one round did.
#[derive(Clone, Debug)]
pub struct RoundResult {
    /// Its plan.
    pub plan: RoundPlan,
    /// Durable lines the child printed.
    pub lines: u64,
    /// The last durable point.
    pub point: Option<DurablePoint>,
    /// The generation bound the check used.
    pub max_generation: u64,
    /// From the child's start to the kill.
    pub ran: Duration,
    /// The check.
    pub verdict: Verdict,
}

/// Fills the region of `image` with generation 0 of `seed` and syncs it.
fn prepare_image(image: &Path, size: u64, seed: u64) -> io::Result<()> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(image)?;
    f.set_len(size)?;
    let mut w = BufWriter::with_capacity(1 << 20, &f);
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(chunk.len() as u64) as usize;
        pattern::fill(generation_seed(seed, 0), at, &mut chunk[..n]);
        w.write_all(&chunk[..n])?;
        at += n as u64;
    }
    w.flush()?;
    drop(w);
    f.sync_all()
}

/// Runs one round: prepare, boot, kill, check.
fn round(opts: &Options, path: DiskPath, r: u32, image: &Path) -> Result<RoundResult, String> {
    let plan = RoundPlan::new(opts.seed, path, r);
    prepare_image(image, opts.size, plan.seed)
        .map_err(|e| format!("cannot prepare {}: {e}", image.display()))?;
    let (iface, device) = path.device();
    let cmdline = format!(
        "blk.workload=durable-writes blk.size={} blk.bs={BLOCK} blk.qd={} blk.seed={} {device}",
        opts.size, opts.queue_depth, plan.seed
    );
    // A backstop only: the child is killed long before.
    let backstop = opts.timeout.saturating_mul(KILL_AFTER_LINES_MAX as u32 + 2);
    let mut cmd = Command::new(&opts.shim);
    cmd.arg("run")
        .arg("--kernel")
        .arg(&opts.kernel)
        .arg("--disk")
        .arg(format!("{}{iface}", image.display()))
        .arg("--cmdline")
        .arg(&cmdline)
        .arg("--timeout")
        .arg(backstop.as_secs().max(1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", opts.shim.display()))?;
    let (tx, rx) = mpsc::channel();
    let out = child
        .stdout
        .take()
        .map(|o| thread::spawn(move || read_lines(o, tx)));
    let err = child
        .stderr
        .take()
        .map(|e| thread::spawn(move || read_tail(e)));
    let mut seen: Vec<(Instant, DurablePoint)> = Vec::new();
    let mut failure = None;
    // Wait for the planned number of durable lines, each within the timeout.
    while (seen.len() as u64) < plan.after_lines {
        match rx.recv_timeout(opts.timeout) {
            Ok(line) => {
                if let Some(p) = DurablePoint::parse_line(&line.text) {
                    seen.push((line.at, p));
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                failure = Some(format!(
                    "no durable line {} within {} s",
                    seen.len() + 1,
                    opts.timeout.as_secs()
                ));
                break;
            }
            Err(RecvTimeoutError::Disconnected) => {
                failure = Some("the shim closed its output before the kill".to_owned());
                break;
            }
        }
    }
    if failure.is_none() {
        thread::sleep(Duration::from_millis(plan.delay_ms));
        if let Ok(Some(status)) = child.try_wait() {
            failure = Some(format!("the shim exited before the kill ({status})"));
        }
    }
    let killed_at = Instant::now();
    let _ = child.kill();
    let status = child.wait();
    // Every whole line the child printed counts, also those read after the kill. The
    // pipes end with the child, unless something it started holds them: bounded.
    let deadline = Instant::now() + OUTPUT_GRACE;
    let mut after = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => after.push(line),
            Err(_) => break,
        }
    }
    let grace = Instant::now() + OUTPUT_GRACE;
    let tail = out.and_then(|h| join_by(h, grace)).unwrap_or_default();
    let stderr = err.and_then(|h| join_by(h, grace)).unwrap_or_default();
    let describe = |what: String| {
        let stderr = stderr.trim().replace('\n', " | ");
        format!(
            "{what}; shim stderr: [{stderr}]; console tail: [{}]",
            tail.join(" | ")
        )
    };
    if let Some(f) = failure {
        return Err(describe(match &status {
            Ok(s) if s.signal() != Some(libc::SIGKILL) => format!("{f} (it exited: {s})"),
            _ => f,
        }));
    }
    match status {
        Ok(s) if s.signal() == Some(libc::SIGKILL) => {}
        Ok(s) => return Err(describe(format!("the shim exited before the kill ({s})"))),
        Err(e) => return Err(format!("cannot wait for the shim: {e}")),
    }
    seen.extend(
        after
            .iter()
            .filter_map(|l| DurablePoint::parse_line(&l.text).map(|p| (l.at, p))),
    );
    let blocks = opts.size.div_ceil(u64::from(BLOCK));
    for pair in seen.windows(2) {
        let (a, b) = (pair[0].1, pair[1].1);
        if b.next >= blocks || written(b, blocks) < written(a, blocks) {
            return Err(describe(format!(
                "the guest's durable points went from '{a}' to '{b}'"
            )));
        }
    }
    let point = seen.last().map(|&(_, p)| p);
    let max_generation = plausible_generation(&seen, started, killed_at, blocks);
    let region = fs::read(image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    let region = region
        .get(..opts.size as usize)
        .ok_or_else(|| format!("{} shrank below --size", image.display()))?;
    let verdict = check_region(region, 0, BLOCK, plan.seed, point, max_generation);
    Ok(RoundResult {
        plan,
        lines: seen.len() as u64,
        point,
        max_generation,
        ran: killed_at - started,
        verdict,
    })
}

/// The newest generation the guest can plausibly have started before the kill: the
/// last durable point's, plus what it could write until the kill at eight times the
/// fastest rate its lines showed, with two seconds' slack for console latency and two
/// generations to spare. (No console line can bound this exactly: lines trail the
/// guest. A sector beyond it means data from nowhere, e.g. a wrong seed.)
fn plausible_generation(
    seen: &[(Instant, DurablePoint)],
    started: Instant,
    killed: Instant,
    blocks: u64,
) -> u64 {
    let Some(&(last_at, last)) = seen.last() else {
        // Not one flush completed: the guest may still have written a little.
        return 2;
    };
    let since_start = (last_at - started).as_secs_f64().max(1e-3);
    let mut rate = written(last, blocks) as f64 / since_start;
    if let Some(&(first_at, first)) = seen.first() {
        let span = (last_at - first_at).as_secs_f64();
        if span > 0.0 {
            rate = rate.max((written(last, blocks) - written(first, blocks)) as f64 / span);
        }
    }
    let gap = (killed.saturating_duration_since(last_at)).as_secs_f64() + 2.0;
    let more = (8.0 * rate * gap / blocks as f64).ceil();
    last.generation + 2 + if more.is_finite() { more as u64 } else { 0 }
}

/// One path's rounds.
#[derive(Clone, Debug)]
pub struct PathResult {
    /// The path.
    pub path: DiskPath,
    /// Rounds that ran to their check.
    pub rounds: Vec<RoundResult>,
    /// The error that stopped the path, if any.
    pub error: Option<String>,
}

impl PathResult {
    fn sum(&self, f: impl Fn(&RoundResult) -> u64) -> u64 {
        self.rounds.iter().map(f).sum()
    }
    /// Sectors lost over all rounds.
    pub fn lost(&self) -> u64 {
        self.sum(|r| r.verdict.lost)
    }

    fn to_json(&self) -> Value {
        json!({
            "path": self.path.name(),
            "rounds": self.rounds.len(),
            "kills": self.rounds.len(),
            "durable_lines": self.sum(|r| r.lines),
            "durable_points_checked": self.rounds.iter().filter(|r| r.point.is_some()).count(),
            "sectors_checked": self.sum(|r| r.verdict.sectors),
            "sectors_lost": self.lost(),
            "sectors_newer_than_point": self.sum(|r| r.verdict.newer),
            "max_generation":
                self.rounds.iter().map(|r| r.verdict.max_generation).max().unwrap_or(0),
            "error": self.error,
            "per_round": self.rounds.iter().map(|r| json!({
                "seed": r.plan.seed,
                "after_lines": r.plan.after_lines,
                "delay_ms": r.plan.delay_ms,
                "durable_lines": r.lines,
                "point": r.point.map(|p| json!({"gen": p.generation, "next": p.next})),
                "max_generation_allowed": r.max_generation,
                "ran_ms": r.ran.as_millis() as u64,
                "sectors": r.verdict.sectors,
                "lost": r.verdict.lost,
                "newer": r.verdict.newer,
                "first_losses": r.verdict.first_losses.iter().map(|l| json!({
                    "offset": l.offset, "wanted": l.wanted, "kind": l.kind.to_string(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The report as a markdown table.
pub fn markdown(results: &[PathResult], opts: &Options) -> String {
    let mut s = format!(
        "crashtest: seed {}, region {} bytes in blocks of {BLOCK}, queue depth {}\n\n\
         | path | rounds | kills | durable lines | points checked | sectors checked \
         | sectors newer than the point | sectors lost | result |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        opts.seed, opts.size, opts.queue_depth
    );
    for p in results {
        let result = match (&p.error, p.lost()) {
            (_, n) if n > 0 => "DATA LOST".to_owned(),
            (Some(_), _) => "INCOMPLETE (see the error line)".to_owned(),
            (None, _) => "ok".to_owned(),
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            p.path.name(),
            p.rounds.len(),
            p.rounds.len(),
            p.sum(|r| r.lines),
            p.rounds.iter().filter(|r| r.point.is_some()).count(),
            p.sum(|r| r.verdict.sectors),
            p.sum(|r| r.verdict.newer),
            p.lost(),
            result
        );
    }
    s
}

/// The checks made before any guest runs; the directory to use and whether it is
/// ours to remove.
fn preflight(opts: &Options) -> Result<(PathBuf, bool), String> {
    if opts.paths.is_empty() {
        return Err("--paths names no path".into());
    }
    if opts.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    check_size(opts.size)?;
    let kernel = crate::vmm::Kernel::from_file(&opts.kernel).map_err(|e| e.to_string())?;
    crate::elf::parse(&kernel.image)
        .map_err(|e| format!("kernel {} is not a PVH ELF: {e}", opts.kernel.display()))?;
    if !opts.shim.is_file() {
        return Err(format!("no host-shim binary at {}", opts.shim.display()));
    }
    let (dir, ours) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("host-shim-crashtest-{}", std::process::id())),
            true,
        ),
    };
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".crashtest-probe-{}", std::process::id()));
    let probed = File::create(&probe).map(drop);
    let _ = fs::remove_file(&probe);
    probed.map_err(|e| format!("cannot write to {}: {e}", dir.display()))?;
    Ok((dir, ours))
}

/// Runs the crash test; progress and the report on `stdout`, errors on `stderr`.
/// Returns the exit status: 0 nothing lost, [`EXIT_LOSS`], [`EXIT_ROUND_FAILED`], or
/// 125 for bad input (one error line, nothing run).
pub fn run(opts: &Options, stdout: &mut dyn Write, stderr: &mut dyn Write) -> u8 {
    let (dir, ours) = match preflight(opts) {
        Ok(d) => d,
        Err(e) => {
            crate::cli::report(stderr, &e);
            return crate::EXIT_SHIM_ERROR;
        }
    };
    let mut say = |text: String| {
        if !opts.json {
            let _ = writeln!(stdout, "{text}");
            let _ = stdout.flush();
        }
    };
    say(format!(
        "crashtest: seed {} (--seed {} repeats the kill plan), {} round(s) per path on {}, \
         region {} bytes, images in {}",
        opts.seed,
        opts.seed,
        opts.rounds,
        opts.paths
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(","),
        opts.size,
        dir.display()
    ));
    let mut results = Vec::new();
    let mut keep_dir = !ours;
    for &path in &opts.paths {
        let image = dir.join(format!("crash-{}.img", path.name()));
        let mut res = PathResult {
            path,
            rounds: Vec::new(),
            error: None,
        };
        for r in 0..opts.rounds {
            match round(opts, path, r, &image) {
                Ok(rr) => {
                    let point = rr.point.map_or("none".to_owned(), |p| {
                        format!("gen {} next {}", p.generation, p.next)
                    });
                    say(format!(
                        "crashtest: {} round {}/{}: SIGKILL after durable line {} + {} ms \
                         (durable lines seen: {}, last point {point}, {:.1} s); {} sectors \
                         checked, {} newer than the point, {} lost",
                        path.name(),
                        r + 1,
                        opts.rounds,
                        rr.plan.after_lines,
                        rr.plan.delay_ms,
                        rr.lines,
                        rr.ran.as_secs_f64(),
                        rr.verdict.sectors,
                        rr.verdict.newer,
                        rr.verdict.lost
                    ));
                    if rr.verdict.lost > 0 {
                        for l in &rr.verdict.first_losses {
                            say(format!(
                                "crashtest: {} round {}: LOST sector at byte {}: wanted \
                                 generation {} or newer, found {}",
                                path.name(),
                                r + 1,
                                l.offset,
                                l.wanted,
                                l.kind
                            ));
                        }
                        // Keep the evidence; the next round gets a fresh image.
                        let kept =
                            dir.join(format!("crash-{}-round{}-lost.img", path.name(), r + 1));
                        let _ = fs::rename(&image, &kept);
                        say(format!("crashtest: image kept as {}", kept.display()));
                        keep_dir = true;
                    }
                    res.rounds.push(rr);
                }
                Err(e) => {
                    crate::cli::report(
                        stderr,
                        &format!("crashtest: {} round {}: {e}", path.name(), r + 1),
                    );
                    res.error = Some(e);
                    break;
                }
            }
        }
        let _ = fs::remove_file(&image);
        results.push(res);
    }
    if !keep_dir {
        let _ = fs::remove_dir_all(&dir);
    }
    let lost: u64 = results.iter().map(PathResult::lost).sum();
    let failed = results.iter().any(|p| p.error.is_some());
    if opts.json {
        let doc = json!({
            "seed": opts.seed,
            "size": opts.size,
            "block": BLOCK,
            "queue_depth": opts.queue_depth,
            "rounds_per_path": opts.rounds,
            "paths": results.iter().map(PathResult::to_json).collect::<Vec<_>>(),
            "sectors_lost": lost,
            "passed": lost == 0 && !failed,
        });
        let _ = writeln!(stdout, "{doc}");
    } else {
        let _ = write!(stdout, "\n{}", markdown(&results, opts));
        let verdict = if lost > 0 {
            format!("crashtest: FAIL: {lost} sector(s) lost")
        } else if failed {
            "crashtest: INCOMPLETE: no sector lost, but some path could not run every round"
                .to_owned()
        } else {
            "crashtest: PASS: no sector lost".to_owned()
        };
        let _ = writeln!(stdout, "\n{verdict}");
    }
    if lost > 0 {
        EXIT_LOSS
    } else if failed {
        EXIT_ROUND_FAILED
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: u64 = 77;

    /// A region of `blocks` blocks holding `gens[b]` in block b.
    fn image(gens: &[u64]) -> Vec<u8> {
        let mut img = vec![0u8; gens.len() * BLOCK as usize];
        for (b, chunk) in img.chunks_mut(BLOCK as usize).enumerate() {
            pattern::fill(
                generation_seed(SEED, gens[b]),
                (b * BLOCK as usize) as u64,
                chunk,
            );
        }
        img
    }

    const POINT: DurablePoint = DurablePoint {
        generation: 3,
        next: 2,
    };

    #[test]
    fn a_good_image_loses_nothing() {
        // Blocks 0 and 1 at generation 3, 2 and 3 at 2: exactly the point.
        let v = check_region(&image(&[3, 3, 2, 2]), 0, BLOCK, SEED, Some(POINT), 5);
        assert_eq!(
            (v.sectors, v.lost, v.newer, v.max_generation),
            (32, 0, 0, 3)
        );
        // Later writes (block 2 at 3, block 0 at 4, block 3 half at 3) are fine.
        let mut img = image(&[4, 3, 3, 2]);
        let newer = image(&[3, 3, 3, 3]);
        img[3 * 4096..3 * 4096 + 2048].copy_from_slice(&newer[3 * 4096..3 * 4096 + 2048]);
        let v = check_region(&img, 0, BLOCK, SEED, Some(POINT), 5);
        assert_eq!((v.lost, v.newer, v.max_generation), (0, 8 + 8 + 4, 4));
        // With no point, generation 0 everywhere is all that is promised.
        let v = check_region(&image(&[0, 0, 1, 0]), 0, BLOCK, SEED, None, 2);
        assert_eq!((v.lost, v.newer), (0, 8));
    }

    #[test]
    fn torn_stale_zero_garbage_and_ahead_sectors_are_lost() {
        let mut img = image(&[3, 3, 2, 2]);
        // A torn sector in block 0: its second half from generation 2.
        let old = image(&[2, 2, 2, 2]);
        img[256..512].copy_from_slice(&old[256..512]);
        // A stale sector in block 1 (generation 2 where 3 was durable).
        img[4096 + 1024..4096 + 1536].copy_from_slice(&old[4096 + 1024..4096 + 1536]);
        // A zeroed, a garbage and an impossible sector in block 2.
        img[8192..8704].fill(0);
        img[8704..9216].fill(0xa5);
        let ahead = image(&[40, 40, 40, 40]);
        img[9216..9728].copy_from_slice(&ahead[9216..9728]);
        let v = check_region(&img, 0, BLOCK, SEED, Some(POINT), 5);
        assert_eq!(v.lost, 5);
        let kinds: Vec<_> = v
            .first_losses
            .iter()
            .map(|l| (l.offset, l.wanted, l.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (0, 3, LossKind::Torn),
                (5120, 3, LossKind::Stale(2)),
                (8192, 2, LossKind::Zero),
                (8704, 2, LossKind::Garbage),
                (9216, 2, LossKind::Ahead(40)),
            ]
        );
        // A sector moved to the wrong place is garbage too (the pattern depends on
        // the offset).
        let mut img = image(&[3, 3, 2, 2]);
        img.copy_within(0..512, 512);
        let v = check_region(&img, 0, BLOCK, SEED, Some(POINT), 5);
        assert_eq!(v.first_losses[0].offset, 512);
        assert_eq!(v.lost, 1);
    }

    #[test]
    fn plans_are_a_function_of_seed_path_and_round() {
        let a = RoundPlan::new(1, DiskPath::Xen, 0);
        assert_eq!(a, RoundPlan::new(1, DiskPath::Xen, 0));
        assert_ne!(a, RoundPlan::new(2, DiskPath::Xen, 0));
        assert_ne!(a.seed, RoundPlan::new(1, DiskPath::Virtio, 0).seed);
        assert_ne!(a.seed, RoundPlan::new(1, DiskPath::Xen, 1).seed);
        for r in 0..200 {
            let p = RoundPlan::new(9, DiskPath::IdeDma, r);
            assert!((1..=KILL_AFTER_LINES_MAX).contains(&p.after_lines));
            assert!(p.delay_ms < KILL_DELAY_MAX_MS);
        }
    }

    #[test]
    fn the_generation_bound_covers_the_guests_pace() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let p = |generation, next| DurablePoint { generation, next };
        // 10 blocks a generation; 40 blocks in the 4 s between the lines: 1 gen/s.
        let seen = [(at(1000), p(2, 0)), (at(5000), p(6, 0))];
        // Killed 1 s after the last line: 8 * 1 gen/s * 3 s + 2 more.
        assert_eq!(plausible_generation(&seen, t0, at(6000), 10), 6 + 2 + 24);
        assert_eq!(plausible_generation(&[], t0, at(6000), 10), 2);
    }

    #[test]
    fn paths_and_sizes_are_checked() {
        assert_eq!(DiskPath::parse(" virtio"), Ok(DiskPath::Virtio));
        assert!(DiskPath::parse("e1000").unwrap_err().contains("known: xen"));
        assert!(check_size(4096).is_err());
        assert!(check_size(8192 + 512).is_err());
        assert!(check_size(2 << 30).is_err());
        assert_eq!(check_size(1 << 20), Ok(1 << 20));
    }
}
