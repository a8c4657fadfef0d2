//! The shared request/response ring of `xen/include/public/io/ring.h`, both halves,
//! written once and generic over [`SharedMemory`] and the message types.
//!
//! # Layout (`struct *_sring`)
//!
//! A 64-byte header (`req_prod`, `req_event`, `rsp_prod`, `rsp_event`, a 4-byte
//! private union, 44 bytes of padding) followed by the slots. A slot is the C
//! `union { req; rsp; }`: as large as the larger message (rounded up to the larger
//! alignment). The ring holds the largest power of two of slots that fits the memory:
//! `__RD32((bytes - 64) / slot)`. A multi-page ring (blkif `ring-page-order`) is the
//! same thing over a larger region, see [`ring_size`].
//!
//! # Driving it
//!
//! Frontend ([`FrontRing`]): [`push_request`](FrontRing::push_request) any number of
//! times (while [`free_requests`](FrontRing::free_requests) > 0), then
//! [`push_requests_and_check_notify`](FrontRing::push_requests_and_check_notify) and
//! kick the event channel if it says so. On an event (or when polling):
//! [`take_response`](FrontRing::take_response) until `None`, then
//! [`final_check_for_responses`](FrontRing::final_check_for_responses); if that says
//! `true`, take again, otherwise sleep until the next event.
//!
//! Backend ([`BackRing`]): on an event, [`take_request`](BackRing::take_request)
//! until `None`, [`push_response`](BackRing::push_response) for each request served
//! (a response can only go into a slot whose request has been taken), then
//! [`push_responses_and_check_notify`](BackRing::push_responses_and_check_notify)
//! (kick if `true`) and [`final_check_for_requests`](BackRing::final_check_for_requests)
//! (serve again if `true`, otherwise sleep).
//!
//! # The other side is hostile
//!
//! Each half keeps its own indices privately and only *reads* the peer's producer
//! index, which it validates before use: a request producer more than a ring ahead of
//! the responses (`RING_REQUEST_PROD_OVERFLOW`) or moving backwards, or a response
//! producer claiming more responses than requests were pushed
//! (`RING_RESPONSE_PROD_OVERFLOW`, tightened), is a [`RingError`] after which that
//! half refuses all further work (the driver tears the connection down). Messages are
//! copied out of the slot exactly once (`RING_COPY_REQUEST`/`RING_COPY_RESPONSE`), so
//! a peer rewriting a slot afterwards changes nothing. The peer's event indices only
//! steer the notify decision. Our own producer index is never read back from shared
//! memory: the notify check uses the private copy of what we last published.
//!
//! Indices are free-running `u32`s compared by wrapping subtraction, as ring.h's
//! `RING_IDX` arithmetic is.

use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::{Ordering, fence};

use crate::abi::blkif::{BlkifRequest, BlkifResponse};
use crate::abi::netif::{
    NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse, XenNetifCtrlRequest,
    XenNetifCtrlResponse,
};
use crate::shmem::SharedMemory;

/// `XEN_PAGE_SHIFT`: ring protocols always use 4 KiB pages, whatever the OS's page size.
pub const XEN_PAGE_SHIFT: u32 = 12;
/// `1 << XEN_PAGE_SHIFT`.
pub const XEN_PAGE_SIZE: usize = 1 << XEN_PAGE_SHIFT;

/// Offset of `req_prod` in the shared ring header.
pub const SRING_REQ_PROD: usize = 0;
/// Offset of `req_event` in the shared ring header.
pub const SRING_REQ_EVENT: usize = 4;
/// Offset of `rsp_prod` in the shared ring header.
pub const SRING_RSP_PROD: usize = 8;
/// Offset of `rsp_event` in the shared ring header.
pub const SRING_RSP_EVENT: usize = 12;
/// Offset of the 4-byte `pvt` union (`netif.smartpoll_active`, `tapif_user.msg`,
/// both obsolete; zeroed by `SHARED_RING_INIT`).
pub const SRING_PVT: usize = 16;
/// Offset of `__pad[44]`.
pub const SRING_PAD: usize = 20;
/// `offsetof(struct *_sring, ring)`: where the slots start.
pub const SRING_HEADER_SIZE: usize = 64;

/// A request or response that travels in a ring slot: an ABI structure with byte
/// (de)serialisation (`pod_bytes!`'s `SIZE`, `to_bytes`, `from_bytes`).
pub trait RingEntry: Copy {
    /// `sizeof` the structure.
    const SIZE: usize;
    /// Its C alignment (a slot is a union, so it rounds up to the larger one).
    const ALIGN: usize;

    /// Writes the structure's bytes at `offset` in `mem`.
    fn store<M: SharedMemory + ?Sized>(&self, mem: &M, offset: usize);

    /// Copies the structure out of `mem` at `offset` (once: the result is private).
    fn load<M: SharedMemory + ?Sized>(mem: &M, offset: usize) -> Self;
}

/// Implements [`RingEntry`] for `pod_bytes!` structures.
macro_rules! ring_entry {
    ($($t:ty),+ $(,)?) => {
        $(
            impl RingEntry for $t {
                const SIZE: usize = <$t>::SIZE;
                const ALIGN: usize = core::mem::align_of::<$t>();

                fn store<M: SharedMemory + ?Sized>(&self, mem: &M, offset: usize) {
                    mem.write_bytes(offset, &self.to_bytes());
                }

                fn load<M: SharedMemory + ?Sized>(mem: &M, offset: usize) -> Self {
                    let mut bytes = [0u8; <$t>::SIZE];
                    mem.read_bytes(offset, &mut bytes);
                    <$t>::from_bytes(&bytes)
                }
            }
        )+
    };
}

ring_entry!(
    BlkifRequest,
    BlkifResponse,
    NetifTxRequest,
    NetifTxResponse,
    NetifRxRequest,
    NetifRxResponse,
    XenNetifCtrlRequest,
    XenNetifCtrlResponse,
);

