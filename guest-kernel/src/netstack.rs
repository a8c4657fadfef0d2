//! The guest's network services: smoltcp over a [`NetDevice`].
//!
//! [`Phy`] adapts any `NetDevice` (netfront, later e1000) to smoltcp's
//! [`phy::Device`]; [`NetStack`] owns the interface (static IPv4 address and default
//! route) and a few TCP services, each with several listening sockets so that a new
//! connection is accepted while an earlier one is still closing:
//!
//! | port | service |
//! |---|---|
//! | 7 | echo: everything received is sent back; closes when the client closes |
//! | 9 | discard: everything received is counted and dropped |
//! | 19 | bulk: sends [`NetOptions::bulk_bytes`] bytes of the [`pattern`] (seed [`NetOptions::seed`], stream offset 0 up), then closes |
//! | 5 | control: a line `exit` answers `bye` and stops the services; `stats` answers the counters (and what the hook of [`NetStack::set_stats_hook`] adds) |
//! | 5201 | iperf3 server ([`iperf`]): one test at a time, forward, `-R`, `--bidir`, `-P` |
//!
//! ICMP echo requests to the interface's address are answered by smoltcp itself
//! (feature `auto-icmp-echo-reply`); the adapter counts them.
//!
//! Everything here is hardware-free and runs on the host too: the unit tests connect a
//! second smoltcp interface to a [`NetStack`] over an in-memory wire. The kernel's
//! serve loop (`kernel/net.rs`) adds the clock and the waiting.
//!
//! The iperf3 connections are not counted in `accepted`/`completed` (so they do not
//! end a `net.exit-after` run) but in the `iperf_*` counters; each test's start and end
//! go to the hook set by [`NetStack::set_iperf_hook`].
//!
//! [`pattern`]: pv_drivers::pattern

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use pv_drivers::device::{NetDevice, NetError};
use pv_drivers::pattern;
use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::ioopts::NetOptions;
use crate::iperf::{self, COOKIE_SIZE, COOKIE_TIMEOUT_MS, Role};

/// TCP echo.
pub const ECHO_PORT: u16 = 7;
/// TCP discard.
pub const DISCARD_PORT: u16 = 9;
/// TCP bulk sender.
pub const BULK_PORT: u16 = 19;
/// The control port.
pub const CONTROL_PORT: u16 = 5;

/// Sockets listening per data service (a closing connection holds its socket, in
/// TIME-WAIT for 10 s when the guest closed first, as the bulk service does).
const SOCKETS_PER_SERVICE: usize = 4;
/// Per-socket buffer sizes.
const RX_BUFFER: usize = 8 << 10;
const TX_BUFFER: usize = 8 << 10;
/// Sockets listening on the iperf3 port: a control connection, [`iperf::MAX_STREAMS`]
/// streams and one to answer `ACCESS_DENIED` while a test runs.
const IPERF_SOCKETS: usize = iperf::MAX_STREAMS + 2;
/// iperf3 socket buffers: large enough that the TCP window, not the guest's buffer,
/// sets how much a stream moves per round trip (6 sockets: 768 KiB of heap).
const IPERF_BUFFER: usize = 64 << 10;
/// Longest control line.
const MAX_LINE: usize = 64;
/// Frames smoltcp takes from the device before queued frames go out and the services
/// run (half of the virtio-net driver's 128 receive buffers: a TCP stream is acknowledged
/// as it arrives, and a flood cannot starve the services).
const INGRESS_BATCH: usize = 64;
/// Largest Ethernet frame accepted (jumbo frames included); the adapter drops longer
/// ones instead of growing its buffer for a hostile backend.
const MAX_FRAME: usize = 9216 + 14;
/// Smallest usable frame: IPv4's minimum MTU (576) plus the Ethernet header.
const MIN_FRAME: usize = 576 + 14;
/// How long a requested exit waits for the control connection's answer to drain.
const EXIT_GRACE_MS: u64 = 2000;

/// Frame and service counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames and bytes handed to smoltcp.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames and bytes the device took for transmission.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Received frames dropped (too long).
    pub rx_dropped: u64,
    /// Frames smoltcp produced that the device refused (full, or an error).
    pub tx_dropped: u64,
    /// Device errors reported by `poll`/`receive`/`transmit`.
    pub device_errors: u64,
    /// ICMP echo requests seen (smoltcp answers those addressed to us).
    pub icmp_echo_requests: u64,
    /// TCP connections established.
    pub accepted: u64,
    /// TCP connections completed (closed, or in TIME-WAIT after a clean close).
    pub completed: u64,
    /// Bytes echoed, discarded, sent by the bulk service.
    pub echo_bytes: u64,
    pub discard_bytes: u64,
    pub bulk_bytes: u64,
    /// iperf3: connections to its port, tests started, completed, failed (client gone,
    /// protocol error, idle, refused parameters), connections denied, data bytes
    /// received and sent while tests ran.
    pub iperf_connections: u64,
    pub iperf_tests: u64,
    pub iperf_completed: u64,
    pub iperf_failed: u64,
    pub iperf_denied: u64,
    pub iperf_rx_bytes: u64,
    pub iperf_tx_bytes: u64,
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rx {} frames {} bytes, tx {} frames {} bytes, dropped rx {} tx {}, device errors {}, \
             icmp echo requests {}, connections {} accepted {} completed, echoed {} discarded {} \
             bulk {} bytes, iperf {} connections {} tests {} completed {} failed {} denied \
             {} rx bytes {} tx bytes",
            self.rx_frames,
            self.rx_bytes,
            self.tx_frames,
            self.tx_bytes,
            self.rx_dropped,
            self.tx_dropped,
            self.device_errors,
            self.icmp_echo_requests,
            self.accepted,
            self.completed,
            self.echo_bytes,
            self.discard_bytes,
            self.bulk_bytes,
            self.iperf_connections,
            self.iperf_tests,
            self.iperf_completed,
            self.iperf_failed,
            self.iperf_denied,
            self.iperf_rx_bytes,
            self.iperf_tx_bytes
        )
    }
}

/// smoltcp's view of a [`NetDevice`]: received frames are copied into `rx` (the
/// device's buffer is lent only for the duration of its callback); transmitted frames
/// are built by smoltcp directly in the device's buffer.
pub struct Phy<'a> {
    /// The device.
    pub dev: &'a mut dyn NetDevice,
    /// Buffer for the frame being received.
    pub rx: &'a mut Vec<u8>,
    /// Counters.
    pub counters: &'a mut Counters,
    /// Largest frame, Ethernet header included.
    pub max_frame: usize,
    /// Set when the device reported a fatal error.
    pub failed: &'a mut Option<NetError>,
}

fn note_error(counters: &mut Counters, failed: &mut Option<NetError>, e: NetError) {
    counters.device_errors += 1;
    if matches!(e, NetError::Protocol | NetError::Disconnected) {
        failed.get_or_insert(e);
    }
}

