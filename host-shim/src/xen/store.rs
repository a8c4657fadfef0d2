//! Serving the guest's xenstore ring with the in-process [`Xenstored`].
//!
//! The guest's `EVTCHNOP_send` on its store channel runs [`StoreService::pump`] on the
//! vCPU thread; the shim's own backends use the daemon through [`Xen::xenstore`] and
//! then [`Xen::kick_xenstore`] so that watch events they caused reach the guest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::Xen;
use super::evtchn::Notifier;
use super::guest_mem::SharedPage;
use super::xenstored::{DomainConfig, Quotas, RingServer, Xenstored};

/// The daemon and the guest's ring.
pub struct StoreService {
    /// The daemon.
    pub daemon: Xenstored,
    ring: RingServer,
    page: SharedPage,
    /// Domain 0's watches by token ([`Xen::watch_dom0`]): who to wake on an event.
    pub(super) watchers: HashMap<String, Notifier>,
}

impl StoreService {
    /// Serves every complete request; returns whether the guest must be notified.
    pub fn pump(&mut self) -> bool {
        let mut notify = false;
        // Bounded: a guest that keeps the ring full yields the thread after a while and
        // is served again on its next notification.
        for _ in 0..16 {
            let r = self.ring.pump(&mut self.daemon, &self.page);
            notify |= r.notify;
            if !r.more {
                break;
            }
        }
        notify
    }
}

impl Xen {
    /// Starts xenstored with this guest introduced (`/local/domain/<domid>` with
    /// `domid` and `name`), serving the guest's store ring. Call once, before the guest
    /// runs.
    pub fn attach_xenstore(self: &Arc<Self>) -> Result<(), String> {
        let mut daemon = Xenstored::new(Quotas::default());
        daemon
            .introduce_domain_with(self.config.domid, &self.xenstore_domain())
            .map_err(|e| format!("introducing domain {}: {e}", self.config.domid))?;
        self.attach_xenstore_daemon(daemon)
    }

    /// How [`Self::attach_xenstore`] introduces the guest: what libxl writes for a
    /// one-vCPU domain: its memory (KiB) and its vCPU online (Linux's cpu_hotplug reads
    /// `cpu/0/availability`), and the store's channel and frame.
    pub fn xenstore_domain(&self) -> DomainConfig {
        DomainConfig {
            name: self.config.name.clone(),
            memory_kib: Some(self.config.ram_pages * 4),
            vcpus: Some(1),
            store_port: Some(self.special.store_port),
            store_ring_ref: Some(self.special.store_pfn),
            ..DomainConfig::default()
        }
    }

    /// [`Self::attach_xenstore`] with the daemon given: one in the state
    /// `attach_xenstore` builds (default quotas, the guest introduced with
    /// [`Self::xenstore_domain`]), such as a clone of one built earlier.
    pub fn attach_xenstore_daemon(self: &Arc<Self>, daemon: Xenstored) -> Result<(), String> {
        let page = self
            .ram
            .page(self.special.store_pfn)
            .map_err(|e| format!("xenstore page: {e}"))?;
        let mut ring = RingServer::new(self.config.domid);
        ring.attach(&page);
        let service = Arc::new(Mutex::new(StoreService {
            daemon,
            ring,
            page,
            watchers: HashMap::new(),
        }));
        let _ = self.store.set(service.clone());
        let weak: Weak<Xen> = Arc::downgrade(self);
        let notify = Arc::new(move || {
            if let Some(xen) = weak.upgrade() {
                xen.kick_xenstore();
            }
        });
        if self.set_dom0_notifier(self.special.store_dom0_port, notify) {
            Ok(())
        } else {
            Err("xenstore event channel is not open".into())
        }
    }

    /// The daemon, for the shim's backends (domain 0). Call [`Xen::kick_xenstore`]
    /// after changes so the guest sees replies and watch events.
    pub fn xenstore(&self) -> Option<MutexGuard<'_, StoreService>> {
        self.store
            .get()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The daemon's shared handle, for backends that keep it.
    pub fn store_service(&self) -> Option<Arc<Mutex<StoreService>>> {
        self.store.get().cloned()
    }

    /// Serves the guest's ring and notifies it if anything moved; then wakes the
    /// backends whose domain-0 watches fired.
    pub fn kick_xenstore(&self) {
        let mut wake: Vec<Notifier> = Vec::new();
        let notify = self.xenstore().is_some_and(|mut s| {
            let notify = s.pump();
            for ev in s.daemon.take_dom0_events() {
                if let Some(n) = s.watchers.get(&ev.token)
                    && !wake.iter().any(|w| Arc::ptr_eq(w, n))
                {
                    wake.push(n.clone());
                }
            }
            notify
        });
        if notify {
            self.notify_guest(self.special.store_dom0_port);
        }
        for n in wake {
            n();
        }
    }

    /// xenstored's counters, if it runs.
    pub fn xenstore_stats(&self) -> Option<super::xenstored::XenstoredStats> {
        self.xenstore().map(|s| s.daemon.stats().clone())
    }
}
