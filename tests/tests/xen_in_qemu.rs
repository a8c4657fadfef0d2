//! The guest as a PVH domU on real Xen: Debian's Xen 4.17 with a Debian Linux PV dom0,
//! booted in QEMU TCG by `scripts/xen-in-qemu.sh`, which builds (and caches) the dom0
//! image from Debian packages, `xl create -F`s the guest and exits with its status.
//! Nothing here is skipped: QEMU and the Debian archive are part of this project's
//! machines (scripts/setup.sh), so a download or boot failure fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pv_drivers::pattern;
use system_tests::{
    Run, assert_one_error_line, assert_xen_selftests_passed, guest_image, qemu_binary,
    run_with_limit, with_unusable_cache, workspace_root, write_script,
};

/// The guest's own limit inside dom0 (from `xl create` to the domain's end).
const GUEST_TIMEOUT: &str = "180";
/// Safety net for a whole run: a cold dom0-image build (downloads included) plus
/// booting Xen and dom0 under TCG and the runner's own margin.
const RUN_LIMIT: Duration = Duration::from_secs(900);

fn runner(args: &[&str], kernel: Option<&Path>) -> Run {
    qemu_binary();
    let mut cmd = Command::new(workspace_root().join("scripts").join("xen-in-qemu.sh"));
    if let Some(k) = kernel {
        cmd.arg("--kernel").arg(k);
    }
    cmd.args(args);
    run_with_limit(cmd, RUN_LIMIT)
}

