//! The VMM: builds a VM from a [`VmConfig`], runs its vCPU on its own thread, and reports
//! how the run ended ([`Outcome`]) with the counters of [`crate::stats`].
//!
//! `Vmm::new` validates everything the user controls (memory size, command line, kernel
//! image and its fit in memory) before it touches `/dev/kvm`, so bad input is reported
//! the same way on hosts without KVM.
//!
//! Emulated PCI devices: every VM has PCI bus 0 of QEMU's `pc` machine
//! ([`crate::devices::pci_bus`]); the integrator adds models with
//! [`Vmm::add_pci_device`] and gives them interrupt lines from [`Vmm::irq_line`] /
//! [`Vmm::pci_intx_line`] before [`Vmm::run`], which writes the MP table describing
//! them. A guest that never touches 0xCF8 sees no difference.
//!
//! Counters: the vCPU thread counts each exit in a shared [`Counters`] (one uncontended
//! lock per exit) before the access reaches a device, so [`Vmm::counters`] gives a handle
//! whose [`Counters::snapshot`] reads every counter from any thread while the VM runs.
//! The phase-mark port at 0xf8 ([`crate::devices::bench_mark`]) takes such a snapshot
//! at every mark; the report pairs them into `phases`.
//!
//! Timeout: the calling thread waits on a channel with a deadline (no polling). When the
//! deadline passes it sets a stop flag and kicks the vCPU thread out of `KVM_RUN` with a
//! real-time signal. A signal that lands just before the thread enters `KVM_RUN` is lost,
//! so the kick is repeated every few milliseconds until the thread answers.

use std::collections::BTreeMap;
use std::io::{self, Read, Write as _};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::boot::{self, BootError, MemoryLayout};
use crate::devices::bench_mark::{self, MARK_PORT, MARK_PORT_SIZE, MarkPort, Phase};
use crate::devices::console::ConsoleSink;
use crate::devices::debugcon::{DEBUGCON_PORT, DebugCon};
use crate::devices::exit_port::{EXIT_PORT, EXIT_PORT_SIZE, ExitPort};
use crate::devices::i8042;
use crate::devices::pci::{BarKind, PciDevice};
use crate::devices::pci_bus::{self, PciAddr, PciBus, PciError};
use crate::devices::serial::{COM1_IRQ, COM1_PORT, COM1_SIZE, SerialPort};
use crate::devices::{Action, Bus, BusError, GuestMemory, IrqLine};
use crate::elf::{self, ElfError};
use crate::kvm::{self, CpuSnapshot, Vcpu, VcpuExit, Vm};
use crate::stats::{Counters, ExitKind, RunStats};
use crate::xen::hypercall_page::{HYPERCALL_PORT, stub_mode};
use crate::xen::{self, Xen, XenConfig};
use crate::{EXIT_GUEST_CRASHED, EXIT_TIMEOUT};

/// Largest kernel file the shim reads.
pub const MAX_KERNEL_SIZE: u64 = 1 << 30;

/// How often the watchdog re-sends the kick until the vCPU thread answers.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// Any failure of the shim itself (exit status 125). How the guest ended is not an
/// error but an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel or initrd file cannot be read.
    #[error("{what} {name}: cannot read: {source}")]
    FileRead {
        /// "kernel", "initrd" or "module".
        what: &'static str,
        /// The path as given.
        name: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel image is not a valid PVH ELF.
    #[error("kernel {name}: {source}")]
    Elf {
        /// The path as given.
        name: String,
        /// What is wrong with it.
        source: ElfError,
    },
    /// The kernel does not fit the guest's memory.
    #[error("kernel {name}: {source}")]
    KernelFit {
        /// The path as given.
        name: String,
        /// Which segment does not fit, and where.
        source: BootError,
    },
    /// Memory, command line or boot information.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// KVM refused something.
    #[error(transparent)]
    Kvm(#[from] kvm::Error),
    /// Two devices claim the same addresses.
    #[error("device bus: {0}")]
    Bus(#[from] BusError),
    /// A PCI function could not be added.
    #[error("PCI: {0}")]
    Pci(#[from] PciError),
    /// An eventfd or thread could not be created.
    #[error("cannot create {what}: {source}")]
    Resource {
        /// What was being created.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The vCPU kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// The Xen interface could not be set up.
    #[error("xen: {0}")]
    Xen(String),
    /// A disk or NIC could not be created.
    #[error("{0}")]
    Devices(String),
    /// The vCPU thread died without reporting.
    #[error("the vCPU thread ended without reporting a result")]
    VcpuThreadLost,
}

/// A kernel image and the name to call it by in messages.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Usually the path it was read from.
    pub name: String,
    /// The ELF file's bytes.
    pub image: Vec<u8>,
}

impl Kernel {
    /// Reads the kernel from `path` (a regular file or a pipe, at most
    /// [`MAX_KERNEL_SIZE`] bytes; a device such as `/dev/zero` is refused rather than
    /// read forever).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let (name, image) = read_boot_file(path, "kernel")?;
        Ok(Self { name, image })
    }

    /// A kernel held in memory (tests build these with [`crate::testing`]).
    pub fn from_bytes(name: impl Into<String>, image: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            image,
        }
    }
}

/// Reads a file the guest boots with (the kernel, an initrd): a regular file or a pipe,
/// at most [`MAX_KERNEL_SIZE`] bytes; a device such as `/dev/zero` is refused rather
/// than read forever. `what` names it in errors. Returns its name and bytes.
pub fn read_boot_file(path: &Path, what: &'static str) -> Result<(String, Vec<u8>), Error> {
    let name = path.display().to_string();
    let read_err = |source| Error::FileRead {
        what,
        name: name.clone(),
        source,
    };
    let check = |kind: std::fs::FileType| {
        if kind.is_dir() {
            return Err(read_err(io::ErrorKind::IsADirectory.into()));
        }
        if !(kind.is_file() || kind.is_fifo()) {
            return Err(read_err(io::Error::other("not a regular file")));
        }
        Ok(())
    };
    // Look before opening: opening some devices has effects (a watchdog arms), and
    // opening a FIFO without a writer blocks.
    check(std::fs::metadata(path).map_err(read_err)?.file_type())?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    // The path may have changed between the two looks.
    let kind = file.metadata().map_err(read_err)?.file_type();
    check(kind)?;
    if kind.is_fifo() {
        // Blocking reads from here on: a pipe's writer may still be producing.
        // SAFETY: F_SETFL on a descriptor this function owns; no memory involved.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) } < 0 {
            return Err(read_err(io::Error::last_os_error()));
        }
    }
    let mut image = Vec::new();
    file.take(MAX_KERNEL_SIZE + 1)
        .read_to_end(&mut image)
        .map_err(read_err)?;
    if image.len() as u64 > MAX_KERNEL_SIZE {
        return Err(read_err(io::Error::other(format!(
            "larger than {} MiB",
            MAX_KERNEL_SIZE >> 20
        ))));
    }
    Ok((name, image))
}

