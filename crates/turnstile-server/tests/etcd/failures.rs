//! Failures around the etcd backend: etcd paused, stopped and restarted; a
//! sidecar killed while its clients hold leases; a waiter whose own lease
//! ends (expires or is revoked) while it waits (etcd issue 11456); tokens
//! across every restart.

use std::time::{Duration, Instant};

use tonic::Code;
use turnstile_client::LostReason;
use turnstile_proto::v1;
use turnstile_server::backend::etcd::proto::etcdserverpb::{lease_client::LeaseClient, LeaseRevokeRequest};
use turnstile_testkit::Etcd;

use crate::common::*;

/// How much later than the etcd call timeout an UNAVAILABLE may come.
const SLACK: Duration = Duration::from_millis(1500);

/// Expects UNAVAILABLE, answered within the etcd call timeout (plus slack).
async fn expect_unavailable<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) {
    let started = Instant::now();
    let res = tokio::time::timeout(ETCD_TIMEOUT * 10, call).await.unwrap_or_else(|_| panic!("{what} hung"));
    let took = started.elapsed();
    let err = res.expect_err(&format!("{what} must fail while etcd is down"));
    assert_eq!(err.code(), Code::Unavailable, "{what}: {err:?}");
    assert!(took <= ETCD_TIMEOUT + SLACK, "{what} took {took:?}, beyond the etcd call timeout {ETCD_TIMEOUT:?}");
}

/// etcd paused (hanging) and then stopped while leases are held: Acquire and
/// Renew answer UNAVAILABLE within the call timeout, a LockGuard reports its
/// lease lost once its validity passes, and after etcd restarts the same
/// sidecar serves again, with tokens above every earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_is_unavailable_not_a_hang_and_service_resumes() {
    let mut etcd = Etcd::start();
    let node = sidecar(&etcd, &[]);
    let mut c = client(&node).await;
    let held = must_acquire(&mut c, acquire("held", "raw", LONG, Duration::ZERO)).await;
    let guarded = turnstile_client::Client::builder(node.url())
        .ttl(MIN_TTL)
        .call_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("client");
    let guard = guarded.try_lock("guarded").await.expect("guard");
    assert_eq!(guard.ttl(), MIN_TTL);

    // A hanging etcd: sockets open, nothing answers.
    etcd.pause();
    let renew = v1::RenewRequest { key: "held".into(), fencing_token: held.fencing_token, ttl: None };
    expect_unavailable("renew (etcd paused)", c.renew(renew.clone())).await;
    expect_unavailable("try-lock (etcd paused)", c.acquire(acquire("other", "o", LONG, Duration::ZERO))).await;
    expect_unavailable("waiting acquire (etcd paused)", c.acquire(acquire("other", "o", LONG, WAIT))).await;

    // The guard cannot renew: it reports the lease lost once the validity of its
    // last successful renew passes, not before.
    let lost_by = Instant::now() + guard.valid_for();
    let reason = tokio::time::timeout(MIN_TTL * 3, guard.lost()).await.expect("the guard reports the loss");
    assert_eq!(reason, LostReason::NotRenewed);
    assert!(Instant::now() + Duration::from_millis(50) >= lost_by, "lost reported before the validity passed");

    // A stopped etcd: connections refused.
    etcd.resume();
    etcd.stop();
    expect_unavailable("renew (etcd stopped)", c.renew(renew.clone())).await;
    expect_unavailable("try-lock (etcd stopped)", c.acquire(acquire("other", "o", LONG, Duration::ZERO))).await;
    let health = reqwest_readyz(&node).await;
    assert!(health.contains("etcd unreachable"), "readyz names the trouble: {health}");

    // etcd back: the same sidecar serves, without a restart of turnstiled.
    etcd.restart();
    let resumed = acquire_when_served(&c, acquire("after", "o", LONG, Duration::ZERO), Duration::from_secs(20)).await;
    assert!(resumed.fencing_token > held.fencing_token, "token after the etcd restart: {resumed:?}");
    // The lease held through the outage is still there (etcd restores leases).
    let r = c.renew(renew).await.expect("the raw holder renews after the outage").into_inner();
    assert_eq!(r.lease.expect("lease").fencing_token, held.fencing_token);
    drop(guard);
}

