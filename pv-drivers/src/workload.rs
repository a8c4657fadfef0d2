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

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::device::{BlockCompletion, BlockDevice, BlockError, BlockOp};
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
}

impl Phase {
    /// Every phase, for help texts and tests.
    pub const ALL: [Self; 7] = [
        Self::WritePattern,
        Self::VerifyPattern,
        Self::SeqRead,
        Self::SeqWrite,
        Self::RandRead,
        Self::RandWrite,
        Self::RandRw,
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
            Self::WritePattern | Self::SeqWrite | Self::RandWrite | Self::RandRw
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
    Ok(())
}

/// Runs one workload to the end (or until `waiter` gives up, or the device fails).
pub fn run(
    dev: &mut dyn BlockDevice,
    cfg: &Config,
    waiter: &mut dyn Waiter,
) -> Result<Report, ConfigError> {
    validate(dev, cfg)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::BlockInfo;
    use std::collections::VecDeque;

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
                let fail = self.fail_every.is_some_and(|k| tag % k == 0);
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
}