/// Whether `frame` is an Ethernet/IPv4 ICMP echo request (for the counter only).
fn is_icmp_echo_request(frame: &[u8]) -> bool {
    let Some(ip) = frame.get(14..) else {
        return false;
    };
    if frame[12..14] != [0x08, 0x00] || ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 1 {
        return false;
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    ip.get(ihl) == Some(&8)
}

/// A received frame.
pub struct RxTok<'a>(&'a [u8]);

impl phy::RxToken for RxTok<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

/// Room for one frame in the device.
pub struct TxTok<'a> {
    dev: &'a mut dyn NetDevice,
    counters: &'a mut Counters,
    failed: &'a mut Option<NetError>,
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        let mut out = None;
        let result = self.dev.transmit(len, &mut |buf| {
            if let Some(g) = f.take() {
                out = Some(g(buf));
            }
        });
        match result {
            Ok(()) if out.is_some() => {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += len as u64;
            }
            Ok(()) => self.counters.tx_dropped += 1,
            Err(e) => {
                self.counters.tx_dropped += 1;
                note_error(self.counters, self.failed, e);
            }
        }
        match (out, f) {
            (Some(r), _) => r,
            // The device refused the frame without asking for its bytes: smoltcp still
            // needs its closure run (its result); the frame is built and dropped, and
            // TCP will retransmit.
            (None, Some(g)) => g(&mut vec![0; len]),
            (None, None) => unreachable!("the fill closure ran without producing a result"),
        }
    }
}

impl phy::Device for Phy<'_> {
    type RxToken<'b>
        = RxTok<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxTok<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxTok<'_>, TxTok<'_>)> {
        loop {
            let rx = &mut *self.rx;
            let mut too_long = false;
            let got = self.dev.receive(&mut |frame| {
                rx.clear();
                if frame.len() <= MAX_FRAME {
                    rx.extend_from_slice(frame);
                } else {
                    too_long = true;
                }
            });
            match got {
                Ok(true) if too_long => self.counters.rx_dropped += 1,
                Ok(true) => break,
                Ok(false) => return None,
                Err(e) => {
                    note_error(self.counters, self.failed, e);
                    return None;
                }
            }
        }
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += self.rx.len() as u64;
        if is_icmp_echo_request(self.rx) {
            self.counters.icmp_echo_requests += 1;
        }
        Some((
            RxTok(self.rx),
            TxTok {
                dev: &mut *self.dev,
                counters: &mut *self.counters,
                failed: &mut *self.failed,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxTok<'_>> {
        if !self.dev.can_transmit(self.max_frame) {
            return None;
        }
        Some(TxTok {
            dev: &mut *self.dev,
            counters: &mut *self.counters,
            failed: &mut *self.failed,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame;
        caps
    }
}

/// Why the network stack could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackError {
    /// The device's MAC address is not a unicast address.
    BadMac([u8; 6]),
    /// The device's largest frame is below IPv4's minimum MTU.
    FrameTooSmall(usize),
    /// The gateway is not in the interface's subnet, or the route table is full.
    BadRoute,
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMac(m) => write!(
                f,
                "MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} is not unicast",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            Self::FrameTooSmall(n) => write!(f, "largest frame {n} bytes is below 590"),
            Self::BadRoute => f.write_str("cannot add the default route"),
        }
    }
}

impl core::error::Error for StackError {}

/// Why the services stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// `exit` on the control port.
    ExitCommand,
    /// `net.exit-after` connections completed.
    Connections(u64),
    /// `net.time-limit` passed.
    TimeLimit,
    /// The device failed.
    Device(NetError),
}

impl fmt::Display for Finish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExitCommand => f.write_str("exit command on the control port"),
            Self::Connections(n) => write!(f, "{n} connections completed"),
            Self::TimeLimit => f.write_str("time limit reached"),
            Self::Device(e) => write!(f, "device failed: {e}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    Echo,
    Discard,
    Bulk,
    Control,
    Iperf,
}

impl Service {
    fn port(self) -> u16 {
        match self {
            Self::Echo => ECHO_PORT,
            Self::Discard => DISCARD_PORT,
            Self::Bulk => BULK_PORT,
            Self::Control => CONTROL_PORT,
            Self::Iperf => iperf::PORT,
        }
    }
}

/// Where a socket is in its connection's life, as the services count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    /// Listening (or about to): no connection yet.
    Idle,
    /// A connection is established and not yet counted as completed.
    Open,
    /// Counted as completed; waiting in TIME-WAIT to become free again.
    Done,
}

struct Slot {
    service: Service,
    handle: SocketHandle,
    conn: Conn,
    /// Bulk: bytes sent so far on this connection.
    sent: u64,
    /// Control: the line being received.
    line: Vec<u8>,
    /// Control: the line was too long; ignore until its end.
    overlong: bool,
    /// iperf3: what the connection is.
    iperf: IperfConn,
}

/// An iperf3 connection's role, as far as the server knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IperfConn {
    /// Reading the cookie.
    Cookie {
        buf: [u8; COOKIE_SIZE],
        got: usize,
        since_ms: u64,
    },
    /// The control connection of test `tid`.
    Control(u64),
    /// Data stream `index` of test `tid`.
    Stream { tid: u64, index: usize },
    /// No longer part of a test: drained until the client closes (or, after
    /// [`COOKIE_TIMEOUT_MS`], aborted when the port has no free socket).
    Over { since_ms: u64 },
}

/// What one [`NetStack::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames transmitted.
    pub tx_frames: u64,
    /// The last batch took [`INGRESS_BATCH`] frames: more may be waiting, poll again
    /// without waiting for the device's event.
    pub backlog: bool,
}

/// What [`NetStack::set_iperf_hook`] takes.
pub type IperfHook = Box<dyn FnMut(&iperf::Event)>;

/// What [`NetStack::set_stats_hook`] takes.
pub type StatsHook = Box<dyn Fn() -> alloc::string::String>;

/// The interface, its sockets and the services.
pub struct NetStack {
    iface: Interface,
    sockets: SocketSet<'static>,
    slots: Vec<Slot>,
    rx: Vec<u8>,
    scratch: Vec<u8>,
    max_frame: usize,
    /// Counters.
    pub counters: Counters,
    failed: Option<NetError>,
    exit_requested_at: Option<u64>,
    started_ms: u64,
    exit_after: u64,
    time_limit_ms: u64,
    bulk_total: u64,
    seed: u64,
    iperf: iperf::Server,
    iperf_hook: Option<IperfHook>,
    stats_hook: Option<StatsHook>,
}

fn synchronized(state: tcp::State) -> bool {
    !matches!(
        state,
        tcp::State::Closed | tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
    )
}

