//! Coalesced audit rows for refusals (security review M2/M3).
//!
//! A peer that keeps failing (a revoked certificate, a port scanner, a
//! client of another CA) must not cost one fsynced audit row per attempt:
//! that turns a refusal into a disk-write amplifier. The first refusal of a
//! kind from a peer is written at once, so the operator sees it without
//! delay; the rest of its window are only counted, and one row with that
//! count is written when the window ends. A peer that hammers without pause
//! therefore writes at most two rows per window, and the counts still add
//! up to every refusal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long refusals of one kind from one peer are counted into one row.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Distinct (peer, reason) pairs tallied at once. Beyond it, refusals are
/// counted under one catch-all peer, so a flood from many addresses cannot
/// grow the table without bound.
const MAX_KEYS: usize = 4096;
const MANY_PEERS: &str = "(many peers)";

/// An audit row to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub event: &'static str,
    pub site: Option<String>,
    pub detail: String,
    /// How many refusals this row stands for.
    pub count: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    event: &'static str,
    site: Option<String>,
    peer: String,
    reason: String,
}

struct Tally {
    since: Instant,
    /// Refusals since the row written at `since`.
    more: u64,
}

pub struct Refusals {
    window: Duration,
    open: Mutex<HashMap<Key, Tally>>,
}

impl Refusals {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one refusal of `reason` from `peer` (an address, or a
    /// certificate's name and fingerprint); returns the row to write now if
    /// it is the first of its window.
    pub fn note(
        &self,
        event: &'static str,
        site: Option<&str>,
        peer: &str,
        reason: &str,
        at: Instant,
    ) -> Option<Entry> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = Key {
            event,
            site: site.map(str::to_string),
            peer: peer.to_string(),
            reason: reason.to_string(),
        };
        if !open.contains_key(&key) && open.len() >= MAX_KEYS {
            key.site = None;
            key.peer = MANY_PEERS.to_string();
        }
        match open.get_mut(&key) {
            Some(tally) if at.duration_since(tally.since) < self.window => {
                tally.more += 1;
                None
            }
            _ => {
                // A window that ended without a flush yet is closed by the
                // caller's next `due`; its count is kept until then.
                if let Some(tally) = open.remove(&key) {
                    // Re-inserted below with a fresh window; the old count
                    // must not be lost, so it is folded into this row.
                    let entry = summary(&key, tally.more + 1, self.window);
                    open.insert(key, Tally { since: at, more: 0 });
                    return Some(entry);
                }
                let entry = Entry {
                    event: key.event,
                    site: key.site.clone(),
                    detail: format!("peer {}: {}", key.peer, key.reason),
                    count: 1,
                };
                open.insert(key, Tally { since: at, more: 0 });
                Some(entry)
            }
        }
    }

    /// Rows for the windows that ended by `at`: one per window that counted
    /// further refusals after its first row.
    pub fn due(&self, at: Instant) -> Vec<Entry> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries = Vec::new();
        open.retain(|key, tally| {
            if at.duration_since(tally.since) < self.window {
                return true;
            }
            if tally.more > 0 {
                entries.push(summary(key, tally.more, self.window));
            }
            false
        });
        entries
    }

    /// Everything still counted, for a clean shutdown.
    pub fn drain(&self) -> Vec<Entry> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.drain()
            .filter(|(_, tally)| tally.more > 0)
            .map(|(key, tally)| summary(&key, tally.more, self.window))
            .collect()
    }
}

fn summary(key: &Key, count: u64, window: Duration) -> Entry {
    Entry {
        event: key.event,
        site: key.site.clone(),
        detail: format!(
            "peer {}: {} (refused {count} more times within {} s; counted, not logged one by one)",
            key.peer,
            key.reason,
            window.as_secs()
        ),
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hammering_peer_writes_two_rows_per_window_and_every_refusal_is_counted() {
        let refusals = Refusals::new(Duration::from_secs(60));
        let start = Instant::now();
        let mut rows = Vec::new();
        for i in 0..200u64 {
            let at = start + Duration::from_millis(i);
            rows.extend(refusals.note("request_refused", Some("site-b"), "fp", "revoked", at));
        }
        assert_eq!(rows.len(), 1, "only the first refusal is written at once");
        assert!(refusals.due(start + Duration::from_secs(1)).is_empty());
        rows.extend(refusals.due(start + Duration::from_secs(61)));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 200);
        assert!(rows[1].detail.contains("199 more"), "{}", rows[1].detail);
    }

    #[test]
    fn a_refusal_after_an_unflushed_window_keeps_the_old_count() {
        let refusals = Refusals::new(Duration::from_secs(10));
        let start = Instant::now();
        let mut rows = Vec::new();
        for s in [0, 1, 2, 30] {
            rows.extend(refusals.note(
                "tls_refused",
                None,
                "10.0.0.1",
                "x",
                start + Duration::from_secs(s),
            ));
        }
        rows.extend(refusals.drain());
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 4);
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn peers_and_reasons_are_counted_apart_and_the_table_is_bounded() {
        let refusals = Refusals::new(Duration::from_secs(60));
        let at = Instant::now();
        assert!(refusals.note("tls_refused", None, "a", "x", at).is_some());
        assert!(refusals.note("tls_refused", None, "a", "y", at).is_some());
        assert!(refusals.note("tls_refused", None, "b", "x", at).is_some());
        for i in 0..2 * MAX_KEYS {
            refusals.note("tls_refused", None, &format!("p{i}"), "x", at);
        }
        let open = refusals.open.lock().unwrap_or_else(|p| p.into_inner());
        assert!(open.len() <= MAX_KEYS + 1, "{}", open.len());
    }
}
