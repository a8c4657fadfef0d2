//! The guest's virtio drivers (`hw_devices::virtio`) against the shim's virtio-pci
//! transport and devices (`host_shim::devices::virtio_pci`, `virtio_blk`,
//! `virtio_net` on a `MemLink`; the lying NICs are a small fake device, [`FakeNet`], on
//! the same transport) in one process, over the same guest RAM: the driver's transport walks the model's
//! configuration space and reaches its BAR through [`PciRegion`], `virtio-drivers`'
//! static `Hal` hands out pages of the test's RAM ([`TestHal`], bouncing host-heap
//! buffers such as indirect descriptor tables), and a notify is served synchronously in
//! the register write (no device thread), so every run is deterministic.
//!
//! The lying devices wrap the real model ([`Liar`]) and rewrite what it put in the used
//! ring (ids, lengths, the index, duplicates, status bytes) or never answer; the lying
//! transports lie in configuration space or registers ([`CfgLiar`], [`MmioLiar`]). None
//! may panic the driver or make it hang; a broken protocol stops it with `Protocol`.
//!
//! MSI-X: with the model's capability ([`VirtioPci::with_msix`]) turned on by the test
//! as the kernel turns it on, every interrupt is a message to the address and data
//! programmed ([`Messages`]) and the drivers read no ISR (the model's MMIO reads do not
//! grow); lying MSI-X capabilities, and a device that refuses the queue vector, leave
//! the driver on INTx.

mod emu_common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use emu_common::virtio_hal::{self, TestHal};
use emu_common::{LevelLog, PciRegion, Ram};
use host_shim::devices::GuestMemory;
use host_shim::devices::pci::PciDevice;
use host_shim::devices::virtio_blk::VirtioBlk as BlkModel;
use host_shim::devices::virtio_pci::{VirtioDevice, VirtioPci};
use host_shim::hostio::disk::{DiskImage, DiskOptions};
use hw_devices::Mmio;
use hw_devices::pci::{self, Bdf, ConfigAccess, command};
use hw_devices::virtio::InitError;
use hw_devices::virtio::blk::{Features, QUEUE_SIZE, VirtioBlk, VirtioBlkConfig};
use hw_devices::virtio::net::{
    Features as NetFeatures, MAX_FRAME, QUEUE_SIZE as RX_QUEUE_SIZE, VirtioNet, VirtioNetConfig,
};
use hw_devices::virtio::transport::{PciTransport, ProbeError, common};
use hw_devices::virtio::virtio_drivers::transport::{DeviceStatus, Transport};
use pv_drivers::device::{BlockCompletion, BlockDevice, BlockError, BlockOp, NetDevice, NetError};
use pv_drivers::workload::{self, Phase, Waiter};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address as _, Bytes, GuestAddress};

const RAM_MIB: u64 = 16;
const DISK_BYTES: usize = 1 << 20;
const BDF: Bdf = Bdf::new(0, 4, 0);

type Dev = Arc<Mutex<VirtioPci>>;
type Blk<M> = VirtioBlk<TestHal, M>;

/// Configuration space of the model, as the bus would deliver it.
struct ModelConfig(Dev);

impl ConfigAccess for ModelConfig {
    fn read32(&mut self, _bdf: Bdf, offset: u8) -> u32 {
        let mut b = [0u8; 4];
        self.0
            .lock()
            .unwrap()
            .config_read(usize::from(offset & 0xfc), &mut b);
        u32::from_le_bytes(b)
    }
    fn write32(&mut self, _bdf: Bdf, offset: u8, value: u32) {
        self.0
            .lock()
            .unwrap()
            .config_write(usize::from(offset & 0xfc), &value.to_le_bytes());
    }
    fn write16(&mut self, _bdf: Bdf, offset: u8, value: u16) {
        self.0
            .lock()
            .unwrap()
            .config_write(usize::from(offset & 0xfe), &value.to_le_bytes());
    }
}

/// A disk image file, removed at the end.
struct Image(PathBuf);

