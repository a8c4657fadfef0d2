//! The guest's ATA driver (`hw_devices::ata`) against the shim's PIIX3 IDE model
//! (`host_shim::devices::ide`) in one process, over one guest RAM and a temporary
//! image file: PIO and DMA round trips checked in the file, LBA48 beyond 128 GiB, a
//! read-only disk, register costs per request, a hostile guest against the model and
//! a lying device against the driver.

mod emu_common;

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use emu_common::{LevelLog, PciRegion, Ram};
use host_shim::devices::GuestMemory;
use host_shim::devices::ide::{
    PiixIde, REGION_BUS_MASTER, REGION_PRIMARY_CONTROL, REGION_PRIMARY_TASK_FILE,
};
use host_shim::devices::pci::PciDevice;
use host_shim::hostio::disk::{DiskImage, DiskOptions};
use host_shim::testing::Rng;
use hw_devices::PortIo;
use hw_devices::ata::{
    AtaConfig, AtaDisk, AtaError, AtaMode, AtaPorts, PRIMARY_CONTROL, PRIMARY_TASK_FILE, PrdEntry,
    bm, cmd, control, device, error, reg, status,
};
use pv_drivers::device::{BlockCompletion, BlockDevice, BlockError, BlockOp};
use pv_drivers::pattern;
use vm_memory::{Bytes, GuestAddress};

/// Where the test puts BAR4.
const BM_BASE: u16 = 0xc000;
const RAM_MIB: u64 = 16;

type Lie = Box<dyn FnMut(u16, u32) -> u32>;
/// Sees every byte the driver writes, with its port.
type Watch = Box<dyn FnMut(u16, u8)>;

/// The driver's port I/O, routed as the shim's port bus routes it: the legacy task
/// file and control port, and BAR4. `lie` may rewrite what a read returns.
struct Ports {
    tf: PciRegion<PiixIde>,
    ctl: PciRegion<PiixIde>,
    bm: PciRegion<PiixIde>,
    lie: Option<Lie>,
    watch: Option<Watch>,
}

impl Ports {
    fn new(ide: &Arc<Mutex<PiixIde>>) -> Self {
        Self {
            tf: PciRegion::new(
                ide.clone(),
                REGION_PRIMARY_TASK_FILE,
                PRIMARY_TASK_FILE.into(),
            ),
            ctl: PciRegion::new(ide.clone(), REGION_PRIMARY_CONTROL, PRIMARY_CONTROL.into()),
            bm: PciRegion::new(ide.clone(), REGION_BUS_MASTER, BM_BASE.into()),
            lie: None,
            watch: None,
        }
    }