/// Everything a run needs.
pub struct VmConfig {
    /// The PVH kernel.
    pub kernel: Kernel,
    /// Boot modules, listed in this order in `hvm_start_info` (Linux takes the first as
    /// its initramfs).
    pub modules: Vec<boot::BootModule>,
    /// Guest RAM in MiB ([`boot::MIN_MEM_MIB`]..=[`boot::MAX_MEM_MIB`]).
    pub mem_mib: u64,
    /// The guest's command line (at most [`boot::CMDLINE_MAX`] bytes).
    pub cmdline: String,
    /// End the run with [`Outcome::Timeout`] after this long.
    pub timeout: Option<Duration>,
    /// Where guest console output goes.
    pub console: ConsoleSink,
    /// Where the guest's `console_io` output goes: Xen's own log, kept apart from the
    /// guest's consoles as on Xen, each line prefixed `(dN) ` as Xen prints it.
    pub xen_log: ConsoleSink,
    /// Offer the Xen interface (CPUID leaves, hypercalls, xenstore, PV console).
    pub xen: bool,
    /// Where KVM's Xen support intercepts `vmcall`, hand it the Xen timer of a guest
    /// that calls Xen that way (its timer hypercalls are then handled in the kernel).
    pub kvm_xen_accel: bool,
    /// The guest's domain id under Xen.
    pub domid: u16,
    /// The guest's name in xenstore.
    pub name: String,
    /// Disks: PV (blkback, in xvda, xvdb, ... order) or emulated (IDE).
    pub disks: Vec<crate::backends::spec::DiskSpec>,
    /// NICs on TAP devices: PV (netback) or emulated (e1000).
    pub nets: Vec<crate::backends::spec::NetSpec>,
}

