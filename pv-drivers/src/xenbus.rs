//! xenbus: the conventions split drivers follow in xenstore, on top of the
//! [`xenstore`](crate::xenstore) client (`xen/include/public/io/xenbus.h`,
//! `docs/misc/xenstore-paths.pandoc`).
//!
//! A frontend lives under `device/<type>/<id>` (relative to the domain's home path
//! `/local/domain/<domid>`); the toolstack writes there `backend` (the absolute path of
//! the backend's directory, `/local/domain/<b>/backend/<type>/<domid>/<id>`),
//! `backend-id` (the backend's domid) and `state`. Each end publishes its
//! [`XenbusState`] in its own `state` node as decimal text and watches the other's.
//!
//! Values written by the other end (a backend, the toolstack) are input from another
//! domain: every reader here parses strictly and reports a typed [`ParseError`] naming
//! the node, never a panic or a guessed value. Waiting for the other end is bounded by
//! the client's [`Limits`](crate::xenstore::Limits) and by an explicit event count.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Deref;

use crate::abi::errno::XenErrno;
use crate::abi::xen::{DOMID_FIRST_RESERVED, DomId};
use crate::shmem::SharedMemory;
use crate::xenstore::wire::{check_component, check_path, parse_decimal};
use crate::xenstore::{TransactionError, TxId, XenStore, XsError, XsEvents};

/// `enum xenbus_state`: where one end of a split device is in its negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum XenbusState {
    /// `XenbusStateUnknown`: no state published (or the node is gone).
    Unknown = 0,
    /// `XenbusStateInitialising`.
    Initialising = 1,
    /// `XenbusStateInitWait`: finished early initialisation, waiting for information
    /// from the peer or hotplug scripts.
    InitWait = 2,
    /// `XenbusStateInitialised`: initialised and waiting for a connection from the peer.
    Initialised = 3,
    /// `XenbusStateConnected`.
    Connected = 4,
    /// `XenbusStateClosing`: the device is being closed due to an error or an unplug.
    Closing = 5,
    /// `XenbusStateClosed`.
    Closed = 6,
    /// `XenbusStateReconfiguring`: the device is being reconfigured.
    Reconfiguring = 7,
    /// `XenbusStateReconfigured`.
    Reconfigured = 8,
}

impl XenbusState {
    /// Every state, in value order.
    pub const ALL: [Self; 9] = [
        Self::Unknown,
        Self::Initialising,
        Self::InitWait,
        Self::Initialised,
        Self::Connected,
        Self::Closing,
        Self::Closed,
        Self::Reconfiguring,
        Self::Reconfigured,
    ];

    /// The header's value.
    pub const fn as_raw(self) -> u32 {
        self as u32
    }

    /// Decodes a value; `None` for one the header does not define.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Unknown,
            1 => Self::Initialising,
            2 => Self::InitWait,
            3 => Self::Initialised,
            4 => Self::Connected,
            5 => Self::Closing,
            6 => Self::Closed,
            7 => Self::Reconfiguring,
            8 => Self::Reconfigured,
            _ => return None,
        })
    }

    /// Parses the text of a `state` node: decimal digits only, a defined value.
    pub fn parse(text: &[u8]) -> Result<Self, ParseError> {
        let v = parse_u64(text)?;
        u32::try_from(v)
            .ok()
            .and_then(Self::from_raw)
            .ok_or(ParseError::UnknownState)
    }

    /// The header's name without its prefix, e.g. `"Connected"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "Unknown",
            Self::Initialising => "Initialising",
            Self::InitWait => "InitWait",
            Self::Initialised => "Initialised",
            Self::Connected => "Connected",
            Self::Closing => "Closing",
            Self::Closed => "Closed",
            Self::Reconfiguring => "Reconfiguring",
            Self::Reconfigured => "Reconfigured",
        }
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_raw())
    }
}

/// Why a node's text is not what it should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// the node is empty
    Empty,
    /// the node is not text (not UTF-8, or contains NUL)
    NotText,
    /// the node is not unsigned decimal digits
    NotDecimal,
    /// the number is too large for its field
    OutOfRange,
    /// a flag is neither "0" nor "1"
    NotBool,
    /// the number is not a xenbus state
    UnknownState,
    /// the text is not a valid absolute xenstore path
    BadPath,
    /// the number is not a real domain id
    BadDomid,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "the node is empty",
            Self::NotText => "the node is not text (not UTF-8, or contains NUL)",
            Self::NotDecimal => "the node is not unsigned decimal digits",
            Self::OutOfRange => "the number is too large for its field",
            Self::NotBool => "a flag is neither \"0\" nor \"1\"",
            Self::UnknownState => "the number is not a xenbus state",
            Self::BadPath => "the text is not a valid absolute xenstore path",
            Self::BadDomid => "the number is not a real domain id",
        })
    }
}

