//! The xenstore message codec (`docs/misc/xenstore.txt`, `io/xs_wire.h`): request
//! encoding with the protocol's limits checked before anything is sent, reassembly of
//! messages from the response byte stream, and strict parsers for reply payloads.
//!
//! Every message is a 16-byte `struct xsd_sockmsg` header followed by `len` bytes of
//! payload, `len <= XENSTORE_PAYLOAD_MAX` in both directions ("violating this is very
//! bad": xenstored kills the connection of a client that does). Payloads are
//! NUL-terminated strings, except a written value, which is raw bytes after the path's
//! NUL.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::error::{ProtocolError, XsError};
use crate::abi::xen::DomId;
use crate::abi::xs_wire::{
    XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX, XS_WATCH_PATH,
    XS_WATCH_TOKEN, XsdSockmsg, XsdSockmsgType,
};

/// Size of a message header.
pub const HEADER_LEN: usize = XsdSockmsg::SIZE;

/// Largest message on the wire: a header and a maximal payload.
pub const MESSAGE_MAX: usize = HEADER_LEN + XENSTORE_PAYLOAD_MAX;

/// Checks a path the way xenstored will, so a bad one is refused here rather than
/// costing a round trip (or, for an over-long payload, the connection).
///
/// Rules (`xenstore.txt`): not empty; only `A-Za-z0-9` and `-/_@`; no doubled slash; no
/// trailing slash except the root `/`; at most `XENSTORE_ABS_PATH_MAX` bytes if
/// absolute, `XENSTORE_REL_PATH_MAX` if relative (to `/local/domain/<domid>`). Special
/// watch paths (`@releaseDomain`) pass, since `@` is an allowed character.
pub fn check_path(path: &str) -> Result<(), XsError> {
    let bytes = path.as_bytes();
    if bytes.is_empty() {
        return Err(XsError::InvalidPath);
    }
    let max = if bytes[0] == b'/' {
        XENSTORE_ABS_PATH_MAX
    } else {
        XENSTORE_REL_PATH_MAX
    };
    if bytes.len() > max {
        return Err(XsError::TooLong);
    }
    let chars_ok = bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'));
    let slashes_ok = !path.contains("//") && (path == "/" || !path.ends_with('/'));
    if chars_ok && slashes_ok {
        Ok(())
    } else {
        Err(XsError::InvalidPath)
    }
}

/// Checks one path component (a device type or id): a valid path without slashes.
pub fn check_component(name: &str) -> Result<(), XsError> {
    if name.contains('/') {
        return Err(XsError::InvalidPath);
    }
    check_path(name)
}

/// Checks a watch token: any non-empty text without NUL.
pub fn check_token(token: &str) -> Result<(), XsError> {
    if token.is_empty() || token.as_bytes().contains(&0) {
        return Err(XsError::InvalidArgument);
    }
    Ok(())
}

/// Builds one request message: header and payload, limits checked.
#[derive(Debug)]
pub struct RequestBuilder {
    kind: XsdSockmsgType,
    buf: Vec<u8>,
}

