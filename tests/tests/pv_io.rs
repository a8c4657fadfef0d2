//! PV block and network end to end under host-shim: the real guest's blkfront against
//! the shim's blkback on an image file, and its netfront against netback on a TAP
//! device reached from the host with `ping` and TCP. Skips loudly where /dev/kvm (or,
//! for the network, root and /dev/net/tun) is absent.

use std::process::Command;

use system_tests::{
    BOOT_LIMIT, ScratchImage, expect_pattern, guest_image, guest_services_through_a_tap,
    in_private_netns, kvm_available, run_shim, run_with_limit, shim_binary, shim_command,
    stats_json, tap_available,
};

const TIMEOUT: &str = "150";

#[test]
fn guest_writes_a_pattern_and_flushes_and_the_host_finds_it_in_the_file() {
    if !kvm_available("pv_io::guest_writes_a_pattern") {
        return;
    }
    let img = ScratchImage::new("write", 1 << 20);
    let disk = img.path().to_owned();
    let run = run_shim(
        guest_image(),
        "blk.workload=write-pattern blk.offset=64K blk.size=128K blk.bs=16K blk.qd=4 blk.seed=7",
        &["--timeout", TIMEOUT, "--stats", "--disk", &disk],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    let data = img.read();
    expect_pattern(&data[64 << 10..192 << 10], 7, 64 << 10);
    // Nothing outside the region was touched.
    assert!(
        data[..64 << 10].iter().all(|&b| b == 0),
        "bytes before the region changed"
    );
    assert!(
        data[192 << 10..].iter().all(|&b| b == 0),
        "bytes after the region changed"
    );

    let v = stats_json(&run.stderr);
    let vbd = &v["stats"]["backends"]["vbd-51712"];
    assert!(vbd.is_object(), "no vbd counters: {v}");
    // Counters present and coherent: 8 writes of 16 KiB and at least one flush.
    let text = vbd.to_string();
    assert!(text.contains("write"), "{text}");
}

#[test]
fn guest_verifies_a_pattern_the_host_wrote_and_notices_a_corrupt_byte() {
    if !kvm_available("pv_io::guest_verifies_a_pattern") {
        return;
    }
    let img = ScratchImage::new("verify", 1 << 20);
    img.write_pattern(11, 0, 256 << 10);
    let disk = img.path().to_owned();
    let cmdline = "blk.workload=verify-pattern blk.size=256K blk.bs=4K blk.qd=16 blk.seed=11";
    let run = run_shim(
        guest_image(),
        cmdline,
        &["--timeout", TIMEOUT, "--disk", &disk],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);

    // One corrupt byte in the middle: the guest must fail, naming the offset.
    let mut data = img.read();
    data[100_000] ^= 0x5a;
    std::fs::write(img.file(), &data).expect("corrupt image");
    let run = run_shim(
        guest_image(),
        cmdline,
        &["--timeout", TIMEOUT, "--disk", &disk],
    );
    assert_ne!(
        run.code(),
        Some(0),
        "a corrupt byte went unnoticed:\n{}",
        run.stdout
    );
    run.assert_contains("100000");
}

#[test]
fn a_read_only_disk_refuses_the_guests_writes_and_the_file_is_unchanged() {
    if !kvm_available("pv_io::a_read_only_disk") {
        return;
    }
    let img = ScratchImage::new("ro", 1 << 20);
    let disk = format!("{},ro", img.path());
    let run = run_shim(
        guest_image(),
        "blk.workload=write-pattern blk.size=16K blk.seed=3",
        &["--timeout", TIMEOUT, "--disk", &disk],
    );
    assert_ne!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        img.read().iter().all(|&b| b == 0),
        "a read-only image changed"
    );
}

#[test]
fn bad_device_options_are_one_clear_error() {
    for (args, want) in [
        (&["--disk", "x.img,bogus"][..], "unknown option 'bogus'"),
        (
            &["--net", "mac=00:16:3e:00:00:01"][..],
            "--net needs tap=NAME",
        ),
        (
            &["--disk", "/nonexistent/dir/x.img"][..],
            "/nonexistent/dir/x.img",
        ),
        (
            &["--no-xen", "--disk", "x.img"][..],
            "need the Xen interface",
        ),
    ] {
        let mut cmd = Command::new(shim_binary());
        cmd.args(["run", "--kernel"]).arg(guest_image()).args(args);
        let run = run_with_limit(cmd, BOOT_LIMIT);
        assert_eq!(run.code(), Some(125), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(want), "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
}

#[test]
fn host_pings_the_guest_and_moves_data_over_tcp_through_the_tap() {
    const TEST: &str = "pv_io::host_pings_the_guest";
    if !kvm_available(TEST) || !tap_available(TEST) {
        return;
    }
    // The TAP, its address, the shim and every client live in the test's own namespace.
    in_private_netns(TEST, ping_and_tcp_through_a_tap);
}

fn ping_and_tcp_through_a_tap() {
    let run = guest_services_through_a_tap(|tap, cmdline| {
        shim_command(cmdline, &["--net", &format!("tap={tap}")])
    });
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    let v = stats_json(&run.stderr);
    assert!(v["stats"]["backends"]["vif-0"].is_object(), "{v}");
}
