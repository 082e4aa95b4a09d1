//! The memory backend: the core lock table in this process, split into
//! shards by key hash, each a `std::sync::Mutex<LockTable>` with its own
//! expiry task; restart-safe through [`DurableState`].
//!
//! Why sharded std mutexes rather than a concurrent map: an operation touches
//! a key, its FIFO queue and the shard's timer wheel together, and must do so
//! atomically; a per-shard mutex gives that in one uncontended lock, held for
//! a few hundred nanoseconds and never across an `.await`.
//!
//! Waiters park on a oneshot channel that the table keeps as the waiter's
//! payload; whoever produces the [`Effect`] that answers it sends on it after
//! unlocking. Nobody polls.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use turnstile_core::{
    AcquireArgs, Acquired, Counters, Effect, Lease, LockInfo, LockTable, Ready, TableConfig, Time, Wait, WaiterId,
};

use super::durable::{DurableState, Tuning};
use super::{AcquireOutcome, AcquireRequest, Backend, ForceReleased, Grant, TtlBounds, WaiterSlots};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::BackendError;
use crate::telemetry::Metrics;

/// What a parked waiter is answered with.
#[derive(Debug)]
enum Answer {
    /// Granted, when the lease before it ended at the instant given.
    Granted(Lease, Time),
    Shared(Arc<[u8]>),
    TimedOut(LockInfo),
    Closed,
}

type Reply = oneshot::Sender<Answer>;

struct Shard {
    table: Mutex<LockTable<Reply>>,
    /// Wakes the expiry task when a timer earlier than `next_wake` appears.
    wake: Notify,
    /// The instant (nanos) the expiry task sleeps until; `u64::MAX` when idle.
    next_wake: AtomicU64,
}

struct Inner {
    shards: Box<[Shard]>,
    hasher: RandomState,
    counters: Arc<Counters>,
    clock: Clock,
    durable: Option<Arc<DurableState>>,
    closed: AtomicBool,
    bounds: TtlBounds,
    recovering_until: Option<Time>,
    /// Keys held back after a crash, and until when.
    key_holds: Vec<Time>,
    metrics: Arc<Metrics>,
    /// Waiters parked across all keys (`--max-waiters`).
    waiter_slots: Arc<WaiterSlots>,
}

/// The embedded lock table. Dropping it stops its expiry tasks.
pub struct MemoryBackend {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for MemoryBackend {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl MemoryBackend {
    /// Opens the data dir (if any), restores a snapshot or enters recovery,
    /// and starts one expiry task per shard. Must run inside a tokio runtime.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        Self::start_with_clock(config, metrics, Clock::new())
    }