impl RequestBuilder {
    /// Starts a request of type `kind`.
    pub fn new(kind: XsdSockmsgType) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + 64);
        buf.resize(HEADER_LEN, 0);
        Self { kind, buf }
    }

    /// Appends a string and its NUL. The string must not contain NUL itself.
    pub fn string(mut self, s: &str) -> Result<Self, XsError> {
        if s.as_bytes().contains(&0) {
            return Err(XsError::InvalidArgument);
        }
        self.raw(s.as_bytes())?;
        self.raw(&[0])?;
        Ok(self)
    }

    /// Appends a checked path and its NUL.
    pub fn path(self, path: &str) -> Result<Self, XsError> {
        check_path(path)?;
        self.string(path)
    }

    /// Appends raw bytes (a written value: no NUL is added).
    pub fn bytes(mut self, data: &[u8]) -> Result<Self, XsError> {
        self.raw(data)?;
        Ok(self)
    }

    /// Appends formatted text and its NUL (decimal numbers and the like).
    pub fn display(self, value: impl fmt::Display) -> Result<Self, XsError> {
        let s = alloc::format!("{value}");
        self.string(&s)
    }

    fn raw(&mut self, data: &[u8]) -> Result<(), XsError> {
        if self.buf.len() - HEADER_LEN + data.len() > XENSTORE_PAYLOAD_MAX {
            return Err(XsError::TooLong);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The request's type.
    pub fn kind(&self) -> XsdSockmsgType {
        self.kind
    }

    /// Finishes the message with its request and transaction ids.
    pub fn finish(mut self, req_id: u32, tx_id: u32) -> Vec<u8> {
        let header = XsdSockmsg {
            type_: self.kind.as_raw(),
            req_id,
            tx_id,
            len: (self.buf.len() - HEADER_LEN) as u32,
        };
        self.buf[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        self.buf
    }
}

/// One complete message read from the response stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its header, as received.
    pub header: XsdSockmsg,
    /// Its payload (`header.len` bytes).
    pub payload: Vec<u8>,
}

impl Message {
    /// The decoded type, if it is one `xs_wire.h` defines.
    pub fn kind(&self) -> Option<XsdSockmsgType> {
        XsdSockmsgType::from_raw(self.header.type_)
    }
}

/// Reassembles messages from the response byte stream, which the server may deliver in
/// pieces of any size. A header announcing more than `XENSTORE_PAYLOAD_MAX` is fatal:
/// the stream cannot be resynchronised after it.
#[derive(Debug, Default)]
pub struct MessageReader {
    header: [u8; HEADER_LEN],
    have: usize,
    current: Option<XsdSockmsg>,
    payload: Vec<u8>,
}

impl MessageReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets a partly read message (after the ring was reset).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether part of a message has been read.
    pub fn in_message(&self) -> bool {
        self.have != 0
    }

    /// Pulls bytes with `read` (which returns how many it copied, 0 when none are
    /// queued) until one message is complete or no bytes are left. Returns the number
    /// of bytes consumed and the message, if one completed. Never reads past the end of
    /// the current message, so later messages stay queued.
    pub fn poll(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> Result<usize, XsError>,
    ) -> Result<(usize, Option<Message>), XsError> {
        let mut consumed = 0;
        loop {
            let header = match self.current {
                Some(h) => h,
                None => {
                    let n = read(&mut self.header[self.have..])?;
                    if n == 0 {
                        return Ok((consumed, None));
                    }
                    consumed += n;
                    self.have += n;
                    if self.have < HEADER_LEN {
                        continue;
                    }
                    let h = XsdSockmsg::from_bytes(&self.header);
                    if h.len as usize > XENSTORE_PAYLOAD_MAX {
                        return Err(ProtocolError::PayloadTooLong(h.len).into());
                    }
                    self.current = Some(h);
                    self.payload = Vec::with_capacity(h.len as usize);
                    h
                }
            };
            let want = header.len as usize - self.payload.len();
            if want > 0 {
                let start = self.payload.len();
                self.payload.resize(header.len as usize, 0);
                let n = match read(&mut self.payload[start..]) {
                    Ok(n) => n,
                    Err(e) => {
                        self.payload.truncate(start);
                        return Err(e);
                    }
                };
                self.payload.truncate(start + n);
                consumed += n;
                if n < want {
                    if n == 0 {
                        return Ok((consumed, None));
                    }
                    continue;
                }
            }
            let payload = core::mem::take(&mut self.payload);
            self.reset();
            return Ok((consumed, Some(Message { header, payload })));
        }
    }
}

/// Splits a payload of NUL-terminated strings. The final NUL may be missing; an empty
/// payload is no strings. Each string must be UTF-8.
pub fn split_strings(payload: &[u8]) -> Result<Vec<&str>, ProtocolError> {
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    body.split(|&b| b == 0)
        .map(|s| core::str::from_utf8(s).map_err(|_| ProtocolError::MalformedReply))
        .collect()
}

/// Parses a single-string reply (`<path>|`, `<transid>|`): one string, its NUL
/// optional, no NUL inside.
pub fn parse_string(payload: &[u8]) -> Result<String, ProtocolError> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    if body.contains(&0) {
        return Err(ProtocolError::MalformedReply);
    }
    core::str::from_utf8(body)
        .map(String::from)
        .map_err(|_| ProtocolError::MalformedReply)
}

