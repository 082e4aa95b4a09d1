//! LockGuard against a real turnstiled: renewal, the lost-lease signal
//! (coordinator killed, lease taken over), release on drop, and restarts.

mod common;

use std::time::{Duration, Instant};

use common::{client, client_at, eventually, restart_on, server, start_restartable, within};
use turnstile_client::{Error, LostReason};
use turnstile_testkit::TempDir;

/// Renewal: a guard holds its key for three times its TTL and more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_outlives_three_times_its_ttl_by_renewing() {
    let node = server();
    let ttl = Duration::from_millis(300);
    let (c, other) = (client(&node, ttl).await, client(&node, ttl).await);
    let guard = c.lock("renew:1").await.expect("lock");
    assert_eq!(guard.ttl(), ttl);
    // The scenario: hold the lock for well over 3 TTLs without doing anything.
    tokio::select! {
        reason = guard.lost() => panic!("lease lost while renewing: {reason}"),
        () = tokio::time::sleep(ttl * 4) => {}
    }
    assert!(guard.is_valid());
    let info = other.get("renew:1").await.expect("get");
    let holder = info.holder.expect("still held");
    assert_eq!((holder.owner.as_str(), holder.fencing_token), (guard.owner(), guard.fencing_token()));
    match other.try_lock("renew:1").await {
        Err(Error::Contended { holder, .. }) => assert_eq!(holder.as_deref(), Some(guard.owner())),
        other => panic!("expected Contended, got {other:?}"),
    }
    guard.release().await.expect("release");
    let next = other.try_lock("renew:1").await.expect("free after release");
    drop(next);
}

/// Clock rule: with the coordinator gone, lost() fires (NotRenewed) within
/// the TTL, and is_valid() agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_within_the_ttl_after_turnstiled_is_killed() {
    let node = server();
    let ttl = Duration::from_millis(600);
    let c = client(&node, ttl).await;
    let guard = c.lock("kill:1").await.expect("lock");
    let lost = guard.lost();
    node.kill();
    let killed = Instant::now();
    let reason = within(ttl * 3, "lost() after SIGKILL", lost).await;
    let after = killed.elapsed();
    assert_eq!(reason, LostReason::NotRenewed);
    assert!(after <= ttl + Duration::from_millis(100), "lost after {after:?}, ttl {ttl:?}");
    assert!(!guard.is_valid());
    assert_eq!(guard.valid_for(), Duration::ZERO);
    assert!(matches!(guard.release().await, Err(Error::LeaseLost { reason: LostReason::NotRenewed, .. })));
}

/// NOT_FOUND on renew: when the lease is ended by someone else and taken
/// over, lost() fires (Ended) within the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_within_the_ttl_after_the_lease_is_taken_over() {
    let node = server();
    let ttl = Duration::from_millis(900);
    let (c, other) = (client(&node, ttl).await, client(&node, ttl).await);
    let guard = c.lock("takeover:1").await.expect("lock");
    let lost = guard.lost();
    assert!(other.release("takeover:1", guard.fencing_token()).await.expect("admin release"));
    let taken = Instant::now();
    let thief = other.lock_timeout("takeover:1", Duration::from_secs(1)).await.expect("take over");
    assert!(thief.fencing_token() > guard.fencing_token());
    let reason = within(ttl * 2, "lost() after takeover", lost).await;
    assert_eq!(reason, LostReason::Ended);
    assert!(taken.elapsed() <= ttl, "lost after {:?}", taken.elapsed());
    assert!(!guard.is_valid());
    let err = guard.release().await.expect_err("lost lease");
    assert!(matches!(err, Error::LeaseLost { reason: LostReason::Ended, .. }), "{err:?}");
    assert!(thief.is_valid(), "the stale guard's release must not touch the new lease");
}

/// Drop releases: a waiter gets the key at once, far sooner than the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_releases_the_key() {
    let node = server();
    let ttl = Duration::from_secs(30);
    let (c, other) = (client(&node, ttl).await, client(&node, ttl).await);
    let guard = c.lock("drop:1").await.expect("lock");
    let waiter = tokio::spawn({
        let other = other.clone();
        async move { other.lock_timeout("drop:1", Duration::from_secs(20)).await }
    });
    eventually(Duration::from_secs(5), "the waiter is queued", || async {
        (other.get("drop:1").await.ok()?.waiters == 1).then_some(())
    })
    .await;
    let dropped = Instant::now();
    drop(guard);
    let next = within(Duration::from_secs(5), "the waiter is granted", waiter).await.expect("task").expect("lock");
    assert!(dropped.elapsed() < Duration::from_secs(2), "granted {:?} after drop", dropped.elapsed());
    drop(next);
}

/// Drop outside any runtime neither panics nor blocks, and still releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_outside_a_runtime_releases_too() {
    let node = server();
    let ttl = Duration::from_secs(30);
    let (c, other) = (client(&node, ttl).await, client(&node, ttl).await);
    let guard = c.lock("drop:2").await.expect("lock");
    std::thread::spawn(move || drop(guard)).join().expect("drop on a plain thread");
    let g = other.lock_timeout("drop:2", Duration::from_secs(5)).await.expect("freed by the drop");
    drop(g);
}

/// Restart: a graceful restart (snapshot) costs no lease; the client
/// reconnects on its own and keeps renewing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_survives_a_graceful_restart() {
    let dir = TempDir::new("client-restart");
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let args = ["--data-dir".to_owned(), path, "--horizon-step".into(), "200ms".into()];
    let (node, listen) = start_restartable(&args);
    // Long enough that a slow stop and start on a loaded 2-core machine is
    // over well before the lease granted here would run out.
    let ttl = Duration::from_secs(4);
    let c = client(&node, ttl).await;
    let guard = c.lock("restart:1").await.expect("lock");
    let (status, _) = node.terminate();
    assert!(status.success());
    let node = restart_on(&args, &listen);
    // The scenario: keep holding for longer than the TTL across the restart.
    tokio::select! {
        reason = guard.lost() => panic!("lease lost across a graceful restart: {reason}"),
        () = tokio::time::sleep(ttl + ttl / 2) => {}
    }
    assert!(guard.is_valid());
    let other = client(&node, ttl).await;
    assert!(matches!(other.try_lock("restart:1").await, Err(Error::Contended { .. })));
    guard.release().await.expect("release after restart");
}

/// Restart after a crash: the guard is lost; the same client then locks
/// again (once the coordinator's recovery wait is over), with a higher token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_guard_is_lost_and_the_client_reconnects() {
    let dir = TempDir::new("client-crash");
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let args = ["--data-dir".to_owned(), path, "--horizon-step".into(), "200ms".into()];
    let (node, listen) = start_restartable(&args);
    let ttl = Duration::from_millis(600);
    let c = client_at(&node.url(), ttl).await;
    let guard = c.lock("crash:1").await.expect("lock");
    let lost = guard.lost();
    node.kill();
    let node = restart_on(&args, &listen);
    within(ttl * 3, "lost() after a crash restart", lost).await;
    assert!(!guard.is_valid());
    let again = c.lock_timeout("crash:1", Duration::from_secs(10)).await.expect("lock after recovery");
    assert!(again.fencing_token() > guard.fencing_token(), "tokens grow across a crash");
    again.release().await.expect("release");
    drop(node);
}
