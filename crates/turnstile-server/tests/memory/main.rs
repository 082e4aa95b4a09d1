//! The memory backend in-process, under tokio's paused clock: expiry
//! wake-ups, wait deadlines and the restart and recovery states, driven
//! deterministically and fast. Every instant asserted here is virtual time,
//! so a busy machine cannot make a test late.

mod model;
mod restart;
mod timers;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use turnstile_server::backend::memory::MemoryBackend;
use turnstile_server::backend::{AcquireOutcome, AcquireRequest, Backend, Grant};
use turnstile_server::clock::Clock;
use turnstile_server::config::Config;
use turnstile_server::telemetry::Metrics;

/// A memory backend with `args` (flags of turnstiled) on `clock`.
pub(crate) fn backend(args: &[&str], clock: Clock) -> std::io::Result<MemoryBackend> {
    let config = Config::parse_from(std::iter::once("turnstiled").chain(args.iter().copied()));
    MemoryBackend::start_with_clock(&config, Arc::new(Metrics::new()), clock)
}

/// An acquire request.
pub(crate) fn req(key: &str, owner: &str, ttl: Duration, wait: Duration) -> AcquireRequest {
    AcquireRequest { key: key.into(), owner: owner.into(), ttl, wait, share_result: false }
}

/// Acquires and expects a grant.
pub(crate) async fn must_acquire(b: &MemoryBackend, r: AcquireRequest) -> Grant {
    match b.acquire(r.clone()).await {
        Ok(AcquireOutcome::Acquired(g) | AcquireOutcome::Refreshed(g)) => g,
        other => panic!("expected a grant of {r:?}, got {other:?}"),
    }
}

/// Waits, in virtual time, until `key` has `n` waiters.
pub(crate) async fn await_waiters(b: &MemoryBackend, key: &str, n: u32) {
    for _ in 0..10_000 {
        if b.get(key.into()).await.expect("get").waiters == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{key} never had {n} waiters");
}