/// Parses a `DIRECTORY` reply (`<child-leaf-name>|*`). Each name must be a valid path
/// component; the lone `"\0"` some servers send for no children is accepted.
pub fn parse_directory(payload: &[u8]) -> Result<Vec<String>, ProtocolError> {
    if payload == [0] {
        return Ok(Vec::new());
    }
    split_strings(payload)?
        .into_iter()
        .map(|name| {
            check_component(name)
                .map(|()| String::from(name))
                .map_err(|_| ProtocolError::MalformedReply)
        })
        .collect()
}

/// Parses unsigned decimal text strictly: digits only, no sign, no spaces, no overflow.
pub fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses a `TRANSACTION_START` reply (`<transid>|`): a non-zero unsigned decimal.
pub fn parse_transaction_id(payload: &[u8]) -> Result<u32, ProtocolError> {
    let text = parse_string(payload)?;
    parse_decimal(&text)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|&id| id != 0)
        .ok_or(ProtocolError::MalformedReply)
}

/// A domain's access to a node: the letters of `<perm-as-string>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read only.
    Read,
    /// `w`: write only.
    Write,
    /// `b`: both read and write.
    Both,
}

impl Access {
    /// The wire letter.
    pub const fn letter(self) -> u8 {
        match self {
            Self::None => b'n',
            Self::Read => b'r',
            Self::Write => b'w',
            Self::Both => b'b',
        }
    }

    /// Decodes a wire letter.
    pub const fn from_letter(letter: u8) -> Option<Self> {
        Some(match letter {
            b'n' => Self::None,
            b'r' => Self::Read,
            b'w' => Self::Write,
            b'b' => Self::Both,
            _ => return None,
        })
    }

    /// Whether reading is allowed.
    pub const fn can_read(self) -> bool {
        matches!(self, Self::Read | Self::Both)
    }

    /// Whether writing is allowed.
    pub const fn can_write(self) -> bool {
        matches!(self, Self::Write | Self::Both)
    }
}

/// One domain's entry in a node's access list: one `<perm-as-string>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: DomId,
    /// Its access.
    pub access: Access,
}

impl Perm {
    /// Parses one `<perm-as-string>`: an access letter and a domain id, the number as
    /// C's `strtol(s, &end, 0)` reads it in `xenstore_strings_to_perms()` (decimal,
    /// `0x` hex or leading-zero octal; no sign, no spaces, nothing after it), up to
    /// 65535. Every xenstored writes decimal; a daemon must take all three forms in
    /// `SET_PERMS`, as C xenstored does.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let (&letter, number) = text.split_first()?;
        let access = Access::from_letter(letter)?;
        let domid = parse_c_number(number)?;
        Some(Self { domid, access })
    }
}

impl fmt::Display for Perm {
    /// The wire text (`xenstore_perm_to_string()`): the letter and the decimal domid.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter() as char, self.domid)
    }
}

/// A domain id written as C's `strtol(s, &end, 0)` reads it (without sign or
/// whitespace), up to 65535; `None` for anything else.
fn parse_c_number(s: &[u8]) -> Option<DomId> {
    let text = core::str::from_utf8(s).ok()?;
    let (digits, radix) =
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            (hex, 16)
        } else if text.len() > 1 && text.starts_with('0') {
            (&text[1..], 8)
        } else {
            (text, 10)
        };
    if digits.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    DomId::from_str_radix(digits, radix).ok()
}

/// A node's permissions (`GET_PERMS` / `SET_PERMS`).
///
/// On the wire the first `<perm-as-string>` names the owner (who always has full
/// access) and, by its letter, the access of every domain not listed; the rest are
/// per-domain entries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Permissions {
    /// The owning domain.
    pub owner: DomId,
    /// Access of domains not in `acl`.
    pub others: Access,
    /// Per-domain entries.
    pub acl: Vec<Perm>,
}

impl Permissions {
    /// Owner `owner`, `others` for everyone else, no per-domain entries.
    pub fn new(owner: DomId, others: Access) -> Self {
        Self {
            owner,
            others,
            acl: Vec::new(),
        }
    }

