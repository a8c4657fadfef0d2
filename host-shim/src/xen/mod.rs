//! The shim's implementation of the Xen interface for one PVH guest.
//!
//! The guest finds Xen through CPUID ([`cpuid_leaves`]), installs the hypercall page
//! through the MSR those leaves name ([`Xen::write_msr`]), and calls hypercalls through
//! it; the stubs ([`hypercall_page`]) exit to the shim with a port read that the vCPU
//! loop hands to [`Xen::hypercall`]. Where KVM's Xen support intercepts `vmcall`
//! (stock Linux calls Xen that way), those calls reach the same dispatcher, and for
//! such a guest KVM is handed its timer and its sends to domain 0
//! ([`Xen::kvm_xen_sync`]). A 32-bit caller's registers and structures are read in
//! Xen's compat layouts ([`compat`]), and shared_info takes the 32-bit layout for it.
//! Everything the guest passes is checked: every argument, guest address, length, port
//! and grant reference; garbage gets a Xen errno.
//!
//! The shim plays domain 0: xenstored, the console backend and the PV backends are its
//! domain-0 ports ([`evtchn`]). Events to the guest set bits in its shared_info page and
//! vCPU 0's `vcpu_info` (wherever the guest placed it) and raise its upcall vector
//! through the in-kernel LAPIC.
//!
//! Threads: the vCPU thread runs hypercalls; the timer thread, backend threads and the
//! relays of KVM-delivered sends raise events. All state is behind one mutex; notifiers
//! of domain-0 ports run after it is released.

mod backend;
pub mod compat;
pub mod console;
pub mod evtchn;
pub mod grant;
pub mod guest_mem;
pub mod hypercall;
pub mod hypercall_page;
pub mod store;
pub mod xenstored;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use pv_drivers::abi::cpuid::{
    LEAF_HVM, LEAF_HYPERCALL, LEAF_SIGNATURE, LEAF_TIME, LEAF_VERSION, XEN_CPUID_SIGNATURE_EBX,
    XEN_CPUID_SIGNATURE_ECX, XEN_CPUID_SIGNATURE_EDX, XEN_HVM_CPUID_DOMID_PRESENT,
    XEN_HVM_CPUID_UPCALL_VECTOR, XEN_HVM_CPUID_VCPU_ID_PRESENT, XEN_HVM_CPUID_X2APIC_VIRT,
};
use pv_drivers::abi::xen::DomId;
use pv_drivers::evtchn::SharedInfoAbi;
use pv_drivers::shmem::{RawSharedMemory, SharedMemory};

use crate::kvm::{CpuidLeaf, HYPERVISOR_CPUID_BASE, Interrupter};
use evtchn::{Binding, DOM0_PORTS, GUEST_PORTS, Notifier, PortTable};
pub use grant::GrantMapping;
use guest_mem::{GuestRam, SharedPage};

/// The Xen version the shim reports (4.17, the version Debian bookworm ships).
pub const XEN_VERSION: (u16, u16) = (4, 17);

/// The MSR through which the guest installs the hypercall page (CPUID base+2 `EBX`).
pub const HYPERCALL_MSR: u32 = 0x4000_0000;

/// Grant-table frames the guest may map (Xen's default `max_grant_frames` is 64).
pub const MAX_GRANT_FRAMES: u32 = 64;

/// The domain id the shim gives the guest (Xen's toolstack starts domUs at 1).
pub const DEFAULT_DOMID: DomId = 1;

/// Longest a `SCHEDOP_block` waits before returning (a spurious wake is allowed by the
/// ABI; the bound lets the vCPU loop notice a stop request and in-kernel LAPIC
/// interrupts, which the shim cannot see).
pub const BLOCK_SLICE: Duration = Duration::from_millis(10);

/// What the guest is called and how it is numbered.
#[derive(Debug, Clone)]
pub struct XenConfig {
    /// The guest's domain id (1..0x7ff0).
    pub domid: DomId,
    /// The guest's name in xenstore.
    pub name: String,
    /// The vCPU's TSC frequency, reported in the time leaf and used for pvclock.
    pub tsc_khz: u32,
    /// Pages of RAM the guest has (`XENMEM_current_reservation`).
    pub ram_pages: u64,
    /// The highest guest frame number of RAM (`XENMEM_maximum_gpfn`).
    pub max_gpfn: u64,
    /// Guest-physical address of the xenstore ring page.
    pub store_page: u64,
    /// Guest-physical address of the PV console ring page.
    pub console_page: u64,
}

