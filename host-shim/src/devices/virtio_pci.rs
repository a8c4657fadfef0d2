//! The modern virtio-pci transport (virtio 1.x, section 4.1): a PCI function whose
//! vendor capabilities point into its memory BAR 0, where the common configuration,
//! the queue notify addresses, the ISR status byte and the device-specific
//! configuration live. A [`VirtioDevice`] (block, network) plugs into it.
//!
//! What the transport does, as the spec asks of a device:
//! - Feature negotiation: the device's features (`VIRTIO_F_VERSION_1` always: this is
//!   a modern-only device, PCI device ID 0x1040 + type, revision 1), 32 bits at a time
//!   through the select registers; `FEATURES_OK` stays clear when the driver accepted
//!   a feature the device did not offer or refused `VIRTIO_F_VERSION_1`.
//! - Queues: size (at most the device's maximum, a power of two), the three ring
//!   addresses and `queue_enable`, held by rust-vmm's `virtio_queue::Queue`; changes
//!   after `DRIVER_OK` or to an enabled queue are ignored, and `DRIVER_OK` activates
//!   the device only if every enabled queue is valid in guest memory (else
//!   `DEVICE_NEEDS_RESET`).
//! - Reset: writing 0 to `device_status` resets the device and every queue; the
//!   driver reads 0 back once that is done (at once, here).
//! - Errors (2.1.2): a device whose rings became unusable ([`VirtioDevice::needs_reset`]:
//!   an available index further ahead than the queue holds, a used ring that cannot be
//!   written) gets `DEVICE_NEEDS_RESET`, a configuration-change interrupt, and no more
//!   notifications served until the driver resets it (QEMU's `virtio_error`).
//! - Notifications: a write to queue N's notify address (`notify_off_multiplier` 4)
//!   hands queue N to the device. Interrupts are INTx (pin A) with the ISR byte (bit 0:
//!   used buffers, bit 1: configuration change); reading ISR clears it and lowers the
//!   line. `VIRTIO_PCI_CAP_PCI_CFG` gives the BAR through configuration space.
//!
//! The notify addresses are doorbells ([`PciDevice::doorbells`]): the PCI bus has KVM
//! absorb them (ioeventfds, moved with the BAR) and a [`VirtioWorker`] thread serves
//! the queues when one rings, so a notify costs the vCPU no exit to the shim; without
//! an eventfd a notify is an MMIO exit served there.
//!
//! Interrupts: with MSI-X ([`VirtioPci::with_msix`]: one vector per queue and one
//! for configuration changes, table and pending bits in BAR 0, per-vector and
//! function masks holding messages pending) a queue's interrupt is its vector's
//! message; otherwise INTx with the ISR byte.
//!
//! Devices: virtio-blk ([`super::virtio_blk`]) and virtio-net ([`super::virtio_net`]).

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};

use super::pci::{BarKind, ConfigSpace, PciDevice, PciIds};
use super::{GuestMemory, IrqLine, MsiSink};
use crate::xen::evtchn::Notifier;

/// PCI vendor of virtio devices, and the base of modern device IDs (plus the virtio
/// device type).
pub use hw_devices::virtio::{MODERN_DEVICE_BASE as VIRTIO_DEVICE_BASE, VENDOR as VIRTIO_VENDOR};

/// Size of BAR 0.
pub const BAR0_SIZE: u64 = 0x8000;
/// The MSI-X table (16 bytes a vector) and pending-bit array, in BAR 0.
pub const MSIX_TABLE_AT: u64 = 0x4000;
/// The pending-bit array.
pub const MSIX_PBA_AT: u64 = 0x5000;
/// Where the MSI-X capability sits in configuration space.
const MSIX_CAP_AT: usize = 0xa0;
/// Its message-control register: table size - 1, function mask (bit 14), enable (15).
const MSIX_CONTROL: usize = MSIX_CAP_AT + 2;
const MSIX_MASKALL: u16 = 1 << 14;
const MSIX_ENABLE: u16 = 1 << 15;
/// Where each structure sits in BAR 0.
pub const COMMON_AT: u64 = 0x0000;
/// Length of the common configuration (virtio 1.2: through `queue_reset`).
pub const COMMON_LEN: u64 = 0x3c;
/// The ISR status byte.
pub const ISR_AT: u64 = 0x1000;
/// The device-specific configuration.
pub const DEVICE_AT: u64 = 0x2000;
/// Its length.
pub const DEVICE_LEN: u64 = 0x1000;
/// The queue notify addresses: queue N at `NOTIFY_AT + N * NOTIFY_MULTIPLIER`.
pub const NOTIFY_AT: u64 = 0x3000;
/// `notify_off_multiplier`.
pub const NOTIFY_MULTIPLIER: u32 = 4;

/// `cfg_type` values of `struct virtio_pci_cap` (virtio 1.2, 4.1.4) and the vendor
/// capability ID, as the guest's transport declares them.
pub use hw_devices::virtio::transport::cap;

/// Offsets in the common configuration (`struct virtio_pci_common_cfg`).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const MSIX_CONFIG: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DESC_HI: u64 = 0x24;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DRIVER_HI: u64 = 0x2c;
    pub const QUEUE_DEVICE: u64 = 0x30;
    pub const QUEUE_DEVICE_HI: u64 = 0x34;
    pub const QUEUE_NOTIF_CONFIG_DATA: u64 = 0x38;
    pub const QUEUE_RESET: u64 = 0x3a;
}

/// Where the `VIRTIO_PCI_CAP_PCI_CFG` capability sits in configuration space, and
/// where its window fields are (`bar`, `offset`, `length`, `pci_cfg_data`).
const PCI_CFG_CAP_AT: usize = 0x88;
const PCI_CFG_BAR: usize = PCI_CFG_CAP_AT + 4;
const PCI_CFG_OFFSET: usize = PCI_CFG_CAP_AT + 8;
const PCI_CFG_LENGTH: usize = PCI_CFG_CAP_AT + 12;
const PCI_CFG_DATA: usize = PCI_CFG_CAP_AT + 16;

/// `VIRTIO_RING_F_INDIRECT_DESC` and `VIRTIO_RING_F_EVENT_IDX` as feature masks: the
/// ring features every device here offers.
pub const F_INDIRECT_DESC: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// `VIRTIO_MSI_NO_VECTOR`: what the MSI-X vector registers read without MSI-X.
const NO_VECTOR: u16 = 0xffff;

