//! The one door to KVM: everything that names `kvm_ioctls` or `kvm_bindings` is here.
//!
//! [`Vm`] creates the VM with an in-kernel irqchip (PIC, IOAPIC, LAPIC) and PIT, maps guest
//! memory, wires eventfds to interrupt lines and creates vCPUs in a given
//! [`CpuStartState`]. [`Vcpu::run`] enters the guest and decodes the exit into the shim's
//! own [`VcpuExit`], so the run loop and the devices never see a KVM type.
//!
//! Interrupt lines ([`Vm::irq_line`]) drive GSIs with `KVM_IRQ_LINE`. The GSI routing is
//! QEMU's for the `pc` machine: GSI 0 (the in-kernel PIT) reaches IOAPIC pin 2, as the
//! 8254 does on a PC and as the MP table says (ISA IRQ 0 -> INTIN2); GSI 2 is the 8259
//! cascade and reaches nothing; every other GSI n < 16 goes to 8259 input n and IOAPIC
//! pin n, and GSIs 16..24 to IOAPIC pins 16..24 only.
//!
//! vCPU setup follows Firecracker: CPUID from `KVM_GET_SUPPORTED_CPUID` with the APIC IDs
//! (leaf 1 `EBX[31:24]`, leaves 0xb/0x1f `EDX`) set to the vCPU's id, the LAPIC's LINT0
//! in ExtINT mode (the 8259 PIC's output) and LINT1 in NMI mode, as on a PC.

use std::ffi::CStr;
use std::fmt;
use std::os::fd::FromRawFd as _;

use kvm_bindings::{
    KVM_EXIT_DEBUG, KVM_EXIT_EXCEPTION, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_HYPERCALL,
    KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR, KVM_EXIT_IO, KVM_EXIT_IO_OUT, KVM_EXIT_IOAPIC_EOI,
    KVM_EXIT_IRQ_WINDOW_OPEN, KVM_EXIT_MEMORY_FAULT, KVM_EXIT_MMIO, KVM_EXIT_NMI, KVM_EXIT_NOTIFY,
    KVM_EXIT_SET_TPR, KVM_EXIT_SHUTDOWN, KVM_EXIT_SYSTEM_EVENT, KVM_EXIT_TPR_ACCESS,
    KVM_EXIT_UNKNOWN, KVM_EXIT_X86_RDMSR, KVM_EXIT_X86_WRMSR, KVM_EXIT_XEN, KVM_EXIT_XEN_HCALL,
    KVM_MAX_CPUID_ENTRIES, KVM_MSR_EXIT_REASON_FILTER, KVM_PIT_SPEAKER_DUMMY,
    KVM_XEN_ATTR_TYPE_EVTCHN, KVM_XEN_ATTR_TYPE_LONG_MODE, KVM_XEN_ATTR_TYPE_SHARED_INFO,
    KVM_XEN_EVTCHN_DEASSIGN, KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, KVM_XEN_VCPU_ATTR_TYPE_TIMER,
    KVM_XEN_VCPU_ATTR_TYPE_UPCALL_VECTOR, KVM_XEN_VCPU_ATTR_TYPE_VCPU_INFO, kvm_cpuid_entry2,
    kvm_enable_cap, kvm_fpu, kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1,
    kvm_irq_routing_irqchip, kvm_lapic_state, kvm_msi, kvm_pit_config, kvm_regs, kvm_segment,
    kvm_sregs, kvm_userspace_memory_region, kvm_xen_hvm_attr, kvm_xen_hvm_config,
    kvm_xen_vcpu_attr,
};
use kvm_ioctls::{
    Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{CpuStartState, Segment};
use crate::devices::IrqLine;

/// Where KVM puts the three-page TSS it needs on Intel hosts (inside the MMIO hole,
/// below the BIOS area, as Firecracker and QEMU do).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// Where KVM puts the identity-map page table it needs on Intel hosts.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// The KVM device node.
pub const KVM_DEVICE: &CStr = c"/dev/kvm";
const KVM_API_VERSION: i32 = 12;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0b100;
const APIC_MODE_EXTINT: u32 = 0b111;

/// A failed KVM operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The KVM device is missing or not accessible.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The device path.
        path: String,
        /// Why it could not be opened.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An incompatible KVM.
    #[error("/dev/kvm speaks KVM API version {0}; the shim needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// An ioctl failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// The ioctl (or step) that failed.
        op: &'static str,
        /// The error KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM lacks something the shim needs.
    #[error("KVM does not offer {0}")]
    Missing(&'static str),
    /// KVM did something other than what the shim asked for.
    #[error("{0}")]
    Unexpected(&'static str),
    /// More guest memory regions than KVM memory slots.
    #[error("guest memory has {0} regions, more than KVM's {1} memory slots")]
    TooManyRegions(usize, usize),
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Ioctl { op, source }
}

/// The result of a raw ioctl that returned `rc` (errno on failure).
fn ioctl_status(rc: i32, op: &'static str) -> Result<(), Error> {
    if rc < 0 {
        return Err(Error::Ioctl {
            op,
            source: kvm_ioctls::Error::last(),
        });
    }
    Ok(())
}

/// One CPUID leaf the shim sets on top of what KVM supports (the hypervisor leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidLeaf {
    /// `EAX` input.
    pub function: u32,
    /// `ECX` input, if the leaf has sub-leaves.
    pub index: Option<u32>,
    /// Output registers `[eax, ebx, ecx, edx]`.
    pub regs: [u32; 4],
}

/// The first hypervisor CPUID leaf; KVM's own leaves there are replaced when the shim
/// supplies its own.
pub const HYPERVISOR_CPUID_BASE: u32 = 0x4000_0000;

/// Raises interrupts in a VM from any thread (`KVM_SIGNAL_MSI` to the in-kernel LAPIC).
///
/// [`Interrupter::recording`] makes one without a VM, which delivers nothing and keeps
/// a log of what it was asked to send: the seam that lets the Xen interface run in
/// unit tests and fuzz targets on machines without `/dev/kvm`.
#[derive(Clone)]
pub struct Interrupter {
    sink: Sink,
}

#[derive(Clone)]
enum Sink {
    Kvm(Arc<VmFd>),
    Log(InterruptLog),
}

/// The interrupts a recording [`Interrupter`] was asked to send, as `(apic_id, vector)`
/// in order. Clones share the log.
#[derive(Debug, Clone, Default)]
pub struct InterruptLog(Arc<std::sync::Mutex<Vec<(u8, u8)>>>);

impl InterruptLog {
    /// Takes the interrupts recorded so far.
    pub fn take(&self) -> Vec<(u8, u8)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Interrupter {
    /// An interrupter without a VM: every interrupt is accepted and appended to the
    /// returned log.
    pub fn recording() -> (Self, InterruptLog) {
        let log = InterruptLog::default();
        (
            Self {
                sink: Sink::Log(log.clone()),
            },
            log,
        )
    }

    /// Sends the message a guest programmed into a device's MSI-X table
    /// (`KVM_SIGNAL_MSI`); a recording interrupter logs its APIC id and vector.
    pub fn send_msi(&self, address: u64, data: u32) -> bool {
        match &self.sink {
            Sink::Kvm(fd) => {
                let msi = kvm_msi {
                    address_lo: address as u32,
                    address_hi: (address >> 32) as u32,
                    data,
                    ..Default::default()
                };
                fd.signal_msi(msi).is_ok_and(|delivered| delivered > 0)
            }
            Sink::Log(log) => {
                log.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(((address >> 12) as u8, data as u8));
                true
            }
        }
    }

    /// Sends a fixed, edge-triggered interrupt with `vector` to the LAPIC with
    /// `apic_id`. Returns whether the LAPIC accepted it (it does unless the vector is
    /// one the architecture reserves).
    pub fn send_vector(&self, apic_id: u8, vector: u8) -> Result<bool, Error> {
        let fd = match &self.sink {
            Sink::Kvm(fd) => fd,
            Sink::Log(log) => {
                log.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((apic_id, vector));
                return Ok(true);
            }
        };
        let msi = kvm_msi {
            // The MSI address window with the destination APIC id in bits 12..=19
            // (physical destination mode); data: fixed delivery, edge, `vector`.
            address_lo: 0xfee0_0000 | u32::from(apic_id) << 12,
            address_hi: 0,
            data: u32::from(vector),
            ..Default::default()
        };
        fd.signal_msi(msi)
            .map(|delivered| delivered > 0)
            .map_err(ioctl("KVM_SIGNAL_MSI"))
    }
}

impl crate::devices::MsiSink for Interrupter {
    fn send(&self, address: u64, data: u32) -> bool {
        self.send_msi(address, data)
    }
}

impl fmt::Debug for Interrupter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sink {
            Sink::Kvm(_) => f.write_str("Interrupter"),
            Sink::Log(_) => f.write_str("Interrupter(recording)"),
        }
    }
}

