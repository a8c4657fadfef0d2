//! The Xen platform: detection, the hypercall page, shared_info, event channels, grant
//! tables, pvclock and the timer, xenstore, the PV console, and shutdown.
//!
//! The same code runs on real Xen (PVH domU) and under host-shim: it follows the ABI
//! (`arch-x86/cpuid.h`, `xen.h`, `event_channel.h`, `grant_table.h`, `hvm/params.h`),
//! never a particular implementation. All protocol logic lives in `pv-drivers`; this
//! module supplies the hardware side (CPUID, MSR, `call` into the hypercall page,
//! interrupts, frames) and the one global instance.

use alloc::boxed::Box;
use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pv_drivers::abi::cpuid::{
    HYPERCALL_STUB_SIZE, LEAF_HVM, LEAF_HYPERCALL, LEAF_TIME, LEAF_VERSION, XEN_CPUID_FIRST_LEAF,
    XEN_CPUID_SCAN_END, XEN_CPUID_SCAN_STEP, XEN_HVM_CPUID_DOMID_PRESENT, is_xen_signature,
};
use pv_drivers::abi::hvm::{
    HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN,
    HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN, hvm_callback_via_vector,
};
use pv_drivers::abi::xen::{DomId, VIRQ_TIMER};
use pv_drivers::console::ConsoleFront;
use pv_drivers::evtchn::{GuestEvents, HandlerRegistry, Unmask};
use pv_drivers::grant::GrantTable;
use pv_drivers::hypercall::{Hypercall, HypercallError, XenHypercalls};
use pv_drivers::pvclock;
use pv_drivers::shmem::RawSharedMemory;
use pv_drivers::xenstore::{WaitOutcome, XenStore, XsEvents};
use spin::{Mutex, Once};

use super::{arch, interrupts, memory};

/// The interrupt vector Xen raises for event-channel upcalls.
pub const UPCALL_VECTOR: u8 = 0xf3;

/// Grant-table frames the guest maps (1024 references).
pub const GRANT_FRAMES: u64 = 2;

/// How long a xenstore wait may take before the client gives up on the backend.
const XS_WAIT_NS: u64 = 10_000_000_000;

/// What CPUID says about Xen.
#[derive(Debug, Clone, Copy)]
pub struct XenCpuid {
    /// The base leaf (0x4000_0000, or higher behind another hypervisor's leaves).
    pub base: u32,
    /// Xen's major version.
    pub major: u16,
    /// Xen's minor version.
    pub minor: u16,
    /// The hypercall-page MSR.
    pub msr: u32,
    /// The guest's domain id, if the HVM leaf reports it.
    pub domid: Option<DomId>,
    /// The guest TSC frequency from the time leaf, if reported.
    pub tsc_khz: Option<u32>,
}

/// Looks for Xen's CPUID leaves: `XenVMMXenVMM` at a 0x100-aligned base from
/// 0x4000_0000 up to 0x4001_0000.
pub fn detect() -> Option<XenCpuid> {
    let (_, _, ecx, _) = arch::cpuid(1, 0);
    if ecx & (1 << 31) == 0 {
        return None; // no hypervisor
    }
    let mut base = XEN_CPUID_FIRST_LEAF;
    while base < XEN_CPUID_SCAN_END {
        let (max, ebx, ecx, edx) = arch::cpuid(base, 0);
        if is_xen_signature(ebx, ecx, edx) && max >= base + LEAF_HYPERCALL {
            let (version, ..) = arch::cpuid(base + LEAF_VERSION, 0);
            let (pages, msr, ..) = arch::cpuid(base + LEAF_HYPERCALL, 0);
            if pages == 0 {
                return None;
            }
            let tsc_khz = (max >= base + LEAF_TIME)
                .then(|| {
                    let (_, _, khz, _) = arch::cpuid(base + LEAF_TIME, 0);
                    let (_, _, mul, shift) = arch::cpuid(base + LEAF_TIME, 1);
                    pvclock::tsc_khz_from_cpuid(khz, mul, shift)
                })
                .flatten();
            let domid = (max >= base + LEAF_HVM)
                .then(|| arch::cpuid(base + LEAF_HVM, 0))
                .filter(|&(flags, ..)| flags & XEN_HVM_CPUID_DOMID_PRESENT != 0)
                .map(|(_, _, ecx, _)| ecx as DomId);
            return Some(XenCpuid {
                base,
                major: (version >> 16) as u16,
                minor: version as u16,
                msr,
                domid,
                tsc_khz,
            });
        }
        base += XEN_CPUID_SCAN_STEP;
    }
    None
}