impl NetStack {
    /// Sets up the interface on `dev` with `opts`' address and route, and the services.
    /// `random_seed` seeds smoltcp (initial sequence numbers, ephemeral ports).
    pub fn new(
        opts: &NetOptions<'_>,
        dev: &mut dyn NetDevice,
        now_ms: u64,
        random_seed: u64,
    ) -> Result<Self, StackError> {
        let info = dev.info();
        let mac = EthernetAddress(info.mac);
        // smoltcp panics on a non-unicast hardware address: refuse it here.
        if !mac.is_unicast() {
            return Err(StackError::BadMac(info.mac));
        }
        if info.max_frame < MIN_FRAME {
            return Err(StackError::FrameTooSmall(info.max_frame));
        }
        let max_frame = info.max_frame.min(MAX_FRAME);
        let mut counters = Counters::default();
        let mut rx = Vec::with_capacity(max_frame);
        let mut failed = None;
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = random_seed;
        let mut phy = Phy {
            dev,
            rx: &mut rx,
            counters: &mut counters,
            max_frame,
            failed: &mut failed,
        };
        let mut iface = Interface::new(config, &mut phy, Instant::from_millis(now_ms as i64));
        iface.update_ip_addrs(|addrs| {
            // One address into an empty list: cannot be full.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(opts.ip), opts.prefix));
        });
        if let Some(gw) = opts.gw {
            iface
                .routes_mut()
                .add_default_ipv4_route(gw)
                .map_err(|_| StackError::BadRoute)?;
        }
        let mut stack = Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            slots: Vec::new(),
            rx,
            scratch: vec![0; 1024],
            max_frame,
            counters,
            failed,
            exit_requested_at: None,
            started_ms: now_ms,
            exit_after: opts.exit_after,
            time_limit_ms: opts.time_limit_s.saturating_mul(1000),
            bulk_total: opts.bulk_bytes,
            seed: opts.seed,
            iperf: iperf::Server::new(),
            iperf_hook: None,
            stats_hook: None,
        };
        for service in [Service::Echo, Service::Discard, Service::Bulk] {
            for _ in 0..SOCKETS_PER_SERVICE {
                stack.add(service);
            }
        }
        stack.add(Service::Control);
        stack.add(Service::Control);
        for _ in 0..IPERF_SOCKETS {
            stack.add(Service::Iperf);
        }
        Ok(stack)
    }

    /// Calls `hook` with every iperf3 test's start and end, from inside
    /// [`NetStack::poll`], before the message that starts (or follows) the test is
    /// transmitted.
    pub fn set_iperf_hook(&mut self, hook: IperfHook) {
        self.iperf_hook = Some(hook);
    }

    /// Appends `hook`'s text to the control port's `stats` answer, after a comma (the
    /// kernel's free grant references, frames and heap: `host-shim soak` reads them).
    pub fn set_stats_hook(&mut self, hook: StatsHook) {
        self.stats_hook = Some(hook);
    }

    fn add(&mut self, service: Service) {
        let (rx, tx) = match service {
            Service::Iperf => (IPERF_BUFFER, IPERF_BUFFER),
            _ => (RX_BUFFER, TX_BUFFER),
        };
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; tx]),
        );
        let handle = self.sockets.add(socket);
        self.slots.push(Slot {
            service,
            handle,
            conn: Conn::Idle,
            sent: 0,
            line: Vec::new(),
            overlong: false,
            iperf: IperfConn::Over { since_ms: 0 },
        });
    }

    /// One round: reap the device, let smoltcp process frames and timers, run the
    /// services, transmit, and notify the device. At most [`INGRESS_BATCH`] frames are
    /// taken between two runs of the services, and a few batches in all: under a flood
    /// [`Activity::backlog`] says that frames may be waiting.
    pub fn poll(&mut self, dev: &mut dyn NetDevice, now_ms: u64) -> Activity {
        let before = (self.counters.rx_frames, self.counters.tx_frames);
        if let Err(e) = dev.poll() {
            note_error(&mut self.counters, &mut self.failed, e);
        }
        let now = Instant::from_millis(now_ms as i64);
        self.iface.poll_maintenance(now);
        let mut backlog = false;
        // Services may queue data (a reply, more bulk bytes) that the next round sends.
        for _ in 0..4 {
            let mut phy = Phy {
                dev: &mut *dev,
                rx: &mut self.rx,
                counters: &mut self.counters,
                max_frame: self.max_frame,
                failed: &mut self.failed,
            };
            // Not `Interface::poll`: it takes frames until the device has none, which
            // under a flood (a virtio-net device refilled by its own thread as fast as
            // the guest empties it) is never; the services would not run meanwhile, and
            // a control socket closed by the client would not listen again before the
            // next connection's SYN arrived (it was refused: #16's soak).
            let mut taken = 0;
            while taken < INGRESS_BATCH
                && !matches!(
                    self.iface
                        .poll_ingress_single(now, &mut phy, &mut self.sockets),
                    PollIngressSingleResult::None
                )
            {
                taken += 1;
            }
            backlog = taken == INGRESS_BATCH;
            // Each call is bounded; smoltcp's own `poll` repeats it the same way.
            while !matches!(
                self.iface.poll_egress(now, &mut phy, &mut self.sockets),
                PollResult::None
            ) {}
            if !self.serve(now_ms) && !backlog {
                break;
            }
        }
        dev.kick();
        Activity {
            rx_frames: self.counters.rx_frames - before.0,
            tx_frames: self.counters.tx_frames - before.1,
            backlog,
        }
    }

    /// Milliseconds until smoltcp next needs a poll (a retransmission, a delayed ACK),
    /// if it has anything pending.
    pub fn poll_delay_ms(&mut self, now_ms: u64) -> Option<u64> {
        self.iface
            .poll_delay(Instant::from_millis(now_ms as i64), &self.sockets)
            .map(|d| d.total_millis())
    }

    /// Whether (and why) the services should stop.
    pub fn finished(&self, now_ms: u64) -> Option<Finish> {
        if let Some(e) = self.failed {
            return Some(Finish::Device(e));
        }
        if let Some(at) = self.exit_requested_at {
            let drained = self.slots.iter().all(|s| {
                s.service != Service::Control || {
                    let st = self.sockets.get::<tcp::Socket>(s.handle).state();
                    !synchronized(st) || st == tcp::State::TimeWait
                }
            });
            if drained || now_ms.saturating_sub(at) >= EXIT_GRACE_MS {
                return Some(Finish::ExitCommand);
            }
        }
        if self.exit_after != 0 && self.counters.completed >= self.exit_after {
            return Some(Finish::Connections(self.counters.completed));
        }
        if self.time_limit_ms != 0 && now_ms.saturating_sub(self.started_ms) >= self.time_limit_ms {
            return Some(Finish::TimeLimit);
        }
        None
    }

    /// Runs every socket's service; true if any queued data to send.
    fn serve(&mut self, now_ms: u64) -> bool {
        let mut queued = false;
        for slot in &mut self.slots {
            let s = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            let state = s.state();
            match state {
                tcp::State::Closed => {
                    if slot.conn == Conn::Open && slot.service != Service::Iperf {
                        self.counters.completed += 1;
                    }
                    if let IperfConn::Control(tid) = slot.iperf {
                        self.iperf.control_closed(tid, now_ms);
                    }
                    slot.iperf = IperfConn::Over { since_ms: now_ms };
                    slot.conn = Conn::Idle;
                    if self.exit_requested_at.is_none() {
                        // Cannot fail: the socket is closed and the port is not 0.
                        let _ = s.listen(slot.service.port());
                    }
                    continue;
                }
                tcp::State::TimeWait => {
                    if slot.conn == Conn::Open && slot.service != Service::Iperf {
                        self.counters.completed += 1;
                    }
                    if let IperfConn::Control(tid) = slot.iperf {
                        self.iperf.control_closed(tid, now_ms);
                    }
                    slot.iperf = IperfConn::Over { since_ms: now_ms };
                    slot.conn = Conn::Done;
                    continue;
                }
                _ if synchronized(state) && slot.conn == Conn::Idle => {
                    slot.conn = Conn::Open;
                    slot.sent = 0;
                    slot.line.clear();
                    slot.overlong = false;
                    if slot.service == Service::Iperf {
                        self.counters.iperf_connections += 1;
                        slot.iperf = IperfConn::Cookie {
                            buf: [0; COOKIE_SIZE],
                            got: 0,
                            since_ms: now_ms,
                        };
                    } else {
                        self.counters.accepted += 1;
                    }
                }
                _ if slot.conn != Conn::Open => continue,
                _ => {}
            }
            match slot.service {
                Service::Iperf => {
                    queued |= serve_iperf(
                        &mut slot.iperf,
                        s,
                        &mut self.iperf,
                        &mut self.scratch,
                        now_ms,
                    );
                }
                Service::Echo => {
                    while s.can_recv() && s.can_send() {
                        let room = s.send_capacity() - s.send_queue();
                        let want = room.min(self.scratch.len());
                        let n = s.recv_slice(&mut self.scratch[..want]).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        // `room` bytes are free, so all `n` fit.
                        let sent = s.send_slice(&self.scratch[..n]).unwrap_or(0);
                        self.counters.echo_bytes += sent as u64;
                        queued = true;
                    }
                }
                Service::Discard => drain(s, &mut self.counters.discard_bytes),
                Service::Bulk => {
                    let mut ignored = 0;
                    drain(s, &mut ignored);
                    while slot.sent < self.bulk_total && s.can_send() {
                        let (seed, at) = (self.seed, slot.sent);
                        let left = self.bulk_total - at;
                        let n = s
                            .send(|buf| {
                                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                                pattern::fill(seed, at, &mut buf[..n]);
                                (n, n)
                            })
                            .unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        slot.sent += n as u64;
                        self.counters.bulk_bytes += n as u64;
                        queued = true;
                    }
                    if slot.sent >= self.bulk_total && s.may_send() {
                        s.close();
                        queued = true;
                    }
                }
                Service::Control => {
                    let mut byte = [0u8; 1];
                    while s.can_recv() && s.recv_slice(&mut byte).unwrap_or(0) == 1 {
                        if byte[0] != b'\n' {
                            if slot.line.len() < MAX_LINE {
                                slot.line.push(byte[0]);
                            } else {
                                slot.overlong = true;
                            }
                            continue;
                        }
                        let line = core::mem::take(&mut slot.line);
                        let cmd = if slot.overlong {
                            &b""[..]
                        } else {
                            line.trim_ascii()
                        };
                        slot.overlong = false;
                        // A reply that does not fit the send buffer is cut short: the
                        // control client reads its answers before asking again.
                        match cmd {
                            b"exit" => {
                                self.exit_requested_at.get_or_insert(now_ms);
                                let _ = s.send_slice(b"bye\n");
                                s.close();
                            }
                            b"stats" => {
                                let line = match &self.stats_hook {
                                    Some(hook) => alloc::format!("{}, {}\n", self.counters, hook()),
                                    None => alloc::format!("{}\n", self.counters),
                                };
                                let _ = s.send_slice(line.as_bytes());
                            }
                            _ => {
                                let _ = s.send_slice(b"commands: exit, stats\n");
                            }
                        }
                        queued = true;
                    }
                }
            }
            let bulk_pending = matches!(slot.service, Service::Bulk) && slot.sent < self.bulk_total;
            if state == tcp::State::CloseWait && s.may_send() && !bulk_pending {
                // The client closed its half; ours follows once the queued data is out
                // (the bulk service first sends all it promised: `nc host 19 </dev/null`
                // half-closes at once and still expects the whole stream).
                s.close();
                queued = true;
            }
        }
        self.iperf.tick(now_ms);
        self.iperf_bookkeeping(now_ms);
        if self.exit_requested_at.is_some() {
            // Stop accepting: listening sockets are closed so no new connection starts.
            for slot in &self.slots {
                let s = self.sockets.get_mut::<tcp::Socket>(slot.handle);
                if s.state() == tcp::State::Listen {
                    s.abort();
                }
            }
        }
        queued
    }

    /// Hands the iperf3 server's events to the hook, updates the counters, and keeps a
    /// socket listening on the iperf3 port: with none free, one in TIME-WAIT (a
    /// connection this side closed first), else one of an ended test that its client
    /// kept open for [`COOKIE_TIMEOUT_MS`], is given up.
    fn iperf_bookkeeping(&mut self, now_ms: u64) {
        while let Some(e) = self.iperf.take_event() {
            match e {
                iperf::Event::Started { .. } => self.counters.iperf_tests += 1,
                iperf::Event::Ended(r) => {
                    self.counters.iperf_rx_bytes += r.bytes_received;
                    self.counters.iperf_tx_bytes += r.bytes_sent;
                }
            }
            if let Some(hook) = self.iperf_hook.as_mut() {
                hook(&e);
            }
        }
        self.counters.iperf_completed = self.iperf.completed;
        self.counters.iperf_failed = self.iperf.failed;
        self.counters.iperf_denied = self.iperf.denied;
        if self.exit_requested_at.is_some() {
            return;
        }
        let iperf_state = |slot: &Slot| self.sockets.get::<tcp::Socket>(slot.handle).state();
        let listening = self
            .slots
            .iter()
            .filter(|s| s.service == Service::Iperf)
            .any(|s| matches!(iperf_state(s), tcp::State::Listen | tcp::State::Closed));
        if listening {
            return;
        }
        // Else a connection left over from an ended test whose client has not closed
        // it for a while.
        let waiting = self
            .slots
            .iter()
            .find(|s| s.service == Service::Iperf && iperf_state(s) == tcp::State::TimeWait)
            .or_else(|| {
                self.slots.iter().find(|s| {
                    s.service == Service::Iperf
                        && matches!(s.iperf, IperfConn::Over { since_ms }
                            if now_ms.saturating_sub(since_ms) >= COOKIE_TIMEOUT_MS)
                })
            })
            .map(|s| s.handle);
        if let Some(slot) = self.slots.iter_mut().find(|s| Some(s.handle) == waiting) {
            // A fresh connection on it is then counted and served as new.
            slot.conn = Conn::Idle;
            let s = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            s.abort();
            // Cannot fail: the socket is closed and the port is not 0.
            let _ = s.listen(iperf::PORT);
        }
    }
}

