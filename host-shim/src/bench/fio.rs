//! Block results in fio's JSON shape, and the host `fio` baseline.
//!
//! The guest prints one `blk-result: {...}` line per benchmark phase (docs/bench-protocol.md,
//! item 3; the field names and percentile keys are fio's). [`parse_blk_results`] reads
//! them from the console text, [`fio_json`] turns them into the document `fio
//! --output-format=json` writes (`fio version`, `jobs[]` with `jobname`, `read`/`write`
//! with `io_bytes`, `bw_bytes`, `iops`, `runtime` in ms and `clat_ns`), so tools that read
//! fio's output read ours. [`host_fio`] runs the real fio on the host against the same
//! image file with the same rw/bs/iodepth, as the baseline the guest paths are compared to.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use pv_drivers::workload::{PERCENTILES_MILLI, PercentileKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The guest's console prefix of a block result.
pub const BLK_RESULT_PREFIX: &str = "blk-result: ";

/// fio's completion-latency percentile keys, in fio's order (the guest's own list,
/// `pv_drivers::workload::PERCENTILES_MILLI`, named as fio names them).
pub fn percentile_keys() -> Vec<String> {
    PERCENTILES_MILLI
        .iter()
        .map(|&m| PercentileKey(m).to_string())
        .collect()
}

/// Completion latency of one phase, in guest TSC nanoseconds (fio's `clat_ns`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Clat {
    /// Fastest request.
    #[serde(default)]
    pub min: f64,
    /// Slowest request.
    #[serde(default)]
    pub max: f64,
    /// Mean.
    #[serde(default)]
    pub mean: f64,
    /// By fio's percentile keys ("50.000000").
    #[serde(default)]
    pub percentile: BTreeMap<String, f64>,
}

/// One `blk-result:` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlkResult {
    /// Phase number (1..=16 in matrix order).
    pub phase: u32,
    /// "read", "write", "randread" or "randwrite".
    pub rw: String,
    /// Block size in bytes.
    pub bs: u64,
    /// Queue depth.
    pub iodepth: u32,
    /// Requests completed.
    #[serde(default)]
    pub ios: u64,
    /// Bytes transferred.
    #[serde(default)]
    pub io_bytes: u64,
    /// Start to end of the phase, guest TSC nanoseconds.
    #[serde(default)]
    pub runtime_ns: u64,
    /// Requests that failed.
    #[serde(default)]
    pub errors: u64,
    /// Completion latency.
    #[serde(default)]
    pub clat_ns: Clat,
    /// Why the guest did not run the phase, when it says so (`"skipped": "reason"` or
    /// `true`); a phase with no completed request is treated as skipped too.
    #[serde(default, deserialize_with = "skip_reason")]
    pub skipped: Option<String>,
}

fn skip_reason<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null | Value::Bool(false) => None,
        Value::Bool(true) => Some("skipped by the guest".into()),
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

impl BlkResult {
    /// Why this phase has no measurement, if it has none.
    pub fn skip_reason(&self) -> Option<String> {
        if let Some(r) = &self.skipped {
            return Some(r.clone());
        }
        (self.ios == 0).then(|| "no request completed".to_owned())
    }

    /// Whether the phase writes.
    pub fn is_write(&self) -> bool {
        self.rw.contains("write")
    }

    /// A short name: "read 4k qd1".
    pub fn label(&self) -> String {
        format!("{} {} qd{}", self.rw, size_label(self.bs), self.iodepth)
    }
}

/// "4k", "64k", "512".
pub fn size_label(bytes: u64) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{}k", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// One phase of the guest's matrix (docs/bench-protocol.md item 3): its number and parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixPhase {
    /// Phase number from 1.
    pub phase: u32,
    /// fio's rw name.
    pub rw: &'static str,
    /// Block size.
    pub bs: u64,
    /// Queue depth.
    pub iodepth: u32,
}

/// The guest's benchmark matrix in phase order: for bs in [4K, 64K], for qd in [1, 32],
/// for rw in [read, write, randread, randwrite].
pub fn matrix() -> Vec<MatrixPhase> {
    let mut out = Vec::new();
    for bs in [4096, 65536] {
        for iodepth in [1, 32] {
            for rw in ["read", "write", "randread", "randwrite"] {
                out.push(MatrixPhase {
                    phase: out.len() as u32 + 1,
                    rw,
                    bs,
                    iodepth,
                });
            }
        }
    }
    out
}

