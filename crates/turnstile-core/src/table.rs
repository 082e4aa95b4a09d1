//! [`LockTable`]: the state machine. Every operation takes `now`, changes the
//! table, and leaves [`Effect`]s for the host to carry out.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{lease_of, nanos, Entry, Holder, KeyStore, Waiter};
use crate::wheel::{TimerKind, Wheel, NIL};
use crate::{AcquireArgs, Acquired, CoreError, Counters, Effect, Lease, LockInfo, TableConfig, Time, WaiterId};

/// What [`LockTable::drain`] hands the host: effects to carry out and when to
/// tick next (the shape of raft-rs's `Ready`).
#[derive(Debug)]
pub struct Ready<W> {
    /// Effects produced since the last drain, oldest first.
    pub effects: Vec<Effect<W>>,
    /// Call [`LockTable::tick`] at this instant (`None`: nothing is scheduled).
    pub wake_by: Option<Time>,
}

/// The owner of a key's recovery hold ([`LockTable::hold_key_until`]): empty,
/// which no client can be (owners are 1–256 bytes), with token 0, which is
/// never issued.
pub const RECOVERY_OWNER: &str = "";

/// A waiter's request to queue: until when, and the host's payload for it.
#[derive(Debug)]
pub struct Wait<W> {
    /// Deadline of the wait; at that instant the waiter gets [`Effect::WaitTimedOut`].
    pub until: Time,
    /// Whatever the host needs to answer the waiter (e.g. a reply channel).
    pub payload: W,
}

/// One shard of the lock table: keys, leases, FIFO waiters and their timers.
///
/// `W` is the host's payload for a parked waiter; it comes back in the
/// [`Effect`] that answers the waiter. The table never reads a clock, never
/// blocks and never does I/O.
///
/// Keys live in a slab reached by handle (`store`); an ordered index maps
/// names to handles for the operations that name a key and for
/// [`LockTable::list`]. Timers carry handles, so a tick touches no index.
#[derive(Debug)]
pub struct LockTable<W> {
    store: KeyStore<W>,
    wheel: Wheel,
    counters: Arc<Counters>,
    config: TableConfig,
    effects: Vec<Effect<W>>,
    next_waiter: u64,
    /// After a crash: no grant before this instant (see [`LockTable::hold_grants_until`]).
    grants_resume_at: Option<Time>,
    /// Keys whose queue could not be served: grants were held back, or every
    /// lease allowed was in use. Served again when that changes. A handle
    /// swept and reused meanwhile only costs a look at another key's queue.
    pending: Vec<u32>,
    fired: Vec<u32>,
}

impl<W> LockTable<W> {
    /// An empty table whose timers start at `now`.
    pub fn new(config: TableConfig, counters: Arc<Counters>, now: Time) -> Self {
        LockTable {
            store: KeyStore::new(),
            wheel: Wheel::new(now),
            counters,
            config,
            effects: Vec::new(),
            next_waiter: 1,
            grants_resume_at: None,
            pending: Vec::new(),
            fired: Vec::new(),
        }
    }

    /// Takes the effects produced since the last call, oldest first.
    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect<W>> {
        self.effects.drain(..)
    }

    /// Everything the host must act on after one or more operations, in one
    /// value: the effects produced since the last drain, oldest first, and
    /// the instant by which it must call [`LockTable::tick`] next
    /// ([`LockTable::next_deadline`], O(1)). A host that wakes at `wake_by`
    /// after every drain never misses a deadline the table knows of, and
    /// derives none itself (a refresh to a shorter TTL, a new waiter, a
    /// grant all move it without an effect saying so).
    pub fn drain(&mut self) -> Ready<W> {
        Ready { effects: std::mem::take(&mut self.effects), wake_by: self.next_deadline() }
    }

    /// Grants nothing before `until`: try-locks get [`CoreError::Recovering`],
    /// waiters queue in FIFO order and are served from `until` on (by [`LockTable::tick`]).
    pub fn hold_grants_until(&mut self, until: Time) {
        self.grants_resume_at = Some(until);
    }

