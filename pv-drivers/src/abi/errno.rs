//! `xen/include/public/errno.h`: the error values hypercalls return, negated.
//!
//! Xen's list is taken from x86 Linux. `EINTR` (4) and `ERESTART` (85) are left out:
//! the header declares them only under `__XEN__` as "internal only, should never be
//! exposed to the guest", so a guest that sees them has met a broken hypervisor.

use core::fmt;

/// `enum xen_errno`: a Xen error value (positive; hypercalls return its negation).
///
/// The doc comment of each variant is the header's description, which is also its
/// [`Display`](fmt::Display) text.
#[allow(
    clippy::upper_case_acronyms,
    reason = "the header's names, so that code and Xen's documentation grep alike"
)]
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XenErrno {
    /// Operation not permitted
    EPERM = 1,
    /// No such file or directory
    ENOENT = 2,
    /// No such process
    ESRCH = 3,
    /// I/O error
    EIO = 5,
    /// No such device or address
    ENXIO = 6,
    /// Arg list too long
    E2BIG = 7,
    /// Exec format error
    ENOEXEC = 8,
    /// Bad file number
    EBADF = 9,
    /// No child processes
    ECHILD = 10,
    /// Try again
    EAGAIN = 11,
    /// Out of memory
    ENOMEM = 12,
    /// Permission denied
    EACCES = 13,
    /// Bad address
    EFAULT = 14,
    /// Device or resource busy
    EBUSY = 16,
    /// File exists
    EEXIST = 17,
    /// Cross-device link
    EXDEV = 18,
    /// No such device
    ENODEV = 19,
    /// Not a directory
    ENOTDIR = 20,
    /// Is a directory
    EISDIR = 21,
    /// Invalid argument
    EINVAL = 22,
    /// File table overflow
    ENFILE = 23,
    /// Too many open files
    EMFILE = 24,
    /// No space left on device
    ENOSPC = 28,
    /// Read-only file system
    EROFS = 30,
    /// Too many links
    EMLINK = 31,
    /// Math argument out of domain of func
    EDOM = 33,
    /// Math result not representable
    ERANGE = 34,
    /// Resource deadlock would occur
    EDEADLK = 35,
    /// File name too long
    ENAMETOOLONG = 36,
    /// No record locks available
    ENOLCK = 37,
    /// Function not implemented
    ENOSYS = 38,
    /// Directory not empty
    ENOTEMPTY = 39,
    /// No data available
    ENODATA = 61,
    /// Timer expired
    ETIME = 62,
    /// Not a data message
    EBADMSG = 74,
    /// Value too large for defined data type
    EOVERFLOW = 75,
    /// Illegal byte sequence
    EILSEQ = 84,
    /// Socket operation on non-socket
    ENOTSOCK = 88,
    /// Message too large.
    EMSGSIZE = 90,
    /// Operation not supported on transport endpoint
    EOPNOTSUPP = 95,
    /// Address already in use
    EADDRINUSE = 98,
    /// Cannot assign requested address
    EADDRNOTAVAIL = 99,
    /// No buffer space available
    ENOBUFS = 105,
    /// Transport endpoint is already connected
    EISCONN = 106,
    /// Transport endpoint is not connected
    ENOTCONN = 107,
    /// Connection timed out
    ETIMEDOUT = 110,
    /// Connection refused
    ECONNREFUSED = 111,
}

impl XenErrno {
    /// `EWOULDBLOCK`: Operation would block; aliases `EAGAIN`.
    pub const EWOULDBLOCK: Self = Self::EAGAIN;
    /// `EDEADLOCK`: Resource deadlock would occur; aliases `EDEADLK`.
    pub const EDEADLOCK: Self = Self::EDEADLK;

    /// Every value the header defines for guests, in header order (aliases excluded).
    pub const ALL: [Self; 47] = [
        Self::EPERM,
        Self::ENOENT,
        Self::ESRCH,
        Self::EIO,
        Self::ENXIO,
        Self::E2BIG,
        Self::ENOEXEC,
        Self::EBADF,
        Self::ECHILD,
        Self::EAGAIN,
        Self::ENOMEM,
        Self::EACCES,
        Self::EFAULT,
        Self::EBUSY,
        Self::EEXIST,
        Self::EXDEV,
        Self::ENODEV,
        Self::ENOTDIR,
        Self::EISDIR,
        Self::EINVAL,
        Self::ENFILE,
        Self::EMFILE,
        Self::ENOSPC,
        Self::EROFS,
        Self::EMLINK,
        Self::EDOM,
        Self::ERANGE,
        Self::EDEADLK,
        Self::ENAMETOOLONG,
        Self::ENOLCK,
        Self::ENOSYS,
        Self::ENOTEMPTY,
        Self::ENODATA,
        Self::ETIME,
        Self::EBADMSG,
        Self::EOVERFLOW,
        Self::EILSEQ,
        Self::ENOTSOCK,
        Self::EMSGSIZE,
        Self::EOPNOTSUPP,
        Self::EADDRINUSE,
        Self::EADDRNOTAVAIL,
        Self::ENOBUFS,
        Self::EISCONN,
        Self::ENOTCONN,
        Self::ETIMEDOUT,
        Self::ECONNREFUSED,
    ];

