//! netfront (`pv_drivers`) against netback (the shim's), in one process: a
//! [`Loopback`] guest and domain 0 with real grant rules, event channels and the shim's
//! xenstored; netback on its own thread over an in-memory [`MemLink`], whose other end
//! the test holds as "the host". Hostile cases play a malicious frontend (raw ring
//! requests) against the real netback, and a malicious backend (raw ring responses)
//! against the real netfront.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use host_shim::backends::loopback::{FrontStore, LoopBack, LoopFront, LoopMapping, Loopback};
use host_shim::backends::netback::{Netback, NetbackConfig};
use host_shim::backends::spec::format_mac;
use host_shim::backends::{
    BackendEnv, DevicePaths, Kick, Running, create_device, read_state, spawn, write_state,
};
use host_shim::hostio::tap::{Link, MemLink, Tap, TapOptions};
use pv_drivers::abi::netif::{
    NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETRXF_CSUM_BLANK, NETRXF_MORE_DATA,
    NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, NetifExtraInfo, NetifRxResponse, NetifTxRequest,
    NetifTxResponse, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_TYPE_NONE, XEN_NETIF_GSO_TYPE_TCPV4,
};
use pv_drivers::device::{NetDevice, NetError};
use pv_drivers::follow::Followed;
use pv_drivers::frontend::FrontendEnv;
use pv_drivers::netfront::{Netfront, NetfrontConfig};
use pv_drivers::ring::{
    NetifRxBackRing, NetifRxFrontRing, NetifTxBackRing, NetifTxFrontRing, SRING_RSP_PROD,
};
use pv_drivers::shmem::{HeapSharedMemory, SharedMemory};
use pv_drivers::xenbus::{self, XenbusState};
use pv_drivers::xenstore::{TxId, XenStore};

const DOMID: u16 = 5;
const MAC: [u8; 6] = [0x02, 0x16, 0x3e, 0x00, 0x05, 0x00];
const WAIT: Duration = Duration::from_secs(10);

type Xs = XenStore<Arc<HeapSharedMemory>, host_shim::backends::loopback::LoopXs>;

fn paths() -> DevicePaths {
    DevicePaths::new("vif", DOMID, 0)
}

/// A guest, a netback thread on an in-memory link, and the host's end of the link.
struct Rig {
    lb: Arc<Loopback>,
    back: Option<Running>,
    host: MemLink,
}

impl Rig {
    fn new(split: bool) -> Self {
        let lb = Loopback::new(DOMID, "guest", 1024).expect("loopback");
        let (guest_end, host) = MemLink::pair(8192);
        let kick = Kick::new();
        let mut config = NetbackConfig::new(0, MAC);
        config.split_event_channels = split;
        let nb = Netback::new(lb.back(), guest_end, kick.clone(), config);
        let back = spawn(nb, kick).expect("spawn netback");
        let rig = Self {
            lb,
            back: Some(back),
            host,
        };
        rig.wait_backend(XenbusState::InitWait);
        rig
    }

    fn backend_state(&self) -> XenbusState {
        self.lb
            .with_store(|xs| read_state(xs, &paths().back("state")))
    }

