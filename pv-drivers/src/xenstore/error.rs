//! Errors of the xenstore client.
//!
//! [`XsError`] separates what xenstored *said* (an `XS_ERROR` reply, [`XsError::Xen`])
//! from what the client refused to send (limits, bad paths), from what the transport
//! saw go wrong ([`XsError::Timeout`], [`XsError::Protocol`]). Every variant is `Copy`
//! so that errors carry no allocation and can be matched cheaply in retry loops.

use core::fmt;

use crate::abi::errno::XenErrno;

/// Why a xenstore operation failed.
///
/// The doc comment of each variant is its [`Display`](fmt::Display) text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsError {
    /// xenstored refused the request (an `XS_ERROR` reply naming a known error)
    Xen(XenErrno),
    /// the request exceeds `XENSTORE_PAYLOAD_MAX` or a path limit, so it was not sent
    TooLong,
    /// not a valid xenstore path (empty, a character outside `A-Za-z0-9-/_@`, a doubled
    /// or trailing slash), so it was not sent
    InvalidPath,
    /// an argument cannot travel on the wire (a NUL in a token, an empty token)
    InvalidArgument,
    /// the shared page is smaller than `struct xenstore_domain_interface`
    PageTooSmall,
    /// xenstored made no progress within the client's wait budget
    Timeout,
    /// xenstored broke the protocol
    Protocol(ProtocolError),
    /// xenstored reported a connection error in the ring page (`XENSTORE_ERROR_*`)
    ServerError(u32),
    /// the connection is unusable after an earlier fatal error; reconnect first
    Broken,
    /// xenstored does not offer ring reconnection
    ReconnectUnsupported,
}

impl XsError {
    /// Whether the error leaves the byte streams out of step, so that nothing more can
    /// be exchanged until the ring is reconnected.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Protocol(p) => p.is_fatal(),
            Self::ServerError(_) | Self::Broken => true,
            _ => false,
        }
    }

    /// Whether this is xenstored's `EAGAIN` (a transaction conflict: retry).
    pub fn is_again(&self) -> bool {
        *self == Self::Xen(XenErrno::EAGAIN)
    }

    /// Whether the connection can still carry requests after this error (so that, for
    /// example, aborting a transaction is worth a try).
    pub fn connection_usable(&self) -> bool {
        !self.is_fatal() && *self != Self::Timeout
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xen(e) => write!(f, "xenstored refused the request: {e}"),
            Self::TooLong => f.write_str(
                "the request exceeds XENSTORE_PAYLOAD_MAX or a path limit, so it was not sent",
            ),
            Self::InvalidPath => f.write_str("not a valid xenstore path, so it was not sent"),
            Self::InvalidArgument => f.write_str("an argument cannot travel on the wire"),
            Self::PageTooSmall => {
                f.write_str("the shared page is smaller than struct xenstore_domain_interface")
            }
            Self::Timeout => f.write_str("xenstored made no progress within the wait budget"),
            Self::Protocol(p) => write!(f, "xenstored broke the protocol: {p}"),
            Self::ServerError(code) => {
                write!(
                    f,
                    "xenstored reported connection error {code} in the ring page"
                )
            }
            Self::Broken => f.write_str(
                "the connection is unusable after an earlier fatal error; reconnect first",
            ),
            Self::ReconnectUnsupported => f.write_str("xenstored does not offer ring reconnection"),
        }
    }
}

impl core::error::Error for XsError {}

impl From<ProtocolError> for XsError {
    fn from(p: ProtocolError) -> Self {
        Self::Protocol(p)
    }
}

/// How xenstored broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// a ring's producer and consumer indices are more than the ring size apart
    RingIndices {
        /// The consumer index seen.
        cons: u32,
        /// The producer index seen.
        prod: u32,
    },
    /// a message header announces more than `XENSTORE_PAYLOAD_MAX` bytes of payload
    PayloadTooLong(u32),
    /// the reply to a request has neither the request's type nor `XS_ERROR`
    UnexpectedReply {
        /// The type of the request.
        sent: u32,
        /// The type of the reply.
        got: u32,
    },
    /// an `XS_ERROR` reply names an error that `xs_wire.h` does not list
    UnknownErrorName,
    /// a reply's payload is not of the form its type requires
    MalformedReply,
}

impl ProtocolError {
    /// Whether the violation leaves the byte stream out of step (bad indices, a length
    /// that cannot be trusted) rather than just spoiling one reply.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::RingIndices { .. } | Self::PayloadTooLong(_))
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RingIndices { cons, prod } => write!(
                f,
                "ring indices cons {cons:#x} and prod {prod:#x} are more than the ring size apart"
            ),
            Self::PayloadTooLong(len) => write!(
                f,
                "a message header announces {len} bytes of payload (more than XENSTORE_PAYLOAD_MAX)"
            ),
            Self::UnexpectedReply { sent, got } => {
                write!(f, "a request of type {sent} got a reply of type {got}")
            }
            Self::UnknownErrorName => {
                f.write_str("an XS_ERROR reply names an error that xs_wire.h does not list")
            }
            Self::MalformedReply => {
                f.write_str("a reply's payload is not of the form its type requires")
            }
        }
    }
}

impl core::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn fatal_and_usable() {
        assert!(XsError::Protocol(ProtocolError::PayloadTooLong(5000)).is_fatal());
        assert!(
            XsError::Protocol(ProtocolError::RingIndices {
                cons: 0,
                prod: 2000
            })
            .is_fatal()
        );
        assert!(!XsError::Protocol(ProtocolError::MalformedReply).is_fatal());
        assert!(XsError::Broken.is_fatal());
        assert!(!XsError::Timeout.is_fatal());
        assert!(!XsError::Timeout.connection_usable());
        assert!(XsError::Xen(XenErrno::ENOENT).connection_usable());
        assert!(XsError::Xen(XenErrno::EAGAIN).is_again());
        assert!(!XsError::Xen(XenErrno::EACCES).is_again());
    }

    #[test]
    fn messages() {
        assert_eq!(
            XsError::Xen(XenErrno::ENOENT).to_string(),
            "xenstored refused the request: No such file or directory (ENOENT)"
        );
        assert!(
            XsError::Protocol(ProtocolError::PayloadTooLong(5000))
                .to_string()
                .contains("5000 bytes")
        );
    }
}
