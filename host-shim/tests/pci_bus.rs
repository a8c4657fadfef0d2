//! PCI bus 0 driven the way a guest drives it: configuration mechanism #1 through the
//! port bus at 0xCF8/0xCFC, BARs reached through the port and memory buses, and the
//! MP table parsed back from guest memory as Linux's `mpparse.c` would read it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use host_shim::boot::{self, MP_TABLE_ADDR, MemoryLayout, MpPciIrq};
use host_shim::devices::pci::{BarKind, ConfigSpace, PciDevice, PciIds};
use host_shim::devices::pci_bus::{self, PciAddr, PciBus, PciError};
use host_shim::devices::{Action, Bus};
use host_shim::testing::Rng;
use host_shim::{Capture, ConsoleSink, Kernel, Outcome, VmConfig, Vmm};
use vm_memory::{Bytes, GuestAddress};

/// A model with a 4 KiB memory BAR 0 and a 64-byte I/O BAR 1 (and optional legacy
/// ranges); every region read returns `id << 4 | region` in each byte.
struct Fake {
    id: u8,
    config: ConfigSpace,
    legacy: Vec<(BarKind, u64, u64, usize)>,
    writes: Vec<(usize, u64, Vec<u8>)>,
    /// Doorbells of BAR 0 (offset, event).
    bells: Vec<(u64, Arc<vmm_sys_util::eventfd::EventFd>)>,
}

impl Fake {
    fn new(id: u8, pin: u8) -> Self {
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x8086,
            device: 0x100e,
            class: 2,
            ..Default::default()
        });
        config.add_bar(0, BarKind::Memory32, 0x1000);
        config.add_bar(1, BarKind::Io, 0x40);
        config.set_interrupt_pin(pin);
        Self {
            id,
            config,
            legacy: Vec::new(),
            writes: Vec::new(),
            bells: Vec::new(),
        }
    }
}

impl PciDevice for Fake {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn region_read(&mut self, region: usize, _offset: u64, data: &mut [u8]) {
        data.fill(self.id << 4 | region as u8);
    }
    fn region_write(&mut self, region: usize, offset: u64, data: &[u8]) {
        self.writes.push((region, offset, data.to_vec()));
    }
    fn legacy_ranges(&self) -> Vec<(BarKind, u64, u64, usize)> {
        self.legacy.clone()
    }
    fn doorbells(&self, region: usize) -> Vec<(u64, Arc<vmm_sys_util::eventfd::EventFd>)> {
        if region == 0 {
            self.bells.clone()
        } else {
            Vec::new()
        }
    }
    fn stats(&self) -> serde_json::Value {
        serde_json::json!({ "writes": self.writes.len() })
    }
}

struct Rig {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    pci: PciBus,
}

impl Rig {
    fn new() -> Self {
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let pci = PciBus::pc(pio.clone(), mmio.clone()).expect("pc bus");
        Self { pio, mmio, pci }
    }

    fn add(&self, name: &str, dev: Fake, slot: Option<PciAddr>) -> (PciAddr, Arc<Mutex<Fake>>) {
        let dev = Arc::new(Mutex::new(dev));
        let addr = self.pci.add(name, dev.clone(), slot).expect("add");
        (addr, dev)
    }

    fn select(&self, addr: PciAddr, reg: u8) {
        let v = addr.config_address(reg);
        assert_eq!(
            self.pio.write(0xcf8, &v.to_le_bytes()),
            Some(Action::Continue)
        );
    }

    /// A configuration read of `size` bytes at register `reg` (any lane).
    fn cfg_read(&self, addr: PciAddr, reg: u8, size: usize) -> u32 {
        self.select(addr, reg);
        let mut b = [0u8; 4];
        assert!(self.pio.read(0xcfc + u64::from(reg & 3), &mut b[..size]));
        u32::from_le_bytes(b)
    }

    fn cfg_write(&self, addr: PciAddr, reg: u8, value: u32, size: usize) {
        self.select(addr, reg);
        let b = value.to_le_bytes();
        self.pio.write(0xcfc + u64::from(reg & 3), &b[..size]);
    }

    fn mem8(&self, addr: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        self.mmio.read(addr, &mut b).then_some(b[0])
    }

    fn io8(&self, port: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        self.pio.read(port, &mut b).then_some(b[0])
    }

    fn bar(&self, addr: PciAddr, index: u8) -> u64 {
        u64::from(self.cfg_read(addr, 0x10 + 4 * index, 4))
    }
}