/// Number of IOAPIC pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u32 = 24;
/// The 8259 cascade input: no GSI is routed to it.
const CASCADE_IRQ: u32 = 2;

/// The routes of [`Vm`]'s module doc as `(gsi, irqchip, pin)`.
pub fn pc_gsi_routes() -> Vec<(u32, u32, u32)> {
    use kvm_bindings::{KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE};
    let mut routes = Vec::new();
    for gsi in (0..16).filter(|&g| g != CASCADE_IRQ) {
        let chip = if gsi < 8 {
            KVM_IRQCHIP_PIC_MASTER
        } else {
            KVM_IRQCHIP_PIC_SLAVE
        };
        routes.push((gsi, chip, gsi % 8));
    }
    for gsi in (0..IOAPIC_PINS).filter(|&g| g != CASCADE_IRQ) {
        let pin = if gsi == 0 { 2 } else { gsi };
        routes.push((gsi, KVM_IRQCHIP_IOAPIC, pin));
    }
    routes
}

fn pc_gsi_routing() -> Result<kvm_bindings::KvmIrqRouting, Error> {
    let entries: Vec<kvm_irq_routing_entry> = pc_gsi_routes()
        .into_iter()
        .map(|(gsi, irqchip, pin)| kvm_irq_routing_entry {
            gsi,
            type_: kvm_bindings::KVM_IRQ_ROUTING_IRQCHIP,
            flags: 0,
            pad: 0,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                irqchip: kvm_irq_routing_irqchip { irqchip, pin },
            },
        })
        .collect();
    kvm_bindings::KvmIrqRouting::from_entries(&entries)
        .map_err(|_| Error::Missing("room for the GSI routing table"))
}

/// The first GSI of MSI routes (after the IOAPIC's pins).
const FIRST_MSI_GSI: u32 = IOAPIC_PINS;
/// MSI routes a VM gets at most; messages beyond them go through `KVM_SIGNAL_MSI`.
pub const MAX_MSI_ROUTES: usize = 256;

/// The VM's MSI routes: one GSI and irqfd per distinct message (address, data) a device
/// sent, so that the next one is an eventfd write KVM turns into the interrupt (irqfd),
/// as vhost and other VMMs deliver MSI-X. The GSI routing table is the PC routes plus
/// these; it is rebuilt when a route is added.
struct MsiRoutes {
    fd: Arc<VmFd>,
    table: Mutex<MsiTable>,
}

#[derive(Default)]
struct MsiTable {
    routes: Vec<MsiRoute>,
    /// Routing or irqfd setup failed once: no more routes are tried.
    failed: bool,
}

struct MsiRoute {
    address: u64,
    data: u32,
    evt: EventFd,
}

impl MsiRoutes {
    /// Sends the message through its irqfd, adding the route first if it is new;
    /// `None` when no route can be had (the caller falls back to `KVM_SIGNAL_MSI`).
    fn send(&self, address: u64, data: u32) -> Option<bool> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = t
            .routes
            .iter()
            .find(|r| r.address == address && r.data == data)
        {
            return Some(r.evt.write(1).is_ok());
        }
        if t.failed || t.routes.len() >= MAX_MSI_ROUTES {
            return None;
        }
        match self.add(&t.routes, address, data) {
            Ok(evt) => {
                let sent = evt.write(1).is_ok();
                t.routes.push(MsiRoute { address, data, evt });
                Some(sent)
            }
            Err(_) => {
                t.failed = true;
                None
            }
        }
    }

    /// Installs the routing table with one more MSI route and attaches its irqfd.
    fn add(&self, routes: &[MsiRoute], address: u64, data: u32) -> Result<EventFd, Error> {
        let gsi = FIRST_MSI_GSI + routes.len() as u32;
        let evt =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| Error::Ioctl {
                op: "eventfd (an MSI irqfd)",
                source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
            })?;
        let msi = |gsi: u32, address: u64, data: u32| kvm_irq_routing_entry {
            gsi,
            type_: kvm_bindings::KVM_IRQ_ROUTING_MSI,
            flags: 0,
            pad: 0,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_bindings::kvm_irq_routing_msi {
                    address_lo: address as u32,
                    address_hi: (address >> 32) as u32,
                    data,
                    ..Default::default()
                },
            },
        };
        let mut entries: Vec<kvm_irq_routing_entry> = pc_gsi_routing()?.as_slice().to_vec();
        for (i, r) in routes.iter().enumerate() {
            entries.push(msi(FIRST_MSI_GSI + i as u32, r.address, r.data));
        }
        entries.push(msi(gsi, address, data));
        let table = kvm_bindings::KvmIrqRouting::from_entries(&entries)
            .map_err(|_| Error::Missing("room for the GSI routing table"))?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(ioctl("KVM_SET_GSI_ROUTING"))?;
        self.fd
            .register_irqfd(&evt, gsi)
            .map_err(ioctl("KVM_IRQFD"))?;
        Ok(evt)
    }
}

/// A device's MSI sender: irqfds through the VM's MSI routes, `KVM_SIGNAL_MSI` when
/// none can be had; counts both.
pub struct MsiSender {
    routes: Arc<MsiRoutes>,
    fallback: Interrupter,
    irqfd: AtomicU64,
    signalled: AtomicU64,
}

impl crate::devices::MsiSink for MsiSender {
    fn send(&self, address: u64, data: u32) -> bool {
        match self.routes.send(address, data) {
            Some(sent) => {
                self.irqfd.fetch_add(1, Ordering::Relaxed);
                sent
            }
            None => {
                self.signalled.fetch_add(1, Ordering::Relaxed);
                self.fallback.send_msi(address, data)
            }
        }
    }

    fn stats(&self) -> serde_json::Value {
        let routes = self
            .routes
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .routes
            .len();
        serde_json::json!({
            "irqfd": self.irqfd.load(Ordering::Relaxed),
            "signal_msi": self.signalled.load(Ordering::Relaxed),
            "vm_msi_routes": routes,
        })
    }
}

/// Interrupt lines of one VM (or of a recording sink without a VM): hands out
/// [`GsiLine`]s and ORs the levels of the lines that share a GSI, since KVM keeps one
/// level per GSI for all of user space (`KVM_USERSPACE_IRQ_SOURCE_ID`).
#[derive(Clone)]
pub struct IrqLines {
    inner: Arc<LinesInner>,
}

struct LinesInner {
    sink: LineSink,
    /// Asserted lines per GSI. Its lock also orders the `KVM_IRQ_LINE` calls, so the
    /// kernel sees a GSI's level changes in the order they were decided.
    asserted: Mutex<BTreeMap<u32, u32>>,
    errors: AtomicU64,
}

enum LineSink {
    Kvm(Arc<VmFd>),
    Log(LineLog),
}

/// The GSI levels a recording [`IrqLines`] was asked to set, as `(gsi, level)` in
/// order. Clones share the log.
#[derive(Debug, Clone, Default)]
pub struct LineLog(Arc<Mutex<Vec<(u32, bool)>>>);

