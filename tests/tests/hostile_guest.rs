//! A hostile guest (#16): the real guest with `selftest=hostile` attacks host-shim from
//! inside (hypercall and event-channel garbage, xenstore abuse, a raw blkif ring of
//! malformed requests against the first disk, raw netif rings of malformed requests
//! against the PV NIC; bad PRD tables, a transfer past the end and a register storm
//! against an emulated IDE disk; hostile queues and chains against virtio-blk; hostile
//! rings, buffers, lengths, offsets and a register storm against an e1000; hostile
//! queues, chains, headers and receive buffers against virtio-net), then runs the block
//! workload on the second disk and its network services on the PV NIC, which the host
//! pings and reaches over TCP. The shim must refuse every attack, count it, neither
//! panic nor hang, leave the attacked images as they were and still serve the
//! well-behaved disk and NIC; each emulated NIC must still carry a good frame both ways
//! after a reset.
//!
//! Everything lives in a network namespace of the test's own: the PV NIC's TAP (with
//! the host's address, for ping and TCP), and the emulated NICs' TAPs (IPv6 off, no
//! address: the host sends nothing on them), each watched by a peer on a packet socket
//! that speaks `pv_drivers::netprobe` with the guest: it sends the frames the guest asks
//! for (the receive attacks need frames to arrive when the guest has set a trap),
//! answers the guest's good frame, and counts every attack frame that reached the wire
//! (none may). Skips loudly where /dev/kvm, root or /dev/net/tun is absent.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pv_drivers::netprobe::{self, Message, Op};
use system_tests::{
    ScratchImage, expect_image, guest_image, in_private_netns, kvm_available, run_with_limit,
    shim_binary, stats_json, tap_available,
};

/// The attacked disk's size, and the well-behaved disk's pattern region.
const DISK: u64 = 4 << 20;
const REGION: usize = 256 << 10;
const SEED: u64 = 5;

/// The raw blkif attacks of `guest-kernel/src/kernel/hostile.rs`, by blkback's error
/// kind (`--stats` `backends.vbd-51712.errors`).
const BLKIF_ERRORS: [(&str, u64); 8] = [
    // 0, 12 and 255 data segments; a flush with segments; indirect of 0 and 60000.
    ("segment_count", 7),
    // first_sect > last_sect, last_sect 8, 255/255, a bad indirect descriptor.
    ("segment_range", 4),
    // The sector after the end, across the end, a wrapping sector.
    ("out_of_range", 3),
    // Never granted (read, write, 11th segment, indirect page, indirect descriptor),
    // beyond the table (data, indirect page), read-only for a read, another domain's.
    ("grant", 9),
    // Operation 99, reserved 4, discard, indirect of operation 99 and of indirect.
    ("unsupported_op", 5),
    // The request producer 5000 ahead of the consumer.
    ("ring", 1),
    ("read_only", 0),
    // Connections refused: a ring never granted, read-only, beyond the table, not a
    // number; ring-page-order beyond the maximum, 1 without ring-ref1, 2^32; the
    // xenstore's event channel, one not a number; an unknown protocol;
    // multi-queue-num-queues 0 and 2.
    ("connect", 12),
];

/// The IDE attacks of `guest-kernel/src/kernel/hostile/ide.rs`, by the IDE model's
/// error kind (`--stats` `devices.ide.errors`).
const IDE_ERRORS: [(&str, u64); 4] = [
    // The table at 3 GiB and in the last page below 4 GiB.
    ("prd_table_outside_ram", 2),
    // A buffer at 3 GiB, one wrapping 4 GiB, a good entry then one at 3 GiB.
    ("dma_buffer_outside_ram", 3),
    // 512 entries of 2 bytes without an end for 4 KiB.
    ("prd_table_short", 1),
    // A transfer at LBA 0x0ffffff0.
    ("lba_out_of_range", 1),
];
/// The pattern seed of the IDE image (`hostile::ide::IDE_SEED` in the guest).
const IDE_SEED: u64 = 11;