/// Runs one iperf3 connection: its cookie, then its part of the test as
/// [`iperf::Server`] decides. True if it queued data or changed role (another round
/// of the services is worth it).
fn serve_iperf(
    conn: &mut IperfConn,
    s: &mut tcp::Socket<'_>,
    server: &mut iperf::Server,
    scratch: &mut [u8],
    now_ms: u64,
) -> bool {
    let mut queued = false;
    loop {
        match conn {
            IperfConn::Cookie { buf, got, since_ms } => {
                while *got < COOKIE_SIZE && s.can_recv() {
                    let n = s.recv_slice(&mut buf[*got..]).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    *got += n;
                }
                if *got < COOKIE_SIZE {
                    if !s.may_recv() || now_ms.saturating_sub(*since_ms) >= COOKIE_TIMEOUT_MS {
                        s.abort();
                        *conn = IperfConn::Over { since_ms: now_ms };
                        return true;
                    }
                    return queued;
                }
                let cookie = *buf;
                *conn = match server.classify(&cookie, now_ms) {
                    Role::Control(tid) => {
                        // iperf3 sets TCP_NODELAY on the control connection.
                        s.set_nagle_enabled(false);
                        IperfConn::Control(tid)
                    }
                    Role::Stream { tid, index } => {
                        s.set_nagle_enabled(!server.nodelay(tid));
                        IperfConn::Stream { tid, index }
                    }
                    Role::Denied => {
                        let _ = s.send_slice(&[iperf::state::ACCESS_DENIED]);
                        s.close();
                        IperfConn::Over { since_ms: now_ms }
                    }
                };
                queued = true;
            }
            IperfConn::Control(tid) => {
                let tid = *tid;
                while s.can_recv() {
                    let n = s.recv_slice(scratch).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    if server.control_input(tid, &scratch[..n], now_ms).is_err() {
                        // Garbage: drop the connection; the test is already failed.
                        s.abort();
                        *conn = IperfConn::Over { since_ms: now_ms };
                        return true;
                    }
                }
                let out = server.control_output(tid);
                if !out.is_empty() && s.can_send() {
                    let n = s.send_slice(out).unwrap_or(0);
                    server.control_sent(tid, n);
                    queued |= n > 0;
                }
                if server.control_finished(tid) {
                    // Its test is over: the client closes first (no TIME-WAIT here).
                    *conn = IperfConn::Over { since_ms: now_ms };
                } else if !s.may_recv() {
                    server.control_closed(tid, now_ms);
                    *conn = IperfConn::Over { since_ms: now_ms };
                }
                return queued;
            }
            IperfConn::Stream { tid, index } => {
                let (tid, index) = (*tid, *index);
                while s.can_recv() {
                    let n = s.recv(|b| (b.len(), b.len())).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    server.stream_received(tid, index, n, now_ms);
                }
                let allowance = server.send_allowance(tid, index);
                if allowance > 0 && s.can_send() {
                    // The payload is whatever the buffer holds: iperf3 does not look.
                    let n = s
                        .send(|b| {
                            let n = b
                                .len()
                                .min(usize::try_from(allowance).unwrap_or(usize::MAX));
                            (n, n)
                        })
                        .unwrap_or(0);
                    server.stream_sent(tid, index, n, now_ms);
                    queued |= n > 0;
                }
                if !server.stream_live(tid) {
                    // The test ended: close the stream, as iperf3's own server closes
                    // every data stream when TEST_END arrives. A client in reverse
                    // mode reads its stream until end-of-file; left open, it waits
                    // in that read forever and never sees EXCHANGE_RESULTS. The FIN
                    // follows whatever the send buffer still holds.
                    s.close();
                    *conn = IperfConn::Over { since_ms: now_ms };
                }
                return queued;
            }
            IperfConn::Over { .. } => {
                let mut ignored = 0;
                drain(s, &mut ignored);
                return queued;
            }
        }
    }
}