/// Calls through the hypercall page.
#[derive(Debug, Clone, Copy)]
pub struct HypercallPage {
    page: u64,
}

// SAFETY: `hypercall` performs exactly the requested hypercall through the page the
// hypervisor filled (Xen or host-shim): `call page + 32 * nr` with the x86_64
// argument registers, returning `rax` unchanged.
unsafe impl Hypercall for HypercallPage {
    unsafe fn hypercall(&self, nr: u32, args: [u64; 5]) -> i64 {
        if u64::from(nr) >= 4096 / HYPERCALL_STUB_SIZE {
            return -38; // -ENOSYS: no such stub
        }
        let entry = self.page + u64::from(nr) * HYPERCALL_STUB_SIZE;
        let ret: i64;
        // SAFETY: `entry` is a stub in the hypercall page the hypervisor filled; the
        // caller guarantees the pointer arguments (see the trait). The argument
        // registers are marked clobbered because debug builds of Xen poison them.
        unsafe {
            asm!(
                "call {entry}",
                entry = in(reg) entry,
                inlateout("rax") 0u64 => ret,
                inlateout("rdi") args[0] => _,
                inlateout("rsi") args[1] => _,
                inlateout("rdx") args[2] => _,
                inlateout("r10") args[3] => _,
                inlateout("r8") args[4] => _,
                out("rcx") _,
                out("r11") _,
            );
        }
        ret
    }
}

/// The platform, once [`init`] ran.
pub struct Xen {
    /// What CPUID said.
    pub cpuid: XenCpuid,
    /// The hypercall page.
    pub hv: HypercallPage,
    /// Our domain id (from CPUID, else xenstore's `domid`).
    pub domid: Option<DomId>,
    shared: &'static RawSharedMemory,
    events: GuestEvents<&'static RawSharedMemory>,
    registry: Mutex<HandlerRegistry>,
    /// The grant table.
    pub grants: Mutex<GrantTable<RawSharedMemory>>,
    /// The xenstore client.
    pub store: Mutex<Option<XenStore<Box<RawSharedMemory>, StoreEvents>>>,
    /// The PV console.
    pub console: Mutex<Option<ConsoleFront<RawSharedMemory>>>,
    console_port: u32,
    store_port: u32,
    timer_port: Option<u32>,
    /// Set by the timer's event handler: the pvclock time it ran at.
    pub timer_fired_at: AtomicU64,
    /// System time never goes back, even when Xen's per-CPU time records disagree.
    clock: pvclock::MonotonicClock,
    /// Upcalls taken.
    pub upcalls: AtomicU64,
    /// Times the xenstore client waited for the daemon.
    pub store_waits: AtomicU64,
    /// Times such a wait woke up (from `SCHEDOP_poll`), event or not.
    pub store_wakeups: AtomicU64,
    /// When set, [`Xen::store_wait_until`] records the clock it sees (diagnostics).
    pub wait_trace: Mutex<Option<WaitTrace>>,
}

/// What [`Xen::store_wait_until`] saw of the clock while a trace was armed: each
/// distinct time record once (up to [`WaitTrace::MAX_RECORDS`]), with the TSC and the
/// raw (unclamped) reading at that moment, and how often the TSC read was behind the
/// record's own timestamp (the record then extrapolates no time at all).
#[derive(Debug, Default)]
pub struct WaitTrace {
    /// `(wake-up number, TSC, record, raw system time)` for each new record version.
    pub records: alloc::vec::Vec<(u64, u64, pv_drivers::abi::xen::VcpuTimeInfo, u64)>,
    /// Wake-ups at which the TSC was below the record's `tsc_timestamp`.
    pub tsc_behind: u64,
    /// Wake-ups recorded.
    pub wakeups: u64,
}