#[track_caller]
fn assert_stderr(run: &Run, fragment: &str) {
    assert!(
        run.stderr.contains(fragment),
        "stderr lacks {fragment:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn selftest_xen_passes_on_real_xen_and_xl_reports_poweroff() {
    let run = runner(
        &["--cmdline", "selftest=xen", "--timeout", GUEST_TIMEOUT],
        Some(guest_image()),
    );
    assert_eq!(
        run.code(),
        Some(0),
        "the guest failed on real Xen\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout,
        run.stderr
    );
    run.assert_line("pvh: cmdline: \"selftest=xen\"");
    run.assert_contains("xen: Xen 4.17 at CPUID 0x40000000, hypercall MSR 0x40000000, domid ");
    // Through the PV console ring and xenconsoled, not port 0xe9.
    run.assert_line("xen: hello on the PV console");
    assert_xen_selftests_passed(&run);
    run.assert_line("guest: exit status 0");
    // xl itself saw SCHEDOP_shutdown(poweroff): reason code 0, not 3 (crash).
    assert_stderr(&run, "has shut down, reason code 0 0x0");
    assert_stderr(&run, "xen-in-qemu: xl reports shutdown (poweroff)");
}

#[test]
fn a_panicking_guest_is_reported_as_a_crash_with_its_status() {
    let run = runner(
        &["--cmdline", "selftest=panic", "--timeout", GUEST_TIMEOUT],
        Some(guest_image()),
    );
    run.assert_contains("PANIC: ");
    run.assert_line("guest: exit status 2");
    assert_stderr(&run, "has shut down, reason code 3 0x3");
    assert_stderr(&run, "xl reports the domain crashed");
    assert_eq!(run.code(), Some(2), "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn an_unforeseen_failure_is_one_error_line() {
    qemu_binary();
    let mut cmd = Command::new(workspace_root().join("scripts").join("xen-in-qemu.sh"));
    with_unusable_cache(&mut cmd)
        .arg("--kernel")
        .arg(guest_image());
    let run = run_with_limit(cmd, RUN_LIMIT);
    assert_one_error_line(&run, "xen-in-qemu");
}

#[test]
fn bad_input_is_refused_before_anything_is_built() {
    let missing = workspace_root().join("target").join("no-such-guest-kernel");
    let run = runner(&[], Some(&missing));
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert_stderr(
        &run,
        &format!(
            "xen-in-qemu: error: guest kernel '{}' does not exist",
            missing.display()
        ),
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    let not_elf = workspace_root().join("Cargo.toml");
    let run = runner(&[], Some(&not_elf));
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert_stderr(&run, "is not an ELF file");

    let run = runner(&["--cmdline", "a\"b"], Some(&not_elf));
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert_stderr(&run, "--cmdline may not contain double quotes");

    let run = runner(&["--timeout", "soon"], Some(&not_elf));
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert_stderr(&run, "--timeout wants whole seconds");

    // Checked before the default guest build would start.
    let run = runner(&["--disk", "/nonexistent/disk.img"], None);
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert_stderr(&run, "disk image '/nonexistent/disk.img' does not exist");
}

/// A scratch file under the system's temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        Self(std::env::temp_dir().join(format!("xen-in-qemu-{tag}-{}", std::process::id())))
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temporary path is UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[track_caller]
fn assert_success(run: &Run) {
    assert_eq!(
        run.code(),
        Some(0),
        "the run failed on real Xen\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout,
        run.stderr
    );
    run.assert_line("guest: exit status 0");
    assert_stderr(run, "has shut down, reason code 0 0x0");
    assert_stderr(run, "xen-in-qemu: xl reports shutdown (poweroff)");
}

#[track_caller]
fn expect_pattern(data: &[u8], seed: u64, offset: u64) {
    let mut want = vec![0u8; data.len()];
    pattern::fill(seed, offset, &mut want);
    if let Some(i) = data.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "image byte {:#x} is {:#04x}, the pattern of seed {seed} says {:#04x}",
            offset + i as u64,
            data[i],
            want[i]
        );
    }
}

/// blkfront against Linux's blkback: dom0 exports the QEMU virtio disk (the image file)
/// as the guest's xvda. First the guest reads and checks a pattern the host wrote; then
/// it writes (and flushes) another pattern elsewhere, reads it back, and the host finds
/// it in the file, with nothing else on the disk changed.
/// The second run's 64 KiB requests (16 segments) are indirect (`BLKIF_OP_INDIRECT`),
/// which Linux's blkback answers with the data operation (`indirect_op`).
#[test]
fn blkfront_reads_and_writes_the_host_image_through_linux_blkback() {
    const MIB: u64 = 1 << 20;
    let img = TempFile::new("disk.img");
    let mut data = vec![0u8; (4 * MIB) as usize];
    pattern::fill(21, 0, &mut data[..MIB as usize]);
    std::fs::write(&img.0, &data).expect("write the disk image");

    let cmdline =
        "blk.workload=verify-pattern blk.offset=0 blk.size=1M blk.bs=4K blk.qd=16 blk.seed=21";
    let run = runner(
        &[
            "--disk",
            img.path(),
            "--cmdline",
            cmdline,
            "--timeout",
            GUEST_TIMEOUT,
        ],
        Some(guest_image()),
    );
    assert_success(&run);
    run.assert_line("blk: verify-pattern: region [0x0, +0x100000), 4096 bytes per request, queue depth 16, seed 21");
    run.assert_contains("blk: verify-pattern: ops 256 (reads 256, writes 0, flushes 0), bytes read 1048576 written 0, errors 0, protocol errors 0, mismatches 0,");
    run.assert_line("blk: PASS");

    let cmdline = "blk.workload=write-pattern,verify-pattern blk.offset=2M blk.size=1M blk.bs=64K blk.qd=8 blk.seed=22";
    let run = runner(
        &[
            "--disk",
            img.path(),
            "--cmdline",
            cmdline,
            "--timeout",
            GUEST_TIMEOUT,
        ],
        Some(guest_image()),
    );
    assert_success(&run);
    run.assert_contains("blk: write-pattern: ops 17 (reads 0, writes 16, flushes 1), bytes read 0 written 1048576, errors 0, protocol errors 0, mismatches 0,");
    run.assert_contains("blk: verify-pattern: ops 16 (reads 16, writes 0, flushes 0), bytes read 1048576 written 0, errors 0, protocol errors 0, mismatches 0,");
    run.assert_line("blk: PASS");

    // The guest's writes reached the host file (dom0 syncs before it powers off).
    let data = std::fs::read(&img.0).expect("read the disk image");
    assert_eq!(data.len() as u64, 4 * MIB);
    let (m, m2, m3) = (MIB as usize, 2 * MIB as usize, 3 * MIB as usize);
    expect_pattern(&data[..m], 21, 0);
    expect_pattern(&data[m2..m3], 22, 2 * MIB);
    assert!(
        data[m..m2].iter().all(|&b| b == 0),
        "bytes in [1M, 2M) changed"
    );
    assert!(
        data[m3..].iter().all(|&b| b == 0),
        "bytes in [3M, 4M) changed"
    );
}

/// The dom0 side of the network test (busybox sh): ping the guest, a TCP echo round
/// trip on port 7, then the bulk stream of port 19, reported as its length and CRC-32.
/// The bulk client keeps its sending half open (a FIFO nobody writes to): the guest
/// closes a connection whose client has closed its half, bulk or not.
const NET_SCRIPT: &str = r#"#!/bin/sh
ip=10.0.0.2
tries=0
until ping -c 1 -W 1 "$ip" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 90 ]; then echo "NET-CHECK: FAIL: no ping reply"; exit 1; fi
done
ping -c 3 -W 5 "$ip" || { echo "NET-CHECK: FAIL: ping"; exit 1; }
echo "NET-CHECK: ping ok"
seq 1 1000 >/tmp/echo.in
timeout 60 nc "$ip" 7 </tmp/echo.in >/tmp/echo.out
if cmp -s /tmp/echo.in /tmp/echo.out; then
    echo "NET-CHECK: echo ok, $(wc -c </tmp/echo.out) bytes"