/// The toolstack-provided rings and their event channels (HVM params).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Special {
    /// `HVM_PARAM_STORE_PFN`.
    pub store_pfn: u64,
    /// `HVM_PARAM_STORE_EVTCHN` (guest side).
    pub store_port: u32,
    /// Domain 0's end of the xenstore channel.
    pub store_dom0_port: u32,
    /// `HVM_PARAM_CONSOLE_PFN`.
    pub console_pfn: u64,
    /// `HVM_PARAM_CONSOLE_EVTCHN` (guest side).
    pub console_port: u32,
    /// Domain 0's end of the console channel.
    pub console_dom0_port: u32,
}

/// Xen's CPUID leaves at [`HYPERVISOR_CPUID_BASE`] for a guest with `config`.
pub fn cpuid_leaves(config: &XenConfig) -> Vec<CpuidLeaf> {
    let base = HYPERVISOR_CPUID_BASE;
    let leaf = |n: u32, regs| CpuidLeaf {
        function: base + n,
        index: None,
        regs,
    };
    let sub = |n: u32, index, regs| CpuidLeaf {
        function: base + n,
        index: Some(index),
        regs,
    };
    let (major, minor) = XEN_VERSION;
    let tsc_scale = pv_drivers::pvclock::TscScale::from_khz(config.tsc_khz.into())
        .map_or((0, 0), |s| (s.mul, s.shift as u8 as u32));
    vec![
        leaf(
            LEAF_SIGNATURE,
            [
                base + LEAF_HVM,
                XEN_CPUID_SIGNATURE_EBX,
                XEN_CPUID_SIGNATURE_ECX,
                XEN_CPUID_SIGNATURE_EDX,
            ],
        ),
        leaf(
            LEAF_VERSION,
            [u32::from(major) << 16 | u32::from(minor), 0, 0, 0],
        ),
        leaf(LEAF_HYPERCALL, [1, HYPERCALL_MSR, 0, 0]),
        // Time (`arch-x86/cpuid.h`): subleaf 0 TSC not emulated, tsc_mode 2 ("never
        // emulate"), guest TSC kHz; subleaf 1 the guest TSC's offset (none) and its
        // TSC-to-ns scale, the same `mul`/`shift` as the pvclock records; subleaf 2 the
        // host TSC kHz.
        sub(LEAF_TIME, 0, [0, 2, config.tsc_khz, 0]),
        sub(LEAF_TIME, 1, [0, 0, tsc_scale.0, tsc_scale.1]),
        sub(LEAF_TIME, 2, [config.tsc_khz, 0, 0, 0]),
        leaf(
            LEAF_HVM,
            [
                XEN_HVM_CPUID_X2APIC_VIRT
                    | XEN_HVM_CPUID_VCPU_ID_PRESENT
                    | XEN_HVM_CPUID_DOMID_PRESENT
                    | XEN_HVM_CPUID_UPCALL_VECTOR,
                0,
                u32::from(config.domid),
                0,
            ],
        ),
    ]
}

