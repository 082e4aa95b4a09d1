//! Acquire on etcd: enqueue an entry under its own lease, refresh the
//! caller's own lease (G5), or wait behind the entry just ahead (G4), with the
//! grant-time lease check of etcd issue 11456 and cancellation safety (G6).
//!
//! Every acquire takes a lease with the TTL asked for (from the pool, its TTL
//! restarted, or newly granted) and creates its entry with it in one
//! transaction that also reads the queue's head and length. The entry with
//! the lowest create revision holds the lock. A waiter finds the entry just
//! ahead of it (highest create revision below its own) and watches only that
//! key for its deletion, from the revision it read it at, so no deletion is
//! missed and nobody else is woken. A `share_result` waiter also watches the
//! key's results, from its own create revision on.
//!
//! When nobody is ahead any more, the waiter is granted only if etcd, asked
//! then, still has its entry on its lease: if the lease ended while it waited
//! (its sidecar could not reach etcd for longer than the TTL, or someone
//! revoked it), etcd has deleted the entry and the waiter is never granted.
//! Local time alone never grants: it cannot see a revoked lease.

use std::sync::Arc;

use turnstile_core::{CoreError, Time};

use super::client::{
    Branch, CallError, Cond, EventType, Get, Read, Skip, SortOrder, SortTarget, Txn, Watch, WatchResponse, Write,
};
use super::holders::Held;
use super::layout::EntryValue;
use super::leases::ActiveLease;
use super::{entry_is, first_entry, inspect, rev_token, secs, Head, Inner};
use crate::backend::{AcquireOutcome, AcquireRequest, Grant};
use crate::error::BackendError;

/// How many times an acquire starts over when the lease it meant to refresh
/// (its owner's own) or a pooled lease ended under it.
const ATTEMPTS: usize = 3;

/// Runs an acquire.
pub(super) async fn acquire(inner: &Arc<Inner>, req: AcquireRequest) -> Result<AcquireOutcome, BackendError> {
    inner.check_open()?;
    for n in 0..ATTEMPTS {
        // After a pooled lease turned out dead, grant a fresh one.
        if let Some(outcome) = attempt(inner, &req, n == 0).await? {
            return Ok(outcome);
        }
    }
    Err(BackendError::Unavailable { reason: format!("the queue of {:?} kept changing under the acquire", req.key) })
}

