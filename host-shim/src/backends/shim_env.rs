//! [`BackendEnv`] over the shim's own Xen.

use std::sync::{Arc, Mutex};

use crate::xen::xenstored::XsError;
use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::grant_table::GrantRef;
use pv_drivers::abi::xen::DomId;

use super::BackendEnv;
use crate::xen::Xen;
use crate::xen::evtchn::Notifier;
use crate::xen::store::StoreService;
use crate::xen::xenstored::Xenstored;

/// [`BackendEnv`] over the shim's Xen: grants through the guest's grant table, events
/// through the shim's event channels, the in-process xenstored.
#[derive(Clone)]
pub struct ShimEnv {
    xen: Arc<Xen>,
    store: Arc<Mutex<StoreService>>,
}

impl ShimEnv {
    /// Domain 0's view of the guest behind `xen`; xenstored must be attached.
    pub fn new(xen: Arc<Xen>) -> Result<Self, String> {
        let store = xen
            .store_service()
            .ok_or("xenstored is not running: PV backends need it")?;
        Ok(Self { xen, store })
    }
}

impl BackendEnv for ShimEnv {
    type Mapping = crate::xen::GrantMapping;

    fn frontend_domid(&self) -> DomId {
        self.xen.domid()
    }

    fn map_grants(&self, grefs: &[GrantRef], write: bool) -> Result<Self::Mapping, i16> {
        self.xen.grant_map(grefs, write)
    }

    fn copy_from_grant(&self, gref: GrantRef, offset: u16, buf: &mut [u8]) -> Result<(), i16> {
        self.xen.grant_read(gref, offset, buf)
    }

    fn copy_to_grant(&self, gref: GrantRef, offset: u16, data: &[u8]) -> Result<(), i16> {
        self.xen.grant_write(gref, offset, data)
    }

    fn bind(&self, remote_port: u32, kick: Notifier) -> Result<u32, XenErrno> {
        self.xen.bind_dom0(remote_port, kick)
    }

    fn notify(&self, port: u32) {
        self.xen.notify_guest(port);
    }

    fn unbind(&self, port: u32) {
        self.xen.close_dom0(port);
    }

    fn with_store<R>(&self, f: impl FnOnce(&mut Xenstored) -> R) -> R {
        let r = f(&mut self.store.lock().unwrap_or_else(|p| p.into_inner()).daemon);
        self.xen.kick_xenstore();
        r
    }

    fn watch(&self, path: &str, kick: Notifier) -> Result<(), XsError> {
        self.xen.watch_dom0(path, kick)
    }
}
