//! The block workload on a PV or emulated disk (`blk.workload=`, see
//! `guest_kernel::ioopts`).
//!
//! Finds the disk `blk.device=` names (default: the first vbd in xenstore, else the
//! first ATA drive on the PCI IDE controller), opens it ([`open_block`]: the one place
//! blkfront plugs in; [`open_emulated_block`]: the one place the ATA driver plugs in;
//! [`open_virtio_block`]: the one place the virtio-blk driver plugs in),
//! runs each requested phase of `pv_drivers::workload` on it and prints, per phase,
//! one result line and, at the end, `blk: PASS` or `blk: FAIL`. The engine waits for
//! the device through [`GuestWaiter`]: halt until the device's event or a recovery
//! tick; polls after a tick that find completions are counted as recoveries.
//!
//! With `blk.bench=on` it runs the benchmark matrix instead ([`bench_on`]): per phase
//! a Start mark (`kernel::mark`), the requests, an End mark, with the console held
//! back in between, then one `blk-result:` JSON line (the shared benchmark plan,
//! item 3).

use alloc::boxed::Box;
use alloc::string::ToString as _;
use guest_kernel::ioopts::{BlkDeviceSel, BlkOptions, VirtioOptions};
use hw_devices::ata::{AtaConfig, AtaDisk, AtaPorts, id};
use hw_devices::virtio::{
    self,
    blk::{VirtioBlk, VirtioBlkConfig},
};
use pv_drivers::blkfront::Blkfront;
use pv_drivers::device::BlockDevice;
use pv_drivers::workload::{self, BenchConfig, Edge, Waiter};

use super::platform::{self, GuestVirtioHal, IdeTarget, VirtioTarget};
use super::pv::{self, DeviceEvent, Followed, GuestEnv, GuestStore, RECOVERY_TICK_NS, Woken};
use super::{console, mark};
use crate::kprintln;

/// A workload that completes nothing for this long is abandoned.
const STALL_NS: u64 = 30_000_000_000;

/// Opens vbd `id` with `env` (whose [`DeviceEvent`] the caller already holds).
///
/// Connects blkfront (xenbus negotiation with the backend) and has it follow the
/// backend's state (a detach closes it); `None` with the reason logged if that fails.
fn open_block(env: GuestEnv, id: &str) -> Option<Followed<Blkfront<GuestEnv>>> {
    let x = super::xen::get()?;
    let mut store = x.store.lock();
    let xs = store.as_mut()?;
    match Blkfront::connect(env, xs, id, Default::default()) {
        Ok(dev) => Some(Followed::new(dev, GuestStore)),
        Err(e) => {
            log::error!("blk: vbd {id}: {e}");
            None
        }
    }
}

/// Opens the ATA drive that `target` describes (the controller found on PCI, its I/O
/// decode and bus mastering on, the channel's IRQ routed to `target.event`, which the
/// caller already holds).
///
/// Probes the drive (reset, IDENTIFY) with the ATA driver (`hw_devices::ata`); `None`
/// with the reason logged if it fails.
fn open_emulated_block(target: IdeTarget) -> Option<Box<dyn BlockDevice>> {
    let ports = AtaPorts {
        task_file: target.command_base,
        control: target.control_port,
        bus_master: target.bus_master,
    };
    let mut cfg = AtaConfig::new(ports, target.mode);
    cfg.slave = target.drive & 1 == 1;
    match AtaDisk::new(target.ports, target.dma, cfg) {
        Ok(disk) => {
            let mut model = [0u8; 40];
            let n = disk
                .identify()
                .string(id::MODEL, id::MODEL_WORDS, &mut model);
            kprintln!(
                "blk: ide:{}: \"{}\", {} sectors, {}",
                target.drive,
                core::str::from_utf8(&model[..n]).unwrap_or("?").trim(),
                disk.info().sectors,
                if disk.lba48() { "LBA48" } else { "LBA28" }
            );
            Some(Box::new(disk))
        }
        Err(e) => {
            log::error!(
                "blk: ide:{} on {}: {e}",
                target.drive,
                target.controller.bdf
            );
            None
        }
    }
}

/// Runs the workload of `opts` on the chosen disk (a virtio one interrupting as
/// `virtio_opts` says); true if every phase passed.
pub fn run(opts: &BlkOptions<'_>, virtio_opts: VirtioOptions) -> bool {
    let ids = pv::list_devices("vbd");
    kprintln!("blk: vbd devices: {ids:?}");
    let wanted = match opts.device {
        Some(BlkDeviceSel::Ide(drive)) => return run_emulated(drive, opts),
        Some(BlkDeviceSel::Virtio(n)) => return run_virtio(n, opts, virtio_opts),
        Some(BlkDeviceSel::Xen(id)) => Some(id),
        None if ids.is_empty() && platform::ide_controller().is_some() => {
            return run_emulated(0, opts);
        }
        None => None,
    };
    let Some(id) = pv::choose("vbd", &ids, wanted) else {
        kprintln!("blk: FAIL (no device)");
        return false;
    };
    let Some(env) = GuestEnv::new() else {
        log::error!("blk: no Xen environment for a frontend");
        kprintln!("blk: FAIL (no Xen)");
        return false;
    };
    let event = env.event();
    let Some(mut dev) = open_block(env, id) else {
        kprintln!("blk: FAIL (vbd {id} not opened)");
        return false;
    };
    let pass = run_on(&mut dev, &event, opts);
    pv::report_backend("blk", id, &dev);
    pass
}

