//! The model the `core_ops` target checks the lock table against. It learns
//! the table's state only from what a host sees (outcomes and effects),
//! predicts each outcome, and asserts after every step:
//! - G1: a key is granted only when its previous lease ended (released, or
//!   expired and reported), so at most one holder per key;
//! - G2: tokens strictly increase per key across grants (and are never reissued);
//! - G3: after `tick(t)` no lease due by `t` is still held and no waiter due by
//!   `t` still queued; `next_deadline()` (and the `wake_by` of every drain) is
//!   never later than the earliest lease expiry, wait deadline or end of a
//!   grant hold the model knows of, and a tick there makes progress;
//! - G4: waiters are granted in FIFO order, and a free key does not keep a
//!   live waiter queued (unless grants are held or every lease is in use);
//! - G6: a cancelled waiter is never answered, no waiter is answered twice,
//!   and every waiter is answered or cancelled by the end;
//! - G7: a renew or release with a stale token fails and changes no lease
//!   (what `get()` reports stays what the model knows);
//! - refusals change nothing; `get()`, `list()` and the lease count agree
//!   with the model.
//!
//! Every assertion message starts with the rule it states.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use turnstile_core::{Acquired, CoreError, Effect, Lease, LockInfo, TableConfig, Time, WaiterId};

use super::table::{Drained, Table};
use super::{units, Header, Op, TokenPick, START_UNIT_NS};

/// Contended keys first (one of them too long to be stored inline), then
/// the bulk keys, some long, some not.
pub static KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut keys = vec!["job:a", "job:b", "pay:1", "pay:1/ü/a key longer than 22 bytes"];
    for i in 0..128 {
        let tail = if i % 3 == 0 { "/stored on the heap, not inline" } else { "" };
        keys.push(format!("bulk:{i:03}{tail}").leak());
    }
    keys
});
/// The owners acquiring.
pub const OWNERS: [&str; 3] = ["o1", "o2", "o3"];

/// Indices into [`KEYS`] in the order of the names, as `list()` reports them.
static BY_NAME: LazyLock<Vec<usize>> = LazyLock::new(|| {
    let mut order: Vec<usize> = (0..KEYS.len()).collect();
    order.sort_by_key(|&k| KEYS[k]);
    order
});

fn key_index(b: u8) -> usize {
    if b < 128 {
        usize::from(b % 4)
    } else {
        4 + usize::from(b - 128)
    }
}

fn key_of(name: &str) -> usize {
    KEYS.iter().position(|k| *k == name).unwrap_or_else(|| panic!("model: effect names unknown key {name:?}"))
}

fn owner_of(name: &str) -> usize {
    OWNERS.iter().position(|o| *o == name).unwrap_or_else(|| panic!("model: lease names unknown owner {name:?}"))
}

#[derive(Debug, Clone)]
struct Holder {
    owner: usize,
    token: u64,
    ttl: Duration,
    expires_at: Time,
}

#[derive(Debug, Clone)]
struct Waiter {
    mid: u64,
    owner: usize,
    ttl: Duration,
    until: Time,
    share: bool,
}

#[derive(Debug, Default)]
struct KeyState {
    /// The lease the table holds, as far as the host knows: maybe past its
    /// expiry, until released or reported expired.
    holder: Option<Holder>,
    /// Queued waiters, in arrival order (maybe past their deadline, until reported).
    queue: VecDeque<Waiter>,
    /// The last token granted on the key.
    last_token: u64,
}

impl KeyState {
    fn live(&self, now: Time) -> Option<&Holder> {
        self.holder.as_ref().filter(|h| h.expires_at > now)
    }
}

/// What the operation whose effects are applied was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Other,
    ReleaseWithResult { key: usize, tag: u8 },
}

/// The outcome the model predicts for an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Granted,
    Refreshed,
    Contended,
    Queued,
    TooManyWaiters,
    TooManyLeases,
    Recovering(Duration),
}

