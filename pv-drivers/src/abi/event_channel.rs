//! `xen/include/public/event_channel.h`: event-channel operations
//! (`HYPERVISOR_event_channel_op(cmd, arg)`) and the 2-level/FIFO ABI constants.
//!
//! The PENDING/MASK bitmaps of the 2-level ABI live in `shared_info`
//! ([`super::xen::SharedInfo`]).

use super::xen::DomId;

/// `evtchn_port_t`.
pub type EvtchnPort = u32;

/// `EVTCHNOP_bind_interdomain`: arg is [`EvtchnBindInterdomain`].
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
/// `EVTCHNOP_bind_virq`: arg is [`EvtchnBindVirq`].
pub const EVTCHNOP_BIND_VIRQ: u32 = 1;
/// `EVTCHNOP_bind_pirq`: arg is [`EvtchnBindPirq`].
pub const EVTCHNOP_BIND_PIRQ: u32 = 2;
/// `EVTCHNOP_close`: arg is [`EvtchnClose`].
pub const EVTCHNOP_CLOSE: u32 = 3;
/// `EVTCHNOP_send`: arg is [`EvtchnSend`].
pub const EVTCHNOP_SEND: u32 = 4;
/// `EVTCHNOP_status`: arg is [`EvtchnStatus`].
pub const EVTCHNOP_STATUS: u32 = 5;
/// `EVTCHNOP_alloc_unbound`: arg is [`EvtchnAllocUnbound`].
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
/// `EVTCHNOP_bind_ipi`: arg is [`EvtchnBindIpi`].
pub const EVTCHNOP_BIND_IPI: u32 = 7;
/// `EVTCHNOP_bind_vcpu`: arg is [`EvtchnBindVcpu`].
pub const EVTCHNOP_BIND_VCPU: u32 = 8;
/// `EVTCHNOP_unmask`: arg is [`EvtchnUnmask`].
pub const EVTCHNOP_UNMASK: u32 = 9;
/// `EVTCHNOP_reset`: arg is [`EvtchnReset`].
pub const EVTCHNOP_RESET: u32 = 10;
/// `EVTCHNOP_init_control`: arg is [`EvtchnInitControl`] (FIFO ABI).
pub const EVTCHNOP_INIT_CONTROL: u32 = 11;
/// `EVTCHNOP_expand_array`: arg is [`EvtchnExpandArray`] (FIFO ABI).
pub const EVTCHNOP_EXPAND_ARRAY: u32 = 12;
/// `EVTCHNOP_set_priority`: arg is [`EvtchnSetPriority`] (FIFO ABI).
pub const EVTCHNOP_SET_PRIORITY: u32 = 13;

/// `struct evtchn_alloc_unbound`: allocate a port in `dom` that accepts an
/// interdomain binding from `remote_dom`. An unprivileged caller must pass
/// `DOMID_SELF` as `dom`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnAllocUnbound {
    /// IN: domain to allocate in.
    pub dom: DomId,
    /// IN: domain allowed to bind (may be `DOMID_SELF` for loopback).
    pub remote_dom: DomId,
    /// OUT: the fresh port.
    pub port: EvtchnPort,
}

/// `struct evtchn_bind_interdomain`: bind to the unbound `remote_port` of
/// `remote_dom`. Xen always sets the new local port pending.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindInterdomain {
    /// IN: the remote domain (may be `DOMID_SELF`).
    pub remote_dom: DomId,
    /// Implicit C padding before the 4-byte port.
    pub _pad: u16,
    /// IN: the remote, unbound port.
    pub remote_port: EvtchnPort,
    /// OUT: the fresh local port.
    pub local_port: EvtchnPort,
}

/// `struct evtchn_bind_virq`: bind a port to `VIRQ_*` `virq` on `vcpu`. Per-domain and
/// global VIRQs must be bound on vCPU 0 first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindVirq {
    /// IN: `enum virq`.
    pub virq: u32,
    /// IN: vCPU to notify.
    pub vcpu: u32,
    /// OUT: the fresh port.
    pub port: EvtchnPort,
}

/// `BIND_PIRQ__WILL_SHARE` in [`EvtchnBindPirq::flags`].
pub const BIND_PIRQ_WILL_SHARE: u32 = 1;