impl VmConfig {
    /// 128 MiB, empty command line, no timeout, console on stdout, Xen's log on
    /// stderr.
    pub fn new(kernel: Kernel) -> Self {
        Self {
            kernel,
            modules: Vec::new(),
            mem_mib: 128,
            cmdline: String::new(),
            timeout: None,
            console: ConsoleSink::stdout(),
            xen_log: ConsoleSink::new(std::io::stderr()),
            xen: true,
            kvm_xen_accel: true,
            domid: xen::DEFAULT_DOMID,
            name: "guest".into(),
            disks: Vec::new(),
            nets: Vec::new(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The guest wrote `status` to the exit port.
    Exited {
        /// The low byte of the value written.
        status: u8,
    },
    /// The guest reset the machine through the 8042 controller (a reboot), which ends
    /// the run (exit status 0, like QEMU's `-no-reboot`).
    Reset,
    /// The guest called `SCHEDOP_shutdown`.
    XenShutdown {
        /// `SHUTDOWN_*`: 0 poweroff, 1 reboot, 2 suspend, 3 crash, 4 watchdog, 5 soft reset.
        reason: u32,
    },
    /// Whoever holds a [`StopHandle`] stopped the run.
    Stopped,
    /// The timeout expired first.
    Timeout {
        /// The timeout, in milliseconds.
        timeout_ms: u64,
    },
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault {
        /// Registers at the fault, if KVM still reported them.
        cpu: Option<CpuSnapshot>,
    },
    /// KVM could not handle an exit.
    InternalError {
        /// `KVM_INTERNAL_ERROR_*`.
        suberror: u32,
        /// Registers at the error, if KVM still reported them.
        cpu: Option<CpuSnapshot>,
    },
    /// VM entry failed.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// A KVM system event (reset, shutdown, crash).
    SystemEvent {
        /// `KVM_SYSTEM_EVENT_*`.
        event: u32,
    },
    /// An exit the shim cannot resume from.
    UnexpectedExit {
        /// Exit name.
        exit: String,
        /// `KVM_EXIT_*` code.
        reason: u32,
    },
}

impl Outcome {
    /// The `host-shim` process exit status for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Exited { status } => *status,
            Outcome::Reset => 0,
            Outcome::XenShutdown { reason } => match *reason {
                pv_drivers::abi::sched::SHUTDOWN_CRASH
                | pv_drivers::abi::sched::SHUTDOWN_WATCHDOG => EXIT_GUEST_CRASHED,
                _ => 0,
            },
            Outcome::Timeout { .. } => EXIT_TIMEOUT,
            Outcome::Stopped => EXIT_STOPPED,
            _ => EXIT_GUEST_CRASHED,
        }
    }

    /// Whether the guest ended the run itself through the exit port.
    pub fn is_guest_exit(&self) -> bool {
        matches!(
            self,
            Outcome::Exited { .. } | Outcome::Reset | Outcome::XenShutdown { .. }
        )
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let regs = |cpu: &Option<CpuSnapshot>| match cpu {
            Some(cpu) => format!(" ({cpu})"),
            None => String::new(),
        };
        match self {
            Outcome::Exited { status } => write!(f, "guest exited with status {status}"),
            Outcome::Reset => write!(f, "guest reset the machine (8042 reset): run ended"),
            Outcome::XenShutdown { reason } => write!(
                f,
                "guest shut down through Xen: {}",
                shutdown_reason_name(*reason)
            ),
            Outcome::Stopped => write!(f, "the run was stopped from outside"),
            Outcome::Timeout { timeout_ms } => {
                let secs = Duration::from_millis(*timeout_ms).as_secs_f64();
                write!(f, "guest did not exit within {secs} s")
            }
            Outcome::TripleFault { cpu } => write!(f, "guest triple-faulted{}", regs(cpu)),
            Outcome::InternalError { suberror, cpu } => write!(
                f,
                "KVM internal error {suberror} ({}){}",
                kvm::internal_error_name(*suberror),
                regs(cpu)
            ),
            Outcome::FailEntry { reason } => write!(
                f,
                "KVM could not enter the guest (hardware entry failure reason {reason:#x})"
            ),
            Outcome::SystemEvent { event } => write!(
                f,
                "guest raised KVM system event {event} ({})",
                kvm::system_event_name(*event)
            ),
            Outcome::UnexpectedExit { exit, reason } => {
                write!(
                    f,
                    "unexpected vCPU exit '{exit}' (KVM exit reason {reason})"
                )
            }
        }
    }
}

/// The result of [`Vmm::run`].
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// How the run ended.
    pub outcome: Outcome,
    /// The `host-shim` exit status for it.
    pub exit_code: u8,
    /// Wall-clock time from starting the vCPU to the end of the run.
    pub run_time_ns: u64,
    /// All vCPU exits, whatever their kind.
    pub exits_total: u64,
    /// The counters.
    pub stats: RunStats,
    /// The guest's measured phases (phase marks on port 0xf8, paired: see
    /// [`bench_mark::pair_marks`]), each with [`Counters::snapshot`]s at its marks.
    pub phases: Vec<Phase>,
    /// What the shim noticed about the run that the outcome does not say (printed as
    /// `host-shim: note: ...` lines).
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl RunReport {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // Plain structs of integers, strings and maps: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// A VM ready to run.
pub struct Vmm {
    vm: Vm,
    vcpu: Vcpu,
    xen: Option<Arc<Xen>>,
    devices: crate::devmgr::Devices,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    pci: PciBus,
    memory: GuestMemory,
    counters: Counters,
    console: ConsoleSink,
    xen_log: ConsoleSink,
    /// `vmcall`/`vmmcall` reach the shim (KVM's Xen support intercepts them).
    vmcall: bool,
    xen_attrs: Option<kvm::XenVmAttrs>,
    timeout: Option<Duration>,
    run_tx: mpsc::Sender<RunMsg>,
    run_rx: mpsc::Receiver<RunMsg>,
}

impl Vmm {
    /// Validates `config`, loads the kernel and sets up the VM, its devices and vCPU.
    pub fn new(config: VmConfig) -> Result<Self, Error> {
        let VmConfig {
            kernel,
            modules,
            mem_mib,
            cmdline,
            timeout,
            console,
            xen_log,
            xen: with_xen,
            kvm_xen_accel,
            domid,
            name,
            disks,
            nets,
        } = config;
        crate::devmgr::check(&disks, &nets, with_xen)?;
        if with_xen && !(1..pv_drivers::abi::xen::DOMID_FIRST_RESERVED).contains(&domid) {
            return Err(Error::Xen(format!(
                "domain id {domid} is not a guest domain id (1..{})",
                pv_drivers::abi::xen::DOMID_FIRST_RESERVED
            )));
        }
        let layout = MemoryLayout::new(mem_mib)?;
        let layout = if with_xen {
            layout.with_xen_extra()
        } else {
            layout
        };
        boot::check_cmdline(&cmdline)?;
        let image = elf::parse(&kernel.image).map_err(|source| Error::Elf {
            name: kernel.name.clone(),
            source,
        })?;
        layout
            .check_fits(&image)
            .map_err(|source| Error::KernelFit {
                name: kernel.name.clone(),
                source,
            })?;

        let memory = layout.allocate()?;
        boot::load_kernel(&memory, &kernel.image, &image).map_err(|source| Error::KernelFit {
            name: kernel.name.clone(),
            source,
        })?;
        let kernel_end = image.segments.iter().map(|s| s.end()).max().unwrap_or(0);
        let module_at = boot::module_addresses(&layout, &modules, kernel_end)?;
        let placed: Vec<_> = modules.iter().zip(module_at).collect();
        let start_info = boot::write_boot_info(&memory, &layout, &cmdline, &placed)?;

        let mut vm = Vm::new()?;
        vm.map_memory(&memory)?;

        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let pci = pc_pci_bus(&pio, &mmio, &layout, with_xen)?;
        // Doorbells (virtio notify addresses) are KVM ioeventfds: no exit per notify.
        pci.set_doorbells(vm.doorbells());
        let serial = SerialPort::new(console.clone()).map_err(|source| Error::Resource {
            what: "the COM1 interrupt eventfd",
            source,
        })?;
        vm.register_irqfd(serial.irq_evt(), COM1_IRQ)?;
        pio.insert(
            COM1_PORT.into(),
            COM1_SIZE.into(),
            Arc::new(Mutex::new(serial)),
        )?;
        pio.insert(
            DEBUGCON_PORT.into(),
            1,
            Arc::new(Mutex::new(DebugCon::new(console.clone()))),
        )?;
        pio.insert(
            i8042::DATA_PORT.into(),
            1,
            Arc::new(Mutex::new(i8042::I8042Port::data())),
        )?;
        pio.insert(
            i8042::COMMAND_PORT.into(),
            1,
            Arc::new(Mutex::new(i8042::I8042Port::command())),
        )?;
        pio.insert(
            EXIT_PORT.into(),
            EXIT_PORT_SIZE.into(),
            Arc::new(Mutex::new(ExitPort::new())),
        )?;
        pio.insert(
            crate::devices::rtc::RTC_PORT.into(),
            crate::devices::rtc::RTC_PORTS.into(),
            Arc::new(Mutex::new(crate::devices::rtc::CmosRtc::new())),
        )?;

        let mut vcpu = vm.create_vcpu(0, &boot::pvh_start_state(image.pvh_entry, start_info))?;
        let kvm_stats = vcpu.binary_stats().map_err(|e| e.to_string());
        let mut vmcall = false;
        let xen = if with_xen {
            let config = XenConfig {
                domid,
                name,
                tsc_khz: vcpu.tsc_khz()?,
                ram_pages: layout.mib() * boot::MIB / 4096,
                max_gpfn: layout
                    .ram_ranges()
                    .last()
                    .map_or(0, |&(base, size)| (base + size) / 4096 - 1),
                store_page: boot::XENSTORE_PAGE,
                console_page: boot::CONSOLE_PAGE,
            };
            vcpu.set_hypervisor_leaves(&xen::cpuid_leaves(&config))?;
            vm.trap_msrs(xen::HYPERCALL_MSR, 1)?;
            vmcall = vm.intercept_xen_hypercalls(xen::HYPERCALL_MSR)?;
            let tsc = vcpu.guest_tsc()?;
            let xen = Xen::new(
                config,
                xen::guest_mem::GuestRam::new(memory.clone()),
                vm.interrupter(),
                tsc,
            )
            .map_err(Error::Xen)?;
            xen.attach_console(console.clone()).map_err(Error::Xen)?;
            xen.attach_xenstore().map_err(Error::Xen)?;
            if vmcall && kvm_xen_accel {
                xen.allow_kvm_xen();
            }
            Some(xen)
        } else {
            None
        };
        let counters = Counters::new(pci.clone(), xen.clone(), kvm_stats);
        pio.insert_named(
            MARK_PORT.into(),
            MARK_PORT_SIZE.into(),
            bench_mark::NAME,
            Arc::new(Mutex::new(MarkPort::new(counters.clone()))),
        )?;
        let (run_tx, run_rx) = mpsc::channel();
        let mut vmm = Self {
            vm,
            vcpu,
            xen,
            devices: crate::devmgr::Devices::default(),
            pio,
            mmio,
            pci,
            memory,
            counters,
            console,
            xen_log,
            vmcall,
            xen_attrs: None,
            timeout,
            run_tx,
            run_rx,
        };
        if vmcall {
            vmm.xen_attrs = Some(vmm.vm.xen_attrs());
        }
        let xen = vmm.xen.clone();
        vmm.devices = crate::devmgr::attach(&mut vmm, xen.as_ref(), &disks, &nets)?;
        Ok(vmm)
    }

    /// The port-I/O bus, for adding devices before [`Vmm::run`].
    pub fn pio_bus(&mut self) -> &Bus {
        &self.pio
    }

    /// The MMIO bus, for adding devices before [`Vmm::run`].
    pub fn mmio_bus(&mut self) -> &Bus {
        &self.mmio
    }

    /// PCI bus 0.
    pub fn pci_bus(&self) -> &PciBus {
        &self.pci
    }

    /// A handle that stops the run from any thread ([`Outcome::Stopped`]). Take it
    /// before [`Vmm::run`], which consumes the `Vmm`.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.run_tx.clone())
    }

    /// A handle on every counter of this VM, to [`Counters::snapshot`] from any thread
    /// while [`Vmm::run`] runs (and after). Take it before `run`, which consumes the
    /// `Vmm`.
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Guest RAM as the devices' DMA sees it.
    pub fn guest_memory(&self) -> GuestMemory {
        self.memory.clone()
    }

    /// Where a device sends MSI-X messages: irqfds on the VM's MSI routes (one per
    /// distinct message), `KVM_SIGNAL_MSI` beyond them. One per device, for its counters.
    pub fn msi_sink(&self) -> Arc<dyn crate::devices::MsiSink> {
        Arc::new(self.vm.msi_sender())
    }

    /// Adds a PCI model as `name` (its counters go to `stats.devices.<name>`) at `slot`
    /// (`None`: the next free device number from 00:03.0). Its BARs are assigned and
    /// enabled as firmware would; see [`PciBus::add`].
    pub fn add_pci_device(
        &mut self,
        name: &str,
        device: Arc<Mutex<dyn PciDevice>>,
        slot: Option<PciAddr>,
    ) -> Result<PciAddr, Error> {
        Ok(self.pci.add(name, device, slot)?)
    }

    /// An interrupt line driving `gsi` (ISA IRQ 14 for the primary IDE channel, say);
    /// its rising edges are counted in `stats.irq_asserts`.
    pub fn irq_line(&mut self, gsi: u32) -> Arc<dyn IrqLine> {
        let line = self.vm.irq_line(gsi);
        self.counters.add_irq_line(line.clone());
        line
    }

    /// The interrupt line INTx `pin` (1 = INTA#) of a function at `addr` is routed to
    /// ([`pci_bus::intx_gsi`]); `None` for an invalid pin. Create it before adding the
    /// model, with the address [`PciBus::free_slot`] gives or the one you pass.
    pub fn pci_intx_line(&mut self, addr: PciAddr, pin: u8) -> Option<Arc<dyn IrqLine>> {
        let gsi = pci_bus::intx_gsi(addr.device, pin)?;
        Some(self.irq_line(gsi))
    }

    /// Runs the guest until it exits, crashes, or the timeout expires.
    pub fn run(self) -> Result<RunReport, Error> {
        install_kick_handler()?;
        unblock_kick_signal()?;
        let Vmm {
            vm,
            vcpu,
            xen,
            devices,
            pio,
            mmio,
            pci,
            memory,
            counters,
            console,
            xen_log,
            vmcall,
            xen_attrs,
            timeout,
            run_tx: tx,
            run_rx: rx,
        } = self;
        write_mp_table(&memory, &pci)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut runner = VcpuRunner {
            vcpu,
            xen: xen.clone(),
            xen_log: xen_log.clone(),
            log_line_start: true,
            xen_attrs,
            relays: BTreeMap::new(),
            pio,
            mmio,
            stop: stop.clone(),
            counters: counters.clone(),
        };
        let timer = match &xen {
            Some(xen) => {
                let xen = xen.clone();
                Some(
                    thread::Builder::new()
                        .name("xen-timer".into())
                        .spawn(move || xen.timer_thread())
                        .map_err(|source| Error::Resource {
                            what: "the Xen timer thread",
                            source,
                        })?,
                )
            }
            None => None,
        };
        let start = Instant::now();
        let handle = thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                let result = runner.run();
                let _ = tx.send(RunMsg::Done(result));
            })
            .map_err(|source| Error::Resource {
                what: "the vCPU thread",
                source,
            })?;