fn outcome(r: &Result<Acquired, CoreError>) -> Expect {
    match r {
        Ok(Acquired::Granted(_)) => Expect::Granted,
        Ok(Acquired::Refreshed(_)) => Expect::Refreshed,
        Ok(Acquired::Contended(_)) => Expect::Contended,
        Ok(Acquired::Queued(_)) => Expect::Queued,
        Err(CoreError::TooManyWaiters { .. }) => Expect::TooManyWaiters,
        Err(CoreError::TooManyLeases { .. }) => Expect::TooManyLeases,
        Err(CoreError::Recovering { remaining }) => Expect::Recovering(*remaining),
        Err(e @ CoreError::LeaseNotFound { .. }) => panic!("model: acquire returned {e:?}"),
    }
}

/// The table under test and what the model knows of it.
pub(crate) struct Model {
    table: Table,
    config: TableConfig,
    now: Time,
    keys: Vec<KeyState>,
    /// Keys the current step named or saw in an effect: `get()` is checked for them.
    touched: Vec<usize>,
    /// Every waiter ever queued: key, table id, model number.
    waiters: Vec<(usize, WaiterId, u64)>,
    next_mid: u64,
    cancelled: HashSet<u64>,
    answered: HashSet<u64>,
    /// Every token issued, in order.
    tokens: Vec<u64>,
    /// The end of the grant hold, and whether a tick at or after it has run.
    resume_at: Option<Time>,
    resumed: bool,
    result_tag: u8,
    /// The `wake_by` of the last drain.
    wake_by: Option<Time>,
}

impl Model {
    pub(crate) fn new(header: Header) -> Self {
        let defaults = TableConfig::default();
        let config = TableConfig {
            max_waiters_per_key: match header.max_waiters {
                0 => defaults.max_waiters_per_key,
                n => usize::from(n),
            },
            max_leases: match header.max_leases {
                0 => defaults.max_leases,
                n => usize::from(n),
            },
        };
        let start = Time::from_nanos(u64::from(header.start) * START_UNIT_NS);
        let table = Table::new(config, start);
        let wake_by = table.next_deadline();
        Model {
            table,
            config,
            now: start,
            keys: KEYS.iter().map(|_| KeyState::default()).collect(),
            touched: Vec::new(),
            waiters: Vec::new(),
            next_mid: 1,
            cancelled: HashSet::new(),
            answered: HashSet::new(),
            tokens: Vec::new(),
            resume_at: None,
            resumed: false,
            result_tag: 0,
            wake_by,
        }
    }

    /// Plays `ops`, then ticks at every deadline until nothing is left: every
    /// lease must end, every waiter be answered, the table be empty.
    pub(crate) fn run(mut self, ops: &[Op]) {
        for op in ops {
            self.step(op);
        }
        let mut ticks = 0u64;
        while self.table.next_deadline().is_some() {
            ticks += 1;
            assert!(ticks < 1_000_000, "G3 expiry: a host ticking at next_deadline() never runs out of deadlines");
            self.step(&Op::TickAtDeadline);
        }
        assert_eq!(self.table.key_count(), 0, "G3 expiry: keys remain after every lease and wait ended");
        assert_eq!(self.table.held_leases(), 0, "G3 expiry: lease count not back to zero");
        for (key, _, mid) in &self.waiters {
            assert!(
                self.answered.contains(mid) || self.cancelled.contains(mid),
                "G6 cancellation: waiter {mid} on {} was never answered",
                KEYS[*key]
            );
        }
    }

    fn touch(&mut self, key: usize) {
        if !self.touched.contains(&key) {
            self.touched.push(key);
        }
    }

