//! The `host-shim` command line: `host-shim run --kernel FILE [...]` and
//! `host-shim bench --kernel FILE [...]` (the benchmark, [`crate::bench`]) and
//! `host-shim crashtest --kernel FILE [...]` (flush, then kill -9, [`crate::crashtest`]) and
//! `host-shim soak --kernel FILE [...]` (nothing grows, [`crate::soak`]).
//!
//! Every failure is reported as one line on stderr, `host-shim: error: <message>`,
//! including command-line syntax errors (which clap would otherwise print over several
//! lines with status 2). Exit statuses are listed in [`EXIT_STATUS_HELP`].

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};

use crate::backends::spec::{DiskSpec, NetSpec, SpecError};
use crate::devices::console::ConsoleSink;
use crate::vmm::{Kernel, VmConfig, Vmm};
use crate::{EXIT_SHIM_ERROR, boot};

/// The exit-status table shown after `--help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0-255  the guest wrote that value to the exit port 0xf4 (isa-debug-exit
         compatible; the low byte of the write, not QEMU's (v << 1) | 1)
  124    --timeout expired before the guest exited
  125    shim error: bad input, KVM failure
  126    the guest crashed: triple fault, KVM internal error, entry failure,
         or SCHEDOP_shutdown with reason crash or watchdog
  0      also: SCHEDOP_shutdown with reason poweroff, reboot, suspend or soft reset

Guest console output (COM1 at 0x3f8, the debug console at port 0xe9, Xen's
console_io hypercall and the Xen PV console ring) goes to stdout. Errors are one line on stderr: 'host-shim: error: <message>'.";

/// A KVM-based VMM that boots a Xen PVH kernel.
#[derive(Debug, Parser)]
#[command(name = "host-shim", version, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a PVH kernel and run it until it writes to the exit port.
    #[command(after_help = EXIT_STATUS_HELP)]
    Run(RunArgs),
    /// Measure PV against emulated I/O paths on the same guest (block: fio-style
    /// matrix; network: iperf3, ping, TCP round trips) and write bench.json, bench.md,
    /// bench.svg and fio-PATH.json. Needs root (a private network namespace, TAPs).
    #[command(after_help = BENCH_HELP)]
    Bench(BenchArgs),
    /// Render several `bench` reports (one per place, e.g. this host and inside QEMU)
    /// as one bench.md with a section per place and one bench.svg.
    BenchReport(BenchReportArgs),
    /// Flush, then kill -9: boot the guest writing generations of a pattern with
    /// flushes at random points, SIGKILL the shim at random moments, and check that
    /// every write whose flush completed before the kill is in the image, intact.
    #[command(after_help = CRASHTEST_HELP)]
    Crashtest(CrashtestArgs),
    /// Soak: many block requests and packets through one shim (one disk and one NIC,
    /// each on the path --disk/--net names) in a network namespace of its own, and the
    /// shim's RSS, open fds and threads and the guest's free grant references (Xen
    /// paths) and frames compared at the start and the end of each window: nothing may
    /// grow. Needs root (a private network namespace, a TAP) and ping.
    #[command(after_help = SOAK_HELP)]
    Soak(SoakArgs),
}

/// The exit statuses of `host-shim soak`.
pub const SOAK_HELP: &str = "\
Exit status:
  0    nothing grew and both counts were reached
  1    something grew beyond its stated slack, or a count was not reached
  2    the soak could not run to its end (the error line says why)
  125  bad input or missing tool/privilege: one error line, nothing run";