impl WaitTrace {
    /// Records kept.
    pub const MAX_RECORDS: usize = 8;

    fn observe(&mut self, shared: &RawSharedMemory) {
        self.wakeups += 1;
        let Ok(info) = pvclock::read_time_info(shared, 0) else {
            return;
        };
        let tsc = arch::rdtsc();
        if tsc < info.tsc_timestamp {
            self.tsc_behind += 1;
        }
        let new = self
            .records
            .last()
            .is_none_or(|(_, _, last, _)| last.version != info.version);
        if new && self.records.len() < Self::MAX_RECORDS {
            let raw = pvclock::system_time_at(&info, tsc);
            self.records.push((self.wakeups, tsc, info, raw));
        }
    }
}

impl core::fmt::Display for WaitTrace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} wake-ups, TSC behind the record at {}",
            self.wakeups, self.tsc_behind
        )?;
        for (wake, tsc, r, raw) in &self.records {
            write!(
                f,
                "; #{wake} tsc {tsc} v{} stamp {} sys {} mul {} shift {} flags {:#x} raw {raw}",
                r.version,
                r.tsc_timestamp,
                r.system_time,
                r.tsc_to_system_mul,
                r.tsc_shift,
                r.flags
            )?;
        }
        Ok(())
    }
}

static XEN: Once<Xen> = Once::new();
static STORE_EVENT: AtomicBool = AtomicBool::new(false);
/// Events on the xenstore port so far (never consumed: devices following their
/// backends compare it with what they saw last, see `pv_drivers::follow`).
static STORE_ACTIVITY: AtomicU64 = AtomicU64::new(0);

/// Events on the xenstore port so far.
pub fn store_activity() -> u64 {
    STORE_ACTIVITY.load(Ordering::Acquire)
}

/// The platform, if the kernel runs on Xen and [`init`] succeeded.
pub fn get() -> Option<&'static Xen> {
    XEN.get()
}

/// Why the Xen platform could not be brought up.
#[derive(Debug)]
pub enum InitError {
    /// No free frame for a Xen page.
    NoFrames,
    /// A hypercall failed.
    Hypercall(&'static str, HypercallError),
    /// A pv-drivers structure refused the memory it was given.
    Setup(&'static str),
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NoFrames => f.write_str("out of frames"),
            InitError::Hypercall(what, e) => write!(f, "{what}: {e}"),
            InitError::Setup(what) => write!(f, "cannot set up {what}"),
        }
    }
}

fn alloc_frame() -> Result<u64, InitError> {
    let frame = memory::FRAMES
        .lock()
        .as_mut()
        .and_then(|f| f.alloc())
        .ok_or(InitError::NoFrames)?;
    // SAFETY: a frame fresh from the allocator belongs to us; it is RAM mapped at its
    // physical address.
    unsafe { core::ptr::write_bytes(frame as *mut u8, 0, 4096) };
    Ok(frame)
}

/// A guest page as shared memory.
///
/// # Safety
///
/// `addr..addr + len` must be identity-mapped memory this kernel gave up to sharing
/// (never used as ordinary Rust data), for the rest of the kernel's life.
unsafe fn share(addr: u64, len: usize) -> RawSharedMemory {
    // SAFETY: forwarded from the caller.
    unsafe { RawSharedMemory::new(addr as *mut u8, len) }
}

