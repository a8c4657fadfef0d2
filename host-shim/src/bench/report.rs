//! The benchmark report: cells (one measurement of one path), PV/emulated ratios, the
//! machine description, the markdown tables, and writing the output files so that none
//! is ever half-written.
//!
//! bench.json: `{"machine", "date", "guest", "quick", "complete", "incomplete_reason",
//! "paths": {PATH: {"block"|"net": {"status", "error", "cells": [CELL]}}}, "ratios"}`.
//! A CELL is `{"name", "kind", "status": "ok"|"skipped"|"failed", "reason", "metrics":
//! {unit-suffixed key: number|null}, "costs": costs::Costs, "null_reasons", ...}`.
//! Every figure that cannot be computed is `null`, and `null_reasons` says why.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::costs::{Costs, ratio};
use super::fio::{BlkResult, FioSummary, MatrixPhase};

/// Block or network.
pub const KINDS: [&str; 2] = ["block", "net"];

/// The pairs compared, PV first: (kind, PV path, emulated path).
pub const RATIO_PAIRS: [(&str, &str, &str); 3] = [
    ("block", "xen", "ide-dma"),
    ("block", "xen", "ide-pio"),
    ("net", "xen", "e1000"),
];

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `secs` since the epoch as ISO 8601 UTC ("2026-12-06T21:30:00Z").
pub fn iso8601(secs: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The host: kernel release, CPU model, whether /dev/kvm is kvm-pvm.
pub fn machine_info() -> Value {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .ok();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kvm_module = ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .find(|m| Path::new(&format!("/sys/module/{m}")).exists());
    json!({
        "kernel": kernel,
        "cpu": cpu,
        "cpus": cpus,
        "kvm_pvm": Path::new("/sys/module/kvm_pvm").exists(),
        "kvm_module": kvm_module,
    })
}

/// Puts `v` under `key` of `metrics`, or `null` and a reason.
fn put(
    metrics: &mut Map<String, Value>,
    reasons: &mut Map<String, Value>,
    key: &str,
    v: Result<f64, String>,
) {
    match v {
        Ok(x) if x.is_finite() => {
            metrics.insert(key.into(), json!(x));
        }
        Ok(_) => {
            metrics.insert(key.into(), Value::Null);
            reasons.insert(key.into(), json!("not a finite number"));
        }
        Err(r) => {
            metrics.insert(key.into(), Value::Null);
            reasons.insert(key.into(), json!(r));
        }
    }
}

/// A cell that was not measured.
pub fn missing_cell(kind: &str, name: &str, status: &str, reason: &str) -> Value {
    json!({"name": name, "kind": kind, "status": status, "reason": reason,
           "metrics": {}, "costs": null, "null_reasons": {}})
}

/// One block phase: the guest's result, its counter costs and the host fio baseline.
pub fn block_cell(
    p: &MatrixPhase,
    r: Option<&BlkResult>,
    costs: Result<Costs, String>,
    fio: Option<Result<FioSummary, String>>,
) -> Value {
    let name = format!("{} {} qd{}", p.rw, super::fio::size_label(p.bs), p.iodepth);
    let Some(r) = r else {
        return missing_cell(
            "block",
            &name,
            "skipped",
            "the guest printed no blk-result line for this phase",
        );
    };
    if let Some(reason) = r.skip_reason() {
        let mut c = missing_cell("block", &name, "skipped", &reason);
        c["guest"] = json!(r);
        return c;
    }
    let mut m = Map::new();
    let mut why = Map::new();
    let secs = r.runtime_ns as f64 / 1e9;
    put(
        &mut m,
        &mut why,
        "throughput_mib_s",
        ratio(r.io_bytes as f64 / (1u64 << 20) as f64, secs, "the runtime"),
    );
    put(
        &mut m,
        &mut why,
        "iops",
        ratio(r.ios as f64, secs, "the runtime"),
    );
    put(&mut m, &mut why, "lat_mean_us", Ok(r.clat_ns.mean / 1000.0));
    let pct = |k: &str| {
        r.clat_ns
            .percentile
            .get(k)
            .map(|v| v / 1000.0)
            .ok_or_else(|| format!("the guest gave no {k} percentile"))
    };
    put(&mut m, &mut why, "lat_p50_us", pct("50.000000"));
    put(&mut m, &mut why, "lat_p99_us", pct("99.000000"));
    put(&mut m, &mut why, "lat_max_us", Ok(r.clat_ns.max / 1000.0));
    let fio_value = match fio {
        None => Value::Null,
        Some(Ok(f)) => {
            put(
                &mut m,
                &mut why,
                "host_fio_mib_s",
                Ok(f.bw_bytes / (1u64 << 20) as f64),
            );
            put(&mut m, &mut why, "host_fio_iops", Ok(f.iops));
            put(
                &mut m,
                &mut why,
                "host_fio_lat_mean_us",
                Ok(f.clat_mean_ns / 1000.0),
            );
            json!(f)
        }
        Some(Err(e)) => {
            for k in ["host_fio_mib_s", "host_fio_iops", "host_fio_lat_mean_us"] {
                put(&mut m, &mut why, k, Err(e.clone()));
            }
            json!({"error": e})
        }
    };
    let costs = cost_value(costs, &mut why);
    json!({
        "name": name, "kind": "block", "phase": p.phase,
        "status": if r.errors > 0 { "failed" } else { "ok" },
        "reason": (r.errors > 0).then(|| format!("{} requests failed", r.errors)),
        "metrics": m, "costs": costs, "null_reasons": why,
        "guest": r, "host_fio": fio_value,
    })
}

fn cost_value(costs: Result<Costs, String>, why: &mut Map<String, Value>) -> Value {
    match costs {
        Ok(c) => {
            for (k, r) in &c.null_reasons {
                why.insert(format!("costs.{k}"), json!(r));
            }
            json!(c)
        }
        Err(e) => {
            why.insert("costs".into(), json!(e));
            Value::Null
        }
    }
}

/// A network cell from its measured metrics.
pub fn net_cell(
    name: &str,
    metrics: Vec<(&str, Result<f64, String>)>,
    costs: Result<Costs, String>,
    raw: Value,
) -> Value {
    let mut m = Map::new();
    let mut why = Map::new();
    for (k, v) in metrics {
        put(&mut m, &mut why, k, v);
    }
    let costs = cost_value(costs, &mut why);
    json!({"name": name, "kind": "net", "status": "ok", "reason": null,
           "metrics": m, "costs": costs, "null_reasons": why, "raw": raw})
}

/// The headline figure of a cell for ratios and the plot: (key, higher is better).
pub fn headline(cell: &Value) -> Option<(&'static str, bool)> {
    let m = &cell["metrics"];
    [
        ("throughput_mib_s", true),
        ("throughput_mbit_s", true),
        ("rtt_mean_us", false),
        ("rtt_avg_us", false),
    ]
    .into_iter()
    .find(|(k, _)| m.get(*k).is_some())
}

/// The path names of a report's `paths`, in [`super::PATHS`] order (others last).
pub fn path_names(paths: &Value) -> Vec<String> {
    let mut names: Vec<String> = paths
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    names.sort_by_key(|n| {
        super::PATHS
            .iter()
            .position(|p| p == n)
            .unwrap_or(usize::MAX)
    });
    names
}

/// Cells of `paths[path][kind]`.
pub fn cells<'a>(paths: &'a Value, path: &str, kind: &str) -> &'a [Value] {
    paths[path][kind]["cells"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

fn find<'a>(cells: &'a [Value], name: &str) -> Option<&'a Value> {
    cells.iter().find(|c| c["name"] == name)
}