const NIC: PciAddr = PciAddr::new(3, 0);

#[test]
fn enumeration_finds_the_chipset_and_absent_functions_read_ones() {
    let rig = Rig::new();
    let host = PciAddr::new(0, 0);
    let isa = PciAddr::new(1, 0);
    assert_eq!(rig.cfg_read(host, 0, 4), 0x1237_8086);
    assert_eq!(rig.cfg_read(host, 8, 4) >> 8, 0x06_00_00);
    assert_eq!(rig.cfg_read(isa, 0, 4), 0x7000_8086);
    assert_eq!(rig.cfg_read(isa, 8, 4) >> 8, 0x06_01_00);
    assert_eq!(rig.cfg_read(isa, 0x0e, 1), 0x80, "multi-function");
    assert_eq!(rig.cfg_read(isa, 0x60, 4), 0x8080_8080, "PIRQ routing off");
    for absent in [
        PciAddr::new(1, 1),
        PciAddr::new(2, 0),
        NIC,
        PciAddr::new(31, 7),
    ] {
        assert_eq!(rig.cfg_read(absent, 0, 2), 0xffff, "{absent}");
        assert_eq!(rig.cfg_read(absent, 0x10, 4), 0xffff_ffff, "{absent}");
    }
    // Another bus, and the enable bit clear: nothing answers.
    rig.pio.write(0xcf8, &(0x8001_0000u32).to_le_bytes());
    let mut b = [0u8; 4];
    rig.pio.read(0xcfc, &mut b);
    assert_eq!(b, [0xff; 4]);
    rig.pio.write(0xcf8, &0u32.to_le_bytes());
    rig.pio.read(0xcfc, &mut b);
    assert_eq!(b, [0xff; 4]);
    // The address register reads back, reserved bits clear.
    rig.pio.write(0xcf8, &0xffff_ffffu32.to_le_bytes());
    rig.pio.read(0xcf8, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x80ff_fffc);

    let (addr, _) = rig.add("nic0", Fake::new(1, 1), None);
    assert_eq!(addr, NIC, "first free device number");
    assert_eq!(rig.cfg_read(NIC, 0, 4), 0x100e_8086);
    let names: Vec<String> = rig.pci.functions().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["i440fx", "piix3-isa", "nic0"]);
}

#[test]
fn byte_and_word_accesses_use_their_lanes() {
    let rig = Rig::new();
    let host = PciAddr::new(0, 0);
    assert_eq!(rig.cfg_read(host, 0, 1), 0x86);
    assert_eq!(rig.cfg_read(host, 1, 1), 0x80);
    assert_eq!(rig.cfg_read(host, 2, 1), 0x37);
    assert_eq!(rig.cfg_read(host, 3, 1), 0x12);
    assert_eq!(rig.cfg_read(host, 0, 2), 0x8086);
    assert_eq!(rig.cfg_read(host, 2, 2), 0x1237);
    assert_eq!(rig.cfg_read(host, 0x0b, 1), 0x06);
    // A dword at 0xCFE: two bytes of the register, then past 0xCFF: all ones.
    rig.select(host, 0);
    let mut b = [0u8; 4];
    rig.pio.read(0xcfe, &mut b);
    assert_eq!(b, [0x37, 0x12, 0xff, 0xff]);

    // Byte writes at each lane of 0x0c (cache line, latency timer: writable; header
    // type, BIST: read-only).
    let (_, _) = rig.add("nic0", Fake::new(1, 1), None);
    for (lane, v) in [(0u8, 0x11u32), (1, 0x22), (2, 0x33), (3, 0x44)] {
        rig.cfg_write(NIC, 0x0c + lane, v, 1);
    }
    assert_eq!(rig.cfg_read(NIC, 0x0c, 4), 0x0000_2211);
    rig.cfg_write(NIC, 0x0e, 0xffff, 2);
    assert_eq!(rig.cfg_read(NIC, 0x0c, 4), 0x0000_2211);
    rig.cfg_write(NIC, 0x0c, 0x5566, 2);
    assert_eq!(rig.cfg_read(NIC, 0x0d, 1), 0x55);
    // Only a dword access reaches the address register.
    rig.select(NIC, 0);
    rig.pio.write(0xcf8, &[0]);
    rig.pio.write(0xcf9, &[0x06]);
    rig.pio.write(0xcfa, &[0x00, 0x00]);
    assert_eq!(rig.cfg_read(NIC, 0, 4), 0x100e_8086);
    let mut one = [0u8; 1];
    rig.pio.read(0xcf8, &mut one);
    assert_eq!(one, [0xff]);
    assert!(rig.pci.stats().dropped >= 4);
}