impl Image {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("virtio-model-{name}-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; DISK_BYTES]).expect("image");
        Self(path)
    }
    fn read(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("read image")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the [`Liar`] does to the next answer of the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Lie {
    #[default]
    Honest,
    /// The last used element's id becomes this.
    WrongId(u32),
    /// The last used element's length becomes this.
    Length(u32),
    /// The last used element repeats the id of the one before.
    RepeatFirst,
    /// The last used element is published twice (index + 1).
    Duplicate,
    /// The used index runs this far ahead.
    Ahead(u16),
    /// The last request's status byte becomes this.
    Status(u8),
    /// Requests are never served.
    Silent,
}

/// The real virtio-blk model, with lies told to the driver after it served.
struct Liar {
    inner: BlkModel,
    lie: Arc<Mutex<Lie>>,
    hide_ro: bool,
    mem: Option<GuestMemory>,
    used: u64,
    desc: u64,
    size: u16,
}

impl Liar {
    fn elem(&self, k: u16) -> GuestAddress {
        GuestAddress(self.used + 4 + u64::from(k % self.size) * 8)
    }

    fn tell(&self, lie: Lie) {
        let mem = self.mem.as_ref().expect("activated");
        let idx_at = GuestAddress(self.used + 2);
        let idx: u16 = mem.read_obj(idx_at).unwrap();
        let last = idx.wrapping_sub(1);
        match lie {
            Lie::Honest | Lie::Silent => {}
            Lie::WrongId(id) => mem.write_obj(id, self.elem(last)).unwrap(),
            Lie::Length(len) => mem
                .write_obj(len, self.elem(last).unchecked_add(4))
                .unwrap(),
            Lie::RepeatFirst => {
                let id: u32 = mem.read_obj(self.elem(last.wrapping_sub(1))).unwrap();
                mem.write_obj(id, self.elem(last)).unwrap();
            }
            Lie::Duplicate => {
                let e: u64 = mem.read_obj(self.elem(last)).unwrap();
                mem.write_obj(e, self.elem(idx)).unwrap();
                mem.write_obj(idx.wrapping_add(1), idx_at).unwrap();
            }
            Lie::Ahead(n) => mem.write_obj(idx.wrapping_add(n), idx_at).unwrap(),
            Lie::Status(s) => {
                // The status byte is the chain's last buffer (through an indirect
                // table if the head points to one).
                let id: u32 = mem.read_obj(self.elem(last)).unwrap();
                let d = |table: u64, i: u64| -> (u64, u32, u16, u16) {
                    let at = GuestAddress(table + i * 16);
                    (
                        mem.read_obj(at).unwrap(),
                        mem.read_obj(at.unchecked_add(8)).unwrap(),
                        mem.read_obj(at.unchecked_add(12)).unwrap(),
                        mem.read_obj(at.unchecked_add(14)).unwrap(),
                    )
                };
                let (mut table, mut i) = (self.desc, u64::from(id));
                let (addr, len, flags, _) = d(table, i);
                if flags & 4 != 0 {
                    (table, i) = (addr, u64::from(len / 16 - 1));
                } else {
                    loop {
                        let (_, _, flags, next) = d(table, i);
                        if flags & 1 == 0 {
                            break;
                        }
                        i = u64::from(next);
                    }
                }
                mem.write_obj(s, GuestAddress(d(table, i).0)).unwrap();
            }
        }
    }
}

impl VirtioDevice for Liar {
    fn device_type(&self) -> u16 {
        self.inner.device_type()
    }
    fn class(&self) -> (u8, u8, u8) {
        self.inner.class()
    }
    fn features(&self) -> u64 {
        let f = self.inner.features();
        if self.hide_ro { f & !(1 << 5) } else { f }
    }
    fn num_queues(&self) -> u16 {
        self.inner.num_queues()
    }
    fn queue_max_size(&self) -> u16 {
        self.inner.queue_max_size()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.inner.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.inner.write_config(offset, data)
    }
    fn activate(&mut self, features: u64, queues: Vec<Queue>, mem: GuestMemory) {
        if let Some(q) = queues.first() {
            (self.used, self.desc, self.size) = (q.used_ring(), q.desc_table(), q.size());
        }
        self.mem = Some(mem.clone());
        self.inner.activate(features, queues, mem)
    }
    fn notify(&mut self, index: u16) -> bool {
        let lie = *self.lie.lock().unwrap();
        if lie == Lie::Silent {
            return false;
        }
        let interrupt = self.inner.notify(index);
        if lie != Lie::Honest {
            *self.lie.lock().unwrap() = Lie::Honest;
            self.tell(lie);
        }
        interrupt
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn stats(&self) -> serde_json::Value {
        self.inner.stats()
    }
}

struct Rig {
    dev: Dev,
    irq: Arc<LevelLog>,
    lie: Arc<Mutex<Lie>>,
    image: Image,
}

/// A virtio-blk model on a fresh 1 MiB image and fresh RAM (this thread's DMA memory),
/// memory decode and bus mastering on.
fn rig(name: &str, read_only: bool, hide_ro: bool) -> Rig {
    rig_with(name, read_only, hide_ro, None)
}

/// Records every MSI-X message (address, data) the model sends.
#[derive(Default)]
struct Messages(Mutex<Vec<(u64, u32)>>);

impl Messages {
    fn sent(&self) -> Vec<(u64, u32)> {
        self.0.lock().unwrap().clone()
    }
}

impl host_shim::devices::MsiSink for Messages {
    fn send(&self, address: u64, data: u32) -> bool {
        self.0.lock().unwrap().push((address, data));
        true
    }
}

/// The message the tests program: LAPIC 3, vector 0x61 (as the kernel's `route_msi`
/// builds it).
const MSI_ADDRESS: u64 = 0xfee0_0000 | 3 << 12;
const MSI_DATA: u32 = 0x61;

/// [`rig`], with an MSI-X capability when `msi` is given (as devmgr builds it).
fn rig_with(name: &str, read_only: bool, hide_ro: bool, msi: Option<Arc<Messages>>) -> Rig {
    let ram = Ram::new(RAM_MIB);
    let mem = ram.mem.clone();
    virtio_hal::install(ram);
    let image = Image::new(name);
    let disk = DiskImage::open(
        &image.0,
        DiskOptions {
            read_only,
            ..Default::default()
        },
    )
    .expect("disk");
    let lie = Arc::new(Mutex::new(Lie::Honest));
    let model = Liar {
        inner: BlkModel::new(disk, "virtio-model"),
        lie: lie.clone(),
        hide_ro,
        mem: None,
        used: 0,
        desc: 0,
        size: 1,
    };
    let irq = LevelLog::new();
    let mut pci = VirtioPci::new(Box::new(model), irq.clone(), mem);
    if let Some(msi) = msi {
        pci = pci.with_msix(msi);
    }
    pci.config_write(
        4,
        &(command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes(),
    );
    Rig {
        dev: Arc::new(Mutex::new(pci)),
        irq,
        lie,
        image,
    }
}

/// The transport over the model, through `cfg` and `wrap`ped BAR accesses.
fn probe_with<C: ConfigAccess, M: Mmio>(
    rig: &Rig,
    cfg: &mut C,
    wrap: impl Fn(PciRegion<VirtioPci>) -> M,
) -> Result<PciTransport<M>, ProbeError> {
    let f = pci::read_function(cfg, BDF).expect("the function answers");
    PciTransport::probe(cfg, &f, |slot, _bar| {
        Some(wrap(PciRegion::new(rig.dev.clone(), usize::from(slot), 0)))
    })
}

fn transport(rig: &Rig) -> PciTransport<PciRegion<VirtioPci>> {
    probe_with(rig, &mut ModelConfig(rig.dev.clone()), |r| r).expect("probe")
}

fn driver(rig: &Rig) -> Blk<PciRegion<VirtioPci>> {
    VirtioBlk::new(transport(rig), VirtioBlkConfig::default()).expect("driver init")
}

/// Gives up after `limit` waits; its clock counts calls (never the wall clock).
struct Patience {
    waits: u32,
    limit: u32,
    clock: std::cell::Cell<u64>,
}

impl Patience {
    fn new(limit: u32) -> Self {
        Self {
            waits: 0,
            limit,
            clock: Default::default(),
        }
    }
}

impl Waiter for Patience {
    fn wait(&mut self) -> bool {
        self.waits += 1;
        self.waits <= self.limit
    }
    fn now_ns(&self) -> u64 {
        self.clock.set(self.clock.get() + 1000);
        self.clock.get()
    }
}

fn phase(
    phase: Phase,
    offset: u64,
    size: u64,
    block: u32,
    queue_depth: u32,
    seed: u64,
) -> workload::Config {
    workload::Config {
        phase,
        offset,
        size,
        block,
        queue_depth,
        seed,
        ..Default::default()
    }
}

fn model_stats(rig: &Rig) -> serde_json::Value {
    rig.dev.lock().unwrap().stats()
}

/// Submits `op`, kicks, polls once.
fn one(
    dev: &mut dyn BlockDevice,
    op: BlockOp,
    sector: u64,
    count: u32,
    data: &[u8],
) -> Result<Vec<BlockCompletion>, BlockError> {
    dev.submit(op, sector, count, data)?;
    dev.kick();
    let mut done = Vec::new();
    dev.poll(&mut done)?;
    Ok(done)
}

#[test]
fn the_driver_writes_flushes_and_reads_back_through_the_model() {
    let rig = rig("rw", false, false);
    let mut dev = driver(&rig);
    let info = dev.info();
    assert_eq!(info.sectors, (DISK_BYTES / 512) as u64);
    assert_eq!(info.sector_size, 512);
    assert!(!info.read_only && info.flush, "{info:?}");
    assert_eq!(info.queue_depth, 32);
    assert_eq!(info.max_transfer, 64 << 10);
    let f = dev.features();
    assert!(f.contains(Features::INDIRECT_DESC | Features::FLUSH | Features::VERSION_1));
    assert!(
        !f.contains(Features::EVENT_IDX),
        "EVENT_IDX is never negotiated"
    );
    assert_eq!(
        dev.transport().get_status(),
        DeviceStatus::ACKNOWLEDGE
            | DeviceStatus::DRIVER
            | DeviceStatus::FEATURES_OK
            | DeviceStatus::DRIVER_OK
    );

    // Small requests queued deep, then the largest at the driver's full depth.
    for (offset, size, bs, qd, seed) in [
        (64 << 10, 256 << 10, 4096, 8, 3),
        (512 << 10, 512 << 10, 64 << 10, 32, 4),
    ] {
        let w = phase(Phase::WritePattern, offset, size, bs, qd, seed);
        let r = workload::run(&mut dev, &w, &mut Patience::new(0)).expect("config");
        assert!(r.passed(), "{r}");
        assert_eq!(r.writes, size / u64::from(bs), "{r}");
        assert_eq!(r.flushes, 1, "{r}");
        assert_eq!(
            u64::from(r.max_in_flight),
            u64::from(qd).min(size / u64::from(bs)),
            "{r}"
        );
        let v = phase(Phase::VerifyPattern, offset, size, bs, qd, seed);
        let r = workload::run(&mut dev, &v, &mut Patience::new(0)).expect("config");
        assert!(r.passed() && r.mismatches == 0, "{r}");
        assert_eq!(r.bytes_read, size, "{r}");
        // The host finds the pattern in the image.
        let img = rig.image.read();
        let region = &img[offset as usize..(offset + size) as usize];
        assert_eq!(pv_drivers::pattern::check(seed, offset, region), None);
    }
    let s = dev.stats();
    assert_eq!(s.protocol_errors, 0, "{s:?}");
    assert_eq!(s.flushes, 2, "{s:?}");
    assert_eq!(s.completions, s.reads + s.writes + s.flushes, "{s:?}");
    assert!(s.notifies > 0 && s.isr_reads > 0, "{s:?}");
    let m = model_stats(&rig);
    assert_eq!(m["device"]["writes"], s.writes, "{m}");
    assert_eq!(m["device"]["reads"], s.reads, "{m}");
    assert_eq!(m["device"]["flushes"], 2, "{m}");
    assert_eq!(m["device"]["bad_chains"], 0, "{m}");
    // Every notify reached the model; each batch raised INTx, and the ISR read of the
    // poll lowered it.
    assert_eq!(m["transport"]["notifies"], s.notifies, "{m}");
    assert!(rig.irq.rises() > 0);
    assert!(!rig.irq.asserted());
    // Multi-buffer requests went through indirect tables, bounced from the heap into
    // RAM and all returned.
    let (bounced, out) = virtio_hal::bounces();
    assert!(bounced >= s.completions, "{bounced} bounces");
    assert_eq!(out, 0);
    assert_eq!(dev.in_flight(), 0);
}

/// The device devmgr builds has an MSI-X capability: unless the caller turns MSI-X on
/// (the kernel with `virtio.msix=off` does not), the driver leaves it off and every
/// interrupt comes as INTx through ISR.
#[test]
fn an_msix_capable_device_is_driven_through_intx_unless_msix_is_turned_on() {
    let msi = Arc::new(Messages::default());
    let rig = rig_with("msix", false, false, Some(msi.clone()));
    assert!(
        caps(&rig).len() >= 4,
        "the vendor capabilities are all found"
    );
    let mut dev = driver(&rig);
    for (p, seed) in [(Phase::WritePattern, 5), (Phase::VerifyPattern, 5)] {
        let c = phase(p, 0, 128 << 10, 16 << 10, 4, seed);
        let r = workload::run(&mut dev, &c, &mut Patience::new(0)).expect("config");
        assert!(r.passed(), "{r}");
    }
    let m = model_stats(&rig);
    assert_eq!(m["transport"]["msix_messages"], 0, "{m}");
    assert!(msi.sent().is_empty());
    assert!(rig.irq.rises() > 0);
    assert!(!rig.irq.asserted());
    assert!(dev.stats().isr_reads > 0);
}

/// The model's counters of MMIO reads (each an exit in a VM).
fn mmio_reads(m: &serde_json::Value) -> u64 {
    m["transport"]["exits"]["mmio_read"].as_u64().unwrap()
}

/// With MSI-X turned on, the shim's virtio-blk interrupts by the message the driver
/// programmed, never through INTx, and the driver reads no ISR byte: the device's
/// MMIO reads stay what the set-up made through a whole workload.
#[test]
fn with_msix_the_blk_driver_takes_messages_and_reads_no_isr() {
    let msi = Arc::new(Messages::default());
    let rig = rig_with("msix-on", false, false, Some(msi.clone()));
    let t = transport(&rig);
    // One vector per queue and one for configuration changes.
    assert_eq!(t.msix_available(), Ok(2));
    t.enable_msix(
        &mut ModelConfig(rig.dev.clone()),
        BDF,
        MSI_ADDRESS,
        MSI_DATA,
    )
    .expect("MSI-X on");
    let mut dev = VirtioBlk::<TestHal, _>::new(t, VirtioBlkConfig::default()).expect("init");
    assert!(dev.transport().msix_active());
    assert!(!dev.transport().msix_refused());
    let reads = mmio_reads(&model_stats(&rig));
    for (p, seed) in [(Phase::WritePattern, 6), (Phase::VerifyPattern, 6)] {
        let c = phase(p, 0, 256 << 10, 16 << 10, 4, seed);
        let r = workload::run(&mut dev, &c, &mut Patience::new(0)).expect("config");
        assert!(r.passed(), "{r}");
    }
    let m = model_stats(&rig);
    let sent = msi.sent();
    // One message per batch the model served (each notify here).
    assert!(!sent.is_empty(), "{m}");
    assert_eq!(m["transport"]["notifies"], sent.len() as u64, "{m}");
    assert!(
        sent.iter().all(|&m| m == (MSI_ADDRESS, MSI_DATA)),
        "{sent:x?}"
    );
    assert_eq!(m["transport"]["msix_messages"], sent.len() as u64, "{m}");
    assert_eq!(m["transport"]["interrupts"], sent.len() as u64, "{m}");
    assert_eq!(mmio_reads(&m), reads, "no register read per interrupt: {m}");
    let s = dev.stats();
    assert_eq!((s.isr_reads, dev.transport().isr_reads()), (0, 0), "{s:?}");
    assert_eq!(s.protocol_errors, 0, "{s:?}");
    assert_eq!(rig.irq.rises(), 0, "INTx stays off");
}

/// MSI-X capabilities that lie (through configuration space, as [`CfgLiar`] tells
/// them) leave the device on INTx, never a panic: a table or pending-bit array past
/// BAR 0, a BIR naming no memory BAR, a table size the BAR cannot hold. A device that
/// refuses the queue's vector (reads back `NO_VECTOR`) is reported, and turning MSI-X
/// off puts it back on INTx. A table size field of 0 (one entry: the encoding is
/// entries - 1) is enough for the one shared vector.
#[test]
fn hostile_msix_capabilities_fall_back_to_intx() {
    use hw_devices::virtio::transport::MsixError;
    let msi = Arc::new(Messages::default());
    let rig = rig_with("msix-lies", false, false, Some(msi.clone()));
    let mut cfg = ModelConfig(rig.dev.clone());
    let mut at = cfg.read8(BDF, 0x34);
    while cfg.read8(BDF, at) != 0x11 {
        at = cfg.read8(BDF, at + 1);
        assert_ne!(at, 0, "the model has an MSI-X capability");
    }
    let header = cfg.read32(BDF, at);
    let control = header & 0xffff_0000;
    // The capability's first three dwords: ID and next kept, then the lies.
    let first = |control_field: u32, table: u32, pba: u32| {
        vec![
            (at, header & 0xffff | control_field << 16),
            (at + 4, table),
            (at + 8, pba),
        ]
    };
    let size = |entries: u32| entries - 1;
    let bar0 = 0x8000u32;
    for (dwords, why) in [
        (
            first(size(2), bar0 - 16, 0x5000),
            MsixError::TableOutsideBar,
        ),
        (first(size(2), bar0, 0x5000), MsixError::TableOutsideBar),
        (
            first(size(2048), 0x4000, 0x5000),
            MsixError::TableOutsideBar,
        ),
        (first(size(2), 0x4000, bar0), MsixError::PbaOutsideBar),
        (
            first(size(2), 0x4000 | 1, 0x5000),
            MsixError::NotMemoryBar(1),
        ),
        (
            first(size(2), 0x4000, 0x5000 | 5),
            MsixError::NotMemoryBar(5),
        ),
        (
            first(size(2), 0x4000 | 7, 0x5000),
            MsixError::NotMemoryBar(7),
        ),
    ] {
        let mut liar = CfgLiar {
            inner: ModelConfig(rig.dev.clone()),
            bytes: Vec::new(),
            dwords,
        };
        let t = probe_with(&rig, &mut liar, |r| r).expect("the virtio structures are fine");
        assert_eq!(t.msix_available(), Err(why));
        assert_eq!(
            t.enable_msix(&mut liar, BDF, MSI_ADDRESS, MSI_DATA),
            Err(why)
        );
        let rises = rig.irq.rises();
        let mut dev = VirtioBlk::<TestHal, _>::new(t, VirtioBlkConfig::default()).expect("init");
        assert!(!dev.transport().msix_active());
        let done = one(&mut dev, BlockOp::Read, 0, 8, &[]).expect("INTx works");
        assert_eq!(done.len(), 1, "{why:?}");
        assert!(rig.irq.rises() > rises, "{why:?}");
        assert!(dev.stats().isr_reads > 0);
    }
    assert_eq!(
        cfg.read32(BDF, at) & 0xffff_0000,
        control,
        "MSI-X never turned on"
    );
    assert!(msi.sent().is_empty());

    // The device refuses the vector: reported; MSI-X off again, INTx carries on.
    let t = probe_with(&rig, &mut cfg, |r| {
        let mut l = MmioLiar::new(r);
        l.refuse_vector = true;
        l
    })
    .expect("probe");
    t.enable_msix(&mut cfg, BDF, MSI_ADDRESS, MSI_DATA)
        .expect("on");
    let mut dev = VirtioBlk::<TestHal, _>::new(t, VirtioBlkConfig::default()).expect("init");
    assert!(dev.transport().msix_refused() && !dev.transport().msix_active());
    dev.transport().disable_msix(&mut cfg, BDF);
    let rises = rig.irq.rises();
    let done = one(&mut dev, BlockOp::Read, 0, 8, &[]).expect("INTx works");
    assert_eq!(done.len(), 1);
    assert!(rig.irq.rises() > rises);
    assert!(msi.sent().is_empty());
    drop(dev);

    // One entry (size field 0) is all the driver needs.
    let mut liar = CfgLiar {
        inner: ModelConfig(rig.dev.clone()),
        bytes: Vec::new(),
        dwords: first(0, 0x4000, 0x5000),
    };
    let t = probe_with(&rig, &mut liar, |r| r).expect("probe");
    assert_eq!(t.msix_available(), Ok(1));
    t.enable_msix(&mut liar, BDF, MSI_ADDRESS, MSI_DATA)
        .expect("on");
    let mut dev = VirtioBlk::<TestHal, _>::new(t, VirtioBlkConfig::default()).expect("init");
    assert!(dev.transport().msix_active());
    let rises = rig.irq.rises();
    one(&mut dev, BlockOp::Read, 0, 8, &[]).expect("read");
    assert_eq!(msi.sent(), [(MSI_ADDRESS, MSI_DATA)]);
    assert_eq!(rig.irq.rises(), rises);
}

#[test]
fn read_only_disks_and_device_errors() {
    // The device says read-only: the driver refuses writes itself.
    let rig1 = rig("ro", true, false);
    let mut dev = driver(&rig1);
    assert!(dev.info().read_only);
    assert_eq!(
        dev.submit(BlockOp::Write, 0, 1, &[1; 512]),
        Err(BlockError::Unsupported)
    );
    let done = one(&mut dev, BlockOp::Read, 0, 1, &[]).unwrap();
    assert_eq!(done[0].result, Ok(()));
    drop(dev);

    // A read-only image behind a device that hides it: the model answers IOERR, that
    // request fails alone and the driver goes on.
    let rig2 = rig("ro-hidden", true, true);
    let mut dev = driver(&rig2);
    assert!(!dev.info().read_only);
    let done = one(&mut dev, BlockOp::Write, 8, 2, &[0x5a; 1024]).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].result, Err(BlockError::Io));
    assert!(done[0].data.is_empty());
    let done = one(&mut dev, BlockOp::Read, 8, 2, &[]).unwrap();
    assert_eq!(done[0].result, Ok(()));
    assert_eq!(done[0].data, vec![0; 1024]);
    assert!(rig2.image.read().iter().all(|&b| b == 0));
    assert_eq!(dev.stats().io_errors, 1);
    assert_eq!(dev.stats().protocol_errors, 0);

    // UNSUPP and IOERR in the status byte are answers, not lies.
    for (status, want) in [(2, BlockError::Unsupported), (1, BlockError::Io)] {
        *rig2.lie.lock().unwrap() = Lie::Status(status);
        let done = one(&mut dev, BlockOp::Read, 0, 1, &[]).unwrap();
        assert_eq!(done[0].result, Err(want));
    }
    assert_eq!(dev.stats().protocol_errors, 0);
}

#[test]
fn malformed_requests_never_reach_the_device() {
    let rig = rig("malformed", false, false);
    let mut dev = driver(&rig);
    let sectors = dev.info().sectors;
    for (op, sector, count, data, want) in [
        (
            BlockOp::Read,
            sectors - 1,
            2,
            &[][..],
            BlockError::BadRequest,
        ),
        (BlockOp::Read, 0, 129, &[], BlockError::BadRequest),
        (BlockOp::Read, 0, 0, &[], BlockError::BadRequest),
        (BlockOp::Write, 0, 2, &[0; 512], BlockError::BadRequest),
        (BlockOp::Flush, 0, 1, &[], BlockError::BadRequest),
    ] {
        assert_eq!(dev.submit(op, sector, count, data), Err(want), "{op:?}");
    }
    dev.kick();
    let m = model_stats(&rig);
    assert_eq!(m["transport"]["notifies"], 0, "{m}");
    // A full queue is Busy, and frees up when polled.
    for i in 0..32 {
        dev.submit(BlockOp::Read, i, 1, &[]).expect("queue room");
    }
    assert_eq!(dev.submit(BlockOp::Read, 0, 1, &[]), Err(BlockError::Busy));
    dev.kick();
    let mut done = Vec::new();
    assert_eq!(dev.poll(&mut done), Ok(32));
    assert!(done.iter().all(|c| c.result.is_ok() && c.data.len() == 512));
    assert!(dev.submit(BlockOp::Read, 0, 1, &[]).is_ok());
}

/// Runs one request (two for the lies that need a neighbour) against a device telling
/// `lie`; the driver must stop with `Protocol`, reset the device and refuse more.
fn lied_to(name: &str, lie: Lie, op: BlockOp) -> hw_devices::virtio::blk::VirtioBlkStats {
    let rig = rig(name, false, false);
    let mut dev = driver(&rig);
    *rig.lie.lock().unwrap() = lie;
    let data = vec![7u8; 4096];
    let payload: &[u8] = if op == BlockOp::Write { &data } else { &[] };
    let count = if op == BlockOp::Flush { 0 } else { 8 };
    let requests = if lie == Lie::RepeatFirst { 2 } else { 1 };
    for _ in 0..requests {
        dev.submit(op, 0, count, payload).expect("submit");
    }
    dev.kick();
    let mut done = Vec::new();
    assert_eq!(dev.poll(&mut done), Err(BlockError::Protocol), "{lie:?}");
    // RepeatFirst: the first of the two completes before the repeat is seen.
    assert!(done.len() < requests, "{lie:?}: {done:?}");
    assert_eq!(dev.poll(&mut done), Err(BlockError::Protocol));
    assert_eq!(
        dev.submit(BlockOp::Read, 0, 1, &[]),
        Err(BlockError::Protocol)
    );
    // Reset (and marked failed): the device no longer owns the rings.
    assert_eq!(
        dev.transport().get_status(),
        DeviceStatus::FAILED,
        "{lie:?}"
    );
    let m = model_stats(&rig);
    assert!(m["transport"]["resets"].as_u64().unwrap() >= 1, "{m}");
    let s = dev.stats();
    assert_eq!(s.protocol_errors, 1, "{lie:?}: {s:?}");
    drop(dev);
    s
}

#[test]
fn a_lying_used_ring_stops_the_driver_without_a_panic() {
    let s = lied_to("id", Lie::WrongId(77), BlockOp::Read);
    assert_eq!(s.bad_ids, 1);
    // Beyond the queue: never an index into the driver's tables.
    let s = lied_to(
        "id-far",
        Lie::WrongId(QUEUE_SIZE as u32 + 3),
        BlockOp::Write,
    );
    assert_eq!(s.bad_ids, 1);
    let s = lied_to("id-huge", Lie::WrongId(u32::MAX), BlockOp::Flush);
    assert_eq!(s.bad_ids, 1);
    // A length beyond what the request let the device write (4 KiB + status).
    let s = lied_to("len", Lie::Length(4097 + 1), BlockOp::Read);
    assert_eq!(s.bad_lengths, 1);
    let s = lied_to("len-write", Lie::Length(2), BlockOp::Write);
    assert_eq!(s.bad_lengths, 1);
    let s = lied_to("len-huge", Lie::Length(u32::MAX), BlockOp::Read);
    assert_eq!(s.bad_lengths, 1);
    // The same request completed twice.
    let s = lied_to("dup", Lie::Duplicate, BlockOp::Read);
    assert_eq!(s.used_ahead, 1);
    let s = lied_to("repeat", Lie::RepeatFirst, BlockOp::Read);
    assert_eq!(s.bad_ids, 1);
    // Completions for requests never made.
    let s = lied_to("ahead", Lie::Ahead(5), BlockOp::Read);
    assert_eq!(s.used_ahead, 1);
    let s = lied_to("ahead-wrap", Lie::Ahead(0x8000), BlockOp::Read);
    assert_eq!(s.used_ahead, 1);
    // Status bytes that are none of OK, IOERR, UNSUPP.
    for st in [3u8, 7, 0xff] {
        let s = lied_to("status", Lie::Status(st), BlockOp::Read);
        assert_eq!(s.bad_status, 1, "{st}");
    }
}

#[test]
fn a_device_that_never_answers_blocks_nothing() {
    let rig = rig("silent", false, false);
    let mut dev = driver(&rig);
    *rig.lie.lock().unwrap() = Lie::Silent;
    let w = phase(Phase::WritePattern, 0, 64 << 10, 4096, 4, 1);
    let mut patience = Patience::new(50);
    let r = workload::run(&mut dev, &w, &mut patience).expect("config");
    assert!(!r.passed(), "{r}");
    assert_eq!(r.errors, 0, "{r}");
    assert_eq!(r.abandoned, 16 + 1, "{r}");
    assert_eq!(patience.waits, 51);
    assert_eq!(dev.in_flight(), 4);
    assert!(rig.image.read().iter().all(|&b| b == 0));
    // Dropping the driver resets the device before its memory goes back.
    drop(dev);
    assert_eq!(model_stats(&rig)["transport"]["resets"], 1);
}

/// Configuration space that lies about the capabilities.
struct CfgLiar {
    inner: ModelConfig,
    /// (offset, value) bytes read differently.
    bytes: Vec<(u8, u8)>,
    /// (offset, value) dwords read differently.
    dwords: Vec<(u8, u32)>,
}

impl ConfigAccess for CfgLiar {
    fn read32(&mut self, bdf: Bdf, offset: u8) -> u32 {
        let at = offset & 0xfc;
        if let Some(&(_, v)) = self.dwords.iter().find(|(o, _)| *o == at) {
            return v;
        }
        let mut v = self.inner.read32(bdf, at).to_le_bytes();
        for (o, b) in &self.bytes {
            if o & 0xfc == at {
                v[usize::from(o & 3)] = *b;
            }
        }
        u32::from_le_bytes(v)
    }
    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        self.inner.write32(bdf, offset, value)
    }
    fn write16(&mut self, bdf: Bdf, offset: u8, value: u16) {
        self.inner.write16(bdf, offset, value)
    }
}

/// The offsets of the model's vendor capabilities, by `cfg_type`.
fn caps(rig: &Rig) -> Vec<(u8, u8)> {
    let mut cfg = ModelConfig(rig.dev.clone());
    let mut out = Vec::new();
    let mut ptr = cfg.read8(BDF, 0x34);
    while ptr != 0 {
        if cfg.read8(BDF, ptr) == 0x09 {
            out.push((cfg.read8(BDF, ptr + 3), ptr));
        }
        ptr = cfg.read8(BDF, ptr + 1);
    }
    out
}

#[test]
fn hostile_capability_lists_are_refused() {
    let rig = rig("caps", false, false);
    let found = caps(&rig);
    let at = |t: u8| found.iter().find(|(k, _)| *k == t).expect("cap").1;
    let first = ModelConfig(rig.dev.clone()).read8(BDF, 0x34);
    let attempt = |bytes: Vec<(u8, u8)>, dwords: Vec<(u8, u32)>| {
        let mut cfg = CfgLiar {
            inner: ModelConfig(rig.dev.clone()),
            bytes,
            dwords,
        };
        probe_with(&rig, &mut cfg, |r| r).map(|_| ())
    };
    assert_eq!(attempt(vec![], vec![]), Ok(()));
    // No capability list: a legacy-only device.
    assert_eq!(
        attempt(vec![(0x06, 0)], vec![]),
        Err(ProbeError::NoCapabilities)
    );
    // A list that loops on its first entry: the walk ends, the rest is missing.
    assert!(matches!(
        attempt(vec![(first + 1, first)], vec![]),
        Err(ProbeError::Missing(_))
    ));
    // A pointer into the header, or past the space.
    assert!(matches!(
        attempt(vec![(0x34, 0x10)], vec![]),
        Err(ProbeError::Missing(_))
    ));
    assert!(matches!(
        attempt(vec![(0x34, 0xfc)], vec![]),
        Err(ProbeError::Missing(_))
    ));
    // The common configuration reaching past its BAR, in a BAR that does not exist,
    // misaligned, too short.
    let common = at(1);
    for (bytes, dwords) in [
        (vec![], vec![(common + 12, 0x10_0000)]),
        (vec![(common + 4, 5)], vec![]),
        (vec![], vec![(common + 8, 2)]),
        (vec![], vec![(common + 12, 0x10)]),
        (vec![], vec![(common + 8, 0xffff_fff0)]),
    ] {
        assert_eq!(
            attempt(bytes, dwords.clone()),
            Err(ProbeError::BadStructure(1)),
            "{dwords:x?}"
        );
    }
    // A notify capability too short to hold its multiplier is not one.
    let notify = at(2);
    assert_eq!(
        attempt(vec![(notify + 2, 16)], vec![]),
        Err(ProbeError::Missing(2))
    );
    // No device configuration: the probe works, the block driver cannot read its size.
    let device = at(4);
    let mut cfg = CfgLiar {
        inner: ModelConfig(rig.dev.clone()),
        bytes: vec![(device + 3, 9)],
        dwords: vec![],
    };
    let t = probe_with(&rig, &mut cfg, |r| r).expect("probe without device config");
    assert!(matches!(
        VirtioBlk::<TestHal, _>::new(t, VirtioBlkConfig::default()),
        Err(InitError::Config(_))
    ));
}

/// Registers that lie.
struct MmioLiar<M> {
    inner: M,
    /// `queue_notify_off` reads this.
    notify_off: Option<u16>,
    /// `config_generation` changes on every read.
    flipping_generation: Option<u8>,
    /// `device_status` never reads 0.
    stuck_status: bool,
    /// `device_status` never shows FEATURES_OK.
    refuse_features: bool,
    /// `queue_msix_vector` reads `NO_VECTOR` (the device could not allocate it).
    refuse_vector: bool,
}

impl<M> MmioLiar<M> {
    fn new(inner: M) -> Self {
        Self {
            inner,
            notify_off: None,
            flipping_generation: None,
            stuck_status: false,
            refuse_features: false,
            refuse_vector: false,
        }
    }
}

impl<M: Mmio> Mmio for MmioLiar<M> {
    fn read32(&mut self, offset: u32) -> u32 {
        self.inner.read32(offset)
    }
    fn write32(&mut self, offset: u32, value: u32) {
        self.inner.write32(offset, value)
    }
    fn read16(&mut self, offset: u32) -> u16 {
        match (offset, self.notify_off) {
            (common::QUEUE_NOTIFY_OFF, Some(v)) => v,
            (common::QUEUE_MSIX_VECTOR, _) if self.refuse_vector => 0xffff,
            _ => self.inner.read16(offset),
        }
    }
    fn write16(&mut self, offset: u32, value: u16) {
        self.inner.write16(offset, value)
    }
    fn read8(&mut self, offset: u32) -> u8 {
        let v = self.inner.read8(offset);
        match offset {
            common::CONFIG_GENERATION => match &mut self.flipping_generation {
                Some(g) => {
                    *g = g.wrapping_add(1);
                    *g
                }
                None => v,
            },
            common::DEVICE_STATUS if self.stuck_status => v | 0x80,
            common::DEVICE_STATUS if self.refuse_features => v & !8,
            _ => v,
        }
    }
    fn write8(&mut self, offset: u32, value: u8) {
        self.inner.write8(offset, value)
    }
}

#[test]
fn lying_registers_fail_the_bring_up_and_never_hang() {
    let attempt = |name: &str, set: &dyn Fn(&mut MmioLiar<PciRegion<VirtioPci>>)| {
        let rig = rig(name, false, false);
        let t = probe_with(&rig, &mut ModelConfig(rig.dev.clone()), |r| {
            let mut l = MmioLiar::new(r);
            set(&mut l);
            l
        })
        .expect("probe");
        let r = VirtioBlk::<TestHal, _>::new(t, VirtioBlkConfig::default()).map(|_| ());
        // Whatever failed, the device was left reset and failed, its queue unused.
        let m = model_stats(&rig);
        assert_eq!(m["device"]["reads"], 0, "{m}");
        r
    };
    // The notify address for the queue would be far outside the notify structure.
    assert_eq!(
        attempt("notify", &|l| l.notify_off = Some(0x7fff)),
        Err(InitError::Transport)
    );
    // A generation that never settles ends virtio-drivers' read_consistent loop.
    assert_eq!(
        attempt("generation", &|l| l.flipping_generation = Some(0)),
        Err(InitError::Transport)
    );
    // A reset that never completes.
    assert_eq!(
        attempt("stuck", &|l| l.stuck_status = true),
        Err(InitError::Transport)
    );
    assert_eq!(
        attempt("features", &|l| l.refuse_features = true),
        Err(InitError::FeaturesRefused)
    );
    // Bad configurations never touch the device.
    let rig = rig("config", false, false);
    for c in [
        VirtioBlkConfig {
            queue_depth: 0,
            ..Default::default()
        },
        VirtioBlkConfig {
            queue_depth: QUEUE_SIZE + 1,
            ..Default::default()
        },
        VirtioBlkConfig {
            max_transfer: 1000,
            ..Default::default()
        },
    ] {
        assert_eq!(
            VirtioBlk::<TestHal, _>::new(transport(&rig), c).map(|_| ()),
            Err(InitError::BadConfig)
        );
    }
}

// ---- virtio-net

/// What the fake NIC does to the next frame it hands the driver, or to the next
/// transmit completion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum NetLie {
    #[default]
    Honest,
    /// The used length becomes this.
    Length(u32),
    /// The used id becomes this.
    WrongId(u32),
    /// The used index runs this far ahead.
    Ahead(u16),
}