    fn accesses(&self) -> u64 {
        [&self.tf, &self.ctl, &self.bm]
            .iter()
            .map(|r| r.accesses.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    fn region(&mut self, port: u16) -> Option<&mut PciRegion<PiixIde>> {
        match port {
            0x1f0..=0x1f7 => Some(&mut self.tf),
            0x3f6 => Some(&mut self.ctl),
            p if (BM_BASE..BM_BASE + 16).contains(&p) => Some(&mut self.bm),
            _ => None,
        }
    }

    fn read(&mut self, port: u16, width: u32) -> u32 {
        let v = match self.region(port) {
            Some(r) => match width {
                1 => r.read8(port).into(),
                2 => r.read16(port).into(),
                _ => PortIo::read32(r, port),
            },
            None => u32::MAX,
        };
        match &mut self.lie {
            Some(lie) => lie(port, v),
            None => v,
        }
    }
}

impl PortIo for Ports {
    fn read8(&mut self, port: u16) -> u8 {
        self.read(port, 1) as u8
    }
    fn read16(&mut self, port: u16) -> u16 {
        self.read(port, 2) as u16
    }
    fn read32(&mut self, port: u16) -> u32 {
        self.read(port, 4)
    }
    fn write8(&mut self, port: u16, value: u8) {
        if let Some(w) = &mut self.watch {
            w(port, value);
        }
        if let Some(r) = self.region(port) {
            r.write8(port, value);
        }
    }
    fn write16(&mut self, port: u16, value: u16) {
        if let Some(r) = self.region(port) {
            r.write16(port, value);
        }
    }
    fn write32(&mut self, port: u16, value: u32) {
        if let Some(r) = self.region(port) {
            PortIo::write32(r, port, value);
        }
    }
}

/// A model with a disk of `bytes` on a fresh temporary image, PCI set up as firmware
/// would (BAR4 at [`BM_BASE`], I/O and bus mastering on).
struct Setup {
    ide: Arc<Mutex<PiixIde>>,
    irq14: Arc<LevelLog>,
    mem: GuestMemory,
    ram: Option<Ram>,
    path: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn setup(tag: &str, bytes: u64, read_only: bool) -> Option<Setup> {
    let path = std::env::temp_dir().join(format!("ide-model-{}-{tag}.img", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let file = std::fs::File::create(&path).expect("create image");
    if let Err(e) = file.set_len(bytes) {
        let _ = std::fs::remove_file(&path);
        println!("SKIPPED: {tag}: cannot make a sparse {bytes}-byte image here: {e}");
        return None;
    }
    drop(file);
    let disk = DiskImage::open(
        &path,
        DiskOptions {
            read_only,
            ..Default::default()
        },
    )
    .expect("open image");
    let ram = Ram::new(RAM_MIB);
    let mem = ram.mem.clone();
    let irq14 = LevelLog::new();
    let mut ide = PiixIde::new(Some(disk), irq14.clone(), LevelLog::new(), mem.clone());
    ide.config_mut()
        .write(0x20, &(u32::from(BM_BASE) | 1).to_le_bytes());
    ide.config_mut().write(4, &[0x05, 0]); // I/O space + bus master
    Some(Setup {
        ide: Arc::new(Mutex::new(ide)),
        irq14,
        mem,
        ram: Some(ram),
        path,
    })
}

impl Setup {
    fn driver(&mut self, mode: AtaMode) -> Result<AtaDisk<Ports, Ram>, AtaError> {
        self.driver_with(mode, None, |c| c)
    }

    fn driver_with(
        &mut self,
        mode: AtaMode,
        lie: Option<Lie>,
        cfg: impl FnOnce(AtaConfig) -> AtaConfig,
    ) -> Result<AtaDisk<Ports, Ram>, AtaError> {
        let mut ports = Ports::new(&self.ide);
        ports.lie = lie;
        // The model reaches the setup's RAM: a driver that moves data must use it (give
        // it back with `into_inner`); a fresh one only serves probes that fail.
        let ram = self.ram.take().unwrap_or_else(|| Ram::new(RAM_MIB));
        let c = cfg(AtaConfig::new(AtaPorts::primary(Some(BM_BASE)), mode));
        AtaDisk::new(ports, ram, c)
    }

    fn stats(&self) -> serde_json::Value {
        self.ide.lock().unwrap().stats()
    }

    fn file(&self, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&self.path).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        buf
    }
}

/// Kicks and polls until every request completed (bounded).
fn drain(d: &mut impl BlockDevice) -> Vec<BlockCompletion> {
    let mut done = Vec::new();
    d.kick();
    for _ in 0..10_000 {
        if d.in_flight() == 0 {
            return done;
        }
        d.poll(&mut done).expect("poll");
    }
    panic!("requests never completed");
}

fn one(
    d: &mut impl BlockDevice,
    op: BlockOp,
    sector: u64,
    count: u32,
    data: &[u8],
) -> BlockCompletion {
    let tag = d.submit(op, sector, count, data).expect("submit");
    let mut done = drain(d);
    assert_eq!(done.len(), 1);
    let c = done.pop().unwrap();
    assert_eq!(c.tag, tag);
    c
}

fn patterned(seed: u64, sector: u64, count: u32) -> Vec<u8> {
    let mut v = vec![0u8; count as usize * 512];
    pattern::fill(seed, sector * 512, &mut v);
    v
}

#[test]
fn pio_and_dma_write_flush_read_back() {
    for (mode, seed) in [(AtaMode::Pio, 11u64), (AtaMode::Dma, 22)] {
        let mut s = setup(&format!("rw{seed}"), 8 << 20, false).unwrap();
        let mut d = s.driver(mode).expect("probe");
        let info = d.info();
        assert_eq!(info.sectors, 16384);
        assert!(info.flush);
        assert_eq!(info.queue_depth, 32);
        assert_eq!(info.max_transfer, 128 * 1024);
        assert!(d.lba48());
        let mut model = [0u8; 40];
        let n = d.identify().string(27, 20, &mut model);
        assert_eq!(&model[..n], b"PVH-SHIM HARDDISK");

        // A queue of writes of several sizes, including the largest.
        let reqs: [(u64, u32); 6] = [
            (0, 1),
            (1, 7),
            (100, 256),
            (1000, 255),
            (16383, 1),
            (5000, 8),
        ];
        let mut tags = Vec::new();
        for &(sector, count) in &reqs {
            tags.push(
                d.submit(
                    BlockOp::Write,
                    sector,
                    count,
                    &patterned(seed, sector, count),
                )
                .unwrap(),
            );
        }
        tags.push(d.submit(BlockOp::Flush, 0, 0, &[]).unwrap());
        let done = drain(&mut d);
        assert_eq!(done.iter().map(|c| c.tag).collect::<Vec<_>>(), tags);
        assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");

        for &(sector, count) in &reqs {
            let c = one(&mut d, BlockOp::Read, sector, count, &[]);
            assert_eq!(c.result, Ok(()));
            assert_eq!(
                pattern::check(seed, sector * 512, &c.data),
                None,
                "{mode:?} {sector}"
            );
            let disk = s.file(sector * 512, count as usize * 512);
            assert_eq!(
                pattern::check(seed, sector * 512, &disk),
                None,
                "image {sector}"
            );
        }
        // Bad requests are refused before they reach the device.
        assert_eq!(
            d.submit(BlockOp::Read, 16384, 1, &[]),
            Err(BlockError::BadRequest)
        );
        assert_eq!(
            d.submit(BlockOp::Read, 0, 257, &[]),
            Err(BlockError::BadRequest)
        );
        assert_eq!(
            d.submit(BlockOp::Write, 0, 1, &[0; 100]),
            Err(BlockError::BadRequest)
        );
        // The queue holds 32.
        for i in 0..32 {
            d.submit(BlockOp::Read, i, 1, &[]).unwrap();
        }
        assert_eq!(d.submit(BlockOp::Read, 0, 1, &[]), Err(BlockError::Busy));
        assert_eq!(drain(&mut d).len(), 32);

        let st = s.stats();
        assert_eq!(st["flushes"], 1);
        assert_eq!(st["errors"], serde_json::json!({}), "{st}");
        let (w, r) = match mode {
            AtaMode::Pio => ("write_sectors", "read_sectors"),
            AtaMode::Dma => ("write_dma", "read_dma"),
        };
        assert_eq!(st["commands"][w], 6, "{st}");
        assert_eq!(st["commands"][r], 6 + 32);
        assert_eq!(st["commands"]["flush_cache_ext"], 1);
        if mode == AtaMode::Dma {
            assert_eq!(st["dma_bytes_written"], 528 * 512);
            assert_eq!(st["pio_bytes_in"], 0);
        } else {
            assert_eq!(st["pio_bytes_in"], 528 * 512);
            assert_eq!(st["prds"], 0);
        }
        assert!(s.irq14.rises() > 0);
    }
}

#[test]
fn lba48_beyond_128_gib() {
    let Some(mut s) = setup("big", 200 << 30, false) else {
        return;
    };
    let sectors = (200u64 << 30) / 512;
    for (mode, seed) in [(AtaMode::Dma, 5u64), (AtaMode::Pio, 6)] {
        let mut d = s.driver(mode).expect("probe");
        assert_eq!(d.info().sectors, sectors);
        assert_eq!(d.identify().lba28_sectors(), (1 << 28) - 1);
        let sector = sectors - 300;
        let data = patterned(seed, sector, 256);
        assert_eq!(
            one(&mut d, BlockOp::Write, sector, 256, &data).result,
            Ok(())
        );
        let c = one(&mut d, BlockOp::Read, sector, 256, &[]);
        assert_eq!(c.result, Ok(()));
        assert_eq!(pattern::check(seed, sector * 512, &c.data), None);
        assert_eq!(
            pattern::check(seed, sector * 512, &s.file(sector * 512, 256 * 512)),
            None
        );
        // Just below 2^28 the driver still uses LBA28; just across, LBA48.
        assert_eq!(
            one(&mut d, BlockOp::Read, (1 << 28) - 9, 8, &[]).result,
            Ok(())
        );
        assert_eq!(
            one(&mut d, BlockOp::Read, (1 << 28) - 8, 8, &[]).result,
            Ok(())
        );
        s.ram = Some(d.into_inner().1);
    }
    let st = s.stats();
    for c in [
        "write_dma_ext",
        "read_dma_ext",
        "write_sectors_ext",
        "read_sectors_ext",
    ] {
        assert_eq!(
            st["commands"][c],
            if c.starts_with("read") { 2 } else { 1 },
            "{c}: {st}"
        );
    }
    assert_eq!(st["commands"]["read_dma"], 1);
    assert_eq!(st["commands"]["read_sectors"], 1);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut s = setup("ro", 1 << 20, false).unwrap();
    // Reversed order to the other tests: DMA first, PIO with the same RAM after.
    std::fs::write(&s.path, patterned(3, 0, 2048)).unwrap();
    // Reopen the same file read-only behind a fresh model (the old model holds the
    // image's writer lock: retire it first).
    s.ide = Arc::new(Mutex::new(PiixIde::new(
        None,
        LevelLog::new(),
        LevelLog::new(),
        s.mem.clone(),
    )));
    let disk = DiskImage::open(
        &s.path,
        DiskOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut ide = PiixIde::new(Some(disk), LevelLog::new(), LevelLog::new(), s.mem.clone());
    ide.config_mut()
        .write(0x20, &(u32::from(BM_BASE) | 1).to_le_bytes());
    ide.config_mut().write(4, &[0x05, 0]);
    s.ide = Arc::new(Mutex::new(ide));
    for mode in [AtaMode::Dma, AtaMode::Pio] {
        let mut d = s.driver(mode).expect("probe");
        let c = one(&mut d, BlockOp::Write, 10, 4, &[0xee; 2048]);
        assert_eq!(c.result, Err(BlockError::Io), "{mode:?}");
        // The driver goes on after a device error.
        let c = one(&mut d, BlockOp::Read, 10, 4, &[]);
        assert_eq!(c.result, Ok(()));
        assert_eq!(pattern::check(3, 10 * 512, &c.data), None);
        s.ram = Some(d.into_inner().1);
    }
    assert_eq!(pattern::check(3, 0, &s.file(0, 1 << 20)), None);
    assert_eq!(s.stats()["errors"]["write_to_read_only_disk"], 2);
}

#[test]
fn register_accesses_per_4k_read_agree_with_the_model() {
    for (mode, expected) in [(AtaMode::Pio, 6 + 8 * (1 + 128) + 1), (AtaMode::Dma, 9 + 3)] {
        let mut s = setup(&format!("cost{expected}"), 1 << 20, false).unwrap();
        let mut d = s.driver(mode).expect("probe");
        let before = (
            d.io().accesses(),
            s.stats()["register_accesses"].as_u64().unwrap(),
        );
        assert_eq!(before.0, before.1, "probe");
        let c = one(&mut d, BlockOp::Read, 64, 8, &[]);
        assert_eq!(c.result, Ok(()));
        let after = (
            d.io().accesses(),
            s.stats()["register_accesses"].as_u64().unwrap(),
        );
        let (driver, model) = (after.0 - before.0, after.1 - before.1);
        println!("{mode:?}: {driver} register accesses per 4 KiB read");
        assert_eq!(driver, model);
        assert_eq!(driver, expected, "{mode:?}");
    }
}

// ---- a hostile guest against the model ----------------------------------------------

/// Raw register access to the model, as a guest that does not use the driver.
struct Guest {
    p: Ports,
}

impl Guest {
    fn new(s: &Setup) -> Self {
        let mut p = Ports::new(&s.ide);
        // Enable interrupts and select the master in LBA mode.
        p.write8(PRIMARY_CONTROL, 0);
        p.write8(0x1f6, device::OBS | device::LBA);
        Self { p }
    }

    fn dma_command(&mut self, command: u8, lba: u8, count: u8) {
        self.p.write8(0x1f2, count);
        self.p.write8(0x1f3, lba);
        self.p.write8(0x1f4, 0);
        self.p.write8(0x1f5, 0);
        self.p.write8(0x1f7, command);
    }

    fn bm_status(&mut self) -> u8 {
        self.p.read8(BM_BASE + bm::STATUS)
    }

    fn status(&mut self) -> u8 {
        self.p.read8(0x1f0 + reg::STATUS)
    }
}

fn ram_image(mem: &GuestMemory) -> Vec<u8> {
    let mut v = vec![0u8; (RAM_MIB << 20) as usize];
    mem.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

fn put_prds(mem: &GuestMemory, at: u64, entries: &[PrdEntry]) {
    for (i, e) in entries.iter().enumerate() {
        mem.write_slice(&e.to_bytes(), GuestAddress(at + 8 * i as u64))
            .unwrap();
    }
}

#[test]
fn prd_tables_and_buffers_outside_ram_fail_visibly_and_touch_nothing() {
    let s = setup("prd", 1 << 20, false).unwrap();
    std::fs::write(&s.path, patterned(9, 0, 2048)).unwrap();
    let mem = s.mem.clone();
    let mut g = Guest::new(&s);
    let table = 0x10_0000u64;
    let cases: [(&str, u32, Vec<PrdEntry>); 4] = [
        ("table outside RAM", 0xf000_0000, vec![]),
        (
            "table at the end of RAM",
            (RAM_MIB << 20) as u32 - 4,
            vec![],
        ),
        (
            "buffer outside RAM",
            table as u32,
            vec![PrdEntry {
                addr: 0x4000_0000,
                count: 512,
                flags: 0x8000,
            }],
        ),
        (
            "buffer straddling the end of RAM",
            table as u32,
            vec![
                PrdEntry {
                    addr: 0x20_0000,
                    count: 256,
                    flags: 0,
                },
                PrdEntry {
                    addr: (RAM_MIB << 20) as u32 - 128,
                    count: 512,
                    flags: 0x8000,
                },
            ],
        ),
    ];
    for (what, addr, prds) in cases {
        put_prds(&mem, table, &prds);
        let before = ram_image(&mem);
        let rises = s.irq14.rises();
        g.p.write8(BM_BASE + bm::STATUS, bm::status::W1C);
        g.p.write32(BM_BASE + bm::PRD_TABLE, addr);
        g.dma_command(cmd::READ_DMA, 0, 1);
        g.p.write8(BM_BASE, bm::command::START | bm::command::READ);
        let bms = g.bm_status();
        assert_eq!(
            bms & (bm::status::ERROR | bm::status::INTERRUPT | bm::status::ACTIVE),
            bm::status::ERROR | bm::status::INTERRUPT,
            "{what}"
        );
        assert_eq!(s.irq14.rises(), rises + 1, "{what}");
        assert_eq!(g.status(), status::DRDY | status::ERR, "{what}");
        assert_eq!(g.p.read8(0x1f1), error::ABRT, "{what}");
        g.p.write8(BM_BASE, 0);
        assert!(ram_image(&mem) == before, "{what}: guest RAM changed");
    }
    let st = s.ide.lock().unwrap().stats();
    assert_eq!(st["errors"]["prd_table_outside_ram"], 2);
    assert_eq!(st["errors"]["dma_buffer_outside_ram"], 2);
}

#[test]
fn short_long_and_missing_prd_tables_behave_as_qemu() {
    let s = setup("prdlen", 1 << 20, false).unwrap();
    std::fs::write(&s.path, patterned(4, 0, 2048)).unwrap();
    let mem = s.mem.clone();
    let mut g = Guest::new(&s);
    let table = 0x10_0000u64;
    let buf = 0x20_0000u64;

    // Short: 2 sectors asked, 512 bytes described. Nothing moves, Active drops, no
    // interrupt, no error bit.
    put_prds(
        &mem,
        table,
        &[PrdEntry {
            addr: buf as u32,
            count: 512,
            flags: 0x8000,
        }],
    );
    let before = ram_image(&mem);
    let rises = s.irq14.rises();
    g.p.write32(BM_BASE + bm::PRD_TABLE, table as u32);
    g.p.write8(BM_BASE, bm::command::START | bm::command::READ);
    g.dma_command(cmd::READ_DMA, 0, 2);
    assert_eq!(g.bm_status() & 7, 0);
    assert_eq!(s.irq14.rises(), rises);
    assert_eq!(g.status(), status::DRDY | status::DSC);
    assert!(ram_image(&mem) == before, "short table moved data");
    g.p.write8(BM_BASE, 0);

    // Absurd count: LBA48 count 0 = 65536 sectors (32 MiB), past the disk and the
    // table: no panic, the table is too short.
    g.p.write8(BM_BASE, bm::command::START | bm::command::READ);
    for v in [0u8, 0, 0, 0, 0, 0, 0, 0] {
        g.p.write8(0x1f2, v);
    }
    g.p.write8(0x1f7, cmd::READ_DMA_EXT);
    assert_eq!(g.bm_status() & 7, 0);
    assert!(ram_image(&mem) == before);
    g.p.write8(BM_BASE, 0);

    // Long: 1 sector asked, 4 KiB described. Done, interrupt, Active stays.
    put_prds(
        &mem,
        table,
        &[PrdEntry {
            addr: buf as u32,
            count: 4096,
            flags: 0x8000,
        }],
    );
    let before = ram_image(&mem);
    g.p.write8(BM_BASE + bm::STATUS, bm::status::W1C);
    g.p.write8(BM_BASE, bm::command::START | bm::command::READ);
    g.dma_command(cmd::READ_DMA, 3, 1);
    assert_eq!(
        g.bm_status() & 7,
        bm::status::INTERRUPT | bm::status::ACTIVE
    );
    assert_eq!(g.status(), status::DRDY | status::DSC);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(pattern::check(4, 3 * 512, &got), None);
    let after = ram_image(&mem);
    assert!(after[..buf as usize] == before[..buf as usize]);
    assert!(after[buf as usize + 512..] == before[buf as usize + 512..]);
    g.p.write8(BM_BASE, 0);

    // Start without a DMA command: Active, nothing else.
    g.p.write8(BM_BASE + bm::STATUS, bm::status::W1C);
    g.p.write8(BM_BASE, bm::command::START);
    assert_eq!(g.bm_status() & 7, bm::status::ACTIVE);
    g.p.write8(BM_BASE, 0);
    assert_eq!(g.bm_status() & 7, 0);

    // No bus mastering in the PCI command register: the transfer fails visibly.
    s.ide.lock().unwrap().config_mut().write(4, &[0x01, 0]);
    g.p.write8(BM_BASE, bm::command::START | bm::command::READ);
    g.dma_command(cmd::READ_DMA, 0, 1);
    assert_eq!(g.bm_status() & 7, bm::status::ERROR | bm::status::INTERRUPT);
    assert_eq!(g.status(), status::DRDY | status::ERR);
    let st = s.ide.lock().unwrap().stats();
    assert_eq!(st["errors"]["dma_without_bus_master"], 1);
    assert_eq!(st["errors"]["prd_table_short"], 2);
}

#[test]
fn random_guest_traffic_keeps_dma_inside_the_prd_buffers() {
    for seed in [7u64, 0x5eed, 0xfeed_f00d] {
        let s = setup(&format!("fuzz{seed}"), 1 << 20, false).unwrap();
        let mem = s.mem.clone();
        let mut g = Guest::new(&s);
        // A table of four 64 KiB entries in a 256 KiB window: the only place DMA
        // may write.
        let (table, window) = (0x10_0000u64, 0x40_0000u64);
        let prds: Vec<PrdEntry> = (0..4)
            .map(|i| PrdEntry {
                addr: (window + i * 0x1_0000) as u32,
                count: 0,
                flags: if i == 3 { 0x8000 } else { 0 },
            })
            .collect();
        put_prds(&mem, table, &prds);
        g.p.write32(BM_BASE + bm::PRD_TABLE, table as u32);
        let before = ram_image(&mem);
        let mut rng = Rng(seed);
        let ports: Vec<u16> = (0x1f0..0x1f8)
            .chain([0x3f6])
            .chain(BM_BASE..BM_BASE + 16)
            .collect();
        for _ in 0..30_000 {
            let port = ports[rng.below(ports.len() as u64) as usize];
            let width = [1, 2, 4][rng.below(3) as usize];
            if rng.below(2) == 0 {
                g.p.read(port, width);
                continue;
            }
            // The PRD table address stays ours; everything else is random.
            if (BM_BASE + 4..BM_BASE + 8).contains(&port)
                || (width > 1 && (BM_BASE + 1..BM_BASE + 4).contains(&(port + width as u16 - 1)))
            {
                continue;
            }
            let mut v = rng.next_u64() as u32;
            if port == 0x1f7 && rng.below(2) == 0 {
                v = [
                    cmd::READ_DMA,
                    cmd::WRITE_DMA,
                    cmd::READ_DMA_EXT,
                    cmd::READ_SECTORS,
                ][rng.below(4) as usize]
                    .into();
            }
            if port == 0x3f6 && rng.below(4) != 0 {
                v &= !u32::from(control::SRST);
            }
            match width {
                1 => g.p.write8(port, v as u8),
                2 => g.p.write16(port, v as u16),
                _ => g.p.write32(port, v),
            }
        }
        let after = ram_image(&mem);
        let (w0, w1) = (window as usize, window as usize + 0x4_0000);
        assert!(
            after[..w0] == before[..w0],
            "seed {seed}: RAM below the window changed"
        );
        assert!(
            after[w1..] == before[w1..],
            "seed {seed}: RAM above the window changed"
        );
        let st = s.stats();
        assert_eq!(st["register_accesses"].as_u64(), Some(g.p.accesses()));
        // The test means something only if transfers really ran.
        assert!(st["dma_bytes_read"].as_u64() > Some(0), "seed {seed}: {st}");
    }
}

// ---- a lying device against the driver ----------------------------------------------

#[test]
fn garbage_identify_is_refused_without_panic() {
    // Specific lies, each with the error it must give.
    type Patch = fn(&mut [u16; 256]);
    let lies: [(Patch, AtaError); 5] = [
        (|w| w[0] |= 0x8000, AtaError::NotAta),
        (|w| w[49] &= !(1 << 9), AtaError::BadIdentify("no LBA")),
        (
            |w| (w[60], w[61], w[100], w[101], w[83]) = (0, 0, 0, 0, 0x4000),
            AtaError::BadIdentify("no sectors"),
        ),
        (
            |w| (w[100], w[101]) = (5, 0),
            AtaError::BadIdentify("LBA48 capacity below the LBA28 one"),
        ),
        (
            |w| w[61] = 0x1000,
            AtaError::BadIdentify("LBA28 capacity of 2^28 sectors or more"),
        ),
    ];
    for (i, (patch, want)) in lies.into_iter().enumerate() {
        let mut s = setup(&format!("lie{i}"), 1 << 20, false).unwrap();
        let words = Rc::new(Cell::new(None::<[u16; 256]>));
        let idx = Rc::new(Cell::new(0usize));
        let (w2, i2) = (words.clone(), idx.clone());
        // Collect the real IDENTIFY words as they pass, and hand back patched ones.
        let lie: Lie = Box::new(move |port, v| {
            if port != 0x1f0 {
                return v;
            }
            let n = i2.get();
            i2.set(n + 1);
            let mut w = w2.get().unwrap_or([0; 256]);
            if n < 256 {
                w[n] = v as u16;
                w2.set(Some(w));
            }
            let mut patched = w;
            patch(&mut patched);
            u32::from(patched[n.min(255)])
        });
        let r = s.driver_with(AtaMode::Pio, Some(lie), |c| c);
        assert_eq!(r.err(), Some(want), "lie {i}");
    }
    // Random words: an error or a working driver, never a panic.
    for seed in 1..=20u64 {
        let mut s = setup(&format!("garbage{seed}"), 1 << 20, false).unwrap();
        let mut rng = Rng(seed);
        let lie: Lie = Box::new(move |port, v| {
            if port == 0x1f0 {
                rng.next_u64() as u32
            } else {
                v
            }
        });
        if let Ok(mut d) = s.driver_with(AtaMode::Dma, Some(lie), |c| c) {
            let _ = d.submit(BlockOp::Read, 0, 1, &[]);
            let mut done = Vec::new();
            d.kick();
            for _ in 0..10 {
                let _ = d.poll(&mut done);
            }
        }
    }
}

#[test]
fn busy_forever_is_an_error_after_bounded_polls() {
    // During probe.
    let mut s = setup("bsy", 1 << 20, false).unwrap();
    let lie: Lie = Box::new(|port, v| {
        if port == 0x1f7 || port == 0x3f6 {
            v | 0x80
        } else {
            v
        }
    });
    let r = s.driver_with(AtaMode::Pio, Some(lie), |c| AtaConfig {
        spin_limit: 1000,
        ..c
    });
    assert_eq!(r.err(), Some(AtaError::Timeout));

    // After probe, on a command.
    for mode in [AtaMode::Pio, AtaMode::Dma] {
        let mut s = setup(&format!("bsy{mode:?}"), 1 << 20, false).unwrap();
        let on = Rc::new(Cell::new(false));
        let on2 = on.clone();
        let lie: Lie = Box::new(move |port, v| match port {
            0x1f7 | 0x3f6 if on2.get() => v | 0x80,
            p if p == BM_BASE + bm::STATUS && on2.get() => (v | 1) & !4,
            _ => v,
        });
        let mut d = s
            .driver_with(mode, Some(lie), |c| AtaConfig {
                poll_limit: 50,
                ..c
            })
            .unwrap();
        on.set(true);
        let t1 = d.submit(BlockOp::Read, 0, 1, &[]).unwrap();
        let t2 = d.submit(BlockOp::Read, 1, 1, &[]).unwrap();
        d.kick();
        let mut done = Vec::new();
        let mut polls = 0;
        while done.is_empty() {
            assert_eq!(d.poll(&mut done), Ok(if polls < 50 { 0 } else { 2 }));
            polls += 1;
            assert!(polls <= 51, "{mode:?}: no timeout");
        }
        assert_eq!(done[0].tag, t1);
        assert_eq!(done[0].result, Err(BlockError::Io));
        assert_eq!(done[1].tag, t2);
        assert_eq!(done[1].result, Err(BlockError::Protocol));
        assert_eq!(d.poll(&mut done), Err(BlockError::Protocol));
        assert_eq!(
            d.submit(BlockOp::Read, 0, 1, &[]),
            Err(BlockError::Protocol)
        );
    }
}

#[test]
fn short_and_long_transfers_are_protocol_errors() {
    // (mode, what the lie does to reads once switched on)
    type Rewrite = fn(u16, u32) -> u32;
    let cases: [(AtaMode, &str, Rewrite); 4] = [
        // PIO: the data phase ends before the request does.
        (AtaMode::Pio, "pio short", |p, v| {
            if p == 0x1f7 { v & !0x08 } else { v }
        }),
        // PIO: the device keeps offering data.
        (AtaMode::Pio, "pio long", |p, v| {
            if p == 0x1f7 { v | 0x08 } else { v }
        }),
        // DMA: done with PRD entries left over (moved less than asked).
        (AtaMode::Dma, "dma short", |p, v| {
            if p == BM_BASE + 2 { v | 5 } else { v }
        }),
        // DMA: the bus master stopped without an interrupt.
        (AtaMode::Dma, "dma stopped", |p, v| {
            if p == BM_BASE + 2 { v & !5 } else { v }
        }),
    ];
    for (mode, what, rewrite) in cases {
        let mut s = setup(&what.replace(' ', "-"), 1 << 20, false).unwrap();
        let on = Rc::new(Cell::new(false));
        let on2 = on.clone();
        let lie: Lie = Box::new(move |p, v| if on2.get() { rewrite(p, v) } else { v });
        let mut d = s.driver_with(mode, Some(lie), |c| c).unwrap();
        on.set(true);
        let tag = d.submit(BlockOp::Read, 0, 4, &[]).unwrap();
        d.kick();
        let mut done = Vec::new();
        assert_eq!(d.poll(&mut done), Ok(1), "{what}");
        assert_eq!(done[0].tag, tag);
        assert_eq!(done[0].result, Err(BlockError::Protocol), "{what}");
        assert!(done[0].data.is_empty());
        assert_eq!(
            d.submit(BlockOp::Read, 0, 1, &[]),
            Err(BlockError::Protocol)
        );
    }
}

#[test]
fn device_errors_fail_one_request_and_the_driver_goes_on() {
    let mut s = setup("err", 1 << 20, false).unwrap();
    let on = Rc::new(Cell::new(0u32));
    let on2 = on.clone();
    // The next status read after switching on reports ERR.
    let lie: Lie = Box::new(move |p, v| {
        if p == 0x1f7 && on2.get() > 0 {
            on2.set(on2.get() - 1);
            return u32::from(status::DRDY | status::ERR);
        }
        v
    });
    let mut d = s.driver_with(AtaMode::Pio, Some(lie), |c| c).unwrap();
    on.set(1);
    assert_eq!(
        one(&mut d, BlockOp::Flush, 0, 0, &[]).result,
        Err(BlockError::Io)
    );
    assert_eq!(one(&mut d, BlockOp::Flush, 0, 0, &[]).result, Ok(()));
    // Unrelated: the model never saw an error.
    assert_eq!(s.stats()["errors"], serde_json::json!({}));
}

#[test]
fn probe_finds_no_device_where_there_is_none() {
    // No disk at all: every register of the channel reads 0.
    let ram = Ram::new(RAM_MIB);
    let ide = PiixIde::new(None, LevelLog::new(), LevelLog::new(), ram.mem.clone());
    let ide = Arc::new(Mutex::new(ide));
    let r = AtaDisk::new(
        Ports::new(&ide),
        ram,
        AtaConfig::new(AtaPorts::primary(None), AtaMode::Pio),
    );
    assert_eq!(r.err(), Some(AtaError::NoDevice));
    // The absent slave next to a disk.
    let mut s = setup("slave", 1 << 20, false).unwrap();
    let r = s.driver_with(AtaMode::Pio, None, |c| AtaConfig { slave: true, ..c });
    assert_eq!(r.err(), Some(AtaError::NoDevice));
    // DMA without a bus-master block.
    let r = s.driver_with(AtaMode::Dma, None, |c| AtaConfig {
        ports: AtaPorts::primary(None),
        ..c
    });
    assert_eq!(r.err(), Some(AtaError::NoDma));
    // A floating bus.
    let lie: Lie = Box::new(|_, _| u32::MAX);
    assert_eq!(
        s.driver_with(AtaMode::Pio, Some(lie), |c| c).err(),
        Some(AtaError::NoDevice)
    );
}

#[test]
fn the_probe_selects_its_drive_before_the_soft_reset() {
    // QEMU runs a soft reset later (a bottom half), ignoring task-file writes until
    // then, and an absent drive's status reads 0: a drive selected only after the
    // reset may not be selected yet, and the absent one left selected (by a BIOS)
    // passes for "not busy, no drive". So the select comes first.
    let mut s = setup("select-first", 1 << 20, false).unwrap();
    // The slave left selected, as SeaBIOS leaves it.
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let seen = log.clone();
    let mut ports = Ports::new(&s.ide);
    ports.write8(0x1f6, 0xb0);
    ports.watch = Some(Box::new(move |port, v| seen.borrow_mut().push((port, v))));
    let ram = s.ram.take().unwrap_or_else(|| Ram::new(RAM_MIB));
    let cfg = AtaConfig::new(AtaPorts::primary(Some(BM_BASE)), AtaMode::Pio);
    AtaDisk::new(ports, ram, cfg).expect("the master is found");
    let log = log.borrow();
    let first_srst = log
        .iter()
        .position(|&(p, v)| p == 0x3f6 && v & 0x04 != 0)
        .unwrap_or_else(|| panic!("no soft reset: {log:x?}"));
    let select = log
        .iter()
        .position(|&(p, v)| p == 0x1f6 && v & 0x10 == 0)
        .expect("a select of the master");
    assert!(select < first_srst, "{log:x?}");
}
