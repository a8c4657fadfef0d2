//! The protocol side of an iperf3 server (iperf 3.x, esnet/iperf `src/iperf_api.c`,
//! `src/iperf_server_api.c`, `src/iperf_tcp.c`), free of sockets so that it is tested on
//! the host; `netstack` moves the bytes.
//!
//! Every connection to [`PORT`] first sends a [`COOKIE_SIZE`]-byte cookie (36 characters
//! and a NUL). With no test in progress the connection becomes the control connection
//! of a new test; while that test waits for its data streams, a connection with the same
//! cookie becomes one of them; anything else is answered `ACCESS_DENIED` and closed.
//! The control connection then runs, with one-byte states and JSON messages framed by a
//! four-byte big-endian length:
//!
//! | server sends | then waits for |
//! |---|---|
//! | `PARAM_EXCHANGE` | the parameters JSON |
//! | `CREATE_STREAMS` | `parallel` (twice that with `bidirectional`) data connections |
//! | `TEST_START`, `TEST_RUNNING` | `TEST_END` (the client ends the test: `-t`, `-n`, `-k`) |
//! | `EXCHANGE_RESULTS` | the client's results JSON |
//! | its results JSON, `DISPLAY_RESULTS` | `IPERF_DONE` |
//!
//! Data is counted only between `TEST_RUNNING` and `TEST_END`, and the results sent to
//! the client are exactly those counts, so the client's `sum_received` (forward) or
//! `sum_sent` (`-R`) equals [`Report`]'s bytes. Stream ids follow iperf3's numbering
//! (1, 3, 4, ...). Not supported: UDP and SCTP (answered `SERVER_ERROR`), `-O` omit
//! periods (the omitted seconds are counted), authentication, `--get-server-output`
//! (the client gets no server text).
//!
//! Everything the peer sends is hostile: messages are bounded ([`MAX_MESSAGE`]), the
//! JSON reader has a depth limit, and any protocol violation fails that test only (the
//! caller closes its connections; the server takes the next client). A test whose
//! connections stay silent for [`IDLE_TIMEOUT_MS`] is failed too.

use alloc::vec::Vec;
use core::fmt::{self, Write as _};

/// iperf3's port.
pub const PORT: u16 = 5201;
/// Cookie length: 36 characters and a NUL.
pub const COOKIE_SIZE: usize = 37;
/// Most data streams one test may ask for (per direction); the server's socket pool is
/// sized for it.
pub const MAX_STREAMS: usize = 4;
/// Longest JSON message accepted (iperf3 3.17 has 8 KiB for parameters).
pub const MAX_MESSAGE: usize = 16 << 10;
/// Largest block length (`-l`), iperf3's own limit.
pub const MAX_BLOCK: u64 = 1 << 20;
/// A test whose connections carry nothing for this long is failed.
pub const IDLE_TIMEOUT_MS: u64 = 30_000;
/// A new connection that does not complete its cookie in this time is dropped.
pub const COOKIE_TIMEOUT_MS: u64 = 10_000;

/// The one-byte states (`iperf_api.h`).
pub mod state {
    pub const TEST_START: u8 = 1;
    pub const TEST_RUNNING: u8 = 2;
    pub const TEST_END: u8 = 4;
    pub const PARAM_EXCHANGE: u8 = 9;
    pub const CREATE_STREAMS: u8 = 10;
    pub const SERVER_TERMINATE: u8 = 11;
    pub const CLIENT_TERMINATE: u8 = 12;
    pub const EXCHANGE_RESULTS: u8 = 13;
    pub const DISPLAY_RESULTS: u8 = 14;
    pub const IPERF_DONE: u8 = 16;
    /// -1 as a signed char.
    pub const ACCESS_DENIED: u8 = 0xff;
    /// -2 as a signed char; followed by two big-endian 32-bit numbers (iperf's error
    /// number and errno).
    pub const SERVER_ERROR: u8 = 0xfe;
}

/// iperf3 error numbers sent after `SERVER_ERROR` (`iperf_api.h`).
mod ierr {
    pub const NUMSTREAMS: u32 = 6;
    pub const BLOCKSIZE: u32 = 7;
    pub const PROTOCOL: u32 = 131;
}

/// A minimal JSON reader (RFC 8259) over untrusted bytes: validates the whole text,
/// hands out the members of an object one level at a time, never allocates, and
/// refuses nesting deeper than [`json::MAX_DEPTH`].
pub mod json {
    /// Deepest nesting accepted.
    pub const MAX_DEPTH: usize = 16;

    /// A value; strings, objects and arrays as their raw text (escapes undecoded).
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum Value<'a> {
        Null,
        Bool(bool),
        Number(f64),
        /// The bytes between the quotes.
        Str(&'a [u8]),
        /// `{...}`, brackets included.
        Object(&'a [u8]),
        /// `[...]`, brackets included.
        Array(&'a [u8]),
    }

    impl Value<'_> {
        /// The value as an integer the way cJSON's `valueint` reads it: numbers
        /// truncated and saturated, `true` as 1, anything else 0.
        pub fn int(&self) -> i64 {
            match *self {
                // `as` saturates and maps NaN to 0.
                Self::Number(n) => n as i64,
                Self::Bool(true) => 1,
                _ => 0,
            }
        }
    }

    /// Why a text is not JSON (or too deep).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Error {
        /// Byte offset of the problem.
        pub at: usize,
        /// What was wrong.
        pub what: &'static str,
    }

