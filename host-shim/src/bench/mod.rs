//! `host-shim bench`: PV against emulated I/O, measured on the same guest in the same run
//! (the protocol is docs/bench-protocol.md; this is its item 5).
//!
//! Everything runs in this process, on one bench thread that first moves into a private
//! network namespace ([`crate::hostio::netns::enter_private`]); the VMs and the host
//! clients it starts are born there. One boot per (path, kind):
//! - block paths (`xen`, `ide-dma`, `ide-pio`, `virtio`): a fresh sparse image per path, the guest
//!   runs its matrix (`blk.bench=on`) and prints `blk-result:` lines; the RunReport's
//!   `phases` give the counter snapshots at each phase's marks; then the host `fio` runs
//!   the same matrix on the same file as the baseline.
//! - network paths (`xen`, `e1000`, `virtio`): a TAP per path with the host at `.1` and the guest at
//!   `.2`; the real `iperf3`, `ping`, and 1-byte TCP round trips on the echo port drive
//!   the guest's services; `exit` on the control port ends the guest.
//!
//! Ctrl-C stops the current measurement (host clients are killed; a network guest is
//! told to exit; a block guest is stopped through the VM's stop handle) and the files
//! are still written, marked incomplete.

pub mod costs;
pub mod fio;
pub mod net;
pub mod report;
pub mod svg;

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::backends::spec::{DiskSpec, NetSpec};
use crate::devices::console::{Capture, ConsoleSink};
use crate::paths::{DiskPath, NetPath};
use crate::vmm::{Kernel, RunReport, VmConfig, Vmm};

use self::costs::{Costs, DeviceKind};
use self::fio::MatrixPhase;

/// Every path, in report order: the names of [`DiskPath`] and [`NetPath`].
pub const PATHS: [&str; 5] = ["xen", "ide-dma", "ide-pio", "e1000", "virtio"];

/// Exit status of an interrupted (Ctrl-C) bench; its files are written, marked incomplete.
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit status when some measurement failed (the files say which).
pub const EXIT_PARTIAL: u8 = 1;

/// Checks `--place`: a short line of text.
pub fn parse_place(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() || t.len() > 120 || t.chars().any(char::is_control) {
        Err("a place is one line of 1 to 120 characters".into())
    } else {
        Ok(t.to_owned())
    }
}

/// `host-shim bench-report`: reads `bench.json` reports (one per place) and writes
/// one `bench.md` with a section per place and one `bench.svg` into `out`. Bad input
/// is one error line and status 125, with nothing written.
pub fn combine(reports: &[PathBuf], out: &Path, stderr: &mut dyn Write) -> u8 {
    let mut docs = Vec::new();
    for p in reports {
        let doc = fs::read_to_string(p)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
            .and_then(|t| {
                serde_json::from_str::<Value>(&t)
                    .map_err(|e| format!("{} is not JSON: {e}", p.display()))
            })
            .and_then(|v| {
                report::check_shape(&v)
                    .map_err(|e| format!("{} is not a host-shim bench report: {e}", p.display()))?;
                Ok(v)
            });
        match doc {
            Ok(v) => docs.push(v),
            Err(e) => {
                crate::cli::report(stderr, &e);
                return crate::EXIT_SHIM_ERROR;
            }
        }
    }
    let written = fs::create_dir_all(out).and_then(|()| {
        report::write_all(
            out,
            &[
                ("bench.md", report::markdown_places(&docs)),
                ("bench.svg", svg::svg_places(&docs)),
            ],
        )
    });
    if let Err(e) = written {
        crate::cli::report(
            stderr,
            &format!("cannot write the report to {}: {e}", out.display()),
        );
        return crate::EXIT_SHIM_ERROR;
    }
    let _ = writeln!(
        stderr,
        "bench-report: wrote {} (bench.md, bench.svg) from {} report(s)",
        out.display(),
        docs.len()
    );
    0
}

/// Checks one `--paths` name: a disk or a network path ([`crate::paths`]).
pub fn parse_path(s: &str) -> Result<String, String> {
    let p = s.trim();
    if is_block(p) || is_net(p) {
        Ok(p.to_owned())
    } else {
        Err(format!("unknown path '{p}' (known: {})", PATHS.join(", ")))
    }
}