/// A console line that should have been a result but is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The line.
    pub line: String,
    /// What is wrong.
    pub error: String,
}

/// The guest's console prefix of its idle phase (`blk.bench-idle-ms=`).
pub const BLK_IDLE_PREFIX: &str = "blk-idle: ";

/// The length in seconds of the guest's idle phase, from its `blk-idle:` line
/// (`{"phase":0,"ns":T}`).
pub fn parse_idle(console: &str) -> Result<f64, String> {
    let line = console
        .lines()
        .find_map(|l| {
            l.find(BLK_IDLE_PREFIX)
                .map(|at| &l[at + BLK_IDLE_PREFIX.len()..])
        })
        .ok_or("the guest printed no blk-idle line")?;
    let v: Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("bad blk-idle line '{}': {e}", line.trim()))?;
    match (v["phase"].as_u64(), v["ns"].as_u64()) {
        (Some(0), Some(ns)) => Ok(ns as f64 / 1e9),
        _ => Err(format!("bad blk-idle line '{}'", line.trim())),
    }
}

/// Every `blk-result:` line of `console`, in order; lines that do not parse are
/// returned apart. The prefix may follow other text on the line (a log prefix).
pub fn parse_blk_results(console: &str) -> (Vec<BlkResult>, Vec<BadLine>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for line in console.lines() {
        let Some(at) = line.find(BLK_RESULT_PREFIX) else {
            continue;
        };
        let body = line[at + BLK_RESULT_PREFIX.len()..].trim();
        match serde_json::from_str::<BlkResult>(body) {
            Ok(r) => good.push(r),
            Err(e) => bad.push(BadLine {
                line: line.to_owned(),
                error: e.to_string(),
            }),
        }
    }
    (good, bad)
}

/// fio's `read` or `write` object for one phase (zeros for the direction not used).
fn direction(r: Option<&BlkResult>) -> Value {
    let Some(r) = r else {
        return json!({
            "io_bytes": 0, "io_kbytes": 0, "bw_bytes": 0, "bw": 0, "iops": 0.0,
            "runtime": 0, "total_ios": 0, "short_ios": 0, "drop_ios": 0,
            "clat_ns": {"min": 0, "max": 0, "mean": 0.0, "stddev": 0.0, "N": 0},
        });
    };
    let secs = r.runtime_ns as f64 / 1e9;
    // fio reports 0 for rates it cannot compute; never NaN or infinity.
    let (bw_bytes, iops) = if r.runtime_ns > 0 {
        ((r.io_bytes as f64 / secs) as u64, r.ios as f64 / secs)
    } else {
        (0, 0.0)
    };
    let mut percentile = serde_json::Map::new();
    for key in percentile_keys() {
        if let Some(v) = r.clat_ns.percentile.get(&key) {
            percentile.insert(key, json!(*v as u64));
        }
    }
    json!({
        "io_bytes": r.io_bytes,
        "io_kbytes": r.io_bytes / 1024,
        "bw_bytes": bw_bytes,
        "bw": bw_bytes / 1024,
        "iops": iops,
        "runtime": r.runtime_ns / 1_000_000,
        "total_ios": r.ios,
        "short_ios": 0,
        "drop_ios": 0,
        "clat_ns": {
            "min": r.clat_ns.min as u64,
            "max": r.clat_ns.max as u64,
            "mean": r.clat_ns.mean,
            "stddev": 0.0,
            "N": r.ios,
            "percentile": percentile,
        },
    })
}

