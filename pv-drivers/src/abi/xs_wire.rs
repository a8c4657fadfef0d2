//! `xen/include/public/io/xs_wire.h`: the xenstore wire protocol: message header and
//! types, the error strings, and the shared ring page between a domain and xenstored.
//!
//! Limits here ([`XENSTORE_PAYLOAD_MAX`], the path maxima) are what a peer's lengths
//! are checked against before use. The ring discipline itself (indices masked with
//! `MASK_XENSTORE_IDX`, barriers) belongs to the generic ring code, not here.

use super::errno::XenErrno;

/// `enum xsd_sockmsg_type`: the `type` of an [`XsdSockmsg`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsdSockmsgType {
    /// `XS_CONTROL`.
    Control = 0,
    /// `XS_DIRECTORY`.
    Directory = 1,
    /// `XS_READ`.
    Read = 2,
    /// `XS_GET_PERMS`.
    GetPerms = 3,
    /// `XS_WATCH`.
    Watch = 4,
    /// `XS_UNWATCH`.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`.
    Introduce = 8,
    /// `XS_RELEASE`.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT`.
    WatchEvent = 15,
    /// `XS_ERROR`.
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESET_WATCHES`.
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`.
    DirectoryPart = 22,
    /// `XS_GET_FEATURE`.
    GetFeature = 23,
    /// `XS_SET_FEATURE`.
    SetFeature = 24,
    /// `XS_GET_QUOTA`.
    GetQuota = 25,
    /// `XS_SET_QUOTA`.
    SetQuota = 26,
}

impl XsdSockmsgType {
    /// `XS_DEBUG`: an alias of `XS_CONTROL`.
    pub const DEBUG: Self = Self::Control;

    /// Decodes a wire `type`. `XS_INVALID`, the removed `XS_RESTRICT` (20) and anything
    /// from `XS_TYPE_COUNT` up give `None`.
    pub fn from_raw(value: u32) -> Option<Self> {
        Some(match value {
            0 => Self::Control,
            1 => Self::Directory,
            2 => Self::Read,
            3 => Self::GetPerms,
            4 => Self::Watch,
            5 => Self::Unwatch,
            6 => Self::TransactionStart,
            7 => Self::TransactionEnd,
            8 => Self::Introduce,
            9 => Self::Release,
            10 => Self::GetDomainPath,
            11 => Self::Write,
            12 => Self::Mkdir,
            13 => Self::Rm,
            14 => Self::SetPerms,
            15 => Self::WatchEvent,
            16 => Self::Error,
            17 => Self::IsDomainIntroduced,
            18 => Self::Resume,
            19 => Self::SetTarget,
            21 => Self::ResetWatches,
            22 => Self::DirectoryPart,
            23 => Self::GetFeature,
            24 => Self::SetFeature,
            25 => Self::GetQuota,
            26 => Self::SetQuota,
            _ => return None,
        })
    }

    /// The wire value.
    pub const fn as_raw(self) -> u32 {
        self as u32
    }
}

/// `XS_TYPE_COUNT`: number of valid types (one past the highest).
pub const XS_TYPE_COUNT: u32 = 27;
/// `XS_INVALID`: guaranteed to remain an invalid type.
pub const XS_INVALID: u32 = 0xffff;

/// `enum xs_watch_type`: index of the path in an `XS_WATCH_EVENT` payload.
pub const XS_WATCH_PATH: usize = 0;
/// `enum xs_watch_type`: index of the token in an `XS_WATCH_EVENT` payload.
pub const XS_WATCH_TOKEN: usize = 1;

/// `struct xsd_sockmsg`: the header of every message, followed by `len` bytes of
/// payload (generally NUL-terminated strings).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XsdSockmsg {
    /// `XS_*` ([`XsdSockmsgType`]).
    pub type_: u32,
    /// Request identifier, echoed in the daemon's response.
    pub req_id: u32,
    /// Transaction id (0 if not related to a transaction).
    pub tx_id: u32,
    /// Length of the payload that follows; at most [`XENSTORE_PAYLOAD_MAX`].
    pub len: u32,
}

/// `xsd_errors[]`: the errors xenstored reports, in the header's order. On the wire an
/// `XS_ERROR` reply's payload is the error's name (e.g. `"ENOENT"`) and a NUL; the
/// numbers in the C table are the host's and do not travel.
pub const XSD_ERRORS: [XenErrno; 16] = [
    XenErrno::EINVAL,
    XenErrno::EACCES,
    XenErrno::EEXIST,
    XenErrno::EISDIR,
    XenErrno::ENOENT,
    XenErrno::ENOMEM,
    XenErrno::ENOSPC,
    XenErrno::EIO,
    XenErrno::ENOTEMPTY,
    XenErrno::ENOSYS,
    XenErrno::EROFS,
    XenErrno::EBUSY,
    XenErrno::EAGAIN,
    XenErrno::EISCONN,
    XenErrno::E2BIG,
    XenErrno::EPERM,
];

/// Decodes an `XS_ERROR` payload (the name, with or without its NUL); `None` for a
/// name not in [`XSD_ERRORS`].
pub fn xsd_error_from_payload(payload: &[u8]) -> Option<XenErrno> {
    let name = payload.strip_suffix(&[0]).unwrap_or(payload);
    XSD_ERRORS.into_iter().find(|e| e.name().as_bytes() == name)
}

/// The `XS_ERROR` payload name for `err`, if xenstore can report it.
pub fn xsd_error_name(err: XenErrno) -> Option<&'static str> {
    XSD_ERRORS.contains(&err).then(|| err.name())
}