        // Wait for the vCPU thread, a stop request or the deadline, whichever comes
        // first.
        let deadline = timeout.map(|t| start + t);
        let mut stopped = false;
        let mut stop_now = |stopped_by_request: bool| {
            stopped = stopped_by_request;
            stop.store(true, Ordering::SeqCst);
            // A vCPU thread waiting for console room (host output blocked) cannot be
            // kicked; release it by dropping further output.
            console.abandon();
            xen_log.abandon();
            loop {
                // Fails only once the thread has exited, and then the channel answers.
                let _ = handle.kill(SIGRTMIN());
                match rx.recv_timeout(KICK_INTERVAL) {
                    Ok(RunMsg::Done(r)) => break Some(r),
                    Ok(RunMsg::Stop) | Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break None,
                }
            }
        };
        let msg = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        let received = match msg {
            Ok(RunMsg::Done(r)) => Some(r),
            Ok(RunMsg::Stop) => stop_now(true),
            Err(RecvTimeoutError::Timeout) => stop_now(false),
            Err(RecvTimeoutError::Disconnected) => None,
        };
        let run_time = start.elapsed();
        let _ = handle.join();
        if let Some(xen) = &xen {
            xen.stop();
        }
        if let Some(timer) = timer {
            let _ = timer.join();
        }
        let backend_stats = devices.stop();
        // All of a finished guest's output reaches the host; after a timeout, give the
        // host a moment but do not wait on a blocked output.
        let timed_out = received.as_ref().is_some_and(|r| matches!(r, Ok(None)));
        for sink in [&console, &xen_log] {
            sink.drain(timed_out.then_some(CONSOLE_DRAIN_AFTER_TIMEOUT));
        }
        drop(vm);

