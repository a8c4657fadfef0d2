//! Device events, the clock and waiting, for every kind of device: a [`DeviceEvent`] is
//! set by a Xen event channel's handler (PV devices), by an IOAPIC line's interrupt
//! (emulated devices, `interrupts::route_gsi`) or by a message-signalled interrupt's
//! vector (virtio devices with MSI-X, `interrupts::route_msi`), and [`wait_for_event`]
//! halts until it is set or a deadline passes.
//!
//! Time: with Xen, [`now_ns`] is Xen system time (pvclock) and the wake-up at the
//! deadline is Xen's single-shot timer, as the PV path always had; Xen time is what that
//! timer takes, and it stays right across the TSC scaling Xen may apply. Without Xen the
//! clock is the TSC calibrated at boot (`time.rs`) and the wake-up is the local APIC
//! timer (TSC-deadline or one-shot). Either way the timer is re-armed when it fired
//! before the deadline (Xen fires within its slop of 50 us, and the APIC's count mode
//! is only as exact as its calibration), so a wait never halts without a wake-up armed.
//!
//! Events can be lost (issue #6: a nested hypervisor sometimes drops a wake-up), so a
//! wait also returns at its deadline, and the callers poll then as well and count a
//! *recovery* when such a poll found work that no event announced.

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use pv_drivers::hypercall::XenHypercalls as _;

use super::{apic, arch, interrupts, ioapic, time, xen};

/// Vector of the local APIC timer that ends a wait without Xen.
pub const WAIT_TIMER_VECTOR: u8 = 0xf0;

/// No IOAPIC pin is masked awaiting [`DeviceEvent::rearm`].
const NO_PIN: u32 = u32::MAX;

/// The shared state of a [`DeviceEvent`]; interrupt handlers reach it through a raw
/// `Arc` pointer (`interrupts::route_gsi`).
#[derive(Default)]
pub struct EventState {
    pending: AtomicBool,
    count: AtomicU64,
    /// The level-triggered IOAPIC pin the handler masked, [`NO_PIN`] if none.
    masked_pin: AtomicU32,
}

impl EventState {
    /// Records an event (from an interrupt handler).
    pub fn set(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.pending.store(true, Ordering::Release);
    }

    /// Records that the handler masked level-triggered `pin` (the device still asserts
    /// its line until the driver acknowledges it); [`DeviceEvent::rearm`] unmasks it.
    pub fn masked(&self, pin: u8) {
        self.masked_pin.store(u32::from(pin), Ordering::Release);
    }
}

/// A device's event latch, shared by its interrupt or event-channel handler and the
/// code waiting for it.
#[derive(Clone)]
pub struct DeviceEvent {
    state: Arc<EventState>,
}

impl Default for DeviceEvent {
    fn default() -> Self {
        Self {
            state: Arc::new(EventState {
                masked_pin: AtomicU32::new(NO_PIN),
                ..Default::default()
            }),
        }
    }
}

impl DeviceEvent {
    /// Takes the pending flag: whether an event arrived since the last call.
    pub fn take(&self) -> bool {
        self.state.pending.swap(false, Ordering::AcqRel)
    }

    /// Whether an event is pending (without taking it).
    pub fn is_pending(&self) -> bool {
        self.state.pending.load(Ordering::Acquire)
    }

    /// Events received so far.
    pub fn count(&self) -> u64 {
        self.state.count.load(Ordering::Relaxed)
    }

    /// Call after each poll of the device (once its driver has acknowledged what the
    /// device raised): unmasks the level-triggered IOAPIC pin that the interrupt handler
    /// masked. If the device still asserts the line, the IOAPIC delivers it again. A
    /// no-op for Xen events and edge-triggered lines.
    pub fn rearm(&self) {
        let pin = self.state.masked_pin.swap(NO_PIN, Ordering::AcqRel);
        if let Ok(pin) = u8::try_from(pin) {
            ioapic::unmask(pin);
        }
    }

    /// The shared state, for the interrupt registry.
    pub(super) fn state(&self) -> &Arc<EventState> {
        &self.state
    }