fn fig(cell: Option<&Value>, path: &[&str]) -> Result<f64, String> {
    let cell = cell.ok_or("not measured")?;
    if cell["status"] == "skipped" {
        return Err(format!(
            "skipped: {}",
            cell["reason"].as_str().unwrap_or("")
        ));
    }
    let mut v = cell;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().ok_or_else(|| {
        let key = path.join(".");
        let r = cell["null_reasons"][path.last().copied().unwrap_or("")]
            .as_str()
            .or(
                cell["null_reasons"][format!("costs.{}", path.last().copied().unwrap_or(""))]
                    .as_str(),
            )
            .unwrap_or("not measured");
        format!("{key}: {r}")
    })
}

/// PV/emulated ratios of every cell both paths measured in this run.
pub fn ratios(paths: &Value) -> Value {
    let mut out = Map::new();
    for (kind, pv, emu) in RATIO_PAIRS {
        let (a, b) = (cells(paths, pv, kind), cells(paths, emu, kind));
        if a.is_empty() || b.is_empty() {
            continue;
        }
        let mut by_cell = Map::new();
        for ca in a {
            let name = ca["name"].as_str().unwrap_or("");
            let cb = find(b, name);
            let mut m = Map::new();
            let mut why = Map::new();
            if let Some((key, _)) = headline(ca) {
                let v = fig(Some(ca), &["metrics", key]).and_then(|x| {
                    fig(cb, &["metrics", key]).and_then(|y| ratio(x, y, &format!("{emu}'s {key}")))
                });
                put(&mut m, &mut why, key, v);
            }
            for k in ["user_exits", "kvm_exits", "interrupts", "notifications"] {
                let v = fig(Some(ca), &["costs", "per_op", k]).and_then(|x| {
                    fig(cb, &["costs", "per_op", k])
                        .and_then(|y| ratio(x, y, &format!("{emu}'s {k} per op")))
                });
                put(&mut m, &mut why, &format!("{k}_per_op"), v);
            }
            by_cell.insert(name.into(), json!({"ratios": m, "null_reasons": why}));
        }
        out.entry(kind.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|o| o.insert(format!("{pv}/{emu}"), Value::Object(by_cell)));
    }
    Value::Object(out)
}