    /// Decodes a hypercall return value: `-errno` gives the error; success values
    /// (zero or positive) and negative values the header does not define give `None`.
    pub fn from_raw(ret: i64) -> Option<Self> {
        Some(match ret {
            -1 => Self::EPERM,
            -2 => Self::ENOENT,
            -3 => Self::ESRCH,
            -5 => Self::EIO,
            -6 => Self::ENXIO,
            -7 => Self::E2BIG,
            -8 => Self::ENOEXEC,
            -9 => Self::EBADF,
            -10 => Self::ECHILD,
            -11 => Self::EAGAIN,
            -12 => Self::ENOMEM,
            -13 => Self::EACCES,
            -14 => Self::EFAULT,
            -16 => Self::EBUSY,
            -17 => Self::EEXIST,
            -18 => Self::EXDEV,
            -19 => Self::ENODEV,
            -20 => Self::ENOTDIR,
            -21 => Self::EISDIR,
            -22 => Self::EINVAL,
            -23 => Self::ENFILE,
            -24 => Self::EMFILE,
            -28 => Self::ENOSPC,
            -30 => Self::EROFS,
            -31 => Self::EMLINK,
            -33 => Self::EDOM,
            -34 => Self::ERANGE,
            -35 => Self::EDEADLK,
            -36 => Self::ENAMETOOLONG,
            -37 => Self::ENOLCK,
            -38 => Self::ENOSYS,
            -39 => Self::ENOTEMPTY,
            -61 => Self::ENODATA,
            -62 => Self::ETIME,
            -74 => Self::EBADMSG,
            -75 => Self::EOVERFLOW,
            -84 => Self::EILSEQ,
            -88 => Self::ENOTSOCK,
            -90 => Self::EMSGSIZE,
            -95 => Self::EOPNOTSUPP,
            -98 => Self::EADDRINUSE,
            -99 => Self::EADDRNOTAVAIL,
            -105 => Self::ENOBUFS,
            -106 => Self::EISCONN,
            -107 => Self::ENOTCONN,
            -110 => Self::ETIMEDOUT,
            -111 => Self::ECONNREFUSED,
            _ => return None,
        })
    }

    /// The positive error number (`XEN_<name>`).
    pub const fn as_raw(self) -> i32 {
        self as i32
    }

    /// The value a failing hypercall returns: the negated error number.
    pub const fn as_neg(self) -> i64 {
        -(self as i64)
    }