    /// [`MemoryBackend::start`] on a given clock (tests drive it with tokio's
    /// paused time and a virtual wall clock).
    pub fn start_with_clock(config: &Config, metrics: Arc<Metrics>, clock: Clock) -> std::io::Result<Self> {
        let (durable, recovered) = match config.state_dir() {
            Some(dir) => {
                let tuning = Tuning {
                    token_block: config.token_block,
                    horizon_step: config.horizon_step,
                    long_lease: config.long_lease,
                    max_long_leases: config.max_long_leases,
                };
                let (d, mut r) = DurableState::open(dir, tuning, clock)?;
                if config.override_recovery && (r.grants_resume_at.is_some() || !r.key_holds.is_empty()) {
                    tracing::warn!(
                        keys = r.key_holds.len(),
                        "--override-recovery: granting at once after a crash, although leases granted before it may still be live; tokens still continue above every token issued before"
                    );
                    r.grants_resume_at = None;
                    r.key_holds.clear();
                }
                (Some(d), Some(r))
            }
            None => {
                tracing::warn!("running WITHOUT a data dir: mutual exclusion (G1) and fencing (G2) hold only within this process lifetime; a restart may reuse tokens and grant keys whose old holders still believe they hold them");
                (None, None)
            }
        };
        let now = clock.now();
        let counters = Arc::new(Counters::new(recovered.as_ref().map_or(1, |r| r.first_token)));
        let table_config =
            TableConfig { max_waiters_per_key: config.max_waiters_per_key, max_leases: config.max_leases };
        let recovering_until = recovered.as_ref().and_then(|r| r.grants_resume_at);
        let shards: Box<[Shard]> = (0..config.shards)
            .map(|_| {
                let mut table = LockTable::new(table_config, counters.clone(), now);
                if let Some(t) = recovering_until {
                    table.hold_grants_until(t);
                }
                Shard { table: Mutex::new(table), wake: Notify::new(), next_wake: AtomicU64::new(u64::MAX) }
            })
            .collect();
        let inner = Arc::new(Inner {
            shards,
            hasher: RandomState::new(),
            counters,
            clock,
            durable,
            closed: AtomicBool::new(false),
            bounds: TtlBounds { min: config.min_ttl, max: config.max_ttl },
            recovering_until,
            key_holds: recovered.as_ref().map(|r| r.key_holds.iter().map(|(_, t)| *t).collect()).unwrap_or_default(),
            metrics,
            waiter_slots: WaiterSlots::new(config.max_waiters),
        });
        if let Some(r) = recovered {
            let mut restored = 0;
            for lease in &r.leases {
                restored += usize::from(inner.lock(inner.shard_of(&lease.key)).restore(lease, now));
            }
            if restored > 0 {
                tracing::info!(leases = restored, "restored leases from the shutdown snapshot");
            }
            for (key, until) in &r.key_holds {
                inner.lock(inner.shard_of(key)).hold_key_until(key, *until, now);
            }
            if let Some((key, until)) = r.key_holds.iter().max_by_key(|(_, until)| *until) {
                tracing::warn!(
                    keys = r.key_holds.len(),
                    longest = %key,
                    seconds = until.saturating_since(now).as_secs_f64().ceil(),
                    "keys whose long leases may outlive the crash are held back until those leases end"
                );
            }
            if let Some(until) = r.grants_resume_at {
                tracing::warn!(
                    seconds = until.saturating_since(now).as_secs_f64().ceil(),
                    "the previous process did not shut down cleanly: no lease is granted until every lease it may have granted has expired"
                );
            }
        }
        let tasks = (0..inner.shards.len()).map(|i| tokio::spawn(expiry_loop(inner.clone(), i))).collect();
        Ok(MemoryBackend { inner, tasks })
    }

    /// Leases held right now.
    pub fn leases_held(&self) -> usize {
        self.inner.counters.held_leases()
    }

    /// Writes of the state file since start (0 without a data dir).
    pub fn state_writes(&self) -> u64 {
        self.inner.durable.as_ref().map_or(0, |d| d.writes())
    }
}

impl Inner {
    /// Counts a hold that a release or a force release just ended.
    fn observe_hold(&self, held: Option<Duration>) {
        if let Some(held) = held {
            self.metrics.hold_seconds.observe(held.as_secs_f64());
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % self.shards.len() as u64) as usize
    }

