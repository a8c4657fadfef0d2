//! The kernel proper: entered from pvh-boot's long-mode trampoline.

pub mod apic;
pub mod arch;
pub mod block;
pub mod console;
pub mod event;
pub mod exit;
pub mod hostile;
pub mod interrupts;
pub mod ioapic;
pub mod mark;
pub mod memory;
pub mod net;
pub mod platform;
pub mod pv;
pub mod selftest;
pub mod time;
pub mod xen;

use crate::kprintln;
use guest_kernel::cmdline::{ConsoleSel, LogLevel, Options};
use guest_kernel::exit_status;
use guest_kernel::ioopts::IoOptions;
use pvh_boot::entry::IDENTITY_MAP_END;
use pvh_boot::start_info::{self, BootInfo, PhysRead, Unreadable};
use spin::Once;

/// Physical memory through the boot identity map.
struct IdentityMap;

impl PhysRead for IdentityMap {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), Unreadable> {
        let end = paddr.checked_add(buf.len() as u64).ok_or(Unreadable)?;
        // Address 0 is "not present" in start_info (and a null pointer in Rust).
        if paddr == 0 || end > IDENTITY_MAP_END {
            return Err(Unreadable);
        }
        // SAFETY: [paddr, end) is non-null and inside the identity map, which maps page
        // 0 until `unmap_page_zero` (called after parsing). The loader's data is plain
        // bytes; a hostile loader may point it at `buf` itself, so the copy tolerates
        // overlap.
        unsafe {
            core::ptr::copy(paddr as *const u8, buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }
}

static BOOT_INFO: Once<BootInfo> = Once::new();

/// Called by pvh-boot's entry code in long mode with the start_info address. Boots in
/// phases: what the loader handed over, the machine (memory, time, APIC), Xen, the
/// emulated-device platform, then the workloads and the test hooks the command line
/// asks for.
#[unsafe(no_mangle)]
extern "C" fn pvh_rust_entry(start_info_paddr: u64) -> ! {
    console::init(ConsoleSel::AUTO);
    console::init_log(LogLevel::Info);
    interrupts::init();

    let (boot, opts, io) = boot_info(start_info_paddr);
    let mem = machine(boot, &opts);
    xen_bring_up();
    platform::init(xen::get().is_some());
    let status = workloads(&opts, &io);
    hooks(boot, &mem, &opts, status)
}

/// Copies the boot information out of the loader's memory, parses the command line
/// (exits on a bad one), switches to the console and log level it asks for, and
/// prints what the loader handed over.
fn boot_info(start_info_paddr: u64) -> (&'static BootInfo, Options<'static>, IoOptions<'static>) {
    let mut anomalies = [None; 8];
    let mut n_anomalies = 0;
    let parsed = start_info::parse(&IdentityMap, start_info_paddr, |a| {
        if let Some(slot) = anomalies.get_mut(n_anomalies) {
            *slot = Some(a);
        }
        n_anomalies += 1;
    });
    let boot = match parsed {
        Ok(b) => BOOT_INFO.call_once(|| b),
        Err(e) => {
            log::error!("pvh: bad start_info at {start_info_paddr:#x}: {e}");
            exit::exit(exit_status::BAD_BOOT_INFO);
        }
    };
    // SAFETY: everything the kernel needs from the loader is now copied into BOOT_INFO
    // (modules are never in page 0: `occupied` ranges are reserved, page 0 is below
    // 1 MiB and never allocated).
    unsafe { pvh_boot::entry::unmap_page_zero() };
    pvh_boot::entry::unmap_stack_guard();
    let opts = match Options::parse(boot.cmdline()) {
        Ok(o) => o,
        Err(e) => {
            log::error!("cmdline: {e}");
            exit::exit(exit_status::BAD_CMDLINE);
        }
    };
    let io = match guest_kernel::ioopts::parse(boot.cmdline()) {
        Ok(o) => o,
        Err(e) => {
            log::error!("cmdline: {e}");
            exit::exit(exit_status::BAD_CMDLINE);
        }
    };
    console::init(opts.console);
    console::init_log(opts.loglevel);

    kprintln!("guest-kernel {} (Xen PVH entry)", env!("CARGO_PKG_VERSION"));
    let sinks = console::describe();
    kprintln!("console: {sinks}");
    kprintln!(
        "pvh: start_info at {start_info_paddr:#x}: magic {:#010x} version {} flags {:#x}",
        pv_drivers::abi::start_info::XEN_HVM_START_MAGIC_VALUE,
        boot.version,
        boot.flags
    );
    kprintln!("pvh: cmdline: \"{}\"", boot.cmdline());
    for w in opts.unknown() {
        log::warn!("cmdline: ignoring unknown option '{w}'");
    }
    kprintln!(
        "pvh: memmap: {} entries from the loader",
        boot.memmap_entries
    );
    for r in boot.memmap.regions() {
        kprintln!(
            "pvh:   [{:#014x}, {:#014x}) {}",
            r.start,
            r.end,
            r.kind.name()
        );
    }
    for a in anomalies.iter().flatten() {
        log::warn!("pvh: {a}");
    }
    if n_anomalies > anomalies.len() {
        log::warn!(
            "pvh: {} more memory-map anomalies",
            n_anomalies - anomalies.len()
        );
    }
    for (i, m) in boot.modules().iter().enumerate() {
        kprintln!("pvh: module {i}: [{:#x}, +{:#x})", m.paddr, m.size);
    }
    if let Some(rsdp) = boot.rsdp_paddr {
        kprintln!("pvh: ACPI RSDP at {rsdp:#x}");
    }
    (boot, opts, io)
}

/// Frame allocator and heap (exits if they cannot be built), TSC calibration, the
/// local APIC and its timer.
fn machine(boot: &'static BootInfo, opts: &Options<'_>) -> memory::MemoryInfo {
    let mem = match memory::init(boot, opts.heap_bytes) {
        Ok(m) => m,
        Err(e) => {
            log::error!("memory: {e}");
            exit::exit(exit_status::BAD_BOOT_INFO);
        }
    };
    let (ks, ke) = memory::kernel_image();
    kprintln!(
        "memory: kernel [{ks:#x}, {ke:#x}), {} KiB usable, heap {} KiB at {:#x}, {} frames free",
        mem.usable_bytes >> 10,
        mem.heap_bytes >> 10,
        mem.heap_start,
        mem.free_frames
    );

    match time::calibrate() {
        Ok((khz, source)) => kprintln!("time: TSC {khz} kHz (from {source:?})"),
        Err(e) => log::warn!("time: TSC calibration failed: {e}"),
    }
    match apic::init() {
        Some(a) => {
            let timer_khz = apic::calibrate_timer();
            kprintln!(
                "apic: {} id {} version {:#x}, timer {}",
                if a.x2apic { "x2APIC" } else { "xAPIC" },
                a.id,
                a.version,
                match (a.tsc_deadline, timer_khz) {
                    (true, _) => "TSC-deadline",
                    (false, Some(_)) => "one-shot (calibrated)",
                    (false, None) => "unavailable",
                }
            );
        }
        None => log::warn!("apic: no local APIC"),
    }
    event::init();
    mem
}

/// Detects Xen and brings up its interface (shared_info, event channels, grants,
/// xenstore, PV console) when present.
fn xen_bring_up() {
    match xen::detect() {
        Some(c) => {
            kprintln!(
                "xen: Xen {}.{} at CPUID {:#x}, hypercall MSR {:#x}, domid {}",
                c.major,
                c.minor,
                c.base,
                c.msr,
                c.domid.map_or("unknown".into(), |d| alloc::format!("{d}"))
            );
            match xen::init(c) {
                Ok(x) => {
                    kprintln!(
                        "xen: shared_info mapped, upcall vector {:#x}, system time {} ms, TSC {} kHz",
                        xen::UPCALL_VECTOR,
                        x.now_ns() / 1_000_000,
                        x.cpuid.tsc_khz.unwrap_or(0)
                    );
                    if let Some(t) = x.unix_time_ns() {
                        kprintln!(
                            "xen: wallclock {} s since the Unix epoch",
                            t / 1_000_000_000
                        );
                    }
                    if x.console.lock().is_some() {
                        x.console_write(b"xen: hello on the PV console\n");
                    }
                }
                Err(e) => log::error!("xen: bring-up failed: {e}"),
            }
        }
        None => kprintln!("xen: not present"),
    }
    console::xen_settled();
}

/// The Xen self-tests and the I/O workloads the command line asks for: the block
/// workload first (it ends by itself), then the network services (until their exit
/// condition). Returns the exit status so far.
fn workloads(opts: &Options<'_>, io: &IoOptions<'_>) -> u8 {
    let mut status = exit_status::SUCCESS;
    if opts.selftest.xen {
        let (_, failed) = selftest::run_xen();
        if failed > 0 {
            status = exit_status::SELFTEST_FAILED;
        }
    }
    if opts.selftest.irq {
        let (_, failed) = selftest::run_irq();
        if failed > 0 {
            status = exit_status::SELFTEST_FAILED;
        }
    }
    if opts.selftest.hostile {
        // Runs the block workload and the network services itself, on the
        // well-behaved disk and NIC, before its last attack ends xenstore.
        if !hostile::run(io, opts) {
            status = exit_status::SELFTEST_FAILED;
        }
    } else {
        if let Some(b) = &io.blk
            && !block::run(b, io.virtio)
        {
            status = exit_status::SELFTEST_FAILED;
        }
        if let Some(n) = &io.net
            && !net::run(n, io.virtio)
        {
            status = exit_status::SELFTEST_FAILED;
        }
    }
    if let Some(x) = xen::get() {
        let (delivered, spurious) = x.event_counts();
        kprintln!(
            "xen: {} upcalls, {delivered} events handled, {spurious} without a handler",
            x.upcalls.load(core::sync::atomic::Ordering::Relaxed)
        );
    }
    status
}

/// The boot self-tests and the crash hooks (`selftest=`), then exit with `status`.
fn hooks(boot: &BootInfo, mem: &memory::MemoryInfo, opts: &Options<'_>, mut status: u8) -> ! {
    if opts.selftest.boot {
        let (_, failed) = selftest::run_boot(boot, mem);
        if failed > 0 {
            status = exit_status::SELFTEST_FAILED;
        }
    }
    if opts.selftest.fault {
        selftest::page_fault();
    }
    if opts.selftest.stack {
        selftest::overflow_stack();
    }
    if opts.selftest.panic {
        panic!("selftest: deliberate panic");
    }
    if opts.selftest.triple {
        kprintln!("selftest: triple: loading an empty IDT and raising #UD");
        interrupts::triple_fault();
    }
    if opts.selftest.hang {
        selftest::hang();
    }
    exit::exit(status)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write as _;
    let _ = writeln!(console::EmergencyConsole, "PANIC: {info}");
    exit::exit(exit_status::PANIC)
}