/// `struct evtchn_bind_pirq` (privileged domains only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindPirq {
    /// IN: physical IRQ.
    pub pirq: u32,
    /// IN: `BIND_PIRQ__*`.
    pub flags: u32,
    /// OUT: the fresh port.
    pub port: EvtchnPort,
}

/// `struct evtchn_bind_ipi`: a port for events to `vcpu` (the binding is fixed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindIpi {
    /// IN: vCPU to notify.
    pub vcpu: u32,
    /// OUT: the fresh port.
    pub port: EvtchnPort,
}

/// `struct evtchn_close`: close a local port; an interdomain peer goes back to
/// `EVTCHNSTAT_unbound`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnClose {
    /// IN.
    pub port: EvtchnPort,
}

/// `struct evtchn_send`: notify the remote end of local `port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnSend {
    /// IN.
    pub port: EvtchnPort,
}

/// `EVTCHNSTAT_closed`: channel is not in use.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// `EVTCHNSTAT_unbound`: channel is waiting for an interdomain connection.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// `EVTCHNSTAT_interdomain`: channel is connected to a remote domain.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
/// `EVTCHNSTAT_pirq`: channel is bound to a physical IRQ line.
pub const EVTCHNSTAT_PIRQ: u32 = 3;
/// `EVTCHNSTAT_virq`: channel is bound to a virtual IRQ line.
pub const EVTCHNSTAT_VIRQ: u32 = 4;
/// `EVTCHNSTAT_ipi`: channel is bound to a virtual IPI line.
pub const EVTCHNSTAT_IPI: u32 = 5;

/// `struct evtchn_status`: the state of `<dom, port>`.
///
/// The C `union u` is kept as its two raw 32-bit words (`u: [u32; 2]`, 8 bytes, 4-byte
/// aligned like the union) and read through the accessors, which know which member
/// `status` selects. In the little-endian guest layout a `domid_t` member at offset 0
/// is the low 16 bits of `u[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnStatus {
    /// IN: domain (may be `DOMID_SELF`).
    pub dom: DomId,
    /// Implicit C padding before the 4-byte port.
    pub _pad: u16,
    /// IN: port.
    pub port: EvtchnPort,
    /// OUT: `EVTCHNSTAT_*`.
    pub status: u32,
    /// OUT: vCPU the channel notifies.
    pub vcpu: u32,
    /// OUT: `union { unbound{dom}; interdomain{dom, port}; pirq; virq; } u`.
    pub u: [u32; 2],
}

impl EvtchnStatus {
    /// `u.unbound.dom`, when `status == EVTCHNSTAT_unbound`.
    pub fn unbound_dom(&self) -> Option<DomId> {
        (self.status == EVTCHNSTAT_UNBOUND).then_some(self.u[0] as DomId)
    }

    /// `(u.interdomain.dom, u.interdomain.port)`, when
    /// `status == EVTCHNSTAT_interdomain`.
    pub fn interdomain(&self) -> Option<(DomId, EvtchnPort)> {
        (self.status == EVTCHNSTAT_INTERDOMAIN).then_some((self.u[0] as DomId, self.u[1]))
    }

    /// `u.pirq`, when `status == EVTCHNSTAT_pirq`.
    pub fn pirq(&self) -> Option<u32> {
        (self.status == EVTCHNSTAT_PIRQ).then_some(self.u[0])
    }

    /// `u.virq`, when `status == EVTCHNSTAT_virq`.
    pub fn virq(&self) -> Option<u32> {
        (self.status == EVTCHNSTAT_VIRQ).then_some(self.u[0])
    }

    /// Fills `u` as `u.unbound` (for the side that answers the query).
    pub fn set_unbound(&mut self, dom: DomId) {
        self.status = EVTCHNSTAT_UNBOUND;
        self.u = [u32::from(dom), 0];
    }

    /// Fills `u` as `u.interdomain`.
    pub fn set_interdomain(&mut self, dom: DomId, port: EvtchnPort) {
        self.status = EVTCHNSTAT_INTERDOMAIN;
        self.u = [u32::from(dom), port];
    }

    /// Fills `u` as `u.virq`.
    pub fn set_virq(&mut self, virq: u32) {
        self.status = EVTCHNSTAT_VIRQ;
        self.u = [virq, 0];
    }
}