    fn wait_backend(&self, want: XenbusState) {
        let deadline = Instant::now() + WAIT;
        while self.backend_state() != want {
            assert!(
                Instant::now() < deadline,
                "backend stuck in {:?}, wanted {want:?}",
                self.backend_state()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn connect(&self, config: NetfrontConfig) -> (Netfront<LoopFront>, Xs) {
        let mut xs = self.lb.xenstore().expect("xenstore");
        let nf = Netfront::connect(self.lb.front(), &mut xs, "0", config).expect("connect");
        (nf, xs)
    }

    /// Stops netback and returns its counters.
    fn stop(&mut self) -> serde_json::Value {
        self.back.take().expect("running").stop()
    }
}

/// Waits for an event (or a short while), then polls the device.
fn pump(lb: &Loopback, nf: &mut Netfront<LoopFront>) {
    lb.wait_front_event(Duration::from_millis(20));
    lb.take_front_events();
    nf.poll().expect("poll");
}

/// Receives `n` frames (fails after WAIT).
fn receive_n(lb: &Loopback, nf: &mut Netfront<LoopFront>, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < n {
        while nf.receive(&mut |f| got.push(f.to_vec())).expect("receive") {}
        if got.len() >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "received {} of {n} frames",
            got.len()
        );
        pump(lb, nf);
    }
    got
}

/// Transmits `frame`, polling while the device is busy.
fn send(lb: &Loopback, nf: &mut Netfront<LoopFront>, frame: &[u8]) {
    let deadline = Instant::now() + WAIT;
    loop {
        match nf.transmit(frame.len(), &mut |buf| buf.copy_from_slice(frame)) {
            Ok(()) => return,
            Err(NetError::Busy) => {
                assert!(Instant::now() < deadline, "transmit stayed busy");
                nf.kick();
                pump(lb, nf);
            }
            Err(e) => panic!("transmit: {e}"),
        }
    }
}

/// A frame of `len` bytes: broadcast destination, our source, a counter pattern.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&MAC);
    f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f
}

fn num(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no counter {path:?} in {v}"))
}

#[test]
fn negotiation_and_frames_both_ways() {
    let mut rig = Rig::new(true);
    let config = NetfrontConfig {
        max_frame: 9014,
        ..NetfrontConfig::default()
    };
    let (mut nf, mut xs) = rig.connect(config);
    rig.wait_backend(XenbusState::Connected);
    assert!(nf.is_connected() && nf.scatter_gather());
    assert_eq!(nf.info().mac, MAC);
    assert_eq!(nf.info().max_frame, 9014);
    let ports = nf.ports();
    assert_ne!(ports.tx, ports.rx, "split event channels offered and used");
    // What the frontend published.
    let node = |xs: &mut Xs, n: &str| xs.read(TxId::NONE, &format!("device/vif/0/{n}"));
    assert_eq!(node(&mut xs, "request-rx-copy").unwrap(), b"1");
    assert_eq!(node(&mut xs, "feature-rx-notify").unwrap(), b"1");
    assert_eq!(node(&mut xs, "feature-sg").unwrap(), b"1");
    assert_eq!(
        node(&mut xs, "event-channel-rx").unwrap(),
        ports.rx.to_string().as_bytes()
    );
    assert!(node(&mut xs, "event-channel").is_err());
    assert_eq!(node(&mut xs, "state").unwrap(), b"4");
    assert_eq!(
        rig.lb
            .with_store(|s| s.dom0().read(None, &paths().back("mac")))
            .unwrap(),
        format_mac(&MAC).as_bytes()
    );

    // Guest to host: small, MTU-size, and a three-slot frame.
    let out = [frame(60, 1), frame(1514, 2), frame(9014, 3)];
    for f in &out {
        send(&rig.lb, &mut nf, f);
    }
    nf.kick();
    for f in &out {
        let got = rig.host.recv_timeout(WAIT).expect("frame on the link");
        assert_eq!(&got, f);
    }
    // Host to guest, the same sizes.
    let inbound = [frame(60, 4), frame(1514, 5), frame(9014, 6)];
    for f in &inbound {
        rig.host.send_frame(f).unwrap();
    }
    let got = receive_n(&rig.lb, &mut nf, 3);
    assert_eq!(got, inbound);
    // Transmit buffers come back.
    let deadline = Instant::now() + WAIT;
    while nf.stats().tx_slots > 0 && !nf.can_transmit(9014) {
        assert!(Instant::now() < deadline);
        pump(&rig.lb, &mut nf);
    }
    let s = nf.stats();
    assert_eq!((s.tx_frames, s.tx_slots), (3, 5));
    assert_eq!((s.rx_frames, s.rx_slots), (3, 5));
    assert_eq!(s.rx_errors, Default::default());
    assert_eq!(s.tx_failed + s.tx_bad_response, 0);

    // The guest closes; the backend follows to Closed.
    nf.disconnect(&mut xs).expect("disconnect");
    rig.wait_backend(XenbusState::Closed);
    assert_eq!(nf.transmit(60, &mut |_| ()), Err(NetError::Disconnected));
    let stats = rig.stop();
    assert_eq!(num(&stats, &["tx_frames"]), 3);
    assert_eq!(num(&stats, &["rx_frames"]), 3);
    assert_eq!(num(&stats, &["rx_slots"]), 5);
    assert_eq!(num(&stats, &["tx_errors", "size"]), 0);
    assert!(num(&stats, &["grant_copies"]) >= 10);
}

#[test]
fn a_detach_while_serving_closes_a_following_frontend() {
    let mut rig = Rig::new(true);
    let store = FrontStore::new(&rig.lb).unwrap();
    let nf = Netfront::connect(
        rig.lb.front(),
        &mut store.lock(),
        "0",
        NetfrontConfig::default(),
    )
    .unwrap();
    let mut nf = Followed::new(nf, store.clone());
    rig.wait_backend(XenbusState::Connected);
    // Serving: frames in from the host.
    rig.host.send_frame(&frame(60, 1)).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    while got == 0 {
        assert!(Instant::now() < deadline, "no frame arrived");
        rig.lb.wait_front_event(Duration::from_millis(20));
        rig.lb.take_front_events();
        nf.poll().expect("poll while connected");
        while nf.receive(&mut |_| got += 1).unwrap() {}
    }
    // `xl network-detach`: the toolstack takes the backend offline and closing.
    rig.lb.with_store(|xs| {
        xs.dom0()
            .write(None, &paths().back("online"), b"0")
            .unwrap();
        write_state(xs, &paths().back("state"), XenbusState::Closing).unwrap();
    });
    // The next poll notices, without any device event, and closes this end.
    assert_eq!(nf.poll(), Err(NetError::Disconnected));
    assert_eq!(nf.backend_state(), Some(XenbusState::Closing));
    assert_eq!(nf.transmit(60, &mut |_| ()), Err(NetError::Disconnected));
    assert_eq!(
        store.lock().read(TxId::NONE, "device/vif/0/state").unwrap(),
        b"6"
    );
    assert_eq!(nf.device().watch_token(), None);
    // netback follows the frontend to Closed and lets the rings go.
    rig.wait_backend(XenbusState::Closed);
    let stats = rig.stop();
    assert_eq!(num(&stats, &["rx_frames"]), 1, "{stats}");
}

#[test]
fn many_frames_in_flight_and_rx_refill_beyond_the_ring() {
    let mut rig = Rig::new(false);
    let config = NetfrontConfig {
        tx_buffers: 32,
        rx_buffers: 32,
        ..NetfrontConfig::default()
    };
    let (mut nf, _xs) = rig.connect(config);
    assert_eq!(nf.ports().tx, nf.ports().rx, "one event channel");
    // 1000 frames from the host through 32 posted buffers: refilled ~31 times over,
    // four times the ring size.
    let inbound: Vec<Vec<u8>> = (0..1000)
        .map(|i| frame(60 + (i * 37) % 1455, i as u8))
        .collect();
    for f in &inbound {
        rig.host.send_frame(f).unwrap();
    }
    let got = receive_n(&rig.lb, &mut nf, inbound.len());
    assert!(got == inbound, "frames arrive whole and in order");
    assert!(nf.stats().rx_refills >= 1000);
    // 600 frames out through 32 transmit buffers.
    let outbound: Vec<Vec<u8>> = (0..600)
        .map(|i| frame(60 + (i * 53) % 1455, i as u8))
        .collect();
    let host = std::thread::scope(|s| {
        let h = s.spawn(|| {
            (0..outbound.len())
                .map(|_| rig.host.recv_timeout(WAIT).expect("frame on the link"))
                .collect::<Vec<_>>()
        });
        for f in &outbound {
            send(&rig.lb, &mut nf, f);
            if nf.stats().tx_frames % 8 == 0 {
                nf.kick();
            }
        }
        nf.kick();
        h.join().unwrap()
    });
    assert!(host == outbound);
    let stats = rig.stop();
    assert_eq!(num(&stats, &["tx_frames"]), 600);
    assert_eq!(num(&stats, &["rx_frames"]), 1000);
    assert!(num(&stats, &["tx_batch_max"]) > 1, "requests are batched");
    assert!(
        num(&stats, &["notify_rx"]) < 1000,
        "notifications are batched"
    );
}

/// A frontend that writes its own keys and raw ring requests.
struct RawFront {
    front: LoopFront,
    /// Kept so that the connection and the receive ring stay alive.
    _xs: Xs,
    tx: NetifTxFrontRing<host_shim::backends::loopback::Window>,
    _rx: NetifRxFrontRing<host_shim::backends::loopback::Window>,
    port: u32,
    data_pfn: u64,
    data: host_shim::backends::loopback::Window,
}

impl RawFront {
    fn connect(lb: &Arc<Loopback>, rx_copy: &str) -> Self {
        let mut front = lb.front();
        let mut xs = lb.xenstore().unwrap();
        let (tx_pfn, tx_mem) = front.alloc_pages(1).unwrap();
        let (rx_pfn, rx_mem) = front.alloc_pages(1).unwrap();
        let tx = NetifTxFrontRing::new(tx_mem).unwrap();
        let rx = NetifRxFrontRing::new(rx_mem).unwrap();
        let tx_ref = front.grant(0, tx_pfn, false).unwrap();
        let rx_ref = front.grant(0, rx_pfn, false).unwrap();
        let port = front.alloc_unbound(0).unwrap();
        let (data_pfn, data) = front.alloc_pages(2).unwrap();
        for (k, v) in [
            ("tx-ring-ref", tx_ref.to_string()),
            ("rx-ring-ref", rx_ref.to_string()),
            ("event-channel", port.to_string()),
            ("request-rx-copy", rx_copy.into()),
            ("feature-sg", "1".into()),
        ] {
            xs.write(TxId::NONE, &format!("device/vif/0/{k}"), v.as_bytes())
                .unwrap();
        }
        xenbus::switch_state(&mut xs, "device/vif/0", XenbusState::Connected).unwrap();
        Self {
            front,
            _xs: xs,
            tx,
            _rx: rx,
            port,
            data_pfn,
            data,
        }
    }

