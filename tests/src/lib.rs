//! The harness for whole-system tests, benchmarks and the demo: builds the real guest
//! image and the shim, boots the guest under host-shim (KVM) or QEMU (TCG), and
//! collects what it printed and how it ended.
//!
//! Exit statuses: host-shim exits with the guest's own status (see
//! `guest_kernel::exit_status`); QEMU's `isa-debug-exit` makes QEMU exit with
//! `(status << 1) | 1`, which [`QemuRun::guest_status`] maps back. QEMU exiting 0
//! means the guest ended some other way (a triple fault with `-no-reboot`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The guest's `selftest=xen` tests, in the order it runs them.
pub const XEN_SELFTESTS: [&str; 9] = [
    "xen_store_identity",
    "xen_store_rw",
    "xen_store_watch",
    "xen_store_transaction",
    "xen_store_wait_blocks",
    "xen_evtchn_loopback",
    "xen_grant_copy",
    "xen_long_multicall",
    "xen_timer",
];

/// Asserts that every `selftest=xen` test passed and the summary line says so.
#[track_caller]
pub fn assert_xen_selftests_passed(run: &Run) {
    for test in XEN_SELFTESTS {
        run.assert_contains(&format!("selftest: {test}: PASS"));
    }
    run.assert_line(&format!(
        "selftest: {} passed, 0 failed",
        XEN_SELFTESTS.len()
    ));
}

/// The rustc target of the guest image.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory for this workspace, as cargo itself reports it (so
/// `CARGO_TARGET_DIR` and `.cargo/config.toml` are honoured).
pub fn target_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = cargo()
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo metadata: {e}"));
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            out.status
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
        PathBuf::from(
            v["target_directory"]
                .as_str()
                .expect("cargo metadata names the target directory"),
        )
    })
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn cargo_build(args: &[&str], what: &str) {
    let status = cargo()
        .args(["build", "--release", "--quiet"])
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {what}: {e}"));
    assert!(status.success(), "building {what} failed: {status}");
}

/// Builds the guest image (once per process) and returns its path.
pub fn guest_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        cargo_build(
            &["-p", "guest-kernel", "--target", GUEST_TARGET],
            "the guest image",
        );
        target_dir()
            .join(GUEST_TARGET)
            .join("release")
            .join("guest-kernel")
    })
}

/// Builds host-shim (once per process) and returns its path.
pub fn shim_binary() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        cargo_build(&["-p", "host-shim", "--bin", "host-shim"], "host-shim");
        target_dir().join("release").join("host-shim")
    })
}

/// Whether `/dev/kvm` can be opened. When it cannot, says so loudly on stderr: the
/// caller must skip, never pretend to pass.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            // Straight to the stderr handle: libtest captures `eprintln!` of passing
            // tests, and a skip must be seen.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test}: /dev/kvm is not usable here ({e}); this KVM test did not run"
            );
            false
        }
    }
}

/// The QEMU binary; panics with a clear message if it is not installed (the project's
/// `scripts/setup.sh` installs it, so its absence is a failure, not a skip).
pub fn qemu_binary() -> &'static str {
    const QEMU: &str = "qemu-system-x86_64";
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(QEMU).is_file()));
    assert!(
        found,
        "{QEMU} not found in PATH: run scripts/setup.sh (installs qemu-system-x86)"
    );
    QEMU
}

/// How a process run by the harness ended.
#[derive(Debug)]
pub struct Run {
    /// Everything written to stdout (the guest console).
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
    /// The process's exit status; `None` if the harness had to kill it.
    pub status: Option<ExitStatus>,
    /// Time from spawn to the first byte on stdout.
    pub first_output: Option<Duration>,
    /// Time from spawn to exit.
    pub elapsed: Duration,
}

impl Run {
    /// The process's exit code (`None` if killed or ended by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Asserts that the console has `line` as a whole line.
    #[track_caller]
    pub fn assert_line(&self, line: &str) {
        assert!(
            self.stdout.lines().any(|l| l.trim_end() == line),
            "console lacks the line {line:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout,
            self.stderr
        );
    }

