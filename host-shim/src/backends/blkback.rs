//! blkback: the shim's PV block backend on a raw disk image
//! (`xen/include/public/io/blkif.h`, "Backend XenBus Nodes" and the request formats).
//!
//! [`Blkback::new`] creates the device's xenstore directories as a toolstack would,
//! advertises the disk (`sectors`, `sector-size`, `info`, `mode`) and the features
//! (`feature-flush-cache`, `feature-barrier`, `feature-persistent`,
//! `feature-max-indirect-segments`, `max-ring-page-order`), goes `InitWait` and watches
//! the frontend's `state`. When the frontend is `Initialised` it maps the ring
//! (`ring-ref`, or `ring-page-order` and `ring-refN`), binds `event-channel`, checks
//! `protocol` (only `x86_64-abi`) and goes `Connected`; a `multi-queue-num-queues`
//! other than 1 is refused (0 is not a number of queues, and multi-queue is not
//! offered). When the frontend closes it
//! unmaps, unbinds and goes `Closed`, and `InitWait` again if the frontend starts over.
//!
//! Requests are served on the backend thread ([`super::spawn`]), each one copied out
//! of the ring before it is looked at. Data moves only by grant copy
//! ([`BackendEnv::copy_from_grant`] / [`BackendEnv::copy_to_grant`]); a write is
//! answered only after `pwrite` returned (and, for a flush or barrier, `fdatasync`;
//! either may carry a write's data, as Linux's blkback accepts). A
//! bad request (segments out of a page or reversed, too many or none, sectors beyond
//! the disk, a write to a read-only disk, an unknown operation, a grant that is not the
//! backend's) gets `BLKIF_RSP_ERROR` or `BLKIF_RSP_EOPNOTSUPP` and the ring keeps being
//! served. A request producer that runs ahead of the ring is a protocol error: the
//! ring is dropped and the device goes `Closing`.

use std::sync::{Arc, Mutex};

use pv_drivers::abi::blkif::{
    BLKIF_MAX_INDIRECT_SEGMENTS, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BLKIF_SECTOR_SIZE, BLKIF_SEGMENTS_PER_INDIRECT_PAGE,
    BlkifRequest, BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse, VDISK_READONLY,
};
use pv_drivers::abi::grant_table::GrantRef;
use pv_drivers::blkfront::{MAX_RING_PAGE_ORDER, keys};
use pv_drivers::ring::{BlkifBackRing, RingError};
use pv_drivers::xenbus::{XenbusState, parse_bool, parse_str, parse_u32};
use serde::Serialize;

pub use crate::hostio::disk::{DiskImage, DiskOptions};

use super::{Backend, BackendEnv, DevicePaths, Kick, create_device, read_state, write_state};
use crate::xen::xenstored::XsError;