/// Brings up the Xen platform: hypercall page, shared_info, event upcall, grant table,
/// timer VIRQ, PV console, xenstore. Call with interrupts enabled-able (after the IDT
/// and LAPIC are set up).
pub fn init(cpuid: XenCpuid) -> Result<&'static Xen, InitError> {
    let hc = |what| move |e| InitError::Hypercall(what, e);
    // Hypercall page: the hypervisor fills it on the MSR write.
    let page = alloc_frame()?;
    // SAFETY: the MSR is the one CPUID names for this; the page is ours.
    unsafe { arch::wrmsr(cpuid.msr, page) };
    let hv = HypercallPage { page };
    hv.xen_version().map_err(hc("xen_version"))?;
    super::console::xen_hypercalls_ready(hv);

    // shared_info at a frame we give up.
    let si = alloc_frame()?;
    hv.map_shared_info(si >> 12)
        .map_err(hc("map shared_info"))?;
    // SAFETY: `si` is a frame now owned by Xen's shared_info mapping, never used as
    // Rust data again; the reference lives forever (leaked box).
    let shared: &'static RawSharedMemory = Box::leak(Box::new(unsafe { share(si, 4096) }));
    let events = GuestEvents::new(shared, 0).map_err(|_| InitError::Setup("events"))?;
    // Only ports we bind may interrupt us.
    events.mask_all();

    // Grant table frames.
    let gt = memory::FRAMES
        .lock()
        .as_mut()
        .and_then(|f| f.alloc_contiguous(GRANT_FRAMES, 4096))
        .ok_or(InitError::NoFrames)?;
    for i in 0..GRANT_FRAMES {
        hv.map_grant_table_frame(i, (gt >> 12) + i)
            .map_err(hc("map grant table"))?;
    }
    // SAFETY: frames given to the grant table, shared with Xen from now on.
    let grants = GrantTable::new(unsafe { share(gt, (GRANT_FRAMES * 4096) as usize) })
        .map_err(|_| InitError::Setup("grant table"))?;

    let store_pfn = hv
        .hvm_get_param(HVM_PARAM_STORE_PFN)
        .map_err(hc("store pfn"))?;
    let store_port = hv
        .hvm_get_param(HVM_PARAM_STORE_EVTCHN)
        .map_err(hc("store evtchn"))? as u32;
    let console_pfn = hv.hvm_get_param(HVM_PARAM_CONSOLE_PFN).unwrap_or(0);
    let console_port = hv.hvm_get_param(HVM_PARAM_CONSOLE_EVTCHN).unwrap_or(0) as u32;

    let timer_port = hv.evtchn_bind_virq(VIRQ_TIMER, 0).ok();

    let console = if console_pfn != 0 && console_port != 0 {
        // SAFETY: the toolstack's console page, reserved in the memory map (never RAM
        // the allocator hands out), shared with the console daemon.
        ConsoleFront::new(unsafe { share(console_pfn << 12, 4096) }).ok()
    } else {
        None
    };

    let xen = XEN.call_once(|| Xen {
        cpuid,
        hv,
        domid: cpuid.domid,
        shared,
        events,
        registry: Mutex::new(HandlerRegistry::new()),
        grants: Mutex::new(grants),
        store: Mutex::new(None),
        console: Mutex::new(console),
        console_port,
        store_port,
        timer_port,
        timer_fired_at: AtomicU64::new(0),
        clock: pvclock::MonotonicClock::new(),
        upcalls: AtomicU64::new(0),
        store_waits: AtomicU64::new(0),
        store_wakeups: AtomicU64::new(0),
        wait_trace: Mutex::new(None),
    });

    // Upcall: the per-vCPU vector, or the older callback-via-vector parameter.
    interrupts::register(UPCALL_VECTOR, upcall);
    if hv.hvm_set_evtchn_upcall_vector(0, UPCALL_VECTOR).is_err() {
        hv.hvm_set_param(
            HVM_PARAM_CALLBACK_IRQ,
            hvm_callback_via_vector(UPCALL_VECTOR),
        )
        .map_err(hc("set upcall vector"))?;
    }
    xen.bind(
        store_port,
        Box::new(|_| {
            STORE_ACTIVITY.fetch_add(1, Ordering::AcqRel);
            STORE_EVENT.store(true, Ordering::Release);
        }),
    );
    if let Some(port) = timer_port {
        xen.bind(
            port,
            Box::new(|_| {
                if let Some(x) = get() {
                    x.timer_fired_at.store(x.now_ns(), Ordering::Release);
                }
            }),
        );
    }
    arch::sti();

    if xen.console.lock().is_some() {
        super::console::xen_ring_ready();
    }

    if store_pfn != 0 {
        // SAFETY: the toolstack's xenstore page, reserved in the memory map, shared
        // with xenstored.
        let page = Box::new(unsafe { share(store_pfn << 12, 4096) });
        match XenStore::connect(page, StoreEvents { port: store_port }) {
            Ok(store) => *xen.store.lock() = Some(store),
            Err(e) => log::warn!("xen: xenstore: {e}"),
        }
    }
    Ok(xen)
}