/// One try; `None` means "start over".
async fn attempt(
    inner: &Arc<Inner>,
    req: &AcquireRequest,
    pooled: bool,
) -> Result<Option<AcquireOutcome>, BackendError> {
    // The TTL counts from here: no later than the client sent the request.
    let started = inner.clock.now();
    let ttl = inner.ttl_secs(req.ttl);
    let reused = if pooled { inner.pool.take(ttl, inner.timeout * 2, started) } else { None };
    let lease = match reused {
        Some(lease) => lease,
        None => ActiveLease::new(inner.grant_lease(ttl).await?, started),
    };
    // A pooled lease restarted too long ago is restarted with the enqueue.
    let restart = !lease.covers(started);
    let mut guard = LeaseGuard::new(inner, lease);
    let (id, ttl) = (guard.lease.id, guard.lease.ttl);
    let entry = inner.layout.entry(&req.key, id);
    let queue = inner.layout.queue(&req.key);
    let value = EntryValue { owner: req.owner.clone(), ttl, share: req.share_result };
    let put = Write::put(&entry, value.encode(), id);
    let try_once = req.wait.is_zero();
    // Into an empty queue: just the entry. Else a try-lock writes nothing,
    // and a waiter enqueues and reads the head and length of the queue.
    let mut txn = Txn::when([Cond::none_under(&queue)]).with(Branch::Then, put.clone());
    if !try_once {
        txn.write(Branch::Else, put);
    }
    let head = Head::read(&mut txn, Branch::Else, &queue);
    // The last two entries by create revision: ours, and the one just ahead.
    let last_two = (!try_once).then(|| {
        let last_two = Get::prefix(&queue).sorted(SortTarget::Create, SortOrder::Descend).limit(2).keys_only();
        txn.read(Branch::Else, last_two)
    });
    // Until the answer says otherwise, an entry may exist: undo by revoking.
    guard.written = true;
    let resp = if restart {
        let (alive, resp) = tokio::join!(guard.lease.keep_alive(inner), inner.write(&req.key, "enqueue", txn));
        if !alive? {
            guard.discard(); // ended in the pool: etcd deleted whatever was put on it
            return Ok(None);
        }
        resp?
    } else {
        inner.write(&req.key, "enqueue", txn).await?
    };
    let rev = resp.revision;
    let enqueued = !try_once || resp.succeeded;
    guard.written = enqueued;
    let (first, count) = if resp.succeeded { (None, 1) } else { head.of(&resp) };
    // Without a write the revision is the store's, not an entry's.
    let ours_rev = enqueued.then_some(rev);
    let Some(holder) = first.filter(|f| Some(f.create_revision) != ours_rev) else {
        // Ours is the lowest entry: granted, on a lease whose TTL began after `started`.
        return Ok(Some(granted(inner, req, entry, rev, rev, guard.into_lease(), started)));
    };
    let holder_value = EntryValue::decode(&holder.value);
    if holder_value.as_ref().is_some_and(|v| v.owner == req.owner) {
        // G5: the caller holds the key already. Move its entry to the new
        // lease (same create revision: same token) and drop ours.
        let token = rev_token(holder.create_revision);
        let moved = EntryValue { share: false, ..value.clone() }.encode();
        let mut txn = Txn::when(entry_is(&holder.key, token, holder.lease))
            .with(Branch::Then, Write::put(&holder.key, moved, id));
        if enqueued {
            txn.write(Branch::Then, Write::delete(&entry));
        }
        let resp = inner.write(&req.key, "refresh", txn).await?;
        if resp.succeeded {
            inner.revoke_later(holder.lease);
            let lease = guard.into_lease();
            let outcome =
                granted(inner, req, holder.key.clone(), holder.create_revision, resp.revision, lease, started);
            // The owner's own lease: never taken back if the reply is lost.
            let outcome = match outcome {
                AcquireOutcome::Acquired(g) => AcquireOutcome::Refreshed(g),
                other => other,
            };
            return Ok(Some(outcome));
        }
        if !enqueued {
            return Ok(None);
        }
        // The caller's old lease ended meanwhile: wait with the new entry.
    } else if try_once {
        inner.metrics.contended.inc();
        // Nothing was written: the guard returns the lease to the pool.
        let info = inspect::lock_info(inner, &req.key, Some(&holder), count).await?;
        return Ok(Some(AcquireOutcome::NotAcquired(info)));
    }
    // Waiters are the entries behind the holder, ours included.
    if count.saturating_sub(1) > inner.max_waiters {
        guard.revoke_now().await;
        return Err(CoreError::TooManyWaiters { key: req.key.clone(), limit: inner.max_waiters }.into());
    }
    // Each waiter is parked in this sidecar (its call, its watch): counted here.
    let Some(_slot) = inner.waiter_slots.take() else {
        guard.revoke_now().await;
        return Err(inner.waiter_slots.exhausted());
    };
    guard.waiting = true;
    // What the enqueue saw just ahead of the new entry (the first look).
    let ahead = last_two.map(|r| resp.kvs(r)).and_then(|kvs| match kvs {
        [ours, ahead, ..] if ours.create_revision == rev => {
            Some(Ahead::Entry(ahead.key.clone(), rev, ahead.key == holder.key))
        }
        _ => None,
    });
    let waiter =
        Waiter { key: &req.key, entry: &entry, rev, share: req.share_result, deadline: started + req.wait, started };
    match wait_turn(inner, &waiter, &mut guard.lease, ahead).await? {
        Turn::Granted { at, mod_rev } => Ok(Some(granted(inner, req, entry, rev, mod_rev, guard.into_lease(), at))),
        Turn::Shared(result) => {
            guard.revoke_now().await;
            inner.metrics.shared_results.inc();
            let current = inspect::get(inner, &req.key).await?;
            Ok(Some(AcquireOutcome::Shared { result: result.into(), current }))
        }
        Turn::TimedOut => {
            // Leave the queue before answering, so the answer's state is true.
            guard.revoke_now().await;
            inner.metrics.wait_timeouts.inc();
            Ok(Some(AcquireOutcome::NotAcquired(inspect::get(inner, &req.key).await?)))
        }
    }
}