/// Options of `host-shim soak`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct SoakArgs {
    /// The guest kernel: an ELF64 with a PVH note.
    #[arg(long, value_name = "GUEST")]
    pub kernel: PathBuf,
    /// The disk's path: xen (blkback), ide-dma, ide-pio (the emulated IDE disk), virtio
    /// (virtio-blk).
    #[arg(long, value_name = "PATH", default_value = "xen",
          value_parser = crate::paths::DiskPath::parse)]
    pub disk: crate::paths::DiskPath,
    /// The NIC's path: xen (netback), e1000, virtio (virtio-net).
    #[arg(long, value_name = "PATH", default_value = "xen",
          value_parser = crate::paths::NetPath::parse)]
    pub net: crate::paths::NetPath,
    /// Block requests after the warm-up, at least (counted by the disk's device).
    #[arg(long, value_name = "N", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    pub requests: u64,
    /// Bytes per block request: a multiple of 512 from 512 to 64K; K suffix.
    #[arg(long, value_name = "BYTES", default_value = "512", value_parser = parse_soak_block_size)]
    pub block_size: u32,
    /// Frames through the NIC, both ways, at least (flood pings: two per echo).
    #[arg(long, value_name = "N", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    pub packets: u64,
    /// Echo requests the flood pings keep in flight (ping -l).
    #[arg(long, value_name = "N", default_value_t = crate::soak::DEFAULT_PING_PRELOAD,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub ping_preload: u32,
    /// Samples inside each window between its first and last (block: at most 6).
    #[arg(long, value_name = "K", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub samples: u32,
    /// Directory for the image and the shim's counters (kept); default: a temporary
    /// one, removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The longest wait for a step, in seconds, beyond its work at 10 per second.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Print only the JSON report, on stdout.
    #[arg(long)]
    pub json: bool,
    /// The program started as the shim instead of this one (tests).
    #[arg(long, value_name = "FILE", hide = true)]
    pub shim: Option<PathBuf>,
}

/// The exit statuses of `host-shim crashtest`.
pub const CRASHTEST_HELP: &str = "\
Exit status:
  0    every round ran and no sector was lost
  1    some sector was lost (the lines saying LOST name it; its image is kept)
  2    no sector was lost, but some round could not run (the error line says why)
  125  bad input: one error line, nothing run";

/// Options of `host-shim crashtest`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct CrashtestArgs {
    /// The guest kernel: an ELF64 with a PVH note.
    #[arg(long, value_name = "GUEST")]
    pub kernel: PathBuf,
    /// The disk paths, a comma list of xen, ide-dma, ide-pio, virtio.
    #[arg(long, value_name = "LIST", default_value = "xen,ide-dma,virtio",
          value_delimiter = ',', value_parser = crate::paths::DiskPath::parse)]
    pub paths: Vec<crate::paths::DiskPath>,
    /// Kills per path.
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rounds: u32,
    /// Seed of the kill moments and the patterns (default: from the clock; printed,
    /// so a run can be repeated).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Bytes of the region the guest writes (and of each image): a multiple of 4096
    /// from 8K to 1G; K/M/G suffixes.
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_crash_size)]
    pub size: u64,
    /// Requests the guest keeps in flight (1..=256).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub qd: u32,
    /// Directory for the images (kept); default: a temporary one, removed unless a
    /// loss was found.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The longest wait, in seconds, for a round's first durable line (boot included)
    /// and for each later one.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Print only the JSON report, on stdout.
    #[arg(long)]
    pub json: bool,
    /// The program started for each round instead of this one (tests: a fake shim).
    #[arg(long, value_name = "FILE", hide = true)]
    pub shim: Option<PathBuf>,
}

fn parse_soak_block_size(s: &str) -> Result<u32, String> {
    let bytes = crate::backends::spec::parse_size(s)
        .ok_or_else(|| format!("'{s}' is not a size (bytes, or a number with K, M or G)"))?;
    crate::soak::check_block_size(bytes)
}

fn parse_crash_size(s: &str) -> Result<u64, String> {
    let bytes = crate::backends::spec::parse_size(s)
        .ok_or_else(|| format!("'{s}' is not a size (bytes, or a number with K, M or G)"))?;
    crate::crashtest::check_size(bytes)
}

/// The exit statuses of `host-shim bench`.
pub const BENCH_HELP: &str = "\
Exit status:
  0    every path measured
  1    some measurement failed (the files say which; they are still written)
  125  bad input or missing tool/privilege: one error line, nothing written
  130  interrupted by Ctrl-C: what was measured is written, marked incomplete";

