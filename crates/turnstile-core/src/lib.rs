//! The turnstile lock table: keys, leases, fencing tokens, FIFO waiters,
//! expiry and shared results, as a synchronous state machine.
//!
//! The table does no I/O and reads no clock: every operation takes `now` as a
//! [`Time`], changes the table, and leaves [`Effect`]s (a waiter granted, a
//! shared result delivered, a lease expired) for the host to carry out. The
//! host takes both with [`LockTable::drain`] (effects plus the instant to
//! wake by) and calls [`LockTable::tick`] at that instant. This keeps
//! every guarantee testable with explicit instants.
//!
//! # Layout
//! - `table`: [`LockTable`], the operations.
//! - `key`: a key's name, inline when short.
//! - `store`: the keys' state in one slab reached by handle, with an ordered
//!   index by name whose emptied keys are swept out lazily.
//! - `shared`: [`TableConfig`] and the [`Counters`] shared by the shards of
//!   one coordinator (the fencing-token sequence, the lease count).
//! - `wheel`: the hashed timing wheel behind expiry, its timers nodes in one
//!   slab; cost per timer does not grow with the number of timers.
//! - `types`: [`Lease`], [`LockInfo`], [`Acquired`], [`Effect`] and friends.
//! - `time`: [`Time`], an instant on the host's monotonic clock.
//! - `error`: [`CoreError`].
//!
//! # Example
//! ```
//! use std::{sync::Arc, time::Duration};
//! use turnstile_core::*;
//!
//! let mut table: LockTable<&str> = LockTable::new(TableConfig::default(), Arc::new(Counters::new(1)), Time::ZERO);
//! let ttl = Duration::from_secs(1);
//! let args = |owner| AcquireArgs { key: "payment:42", owner, ttl, share_result: false };
//! let Ok(Acquired::Granted(lease)) = table.acquire(&args("a"), None, Time::ZERO) else { panic!() };
//! // "b" waits in the queue; "a" releases and "b" is granted at once, with a greater token.
//! let wait = Wait { until: Time::from_millis(500), payload: "b's reply channel" };
//! assert!(matches!(table.acquire(&args("b"), Some(wait), Time::ZERO), Ok(Acquired::Queued(_))));
//! assert!(table.release("payment:42", lease.token, None, Time::from_millis(10)));
//! let effects: Vec<_> = table.drain_effects().collect();
//! match effects.into_iter().next() {
//!     Some(Effect::Granted { waiter, lease: next }) => {
//!         assert_eq!(waiter, "b's reply channel");
//!         assert!(next.token > lease.token);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

mod error;
mod key;
mod shared;
mod store;
mod table;
mod time;
mod types;
mod wheel;

pub use error::CoreError;
pub use shared::{Counters, TableConfig};
pub use table::{LockTable, Ready, Wait, RECOVERY_OWNER};
pub use time::Time;
pub use types::{AcquireArgs, Acquired, Effect, HolderInfo, Lease, LockInfo, WaiterId};
