//! The guest's e1000 driver (`hw_devices::e1000`) against the shim's 82540EM model
//! (`host_shim::devices::e1000`) in one process, over the same guest RAM, with a
//! [`MemLink`] as the wire: frames both ways, interrupts, exit counts, hostile
//! register sequences from the guest side and a lying device on the driver side.

mod emu_common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emu_common::{LevelLog, PciRegion, Ram};
use host_shim::devices::GuestMemory;
use host_shim::devices::e1000::{E1000 as Model, E1000Worker};
use host_shim::devices::pci::PciDevice;
use host_shim::hostio::tap::{Link, MemLink};
use host_shim::testing::Rng;
use hw_devices::e1000::{E1000, E1000Config, InitError, RxDesc, eerd, reg, rx_status};
use hw_devices::pci::command;
use hw_devices::{Mmio, PAGE_SIZE};
use pv_drivers::device::{NetDevice, NetError};
use vm_memory::{Bytes, GuestAddress};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xe1, 0x00, 0x01];
const RAM_MIB: u64 = 8;
const PATTERN: u8 = 0xa5;

type Driver = E1000<PciRegion<Model>, Ram>;

struct Rig {
    dev: Arc<Mutex<Model>>,
    host: MemLink,
    irq: Arc<LevelLog>,
    mem: GuestMemory,
    accesses: Arc<std::sync::atomic::AtomicU64>,
}

/// A model on fresh RAM (filled with [`PATTERN`]), decoding and bus-mastering.
fn model(mitigation: bool) -> (Rig, Ram) {
    let ram = Ram::new(RAM_MIB);
    let fill = vec![PATTERN; (RAM_MIB << 20) as usize];
    ram.mem.write_slice(&fill, GuestAddress(0)).expect("fill");
    let (dev_end, host) = MemLink::pair(4096);
    let irq = LevelLog::new();
    let mut m = Model::new(MAC, Box::new(dev_end), irq.clone(), ram.mem.clone());
    m.set_mitigation(mitigation);
    m.config_write(
        4,
        &(command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes(),
    );
    let rig = Rig {
        dev: Arc::new(Mutex::new(m)),
        host,
        irq,
        mem: ram.mem.clone(),
        accesses: Arc::new(Default::default()),
    };
    (rig, ram)
}

fn driver(rig: &mut Rig, ram: Ram, config: E1000Config) -> Driver {
    let region = PciRegion::new(rig.dev.clone(), 0, 0);
    rig.accesses = region.accesses.clone();
    E1000::new(region, ram, config).expect("driver init")
}

/// Pages the driver allocates for `config` (rings, then one page per two buffers).
fn driver_pages(c: &E1000Config) -> u64 {
    let ring = |n: usize| ((n * 16).div_ceil(PAGE_SIZE) + n.div_ceil(2)) as u64;
    ring(c.rx_descs) + ring(c.tx_descs)
}

/// Guest RAM outside the driver's pages still holds the pattern: no DMA went there.
fn assert_ram_untouched(mem: &GuestMemory, config: &E1000Config) {
    let used_end = (1 << 20) + driver_pages(config) * PAGE_SIZE as u64;
    let mut buf = vec![0u8; (RAM_MIB << 20) as usize];
    mem.read_slice(&mut buf, GuestAddress(0)).expect("read");
    let outside = buf[..1 << 20]
        .iter()
        .chain(&buf[used_end as usize..])
        .filter(|b| **b != PATTERN)
        .count();
    assert_eq!(outside, 0, "bytes changed outside the driver's pages");
}

fn frame(len: usize, seed: u32, dst: [u8; 6]) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len.max(18))
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed) as u8)
        .collect();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 9]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..18].copy_from_slice(&seed.to_be_bytes());
    f.truncate(len);
    f
}

fn counters(rig: &Rig) -> serde_json::Value {
    rig.dev.lock().expect("lock").stats()
}

/// Delivers what waits on the link (as the worker would), until nothing moves.
fn pump(rig: &Rig) -> usize {
    let mut total = 0;
    loop {
        let n = rig.dev.lock().expect("lock").pump_rx();
        total += n;
        if n == 0 {
            return total;
        }
    }
}

fn receive_all(drv: &mut Driver, out: &mut Vec<Vec<u8>>) -> usize {
    let mut n = 0;
    while drv.receive(&mut |f| out.push(f.to_vec())).expect("receive") {
        n += 1;
    }
    n
}