/// Size of one slot of a ring of `Req`/`Rsp`: `sizeof(union { Req; Rsp; })`.
pub const fn slot_size<Req: RingEntry, Rsp: RingEntry>() -> usize {
    let size = if Req::SIZE > Rsp::SIZE {
        Req::SIZE
    } else {
        Rsp::SIZE
    };
    let align = if Req::ALIGN > Rsp::ALIGN {
        Req::ALIGN
    } else {
        Rsp::ALIGN
    };
    size.div_ceil(align) * align
}

/// Number of slots of `slot` bytes in a ring over `bytes` bytes of shared memory:
/// `__RD32((bytes - 64) / slot)`, i.e. rounded down to a power of two; 0 if not even
/// one slot fits. Counts beyond `u32::MAX` are clamped first (so the largest ring is
/// 2^31 slots, which keeps wrapping index arithmetic unambiguous).
pub const fn ring_size(bytes: usize, slot: usize) -> u32 {
    if slot == 0 || bytes < SRING_HEADER_SIZE {
        return 0;
    }
    let count = (bytes - SRING_HEADER_SIZE) / slot;
    let count = if count > u32::MAX as usize {
        u32::MAX
    } else {
        count as u32
    };
    if count == 0 {
        0
    } else {
        1 << (31 - count.leading_zeros())
    }
}

/// Why a ring half refused to do something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The shared memory cannot hold the header and one slot.
    MemoryTooSmall {
        /// Bytes offered.
        len: usize,
        /// Bytes per slot.
        slot: usize,
    },
    /// The ring is full: every slot holds a request still awaiting its response.
    Full,
    /// There is no taken request left to answer, so no slot is free for a response.
    NoRequestToAnswer,
    /// The frontend's `req_prod` runs more than a ring ahead of the responses
    /// (`RING_REQUEST_PROD_OVERFLOW`) or went backwards; the ring is no longer served.
    RequestProducerOverflow {
        /// The `req_prod` read from the ring.
        req_prod: u32,
        /// Requests taken so far (`req_cons`).
        req_cons: u32,
        /// Responses produced so far (`rsp_prod_pvt`).
        rsp_prod: u32,
    },
    /// The backend's `rsp_prod` claims more responses than requests were pushed
    /// (`RING_RESPONSE_PROD_OVERFLOW`, tightened) or went backwards; the ring is no
    /// longer used.
    ResponseProducerOverflow {
        /// The `rsp_prod` read from the ring.
        rsp_prod: u32,
        /// Responses taken so far (`rsp_cons`).
        rsp_cons: u32,
        /// Requests published so far (`req_prod`).
        req_prod: u32,
    },
}

impl RingError {
    /// Whether the peer broke the protocol (the half has stopped for good), as opposed
    /// to a local condition such as a full ring.
    pub fn is_protocol_error(&self) -> bool {
        matches!(
            self,
            Self::RequestProducerOverflow { .. } | Self::ResponseProducerOverflow { .. }
        )
    }
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MemoryTooSmall { len, slot } => write!(
                f,
                "shared memory of {len} bytes cannot hold a ring of {slot}-byte slots"
            ),
            Self::Full => write!(f, "the ring is full"),
            Self::NoRequestToAnswer => write!(f, "no taken request is waiting for a response"),
            Self::RequestProducerOverflow {
                req_prod,
                req_cons,
                rsp_prod,
            } => write!(
                f,
                "frontend request producer {req_prod} is invalid \
                 (consumed {req_cons}, answered {rsp_prod}): ring halted"
            ),
            Self::ResponseProducerOverflow {
                rsp_prod,
                rsp_cons,
                req_prod,
            } => write!(
                f,
                "backend response producer {rsp_prod} is invalid \
                 (consumed {rsp_cons}, requests {req_prod}): ring halted"
            ),
        }
    }
}

/// Geometry shared by both halves: checks the memory and computes the ring size.
fn geometry<M: SharedMemory, Req: RingEntry, Rsp: RingEntry>(
    mem: &M,
) -> Result<(u32, usize), RingError> {
    let slot = slot_size::<Req, Rsp>();
    match ring_size(mem.len(), slot) {
        0 => Err(RingError::MemoryTooSmall {
            len: mem.len(),
            slot,
        }),
        size => Ok((size, slot)),
    }
}

/// Offset of the slot for free-running index `idx`: `ring[idx & (RING_SIZE - 1)]`.
fn slot_offset(idx: u32, size: u32, slot: usize) -> usize {
    SRING_HEADER_SIZE + (idx & (size - 1)) as usize * slot
}