/// The fio JSON document for the guest's results on `path` (e.g. "xen").
pub fn fio_json(path: &str, results: &[BlkResult]) -> Value {
    let jobs: Vec<Value> = results
        .iter()
        .map(|r| {
            let (read, write) = if r.is_write() {
                (direction(None), direction(Some(r)))
            } else {
                (direction(Some(r)), direction(None))
            };
            let mut job = json!({
                "jobname": format!("{path}-{}-{}-qd{}", r.rw, size_label(r.bs), r.iodepth),
                "groupid": 0,
                "error": r.errors.min(i32::MAX as u64),
                "job options": {
                    "rw": r.rw,
                    "bs": r.bs.to_string(),
                    "iodepth": r.iodepth.to_string(),
                    "number_ios": r.ios.to_string(),
                },
                "read": read,
                "write": write,
                "job_runtime": r.runtime_ns / 1_000_000,
                "phase": r.phase,
            });
            if let Some(reason) = &r.skipped {
                job["skipped"] = json!(reason);
            }
            job
        })
        .collect();
    json!({
        "fio version": format!("host-shim-bench-{} (guest {path})", env!("CARGO_PKG_VERSION")),
        "timestamp": super::report::unix_now(),
        "jobs": jobs,
    })
}

/// The host fio command for one phase on `image` (`size` bytes, `ios` requests).
pub fn fio_args(image: &Path, p: &MatrixPhase, size: u64, ios: u64) -> Vec<String> {
    vec![
        "--output-format=json".into(),
        format!("--name={}-{}-qd{}", p.rw, size_label(p.bs), p.iodepth),
        format!("--filename={}", image.display()),
        format!("--rw={}", p.rw),
        format!("--bs={}", p.bs),
        format!("--iodepth={}", p.iodepth),
        format!(
            "--ioengine={}",
            if p.iodepth > 1 { "libaio" } else { "psync" }
        ),
        "--direct=0".into(),
        format!("--size={size}"),
        format!("--number_ios={ios}"),
    ]
}

/// What the bench keeps of one fio job: the used direction's rates and latency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FioSummary {
    /// fio's jobname.
    pub jobname: String,
    /// Requests per second.
    pub iops: f64,
    /// Bytes per second.
    pub bw_bytes: f64,
    /// Mean completion latency, ns.
    pub clat_mean_ns: f64,
    /// Median completion latency, ns, when fio gave percentiles.
    pub clat_p50_ns: Option<f64>,
    /// 99th percentile, ns.
    pub clat_p99_ns: Option<f64>,
}

/// Reads fio's JSON output (anything before the first `{`, such as warnings, is
/// skipped) and summarises its first job's `read` or `write` side.
pub fn parse_fio_output(text: &str, write: bool) -> Result<FioSummary, String> {
    let start = text.find('{').ok_or("fio printed no JSON")?;
    let doc: Value =
        serde_json::from_str(&text[start..]).map_err(|e| format!("fio's JSON: {e}"))?;
    let job = doc["jobs"].get(0).ok_or("fio's JSON has no job")?;
    let side = &job[if write { "write" } else { "read" }];
    let num = |v: &Value| v.as_f64().ok_or_else(|| format!("fio's JSON lacks {v}"));
    let pct = |k: &str| side["clat_ns"]["percentile"][k].as_f64();
    Ok(FioSummary {
        jobname: job["jobname"].as_str().unwrap_or("").to_owned(),
        iops: num(&side["iops"]).map_err(|_| "fio's JSON lacks iops")?,
        bw_bytes: num(&side["bw_bytes"]).map_err(|_| "fio's JSON lacks bw_bytes")?,
        clat_mean_ns: num(&side["clat_ns"]["mean"]).map_err(|_| "fio's JSON lacks clat_ns")?,
        clat_p50_ns: pct("50.000000"),
        clat_p99_ns: pct("99.000000"),
    })
}

/// Runs the host fio for one phase; returns its raw JSON document and the summary.
pub fn host_fio(
    image: &Path,
    p: &MatrixPhase,
    size: u64,
    ios: u64,
) -> Result<(Value, FioSummary), String> {
    let out = Command::new("fio")
        .args(fio_args(image, p, size, ios))
        .output()
        .map_err(|e| format!("cannot run fio: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "fio failed ({}): {}",
            out.status,
            err.lines().next().unwrap_or("")
        ));
    }
    let summary = parse_fio_output(&text, p.rw.contains("write"))?;
    let start = text.find('{').unwrap_or(0);
    let doc = serde_json::from_str(&text[start..]).map_err(|e| format!("fio's JSON: {e}"))?;
    Ok((doc, summary))
}
