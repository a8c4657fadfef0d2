//! Watch bookkeeping: the watches this client registered and the queue of events
//! waiting to be handed out.
//!
//! `XS_WATCH_EVENT` messages arrive whenever xenstored likes, interleaved with replies,
//! so the client parks them here. The queue is bounded, since a peer that changes a
//! watched node in a loop must not exhaust the guest's heap (the failure of XSA-349):
//! an event identical to one already queued is merged into it (a watch says "look
//! again", and looking once answers both), and when the queue is full the oldest event
//! is dropped. Events for tokens we never registered (or have unregistered) are
//! dropped. Every drop is counted.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use super::wire::WatchEvent;

/// What became of an event offered to [`Watches::deliver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Queued.
    Queued,
    /// Identical to a queued event; merged into it.
    Merged,
    /// Queued, and the oldest queued event was dropped to make room.
    Overflowed,
    /// No registered watch has this token; dropped.
    Unknown,
}

/// Registered watches and pending events.
#[derive(Debug)]
pub(crate) struct Watches {
    registered: Vec<(String, String)>,
    queue: VecDeque<WatchEvent>,
    capacity: usize,
}

impl Watches {
    /// No watches; at most `capacity` (at least 1) queued events.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            registered: Vec::new(),
            queue: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Changes the queue bound (dropping the oldest events if it shrinks).
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.queue.len() > self.capacity {
            self.queue.pop_front();
        }
    }

    /// Records a watch xenstored accepted.
    pub(crate) fn register(&mut self, path: &str, token: &str) {
        if !self.is_registered(path, token) {
            self.registered.push((path.into(), token.into()));
        }
    }

    /// Forgets a watch; queued events whose token no longer belongs to any watch go.
    pub(crate) fn unregister(&mut self, path: &str, token: &str) {
        self.registered.retain(|(p, t)| !(p == path && t == token));
        if !self.has_token(token) {
            self.queue.retain(|e| e.token != token);
        }
    }

    /// Whether `path`/`token` is registered.
    pub(crate) fn is_registered(&self, path: &str, token: &str) -> bool {
        self.registered.iter().any(|(p, t)| p == path && t == token)
    }

    /// Whether any registered watch uses `token`.
    pub(crate) fn has_token(&self, token: &str) -> bool {
        self.registered.iter().any(|(_, t)| t == token)
    }

    /// The registered watches, as `(path, token)`.
    pub(crate) fn registered(&self) -> &[(String, String)] {
        &self.registered
    }

    /// Drops every queued event (the server forgot our watches, e.g. on reconnection).
    pub(crate) fn clear_queue(&mut self) {
        self.queue.clear();
    }

    /// Offers an event that arrived from the server.
    pub(crate) fn deliver(&mut self, event: WatchEvent) -> Delivery {
        if !self.has_token(&event.token) {
            return Delivery::Unknown;
        }
        if self.queue.contains(&event) {
            return Delivery::Merged;
        }
        let overflow = self.queue.len() >= self.capacity;
        if overflow {
            self.queue.pop_front();
        }
        self.queue.push_back(event);
        if overflow {
            Delivery::Overflowed
        } else {
            Delivery::Queued
        }
    }

    /// Takes the oldest queued event, or the oldest with `token`.
    pub(crate) fn pop(&mut self, token: Option<&str>) -> Option<WatchEvent> {
        match token {
            None => self.queue.pop_front(),
            Some(t) => {
                let at = self.queue.iter().position(|e| e.token == t)?;
                self.queue.remove(at)
            }
        }
    }

    /// Number of queued events.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(path: &str, token: &str) -> WatchEvent {
        WatchEvent {
            path: path.into(),
            token: token.into(),
        }
    }

    #[test]
    fn unknown_tokens_are_dropped() {
        let mut w = Watches::new(4);
        assert_eq!(w.deliver(ev("a", "t")), Delivery::Unknown);
        w.register("a", "t");
        w.register("a", "t");
        assert_eq!(w.registered().len(), 1);
        assert_eq!(w.deliver(ev("a", "t")), Delivery::Queued);
        assert_eq!(w.deliver(ev("a/b", "t")), Delivery::Queued);
        assert_eq!(w.deliver(ev("a", "t")), Delivery::Merged);
        assert_eq!(w.queued(), 2);
        w.unregister("a", "t");
        assert_eq!(w.queued(), 0, "events of a gone watch go with it");
        assert_eq!(w.deliver(ev("a", "t")), Delivery::Unknown);
    }

    #[test]
    fn bounded_oldest_dropped() {
        let mut w = Watches::new(2);
        w.register("x", "t");
        assert_eq!(w.deliver(ev("x/1", "t")), Delivery::Queued);
        assert_eq!(w.deliver(ev("x/2", "t")), Delivery::Queued);
        assert_eq!(w.deliver(ev("x/3", "t")), Delivery::Overflowed);
        assert_eq!(w.pop(None), Some(ev("x/2", "t")));
        assert_eq!(w.pop(None), Some(ev("x/3", "t")));
        assert_eq!(w.pop(None), None);
        w.deliver(ev("x/1", "t"));
        w.deliver(ev("x/2", "t"));
        w.set_capacity(1);
        assert_eq!(w.pop(None), Some(ev("x/2", "t")));
    }

    #[test]
    fn pop_by_token_keeps_the_rest() {
        let mut w = Watches::new(8);
        w.register("a", "1");
        w.register("b", "2");
        w.deliver(ev("a", "1"));
        w.deliver(ev("b", "2"));
        w.deliver(ev("a/x", "1"));
        assert_eq!(w.pop(Some("2")), Some(ev("b", "2")));
        assert_eq!(w.pop(Some("2")), None);
        assert_eq!(w.pop(Some("1")), Some(ev("a", "1")));
        // Another watch with the same token keeps its events queued.
        w.register("c", "1");
        w.unregister("a", "1");
        assert_eq!(w.pop(None), Some(ev("a/x", "1")));
        w.clear_queue();
        assert_eq!(w.queued(), 0);
    }
}