#[test]
fn firmware_assigns_bars_decode_and_interrupt_line() {
    let rig = Rig::new();
    let (_, nic) = rig.add("nic0", Fake::new(1, 1), None);
    let (b, _) = rig.add("nic1", Fake::new(2, 2), None);
    assert_eq!(b, PciAddr::new(4, 0));
    let mem0 = rig.bar(NIC, 0);
    let io0 = rig.bar(NIC, 1);
    assert_eq!(mem0, pci_bus::MEM_WINDOW_SMALL.0);
    assert_eq!(io0, 0xc001, "I/O BAR from 0xC000, flag bit set");
    let mem1 = rig.bar(b, 0);
    assert!(
        mem1 >= mem0 + 0x1000 && mem1.is_multiple_of(0x1000),
        "{mem1:#x}"
    );
    assert_eq!(rig.bar(b, 1), 0xc041);
    assert_eq!(rig.cfg_read(NIC, 4, 2) & 7, 7, "I/O, memory, bus master");
    assert_eq!(rig.cfg_read(NIC, 0x3c, 1), 19);
    assert_eq!(rig.cfg_read(NIC, 0x3d, 1), 1);
    assert_eq!(rig.cfg_read(b, 0x3c, 1), 21, "16 + (4 + 2 - 1) % 8");
    assert_eq!(rig.pci.intx_routes(), vec![(3, 1, 19), (4, 2, 21)]);

    assert_eq!(rig.mem8(mem0 + 0xfff), Some(0x10));
    assert_eq!(rig.io8(0xc03f), Some(0x11));
    assert_eq!(rig.mem8(mem1), Some(0x20));
    assert_eq!(rig.io8(0xc040), Some(0x21));
    rig.mmio.write(mem0 + 8, &[1, 2, 3, 4]);
    assert_eq!(nic.lock().unwrap().writes, vec![(0, 8, vec![1, 2, 3, 4])]);
    assert_eq!(rig.mmio.name_at(mem0).as_deref(), Some("nic0"));
    assert_eq!(rig.pio.name_at(0xc040).as_deref(), Some("nic1"));
    assert_eq!(rig.pio.name_at(0xcfc).as_deref(), Some("pci-host"));
    let stats = rig.pci.device_stats();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0].2["writes"], 1);
}

#[test]
fn sizing_and_moving_a_bar_moves_the_device() {
    let rig = Rig::new();
    rig.add("nic0", Fake::new(1, 1), None);
    let old_mem = rig.bar(NIC, 0);
    // Linux's order: decode off, size, restore, then program.
    rig.cfg_write(NIC, 4, 0, 2);
    rig.cfg_write(NIC, 0x10, 0xffff_ffff, 4);
    assert_eq!(rig.bar(NIC, 0), 0xffff_f000);
    rig.cfg_write(NIC, 0x14, 0xffff_ffff, 4);
    assert_eq!(rig.bar(NIC, 1), 0xffff_ffc1);
    rig.cfg_write(NIC, 0x10, 0xe010_0000, 4);
    rig.cfg_write(NIC, 0x14, 0xd000, 4);
    assert_eq!(rig.mem8(0xe010_0000), None, "decode still off");
    rig.cfg_write(NIC, 4, 3, 2);
    assert_eq!(rig.mem8(old_mem), None);
    assert_eq!(rig.io8(0xc000), None);
    assert_eq!(rig.mem8(0xe010_0000), Some(0x10));
    assert_eq!(rig.mem8(0xe010_0fff), Some(0x10));
    assert_eq!(rig.mem8(0xe010_1000), None);
    assert_eq!(rig.io8(0xd03f), Some(0x11));
    // Byte-wise move of the I/O BAR: each step is remapped.
    rig.cfg_write(NIC, 0x15, 0xe0, 1);
    assert_eq!(rig.io8(0xe000), Some(0x11));
    assert_eq!(rig.io8(0xd000), None);
    // Memory decode off unmaps only the memory BAR.
    rig.cfg_write(NIC, 4, 1, 2);
    assert_eq!(rig.mem8(0xe010_0000), None);
    assert_eq!(rig.io8(0xe000), Some(0x11));
    rig.cfg_write(NIC, 4, 0, 2);
    assert_eq!(rig.io8(0xe000), None);
    let f = &rig.pci.functions()[2];
    assert!(f.mapped.is_empty());
    assert_eq!(rig.pci.stats().bar_conflicts, 0);
}