impl core::error::Error for ParseError {}

/// Errors of the xenbus helpers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XenbusError {
    /// the xenstore operation failed
    Store(XsError),
    /// a node's value is malformed
    Parse {
        /// The node.
        path: String,
        /// What is wrong with it.
        error: ParseError,
    },
    /// the other end kept changing state without reaching an accepted one
    WaitExhausted {
        /// The state node watched.
        path: String,
        /// The last state seen.
        last: XenbusState,
    },
}

impl fmt::Display for XenbusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => write!(f, "{e}"),
            Self::Parse { path, error } => write!(f, "{path}: {error}"),
            Self::WaitExhausted { path, last } => write!(
                f,
                "{path} kept changing without reaching an accepted state (last {last})"
            ),
        }
    }
}

impl core::error::Error for XenbusError {}

impl From<XsError> for XenbusError {
    fn from(e: XsError) -> Self {
        Self::Store(e)
    }
}

impl TransactionError for XenbusError {
    fn xs_error(&self) -> Option<XsError> {
        match self {
            Self::Store(e) => Some(*e),
            _ => None,
        }
    }
}

/// `dir/name`.
pub fn join(dir: &str, name: &str) -> String {
    format!("{dir}/{name}")
}

/// The frontend directory of device `id` of `kind` (`device/vbd/768`), relative to
/// the domain's home path.
pub fn device_path(kind: &str, id: &str) -> String {
    format!("device/{kind}/{id}")
}

/// A node's value as text: UTF-8 without NUL.
pub fn parse_str(value: &[u8]) -> Result<&str, ParseError> {
    if value.contains(&0) {
        return Err(ParseError::NotText);
    }
    core::str::from_utf8(value).map_err(|_| ParseError::NotText)
}

/// Unsigned decimal, strictly: digits only (leading zeros allowed), no sign, spaces,
/// newline or NUL.
pub fn parse_u64(value: &[u8]) -> Result<u64, ParseError> {
    let text = parse_str(value)?;
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::NotDecimal);
    }
    parse_decimal(text).ok_or(ParseError::OutOfRange)
}

/// [`parse_u64`] limited to `u32`.
pub fn parse_u32(value: &[u8]) -> Result<u32, ParseError> {
    u32::try_from(parse_u64(value)?).map_err(|_| ParseError::OutOfRange)
}

/// A flag: exactly `"0"` or `"1"`.
pub fn parse_bool(value: &[u8]) -> Result<bool, ParseError> {
    match value {
        b"0" => Ok(false),
        b"1" => Ok(true),
        b"" => Err(ParseError::Empty),
        _ => Err(ParseError::NotBool),
    }
}

/// Reads `path` and parses it with `parse`, naming the node in the error.
fn read_parsed<P, E, T>(
    xs: &mut XenStore<P, E>,
    tx: TxId,
    path: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, ParseError>,
) -> Result<T, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    let value = xs.read(tx, path)?;
    parse(&value).map_err(|error| XenbusError::Parse {
        path: path.into(),
        error,
    })
}

/// Reads `path` as text.
pub fn read_str<P, E>(xs: &mut XenStore<P, E>, tx: TxId, path: &str) -> Result<String, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    read_parsed(xs, tx, path, |v| parse_str(v).map(String::from))
}

/// Reads `path` as an unsigned decimal `u64`.
pub fn read_u64<P, E>(xs: &mut XenStore<P, E>, tx: TxId, path: &str) -> Result<u64, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    read_parsed(xs, tx, path, parse_u64)
}

/// Reads `path` as an unsigned decimal `u32` (event channels, grant references).
pub fn read_u32<P, E>(xs: &mut XenStore<P, E>, tx: TxId, path: &str) -> Result<u32, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    read_parsed(xs, tx, path, parse_u32)
}