    /// The header's name for the value, e.g. `"EINVAL"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::EPERM => "EPERM",
            Self::ENOENT => "ENOENT",
            Self::ESRCH => "ESRCH",
            Self::EIO => "EIO",
            Self::ENXIO => "ENXIO",
            Self::E2BIG => "E2BIG",
            Self::ENOEXEC => "ENOEXEC",
            Self::EBADF => "EBADF",
            Self::ECHILD => "ECHILD",
            Self::EAGAIN => "EAGAIN",
            Self::ENOMEM => "ENOMEM",
            Self::EACCES => "EACCES",
            Self::EFAULT => "EFAULT",
            Self::EBUSY => "EBUSY",
            Self::EEXIST => "EEXIST",
            Self::EXDEV => "EXDEV",
            Self::ENODEV => "ENODEV",
            Self::ENOTDIR => "ENOTDIR",
            Self::EISDIR => "EISDIR",
            Self::EINVAL => "EINVAL",
            Self::ENFILE => "ENFILE",
            Self::EMFILE => "EMFILE",
            Self::ENOSPC => "ENOSPC",
            Self::EROFS => "EROFS",
            Self::EMLINK => "EMLINK",
            Self::EDOM => "EDOM",
            Self::ERANGE => "ERANGE",
            Self::EDEADLK => "EDEADLK",
            Self::ENAMETOOLONG => "ENAMETOOLONG",
            Self::ENOLCK => "ENOLCK",
            Self::ENOSYS => "ENOSYS",
            Self::ENOTEMPTY => "ENOTEMPTY",
            Self::ENODATA => "ENODATA",
            Self::ETIME => "ETIME",
            Self::EBADMSG => "EBADMSG",
            Self::EOVERFLOW => "EOVERFLOW",
            Self::EILSEQ => "EILSEQ",
            Self::ENOTSOCK => "ENOTSOCK",
            Self::EMSGSIZE => "EMSGSIZE",
            Self::EOPNOTSUPP => "EOPNOTSUPP",
            Self::EADDRINUSE => "EADDRINUSE",
            Self::EADDRNOTAVAIL => "EADDRNOTAVAIL",
            Self::ENOBUFS => "ENOBUFS",
            Self::EISCONN => "EISCONN",
            Self::ENOTCONN => "ENOTCONN",
            Self::ETIMEDOUT => "ETIMEDOUT",
            Self::ECONNREFUSED => "ECONNREFUSED",
        }
    }

    /// The header's description of the value.
    pub const fn description(self) -> &'static str {
        match self {
            Self::EPERM => "Operation not permitted",
            Self::ENOENT => "No such file or directory",
            Self::ESRCH => "No such process",
            Self::EIO => "I/O error",
            Self::ENXIO => "No such device or address",
            Self::E2BIG => "Arg list too long",
            Self::ENOEXEC => "Exec format error",
            Self::EBADF => "Bad file number",
            Self::ECHILD => "No child processes",
            Self::EAGAIN => "Try again",
            Self::ENOMEM => "Out of memory",
            Self::EACCES => "Permission denied",
            Self::EFAULT => "Bad address",
            Self::EBUSY => "Device or resource busy",
            Self::EEXIST => "File exists",
            Self::EXDEV => "Cross-device link",
            Self::ENODEV => "No such device",
            Self::ENOTDIR => "Not a directory",
            Self::EISDIR => "Is a directory",
            Self::EINVAL => "Invalid argument",
            Self::ENFILE => "File table overflow",
            Self::EMFILE => "Too many open files",
            Self::ENOSPC => "No space left on device",
            Self::EROFS => "Read-only file system",
            Self::EMLINK => "Too many links",
            Self::EDOM => "Math argument out of domain of func",
            Self::ERANGE => "Math result not representable",
            Self::EDEADLK => "Resource deadlock would occur",
            Self::ENAMETOOLONG => "File name too long",
            Self::ENOLCK => "No record locks available",
            Self::ENOSYS => "Function not implemented",
            Self::ENOTEMPTY => "Directory not empty",
            Self::ENODATA => "No data available",
            Self::ETIME => "Timer expired",
            Self::EBADMSG => "Not a data message",
            Self::EOVERFLOW => "Value too large for defined data type",
            Self::EILSEQ => "Illegal byte sequence",
            Self::ENOTSOCK => "Socket operation on non-socket",
            Self::EMSGSIZE => "Message too large.",
            Self::EOPNOTSUPP => "Operation not supported on transport endpoint",
            Self::EADDRINUSE => "Address already in use",
            Self::EADDRNOTAVAIL => "Cannot assign requested address",
            Self::ENOBUFS => "No buffer space available",
            Self::EISCONN => "Transport endpoint is already connected",
            Self::ENOTCONN => "Transport endpoint is not connected",
            Self::ETIMEDOUT => "Connection timed out",
            Self::ECONNREFUSED => "Connection refused",
        }
    }
}

impl fmt::Display for XenErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.description(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negated_values_round_trip() {
        for e in XenErrno::ALL {
            assert!(e.as_neg() < 0);
            assert_eq!(XenErrno::from_raw(e.as_neg()), Some(e));
        }
    }

    #[test]
    fn header_values() {
        assert_eq!(XenErrno::EPERM.as_neg(), -1);
        assert_eq!(XenErrno::EAGAIN.as_raw(), 11);
        assert_eq!(XenErrno::EWOULDBLOCK, XenErrno::EAGAIN);
        assert_eq!(XenErrno::EDEADLOCK, XenErrno::EDEADLK);
        assert_eq!(XenErrno::ENOSYS.as_raw(), 38);
        assert_eq!(XenErrno::ECONNREFUSED.as_raw(), 111);
    }

    #[test]
    fn non_errors_and_unknown_values_are_none() {
        assert_eq!(XenErrno::from_raw(0), None);
        assert_eq!(XenErrno::from_raw(22), None);
        // EINTR is internal to Xen; 15 and 200 are not in the header.
        assert_eq!(XenErrno::from_raw(-4), None);
        assert_eq!(XenErrno::from_raw(-15), None);
        assert_eq!(XenErrno::from_raw(-200), None);
        assert_eq!(XenErrno::from_raw(i64::MIN), None);
    }
}