#[test]
fn a_bar_moved_over_another_device_stays_unmapped_until_room_is_made() {
    let rig = Rig::new();
    rig.add("nic0", Fake::new(1, 1), None);
    let (b, _) = rig.add("nic1", Fake::new(2, 1), None);
    let a_mem = rig.bar(NIC, 0);
    let b_mem = rig.bar(b, 0);
    rig.cfg_write(b, 0x10, a_mem as u32, 4);
    assert_eq!(
        rig.mem8(a_mem),
        Some(0x10),
        "the first device keeps its range"
    );
    assert_eq!(rig.mem8(b_mem), None);
    assert_eq!(rig.pci.stats().bar_conflicts, 1);
    // Another unrelated write does not count the same conflict again.
    rig.cfg_write(b, 0x0c, 0x10, 1);
    assert_eq!(rig.pci.stats().bar_conflicts, 1);
    // Overlapping partly (a 4 KiB BAR can only align to 4 KiB; use the I/O BARs).
    rig.cfg_write(b, 0x14, 0xc000, 4);
    assert_eq!(rig.io8(0xc000), Some(0x11));
    assert_eq!(rig.pci.stats().bar_conflicts, 2);
    // The first device moves away: the waiting BARs land.
    rig.cfg_write(NIC, 0x10, 0xe000_0000, 4);
    rig.cfg_write(NIC, 0x14, 0xe000, 4);
    assert_eq!(rig.mem8(a_mem), Some(0x20));
    assert_eq!(rig.io8(0xc000), Some(0x21));
    assert_eq!(rig.mem8(0xe000_0000), Some(0x10));
    // Over a reserved range (guest RAM): unmapped and counted.
    rig.pci.reserve(BarKind::Memory32, 0, 64 << 20);
    rig.cfg_write(NIC, 0x10, 0x10_0000, 4);
    assert_eq!(rig.mem8(0x10_0000), None);
    assert_eq!(rig.pci.stats().bar_conflicts, 3);
    // Over the configuration ports themselves.
    rig.cfg_write(NIC, 0x14, 0xcf8, 4);
    assert_eq!(rig.cfg_read(NIC, 0, 4), 0x100e_8086, "0xCF8 still works");
    assert_eq!(rig.pci.stats().bar_conflicts, 4);
}

#[test]
fn legacy_ranges_are_mapped_once_and_conflicts_are_refused() {
    let rig = Rig::new();
    let mut ide = Fake::new(3, 0);
    ide.legacy = vec![(BarKind::Io, 0x1f0, 8, 8), (BarKind::Io, 0x3f6, 1, 9)];
    let (addr, _) = rig.add("ide", ide, Some(pci_bus::IDE_FUNCTION));
    assert_eq!(addr, PciAddr::new(1, 1));
    assert_eq!(rig.io8(0x1f7), Some(0x38));
    assert_eq!(rig.io8(0x3f6), Some(0x39));
    assert_eq!(rig.cfg_read(addr, 0x3c, 1), 0, "no pin, no line");
    // Legacy ranges decode whatever the command register says.
    rig.cfg_write(addr, 4, 0, 2);
    assert_eq!(rig.io8(0x1f0), Some(0x38));
    assert!(rig.pci.intx_routes().is_empty());

    let mut clash = Fake::new(4, 1);
    clash.legacy = vec![(BarKind::Io, 0x170, 8, 8), (BarKind::Io, 0x1f4, 2, 9)];
    let err = rig
        .pci
        .add("clash", Arc::new(Mutex::new(clash)), None)
        .expect_err("overlap");
    assert!(matches!(err, PciError::Legacy { .. }), "{err}");
    assert_eq!(rig.io8(0x170), None, "nothing of a refused device stays");
    assert_eq!(rig.pci.free_slot(), Some(NIC));
}

