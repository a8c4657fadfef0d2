//! blkfront (`pv_drivers`) against blkback (the shim) in one process, over the
//! loopback domain pair: real grants, event channels and xenstored; blkback on its
//! own thread serving a temporary disk image. Also hostile peers on both sides: a
//! hand-driven frontend writing raw requests, and a hand-driven backend writing lying
//! responses. Every wait is bounded by a generous deadline; nothing is timed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_shim::backends::blkback::{Blkback, BlkbackOptions, BlkbackStats, DiskImage, DiskOptions};
use host_shim::backends::loopback::{FrontStore, LoopFront, LoopXs, Loopback};
use host_shim::backends::{
    DevicePaths, Kick, Running, create_device, read_state, spawn, write_state,
};
use pv_drivers::abi::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BlkifRequest,
    BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse,
};
use pv_drivers::abi::grant_table::GrantRef;
use pv_drivers::blkfront::{Blkfront, BlkfrontConfig, Violation};
use pv_drivers::device::{BlockCompletion, BlockDevice, BlockError, BlockOp};
use pv_drivers::follow::Followed;
use pv_drivers::frontend::FrontendEnv;
use pv_drivers::ring::{BlkifBackRing, BlkifFrontRing, RingError, SRING_REQ_PROD, SRING_RSP_PROD};
use pv_drivers::shmem::{HeapSharedMemory, SharedMemory};
use pv_drivers::workload::{self, Waiter};
use pv_drivers::xenbus::XenbusState;
use pv_drivers::xenstore::{TxId, XenStore};

const DOMID: u16 = 5;
const DEVID: u32 = 768;
const RAM_PAGES: usize = 8192;
const WAIT: Duration = Duration::from_secs(60);

type Xs = XenStore<Arc<HeapSharedMemory>, LoopXs>;
type Front = Blkfront<LoopFront>;

/// A temporary disk image, removed when dropped.
struct TempImage(PathBuf);

impl TempImage {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "blk-front-back-{}-{tag}-{n}.img",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("read image")
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

use host_shim::testing::Rng;

/// A guest, a running blkback and the test's handles on both.
struct Rig {
    lb: Arc<Loopback>,
    running: Option<Running>,
    stats: Arc<Mutex<BlkbackStats>>,
    paths: DevicePaths,
    image: TempImage,
}

impl Rig {
    fn new(bytes: u64, disk: DiskOptions, opts: BlkbackOptions) -> Self {
        let image = TempImage::new("disk");
        let disk = DiskImage::open(
            image.path(),
            DiskOptions {
                create_size: Some(bytes),
                read_only: false,
                ..disk
            },
        )
        .expect("create image");
        Self::with_disk(image, disk, opts)
    }

    fn with_disk(image: TempImage, disk: DiskImage, opts: BlkbackOptions) -> Self {
        let lb = Loopback::new(DOMID, "blk", RAM_PAGES).expect("loopback");
        let kick = Kick::new();
        let bb = Blkback::new(lb.back(), kick.clone(), DEVID, disk, opts).expect("blkback");
        let stats = bb.stats_handle();
        let paths = bb.paths().clone();
        let running = spawn(bb, kick).expect("spawn");
        Self {
            lb,
            running: Some(running),
            stats,
            paths,
            image,
        }
    }