/// Options of `host-shim bench`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct BenchArgs {
    /// The guest kernel: an ELF64 with a PVH note.
    #[arg(long, value_name = "GUEST")]
    pub kernel: PathBuf,
    /// Directory for the results.
    #[arg(long, value_name = "DIR", default_value = "./bench-results")]
    pub out: PathBuf,
    /// Fewer operations and shorter tests.
    #[arg(long)]
    pub quick: bool,
    /// The paths to measure, a comma list of xen, ide-dma, ide-pio, e1000, virtio.
    #[arg(long, value_name = "LIST", default_value = "xen,ide-dma,ide-pio,e1000,virtio",
          value_delimiter = ',', value_parser = crate::bench::parse_path)]
    pub paths: Vec<String>,
    /// Print only the JSON report, on stdout (no progress lines).
    #[arg(long)]
    pub json: bool,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(2..=65536))]
    pub mem: u64,
    /// Where this run takes place, as the report names it (for example "inside QEMU").
    #[arg(long, value_name = "TEXT", default_value = "this host's /dev/kvm",
          value_parser = crate::bench::parse_place)]
    pub place: String,
    /// Skip the host `fio` baseline (where Debian's fio is not available, e.g. inside
    /// the L1 of scripts/shim-in-qemu.sh); the report says it was not run.
    #[arg(long)]
    pub no_host_fio: bool,
}

/// Options of `host-shim bench-report`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct BenchReportArgs {
    /// Directory for bench.md and bench.svg.
    #[arg(long, value_name = "DIR", default_value = "./bench-results")]
    pub out: PathBuf,
    /// Reports written by `host-shim bench` (bench.json), one per place, in order.
    #[arg(value_name = "BENCH_JSON", required = true)]
    pub reports: Vec<PathBuf>,
}

/// Options of `host-shim run`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct RunArgs {
    /// The kernel: an x86 ELF (ELF64, or ELF32 for i386 or x86-64) with a
    /// XEN_ELFNOTE_PHYS32_ENTRY (PVH) note.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// A boot module, listed first in `hvm_start_info`'s module list: the initramfs of
    /// a Linux guest (placed page-aligned at the top of low RAM).
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Another boot module, `FILE[,cmdline=TEXT]` (TEXT is the rest of the value),
    /// listed after the initrd in the order given, each below the previous one in RAM.
    /// Repeatable.
    #[arg(long, value_name = "FILE[,cmdline=TEXT]", value_parser = parse_module)]
    pub module: Vec<ModuleSpec>,
    /// Guest memory in MiB (2..=65536).
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub mem: u64,
    /// The guest's command line (at most 4095 bytes).
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Stop the guest after this many seconds (exit status 124).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
    /// Print the run's counters as one JSON object on stderr.
    #[arg(long)]
    pub stats: bool,
    /// Write the run's counters as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub stats_file: Option<PathBuf>,
    /// Hide the Xen interface: no Xen CPUID leaves, hypercalls or PV devices (the
    /// guest then sees a plain HVM machine, as in QEMU).
    #[arg(long)]
    pub no_xen: bool,
    /// Keep the Xen timer of a guest that calls Xen with `vmcall` in the shim even where
    /// KVM's Xen support could run it in the kernel (to compare the two).
    #[arg(long)]
    pub no_kvm_xen_accel: bool,
    /// The guest's Xen domain id (1..32751).
    #[arg(long, value_name = "ID", default_value_t = crate::xen::DEFAULT_DOMID,
          value_parser = clap::value_parser!(u16).range(1..0x7ff0))]
    pub domid: u16,
    /// The guest's name in xenstore.
    #[arg(long, value_name = "NAME", default_value = "guest", value_parser = parse_name)]
    pub name: String,
    /// A disk on a raw image file: `PATH[,ro][,create=SIZE][,direct][,if=xen|ide|virtio]`
    /// (create= makes the file if absent; direct opens it with O_DIRECT). `if=xen`
    /// (default) is a PV disk (blkback), the guest's xvda, xvdb, ... in order; `if=ide`
    /// the emulated PIIX3 IDE controller's primary master (one IDE disk); `if=virtio` a
    /// virtio-blk device on the modern virtio-pci transport. Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    pub disk: Vec<DiskSpec>,
    /// A network interface on a TAP device, created if absent:
    /// `tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,model=xen|e1000|virtio]`. `model=xen` (default)
    /// is a PV NIC (netback), `model=e1000` an emulated Intel 82540EM on PCI, `model=virtio`
    /// a virtio-net device on the modern virtio-pci transport. Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    pub net: Vec<NetSpec>,
}