#[test]
fn bad_slots_and_names_are_refused() {
    let rig = Rig::new();
    let dev = || -> Arc<Mutex<dyn PciDevice>> { Arc::new(Mutex::new(Fake::new(1, 1))) };
    let err = |r: Result<PciAddr, PciError>| r.expect_err("refused");
    assert!(matches!(
        err(rig.pci.add("x", dev(), Some(PciAddr::new(0, 0)))),
        PciError::Taken { .. }
    ));
    assert!(matches!(
        err(rig.pci.add("x", dev(), Some(PciAddr::new(5, 1)))),
        PciError::NoFunctionZero(_)
    ));
    assert!(matches!(
        err(rig.pci.add("x", dev(), Some(PciAddr::new(32, 0)))),
        PciError::BadAddress(_)
    ));
    assert!(matches!(
        err(rig.pci.add("i440fx", dev(), None)),
        PciError::DuplicateName(_)
    ));
    for i in 3..32 {
        rig.pci.add(&format!("n{i}"), dev(), None).expect("room");
    }
    assert!(matches!(err(rig.pci.add("x", dev(), None)), PciError::Full));
}

/// Random traffic on 0xCF8..0xD00 (mostly well-formed, aimed at real functions):
/// never a panic, and afterwards every mapped range matches its function's header.
#[test]
fn hostile_configuration_traffic_is_harmless() {
    for seed in [1u64, 0xdead_beef, 42] {
        let rig = Rig::new();
        rig.add("nic0", Fake::new(1, 1), None);
        rig.add("nic1", Fake::new(2, 3), None);
        let mut ide = Fake::new(3, 0);
        ide.legacy = vec![(BarKind::Io, 0x1f0, 8, 8)];
        rig.add("ide", ide, Some(pci_bus::IDE_FUNCTION));
        let mut rng = Rng(seed);
        for _ in 0..20_000 {
            let port = 0xcf8 + rng.below(8);
            let size = [1usize, 2, 4][rng.below(3) as usize];
            let mut v = rng.next_u64().to_le_bytes();
            if port == 0xcf8 && size == 4 && rng.below(4) != 0 {
                // A plausible address: enabled, bus 0, a device near the populated ones.
                let dev = rng.below(6) as u8;
                let func = rng.below(3) as u8;
                let reg = [0u8, 4, 0x0c, 0x10, 0x14, 0x18, 0x3c][rng.below(7) as usize];
                let a = PciAddr::new(dev, func).config_address(reg);
                v[..4].copy_from_slice(&a.to_le_bytes());
            }
            if rng.below(2) == 0 {
                rig.pio.write(port, &v[..size]);
            } else {
                rig.pio.read(port, &mut v[..size]);
            }
        }
        // The host still answers, and the buses agree with the headers.
        assert_eq!(rig.cfg_read(PciAddr::new(0, 0), 0, 4), 0x1237_8086);
        assert_eq!(rig.io8(0x1f0), Some(0x38));
        for f in rig.pci.functions() {
            for m in &f.mapped {
                let bus = match m.kind {
                    BarKind::Io => &rig.pio,
                    BarKind::Memory32 => &rig.mmio,
                };
                assert_eq!(bus.name_at(m.base).as_deref(), Some(f.name.as_str()));
                assert_eq!(
                    bus.name_at(m.base + m.size - 1).as_deref(),
                    Some(f.name.as_str())
                );
                let raw = u64::from(rig.cfg_read(f.addr, 0x10 + 4 * m.index as u8, 4));
                assert_eq!(raw & !0xf & !3, m.base & !0xf & !3, "{}: {m:?}", f.name);
            }
        }
        let s = rig.pci.stats();
        assert!(
            s.config_writes > 0 && s.config_reads > 0 && s.bar_maps > 0,
            "{s:?}"
        );
    }
}

/// What `mpparse.c` needs, read back from guest memory.
#[derive(Debug, Default)]
struct Mp {
    cpus: Vec<(u8, u8)>,
    buses: Vec<(u8, String)>,
    ioapics: Vec<(u8, u8, u32)>,
    io_ints: Vec<(u8, u16, u8, u8, u8, u8)>,
    local_ints: Vec<(u8, u8, u8)>,
    lapic: u32,
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
}

