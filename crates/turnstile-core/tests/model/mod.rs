//! The reference model the property tests drive the lock table against: it
//! replays each operation, learns the table's state from the outcomes and
//! effects it observes, and checks every observation against the guarantees.
//! Each check panics with a message that starts with the rule it states.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use proptest::sample::Index;
use turnstile_core::{
    AcquireArgs, Acquired, CoreError, Counters, Effect, Lease, LockInfo, LockTable, TableConfig, Time, Wait, WaiterId,
};

/// The keys and owners the generated operations pick from (by index). Most
/// profiles use the first four keys; the rest are for profiles with enough
/// keys that emptied ones pile up and are swept out of the table's index.
mod effects;

pub(crate) static KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut keys = vec!["job:a", "job:b", "pay:1", "pay:2"];
    keys.extend((keys.len()..MANY_KEYS).map(|i| &*format!("bulk:{i:03}").leak()));
    keys
});
pub(crate) const MANY_KEYS: usize = 128;
pub(crate) const OWNERS: [&str; 3] = ["o1", "o2", "o3"];

/// One generated operation. Durations are relative to the model's clock.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Acquire {
        key: usize,
        owner: usize,
        ttl: Duration,
        wait: Option<Duration>,
        share: bool,
    },
    Renew {
        key: usize,
        token: TokenPick,
        ttl: Option<Duration>,
    },
    Release {
        key: usize,
        token: TokenPick,
        result: bool,
    },
    /// Cancels one of the waiters queued so far (answered or not).
    Cancel(Index),
    /// Time passes without a tick: the next operation meets expired state.
    Advance(Duration),
    /// Time passes and the host ticks.
    Tick(Duration),
    /// The host ticks exactly at `next_deadline()` (or now, if that has passed).
    TickAtDeadline,
    /// The host ticks one nanosecond before `next_deadline()`.
    TickJustBeforeDeadline,
}

/// Which fencing token a renew or release carries.
#[derive(Debug, Clone)]
pub(crate) enum TokenPick {
    /// The key's current holder's token (or a stale one if nobody holds it).
    Current,
    /// Any token issued so far, on any key: mostly stale.
    Any(Index),
}

#[derive(Debug, Clone)]
struct LeaseRec {
    owner: usize,
    token: u64,
    ttl: Duration,
    expires_at: Time,
    /// Released (returning true) or reported by an `Expired` effect.
    ended: bool,
}

#[derive(Debug, Clone)]
struct WaiterRec {
    mid: u64,
    owner: usize,
    ttl: Duration,
    until: Time,
    share: bool,
}

#[derive(Debug, Default)]
struct KeyModel {
    /// Every lease granted on the key, oldest first.
    history: Vec<LeaseRec>,
    /// Index in `history` of the lease the table still holds (maybe expired, not yet ticked).
    holder: Option<usize>,
    /// Waiters still queued, in arrival order.
    queue: VecDeque<WaiterRec>,
}

impl KeyModel {
    fn holder(&self) -> Option<&LeaseRec> {
        self.holder.map(|i| &self.history[i])
    }

    fn live_holder(&self, now: Time) -> Option<&LeaseRec> {
        self.holder().filter(|h| h.expires_at > now)
    }
}

/// What the current operation was, for judging the effects it produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Other,
    ReleaseWithResult { key: usize, result_tag: u8 },
}

/// The table under test plus the model of it.
pub(crate) struct Harness {
    table: LockTable<u64>,
    counters: Arc<Counters>,
    config: TableConfig,
    now: Time,
    keys: Vec<KeyModel>,
    /// Every waiter ever queued: key, table id, model id.
    waiters: Vec<(usize, WaiterId, u64)>,
    next_mid: u64,
    cancelled: HashSet<u64>,
    answered: HashSet<u64>,
    /// Every token issued: key, token.
    tokens: Vec<(usize, u64)>,
    last_token: u64,
    /// The recovery barrier, and whether a tick at or after it has run.
    resume_at: Option<Time>,
    resumed: bool,
    result_tag: u8,
    /// How many grants (direct or by effect) were observed: for coverage.
    pub(crate) grants: usize,
    /// Keys `0..span` were named by some operation (at least the first four):
    /// get() is checked for those; list() covers every key.
    span: usize,
}

