//! [`LockTable`]: the state machine. Every operation takes `now`, changes the
//! table, and leaves [`Effect`]s for the host to carry out.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::wheel::{Timer, TimerKind, Wheel};
use crate::{AcquireArgs, Acquired, CoreError, Effect, HolderInfo, Lease, LockInfo, Time, WaiterId};

/// Limits one table enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    /// Maximum queued waiters per key; more is [`CoreError::TooManyWaiters`].
    pub max_waiters_per_key: usize,
    /// Maximum leases held at once across every table sharing the same
    /// [`Counters`]; more is [`CoreError::TooManyLeases`].
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
    fn issue(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes sure the next token issued is above `token` (after a restore).
    fn observe(&self, token: u64) {
        self.next_token.fetch_max(token.saturating_add(1), Ordering::Relaxed);
    }
}

/// A waiter's request to queue: until when, and the host's payload for it.
#[derive(Debug)]
pub struct Wait<W> {
    /// Deadline of the wait; at that instant the waiter gets [`Effect::WaitTimedOut`].
    pub until: Time,
    /// Whatever the host needs to answer the waiter (e.g. a reply channel).
    pub payload: W,
}

#[derive(Debug)]
struct Holder {
    owner: Arc<str>,
    token: u64,
    ttl: Duration,
    expires_at: Time,
}

#[derive(Debug)]
struct Waiter<W> {
    id: u64,
    owner: Arc<str>,
    ttl: Duration,
    until: Time,
    share_result: bool,
    payload: W,
}

#[derive(Debug)]
struct KeyState<W> {
    holder: Option<Holder>,
    /// Boxed so that a key without waiters (the common case) costs one word.
    #[allow(clippy::box_collection, reason = "one word instead of four for every key without waiters")]
    waiters: Option<Box<VecDeque<Waiter<W>>>>,
}

impl<W> KeyState<W> {
    fn waiter_count(&self) -> usize {
        self.waiters.as_ref().map_or(0, |w| w.len())
    }

    fn is_empty(&self) -> bool {
        self.holder.is_none() && self.waiter_count() == 0
    }

    fn info(&self, key: &Arc<str>, now: Time) -> LockInfo {
        LockInfo {
            key: key.clone(),
            holder: self.holder.as_ref().filter(|h| h.expires_at > now).map(|h| HolderInfo {
                owner: h.owner.clone(),
                token: h.token,
                expires_in: h.expires_at.saturating_since(now),
            }),
            waiters: u32::try_from(self.waiter_count()).unwrap_or(u32::MAX),
        }
    }
}

fn lease_of(key: &Arc<str>, h: &Holder) -> Lease {
    Lease { key: key.clone(), owner: h.owner.clone(), token: h.token, ttl: h.ttl, expires_at: h.expires_at }
}

/// One shard of the lock table: keys, leases, FIFO waiters and their timers.
///
/// `W` is the host's payload for a parked waiter; it comes back in the
/// [`Effect`] that answers the waiter. The table never reads a clock, never
/// blocks and never does I/O.
#[derive(Debug)]
pub struct LockTable<W> {
    keys: BTreeMap<Arc<str>, KeyState<W>>,
    wheel: Wheel,
    counters: Arc<Counters>,
    config: TableConfig,
    effects: Vec<Effect<W>>,
    next_waiter: u64,
    /// After a crash: no grant before this instant (see [`LockTable::hold_grants_until`]).
    grants_resume_at: Option<Time>,
    /// Keys whose queue could not be served: grants were held back, or every
    /// lease allowed was in use. Served again when that changes.
    pending: Vec<Arc<str>>,
    fired: Vec<Timer>,
}

