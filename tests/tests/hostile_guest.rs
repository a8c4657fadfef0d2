//! A hostile guest (#16): the real guest with `selftest=hostile` attacks host-shim from
//! inside (hypercall and event-channel garbage, xenstore abuse, a raw blkif ring of
//! malformed requests against the first disk, raw netif rings of malformed requests
//! against the PV NIC; bad PRD tables, a transfer past the end and a register storm
//! against an emulated IDE disk; bad queues and chains against virtio-blk), then runs
//! the block workload on the second disk and its network services on the NIC, which the
//! host pings and reaches over TCP. The shim must refuse every attack, count it, neither
//! panic nor hang, leave the attacked images as they were and still serve the
//! well-behaved disk and NIC. The TAP, the shim and the host's clients live in a network
//! namespace of the test's own. Skips loudly where /dev/kvm, root or /dev/net/tun is
//! absent.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
const BLKIF_ERRORS: [(&str, u64); 7] = [
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
const VIRTIO_COUNTS: [(&str, &str, u64); 4] = [
    // Activation with the descriptor table at 3 GiB, the available ring wrapping the
    // address space, the used ring at 2^52.
    ("transport", "bad_activations", 3),
    // Data, status, header or indirect table outside RAM or wrapping; a 1-byte header;
    // `next` beyond the queue.
    ("device", "bad_chains", 6),
    // A read past the end; 4 GiB of data; the loop (walked to the queue's size, then
    // not whole sectors).
    ("device", "io_errors", 3),
    // Request type 99.
    ("device", "unsupported", 1),
];
/// The pattern seed of the virtio image (`hostile::virtio::VIRTIO_SEED` in the guest).
const VIRTIO_SEED: u64 = 13;

/// The guest's address on the TAP, and the host's (which answers the ARP requests of
/// the netif attacks and then pings the guest).
const GUEST_IP: &str = "10.206.0.2";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 206, 0, 1);
const TAP: &str = "hostile-tap0";

/// The netif attacks of `guest-kernel/src/kernel/hostile/netif.rs` (the `netif` line).
const NETIF_ATTACKS: u64 = 32;

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
    // ring reference not a number, no request-rx-copy.
    ("connect_errors", 5),
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

#[test]
fn a_hostile_guest_is_refused_everywhere_and_the_well_behaved_disk_and_nic_still_work() {
    const TEST: &str = "hostile_guest::a_hostile_guest_is_refused_everywhere";
    if !kvm_available(TEST) || !tap_available(TEST) {
        return;
    }
    in_private_netns(TEST, hostile_guest);
}

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
         blk.size={REGION} blk.seed={SEED} net.ip={GUEST_IP}/24 net.gw={HOST_IP} \
         net.exit-after=1"
    );
    let mut shim = Command::new(shim_binary());
    shim.args(["run", "--kernel"])
        .arg(guest_image())
        .args(["--cmdline", &cmdline])
        .args(["--timeout", "300", "--stats"])
        .args(["--disk", attacked.path(), "--disk", good.path()])
        .args(["--disk", &ide_disk, "--disk", &virtio_disk])
        .args(["--net", &format!("tap={TAP}")]);
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
    ] {
        assert!(
            count(cat).is_some_and(|n| n > 0),
            "no clean {cat} line\n{all}"
        );
    }
    assert_eq!(count("netif"), Some(NETIF_ATTACKS), "{all}");
    run.assert_line("blk: PASS");
    run.assert_contains("hostile: netif: the rings still carry frames both ways");

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