fn key_of(name: &str) -> usize {
    KEYS.iter().position(|k| *k == name).unwrap_or_else(|| panic!("effect names unknown key {name:?}"))
}

fn owner_of(name: &str) -> usize {
    OWNERS.iter().position(|o| *o == name).unwrap_or_else(|| panic!("lease names unknown owner {name:?}"))
}

impl Harness {
    pub(crate) fn new(config: TableConfig, start: Time) -> Self {
        let counters = Arc::new(Counters::new(1));
        Harness {
            table: LockTable::new(config, counters.clone(), start),
            counters,
            config,
            now: start,
            keys: KEYS.iter().map(|_| KeyModel::default()).collect(),
            waiters: Vec::new(),
            next_mid: 1,
            cancelled: HashSet::new(),
            answered: HashSet::new(),
            tokens: Vec::new(),
            last_token: 0,
            resume_at: None,
            resumed: false,
            result_tag: 0,
            grants: 0,
            span: 4,
        }
    }

    /// Puts back a lease as a snapshot would, `ttl` from now, with `token`.
    pub(crate) fn restore(&mut self, key: usize, owner: usize, token: u64, ttl: Duration) {
        let lease = Lease {
            key: Arc::from(KEYS[key]),
            owner: Arc::from(OWNERS[owner]),
            token,
            ttl,
            expires_at: self.now + ttl,
            granted_at: self.now,
        };
        self.span = self.span.max(key + 1);
        let ok = self.table.restore(&lease, self.now);
        let k = &mut self.keys[key];
        assert_eq!(ok, k.holder.is_none(), "restore is refused exactly when the key is held");
        if ok {
            k.history.push(LeaseRec { owner, token, ttl, expires_at: lease.expires_at, ended: false });
            k.holder = Some(k.history.len() - 1);
            self.tokens.push((key, token));
            self.last_token = self.last_token.max(token);
        }
        self.check_model_matches_table("restore");
    }