impl<W> LockTable<W> {
    /// An empty table whose timers start at `now`.
    pub fn new(config: TableConfig, counters: Arc<Counters>, now: Time) -> Self {
        LockTable {
            keys: BTreeMap::new(),
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
            OwnLease,
            Busy { held: bool, waiters: usize },
        }
        self.settle(args.key, now);
        let recovering = self.recovering(now);
        let status = match self.keys.get(args.key) {
            None => Status::Free,
            Some(s) => match &s.holder {
                Some(h) if *h.owner == *args.owner => Status::OwnLease,
                Some(_) => Status::Busy { held: true, waiters: s.waiter_count() },
                None if s.waiter_count() > 0 => Status::Busy { held: false, waiters: s.waiter_count() },
                None => Status::Free,
            },
        };
        match (status, wait) {
            (Status::OwnLease, _) => {
                let key = self.key_arc(args.key);
                if let Some(h) = self.keys.get_mut(args.key).and_then(|s| s.holder.as_mut()) {
                    h.ttl = args.ttl;
                    h.expires_at = now + args.ttl;
                }
                Ok(Acquired::Granted(self.push_lease_timer_for(&key)))
            }
            (Status::Busy { waiters, .. }, Some(_)) if waiters >= self.config.max_waiters_per_key => {
                Err(CoreError::TooManyWaiters { key: args.key.to_owned(), limit: self.config.max_waiters_per_key })
            }
            (Status::Busy { .. }, Some(wait)) => Ok(Acquired::Queued(self.enqueue(args, wait))),
            (Status::Busy { held: false, .. } | Status::Free, None) if recovering.is_some() => {
                Err(CoreError::Recovering { remaining: recovering.unwrap_or_default() })
            }
            (Status::Busy { .. }, None) => Ok(Acquired::Contended(self.get(args.key, now))),
            (Status::Free, Some(wait)) if recovering.is_some() => Ok(Acquired::Queued(self.enqueue(args, wait))),
            (Status::Free, _) => {
                if self.counters.held_leases() >= self.config.max_leases {
                    return Err(CoreError::TooManyLeases { limit: self.config.max_leases });
                }
                let key = self.key_arc(args.key);
                let holder = self.new_holder(Arc::from(args.owner), args.ttl, now);
                self.keys.entry(key.clone()).or_insert(KeyState { holder: None, waiters: None }).holder = Some(holder);
                Ok(Acquired::Granted(self.push_lease_timer_for(&key)))
            }
        }
    }

    /// Extends the lease on `key` with fencing token `token` to `now + ttl`
    /// (`None`: the TTL it was granted with). A stale token changes nothing (G7).
    pub fn renew(&mut self, key: &str, token: u64, ttl: Option<Duration>, now: Time) -> Result<Lease, CoreError> {
        self.settle(key, now);
        let not_found = || CoreError::LeaseNotFound { key: key.to_owned(), token };
        let Some((k, state)) = self.keys.get_key_value(key) else { return Err(not_found()) };
        if state.holder.as_ref().is_none_or(|h| h.token != token) {
            return Err(not_found());
        }
        let k = k.clone();
        if let Some(h) = self.keys.get_mut(key).and_then(|s| s.holder.as_mut()) {
            h.ttl = ttl.unwrap_or(h.ttl);
            h.expires_at = now + h.ttl;
        }
        Ok(self.push_lease_timer_for(&k))
    }

    /// Ends the lease on `key` with fencing token `token`; returns whether it
    /// was live. With a `result`, every `share_result` waiter queued now is
    /// answered with it; then the next remaining waiter is granted.
    pub fn release(&mut self, key: &str, token: u64, result: Option<Arc<[u8]>>, now: Time) -> bool {
        self.settle(key, now);
        let Some(state) = self.keys.get_mut(key) else { return false };
        if state.holder.as_ref().is_none_or(|h| h.token != token) {
            return false;
        }
        state.holder = None;
        self.counters.leases.fetch_sub(1, Ordering::Relaxed);
        if let (Some(result), Some(waiters)) = (result, state.waiters.as_mut()) {
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
        let key = self.key_arc(key);
        self.grant_next(&key, now);
        self.serve_pending(now);
        true
    }

    /// Removes a queued waiter (its call was cancelled or its client went
    /// away). Returns false when it is no longer queued: it was answered
    /// already, and the host must look at that answer (G6).
    pub fn cancel(&mut self, key: &str, waiter: WaiterId, now: Time) -> bool {
        let Some(state) = self.keys.get_mut(key) else { return false };
        let Some(waiters) = state.waiters.as_mut() else { return false };
        let Some(pos) = waiters.iter().position(|w| w.id == waiter.0) else { return false };
        waiters.remove(pos);
        let key = self.key_arc(key);
        // The front may have changed only if no holder exists (grants held back).
        self.grant_next(&key, now);
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
        self.wheel.advance(now, &mut fired);
        for timer in fired.drain(..) {
            match timer.kind {
                TimerKind::Lease(token) => {
                    let due = self
                        .keys
                        .get(&timer.key)
                        .and_then(|s| s.holder.as_ref())
                        .is_some_and(|h| h.token == token && h.expires_at <= now);
                    if due {
                        self.expire_holder(&timer.key, now);
                    }
                }
                TimerKind::Waiter(id) => self.time_out_waiter(&timer.key, id, now),
            }
        }
        self.fired = fired;
    }

    /// The earliest instant at which [`LockTable::tick`] has work to do.
    pub fn next_deadline(&self) -> Option<Time> {
        match (self.wheel.next_deadline(), self.grants_resume_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The state of `key` at `now`. An expired lease whose timer has not run
    /// yet is reported as not held.
    pub fn get(&self, key: &str, now: Time) -> LockInfo {
        match self.keys.get_key_value(key) {
            Some((k, state)) => state.info(k, now),
            None => LockInfo { key: Arc::from(key), holder: None, waiters: 0 },
        }
    }

    /// Up to `limit` keys starting with `prefix` and greater than `after`, in
    /// ascending order, that are held or have waiters at `now`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize, now: Time) -> Vec<LockInfo> {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        self.keys
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, s)| s.info(k, now))
            .filter(|i| i.holder.is_some() || i.waiters > 0)
            .take(limit)
            .collect()
    }