/// `XENSTORE_RING_SIZE`: bytes in each direction's ring.
pub const XENSTORE_RING_SIZE: usize = 1024;
/// `XENSTORE_PAYLOAD_MAX`: "violating this is very bad".
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`: violating it just gets an error back.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`: violating it just gets an error back.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// `MASK_XENSTORE_IDX(idx)`: a free-running ring index to a byte offset.
pub const fn mask_xenstore_idx(idx: u32) -> usize {
    idx as usize & (XENSTORE_RING_SIZE - 1)
}

/// `XENSTORE_SERVER_FEATURE_RECONNECTION`: the ring can be reconnected.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR`: the `error` field is present.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `XENSTORE_SERVER_FEATURE_WATCHDEPTH`: `XS_WATCH` takes a depth parameter.
pub const XENSTORE_SERVER_FEATURE_WATCHDEPTH: u32 = 4;
/// `XENSTORE_SERVER_FEATURE_DOMID_ANY`: `DOMID_ANY` is allowed in node permissions.
pub const XENSTORE_SERVER_FEATURE_DOMID_ANY: u32 = 8;
/// `XENSTORE_CONNECTED`: the steady state of `connection`.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `XENSTORE_RECONNECT`: reconnect in progress.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `XENSTORE_ERROR_NONE`: no error.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `XENSTORE_ERROR_COMM`: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `XENSTORE_ERROR_RINGIDX`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `XENSTORE_ERROR_PROTO`: protocol violation (payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// `struct xenstore_domain_interface`: the xenstore page (`HVM_PARAM_STORE_PFN`).
/// Indices (`XENSTORE_RING_IDX`) run free and are masked with [`mask_xenstore_idx`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenstoreDomainInterface {
    /// Requests to the xenstore daemon.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and asynchronous watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// `req_cons`.
    pub req_cons: u32,
    /// `req_prod`.
    pub req_prod: u32,
    /// `rsp_cons`.
    pub rsp_cons: u32,
    /// `rsp_prod`.
    pub rsp_prod: u32,
    /// `XENSTORE_SERVER_FEATURE_*` bitmap.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` / `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*`.
    pub error: u32,
    /// Event channel for xenstored to signal (dom0less/Hyperlaunch; used if non-zero).
    pub evtchn_port: u32,
}

impl Default for XenstoreDomainInterface {
    fn default() -> Self {
        Self::zeroed()
    }
}

pod_bytes!(XsdSockmsg {
    type_,
    req_id,
    tx_id,
    len
});
pod_bytes!(XenstoreDomainInterface {
    req,
    rsp,
    req_cons,
    req_prod,
    rsp_cons,
    rsp_prod,
    server_features,
    connection,
    error,
    evtchn_port,
});

const _: () = assert!(core::mem::size_of::<XsdSockmsg>() == 16);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, rsp) == 1024);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, req_cons) == 2048);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, rsp_prod) == 2060);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, server_features) == 2064);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, evtchn_port) == 2076);
const _: () = assert!(core::mem::size_of::<XenstoreDomainInterface>() == 2080);
const _: () = assert!(XENSTORE_RING_SIZE.is_power_of_two());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types_round_trip() {
        for raw in 0..XS_TYPE_COUNT {
            match XsdSockmsgType::from_raw(raw) {
                Some(t) => assert_eq!(t.as_raw(), raw),
                None => assert_eq!(raw, 20, "only the removed XS_RESTRICT is a gap"),
            }
        }
        assert_eq!(XsdSockmsgType::from_raw(XS_TYPE_COUNT), None);
        assert_eq!(XsdSockmsgType::from_raw(XS_INVALID), None);
        assert_eq!(XsdSockmsgType::Read.as_raw(), 2);
        assert_eq!(XsdSockmsgType::WatchEvent.as_raw(), 15);
        assert_eq!(XsdSockmsgType::ResetWatches.as_raw(), 21);
        assert_eq!(XsdSockmsgType::DEBUG, XsdSockmsgType::Control);
    }

    #[test]
    fn header_bytes() {
        let h = XsdSockmsg {
            type_: XsdSockmsgType::Write.as_raw(),
            req_id: 7,
            tx_id: 0,
            len: 12,
        };
        assert_eq!(
            h.to_bytes(),
            [11, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0]
        );
        assert_eq!(XsdSockmsg::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn error_strings() {
        assert_eq!(xsd_error_from_payload(b"ENOENT\0"), Some(XenErrno::ENOENT));
        assert_eq!(xsd_error_from_payload(b"EAGAIN"), Some(XenErrno::EAGAIN));
        assert_eq!(xsd_error_from_payload(b"ENOEXEC\0"), None);
        assert_eq!(xsd_error_from_payload(b""), None);
        assert_eq!(xsd_error_name(XenErrno::E2BIG), Some("E2BIG"));
        assert_eq!(xsd_error_name(XenErrno::ESRCH), None);
    }

    #[test]
    fn ring_page_indices() {
        let mut page = XenstoreDomainInterface {
            req_prod: 1030,
            ..Default::default()
        };
        page.rsp[1023] = b'x';
        let b = page.to_bytes();
        assert_eq!(&b[2052..2056], &1030u32.to_le_bytes());
        assert_eq!(b[2047], b'x');
        assert_eq!(mask_xenstore_idx(page.req_prod), 6);
        assert_eq!(XenstoreDomainInterface::from_bytes(&b), page);
    }
}
