//! blkfront: the guest half of Xen's PV block device (`xen/include/public/io/blkif.h`,
//! its "Frontend XenBus Nodes" and "Backend XenBus Nodes" sections).
//!
//! # Control plane (xenbus)
//!
//! [`Blkfront::connect`] follows blkif.h's negotiation: wait for the backend to reach
//! `InitWait` (it has published `max-ring-page-order` by then), allocate and grant the
//! ring (one page, or `2^order` pages when the backend offers a multi-page ring),
//! allocate an unbound event channel, write `ring-ref` (or `ring-page-order` and
//! `ring-refN`), `event-channel`, `protocol` = `x86_64-abi` and `feature-persistent`
//! in one transaction, switch to `Initialised`, wait for the backend's `Connected`,
//! read `sectors`, `sector-size`, `info`, `feature-flush-cache`, `feature-barrier`,
//! `feature-persistent` and `feature-max-indirect-segments`, and switch to `Connected`.
//! Afterwards a watch on the backend's `state` (token [`Blkfront::watch_token`]) tells
//! the guest to call [`Blkfront::on_xenbus_event`], which tears the device down cleanly
//! when the backend goes `Closing`/`Closed`: requests in flight complete with
//! [`BlockError::Disconnected`].
//!
//! # Data path
//!
//! Requests carry their data in bounce pages owned by blkfront (the [`BlockDevice`] API
//! copies in and out). Without `feature-persistent` each request grants its pages and
//! ends the grants when its response arrives; a grant the backend still holds cannot be
//! ended, and its page is then kept out of circulation (retried later, never reused
//! while granted). With `feature-persistent` the pages are granted once, writable (as
//! blkif.h note 8 asks), and reused from a LIFO pool. Requests of more than
//! [`BLKIF_MAX_SEGMENTS_PER_REQUEST`] pages use indirect descriptors when the backend
//! offers `feature-max-indirect-segments`.
//!
//! [`BlockDevice::submit`] only writes the request into the ring;
//! [`BlockDevice::kick`] publishes every request written since the last kick with one
//! `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`, and signals the event channel only if the
//! backend asked for it (`req_event`). Responses are taken until
//! `RING_FINAL_CHECK_FOR_RESPONSES` says there are no more.
//!
//! # The backend is not trusted
//!
//! A request id is a slab index with a generation in its upper half, so a response for
//! an id that is out of range, free, or of an older use of the slot is caught. Every
//! response field is checked (id, operation, status), as is the ring's response
//! producer (see [`crate::ring`]). Any violation completes everything in flight with
//! [`BlockError::Protocol`] and stops the device; nothing a backend writes can make
//! blkfront panic or touch memory other than its own bounce pages.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Deref;
use core::sync::atomic::Ordering;

use crate::abi::blkif::{
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_INDIRECT_SEGMENTS,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
    BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    BLKIF_SECTOR_SIZE, BLKIF_SEGMENTS_PER_INDIRECT_PAGE, BlkifRequest, BlkifRequestIndirect,
    BlkifRequestSegment, BlkifResponse, VDISK_READONLY,
};
use crate::abi::errno::XenErrno;
use crate::abi::grant_table::GrantRef;
use crate::abi::xen::DomId;
use crate::device::{BlockCompletion, BlockDevice, BlockError, BlockInfo, BlockOp};
use crate::frontend::{EnvError, FrontendEnv, PAGE_SIZE};
use crate::ring::{BlkifFrontRing, RingError};
use crate::shmem::SharedMemory;
use crate::xenbus::{self, Frontend, XenbusError, XenbusState};
use crate::xenstore::{TxId, XenStore, XsError, XsEvents};

/// The xenstore node names of blkif.h, shared by blkfront and the shim's blkback.
pub mod keys {
    /// Backend: size of the disk in units of `sector-size`.
    pub const SECTORS: &str = "sectors";
    /// Backend: logical sector size in bytes.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// Backend: `VDISK_*` bits.
    pub const INFO: &str = "info";
    /// Backend: `BLKIF_OP_FLUSH_DISKCACHE` is served.
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    /// Backend: `BLKIF_OP_WRITE_BARRIER` is served.
    pub const FEATURE_BARRIER: &str = "feature-barrier";
    /// Backend: `BLKIF_OP_DISCARD` is served.
    pub const FEATURE_DISCARD: &str = "feature-discard";
    /// Both: grants are reused (persistently mapped).
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    /// Backend: most segments of one `BLKIF_OP_INDIRECT` request.
    pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
    /// Backend: largest ring the frontend may allocate, as log2 of pages.
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// Backend: `r` or `w` (libxl's mode).
    pub const MODE: &str = "mode";
    /// Frontend: log2 of the ring's pages (multi-page rings only).
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// Frontend: the ring's pages, the deprecated twin of `ring-page-order`.
    pub const NUM_RING_PAGES: &str = "num-ring-pages";
    /// Frontend: grant of a one-page ring; `ring-ref<N>` for page N of a larger one.
    pub const RING_REF: &str = "ring-ref";
    /// Frontend: the unbound port the backend binds.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Frontend: the ABI of the ring structures.
    pub const PROTOCOL: &str = "protocol";
    /// `XEN_IO_PROTO_ABI_X86_64`.
    pub const PROTOCOL_X86_64: &str = "x86_64-abi";
    /// Frontend: `virtual-device`, the device number.
    pub const VIRTUAL_DEVICE: &str = "virtual-device";
}

/// Largest `ring-page-order` blkfront uses (Linux's `XENBUS_MAX_RING_GRANT_ORDER`):
/// 16 pages, 512 slots.
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// Slots a request id can name: ids are `generation << 32 | index`.
const ID_INDEX_BITS: u32 = 32;

/// What blkfront asks for and how much memory it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkfrontConfig {
    /// Largest ring order to use if the backend offers it (clamped to
    /// [`MAX_RING_PAGE_ORDER`]).
    pub max_ring_page_order: u32,
    /// Largest number of segments per request to use with indirect descriptors if the
    /// backend offers them; at most [`BLKIF_SEGMENTS_PER_INDIRECT_PAGE`] *
    /// [`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`]. 11 or less disables indirect requests.
    pub max_indirect_segments: u32,
    /// Requests in flight at most (also bounded by the ring size).
    pub max_queue_depth: u32,
    /// Offer and use persistent grants.
    pub persistent: bool,
    /// Bounce pages blkfront may allocate (raised to one largest request if lower).
    pub max_pool_pages: usize,
    /// State changes of the backend to sit through while waiting for one we want.
    pub max_wait_events: u32,
}

