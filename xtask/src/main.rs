//! Developer tasks (`cargo xtask <task>`):
//!
//! - `guest`: build the guest image; print its path and sizes.
//! - `demo`: build everything, boot the guest under host-shim (when /dev/kvm exists)
//!   and in QEMU (`-M microvm`, `-M pc`), show what it printed.
//! - `bench-boot [--runs N] [--out DIR]`: time from process start to the guest's first
//!   output and to its exit, under each target; median of N runs, with the shim's exit
//!   counters. Writes `DIR/boot.json` and `DIR/boot.md` (default DIR: bench-results).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use system_tests::{Machine, Run, guest_image, kvm_available, qemu_command, run_with_limit};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("guest") => guest().map(|_| ExitCode::SUCCESS),
        Some("demo") => demo(),
        Some("bench-boot") => bench_boot(&args[1..]).map(|_| ExitCode::SUCCESS),
        _ => {
            eprintln!("usage: cargo xtask <guest | demo | bench-boot [--runs N] [--out DIR]>");
            return ExitCode::from(2);
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: error: {e}");
        ExitCode::FAILURE
    })
}

/// Image file size and bytes it occupies once loaded (sum of PT_LOAD memsz).
fn image_sizes(path: &Path) -> Result<(u64, u64), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let image = host_shim::elf::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let loaded = image.segments.iter().map(|s| s.memsz).sum();
    Ok((bytes.len() as u64, loaded))
}

fn guest() -> Result<PathBuf, String> {
    let path = guest_image().to_path_buf();
    let (file, loaded) = image_sizes(&path)?;
    println!("guest image: {}", path.display());
    println!(
        "  file size {file} bytes ({} KiB), loaded size {loaded} bytes ({} KiB)",
        file >> 10,
        loaded >> 10
    );
    Ok(path)
}

fn show(title: &str, run: &Run, outcome: &str) {
    println!("\n=== {title}");
    print!("{}", run.stdout);
    if !run.stderr.trim().is_empty() {
        println!("--- stderr ---\n{}", run.stderr.trim_end());
    }
    println!("=== {title}: {outcome}");
}

