//! What the shards of one coordinator share: their limits ([`TableConfig`])
//! and [`Counters`] (the fencing-token sequence and the lease count).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Limits one table enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    /// Maximum queued waiters per key; more is [`CoreError::TooManyWaiters`](crate::CoreError::TooManyWaiters).
    pub max_waiters_per_key: usize,
    /// Maximum leases held at once across every table sharing the same
    /// [`Counters`]; more is [`CoreError::TooManyLeases`](crate::CoreError::TooManyLeases).
    pub max_leases: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig { max_waiters_per_key: 10_000, max_leases: 10_000_000 }
    }
}

/// State shared by every shard of one coordinator: the fencing-token sequence
/// and the number of held leases. Atomics, so shards need no common lock.
#[derive(Debug)]
pub struct Counters {
    next_token: AtomicU64,
    leases: AtomicUsize,
}

impl Counters {
    /// Counters whose first issued token is `first_token` (at least 1).
    pub fn new(first_token: u64) -> Self {
        Counters { next_token: AtomicU64::new(first_token.max(1)), leases: AtomicUsize::new(0) }
    }

    /// The token the next grant will receive.
    pub fn next_token(&self) -> u64 {
        self.next_token.load(Ordering::Relaxed)
    }

    /// Leases currently held across all shards.
    pub fn held_leases(&self) -> usize {
        self.leases.load(Ordering::Relaxed)
    }

    /// Issues a token. A key lives in one shard behind one lock, so tokens
    /// issued for it in lock order come from this single atomic sequence in
    /// that same order: they strictly increase per key.
    pub(crate) fn issue(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes sure the next token issued is above `token` (after a restore).
    pub(crate) fn observe(&self, token: u64) {
        self.next_token.fetch_max(token.saturating_add(1), Ordering::Relaxed);
    }

    /// Counts a lease granted if fewer than `max` are held; false (and
    /// nothing counted) otherwise. One atomic step, so shards granting at the
    /// same moment cannot together pass the limit.
    pub(crate) fn try_add_lease(&self, max: usize) -> bool {
        self.leases.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// Counts a lease granted whatever the limit (a lease restored from a
    /// snapshot was granted before).
    pub(crate) fn add_lease(&self) {
        self.leases.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a lease ended.
    pub(crate) fn remove_lease(&self) {
        self.leases.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_leases_holds_when_shards_grant_at_once() {
        let counters = Counters::new(1);
        let granted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        if counters.try_add_lease(100) {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), 100);
        assert_eq!(counters.held_leases(), 100);
        counters.remove_lease();
        assert!(counters.try_add_lease(100), "a freed lease can be granted again");
    }
}
