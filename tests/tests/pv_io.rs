//! PV block and network end to end under host-shim: the real guest's blkfront against
//! the shim's blkback on an image file, and its netfront against netback on a TAP
//! device reached from the host with `ping` and TCP. Skips loudly where /dev/kvm (or,
//! for the network, root and /dev/net/tun) is absent.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pv_drivers::pattern;
use system_tests::{
    BOOT_LIMIT, guest_image, in_private_netns, kvm_available, run_shim, run_with_limit,
    shim_binary, stats_json,
};

const TIMEOUT: &str = "150";

/// A scratch image file, removed when dropped.
struct Image(PathBuf);

impl Image {
    fn new(tag: &str, bytes: u64) -> Self {
        let path = std::env::temp_dir().join(format!("pvio-{tag}-{}.img", std::process::id()));
        let f = std::fs::File::create(&path).expect("create image");
        f.set_len(bytes).expect("size image");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }

    fn read(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("read image")
    }

    fn write_pattern(&self, seed: u64, offset: u64, len: usize) {
        let mut data = std::fs::read(&self.0).expect("read image");
        pattern::fill(
            seed,
            offset,
            &mut data[offset as usize..offset as usize + len],
        );
        std::fs::write(&self.0, data).expect("write image");
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn expect_pattern(data: &[u8], seed: u64, offset: u64) {
    let mut want = vec![0u8; data.len()];
    pattern::fill(seed, offset, &mut want);
    if let Some(i) = data.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "image byte {} is {:#04x}, the pattern says {:#04x}",
            offset + i as u64,
            data[i],
            want[i]
        );
    }
}

#[test]
fn guest_writes_a_pattern_and_flushes_and_the_host_finds_it_in_the_file() {
    if !kvm_available("pv_io::guest_writes_a_pattern") {
        return;
    }
    let img = Image::new("write", 1 << 20);
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
    let img = Image::new("verify", 1 << 20);
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
    std::fs::write(&img.0, &data).expect("corrupt image");
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
    let img = Image::new("ro", 1 << 20);
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

/// Root with /dev/net/tun and `ip`: what the TAP tests need. Says so loudly if not.
fn tap_available(test: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .is_ok()
        && Command::new("ip")
            .args(["link", "show"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {test}: needs root, /dev/net/tun and ip(8) to create a TAP device"
        );
    }
    ok
}

/// A TAP device with the host's address, removed when dropped.
struct Tap(String);

impl Tap {
    fn new(name: &str, host_cidr: &str) -> Self {
        let _ = Command::new("ip")
            .args(["link", "del", name])
            .stderr(Stdio::null())
            .status();
        for args in [
            vec!["tuntap", "add", "dev", name, "mode", "tap"],
            vec!["addr", "add", host_cidr, "dev", name],
            vec!["link", "set", name, "up"],
        ] {
            let st = Command::new("ip").args(&args).status().expect("run ip");
            assert!(st.success(), "ip {args:?} failed");
        }
        Self(name.to_owned())
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn connect(addr: &str) -> TcpStream {
    // The guest's stack comes up after boot: retry for a while (bounded).
    let mut last = None;
    for _ in 0..600 {
        match TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(2)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(60)))
                    .expect("timeout");
                return s;
            }
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    panic!("cannot connect to {addr}: {last:?}");
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
    let tap = Tap::new("pvtap-t0", "10.203.0.1/24");
    let mut shim = Command::new(shim_binary());
    shim.args(["run", "--kernel"]).arg(guest_image()).args([
        "--cmdline",
        "net.ip=10.203.0.2/24 net.exit-after=3 net.bulk=40000 net.seed=5",
        "--net",
        &format!("tap={}", tap.0),
        "--timeout",
        TIMEOUT,
        "--stats",
    ]);
    let handle = std::thread::spawn(move || run_with_limit(shim, BOOT_LIMIT * 2));

    // TCP echo: what goes out comes back.
    let mut echo = connect("10.203.0.2:7");
    let msg: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    echo.write_all(&msg).expect("echo write");
    let mut back = vec![0u8; msg.len()];
    echo.read_exact(&mut back).expect("echo read");
    assert_eq!(back, msg);
    echo.shutdown(Shutdown::Both).ok();
    drop(echo);

    // ping, now that the stack is surely up.
    let ping = Command::new("ping")
        .args(["-c", "3", "-W", "10", "10.203.0.2"])
        .output()
        .expect("run ping (scripts/setup.sh installs iputils-ping)");
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // TCP discard: the guest takes everything.
    let mut discard = connect("10.203.0.2:9");
    discard
        .write_all(&vec![0xa5; 20000])
        .expect("discard write");
    discard.shutdown(Shutdown::Write).ok();
    let mut rest = Vec::new();
    let _ = discard.read_to_end(&mut rest);
    assert!(rest.is_empty(), "discard answered");
    drop(discard);

    // TCP bulk: the guest sends the pattern, exactly net.bulk bytes.
    let mut bulk = connect("10.203.0.2:19");
    let mut got = Vec::new();
    bulk.read_to_end(&mut got).expect("bulk read");
    assert_eq!(got.len(), 40000);
    expect_pattern(&got, 5, 0);
    drop(bulk);

    let run = handle.join().expect("shim thread");
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    let v = stats_json(&run.stderr);
    assert!(v["stats"]["backends"]["vif-0"].is_object(), "{v}");
}