/// Reads `path` as a flag (`"0"` / `"1"`).
pub fn read_bool<P, E>(xs: &mut XenStore<P, E>, tx: TxId, path: &str) -> Result<bool, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    read_parsed(xs, tx, path, parse_bool)
}

/// Reads a `feature-*` flag: a missing node means the feature is not offered.
pub fn read_feature<P, E>(
    xs: &mut XenStore<P, E>,
    tx: TxId,
    path: &str,
) -> Result<bool, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    match read_bool(xs, tx, path) {
        Err(XenbusError::Store(XsError::Xen(XenErrno::ENOENT))) => Ok(false),
        r => r,
    }
}

/// Writes text to `path`.
pub fn write_str<P, E>(
    xs: &mut XenStore<P, E>,
    tx: TxId,
    path: &str,
    value: &str,
) -> Result<(), XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    Ok(xs.write(tx, path, value.as_bytes())?)
}

/// Writes formatted text to `path`: `write_fmt(xs, tx, path, format_args!("{ref}"))`.
pub fn write_fmt<P, E>(
    xs: &mut XenStore<P, E>,
    tx: TxId,
    path: &str,
    args: fmt::Arguments<'_>,
) -> Result<(), XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    write_str(xs, tx, path, &format!("{args}"))
}

/// Writes a flag (`"1"` / `"0"`).
pub fn write_bool<P, E>(
    xs: &mut XenStore<P, E>,
    tx: TxId,
    path: &str,
    value: bool,
) -> Result<(), XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    write_str(xs, tx, path, if value { "1" } else { "0" })
}

/// Reads `<dir>/state`.
pub fn read_state<P, E>(
    xs: &mut XenStore<P, E>,
    tx: TxId,
    dir: &str,
) -> Result<XenbusState, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    read_parsed(xs, tx, &join(dir, "state"), XenbusState::parse)
}

/// Writes `<dir>/state` unconditionally.
pub fn write_state<P, E>(
    xs: &mut XenStore<P, E>,
    tx: TxId,
    dir: &str,
    state: XenbusState,
) -> Result<(), XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    write_fmt(
        xs,
        tx,
        &join(dir, "state"),
        format_args!("{}", state.as_raw()),
    )
}

/// Moves this end to `state`, as Linux's `xenbus_switch_state()`: in a transaction,
/// reads the current state and writes only if it differs (so the other end's watch
/// does not fire for nothing). A missing `state` node is `ENOENT` and nothing is
/// written: the device directory is being torn down and must not be resurrected. A
/// current value that does not parse is overwritten.
pub fn switch_state<P, E>(
    xs: &mut XenStore<P, E>,
    dir: &str,
    state: XenbusState,
) -> Result<(), XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    let path = join(dir, "state");
    xs.transaction(|tx| {
        let current = tx.read(&path)?;
        if XenbusState::parse(&current) != Ok(state) {
            let text = format!("{}", state.as_raw());
            tx.write(&path, text.as_bytes())?;
        }
        Ok::<(), XenbusError>(())
    })
}

/// Waits until `<dir>/state` holds a state that `accept` takes, and returns it.
///
/// Sets a temporary watch on the node, and re-reads it after each event. A missing
/// node reads as [`XenbusState::Unknown`] (the other end may not have published yet,
/// or has gone). Bounded twice: each wait for an event by the client's
/// [`Limits`](crate::xenstore::Limits) (then [`XsError::Timeout`]), and the number of
/// events by `max_events` (then [`XenbusError::WaitExhausted`]). The watch is removed
/// on every way out (unless the connection is broken).
pub fn wait_for_state<P, E>(
    xs: &mut XenStore<P, E>,
    dir: &str,
    mut accept: impl FnMut(XenbusState) -> bool,
    max_events: u32,
) -> Result<XenbusState, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    let path = join(dir, "state");
    let token = xs.unique_token("xenbus-state-");
    xs.watch(&path, &token)?;
    let result = (|| {
        let mut last = XenbusState::Unknown;
        for event in 0..=max_events {
            if event > 0 {
                xs.wait_watch_event(Some(&token))?;
            }
            last = match read_state(xs, TxId::NONE, dir) {
                Err(XenbusError::Store(XsError::Xen(XenErrno::ENOENT))) => XenbusState::Unknown,
                r => r?,
            };
            if accept(last) {
                return Ok(last);
            }
        }
        Err(XenbusError::WaitExhausted {
            path: path.clone(),
            last,
        })
    })();
    if xs.is_broken() {
        xs.forget_watch(&path, &token);
    } else if let Err(e) = xs.unwatch(&path, &token) {
        // The first error is the one to report.
        if result.is_ok() {
            return Err(e.into());
        }
    }
    result
}

