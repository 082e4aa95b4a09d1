//! etcd leases as this sidecar handles them: [`ActiveLease`], a lease with
//! its own keep-alive stream, and [`LeasePool`], the leases whose entries
//! were released here, kept for the next acquire with the same TTL.
//!
//! Why a pool: granting and revoking a lease are each a raft write (a commit
//! round trip). An acquire that takes a pooled lease needs neither, and a
//! release deletes only the entry: a lock cycle then costs two commits, like
//! etcd's own lock, instead of four. A pooled lease restarted within the
//! headroom ([`HEADROOM_SECS`]) before the acquire still covers its TTL;
//! an older one is restarted with a keep-alive sent alongside the enqueue
//! transaction. A pooled lease carries no key; one that runs out in the pool
//! is reaped by etcd like any other.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use turnstile_core::Time;

use super::client::{CallError, KeepAlive};
use super::{secs, EtcdLease, Inner, HEADROOM_SECS};
use crate::error::BackendError;

/// Pooled leases kept per TTL; more are revoked.
const POOL_PER_TTL: usize = 1024;

/// A lease in use by one acquire or holder, with its keep-alive stream once
/// it has needed one.
pub(super) struct ActiveLease {
    /// The etcd lease id.
    pub(super) id: i64,
    /// The turnstile TTL it carries, in seconds (etcd's is [`HEADROOM_SECS`] more).
    pub(super) ttl: i64,
    /// A moment no later than the grant or keep-alive that last restarted its
    /// TTL, on the backend's clock.
    refreshed: Time,
    keeper: Option<KeepAlive>,
}

impl ActiveLease {
    /// A lease whose TTL was (re)started no earlier than `refreshed`.
    pub(super) fn new(lease: EtcdLease, refreshed: Time) -> Self {
        ActiveLease { id: lease.id, ttl: lease.ttl, refreshed, keeper: None }
    }

    /// A stand-in left behind when a lease is moved out of its owner.
    pub(super) fn none() -> Self {
        ActiveLease::new(EtcdLease { id: 0, ttl: 0 }, Time::ZERO)
    }

    /// Whether etcd keeps the lease for a full TTL counted from `from`
    /// without a keep-alive: its TTL restarted at most the headroom before.
    pub(super) fn covers(&self, from: Time) -> bool {
        from.saturating_since(self.refreshed) <= secs(HEADROOM_SECS)
    }

    /// A time before which etcd cannot have expired the lease.
    pub(super) fn alive_until(&self) -> Time {
        self.refreshed + secs(self.ttl + HEADROOM_SECS)
    }

    /// Restarts the lease's TTL now; false when the lease has ended (etcd never
    /// renews an ended lease). Uses the lease's own stream, opened on first use.
    pub(super) async fn keep_alive(&mut self, inner: &Inner) -> Result<bool, BackendError> {
        let sent = inner.clock.now();
        let alive = self.send_keep_alive(inner).await?;
        if alive {
            self.refreshed = sent;
        }
        Ok(alive)
    }

    async fn send_keep_alive(&mut self, inner: &Inner) -> Result<bool, BackendError> {
        if let Some(keeper) = &mut self.keeper {
            match tokio::time::timeout(inner.timeout, keeper.renew()).await {
                Ok(Ok(ttl)) => return inner.settle("lease keep-alive", Ok(ttl > 0)),
                // The stream broke (etcd restarted, the connection dropped): open another.
                Ok(_) => self.keeper = None,
                Err(_) => {
                    // An answer may still come; never read it as the next one.
                    self.keeper = None;
                    return inner.settle("lease keep-alive", Err(CallError::TimedOut));
                }
            }
        }
        let res = match tokio::time::timeout(inner.timeout, inner.client.keep_alive(self.id)).await {
            // etcd answered TTL 0: the lease is gone.
            Ok(Ok(None)) => Ok(false),
            Ok(Ok(Some(keeper))) => {
                self.keeper = Some(keeper);
                Ok(true)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CallError::TimedOut),
        };
        inner.settle("lease keep-alive", res)
    }
}

/// Leases without entries, by TTL, for reuse.
#[derive(Default)]
pub(super) struct LeasePool {
    /// Held for a push or pop only, never across an `.await`.
    by_ttl: Mutex<HashMap<i64, VecDeque<ActiveLease>>>,
}