#[test]
fn driver_initialises_from_the_eeprom_and_sees_link_up() {
    let (mut rig, ram) = model(false);
    let mut drv = driver(&mut rig, ram, E1000Config::default());
    assert_eq!(drv.mac(), MAC);
    assert_eq!(drv.info().mac, MAC);
    assert!(drv.link_up());
    assert_eq!(drv.phy_read(2), Some(0x0141));
    assert_eq!(drv.phy_read(3), Some(0x0c20));
    let c = counters(&rig);
    assert_eq!(c["resets"], 1);
    assert_eq!(c["register_reads"]["EERD"], 64, "every word read once: {c}");
    assert!(!rig.irq.asserted());
}

#[test]
fn frames_both_ways_with_interrupts_and_exit_counts() {
    let (mut rig, ram) = model(false);
    let config = E1000Config::default();
    let mut drv = driver(&mut rig, ram, config);

    // Guest to host: every size class, in batches of 1..=7 frames per kick.
    let sizes: Vec<usize> = (0..300).map(|i| 60 + (i * 97) % (1514 - 60 + 1)).collect();
    let mut sent = Vec::new();
    let mut kicks = 0;
    for (b, chunk) in sizes.chunks(7).enumerate() {
        for (i, &len) in chunk.iter().take(b % 7 + 1).enumerate() {
            let f = frame(len, (b * 7 + i) as u32, [0xff; 6]);
            drv.transmit(len, &mut |buf| buf.copy_from_slice(&f))
                .expect("transmit");
            sent.push(f);
        }
        drv.kick();
        kicks += 1;
        drv.poll().expect("poll");
        assert!(!rig.irq.asserted(), "the ICR read in poll lowers the line");
    }
    let mut got = Vec::new();
    while let Some(f) = rig.host.recv_timeout(Duration::ZERO) {
        got.push(f);
    }
    assert_eq!(got, sent);
    let c = counters(&rig);
    assert_eq!(c["tdt_writes"], kicks + 1, "+1: TDT = 0 at init");
    assert_eq!(drv.stats().tx_kicks, kicks);
    assert_eq!(c["tx"]["frames"], sent.len() as u64);
    assert_eq!(drv.stats().tx_reaped, sent.len() as u64);

    // Host to guest: a burst of 3 rings' worth, refilled as the guest takes them.
    let burst: Vec<Vec<u8>> = (0..3 * config.rx_descs)
        .map(|i| frame(60 + (i * 131) % 1455, 10_000 + i as u32, MAC))
        .collect();
    for f in &burst {
        rig.host.send_frame(f).expect("send");
    }
    let mut received = Vec::new();
    let rises_before = rig.irq.rises();
    let mut rounds = 0;
    while received.len() < burst.len() {
        rounds += 1;
        assert!(rounds < 100, "no progress: {} frames", received.len());
        pump(&rig);
        assert!(rig.irq.asserted(), "RXT0 raised the line");
        drv.poll().expect("poll");
        assert!(!rig.irq.asserted());
        receive_all(&mut drv, &mut received);
    }
    assert_eq!(received, burst);
    assert!(rig.irq.rises() > rises_before);
    let c = counters(&rig);
    assert!(c["rx"]["stalls_no_buffer"].as_u64().expect("n") >= 2, "{c}");
    let s = drv.stats();
    assert_eq!(s.rx_frames, burst.len() as u64);
    assert!(s.irq_rxt0 > 0 && s.irq_rxdmt0 > 0, "{s:?}");
    assert_eq!(c["rdt_writes"], s.rdt_writes + 1, "+1: RDT = 0 at init");
    assert_eq!(c["interrupts"]["icr_reads"], s.icr_reads + 1, "+1 in reset");
    assert_eq!(c["drops"]["rx_overrun"], 0);

    // Every register access the driver made reached the model, and nothing else did.
    assert_eq!(
        rig.accesses.load(Ordering::Relaxed),
        s.mmio_reads + s.mmio_writes
    );
    assert_eq!(c["mmio_reads"], s.mmio_reads);
    assert_eq!(c["mmio_writes"], s.mmio_writes);
    assert_eq!(
        rig.dev.lock().expect("lock").accesses(),
        s.mmio_reads + s.mmio_writes
    );
    assert_ram_untouched(&rig.mem, &config);
}

#[test]
fn worker_thread_with_mitigation_delivers_a_long_stream() {
    let (mut rig, ram) = model(true);
    let config = E1000Config {
        rx_descs: 64,
        tx_descs: 64,
        itr: 0,
    };
    let mut drv = driver(&mut rig, ram, config);
    let worker = E1000Worker::start(rig.dev.clone()).expect("worker");
    let total = 2000;
    let mut received = Vec::new();
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < total {
        assert!(Instant::now() < deadline, "stuck at {}", received.len());
        // The host sends in bursts of up to a ring and a half.
        while next < total && next < received.len() + 96 {
            rig.host
                .send_frame(&frame(60 + next % 1400, next as u32, MAC))
                .expect("send");
            next += 1;
        }
        if rig.irq.asserted() {
            drv.poll().expect("poll");
        }
        if receive_all(&mut drv, &mut received) == 0 {
            std::thread::yield_now();
        }
    }
    let stats = worker.stop();
    for (i, f) in received.iter().enumerate() {
        assert_eq!(*f, frame(60 + i % 1400, i as u32, MAC), "frame {i}");
    }
    assert_eq!(stats["rx"]["frames"], total as u64, "{stats}");
    assert_eq!(stats["drops"]["rx_overrun"], 0);
}