    /// Locks a shard. A poisoned lock means a panic inside the table; the
    /// table's operations leave it consistent between calls, so go on.
    fn lock(&self, idx: usize) -> MutexGuard<'_, LockTable<Reply>> {
        self.shards[idx].table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_open(&self) -> Result<(), BackendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BackendError::ShuttingDown);
        }
        Ok(())
    }

    /// Runs `op` on the shard of `key`, takes what the table hands back
    /// (effects, and the instant to wake by), tells the expiry task about an
    /// earlier wake-up, then carries the effects out unlocked. The table
    /// knows its earliest timer; nothing here re-derives it.
    fn with_table<T>(&self, idx: usize, op: impl FnOnce(&mut LockTable<Reply>, Time) -> T) -> T {
        let now = self.clock.now();
        let (out, ready) = {
            let mut table = self.lock(idx);
            let out = op(&mut table, now);
            (out, table.drain())
        };
        self.carry_out(idx, ready, now);
        out
    }

    /// Wakes the shard's task by `ready.wake_by` and carries out its effects.
    fn carry_out(&self, idx: usize, ready: Ready<Reply>, now: Time) {
        if let Some(t) = ready.wake_by {
            self.schedule(idx, t);
        }
        self.deliver(idx, ready.effects, now);
    }

    /// Makes sure the shard's expiry task wakes by `t`.
    fn schedule(&self, idx: usize, t: Time) {
        let shard = &self.shards[idx];
        if t.as_nanos() < shard.next_wake.fetch_min(t.as_nanos(), Ordering::AcqRel) {
            shard.wake.notify_one();
        }
    }

    /// Carries out effects. A grant whose waiter is gone is taken back and
    /// passes on at once (G6).
    fn deliver(&self, idx: usize, effects: Vec<Effect<Reply>>, ended_at: Time) {
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Granted { waiter, lease } => {
                    if let Err(Answer::Granted(lease, _)) = waiter.send(Answer::Granted(lease, ended_at)) {
                        self.metrics.grants_taken_back.inc();
                        let now = self.clock.now();
                        let ready = {
                            let mut table = self.lock(idx);
                            table.release(&lease.key, lease.token, None, now);
                            table.drain()
                        };
                        if let Some(t) = ready.wake_by {
                            self.schedule(idx, t);
                        }
                        queue.extend(ready.effects);
                    }
                }
                Effect::SharedResult { waiter, result } => {
                    let _ = waiter.send(Answer::Shared(result));
                }
                Effect::WaitTimedOut { waiter, current } => {
                    let _ = waiter.send(Answer::TimedOut(current));
                }
                Effect::Closed { waiter } => {
                    let _ = waiter.send(Answer::Closed);
                }
                Effect::Expired { lease } if lease.token == 0 => {
                    tracing::info!(key = %lease.key, "recovery hold ended: the key may be granted again");
                }
                Effect::Expired { lease } => {
                    self.metrics.leases_expired.inc();
                    self.metrics
                        .hold_seconds
                        .observe(lease.expires_at.saturating_since(lease.granted_at).as_secs_f64());
                    tracing::debug!(key = %lease.key, owner = %lease.owner, token = lease.token, "lease expired");
                }
            }
        }
    }

    /// Whether extending a lease with `token` to `expires` needs nothing
    /// written first (no data dir, or the persisted state covers it).
    fn is_durable(&self, lease: &Lease) -> bool {
        self.durable.as_ref().is_none_or(|d| d.covers(lease))
    }

    /// Extends a lease only once the extension is durable, so that a failed
    /// state write changes nothing (no half-applied renew, G8). `step` runs
    /// under the shard lock: it either applies the extension, or, when the
    /// state file must move first, names the token and expiry to persist; the
    /// write happens unlocked and the step is tried again. The horizon is
    /// pushed a whole step beyond, so the second try is covered.
    async fn extend_durably<T>(
        &self,
        idx: usize,
        mut step: impl FnMut(&mut LockTable<Reply>, Time) -> Result<Extend<T>, BackendError>,
    ) -> Result<T, BackendError> {
        for _ in 0..3 {
            match self.with_table(idx, &mut step)? {
                Extend::Done(out) => return Ok(out),
                Extend::Persist(lease) => self.make_durable(&lease).await?,
            }
        }
        Err(BackendError::Unavailable { reason: "the lease horizon could not be kept ahead of the clock".into() })
    }

    /// Persists what the grant or renew of `lease` needs before the client
    /// learns of it.
    async fn make_durable(&self, lease: &Lease) -> Result<(), BackendError> {
        match &self.durable {
            Some(d) => Ok(d.ensure(lease).await?),
            _ => Ok(()),
        }
    }

    /// Hands a new grant to the caller once it is durable; if that fails or
    /// the caller goes away meanwhile, the lease is released again.
    async fn hand_over(self: &Arc<Self>, idx: usize, lease: Lease) -> Result<AcquireOutcome, BackendError> {
        let mut guard = ReleaseOnDrop { inner: self, idx, lease: Some(lease.clone()) };
        self.make_durable(&lease).await?;
        guard.lease = None;
        Ok(AcquireOutcome::Acquired(grant(&lease)))
    }
}

