//! Plain data the table hands out: [`Lease`], [`LockInfo`], the outcomes of
//! operations and the [`Effect`]s the host must carry out.

use std::sync::Arc;
use std::time::Duration;

use crate::Time;

/// One grant of a key to an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key the lease is on.
    pub key: Arc<str>,
    /// The owner holding it.
    pub owner: Arc<str>,
    /// Strictly greater than every token granted before it for this key.
    pub token: u64,
    /// The time to live granted (or last renewed with).
    pub ttl: Duration,
    /// When the lease ends unless renewed.
    pub expires_at: Time,
    /// When it was granted (renewals keep it; a lease restored from a
    /// snapshot counts from its restore). Hold time is measured from here.
    pub granted_at: Time,
}

/// A snapshot of one key's state, for inspection and for contended try-locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The key.
    pub key: Arc<str>,
    /// The live lease, if any.
    pub holder: Option<HolderInfo>,
    /// Number of queued waiters.
    pub waiters: u32,
}

/// The holder part of [`LockInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo {
    /// The holder's owner string.
    pub owner: Arc<str>,
    /// The holder's fencing token.
    pub token: u64,
    /// Time left on the lease at the instant of the snapshot.
    pub expires_in: Duration,
}

/// Identifies a queued waiter, for [`crate::LockTable::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaiterId(pub u64);

/// What an acquire asks for.
#[derive(Debug, Clone)]
pub struct AcquireArgs<'a> {
    /// The key (validated by the host).
    pub key: &'a str,
    /// The owner (validated by the host).
    pub owner: &'a str,
    /// The time to live to grant (already clamped by the host).
    pub ttl: Duration,
    /// While queued, accept the holder's released result instead of the lock.
    pub share_result: bool,
}

/// The immediate outcome of [`crate::LockTable::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Granted now: a new lease with a new fencing token.
    Granted(Lease),
    /// The caller already held the key: its own lease, same token, with the
    /// TTL refreshed from now (G5). Unlike a new grant, the host must not
    /// take it back if the reply cannot be delivered: the owner holds it.
    Refreshed(Lease),
    /// Held by someone else and the caller did not ask to wait.
    Contended(LockInfo),
    /// Queued; a later [`Effect`] answers the waiter.
    Queued(WaiterId),
}

/// Something the host must carry out after an operation: answering a parked
/// waiter, or noting that a lease ended. Drained with
/// [`crate::LockTable::drain_effects`].
#[derive(Debug)]
pub enum Effect<W> {
    /// A queued waiter was granted the lock.
    Granted {
        /// The waiter's payload.
        waiter: W,
        /// Its new lease.
        lease: Lease,
    },
    /// A queued `share_result` waiter receives the holder's released result.
    SharedResult {
        /// The waiter's payload.
        waiter: W,
        /// The bytes the holder released with.
        result: Arc<[u8]>,
    },
    /// A queued waiter reached its wait deadline without a grant.
    WaitTimedOut {
        /// The waiter's payload.
        waiter: W,
        /// The key's state at that moment.
        current: LockInfo,
    },
    /// A waiter removed because the table was closed (shutdown).
    Closed {
        /// The waiter's payload.
        waiter: W,
    },
    /// A lease ran out without renewal (for logs and metrics).
    Expired {
        /// The lease that ended.
        lease: Lease,
    },
}