fn demo() -> Result<ExitCode, String> {
    let kernel = guest()?;
    let cmdline = "selftest=boot";
    let mut ok = true;
    if kvm_available("demo under host-shim") {
        let run = system_tests::run_shim(&kernel, cmdline, &["--timeout", "120", "--stats"]);
        let good = run.code() == Some(0);
        ok &= good;
        show(
            "host-shim (KVM)",
            &run,
            &format!("exit status {:?}", run.code()),
        );
    }
    for machine in [Machine::Microvm, Machine::Pc] {
        let run = system_tests::run_qemu(machine, &kernel, cmdline, &[]);
        let good = run.guest_status() == Some(0);
        ok &= good;
        let title = format!("QEMU TCG -M {}", machine.name());
        show(
            &title,
            &run.0,
            &format!("guest exit status {:?}", run.guest_status()),
        );
    }
    println!(
        "\n{}",
        if ok {
            "demo: every boot passed its self-tests"
        } else {
            "demo: FAILED"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A benchmark target: its name and one measured boot.
type Target = (String, Box<dyn Fn() -> Result<Sample, String>>);

struct Sample {
    first_output: Duration,
    exit: Duration,
    stats: Option<serde_json::Value>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench_boot(args: &[String]) -> Result<(), String> {
    let mut runs = 7usize;
    let mut out = system_tests::workspace_root().join("bench-results");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                runs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| (1..=1000).contains(&n))
                    .ok_or("--runs takes a number from 1 to 1000")?;
            }
            "--out" => out = PathBuf::from(it.next().ok_or("--out takes a directory")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let kernel = guest()?;
    let (file_size, loaded_size) = image_sizes(&kernel)?;
    let shim = system_tests::shim_binary();
    let cmdline = "selftest=none";
    let stats_path =
        std::env::temp_dir().join(format!("boot-bench-stats-{}.json", std::process::id()));

    let mut targets: Vec<Target> = Vec::new();
    if kvm_available("bench-boot under host-shim") {
        let kernel = kernel.clone();
        let stats_path = stats_path.clone();
        targets.push((
            "host-shim (KVM)".into(),
            Box::new(move || {
                let mut cmd = std::process::Command::new(shim);
                cmd.arg("run").arg("--kernel").arg(&kernel).args([
                    "--cmdline",
                    cmdline,
                    "--timeout",
                    "120",
                ]);
                cmd.arg("--stats-file").arg(&stats_path);
                let run = run_with_limit(cmd, system_tests::BOOT_LIMIT);
                if run.code() != Some(0) {
                    return Err(format!(
                        "host-shim run failed: {:?}\n{}{}",
                        run.code(),
                        run.stdout,
                        run.stderr
                    ));
                }
                let stats = std::fs::read_to_string(&stats_path)
                    .ok()
                    .and_then(|s| serde_json::from_str(&s).ok());
                sample(&run, stats)
            }),
        ));
    }
    for machine in [Machine::Microvm, Machine::Pc] {
        let kernel = kernel.clone();
        targets.push((
            format!("QEMU TCG -M {}", machine.name()),
            Box::new(move || {
                let run = run_with_limit(
                    qemu_command(machine, &kernel, cmdline, &[]),
                    system_tests::BOOT_LIMIT,
                );
                if run.code() != Some(1) {
                    return Err(format!(
                        "QEMU run failed: {:?}\n{}{}",
                        run.code(),
                        run.stdout,
                        run.stderr
                    ));
                }
                sample(&run, None)
            }),
        ));
    }

    let mut results = Vec::new();
    let mut table = String::from(
        "| target | runs | first output (median) | exit (median) | exit (min..max) | vCPU exits (median run) |\n|---|---|---|---|---|---|\n",
    );
    for (name, f) in &targets {
        eprintln!("bench-boot: {name}: {runs} runs");
        let mut samples = Vec::new();
        for _ in 0..runs {
            samples.push(f()?);
        }
        let first = median(samples.iter().map(|s| s.first_output).collect());
        let exit_all: Vec<_> = samples.iter().map(|s| s.exit).collect();
        let exit = median(exit_all.clone());
        let (min, max) = (
            exit_all.iter().min().copied().unwrap_or_default(),
            exit_all.iter().max().copied().unwrap_or_default(),
        );
        // The exit counters of the run whose exit time is the median.
        let stats = samples
            .iter()
            .find(|s| s.exit == exit)
            .and_then(|s| s.stats.clone());
        let exits_total = stats
            .as_ref()
            .and_then(|s| s.get("stats"))
            .and_then(|s| s.get("exits"))
            .and_then(|e| e.as_object())
            .map(|o| o.values().filter_map(|v| v.as_u64()).sum::<u64>());
        table.push_str(&format!(
            "| {name} | {runs} | {:.1} ms | {:.1} ms | {:.1}..{:.1} ms | {} |\n",
            ms(first),
            ms(exit),
            ms(min),
            ms(max),
            exits_total.map_or("n/a".into(), |n| n.to_string())
        ));
        results.push(serde_json::json!({
            "target": name,
            "runs": runs,
            "first_output_ms": { "median": ms(first), "all": samples.iter().map(|s| ms(s.first_output)).collect::<Vec<_>>() },
            "exit_ms": { "median": ms(exit), "min": ms(min), "max": ms(max), "all": exit_all.iter().map(|d| ms(*d)).collect::<Vec<_>>() },
            "shim_stats_of_median_run": stats,
        }));
    }
    let _ = std::fs::remove_file(&stats_path);
    let report = serde_json::json!({
        "benchmark": "boot",
        "guest_cmdline": cmdline,
        "guest_image": { "path": kernel, "file_bytes": file_size, "loaded_bytes": loaded_size },
        "kvm": if Path::new("/dev/kvm").exists() { "present (on these machines: kvm-pvm, guest ring 0 emulated)" } else { "absent" },
        "results": results,
    });
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(out.join("boot.json"), json + "\n").map_err(|e| e.to_string())?;
    std::fs::write(out.join("boot.md"), &table).map_err(|e| e.to_string())?;
    println!("guest image: {file_size} bytes on disk, {loaded_size} bytes loaded\n\n{table}");
    println!(
        "written: {} and {}",
        out.join("boot.json").display(),
        out.join("boot.md").display()
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sample(run: &Run, stats: Option<serde_json::Value>) -> Result<Sample, String> {
    Ok(Sample {
        first_output: run.first_output.ok_or("the guest printed nothing")?,
        exit: run.elapsed,
        stats,
    })
}