/// One try of [`Inner::extend_durably`].
enum Extend<T> {
    /// Applied (or nothing to extend); the answer.
    Done(T),
    /// Not applied: persist this lease (as the extension would make it)
    /// first, then try again.
    Persist(Lease),
}

/// How long the lease on `key` (with `token`, when given) has been held,
/// read just before it is ended.
fn held_for(t: &LockTable<Reply>, key: &str, token: Option<u64>, now: Time) -> Option<Duration> {
    t.holder_lease(key, now)
        .filter(|l| token.is_none_or(|tk| l.token == tk))
        .map(|l| now.saturating_since(l.granted_at))
}

fn grant(lease: &Lease) -> Grant {
    Grant { key: lease.key.clone(), owner: lease.owner.clone(), token: lease.token, ttl: lease.ttl }
}

/// Releases a grant the caller never received.
struct ReleaseOnDrop<'a> {
    inner: &'a Arc<Inner>,
    idx: usize,
    lease: Option<Lease>,
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.inner.metrics.grants_taken_back.inc();
            self.inner.with_table(self.idx, |t, now| t.release(&lease.key, lease.token, None, now));
        }
    }
}

/// Removes a parked waiter whose call went away (G6). If the waiter was
/// answered with a grant in the meantime, that grant is released.
struct QueueGuard<'a> {
    inner: &'a Arc<Inner>,
    idx: usize,
    key: &'a str,
    id: WaiterId,
    rx: oneshot::Receiver<Answer>,
    answered: bool,
    /// When it was queued (for the wait-time histogram).
    queued_at: Time,
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        let metrics = &self.inner.metrics;
        metrics.waiters.dec();
        metrics.wait_seconds.observe(self.inner.clock.now().saturating_since(self.queued_at).as_secs_f64());
        if self.answered {
            return;
        }
        let (key, id) = (self.key, self.id);
        let rx = &mut self.rx;
        // Closed first: an answer sent from now on fails and its sender takes
        // the grant back (`Inner::deliver`); one sent before is read below.
        rx.close();
        self.inner.with_table(self.idx, |t, now| {
            if !t.cancel(key, id, now) {
                // Already answered: a grant sent before we got here is ours to undo.
                if let Ok(Answer::Granted(lease, _)) = rx.try_recv() {
                    t.release(&lease.key, lease.token, None, now);
                }
            }
        });
        self.inner.metrics.waiters_cancelled.inc();
    }
}

async fn expiry_loop(inner: Arc<Inner>, idx: usize) {
    let shard = &inner.shards[idx];
    loop {
        let now = inner.clock.now();
        let (effects, next) = {
            let mut table = inner.lock(idx);
            table.tick(now);
            let Ready { effects, wake_by } = table.drain();
            // Stored under the lock, so an operation either sees this value
            // or inserted its timer before drain() looked.
            shard.next_wake.store(wake_by.map_or(u64::MAX, Time::as_nanos), Ordering::Release);
            (effects, wake_by)
        };
        inner.deliver(idx, effects, now);
        match next {
            Some(t) => {
                tokio::select! {
                    () = tokio::time::sleep_until(inner.clock.instant(t)) => {}
                    () = shard.wake.notified() => {}
                }
            }
            None => shard.wake.notified().await,
        }
    }
}