    /// Acquire `args.key` for `args.owner`: grant it, refresh the owner's own
    /// lease (G5), report it contended, or queue the caller when `wait` is given.
    pub fn acquire(&mut self, args: &AcquireArgs<'_>, wait: Option<Wait<W>>, now: Time) -> Result<Acquired, CoreError> {
        /// What the key looks like to this caller.
        enum Status {
            Free,
            OwnLease(u32),
            Busy { at: u32, held: bool, waiters: usize },
        }
        self.store.maybe_sweep();
        let found = self.store.find(args.key);
        if let Some(h) = found {
            self.settle(h, now);
        }
        let recovering = self.recovering(now);
        let status = match found.and_then(|h| Some((h, self.store.get(h)?))) {
            None => Status::Free,
            Some((h, e)) => match &e.holder {
                Some(x) if *x.owner == *args.owner => Status::OwnLease(h),
                Some(_) => Status::Busy { at: h, held: true, waiters: e.waiter_count() },
                None if e.waiter_count() > 0 => Status::Busy { at: h, held: false, waiters: e.waiter_count() },
                None => Status::Free,
            },
        };
        match (status, wait) {
            (Status::OwnLease(h), _) => Ok(Acquired::Refreshed(self.refresh(h, Some(nanos(args.ttl)), now, args.key))),
            (Status::Busy { waiters, .. }, Some(_)) if waiters >= self.config.max_waiters_per_key => {
                Err(CoreError::TooManyWaiters { key: args.key.to_owned(), limit: self.config.max_waiters_per_key })
            }
            (Status::Busy { at, .. }, Some(wait)) => Ok(Acquired::Queued(self.enqueue(Some(at), args, wait))),
            (Status::Busy { held: false, .. } | Status::Free, None) if recovering.is_some() => {
                Err(CoreError::Recovering { remaining: recovering.unwrap_or_default() })
            }
            (Status::Busy { at, .. }, None) => match self.recovery_hold_left(at, now) {
                Some(remaining) => Err(CoreError::Recovering { remaining }),
                None => Ok(Acquired::Contended(self.info(at, args.key, now))),
            },
            (Status::Free, Some(wait)) if recovering.is_some() => Ok(Acquired::Queued(self.enqueue(found, args, wait))),
            (Status::Free, _) => {
                if !self.counters.try_add_lease(self.config.max_leases) {
                    return Err(CoreError::TooManyLeases { limit: self.config.max_leases });
                }
                let h = found.unwrap_or_else(|| self.store.insert(args.key));
                let ttl = nanos(args.ttl);
                let holder = Holder {
                    owner: Arc::from(args.owner),
                    token: self.counters.issue(),
                    ttl,
                    expires_at: now + Duration::from_nanos(ttl),
                    granted_at: now,
                };
                if let Some(e) = self.store.get_mut(h) {
                    arm(&mut self.wheel, e, h, holder.expires_at);
                    e.holder = Some(holder);
                }
                self.store.reconcile(h);
                Ok(Acquired::Granted(self.lease(h, args.key)))
            }
        }
    }

    /// Extends the lease on `key` with fencing token `token` to `now + ttl`
    /// (`None`: the TTL it was granted with). A stale token changes nothing (G7).
    pub fn renew(&mut self, key: &str, token: u64, ttl: Option<Duration>, now: Time) -> Result<Lease, CoreError> {
        self.store.maybe_sweep();
        let not_found = || CoreError::LeaseNotFound { key: key.to_owned(), token };
        let Some(h) = self.store.find(key) else { return Err(not_found()) };
        self.settle(h, now);
        if token == 0 || self.store.get(h).and_then(|e| e.holder.as_ref()).is_none_or(|x| x.token != token) {
            return Err(not_found());
        }
        Ok(self.refresh(h, ttl.map(nanos), now, key))
    }