/// A `--module` value: a file and its optional command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    /// The file.
    pub path: PathBuf,
    /// Its command line.
    pub cmdline: Option<String>,
}

fn parse_module(s: &str) -> Result<ModuleSpec, String> {
    let (path, cmdline) = match s.split_once(",cmdline=") {
        Some((path, text)) => (path, Some(text.to_owned())),
        None => (s, None),
    };
    if path.is_empty() {
        return Err("want FILE[,cmdline=TEXT]: the file is missing".into());
    }
    if cmdline.as_ref().is_some_and(|c| c.contains('\0')) {
        return Err("the command line contains a NUL byte".into());
    }
    Ok(ModuleSpec {
        path: path.into(),
        cmdline,
    })
}

fn parse_disk(s: &str) -> Result<DiskSpec, String> {
    s.parse().map_err(|e: SpecError| e.to_string())
}

fn parse_net(s: &str) -> Result<NetSpec, String> {
    s.parse().map_err(|e: SpecError| e.to_string())
}

fn parse_name(s: &str) -> Result<String, String> {
    // A xenstore node value: keep it printable and short, as xl does for names.
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "'{s}' is not a domain name (1-64 printable ASCII characters, no spaces)"
        ));
    }
    Ok(s.to_owned())
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 1e9) {
        return Err(format!("'{s}' is not between 0 and 1e9 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses the command line. On `--help`/`--version` prints them and returns `Err(0)`;
/// on a syntax error prints one error line and returns `Err(125)`.
pub fn parse<I, T>(args: I) -> Result<Cli, u8>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                let _ = e.print();
                Err(0)
            }
            _ => {
                report(&mut io::stderr(), &usage_error(&e));
                Err(EXIT_SHIM_ERROR)
            }
        },
    }
}

/// clap's multi-line error as one line: its first paragraph without the "error: ".
pub fn usage_error(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "missing subcommand; try 'host-shim --help'".into();
    }
    let text = e.to_string();
    let first = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    first.strip_prefix("error: ").unwrap_or(&first).to_owned()
}

/// Writes `host-shim: error: <message>` as one line.
pub fn report(stderr: &mut dyn Write, message: &str) {
    let line = message.replace('\n', " ");
    let _ = writeln!(stderr, "host-shim: error: {line}");
}

/// Runs a parsed command with the console on stdout; returns the exit status.
pub fn execute(cli: Cli) -> u8 {
    match cli.command {
        Command::Run(args) => run(&args, ConsoleSink::stdout(), &mut io::stderr()),
        Command::Bench(args) => crate::bench::run(
            &crate::bench::Options {
                kernel: args.kernel,
                out: args.out,
                quick: args.quick,
                paths: crate::bench::dedup(args.paths),
                json: args.json,
                mem: args.mem,
                place: args.place,
                host_fio: !args.no_host_fio,
            },
            &mut io::stdout(),
            &mut io::stderr(),
        ),
        Command::BenchReport(args) => {
            crate::bench::combine(&args.reports, &args.out, &mut io::stderr())
        }
        Command::Crashtest(args) => crashtest(args),
        Command::Soak(args) => soak(args),
    }
}

/// `host-shim soak`: the options completed (this binary) and run.
fn soak(args: SoakArgs) -> u8 {
    let shim = match args.shim.map_or_else(std::env::current_exe, Ok) {
        Ok(p) => p,
        Err(e) => {
            report(
                &mut io::stderr(),
                &format!("cannot find this program's own binary: {e}"),
            );
            return EXIT_SHIM_ERROR;
        }
    };
    crate::soak::run(
        &crate::soak::Options {
            kernel: args.kernel,
            shim,
            disk: args.disk,
            net: args.net,
            block_size: args.block_size,
            requests: args.requests,
            packets: args.packets,
            ping_preload: args.ping_preload,
            samples: args.samples,
            dir: args.dir,
            timeout: args.timeout,
            json: args.json,
        },
        &mut io::stdout(),
        &mut io::stderr(),
    )
}

