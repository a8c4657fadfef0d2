//! `host-shim bench` without KVM: the parsers (blk-result lines, RunReport phases,
//! iperf3 -J from the real iperf3, ping, fio), counter deltas and per-op costs, the fio
//! JSON shape against a real fio document, the markdown and SVG reports on canned cells,
//! and the command line's one-line errors. Fixtures are in tests/fixtures/.

use std::path::PathBuf;
use std::process::Command;

use host_shim::bench::costs::{self, Costs, DeviceKind};
use host_shim::bench::{fio, net, report, svg};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn run_report() -> Value {
    serde_json::from_str(&fixture("run-report-phases.json")).expect("json")
}

#[test]
fn blk_result_lines_parse_with_a_skipped_phase_and_a_bad_line() {
    let (good, bad) = fio::parse_blk_results(&fixture("blk-console.txt"));
    assert_eq!(good.len(), 16);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].line.contains("{not json"));
    let m = fio::matrix();
    assert_eq!(m.len(), 16);
    for (r, p) in good.iter().zip(&m) {
        assert_eq!(
            (r.phase, r.rw.as_str(), r.bs, r.iodepth),
            (p.phase, p.rw, p.bs, p.iodepth)
        );
    }
    assert_eq!(
        good[6].skip_reason().as_deref(),
        Some("queue depth 32 not supported")
    );
    assert_eq!(good[0].skip_reason(), None);
    assert_eq!(good[0].clat_ns.percentile["99.000000"], 13000.0);
    assert_eq!(good[0].label(), "read 4k qd1");
    assert_eq!(m[15].rw, "randwrite");
    assert_eq!((m[15].bs, m[15].iodepth), (65536, 32));
}

#[test]
fn deltas_subtract_every_leaf_and_the_marks() {
    let d = costs::delta(
        &json!({"a": 5, "b": {"c": 1}, "name": "x"}),
        &json!({"a": 7, "b": {"c": 4, "new": 3}, "name": "x", "mark_exits": 1}),
    );
    assert_eq!(d, json!({"a": 2, "b": {"c": 3, "new": 3}, "mark_exits": 1}));
    let d = costs::without_marks(json!({"exits": {"io_out": 10}, "pio_ports": {"0xf8": 2},
                                        "kvm": {"exits": 20, "io_exits": 12}, "mark_exits": 2}));
    assert_eq!(d["exits"]["io_out"], 8);
    assert_eq!(d["pio_ports"]["0xf8"], 0);
    assert_eq!(d["kvm"]["exits"], 18);
    assert_eq!(d["kvm"]["io_exits"], 10);
}

#[test]
fn phase_costs_from_the_run_report() {
    let phases = costs::phases(&run_report());
    assert_eq!(phases.len(), 16);
    let d = costs::phase_delta(&phases, 1).expect("phase 1");
    assert_eq!(
        d["exits"]["io_out"], 192,
        "the end mark's own exit is removed"
    );
    assert_eq!(d["pio_ports"]["0xf8"], 0);
    let c = Costs::from_delta(&d, "request", 64.0, 64.0 * 4096.0, DeviceKind::Ide);
    let per = |k: &str| c.per_op[k];
    assert_eq!(per("user_exits"), Some(5.0));
    assert_eq!(per("pio_exits"), Some(312.0 / 64.0));
    assert_eq!(per("mmio_exits"), Some(0.0));
    assert_eq!(per("hypercall_exits"), Some(0.125));
    assert_eq!(per("device_exits"), Some(312.0 / 64.0));
    assert_eq!(per("notifications"), Some(132.0 / 64.0));
    assert_eq!(per("interrupts"), Some(66.0 / 64.0));
    assert_eq!(per("bytes_copied"), Some(4096.0));
    assert_eq!(per("cpu_ns_per_gib"), Some(750_000.0 * 4096.0));
    // kvm is null in the snapshots: null with a reason, never NaN.
    assert_eq!(per("kvm_exits"), None);
    assert!(c.null_reasons["kvm_exits"].contains("KVM"));
    // Xen's own "device exits" are its hypercalls.
    let x = Costs::from_delta(&d, "request", 64.0, 1.0, DeviceKind::Xen);
    assert_eq!(x.per_op["device_exits"], Some(0.125));
    // Zero operations: null with a reason.
    let z = Costs::from_delta(&d, "request", 0.0, 0.0, DeviceKind::Ide);
    assert_eq!(z.per_op["user_exits"], None);
    assert!(z.null_reasons["user_exits"].contains("zero"));
    assert!(z.null_reasons["cpu_ns_per_gib"].contains("zero"));

    assert!(
        costs::phase_delta(&phases, 7)
            .unwrap_err()
            .contains("no mark")
    );
    assert!(
        costs::phase_delta(&phases, 42)
            .unwrap_err()
            .contains("without a Start")
    );
}