/// A guest that writes random values to the registers (except the ring bases, which
/// would let it aim DMA anywhere it likes, legitimately) while traffic flows: no
/// panic, no hang, and no byte of RAM outside the driver's rings and buffers changes.
#[test]
fn hostile_register_sequences_stay_inside_the_rings() {
    for seed in 1..=3u64 {
        let (mut rig, ram) = model(seed == 2);
        let config = E1000Config {
            rx_descs: 32,
            tx_descs: 32,
            itr: 0,
        };
        let mut drv = driver(&mut rig, ram, config);
        let mut region = PciRegion::new(rig.dev.clone(), 0, 0);
        let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        // The ring bases stay the driver's (a reset clears them: the guest puts them
        // back), so every DMA the model makes is into the driver's pages.
        let bases: Vec<(u32, u32)> = [reg::RDBAL, reg::RDBAH, reg::TDBAL, reg::TDBAH]
            .iter()
            .map(|&r| (r, region.read32(r)))
            .collect();
        let regs = [
            reg::CTRL,
            reg::EECD,
            reg::EERD,
            reg::MDIC,
            reg::ICR,
            reg::ICS,
            reg::IMS,
            reg::IMC,
            reg::RCTL,
            reg::TCTL,
            reg::RDH,
            reg::RDT,
            reg::TDH,
            reg::TDT,
            reg::ITR,
            reg::RDTR,
            reg::RADV,
            reg::TADV,
            reg::RDLEN,
            reg::TDLEN,
            reg::STATUS,
            0x4074,
            0x408c,
            0x1_fffc,
        ];
        for step in 0..4000u32 {
            match rng.below(8) {
                0 | 1 => {
                    let r = regs[rng.below(regs.len() as u64) as usize];
                    let v = match r {
                        // Lengths within the driver's ring pages.
                        reg::RDLEN | reg::TDLEN => rng.below(32 * 16 + 1) as u32,
                        _ => match rng.below(3) {
                            0 => rng.next_u64() as u32,
                            1 => rng.below(70) as u32,
                            _ => 0xffff,
                        },
                    };
                    region.write32(r, v);
                    if r == reg::CTRL {
                        for &(b, v) in &bases {
                            region.write32(b, v);
                        }
                    }
                }
                2 => {
                    region.read32(regs[rng.below(regs.len() as u64) as usize]);
                }
                3 => {
                    let len = 1 + rng.below(1514) as usize;
                    let _ = drv.transmit(len, &mut |b| rng.fill(b));
                    drv.kick();
                }
                4 => {
                    let f = frame(1 + rng.below(2000) as usize, step, MAC);
                    let _ = rig.host.send_frame(&f);
                    pump(&rig);
                }
                5 => {
                    let _ = drv.poll();
                    let _ = drv.receive(&mut |_| {});
                }
                6 => {
                    let cmd = command::MEMORY_SPACE
                        | if rng.below(4) == 0 {
                            0
                        } else {
                            command::BUS_MASTER
                        }
                        | if rng.below(4) == 0 {
                            command::INTX_DISABLE
                        } else {
                            0
                        };
                    rig.dev
                        .lock()
                        .expect("lock")
                        .config_write(4, &cmd.to_le_bytes());
                }
                _ => {
                    rig.dev
                        .lock()
                        .expect("lock")
                        .poll_timers(Instant::now() + Duration::from_secs(1));
                    while rig.host.recv_timeout(Duration::ZERO).is_some() {}
                }
            }
        }
        assert_ram_untouched(&rig.mem, &config);
        let c = counters(&rig);
        assert!(c["mmio_writes"].as_u64().expect("n") > 1000, "{c}");
    }
}

/// An Mmio that lies about selected registers.
struct Liar<M> {
    inner: M,
    eeprom: Option<fn(u32) -> u16>,
    stuck_reset: bool,
}

