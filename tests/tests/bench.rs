//! `host-shim bench --quick` end to end on this host: every path's cells are present
//! and measured, the report's numbers are consistent with each other, and the counts
//! say what the comparison is about (Xen PV needs fewer exits per block request than
//! IDE with DMA once requests are batched). No assertion on time or rate.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use system_tests::{
    TempDir, guest_image, kvm_available, run_with_limit, shim_binary, tap_available,
};

/// The bench's own bound is per cell; this is the harness's safety net.
const LIMIT: Duration = Duration::from_secs(1200);

const BLOCK_CELLS: usize = 16;
const NET_CELLS: [&str; 6] = [
    "tcp host->guest",
    "tcp guest->host",
    "tcp host->guest 2 streams",
    "tcp 64-byte writes host->guest",
    "ping",
    "tcp round trip 1 byte",
];

/// Every figure is a number, or null with a reason.
#[track_caller]
fn check_figures(cell: &Value, what: &str) {
    let reasons = &cell["costs"]["null_reasons"];
    for (k, v) in cell["costs"]["per_op"].as_object().expect("per_op") {
        assert!(
            v.is_number() || (v.is_null() && reasons[k].is_string()),
            "{what}: per_op.{k} = {v} without a reason"
        );
        // The per-operation figure is the total divided by the operations.
        if let (Some(per), Some(total), Some(ops)) = (
            v.as_f64(),
            cell["costs"]["totals"][k].as_f64(),
            cell["costs"]["ops"].as_f64(),
        ) && k != "cpu_ns_per_gib"
        {
            assert!(
                (per * ops - total).abs() <= 1e-6 * total.abs().max(1.0),
                "{what}: {k}: {per} x {ops} != {total}"
            );
        }
    }
    for (k, v) in cell["metrics"].as_object().expect("metrics") {
        assert!(v.is_number() || v.is_null(), "{what}: metrics.{k} = {v}");
    }
}

fn cell<'a>(cells: &'a [Value], name: &str) -> &'a Value {
    cells
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cell '{name}'"))
}

#[test]
fn the_quick_benchmark_measures_every_path_and_its_counts_add_up() {
    const TEST: &str = "bench::the_quick_benchmark";
    if !kvm_available(TEST) || !tap_available(TEST) {
        return;
    }
    let out = TempDir::new("bench-test");
    let mut cmd = Command::new(shim_binary());
    cmd.args(["bench", "--kernel"])
        .arg(guest_image())
        .args(["--quick", "--json", "--paths", "xen,ide-dma,e1000", "--out"])
        .arg(&out.0);
    let run = run_with_limit(cmd, LIMIT);
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).expect("--json prints the report");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["quick"], true);

    for (path, kinds) in [
        ("xen", &["block", "net"][..]),
        ("ide-dma", &["block"]),
        ("e1000", &["net"]),
    ] {
        for kind in kinds {
            let part = &report["paths"][path][*kind];
            assert_eq!(part["status"], "ok", "{path} {kind}: {part}");
            let cells = part["cells"].as_array().expect("cells");
            if *kind == "block" {
                assert_eq!(cells.len(), BLOCK_CELLS, "{path}");
            } else {
                for name in NET_CELLS {
                    cell(cells, name);
                }
            }
            for c in cells {
                assert_eq!(c["status"], "ok", "{path} {kind}: {c}");
                check_figures(c, &format!("{path} {kind} {}", c["name"]));
            }
        }
    }

    // Batched PV requests cost fewer exits to the shim than IDE's 12 register exits
    // per DMA command.
    let per_op = |path: &str, name: &str| {
        cell(
            report["paths"][path]["block"]["cells"]
                .as_array()
                .expect("cells"),
            name,
        )["costs"]["per_op"]["user_exits"]
            .as_f64()
            .expect("user exits per request")
    };
    let (xen, ide) = (
        per_op("xen", "read 4k qd32"),
        per_op("ide-dma", "read 4k qd32"),
    );
    assert!(
        xen < ide,
        "xen {xen} >= ide-dma {ide} user exits per 4 KiB read at qd 32"
    );
    // iperf3 moved data both ways on both NICs.
    for path in ["xen", "e1000"] {
        let cells = report["paths"][path]["net"]["cells"]
            .as_array()
            .expect("cells");
        for name in &NET_CELLS[..4] {
            let bytes = cell(cells, name)["raw"]["bytes"].as_f64().unwrap_or(0.0);
            assert!(bytes > 0.0, "{path} {name}: no bytes");
        }
    }

    // The files, with every path in the human-readable ones.
    let md = std::fs::read_to_string(out.0.join("bench.md")).expect("bench.md");
    let svg = std::fs::read_to_string(out.0.join("bench.svg")).expect("bench.svg");
    for path in ["xen", "ide-dma", "e1000"] {
        assert!(md.contains(path), "bench.md lacks {path}");
        assert!(svg.contains(path), "bench.svg lacks {path}");
    }
    for path in ["xen", "ide-dma"] {
        let fio: Value = serde_json::from_str(
            &std::fs::read_to_string(out.0.join(format!("fio-{path}.json"))).expect("fio json"),
        )
        .expect("fio json parses");
        assert_eq!(
            fio["jobs"].as_array().map(Vec::len),
            Some(BLOCK_CELLS),
            "{path}"
        );
    }
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(out.0.join("bench.json")).expect("bench.json"),
    )
    .expect("bench.json parses");
    assert_eq!(on_disk, report, "bench.json is what --json printed");
}