impl Default for BlkfrontConfig {
    fn default() -> Self {
        Self {
            max_ring_page_order: 2,
            max_indirect_segments: 64,
            max_queue_depth: 64,
            persistent: true,
            max_pool_pages: 1024,
            max_wait_events: 64,
        }
    }
}

/// What the backend offered and what was chosen, after negotiation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// `ring-page-order` in use.
    pub ring_page_order: u32,
    /// Slots of the ring.
    pub ring_size: u32,
    /// Segments per request (11 without indirect descriptors).
    pub max_segments: u32,
    /// Indirect descriptors are used for requests of more than 11 segments.
    pub indirect: bool,
    /// Grants are persistent (both ends said so).
    pub persistent: bool,
    /// The operation a flush becomes, if any.
    pub flush_op: Option<u8>,
    /// The backend's `info` bits.
    pub info: u32,
}

/// Errors of setting up or tearing down blkfront.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlkfrontError {
    /// A xenstore or xenbus operation failed.
    Xenbus(XenbusError),
    /// The environment refused pages, a grant or an event channel.
    Env(EnvError),
    /// The ring could not be set up.
    Ring(RingError),
    /// The backend is in a state that ends the negotiation.
    BackendState(XenbusState),
    /// A backend node holds an impossible value.
    BadBackendValue(&'static str),
}

impl fmt::Display for BlkfrontError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xenbus(e) => write!(f, "xenbus: {e}"),
            Self::Env(e) => write!(f, "{e}"),
            Self::Ring(e) => write!(f, "ring: {e}"),
            Self::BackendState(s) => write!(f, "backend went to {s}"),
            Self::BadBackendValue(node) => write!(f, "backend node {node} is invalid"),
        }
    }
}

impl core::error::Error for BlkfrontError {}

impl From<XenbusError> for BlkfrontError {
    fn from(e: XenbusError) -> Self {
        Self::Xenbus(e)
    }
}

impl From<XsError> for BlkfrontError {
    fn from(e: XsError) -> Self {
        Self::Xenbus(XenbusError::Store(e))
    }
}

impl From<EnvError> for BlkfrontError {
    fn from(e: EnvError) -> Self {
        Self::Env(e)
    }
}

impl From<RingError> for BlkfrontError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

/// How the backend broke the protocol (the first violation is kept for diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A response id names no slot.
    UnknownId(u64),
    /// A response id names a slot that is free or in use by a later request.
    StaleId(u64),
    /// The response's operation is not the request's.
    WrongOperation {
        /// What the request was.
        expected: u8,
        /// What the response says.
        got: u8,
    },
    /// A status that is not a `BLKIF_RSP_*`.
    BadStatus(i16),
    /// The ring's indices are impossible.
    Ring(RingError),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownId(id) => write!(f, "response for unknown id {id:#x}"),
            Self::StaleId(id) => write!(f, "response for an id not in flight ({id:#x})"),
            Self::WrongOperation { expected, got } => {
                write!(
                    f,
                    "response operation {got} for a request of operation {expected}"
                )
            }
            Self::BadStatus(s) => write!(f, "response status {s} is not a BLKIF_RSP_*"),
            Self::Ring(e) => write!(f, "{e}"),
        }
    }
}

/// Counters of one blkfront.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkfrontStats {
    /// Requests written to the ring.
    pub requests: u64,
    /// Of which reads.
    pub reads: u64,
    /// Of which writes.
    pub writes: u64,
    /// Of which flushes (or barriers standing in for them).
    pub flushes: u64,
    /// Of which `BLKIF_OP_INDIRECT`.
    pub indirect_requests: u64,
    /// Data segments sent.
    pub segments: u64,
    /// Bytes read successfully.
    pub bytes_read: u64,
    /// Bytes written successfully.
    pub bytes_written: u64,
    /// Publications of requests (one per kick with requests pending).
    pub batches: u64,
    /// Most requests published at once.
    pub max_batch: u64,
    /// Events sent to the backend.
    pub notifications: u64,
    /// Publications that did not need an event (the backend was still working).
    pub notifications_suppressed: u64,
    /// Responses taken.
    pub responses: u64,
    /// Calls of the response handler that found at least one response.
    pub response_rounds: u64,
    /// Most responses taken in one call.
    pub max_responses_per_round: u64,
    /// Responses with an error status.
    pub error_responses: u64,
    /// Grants that could not be ended at completion (backend still using them).
    pub grants_quarantined: u64,
    /// Pages given up for good because a grant to them could not be ended.
    pub pages_leaked: u64,
    /// Bounce pages allocated.
    pub pool_pages: u64,
    /// Protocol violations by the backend (at most one: the device stops).
    pub violations: u64,
}

/// A slab of request slots whose ids carry a generation, so that a response for a
/// slot that was freed (and maybe reused) is told apart from the current request.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
}

/// Why [`Slab::check`] refused an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdError {
    /// The index is out of range.
    Unknown,
    /// The slot is free or holds a later request.
    Stale,
}

impl<T> Slab<T> {
    /// `capacity` slots (at most 2^32).
    pub(crate) fn new(capacity: u32) -> Self {
        Self {
            slots: (0..capacity).map(|_| (0, None)).collect(),
            free: (0..capacity).rev().collect(),
        }
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Stores `value`; returns its id, or gives it back if every slot is taken.
    pub(crate) fn insert(&mut self, value: T) -> Result<u64, T> {
        let Some(index) = self.free.pop() else {
            return Err(value);
        };
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return Err(value);
        };
        slot.0 = slot.0.wrapping_add(1);
        slot.1 = Some(value);
        Ok(u64::from(slot.0) << ID_INDEX_BITS | u64::from(index))
    }

    /// The value of a live `id`.
    pub(crate) fn get(&self, id: u64) -> Result<&T, IdError> {
        let index = (id & u64::from(u32::MAX)) as usize;
        let generation = (id >> ID_INDEX_BITS) as u32;
        match self.slots.get(index) {
            None => Err(IdError::Unknown),
            Some((g, Some(v))) if *g == generation => Ok(v),
            Some(_) => Err(IdError::Stale),
        }
    }

