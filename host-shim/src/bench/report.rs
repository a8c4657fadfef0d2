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

/// The pairs compared, PV first: (kind, PV path, emulated path). virtio is KVM's PV
/// path: compared with the emulated devices, and Xen PV with it.
pub const RATIO_PAIRS: [(&str, &str, &str); 6] = [
    ("block", "xen", "ide-dma"),
    ("block", "xen", "ide-pio"),
    ("net", "xen", "e1000"),
    ("block", "virtio", "ide-dma"),
    ("net", "virtio", "e1000"),
    ("block", "xen", "virtio"),
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

/// PV/emulated (and Xen PV/virtio) ratios of every cell both paths measured in this run.
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

/// Checks that `v` looks like a `host-shim bench` report (what [`markdown_places`]
/// reads): the first thing missing.
pub fn check_shape(v: &Value) -> Result<(), String> {
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    for key in ["machine", "date", "paths", "complete"] {
        if v.get(key).is_none() {
            return Err(format!("no \"{key}\""));
        }
    }
    let paths = v["paths"].as_object().ok_or("\"paths\" is not an object")?;
    for (p, kinds) in paths {
        for kind in KINDS {
            if let Some(k) = kinds.get(kind)
                && !k["cells"].is_array()
            {
                return Err(format!("paths.{p}.{kind}.cells is not a list"));
            }
        }
    }
    Ok(())
}

/// The place a report says it ran in (reports older than `--place`: "this host").
pub fn place_of(report: &Value) -> &str {
    report["place"].as_str().unwrap_or("this host")
}

/// One report as markdown: see [`markdown_places`].
pub fn markdown(report: &Value) -> String {
    markdown_places(std::slice::from_ref(report))
}

/// Reports of one or more places as markdown: per place, a note on the machine, the
/// idle exit rates, one table per figure with a row per cell and a column per path,
/// the ratios, and what failed.
pub fn markdown_places(reports: &[Value]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# host-shim bench: PV against emulated I/O\n");
    let h = if reports.len() > 1 {
        let _ = writeln!(
            s,
            "Measured in {} places, a section each: {}. Within a place every path ran \
             the same guest image in the same run; compare paths within a place, and \
             counts per operation (not times) across places.\n",
            reports.len(),
            reports
                .iter()
                .map(|r| format!("{} ({})", place_of(r), r["date"].as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join("; ")
        );
        "###"
    } else {
        "##"
    };
    for r in reports {
        if reports.len() > 1 {
            let _ = writeln!(s, "## {}\n", place_of(r));
        }
        section(&mut s, r, h);
    }
    s
}

/// The section of one report, its tables headed by `h`.
fn section(s: &mut String, report: &Value, h: &str) {
    let m = &report["machine"];
    let _ = writeln!(
        s,
        "Place: {}. Run {} on Linux {} ({}, {} CPUs), /dev/kvm {}; guest `{}` ({} bytes){}.\n",
        place_of(report),
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
         emulated (~0.5 us per instruction), and inside QEMU (TCG) all of it is, so \
         guest-side latency and throughput are far below what the same paths reach on \
         hardware virtualization; compare paths within this run, not with other \
         machines. Latency is in guest TSC time (block) or host time (network). `n/a`: \
         not computable (see bench.json `null_reasons`).{}\n",
        if report["host_fio"] == false {
            " The host fio baseline was not run here (--no-host-fio)."
        } else {
            ""
        }
    );
    let ops: Vec<String> = path_names(&report["paths"])
        .iter()
        .filter_map(|p| {
            report["paths"][p]["block"]["ops_per_phase"]
                .as_u64()
                .map(|n| format!("{p} {n}"))
        })
        .collect();
    if !ops.is_empty() {
        let _ = writeln!(
            s,
            "Block requests per phase: {} (PIO, at one exit per 2 bytes, runs fewer; \
             per-request figures do not depend on the count).\n",
            ops.join(", ")
        );
    }
    idle_table(s, report, h);
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
            let _ = writeln!(s, "{h} {}\n", t.title);
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
            let mut one_in_flight = false;
            for r in applies {
                let mut line = format!("| {r} |");
                for p in &cols {
                    let c = find(cells(paths, p, kind), r);
                    let mark = c.is_some_and(queued_beyond_device);
                    one_in_flight |= mark;
                    let _ = write!(
                        line,
                        " {}{} |",
                        cell_text(c, t.path),
                        if mark { " ¹" } else { "" }
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
            if one_in_flight {
                let _ = writeln!(
                    s,
                    "\n¹ The device took one command at a time (IDE: one per channel); the \
                     guest queued the requests of the row's queue depth in its driver."
                );
            }
            s.push('\n');
        }
    }
    if let Some(kinds) = report["ratios"].as_object() {
        for (kind, pairs) in kinds {
            for (pair, by_cell) in pairs.as_object().into_iter().flatten() {
                let what = if pair == "xen/virtio" {
                    "Xen PV divided by virtio"
                } else {
                    "PV divided by emulated"
                };
                let _ = writeln!(s, "{h} Ratios {pair} ({kind}; {what}, same run)\n");
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
        let _ = writeln!(s, "{h} Not measured\n\n{problems}");
    }
}

/// Whether a block cell queued more requests than its device had in flight.
fn queued_beyond_device(c: &Value) -> bool {
    if c["status"] != "ok" {
        return false;
    }
    match (
        c["device_max_in_flight"].as_u64(),
        c["guest"]["iodepth"].as_u64(),
    ) {
        (Some(dev), Some(qd)) => qd > dev,
        _ => false,
    }
}

/// The idle exit rates of every path: per second of an idle window, for the block
/// guest (its phase 0) and the network guest (host-timed).
fn idle_table(s: &mut String, report: &Value, h: &str) {
    let paths = &report["paths"];
    let names = path_names(paths);
    let rows = [
        ("user exits/s", "user_exits"),
        ("KVM exits/s", "kvm_exits"),
        ("interrupts/s", "interrupts"),
        ("host CPU (ns/s)", "cpu_ns"),
    ];
    let mut cols: Vec<(String, &Value)> = Vec::new();
    for p in &names {
        for kind in KINDS {
            let idle = &paths[p][kind]["idle"];
            if idle.is_object() {
                cols.push((format!("{p} ({kind} guest)"), idle));
            }
        }
    }
    if cols.is_empty() {
        return;
    }
    let _ = writeln!(s, "{h} Idle guest: cost per second\n");
    let _ = writeln!(
        s,
        "Each path's guest with nothing to do (block: before its matrix; network: its \
         services up, no client), over {} s: what the guest costs its host while idle.\n",
        report["scale"]["idle_seconds"]
            .as_f64()
            .map_or("?".into(), fmt_num)
    );
    let mut head = String::from("| per second |");
    let mut rule = String::from("|---|");
    for (name, _) in &cols {
        let _ = write!(head, " {name} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for (label, key) in rows {
        let mut line = format!("| {label} |");
        for (_, idle) in &cols {
            let c = &idle["costs"];
            // CPU time per operation is not kept (per GiB instead): from the total.
            let v = c["per_op"][key].as_f64().or_else(|| {
                let ops = c["ops"].as_f64().filter(|&o| o > 0.0)?;
                Some(c["totals"][key].as_f64()? / ops)
            });
            let text = match v {
                Some(x) => fmt_num(x),
                None if idle["error"].is_string() => "failed".into(),
                None => "n/a".into(),
            };
            let _ = write!(line, " {text} |");
        }
        let _ = writeln!(s, "{line}");
    }
    s.push('\n');
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

/// The cells of the short summary: (kind, cell, headline metric, its unit).
const SUMMARY_ROWS: [(&str, &str, &str, &str); 7] = [
    ("block", "randread 4k qd1", "throughput_mib_s", "MiB/s"),
    ("block", "randread 4k qd32", "throughput_mib_s", "MiB/s"),
    ("block", "write 64k qd32", "throughput_mib_s", "MiB/s"),
    ("net", "tcp host->guest", "throughput_mbit_s", "Mbit/s"),
    ("net", "tcp guest->host", "throughput_mbit_s", "Mbit/s"),
    ("net", "tcp round trip 1 byte", "rtt_mean_us", "us"),
    ("net", "ping", "rtt_mean_us", "us"),
];

/// A short table for the terminal: a few headline cells per path, each as its
/// throughput or latency and, in brackets, the user-space exits per operation; and the
/// idle exit rate. bench.md has every figure.
pub fn summary(report: &Value) -> String {
    let paths = &report["paths"];
    let names = path_names(paths);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({}): figure (user-space exits per operation)\n",
        place_of(report),
        report["date"].as_str().unwrap_or("?")
    );
    let mut head = String::from("| test |");
    let mut rule = String::from("|---|");
    for p in &names {
        let _ = write!(head, " {p} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for (kind, name, metric, unit) in SUMMARY_ROWS {
        if names
            .iter()
            .all(|p| find(cells(paths, p, kind), name).is_none())
        {
            continue;
        }
        let mut line = format!("| {name}, {unit} |");
        for p in &names {
            let c = find(cells(paths, p, kind), name);
            let text = match c {
                None => "-".to_owned(),
                Some(c) => format!(
                    "{} ({}){}",
                    cell_text(Some(c), &["metrics", metric]),
                    cell_text(Some(c), &["costs", "per_op", "user_exits"]),
                    if queued_beyond_device(c) { " ¹" } else { "" }
                ),
            };
            let _ = write!(line, " {text} |");
        }
        let _ = writeln!(s, "{line}");
    }
    let mut line = String::from("| idle, user exits/s |");
    for p in &names {
        let rates: Vec<String> = KINDS
            .iter()
            .filter_map(|k| paths[p][*k]["idle"]["costs"]["per_op"]["user_exits"].as_f64())
            .map(fmt_num)
            .collect();
        let _ = write!(
            line,
            " {} |",
            if rates.is_empty() {
                "-".to_owned()
            } else {
                rates.join(" / ")
            }
        );
    }
    let _ = writeln!(s, "{line}");
    if names
        .iter()
        .any(|p| cells(paths, p, "block").iter().any(queued_beyond_device))
    {
        let _ = writeln!(
            s,
            "\n¹ one command in flight at the device (IDE: one per channel), 32 queued in the guest"
        );
    }
    s
}