/// Records a grant (for this sidecar's prompt expiry) and answers it.
fn granted(
    inner: &Arc<Inner>,
    req: &AcquireRequest,
    entry: Vec<u8>,
    create_rev: i64,
    mod_rev: i64,
    lease: ActiveLease,
    from: Time,
) -> AcquireOutcome {
    let token = rev_token(create_rev);
    let owner: Arc<str> = req.owner.as_str().into();
    let ttl = secs(lease.ttl);
    let held = Held { entry, lease: lease.id, ttl: lease.ttl, owner: owner.clone(), mod_rev, deadline: from + ttl };
    inner.local.record(inner, &req.key, token, held, Some(lease));
    inner.metrics.acquired.inc();
    AcquireOutcome::Acquired(Grant { key: req.key.as_str().into(), owner, token, ttl })
}

/// Owns an acquire's lease until it is granted ([`LeaseGuard::into_lease`]).
/// Dropped before that (the call went away, G6, or the acquire ended without
/// a grant), it revokes the lease, deleting the entry with it, off the reply
/// path; or, when no entry was written, returns the lease to the pool.
struct LeaseGuard<'a> {
    inner: &'a Arc<Inner>,
    lease: ActiveLease,
    armed: bool,
    /// Whether an entry may exist on the lease.
    written: bool,
    /// Whether the entry is queued (so that a drop counts as a cancelled waiter).
    waiting: bool,
}

impl<'a> LeaseGuard<'a> {
    fn new(inner: &'a Arc<Inner>, lease: ActiveLease) -> Self {
        LeaseGuard { inner, lease, armed: true, written: false, waiting: false }
    }

    /// Hands the lease over to its holder.
    fn into_lease(mut self) -> ActiveLease {
        self.armed = false;
        std::mem::replace(&mut self.lease, ActiveLease::none())
    }

    /// Forgets a lease that has ended.
    fn discard(&mut self) {
        self.armed = false;
    }

    /// Revokes the lease (and the entry with it) now.
    async fn revoke_now(&mut self) {
        if std::mem::replace(&mut self.armed, false) {
            if let Err(e) = self.inner.revoke(self.lease.id).await {
                tracing::debug!(lease = self.lease.id, "revoke failed, the lease will expire by its TTL: {e}");
            }
        }
    }
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if !std::mem::replace(&mut self.armed, false) {
            return;
        }
        if self.waiting {
            self.inner.metrics.waiters_cancelled.inc();
        }
        if self.written {
            self.inner.revoke_later(self.lease.id);
        } else {
            let lease = std::mem::replace(&mut self.lease, ActiveLease::none());
            self.inner.pool.put(self.inner, lease);
        }
    }
}

/// A queued entry.
struct Waiter<'a> {
    key: &'a str,
    entry: &'a [u8],
    /// The entry's create revision: its place in the queue and its token.
    rev: i64,
    share: bool,
    deadline: Time,
    /// When the acquire started: the lease's TTL began after it.
    started: Time,
}

/// How a wait ended.
enum Turn {
    /// Nobody is ahead and the waiter's lease was alive, its TTL restarted
    /// after `at`; its entry has mod revision `mod_rev`.
    Granted { at: Time, mod_rev: i64 },
    /// A holder released with a result this sharing waiter accepts.
    Shared(Vec<u8>),
    /// The wait timeout passed.
    TimedOut,
}

/// What is ahead of a waiter.
enum Ahead {
    /// Nobody: the waiter's turn, if its own entry (mod revision) is still there.
    Nobody(Option<i64>),
    /// This entry, read at this store revision; whether it was the head
    /// (then nobody else is ahead: entries never join ahead of others).
    Entry(Vec<u8>, i64, bool),
    /// A result released since the waiter queued (sharing waiters only).
    Result(Vec<u8>),
}