impl LeasePool {
    /// A pooled lease of `ttl` seconds that etcd keeps for at least `margin`
    /// beyond `now`; ones closer to their end are dropped (etcd reaps them).
    pub(super) fn take(&self, ttl: i64, margin: Duration, now: Time) -> Option<ActiveLease> {
        let mut pool = self.by_ttl.lock().unwrap_or_else(|p| p.into_inner());
        let leases = pool.get_mut(&ttl)?;
        let fresh_from = now + margin;
        // The oldest ones that ran out go (closing their keep-alive streams).
        while leases.front().is_some_and(|l| l.alive_until() <= fresh_from) {
            leases.pop_front();
        }
        // Most recently used first: the likeliest to need no keep-alive.
        while let Some(lease) = leases.pop_back() {
            if lease.alive_until() > fresh_from {
                return Some(lease);
            }
        }
        None
    }

    /// Keeps `lease` (which must carry no key) for reuse, or revokes it when
    /// the pool is full.
    pub(super) fn put(&self, inner: &Arc<Inner>, lease: ActiveLease) {
        if let Some(extra) = self.push(lease) {
            inner.revoke_later(extra.id);
        }
    }

    /// Keeps `lease` for reuse; the pool's answer when it is full is `lease` back.
    fn push(&self, lease: ActiveLease) -> Option<ActiveLease> {
        let mut pool = self.by_ttl.lock().unwrap_or_else(|p| p.into_inner());
        let leases = pool.entry(lease.ttl).or_default();
        if leases.len() < POOL_PER_TTL {
            leases.push_back(lease);
            None
        } else {
            Some(lease)
        }
    }

    /// Empties the pool, returning the lease ids.
    pub(super) fn drain(&self) -> Vec<i64> {
        let mut pool = self.by_ttl.lock().unwrap_or_else(|p| p.into_inner());
        pool.drain().flat_map(|(_, leases)| leases.into_iter().map(|l| l.id)).collect()
    }
}

#[cfg(test)]
mod tests {
    //! Lease freshness on the backend's clock, driven by tokio's paused time:
    //! no etcd needed, since nothing here calls it.

    use super::*;
    use crate::clock::Clock;

    fn lease(id: i64, ttl: i64, refreshed: Time) -> ActiveLease {
        ActiveLease::new(EtcdLease { id, ttl }, refreshed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_covers_a_full_ttl_without_keep_alive_only_within_the_headroom_after_its_refresh() {
        let clock = Clock::new();
        let l = lease(1, 5, clock.now());
        assert_eq!(l.alive_until(), clock.now() + secs(5 + HEADROOM_SECS), "etcd keeps it ttl plus headroom");
        tokio::time::advance(secs(HEADROOM_SECS)).await;
        assert!(l.covers(clock.now()), "restarted exactly the headroom ago: etcd keeps it a full ttl from now");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!l.covers(clock.now()), "restarted longer ago: an acquire must restart it first");
        // A moment before the refresh (a call that began earlier) is covered too.
        assert!(l.covers(Time::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn the_pool_hands_out_the_latest_lease_that_etcd_keeps_past_the_margin_and_drops_the_rest() {
        let clock = Clock::new();
        let pool = LeasePool::default();
        let margin = Duration::from_millis(500);
        // TTL 2 s: etcd keeps each lease 3 s after its refresh.
        assert!(pool.push(lease(1, 2, clock.now())).is_none()); // alive until 3 s
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(pool.push(lease(2, 2, clock.now())).is_none()); // alive until 4 s
        assert!(pool.push(lease(3, 5, clock.now())).is_none()); // another TTL
        tokio::time::advance(Duration::from_millis(1400)).await; // 2.4 s: both outlive the margin
        let second = pool.take(2, margin, clock.now()).expect("a lease of 2 s");
        let first = pool.take(2, margin, clock.now()).expect("another lease of 2 s");
        assert_eq!((second.id, first.id), (2, 1), "the most recently pooled first");
        assert!(pool.push(first).is_none() && pool.push(second).is_none());
        tokio::time::advance(Duration::from_millis(100)).await; // 2.5 s: lease 1 ends exactly at the margin
        assert_eq!(pool.take(2, margin, clock.now()).map(|l| l.id), Some(2));
        assert_eq!(pool.take(2, margin, clock.now()).map(|l| l.id), None, "lease 1 was dropped, not handed out");
        assert_eq!(pool.take(7, margin, clock.now()).map(|l| l.id), None, "no lease of that TTL");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(pool.take(5, margin, clock.now()).map(|l| l.id), None, "run out in the pool");
        assert!(pool.drain().is_empty());
    }

    #[test]
    fn a_full_pool_hands_the_lease_back_for_revoking() {
        let pool = LeasePool::default();
        for id in 0..POOL_PER_TTL {
            assert!(pool.push(lease(id as i64, 2, Time::ZERO)).is_none());
        }
        assert_eq!(pool.push(lease(-1, 2, Time::ZERO)).map(|l| l.id), Some(-1));
        assert!(pool.push(lease(-2, 3, Time::ZERO)).is_none(), "per TTL");
    }
}
