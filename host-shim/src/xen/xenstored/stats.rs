//! Counters of the xenstore daemon, reported with `--stats`.

use std::collections::BTreeMap;

use serde::Serialize;

/// What the xenstore daemon did during a run. Requests and errors are counted for the
/// rings (wire requests), not for the in-shim dom0 API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct XenstoredStats {
    /// Requests by type (`"READ"`, `"WRITE"`, ...; `"UNKNOWN"` for invalid types).
    pub requests: BTreeMap<&'static str, u64>,
    /// Error replies by error name (`"ENOENT"`, ...).
    pub errors: BTreeMap<&'static str, u64>,
    /// Watch events queued for delivery (rings and the dom0 API).
    pub watch_events: u64,
    /// Watch events dropped because the connection's output queue was full.
    pub watch_events_dropped: u64,
    /// Duplicate watch events not queued because an identical one was pending.
    pub watch_events_coalesced: u64,
    /// Transactions started.
    pub transactions_started: u64,
    /// Transactions committed.
    pub transactions_committed: u64,
    /// Transactions ended without commit, or discarded with their connection.
    pub transactions_aborted: u64,
    /// Commits refused with `EAGAIN` (a conflict: the caller retries).
    pub transaction_conflicts: u64,
    /// Rings stopped for a protocol violation (bad index, oversized message).
    pub protocol_errors: u64,
    /// Domains introduced.
    pub domains_introduced: u64,
    /// Domains released.
    pub domains_released: u64,
}

impl XenstoredStats {
    /// Counts a request of wire type `name`.
    pub(super) fn request(&mut self, name: &'static str) {
        *self.requests.entry(name).or_default() += 1;
    }

    /// Counts an error reply.
    pub(super) fn error(&mut self, name: &'static str) {
        *self.errors.entry(name).or_default() += 1;
    }

    /// All requests.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }

    /// All error replies.
    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_json() {
        let mut s = XenstoredStats::default();
        s.request("READ");
        s.request("READ");
        s.error("ENOENT");
        s.watch_events = 3;
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["requests"]["READ"], 2);
        assert_eq!(json["errors"]["ENOENT"], 1);
        assert_eq!(json["watch_events"], 3);
        assert_eq!((s.total_requests(), s.total_errors()), (2, 1));
    }
}
