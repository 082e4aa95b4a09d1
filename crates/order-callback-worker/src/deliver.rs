//! One "order placed" delivery: the per-order lease, the simulated work, and
//! the one-transaction write of docs/design.md problem 3.

use std::time::Duration;

use serde::Serialize;
use turnstile_client::Client;

use crate::error::ApiError;
use crate::inflight::Inflight;
use crate::store::{self, Applied, Store, StoreError};

/// What the deliveries share.
#[derive(Clone)]
pub(crate) struct Worker {
    /// The orders database.
    pub(crate) store: Store,
    /// The turnstile client.
    pub(crate) client: Client,
    /// The longest wait for an order's lease.
    pub(crate) lock_wait: Duration,
    /// Simulated processing time under the lease, before the write.
    pub(crate) work_delay: Duration,
    /// Leases held right now.
    pub(crate) inflight: Inflight,
}

/// How a delivery that was accepted went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    /// The first delivery: statistics bumped, callback DONE.
    Counted,
    /// The callback was DONE already: acknowledged, nothing counted.
    Duplicate,
}

/// The answer to an accepted delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Delivered {
    /// The order.
    pub(crate) order_id: i64,
    /// What happened.
    pub(crate) outcome: Outcome,
    /// The fencing token of the lease it ran under.
    pub(crate) fencing_token: u64,
}

/// The lock key of an order.
pub(crate) fn lock_key(order_id: i64) -> String {
    format!("order:{order_id}")
}

/// Processes one delivery of the "order placed" callback for `order_id`.
///
/// Concurrent deliveries of the same order queue for its lease in turnstile
/// and are woken, in order, the moment it frees: no sleep-and-retry. The
/// lease expires if this worker dies holding it, so a crash cannot wedge the
/// order. The write (status check, statistics bump, DONE mark) is one SQLite
/// transaction whose first statement is the fenced claim of the order row.
///
/// There is deliberately no `guard.is_valid()` check before the write: the
/// process can stall between such a check and the write, so it would only
/// narrow the window. What closes it is the transaction: the DONE check and
/// the bump are one unit, so a delivery that lost its lease counts only if no
/// other delivery has counted, and the fence refuses it once a newer holder
/// has written (see [`crate::store`]).
pub(crate) async fn deliver(worker: Worker, order_id: i64) -> Result<Delivered, ApiError> {
    let key = lock_key(order_id);
    let guard = match worker.client.lock_timeout(&key, worker.lock_wait).await {
        Ok(guard) => guard,
        Err(turnstile_client::Error::Contended { expires_in, holder, .. }) => {
            tracing::warn!(order_id, ?holder, "lease still held after --lock-wait");
            return Err(ApiError::Busy { order_id, expires_in });
        }
        Err(e) => return Err(ApiError::LockUnavailable(e)),
    };
    let token = guard.fencing_token();
    let entry = worker.inflight.enter(order_id, token);
    tracing::info!(order_id, token, "lease held");
    let applied = work_and_write(&worker, order_id, token).await;
    drop(entry);
    if let Err(e) = guard.release().await {
        tracing::warn!(order_id, token, error = %e, "release failed; the lease ends at its ttl");
    }
    match applied? {
        Applied::Counted => {
            tracing::info!(order_id, token, "order counted");
            Ok(Delivered { order_id, outcome: Outcome::Counted, fencing_token: token })
        }
        Applied::Duplicate => {
            tracing::info!(order_id, token, "duplicate delivery: already counted");
            Ok(Delivered { order_id, outcome: Outcome::Duplicate, fencing_token: token })
        }
        Applied::NotCommitted => {
            tracing::info!(order_id, "order not committed yet: retry later");
            Err(ApiError::NotCommitted { order_id })
        }
        Applied::FencedOut { current } => {
            tracing::warn!(order_id, token, current, "fenced out: our lease passed to a newer holder; nothing written");
            Err(ApiError::FencedOut { order_id, token, current })
        }
    }
}

/// Under the lease: a cheap read first, so that a duplicate or an early
/// delivery skips the work; then the work; then the transaction, which checks
/// everything again and is the only thing that decides.
async fn work_and_write(worker: &Worker, order_id: i64, token: u64) -> Result<Applied, StoreError> {
    match worker.store.run(move |c| store::get_order(c, order_id)).await? {
        None => return Ok(Applied::NotCommitted),
        Some(order) if order.callback_status == store::DONE => return Ok(Applied::Duplicate),
        Some(_) => {}
    }
    if !worker.work_delay.is_zero() {
        // The simulated processing (--work-delay): the scenario, not a wait for a state.
        tokio::time::sleep(worker.work_delay).await;
    }
    worker.store.run(move |c| store::apply_callback(c, order_id, token)).await
}