    /// Ends the lease on `key` with fencing token `token`; returns whether it
    /// was live. With a `result`, every `share_result` waiter queued now is
    /// answered with it; then the next remaining waiter is granted.
    pub fn release(&mut self, key: &str, token: u64, result: Option<Arc<[u8]>>, now: Time) -> bool {
        self.store.maybe_sweep();
        let Some(h) = self.store.find(key) else { return false };
        self.settle(h, now);
        let Some(e) = self.store.get_mut(h) else { return false };
        // Token 0 is a recovery hold's: no client can end it.
        if token == 0 || e.holder.as_ref().is_none_or(|x| x.token != token) {
            return false;
        }
        e.holder = None;
        self.counters.remove_lease();
        if let (Some(result), Some(waiters)) = (result, e.waiters.as_mut()) {
            let mut kept = VecDeque::with_capacity(waiters.len());
            for w in waiters.drain(..) {
                if w.share_result {
                    self.effects.push(Effect::SharedResult { waiter: w.payload, result: result.clone() });
                } else {
                    kept.push_back(w);
                }
            }
            **waiters = kept;
        }
        self.grant_next(h, now);
        self.serve_pending(now);
        true
    }

    /// Ends the live lease on `key` whoever holds it (an operator's force
    /// release), or only the one with fencing token `token` when given.
    /// Exactly as if it had expired: the next waiter in FIFO order is
    /// granted, and no waiter is handed a result. A recovery hold (token 0)
    /// is never ended. Returns whether a lease was ended, and the key's
    /// state just before (the lease ended, when one was).
    pub fn force_release(&mut self, key: &str, token: Option<u64>, now: Time) -> (bool, LockInfo) {
        self.store.maybe_sweep();
        let Some(h) = self.store.find(key) else {
            return (false, LockInfo { key: Arc::from(key), holder: None, waiters: 0 });
        };
        self.settle(h, now);
        let previous = self.info(h, key, now);
        let ends = previous.holder.as_ref().is_some_and(|x| x.token != 0 && token.is_none_or(|t| t == x.token));
        if !ends {
            return (false, previous);
        }
        if let Some(e) = self.store.get_mut(h) {
            if e.holder.take().is_some() {
                self.counters.remove_lease();
            }
        }
        // No Effect::Expired: the host counts a force release itself.
        self.grant_next(h, now);
        self.serve_pending(now);
        (true, previous)
    }

    /// Removes a queued waiter (its call was cancelled or its client went
    /// away). Returns false when it is no longer queued: it was answered
    /// already, and the host must look at that answer (G6).
    pub fn cancel(&mut self, key: &str, waiter: WaiterId, now: Time) -> bool {
        self.store.maybe_sweep();
        let Some(h) = self.store.find(key) else { return false };
        let Some(waiters) = self.store.get_mut(h).and_then(|e| e.waiters.as_mut()) else { return false };
        let Some(pos) = waiters.iter().position(|w| w.id == waiter.0) else { return false };
        waiters.remove(pos);
        // The front may have changed only if no holder exists (grants held back).
        self.grant_next(h, now);
        true
    }

    /// Advances time: expires leases, times out waiters, and resumes grants
    /// held back after a crash. Call at (or after) [`LockTable::next_deadline`].
    pub fn tick(&mut self, now: Time) {
        if self.grants_resume_at.is_some_and(|t| t <= now) {
            self.grants_resume_at = None;
        }
        self.serve_pending(now);
        let mut fired = std::mem::take(&mut self.fired);
        loop {
            let more = self.wheel.advance_slot(now, &mut fired);
            for node in fired.drain(..) {
                self.fire(node, now);
            }
            if !more {
                break;
            }
        }
        self.fired = fired;
        self.store.maybe_sweep();
    }