    fn step(&mut self, op: &Op) {
        let now = self.now;
        self.touched.clear();
        match *op {
            Op::Acquire { key, owner, ttl, wait, share } => {
                let key = key_index(key);
                self.touch(key);
                self.acquire(
                    key,
                    usize::from(owner) % OWNERS.len(),
                    units(ttl.saturating_add(1)),
                    wait.map(|w| units(w.saturating_add(1))),
                    share,
                );
            }
            Op::Renew { key, token, ttl } => {
                let key = key_index(key);
                self.touch(key);
                self.renew(key, token, ttl.map(|t| units(t.saturating_add(1))));
            }
            Op::Release { key, token, result } => {
                let key = key_index(key);
                self.touch(key);
                self.release(key, token, result);
            }
            Op::Cancel(i) => self.cancel(i),
            Op::Advance(d) => self.now = now + units(d),
            Op::Tick(d) => self.tick(now + units(d), op),
            Op::TickAtDeadline => {
                let at = self.table.next_deadline().map_or(now, |d| d.max(now));
                self.tick(at, op);
                let next = self.table.next_deadline();
                assert!(
                    next.is_none_or(|n| n > at),
                    "G3 expiry: after tick({at:?}) at the deadline, next_deadline is {next:?}: a host driven by it would spin"
                );
            }
            Op::TickJustBeforeDeadline => {
                if let Some(d) = self.table.next_deadline().filter(|d| *d > now) {
                    let at = d - Duration::from_nanos(1);
                    self.now = at;
                    let drained = self.table.tick(at);
                    assert!(
                        drained.effects.is_empty(),
                        "G3 expiry: tick 1 ns before next_deadline ({d:?}) did work: {:?}",
                        drained.effects
                    );
                    self.wake_by = drained.wake_by;
                }
            }
            Op::HoldGrants(d) => {
                let until = now + units(d);
                let drained = self.table.hold_grants_until(until);
                self.resume_at = Some(until);
                self.resumed = false;
                self.take(drained, Cause::Other);
            }
        }
        self.check_table_matches_model(op);
        self.check_deadline_covers_every_deadline(op);
        self.check_queues_are_served(op);
    }

    /// Applies the effects of one drain and notes its wake-up instant.
    fn take(&mut self, drained: Drained, cause: Cause) {
        assert_eq!(drained.wake_by, self.table.next_deadline(), "G3 expiry: drain's wake_by is not next_deadline()");
        self.wake_by = drained.wake_by;
        for e in drained.effects {
            self.apply(e, cause);
        }
    }

    fn tick(&mut self, at: Time, op: &Op) {
        self.now = at;
        let drained = self.table.tick(at);
        self.take(drained, Cause::Other);
        if self.resume_at.is_some_and(|t| t <= at) {
            self.resumed = true;
        }
        for (k, ks) in self.keys.iter().enumerate() {
            if let Some(h) = &ks.holder {
                assert!(
                    h.expires_at > at,
                    "G3 expiry: after tick({at:?}) ({op:?}) {} still holds {} with token {} expiring at {:?}",
                    OWNERS[h.owner],
                    KEYS[k],
                    h.token,
                    h.expires_at
                );
            }
            if let Some(w) = ks.queue.iter().find(|w| w.until <= at) {
                panic!(
                    "G3 expiry: after tick({at:?}) ({op:?}) waiter {} on {} is past its deadline {:?}",
                    w.mid, KEYS[k], w.until
                );
            }
        }
    }

    fn token_for(&self, key: usize, pick: TokenPick) -> u64 {
        match pick {
            TokenPick::Current => self.keys[key].holder.as_ref().map_or(self.keys[key].last_token, |h| h.token),
            TokenPick::Any(i) if self.tokens.is_empty() => u64::from(i),
            TokenPick::Any(i) => self.tokens[usize::from(i) % self.tokens.len()],
        }
    }

    fn recovering(&self) -> Option<Duration> {
        self.resume_at.filter(|t| *t > self.now).map(|t| t.saturating_since(self.now))
    }

    fn held(&self) -> usize {
        self.keys.iter().filter(|k| k.holder.is_some()).count()
    }

    /// What an acquire must answer, given the key's state after the table
    /// settled it (its effects applied).
    fn expect_acquire(&self, key: usize, owner: usize, wait: bool) -> Expect {
        let ks = &self.keys[key];
        let live = ks.live(self.now);
        if live.is_some_and(|h| h.owner == owner) {
            return Expect::Refreshed;
        }
        let recovering = self.recovering();
        if live.is_some() || !ks.queue.is_empty() {
            return match (wait, recovering) {
                (true, _) if ks.queue.len() >= self.config.max_waiters_per_key => Expect::TooManyWaiters,
                (true, _) => Expect::Queued,
                (false, Some(r)) if live.is_none() => Expect::Recovering(r),
                (false, _) => Expect::Contended,
            };
        }
        match (wait, recovering) {
            (true, Some(_)) => Expect::Queued,
            (false, Some(r)) => Expect::Recovering(r),
            (_, None) if self.held() >= self.config.max_leases => Expect::TooManyLeases,
            (_, None) => Expect::Granted,
        }
    }

