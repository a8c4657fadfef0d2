//! Node permissions: the `struct xs_permissions` list of `tools/include/xenstore_lib.h`,
//! its text form (`xenstore_strings_to_perms()` / `xenstore_perm_to_string()` in
//! `tools/include/xen-tools/xenstore-common.h`), and the access rule of C xenstored's
//! `perm_for_conn()` (`tools/xenstored/core.c`).
//!
//! The first entry names the owner and the access of every domain without an entry of
//! its own; later entries grant access to one domain each (the first matching one
//! wins). The owner, the privileged domain (dom0) and a domain targeting the owner
//! (`XS_SET_TARGET`) always have full access. `DOMID_ANY` in an entry matches every
//! domain (`XENSTORE_SERVER_FEATURE_DOMID_ANY`).
//!
//! The access letters and the text of one entry are the client's
//! (`pv_drivers::xenstore::{Access, Perm}`): one parser for both halves.

use core::fmt;

use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::xen::DOMID_ANY;

/// `XS_PERM_READ`.
pub(super) const PERM_READ: u8 = 0x01;
/// `XS_PERM_WRITE`.
pub(super) const PERM_WRITE: u8 = 0x02;
/// `XS_PERM_OWNER`: only the owner, dom0 and a target holder get it.
pub(super) const PERM_OWNER: u8 = 0x08;

pub use pv_drivers::xenstore::{Access, Perm as PermEntry};

/// `XS_PERM_*` bits of `access`.
const fn bits(access: Access) -> u8 {
    match access {
        Access::None => 0,
        Access::Read => PERM_READ,
        Access::Write => PERM_WRITE,
        Access::Both => PERM_READ | PERM_WRITE,
    }
}

/// A node's permission list: never empty; the first entry is the owner and the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Perms {
    entries: Vec<PermEntry>,
    /// Per entry: it names a domain that did not exist when the list was set, so it
    /// grants nothing (C xenstored's `XS_PERM_IGNORE`). Still listed by `GET_PERMS`.
    ignored: Vec<bool>,
}

/// Who is asking, for the access rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Caller {
    /// The caller's domain.
    pub domid: u16,
    /// The domain it targets (`XS_SET_TARGET`), whose rights it shares.
    pub target: Option<u16>,
}

impl Caller {
    /// Dom0 is xenstored's privileged domain (`priv_domid`).
    pub(super) const fn privileged(&self) -> bool {
        self.domid == 0
    }

    fn matches(&self, domid: u16) -> bool {
        domid == self.domid || Some(domid) == self.target || domid == DOMID_ANY
    }
}

impl Perms {
    /// `owner` owns the node; every other domain gets `others`.
    pub fn new(owner: u16, others: Access) -> Self {
        Self {
            entries: vec![PermEntry {
                domid: owner,
                access: others,
            }],
            ignored: vec![false],
        }
    }

    /// Adds an entry granting `access` to `domid`.
    #[must_use]
    pub fn grant(mut self, domid: u16, access: Access) -> Self {
        self.entries.push(PermEntry { domid, access });
        self.ignored.push(false);
        self
    }

    /// A list from its entries; `None` if there are none.
    pub fn from_entries(entries: Vec<PermEntry>) -> Option<Self> {
        if entries.is_empty() {
            return None;
        }
        let ignored = vec![false; entries.len()];
        Some(Self { entries, ignored })
    }

    /// The owner.
    pub fn owner(&self) -> u16 {
        self.entries[0].domid
    }

    /// The access of domains without an entry of their own.
    pub fn others(&self) -> Access {
        self.entries[0].access
    }

    /// All entries, owner first.
    pub fn entries(&self) -> &[PermEntry] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a list has at least its owner entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Makes `domid` the owner (new nodes created by an unprivileged domain).
    pub(super) fn set_owner(&mut self, domid: u16) {
        self.entries[0].domid = domid;
        self.ignored[0] = false;
    }

    /// Marks entries naming domains for which `known` is false (C xenstored's
    /// `domain_alloc_permrefs()`); returns whether the owner itself is unknown.
    pub(super) fn mark_unknown(&mut self, known: impl Fn(u16) -> bool) -> bool {
        for (entry, ignored) in self.entries.iter().zip(self.ignored.iter_mut()) {
            *ignored = !known(entry.domid);
        }
        self.ignored[0]
    }

    /// Removes the non-owner entries of `domid` (a departing domain must not leave
    /// rights behind for the next domain with its id); returns whether any went.
    pub(super) fn strip(&mut self, domid: u16) -> bool {
        let before = self.entries.len();
        let mut i = 1;
        while i < self.entries.len() {
            if self.entries[i].domid == domid {
                self.entries.remove(i);
                self.ignored.remove(i);
            } else {
                i += 1;
            }
        }
        self.entries.len() != before
    }