/// The fake device's state, shared with the test (which hands frames to the driver
/// through [`NetState::deliver`] while the transport owns the device).
#[derive(Default)]
struct NetState {
    mac: [u8; 6],
    /// `VIRTIO_NET_F_MAC` offered.
    offer_mac: bool,
    status: u16,
    queues: Vec<Queue>,
    mem: Option<GuestMemory>,
    /// Frames the driver sent, header stripped.
    sent: Vec<Vec<u8>>,
    /// Lie about the next transmit completion.
    tx_lie: NetLie,
    /// Leave transmitted frames in the ring until [`NetState::complete_tx`].
    hold_tx: bool,
}

/// Bytes of `virtio_net_hdr` with `VERSION_1`.
const NET_HDR: usize = 12;

impl NetState {
    /// The driver's `VIRTQ_AVAIL_F_NO_INTERRUPT` on `queue`: whether it asks for
    /// interrupts there.
    fn wants_interrupts(&self, queue: usize) -> bool {
        let mem = self.mem.as_ref().expect("activated");
        let flags: u16 = mem
            .read_obj(GuestAddress(self.queues[queue].avail_ring()))
            .unwrap();
        flags & 1 == 0
    }

    /// Takes every frame the driver made available on the transmit queue.
    fn complete_tx(&mut self) {
        let mem = self.mem.clone().expect("activated");
        while let Some(chain) = self.queues[1].pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let mut frame = Vec::new();
            for d in chain {
                let mut b = vec![0u8; d.len() as usize];
                mem.read_slice(&mut b, GuestAddress(d.addr().0)).unwrap();
                frame.extend_from_slice(&b);
            }
            self.sent.push(frame.split_off(NET_HDR));
            self.queues[1].add_used(&mem, head, 0).unwrap();
            let lie = std::mem::take(&mut self.tx_lie);
            self.lie(1, lie);
        }
    }

    fn lie(&self, queue: usize, lie: NetLie) {
        let mem = self.mem.as_ref().expect("activated");
        let q = &self.queues[queue];
        let used = q.used_ring();
        let idx_at = GuestAddress(used + 2);
        let idx: u16 = mem.read_obj(idx_at).unwrap();
        let elem = GuestAddress(used + 4 + u64::from(idx.wrapping_sub(1) % q.size()) * 8);
        match lie {
            NetLie::Honest => {}
            NetLie::Length(len) => mem.write_obj(len, elem.unchecked_add(4)).unwrap(),
            NetLie::WrongId(id) => mem.write_obj(id, elem).unwrap(),
            NetLie::Ahead(n) => mem.write_obj(idx.wrapping_add(n), idx_at).unwrap(),
        }
    }

    /// Puts `frame` (after a zero header) into the next receive buffer; `used` is the
    /// length to report (header + frame when `None`). False if no buffer was posted.
    fn deliver(&mut self, frame: &[u8], lie: NetLie) -> bool {
        // Reset by the driver: nothing to deliver into.
        let Some(mem) = self.mem.clone() else {
            return false;
        };
        let Some(chain) = self.queues[0].pop_descriptor_chain(&mem) else {
            return false;
        };
        let head = chain.head_index();
        let desc = chain.clone().next().expect("one buffer");
        assert!(desc.is_write_only());
        let mut bytes = vec![0u8; NET_HDR];
        bytes.extend_from_slice(frame);
        bytes.truncate(desc.len() as usize);
        mem.write_slice(&bytes, GuestAddress(desc.addr().0))
            .unwrap();
        self.queues[0]
            .add_used(&mem, head, bytes.len() as u32)
            .unwrap();
        self.lie(0, lie);
        true
    }
}