    /// The instant at which the host must next call [`LockTable::tick`]: never
    /// later than any lease expiry, wait deadline or end of the recovery hold,
    /// and never so early that a tick there makes no progress. O(1): the
    /// timing wheel keeps it at every insert.
    pub fn next_deadline(&self) -> Option<Time> {
        match (self.wheel.next_deadline(), self.grants_resume_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The state of `key` at `now`. An expired lease whose timer has not run
    /// yet is reported as not held.
    pub fn get(&self, key: &str, now: Time) -> LockInfo {
        match self.store.find(key) {
            Some(h) => self.info(h, key, now),
            None => LockInfo { key: Arc::from(key), holder: None, waiters: 0 },
        }
    }

    /// The live lease on `key` at `now`, if any: what a renew or a refresh
    /// would extend. Lets a host check an extension (is it durable?) before
    /// applying it, so a failure changes nothing.
    pub fn holder_lease(&self, key: &str, now: Time) -> Option<Lease> {
        let e = self.store.get(self.store.find(key)?)?;
        e.holder.as_ref().filter(|h| h.expires_at > now).map(|h| lease_of(&e.key, h))
    }

    /// Up to `limit` keys starting with `prefix` and greater than `after`, in
    /// ascending order, that are held or have waiters at `now`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize, now: Time) -> Vec<LockInfo> {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        self.store
            .range(start)
            .take_while(|e| e.key.starts_with(prefix))
            .map(|e| e.info(now))
            .filter(|i| i.holder.is_some() || i.waiters > 0)
            .take(limit)
            .collect()
    }

    /// Every live lease at `now`, for a snapshot.
    pub fn leases(&self, now: Time) -> impl Iterator<Item = Lease> + '_ {
        self.store
            .entries()
            .filter_map(move |e| e.holder.as_ref().filter(|h| h.expires_at > now).map(|h| lease_of(&e.key, h)))
    }

    /// Puts back a lease from a snapshot. Refused (returns false) when the
    /// key is held already or the lease has expired by `now`.
    pub fn restore(&mut self, lease: &Lease, now: Time) -> bool {
        self.store.maybe_sweep();
        let found = self.store.find(&lease.key);
        if lease.expires_at <= now || found.and_then(|h| self.store.get(h)).is_some_and(|e| e.holder.is_some()) {
            return false;
        }
        self.counters.observe(lease.token);
        self.counters.add_lease();
        let h = found.unwrap_or_else(|| self.store.insert(&lease.key));
        let holder = Holder {
            owner: lease.owner.clone(),
            token: lease.token,
            ttl: nanos(lease.ttl),
            expires_at: lease.expires_at,
            granted_at: lease.granted_at.min(now),
        };
        if let Some(e) = self.store.get_mut(h) {
            arm(&mut self.wheel, e, h, holder.expires_at);
            e.holder = Some(holder);
        }
        self.store.reconcile(h);
        true
    }

    /// Grants nothing on `key` before `until` (after a crash, a lease granted
    /// before it may live until then): the key is held by a placeholder lease
    /// with the [`RECOVERY_OWNER`] and token 0, which try-locks meet as
    /// [`CoreError::Recovering`], waiters queue behind and which expires at
    /// `until` like any lease (G3 machinery, timers and all). It shows in
    /// [`LockTable::get`], [`LockTable::list`] and [`LockTable::leases`], so a
    /// snapshot keeps it across a stop. Refused (false) when the key is held.
    pub fn hold_key_until(&mut self, key: &str, until: Time, now: Time) -> bool {
        let ttl = until.saturating_since(now);
        self.restore(
            &Lease {
                key: Arc::from(key),
                owner: Arc::from(RECOVERY_OWNER),
                token: 0,
                ttl,
                expires_at: until,
                granted_at: now,
            },
            now,
        )
    }

    /// Answers every queued waiter with [`Effect::Closed`] (shutdown). Leases stay.
    pub fn close_waiters(&mut self) {
        for h in 0..self.store.handle_end() {
            if let Some(waiters) = self.store.get_mut(h).and_then(|e| e.waiters.take()) {
                self.effects.extend(waiters.into_iter().map(|w| Effect::Closed { waiter: w.payload }));
                self.store.reconcile(h);
            }
        }
        self.store.maybe_sweep();
    }