impl Backend for MemoryBackend {
    async fn acquire(&self, req: AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        let idx = inner.shard_of(&req.key);
        let args = AcquireArgs { key: &req.key, owner: &req.owner, ttl: req.ttl, share_result: req.share_result };
        let (mut payload, rx) = if req.wait.is_zero() {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        // A waiter's place among --max-waiters, taken before it is queued.
        let mut slot = None;
        let outcome = inner
            .extend_durably(idx, |t, now| {
                // Checked again under the shard lock: `close` answers this shard's
                // waiters under the same lock, so nothing is granted or queued
                // after it (and so after the shutdown snapshot).
                if inner.closed.load(Ordering::Acquire) {
                    return Err(BackendError::ShuttingDown);
                }
                // The owner's own lease is refreshed (G5) only once its new
                // expiry is durable: the refresh is never taken back.
                if let Some(own) = t.holder_lease(&req.key, now).filter(|l| *l.owner == *req.owner) {
                    let extended = Lease { ttl: req.ttl, expires_at: now + req.ttl, ..own };
                    if !inner.is_durable(&extended) {
                        return Ok(Extend::Persist(extended));
                    }
                }
                let mut full = false;
                let wait = payload.take().and_then(|payload| match inner.waiter_slots.take() {
                    Some(s) => {
                        slot = Some(s);
                        Some(Wait { until: now + req.wait, payload })
                    }
                    None => {
                        full = true;
                        None
                    }
                });
                match t.acquire(&args, wait, now) {
                    // Without room to park, only what needs no wait is done.
                    Ok(Acquired::Contended(_)) | Err(turnstile_core::CoreError::Recovering { .. }) if full => {
                        Err(inner.waiter_slots.exhausted())
                    }
                    r => r.map(Extend::Done).map_err(BackendError::from),
                }
            })
            .await;
        // Kept until this acquire returns: a queued waiter counts until answered.
        let _slot = slot;
        match outcome? {
            Acquired::Granted(lease) => {
                inner.metrics.acquired.inc();
                inner.hand_over(idx, lease).await
            }
            Acquired::Refreshed(lease) => {
                // Durable already (checked before it was applied); the owner
                // held the key before this call and still does.
                inner.metrics.acquired.inc();
                Ok(AcquireOutcome::Refreshed(grant(&lease)))
            }
            Acquired::Contended(info) => {
                inner.metrics.contended.inc();
                Ok(AcquireOutcome::NotAcquired(info))
            }
            Acquired::Queued(id) => {
                let Some(rx) = rx else { return Err(BackendError::ShuttingDown) }; // queued only when waiting
                inner.metrics.waiters.inc();
                let queued_at = inner.clock.now();
                let mut guard = QueueGuard { inner, idx, key: &req.key, id, rx, answered: false, queued_at };
                let answer = (&mut guard.rx).await;
                guard.answered = true;
                drop(guard); // no longer queued: counted out of the waiters now
                match answer {
                    Ok(Answer::Granted(lease, ended_at)) => {
                        inner
                            .metrics
                            .handoff_seconds
                            .observe(inner.clock.now().saturating_since(ended_at).as_secs_f64());
                        inner.metrics.acquired.inc();
                        inner.hand_over(idx, lease).await
                    }
                    Ok(Answer::Shared(result)) => {
                        inner.metrics.shared_results.inc();
                        let current = inner.lock(idx).get(&req.key, inner.clock.now());
                        Ok(AcquireOutcome::Shared { result: prost::bytes::Bytes::from_owner(result), current })
                    }
                    Ok(Answer::TimedOut(current)) => {
                        inner.metrics.wait_timeouts.inc();
                        Ok(AcquireOutcome::NotAcquired(current))
                    }
                    Ok(Answer::Closed) | Err(_) => Err(BackendError::ShuttingDown),
                }
            }
        }
    }

    async fn renew(&self, key: String, token: u64, ttl: Option<Duration>) -> Result<Grant, BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        let idx = inner.shard_of(&key);
        let lease = inner
            .extend_durably(idx, |t, now| {
                // Under the shard lock, as in `acquire`: no lease is extended past
                // what the shutdown snapshot records.
                if inner.closed.load(Ordering::Acquire) {
                    return Err(BackendError::ShuttingDown);
                }
                // Applied only once durable: a failed write changes nothing.
                if let Some(l) = t.holder_lease(&key, now).filter(|l| l.token == token) {
                    let ttl = ttl.unwrap_or(l.ttl);
                    let extended = Lease { ttl, expires_at: now + ttl, ..l };
                    if !inner.is_durable(&extended) {
                        return Ok(Extend::Persist(extended));
                    }
                }
                t.renew(&key, token, ttl, now).map(Extend::Done).map_err(BackendError::from)
            })
            .await?;
        Ok(grant(&lease))
    }