/// The virtio-blk attacks of `guest-kernel/src/kernel/hostile/virtio.rs`, by the
/// device's counters (`--stats` `devices.virtio-blk-0`).
const VIRTIO_COUNTS: [(&str, &str, u64); 6] = [
    // Activation with the descriptor table at 3 GiB, the available ring wrapping the
    // address space, the used ring at 2^52.
    ("transport", "bad_activations", 3),
    // Data, status, header or indirect table outside RAM or wrapping; a 1-byte header;
    // chains that are not whole: `next` beyond the queue, the loop, 4 GiB of data.
    ("device", "bad_chains", 8),
    // A read past the end.
    ("device", "io_errors", 1),
    // Request type 99.
    ("device", "unsupported", 1),
    // The available index 1000 ahead: one ring error, then DEVICE_NEEDS_RESET.
    ("device", "ring_errors", 1),
    ("transport", "needs_reset", 1),
];

/// The e1000 attacks of `guest-kernel/src/kernel/hostile/e1000.rs`, by the model's
/// counters (`--stats` `devices.e1000-0`).
const E1000_COUNTS: [(&str, &str, u64); 18] = [
    // Transmit rings at 3 GiB, 64 GiB, 2^52.
    ("errors", "tx_ring_dma", 3),
    // The ring wrapping the address space; TDLEN 0, 100 and 2^32 - 1 with TDH beyond;
    // TDH beyond the ring.
    ("errors", "tx_bad_ring", 5),
    // TDT beyond a ring of 8 and beyond the largest ring, without EOP: one lap each.
    ("errors", "tx_wrap", 2),
    // Buffers at 3 GiB, 64 GiB, 2^52, wrapping 4 GiB and 2^64; a good fragment then one
    // at 3 GiB.
    ("drops", "tx_dma", 6),
    // Frames of 0 and 13 bytes.
    ("drops", "tx_runt", 2),
    // One and two descriptors of 65535 bytes.
    ("drops", "tx_oversize", 2),
    // TCP/UDP and IP checksum offsets beyond the frame; an end before the start.
    ("drops", "tx_bad_checksum", 3),
    // The TSO context and TSE frame.
    ("drops", "tx_tso", 1),
    // Receive rings at 3 GiB, 64 GiB, 2^52.
    ("drops", "rx_dma", 3),
    // The ring wrapping the address space; RDLEN 0, 100 and 2^32 - 1 with RDH beyond;
    // RDH beyond the ring.
    ("drops", "rx_bad_ring", 5),
    // RDT beyond the ring with a 3000-byte frame for eight 256-byte buffers.
    ("drops", "rx_overrun", 1),
    // Receive buffers at 3 GiB, 64 GiB, wrapping 2^64.
    ("drops", "rx_buffer_dma", 3),
    ("errors", "dma_write", 3),
    // The null buffer address.
    ("errors", "rx_null_descriptor", 1),
    // Every failed read: 3 transmit rings, 6 transmit frames, 3 receive rings.
    ("errors", "dma_read", 12),
    // MDIC reads at PHY addresses 0, 2 and 31, a BMCR reset written at PHY 2; reads of
    // PHY registers 7, 8 and 31; writes to PHYID1, BMSR and ANLPAR (read-only).
    ("errors", "mdic", 10),
    // The I/O window: byte and word writes to IOADDR and to IODATA, a write at +8 and a
    // read at +0x3c (reserved), a read and a write at +2 (straddling the two).
    ("errors", "io_bad_access", 8),
    // CTRL.RST through IOADDR 2^17, 0x7fffc and 2^32 - 1; an IODATA read there.
    ("errors", "io_bad_address", 4),
];
/// Receive attacks of the e1000, each asking the peer for a frame.
const E1000_REQUESTS: u64 = 13;
/// e1000 checks without a counter of their own: the two canaries and the peer's count
/// of attack frames; the I/O window's reads and write reaching the registers, its
/// unaligned IOADDR, its narrow reads and its IOADDR at reserved offsets (counted in
/// `unknown_register` with the storm's); MDIC opcodes 0 and 3; the EEPROM's EERD
/// beyond 64 words and with every bit set, the Microwire WRITE and ERAL, the READ run
/// past word 63, the garbage on EECD. `dma_read` and `dma_write` count attacks counted
/// above again.
const E1000_UNCOUNTED: u64 = 15;

