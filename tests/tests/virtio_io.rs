//! virtio end to end: the real guest's virtio-blk and virtio-net drivers
//! (`hw_devices::virtio`) against host-shim's virtio-pci devices (`--disk ...,if=virtio`,
//! `--net tap=...,model=virtio`, with and without the Xen interface), and against
//! QEMU's own (`-device virtio-blk-pci,disable-legacy=on`,
//! `virtio-net-pci,disable-legacy=on`), which nobody here wrote.
//!
//! Every disk test checks the image file on the host (a pattern the guest wrote and
//! flushed, or the guest verifying a pattern the host wrote); every network test runs the
//! guest's services against host clients through a TAP inside the test's own network
//! namespace, as the e1000 tests do.
//!
//! The drivers take MSI-X where the device has it (the shim's and QEMU's devices do):
//! under the shim every interrupt is a message (`transport.msix_messages` equals
//! `transport.interrupts`) and no ISR is read, which the transport's counters show as
//! MMIO reads that do not grow with the workload (they are the set-up's only);
//! `virtio.msix=off` puts the driver back on INTx, where they do.

use system_tests::{
    Machine, ScratchImage, expect_image, guest_image, guest_services_through_a_tap,
    in_private_netns, kvm_available, qemu_command, run_qemu, run_shim, shim_command, stats_json,
    tap_available,
};

const TIMEOUT: &str = "150";
/// The region the block tests use: [64 KiB, 192 KiB) of a 1 MiB image.
const OFFSET: usize = 64 << 10;
const LEN: usize = 128 << 10;

fn blk_cmdline(phase: &str, seed: u64) -> String {
    format!(
        "blk.workload={phase} blk.device=virtio:0 blk.offset={OFFSET} blk.size={LEN} \
         blk.bs=16K blk.qd=4 blk.seed={seed}"
    )
}

/// The guest writes and flushes a pattern on a virtio-blk disk under host-shim, then
/// reads it back; the host finds exactly it in the image, and the shim's counters show
/// the requests and every interrupt sent as an MSI-X message. `xen`: with the Xen
/// interface (and its PV disk list empty).
fn shim_virtio_blk(xen: bool) {
    let img = ScratchImage::new(&format!("virtio-w-{xen}"), 1 << 20);
    let disk = format!("{},if=virtio", img.path());
    let mut args = vec!["--timeout", TIMEOUT, "--stats", "--disk", &disk];
    if !xen {
        args.push("--no-xen");
    }
    let run = run_shim(
        guest_image(),
        &blk_cmdline("write-pattern,verify-pattern", 7),
        &args,
    );
    run.assert_contains("interrupts MSI-X vector");
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("blk: PASS");
    run.assert_contains("blk: virtio-blk on ");
    run.assert_contains("mismatches 0");
    expect_image(&img, 7, OFFSET, LEN);

    let v = stats_json(&run.stderr);
    let dev = &v["stats"]["devices"]["virtio-blk-0"];
    // 8 writes and 8 reads of 16 KiB, one flush, each request once.
    let d = &dev["device"];
    assert_eq!(d["writes"], 8, "{dev}");
    assert_eq!(d["reads"], 8, "{dev}");
    assert_eq!(d["flushes"], 1, "{dev}");
    assert_eq!(d["bytes_written"], LEN as u64, "{dev}");
    assert_eq!(d["bad_chains"], 0, "{dev}");
    let t = &dev["transport"];
    assert!(t["msix_messages"].as_u64().unwrap() > 0, "{dev}");
    assert_eq!(t["msix_messages"], t["interrupts"], "{dev}");
}