/// A virtio-net device just big enough to carry frames: what the driver transmits is
/// collected, what the test delivers lands in the posted receive buffers.
struct FakeNet(Arc<Mutex<NetState>>);

impl VirtioDevice for FakeNet {
    fn device_type(&self) -> u16 {
        1
    }
    fn class(&self) -> (u8, u8, u8) {
        (2, 0, 0)
    }
    fn features(&self) -> u64 {
        let mac = if self.0.lock().unwrap().offer_mac {
            1 << 5
        } else {
            0
        };
        // STATUS, INDIRECT_DESC.
        mac | 1 << 16 | 1 << 28
    }
    fn num_queues(&self) -> u16 {
        2
    }
    fn queue_max_size(&self) -> u16 {
        256
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let s = self.0.lock().unwrap();
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&s.mac);
        c[6..8].copy_from_slice(&s.status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&1500u16.to_le_bytes());
        for (i, d) in data.iter_mut().enumerate() {
            *d = c.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _features: u64, queues: Vec<Queue>, mem: GuestMemory) {
        let mut s = self.0.lock().unwrap();
        s.queues = queues;
        s.mem = Some(mem);
    }
    fn notify(&mut self, index: u16) -> bool {
        let mut s = self.0.lock().unwrap();
        if index != 1 || s.mem.is_none() || s.hold_tx {
            return false;
        }
        s.complete_tx();
        true
    }
    fn reset(&mut self) {
        let mut s = self.0.lock().unwrap();
        s.queues.clear();
        s.mem = None;
    }
}

