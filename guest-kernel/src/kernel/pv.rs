//! The guest's side of the PV frontends: [`GuestEnv`] (pages, grants and event
//! channels for blkfront/netfront on this kernel's Xen) and waiting for a device.
//!
//! Every port a frontend allocates through [`GuestEnv`] is bound to one handler that
//! sets the env's [`DeviceEvent`] flag, so the layer above polls its device when the
//! device's event fired. The latch, the clock and the wait are shared with the
//! emulated devices (`event.rs`) and re-exported here.

use alloc::boxed::Box;

use guest_kernel::frames::PAGE_SIZE;
use pv_drivers::abi::grant_table::GrantRef;
use pv_drivers::abi::xen::DomId;
use pv_drivers::follow::{Follower, StoreAccess};
use pv_drivers::frontend::{EnvError, FrontendEnv};
use pv_drivers::hypercall::{HypercallError, XenHypercalls as _};
use pv_drivers::shmem::RawSharedMemory;
use pv_drivers::xenstore::XenStore;

use super::{memory, xen};
use crate::kprintln;

pub use super::event::{DeviceEvent, Woken, boot_entropy, now_ns, wait_for_event};

/// How often a busy driver is polled without an event: the bound on how long a lost
/// event can stall it (an idle network loop backs off from it, `RecoveryTick`).
pub const RECOVERY_TICK_NS: u64 = guest_kernel::time::RecoveryTick::BASE_NS;

fn errno(e: HypercallError) -> EnvError {
    EnvError::Evtchn(match e {
        HypercallError::Xen(x) => x.as_neg() as i32,
        HypercallError::Unknown(v) => i32::try_from(v).unwrap_or(i32::MIN),
        _ => -22, // -EINVAL: the request never reached Xen
    })
}

/// [`FrontendEnv`] on this kernel's Xen: frames from the frame allocator (identity
/// mapped), grants in the kernel's grant table, event channels by hypercall. One per
/// device, so that each device has its own [`DeviceEvent`].
pub struct GuestEnv {
    xen: &'static xen::Xen,
    domid: DomId,
    event: DeviceEvent,
}

impl GuestEnv {
    /// An environment for one device; `None` without Xen or when the domain id is
    /// unknown (neither CPUID nor xenstore's `domid` gives it).
    pub fn new() -> Option<Self> {
        let xen = xen::get()?;
        let domid = xen.domain_id()?;
        Some(Self {
            xen,
            domid,
            event: DeviceEvent::default(),
        })
    }

    /// The event latch of every port this env allocates.
    pub fn event(&self) -> DeviceEvent {
        self.event.clone()
    }
}

impl FrontendEnv for GuestEnv {
    type Pages = RawSharedMemory;

    fn alloc_pages(&mut self, count: usize) -> Result<(u64, RawSharedMemory), EnvError> {
        let (base, view) = memory::alloc_zeroed(count).ok_or(EnvError::NoMemory)?;
        Ok((base / PAGE_SIZE, view))
    }

    fn free_pages(&mut self, pfn: u64, pages: RawSharedMemory) {
        memory::free_zeroed(pfn * PAGE_SIZE, pages);
    }

    fn grant(&mut self, to: DomId, pfn: u64, readonly: bool) -> Result<GrantRef, EnvError> {
        Ok(self.xen.grants.lock().grant_access(to, pfn, readonly)?)
    }

    fn end_grant(&mut self, gref: GrantRef) -> Result<(), EnvError> {
        Ok(self.xen.grants.lock().end_access_and_free(gref)?)
    }

    fn alloc_unbound(&mut self, remote: DomId) -> Result<u32, EnvError> {
        let port = self.xen.hv.evtchn_alloc_unbound(remote).map_err(errno)?;
        self.xen.bind(port, self.event.handler());
        Ok(port)
    }

    fn notify(&mut self, port: u32) {
        if let Err(e) = self.xen.hv.evtchn_send(port) {
            log::warn!("pv: notify port {port}: {e}");
        }
    }

    fn close_port(&mut self, port: u32) {
        self.xen.unbind(port);
        if let Err(e) = self.xen.hv.evtchn_close(port) {
            log::warn!("pv: close port {port}: {e}");
        }
    }

    fn domid(&self) -> DomId {
        self.domid
    }
}

/// The kernel's xenstore client, for devices that follow their backend
/// (`pv_drivers::follow::Followed`): activity is the count of xenstore-port events.
pub struct GuestStore;

impl StoreAccess for GuestStore {
    type Pages = Box<RawSharedMemory>;
    type Events = xen::StoreEvents;

    fn activity(&self) -> u64 {
        xen::store_activity()
    }

    fn with_store<R>(
        &self,
        f: impl FnOnce(&mut XenStore<Self::Pages, Self::Events>) -> R,
    ) -> Option<R> {
        // `try_lock`: code that already holds the client (none polls a device while it
        // does) makes this look a no-op, and `Followed` looks again at the next poll.
        let x = xen::get()?;
        let mut store = x.store.try_lock()?;
        Some(f(store.as_mut()?))
    }
}

/// `dev` following its backend through the kernel's xenstore client.
pub type Followed<D> = pv_drivers::follow::Followed<D, GuestStore>;

/// Says, once, that a followed device's backend closed it (or that following failed).
pub fn report_backend<D: Follower>(kind: &str, id: &str, dev: &Followed<D>) {
    let s = dev.stats();
    use pv_drivers::xenbus::XenbusState as S;
    if let Some(st) = dev.backend_state()
        && matches!(st, S::Closing | S::Closed | S::Unknown)
    {
        kprintln!("{kind}: backend of {id} went {st}: device closed");
    }
    if let Some(e) = dev.last_error() {
        log::warn!("{kind}: following the backend of {id}: {e}");
    }
    log::info!(
        "{kind}: backend watch: {} looks, {} events, {} errors",
        s.checks,
        s.events,
        s.errors
    );
}

/// The ids of this domain's devices of `kind` (`vbd`, `vif`) in xenstore.
pub fn list_devices(kind: &str) -> alloc::vec::Vec<alloc::string::String> {
    let Some(x) = xen::get() else {
        return alloc::vec::Vec::new();
    };
    let mut store = x.store.lock();
    let Some(xs) = store.as_mut() else {
        log::warn!("pv: no xenstore: no {kind} devices");
        return alloc::vec::Vec::new();
    };
    match pv_drivers::xenbus::list_devices(xs, kind) {
        Ok(ids) => ids,
        Err(e) => {
            log::warn!("pv: listing device/{kind}: {e}");
            alloc::vec::Vec::new()
        }
    }
}

/// Picks `wanted` (if given and present) or the first of `ids`.
pub fn choose<'a>(
    kind: &str,
    ids: &'a [alloc::string::String],
    wanted: Option<&str>,
) -> Option<&'a str> {
    let found = match wanted {
        Some(w) => ids.iter().find(|id| id.as_str() == w),
        None => ids.first(),
    };
    if found.is_none() {
        match wanted {
            Some(w) => log::error!("pv: no {kind} device {w} (found: {ids:?})"),
            None => log::error!("pv: no {kind} device in xenstore"),
        }
    }
    found.map(|s| s.as_str())
}