/// Runs the workload on ATA drive `drive` of the IDE controller.
fn run_emulated(drive: u8, opts: &BlkOptions<'_>) -> bool {
    let sel = BlkDeviceSel::Ide(drive);
    let target = match platform::prepare_ide(drive, opts.ata) {
        Ok(t) => t,
        Err(e) => {
            log::error!("blk: {sel}: {e}");
            kprintln!("blk: FAIL (no device {sel})");
            return false;
        }
    };
    kprintln!(
        "blk: {sel}: {} ports {:#x}/{:#x}, bus master {}, IRQ {}, {:?}",
        target.controller.bdf,
        target.command_base,
        target.control_port,
        target
            .bus_master
            .map_or(alloc::string::String::from("none"), |b| alloc::format!(
                "{b:#x}"
            )),
        target.gsi,
        target.mode
    );
    let event = target.event.clone();
    let Some(mut dev) = open_emulated_block(target) else {
        kprintln!("blk: FAIL ({sel} not opened)");
        return false;
    };
    run_on(dev.as_mut(), &event, opts)
}

/// Opens the virtio-blk device that `target` describes (found on PCI, its structures
/// mapped, memory decode and bus mastering on, its interrupt routed to
/// `target.event`, which the caller already holds), with `hw_devices::virtio::blk`;
/// `None` with the reason logged if it fails.
fn open_virtio_block(target: VirtioTarget) -> Option<Box<dyn BlockDevice>> {
    let bdf = target.function.bdf;
    match VirtioBlk::<GuestVirtioHal, _>::new(target.transport, VirtioBlkConfig::default()) {
        Ok(disk) => {
            let irq = platform::settle_virtio_irq(
                virtio::device_type::BLOCK,
                &target.function,
                disk.transport(),
                target.irq,
                &target.event,
            );
            kprintln!(
                "blk: virtio-blk on {bdf}: {} sectors, features {:?}, interrupts {irq}",
                disk.info().sectors,
                disk.features()
            );
            Some(Box::new(disk))
        }
        Err(e) => {
            log::error!("blk: virtio-blk on {bdf}: {e}");
            None
        }
    }
}

/// Runs the workload on the `n`th virtio-blk device.
fn run_virtio(n: u8, opts: &BlkOptions<'_>, virtio_opts: VirtioOptions) -> bool {
    let sel = BlkDeviceSel::Virtio(n);
    let target = match platform::prepare_virtio(virtio::device_type::BLOCK, n, virtio_opts.msix) {
        Ok(t) => t,
        Err(e) => {
            log::error!("blk: {sel}: {e}");
            kprintln!("blk: FAIL (no device {sel})");
            return false;
        }
    };
    kprintln!("blk: {sel}: {}, IRQ {}", target.function, target.irq);
    let event = target.event.clone();
    let Some(mut dev) = open_virtio_block(target) else {
        kprintln!("blk: FAIL ({sel} not opened)");
        return false;
    };
    run_on(dev.as_mut(), &event, opts)
}

/// Runs every phase of `opts` on `dev`, whose events set `event`; prints the results
/// and `blk: PASS`/`blk: FAIL`.
pub fn run_on(dev: &mut dyn BlockDevice, event: &DeviceEvent, opts: &BlkOptions<'_>) -> bool {
    if let Some(cfg) = opts.bench() {
        return bench_on(dev, event, &cfg, opts.bench_idle_ms);
    }
    let info = dev.info();
    kprintln!(
        "blk: {} sectors of {} bytes{}{}, queue depth {}, max transfer {} bytes",
        info.sectors,
        info.sector_size,
        if info.read_only { ", read-only" } else { "" },
        if info.flush { ", flush" } else { "" },
        info.queue_depth,
        info.max_transfer
    );
    let mut pass = true;
    // Before the first phase and after each, with nothing in flight (`host-shim soak`).
    kprintln!("blk: resources: {}", super::memory::resources());
    for cfg in opts.configs() {
        kprintln!(
            "blk: {}: region [{:#x}, +{:#x}), {} bytes per request, queue depth {}, seed {}",
            cfg.phase.name(),
            cfg.offset,
            cfg.size,
            cfg.block,
            cfg.queue_depth,
            cfg.seed
        );
        let mut waiter = GuestWaiter::new(event);
        match workload::run(dev, &cfg, &mut waiter) {
            Ok(r) => {
                kprintln!("blk: {}: {r}", cfg.phase.name());
                kprintln!(
                    "blk: {}: {} waits, {} events, {} recoveries",
                    cfg.phase.name(),
                    waiter.waits,
                    waiter.events,
                    waiter.recoveries
                );
                pass &= r.passed();
            }
            Err(e) => {
                log::error!("blk: {}: {e}", cfg.phase.name());
                pass = false;
            }
        }
        kprintln!("blk: resources: {}", super::memory::resources());
    }
    kprintln!("blk: {}", if pass { "PASS" } else { "FAIL" });
    pass
}