        let result = received.ok_or(Error::VcpuThreadLost)?;
        let live = counters.live();
        let mut stats = live.stats;
        stats.xen = xen.as_ref().map(|x| x.stats());
        stats.backends = backend_stats;
        counters.add_devices(&mut stats, live.device_exits);
        stats.irq_asserts.retain(|_, n| *n > 0);
        let outcome = match result? {
            Some(outcome) => outcome,
            // Stopped: by a StopHandle, else by the watchdog.
            None if stopped => Outcome::Stopped,
            None => Outcome::Timeout {
                timeout_ms: timeout.map_or(0, |t| t.as_millis() as u64),
            },
        };
        let mut notes = Vec::new();
        if let Some(x) = stats.xen.as_mut() {
            x.vmcall_intercepted = vmcall;
            // A guest that calls Xen with vmcall/vmmcall (Linux since its late-2024
            // hypercall hardening) gets KVM's -1000 without the shim hearing of it, and
            // then hangs or reboots: say why when a run ends that way.
            let hung = matches!(
                outcome,
                Outcome::Timeout { .. } | Outcome::Stopped | Outcome::Reset
            );
            if !vmcall && hung && x.hypercalls.is_empty() {
                notes.push(
                    "the guest made no hypercall through the hypercall page, and this \
                     host's KVM cannot hand vmcall/vmmcall to the shim (no KVM_CAP_XEN_HVM, \
                     e.g. kvm-pvm): a guest that calls Xen with vmcall/vmmcall directly, as \
                     Linux does, cannot reach the shim's Xen interface here; run it under a \
                     KVM with Xen support (inside scripts/shim-in-qemu.sh) or with --no-xen"
                        .to_owned(),
                );
            }
        }
        Ok(RunReport {
            exit_code: outcome.exit_code(),
            outcome,
            run_time_ns: run_time.as_nanos() as u64,
            exits_total: stats.exits.total(),
            stats,
            phases: counters.phases(),
            notes,
        })
    }
}

fn shutdown_reason_name(reason: u32) -> &'static str {
    use pv_drivers::abi::sched::*;
    match reason {
        SHUTDOWN_POWEROFF => "poweroff",
        SHUTDOWN_REBOOT => "reboot",
        SHUTDOWN_SUSPEND => "suspend",
        SHUTDOWN_CRASH => "crash",
        SHUTDOWN_WATCHDOG => "watchdog",
        SHUTDOWN_SOFT_RESET => "soft reset",
        _ => "unknown reason",
    }
}

/// Exit status of a run stopped through its [`StopHandle`] (128 + SIGINT, as a shell
/// reports a command interrupted by Ctrl-C).
pub const EXIT_STOPPED: u8 = 130;

/// What the waiting thread of [`Vmm::run`] hears: the vCPU thread's end, or a request
/// to stop.
enum RunMsg {
    Done(Result<Option<Outcome>, kvm::Error>),
    Stop,
}

/// Stops a run from any thread (a benchmark's Ctrl-C): the vCPU is kicked out of the
/// guest as on `--timeout`, and the run ends with [`Outcome::Stopped`]. Stopping a run
/// that has ended does nothing.
#[derive(Clone)]
pub struct StopHandle(mpsc::Sender<RunMsg>);

impl StopHandle {
    /// Asks the run to stop.
    pub fn stop(&self) {
        let _ = self.0.send(RunMsg::Stop);
    }
}