/// `struct evtchn_bind_vcpu`: make `port` notify `vcpu` (not for IPI or per-vCPU VIRQ
/// ports, whose binding is fixed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindVcpu {
    /// IN.
    pub port: EvtchnPort,
    /// IN.
    pub vcpu: u32,
}

/// `struct evtchn_unmask`: unmask `port` and deliver a notification if it is pending.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnUnmask {
    /// IN.
    pub port: EvtchnPort,
}

/// `struct evtchn_reset`: close all event channels of `dom`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnReset {
    /// IN (may be `DOMID_SELF`).
    pub dom: DomId,
}

/// `struct evtchn_init_control`: set up the FIFO ABI control block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnInitControl {
    /// IN: frame of the control block.
    pub control_gfn: u64,
    /// IN: offset of the control block in that frame.
    pub offset: u32,
    /// IN.
    pub vcpu: u32,
    /// OUT.
    pub link_bits: u8,
    /// `_pad`.
    pub _pad: [u8; 7],
}

/// `struct evtchn_expand_array`: add a page to the FIFO event array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnExpandArray {
    /// IN.
    pub array_gfn: u64,
}

/// `struct evtchn_set_priority` (FIFO ABI).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnSetPriority {
    /// IN.
    pub port: EvtchnPort,
    /// IN: 0 (highest) to 15 (lowest).
    pub priority: u32,
}

/// `EVTCHN_2L_NR_CHANNELS`: ports of the 2-level ABI,
/// `sizeof(xen_ulong_t) * sizeof(xen_ulong_t) * 64` (4096 on x86_64).
pub const EVTCHN_2L_NR_CHANNELS: u32 = 8 * 8 * 64;

/// `EVTCHN_FIFO_PRIORITY_MAX` (highest priority).
pub const EVTCHN_FIFO_PRIORITY_MAX: u32 = 0;
/// `EVTCHN_FIFO_PRIORITY_DEFAULT`.
pub const EVTCHN_FIFO_PRIORITY_DEFAULT: u32 = 7;
/// `EVTCHN_FIFO_PRIORITY_MIN` (lowest priority).
pub const EVTCHN_FIFO_PRIORITY_MIN: u32 = 15;
/// `EVTCHN_FIFO_MAX_QUEUES`.
pub const EVTCHN_FIFO_MAX_QUEUES: usize = EVTCHN_FIFO_PRIORITY_MIN as usize + 1;
/// `EVTCHN_FIFO_PENDING`: bit number in an `event_word_t`.
pub const EVTCHN_FIFO_PENDING: u32 = 31;
/// `EVTCHN_FIFO_MASKED`: bit number.
pub const EVTCHN_FIFO_MASKED: u32 = 30;
/// `EVTCHN_FIFO_LINKED`: bit number.
pub const EVTCHN_FIFO_LINKED: u32 = 29;
/// `EVTCHN_FIFO_BUSY`: bit number.
pub const EVTCHN_FIFO_BUSY: u32 = 28;
/// `EVTCHN_FIFO_LINK_BITS`.
pub const EVTCHN_FIFO_LINK_BITS: u32 = 17;
/// `EVTCHN_FIFO_LINK_MASK`.
pub const EVTCHN_FIFO_LINK_MASK: u32 = (1 << EVTCHN_FIFO_LINK_BITS) - 1;
/// `EVTCHN_FIFO_NR_CHANNELS`.
pub const EVTCHN_FIFO_NR_CHANNELS: u32 = 1 << EVTCHN_FIFO_LINK_BITS;

/// `struct evtchn_fifo_control_block`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnFifoControlBlock {
    /// `ready`: one bit per queue.
    pub ready: u32,
    /// `_rsvd`.
    pub _rsvd: u32,
    /// `head[EVTCHN_FIFO_MAX_QUEUES]`.
    pub head: [u32; EVTCHN_FIFO_MAX_QUEUES],
}

