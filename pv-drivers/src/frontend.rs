//! What a PV frontend (blkfront, netfront) needs from the domain it runs in.
//!
//! The drivers are written against [`FrontendEnv`] and a [`XenStore`] client, so the
//! same code runs in the guest kernel (hypercalls, its own page allocator and grant
//! table) and in host tests (byte-buffer memory, the shim's xenstored and backends in
//! the same process).
//!
//! [`XenStore`]: crate::xenstore::XenStore

use core::fmt;

use crate::abi::grant_table::GrantRef;
use crate::abi::xen::DomId;
use crate::grant::GrantError;
use crate::shmem::SharedMemory;

/// Page size of shared memory (rings and data buffers).
pub const PAGE_SIZE: usize = 4096;

/// Errors of the frontend's environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvError {
    /// No memory for the pages asked for.
    NoMemory,
    /// A grant-table operation failed.
    Grant(GrantError),
    /// An event-channel hypercall failed with this Xen errno (negative).
    Evtchn(i32),
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMemory => f.write_str("out of memory for shared pages"),
            Self::Grant(e) => write!(f, "grant table: {e}"),
            Self::Evtchn(rc) => write!(f, "event channel operation failed ({rc})"),
        }
    }
}

impl core::error::Error for EnvError {}

impl From<GrantError> for EnvError {
    fn from(e: GrantError) -> Self {
        Self::Grant(e)
    }
}

/// The frontend's view of its own domain: shared pages, grants and event channels.
pub trait FrontendEnv {
    /// Zeroed, page-aligned memory that may be granted. `len()` is
    /// `PAGE_SIZE * count` of the allocation.
    type Pages: SharedMemory;

    /// Allocates `count` physically contiguous pages, zeroed; returns the frame number
    /// of the first and a view of all of them.
    fn alloc_pages(&mut self, count: usize) -> Result<(u64, Self::Pages), EnvError>;

    /// Returns pages from [`FrontendEnv::alloc_pages`]. Only call once no grant to them
    /// is still in use (a page the backend may still write must be leaked instead).
    fn free_pages(&mut self, pfn: u64, pages: Self::Pages);

    /// Grants domain `to` access to frame `pfn` (read-only if `readonly`).
    fn grant(&mut self, to: DomId, pfn: u64, readonly: bool) -> Result<GrantRef, EnvError>;

    /// Ends a grant and frees the reference. Fails with
    /// `EnvError::Grant(GrantError::StillInUse(_))` while the backend still has the
    /// page mapped or is copying: the caller must not reuse or free the page then.
    fn end_grant(&mut self, gref: GrantRef) -> Result<(), EnvError>;

    /// Allocates an unbound event-channel port that domain `remote` may bind
    /// (`EVTCHNOP_alloc_unbound`).
    fn alloc_unbound(&mut self, remote: DomId) -> Result<u32, EnvError>;

    /// Signals `port` (`EVTCHNOP_send`).
    fn notify(&mut self, port: u32);

    /// Closes `port` (`EVTCHNOP_close`).
    fn close_port(&mut self, port: u32);

    /// This domain's id (for logs and xenstore paths).
    fn domid(&self) -> DomId;
}

impl<T: FrontendEnv + ?Sized> FrontendEnv for &mut T {
    type Pages = T::Pages;
    fn alloc_pages(&mut self, count: usize) -> Result<(u64, Self::Pages), EnvError> {
        (**self).alloc_pages(count)
    }
    fn free_pages(&mut self, pfn: u64, pages: Self::Pages) {
        (**self).free_pages(pfn, pages)
    }
    fn grant(&mut self, to: DomId, pfn: u64, readonly: bool) -> Result<GrantRef, EnvError> {
        (**self).grant(to, pfn, readonly)
    }
    fn end_grant(&mut self, gref: GrantRef) -> Result<(), EnvError> {
        (**self).end_grant(gref)
    }
    fn alloc_unbound(&mut self, remote: DomId) -> Result<u32, EnvError> {
        (**self).alloc_unbound(remote)
    }
    fn notify(&mut self, port: u32) {
        (**self).notify(port)
    }
    fn close_port(&mut self, port: u32) {
        (**self).close_port(port)
    }
    fn domid(&self) -> DomId {
        (**self).domid()
    }
}
