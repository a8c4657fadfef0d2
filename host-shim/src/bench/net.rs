//! The host side of the network measurements: the real `iperf3` and `ping` clients and
//! their output, and TCP round trips on the guest's echo port, all timed on the host.
//!
//! `iperf3 -J` output: iperf3's own JSON (`start.test_start`, `end.sum_sent`,
//! `end.sum_received`, `end.cpu_utilization_percent`, or a top-level `error`). `ping`:
//! the iputils summary line `rtt min/avg/max/mdev = a/b/c/d ms` (BusyBox says
//! `round-trip min/avg/max = a/b/c ms`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// What the bench keeps of one `iperf3 -J` run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IperfResult {
    /// `-R`: the server (the guest) sent.
    pub reverse: bool,
    /// Parallel streams.
    pub streams: u64,
    /// Bytes per write (`-l`).
    pub blksize: u64,
    /// Length of the test, seconds.
    pub seconds: f64,
    /// Bytes the receiver got.
    pub bytes: f64,
    /// The receiver's rate, bits per second.
    pub bits_per_second: f64,
    /// The sender's rate, bits per second.
    pub sender_bits_per_second: f64,
    /// TCP retransmissions the host counted, when it was the sender.
    pub retransmits: Option<u64>,
    /// The host's CPU use by iperf3, percent.
    pub host_cpu_percent: Option<f64>,
}

/// Reads `iperf3 -J` output.
pub fn parse_iperf3(text: &str) -> Result<IperfResult, String> {
    let start = text.find('{').ok_or("iperf3 printed no JSON")?;
    let doc: Value =
        serde_json::from_str(&text[start..]).map_err(|e| format!("iperf3's JSON: {e}"))?;
    if let Some(e) = doc["error"].as_str() {
        return Err(format!("iperf3: {e}"));
    }
    let ts = &doc["start"]["test_start"];
    let end = &doc["end"];
    let recv = &end["sum_received"];
    let sent = &end["sum_sent"];
    let f = |v: &Value, what: &str| {
        v.as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("iperf3's JSON lacks {what}"))
    };
    Ok(IperfResult {
        reverse: ts["reverse"].as_u64().unwrap_or(0) != 0,
        streams: ts["num_streams"].as_u64().unwrap_or(1),
        blksize: ts["blksize"].as_u64().unwrap_or(0),
        seconds: f(&recv["seconds"], "end.sum_received.seconds")?,
        bytes: f(&recv["bytes"], "end.sum_received.bytes")?,
        bits_per_second: f(&recv["bits_per_second"], "end.sum_received.bits_per_second")?,
        sender_bits_per_second: f(&sent["bits_per_second"], "end.sum_sent.bits_per_second")?,
        retransmits: sent["retransmits"].as_u64(),
        host_cpu_percent: end["cpu_utilization_percent"]["host_total"].as_f64(),
    })
}

/// The guest's `iperf-result: {json}` lines (docs/bench-protocol.md item 4), in order;
/// lines that do not parse are left out.
pub fn iperf_results(console: &str) -> Vec<Value> {
    console
        .lines()
        .filter_map(|l| {
            l.find("iperf-result: ")
                .map(|at| &l[at + "iperf-result: ".len()..])
        })
        .filter_map(|body| serde_json::from_str::<Value>(body.trim()).ok())
        .filter(|v| v.is_object())
        .collect()
}

/// `ping`'s summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u64,
    /// Replies received.
    pub received: u64,
    /// Round-trip times, microseconds.
    pub min_us: f64,
    /// Mean.
    pub avg_us: f64,
    /// Slowest.
    pub max_us: f64,
}

/// Reads ping's output (iputils or BusyBox).
pub fn parse_ping(text: &str) -> Result<PingResult, String> {
    let mut transmitted = None;
    let mut received = None;
    let mut rtt = None;
    for line in text.lines() {
        if line.contains("packets transmitted") {
            let nums: Vec<u64> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            transmitted = nums.first().copied();
            received = nums.get(1).copied();
        }
        if let Some((names, values)) = line.split_once(" = ")
            && (names.starts_with("rtt") || names.starts_with("round-trip"))
        {
            // "a/b/c/d ms" possibly followed by ", pipe 3" (iputils when replies overlap).
            let unit = values
                .split_whitespace()
                .nth(1)
                .unwrap_or("ms")
                .trim_end_matches(',');
            let unit_us = match unit {
                "us" => 1.0,
                "s" => 1e6,
                _ => 1000.0,
            };
            let v: Vec<f64> = values
                .split_whitespace()
                .next()
                .unwrap_or("")
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() >= 3 {
                rtt = Some((v[0] * unit_us, v[1] * unit_us, v[2] * unit_us));
            }
        }
    }
    let transmitted = transmitted.ok_or("ping printed no statistics")?;
    let received = received.unwrap_or(0);
    let (min_us, avg_us, max_us) = rtt.ok_or_else(|| format!("no reply to {transmitted} pings"))?;
    Ok(PingResult {
        transmitted,
        received,
        min_us,
        avg_us,
        max_us,
    })
}

/// Latency statistics of host-timed round trips, microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RttStats {
    /// Round trips completed.
    pub count: u64,
    /// Fastest.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest.
    pub max_us: f64,
}

impl RttStats {
    /// Statistics of `samples` (microseconds); `None` when empty.
    pub fn of(mut samples: Vec<f64>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let at = |q: f64| samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
        Some(Self {
            count: n as u64,
            min_us: samples[0],
            mean_us: samples.iter().sum::<f64>() / n as f64,
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: samples[n - 1],
        })
    }
}

/// `n` one-byte round trips on the TCP echo service at `addr`, each timed on the host.
pub fn tcp_round_trips(addr: SocketAddr, n: u64, stop: &AtomicBool) -> Result<RttStats, String> {
    let limit = Duration::from_secs(30);
    let mut s = TcpStream::connect_timeout(&addr, limit)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let b = [b'a' + (i % 26) as u8];
        let t = Instant::now();
        s.write_all(&b)
            .map_err(|e| format!("echo to {addr}: {e}"))?;
        let mut r = [0u8];
        s.read_exact(&mut r)
            .map_err(|e| format!("echo from {addr}: {e}"))?;
        samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
        if r != b {
            return Err(format!("echo from {addr} answered {r:?} to {b:?}"));
        }
    }
    RttStats::of(samples).ok_or_else(|| "interrupted before the first round trip".into())
}

/// Sends `exit` on the guest's control port; returns its answer.
pub fn control_exit(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("cannot connect to the control port {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"exit\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    Ok(answer.trim().to_owned())
}

/// Runs `cmd` to completion with its stdout captured, killing it when `limit` passes
/// or `stop` is set. Returns stdout, or stderr's first line on failure.
pub fn run_client(mut cmd: Command, limit: Duration, stop: &AtomicBool) -> Result<String, String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let pipe = |p: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = p {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = pipe(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = pipe(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(format!("{name}: {e}")),
        }
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break Err(if stop.load(Ordering::Relaxed) {
                format!("{name} interrupted")
            } else {
                format!("{name} did not finish within {} s", limit.as_secs())
            });
        }
        thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let status = status?;
    // iperf3 -J reports its errors in the JSON on stdout, with a failure status.
    if status.success() || out.trim_start().starts_with('{') {
        Ok(out)
    } else {
        Err(format!(
            "{name} failed ({status}): {}",
            err.lines()
                .chain(out.lines())
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
        ))
    }
}
