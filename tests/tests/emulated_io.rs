//! Emulated I/O end to end: the real guest's ATA (PIO and bus-master DMA) and e1000
//! drivers against host-shim's PIIX3 IDE and e1000 models, with and without the Xen
//! interface and beside PV devices; and the same drivers against QEMU's own models
//! (`-M pc`, `-drive if=ide`, `-device e1000`), which nobody here wrote.
//!
//! Every disk test checks the image file on the host (a pattern the guest wrote and
//! flushed, or the guest verifying a pattern the host wrote); every network test runs
//! the guest's services against host clients through a TAP inside the test's own
//! network namespace.

use std::process::Command;

use system_tests::{
    BOOT_LIMIT, Machine, ScratchImage, expect_image, guest_image, guest_services_through_a_tap,
    in_private_netns, kvm_available, qemu_command, run_qemu, run_shim, run_with_limit, shim_binary,
    shim_command, stats_json, tap_available,
};

const TIMEOUT: &str = "150";
/// The region the block tests use: [64 KiB, 192 KiB) of a 1 MiB image.
const OFFSET: usize = 64 << 10;
const LEN: usize = 128 << 10;

fn blk_cmdline(phase: &str, mode: &str, seed: u64) -> String {
    format!(
        "blk.workload={phase} blk.offset={OFFSET} blk.size={LEN} blk.bs=16K blk.qd=4 \
         blk.seed={seed} blk.ata={mode}"
    )
}

/// The guest writes and flushes a pattern on the IDE disk under host-shim (`xen`:
/// with the Xen interface); the host finds exactly it in the image, and the shim's
/// counters show the commands and the register exits they cost.
fn ide_write(mode: &str, xen: bool) {
    let img = ScratchImage::new(&format!("ide-w-{mode}-{xen}"), 1 << 20);
    let disk = format!("{},if=ide", img.path());
    let mut args = vec!["--timeout", TIMEOUT, "--stats", "--disk", &disk];
    if !xen {
        args.push("--no-xen");
    }
    let run = run_shim(guest_image(), &blk_cmdline("write-pattern", mode, 7), &args);
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("blk: PASS");
    run.assert_contains("blk: ide:0: \"PVH-SHIM HARDDISK\"");
    expect_image(&img, 7, OFFSET, LEN);

    let v = stats_json(&run.stderr);
    let ide = &v["stats"]["devices"]["ide"];
    assert_eq!(ide["pci"], "00:01.1", "{v}");
    let (cmd, per_block) = match mode {
        "dma" => ("write_dma", 0),
        _ => ("write_sectors", 1),
    };
    // 8 writes of 16 KiB, one flush.
    assert_eq!(ide["commands"][cmd], 8, "{ide}");
    let flushes = ide["commands"]["flush_cache"].as_u64().unwrap_or(0)
        + ide["commands"]["flush_cache_ext"].as_u64().unwrap_or(0);
    assert_eq!(flushes, 1, "{ide}");
    assert_eq!(ide["sectors_written"], LEN as u64 / 512, "{ide}");
    // Each register access was a port exit the shim counted for this device.
    let exits =
        ide["exits"]["pio_read"].as_u64().unwrap() + ide["exits"]["pio_write"].as_u64().unwrap();
    assert_eq!(exits, ide["register_accesses"].as_u64().unwrap(), "{ide}");
    // PIO moves the data through the data port: a 512-byte block is at least one
    // access (KVM may batch `rep outsw`); DMA moves none through it.
    let data = ide["register_writes"]["primary.data"].as_u64().unwrap_or(0);
    assert!(data >= per_block * (LEN as u64 / 512), "{ide}");
    assert!(
        v["stats"]["irq_asserts"]["14"].as_u64().unwrap() >= 9,
        "{v}"
    );
    if !xen {
        assert!(v["stats"]["xen"].is_null(), "{v}");
    }
}