/// `paths` without repeats, in the order given.
pub fn dedup(paths: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// What to measure and where to write it (`host-shim bench` options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The guest kernel (a PVH ELF).
    pub kernel: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Fewer operations and shorter tests.
    pub quick: bool,
    /// The paths, in [`PATHS`] order or as given.
    pub paths: Vec<String>,
    /// Only the JSON, on stdout.
    pub json: bool,
    /// Guest memory, MiB.
    pub mem: u64,
    /// Where this runs, said in the report (`--place`).
    pub place: String,
    /// Whether the host `fio` baseline runs (`--no-host-fio` turns it off).
    pub host_fio: bool,
}

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Scale {
    ops: u64,
    disk_bytes: u64,
    iperf_secs: u64,
    pings: u64,
    round_trips: u64,
    /// The idle window of every path (block: the guest's phase 0; network: host-timed).
    idle: Duration,
    block_timeout: Duration,
    boot_wait: Duration,
}

impl Scale {
    fn new(quick: bool) -> Self {
        if quick {
            Scale {
                ops: 64,
                disk_bytes: 16 << 20,
                iperf_secs: 2,
                pings: 50,
                round_trips: 200,
                idle: Duration::from_secs(2),
                block_timeout: Duration::from_secs(600),
                boot_wait: Duration::from_secs(180),
            }
        } else {
            Scale {
                ops: 256,
                disk_bytes: 64 << 20,
                iperf_secs: 10,
                pings: 500,
                round_trips: 2000,
                idle: Duration::from_secs(5),
                block_timeout: Duration::from_secs(1800),
                boot_wait: Duration::from_secs(300),
            }
        }
    }
}

fn is_block(path: &str) -> bool {
    DiskPath::parse(path).is_ok()
}

fn is_net(path: &str) -> bool {
    NetPath::parse(path).is_ok()
}

/// Set by SIGINT.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_sigint() {
    // SAFETY: a zeroed sigaction with a handler that only stores to an atomic (async-
    // signal-safe); SA_RESTART keeps other threads' system calls going.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}

/// Finds `name` on `$PATH`.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(name);
            fs::metadata(&f).is_ok_and(|m| m.is_file())
        })
    })
}

/// The checks made before anything is measured or written; the first failure. On
/// success returns the kernel and whether the output directory was created (so that a
/// later failure can remove it again).
pub fn preflight(opts: &Options) -> Result<(Kernel, bool), String> {
    if opts.paths.is_empty() {
        return Err("--paths names no path".into());
    }
    let created = !opts.out.exists();
    let undo = |e: String| {
        if created {
            let _ = fs::remove_dir(&opts.out);
        }
        e
    };
    fs::create_dir_all(&opts.out)
        .map_err(|e| format!("cannot create --out {}: {e}", opts.out.display()))?;
    let probe = opts
        .out
        .join(format!(".bench-probe-{}", std::process::id()));
    let probed = fs::write(&probe, b"");
    let _ = fs::remove_file(&probe);
    probed.map_err(|e| undo(format!("cannot write to --out {}: {e}", opts.out.display())))?;
    let mut tools: Vec<(&str, &str)> = Vec::new();
    if opts.host_fio && opts.paths.iter().any(|p| is_block(p)) {
        tools.push(("fio", "fio"));
    }
    if opts.paths.iter().any(|p| is_net(p)) {
        tools.extend([
            ("iperf3", "iperf3"),
            ("ping", "iputils-ping"),
            ("ip", "iproute2"),
        ]);
    }
    for (tool, package) in tools {
        if !on_path(tool) {
            return Err(undo(format!(
                "{tool} is not on PATH (Debian package {package}; scripts/setup.sh installs it)"
            )));
        }
    }
    let kernel = Kernel::from_file(&opts.kernel).map_err(|e| undo(e.to_string()))?;
    crate::elf::parse(&kernel.image).map_err(|e| {
        undo(format!(
            "kernel {} is not a PVH ELF: {e}",
            opts.kernel.display()
        ))
    })?;
    Ok((kernel, created))
}