/// How long output queued by a timed-out guest may take to reach the host.
const CONSOLE_DRAIN_AFTER_TIMEOUT: Duration = Duration::from_millis(500);

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivering the signal is what makes KVM_RUN return EINTR.
}

/// Unblocks the kick signal in the calling thread, and so in the vCPU thread it is
/// about to create (threads inherit their creator's mask). Signal masks also survive
/// `exec`, so a parent that blocked SIGRTMIN would otherwise disable `--timeout`.
fn unblock_kick_signal() -> Result<(), Error> {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before use, and
    // pthread_sigmask only changes the calling thread's mask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SIGRTMIN());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::Signal(vmm_sys_util::errno::Error::new(rc)))
    }
}

fn install_kick_handler() -> Result<(), Error> {
    // Process-wide and idempotent: install once, remember the answer.
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    (*INSTALLED.get_or_init(|| register_signal_handler(SIGRTMIN(), kick_handler)))
        .map_err(Error::Signal)
}

/// The PCI bus of QEMU's `pc` machine on `pio`/`mmio`, with every range a BAR must not
/// cover reserved: guest RAM and the special pages, the in-kernel IOAPIC, LAPIC and
/// KVM's private pages; the in-kernel PIC, PIT and ELCR ports and the hypercall port.
fn pc_pci_bus(
    pio: &Arc<Bus>,
    mmio: &Arc<Bus>,
    layout: &MemoryLayout,
    with_xen: bool,
) -> Result<PciBus, Error> {
    let pci = PciBus::pc(pio.clone(), mmio.clone())?;
    for (base, size) in layout.ram_ranges() {
        pci.reserve(BarKind::Memory32, base, size);
    }
    let pages = [
        (boot::SPECIAL_PAGES_START, boot::SPECIAL_PAGES * 0x1000),
        (boot::IOAPIC_ADDR, 0x1000),
        (boot::LAPIC_ADDR, 0x1000),
        (kvm::KVM_IDENTITY_MAP_ADDR, 0x4000),
    ];
    for (base, len) in pages {
        pci.reserve(BarKind::Memory32, base, len);
    }
    if layout.xen_extra {
        pci.reserve(
            BarKind::Memory32,
            boot::XEN_EXTRA_START,
            boot::XEN_EXTRA_SIZE,
        );
    }
    for (port, len) in [(0x20, 2), (0x40, 4), (0x61, 1), (0xa0, 2), (0x4d0, 2)] {
        pci.reserve(BarKind::Io, port, len);
    }
    if with_xen {
        pci.reserve(BarKind::Io, HYPERCALL_PORT.into(), 4);
    }
    Ok(pci)
}

/// Writes the MP table for the PCI functions' interrupt routes.
fn write_mp_table(memory: &GuestMemory, pci: &PciBus) -> Result<(), Error> {
    let irqs: Vec<boot::MpPciIrq> = pci
        .intx_routes()
        .into_iter()
        .map(|(device, pin, gsi)| boot::MpPciIrq {
            device,
            pin,
            ioapic_pin: gsi as u8,
        })
        .collect();
    Ok(boot::write_mp_table(memory, &irqs)?)
}

/// The vCPU thread's state: the vCPU, the buses and the counters.
struct VcpuRunner {
    vcpu: Vcpu,
    xen: Option<Arc<Xen>>,
    /// Xen's log (`console_io`), and whether its next byte starts a line.
    xen_log: ConsoleSink,
    log_line_start: bool,
    /// KVM's Xen attributes, where its Xen support intercepts `vmcall`.
    xen_attrs: Option<kvm::XenVmAttrs>,
    /// Guest ports whose sends KVM signals on an eventfd, and the thread relaying each
    /// to its domain-0 notifier.
    relays: BTreeMap<u32, SendRelay>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    stop: Arc<AtomicBool>,
    /// Counted per exit, before the access reaches a device (see `step`).
    counters: Counters,
}

