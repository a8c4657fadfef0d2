//! Watches and the events they produce, as C xenstored's `tools/xenstored/watch.c`
//! (`fire_watches()`, `is_child()`, `watch_permitted()`) and `docs/misc/xenstore.txt`
//! ("Watches") define them.
//!
//! A change produces a [`Fire`]: the changed path, how watches match it, and the
//! permissions needed to decide who may hear of it (captured when the change happens:
//! after a removal the node is gone). Each connection allowed to read the node (or its
//! parent, or the node under its old permissions) gets one event per matching watch.

use super::path::{is_child, parent};
use super::perms::{Caller, PERM_READ, Perms};
use super::tree::Db;

/// How a watch is matched against a changed path (C xenstored's `enum watch_match`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Match {
    /// The watch is on exactly this path (descendants removed with a subtree).
    Exact,
    /// The path is the watch's path or below it (within the watch's depth).
    Subtree,
    /// Special event with a domain id (`@releaseDomain/5`): exact, or below a watch
    /// with a positive depth.
    Depth,
    /// Special event without a domain id: watches on exactly it without a depth.
    NoDepth,
}

/// A registered watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Watch {
    /// The absolute (or special) path watched.
    pub path: String,
    /// The caller's token, echoed in every event.
    pub token: Vec<u8>,
    /// Levels below `path` that still match (`None`: any).
    pub depth: Option<u32>,
    /// Bytes to strip from event paths: the caller's home and a `/` when the watch
    /// was given as a relative path, else 0.
    pub prefix_len: usize,
}

impl Watch {
    /// Whether a change at `path` matched as `how` triggers this watch.
    pub fn matches(&self, path: &str, how: Match) -> bool {
        match how {
            Match::Exact => path == self.path,
            Match::Subtree => is_child(path, &self.path, self.depth),
            Match::Depth => {
                path == self.path
                    || (self.depth.is_some_and(|d| d > 0) && is_child(path, &self.path, self.depth))
            }
            Match::NoDepth => path == self.path && self.depth.is_none(),
        }
    }

    /// The path as the event reports it: relative if the watch was set relative.
    pub fn report<'a>(&self, path: &'a str) -> &'a str {
        path.get(self.prefix_len..).unwrap_or(path)
    }

    /// The `XS_WATCH_EVENT` payload for a change at `path`: `path\0token\0`.
    pub fn event_payload(&self, path: &str) -> Vec<u8> {
        let reported = self.report(path);
        let mut out = Vec::with_capacity(reported.len() + self.token.len() + 2);
        out.extend_from_slice(reported.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.token);
        out.push(0);
        out
    }
}

/// A change that watches may hear of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fire {
    /// The changed (or special) path.
    pub path: String,
    /// How watches match it.
    pub how: Match,
    /// The node's permissions when it changed (`None`: it no longer exists).
    pub perms: Option<Perms>,
    /// Its parent's permissions then.
    pub parent_perms: Option<Perms>,
    /// Its permissions before a permission change or at the start of the
    /// transaction that changed it: a domain losing access still hears of the change.
    pub old_perms: Option<Perms>,
}

impl Fire {
    /// A change at `path`, with `perms` of the node (or `None` to look it up in `db`)
    /// and its parent's permissions from `db`.
    pub fn capture(
        db: &Db,
        path: &str,
        how: Match,
        perms: Option<Perms>,
        old_perms: Option<Perms>,
    ) -> Self {
        let perms = perms.or_else(|| db.get(path).map(|n| n.perms.clone()));
        let parent_perms = db.get(parent(path)).map(|n| n.perms.clone());
        Self {
            path: path.to_owned(),
            how,
            perms,
            parent_perms,
            old_perms,
        }
    }

    /// Whether `caller` may hear of this change (C xenstored's `watch_permitted()`):
    /// it can read the node under its old permissions, or the node, or its parent.
    pub fn permitted(&self, caller: &Caller) -> bool {
        let readable = |p: &Option<Perms>| {
            p.as_ref()
                .is_some_and(|p| p.access_for(caller) & PERM_READ != 0)
        };
        if readable(&self.old_perms) {
            return true;
        }
        if self.perms.is_none() {
            return false;
        }
        readable(&self.perms) || readable(&self.parent_perms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::xenstored::perms::Access;

    fn watch(path: &str, depth: Option<u32>) -> Watch {
        Watch {
            path: path.into(),
            token: b"tok".to_vec(),
            depth,
            prefix_len: 0,
        }
    }

    #[test]
    fn matching_rules() {
        let w = watch("/a", None);
        assert!(w.matches("/a/b/c", Match::Subtree));
        assert!(!w.matches("/a/b/c", Match::Exact));
        assert!(w.matches("/a", Match::Exact));
        assert!(!w.matches("/", Match::Subtree));

        let special = watch("@releaseDomain", None);
        assert!(special.matches("@releaseDomain", Match::NoDepth));
        assert!(!special.matches("@releaseDomain/5", Match::Depth));
        let with_depth = watch("@releaseDomain", Some(1));
        assert!(!with_depth.matches("@releaseDomain", Match::NoDepth));
        assert!(with_depth.matches("@releaseDomain/5", Match::Depth));
        let one = watch("@releaseDomain/5", None);
        assert!(one.matches("@releaseDomain/5", Match::Depth));
        assert!(!one.matches("@releaseDomain/6", Match::Depth));
    }

    #[test]
    fn relative_reports() {
        let w = Watch {
            path: "/local/domain/3/device".into(),
            token: b"t".to_vec(),
            depth: None,
            prefix_len: "/local/domain/3/".len(),
        };
        assert_eq!(
            w.event_payload("/local/domain/3/device/vbd"),
            b"device/vbd\0t\0"
        );
        // Never panics on a shorter path.
        assert_eq!(w.report("/x"), "/x");
    }

    #[test]
    fn permission_to_hear() {
        let dom5 = Caller {
            domid: 5,
            target: None,
        };
        let closed = Perms::new(0, Access::None);
        let open = Perms::new(0, Access::Read);
        let mut f = Fire {
            path: "/a/b".into(),
            how: Match::Subtree,
            perms: Some(closed.clone()),
            parent_perms: Some(closed.clone()),
            old_perms: None,
        };
        assert!(!f.permitted(&dom5));
        f.parent_perms = Some(open.clone());
        assert!(f.permitted(&dom5));
        f.perms = None;
        assert!(!f.permitted(&dom5), "gone, and no old permissions");
        f.old_perms = Some(open);
        assert!(f.permitted(&dom5));
    }
}