    fn acquire(&mut self, key: usize, owner: usize, ttl: Duration, wait: Option<Duration>, share: bool) {
        let now = self.now;
        let mid = self.next_mid;
        let before = self.table.get(KEYS[key], now);
        let held_before = self.table.held_leases();
        let (r, drained) = self.table.acquire(KEYS[key], OWNERS[owner], ttl, wait.map(|d| (now + d, mid)), share, now);
        let quiet = drained.effects.is_empty();
        self.take(drained, Cause::Other);
        let expect = self.expect_acquire(key, owner, wait.is_some());
        assert_eq!(
            outcome(&r),
            expect,
            "model: acquire of {} by {} (wait {wait:?}) answered {r:?}",
            KEYS[key],
            OWNERS[owner]
        );
        match r {
            Ok(Acquired::Granted(lease)) => {
                assert_eq!((&*lease.key, &*lease.owner), (KEYS[key], OWNERS[owner]), "model: granted the wrong lease");
                assert_eq!((lease.ttl, lease.expires_at), (ttl, now + ttl), "model: a grant must run ttl from now");
                assert!(self.keys[key].queue.is_empty(), "G4 FIFO: a direct grant of {} jumped its queue", KEYS[key]);
                self.grant(key, &lease);
            }
            Ok(Acquired::Refreshed(lease)) => {
                let h = self.keys[key]
                    .holder
                    .as_mut()
                    .unwrap_or_else(|| unreachable!("Refreshed is expected with a holder"));
                assert_eq!(lease.token, h.token, "G5 idempotent acquire: the holder's re-acquire got another token");
                assert_eq!(
                    (lease.ttl, lease.expires_at),
                    (ttl, now + ttl),
                    "G5 idempotent acquire: TTL not refreshed from now"
                );
                h.ttl = ttl;
                h.expires_at = lease.expires_at;
            }
            Ok(Acquired::Contended(info)) => {
                assert_eq!(info, self.table.get(KEYS[key], now), "model: Contended must carry the key's state");
            }
            Ok(Acquired::Queued(id)) => {
                let until = now + wait.unwrap_or_default();
                self.keys[key].queue.push_back(Waiter { mid, owner, ttl, until, share });
                self.waiters.push((key, id, mid));
                self.next_mid += 1;
            }
            Err(e) => {
                match &e {
                    CoreError::TooManyWaiters { key: k, limit } => {
                        assert_eq!((k.as_str(), *limit), (KEYS[key], self.config.max_waiters_per_key), "model: {e:?}");
                    }
                    CoreError::TooManyLeases { limit } => assert_eq!(*limit, self.config.max_leases, "model: {e:?}"),
                    _ => {}
                }
                if quiet {
                    assert_eq!(before, self.table.get(KEYS[key], now), "G8 no half-applied: {e:?} changed the key");
                    assert_eq!(
                        held_before,
                        self.table.held_leases(),
                        "G8 no half-applied: {e:?} changed the lease count"
                    );
                }
            }
        }
    }

    fn renew(&mut self, key: usize, pick: TokenPick, ttl: Option<Duration>) {
        let now = self.now;
        let token = self.token_for(key, pick);
        let (r, drained) = self.table.renew(KEYS[key], token, ttl, now);
        self.take(drained, Cause::Other);
        let live = self.keys[key].live(now).cloned();
        match r {
            Ok(lease) => {
                let h = live.unwrap_or_else(|| {
                    panic!("G7 stale calls: renew of {} with token {token} succeeded with no live lease", KEYS[key])
                });
                assert_eq!(
                    h.token, token,
                    "G7 stale calls: renew with token {token} succeeded; the holder has {}",
                    h.token
                );
                let ttl = ttl.unwrap_or(h.ttl);
                assert_eq!(
                    (lease.token, lease.ttl, lease.expires_at),
                    (token, ttl, now + ttl),
                    "model: renew must run ttl from now"
                );
                let h = self.keys[key].holder.as_mut().unwrap_or_else(|| unreachable!("live holder"));
                h.ttl = ttl;
                h.expires_at = lease.expires_at;
            }
            Err(CoreError::LeaseNotFound { key: k, token: t }) => {
                assert_eq!((k.as_str(), t), (KEYS[key], token), "model: LeaseNotFound names another lease");
                assert!(
                    live.is_none_or(|h| h.token != token),
                    "G7 stale calls: renew of the live lease on {} (token {token}) got LeaseNotFound",
                    KEYS[key]
                );
            }
            Err(e) => panic!("model: renew returned {e:?}"),
        }
    }