    struct Parser<'a> {
        s: &'a [u8],
        pos: usize,
    }

    impl<'a> Parser<'a> {
        fn err<T>(&self, what: &'static str) -> Result<T, Error> {
            Err(Error { at: self.pos, what })
        }

        fn ws(&mut self) {
            while matches!(self.s.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.pos += 1;
            }
        }

        fn eat(&mut self, c: u8) -> bool {
            self.ws();
            if self.s.get(self.pos) == Some(&c) {
                self.pos += 1;
                true
            } else {
                false
            }
        }

        fn literal(&mut self, word: &[u8], v: Value<'a>) -> Result<Value<'a>, Error> {
            if self.s[self.pos..].starts_with(word) {
                self.pos += word.len();
                Ok(v)
            } else {
                self.err("bad literal")
            }
        }

        fn value(&mut self, depth: usize) -> Result<Value<'a>, Error> {
            self.ws();
            let start = self.pos;
            match self.s.get(self.pos) {
                None => self.err("truncated"),
                Some(b'n') => self.literal(b"null", Value::Null),
                Some(b't') => self.literal(b"true", Value::Bool(true)),
                Some(b'f') => self.literal(b"false", Value::Bool(false)),
                Some(b'"') => self.string().map(Value::Str),
                Some(b'{') => {
                    self.object(depth + 1, &mut |_, _| {})?;
                    Ok(Value::Object(&self.s[start..self.pos]))
                }
                Some(b'[') => {
                    self.array(depth + 1, &mut |_| {})?;
                    Ok(Value::Array(&self.s[start..self.pos]))
                }
                Some(b'-' | b'0'..=b'9') => self.number(),
                Some(_) => self.err("unexpected character"),
            }
        }

        fn string(&mut self) -> Result<&'a [u8], Error> {
            self.pos += 1; // the opening quote
            let start = self.pos;
            loop {
                match self.s.get(self.pos) {
                    None => return self.err("unterminated string"),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        self.pos += 1;
                        match self.s.get(self.pos) {
                            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                            Some(b'u') => {
                                let hex = self.s.get(self.pos + 1..self.pos + 5);
                                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                    return self.err("bad \\u escape");
                                }
                                self.pos += 4;
                            }
                            _ => return self.err("bad escape"),
                        }
                    }
                    Some(&c) if c < 0x20 => return self.err("control character in string"),
                    Some(_) => {}
                }
                self.pos += 1;
            }
            let text = &self.s[start..self.pos];
            self.pos += 1;
            Ok(text)
        }

        fn digits(&mut self) -> usize {
            let start = self.pos;
            while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                self.pos += 1;
            }
            self.pos - start
        }

        fn number(&mut self) -> Result<Value<'a>, Error> {
            let start = self.pos;
            self.pos += usize::from(self.s[self.pos] == b'-');
            let int_start = self.pos;
            match self.digits() {
                0 => return self.err("bad number"),
                n if n > 1 && self.s[int_start] == b'0' => return self.err("leading zero"),
                _ => {}
            }
            if self.s.get(self.pos) == Some(&b'.') {
                self.pos += 1;
                if self.digits() == 0 {
                    return self.err("bad fraction");
                }
            }
            if matches!(self.s.get(self.pos), Some(b'e' | b'E')) {
                self.pos += 1;
                if matches!(self.s.get(self.pos), Some(b'+' | b'-')) {
                    self.pos += 1;
                }
                if self.digits() == 0 {
                    return self.err("bad exponent");
                }
            }
            // ASCII by construction.
            let text = core::str::from_utf8(&self.s[start..self.pos]).unwrap_or("x");
            match text.parse::<f64>() {
                Ok(n) => Ok(Value::Number(n)),
                Err(_) => self.err("bad number"),
            }
        }

        fn object(
            &mut self,
            depth: usize,
            f: &mut dyn FnMut(&'a [u8], Value<'a>),
        ) -> Result<(), Error> {
            if depth > MAX_DEPTH {
                return self.err("nested too deeply");
            }
            self.pos += 1; // '{'
            if self.eat(b'}') {
                return Ok(());
            }
            loop {
                self.ws();
                if self.s.get(self.pos) != Some(&b'"') {
                    return self.err("expected a key");
                }
                let key = self.string()?;
                if !self.eat(b':') {
                    return self.err("expected ':'");
                }
                let v = self.value(depth)?;
                f(key, v);
                if self.eat(b',') {
                    continue;
                }
                if self.eat(b'}') {
                    return Ok(());
                }
                return self.err("expected ',' or '}'");
            }
        }

        fn array(&mut self, depth: usize, f: &mut dyn FnMut(Value<'a>)) -> Result<(), Error> {
            if depth > MAX_DEPTH {
                return self.err("nested too deeply");
            }
            self.pos += 1; // '['
            if self.eat(b']') {
                return Ok(());
            }
            loop {
                let v = self.value(depth)?;
                f(v);
                if self.eat(b',') {
                    continue;
                }
                if self.eat(b']') {
                    return Ok(());
                }
                return self.err("expected ',' or ']'");
            }
        }

        fn end(&mut self) -> Result<(), Error> {
            self.ws();
            if self.pos == self.s.len() {
                Ok(())
            } else {
                self.err("trailing characters")
            }
        }
    }

    /// Validates `text` as one JSON object and calls `f` with each member's raw key and
    /// value, in order (a repeated key is seen twice; cJSON keeps the first).
    pub fn members<'a>(
        text: &'a [u8],
        mut f: impl FnMut(&'a [u8], Value<'a>),
    ) -> Result<(), Error> {
        let mut p = Parser { s: text, pos: 0 };
        if !p.eat(b'{') {
            return p.err("not an object");
        }
        p.pos -= 1;
        p.object(1, &mut f)?;
        p.end()
    }

    /// Validates `text` as one JSON array and calls `f` with each element.
    pub fn elements<'a>(text: &'a [u8], mut f: impl FnMut(Value<'a>)) -> Result<(), Error> {
        let mut p = Parser { s: text, pos: 0 };
        if !p.eat(b'[') {
            return p.err("not an array");
        }
        p.pos -= 1;
        p.array(1, &mut f)?;
        p.end()
    }

    /// The first member named `key` of the object `text` (which must be valid).
    pub fn get<'a>(text: &'a [u8], key: &str) -> Result<Option<Value<'a>>, Error> {
        let mut found = None;
        members(text, |k, v| {
            if found.is_none() && k == key.as_bytes() {
                found = Some(v);
            }
        })?;
        Ok(found)
    }
}

/// The transport a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// A test's parameters, as `get_parameters` reads them: a flag is set by its key's
/// presence, whatever its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub protocol: Protocol,
    pub reverse: bool,
    pub bidirectional: bool,
    /// Streams per direction.
    pub parallel: u32,
    /// Block length (`-l`).
    pub len: u64,
    /// `-t` seconds (0 with `-n`/`-k`).
    pub time_s: u64,
    /// `-n` bytes (0: no limit).
    pub bytes: u64,
    /// `-k` blocks (0: no limit).
    pub blocks: u64,
    /// `-O` seconds (not honoured: counted like the rest).
    pub omit: u64,
    /// `-N`.
    pub nodelay: bool,
}