    /// Asserts that some console line contains `fragment`.
    #[track_caller]
    pub fn assert_contains(&self, fragment: &str) {
        assert!(
            self.stdout.contains(fragment),
            "console lacks {fragment:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `cmd`, capturing stdout/stderr; kills it after `limit` (a safety net so that a
/// broken build cannot hang the suite; tests never assert on speed).
pub fn run_with_limit(mut cmd: Command, limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut first = None;
        let mut chunk = [0u8; 4096];
        loop {
            match out.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    first.get_or_insert_with(|| start.elapsed());
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        (buf, first)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    let elapsed = start.elapsed();
    let (out, first_output) = out_reader.join().expect("stdout reader");
    let err = err_reader.join().expect("stderr reader");
    Run {
        stdout: String::from_utf8_lossy(&out).replace('\r', ""),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        status,
        first_output,
        elapsed,
    }
}

/// Safety-net limit for one guest boot (QEMU TCG or the shim on kvm-pvm).
pub const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// Boots `kernel` under host-shim with `cmdline` and extra arguments.
pub fn run_shim(kernel: &Path, cmdline: &str, extra: &[&str]) -> Run {
    let mut cmd = Command::new(shim_binary());
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .args(["--cmdline", cmdline])
        .args(extra);
    run_with_limit(cmd, BOOT_LIMIT)
}

/// A QEMU machine model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `-M microvm`: no PCI, no firmware tables beyond what PVH needs.
    Microvm,
    /// `-M pc`: i440FX PC.
    Pc,
}

impl Machine {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Microvm => "microvm",
            Self::Pc => "pc",
        }
    }
}

/// The QEMU command that boots `kernel` by its PVH note under TCG, COM1 on stdout,
/// with the `isa-debug-exit` device at 0xf4.
pub fn qemu_command(machine: Machine, kernel: &Path, cmdline: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(qemu_binary());
    cmd.args([
        "-M",
        machine.name(),
        "-accel",
        "tcg",
        "-m",
        "128",
        "-smp",
        "1",
    ])
    .args([
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .arg("-kernel")
    .arg(kernel)
    .args(["-append", cmdline])
    .args(extra);
    cmd
}

/// A finished QEMU run.
#[derive(Debug)]
pub struct QemuRun(pub Run);

impl QemuRun {
    /// The guest's status if it left through the debug-exit port.
    pub fn guest_status(&self) -> Option<u8> {
        match self.0.code()? {
            c if c & 1 == 1 => u8::try_from(c >> 1).ok(),
            _ => None,
        }
    }
}

/// Boots `kernel` in QEMU.
pub fn run_qemu(machine: Machine, kernel: &Path, cmdline: &str, extra: &[&str]) -> QemuRun {
    QemuRun(run_with_limit(
        qemu_command(machine, kernel, cmdline, extra),
        BOOT_LIMIT,
    ))
}

/// Assertions every successful boot of the real guest must satisfy, whatever the
/// machine: start_info read and echoed, a sane memory map, the self-tests passed.
#[track_caller]
pub fn assert_good_boot(run: &Run, cmdline: &str) {
    run.assert_contains("pvh: start_info at ");
    run.assert_contains(": magic 0x336ec578 version 1");
    run.assert_line(&format!("pvh: cmdline: \"{cmdline}\""));
    let ram_regions = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("pvh:   [") && l.ends_with(" ram"))
        .count();
    assert!(
        ram_regions >= 1,
        "no RAM region in the memory map:\n{}",
        run.stdout
    );
    for test in ["start_info", "heap", "frames", "time", "apic_timer"] {
        run.assert_contains(&format!("selftest: {test}: PASS"));
    }
    run.assert_line("selftest: 5 passed, 0 failed");
    run.assert_line("guest: exit status 0");
}

/// The JSON object `host-shim --stats` printed last on `stderr`.
#[track_caller]
pub fn stats_json(stderr: &str) -> serde_json::Value {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON on stderr:\n{stderr}"));
    serde_json::from_str(line).expect("stats are JSON")
}

/// A temporary directory, removed (with its contents) when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the system's temporary directory, named after `tag`,
    /// the process and a counter (one per test).
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{tag}.{}.{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Points a runner's caches at a path that cannot be created (a directory under
/// `/dev/null`), so the runner fails where it did not foresee it: the failure every
/// runner must report in exactly one line (its ERR trap), never silently.
pub fn with_unusable_cache(cmd: &mut Command) -> &mut Command {
    cmd.env("XDG_CACHE_HOME", "/dev/null/cache")
        .env_remove("DEB_CACHE")
        .env_remove("XEN_IN_QEMU_CACHE")
        .env_remove("SHIM_IN_QEMU_KERNEL_PKG")
}

/// Asserts that a runner ended with status 125 and exactly one `PROG: error: ` line on
/// stderr, which names the failure.
#[track_caller]
pub fn assert_one_error_line(run: &Run, prog: &str) {
    let prefix = format!("{prog}: error: ");
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .collect();
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(errors.len(), 1, "want one error line:\n{}", run.stderr);
    assert!(errors[0].len() > prefix.len() + 10, "{}", errors[0]);
}

/// Runs `body` on a thread of its own inside a new network namespace (loopback up),
/// so every TAP, address and packet of a network test, and of the host-shim and client
/// processes it starts, stays invisible outside it and vanishes with it. Returns `None`
/// after printing SKIPPED when the namespace cannot be made (no `CAP_SYS_ADMIN`). A
/// panic in `body` fails the test.
pub fn in_private_netns<T: Send>(test: &str, body: impl FnOnce() -> T + Send) -> Option<T> {
    std::thread::scope(|s| {
        let inner = s.spawn(|| {
            if let Err(e) = host_shim::hostio::netns::enter_private() {
                eprintln!(
                    "SKIPPED: {test}: cannot make a private network namespace (needs root): {e}"
                );
                return None;
            }
            Some(body())
        });
        inner
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Writes a shell script that a test hands to a runner (a hook, a client, a dom0
/// script) and checks it with `shellcheck -s sh` (scripts/setup.sh installs it; where it
/// is absent the check says SKIPPED). A finding fails the test: scripts in tests are
/// checked like the project's own.
pub fn write_script(path: impl AsRef<Path>, text: impl AsRef<str>) -> std::io::Result<()> {
    let (path, text) = (path.as_ref(), text.as_ref());
    std::fs::write(path, text)?;
    match Command::new("shellcheck")
        .args(["-s", "sh", "-f", "gcc"])
        .arg(path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "shellcheck finds fault with {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            text
        ),
        Err(_) => eprintln!(
            "SKIPPED: shellcheck of {}: shellcheck is not installed",
            path.display()
        ),
    }
    Ok(())
}

/// A busybox `sh` client for the guest's network service: pings `ip` until it answers
/// (2 minutes at most), then sends `text` to its TCP echo port and checks the reply.
/// Prints `client: ping answered` and `client: echo said: <reply>`; exits non-zero on
/// a failure.
pub fn ping_echo_client(ip: &str, text: &str) -> String {
    format!(
        r#"i=0
while ! ping -c 1 -W 1 {ip} >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 120 ] || {{ echo "client: no ping reply"; exit 1; }}
done
echo "client: ping answered"
r=$(echo "{text}" | nc -w 30 {ip} 7)
echo "client: echo said: $r"
[ "$r" = "{text}" ]
"#
    )
}

/// A scratch disk image file of a given size (sparse, zero), removed when dropped.
pub struct ScratchImage(PathBuf);

impl ScratchImage {
    /// `bytes` of zeros in a new file named after `tag`, the process and a counter.
    pub fn new(tag: &str, bytes: u64) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("scratch-{tag}-{}-{n}.img", std::process::id()));
        let f = std::fs::File::create(&path).expect("create image");
        f.set_len(bytes).expect("size image");
        Self(path)
    }

    /// The path, as a string for command lines.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }

    /// The path.
    pub fn file(&self) -> &Path {
        &self.0
    }

    /// The whole image.
    pub fn read(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("read image")
    }

    /// Writes `len` bytes of `pv_drivers::pattern` of `seed` at `offset`.
    pub fn write_pattern(&self, seed: u64, offset: u64, len: usize) {
        let mut data = self.read();
        pv_drivers::pattern::fill(
            seed,
            offset,
            &mut data[offset as usize..offset as usize + len],
        );
        std::fs::write(&self.0, data).expect("write image");
    }
}

impl Drop for ScratchImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Asserts that `data`, found at byte `offset` of a disk or stream, is the pattern of
/// `seed` there; names the first wrong byte.
#[track_caller]
pub fn expect_pattern(data: &[u8], seed: u64, offset: u64) {
    let mut want = vec![0u8; data.len()];
    pv_drivers::pattern::fill(seed, offset, &mut want);
    if let Some(i) = data.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "byte {} is {:#04x}, the pattern says {:#04x}",
            offset + i as u64,
            data[i],
            want[i]
        );
    }
}

/// Asserts that the `len` bytes at `offset` of `image` are the pattern of `seed` and
/// that nothing else in it changed from zero.
#[track_caller]
pub fn expect_image(image: &ScratchImage, seed: u64, offset: usize, len: usize) {
    let data = image.read();
    expect_pattern(&data[offset..offset + len], seed, offset as u64);
    assert!(
        data[..offset].iter().all(|&b| b == 0),
        "bytes before the region changed"
    );
    assert!(
        data[offset + len..].iter().all(|&b| b == 0),
        "bytes after the region changed"
    );
}

/// Root with /dev/net/tun and `ip`: what the TAP tests need. Says so loudly if not.
pub fn tap_available(test: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .is_ok()
        && Command::new("ip")
            .args(["link", "show"])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: {test}: needs root, /dev/net/tun and ip(8) to create a TAP device");
    }
    ok
}

