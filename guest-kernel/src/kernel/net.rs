//! The network services on a PV or emulated NIC (`net.ip=`, see
//! `guest_kernel::ioopts`).
//!
//! Finds the NIC `net.device=` names (default: the first vif in xenstore, else the
//! first e1000 on PCI), opens it ([`open_net`]: the one place netfront plugs in;
//! [`open_emulated_net`]: the one place the e1000 driver plugs in; [`open_virtio_net`]:
//! the one place the virtio-net driver plugs in), and runs `guest_kernel::netstack` on it: ping, TCP echo (7), discard (9), bulk
//! (19), control (5) and an iperf3 server (5201). Each iperf3 test k is a benchmark
//! phase `100 + k` (`super::mark`: Start at `TEST_START`, End at `TEST_END`) and prints
//! one line `iperf-result: {json}` when it ends. The serve loop polls the stack, then halts until the device's
//! event, smoltcp's next timer, or a recovery tick, whichever is first; a poll after a
//! tick that receives frames is counted as a recovery (a lost event). It ends as the
//! options say (`exit` on the control port, `net.exit-after`, `net.time-limit`) and
//! prints the counters.

use alloc::boxed::Box;
use guest_kernel::ioopts::{NetDeviceSel, NetOptions, VirtioOptions};
use guest_kernel::iperf::{self, Event};
use guest_kernel::netstack::{BULK_PORT, CONTROL_PORT, DISCARD_PORT, ECHO_PORT, Finish, NetStack};
use hw_devices::e1000::driver::{E1000, E1000Config};
use hw_devices::virtio::{
    self,
    net::{VirtioNet, VirtioNetConfig},
};
use pv_drivers::device::NetDevice;
use pv_drivers::netfront::Netfront;

use super::platform::{self, E1000Target, GuestVirtioHal, VirtioTarget};
use super::{console, mark};
use guest_kernel::time::RecoveryTick;

use super::pv::{self, DeviceEvent, Followed, GuestEnv, GuestStore, Woken};
use crate::kprintln;

/// Opens vif `id` with `env` (whose [`DeviceEvent`] the caller already holds).
///
/// Connects netfront (xenbus negotiation with the backend) and has it follow the
/// backend's state (a detach closes it); `None` with the reason logged if that fails.
fn open_net(env: GuestEnv, id: &str) -> Option<Followed<Netfront<GuestEnv>>> {
    let x = super::xen::get()?;
    let mut store = x.store.lock();
    let xs = store.as_mut()?;
    match Netfront::connect(env, xs, id, Default::default()) {
        Ok(dev) => Some(Followed::new(dev, GuestStore)),
        Err(e) => {
            log::error!("net: vif {id}: {e}");
            None
        }
    }
}

/// Opens the e1000 that `target` describes (found on PCI, BAR0 mapped, memory decode
/// and bus mastering on, its INTx line routed to `target.event`, which the caller
/// already holds).
///
/// Resets and sets up the NIC with the e1000 driver (`hw_devices::e1000`); `None` with
/// the reason logged if it fails.
fn open_emulated_net(target: E1000Target) -> Option<Box<dyn NetDevice>> {
    match E1000::new(target.mmio, target.dma, E1000Config::default()) {
        Ok(nic) => {
            kprintln!(
                "net: e1000 on {}: link {}",
                target.function.bdf,
                if nic.link_up() { "up" } else { "down" }
            );
            Some(Box::new(nic))
        }
        Err(e) => {
            log::error!("net: e1000 on {}: {e}", target.function.bdf);
            None
        }
    }
}

/// Serves on the chosen NIC (a virtio one interrupting as `virtio_opts` says) until
/// the options' exit condition; true unless the device
/// could not be opened or failed.
pub fn run(opts: &NetOptions<'_>, virtio_opts: VirtioOptions) -> bool {
    let ids = pv::list_devices("vif");
    kprintln!("net: vif devices: {ids:?}");
    let wanted = match opts.device {
        Some(NetDeviceSel::E1000(n)) => return run_emulated(n, opts),
        Some(NetDeviceSel::Virtio(n)) => return run_virtio(n, opts, virtio_opts),
        Some(NetDeviceSel::Xen(id)) => Some(id),
        None if ids.is_empty() && platform::e1000s().next().is_some() => {
            return run_emulated(0, opts);
        }
        None => None,
    };
    let Some(id) = pv::choose("vif", &ids, wanted) else {
        kprintln!("net: FAIL (no device)");
        return false;
    };
    let Some(env) = GuestEnv::new() else {
        log::error!("net: no Xen environment for a frontend");
        kprintln!("net: FAIL (no Xen)");
        return false;
    };
    let event = env.event();
    let Some(mut dev) = open_net(env, id) else {
        kprintln!("net: FAIL (vif {id} not opened)");
        return false;
    };
    let ok = serve(&mut dev, &event, opts);
    pv::report_backend("net", id, &dev);
    ok
}

/// Serves on the `n`th e1000.
fn run_emulated(n: u8, opts: &NetOptions<'_>) -> bool {
    let sel = NetDeviceSel::E1000(n);
    let target = match platform::prepare_e1000(n) {
        Ok(t) => t,
        Err(e) => {
            log::error!("net: {sel}: {e}");
            kprintln!("net: FAIL (no device {sel})");
            return false;
        }
    };
    kprintln!(
        "net: {sel}: {}, IRQ {}",
        target.function,
        target
            .gsi
            .map_or(alloc::string::String::from("none"), |g| alloc::format!(
                "{g}"
            ))
    );
    let event = target.event.clone();
    let Some(mut dev) = open_emulated_net(target) else {
        kprintln!("net: FAIL ({sel} not opened)");
        return false;
    };
    serve(dev.as_mut(), &event, opts)
}

