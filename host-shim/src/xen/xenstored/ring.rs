//! Serving one domain's xenstore ring page (`struct xenstore_domain_interface` of
//! `xen/include/public/io/xs_wire.h`; `docs/misc/xenstore-ring.txt`), with the
//! discipline of C xenstored's `readchn()` / `writechn()` / `handle_input()`
//! (`tools/xenstored/domain.c`, `core.c`):
//!
//! - Indices run free and are masked; the daemon keeps its own copies of the indices it
//!   produces (`req_cons`, `rsp_prod`) and only reads the guest's (`req_prod`,
//!   `rsp_cons`), each once per step, before the data (acquire).
//! - A guest index more than a ring's size away from ours is `XENSTORE_ERROR_RINGIDX`;
//!   a header announcing more than `XENSTORE_PAYLOAD_MAX` bytes is
//!   `XENSTORE_ERROR_PROTO`. Either way the error is written to the page's `error`
//!   field and the ring is no longer served (xenstored's `ignore_connection()`).
//! - Request bytes are copied out of the ring once, into a private buffer, as they
//!   arrive: a message may be bigger than the ring, and may arrive in pieces (a header
//!   without its payload yet is kept until the rest comes).
//! - Replies and events go into `rsp` as space allows; the rest stays queued in
//!   [`Xenstored`]. Data is written before the index that publishes it (release).
//! - While the domain's queued output is over its bound, its requests are not read
//!   ([`Xenstored::can_accept_request`]).

use core::mem::offset_of;
use core::sync::atomic::{Ordering, fence};

use pv_drivers::abi::xs_wire::{
    XENSTORE_CONNECTED, XENSTORE_ERROR_COMM, XENSTORE_ERROR_NONE, XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX, XENSTORE_PAYLOAD_MAX, XENSTORE_RING_SIZE, XenstoreDomainInterface,
    XsdSockmsg, mask_xenstore_idx,
};
use pv_drivers::shmem::{HeapSharedMemory, SharedMemory};

use super::{SERVER_FEATURES, Xenstored};

const REQ: usize = offset_of!(XenstoreDomainInterface, req);
const RSP: usize = offset_of!(XenstoreDomainInterface, rsp);
const REQ_CONS: usize = offset_of!(XenstoreDomainInterface, req_cons);
const REQ_PROD: usize = offset_of!(XenstoreDomainInterface, req_prod);
const RSP_CONS: usize = offset_of!(XenstoreDomainInterface, rsp_cons);
const RSP_PROD: usize = offset_of!(XenstoreDomainInterface, rsp_prod);
const SERVER_FEATURES_OFF: usize = offset_of!(XenstoreDomainInterface, server_features);
const CONNECTION: usize = offset_of!(XenstoreDomainInterface, connection);
const ERROR: usize = offset_of!(XenstoreDomainInterface, error);

/// Bytes of a message header.
const HEADER: usize = XsdSockmsg::SIZE;

/// Requests handled per [`RingServer::pump`] before it returns with
/// [`PumpResult::more`], so that a guest feeding requests as fast as they are served
/// cannot hold the caller's thread for ever.
pub const MAX_REQUESTS_PER_PUMP: usize = 256;

/// What one [`RingServer::pump`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PumpResult {
    /// Request bytes consumed from `req`.
    pub consumed: usize,
    /// Reply and event bytes written to `rsp`.
    pub produced: usize,
    /// Complete requests handled.
    pub requests: usize,
    /// The guest must be notified (bytes were consumed or produced, or the ring
    /// failed).
    pub notify: bool,
    /// The request budget ran out with requests possibly left: pump again.
    pub more: bool,
    /// The ring failed in this pump with this `XENSTORE_ERROR_*` (now in the page's
    /// `error` field).
    pub error: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not yet set up.
    Detached,
    /// Serving.
    Serving,
    /// Stopped with this `XENSTORE_ERROR_*`.
    Failed(u32),
}

/// The daemon's end of one domain's xenstore ring.
#[derive(Debug)]
pub struct RingServer {
    domid: u16,
    state: State,
    req_cons: u32,
    rsp_prod: u32,
    /// The message being received: header, then payload, as they arrive.
    input: Vec<u8>,
}

impl RingServer {
    /// The server for `domid`'s ring (which must be introduced in the [`Xenstored`]
    /// it is pumped with).
    pub fn new(domid: u16) -> Self {
        Self {
            domid,
            state: State::Detached,
            req_cons: 0,
            rsp_prod: 0,
            input: Vec::with_capacity(HEADER + XENSTORE_PAYLOAD_MAX),
        }
    }