/// A virtio device behind the transport.
pub trait VirtioDevice: Send {
    /// The virtio device type (1 network, 2 block).
    fn device_type(&self) -> u16;
    /// The PCI class, subclass and programming interface.
    fn class(&self) -> (u8, u8, u8);
    /// Feature bits the device offers, besides `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;
    /// Number of virtqueues.
    fn num_queues(&self) -> u16;
    /// Largest size of each virtqueue (a power of two).
    fn queue_max_size(&self) -> u16;
    /// Reads the device-specific configuration at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration (most fields are read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set `DRIVER_OK` with `features` accepted and these queues (one per
    /// queue, disabled ones included). The device owns them until [`reset`].
    ///
    /// [`reset`]: VirtioDevice::reset
    fn activate(&mut self, features: u64, queues: Vec<Queue>, mem: GuestMemory);
    /// The driver notified queue `index`; returns whether the used ring got buffers the
    /// driver should be interrupted for.
    fn notify(&mut self, index: u16) -> bool;
    /// The driver reset the device.
    fn reset(&mut self);
    /// Whether the device met a driver error since the last reset that leaves its
    /// queues unusable (2.1.2: it then needs a reset): the transport sets
    /// `DEVICE_NEEDS_RESET` and serves no notification until the reset.
    fn needs_reset(&self) -> bool {
        false
    }
    /// `wake` runs the device thread's [`VirtioDevice::notify`] round from any thread
    /// (given once, at creation, when the device has a thread): a device with its own
    /// source of work (frames arriving on a TAP) calls it when work arrives.
    fn attach_waker(&mut self, _wake: Notifier) {}
    /// Counters for `--stats`.
    fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Exits to the shim for the device's registers.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct TransportExits {
    /// BAR 0 reads and writes (MMIO exits).
    pub mmio_read: u64,
    /// BAR 0 writes.
    pub mmio_write: u64,
    /// BAR 0 accesses through the `PCI_CFG` window (configuration-space exits).
    pub cfg_window: u64,
    /// Of the reads, those of the ISR byte (a driver on INTx reads it per interrupt; on
    /// MSI-X it need not).
    pub isr_read: u64,
}

/// Transport counters.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct TransportStats {
    /// Exits for the device's registers.
    pub exits: TransportExits,
    /// Queue notifications received.
    pub notifies: u64,
    /// Interrupts raised (ISR bit 0 set while it was clear).
    pub interrupts: u64,
    /// Device resets by the driver.
    pub resets: u64,
    /// Activations refused (an enabled queue invalid in guest memory).
    pub bad_activations: u64,
    /// Times the device entered `DEVICE_NEEDS_RESET` after a driver error on its rings.
    pub needs_reset: u64,
    /// Writes the device ignored as the spec has it (4.1.4.3, 3.1.1, 2.1): driver
    /// features once `FEATURES_OK` is set, `FEATURES_OK` for features not offered or
    /// without `VERSION_1`, `DRIVER_OK` without `FEATURES_OK`; a queue's registers for a
    /// queue that does not exist, while it is enabled or the device is live; a queue
    /// size that is not a power of two or above the maximum, a `queue_enable` other than
    /// 1; the read-only fields of the common configuration and the ISR byte.
    pub refused_writes: u64,
    /// Wake-ups of the device thread: by the doorbell KVM absorbs (each may stand for
    /// several notifies; none of them was an exit to the shim) or by the device's own
    /// source of work (see the device's counters, e.g. virtio-net's `link_wakeups`).
    pub doorbell_wakeups: u64,
    /// Signals the doorbell carried (the eventfd's count: each a driver notify KVM
    /// absorbed, or a wake-up by the device's own source, counted by the device).
    pub doorbell_rings: u64,
    /// MSI-X messages sent (the others, with MSI-X off, are INTx through ISR).
    pub msix_messages: u64,
    /// Interrupts held in the pending-bit array while their vector was masked.
    pub msix_pended: u64,
}

/// A virtio device on the modern virtio-pci transport.
pub struct VirtioPci {
    config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    irq: Arc<dyn IrqLine>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<Queue>,
    isr: u8,
    active: bool,
    /// MSI-X: where messages go (`None`: no MSI-X capability, INTx only), the table
    /// (address low, high, data, control per vector), the pending bits, and the
    /// configuration and queue vectors the driver chose.
    msi: Option<Arc<dyn MsiSink>>,
    msix_table: Vec<[u32; 4]>,
    msix_pending: u64,
    config_vector: u16,
    queue_vectors: Vec<u16>,
    /// Signalled by KVM for a write to any queue's notify address (the doorbells).
    /// `None` if the host gave no eventfd: the notify addresses then keep exiting.
    doorbell: Option<Arc<vmm_sys_util::eventfd::EventFd>>,
    stats: TransportStats,
}