pod_bytes!(EvtchnAllocUnbound {
    dom,
    remote_dom,
    port
});
pod_bytes!(EvtchnBindInterdomain {
    remote_dom,
    _pad,
    remote_port,
    local_port,
});
pod_bytes!(EvtchnBindVirq { virq, vcpu, port });
pod_bytes!(EvtchnBindPirq { pirq, flags, port });
pod_bytes!(EvtchnBindIpi { vcpu, port });
pod_bytes!(EvtchnClose { port });
pod_bytes!(EvtchnSend { port });
pod_bytes!(EvtchnStatus {
    dom,
    _pad,
    port,
    status,
    vcpu,
    u
});
pod_bytes!(EvtchnBindVcpu { port, vcpu });
pod_bytes!(EvtchnUnmask { port });
pod_bytes!(EvtchnReset { dom });
pod_bytes!(EvtchnInitControl {
    control_gfn,
    offset,
    vcpu,
    link_bits,
    _pad,
});
pod_bytes!(EvtchnExpandArray { array_gfn });
pod_bytes!(EvtchnSetPriority { port, priority });
pod_bytes!(EvtchnFifoControlBlock { ready, _rsvd, head });

const _: () = assert!(core::mem::size_of::<EvtchnAllocUnbound>() == 8);
const _: () = assert!(core::mem::offset_of!(EvtchnAllocUnbound, port) == 4);
const _: () = assert!(core::mem::size_of::<EvtchnBindInterdomain>() == 12);
const _: () = assert!(core::mem::offset_of!(EvtchnBindInterdomain, remote_port) == 4);
const _: () = assert!(core::mem::size_of::<EvtchnBindVirq>() == 12);
const _: () = assert!(core::mem::size_of::<EvtchnBindPirq>() == 12);
const _: () = assert!(core::mem::size_of::<EvtchnBindIpi>() == 8);
const _: () = assert!(core::mem::size_of::<EvtchnClose>() == 4);
const _: () = assert!(core::mem::size_of::<EvtchnSend>() == 4);
const _: () = assert!(core::mem::size_of::<EvtchnStatus>() == 24);
const _: () = assert!(core::mem::offset_of!(EvtchnStatus, port) == 4);
const _: () = assert!(core::mem::offset_of!(EvtchnStatus, u) == 16);
const _: () = assert!(core::mem::align_of::<EvtchnStatus>() == 4);
const _: () = assert!(core::mem::size_of::<EvtchnBindVcpu>() == 8);
const _: () = assert!(core::mem::size_of::<EvtchnUnmask>() == 4);
const _: () = assert!(core::mem::size_of::<EvtchnReset>() == 2);
const _: () = assert!(core::mem::size_of::<EvtchnInitControl>() == 24);
const _: () = assert!(core::mem::offset_of!(EvtchnInitControl, link_bits) == 16);
const _: () = assert!(core::mem::size_of::<EvtchnExpandArray>() == 8);
const _: () = assert!(core::mem::size_of::<EvtchnSetPriority>() == 8);
const _: () = assert!(core::mem::size_of::<EvtchnFifoControlBlock>() == 72);
// 2-level: one PENDING bit per port in shared_info's 64 words of 64 bits.
const _: () = assert!(EVTCHN_2L_NR_CHANNELS as usize == super::xen::EVTCHN_WORDS * 64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::xen::DOMID_SELF;

    #[test]
    fn bind_interdomain_has_the_c_padding() {
        let op = EvtchnBindInterdomain {
            remote_dom: 0x1234,
            remote_port: 7,
            local_port: 9,
            ..Default::default()
        };
        let b = op.to_bytes();
        assert_eq!(b, [0x34, 0x12, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0]);
        assert_eq!(EvtchnBindInterdomain::from_bytes(&b), op);
    }

    #[test]
    fn status_union_members_sit_where_c_puts_them() {
        let mut st = EvtchnStatus {
            dom: DOMID_SELF,
            port: 3,
            ..Default::default()
        };
        st.set_interdomain(5, 42);
        let b = st.to_bytes();
        // u.interdomain.dom at offset 16, u.interdomain.port at offset 20.
        assert_eq!(&b[16..18], &5u16.to_le_bytes());
        assert_eq!(&b[20..24], &42u32.to_le_bytes());
        let back = EvtchnStatus::from_bytes(&b);
        assert_eq!(back.interdomain(), Some((5, 42)));
        assert_eq!(back.virq(), None);

        st.set_virq(crate::abi::xen::VIRQ_DEBUG);
        assert_eq!(&st.to_bytes()[16..20], &1u32.to_le_bytes());
        assert_eq!(st.virq(), Some(1));
        assert_eq!(st.unbound_dom(), None);
    }
}
