//! The shim's event-channel tables: which port of which domain is bound to what.
//!
//! Two domains exist: the guest (its own domid) and domain 0, which is the shim
//! itself (xenstored, the console backend, and the PV backends). The guest's ports are
//! the 2-level ABI's 1..4096 (port 0 is never allocated, as in Xen); the pending and
//! mask bits live in the guest's shared_info page and are set by [`super::Xen`].
//! Domain 0's ports have no bitmap: notifying one calls the backend's notifier.
//!
//! Semantics follow Xen's `xen/common/event_channel.c`: closing one end of an
//! interdomain channel leaves the other end unbound (waiting for the same remote
//! domain); binding to an unbound port requires that it waits for the binder.

use std::sync::Arc;

use pv_drivers::abi::event_channel::EVTCHN_2L_NR_CHANNELS;
use pv_drivers::abi::xen::DomId;

/// What a port is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Allocated, waiting for `remote` to bind to it.
    Unbound {
        /// The only domain allowed to bind.
        remote: DomId,
    },
    /// Connected to `port` of domain `dom`.
    Interdomain {
        /// Peer domain.
        dom: DomId,
        /// Peer port.
        port: u32,
    },
    /// Receives virtual IRQ `virq`.
    Virq(u32),
    /// An inter-processor event to the same vCPU.
    Ipi,
}

/// A callback run (outside the shim's Xen lock) when a domain-0 port is notified.
pub type Notifier = Arc<dyn Fn() + Send + Sync>;

/// One domain's ports.
pub struct PortTable<T> {
    slots: Vec<Option<(Binding, T)>>,
}

impl<T> PortTable<T> {
    /// A table with ports `1..limit` (port 0 is reserved).
    pub fn new(limit: u32) -> Self {
        Self {
            slots: (0..limit).map(|_| None).collect(),
        }
    }

    /// Number of ports (valid port numbers are below it).
    pub fn limit(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Makes the table `ports` long (a 32-bit guest's 2-level ABI has 1024 ports, a
    /// 64-bit guest's 4096); false, and nothing changed, if that would drop an open port.
    pub fn set_ports(&mut self, ports: u32) -> bool {
        let ports = ports as usize;
        if self.slots.iter().skip(ports).any(Option::is_some) {
            return false;
        }
        self.slots.resize_with(ports, || None);
        true
    }

    /// Whether `port` is a port number of this table (bound or not), as Xen's
    /// `port_is_valid`.
    pub fn is_valid(&self, port: u32) -> bool {
        port < self.limit()
    }

    /// The binding of `port`, if it is open.
    pub fn get(&self, port: u32) -> Option<Binding> {
        self.slots
            .get(port as usize)
            .and_then(|s| s.as_ref().map(|(b, _)| *b))
    }

    /// Every open port and its binding, in port order.
    pub fn bindings(&self) -> impl Iterator<Item = (u32, Binding)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(p, s)| s.as_ref().map(|(b, _)| (p as u32, *b)))
    }

    /// The payload of an open `port`.
    pub fn payload(&self, port: u32) -> Option<&T> {
        self.slots
            .get(port as usize)
            .and_then(|s| s.as_ref().map(|(_, t)| t))
    }

    /// Opens the lowest free port with `binding`; `None` if all are in use.
    pub fn alloc(&mut self, binding: Binding, payload: T) -> Option<u32> {
        let port = self.slots.iter().skip(1).position(Option::is_none)? + 1;
        self.slots[port] = Some((binding, payload));
        Some(port as u32)
    }

    /// Opens `port` (which must be free) with `binding`; false if it is taken or out
    /// of range.
    pub fn set(&mut self, port: u32, binding: Binding, payload: T) -> bool {
        match self.slots.get_mut(port as usize) {
            Some(slot @ None) if port != 0 => {
                *slot = Some((binding, payload));
                true
            }
            _ => false,
        }
    }

    /// Rebinds an open port, keeping its payload; false if it is not open.
    pub fn rebind(&mut self, port: u32, binding: Binding) -> bool {
        match self.slots.get_mut(port as usize) {
            Some(Some((b, _))) => {
                *b = binding;
                true
            }
            _ => false,
        }
    }

    /// Closes `port`, returning its binding if it was open.
    pub fn close(&mut self, port: u32) -> Option<Binding> {
        self.slots
            .get_mut(port as usize)
            .and_then(Option::take)
            .map(|(b, _)| b)
    }

    /// The open port bound to `virq`, if any.
    pub fn find_virq(&self, virq: u32) -> Option<u32> {
        self.slots
            .iter()
            .position(|s| matches!(s, Some((Binding::Virq(v), _)) if *v == virq))
            .map(|p| p as u32)
    }

    /// Number of open ports.
    pub fn open_count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// The guest's port table size: the 2-level ABI's limit on x86_64.
pub const GUEST_PORTS: u32 = EVTCHN_2L_NR_CHANNELS;

/// Domain 0's port table size (the shim's backends; a handful per device).
pub const DOM0_PORTS: u32 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_port_from_one() {
        let mut t: PortTable<()> = PortTable::new(4);
        assert_eq!(t.alloc(Binding::Ipi, ()), Some(1));
        assert_eq!(t.alloc(Binding::Virq(0), ()), Some(2));
        assert_eq!(t.alloc(Binding::Unbound { remote: 0 }, ()), Some(3));
        assert_eq!(t.alloc(Binding::Ipi, ()), None);
        assert_eq!(t.find_virq(0), Some(2));
        assert_eq!(t.close(1), Some(Binding::Ipi));
        assert_eq!(t.close(1), None);
        assert_eq!(t.alloc(Binding::Ipi, ()), Some(1));
        assert!(t.is_valid(3) && !t.is_valid(4));
        assert_eq!(t.get(99), None);
        assert!(t.rebind(3, Binding::Interdomain { dom: 1, port: 2 }));
        assert!(!t.rebind(0, Binding::Ipi));
        assert_eq!(t.open_count(), 3);
    }
}