    /// Adds (or replaces) the entry for `domid`.
    pub fn with(mut self, domid: DomId, access: Access) -> Self {
        match self.acl.iter_mut().find(|p| p.domid == domid) {
            Some(p) => p.access = access,
            None => self.acl.push(Perm { domid, access }),
        }
        self
    }

    /// The access these permissions give `domid` (the owner has full access; the first
    /// matching entry wins, as in xenstored).
    pub fn access_for(&self, domid: DomId) -> Access {
        if domid == self.owner {
            return Access::Both;
        }
        self.acl
            .iter()
            .find(|p| p.domid == domid)
            .map_or(self.others, |p| p.access)
    }

    /// The `<perm-as-string>` entries in wire order: owner first.
    pub fn entries(&self) -> impl Iterator<Item = Perm> + '_ {
        core::iter::once(Perm {
            domid: self.owner,
            access: self.others,
        })
        .chain(self.acl.iter().copied())
    }

    /// Parses a `GET_PERMS` reply (`<perm-as-string>|+`).
    pub fn parse(payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut entries = split_strings(payload)?.into_iter().map(parse_perm);
        let first = entries.next().ok_or(ProtocolError::MalformedReply)??;
        let acl = entries.collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            owner: first.domid,
            others: first.access,
            acl,
        })
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.entries().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Parses one `<perm-as-string>` of a reply.
fn parse_perm(s: &str) -> Result<Perm, ProtocolError> {
    Perm::parse(s.as_bytes()).ok_or(ProtocolError::MalformedReply)
}

/// A watch firing: `WATCH_EVENT <epath>|<token>|`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The path that changed (relative if the watch was set on a relative path).
    pub path: String,
    /// The token the watch was registered with.
    pub token: String,
}

impl WatchEvent {
    /// Parses a `WATCH_EVENT` payload. The path must be a valid path; strings after the
    /// token are ignored (reserved for extensions).
    pub fn parse(payload: &[u8]) -> Result<Self, ProtocolError> {
        let parts = split_strings(payload)?;
        let (Some(path), Some(token)) = (parts.get(XS_WATCH_PATH), parts.get(XS_WATCH_TOKEN))
        else {
            return Err(ProtocolError::MalformedReply);
        };
        if check_path(path).is_err() || token.is_empty() {
            return Err(ProtocolError::MalformedReply);
        }
        Ok(Self {
            path: String::from(*path),
            token: String::from(*token),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn paths() {
        for ok in [
            "/",
            "/local/domain/0",
            "device/vbd/768/state",
            "@releaseDomain",
            "a-b_c@d",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a//b",
            "/a/",
            "a b",
            "a\0b",
            "a/./b",
            "caf\u{e9}",
            "x:y",
        ] {
            assert_eq!(check_path(bad), Err(XsError::InvalidPath), "{bad:?}");
        }
        let rel = "a".repeat(XENSTORE_REL_PATH_MAX);
        assert_eq!(check_path(&rel), Ok(()));
        assert_eq!(check_path(&(rel + "a")), Err(XsError::TooLong));
        let abs = alloc::format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX - 1));
        assert_eq!(check_path(&abs), Ok(()));
        assert_eq!(check_path(&(abs + "a")), Err(XsError::TooLong));
        assert_eq!(check_component("vbd"), Ok(()));
        assert_eq!(check_component("vbd/1"), Err(XsError::InvalidPath));
        assert_eq!(check_token(""), Err(XsError::InvalidArgument));
        assert_eq!(check_token("t\0"), Err(XsError::InvalidArgument));
        assert_eq!(check_token("any token: 1"), Ok(()));
    }

    #[test]
    fn request_encoding() {
        let msg = RequestBuilder::new(XsdSockmsgType::Write)
            .path("a/b")
            .unwrap()
            .bytes(b"v\0x")
            .unwrap()
            .finish(9, 3);
        let h = XsdSockmsg::from_prefix(&msg).unwrap();
        assert_eq!(
            h,
            XsdSockmsg {
                type_: 11,
                req_id: 9,
                tx_id: 3,
                len: 7
            }
        );
        assert_eq!(&msg[HEADER_LEN..], b"a/b\0v\0x");

        let msg = RequestBuilder::new(XsdSockmsgType::GetDomainPath)
            .display(7u16)
            .unwrap()
            .finish(1, 0);
        assert_eq!(&msg[HEADER_LEN..], b"7\0");
    }

    #[test]
    fn request_limits() {
        let big = vec![b'x'; XENSTORE_PAYLOAD_MAX - 2];
        // "p\0" + 4094 bytes = exactly the maximum.
        let ok = RequestBuilder::new(XsdSockmsgType::Write)
            .path("p")
            .unwrap()
            .bytes(&big)
            .unwrap()
            .finish(1, 0);
        assert_eq!(ok.len(), MESSAGE_MAX);
        let too_long = RequestBuilder::new(XsdSockmsgType::Write)
            .path("p")
            .unwrap()
            .bytes(&[big.as_slice(), b"y"].concat());
        assert_eq!(too_long.err(), Some(XsError::TooLong));
        assert_eq!(
            RequestBuilder::new(XsdSockmsgType::Watch)
                .string("a\0b")
                .err(),
            Some(XsError::InvalidArgument)
        );
    }

    /// A byte source that hands out at most `chunk` bytes per call.
    fn source(data: &[u8], chunk: usize) -> impl FnMut(&mut [u8]) -> Result<usize, XsError> + '_ {
        let mut at = 0;
        move |buf: &mut [u8]| {
            let n = buf.len().min(chunk).min(data.len() - at);
            buf[..n].copy_from_slice(&data[at..at + n]);
            at += n;
            Ok(n)
        }
    }