/// Counters for `--stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct XenStats {
    /// Hypercalls by name (`"event_channel_op.send"` style for multiplexed ones).
    pub hypercalls: BTreeMap<String, u64>,
    /// Hypercalls that returned an error.
    pub hypercall_errors: u64,
    /// Hypercalls preempted with work left and continued by the guest running them
    /// again (each run counts in `hypercalls`).
    pub hypercall_continuations: u64,
    /// The entries of multicalls, by name as in `hypercalls` (each multicall counts
    /// once there, as `"multicall"`).
    pub multicall_entries: BTreeMap<String, u64>,
    /// Events the guest sent to domain 0 (xenstored, console, backends) through the
    /// shim's dispatcher.
    pub events_to_dom0: u64,
    /// Events the guest sent to domain 0 that KVM's Xen support delivered to an
    /// eventfd without a user exit (`kvm_handles` has `evtchn_send`).
    pub events_to_dom0_in_kernel: u64,
    /// Events set pending for the guest.
    pub events_to_guest: u64,
    /// Upcall interrupts injected into the guest.
    pub upcalls_injected: u64,
    /// Upcalls the guest's LAPIC refused (not yet enabled), then retried.
    pub upcalls_refused: u64,
    /// Timer expiries delivered.
    pub timer_fires: u64,
    /// Whether `vmcall`/`vmmcall` reach the shim (KVM's Xen support intercepts them);
    /// hypercalls through the hypercall page always do.
    pub vmcall_intercepted: bool,
    /// What KVM's Xen support handles in the kernel for this guest ("timer": its
    /// `vmcall`s for the Xen timer never reach the shim, and KVM raises `VIRQ_TIMER`).
    pub kvm_handles: Vec<String>,
    /// Grant mappings domain 0 holds now ([`Xen::grant_map`]).
    pub grant_maps: u64,
    /// Grant accesses refused (by a backend's copy or mapping, or the guest's own
    /// `GNTTABOP_copy`): a reference outside the table, not granted to the accessor,
    /// read-only for a write, revoked, naming a frame that is not RAM, or a copy
    /// beyond its page.
    pub grant_refusals: u64,
    /// xenstored's counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xenstore: Option<xenstored::XenstoredStats>,
}

/// Why a guest MSR write was refused (the guest takes #GP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("MSR write refused: {0}")]
pub struct MsrRefused(pub &'static str);

/// Why the guest asked to stop (`SCHEDOP_shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownRequest {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

/// The guest's reservation: which RAM pages it gave back
/// (`XENMEM_decrease_reservation`) and how many it allocated without a place in its
/// physical address space (`XENMEM_increase_reservation` of a translated guest).
#[derive(Debug, Default)]
struct Reservation {
    released: BTreeSet<u64>,
    floating: u64,
}

impl Reservation {
    /// Pages the guest holds (`XENMEM_current_reservation`).
    fn current(&self, config: &XenConfig) -> u64 {
        (config.ram_pages + self.floating).saturating_sub(self.released.len() as u64)
    }

    /// Allocates `pages` unplaced pages if that stays within the maximum reservation.
    fn allocate(&mut self, config: &XenConfig, pages: u64) -> bool {
        if self.current(config).saturating_add(pages) > config.ram_pages {
            return false;
        }
        self.floating += pages;
        true
    }
}

/// What the shim asks KVM's Xen support to take over, so that the guest's `vmcall`s
/// for it are handled in the kernel without a user exit. The vCPU thread applies them
/// ([`Xen::kvm_xen_sync`], then [`Xen::kvm_xen_applied`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmXenRequest {
    /// The shared_info page's frame and layout.
    SharedInfo {
        /// Its guest frame.
        gfn: u64,
        /// The 64-bit layout.
        long_mode: bool,
    },
    /// vCPU 0's `vcpu_info` address (KVM then keeps its pvclock record there).
    VcpuInfo(u64),
    /// vCPU 0's upcall vector.
    UpcallVector(u8),
    /// The guest's `VIRQ_TIMER` port (0: none): KVM runs the Xen timer.
    Timer(u32),
    /// The guest's sends on `port`, bound to domain 0's `dom0_port`, signal an eventfd
    /// whose reader runs that port's notifier ([`Xen::dom0_notifier`]).
    EvtchnSend {
        /// The guest's port.
        port: u32,
        /// Domain 0's end.
        dom0_port: u32,
    },
    /// The guest's sends on `port` reach the shim again.
    EvtchnUnsend(u32),
}

impl KvmXenRequest {
    /// Its name in `--stats` (`xen.kvm_handles`).
    pub fn name(self) -> &'static str {
        match self {
            Self::SharedInfo { .. } => "shared_info",
            Self::VcpuInfo(_) => "vcpu_info",
            Self::UpcallVector(_) => "upcall_vector",
            Self::Timer(_) => "timer",
            Self::EvtchnSend { .. } | Self::EvtchnUnsend(_) => "evtchn_send",
        }
    }
}

