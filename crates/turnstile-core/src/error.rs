//! [`CoreError`]: why the table refused an operation, with structured fields.

use std::time::Duration;

/// Why an operation was refused. Each refusal leaves the table unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The key's FIFO queue already holds the maximum number of waiters.
    #[error("key {key:?} already has {limit} waiters (max waiters per key)")]
    TooManyWaiters {
        /// The key whose queue is full.
        key: String,
        /// The configured maximum.
        limit: usize,
    },
    /// Granting would exceed the maximum number of leases held at once.
    #[error("{limit} leases are held already (max leases)")]
    TooManyLeases {
        /// The configured maximum.
        limit: usize,
    },
    /// No live lease matches the key and fencing token (expired, released, or
    /// passed on to a newer holder).
    #[error("no live lease on key {key:?} with fencing token {token}")]
    LeaseNotFound {
        /// The key asked about.
        key: String,
        /// The token asked about.
        token: u64,
    },
    /// Grants are held back after a crash until the lease horizon passes, so
    /// that no lease granted before the crash can overlap a new one.
    #[error("recovering after a restart: grants resume in {remaining:?}")]
    Recovering {
        /// Time left until grants resume.
        remaining: Duration,
    },
}
