//! Renew and Release on etcd, and [`LocalLeases`]: the leases this sidecar
//! granted or last renewed, which it ends itself the moment they run out.
//!
//! A holder is found by `(key, token)`: first in [`LocalLeases`], else as the
//! key's lowest entry when its create revision is the token. Every change is a
//! transaction conditioned on the entry's create revision and lease, so a
//! stale token never touches a newer lease (G7); a stale local record falls
//! back to reading etcd.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use turnstile_core::{CoreError, Time};

use super::client::{Branch, Cond, Get, Skip, Txn, Write};
use super::layout::EntryValue;
use super::leases::ActiveLease;
use super::{entry_is, first_entry, secs, token_rev, EtcdLease, Inner};
use crate::backend::{ForceReleased, Grant};
use crate::clock::Clock;
use crate::error::BackendError;

/// Results up to this size are released in a shared (batched) request;
/// larger ones alone, so a batch stays far below etcd's request size limit.
const BATCHED_RESULT_BYTES: usize = 64 * 1024;

/// A lease known to this sidecar: the holder's entry and its etcd lease.
#[derive(Debug, Clone)]
pub(super) struct Held {
    /// The holder's queue entry.
    pub(super) entry: Vec<u8>,
    /// Its etcd lease.
    pub(super) lease: i64,
    /// The lease's TTL in seconds.
    pub(super) ttl: i64,
    /// The owner.
    pub(super) owner: Arc<str>,
    /// The entry's mod revision as this sidecar last wrote it.
    pub(super) mod_rev: i64,
    /// When the lease runs out, as the client counts it (from before the
    /// etcd call that granted or renewed it), on the backend's clock.
    pub(super) deadline: Time,
}

struct Slot {
    held: Held,
    timer: tokio::task::AbortHandle,
    /// The lease with its keep-alive stream, for the pool once released here.
    lease: Option<ActiveLease>,
}

/// Leases granted or renewed through this sidecar, each with a timer that
/// deletes the holder's entry when it runs out, unless someone else has
/// rewritten the entry since (a renew through another sidecar).
pub(super) struct LocalLeases {
    /// The backend's clock: deadlines are on it, and timers sleep by it.
    clock: Clock,
    /// Held for a map operation only, never across an `.await`.
    slots: Mutex<HashMap<(String, u64), Slot>>,
}

impl LocalLeases {
    /// No leases yet; deadlines on `clock`.
    pub(super) fn new(clock: Clock) -> Self {
        LocalLeases { clock, slots: Mutex::default() }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<(String, u64), Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records (or replaces) the lease `(key, token)` and arms its expiry;
    /// `lease` is its etcd lease as this sidecar holds it (else the one
    /// recorded before is kept, if it is the same).
    pub(super) fn record(&self, inner: &Arc<Inner>, key: &str, token: u64, held: Held, lease: Option<ActiveLease>) {
        let weak = Arc::downgrade(inner);
        let (k, deadline, mod_rev) = (key.to_owned(), self.clock.instant(held.deadline), held.mod_rev);
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(inner) = weak.upgrade() {
                expire(&inner, &k, token, mod_rev).await;
            }
        })
        .abort_handle();
        let mut slots = self.slots();
        let mut old = slots.remove(&(key.to_owned(), token));
        let lease = lease.or_else(|| old.as_mut().and_then(|o| o.lease.take()).filter(|l| l.id == held.lease));
        slots.insert((key.to_owned(), token), Slot { held, timer, lease });
        drop(slots);
        if let Some(old) = old {
            old.timer.abort();
        }
    }

    /// The number of leases recorded: granted or last renewed here, neither
    /// released nor run out yet by this sidecar's count.
    pub(super) fn len(&self) -> usize {
        self.slots().len()
    }

    /// The record of `(key, token)`, if this sidecar has one.
    fn lookup(&self, key: &str, token: u64) -> Option<Held> {
        self.slots().get(&(key.to_owned(), token)).map(|s| s.held.clone())
    }

    /// Drops the record of `(key, token)` and its timer; the lease as this
    /// sidecar held it, if it did.
    fn forget(&self, key: &str, token: u64) -> Option<ActiveLease> {
        let old = self.slots().remove(&(key.to_owned(), token))?;
        old.timer.abort();
        old.lease
    }

    /// Drops the record if it is still the one written at `mod_rev`, without
    /// touching its timer (the caller is that timer).
    fn take_if(&self, key: &str, token: u64, mod_rev: i64) {
        let mut slots = self.slots();
        let k = (key.to_owned(), token);
        if slots.get(&k).is_some_and(|s| s.held.mod_rev == mod_rev) {
            slots.remove(&k);
        }
    }

    /// Time left on a lease this sidecar knows exactly: the entry must still
    /// be on `lease` at `mod_rev`, as recorded.
    pub(super) fn expires_in(&self, key: &str, token: u64, lease: i64, mod_rev: i64) -> Option<Duration> {
        let slots = self.slots();
        let held = &slots.get(&(key.to_owned(), token))?.held;
        (held.lease == lease && held.mod_rev == mod_rev).then(|| held.deadline.saturating_since(self.clock.now()))
    }
}