/// What KVM's Xen support has been given ([`KvmXenRequest`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct KvmXenState {
    /// The shim may hand work to KVM (its Xen support intercepts `vmcall`, and
    /// `--no-kvm-xen-accel` was not given).
    allowed: bool,
    shared_info: Option<(u64, bool)>,
    vcpu_info: Option<u64>,
    upcall_vector: Option<u8>,
    timer_port: u32,
    /// KVM writes the pvclock record into `vcpu_info`: the shim must not.
    owns_time: bool,
    /// Guest ports whose sends KVM turns into an eventfd signal, and domain 0's end.
    sends: BTreeMap<u32, u32>,
}

/// The vCPU's registered runstate area (`VCPUOP_register_runstate_memory_area`).
#[derive(Debug, Clone, Copy)]
struct Runstate {
    /// Its guest-virtual address, translated with `paging` (the page tables in force
    /// when it was registered: a kernel address stays mapped) at every update.
    gva: u64,
    paging: crate::kvm::PagingState,
    /// Written in the 32-bit layout.
    compat: bool,
    /// `RUNSTATE_*` now, since `entry_ns` (Xen system time).
    state: u32,
    entry_ns: u64,
    /// Nanoseconds spent in each state before `entry_ns`.
    time: [u64; 4],
}

/// Everything behind the lock.
struct State {
    /// The hypercall page's address and the mode its stubs were written for.
    hypercall_page: Option<(u64, hypercall::Mode)>,
    /// The `shared_info` layout, latched from the guest's mode when it installs the
    /// hypercall page or sets `HVM_PARAM_CALLBACK_IRQ` (Xen's `hvm_latch_shinfo_size`).
    shinfo_abi: SharedInfoAbi,
    shared_info: Option<SharedPage>,
    /// vCPU 0's `vcpu_info` where the guest placed it (`VCPUOP_register_vcpu_info`): its
    /// page and the offset in it. `None`: `shared_info.vcpu_info[0]`.
    vcpu_info: Option<(SharedPage, usize)>,
    /// Ports raised before the guest mapped shared_info (Xen keeps the bits in a page
    /// that exists from the start; the shim keeps them here until there is one).
    early_pending: Vec<u32>,
    upcall_vector: Option<u8>,
    /// An upcall the vCPU's LAPIC refused (software-disabled early in boot): retried
    /// until it is taken, as Xen's vLAPIC keeps the vector in IRR until the guest
    /// enables its APIC.
    upcall_owed: bool,
    callback_via: u64,
    guest_ports: PortTable<()>,
    dom0_ports: PortTable<Option<Notifier>>,
    grants: grant::Grants,
    timer_deadline: Option<u64>,
    timer_period: Option<u64>,
    shutdown: Option<ShutdownRequest>,
    stopping: bool,
    reservation: Reservation,
    runstate: Option<Runstate>,
    /// `vm_assist` types enabled (bit per `VMASST_TYPE_*`).
    vm_assist: u64,
    kvm: KvmXenState,
    stats: XenStats,
}

/// The Xen interface of one guest.
pub struct Xen {
    config: XenConfig,
    special: Special,
    ram: GuestRam,
    irq: Interrupter,
    /// Host time at Xen system time 0.
    epoch: Instant,
    /// The guest's TSC at Xen system time 0 (read just before `epoch`, so that the
    /// shim's clock lags the guest's by a few microseconds rather than leading it: a
    /// timer then fires a little late, never early).
    tsc_epoch: u64,
    /// TSC ticks to nanoseconds, as published in `vcpu_time_info`.
    scale: pv_drivers::pvclock::TscScale,
    state: Mutex<State>,
    /// Signalled when an event is raised for the guest or the timer changes.
    wake: Condvar,
    /// xenstored, once attached.
    store: std::sync::OnceLock<Arc<Mutex<store::StoreService>>>,
    /// The guest was told once that a hypercall came from the wrong mode for its page.
    warned_mode_mismatch: std::sync::atomic::AtomicBool,
}

