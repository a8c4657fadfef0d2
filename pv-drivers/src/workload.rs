//! The block workload: sequential and random reads and writes over a region of a
//! [`BlockDevice`] at a chosen queue depth, with every byte written taken from, and
//! every byte read checked against, the deterministic [`pattern`].
//!
//! It is generic over the device (blkfront, or later the emulated ATA disk) and over
//! how to wait for it ([`Waiter`]: the guest halts until the device's event or a timer
//! tick; host tests return at once), so the same engine runs in the guest and in
//! `cargo test`. A device is never trusted: a completion with an unknown tag or a wrong
//! data length is counted as a protocol error, not followed.
//!
//! Because writes always write the pattern of their own offset, a region keeps holding
//! the pattern of its seed through any mix of phases, and every read can be verified,
//! also while reads and writes to the same block are in flight together.
//!
//! The durability phase (`durable-writes`, [`Phase::Durability`]) is the writer of
//! `host-shim crashtest`: generations of the pattern over the region with flushes at
//! seeded random points, each completed flush announced as a [`DurablePoint`] line
//! that the host checks the disk image against after killing the shim.
//!
//! The benchmark matrix of `blk.bench=on` ([`bench_matrix`], [`run_bench`]) is the
//! other engine here: fio's jobs (read, write, randread, randwrite at 4 KiB and 64 KiB,
//! queue depth 1 and 32), timed per request into a fixed [`Histogram`], with no data
//! work inside a phase, and one JSON object per phase in fio's key names (the protocol
//! of the shared benchmark plan, item 3).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::device::{BlockCompletion, BlockDevice, BlockError, BlockInfo, BlockOp};
use crate::pattern::{self, Mismatch};

/// What a workload does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Write the pattern over the region in order, then flush (if the device offers it).
    WritePattern,
    /// Read the region in order and compare with the pattern.
    VerifyPattern,
    /// Read the region in order (verified unless [`Config::verify`] is off).
    SeqRead,
    /// Write the pattern over the region in order, no flush.
    SeqWrite,
    /// [`Config::ops`] reads of random blocks of the region.
    RandRead,
    /// [`Config::ops`] writes of random blocks of the region.
    RandWrite,
    /// [`Config::ops`] random blocks, read or written ([`Config::read_percent`]).
    RandRw,
    /// The crash test's writer ([`run`] hands it to the durability engine): the region
    /// written over and over in generations, with flushes at seeded random points, each
    /// completed flush reported to [`Waiter::durable`]. Runs until the guest is killed,
    /// or for [`Config::ops`] writes if that is not 0. Needs a device with a flush.
    Durability,
}

impl Phase {
    /// Every phase, for help texts and tests.
    pub const ALL: [Self; 8] = [
        Self::WritePattern,
        Self::VerifyPattern,
        Self::SeqRead,
        Self::SeqWrite,
        Self::RandRead,
        Self::RandWrite,
        Self::RandRw,
        Self::Durability,
    ];

    /// The command-line name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::WritePattern => "write-pattern",
            Self::VerifyPattern => "verify-pattern",
            Self::SeqRead => "seq-read",
            Self::SeqWrite => "seq-write",
            Self::RandRead => "rand-read",
            Self::RandWrite => "rand-write",
            Self::RandRw => "rand-rw",
            Self::Durability => "durable-writes",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    fn random(self) -> bool {
        matches!(self, Self::RandRead | Self::RandWrite | Self::RandRw)
    }

    fn writes(self) -> bool {
        matches!(
            self,
            Self::WritePattern | Self::SeqWrite | Self::RandWrite | Self::RandRw | Self::Durability
        )
    }
}

/// A workload's parameters. Byte quantities must be multiples of the sector size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// What to do.
    pub phase: Phase,
    /// Start of the region, in bytes from the start of the device.
    pub offset: u64,
    /// Size of the region in bytes.
    pub size: u64,
    /// Bytes per request (the last request of a sequential pass may be shorter).
    pub block: u32,
    /// Requests kept in flight (capped by the device's own queue depth).
    pub queue_depth: u32,
    /// Pattern seed.
    pub seed: u64,
    /// Requests of a random phase; 0 means one per block of the region.
    pub ops: u64,
    /// Share of reads in `rand-rw`, in percent.
    pub read_percent: u8,
    /// Whether reads are compared with the pattern.
    pub verify: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            phase: Phase::VerifyPattern,
            offset: 0,
            size: 256 << 10,
            block: 4096,
            queue_depth: 8,
            seed: 1,
            ops: 0,
            read_percent: 50,
            verify: true,
        }
    }
}

/// Why a workload could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The block size is zero or not a multiple of the sector size.
    BadBlockSize(u32),
    /// The block size is beyond the device's largest transfer.
    BlockTooLarge(u32, u32),
    /// The region is empty, not sector-aligned, or beyond the end of the device.
    BadRegion,
    /// The queue depth is zero.
    ZeroQueueDepth,
    /// The phase writes and the device is read-only.
    ReadOnly,
    /// The device reports a sector size that is zero or not a power of two.
    BadSectorSize(u32),
    /// The phase needs a flush and the device offers none.
    NoFlush,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadBlockSize(b) => {
                write!(
                    f,
                    "block size {b} is not a non-zero multiple of the sector size"
                )
            }
            Self::BlockTooLarge(b, max) => {
                write!(
                    f,
                    "block size {b} exceeds the device's transfer limit {max}"
                )
            }
            Self::BadRegion => f.write_str("region empty, not sector-aligned or beyond the device"),
            Self::ZeroQueueDepth => f.write_str("queue depth 0"),
            Self::ReadOnly => f.write_str("the device is read-only"),
            Self::BadSectorSize(s) => write!(f, "device sector size {s} is unusable"),
            Self::NoFlush => f.write_str("durable-writes needs a flush and the device offers none"),
        }
    }
}

impl core::error::Error for ConfigError {}

/// How the engine waits for the device.
pub trait Waiter {
    /// Returns once the device may have finished something (its event arrived, or a
    /// recovery tick passed). Returns false to abandon the workload (a deadline).
    fn wait(&mut self) -> bool;
    /// A monotonic clock in ns, for the report.
    fn now_ns(&self) -> u64;
    /// Called after every poll of the device with the completions it returned (so
    /// the waiter can tell a poll that found work without an event: a lost event).
    fn polled(&mut self, _completions: usize) {}
    /// Called by [`Phase::Durability`] after each of its flushes completed: everything
    /// `point` names was written before that flush, so it is durable now. The guest
    /// prints it ([`DurablePoint`]'s `Display`) for the host's crash test.
    fn durable(&mut self, _point: DurablePoint) {}
}

/// What a workload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Requests completed successfully.
    pub ops: u64,
    /// Of which reads.
    pub reads: u64,
    /// Of which writes.
    pub writes: u64,
    /// Of which flushes.
    pub flushes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Requests refused or failed by the device.
    pub errors: u64,
    /// The first of those errors.
    pub first_error: Option<BlockError>,
    /// Completions the device should not have produced: unknown tags, wrong data
    /// length, an op that is not the one submitted.
    pub protocol_errors: u64,
    /// Reads whose data differed from the pattern.
    pub mismatches: u64,
    /// The first differing byte.
    pub first_mismatch: Option<Mismatch>,
    /// Most requests in flight at once.
    pub max_in_flight: u32,
    /// Requests never completed (the waiter gave up, or the device failed).
    pub abandoned: u64,
    /// The flush after `write-pattern` was skipped: the device offers none.
    pub flush_skipped: bool,
    /// Run time.
    pub elapsed_ns: u64,
}

impl Report {
    /// Whether every request completed and every byte read verified.
    pub fn passed(&self) -> bool {
        self.errors == 0 && self.protocol_errors == 0 && self.mismatches == 0 && self.abandoned == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ops {} (reads {}, writes {}, flushes {}), bytes read {} written {}, errors {}, \
             protocol errors {}, mismatches {}, abandoned {}, in-flight max {}, {} us",
            self.ops,
            self.reads,
            self.writes,
            self.flushes,
            self.bytes_read,
            self.bytes_written,
            self.errors,
            self.protocol_errors,
            self.mismatches,
            self.abandoned,
            self.max_in_flight,
            self.elapsed_ns / 1000
        )?;
        if let Some(e) = self.first_error {
            write!(f, ", first error: {e}")?;
        }
        if let Some(m) = self.first_mismatch {
            write!(
                f,
                ", first mismatch at byte {} of the device: expected {:#04x}, found {:#04x}",
                m.offset, m.expected, m.found
            )?;
        }
        if self.flush_skipped {
            f.write_str(", no flush (not offered)")?;
        }
        Ok(())
    }
}