/// Opens the virtio-net device that `target` describes (found on PCI, its structures
/// mapped, memory decode and bus mastering on, its interrupt routed to
/// `target.event`, which the caller already holds), with `hw_devices::virtio::net`;
/// `None` with the reason logged if it fails.
fn open_virtio_net(target: VirtioTarget) -> Option<Box<dyn NetDevice>> {
    let bdf = target.function.bdf;
    match VirtioNet::<GuestVirtioHal, _>::new(target.transport, VirtioNetConfig::default()) {
        Ok(nic) => {
            let irq = platform::settle_virtio_irq(
                virtio::device_type::NET,
                &target.function,
                nic.transport(),
                target.irq,
                &target.event,
            );
            kprintln!(
                "net: virtio-net on {bdf}: link {}, interrupts {irq}",
                if nic.link_up() { "up" } else { "down" }
            );
            Some(Box::new(nic))
        }
        Err(e) => {
            log::error!("net: virtio-net on {bdf}: {e}");
            None
        }
    }
}

/// Serves on the `n`th virtio-net device.
fn run_virtio(n: u8, opts: &NetOptions<'_>, virtio_opts: VirtioOptions) -> bool {
    let sel = NetDeviceSel::Virtio(n);
    let target = match platform::prepare_virtio(virtio::device_type::NET, n, virtio_opts.msix) {
        Ok(t) => t,
        Err(e) => {
            log::error!("net: {sel}: {e}");
            kprintln!("net: FAIL (no device {sel})");
            return false;
        }
    };
    kprintln!("net: {sel}: {}, IRQ {}", target.function, target.irq);
    let event = target.event.clone();
    let Some(mut dev) = open_virtio_net(target) else {
        kprintln!("net: FAIL ({sel} not opened)");
        return false;
    };
    serve(dev.as_mut(), &event, opts)
}

/// Benchmark phase of iperf3 test `k`.
fn iperf_phase(k: u32) -> u32 {
    100u32.saturating_add(k)
}

/// An iperf3 test started or ended: the phase marks, the console held between them
/// (nothing goes through an emulated UART while measured), and the result line after
/// the End mark.
fn iperf_event(e: &Event) {
    match e {
        Event::Started { test } => {
            console::hold();
            mark::start(iperf_phase(*test));
        }
        Event::Ended(r) => {
            mark::end(iperf_phase(r.test));
            console::release();
            kprintln!("iperf-result: {r}");
        }
    }
}

/// Runs the services on `dev`, whose events set `event`; true unless the device failed.
pub fn serve(dev: &mut dyn NetDevice, event: &DeviceEvent, opts: &NetOptions<'_>) -> bool {
    let start = pv::now_ns();
    let ms = || pv::now_ns().saturating_sub(start) / 1_000_000;
    let mut stack = match NetStack::new(opts, dev, ms(), pv::boot_entropy()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("net: {e}");
            kprintln!("net: FAIL");
            return false;
        }
    };
    stack.set_iperf_hook(Box::new(iperf_event));
    stack.set_stats_hook(Box::new(super::memory::resources));
    let info = dev.info();
    let m = info.mac;
    kprintln!(
        "net: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, {}/{}{}, max frame {}",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        opts.ip,
        opts.prefix,
        opts.gw
            .map_or(alloc::string::String::new(), |g| alloc::format!(" via {g}")),
        info.max_frame
    );
    kprintln!(
        "net: serving: icmp echo, tcp echo {ECHO_PORT}, discard {DISCARD_PORT}, bulk \
         {BULK_PORT} ({} bytes, seed {}), control {CONTROL_PORT}, iperf3 {}",
        opts.bulk_bytes,
        opts.seed,
        iperf::PORT
    );
    let (mut woke, mut waits, mut recoveries, mut busy_rounds) = (Woken::Event, 0u64, 0u64, 0u32);
    // Backs off while idle, so that an idle guest's exit rate is its own timers'.
    let mut tick = RecoveryTick::new();
    let finish = loop {
        let now = ms();
        let act = stack.poll(dev, now);
        // The driver's poll acknowledged the device: a level-triggered line may be
        // delivered again.
        event.rearm();
        if woke == Woken::Deadline && act.rx_frames > 0 && !event.is_pending() {
            recoveries += 1;
        }
        tick.update(
            woke == Woken::Deadline,
            act.rx_frames > 0 || act.tx_frames > 0,
        );
        if let Some(f) = stack.finished(now) {
            break f;
        }
        if act.backlog {
            // The poll stopped at its batch limit with frames perhaps still waiting,
            // for which the device raises no new event (a virtio-net driver turns its
            // interrupts back on only when it finds the ring empty).
            woke = Woken::Event;
            continue;
        }
        let delay_ns = stack
            .poll_delay_ms(now)
            .map_or(tick.ns(), |d| d.saturating_mul(1_000_000))
            .min(tick.ns());
        // smoltcp may want a poll right away; but a stack that keeps saying so (its
        // transmit queue blocked on a full device) waits a little for the device.
        if delay_ns == 0 && busy_rounds < 8 {
            busy_rounds += 1;
            woke = Woken::Event;
            continue;
        }
        busy_rounds = 0;
        waits += 1;
        woke = pv::wait_for_event(event, pv::now_ns().saturating_add(delay_ns.max(1_000_000)));
    };
    // A test that never ended (its client vanished) must not keep the console held.
    console::release();
    kprintln!("net: stopped: {finish}");
    kprintln!("net: {}", stack.counters);
    kprintln!(
        "net: {} waits, {} device events, {recoveries} recoveries, {} ms",
        waits,
        event.count(),
        ms()
    );
    let ok = !matches!(finish, Finish::Device(_));
    kprintln!("net: {}", if ok { "PASS" } else { "FAIL" });
    ok
}