/// A TAP device with the host's address, up; removed when dropped. Create it inside
/// the test's own network namespace ([`in_private_netns`]).
pub struct HostTap(pub String);

impl HostTap {
    /// TAP `name` with address `host_cidr` on the host side.
    pub fn new(name: &str, host_cidr: &str) -> Self {
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

impl Drop for HostTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Connects to the guest's TCP service at `addr`, retrying while its stack comes up
/// (bounded: two minutes).
pub fn connect(addr: &str) -> std::net::TcpStream {
    let mut last = None;
    for _ in 0..600 {
        match std::net::TcpStream::connect_timeout(
            &addr.parse().expect("addr"),
            Duration::from_secs(2),
        ) {
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

/// The guest's address in [`guest_services_through_a_tap`], and the host's.
pub const TAP_GUEST_IP: &str = "10.203.0.2";
const TAP_HOST_CIDR: &str = "10.203.0.1/24";
const TAP_BULK: usize = 40000;
const TAP_SEED: u64 = 5;

/// Boots a guest whose NIC is on a new TAP and checks its services from the host: TCP
/// echo, ping, TCP discard and the bulk stream's exact pattern. `launch` gets the TAP's
/// name and the guest command line (serving at [`TAP_GUEST_IP`], stopping after those
/// three connections) and returns the command that boots it. Returns that run. Call
/// inside [`in_private_netns`].
pub fn guest_services_through_a_tap(launch: impl FnOnce(&str, &str) -> Command) -> Run {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    let tap = HostTap::new("pvtap-t0", TAP_HOST_CIDR);
    let cmdline = format!(
        "net.ip={TAP_GUEST_IP}/24 net.exit-after=3 net.bulk={TAP_BULK} net.seed={TAP_SEED}"
    );
    let cmd = launch(&tap.0, &cmdline);
    let handle = std::thread::spawn(move || run_with_limit(cmd, BOOT_LIMIT * 2));

    // TCP echo: what goes out comes back.
    let mut echo = connect(&format!("{TAP_GUEST_IP}:7"));
    let msg: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    echo.write_all(&msg).expect("echo write");
    let mut back = vec![0u8; msg.len()];
    echo.read_exact(&mut back).expect("echo read");
    assert_eq!(back, msg);
    echo.shutdown(Shutdown::Both).ok();
    drop(echo);

    // ping, now that the stack is surely up.
    let ping = Command::new("ping")
        .args(["-c", "3", "-W", "10", TAP_GUEST_IP])
        .output()
        .expect("run ping (scripts/setup.sh installs iputils-ping)");
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // TCP discard: the guest takes everything.
    let mut discard = connect(&format!("{TAP_GUEST_IP}:9"));
    discard
        .write_all(&vec![0xa5; 20000])
        .expect("discard write");
    discard.shutdown(Shutdown::Write).ok();
    let mut rest = Vec::new();
    let _ = discard.read_to_end(&mut rest);
    assert!(rest.is_empty(), "discard answered");
    drop(discard);

    // TCP bulk: the guest sends the pattern, exactly net.bulk bytes.
    let mut bulk = connect(&format!("{TAP_GUEST_IP}:19"));
    let mut got = Vec::new();
    bulk.read_to_end(&mut got).expect("bulk read");
    assert_eq!(got.len(), TAP_BULK);
    expect_pattern(&got, TAP_SEED, 0);
    drop(bulk);

    handle.join().expect("shim thread")
}

/// host-shim booting the guest with `cmdline`, `--timeout 150 --stats`, and `args`.
pub fn shim_command(cmdline: &str, args: &[&str]) -> Command {
    let mut shim = Command::new(shim_binary());
    shim.args(["run", "--kernel"])
        .arg(guest_image())
        .args(["--cmdline", cmdline, "--timeout", "150", "--stats"])
        .args(args);
    shim
}