/// `host-shim crashtest`: the options completed (the seed, this binary) and run.
fn crashtest(args: CrashtestArgs) -> u8 {
    let shim = match args.shim.map_or_else(std::env::current_exe, Ok) {
        Ok(p) => p,
        Err(e) => {
            report(
                &mut io::stderr(),
                &format!("cannot find this program's own binary: {e}"),
            );
            return EXIT_SHIM_ERROR;
        }
    };
    let mut paths = Vec::new();
    for p in args.paths {
        if !paths.contains(&p) {
            paths.push(p);
        }
    }
    let seed = args.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_nanos() as u64) ^ u64::from(std::process::id()) << 32
    });
    crate::crashtest::run(
        &crate::crashtest::Options {
            kernel: args.kernel,
            shim,
            paths,
            rounds: args.rounds,
            seed,
            size: args.size,
            dir: args.dir,
            queue_depth: args.qd,
            timeout: args.timeout,
            json: args.json,
        },
        &mut io::stdout(),
        &mut io::stderr(),
    )
}

impl RunArgs {
    /// The VM configuration these options describe. Checks memory size and command line
    /// first, so that those errors are reported before the kernel file is even read.
    pub fn to_config(&self, console: ConsoleSink) -> Result<VmConfig, crate::Error> {
        boot::MemoryLayout::new(self.mem)?;
        boot::check_cmdline(&self.cmdline)?;
        Ok(VmConfig {
            kernel: Kernel::from_file(&self.kernel)?,
            modules: {
                let mut modules = Vec::new();
                if let Some(path) = &self.initrd {
                    modules.push(crate::boot::BootModule {
                        bytes: crate::vmm::read_boot_file(path, "initrd")?.1,
                        cmdline: None,
                    });
                }
                for m in &self.module {
                    modules.push(crate::boot::BootModule {
                        bytes: crate::vmm::read_boot_file(&m.path, "module")?.1,
                        cmdline: m.cmdline.clone(),
                    });
                }
                modules
            },
            mem_mib: self.mem,
            cmdline: self.cmdline.clone(),
            timeout: self.timeout,
            console,
            xen_log: ConsoleSink::new(std::io::stderr()),
            xen: !self.no_xen,
            kvm_xen_accel: !self.no_kvm_xen_accel,
            domid: self.domid,
            name: self.name.clone(),
            disks: self.disk.clone(),
            nets: self.net.clone(),
        })
    }
}

