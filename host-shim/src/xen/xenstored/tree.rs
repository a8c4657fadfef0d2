//! The node database: every node by its absolute (or special `@...`) path, with its
//! value, ordered children, permissions and generation count, plus the number of
//! nodes each domain owns (for the `nodes` quota).
//!
//! Generations follow C xenstored (`tools/xenstored/transaction.c`): one global counter
//! that is incremented before every write, so each write leaves a unique generation on
//! its node. Transactions detect conflicts by comparing them.

use std::collections::{BTreeMap, HashMap};

use super::path::{child_path_into, is_child_path, parent};
use super::perms::Perms;

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Node {
    /// The value (arbitrary bytes; usually ASCII without a NUL).
    pub value: Vec<u8>,
    /// Names of the children, in creation order (the order `XS_DIRECTORY` lists).
    pub children: Vec<String>,
    /// Permissions.
    pub perms: Perms,
    /// Generation of the last write.
    pub generation: u64,
}

impl Node {
    /// An empty node.
    pub fn new(perms: Perms) -> Self {
        Self {
            value: Vec::new(),
            children: Vec::new(),
            perms,
            generation: 0,
        }
    }

    /// The size xenstored's `node-size` quota measures (`calc_node_acc_size()`): a
    /// 16-byte header, 8 bytes per permission, the value, and the child names with
    /// their NULs.
    pub fn acc_size(&self) -> usize {
        16 + 8 * self.perms.len() + self.value.len() + self.children_len()
    }

    /// Bytes of the children list on the wire.
    pub fn children_len(&self) -> usize {
        self.children.iter().map(|c| c.len() + 1).sum()
    }

    /// The children list as `XS_DIRECTORY` sends it: each name and a NUL.
    pub fn children_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.children_len());
        for c in &self.children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        out
    }

    /// Appends a child name (if not already there).
    pub fn add_child(&mut self, name: &str) {
        if !self.children.iter().any(|c| c == name) {
            self.children.push(name.to_owned());
        }
    }

    /// Removes a child name; returns whether it was there.
    pub fn remove_child(&mut self, name: &str) -> bool {
        let before = self.children.len();
        self.children.retain(|c| c != name);
        self.children.len() != before
    }
}

/// All nodes.
#[derive(Clone, Debug, Default)]
pub(super) struct Db {
    nodes: BTreeMap<String, Node>,
    generation: u64,
    owned: HashMap<u16, u32>,
}

impl Db {
    /// The next generation count (incremented before use: each write gets its own).
    pub fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// The node at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Stores `node` at `path` as it is (generation included), keeping the
    /// per-owner counts.
    pub fn put(&mut self, path: &str, node: Node) {
        let owner = node.perms.owner();
        if let Some(old) = self.nodes.insert(path.to_owned(), node) {
            self.disown(old.perms.owner());
        }
        *self.owned.entry(owner).or_default() += 1;
    }

    /// Removes the node at `path` (not its children, nor its entry in its parent).
    pub fn remove(&mut self, path: &str) -> Option<Node> {
        let old = self.nodes.remove(path)?;
        self.disown(old.perms.owner());
        Some(old)
    }

    fn disown(&mut self, owner: u16) {
        if let Some(n) = self.owned.get_mut(&owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owned.remove(&owner);
            }
        }
    }

    /// Nodes owned by `domid`.
    pub fn owned(&self, domid: u16) -> u32 {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// Replaces the permissions of an existing node without a write (no new
    /// generation, no watch): used when a departing domain's entries are removed.
    pub fn replace_perms(&mut self, path: &str, perms: Perms) {
        if let Some(node) = self.nodes.get_mut(path) {
            let old = node.perms.owner();
            let new = perms.owner();
            node.perms = perms;
            if old != new {
                self.disown(old);
                *self.owned.entry(new).or_default() += 1;
            }
        }
    }

    /// Every path, in order (a parent before its descendants).
    pub fn paths(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Checks the database's invariants (the `CONTROL check` command and the tests):
    /// every node but `/` and the special ones is listed by its parent, every listed
    /// child exists, and the owner counts add up.
    pub fn check(&self) -> Result<(), String> {
        // Run after every step of the fuzz targets: no allocation per node (one path
        // buffer, reused; the parent's list compared in place).
        let mut owned: HashMap<u16, u32> = HashMap::new();
        let mut child_at = String::new();
        for (path, node) in &self.nodes {
            *owned.entry(node.perms.owner()).or_default() += 1;
            for child in &node.children {
                child_path_into(&mut child_at, path, child);
                if !self.nodes.contains_key(&child_at) {
                    return Err(format!("{path} lists missing child {child}"));
                }
            }
            if path == "/" || path.starts_with('@') {
                continue;
            }
            let p = parent(path);
            let listed = self
                .nodes
                .get(p)
                .is_some_and(|pn| pn.children.iter().any(|c| is_child_path(path, p, c)));
            if !listed {
                return Err(format!("{path} is not listed by its parent {p}"));
            }
        }
        if owned != self.owned {
            return Err(format!(
                "owner counts {:?} do not match the nodes {owned:?}",
                self.owned
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::xenstored::perms::Access;

    #[test]
    fn node_size_and_children() {
        let mut n = Node::new(Perms::new(0, Access::None).grant(5, Access::Read));
        n.value = b"hello".to_vec();
        n.add_child("a");
        n.add_child("bc");
        n.add_child("a");
        assert_eq!(n.children_wire(), b"a\0bc\0");
        assert_eq!(n.acc_size(), 16 + 16 + 5 + 5);
        assert!(n.remove_child("a"));
        assert!(!n.remove_child("a"));
        assert_eq!(n.children, ["bc"]);
    }

    #[test]
    fn owner_counts_follow_puts_and_removes() {
        let mut db = Db::default();
        let mut root = Node::new(Perms::new(0, Access::None));
        root.add_child("a");
        db.put("/", root);
        db.put("/a", Node::new(Perms::new(5, Access::None)));
        assert_eq!((db.owned(0), db.owned(5)), (1, 1));
        db.put("/a", Node::new(Perms::new(6, Access::None)));
        assert_eq!((db.owned(5), db.owned(6)), (0, 1));
        db.replace_perms("/a", Perms::new(0, Access::Read));
        assert_eq!((db.owned(0), db.owned(6)), (2, 0));
        assert_eq!(db.check(), Ok(()));
        db.remove("/a");
        assert!(db.check().is_err(), "/ still lists a");
        assert_eq!(db.owned(0), 1);
        assert!(db.next_generation() < db.next_generation());
    }
}