/// ring.h's notify rule, shared by both push-and-check macros: notify iff the
/// consumer's event index lies in `(old, new]`, i.e.
/// `(RING_IDX)(new - event) < (RING_IDX)(new - old)`.
fn needs_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// The frontend half: pushes requests, takes responses (`*_front_ring` and the
/// `FRONT_RING_*`/`RING_*_REQUESTS`/`RING_*_RESPONSES` macros).
#[derive(Debug)]
pub struct FrontRing<M, Req, Rsp> {
    mem: M,
    size: u32,
    slot: usize,
    /// `req_prod_pvt`: requests written, published or not.
    req_prod_pvt: u32,
    /// The `req_prod` we last published (never read back from shared memory).
    req_prod: u32,
    /// `rsp_cons`: responses taken.
    rsp_cons: u32,
    /// The last `rsp_prod` read and validated.
    rsp_prod: u32,
    /// Set on a protocol error; every later call fails with it.
    error: Option<RingError>,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<M: SharedMemory, Req: RingEntry, Rsp: RingEntry> FrontRing<M, Req, Rsp> {
    /// Initialises the shared ring in `mem` (`SHARED_RING_INIT`) and the front half
    /// over it (`FRONT_RING_INIT`). The ring size follows from `mem.len()`.
    pub fn new(mem: M) -> Result<Self, RingError> {
        Self::new_at(mem, 0)
    }

    /// As [`new`](Self::new), but with every index starting at `start` instead of 0
    /// (`FRONT_RING_ATTACH` over a ring initialised to match). Any start is valid;
    /// tests use it to cross the `u32` wrap.
    pub fn new_at(mem: M, start: u32) -> Result<Self, RingError> {
        let (size, slot) = geometry::<M, Req, Rsp>(&mem)?;
        // SHARED_RING_INIT: producers at the start, events one past it (so the first
        // message on each side notifies), private union and padding zeroed. The peer
        // learns of the ring only later, through xenstore and an event, which order
        // these stores before its first look.
        mem.store_u32(SRING_REQ_PROD, start, Ordering::Relaxed);
        mem.store_u32(SRING_RSP_PROD, start, Ordering::Relaxed);
        mem.store_u32(SRING_REQ_EVENT, start.wrapping_add(1), Ordering::Relaxed);
        mem.store_u32(SRING_RSP_EVENT, start.wrapping_add(1), Ordering::Relaxed);
        mem.write_bytes(SRING_PVT, &[0; SRING_HEADER_SIZE - SRING_PVT]);
        Ok(Self {
            mem,
            size,
            slot,
            req_prod_pvt: start,
            req_prod: start,
            rsp_cons: start,
            rsp_prod: start,
            error: None,
            _entries: PhantomData,
        })
    }

    /// `RING_SIZE`: number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// `RING_FREE_REQUESTS`: requests that can be pushed before the ring is full.
    pub fn free_requests(&self) -> u32 {
        // push_request keeps req_prod_pvt - rsp_cons <= size; saturating all the same.
        self.size
            .saturating_sub(self.req_prod_pvt.wrapping_sub(self.rsp_cons))
    }

    /// `RING_FULL`.
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// `req_prod_pvt`: the index the next pushed request will get (its slot is
    /// `index & (size - 1)`; netfront's receive ids are derived from it).
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// `rsp_cons`: the index of the next response to take.
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// The protocol error that stopped this half, if any.
    pub fn error(&self) -> Option<RingError> {
        self.error
    }

    /// The shared memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Gives the shared memory back (a driver tearing down frees the ring page).
    pub fn into_memory(self) -> M {
        self.mem
    }

    /// Writes `req` into the next free slot (`RING_GET_REQUEST(req_prod_pvt++)`). The
    /// backend sees it only after
    /// [`push_requests_and_check_notify`](Self::push_requests_and_check_notify).
    pub fn push_request(&mut self, req: &Req) -> Result<(), RingError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.is_full() {
            return Err(RingError::Full);
        }
        req.store(
            &self.mem,
            slot_offset(self.req_prod_pvt, self.size, self.slot),
        );
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes the pushed requests and says
    /// whether the backend asked to be notified of them (then send the event).
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let old = self.req_prod;
        let new = self.req_prod_pvt;
        if old == new || self.error.is_some() {
            return false;
        }
        // ring.h: "xen_wmb(); /* back sees requests /before/ updated producer index */"
        fence(Ordering::Release);
        self.mem.store_u32(SRING_REQ_PROD, new, Ordering::Relaxed);
        self.req_prod = new;
        // ring.h: "xen_mb(); /* back sees new requests /before/ we check req_event */".
        // A full barrier: this store-then-load pairs with the store of req_event and
        // load of req_prod in the backend's RING_FINAL_CHECK_FOR_REQUESTS, so at
        // least one of the two sides sees the other's write.
        fence(Ordering::SeqCst);
        let event = self.mem.load_u32(SRING_REQ_EVENT, Ordering::Relaxed);
        needs_notify(old, new, event)
    }

    /// Reads and validates `rsp_prod`; returns the number of responses not yet taken.
    fn refresh_responses(&mut self) -> Result<u32, RingError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let prod = self.mem.load_u32(SRING_RSP_PROD, Ordering::Relaxed);
        // The consumer's half of the producer rule: read the producer index, then
        // rmb() before reading the slots it covers (Linux blkfront: "rmb(); /* Ensure
        // we see queued responses up to 'rp'. */").
        fence(Ordering::Acquire);
        let unconsumed = prod.wrapping_sub(self.rsp_cons);
        let seen = self.rsp_prod.wrapping_sub(self.rsp_cons);
        let outstanding = self.req_prod.wrapping_sub(self.rsp_cons);
        // RING_RESPONSE_PROD_OVERFLOW ("Can there be this many responses?") checks
        // against the ring size; a backend can only answer requests it was shown, so
        // check against those. Going backwards (below what was already validated) is
        // equally impossible for an honest backend.
        if unconsumed > outstanding || unconsumed < seen {
            let e = RingError::ResponseProducerOverflow {
                rsp_prod: prod,
                rsp_cons: self.rsp_cons,
                req_prod: self.req_prod,
            };
            self.error = Some(e);
            return Err(e);
        }
        self.rsp_prod = prod;
        Ok(unconsumed)
    }

    /// `RING_HAS_UNCONSUMED_RESPONSES`: responses published but not yet taken.
    pub fn unconsumed_responses(&mut self) -> Result<u32, RingError> {
        self.refresh_responses()
    }

    /// Takes the next response, copied out of its slot once (`RING_COPY_RESPONSE`);
    /// `None` when there is none. The caller checks the response's id against the
    /// requests it has in flight.
    pub fn take_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.rsp_cons == self.rsp_prod && self.refresh_responses()? == 0 {
            return Ok(None);
        }
        let rsp = Rsp::load(&self.mem, slot_offset(self.rsp_cons, self.size, self.slot));
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: before sleeping, asks to be notified of the
    /// very next response and says whether responses are already waiting (then take
    /// them instead of sleeping).
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.refresh_responses()? > 0 {
            return Ok(true);
        }
        self.mem.store_u32(
            SRING_RSP_EVENT,
            self.rsp_cons.wrapping_add(1),
            Ordering::Relaxed,
        );
        // ring.h RING_FINAL_CHECK_FOR_RESPONSES: "rsp_event = rsp_cons + 1; xen_mb();"
        // then check again: the backend either sees the new rsp_event when it pushes
        // (and notifies), or its response is visible to the re-check below.
        fence(Ordering::SeqCst);
        Ok(self.refresh_responses()? > 0)
    }
}