/// The virtio-net attacks of `guest-kernel/src/kernel/hostile/virtio_net.rs`, by the
/// device's counters (`--stats` `devices.virtio-net-0`).
const VIRTIO_NET_COUNTS: [(&str, &str, u64); 6] = [
    // The transmit queue with its descriptor table at 3 GiB, the available ring wrapping
    // the address space, the used ring at 2^52.
    ("transport", "bad_activations", 3),
    // Transmit: the header at 3 GiB, the frame at 64 GiB or wrapping 2^64, 4 GiB - 1
    // bytes, two loops, `next` beyond the queue, an indirect table at 3 GiB. Receive: a
    // device-readable buffer, at 3 GiB, at 64 GiB, wrapping 2^64, of 11 bytes, a loop,
    // `next` beyond the queue. With MRG_RXBUF: receive buffers of 1 and 11 bytes.
    ("device", "bad_chains", 17),
    // An 8-byte header, GSO types 1 and 0xff, three checksum positions outside the
    // frame, frames of 13 and 1600 bytes.
    ("device", "bad_tx", 8),
    // The available index 1000 ahead: one ring error, then DEVICE_NEEDS_RESET.
    ("device", "ring_errors", 1),
    ("transport", "needs_reset", 1),
    // The queue sizes 3 and 32768; the register storm: queue_size for queue 2,
    // queue_enable for queue 0xffff, DRIVER_OK without FEATURES_OK, FEATURES_OK with
    // feature 40, driver features after FEATURES_OK, queue_size, queue_desc and
    // queue_enable 0 on an enabled queue, queue_desc after DRIVER_OK, num_queues, ISR.
    ("transport", "refused_writes", 13),
];
/// Receive attacks of virtio-net, each asking the peer for a frame: 7 of buffers, 6
/// of merged buffers, 5 with EVENT_IDX, the frame after the register storm.
const VIRTIO_NET_REQUESTS: u64 = 19;
/// Of those, the frame that needed more room than the whole queue held: it waited,
/// and the reset after it dropped it.
const VIRTIO_NET_HELD: u64 = 1;
/// virtio-net checks without a counter of their own: the canary of the refused receive
/// buffers, the peer's count of attack frames; with MRG_RXBUF the frames across seven
/// buffers, waiting for a third, waiting for more than the queue holds, across 1-byte
/// descriptors, and the canary of the short buffers; with EVENT_IDX the three
/// `used_event`s, the overwritten `avail_event`, the frame notified as `avail_event`
/// asks; the storm's MAC write, its cleared status bits and the frame after it.
const VIRTIO_NET_UNCOUNTED: u64 = 15;

/// Attacks a category's counters stand for (one each, but for totals and
/// consequences counted again under another name), plus those with no counter.
fn expected_attacks(counts: &[(&str, &str, u64)], uncounted: u64) -> u64 {
    counts
        .iter()
        .filter(|(_, name, _)| !matches!(*name, "dma_read" | "dma_write" | "needs_reset"))
        .map(|(_, _, n)| n)
        .sum::<u64>()
        + uncounted
}
/// virtio-blk attacks without a counter of their own: the queue sizes 3 and 32768
/// (not taken: the register reads back the old size). `needs_reset` follows from the
/// ring error, it is no attack of its own.
const VIRTIO_UNCOUNTED: u64 = 2;
/// The pattern seed of the virtio image (`hostile::virtio::VIRTIO_SEED` in the guest).
const VIRTIO_SEED: u64 = 13;

/// The guest's address on the TAP, and the host's (which answers the ARP requests of
/// the netif attacks and then pings the guest).
const GUEST_IP: &str = "10.206.0.2";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 206, 0, 1);
const TAP: &str = "hostile-tap0";

/// The netif attacks of `guest-kernel/src/kernel/hostile/netif.rs` (the `netif` line).
const NETIF_ATTACKS: u64 = 35;