impl VcpuRunner {
    /// Runs until an outcome (`Some`) or until stopped by the watchdog (`None`).
    fn run(&mut self) -> Result<Option<Outcome>, kvm::Error> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            if let Some(outcome) = self.step()? {
                return Ok(Some(outcome));
            }
        }
    }

    /// One `KVM_RUN` and the handling of its exit.
    ///
    /// Every exit is counted (one lock of the counters) before its access reaches a
    /// device, so a snapshot a device takes (the mark port) includes the exit that
    /// carried it; the lock is released before the device runs.
    fn step(&mut self) -> Result<Option<Outcome>, kvm::Error> {
        let counters = &self.counters;
        let mut hypercall = None;
        let mut xen_call = None;
        let mut msr_write = None;
        match self.vcpu.run()? {
            VcpuExit::IoIn { port, size, data }
                if self.xen.is_some() && stub_mode(port).is_some() =>
            {
                counters.count(|c| {
                    c.stats.exits.io_in += 1;
                    c.stats.exits.hypercall += 1;
                });
                if size == 4 && data.len() == 4 {
                    // Answered below, once the exit's borrow of the vCPU has ended.
                    hypercall = stub_mode(port);
                } else {
                    data.fill(0xff);
                }
            }
            VcpuExit::IoOut { port, size, data } => {
                let name = self.pio.name_at(port.into());
                counters.count(|c| {
                    c.stats.exits.io_out += 1;
                    c.stats.count_port(port);
                    c.count_device(name, ExitKind::PioWrite);
                });
                // A string instruction arrives as several accesses in one exit.
                for access in data.chunks(size) {
                    match self.pio.write(port.into(), access) {
                        None => counters.count(|c| c.stats.unclaimed.pio_writes += 1),
                        Some(Action::Continue) => {}
                        Some(Action::Exit(status)) => {
                            return Ok(Some(Outcome::Exited { status }));
                        }
                        Some(Action::Reset) => return Ok(Some(Outcome::Reset)),
                    }
                }
            }
            VcpuExit::IoIn { port, size, data } => {
                let name = self.pio.name_at(port.into());
                counters.count(|c| {
                    c.stats.exits.io_in += 1;
                    c.stats.count_port(port);
                    c.count_device(name, ExitKind::PioRead);
                });
                for access in data.chunks_mut(size) {
                    if !self.pio.read(port.into(), access) {
                        counters.count(|c| c.stats.unclaimed.pio_reads += 1);
                    }
                }
            }
            VcpuExit::MmioRead { addr, data } => {
                let name = self.mmio.name_at(addr);
                counters.count(|c| {
                    c.stats.exits.mmio_read += 1;
                    c.count_device(name, ExitKind::MmioRead);
                });
                if !self.mmio.read(addr, data) {
                    counters.count(|c| c.stats.unclaimed.mmio_reads += 1);
                }
            }
            VcpuExit::MmioWrite { addr, data } => {
                let name = self.mmio.name_at(addr);
                counters.count(|c| {
                    c.stats.exits.mmio_write += 1;
                    c.count_device(name, ExitKind::MmioWrite);
                });
                match self.mmio.write(addr, data) {
                    None => counters.count(|c| c.stats.unclaimed.mmio_writes += 1),
                    Some(Action::Continue) => {}
                    Some(Action::Exit(status)) => return Ok(Some(Outcome::Exited { status })),
                    Some(Action::Reset) => return Ok(Some(Outcome::Reset)),
                }
            }
            // Only the Xen MSRs reach user space (the MSR filter): reads fault, as on
            // Xen; a write installs the hypercall page or faults.
            VcpuExit::MsrRead(mut msr) => {
                counters.count(|c| c.stats.exits.msr_read += 1);
                msr.fault();
            }
            VcpuExit::MsrWrite(msr) => {
                counters.count(|c| c.stats.exits.msr_write += 1);
                // Decided below, once the exit's borrow of the vCPU has ended.
                msr_write = Some((msr.index, msr.value()));
            }
            VcpuExit::XenHypercall {
                long_mode,
                cpl,
                nr,
                params,
            } => {
                counters.count(|c| c.stats.exits.xen_hcall += 1);
                // Answered below, once the exit's borrow of the vCPU has ended.
                xen_call = Some((long_mode, cpl, nr, params));
            }
            VcpuExit::Hlt => counters.count(|c| c.stats.exits.hlt += 1),
            VcpuExit::Interrupted => counters.count(|c| c.stats.exits.intr += 1),
            VcpuExit::Shutdown => {
                counters.count(|c| c.stats.exits.shutdown += 1);
                let cpu = self.vcpu.snapshot().ok();
                return Ok(Some(Outcome::TripleFault { cpu }));
            }
            VcpuExit::InternalError(suberror) => {
                counters.count(|c| c.stats.exits.internal_error += 1);
                let cpu = self.vcpu.snapshot().ok();
                return Ok(Some(Outcome::InternalError { suberror, cpu }));
            }
            VcpuExit::FailEntry(reason) => {
                counters.count(|c| c.stats.exits.fail_entry += 1);
                return Ok(Some(Outcome::FailEntry { reason }));
            }
            VcpuExit::SystemEvent(event) => {
                counters.count(|c| c.stats.exits.system_event += 1);
                return Ok(Some(Outcome::SystemEvent { event }));
            }
            VcpuExit::Other {
                name,
                reason,
                resumable,
            } => {
                counters.count(|c| c.stats.count_other(name));
                if !resumable {
                    return Ok(Some(Outcome::UnexpectedExit {
                        exit: name.to_owned(),
                        reason,
                    }));
                }
            }
        }
        if let Some((index, value)) = msr_write {
            // The stubs are written for the mode of the code writing the MSR.
            let mode = self
                .vcpu
                .paging()
                .ok()
                .map(|p| xen::hypercall::Mode::of(&p));
            let ok = self
                .xen
                .as_ref()
                .zip(mode)
                .is_some_and(|(xen, mode)| xen.write_msr(index, value, mode).is_ok());
            if !ok {
                self.vcpu.fault_msr_exit();
            }
        }
        if let Some(page) = hypercall {
            return self.hypercall(page);
        }
        if let Some((long_mode, cpl, nr, params)) = xen_call {
            return self.xen_hypercall(long_mode, cpl, nr, params);
        }
        Ok(None)
    }

    /// Runs the hypercall whose stub (written for `page` mode) just exited, and answers
    /// it in `eax`.
    fn hypercall(&mut self, page: xen::hypercall::Mode) -> Result<Option<Outcome>, kvm::Error> {
        if self.xen.is_none() {
            return Ok(None);
        }
        let regs = self.vcpu.registers()?;
        // The caller's mode decides the argument registers (nearly every hypercall
        // translates a pointer with the same state anyway).
        let paging = self.vcpu.paging()?;
        let call = xen::hypercall::Call {
            page: Some(page),
            ..xen::hypercall::Call::from_registers(&regs, xen::hypercall::Mode::of(&paging))
        };
        let outcome = self.dispatch(&call, Some(paging));
        // The stub sign-extends eax: results are 0, -errno, or small positive values.
        self.vcpu
            .complete_io_in(&(outcome.ret as i32).to_le_bytes())?;
        self.after_hypercall(outcome.after, regs.rip)
    }

    /// What the vCPU loop does after the hypercall whose instruction is at `rip` (the
    /// exit already answered): a continued hypercall sets the guest to run the
    /// instruction again with the continued arguments.
    fn after_hypercall(
        &mut self,
        after: xen::hypercall::After,
        rip: u64,
    ) -> Result<Option<Outcome>, kvm::Error> {
        use xen::hypercall::{After, Mode};
        match after {
            After::Resume => Ok(None),
            After::Shutdown(reason) => Ok(Some(Outcome::XenShutdown { reason })),
            After::Continue(next) => {
                let compat = next.mode == Mode::Compat;
                self.vcpu
                    .restart_hypercall(rip, next.nr, next.args, compat)?;
                Ok(None)
            }
        }
    }

    /// Runs a `vmcall`/`vmmcall` hypercall that KVM's Xen support handed over, and
    /// answers it in `rax`. Xen refuses hypercalls from user mode (`-EPERM`).
    fn xen_hypercall(
        &mut self,
        long_mode: bool,
        cpl: u32,
        nr: u64,
        params: [u64; 6],
    ) -> Result<Option<Outcome>, kvm::Error> {
        use pv_drivers::abi::errno::XenErrno;
        use xen::hypercall::{After, Outcome as Done};
        let refuse = |e: XenErrno| Done {
            ret: e.as_neg(),
            after: After::Resume,
        };
        let outcome = if self.xen.is_none() {
            refuse(XenErrno::ENOSYS)
        } else if cpl != 0 {
            refuse(XenErrno::EPERM)
        } else {
            let [a, b, c, d, e, _] = params;
            let call = xen::hypercall::Call {
                nr,
                args: [a, b, c, d, e],
                mode: if long_mode {
                    xen::hypercall::Mode::Long
                } else {
                    xen::hypercall::Mode::Compat
                },
                page: None,
            };
            self.dispatch(&call, None)
        };
        // KVM's exit leaves `rip` at the `vmcall` until the answer is taken.
        let rip = match outcome.after {
            After::Continue(_) => self.vcpu.registers()?.rip,
            _ => 0,
        };
        self.vcpu.complete_xen_hypercall(outcome.ret as u64);
        self.sync_kvm_xen();
        self.after_hypercall(outcome.after, rip)
    }

    /// Hands KVM's Xen support what it can now take over for a `vmcall` guest
    /// ([`Xen::kvm_xen_sync`]).
    fn sync_kvm_xen(&mut self) {
        let (Some(xen), Some(attrs)) = (self.xen.as_ref(), self.xen_attrs.as_ref()) else {
            return;
        };
        for req in xen.kvm_xen_sync() {
            let done = match req {
                xen::KvmXenRequest::SharedInfo { gfn, long_mode } => attrs
                    .set_long_mode(long_mode)
                    .and_then(|()| attrs.set_shared_info(gfn)),
                xen::KvmXenRequest::VcpuInfo(gpa) => self.vcpu.xen_set_vcpu_info(gpa),
                xen::KvmXenRequest::UpcallVector(v) => self.vcpu.xen_set_upcall_vector(v),
                xen::KvmXenRequest::Timer(port) => self.vcpu.xen_set_timer(port),
                xen::KvmXenRequest::EvtchnSend { port, dom0_port } => {
                    match xen.dom0_notifier(dom0_port) {
                        Some(notify) => SendRelay::start(xen.clone(), notify).and_then(|r| {
                            attrs.assign_evtchn_eventfd(port, &r.efd)?;
                            self.relays.insert(port, r);
                            Ok(())
                        }),
                        None => Err(kvm::Error::Missing("a domain-0 notifier")),
                    }
                }
                xen::KvmXenRequest::EvtchnUnsend(port) => {
                    let done = attrs.deassign_evtchn(port);
                    self.relays.remove(&port);
                    done
                }
            };
            xen.kvm_xen_applied(req, done.map_err(|e| e.to_string()));
        }
    }

    /// Runs `call` (the vCPU's paging state fetched on demand unless given) and says
    /// what comes next.
    fn dispatch(
        &mut self,
        call: &xen::hypercall::Call,
        paging: Option<crate::kvm::PagingState>,
    ) -> xen::hypercall::Outcome {
        let Some(xen) = self.xen.clone() else {
            return xen::hypercall::Outcome {
                ret: pv_drivers::abi::errno::XenErrno::ENOSYS.as_neg(),
                after: xen::hypercall::After::Resume,
            };
        };
        let vcpu = &self.vcpu;
        let mut fetch = || paging.or_else(|| vcpu.paging().ok());
        let log = &mut self.xen_log;
        let line_start = &mut self.log_line_start;
        let prefix = format!("(d{}) ", xen.domid());
        let mut print = |bytes: &[u8]| {
            // A closed host log loses the output, never the guest.
            let _ = log.write_all(&prefix_lines(&prefix, line_start, bytes));
        };
        let mut ctx = xen::hypercall::Ctx::new(&mut fetch, &mut print);
        xen.hypercall(call, &mut ctx)
    }
}