    /// Keys present (held or with waiters, possibly expired but not yet ticked).
    pub fn key_count(&self) -> usize {
        self.store.live()
    }

    /// Timers scheduled (a measure of timer-structure load).
    pub fn timer_count(&self) -> usize {
        self.wheel.len()
    }

    // ---- internals ----

    /// The time left on the recovery hold of key `h`, if its holder is one.
    fn recovery_hold_left(&self, h: u32, now: Time) -> Option<Duration> {
        let x = self.store.get(h)?.holder.as_ref()?;
        (x.token == 0 && x.expires_at > now).then(|| x.expires_at.saturating_since(now))
    }

    fn recovering(&self, now: Time) -> Option<Duration> {
        self.grants_resume_at.filter(|t| *t > now).map(|t| t.saturating_since(now))
    }

    fn info(&self, h: u32, key: &str, now: Time) -> LockInfo {
        match self.store.get(h) {
            Some(e) => e.info(now),
            None => LockInfo { key: Arc::from(key), holder: None, waiters: 0 },
        }
    }

    /// The lease of `h`'s holder; callers only ask right after giving it one.
    fn lease(&self, h: u32, key: &str) -> Lease {
        self.store.get(h).and_then(Entry::lease).unwrap_or_else(|| unreachable_lease(key))
    }

    /// Runs the holder of `h` for `ttl` (or its own) from `now`; returns its lease.
    fn refresh(&mut self, h: u32, ttl: Option<u64>, now: Time, key: &str) -> Lease {
        if let Some(e) = self.store.get_mut(h) {
            if let Some(x) = e.holder.as_mut() {
                x.ttl = ttl.unwrap_or(x.ttl);
                x.expires_at = now + Duration::from_nanos(x.ttl);
                let at = x.expires_at;
                arm(&mut self.wheel, e, h, at);
            }
        }
        self.lease(h, key)
    }

    fn enqueue(&mut self, found: Option<u32>, args: &AcquireArgs<'_>, wait: Wait<W>) -> WaiterId {
        let id = self.next_waiter;
        self.next_waiter += 1;
        let h = found.unwrap_or_else(|| self.store.insert(args.key));
        if let Some(e) = self.store.get_mut(h) {
            e.waiters.get_or_insert_with(Default::default).push_back(Waiter {
                id,
                owner: Arc::from(args.owner),
                ttl: nanos(args.ttl),
                until: wait.until,
                share_result: args.share_result,
                payload: wait.payload,
            });
            if self.grants_resume_at.is_some() && e.holder.is_none() {
                note_pending(&mut self.pending, h);
            }
        }
        self.store.reconcile(h);
        self.wheel.insert(wait.until, h, TimerKind::Waiter(id));
        WaiterId(id)
    }

    /// Handles one fired timer node: frees it, or puts it back in the wheel
    /// for a lease renewed since it was set.
    fn fire(&mut self, node: u32, now: Time) {
        let (h, kind) = self.wheel.target(node);
        match kind {
            TimerKind::Waiter(id) => {
                self.wheel.free(node);
                self.time_out_waiter(h, id, now);
            }
            TimerKind::Lease => {
                let Some(e) = self.store.get_mut(h).filter(|e| e.timer == node) else {
                    // The key was swept, or was given an earlier timer since.
                    self.wheel.free(node);
                    return;
                };
                match e.holder.as_ref().map(|x| x.expires_at) {
                    Some(at) if at > now => self.wheel.reinsert(node, at),
                    due => {
                        e.timer = NIL;
                        self.wheel.free(node);
                        if due.is_some() {
                            self.expire_holder(h, now);
                        }
                    }
                }
            }
        }
    }

    /// Ends a holder whose lease ran out at or before `now`, then serves the queue.
    fn settle(&mut self, h: u32, now: Time) {
        if self.store.get(h).and_then(|e| e.holder.as_ref()).is_some_and(|x| x.expires_at <= now) {
            self.expire_holder(h, now);
        }
    }

