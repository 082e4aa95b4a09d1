//! Client calls against a real turnstiled: try-lock, waits, with_lock,
//! inspection, and the errors a caller matches on.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, eventually, restart_on, server, start_restartable, within};
use turnstile_client::{Client, Error, LostReason};
use turnstile_testkit::{RefusedPort, Turnstiled};

const TTL: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_on_a_held_key_names_the_holder() {
    let node = server();
    let (a, b) = (client(&node, TTL).await, client(&node, TTL).await);
    let guard = a.try_lock("pay:1").await.expect("free key");
    match b.try_lock("pay:1").await {
        Err(Error::Contended { key, holder, expires_in, waiters }) => {
            assert_eq!(key, "pay:1");
            assert_eq!(holder.as_deref(), Some(guard.owner()));
            assert!(expires_in.is_some_and(|d| d <= TTL));
            assert_eq!(waiters, 0);
        }
        other => panic!("expected Contended, got {other:?}"),
    }
    drop(guard);
}

/// Two acquisitions through one client are two owners: they exclude each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquisitions_through_one_client_exclude_each_other() {
    let node = server();
    let c = client(&node, TTL).await;
    let guard = c.lock("shared-client:1").await.expect("lock");
    assert!(matches!(c.try_lock("shared-client:1").await, Err(Error::Contended { .. })));
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_gives_up_after_its_timeout() {
    let node = server();
    let (a, b) = (client(&node, TTL).await, client(&node, TTL).await);
    let _guard = a.lock("slow:1").await.expect("lock");
    let started = Instant::now();
    let err = b.lock_timeout("slow:1", Duration::from_millis(300)).await.expect_err("held");
    let waited = started.elapsed();
    assert!(matches!(err, Error::Contended { .. }), "{err:?}");
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "waited {waited:?}");
}

/// A waiter is granted the moment the lock frees, with a higher token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_gets_the_lock_the_moment_it_frees() {
    let node = server();
    let (a, b) = (client(&node, TTL).await, client(&node, TTL).await);
    let first = a.lock("fifo:1").await.expect("lock");
    let token = first.fencing_token();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.lock("fifo:1").await }
    });
    eventually(Duration::from_secs(5), "waiter queued", || async {
        (a.get("fifo:1").await.ok()?.waiters == 1).then_some(())
    })
    .await;
    first.release().await.expect("release");
    let second = within(Duration::from_secs(1), "handoff", waiter).await.expect("task").expect("lock");
    assert!(second.fencing_token() > token);
}

/// Waits longer than the coordinator's maximum wait are re-issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_longer_than_the_server_maximum_are_reissued() {
    let node = Turnstiled::start(["--data-dir", "", "--max-wait", "200ms"]);
    let (a, b) = (client(&node, TTL).await, client(&node, TTL).await);
    let guard = a.lock("long:1").await.expect("lock");
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.lock_timeout("long:1", Duration::from_secs(10)).await }
    });
    // The scenario: hold the lock across several of the server's maximum waits.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiter.is_finished(), "the waiter gave up early");
    guard.release().await.expect("release");
    let granted = within(Duration::from_secs(2), "waiter granted", waiter).await.expect("task").expect("lock");
    drop(granted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_runs_the_work_under_the_lock_and_releases() {
    let node = server();
    let c = client(&node, TTL).await;
    let probe = c.clone();
    let (token, holder) = c
        .with_lock("work:1", |token| async move {
            let info = probe.get("work:1").await.expect("get");
            (token, info.holder.map(|h| h.fencing_token))
        })
        .await
        .expect("with_lock");
    assert_eq!(holder, Some(token), "the work ran while the lock was held");
    assert!(c.get("work:1").await.expect("get").holder.is_none(), "released afterwards");
}

/// A lost lease stops the work at once with LeaseLost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_stops_the_work_when_the_lease_is_lost() {
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let node = server();
    let ttl = Duration::from_millis(600);
    let (c, admin) = (client(&node, ttl).await, client(&node, ttl).await);
    let stopped = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let work = tokio::spawn({
        let stopped = stopped.clone();
        async move {
            c.with_lock("work:2", move |token| async move {
                let _flag = SetOnDrop(stopped);
                let _ = started_tx.send(token);
                std::future::pending::<()>().await;
            })
            .await
        }
    });
    let token = within(Duration::from_secs(5), "work started", started_rx).await.expect("token");
    assert!(admin.release("work:2", token).await.expect("admin release"));
    let res = within(ttl * 2, "with_lock returns", work).await.expect("task");
    assert!(matches!(res, Err(Error::LeaseLost { reason: LostReason::Ended, .. })), "{res:?}");
    assert!(stopped.load(Ordering::SeqCst), "the work future was dropped");
}