/// xorshift64*: the random phases' block choice, deterministic per seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x2545_f491_4f6c_dd1d | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One request of the plan.
#[derive(Clone, Copy, Debug)]
struct Request {
    op: BlockOp,
    offset: u64,
    len: u32,
}

struct Pending {
    tag: u64,
    req: Request,
}

/// Produces the phase's requests in order.
struct Plan {
    cfg: Config,
    blocks: u64,
    next: u64,
    total: u64,
    rng: Rng,
    flush_after: bool,
    peeked: Option<Request>,
}

impl Plan {
    fn new(cfg: &Config, flush_after: bool) -> Self {
        let blocks = cfg.size.div_ceil(u64::from(cfg.block));
        let total = if cfg.phase.random() {
            if cfg.ops == 0 { blocks } else { cfg.ops }
        } else {
            blocks
        };
        Self {
            cfg: *cfg,
            blocks,
            next: 0,
            total,
            rng: Rng::new(cfg.seed),
            flush_after,
            peeked: None,
        }
    }

    fn block(&self, index: u64, op: BlockOp) -> Request {
        let start = index * u64::from(self.cfg.block);
        let len = (self.cfg.size - start).min(u64::from(self.cfg.block)) as u32;
        Request {
            op,
            offset: self.cfg.offset + start,
            len,
        }
    }

    fn peek(&mut self) -> Option<Request> {
        if self.peeked.is_none() {
            self.peeked = self.generate();
        }
        self.peeked
    }

    /// Requests not yet handed out by [`Plan::advance`].
    fn remaining(&self) -> u64 {
        let ungenerated = if self.next <= self.total {
            self.total - self.next + u64::from(self.flush_after)
        } else {
            0
        };
        ungenerated + u64::from(self.peeked.is_some())
    }

    fn advance(&mut self) {
        self.peeked = None;
    }

    fn generate(&mut self) -> Option<Request> {
        if self.next > self.total {
            return None;
        }
        if self.next == self.total {
            self.next += 1;
            return self.flush_after.then_some(Request {
                op: BlockOp::Flush,
                offset: 0,
                len: 0,
            });
        }
        let i = self.next;
        self.next += 1;
        let c = &self.cfg;
        Some(match c.phase {
            Phase::WritePattern | Phase::SeqWrite => self.block(i, BlockOp::Write),
            Phase::VerifyPattern | Phase::SeqRead => self.block(i, BlockOp::Read),
            // Never planned: run() hands this phase to run_durable.
            Phase::Durability => return None,
            Phase::RandRead | Phase::RandWrite | Phase::RandRw => {
                let r = self.rng.next();
                let index = r % self.blocks;
                let read = match c.phase {
                    Phase::RandRead => true,
                    Phase::RandWrite => false,
                    _ => (r >> 32) % 100 < u64::from(c.read_percent),
                };
                self.block(index, if read { BlockOp::Read } else { BlockOp::Write })
            }
        })
    }
}

/// Checks `cfg` against the device.
pub fn validate(dev: &dyn BlockDevice, cfg: &Config) -> Result<(), ConfigError> {
    let info = dev.info();
    let ss = info.sector_size;
    if ss == 0 || !ss.is_power_of_two() {
        return Err(ConfigError::BadSectorSize(ss));
    }
    if cfg.block == 0 || !cfg.block.is_multiple_of(ss) {
        return Err(ConfigError::BadBlockSize(cfg.block));
    }
    if cfg.block > info.max_transfer {
        return Err(ConfigError::BlockTooLarge(cfg.block, info.max_transfer));
    }
    let ss = u64::from(ss);
    let end = cfg.offset.checked_add(cfg.size);
    let dev_bytes = info.sectors.checked_mul(ss);
    let fits = matches!((end, dev_bytes), (Some(e), Some(d)) if e <= d);
    if cfg.size == 0 || !cfg.offset.is_multiple_of(ss) || !cfg.size.is_multiple_of(ss) || !fits {
        return Err(ConfigError::BadRegion);
    }
    if cfg.queue_depth == 0 {
        return Err(ConfigError::ZeroQueueDepth);
    }
    if cfg.phase.writes() && info.read_only {
        return Err(ConfigError::ReadOnly);
    }
    if cfg.phase == Phase::Durability && !info.flush {
        return Err(ConfigError::NoFlush);
    }
    Ok(())
}

/// Runs one workload to the end (or until `waiter` gives up, or the device fails).
pub fn run(
    dev: &mut dyn BlockDevice,
    cfg: &Config,
    waiter: &mut dyn Waiter,
) -> Result<Report, ConfigError> {
    validate(dev, cfg)?;
    if cfg.phase == Phase::Durability {
        return Ok(run_durable(dev, cfg, waiter));
    }
    let info = dev.info();
    let sector = u64::from(info.sector_size);
    let flush_after = cfg.phase == Phase::WritePattern && info.flush;
    let mut report = Report {
        flush_skipped: cfg.phase == Phase::WritePattern && !info.flush,
        ..Report::default()
    };
    let qd = cfg.queue_depth.min(info.queue_depth.max(1)) as usize;
    let mut plan = Plan::new(cfg, flush_after);
    let mut pending: Vec<Pending> = Vec::with_capacity(qd);
    let mut done: Vec<BlockCompletion> = Vec::with_capacity(qd);
    let mut data = vec![0u8; cfg.block as usize];
    let start = waiter.now_ns();

    'run: loop {
        // Keep the queue full. A flush waits for every earlier write to complete:
        // BlockOp::Flush only covers writes completed before it.
        while pending.len() < qd {
            let Some(req) = plan.peek() else { break };
            if req.op == BlockOp::Flush && !pending.is_empty() {
                break;
            }
            let len = req.len as usize;
            let payload: &[u8] = if req.op == BlockOp::Write {
                pattern::fill(cfg.seed, req.offset, &mut data[..len]);
                &data[..len]
            } else {
                &[]
            };
            let count = (u64::from(req.len) / sector) as u32;
            match dev.submit(req.op, req.offset / sector, count, payload) {
                Ok(tag) => {
                    pending.push(Pending { tag, req });
                    plan.advance();
                }
                Err(BlockError::Busy) => break,
                Err(e) => {
                    report.errors += 1;
                    report.first_error.get_or_insert(e);
                    plan.advance();
                    if matches!(e, BlockError::Protocol | BlockError::Disconnected) {
                        break 'run;
                    }
                }
            }
        }
        dev.kick();
        report.max_in_flight = report.max_in_flight.max(pending.len() as u32);
        if pending.is_empty() && plan.peek().is_none() {
            break;
        }

        done.clear();
        let got = match dev.poll(&mut done) {
            Ok(_) => done.len(),
            Err(e) => {
                report.errors += 1;
                report.first_error.get_or_insert(e);
                break;
            }
        };
        waiter.polled(got);
        for c in done.drain(..) {
            complete(&mut report, &mut pending, c, cfg);
        }
        if got == 0 && !waiter.wait() {
            break;
        }
    }
    // Requests never completed, and those never submitted, count as abandoned.
    report.abandoned = pending.len() as u64 + plan.remaining();
    report.elapsed_ns = waiter.now_ns().saturating_sub(start);
    Ok(report)
}

fn complete(report: &mut Report, pending: &mut Vec<Pending>, c: BlockCompletion, cfg: &Config) {
    let Some(i) = pending.iter().position(|p| p.tag == c.tag) else {
        report.protocol_errors += 1;
        return;
    };
    let req = pending.swap_remove(i).req;
    if c.op != req.op {
        report.protocol_errors += 1;
        return;
    }
    if let Err(e) = c.result {
        report.errors += 1;
        report.first_error.get_or_insert(e);
        return;
    }
    match req.op {
        BlockOp::Read => {
            if c.data.len() != req.len as usize {
                report.protocol_errors += 1;
                return;
            }
            report.reads += 1;
            report.bytes_read += u64::from(req.len);
            if cfg.verify
                && let Some(m) = pattern::check(cfg.seed, req.offset, &c.data)
            {
                report.mismatches += 1;
                report.first_mismatch.get_or_insert(m);
            }
        }
        BlockOp::Write => {
            report.writes += 1;
            report.bytes_written += u64::from(req.len);
        }
        BlockOp::Flush => report.flushes += 1,
    }
    report.ops += 1;
}

// ---- The durability phase (`durable-writes`, the writer of `host-shim crashtest`)