/// The backend half: takes requests, pushes responses (`*_back_ring` and the
/// `BACK_RING_*`/`RING_*_REQUESTS`/`RING_*_RESPONSES` macros).
#[derive(Debug)]
pub struct BackRing<M, Req, Rsp> {
    mem: M,
    size: u32,
    slot: usize,
    /// `rsp_prod_pvt`: responses written, published or not.
    rsp_prod_pvt: u32,
    /// The `rsp_prod` we last published (never read back from shared memory).
    rsp_prod: u32,
    /// `req_cons`: requests taken.
    req_cons: u32,
    /// The last `req_prod` read and validated.
    req_prod: u32,
    /// Set on a protocol error; every later call fails with it.
    error: Option<RingError>,
    _entries: PhantomData<fn(Rsp) -> Req>,
}

impl<M: SharedMemory, Req: RingEntry, Rsp: RingEntry> BackRing<M, Req, Rsp> {
    /// Attaches to a ring the frontend initialised in `mem` (`BACK_RING_ATTACH` at the
    /// published `rsp_prod`, which is `BACK_RING_INIT` on a fresh ring). Requests
    /// published but not answered yet are served. Fails if those are more than a ring.
    pub fn attach(mem: M) -> Result<Self, RingError> {
        let (size, slot) = geometry::<M, Req, Rsp>(&mem)?;
        let rsp_prod = mem.load_u32(SRING_RSP_PROD, Ordering::Relaxed);
        let mut ring = Self {
            mem,
            size,
            slot,
            rsp_prod_pvt: rsp_prod,
            rsp_prod,
            req_cons: rsp_prod,
            req_prod: rsp_prod,
            error: None,
            _entries: PhantomData,
        };
        ring.refresh_requests()?;
        Ok(ring)
    }

    /// `RING_SIZE`: number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// `req_cons`: the index of the next request to take.
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// `rsp_prod_pvt`: the index the next pushed response will get.
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Requests taken but not yet answered by [`push_response`](Self::push_response).
    pub fn unanswered_requests(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// The protocol error that stopped this half, if any.
    pub fn error(&self) -> Option<RingError> {
        self.error
    }

    /// The shared memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Reads and validates `req_prod`; returns the number of requests not yet taken.
    fn refresh_requests(&mut self) -> Result<u32, RingError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let prod = self.mem.load_u32(SRING_REQ_PROD, Ordering::Relaxed);
        // The consumer's half of the producer rule: read the producer index, then
        // rmb() before reading the slots it covers (blkback: "rmb(); /* Ensure we see
        // queued requests up to 'rp'. */").
        fence(Ordering::Acquire);
        let unconsumed = prod.wrapping_sub(self.req_cons);
        let seen = self.req_prod.wrapping_sub(self.req_cons);
        // Slots not holding a taken-but-unanswered request.
        let room = self.size.saturating_sub(self.unanswered_requests());
        // RING_REQUEST_PROD_OVERFLOW: "(prod - rsp_prod_pvt) > RING_SIZE" ("Can there
        // be this many requests?"), written as unconsumed > room so that a producer
        // that moved backwards (a huge wrapped difference) fails too.
        if unconsumed > room || unconsumed < seen {
            let e = RingError::RequestProducerOverflow {
                req_prod: prod,
                req_cons: self.req_cons,
                rsp_prod: self.rsp_prod_pvt,
            };
            self.error = Some(e);
            return Err(e);
        }
        self.req_prod = prod;
        Ok(unconsumed)
    }

    /// `RING_HAS_UNCONSUMED_REQUESTS`: requests published but not yet taken.
    pub fn unconsumed_requests(&mut self) -> Result<u32, RingError> {
        self.refresh_requests()
    }

    /// Takes the next request, copied out of its slot once (`RING_COPY_REQUEST`), so
    /// that everything the backend checks and uses is this private copy; `None` when
    /// there is none.
    pub fn take_request(&mut self) -> Result<Option<Req>, RingError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        // The validated req_prod never lets req_cons run a ring ahead of rsp_prod_pvt,
        // so RING_REQUEST_CONS_OVERFLOW cannot hold here.
        if self.req_cons == self.req_prod && self.refresh_requests()? == 0 {
            return Ok(None);
        }
        let req = Req::load(&self.mem, slot_offset(self.req_cons, self.size, self.slot));
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Writes `rsp` into the next response slot (`RING_GET_RESPONSE(rsp_prod_pvt++)`),
    /// which is the slot of a request already taken. The frontend sees it only after
    /// [`push_responses_and_check_notify`](Self::push_responses_and_check_notify).
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.unanswered_requests() == 0 {
            return Err(RingError::NoRequestToAnswer);
        }
        rsp.store(
            &self.mem,
            slot_offset(self.rsp_prod_pvt, self.size, self.slot),
        );
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publishes the pushed responses and says
    /// whether the frontend asked to be notified of them (then send the event).
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let old = self.rsp_prod;
        let new = self.rsp_prod_pvt;
        if old == new || self.error.is_some() {
            return false;
        }
        // ring.h: "xen_wmb(); /* front sees resps /before/ updated producer index */"
        fence(Ordering::Release);
        self.mem.store_u32(SRING_RSP_PROD, new, Ordering::Relaxed);
        self.rsp_prod = new;
        // ring.h: "xen_mb(); /* front sees new resps /before/ we check rsp_event */".
        // Full barrier, pairing with the frontend's RING_FINAL_CHECK_FOR_RESPONSES.
        fence(Ordering::SeqCst);
        let event = self.mem.load_u32(SRING_RSP_EVENT, Ordering::Relaxed);
        needs_notify(old, new, event)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: before sleeping, asks to be notified of the
    /// very next request and says whether requests are already waiting (then serve
    /// them instead of sleeping).
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.refresh_requests()? > 0 {
            return Ok(true);
        }
        self.mem.store_u32(
            SRING_REQ_EVENT,
            self.req_cons.wrapping_add(1),
            Ordering::Relaxed,
        );
        // ring.h RING_FINAL_CHECK_FOR_REQUESTS: "req_event = req_cons + 1; xen_mb();"
        // then check again: the frontend either sees the new req_event when it pushes
        // (and notifies), or its request is visible to the re-check below.
        fence(Ordering::SeqCst);
        Ok(self.refresh_requests()? > 0)
    }
}

