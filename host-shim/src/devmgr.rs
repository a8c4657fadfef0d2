//! The device manager: the one place that turns the command line's `--disk` and `--net`
//! specs into devices, PV or emulated, before the guest runs.
//!
//! - `if=xen` disks and `model=xen` NICs become PV devices: their xenstore nodes and
//!   backend threads ([`crate::backends::start`]); they need the Xen interface.
//! - `if=ide` disks become the PIIX3 IDE controller at 00:01.1 (QEMU's `-M pc` place),
//!   with the disk as its primary master, interrupting on ISA IRQs 14 and 15 (edge,
//!   compatibility mode). One IDE disk is supported (the primary master).
//! - `model=e1000` NICs become Intel 82540EMs at 00:03.0 and up, each interrupting on
//!   its INTA# line, with a worker thread that moves received frames into the guest.
//! - `if=virtio` disks and `model=virtio` NICs become virtio-blk and virtio-net devices on
//!   the modern virtio-pci transport in the next free slots (disks first), with MSI-X
//!   (INTA# as the fallback) and a device thread woken by their doorbells (and, for a
//!   NIC, by its TAP).
//!
//! The host side is the same for every kind ([`DiskSpec::open`], [`NetSpec::open`]:
//! the same image-file and TAP code), so the numbers of one path against another
//! differ only by the device protocol. Emulated devices work with and without the Xen
//! interface (an HVM guest, or "PV-on-HVM" when PV devices are present too).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::backends::spec::{DiskInterface, DiskSpec, NetModel, NetSpec};
use crate::devices::e1000::{E1000, E1000Worker};
use crate::devices::ide::PiixIde;
use crate::devices::pci_bus::IDE_FUNCTION;
use crate::devices::virtio_blk::VirtioBlk;
use crate::devices::virtio_net::VirtioNet;
use crate::devices::virtio_pci::{VirtioDevice, VirtioPci, VirtioWorker};
use crate::vmm::{Error, Vmm};
use crate::xen::Xen;

/// ISA IRQ of the primary IDE channel in compatibility mode.
const IDE_PRIMARY_IRQ: u32 = 14;
/// ISA IRQ of the secondary IDE channel.
const IDE_SECONDARY_IRQ: u32 = 15;

/// The MAC of the `n`-th emulated NIC when `--net` names none: QEMU's default
/// (`52:54:00:12:34:56`, locally administered), counting up.
pub fn default_emulated_mac(n: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56u8.wrapping_add(n as u8)]
}

/// What runs beside the guest for its devices: PV backends and emulated devices'
/// worker threads. Stopped after the vCPU.
#[derive(Default)]
pub struct Devices {
    backends: Vec<crate::backends::Running>,
    workers: Vec<E1000Worker>,
    virtio: Vec<VirtioWorker>,
}

impl Devices {
    /// Stops every thread; returns the PV backends' counters by name (the emulated
    /// devices' counters are read from the PCI bus).
    pub fn stop(self) -> BTreeMap<String, serde_json::Value> {
        for w in self.workers {
            w.stop();
        }
        for w in self.virtio {
            w.stop();
        }
        self.backends
            .into_iter()
            .map(|b| (b.name().replace(' ', "-"), b.stop()))
            .collect()
    }
}

/// Checks the specs against each other and the machine before anything is opened.
pub fn check(disks: &[DiskSpec], nets: &[NetSpec], with_xen: bool) -> Result<(), Error> {
    let pv = disks.iter().any(|d| d.interface == DiskInterface::Xen)
        || nets.iter().any(|n| n.model == NetModel::Xen);
    if pv && !with_xen {
        return Err(Error::Devices(
            "PV disks and NICs (if=xen, model=xen: the default) need the Xen interface: drop \
             --no-xen, or use if=ide|virtio / model=e1000|virtio"
                .into(),
        ));
    }
    for (i, n) in nets.iter().enumerate() {
        if nets[..i].iter().any(|m| m.tap == n.tap) {
            return Err(Error::Devices(format!(
                "TAP {} is given to two --net devices (one NIC per TAP)",
                n.tap
            )));
        }
    }
    if disks
        .iter()
        .filter(|d| d.interface == DiskInterface::Ide)
        .count()
        > 1
    {
        return Err(Error::Devices(
            "one --disk with if=ide is supported (the primary master)".into(),
        ));
    }
    Ok(())
}