/// The netif attacks by netback's transmit error kind (`--stats`
/// `backends.vif-0.tx_errors`).
const NETIF_TX_ERRORS: [(&str, u64); 9] = [
    // Sizes 0 and 13.
    ("size", 2),
    // Never granted, beyond the table, another domain's, a fragment never granted.
    ("bad_grant", 4),
    // A fragment larger than the frame; 17 pages under 65535 bytes.
    ("first_slot_too_small", 2),
    // 20 slots (refused), 22 slots (fatal).
    ("too_many_slots", 2),
    // A GSO extra, GSO not offered.
    ("bad_extra", 1),
    // A blank checksum over an IPv4 header claiming 65535 bytes.
    ("checksum", 1),
    // A first slot and a fragment crossing their page (fatal).
    ("offset", 2),
    // Extras of type none, beyond the last, and read from a request (fatal).
    ("extra_type", 3),
    ("too_big", 0),
];

/// The netif attacks by netback's other counters (`backends.vif-0`).
const NETIF_COUNTS: [(&str, u64); 5] = [
    // The fatal transmit attacks above.
    ("tx_fatal_errors", 6),
    // Receive buffers read-only, never granted, beyond the table, another domain's.
    ("rx_copy_errors", 4),
    // The transmit and the receive producer 1000 ahead.
    ("protocol_errors", 2),
    // A transmit ring never granted, a receive ring read-only, the xenstore's port, a
    // ring reference not a number, no request-rx-copy, multi-queue-num-queues 0, 2 and
    // not a number.
    ("connect_errors", 8),
    // The first connection, one per fatal attack (7), netfront's.
    ("connects", 9),
];

/// xenstored error replies the xenstore attacks must at least have caused (normal
/// operation adds a few ENOENT and EACCES of its own).
const XENSTORE_ERRORS: [(&str, u64); 6] = [
    // Writes, mkdirs, rms and set_perms outside the domain; privileged wire types.
    ("EACCES", 27),
    // Unterminated, empty, malformed and overlong paths; garbage perms; bad domid.
    ("EINVAL", 8),
    // The watch and transaction floods; an oversized value.
    ("ENOSPC", 3),
    // Unknown type 999, a WATCH_EVENT and an ERROR from the guest.
    ("ENOSYS", 3),
    // Giving a node away to a missing domain; an unknown transaction twice.
    ("ENOENT", 3),
    // Giving our node to domain 0.
    ("EPERM", 1),
];

fn counter(v: &serde_json::Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("counter {what} missing or not a number: {v}"))
}

/// A TAP that stays silent: no address, IPv6 off (no router or neighbour
/// solicitations, no MLD), up; removed when dropped. Create it inside the test's own
/// network namespace.
struct QuietTap(&'static str);

impl QuietTap {
    fn new(name: &'static str, mtu: u32) -> Self {
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("run ip");
            assert!(st.success(), "ip {args:?} failed");
        };
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        let tap = Self(name);
        let sysctl = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        if std::path::Path::new(&sysctl).exists() {
            std::fs::write(&sysctl, "1").expect("turn IPv6 off on the TAP");
        }
        ip(&["link", "set", "dev", name, "mtu", &mtu.to_string(), "up"]);
        tap
    }
}

impl Drop for QuietTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).status();
    }
}

/// What a peer saw from the guest on its TAP.
#[derive(Debug, Default, Clone, Copy)]
struct PeerSeen {
    /// `Request`s (each answered with the frames asked for).
    requests: u64,
    /// `Good` frames (each answered with an `Ack`).
    goods: u64,
    /// `Attack` frames: none may reach the wire.
    attacks: u64,
    /// Frames not of the protocol, or of the peer's own ops: none may come.
    foreign: u64,
}

/// The host's side of `pv_drivers::netprobe` on one TAP: an AF_PACKET socket on a
/// thread of its own until stopped.
struct Peer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<PeerSeen>,
}