    /// Every live lease at `now`, for a snapshot.
    pub fn leases(&self, now: Time) -> impl Iterator<Item = Lease> + '_ {
        self.keys
            .iter()
            .filter_map(move |(k, s)| s.holder.as_ref().filter(|h| h.expires_at > now).map(|h| lease_of(k, h)))
    }

    /// Puts back a lease from a snapshot. Refused (returns false) when the
    /// key is held already or the lease has expired by `now`.
    pub fn restore(&mut self, lease: &Lease, now: Time) -> bool {
        if lease.expires_at <= now || self.keys.get(&*lease.key).is_some_and(|s| s.holder.is_some()) {
            return false;
        }
        self.counters.observe(lease.token);
        self.counters.leases.fetch_add(1, Ordering::Relaxed);
        let holder =
            Holder { owner: lease.owner.clone(), token: lease.token, ttl: lease.ttl, expires_at: lease.expires_at };
        self.keys.entry(lease.key.clone()).or_insert(KeyState { holder: None, waiters: None }).holder = Some(holder);
        self.push_lease_timer_for(&lease.key);
        true
    }

    /// Answers every queued waiter with [`Effect::Closed`] (shutdown). Leases stay.
    pub fn close_waiters(&mut self) {
        for state in self.keys.values_mut() {
            if let Some(waiters) = state.waiters.take() {
                self.effects.extend(waiters.into_iter().map(|w| Effect::Closed { waiter: w.payload }));
            }
        }
        self.keys.retain(|_, s| !s.is_empty());
    }

    /// Keys present (held or with waiters, possibly expired but not yet ticked).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Timers scheduled (a measure of timer-structure load).
    pub fn timer_count(&self) -> usize {
        self.wheel.len()
    }

    // ---- internals ----

    fn recovering(&self, now: Time) -> Option<Duration> {
        self.grants_resume_at.filter(|t| *t > now).map(|t| t.saturating_since(now))
    }

    fn key_arc(&self, key: &str) -> Arc<str> {
        self.keys.get_key_value(key).map(|(k, _)| k.clone()).unwrap_or_else(|| Arc::from(key))
    }

    fn new_holder(&self, owner: Arc<str>, ttl: Duration, now: Time) -> Holder {
        self.counters.leases.fetch_add(1, Ordering::Relaxed);
        Holder { owner, token: self.counters.issue(), ttl, expires_at: now + ttl }
    }

    /// Schedules the expiry check of `key`'s holder and returns its lease.
    fn push_lease_timer_for(&mut self, key: &Arc<str>) -> Lease {
        let lease = match self.keys.get(&**key).and_then(|s| s.holder.as_ref()) {
            Some(h) => lease_of(key, h),
            None => unreachable_lease(key),
        };
        self.wheel.insert(Timer { at: lease.expires_at, key: key.clone(), kind: TimerKind::Lease(lease.token) });
        lease
    }

    fn enqueue(&mut self, args: &AcquireArgs<'_>, wait: Wait<W>) -> WaiterId {
        let id = self.next_waiter;
        self.next_waiter += 1;
        let key = self.key_arc(args.key);
        let state = self.keys.entry(key.clone()).or_insert(KeyState { holder: None, waiters: None });
        state.waiters.get_or_insert_with(Default::default).push_back(Waiter {
            id,
            owner: Arc::from(args.owner),
            ttl: args.ttl,
            until: wait.until,
            share_result: args.share_result,
            payload: wait.payload,
        });
        if self.grants_resume_at.is_some() && state.holder.is_none() {
            self.pending.push(key.clone());
        }
        self.wheel.insert(Timer { at: wait.until, key, kind: TimerKind::Waiter(id) });
        WaiterId(id)
    }

    /// Ends a holder whose lease ran out at or before `now`, then serves the queue.
    fn settle(&mut self, key: &str, now: Time) {
        let expired = self.keys.get(key).and_then(|s| s.holder.as_ref()).is_some_and(|h| h.expires_at <= now);
        if expired {
            let key = self.key_arc(key);
            self.expire_holder(&key, now);
        }
    }

    fn expire_holder(&mut self, key: &Arc<str>, now: Time) {
        let Some(state) = self.keys.get_mut(&**key) else { return };
        if let Some(h) = state.holder.take() {
            self.counters.leases.fetch_sub(1, Ordering::Relaxed);
            self.effects.push(Effect::Expired { lease: lease_of(key, &h) });
        }
        self.grant_next(key, now);
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
        for key in keys.by_ref() {
            if self.counters.held_leases() >= self.config.max_leases {
                self.pending.push(key);
                break;
            }
            self.grant_next(&key, now);
        }
        self.pending.extend(keys);
    }

    fn time_out_waiter(&mut self, key: &Arc<str>, id: u64, now: Time) {
        let Some(state) = self.keys.get_mut(&**key) else { return };
        let Some(waiters) = state.waiters.as_mut() else { return };
        let Some(pos) = waiters.iter().position(|w| w.id == id && w.until <= now) else { return };
        if let Some(w) = waiters.remove(pos) {
            let current = state.info(key, now);
            self.effects.push(Effect::WaitTimedOut { waiter: w.payload, current });
        }
        self.grant_next(key, now);
    }

    /// Serves the queue of a key that has no holder: waiters past their
    /// deadline time out, the first live one is granted. Drops the key when
    /// nothing is left of it. A queue that cannot be served now (grants held
    /// back, or no lease available) is noted in `pending`.
    fn grant_next(&mut self, key: &Arc<str>, now: Time) {
        if self.recovering(now).is_some() {
            if self.keys.get(&**key).is_some_and(|s| s.holder.is_none() && s.waiter_count() > 0) {
                self.pending.push(key.clone());
            }
        } else {
            while let Some(state) = self.keys.get_mut(&**key) {
                if state.holder.is_some() {
                    break;
                }
                let Some(w) = state.waiters.as_mut().and_then(|q| q.pop_front()) else { break };
                if w.until <= now {
                    let current = state.info(key, now);
                    self.effects.push(Effect::WaitTimedOut { waiter: w.payload, current });
                    continue;
                }
                if self.counters.held_leases() >= self.config.max_leases {
                    // Leave it queued; it times out unless a lease frees first.
                    if let Some(q) = state.waiters.as_mut() {
                        q.push_front(w);
                    }
                    self.pending.push(key.clone());
                    break;
                }
                let holder = self.new_holder(w.owner, w.ttl, now);
                let lease = lease_of(key, &holder);
                if let Some(state) = self.keys.get_mut(&**key) {
                    state.holder = Some(holder);
                }
                self.wheel.insert(Timer {
                    at: lease.expires_at,
                    key: key.clone(),
                    kind: TimerKind::Lease(lease.token),
                });
                self.effects.push(Effect::Granted { waiter: w.payload, lease });
            }
        }
        if let Some(state) = self.keys.get_mut(&**key) {
            if state.waiters.as_ref().is_some_and(|q| q.is_empty()) {
                state.waiters = None;
            }
            if state.is_empty() {
                self.keys.remove(&**key);
            }
        }
    }
}

/// Callers only ask for the lease of a key they just gave a holder; should
/// that ever not hold, answer with an already-expired lease rather than panic.
fn unreachable_lease(key: &Arc<str>) -> Lease {
    debug_assert!(false, "lease asked for a key without holder: {key}");
    Lease { key: key.clone(), owner: Arc::from(""), token: 0, ttl: Duration::ZERO, expires_at: Time::ZERO }
}
