//! The client (guest) side of the xenstore ring page: two byte queues, requests out in
//! `req`, replies and watch events in through `rsp` (`docs/misc/xenstore-ring.txt`,
//! `struct xenstore_domain_interface` in `io/xs_wire.h`).
//!
//! This layer moves bytes only, and never blocks: [`XsRing::write`] and
//! [`XsRing::read`] copy what fits or what is there and return how much. Waiting for
//! the event channel and notifying the server are the caller's business (the client
//! notifies after every call that moved bytes, as the ring document requires).
//!
//! The server is not trusted. Every index it owns (`req_cons`, `rsp_prod`) is read once
//! per call, checked (`prod - cons <= XENSTORE_RING_SIZE`, with free-running `u32`
//! arithmetic) and only then used; a violation is a typed
//! [`ProtocolError::RingIndices`]. The indices this side owns (`req_prod`, `rsp_cons`)
//! are kept in private copies, so a server that scribbles on them cannot steer us;
//! they are read from the page only when the ring is attached or reconnected (a guest
//! "must not assume that producer or consumer pointers start at zero").

use core::mem::offset_of;
use core::ops::Deref;
use core::sync::atomic::{Ordering, fence};

use super::error::{ProtocolError, XsError};
use crate::abi::xs_wire::{
    XENSTORE_CONNECTED, XENSTORE_RECONNECT, XENSTORE_RING_SIZE, XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION, XenstoreDomainInterface, mask_xenstore_idx,
};
use crate::shmem::SharedMemory;

/// Offset of the request bytes in the page.
pub(crate) const REQ: usize = offset_of!(XenstoreDomainInterface, req);
/// Offset of the response bytes in the page.
pub(crate) const RSP: usize = offset_of!(XenstoreDomainInterface, rsp);
/// Offset of `req_cons`.
pub(crate) const REQ_CONS: usize = offset_of!(XenstoreDomainInterface, req_cons);
/// Offset of `req_prod`.
pub(crate) const REQ_PROD: usize = offset_of!(XenstoreDomainInterface, req_prod);
/// Offset of `rsp_cons`.
pub(crate) const RSP_CONS: usize = offset_of!(XenstoreDomainInterface, rsp_cons);
/// Offset of `rsp_prod`.
pub(crate) const RSP_PROD: usize = offset_of!(XenstoreDomainInterface, rsp_prod);
/// Offset of `server_features`.
pub(crate) const SERVER_FEATURES: usize = offset_of!(XenstoreDomainInterface, server_features);
/// Offset of `connection`.
pub(crate) const CONNECTION: usize = offset_of!(XenstoreDomainInterface, connection);
/// Offset of `error`.
pub(crate) const ERROR: usize = offset_of!(XenstoreDomainInterface, error);

/// `XENSTORE_RING_SIZE` as the index type.
const RING: u32 = XENSTORE_RING_SIZE as u32;

/// Bytes queued between `cons` and `prod`, if the indices are consistent.
///
/// `check_indexes()` of the C clients: with free-running indices the distance is
/// `prod - cons` modulo 2^32, and it can never exceed the ring.
fn queued(cons: u32, prod: u32) -> Result<u32, XsError> {
    let used = prod.wrapping_sub(cons);
    if used > RING {
        return Err(ProtocolError::RingIndices { cons, prod }.into());
    }
    Ok(used)
}

/// The client side of a xenstore ring page.
///
/// `P` is any pointer to the shared page (`&M`, `Box<M>`, `Arc<M>`, ... for an `M:
/// SharedMemory`), so the same page can be shared with a test server.
#[derive(Debug)]
pub struct XsRing<P> {
    page: P,
    /// Our copy of `req_prod` (only we produce requests).
    req_prod: u32,
    /// Our copy of `rsp_cons` (only we consume responses).
    rsp_cons: u32,
}

