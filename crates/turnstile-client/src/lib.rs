//! Client of the turnstile lock coordinator: leases on named keys with
//! fencing tokens, renewed in the background, with a signal the moment a
//! lease is lost.
//!
//! ```no_run
//! # async fn demo() -> Result<(), turnstile_client::Error> {
//! use std::time::Duration;
//! use turnstile_client::Client;
//!
//! let client = Client::builder("http://127.0.0.1:7700").ttl(Duration::from_secs(10)).connect().await?;
//!
//! // A guard: renewed about every ttl/3, released on drop.
//! let guard = client.lock("payment:42").await?;
//! tokio::select! {
//!     reason = guard.lost() => eprintln!("lost the lock: {reason}"),
//!     () = charge_card(guard.fencing_token()) => {}
//! }
//! drop(guard);
//!
//! // The same, in one call: the work is stopped if the lease is lost.
//! client.with_lock("payment:42", |token| charge_card(token)).await?;
//!
//! // The fetch lock: of many concurrent callers, one computes.
//! let value = client.fetch("report:today", || async { Ok::<_, std::io::Error>(b"42".to_vec()) }).await?;
//! # Ok(()) }
//! # async fn charge_card(_token: u64) {}
//! ```
//!
//! Each call needs a tokio runtime. The clock rule of docs/design.md holds
//! throughout: a lease is valid until the *send* time of its last successful
//! grant or renew plus its TTL, on the local monotonic clock.
//!
//! # Layout
//! - `client`: [`Client`], [`ClientBuilder`] (settings and their
//!   validation), and the inspection calls [`Client::get`], [`Client::list`],
//!   [`Client::release`].
//! - `rpc`: the one place where RPCs are sent: timeouts, bearer token,
//!   retries after a lost connection.
//! - `acquire`: [`Client::lock`], [`Client::try_lock`],
//!   [`Client::lock_timeout`], [`Client::with_lock`], and the acquire loop.
//! - `guard`: [`LockGuard`] and its renewal task.
//! - `fetch`: [`Client::fetch`] and [`Client::fetch_json`].
//! - `schedule`: the timing rules (validity, renew times, backoff) as pure
//!   functions.
//! - `info`: [`LockInfo`], [`Holder`], and conversions from the protocol types.
//! - `error`: [`Error`] and [`LostReason`].
//! - The `turnstile` binary (`src/bin/turnstile/`): the CLI.
//!
//! # Features
//! - `cli` (default): the `turnstile` binary and its dependencies (clap,
//!   humantime, libc). Library users may turn it off.
//! - `tls`: TLS to the coordinator (`ClientBuilder::tls`, `https://`
//!   addresses). Off by default.

mod acquire;
mod client;
mod error;
mod fetch;
mod guard;
mod human;
mod info;
mod rpc;
mod schedule;

pub use client::{Client, ClientBuilder};
pub use error::{Error, LostReason};
pub use guard::LockGuard;
pub use human::human_duration;
pub use info::{ForceReleased, Holder, LockInfo};

/// TLS settings types of the transport, for [`ClientBuilder::tls`].
#[cfg(feature = "tls")]
pub use tonic::transport::{Certificate, ClientTlsConfig, Identity};