else
    echo "NET-CHECK: FAIL: echo sent $(wc -c </tmp/echo.in) bytes, got $(wc -c </tmp/echo.out)"
    exit 1
fi
mkfifo /tmp/hold
sleep 120 >/tmp/hold &
hold=$!
timeout 60 nc "$ip" 19 </tmp/hold >/tmp/bulk.out
kill "$hold"
echo "NET-CHECK: bulk $(wc -c </tmp/bulk.out) bytes, crc32 $(crc32 /tmp/bulk.out | cut -d' ' -f1)"
"#;

/// CRC-32 (IEEE, as zlib and busybox `crc32` compute it).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// netfront against Linux's netback: the guest's vif is on dom0's bridge; dom0 pings
/// it, echoes a text through TCP port 7 and reads the bulk stream of port 19, and the
/// guest stops after those two connections.
#[test]
fn netfront_serves_ping_and_tcp_to_dom0_through_linux_netback() {
    const BULK: usize = 40000;
    let script = TempFile::new("net.sh");
    write_script(&script.0, NET_SCRIPT).expect("write the dom0 script");
    let cmdline = format!("net.ip=10.0.0.2/24 net.exit-after=2 net.bulk={BULK} net.seed=9");
    let run = runner(
        &[
            "--net",
            "--dom0-script",
            script.path(),
            "--cmdline",
            &cmdline,
            "--timeout",
            GUEST_TIMEOUT,
        ],
        Some(guest_image()),
    );
    assert_success(&run);
    run.assert_line("net: mac 00:16:3e:00:00:01, 10.0.0.2/24, max frame 1514");
    run.assert_line("dom0-script: 3 packets transmitted, 3 packets received, 0% packet loss");
    run.assert_line("dom0-script: NET-CHECK: ping ok");
    // seq 1 1000: 9 + 90 * 2 + 900 * 3 + 1 * 4 digits and 1000 newlines.
    run.assert_line("dom0-script: NET-CHECK: echo ok, 3893 bytes");
    let mut bulk = vec![0u8; BULK];
    pattern::fill(9, 0, &mut bulk);
    run.assert_line(&format!(
        "dom0-script: NET-CHECK: bulk {BULK} bytes, crc32 {:08x}",
        crc32(&bulk)
    ));
    run.assert_line("net: stopped: 2 connections completed");
    run.assert_line("net: PASS");
}