impl<M: Mmio> Mmio for Liar<M> {
    fn read32(&mut self, offset: u32) -> u32 {
        let v = self.inner.read32(offset);
        match offset {
            reg::EERD => match self.eeprom {
                Some(f) => {
                    let addr = (v >> eerd::ADDR_SHIFT) & 0xff;
                    u32::from(f(addr)) << eerd::DATA_SHIFT | eerd::DONE
                }
                None => v,
            },
            reg::CTRL if self.stuck_reset => v | 1 << 26,
            _ => v,
        }
    }
    fn write32(&mut self, offset: u32, value: u32) {
        self.inner.write32(offset, value);
    }
    fn read16(&mut self, offset: u32) -> u16 {
        self.inner.read16(offset)
    }
    fn write16(&mut self, offset: u32, value: u16) {
        self.inner.write16(offset, value);
    }
    fn read8(&mut self, offset: u32) -> u8 {
        self.inner.read8(offset)
    }
    fn write8(&mut self, offset: u32, value: u8) {
        self.inner.write8(offset, value);
    }
}

#[test]
fn a_lying_device_gets_errors_not_panics() {
    let attempt = |eeprom: Option<fn(u32) -> u16>, stuck_reset: bool| {
        let (rig, ram) = model(false);
        let liar = Liar {
            inner: PciRegion::new(rig.dev.clone(), 0, 0),
            eeprom,
            stuck_reset,
        };
        E1000::new(liar, ram, E1000Config::default()).err()
    };
    // A zero MAC with a valid checksum.
    let zero_mac: fn(u32) -> u16 = |a| if a == 0x3f { 0xbaba } else { 0 };
    assert_eq!(
        attempt(Some(zero_mac), false),
        Some(InitError::BadMac([0; 6]))
    );
    let multicast: fn(u32) -> u16 = |a| match a {
        0 => 0x0001,
        0x3f => 0xbaba - 1,
        _ => 0,
    };
    assert!(matches!(
        attempt(Some(multicast), false),
        Some(InitError::BadMac(_))
    ));
    let bad_sum: fn(u32) -> u16 = |a| a as u16 + 2;
    assert_eq!(
        attempt(Some(bad_sum), false),
        Some(InitError::EepromChecksum)
    );
    assert_eq!(attempt(None, true), Some(InitError::ResetTimeout));
    assert_eq!(
        NetError::from(InitError::BadMac([0; 6])),
        NetError::Protocol
    );

    // Descriptors the device "writes back" with lies.
    let (mut rig, ram) = model(false);
    let mut drv = driver(&mut rig, ram, E1000Config::default());
    let ring = {
        let mut d = rig.dev.lock().expect("lock");
        let mut b = [0u8; 4];
        d.region_read(0, reg::RDBAL.into(), &mut b);
        u64::from(u32::from_le_bytes(b))
    };
    let lie = |i: u64, length: u16, status: u8, errors: u8| {
        let mut b = [0u8; 16];
        rig.mem
            .read_slice(&mut b, GuestAddress(ring + 16 * i))
            .expect("read");
        let mut d = RxDesc::from_bytes(&b);
        d.length = length;
        d.status = status;
        d.errors = errors;
        d.addr = 0xdead_0000; // never read back by the driver
        rig.mem
            .write_slice(&d.to_bytes(), GuestAddress(ring + 16 * i))
            .expect("write");
    };
    let done = rx_status::DD | rx_status::EOP;
    lie(0, 4000, done, 0);
    lie(1, 5, done, 0);
    lie(2, 100, done, 0x01);
    lie(3, 100, rx_status::DD, 0); // no EOP: spans into 4
    lie(4, 100, done, 0);
    lie(5, 100, done, 0); // a good one
    let mut got = Vec::new();
    assert!(drv.receive(&mut |f| got.push(f.len())).expect("receive"));
    assert_eq!(got, [100]);
    let s = drv.stats();
    assert_eq!(
        (
            s.rx_bad_length,
            s.rx_runts,
            s.rx_error_frames,
            s.rx_multi_desc
        ),
        (1, 1, 1, 1)
    );
    assert!(!drv.receive(&mut |_| {}).expect("receive"));
    assert_eq!(drv.stats().rdt_writes, 2, "one RDT write for the batch");

    // DD on a descriptor the device never owned (the driver's gap): the next batch's
    // RDT write finds it and shuts the driver down.
    let gap = 5;
    lie(gap, 64, done, 0);
    lie(6, 64, done, 0);
    let mut err = None;
    for _ in 0..4 {
        if let Err(e) = drv.receive(&mut |_| {}) {
            err = Some(e);
            break;
        }
    }
    assert_eq!(err, Some(NetError::Protocol));
    assert_eq!(drv.stats().protocol_errors, 1);
    assert_eq!(drv.transmit(60, &mut |_| {}), Err(NetError::Protocol));
    assert_eq!(drv.poll(), Err(NetError::Protocol));
}
