//! host-shim serving drivers nobody here wrote: a stock Debian Linux kernel
//! (bookworm-backports 6.12, `scripts/linux-guest.sh`) boots under host-shim twice.
//!
//! - With `--no-xen --initrd`, its own `ata_piix` and `e1000` drivers use the shim's
//!   PIIX3 IDE and 82540EM models; Linux finds the IOAPIC and the PCI interrupt routing
//!   in the shim's MP table.
//! - As a Xen PVH guest (the default), it finds Xen by CPUID, calls it with
//!   `vmcall`/`vmmcall` (which KVM's Xen support hands to the shim), and its own
//!   `xen-blkfront` and `xen-netfront` connect to the shim's blkback and netback
//!   through xenstore, grant tables and event channels.
//!
//! Either way Linux finds the disk, reads a pattern the host wrote, writes and reads
//! back its own (checked again in the image after the run); the NIC gets a link, pings
//! the host and is pinged and reached over TCP by it. Linux cannot run on this
//! project's kvm-pvm, so the shim runs inside QEMU (`scripts/shim-in-qemu.sh`), where a
//! real KVM (with Xen support) runs the guest at TCG speed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use system_tests::{
    Run, ScratchImage, TempDir, run_with_limit, stats_json, workspace_root, write_script,
};

/// The runner's bound on the whole run (L1 boot, Linux boot, the checks).
const RUNNER_TIMEOUT: &str = "600";
/// The harness's safety net: building the images on an empty cache, plus the run.
const LIMIT: Duration = Duration::from_secs(900);

/// The Linux guest's PID 1 (busybox sh). Loads the drivers, checks the disk (`@DISK@`)
/// and the network, prints `LINUX: ...` results and `LINUX-GUEST: PASS`, and ends the
/// run through the exit port 0xf4 (/dev/port) with 0, or 1 on a failure.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
finish() {
    sync
    if [ "$1" = 0 ]; then
        dd if=/dev/zero of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    else
        printf '\001' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    fi
    echo "LINUX-GUEST: no exit port; rebooting"
    reboot -f
}
fail() {
    echo "LINUX-GUEST: FAIL: $*"
    finish 1
}
while read -r m; do
    insmod "/lib/modules/$m" || fail "insmod $m"
done </modules

# The disk: the pattern the host wrote at 1 MiB, then one of ours at 2 MiB, written
# through to the device, the page cache dropped, and read back.
i=0
while [ ! -b @DISK@ ]; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || fail "no @DISK@"
    sleep 0.1