    /// The domain served.
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// The `XENSTORE_ERROR_*` the ring was stopped with, if it was.
    pub fn error(&self) -> Option<u32> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Sets the page up as xenstored does when it introduces a domain: all four
    /// indices zero, `server_features`, `connection` = connected, no error. Call it
    /// before the guest runs; [`Self::pump`] calls it on first use otherwise. A page
    /// smaller than the interface fails the ring with `XENSTORE_ERROR_COMM`.
    pub fn attach<M: SharedMemory + ?Sized>(&mut self, mem: &M) {
        if mem.len() < XenstoreDomainInterface::SIZE {
            self.state = State::Failed(XENSTORE_ERROR_COMM);
            return;
        }
        self.req_cons = 0;
        self.rsp_prod = 0;
        self.input.clear();
        for off in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD] {
            mem.store_u32(off, 0, Ordering::Relaxed);
        }
        mem.store_u32(SERVER_FEATURES_OFF, SERVER_FEATURES, Ordering::Relaxed);
        mem.store_u32(ERROR, XENSTORE_ERROR_NONE, Ordering::Relaxed);
        // Everything above is visible before the guest can see "connected".
        fence(Ordering::Release);
        mem.store_u32(CONNECTION, XENSTORE_CONNECTED, Ordering::Relaxed);
        self.state = State::Serving;
    }

    /// Serves the ring: writes queued output, reads and handles every complete
    /// request the guest has produced (while its output is under its bound), and
    /// writes the replies. Never panics, whatever the page holds.
    pub fn pump<M: SharedMemory + ?Sized>(&mut self, store: &mut Xenstored, mem: &M) -> PumpResult {
        let mut result = PumpResult::default();
        if self.state == State::Detached {
            self.attach(mem);
        }
        if self.state != State::Serving || !store.is_connected(self.domid) {
            return result;
        }
        if let Err(e) = self.serve(store, mem, &mut result) {
            mem.store_u32(ERROR, e, Ordering::Release);
            self.state = State::Failed(e);
            self.input.clear();
            store.protocol_error(self.domid);
            result.error = Some(e);
        }
        result.notify = result.consumed > 0 || result.produced > 0 || result.error.is_some();
        result
    }

    fn serve<M: SharedMemory + ?Sized>(
        &mut self,
        store: &mut Xenstored,
        mem: &M,
        result: &mut PumpResult,
    ) -> Result<(), u32> {
        loop {
            result.produced += self.flush(store, mem)?;
            if result.requests >= MAX_REQUESTS_PER_PUMP {
                result.more = true;
                break;
            }
            if !store.can_accept_request(self.domid) {
                break;
            }
            let n = self.read(mem)?;
            if n == 0 {
                break;
            }
            result.consumed += n;
            if let Some((header, payload_len)) = self.complete() {
                // The domain is connected (checked above) and nothing in between
                // disconnects it, so this cannot fail.
                let _ = store.handle(
                    self.domid,
                    header,
                    &self.input[HEADER..HEADER + payload_len],
                );
                self.input.clear();
                result.requests += 1;
            }
        }
        result.produced += self.flush(store, mem)?;
        Ok(())
    }

    /// The header and payload length of the message in `input`, if it is complete.
    fn complete(&self) -> Option<(XsdSockmsg, usize)> {
        let header = XsdSockmsg::from_prefix(&self.input)?;
        let len = header.len as usize;
        (self.input.len() == HEADER + len).then_some((header, len))
    }

    /// Copies the next bytes of the current message out of `req`; returns how many.
    fn read<M: SharedMemory + ?Sized>(&mut self, mem: &M) -> Result<usize, u32> {
        let prod = mem.load_u32(REQ_PROD, Ordering::Acquire);
        let avail = prod.wrapping_sub(self.req_cons) as usize;
        if avail > XENSTORE_RING_SIZE {
            return Err(XENSTORE_ERROR_RINGIDX);
        }
        let want = match XsdSockmsg::from_prefix(&self.input) {
            None => HEADER - self.input.len(),
            Some(h) => HEADER + h.len as usize - self.input.len(),
        };
        let n = avail.min(want);
        if n == 0 {
            return Ok(0);
        }
        let start = mask_xenstore_idx(self.req_cons);
        let first = n.min(XENSTORE_RING_SIZE - start);
        let at = self.input.len();
        self.input.resize(at + n, 0);
        mem.read_bytes(REQ + start, &mut self.input[at..at + first]);
        mem.read_bytes(REQ, &mut self.input[at + first..]);
        self.req_cons = self.req_cons.wrapping_add(n as u32);
        // The bytes are copied before the guest may reuse their space.
        fence(Ordering::Release);
        mem.store_u32(REQ_CONS, self.req_cons, Ordering::Relaxed);
        if self.input.len() == HEADER
            && let Some(h) = XsdSockmsg::from_prefix(&self.input)
            && h.len as usize > XENSTORE_PAYLOAD_MAX
        {
            return Err(XENSTORE_ERROR_PROTO);
        }
        Ok(n)
    }

    /// Writes as much queued output as `rsp` has room for; returns how much.
    fn flush<M: SharedMemory + ?Sized>(
        &mut self,
        store: &mut Xenstored,
        mem: &M,
    ) -> Result<usize, u32> {
        if store.pending_output(self.domid) == 0 {
            return Ok(0);
        }
        let cons = mem.load_u32(RSP_CONS, Ordering::Acquire);
        let used = self.rsp_prod.wrapping_sub(cons) as usize;
        if used > XENSTORE_RING_SIZE {
            return Err(XENSTORE_ERROR_RINGIDX);
        }
        let bytes = store.take_output(self.domid, XENSTORE_RING_SIZE - used);
        if bytes.is_empty() {
            return Ok(0);
        }
        let start = mask_xenstore_idx(self.rsp_prod);
        let first = bytes.len().min(XENSTORE_RING_SIZE - start);
        mem.write_bytes(RSP + start, &bytes[..first]);
        mem.write_bytes(RSP, &bytes[first..]);
        self.rsp_prod = self.rsp_prod.wrapping_add(bytes.len() as u32);
        // The data is visible before the index that publishes it.
        fence(Ordering::Release);
        mem.store_u32(RSP_PROD, self.rsp_prod, Ordering::Relaxed);
        Ok(bytes.len())
    }
}