    fn encode(kind: XsdSockmsgType, req_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = XsdSockmsg {
            type_: kind.as_raw(),
            req_id,
            tx_id: 0,
            len: payload.len() as u32,
        }
        .to_bytes()
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn reassembly_in_any_chunk_size() {
        let mut stream = encode(XsdSockmsgType::Read, 1, b"value");
        stream.extend(encode(XsdSockmsgType::WatchEvent, 0, b"a/b\0tok\0"));
        stream.extend(encode(XsdSockmsgType::Write, 2, b""));
        for chunk in [1, 3, 16, 17, 1000] {
            let mut src = source(&stream, chunk);
            let mut r = MessageReader::new();
            let mut got = Vec::new();
            let mut total = 0;
            for _ in 0..1000 {
                let (n, m) = r.poll(&mut src).unwrap();
                total += n;
                match m {
                    Some(m) => got.push(m),
                    None => break,
                }
            }
            assert_eq!(total, stream.len(), "chunk {chunk}");
            assert!(!r.in_message());
            assert_eq!(got.len(), 3);
            assert_eq!(got[0].payload, b"value");
            assert_eq!(got[1].kind(), Some(XsdSockmsgType::WatchEvent));
            assert_eq!(got[2].header.req_id, 2);
            assert!(got[2].payload.is_empty());
        }
    }

    #[test]
    fn partial_message_waits() {
        let stream = encode(XsdSockmsgType::Read, 1, b"value");
        let mut r = MessageReader::new();
        let (n, m) = r.poll(source(&stream[..20], 100)).unwrap();
        assert_eq!((n, m), (20, None));
        assert!(r.in_message());
        let (n, m) = r.poll(source(&stream[20..], 100)).unwrap();
        assert_eq!(n, 1);
        assert_eq!(m.unwrap().payload, b"value");
    }

    #[test]
    fn oversized_header_is_fatal() {
        let mut stream = XsdSockmsg {
            type_: 2,
            req_id: 1,
            tx_id: 0,
            len: XENSTORE_PAYLOAD_MAX as u32 + 1,
        }
        .to_bytes()
        .to_vec();
        stream.extend([0; 64]);
        let err = MessageReader::new().poll(source(&stream, 5)).unwrap_err();
        assert_eq!(err, XsError::Protocol(ProtocolError::PayloadTooLong(4097)));
        assert!(err.is_fatal());
    }

    #[test]
    fn reply_parsers() {
        assert_eq!(split_strings(b"").unwrap(), Vec::<&str>::new());
        assert_eq!(split_strings(b"a\0bc\0").unwrap(), ["a", "bc"]);
        assert_eq!(split_strings(b"a\0bc").unwrap(), ["a", "bc"]);
        assert!(split_strings(b"\xff\0").is_err());

        assert_eq!(
            parse_string(b"/local/domain/3\0").unwrap(),
            "/local/domain/3"
        );
        assert!(parse_string(b"a\0b\0").is_err());

        assert_eq!(parse_directory(b"").unwrap(), Vec::<String>::new());
        assert_eq!(parse_directory(b"\0").unwrap(), Vec::<String>::new());
        assert_eq!(parse_directory(b"768\0832\0").unwrap(), ["768", "832"]);
        assert!(parse_directory(b"a\0\0b\0").is_err());
        assert!(parse_directory(b"a/b\0").is_err());

        assert_eq!(parse_transaction_id(b"42\0"), Ok(42));
        assert_eq!(parse_transaction_id(b"4294967295"), Ok(u32::MAX));
        for bad in [&b"0\0"[..], b"", b"-1\0", b" 1\0", b"4294967296\0", b"1x\0"] {
            assert!(parse_transaction_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_decimal("007"), Some(7));
        assert_eq!(parse_decimal("+7"), None);
        assert_eq!(parse_decimal("18446744073709551616"), None);
    }

    #[test]
    fn permissions_round_trip() {
        let p = Permissions::parse(b"n0\0r5\0b7\0").unwrap();
        assert_eq!(
            p,
            Permissions::new(0, Access::None)
                .with(5, Access::Read)
                .with(7, Access::Both)
        );
        assert_eq!(p.access_for(0), Access::Both);
        assert_eq!(p.access_for(5), Access::Read);
        assert_eq!(p.access_for(9), Access::None);
        assert_eq!(p.to_string(), "n0 r5 b7");
        let mut wire = Vec::new();
        for e in p.entries() {
            wire.push(e.access.letter());
            wire.extend(e.domid.to_string().bytes());
            wire.push(0);
        }
        assert_eq!(Permissions::parse(&wire).unwrap(), p);
        assert_eq!(
            Permissions::parse(b"w65535").unwrap(),
            Permissions::new(65535, Access::Write)
        );
        for bad in [&b""[..], b"x1\0", b"r\0", b"r65536\0", b"r-1\0", b"n0\0\0"] {
            assert!(Permissions::parse(bad).is_err(), "{bad:?}");
        }
        // One entry, as C's strtol(.., 0) reads the number.
        let perm = |domid, access| Some(Perm { domid, access });
        assert_eq!(Perm::parse(b"b0x10"), perm(16, Access::Both));
        assert_eq!(Perm::parse(b"w010"), perm(8, Access::Write));
        assert_eq!(Perm::parse(b"n0"), perm(0, Access::None));
        assert_eq!(Perm::parse(b"r0XfFfF"), perm(65535, Access::Read));
        for bad in [
            &b""[..],
            b"r",
            b"x5",
            b"r-1",
            b"r+1",
            b"r5x",
            b"r65536",
            b"r 5",
            b"r0x",
            b"r09",
            b"r0x10000",
        ] {
            assert_eq!(Perm::parse(bad), None, "{bad:?}");
        }
        assert_eq!(perm(7, Access::Read).unwrap().to_string(), "r7");
        assert!(Access::Both.can_read() && Access::Both.can_write());
        assert!(!Access::Write.can_read() && !Access::Read.can_write());
    }

    #[test]
    fn watch_events() {
        assert_eq!(
            WatchEvent::parse(b"device/vbd/768/state\0tok\0").unwrap(),
            WatchEvent {
                path: "device/vbd/768/state".to_string(),
                token: "tok".to_string()
            }
        );
        assert!(WatchEvent::parse(b"a\0t\0extra\0").is_ok());
        for bad in [&b"a\0"[..], b"", b"\0t\0", b"a\0\0", b"a b\0t\0"] {
            assert!(WatchEvent::parse(bad).is_err(), "{bad:?}");
        }
    }
}