/// What a console line announcing a [`DurablePoint`] starts with.
pub const DURABLE_PREFIX: &str = "blk-durable: ";

/// The pattern seed of generation `generation` of a [`Phase::Durability`] run seeded
/// `seed`, so that every byte written depends on seed, generation and disk offset.
/// Generation 0 is what the region held before the run (the host's crash test writes
/// it with this seed too).
pub const fn generation_seed(seed: u64, generation: u64) -> u64 {
    seed.wrapping_add(generation)
}

/// What one completed flush of [`Phase::Durability`] made durable: every block of the
/// region before block `next` was written with generation `generation`, and every
/// block from `next` on with generation `generation - 1` (for generation 1: what the
/// region held before the run), all before the flush was submitted. Later writes may
/// since have replaced any block with a later generation.
///
/// `Display` is the console line, [`DurablePoint::parse_line`] its inverse:
/// `blk-durable: gen=G next=N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurablePoint {
    /// The generation being written, from 1.
    pub generation: u64,
    /// Blocks of the region (from its start, in [`Config::block`] units) already
    /// holding `generation`.
    pub next: u64,
}

impl DurablePoint {
    /// Parses one console line (a trailing `\r` or `\n` allowed); `None` unless it is
    /// exactly a durable point's line.
    pub fn parse_line(line: &str) -> Option<Self> {
        let rest = line
            .trim_end_matches(['\r', '\n'])
            .strip_prefix(DURABLE_PREFIX)?;
        let (g, n) = rest.split_once(' ')?;
        let number = |s: &str, key: &str| {
            let v = s.strip_prefix(key)?;
            // Digits only: u64's parser would also take a sign.
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            v.parse::<u64>().ok()
        };
        let generation = number(g, "gen=").filter(|&g| g > 0)?;
        let next = number(n, "next=")?;
        Some(Self { generation, next })
    }
}

impl fmt::Display for DurablePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{DURABLE_PREFIX}gen={} next={}",
            self.generation, self.next
        )
    }
}

/// The durability phase: generation after generation of the region, block by block in
/// order at the configured queue depth, each block with the pattern of
/// [`generation_seed`]. After a seeded random number of writes (1 to two thirds of the
/// region's blocks) it lets every write in flight complete, submits a flush and, once
/// that completed successfully, hands the point it covers to [`Waiter::durable`].
///
/// A failed write or flush ends the phase (the block's contents are then unknown, so
/// no later point could be claimed), as does a device that breaks the protocol.
fn run_durable(dev: &mut dyn BlockDevice, cfg: &Config, waiter: &mut dyn Waiter) -> Report {
    let info = dev.info();
    let sector = u64::from(info.sector_size);
    let qd = cfg.queue_depth.min(info.queue_depth.max(1)) as usize;
    let plan = Plan::new(cfg, false);
    let blocks = plan.blocks;
    let span = (2 * blocks / 3).max(1);
    let mut rng = Rng::new(cfg.seed);
    let mut report = Report::default();
    let mut pending: Vec<Pending> = Vec::with_capacity(qd);
    let mut done: Vec<BlockCompletion> = Vec::with_capacity(qd + 1);
    let mut data = vec![0u8; cfg.block as usize];
    let (mut generation, mut next) = (1u64, 0u64);
    // Writes to submit before the next flush; writes submitted in all; of which
    // covered by a completed flush.
    let mut due = 1 + rng.next() % span;
    let (mut submitted, mut covered) = (0u64, 0u64);
    // The flush in flight: its tag, the point it covers, the writes submitted before it.
    let mut flush: Option<(u64, DurablePoint, u64)> = None;
    let start = waiter.now_ns();

    'run: loop {
        let limit = cfg.ops != 0 && submitted >= cfg.ops;
        if flush.is_none() {
            while pending.len() < qd && due > 0 && !limit {
                let req = plan.block(next, BlockOp::Write);
                let len = req.len as usize;
                pattern::fill(
                    generation_seed(cfg.seed, generation),
                    req.offset,
                    &mut data[..len],
                );
                let count = (u64::from(req.len) / sector) as u32;
                match dev.submit(BlockOp::Write, req.offset / sector, count, &data[..len]) {
                    Ok(tag) => {
                        pending.push(Pending { tag, req });
                        due -= 1;
                        submitted += 1;
                        next += 1;
                        if next == blocks {
                            (generation, next) = (generation + 1, 0);
                        }
                        if cfg.ops != 0 && submitted >= cfg.ops {
                            break;
                        }
                    }
                    Err(BlockError::Busy) => break,
                    Err(e) => {
                        report.errors += 1;
                        report.first_error.get_or_insert(e);
                        break 'run;
                    }
                }
            }
            let limit = cfg.ops != 0 && submitted >= cfg.ops;
            if pending.is_empty() && (due == 0 || limit) {
                if covered == submitted {
                    break; // the last writes are flushed: the phase is over
                }
                // Every write submitted so far has completed: the flush covers them all
                // (BlockOp::Flush only covers writes completed before it).
                let point = DurablePoint { generation, next };
                match dev.submit(BlockOp::Flush, 0, 0, &[]) {
                    Ok(tag) => flush = Some((tag, point, submitted)),
                    Err(BlockError::Busy) => {}
                    Err(e) => {
                        report.errors += 1;
                        report.first_error.get_or_insert(e);
                        break;
                    }
                }
            }
        }
        dev.kick();
        let in_flight = pending.len() + usize::from(flush.is_some());
        report.max_in_flight = report.max_in_flight.max(in_flight as u32);

        done.clear();
        let got = match dev.poll(&mut done) {
            Ok(_) => done.len(),
            Err(e) => {
                report.errors += 1;
                report.first_error.get_or_insert(e);
                break;
            }
        };
        waiter.polled(got);
        for c in done.drain(..) {
            match flush {
                Some((tag, point, before)) if c.tag == tag => {
                    flush = None;
                    if c.op != BlockOp::Flush {
                        report.protocol_errors += 1;
                    } else if let Err(e) = c.result {
                        report.errors += 1;
                        report.first_error.get_or_insert(e);
                    } else {
                        report.flushes += 1;
                        report.ops += 1;
                        covered = before;
                        due = 1 + rng.next() % span;
                        waiter.durable(point);
                    }
                }
                _ => complete(&mut report, &mut pending, c, cfg),
            }
        }
        if report.errors > 0 || report.protocol_errors > 0 {
            break;
        }
        if got == 0 && !waiter.wait() {
            break;
        }
    }
    report.abandoned = pending.len() as u64 + u64::from(flush.is_some());
    report.elapsed_ns = waiter.now_ns().saturating_sub(start);
    report
}

// ---- The benchmark matrix (`blk.bench=on`)

/// Access pattern of a benchmark phase; [`BenchRw::name`] is fio's `rw`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchRw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Reads of random blocks.
    RandRead,
    /// Writes of random blocks.
    RandWrite,
}

impl BenchRw {
    /// In matrix order.
    pub const ALL: [Self; 4] = [Self::Read, Self::Write, Self::RandRead, Self::RandWrite];

    /// fio's name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::RandRead => "randread",
            Self::RandWrite => "randwrite",
        }
    }

    fn random(self) -> bool {
        matches!(self, Self::RandRead | Self::RandWrite)
    }

    fn op(self) -> BlockOp {
        match self {
            Self::Read | Self::RandRead => BlockOp::Read,
            Self::Write | Self::RandWrite => BlockOp::Write,
        }
    }
}

/// One phase of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchPhase {
    /// Its number, from 1 (the phase mark's number too).
    pub phase: u32,
    /// What it does.
    pub rw: BenchRw,
    /// Bytes per request.
    pub bs: u32,
    /// Requests submitted and not yet completed, at most (fio's `iodepth`).
    pub iodepth: u32,
}

/// Block sizes of the matrix, outermost loop.
pub const BENCH_BLOCK_SIZES: [u32; 2] = [4096, 65536];
/// Queue depths of the matrix, middle loop.
pub const BENCH_QUEUE_DEPTHS: [u32; 2] = [1, 32];
/// Phases of the matrix.
pub const BENCH_PHASES: usize = BENCH_BLOCK_SIZES.len() * BENCH_QUEUE_DEPTHS.len() * 4;