/// The guest's end of a xenstore ring page, over heap memory: for tests and the fuzz
/// target (the guest's real client lives in `pv_drivers`). It trusts nothing either:
/// it never reads more than the ring holds.
#[derive(Debug)]
pub struct GuestRing {
    mem: HeapSharedMemory,
    req_prod: u32,
    rsp_cons: u32,
}

impl Default for GuestRing {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestRing {
    /// A zeroed page.
    pub fn new() -> Self {
        Self {
            mem: HeapSharedMemory::new(XenstoreDomainInterface::SIZE),
            req_prod: 0,
            rsp_cons: 0,
        }
    }

    /// The page, to hand to [`RingServer::pump`].
    pub fn memory(&self) -> &HeapSharedMemory {
        &self.mem
    }

    /// Writes as much of `bytes` into `req` as fits; returns how much.
    pub fn send(&mut self, bytes: &[u8]) -> usize {
        let cons = self.mem.load_u32(REQ_CONS, Ordering::Acquire);
        let used = self.req_prod.wrapping_sub(cons) as usize;
        let n = bytes.len().min(XENSTORE_RING_SIZE.saturating_sub(used));
        for (i, &b) in bytes[..n].iter().enumerate() {
            let at = mask_xenstore_idx(self.req_prod.wrapping_add(i as u32));
            self.mem.store_u8(REQ + at, b, Ordering::Relaxed);
        }
        self.req_prod = self.req_prod.wrapping_add(n as u32);
        fence(Ordering::Release);
        self.mem
            .store_u32(REQ_PROD, self.req_prod, Ordering::Relaxed);
        n
    }

    /// Free bytes in `req`.
    pub fn request_space(&self) -> usize {
        let cons = self.mem.load_u32(REQ_CONS, Ordering::Acquire);
        XENSTORE_RING_SIZE.saturating_sub(self.req_prod.wrapping_sub(cons) as usize)
    }

    /// Reads everything available in `rsp`.
    pub fn receive(&mut self) -> Vec<u8> {
        let prod = self.mem.load_u32(RSP_PROD, Ordering::Acquire);
        let avail = (prod.wrapping_sub(self.rsp_cons) as usize).min(XENSTORE_RING_SIZE);
        let out = (0..avail)
            .map(|i| {
                let at = mask_xenstore_idx(self.rsp_cons.wrapping_add(i as u32));
                self.mem.load_u8(RSP + at, Ordering::Relaxed)
            })
            .collect();
        self.rsp_cons = self.rsp_cons.wrapping_add(avail as u32);
        fence(Ordering::Release);
        self.mem
            .store_u32(RSP_CONS, self.rsp_cons, Ordering::Relaxed);
        out
    }

    /// Overwrites `req_prod` (a hostile guest).
    pub fn set_req_prod(&mut self, value: u32) {
        self.req_prod = value;
        self.mem.store_u32(REQ_PROD, value, Ordering::Release);
    }

    /// Overwrites `rsp_cons` (a hostile guest).
    pub fn set_rsp_cons(&mut self, value: u32) {
        self.rsp_cons = value;
        self.mem.store_u32(RSP_CONS, value, Ordering::Release);
    }

    /// The page's `error` field.
    pub fn error(&self) -> u32 {
        self.mem.load_u32(ERROR, Ordering::Acquire)
    }

    /// The page's `server_features` field.
    pub fn server_features(&self) -> u32 {
        self.mem.load_u32(SERVER_FEATURES_OFF, Ordering::Acquire)
    }

    /// The page's `req_cons`.
    pub fn req_cons(&self) -> u32 {
        self.mem.load_u32(REQ_CONS, Ordering::Acquire)
    }
}
