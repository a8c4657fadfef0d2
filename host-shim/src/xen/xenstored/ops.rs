//! The database operations (read, write, mkdir, rm, directory, permissions), written
//! once against a [`View`]: the database itself, or the database as one transaction
//! sees it. Semantics from C xenstored's `tools/xenstored/core.c` (`do_read()`,
//! `do_write()`, `create_node()`, `do_mkdir()`, `do_rm()`, `rm_node()`,
//! `do_set_perms()`, `get_node_chk_perm()`, `errno_from_parents()`) and
//! `docs/misc/xenstore.txt`.
//!
//! Paths reaching here are canonical (see [`super::path`]).

use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::xs_wire::XENSTORE_PAYLOAD_MAX;

use super::Quotas;
use super::path::{basename, child_path, parent};
use super::perms::{Caller, PERM_OWNER, PERM_READ, PERM_WRITE, Perms};
use super::transaction::Transaction;
use super::tree::{Db, Node};
use super::watch::{Fire, Match};

/// The database as one caller, in or out of a transaction, sees it.
pub(super) struct View<'a> {
    /// The database.
    pub db: &'a mut Db,
    /// The caller's transaction, if the request carries one.
    pub tx: Option<&'a mut Transaction>,
    /// Who asks.
    pub caller: Caller,
    /// The limits.
    pub quotas: &'a Quotas,
    /// Changes outside a transaction, for the watches.
    pub fires: Vec<Fire>,
}