impl LineLog {
    /// Takes the level changes recorded so far.
    pub fn take(&self) -> Vec<(u32, bool)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl IrqLines {
    /// Lines without a VM: every GSI level change is appended to the returned log.
    pub fn recording() -> (Self, LineLog) {
        let log = LineLog::default();
        let lines = Self {
            inner: Arc::new(LinesInner {
                sink: LineSink::Log(log.clone()),
                asserted: Mutex::new(BTreeMap::new()),
                errors: AtomicU64::new(0),
            }),
        };
        (lines, log)
    }

    /// A new line driving `gsi`, low.
    pub fn line(&self, gsi: u32) -> Arc<GsiLine> {
        Arc::new(GsiLine {
            lines: self.clone(),
            gsi,
            level: AtomicBool::new(false),
            asserts: AtomicU64::new(0),
        })
    }

    /// `KVM_IRQ_LINE` calls that failed (a GSI the irqchip does not have).
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// Applies one line's change; returns whether the line changed.
    fn change(&self, line: &GsiLine, asserted: bool) -> bool {
        let mut map = self
            .inner
            .asserted
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if line.level.swap(asserted, Ordering::SeqCst) == asserted {
            return false;
        }
        let count = map.entry(line.gsi).or_default();
        let was = *count > 0;
        if asserted {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        let now = *count > 0;
        if was != now {
            match &self.inner.sink {
                LineSink::Kvm(fd) => {
                    if fd.set_irq_line(line.gsi, now).is_err() {
                        self.inner.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                LineSink::Log(log) => log
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((line.gsi, now)),
            }
        }
        true
    }
}

/// One device's output on a GSI ([`IrqLine`]). For a level-triggered IOAPIC pin the GSI
/// stays asserted while any of its lines is; for an edge-triggered one the GSI's rising
/// edge is the interrupt. Dropping an asserted line releases it.
pub struct GsiLine {
    lines: IrqLines,
    gsi: u32,
    level: AtomicBool,
    asserts: AtomicU64,
}

impl GsiLine {
    /// The GSI it drives.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// How many times this line went from low to high.
    pub fn asserts(&self) -> u64 {
        self.asserts.load(Ordering::Relaxed)
    }

    /// Its level now.
    pub fn asserted(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
}

impl IrqLine for GsiLine {
    fn set_level(&self, asserted: bool) {
        if self.lines.change(self, asserted) && asserted {
            self.asserts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for GsiLine {
    fn drop(&mut self) {
        self.lines.change(self, false);
    }
}

impl fmt::Debug for GsiLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GsiLine({}, asserted: {})", self.gsi, self.asserted())
    }
}

/// A VM with an in-kernel irqchip and PIT.
pub struct Vm {
    // Dropped first: the memory below must outlive the VM's use of it. Interrupters
    // share the descriptor but never touch guest memory.
    fd: Arc<VmFd>,
    kvm: Kvm,
    memory: Option<GuestMemoryMmap>,
    lines: IrqLines,
    msi: Arc<MsiRoutes>,
}

impl Vm {
    /// Opens `/dev/kvm` and creates a VM with its interrupt controllers and PIT.
    pub fn new() -> Result<Self, Error> {
        Self::open(KVM_DEVICE)
    }

    /// Like [`Vm::new`] with another KVM device node.
    pub fn open(device: &CStr) -> Result<Self, Error> {
        let kvm = Kvm::new_with_path(device).map_err(|source| Error::Open {
            path: device.to_string_lossy().into_owned(),
            source,
        })?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(Error::ApiVersion(version));
        }
        let fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        if kvm.check_extension(Cap::SetTssAddr) {
            fd.set_tss_address(KVM_TSS_ADDR)
                .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        }
        if kvm.check_extension(Cap::SetIdentityMapAddr) {
            fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
                .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        }
        fd.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        // The guest calibrates its TSC by latching and reading PIT channel 0. The dummy
        // speaker makes port 0x61 (PIT channel 2 gate) answer in the kernel too.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        fd.set_gsi_routing(&pc_gsi_routing()?)
            .map_err(ioctl("KVM_SET_GSI_ROUTING"))?;
        let fd = Arc::new(fd);
        Ok(Self {
            lines: IrqLines {
                inner: Arc::new(LinesInner {
                    sink: LineSink::Kvm(fd.clone()),
                    asserted: Mutex::new(BTreeMap::new()),
                    errors: AtomicU64::new(0),
                }),
            },
            msi: Arc::new(MsiRoutes {
                fd: fd.clone(),
                table: Mutex::default(),
            }),
            fd,
            kvm,
            memory: None,
        })
    }

    /// An interrupt line driving `gsi` of the in-kernel irqchip, usable from any thread.
    /// Lines on one GSI are ORed (PCI INTx sharing).
    pub fn irq_line(&self, gsi: u32) -> Arc<GsiLine> {
        self.lines.line(gsi)
    }

    /// The VM's interrupt lines, to create more from other places.
    pub fn irq_lines(&self) -> IrqLines {
        self.lines.clone()
    }

    /// A device's MSI sender (irqfds on the VM's MSI routes; see [`MsiSender`]).
    pub fn msi_sender(&self) -> MsiSender {
        MsiSender {
            routes: self.msi.clone(),
            fallback: self.interrupter(),
            irqfd: AtomicU64::new(0),
            signalled: AtomicU64::new(0),
        }
    }

    /// A handle that raises interrupts from other threads.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter {
            sink: Sink::Kvm(self.fd.clone()),
        }
    }

    /// Makes the guest's `vmcall`/`vmmcall` exit to user space as Xen hypercalls
    /// ([`VcpuExit::XenHypercall`]), through KVM's Xen support (`KVM_XEN_HVM_CONFIG`
    /// with `KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL`). `msr` is the hypercall-page MSR: KVM
    /// intercepts only when it is set (a trapped MSR, [`Vm::trap_msrs`], still reaches
    /// user space first). `Ok(false)` where KVM offers no such interception
    /// (`KVM_CAP_XEN_HVM` absent, as on kvm-pvm): then only a hypercall page can reach
    /// the shim.
    ///
    /// KVM still answers a few hypercalls itself: `SCHEDOP_poll` and `SCHEDOP_yield`
    /// return 0 at once (a spurious wake, which the ABI allows); nothing else is
    /// configured for in-kernel handling.
    pub fn intercept_xen_hypercalls(&self, msr: u32) -> Result<bool, Error> {
        const KVMIO: u32 = 0xae;
        vmm_sys_util::ioctl_iow_nr!(KVM_XEN_HVM_CONFIG, KVMIO, 0x7a, kvm_xen_hvm_config);
        let flags = self.kvm.check_extension_int(Cap::XenHvm);
        if flags <= 0 || flags as u32 & KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL == 0 {
            return Ok(false);
        }
        let config = kvm_xen_hvm_config {
            flags: KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL,
            msr,
            ..Default::default()
        };
        // SAFETY: KVM_XEN_HVM_CONFIG reads one `kvm_xen_hvm_config` from the pointer,
        // which refers to `config` for the duration of the call; the descriptor is this
        // VM's.
        let rc = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(self.fd.as_ref(), KVM_XEN_HVM_CONFIG(), &config)
        };
        ioctl_status(rc, "KVM_XEN_HVM_CONFIG")?;
        Ok(true)
    }

    /// KVM's ioeventfds as the PCI bus's doorbells ([`crate::devices::pci_bus::Doorbells`]).
    pub fn doorbells(&self) -> Arc<dyn crate::devices::pci_bus::Doorbells> {
        Arc::new(KvmDoorbells {
            fd: self.fd.clone(),
        })
    }

    /// A handle for the VM-wide attributes of KVM's Xen support, usable from the vCPU
    /// thread ([`XenVmAttrs`]).
    pub fn xen_attrs(&self) -> XenVmAttrs {
        XenVmAttrs {
            fd: self.fd.clone(),
        }
    }

    /// Makes guest `rdmsr`/`wrmsr` of the MSRs in `first..first + count` exit to user
    /// space ([`VcpuExit::MsrRead`]/[`VcpuExit::MsrWrite`]) instead of being handled (or
    /// refused) by KVM. Every other MSR keeps KVM's behaviour.
    pub fn trap_msrs(&self, first: u32, count: u32) -> Result<(), Error> {
        if !self.kvm.check_extension(Cap::X86UserSpaceMsr) {
            return Err(Error::Missing("KVM_CAP_X86_USER_SPACE_MSR"));
        }
        let cap = kvm_enable_cap {
            cap: Cap::X86UserSpaceMsr as u32,
            args: [u64::from(KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
            ..Default::default()
        };
        self.fd
            .enable_cap(&cap)
            .map_err(ioctl("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
        // A clear bit denies the access, which with the capability above means "exit to
        // user space".
        let bitmap = vec![0u8; count.div_ceil(8) as usize];
        let range = MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: first,
            msr_count: count,
            bitmap: &bitmap,
        };
        self.fd
            .set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range])
            .map_err(ioctl("KVM_X86_SET_MSR_FILTER"))
    }

    /// Maps every region of `memory` into the guest at its guest-physical address.
    pub fn map_memory(&mut self, memory: &GuestMemoryMmap) -> Result<(), Error> {
        let slots = self.kvm.get_nr_memslots();
        if memory.num_regions() > slots {
            return Err(Error::TooManyRegions(memory.num_regions(), slots));
        }
        for (slot, region) in memory.iter().enumerate() {
            let mapping = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the host range is a live mapping of exactly `memory_size` bytes owned
            // by the region, and `self` (like every `Vcpu`) keeps a clone of `memory`, so
            // the mapping outlives the VM's and its vCPUs' use of it.
            unsafe { self.fd.set_user_memory_region(mapping) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        self.memory = Some(memory.clone());
        Ok(())
    }

    /// Makes a write to `evt` raise interrupt line `gsi` (irqfd).
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), Error> {
        self.fd.register_irqfd(evt, gsi).map_err(ioctl("KVM_IRQFD"))
    }

    /// Creates vCPU `id` in `state`. Call after [`Vm::map_memory`].
    pub fn create_vcpu(&self, id: u8, state: &CpuStartState) -> Result<Vcpu, Error> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("KVM_CREATE_VCPU"))?;

        let mut cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        for entry in cpuid.as_mut_slice() {
            match entry.function {
                1 => {
                    entry.ebx = (entry.ebx & 0x00ff_ffff) | u32::from(id) << 24;
                    entry.ecx |= 1 << 31; // hypervisor present
                }
                0xb | 0x1f => entry.edx = u32::from(id),
                _ => {}
            }
        }
        fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;

        let mut lapic = fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
        set_lvt_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))?;

        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))?;

        let mut sregs = fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        apply_start_sregs(&mut sregs, state);
        fd.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        let regs = kvm_regs {
            rip: state.rip,
            rbx: state.rbx,
            rflags: state.rflags,
            ..Default::default()
        };
        fd.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;

        Ok(Vcpu {
            fd,
            cpuid,
            run_size: self.fd.run_size(),
            _memory: self.memory.clone(),
        })
    }
}