/// `GET /readyz` of a sidecar.
async fn reqwest_readyz(node: &turnstile_testkit::Turnstiled) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(node.http).await.expect("connect to the HTTP listener");
    conn.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.expect("send");
    let mut page = String::new();
    conn.read_to_string(&mut page).await.expect("read");
    page
}

/// A sidecar killed (SIGKILL) while its clients hold leases: the leases end
/// by etcd's TTL, not before, and a waiter on another sidecar is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sidecar_leases_end_by_ttl_and_waiters_elsewhere_are_granted() {
    let etcd = Etcd::start();
    let (a, b) = (sidecar(&etcd, &[]), sidecar(&etcd, &[]));
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    let sent = Instant::now();
    let held = must_acquire(&mut ca, acquire("crash", "victim", MIN_TTL, Duration::ZERO)).await;
    let mut wb = cb.clone();
    let waiter = tokio::spawn(async move {
        let lease = must_acquire(&mut wb, acquire("crash", "survivor", LONG, WAIT)).await;
        (lease, Instant::now())
    });
    await_waiters(&cb, "crash", 1).await;
    a.kill();
    let (lease, granted_at) = waiter.await.expect("waiter");
    assert!(lease.fencing_token > held.fencing_token);
    let after = granted_at.duration_since(sent);
    assert!(after >= MIN_TTL, "granted {after:?} after the victim's request: before its lease could end");
    // etcd's lease is a second longer than the turnstile lease it carries (the
    // victim's sidecar would have ended it at its TTL), and etcd reaps expired
    // leases about twice a second.
    assert!(after <= MIN_TTL + Duration::from_millis(2500), "granted only {after:?} after the victim's request");
    let info = get(&mut cb, "crash").await;
    assert_eq!((info.owner.as_str(), info.fencing_token), ("survivor", lease.fencing_token));
}

/// etcd issue 11456 (found by Jepsen in etcd's own lock): a waiter whose own
/// lease ends while it waits (its sidecar paused past the TTL) is never
/// granted, even once everyone ahead of it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_whose_lease_ended_while_waiting_is_never_granted() {
    let etcd = Etcd::start();
    let (a, b) = (sidecar(&etcd, &[]), sidecar(&etcd, &[]));
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    let holder = must_acquire(&mut ca, acquire("jepsen", "holder", LONG, Duration::ZERO)).await;
    let waiter = tokio::spawn(async move { cb.acquire(acquire("jepsen", "paused", MIN_TTL, WAIT)).await });
    await_waiters(&ca, "jepsen", 1).await;
    // The waiter's sidecar stops (a GC pause, a frozen VM): its keep-alives stop.
    b.signal(libc::SIGSTOP);
    await_waiters(&ca, "jepsen", 0).await; // etcd expired the waiter's lease
    must_release(&mut ca, &holder).await;
    b.signal(libc::SIGCONT);
    let res = waiter.await.expect("waiter task");
    match res {
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        Ok(r) => panic!("a waiter whose lease ended was answered {r:?}"),
    }
    assert_free_and_tokens_go_on(&mut ca, "jepsen", &holder).await;
}