    /// Pushes `reqs`, notifies, and collects one response per non-extra request
    /// (extras get theirs too): waits until `n` responses came.
    fn exchange(
        &mut self,
        lb: &Loopback,
        reqs: &[NetifTxRequest],
        n: usize,
    ) -> Vec<NetifTxResponse> {
        for r in reqs {
            self.tx.push_request(r).unwrap();
        }
        if self.tx.push_requests_and_check_notify() {
            self.front.notify(self.port);
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        while got.len() < n {
            while let Some(r) = self.tx.take_response().unwrap() {
                got.push(r);
            }
            if got.len() >= n || self.tx.final_check_for_responses().unwrap() {
                continue;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} responses: {got:?}",
                got.len()
            );
            lb.wait_front_event(Duration::from_millis(20));
            lb.take_front_events();
        }
        got
    }
}

fn req(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> NetifTxRequest {
    NetifTxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    }
}

#[test]
fn malicious_frontend_gets_errors_and_the_interface_keeps_working() {
    let mut rig = Rig::new(false);
    let lb = rig.lb.clone();
    let mut raw = RawFront::connect(&lb, "1");
    rig.wait_backend(XenbusState::Connected);
    let payload = frame(200, 9);
    raw.data.write_bytes(0, &payload);
    let good = raw.front.grant(0, raw.data_pfn, true).unwrap();
    let foreign = raw.front.grant(7, raw.data_pfn, true).unwrap();
    let second = raw.front.grant(0, raw.data_pfn + 1, true).unwrap();
    let statuses = |rsps: &[NetifTxResponse]| -> Vec<(u16, i16)> {
        rsps.iter().map(|r| (r.id, r.status)).collect()
    };

    // A grant that does not exist, and one made out to another domain.
    let r = raw.exchange(&lb, &[req(4000, 0, 0, 1, 100)], 1);
    assert_eq!(statuses(&r), [(1, NETIF_RSP_ERROR)]);
    let r = raw.exchange(&lb, &[req(foreign, 0, 0, 2, 100)], 1);
    assert_eq!(statuses(&r), [(2, NETIF_RSP_ERROR)]);
    // Size 0, and shorter than an Ethernet header.
    let r = raw.exchange(&lb, &[req(good, 0, 0, 3, 0), req(good, 0, 0, 4, 13)], 2);
    assert_eq!(statuses(&r), [(3, NETIF_RSP_ERROR), (4, NETIF_RSP_ERROR)]);
    // More than 64 KiB in total: 65535 announced, 17 full pages of fragments follow.
    let mut big = vec![req(good, 0, NETTXF_MORE_DATA, 10, 0xffff)];
    for i in 0..17u16 {
        let flags = if i < 16 { NETTXF_MORE_DATA } else { 0 };
        big.push(req(second, 0, flags, 11 + i, 4096));
    }
    let r = raw.exchange(&lb, &big, big.len());
    assert!(r.iter().all(|r| r.status == NETIF_RSP_ERROR), "{r:?}");
    // Too many slots, but not so many as to be fatal: a 21-slot chain.
    let mut long = vec![req(good, 0, NETTXF_MORE_DATA, 40, 2100)];
    for i in 0..20u16 {
        let flags = if i < 19 { NETTXF_MORE_DATA } else { 0 };
        long.push(req(good, 0, flags, 41 + i, 100));
    }
    let r = raw.exchange(&lb, &long, long.len());
    assert_eq!(r.len(), 21);
    assert!(r.iter().all(|r| r.status == NETIF_RSP_ERROR), "{r:?}");
    // An un-negotiated GSO extra: the extra slot is answered NULL, the frame ERROR.
    let gso = NetifExtraInfo::gso(1448, XEN_NETIF_GSO_TYPE_TCPV4, 0, 0).to_tx_request();
    let r = raw.exchange(&lb, &[req(good, 0, NETTXF_EXTRA_INFO, 70, 200), gso], 2);
    assert!(r.iter().any(|r| r.status == NETIF_RSP_NULL), "{r:?}");
    assert!(
        r.iter().any(|r| (r.id, r.status) == (70, NETIF_RSP_ERROR)),
        "{r:?}"
    );
    // Fragments larger than the first slot announced.
    let r = raw.exchange(
        &lb,
        &[
            req(good, 0, NETTXF_MORE_DATA, 80, 100),
            req(second, 0, 0, 81, 200),
        ],
        2,
    );
    assert_eq!(statuses(&r), [(80, NETIF_RSP_ERROR), (81, NETIF_RSP_ERROR)]);
    assert!(rig.host.recv_timeout(Duration::from_millis(50)).is_none());

    // And the interface still works: one slot, then two.
    let r = raw.exchange(&lb, &[req(good, 0, 0, 90, 200)], 1);
    assert_eq!(statuses(&r), [(90, NETIF_RSP_OKAY)]);
    assert_eq!(rig.host.recv_timeout(WAIT).unwrap(), payload);
    raw.data.write_bytes(4096, &[0xab; 50]);
    let r = raw.exchange(
        &lb,
        &[
            req(good, 100, NETTXF_MORE_DATA, 91, 150),
            req(second, 0, 0, 92, 50),
        ],
        2,
    );
    assert_eq!(statuses(&r), [(91, NETIF_RSP_OKAY), (92, NETIF_RSP_OKAY)]);
    let mut want = payload[100..200].to_vec();
    want.extend_from_slice(&[0xab; 50]);
    assert_eq!(rig.host.recv_timeout(WAIT).unwrap(), want);
    assert_eq!(rig.backend_state(), XenbusState::Connected);

    // A request producer a ring ahead is a protocol violation: the device closes.
    raw.tx.memory().store_u32(
        0,
        raw.tx.req_prod_pvt() + 1000,
        std::sync::atomic::Ordering::SeqCst,
    );
    raw.front.notify(raw.port);
    rig.wait_backend(XenbusState::Closing);
    let err = rig
        .lb
        .with_store(|s| s.dom0().read(None, &paths().back("error")))
        .unwrap();
    assert!(String::from_utf8_lossy(&err).contains("protocol"));

    let stats = rig.stop();
    let e = |k: &str| num(&stats, &["tx_errors", k]);
    assert_eq!(e("bad_grant"), 2);
    assert_eq!(e("size"), 2);
    assert_eq!(e("offset"), 0);
    assert_eq!(e("first_slot_too_small"), 2);
    assert_eq!(e("too_many_slots"), 1);
    assert_eq!(e("bad_extra"), 1);
    assert_eq!(num(&stats, &["tx_frames"]), 2);
    assert_eq!(num(&stats, &["protocol_errors"]), 1);
    assert_eq!(num(&stats, &["tx_fatal_errors"]), 0);
}

const FATAL_ATTACKS: usize = 6;

/// The `i`th fatal transmit attack with data references `g` and `g2`: what it is, the
/// `tx_errors` kind it counts as, its requests.
fn fatal_attack(i: usize, g: u32, g2: u32) -> (&'static str, &'static str, Vec<NetifTxRequest>) {
    let extra = |type_, flags| NetifExtraInfo::mcast(type_, [0; 6], flags).to_tx_request();
    match i {
        0 => (
            "first slot crossing its page",
            "offset",
            vec![req(g, 4000, 0, 1, 200)],
        ),
        1 => (
            "fragment crossing its page",
            "offset",
            vec![
                req(g, 0, NETTXF_MORE_DATA, 1, 300),
                req(g2, 4090, 0, 2, 100),
            ],
        ),
        2 => (
            "extra of type none",
            "extra_type",
            vec![
                req(g, 0, NETTXF_EXTRA_INFO, 1, 200),
                extra(XEN_NETIF_EXTRA_TYPE_NONE, 0),
            ],
        ),
        3 => (
            "extra of a type beyond the last",
            "extra_type",
            vec![
                req(g, 0, NETTXF_EXTRA_INFO, 1, 200),
                extra(XEN_NETIF_EXTRA_TYPE_MAX, 0),
            ],
        ),
        // The request after the extra is read as one: its first byte (the low byte of
        // the reference 0x100) is type 0.
        4 => (
            "extra whose MORE runs into a request",
            "extra_type",
            vec![
                req(g, 0, NETTXF_EXTRA_INFO, 1, 200),
                extra(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_FLAG_MORE),
                req(0x100, 0, 0, 2, 100),
            ],
        ),
        _ => {
            let mut chain = vec![req(g, 0, NETTXF_MORE_DATA, 1, 2200)];
            chain.extend((0..21u16).map(|i| {
                let flags = if i < 20 { NETTXF_MORE_DATA } else { 0 };
                req(g, 0, flags, 2 + i, 100)
            }));
            ("chain of 22 slots", "too_many_slots", chain)
        }
    }
}

/// What Linux netback treats as fatal (`xenvif_fatal_tx_err`) ends the connection here
/// too, with the `error` node and `Closing`, and no response; each time the frontend
/// starts over (`Closed`, then `Initialising`) and a good frame passes on the new
/// connection. Regression: a slot crossing its page and a chain of 25 slots were
/// answered with errors and the interface kept serving the frontend that sent them,
/// and an extra of type 0 was answered like any unknown extra.
#[test]
fn fatal_transmit_errors_end_the_connection_as_in_linux_netback() {
    let mut rig = Rig::new(false);
    let lb = rig.lb.clone();
    let mut kinds = Vec::new();
    for i in 0..FATAL_ATTACKS {
        let mut raw = RawFront::connect(&lb, "1");
        rig.wait_backend(XenbusState::Connected);
        let payload = frame(200, i as u8);
        raw.data.write_bytes(0, &payload);
        let good = raw.front.grant(0, raw.data_pfn, true).unwrap();
        let second = raw.front.grant(0, raw.data_pfn + 1, true).unwrap();
        let (what, kind, attack) = fatal_attack(i, good, second);
        kinds.push(kind);
        // The connection works...
        let r = raw.exchange(&lb, &[req(good, 0, 0, 90, 200)], 1);
        assert_eq!(r[0].status, NETIF_RSP_OKAY, "{what}");
        assert_eq!(rig.host.recv_timeout(WAIT).unwrap(), payload);
        // ...until the attack ends it.
        for r in &attack {
            raw.tx.push_request(r).unwrap();
        }
        raw.tx.push_requests_and_check_notify();
        raw.front.notify(raw.port);
        rig.wait_backend(XenbusState::Closing);
        let err = lb
            .with_store(|s| s.dom0().read(None, &paths().back("error")))
            .unwrap();
        assert!(
            String::from_utf8_lossy(&err).contains("fatal transmit error"),
            "{what}: {}",
            String::from_utf8_lossy(&err)
        );
        assert_eq!(raw.tx.take_response().unwrap(), None, "{what}: answered");
        assert!(
            rig.host.recv_timeout(Duration::from_millis(50)).is_none(),
            "{what}"
        );
        // The frontend starts over.
        let front = |st| {
            lb.with_store(|xs| write_state(xs, &paths().front("state"), st))
                .unwrap()
        };
        front(XenbusState::Closed);
        rig.wait_backend(XenbusState::Closed);
        front(XenbusState::Initialising);
        rig.wait_backend(XenbusState::InitWait);
    }
    // And a last connection works.
    let mut raw = RawFront::connect(&lb, "1");
    rig.wait_backend(XenbusState::Connected);
    let payload = frame(100, 77);
    raw.data.write_bytes(0, &payload);
    let good = raw.front.grant(0, raw.data_pfn, true).unwrap();
    let r = raw.exchange(&lb, &[req(good, 0, 0, 5, 100)], 1);
    assert_eq!(r[0].status, NETIF_RSP_OKAY);
    assert_eq!(rig.host.recv_timeout(WAIT).unwrap(), payload);

    let stats = rig.stop();
    let e = |k: &str| num(&stats, &["tx_errors", k]);
    for kind in ["offset", "extra_type", "too_many_slots"] {
        let want = kinds.iter().filter(|&&k| k == kind).count() as u64;
        assert_eq!(e(kind), want, "{kind}: {stats}");
    }
    assert_eq!(num(&stats, &["tx_fatal_errors"]), 6);
    assert_eq!(num(&stats, &["connects"]), 7);
    assert_eq!(num(&stats, &["tx_frames"]), 7);
    assert_eq!(num(&stats, &["protocol_errors"]), 0);
}

/// Extras go on while `XEN_NETIF_EXTRA_FLAG_MORE` says so, as in Linux's
/// `xenvif_get_extras`. Regression: after four extras the fifth was taken for the next
/// request, so a frame with five (a valid chain: types may repeat) desynchronised the
/// ring.
#[test]
fn a_chain_of_five_extras_is_one_frame() {
    let mut rig = Rig::new(false);
    let lb = rig.lb.clone();
    let mut raw = RawFront::connect(&lb, "1");
    rig.wait_backend(XenbusState::Connected);
    let payload = frame(300, 5);
    raw.data.write_bytes(0, &payload);
    let good = raw.front.grant(0, raw.data_pfn, true).unwrap();
    let mut reqs = vec![req(good, 0, NETTXF_EXTRA_INFO, 7, 300)];
    for i in 0..5u8 {
        let more = if i < 4 { XEN_NETIF_EXTRA_FLAG_MORE } else { 0 };
        let mac = [0x01, 0x00, 0x5e, 0, 0, i];
        reqs.push(NetifExtraInfo::mcast(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, mac, more).to_tx_request());
    }
    let r = raw.exchange(&lb, &reqs, 6);
    assert_eq!(
        r.iter().filter(|r| r.status == NETIF_RSP_NULL).count(),
        5,
        "{r:?}"
    );
    assert!(
        r.iter().any(|r| (r.id, r.status) == (7, NETIF_RSP_OKAY)),
        "{r:?}"
    );
    assert_eq!(rig.host.recv_timeout(WAIT).unwrap(), payload);
    // Nothing more was taken for a request.
    assert!(rig.host.recv_timeout(Duration::from_millis(50)).is_none());
    let stats = rig.stop();
    assert_eq!(num(&stats, &["tx_frames"]), 1);
    assert_eq!(num(&stats, &["tx_slots"]), 6);
    assert_eq!(num(&stats, &["tx_fatal_errors"]), 0);
    assert_eq!(
        stats["tx_errors"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|v| v.as_u64())
            .sum::<u64>(),
        0,
        "{stats}"
    );
}

#[test]
fn page_flipping_frontend_is_refused() {
    let rig = Rig::new(false);
    let _raw = RawFront::connect(&rig.lb, "0");
    rig.wait_backend(XenbusState::Closing);
    let err = rig
        .lb
        .with_store(|s| s.dom0().read(None, &paths().back("error")))
        .unwrap();
    assert!(String::from_utf8_lossy(&err).contains("request-rx-copy"));
    let mut rig = rig;
    let stats = rig.stop();
    assert_eq!(num(&stats, &["connect_errors"]), 1);
    assert_eq!(num(&stats, &["connects"]), 0);
}

/// netif.h: the number of queues is greater than zero (Linux's netback refuses 0
/// since 2026), and more than one needs `multi-queue-max-queues`, which is not
/// offered: netback refuses to connect either, and says which key.
#[test]
fn zero_or_unoffered_queues_are_refused() {
    for q in ["0", "2", "4294967296"] {
        let rig = Rig::new(false);
        rig.lb
            .xenstore()
            .unwrap()
            .write(
                TxId::NONE,
                "device/vif/0/multi-queue-num-queues",
                q.as_bytes(),
            )
            .unwrap();
        let _raw = RawFront::connect(&rig.lb, "1");
        rig.wait_backend(XenbusState::Closing);
        let err = rig
            .lb
            .with_store(|s| s.dom0().read(None, &paths().back("error")))
            .unwrap();
        assert!(
            String::from_utf8_lossy(&err).contains("multi-queue-num-queues"),
            "{q}: {}",
            String::from_utf8_lossy(&err)
        );
        let mut rig = rig;
        let stats = rig.stop();
        assert_eq!(num(&stats, &["connect_errors"]), 1, "{q}");
        assert_eq!(num(&stats, &["connects"]), 0, "{q}");
    }
}

/// The pieces of a fake backend once the frontend connected.
struct FakeBack {
    back: LoopBack,
    tx: NetifTxBackRing<LoopMapping>,
    rx: NetifRxBackRing<LoopMapping>,
    port: u32,
}

impl FakeBack {
    /// Publishes the device as a backend in `InitWait` would, and on another thread
    /// waits for the frontend to connect, maps its rings and reports `Connected`.
    fn start(lb: &Arc<Loopback>) -> mpsc::Receiver<FakeBack> {
        let p = paths();
        lb.with_store(|xs| {
            create_device(
                xs,
                DOMID,
                &p,
                &[],
                &[
                    ("mac", format_mac(&MAC)),
                    ("feature-rx-copy", "1".into()),
                    ("feature-sg", "1".into()),
                ],
            )
            .unwrap();
            write_state(xs, &p.back("state"), XenbusState::InitWait).unwrap();
        });
        let (send, recv) = mpsc::channel();
        let lb = lb.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + WAIT;
            while lb.with_store(|xs| read_state(xs, &p.front("state"))) != XenbusState::Connected {
                assert!(Instant::now() < deadline, "frontend never connected");
                std::thread::sleep(Duration::from_millis(2));
            }
            let get = |k: &str| -> u32 {
                lb.with_store(|xs| xs.dom0().read(None, &p.front(k)))
                    .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
                    .unwrap()
            };
            let back = lb.back();
            let tx = NetifTxBackRing::attach(back.map_grants(&[get("tx-ring-ref")], true).unwrap())
                .unwrap();
            let rx = NetifRxBackRing::attach(back.map_grants(&[get("rx-ring-ref")], true).unwrap())
                .unwrap();
            let port = back
                .bind(get("event-channel"), Kick::new().notifier(Kick::EVENT))
                .unwrap();
            lb.with_store(|xs| write_state(xs, &p.back("state"), XenbusState::Connected))
                .unwrap();
            let _ = send.send(FakeBack { back, tx, rx, port });
        });
        recv
    }

    fn respond_rx(&mut self, rsp: NetifRxResponse) {
        self.rx.push_response(&rsp).unwrap();
    }

    fn publish(&mut self) {
        self.rx.push_responses_and_check_notify();
        self.tx.push_responses_and_check_notify();
        self.back.notify(self.port);
    }
}