    /// An event-channel handler that sets this event.
    pub(super) fn handler(&self) -> pv_drivers::evtchn::Handler {
        let me = self.clone();
        Box::new(move |_| me.state.set())
    }
}

/// Why a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woken {
    /// The device's event arrived.
    Event,
    /// The deadline passed first.
    Deadline,
}

/// Set by the APIC wait timer's interrupt.
static APIC_TIMER_FIRED: AtomicBool = AtomicBool::new(false);

fn on_wait_timer(_: &mut interrupts::TrapFrame) {
    APIC_TIMER_FIRED.store(true, Ordering::Release);
}

/// Installs the APIC wait timer's handler (after `interrupts::init`).
pub fn init() {
    interrupts::register(WAIT_TIMER_VECTOR, on_wait_timer);
}

/// Nanoseconds: Xen system time under Xen, else TSC time since calibration (0 if
/// neither clock exists).
pub fn now_ns() -> u64 {
    match xen::get() {
        Some(x) => x.now_ns(),
        None => time::now_ns().unwrap_or(0),
    }
}

/// A seed that differs between boots (for TCP sequence numbers).
pub fn boot_entropy() -> u64 {
    arch::rdtsc() ^ now_ns().rotate_left(29)
}

/// The timer that ends a wait.
enum WakeTimer {
    Xen(&'static xen::Xen),
    Apic,
}

impl WakeTimer {
    fn pick() -> Option<Self> {
        match xen::get() {
            Some(x) if x.timer_port().is_some() => Some(Self::Xen(x)),
            // Xen time and TSC time both count nanoseconds: the APIC timer armed for the
            // span left wakes a Xen guest without the timer VIRQ as well.
            _ if time::clock().is_some() => Some(Self::Apic),
            _ => None,
        }
    }

    /// Arms the timer for `deadline_ns` (`now_ns` is the current [`now_ns`]).
    fn arm(&self, now_ns: u64, deadline_ns: u64) -> bool {
        match self {
            Self::Xen(x) => {
                x.timer_fired_at.store(0, Ordering::Release);
                x.hv.vcpu_set_singleshot_timer(0, deadline_ns, false)
                    .is_ok()
            }
            Self::Apic => {
                APIC_TIMER_FIRED.store(false, Ordering::Release);
                apic::oneshot(WAIT_TIMER_VECTOR, deadline_ns.saturating_sub(now_ns).max(1)).is_ok()
            }
        }
    }

    /// Whether it fired since it was armed.
    fn fired(&self) -> bool {
        match self {
            Self::Xen(x) => x.timer_fired_at.load(Ordering::Acquire) != 0,
            Self::Apic => APIC_TIMER_FIRED.load(Ordering::Acquire),
        }
    }
}

/// Halts until `ev` fires or [`now_ns`] reaches `deadline_ns` (a timer wakes the CPU
/// then). Other interrupts wake the CPU too; the loop halts again.
///
/// Without any timer (no Xen timer and no calibrated TSC, so no clock either) this only
/// looks at the event: the caller's loop is then a poll.
pub fn wait_for_event(ev: &DeviceEvent, deadline_ns: u64) -> Woken {
    let Some(timer) = WakeTimer::pick() else {
        return if ev.take() {
            Woken::Event
        } else {
            Woken::Deadline
        };
    };
    let mut armed = false;
    loop {
        // Interrupts off between the checks and `hlt`: `sti; hlt` enables them only
        // after the `hlt` starts, so an event arriving after the check still wakes us.
        arch::cli();
        if ev.take() {
            arch::sti();
            return Woken::Event;
        }
        let now = now_ns();
        if now >= deadline_ns {
            arch::sti();
            return Woken::Deadline;
        }
        // (Re-)arm when not armed yet, or when the timer fired before the deadline.
        if !armed || timer.fired() {
            armed = timer.arm(now, deadline_ns);
        }
        if armed {
            arch::sti_hlt();
        } else {
            // The timer refused (a failed hypercall): look again, interrupts on.
            arch::sti();
            core::hint::spin_loop();
        }
    }
}
