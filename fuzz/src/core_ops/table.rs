//! The adapter to `turnstile_core::LockTable`: the only place that calls the
//! table. Every operation hands back what the host would receive from it (its
//! outcome, plus the effects and wake-up instant of one `drain()`), so a
//! change of the table's API is absorbed here.

use std::sync::Arc;
use std::time::Duration;

use turnstile_core::{
    AcquireArgs, Acquired, CoreError, Counters, Effect, Lease, LockInfo, LockTable, TableConfig, Time, Wait, WaiterId,
};

/// What the host receives after one operation.
pub(crate) struct Drained {
    /// The effects the operation produced, oldest first.
    pub(crate) effects: Vec<Effect<u64>>,
    /// When the host must tick next.
    pub(crate) wake_by: Option<Time>,
}

/// The table under test; waiters carry the model's waiter number as payload.
pub(crate) struct Table {
    table: LockTable<u64>,
    counters: Arc<Counters>,
}

impl Table {
    pub(crate) fn new(config: TableConfig, start: Time) -> Self {
        let counters = Arc::new(Counters::new(1));
        Table { table: LockTable::new(config, counters.clone(), start), counters }
    }

    fn drain(&mut self) -> Drained {
        let ready = self.table.drain();
        Drained { effects: ready.effects, wake_by: ready.wake_by }
    }

    /// `wait`: until when, and the waiter's number.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn acquire(
        &mut self,
        key: &str,
        owner: &str,
        ttl: Duration,
        wait: Option<(Time, u64)>,
        share_result: bool,
        now: Time,
    ) -> (Result<Acquired, CoreError>, Drained) {
        let args = AcquireArgs { key, owner, ttl, share_result };
        let wait = wait.map(|(until, payload)| Wait { until, payload });
        let r = self.table.acquire(&args, wait, now);
        (r, self.drain())
    }

    pub(crate) fn renew(
        &mut self,
        key: &str,
        token: u64,
        ttl: Option<Duration>,
        now: Time,
    ) -> (Result<Lease, CoreError>, Drained) {
        let r = self.table.renew(key, token, ttl, now);
        (r, self.drain())
    }

    pub(crate) fn release(&mut self, key: &str, token: u64, result: Option<Arc<[u8]>>, now: Time) -> (bool, Drained) {
        let r = self.table.release(key, token, result, now);
        (r, self.drain())
    }

    pub(crate) fn cancel(&mut self, key: &str, waiter: WaiterId, now: Time) -> (bool, Drained) {
        let r = self.table.cancel(key, waiter, now);
        (r, self.drain())
    }

    pub(crate) fn tick(&mut self, now: Time) -> Drained {
        self.table.tick(now);
        self.drain()
    }

    pub(crate) fn hold_grants_until(&mut self, until: Time) -> Drained {
        self.table.hold_grants_until(until);
        self.drain()
    }

    pub(crate) fn next_deadline(&self) -> Option<Time> {
        self.table.next_deadline()
    }

    pub(crate) fn get(&self, key: &str, now: Time) -> LockInfo {
        self.table.get(key, now)
    }

    /// Every key held or with waiters, in key order.
    pub(crate) fn list_all(&self, now: Time) -> Vec<LockInfo> {
        self.table.list("", None, usize::MAX, now)
    }

    pub(crate) fn held_leases(&self) -> usize {
        self.counters.held_leases()
    }

    pub(crate) fn key_count(&self) -> usize {
        self.table.key_count()
    }
}