impl Params {
    /// Reads the parameters JSON.
    pub fn parse(text: &[u8]) -> Result<Self, json::Error> {
        let mut p = Self {
            protocol: Protocol::Tcp,
            reverse: false,
            bidirectional: false,
            parallel: 1,
            len: 128 << 10,
            time_s: 0,
            bytes: 0,
            blocks: 0,
            omit: 0,
            nodelay: false,
        };
        let clamp = |v: json::Value<'_>| u64::try_from(v.int()).unwrap_or(0);
        let mut seen = 0u32;
        json::members(text, |k, v| {
            // cJSON_GetObjectItem finds the first of repeated keys.
            let bit = |i: u32| 1u32 << i;
            let first = |seen: &mut u32, i: u32| {
                let f = *seen & bit(i) == 0;
                *seen |= bit(i);
                f
            };
            match k {
                b"tcp" if first(&mut seen, 0) => p.protocol = Protocol::Tcp,
                b"udp" if first(&mut seen, 1) => p.protocol = Protocol::Udp,
                b"sctp" if first(&mut seen, 2) => p.protocol = Protocol::Sctp,
                b"reverse" => p.reverse = true,
                b"bidirectional" => p.bidirectional = true,
                b"nodelay" => p.nodelay = true,
                b"parallel" if first(&mut seen, 3) => {
                    p.parallel = u32::try_from(v.int()).unwrap_or(0);
                }
                b"len" if first(&mut seen, 4) => p.len = clamp(v),
                b"time" if first(&mut seen, 5) => p.time_s = clamp(v),
                b"num" if first(&mut seen, 6) => p.bytes = clamp(v),
                b"blockcount" if first(&mut seen, 7) => p.blocks = clamp(v),
                b"omit" if first(&mut seen, 8) => p.omit = clamp(v),
                _ => {}
            }
        })?;
        // iperf sets the protocol in key order tcp, udp, sctp: the last present wins.
        if seen & 4 != 0 {
            p.protocol = Protocol::Sctp;
        } else if seen & 2 != 0 {
            p.protocol = Protocol::Udp;
        }
        Ok(p)
    }

    /// The iperf error number a server that cannot run this test answers, if any.
    fn refusal(&self) -> Option<u32> {
        if self.protocol != Protocol::Tcp {
            Some(ierr::PROTOCOL)
        } else if self.parallel == 0 || self.parallel as usize > MAX_STREAMS {
            Some(ierr::NUMSTREAMS)
        } else if self.len == 0 || self.len > MAX_BLOCK {
            Some(ierr::BLOCKSIZE)
        } else {
            None
        }
    }

    /// Bytes the server may send in all (reverse and bidirectional tests).
    fn send_limit(&self) -> u64 {
        match (self.bytes, self.blocks) {
            (0, 0) => u64::MAX,
            (0, k) => k.saturating_mul(self.len),
            (n, _) => n,
        }
    }
}

/// Why a control connection was failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A message was not JSON (or not what was expected).
    Json(json::Error),
    /// A message longer than [`MAX_MESSAGE`], or of length 0.
    MessageLength(u32),
    /// A state byte the server does not expect now.
    UnexpectedState(u8),
    /// The client's results lack what iperf3 requires.
    BadResults,
    /// The connection is not the control connection of a test in progress.
    NotCurrent,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(e) => write!(f, "bad JSON at byte {}: {}", e.at, e.what),
            Self::MessageLength(n) => write!(f, "message length {n} refused"),
            Self::UnexpectedState(s) => write!(f, "unexpected state byte {s}"),
            Self::BadResults => f.write_str("results lack required fields"),
            Self::NotCurrent => f.write_str("not the current test"),
        }
    }
}

/// What a connection turned out to be once its cookie arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The control connection of test `tid`.
    Control(u64),
    /// Data stream `index` of test `tid`.
    Stream { tid: u64, index: usize },
    /// To be answered `ACCESS_DENIED` and closed.
    Denied,
}

/// One finished (or failed after it started) test, as the guest reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// k: tests started so far, from 0.
    pub test: u32,
    pub reverse: bool,
    pub bidirectional: bool,
    /// Data connections.
    pub streams: usize,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// From `TEST_START` to `TEST_END`.
    pub duration_ms: u64,
    /// The test ended without `TEST_END` (client gone, protocol error, idle).
    pub aborted: bool,
}

impl fmt::Display for Report {
    /// The `iperf-result:` JSON (`"aborted":true` added only for an aborted test).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{\"test\":{},\"reverse\":{},\"streams\":{},\"bytes_received\":{},\
             \"bytes_sent\":{},\"seconds\":{}.{:03}",
            self.test,
            self.reverse,
            self.streams,
            self.bytes_received,
            self.bytes_sent,
            self.duration_ms / 1000,
            self.duration_ms % 1000
        )?;
        if self.bidirectional {
            f.write_str(",\"bidirectional\":true")?;
        }
        if self.aborted {
            f.write_str(",\"aborted\":true")?;
        }
        f.write_str("}")
    }
}

/// What the server tells its user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Test k's streams are all connected; `TEST_START` is about to go out.
    Started { test: u32 },
    /// The test ended (`TEST_END`, or aborted after it started).
    Ended(Report),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the parameters JSON.
    Params,
    /// Waiting for the data connections.
    Streams,
    /// Between `TEST_RUNNING` and `TEST_END`.
    Running,
    /// Waiting for the client's results JSON.
    Results,
    /// Waiting for `IPERF_DONE`.
    Display,
    /// Over: done, refused or failed; only the output is left to send.
    Over,
}

struct Stream {
    sender: bool,
    bytes: u64,
}

struct Test {
    tid: u64,
    cookie: [u8; COOKIE_SIZE],
    phase: Phase,
    params: Option<Params>,
    /// The message being received (length prefix included).
    msg: Vec<u8>,
    /// Bytes for the control connection.
    out: Vec<u8>,
    streams: Vec<Stream>,
    number: Option<u32>,
    started_ms: u64,
    ended_ms: u64,
    sent_total: u64,
    last_activity_ms: u64,
    ended: bool,
}

impl Test {
    fn wanted_streams(&self) -> usize {
        self.params.map_or(0, |p| {
            p.parallel as usize * if p.bidirectional { 2 } else { 1 }
        })
    }