impl VirtioPci {
    /// `device` on a new function, interrupting through `irq`, reaching `mem`.
    pub fn new(device: Box<dyn VirtioDevice>, irq: Arc<dyn IrqLine>, mem: GuestMemory) -> Self {
        let kind = device.device_type();
        let (class, subclass, prog_if) = device.class();
        let mut config = ConfigSpace::new(PciIds {
            vendor: VIRTIO_VENDOR,
            device: VIRTIO_DEVICE_BASE + kind,
            revision: 1,
            class,
            subclass,
            prog_if,
            subsystem_vendor: VIRTIO_VENDOR,
            // Modern devices: 0x40 and up (virtio 1.2, 4.1.2.1).
            subsystem: 0x40,
        });
        config.add_bar(0, BarKind::Memory32, BAR0_SIZE);
        config.set_interrupt_pin(1);
        let structure = |cfg_type: u8, offset: u64, length: u64| {
            let mut body = vec![16, cfg_type, 0, 0, 0, 0];
            body.extend_from_slice(&(offset as u32).to_le_bytes());
            body.extend_from_slice(&(length as u32).to_le_bytes());
            body
        };
        let caps = [
            (0x40, structure(cap::COMMON_CFG, COMMON_AT, COMMON_LEN)),
            (0x50, structure(cap::ISR_CFG, ISR_AT, 1)),
            (0x60, structure(cap::DEVICE_CFG, DEVICE_AT, DEVICE_LEN)),
            (0x70, {
                let queues = u64::from(device.num_queues().max(1));
                let mut b = structure(
                    cap::NOTIFY_CFG,
                    NOTIFY_AT,
                    queues * u64::from(NOTIFY_MULTIPLIER),
                );
                b[0] = 20;
                b.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
                b
            }),
        ];
        for (at, body) in caps {
            let writable = vec![0; body.len()];
            config.add_capability(at, cap::VENDOR, &body, &writable);
        }
        // The configuration-access window: bar, offset, length and data writable.
        let mut body = structure(cap::PCI_CFG, 0, 0);
        body[0] = 20;
        body.extend_from_slice(&[0; 4]);
        let mut writable = vec![0; body.len()];
        writable[2] = 0xff; // bar
        writable[6..18].fill(0xff); // offset, length, pci_cfg_data
        config.add_capability(PCI_CFG_CAP_AT, cap::VENDOR, &body, &writable);
        let doorbell = vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC)
            .ok()
            .map(Arc::new);
        let mut device = device;
        if let Some(bell) = doorbell.clone() {
            device.attach_waker(Arc::new(move || {
                let _ = bell.write(1);
            }));
        }
        let device_queues = device.num_queues();
        let queues = (0..device.num_queues())
            .filter_map(|_| Queue::new(device.queue_max_size()).ok())
            .collect();
        Self {
            config,
            device,
            mem,
            irq,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues,
            isr: 0,
            active: false,
            msi: None,
            msix_table: Vec::new(),
            msix_pending: 0,
            config_vector: NO_VECTOR,
            queue_vectors: vec![NO_VECTOR; usize::from(device_queues)],
            doorbell,
            stats: TransportStats::default(),
        }
    }

    /// The same device with an MSI-X capability of one vector per queue plus one for
    /// configuration changes, its messages sent to `msi` (the driver then uses MSI-X
    /// rather than INTx and reads no ISR per interrupt).
    pub fn with_msix(mut self, msi: Arc<dyn MsiSink>) -> Self {
        // The pending bits are one 64-bit word.
        let vectors = (self.queue_vectors.len() + 1).min(64);
        let mut body = Vec::new();
        body.extend_from_slice(&((vectors - 1) as u16).to_le_bytes());
        body.extend_from_slice(&(MSIX_TABLE_AT as u32).to_le_bytes()); // BIR 0
        body.extend_from_slice(&(MSIX_PBA_AT as u32).to_le_bytes());
        let mut writable = vec![0u8; body.len()];
        writable[1] = 0xc0; // function mask and enable
        self.config
            .add_capability(MSIX_CAP_AT, 0x11, &body, &writable);
        // Every vector starts masked.
        self.msix_table = vec![[0, 0, 0, 1]; vectors];
        self.msi = Some(msi);
        self
    }

    fn msix_control(&self) -> u16 {
        let mut b = [0u8; 2];
        self.config.read(MSIX_CONTROL, &mut b);
        u16::from_le_bytes(b)
    }

    fn msix_enabled(&self) -> bool {
        self.msi.is_some() && self.msix_control() & MSIX_ENABLE != 0
    }

    /// Sends vector `v`'s message, or holds it pending while it is masked.
    fn msix_signal(&mut self, v: u16) {
        let Some(entry) = self.msix_table.get(usize::from(v)).copied() else {
            return;
        };
        self.stats.interrupts += 1;
        if entry[3] & 1 != 0 || self.msix_control() & MSIX_MASKALL != 0 {
            self.msix_pending |= 1 << v;
            self.stats.msix_pended += 1;
            return;
        }
        let address = u64::from(entry[0]) | u64::from(entry[1]) << 32;
        if let Some(msi) = &self.msi
            && msi.send(address, entry[2])
        {
            self.stats.msix_messages += 1;
        }
    }

    /// Sends the pending messages of vectors no longer masked.
    fn msix_flush(&mut self) {
        if !self.msix_enabled() || self.msix_control() & MSIX_MASKALL != 0 {
            return;
        }
        for v in 0..self.msix_table.len() as u16 {
            if self.msix_pending & 1 << v != 0 && self.msix_table[usize::from(v)][3] & 1 == 0 {
                self.msix_pending &= !(1 << v);
                self.stats.interrupts = self.stats.interrupts.saturating_sub(1);
                self.msix_signal(v);
            }
        }
    }

    /// Serves a notification of queue `index` (unless the device waits for a reset),
    /// then raises its interrupt if the driver wants one.
    fn serve_queue(&mut self, index: u16) {
        if self.status & VIRTIO_CONFIG_S_NEEDS_RESET as u8 != 0 {
            return;
        }
        if self.device.notify(index) {
            self.interrupt_queue(index);
        }
        if self.device.needs_reset() {
            // 2.1.2 and 4.1.5.2: set DEVICE_NEEDS_RESET and say so by a configuration
            // change.
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET as u8;
            self.config_generation = self.config_generation.wrapping_add(1);
            self.stats.needs_reset += 1;
            if self.msix_enabled() {
                if self.config_vector != NO_VECTOR {
                    self.msix_signal(self.config_vector);
                }
            } else {
                self.raise(2);
            }
        }
    }

    /// Queue `index` has used buffers the driver wants to hear of.
    fn interrupt_queue(&mut self, index: u16) {
        if self.msix_enabled() {
            let v = self
                .queue_vectors
                .get(usize::from(index))
                .copied()
                .unwrap_or(NO_VECTOR);
            if v != NO_VECTOR {
                self.msix_signal(v);
            }
        } else {
            self.raise(1);
        }
    }

    /// A vector the driver may choose: one of the table's, else `NO_VECTOR`.
    fn vector(&self, v: u16) -> u16 {
        if usize::from(v) < self.msix_table.len() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn msix_read(&self, offset: u64, data: &mut [u8]) {
        let mut bytes = Vec::with_capacity(self.msix_table.len() * 16);
        for e in &self.msix_table {
            for w in e {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
        }
        let pba = self.msix_pending.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *d = if at >= MSIX_PBA_AT {
                pba.get((at - MSIX_PBA_AT) as usize).copied().unwrap_or(0)
            } else {
                bytes
                    .get((at - MSIX_TABLE_AT) as usize)
                    .copied()
                    .unwrap_or(0)
            };
        }
    }

    fn msix_write(&mut self, offset: u64, data: &[u8]) {
        if offset >= MSIX_PBA_AT {
            return; // the pending bits are read-only
        }
        let mut changed_mask = false;
        for (i, &d) in data.iter().enumerate() {
            let at = (offset - MSIX_TABLE_AT) as usize + i;
            let (v, byte) = (at / 16, at % 16);
            let Some(entry) = self.msix_table.get_mut(v) else {
                break;
            };
            let word = &mut entry[byte / 4];
            let shift = (byte % 4) * 8;
            *word = (*word & !(0xff << shift)) | u32::from(d) << shift;
            changed_mask |= byte >= 12;
        }
        if changed_mask {
            self.msix_flush();
        }
    }

    /// The doorbell KVM signals for notifies, for the device thread to wait on.
    pub fn doorbell(&self) -> Option<Arc<vmm_sys_util::eventfd::EventFd>> {
        self.doorbell.clone()
    }

    /// The device thread's work after the doorbell rang: every queue is looked at (the
    /// doorbell does not say which was notified), and the interrupt raised if any
    /// served buffers the driver wants to hear of.
    pub fn serve_doorbell(&mut self, rings: u64) {
        self.stats.doorbell_wakeups += 1;
        self.stats.doorbell_rings += rings;
        if !self.active {
            return;
        }
        for index in 0..self.queues.len() as u16 {
            self.serve_queue(index);
        }
    }

    /// Every feature the device offers.
    fn device_features(&self) -> u64 {
        self.device.features() | 1 << VIRTIO_F_VERSION_1
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn reset(&mut self) {
        if self.active || self.status != 0 {
            self.stats.resets += 1;
        }
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.status = 0;
        self.active = false;
        self.config_vector = NO_VECTOR;
        self.queue_vectors.fill(NO_VECTOR);
        self.msix_pending = 0;
        self.set_isr(0);
    }

    fn set_isr(&mut self, isr: u8) {
        self.isr = isr;
        let level = isr != 0;
        self.config.set_interrupt_status(level);
        // With MSI-X on, INTx stays low.
        self.irq
            .set_level(level && !self.config.intx_disabled() && !self.msix_enabled());
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let value = u32::from(value);
        let mut status = u32::from(self.status) | value;
        // FEATURES_OK only for a subset of what the device offers, with VERSION_1.
        if value & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && (self.driver_features & !self.device_features() != 0
                || self.driver_features & 1 << VIRTIO_F_VERSION_1 == 0)
        {
            self.stats.refused_writes += 1;
            status &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        let go = value & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && !self.active
            && status & VIRTIO_CONFIG_S_FAILED == 0;
        if go {
            let mem = self.mem.clone();
            if self.queues.iter().all(|q| !q.ready() || q.is_valid(&mem)) {
                self.active = true;
                // The device gets its own copies; the registers keep reading back.
                let queues = self
                    .queues
                    .iter()
                    .filter_map(|q| Queue::try_from(q.state()).ok())
                    .collect();
                self.device.activate(self.driver_features, queues, mem);
            } else {
                self.stats.bad_activations += 1;
                status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                status &= !VIRTIO_CONFIG_S_DRIVER_OK;
                self.config_generation = self.config_generation.wrapping_add(1);
            }
        } else if value & VIRTIO_CONFIG_S_DRIVER_OK != 0 && !self.active {
            self.stats.refused_writes += 1;
            status &= !VIRTIO_CONFIG_S_DRIVER_OK;
        }
        self.status = status as u8;
    }

    /// Whether the queue registers may change now (before `DRIVER_OK`).
    fn queues_writable(&self) -> bool {
        !self.active
    }

    fn common_read(&mut self, offset: u64, data: &mut [u8]) {
        let value: u64 = match offset {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select.into(),
            common::DEVICE_FEATURE => match self.device_feature_select {
                0 => self.device_features() & 0xffff_ffff,
                1 => self.device_features() >> 32,
                _ => 0,
            },
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select.into(),
            common::DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            common::MSIX_CONFIG => self.config_vector.into(),
            common::QUEUE_MSIX_VECTOR => self
                .queue_vectors
                .get(usize::from(self.queue_select))
                .copied()
                .unwrap_or(NO_VECTOR)
                .into(),
            common::NUM_QUEUES => self.queues.len() as u64,
            common::DEVICE_STATUS => self.status.into(),
            common::CONFIG_GENERATION => self.config_generation.into(),
            common::QUEUE_SELECT => self.queue_select.into(),
            common::QUEUE_NOTIFY_OFF => self.queue_select.into(),
            common::QUEUE_RESET => 0,
            common::QUEUE_NOTIF_CONFIG_DATA => 0,
            o => {
                let Some(q) = self.queues.get(usize::from(self.queue_select)) else {
                    data.fill(0);
                    return;
                };
                match o {
                    common::QUEUE_SIZE => q.size().into(),
                    common::QUEUE_ENABLE => u64::from(q.ready()),
                    common::QUEUE_DESC => q.desc_table(),
                    common::QUEUE_DESC_HI => q.desc_table() >> 32,
                    common::QUEUE_DRIVER => q.avail_ring(),
                    common::QUEUE_DRIVER_HI => q.avail_ring() >> 32,
                    common::QUEUE_DEVICE => q.used_ring(),
                    common::QUEUE_DEVICE_HI => q.used_ring() >> 32,
                    _ => 0,
                }
            }
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        let low = v as u32;
        // A 64-bit write sets both halves of an address.
        let high = (n == 8).then_some((v >> 32) as u32);
        let refused = match offset {
            common::DEVICE_FEATURE_SELECT => {
                self.device_feature_select = low;
                false
            }
            common::DRIVER_FEATURE_SELECT => {
                self.driver_feature_select = low;
                false
            }
            // Fixed once FEATURES_OK is set (3.1.1: the driver negotiates first).
            common::DRIVER_FEATURE if self.status & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0 => true,
            common::DRIVER_FEATURE => {
                match self.driver_feature_select {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(low);
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | u64::from(low) << 32;
                    }
                    _ => {}
                }
                false
            }
            common::DEVICE_STATUS => {
                self.write_status(v as u8);
                false
            }
            common::MSIX_CONFIG => {
                self.config_vector = self.vector(v as u16);
                false
            }
            common::QUEUE_MSIX_VECTOR => {
                let v = self.vector(v as u16);
                match self.queue_vectors.get_mut(usize::from(self.queue_select)) {
                    Some(slot) => {
                        *slot = v;
                        false
                    }
                    None => true,
                }
            }
            common::QUEUE_SELECT => {
                self.queue_select = v as u16;
                false
            }
            _ if !self.queues_writable() => true,
            o => self.queue_write(o, v, low, high),
        };
        if refused {
            self.stats.refused_writes += 1;
        }
    }

    /// A write to the selected queue's register at `o` before `DRIVER_OK`; whether the
    /// device refused it (no such queue or register, the queue enabled, a size it
    /// cannot take, an enable other than 1).
    fn queue_write(&mut self, o: u64, v: u64, low: u32, high: Option<u32>) -> bool {
        let Some(q) = self.selected() else {
            return true;
        };
        // An enabled queue's configuration is fixed until reset (4.1.4.3.2).
        if q.ready() {
            return true;
        }
        match o {
            common::QUEUE_SIZE => {
                q.set_size(v as u16);
                q.size() != v as u16
            }
            common::QUEUE_ENABLE if v as u16 == 1 => {
                q.set_ready(true);
                false
            }
            common::QUEUE_DESC => {
                q.set_desc_table_address(Some(low), high);
                false
            }
            common::QUEUE_DESC_HI => {
                q.set_desc_table_address(None, Some(low));
                false
            }
            common::QUEUE_DRIVER => {
                q.set_avail_ring_address(Some(low), high);
                false
            }
            common::QUEUE_DRIVER_HI => {
                q.set_avail_ring_address(None, Some(low));
                false
            }
            common::QUEUE_DEVICE => {
                q.set_used_ring_address(Some(low), high);
                false
            }
            common::QUEUE_DEVICE_HI => {
                q.set_used_ring_address(None, Some(low));
                false
            }
            _ => true,
        }
    }

    fn notify(&mut self, offset: u64) {
        let index = offset / u64::from(NOTIFY_MULTIPLIER);
        let Ok(index) = u16::try_from(index) else {
            return;
        };
        self.stats.notifies += 1;
        if !self.active || usize::from(index) >= self.queues.len() {
            return;
        }
        self.serve_queue(index);
    }

    /// Sets ISR `bits` and raises the interrupt.
    fn raise(&mut self, bits: u8) {
        if self.isr & bits == 0 {
            self.stats.interrupts += 1;
        }
        let isr = self.isr | bits;
        self.set_isr(isr);
    }

    /// A BAR 0 read.
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_AT + COMMON_LEN => self.common_read(o - COMMON_AT, data),
            o if o == ISR_AT => {
                self.stats.exits.isr_read += 1;
                let isr = self.isr;
                data.fill(0);
                if let Some(d) = data.first_mut() {
                    *d = isr;
                }
                self.set_isr(0);
            }
            o if (DEVICE_AT..DEVICE_AT + DEVICE_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_AT, data);
            }
            o if self.msi.is_some() && (MSIX_TABLE_AT..MSIX_PBA_AT + 8).contains(&o) => {
                self.msix_read(o, data);
            }
            _ => data.fill(0),
        }
    }

    /// A BAR 0 write.
    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_AT + COMMON_LEN => self.common_write(o - COMMON_AT, data),
            o if (DEVICE_AT..DEVICE_AT + DEVICE_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_AT, data);
            }
            o if self.msi.is_some() && (MSIX_TABLE_AT..MSIX_PBA_AT + 8).contains(&o) => {
                self.msix_write(o, data);
            }
            o if (NOTIFY_AT..MSIX_TABLE_AT).contains(&o) => self.notify(o - NOTIFY_AT),
            ISR_AT => self.stats.refused_writes += 1,
            _ => {}
        }
    }

    /// The `VIRTIO_PCI_CAP_PCI_CFG` window: `(offset in BAR 0, length)` if it names
    /// BAR 0 and a length of 1, 2 or 4 inside it.
    fn cfg_window(&self) -> Option<(u64, usize)> {
        let bar = self.config.read32(PCI_CFG_BAR) & 0xff;
        let offset = u64::from(self.config.read32(PCI_CFG_OFFSET));
        let len = self.config.read32(PCI_CFG_LENGTH) as usize;
        (bar == 0 && matches!(len, 1 | 2 | 4) && offset + len as u64 <= BAR0_SIZE)
            .then_some((offset, len))
    }
}