/// The dom0 side of the detach test (busybox sh): once the guest's vbd is connected,
/// `xl block-detach` it; once its vif is, `xl network-detach` it. libxl takes the
/// backend offline and Closing, then waits for the backend to reach Closed, which
/// Linux's backends do only once the frontend has closed: the guest must follow its
/// backend's state. Two things of this TCG dom0 are not the guest's doing and are
/// retried, saying so: `xl` dying of a signal (this dom0's busybox and xl now and then
/// crash at garbage addresses, not understood; xl has also died of SIGABRT while it
/// waited for the backend), and libxl's fixed 10 s of wall-clock
/// time for the backend to close (`LIBXL_DESTROY_TIMEOUT`, no retry of its own), which
/// a loaded host can exceed. After such a time-out the script waits (bounded) for both
/// ends to reach Closed by themselves, says in which states libxl left them, and
/// detaches again; a frontend that never closes still fails. `-vvv` makes libxl say if it
/// ever removes the device by force, which must not happen.
const DETACH_SCRIPT: &str = r#"#!/bin/sh
xl=/usr/lib/xen-4.17/bin/xl
wait_state() { # path, wanted state
    tries=0
    until [ "$(xenstore-read "$1" 2>/dev/null)" = "$2" ]; do
        tries=$((tries + 1))
        if [ "$tries" -ge 900 ]; then echo "DETACH-CHECK: FAIL: $1 never became $2"; exit 1; fi
        sleep 0.2
    done
}
run_xl() { # what, xl command, domain, device; sets $status
    for try in 1 2 3; do
        "$xl" -vvv "$2" "$3" "$4" >/tmp/detach.log 2>&1
        status=$?
        grep -i "forced remove\|timed out\|error\|assert" /tmp/detach.log
        if grep -qi "forced remove" /tmp/detach.log; then
            echo "DETACH-CHECK: FAIL: $1 removed by force: the frontend never closed"; exit 1
        fi
        [ "$status" -gt 128 ] || return 0
        echo "DETACH-CHECK: xl $2 died of signal $((status - 128)) (try $try), its last lines:"
        tail -n 5 /tmp/detach.log
        echo "DETACH-CHECK: running xl $2 again"
    done
}
detach() { # what, backend directory, xl command, device
    wait_state "$2/state" 4
    front=$(xenstore-read "$2/frontend")
    echo "DETACH-CHECK: $1 connected"
    # Let I/O run for a while first.
    sleep 2
    run_xl "$1" "$3" "$XENRUN_DOMID" "$4"
    if [ "$status" != 0 ] && grep -q "wanted state 6 *timed out" /tmp/detach.log; then
        echo "DETACH-CHECK: $1: libxl's 10 s ran out, frontend state $(xenstore-read "$front/state"), backend $(xenstore-read "$2/state")"
        t0=$(date +%s)
        wait_state "$front/state" 6
        wait_state "$2/state" 6
        echo "DETACH-CHECK: $1: both ends Closed $(($(date +%s) - t0)) s later: detaching again"
        run_xl "$1" "$3" "$XENRUN_DOMID" "$4"
    fi
    if [ "$status" != 0 ]; then echo "DETACH-CHECK: FAIL: $3 status $status"; exit 1; fi
    if xenstore-read "$2/state" >/dev/null 2>&1; then
        echo "DETACH-CHECK: FAIL: $2 still exists"; exit 1
    fi
    echo "DETACH-CHECK: $1 detached cleanly"
}
detach vbd "/local/domain/0/backend/vbd/$XENRUN_DOMID/51712" block-detach 51712
detach vif "/local/domain/0/backend/vif/$XENRUN_DOMID/0" network-detach 0
"#;

/// `xl block-detach` and `xl network-detach` while the guest uses the devices: each
/// frontend follows its backend to Closed at once (libxl never has to force the
/// removal), and the guest's workload and network service end with "disconnected"
/// instead of waiting out their timeouts.
#[test]
fn xl_detach_closes_blkfront_and_netfront_cleanly() {
    let img = TempFile::new("detach.img");
    std::fs::write(&img.0, vec![0u8; 4 << 20]).expect("write the disk image");
    let script = TempFile::new("detach.sh");
    write_script(&script.0, DETACH_SCRIPT).expect("write the dom0 script");
    // Far more work than the run allows: only the detach can end either.
    let cmdline = "blk.workload=rand-write blk.size=4M blk.bs=4K blk.qd=8 blk.ops=100000000 \
                   net.ip=10.0.0.2/24";
    let run = runner(
        &[
            "--disk",
            img.path(),
            "--net",
            "--dom0-script",
            script.path(),
            "--cmdline",
            cmdline,
            "--timeout",
            GUEST_TIMEOUT,
        ],
        Some(guest_image()),
    );
    let all = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout, run.stderr
    );
    // The workload and the service failed (their devices went away): status 1.
    assert_eq!(run.code(), Some(1), "{all}");
    run.assert_line("dom0-script: DETACH-CHECK: vbd connected");
    run.assert_line("dom0-script: DETACH-CHECK: vbd detached cleanly");
    run.assert_line("dom0-script: DETACH-CHECK: vif connected");
    run.assert_line("dom0-script: DETACH-CHECK: vif detached cleanly");
    assert!(!run.stdout.contains("DETACH-CHECK: FAIL"), "{all}");
    run.assert_line("blk: backend of 51712 went Closing (5): device closed");
    run.assert_line("net: stopped: device failed: device disconnected");
    run.assert_line("net: backend of 0 went Closing (5): device closed");
    run.assert_line("blk: FAIL");
    run.assert_line("net: FAIL");
    assert!(!run.stderr.contains("the dom0 script failed"), "{all}");
}