/// The matrix in order: for bs, for qd, for rw; phases numbered from 1.
pub fn bench_matrix() -> [BenchPhase; BENCH_PHASES] {
    core::array::from_fn(|i| {
        let per_bs = BENCH_QUEUE_DEPTHS.len() * BenchRw::ALL.len();
        BenchPhase {
            phase: i as u32 + 1,
            rw: BenchRw::ALL[i % BenchRw::ALL.len()],
            bs: BENCH_BLOCK_SIZES[i / per_bs],
            iodepth: BENCH_QUEUE_DEPTHS[(i % per_bs) / BenchRw::ALL.len()],
        }
    })
}

/// What every phase of a benchmark shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    /// Start of the region, in bytes from the start of the device.
    pub offset: u64,
    /// Size of the region in bytes; requests stay inside whole blocks of it.
    pub size: u64,
    /// Requests per phase.
    pub ops: u32,
    /// Seed of the random block choice and of the write buffer's contents.
    pub seed: u64,
}

/// A phase mark: the edge the caller turns into a port write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    /// Right before the first submit.
    Start,
    /// Right after the last completion.
    End,
}

/// Why `phase` cannot run on a device described by `info`, if it cannot.
pub fn bench_skip_reason(
    info: &BlockInfo,
    cfg: &BenchConfig,
    phase: &BenchPhase,
) -> Option<&'static str> {
    let ss = info.sector_size;
    if ss == 0 || !ss.is_power_of_two() {
        return Some("the device's sector size is unusable");
    }
    if !phase.bs.is_multiple_of(ss) {
        return Some("bs is not a multiple of the device's sector size");
    }
    if phase.bs > info.max_transfer {
        return Some("bs exceeds the device's largest transfer");
    }
    if phase.rw.op() == BlockOp::Write && info.read_only {
        return Some("the device is read-only");
    }
    let end = cfg.offset.checked_add(cfg.size);
    let dev_bytes = info.sectors.checked_mul(u64::from(ss));
    if !matches!((end, dev_bytes), (Some(e), Some(d)) if e <= d) {
        return Some("the region goes beyond the device");
    }
    if !cfg.offset.is_multiple_of(u64::from(ss)) {
        return Some("the region is not sector-aligned");
    }
    if cfg.size < u64::from(phase.bs) {
        return Some("the region is smaller than bs");
    }
    if cfg.ops == 0 || phase.iodepth == 0 {
        return Some("no requests to make");
    }
    None
}

/// Sub-buckets per power of two of the [`Histogram`] (2^`HIST_SUB_BITS`): values keep
/// 6 significant bits, an error under 1/64.
const HIST_SUB_BITS: u32 = 6;
const HIST_SUB: u64 = 1 << HIST_SUB_BITS;
/// Buckets covering every u64: values below 2 * HIST_SUB exactly, then HIST_SUB per
/// power of two up to 2^63.
const HIST_BUCKETS: usize = (HIST_SUB * (u64::BITS - HIST_SUB_BITS + 1) as u64) as usize;

/// fio's default percentiles, in thousandths of a percent.
pub const PERCENTILES_MILLI: [u32; 17] = [
    1_000, 5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 70_000, 80_000, 90_000, 95_000,
    99_000, 99_500, 99_900, 99_950, 99_990,
];

/// fio's name of a percentile given in thousandths of a percent: `99.950000` for
/// 99_950, the key of `clat_ns.percentile` in fio's JSON (and in our result lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PercentileKey(pub u32);

impl fmt::Display for PercentileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1000, (self.0 % 1000) * 1000)
    }
}