impl PciDevice for VirtioPci {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        if offset == PCI_CFG_DATA
            && let Some((at, len)) = self.cfg_window()
        {
            self.stats.exits.cfg_window += 1;
            let mut buf = [0u8; 4];
            self.bar_read(at, &mut buf[..len]);
            for (i, d) in data.iter_mut().enumerate() {
                *d = buf.get(i).copied().unwrap_or(0);
            }
            return;
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        if offset == PCI_CFG_DATA
            && let Some((at, len)) = self.cfg_window()
        {
            self.stats.exits.cfg_window += 1;
            let n = len.min(data.len());
            self.bar_write(at, &data[..n]);
            return;
        }
        self.config.write(offset, data);
        // INTx disable, MSI-X enable or its function mask may have changed.
        let isr = self.isr;
        self.set_isr(isr);
        self.msix_flush();
    }

    fn region_read(&mut self, region: usize, offset: u64, data: &mut [u8]) {
        self.stats.exits.mmio_read += 1;
        if region == 0 {
            self.bar_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn region_write(&mut self, region: usize, offset: u64, data: &[u8]) {
        self.stats.exits.mmio_write += 1;
        if region == 0 {
            self.bar_write(offset, data);
        }
    }

    fn doorbells(&self, region: usize) -> Vec<(u64, Arc<vmm_sys_util::eventfd::EventFd>)> {
        let Some(bell) = self.doorbell.as_ref().filter(|_| region == 0) else {
            return Vec::new();
        };
        (0..self.queues.len() as u64)
            .map(|i| (NOTIFY_AT + i * u64::from(NOTIFY_MULTIPLIER), bell.clone()))
            .collect()
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "transport": self.stats,
            "msi": self.msi.as_ref().map(|m| m.stats()),
            "device": self.device.stats(),
        })
    }
}