/// The host writes a pattern; the guest reads it back through the IDE disk and
/// verifies every byte.
fn ide_verify(mode: &str, xen: bool) {
    let img = ScratchImage::new(&format!("ide-v-{mode}-{xen}"), 1 << 20);
    img.write_pattern(11, OFFSET as u64, LEN);
    let disk = format!("{},if=ide", img.path());
    let mut args = vec!["--timeout", TIMEOUT, "--disk", &disk];
    if !xen {
        args.push("--no-xen");
    }
    let run = run_shim(
        guest_image(),
        &blk_cmdline("verify-pattern", mode, 11),
        &args,
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("blk: PASS");
    run.assert_contains("mismatches 0");
}

#[test]
fn ide_dma_with_xen() {
    if kvm_available("emulated_io::ide_dma_with_xen") {
        ide_write("dma", true);
        ide_verify("dma", true);
    }
}

#[test]
fn ide_dma_without_xen() {
    if kvm_available("emulated_io::ide_dma_without_xen") {
        ide_write("dma", false);
        ide_verify("dma", false);
    }
}

#[test]
fn ide_pio_with_xen() {
    if kvm_available("emulated_io::ide_pio_with_xen") {
        ide_write("pio", true);
        ide_verify("pio", true);
    }
}

#[test]
fn ide_pio_without_xen() {
    if kvm_available("emulated_io::ide_pio_without_xen") {
        ide_write("pio", false);
        ide_verify("pio", false);
    }
}

#[test]
fn a_corrupt_byte_on_the_ide_disk_is_found() {
    if !kvm_available("emulated_io::a_corrupt_byte_on_the_ide_disk_is_found") {
        return;
    }
    let img = ScratchImage::new("ide-corrupt", 1 << 20);
    img.write_pattern(11, OFFSET as u64, LEN);
    let mut data = img.read();
    data[100_000] ^= 0x5a;
    std::fs::write(img.file(), &data).expect("corrupt the image");
    let disk = format!("{},if=ide", img.path());
    let run = run_shim(
        guest_image(),
        &blk_cmdline("verify-pattern", "dma", 11),
        &["--timeout", TIMEOUT, "--no-xen", "--disk", &disk],
    );
    assert_eq!(run.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("blk: FAIL");
    run.assert_contains("100000");
}

#[test]
fn a_read_only_ide_disk_refuses_writes_and_the_file_is_unchanged() {
    if !kvm_available("emulated_io::a_read_only_ide_disk") {
        return;
    }
    let img = ScratchImage::new("ide-ro", 1 << 20);
    let disk = format!("{},if=ide,ro", img.path());
    let run = run_shim(
        guest_image(),
        &blk_cmdline("write-pattern", "dma", 3),
        &["--timeout", TIMEOUT, "--disk", &disk],
    );
    assert_eq!(run.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("blk: FAIL");
    assert!(
        img.read().iter().all(|&b| b == 0),
        "a read-only image changed"
    );
}

/// PV and emulated disks in one machine ("PV-on-HVM"): the guest picks either by
/// `blk.device=`, and only the chosen image changes.
#[test]
fn pv_and_ide_disks_side_by_side() {
    if !kvm_available("emulated_io::pv_and_ide_disks_side_by_side") {
        return;
    }
    for (device, seed) in [("ide:0", 21), ("xen:51712", 22)] {
        let pv = ScratchImage::new("side-pv", 1 << 20);
        let ide = ScratchImage::new("side-ide", 1 << 20);
        let ide_spec = format!("{},if=ide", ide.path());
        let cmdline = format!(
            "{} blk.device={device}",
            blk_cmdline("write-pattern", "dma", seed)
        );
        let run = run_shim(
            guest_image(),
            &cmdline,
            &[
                "--timeout",
                TIMEOUT,
                "--disk",
                pv.path(),
                "--disk",
                &ide_spec,
            ],
        );
        assert_eq!(
            run.code(),
            Some(0),
            "{device}: {}\n{}",
            run.stdout,
            run.stderr
        );
        let (written, untouched) = if device.starts_with("ide") {
            (&ide, &pv)
        } else {
            (&pv, &ide)
        };
        expect_image(written, seed, OFFSET, LEN);
        assert!(
            untouched.read().iter().all(|&b| b == 0),
            "{device}: the other disk changed"
        );
    }
}

fn e1000_services(xen: bool) {
    let run = guest_services_through_a_tap(|tap, cmdline| {
        let net = format!("tap={tap},model=e1000");
        let mut args = vec!["--net", net.as_str()];
        if !xen {
            args.push("--no-xen");
        }
        shim_command(cmdline, &args)
    });
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("net: PASS");
    run.assert_contains("net: e1000 on 00:03.0: link up");
    let v = stats_json(&run.stderr);
    let nic = &v["stats"]["devices"]["e1000-0"];
    assert_eq!(nic["pci"], "00:03.0", "{v}");
    // Frames went both ways through the model, each transmit batch was one TDT write,
    // and the INTA# line (GSI 16 + (3 + 1 - 1) % 8 = 19) rose.
    assert_eq!(
        nic["exits"]["mmio_write"], nic["mmio_writes"],
        "every register write is an MMIO exit: {nic}"
    );
    assert_eq!(nic["register_writes"]["TDT"], nic["tdt_writes"], "{nic}");
    assert!(nic["tdt_writes"].as_u64().unwrap() > 0, "{nic}");
    assert!(v["stats"]["irq_asserts"]["19"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn e1000_serves_ping_and_tcp_with_xen() {
    const TEST: &str = "emulated_io::e1000_serves_ping_and_tcp_with_xen";
    if kvm_available(TEST) && tap_available(TEST) {
        in_private_netns(TEST, || e1000_services(true));
    }
}

#[test]
fn e1000_serves_ping_and_tcp_without_xen() {
    const TEST: &str = "emulated_io::e1000_serves_ping_and_tcp_without_xen";
    if kvm_available(TEST) && tap_available(TEST) {
        in_private_netns(TEST, || e1000_services(false));
    }
}

#[test]
fn bad_emulated_device_options_are_one_clear_error() {
    let img = ScratchImage::new("bad-opts", 1 << 20);
    let two = [
        format!("{},if=ide", img.path()),
        format!("{},if=ide", img.path()),
    ];
    let pv = img.path().to_owned();
    for (args, want) in [
        (
            vec!["--disk", two[0].as_str(), "--disk", two[1].as_str()],
            "one --disk with if=ide",
        ),
        (
            vec!["--no-xen", "--disk", pv.as_str()],
            "need the Xen interface",
        ),
        (vec!["--disk", "x.img,if=scsi"], "unknown interface"),
        (vec!["--net", "tap=t0,model=rtl8139"], "unknown model"),
    ] {
        let mut cmd = Command::new(shim_binary());
        cmd.args(["run", "--kernel"]).arg(guest_image()).args(&args);
        let run = run_with_limit(cmd, BOOT_LIMIT);
        assert_eq!(run.code(), Some(125), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(want), "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
}

// ---- our drivers against QEMU's models

fn qemu_ide(mode: &str) {
    let img = ScratchImage::new(&format!("qemu-ide-{mode}"), 1 << 20);
    let drive = format!("file={},if=ide,format=raw", img.path());
    let run = run_qemu(
        Machine::Pc,
        guest_image(),
        &blk_cmdline("write-pattern,verify-pattern", mode, 5),
        &["-drive", &drive],
    );
    assert_eq!(
        run.guest_status(),
        Some(0),
        "{}\n{}",
        run.0.stdout,
        run.0.stderr
    );
    run.0.assert_contains("blk: ide:0: \"QEMU HARDDISK\"");
    run.0.assert_line("blk: PASS");
    expect_image(&img, 5, OFFSET, LEN);
}

#[test]
fn our_ata_driver_on_qemus_ide_with_dma() {
    qemu_ide("dma");
}

#[test]
fn our_ata_driver_on_qemus_ide_with_pio() {
    qemu_ide("pio");
}

#[test]
fn our_e1000_driver_on_qemus_e1000() {
    const TEST: &str = "emulated_io::our_e1000_driver_on_qemus_e1000";
    if !tap_available(TEST) {
        return;
    }
    in_private_netns(TEST, || {
        let run = guest_services_through_a_tap(|tap, cmdline| {
            let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
            qemu_command(
                Machine::Pc,
                guest_image(),
                cmdline,
                &["-netdev", &netdev, "-device", "e1000,netdev=n0"],
            )
        });
        // QEMU's isa-debug-exit: (status << 1) | 1.
        assert_eq!(run.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
        run.assert_line("net: PASS");
        run.assert_contains("net: e1000 on 00:03.0: link up");
    });
}