    /// Consumes framed-message bytes from `data`; returns the message once complete.
    fn take_message(&mut self, data: &mut &[u8]) -> Result<Option<Vec<u8>>, Error> {
        while !data.is_empty() {
            if self.msg.len() < 4 {
                let n = (4 - self.msg.len()).min(data.len());
                self.msg.extend_from_slice(&data[..n]);
                *data = &data[n..];
                if self.msg.len() == 4 {
                    let len =
                        u32::from_be_bytes([self.msg[0], self.msg[1], self.msg[2], self.msg[3]]);
                    if len == 0 || len as usize > MAX_MESSAGE {
                        return Err(Error::MessageLength(len));
                    }
                }
                continue;
            }
            let len =
                u32::from_be_bytes([self.msg[0], self.msg[1], self.msg[2], self.msg[3]]) as usize;
            let n = (4 + len - self.msg.len()).min(data.len());
            self.msg.extend_from_slice(&data[..n]);
            *data = &data[n..];
            if self.msg.len() == 4 + len {
                let mut m = core::mem::take(&mut self.msg);
                m.drain(..4);
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    fn push_json(&mut self, text: &str) {
        self.out
            .extend_from_slice(&(text.len() as u32).to_be_bytes());
        self.out.extend_from_slice(text.as_bytes());
    }

    fn results_json(&self) -> alloc::string::String {
        let mut s = alloc::string::String::new();
        let sender = self.params.is_some_and(|p| p.reverse || p.bidirectional);
        let secs = self.ended_ms.saturating_sub(self.started_ms);
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "{{\"cpu_util_total\":0,\"cpu_util_user\":0,\"cpu_util_system\":0,\
             \"sender_has_retransmits\":{},\"streams\":[",
            if sender { 0 } else { -1 }
        );
        for (i, st) in self.streams.iter().enumerate() {
            let _ = write!(
                s,
                "{}{{\"id\":{},\"bytes\":{},\"retransmits\":-1,\"jitter\":0,\"errors\":0,\
                 \"packets\":0,\"start_time\":0,\"end_time\":{}.{:03}}}",
                if i == 0 { "" } else { "," },
                stream_id(i),
                st.bytes,
                secs / 1000,
                secs % 1000
            );
        }
        s.push_str("]}");
        s
    }

    fn report(&self, now_ms: u64, aborted: bool) -> Option<Report> {
        let number = self.number?;
        let p = self.params?;
        let (mut rx, mut tx) = (0, 0);
        for s in &self.streams {
            if s.sender {
                tx += s.bytes;
            } else {
                rx += s.bytes;
            }
        }
        Some(Report {
            test: number,
            reverse: p.reverse,
            bidirectional: p.bidirectional,
            streams: self.streams.len(),
            bytes_received: rx,
            bytes_sent: tx,
            duration_ms: now_ms.saturating_sub(self.started_ms),
            aborted,
        })
    }
}

/// iperf3's stream id for the `index`th stream (`iperf_add_stream`: 1, then 3, 4, ...).
pub fn stream_id(index: usize) -> usize {
    if index == 0 { 1 } else { index + 2 }
}

/// The server: one test at a time.
#[derive(Default)]
pub struct Server {
    test: Option<Test>,
    next_tid: u64,
    started: u32,
    events: Vec<Event>,
    /// Tests that reached `IPERF_DONE`.
    pub completed: u64,
    /// Tests failed (protocol error, client gone, idle) or refused.
    pub failed: u64,
    /// Connections denied.
    pub denied: u64,
}

impl Server {
    /// A server with no test.
    pub fn new() -> Self {
        Self::default()
    }

    fn current(&mut self, tid: u64) -> Option<&mut Test> {
        self.test.as_mut().filter(|t| t.tid == tid)
    }

    /// Whether a test is in progress (not over).
    pub fn busy(&self) -> bool {
        self.test.as_ref().is_some_and(|t| t.phase != Phase::Over)
    }

    /// A connection sent its cookie: what is it?
    pub fn classify(&mut self, cookie: &[u8; COOKIE_SIZE], now_ms: u64) -> Role {
        if let Some(t) = self.test.as_mut().filter(|t| t.phase != Phase::Over) {
            if t.phase == Phase::Streams && &t.cookie == cookie {
                let index = t.streams.len();
                let p = t.params.expect("parameters precede streams");
                // Receivers first (`iperf_run_server`): all of them, or the first half
                // of a bidirectional test.
                let sender = p.reverse || (p.bidirectional && index >= p.parallel as usize);
                t.streams.push(Stream { sender, bytes: 0 });
                t.last_activity_ms = now_ms;
                if t.streams.len() == t.wanted_streams() {
                    let k = self.started;
                    self.started += 1;
                    t.number = Some(k);
                    t.started_ms = now_ms;
                    t.phase = Phase::Running;
                    t.out
                        .extend_from_slice(&[state::TEST_START, state::TEST_RUNNING]);
                    self.events.push(Event::Started { test: k });
                }
                return Role::Stream { tid: t.tid, index };
            }
            self.denied += 1;
            return Role::Denied;
        }
        let tid = self.next_tid;
        self.next_tid += 1;
        self.test = Some(Test {
            tid,
            cookie: *cookie,
            phase: Phase::Params,
            params: None,
            msg: Vec::new(),
            out: alloc::vec![state::PARAM_EXCHANGE],
            streams: Vec::new(),
            number: None,
            started_ms: now_ms,
            ended_ms: now_ms,
            sent_total: 0,
            last_activity_ms: now_ms,
            ended: false,
        });
        Role::Control(tid)
    }

    /// Ends the current test (if it is `tid`) as failed.
    fn fail(&mut self, tid: u64, now_ms: u64) {
        let Some(t) = self.current(tid) else { return };
        if t.phase == Phase::Over {
            return;
        }
        t.phase = Phase::Over;
        // The caller drops the connection: nothing more goes out.
        t.out.clear();
        let report = if t.ended {
            None
        } else {
            t.report(now_ms, true)
        };
        t.ended = true;
        self.failed += 1;
        if let Some(r) = report {
            self.events.push(Event::Ended(r));
        }
    }

    /// Bytes from control connection `tid`. An error fails the test; the caller drops
    /// the connection.
    pub fn control_input(&mut self, tid: u64, mut data: &[u8], now_ms: u64) -> Result<(), Error> {
        let r = self.control_input_inner(tid, &mut data, now_ms);
        if r.is_err() {
            self.fail(tid, now_ms);
        }
        r
    }

    fn control_input_inner(
        &mut self,
        tid: u64,
        data: &mut &[u8],
        now_ms: u64,
    ) -> Result<(), Error> {
        let Some(t) = self.current(tid).filter(|t| t.phase != Phase::Over) else {
            return Err(Error::NotCurrent);
        };
        if !data.is_empty() {
            t.last_activity_ms = now_ms;
        }
        while !data.is_empty() {
            match t.phase {
                Phase::Params => {
                    let Some(m) = t.take_message(data)? else {
                        break;
                    };
                    let p = Params::parse(&m).map_err(Error::Json)?;
                    if let Some(e) = p.refusal() {
                        t.out.push(state::SERVER_ERROR);
                        t.out.extend_from_slice(&e.to_be_bytes());
                        t.out.extend_from_slice(&0u32.to_be_bytes());
                        t.phase = Phase::Over;
                        self.failed += 1;
                        return Ok(());
                    }
                    t.params = Some(p);
                    t.phase = Phase::Streams;
                    t.out.push(state::CREATE_STREAMS);
                }
                Phase::Results => {
                    let Some(m) = t.take_message(data)? else {
                        break;
                    };
                    check_results(&m)?;
                    let r = t.results_json();
                    t.push_json(&r);
                    t.out.push(state::DISPLAY_RESULTS);
                    t.phase = Phase::Display;
                }
                phase => {
                    let byte = data[0];
                    *data = &data[1..];
                    match (phase, byte) {
                        (Phase::Running, state::TEST_END) => {
                            t.phase = Phase::Results;
                            t.ended = true;
                            t.ended_ms = now_ms;
                            t.out.push(state::EXCHANGE_RESULTS);
                            if let Some(r) = t.report(now_ms, false) {
                                self.events.push(Event::Ended(r));
                            }
                            return self.control_input_inner(tid, data, now_ms);
                        }
                        (Phase::Display, state::IPERF_DONE) => {
                            t.phase = Phase::Over;
                            self.completed += 1;
                            return Ok(());
                        }
                        // iperf's server ignores a TEST_START from the client.
                        (Phase::Streams | Phase::Running, state::TEST_START) => {}
                        (_, state::CLIENT_TERMINATE) => {
                            self.fail(tid, now_ms);
                            return Ok(());
                        }
                        (_, b) => return Err(Error::UnexpectedState(b)),
                    }
                }
            }
        }
        Ok(())
    }

    /// The bytes waiting to go out on control connection `tid`.
    pub fn control_output(&self, tid: u64) -> &[u8] {
        self.test
            .as_ref()
            .filter(|t| t.tid == tid)
            .map_or(&[], |t| &t.out[..])
    }

    /// `n` bytes of [`Server::control_output`] were sent.
    pub fn control_sent(&mut self, tid: u64, n: usize) {
        if let Some(t) = self.current(tid) {
            let n = n.min(t.out.len());
            t.out.drain(..n);
        }
    }

    /// Whether control connection `tid` has nothing more to do (its test is over and
    /// its output sent, or another test replaced it): the caller closes it.
    pub fn control_finished(&self, tid: u64) -> bool {
        match self.test.as_ref().filter(|t| t.tid == tid) {
            Some(t) => t.phase == Phase::Over && t.out.is_empty(),
            None => true,
        }
    }

    /// Control connection `tid` was closed or reset by the client.
    pub fn control_closed(&mut self, tid: u64, now_ms: u64) {
        if let Some(t) = self.current(tid) {
            t.out.clear();
        }
        self.fail(tid, now_ms);
    }

    /// Whether data stream connections of `tid` still belong to a running test.
    pub fn stream_live(&self, tid: u64) -> bool {
        self.test
            .as_ref()
            .is_some_and(|t| t.tid == tid && matches!(t.phase, Phase::Streams | Phase::Running))
    }

    /// Whether `tid` asked for `-N` (no Nagle on its data streams).
    pub fn nodelay(&self, tid: u64) -> bool {
        self.test
            .as_ref()
            .filter(|t| t.tid == tid)
            .and_then(|t| t.params)
            .is_some_and(|p| p.nodelay)
    }

    /// `n` bytes arrived on stream `index` of `tid` (counted while running).
    pub fn stream_received(&mut self, tid: u64, index: usize, n: usize, now_ms: u64) {
        if let Some(t) = self.current(tid) {
            if n > 0 {
                t.last_activity_ms = now_ms;
            }
            if t.phase == Phase::Running
                && let Some(s) = t.streams.get_mut(index).filter(|s| !s.sender)
            {
                s.bytes += n as u64;
            }
        }
    }

    /// How many bytes stream `index` of `tid` may send now.
    pub fn send_allowance(&self, tid: u64, index: usize) -> u64 {
        self.test
            .as_ref()
            .filter(|t| t.tid == tid && t.phase == Phase::Running)
            .filter(|t| t.streams.get(index).is_some_and(|s| s.sender))
            .and_then(|t| {
                t.params
                    .map(|p| p.send_limit().saturating_sub(t.sent_total))
            })
            .unwrap_or(0)
    }

    /// Stream `index` of `tid` queued `n` bytes.
    pub fn stream_sent(&mut self, tid: u64, index: usize, n: usize, now_ms: u64) {
        if let Some(t) = self.current(tid) {
            if t.phase != Phase::Running {
                return;
            }
            if let Some(s) = t.streams.get_mut(index).filter(|s| s.sender) {
                s.bytes += n as u64;
                t.sent_total += n as u64;
                if n > 0 {
                    t.last_activity_ms = now_ms;
                }
            }
        }
    }

    /// Fails a test that stayed silent for [`IDLE_TIMEOUT_MS`].
    pub fn tick(&mut self, now_ms: u64) {
        if let Some(t) = self.test.as_ref()
            && t.phase != Phase::Over
            && now_ms.saturating_sub(t.last_activity_ms) >= IDLE_TIMEOUT_MS
        {
            let tid = t.tid;
            self.fail(tid, now_ms);
        }
    }

    /// The next event, oldest first.
    pub fn take_event(&mut self) -> Option<Event> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }
}

/// iperf3's `get_results` requirements: the CPU figures, `sender_has_retransmits`, and
/// a `streams` array of objects with id, bytes, retransmits, jitter, errors, packets.
fn check_results(text: &[u8]) -> Result<(), Error> {
    let mut need = 0u32;
    let mut streams = None;
    json::members(text, |k, v| {
        let bit = match k {
            b"cpu_util_total" => 1,
            b"cpu_util_user" => 2,
            b"cpu_util_system" => 4,
            b"sender_has_retransmits" => 8,
            b"streams" => {
                streams.get_or_insert(v);
                16
            }
            _ => 0,
        };
        need |= bit;
    })
    .map_err(Error::Json)?;
    let Some(json::Value::Array(list)) = streams else {
        return Err(Error::BadResults);
    };
    if need != 31 {
        return Err(Error::BadResults);
    }
    let mut ok = true;
    json::elements(list, |v| {
        let json::Value::Object(o) = v else {
            ok = false;
            return;
        };
        let mut have = 0u32;
        // Already validated as part of `text`.
        let _ = json::members(o, |k, _| {
            have |= match k {
                b"id" => 1,
                b"bytes" => 2,
                b"retransmits" => 4,
                b"jitter" => 8,
                b"errors" => 16,
                b"packets" => 32,
                _ => 0,
            };
        });
        ok &= have == 63;
    })
    .map_err(Error::Json)?;
    if ok { Ok(()) } else { Err(Error::BadResults) }
}

#[cfg(test)]
mod tests {
    use super::json::Value;
    use super::*;
    use alloc::string::String;
    use alloc::vec;