/// Front half of a blkif ring (`blkif_front_ring_t`).
pub type BlkifFrontRing<M> = FrontRing<M, BlkifRequest, BlkifResponse>;
/// Back half of a blkif ring (`blkif_back_ring_t`).
pub type BlkifBackRing<M> = BackRing<M, BlkifRequest, BlkifResponse>;
/// Front half of a netif transmit ring (`netif_tx_front_ring_t`).
pub type NetifTxFrontRing<M> = FrontRing<M, NetifTxRequest, NetifTxResponse>;
/// Back half of a netif transmit ring (`netif_tx_back_ring_t`).
pub type NetifTxBackRing<M> = BackRing<M, NetifTxRequest, NetifTxResponse>;
/// Front half of a netif receive ring (`netif_rx_front_ring_t`).
pub type NetifRxFrontRing<M> = FrontRing<M, NetifRxRequest, NetifRxResponse>;
/// Back half of a netif receive ring (`netif_rx_back_ring_t`).
pub type NetifRxBackRing<M> = BackRing<M, NetifRxRequest, NetifRxResponse>;
/// Front half of a netif control ring (`xen_netif_ctrl_front_ring_t`).
pub type NetifCtrlFrontRing<M> = FrontRing<M, XenNetifCtrlRequest, XenNetifCtrlResponse>;
/// Back half of a netif control ring (`xen_netif_ctrl_back_ring_t`).
pub type NetifCtrlBackRing<M> = BackRing<M, XenNetifCtrlRequest, XenNetifCtrlResponse>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::blkif::{BLKIF_OP_READ, BLKIF_RSP_OKAY, BlkifRequestSegment};
    use crate::shmem::HeapSharedMemory;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    /// A small test message: a sequence number and a payload word.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Msg {
        seq: u32,
        word: u64,
    }

    impl RingEntry for Msg {
        const SIZE: usize = 12;
        const ALIGN: usize = 4;
        fn store<M: SharedMemory + ?Sized>(&self, mem: &M, offset: usize) {
            let mut b = [0u8; 12];
            b[..4].copy_from_slice(&self.seq.to_le_bytes());
            b[4..].copy_from_slice(&self.word.to_le_bytes());
            mem.write_bytes(offset, &b);
        }
        fn load<M: SharedMemory + ?Sized>(mem: &M, offset: usize) -> Self {
            let mut b = [0u8; 12];
            mem.read_bytes(offset, &mut b);
            let (seq, word) = b.split_at(4);
            Self {
                seq: u32::from_le_bytes(seq.try_into().unwrap()),
                word: u64::from_le_bytes(word.try_into().unwrap()),
            }
        }
    }

    /// A 4-byte response, so slots are 12 bytes: 336 fit a page, rounded to 256.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Ack(u32);

    impl RingEntry for Ack {
        const SIZE: usize = 4;
        const ALIGN: usize = 4;
        fn store<M: SharedMemory + ?Sized>(&self, mem: &M, offset: usize) {
            mem.write_bytes(offset, &self.0.to_le_bytes());
        }
        fn load<M: SharedMemory + ?Sized>(mem: &M, offset: usize) -> Self {
            let mut b = [0u8; 4];
            mem.read_bytes(offset, &mut b);
            Self(u32::from_le_bytes(b))
        }
    }

    type Front<'a> = FrontRing<&'a HeapSharedMemory, Msg, Ack>;
    type Back<'a> = BackRing<&'a HeapSharedMemory, Msg, Ack>;

    fn msg(seq: u32) -> Msg {
        Msg {
            seq,
            word: u64::from(seq).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        }
    }

    fn ack(m: &Msg) -> Ack {
        Ack(m.seq ^ 0xa5a5_a5a5)
    }

    fn pair(mem: &HeapSharedMemory, start: u32) -> (Front<'_>, Back<'_>) {
        let front = Front::new_at(mem, start).unwrap();
        let back = Back::attach(mem).unwrap();
        (front, back)
    }

    #[test]
    fn sizes_follow_ring_h() {
        assert_eq!(slot_size::<Msg, Ack>(), 12);
        assert_eq!(ring_size(4096, 12), 256);
        assert_eq!(ring_size(64 + 12, 12), 1);
        assert_eq!(ring_size(64 + 11, 12), 0);
        assert_eq!(ring_size(10, 12), 0);
        assert_eq!(ring_size(4096, 0), 0);
        assert_eq!(ring_size(usize::MAX, 1), 1 << 31);
        // __RD32 on a handful of values.
        for (count, rounded) in [(1, 1), (2, 2), (3, 2), (36, 32), (255, 128), (256, 256)] {
            assert_eq!(ring_size(64 + count * 8, 8), rounded, "count {count}");
        }
    }

    #[test]
    fn blkif_and_netif_ring_sizes_single_and_multi_page() {
        // blkif: 112-byte slots; 36 fit a page -> 32 (blkfront's BLK_RING_SIZE).
        assert_eq!(slot_size::<BlkifRequest, BlkifResponse>(), 112);
        // netif: tx slots are 12 bytes, rx slots 8, ctrl slots 16.
        assert_eq!(slot_size::<NetifTxRequest, NetifTxResponse>(), 12);
        assert_eq!(slot_size::<NetifRxRequest, NetifRxResponse>(), 8);
        assert_eq!(slot_size::<XenNetifCtrlRequest, XenNetifCtrlResponse>(), 16);
        for (pages, blk, tx, rx, ctrl) in [
            (1, 32, 256, 256, 128),
            (2, 64, 512, 512, 256),
            (4, 128, 1024, 1024, 512),
            (8, 256, 2048, 2048, 1024),
            (16, 512, 4096, 4096, 2048),
        ] {
            let mem = HeapSharedMemory::new(pages * XEN_PAGE_SIZE);
            let m = &mem;
            assert_eq!(BlkifFrontRing::new(m).unwrap().size(), blk, "{pages}");
            assert_eq!(BlkifBackRing::attach(m).unwrap().size(), blk, "{pages}");
            assert_eq!(NetifTxFrontRing::new(m).unwrap().size(), tx, "{pages}");
            assert_eq!(NetifRxFrontRing::new(m).unwrap().size(), rx, "{pages}");
            assert_eq!(NetifCtrlFrontRing::new(m).unwrap().size(), ctrl, "{pages}");
        }
        let tiny = HeapSharedMemory::new(64 + 111);
        assert_eq!(
            BlkifFrontRing::new(&tiny).unwrap_err(),
            RingError::MemoryTooSmall {
                len: 175,
                slot: 112
            }
        );
    }

    #[test]
    fn shared_ring_init_layout() {
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        mem.write_bytes(0, &[0xff; 64]);
        let _front = Front::new(&mem).unwrap();
        assert_eq!(mem.load_u32(SRING_REQ_PROD, Ordering::Relaxed), 0);
        assert_eq!(mem.load_u32(SRING_REQ_EVENT, Ordering::Relaxed), 1);
        assert_eq!(mem.load_u32(SRING_RSP_PROD, Ordering::Relaxed), 0);
        assert_eq!(mem.load_u32(SRING_RSP_EVENT, Ordering::Relaxed), 1);
        let mut rest = [0xffu8; 48];
        mem.read_bytes(SRING_PVT, &mut rest);
        assert_eq!(rest, [0; 48]);
    }

    #[test]
    fn blkif_requests_round_trip_through_a_two_page_ring() {
        let mem = HeapSharedMemory::new(2 * XEN_PAGE_SIZE);
        let mut front = BlkifFrontRing::new(&mem).unwrap();
        let mut back = BlkifBackRing::attach(&mem).unwrap();
        for round in 0..5u64 {
            for i in 0..64u64 {
                let mut req = BlkifRequest {
                    operation: BLKIF_OP_READ,
                    nr_segments: 1,
                    handle: 0x300,
                    id: i,
                    sector_number: round * 1000 + i * 8,
                    ..Default::default()
                };
                req.seg[0] = BlkifRequestSegment::new(i as u32 + 8, 0, 7);
                front.push_request(&req).unwrap();
            }
            assert_eq!(
                front.push_request(&BlkifRequest::default()),
                Err(RingError::Full)
            );
            front.push_requests_and_check_notify();
            for i in 0..64u64 {
                let req = back.take_request().unwrap().unwrap();
                assert_eq!((req.id, req.sector_number), (i, round * 1000 + i * 8));
                assert_eq!(req.seg[0], BlkifRequestSegment::new(i as u32 + 8, 0, 7));
                back.push_response(&BlkifResponse::new(req.id, req.operation, BLKIF_RSP_OKAY))
                    .unwrap();
            }
            assert_eq!(back.take_request(), Ok(None));
            back.push_responses_and_check_notify();
            for i in 0..64u64 {
                let rsp = front.take_response().unwrap().unwrap();
                assert_eq!((rsp.id, rsp.operation, rsp.status), (i, BLKIF_OP_READ, 0));
            }
            assert_eq!(front.take_response(), Ok(None));
        }
    }

    /// Exchanges `count` messages in batches of varying size, checking order and
    /// content on both sides.
    fn exchange(front: &mut Front<'_>, back: &mut Back<'_>, count: u32) {
        let (mut sent, mut served, mut received) = (0u32, 0u32, 0u32);
        let mut batch = 1;
        while received < count {
            for _ in 0..batch {
                if sent == count || front.is_full() {
                    break;
                }
                front.push_request(&msg(sent)).unwrap();
                sent += 1;
            }
            front.push_requests_and_check_notify();
            while let Some(m) = back.take_request().unwrap() {
                assert_eq!(m, msg(served));
                back.push_response(&ack(&m)).unwrap();
                served += 1;
            }
            back.push_responses_and_check_notify();
            while let Some(a) = front.take_response().unwrap() {
                assert_eq!(a, ack(&msg(received)));
                received += 1;
            }
            batch = batch % 300 + 7;
        }
        assert_eq!((sent, served, received), (count, count, count));
        assert_eq!(front.free_requests(), front.size());
    }

    #[test]
    fn many_messages_in_batches() {
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let (mut front, mut back) = pair(&mem, 0);
        exchange(&mut front, &mut back, 20_000);
        assert_eq!(front.req_prod_pvt(), 20_000);
        assert_eq!(back.req_cons(), 20_000);
    }

    #[test]
    fn indices_wrap_around_u32_max() {
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let start = u32::MAX - 1000;
        let (mut front, mut back) = pair(&mem, start);
        assert_eq!(back.req_cons(), start);
        exchange(&mut front, &mut back, 5_000);
        assert_eq!(front.rsp_cons(), start.wrapping_add(5_000));
        assert!(front.rsp_cons() < start);
        assert_eq!(
            mem.load_u32(SRING_RSP_PROD, Ordering::Relaxed),
            start.wrapping_add(5_000)
        );
        // The event indices wrap too: the notify rules still hold across the wrap.
        let (mut front, mut back) = pair(&mem, u32::MAX);
        assert_eq!(mem.load_u32(SRING_REQ_EVENT, Ordering::Relaxed), 0);
        front.push_request(&msg(0)).unwrap();
        assert!(front.push_requests_and_check_notify());
        assert!(back.take_request().unwrap().is_some());
        back.push_response(&Ack(0)).unwrap();
        assert!(back.push_responses_and_check_notify());
    }

    #[test]
    fn request_notifications_follow_req_event() {
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let (mut front, mut back) = pair(&mem, 0);
        // Nothing pushed: nothing to notify.
        assert!(!front.push_requests_and_check_notify());
        // SHARED_RING_INIT set req_event = 1: the first request notifies...
        front.push_request(&msg(0)).unwrap();
        assert!(front.push_requests_and_check_notify());
        // ...later ones do not, until the backend asks again.
        front.push_request(&msg(1)).unwrap();
        front.push_request(&msg(2)).unwrap();
        assert!(!front.push_requests_and_check_notify());
        // The backend drains and re-arms: req_event = req_cons + 1 = 4.
        while back.take_request().unwrap().is_some() {}
        assert!(!back.final_check_for_requests().unwrap());
        assert_eq!(mem.load_u32(SRING_REQ_EVENT, Ordering::Relaxed), 4);
        // A batch of three crossing req_event notifies once.
        for i in 3..6 {
            front.push_request(&msg(i)).unwrap();
        }
        assert!(front.push_requests_and_check_notify());
        // A backend that is still working (req_event not re-armed) is not disturbed.
        front.push_request(&msg(6)).unwrap();
        assert!(!front.push_requests_and_check_notify());
        // Final check with requests waiting says "work to do" and leaves req_event.
        assert!(back.final_check_for_requests().unwrap());
        assert_eq!(mem.load_u32(SRING_REQ_EVENT, Ordering::Relaxed), 4);
        // A backend that set req_event further ahead (batching) is notified only when
        // the producer crosses it: exactly (new - event) < (new - old).
        mem.store_u32(SRING_REQ_EVENT, 10, Ordering::Relaxed);
        front.push_request(&msg(7)).unwrap();
        front.push_request(&msg(8)).unwrap();
        assert!(!front.push_requests_and_check_notify()); // prod 7 -> 9, event 10
        front.push_request(&msg(9)).unwrap();
        assert!(front.push_requests_and_check_notify()); // prod 9 -> 10, event 10
        front.push_request(&msg(10)).unwrap();
        assert!(!front.push_requests_and_check_notify()); // prod 10 -> 11, event 10
    }

    #[test]
    fn response_notifications_follow_rsp_event() {
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let (mut front, mut back) = pair(&mem, 0);
        for i in 0..8 {
            front.push_request(&msg(i)).unwrap();
        }
        front.push_requests_and_check_notify();
        for _ in 0..8 {
            back.take_request().unwrap().unwrap();
        }
        // rsp_event starts at 1: a batch of three responses notifies once.
        for i in 0..3 {
            back.push_response(&Ack(i)).unwrap();
        }
        assert!(back.push_responses_and_check_notify());
        // The frontend has not re-armed: no more notifications (batching).
        back.push_response(&Ack(3)).unwrap();
        assert!(!back.push_responses_and_check_notify());
        // Frontend takes everything and re-arms: rsp_event = rsp_cons + 1 = 5.
        while front.take_response().unwrap().is_some() {}
        assert!(!front.final_check_for_responses().unwrap());
        assert_eq!(mem.load_u32(SRING_RSP_EVENT, Ordering::Relaxed), 5);
        back.push_response(&Ack(4)).unwrap();
        assert!(back.push_responses_and_check_notify());
        // A response arriving between take and final check is caught by the check,
        // which then leaves rsp_event alone.
        back.push_response(&Ack(5)).unwrap();
        assert!(!back.push_responses_and_check_notify());
        assert!(front.final_check_for_responses().unwrap());
        assert_eq!(mem.load_u32(SRING_RSP_EVENT, Ordering::Relaxed), 5);
        // The backend cannot answer more requests than it took.
        back.push_response(&Ack(6)).unwrap();
        back.push_response(&Ack(7)).unwrap();
        assert_eq!(
            back.push_response(&Ack(8)),
            Err(RingError::NoRequestToAnswer)
        );
        assert_eq!(back.unanswered_requests(), 0);
    }

    #[test]
    fn hostile_frontend_request_producer_halts_the_backend() {
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let (mut front, mut back) = pair(&mem, 0);
        for i in 0..4 {
            front.push_request(&msg(i)).unwrap();
        }
        front.push_requests_and_check_notify();
        back.take_request().unwrap().unwrap();
        // Exactly a full ring of unanswered requests is legal (1 taken + 255).
        mem.store_u32(SRING_REQ_PROD, 256, Ordering::Relaxed);
        assert_eq!(back.unconsumed_requests(), Ok(255));
        // One more is RING_REQUEST_PROD_OVERFLOW.
        mem.store_u32(SRING_REQ_PROD, 257, Ordering::Relaxed);
        let err = RingError::RequestProducerOverflow {
            req_prod: 257,
            req_cons: 1,
            rsp_prod: 0,
        };
        assert_eq!(back.unconsumed_requests(), Err(err));
        assert_eq!(back.take_request(), Err(err));
        assert!(err.is_protocol_error());
        // The backend stays halted even if the index is repaired.
        mem.store_u32(SRING_REQ_PROD, 4, Ordering::Relaxed);
        assert_eq!(back.take_request(), Err(err));
        assert_eq!(back.push_response(&Ack(0)), Err(err));
        assert_eq!(back.final_check_for_requests(), Err(err));
        assert!(!back.push_responses_and_check_notify());
        assert_eq!(back.error(), Some(err));
    }

    #[test]
    fn hostile_frontend_cannot_move_req_prod_backwards_or_far_ahead() {
        for bad in [u32::MAX, 1, 2, 0x8000_0000, 1000] {
            let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
            let (mut front, mut back) = pair(&mem, 0);
            for i in 0..3 {
                front.push_request(&msg(i)).unwrap();
            }
            front.push_requests_and_check_notify();
            // The backend has seen req_prod = 3 and taken one request.
            back.take_request().unwrap().unwrap();
            mem.store_u32(SRING_REQ_PROD, bad, Ordering::Relaxed);
            let r = back.final_check_for_requests();
            assert!(
                matches!(r, Err(RingError::RequestProducerOverflow { .. })),
                "req_prod {bad}: {r:?}"
            );
        }
        // Attaching to a ring whose producer is already more than a ring ahead fails.
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let _front = Front::new(&mem).unwrap();
        mem.store_u32(SRING_REQ_PROD, 257, Ordering::Relaxed);
        assert!(matches!(
            Back::attach(&mem),
            Err(RingError::RequestProducerOverflow { req_prod: 257, .. })
        ));
    }

    #[test]
    fn backend_copies_each_request_once() {
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let (mut front, mut back) = pair(&mem, 0);
        front.push_request(&msg(1)).unwrap();
        front.push_requests_and_check_notify();
        let taken = back.take_request().unwrap().unwrap();
        // The frontend rewrites the slot after the copy: the copy does not change.
        mem.write_bytes(SRING_HEADER_SIZE, &[0xee; 12]);
        assert_eq!(taken, msg(1));
        assert_eq!(back.take_request(), Ok(None));
    }

    #[test]
    fn hostile_backend_response_producer_halts_the_frontend() {
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let (mut front, _back) = pair(&mem, 0);
        for i in 0..3 {
            front.push_request(&msg(i)).unwrap();
        }
        // Pushed privately but not published: the backend may not answer these.
        mem.store_u32(SRING_RSP_PROD, 1, Ordering::Relaxed);
        let err = RingError::ResponseProducerOverflow {
            rsp_prod: 1,
            rsp_cons: 0,
            req_prod: 0,
        };
        assert_eq!(front.take_response(), Err(err));
        assert_eq!(front.push_request(&msg(3)), Err(err));
        assert!(!front.push_requests_and_check_notify());
        assert_eq!(front.final_check_for_responses(), Err(err));

        // Published three; the backend claims four, or a whole ring.
        for bad in [4, 256, 257, u32::MAX] {
            let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
            let (mut front, _back) = pair(&mem, 0);
            for i in 0..3 {
                front.push_request(&msg(i)).unwrap();
            }
            front.push_requests_and_check_notify();
            mem.store_u32(SRING_RSP_PROD, bad, Ordering::Relaxed);
            assert!(matches!(
                front.final_check_for_responses(),
                Err(RingError::ResponseProducerOverflow { .. })
            ));
        }

        // A response producer that goes backwards after being seen.
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let (mut front, _) = pair(&mem, 0);
        for i in 0..3 {
            front.push_request(&msg(i)).unwrap();
        }
        front.push_requests_and_check_notify();
        mem.store_u32(SRING_RSP_PROD, 3, Ordering::Relaxed);
        assert!(front.take_response().unwrap().is_some());
        assert_eq!(front.unconsumed_responses(), Ok(2));
        mem.store_u32(SRING_RSP_PROD, 2, Ordering::Relaxed);
        assert!(matches!(
            front.unconsumed_responses(),
            Err(RingError::ResponseProducerOverflow { rsp_prod: 2, .. })
        ));

        // The honest case next to it: exactly as many responses as requests is fine.
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let (mut front, mut back) = pair(&mem, 0);
        front.push_request(&msg(0)).unwrap();
        front.push_requests_and_check_notify();
        back.take_request().unwrap().unwrap();
        back.push_response(&Ack(0)).unwrap();
        back.push_responses_and_check_notify();
        assert_eq!(front.take_response(), Ok(Some(Ack(0))));
    }

    #[test]
    fn hostile_event_indices_only_change_the_notify_answer() {
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let (mut front, mut back) = pair(&mem, 0);
        for event in [0, 1, 2, u32::MAX, 0x8000_0000] {
            mem.store_u32(SRING_REQ_EVENT, event, Ordering::Relaxed);
            mem.store_u32(SRING_RSP_EVENT, event, Ordering::Relaxed);
            front.push_request(&msg(0)).unwrap();
            let _ = front.push_requests_and_check_notify();
            let m = back.take_request().unwrap().unwrap();
            back.push_response(&ack(&m)).unwrap();
            let _ = back.push_responses_and_check_notify();
            assert_eq!(front.take_response(), Ok(Some(ack(&m))));
        }
    }

    /// Waits for `flag` (an event channel's pending bit), clearing it; fails the test
    /// after a generous deadline instead of hanging on a lost notification.
    fn wait_for_event(flag: &AtomicBool, deadline: Instant, who: &str) {
        let mut spins = 0u32;
        while !flag.swap(false, Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "{who}: lost notification");
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Front and back on separate threads, each sleeping on its "event channel" and
    /// woken only when the other side's push-and-check says so: no message may be
    /// lost, duplicated or reordered, and no notification may be missed.
    fn two_threads(start: u32, count: u32) {
        let mem = HeapSharedMemory::new(XEN_PAGE_SIZE);
        let (mut front, mut back) = pair(&mem, start);
        let to_back = AtomicBool::new(false);
        let to_front = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(120);
        let (notifies_to_back, notifies_to_front) = std::thread::scope(|s| {
            let backend = s.spawn(|| {
                let mut served = 0u32;
                let mut notifies = 0u32;
                while served < count {
                    while let Some(m) = back.take_request().unwrap() {
                        assert_eq!(m, msg(served));
                        back.push_response(&ack(&m)).unwrap();
                        served += 1;
                    }
                    if back.push_responses_and_check_notify() {
                        notifies += 1;
                        to_front.store(true, Ordering::SeqCst);
                    }
                    if served == count || back.final_check_for_requests().unwrap() {
                        continue;
                    }
                    wait_for_event(&to_back, deadline, "backend");
                }
                assert_eq!(back.take_request(), Ok(None));
                notifies
            });
            let mut sent = 0u32;
            let mut received = 0u32;
            let mut notifies = 0u32;
            while received < count {
                while sent < count && !front.is_full() {
                    front.push_request(&msg(sent)).unwrap();
                    sent += 1;
                }
                if front.push_requests_and_check_notify() {
                    notifies += 1;
                    to_back.store(true, Ordering::SeqCst);
                }
                while let Some(a) = front.take_response().unwrap() {
                    assert_eq!(a, ack(&msg(received)));
                    received += 1;
                }
                if received == count
                    || (sent < count && !front.is_full())
                    || front.final_check_for_responses().unwrap()
                {
                    continue;
                }
                wait_for_event(&to_front, deadline, "frontend");
            }
            (notifies, backend.join().unwrap())
        });
        assert_eq!(front.free_requests(), front.size());
        assert_eq!(front.rsp_cons(), start.wrapping_add(count));
        // Batching worked: far fewer events than messages in each direction.
        assert!(notifies_to_back <= count && notifies_to_front <= count);
        assert!(notifies_to_back > 0 && notifies_to_front > 0);
    }

    #[test]
    fn two_threads_exchange_100k_messages() {
        two_threads(0, 100_000);
    }

    #[test]
    fn two_threads_across_the_index_wrap() {
        two_threads(u32::MAX - 30_000, 60_000);
    }
}