impl<P> XsRing<P>
where
    P: Deref<Target: SharedMemory>,
{
    /// Attaches to the page as it is: takes `req_prod` and `rsp_cons` from it and
    /// checks both rings' indices. Responses already queued stay queued (see
    /// [`XsRing::discard_responses`]).
    pub fn attach(page: P) -> Result<Self, XsError> {
        let mut ring = Self::new(page)?;
        ring.resync()?;
        Ok(ring)
    }

    /// Wraps the page without looking at its indices (for a client that must first
    /// wait out a reconnection); call [`XsRing::resync`] before moving any bytes.
    pub fn new(page: P) -> Result<Self, XsError> {
        if page.len() < XenstoreDomainInterface::SIZE {
            return Err(XsError::PageTooSmall);
        }
        Ok(Self {
            page,
            req_prod: 0,
            rsp_cons: 0,
        })
    }

    /// Takes our indices from the page again (after a reconnection, the server has
    /// reset the rings) and checks both rings.
    pub fn resync(&mut self) -> Result<(), XsError> {
        let req_prod = self.page.load_u32(REQ_PROD, Ordering::Acquire);
        let rsp_cons = self.page.load_u32(RSP_CONS, Ordering::Acquire);
        queued(self.page.load_u32(REQ_CONS, Ordering::Acquire), req_prod)?;
        queued(rsp_cons, self.page.load_u32(RSP_PROD, Ordering::Acquire))?;
        self.req_prod = req_prod;
        self.rsp_cons = rsp_cons;
        Ok(())
    }

    /// The page this ring lives in.
    pub fn page(&self) -> &P {
        &self.page
    }

    /// Copies as much of `data` into the request ring as fits, publishes it, and
    /// returns how many bytes were taken (0 when the ring is full).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, XsError> {
        let cons = self.page.load_u32(REQ_CONS, Ordering::Relaxed);
        let prod = self.req_prod;
        let used = queued(cons, prod)?;
        let n = (RING - used).min(u32::try_from(data.len()).unwrap_or(u32::MAX));
        if n == 0 {
            return Ok(0);
        }
        // xenbus_comms.c xb_write(): "Must write data /after/ reading the consumer
        // index." The server may still be reading the bytes we are about to overwrite
        // until it has published the consumer index we just read.
        fence(Ordering::Acquire);
        let n = n as usize;
        self.copy_in(mask_xenstore_idx(prod), &data[..n]);
        // xb_write(): "Other side must not see new producer until data is there."
        fence(Ordering::Release);
        let prod = prod.wrapping_add(n as u32);
        self.page.store_u32(REQ_PROD, prod, Ordering::Relaxed);
        self.req_prod = prod;
        Ok(n)
    }

    /// Copies up to `buf.len()` queued response bytes out of the ring, frees their
    /// space, and returns how many were copied (0 when nothing is queued).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        let prod = self.page.load_u32(RSP_PROD, Ordering::Relaxed);
        let cons = self.rsp_cons;
        let avail = queued(cons, prod)?;
        let n = avail.min(u32::try_from(buf.len()).unwrap_or(u32::MAX)) as usize;
        if n == 0 {
            return Ok(0);
        }
        // xenbus_comms.c xb_read(): "Must read data /after/ reading the producer
        // index." Pairs with the server's write barrier before it publishes rsp_prod.
        fence(Ordering::Acquire);
        self.copy_out(mask_xenstore_idx(cons), &mut buf[..n]);
        // xb_read(): "Other side must not see free space until we've copied out."
        // A release fence orders the loads above before the index store below.
        fence(Ordering::Release);
        let cons = cons.wrapping_add(n as u32);
        self.page.store_u32(RSP_CONS, cons, Ordering::Relaxed);
        self.rsp_cons = cons;
        Ok(n)
    }

    /// Bytes of responses queued now (checked).
    pub fn response_bytes(&self) -> Result<u32, XsError> {
        queued(
            self.rsp_cons,
            self.page.load_u32(RSP_PROD, Ordering::Relaxed),
        )
    }

    /// Free space in the request ring now (checked).
    pub fn request_space(&self) -> Result<u32, XsError> {
        queued(
            self.page.load_u32(REQ_CONS, Ordering::Relaxed),
            self.req_prod,
        )
        .map(|u| RING - u)
    }

    /// Drops every response queued now, as Linux's `xb_init_comms()` does with a ring
    /// left behind by a previous owner. Returns how many bytes were dropped.
    pub fn discard_responses(&mut self) -> Result<u32, XsError> {
        let prod = self.page.load_u32(RSP_PROD, Ordering::Relaxed);
        let n = queued(self.rsp_cons, prod)?;
        if n != 0 {
            fence(Ordering::Release);
            self.page.store_u32(RSP_CONS, prod, Ordering::Relaxed);
            self.rsp_cons = prod;
        }
        Ok(n)
    }

    /// `server_features` (`XENSTORE_SERVER_FEATURE_*`). The server only ever adds bits.
    pub fn server_features(&self) -> u32 {
        self.page.load_u32(SERVER_FEATURES, Ordering::Acquire)
    }

    /// Whether the server offers ring reconnection.
    pub fn can_reconnect(&self) -> bool {
        self.server_features() & XENSTORE_SERVER_FEATURE_RECONNECTION != 0
    }

    /// The `connection` field; meaningful only if the server offers reconnection.
    pub fn connection(&self) -> u32 {
        self.page.load_u32(CONNECTION, Ordering::Acquire)
    }

    /// Whether a reconnection is in progress (the guest must then leave every other
    /// field alone until the server sets `connection` back to `XENSTORE_CONNECTED`).
    pub fn reconnecting(&self) -> bool {
        self.can_reconnect() && self.connection() != XENSTORE_CONNECTED
    }

    /// Asks the server to reset the ring (`connection = XENSTORE_RECONNECT`); the
    /// caller then notifies and waits for [`XsRing::reconnecting`] to clear.
    pub fn request_reconnect(&mut self) {
        self.page
            .store_u32(CONNECTION, XENSTORE_RECONNECT, Ordering::Release);
    }

    /// The server's connection error, if it advertises the error field and has set it.
    pub fn server_error(&self) -> Option<u32> {
        if self.server_features() & XENSTORE_SERVER_FEATURE_ERROR == 0 {
            return None;
        }
        match self.page.load_u32(ERROR, Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }

    /// Copies `data` (at most a ring's worth) into `req` from ring offset `at`.
    fn copy_in(&self, at: usize, data: &[u8]) {
        let first = data.len().min(XENSTORE_RING_SIZE - at);
        self.page.write_bytes(REQ + at, &data[..first]);
        self.page.write_bytes(REQ, &data[first..]);
    }

    /// Copies `buf.len()` (at most a ring's worth) bytes out of `rsp` from offset `at`.
    fn copy_out(&self, at: usize, buf: &mut [u8]) {
        let first = buf.len().min(XENSTORE_RING_SIZE - at);
        let (head, tail) = buf.split_at_mut(first);
        self.page.read_bytes(RSP + at, head);
        self.page.read_bytes(RSP, tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::xs_wire::XENSTORE_ERROR_RINGIDX;
    use crate::shmem::HeapSharedMemory;
    use alloc::vec;
    use alloc::vec::Vec;

    fn page() -> HeapSharedMemory {
        HeapSharedMemory::new(4096)
    }

    /// Plays the server: consumes `n` request bytes.
    fn server_take(m: &HeapSharedMemory, n: usize) -> Vec<u8> {
        let cons = m.load_u32(REQ_CONS, Ordering::Acquire);
        let mut out = vec![0; n];
        for (i, b) in out.iter_mut().enumerate() {
            *b = m.load_u8(
                REQ + mask_xenstore_idx(cons.wrapping_add(i as u32)),
                Ordering::Relaxed,
            );
        }
        m.store_u32(REQ_CONS, cons.wrapping_add(n as u32), Ordering::Release);
        out
    }

    /// Plays the server: produces response bytes.
    fn server_put(m: &HeapSharedMemory, data: &[u8]) {
        let prod = m.load_u32(RSP_PROD, Ordering::Acquire);
        for (i, b) in data.iter().enumerate() {
            m.store_u8(
                RSP + mask_xenstore_idx(prod.wrapping_add(i as u32)),
                *b,
                Ordering::Relaxed,
            );
        }
        m.store_u32(
            RSP_PROD,
            prod.wrapping_add(data.len() as u32),
            Ordering::Release,
        );
    }

    #[test]
    fn too_small_page() {
        let m = HeapSharedMemory::new(2048);
        assert_eq!(XsRing::attach(&m).err(), Some(XsError::PageTooSmall));
    }

    #[test]
    fn write_fills_then_waits_for_space() {
        let m = page();
        let mut r = XsRing::attach(&m).unwrap();
        let data: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        assert_eq!(r.write(&data).unwrap(), 1024);
        assert_eq!(r.request_space().unwrap(), 0);
        assert_eq!(r.write(&data[1024..]).unwrap(), 0);
        assert_eq!(server_take(&m, 1000), data[..1000]);
        assert_eq!(r.write(&data[1024..]).unwrap(), 476);
        assert_eq!(server_take(&m, 500), data[1000..]);
        assert_eq!(m.load_u32(REQ_PROD, Ordering::Relaxed), 1500);
    }

    #[test]
    fn wraps_across_the_ring_end_and_u32_overflow() {
        let m = page();
        let start = u32::MAX - 10;
        for off in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD] {
            m.store_u32(off, start, Ordering::Relaxed);
        }
        let mut r = XsRing::attach(&m).unwrap();
        let data: Vec<u8> = (0..700u32).map(|i| (i * 7) as u8).collect();
        for _ in 0..5 {
            assert_eq!(r.write(&data).unwrap(), 700);
            assert_eq!(server_take(&m, 700), data);
            server_put(&m, &data);
            let mut buf = vec![0; 1024];
            assert_eq!(r.response_bytes().unwrap(), 700);
            assert_eq!(r.read(&mut buf[..300]).unwrap(), 300);
            assert_eq!(r.read(&mut buf[300..]).unwrap(), 400);
            assert_eq!(buf[..700], data);
            assert_eq!(r.read(&mut buf).unwrap(), 0);
        }
        assert_eq!(
            m.load_u32(REQ_PROD, Ordering::Relaxed),
            start.wrapping_add(3500)
        );
        assert_eq!(
            m.load_u32(RSP_CONS, Ordering::Relaxed),
            start.wrapping_add(3500)
        );
    }

    #[test]
    fn hostile_indices_are_errors() {
        let m = page();
        let mut r = XsRing::attach(&m).unwrap();
        // rsp_prod runs 2000 bytes ahead of our consumer.
        m.store_u32(RSP_PROD, 2000, Ordering::Release);
        let mut buf = [0u8; 16];
        assert_eq!(
            r.read(&mut buf),
            Err(XsError::Protocol(ProtocolError::RingIndices {
                cons: 0,
                prod: 2000
            }))
        );
        // req_cons runs ahead of our producer (the distance wraps to nearly 2^32).
        m.store_u32(RSP_PROD, 0, Ordering::Release);
        m.store_u32(REQ_CONS, 5, Ordering::Release);
        assert!(matches!(
            r.write(b"x"),
            Err(XsError::Protocol(ProtocolError::RingIndices { .. }))
        ));
        // Attaching to an inconsistent page is refused too.
        assert!(XsRing::attach(&m).is_err());
    }

    #[test]
    fn our_indices_are_private() {
        let m = page();
        let mut r = XsRing::attach(&m).unwrap();
        assert_eq!(r.write(b"abc").unwrap(), 3);
        // A server scribbling on req_prod does not move our producer.
        m.store_u32(REQ_PROD, 900, Ordering::Release);
        assert_eq!(r.write(b"d").unwrap(), 1);
        assert_eq!(m.load_u32(REQ_PROD, Ordering::Relaxed), 4);
        assert_eq!(server_take(&m, 4), b"abcd");
    }

    #[test]
    fn discard_and_flags() {
        let m = page();
        server_put(&m, b"stale bytes");
        let mut r = XsRing::attach(&m).unwrap();
        assert_eq!(r.discard_responses().unwrap(), 11);
        assert_eq!(r.response_bytes().unwrap(), 0);
        assert_eq!(m.load_u32(RSP_CONS, Ordering::Relaxed), 11);

        assert!(!r.can_reconnect());
        assert!(!r.reconnecting());
        m.store_u32(ERROR, XENSTORE_ERROR_RINGIDX, Ordering::Release);
        assert_eq!(
            r.server_error(),
            None,
            "error field ignored unless advertised"
        );
        m.store_u32(
            SERVER_FEATURES,
            XENSTORE_SERVER_FEATURE_ERROR | XENSTORE_SERVER_FEATURE_RECONNECTION,
            Ordering::Release,
        );
        assert_eq!(r.server_error(), Some(XENSTORE_ERROR_RINGIDX));
        r.request_reconnect();
        assert!(r.reconnecting());
        assert_eq!(
            m.load_u32(CONNECTION, Ordering::Relaxed),
            XENSTORE_RECONNECT
        );
    }
}