/// `bytes` with `prefix` before every line, `line_start` saying whether the first byte
/// starts one (and updated for the next call), as Xen prefixes a guest's `console_io`
/// lines with `(dN) ` in its log.
fn prefix_lines(prefix: &str, line_start: &mut bool, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + prefix.len());
    for &b in bytes {
        if *line_start {
            out.extend_from_slice(prefix.as_bytes());
        }
        out.push(b);
        *line_start = b == b'\n';
    }
    out
}

/// A thread that waits on an eventfd KVM signals for the guest's sends on one port
/// (`KVM_XEN_ATTR_TYPE_EVTCHN`) and runs that port's domain-0 notifier: the backend is
/// woken as by a send the shim handled, without the vCPU leaving the kernel. Dropped:
/// the thread ends.
struct SendRelay {
    efd: Arc<vmm_sys_util::eventfd::EventFd>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl SendRelay {
    fn start(xen: Arc<Xen>, notify: xen::evtchn::Notifier) -> Result<Self, kvm::Error> {
        let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC)
            .map(Arc::new)
            .map_err(|_| kvm::Error::Missing("an eventfd for an event channel"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (efd.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("xen-send-relay".into())
            .spawn(move || {
                // One read takes every signal since the last: one notification, as
                // the 2-level ABI merges events anyway.
                while e.read().is_ok() && !s.load(Ordering::SeqCst) {
                    xen.count_in_kernel_send();
                    notify();
                }
            })
            .map_err(|_| kvm::Error::Missing("a thread for an event channel"))?;
        Ok(Self {
            efd,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SendRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the reader, which sees the stop flag.
        let _ = self.efd.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