const NIC_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

struct NetRig {
    dev: Dev,
    state: Arc<Mutex<NetState>>,
}

fn net_rig(configure: impl FnOnce(&mut NetState)) -> NetRig {
    let ram = Ram::new(RAM_MIB);
    let mem = ram.mem.clone();
    virtio_hal::install(ram);
    let mut s = NetState {
        mac: NIC_MAC,
        offer_mac: true,
        status: 1,
        ..Default::default()
    };
    configure(&mut s);
    let state = Arc::new(Mutex::new(s));
    let mut pci = VirtioPci::new(Box::new(FakeNet(state.clone())), LevelLog::new(), mem);
    pci.config_write(
        4,
        &(command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes(),
    );
    NetRig {
        dev: Arc::new(Mutex::new(pci)),
        state,
    }
}

type Nic = VirtioNet<TestHal, PciRegion<VirtioPci>>;

fn nic(rig: &NetRig) -> Result<Nic, InitError> {
    let mut cfg = ModelConfig(rig.dev.clone());
    let f = pci::read_function(&mut cfg, BDF).expect("function");
    let t = PciTransport::probe(&mut cfg, &f, |slot, _| {
        Some(PciRegion::new(rig.dev.clone(), usize::from(slot), 0))
    })
    .expect("probe");
    VirtioNet::new(t, VirtioNetConfig::default())
}

/// An Ethernet frame of `len` bytes numbered `n`.
fn frame(n: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| (n as usize * 31 + i * 7) as u8).collect()
}