/// The hostile guest (#16) on real Xen: Xen 4.17 judges the hypercall and
/// event-channel attacks and its C xenstored the xenstore ones, as the shim does in
/// `hostile_guest.rs`; then the well-behaved disk runs through Linux's blkback. Left
/// out, and run by hand (the README's "On real Xen"): the three raw xenstore messages
/// whose payload has no NUL (`hostile.skip=xenstore-unterminated`: on each, 4.17's C
/// xenstored stops answering, and with it every later use of xenstore in the host),
/// and the blkif and netif attacks, which Linux's backends answer differently in
/// places (blkback connects with `ring-page-order` 4294967296; netback leaves the vif
/// dead after its fatal ones) and which once left xenstored answering the guest
/// nothing more on a loaded host. The other 14 raw messages run: C xenstored refuses
/// 13 and answers one (`XS_GET_DOMAIN_PATH` of "x", which its `atoi` reads as domain
/// 0), the one result the test expects to differ from the shim's. 4.17's C xenstored
/// has no `error` field to report the oversized header with, so that refusal shows as
/// silence.
#[test]
fn the_hostile_guest_is_refused_by_real_xen_and_its_xenstored() {
    let img = TempFile::new("hostile.img");
    std::fs::write(&img.0, vec![0u8; 4 << 20]).expect("write the disk image");
    let cmdline = "selftest=hostile hostile.skip=xenstore-unterminated,blkif,netif \
                   blk.workload=write-pattern,verify-pattern blk.size=1M blk.seed=5";
    let run = runner(
        &[
            "--disk",
            img.path(),
            "--cmdline",
            cmdline,
            "--timeout",
            "600",
        ],
        Some(guest_image()),
    );
    let all = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout, run.stderr
    );
    for l in run.stdout.lines().filter(|l| l.starts_with("hostile: ")) {
        eprintln!("{l}");
    }
    // C xenstored's one leniency: it answers a domain path for a domid that is not a
    // number.
    const LENIENT: &str = "hostile: UNEXPECTED: xenstore GET_DOMAIN_PATH of a non-number: \
                           reply type 10 '/local/domain/0'";
    for line in [
        "hostile: hypercall: 109 attacks, 109 refused",
        "hostile: evtchn: 29 attacks, 29 refused",
        "hostile: xenstore: 46 attacks, 45 refused",
        "hostile: xenstore-unterminated: skipped (hostile.skip=)",
        "hostile: blkif: skipped (hostile.skip=)",
        "hostile: netif: skipped (hostile.skip=)",
        LENIENT,
        // The quotas C xenstored holds, as the shim's xenstored does.
        "hostile: xenstore: 21 of 120 requests taken while no reply was read; then all 120 replies, in order",
        "hostile: 184 attacks, 183 refused, 1 unexpected; well-behaved disk: PASS",
        "blk: PASS",
    ] {
        assert!(
            run.stdout.lines().any(|l| l == line),
            "no line {line:?}\n{all}"
        );
    }
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("hostile: xenstore: no error field (")
                && l.ends_with("): a read after the oversized header was not answered")),
        "the oversized header was not refused by silence\n{all}"
    );
    let unexpected: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains("UNEXPECTED"))
        .collect();
    assert_eq!(unexpected, [LENIENT], "{all}");
    // That one difference makes the hostile run's status 1.
    run.assert_line("guest: exit status 1");
    assert_eq!(run.code(), Some(1), "{all}");
}