/// What the backend offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkbackOptions {
    /// `feature-max-indirect-segments` (0: no indirect requests; capped at 4096).
    pub max_indirect_segments: u32,
    /// `max-ring-page-order` (capped at [`MAX_RING_PAGE_ORDER`]).
    pub max_ring_page_order: u32,
    /// `feature-persistent`.
    pub persistent: bool,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-barrier`.
    pub barrier: bool,
}

impl Default for BlkbackOptions {
    fn default() -> Self {
        Self {
            max_indirect_segments: 256,
            max_ring_page_order: MAX_RING_PAGE_ORDER,
            persistent: true,
            flush: true,
            barrier: true,
        }
    }
}

/// Errors of setting up a blkback.
#[derive(Debug, thiserror::Error)]
pub enum BlkbackError {
    /// The device's xenstore nodes could not be written.
    #[error("blkback xenstore setup: {0}")]
    Store(#[from] XsError),
}

/// Requests by operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    /// `BLKIF_OP_READ` (direct or indirect).
    pub read: u64,
    /// `BLKIF_OP_WRITE` (direct or indirect).
    pub write: u64,
    /// `BLKIF_OP_FLUSH_DISKCACHE`.
    pub flush: u64,
    /// `BLKIF_OP_WRITE_BARRIER`.
    pub barrier: u64,
    /// `BLKIF_OP_INDIRECT` (also counted as read or write).
    pub indirect: u64,
    /// Anything else.
    pub other: u64,
}

/// Error responses and failures by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// `nr_segments` of 0 or above the limit.
    pub segment_count: u64,
    /// A segment with `first_sect > last_sect` or `last_sect > 7`.
    pub segment_range: u64,
    /// Sectors beyond the end of the disk.
    pub out_of_range: u64,
    /// A write to a read-only disk.
    pub read_only: u64,
    /// An unknown or unoffered operation.
    pub unsupported_op: u64,
    /// A grant the backend may not use (bad, foreign, read-only for a read).
    pub grant: u64,
    /// The disk image failed.
    pub io: u64,
    /// A request producer beyond the ring (the ring was dropped).
    pub ring: u64,
    /// The frontend's connection nodes were unusable.
    pub connect: u64,
}

/// Counters of one blkback.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlkbackStats {
    /// Requests served.
    pub requests: u64,
    /// By operation.
    pub ops: OpCounts,
    /// Bytes read from the disk into the guest.
    pub bytes_read: u64,
    /// Bytes written from the guest to the disk.
    pub bytes_written: u64,
    /// Data segments moved.
    pub segments: u64,
    /// Events from the frontend (wake-ups with the event reason).
    pub events_from_front: u64,
    /// Events sent to the frontend.
    pub notifications_to_front: u64,
    /// Response publications that needed no event.
    pub notifications_suppressed: u64,
    /// Wake-ups that served at least one request.
    pub busy_wakeups: u64,
    /// Most requests served in one wake-up.
    pub max_batch: u64,
    /// Requests served per busy wake-up: buckets 1, 2-3, 4-7, ..., 128 and more.
    pub batch_histogram: [u64; 8],
    /// Error responses and failures.
    pub errors: ErrorCounts,
    /// Connections made.
    pub connects: u64,
    /// Connections ended.
    pub disconnects: u64,
    /// `ring-page-order` of the current (or last) connection.
    pub ring_page_order: u32,
    /// The frontend asked for persistent grants on the current (or last) connection.
    pub persistent: bool,
}

/// A connected ring.
struct Conn<M> {
    ring: BlkifBackRing<M>,
    port: u32,
    /// `rsp_prod_pvt` at the last publication.
    published: u32,
}

/// The backend of one virtual block device.
pub struct Blkback<E: BackendEnv> {
    env: E,
    kick: Arc<Kick>,
    paths: DevicePaths,
    devid: u32,
    disk: DiskImage,
    opts: BlkbackOptions,
    state: XenbusState,
    conn: Option<Conn<E::Mapping>>,
    stats: BlkbackStats,
    shared: Arc<Mutex<BlkbackStats>>,
    buf: Vec<u8>,
}

/// Requests served in one wake-up before the thread looks at its other work.
const MAX_PER_WAKEUP: u64 = 1024;

/// Responses pushed between publications, so a long batch does not keep the frontend
/// waiting for all of it.
const PUBLISH_EVERY: u64 = 32;

impl<E: BackendEnv> Blkback<E> {
    /// Creates device `devid` (`vbd`) of the frontend domain of `env` on `disk`: writes
    /// both xenstore directories, goes `InitWait` and watches the frontend. `kick` is
    /// the wake-up of the thread that will run it ([`super::spawn`]).
    pub fn new(
        env: E,
        kick: Arc<Kick>,
        devid: u32,
        disk: DiskImage,
        opts: BlkbackOptions,
    ) -> Result<Self, BlkbackError> {
        let opts = BlkbackOptions {
            max_indirect_segments: opts
                .max_indirect_segments
                .min(BLKIF_MAX_INDIRECT_SEGMENTS as u32),
            max_ring_page_order: opts.max_ring_page_order.min(MAX_RING_PAGE_ORDER),
            ..opts
        };
        let domid = env.frontend_domid();
        let paths = DevicePaths::new("vbd", domid, devid);
        let info = if disk.read_only() { VDISK_READONLY } else { 0 };
        let flag = |b: bool| String::from(if b { "1" } else { "0" });
        let mut back: Vec<(&str, String)> = vec![
            (keys::SECTORS, disk.sectors().to_string()),
            (keys::SECTOR_SIZE, BLKIF_SECTOR_SIZE.to_string()),
            (keys::INFO, info.to_string()),
            (
                keys::MODE,
                String::from(if disk.read_only() { "r" } else { "w" }),
            ),
            (keys::FEATURE_FLUSH_CACHE, flag(opts.flush)),
            (keys::FEATURE_BARRIER, flag(opts.barrier)),
            (keys::FEATURE_PERSISTENT, flag(opts.persistent)),
            (
                keys::MAX_RING_PAGE_ORDER,
                opts.max_ring_page_order.to_string(),
            ),
            ("type", "file".into()),
            ("params", disk.path().display().to_string()),
        ];
        if opts.max_indirect_segments > 0 {
            back.push((
                keys::FEATURE_MAX_INDIRECT_SEGMENTS,
                opts.max_indirect_segments.to_string(),
            ));
        }
        let front = [
            (keys::VIRTUAL_DEVICE, devid.to_string()),
            ("device-type", "disk".into()),
        ];
        env.with_store(|xs| {
            create_device(xs, domid, &paths, &front, &back)?;
            write_state(xs, &paths.back("state"), XenbusState::InitWait)
        })?;
        env.watch(&paths.front("state"), kick.notifier(Kick::XENBUS))?;
        Ok(Self {
            env,
            kick,
            paths,
            devid,
            disk,
            opts,
            state: XenbusState::InitWait,
            conn: None,
            stats: BlkbackStats::default(),
            shared: Arc::new(Mutex::new(BlkbackStats::default())),
            buf: Vec::new(),
        })
    }

    /// The device's xenstore paths.
    pub fn paths(&self) -> &DevicePaths {
        &self.paths
    }

    /// A live view of the counters (updated after every wake-up), for `--stats` and
    /// tests while the backend runs on its thread.
    pub fn stats_handle(&self) -> Arc<Mutex<BlkbackStats>> {
        self.shared.clone()
    }

    fn set_state(&mut self, state: XenbusState) {
        if self.state != state {
            self.state = state;
            // Counters first: whoever sees the new state sees the connection counted.
            *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = self.stats.clone();
            let path = self.paths.back("state");
            let _ = self.env.with_store(|xs| write_state(xs, &path, state));
        }
    }

    /// Follows the frontend's state.
    fn follow_frontend(&mut self) {
        use XenbusState as S;
        let path = self.paths.front("state");
        let front = self.env.with_store(|xs| read_state(xs, &path));
        match front {
            S::Initialised | S::Connected => {
                if self.conn.is_none() && self.state == S::InitWait {
                    match self.connect() {
                        Ok(()) => {
                            let path = self.paths.back("error");
                            let _ = self.env.with_store(|xs| xs.dom0().rm(None, &path));
                            self.set_state(S::Connected);
                        }
                        Err(msg) => {
                            self.stats.errors.connect += 1;
                            let path = self.paths.back("error");
                            let _ = self
                                .env
                                .with_store(|xs| xs.dom0().write(None, &path, msg.as_bytes()));
                            self.set_state(S::Closing);
                        }
                    }
                }
            }
            S::Closing => {
                self.disconnect();
                self.set_state(S::Closing);
            }
            S::Closed | S::Unknown => {
                self.disconnect();
                self.set_state(S::Closed);
            }
            S::Initialising => {
                // The frontend starts over (Linux blkback: "prepare for reconnect").
                if matches!(self.state, S::Closed | S::Closing) {
                    self.disconnect();
                    self.set_state(S::InitWait);
                }
            }
            S::InitWait | S::Reconfiguring | S::Reconfigured => {}
        }
    }

    /// Reads the frontend's connection nodes, maps the ring and binds the event
    /// channel. Errors are messages for the `error` node.
    fn connect(&mut self) -> Result<(), String> {
        let dir = self.paths.frontend.clone();
        let max_order = self.opts.max_ring_page_order;
        let read = |name: &str| -> Result<Option<Vec<u8>>, String> {
            let path = format!("{dir}/{name}");
            match self.env.with_store(|xs| xs.dom0().read(None, &path)) {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.errno() == pv_drivers::abi::errno::XenErrno::ENOENT => Ok(None),
                Err(e) => Err(format!("reading {path}: {e}")),
            }
        };
        let need_u32 = |name: &str| -> Result<u32, String> {
            let v = read(name)?.ok_or_else(|| format!("{dir}/{name} is missing"))?;
            parse_u32(&v).map_err(|e| format!("{dir}/{name}: {e}"))
        };
        // blkif.h: the number of queues is greater than zero, and more than one needs
        // `multi-queue-max-queues`, which is not offered (Linux's blkback refuses both).
        match read("multi-queue-num-queues")? {
            None => {}
            Some(v) => match parse_u32(&v).map_err(|e| format!("multi-queue-num-queues: {e}"))? {
                1 => {}
                0 => return Err(format!("{dir}/multi-queue-num-queues is 0")),
                q => {
                    return Err(format!(
                        "{dir}/multi-queue-num-queues is {q}: multi-queue is not offered"
                    ));
                }
            },
        }
        let order = match read(keys::RING_PAGE_ORDER)? {
            None => 0,
            Some(v) => parse_u32(&v).map_err(|e| format!("ring-page-order: {e}"))?,
        };
        if order > max_order {
            return Err(format!("ring-page-order {order} above {max_order}"));
        }
        let refs: Vec<GrantRef> = if order == 0 {
            vec![need_u32(keys::RING_REF)?]
        } else {
            (0..1u32 << order)
                .map(|i| need_u32(&format!("{}{i}", keys::RING_REF)))
                .collect::<Result<_, _>>()?
        };
        let remote_port = need_u32(keys::EVENT_CHANNEL)?;
        if let Some(p) = read(keys::PROTOCOL)? {
            let p = parse_str(&p).map_err(|e| format!("protocol: {e}"))?;
            if p != keys::PROTOCOL_X86_64 {
                return Err(format!("protocol {p:?} not supported"));
            }
        }
        let persistent = match read(keys::FEATURE_PERSISTENT)? {
            None => false,
            Some(v) => parse_bool(&v).map_err(|e| format!("feature-persistent: {e}"))?,
        };
        let map = self
            .env
            .map_grants(&refs, true)
            .map_err(|st| format!("mapping the ring failed (GNTST {st})"))?;
        let ring = BlkifBackRing::attach(map).map_err(|e| format!("ring: {e}"))?;
        let port = self
            .env
            .bind(remote_port, self.kick.notifier(Kick::EVENT))
            .map_err(|e| format!("binding event channel {remote_port}: {e}"))?;
        let published = ring.rsp_prod_pvt();
        self.conn = Some(Conn {
            ring,
            port,
            published,
        });
        self.stats.connects += 1;
        self.stats.ring_page_order = order;
        self.stats.persistent = persistent && self.opts.persistent;
        Ok(())
    }

    /// Unbinds and unmaps the ring, if connected.
    fn disconnect(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.env.unbind(conn.port);
            drop(conn.ring);
            self.stats.disconnects += 1;
        }
    }

    /// Serves the ring until the frontend has nothing more, then re-arms `req_event`.
    /// A frontend that never stops producing is served [`MAX_PER_WAKEUP`] requests at
    /// a time, so that xenbus changes and a stop request still get their turn.
    fn serve(&mut self) {
        let mut served = 0u64;
        let mut since_publish = 0u64;
        let failure = loop {
            if served >= MAX_PER_WAKEUP {
                self.publish();
                self.kick.raise(Kick::EVENT);
                break None;
            }
            let Some(conn) = self.conn.as_mut() else {
                break None;
            };
            let req = match conn.ring.take_request() {
                Ok(Some(req)) => req,
                Ok(None) => {
                    self.publish();
                    since_publish = 0;
                    let Some(conn) = self.conn.as_mut() else {
                        break None;
                    };
                    match conn.ring.final_check_for_requests() {
                        Ok(true) => continue,
                        Ok(false) => break None,
                        Err(e) => break Some(e),
                    }
                }
                Err(e) => break Some(e),
            };
            let status = self.handle(&req);
            // As Linux's blkback: an indirect request is answered with its data
            // operation (`indirect_op`), which is what Linux's blkfront checks.
            let op = if req.operation == BLKIF_OP_INDIRECT {
                req.as_indirect().indirect_op
            } else {
                req.operation
            };
            let rsp = BlkifResponse::new(req.id, op, status);
            let Some(conn) = self.conn.as_mut() else {
                break None;
            };
            if let Err(e) = conn.ring.push_response(&rsp) {
                break Some(e);
            }
            served += 1;
            since_publish += 1;
            if since_publish >= PUBLISH_EVERY {
                self.publish();
                since_publish = 0;
            }
        };
        if let Some(e) = failure {
            self.ring_failed(e);
        }
        if served > 0 {
            self.stats.busy_wakeups += 1;
            self.stats.max_batch = self.stats.max_batch.max(served);
            let bucket = (63 - served.leading_zeros() as usize).min(7);
            self.stats.batch_histogram[bucket] += 1;
        }
    }

    /// Publishes pushed responses and notifies the frontend if it asked (`rsp_event`).
    fn publish(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let pending = conn.ring.rsp_prod_pvt() != conn.published;
        if !pending {
            return;
        }
        conn.published = conn.ring.rsp_prod_pvt();
        // Counters first, so that whoever sees these responses sees them counted.
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = self.stats.clone();
        if conn.ring.push_responses_and_check_notify() {
            self.env.notify(conn.port);
            self.stats.notifications_to_front += 1;
        } else {
            self.stats.notifications_suppressed += 1;
        }
    }

    /// The frontend broke the ring: stop serving it and close the device.
    fn ring_failed(&mut self, e: RingError) {
        if e.is_protocol_error() {
            self.stats.errors.ring += 1;
        }
        let path = self.paths.back("error");
        let msg = format!("ring: {e}");
        let _ = self
            .env
            .with_store(|xs| xs.dom0().write(None, &path, msg.as_bytes()));
        self.disconnect();
        self.set_state(XenbusState::Closing);
    }

    /// Serves one request (a private copy); returns its status.
    fn handle(&mut self, req: &BlkifRequest) -> i16 {
        self.stats.requests += 1;
        match req.operation {
            BLKIF_OP_READ | BLKIF_OP_WRITE => {
                let write = req.operation == BLKIF_OP_WRITE;
                self.count_rw(write);
                let nr = usize::from(req.nr_segments);
                if nr == 0 || nr > BLKIF_MAX_SEGMENTS_PER_REQUEST {
                    self.stats.errors.segment_count += 1;
                    return BLKIF_RSP_ERROR;
                }
                let segs = req.seg[..nr].to_vec();
                self.read_write(write, req.sector_number, &segs)
            }
            BLKIF_OP_INDIRECT => {
                self.stats.ops.indirect += 1;
                let ind = req.as_indirect();
                self.indirect(&ind)
            }
            op @ (BLKIF_OP_FLUSH_DISKCACHE | BLKIF_OP_WRITE_BARRIER) => {
                let offered = if op == BLKIF_OP_FLUSH_DISKCACHE {
                    self.stats.ops.flush += 1;
                    self.opts.flush
                } else {
                    self.stats.ops.barrier += 1;
                    self.opts.barrier
                };
                if !offered {
                    self.stats.errors.unsupported_op += 1;
                    return BLKIF_RSP_EOPNOTSUPP;
                }
                let nr = usize::from(req.nr_segments);
                if nr > BLKIF_MAX_SEGMENTS_PER_REQUEST {
                    self.stats.errors.segment_count += 1;
                    return BLKIF_RSP_ERROR;
                }
                // Either may carry data: blkif.h does not forbid it, Linux's blkback
                // writes a flush's segments (a write with REQ_PREFLUSH), and Linux's
                // blkfront can send a FUA or PREFLUSH write as its flush operation with
                // the write's segments (blkif_queue_rw_req). Requests are
                // served one at a time, so every earlier write has reached the file;
                // this one's data goes next, then both are made durable.
                if nr > 0 {
                    let segs = req.seg[..nr].to_vec();
                    let status = self.read_write(true, req.sector_number, &segs);
                    if status != BLKIF_RSP_OKAY {
                        return status;
                    }
                }
                self.flush()
            }
            // Discard (not offered) and unknown operations.
            _ => {
                self.stats.ops.other += 1;
                self.stats.errors.unsupported_op += 1;
                BLKIF_RSP_EOPNOTSUPP
            }
        }
    }

    fn count_rw(&mut self, write: bool) {
        if write {
            self.stats.ops.write += 1;
        } else {
            self.stats.ops.read += 1;
        }
    }

    fn flush(&mut self) -> i16 {
        match self.disk.flush() {
            Ok(()) => BLKIF_RSP_OKAY,
            Err(_) => {
                self.stats.errors.io += 1;
                BLKIF_RSP_ERROR
            }
        }
    }

    /// An indirect request: fetches its segment pages through their grants.
    fn indirect(&mut self, ind: &BlkifRequestIndirect) -> i16 {
        let write = match ind.indirect_op {
            BLKIF_OP_READ => false,
            BLKIF_OP_WRITE => true,
            _ => {
                self.stats.errors.unsupported_op += 1;
                return BLKIF_RSP_EOPNOTSUPP;
            }
        };
        self.count_rw(write);
        if self.opts.max_indirect_segments == 0 {
            self.stats.errors.unsupported_op += 1;
            return BLKIF_RSP_EOPNOTSUPP;
        }
        let n = usize::from(ind.nr_segments);
        if n == 0 || n > self.opts.max_indirect_segments as usize {
            self.stats.errors.segment_count += 1;
            return BLKIF_RSP_ERROR;
        }
        let mut segs = Vec::with_capacity(n);
        let pages = BlkifRequestIndirect::pages_for(ind.nr_segments);
        let mut raw = vec![0u8; BLKIF_SEGMENTS_PER_INDIRECT_PAGE * BlkifRequestSegment::SIZE];
        for (p, &gref) in ind.indirect_grefs.iter().take(pages).enumerate() {
            let count =
                (n - p * BLKIF_SEGMENTS_PER_INDIRECT_PAGE).min(BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
            let bytes = &mut raw[..count * BlkifRequestSegment::SIZE];
            if self.env.copy_from_grant(gref, 0, bytes).is_err() {
                self.stats.errors.grant += 1;
                return BLKIF_RSP_ERROR;
            }
            segs.extend(
                bytes
                    .chunks_exact(BlkifRequestSegment::SIZE)
                    .filter_map(BlkifRequestSegment::from_prefix),
            );
        }
        self.read_write(write, ind.sector_number, &segs)
    }

    /// Reads or writes the sectors of `segs`, contiguous on the disk from `sector`.
    fn read_write(&mut self, write: bool, sector: u64, segs: &[BlkifRequestSegment]) -> i16 {
        if write && self.disk.read_only() {
            self.stats.errors.read_only += 1;
            return BLKIF_RSP_EOPNOTSUPP;
        }
        if !segs.iter().all(BlkifRequestSegment::is_valid) {
            self.stats.errors.segment_range += 1;
            return BLKIF_RSP_ERROR;
        }
        let sectors: u64 = segs.iter().map(|s| u64::from(s.sectors())).sum();
        if sector
            .checked_add(sectors)
            .is_none_or(|end| end > self.disk.sectors())
        {
            self.stats.errors.out_of_range += 1;
            return BLKIF_RSP_ERROR;
        }
        let len = sectors as usize * BLKIF_SECTOR_SIZE;
        let offset = sector * BLKIF_SECTOR_SIZE as u64;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len, 0);
        let status = if write {
            self.write_segments(offset, segs, &mut buf)
        } else {
            self.read_segments(offset, segs, &mut buf)
        };
        self.buf = buf;
        if status == BLKIF_RSP_OKAY {
            self.stats.segments += segs.len() as u64;
            if write {
                self.stats.bytes_written += len as u64;
            } else {
                self.stats.bytes_read += len as u64;
            }
        }
        status
    }

    /// Gathers the data of every segment first, so a bad grant writes nothing.
    fn write_segments(&mut self, offset: u64, segs: &[BlkifRequestSegment], buf: &mut [u8]) -> i16 {
        let mut at = 0;
        for s in segs {
            let n = s.sectors() as usize * BLKIF_SECTOR_SIZE;
            let page_off = u16::from(s.first_sect) * BLKIF_SECTOR_SIZE as u16;
            if self
                .env
                .copy_from_grant(s.gref, page_off, &mut buf[at..at + n])
                .is_err()
            {
                self.stats.errors.grant += 1;
                return BLKIF_RSP_ERROR;
            }
            at += n;
        }
        match self.disk.write_at(offset, buf) {
            Ok(()) => BLKIF_RSP_OKAY,
            Err(_) => {
                self.stats.errors.io += 1;
                BLKIF_RSP_ERROR
            }
        }
    }

    fn read_segments(&mut self, offset: u64, segs: &[BlkifRequestSegment], buf: &mut [u8]) -> i16 {
        if self.disk.read_at(offset, buf).is_err() {
            self.stats.errors.io += 1;
            return BLKIF_RSP_ERROR;
        }
        let mut at = 0;
        for s in segs {
            let n = s.sectors() as usize * BLKIF_SECTOR_SIZE;
            let page_off = u16::from(s.first_sect) * BLKIF_SECTOR_SIZE as u16;
            if self
                .env
                .copy_to_grant(s.gref, page_off, &buf[at..at + n])
                .is_err()
            {
                self.stats.errors.grant += 1;
                return BLKIF_RSP_ERROR;
            }
            at += n;
        }
        BLKIF_RSP_OKAY
    }

    fn publish_stats(&self) {
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = self.stats.clone();
    }
}

impl<E: BackendEnv> Backend for Blkback<E> {
    fn name(&self) -> String {
        format!("vbd {}", self.devid)
    }

    fn run_once(&mut self, reasons: u32) {
        if reasons & Kick::EVENT != 0 {
            self.stats.events_from_front += 1;
        }
        if reasons & Kick::XENBUS != 0 {
            self.follow_frontend();
        }
        // Serve even without an event: cheap when idle, and it covers a request that
        // arrived while the state was changing.
        self.serve();
        self.publish_stats();
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::to_value(&self.stats).unwrap_or_default()
    }

    fn shutdown(&mut self) {
        self.disconnect();
        self.set_state(XenbusState::Closed);
        self.publish_stats();
    }
}