    fn expire_holder(&mut self, h: u32, now: Time) {
        let Some(e) = self.store.get_mut(h) else { return };
        if let Some(x) = e.holder.take() {
            self.counters.remove_lease();
            let lease = lease_of(&e.key, &x);
            self.effects.push(Effect::Expired { lease });
        }
        self.grant_next(h, now);
        self.serve_pending(now);
    }

    /// Serves the keys left in `pending`, oldest first, while grants are
    /// allowed and leases are available. A key still blocked goes back.
    fn serve_pending(&mut self, now: Time) {
        if self.pending.is_empty()
            || self.recovering(now).is_some()
            || self.counters.held_leases() >= self.config.max_leases
        {
            return;
        }
        let mut keys = std::mem::take(&mut self.pending).into_iter();
        for h in keys.by_ref() {
            if self.counters.held_leases() >= self.config.max_leases {
                self.pending.push(h);
                break;
            }
            self.grant_next(h, now);
        }
        self.pending.extend(keys);
    }

    fn time_out_waiter(&mut self, h: u32, id: u64, now: Time) {
        let Some(e) = self.store.get_mut(h) else { return };
        let Some(waiters) = e.waiters.as_mut() else { return };
        let Some(pos) = waiters.iter().position(|w| w.id == id && w.until <= now) else { return };
        if let Some(w) = waiters.remove(pos) {
            let current = e.info(now);
            self.effects.push(Effect::WaitTimedOut { waiter: w.payload, current });
        }
        self.grant_next(h, now);
    }

    /// Serves the queue of a key that has no holder: waiters past their
    /// deadline time out, the first live one is granted. A queue that cannot
    /// be served now (grants held back, or no lease available) is noted in
    /// `pending`. A key left with nothing becomes a tombstone.
    fn grant_next(&mut self, h: u32, now: Time) {
        let recovering = self.recovering(now).is_some();
        let Some(e) = self.store.get_mut(h) else { return };
        if recovering {
            if e.holder.is_none() && e.waiter_count() > 0 {
                note_pending(&mut self.pending, h);
            }
        } else {
            while e.holder.is_none() {
                let Some(w) = e.waiters.as_mut().and_then(|q| q.pop_front()) else { break };
                if w.until <= now {
                    let current = e.info(now);
                    self.effects.push(Effect::WaitTimedOut { waiter: w.payload, current });
                    continue;
                }
                if !self.counters.try_add_lease(self.config.max_leases) {
                    // Leave it queued; it times out unless a lease frees first.
                    if let Some(q) = e.waiters.as_mut() {
                        q.push_front(w);
                    }
                    note_pending(&mut self.pending, h);
                    break;
                }
                let holder = Holder {
                    owner: w.owner,
                    token: self.counters.issue(),
                    ttl: w.ttl,
                    expires_at: now + Duration::from_nanos(w.ttl),
                    granted_at: now,
                };
                arm(&mut self.wheel, e, h, holder.expires_at);
                let lease = lease_of(&e.key, &holder);
                e.holder = Some(holder);
                self.effects.push(Effect::Granted { waiter: w.payload, lease });
            }
        }
        if e.waiters.as_ref().is_some_and(|q| q.is_empty()) {
            e.waiters = None;
        }
        self.store.reconcile(h);
    }
}

/// Notes key `h` as waiting to be served. Every enqueue, cancel and timeout
/// while grants are held back notes its key again, so duplicates are dropped
/// whenever the list doubles: it stays within twice the keys it names, at an
/// amortised O(log n) per note.
fn note_pending(pending: &mut Vec<u32>, h: u32) {
    pending.push(h);
    if pending.len() >= 64 && pending.len().is_power_of_two() {
        pending.sort_unstable();
        pending.dedup();
    }
}

/// Makes sure a lease timer of key `h` is due no later than `at`: keeps the
/// one it has if so (it fires early and is put back), else sets a new one.
fn arm<W>(wheel: &mut Wheel, e: &mut Entry<W>, h: u32, at: Time) {
    if wheel.at(e.timer).is_none_or(|t| t > at) {
        e.timer = wheel.insert(at, h, TimerKind::Lease);
    }
}