/// Runs the bench: checks, measurements, files. Errors of the checks are one line on
/// `stderr` and status 125, with nothing written.
pub fn run(opts: &Options, stdout: &mut dyn Write, stderr: &mut dyn Write) -> u8 {
    let (kernel, created_out) = match preflight(opts) {
        Ok(k) => k,
        Err(e) => {
            crate::cli::report(stderr, &e);
            return crate::EXIT_SHIM_ERROR;
        }
    };
    install_sigint();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (progress_tx, progress_rx) = mpsc::channel::<String>();
    let o = opts.clone();
    let worker = thread::Builder::new().name("bench".into()).spawn(move || {
        if let Err(e) = crate::hostio::netns::enter_private() {
            let _ = ready_tx.send(Err(format!(
                "cannot enter a private network namespace (needs CAP_SYS_ADMIN and \
                 CAP_NET_ADMIN; run as root): {e}"
            )));
            return None;
        }
        let _ = ready_tx.send(Ok(()));
        Some(Bench::new(o, kernel, progress_tx).run())
    });
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            crate::cli::report(stderr, &format!("cannot start the bench thread: {e}"));
            return crate::EXIT_SHIM_ERROR;
        }
    };
    if let Ok(Err(e)) | Err(e) = ready_rx
        .recv()
        .map_err(|_| "the bench thread died".to_owned())
    {
        let _ = worker.join();
        if created_out {
            let _ = fs::remove_dir(&opts.out);
        }
        crate::cli::report(stderr, &e);
        return crate::EXIT_SHIM_ERROR;
    }
    for line in progress_rx {
        if !opts.json {
            let _ = writeln!(stderr, "{line}");
        }
    }
    let Ok(Some(done)) = worker.join() else {
        crate::cli::report(stderr, "the bench thread panicked");
        return crate::EXIT_SHIM_ERROR;
    };
    let (report, files) = match done {
        Ok(r) => r,
        Err(e) => {
            crate::cli::report(stderr, &e);
            return crate::EXIT_SHIM_ERROR;
        }
    };
    if opts.json {
        let _ = writeln!(stdout, "{}", files.json);
    } else {
        let _ = writeln!(stdout, "{}", report::summary(&report));
        let _ = writeln!(
            stderr,
            "bench: wrote {} (bench.json, bench.md with every figure, bench.svg, fio-*.json)",
            opts.out.display()
        );
    }
    if report["complete"] != true {
        if INTERRUPTED.load(Ordering::SeqCst) {
            EXIT_INTERRUPTED
        } else {
            EXIT_PARTIAL
        }
    } else {
        0
    }
}

/// The text of the main output files.
struct Files {
    json: String,
}

/// Host-side counter snapshots of a running VM: docs/bench-protocol.md item 2's
/// `Vmm::counters().snapshot()`.
type Snapshotter = Box<dyn Fn() -> Value + Send>;

/// The VM's host-side counter snapshots.
fn counters_of(vmm: &Vmm) -> Option<Snapshotter> {
    let c = vmm.counters();
    Some(Box::new(move || c.snapshot()))
}

const NO_SNAPSHOTS: &str = "this shim offers no host-side counter snapshots (Vmm::counters)";

/// A VM running on its own thread.
struct RunningVm {
    handle: thread::JoinHandle<Result<RunReport, crate::Error>>,
    capture: Capture,
    counters: Option<Snapshotter>,
    stop: crate::vmm::StopHandle,
}

impl RunningVm {
    fn start(config: VmConfig, capture: Capture) -> Result<Self, String> {
        let vmm = Vmm::new(config).map_err(|e| e.to_string())?;
        let counters = counters_of(&vmm);
        let stop = vmm.stop_handle();
        let handle = thread::Builder::new()
            .name("bench-vm".into())
            .spawn(move || vmm.run())
            .map_err(|e| format!("cannot start the VM thread: {e}"))?;
        Ok(Self {
            handle,
            capture,
            counters,
            stop,
        })
    }

    fn snapshot(&self) -> Option<Value> {
        self.counters.as_ref().map(|f| f())
    }