impl View<'_> {
    /// A quota for an unprivileged caller (`None`: dom0, or the quota is disabled).
    fn limit(&self, quota: u32) -> Option<usize> {
        (!self.caller.privileged() && quota != 0).then_some(quota as usize)
    }

    /// The node at `path` as the caller sees it, borrowed (a read clones nothing). In a
    /// transaction the first access is recorded (and may exceed the
    /// `transaction-nodes` quota: `ENOSPC`).
    fn peek(&mut self, path: &str) -> Result<Option<&Node>, XenErrno> {
        let limit = self.limit(self.quotas.transaction_nodes);
        let Some(tx) = self.tx.as_deref_mut() else {
            return Ok(self.db.get(path));
        };
        if tx.get(path).is_none() {
            if limit.is_some_and(|max| tx.touched() >= max) {
                tx.fail = true;
                return Err(XenErrno::ENOSPC);
            }
            tx.record(path, self.db.get(path), true);
        }
        Ok(tx.get(path).and_then(|a| a.node.as_ref()))
    }

    /// The node at `path` as the caller sees it, to change.
    fn read(&mut self, path: &str) -> Result<Option<Node>, XenErrno> {
        Ok(self.peek(path)?.cloned())
    }

    /// Writes (`Some`) or removes (`None`) the node at `path`.
    fn store(&mut self, path: &str, node: Option<Node>) -> Result<(), XenErrno> {
        let limit = self.limit(self.quotas.transaction_nodes);
        let Some(tx) = self.tx.as_deref_mut() else {
            match node {
                Some(mut node) => {
                    node.generation = self.db.next_generation();
                    self.db.put(path, node);
                }
                None => {
                    self.db.remove(path);
                }
            }
            return Ok(());
        };
        if tx.get(path).is_none() {
            if limit.is_some_and(|max| tx.touched() >= max) {
                tx.fail = true;
                return Err(XenErrno::ENOSPC);
            }
            tx.record(path, self.db.get(path), false);
        }
        let node = node.map(|mut n| {
            n.generation = self.db.next_generation();
            n
        });
        tx.set(path, node);
        Ok(())
    }

    /// Announces a change at `path` to the watches: now, or at commit.
    fn fire(&mut self, path: &str, how: Match, perms: Option<Perms>, old_perms: Option<Perms>) {
        match self.tx.as_deref_mut() {
            Some(tx) => tx.queue_fire(path, how),
            None => self
                .fires
                .push(Fire::capture(self.db, path, how, perms, old_perms)),
        }
    }

    /// Nodes `domid` owns as the caller sees it.
    fn owned(&self, domid: u16) -> i64 {
        let tx = self.tx.as_deref().map_or(0, |tx| tx.delta(domid));
        i64::from(self.db.owned(domid)) + tx
    }

    /// What to tell a caller who lacks a node or the right to it: the error itself if
    /// the nearest existing ancestor grants any of `perm`, else `EACCES`, so that
    /// nothing leaks about nodes the caller may not see.
    fn errno_from_parents(
        &mut self,
        path: &str,
        errnum: XenErrno,
        perm: u8,
    ) -> Result<XenErrno, XenErrno> {
        let caller = self.caller;
        let mut p = path;
        while p != "/" {
            p = parent(p);
            if let Some(node) = self.peek(p)? {
                return Ok(if node.perms.access_for(&caller) & perm != 0 {
                    errnum
                } else {
                    XenErrno::EACCES
                });
            }
        }
        // No root: cannot happen (the root is never removed); refuse.
        Ok(XenErrno::EACCES)
    }

    /// `f` of the node at `path` if the caller has all of `perm` on it.
    fn get_node_with<R>(
        &mut self,
        path: &str,
        perm: u8,
        f: impl FnOnce(&Node) -> R,
    ) -> Result<R, XenErrno> {
        let caller = self.caller;
        let errnum = match self.peek(path)? {
            Some(node) if node.perms.access_for(&caller) & perm == perm => return Ok(f(node)),
            Some(_) => XenErrno::EACCES,
            None => XenErrno::ENOENT,
        };
        Err(self.errno_from_parents(path, errnum, perm)?)
    }

    /// The node at `path` if the caller has all of `perm` on it.
    fn get_node(&mut self, path: &str, perm: u8) -> Result<Node, XenErrno> {
        self.get_node_with(path, perm, Node::clone)
    }

    /// Like [`Self::get_node`] for a node about to be created: `Ok(None)` if it does
    /// not exist and the caller may create it.
    fn get_node_for_write(&mut self, path: &str) -> Result<Option<Node>, XenErrno> {
        match self.get_node(path, PERM_WRITE) {
            Ok(node) => Ok(Some(node)),
            Err(XenErrno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The `node-size` quota for unprivileged callers.
    fn check_size(&self, node: &Node) -> Result<(), XenErrno> {
        match self.limit(self.quotas.node_size) {
            Some(max) if node.acc_size() > max => Err(XenErrno::ENOSPC),
            _ => Ok(()),
        }
    }

    /// `XS_READ`.
    pub fn read_value(&mut self, path: &str) -> Result<Vec<u8>, XenErrno> {
        self.get_node_with(path, PERM_READ, |n| n.value.clone())
    }

    /// `XS_DIRECTORY`: the child names.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XenErrno> {
        self.get_node_with(path, PERM_READ, |n| n.children.clone())
    }

    /// `XS_DIRECTORY_PART`: the node's generation and the part of its children list
    /// (as bytes, names with NULs) starting at byte `offset`, as much as fits a reply;
    /// an empty name ends the list.
    pub fn directory_part(&mut self, path: &str, offset: usize) -> Result<Vec<u8>, XenErrno> {
        let (generation, children) =
            self.get_node_with(path, PERM_READ, |n| (n.generation, n.children_wire()))?;
        let mut out = generation.to_string().into_bytes();
        out.push(0);
        if offset >= children.len() {
            out.push(0);
            return Ok(out);
        }
        let max = XENSTORE_PAYLOAD_MAX - out.len() - 1;
        let rest = &children[offset..];
        let mut len = 0;
        // Whole names (the first may be cut by the caller's offset) while they fit.
        while len < rest.len() {
            let name_len = rest[len..]
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(rest.len() - len);
            if len + name_len >= max {
                break;
            }
            len += name_len + 1;
        }
        let len = len.min(rest.len());
        out.extend_from_slice(&rest[..len]);
        if len == rest.len() {
            out.push(0);
        }
        Ok(out)
    }

    /// `XS_GET_PERMS`.
    pub fn get_perms(&mut self, path: &str) -> Result<Perms, XenErrno> {
        self.get_node_with(path, PERM_READ, |n| n.perms.clone())
    }

    /// `XS_WRITE`: sets the value, creating the node and missing parents.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XenErrno> {
        match self.get_node_for_write(path)? {
            Some(mut node) => {
                node.value = value.to_vec();
                self.check_size(&node)?;
                self.store(path, Some(node))?;
            }
            None => self.create(path, value)?,
        }
        self.fire(path, Match::Subtree, None, None);
        Ok(())
    }

    /// `XS_MKDIR`: creates the node (and missing parents) with an empty value if it
    /// does not exist; an existing node is left alone.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XenErrno> {
        if self.get_node_for_write(path)?.is_none() {
            self.create(path, &[])?;
            self.fire(path, Match::Subtree, None, None);
        }
        Ok(())
    }

    /// Creates `path` with `value`, and every missing ancestor empty. New nodes take
    /// their nearest existing ancestor's permissions; an unprivileged creator becomes
    /// their owner (C xenstored's `construct_node()`). Every quota is checked before
    /// anything changes.
    fn create(&mut self, path: &str, value: &[u8]) -> Result<(), XenErrno> {
        let mut missing = vec![path.to_owned()];
        let (top_path, mut top) = loop {
            let last = missing.last().map_or(path, String::as_str);
            let p = parent(last).to_owned();
            match self.read(&p)? {
                Some(node) => break (p, node),
                None if p == "/" => return Err(XenErrno::ENOENT),
                None => missing.push(p),
            }
        };
        if let Some(max) = self.limit(self.quotas.nodes)
            && self.owned(self.caller.domid) + missing.len() as i64 > max as i64
        {
            return Err(XenErrno::ENOSPC);
        }
        let mut perms = top.perms.clone();
        if !self.caller.privileged() {
            perms.set_owner(self.caller.domid);
        }
        let first_new = missing.last().map_or(path, String::as_str);
        top.add_child(basename(first_new));
        self.check_size(&top)?;
        // missing[i]'s parent is missing[i + 1]; build from the top down.
        let mut nodes = Vec::with_capacity(missing.len());
        for (i, p) in missing.iter().enumerate() {
            let mut node = Node::new(perms.clone());
            if i == 0 {
                node.value = value.to_vec();
            } else {
                node.add_child(basename(&missing[i - 1]));
            }
            self.check_size(&node)?;
            nodes.push((p.clone(), node));
        }
        self.store(&top_path, Some(top))?;
        for (p, node) in nodes.into_iter().rev() {
            self.store(&p, Some(node))?;
        }
        if let Some(tx) = self.tx.as_deref_mut() {
            tx.node_created = true;
        }
        Ok(())
    }

    /// `XS_RM`: removes the node and everything below it. A missing node is fine if
    /// its parent exists; the root cannot be removed.
    pub fn rm(&mut self, path: &str) -> Result<(), XenErrno> {
        match self.get_node_for_write(path)? {
            Some(_) if path == "/" => Err(XenErrno::EINVAL),
            Some(_) => self.rm_node(path),
            None => match self.read(parent(path))? {
                Some(_) => Ok(()),
                None => Err(XenErrno::ENOENT),
            },
        }
    }

    /// Removes `path` and its subtree (no permission checks below it, as in C
    /// xenstored), children first; each removed node fires its exact watches, and
    /// the top one the watches on it and its ancestors.
    pub fn rm_node(&mut self, path: &str) -> Result<(), XenErrno> {
        let parent_path = parent(path).to_owned();
        let Some(mut parent_node) = self.read(&parent_path)? else {
            return Err(XenErrno::EINVAL);
        };
        for (p, node) in self.subtree(path)? {
            let how = if p == path {
                Match::Subtree
            } else {
                Match::Exact
            };
            self.fire(&p, how, Some(node.perms), None);
            self.store(&p, None)?;
        }
        parent_node.remove_child(basename(path));
        self.store(&parent_path, Some(parent_node))
    }

    /// `path` and every node below it, children before parents.
    fn subtree(&mut self, path: &str) -> Result<Vec<(String, Node)>, XenErrno> {
        let mut out = Vec::new();
        let Some(root) = self.read(path)? else {
            return Ok(out);
        };
        // (path, node, next child index): depth-first, emitting a node after its
        // children.
        let mut stack = vec![(path.to_owned(), root, 0usize)];
        while let Some((p, node, i)) = stack.pop() {
            match node.children.get(i).cloned() {
                Some(child) => {
                    let cp = child_path(&p, &child);
                    stack.push((p, node, i + 1));
                    if let Some(c) = self.read(&cp)? {
                        stack.push((cp, c, 0));
                    }
                }
                None => out.push((p, node)),
            }
        }
        Ok(out)
    }

    /// `XS_SET_PERMS`: only the owner (or dom0) may, and only dom0 may change the
    /// owner. `known` tells which domains exist: entries for others grant nothing,
    /// and an unknown owner is `ENOENT`.
    pub fn set_perms(
        &mut self,
        path: &str,
        mut perms: Perms,
        known: impl Fn(u16) -> bool,
    ) -> Result<(), XenErrno> {
        if perms.mark_unknown(known) {
            return Err(XenErrno::ENOENT);
        }
        let mut node = self.get_node(path, PERM_WRITE | PERM_OWNER)?;
        if !self.caller.privileged() && perms.owner() != node.perms.owner() {
            return Err(XenErrno::EPERM);
        }
        let old = core::mem::replace(&mut node.perms, perms);
        self.check_size(&node)?;
        self.store(path, Some(node))?;
        self.fire(path, Match::Subtree, None, Some(old));
        Ok(())
    }
}
