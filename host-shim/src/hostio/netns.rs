//! Private network namespaces (`unshare(2)` with `CLONE_NEWNET`, `network_namespaces(7)`).
//!
//! A run that creates TAP devices and talks to the guest through them (the network
//! tests, the benchmark) does it inside a namespace of its own: its interfaces,
//! addresses and packets are invisible outside it, two runs never collide on a name or
//! an address, and everything vanishes with the last process and thread in it.
//!
//! Namespaces belong to threads: [`enter_private`] moves only the calling thread, and
//! the threads and processes it starts afterwards are born inside.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::process::Command;

/// Moves the calling thread into a new network namespace and brings its loopback
/// interface up. Needs `CAP_SYS_ADMIN` (root); an error leaves the thread where it was.
pub fn enter_private() -> io::Result<()> {
    // SAFETY: unshare takes a flag word and touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    super::tap::set_link_up("lo")
}

/// Whether the calling thread's namespace has an interface `name` (its own
/// namespace's list, not that of the namespace `/sys` was mounted in).
pub fn interface_exists(name: &str) -> bool {
    std::fs::read_to_string("/proc/thread-self/net/dev").is_ok_and(|t| {
        t.lines()
            .filter_map(|l| l.split_once(':'))
            .any(|(n, _)| n.trim() == name)
    })
}

/// Runs `ip ARGS` (iproute2) in the calling thread's namespace; its stderr is the error.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Gives the existing interface `tap` the address `host/24`, no IPv6, and brings it up.
///
/// No IPv6: the host's router solicitations, DAD and MLD reports would reach the guest
/// (the namespace is this thread's: /proc/sys/net follows the opener's namespace).
/// Absent IPv6 is fine.
pub fn address_tap(tap: &str, host: Ipv4Addr) -> Result<(), String> {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1");
    ip(&["addr", "add", &format!("{host}/24"), "dev", tap])?;
    ip(&["link", "set", "dev", tap, "up"])
}

/// An `AF_PACKET` socket bound to interface `ifname` that receives frames of every
/// EtherType (the host's view of a TAP, for tests and tools that speak raw Ethernet on
/// it), its reads timing out after `timeout` (not zero).
pub fn packet_socket(ifname: &str, timeout: std::time::Duration) -> io::Result<OwnedFd> {
    if timeout.is_zero() {
        // SO_RCVTIMEO of zero means no timeout at all.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a packet socket's read timeout must not be zero",
        ));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: all-zero bytes are a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a sockaddr_ll of the size given, alive across the call.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: SO_RCVTIMEO reads a timeval of the size given, alive across the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_namespace_has_only_loopback_and_leaves_the_parent_alone() {
        let before = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
        let inside = std::thread::spawn(|| match enter_private() {
            Ok(()) => Some(std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()),
            Err(e) => {
                eprintln!("SKIPPED: netns test: cannot unshare a network namespace: {e}");
                None
            }
        })
        .join()
        .unwrap();
        let Some(inside) = inside else { return };
        let names: Vec<&str> = inside
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(names, ["lo"], "{inside}");
        // This thread never moved.
        assert_eq!(
            std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default(),
            before
        );
    }
}