/// The transport counters of one run of write-pattern and verify-pattern over `len` bytes of a fresh
/// virtio-blk disk under the shim (no Xen), with `virtio.msix=` `msix`.
fn shim_blk_transport(len: usize, msix: &str) -> serde_json::Value {
    let img = ScratchImage::new(&format!("virtio-msix-{msix}-{len}"), 1 << 20);
    let disk = format!("{},if=virtio", img.path());
    let cmdline = format!(
        "blk.workload=write-pattern,verify-pattern blk.device=virtio:0 blk.offset={OFFSET} \
         blk.size={len} blk.bs=4K blk.qd=4 blk.seed=3 virtio.msix={msix}"
    );
    let run = run_shim(
        guest_image(),
        &cmdline,
        &["--timeout", TIMEOUT, "--stats", "--no-xen", "--disk", &disk],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("blk: PASS");
    expect_image(&img, 3, OFFSET, len);
    let v = stats_json(&run.stderr);
    v["stats"]["devices"]["virtio-blk-0"]["transport"].clone()
}

/// With MSI-X the driver reads no ISR byte: the device's MMIO reads are the set-up's,
/// the same for a workload eight times longer (with more interrupts, every one a
/// message). With `virtio.msix=off` it is back on INTx: no message, and an ISR read
/// per poll makes the reads grow past the set-up's.
#[test]
fn virtio_blk_under_the_shim_msix_reads_no_isr_and_can_be_turned_off() {
    if !kvm_available("virtio_io::virtio_blk_under_the_shim_msix_reads_no_isr") {
        return;
    }
    let reads = |t: &serde_json::Value| t["exits"]["mmio_read"].as_u64().unwrap();
    let interrupts = |t: &serde_json::Value| t["interrupts"].as_u64().unwrap();
    // 9 requests at most 4 in flight against 65: at most 9 interrupts against at least
    // 17 (a batch of at most 4 completions per interrupt).
    let short = shim_blk_transport(16 << 10, "on");
    let long = shim_blk_transport(LEN, "on");
    for t in [&short, &long] {
        assert!(interrupts(t) > 0, "{t}");
        assert_eq!(t["msix_messages"], t["interrupts"], "{t}");
    }
    assert!(interrupts(&long) > interrupts(&short), "{short}\n{long}");
    assert_eq!(reads(&short), reads(&long), "{short}\n{long}");

    let intx = shim_blk_transport(LEN, "off");
    assert_eq!(intx["msix_messages"], 0, "{intx}");
    assert!(interrupts(&intx) > 0, "{intx}");
    // ISR reads: the INTx run's reads less the set-up's (the MSI-X run's, less its one
    // read-back of the queue vector). Each interrupt but the last (the final reset may
    // clear it) is acknowledged by one.
    let isr_reads = reads(&intx) + 1 - reads(&long);
    assert!(isr_reads + 1 >= interrupts(&intx), "{intx}\n{long}");
}

#[test]
fn virtio_blk_under_the_shim_without_xen() {
    if kvm_available("virtio_io::virtio_blk_under_the_shim_without_xen") {
        shim_virtio_blk(false);
    }
}

#[test]
fn virtio_blk_under_the_shim_with_xen() {
    if kvm_available("virtio_io::virtio_blk_under_the_shim_with_xen") {
        shim_virtio_blk(true);
    }
}

/// The host writes a pattern, the guest verifies it through the shim's virtio-blk;
/// then a read-only disk refuses the guest's writes and its file stays unchanged.
#[test]
fn virtio_blk_under_the_shim_reads_the_hosts_pattern_and_honours_read_only() {
    if !kvm_available("virtio_io::virtio_blk_reads_and_read_only") {
        return;
    }
    let img = ScratchImage::new("virtio-v", 1 << 20);
    img.write_pattern(11, OFFSET as u64, LEN);
    let disk = format!("{},if=virtio", img.path());
    let run = run_shim(
        guest_image(),
        &blk_cmdline("verify-pattern", 11),
        &["--timeout", TIMEOUT, "--no-xen", "--disk", &disk],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("blk: PASS");
    run.assert_contains("mismatches 0");

    let ro = ScratchImage::new("virtio-ro", 1 << 20);
    let disk = format!("{},if=virtio,ro", ro.path());
    let run = run_shim(
        guest_image(),
        &blk_cmdline("write-pattern", 3),
        &["--timeout", TIMEOUT, "--no-xen", "--disk", &disk],
    );
    assert_eq!(run.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    run.assert_contains("read-only");
    run.assert_line("blk: FAIL");
    assert!(
        ro.read().iter().all(|&b| b == 0),
        "a read-only image changed"
    );
}

// ---- our drivers against QEMU's devices

#[test]
fn our_virtio_blk_driver_on_qemus_virtio_blk() {
    let img = ScratchImage::new("qemu-virtio", 1 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.path());
    let run = run_qemu(
        Machine::Pc,
        guest_image(),
        &blk_cmdline("write-pattern,verify-pattern", 5),
        &[
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0,disable-legacy=on",
        ],
    );
    assert_eq!(
        run.guest_status(),
        Some(0),
        "{}\n{}",
        run.0.stdout,
        run.0.stderr
    );
    run.0.assert_contains(" 1af4:1042 ");
    run.0.assert_contains("blk: virtio-blk on ");
    // QEMU's device has MSI-X (2 vectors): the driver takes it.
    run.0.assert_contains("interrupts MSI-X vector");
    run.0.assert_line("blk: PASS");
    run.0.assert_contains("mismatches 0");
    expect_image(&img, 5, OFFSET, LEN);
}

/// A legacy-only (transitional, no modern capabilities) virtio-blk is found and
/// refused with a reason, not driven.
#[test]
fn our_virtio_blk_driver_refuses_a_legacy_only_device() {
    let img = ScratchImage::new("qemu-virtio-legacy", 1 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.path());
    let run = run_qemu(
        Machine::Pc,
        guest_image(),
        &blk_cmdline("write-pattern", 5),
        &[
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0,disable-modern=on",
        ],
    );
    assert_eq!(
        run.guest_status(),
        Some(1),
        "{}\n{}",
        run.0.stdout,
        run.0.stderr
    );
    run.0.assert_contains(" 1af4:1001 ");
    run.0.assert_contains("legacy-only");
    run.0.assert_line("blk: FAIL (no device virtio:0)");
    assert!(img.read().iter().all(|&b| b == 0), "the image changed");
}

#[test]
fn our_virtio_net_driver_on_qemus_virtio_net() {
    const TEST: &str = "virtio_io::our_virtio_net_driver_on_qemus_virtio_net";
    if !tap_available(TEST) {
        return;
    }
    in_private_netns(TEST, || {
        let run = guest_services_through_a_tap(|tap, cmdline| {
            let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
            qemu_command(
                Machine::Pc,
                guest_image(),
                &format!("{cmdline} net.device=virtio:0"),
                &[
                    "-netdev",
                    &netdev,
                    "-device",
                    "virtio-net-pci,netdev=n0,disable-legacy=on",
                ],
            )
        });
        // QEMU's isa-debug-exit: (status << 1) | 1.
        assert_eq!(run.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
        run.assert_contains(" 1af4:1041 ");
        run.assert_contains("net: virtio-net on ");
        run.assert_contains(": link up, interrupts MSI-X vector");
        run.assert_line("net: PASS");
    });
}

/// QEMU's default virtio-blk-pci is transitional (ID 0x1001, a legacy I/O BAR) with the
/// modern capabilities too: it is driven through them. With two such disks,
/// `virtio:1` is the second, and only its image changes.
#[test]
fn our_virtio_blk_driver_on_qemus_transitional_virtio_blk_picks_the_nth() {
    let first = ScratchImage::new("qemu-virtio-t0", 1 << 20);
    let second = ScratchImage::new("qemu-virtio-t1", 1 << 20);
    let d0 = format!("file={},if=none,id=d0,format=raw", first.path());
    let d1 = format!("file={},if=none,id=d1,format=raw", second.path());
    let cmdline = blk_cmdline("write-pattern,verify-pattern", 9).replace("virtio:0", "virtio:1");
    let run = run_qemu(
        Machine::Pc,
        guest_image(),
        &cmdline,
        &[
            "-drive",
            &d0,
            "-device",
            "virtio-blk-pci,drive=d0",
            "-drive",
            &d1,
            "-device",
            "virtio-blk-pci,drive=d1",
        ],
    );
    assert_eq!(
        run.guest_status(),
        Some(0),
        "{}\n{}",
        run.0.stdout,
        run.0.stderr
    );
    run.0.assert_contains(" 1af4:1001 ");
    run.0.assert_contains("interrupts MSI-X vector");
    run.0.assert_line("blk: PASS");
    expect_image(&second, 9, OFFSET, LEN);
    assert!(
        first.read().iter().all(|&b| b == 0),
        "the other disk changed"
    );
}

/// The guest's network services on host-shim's virtio-net (`--net tap=...,model=virtio`)
/// through a TAP in the test's own namespace: ping and TCP from host clients, and the
/// shim's counters show every interrupt sent as an MSI-X message.
fn shim_virtio_net(xen: bool) {
    let run = guest_services_through_a_tap(|tap, cmdline| {
        let net = format!("tap={tap},model=virtio");
        let mut args = vec!["--net", net.as_str()];
        if !xen {
            args.push("--no-xen");
        }
        shim_command(&format!("{cmdline} net.device=virtio:0"), &args)
    });
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("net: PASS");
    run.assert_contains("net: virtio-net on ");
    run.assert_contains(": link up");
    let v = stats_json(&run.stderr);
    let dev = &v["stats"]["devices"]["virtio-net-0"];
    assert!(dev.is_object(), "{v}");
    run.assert_contains("interrupts MSI-X vector");
    let t = &dev["transport"];
    assert!(t["msix_messages"].as_u64().unwrap() > 0, "{dev}");
    assert_eq!(t["msix_messages"], t["interrupts"], "{dev}");
}

#[test]
fn virtio_net_under_the_shim_without_xen() {
    const TEST: &str = "virtio_io::virtio_net_under_the_shim_without_xen";
    if kvm_available(TEST) && tap_available(TEST) {
        in_private_netns(TEST, || shim_virtio_net(false));
    }
}

#[test]
fn virtio_net_under_the_shim_with_xen() {
    const TEST: &str = "virtio_io::virtio_net_under_the_shim_with_xen";
    if kvm_available(TEST) && tap_available(TEST) {
        in_private_netns(TEST, || shim_virtio_net(true));
    }
}