/// Whether the driver wants an interrupt for the buffers used since the last call: with
/// `EVENT_IDX`, when the used index passed its `used_event` (rust-vmm's check); without
/// it, unless it set `VIRTQ_AVAIL_F_NO_INTERRUPT` in the available ring's flags (which
/// rust-vmm's queue does not look at), as QEMU honours it.
pub fn wants_interrupt(queue: &mut Queue, mem: &GuestMemory) -> bool {
    use vm_memory::{Bytes, GuestAddress};
    // Also the fence between the used-ring writes and the flag read.
    let wanted = queue.needs_notification(mem).unwrap_or(true);
    if !wanted || queue.event_idx_enabled() {
        return wanted;
    }
    let flags: u16 = mem
        .read_obj(GuestAddress(queue.avail_ring()))
        .map(u16::from_le)
        .unwrap_or(0);
    flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
}

/// `VIRTQ_AVAIL_F_NO_INTERRUPT`.
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 =
    virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16;

/// Whether `chain` ends as the driver must end it: with a descriptor that has no
/// `NEXT` flag. rust-vmm's walk stops silently where a chain is malformed (a loop or a
/// chain longer than the queue, when its TTL runs out; a `next` beyond the queue or
/// the indirect table; an indirect table it cannot use; more than 2^32 bytes in all,
/// 2.7.5.2), and what it yielded up to there looks like a whole chain: a device that
/// served it would send a frame the driver never composed or report a length beyond
/// the buffers. A device drops a chain this says is not whole.
pub fn whole_chain(chain: &DescriptorChain<&GuestMemory>) -> bool {
    chain.clone().last().is_some_and(|d| !d.has_next())
}

/// Serves every chain the driver made available on `queue` with `serve` (which returns
/// the bytes it wrote into the chain), the driver's notifications off while it works and
/// on again after, looking once more for chains published meanwhile. Returns whether the
/// driver wants an interrupt for what was used. Unusable rings count in `ring_errors`;
/// so does an available index beyond what the ring holds (a hostile driver), which
/// stops the round instead of spinning (and makes the device need a reset). A chain
/// published between the last look and turning notifications on again is served: that
/// driver did not notify, since it saw them off.
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemory,
    ring_errors: &mut u64,
    mut serve: impl FnMut(DescriptorChain<&GuestMemory>) -> u32,
) -> bool {
    let mut served = false;
    // The last round found nothing to take though the index promised more.
    let mut idle = false;
    loop {
        if queue.disable_notification(mem).is_err() {
            *ring_errors += 1;
            return false;
        }
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            popped = true;
            let head = chain.head_index();
            let len = serve(chain);
            if queue.add_used(mem, head, len).is_err() {
                *ring_errors += 1;
                return false;
            }
            served = true;
        }
        match queue.enable_notification(mem) {
            Ok(true) if !popped => {
                // More is promised, yet nothing could be taken: the driver published
                // just now (the next round takes it), or the index runs further ahead
                // than the ring holds, which every look refuses.
                let within = matches!(
                    queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire),
                    Ok(idx) if (idx - std::num::Wrapping(queue.next_avail())).0 <= queue.size()
                );
                if !within || idle {
                    *ring_errors += 1;
                    break;
                }
                idle = true;
            }
            Ok(true) => idle = false,
            Ok(false) => break,
            Err(_) => {
                *ring_errors += 1;
                return false;
            }
        }
    }
    served && wants_interrupt(queue, mem)
}