/// The lease `(key, token)` ran out by this sidecar's count: delete its entry
/// unless it was rewritten since (renewed elsewhere), then revoke its lease.
async fn expire(inner: &Arc<Inner>, key: &str, token: u64, mod_rev: i64) {
    let Some(held) = inner.local.lookup(key, token).filter(|h| h.mod_rev == mod_rev) else { return };
    let txn = Txn::when([Cond::created_at(&held.entry, token_rev(token)), Cond::modified_at(&held.entry, mod_rev)])
        .with(Branch::Then, Write::delete(&held.entry));
    let res = inner.write(key, "expire", txn).await;
    inner.local.take_if(key, token, mod_rev);
    match res {
        Ok(resp) if resp.succeeded => {
            inner.metrics.leases_expired.inc();
            tracing::debug!(key, owner = %held.owner, token, "lease expired");
            let _ = inner.revoke(held.lease).await;
        }
        // Released, or renewed through another sidecar: etcd's TTL is the judge now.
        Ok(_) => {}
        Err(e) => tracing::debug!(key, token, "could not end the expired lease, etcd's TTL will: {e}"),
    }
}

/// Reads the holder of `key` from etcd if its token is `token`.
async fn find_holder(inner: &Inner, key: &str, token: u64) -> Result<Option<Held>, BackendError> {
    let mut txn = Txn::new();
    let first = txn.read(Branch::Then, first_entry(&inner.layout.queue(key)));
    let resp = inner.txn("read holder", txn).await?;
    Ok(resp.first(first).filter(|kv| kv.create_revision == token_rev(token)).map(|kv| {
        let value = EntryValue::decode(&kv.value);
        Held {
            entry: kv.key.clone(),
            lease: kv.lease,
            ttl: value.as_ref().map_or(inner.min_ttl_secs, |v| v.ttl),
            owner: value.map(|v| v.owner).unwrap_or_default().into(),
            mod_rev: kv.mod_revision,
            deadline: inner.clock.now(),
        }
    }))
}

/// The holder `(key, token)`: this sidecar's record first, then etcd's.
async fn holder(inner: &Inner, key: &str, token: u64, fresh: bool) -> Result<Option<Held>, BackendError> {
    if fresh {
        find_holder(inner, key, token).await
    } else {
        Ok(inner.local.lookup(key, token))
    }
}

/// Renew: rewrites the entry (which disarms another sidecar's expiry timer)
/// and keeps its lease alive, or moves it to a new lease when the TTL changes.
pub(super) async fn renew(
    inner: &Arc<Inner>,
    key: String,
    token: u64,
    ttl: Option<Duration>,
) -> Result<Grant, BackendError> {
    inner.check_open()?;
    // The renewed TTL counts from here: no later than the client sent it.
    let at = inner.clock.now();
    for fresh in [false, true] {
        let Some(held) = holder(inner, &key, token, fresh).await? else { continue };
        let want = ttl.map_or(held.ttl, |t| inner.ttl_secs(t));
        let Some((lease, mod_rev)) = renew_held(inner, &key, token, &held, want).await? else { continue };
        let ttl = secs(lease.ttl);
        let renewed = Held { lease: lease.id, ttl: lease.ttl, mod_rev, deadline: at + ttl, ..held };
        let owner = renewed.owner.clone();
        inner.local.record(inner, &key, token, renewed, None);
        return Ok(Grant { key: key.into(), owner, token, ttl });
    }
    Err(CoreError::LeaseNotFound { key, token }.into())
}