fn set_lvt_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let bytes = &mut lapic.regs[reg..reg + 4];
    let old = u32::from_le_bytes([
        bytes[0] as u8,
        bytes[1] as u8,
        bytes[2] as u8,
        bytes[3] as u8,
    ]);
    // Delivery mode is bits 8..=10 of an LVT entry.
    let new = (old & !0x700) | mode << 8;
    for (dst, src) in bytes.iter_mut().zip(new.to_le_bytes()) {
        *dst = src as _;
    }
}

fn kvm_seg(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: u64::from(s.base),
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: u8::from(s.present),
        dpl: s.dpl,
        db: u8::from(s.db),
        s: u8::from(s.s),
        l: 0,
        g: u8::from(s.g),
        avl: 0,
        unusable: u8::from(!s.present),
        padding: 0,
    }
}

/// Puts the PVH entry state into `sregs`, keeping what KVM set up that the PVH spec
/// leaves open (IDTR, APIC base).
fn apply_start_sregs(sregs: &mut kvm_sregs, state: &CpuStartState) {
    sregs.cs = kvm_seg(&state.code);
    let data = kvm_seg(&state.data);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_seg(&state.tss);
    sregs.ldt = kvm_segment {
        type_: 0x2,
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = state.gdt_base;
    sregs.gdt.limit = state.gdt_limit;
    sregs.cr0 = state.cr0;
    sregs.cr3 = 0;
    sregs.cr4 = state.cr4;
    sregs.efer = state.efer;
}

/// Register state worth reporting when a guest dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CpuSnapshot {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags.
    pub rflags: u64,
    /// `CR0`.
    pub cr0: u64,
    /// `CR2` (last page-fault address).
    pub cr2: u64,
    /// `CR3`.
    pub cr3: u64,
    /// `CR4`.
    pub cr4: u64,
    /// `EFER`.
    pub efer: u64,
    /// `CS` selector.
    pub cs: u16,
}

impl fmt::Display for CpuSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rip={:#x}, cs={:#x}, rsp={:#x}, rflags={:#x}, cr0={:#x}, cr2={:#x}, cr3={:#x}, \
             cr4={:#x}, efer={:#x}",
            self.rip,
            self.cs,
            self.rsp,
            self.rflags,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.efer
        )
    }
}

/// The registers a Xen hypercall reads (number in `rax`; arguments in `rdi`, `rsi`,
/// `rdx`, `r10`, `r8` from 64-bit code, `ebx`, `ecx`, `edx`, `esi`, `edi` from 32-bit
/// code).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registers {
    /// Hypercall number.
    pub rax: u64,
    /// Argument 1 of a 32-bit caller.
    pub rbx: u64,
    /// Argument 2 of a 32-bit caller.
    pub rcx: u64,
    /// Argument 1.
    pub rdi: u64,
    /// Argument 2.
    pub rsi: u64,
    /// Argument 3.
    pub rdx: u64,
    /// Argument 4.
    pub r10: u64,
    /// Argument 5.
    pub r8: u64,
    /// Instruction pointer.
    pub rip: u64,
}

/// Control registers that decide how guest-virtual addresses translate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagingState {
    /// CR0 (PG is bit 31).
    pub cr0: u64,
    /// CR3: the top-level page table.
    pub cr3: u64,
    /// CR4 (PAE bit 5, PSE bit 4).
    pub cr4: u64,
    /// EFER (LMA bit 10).
    pub efer: u64,
    /// Whether the code segment is 64-bit.
    pub long_mode_code: bool,
}

/// A guest `rdmsr`/`wrmsr` that KVM forwarded to user space.
#[derive(Debug)]
pub struct MsrAccess<'a> {
    /// The MSR's index.
    pub index: u32,
    value: &'a mut u64,
    error: &'a mut u8,
}

impl MsrAccess<'_> {
    /// The value the guest writes (for `wrmsr`).
    pub fn value(&self) -> u64 {
        *self.value
    }

    /// Answers an `rdmsr` with `value`.
    pub fn reply(&mut self, value: u64) {
        *self.value = value;
    }

    /// Makes the access raise #GP in the guest.
    pub fn fault(&mut self) {
        *self.error = 1;
    }
}