/// One markdown table: a title with its unit, where the figure is, and whether the
/// host fio baseline gets a column.
struct Table {
    kind: &'static str,
    title: &'static str,
    path: &'static [&'static str],
    fio: Option<&'static str>,
}

const TABLES: &[Table] = &[
    Table {
        kind: "block",
        title: "Block throughput (MiB/s)",
        path: &["metrics", "throughput_mib_s"],
        fio: Some("host_fio_mib_s"),
    },
    Table {
        kind: "block",
        title: "Block IOPS (requests/s)",
        path: &["metrics", "iops"],
        fio: Some("host_fio_iops"),
    },
    Table {
        kind: "block",
        title: "Block mean completion latency (us)",
        path: &["metrics", "lat_mean_us"],
        fio: Some("host_fio_lat_mean_us"),
    },
    Table {
        kind: "block",
        title: "Block p99 completion latency (us)",
        path: &["metrics", "lat_p99_us"],
        fio: None,
    },
    Table {
        kind: "block",
        title: "Block user-space exits per request",
        path: &["costs", "per_op", "user_exits"],
        fio: None,
    },
    Table {
        kind: "block",
        title: "Block exits of the device per request (xen: hypercalls)",
        path: &["costs", "per_op", "device_exits"],
        fio: None,
    },
    Table {
        kind: "block",
        title: "Block KVM exits per request (all kinds)",
        path: &["costs", "per_op", "kvm_exits"],
        fio: None,
    },
    Table {
        kind: "block",
        title: "Block interrupts per request",
        path: &["costs", "per_op", "interrupts"],
        fio: None,
    },
    Table {
        kind: "block",
        title: "Block notifications per request",
        path: &["costs", "per_op", "notifications"],
        fio: None,
    },
    Table {
        kind: "block",
        title: "Block bytes copied by the shim per request (B)",
        path: &["costs", "per_op", "bytes_copied"],
        fio: None,
    },
    Table {
        kind: "block",
        title: "Block host CPU per GiB moved (ns/GiB)",
        path: &["costs", "per_op", "cpu_ns_per_gib"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network throughput (Mbit/s)",
        path: &["metrics", "throughput_mbit_s"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network small-packet rate (writes/s)",
        path: &["metrics", "writes_per_s"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network latency, mean (us)",
        path: &["metrics", "rtt_mean_us"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network latency, min (us)",
        path: &["metrics", "rtt_min_us"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network latency, max (us)",
        path: &["metrics", "rtt_max_us"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network user-space exits per operation",
        path: &["costs", "per_op", "user_exits"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network exits of the device per operation (xen: hypercalls)",
        path: &["costs", "per_op", "device_exits"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network KVM exits per operation (all kinds)",
        path: &["costs", "per_op", "kvm_exits"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network interrupts per operation",
        path: &["costs", "per_op", "interrupts"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network notifications per operation",
        path: &["costs", "per_op", "notifications"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network bytes copied by the shim per operation (B)",
        path: &["costs", "per_op", "bytes_copied"],
        fio: None,
    },
    Table {
        kind: "net",
        title: "Network host CPU per GiB moved (ns/GiB)",
        path: &["costs", "per_op", "cpu_ns_per_gib"],
        fio: None,
    },
];

fn pointer(path: &[&str]) -> String {
    path.iter().map(|p| format!("/{p}")).collect()
}

/// A number for a table: 3 significant digits at least, no exponent.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.01 {
        format!("{x:.2}")
    } else {
        format!("{x:.2e}")
    }
}

fn cell_text(cell: Option<&Value>, path: &[&str]) -> String {
    let Some(c) = cell else {
        return "not run".into();
    };
    match c.pointer(&pointer(path)).and_then(Value::as_f64) {
        Some(x) => fmt_num(x),
        None if c["status"] != "ok" => c["status"].as_str().unwrap_or("n/a").to_owned(),
        None => "n/a".into(),
    }
}

/// The report as markdown: a note on the machine, one table per figure with a row per
/// cell and a column per path, the ratios, and what failed.
pub fn markdown(report: &Value) -> String {
    let mut s = String::new();
    let m = &report["machine"];
    let _ = writeln!(s, "# host-shim bench: PV against emulated I/O\n");
    let _ = writeln!(
        s,
        "Run {} on Linux {} ({}, {} CPUs), /dev/kvm {}; guest `{}` ({} bytes){}.\n",
        report["date"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("unknown CPU"),
        m["cpus"],
        if m["kvm_pvm"] == true {
            "is kvm-pvm"
        } else {
            "is not kvm-pvm"
        },
        report["guest"]["path"].as_str().unwrap_or("?"),
        report["guest"]["size"],
        if report["quick"] == true {
            ", quick mode"
        } else {
            ""
        },
    );
    if report["complete"] != true {
        let _ = writeln!(
            s,
            "**Incomplete run**: {}.\n",
            report["incomplete_reason"]
                .as_str()
                .unwrap_or("stopped early")
        );
    }
    let _ = writeln!(
        s,
        "Counts per operation (exits, interrupts, notifications, bytes copied) hold on any \
         host. Absolute times and rates do not: under kvm-pvm the guest's kernel code is \
         emulated (~0.5 us per instruction), so guest-side latency and throughput are far \
         below what the same paths reach on hardware virtualization; compare paths within \
         this run, not with other machines. Latency is in guest TSC time (block) or host \
         time (network). `n/a`: not computable (see bench.json `null_reasons`).\n"
    );
    let paths = &report["paths"];
    let names = path_names(paths);
    for kind in KINDS {
        let cols: Vec<&String> = names
            .iter()
            .filter(|p| !cells(paths, p, kind).is_empty())
            .collect();
        if cols.is_empty() {
            continue;
        }
        let mut rows: Vec<String> = Vec::new();
        for p in &cols {
            for c in cells(paths, p, kind) {
                if let Some(n) = c["name"].as_str()
                    && !rows.iter().any(|r| r == n)
                {
                    rows.push(n.to_owned());
                }
            }
        }
        for t in TABLES.iter().filter(|t| t.kind == kind) {
            // Only the rows this figure applies to (throughput has no ping row).
            let applies: Vec<&String> = rows
                .iter()
                .filter(|r| {
                    cols.iter().any(|p| {
                        find(cells(paths, p, kind), r).is_some_and(|c| {
                            c["status"] != "ok"
                                || c.pointer(&pointer(t.path)).is_some()
                                || (t.path[0] == "costs" && c["costs"].is_null())
                        })
                    })
                })
                .collect();
            if applies.is_empty() {
                continue;
            }
            let _ = writeln!(s, "## {}\n", t.title);
            let mut head = String::from("| test |");
            let mut rule = String::from("|---|");
            for p in &cols {
                let _ = write!(head, " {p} |");
                rule.push_str("---:|");
            }
            if t.fio.is_some() {
                head.push_str(" host fio |");
                rule.push_str("---:|");
            }
            let _ = writeln!(s, "{head}\n{rule}");
            for r in applies {
                let mut line = format!("| {r} |");
                for p in &cols {
                    let _ = write!(
                        line,
                        " {} |",
                        cell_text(find(cells(paths, p, kind), r), t.path)
                    );
                }
                if let Some(key) = t.fio {
                    // The baseline ran once per image; show the first path's.
                    let v = cols
                        .iter()
                        .filter_map(|p| find(cells(paths, p, kind), r))
                        .find_map(|c| c["metrics"][key].as_f64());
                    let _ = write!(line, " {} |", v.map_or("n/a".into(), fmt_num));
                }
                let _ = writeln!(s, "{line}");
            }
            s.push('\n');
        }
    }
    if let Some(kinds) = report["ratios"].as_object() {
        for (kind, pairs) in kinds {
            for (pair, by_cell) in pairs.as_object().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "## Ratios {pair} ({kind}; PV divided by emulated, same run)\n"
                );
                let _ = writeln!(
                    s,
                    "| test | headline figure | user exits/op | KVM exits/op | interrupts/op | notifications/op |\n|---|---:|---:|---:|---:|---:|"
                );
                // In the order the PV path measured them, not alphabetically.
                let pv = pair.split('/').next().unwrap_or("");
                let order: Vec<&str> = cells(paths, pv, kind)
                    .iter()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                let mut rows: Vec<(&String, &Value)> =
                    by_cell.as_object().into_iter().flatten().collect();
                rows.sort_by_key(|(n, _)| order.iter().position(|o| o == n).unwrap_or(usize::MAX));
                for (name, r) in rows {
                    let rr = &r["ratios"];
                    let head = rr
                        .as_object()
                        .and_then(|o| o.iter().find(|(k, _)| !k.ends_with("_per_op")))
                        .map_or("n/a".to_owned(), |(k, v)| {
                            format!("{} ({k})", v.as_f64().map_or("n/a".into(), fmt_num))
                        });
                    let f = |k: &str| rr[k].as_f64().map_or("n/a".into(), fmt_num);
                    let _ = writeln!(
                        s,
                        "| {name} | {head} | {} | {} | {} | {} |",
                        f("user_exits_per_op"),
                        f("kvm_exits_per_op"),
                        f("interrupts_per_op"),
                        f("notifications_per_op")
                    );
                }
                s.push('\n');
            }
        }
    }
    let mut problems = String::new();
    for p in &names {
        for kind in KINDS {
            let k = &paths[p][kind];
            if let Some(e) = k["error"].as_str() {
                let _ = writeln!(problems, "- {p} {kind}: {e}");
            }
            for c in cells(paths, p, kind) {
                if c["status"] != "ok" {
                    let _ = writeln!(
                        problems,
                        "- {p} {kind} {}: {} ({})",
                        c["name"].as_str().unwrap_or("?"),
                        c["status"].as_str().unwrap_or("?"),
                        c["reason"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    if !problems.is_empty() {
        let _ = writeln!(s, "## Not measured\n\n{problems}");
    }
    s
}

/// Writes every `(name, contents)` into `dir` as a temporary file first, then renames
/// them all: a reader sees the old files or the new ones, never a part of one.
pub fn write_all(dir: &Path, files: &[(&str, String)]) -> io::Result<()> {
    let mut temps = Vec::new();
    for (name, contents) in files {
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(contents.as_bytes())?;
            f.sync_all()
        });
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            for (t, _) in &temps {
                let _ = fs::remove_file(t);
            }
            return Err(e);
        }
        temps.push((tmp, dir.join(name)));
    }
    for (tmp, dest) in &temps {
        fs::rename(tmp, dest)?;
    }
    Ok(())
}