/// Creates every device of the specs on `vmm` (`xen` when the Xen interface is on).
pub fn attach(
    vmm: &mut Vmm,
    xen: Option<&Arc<Xen>>,
    disks: &[DiskSpec],
    nets: &[NetSpec],
) -> Result<Devices, Error> {
    let mut devices = Devices::default();
    let pv_disks: Vec<DiskSpec> = disks
        .iter()
        .filter(|d| d.interface == DiskInterface::Xen)
        .cloned()
        .collect();
    let pv_nets: Vec<NetSpec> = nets
        .iter()
        .filter(|n| n.model == NetModel::Xen)
        .cloned()
        .collect();
    if let Some(xen) = xen {
        // The toolstack's part: device nodes exist before the guest runs.
        devices.backends =
            crate::backends::start(xen, &pv_disks, &pv_nets).map_err(Error::Devices)?;
        let counters = vmm.counters();
        for b in &devices.backends {
            counters.add_backend(&b.name().replace(' ', "-"), b.live_stats());
        }
    }
    for d in disks.iter().filter(|d| d.interface == DiskInterface::Ide) {
        let image = d.open().map_err(Error::Devices)?;
        let irq14 = vmm.irq_line(IDE_PRIMARY_IRQ);
        let irq15 = vmm.irq_line(IDE_SECONDARY_IRQ);
        let ide = PiixIde::new(Some(image), irq14, irq15, vmm.guest_memory());
        vmm.add_pci_device("ide", Arc::new(Mutex::new(ide)), Some(IDE_FUNCTION))?;
    }
    for (n, d) in disks
        .iter()
        .filter(|d| d.interface == DiskInterface::Virtio)
        .enumerate()
    {
        let image = d.open().map_err(Error::Devices)?;
        let blk = VirtioBlk::new(image, &format!("virtio-blk-{n}"));
        devices
            .virtio
            .extend(add_virtio(vmm, &format!("virtio-blk-{n}"), Box::new(blk))?);
    }
    for (n, spec) in nets
        .iter()
        .filter(|n| n.model == NetModel::E1000)
        .enumerate()
    {
        let tap = spec.open().map_err(Error::Devices)?;
        let addr = vmm
            .pci_bus()
            .free_slot()
            .ok_or_else(|| Error::Devices("no free PCI slot for another e1000".into()))?;
        let irq = vmm
            .pci_intx_line(addr, 1)
            .ok_or_else(|| Error::Devices(format!("no INTA# route for {addr}")))?;
        let mac = spec.mac.unwrap_or_else(|| default_emulated_mac(n));
        let nic = Arc::new(Mutex::new(E1000::new(
            mac,
            Box::new(tap),
            irq,
            vmm.guest_memory(),
        )));
        vmm.add_pci_device(&format!("e1000-{n}"), nic.clone(), Some(addr))?;
        devices
            .workers
            .push(E1000Worker::start(nic).map_err(|source| Error::Resource {
                what: "the e1000 worker thread",
                source,
            })?);
    }
    let e1000s = nets.iter().filter(|n| n.model == NetModel::E1000).count();
    for (n, spec) in nets
        .iter()
        .filter(|n| n.model == NetModel::Virtio)
        .enumerate()
    {
        let tap = spec.open().map_err(Error::Devices)?;
        let mac = spec.mac.unwrap_or_else(|| default_emulated_mac(e1000s + n));
        let net = VirtioNet::new(mac, Box::new(tap));
        devices
            .virtio
            .extend(add_virtio(vmm, &format!("virtio-net-{n}"), Box::new(net))?);
    }
    Ok(devices)
}

/// Puts `device` on the virtio-pci transport (MSI-X, INTA# as the fallback) in the next
/// free PCI slot, and starts its thread when it has a doorbell (without one, notifies
/// exit and are served in the exit).
fn add_virtio(
    vmm: &mut Vmm,
    name: &str,
    device: Box<dyn VirtioDevice>,
) -> Result<Option<VirtioWorker>, Error> {
    let addr = vmm
        .pci_bus()
        .free_slot()
        .ok_or_else(|| Error::Devices(format!("no free PCI slot for {name}")))?;
    let irq = vmm
        .pci_intx_line(addr, 1)
        .ok_or_else(|| Error::Devices(format!("no INTA# route for {addr}")))?;
    let dev = Arc::new(Mutex::new(
        VirtioPci::new(device, irq, vmm.guest_memory()).with_msix(vmm.msi_sink()),
    ));
    vmm.add_pci_device(name, dev.clone(), Some(addr))?;
    let has_doorbell = dev
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .doorbell()
        .is_some();
    if !has_doorbell {
        return Ok(None);
    }
    VirtioWorker::start(dev)
        .map(Some)
        .map_err(|source| Error::Resource {
            what: "the virtio device thread",
            source,
        })
}