fn received(nic: &mut Nic) -> Result<Vec<Vec<u8>>, NetError> {
    let mut got = Vec::new();
    while nic.receive(&mut |f| got.push(f.to_vec()))? {}
    Ok(got)
}

#[test]
fn the_net_driver_carries_frames_both_ways() {
    let rig = net_rig(|_| {});
    let mut nic = nic(&rig).expect("init");
    assert_eq!(nic.info().mac, NIC_MAC);
    assert_eq!(nic.info().max_frame, MAX_FRAME);
    assert!(nic.link_up());
    // More frames than either queue has entries: buffers are reaped and reposted.
    for n in 0..300u32 {
        let f = frame(n, 60 + (n as usize * 13) % (MAX_FRAME - 59));
        assert!(nic.can_transmit(f.len()));
        nic.transmit(f.len(), &mut |b| b.copy_from_slice(&f))
            .expect("transmit");
        nic.kick();
        nic.poll().expect("poll");
        assert!(rig.state.lock().unwrap().deliver(&f, NetLie::Honest), "{n}");
        assert_eq!(received(&mut nic).unwrap(), vec![f], "{n}");
    }
    let sent = std::mem::take(&mut rig.state.lock().unwrap().sent);
    assert_eq!(sent.len(), 300);
    for (n, f) in sent.iter().enumerate() {
        assert_eq!(*f, frame(n as u32, f.len()), "{n}");
    }
    // A burst fills every posted buffer; the next one finds none until the driver
    // takes them.
    let mut burst = 0;
    while rig
        .state
        .lock()
        .unwrap()
        .deliver(&frame(burst, 100), NetLie::Honest)
    {
        burst += 1;
    }
    assert_eq!(burst as usize, RX_QUEUE_SIZE);
    assert_eq!(received(&mut nic).unwrap().len(), burst as usize);
    assert!(
        rig.state
            .lock()
            .unwrap()
            .deliver(&frame(0, 100), NetLie::Honest)
    );
    // Bad frames: bad length for the driver's limits, not lies.
    assert!(nic.transmit(0, &mut |_| {}).is_err());
    assert!(nic.transmit(MAX_FRAME + 1, &mut |_| {}).is_err());
    let s = nic.stats();
    assert_eq!(
        (s.tx_frames, s.rx_frames),
        (300, 300 + burst as u64),
        "{s:?}"
    );
    assert_eq!(s.protocol_errors, 0, "{s:?}");
    assert_eq!(virtio_hal::bounces().1, 0);
}

#[test]
fn short_and_oversized_frames_are_dropped_and_counted() {
    let rig = net_rig(|_| {});
    let mut nic = nic(&rig).expect("init");
    let mut st = rig.state.lock().unwrap();
    // Shorter than the header; header but no Ethernet header; longer than a frame.
    assert!(st.deliver(&[], NetLie::Length(5)));
    assert!(st.deliver(&frame(1, 10), NetLie::Honest));
    assert!(st.deliver(&frame(2, MAX_FRAME + 20), NetLie::Honest));
    assert!(st.deliver(&frame(3, 64), NetLie::Honest));
    drop(st);
    assert_eq!(received(&mut nic).unwrap(), vec![frame(3, 64)]);
    let s = nic.stats();
    assert_eq!((s.rx_runts, s.rx_oversize, s.rx_frames), (2, 1, 1), "{s:?}");
    assert_eq!(s.protocol_errors, 0);
    // The buffers went back: the device can fill the whole ring again.
    let mut n = 0;
    while rig
        .state
        .lock()
        .unwrap()
        .deliver(&frame(n, 64), NetLie::Honest)
    {
        n += 1;
    }
    assert_eq!(n as usize, RX_QUEUE_SIZE);
}

#[test]
fn a_lying_nic_stops_the_driver_without_a_panic() {
    let lied = |rx: Option<NetLie>, tx: Option<NetLie>| {
        let rig = net_rig(|_| {});
        let mut nic = nic(&rig).expect("init");
        let r = if let Some(lie) = rx {
            assert!(rig.state.lock().unwrap().deliver(&frame(0, 64), lie));
            received(&mut nic).map(|_| ())
        } else {
            rig.state.lock().unwrap().tx_lie = tx.unwrap();
            nic.transmit(64, &mut |b| b.fill(1)).expect("transmit");
            nic.kick();
            nic.poll()
        };
        assert_eq!(r, Err(NetError::Protocol), "{rx:?} {tx:?}");
        assert_eq!(nic.poll(), Err(NetError::Protocol));
        assert_eq!(nic.transmit(64, &mut |_| {}), Err(NetError::Protocol));
        assert!(!nic.can_transmit(64));
        assert_eq!(nic.transport().get_status(), DeviceStatus::FAILED);
        nic.stats()
    };
    // A length beyond the 2 KiB buffer: virtio-drivers would hand it out to slice with.
    for len in [2049, 65535, u32::MAX] {
        let s = lied(Some(NetLie::Length(len)), None);
        assert_eq!(s.bad_lengths, 1, "{len}");
    }
    // Every receive buffer is posted, so only an id beyond the queue is no buffer's
    // (the device may use posted buffers in any order).
    for id in [RX_QUEUE_SIZE as u32 + 1, u32::MAX] {
        let s = lied(Some(NetLie::WrongId(id)), None);
        assert_eq!(s.bad_ids, 1, "{id}");
    }
    let s = lied(Some(NetLie::Ahead(RX_QUEUE_SIZE as u16)), None);
    assert_eq!(s.used_ahead, 1);
    // On the transmit queue: a length the device could not have written, an id never
    // posted, an index ahead.
    let s = lied(None, Some(NetLie::Length(4000)));
    assert_eq!(s.bad_lengths, 1);
    let s = lied(None, Some(NetLie::WrongId(5)));
    assert_eq!(s.bad_ids, 1);
    let s = lied(None, Some(NetLie::Ahead(2)));
    assert_eq!(s.used_ahead, 1);
}