    /// Removes and returns the value of a live `id`.
    pub(crate) fn remove(&mut self, id: u64) -> Result<T, IdError> {
        self.get(id)?;
        let index = (id & u64::from(u32::MAX)) as usize;
        let value = self
            .slots
            .get_mut(index)
            .and_then(|s| s.1.take())
            .ok_or(IdError::Stale)?;
        self.free.push(index as u32);
        Ok(value)
    }

    /// Removes every value.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some(v) = slot.1.take() {
                out.push(v);
                self.free.push(index as u32);
            }
        }
        out
    }
}

/// The result a response status stands for; `None` if it is no `BLKIF_RSP_*`.
pub(crate) fn status_result(status: i16) -> Option<Result<(), BlockError>> {
    match status {
        BLKIF_RSP_OKAY => Some(Ok(())),
        BLKIF_RSP_ERROR => Some(Err(BlockError::Io)),
        BLKIF_RSP_EOPNOTSUPP => Some(Err(BlockError::Unsupported)),
        _ => None,
    }
}

/// The segment of page `index` of a transfer of `bytes` bytes (a multiple of 512):
/// whole pages, the last one possibly partial. `None` past the end.
pub(crate) fn segment_sectors(bytes: usize, index: usize) -> Option<(u8, u8)> {
    let start = index.checked_mul(PAGE_SIZE)?;
    if start >= bytes {
        return None;
    }
    let len = (bytes - start).min(PAGE_SIZE);
    let sectors = len / BLKIF_SECTOR_SIZE;
    (sectors > 0).then(|| (0, (sectors - 1) as u8))
}

/// Chooses the transport from the config and what the backend offers.
pub(crate) fn negotiate_transport(config: &BlkfrontConfig, backend_max_order: u32) -> u32 {
    config
        .max_ring_page_order
        .min(backend_max_order)
        .min(MAX_RING_PAGE_ORDER)
}

/// Segments per request: the backend's indirect limit and ours, or the 11 of a plain
/// request when either is not above that.
pub(crate) fn negotiate_segments(config: &BlkfrontConfig, backend_max_indirect: u32) -> u32 {
    let direct = BLKIF_MAX_SEGMENTS_PER_REQUEST as u32;
    let limit = config
        .max_indirect_segments
        .min(backend_max_indirect)
        .min(BLKIF_MAX_INDIRECT_SEGMENTS as u32);
    limit.max(direct)
}

/// The ring's pages, shared between the ring and blkfront (which frees them once the
/// ring is gone and the grants ended).
#[derive(Debug)]
pub struct RingMem<P>(Arc<P>);

impl<P: SharedMemory> SharedMemory for RingMem<P> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn load_u8(&self, o: usize, ord: Ordering) -> u8 {
        self.0.load_u8(o, ord)
    }
    fn store_u8(&self, o: usize, v: u8, ord: Ordering) {
        self.0.store_u8(o, v, ord)
    }
    fn load_u16(&self, o: usize, ord: Ordering) -> u16 {
        self.0.load_u16(o, ord)
    }
    fn store_u16(&self, o: usize, v: u16, ord: Ordering) {
        self.0.store_u16(o, v, ord)
    }
    fn compare_exchange_u16(&self, o: usize, c: u16, n: u16) -> Result<u16, u16> {
        self.0.compare_exchange_u16(o, c, n)
    }
    fn load_u32(&self, o: usize, ord: Ordering) -> u32 {
        self.0.load_u32(o, ord)
    }
    fn store_u32(&self, o: usize, v: u32, ord: Ordering) {
        self.0.store_u32(o, v, ord)
    }
    fn compare_exchange_u32(&self, o: usize, c: u32, n: u32) -> Result<u32, u32> {
        self.0.compare_exchange_u32(o, c, n)
    }
    fn load_u64(&self, o: usize, ord: Ordering) -> u64 {
        self.0.load_u64(o, ord)
    }
    fn store_u64(&self, o: usize, v: u64, ord: Ordering) {
        self.0.store_u64(o, v, ord)
    }
    fn swap_u64(&self, o: usize, v: u64, ord: Ordering) -> u64 {
        self.0.swap_u64(o, v, ord)
    }
    fn fetch_or_u64(&self, o: usize, v: u64, ord: Ordering) -> u64 {
        self.0.fetch_or_u64(o, v, ord)
    }
    fn fetch_and_u64(&self, o: usize, v: u64, ord: Ordering) -> u64 {
        self.0.fetch_and_u64(o, v, ord)
    }
    fn read_bytes(&self, o: usize, buf: &mut [u8]) {
        self.0.read_bytes(o, buf)
    }
    fn write_bytes(&self, o: usize, data: &[u8]) {
        self.0.write_bytes(o, data)
    }
}

/// A bounce page: frame, view, and its persistent grant if it has one.
#[derive(Debug)]
struct Page<P> {
    pfn: u64,
    mem: P,
    persistent: Option<GrantRef>,
}

/// A request in flight.
#[derive(Debug)]
struct InFlight<P> {
    tag: u64,
    op: BlockOp,
    /// The operation in the ring: `BLKIF_OP_INDIRECT` for an indirect request.
    wire_op: u8,
    /// The data operation (`indirect_op` of an indirect request, else `wire_op`).
    /// A response echoes it or `wire_op`: Linux's blkback answers an indirect
    /// request with its `indirect_op` (`pending_req->operation = req_operation` in
    /// `dispatch_rw_block_io`), and Linux's blkfront expects exactly that.
    data_op: u8,
    bytes: usize,
    /// Data pages then indirect pages.
    pages: Vec<Page<P>>,
    /// Per-request grants to end at completion (non-persistent mode), one per page.
    grants: Vec<GrantRef>,
}

/// Where the device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DevState {
    Connected,
    /// The backend lied; nothing more is sent.
    Broken,
    /// Torn down (backend closed or [`Blkfront::shutdown`]).
    Disconnected,
}

/// The frontend of one virtual block device.
pub struct Blkfront<E: FrontendEnv> {
    env: E,
    dev: Frontend,
    backend_domid: DomId,
    handle: u16,
    ring: Option<BlkifFrontRing<RingMem<E::Pages>>>,
    ring_pages: Option<(u64, Arc<E::Pages>)>,
    ring_grants: Vec<GrantRef>,
    port: Option<u32>,
    watch: Option<String>,
    info: BlockInfo,
    negotiated: Negotiated,
    max_pool_pages: usize,
    slab: Slab<InFlight<E::Pages>>,
    done: VecDeque<BlockCompletion>,
    pool: Vec<Page<E::Pages>>,
    /// Pages whose per-request grant the backend still held; retried on each event.
    quarantine: Vec<(GrantRef, Page<E::Pages>)>,
    next_tag: u64,
    /// `req_prod_pvt` at the last publication (for batch counting).
    published: u32,
    state: DevState,
    violation: Option<Violation>,
    stats: BlkfrontStats,
}