/// A log2-linear latency histogram of fixed size (fio's scheme): recording is a few
/// instructions and never allocates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    buckets: Vec<u32>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram (its one allocation).
    pub fn new() -> Self {
        Self {
            buckets: vec![0; HIST_BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < HIST_SUB {
            return v as usize;
        }
        // v in [HIST_SUB << k, HIST_SUB << (k + 1)): HIST_SUB buckets of width 2^k.
        let k = 63 - v.leading_zeros() - HIST_SUB_BITS;
        (HIST_SUB * u64::from(k) + (v >> k)) as usize
    }

    /// The smallest value of bucket `i` and its width.
    fn bucket(i: usize) -> (u64, u64) {
        let i = i as u64;
        if i < 2 * HIST_SUB {
            return (i, 1);
        }
        let k = i / HIST_SUB - 1;
        ((i - HIST_SUB * k) << k, 1 << k)
    }

    /// Adds one sample.
    pub fn record(&mut self, v: u64) {
        self.buckets[Self::index(v)] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The smallest sample (0 if none).
    pub fn min(&self) -> u64 {
        if self.count == 0 { 0 } else { self.min }
    }

    /// The largest sample (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean in thousandths (0 if none).
    pub fn mean_milli(&self) -> u128 {
        if self.count == 0 {
            return 0;
        }
        self.sum * 1000 / u128::from(self.count)
    }

    /// The value below which `milli` thousandths of a percent of the samples lie, as
    /// fio computes it: the first bucket whose cumulative count reaches that share,
    /// reported as the bucket's middle, kept within [min, max] (0 if none).
    pub fn percentile(&self, milli: u32) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let want = (u128::from(self.count) * u128::from(milli))
            .div_ceil(100_000)
            .max(1);
        let mut seen = 0u128;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += u128::from(n);
            if seen >= want {
                let (lo, width) = Self::bucket(i);
                return (lo + (width - 1) / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

/// What one phase measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchMeasure {
    /// Requests completed successfully.
    pub ios: u64,
    /// Their bytes.
    pub io_bytes: u64,
    /// From the Start mark to the End mark.
    pub runtime_ns: u64,
    /// Requests refused, failed, answered wrongly or never completed.
    pub errors: u64,
    /// The first device error.
    pub first_error: Option<BlockError>,
    /// Submit-to-completion latency of the successful requests.
    pub clat: Histogram,
}

/// One phase's result: measured, or skipped with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchResult {
    /// The phase.
    pub phase: BenchPhase,
    /// The device's [`BlockInfo::queue_depth`].
    pub device_queue_depth: u32,
    /// What happened.
    pub outcome: Result<BenchMeasure, &'static str>,
}

impl BenchResult {
    /// Whether the phase ran without an error (a skipped phase counts as passed: the
    /// skip is reported, not a failure).
    pub fn passed(&self) -> bool {
        self.outcome.as_ref().map_or(true, |m| m.errors == 0)
    }
}

/// The `blk-result:` JSON object (without the prefix), in fio's key names.
impl fmt::Display for BenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.phase;
        write!(
            f,
            "{{\"phase\":{},\"rw\":\"{}\",\"bs\":{},\"iodepth\":{},\"device_queue_depth\":{}",
            p.phase,
            p.rw.name(),
            p.bs,
            p.iodepth,
            self.device_queue_depth
        )?;
        let m = match &self.outcome {
            // The reasons are this module's constants: no character needs escaping.
            Err(reason) => return write!(f, ",\"skipped\":\"{reason}\"}}"),
            Ok(m) => m,
        };
        let mean = m.clat.mean_milli();
        write!(
            f,
            ",\"ios\":{},\"io_bytes\":{},\"runtime_ns\":{},\"errors\":{},\
             \"clat_ns\":{{\"min\":{},\"max\":{},\"mean\":{}.{:03},\"percentile\":{{",
            m.ios,
            m.io_bytes,
            m.runtime_ns,
            m.errors,
            m.clat.min(),
            m.clat.max(),
            mean / 1000,
            mean % 1000
        )?;
        for (i, &milli) in PERCENTILES_MILLI.iter().enumerate() {
            write!(
                f,
                "{}\"{}\":{}",
                if i == 0 { "" } else { "," },
                PercentileKey(milli),
                m.clat.percentile(milli)
            )?;
        }
        f.write_str("}}}")
    }
}

struct InFlight {
    tag: u64,
    submitted_ns: u64,
}

/// Runs one phase of the matrix: `cfg.ops` requests of `phase.bs` bytes, up to
/// `phase.iodepth` submitted at once (more than the device's own depth: the rest wait
/// in the driver's queue or are retried after `Busy`), sequential blocks of the region
/// (wrapping) or random ones ([`Rng`] of `cfg.seed`), each timed from just before its
/// submit to the poll that returned it, by `waiter`'s clock. `mark` sees
/// [`Edge::Start`] right before the first submit and [`Edge::End`] right after the last
/// completion; between them no byte of data is touched (writes send one buffer, filled
/// once before; reads are not verified) and nothing allocates in this loop.
pub fn run_bench(
    dev: &mut dyn BlockDevice,
    cfg: &BenchConfig,
    phase: &BenchPhase,
    waiter: &mut dyn Waiter,
    mark: &mut dyn FnMut(Edge),
) -> BenchResult {
    let info = dev.info();
    let mut result = BenchResult {
        phase: *phase,
        device_queue_depth: info.queue_depth,
        outcome: Err(""),
    };
    if let Some(reason) = bench_skip_reason(&info, cfg, phase) {
        result.outcome = Err(reason);
        return result;
    }
    let sector = u64::from(info.sector_size);
    let bs = u64::from(phase.bs);
    let blocks = cfg.size / bs;
    let count = phase.bs / info.sector_size;
    let op = phase.rw.op();
    let ops = u64::from(cfg.ops);
    let qd = phase.iodepth as usize;
    let mut rng = Rng::new(cfg.seed);
    let mut pick = |i: u64| {
        if phase.rw.random() {
            rng.next() % blocks
        } else {
            i % blocks
        }
    };
    let data = if op == BlockOp::Write {
        let mut d = vec![0u8; phase.bs as usize];
        pattern::fill(cfg.seed, cfg.offset, &mut d);
        d
    } else {
        Vec::new()
    };
    let mut clat = Histogram::new();
    let mut pending: Vec<InFlight> = Vec::with_capacity(qd);
    let mut done: Vec<BlockCompletion> = Vec::with_capacity(qd.max(info.queue_depth as usize));
    let (mut submitted, mut ios, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let mut block = pick(0);

    mark(Edge::Start);
    let start = waiter.now_ns();
    'run: loop {
        while pending.len() < qd && submitted < ops {
            let t = waiter.now_ns();
            let lba = (cfg.offset + block * bs) / sector;
            match dev.submit(op, lba, count, &data) {
                Ok(tag) => pending.push(InFlight {
                    tag,
                    submitted_ns: t,
                }),
                Err(BlockError::Busy) => break,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                    if matches!(e, BlockError::Protocol | BlockError::Disconnected) {
                        submitted += 1;
                        break 'run;
                    }
                }
            }
            submitted += 1;
            block = pick(submitted);
        }
        dev.kick();
        if pending.is_empty() && submitted == ops {
            break;
        }
        done.clear();
        if let Err(e) = dev.poll(&mut done) {
            errors += 1;
            first_error.get_or_insert(e);
            break;
        }
        let now = waiter.now_ns();
        let got = done.len();
        waiter.polled(got);
        for c in done.drain(..) {
            let Some(i) = pending.iter().position(|p| p.tag == c.tag) else {
                errors += 1;
                continue;
            };
            let p = pending.swap_remove(i);
            let bad_len = op == BlockOp::Read && c.data.len() as u64 != bs;
            match c.result {
                Ok(()) if c.op == op && !bad_len => {
                    ios += 1;
                    clat.record(now.saturating_sub(p.submitted_ns));
                }
                Ok(()) => errors += 1,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if got == 0 && !waiter.wait() {
            break;
        }
    }
    let end = waiter.now_ns();
    mark(Edge::End);
    // Requests never completed, and those never submitted, failed.
    errors += pending.len() as u64 + (ops - submitted);
    result.outcome = Ok(BenchMeasure {
        ios,
        io_bytes: ios * bs,
        runtime_ns: end.saturating_sub(start),
        errors,
        first_error,
        clat,
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// An in-memory disk that completes requests on `poll`, newest first (out of
    /// order), with injectable faults.
    struct MemDisk {
        info: BlockInfo,
        bytes: Vec<u8>,
        queue: VecDeque<(u64, BlockOp, u64, u32, Vec<u8>)>,
        next_tag: u64,
        /// Polls that complete nothing before one that does (a slow device).
        lazy: u32,
        lazy_left: u32,
        corrupt_read_at: Option<u64>,
        fail_every: Option<u64>,
        bogus_tag: bool,
        short_read: bool,
        submitted: u64,
        flushes: u64,
        writes_since_flush: u64,
        /// Most requests queued at once.
        max_queued: usize,
        /// Flushes fail with an I/O error.
        fail_flushes: bool,
        /// Where a completed flush leaves a copy of the disk (a durability test's log).
        log: Option<Rc<RefCell<Vec<Event>>>>,
    }

    /// What a durability test saw, in order.
    #[derive(Debug)]
    enum Event {
        /// A flush completed; the disk then held these bytes.
        Flushed(Vec<u8>),
        /// The engine announced this point.
        Durable(DurablePoint),
    }

    impl MemDisk {
        fn new(sectors: u64) -> Self {
            Self {
                info: BlockInfo {
                    sectors,
                    sector_size: 512,
                    read_only: false,
                    flush: true,
                    queue_depth: 32,
                    max_transfer: 64 << 10,
                },
                bytes: vec![0; (sectors * 512) as usize],
                queue: VecDeque::new(),
                next_tag: 100,
                lazy: 0,
                lazy_left: 0,
                corrupt_read_at: None,
                fail_every: None,
                bogus_tag: false,
                short_read: false,
                submitted: 0,
                flushes: 0,
                writes_since_flush: 0,
                max_queued: 0,
                fail_flushes: false,
                log: None,
            }
        }
    }

    impl BlockDevice for MemDisk {
        fn info(&self) -> BlockInfo {
            self.info
        }
        fn submit(
            &mut self,
            op: BlockOp,
            sector: u64,
            count: u32,
            data: &[u8],
        ) -> Result<u64, BlockError> {
            if self.queue.len() as u32 >= self.info.queue_depth {
                return Err(BlockError::Busy);
            }
            self.info.check(op, sector, count, data)?;
            self.submitted += 1;
            let tag = self.next_tag;
            self.next_tag += 3;
            self.queue
                .push_back((tag, op, sector, count, data.to_vec()));
            self.max_queued = self.max_queued.max(self.queue.len());
            Ok(tag)
        }
        fn kick(&mut self) {}
        fn poll(&mut self, done: &mut Vec<BlockCompletion>) -> Result<usize, BlockError> {
            if self.lazy_left > 0 {
                self.lazy_left -= 1;
                return Ok(0);
            }
            self.lazy_left = self.lazy;
            let n = self.queue.len();
            while let Some((tag, op, sector, count, data)) = self.queue.pop_back() {
                let start = (sector * 512) as usize;
                let len = count as usize * 512;
                let fail = self.fail_every.is_some_and(|k| tag % k == 0)
                    || (op == BlockOp::Flush && self.fail_flushes);
                let mut out = Vec::new();
                let result = if fail {
                    Err(BlockError::Io)
                } else {
                    match op {
                        BlockOp::Read => {
                            out = self.bytes[start..start + len].to_vec();
                            if let Some(at) = self.corrupt_read_at
                                && (start as u64..(start + len) as u64).contains(&at)
                            {
                                out[(at - start as u64) as usize] ^= 0xff;
                            }
                            if self.short_read {
                                out.pop();
                            }
                        }
                        BlockOp::Write => {
                            self.bytes[start..start + len].copy_from_slice(&data);
                            self.writes_since_flush += 1;
                        }
                        BlockOp::Flush => {
                            self.flushes += 1;
                            self.writes_since_flush = 0;
                            if let Some(log) = &self.log {
                                log.borrow_mut().push(Event::Flushed(self.bytes.clone()));
                            }
                        }
                    }
                    Ok(())
                };
                done.push(BlockCompletion {
                    tag: if self.bogus_tag { tag + 1 } else { tag },
                    op,
                    result,
                    data: out,
                });
            }
            Ok(n)
        }
        fn in_flight(&self) -> u32 {
            self.queue.len() as u32
        }
    }

    struct Clock {
        t: u64,
        waits: u32,
        limit: u32,
    }

    impl Waiter for Clock {
        fn wait(&mut self) -> bool {
            self.t += 1000;
            self.waits += 1;
            self.waits < self.limit
        }
        fn now_ns(&self) -> u64 {
            self.t
        }
    }

    fn clock() -> Clock {
        Clock {
            t: 0,
            waits: 0,
            limit: 1000,
        }
    }

    fn cfg(phase: Phase) -> Config {
        Config {
            phase,
            offset: 4096,
            size: 64 << 10,
            block: 4096,
            queue_depth: 4,
            seed: 9,
            ..Config::default()
        }
    }

    #[test]
    fn write_then_verify_round_trips_and_flushes() {
        let mut d = MemDisk::new(1024);
        let r = run(&mut d, &cfg(Phase::WritePattern), &mut clock()).unwrap();
        assert!(r.passed(), "{r}");
        assert_eq!((r.writes, r.flushes, r.bytes_written), (16, 1, 64 << 10));
        assert_eq!(d.flushes, 1);
        assert_eq!(d.writes_since_flush, 0);
        assert!(r.max_in_flight <= 4 && r.max_in_flight >= 2);
        // The image holds the pattern at the region's absolute offsets.
        assert_eq!(
            pattern::check(9, 4096, &d.bytes[4096..4096 + (64 << 10)]),
            None
        );
        assert!(d.bytes[..4096].iter().all(|&b| b == 0));
        let r = run(&mut d, &cfg(Phase::VerifyPattern), &mut clock()).unwrap();
        assert!(r.passed(), "{r}");
        assert_eq!((r.reads, r.bytes_read, r.mismatches), (16, 64 << 10, 0));
    }

    #[test]
    fn verify_reports_the_first_mismatch() {
        let mut d = MemDisk::new(1024);
        pattern::fill(9, 4096, &mut d.bytes[4096..4096 + (64 << 10)]);
        d.bytes[4096 + 5000] ^= 1;
        let r = run(&mut d, &cfg(Phase::VerifyPattern), &mut clock()).unwrap();
        assert!(!r.passed());
        assert_eq!(r.mismatches, 1);
        assert_eq!(r.first_mismatch.unwrap().offset, 4096 + 5000);
        // A wrong seed fails every block.
        let r = run(
            &mut d,
            &Config {
                seed: 10,
                ..cfg(Phase::VerifyPattern)
            },
            &mut clock(),
        )
        .unwrap();
        assert_eq!(r.mismatches, 16);
        // Unverified reads pass.
        let r = run(
            &mut d,
            &Config {
                verify: false,
                ..cfg(Phase::SeqRead)
            },
            &mut clock(),
        )
        .unwrap();
        assert!(r.passed());
    }

    #[test]
    fn random_phases_keep_the_pattern_and_verify() {
        let mut d = MemDisk::new(1024);
        run(&mut d, &cfg(Phase::SeqWrite), &mut clock()).unwrap();
        for phase in [Phase::RandRead, Phase::RandWrite, Phase::RandRw] {
            d.lazy = 2;
            let c = Config {
                ops: 50,
                queue_depth: 8,
                ..cfg(phase)
            };
            let r = run(&mut d, &c, &mut clock()).unwrap();
            assert!(r.passed(), "{phase:?}: {r}");
            assert_eq!(r.ops, 50);
            assert_eq!(r.max_in_flight, 8);
            match phase {
                Phase::RandRead => assert_eq!(r.reads, 50),
                Phase::RandWrite => assert_eq!(r.writes, 50),
                _ => assert!(r.reads > 5 && r.writes > 5, "{r}"),
            }
        }
        assert_eq!(
            pattern::check(9, 4096, &d.bytes[4096..4096 + (64 << 10)]),
            None
        );
    }

    #[test]
    fn short_last_block_and_queue_depth_one() {
        let mut d = MemDisk::new(64);
        let c = Config {
            offset: 0,
            size: 9 * 512,
            block: 4096,
            queue_depth: 1,
            ..cfg(Phase::WritePattern)
        };
        let r = run(&mut d, &c, &mut clock()).unwrap();
        assert!(r.passed(), "{r}");
        assert_eq!(
            (r.writes, r.bytes_written, r.max_in_flight),
            (2, 9 * 512, 1)
        );
        let r = run(
            &mut d,
            &Config {
                phase: Phase::VerifyPattern,
                ..c
            },
            &mut clock(),
        )
        .unwrap();
        assert!(r.passed(), "{r}");
    }

    #[test]
    fn hostile_device_is_counted_not_followed() {
        let mut d = MemDisk::new(1024);
        d.bogus_tag = true;
        let r = run(&mut d, &cfg(Phase::SeqRead), &mut clock()).unwrap();
        assert!(!r.passed());
        assert!(r.protocol_errors > 0);
        assert!(r.abandoned > 0); // the real tags never came back; the waiter gave up

        let mut d = MemDisk::new(1024);
        d.short_read = true;
        let r = run(&mut d, &cfg(Phase::SeqRead), &mut clock()).unwrap();
        assert_eq!(r.protocol_errors, 16);

        let mut d = MemDisk::new(1024);
        d.fail_every = Some(2);
        let r = run(&mut d, &cfg(Phase::SeqWrite), &mut clock()).unwrap();
        assert!(r.errors > 0 && !r.passed());
        assert_eq!(r.first_error, Some(BlockError::Io));

        let mut d = MemDisk::new(1024);
        d.corrupt_read_at = Some(4096 + 100);
        pattern::fill(9, 4096, &mut d.bytes[4096..4096 + (64 << 10)]);
        let r = run(&mut d, &cfg(Phase::VerifyPattern), &mut clock()).unwrap();
        assert_eq!(r.first_mismatch.unwrap().offset, 4196);
    }

    #[test]
    fn a_device_that_never_completes_is_abandoned() {
        let mut d = MemDisk::new(1024);
        d.lazy = u32::MAX;
        d.lazy_left = u32::MAX;
        let mut c = clock();
        c.limit = 10;
        let r = run(&mut d, &cfg(Phase::SeqRead), &mut c).unwrap();
        assert!(!r.passed());
        assert_eq!(r.abandoned, 16);
        assert_eq!(c.waits, 10);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let mut d = MemDisk::new(64);
        let bad = [
            (
                Config {
                    block: 1000,
                    ..cfg(Phase::SeqRead)
                },
                ConfigError::BadBlockSize(1000),
            ),
            (
                Config {
                    block: 0,
                    ..cfg(Phase::SeqRead)
                },
                ConfigError::BadBlockSize(0),
            ),
            (
                Config {
                    block: 128 << 10,
                    ..cfg(Phase::SeqRead)
                },
                ConfigError::BlockTooLarge(128 << 10, 64 << 10),
            ),
            (
                Config {
                    size: 64 << 20,
                    ..cfg(Phase::SeqRead)
                },
                ConfigError::BadRegion,
            ),
            (
                Config {
                    offset: 100,
                    ..cfg(Phase::SeqRead)
                },
                ConfigError::BadRegion,
            ),
            (
                Config {
                    size: 0,
                    ..cfg(Phase::SeqRead)
                },
                ConfigError::BadRegion,
            ),
            (
                Config {
                    offset: u64::MAX - 511,
                    ..cfg(Phase::SeqRead)
                },
                ConfigError::BadRegion,
            ),
            (
                Config {
                    queue_depth: 0,
                    size: 4096,
                    ..cfg(Phase::SeqRead)
                },
                ConfigError::ZeroQueueDepth,
            ),
        ];
        for (c, e) in bad {
            assert_eq!(run(&mut d, &c, &mut clock()), Err(e));
        }
        d.info.read_only = true;
        assert_eq!(
            run(
                &mut d,
                &Config {
                    size: 4096,
                    ..cfg(Phase::RandRw)
                },
                &mut clock()
            ),
            Err(ConfigError::ReadOnly)
        );
        d.info.sector_size = 0;
        assert_eq!(
            run(&mut d, &cfg(Phase::SeqRead), &mut clock()),
            Err(ConfigError::BadSectorSize(0))
        );
        assert_eq!(d.submitted, 0);
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.name()), Some(p));
        }
        assert_eq!(Phase::parse("seq"), None);
    }

    /// A waiter that logs every durable point beside the disk's flushes.
    struct Recorder {
        clock: Clock,
        log: Rc<RefCell<Vec<Event>>>,
    }

    impl Waiter for Recorder {
        fn wait(&mut self) -> bool {
            self.clock.wait()
        }
        fn now_ns(&self) -> u64 {
            self.clock.now_ns()
        }
        fn durable(&mut self, point: DurablePoint) {
            self.log.borrow_mut().push(Event::Durable(point));
        }
    }

    /// The region's bytes a point promises: generation G before block `next`,
    /// generation G - 1 from there on.
    fn promised(c: &Config, p: DurablePoint) -> Vec<u8> {
        let split = (p.next * u64::from(c.block)).min(c.size) as usize;
        let mut want = vec![0u8; c.size as usize];
        let (new, old) = want.split_at_mut(split);
        pattern::fill(generation_seed(c.seed, p.generation), c.offset, new);
        pattern::fill(
            generation_seed(c.seed, p.generation - 1),
            c.offset + split as u64,
            old,
        );
        want
    }

    /// Runs the durability phase on a disk whose region holds generation 0; returns the
    /// report, the log and the disk.
    fn durable_run(c: &Config, lazy: u32) -> (Report, Vec<Event>, MemDisk) {
        let mut d = MemDisk::new(1024);
        let region = c.offset as usize..(c.offset + c.size) as usize;
        pattern::fill(generation_seed(c.seed, 0), c.offset, &mut d.bytes[region]);
        d.lazy = lazy;
        let log = Rc::new(RefCell::new(Vec::new()));
        d.log = Some(log.clone());
        let mut w = Recorder {
            clock: clock(),
            log: log.clone(),
        };
        let r = run(&mut d, c, &mut w).unwrap();
        d.log = None;
        let events = log.take();
        (r, events, d)
    }

    fn durable_cfg() -> Config {
        Config {
            ops: 200,
            queue_depth: 4,
            ..cfg(Phase::Durability)
        }
    }

    #[test]
    fn every_durable_point_was_on_disk_when_its_flush_completed() {
        for (c, lazy) in [
            (durable_cfg(), 0),
            (durable_cfg(), 2),
            (
                Config {
                    queue_depth: 1,
                    ..durable_cfg()
                },
                1,
            ),
            // A short last block: 9 sectors in blocks of 8.
            (
                Config {
                    size: 9 * 512,
                    ops: 23,
                    ..durable_cfg()
                },
                0,
            ),
        ] {
            let (r, events, d) = durable_run(&c, lazy);
            assert!(r.passed(), "{r}");
            assert_eq!(r.writes, c.ops);
            assert_eq!(r.abandoned, 0);
            let points: Vec<DurablePoint> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Durable(p) => Some(*p),
                    Event::Flushed(_) => None,
                })
                .collect();
            assert_eq!(points.len() as u64, r.flushes);
            assert_eq!(d.flushes, r.flushes);
            assert!(r.flushes >= 2, "{r}");
            // Each point follows its own flush, and that flush found the disk holding
            // exactly what the point promises (no write was in flight across it).
            let mut flushed: Option<&Vec<u8>> = None;
            for e in &events {
                match e {
                    Event::Flushed(bytes) => flushed = Some(bytes),
                    Event::Durable(p) => {
                        let bytes = flushed.take().expect("a point without a completed flush");
                        let region = &bytes[c.offset as usize..(c.offset + c.size) as usize];
                        assert!(region == promised(&c, *p).as_slice(), "{p}");
                    }
                }
            }
            // Flushes come after 1 to 2/3 of the region's blocks of writes; the last
            // point covers every write.
            let blocks = c.size.div_ceil(u64::from(c.block));
            let written = |p: &DurablePoint| (p.generation - 1) * blocks + p.next;
            let span = (2 * blocks / 3).max(1);
            for pair in points.windows(2) {
                let step = written(&pair[1]) - written(&pair[0]);
                assert!((1..=span).contains(&step), "{} -> {}", pair[0], pair[1]);
            }
            assert_eq!(written(points.last().unwrap()), c.ops);
            assert!(r.max_in_flight <= c.queue_depth);
        }
    }

    #[test]
    fn durable_points_depend_on_the_seed_alone() {
        let points = |c: &Config, lazy| {
            durable_run(c, lazy)
                .1
                .into_iter()
                .filter_map(|e| match e {
                    Event::Durable(p) => Some(p),
                    Event::Flushed(_) => None,
                })
                .collect::<Vec<_>>()
        };
        let c = durable_cfg();
        let a = points(&c, 0);
        assert_eq!(a, points(&c, 3), "completion timing changed the points");
        assert_ne!(a, points(&Config { seed: 10, ..c }, 0));
    }

    #[test]
    fn a_failed_flush_announces_nothing_and_ends_the_phase() {
        let c = durable_cfg();
        let mut d = MemDisk::new(1024);
        d.fail_flushes = true;
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut w = Recorder {
            clock: clock(),
            log: log.clone(),
        };
        let r = run(&mut d, &c, &mut w).unwrap();
        assert!(!r.passed());
        assert_eq!((r.errors, r.flushes), (1, 0));
        assert_eq!(r.first_error, Some(BlockError::Io));
        assert!(r.writes < c.ops);
        assert!(log.borrow().is_empty());
        // A failed write ends it too, before any flush covering it.
        let mut d = MemDisk::new(1024);
        d.fail_every = Some(5);
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut w = Recorder {
            clock: clock(),
            log: log.clone(),
        };
        let r = run(&mut d, &c, &mut w).unwrap();
        assert!(!r.passed());
        assert!(log.borrow().is_empty(), "{:?}", log.borrow());
    }

    #[test]
    fn durability_needs_a_flush() {
        let mut d = MemDisk::new(1024);
        d.info.flush = false;
        assert_eq!(
            run(&mut d, &durable_cfg(), &mut clock()),
            Err(ConfigError::NoFlush)
        );
        assert_eq!(d.submitted, 0);
        assert_eq!(Phase::parse("durable-writes"), Some(Phase::Durability));
    }

    #[test]
    fn durable_lines_round_trip_and_nothing_else_parses() {
        let p = DurablePoint {
            generation: 7,
            next: 12,
        };
        let line = p.to_string();
        assert_eq!(line, "blk-durable: gen=7 next=12");
        assert_eq!(DurablePoint::parse_line(&line), Some(p));
        assert_eq!(DurablePoint::parse_line(&format!("{line}\r\n")), Some(p));
        for bad in [
            "",
            "blk-durable: gen=7",
            "blk-durable: gen=0 next=1",
            "blk-durable: gen=7 next=",
            "blk-durable: gen=+7 next=1",
            "blk-durable: gen=7 next=1 x",
            "blk-durable: gen=7  next=1",
            "blk-durable: gen=99999999999999999999 next=1",
            " blk-durable: gen=7 next=1",
            "blk: gen=7 next=1",
        ] {
            assert_eq!(DurablePoint::parse_line(bad), None, "{bad:?}");
        }
    }

    /// A waiter whose clock moves 100 ns at every reading and 1000 ns at every wait.
    struct Ticking {
        t: core::cell::Cell<u64>,
        waits: u32,
        limit: u32,
    }

    impl Waiter for Ticking {
        fn wait(&mut self) -> bool {
            self.t.set(self.t.get() + 1000);
            self.waits += 1;
            self.waits < self.limit
        }
        fn now_ns(&self) -> u64 {
            self.t.set(self.t.get() + 100);
            self.t.get()
        }
    }

    fn ticking() -> Ticking {
        Ticking {
            t: core::cell::Cell::new(0),
            waits: 0,
            limit: 1000,
        }
    }

    const BENCH: BenchConfig = BenchConfig {
        offset: 8192,
        size: 1 << 20,
        ops: 32,
        seed: 3,
    };

    fn bench(d: &mut MemDisk, cfg: &BenchConfig, p: &BenchPhase) -> (BenchResult, Vec<Edge>) {
        let mut edges = Vec::new();
        let r = run_bench(d, cfg, p, &mut ticking(), &mut |e| edges.push(e));
        (r, edges)
    }

    #[test]
    fn the_matrix_is_in_the_planned_order() {
        let m = bench_matrix();
        let got: Vec<_> = m
            .iter()
            .map(|p| (p.phase, p.bs, p.iodepth, p.rw.name()))
            .collect();
        let mut want = Vec::new();
        for bs in [4096, 65536] {
            for qd in [1, 32] {
                for rw in ["read", "write", "randread", "randwrite"] {
                    want.push((want.len() as u32 + 1, bs, qd, rw));
                }
            }
        }
        assert_eq!(got, want);
    }

    #[test]
    fn every_phase_makes_its_requests_inside_the_region() {
        for p in bench_matrix() {
            let mut d = MemDisk::new(4096); // 2 MiB
            d.lazy = 1;
            let (r, edges) = bench(&mut d, &BENCH, &p);
            assert_eq!(edges, [Edge::Start, Edge::End], "{p:?}");
            let m = r.outcome.as_ref().unwrap();
            assert!(r.passed(), "{r}");
            assert_eq!((m.ios, m.errors), (32, 0), "{p:?}");
            assert_eq!(m.io_bytes, 32 * u64::from(p.bs));
            assert_eq!(m.clat.count(), 32);
            assert!(m.clat.min() > 0 && m.runtime_ns >= m.clat.max());
            assert_eq!(d.max_queued, p.iodepth as usize, "{p:?}");
            assert_eq!(d.submitted, 32);
            let outside = |bytes: &[u8]| {
                bytes[..8192]
                    .iter()
                    .chain(&bytes[8192 + (1 << 20)..])
                    .all(|&b| b == 0)
            };
            assert!(outside(&d.bytes), "{p:?} wrote outside the region");
            if p.rw.op() == BlockOp::Write {
                // Every block written holds the one buffer: the pattern of the region's
                // first block.
                let mut want = vec![0u8; p.bs as usize];
                pattern::fill(3, 8192, &mut want);
                let region = &d.bytes[8192..8192 + (1 << 20)];
                let written: Vec<_> = region
                    .chunks(p.bs as usize)
                    .filter(|c| c.iter().any(|&b| b != 0))
                    .collect();
                assert!(written.iter().all(|c| *c == want.as_slice()), "{p:?}");
                if p.rw == BenchRw::Write {
                    // Sequential: the first blocks of the region, wrapping past its end.
                    let n = (32 * u64::from(p.bs)).min(1 << 20) as usize;
                    assert_eq!(written.len() * p.bs as usize, n, "{p:?}");
                    assert!(region[..n].iter().any(|&b| b != 0));
                } else {
                    let blocks = (1usize << 20) / p.bs as usize;
                    assert!(
                        written.len() > blocks.min(32) / 2,
                        "{p:?}: random blocks repeat too often"
                    );
                }
            }
        }
    }

    #[test]
    fn a_device_shallower_than_the_phase_still_gets_every_request() {
        // IDE-like: one request at a time; the rest come back Busy and are retried.
        let mut d = MemDisk::new(4096);
        d.info.queue_depth = 1;
        let p = bench_matrix()[6]; // randread, 4 KiB, qd 32
        assert_eq!((p.iodepth, p.rw), (32, BenchRw::RandRead));
        let (r, _) = bench(&mut d, &BENCH, &p);
        assert_eq!(r.device_queue_depth, 1);
        let m = r.outcome.as_ref().unwrap();
        assert_eq!((m.ios, m.errors, d.max_queued), (32, 0, 1));
        let line = r.to_string();
        assert!(
            line.contains("\"iodepth\":32,\"device_queue_depth\":1,"),
            "{line}"
        );
    }

    #[test]
    fn phases_the_device_cannot_run_are_skipped_with_a_reason() {
        let mut d = MemDisk::new(4096);
        d.info.max_transfer = 4096;
        d.info.read_only = true;
        for p in bench_matrix() {
            let (r, edges) = bench(&mut d, &BENCH, &p);
            let reason = match (p.bs, p.rw.op()) {
                (65536, _) => Some("bs exceeds the device's largest transfer"),
                (_, BlockOp::Write) => Some("the device is read-only"),
                _ => None,
            };
            assert_eq!(r.outcome.as_ref().err().copied(), reason, "{p:?}");
            assert!(r.passed());
            if let Some(reason) = reason {
                assert!(edges.is_empty(), "a skipped phase is not marked");
                assert!(
                    r.to_string()
                        .ends_with(&format!(",\"skipped\":\"{reason}\"}}"))
                );
            }
        }
        assert_eq!(d.submitted, 4 * 32);
        let small = BenchConfig {
            size: 2048,
            ..BENCH
        };
        let p = bench_matrix()[0];
        assert_eq!(
            bench(&mut MemDisk::new(64), &small, &p).0.outcome.err(),
            Some("the region is smaller than bs")
        );
        let beyond = BenchConfig {
            offset: u64::MAX - 4095,
            ..BENCH
        };
        assert_eq!(
            bench(&mut MemDisk::new(64), &beyond, &p).0.outcome.err(),
            Some("the region goes beyond the device")
        );
    }

    #[test]
    fn a_failing_device_counts_every_request_once() {
        let p = bench_matrix()[5]; // write, 4 KiB, qd 32
        let mut d = MemDisk::new(4096);
        d.fail_every = Some(2);
        let m = bench(&mut d, &BENCH, &p).0.outcome.unwrap();
        assert!(m.errors > 0 && m.ios > 0);
        assert_eq!(m.ios + m.errors, 32);
        assert_eq!(m.first_error, Some(BlockError::Io));
        assert_eq!(m.clat.count(), m.ios);

        let mut d = MemDisk::new(4096);
        d.bogus_tag = true;
        let m = bench(&mut d, &BENCH, &p).0.outcome.unwrap();
        assert_eq!(m.ios, 0);
        assert!(
            m.errors >= 32,
            "unknown tags and the abandoned requests: {m:?}"
        );

        let mut d = MemDisk::new(4096);
        d.short_read = true;
        let m = bench(&mut d, &BENCH, &bench_matrix()[4]).0.outcome.unwrap();
        assert_eq!((m.ios, m.errors), (0, 32));

        // Never completes: the waiter gives up; still one End mark, every request failed.
        let mut d = MemDisk::new(4096);
        d.lazy = u32::MAX;
        d.lazy_left = u32::MAX;
        let mut edges = Vec::new();
        let mut w = ticking();
        w.limit = 5;
        let r = run_bench(&mut d, &BENCH, &p, &mut w, &mut |e| edges.push(e));
        assert_eq!(edges, [Edge::Start, Edge::End]);
        let m = r.outcome.as_ref().unwrap();
        assert_eq!((m.ios, m.errors), (0, 32));
        assert!(!r.passed());
    }

    #[test]
    fn histogram_buckets_hold_their_values() {
        let mut rng = Rng::new(5);
        let mut values: Vec<u64> = (0..300).chain([u64::MAX, u64::MAX - 1, 1 << 63]).collect();
        for _ in 0..10_000 {
            let v = rng.next();
            values.push(v >> (v % 64));
        }
        for v in values {
            let i = Histogram::index(v);
            assert!(i < HIST_BUCKETS, "{v}");
            let (lo, width) = Histogram::bucket(i);
            assert!(
                lo <= v && v - lo < width,
                "{v}: bucket {i} = [{lo}, +{width})"
            );
            // At most 1/64 relative width beyond the exact range.
            assert!(v < 2 * HIST_SUB || width <= lo / HIST_SUB, "{v}");
        }
        assert_eq!(Histogram::index(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn percentiles_follow_fio() {
        let mut h = Histogram::new();
        assert_eq!((h.min(), h.max(), h.percentile(50_000)), (0, 0, 0));
        for v in 1..=100 {
            h.record(v);
        }
        // Exact buckets below 128: the k-th percentile of 1..=100 is k.
        assert_eq!(h.percentile(1_000), 1);
        assert_eq!(h.percentile(50_000), 50);
        assert_eq!(h.percentile(99_000), 99);
        assert_eq!(h.percentile(99_990), 100);
        assert_eq!(h.mean_milli(), 50_500);

        let mut h = Histogram::new();
        let mut rng = Rng::new(9);
        for _ in 0..1000 {
            h.record(1000 + rng.next() % 1_000_000);
        }
        let ps: Vec<_> = PERCENTILES_MILLI.iter().map(|&m| h.percentile(m)).collect();
        assert!(ps.windows(2).all(|w| w[0] <= w[1]), "{ps:?}");
        assert!(h.min() <= ps[0] && ps[16] <= h.max());
        let p50 = h.percentile(50_000);
        assert!((480_000..=520_000).contains(&p50), "{p50}");
        // One sample: every percentile is it.
        let mut h = Histogram::new();
        h.record(123_456);
        assert!(
            PERCENTILES_MILLI
                .iter()
                .all(|&m| h.percentile(m) == 123_456)
        );
    }

    #[test]
    fn the_result_line_has_fios_keys() {
        let mut clat = Histogram::new();
        for v in [10, 20, 30] {
            clat.record(v);
        }
        let r = BenchResult {
            phase: bench_matrix()[15],
            device_queue_depth: 32,
            outcome: Ok(BenchMeasure {
                ios: 3,
                io_bytes: 3 * 65536,
                runtime_ns: 99,
                errors: 0,
                first_error: None,
                clat,
            }),
        };
        assert_eq!(
            r.to_string(),
            "{\"phase\":16,\"rw\":\"randwrite\",\"bs\":65536,\"iodepth\":32,\
             \"device_queue_depth\":32,\"ios\":3,\"io_bytes\":196608,\"runtime_ns\":99,\
             \"errors\":0,\"clat_ns\":{\"min\":10,\"max\":30,\"mean\":20.000,\"percentile\":{\
             \"1.000000\":10,\"5.000000\":10,\"10.000000\":10,\"20.000000\":10,\
             \"30.000000\":10,\"40.000000\":20,\"50.000000\":20,\"60.000000\":20,\
             \"70.000000\":30,\"80.000000\":30,\"90.000000\":30,\"95.000000\":30,\
             \"99.000000\":30,\"99.500000\":30,\"99.900000\":30,\"99.950000\":30,\
             \"99.990000\":30}}}"
        );
    }
}