#[test]
fn nics_without_a_usable_mac_or_link_are_reported() {
    let rig = net_rig(|s| s.offer_mac = false);
    assert!(matches!(nic(&rig), Err(InitError::NoMac)));
    let rig = net_rig(|s| s.mac = [0x01, 0, 0x5e, 0, 0, 1]);
    assert!(matches!(nic(&rig), Err(InitError::BadMac(_))));
    let rig = net_rig(|s| s.mac = [0; 6]);
    assert!(matches!(nic(&rig), Err(InitError::BadMac(_))));
    let rig = net_rig(|s| s.status = 0);
    let nic = nic(&rig).expect("init");
    assert!(!nic.link_up());
}

/// Seeded random traffic with a random lie now and then: whatever the device does,
/// every call returns (no panic, no hang), a completion only ever names a request that
/// was made, and once the driver has said `Protocol` it says nothing else.
#[test]
fn random_lies_never_panic_or_confuse_the_driver() {
    let mut stopped = 0;
    for seed in 0..48u64 {
        let mut rng = host_shim::testing::Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let rig = rig(&format!("random-{seed}"), false, false);
        let mut dev = driver(&rig);
        let sectors = dev.info().sectors;
        let mut tags = std::collections::HashSet::new();
        let mut broken = false;
        for round in 0..40 {
            for _ in 0..=rng.below(6) {
                let count = 1 + rng.below(16) as u32;
                let sector = rng.below(sectors - u64::from(count));
                let (op, data) = match rng.below(3) {
                    0 => (BlockOp::Read, vec![]),
                    1 => (BlockOp::Write, vec![round as u8; count as usize * 512]),
                    _ => (BlockOp::Flush, vec![]),
                };
                let count = if op == BlockOp::Flush { 0 } else { count };
                let sector = if op == BlockOp::Flush { 0 } else { sector };
                match dev.submit(op, sector, count, &data) {
                    Ok(tag) => assert!(tags.insert(tag), "seed {seed}: tag reused"),
                    Err(BlockError::Busy) => {}
                    Err(BlockError::Protocol) => assert!(broken),
                    Err(e) => panic!("seed {seed}: {e:?}"),
                }
            }
            if rng.below(4) == 0 {
                let v = rng.next_u64();
                *rig.lie.lock().unwrap() = match rng.below(7) {
                    0 => Lie::WrongId(v as u32 % 300),
                    1 => Lie::Length(v as u32 % 70_000),
                    2 => Lie::RepeatFirst,
                    3 => Lie::Duplicate,
                    4 => Lie::Ahead(v as u16),
                    5 => Lie::Status(v as u8),
                    _ => Lie::Silent,
                };
            }
            dev.kick();
            let mut done = Vec::new();
            match dev.poll(&mut done) {
                Ok(n) => {
                    assert!(!broken, "seed {seed}: answers after Protocol");
                    assert_eq!(n, done.len());
                }
                Err(BlockError::Protocol) => broken = true,
                Err(e) => panic!("seed {seed}: {e:?}"),
            }
            for c in done {
                assert!(
                    tags.remove(&c.tag),
                    "seed {seed}: completion for no request"
                );
                if c.op == BlockOp::Read && c.result.is_ok() {
                    assert!(!c.data.is_empty());
                }
            }
            if *rig.lie.lock().unwrap() == Lie::Silent {
                *rig.lie.lock().unwrap() = Lie::Honest;
            }
        }
        assert_eq!(dev.stats().protocol_errors, u64::from(broken));
        stopped += u32::from(broken);
    }
    // Most runs meet a lie the driver must catch; a few only lies it may take as true
    // (an id of another outstanding request, a status of IOERR).
    assert!(stopped > 24, "{stopped} of 48 runs stopped");
}