impl<E: FrontendEnv> fmt::Debug for Blkfront<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blkfront")
            .field("dir", &self.dev.dir)
            .field("backend", &self.dev.backend.path)
            .field("port", &self.port)
            .field("info", &self.info)
            .field("negotiated", &self.negotiated)
            .field("state", &self.state)
            .field("violation", &self.violation)
            .finish_non_exhaustive()
    }
}

/// Reads an optional unsigned node: missing is `None`.
fn read_opt_u32<P, X>(xs: &mut XenStore<P, X>, path: &str) -> Result<Option<u32>, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    X: XsEvents,
{
    match xenbus::read_u32(xs, TxId::NONE, path) {
        Err(XenbusError::Store(XsError::Xen(XenErrno::ENOENT))) => Ok(None),
        r => r.map(Some),
    }
}

impl<E: FrontendEnv> Blkfront<E> {
    /// Negotiates with the backend of `device/vbd/<id>` and returns the connected
    /// device. Blocks (bounded by the xenstore client's limits and
    /// `config.max_wait_events`) while the backend moves through its states.
    ///
    /// On failure everything allocated is given back (or leaked, if the backend still
    /// holds a grant to it) and the frontend's state is left at `Closed` if it had
    /// been changed.
    pub fn connect<P, X>(
        env: E,
        xs: &mut XenStore<P, X>,
        id: &str,
        config: BlkfrontConfig,
    ) -> Result<Self, BlkfrontError>
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        let dev = Frontend::open(xs, "vbd", id)?;
        let handle = id.parse::<u16>().unwrap_or(0);
        let backend_domid = dev.backend.domid;
        let mut me = Self {
            env,
            dev,
            backend_domid,
            handle,
            ring: None,
            ring_pages: None,
            ring_grants: Vec::new(),
            port: None,
            watch: None,
            info: BlockInfo {
                sectors: 0,
                sector_size: BLKIF_SECTOR_SIZE as u32,
                read_only: true,
                flush: false,
                queue_depth: 0,
                max_transfer: 0,
            },
            negotiated: Negotiated::default(),
            max_pool_pages: config.max_pool_pages,
            slab: Slab::new(0),
            done: VecDeque::new(),
            pool: Vec::new(),
            quarantine: Vec::new(),
            next_tag: 1,
            published: 0,
            state: DevState::Disconnected,
            violation: None,
            stats: BlkfrontStats::default(),
        };
        match me.negotiate(xs, &config) {
            Ok(()) => Ok(me),
            Err(e) => {
                me.release_all();
                let _ = me.dev.switch_state(xs, XenbusState::Closed);
                Err(e)
            }
        }
    }

    fn negotiate<P, X>(
        &mut self,
        xs: &mut XenStore<P, X>,
        config: &BlkfrontConfig,
    ) -> Result<(), BlkfrontError>
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        use XenbusState as S;
        // After an earlier connection this end is Closed: starting over is what tells
        // the backend to get ready again (it goes back to InitWait).
        if self.dev.state(xs).ok() != Some(S::Initialising) {
            self.dev.switch_state(xs, S::Initialising)?;
        }
        // blkif.h: the backend publishes its transport limits before InitWait. A
        // backend still Closed from an earlier connection is waited for.
        let st = self.dev.wait_for_backend(
            xs,
            |s| !matches!(s, S::Unknown | S::Initialising | S::Closed),
            config.max_wait_events,
        )?;
        if !matches!(st, S::InitWait | S::Initialised | S::Connected) {
            return Err(BlkfrontError::BackendState(st));
        }
        let backend_order = read_opt_u32(xs, &self.dev.backend_node(keys::MAX_RING_PAGE_ORDER))?;
        let order = negotiate_transport(config, backend_order.unwrap_or(0));

        // The ring: 2^order contiguous pages, each granted to the backend.
        let pages = 1usize << order;
        let (pfn, mem) = self.env.alloc_pages(pages)?;
        let mem = Arc::new(mem);
        self.ring_pages = Some((pfn, mem.clone()));
        let ring = BlkifFrontRing::new(RingMem(mem))?;
        let ring_size = ring.size();
        self.ring = Some(ring);
        for i in 0..pages as u64 {
            let gref = self.env.grant(self.backend_domid, pfn + i, false)?;
            self.ring_grants.push(gref);
        }
        let port = self.env.alloc_unbound(self.backend_domid)?;
        self.port = Some(port);

        let grants = self.ring_grants.clone();
        let dir = self.dev.dir.clone();
        let persistent = config.persistent;
        xs.transaction(|tx| {
            let t = tx.id();
            let xs = tx.store();
            let node = |name: &str| xenbus::join(&dir, name);
            // Nodes of an earlier connection with another ring size must not linger
            // (a missing node is fine; a conflict shows at commit).
            let mut stale: Vec<String> = Vec::new();
            if order == 0 {
                stale.push(keys::RING_PAGE_ORDER.into());
                stale.push(keys::NUM_RING_PAGES.into());
            } else {
                stale.push(keys::RING_REF.into());
            }
            let first_unused = if order == 0 { 0 } else { grants.len() };
            for i in first_unused..1 << MAX_RING_PAGE_ORDER {
                stale.push(format!("{}{i}", keys::RING_REF));
            }
            for name in stale {
                let _ = xs.rm(t, &node(&name));
            }
            if order == 0 {
                xenbus::write_fmt(xs, t, &node(keys::RING_REF), format_args!("{}", grants[0]))?;
            } else {
                xenbus::write_fmt(xs, t, &node(keys::RING_PAGE_ORDER), format_args!("{order}"))?;
                xenbus::write_fmt(
                    xs,
                    t,
                    &node(keys::NUM_RING_PAGES),
                    format_args!("{}", grants.len()),
                )?;
                for (i, g) in grants.iter().enumerate() {
                    let name = format!("{}{i}", keys::RING_REF);
                    xenbus::write_fmt(xs, t, &node(&name), format_args!("{g}"))?;
                }
            }
            xenbus::write_fmt(xs, t, &node(keys::EVENT_CHANNEL), format_args!("{port}"))?;
            xenbus::write_str(xs, t, &node(keys::PROTOCOL), keys::PROTOCOL_X86_64)?;
            xenbus::write_bool(xs, t, &node(keys::FEATURE_PERSISTENT), persistent)?;
            Ok::<(), XenbusError>(())
        })?;
        self.dev.switch_state(xs, S::Initialised)?;

        let st = self.dev.wait_for_backend(
            xs,
            |s| matches!(s, S::Connected | S::Closing | S::Closed),
            config.max_wait_events,
        )?;
        if st != S::Connected {
            return Err(BlkfrontError::BackendState(st));
        }
        self.read_backend_info(xs, config, order, ring_size)?;

        // Watch the backend from now on, so that its closing is noticed.
        let token = xs.unique_token("blkfront-");
        let path = xenbus::join(&self.dev.backend.path, "state");
        xs.watch(&path, &token)?;
        self.watch = Some(token);
        self.dev.switch_state(xs, S::Connected)?;
        self.state = DevState::Connected;
        Ok(())
    }

    fn read_backend_info<P, X>(
        &mut self,
        xs: &mut XenStore<P, X>,
        config: &BlkfrontConfig,
        order: u32,
        ring_size: u32,
    ) -> Result<(), BlkfrontError>
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        let b = |name: &str| xenbus::join(&self.dev.backend.path, name);
        let sectors = xenbus::read_u64(xs, TxId::NONE, &b(keys::SECTORS))?;
        let sector_size = read_opt_u32(xs, &b(keys::SECTOR_SIZE))?.unwrap_or(512);
        if !sector_size.is_power_of_two()
            || !(BLKIF_SECTOR_SIZE as u32..=PAGE_SIZE as u32).contains(&sector_size)
        {
            return Err(BlkfrontError::BadBackendValue(keys::SECTOR_SIZE));
        }
        if sectors.checked_mul(u64::from(sector_size)).is_none() {
            return Err(BlkfrontError::BadBackendValue(keys::SECTORS));
        }
        let info = read_opt_u32(xs, &b(keys::INFO))?.unwrap_or(0);
        let flush = xenbus::read_feature(xs, TxId::NONE, &b(keys::FEATURE_FLUSH_CACHE))?;
        let barrier = xenbus::read_feature(xs, TxId::NONE, &b(keys::FEATURE_BARRIER))?;
        let persistent = xenbus::read_feature(xs, TxId::NONE, &b(keys::FEATURE_PERSISTENT))?
            && config.persistent;
        let max_indirect = read_opt_u32(xs, &b(keys::FEATURE_MAX_INDIRECT_SEGMENTS))?.unwrap_or(0);
        let max_segments = negotiate_segments(config, max_indirect);
        let flush_op = if flush {
            Some(BLKIF_OP_FLUSH_DISKCACHE)
        } else if barrier {
            Some(BLKIF_OP_WRITE_BARRIER)
        } else {
            None
        };
        let depth = ring_size.min(config.max_queue_depth.max(1));
        self.negotiated = Negotiated {
            ring_page_order: order,
            ring_size,
            max_segments,
            indirect: max_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST as u32,
            persistent,
            flush_op,
            info,
        };
        let per_request =
            max_segments as usize + BlkifRequestIndirect::pages_for(max_segments as u16);
        self.max_pool_pages = self.max_pool_pages.max(per_request);
        self.slab = Slab::new(depth);
        self.info = BlockInfo {
            sectors,
            sector_size,
            read_only: info & VDISK_READONLY != 0,
            flush: flush_op.is_some(),
            queue_depth: depth,
            max_transfer: max_segments * PAGE_SIZE as u32,
        };
        Ok(())
    }

    /// The event-channel port the backend signals: route its events to
    /// [`Blkfront::on_event`] (or just call [`BlockDevice::poll`]).
    pub fn port(&self) -> Option<u32> {
        self.port
    }

    /// The token of the watch on the backend's `state`: on an event with it, call
    /// [`Blkfront::on_xenbus_event`].
    pub fn watch_token(&self) -> Option<&str> {
        self.watch.as_deref()
    }

    /// The frontend's xenbus directory (`device/vbd/<id>`).
    pub fn dir(&self) -> &str {
        &self.dev.dir
    }

    /// The backend's directory.
    pub fn backend_path(&self) -> &str {
        &self.dev.backend.path
    }

    /// What was negotiated.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Counters so far.
    pub fn stats(&self) -> BlkfrontStats {
        self.stats
    }

    /// The backend's first protocol violation, if it committed one.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Whether the device takes requests.
    pub fn is_connected(&self) -> bool {
        self.state == DevState::Connected
    }

    /// The error requests get in the current state (`Ok` when connected).
    fn usable(&self) -> Result<(), BlockError> {
        match self.state {
            DevState::Connected => Ok(()),
            DevState::Broken => Err(BlockError::Protocol),
            DevState::Disconnected => Err(BlockError::Disconnected),
        }
    }

    /// Handles an event on [`Blkfront::port`]: takes every response the backend has
    /// published, completing requests (collect them with [`BlockDevice::poll`]), and
    /// re-arms `rsp_event`. Returns how many responses were taken.
    pub fn on_event(&mut self) -> Result<usize, BlockError> {
        self.retry_quarantine();
        self.usable()?;
        let mut taken = 0u64;
        let result = loop {
            let next = match self.ring.as_mut() {
                Some(r) => r.take_response(),
                None => break Err(BlockError::Disconnected),
            };
            match next {
                Ok(Some(rsp)) => {
                    taken += 1;
                    if let Err(v) = self.complete(rsp) {
                        break Err(self.broken(v));
                    }
                }
                Ok(None) => {
                    let again = self
                        .ring
                        .as_mut()
                        .map_or(Ok(false), |r| r.final_check_for_responses());
                    match again {
                        Ok(true) => continue,
                        Ok(false) => break Ok(()),
                        Err(e) => break Err(self.broken(Violation::Ring(e))),
                    }
                }
                Err(e) => break Err(self.broken(Violation::Ring(e))),
            }
        };
        if taken > 0 {
            self.stats.response_rounds += 1;
            self.stats.max_responses_per_round = self.stats.max_responses_per_round.max(taken);
        }
        result.map(|()| taken as usize)
    }

    /// Validates a response and completes its request.
    fn complete(&mut self, rsp: BlkifResponse) -> Result<(), Violation> {
        self.stats.responses += 1;
        let (expected, data_op) = match self.slab.get(rsp.id) {
            Ok(req) => (req.wire_op, req.data_op),
            Err(IdError::Unknown) => return Err(Violation::UnknownId(rsp.id)),
            Err(IdError::Stale) => return Err(Violation::StaleId(rsp.id)),
        };
        if rsp.operation != expected && rsp.operation != data_op {
            return Err(Violation::WrongOperation {
                expected,
                got: rsp.operation,
            });
        }
        let result = status_result(rsp.status).ok_or(Violation::BadStatus(rsp.status))?;
        let req = self
            .slab
            .remove(rsp.id)
            .map_err(|_| Violation::StaleId(rsp.id))?;
        if result.is_err() {
            self.stats.error_responses += 1;
        }
        let mut data = Vec::new();
        if result.is_ok() {
            match req.op {
                BlockOp::Read => {
                    data = vec![0; req.bytes];
                    for (chunk, page) in data.chunks_mut(PAGE_SIZE).zip(&req.pages) {
                        page.mem.read_bytes(0, chunk);
                    }
                    self.stats.bytes_read += req.bytes as u64;
                }
                BlockOp::Write => self.stats.bytes_written += req.bytes as u64,
                BlockOp::Flush => {}
            }
        }
        let (tag, op) = (req.tag, req.op);
        self.release(req);
        self.done.push_back(BlockCompletion {
            tag,
            op,
            result,
            data,
        });
        Ok(())
    }

    /// Gives a finished request's pages back: ends its per-request grants (a page
    /// whose grant the backend still holds goes to quarantine), pools the pages.
    fn release(&mut self, req: InFlight<E::Pages>) {
        let mut grants = req.grants.into_iter();
        for page in req.pages {
            match grants.next() {
                Some(gref) => match self.env.end_grant(gref) {
                    Ok(()) => self.pool.push(page),
                    Err(_) => {
                        self.stats.grants_quarantined += 1;
                        self.quarantine.push((gref, page));
                    }
                },
                None => self.pool.push(page),
            }
        }
    }

    /// Tries again to end the grants of quarantined pages; pools those that succeed.
    fn retry_quarantine(&mut self) {
        let mut i = 0;
        while i < self.quarantine.len() {
            let gref = self.quarantine[i].0;
            if self.env.end_grant(gref).is_ok() {
                let (_, page) = self.quarantine.swap_remove(i);
                self.pool.push(page);
            } else {
                i += 1;
            }
        }
    }

    /// Stops the device after a violation: everything in flight fails with
    /// [`BlockError::Protocol`]. Returns that error.
    fn broken(&mut self, v: Violation) -> BlockError {
        if self.state == DevState::Connected {
            self.stats.violations += 1;
            self.violation = Some(v);
            self.state = DevState::Broken;
            self.fail_all(BlockError::Protocol);
        }
        BlockError::Protocol
    }

    /// Completes everything in flight with `error`.
    fn fail_all(&mut self, error: BlockError) {
        for req in self.slab.drain() {
            let (tag, op) = (req.tag, req.op);
            self.release(req);
            self.done.push_back(BlockCompletion {
                tag,
                op,
                result: Err(error),
                data: Vec::new(),
            });
        }
    }

    /// Handles a change of the backend's state (the watch [`Blkfront::watch_token`]
    /// fired): if the backend is closing or gone, fails the requests in flight with
    /// [`BlockError::Disconnected`] and disconnects. A device stopped by a protocol
    /// violation is closed here too. Returns the backend's state.
    pub fn on_xenbus_event<P, X>(
        &mut self,
        xs: &mut XenStore<P, X>,
    ) -> Result<XenbusState, BlkfrontError>
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        let st = match self.dev.backend_state(xs) {
            Err(XenbusError::Store(XsError::Xen(XenErrno::ENOENT))) => XenbusState::Unknown,
            Err(XenbusError::Parse { .. }) => XenbusState::Unknown,
            r => r?,
        };
        let gone = matches!(
            st,
            XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown
        );
        if self.state != DevState::Disconnected && (gone || self.state == DevState::Broken) {
            self.disconnect(xs);
        }
        Ok(st)
    }

    /// Closes the device from this side: fails the requests in flight with
    /// [`BlockError::Disconnected`], switches to `Closing`, waits (bounded) for the
    /// backend to close, frees what it can and switches to `Closed`.
    pub fn shutdown<P, X>(&mut self, xs: &mut XenStore<P, X>, max_wait_events: u32)
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        if self.state == DevState::Disconnected {
            return;
        }
        self.fail_all(BlockError::Disconnected);
        let _ = self.dev.switch_state(xs, XenbusState::Closing);
        let _ = self.dev.wait_for_backend(
            xs,
            |s| {
                matches!(
                    s,
                    XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown
                )
            },
            max_wait_events,
        );
        self.disconnect(xs);
    }

    fn disconnect<P, X>(&mut self, xs: &mut XenStore<P, X>)
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        self.fail_all(BlockError::Disconnected);
        self.state = DevState::Disconnected;
        if let Some(token) = self.watch.take() {
            let path = xenbus::join(&self.dev.backend.path, "state");
            let _ = xs.unwatch(&path, &token);
        }
        self.release_all();
        let _ = self.dev.switch_state(xs, XenbusState::Closed);
    }

    /// Closes the port and ends every grant; frees the pages whose grants ended and
    /// leaks the others (the backend may still write them).
    fn release_all(&mut self) {
        if let Some(port) = self.port.take() {
            self.env.close_port(port);
        }
        // Every grant is ended, even after one failed.
        let mut ring_ok = true;
        for g in core::mem::take(&mut self.ring_grants) {
            ring_ok &= self.env.end_grant(g).is_ok();
        }
        self.ring = None;
        if let Some((pfn, mem)) = self.ring_pages.take() {
            // The ring (its only other owner) is gone, so the pages come back.
            if let (true, Ok(mem)) = (ring_ok, Arc::try_unwrap(mem)) {
                self.env.free_pages(pfn, mem);
            } else {
                self.stats.pages_leaked += 1u64 << self.negotiated.ring_page_order;
            }
        }
        for page in core::mem::take(&mut self.pool) {
            self.free_page(page);
        }
        for (gref, page) in core::mem::take(&mut self.quarantine) {
            if self.env.end_grant(gref).is_ok() {
                self.free_page(page);
            } else {
                self.stats.pages_leaked += 1;
            }
        }
    }

    /// Ends a page's persistent grant and frees it; leaks it if the grant is held.
    fn free_page(&mut self, page: Page<E::Pages>) {
        if let Some(g) = page.persistent
            && self.env.end_grant(g).is_err()
        {
            self.stats.pages_leaked += 1;
            return;
        }
        self.env.free_pages(page.pfn, page.mem);
    }

    /// Takes a bounce page from the pool, or allocates one (granted persistently in
    /// persistent mode) while under the pool limit.
    fn take_page(&mut self) -> Result<Page<E::Pages>, BlockError> {
        if let Some(p) = self.pool.pop() {
            return Ok(p);
        }
        let allocated = self.stats.pool_pages as usize;
        if allocated >= self.max_pool_pages {
            return Err(BlockError::Busy);
        }
        let (pfn, mem) = self.env.alloc_pages(1).map_err(|_| BlockError::Busy)?;
        let persistent = if self.negotiated.persistent {
            match self.env.grant(self.backend_domid, pfn, false) {
                Ok(g) => Some(g),
                Err(_) => {
                    self.env.free_pages(pfn, mem);
                    return Err(BlockError::Busy);
                }
            }
        } else {
            None
        };
        self.stats.pool_pages += 1;
        Ok(Page {
            pfn,
            mem,
            persistent,
        })
    }

    /// Publishes the requests written since the last publication; notifies the
    /// backend if it asked (`req_event`).
    fn publish(&mut self) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let batch = ring.req_prod_pvt().wrapping_sub(self.published);
        if batch == 0 {
            return;
        }
        let notify = ring.push_requests_and_check_notify();
        self.published = ring.req_prod_pvt();
        self.stats.batches += 1;
        self.stats.max_batch = self.stats.max_batch.max(u64::from(batch));
        match (notify, self.port) {
            (true, Some(port)) => {
                self.env.notify(port);
                self.stats.notifications += 1;
            }
            _ => self.stats.notifications_suppressed += 1,
        }
    }

    /// Builds and writes one request; on failure everything taken is given back.
    fn queue(
        &mut self,
        op: BlockOp,
        wire_op: u8,
        sector: u64,
        bytes: usize,
        data: &[u8],
    ) -> Result<u64, BlockError> {
        let nseg = bytes.div_ceil(PAGE_SIZE);
        let indirect = nseg > BLKIF_MAX_SEGMENTS_PER_REQUEST;
        let nind = if indirect {
            BlkifRequestIndirect::pages_for(nseg as u16)
        } else {
            0
        };
        if nind > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
            return Err(BlockError::BadRequest);
        }
        let mut req = InFlight {
            tag: self.next_tag,
            op,
            wire_op: if indirect { BLKIF_OP_INDIRECT } else { wire_op },
            data_op: wire_op,
            bytes,
            pages: Vec::with_capacity(nseg + nind),
            grants: Vec::new(),
        };
        for _ in 0..nseg + nind {
            match self.take_page() {
                Ok(p) => req.pages.push(p),
                Err(e) => {
                    self.pool.append(&mut req.pages);
                    return Err(if self.slab.in_use() > 0 {
                        e
                    } else {
                        BlockError::Io
                    });
                }
            }
        }
        // Data in, grants out.
        let persistent = self.negotiated.persistent;
        let mut segs = Vec::with_capacity(nseg);
        for (i, page) in req.pages.iter().enumerate() {
            let data_page = i < nseg;
            if data_page && op == BlockOp::Write {
                let chunk = &data[i * PAGE_SIZE..bytes.min((i + 1) * PAGE_SIZE)];
                page.mem.write_bytes(0, chunk);
            }
            let gref = match page.persistent {
                Some(g) if persistent => g,
                _ => {
                    // The backend only reads pages of writes and indirect pages.
                    let readonly = !data_page || op == BlockOp::Write;
                    match self.env.grant(self.backend_domid, page.pfn, readonly) {
                        Ok(g) => {
                            req.grants.push(g);
                            g
                        }
                        Err(_) => {
                            let busy = self.slab.in_use() > 0;
                            self.release(req);
                            return Err(if busy {
                                BlockError::Busy
                            } else {
                                BlockError::Io
                            });
                        }
                    }
                }
            };
            if data_page {
                let (first, last) = segment_sectors(bytes, i).unwrap_or((0, 7));
                segs.push(BlkifRequestSegment::new(gref, first, last));
            }
        }
        let wire = if indirect {
            let mut ind = BlkifRequestIndirect {
                operation: BLKIF_OP_INDIRECT,
                indirect_op: wire_op,
                nr_segments: nseg as u16,
                sector_number: sector,
                handle: self.handle,
                ..Default::default()
            };
            for (j, chunk) in segs.chunks(BLKIF_SEGMENTS_PER_INDIRECT_PAGE).enumerate() {
                let page = &req.pages[nseg + j];
                let mut bytes = Vec::with_capacity(chunk.len() * BlkifRequestSegment::SIZE);
                for s in chunk {
                    bytes.extend_from_slice(&s.to_bytes());
                }
                page.mem.write_bytes(0, &bytes);
                ind.indirect_grefs[j] = match page.persistent {
                    Some(g) if persistent => g,
                    _ => req.grants[nseg + j],
                };
            }
            BlkifRequest::from_indirect(&ind)
        } else {
            let mut r = BlkifRequest {
                operation: wire_op,
                nr_segments: nseg as u8,
                handle: self.handle,
                sector_number: sector,
                ..Default::default()
            };
            r.seg[..nseg].copy_from_slice(&segs);
            r
        };
        let id = match self.slab.insert(req) {
            Ok(id) => id,
            Err(req) => {
                self.release(req);
                return Err(BlockError::Busy);
            }
        };
        let push = match self.ring.as_mut() {
            Some(r) => r.push_request(&BlkifRequest { id, ..wire }),
            None => Err(RingError::Full),
        };
        if let Err(e) = push {
            if let Ok(req) = self.slab.remove(id) {
                self.release(req);
            }
            return Err(if e.is_protocol_error() {
                self.broken(Violation::Ring(e))
            } else {
                BlockError::Busy
            });
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        self.stats.requests += 1;
        self.stats.segments += nseg as u64;
        if indirect {
            self.stats.indirect_requests += 1;
        }
        match op {
            BlockOp::Read => self.stats.reads += 1,
            BlockOp::Write => self.stats.writes += 1,
            BlockOp::Flush => self.stats.flushes += 1,
        }
        Ok(tag)
    }
}

