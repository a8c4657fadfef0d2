//! Request payload decoding and message encoding for `xen/include/public/io/xs_wire.h`,
//! with the argument rules of C xenstored (`get_string()`, `get_strings()`, `onearg()`
//! in `tools/xenstored/core.c`, `parse_domid()` in `domain.c`).
//!
//! A payload is a sequence of NUL-terminated strings; bytes after the last NUL do not
//! form an argument. Each operation states how many it needs; a wrong count is
//! `EINVAL`.

use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::xs_wire::{XsdSockmsg, XsdSockmsgType, xsd_error_name};

/// The NUL-terminated strings of `payload`, without their NULs.
pub(super) fn strings(payload: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = payload.split(|&b| b == 0).collect();
    // The piece after the last NUL is not terminated: not an argument.
    out.pop();
    out
}

/// The single argument of a payload that is exactly one string and its NUL.
pub(super) fn onearg(payload: &[u8]) -> Result<&[u8], XenErrno> {
    match payload.split_last() {
        Some((0, arg)) if !arg.contains(&0) => Ok(arg),
        _ => Err(XenErrno::EINVAL),
    }
}

/// A domain id: decimal digits, at most 65535.
pub(super) fn parse_domid(arg: &[u8]) -> Result<u16, XenErrno> {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return Err(XenErrno::EINVAL);
    }
    core::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(XenErrno::EINVAL)
}

/// C's `atoi()`: optional sign and leading digits, anything after ignored, 0 if none;
/// saturating instead of undefined on overflow.
pub(super) fn atoi(arg: &[u8]) -> i64 {
    let (neg, digits) = match arg.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, arg),
    };
    let value = digits
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0i64, |v, &b| {
            v.saturating_mul(10).saturating_add(i64::from(b - b'0'))
        });
    if neg { -value } else { value }
}

/// A message: the header (type, ids, length) and the payload.
pub(super) fn encode(type_: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let header = XsdSockmsg {
        type_,
        req_id,
        tx_id,
        len: payload.len() as u32,
    };
    let mut out = Vec::with_capacity(XsdSockmsg::SIZE + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    out
}

/// The `XS_ERROR` payload for `err`: its name and a NUL. An error xenstore cannot
/// name is reported as `EINVAL`, as C xenstored's `send_error()` does.
pub(super) fn error_payload(err: XenErrno) -> Vec<u8> {
    let name = xsd_error_name(err).unwrap_or("EINVAL");
    let mut out = name.as_bytes().to_vec();
    out.push(0);
    out
}

/// The name C xenstored uses for a message type (`wire_funcs[].str`), or `UNKNOWN`.
pub(super) fn type_name(raw: u32) -> &'static str {
    use XsdSockmsgType as T;
    match XsdSockmsgType::from_raw(raw) {
        Some(T::Control) => "CONTROL",
        Some(T::Directory) => "DIRECTORY",
        Some(T::Read) => "READ",
        Some(T::GetPerms) => "GET_PERMS",
        Some(T::Watch) => "WATCH",
        Some(T::Unwatch) => "UNWATCH",
        Some(T::TransactionStart) => "TRANSACTION_START",
        Some(T::TransactionEnd) => "TRANSACTION_END",
        Some(T::Introduce) => "INTRODUCE",
        Some(T::Release) => "RELEASE",
        Some(T::GetDomainPath) => "GET_DOMAIN_PATH",
        Some(T::Write) => "WRITE",
        Some(T::Mkdir) => "MKDIR",
        Some(T::Rm) => "RM",
        Some(T::SetPerms) => "SET_PERMS",
        Some(T::WatchEvent) => "WATCH_EVENT",
        Some(T::Error) => "ERROR",
        Some(T::IsDomainIntroduced) => "IS_DOMAIN_INTRODUCED",
        Some(T::Resume) => "RESUME",
        Some(T::SetTarget) => "SET_TARGET",
        Some(T::ResetWatches) => "RESET_WATCHES",
        Some(T::DirectoryPart) => "DIRECTORY_PART",
        Some(T::GetFeature) => "GET_FEATURE",
        Some(T::SetFeature) => "SET_FEATURE",
        Some(T::GetQuota) => "GET_QUOTA",
        Some(T::SetQuota) => "SET_QUOTA",
        None => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_splitting() {
        assert_eq!(strings(b""), Vec::<&[u8]>::new());
        assert_eq!(strings(b"a"), Vec::<&[u8]>::new());
        assert_eq!(strings(b"a\0"), vec![&b"a"[..]]);
        assert_eq!(strings(b"a\0b\0tail"), vec![&b"a"[..], b"b"]);
        assert_eq!(strings(b"\0\0"), vec![&b""[..], b""]);
        assert_eq!(onearg(b"/a\0"), Ok(&b"/a"[..]));
        assert_eq!(onearg(b"\0"), Ok(&b""[..]));
        for bad in [&b""[..], b"/a", b"/a\0\0", b"a\0b\0", b"/a\0x"] {
            assert_eq!(onearg(bad), Err(XenErrno::EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_domid(b"0"), Ok(0));
        assert_eq!(parse_domid(b"65535"), Ok(65535));
        for bad in [
            &b""[..],
            b"65536",
            b"-1",
            b"1x",
            b" 1",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_domid(bad), Err(XenErrno::EINVAL), "{bad:?}");
        }
        assert_eq!(atoi(b"12abc"), 12);
        assert_eq!(atoi(b"-3"), -3);
        assert_eq!(atoi(b"x"), 0);
        assert_eq!(atoi(b"99999999999999999999999"), i64::MAX);
    }

    #[test]
    fn messages() {
        let m = encode(XsdSockmsgType::Read.as_raw(), 9, 3, b"ab");
        assert_eq!(m[..16], [2, 0, 0, 0, 9, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&m[16..], b"ab");
        assert_eq!(error_payload(XenErrno::ENOENT), b"ENOENT\0");
        assert_eq!(error_payload(XenErrno::ESRCH), b"EINVAL\0");
        assert_eq!(type_name(22), "DIRECTORY_PART");
        assert_eq!(type_name(20), "UNKNOWN");
    }
}