done
got=$(dd if=@DISK@ bs=4096 skip=256 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$(cat /expect-read)" ] || fail "read sha256 $got, want $(cat /expect-read)"
echo "LINUX: disk read ok"
dd if=/pattern of=@DISK@ bs=4096 seek=512 conv=fsync 2>/dev/null || fail "write"
echo 3 >/proc/sys/vm/drop_caches
got=$(dd if=@DISK@ bs=4096 skip=512 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$(sha256sum </pattern | cut -d' ' -f1)" ] || fail "write read back sha256 $got"
echo "LINUX: disk write ok"

# The network: link up, ping the host, then the host pings us and says so over TCP.
ip link set eth0 up || fail "eth0 up"
ip addr add 10.204.0.2/24 dev eth0 || fail "address"
i=0
until [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ]; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || fail "no carrier"
    sleep 0.1
done
ping -c 3 -W 5 10.204.0.1 || fail "ping the host"
echo "LINUX: ping ok"
msg=$(timeout 120 nc -l -p 7000)
[ "$msg" = "host pinged the guest" ] || fail "the host said '$msg'"
echo "LINUX: host reached us"
echo "LINUX-GUEST: PASS"
finish 0
"#;

/// The L1's side: the TAP (host address 10.204.0.1), created before host-shim.
const L1_PRE: &str = "set -e
tunctl -t tap0 >/dev/null
ip addr add 10.204.0.1/24 dev tap0
ip link set tap0 up
";

/// The L1's client: ping the guest until it answers, then tell it over TCP.
const L1_CLIENT: &str = r#"i=0
while ! ping -c 1 -W 1 10.204.0.2 >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 300 ] || { echo "client: no ping reply"; exit 1; }
done
echo "client: the guest answered ping"
i=0
until echo "host pinged the guest" | nc 10.204.0.2 7000; do
    i=$((i + 1))
    [ "$i" -lt 60 ] || { echo "client: cannot reach port 7000"; exit 1; }
    sleep 1
done
"#;

/// The SHA-256 of `data` in hex, as `sha256sum` (coreutils here, busybox in the guest)
/// prints it.
fn sha256(dir: &Path, data: &[u8]) -> String {
    let f = dir.join("sha256.in");
    std::fs::write(&f, data).expect("write");
    let out = Command::new("sha256sum")
        .arg(&f)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.split_whitespace().next().expect("a hash").to_owned()
}

/// The L1's check after the run: the guest's write reached the image (`@IMAGE@`).
const L1_POST: &str = r#"got=$(dd if=@IMAGE@ bs=4096 skip=512 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$got" = "@WANT@" ]; then
    echo "post: the image holds the guest's write"
else
    echo "post: the image holds $got at 2 MiB, not the guest's write"
    exit 1
fi
"#;

/// Builds the guest in `dir` with `modules`, its disk at `disk` (`/dev/sda`).
fn build_guest(dir: &Path, modules: &[&str], disk: &str) {
    let init = dir.join("init");
    write_script(&init, INIT.replace("@DISK@", disk)).expect("write init");
    let mut pattern = vec![0u8; 64 << 10];
    pv_drivers::pattern::fill(32, 0, &mut pattern);
    std::fs::write(dir.join("pattern"), &pattern).expect("write pattern");
    let mut expect = vec![0u8; 64 << 10];
    pv_drivers::pattern::fill(31, 1 << 20, &mut expect);
    std::fs::write(dir.join("expect-read"), sha256(dir, &expect) + "\n").expect("write");
    let mut cmd = Command::new(workspace_root().join("scripts").join("linux-guest.sh"));
    cmd.arg("--out")
        .arg(dir)
        .arg("--init")
        .arg(&init)
        .args(modules.iter().flat_map(|m| ["--module", m]))
        .arg("--add")
        .arg(format!("{}:/pattern", dir.join("pattern").display()))
        .arg("--add")
        .arg(format!(
            "{}:/expect-read",
            dir.join("expect-read").display()
        ));
    let run = run_with_limit(cmd, LIMIT);
    assert_eq!(run.code(), Some(0), "linux-guest.sh:\n{}", run.stderr);
}

/// Runs the guest in `dir` under host-shim in QEMU with `devices` (host-shim's options
/// for the disk image and the NIC on tap0), checking the image after the run.
fn run_linux(dir: &Path, disk: &ScratchImage, devices: &[&str]) -> Run {
    let pre = dir.join("pre.sh");
    let client = dir.join("client.sh");
    let post = dir.join("post.sh");
    write_script(&pre, L1_PRE).expect("write pre");
    write_script(&client, L1_CLIENT).expect("write client");
    let mut pattern = vec![0u8; 64 << 10];
    pv_drivers::pattern::fill(32, 0, &mut pattern);
    let post_text = L1_POST
        .replace("@IMAGE@", disk.path())
        .replace("@WANT@", &sha256(dir, &pattern));
    write_script(&post, post_text).expect("write post");
    let vmlinux = dir.join("vmlinux");
    let initrd = dir.join("initrd");
    let mut cmd = Command::new(workspace_root().join("scripts").join("shim-in-qemu.sh"));
    cmd.arg("--kernel")
        .arg(&vmlinux)
        .arg("--file")
        .arg(&initrd)
        .args(["--file", disk.path()])
        .arg("--l1-pre")
        .arg(&pre)
        .arg("--l1-script")
        .arg(&client)
        .arg("--l1-post")
        .arg(&post)
        .args(["--timeout", RUNNER_TIMEOUT, "--"])
        .args(["--mem", "256", "--timeout", "400", "--stats"])
        .arg("--initrd")
        .arg(&initrd)
        .args(devices)
        .args(["--cmdline", "console=ttyS0 panic=-1 reboot=k"]);
    run_with_limit(cmd, LIMIT)
}

/// Asserts the guest's own verdicts and the image check, returning the stats.
fn assert_passed(run: &Run) -> serde_json::Value {
    let show = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.code(), Some(0), "{show}");
    for line in [
        "LINUX: disk read ok",
        "LINUX: disk write ok",
        "LINUX: ping ok",
        "LINUX: host reached us",
        "LINUX-GUEST: PASS",
    ] {
        assert!(
            run.stdout.lines().any(|l| l.trim_end() == line),
            "no '{line}':\n{show}"
        );
    }
    assert!(
        run.stderr
            .lines()
            .any(|l| l.trim_end() == "post: the image holds the guest's write"),
        "{show}"
    );
    stats_json(&run.stderr)
}