    /// Waits for the VM, stopping it if Ctrl-C comes first; then as [`Self::finish`].
    /// `watch` sees the console so far about once a second (for progress lines).
    fn finish_or_stop(self, watch: &mut dyn FnMut(&str)) -> (Result<Value, String>, String) {
        let mut last = Instant::now();
        while !self.handle.is_finished() {
            if INTERRUPTED.load(Ordering::SeqCst) {
                self.stop.stop();
            }
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                watch(&self.capture.text());
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.finish()
    }

    /// Waits for the VM; its RunReport as JSON (with `phases`) and its console text.
    fn finish(self) -> (Result<Value, String>, String) {
        let result = match self.handle.join() {
            Ok(Ok(r)) => serde_json::from_str::<Value>(&r.to_json()).map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the VM thread panicked".into()),
        };
        (result, self.capture.text())
    }
}

fn outcome_text(report: &Value) -> String {
    let o = &report["outcome"];
    match o["kind"].as_str() {
        Some("exited") => format!("exited with status {}", o["status"]),
        // A crash keeps its details (the registers of a triple fault).
        Some(k) if o.as_object().is_some_and(|m| m.len() > 1) => format!("{k}: {o}"),
        Some(k) => k.to_owned(),
        None => o.to_string(),
    }
}

fn console_tail(text: &str, lines: usize) -> Vec<String> {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

struct Bench {
    opts: Options,
    kernel: Kernel,
    scale: Scale,
    progress: mpsc::Sender<String>,
    start: Instant,
    step: usize,
    steps: usize,
    tmp: PathBuf,
    fio_docs: Vec<(String, String)>,
}

impl Bench {
    fn new(opts: Options, kernel: Kernel, progress: mpsc::Sender<String>) -> Self {
        let steps = opts
            .paths
            .iter()
            .map(|p| usize::from(is_block(p)) + usize::from(is_net(p)))
            .sum();
        Self {
            scale: Scale::new(opts.quick),
            tmp: std::env::temp_dir().join(format!("host-shim-bench-{}", std::process::id())),
            opts,
            kernel,
            progress,
            start: Instant::now(),
            step: 0,
            steps,
            fio_docs: Vec::new(),
        }
    }

    fn say(&self, what: &str) {
        let _ = self.progress.send(format!(
            "bench: [{}/{}] {what} ({:.1} s)",
            self.step,
            self.steps,
            self.start.elapsed().as_secs_f64()
        ));
    }

    fn interrupted() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }

    fn run(mut self) -> Result<(Value, Files), String> {
        fs::create_dir_all(&self.tmp)
            .map_err(|e| format!("cannot create {}: {e}", self.tmp.display()))?;
        let mut paths = Map::new();
        let mut incomplete: Option<String> = None;
        for path in self.opts.paths.clone() {
            let mut entry = Map::new();
            for kind in ["block", "net"] {
                let applies = if kind == "block" {
                    is_block(&path)
                } else {
                    is_net(&path)
                };
                if !applies {
                    continue;
                }
                self.step += 1;
                if Self::interrupted() {
                    entry.insert(
                        kind.into(),
                        json!({"status": "not run", "error": "interrupted", "cells": []}),
                    );
                    continue;
                }
                self.say(&format!("{path} {kind} ..."));
                let v = if kind == "block" {
                    self.block(&path)
                } else {
                    self.net(&path)
                };
                self.say(&format!(
                    "{path} {kind}: {}",
                    v["status"].as_str().unwrap_or("?")
                ));
                entry.insert(kind.into(), v);
            }
            paths.insert(path, Value::Object(entry));
        }
        let _ = fs::remove_dir_all(&self.tmp);
        if Self::interrupted() {
            incomplete = Some("interrupted (SIGINT); what was measured before is kept".into());
        } else if paths.values().any(|p| {
            p.as_object()
                .is_some_and(|k| k.values().any(|v| v["status"] != "ok"))
        }) {
            incomplete = Some("some measurements failed (see each path's status and error)".into());
        }
        let paths = Value::Object(paths);
        let guest_size = self.kernel.image.len();
        let report = json!({
            "place": self.opts.place,
            "machine": report::machine_info(),
            "date": report::iso8601(report::unix_now()),
            "guest": {"path": self.opts.kernel.display().to_string(), "size": guest_size},
            "quick": self.opts.quick,
            "host_fio": self.opts.host_fio,
            "complete": incomplete.is_none(),
            "incomplete_reason": incomplete,
            "scale": {"ops_per_phase": self.scale.ops, "disk_bytes": self.scale.disk_bytes,
                      "iperf_seconds": self.scale.iperf_secs, "pings": self.scale.pings,
                      "round_trips": self.scale.round_trips,
                      "idle_seconds": self.scale.idle.as_secs_f64()},
            "ratios": report::ratios(&paths),
            "paths": paths,
        });
        let json_text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        let mut files: Vec<(&str, String)> = vec![
            ("bench.md", report::markdown(&report)),
            ("bench.svg", svg::svg(&report)),
        ];
        let fio_names: Vec<String> = self
            .fio_docs
            .iter()
            .map(|(p, _)| format!("fio-{p}.json"))
            .collect();
        for ((_, doc), name) in self.fio_docs.iter().zip(&fio_names) {
            files.push((name.as_str(), doc.clone()));
        }
        // bench.json last: its presence says the others are there.
        files.push(("bench.json", json_text.clone() + "\n"));
        report::write_all(&self.opts.out, &files).map_err(|e| {
            format!(
                "cannot write the results to {}: {e}",
                self.opts.out.display()
            )
        })?;
        Ok((report, Files { json: json_text }))
    }

    fn base_config(&self, cmdline: String, capture: &Capture) -> VmConfig {
        let mut c = VmConfig::new(self.kernel.clone());
        c.mem_mib = self.opts.mem;
        c.cmdline = cmdline;
        c.console = ConsoleSink::new(capture.clone());
        c
    }

    /// One block path: boot with the guest's matrix, then the host fio baseline.
    fn block(&mut self, path: &str) -> Value {
        let s = self.scale;
        let image = self.tmp.join(format!("{path}.img"));
        let made = fs::File::create(&image).and_then(|f| f.set_len(s.disk_bytes));
        if let Err(e) = made {
            return json!({"status": "failed", "error": format!("cannot create {}: {e}", image.display()), "cells": []});
        }
        let Ok(disk_path) = DiskPath::parse(path) else {
            return json!({"status": "failed", "error": format!("{path} is not a disk path"), "cells": []});
        };
        let (iface, dev) = disk_path.device();
        let disk = format!("{}{iface}", image.display());
        let kind = DeviceKind::from(disk_path);
        let spec: DiskSpec = match disk.parse() {
            Ok(d) => d,
            Err(e) => {
                return json!({"status": "failed", "error": format!("disk {disk}: {e}"), "cells": []});
            }
        };
        // PIO moves two bytes per exit: a quarter of the requests keeps its phases about
        // as long as the other paths' (the per-request figures do not depend on it).
        let ops = if path == "ide-pio" {
            (s.ops / 4).max(1)
        } else {
            s.ops
        };
        let capture = Capture::new();
        let mut config = self.base_config(
            format!(
                "blk.bench=on blk.bench-ops={} blk.size={} blk.bench-idle-ms={} {dev}",
                ops,
                s.disk_bytes,
                s.idle.as_millis()
            ),
            &capture,
        );
        config.disks = vec![spec];
        config.timeout = Some(s.block_timeout);
        let started = Instant::now();
        let vm = match RunningVm::start(config, capture) {
            Ok(vm) => vm,
            Err(e) => return json!({"status": "failed", "error": e, "cells": []}),
        };
        let phases_total = fio::matrix().len();
        let mut done = 0;
        let (report, console) = vm.finish_or_stop(&mut |console: &str| {
            let n = console
                .lines()
                .filter(|l| l.contains(fio::BLK_RESULT_PREFIX))
                .count();
            if n != done {
                done = n;
                self.say(&format!("{path} block: {n}/{phases_total} phases measured"));
            }
        });
        let boot_secs = started.elapsed().as_secs_f64();
        let (results, bad) = fio::parse_blk_results(&console);
        let (phases, mut error, outcome) = match &report {
            Ok(r) => {
                let out = outcome_text(r);
                // Status 0 through the exit port or a Xen poweroff: the guest's own
                // verdict that every phase ran.
                let err = (r["exit_code"] != 0).then(|| format!("the guest {out}"));
                (costs::phases(r), err, Some(out))
            }
            Err(e) => (Vec::new(), Some(e.clone()), None),
        };
        if results.is_empty() && error.is_none() {
            error = Some("the guest printed no blk-result line (is blk.bench supported?)".into());
        }
        let mut cells = Vec::new();
        for p in fio::matrix() {
            let r = results.iter().rev().find(|r| r.phase == p.phase);
            let costs = r.ok_or_else(|| "no result".to_owned()).and_then(|r| {
                let d = costs::phase_delta(&phases, u64::from(p.phase))?;
                Ok(Costs::from_delta(
                    &d,
                    "request",
                    r.ios as f64,
                    r.io_bytes as f64,
                    kind,
                ))
            });
            let fio = (r.is_some() && !Self::interrupted()).then(|| {
                if self.opts.host_fio {
                    self.host_fio(&image, &p)
                } else {
                    Err("not run (--no-host-fio)".into())
                }
            });
            let mut cell = report::block_cell(&p, r, costs, fio);
            if kind == DeviceKind::Ide {
                // The guest queues up to its iodepth; the controller takes one command
                // at a time per channel. Said in the table, not hidden.
                cell["device_max_in_flight"] = json!(1);
            }
            cells.push(cell);
        }
        let idle = idle_entry(
            costs::phase_delta(&phases, 0),
            fio::parse_idle(&console),
            kind,
        );
        let doc = fio::fio_json(path, &results);
        self.fio_docs.push((
            path.to_owned(),
            serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n",
        ));
        let _ = fs::remove_file(&image);
        let status = status_of(error.is_some(), &cells);
        json!({
            "status": status,
            "error": error,
            "outcome": outcome,
            "seconds": boot_secs,
            "disk_bytes": s.disk_bytes,
            "ops_per_phase": ops,
            "idle": idle,
            "cells": cells,
            "bad_lines": bad.iter().map(|b| json!({"line": b.line, "error": b.error})).collect::<Vec<_>>(),
            "console_tail": if error.is_some() { console_tail(&console, 40) } else { Vec::new() },
        })
    }

    fn host_fio(&self, image: &Path, p: &MatrixPhase) -> Result<fio::FioSummary, String> {
        fio::host_fio(image, p, self.scale.disk_bytes, self.scale.ops).map(|(_, s)| s)
    }

    /// One network path: boot the guest's services, drive the host clients, end it.
    fn net(&mut self, path: &str) -> Value {
        let s = self.scale;
        let subnet: u8 = match path {
            "xen" => 0,
            "e1000" => 1,
            _ => 2,
        };
        let host_ip = Ipv4Addr::new(10, 210, subnet, 1);
        let guest_ip = Ipv4Addr::new(10, 210, subnet, 2);
        let tap = format!("bench-{path}");
        let Ok(net_path) = NetPath::parse(path) else {
            return json!({"status": "failed", "error": format!("{path} is not a network path"), "cells": []});
        };
        let (spec, dev, kind) = (
            net_path.net_spec(&tap),
            net_path.guest_option(),
            DeviceKind::from(net_path),
        );
        let spec: NetSpec = match spec.parse() {
            Ok(n) => n,
            Err(e) => {
                return json!({"status": "failed", "error": format!("net {spec}: {e}"), "cells": []});
            }
        };
        let capture = Capture::new();
        let mut config = self.base_config(format!("net.ip={guest_ip}/24 heap=16M {dev}"), &capture);
        config.nets = vec![spec];
        // A bound that outlasts every test; the guest normally ends by `exit`.
        let tests_secs = 4 * (2 * s.iperf_secs + 30) + s.pings / 10 + 300;
        config.timeout = Some(s.boot_wait + Duration::from_secs(tests_secs));
        let vm = match RunningVm::start(config, capture) {
            Ok(vm) => vm,
            Err(e) => return json!({"status": "failed", "error": e, "cells": []}),
        };
        let mut error = None;
        let mut cells = Vec::new();
        let mut iperf_runs: Vec<(String, Result<net::IperfResult, String>)> = Vec::new();
        let mut host_phases: Vec<HostPhase> = Vec::new();
        let stop = &INTERRUPTED;
        let mut idle = json!({"seconds": null, "costs": null, "error": "not measured"});
        match self.net_up(&tap, host_ip, guest_ip, &vm) {
            Err(e) => error = Some(e),
            Ok(()) => {
                // The idle guest first: nothing sent to it for a while (its safety-net
                // poll backs off to its longest tick), then a window measured.
                self.say(&format!("{path} net: idle"));
                if pause(IDLE_SETTLE) {
                    let before = vm.snapshot();
                    let t0 = Instant::now();
                    let whole = pause(s.idle);
                    let after = vm.snapshot();
                    let secs = t0.elapsed().as_secs_f64();
                    idle = match (before, after, whole) {
                        (Some(b), Some(a), true) => idle_entry(
                            Ok(costs::without_marks(costs::delta(&b, &a))),
                            Ok(secs),
                            kind,
                        ),
                        (_, _, false) => idle_entry(Err("interrupted".into()), Ok(secs), kind),
                        _ => idle_entry(Err(NO_SNAPSHOTS.into()), Ok(secs), kind),
                    };
                }
                let ip = guest_ip.to_string();
                let t = s.iperf_secs.to_string();
                let tests: [(&str, Vec<&str>); 4] = [
                    ("tcp host->guest", vec![]),
                    ("tcp guest->host", vec!["-R"]),
                    ("tcp host->guest 2 streams", vec!["-P", "2"]),
                    ("tcp 64-byte writes host->guest", vec!["-l", "64", "-N"]),
                ];
                for (name, extra) in tests {
                    if Self::interrupted() {
                        break;
                    }
                    self.say(&format!("{path} net: iperf3 {name}"));
                    let mut cmd = Command::new("iperf3");
                    cmd.args(["-c", &ip, "-J", "-t", &t]).args(&extra);
                    let r = net::run_client(cmd, Duration::from_secs(2 * s.iperf_secs + 30), stop)
                        .and_then(|out| net::parse_iperf3(&out));
                    iperf_runs.push((name.to_owned(), r));
                }
                if !Self::interrupted() {
                    self.say(&format!("{path} net: ping"));
                    let before = vm.snapshot();
                    let mut cmd = Command::new("ping");
                    cmd.args(["-c", &s.pings.to_string(), "-i", "0.02", "-W", "2", &ip]);
                    // -i 0.02: pings/50 seconds when every reply is prompt.
                    let r = net::run_client(cmd, Duration::from_secs(s.pings / 10 + 30), stop)
                        .and_then(|o| net::parse_ping(&o));
                    let after = vm.snapshot();
                    let (m, raw, ops) = match &r {
                        Ok(p) => (
                            vec![
                                ("rtt_mean_us", Ok(p.avg_us)),
                                ("rtt_min_us", Ok(p.min_us)),
                                ("rtt_max_us", Ok(p.max_us)),
                                (
                                    "loss_percent",
                                    costs::ratio(
                                        100.0 * (p.transmitted - p.received) as f64,
                                        p.transmitted as f64,
                                        "pings sent",
                                    ),
                                ),
                            ],
                            json!(p),
                            p.received as f64,
                        ),
                        Err(e) => (
                            vec![("rtt_mean_us", Err(e.clone()))],
                            json!({"error": e}),
                            0.0,
                        ),
                    };
                    let snaps = match (before, after) {
                        (Some(b), Some(a)) => {
                            Ok((costs::delta(&b, &a), ops, 0.0, "ping".to_owned()))
                        }
                        _ => Err(NO_SNAPSHOTS.to_owned()),
                    };
                    host_phases.push(("ping".into(), snaps, raw, m));
                }
                if !Self::interrupted() {
                    self.say(&format!("{path} net: TCP round trips"));
                    let before = vm.snapshot();
                    let addr = SocketAddr::V4(SocketAddrV4::new(guest_ip, 7));
                    let r = net::tcp_round_trips(addr, s.round_trips, stop);
                    let after = vm.snapshot();
                    let (m, raw, ops) = match &r {
                        Ok(p) => (
                            vec![
                                ("rtt_mean_us", Ok(p.mean_us)),
                                ("rtt_min_us", Ok(p.min_us)),
                                ("rtt_max_us", Ok(p.max_us)),
                                ("rtt_p50_us", Ok(p.p50_us)),
                                ("rtt_p99_us", Ok(p.p99_us)),
                            ],
                            json!(p),
                            p.count as f64,
                        ),
                        Err(e) => (
                            vec![("rtt_mean_us", Err(e.clone()))],
                            json!({"error": e}),
                            0.0,
                        ),
                    };
                    let snaps = match (before, after) {
                        (Some(b), Some(a)) => Ok((
                            costs::delta(&b, &a),
                            ops,
                            2.0 * ops,
                            "round trip".to_owned(),
                        )),
                        _ => Err(NO_SNAPSHOTS.to_owned()),
                    };
                    host_phases.push(("tcp round trip 1 byte".into(), snaps, raw, m));
                }
                let control = SocketAddr::V4(SocketAddrV4::new(guest_ip, 5));
                if let Err(e) = net::control_exit(control) {
                    error = Some(format!("{e}; waiting for the VM's timeout"));
                }
            }
        }
        let (report, console) = vm.finish();
        let (phases, outcome) = match &report {
            Ok(r) => (costs::phases(r), Some(outcome_text(r))),
            Err(e) => {
                error.get_or_insert_with(|| e.clone());
                (Vec::new(), None)
            }
        };
        for (k, (name, r)) in iperf_runs.into_iter().enumerate() {
            match r {
                Err(e) => cells.push(report::missing_cell("net", &name, "failed", &e)),
                Ok(ip) => {
                    let costs = costs::phase_delta(&phases, 100 + k as u64).map(|d| {
                        let frames = frames(&d);
                        Costs::from_delta(&d, "frame", frames, ip.bytes, kind)
                    });
                    let mut m: Vec<(&str, Result<f64, String>)> =
                        vec![("throughput_mbit_s", Ok(ip.bits_per_second / 1e6))];
                    if ip.blksize > 0 && ip.blksize <= 1024 {
                        m.push((
                            "writes_per_s",
                            costs::ratio(
                                ip.bytes / ip.blksize as f64,
                                ip.seconds,
                                "the test's length",
                            ),
                        ));
                    }
                    let mut cell = report::net_cell(&name, m, costs, json!(ip));
                    // The guest's own count of the test (protocol item 4), beside the
                    // client's.
                    cell["guest"] = net::iperf_results(&console)
                        .into_iter()
                        .find(|g| g["test"] == k as u64)
                        .unwrap_or(Value::Null);
                    cells.push(cell);
                }
            }
        }
        for (name, snaps, raw, m) in host_phases {
            if raw.get("error").is_some() {
                cells.push(report::missing_cell(
                    "net",
                    &name,
                    "failed",
                    raw["error"].as_str().unwrap_or(""),
                ));
                continue;
            }
            let costs = snaps.map(|(d, ops, bytes, op)| {
                Costs::from_delta(&costs::without_marks(d), &op, ops, bytes, kind)
            });
            cells.push(report::net_cell(&name, m, costs, raw));
        }
        let status = status_of(error.is_some(), &cells);
        json!({
            "status": status,
            "error": error,
            "outcome": outcome,
            "tap": tap,
            "host_ip": host_ip.to_string(),
            "guest_ip": guest_ip.to_string(),
            "idle": idle,
            "cells": cells,
            "console_tail": if status != "ok" { console_tail(&console, 40) } else { Vec::new() },
        })
    }

    /// Addresses the TAP once the VM made it and waits until the guest answers pings.
    fn net_up(
        &self,
        tap: &str,
        host: Ipv4Addr,
        guest: Ipv4Addr,
        vm: &RunningVm,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.scale.boot_wait;
        while !crate::hostio::netns::interface_exists(tap) {
            if vm.handle.is_finished() {
                return Err(format!("the VM ended before creating {tap}"));
            }
            if Instant::now() > deadline || Self::interrupted() {
                return Err(format!("{tap} did not appear"));
            }
            thread::sleep(Duration::from_millis(20));
        }
        crate::hostio::netns::address_tap(tap, host)?;
        self.say(&format!("waiting for the guest at {guest}"));
        loop {
            let ok = Command::new("ping")
                .args(["-c", "1", "-W", "1", &guest.to_string()])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(());
            }
            if vm.handle.is_finished() {
                return Err("the VM ended before answering pings".into());
            }
            if Instant::now() > deadline || Self::interrupted() {
                return Err(format!(
                    "the guest did not answer pings within {} s",
                    self.scale.boot_wait.as_secs()
                ));
            }
        }
    }
}

