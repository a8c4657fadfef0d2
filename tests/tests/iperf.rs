//! The guest's iperf3 server (`guest_kernel::iperf` on smoltcp, port 5201) against the
//! real iperf3 client (Debian's 3.12), through a TAP, on the PV NIC and on the emulated
//! e1000 under host-shim: forward, `-R`, `-P 2`, and clients that misbehave (a short
//! cookie, garbage JSON, a client killed mid-test, a second client while a test runs),
//! after which a normal run still succeeds. The guest's `iperf-result:` byte counts
//! must equal those in iperf3's JSON.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use system_tests::{
    BOOT_LIMIT, HostTap, Run, TAP_GUEST_IP, connect, in_private_netns, kvm_available,
    run_with_limit, shim_command, stats_json, tap_available,
};

const HOST_CIDR: &str = "10.203.0.1/24";
const PORT: u16 = 5201;

/// A guest serving on a new TAP; `exit` on its control port ends it.
struct Guest {
    _tap: HostTap,
    shim: Option<JoinHandle<Run>>,
}

impl Guest {
    fn boot(tap: &str, model: Option<&str>) -> Self {
        let tap = HostTap::new(tap, HOST_CIDR);
        let net = match model {
            Some(m) => format!("tap={},model={m}", tap.0),
            None => format!("tap={}", tap.0),
        };
        let cmdline = format!("net.ip={TAP_GUEST_IP}/24 heap=16M");
        let cmd = shim_command(&cmdline, &["--net", &net]);
        let shim = std::thread::spawn(move || run_with_limit(cmd, BOOT_LIMIT * 2));
        // Up when its echo service answers.
        let mut echo = connect(&format!("{TAP_GUEST_IP}:7"));
        echo.write_all(b"up?").expect("echo write");
        let mut back = [0u8; 3];
        echo.read_exact(&mut back).expect("echo read");
        drop(echo);
        Self {
            _tap: tap,
            shim: Some(shim),
        }
    }

    /// Sends `exit` to the control port and returns the shim's run.
    fn exit(mut self) -> Run {
        let mut ctl = connect(&format!("{TAP_GUEST_IP}:5"));
        ctl.write_all(b"exit\n").expect("control write");
        let mut answer = String::new();
        let _ = ctl.read_to_string(&mut answer);
        assert!(answer.contains("bye"), "control answered {answer:?}");
        let run = self.shim.take().expect("shim").join().expect("shim thread");
        assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
        run.assert_line("net: PASS");
        run
    }
}

/// Runs `iperf3 -c GUEST -J ARGS`; its exit status must be 0. Returns its JSON.
fn iperf3(args: &[&str]) -> serde_json::Value {
    let out = Command::new("iperf3")
        .args(["-c", TAP_GUEST_IP, "-J", "--connect-timeout", "20000"])
        .args(args)
        .output()
        .expect("run iperf3 (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "iperf3 {args:?}: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 JSON: {e}\n{text}"))
}

fn bytes(v: &serde_json::Value, sum: &str) -> u64 {
    v["end"][sum]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no end.{sum}.bytes in {v}"))
}

/// The guest's `iperf-result:` objects, in order.
fn results(run: &Run) -> Vec<serde_json::Value> {
    run.stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("iperf-result: "))
        .map(|j| serde_json::from_str(j).unwrap_or_else(|e| panic!("{e}: {j}")))
        .collect()
}

/// The shim recorded iperf3 test k as benchmark phase 100 + k, with a start and an end
/// snapshot (the guest's marks).
fn check_phases(run: &Run, tests: u64) {
    let v = stats_json(&run.stderr);
    let phases = v["phases"].as_array().expect("the run report lists phases");
    for k in 0..tests {
        assert!(
            phases
                .iter()
                .any(|p| p["phase"] == 100 + k && !p["start"].is_null() && !p["end"].is_null()),
            "phase {} missing: {phases:?}",
            100 + k
        );
    }
}

/// Forward, reverse and two streams; the guest's counts match iperf3's.
fn forward_reverse_parallel(tap: &str, model: Option<&str>) {
    let guest = Guest::boot(tap, model);
    let fwd = iperf3(&["-t", "1"]);
    let rev = iperf3(&["-t", "1", "-R"]);
    let par = iperf3(&["-t", "1", "-P", "2"]);
    let run = guest.exit();
    for v in [&fwd, &rev, &par] {
        assert!(v.get("error").is_none(), "{v}\n{}", run.stdout);
    }
    let r = results(&run);
    assert_eq!(r.len(), 3, "{}", run.stdout);
    for (k, res) in r.iter().enumerate() {
        assert_eq!(res["test"], k as u64, "{res}");
        assert!(res.get("aborted").is_none(), "{res}");
    }

    assert_eq!(r[0]["reverse"], false);
    assert_eq!(r[0]["streams"], 1);
    let got = bytes(&fwd, "sum_received");
    assert!(got > 0, "{fwd}");
    assert_eq!(r[0]["bytes_received"], got, "{}", r[0]);
    assert_eq!(r[0]["bytes_sent"], 0);
    assert!(bytes(&fwd, "sum_sent") >= got);

    assert_eq!(r[1]["reverse"], true);
    let sent = bytes(&rev, "sum_sent");
    assert!(sent > 0, "{rev}");
    assert_eq!(r[1]["bytes_sent"], sent, "{}", r[1]);
    assert_eq!(r[1]["bytes_received"], 0);
    let received = bytes(&rev, "sum_received");
    assert!(received > 0 && received <= sent, "{rev}");

    assert_eq!(r[2]["streams"], 2);
    let got = bytes(&par, "sum_received");
    assert!(got > 0, "{par}");
    assert_eq!(r[2]["bytes_received"], got, "{}", r[2]);
    assert_eq!(par["end"]["streams"].as_array().map(Vec::len), Some(2));
    check_phases(&run, 3);
}