fn upcall(_frame: &mut interrupts::TrapFrame) {
    if let Some(x) = get() {
        x.upcalls.fetch_add(1, Ordering::Relaxed);
        // The registry lock is only taken with interrupts off elsewhere, so this
        // cannot deadlock against the interrupted code.
        let summary = x.events.dispatch(&mut x.registry.lock());
        let _ = summary;
    }
}

impl Xen {
    /// Our domain id: from CPUID if the HVM leaf reports it (real Xen and host-shim
    /// do; the flag is optional, and QEMU's Xen emulation leaves it out), else from
    /// xenstore's `domid` under our home. `None` if neither says.
    pub fn domain_id(&self) -> Option<DomId> {
        if let Some(d) = self.domid {
            return Some(d);
        }
        let raw = self
            .store
            .lock()
            .as_mut()?
            .read(pv_drivers::xenstore::TxId::NONE, "domid")
            .ok()?;
        core::str::from_utf8(&raw).ok()?.trim().parse().ok()
    }

    /// Xen system time (pvclock), in ns.
    ///
    /// Monotonic: without `XEN_PVCLOCK_TSC_STABLE_BIT` a vCPU moved to another physical
    /// CPU reads that CPU's record, which may be behind (see
    /// [`pvclock::MonotonicClock`]). A record that cannot be read consistently (the
    /// hypervisor never finishes an update) yields the last time handed out.
    pub fn now_ns(&self) -> u64 {
        self.clock
            .system_time_now(self.shared, 0, arch::rdtsc)
            .unwrap_or_else(|_| self.clock.clamp(0))
    }

    /// The wallclock: Unix time in ns now, if published.
    pub fn unix_time_ns(&self) -> Option<u64> {
        pvclock::read_wallclock(self.shared)
            .ok()?
            .unix_ns_at(self.now_ns())
    }

    /// Routes events on `port` to `handler` and unmasks the port.
    pub fn bind(&self, port: u32, handler: pv_drivers::evtchn::Handler) {
        without_interrupts(|| {
            let _ = self.registry.lock().register(port, handler);
        });
        self.unmask(port);
    }

    /// Stops routing `port`, masking it.
    pub fn unbind(&self, port: u32) {
        let _ = self.events.mask(port);
        without_interrupts(|| {
            let _ = self.registry.lock().unregister(port);
        });
    }

    /// Unmasks `port`; a pending event is re-raised through `EVTCHNOP_unmask`.
    pub fn unmask(&self, port: u32) {
        if let Ok(Unmask::NeedsHypercall) = self.events.unmask(port) {
            let _ = self.hv.evtchn_unmask(port);
        }
    }

    /// The port bound to `VIRQ_TIMER`.
    pub fn timer_port(&self) -> Option<u32> {
        self.timer_port
    }

    /// Events delivered and spurious, from the handler registry.
    pub fn event_counts(&self) -> (u64, u64) {
        without_interrupts(|| {
            let r = self.registry.lock();
            (r.delivered(), r.spurious())
        })
    }

    /// Writes `bytes` to the PV console ring, notifying the backend; waits (bounded) for
    /// room. Returns how much was written.
    pub fn console_write(&self, bytes: &[u8]) -> usize {
        match self.console.lock().as_mut() {
            Some(con) => self.ring_write(con, bytes),
            None => 0,
        }
    }