impl Xen {
    /// The Xen side of a guest with `config`, whose RAM is `ram`; `guest_tsc` is the
    /// guest's TSC now, which becomes Xen system time 0.
    pub fn new(
        config: XenConfig,
        ram: GuestRam,
        irq: Interrupter,
        guest_tsc: u64,
    ) -> Result<Arc<Self>, String> {
        let scale = pv_drivers::pvclock::TscScale::from_khz(config.tsc_khz.into())
            .map_err(|e| format!("TSC frequency {} kHz: {e}", config.tsc_khz))?;
        let mut guest_ports = PortTable::new(GUEST_PORTS);
        let mut dom0_ports = PortTable::new(DOM0_PORTS);
        // As Xen's toolstack does before the guest starts: a channel each for xenstore
        // and the console, already bound by their domain-0 daemons.
        let mut connect = || {
            let guest = guest_ports.alloc(Binding::Unbound { remote: 0 }, ())?;
            let dom0 =
                backend::join_dom0(&mut guest_ports, &mut dom0_ports, config.domid, guest, None)?;
            Some((guest, dom0))
        };
        // Fresh tables have thousands of free ports.
        let (store_port, store_dom0_port) = connect().unwrap_or((0, 0));
        let (console_port, console_dom0_port) = connect().unwrap_or((0, 0));
        let special = Special {
            store_pfn: config.store_page / guest_mem::PAGE_SIZE,
            store_port,
            store_dom0_port,
            console_pfn: config.console_page / guest_mem::PAGE_SIZE,
            console_port,
            console_dom0_port,
        };
        Ok(Arc::new(Self {
            config,
            special,
            ram,
            irq,
            tsc_epoch: guest_tsc,
            scale,
            epoch: Instant::now(),
            state: Mutex::new(State {
                hypercall_page: None,
                shinfo_abi: SharedInfoAbi::Long,
                shared_info: None,
                vcpu_info: None,
                early_pending: Vec::new(),
                upcall_vector: None,
                upcall_owed: false,
                callback_via: 0,
                guest_ports,
                dom0_ports,
                grants: grant::Grants::new(grant::GrantFrames::new()),
                timer_deadline: None,
                timer_period: None,
                shutdown: None,
                stopping: false,
                reservation: Reservation::default(),
                runstate: None,
                vm_assist: 0,
                kvm: KvmXenState::default(),
                stats: XenStats::default(),
            }),
            wake: Condvar::new(),
            store: std::sync::OnceLock::new(),
            warned_mode_mismatch: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Writes vCPU 0's `vcpu_time_info` and the wallclock into shared_info.
    fn publish_time_locked(&self, st: &mut State) {
        use pv_drivers::pvclock::{WallClock, write_time_info, write_wallclock_in};
        let Some(shared) = st.shared_info.as_ref() else {
            return;
        };
        let info = self.scale.time_info(
            self.tsc_epoch,
            0,
            pv_drivers::abi::xen::XEN_PVCLOCK_TSC_STABLE_BIT,
        );
        if !st.kvm.owns_time {
            let _ = write_time_info(shared.mem(), 0, &info);
        }
        if !st.kvm.owns_time
            && let Some((page, offset)) = st.vcpu_info.as_ref()
        {
            pv_drivers::pvclock::write_time_info_at(page.mem(), offset + VCPU_INFO_TIME, &info);
        }
        // The wall time at which system time was 0.
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Duration::from_nanos(self.now_ns()));
        let _ = write_wallclock_in(
            shared.mem(),
            WallClock {
                sec: since_epoch.as_secs(),
                nsec: since_epoch.subsec_nanos(),
            },
            st.shinfo_abi,
        );
    }

    /// The guest's domain id.
    pub fn domid(&self) -> DomId {
        self.config.domid
    }

    /// The configuration.
    pub fn config(&self) -> &XenConfig {
        &self.config
    }

    /// The guest's RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The xenstore and console rings and their channels.
    pub fn special(&self) -> Special {
        self.special
    }

    /// Sets what runs when the guest signals domain-0 port `dom0_port`.
    pub fn set_dom0_notifier(&self, dom0_port: u32, notify: Notifier) -> bool {
        let mut st = self.lock();
        let Some(binding) = st.dom0_ports.get(dom0_port) else {
            return false;
        };
        st.dom0_ports.close(dom0_port);
        // Reopen at the same number: `alloc` takes the lowest free port, which is this
        // one only if all below are open; set the slot directly instead.
        st.dom0_ports.set(dom0_port, binding, Some(notify))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a shim bug; the state itself stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Xen system time: nanoseconds since the VM started.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A copy of the counters.
    pub fn stats(&self) -> XenStats {
        let mut stats = self.lock().stats.clone();
        stats.xenstore = self.xenstore_stats();
        stats
    }

    /// The guest's shutdown request, once it made one.
    pub fn shutdown_request(&self) -> Option<ShutdownRequest> {
        self.lock().shutdown
    }

    /// Tells waiting threads (the timer, a blocked vCPU) to finish.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.wake.notify_all();
    }

    /// The one-shot timer's deadline (Xen system time), for tests.
    #[cfg(test)]
    pub(crate) fn timer_deadline(&self) -> Option<u64> {
        self.lock().timer_deadline
    }

    /// Handles a guest `wrmsr` to a Xen MSR, made by code in `mode` (the hypercall
    /// page's stubs are written for that mode). `Err` makes the guest take #GP, as Xen
    /// does for a bad page index or an address that is not RAM.
    pub fn write_msr(
        &self,
        index: u32,
        value: u64,
        mode: hypercall::Mode,
    ) -> Result<(), MsrRefused> {
        if index != HYPERCALL_MSR {
            return Err(MsrRefused("not a Xen MSR"));
        }
        // Bits 0..12 select the hypercall page (only page 0 exists).
        if value & 0xfff != 0 {
            return Err(MsrRefused("no such hypercall page"));
        }
        let gpa = value & !0xfff;
        if !self.ram.is_ram(gpa, guest_mem::PAGE_SIZE) {
            return Err(MsrRefused("hypercall page address is not RAM"));
        }
        self.ram
            .write_phys(gpa, &hypercall_page::hypercall_page(mode))
            .map_err(|_| MsrRefused("hypercall page address is not RAM"))?;
        let mut st = self.lock();
        st.hypercall_page = Some((gpa, mode));
        self.latch_shinfo_abi_locked(&mut st, mode);
        Ok(())
    }

    /// Signals the guest end of domain-0 port `dom0_port` (a backend's
    /// `EVTCHNOP_send`). False if the port is not connected to the guest.
    pub fn notify_guest(&self, dom0_port: u32) -> bool {
        let mut st = self.lock();
        match st.dom0_ports.get(dom0_port) {
            Some(Binding::Interdomain { dom, port }) if dom == self.config.domid => {
                self.raise_locked(&mut st, port);
                true
            }
            _ => false,
        }
    }

    /// Sets `port` pending for the guest and injects the upcall if that is due.
    fn raise_locked(&self, st: &mut State, port: u32) {
        st.stats.events_to_guest += 1;
        if st.shared_info.is_none() {
            if !st.early_pending.contains(&port) {
                st.early_pending.push(port);
            }
            self.wake.notify_all();
            return;
        }
        let inject = Self::events_locked(st)
            .and_then(|ev| ev.set_pending(port, 0).ok())
            .is_some_and(|r| r.must_inject());
        if inject || (st.upcall_owed && Self::upcall_pending_locked(st)) {
            self.inject_upcall_locked(st);
        }
        self.wake.notify_all();
    }

    /// Lets the shim hand the Xen timer and event delivery for it to KVM's Xen support
    /// (which must intercept `vmcall`), for a guest that calls Xen with `vmcall` rather
    /// than through the hypercall page.
    pub fn allow_kvm_xen(&self) {
        self.lock().kvm.allowed = true;
    }

    /// What KVM's Xen support should be told now, after a `vmcall` hypercall: the
    /// differences between the guest's Xen state and what KVM was given. Nothing for a
    /// guest that installed the hypercall page (its hypercalls never reach KVM's
    /// handlers), or before it has a shared_info page.
    pub fn kvm_xen_sync(&self) -> Vec<KvmXenRequest> {
        let st = self.lock();
        let k = &st.kvm;
        let Some(shared) = st.shared_info.as_ref() else {
            return Vec::new();
        };
        if !k.allowed || st.hypercall_page.is_some() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let long_mode = st.shinfo_abi == SharedInfoAbi::Long;
        let shared_gfn = shared.gpa() / guest_mem::PAGE_SIZE;
        if k.shared_info != Some((shared_gfn, long_mode)) {
            out.push(KvmXenRequest::SharedInfo {
                gfn: shared_gfn,
                long_mode,
            });
        }
        let vcpu_info = st
            .vcpu_info
            .as_ref()
            .map_or(shared.gpa(), |(page, offset)| page.gpa() + *offset as u64);
        if k.vcpu_info != Some(vcpu_info) {
            out.push(KvmXenRequest::VcpuInfo(vcpu_info));
        }
        if let Some(v) = st.upcall_vector
            && k.upcall_vector != Some(v)
        {
            out.push(KvmXenRequest::UpcallVector(v));
        }
        let timer = st
            .guest_ports
            .find_virq(pv_drivers::abi::xen::VIRQ_TIMER)
            .unwrap_or(0);
        if k.timer_port != timer {
            out.push(KvmXenRequest::Timer(timer));
        }
        // Guest ports connected to a domain-0 port with a notifier (a backend, the
        // console, xenstored).
        let wanted: BTreeMap<u32, u32> = st
            .guest_ports
            .bindings()
            .filter_map(|(port, b)| match b {
                Binding::Interdomain { dom: 0, port: d }
                    if matches!(st.dom0_ports.payload(d), Some(Some(_))) =>
                {
                    Some((port, d))
                }
                _ => None,
            })
            .collect();
        for (&port, &d) in &k.sends {
            if wanted.get(&port) != Some(&d) {
                out.push(KvmXenRequest::EvtchnUnsend(port));
            }
        }
        for (&port, &dom0_port) in &wanted {
            if k.sends.get(&port) != Some(&dom0_port) {
                out.push(KvmXenRequest::EvtchnSend { port, dom0_port });
            }
        }
        out
    }

    /// Domain 0's notifier for `dom0_port` (what a guest send on its peer runs).
    pub fn dom0_notifier(&self, dom0_port: u32) -> Option<Notifier> {
        self.lock().dom0_ports.payload(dom0_port).cloned().flatten()
    }

    /// Counts a guest send that KVM delivered to a domain-0 eventfd.
    pub fn count_in_kernel_send(&self) {
        self.lock().stats.events_to_dom0_in_kernel += 1;
    }

    /// Records that KVM took `req` (`ok`) or refused it (then the shim keeps doing it,
    /// and says so once on stderr).
    pub fn kvm_xen_applied(&self, req: KvmXenRequest, ok: Result<(), String>) {
        let mut st = self.lock();
        if let Err(e) = ok {
            if st.kvm.allowed {
                eprintln!(
                    "host-shim: warning: KVM's Xen support refused {} ({e}); the shim keeps \
                     handling it",
                    req.name()
                );
            }
            st.kvm.allowed = false;
            return;
        }
        match req {
            KvmXenRequest::SharedInfo { gfn, long_mode } => {
                st.kvm.shared_info = Some((gfn, long_mode));
            }
            KvmXenRequest::VcpuInfo(gpa) => {
                st.kvm.vcpu_info = Some(gpa);
                st.kvm.owns_time = true;
            }
            KvmXenRequest::UpcallVector(v) => st.kvm.upcall_vector = Some(v),
            KvmXenRequest::EvtchnSend { port, dom0_port } => {
                st.kvm.sends.insert(port, dom0_port);
            }
            KvmXenRequest::EvtchnUnsend(port) => {
                st.kvm.sends.remove(&port);
            }
            KvmXenRequest::Timer(port) => {
                st.kvm.timer_port = port;
                // KVM runs the timer: the shim's own one stays idle.
                st.timer_deadline = None;
                st.timer_period = None;
            }
        }
        let name = req.name().to_owned();
        let handles = &mut st.stats.kvm_handles;
        if !handles.contains(&name) {
            handles.push(name);
            handles.sort();
        }
    }

    /// Xen's `hvm_latch_shinfo_size`: the guest's mode now decides the `shared_info`
    /// layout (and how many event channels it has); the wallclock is rewritten there.
    fn latch_shinfo_abi_locked(&self, st: &mut State, mode: hypercall::Mode) {
        let abi = match mode {
            hypercall::Mode::Long => SharedInfoAbi::Long,
            hypercall::Mode::Compat => SharedInfoAbi::Compat,
        };
        if abi == st.shinfo_abi || !st.guest_ports.set_ports(abi.ports() as u32) {
            return;
        }
        st.shinfo_abi = abi;
        self.publish_time_locked(st);
    }

    /// The host's view of the guest's event channels: shared_info's bitmaps and vCPU
    /// 0's `vcpu_info` wherever the guest placed it. `None` before shared_info exists.
    fn events_locked(st: &State) -> Option<pv_drivers::evtchn::HostEvents<&RawSharedMemory>> {
        let shared = st.shared_info.as_ref()?.mem();
        match st.vcpu_info.as_ref() {
            Some((page, offset)) => {
                pv_drivers::evtchn::HostEvents::with_vcpu0_info(shared, page.mem(), *offset)
            }
            None => pv_drivers::evtchn::HostEvents::new(shared),
        }
        .ok()
        .map(|ev| ev.with_abi(st.shinfo_abi))
    }

    /// vCPU 0's `vcpu_info`: its memory and offset.
    fn vcpu0_info_locked(st: &State) -> Option<(&RawSharedMemory, usize)> {
        match (st.vcpu_info.as_ref(), st.shared_info.as_ref()) {
            (Some((page, offset)), _) => Some((page.mem(), *offset)),
            (None, Some(shared)) => Some((shared.mem(), 0)),
            (None, None) => None,
        }
    }

    fn inject_upcall_locked(&self, st: &mut State) {
        let vector = st.upcall_vector.or_else(|| {
            let (kind, value) = pv_drivers::abi::hvm::hvm_callback_decode(st.callback_via);
            (kind == pv_drivers::abi::hvm::HVM_PARAM_CALLBACK_TYPE_VECTOR && value >= 0x10)
                .then_some(value as u8)
        });
        let Some(vector) = vector else {
            return;
        };
        // KVM drops a fixed interrupt to a software-disabled LAPIC (`Ok(false)`).
        if self.irq.send_vector(0, vector).unwrap_or(false) {
            st.stats.upcalls_injected += 1;
            st.upcall_owed = false;
        } else {
            if !st.upcall_owed {
                st.stats.upcalls_refused += 1;
            }
            st.upcall_owed = true;
        }
    }

    /// Whether the guest has an event waiting (vCPU 0's `evtchn_upcall_pending`).
    fn upcall_pending_locked(st: &State) -> bool {
        Self::vcpu0_info_locked(st).is_some_and(|(mem, at)| {
            mem.load_u8(
                at + VCPU_INFO_UPCALL_PENDING,
                std::sync::atomic::Ordering::Acquire,
            ) != 0
        })
    }

    /// Expires the guest's timer if due; returns how long until it next needs a look.
    pub fn run_timer(&self) -> Option<Duration> {
        let mut st = self.lock();
        // An upcall the LAPIC refused is retried every slice until it is taken.
        let retry = if st.upcall_owed {
            if Self::upcall_pending_locked(&st) {
                self.inject_upcall_locked(&mut st);
            } else {
                st.upcall_owed = false;
            }
            st.upcall_owed.then_some(BLOCK_SLICE)
        } else {
            None
        };
        let Some(deadline) = st.timer_deadline else {
            return retry;
        };
        let now = self.now_ns();
        if now < deadline {
            let wait = Duration::from_nanos(deadline - now);
            return Some(retry.map_or(wait, |r| r.min(wait)));
        }
        st.timer_deadline = st.timer_period.map(|p| now.saturating_add(p));
        st.stats.timer_fires += 1;
        if let Some(port) = st.guest_ports.find_virq(pv_drivers::abi::xen::VIRQ_TIMER) {
            self.raise_locked(&mut st, port);
        }
        let next = st
            .timer_deadline
            .map(|d| Duration::from_nanos(d.saturating_sub(now)));
        match (next, st.upcall_owed.then_some(BLOCK_SLICE)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timer thread's body: sleeps until the guest's timer is due and delivers it,
    /// until [`Xen::stop`].
    pub fn timer_thread(&self) {
        let mut st = self.lock();
        loop {
            if st.stopping {
                return;
            }
            drop(st);
            let wait = self.run_timer();
            st = self.lock();
            if st.stopping {
                return;
            }
            st = match wait {
                Some(d) => {
                    self.wake
                        .wait_timeout(st, d)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.wake.wait(st).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// Offsets in `struct vcpu_info`: the upcall flags and the time record.
const VCPU_INFO_UPCALL_PENDING: usize = 0;
const VCPU_INFO_UPCALL_MASK: usize = 1;
const VCPU_INFO_TIME: usize = 32;