/// Why the vCPU left the guest, in the shim's terms.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// `in`: fill `data` (`data.len() / size` accesses of `size` bytes).
    IoIn {
        /// Port.
        port: u16,
        /// Bytes per access.
        size: usize,
        /// The bytes to fill.
        data: &'a mut [u8],
    },
    /// `out`: `data` holds `data.len() / size` accesses of `size` bytes.
    IoOut {
        /// Port.
        port: u16,
        /// Bytes per access.
        size: usize,
        /// The bytes written.
        data: &'a [u8],
    },
    /// A read of unmapped guest-physical memory: fill `data`.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// The bytes to fill.
        data: &'a mut [u8],
    },
    /// A write to unmapped guest-physical memory.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// The bytes written.
        data: &'a [u8],
    },
    /// `rdmsr` forwarded to user space.
    MsrRead(MsrAccess<'a>),
    /// `wrmsr` forwarded to user space.
    MsrWrite(MsrAccess<'a>),
    /// `vmcall`/`vmmcall` intercepted by KVM's Xen support
    /// ([`Vm::intercept_xen_hypercalls`]); answer with [`Vcpu::complete_xen_hypercall`]
    /// before the next run.
    XenHypercall {
        /// Made from 64-bit code.
        long_mode: bool,
        /// The caller's privilege level.
        cpl: u32,
        /// The hypercall number (`rax`).
        nr: u64,
        /// `rdi rsi rdx r10 r8 r9`, or from 32-bit code `ebx ecx edx esi edi ebp`.
        params: [u64; 6],
    },
    /// `hlt` (only without an in-kernel LAPIC).
    Hlt,
    /// Triple fault.
    Shutdown,
    /// `KVM_RUN` was interrupted by a signal.
    Interrupted,
    /// A KVM system event (`KVM_SYSTEM_EVENT_*`).
    SystemEvent(u32),
    /// VM entry failed with this hardware reason.
    FailEntry(u64),
    /// KVM could not handle an exit (`KVM_INTERNAL_ERROR_*` suberror).
    InternalError(u32),
    /// Any other exit.
    Other {
        /// Exit name, e.g. "debug".
        name: &'static str,
        /// `KVM_EXIT_*` code.
        reason: u32,
        /// Whether the guest can simply be resumed.
        resumable: bool,
    },
}

/// Doorbells as KVM ioeventfds on MMIO addresses (any write length, no data match).
struct KvmDoorbells {
    fd: Arc<VmFd>,
}

impl crate::devices::pci_bus::Doorbells for KvmDoorbells {
    fn register(&self, addr: u64, event: &EventFd) -> bool {
        self.fd
            .register_ioevent(
                event,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .is_ok()
    }

    fn unregister(&self, addr: u64, event: &EventFd) {
        let _ = self.fd.unregister_ioevent(
            event,
            &kvm_ioctls::IoEventAddress::Mmio(addr),
            kvm_ioctls::NoDatamatch,
        );
    }
}

/// The VM-wide attributes of KVM's Xen support (`KVM_XEN_HVM_SET_ATTR`): what lets
/// KVM deliver Xen events itself (its timer, below).
#[derive(Clone)]
pub struct XenVmAttrs {
    fd: Arc<VmFd>,
}

impl fmt::Debug for XenVmAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XenVmAttrs")
    }
}

/// `KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL`: KVM's only event-channel priority.
const XEN_EVTCHN_PRIO_2LEVEL: u32 = 0xffff_ffff;

impl XenVmAttrs {
    fn set(&self, attr: &kvm_xen_hvm_attr, what: &'static str) -> Result<(), Error> {
        const KVMIO: u32 = 0xae;
        vmm_sys_util::ioctl_iow_nr!(KVM_XEN_HVM_SET_ATTR, KVMIO, 0xc9, kvm_xen_hvm_attr);
        // SAFETY: KVM_XEN_HVM_SET_ATTR reads one `kvm_xen_hvm_attr` from the pointer,
        // which refers to `attr` for the duration of the call.
        let rc = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(self.fd.as_ref(), KVM_XEN_HVM_SET_ATTR(), attr)
        };
        ioctl_status(rc, what)
    }

    /// Whether the guest's Xen structures are in the 64-bit layout
    /// (`KVM_XEN_ATTR_TYPE_LONG_MODE`; set before the shared_info page).
    pub fn set_long_mode(&self, long_mode: bool) -> Result<(), Error> {
        let mut attr = kvm_xen_hvm_attr {
            type_: KVM_XEN_ATTR_TYPE_LONG_MODE as u16,
            ..Default::default()
        };
        attr.u.long_mode = u8::from(long_mode);
        self.set(&attr, "KVM_XEN_HVM_SET_ATTR(LONG_MODE)")
    }

    /// Makes the guest's `EVTCHNOP_send` on interdomain port `port` signal `fd` in the
    /// kernel, without a user exit (`KVM_XEN_ATTR_TYPE_EVTCHN`).
    pub fn assign_evtchn_eventfd(&self, port: u32, fd: &EventFd) -> Result<(), Error> {
        use std::os::fd::AsRawFd as _;
        const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
        let mut attr = kvm_xen_hvm_attr {
            type_: KVM_XEN_ATTR_TYPE_EVTCHN as u16,
            ..Default::default()
        };
        attr.u.evtchn = kvm_bindings::kvm_xen_hvm_attr__bindgen_ty_1__bindgen_ty_2 {
            send_port: port,
            type_: EVTCHNSTAT_INTERDOMAIN,
            flags: 0,
            deliver: kvm_bindings::kvm_xen_hvm_attr__bindgen_ty_1__bindgen_ty_2__bindgen_ty_1 {
                eventfd:
                    kvm_bindings::kvm_xen_hvm_attr__bindgen_ty_1__bindgen_ty_2__bindgen_ty_1__bindgen_ty_2 {
                        port: 0,
                        fd: fd.as_raw_fd(),
                    },
            },
        };
        self.set(&attr, "KVM_XEN_HVM_SET_ATTR(EVTCHN assign)")
    }

    /// Undoes [`XenVmAttrs::assign_evtchn_eventfd`]: sends on `port` reach user space.
    pub fn deassign_evtchn(&self, port: u32) -> Result<(), Error> {
        let mut attr = kvm_xen_hvm_attr {
            type_: KVM_XEN_ATTR_TYPE_EVTCHN as u16,
            ..Default::default()
        };
        attr.u.evtchn.send_port = port;
        attr.u.evtchn.flags = KVM_XEN_EVTCHN_DEASSIGN;
        self.set(&attr, "KVM_XEN_HVM_SET_ATTR(EVTCHN deassign)")
    }

    /// The guest frame of its shared_info page (`KVM_XEN_ATTR_TYPE_SHARED_INFO`).
    pub fn set_shared_info(&self, gfn: u64) -> Result<(), Error> {
        let mut attr = kvm_xen_hvm_attr {
            type_: KVM_XEN_ATTR_TYPE_SHARED_INFO as u16,
            ..Default::default()
        };
        attr.u.shared_info.gfn = gfn;
        self.set(&attr, "KVM_XEN_HVM_SET_ATTR(SHARED_INFO)")
    }
}

/// One vCPU. Movable to the thread that runs it.
pub struct Vcpu {
    fd: VcpuFd,
    /// The CPUID table as set at creation.
    cpuid: kvm_bindings::CpuId,
    run_size: usize,
    _memory: Option<GuestMemoryMmap>,
}