impl<E: FrontendEnv> BlockDevice for Blkfront<E> {
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
        self.usable()?;
        let ss = u64::from(self.info.sector_size);
        let bytes = u64::from(count) * ss;
        self.info.check(op, sector, count, data)?;
        let wire_op = match op {
            BlockOp::Read => BLKIF_OP_READ,
            BlockOp::Write => BLKIF_OP_WRITE,
            BlockOp::Flush => self.negotiated.flush_op.ok_or(BlockError::Unsupported)?,
        };
        if self.slab.is_full() {
            return Err(BlockError::Busy);
        }
        // blkif sector numbers are always in 512-byte units.
        let wire_sector = sector * (ss / BLKIF_SECTOR_SIZE as u64);
        let tag = self.queue(op, wire_op, wire_sector, bytes as usize, data)?;
        // A full queue cannot wait for the caller's kick.
        if self.slab.is_full() {
            self.publish();
        }
        Ok(tag)
    }

    fn kick(&mut self) {
        if self.state == DevState::Connected {
            self.publish();
        }
    }

    fn poll(&mut self, done: &mut Vec<BlockCompletion>) -> Result<usize, BlockError> {
        let r = self.on_event();
        let n = self.done.len();
        done.extend(self.done.drain(..));
        match r {
            Err(e) if n == 0 => Err(e),
            _ => Ok(n),
        }
    }

    fn in_flight(&self) -> u32 {
        (self.slab.in_use() + self.done.len()) as u32
    }
}