/// Waits until nobody is ahead, a result arrives, or the wait times out,
/// keeping the waiter's lease alive meanwhile.
///
/// When nobody is ahead, the waiter is granted only if the look found its own
/// entry, which proves its lease alive (etcd issue 11456), and the lease
/// covers a full TTL from the look: a look at the queue goes with a
/// keep-alive of the waiter's lease, sent after the look began, unless the
/// lease was restarted within the headroom before.
///
/// A waiter right behind the head (and not sharing, which must look for a
/// result first) is granted on the head's deletion after one conditional read
/// of its own entry ([`confirm_entry`]), never on local time alone: a lease
/// revoked (not expired) is invisible to this sidecar's clock. A keep-alive
/// goes with that read unless the lease was restarted within the headroom.
async fn wait_turn(
    inner: &Arc<Inner>,
    w: &Waiter<'_>,
    lease: &mut ActiveLease,
    mut known: Option<Ahead>,
) -> Result<Turn, BackendError> {
    let clock = inner.clock;
    let deadline = clock.instant(w.deadline);
    let mut closed = inner.closed.subscribe();
    if *closed.borrow_and_update() {
        return Err(BackendError::ShuttingDown);
    }
    let keep_alive_every = secs(lease.ttl) / 3;
    let mut next_keep_alive = clock.now() + keep_alive_every;
    let results = inner.layout.results(w.key);
    let mut results_watch = match w.share {
        true => Some(inner.watch(&results, true, w.rev + 1, Skip::Deletes).await?),
        false => None,
    };
    let mut first_look = true;
    loop {
        let at = if first_look { w.started } else { clock.now() };
        first_look = false;
        let (ahead, alive) = if let Some(ahead) = known.take() {
            (ahead, true)
        } else if lease.covers(at) {
            (predecessor(inner, w, &results).await?, true)
        } else {
            let (ahead, alive) = tokio::join!(predecessor(inner, w, &results), lease.keep_alive(inner));
            next_keep_alive = clock.now() + keep_alive_every;
            (ahead?, alive?)
        };
        let (ahead, read_at, head) = match ahead {
            Ahead::Result(r) => return Ok(Turn::Shared(r)),
            Ahead::Nobody(Some(mod_rev)) if alive => return Ok(Turn::Granted { at, mod_rev }),
            Ahead::Nobody(_) => return Err(lease_lost(w, lease)),
            Ahead::Entry(key, at, head) => (key, at, head),
        };
        if !alive {
            return Err(lease_lost(w, lease));
        }
        let mut watch = inner.watch(&ahead, false, read_at + 1, Skip::Puts).await?;
        loop {
            tokio::select! {
                msg = watch.message() => {
                    let resp = watch_message(inner, msg)?;
                    let gone = resp.events.iter().any(|e| e.r#type() == EventType::Delete);
                    if gone && head && !w.share {
                        let at = clock.now();
                        let confirmed = if lease.covers(at) {
                            confirm_entry(inner, w, lease.id).await?
                        } else {
                            let id = lease.id;
                            let (confirmed, alive) = tokio::join!(confirm_entry(inner, w, id), lease.keep_alive(inner));
                            let (confirmed, alive) = (confirmed?, alive?);
                            confirmed.filter(|_| alive)
                        };
                        return match confirmed {
                            Some(mod_rev) => Ok(Turn::Granted { at, mod_rev }),
                            None => Err(lease_lost(w, lease)),
                        };
                    }
                    if gone || resp.canceled {
                        break; // look again: the entry ahead is gone (or the watch ended)
                    }
                }
                msg = next_message(&mut results_watch) => {
                    let resp = watch_message(inner, msg)?;
                    let result = resp.events.into_iter().filter_map(|e| e.kv).find(|kv| kv.mod_revision > w.rev);
                    if let Some(kv) = result {
                        return Ok(Turn::Shared(kv.value));
                    }
                    if resp.canceled {
                        // Compacted away: the look in `predecessor` still finds results.
                        results_watch = None;
                    }
                }
                () = tokio::time::sleep_until(clock.instant(next_keep_alive)) => {
                    if !lease.keep_alive(inner).await? {
                        return Err(lease_lost(w, lease));
                    }
                    next_keep_alive = clock.now() + keep_alive_every;
                }
                () = tokio::time::sleep_until(deadline) => return Ok(Turn::TimedOut),
                _ = closed.changed() => return Err(BackendError::ShuttingDown),
            }
        }
    }
}

/// The next message of an optional watch (pending forever without one).
async fn next_message(watch: &mut Option<Watch>) -> Result<Option<WatchResponse>, CallError> {
    match watch {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

/// A watch message, or UNAVAILABLE when the watch broke (etcd went away).
fn watch_message(inner: &Inner, msg: Result<Option<WatchResponse>, CallError>) -> Result<WatchResponse, BackendError> {
    match msg {
        Ok(Some(resp)) => Ok(resp),
        Ok(None) => Err(inner.unavailable("watch", &"the watch stream ended")),
        Err(e) => Err(inner.unavailable("watch", &e)),
    }
}

/// One linearizable read of what is ahead of the waiter: the entry just ahead,
/// the waiter's own entry, and for a sharing waiter a result released since it queued.
async fn predecessor(inner: &Inner, w: &Waiter<'_>, results: &[u8]) -> Result<Ahead, BackendError> {
    let queue = inner.layout.queue(w.key);
    let mut txn = Txn::new();
    let just_ahead = Get::prefix(&queue)
        .created_until(w.rev - 1)
        .sorted(SortTarget::Create, SortOrder::Descend)
        .limit(1)
        .keys_only();
    let ahead = txn.read(Branch::Then, just_ahead);
    let own = txn.read(Branch::Then, Get::key(w.entry).keys_only());
    let head = txn.read(Branch::Then, first_entry(&queue));
    let result: Option<Read> =
        w.share.then(|| txn.read(Branch::Then, Get::prefix(results).modified_since(w.rev + 1).limit(1)));
    let resp = inner.txn("read the entry ahead", txn).await?;
    if let Some(kv) = result.and_then(|r| resp.first(r)) {
        return Ok(Ahead::Result(kv.value.clone()));
    }
    Ok(match resp.first(ahead) {
        Some(kv) => {
            let is_head = resp.first(head).is_some_and(|h| h.key == kv.key);
            Ahead::Entry(kv.key.clone(), resp.revision, is_head)
        }
        None => Ahead::Nobody(resp.first(own).filter(|kv| kv.create_revision == w.rev).map(|kv| kv.mod_revision)),
    })
}

/// Asks etcd whether the waiter's entry is still there on its lease `lease`,
/// in one linearizable read: the grant of a waiter right behind the head,
/// once the head is gone. The entry existing proves its lease alive (etcd
/// deletes a lease's keys the moment it ends: by TTL or by a revoke, which
/// local time cannot see) and, since entries never join ahead of others, that
/// it is now the lowest entry. Its mod revision, or `None` when it is gone.
async fn confirm_entry(inner: &Inner, w: &Waiter<'_>, lease: i64) -> Result<Option<i64>, BackendError> {
    // The get makes the transaction a linearizable read: etcd serves a
    // transaction without range operations from the member's local state.
    let mut txn = Txn::when(entry_is(w.entry, rev_token(w.rev), lease));
    let own = txn.read(Branch::Then, Get::key(w.entry).keys_only());
    let resp = inner.txn("confirm the grant", txn).await?;
    // Not there (the conditions failed): the branch with the read did not run.
    Ok(resp.first(own).map(|kv| kv.mod_revision))
}

/// A waiter whose lease ended while it waited: never granted.
fn lease_lost(w: &Waiter<'_>, lease: &ActiveLease) -> BackendError {
    BackendError::Unavailable {
        reason: format!(
            "the wait for {:?} lost its etcd lease (was etcd unreachable for longer than its {} s TTL?); nothing was granted",
            w.key, lease.ttl
        ),
    }
}