impl Peer {
    /// Starts the peer on `tap`, whose MTU is `mtu`.
    fn start(tap: &str, mtu: usize) -> Self {
        use std::os::fd::AsRawFd;
        let sock = host_shim::hostio::netns::packet_socket(tap, Duration::from_millis(100))
            .expect("packet socket on the TAP");
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let fd = sock.as_raw_fd();
            let send = |frame: &[u8]| {
                // SAFETY: `frame` is a live buffer of its length; the socket is bound to
                // the TAP, so send(2) needs no address.
                let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
                assert_eq!(
                    n,
                    frame.len() as isize,
                    "send: {}",
                    std::io::Error::last_os_error()
                );
            };
            let mut seen = PeerSeen::default();
            let mut buf = vec![0u8; 65536];
            let mut seq = 0u16;
            while !halt.load(Ordering::Acquire) {
                // SAFETY: all-zero bytes are a valid sockaddr_ll.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: `buf` and `from` are live buffers of the sizes given.
                let n = unsafe {
                    libc::recvfrom(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut from).cast(),
                        &mut from_len,
                    )
                };
                // A timeout (or an interrupted read): look at the stop flag again.
                let Ok(n) = usize::try_from(n) else { continue };
                // What the host sends on the TAP (our own answers) is not the guest's.
                if from.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                let frame = &buf[..n];
                let Some((src, m)) = netprobe::parse(frame) else {
                    seen.foreign += 1;
                    continue;
                };
                match m.op {
                    Op::Request => {
                        seen.requests += 1;
                        let len = usize::from(m.b).clamp(netprobe::MIN_FRAME, mtu + 14);
                        for _ in 0..m.a {
                            seq = seq.wrapping_add(1);
                            let mut f = vec![0u8; len];
                            let data = Message {
                                op: Op::Data,
                                a: seq,
                                b: 0,
                            };
                            netprobe::write(&mut f, src, netprobe::PEER_MAC, data);
                            send(&f);
                        }
                    }
                    Op::Good => {
                        seen.goods += 1;
                        let mut f = vec![0u8; 200];
                        let bad = u16::try_from(seen.attacks + seen.foreign).unwrap_or(u16::MAX);
                        let ack = Message {
                            op: Op::Ack,
                            a: m.a,
                            b: bad,
                        };
                        netprobe::write(&mut f, src, netprobe::PEER_MAC, ack);
                        send(&f);
                    }
                    Op::Attack => seen.attacks += 1,
                    Op::Data | Op::Ack => seen.foreign += 1,
                }
            }
            seen
        });
        Self { stop, thread }
    }

    fn stop(self) -> PeerSeen {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("peer thread")
    }
}

#[test]
fn a_hostile_guest_is_refused_everywhere_and_the_well_behaved_disk_and_nic_still_work() {
    const TEST: &str = "hostile_guest::a_hostile_guest_is_refused_everywhere";
    if !kvm_available(TEST) || !tap_available(TEST) {
        return;
    }
    in_private_netns(TEST, hostile_guest);
}

/// The e1000's TAP: an MTU for the jumbo frame of the receive overrun attack.
const E1000_TAP: &str = "hostile-e1000";
const E1000_MTU: usize = 4000;
const VIRTIO_TAP: &str = "hostile-vnet";