#[test]
fn iperf3_json_from_the_real_iperf3() {
    let f = net::parse_iperf3(&fixture("iperf3-forward.json")).expect("forward");
    assert!(!f.reverse);
    assert_eq!(f.streams, 1);
    assert!(f.bits_per_second > 0.0 && f.bytes > 0.0 && f.seconds > 0.0);
    let r = net::parse_iperf3(&fixture("iperf3-reverse-p2.json")).expect("reverse");
    assert!(r.reverse);
    assert_eq!(r.streams, 2);
    let e = net::parse_iperf3(r#"{"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}"#)
        .unwrap_err();
    assert!(e.contains("Connection refused"), "{e}");
    assert!(net::parse_iperf3("iperf3: error").is_err());
}

#[test]
fn ping_summary_and_round_trip_statistics() {
    let p = net::parse_ping(&fixture("ping.txt")).expect("ping");
    assert_eq!((p.transmitted, p.received), (3, 3));
    assert!((p.avg_us - 99.0).abs() < 1e-6);
    assert!((p.min_us - 21.0).abs() < 1e-6 && (p.max_us - 243.0).abs() < 1e-6);
    // iputils appends ", pipe N" when replies overlap; the unit is still ms.
    let piped = net::parse_ping(&fixture("ping-pipe.txt")).expect("pipe");
    assert_eq!((piped.transmitted, piped.received), (50, 49));
    assert!((piped.max_us - 28984.0).abs() < 1e-6, "{piped:?}");
    let busybox = "4 packets transmitted, 4 packets received, 0% packet loss\nround-trip min/avg/max = 0.1/0.2/0.3 ms\n";
    assert!((net::parse_ping(busybox).expect("busybox").avg_us - 200.0).abs() < 1e-6);
    let lost = "2 packets transmitted, 0 received, 100% packet loss, time 1ms\n";
    assert!(net::parse_ping(lost).unwrap_err().contains("no reply"));
    let s = net::RttStats::of((1..=100).map(f64::from).collect()).expect("stats");
    assert_eq!(
        (s.min_us, s.p50_us, s.p99_us, s.max_us),
        (1.0, 50.0, 99.0, 100.0)
    );
    assert_eq!(s.mean_us, 50.5);
    assert_eq!(net::RttStats::of(Vec::new()), None);
}

/// Every key path of `v` (objects only; arrays by their first element).
fn key_paths(v: &Value, prefix: &str, out: &mut Vec<(String, &'static str)>) {
    let class = |v: &Value| match v {
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Bool(_) => "bool",
        Value::Null => "null",
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{prefix}/{k}");
                out.push((p.clone(), class(x)));
                key_paths(x, &p, out);
            }
        }
        Value::Array(a) => {
            if let Some(x) = a.first() {
                key_paths(x, &format!("{prefix}/0"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn fio_json_has_fios_shape_and_values() {
    let (results, _) = fio::parse_blk_results(&fixture("blk-console.txt"));
    let ours = fio::fio_json("xen", &results);
    let real: Value = serde_json::from_str(&fixture("fio-host.json")).expect("fio json");
    let mut paths = Vec::new();
    key_paths(&ours, "", &mut paths);
    // Our own additions, not fio keys.
    let extra = ["/jobs/0/phase", "/jobs/0/skipped"];
    let mut checked = 0;
    for (p, class) in &paths {
        if extra.contains(&p.as_str()) {
            continue;
        }
        let theirs = real
            .pointer(p)
            .unwrap_or_else(|| panic!("fio writes no {p}"));
        let same = match theirs {
            Value::Number(_) => *class == "number",
            Value::String(_) => *class == "string",
            Value::Object(_) => *class == "object",
            Value::Array(_) => *class == "array",
            _ => false,
        };
        assert!(same, "{p}: ours is {class}, fio's is {theirs}");
        checked += 1;
    }
    assert!(checked > 30, "{checked}");
    for k in [
        "/fio version",
        "/jobs/0/jobname",
        "/jobs/0/read/io_bytes",
        "/jobs/0/read/bw_bytes",
        "/jobs/0/read/iops",
        "/jobs/0/read/runtime",
        "/jobs/0/read/clat_ns/min",
        "/jobs/0/read/clat_ns/max",
        "/jobs/0/read/clat_ns/mean",
        "/jobs/0/read/clat_ns/percentile/99.990000",
        "/jobs/0/write/io_bytes",
    ] {
        assert!(ours.pointer(k).is_some(), "we lack {k}");
    }
    let j = &ours["jobs"][0];
    assert_eq!(j["jobname"], "xen-read-4k-qd1");
    assert_eq!(j["read"]["io_bytes"], 262_144);
    assert_eq!(j["read"]["bw_bytes"], 131_072_000);
    assert_eq!(j["read"]["iops"], 32000.0);
    assert_eq!(j["read"]["runtime"], 2);
    assert_eq!(j["read"]["clat_ns"]["percentile"]["50.000000"], 7000);
    assert_eq!(j["write"]["io_bytes"], 0);
    let w = &ours["jobs"][1];
    assert_eq!(w["write"]["io_bytes"], 262_144);
    assert_eq!(w["read"]["io_bytes"], 0);
    // The skipped phase: zeros, no NaN, and said so.
    let s = &ours["jobs"][6];
    assert_eq!(s["read"]["iops"], 0.0);
    assert_eq!(s["skipped"], "queue depth 32 not supported");

    let sum = fio::parse_fio_output(&fixture("fio-host.json"), false).expect("summary");
    assert_eq!(sum.iops, 64000.0);
    assert_eq!(sum.jobname, "randread-4k-qd32");
    assert!(sum.clat_p99_ns.is_some());
    let args = fio::fio_args(
        std::path::Path::new("/tmp/x.img"),
        &fio::matrix()[6],
        1 << 24,
        64,
    );
    for want in [
        "--rw=randread",
        "--bs=4096",
        "--iodepth=32",
        "--ioengine=libaio",
        "--direct=0",
        "--size=16777216",
        "--number_ios=64",
        "--filename=/tmp/x.img",
        "--output-format=json",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
    }
    assert!(
        fio::fio_args(std::path::Path::new("x"), &fio::matrix()[0], 1, 1)
            .contains(&"--ioengine=psync".to_owned())
    );
}

/// A whole report from the fixtures: block on xen and ide-dma (same guest results,
/// different device), network on xen and e1000.
fn canned_report() -> Value {
    let (results, _) = fio::parse_blk_results(&fixture("blk-console.txt"));
    let phases = costs::phases(&run_report());
    let block = |kind: DeviceKind| {
        let cells: Vec<Value> = fio::matrix()
            .iter()
            .map(|p| {
                let r = results.iter().find(|r| r.phase == p.phase);
                let c = costs::phase_delta(&phases, u64::from(p.phase)).map(|d| {
                    let r = r.expect("result");
                    Costs::from_delta(&d, "request", r.ios as f64, r.io_bytes as f64, kind)
                });
                let f = fio::parse_fio_output(&fixture("fio-host.json"), false);
                let mut cell = report::block_cell(p, r, c, Some(f));
                if kind == DeviceKind::Ide {
                    cell["device_max_in_flight"] = json!(1);
                }
                cell
            })
            .collect();
        // The idle window: phase 1's delta taken as 2 seconds of idling.
        let d = costs::phase_delta(&phases, 1).expect("delta");
        let idle =
            json!({"seconds": 2.0, "costs": Costs::from_delta(&d, "second", 2.0, 0.0, kind)});
        json!({"status": "ok", "error": null, "idle": idle, "cells": cells})
    };
    let fwd = net::parse_iperf3(&fixture("iperf3-forward.json")).expect("iperf3");
    let ping = net::parse_ping(&fixture("ping.txt")).expect("ping");
    let netcells = |scale: f64| {
        let d = costs::phase_delta(&phases, 1).expect("delta");
        let tp = report::net_cell(
            "tcp host->guest",
            vec![("throughput_mbit_s", Ok(fwd.bits_per_second / 1e6 * scale))],
            Ok(Costs::from_delta(
                &d,
                "frame",
                100.0,
                fwd.bytes,
                DeviceKind::E1000,
            )),
            json!(fwd),
        );
        let p = report::net_cell(
            "ping",
            vec![
                ("rtt_mean_us", Ok(ping.avg_us * scale)),
                ("rtt_min_us", Ok(ping.min_us)),
            ],
            Err("this shim offers no host-side counter snapshots (Vmm::counters)".into()),
            json!(ping),
        );
        let failed =
            report::missing_cell("net", "tcp guest->host", "failed", "iperf3 did not finish");
        json!({"status": "failed", "error": "one test failed", "cells": [tp, p, failed]})
    };
    let paths = json!({
        "xen": {"block": block(DeviceKind::Xen), "net": netcells(2.0)},
        "ide-dma": {"block": block(DeviceKind::Ide)},
        "e1000": {"net": netcells(1.0)},
    });
    json!({
        "place": "this host's /dev/kvm",
        "machine": report::machine_info(),
        "date": report::iso8601(1_796_515_200),
        "scale": {"idle_seconds": 2.0},
        "guest": {"path": "guest.elf", "size": 1234},
        "quick": true,
        "complete": false,
        "incomplete_reason": "interrupted (SIGINT)",
        "ratios": report::ratios(&paths),
        "paths": paths,
    })
}

#[test]
fn report_json_has_ratios_and_no_nan() {
    let r = canned_report();
    let text = serde_json::to_string(&r).expect("json");
    assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
    assert_eq!(r["date"], "2026-12-06T00:00:00Z");
    let b = &r["ratios"]["block"]["xen/ide-dma"]["read 4k qd1"]["ratios"];
    assert_eq!(b["throughput_mib_s"], 1.0);
    // ide-dma's device exits differ from xen's, but user exits are the same counters.
    assert_eq!(b["user_exits_per_op"], 1.0);
    assert!(b["kvm_exits_per_op"].is_null());
    assert!(
        r["ratios"]["block"]["xen/ide-dma"]["read 4k qd1"]["null_reasons"]["kvm_exits_per_op"]
            .as_str()
            .expect("reason")
            .contains("KVM")
    );
    let skipped = &r["ratios"]["block"]["xen/ide-dma"]["randread 4k qd32"];
    assert!(
        skipped["ratios"]
            .as_object()
            .expect("obj")
            .values()
            .all(Value::is_null)
    );
    let n = &r["ratios"]["net"]["xen/e1000"];
    assert_eq!(n["tcp host->guest"]["ratios"]["throughput_mbit_s"], 2.0);
    assert_eq!(n["ping"]["ratios"]["rtt_mean_us"], 2.0);
    assert!(
        r["ratios"]["block"].get("xen/ide-pio").is_none(),
        "not measured, no ratio"
    );
    let m = &r["machine"];
    assert!(m["kvm_pvm"].is_boolean());
}

#[test]
fn markdown_has_every_cell_and_the_notes() {
    let r = canned_report();
    let md = report::markdown(&r);
    assert!(md.contains("kvm-pvm"), "{md}");
    assert!(md.contains("Incomplete run"));
    let tp = md
        .split("## Block throughput (MiB/s)")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("throughput table");
    assert!(tp.contains("| test | xen | ide-dma | host fio |"), "{tp}");
    for p in fio::matrix() {
        let name = format!("{} {} qd{}", p.rw, fio::size_label(p.bs), p.iodepth);
        assert!(tp.contains(&format!("| {name} |")), "{name} in {tp}");
    }
    assert!(
        tp.contains("| randread 4k qd32 | skipped | skipped |"),
        "{tp}"
    );
    // Phase 1: 256 KiB in 2 ms = 125 MiB/s on both paths.
    assert!(tp.contains("| read 4k qd1 | 125 | 125 |"), "{tp}");
    for title in [
        "Block user-space exits per request",
        "Block KVM exits per request",
        "Network throughput (Mbit/s)",
        "Network latency, mean (us)",
        "Ratios xen/ide-dma",
        "Ratios xen/e1000",
        "Not measured",
    ] {
        assert!(md.contains(title), "{title}");
    }
    let net = md
        .split("## Network latency, mean (us)")
        .nth(1)
        .expect("latency");
    assert!(net.contains("| ping | 198 | 99.0 |"), "{net}");
    assert!(md.contains("tcp guest->host: failed (iperf3 did not finish)"));
    assert!(!md.contains("NaN"));
    // IDE's queue-depth-32 rows say the device had one command in flight; xen's and
    // the queue-depth-1 rows do not.
    let ex = md
        .split("## Block user-space exits per request")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("exits table");
    let row = |name: &str| {
        ex.lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row {name} in {ex}"))
            .to_owned()
    };
    let qd32 = row("read 4k qd32");
    let cols: Vec<&str> = qd32.split('|').map(str::trim).collect();
    assert!(!cols[2].ends_with('¹') && cols[3].ends_with('¹'), "{qd32}");
    assert!(!row("read 4k qd1").contains('¹'));
    assert!(
        ex.contains("¹ The device took one command at a time"),
        "{ex}"
    );
    // The idle table: a column per path and kind, per-second figures.
    let idle = md
        .split("## Idle guest: cost per second")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("idle table");
    assert!(
        idle.contains("| per second | xen (block guest) | ide-dma (block guest) |"),
        "{idle}"
    );
    assert!(idle.contains("| user exits/s |"), "{idle}");
    assert!(md.contains("Place: this host's /dev/kvm."));
}

#[test]
fn reports_of_two_places_make_one_markdown_and_one_svg() {
    let host = canned_report();
    let mut nested = canned_report();
    nested["place"] = json!("inside QEMU");
    nested["host_fio"] = json!(false);
    let md = report::markdown_places(&[host.clone(), nested.clone()]);
    assert!(md.contains("Measured in 2 places"), "{md}");
    let host_at = md
        .find("\n## this host's /dev/kvm\n")
        .expect("host section");
    let nested_at = md.find("\n## inside QEMU\n").expect("nested section");
    assert!(host_at < nested_at);
    // Tables one level down, in each section.
    assert_eq!(md.matches("\n### Block throughput (MiB/s)").count(), 2);
    assert!(md[nested_at..].contains("host fio baseline was not run here"));
    assert!(!md[..nested_at].contains("host fio baseline was not run here"));
    let svg = svg::svg_places(&[host, nested]);
    balanced(&svg).expect("well-formed");
    assert!(svg.contains("inside QEMU: Block throughput (MiB/s)"));
    assert!(
        svg.contains("this host&apos;s /dev/kvm: Block throughput")
            || svg.contains("this host's /dev/kvm: Block throughput")
    );
    // The exits panels are logarithmic: ticks at powers of ten.
    assert!(svg.contains("(log scale)"));
    assert!(
        svg.contains(">1</text>") && svg.contains(">10</text>"),
        "decade ticks"
    );
    assert!(report::check_shape(&canned_report()).is_ok());
    assert!(report::check_shape(&json!({"paths": {}})).is_err());
    assert!(report::check_shape(&json!([1])).is_err());
}

#[test]
fn the_idle_line_parses_and_bad_ones_are_errors() {
    let c = "boot...\n[guest] blk-idle: {\"phase\":0,\"ns\":2000000000}\nblk-result: {}\n";
    assert_eq!(fio::parse_idle(c), Ok(2.0));
    assert!(
        fio::parse_idle("nothing")
            .unwrap_err()
            .contains("no blk-idle")
    );
    for bad in [
        "blk-idle: {\"phase\":1,\"ns\":5}",
        "blk-idle: {\"ns\":-1,\"phase\":0}",
        "blk-idle: not json",
    ] {
        assert!(fio::parse_idle(bad).is_err(), "{bad}");
    }
}

/// A tiny XML check: every tag closes in order, attributes are quoted.
fn balanced(xml: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        let j = rest[i..].find('>').ok_or("unclosed <")? + i;
        let tag = &rest[i + 1..j];
        rest = &rest[j + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or(format!("</{name}> without opening"))?;
            if open != name.trim() {
                return Err(format!("<{open}> closed by </{name}>"));
            }
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().ok_or("empty tag")?;
            stack.push(name.to_owned());
        }
        if !tag.matches('"').count().is_multiple_of(2) {
            return Err(format!("unbalanced quotes in <{tag}>"));
        }
        if rest.split('<').next().is_some_and(|t| t.contains('>')) {
            return Err("stray >".into());
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("unclosed {stack:?}"))
    }
}

#[test]
fn svg_is_well_formed_and_names_every_path() {
    assert!(balanced("<a><b x=\"1\"/></a>").is_ok());
    assert!(balanced("<a><b></a>").is_err());
    let r = canned_report();
    let s = svg::svg(&r);
    balanced(&s).expect("well-formed");
    assert!(s.starts_with("<?xml"));
    for p in ["xen", "ide-dma", "e1000", "host fio"] {
        assert!(s.contains(&format!(">{p}</text>")), "legend for {p}");
    }
    for t in [
        "Block throughput (MiB/s)",
        "Block user-space exits per request",
        "Network throughput (Mbit/s)",
        "tcp host-&gt;guest",
    ] {
        assert!(s.contains(t), "{t}");
    }
    assert!(s.matches("<rect").count() > 40);
    let empty = svg::svg(&json!({"paths": {}}));
    balanced(&empty).expect("well-formed");
    assert!(empty.contains("No measurements"));
}

#[test]
fn files_are_written_whole() {
    let dir = std::env::temp_dir().join(format!("bench-write-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    report::write_all(&dir, &[("a.txt", "one".into()), ("b.txt", "two".into())]).expect("write");
    assert_eq!(
        std::fs::read_to_string(dir.join("a.txt")).expect("a"),
        "one"
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt", "b.txt"], "no temporary file left");
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench_cli(args: &[&str], path_env: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_host-shim"));
    cmd.arg("bench").args(args);
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    let out = cmd.output().expect("run host-shim");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_cli_input_gives_one_error_line_and_writes_nothing() {
    let tmp = std::env::temp_dir().join(format!("bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let not_elf = tmp.join("not.elf");
    std::fs::write(&not_elf, "not an ELF").expect("write");
    let out = tmp.join("out");
    let out_s = out.to_string_lossy().into_owned();
    let k = not_elf.to_string_lossy().into_owned();
    let sys_path = std::env::var("PATH").unwrap_or_default();
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (
            vec!["--kernel", &k, "--paths", "xen,floppy", "--out", &out_s],
            None,
            "floppy",
        ),
        (
            vec!["--kernel", &k, "--out", &out_s],
            Some(tmp.to_str().expect("utf8")),
            "Debian package",
        ),
        (
            vec!["--kernel", &k, "--out", &out_s, "--paths", "ide-pio"],
            Some(&sys_path),
            "not a PVH ELF",
        ),
        (
            vec![
                "--kernel",
                "/nonexistent/guest",
                "--out",
                &out_s,
                "--paths",
                "ide-pio",
            ],
            Some(&sys_path),
            "/nonexistent/guest",
        ),
        (vec!["--out", &out_s], None, "--kernel"),
        (vec!["--kernel", &k, "--mem", "0"], None, "--mem"),
    ];
    for (args, path, want) in cases {
        let (code, stdout, stderr) = bench_cli(&args, path);
        assert_eq!(code, 125, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("host-shim: error: "), "{stderr}");
        assert!(
            stderr.contains(want),
            "{args:?}: {stderr} should mention {want}"
        );
        assert!(stdout.is_empty());
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    // An --out that cannot be written.
    let (code, _, stderr) = bench_cli(&["--kernel", &k, "--out", "/proc/no-such-dir/x"], None);
    assert_eq!(code, 125);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // --place must be one short line.
    let (code, _, stderr) = bench_cli(&["--kernel", &k, "--place", ""], None);
    assert_eq!(code, 125, "{stderr}");
    assert!(stderr.contains("--place"), "{stderr}");
    // Without the host fio baseline, fio is not needed: the next check speaks.
    let (code, _, stderr) = bench_cli(
        &[
            "--kernel",
            &k,
            "--out",
            &out_s,
            "--paths",
            "ide-pio",
            "--no-host-fio",
        ],
        Some(tmp.to_str().expect("utf8")),
    );
    assert_eq!(code, 125);
    assert!(stderr.contains("not a PVH ELF"), "{stderr}");
    assert!(!out.exists());
    let (code, stdout, _) = bench_cli(&["--help"], None);
    assert_eq!(code, 0);
    for w in [
        "--kernel", "--out", "--quick", "--paths", "--json", "--mem", "130",
    ] {
        assert!(stdout.contains(w), "help lacks {w}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn bench_report_combines_reports_and_refuses_bad_ones() {
    let tmp = std::env::temp_dir().join(format!("bench-combine-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("tmp");
    let good = tmp.join("host.json");
    std::fs::write(&good, canned_report().to_string()).expect("write");
    let mut nested = canned_report();
    nested["place"] = json!("inside QEMU");
    let good2 = tmp.join("qemu.json");
    std::fs::write(&good2, nested.to_string()).expect("write");
    let not_json = tmp.join("bad.json");
    std::fs::write(&not_json, "{ nope").expect("write");
    let not_report = tmp.join("other.json");
    std::fs::write(&not_report, "{\"a\": 1}").expect("write");
    let out = tmp.join("out");
    let run = |files: &[&std::path::Path]| {
        let o = Command::new(env!("CARGO_BIN_EXE_host-shim"))
            .arg("bench-report")
            .arg("--out")
            .arg(&out)
            .args(files)
            .output()
            .expect("run");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    for (files, want) in [
        (vec![good.as_path(), not_json.as_path()], "is not JSON"),
        (vec![not_report.as_path()], "not a host-shim bench report"),
        (vec![tmp.join("missing.json").as_path()], "cannot read"),
    ] {
        let (code, stderr) = run(&files);
        assert_eq!(code, 125, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(want), "{stderr} should say {want}");
        assert!(!out.exists(), "nothing written");
    }
    let (code, stderr) = run(&[&good, &good2]);
    assert_eq!(code, 0, "{stderr}");
    let md = std::fs::read_to_string(out.join("bench.md")).expect("md");
    assert!(md.contains("## inside QEMU"), "{md}");
    balanced(&std::fs::read_to_string(out.join("bench.svg")).expect("svg")).expect("svg");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn the_summary_names_each_path_and_marks_ides_single_command() {
    let s = report::summary(&canned_report());
    assert!(s.contains("| test | xen | ide-dma | e1000 |"), "{s}");
    let row = s
        .lines()
        .find(|l| l.starts_with("| randread 4k qd32, MiB/s |"))
        .expect("qd32 row");
    let cols: Vec<&str> = row.split('|').map(str::trim).collect();
    // A skipped cell says so, and is not marked.
    assert_eq!(cols[2], "skipped (skipped)", "{row}");
    let row = s
        .lines()
        .find(|l| l.starts_with("| write 64k qd32, MiB/s |"))
        .expect("64k row");
    assert!(row.ends_with("¹ | - |"), "{row}");
    assert!(s.contains("| idle, user exits/s |"));
    assert!(s.contains("¹ one command in flight"));
    assert!(s.contains("| tcp host->guest, Mbit/s |"));
}

#[test]
fn the_guests_iperf_results_are_read_from_its_console() {
    let console = "net: serving\n[ 1.0] iperf-result: {\"test\":0,\"reverse\":false,\"bytes_received\":5}\n\
                   iperf-result: not json\niperf-result: [1]\niperf-result: {\"test\":1}\n";
    let r = net::iperf_results(console);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["bytes_received"], 5);
    assert_eq!(r[1]["test"], 1);
}

/// Reports of odd shapes that pass the shape check (a hand-edited or foreign file) are
/// rendered without a panic: whatever is not a number reads as missing.
#[test]
fn odd_reports_render_without_panicking() {
    let odd = json!({
        "machine": 1, "date": 2, "complete": "yes", "place": ["x"],
        "scale": {"idle_seconds": "two"},
        "paths": {
            "xen": {"block": {"cells": [1, "a", {"name": 5}, {"name": "read 4k qd1", "costs": 7,
                     "metrics": {"throughput_mib_s": "fast"}, "guest": {"iodepth": -1},
                     "device_max_in_flight": "one", "status": "ok"}],
                     "idle": {"costs": {"per_op": {"user_exits": "many"}, "ops": 0}},
                     "ops_per_phase": -3}},
            "floppy": {"net": {"cells": [], "idle": null}},
            "e1000": 5
        },
        "ratios": {"block": {"xen/ide-dma": {"read 4k qd1": 3}}}
    });
    assert!(report::check_shape(&odd).is_ok());
    let md = report::markdown_places(&[odd.clone(), odd.clone()]);
    assert!(md.contains("# host-shim bench"));
    let s = svg::svg_places(std::slice::from_ref(&odd));
    balanced(&s).expect("well-formed");
    let _ = report::summary(&odd);
}