#[test]
fn iperf3_on_the_pv_nic() {
    const TEST: &str = "iperf::iperf3_on_the_pv_nic";
    if !kvm_available(TEST) || !tap_available(TEST) {
        return;
    }
    in_private_netns(TEST, || forward_reverse_parallel("ipftap0", None));
}

#[test]
fn iperf3_on_the_e1000() {
    const TEST: &str = "iperf::iperf3_on_the_e1000";
    if !kvm_available(TEST) || !tap_available(TEST) {
        return;
    }
    in_private_netns(TEST, || {
        forward_reverse_parallel("ipftap1", Some("e1000"));
    });
}

/// Reads until the peer closes or resets; true if it did within the read timeout.
fn closed_by_peer(s: &mut std::net::TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A control connection that got `PARAM_EXCHANGE` after its cookie.
fn control(cookie: &[u8; 37]) -> std::net::TcpStream {
    let mut s = connect(&format!("{TAP_GUEST_IP}:{PORT}"));
    s.write_all(cookie).expect("cookie");
    let mut state = [0u8; 1];
    s.read_exact(&mut state).expect("state");
    assert_eq!(state[0], 9, "PARAM_EXCHANGE");
    s
}

fn bad_clients() {
    let guest = Guest::boot("ipftap2", None);
    let cookie = *b"abcdefghijklmnopqrstuvwxyz234567abcd\0";

    // A short cookie, then the client goes away: nothing happens.
    let mut s = connect(&format!("{TAP_GUEST_IP}:{PORT}"));
    s.write_all(b"short").expect("write");
    s.shutdown(Shutdown::Write).ok();
    assert!(closed_by_peer(&mut s), "short cookie not closed");
    drop(s);

    // An absurd message length.
    let mut s = control(&cookie);
    s.write_all(&u32::MAX.to_be_bytes()).expect("write");
    assert!(closed_by_peer(&mut s), "huge length not refused");
    drop(s);

    // Garbage JSON parameters.
    let mut s = control(&cookie);
    let junk = b"{\"tcp\":true,\"time\":[[[[{\"x\":}";
    s.write_all(&(junk.len() as u32).to_be_bytes())
        .expect("write");
    s.write_all(junk).expect("write");
    assert!(closed_by_peer(&mut s), "garbage JSON not refused");
    drop(s);

    // Unsupported parameters: SERVER_ERROR, as iperf3 answers.
    let mut s = control(&cookie);
    let udp = b"{\"udp\":true,\"time\":1,\"parallel\":1,\"len\":1000}";
    s.write_all(&(udp.len() as u32).to_be_bytes())
        .expect("write");
    s.write_all(udp).expect("write");
    let mut answer = [0u8; 9];
    s.read_exact(&mut answer).expect("SERVER_ERROR");
    assert_eq!(answer[0], 0xfe, "{answer:?}");
    drop(s);

    // A client killed while its test runs; a second client meanwhile is denied.
    let mut victim = Command::new("iperf3")
        .args(["-c", TAP_GUEST_IP, "-t", "60", "-i", "0.2", "--forceflush"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run iperf3");
    let mut out = victim.stdout.take().expect("stdout");
    let start = Instant::now();
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    // An interval report: data is flowing.
    while !seen.contains("bits/sec") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no interval: {seen}"
        );
        match out.read(&mut buf) {
            Ok(0) | Err(_) => panic!("iperf3 ended early: {seen}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let mut second = connect(&format!("{TAP_GUEST_IP}:{PORT}"));
    second.write_all(&cookie).expect("cookie");
    let mut state = [0u8; 1];
    second.read_exact(&mut state).expect("denied");
    assert_eq!(state[0], 0xff, "ACCESS_DENIED");
    drop(second);
    victim.kill().expect("kill iperf3");
    let _ = victim.wait();

    // The server serves the next client normally.
    let fwd = iperf3(&["-t", "1"]);
    let run = guest.exit();
    let r = results(&run);
    assert_eq!(r.len(), 2, "{}", run.stdout);
    assert_eq!(r[0]["aborted"], true, "{}", r[0]);
    assert_eq!(r[1]["test"], 1);
    assert!(r[1].get("aborted").is_none(), "{}", r[1]);
    let got = bytes(&fwd, "sum_received");
    assert!(got > 0);
    assert_eq!(r[1]["bytes_received"], got, "{}", r[1]);
    run.assert_contains("2 tests 1 completed 4 failed 1 denied");
}

#[test]
fn misbehaving_iperf_clients_do_not_stop_the_server() {
    const TEST: &str = "iperf::misbehaving_iperf_clients";
    if !kvm_available(TEST) || !tap_available(TEST) {
        return;
    }
    in_private_netns(TEST, bad_clients);
}