/// etcd issue 11456 without a pause: the waiter's own etcd lease is revoked
/// (`etcdctl lease revoke`, an operator's cleanup) while its sidecar runs on
/// and its lease is, by that sidecar's clock, fresh. When the holder then
/// releases, the waiter is not granted: only etcd knows the lease has ended,
/// so the grant must be confirmed by etcd, not by local time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_whose_lease_was_revoked_is_never_granted() {
    let etcd = Etcd::start();
    let (a, b) = (sidecar(&etcd, &[]), sidecar(&etcd, &[]));
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    let direct = etcd_channel(&etcd).await;
    let holder = must_acquire(&mut ca, acquire("revoked", "holder", LONG, Duration::ZERO)).await;
    let waiter = tokio::spawn(async move { cb.acquire(acquire("revoked", "waiter", LONG, WAIT)).await });
    await_waiters(&ca, "revoked", 1).await;
    // Within a second of the waiter's enqueue (its lease's headroom), so that
    // the waiter's sidecar has no reason of its own to ask etcd about it.
    let lease = entry_lease(&direct, "revoked", "waiter").await;
    let revoke = LeaseRevokeRequest { id: lease };
    LeaseClient::new(direct).lease_revoke(revoke).await.expect("revoke the waiter's lease");
    must_release(&mut ca, &holder).await;
    let res = tokio::time::timeout(WAIT, waiter).await.expect("the waiter is answered").expect("waiter task");
    match res {
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        Ok(r) => assert!(!r.into_inner().acquired, "a waiter whose lease was revoked was granted"),
    }
    assert_free_and_tokens_go_on(&mut ca, "revoked", &holder).await;
}

/// etcd stopped (connections refused, not a hang): a LockGuard reports its
/// lease lost once its validity passes, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_reports_its_lease_lost_while_etcd_is_stopped() {
    let mut etcd = Etcd::start();
    let node = sidecar(&etcd, &[]);
    let guarded = turnstile_client::Client::builder(node.url())
        .ttl(MIN_TTL)
        .call_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("client");
    let guard = guarded.try_lock("guarded").await.expect("guard");
    etcd.stop();
    let lost_by = Instant::now() + guard.valid_for();
    let reason = tokio::time::timeout(MIN_TTL * 3, guard.lost()).await.expect("the guard reports the loss");
    assert_eq!(reason, LostReason::NotRenewed);
    assert!(Instant::now() + Duration::from_millis(50) >= lost_by, "lost reported before the validity passed");
}

/// G2: tokens strictly increase across a graceful restart and a SIGKILL of
/// `turnstiled`, and across a crash (SIGKILL) and restart of etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_increase_across_sidecar_and_etcd_restarts() {
    let mut etcd = Etcd::start();
    let mut last = 0;
    let mut grant = |lease: &v1::Lease, when: &str| {
        assert!(lease.fencing_token > last, "{when}: token {} after {last}", lease.fencing_token);
        last = lease.fencing_token;
    };
    let node = sidecar(&etcd, &[]);
    let mut c = client(&node).await;
    for i in 0..5 {
        let lease = must_acquire(&mut c, acquire("restarts", "o", LONG, Duration::ZERO)).await;
        grant(&lease, &format!("grant {i}"));
        must_release(&mut c, &lease).await;
    }
    drop(c);
    let (status, log) = node.terminate();
    assert!(status.success(), "graceful exit: {status} {log}");

    let node = sidecar(&etcd, &[]);
    let mut c = client(&node).await;
    let lease = must_acquire(&mut c, acquire("restarts", "o", LONG, Duration::ZERO)).await;
    grant(&lease, "after a graceful sidecar restart");
    must_release(&mut c, &lease).await;
    node.kill();

    let node = sidecar(&etcd, &[]);
    let mut c = client(&node).await;
    let lease = must_acquire(&mut c, acquire("restarts", "o", LONG, Duration::ZERO)).await;
    grant(&lease, "after a sidecar SIGKILL");
    must_release(&mut c, &lease).await;

    etcd.kill();
    etcd.restart();
    let lease = acquire_when_served(&c, acquire("restarts", "o", LONG, Duration::ZERO), Duration::from_secs(20)).await;
    grant(&lease, "after an etcd crash and restart");
}

/// After a waiter was refused its grant: nobody holds `key`, and the next
/// grant gets a token above the last holder's.
async fn assert_free_and_tokens_go_on(c: &mut Client, key: &str, holder: &v1::Lease) {
    let info = get(c, key).await;
    assert!(!info.held, "nobody holds the key: {info:?}");
    let next = must_acquire(c, acquire(key, "next", LONG, Duration::ZERO)).await;
    assert!(next.fencing_token > holder.fencing_token);
}
