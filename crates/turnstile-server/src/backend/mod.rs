//! The [`Backend`] contract every store of lock state keeps (G1–G8 of
//! docs/design.md), and the validated, protocol-free types it speaks.
//!
//! Handlers validate requests (see [`crate::validate`]) before calling a
//! backend, so a backend may assume keys, owners and durations are in range.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::bytes::Bytes;

pub use turnstile_core::{HolderInfo, LockInfo};

use crate::error::BackendError;

pub mod durable;
pub mod etcd;
pub mod memory;

/// A validated acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    /// The key (1–512 bytes, no control characters).
    pub key: String,
    /// The owner (1–256 bytes).
    pub owner: String,
    /// TTL to grant, already clamped to the backend's bounds.
    pub ttl: Duration,
    /// How long to wait in the queue; zero means try once.
    pub wait: Duration,
    /// Accept the holder's released result instead of the lock while waiting.
    pub share_result: bool,
}

/// A granted lease, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The key.
    pub key: Arc<str>,
    /// The owner.
    pub owner: Arc<str>,
    /// The fencing token.
    pub token: u64,
    /// The TTL granted.
    pub ttl: Duration,
}

/// How an acquire ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// Granted: a new lease. If its reply never reaches the client, the
    /// service takes it back (releases it).
    Acquired(Grant),
    /// The caller already held the key: its own lease, refreshed (G5). Never
    /// taken back, since the owner counts on the lease it held before.
    Refreshed(Grant),
    /// Not granted: held by someone else (try-lock), or the wait timed out.
    NotAcquired(LockInfo),
    /// The holder released with a result, handed to this `share_result` waiter.
    Shared {
        /// The holder's result: one buffer shared by every waiter it is handed to.
        result: Bytes,
        /// The key's state after the release.
        current: LockInfo,
    },
}

/// How a force release ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceReleased {
    /// Whether a live lease was ended by this call.
    pub released: bool,
    /// The key's state just before: the lease ended, when one was.
    pub previous: LockInfo,
}

/// Waiters parked at once across all keys, at most a limit (`--max-waiters`):
/// a backend takes a [`WaiterSlot`] before it parks a waiter and refuses the
/// wait with [`BackendError::TooManyWaiters`] when none is left.
#[derive(Debug)]
pub struct WaiterSlots {
    parked: AtomicUsize,
    limit: usize,
}

impl WaiterSlots {
    /// Room for `limit` parked waiters.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(WaiterSlots { parked: AtomicUsize::new(0), limit })
    }

    /// A slot for one parked waiter, or `None` when `limit` are parked.
    pub fn take(self: &Arc<Self>) -> Option<WaiterSlot> {
        self.parked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.limit).then_some(n + 1))
            .ok()
            .map(|_| WaiterSlot(self.clone()))
    }

    /// Waiters parked now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The refusal when no slot is left.
    pub fn exhausted(&self) -> BackendError {
        BackendError::TooManyWaiters { limit: self.limit }
    }
}

/// One parked waiter's place among [`WaiterSlots`]; given back when dropped.
#[derive(Debug)]
pub struct WaiterSlot(Arc<WaiterSlots>);

impl Drop for WaiterSlot {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::AcqRel);
    }
}

/// TTL bounds a backend can honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlBounds {
    /// Shortest TTL granted; shorter requests are raised to it.
    pub min: Duration,
    /// Longest TTL granted; longer requests are lowered to it.
    pub max: Duration,
}

/// A store of lock state. Every backend keeps G1–G8; the conformance suite
/// in `tests/` states them and runs against each backend unchanged.
///
/// Futures must be cancellation safe: dropping an `acquire` future (the
/// client went away) removes its waiter and never leaves it holding a lease.
pub trait Backend: Send + Sync + 'static {
    /// Grants, refreshes (same owner), waits in FIFO order, or reports the holder.
    fn acquire(&self, req: AcquireRequest) -> impl Future<Output = Result<AcquireOutcome, BackendError>> + Send;

    /// Extends the lease `(key, token)` by `ttl` (`None`: its granted TTL).
    /// A lease that ended is `BackendError::Core(CoreError::LeaseNotFound { .. })`.
    fn renew(
        &self,
        key: String,
        token: u64,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<Grant, BackendError>> + Send;

    /// Ends the lease `(key, token)`, handing `result` to sharing waiters.
    /// Returns false when it had already ended.
    fn release(
        &self,
        key: String,
        token: u64,
        result: Option<Bytes>,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// Ends the live lease on `key` whoever holds it (only the one with
    /// fencing token `token`, when given), exactly as if it had expired: the
    /// next waiter is granted, no waiter is handed a result, the old
    /// holder's renew is `LeaseNotFound`. A crash hold is never ended. A key
    /// without such a lease is `released: false`, not an error.
    fn force_release(
        &self,
        key: String,
        token: Option<u64>,
    ) -> impl Future<Output = Result<ForceReleased, BackendError>> + Send;

    /// The state of one key.
    fn get(&self, key: String) -> impl Future<Output = Result<LockInfo, BackendError>> + Send;

    /// Up to `limit` keys with `prefix`, after `after`, in ascending order.
    fn list(
        &self,
        prefix: String,
        after: Option<String>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LockInfo>, BackendError>> + Send;

    /// The TTL range this backend grants.
    fn ttl_bounds(&self) -> TtlBounds;

    /// A line for `/readyz` when the backend is not fully serving (e.g.
    /// recovering after a crash), or `None`.
    fn degraded(&self) -> Option<String>;

    /// After a crash, how long until grants resume on every key (`None`
    /// when they are not held back). gRPC health says NOT_SERVING meanwhile.
    fn recovery_left(&self) -> Option<Duration> {
        None
    }

    /// Keys held back after a crash because a long lease on them may still
    /// be live (each until that lease's end).
    fn keys_held_back(&self) -> usize {
        0
    }

    /// Writes of persisted state since start (where the backend has any).
    fn state_writes(&self) -> u64 {
        0
    }

    /// A line for `/readyz` when the backend cannot serve as it should (e.g.
    /// its state cannot be written): `/readyz` then answers 503. `None` when
    /// ready.
    fn unready(&self) -> Option<String> {
        None
    }

    /// Stops serving: refuses new calls with UNAVAILABLE and answers every
    /// waiter with UNAVAILABLE. Called first on graceful shutdown.
    fn close(&self);

    /// Final step of graceful shutdown, after in-flight calls have finished
    /// (the memory backend writes its snapshot here).
    fn shutdown(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
}