/// The other end of a device: its directory and its domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherEnd {
    /// Absolute path of its directory.
    pub path: String,
    /// Its domain.
    pub domid: DomId,
}

/// Reads the other end named by `<dir>/<path_node>` and `<dir>/<id_node>` (for a
/// frontend: `backend`, `backend-id`). The path must be a valid absolute path and the
/// domid a real domain (below `DOMID_FIRST_RESERVED`).
pub fn read_other_end<P, E>(
    xs: &mut XenStore<P, E>,
    tx: TxId,
    dir: &str,
    path_node: &str,
    id_node: &str,
) -> Result<OtherEnd, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    let path = read_parsed(xs, tx, &join(dir, path_node), |v| {
        let p = parse_str(v)?;
        if p.starts_with('/') && check_path(p).is_ok() {
            Ok(String::from(p))
        } else {
            Err(ParseError::BadPath)
        }
    })?;
    let domid = read_parsed(xs, tx, &join(dir, id_node), |v| {
        DomId::try_from(parse_u64(v)?)
            .ok()
            .filter(|&d| d < DOMID_FIRST_RESERVED)
            .ok_or(ParseError::BadDomid)
    })?;
    Ok(OtherEnd { path, domid })
}

/// The backend of the frontend in `dir` (`<dir>/backend`, `<dir>/backend-id`).
pub fn read_backend<P, E>(
    xs: &mut XenStore<P, E>,
    tx: TxId,
    dir: &str,
) -> Result<OtherEnd, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    read_other_end(xs, tx, dir, "backend", "backend-id")
}

/// The ids of this domain's devices of `kind` (the children of `device/<kind>`); none
/// if the directory does not exist.
pub fn list_devices<P, E>(xs: &mut XenStore<P, E>, kind: &str) -> Result<Vec<String>, XenbusError>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    check_component(kind)?;
    match xs.directory(TxId::NONE, &format!("device/{kind}")) {
        Err(XsError::Xen(XenErrno::ENOENT)) => Ok(Vec::new()),
        r => Ok(r?),
    }
}

/// A frontend device found in xenstore, with its backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// Device type (`vbd`, `vif`, ...).
    pub kind: String,
    /// Device id within the type (`768`, `0`, ...).
    pub id: String,
    /// Its directory, relative to the domain's home (`device/vbd/768`).
    pub dir: String,
    /// Its backend.
    pub backend: OtherEnd,
}

impl Frontend {
    /// Looks up device `id` of `kind`: checks the names and reads the backend.
    pub fn open<P, E>(xs: &mut XenStore<P, E>, kind: &str, id: &str) -> Result<Self, XenbusError>
    where
        P: Deref<Target: SharedMemory>,
        E: XsEvents,
    {
        check_component(kind)?;
        check_component(id)?;
        let dir = device_path(kind, id);
        let backend = read_backend(xs, TxId::NONE, &dir)?;
        Ok(Self {
            kind: kind.into(),
            id: id.into(),
            dir,
            backend,
        })
    }

    /// The path of `name` in the frontend's directory.
    pub fn node(&self, name: &str) -> String {
        join(&self.dir, name)
    }

    /// The path of `name` in the backend's directory.
    pub fn backend_node(&self, name: &str) -> String {
        join(&self.backend.path, name)
    }

    /// This end's state.
    pub fn state<P, E>(&self, xs: &mut XenStore<P, E>) -> Result<XenbusState, XenbusError>
    where
        P: Deref<Target: SharedMemory>,
        E: XsEvents,
    {
        read_state(xs, TxId::NONE, &self.dir)
    }

    /// The backend's state.
    pub fn backend_state<P, E>(&self, xs: &mut XenStore<P, E>) -> Result<XenbusState, XenbusError>
    where
        P: Deref<Target: SharedMemory>,
        E: XsEvents,
    {
        read_state(xs, TxId::NONE, &self.backend.path)
    }

    /// [`switch_state`] for this end.
    pub fn switch_state<P, E>(
        &self,
        xs: &mut XenStore<P, E>,
        state: XenbusState,
    ) -> Result<(), XenbusError>
    where
        P: Deref<Target: SharedMemory>,
        E: XsEvents,
    {
        switch_state(xs, &self.dir, state)
    }