/// Runs the benchmark matrix on `dev`: one `blk-result:` line per phase (skipped
/// phases too, with the reason), then `blk: PASS` if no request failed, else
/// `blk: FAIL`.
///
/// Between a phase's marks the console is held (its output comes out after the
/// phase, before the result line), so the `blk-result:` lines follow one another.
fn bench_on(
    dev: &mut dyn BlockDevice,
    event: &DeviceEvent,
    cfg: &BenchConfig,
    idle_ms: u32,
) -> bool {
    let info = dev.info();
    kprintln!(
        "blk: bench: {} phases of {} requests over [{:#x}, +{:#x}); device: {} sectors of {} \
         bytes, queue depth {}, max transfer {} bytes{}",
        workload::BENCH_PHASES,
        cfg.ops,
        cfg.offset,
        cfg.size,
        info.sectors,
        info.sector_size,
        info.queue_depth,
        info.max_transfer,
        if info.read_only { ", read-only" } else { "" }
    );
    if idle_ms > 0 {
        idle_phase(event, idle_ms);
    }
    let mut pass = true;
    for phase in workload::bench_matrix() {
        let mut waiter = GuestWaiter::new(event);
        console::hold();
        let result = workload::run_bench(dev, cfg, &phase, &mut waiter, &mut |edge| match edge {
            Edge::Start => mark::start(phase.phase),
            Edge::End => mark::end(phase.phase),
        });
        console::release();
        // Formatted first: the line reaches the console in one piece.
        let line = result.to_string();
        kprintln!("blk-result: {line}");
        if !result.passed() {
            if let Ok(m) = &result.outcome
                && let Some(e) = m.first_error
            {
                log::error!("blk: bench phase {}: first error: {e}", phase.phase);
            }
            pass = false;
        }
    }
    kprintln!("blk: {}", if pass { "PASS" } else { "FAIL" });
    pass
}

/// The benchmark's idle phase (docs/bench-protocol.md, phase 0): `ms` milliseconds
/// with nothing in flight, between marks and with the console held, as this kernel
/// idles (halted until its timer); then `blk-idle: {"phase":0,"ns":T}` with the
/// length measured by the guest's clock.
fn idle_phase(event: &DeviceEvent, ms: u32) {
    console::hold();
    mark::start(0);
    let start = pv::now_ns();
    let deadline = start.saturating_add(u64::from(ms) * 1_000_000);
    // A stray event (none is expected: nothing is in flight) only ends one wait.
    while pv::now_ns() < deadline {
        pv::wait_for_event(event, deadline);
    }
    let ns = pv::now_ns().saturating_sub(start);
    mark::end(0);
    console::release();
    kprintln!("blk-idle: {{\"phase\":0,\"ns\":{ns}}}");
}

/// Waits for a block device: its event, or a recovery tick; gives up after
/// [`STALL_NS`] without a completion.
pub struct GuestWaiter<'a> {
    event: &'a DeviceEvent,
    last_progress: u64,
    last_wake: Woken,
    /// Waits, events that ended one, polls after a tick that found completions.
    pub waits: u64,
    pub events: u64,
    pub recoveries: u64,
}

impl<'a> GuestWaiter<'a> {
    /// A waiter on `event`.
    pub fn new(event: &'a DeviceEvent) -> Self {
        Self {
            event,
            last_progress: pv::now_ns(),
            last_wake: Woken::Event,
            waits: 0,
            events: 0,
            recoveries: 0,
        }
    }
}

impl Waiter for GuestWaiter<'_> {
    fn wait(&mut self) -> bool {
        let now = pv::now_ns();
        if now.saturating_sub(self.last_progress) > STALL_NS {
            log::error!(
                "blk: no completion for {} s: giving up",
                STALL_NS / 1_000_000_000
            );
            return false;
        }
        self.waits += 1;
        self.last_wake = pv::wait_for_event(self.event, now.saturating_add(RECOVERY_TICK_NS));
        if self.last_wake == Woken::Event {
            self.events += 1;
        }
        true
    }

    fn now_ns(&self) -> u64 {
        pv::now_ns()
    }

    fn polled(&mut self, completions: usize) {
        // The driver's poll acknowledged the device: a level-triggered line may be
        // delivered again.
        self.event.rearm();
        if completions == 0 {
            return;
        }
        self.last_progress = pv::now_ns();
        // Work that no event announced (the event is not merely late: it would have
        // set the flag by now).
        if self.last_wake == Woken::Deadline && !self.event.is_pending() {
            self.recoveries += 1;
        }
        self.last_wake = Woken::Event;
    }

    fn durable(&mut self, point: workload::DurablePoint) {
        // One line per completed flush, for `host-shim crashtest`.
        kprintln!("{point}");
    }
}