impl Vcpu {
    fn xen_vcpu_attr(&self, attr: &kvm_xen_vcpu_attr, what: &'static str) -> Result<(), Error> {
        const KVMIO: u32 = 0xae;
        vmm_sys_util::ioctl_iow_nr!(KVM_XEN_VCPU_SET_ATTR, KVMIO, 0xcb, kvm_xen_vcpu_attr);
        // SAFETY: KVM_XEN_VCPU_SET_ATTR reads one `kvm_xen_vcpu_attr` from the pointer,
        // which refers to `attr` for the duration of the call; the descriptor is this
        // vCPU's, and this thread runs it (the vCPU is not in KVM_RUN).
        let rc =
            unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_XEN_VCPU_SET_ATTR(), attr) };
        ioctl_status(rc, what)
    }

    /// Where the vCPU's `vcpu_info` is (`KVM_XEN_VCPU_ATTR_TYPE_VCPU_INFO`): KVM
    /// then keeps its pvclock record there and can deliver events to the vCPU.
    pub fn xen_set_vcpu_info(&self, gpa: u64) -> Result<(), Error> {
        let mut attr = kvm_xen_vcpu_attr {
            type_: KVM_XEN_VCPU_ATTR_TYPE_VCPU_INFO as u16,
            ..Default::default()
        };
        attr.u.gpa = gpa;
        self.xen_vcpu_attr(&attr, "KVM_XEN_VCPU_SET_ATTR(VCPU_INFO)")
    }

    /// The vCPU's event upcall vector (`KVM_XEN_VCPU_ATTR_TYPE_UPCALL_VECTOR`), which
    /// KVM injects through the LAPIC for the events it delivers.
    pub fn xen_set_upcall_vector(&self, vector: u8) -> Result<(), Error> {
        let mut attr = kvm_xen_vcpu_attr {
            type_: KVM_XEN_VCPU_ATTR_TYPE_UPCALL_VECTOR as u16,
            ..Default::default()
        };
        attr.u.vector = vector;
        self.xen_vcpu_attr(&attr, "KVM_XEN_VCPU_SET_ATTR(UPCALL_VECTOR)")
    }

    /// Hands the vCPU's Xen timer to KVM (`KVM_XEN_VCPU_ATTR_TYPE_TIMER`): from now on
    /// `VCPUOP_set_singleshot_timer`, `VCPUOP_stop_singleshot_timer` and
    /// `set_timer_op` made with `vmcall` are handled in the kernel, which raises event
    /// channel `port` (the guest's `VIRQ_TIMER`) when the timer expires. Port 0 takes
    /// the timer back.
    pub fn xen_set_timer(&self, port: u32) -> Result<(), Error> {
        let mut attr = kvm_xen_vcpu_attr {
            type_: KVM_XEN_VCPU_ATTR_TYPE_TIMER as u16,
            ..Default::default()
        };
        attr.u.timer = kvm_bindings::kvm_xen_vcpu_attr__bindgen_ty_1__bindgen_ty_2 {
            port,
            priority: XEN_EVTCHN_PRIO_2LEVEL,
            expires_ns: 0,
        };
        self.xen_vcpu_attr(&attr, "KVM_XEN_VCPU_SET_ATTR(TIMER)")
    }

    /// Answers the Xen hypercall of the last exit ([`VcpuExit::XenHypercall`]): KVM
    /// puts `result` in `rax` and steps over the instruction at the next run. Does
    /// nothing if the last exit was not one.
    pub fn complete_xen_hypercall(&mut self, result: u64) {
        let run = self.fd.get_kvm_run();
        if run.exit_reason == KVM_EXIT_XEN {
            // Writing a union field is safe; `exit_reason` says `xen` is the member KVM
            // filled in, and KVM reads `result` back at the next `KVM_RUN`.
            run.__bindgen_anon_1.xen.u.hcall.result = result;
        }
    }

    /// Makes the `rdmsr`/`wrmsr` of the last exit raise #GP, for a decision taken after
    /// the exit's borrow ended. Does nothing if the last exit was not an MSR access.
    pub fn fault_msr_exit(&mut self) {
        let run = self.fd.get_kvm_run();
        if run.exit_reason == KVM_EXIT_X86_RDMSR || run.exit_reason == KVM_EXIT_X86_WRMSR {
            // Writing a union field is safe; `exit_reason` says `msr` is the member KVM
            // filled in, and KVM reads `error` at the next `KVM_RUN`.
            run.__bindgen_anon_1.msr.error = 1;
        }
    }

    /// Runs the guest until the next exit.
    pub fn run(&mut self) -> Result<VcpuExit<'_>, Error> {
        // kvm-ioctls' own decoding drops the access size of port I/O, so only the ioctl's
        // result is taken from it and the exit is decoded from `kvm_run` here.
        if let Err(e) = self.fd.run() {
            return match e.errno() {
                libc::EINTR | libc::EAGAIN => Ok(VcpuExit::Interrupted),
                _ => Err(Error::Ioctl {
                    op: "KVM_RUN",
                    source: e,
                }),
            };
        }
        let run_size = self.run_size;
        let run = self.fd.get_kvm_run();
        let reason = run.exit_reason;
        let other = |name, resumable| VcpuExit::Other {
            name,
            reason,
            resumable,
        };
        Ok(match reason {
            KVM_EXIT_IO => {
                // SAFETY: `exit_reason` says `io` is the union member KVM filled in.
                let io = unsafe { run.__bindgen_anon_1.io };
                let size = usize::from(io.size);
                let len = size * io.count as usize;
                let offset = usize::try_from(io.data_offset).unwrap_or(usize::MAX);
                if size == 0 || offset.checked_add(len).is_none_or(|end| end > run_size) {
                    return Ok(other("io_malformed", false));
                }
                let base = (run as *mut kvm_bindings::kvm_run).cast::<u8>();
                // SAFETY: KVM maps `run_size` bytes at `base`: the `kvm_run` structure and,
                // after it, the page KVM stages port-I/O data in. `[offset, offset + len)`
                // lies inside that mapping (checked above), after the structure, and the
                // slice is the only reference to it while `self` is borrowed.
                let data = unsafe { std::slice::from_raw_parts_mut(base.add(offset), len) };
                if u32::from(io.direction) == KVM_EXIT_IO_OUT {
                    VcpuExit::IoOut {
                        port: io.port,
                        size,
                        data,
                    }
                } else {
                    VcpuExit::IoIn {
                        port: io.port,
                        size,
                        data,
                    }
                }
            }
            KVM_EXIT_MMIO => {
                // SAFETY: `exit_reason` says `mmio` is the union member KVM filled in.
                let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
                let len = (mmio.len as usize).min(mmio.data.len());
                let (addr, is_write) = (mmio.phys_addr, mmio.is_write != 0);
                let data = &mut mmio.data[..len];
                if is_write {
                    VcpuExit::MmioWrite { addr, data }
                } else {
                    VcpuExit::MmioRead { addr, data }
                }
            }
            KVM_EXIT_X86_RDMSR | KVM_EXIT_X86_WRMSR => {
                // SAFETY: `exit_reason` says `msr` is the union member KVM filled in.
                let msr = unsafe { &mut run.__bindgen_anon_1.msr };
                let access = MsrAccess {
                    index: msr.index,
                    value: &mut msr.data,
                    error: &mut msr.error,
                };
                if reason == KVM_EXIT_X86_RDMSR {
                    VcpuExit::MsrRead(access)
                } else {
                    VcpuExit::MsrWrite(access)
                }
            }
            KVM_EXIT_HLT => VcpuExit::Hlt,
            KVM_EXIT_SHUTDOWN => VcpuExit::Shutdown,
            KVM_EXIT_INTR => VcpuExit::Interrupted,
            KVM_EXIT_SYSTEM_EVENT => {
                // SAFETY: `exit_reason` says `system_event` is the union member KVM filled in.
                let kind = unsafe { run.__bindgen_anon_1.system_event.type_ };
                VcpuExit::SystemEvent(kind)
            }
            KVM_EXIT_FAIL_ENTRY => {
                // SAFETY: `exit_reason` says `fail_entry` is the union member KVM filled in.
                let fail = unsafe { run.__bindgen_anon_1.fail_entry };
                VcpuExit::FailEntry(fail.hardware_entry_failure_reason)
            }
            KVM_EXIT_INTERNAL_ERROR => {
                // SAFETY: `exit_reason` says `internal` is the union member KVM filled in.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                VcpuExit::InternalError(internal.suberror)
            }
            KVM_EXIT_IRQ_WINDOW_OPEN => other("irq_window_open", true),
            KVM_EXIT_SET_TPR => other("set_tpr", true),
            KVM_EXIT_TPR_ACCESS => other("tpr_access", true),
            KVM_EXIT_NMI => other("nmi", true),
            KVM_EXIT_IOAPIC_EOI => other("ioapic_eoi", true),
            KVM_EXIT_UNKNOWN => other("unknown", false),
            KVM_EXIT_EXCEPTION => other("exception", false),
            KVM_EXIT_HYPERCALL => other("hypercall", false),
            KVM_EXIT_DEBUG => other("debug", false),
            KVM_EXIT_MEMORY_FAULT => other("memory_fault", false),
            KVM_EXIT_XEN => {
                // SAFETY: `exit_reason` says `xen` is the union member KVM filled in.
                let xen = unsafe { run.__bindgen_anon_1.xen };
                if xen.type_ != KVM_EXIT_XEN_HCALL {
                    return Ok(other("xen", false));
                }
                // SAFETY: `type_` says `hcall` is the member KVM filled in.
                let hcall = unsafe { xen.u.hcall };
                VcpuExit::XenHypercall {
                    long_mode: hcall.longmode != 0,
                    cpl: hcall.cpl,
                    nr: hcall.input,
                    params: hcall.params,
                }
            }
            KVM_EXIT_NOTIFY => other("notify", false),
            _ => other("unsupported", false),
        })
    }

    /// Replaces KVM's hypervisor CPUID leaves (from [`HYPERVISOR_CPUID_BASE`]) with
    /// `leaves`. Call before the first [`Vcpu::run`].
    pub fn set_hypervisor_leaves(&mut self, leaves: &[CpuidLeaf]) -> Result<(), Error> {
        let mut entries: Vec<kvm_cpuid_entry2> = self
            .cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function < HYPERVISOR_CPUID_BASE || e.function >= 0x8000_0000)
            .copied()
            .collect();
        for leaf in leaves {
            let [eax, ebx, ecx, edx] = leaf.regs;
            entries.push(kvm_cpuid_entry2 {
                function: leaf.function,
                index: leaf.index.unwrap_or(0),
                flags: if leaf.index.is_some() {
                    kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX
                } else {
                    0
                },
                eax,
                ebx,
                ecx,
                edx,
                ..Default::default()
            });
        }
        let cpuid = kvm_bindings::CpuId::from_entries(&entries)
            .map_err(|_| Error::Missing("room for the hypervisor CPUID leaves"))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(ioctl("KVM_SET_CPUID2"))?;
        self.cpuid = cpuid;
        Ok(())
    }

    /// Supplies the data of the port read that caused the last exit (read by the guest
    /// when it resumes). Does nothing unless the last exit was a port read of exactly
    /// `data.len()` bytes.
    pub fn complete_io_in(&mut self, data: &[u8]) -> Result<(), Error> {
        let run_size = self.run_size;
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_IO {
            return Ok(());
        }
        // SAFETY: `exit_reason` says `io` is the union member KVM filled in.
        let io = unsafe { run.__bindgen_anon_1.io };
        let len = usize::from(io.size) * io.count as usize;
        let offset = usize::try_from(io.data_offset).unwrap_or(usize::MAX);
        if u32::from(io.direction) == KVM_EXIT_IO_OUT
            || len != data.len()
            || offset.checked_add(len).is_none_or(|end| end > run_size)
        {
            return Ok(());
        }
        let base = (run as *mut kvm_bindings::kvm_run).cast::<u8>();
        // SAFETY: as in `run`: KVM maps `run_size` bytes at `base`, and
        // `[offset, offset + len)` is inside that mapping (checked above), in the data
        // area after `kvm_run`; nothing else references it while `self` is borrowed.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(offset), len) };
        Ok(())
    }

    /// Makes the guest run the hypercall instruction at `rip` again, as a continued
    /// hypercall (Xen's continuation): `rax` holds `nr`, and the argument registers of
    /// the caller's mode (`rdi rsi rdx r10 r8`, or `ebx ecx edx esi edi` in 32-bit
    /// code, `compat`) hold `args`. The last exit is completed first without entering
    /// the guest (`immediate_exit`): KVM writes an exit's result and steps over its
    /// instruction only at the next `KVM_RUN`, which would otherwise undo what is set
    /// here.
    pub fn restart_hypercall(
        &mut self,
        rip: u64,
        nr: u64,
        args: [u64; 5],
        compat: bool,
    ) -> Result<(), Error> {
        self.fd.set_kvm_immediate_exit(1);
        let done = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match done {
            Err(e) if e.errno() == libc::EINTR => {}
            Err(source) => {
                return Err(Error::Ioctl {
                    op: "KVM_RUN (immediate_exit, completing a hypercall's exit)",
                    source,
                });
            }
            Ok(()) => {
                return Err(Error::Unexpected(
                    "KVM_RUN with immediate_exit set entered the guest",
                ));
            }
        }
        let mut r = self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        if r.rip == rip {
            // The exit was not completed (the instruction not stepped over): the
            // answer would still land at the next run, after the registers set here.
            return Err(Error::Unexpected(
                "KVM_RUN with immediate_exit set left a hypercall's exit incomplete",
            ));
        }
        r.rip = rip;
        r.rax = nr;
        let regs = if compat {
            [&mut r.rbx, &mut r.rcx, &mut r.rdx, &mut r.rsi, &mut r.rdi]
        } else {
            [&mut r.rdi, &mut r.rsi, &mut r.rdx, &mut r.r10, &mut r.r8]
        };
        for (reg, arg) in regs.into_iter().zip(args) {
            *reg = arg;
        }
        self.fd.set_regs(&r).map_err(ioctl("KVM_SET_REGS"))
    }

    /// The general-purpose registers.
    pub fn registers(&self) -> Result<Registers, Error> {
        let r = self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        Ok(Registers {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdi: r.rdi,
            rsi: r.rsi,
            rdx: r.rdx,
            r10: r.r10,
            r8: r.r8,
            rip: r.rip,
        })
    }

    /// What the MMU needs to translate guest-virtual addresses.
    pub fn paging(&self) -> Result<PagingState, Error> {
        let s = self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        Ok(PagingState {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            long_mode_code: s.cs.l != 0,
        })
    }

    /// The vCPU's TSC frequency in kHz (`KVM_GET_TSC_KHZ`).
    pub fn tsc_khz(&self) -> Result<u32, Error> {
        self.fd.get_tsc_khz().map_err(ioctl("KVM_GET_TSC_KHZ"))
    }

    /// The guest's current TSC value (`IA32_TSC` through `KVM_GET_MSRS`).
    pub fn guest_tsc(&self) -> Result<u64, Error> {
        const IA32_TSC: u32 = 0x10;
        let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: IA32_TSC,
            ..Default::default()
        }])
        .map_err(|_| Error::Missing("an MSR buffer"))?;
        let n = self.fd.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        match msrs.as_slice().first() {
            Some(e) if n == 1 => Ok(e.data),
            _ => Err(Error::Missing("IA32_TSC through KVM_GET_MSRS")),
        }
    }

    /// The registers worth reporting when the guest dies.
    pub fn snapshot(&self) -> Result<CpuSnapshot, Error> {
        let regs = self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        Ok(CpuSnapshot {
            rip: regs.rip,
            rsp: regs.rsp,
            rflags: regs.rflags,
            cr0: sregs.cr0,
            cr2: sregs.cr2,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            cs: sregs.cs.selector,
        })
    }
}