/// Extends `held` to `want` seconds; the lease and the entry's new mod
/// revision, or `None` when the lease has ended.
async fn renew_held(
    inner: &Arc<Inner>,
    key: &str,
    token: u64,
    held: &Held,
    want: i64,
) -> Result<Option<(EtcdLease, i64)>, BackendError> {
    if want == held.ttl {
        let txn = Txn::when(entry_is(&held.entry, token, held.lease))
            .with(Branch::Then, Write::touch(&held.entry, held.lease));
        let resp = inner.write(key, "renew", txn).await?;
        let lease = EtcdLease { id: held.lease, ttl: held.ttl };
        if !resp.succeeded || !ActiveLease::new(lease, inner.clock.now()).keep_alive(inner).await? {
            return Ok(None);
        }
        return Ok(Some((EtcdLease { id: held.lease, ttl: held.ttl }, resp.revision)));
    }
    let lease = inner.grant_lease(want).await?;
    let value = EntryValue { owner: held.owner.to_string(), ttl: lease.ttl, share: false };
    let txn = Txn::when(entry_is(&held.entry, token, held.lease))
        .with(Branch::Then, Write::put(&held.entry, value.encode(), lease.id));
    let resp = inner.write(key, "renew", txn).await;
    match resp {
        Ok(resp) if resp.succeeded => {
            inner.revoke_later(held.lease);
            Ok(Some((lease, resp.revision)))
        }
        other => {
            inner.revoke_later(lease.id);
            other.map(|_| None)
        }
    }
}

/// Release: deletes the holder's entry, and returns its lease to the pool
/// when this sidecar knows how long etcd keeps it (else revokes it); with a
/// result, stores the result on that lease instead, kept until the sharing
/// waiters queued now have taken it.
pub(super) async fn release(
    inner: &Arc<Inner>,
    key: String,
    token: u64,
    result: Option<Vec<u8>>,
) -> Result<bool, BackendError> {
    inner.check_open()?;
    for fresh in [false, true] {
        let Some(held) = holder(inner, &key, token, fresh).await? else { continue };
        let mut txn =
            Txn::when(entry_is(&held.entry, token, held.lease)).with(Branch::Then, Write::delete(&held.entry));
        if let Some(bytes) = &result {
            txn.write(Branch::Then, Write::put(&inner.layout.result(&key, token), bytes.clone(), held.lease));
        }
        let resp = match &result {
            // A large result gets a request of its own.
            Some(bytes) if bytes.len() > BATCHED_RESULT_BYTES => inner.txn("release", txn).await?,
            _ => inner.write(&key, "release", txn).await?,
        };
        if !resp.succeeded {
            continue;
        }
        let ours = inner.local.forget(&key, token);
        match (&result, ours) {
            (Some(_), _) => retain_result(inner, &key, held.lease, resp.revision),
            // The entry is gone and this sidecar knows the lease: reuse it.
            (None, Some(lease)) if !fresh => inner.pool.put(inner, lease),
            (None, _) => inner.revoke_later(held.lease),
        }
        return Ok(true);
    }
    Ok(false)
}

/// ForceRelease: deletes the holder's entry, whoever's it is, as its expiry
/// by TTL would (the waiter behind it sees the delete and is granted; no
/// result is stored, so no sharing waiter is handed one), then revokes its
/// lease. The delete is conditioned on the entry's create revision only: a
/// renew through any sidecar since it was read does not save it. The
/// sidecar that granted it finds its record stale (its expiry, renew and
/// release transactions all fail on the missing entry).
pub(super) async fn force_release(
    inner: &Arc<Inner>,
    key: String,
    token: Option<u64>,
) -> Result<ForceReleased, BackendError> {
    inner.check_open()?;
    let (first, count, _) = inner.head(&key).await?;
    let previous = super::inspect::lock_info(inner, &key, first.as_ref(), count).await?;
    let Some(kv) = first.filter(|kv| token.is_none_or(|t| kv.create_revision == token_rev(t))) else {
        return Ok(ForceReleased { released: false, previous });
    };
    let txn = Txn::when([Cond::created_at(&kv.key, kv.create_revision)]).with(Branch::Then, Write::delete(&kv.key));
    let resp = inner.write(&key, "force release", txn).await?;
    if !resp.succeeded {
        // Ended meanwhile (released, expired, or forced by another call).
        return Ok(ForceReleased { released: false, previous });
    }
    // This sidecar's record of it, if any, and its keep-alive: gone with it.
    drop(inner.local.forget(&key, super::rev_token(kv.create_revision)));
    inner.revoke_later(kv.lease);
    Ok(ForceReleased { released: true, previous })
}

/// Keeps a released result (on the released lease) until every sharing
/// waiter queued at `released_at` has left the queue, at most the retention
/// time, then revokes the lease.
fn retain_result(inner: &Arc<Inner>, key: &str, lease: i64, released_at: i64) {
    let (inner2, key) = (inner.clone(), key.to_owned());
    inner.tasks.spawn(async move {
        let inner = inner2;
        let mut closed = inner.closed.subscribe();
        tokio::select! {
            res = tokio::time::timeout(inner.result_retention, sharers_gone(&inner, &key, released_at)) => {
                if let Ok(Err(e)) = res {
                    tracing::debug!(key, "cannot follow the sharing waiters: {e}");
                }
            }
            _ = closed.wait_for(|c| *c) => {}
        }
        let _ = inner.revoke(lease).await;
    });
}