/// Callers only ask for the lease of a key they just gave a holder; should
/// that ever not hold, answer with an already-expired lease rather than panic.
fn unreachable_lease(key: &str) -> Lease {
    debug_assert!(false, "lease asked for a key without holder: {key}");
    Lease {
        key: Arc::from(key),
        owner: Arc::from(""),
        token: 0,
        ttl: Duration::ZERO,
        expires_at: Time::ZERO,
        granted_at: Time::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::{note_pending, LockTable, Wait};
    use crate::{AcquireArgs, Acquired, Counters, TableConfig, Time};

    /// One step a host can take.
    #[derive(Debug, Clone)]
    enum Op {
        Acquire { key: u8, owner: u8, ttl_ms: u64, wait_ms: u64 },
        Renew { key: u8, ttl_ms: Option<u64> },
        Release { key: u8 },
        Cancel { nth: usize },
        Hold { ms: u64 },
        Advance { ms: u64 },
        TickAtWake,
    }

    fn op() -> impl Strategy<Value = Op> {
        // TTLs and waits span less than, and more than, one wheel revolution (4.1 s).
        let ms = prop_oneof![1u64..50, 50u64..2_000, 2_000u64..20_000];
        prop_oneof![
            4 => (0u8..4, 0u8..3, ms.clone(), prop_oneof![Just(0u64), 1u64..10_000])
                .prop_map(|(key, owner, ttl_ms, wait_ms)| Op::Acquire { key, owner, ttl_ms, wait_ms }),
            2 => (0u8..4, proptest::option::of(ms.clone())).prop_map(|(key, ttl_ms)| Op::Renew { key, ttl_ms }),
            2 => (0u8..4).prop_map(|key| Op::Release { key }),
            1 => (0usize..8).prop_map(|nth| Op::Cancel { nth }),
            1 => (1u64..5_000).prop_map(|ms| Op::Hold { ms }),
            2 => ms.prop_map(|ms| Op::Advance { ms }),
            3 => Just(Op::TickAtWake),
        ]
    }

    proptest! {
        /// The host's wake time, taken from `drain()` after every operation,
        /// equals the table's earliest timer (a full scan of the wheel, and
        /// the recovery hold), and the table reaches it without re-deriving
        /// deadlines from effects: a refresh to a shorter TTL moves it too.
        #[test]
        fn the_hosts_wake_time_is_the_tables_earliest_timer(ops in proptest::collection::vec(op(), 1..120)) {
            let mut now = Time::from_millis(1);
            let mut t: LockTable<u64> = LockTable::new(TableConfig::default(), Arc::new(Counters::new(1)), now);
            let mut tokens: Vec<Option<u64>> = vec![None; 4];
            let mut queued: Vec<(String, crate::WaiterId)> = Vec::new();
            let mut host_wake = None;
            for op in ops {
                let key = |k: u8| format!("k{k}");
                match op {
                    Op::Acquire { key: k, owner, ttl_ms, wait_ms } => {
                        let name = key(k);
                        let args = AcquireArgs { key: &name, owner: &format!("o{owner}"), ttl: Duration::from_millis(ttl_ms), share_result: false };
                        let wait = (wait_ms > 0).then(|| Wait { until: now + Duration::from_millis(wait_ms), payload: 0 });
                        match t.acquire(&args, wait, now) {
                            Ok(Acquired::Granted(l) | Acquired::Refreshed(l)) => tokens[k as usize] = Some(l.token),
                            Ok(Acquired::Queued(id)) => queued.push((name, id)),
                            _ => {}
                        }
                    }
                    Op::Renew { key: k, ttl_ms } => {
                        if let Some(token) = tokens[k as usize] {
                            let _ = t.renew(&key(k), token, ttl_ms.map(Duration::from_millis), now);
                        }
                    }
                    Op::Release { key: k } => {
                        if let Some(token) = tokens[k as usize].take() {
                            t.release(&key(k), token, None, now);
                        }
                    }
                    Op::Cancel { nth } => {
                        if nth < queued.len() {
                            let (k, id) = queued.remove(nth);
                            t.cancel(&k, id, now);
                        }
                    }
                    Op::Hold { ms } => t.hold_grants_until(now + Duration::from_millis(ms)),
                    Op::Advance { ms } => now = now + Duration::from_millis(ms),
                    Op::TickAtWake => {
                        now = host_wake.map_or(now, |w: Time| w.max(now));
                        t.tick(now);
                    }
                }
                let ready = t.drain();
                for e in ready.effects {
                    if let crate::Effect::Granted { lease, .. } = e {
                        let k: usize = lease.key[1..].parse().expect("k<n>");
                        tokens[k] = Some(lease.token);
                    }
                }
                host_wake = ready.wake_by;
                let scanned = match (t.wheel.scan_deadline(), t.grants_resume_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                prop_assert_eq!(host_wake, scanned, "host wake vs the wheel's earliest timer at {:?}", now);
            }
        }
    }

    /// A force release ends the lease as an expiry would: the next waiter
    /// (a sharing one too) is granted the lock with a greater token, no one is
    /// handed a result, the old holder's renew is NotFound and its release a
    /// no-op; a wrong token, a free key and a recovery hold are left alone.
    #[test]
    fn a_force_release_is_an_expiry_not_a_release_with_result() {
        let now = Time::from_millis(1);
        let mut t: LockTable<u64> = LockTable::new(TableConfig::default(), Arc::new(Counters::new(1)), now);
        let ttl = Duration::from_secs(30);
        let args = |owner, share_result| AcquireArgs { key: "k", owner, ttl, share_result };
        let Ok(Acquired::Granted(held)) = t.acquire(&args("a", false), None, now) else { panic!("granted") };
        let until = now + Duration::from_secs(10);
        assert!(matches!(t.acquire(&args("b", true), Some(Wait { until, payload: 2 }), now), Ok(Acquired::Queued(_))));
        assert!(matches!(t.acquire(&args("c", false), Some(Wait { until, payload: 3 }), now), Ok(Acquired::Queued(_))));
        assert!(!t.force_release("k", Some(held.token + 1), now).0, "another token: left alone");
        assert!(t.drain().effects.is_empty());
        let (released, previous) = t.force_release("k", None, now);
        assert!(released);
        let before = previous.holder.expect("the ended lease");
        assert_eq!((&*before.owner, before.token, previous.waiters), ("a", held.token, 2));
        let effects = t.drain().effects;
        assert_eq!(effects.len(), 1, "{effects:?}");
        match &effects[0] {
            crate::Effect::Granted { waiter: 2, lease } => assert!(lease.token > held.token),
            other => panic!("the sharing waiter is granted the lock: {other:?}"),
        }
        assert!(matches!(t.renew("k", held.token, None, now), Err(crate::CoreError::LeaseNotFound { .. })));
        assert!(!t.release("k", held.token, None, now));
        assert_eq!(t.get("k", now).holder.map(|h| h.owner), Some(Arc::from("b")));
        assert!(!t.force_release("free", None, now).0);
        assert!(t.hold_key_until("held-back", now + ttl, now));
        let (released, previous) = t.force_release("held-back", None, now);
        assert!(!released && previous.holder.is_some_and(|h| h.token == 0), "a recovery hold stays");
    }

    #[test]
    fn pending_keys_noted_again_and_again_stay_bounded() {
        let mut pending = Vec::new();
        for i in 0..100_000u32 {
            note_pending(&mut pending, i % 10);
        }
        assert!(pending.len() < 128, "{} entries for 10 keys", pending.len());
        pending.sort_unstable();
        pending.dedup();
        assert_eq!(pending, (0..10).collect::<Vec<_>>(), "no key is lost");
    }
}