    /// [`Xen::console_write`] unless the ring is locked (by the code a panic or an
    /// exception interrupted): then nothing is written.
    pub fn try_console_write(&self, bytes: &[u8]) -> usize {
        match self.console.try_lock() {
            Some(mut guard) => guard.as_mut().map_or(0, |con| self.ring_write(con, bytes)),
            None => 0,
        }
    }

    fn ring_write(&self, con: &mut ConsoleFront<RawSharedMemory>, bytes: &[u8]) -> usize {
        let mut done = 0;
        let mut idle_rounds = 0u32;
        while done < bytes.len() && idle_rounds < 1_000_000 {
            match con.write(&bytes[done..]) {
                Ok(0) => {
                    let _ = self.hv.evtchn_send(self.console_port);
                    idle_rounds += 1;
                    core::hint::spin_loop();
                }
                Ok(n) => done += n,
                Err(_) => break,
            }
        }
        let _ = self.hv.evtchn_send(self.console_port);
        done
    }
}

/// The xenstore client's environment: notify by `EVTCHNOP_send`; wait, blocked in
/// `SCHEDOP_poll` on the store port, for its handler to latch an event, bounded by
/// pvclock time.
pub struct StoreEvents {
    port: u32,
}

impl XsEvents for StoreEvents {
    fn notify(&mut self) {
        if let Some(x) = get() {
            let _ = x.hv.evtchn_send(self.port);
        }
    }

    fn wait(&mut self) -> WaitOutcome {
        let Some(x) = get() else {
            return WaitOutcome::TimedOut;
        };
        x.store_wait_until(x.now_ns().saturating_add(XS_WAIT_NS))
    }
}

impl Xen {
    /// Waits, blocked in `SCHEDOP_poll` on the xenstore port, until the port's handler
    /// latched an event or pvclock time `deadline` passed. Consumes the latched event.
    pub fn store_wait_until(&self, deadline: u64) -> WaitOutcome {
        self.store_waits.fetch_add(1, Ordering::Relaxed);
        loop {
            // Interrupts stay off from the check to the poll: an event that arrives in
            // between stays pending in shared_info (its handler cannot run and clear
            // it), so the poll returns at once instead of sleeping to the deadline.
            arch::cli();
            if STORE_EVENT.swap(false, Ordering::AcqRel) {
                arch::sti();
                return WaitOutcome::Event;
            }
            if self.now_ns() >= deadline {
                arch::sti();
                return WaitOutcome::TimedOut;
            }
            // Returns when the store port is pending, at the deadline, or spuriously
            // (the ABI allows it; the shim wakes every few milliseconds).
            let polled = self.hv.sched_poll(&[self.store_port], deadline);
            // Back before the deadline with nothing for us: a spurious return. QEMU's
            // Xen emulation (KVM's in-kernel SCHEDOP_poll) returns at once every time
            // while its view of shared_info is stale, which would make this loop a
            // spin; so the rest of this round sleeps in `hlt` until an event or the
            // single-shot timer at the deadline (interrupts stay off until the `hlt`).
            if polled.is_ok()
                && self.timer_port.is_some()
                && !self.events.is_pending(self.store_port).unwrap_or(true)
                && self.now_ns() < deadline
                && self
                    .hv
                    .vcpu_set_singleshot_timer(0, deadline, false)
                    .is_ok()
            {
                x86_64::instructions::interrupts::enable_and_hlt();
            }
            // The pending event's upcall runs here and latches STORE_EVENT.
            arch::sti();
            self.store_wakeups.fetch_add(1, Ordering::Relaxed);
            if let Some(Some(trace)) = self.wait_trace.try_lock().as_deref_mut() {
                trace.observe(self.shared);
            }
            if polled.is_err() {
                // A hypervisor without SCHEDOP_poll: this becomes a busy wait, still
                // bounded by the deadline.
                core::hint::spin_loop();
            }
        }
    }
}

fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(f)
}

/// Ends the domain through Xen: `SCHEDOP_shutdown` with `reason`. Returns only if the
/// hypercall fails.
pub fn shutdown(reason: u32) {
    if let Some(x) = get() {
        let _ = x.hv.sched_shutdown(reason);
    }
}