impl<E: FrontendEnv> crate::follow::Follower for Blkfront<E> {
    type Error = BlkfrontError;

    fn watch_token(&self) -> Option<&str> {
        Blkfront::watch_token(self)
    }

    fn on_backend_change<P, X>(
        &mut self,
        xs: &mut XenStore<P, X>,
    ) -> Result<XenbusState, BlkfrontError>
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        self.on_xenbus_event(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_ids_are_bounds_checked_and_generational() {
        let mut slab: Slab<u32> = Slab::new(3);
        assert_eq!(slab.capacity(), 3);
        let a = slab.insert(10).unwrap();
        let b = slab.insert(11).unwrap();
        let c = slab.insert(12).unwrap();
        assert!(slab.is_full());
        assert_eq!(slab.insert(13), Err(13));
        assert_eq!(slab.get(b), Ok(&11));
        // Out of range index, whatever the generation.
        assert_eq!(slab.get(3), Err(IdError::Unknown));
        assert_eq!(slab.get(u64::MAX), Err(IdError::Unknown));
        assert_eq!(slab.get(1 << 32 | 7), Err(IdError::Unknown));
        // Right index, wrong generation.
        assert_eq!(slab.get(b ^ (1 << 40)), Err(IdError::Stale));
        assert_eq!(slab.remove(b), Ok(11));
        // A duplicate response for the same id.
        assert_eq!(slab.remove(b), Err(IdError::Stale));
        // The slot is reused with a new generation: the old id stays stale.
        let d = slab.insert(14).unwrap();
        assert_eq!(d & 0xffff_ffff, b & 0xffff_ffff);
        assert_ne!(d, b);
        assert_eq!(slab.get(b), Err(IdError::Stale));
        assert_eq!(slab.get(d), Ok(&14));
        assert_eq!(slab.in_use(), 3);
        let mut all = slab.drain();
        all.sort();
        assert_eq!(all, [10, 12, 14]);
        assert_eq!(slab.in_use(), 0);
        assert_eq!(slab.get(a), Err(IdError::Stale));
        assert_eq!(slab.get(c), Err(IdError::Stale));
        // Empty slab: every id is unknown.
        let empty: Slab<u8> = Slab::new(0);
        assert_eq!(empty.get(0), Err(IdError::Unknown));
    }

    #[test]
    fn response_status_validation() {
        assert_eq!(status_result(BLKIF_RSP_OKAY), Some(Ok(())));
        assert_eq!(status_result(BLKIF_RSP_ERROR), Some(Err(BlockError::Io)));
        assert_eq!(
            status_result(BLKIF_RSP_EOPNOTSUPP),
            Some(Err(BlockError::Unsupported))
        );
        for bad in [1, -3, i16::MIN, i16::MAX, 42] {
            assert_eq!(status_result(bad), None, "{bad}");
        }
    }

    #[test]
    fn segments_cover_whole_pages_then_the_rest() {
        assert_eq!(segment_sectors(512, 0), Some((0, 0)));
        assert_eq!(segment_sectors(512, 1), None);
        assert_eq!(segment_sectors(4096, 0), Some((0, 7)));
        assert_eq!(segment_sectors(4096, 1), None);
        assert_eq!(segment_sectors(4096 + 1536, 0), Some((0, 7)));
        assert_eq!(segment_sectors(4096 + 1536, 1), Some((0, 2)));
        assert_eq!(segment_sectors(0, 0), None);
        assert_eq!(segment_sectors(4096, usize::MAX), None);
        for bytes in (512..=64 * 1024).step_by(512) {
            let total: usize = (0..)
                .map_while(|i| segment_sectors(bytes, i))
                .map(|(f, l)| usize::from(l - f + 1) * 512)
                .sum();
            assert_eq!(total, bytes);
        }
    }

    #[test]
    fn negotiation_takes_the_smaller_offer() {
        let c = BlkfrontConfig::default();
        assert_eq!(negotiate_transport(&c, 0), 0);
        assert_eq!(negotiate_transport(&c, 1), 1);
        assert_eq!(negotiate_transport(&c, 9), 2);
        let big = BlkfrontConfig {
            max_ring_page_order: 30,
            ..c
        };
        assert_eq!(negotiate_transport(&big, u32::MAX), MAX_RING_PAGE_ORDER);
        // No indirect offered, or ours is small: plain requests.
        assert_eq!(negotiate_segments(&c, 0), 11);
        assert_eq!(negotiate_segments(&c, 8), 11);
        assert_eq!(negotiate_segments(&c, 32), 32);
        assert_eq!(negotiate_segments(&c, 256), 64);
        let huge = BlkfrontConfig {
            max_indirect_segments: u32::MAX,
            ..c
        };
        assert_eq!(negotiate_segments(&huge, u32::MAX), 4096);
        let none = BlkfrontConfig {
            max_indirect_segments: 0,
            ..c
        };
        assert_eq!(negotiate_segments(&none, 256), 11);
    }
}