/// A host-timed network phase: name, (delta, ops, bytes, op name) or why there is no
/// delta, the raw result, the metrics.
type HostPhase = (
    String,
    Result<(Value, f64, f64, String), String>,
    Value,
    Vec<(&'static str, Result<f64, String>)>,
);

/// How long a network guest is left alone before its idle window.
const IDLE_SETTLE: Duration = Duration::from_millis(2500);

/// Sleeps `d`, in short steps; false if Ctrl-C came first.
fn pause(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())));
    }
    true
}

/// A path's idle figures: the costs of an idle window per second (`op` "second"), or
/// why there are none.
fn idle_entry(delta: Result<Value, String>, secs: Result<f64, String>, kind: DeviceKind) -> Value {
    match (delta, secs) {
        (Ok(d), Ok(secs)) if secs > 0.0 => json!({
            "seconds": secs,
            "costs": Costs::from_delta(&d, "second", secs, 0.0, kind),
        }),
        (Ok(_), Ok(_)) => {
            json!({"seconds": 0.0, "costs": null, "error": "the idle window was empty"})
        }
        (Err(e), _) | (_, Err(e)) => json!({"seconds": null, "costs": null, "error": e}),
    }
}

/// A path's status: `failed` (the boot failed), `incomplete` (interrupted), `partial`
/// (some test failed), or `ok` (every cell measured or skipped by the guest).
fn status_of(failed: bool, cells: &[Value]) -> &'static str {
    if failed {
        "failed"
    } else if Bench::interrupted() {
        "incomplete"
    } else if cells.iter().any(|c| c["status"] == "failed") {
        "partial"
    } else {
        "ok"
    }
}

/// Frames the NICs moved in a delta (every path's own counters, [`NetPath::frames`]).
fn frames(d: &Value) -> f64 {
    NetPath::ALL.iter().filter_map(|p| p.frames(d)).sum::<u64>() as f64
}