    /// Holds grants back until `now + d` (post-crash recovery barrier).
    pub(crate) fn hold_grants_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.table.hold_grants_until(until);
        self.resume_at = Some(until);
        self.resumed = false;
    }

    pub(crate) fn run(&mut self, ops: &[Op]) {
        for op in ops {
            self.step(op);
        }
        // Let every lease run out and every waiter time out: all must end cleanly.
        for _ in 0..64 {
            if self.table.next_deadline().is_none() {
                break;
            }
            self.step(&Op::TickAtDeadline);
        }
        assert_eq!(self.table.next_deadline(), None, "G3 expiry: deadlines remain after every lease and wait ended");
        assert_eq!(self.table.key_count(), 0, "G3 expiry: keys remain after every lease and wait ended");
        assert_eq!(self.counters.held_leases(), 0, "G3 expiry: lease count not back to zero");
    }

    fn step(&mut self, op: &Op) {
        let now = self.now;
        if let Op::Acquire { key, .. } | Op::Renew { key, .. } | Op::Release { key, .. } = op {
            self.span = self.span.max(key + 1);
        }
        match op {
            Op::Advance(d) => self.now = now + *d,
            Op::Tick(d) => self.tick(now + *d, op),
            Op::TickAtDeadline => {
                let at = self.table.next_deadline().map_or(now, |d| d.max(now));
                self.tick(at, op);
                let next = self.table.next_deadline();
                assert!(
                    next.is_none_or(|n| n > at),
                    "G3 expiry: after tick({at:?}) next_deadline is {next:?}: a host driven by it would spin"
                );
            }
            Op::TickJustBeforeDeadline => {
                if let Some(d) = self.table.next_deadline() {
                    let at = d - Duration::from_nanos(1);
                    if at >= now {
                        self.now = at;
                        self.table.tick(at);
                        let effects: Vec<_> = self.table.drain_effects().collect();
                        assert!(
                            effects.is_empty(),
                            "G3 expiry: tick 1 ns before next_deadline ({d:?}) did work: {effects:?}"
                        );
                    }
                }
            }
            Op::Acquire { key, owner, ttl, wait, share } => self.acquire(*key, *owner, *ttl, *wait, *share),
            Op::Renew { key, token, ttl } => self.renew(*key, token, *ttl),
            Op::Release { key, token, result } => self.release(*key, token, *result),
            Op::Cancel(pick) => self.cancel(pick),
        }
        self.check_model_matches_table(&format!("{op:?}"));
        self.check_g3_next_deadline_covers_every_deadline();
        self.check_queues_are_served();
    }

    fn tick(&mut self, at: Time, op: &Op) {
        self.now = at;
        self.table.tick(at);
        let effects: Vec<_> = self.table.drain_effects().collect();
        for e in effects {
            self.apply(e, Cause::Other);
        }
        if self.resume_at.is_some_and(|t| t <= at) {
            self.resumed = true;
        }
        // G3: every lease due by now was reported expired in this tick, every
        // wait due by now was answered; queues were served (checked in `step`).
        for (k, km) in self.keys.iter().enumerate() {
            if let Some(h) = km.holder() {
                assert!(
                    h.expires_at > at,
                    "G3 expiry: after tick({at:?}) ({op:?}) {} still holds {} with token {} expiring {:?}",
                    OWNERS[h.owner],
                    KEYS[k],
                    h.token,
                    h.expires_at
                );
            }
            for w in &km.queue {
                assert!(
                    w.until > at,
                    "G3 expiry: after tick({at:?}) waiter {} on {} is past its deadline",
                    w.mid,
                    KEYS[k]
                );
            }
        }
    }

    fn token_for(&self, key: usize, pick: &TokenPick) -> u64 {
        match pick {
            TokenPick::Current => match self.keys[key].holder() {
                Some(h) => h.token,
                None => self.keys[key].history.last().map_or(0, |l| l.token),
            },
            TokenPick::Any(i) if self.tokens.is_empty() => i.index(1000) as u64,
            TokenPick::Any(i) => self.tokens[i.index(self.tokens.len())].1,
        }
    }

    fn acquire(&mut self, key: usize, owner: usize, ttl: Duration, wait: Option<Duration>, share: bool) {
        let now = self.now;
        let before = self.table.get(KEYS[key], now);
        let held_before = self.counters.held_leases();
        let args = AcquireArgs { key: KEYS[key], owner: OWNERS[owner], ttl, share_result: share };
        let mid = self.next_mid;
        let r = self.table.acquire(&args, wait.map(|d| Wait { until: now + d, payload: mid }), now);
        let effects: Vec<_> = self.table.drain_effects().collect();
        let quiet = effects.is_empty();
        for e in effects {
            self.apply(e, Cause::Other);
        }
        // What the table saw after settling the key: the limits apply to that.
        let held = self.keys.iter().filter(|k| k.holder.is_some()).count();
        let km = &self.keys[key];
        let live = km.live_holder(now).cloned();
        let refreshed = matches!(r, Ok(Acquired::Refreshed(_)));
        match r {
            Ok(Acquired::Granted(lease) | Acquired::Refreshed(lease)) => {
                assert_eq!(&*lease.key, KEYS[key]);
                assert_eq!(lease.owner_idx(), owner, "acquire granted a lease to another owner");
                assert_eq!(lease.ttl, ttl);
                assert_eq!(lease.expires_at, now + ttl, "granted lease must run ttl from now");
                let own = live.as_ref().is_some_and(|h| h.owner == owner);
                assert_eq!(refreshed, own, "Refreshed must be reported exactly when the owner already held the key");
                match live {
                    Some(h) if h.owner == owner => {
                        assert_eq!(
                            lease.token, h.token,
                            "G5 idempotent acquire: holder's re-acquire got token {} instead of {}",
                            lease.token, h.token
                        );
                        let i = self.keys[key].holder.unwrap_or_default();
                        let rec = &mut self.keys[key].history[i];
                        rec.expires_at = lease.expires_at;
                        rec.ttl = ttl;
                    }
                    _ => {
                        assert!(
                            self.keys[key].queue.is_empty(),
                            "G4 FIFO: direct grant of {} to {} jumped a queue of {}",
                            KEYS[key],
                            OWNERS[owner],
                            self.keys[key].queue.len()
                        );
                        assert!(held < self.config.max_leases, "max leases: direct grant past the limit");
                        self.record_grant(key, &lease);
                    }
                }
            }
            Ok(Acquired::Contended(info)) => {
                assert!(wait.is_none(), "a waiting acquire reported Contended");
                assert!(
                    live.as_ref().is_some_and(|h| h.owner != owner) || !km.queue.is_empty(),
                    "try-lock of {} reported Contended on a free key",
                    KEYS[key]
                );
                assert_eq!(info, self.table.get(KEYS[key], now), "Contended must carry the key's state");
            }
            Ok(Acquired::Queued(id)) => {
                assert!(wait.is_some(), "a try-lock was queued");
                assert!(
                    live.as_ref().is_some_and(|h| h.owner != owner) || !km.queue.is_empty() || self.recovering(),
                    "acquire of free key {} was queued instead of granted",
                    KEYS[key]
                );
                assert!(km.queue.len() < self.config.max_waiters_per_key, "queued past max waiters per key");
                self.next_mid += 1;
                let until = now + wait.unwrap_or_default();
                self.keys[key].queue.push_back(WaiterRec { mid, owner, ttl, until, share });
                self.waiters.push((key, id, mid));
            }
            Err(e) => {
                match &e {
                    CoreError::TooManyWaiters { key: k, limit } => {
                        assert_eq!(k, KEYS[key]);
                        assert!(wait.is_some() && km.queue.len() >= *limit, "TooManyWaiters below the limit");
                    }
                    CoreError::TooManyLeases { limit } => {
                        assert!(held >= *limit, "TooManyLeases with {held} of {limit} held");
                        assert!(live.is_none() && km.queue.is_empty(), "TooManyLeases on a busy key");
                    }
                    CoreError::Recovering { remaining } => {
                        assert!(wait.is_none(), "a waiting acquire got Recovering instead of queueing");
                        let t = self.resume_at.filter(|t| *t > now);
                        assert_eq!(
                            Some(*remaining),
                            t.map(|t| t.saturating_since(now)),
                            "Recovering outside the barrier"
                        );
                    }
                    CoreError::LeaseNotFound { .. } => panic!("acquire returned {e:?}"),
                }
                let after = self.table.get(KEYS[key], now);
                if quiet {
                    assert_eq!(before, after, "no-half-applied: {e:?} changed the key's state");
                    assert_eq!(
                        held_before,
                        self.counters.held_leases(),
                        "no-half-applied: {e:?} changed the lease count"
                    );
                }
            }
        }
    }

    fn renew(&mut self, key: usize, pick: &TokenPick, ttl: Option<Duration>) {
        let now = self.now;
        let token = self.token_for(key, pick);
        let r = self.table.renew(KEYS[key], token, ttl, now);
        let effects: Vec<_> = self.table.drain_effects().collect();
        for e in effects {
            self.apply(e, Cause::Other);
        }
        let live = self.keys[key].live_holder(now).cloned();
        match r {
            Ok(lease) => {
                let h = live.unwrap_or_else(|| {
                    panic!("G7 stale calls: renew of {} token {token} succeeded with no live lease", KEYS[key])
                });
                assert_eq!(
                    h.token, token,
                    "G7 stale calls: renew with token {token} succeeded; holder has {}",
                    h.token
                );
                let ttl = ttl.unwrap_or(h.ttl);
                assert_eq!((lease.token, lease.ttl, lease.expires_at), (token, ttl, now + ttl), "renew extends by ttl");
                let i = self.keys[key].holder.unwrap_or_default();
                let rec = &mut self.keys[key].history[i];
                rec.expires_at = lease.expires_at;
                rec.ttl = ttl;
            }
            Err(CoreError::LeaseNotFound { key: k, token: t }) => {
                assert_eq!((k.as_str(), t), (KEYS[key], token));
                assert!(
                    live.is_none_or(|h| h.token != token),
                    "renew of the live lease {} token {token} got LeaseNotFound",
                    KEYS[key]
                );
                // The holder left untouched is checked by check_model_matches_table (G7).
            }
            Err(e) => panic!("renew returned {e:?}"),
        }
    }

    fn release(&mut self, key: usize, pick: &TokenPick, with_result: bool) {
        let now = self.now;
        let token = self.token_for(key, pick);
        self.result_tag = self.result_tag.wrapping_add(1);
        let tag = self.result_tag;
        let result: Option<Arc<[u8]>> = with_result.then(|| Arc::from(&[tag, 0xAB][..]));
        let live_before = self.keys[key].live_holder(now).map(|h| h.token);
        let released = self.table.release(KEYS[key], token, result, now);
        let effects: Vec<_> = self.table.drain_effects().collect();
        if released {
            assert_eq!(
                live_before,
                Some(token),
                "G7 stale calls: release of {} with token {token} returned true",
                KEYS[key]
            );
            let km = &mut self.keys[key];
            let i = km.holder.take().unwrap_or_default();
            km.history[i].ended = true;
            let sharers: Vec<u64> = km.queue.iter().filter(|w| w.share).map(|w| w.mid).collect();
            let cause = if with_result { Cause::ReleaseWithResult { key, result_tag: tag } } else { Cause::Other };
            let answered: Vec<u64> = effects
                .iter()
                .filter_map(|e| match e {
                    Effect::SharedResult { waiter, .. } => Some(*waiter),
                    _ => None,
                })
                .collect();
            for e in effects {
                self.apply(e, cause);
            }
            if with_result {
                assert_eq!(
                    answered, sharers,
                    "shared results: release with a result must answer every sharing waiter, in queue order"
                );
            } else {
                assert!(answered.is_empty(), "shared results: release without a result delivered one");
            }
        } else {
            // Effects here come from settling an expired holder, never from the release.
            for e in effects {
                assert!(!matches!(e, Effect::SharedResult { .. }), "shared results: a refused release delivered {e:?}");
                self.apply(e, Cause::Other);
            }
            assert!(
                self.keys[key].live_holder(now).is_none_or(|h| h.token != token),
                "G7 stale calls: release of the live lease {} token {token} returned false",
                KEYS[key]
            );
        }
    }

    fn cancel(&mut self, pick: &Index) {
        if self.waiters.is_empty() {
            return;
        }
        let (key, id, mid) = self.waiters[pick.index(self.waiters.len())];
        let cancelled = self.table.cancel(KEYS[key], id, self.now);
        let queued = self.keys[key].queue.iter().position(|w| w.mid == mid);
        if cancelled {
            let pos =
                queued.unwrap_or_else(|| panic!("G6 cancellation: cancel of answered waiter {mid} returned true"));
            self.keys[key].queue.remove(pos);
            self.cancelled.insert(mid);
        } else {
            assert!(queued.is_none(), "G6 cancellation: cancel of queued waiter {mid} returned false");
            assert!(
                self.answered.contains(&mid) || self.cancelled.contains(&mid),
                "G6 cancellation: cancel returned false for waiter {mid} that was never answered"
            );
        }
        let effects: Vec<_> = self.table.drain_effects().collect();
        for e in effects {
            self.apply(e, Cause::Other);
        }
    }

    fn recovering(&self) -> bool {
        self.resume_at.is_some_and(|t| t > self.now)
    }

    /// For scenario tests: the key's state now.
    #[allow(dead_code)]
    pub(crate) fn get(&self, key: usize) -> LockInfo {
        self.table.get(KEYS[key], self.now)
    }
}

trait OwnerIdx {
    fn owner_idx(&self) -> usize;
}

impl OwnerIdx for Lease {
    fn owner_idx(&self) -> usize {
        owner_of(&self.owner)
    }
}
