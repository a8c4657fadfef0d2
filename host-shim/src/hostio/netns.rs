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

/// Moves the calling thread into a new network namespace and brings its loopback
/// interface up. Needs `CAP_SYS_ADMIN` (root); an error leaves the thread where it was.
pub fn enter_private() -> io::Result<()> {
    // SAFETY: unshare takes a flag word and touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    super::tap::set_link_up("lo")
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
