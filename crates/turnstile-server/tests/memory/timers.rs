//! Expiry wake-ups and wait deadlines of the memory backend's shard tasks.

use std::time::Duration;

use tokio::time::Instant;
use turnstile_server::backend::memory::MemoryBackend;
use turnstile_server::backend::{AcquireOutcome, Backend};
use turnstile_server::clock::Clock;

use crate::{await_waiters, backend, must_acquire, req};

/// A step of the holder that shortens its lease on `k` (token given).
type Shorten = fn(std::sync::Arc<MemoryBackend>, u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// A holds `k` for 20 s while B waits (8 s); `shorten` cuts A's lease to
/// 300 ms. B must be granted at the new expiry, to the virtual millisecond.
async fn waiter_granted_at_the_shortened_expiry(shorten: Shorten) {
    let b = std::sync::Arc::new(backend(&["--data-dir", ""], Clock::new()).expect("start"));
    let a = must_acquire(&b, req("k", "a", Duration::from_secs(20), Duration::ZERO)).await;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let out = b.acquire(req("k", "b", Duration::from_secs(20), Duration::from_secs(8))).await;
            (out, Instant::now())
        })
    };
    await_waiters(&b, "k", 1).await;
    let shortened_at = Instant::now();
    shorten(b.clone(), a.token).await;
    let (out, granted_at) = waiter.await.expect("waiter task");
    let Ok(AcquireOutcome::Acquired(g)) = out else { panic!("the waiter was not granted: {out:?}") };
    assert!(g.token > a.token, "G2");
    let after = granted_at - shortened_at;
    assert!(
        after >= Duration::from_millis(300) && after <= Duration::from_millis(302),
        "granted {after:?} after the lease was cut to 300 ms, not at the new expiry"
    );
}

/// G3 after a shorter refresh (issue 9, defect 1): the holder re-acquires
/// its own key (G5) with a TTL shorter than the one it held, while a waiter
/// is parked. The waiter is granted when the new, earlier expiry passes, not
/// when the shard's task happens to wake for an older deadline.
#[tokio::test(start_paused = true)]
async fn g3_a_refresh_to_a_shorter_ttl_grants_the_waiter_at_the_new_expiry() {
    waiter_granted_at_the_shortened_expiry(|b, token| {
        Box::pin(async move {
            let again = must_acquire(&b, req("k", "a", Duration::from_millis(300), Duration::ZERO)).await;
            assert_eq!(again.token, token, "G5: the same lease, refreshed");
        })
    })
    .await;
}

/// G3 after a shorter renew: the same rule through Renew.
#[tokio::test(start_paused = true)]
async fn g3_a_renew_to_a_shorter_ttl_grants_the_waiter_at_the_new_expiry() {
    waiter_granted_at_the_shortened_expiry(|b, token| {
        Box::pin(async move {
            b.renew("k".into(), token, Some(Duration::from_millis(300))).await.expect("renew");
        })
    })
    .await;
}

/// A waiter's wait ends at its deadline, and a lease at its expiry, each
/// to the millisecond of virtual time, also past one wheel revolution.
#[tokio::test(start_paused = true)]
async fn waits_and_leases_end_on_time_across_wheel_revolutions() {
    let b = std::sync::Arc::new(backend(&["--data-dir", ""], Clock::new()).expect("start"));
    let start = Instant::now();
    must_acquire(&b, req("k", "a", Duration::from_secs(9), Duration::ZERO)).await;
    let out = b.acquire(req("k", "b", Duration::from_secs(1), Duration::from_millis(4_500))).await;
    assert!(matches!(out, Ok(AcquireOutcome::NotAcquired(_))), "{out:?}");
    let waited = Instant::now() - start;
    assert!(waited >= Duration::from_millis(4_500) && waited <= Duration::from_millis(4_502), "{waited:?}");
    let out = b.acquire(req("k", "c", Duration::from_secs(1), Duration::from_secs(60))).await;
    assert!(matches!(out, Ok(AcquireOutcome::Acquired(_))), "{out:?}");
    let granted = Instant::now() - start;
    assert!(granted >= Duration::from_secs(9) && granted <= Duration::from_millis(9_002), "{granted:?}");
}

/// `turnstile_hold_seconds` measures each lease from its grant to its end:
/// to the release for one released, to the expiry for one that ran out, to
/// the force release for one an operator ended.
#[tokio::test(start_paused = true)]
async fn hold_time_runs_from_the_grant_to_the_release_or_the_expiry() {
    use clap::Parser;
    let config = turnstile_server::config::Config::parse_from(["turnstiled", "--data-dir", ""]);
    let metrics = std::sync::Arc::new(turnstile_server::telemetry::Metrics::new());
    let b = MemoryBackend::start_with_clock(&config, metrics.clone(), Clock::new()).expect("start");
    let released = must_acquire(&b, req("released", "a", Duration::from_secs(10), Duration::ZERO)).await;
    must_acquire(&b, req("expired", "a", Duration::from_secs(1), Duration::ZERO)).await;
    must_acquire(&b, req("stuck", "a", Duration::from_secs(60), Duration::ZERO)).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await; // virtual time: the holder works 2.5 s
    assert!(b.release("released".into(), released.token, None).await.expect("release"));
    assert!(b.force_release("stuck".into(), None).await.expect("force release").released);
    let text = metrics.encode_text();
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
    };
    assert_eq!(value("turnstile_hold_seconds_count "), 3.0, "a release, an expiry and a force release");
    let sum = value("turnstile_hold_seconds_sum ");
    assert!((6.0..6.01).contains(&sum), "held 2.5 s, 1 s until expired and 2.5 s, summed {sum}");
}