    fn read_only(bytes: u64) -> Self {
        let image = TempImage::new("ro");
        drop(
            DiskImage::open(
                image.path(),
                DiskOptions {
                    create_size: Some(bytes),
                    ..Default::default()
                },
            )
            .expect("create"),
        );
        std::fs::write(image.path(), vec![0x5a; bytes as usize]).expect("fill");
        let disk = DiskImage::open(
            image.path(),
            DiskOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .expect("open ro");
        Self::with_disk(image, disk, BlkbackOptions::default())
    }

    fn xs(&self) -> Xs {
        self.lb.xenstore().expect("xenstore")
    }

    fn connect(&self, xs: &mut Xs, config: BlkfrontConfig) -> Front {
        Blkfront::connect(self.lb.front(), xs, &DEVID.to_string(), config).expect("connect")
    }

    fn back_stats(&self) -> BlkbackStats {
        self.stats.lock().unwrap().clone()
    }

    fn store_read(&self, path: &str) -> Option<Vec<u8>> {
        self.lb.with_store(|xs| xs.dom0().read(None, path).ok())
    }

    fn back_state(&self) -> XenbusState {
        let path = self.paths.back("state");
        self.lb.with_store(|xs| read_state(xs, &path))
    }

    /// Waits (bounded) until the backend's state is `want`.
    fn wait_back_state(&self, want: XenbusState) {
        let deadline = Instant::now() + WAIT;
        while self.back_state() != want {
            assert!(
                Instant::now() < deadline,
                "backend stuck in {:?}, wanted {want:?}",
                self.back_state()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the backend's counters satisfy `f`.
    fn wait_back_stats(&self, what: &str, f: impl Fn(&BlkbackStats) -> bool) -> BlkbackStats {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.back_stats();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "backend never reached {what}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the backend thread; its final counters (or the panic marker).
    fn stop(&mut self) -> serde_json::Value {
        self.running.take().expect("running").stop()
    }
}

/// Polls `dev` until `n` completions arrived (waiting on the frontend's event port).
fn collect(dev: &mut Front, lb: &Loopback, n: usize) -> Vec<BlockCompletion> {
    let deadline = Instant::now() + WAIT;
    let mut done = Vec::new();
    loop {
        lb.take_front_events();
        match dev.poll(&mut done) {
            Ok(_) => {}
            Err(e) => panic!("poll failed: {e} after {} completions", done.len()),
        }
        if done.len() >= n {
            return done;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {n} completions arrived ({:?})",
            done.len(),
            dev.stats()
        );
        lb.wait_front_event(left.min(Duration::from_millis(500)));
    }
}

/// One synchronous request.
fn run(
    dev: &mut Front,
    lb: &Loopback,
    op: BlockOp,
    sector: u64,
    count: u32,
    data: &[u8],
) -> BlockCompletion {
    let tag = dev.submit(op, sector, count, data).expect("submit");
    dev.kick();
    let mut done = collect(dev, lb, 1);
    assert_eq!(done.len(), 1);
    let c = done.pop().unwrap();
    assert_eq!(c.tag, tag);
    c
}

/// Writes random data in waves of `depth` requests in flight (disjoint ranges within
/// a wave, as blkif promises no ordering among requests in flight), checks every
/// completion, then reads the whole disk back in big requests and compares it with
/// the model and with the file on the host.
fn write_read_verify(
    rig: &Rig,
    dev: &mut Front,
    seed: u64,
    requests: usize,
    depth: usize,
    max_sectors: u64,
) {
    let info = dev.info();
    let sectors = info.sectors;
    let chunk = max_sectors;
    let chunks = sectors / chunk;
    assert!(chunks as usize >= depth, "disk too small for depth {depth}");
    let mut model = rig.image.contents();
    assert_eq!(model.len() as u64, sectors * 512);
    let mut rng = Rng(seed | 1);
    let mut submitted = 0;
    let mut max_in_flight = 0;
    while submitted < requests {
        let wave = depth.min(requests - submitted);
        let mut used = HashSet::new();
        let mut tags = HashSet::new();
        for _ in 0..wave {
            let c = loop {
                let c = rng.below(chunks);
                if used.insert(c) {
                    break c;
                }
            };
            let count = 1 + rng.below(chunk);
            let start = c * chunk + rng.below(chunk - count + 1);
            let mut data = vec![0u8; (count * 512) as usize];
            rng.fill(&mut data);
            let off = (start * 512) as usize;
            model[off..off + data.len()].copy_from_slice(&data);
            let tag = dev
                .submit(BlockOp::Write, start, count as u32, &data)
                .expect("submit write");
            tags.insert(tag);
        }
        max_in_flight = max_in_flight.max(dev.in_flight());
        dev.kick();
        let done = collect(dev, &rig.lb, wave);
        for c in done {
            assert_eq!(c.result, Ok(()), "write {c:?}");
            assert_eq!(c.op, BlockOp::Write);
            assert!(tags.remove(&c.tag), "unknown or repeated tag {}", c.tag);
        }
        submitted += wave;
    }
    assert_eq!(max_in_flight as usize, depth.min(requests));
    assert_eq!(dev.in_flight(), 0);
    // Read everything back, several requests in flight.
    let per = u64::from(info.max_transfer / 512);
    let mut tags = Vec::new();
    let mut start = 0;
    let mut got = vec![0u8; model.len()];
    while start < sectors {
        let mut batch = Vec::new();
        while start < sectors {
            let count = per.min(sectors - start);
            // The bounce-page budget may run out before the queue does.
            let tag = match dev.submit(BlockOp::Read, start, count as u32, &[]) {
                Err(BlockError::Busy) if !batch.is_empty() => break,
                r => r.expect("submit read"),
            };
            batch.push((tag, start, count));
            start += count;
        }
        dev.kick();
        let done = collect(dev, &rig.lb, batch.len());
        for c in done {
            let &(_, s, n) = batch.iter().find(|b| b.0 == c.tag).expect("tag");
            assert_eq!(c.result, Ok(()));
            assert_eq!(c.data.len() as u64, n * 512);
            got[(s * 512) as usize..][..c.data.len()].copy_from_slice(&c.data);
        }
        tags.extend(batch);
    }
    assert!(got == model, "data read back differs from what was written");
    assert!(rig.image.contents() == model, "the image file differs");
}

fn front_node(name: &str) -> String {
    format!("/local/domain/{DOMID}/device/vbd/{DEVID}/{name}")
}

#[test]
fn negotiation_reaches_connected_on_both_ends() {
    let rig = Rig::new(4 << 20, DiskOptions::default(), BlkbackOptions::default());
    let mut xs = rig.xs();
    let dev = rig.connect(&mut xs, BlkfrontConfig::default());
    assert!(dev.is_connected());
    rig.wait_back_state(XenbusState::Connected);
    assert_eq!(rig.store_read(&front_node("state")).unwrap(), b"4");
    let info = dev.info();
    assert_eq!(info.sectors, 8192);
    assert_eq!(info.sector_size, 512);
    assert!(!info.read_only);
    assert!(info.flush);
    let n = dev.negotiated();
    // Ours: order 2 and 64 segments; the backend offers order 4 and 256.
    assert_eq!(n.ring_page_order, 2);
    assert_eq!(n.ring_size, 128);
    assert_eq!(n.max_segments, 64);
    assert!(n.indirect && n.persistent);
    assert_eq!(n.flush_op, Some(BLKIF_OP_FLUSH_DISKCACHE));
    assert_eq!(info.queue_depth, 64);
    assert_eq!(info.max_transfer, 64 * 4096);
    assert_eq!(
        rig.store_read(&front_node("ring-page-order")).unwrap(),
        b"2"
    );
    assert_eq!(
        rig.store_read(&front_node("protocol")).unwrap(),
        b"x86_64-abi"
    );
    assert_eq!(
        rig.store_read(&front_node("feature-persistent")).unwrap(),
        b"1"
    );
    for i in 0..4 {
        assert!(
            rig.store_read(&front_node(&format!("ring-ref{i}")))
                .is_some()
        );
    }
    let s = rig.back_stats();
    assert_eq!((s.connects, s.ring_page_order, s.persistent), (1, 2, true));
}

#[test]
fn write_patterns_at_many_queue_depths_then_read_back() {
    let rig = Rig::new(4 << 20, DiskOptions::default(), BlkbackOptions::default());
    let mut xs = rig.xs();
    let mut dev = rig.connect(&mut xs, BlkfrontConfig::default());
    for (i, depth) in [1usize, 2, 7, 16, 33, 64].into_iter().enumerate() {
        write_read_verify(&rig, &mut dev, 0x1234 + i as u64, 3 * depth + 5, depth, 64);
    }
    let f = dev.stats();
    assert_eq!(f.error_responses, 0);
    assert_eq!(f.violations, 0);
    assert!(f.max_batch >= 64, "{f:?}");
    // Batching: fewer events than requests each way.
    assert!(f.notifications < f.requests, "{f:?}");
    let b = rig.back_stats();
    assert_eq!(b.requests, f.requests);
    assert!(b.notifications_to_front < b.requests, "{b:?}");
    assert_eq!(b.errors, Default::default());
}

#[test]
fn flush_and_barrier() {
    let rig = Rig::new(1 << 20, DiskOptions::default(), BlkbackOptions::default());
    let mut xs = rig.xs();
    let mut dev = rig.connect(&mut xs, BlkfrontConfig::default());
    let data = vec![0xa5u8; 8 * 512];
    assert_eq!(
        run(&mut dev, &rig.lb, BlockOp::Write, 16, 8, &data).result,
        Ok(())
    );
    let c = run(&mut dev, &rig.lb, BlockOp::Flush, 0, 0, &[]);
    assert_eq!((c.op, c.result), (BlockOp::Flush, Ok(())));
    assert_eq!(&rig.image.contents()[16 * 512..24 * 512], &data[..]);
    assert_eq!(rig.back_stats().ops.flush, 1);
    // Malformed flushes are refused locally.
    assert_eq!(
        dev.submit(BlockOp::Flush, 0, 1, &[]),
        Err(BlockError::BadRequest)
    );
    drop(dev);

    // A backend that offers only barriers: a flush becomes a zero-segment barrier.
    let opts = BlkbackOptions {
        flush: false,
        ..Default::default()
    };
    let rig = Rig::new(1 << 20, DiskOptions::default(), opts);
    let mut xs = rig.xs();
    let mut dev = rig.connect(&mut xs, BlkfrontConfig::default());
    assert_eq!(dev.negotiated().flush_op, Some(BLKIF_OP_WRITE_BARRIER));
    assert_eq!(
        run(&mut dev, &rig.lb, BlockOp::Flush, 0, 0, &[]).result,
        Ok(())
    );
    assert_eq!(rig.back_stats().ops.barrier, 1);
    drop(dev);

    // Neither: the device says so and refuses flushes.
    let opts = BlkbackOptions {
        flush: false,
        barrier: false,
        ..Default::default()
    };
    let rig = Rig::new(1 << 20, DiskOptions::default(), opts);
    let mut xs = rig.xs();
    let mut dev = rig.connect(&mut xs, BlkfrontConfig::default());
    assert!(!dev.info().flush);
    assert_eq!(
        dev.submit(BlockOp::Flush, 0, 0, &[]),
        Err(BlockError::Unsupported)
    );
}

#[test]
fn multi_page_ring_and_indirect_segments() {
    let rig = Rig::new(16 << 20, DiskOptions::default(), BlkbackOptions::default());
    let mut xs = rig.xs();
    let config = BlkfrontConfig {
        max_ring_page_order: 4,
        max_indirect_segments: 256,
        max_queue_depth: 512,
        max_pool_pages: 2048,
        ..Default::default()
    };
    let mut dev = rig.connect(&mut xs, config);
    let n = dev.negotiated();
    assert_eq!((n.ring_page_order, n.ring_size), (4, 512));
    assert_eq!(n.max_segments, 256);
    assert_eq!(dev.info().max_transfer, 1 << 20);
    assert_eq!(
        rig.store_read(&front_node("ring-page-order")).unwrap(),
        b"4"
    );
    assert!(rig.store_read(&front_node("ring-ref15")).is_some());
    assert!(rig.store_read(&front_node("ring-ref")).is_none());
    rig.wait_back_state(XenbusState::Connected);
    assert_eq!(rig.back_stats().ring_page_order, 4);
    // 1 MiB requests (256 segments, indirect) and many 4 KiB ones in flight at once:
    // more than a one-page ring (32 slots) could hold.
    write_read_verify(&rig, &mut dev, 77, 24, 8, 2048);
    write_read_verify(&rig, &mut dev, 78, 600, 300, 8);
    let f = dev.stats();
    assert!(f.indirect_requests > 0, "{f:?}");
    assert!(f.max_batch >= 300, "{f:?}");
    let b = rig.back_stats();
    assert!(b.ops.indirect > 0, "{b:?}");
    assert_eq!(b.errors, Default::default());
}

#[test]
fn persistent_grants_on_and_off() {
    for (front_p, back_p) in [(true, true), (false, true), (true, false), (false, false)] {
        let opts = BlkbackOptions {
            persistent: back_p,
            ..Default::default()
        };
        let rig = Rig::new(2 << 20, DiskOptions::default(), opts);
        let mut xs = rig.xs();
        let config = BlkfrontConfig {
            persistent: front_p,
            ..Default::default()
        };
        let mut dev = rig.connect(&mut xs, config);
        assert_eq!(dev.negotiated().persistent, front_p && back_p);
        assert_eq!(
            rig.store_read(&front_node("feature-persistent")).unwrap(),
            if front_p { b"1" } else { b"0" }
        );
        write_read_verify(&rig, &mut dev, 5, 100, 16, 64);
        let f = dev.stats();
        assert_eq!(f.grants_quarantined, 0, "{f:?}");
        // Pages are reused either way: far fewer pages than were moved.
        assert!(f.pool_pages < f.segments, "{f:?}");
        assert_eq!(rig.back_stats().persistent, front_p && back_p);
    }
}

#[test]
fn direct_io_disk() {
    let image = TempImage::new("direct");
    let disk = match DiskImage::open(
        image.path(),
        DiskOptions {
            create_size: Some(1 << 20),
            direct: true,
            ..Default::default()
        },
    ) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc_einval()) => {
            eprintln!(
                "O_DIRECT not supported on {}: skipped",
                image.path().display()
            );
            return;
        }
        Err(e) => panic!("open O_DIRECT: {e}"),
    };
    assert!(disk.direct());
    let rig = Rig::with_disk(image, disk, BlkbackOptions::default());
    let mut xs = rig.xs();
    let mut dev = rig.connect(&mut xs, BlkfrontConfig::default());
    write_read_verify(&rig, &mut dev, 9, 40, 8, 64);
}

fn libc_einval() -> i32 {
    22
}

#[test]
fn read_only_disk_refuses_writes() {
    let rig = Rig::read_only(1 << 20);
    let mut xs = rig.xs();
    let mut dev = rig.connect(&mut xs, BlkfrontConfig::default());
    assert!(dev.info().read_only);
    assert_eq!(rig.store_read(&rig.paths.back("mode")).unwrap(), b"r");
    assert_eq!(
        dev.submit(BlockOp::Write, 0, 1, &[0; 512]),
        Err(BlockError::Unsupported)
    );
    let c = run(&mut dev, &rig.lb, BlockOp::Read, 10, 3, &[]);
    assert_eq!(c.result, Ok(()));
    assert!(c.data.iter().all(|&b| b == 0x5a));
    assert!(rig.image.contents().iter().all(|&b| b == 0x5a));
}

#[test]
fn out_of_range_and_malformed_requests_are_refused_and_the_device_keeps_working() {
    let rig = Rig::new(1 << 20, DiskOptions::default(), BlkbackOptions::default());
    let mut xs = rig.xs();
    let mut dev = rig.connect(&mut xs, BlkfrontConfig::default());
    let end = dev.info().sectors;
    let max = dev.info().max_transfer / 512;
    for (op, sector, count, len) in [
        (BlockOp::Read, end, 1, 0),
        (BlockOp::Read, end - 1, 2, 0),
        (BlockOp::Read, u64::MAX, 1, 0),
        (BlockOp::Read, 0, 0, 0),
        (BlockOp::Read, 0, max + 1, 0),
        (BlockOp::Read, 0, 1, 512),
        (BlockOp::Write, 0, 2, 512),
        (BlockOp::Write, end, 1, 512),
    ] {
        assert_eq!(
            dev.submit(op, sector, count, &vec![1; len]),
            Err(BlockError::BadRequest),
            "{op:?} {sector} {count} {len}"
        );
    }
    let data = vec![3u8; 512];
    assert_eq!(
        run(&mut dev, &rig.lb, BlockOp::Write, end - 1, 1, &data).result,
        Ok(())
    );
    let c = run(&mut dev, &rig.lb, BlockOp::Read, end - 1, 1, &[]);
    assert_eq!((c.result, c.data), (Ok(()), data));
}

#[test]
fn backend_going_away_fails_unpublished_requests() {
    let mut rig = Rig::new(1 << 20, DiskOptions::default(), BlkbackOptions::default());
    let mut xs = rig.xs();
    let mut dev = rig.connect(&mut xs, BlkfrontConfig::default());
    // Requests written but never published: the backend cannot have seen them.
    let t1 = dev.submit(BlockOp::Read, 0, 1, &[]).unwrap();
    let t2 = dev.submit(BlockOp::Write, 1, 1, &[9; 512]).unwrap();
    // The backend goes away (its shutdown writes Closed).
    let stats = rig.stop();
    assert!(stats.get("error").is_none(), "{stats}");
    let st = dev.on_xenbus_event(&mut xs).unwrap();
    assert_eq!(st, XenbusState::Closed);
    assert!(!dev.is_connected());
    let mut done = Vec::new();
    dev.poll(&mut done).unwrap();
    let mut tags: Vec<_> = done.iter().map(|c| (c.tag, c.result)).collect();
    tags.sort_by_key(|t| t.0);
    assert_eq!(
        tags,
        [
            (t1, Err(BlockError::Disconnected)),
            (t2, Err(BlockError::Disconnected))
        ]
    );
    assert_eq!(
        dev.submit(BlockOp::Read, 0, 1, &[]),
        Err(BlockError::Disconnected)
    );
    assert_eq!(rig.store_read(&front_node("state")).unwrap(), b"6");
}

/// Waits for the frontend's event (bounded); at the `detach_at`-th wait the toolstack
/// detaches the disk as `xl block-detach` does: the backend's `online` goes 0 and its
/// `state` Closing.
struct DetachingWaiter<'a> {
    rig: &'a Rig,
    detach_at: u32,
    waits: u32,
    start: Instant,
}

impl Waiter for DetachingWaiter<'_> {
    fn wait(&mut self) -> bool {
        self.waits += 1;
        if self.waits == self.detach_at {
            let (online, state) = (self.rig.paths.back("online"), self.rig.paths.back("state"));
            self.rig.lb.with_store(|xs| {
                xs.dom0().write(None, &online, b"0").unwrap();
                write_state(xs, &state, XenbusState::Closing).unwrap();
            });
        }
        self.rig.lb.take_front_events();
        self.rig.lb.wait_front_event(Duration::from_millis(20));
        self.start.elapsed() < WAIT
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

#[test]
fn a_detach_during_a_workload_closes_a_following_frontend_and_ends_the_workload() {
    let rig = Rig::new(8 << 20, DiskOptions::default(), BlkbackOptions::default());
    let store = FrontStore::new(&rig.lb).unwrap();
    let dev = Blkfront::connect(
        rig.lb.front(),
        &mut store.lock(),
        &DEVID.to_string(),
        BlkfrontConfig::default(),
    )
    .unwrap();
    let mut dev = Followed::new(dev, store.clone());
    let cfg = workload::Config {
        phase: workload::Phase::SeqWrite,
        size: 8 << 20,
        block: 4096,
        queue_depth: 4,
        ..Default::default()
    };
    let mut waiter = DetachingWaiter {
        rig: &rig,
        detach_at: 3,
        waits: 0,
        start: Instant::now(),
    };
    let report = workload::run(&mut dev, &cfg, &mut waiter).unwrap();
    // The workload ended on the detach, long before its 2048 writes, and did not
    // wait for the deadline.
    assert_eq!(
        report.first_error,
        Some(BlockError::Disconnected),
        "{report:?}"
    );
    assert!(report.ops < 2048, "{report:?}");
    assert!(waiter.waits < 100, "{} waits", waiter.waits);
    assert_eq!(dev.backend_state(), Some(XenbusState::Closing));
    assert!(!dev.device().is_connected());
    assert_eq!(dev.device().watch_token(), None);
    assert!(
        dev.stats().events >= 1 && dev.stats().errors == 0,
        "{:?}",
        dev.stats()
    );
    // The frontend closed its end, which is what the toolstack waits for; the backend
    // follows it to Closed and releases the ring.
    assert_eq!(rig.store_read(&front_node("state")).unwrap(), b"6");
    rig.wait_back_state(XenbusState::Closed);
    rig.wait_back_stats("a disconnect", |s| s.disconnects == 1);
    // Every write that completed reached the disk (the image was zeros before).
    let image = rig.image.contents();
    let mut expect = vec![0u8; 4096];
    let on_disk = (0..2048u64)
        .filter(|block| {
            pv_drivers::pattern::fill(cfg.seed, block * 4096, &mut expect);
            image[(block * 4096) as usize..][..4096] == expect[..]
        })
        .count() as u64;
    assert!(report.writes > 0, "{report:?}");
    assert!(
        on_disk >= report.writes,
        "{on_disk} blocks on disk, {report:?}"
    );
}

#[test]
fn frontend_shutdown_then_reconnect() {
    let rig = Rig::new(1 << 20, DiskOptions::default(), BlkbackOptions::default());
    let mut xs = rig.xs();
    let mut dev = rig.connect(&mut xs, BlkfrontConfig::default());
    let data = vec![0x42u8; 4096];
    assert_eq!(
        run(&mut dev, &rig.lb, BlockOp::Write, 0, 8, &data).result,
        Ok(())
    );
    dev.shutdown(&mut xs, 16);
    assert!(!dev.is_connected());
    rig.wait_back_state(XenbusState::Closed);
    let s = rig.wait_back_stats("a disconnect", |s| s.disconnects == 1);
    assert_eq!(s.connects, 1);
    drop(dev);
    // Connect again: the backend goes InitWait, then Connected on a new ring.
    let config = BlkfrontConfig {
        max_ring_page_order: 0,
        persistent: false,
        ..Default::default()
    };
    let mut dev = rig.connect(&mut xs, config);
    rig.wait_back_state(XenbusState::Connected);
    assert_eq!(dev.negotiated().ring_page_order, 0);
    // The stale multi-page nodes of the first connection do not confuse the backend.
    let c = run(&mut dev, &rig.lb, BlockOp::Read, 0, 8, &[]);
    assert_eq!((c.result, c.data), (Ok(()), data));
    assert_eq!(rig.back_stats().connects, 2);
}

// ---------------------------------------------------------------------------------
// A hostile frontend: the test writes raw requests into the ring.

/// A hand-driven frontend connected to the real blkback.
struct RawFront {
    lb: Arc<Loopback>,
    env: LoopFront,
    ring: BlkifFrontRing<host_shim::backends::loopback::Window>,
    port: u32,
    next_id: u64,
}

impl RawFront {
    fn connect(rig: &Rig) -> Self {
        let mut env = rig.lb.front();
        let (pfn, mem) = env.alloc_pages(1).unwrap();
        let ring = BlkifFrontRing::new(mem).unwrap();
        let gref = env.grant(0, pfn, false).unwrap();
        let port = env.alloc_unbound(0).unwrap();
        let mut xs = rig.xs();
        xs.write(
            TxId::NONE,
            &front_node("ring-ref"),
            gref.to_string().as_bytes(),
        )
        .unwrap();
        xs.write(
            TxId::NONE,
            &front_node("event-channel"),
            port.to_string().as_bytes(),
        )
        .unwrap();
        xs.write(TxId::NONE, &front_node("protocol"), b"x86_64-abi")
            .unwrap();
        xs.write(TxId::NONE, &front_node("state"), b"3").unwrap();
        rig.wait_back_state(XenbusState::Connected);
        Self {
            lb: rig.lb.clone(),
            env,
            ring,
            port,
            next_id: 1,
        }
    }

    /// A page of guest RAM with `fill`, granted to `to` (read-only if `ro`).
    fn page(
        &mut self,
        fill: u8,
        to: u16,
        ro: bool,
    ) -> (GrantRef, host_shim::backends::loopback::Window) {
        let (pfn, mem) = self.env.alloc_pages(1).unwrap();
        mem.write_bytes(0, &[fill; 4096]);
        (self.env.grant(to, pfn, ro).unwrap(), mem)
    }

    /// Sends `req` (with a fresh id) and returns the backend's response.
    fn send(&mut self, mut req: BlkifRequest) -> BlkifResponse {
        req.id = self.next_id;
        self.next_id += 1;
        self.ring.push_request(&req).unwrap();
        if self.ring.push_requests_and_check_notify() {
            self.env.notify(self.port);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            self.lb.take_front_events();
            if let Some(rsp) = self.ring.take_response().unwrap() {
                assert_eq!(rsp.id, req.id);
                // Linux's rule: an indirect request is answered with its data op.
                let op = if req.operation == BLKIF_OP_INDIRECT {
                    req.as_indirect().indirect_op
                } else {
                    req.operation
                };
                assert_eq!(rsp.operation, op);
                return rsp;
            }
            if self.ring.final_check_for_responses().unwrap() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no response to {req:?}");
            self.lb
                .wait_front_event(left.min(Duration::from_millis(500)));
        }
    }
}

fn rw(op: u8, sector: u64, segs: &[BlkifRequestSegment]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation: op,
        nr_segments: segs.len() as u8,
        sector_number: sector,
        ..Default::default()
    };
    r.seg[..segs.len()].copy_from_slice(segs);
    r
}

#[test]
fn hostile_frontend_gets_error_responses_and_the_backend_keeps_serving() {
    let mut rig = Rig::new(1 << 20, DiskOptions::default(), BlkbackOptions::default());
    let mut f = RawFront::connect(&rig);
    let (good, good_page) = f.page(0x11, 0, false);
    let (ro, ro_page) = f.page(0x22, 0, true);
    let (foreign, _) = f.page(0x33, 7, false);
    let seg = |g, a, b| BlkifRequestSegment::new(g, a, b);
    let end = 2048u64;
    let cases: Vec<(&str, BlkifRequest, i16)> = vec![
        (
            "ungranted ref",
            rw(BLKIF_OP_WRITE, 0, &[seg(1900, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "ref beyond table",
            rw(BLKIF_OP_READ, 0, &[seg(u32::MAX, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "foreign grant",
            rw(BLKIF_OP_WRITE, 0, &[seg(foreign, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "read into read-only grant",
            rw(BLKIF_OP_READ, 0, &[seg(ro, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        ("no segments", rw(BLKIF_OP_READ, 0, &[]), BLKIF_RSP_ERROR),
        (
            "reversed segment",
            rw(BLKIF_OP_READ, 0, &[seg(good, 5, 3)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "segment past page",
            rw(BLKIF_OP_WRITE, 0, &[seg(good, 0, 8)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "sector past end",
            rw(BLKIF_OP_READ, end, &[seg(good, 0, 0)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "straddles end",
            rw(BLKIF_OP_WRITE, end - 4, &[seg(good, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "sector overflow",
            rw(BLKIF_OP_READ, u64::MAX - 2, &[seg(good, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        (
            "unknown op",
            rw(99, 0, &[seg(good, 0, 7)]),
            BLKIF_RSP_EOPNOTSUPP,
        ),
        (
            "discard not offered",
            rw(BLKIF_OP_DISCARD, 0, &[]),
            BLKIF_RSP_EOPNOTSUPP,
        ),
        (
            "flush with 12 segments",
            {
                let mut r = rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[seg(good, 0, 7)]);
                r.nr_segments = 12;
                r
            },
            BLKIF_RSP_ERROR,
        ),
        // A good segment next to a bad one: all or nothing.
        (
            "one bad grant of two",
            rw(BLKIF_OP_WRITE, 0, &[seg(good, 0, 7), seg(foreign, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
    ];
    let mut too_many = rw(BLKIF_OP_READ, 0, &[seg(good, 0, 0); 11]);
    too_many.nr_segments = 12;
    let mut way_too_many = too_many;
    way_too_many.nr_segments = 255;
    let mut all = cases;
    all.push(("12 segments", too_many, BLKIF_RSP_ERROR));
    all.push(("255 segments", way_too_many, BLKIF_RSP_ERROR));
    // Indirect requests with bad descriptors.
    let (ind_gref, ind_page) = f.page(0, 0, true);
    let mut descs = Vec::new();
    for s in [seg(good, 0, 7), seg(foreign, 0, 7)] {
        descs.extend_from_slice(&s.to_bytes());
    }
    ind_page.write_bytes(0, &descs);
    let ind = |op: u8, n: u16, gref: GrantRef, sector: u64| {
        let mut i = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: op,
            nr_segments: n,
            sector_number: sector,
            ..Default::default()
        };
        i.indirect_grefs[0] = gref;
        BlkifRequest::from_indirect(&i)
    };
    all.push((
        "indirect, 0 segments",
        ind(BLKIF_OP_READ, 0, ind_gref, 0),
        BLKIF_RSP_ERROR,
    ));
    all.push((
        "indirect, too many",
        ind(BLKIF_OP_READ, 257, ind_gref, 0),
        BLKIF_RSP_ERROR,
    ));
    all.push((
        "indirect, bad page ref",
        ind(BLKIF_OP_READ, 1, 1901, 0),
        BLKIF_RSP_ERROR,
    ));
    all.push((
        "indirect, foreign descriptor",
        ind(BLKIF_OP_WRITE, 2, ind_gref, 0),
        BLKIF_RSP_ERROR,
    ));
    all.push((
        "indirect, bad op",
        ind(BLKIF_OP_FLUSH_DISKCACHE, 1, ind_gref, 0),
        BLKIF_RSP_EOPNOTSUPP,
    ));
    let before = rig.image.contents();
    for (what, req, want) in all {
        let rsp = f.send(req);
        assert_eq!(rsp.status, want, "{what}");
    }
    // Nothing reached the disk, the read-only page is untouched.
    assert!(rig.image.contents() == before);
    let mut buf = vec![0u8; 4096];
    ro_page.read_bytes(0, &mut buf);
    assert!(buf.iter().all(|&b| b == 0x22));
    // And the backend still serves good requests, direct and indirect.
    assert_eq!(
        f.send(rw(BLKIF_OP_WRITE, 8, &[seg(good, 0, 7)])).status,
        BLKIF_RSP_OKAY
    );
    assert_eq!(&rig.image.contents()[8 * 512..16 * 512], &[0x11; 4096][..]);
    ind_page.write_bytes(0, &seg(good, 2, 3).to_bytes());
    good_page.write_bytes(0, &[0; 4096]);
    assert_eq!(
        f.send(ind(BLKIF_OP_READ, 1, ind_gref, 8)).status,
        BLKIF_RSP_OKAY
    );
    good_page.read_bytes(0, &mut buf);
    assert!(buf[1024..2048].iter().all(|&b| b == 0x11));
    assert!(buf[..1024].iter().chain(&buf[2048..]).all(|&b| b == 0));
    assert_eq!(
        f.send(rw(BLKIF_OP_WRITE_BARRIER, 0, &[])).status,
        BLKIF_RSP_OKAY
    );
    let s = rig.back_stats();
    assert_eq!(s.errors.grant, 7, "{s:?}");
    assert_eq!(s.errors.segment_count, 6, "{s:?}");
    assert_eq!(s.errors.segment_range, 2, "{s:?}");
    assert_eq!(s.errors.out_of_range, 3, "{s:?}");
    assert_eq!(s.errors.unsupported_op, 3, "{s:?}");
    assert_eq!(s.errors.ring, 0);

    // A request producer running far ahead: the ring is dropped, the device closes,
    // the backend thread lives on.
    f.ring.memory().store_u32(
        SRING_REQ_PROD,
        f.ring.req_prod_pvt().wrapping_add(1000),
        Ordering::SeqCst,
    );
    f.env.notify(f.port);
    rig.wait_back_state(XenbusState::Closing);
    let s = rig.wait_back_stats("a ring error", |s| s.errors.ring == 1);
    assert_eq!(s.disconnects, 1);
    assert!(rig.store_read(&rig.paths.back("error")).is_some());
    let stats = rig.stop();
    assert!(
        stats.get("error").is_none(),
        "backend thread panicked: {stats}"
    );
}

#[test]
fn backend_cannot_read_pages_the_frontend_did_not_grant() {
    let rig = Rig::new(1 << 20, DiskOptions::default(), BlkbackOptions::default());
    let mut f = RawFront::connect(&rig);
    // A secret page, never granted, and one granted to another domain.
    let (_, secret) = f.env.alloc_pages(1).unwrap();
    secret.write_bytes(0, &[0xee; 4096]);
    let (foreign, foreign_page) = f.page(0xee, 9, false);
    // Ask the backend to write "from" every grant reference that is not its own.
    let mut refused = 0;
    for gref in (0..64u32).chain([foreign, 1000, 2047, 2048, u32::MAX]) {
        let rsp = f.send(rw(
            BLKIF_OP_WRITE,
            0,
            &[BlkifRequestSegment::new(gref, 0, 7)],
        ));
        if rsp.status != BLKIF_RSP_OKAY {
            refused += 1;
        }
    }
    assert!(refused >= 60, "{refused}");
    assert!(
        !rig.image.contents().windows(8).any(|w| w == [0xee; 8]),
        "secret bytes reached the disk"
    );
    // Nor can it write into them.
    for gref in [foreign, 2000] {
        let rsp = f.send(rw(
            BLKIF_OP_READ,
            0,
            &[BlkifRequestSegment::new(gref, 0, 7)],
        ));
        assert_eq!(rsp.status, BLKIF_RSP_ERROR);
    }
    let mut buf = vec![0u8; 4096];
    foreign_page.read_bytes(0, &mut buf);
    assert!(buf.iter().all(|&b| b == 0xee));
    secret.read_bytes(0, &mut buf);
    assert!(buf.iter().all(|&b| b == 0xee));
}

/// A flush or barrier may carry a write's data: `blkif.h` does not forbid it, Linux's
/// blkfront can send a FUA or PREFLUSH write so (`blkif_queue_rw_req`), and Linux's
/// blkback writes the segments (found by running the hostile guest against Linux's
/// blkback, which wrote what the shim refused).
#[test]
fn a_flush_carrying_data_writes_it_then_flushes() {
    let rig = Rig::new(1 << 20, DiskOptions::default(), BlkbackOptions::default());
    let mut f = RawFront::connect(&rig);
    let (good, _) = f.page(0x3c, 0, false);
    for (op, sector) in [
        (BLKIF_OP_FLUSH_DISKCACHE, 16u64),
        (BLKIF_OP_WRITE_BARRIER, 32),
    ] {
        let rsp = f.send(rw(
            op,
            sector,
            &[
                BlkifRequestSegment::new(good, 0, 7),
                BlkifRequestSegment::new(good, 0, 3),
            ],
        ));
        assert_eq!(rsp.status, BLKIF_RSP_OKAY, "op {op}");
        let at = sector as usize * 512;
        assert_eq!(
            &rig.image.contents()[at..at + 6144],
            &[0x3c; 6144][..],
            "op {op}"
        );
    }
    let s = rig.back_stats();
    assert_eq!((s.ops.flush, s.ops.barrier), (1, 1), "{s:?}");
    assert_eq!(s.bytes_written, 2 * 6144, "{s:?}");
    assert_eq!(s.errors.segment_count, 0, "{s:?}");
}

#[test]
fn read_only_disk_answers_raw_writes_with_an_error() {
    let rig = Rig::read_only(1 << 20);
    let mut f = RawFront::connect(&rig);
    let (good, _) = f.page(0x77, 0, false);
    let rsp = f.send(rw(
        BLKIF_OP_WRITE,
        0,
        &[BlkifRequestSegment::new(good, 0, 7)],
    ));
    assert_eq!(rsp.status, BLKIF_RSP_EOPNOTSUPP);
    let rsp = f.send(rw(
        BLKIF_OP_WRITE_BARRIER,
        0,
        &[BlkifRequestSegment::new(good, 0, 7)],
    ));
    assert_eq!(rsp.status, BLKIF_RSP_EOPNOTSUPP);
    assert!(rig.image.contents().iter().all(|&b| b == 0x5a));
    let rsp = f.send(rw(
        BLKIF_OP_READ,
        0,
        &[BlkifRequestSegment::new(good, 0, 7)],
    ));
    assert_eq!(rsp.status, BLKIF_RSP_OKAY);
    assert_eq!(rig.back_stats().errors.read_only, 2);
}

/// A frontend that writes a good ring, event channel and protocol, then `key` =
/// `value`, and goes `Initialised`.
fn offer_with(key: &str, value: &str) -> Rig {
    let rig = Rig::new(1 << 20, DiskOptions::default(), BlkbackOptions::default());
    let mut env = rig.lb.front();
    let (pfn, _mem) = env.alloc_pages(1).unwrap();
    let gref = env.grant(0, pfn, false).unwrap();
    let port = env.alloc_unbound(0).unwrap();
    let mut xs = rig.xs();
    for (k, v) in [
        ("ring-ref", gref.to_string()),
        ("event-channel", port.to_string()),
        ("protocol", "x86_64-abi".to_string()),
        (key, value.to_string()),
    ] {
        xs.write(TxId::NONE, &front_node(k), v.as_bytes()).unwrap();
    }
    xs.write(TxId::NONE, &front_node("state"), b"3").unwrap();
    rig
}

/// Connection keys blkback must refuse (`Closing`, an `error` node naming the key,
/// `errors.connect`), as Linux's blkback does: a protocol it does not speak, and a
/// `multi-queue-num-queues` of 0 (blkif.h: greater than zero) or above what it offers
/// (none: multi-queue is not offered), or not a number. One queue, said explicitly, is
/// a single-queue frontend.
#[test]
fn frontend_with_bad_connection_keys_is_refused() {
    for (key, value) in [
        ("protocol", "x86_32-abi"),
        ("multi-queue-num-queues", "0"),
        ("multi-queue-num-queues", "2"),
        ("multi-queue-num-queues", "one"),
    ] {
        let rig = offer_with(key, value);
        rig.wait_back_state(XenbusState::Closing);
        assert_eq!(rig.back_stats().errors.connect, 1, "{key}={value}");
        assert_eq!(rig.back_stats().connects, 0, "{key}={value}");
        let err = rig.store_read(&rig.paths.back("error")).unwrap();
        assert!(
            String::from_utf8_lossy(&err).contains(key),
            "{key}={value}: {}",
            String::from_utf8_lossy(&err)
        );
    }
    let rig = offer_with("multi-queue-num-queues", "1");
    rig.wait_back_state(XenbusState::Connected);
    assert_eq!(rig.back_stats().errors.connect, 0);
}

// ---------------------------------------------------------------------------------
// A hostile backend: the test answers blkfront's requests itself.

/// blkfront connected to a backend played by the test.
struct FakeBack {
    lb: Arc<Loopback>,
    dev: Front,
    xs: Xs,
    ring: BlkifBackRing<host_shim::backends::loopback::LoopMapping>,
}

impl FakeBack {
    fn new(persistent: bool) -> Self {
        let lb = Loopback::new(DOMID, "blk", RAM_PAGES).unwrap();
        let paths = DevicePaths::new("vbd", DOMID, DEVID);
        let back = [
            ("sectors", "2048".to_string()),
            ("sector-size", "512".into()),
            ("info", "0".into()),
            ("feature-flush-cache", "1".into()),
            (
                "feature-persistent",
                if persistent { "1" } else { "0" }.into(),
            ),
            ("feature-max-indirect-segments", "32".into()),
            ("state", "4".into()),
        ];
        lb.with_store(|xs| create_device(xs, DOMID, &paths, &[], &back))
            .unwrap();
        let mut xs = lb.xenstore().unwrap();
        let config = BlkfrontConfig {
            persistent,
            ..Default::default()
        };
        let dev = Blkfront::connect(lb.front(), &mut xs, &DEVID.to_string(), config).unwrap();
        let gref: u32 = String::from_utf8(
            lb.with_store(|s| s.dom0().read(None, &front_node("ring-ref")))
                .unwrap(),
        )
        .unwrap()
        .parse()
        .unwrap();
        use host_shim::backends::BackendEnv;
        let map = lb.back().map_grants(&[gref], true).unwrap();
        let ring = BlkifBackRing::attach(map).unwrap();
        Self { lb, dev, xs, ring }
    }

    /// Takes every published request.
    fn requests(&mut self) -> Vec<BlkifRequest> {
        let mut v = Vec::new();
        while let Some(r) = self.ring.take_request().unwrap() {
            v.push(r);
        }
        v
    }

    fn answer(&mut self, rsps: &[BlkifResponse]) {
        for r in rsps {
            self.ring.push_response(r).unwrap();
        }
        self.ring.push_responses_and_check_notify();
    }

    fn poll(&mut self) -> (Result<usize, BlockError>, Vec<BlockCompletion>) {
        let mut done = Vec::new();
        let r = self.dev.poll(&mut done);
        (r, done)
    }
}

fn ok(req: &BlkifRequest) -> BlkifResponse {
    BlkifResponse::new(req.id, req.operation, BLKIF_RSP_OKAY)
}

/// After a violation: everything in flight failed with Protocol, nothing more works.
fn assert_broken(fb: &mut FakeBack, done: &[BlockCompletion], in_flight: usize) {
    assert_eq!(
        done.iter()
            .filter(|c| c.result == Err(BlockError::Protocol))
            .count(),
        in_flight
    );
    assert!(!fb.dev.is_connected());
    assert_eq!(fb.dev.stats().violations, 1);
    assert_eq!(
        fb.dev.submit(BlockOp::Read, 0, 1, &[]),
        Err(BlockError::Protocol)
    );
    let mut more = Vec::new();
    assert_eq!(fb.dev.poll(&mut more), Err(BlockError::Protocol));
    assert_eq!(fb.dev.in_flight(), 0);
    // The frontend then closes its end.
    fb.dev.on_xenbus_event(&mut fb.xs).unwrap();
    assert_eq!(
        fb.lb
            .with_store(|s| s.dom0().read(None, &front_node("state")))
            .unwrap(),
        b"6"
    );
}

#[test]
fn hostile_backend_unknown_id() {
    let mut fb = FakeBack::new(true);
    fb.dev.submit(BlockOp::Read, 0, 1, &[]).unwrap();
    fb.dev.submit(BlockOp::Read, 1, 1, &[]).unwrap();
    fb.dev.kick();
    let reqs = fb.requests();
    assert_eq!(reqs.len(), 2);
    fb.answer(&[BlkifResponse::new(reqs[0].id | 0xffff, BLKIF_OP_READ, 0)]);
    let (r, done) = fb.poll();
    assert_eq!(r, Ok(2));
    assert!(matches!(fb.dev.violation(), Some(Violation::UnknownId(_))));
    assert_broken(&mut fb, &done, 2);
}

#[test]
fn hostile_backend_duplicate_and_stale_ids() {
    let mut fb = FakeBack::new(true);
    let a = fb.dev.submit(BlockOp::Write, 0, 1, &[1; 512]).unwrap();
    fb.dev.submit(BlockOp::Read, 1, 1, &[]).unwrap();
    fb.dev.kick();
    let reqs = fb.requests();
    // The first answer is fine; the duplicate is a violation.
    fb.answer(&[ok(&reqs[0]), ok(&reqs[0])]);
    let (r, done) = fb.poll();
    assert_eq!(r, Ok(2));
    assert_eq!(done[0].tag, a);
    assert_eq!(done[0].result, Ok(()));
    assert!(matches!(fb.dev.violation(), Some(Violation::StaleId(_))));
    assert_broken(&mut fb, &done[1..], 1);

    // A stale id: a slot's earlier use answered again after it was reused.
    let mut fb = FakeBack::new(false);
    fb.dev.submit(BlockOp::Read, 0, 1, &[]).unwrap();
    fb.dev.kick();
    let first = fb.requests();
    fb.answer(&[ok(&first[0])]);
    let (r, _) = fb.poll();
    assert_eq!(r, Ok(1));
    fb.dev.submit(BlockOp::Read, 0, 1, &[]).unwrap();
    fb.dev.kick();
    let second = fb.requests();
    assert_eq!(
        second[0].id & 0xffff_ffff,
        first[0].id & 0xffff_ffff,
        "slot reused"
    );
    assert_ne!(second[0].id, first[0].id);
    fb.answer(&[ok(&first[0])]);
    let (r, done) = fb.poll();
    assert_eq!(r, Ok(1));
    assert!(matches!(fb.dev.violation(), Some(Violation::StaleId(_))));
    assert_broken(&mut fb, &done, 1);
}

#[test]
fn hostile_backend_wrong_operation_and_bad_status() {
    let mut fb = FakeBack::new(true);
    fb.dev.submit(BlockOp::Read, 0, 1, &[]).unwrap();
    fb.dev.kick();
    let reqs = fb.requests();
    fb.answer(&[BlkifResponse::new(reqs[0].id, BLKIF_OP_WRITE, 0)]);
    let (_, done) = fb.poll();
    assert_eq!(
        fb.dev.violation(),
        Some(Violation::WrongOperation {
            expected: BLKIF_OP_READ,
            got: BLKIF_OP_WRITE
        })
    );
    assert_broken(&mut fb, &done, 1);

    let mut fb = FakeBack::new(true);
    // An indirect request is answered with its data operation, as Linux's blkback
    // does (or, tolerated, with BLKIF_OP_INDIRECT); another operation is a violation.
    for answer in [BLKIF_OP_WRITE, BLKIF_OP_INDIRECT] {
        fb.dev
            .submit(BlockOp::Write, 0, 128, &[7; 128 * 512])
            .unwrap();
        fb.dev.kick();
        let reqs = fb.requests();
        let last = reqs.last().unwrap();
        assert_eq!(last.operation, BLKIF_OP_INDIRECT);
        fb.answer(&[BlkifResponse::new(last.id, answer, 0)]);
        let (_, done) = fb.poll();
        assert_eq!(fb.dev.violation(), None, "answered with op {answer}");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].result, Ok(()));
    }
    let mut fb = FakeBack::new(true);
    fb.dev
        .submit(BlockOp::Write, 0, 128, &[7; 128 * 512])
        .unwrap();
    fb.dev.kick();
    let reqs = fb.requests();
    assert_eq!(reqs[0].operation, BLKIF_OP_INDIRECT);
    fb.answer(&[BlkifResponse::new(reqs[0].id, BLKIF_OP_READ, 0)]);
    let (_, done) = fb.poll();
    assert!(matches!(
        fb.dev.violation(),
        Some(Violation::WrongOperation { .. })
    ));
    assert_broken(&mut fb, &done, 1);

    let mut fb = FakeBack::new(true);
    fb.dev.submit(BlockOp::Read, 0, 1, &[]).unwrap();
    fb.dev.kick();
    let reqs = fb.requests();
    fb.answer(&[BlkifResponse::new(reqs[0].id, BLKIF_OP_READ, 7)]);
    let (_, done) = fb.poll();
    assert_eq!(fb.dev.violation(), Some(Violation::BadStatus(7)));
    assert_broken(&mut fb, &done, 1);

    // Honest error statuses are not violations.
    let mut fb = FakeBack::new(true);
    fb.dev.submit(BlockOp::Read, 0, 1, &[]).unwrap();
    fb.dev.submit(BlockOp::Flush, 0, 0, &[]).unwrap();
    fb.dev.kick();
    let reqs = fb.requests();
    fb.answer(&[
        BlkifResponse::new(reqs[0].id, BLKIF_OP_READ, BLKIF_RSP_ERROR),
        BlkifResponse::new(reqs[1].id, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_EOPNOTSUPP),
    ]);
    let (r, done) = fb.poll();
    assert_eq!(r, Ok(2));
    assert_eq!(done[0].result, Err(BlockError::Io));
    assert_eq!(done[1].result, Err(BlockError::Unsupported));
    assert!(fb.dev.is_connected());
    assert_eq!(fb.dev.stats().error_responses, 2);
}

#[test]
fn hostile_backend_response_producer_beyond_requests() {
    let mut fb = FakeBack::new(true);
    fb.dev.submit(BlockOp::Read, 0, 1, &[]).unwrap();
    fb.dev.submit(BlockOp::Read, 1, 1, &[]).unwrap();
    fb.dev.kick();
    let reqs = fb.requests();
    assert_eq!(reqs.len(), 2);
    // Claims five responses for two requests.
    fb.ring
        .memory()
        .store_u32(SRING_RSP_PROD, 5, Ordering::SeqCst);
    let (r, done) = fb.poll();
    assert_eq!(r, Ok(2));
    assert!(matches!(
        fb.dev.violation(),
        Some(Violation::Ring(RingError::ResponseProducerOverflow { .. }))
    ));
    assert_broken(&mut fb, &done, 2);
}

#[test]
fn hostile_backend_holding_a_grant_keeps_the_page_out_of_circulation() {
    use host_shim::backends::BackendEnv;
    let mut fb = FakeBack::new(false);
    fb.dev.submit(BlockOp::Write, 0, 8, &[3; 4096]).unwrap();
    fb.dev.kick();
    let reqs = fb.requests();
    // The backend maps the data page and keeps it mapped past its response.
    let held = fb
        .lb
        .back()
        .map_grants(&[reqs[0].seg[0].gref], false)
        .unwrap();
    fb.answer(&[ok(&reqs[0])]);
    let (r, done) = fb.poll();
    assert_eq!((r, done[0].result), (Ok(1), Ok(())));
    assert_eq!(fb.dev.stats().grants_quarantined, 1);
    // The next request must not reuse the held page.
    fb.dev.submit(BlockOp::Write, 0, 8, &[4; 4096]).unwrap();
    fb.dev.kick();
    let reqs2 = fb.requests();
    let mut buf = [0u8; 16];
    held.read_bytes(0, &mut buf);
    assert_eq!(buf, [3; 16], "the held page was reused");
    assert_eq!(fb.dev.stats().pool_pages, 2);
    fb.answer(&[ok(&reqs2[0])]);
    drop(held);
    let (r, _) = fb.poll();
    assert_eq!(r, Ok(1));
    // Released: the page is back in the pool and reused, nothing new allocated.
    fb.dev.submit(BlockOp::Write, 0, 8, &[5; 4096]).unwrap();
    fb.dev.submit(BlockOp::Write, 8, 8, &[5; 4096]).unwrap();
    assert_eq!(fb.dev.stats().pool_pages, 2);
}

#[test]
fn backend_closing_fails_requests_in_flight() {
    let mut fb = FakeBack::new(true);
    let t = fb.dev.submit(BlockOp::Read, 0, 1, &[]).unwrap();
    fb.dev.kick();
    assert_eq!(fb.requests().len(), 1);
    let path = DevicePaths::new("vbd", DOMID, DEVID).back("state");
    fb.lb
        .with_store(|s| s.dom0().write(None, &path, b"5"))
        .unwrap();
    let ev = fb.xs.next_watch_event(None).unwrap();
    assert!(ev.is_some_and(|e| Some(e.token.as_str()) == fb.dev.watch_token()));
    assert_eq!(
        fb.dev.on_xenbus_event(&mut fb.xs).unwrap(),
        XenbusState::Closing
    );
    let (r, done) = fb.poll();
    assert_eq!(r, Ok(1));
    assert_eq!(
        (done[0].tag, done[0].result),
        (t, Err(BlockError::Disconnected))
    );
    assert_eq!(
        fb.dev.submit(BlockOp::Read, 0, 1, &[]),
        Err(BlockError::Disconnected)
    );
    // A late response on the dead ring changes nothing.
    fb.answer(&[BlkifResponse::new(0, 0, 0)]);
    assert_eq!(fb.poll().0, Err(BlockError::Disconnected));
}