/// Completes when the sharing entries of `key` that existed at `at` are gone.
async fn sharers_gone(inner: &Inner, key: &str, at: i64) -> Result<(), BackendError> {
    let queue = inner.layout.queue(key);
    let resp = inner.call("read sharers", inner.client.get(Get::prefix(&queue).at_revision(at))).await?;
    let mut left: HashSet<Vec<u8>> = resp
        .kvs
        .into_iter()
        .filter(|kv| EntryValue::decode(&kv.value).is_some_and(|v| v.share))
        .map(|kv| kv.key)
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    let mut watch = inner.watch(&queue, true, at + 1, Skip::Puts).await?;
    while !left.is_empty() {
        let Some(resp) = watch.message().await.map_err(|e| inner.unavailable("watch", &e))? else { break };
        if resp.canceled {
            break;
        }
        for kv in resp.events.iter().filter_map(|e| e.kv.as_ref()) {
            left.remove(&kv.key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The local expiry of a lease this sidecar granted, on the backend's
    //! clock under tokio's paused time. The backend points at a port that
    //! refuses connections: nothing here needs etcd to answer.

    use clap::Parser;

    use super::*;
    use crate::backend::etcd::EtcdBackend;
    use crate::config::Config;
    use crate::telemetry::Metrics;

    #[tokio::test(start_paused = true)]
    async fn a_local_lease_counts_down_on_the_clock_and_ends_at_its_deadline_not_before() {
        let refused = turnstile_testkit::RefusedPort::new();
        let url = refused.url();
        let args = ["turnstiled", "--backend", "etcd", "--etcd-endpoints", &url, "--etcd-timeout", "100ms"];
        let config = Config::parse_from(args);
        let backend = EtcdBackend::connect_with_clock(&config, Arc::new(Metrics::new()), Clock::new())
            .await
            .expect("connecting is lazy");
        let inner = &backend.inner;
        let clock = inner.clock;
        let (key, token, lease, mod_rev) = ("k", 3, 7, 3);
        let held = Held {
            entry: b"turnstile/q/k/7".to_vec(),
            lease,
            ttl: 5,
            owner: "o".into(),
            mod_rev,
            deadline: clock.now() + secs(5),
        };
        inner.local.record(inner, key, token, held, None);

        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(inner.local.expires_in(key, token, lease, mod_rev), Some(Duration::from_secs(3)));
        assert_eq!(inner.local.expires_in(key, token, lease + 1, mod_rev), None, "another lease: not vouched for");
        assert_eq!(inner.local.expires_in(key, token, lease, mod_rev + 1), None, "rewritten elsewhere");

        tokio::time::advance(Duration::from_millis(2999)).await;
        assert_eq!(inner.local.expires_in(key, token, lease, mod_rev), Some(Duration::from_millis(1)));
        assert!(inner.local.lookup(key, token).is_some(), "not ended before its deadline");

        tokio::time::advance(Duration::from_millis(1)).await;
        // The timer fired at the deadline: it asks etcd to delete the entry
        // (refused here, within the etcd timeout) and forgets the lease.
        let ended = async {
            while inner.local.lookup(key, token).is_some() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(config.etcd_timeout * 2, ended).await.expect("the lease ends at its deadline");
        assert_eq!(inner.local.expires_in(key, token, lease, mod_rev), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_record_replaces_the_earlier_deadline() {
        let refused = turnstile_testkit::RefusedPort::new();
        let url = refused.url();
        let config = Config::parse_from(["turnstiled", "--backend", "etcd", "--etcd-endpoints", &url]);
        let backend = EtcdBackend::connect_with_clock(&config, Arc::new(Metrics::new()), Clock::new())
            .await
            .expect("connecting is lazy");
        let inner = &backend.inner;
        let clock = inner.clock;
        let held = |mod_rev, ttl| Held {
            entry: b"turnstile/q/k/7".to_vec(),
            lease: 7,
            ttl,
            owner: "o".into(),
            mod_rev,
            deadline: clock.now() + secs(ttl),
        };
        inner.local.record(inner, "k", 3, held(3, 2), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        // Renewed here for 10 s: the entry was rewritten at mod revision 4.
        inner.local.record(inner, "k", 3, held(4, 10), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(inner.local.lookup("k", 3).is_some(), "the first deadline's timer was disarmed");
        assert_eq!(inner.local.expires_in("k", 3, 7, 4), Some(Duration::from_secs(5)));
        assert_eq!(inner.local.expires_in("k", 3, 7, 3), None, "the first record is gone");
    }
}
