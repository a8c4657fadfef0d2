//! `xen/include/public/sched.h`: scheduler operations
//! (`HYPERVISOR_sched_op(cmd, arg)`): yield, block, poll, and shutdown.

use super::event_channel::EvtchnPort;
use super::xen::DomId;

/// `SCHEDOP_yield`: arg is NULL.
pub const SCHEDOP_YIELD: u32 = 0;
/// `SCHEDOP_block`: block until an event is received; arg is NULL. Called with upcalls
/// masked, it atomically re-enables delivery and checks for pending events first,
/// which avoids the "wakeup waiting" race.
pub const SCHEDOP_BLOCK: u32 = 1;
/// `SCHEDOP_shutdown`: arg is [`SchedShutdown`].
pub const SCHEDOP_SHUTDOWN: u32 = 2;
/// `SCHEDOP_poll`: arg is [`SchedPoll`].
pub const SCHEDOP_POLL: u32 = 3;
/// `SCHEDOP_remote_shutdown`: arg is [`SchedRemoteShutdown`].
pub const SCHEDOP_REMOTE_SHUTDOWN: u32 = 4;
/// `SCHEDOP_shutdown_code`: arg is [`SchedShutdown`].
pub const SCHEDOP_SHUTDOWN_CODE: u32 = 5;
/// `SCHEDOP_watchdog`: arg is [`SchedWatchdog`].
pub const SCHEDOP_WATCHDOG: u32 = 6;
/// `SCHEDOP_pin_override` (hardware domain only).
pub const SCHEDOP_PIN_OVERRIDE: u32 = 7;

/// `SHUTDOWN_poweroff`: domain exited normally. Clean up and kill.
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// `SHUTDOWN_reboot`: clean up, kill, and then restart.
pub const SHUTDOWN_REBOOT: u32 = 1;
/// `SHUTDOWN_suspend`: clean up, save suspend info, kill.
pub const SHUTDOWN_SUSPEND: u32 = 2;
/// `SHUTDOWN_crash`: tell controller we've crashed.
pub const SHUTDOWN_CRASH: u32 = 3;
/// `SHUTDOWN_watchdog`: restart because watchdog time expired.
pub const SHUTDOWN_WATCHDOG: u32 = 4;
/// `SHUTDOWN_soft_reset`: reset Xen's state for the domain, keeping its memory.
pub const SHUTDOWN_SOFT_RESET: u32 = 5;
/// `SHUTDOWN_MAX`: maximum valid shutdown reason.
pub const SHUTDOWN_MAX: u32 = 5;

/// `struct sched_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

/// `struct sched_poll`: block until one or more of `nr_ports` ports is pending, with an
/// optional `timeout` (the header gives no unit; Xen's implementation treats it as an
/// absolute system time in ns, 0 meaning none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedPoll {
    /// `XEN_GUEST_HANDLE(evtchn_port_t)`: guest address of an array of
    /// [`EvtchnPort`].
    pub ports: u64,
    /// Entries in `ports`.
    pub nr_ports: u32,
    /// Implicit C padding before the 8-byte timeout.
    pub _pad: u32,
    /// Timeout.
    pub timeout: u64,
}

/// `struct sched_remote_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedRemoteShutdown {
    /// Domain to shut down.
    pub domain_id: DomId,
    /// Implicit C padding.
    pub _pad: u16,
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

/// `struct sched_watchdog`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedWatchdog {
    /// Watchdog id (0: create one).
    pub id: u32,
    /// New timeout (0 with a non-zero id: destroy the watchdog).
    pub timeout: u32,
}

pod_bytes!(SchedShutdown { reason });
pod_bytes!(SchedPoll {
    ports,
    nr_ports,
    _pad,
    timeout
});
pod_bytes!(SchedRemoteShutdown {
    domain_id,
    _pad,
    reason
});
pod_bytes!(SchedWatchdog { id, timeout });

const _: () = assert!(core::mem::size_of::<SchedShutdown>() == 4);
const _: () = assert!(core::mem::size_of::<SchedPoll>() == 24);
const _: () = assert!(core::mem::offset_of!(SchedPoll, nr_ports) == 8);
const _: () = assert!(core::mem::offset_of!(SchedPoll, timeout) == 16);
const _: () = assert!(core::mem::size_of::<SchedRemoteShutdown>() == 8);
const _: () = assert!(core::mem::size_of::<SchedWatchdog>() == 8);
const _: () = assert!(core::mem::size_of::<EvtchnPort>() == 4);