impl Vcpu {
    /// Opens the vCPU's binary statistics (`KVM_GET_STATS_FD`, KVM_CAP_BINARY_STATS_FD,
    /// Linux 5.14+): a descriptor of its own that stays readable from any thread after
    /// the vCPU has moved to its thread. [`Error::Missing`] when KVM lacks it.
    pub fn binary_stats(&self) -> Result<VcpuStats, Error> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and only returns a new descriptor;
        // the vCPU descriptor is valid for the duration of the call.
        let fd = unsafe { vmm_sys_util::ioctl::ioctl(&self.fd, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Err(Error::Missing("KVM_GET_STATS_FD (KVM_CAP_BINARY_STATS_FD)"));
        }
        // SAFETY: KVM just created `fd` for this process and nothing else owns it.
        let file = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        VcpuStats::parse(file).map_err(|_| Error::Missing("a readable KVM stats descriptor"))
    }
}

// kvm-ioctls 0.25 has no wrapper for this vCPU (and VM) ioctl: `_IO(KVMIO, 0xce)`.
vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

/// One statistic of a KVM stats descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDesc {
    /// Its name ("exits", "io_exits", "halt_poll_success_ns", ...).
    pub name: String,
    /// `KVM_STATS_TYPE_*` (cumulative, instant, peak, linear or log histogram).
    pub kind: u32,
    /// `KVM_STATS_UNIT_*` (none, bytes, seconds, cycles, boolean).
    pub unit: u32,
    /// Number of u64 items (1 for a plain counter; buckets for a histogram).
    pub size: u16,
    /// Byte offset of its items in the data block.
    pub offset: u32,
}