#[test]
fn malicious_backend_is_counted_and_dropped_without_panic() {
    let lb = Loopback::new(DOMID, "guest", 1024).unwrap();
    let fake = FakeBack::start(&lb);
    let mut xs = lb.xenstore().unwrap();
    let config = NetfrontConfig {
        rx_buffers: 64,
        max_frame: 9014,
        ..NetfrontConfig::default()
    };
    let mut nf = Netfront::connect(lb.front(), &mut xs, "0", config).expect("connect");
    let mut fb = fake.recv_timeout(WAIT).unwrap();
    assert_eq!(nf.ports().tx, nf.ports().rx, "split channels not offered");

    let take = |fb: &mut FakeBack| fb.rx.take_request().unwrap().expect("posted buffer");
    // Wrong id.
    let r = take(&mut fb);
    fb.respond_rx(NetifRxResponse {
        id: r.id ^ 1,
        offset: 0,
        flags: 0,
        status: 60,
    });
    // Error status.
    let r = take(&mut fb);
    fb.respond_rx(NetifRxResponse {
        id: r.id,
        offset: 0,
        flags: 0,
        status: NETIF_RSP_ERROR,
    });
    // Past the page end.
    let r = take(&mut fb);
    fb.respond_rx(NetifRxResponse {
        id: r.id,
        offset: 4000,
        flags: 0,
        status: 200,
    });
    // A chain of 30 slots.
    for i in 0..30 {
        let r = take(&mut fb);
        fb.respond_rx(NetifRxResponse {
            id: r.id,
            offset: 0,
            flags: if i < 29 { NETRXF_MORE_DATA } else { 0 },
            status: 100,
        });
    }
    // A blank checksum on something that is not TCP/UDP.
    let r = take(&mut fb);
    fb.back.copy_to_grant(r.gref, 0, &frame(80, 1)).unwrap();
    fb.respond_rx(NetifRxResponse {
        id: r.id,
        offset: 0,
        flags: NETRXF_CSUM_BLANK,
        status: 80,
    });
    // Then a good two-slot frame, at an offset.
    let good = frame(5000, 7);
    let r1 = take(&mut fb);
    let r2 = take(&mut fb);
    fb.back.copy_to_grant(r1.gref, 96, &good[..4000]).unwrap();
    fb.back.copy_to_grant(r2.gref, 0, &good[4000..]).unwrap();
    fb.respond_rx(NetifRxResponse {
        id: r1.id,
        offset: 96,
        flags: NETRXF_MORE_DATA,
        status: 4000,
    });
    fb.respond_rx(NetifRxResponse {
        id: r2.id,
        offset: 0,
        flags: 0,
        status: 1000,
    });
    fb.publish();
    let got = receive_n(&lb, &mut nf, 1);
    assert_eq!(got, [good]);
    let e = nf.stats().rx_errors;
    assert_eq!(
        (
            e.bad_id,
            e.bad_status,
            e.bad_offset,
            e.chain_too_long,
            e.csum_failed
        ),
        (1, 1, 1, 1, 1),
        "{e:?}"
    );
    assert_eq!(nf.stats().rx_frames, 1);

    // Transmit responses: an unknown id, a NULL status, then a real failure.
    for i in 0..3 {
        send(&lb, &mut nf, &frame(100, i));
    }
    nf.kick();
    let reqs: Vec<NetifTxRequest> = (0..3)
        .map(|_| fb.tx.take_request().unwrap().unwrap())
        .collect();
    fb.tx
        .push_response(&NetifTxResponse {
            id: 250,
            status: NETIF_RSP_OKAY,
        })
        .unwrap();
    fb.tx
        .push_response(&NetifTxResponse {
            id: reqs[0].id,
            status: NETIF_RSP_NULL,
        })
        .unwrap();
    fb.tx
        .push_response(&NetifTxResponse {
            id: reqs[1].id,
            status: NETIF_RSP_ERROR,
        })
        .unwrap();
    fb.publish();
    let deadline = Instant::now() + WAIT;
    while nf.stats().tx_failed == 0 {
        assert!(Instant::now() < deadline);
        pump(&lb, &mut nf);
    }
    assert_eq!(nf.stats().tx_bad_response, 2);

    // A response producer beyond the requests: the device stops for good.
    fb.rx.memory().store_u32(
        SRING_RSP_PROD,
        0x4000_0000,
        std::sync::atomic::Ordering::SeqCst,
    );
    fb.back.notify(fb.port);
    lb.wait_front_event(Duration::from_millis(50));
    assert_eq!(nf.poll(), Err(NetError::Protocol));
    assert_eq!(nf.transmit(60, &mut |_| ()), Err(NetError::Protocol));
    assert!(!nf.can_transmit(60));

    // The backend closes: the frontend's own watch fires and the frontend follows.
    let token = nf
        .watch_token()
        .expect("a connected netfront watches")
        .to_owned();
    while xs.next_watch_event(Some(&token)).unwrap().is_some() {}
    lb.with_store(|xs| write_state(xs, &paths().back("state"), XenbusState::Closing))
        .unwrap();
    let ev = xs.wait_watch_event(Some(&token)).unwrap();
    assert_eq!(ev.path, nf.backend_state_path());
    assert_eq!(nf.on_xenbus_event(&mut xs).unwrap(), XenbusState::Closing);
    assert_eq!(
        xs.read(TxId::NONE, "device/vif/0/state").unwrap(),
        b"6".to_vec()
    );
    // Closed: the watch is gone, and a later change is only reported.
    lb.with_store(|xs| write_state(xs, &paths().back("state"), XenbusState::Closed))
        .unwrap();
    assert_eq!(nf.on_xenbus_event(&mut xs).unwrap(), XenbusState::Closed);
    assert_eq!(nf.watch_token(), None);
    assert_eq!(xs.watches().count(), 0);
}