/// A lease found already ended by the final release is LeaseLost, not the
/// work's value: the work may have overlapped with another holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_reports_a_lease_found_ended_at_release() {
    let node = server();
    let (c, admin) = (client(&node, TTL).await, client(&node, TTL).await);
    // The work ends the lease itself and returns at once: with a 10 s TTL no
    // renew comes in between, so only the release can notice the loss.
    let res = c
        .with_lock("work:3", move |token| async move {
            assert!(admin.release("work:3", token).await.expect("admin release"));
            "done"
        })
        .await;
    assert!(matches!(res, Err(Error::LeaseLost { reason: LostReason::Ended, .. })), "{res:?}");
}

/// A try-lock whose connection was broken by a coordinator restart retries
/// within its call timeout instead of failing on the first transport error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_rides_out_a_restart_within_its_call_timeout() {
    let args = ["--data-dir".to_owned(), String::new()];
    let (node, listen) = start_restartable(&args);
    let c = Client::builder(node.url()).call_timeout(Duration::from_secs(20)).connect().await.expect("connect");
    c.try_lock("restart-try:1").await.expect("lock").release().await.expect("release");
    node.kill();
    let attempt = tokio::spawn({
        let c = c.clone();
        async move { c.try_lock("restart-try:1").await }
    });
    // The scenario: the coordinator stays down for a while.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!attempt.is_finished(), "try_lock gave up while the coordinator was down");
    let node = restart_on(&args, &listen);
    let guard = within(Duration::from_secs(15), "try_lock after the restart", attempt).await.expect("task");
    guard.expect("lock after the restart").release().await.expect("release");
    drop(node);
}

/// lock() rides out an outage longer than the call timeout (a restart that
/// takes long, or crash recovery), asking again with backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_rides_out_an_outage_longer_than_the_call_timeout() {
    let args = ["--data-dir".to_owned(), String::new()];
    let (node, listen) = start_restartable(&args);
    let call_timeout = Duration::from_millis(300);
    let c = Client::builder(node.url()).call_timeout(call_timeout).connect().await.expect("connect");
    node.kill();
    let waiter = tokio::spawn({
        let c = c.clone();
        async move { c.lock("outage:1").await }
    });
    // The scenario: the coordinator stays down for several call timeouts.
    tokio::time::sleep(call_timeout * 4).await;
    assert!(!waiter.is_finished(), "lock() gave up: {:?}", waiter.await);
    let node = restart_on(&args, &listen);
    let guard = within(Duration::from_secs(15), "lock after the outage", waiter).await.expect("task");
    guard.expect("lock after the outage").release().await.expect("release");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_list_report_held_keys() {
    let node = server();
    let c = client(&node, TTL).await;
    let g1 = c.lock("inv:1").await.expect("lock");
    let g2 = c.lock("inv:2").await.expect("lock");
    let _other = c.lock("zzz").await.expect("lock");
    let listed = c.list("inv:").await.expect("list");
    let keys: Vec<_> = listed.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["inv:1", "inv:2"]);
    assert_eq!(listed[0].holder.as_ref().map(|h| h.fencing_token), Some(g1.fencing_token()));
    assert_eq!(c.list("").await.expect("list all").len(), 3);
    let info = c.get("inv:2").await.expect("get");
    assert_eq!(info.holder.map(|h| h.owner), Some(g2.owner().to_owned()));
    assert!(c.get("inv:3").await.expect("get").holder.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_name_the_field() {
    let node = server();
    let c = client(&node, TTL).await;
    let field = |e: Error| match e {
        Error::InvalidArgument { field, .. } => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    assert_eq!(field(c.try_lock("").await.expect_err("empty key")), "key");
    assert_eq!(field(c.lock("a\u{7}b").await.expect_err("control character")), "key");
    assert_eq!(field(c.release("k", 0).await.expect_err("token 0")), "fencing_token");
    // Checked by the coordinator only:
    assert_eq!(field(c.list(&"p".repeat(600)).await.expect_err("long prefix")), "prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_coordinator_is_unavailable() {
    let refused = RefusedPort::new();
    let url = refused.url();
    let err = Client::connect(url.clone()).await.expect_err("nobody listens");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let lazy = Client::builder(url).call_timeout(Duration::from_millis(500)).connect_lazy().expect("lazy");
    let started = Instant::now();
    let err = lazy.try_lock("k").await.expect_err("nobody listens");
    assert!(err.is_transient(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "gave up after {:?}", started.elapsed());
}