    fn release(&mut self, key: usize, pick: TokenPick, with_result: bool) {
        let now = self.now;
        let token = self.token_for(key, pick);
        self.result_tag = self.result_tag.wrapping_add(1);
        let tag = self.result_tag;
        let result: Option<Arc<[u8]>> = with_result.then(|| Arc::from(&[tag, 0xAB][..]));
        let live = self.keys[key].live(now).map(|h| h.token);
        let (released, drained) = self.table.release(KEYS[key], token, result, now);
        if !released {
            assert!(
                live != Some(token),
                "G7 stale calls: release of the live lease on {} (token {token}) returned false",
                KEYS[key]
            );
            for e in &drained.effects {
                assert!(!matches!(e, Effect::SharedResult { .. }), "shared results: a refused release delivered {e:?}");
            }
            self.take(drained, Cause::Other);
            return;
        }
        assert_eq!(live, Some(token), "G7 stale calls: release of {} with token {token} returned true", KEYS[key]);
        self.keys[key].holder = None;
        let sharers: Vec<u64> = self.keys[key].queue.iter().filter(|w| w.share).map(|w| w.mid).collect();
        let answered: Vec<u64> = drained
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::SharedResult { waiter, .. } => Some(*waiter),
                _ => None,
            })
            .collect();
        let expected = if with_result { sharers } else { Vec::new() };
        assert_eq!(
            answered, expected,
            "shared results: a release with a result answers exactly its sharing waiters, in order"
        );
        let cause = if with_result { Cause::ReleaseWithResult { key, tag } } else { Cause::Other };
        self.take(drained, cause);
    }

    fn cancel(&mut self, pick: u8) {
        if self.waiters.is_empty() {
            return;
        }
        let (key, id, mid) = self.waiters[usize::from(pick) % self.waiters.len()];
        let (cancelled, drained) = self.table.cancel(KEYS[key], id, self.now);
        let queued = self.keys[key].queue.iter().position(|w| w.mid == mid);
        if cancelled {
            let pos =
                queued.unwrap_or_else(|| panic!("G6 cancellation: cancel of answered waiter {mid} returned true"));
            self.keys[key].queue.remove(pos);
            self.cancelled.insert(mid);
        } else {
            assert!(queued.is_none(), "G6 cancellation: cancel of queued waiter {mid} returned false");
        }
        self.take(drained, Cause::Other);
    }

    /// G1 and G2 for a new lease on `key`; records it as the holder.
    fn grant(&mut self, key: usize, lease: &Lease) {
        let now = self.now;
        if let Some(t) = self.resume_at {
            assert!(now >= t, "recovery hold: {} granted at {now:?}, before grants resume at {t:?}", KEYS[key]);
        }
        let ks = &mut self.keys[key];
        if let Some(h) = &ks.holder {
            assert!(
                h.expires_at <= now,
                "G1 mutual exclusion: {} granted to {} (token {}) while {} holds token {} until {:?} (now {now:?})",
                KEYS[key],
                lease.owner,
                lease.token,
                OWNERS[h.owner],
                h.token,
                h.expires_at
            );
        }
        assert!(
            lease.token > ks.last_token,
            "G2 fencing: token {} on {} not above {}",
            lease.token,
            KEYS[key],
            ks.last_token
        );
        let last = self.tokens.last().copied().unwrap_or(0);
        assert!(lease.token > last, "G2 fencing: token {} reissued or below the last one issued, {last}", lease.token);
        ks.last_token = lease.token;
        ks.holder = Some(Holder {
            owner: owner_of(&lease.owner),
            token: lease.token,
            ttl: lease.ttl,
            expires_at: lease.expires_at,
        });
        self.tokens.push(lease.token);
    }

    fn apply(&mut self, effect: Effect<u64>, cause: Cause) {
        let now = self.now;
        let key = match (&effect, cause) {
            (Effect::Granted { lease, .. } | Effect::Expired { lease }, _) => Some(key_of(&lease.key)),
            (Effect::WaitTimedOut { current, .. }, _) => Some(key_of(&current.key)),
            (Effect::SharedResult { .. }, Cause::ReleaseWithResult { key, .. }) => Some(key),
            _ => None,
        };
        if let Some(key) = key {
            self.touch(key);
        }
        let mid = match &effect {
            Effect::Granted { waiter, .. }
            | Effect::SharedResult { waiter, .. }
            | Effect::WaitTimedOut { waiter, .. }
            | Effect::Closed { waiter } => Some(*waiter),
            Effect::Expired { .. } => None,
        };
        if let Some(mid) = mid {
            assert!(!self.cancelled.contains(&mid), "G6 cancellation: cancelled waiter {mid} answered: {effect:?}");
            assert!(self.answered.insert(mid), "G6 cancellation: waiter {mid} answered twice: {effect:?}");
        }
        match effect {
            Effect::Granted { waiter, lease } => {
                let key = key_of(&lease.key);
                let q = &mut self.keys[key].queue;
                let pos = q.iter().position(|w| w.mid == waiter);
                assert_eq!(
                    pos,
                    Some(0),
                    "G4 FIFO: waiter {waiter} granted {} from position {pos:?} of {:?}",
                    KEYS[key],
                    q.iter().map(|w| w.mid).collect::<Vec<_>>()
                );
                let w = q.pop_front().unwrap_or_else(|| unreachable!("position 0"));
                assert!(
                    w.until > now,
                    "G6 cancellation: waiter {waiter} granted at {now:?}, past its deadline {:?}",
                    w.until
                );
                assert_eq!(owner_of(&lease.owner), w.owner, "model: grant went to another owner than the waiter's");
                assert_eq!((lease.ttl, lease.expires_at), (w.ttl, now + w.ttl), "model: a grant must run ttl from now");
                self.grant(key, &lease);
            }
            Effect::SharedResult { waiter, result } => {
                let Cause::ReleaseWithResult { key, tag } = cause else {
                    panic!("shared results: waiter {waiter} got a result outside a release with a result")
                };
                let q = &mut self.keys[key].queue;
                let pos = q
                    .iter()
                    .position(|w| w.mid == waiter)
                    .unwrap_or_else(|| panic!("shared results: waiter {waiter} is not queued on {}", KEYS[key]));
                let w = q.remove(pos).unwrap_or_else(|| unreachable!("found"));
                assert!(w.share, "shared results: waiter {waiter} did not ask for a result");
                assert_eq!(&*result, &[tag, 0xAB][..], "shared results: wrong bytes delivered");
            }
            Effect::WaitTimedOut { waiter, current } => {
                let key = key_of(&current.key);
                let q = &mut self.keys[key].queue;
                let pos = q.iter().position(|w| w.mid == waiter).unwrap_or_else(|| {
                    panic!("G6 cancellation: WaitTimedOut for waiter {waiter}, not queued on {}", KEYS[key])
                });
                let w = q.remove(pos).unwrap_or_else(|| unreachable!("found"));
                assert!(
                    w.until <= now,
                    "G6 cancellation: waiter {waiter} timed out at {now:?}, before its deadline {:?}",
                    w.until
                );
            }
            Effect::Closed { waiter } => panic!("model: Closed for waiter {waiter} without a shutdown"),
            Effect::Expired { lease } => {
                let key = key_of(&lease.key);
                let h = self.keys[key]
                    .holder
                    .take()
                    .unwrap_or_else(|| panic!("G3 expiry: Expired for {} with no holder", KEYS[key]));
                assert_eq!(
                    (lease.token, lease.expires_at),
                    (h.token, h.expires_at),
                    "G3 expiry: Expired names another lease"
                );
                assert!(
                    h.expires_at <= now,
                    "G3 expiry: lease {} expired early ({:?} > {now:?})",
                    h.token,
                    h.expires_at
                );
            }
        }
    }

    /// `list()` reports what the model knows of every key (G3: an expired
    /// lease is not reported held; G7: a stale call left the holder as it
    /// was), `get()` agrees for the keys this step involved, and the lease
    /// count matches. (One pass over `list()` per step, rather than a `get()`
    /// per key, keeps long runs fast.)
    fn check_table_matches_model(&self, op: &Op) {
        let now = self.now;
        let listed = self.table.list_all(now);
        let mut listed_iter = listed.iter();
        for &k in BY_NAME.iter() {
            let ks = &self.keys[k];
            let holder = ks.live(now).map(|h| (OWNERS[h.owner], h.token, h.expires_at.saturating_since(now)));
            if holder.is_none() && ks.queue.is_empty() {
                continue;
            }
            let info = listed_iter.next().unwrap_or_else(|| {
                panic!(
                    "model: after {op:?} list() leaves out {} (holder {holder:?}, {} waiters)",
                    KEYS[k],
                    ks.queue.len()
                )
            });
            assert_eq!(&*info.key, KEYS[k], "model: after {op:?} list() has another key where {} belongs", KEYS[k]);
            let actual = info.holder.as_ref().map(|h| (&*h.owner, h.token, h.expires_in));
            assert_eq!(
                actual, holder,
                "G7 stale calls / model: after {op:?} list() reports another holder of {}",
                KEYS[k]
            );
            assert_eq!(
                info.waiters as usize,
                ks.queue.len(),
                "model: after {op:?} list() counts other waiters on {}",
                KEYS[k]
            );
        }
        if let Some(extra) = listed_iter.next() {
            panic!("model: after {op:?} list() reports {extra:?}, which the model knows as free");
        }
        for &k in &self.touched {
            let info: LockInfo = self.table.get(KEYS[k], now);
            let from_list = listed.iter().find(|i| &*i.key == KEYS[k]).cloned();
            let empty = LockInfo { key: info.key.clone(), holder: None, waiters: 0 };
            assert_eq!(info, from_list.unwrap_or(empty), "model: after {op:?} get({}) disagrees with list()", KEYS[k]);
        }
        assert_eq!(self.table.held_leases(), self.held(), "model: lease count after {op:?}");
    }

    /// G3: a host that wakes at `wake_by` (= `next_deadline()`) misses no
    /// lease expiry, wait deadline or end of a grant hold.
    fn check_deadline_covers_every_deadline(&self, op: &Op) {
        let earliest = self
            .keys
            .iter()
            .flat_map(|k| k.holder.as_ref().map(|h| h.expires_at).into_iter().chain(k.queue.iter().map(|w| w.until)))
            .chain(self.resume_at.filter(|_| !self.resumed))
            .min();
        let next = self.table.next_deadline();
        assert_eq!(self.wake_by, next, "G3 expiry: after {op:?} the last drain's wake_by is not next_deadline()");
        if let Some(earliest) = earliest {
            assert!(
                next.is_some_and(|n| n <= earliest),
                "G3 expiry: after {op:?} next_deadline is {next:?}, later than the earliest deadline {earliest:?}"
            );
        }
    }

    /// G4 liveness: a free key does not keep a live waiter queued, unless
    /// grants are held back or every lease allowed is in use.
    fn check_queues_are_served(&self, op: &Op) {
        if self.resume_at.is_some() && !self.resumed || self.held() >= self.config.max_leases {
            return;
        }
        for (k, ks) in self.keys.iter().enumerate() {
            if ks.holder.is_none() {
                if let Some(w) = ks.queue.iter().find(|w| w.until > self.now) {
                    panic!(
                        "G4 FIFO: after {op:?} {} is free ({} of {} leases held) but waiter {} (until {:?}) is still queued at {:?}",
                        KEYS[k],
                        self.held(),
                        self.config.max_leases,
                        w.mid,
                        w.until,
                        self.now
                    );
                }
            }
        }
    }
}