#[test]
fn bad_mac_is_refused() {
    let lb = Loopback::new(DOMID, "guest", 64).unwrap();
    let p = paths();
    lb.with_store(|xs| {
        create_device(
            xs,
            DOMID,
            &p,
            &[],
            &[
                ("mac", "01:00:5e:00:00:01".into()),
                ("feature-rx-copy", "1".into()),
            ],
        )
        .unwrap();
        write_state(xs, &p.back("state"), XenbusState::InitWait).unwrap();
    });
    let mut xs = lb.xenstore().unwrap();
    let r = Netfront::connect(lb.front(), &mut xs, "0", NetfrontConfig::default());
    assert!(
        matches!(r, Err(pv_drivers::netfront::NetfrontError::BadMac(_))),
        "{:?}",
        r.err()
    );
}

fn tun_usable(test: &str) -> bool {
    use std::io::Write as _;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let why = if !root {
        "not running as root"
    } else if std::fs::metadata("/dev/net/tun").is_err() {
        "/dev/net/tun is missing"
    } else {
        return true;
    };
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: {why}; this TAP test did not run"
    );
    false
}

#[test]
fn real_tap_carries_frames_both_ways() {
    if !tun_usable("real_tap_carries_frames_both_ways") {
        return;
    }
    // The TAP and the packet socket live in a network namespace of the test's own,
    // on a thread of its own (namespaces belong to threads; the backend's threads are
    // born inside).
    std::thread::spawn(|| {
        if let Err(e) = host_shim::hostio::netns::enter_private() {
            eprintln!(
                "SKIPPED: real_tap_carries_frames_both_ways: cannot make a network namespace: {e}"
            );
            return;
        }
        frames_both_ways_through_a_tap();
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

fn frames_both_ways_through_a_tap() {
    use std::io::{Read as _, Write as _};
    let name = format!("pvt{}", std::process::id() % 100_000);
    let tap = Tap::open(
        &name,
        TapOptions {
            vnet_hdr: true,
            up: true,
        },
    )
    .expect("open tap");
    let mut sock = std::fs::File::from(
        host_shim::hostio::netns::packet_socket(&name, Duration::from_millis(200))
            .expect("packet socket on the TAP"),
    );
    let lb = Loopback::new(DOMID, "guest", 1024).unwrap();
    let kick = Kick::new();
    let nb = Netback::new(lb.back(), tap, kick.clone(), NetbackConfig::new(0, MAC));
    let running = spawn(nb, kick).unwrap();
    let mut xs = lb.xenstore().unwrap();
    let deadline = Instant::now() + WAIT;
    while lb.with_store(|xs| read_state(xs, &paths().back("state"))) != XenbusState::InitWait {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut nf = Netfront::connect(lb.front(), &mut xs, "0", NetfrontConfig::default()).unwrap();

    // Guest -> host: the frame appears on the interface.
    let out = frame(300, 42);
    send(&lb, &mut nf, &out);
    nf.kick();
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "guest frame never seen on {name}"
        );
        if let Ok(n) = sock.read(&mut buf)
            && buf[..n] == out[..]
        {
            break;
        }
    }
    // Host -> guest: a frame sent out of the interface reaches the guest (among
    // whatever the host kernel sends on a fresh link, e.g. IPv6 solicitations).
    let mut inbound = frame(400, 43);
    inbound[..6].copy_from_slice(&MAC);
    sock.write_all(&inbound).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut seen = false;
    while !seen {
        assert!(
            Instant::now() < deadline,
            "host frame never reached the guest"
        );
        while nf.receive(&mut |f| seen |= f == inbound).unwrap() {}
        pump(&lb, &mut nf);
    }
    let stats = running.stop();
    assert!(num(&stats, &["tx_frames"]) >= 1);
    assert_eq!(num(&stats, &["tx_link_drops"]), 0);
    assert!(num(&stats, &["rx_frames"]) >= 1);
}
