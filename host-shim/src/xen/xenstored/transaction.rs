//! Transactions, with C xenstored's generation-based conflict detection
//! (`tools/xenstored/transaction.c`, whose header comment gives the rules):
//!
//! - The first time a transaction touches a node it remembers the node's generation
//!   (or that it did not exist) and keeps its own copy; later reads and writes in the
//!   transaction see and change that copy only.
//! - Commit fails with `EAGAIN` if any node the transaction *read* first has a
//!   different generation now (it was written, created or removed meanwhile). Nodes
//!   the transaction wrote without reading first are not checked: its write wins.
//! - On commit, every node it changed is written to the database with a new
//!   generation, in the order it was first touched, and the watch events the
//!   transaction queued fire then (never before).

use std::collections::HashMap;

use pv_drivers::abi::errno::XenErrno;

use super::Quotas;
use super::perms::{Caller, Perms};
use super::tree::{Db, Node};
use super::watch::{Fire, Match};

/// What a transaction knows of one node.
#[derive(Clone, Debug)]
pub(super) struct Accessed {
    /// Order of first access.
    pub seq: u64,
    /// Global generation at first access (`None`: the node did not exist).
    pub generation: Option<u64>,
    /// First accessed by a read: the generation must still match at commit.
    pub check_gen: bool,
    /// Written or removed in the transaction.
    pub modified: bool,
    /// The transaction's view of the node (`None`: does not exist in it).
    pub node: Option<Node>,
    /// Permissions at first access (who may hear of the change at commit).
    pub old_perms: Option<Perms>,
    /// A watch event to fire at commit.
    pub fire: Option<Match>,
}

/// One open transaction.
#[derive(Clone, Debug, Default)]
pub(super) struct Transaction {
    accessed: HashMap<String, Accessed>,
    next_seq: u64,
    /// Something went wrong inside (a quota): commit must fail.
    pub fail: bool,
    /// A node was created in it (the `nodes` quota is checked again at commit).
    pub node_created: bool,
    /// Change in nodes owned, per domain, if the transaction commits.
    delta: HashMap<u16, i64>,
}

impl Transaction {
    /// Nodes touched so far.
    pub fn touched(&self) -> usize {
        self.accessed.len()
    }

    /// The transaction's entry for `path`, if it touched it.
    pub fn get(&self, path: &str) -> Option<&Accessed> {
        self.accessed.get(path)
    }

    /// Records the first access to `path`, whose global state is `global`.
    pub fn record(&mut self, path: &str, global: Option<&Node>, by_read: bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.accessed.insert(
            path.to_owned(),
            Accessed {
                seq,
                generation: global.map(|n| n.generation),
                check_gen: by_read,
                modified: false,
                node: global.cloned(),
                old_perms: global.map(|n| n.perms.clone()),
                fire: None,
            },
        );
    }

    /// Sets the transaction's view of an already recorded `path`.
    pub fn set(&mut self, path: &str, node: Option<Node>) {
        let Some(entry) = self.accessed.get_mut(path) else {
            self.fail = true;
            return;
        };
        if let Some(old) = &entry.node {
            *self.delta.entry(old.perms.owner()).or_default() -= 1;
        }
        if let Some(new) = &node {
            *self.delta.entry(new.perms.owner()).or_default() += 1;
        }
        entry.node = node;
        entry.modified = true;
    }

    /// Queues a watch event for `path` until commit. A subtree match replaces an
    /// exact one, never the other way round (C xenstored's `queue_watches()`).
    pub fn queue_fire(&mut self, path: &str, how: Match) {
        let Some(entry) = self.accessed.get_mut(path) else {
            self.fail = true;
            return;
        };
        match entry.fire {
            None => entry.fire = Some(how),
            Some(_) if how == Match::Subtree => entry.fire = Some(how),
            Some(_) => {}
        }
    }

    /// Change in nodes owned by `domid` if the transaction commits.
    pub fn delta(&self, domid: u16) -> i64 {
        self.delta.get(&domid).copied().unwrap_or(0)
    }

    /// Commits into `db`: checks for conflicts and quotas, applies every change and
    /// returns the watch events to fire. On error nothing is applied.
    pub fn commit(
        self,
        db: &mut Db,
        quotas: &Quotas,
        caller: Caller,
    ) -> Result<Vec<Fire>, XenErrno> {
        if self.fail {
            // C xenstored reports a transaction it had to mark failed as ENOMEM.
            return Err(XenErrno::ENOMEM);
        }
        // The quota first, as C xenstored's do_transaction_end() does.
        if !caller.privileged() && self.node_created && quotas.nodes != 0 {
            for (&domid, &delta) in &self.delta {
                if domid != 0
                    && delta > 0
                    && i64::from(db.owned(domid)) + delta > i64::from(quotas.nodes)
                {
                    return Err(XenErrno::ENOSPC);
                }
            }
        }
        for (path, a) in &self.accessed {
            if a.check_gen && db.get(path).map(|n| n.generation) != a.generation {
                return Err(XenErrno::EAGAIN);
            }
        }
        let mut changed: Vec<(String, Accessed)> = self
            .accessed
            .into_iter()
            .filter(|(_, a)| a.modified)
            .collect();
        changed.sort_by_key(|(_, a)| a.seq);
        let mut fires = Vec::new();
        for (path, a) in changed {
            match a.node {
                Some(mut node) => {
                    node.generation = db.next_generation();
                    db.put(&path, node);
                }
                None => {
                    db.remove(&path);
                }
            }
            if let Some(how) = a.fire {
                fires.push(Fire::capture(db, &path, how, None, a.old_perms));
            }
        }
        Ok(fires)
    }
}