/// The device thread of a virtio-pci device: it waits on the doorbell KVM signals for
/// the driver's notifies and serves the queues, so that a notify costs the vCPU no exit
/// to the shim. Dropped: the thread ends.
pub struct VirtioWorker {
    dev: Arc<std::sync::Mutex<VirtioPci>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    doorbell: Arc<vmm_sys_util::eventfd::EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VirtioWorker {
    /// Starts the thread for `dev` (which must have a doorbell).
    pub fn start(dev: Arc<std::sync::Mutex<VirtioPci>>) -> std::io::Result<Self> {
        use std::sync::atomic::Ordering;
        let doorbell = dev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .doorbell()
            .ok_or_else(|| std::io::Error::other("the device has no doorbell eventfd"))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d, s, bell) = (dev.clone(), stop.clone(), doorbell.clone());
        let thread = std::thread::Builder::new()
            .name("virtio".into())
            .spawn(move || {
                while let Ok(rings) = bell.read() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    d.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .serve_doorbell(rings);
                }
            })?;
        Ok(Self {
            dev,
            stop,
            doorbell,
            thread: Some(thread),
        })
    }

    /// Stops and joins the thread; returns the device's counters.
    pub fn stop(mut self) -> serde_json::Value {
        self.halt();
        self.dev.lock().unwrap_or_else(|p| p.into_inner()).stats()
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.doorbell.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VirtioWorker {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    #[derive(Default)]
    struct Log {
        activated: Option<(u64, Vec<(bool, u16)>)>,
        notified: Vec<u16>,
        resets: u32,
        /// The device met a driver error (until reset).
        broken: bool,
    }

    /// A device with two queues of at most 128 entries that logs what it is told
    /// and asks for an interrupt on every notify of queue 1.
    struct Dummy(Arc<Mutex<Log>>);

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u16 {
            2
        }
        fn class(&self) -> (u8, u8, u8) {
            (1, 0, 0)
        }
        fn features(&self) -> u64 {
            1 << 1 | 1 << 9
        }
        fn num_queues(&self) -> u16 {
            2
        }
        fn queue_max_size(&self) -> u16 {
            128
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, features: u64, queues: Vec<Queue>, _mem: GuestMemory) {
            let q = queues.iter().map(|q| (q.ready(), q.size())).collect();
            self.0.lock().unwrap().activated = Some((features, q));
        }
        fn notify(&mut self, index: u16) -> bool {
            self.0.lock().unwrap().notified.push(index);
            index == 1
        }
        fn reset(&mut self) {
            let mut log = self.0.lock().unwrap();
            log.resets += 1;
            log.broken = false;
        }
        fn needs_reset(&self) -> bool {
            self.0.lock().unwrap().broken
        }
    }

    #[derive(Default)]
    struct Line(AtomicBool);
    impl IrqLine for Line {
        fn set_level(&self, asserted: bool) {
            self.0.store(asserted, Ordering::SeqCst);
        }
    }

    fn device() -> (VirtioPci, Arc<Mutex<Log>>, Arc<Line>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let line = Arc::new(Line::default());
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let d = VirtioPci::new(Box::new(Dummy(log.clone())), line.clone(), mem);
        (d, log, line)
    }

    fn r(d: &mut VirtioPci, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        d.region_read(0, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn w(d: &mut VirtioPci, offset: u64, len: usize, v: u64) {
        d.region_write(0, offset, &v.to_le_bytes()[..len]);
    }

    fn cfg8(d: &mut VirtioPci, at: usize) -> u8 {
        let mut b = [0u8];
        d.config_read(at, &mut b);
        b[0]
    }

    #[test]
    fn the_capabilities_describe_bar_0_as_the_spec_lays_it_out() {
        let (mut d, _, _) = device();
        let ids = d.config().read32(0);
        assert_eq!(ids, 0x1042_1af4, "vendor 1af4, device 1040 + type 2");
        assert_eq!(cfg8(&mut d, 0x08), 1, "revision 1: modern");
        assert_ne!(d.config().read32(0x04) >> 16 & 0x10, 0, "capabilities list");
        let mut at = usize::from(cfg8(&mut d, 0x34));
        let mut seen = Vec::new();
        while at != 0 {
            assert_eq!(cfg8(&mut d, at), cap::VENDOR);
            let cfg_type = cfg8(&mut d, at + 3);
            let bar = cfg8(&mut d, at + 4);
            let offset = d.config().read32(at + 8);
            let length = d.config().read32(at + 12);
            seen.push((cfg_type, bar, offset, length));
            if cfg_type == cap::NOTIFY_CFG {
                assert_eq!(d.config().read32(at + 16), NOTIFY_MULTIPLIER);
            }
            at = usize::from(cfg8(&mut d, at + 1));
        }
        assert_eq!(
            seen,
            [
                (cap::COMMON_CFG, 0, 0, COMMON_LEN as u32),
                (cap::ISR_CFG, 0, 0x1000, 1),
                (cap::DEVICE_CFG, 0, 0x2000, 0x1000),
                (cap::NOTIFY_CFG, 0, 0x3000, 8),
                (cap::PCI_CFG, 0, 0, 0),
            ]
        );
        // The configuration-access window reads the common configuration.
        d.config_write(PCI_CFG_OFFSET, &(common::NUM_QUEUES as u32).to_le_bytes());
        d.config_write(PCI_CFG_LENGTH, &2u32.to_le_bytes());
        let mut b = [0u8; 4];
        d.config_read(PCI_CFG_DATA, &mut b);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 2);
    }

    #[test]
    fn features_ok_needs_version_1_and_nothing_unoffered() {
        let (mut d, _, _) = device();
        w(&mut d, common::DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(
            r(&mut d, common::DEVICE_FEATURE, 4),
            1,
            "VERSION_1 is bit 32"
        );
        w(&mut d, common::DEVICE_FEATURE_SELECT, 4, 0);
        assert_eq!(r(&mut d, common::DEVICE_FEATURE, 4), 1 << 1 | 1 << 9);
        let negotiate = |d: &mut VirtioPci, low: u64, high: u64| {
            w(d, common::DEVICE_STATUS, 1, 0);
            w(d, common::DEVICE_STATUS, 1, 1 | 2);
            w(d, common::DRIVER_FEATURE_SELECT, 4, 0);
            w(d, common::DRIVER_FEATURE, 4, low);
            w(d, common::DRIVER_FEATURE_SELECT, 4, 1);
            w(d, common::DRIVER_FEATURE, 4, high);
            w(d, common::DEVICE_STATUS, 1, 1 | 2 | 8);
            r(d, common::DEVICE_STATUS, 1) & 8 != 0
        };
        assert!(!negotiate(&mut d, 1 << 1, 0), "without VERSION_1");
        assert!(!negotiate(&mut d, 1 << 2, 1), "a feature not offered");
        assert!(negotiate(&mut d, 1 << 9, 1));
        // Fixed once FEATURES_OK is set.
        w(&mut d, common::DRIVER_FEATURE_SELECT, 4, 0);
        w(&mut d, common::DRIVER_FEATURE, 4, 0);
        assert_eq!(r(&mut d, common::DRIVER_FEATURE, 4), 1 << 9);
    }

    /// Negotiates VERSION_1, sets queue 1 up in RAM and sets DRIVER_OK.
    fn bring_up(d: &mut VirtioPci, desc: u64) {
        w(d, common::DEVICE_STATUS, 1, 1 | 2);
        w(d, common::DRIVER_FEATURE_SELECT, 4, 1);
        w(d, common::DRIVER_FEATURE, 4, 1);
        w(d, common::DEVICE_STATUS, 1, 1 | 2 | 8);
        w(d, common::QUEUE_SELECT, 2, 1);
        assert_eq!(r(d, common::QUEUE_SIZE, 2), 128, "the maximum until set");
        w(d, common::QUEUE_SIZE, 2, 100); // not a power of two: ignored
        assert_eq!(r(d, common::QUEUE_SIZE, 2), 128);
        w(d, common::QUEUE_SIZE, 2, 64);
        w(d, common::QUEUE_DESC, 8, desc);
        w(d, common::QUEUE_DRIVER, 4, 0x2000);
        w(d, common::QUEUE_DRIVER_HI, 4, 0);
        w(d, common::QUEUE_DEVICE, 8, 0x3000);
        w(d, common::QUEUE_ENABLE, 2, 1);
        w(d, common::DEVICE_STATUS, 1, 1 | 2 | 8 | 4);
    }

    #[test]
    fn driver_ok_hands_the_queues_over_and_notifies_interrupt_through_isr() {
        let (mut d, log, line) = device();
        bring_up(&mut d, 0x1000);
        assert_eq!(r(&mut d, common::DEVICE_STATUS, 1), 15);
        let activated = log.lock().unwrap().activated.clone();
        assert_eq!(activated, Some((1 << 32, vec![(false, 128), (true, 64)])));
        // Fixed now: a new size is ignored.
        w(&mut d, common::QUEUE_SIZE, 2, 32);
        assert_eq!(r(&mut d, common::QUEUE_SIZE, 2), 64);
        assert_eq!(r(&mut d, common::QUEUE_DESC, 8), 0x1000);
        // Queue 0's notify: no interrupt. Queue 1's: ISR bit 0 and the line.
        w(&mut d, NOTIFY_AT, 2, 0);
        assert!(!line.0.load(Ordering::SeqCst));
        w(&mut d, NOTIFY_AT + 4, 2, 1);
        assert!(line.0.load(Ordering::SeqCst));
        // INTx disabled: the line drops, the status bit stays.
        d.config_write(0x04, &(0x0406u16).to_le_bytes());
        assert!(!line.0.load(Ordering::SeqCst));
        d.config_write(0x04, &(0x0006u16).to_le_bytes());
        assert!(line.0.load(Ordering::SeqCst));
        // Reading ISR clears it and lowers the line.
        assert_eq!(r(&mut d, ISR_AT, 1), 1);
        assert!(!line.0.load(Ordering::SeqCst));
        assert_eq!(r(&mut d, ISR_AT, 1), 0);
        // Notifies of queues that do not exist are counted and dropped.
        w(&mut d, NOTIFY_AT + 4 * 7, 2, 7);
        assert_eq!(log.lock().unwrap().notified, [0, 1]);
        assert_eq!(d.stats.notifies, 3);
        // Reset: status 0, the device told, the queues back to their defaults.
        w(&mut d, common::DEVICE_STATUS, 1, 0);
        assert_eq!(r(&mut d, common::DEVICE_STATUS, 1), 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        w(&mut d, common::QUEUE_SELECT, 2, 1);
        assert_eq!(r(&mut d, common::QUEUE_ENABLE, 2), 0);
        assert_eq!(r(&mut d, common::QUEUE_SIZE, 2), 128);
    }

    #[test]
    fn an_enabled_queue_outside_ram_needs_reset_instead_of_activating() {
        let (mut d, log, _) = device();
        bring_up(&mut d, 0x20_0000);
        assert!(log.lock().unwrap().activated.is_none());
        let status = r(&mut d, common::DEVICE_STATUS, 1) as u32;
        assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
        // Notifies to an inactive device go nowhere.
        w(&mut d, NOTIFY_AT + 4, 2, 1);
        assert!(log.lock().unwrap().notified.is_empty());
    }

    #[test]
    fn a_device_error_sets_needs_reset_tells_the_driver_and_stops_serving() {
        let (mut d, log, line) = device();
        bring_up(&mut d, 0x1000);
        w(&mut d, NOTIFY_AT + 4, 2, 1);
        assert_eq!(r(&mut d, ISR_AT, 1), 1);
        // The device finds its ring unusable while serving queue 0.
        log.lock().unwrap().broken = true;
        w(&mut d, NOTIFY_AT, 2, 0);
        let status = r(&mut d, common::DEVICE_STATUS, 1) as u32;
        assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(line.0.load(Ordering::SeqCst));
        assert_eq!(r(&mut d, ISR_AT, 1), 2, "a configuration change");
        assert_eq!(d.stats.needs_reset, 1);
        // Nothing more is served, by exit or by doorbell, until the reset.
        w(&mut d, NOTIFY_AT + 4, 2, 1);
        d.serve_doorbell(1);
        assert_eq!(log.lock().unwrap().notified, [1, 0]);
        assert_eq!(d.stats.needs_reset, 1);
        w(&mut d, common::DEVICE_STATUS, 1, 0);
        bring_up(&mut d, 0x1000);
        assert_eq!(r(&mut d, common::DEVICE_STATUS, 1), 15);
        w(&mut d, NOTIFY_AT + 4, 2, 1);
        assert_eq!(log.lock().unwrap().notified, [1, 0, 1]);
    }

    #[test]
    fn hostile_accesses_neither_panic_nor_change_what_they_should_not() {
        let (mut d, _, _) = device();
        for offset in [
            0,
            1,
            0x13,
            0x3b,
            0x3c,
            0x0fff,
            0x1001,
            0x2fff,
            0x3fff,
            0x4000,
            u64::MAX,
        ] {
            for len in [0, 1, 2, 3, 4, 8] {
                let mut b = vec![0u8; len];
                d.region_read(0, offset, &mut b);
                d.region_write(0, offset, &vec![0xa5; len]);
            }
        }
        // The window with a bad BAR or length reads the configuration space itself.
        d.config_write(PCI_CFG_BAR, &[3]);
        let mut b = [0u8; 4];
        d.config_read(PCI_CFG_DATA, &mut b);
        d.config_write(PCI_CFG_DATA, &[1, 2, 3, 4]);
        d.region_read(1, 0, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    /// The writes 4.1.4.3, 3.1.1 and 2.1 have the device ignore are ignored, and counted
    /// in `refused_writes` (the hostile guest's register storm asserts that count).
    #[test]
    fn writes_the_spec_refuses_are_ignored_and_counted() {
        let (mut d, _, _) = device();
        let refused = |d: &VirtioPci| d.stats.refused_writes;
        // A queue that does not exist: reads 0, its registers refuse writes.
        w(&mut d, common::QUEUE_SELECT, 2, 7);
        assert_eq!(r(&mut d, common::QUEUE_SIZE, 2), 0);
        w(&mut d, common::QUEUE_SIZE, 2, 8);
        w(&mut d, common::QUEUE_ENABLE, 2, 1);
        w(&mut d, common::QUEUE_MSIX_VECTOR, 2, 0);
        assert_eq!((r(&mut d, common::QUEUE_ENABLE, 2), refused(&d)), (0, 3));
        // DRIVER_OK without FEATURES_OK; FEATURES_OK for a feature not offered.
        w(&mut d, common::DEVICE_STATUS, 1, 1 | 2);
        w(&mut d, common::DEVICE_STATUS, 1, 1 | 2 | 4);
        assert_eq!(r(&mut d, common::DEVICE_STATUS, 1), 1 | 2);
        w(&mut d, common::DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut d, common::DRIVER_FEATURE, 4, 1 | 1 << 20);
        w(&mut d, common::DEVICE_STATUS, 1, 1 | 2 | 8);
        assert_eq!(r(&mut d, common::DEVICE_STATUS, 1), 1 | 2);
        assert_eq!(refused(&d), 5);
        // Read-only fields and the ISR byte.
        let queues = r(&mut d, common::NUM_QUEUES, 2);
        w(&mut d, common::NUM_QUEUES, 2, 9);
        w(&mut d, common::CONFIG_GENERATION, 1, 5);
        w(&mut d, ISR_AT, 1, 0xff);
        assert_eq!(r(&mut d, common::NUM_QUEUES, 2), queues);
        assert_eq!(r(&mut d, ISR_AT, 1), 0);
        assert_eq!(refused(&d), 8);
        // A reset, and a good bring-up (its queue size of 100 is refused).
        w(&mut d, common::DEVICE_STATUS, 1, 0);
        bring_up(&mut d, 0x1000);
        assert_eq!(refused(&d), 9);
        // Driver features are fixed after FEATURES_OK, queue registers after DRIVER_OK.
        w(&mut d, common::DRIVER_FEATURE_SELECT, 4, 0);
        w(&mut d, common::DRIVER_FEATURE, 4, 0xffff_ffff);
        assert_eq!(r(&mut d, common::DRIVER_FEATURE, 4), 0);
        w(&mut d, common::QUEUE_SELECT, 2, 1);
        w(&mut d, common::QUEUE_SIZE, 2, 8);
        w(&mut d, common::QUEUE_DESC, 8, 0xdead_0000);
        w(&mut d, common::QUEUE_ENABLE, 2, 0);
        assert_eq!(r(&mut d, common::QUEUE_SIZE, 2), 64);
        assert_eq!(r(&mut d, common::QUEUE_DESC, 8), 0x1000);
        assert_eq!(r(&mut d, common::QUEUE_ENABLE, 2), 1);
        assert_eq!(refused(&d), 13);
        assert_eq!(r(&mut d, common::DEVICE_STATUS, 1), 1 | 2 | 4 | 8);
    }

    #[derive(Default)]
    struct Messages(Mutex<Vec<(u64, u32)>>);
    impl MsiSink for Messages {
        fn send(&self, address: u64, data: u32) -> bool {
            self.0.lock().unwrap().push((address, data));
            true
        }
    }

    #[test]
    fn msix_sends_the_queue_vector_holds_it_while_masked_and_keeps_intx_low() {
        let (d, _, line) = device();
        let msgs = Arc::new(Messages::default());
        let mut d = d.with_msix(msgs.clone());
        // The capability: table size 3 (two queues + config), table and PBA in BAR 0.
        assert_eq!(cfg8(&mut d, MSIX_CAP_AT), 0x11);
        assert_eq!(d.config().read32(MSIX_CAP_AT) >> 16, 2);
        assert_eq!(d.config().read32(MSIX_CAP_AT + 4), MSIX_TABLE_AT as u32);
        // Vector 1: address and data, unmasked; queue 1 uses it; a bad vector is refused.
        w(&mut d, MSIX_TABLE_AT + 16, 4, 0xfee0_0000);
        w(&mut d, MSIX_TABLE_AT + 16 + 8, 4, 0x41);
        w(&mut d, common::QUEUE_SELECT, 2, 1);
        w(&mut d, common::QUEUE_MSIX_VECTOR, 2, 9);
        assert_eq!(r(&mut d, common::QUEUE_MSIX_VECTOR, 2), 0xffff);
        bring_up(&mut d, 0x1000);
        w(&mut d, common::QUEUE_MSIX_VECTOR, 2, 1);
        assert_eq!(r(&mut d, common::QUEUE_MSIX_VECTOR, 2), 1);
        d.config_write(MSIX_CONTROL, &MSIX_ENABLE.to_le_bytes());
        // Still masked (every vector starts so): pending, not sent.
        w(&mut d, NOTIFY_AT + 4, 2, 1);
        assert!(msgs.0.lock().unwrap().is_empty());
        assert_eq!(r(&mut d, MSIX_PBA_AT, 8), 1 << 1);
        // Unmasked: the held message goes, the pending bit clears.
        w(&mut d, MSIX_TABLE_AT + 16 + 12, 4, 0);
        assert_eq!(*msgs.0.lock().unwrap(), [(0xfee0_0000, 0x41)]);
        assert_eq!(r(&mut d, MSIX_PBA_AT, 8), 0);
        // Then straight away; INTx never rises with MSI-X on.
        w(&mut d, NOTIFY_AT + 4, 2, 1);
        assert_eq!(msgs.0.lock().unwrap().len(), 2);
        assert!(!line.0.load(Ordering::SeqCst));
        // The function mask holds them all.
        d.config_write(MSIX_CONTROL, &(MSIX_ENABLE | MSIX_MASKALL).to_le_bytes());
        w(&mut d, NOTIFY_AT + 4, 2, 1);
        assert_eq!(msgs.0.lock().unwrap().len(), 2);
        d.config_write(MSIX_CONTROL, &MSIX_ENABLE.to_le_bytes());
        assert_eq!(msgs.0.lock().unwrap().len(), 3);
        // A reset forgets the vectors.
        w(&mut d, common::DEVICE_STATUS, 1, 0);
        w(&mut d, common::QUEUE_SELECT, 2, 1);
        assert_eq!(r(&mut d, common::QUEUE_MSIX_VECTOR, 2), 0xffff);
    }
}