/// The shim's own virtio-net (`host_shim::devices::virtio_net`) on a [`MemLink`]:
/// frames both ways between the guest's driver and the host end of the link, the
/// model served in the test's thread (`serve_doorbell`, as its device thread would).
#[test]
fn the_net_driver_against_the_shims_virtio_net() {
    use host_shim::devices::virtio_net::VirtioNet as NetModel;
    use host_shim::hostio::tap::{Link, MemLink};

    let ram = Ram::new(RAM_MIB);
    let mem = ram.mem.clone();
    virtio_hal::install(ram);
    let (dev_end, mut host) = MemLink::pair(1024);
    let irq = LevelLog::new();
    let mut pci = VirtioPci::new(
        Box::new(NetModel::new(NIC_MAC, Box::new(dev_end))),
        irq.clone(),
        mem,
    );
    pci.config_write(
        4,
        &(command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes(),
    );
    let dev: Dev = Arc::new(Mutex::new(pci));
    let mut cfg = ModelConfig(dev.clone());
    let f = pci::read_function(&mut cfg, BDF).expect("function");
    let t = PciTransport::probe(&mut cfg, &f, |slot, _| {
        Some(PciRegion::new(dev.clone(), usize::from(slot), 0))
    })
    .expect("probe");
    let mut nic: Nic = VirtioNet::new(t, VirtioNetConfig::default()).expect("init");
    assert_eq!(nic.info().mac, NIC_MAC);
    assert!(nic.link_up());

    // Guest to host: every frame arrives whole, in order.
    let mut buf = Vec::new();
    for n in 0..300u32 {
        let f = frame(n, 60 + (n as usize * 13) % (MAX_FRAME - 59));
        nic.transmit(f.len(), &mut |b| b.copy_from_slice(&f))
            .expect("transmit");
        nic.kick();
        nic.poll().expect("poll");
        assert!(host.recv_frame(&mut buf).unwrap().is_some(), "{n}");
        assert_eq!(buf, f, "{n}");
    }
    // Host to guest, in bursts larger than the receive ring: what does not fit waits
    // in the link until the driver posts buffers again.
    let mut expected = std::collections::VecDeque::new();
    for n in 0..400u32 {
        let f = frame(n, 60 + (n as usize * 29) % (MAX_FRAME - 59));
        host.send_frame(&f).expect("link room");
        expected.push_back(f);
    }
    while !expected.is_empty() {
        dev.lock().unwrap().serve_doorbell(1);
        let got = received(&mut nic).expect("receive");
        assert!(!got.is_empty(), "{} frames never came", expected.len());
        for g in got {
            assert_eq!(Some(g), expected.pop_front());
        }
        nic.poll().expect("poll");
    }
    let s = nic.stats();
    assert_eq!((s.tx_frames, s.rx_frames), (300, 400), "{s:?}");
    assert_eq!(s.protocol_errors + s.rx_runts + s.rx_oversize, 0, "{s:?}");
    let m = dev.lock().unwrap().stats();
    assert_eq!(m["transport"]["msix_messages"], 0, "{m}");
    assert!(irq.rises() > 0, "{m}");
    assert_eq!(virtio_hal::bounces().1, 0);
}

/// The shim's own virtio-net with MSI-X on: frames sent in batches of [`BATCH`] reach
/// the link whole and in order with one notify per batch (`transport.notifies`, the
/// notifies that reached the model, against the frames), the device's interrupts are
/// all messages to the address and data the driver programmed, and the driver reads no
/// ISR byte (the MMIO reads stay the set-up's).
#[test]
fn with_msix_the_net_driver_batches_transmit_notifies_and_reads_no_isr() {
    use host_shim::devices::virtio_net::VirtioNet as NetModel;
    use host_shim::hostio::tap::{Link, MemLink};
    const BATCH: u32 = 10;
    const FRAMES: u32 = 300;

    let ram = Ram::new(RAM_MIB);
    let mem = ram.mem.clone();
    virtio_hal::install(ram);
    let (dev_end, mut host) = MemLink::pair(1024);
    let irq = LevelLog::new();
    let msi = Arc::new(Messages::default());
    let mut pci = VirtioPci::new(
        Box::new(NetModel::new(NIC_MAC, Box::new(dev_end))),
        irq.clone(),
        mem,
    )
    .with_msix(msi.clone());
    pci.config_write(
        4,
        &(command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes(),
    );
    let dev: Dev = Arc::new(Mutex::new(pci));
    let mut cfg = ModelConfig(dev.clone());
    let f = pci::read_function(&mut cfg, BDF).expect("function");
    let t = PciTransport::probe(&mut cfg, &f, |slot, _| {
        Some(PciRegion::new(dev.clone(), usize::from(slot), 0))
    })
    .expect("probe");
    // Two queues and the configuration vector.
    assert_eq!(t.msix_available(), Ok(3));
    t.enable_msix(&mut cfg, BDF, MSI_ADDRESS, MSI_DATA)
        .expect("MSI-X on");
    let mut nic: Nic = VirtioNet::new(t, VirtioNetConfig::default()).expect("init");
    assert!(nic.transport().msix_active());
    assert!(!nic.features().contains(NetFeatures::EVENT_IDX));
    let stats = || dev.lock().unwrap().stats();
    let notifies = |m: &serde_json::Value| m["transport"]["notifies"].as_u64().unwrap();
    let before = stats();

    // Guest to host, in batches: nothing reaches the device before the kick.
    let mut buf = Vec::new();
    for b in 0..FRAMES / BATCH {
        for k in 0..BATCH {
            let n = b * BATCH + k;
            let f = frame(n, 60 + (n as usize * 13) % (MAX_FRAME - 59));
            nic.transmit(f.len(), &mut |d| d.copy_from_slice(&f))
                .expect("transmit");
        }
        assert!(host.recv_frame(&mut buf).unwrap().is_none(), "batch {b}");
        nic.kick();
        nic.poll().expect("poll");
        for k in 0..BATCH {
            let n = b * BATCH + k;
            assert!(host.recv_frame(&mut buf).unwrap().is_some(), "{n}");
            assert_eq!(buf, frame(n, buf.len()), "{n}");
            assert_eq!(buf.len(), 60 + (n as usize * 13) % (MAX_FRAME - 59));
        }
    }
    let after_tx = stats();
    let s = nic.stats();
    assert_eq!(s.tx_frames, u64::from(FRAMES), "{s:?}");
    assert_eq!(
        notifies(&after_tx) - notifies(&before),
        u64::from(FRAMES / BATCH),
        "one notify per batch: {after_tx}"
    );
    assert_eq!(s.tx_notifies, u64::from(FRAMES / BATCH), "{s:?}");
    assert_eq!(s.tx_reaped, u64::from(FRAMES), "{s:?}");

    // Host to guest, in bursts larger than the receive ring.
    let mut expected = std::collections::VecDeque::new();
    for n in 0..400u32 {
        let f = frame(n, 60 + (n as usize * 29) % (MAX_FRAME - 59));
        host.send_frame(&f).expect("link room");
        expected.push_back(f);
    }
    while !expected.is_empty() {
        dev.lock().unwrap().serve_doorbell(1);
        let got = received(&mut nic).expect("receive");
        assert!(!got.is_empty(), "{} frames never came", expected.len());
        for g in got {
            assert_eq!(Some(g), expected.pop_front());
        }
        nic.poll().expect("poll");
    }
    let m = stats();
    let sent = msi.sent();
    assert!(!sent.is_empty(), "{m}");
    assert!(
        sent.iter().all(|&x| x == (MSI_ADDRESS, MSI_DATA)),
        "{sent:x?}"
    );
    assert_eq!(m["transport"]["msix_messages"], sent.len() as u64, "{m}");
    assert_eq!(m["transport"]["interrupts"], sent.len() as u64, "{m}");
    assert_eq!(mmio_reads(&m), mmio_reads(&before), "no ISR read: {m}");
    let s = nic.stats();
    assert_eq!(s.rx_frames, 400, "{s:?}");
    assert_eq!((s.isr_reads, nic.transport().isr_reads()), (0, 0), "{s:?}");
    assert_eq!(s.protocol_errors, 0, "{s:?}");
    assert_eq!(irq.rises(), 0, "INTx stays off");
    assert_eq!(virtio_hal::bounces().1, 0);
}

/// A batch that takes the last free transmit buffer is kicked at once (no buffer could
/// come back before the device saw the frames); without a kick nothing is notified.
#[test]
fn the_net_driver_kicks_itself_when_its_transmit_buffers_run_out() {
    let rig = net_rig(|_| {});
    let mut nic = nic(&rig).expect("init");
    let notifies = || {
        rig.dev.lock().unwrap().stats()["transport"]["notifies"]
            .as_u64()
            .unwrap()
    };
    let before = notifies();
    let tx = VirtioNetConfig::default().tx_buffers as u32;
    for n in 0..tx - 1 {
        nic.transmit(60, &mut |d| d.copy_from_slice(&frame(n, 60)))
            .expect("transmit");
    }
    assert_eq!(notifies(), before, "held back until the kick");
    assert!(rig.state.lock().unwrap().sent.is_empty());
    nic.transmit(60, &mut |d| d.copy_from_slice(&frame(tx - 1, 60)))
        .expect("the last buffer");
    assert_eq!(notifies(), before + 1);
    assert_eq!(rig.state.lock().unwrap().sent.len(), tx as usize);
    // Nothing left to kick.
    nic.kick();
    assert_eq!(notifies(), before + 1);
    nic.poll().expect("poll");
    assert!(nic.can_transmit(60));
}

/// The driver asks for no transmit-completion interrupts while it has a free buffer
/// (it reaps them as it goes), asks for one when a transmit finds none free, and asks
/// for none on the receive queue while `receive` drains it, for them again before it
/// says the ring is empty (`VIRTQ_AVAIL_F_NO_INTERRUPT`, read by the fake device).
#[test]
fn the_net_driver_asks_for_interrupts_only_when_it_waits() {
    let rig = net_rig(|s| s.hold_tx = true);
    let mut nic = nic(&rig).expect("init");
    let wants = |q: usize| rig.state.lock().unwrap().wants_interrupts(q);
    assert!(wants(0) && !wants(1));
    let tx = VirtioNetConfig::default().tx_buffers as u32;
    for n in 0..tx {
        nic.transmit(60, &mut |d| d.copy_from_slice(&frame(n, 60)))
            .expect("transmit");
        nic.kick();
        assert!(!wants(1), "{n}: a buffer was still free");
    }
    assert_eq!(
        nic.transmit(60, &mut |_| {}),
        Err(NetError::Busy),
        "the device holds them all"
    );
    assert!(wants(1), "waiting for a buffer: interrupt wanted");
    rig.state.lock().unwrap().complete_tx();
    nic.poll().expect("poll");
    assert!(!wants(1), "buffers back: no interrupt");
    assert!(nic.can_transmit(60));
    assert_eq!(rig.state.lock().unwrap().sent.len(), tx as usize);

    for n in 0..3 {
        assert!(
            rig.state
                .lock()
                .unwrap()
                .deliver(&frame(n, 100), NetLie::Honest)
        );
    }
    let mut got = Vec::new();
    assert_eq!(nic.receive(&mut |f| got.push(f.to_vec())), Ok(true));
    assert!(!wants(0), "draining: no interrupt");
    while nic.receive(&mut |f| got.push(f.to_vec())).expect("receive") {}
    assert_eq!(got.len(), 3);
    assert!(wants(0), "empty: interrupt wanted again");
    assert_eq!(nic.stats().protocol_errors, 0);
}

/// Seeded random frames, lengths and lies from the fake NIC, both ways: every call
/// returns, frames handed up are exactly those delivered honestly (in order), and
/// once the driver says `Protocol` it says nothing else.
#[test]
fn random_nic_lies_never_panic_or_confuse_the_driver() {
    let mut stopped = 0;
    for seed in 0..32u64 {
        let mut rng = host_shim::testing::Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
        let rig = net_rig(|_| {});
        let mut nic = nic(&rig).expect("init");
        let mut broken = false;
        for round in 0..60u32 {
            let lie = match rng.below(10) {
                0 => NetLie::Length(rng.next_u64() as u32 % 5000),
                1 => NetLie::WrongId(rng.next_u64() as u32 % 300),
                2 => NetLie::Ahead(1 + rng.below(300) as u16),
                _ => NetLie::Honest,
            };
            if rng.below(2) == 0 {
                let len = rng.below(MAX_FRAME as u64 + 40) as usize;
                let f = frame(round, len);
                let delivered = rig.state.lock().unwrap().deliver(&f, lie);
                match received(&mut nic) {
                    Ok(got) => {
                        assert!(!broken, "seed {seed}: answers after Protocol");
                        // An honest frame of a size the driver takes comes up whole.
                        if delivered && lie == NetLie::Honest && (14..=MAX_FRAME).contains(&len) {
                            assert_eq!(got, vec![f], "seed {seed} round {round}");
                        }
                        assert!(got.len() <= 1);
                    }
                    Err(NetError::Protocol) => broken = true,
                    Err(e) => panic!("seed {seed}: {e:?}"),
                }
            } else {
                rig.state.lock().unwrap().tx_lie = lie;
                let len = 1 + rng.below(MAX_FRAME as u64) as usize;
                match nic.transmit(len, &mut |b| b.fill(round as u8)) {
                    Ok(()) | Err(NetError::Busy) => {}
                    Err(NetError::Protocol) => broken = true,
                    Err(e) => panic!("seed {seed}: {e:?}"),
                }
                nic.kick();
                match nic.poll() {
                    Ok(()) => assert!(!broken, "seed {seed}: answers after Protocol"),
                    Err(NetError::Protocol) => broken = true,
                    Err(e) => panic!("seed {seed}: {e:?}"),
                }
            }
        }
        assert_eq!(nic.stats().protocol_errors, u64::from(broken));
        stopped += u32::from(broken);
    }
    assert!(stopped > 16, "{stopped} of 32 runs stopped");
}
