//! Domain 0's side of event channels and xenstore watches, for the shim's PV backends
//! (`crate::backends`): what a Linux backend does with `EVTCHNOP_bind_interdomain`,
//! `EVTCHNOP_close` and xenstore watches on its own connection.

use crate::xen::xenstored::XsError;
use pv_drivers::abi::errno::XenErrno;

use super::Xen;
use super::evtchn::{Binding, Notifier, PortTable};

/// Connects the guest's `guest_port` (allocated, waiting for domain 0) to a new
/// domain-0 port with `notify`: the one way both ends of a guest/domain-0 channel are
/// made, whether by the toolstack at start (xenstore, console) or by a backend's bind.
/// `None` (and nothing changed) when domain 0 has no free port.
pub(super) fn join_dom0(
    guest_ports: &mut PortTable<()>,
    dom0_ports: &mut PortTable<Option<Notifier>>,
    domid: pv_drivers::abi::xen::DomId,
    guest_port: u32,
    notify: Option<Notifier>,
) -> Option<u32> {
    let dom0 = dom0_ports.alloc(
        Binding::Interdomain {
            dom: domid,
            port: guest_port,
        },
        notify,
    )?;
    guest_ports.rebind(guest_port, Binding::Interdomain { dom: 0, port: dom0 });
    Some(dom0)
}

impl Xen {
    /// Binds a new domain-0 port to the guest's port `guest_port`, which must be
    /// unbound and waiting for domain 0 (the guest's `EVTCHNOP_alloc_unbound` with
    /// `remote_dom` 0). `notify` runs whenever the guest signals it. Returns the
    /// domain-0 port. Errors as Xen's `evtchn_bind_interdomain`: `EINVAL` for a port
    /// that is not open or not waiting for domain 0, `ENOSPC` when domain 0 has no
    /// free port.
    pub fn bind_dom0(&self, guest_port: u32, notify: Notifier) -> Result<u32, XenErrno> {
        let domid = self.config.domid;
        let mut st = self.lock();
        if st.guest_ports.get(guest_port) != Some(Binding::Unbound { remote: 0 }) {
            return Err(XenErrno::EINVAL);
        }
        let st = &mut *st;
        let dom0 = join_dom0(
            &mut st.guest_ports,
            &mut st.dom0_ports,
            domid,
            guest_port,
            Some(notify),
        )
        .ok_or(XenErrno::ENOSPC)?;
        Ok(dom0)
    }

    /// Closes domain-0 port `dom0_port`; the guest's end becomes unbound, waiting for
    /// domain 0 again (as Xen leaves the remote end of a closed channel). Closing a
    /// port that is not open does nothing.
    pub fn close_dom0(&self, dom0_port: u32) {
        let domid = self.config.domid;
        let mut st = self.lock();
        if let Some(Binding::Interdomain { dom, port }) = st.dom0_ports.close(dom0_port)
            && dom == domid
            && st.guest_ports.get(port)
                == Some(Binding::Interdomain {
                    dom: 0,
                    port: dom0_port,
                })
        {
            st.guest_ports.rebind(port, Binding::Unbound { remote: 0 });
        }
    }

    /// Watches `path` in xenstored as domain 0; `notify` runs (outside every lock)
    /// when `path` or a node below it changes, and once for the watch's initial event.
    pub fn watch_dom0(&self, path: &str, notify: Notifier) -> Result<(), XsError> {
        let Some(service) = self.store_service() else {
            return Err(XsError::Errno(XenErrno::ENOENT));
        };
        {
            let mut s = service.lock().unwrap_or_else(|p| p.into_inner());
            let token = format!("dom0-watch-{}", s.watchers.len());
            s.daemon.dom0().watch(path, &token)?;
            s.watchers.insert(token, notify);
        }
        self.kick_xenstore();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_backend_binds_only_a_port_waiting_for_dom0_and_closing_leaves_it_waiting() {
        let (xen, _irqs) = crate::testing::xen_without_kvm(8);
        let notify: Notifier = Arc::new(|| {});
        let (waiting, other) = {
            let mut st = xen.lock();
            (
                st.guest_ports
                    .alloc(Binding::Unbound { remote: 0 }, ())
                    .unwrap(),
                st.guest_ports
                    .alloc(Binding::Unbound { remote: 5 }, ())
                    .unwrap(),
            )
        };
        assert_eq!(xen.bind_dom0(other, notify.clone()), Err(XenErrno::EINVAL));
        assert_eq!(xen.bind_dom0(4000, notify.clone()), Err(XenErrno::EINVAL));
        let dom0 = xen.bind_dom0(waiting, notify.clone()).unwrap();
        assert_eq!(
            xen.lock().guest_ports.get(waiting),
            Some(Binding::Interdomain { dom: 0, port: dom0 })
        );
        // Bound once: a second bind is refused.
        assert_eq!(xen.bind_dom0(waiting, notify), Err(XenErrno::EINVAL));
        assert!(xen.notify_guest(dom0));
        xen.close_dom0(dom0);
        assert_eq!(
            xen.lock().guest_ports.get(waiting),
            Some(Binding::Unbound { remote: 0 })
        );
        assert!(!xen.notify_guest(dom0));
        xen.close_dom0(dom0);
    }
}