impl StatDesc {
    /// A plain cumulative u64 counter (what a phase's delta means something for).
    pub fn is_counter(&self) -> bool {
        self.kind == kvm_bindings::KVM_STATS_TYPE_CUMULATIVE && self.size == 1
    }
}

/// A vCPU's binary statistics: the stats descriptor and its layout, read once; every
/// [`VcpuStats::read`] is one `pread` of the data block. `Send + Sync` (reads are
/// positioned, no shared file offset), so it can sit in an `Arc` beside the running
/// vCPU.
#[derive(Debug)]
pub struct VcpuStats {
    file: std::fs::File,
    descs: Vec<StatDesc>,
    data_offset: u64,
    data_len: usize,
}

/// The largest layout accepted: KVM's vCPU stats have well under a hundred entries.
const MAX_STATS_DESCS: u32 = 4096;
const MAX_STATS_NAME: u32 = 4096;
const MAX_STATS_DATA: usize = 1 << 20;

impl VcpuStats {
    fn parse(file: std::fs::File) -> std::io::Result<Self> {
        use std::os::unix::fs::FileExt as _;
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let header_size = std::mem::size_of::<kvm_bindings::kvm_stats_header>();
        let desc_size = std::mem::size_of::<kvm_bindings::kvm_stats_desc>();
        let mut h = vec![0u8; header_size];
        file.read_exact_at(&mut h, 0)?;
        let word =
            |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        // kvm_stats_header: flags, name_size, num_desc, id_offset, desc_offset, data_offset.
        let (name_size, num_desc, desc_offset, data_offset) =
            (word(&h, 4), word(&h, 8), word(&h, 16), word(&h, 20));
        if num_desc > MAX_STATS_DESCS || name_size > MAX_STATS_NAME {
            return Err(bad("implausible stats header"));
        }
        let stride = desc_size + name_size as usize;
        let mut block = vec![0u8; stride * num_desc as usize];
        file.read_exact_at(&mut block, u64::from(desc_offset))?;
        let mut descs = Vec::with_capacity(num_desc as usize);
        let mut data_len = 0usize;
        for d in block.chunks_exact(stride) {
            // kvm_stats_desc: flags, exponent (i16), size (u16), offset, bucket_size, name.
            let flags = word(d, 0);
            let size = u16::from_le_bytes([d[6], d[7]]);
            let offset = word(d, 8);
            let name = &d[desc_size..];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            let end = offset as usize + usize::from(size) * 8;
            if end > MAX_STATS_DATA {
                return Err(bad("stats data block too large"));
            }
            data_len = data_len.max(end);
            descs.push(StatDesc {
                name: String::from_utf8_lossy(name).into_owned(),
                kind: flags & kvm_bindings::KVM_STATS_TYPE_MASK,
                unit: flags & kvm_bindings::KVM_STATS_UNIT_MASK,
                size,
                offset,
            });
        }
        Ok(Self {
            file,
            descs,
            data_offset: u64::from(data_offset),
            data_len,
        })
    }

    /// The statistics KVM offers.
    pub fn descriptors(&self) -> &[StatDesc] {
        &self.descs
    }

    /// The current value of every plain cumulative counter ([`StatDesc::is_counter`]),
    /// by name. Histograms, instant and peak values are left out: a phase's delta of
    /// them means nothing.
    pub fn read(&self) -> std::io::Result<BTreeMap<String, u64>> {
        use std::os::unix::fs::FileExt as _;
        let mut data = vec![0u8; self.data_len];
        self.file.read_exact_at(&mut data, self.data_offset)?;
        Ok(self
            .descs
            .iter()
            .filter(|d| d.is_counter())
            .filter_map(|d| {
                let at = d.offset as usize;
                let bytes = data.get(at..at + 8)?;
                let mut v = [0u8; 8];
                v.copy_from_slice(bytes);
                Some((d.name.clone(), u64::from_le_bytes(v)))
            })
            .collect())
    }
}

/// Human-readable name of a `KVM_SYSTEM_EVENT_*` type.
pub fn system_event_name(kind: u32) -> &'static str {
    match kind {
        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => "shutdown",
        kvm_bindings::KVM_SYSTEM_EVENT_RESET => "reset",
        kvm_bindings::KVM_SYSTEM_EVENT_CRASH => "crash",
        kvm_bindings::KVM_SYSTEM_EVENT_WAKEUP => "wakeup",
        kvm_bindings::KVM_SYSTEM_EVENT_SUSPEND => "suspend",
        _ => "unknown",
    }
}

/// Human-readable name of a `KVM_INTERNAL_ERROR_*` suberror.
pub fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception during exception delivery",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "exit during event delivery",
        kvm_bindings::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown suberror",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{START_INFO_ADDR, pvh_start_state};

    #[test]
    fn start_sregs_are_flat_protected_mode() {
        let mut sregs = kvm_sregs {
            apic_base: 0xfee0_0900,
            cr0: 0x6000_0010,
            ..Default::default()
        };
        apply_start_sregs(&mut sregs, &pvh_start_state(0x10_0000, START_INFO_ADDR));
        assert_eq!((sregs.cr0, sregs.cr4, sregs.efer), (0x11, 0, 0));
        assert_eq!(sregs.apic_base, 0xfee0_0900);
        let cs = sregs.cs;
        assert_eq!((cs.base, cs.limit, cs.type_), (0, 0xffff_ffff, 0xb));
        assert_eq!(
            (cs.s, cs.dpl, cs.present, cs.db, cs.g, cs.l),
            (1, 0, 1, 1, 1, 0)
        );
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!(
                (seg.base, seg.limit, seg.type_, seg.db, seg.g),
                (0, 0xffff_ffff, 3, 1, 1)
            );
        }
        let tr = sregs.tr;
        assert_eq!(
            (tr.base, tr.limit, tr.type_, tr.s, tr.present),
            (0, 0x67, 0xb, 0, 1)
        );
        assert_eq!(sregs.ldt.unusable, 1);
    }

    #[test]
    fn missing_device_is_named_in_the_error() {
        let err = Vm::open(c"/nonexistent/kvm").err().expect("no such device");
        assert_eq!(
            err.to_string(),
            "cannot open /nonexistent/kvm: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn lvt_delivery_mode_keeps_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[APIC_LVT0 + 2] = 1; // mask bit 16
        set_lvt_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
        assert_eq!(lapic.regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(lapic.regs[APIC_LVT0 + 2], 1);
        assert_eq!(lapic.regs[APIC_LVT1 + 1] as u8, 0x04);
    }

    #[test]
    fn shared_gsi_is_the_or_of_its_lines() {
        let (lines, log) = IrqLines::recording();
        let a = lines.line(19);
        let b = lines.line(19);
        let other = lines.line(20);
        a.set_level(true);
        a.set_level(true); // no change, no second edge
        b.set_level(true);
        a.set_level(false); // b still holds the line
        assert_eq!(log.take(), vec![(19, true)]);
        other.set_level(true);
        b.set_level(false);
        assert_eq!(log.take(), vec![(20, true), (19, false)]);
        a.set_level(true);
        assert_eq!((a.asserts(), b.asserts(), other.asserts()), (2, 1, 1));
        drop(a);
        drop(other);
        assert_eq!(log.take(), vec![(19, true), (19, false), (20, false)]);
        assert_eq!(lines.errors(), 0);
    }

    #[test]
    fn routing_is_qemus_pc_routing() {
        use kvm_bindings::{KVM_IRQCHIP_IOAPIC as IOAPIC, KVM_IRQCHIP_PIC_SLAVE as SLAVE};
        let r = pc_gsi_routes();
        assert!(r.contains(&(0, IOAPIC, 2)));
        assert!(!r.iter().any(|&(g, c, p)| g == 2 || (c == IOAPIC && p == 0)));
        assert!(r.contains(&(14, SLAVE, 6)));
        assert!(r.contains(&(14, IOAPIC, 14)));
        assert!(r.contains(&(23, IOAPIC, 23)));
        assert_eq!(r.iter().filter(|e| e.0 >= 16).count(), 8);
        assert!(pc_gsi_routing().is_ok());
    }
}