/// Builds the guest (`modules`, its disk at `disk_dev`) in a scratch directory named
/// after `tag`, runs it with `devices(image path)`, and asserts its verdicts, the image
/// check and the console `fragments`; returns the stats.
fn boot_linux(
    tag: &str,
    modules: &[&str],
    disk_dev: &str,
    devices: impl Fn(&str) -> Vec<String>,
    fragments: &[&str],
) -> serde_json::Value {
    let dir = TempDir::new(&format!("{tag}-test"));
    build_guest(&dir.0, modules, disk_dev);
    let disk = ScratchImage::new(tag, 16 << 20);
    disk.write_pattern(31, 1 << 20, 64 << 10);
    let args = devices(disk.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_linux(&dir.0, &disk, &args);
    let v = assert_passed(&run);
    let show = format!("{}\n{}", run.stdout, run.stderr);
    for fragment in fragments {
        assert!(run.stdout.contains(fragment), "no '{fragment}':\n{show}");
    }
    v
}

#[test]
fn linux_uses_its_xen_pv_drivers_against_the_shims_backends() {
    // Linux took the Xen PVH path, and its drivers are the PV ones.
    let v = boot_linux(
        "linux-xen-guest",
        &["xen-blkfront", "xen-netfront"],
        "/dev/xvda",
        |disk| {
            vec![
                "--disk".into(),
                disk.into(),
                "--net".into(),
                "tap=tap0".into(),
            ]
        },
        &[
            "Hypervisor detected: Xen HVM",
            "Booting kernel on Xen PVH",
            "xen:events: Using 2-level ABI",
            "xen:grant_table: Grant tables using version 1 layout",
            "blkfront: xvda:",
        ],
    );
    let stats = &v["stats"];
    let xen = &stats["xen"];
    assert_eq!(xen["vmcall_intercepted"], true, "{v}");
    assert!(stats["exits"]["xen_hcall"].as_u64() > Some(0), "{v}");
    assert_eq!(
        stats["exits"]["hypercall"], 0,
        "Linux installs no hypercall page: {v}"
    );
    for name in [
        "vcpu_op.register_vcpu_info",
        "vcpu_op.register_runstate_memory_area",
        "hvm_op.set_evtchn_upcall_vector",
        "memory_op.add_to_physmap",
        "event_channel_op.send",
    ] {
        assert!(xen["hypercalls"][name].as_u64() > Some(0), "{name}: {v}");
    }
    // KVM's Xen support runs Linux's Xen timer (its timer hypercalls never reach the
    // shim, and neither does the shim's timer fire) and turns its sends to the
    // backends into eventfd signals.
    let handles = xen["kvm_handles"].as_array().expect("kvm_handles");
    for name in [
        "shared_info",
        "vcpu_info",
        "upcall_vector",
        "timer",
        "evtchn_send",
    ] {
        assert!(handles.iter().any(|h| h == name), "{name}: {v}");
    }
    assert!(
        xen["hypercalls"]
            .get("vcpu_op.set_singleshot_timer")
            .is_none(),
        "{v}"
    );
    assert_eq!(xen["timer_fires"], 0, "{v}");
    assert!(xen["events_to_dom0_in_kernel"].as_u64() > Some(0), "{v}");
    let vbd = &stats["backends"]["vbd-51712"];
    assert!(vbd["ops"]["read"].as_u64() > Some(0), "{vbd}");
    assert!(vbd["ops"]["write"].as_u64() > Some(0), "{vbd}");
    let vif = &stats["backends"]["vif-0"];
    assert!(vif["tx_frames"].as_u64() > Some(0), "{vif}");
    assert!(vif["rx_frames"].as_u64() > Some(0), "{vif}");
}

#[test]
fn linux_drives_the_shims_ide_and_e1000() {
    // Linux's own drivers bound to our models, through the MP table's routing.
    let v = boot_linux(
        "linux-guest",
        &["ata_piix", "sd_mod", "e1000"],
        "/dev/sda",
        |disk| {
            let disk = format!("{disk},if=ide");
            ["--no-xen", "--disk", &disk, "--net", "tap=tap0,model=e1000"]
                .map(String::from)
                .to_vec()
        },
        &[
            "ata1.00: ATA-7: PVH-SHIM HARDDISK",
            "e1000 0000:00:03.0: PCI->APIC IRQ transform: INT A -> IRQ 19",
            "e1000 0000:00:03.0 eth0: Intel(R) PRO/1000 Network Connection",
            "e1000: eth0 NIC Link is Up",
        ],
    );
    let devices = &v["stats"]["devices"];
    let ide = &devices["ide"]["commands"];
    let dma = |k: &str| ide[k].as_u64().unwrap_or(0);
    assert!(dma("read_dma") + dma("read_dma_ext") > 0, "{ide}");
    assert!(dma("write_dma") + dma("write_dma_ext") > 0, "{ide}");
    let nic = &devices["e1000-0"];
    assert!(nic["tx"]["frames"].as_u64().unwrap() > 0, "{nic}");
    assert!(nic["rx"]["frames"].as_u64().unwrap() > 0, "{nic}");
    assert!(v["stats"]["irq_asserts"]["19"].as_u64().unwrap() > 0, "{v}");
    assert!(v["stats"]["irq_asserts"]["14"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn linux_drives_the_shims_virtio_blk_and_virtio_net() {
    // Linux's own virtio_pci (built in), virtio_blk and virtio_net against the shim's
    // modern virtio-pci transport and devices; a plain HVM machine.
    let v = boot_linux(
        "linux-virtio-guest",
        &["virtio_blk", "virtio_net"],
        "/dev/vda",
        |disk| {
            let disk = format!("{disk},if=virtio");
            [
                "--no-xen",
                "--disk",
                &disk,
                "--net",
                "tap=tap0,model=virtio",
            ]
            .map(String::from)
            .to_vec()
        },
        &[
            "virtio-pci 0000:00:03.0: PCI->APIC IRQ transform: INT A -> IRQ 19",
            "virtio_blk virtio0: [vda] 32768 512-byte logical blocks",
        ],
    );
    let devices = &v["stats"]["devices"];
    let blk = &devices["virtio-blk-0"];
    let dev = &blk["device"];
    for k in ["reads", "writes", "flushes"] {
        assert!(dev[k].as_u64() > Some(0), "{k}: {blk}");
    }
    assert_eq!(dev["bad_chains"], 0, "{blk}");
    assert_eq!(dev["io_errors"], 0, "{blk}");
    let net = &devices["virtio-net-0"];
    let nd = &net["device"]["net"];
    for k in ["tx_frames", "rx_frames"] {
        assert!(nd[k].as_u64() > Some(0), "{k}: {net}");
    }
    for k in ["bad_tx", "bad_chains", "ring_errors", "tx_dropped"] {
        assert_eq!(nd[k], 0, "{k}: {net}");
    }
    // Linux took the checksum offload: its TCP segments left with partial checksums
    // that the device completed, and the peer (the L1's nc) accepted them.
    assert!(nd["tx_csum_completed"].as_u64() > Some(0), "{net}");
    // Frames from the TAP woke the device thread, no exit involved.
    assert!(nd["link_wakeups"].as_u64() > Some(0), "{net}");
    for (name, d) in [("virtio-blk-0", blk), ("virtio-net-0", net)] {
        // The notifies rang the doorbell KVM absorbs (an ioeventfd): no exit for them.
        let transport = &d["transport"];
        assert!(
            transport["doorbell_wakeups"].as_u64() > Some(0),
            "{name}: {d}"
        );
        assert_eq!(transport["notifies"], 0, "{name}: {d}");
        assert!(transport["interrupts"].as_u64() > Some(0), "{name}: {d}");
        // Linux took the MSI-X capability: every interrupt was a message, no ISR read,
        // each an eventfd write KVM turned into the interrupt (irqfd).
        assert_eq!(
            transport["msix_messages"], transport["interrupts"],
            "{name}: {d}"
        );
        assert_eq!(d["msi"]["irqfd"], transport["msix_messages"], "{name}: {d}");
        assert_eq!(transport["exits"]["isr_read"], 0, "{name}: {d}");
        assert_eq!(d["msi"]["signal_msi"], 0, "{name}: {d}");
    }
}