    const COOKIE: [u8; COOKIE_SIZE] = *b"abcdefghijklmnopqrstuvwxyz234567abcd\0";

    fn framed(text: &str) -> Vec<u8> {
        let mut v = (text.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(text.as_bytes());
        v
    }

    fn take_out(s: &mut Server, tid: u64) -> Vec<u8> {
        let out = s.control_output(tid).to_vec();
        s.control_sent(tid, out.len());
        out
    }

    const CLIENT_RESULTS: &str = r#"{"cpu_util_total":1.5,"cpu_util_user":0.25,"cpu_util_system":1.2e-05,"sender_has_retransmits":1,"congestion_used":"cubic","streams":[{"id":1,"bytes":1000,"retransmits":0,"jitter":0,"errors":0,"omitted_errors":0,"packets":0,"start_time":0,"end_time":1.000123}]}"#;

    #[test]
    fn json_reads_what_iperf3_writes() {
        let text = br#" {"tcp":true,"omit":0,"time":2,"num":0,"blockcount":0,"parallel":2,"len":131072,"pacing_timer":1000,"client_version":"3.12","title":"a \"b\" \u00e9\\","x":[1,-2.5e3,{"y":null}],"z":false} "#;
        let mut keys = Vec::new();
        json::members(text, |k, v| {
            keys.push((String::from_utf8(k.to_vec()).unwrap(), v))
        })
        .unwrap();
        assert_eq!(keys.len(), 12);
        assert_eq!(keys[2], ("time".into(), Value::Number(2.0)));
        assert_eq!(keys[9].1, Value::Str(br#"a \"b\" \u00e9\\"#));
        assert!(matches!(
            keys[10].1,
            Value::Array(b"[1,-2.5e3,{\"y\":null}]")
        ));
        assert_eq!(keys[11].1, Value::Bool(false));
        let mut n = 0;
        json::elements(b"[1,-2.5e3,{\"y\":null}]", |_| n += 1).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            json::get(text, "parallel").unwrap(),
            Some(Value::Number(2.0))
        );
        assert_eq!(json::get(text, "absent").unwrap(), None);
        assert_eq!(Value::Number(1e300).int(), i64::MAX);
        assert_eq!(Value::Number(-3.9).int(), -3);
        assert_eq!(Value::Str(b"9").int(), 0);
    }

    #[test]
    fn json_refuses_hostile_text() {
        let deep = "[".repeat(100_000);
        let deep_obj = format!("{{\"a\":{}1{}}}", "[".repeat(17), "]".repeat(17));
        let ok_depth = format!("{{\"a\":{}1{}}}", "[".repeat(15), "]".repeat(15));
        assert!(json::members(ok_depth.as_bytes(), |_, _| {}).is_ok());
        for bad in [
            "",
            "{",
            "[]",
            "{}x",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{a:1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"unterminated}",
            "{\"a\":\"tab\there\"}",
            "{\"a\":[1 2]}",
            "{\"a\":1 \"b\":2}",
            &deep,
            &deep_obj,
        ] {
            assert!(json::members(bad.as_bytes(), |_, _| {}).is_err(), "{bad:?}");
        }
        assert_eq!(
            json::members(deep_obj.as_bytes(), |_, _| {})
                .unwrap_err()
                .what,
            "nested too deeply"
        );
        // Random bytes never panic (fixed seed: xorshift).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..2000 {
            let text: Vec<u8> = (0..len % 64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let alphabet = b"{}[]\":,0123456789.eE-+truefalsnl\\ ab";
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = json::members(&text, |_, _| {});
            let _ = Params::parse(&text);
            let _ = check_results(&text);
        }
    }

    #[test]
    fn params_follow_iperf3_semantics() {
        let p = Params::parse(
            br#"{"tcp":true,"omit":0,"time":2,"parallel":2,"len":65536,"reverse":true,"nodelay":true,"client_version":"3.12"}"#,
        )
        .unwrap();
        assert_eq!(p.protocol, Protocol::Tcp);
        assert!(p.reverse && p.nodelay && !p.bidirectional);
        assert_eq!((p.parallel, p.len, p.time_s), (2, 65536, 2));
        assert_eq!(p.refusal(), None);
        assert_eq!(p.send_limit(), u64::MAX);
        let p = Params::parse(br#"{"tcp":true,"num":5000,"len":100}"#).unwrap();
        assert_eq!((p.parallel, p.send_limit()), (1, 5000));
        let p = Params::parse(br#"{"tcp":true,"blockcount":7,"len":100}"#).unwrap();
        assert_eq!(p.send_limit(), 700);
        // Presence, not value, sets a flag (cJSON_GetObjectItem != NULL).
        assert!(Params::parse(br#"{"reverse":false}"#).unwrap().reverse);
        assert_eq!(
            Params::parse(br#"{"udp":true}"#).unwrap().refusal(),
            Some(ierr::PROTOCOL)
        );
        for bad in [
            r#"{"parallel":0}"#,
            r#"{"parallel":5}"#,
            r#"{"parallel":-1}"#,
        ] {
            assert_eq!(
                Params::parse(bad.as_bytes()).unwrap().refusal(),
                Some(ierr::NUMSTREAMS),
                "{bad}"
            );
        }
        assert_eq!(
            Params::parse(br#"{"len":2000000}"#).unwrap().refusal(),
            Some(ierr::BLOCKSIZE)
        );
        // The first of repeated keys counts.
        assert_eq!(Params::parse(br#"{"time":3,"time":9}"#).unwrap().time_s, 3);
    }

    /// A whole forward test with two streams, as iperf3 3.12 runs it.
    #[test]
    fn a_forward_test_runs_to_iperf_done() {
        let mut s = Server::new();
        let Role::Control(tid) = s.classify(&COOKIE, 0) else {
            panic!()
        };
        assert_eq!(take_out(&mut s, tid), [state::PARAM_EXCHANGE]);
        // The parameters arrive in pieces.
        let params = framed(r#"{"tcp":true,"omit":0,"time":1,"parallel":2,"len":131072}"#);
        for chunk in params.chunks(3) {
            s.control_input(tid, chunk, 1).unwrap();
        }
        assert_eq!(take_out(&mut s, tid), [state::CREATE_STREAMS]);
        // A stream with another cookie is denied; the test goes on.
        let mut other = COOKIE;
        other[0] = b'z';
        assert_eq!(s.classify(&other, 2), Role::Denied);
        assert_eq!(s.classify(&COOKIE, 2), Role::Stream { tid, index: 0 });
        assert_eq!(s.take_event(), None);
        assert_eq!(s.classify(&COOKIE, 3), Role::Stream { tid, index: 1 });
        assert_eq!(s.take_event(), Some(Event::Started { test: 0 }));
        assert_eq!(
            take_out(&mut s, tid),
            [state::TEST_START, state::TEST_RUNNING]
        );
        // No third stream, and no second test.
        assert_eq!(s.classify(&COOKIE, 3), Role::Denied);
        assert!(s.busy());
        s.stream_received(tid, 0, 1000, 10);
        s.stream_received(tid, 1, 500, 10);
        assert_eq!(
            s.send_allowance(tid, 0),
            0,
            "forward: the server only receives"
        );
        s.control_input(tid, &[state::TEST_END], 1003).unwrap();
        let report = Report {
            test: 0,
            reverse: false,
            bidirectional: false,
            streams: 2,
            bytes_received: 1500,
            bytes_sent: 0,
            duration_ms: 1000,
            aborted: false,
        };
        assert_eq!(s.take_event(), Some(Event::Ended(report)));
        assert_eq!(
            alloc::format!("{report}"),
            r#"{"test":0,"reverse":false,"streams":2,"bytes_received":1500,"bytes_sent":0,"seconds":1.000}"#
        );
        // Data after TEST_END is not counted.
        s.stream_received(tid, 0, 999, 1004);
        assert!(!s.stream_live(tid));
        assert_eq!(take_out(&mut s, tid), [state::EXCHANGE_RESULTS]);
        s.control_input(tid, &framed(CLIENT_RESULTS), 1100).unwrap();
        let out = take_out(&mut s, tid);
        assert_eq!(*out.last().unwrap(), state::DISPLAY_RESULTS);
        let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(out.len(), 4 + len + 1);
        let results = &out[4..4 + len];
        check_results(results).unwrap();
        let Some(Value::Array(streams)) = json::get(results, "streams").unwrap() else {
            panic!()
        };
        let mut seen = Vec::new();
        json::elements(streams, |v| {
            let Value::Object(o) = v else { panic!() };
            let id = json::get(o, "id").unwrap().unwrap().int();
            let bytes = json::get(o, "bytes").unwrap().unwrap().int();
            let end = json::get(o, "end_time").unwrap().unwrap();
            seen.push((id, bytes, end));
        })
        .unwrap();
        assert_eq!(
            seen,
            [(1, 1000, Value::Number(1.0)), (3, 500, Value::Number(1.0))]
        );
        assert_eq!(
            json::get(results, "sender_has_retransmits").unwrap(),
            Some(Value::Number(-1.0))
        );
        assert!(!s.control_finished(tid));
        s.control_input(tid, &[state::IPERF_DONE], 1101).unwrap();
        assert!(s.control_finished(tid));
        assert!(!s.busy());
        assert_eq!((s.completed, s.failed, s.denied), (1, 0, 2));
        // The client closing now changes nothing; the next client is a new test.
        s.control_closed(tid, 1102);
        assert_eq!(s.take_event(), None);
        let Role::Control(next) = s.classify(&COOKIE, 2000) else {
            panic!()
        };
        assert_ne!(next, tid);
        assert!(s.control_finished(tid));
    }

    #[test]
    fn reverse_and_bidirectional_tests_send_within_their_limits() {
        let mut s = Server::new();
        let Role::Control(tid) = s.classify(&COOKIE, 0) else {
            panic!()
        };
        let p =
            framed(r#"{"tcp":true,"time":0,"num":3000,"parallel":1,"len":1000,"reverse":true}"#);
        s.control_input(tid, &p, 0).unwrap();
        assert_eq!(s.send_allowance(tid, 0), 0, "not running yet");
        assert_eq!(s.classify(&COOKIE, 1), Role::Stream { tid, index: 0 });
        assert_eq!(s.send_allowance(tid, 0), 3000);
        s.stream_sent(tid, 0, 2500, 2);
        assert_eq!(s.send_allowance(tid, 0), 500);
        s.stream_sent(tid, 0, 500, 3);
        assert_eq!(s.send_allowance(tid, 0), 0);
        s.stream_received(tid, 0, 77, 3);
        s.control_input(tid, &[state::TEST_END], 4).unwrap();
        let _ = s.take_event();
        let Some(Event::Ended(r)) = s.take_event() else {
            panic!()
        };
        assert_eq!((r.bytes_sent, r.bytes_received, r.reverse), (3000, 0, true));
        assert_eq!(s.send_allowance(tid, 0), 0, "ended");

        // --bidir -P 2: receivers 1 and 3, then senders 4 and 5.
        let mut s = Server::new();
        let Role::Control(tid) = s.classify(&COOKIE, 0) else {
            panic!()
        };
        let p = framed(r#"{"tcp":true,"time":1,"parallel":2,"len":1000,"bidirectional":true}"#);
        s.control_input(tid, &p, 0).unwrap();
        for i in 0..4 {
            assert_eq!(s.classify(&COOKIE, 1), Role::Stream { tid, index: i });
        }
        assert_eq!((0..4).map(stream_id).collect::<Vec<_>>(), [1, 3, 4, 5]);
        assert_eq!(s.send_allowance(tid, 1), 0);
        assert_eq!(s.send_allowance(tid, 2), u64::MAX);
        s.stream_received(tid, 0, 10, 2);
        s.stream_sent(tid, 3, 20, 2);
        s.stream_sent(tid, 0, 999, 2); // not a sender: ignored
        s.control_input(tid, &[state::TEST_END], 3).unwrap();
        let _ = s.take_event();
        let Some(Event::Ended(r)) = s.take_event() else {
            panic!()
        };
        assert_eq!((r.bytes_received, r.bytes_sent, r.streams), (10, 20, 4));
        assert!(alloc::format!("{r}").ends_with(r#""bidirectional":true}"#));
    }

    #[test]
    fn refused_parameters_get_server_error() {
        let mut s = Server::new();
        let Role::Control(tid) = s.classify(&COOKIE, 0) else {
            panic!()
        };
        take_out(&mut s, tid);
        s.control_input(tid, &framed(r#"{"udp":true,"parallel":1}"#), 0)
            .unwrap();
        let mut want = vec![state::SERVER_ERROR];
        want.extend_from_slice(&131u32.to_be_bytes());
        want.extend_from_slice(&0u32.to_be_bytes());
        assert!(!s.control_finished(tid), "the answer is still to be sent");
        assert_eq!(take_out(&mut s, tid), want);
        assert!(s.control_finished(tid) && !s.busy());
        assert_eq!((s.failed, s.take_event()), (1, None));
    }

    #[test]
    fn bad_clients_fail_their_test_only() {
        let huge = (MAX_MESSAGE as u32 + 1).to_be_bytes();
        let cases: [(&[u8], Error); 4] = [
            (&huge, Error::MessageLength(MAX_MESSAGE as u32 + 1)),
            (&[0, 0, 0, 0], Error::MessageLength(0)),
            (
                b"\0\0\0\x03abc",
                Error::Json(json::Error {
                    at: 0,
                    what: "not an object",
                }),
            ),
            (
                b"\0\0\0\x02{}",
                Error::Json(json::Error { at: 0, what: "" }),
            ),
        ];
        for (i, (input, want)) in cases.into_iter().enumerate() {
            let mut s = Server::new();
            let Role::Control(tid) = s.classify(&COOKIE, 0) else {
                panic!()
            };
            let got = s.control_input(tid, input, 0);
            if i < 3 {
                assert_eq!(got, Err(want), "case {i}");
                assert!(!s.busy() && s.control_finished(tid), "case {i}");
                assert_eq!(s.failed, 1);
            } else {
                // `{}` is fine JSON: defaults (one TCP stream).
                assert_eq!(got, Ok(()));
                assert!(s.busy());
            }
            // The next client is served.
            assert!(matches!(
                s.classify(&COOKIE, 1),
                Role::Stream { .. } | Role::Control(_)
            ));
        }

        // An unexpected state byte while running ends the test as aborted.
        let mut s = Server::new();
        let Role::Control(tid) = s.classify(&COOKIE, 0) else {
            panic!()
        };
        s.control_input(tid, &framed(r#"{"tcp":true}"#), 0).unwrap();
        s.classify(&COOKIE, 10);
        s.stream_received(tid, 0, 42, 20);
        assert_eq!(
            s.control_input(tid, &[77], 30),
            Err(Error::UnexpectedState(77))
        );
        let _ = s.take_event();
        let Some(Event::Ended(r)) = s.take_event() else {
            panic!()
        };
        assert!(r.aborted && r.bytes_received == 42 && r.duration_ms == 20);
        assert!(alloc::format!("{r}").ends_with(r#""aborted":true}"#));
        assert!(!s.stream_live(tid));
        assert_eq!(s.control_input(tid, &[4], 31), Err(Error::NotCurrent));

        // Results missing what iperf3 requires.
        for bad in [
            r#"{"cpu_util_total":0,"cpu_util_user":0,"cpu_util_system":0,"streams":[]}"#,
            r#"{"cpu_util_total":0,"cpu_util_user":0,"cpu_util_system":0,"sender_has_retransmits":0,"streams":{}}"#,
            r#"{"cpu_util_total":0,"cpu_util_user":0,"cpu_util_system":0,"sender_has_retransmits":0,"streams":[{"id":1}]}"#,
            r#"{"cpu_util_total":0,"cpu_util_user":0,"cpu_util_system":0,"sender_has_retransmits":0,"streams":[7]}"#,
        ] {
            let mut s = Server::new();
            let Role::Control(tid) = s.classify(&COOKIE, 0) else {
                panic!()
            };
            s.control_input(tid, &framed(r#"{"tcp":true}"#), 0).unwrap();
            s.classify(&COOKIE, 1);
            s.control_input(tid, &[state::TEST_END], 2).unwrap();
            assert_eq!(
                s.control_input(tid, &framed(bad), 3),
                Err(Error::BadResults),
                "{bad}"
            );
            assert!(!s.busy());
        }
    }

    #[test]
    fn a_silent_or_vanished_client_frees_the_server() {
        let mut s = Server::new();
        let Role::Control(tid) = s.classify(&COOKIE, 0) else {
            panic!()
        };
        s.tick(IDLE_TIMEOUT_MS - 1);
        assert!(s.busy());
        s.tick(IDLE_TIMEOUT_MS);
        assert!(!s.busy());
        assert_eq!(s.take_event(), None, "never started: no report");
        assert!(s.control_finished(tid));

        // Killed mid-test: the control connection closes.
        let Role::Control(tid) = s.classify(&COOKIE, 100_000) else {
            panic!()
        };
        s.control_input(tid, &framed(r#"{"tcp":true,"time":60}"#), 100_000)
            .unwrap();
        s.classify(&COOKIE, 100_001);
        assert_eq!(s.take_event(), Some(Event::Started { test: 0 }));
        s.control_closed(tid, 102_001);
        let Some(Event::Ended(r)) = s.take_event() else {
            panic!()
        };
        assert!(r.aborted && r.test == 0 && r.duration_ms == 2000);
        assert!(s.control_output(tid).is_empty() && s.control_finished(tid));
        // The next test is number 1.
        let Role::Control(tid) = s.classify(&COOKIE, 200_000) else {
            panic!()
        };
        s.control_input(tid, &framed(r#"{}"#), 200_000).unwrap();
        s.classify(&COOKIE, 200_001);
        assert_eq!(s.take_event(), Some(Event::Started { test: 1 }));
        // CLIENT_TERMINATE ends it too.
        s.control_input(tid, &[state::CLIENT_TERMINATE], 200_002)
            .unwrap();
        assert!(matches!(
            s.take_event(),
            Some(Event::Ended(Report { aborted: true, .. }))
        ));
        assert_eq!(s.failed, 3);
    }
}