/// `host-shim run`: boots the kernel, reports errors and stats on `stderr`, and returns
/// the exit status.
pub fn run(args: &RunArgs, console: ConsoleSink, stderr: &mut dyn Write) -> u8 {
    // The stats file is opened before the guest runs: an unwritable one is a usage
    // error, not a guest's exit status turned into a shim error afterwards.
    let mut stats_file = match &args.stats_file {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Some((path, f)),
            Err(e) => {
                report(
                    stderr,
                    &format!("cannot write stats file {}: {e}", path.display()),
                );
                return EXIT_SHIM_ERROR;
            }
        },
        None => None,
    };
    let report_result = args
        .to_config(console)
        .and_then(Vmm::new)
        .and_then(Vmm::run);
    let run = match report_result {
        Ok(run) => run,
        Err(e) => {
            report(stderr, &e.to_string());
            return EXIT_SHIM_ERROR;
        }
    };
    if !run.outcome.is_guest_exit() {
        report(stderr, &run.outcome.to_string());
    }
    for note in &run.notes {
        let _ = writeln!(stderr, "host-shim: note: {note}");
    }
    let json = run.to_json();
    if args.stats {
        let _ = writeln!(stderr, "{json}");
    }
    if let Some((path, f)) = &mut stats_file
        && let Err(e) = f.write_all(format!("{json}\n").as_bytes())
    {
        report(
            stderr,
            &format!("cannot write stats file {}: {e}", path.display()),
        );
        return EXIT_SHIM_ERROR;
    }
    run.exit_code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> RunArgs {
        match Cli::try_parse_from(args).expect("parses").command {
            Command::Run(r) => r,
            Command::Bench(_)
            | Command::BenchReport(_)
            | Command::Crashtest(_)
            | Command::Soak(_) => {
                panic!("not run")
            }
        }
    }

    #[test]
    fn modules_take_a_file_and_an_optional_command_line() {
        let a = parse_ok(&[
            "host-shim",
            "run",
            "--kernel",
            "k.elf",
            "--module",
            "a.img",
            "--module",
            "b,c.img,cmdline=x=1, y",
        ]);
        assert_eq!(
            a.module,
            [
                ModuleSpec {
                    path: "a.img".into(),
                    cmdline: None
                },
                ModuleSpec {
                    path: "b,c.img".into(),
                    cmdline: Some("x=1, y".into())
                },
            ]
        );
        for bad in [",cmdline=x", ""] {
            let r = Cli::try_parse_from(["host-shim", "run", "--kernel", "k", "--module", bad]);
            assert!(r.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults() {
        let a = parse_ok(&["host-shim", "run", "--kernel", "k.elf"]);
        assert_eq!(a.kernel, PathBuf::from("k.elf"));
        assert_eq!(a.mem, 128);
        assert_eq!(a.cmdline, "");
        assert_eq!(a.timeout, None);
        assert!(!a.stats);
        assert_eq!(a.stats_file, None);
    }

    #[test]
    fn all_options() {
        let a = parse_ok(&[
            "host-shim",
            "run",
            "--kernel",
            "k",
            "--mem",
            "4096",
            "--cmdline",
            "io=pv quiet",
            "--timeout",
            "1.5",
            "--stats",
            "--stats-file",
            "s.json",
        ]);
        assert_eq!(a.mem, 4096);
        assert_eq!(a.cmdline, "io=pv quiet");
        assert_eq!(a.timeout, Some(Duration::from_millis(1500)));
        assert!(a.stats);
        assert_eq!(a.stats_file, Some(PathBuf::from("s.json")));
    }

    #[test]
    fn syntax_errors_become_one_line() {
        for (args, want) in [
            (&["host-shim", "run"][..], "--kernel"),
            (
                &["host-shim", "run", "--kernel", "k", "--mem", "x"][..],
                "--mem",
            ),
            (
                &["host-shim", "run", "--kernel", "k", "--timeout", "0"][..],
                "--timeout",
            ),
            (
                &["host-shim", "run", "--kernel", "k", "--timeout", "-1"][..],
                "-1",
            ),
            (&["host-shim", "fly"][..], "fly"),
        ] {
            let e = Cli::try_parse_from(args).expect_err("rejected");
            let line = usage_error(&e);
            assert!(!line.contains('\n'), "{line}");
            assert!(!line.starts_with("error:"), "{line}");
            assert!(line.contains(want), "{line:?} should mention {want}");
        }
        let e = Cli::try_parse_from(["host-shim"]).expect_err("rejected");
        assert_eq!(
            usage_error(&e),
            "missing subcommand; try 'host-shim --help'"
        );
    }

    #[test]
    fn help_lists_exit_statuses() {
        let e = Cli::try_parse_from(["host-shim", "run", "--help"]).expect_err("help");
        assert_eq!(e.kind(), ErrorKind::DisplayHelp);
        let help = e.to_string();
        for needle in [
            "--kernel",
            "--mem",
            "--cmdline",
            "--timeout",
            "--stats-file",
            "124",
            "125",
            "126",
        ] {
            assert!(help.contains(needle), "help lacks {needle}");
        }
    }

    #[test]
    fn bad_input_is_one_error_line_and_125() {
        let mut err = Vec::new();
        let args = parse_ok(&["host-shim", "run", "--kernel", "/nonexistent/k.elf"]);
        let code = run(&args, ConsoleSink::new(io::sink()), &mut err);
        assert_eq!(code, 125);
        let text = String::from_utf8(err).expect("utf8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("host-shim: error: kernel /nonexistent/k.elf: cannot read: "));

        let mut err = Vec::new();
        let args = parse_ok(&["host-shim", "run", "--kernel", "k", "--mem", "0"]);
        assert_eq!(run(&args, ConsoleSink::new(io::sink()), &mut err), 125);
        assert_eq!(
            String::from_utf8_lossy(&err),
            "host-shim: error: memory size 0 MiB is out of range (2..=65536 MiB)\n"
        );
    }
}