    /// [`wait_for_state`] on the backend.
    pub fn wait_for_backend<P, E>(
        &self,
        xs: &mut XenStore<P, E>,
        accept: impl FnMut(XenbusState) -> bool,
        max_events: u32,
    ) -> Result<XenbusState, XenbusError>
    where
        P: Deref<Target: SharedMemory>,
        E: XsEvents,
    {
        wait_for_state(xs, &self.backend.path, accept, max_events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::test_server::{Server, setup};
    use alloc::boxed::Box;
    use alloc::string::ToString;
    use alloc::vec;

    const BACKEND: &str = "/local/domain/0/backend/vbd/5/768";

    /// A toolstack's setup of one vbd for domain 5, backend in domain 0.
    fn provision(server: &Server) {
        let mut s = server.borrow_mut();
        s.set("device/vbd/768/backend", BACKEND.as_bytes());
        s.set("device/vbd/768/backend-id", b"0");
        s.set("device/vbd/768/state", b"1");
        s.set(
            "device/vbd/832/backend",
            b"/local/domain/0/backend/vbd/5/832",
        );
        s.set("device/vbd/832/backend-id", b"0");
        s.set("device/vbd/832/state", b"1");
        s.set(&join(BACKEND, "state"), b"2");
        s.set(&join(BACKEND, "feature-flush-cache"), b"1");
        s.set(&join(BACKEND, "sectors"), b"2097152");
    }

    #[test]
    fn state_values_and_strict_parsing() {
        for s in XenbusState::ALL {
            assert_eq!(XenbusState::from_raw(s.as_raw()), Some(s));
            assert_eq!(XenbusState::parse(s.as_raw().to_string().as_bytes()), Ok(s));
        }
        assert_eq!(XenbusState::Connected.as_raw(), 4);
        assert_eq!(XenbusState::Closed.as_raw(), 6);
        assert_eq!(XenbusState::parse(b"04"), Ok(XenbusState::Connected));
        assert_eq!(XenbusState::parse(b"9"), Err(ParseError::UnknownState));
        assert_eq!(
            XenbusState::parse(b"99999999999"),
            Err(ParseError::UnknownState)
        );
        assert_eq!(XenbusState::parse(b""), Err(ParseError::Empty));
        for bad in [&b"4\n"[..], b" 4", b"+4", b"-1", b"Connected", b"4.0"] {
            assert_eq!(
                XenbusState::parse(bad),
                Err(ParseError::NotDecimal),
                "{bad:?}"
            );
        }
        assert_eq!(XenbusState::parse(b"4\0"), Err(ParseError::NotText));
        assert_eq!(XenbusState::Connected.to_string(), "Connected (4)");
    }

    #[test]
    fn number_and_flag_parsers() {
        assert_eq!(parse_u64(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_u64(b"18446744073709551616"),
            Err(ParseError::OutOfRange)
        );
        assert_eq!(parse_u32(b"4294967295"), Ok(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), Err(ParseError::OutOfRange));
        assert_eq!(parse_u64(b"0x10"), Err(ParseError::NotDecimal));
        assert_eq!(parse_u64(b"\xff"), Err(ParseError::NotText));
        assert_eq!(parse_bool(b"1"), Ok(true));
        assert_eq!(parse_bool(b"0"), Ok(false));
        for bad in [&b"2"[..], b"true", b"01", b"1\n"] {
            assert_eq!(parse_bool(bad), Err(ParseError::NotBool), "{bad:?}");
        }
        assert_eq!(parse_bool(b""), Err(ParseError::Empty));
        assert_eq!(parse_str(b"ok"), Ok("ok"));
        assert_eq!(parse_str(b"a\0"), Err(ParseError::NotText));
    }

    #[test]
    fn typed_readers_and_writers() {
        let (mut xs, server, _) = setup();
        provision(&server);
        let t = TxId::NONE;
        assert_eq!(
            read_u64(&mut xs, t, &join(BACKEND, "sectors")),
            Ok(2_097_152)
        );
        assert_eq!(
            read_feature(&mut xs, t, &join(BACKEND, "feature-flush-cache")),
            Ok(true)
        );
        assert_eq!(
            read_feature(&mut xs, t, &join(BACKEND, "feature-discard")),
            Ok(false)
        );
        assert_eq!(
            read_bool(&mut xs, t, &join(BACKEND, "feature-discard")),
            Err(XenbusError::Store(XsError::Xen(XenErrno::ENOENT)))
        );
        write_fmt(
            &mut xs,
            t,
            "device/vbd/768/ring-ref",
            format_args!("{}", 8u32),
        )
        .unwrap();
        write_bool(&mut xs, t, "device/vbd/768/feature-persistent", true).unwrap();
        write_str(&mut xs, t, "device/vbd/768/protocol", "x86_64-abi").unwrap();
        assert_eq!(read_u32(&mut xs, t, "device/vbd/768/ring-ref"), Ok(8));
        assert_eq!(
            read_bool(&mut xs, t, "device/vbd/768/feature-persistent"),
            Ok(true)
        );
        assert_eq!(
            read_str(&mut xs, t, "device/vbd/768/protocol").as_deref(),
            Ok("x86_64-abi")
        );
        server.borrow_mut().set("device/vbd/768/bad", b"12abc");
        assert_eq!(
            read_u32(&mut xs, t, "device/vbd/768/bad"),
            Err(XenbusError::Parse {
                path: "device/vbd/768/bad".into(),
                error: ParseError::NotDecimal
            })
        );
    }

    #[test]
    fn devices_and_backends() {
        let (mut xs, server, _) = setup();
        assert_eq!(list_devices(&mut xs, "vbd"), Ok(vec![]));
        provision(&server);
        let mut ids = list_devices(&mut xs, "vbd").unwrap();
        ids.sort();
        assert_eq!(ids, ["768", "832"]);
        assert_eq!(list_devices(&mut xs, "vif"), Ok(vec![]));
        assert_eq!(
            list_devices(&mut xs, "vbd/768"),
            Err(XenbusError::Store(XsError::InvalidPath))
        );

        let dev = Frontend::open(&mut xs, "vbd", "768").unwrap();
        assert_eq!(dev.dir, "device/vbd/768");
        assert_eq!(
            dev.backend,
            OtherEnd {
                path: BACKEND.into(),
                domid: 0
            }
        );
        assert_eq!(dev.node("ring-ref"), "device/vbd/768/ring-ref");
        assert_eq!(dev.backend_node("sectors"), join(BACKEND, "sectors"));
        assert_eq!(dev.state(&mut xs), Ok(XenbusState::Initialising));
        assert_eq!(dev.backend_state(&mut xs), Ok(XenbusState::InitWait));
        assert_eq!(
            Frontend::open(&mut xs, "vbd", "999"),
            Err(XenbusError::Store(XsError::Xen(XenErrno::ENOENT)))
        );

        // What the toolstack wrote is checked.
        server
            .borrow_mut()
            .set("device/vbd/832/backend", b"backend/vbd/5/832");
        assert_eq!(
            Frontend::open(&mut xs, "vbd", "832"),
            Err(XenbusError::Parse {
                path: "device/vbd/832/backend".into(),
                error: ParseError::BadPath
            })
        );
        server.borrow_mut().set(
            "device/vbd/832/backend",
            b"/local/domain/0/backend/vbd/5/832",
        );
        server
            .borrow_mut()
            .set("device/vbd/832/backend-id", b"32752");
        assert_eq!(
            Frontend::open(&mut xs, "vbd", "832"),
            Err(XenbusError::Parse {
                path: "device/vbd/832/backend-id".into(),
                error: ParseError::BadDomid
            })
        );
    }

    #[test]
    fn switch_state_writes_only_changes() {
        let (mut xs, server, _) = setup();
        provision(&server);
        let dev = Frontend::open(&mut xs, "vbd", "768").unwrap();
        let writes = |s: &Server| {
            s.borrow()
                .log
                .iter()
                .filter(|h| h.type_ == crate::abi::xs_wire::XsdSockmsgType::Write.as_raw())
                .count()
        };
        dev.switch_state(&mut xs, XenbusState::Initialised).unwrap();
        assert_eq!(
            server.borrow().get("device/vbd/768/state"),
            Some(b"3".to_vec())
        );
        let n = writes(&server);
        dev.switch_state(&mut xs, XenbusState::Initialised).unwrap();
        assert_eq!(writes(&server), n, "same state: no write");
        // Garbage is overwritten.
        server.borrow_mut().set("device/vbd/768/state", b"junk");
        dev.switch_state(&mut xs, XenbusState::Connected).unwrap();
        assert_eq!(dev.state(&mut xs), Ok(XenbusState::Connected));
        // A vanished device is not resurrected.
        xs.rm(TxId::NONE, "device/vbd/768").unwrap();
        assert_eq!(
            dev.switch_state(&mut xs, XenbusState::Closing),
            Err(XenbusError::Store(XsError::Xen(XenErrno::ENOENT)))
        );
        assert_eq!(server.borrow().get("device/vbd/768"), None);
        // Commit conflicts are retried.
        server.borrow_mut().set("device/vbd/832/state", b"1");
        server.borrow_mut().faults.fail_commits = 1;
        switch_state(&mut xs, "device/vbd/832", XenbusState::Closed).unwrap();
        assert_eq!(
            server.borrow().get("device/vbd/832/state"),
            Some(b"6".to_vec())
        );
        write_state(&mut xs, TxId::NONE, "device/vbd/832", XenbusState::Closing).unwrap();
        assert_eq!(
            read_state(&mut xs, TxId::NONE, "device/vbd/832"),
            Ok(XenbusState::Closing)
        );
    }

    #[test]
    fn negotiation_with_a_backend_that_follows() {
        let (mut xs, server, _) = setup();
        provision(&server);
        // The backend answers Initialised with Connected, Closing with Closed.
        server.borrow_mut().faults.on_write = Some(Box::new(|path, value| {
            if path != "/local/domain/5/device/vbd/768/state" {
                return vec![];
            }
            let next: &[u8] = match value {
                b"3" => b"4",
                b"5" => b"6",
                _ => return vec![],
            };
            vec![(join(BACKEND, "state"), next.to_vec())]
        }));
        let dev = Frontend::open(&mut xs, "vbd", "768").unwrap();
        let s = dev
            .wait_for_backend(&mut xs, |s| s == XenbusState::InitWait, 8)
            .unwrap();
        assert_eq!(s, XenbusState::InitWait);
        dev.switch_state(&mut xs, XenbusState::Initialised).unwrap();
        let s = dev
            .wait_for_backend(&mut xs, |s| s == XenbusState::Connected, 8)
            .unwrap();
        assert_eq!(s, XenbusState::Connected);
        dev.switch_state(&mut xs, XenbusState::Closing).unwrap();
        let s = dev
            .wait_for_backend(&mut xs, |s| s == XenbusState::Closed, 8)
            .unwrap();
        assert_eq!(s, XenbusState::Closed);
        assert_eq!(
            server.borrow().watch_count(),
            0,
            "temporary watches removed"
        );
        assert_eq!(xs.watches().count(), 0);
    }

    #[test]
    fn waiting_is_bounded() {
        let (mut xs, server, _) = setup();
        provision(&server);
        let dev = Frontend::open(&mut xs, "vbd", "768").unwrap();
        // Nothing happens: the client's wait budget runs out.
        assert_eq!(
            dev.wait_for_backend(&mut xs, |s| s == XenbusState::Connected, 8),
            Err(XenbusError::Store(XsError::Timeout))
        );
        assert_eq!(server.borrow().watch_count(), 0);
        // The backend's node keeps changing, never to Connected.
        server.borrow_mut().faults.storm = true;
        assert_eq!(
            dev.wait_for_backend(&mut xs, |s| s == XenbusState::Connected, 5),
            Err(XenbusError::WaitExhausted {
                path: join(BACKEND, "state"),
                last: XenbusState::InitWait
            })
        );
        server.borrow_mut().faults.storm = false;
        xs.poll().unwrap();
        assert_eq!(server.borrow().watch_count(), 0);
        // A missing node reads as Unknown; garbage is an error.
        xs.rm(TxId::NONE, &join(BACKEND, "state")).unwrap();
        assert_eq!(
            dev.wait_for_backend(&mut xs, |s| s == XenbusState::Unknown, 1),
            Ok(XenbusState::Unknown)
        );
        server.borrow_mut().set(&join(BACKEND, "state"), b"7x");
        assert_eq!(
            dev.wait_for_backend(&mut xs, |_| true, 1),
            Err(XenbusError::Parse {
                path: join(BACKEND, "state"),
                error: ParseError::NotDecimal
            })
        );
        assert_eq!(server.borrow().watch_count(), 0);
    }
}