fn parse_mp(mem: &host_shim::devices::GuestMemory) -> Mp {
    // Scan the BIOS area on 16-byte boundaries as Linux does.
    let mut area = vec![0u8; 0x1_0000];
    mem.read_slice(&mut area, GuestAddress(0xf_0000))
        .expect("BIOS area");
    let at = (0..area.len() - 16)
        .step_by(16)
        .find(|&i| &area[i..i + 4] == b"_MP_" && sum(&area[i..i + 16]) == 0)
        .expect("floating pointer");
    let fp = &area[at..at + 16];
    assert_eq!(
        (fp[8], fp[9], fp[11]),
        (1, 4, 0),
        "length, revision, default config"
    );
    let table_at = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
    let mut header = [0u8; 44];
    mem.read_slice(&mut header, GuestAddress(table_at))
        .expect("table");
    assert_eq!(&header[..4], b"PCMP");
    let len = u16::from_le_bytes([header[4], header[5]]) as usize;
    let mut table = vec![0u8; len];
    mem.read_slice(&mut table, GuestAddress(table_at))
        .expect("table");
    assert_eq!(sum(&table), 0, "table checksum");
    assert_eq!(table[6], 4);
    let count = u16::from_le_bytes([table[34], table[35]]);
    let mut mp = Mp {
        lapic: u32::from_le_bytes(table[36..40].try_into().unwrap()),
        ..Default::default()
    };
    let mut off = 44;
    for _ in 0..count {
        let e = &table[off..];
        off += match e[0] {
            0 => {
                mp.cpus.push((e[1], e[3]));
                20
            }
            1 => {
                mp.buses
                    .push((e[1], String::from_utf8_lossy(&e[2..8]).trim().to_owned()));
                8
            }
            2 => {
                mp.ioapics
                    .push((e[1], e[2], u32::from_le_bytes(e[4..8].try_into().unwrap())));
                8
            }
            3 => {
                mp.io_ints.push((
                    e[1],
                    u16::from_le_bytes([e[2], e[3]]),
                    e[4],
                    e[5],
                    e[6],
                    e[7],
                ));
                8
            }
            4 => {
                mp.local_ints.push((e[1], e[6], e[7]));
                8
            }
            t => panic!("entry type {t}"),
        };
    }
    assert_eq!(off, len, "entries fill the table");
    mp
}

#[test]
fn mp_table_describes_cpu_buses_ioapic_and_routes() {
    let rig = Rig::new();
    rig.add("nic0", Fake::new(1, 1), None);
    rig.add("nic1", Fake::new(2, 4), None);
    let irqs: Vec<MpPciIrq> = rig
        .pci
        .intx_routes()
        .into_iter()
        .map(|(device, pin, gsi)| MpPciIrq {
            device,
            pin,
            ioapic_pin: gsi as u8,
        })
        .collect();
    let layout = MemoryLayout::new(16).expect("layout");
    let mem = layout.allocate().expect("memory");
    boot::write_mp_table(&mem, &irqs).expect("write");
    assert_eq!(MP_TABLE_ADDR, 0xf_0000);
    let mp = parse_mp(&mem);
    assert_eq!(mp.lapic, 0xfee0_0000);
    assert_eq!(
        mp.cpus,
        vec![(0, 3)],
        "LAPIC 0, enabled bootstrap processor"
    );
    assert_eq!(mp.buses, vec![(0, "PCI".into()), (1, "ISA".into())]);
    assert_eq!(mp.ioapics, vec![(boot::MP_IOAPIC_ID, 0x11, 0xfec0_0000)]);
    let id = boot::MP_IOAPIC_ID;
    let isa: Vec<_> = mp.io_ints.iter().filter(|e| e.2 == 1).collect();
    assert_eq!(isa.len(), 15);
    assert!(isa.contains(&&(0, 0, 1, 0, id, 2)), "IRQ 0 -> pin 2");
    assert!(isa.contains(&&(0, 0, 1, 14, id, 14)));
    assert!(!isa.iter().any(|e| e.3 == 2), "no cascade entry");
    let pci: Vec<_> = mp.io_ints.iter().filter(|e| e.2 == 0).copied().collect();
    // (type INT, level + active low, bus PCI, device << 2 | pin - 1, IOAPIC, pin)
    assert_eq!(
        pci,
        vec![(0, 0xf, 0, 3 << 2, id, 19), (0, 0xf, 0, 4 << 2 | 3, id, 23)]
    );
    assert_eq!(
        mp.local_ints,
        vec![(3, 0xff, 0), (1, 0xff, 1)],
        "ExtINT LINT0, NMI LINT1"
    );
    // The area is reserved in the memory map the guest gets.
    assert!(layout.memmap().iter().any(|e| {
        e.type_ == pv_drivers::abi::start_info::XEN_HVM_MEMMAP_TYPE_RESERVED
            && e.addr <= MP_TABLE_ADDR
            && e.addr + e.size >= boot::MP_TABLE_AREA.1
    }));
}