/// Pings the guest until it answers (its network services start after the attacks),
/// then echoes a line over TCP (port 7, which ends the guest's services:
/// `net.exit-after=1`). Gives up when `done` says the shim has ended.
fn host_checks(done: &AtomicBool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if done.load(Ordering::Acquire) || Instant::now() > deadline {
            return Err("the guest never answered ping".into());
        }
        let ping = Command::new("ping")
            .args(["-c", "1", "-W", "1", GUEST_IP])
            .output()
            .map_err(|e| format!("run ping (scripts/setup.sh installs iputils-ping): {e}"))?;
        if ping.status.success() {
            break;
        }
    }
    let addr = format!("{GUEST_IP}:7").parse().expect("address");
    let mut echo = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if done.load(Ordering::Acquire) || Instant::now() > deadline => {
                return Err(format!("connecting to the echo port: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    echo.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| format!("{e}"))?;
    let msg = b"a hostile guest still serves\n";
    echo.write_all(msg)
        .map_err(|e| format!("echo write: {e}"))?;
    let mut back = vec![0u8; msg.len()];
    echo.read_exact(&mut back)
        .map_err(|e| format!("echo read: {e}"))?;
    if back != msg {
        return Err(format!("echo said {:?}", String::from_utf8_lossy(&back)));
    }
    Ok(())
}

fn hostile_guest() {
    // The TAP, with the host's address and no IPv6 (whose router solicitations and
    // reports would only add frames to the guest's receive ring).
    host_shim::hostio::netns::ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])
        .expect("create the TAP");
    host_shim::hostio::netns::address_tap(TAP, HOST_IP).expect("address the TAP");

    // The attacked disk holds a pattern that must survive every write attack.
    let attacked = ScratchImage::new("hostile-attacked", DISK);
    attacked.write_pattern(9, 0, DISK as usize);
    let good = ScratchImage::new("hostile-good", DISK);
    let ide = ScratchImage::new("hostile-ide", DISK);
    ide.write_pattern(IDE_SEED, 0, DISK as usize);
    let ide_disk = format!("{},if=ide", ide.path());
    let virtio = ScratchImage::new("hostile-virtio", DISK);
    virtio.write_pattern(VIRTIO_SEED, 0, DISK as usize);
    let virtio_disk = format!("{},if=virtio", virtio.path());
    let cmdline = format!(
        "selftest=hostile blk.device=xen:51728 blk.workload=write-pattern,verify-pattern \
         blk.size={REGION} blk.seed={SEED} net.device=xen:0 net.ip={GUEST_IP}/24 \
         net.gw={HOST_IP} net.exit-after=1"
    );
    let _e1000_tap = QuietTap::new(E1000_TAP, E1000_MTU as u32);
    let _virtio_tap = QuietTap::new(VIRTIO_TAP, 1500);
    let e1000_peer = Peer::start(E1000_TAP, E1000_MTU);
    let virtio_peer = Peer::start(VIRTIO_TAP, 1500);
    let e1000_net = format!("tap={E1000_TAP},model=e1000");
    let virtio_net = format!("tap={VIRTIO_TAP},model=virtio");
    let mut shim = Command::new(shim_binary());
    shim.args(["run", "--kernel"])
        .arg(guest_image())
        .args(["--cmdline", &cmdline])
        .args(["--timeout", "300", "--stats"])
        .args(["--disk", attacked.path(), "--disk", good.path()])
        .args(["--disk", &ide_disk, "--disk", &virtio_disk])
        .args(["--net", &format!("tap={TAP}")])
        .args(["--net", &e1000_net, "--net", &virtio_net]);
    let done = AtomicBool::new(false);
    let (run, host) = std::thread::scope(|s| {
        let shim = s.spawn(|| {
            let run = run_with_limit(shim, Duration::from_secs(360));
            done.store(true, Ordering::Release);
            run
        });
        let host = host_checks(&done);
        (shim.join().expect("shim thread"), host)
    });
    let (e1000_seen, virtio_seen) = (e1000_peer.stop(), virtio_peer.stop());
    let all = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.code(), Some(0), "the guest or the shim failed\n{all}");
    assert!(
        !run.stderr.contains("panicked") && !run.stdout.contains("PANIC"),
        "a panic\n{all}"
    );
    if let Err(e) = host {
        panic!("the well-behaved NIC: {e}\n{all}");
    }

    // The guest's verdict: every attack refused, the good disk and NIC passed.
    let summary = run
        .stdout
        .lines()
        .find(|l| l.starts_with("hostile: ") && l.contains(" unexpected; "))
        .unwrap_or_else(|| panic!("no summary line\n{all}"));
    // The guest's figures, for the log (the README's table quotes them).
    for l in run.stdout.lines().filter(|l| l.contains(" attacks, ")) {
        eprintln!("{l}");
    }
    let words: Vec<&str> = summary.split_whitespace().collect();
    let attacks: u64 = words[1].parse().expect("attack count");
    let refused: u64 = words[3].parse().expect("refused count");
    assert!(attacks >= 200, "{summary}");
    assert_eq!(attacks, refused, "{summary}");
    assert!(
        summary.ends_with("0 unexpected; well-behaved disk: PASS; well-behaved NIC: PASS"),
        "{summary}\n{all}"
    );
    let count = |cat: &str| -> Option<u64> {
        run.stdout.lines().find_map(|l| {
            let (a, r) = l
                .strip_prefix(&format!("hostile: {cat}: "))?
                .split_once(" attacks, ")?;
            (r == format!("{a} refused")).then(|| a.parse().ok())?
        })
    };
    for cat in [
        "hypercall",
        "evtchn",
        "xenstore",
        "blkif",
        "netif",
        "ide",
        "virtio",
        "e1000",
        "virtio-net",
    ] {
        assert!(
            count(cat).is_some_and(|n| n > 0),
            "no clean {cat} line\n{all}"
        );
    }
    assert_eq!(count("netif"), Some(NETIF_ATTACKS), "{all}");
    // The emulated devices' categories hold as many attacks as their models counted.
    for (cat, counts, uncounted) in [
        ("virtio", &VIRTIO_COUNTS[..], VIRTIO_UNCOUNTED),
        ("e1000", &E1000_COUNTS[..], E1000_UNCOUNTED),
        ("virtio-net", &VIRTIO_NET_COUNTS[..], VIRTIO_NET_UNCOUNTED),
    ] {
        let want = format!(
            "hostile: {cat}: {n} attacks, {n} refused",
            n = expected_attacks(counts, uncounted)
        );
        run.assert_line(&want);
    }
    run.assert_line("blk: PASS");
    run.assert_contains("hostile: netif: the rings still carry frames both ways");
    run.assert_contains("hostile: blkif: a good connection after the xenbus attacks reads");
    run.assert_contains("requests taken while no reply was read; then all 120 replies, in order");

    // The shim counted what it refused.
    let v = stats_json(&run.stderr);
    let st = &v["stats"];
    let bad = &st["backends"]["vbd-51712"]["errors"];
    for (kind, n) in BLKIF_ERRORS {
        assert_eq!(counter(&bad[kind], kind), n, "blkback {kind}: {bad}");
    }
    assert_eq!(counter(&bad["io"], "io"), 0, "{bad}");
    let fine = &st["backends"]["vbd-51728"];
    let errors = fine["errors"].as_object().expect("good disk's errors");
    assert!(
        errors.values().all(|e| e.as_u64() == Some(0)),
        "the well-behaved disk had errors: {fine}"
    );
    assert_eq!(
        counter(&fine["bytes_written"], "bytes_written"),
        REGION as u64
    );
    let ide_errors = &st["devices"]["ide"]["errors"];
    for (kind, n) in IDE_ERRORS {
        assert_eq!(
            counter(&ide_errors[kind], kind),
            n,
            "IDE {kind}: {ide_errors}"
        );
    }
    run.assert_contains("hostile: ide: a good DMA read after the storm returns the disk's data");
    let vblk = &st["devices"]["virtio-blk-0"];
    for (part, name, n) in VIRTIO_COUNTS {
        assert_eq!(
            counter(&vblk[part][name], name),
            n,
            "virtio-blk {name}: {vblk}"
        );
    }
    run.assert_contains("hostile: virtio: a good read after a reset returns the disk's data");

    // The NICs: every attack counted by kind, no attack frame on the wire, the frames
    // asked for and the good one both ways.
    let nic = &st["devices"]["e1000-0"];
    for (part, name, n) in E1000_COUNTS {
        assert_eq!(
            counter(&nic[part][name], name),
            n,
            "e1000 {part}.{name}: {nic}"
        );
    }
    let storm = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("hostile: e1000: register storm of "))
        .unwrap_or_else(|| panic!("no storm line\n{all}"));
    let figures: Vec<u64> = storm
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let [writes, reserved, narrow] = figures[..] else {
        panic!("storm line: {storm}");
    };
    assert!(writes >= 1000 && reserved > 0 && narrow > 0, "{storm}");
    assert_eq!(
        counter(&nic["errors"]["bad_access"], "bad_access"),
        narrow,
        "{nic}"
    );
    assert!(
        counter(&nic["errors"]["unknown_register"], "unknown_register") >= reserved,
        "{nic}"
    );
    assert!(
        counter(&nic["errors"]["tx_no_bus_master"], "tx_no_bus_master") > 0,
        "the storm's TDT writes found bus mastering off: {nic}"
    );
    // Sent: the requests and the good frame; received: the frame of the null-address
    // attack and the peer's answer. Nothing else.
    assert_eq!(
        (
            e1000_seen.requests,
            e1000_seen.goods,
            e1000_seen.attacks,
            e1000_seen.foreign
        ),
        (E1000_REQUESTS, 1, 0, 0),
        "the e1000's wire: {e1000_seen:?}"
    );
    assert_eq!(
        counter(&nic["tx"]["frames"], "tx frames"),
        E1000_REQUESTS + 1
    );
    assert_eq!(counter(&nic["rx"]["frames"], "rx frames"), 2, "{nic}");
    run.assert_contains(
        "hostile: e1000: after a reset a good frame went out (DD, GPTC 1, TPT 1) and the peer's \
         answer came back",
    );
    let vnet = &st["devices"]["virtio-net-0"];
    for (part, name, n) in VIRTIO_NET_COUNTS {
        let v = if part == "device" {
            &vnet[part]["net"][name]
        } else {
            &vnet[part][name]
        };
        assert_eq!(counter(v, name), n, "virtio-net {part}.{name}: {vnet}");
    }
    assert_eq!(
        (
            virtio_seen.requests,
            virtio_seen.goods,
            virtio_seen.attacks,
            virtio_seen.foreign
        ),
        (VIRTIO_NET_REQUESTS, 1, 0, 0),
        "virtio-net's wire: {virtio_seen:?}"
    );
    let net = &vnet["device"]["net"];
    assert_eq!(
        counter(&net["tx_frames"], "tx_frames"),
        VIRTIO_NET_REQUESTS + 1
    );
    assert_eq!(
        counter(&net["rx_frames"], "rx_frames"),
        VIRTIO_NET_REQUESTS + 1 - VIRTIO_NET_HELD,
        "{net}"
    );
    // Frames that waited for buffers: the two of three buffers (twice) and the one
    // bigger than the queue (each looks again at every notify and link wake-up).
    assert!(counter(&net["rx_waits"], "rx_waits") >= 3, "{net}");
    run.assert_contains(
        "hostile: virtio-net: after a reset a good frame went out and the peer's answer came back",
    );
    let xs = &st["xen"]["xenstore"];
    assert_eq!(
        counter(&xs["protocol_errors"], "protocol_errors"),
        1,
        "the oversized header: {xs}"
    );
    for (name, n) in XENSTORE_ERRORS {
        let got = xs["errors"][name].as_u64().unwrap_or(0);
        assert!(got >= n, "xenstored {name}: {got} < {n}: {xs}");
    }
    assert!(
        counter(&st["xen"]["hypercall_errors"], "hypercall_errors") >= 120,
        "{}",
        st["xen"]
    );
    assert!(
        counter(&st["xen"]["grant_refusals"], "grant_refusals") >= 9,
        "{}",
        st["xen"]
    );
    assert_eq!(counter(&st["xen"]["grant_maps"], "grant_maps"), 0);
    let vif = &st["backends"]["vif-0"];
    for (kind, n) in NETIF_TX_ERRORS {
        assert_eq!(
            counter(&vif["tx_errors"][kind], kind),
            n,
            "netback {kind}: {vif}"
        );
    }
    for (name, n) in NETIF_COUNTS {
        assert_eq!(counter(&vif[name], name), n, "netback {name}: {vif}");
    }
    // The attacks' good frames went out (at least 10 ARP requests) and their replies
    // came in (at least 6, 4 of them into the refused buffers), then the services'
    // ping and TCP echo.
    assert!(counter(&vif["tx_frames"], "tx_frames") >= 12, "{vif}");
    assert!(counter(&vif["rx_frames"], "rx_frames") >= 8, "{vif}");

    // No write attack reached the attacked image; the good disk has its pattern.
    let mut want = vec![0u8; DISK as usize];
    pv_drivers::pattern::fill(9, 0, &mut want);
    if let Some(i) = attacked.read().iter().zip(&want).position(|(a, b)| a != b) {
        panic!("the attacked image changed at byte {i}");
    }
    expect_image(&good, SEED, 0, REGION);
    let mut want = vec![0u8; DISK as usize];
    pv_drivers::pattern::fill(IDE_SEED, 0, &mut want);
    if let Some(i) = ide.read().iter().zip(&want).position(|(a, b)| a != b) {
        panic!("the IDE image changed at byte {i}");
    }
    pv_drivers::pattern::fill(VIRTIO_SEED, 0, &mut want);
    if let Some(i) = virtio.read().iter().zip(&want).position(|(a, b)| a != b) {
        panic!("the virtio image changed at byte {i}");
    }
}