    /// `XS_PERM_*` bits `caller` has on a node with these permissions.
    pub(super) fn access_for(&self, caller: &Caller) -> u8 {
        if caller.privileged() || caller.matches(self.owner()) {
            return PERM_READ | PERM_WRITE | PERM_OWNER;
        }
        self.entries
            .iter()
            .zip(&self.ignored)
            .skip(1)
            .find(|(e, ignored)| !**ignored && caller.matches(e.domid))
            .map_or(bits(self.others()), |(e, _)| bits(e.access))
    }

    /// Parses the text entries of an `XS_SET_PERMS` request: a letter and a number
    /// (C `strtol(.., 0)`: decimal, `0x` hex or leading-zero octal; see
    /// [`PermEntry::parse`]).
    pub(super) fn parse(strings: &[&[u8]]) -> Result<Self, XenErrno> {
        let entries = strings
            .iter()
            .map(|s| PermEntry::parse(s).ok_or(XenErrno::EINVAL))
            .collect::<Result<Vec<_>, XenErrno>>()?;
        Self::from_entries(entries).ok_or(XenErrno::EINVAL)
    }

    /// The `XS_GET_PERMS` reply: each entry as text with its NUL.
    pub(super) fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            out.extend_from_slice(e.to_string().as_bytes());
            out.push(0);
        }
        out
    }
}

impl fmt::Display for Perms {
    /// The entries as `xenstore-ls -p` shows them: `n0 r5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(domid: u16) -> Caller {
        Caller {
            domid,
            target: None,
        }
    }

    #[test]
    fn access_rule() {
        // libxl's "roperm": owner dom0, nobody else, domain 5 may read.
        let p = Perms::new(0, Access::None).grant(5, Access::Read);
        assert_eq!(
            p.access_for(&caller(0)),
            PERM_READ | PERM_WRITE | PERM_OWNER
        );
        assert_eq!(p.access_for(&caller(5)), PERM_READ);
        assert_eq!(p.access_for(&caller(6)), 0);
        // Owner has everything, whatever the default.
        let own = Perms::new(5, Access::None);
        assert_eq!(
            own.access_for(&caller(5)),
            PERM_READ | PERM_WRITE | PERM_OWNER
        );
        assert_eq!(own.access_for(&caller(6)), 0);
        // First matching entry wins.
        let p = Perms::new(0, Access::Both)
            .grant(5, Access::None)
            .grant(5, Access::Both);
        assert_eq!(p.access_for(&caller(5)), 0);
        assert_eq!(p.access_for(&caller(9)), PERM_READ | PERM_WRITE);
        // DOMID_ANY matches everyone.
        let any = Perms::new(0, Access::None).grant(DOMID_ANY, Access::Read);
        assert_eq!(any.access_for(&caller(42)), PERM_READ);
        // A target shares the owner's rights.
        let t = Caller {
            domid: 9,
            target: Some(5),
        };
        assert_eq!(own.access_for(&t), PERM_READ | PERM_WRITE | PERM_OWNER);
    }

    #[test]
    fn ignored_entries_grant_nothing_but_are_listed() {
        let mut p = Perms::new(0, Access::None).grant(8, Access::Both);
        assert!(!p.mark_unknown(|d| d == 0));
        assert_eq!(p.access_for(&caller(8)), 0);
        assert_eq!(p.to_wire(), b"n0\0b8\0");
        let mut q = Perms::new(8, Access::None);
        assert!(q.mark_unknown(|d| d == 0));
    }

    #[test]
    fn strip_keeps_owner() {
        let mut p = Perms::new(5, Access::None)
            .grant(5, Access::Read)
            .grant(3, Access::Read)
            .grant(5, Access::Both);
        assert!(p.strip(5));
        assert_eq!(p.to_string(), "n5 r3");
        assert!(!p.strip(7));
    }

    #[test]
    fn text_form() {
        let p = Perms::parse(&[b"n0", b"r5", b"b0x10", b"w010"]).unwrap();
        assert_eq!(p.to_string(), "n0 r5 b16 w8");
        assert_eq!(p.to_wire(), b"n0\0r5\0b16\0w8\0");
        for bad in [
            &b""[..],
            b"r",
            b"x5",
            b"r-1",
            b"r5x",
            b"r65536",
            b"r 5",
            b"r0x",
        ] {
            assert_eq!(Perms::parse(&[bad]), Err(XenErrno::EINVAL), "{bad:?}");
        }
        assert_eq!(Perms::parse(&[]), Err(XenErrno::EINVAL));
        assert_eq!(Perms::parse(&[b"r65535"]).unwrap().owner(), 65535);
    }
}