/// The plumbing in a real VM (a few hand-assembled instructions, not a guest OS): a
/// model added through the Vmm is found through 0xCF8/0xCFC at 00:03.0 and reached at
/// its firmware-assigned BAR, its exits and counters land in `stats.devices`, its INTx
/// line drives GSI 19 of the in-kernel IOAPIC, and the MP table is in guest memory.
#[test]
fn vmm_puts_a_pci_model_into_the_vm() {
    if !common::kvm_usable("vmm_puts_a_pci_model_into_the_vm") {
        return;
    }
    let bar0 = pci_bus::MEM_WINDOW_SMALL.0 as u32;
    let mut a = common::Asm::new();
    a.raw(&[0xb8])
        .raw(&NIC.config_address(0).to_le_bytes()) // mov eax, 0x80001800
        .mov_dx(0xcf8)
        .raw(&[0xef]) // out dx, eax
        .mov_dx(0xcfc)
        .raw(&[0xed]) // in eax, dx
        .raw(&[0x3d])
        .raw(&0x100e_8086u32.to_le_bytes()) // cmp eax, ids
        .jump(0x75, "fail");
    a.raw(&[0xa3]).raw(&(bar0 + 8).to_le_bytes()); // mov [bar0 + 8], eax
    a.exit(0);
    a.label("fail").exit(1);

    let capture = Capture::new();
    let mut config = VmConfig::new(Kernel::from_bytes("pci.elf", a.kernel()));
    config.mem_mib = 16;
    config.timeout = Some(Duration::from_secs(20));
    config.console = ConsoleSink::new(capture.clone());
    let mut vmm = Vmm::new(config).expect("VM set up");
    let slot = vmm.pci_bus().free_slot().expect("slot");
    assert_eq!(slot, NIC);
    let irq = vmm.pci_intx_line(slot, 1).expect("INTA");
    let nic = Arc::new(Mutex::new(Fake::new(1, 1)));
    assert_eq!(
        vmm.add_pci_device("nic0", nic.clone(), Some(slot))
            .expect("add"),
        NIC
    );
    irq.set_level(true);
    irq.set_level(false);
    let mem = vmm.guest_memory();
    let report = vmm.run().expect("run");
    assert_eq!(
        report.outcome,
        Outcome::Exited { status: 0 },
        "{}",
        capture.text()
    );
    assert_eq!(
        nic.lock().unwrap().writes,
        vec![(0, 8, 0x100e_8086u32.to_le_bytes().to_vec())]
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
    let dev = &json["stats"]["devices"]["nic0"];
    assert_eq!(dev["pci"], "00:03.0");
    assert_eq!(dev["exits"]["mmio_write"], 1);
    assert_eq!(dev["writes"], 1, "the model's own counters");
    let host = &json["stats"]["devices"]["pci-host"];
    assert_eq!(
        (
            host["exits"]["pio_write"].as_u64(),
            host["exits"]["pio_read"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(host["config_reads"], 1);
    assert_eq!(json["stats"]["irq_asserts"]["19"], 1);
    let mp = parse_mp(&mem);
    assert!(
        mp.io_ints
            .contains(&(0, 0xf, 0, 3 << 2, boot::MP_IOAPIC_ID, 19))
    );
}

#[test]
fn kvm_irq_lines_reach_the_in_kernel_irqchip() {
    if !common::kvm_usable("kvm_irq_lines_reach_the_in_kernel_irqchip") {
        return;
    }
    let vm = host_shim::kvm::Vm::new().expect("VM");
    let lines: Vec<_> = [4u32, 14, 19, 23].iter().map(|&g| vm.irq_line(g)).collect();
    for line in &lines {
        host_shim::devices::IrqLine::set_level(&**line, true);
        host_shim::devices::IrqLine::set_level(&**line, false);
        assert_eq!(line.asserts(), 1);
    }
    assert_eq!(vm.irq_lines().errors(), 0, "KVM_IRQ_LINE refused a GSI");
}

/// Records the doorbells the bus registers, as KVM's ioeventfds would hold them.
#[derive(Default)]
struct Bells(Mutex<Vec<u64>>);

impl pci_bus::Doorbells for Bells {
    fn register(&self, addr: u64, _event: &vmm_sys_util::eventfd::EventFd) -> bool {
        self.0.lock().unwrap().push(addr);
        true
    }
    fn unregister(&self, addr: u64, _event: &vmm_sys_util::eventfd::EventFd) {
        let mut v = self.0.lock().unwrap();
        let i = v
            .iter()
            .position(|&a| a == addr)
            .expect("unregistered what was not there");
        v.remove(i);
    }
}

#[test]
fn doorbells_follow_their_bar_on_and_off_the_bus() {
    let rig = Rig::new();
    let bells = Arc::new(Bells::default());
    rig.pci.set_doorbells(bells.clone());
    let mut fake = Fake::new(1, 1);
    let event = Arc::new(vmm_sys_util::eventfd::EventFd::new(0).unwrap());
    fake.bells = vec![
        (0x10, event.clone()),
        (0x14, event),
        (
            0x2000,
            Arc::new(vmm_sys_util::eventfd::EventFd::new(0).unwrap()),
        ),
    ];
    let (addr, _) = rig.add("bells", fake, Some(NIC));
    let base = rig.bar(addr, 0);
    // Offsets past the 4 KiB BAR are not the device's to claim.
    assert_eq!(*bells.0.lock().unwrap(), [base + 0x10, base + 0x14]);
    // Decode off: gone; moved and decode on: at the new place only.
    rig.cfg_write(addr, 0x04, 0, 2);
    assert!(bells.0.lock().unwrap().is_empty());
    rig.cfg_write(addr, 0x10, 0xe100_0000, 4);
    rig.cfg_write(addr, 0x04, 0x2, 2);
    assert_eq!(*bells.0.lock().unwrap(), [0xe100_0010, 0xe100_0014]);
    assert_eq!(rig.pci.stats().doorbells, 2);
}

#[test]
fn msi_messages_go_through_irqfds_on_routes_of_their_own() {
    use host_shim::devices::MsiSink;
    if !common::kvm_usable("msi_messages_go_through_irqfds_on_routes_of_their_own") {
        return;
    }
    let vm = host_shim::kvm::Vm::new().expect("VM");
    let (a, b) = (vm.msi_sender(), vm.msi_sender());
    // A new message gets a route and an irqfd; the same message again reuses it; the
    // two senders share the VM's routes but count their own messages.
    assert!(a.send(0xfee0_0000, 0x41));
    assert!(a.send(0xfee0_0000, 0x41));
    assert!(b.send(0xfee0_0000, 0x42));
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa["irqfd"], 2, "{sa}");
    assert_eq!(sb["irqfd"], 1, "{sb}");
    assert_eq!(sb["vm_msi_routes"], 2, "{sb}");
    assert_eq!(sa["signal_msi"], 0, "{sa}");
    // Beyond the route limit, messages go through KVM_SIGNAL_MSI (nothing delivers
    // them without a vCPU: the sender says so) and no route is added.
    for v in 0..host_shim::kvm::MAX_MSI_ROUTES as u32 {
        b.send(0xfee0_0000, 0x1_0000 + v);
    }
    let sb = b.stats();
    assert_eq!(sb["vm_msi_routes"], host_shim::kvm::MAX_MSI_ROUTES, "{sb}");
    assert_eq!(sb["signal_msi"], 2, "{sb}");
    // The PC routes survived every rebuild of the routing table.
    let line = vm.irq_line(19);
    host_shim::devices::IrqLine::set_level(&*line, true);
    host_shim::devices::IrqLine::set_level(&*line, false);
    assert_eq!(vm.irq_lines().errors(), 0);
}

/// Dropping the machine frees the bus and every device on it (with its guest memory):
/// the port bus holds the host's configuration ports, and the host holds the port bus
/// only weakly (LeakSanitizer found the strong cycle in the `pci_config` fuzz target).
#[test]
fn dropping_the_machine_frees_the_bus_and_its_devices() {
    let rig = Rig::new();
    let (_, dev) = rig.add("nic0", Fake::new(1, 1), None);
    // Map its BARs, so the buses hold it too.
    rig.cfg_write(NIC, 4, 3, 2);
    assert!(rig.mem8(rig.bar(NIC, 0)).is_some());
    let host = Arc::downgrade(&rig.pio);
    assert!(Arc::strong_count(&dev) > 1);
    drop(rig);
    assert_eq!(Arc::strong_count(&dev), 1, "a device outlived its machine");
    assert!(
        host.upgrade().is_none(),
        "the port bus outlived its machine"
    );
}