fn drain(s: &mut tcp::Socket<'_>, count: &mut u64) {
    while s.can_recv() {
        let n = s.recv(|b| (b.len(), b.len())).unwrap_or(0);
        if n == 0 {
            break;
        }
        *count += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use pv_drivers::device::NetInfo;
    use smoltcp::socket::icmp;
    use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpEndpoint};
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

    /// One end of an in-memory Ethernet cable, with a bounded transmit queue.
    struct Wire {
        mac: [u8; 6],
        tx: Queue,
        rx: Queue,
        polls: u64,
        kicks: u64,
        /// Every this-many-th transmit is refused (0: none).
        refuse_every: u32,
        attempts: u32,
        /// A frame received whenever `rx` is empty, this many times more (a flood).
        flood: (Vec<u8>, u64),
        /// Frames received since the last `poll`, and the most between two.
        taken: u64,
        most_taken: u64,
    }

    fn cable(a: [u8; 6], b: [u8; 6]) -> (Wire, Wire) {
        let (q1, q2): (Queue, Queue) = Default::default();
        let end = |mac, tx: &Queue, rx: &Queue| Wire {
            mac,
            tx: tx.clone(),
            rx: rx.clone(),
            polls: 0,
            kicks: 0,
            refuse_every: 0,
            attempts: 0,
            flood: (Vec::new(), 0),
            taken: 0,
            most_taken: 0,
        };
        (end(a, &q1, &q2), end(b, &q2, &q1))
    }

    impl NetDevice for Wire {
        fn info(&self) -> NetInfo {
            NetInfo {
                mac: self.mac,
                max_frame: 1514,
            }
        }
        fn can_transmit(&self, _len: usize) -> bool {
            self.tx.borrow().len() < 64
        }
        fn transmit(
            &mut self,
            len: usize,
            fill: &mut dyn FnMut(&mut [u8]),
        ) -> Result<(), NetError> {
            if len == 0 || len > 1514 {
                return Err(NetError::BadFrame);
            }
            self.attempts += 1;
            if self.refuse_every != 0 && self.attempts.is_multiple_of(self.refuse_every) {
                return Err(NetError::Busy);
            }
            let mut frame = vec![0; len];
            fill(&mut frame);
            self.tx.borrow_mut().push_back(frame);
            Ok(())
        }
        fn kick(&mut self) {
            self.kicks += 1;
        }
        fn receive(&mut self, take: &mut dyn FnMut(&[u8])) -> Result<bool, NetError> {
            let queued = self.rx.borrow_mut().pop_front();
            match queued {
                Some(f) => take(&f),
                None if self.flood.1 > 0 => {
                    self.flood.1 -= 1;
                    take(&self.flood.0);
                }
                None => return Ok(false),
            }
            self.taken += 1;
            Ok(true)
        }
        fn poll(&mut self) -> Result<(), NetError> {
            self.polls += 1;
            self.most_taken = self.most_taken.max(core::mem::take(&mut self.taken));
            Ok(())
        }
    }

    const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn opts() -> NetOptions<'static> {
        NetOptions {
            ip: SERVER,
            prefix: 24,
            gw: Some(Ipv4Addr::new(10, 0, 2, 2)),
            exit_after: 0,
            time_limit_s: 0,
            bulk_bytes: 20_000,
            seed: 3,
            device: None,
        }
    }

    /// The host side: a plain smoltcp interface on the other end of the cable.
    struct Client {
        wire: Wire,
        iface: Interface,
        sockets: SocketSet<'static>,
        rx: Vec<u8>,
        counters: Counters,
        failed: Option<NetError>,
    }

    impl Client {
        fn new(mut wire: Wire) -> Self {
            let mut rx = Vec::new();
            let mut counters = Counters::default();
            let mut failed = None;
            let mut phy = Phy {
                dev: &mut wire,
                rx: &mut rx,
                counters: &mut counters,
                max_frame: 1514,
                failed: &mut failed,
            };
            let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC)));
            config.random_seed = 99;
            let mut iface = Interface::new(config, &mut phy, Instant::from_millis(0));
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 2), 24)).unwrap();
            });
            Self {
                wire,
                iface,
                sockets: SocketSet::new(Vec::new()),
                rx,
                counters,
                failed,
            }
        }

        fn poll(&mut self, now_ms: u64) {
            let mut phy = Phy {
                dev: &mut self.wire,
                rx: &mut self.rx,
                counters: &mut self.counters,
                max_frame: 1514,
                failed: &mut self.failed,
            };
            self.iface.poll(
                Instant::from_millis(now_ms as i64),
                &mut phy,
                &mut self.sockets,
            );
        }

        fn connect(&mut self, port: u16, local: u16) -> SocketHandle {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 64 << 10]),
                tcp::SocketBuffer::new(vec![0; 64 << 10]),
            );
            s.connect(
                self.iface.context(),
                IpEndpoint::new(IpAddress::Ipv4(SERVER), port),
                local,
            )
            .unwrap();
            self.sockets.add(s)
        }

        fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut::<tcp::Socket>(h)
        }
    }

    /// Appends everything `t` has received to `into`.
    fn read_all(t: &mut tcp::Socket<'_>, into: &mut Vec<u8>) {
        while t.can_recv() {
            t.recv(|b| {
                into.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
    }

    /// Runs both ends for `ms` simulated milliseconds or until `done`.
    fn run(
        server: &mut NetStack,
        sdev: &mut Wire,
        client: &mut Client,
        now: &mut u64,
        ms: u64,
        mut done: impl FnMut(&mut NetStack, &mut Client, u64) -> bool,
    ) -> bool {
        for _ in 0..ms {
            server.poll(sdev, *now);
            client.poll(*now);
            if done(server, client, *now) {
                return true;
            }
            *now += 1;
        }
        false
    }

    fn setup(o: NetOptions<'static>) -> (NetStack, Wire, Client, u64) {
        let (mut sdev, cdev) = cable(SERVER_MAC, CLIENT_MAC);
        let server = NetStack::new(&o, &mut sdev, 0, 7).unwrap();
        (server, sdev, Client::new(cdev), 0)
    }

    #[test]
    fn echo_discard_and_bulk_over_tcp() {
        let (mut server, mut sdev, mut client, mut now) = setup(opts());
        let echo = client.connect(ECHO_PORT, 40000);
        let discard = client.connect(DISCARD_PORT, 40001);
        let bulk = client.connect(BULK_PORT, 40002);
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut sent_echo = 0;
        let mut sent_discard = 0;
        let mut echoed = Vec::new();
        let mut bulk_in = Vec::new();
        let ok = run(
            &mut server,
            &mut sdev,
            &mut client,
            &mut now,
            20_000,
            |_, c, _| {
                let s = c.tcp(echo);
                if s.can_send() && sent_echo < payload.len() {
                    sent_echo += s.send_slice(&payload[sent_echo..]).unwrap();
                }
                if s.can_recv() {
                    s.recv(|b| {
                        echoed.extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
                }
                if echoed.len() == payload.len() && s.may_send() {
                    s.close();
                }
                let s = c.tcp(discard);
                if s.can_send() && sent_discard < payload.len() {
                    sent_discard += s.send_slice(&payload[sent_discard..]).unwrap();
                }
                if sent_discard == payload.len() && s.may_send() {
                    s.close();
                }
                let s = c.tcp(bulk);
                if s.can_recv() {
                    s.recv(|b| {
                        bulk_in.extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
                }
                if !s.may_recv() && s.may_send() {
                    s.close();
                }
                [echo, discard, bulk]
                    .iter()
                    .all(|&h| matches!(c.tcp(h).state(), tcp::State::Closed | tcp::State::TimeWait))
            },
        );
        assert!(ok, "connections did not finish: {}", server.counters);
        assert_eq!(echoed, payload);
        assert_eq!(bulk_in.len(), 20_000);
        assert_eq!(pattern::check(3, 0, &bulk_in), None);
        // Let the server see the final ACKs.
        run(
            &mut server,
            &mut sdev,
            &mut client,
            &mut now,
            500,
            |s, _, _| s.counters.completed == 3,
        );
        let c = &server.counters;
        assert_eq!((c.accepted, c.completed), (3, 3), "{c}");
        assert_eq!(c.echo_bytes, 10_000);
        assert_eq!(c.discard_bytes, 10_000);
        assert_eq!(c.bulk_bytes, 20_000);
        assert!(c.rx_frames > 10 && c.tx_frames > 10);
        assert!(sdev.kicks > 0 && sdev.polls > 0);
        assert_eq!(server.finished(now), None);
    }

    #[test]
    fn bulk_sends_everything_to_a_client_that_half_closed_at_once() {
        // `nc guest 19 </dev/null`: the client's FIN comes before any data.
        let (mut server, mut sdev, mut client, mut now) = setup(opts());
        let bulk = client.connect(BULK_PORT, 40003);
        let mut bulk_in = Vec::new();
        let ok = run(
            &mut server,
            &mut sdev,
            &mut client,
            &mut now,
            20_000,
            |_, c, _| {
                let s = c.tcp(bulk);
                if s.state() == tcp::State::Established && s.may_send() {
                    s.close();
                }
                if s.can_recv() {
                    s.recv(|b| {
                        bulk_in.extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
                }
                matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
            },
        );
        assert!(ok, "connection did not finish: {}", server.counters);
        assert_eq!(bulk_in.len(), 20_000);
        assert_eq!(pattern::check(3, 0, &bulk_in), None);
    }

    #[test]
    fn ping_is_answered_and_counted() {
        let (mut server, mut sdev, mut client, mut now) = setup(opts());
        let mut sock = icmp::Socket::new(
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        );
        sock.bind(icmp::Endpoint::Ident(0x1234)).unwrap();
        let h = client.sockets.add(sock);
        let mut sent = false;
        let mut replies = 0;
        let ok = run(
            &mut server,
            &mut sdev,
            &mut client,
            &mut now,
            2000,
            |_, c, _| {
                let caps = DeviceCapabilities::default();
                let s = c.sockets.get_mut::<icmp::Socket>(h);
                if !sent && s.can_send() {
                    let repr = Icmpv4Repr::EchoRequest {
                        ident: 0x1234,
                        seq_no: 1,
                        data: b"ping!",
                    };
                    let buf = s.send(repr.buffer_len(), IpAddress::Ipv4(SERVER)).unwrap();
                    repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps.checksum);
                    sent = true;
                }
                while s.can_recv() {
                    let (data, _) = s.recv().unwrap();
                    let p = Icmpv4Packet::new_checked(data).unwrap();
                    if let Ok(Icmpv4Repr::EchoReply {
                        seq_no: 1, data, ..
                    }) = Icmpv4Repr::parse(&p, &caps.checksum)
                    {
                        assert_eq!(data, b"ping!");
                        replies += 1;
                    }
                }
                replies == 1
            },
        );
        assert!(ok, "no echo reply: {}", server.counters);
        assert_eq!(server.counters.icmp_echo_requests, 1);
    }

    /// An ICMP echo reply from the client to the server (which asked for none, and
    /// answers nothing).
    fn echo_reply() -> Vec<u8> {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{
            EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr,
        };
        let icmp = Icmpv4Repr::EchoReply {
            ident: 7,
            seq_no: 1,
            data: b"flood",
        };
        let ip = Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 2, 2),
            dst_addr: SERVER,
            next_header: IpProtocol::Icmp,
            payload_len: icmp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(CLIENT_MAC),
            dst_addr: EthernetAddress(SERVER_MAC),
            ethertype: EthernetProtocol::Ipv4,
        };
        let caps = ChecksumCapabilities::default();
        let mut f = vec![0; eth.buffer_len() + ip.buffer_len() + icmp.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut f[..]);
        eth.emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet, &caps);
        icmp.emit(
            &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
            &caps,
        );
        f
    }

    /// Regression (#16's soak on virtio-net, stopped after 600,218 frames): under a
    /// flood the device is never found empty, and smoltcp's `Interface::poll` took
    /// frames until it was, so the services did not run: a control socket the client
    /// had closed did not listen again, and the next connection's SYN, arriving in the
    /// same stretch, found neither control socket listening and was reset. Now each
    /// poll takes a bounded number of frames and runs the services between batches:
    /// three control connections in a row (one more than there are control sockets),
    /// each closed by the client first as the soak's are, all answered while the flood
    /// goes on.
    #[test]
    fn services_run_and_sockets_listen_again_under_a_flood() {
        let (mut server, mut sdev, mut client, mut now) = setup(opts());
        const FLOOD: u64 = 200_000;
        sdev.flood = (echo_reply(), FLOOD);
        for (i, port) in [40030u16, 40031, 40032].into_iter().enumerate() {
            let ctl = client.connect(CONTROL_PORT, port);
            let (mut asked, mut answer) = (false, Vec::new());
            let ok = run(
                &mut server,
                &mut sdev,
                &mut client,
                &mut now,
                2000,
                |_, c, _| {
                    let t = c.tcp(ctl);
                    if t.can_send() && !asked {
                        t.send_slice(b"stats\n").unwrap();
                        asked = true;
                    }
                    read_all(t, &mut answer);
                    if answer.ends_with(b"\n") && t.may_send() {
                        t.close();
                    }
                    matches!(t.state(), tcp::State::Closed | tcp::State::TimeWait)
                },
            );
            let state = client.tcp(ctl).state();
            assert!(ok, "connection {i} ended in {state}, answer {answer:?}");
            assert!(answer.starts_with(b"rx "), "connection {i}: {answer:?}");
        }
        // The connections were served during the flood, not after it.
        assert!(sdev.flood.1 > 0, "the flood ended first");
        let most = sdev.most_taken.max(sdev.taken);
        assert!(
            most <= 4 * INGRESS_BATCH as u64,
            "one poll took {most} frames"
        );
        assert!(server.counters.rx_frames > 1000, "{}", server.counters);
    }

    #[test]
    fn exit_command_and_connection_limit() {
        let (mut server, mut sdev, mut client, mut now) = setup(opts());
        server.set_stats_hook(Box::new(|| "free_grants=7".into()));
        let ctl = client.connect(CONTROL_PORT, 40010);
        let mut asked = 0;
        let mut answer = Vec::new();
        let ok = run(
            &mut server,
            &mut sdev,
            &mut client,
            &mut now,
            5000,
            |s, c, now| {
                let t = c.tcp(ctl);
                if t.can_send() && asked == 0 {
                    t.send_slice(b"hello\nstats\nexit\n").unwrap();
                    asked = 1;
                }
                read_all(t, &mut answer);
                if !t.may_recv() && t.may_send() {
                    t.close();
                }
                s.finished(now).is_some()
            },
        );
        assert!(ok);
        let text = String::from_utf8(answer).unwrap();
        assert!(text.starts_with("commands: exit, stats\nrx "), "{text}");
        assert!(text.contains(" tx bytes, free_grants=7\n"), "{text}");
        assert!(text.ends_with("bye\n"), "{text}");
        assert_eq!(server.finished(now), Some(Finish::ExitCommand));

        // exit-after: two echo connections, then the stack says it is done.
        let (mut server, mut sdev, mut client, mut now) = setup(NetOptions {
            exit_after: 2,
            ..opts()
        });
        let a = client.connect(ECHO_PORT, 40020);
        let b = client.connect(ECHO_PORT, 40021);
        let ok = run(
            &mut server,
            &mut sdev,
            &mut client,
            &mut now,
            5000,
            |s, c, now| {
                for h in [a, b] {
                    let t = c.tcp(h);
                    if t.state() == tcp::State::Established {
                        t.close();
                    }
                }
                s.finished(now).is_some()
            },
        );
        assert!(ok, "{}", server.counters);
        assert_eq!(server.finished(now), Some(Finish::Connections(2)));
    }

    #[test]
    fn refused_transmits_are_retried_by_tcp() {
        let (mut server, mut sdev, mut client, mut now) = setup(NetOptions {
            bulk_bytes: 30_000,
            ..opts()
        });
        let bulk = client.connect(BULK_PORT, 40031);
        let mut got = Vec::new();
        // The server's device refuses every fourth frame.
        sdev.refuse_every = 4;
        let ok = (0..60_000).any(|_| {
            server.poll(&mut sdev, now);
            client.poll(now);
            now += 1;
            let t = client.tcp(bulk);
            read_all(t, &mut got);
            got.len() == 30_000
        });
        assert!(ok, "{}", server.counters);
        assert_eq!(pattern::check(3, 0, &got), None);
        assert!(server.counters.tx_dropped > 0);
    }

    /// An iperf3 client on the second interface: a reverse test with two streams, a
    /// garbage connection meanwhile, then the whole TEST_END exchange.
    #[test]
    fn iperf3_reverse_test_over_tcp() {
        use crate::iperf::{Event, state};
        let (mut server, mut sdev, mut client, mut now) = setup(opts());
        let events = Rc::new(RefCell::new(Vec::new()));
        let log = events.clone();
        server.set_iperf_hook(Box::new(move |e| log.borrow_mut().push(*e)));
        let cookie = *b"abcdefghijklmnopqrstuvwxyz234567abcd\0";
        let framed = |t: &str| {
            let mut v = (t.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(t.as_bytes());
            v
        };
        let ctl = client.connect(iperf::PORT, 41000);
        let junk = client.connect(iperf::PORT, 41001);
        let mut streams = Vec::new();
        let mut got = Vec::new();
        let mut step = 0;
        let mut received = [0u64; 2];
        let mut junk_closed = false;
        let mut cookie_sent = [false; 2];
        let ok = run(
            &mut server,
            &mut sdev,
            &mut client,
            &mut now,
            30_000,
            |_, c, _| {
                let t = c.tcp(junk);
                if t.state() == tcp::State::Established && t.may_send() && step > 0 {
                    // Garbage while a test is set up: a short "cookie", then FIN.
                    t.send_slice(b"GET / HTTP/1.0").unwrap();
                    t.close();
                }
                junk_closed |= !t.is_open() || t.state() == tcp::State::Closed;
                let t = c.tcp(ctl);
                read_all(t, &mut got);
                match step {
                    0 if t.may_send() => {
                        t.send_slice(&cookie).unwrap();
                        step = 1;
                    }
                    1 if got == [state::PARAM_EXCHANGE] => {
                        let p = framed(
                            r#"{"tcp":true,"time":1,"parallel":2,"len":8192,"reverse":true}"#,
                        );
                        t.send_slice(&p).unwrap();
                        step = 2;
                    }
                    2 if got.ends_with(&[state::CREATE_STREAMS]) => {
                        for port in [41002, 41003] {
                            streams.push(c.connect(iperf::PORT, port));
                        }
                        step = 3;
                    }
                    3 => {
                        for (i, &h) in streams.iter().enumerate() {
                            let s = c.tcp(h);
                            if !cookie_sent[i] && s.state() == tcp::State::Established {
                                s.send_slice(&cookie).unwrap();
                                cookie_sent[i] = true;
                            }
                        }
                        if cookie_sent == [true; 2] {
                            step = 4;
                        }
                    }
                    4 if got.ends_with(&[state::TEST_START, state::TEST_RUNNING]) => step = 5,
                    5 => {
                        for (i, &h) in streams.iter().enumerate() {
                            let s = c.tcp(h);
                            while s.can_recv() {
                                received[i] += s.recv(|b| (b.len(), b.len())).unwrap() as u64;
                            }
                        }
                        if received.iter().all(|&r| r > 100_000) {
                            c.tcp(ctl).send_slice(&[state::TEST_END]).unwrap();
                            step = 6;
                        }
                    }
                    6 if got.ends_with(&[state::EXCHANGE_RESULTS]) => {
                        let r = r#"{"cpu_util_total":0,"cpu_util_user":0,"cpu_util_system":0,"sender_has_retransmits":-1,"streams":[]}"#;
                        t.send_slice(&framed(r)).unwrap();
                        step = 7;
                    }
                    7 if got.ends_with(&[state::DISPLAY_RESULTS]) => {
                        t.send_slice(&[state::IPERF_DONE]).unwrap();
                        t.close();
                        for &h in &streams {
                            c.tcp(h).close();
                        }
                        step = 8;
                    }
                    _ => {}
                }
                step == 8 && junk_closed
            },
        );
        assert!(ok, "step {step}, control got {got:?}: {}", server.counters);
        // The server's results: one JSON message between EXCHANGE_RESULTS and
        // DISPLAY_RESULTS.
        let at = got
            .iter()
            .position(|&b| b == state::EXCHANGE_RESULTS)
            .unwrap()
            + 1;
        let len = u32::from_be_bytes(got[at..at + 4].try_into().unwrap()) as usize;
        let results = &got[at + 4..at + 4 + len];
        let ev = events.borrow().clone();
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0], Event::Started { test: 0 });
        let Event::Ended(r) = ev[1] else { panic!() };
        assert!(r.reverse && !r.aborted && r.streams == 2 && r.bytes_received == 0);
        let text = core::str::from_utf8(results).unwrap();
        assert!(text.contains(r#""sender_has_retransmits":0"#), "{text}");
        // What the server reports sent covers what arrived (the rest was in flight).
        let mut reported = 0;
        iperf::json::elements(
            match iperf::json::get(results, "streams").unwrap() {
                Some(iperf::json::Value::Array(a)) => a,
                _ => panic!("{text}"),
            },
            |v| {
                if let iperf::json::Value::Object(o) = v {
                    reported += iperf::json::get(o, "bytes").unwrap().unwrap().int() as u64;
                }
            },
        )
        .unwrap();
        assert_eq!(reported, r.bytes_sent);
        assert!(
            r.bytes_sent >= received.iter().sum::<u64>(),
            "{r:?} {received:?}"
        );
        run(
            &mut server,
            &mut sdev,
            &mut client,
            &mut now,
            2000,
            |_, _, _| false,
        );
        let c = &server.counters;
        assert_eq!(
            (c.iperf_tests, c.iperf_completed, c.iperf_failed),
            (1, 1, 0),
            "{c}"
        );
        assert_eq!(c.iperf_connections, 4, "{c}");
        assert_eq!(
            (c.accepted, c.completed),
            (0, 0),
            "iperf is not counted there"
        );
    }

    #[test]
    fn hostile_device_parameters_are_refused() {
        let (mut d, _) = cable([0x01, 0, 0, 0, 0, 1], CLIENT_MAC);
        assert_eq!(
            NetStack::new(&opts(), &mut d, 0, 1).err(),
            Some(StackError::BadMac([1, 0, 0, 0, 0, 1]))
        );
        let (mut d, _) = cable([0xff; 6], CLIENT_MAC);
        assert!(NetStack::new(&opts(), &mut d, 0, 1).is_err());
        assert!(!is_icmp_echo_request(&[0; 13]));
        assert!(!is_icmp_echo_request(&[0; 40]));
    }
}