    async fn release(
        &self,
        key: String,
        token: u64,
        result: Option<prost::bytes::Bytes>,
    ) -> Result<bool, BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        let idx = inner.shard_of(&key);
        // One copy per release, into the table; waiters share it.
        let result: Option<Arc<[u8]>> = result.map(|r| Arc::from(&r[..]));
        let (released, held) = inner.with_table(idx, |t, now| {
            let held = held_for(t, &key, Some(token), now);
            (t.release(&key, token, result, now), held)
        });
        if released {
            inner.observe_hold(held);
        }
        Ok(released)
    }

    async fn force_release(&self, key: String, token: Option<u64>) -> Result<ForceReleased, BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        let idx = inner.shard_of(&key);
        // Nothing to persist: the ended lease's coverage on disk (horizon or
        // long-lease log) only ever holds the key back longer after a crash,
        // and the next waiter's grant is made durable before it is answered.
        let (released, previous, held) = inner.with_table(idx, |t, now| {
            let held = held_for(t, &key, token, now);
            let (released, previous) = t.force_release(&key, token, now);
            (released, previous, held)
        });
        if released {
            inner.observe_hold(held);
        }
        Ok(ForceReleased { released, previous })
    }

    async fn get(&self, key: String) -> Result<LockInfo, BackendError> {
        let inner = &self.inner;
        let idx = inner.shard_of(&key);
        Ok(inner.lock(idx).get(&key, inner.clock.now()))
    }

    async fn list(&self, prefix: String, after: Option<String>, limit: usize) -> Result<Vec<LockInfo>, BackendError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut all = Vec::new();
        for idx in 0..inner.shards.len() {
            all.extend(inner.lock(idx).list(&prefix, after.as_deref(), limit, now));
        }
        all.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        all.truncate(limit);
        Ok(all)
    }

    fn ttl_bounds(&self) -> TtlBounds {
        self.inner.bounds
    }

    fn degraded(&self) -> Option<String> {
        let inner = &self.inner;
        let now = inner.clock.now();
        if let Some(left) = self.recovery_left() {
            return Some(format!("recovering after a crash: grants resume in {} s", crate::error::ceil_secs(left)));
        }
        let held = self.keys_held_back();
        let last = inner.key_holds.iter().max().filter(|t| **t > now)?;
        Some(format!(
            "{held} key(s) held back after a crash until their long leases end, the last in {} s",
            crate::error::ceil_secs(last.saturating_since(now))
        ))
    }

    fn recovery_left(&self) -> Option<Duration> {
        let now = self.inner.clock.now();
        self.inner.recovering_until.filter(|t| *t > now).map(|t| t.saturating_since(now))
    }

    fn keys_held_back(&self) -> usize {
        let now = self.inner.clock.now();
        self.inner.key_holds.iter().filter(|t| **t > now).count()
    }

    fn state_writes(&self) -> u64 {
        MemoryBackend::state_writes(self)
    }

    fn unready(&self) -> Option<String> {
        if let Some(why) = self.inner.durable.as_ref().and_then(|d| d.write_error()) {
            return Some(format!(
                "the data dir is not writable ({why}): grants and renews that need a state write are refused"
            ));
        }
        self.recovery_left().map(|left| {
            format!(
                "recovering after a crash: no lease is granted on any key for {} s (reads and renews are answered)",
                crate::error::ceil_secs(left)
            )
        })
    }

    fn close(&self) {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        for idx in 0..inner.shards.len() {
            inner.with_table(idx, |t, _| t.close_waiters());
        }
    }

    async fn shutdown(&self) -> Result<(), BackendError> {
        let inner = &self.inner;
        let Some(durable) = &inner.durable else { return Ok(()) };
        let now = inner.clock.now();
        let mut leases = Vec::with_capacity(inner.counters.held_leases());
        for idx in 0..inner.shards.len() {
            leases.extend(inner.lock(idx).leases(now));
        }
        // Stopped while still recovering from a crash: the next start owes
        // the rest of the hold (leases the crashed process granted may live).
        let hold = inner.recovering_until.filter(|t| *t > now);
        let n = durable.write_snapshot(leases, hold).await?;
        tracing::info!(leases = n, "wrote the shutdown snapshot");
        Ok(())
    }
}
