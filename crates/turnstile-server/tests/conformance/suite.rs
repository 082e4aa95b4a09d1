//! The tests themselves, each stating one rule, generic over the backend's
//! [`Fixture`]. Nothing here sleeps to wait for a state: tests await calls or
//! poll with a deadline ([`eventually`]); sleeps that remain are the scenario
//! (holding a lock for a while).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;
use turnstile_proto::v1;

use crate::fixture::*;

const LONG: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(20);
const SHORT: Duration = Duration::from_secs(2);

/// G1: 64 concurrent acquirers on one key never overlap.
pub(crate) async fn g1_concurrent_acquirers_never_overlap(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let c = client(&node).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (mut c, inside, grants) = (c.clone(), inside.clone(), grants.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..3 {
                let lease = must_acquire(&mut c, acquire("g1", &format!("owner-{i}"), LONG, WAIT)).await;
                let before = inside.fetch_add(1, Ordering::SeqCst);
                assert_eq!(before, 0, "owner-{i} round {round} entered while another holder was inside");
                // The critical section: a round trip to the coordinator, which
                // must still name this lease as the holder.
                let info = get(&mut c, "g1").await;
                assert_eq!(
                    (info.owner.as_str(), info.fencing_token),
                    (lease.owner.as_str(), lease.fencing_token),
                    "owner-{i} round {round}: the coordinator names another holder while we hold the key"
                );
                inside.fetch_sub(1, Ordering::SeqCst);
                grants.fetch_add(1, Ordering::SeqCst);
                must_release(&mut c, &lease).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("acquirer task");
    }
    assert_eq!(grants.load(Ordering::SeqCst), 64 * 3);
}

/// G2: tokens strictly increase over 1,000 grants, across a graceful restart
/// and across a SIGKILL restart with the same state.
pub(crate) async fn g2_tokens_increase_over_grants_and_graceful_and_crash_restarts(fx: &dyn Fixture) {
    let node = fx.start(BLOCK);
    let mut c = client(&node).await;
    let mut last = 0;
    // A small token block (memory backend), so 1,000 grants cross it ten
    // times and both restarts must continue above a persisted block end.
    const BLOCK: &[&str] = &["--token-block", "100"];
    for i in 0..1000 {
        // Alternate owners and keys: tokens must grow per key whoever holds it.
        // Short leases: after the crash below, grants wait out the longest
        // lease ever granted (the persisted horizon), released or not.
        let lease = must_acquire(&mut c, acquire("g2", &format!("o{}", i % 3), SHORT, WAIT)).await;
        assert!(lease.fencing_token > last, "grant {i}: token {} after {last}", lease.fencing_token);
        last = lease.fencing_token;
        must_release(&mut c, &lease).await;
    }
    let (status, log) = node.terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status} {log}");

    let node = fx.start(BLOCK);
    let mut c = client(&node).await;
    let lease = must_acquire(&mut c, acquire("g2", "after-graceful", SHORT, WAIT)).await;
    assert!(lease.fencing_token > last, "after graceful restart: {} <= {last}", lease.fencing_token);
    last = lease.fencing_token;
    // Crash while the lease is held.
    node.kill();

    let node = fx.start(BLOCK);
    let mut c = client(&node).await;
    if fx.crash_holds_grants() {
        // The crashed process's lease may still be believed in: no grant yet,
        // and the try-lock is told for how long.
        let err = c.acquire(acquire("g2-other", "eager", LONG, Duration::ZERO)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("seconds"), "{err:?}");
        // Renew of a lease the crash forgot: NOT_FOUND at once.
        let err = c.renew(v1::RenewRequest { key: "g2".into(), fencing_token: last, ttl: None }).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    // A waiter: granted once the crashed process's leases can no longer be live.
    let lease = must_acquire(&mut c, acquire("g2", "after-crash", LONG, WAIT)).await;
    assert!(lease.fencing_token > last, "after SIGKILL restart: {} <= {last}", lease.fencing_token);
}

/// G3: a lease whose holder stops renewing passes to the waiting next owner
/// promptly after expiry, and not before.
pub(crate) async fn g3_unrenewed_lease_passes_to_waiter_after_expiry_not_before(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let ttl = fx.short_ttl();
    let sent = Instant::now();
    let lease = must_acquire(&mut c, acquire("g3", "holder", ttl, Duration::ZERO)).await;
    let granted_holder = Instant::now();
    assert_eq!(sd(lease.ttl), ttl, "the backend grants the short ttl exactly");
    let next = must_acquire(&mut c, acquire("g3", "next", LONG, WAIT)).await;
    let granted_next = Instant::now();
    assert!(next.fencing_token > lease.fencing_token);
    // Not before: the holder's lease began no earlier than we sent its request.
    assert!(
        granted_next.duration_since(sent) >= ttl,
        "granted after {:?}, before the ttl {ttl:?} ran out",
        granted_next.duration_since(sent)
    );
    // Promptly: within timer slack plus a round trip of the holder's expiry.
    let late = granted_next.duration_since(granted_holder).saturating_sub(ttl);
    assert!(late < Duration::from_millis(150), "granted {late:?} after the lease expired");
}

/// G4: 20 waiters are granted in arrival order.
pub(crate) async fn g4_waiters_are_granted_in_arrival_order(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let holder = must_acquire(&mut c, acquire("g4", "holder", LONG, Duration::ZERO)).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (mut wc, order) = (c.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let lease = must_acquire(&mut wc, acquire("g4", &format!("w{i}"), LONG, WAIT)).await;
            order.lock().unwrap().push(i);
            must_release(&mut wc, &lease).await;
        }));
        // Arrival order is fixed by the server seeing waiter i before waiter i+1 starts.
        await_waiters(&c, "g4", i + 1).await;
    }
    must_release(&mut c, &holder).await;
    for t in tasks {
        t.await.expect("waiter task");
    }
    assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
}

/// G5: acquire by the holder returns the same lease with its TTL refreshed.
pub(crate) async fn g5_reacquire_by_holder_returns_same_token_with_ttl_refreshed(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let first = must_acquire(&mut c, acquire("g5", "me", Duration::from_secs(5), Duration::ZERO)).await;
    let again = must_acquire(&mut c, acquire("g5", "me", Duration::from_secs(20), Duration::ZERO)).await;
    assert_eq!(again.fencing_token, first.fencing_token);
    assert_eq!(sd(again.ttl), Duration::from_secs(20));
    let info = get(&mut c, "g5").await;
    assert!(sd(info.expires_in) > Duration::from_secs(10), "ttl refreshed to 20 s: {info:?}");
    // A waiting retry by the holder does not queue behind itself.
    let waited = must_acquire(&mut c, acquire("g5", "me", Duration::from_secs(20), WAIT)).await;
    assert_eq!(waited.fencing_token, first.fencing_token);
}

/// G6: a waiter whose call is cancelled is removed and never granted.
pub(crate) async fn g6_waiter_whose_call_is_dropped_is_never_granted(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let holder = must_acquire(&mut c, acquire("g6", "holder", LONG, Duration::ZERO)).await;
    let mut wc = c.clone();
    let waiter = tokio::spawn(async move { wc.acquire(acquire("g6", "quitter", LONG, WAIT)).await });
    await_waiters(&c, "g6", 1).await;
    waiter.abort(); // drops the call: the client resets the stream
    let _ = waiter.await;
    await_waiters(&c, "g6", 0).await;
    must_release(&mut c, &holder).await;
    let info = get(&mut c, "g6").await;
    assert!(!info.held, "nobody may be granted: {info:?}");
    let next = must_acquire(&mut c, acquire("g6", "next", LONG, Duration::ZERO)).await;
    assert!(next.fencing_token > holder.fencing_token);
}

/// G6: a waiter whose whole connection goes away is removed and never granted.
pub(crate) async fn g6_waiter_whose_client_disconnects_is_never_granted(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let holder = must_acquire(&mut c, acquire("g6c", "holder", LONG, Duration::ZERO)).await;
    let url = node.url();
    let waiter = tokio::spawn(async move {
        // Its own connection, dropped with the task.
        let mut own = turnstile_proto::v1::lock_service_client::LockServiceClient::connect(url).await.expect("connect");
        own.acquire(acquire("g6c", "vanisher", LONG, WAIT)).await
    });
    await_waiters(&c, "g6c", 1).await;
    waiter.abort();
    let _ = waiter.await;
    await_waiters(&c, "g6c", 0).await;
    must_release(&mut c, &holder).await;
    assert!(!get(&mut c, "g6c").await.held);
}

/// G6: a waiter that reaches its wait_timeout gets acquired=false and leaves the queue.
pub(crate) async fn g6_wait_timeout_answers_not_acquired_and_leaves_the_queue(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let holder = must_acquire(&mut c, acquire("g6t", "holder", LONG, Duration::ZERO)).await;
    let started = Instant::now();
    let r = c.acquire(acquire("g6t", "patient", LONG, Duration::from_millis(300))).await.unwrap().into_inner();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!r.acquired);
    let current = r.current.expect("current set when not acquired");
    assert_eq!((current.owner.as_str(), current.fencing_token), ("holder", holder.fencing_token));
    assert_eq!(get(&mut c, "g6t").await.waiters, 0);
}

/// G7: renew/release with a stale token get NOT_FOUND / released=false and
/// leave the newer lease of the same key alone.
pub(crate) async fn g7_stale_token_renew_and_release_leave_newer_lease_alone(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let old = must_acquire(&mut c, acquire("g7", "old", LONG, Duration::ZERO)).await;
    must_release(&mut c, &old).await;
    let new = must_acquire(&mut c, acquire("g7", "new", Duration::from_secs(10), Duration::ZERO)).await;
    let before = get(&mut c, "g7").await;

    let err = c
        .renew(v1::RenewRequest { key: "g7".into(), fencing_token: old.fencing_token, ttl: Some(pd(LONG)) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let r = c
        .release(v1::ReleaseRequest { key: "g7".into(), fencing_token: old.fencing_token, result: None })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.released);

    let after = get(&mut c, "g7").await;
    assert!(after.held);
    assert_eq!((after.owner.as_str(), after.fencing_token), ("new", new.fencing_token));
    assert!(sd(after.expires_in) <= sd(before.expires_in), "stale renew must not extend: {before:?} -> {after:?}");
}

/// G8: every invalid field gets INVALID_ARGUMENT naming it, and changes nothing.
pub(crate) async fn g8_each_invalid_field_is_refused_by_name_and_changes_nothing(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let lease = must_acquire(&mut c, acquire("g8", "holder", LONG, Duration::ZERO)).await;
    let before = get(&mut c, "g8").await;
    let neg = prost_types::Duration { seconds: -1, nanos: 0 };
    let ok = || acquire("g8-new", "owner", LONG, Duration::ZERO);
    let cases: Vec<(&str, v1::AcquireRequest)> = vec![
        ("key", v1::AcquireRequest { key: String::new(), ..ok() }),
        ("key", v1::AcquireRequest { key: "k".repeat(513), ..ok() }),
        ("key", v1::AcquireRequest { key: "bad\nkey".into(), ..ok() }),
        ("key", v1::AcquireRequest { key: "bad\u{7f}key".into(), ..ok() }),
        ("owner", v1::AcquireRequest { owner: String::new(), ..ok() }),
        ("owner", v1::AcquireRequest { owner: "o".repeat(257), ..ok() }),
        ("ttl", v1::AcquireRequest { ttl: Some(neg), ..ok() }),
        ("ttl", v1::AcquireRequest { ttl: Some(prost_types::Duration { seconds: i64::MAX, nanos: 0 }), ..ok() }),
        ("wait_timeout", v1::AcquireRequest { wait_timeout: Some(neg), ..ok() }),
    ];
    for (field, req) in cases {
        let err = c.acquire(req.clone()).await.expect_err(&format!("{req:?} must be refused"));
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "message {:?} names {field}", err.message());
    }
    let err = c.renew(v1::RenewRequest { key: "g8".into(), fencing_token: 0, ttl: None }).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("fencing_token"), "{err:?}");
    let err = c
        .renew(v1::RenewRequest { key: "g8".into(), fencing_token: lease.fencing_token, ttl: Some(neg) })
        .await
        .unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("ttl"), "{err:?}");
    let err = c.release(v1::ReleaseRequest { key: String::new(), fencing_token: 1, result: None }).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("key"), "{err:?}");
    let err = c.get_lock(v1::GetLockRequest { key: "a\tb".into() }).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("key"), "{err:?}");
    // Every RPC that names a key refuses every kind of bad key by name.
    for bad in [String::new(), "k".repeat(513), "bad\nkey".into(), "bad\u{7f}key".into(), "a\u{1b}[2J".into()] {
        let refused = |r: Result<(), tonic::Status>, rpc: &str| {
            let err = r.expect_err(&format!("{rpc} with key {bad:?} must be refused"));
            assert!(err.code() == Code::InvalidArgument && err.message().contains("key"), "{rpc} {bad:?}: {err:?}");
        };
        let renew = v1::RenewRequest { key: bad.clone(), fencing_token: lease.fencing_token, ttl: None };
        refused(c.renew(renew).await.map(drop), "Renew");
        let release = v1::ReleaseRequest { key: bad.clone(), fencing_token: lease.fencing_token, result: None };
        refused(c.release(release).await.map(drop), "Release");
        refused(c.get_lock(v1::GetLockRequest { key: bad.clone() }).await.map(drop), "GetLock");
    }
    // A malformed duration (nanos out of range) is refused by name too.
    for nanos in [-1, 1_000_000_000] {
        let bad = prost_types::Duration { seconds: 1, nanos };
        let err = c.acquire(v1::AcquireRequest { ttl: Some(bad), ..ok() }).await.unwrap_err();
        assert!(err.code() == Code::InvalidArgument && err.message().contains("ttl"), "nanos {nanos}: {err:?}");
        let renew = v1::RenewRequest { key: "g8".into(), fencing_token: lease.fencing_token, ttl: Some(bad) };
        let err = c.renew(renew).await.unwrap_err();
        assert!(err.code() == Code::InvalidArgument && err.message().contains("ttl"), "nanos {nanos}: {err:?}");
    }
    let err = c.list_locks(v1::ListLocksRequest { prefix: "p".repeat(600), ..Default::default() }).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("prefix"), "{err:?}");

    // Nothing changed: the held lease is as it was, and no other key appeared.
    let after = get(&mut c, "g8").await;
    assert_eq!((after.owner, after.fencing_token, after.held), (before.owner, before.fencing_token, true));
    let all = c.list_locks(v1::ListLocksRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.locks.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(), vec!["g8"]);
}

/// G8: limit breaches are RESOURCE_EXHAUSTED and change nothing.
pub(crate) async fn g8_limits_are_resource_exhausted_and_change_nothing(fx: &dyn Fixture) {
    let node = fx.start(&["--max-waiters-per-key", "2", "--max-result-bytes", "1024"]);
    let mut c = client(&node).await;
    let holder = must_acquire(&mut c, acquire("lim", "holder", LONG, Duration::ZERO)).await;
    let mut tasks = Vec::new();
    for i in 0..2 {
        let mut wc = c.clone();
        tasks.push(tokio::spawn(async move { wc.acquire(acquire("lim", &format!("w{i}"), LONG, WAIT)).await }));
        await_waiters(&c, "lim", i + 1).await;
    }
    let err = c.acquire(acquire("lim", "w2", LONG, WAIT)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(get(&mut c, "lim").await.waiters, 2, "the refused waiter was not queued");

    let err = c
        .release(v1::ReleaseRequest {
            key: "lim".into(),
            fencing_token: holder.fencing_token,
            result: Some(vec![0; 1025].into()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("result"), "{err:?}");
    // Far past the limit, the request is refused before it is even decoded:
    // the same status, naming the same field.
    let huge = v1::ReleaseRequest {
        key: "lim".into(),
        fencing_token: holder.fencing_token,
        result: Some(vec![0; 512 << 10].into()),
    };
    let err = c.release(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("result"), "{err:?}");
    let info = get(&mut c, "lim").await;
    assert!(info.held && info.fencing_token == holder.fencing_token, "an oversized result does not release: {info:?}");
    for t in tasks {
        t.abort();
    }
}

/// Shared results: every share_result waiter queued at release gets the
/// result; a waiter that did not ask keeps its place and is granted.
pub(crate) async fn shared_result_reaches_every_sharing_waiter_and_the_rest_queue_on(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let holder = must_acquire(&mut c, acquire("fetch", "computer", LONG, Duration::ZERO)).await;
    let mut sharers = Vec::new();
    for i in 0..3 {
        let mut wc = c.clone();
        let req = v1::AcquireRequest { share_result: true, ..acquire("fetch", &format!("s{i}"), LONG, WAIT) };
        sharers.push(tokio::spawn(async move { wc.acquire(req).await.unwrap().into_inner() }));
        await_waiters(&c, "fetch", i + 1).await;
    }
    let mut wc = c.clone();
    let plain =
        tokio::spawn(async move { wc.acquire(acquire("fetch", "plain", LONG, WAIT)).await.unwrap().into_inner() });
    await_waiters(&c, "fetch", 4).await;
    let r = c
        .release(v1::ReleaseRequest {
            key: "fetch".into(),
            fencing_token: holder.fencing_token,
            result: Some(b"the value".to_vec().into()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.released);
    for s in sharers {
        let r = s.await.unwrap();
        assert!(!r.acquired, "a sharing waiter gets the result, not the lock: {r:?}");
        assert_eq!(r.shared_result.as_deref(), Some(&b"the value"[..]));
    }
    let r = plain.await.unwrap();
    assert!(r.acquired && r.shared_result.is_none(), "{r:?}");
    assert_eq!(r.lease.unwrap().owner, "plain");
}

/// Shared results: a release without a result hands the lock, not a result,
/// to the next waiter in FIFO order, sharing or not.
pub(crate) async fn release_without_result_grants_the_next_sharing_waiter(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let holder = must_acquire(&mut c, acquire("fetch2", "crasher", LONG, Duration::ZERO)).await;
    let mut wc = c.clone();
    let req = v1::AcquireRequest { share_result: true, ..acquire("fetch2", "sharer", LONG, WAIT) };
    let sharer = tokio::spawn(async move { wc.acquire(req).await.unwrap().into_inner() });
    await_waiters(&c, "fetch2", 1).await;
    must_release(&mut c, &holder).await;
    let r = sharer.await.unwrap();
    assert!(r.acquired && r.shared_result.is_none(), "the sharer must do the work itself: {r:?}");
}

/// A contended try-lock is not an error: acquired=false with the holder.
pub(crate) async fn contended_try_lock_reports_the_holder(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let lease = must_acquire(&mut c, acquire("busy", "first", LONG, Duration::ZERO)).await;
    let r = c.acquire(acquire("busy", "second", LONG, Duration::ZERO)).await.unwrap().into_inner();
    assert!(!r.acquired && r.lease.is_none());
    let cur = r.current.expect("current");
    assert!(cur.held);
    assert_eq!((cur.owner.as_str(), cur.fencing_token, cur.key.as_str()), ("first", lease.fencing_token, "busy"));
    assert!(sd(cur.expires_in) > Duration::from_secs(20));
}

/// GetLock and ListLocks: held and awaited keys, by prefix, in key order, paged.
pub(crate) async fn get_and_list_show_held_and_awaited_keys_by_prefix_in_pages(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    for k in ["order:3", "order:1", "order:2", "pay:1", "order:4"] {
        must_acquire(&mut c, acquire(k, "o", LONG, Duration::ZERO)).await;
    }
    let free = get(&mut c, "order:9").await;
    assert!(!free.held && free.waiters == 0 && free.key == "order:9");
    let mut keys = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_locks(v1::ListLocksRequest { prefix: "order:".into(), page_size: 3, page_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.locks.len() <= 3);
        keys.extend(page.locks.into_iter().map(|l| {
            assert!(l.held);
            l.key
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(keys, ["order:1", "order:2", "order:3", "order:4"]);
}

/// A graceful restart (SIGTERM) keeps leases: holders carry on, with no wait.
pub(crate) async fn graceful_restart_keeps_leases(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let lease = must_acquire(&mut c, acquire("rolling", "holder", LONG, Duration::ZERO)).await;
    let (status, log) = node.terminate();
    assert!(status.success(), "exit 0 on SIGTERM: {status} {log}");
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let info = get(&mut c, "rolling").await;
    assert!(info.held && info.fencing_token == lease.fencing_token && info.owner == "holder", "{info:?}");
    let renewed = c
        .renew(v1::RenewRequest { key: "rolling".into(), fencing_token: lease.fencing_token, ttl: None })
        .await
        .expect("the holder renews across the restart")
        .into_inner();
    assert_eq!(renewed.lease.unwrap().fencing_token, lease.fencing_token);
    // Others are refused at once rather than told to wait for recovery.
    let r = c.acquire(acquire("rolling", "other", LONG, Duration::ZERO)).await.expect("no UNAVAILABLE").into_inner();
    assert!(!r.acquired);
}

/// A ForceRelease request.
fn force(key: &str, fencing_token: Option<u64>) -> v1::ForceReleaseRequest {
    v1::ForceReleaseRequest { key: key.into(), fencing_token }
}

/// ForceRelease (admin) ends a lease exactly as its expiry would: the next
/// waiter in FIFO order, a sharing one too, is granted the lock (not handed
/// a result) with a greater token; the old holder's renew is NOT_FOUND and
/// its release a no-op. Another token, a free key: released=false, no error.
/// Bad input: INVALID_ARGUMENT naming the field, and nothing changes.
pub(crate) async fn force_release_ends_a_lease_as_its_expiry_would(fx: &dyn Fixture) {
    use tonic_types::StatusExt;
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let stuck = must_acquire(&mut c, acquire("stuck", "wedged", LONG, Duration::ZERO)).await;
    let mut wc = c.clone();
    let req = v1::AcquireRequest { share_result: true, ..acquire("stuck", "sharer", LONG, WAIT) };
    let sharer = tokio::spawn(async move { wc.acquire(req).await.expect("sharer's acquire").into_inner() });
    await_waiters(&c, "stuck", 1).await;
    let mut wc = c.clone();
    let plain = tokio::spawn(async move { wc.acquire(acquire("stuck", "plain", LONG, WAIT)).await });
    await_waiters(&c, "stuck", 2).await;

    for (field, req) in
        [("key", force("", None)), ("key", force("a\nb", None)), ("fencing_token", force("stuck", Some(0)))]
    {
        let err = c.force_release(req.clone()).await.expect_err(&format!("{req:?} must be refused"));
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}: {err:?}");
        let bad = err.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, field, "{req:?}: {err:?}");
    }
    let r = c.force_release(force("stuck", Some(stuck.fencing_token + 1000))).await.expect("force").into_inner();
    assert!(!r.released, "another token's lease is left alone: {r:?}");
    let info = get(&mut c, "stuck").await;
    assert!(info.held && info.fencing_token == stuck.fencing_token && info.waiters == 2, "nothing changed: {info:?}");

    let r = c.force_release(force("stuck", None)).await.expect("force").into_inner();
    assert!(r.released, "{r:?}");
    let previous = r.previous.expect("previous");
    assert_eq!((previous.owner.as_str(), previous.fencing_token, previous.held), ("wedged", stuck.fencing_token, true));
    assert_eq!(previous.waiters, 2, "{previous:?}");

    let r = tokio::time::timeout(WAIT, sharer).await.expect("granted in time").expect("sharer task");
    assert!(r.acquired && r.shared_result.is_none(), "the next waiter gets the lock, not a result: {r:?}");
    let next = r.lease.expect("lease");
    assert_eq!(next.owner, "sharer");
    assert!(next.fencing_token > stuck.fencing_token, "{} after {}", next.fencing_token, stuck.fencing_token);

    let err = c
        .renew(v1::RenewRequest { key: "stuck".into(), fencing_token: stuck.fencing_token, ttl: None })
        .await
        .expect_err("the old holder's lease has ended");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let r = c
        .release(v1::ReleaseRequest { key: "stuck".into(), fencing_token: stuck.fencing_token, result: None })
        .await
        .expect("release")
        .into_inner();
    assert!(!r.released, "the old holder's release ends nothing");
    let info = get(&mut c, "stuck").await;
    assert!(info.held && info.fencing_token == next.fencing_token && info.waiters == 1, "{info:?}");

    // The rest of the queue goes on in FIFO order.
    must_release(&mut c, &next).await;
    let r = tokio::time::timeout(WAIT, plain)
        .await
        .expect("granted in time")
        .expect("plain task")
        .expect("plain acquire")
        .into_inner();
    assert!(r.acquired && r.lease.as_ref().is_some_and(|l| l.owner == "plain"), "{r:?}");

    let r = c.force_release(force("never-held", None)).await.expect("a free key is not an error").into_inner();
    assert!(!r.released && r.previous.is_some_and(|p| !p.held), "released=false on a free key");
}

/// A force-released lease stays ended across a graceful restart, and the
/// lease granted after it carries on.
pub(crate) async fn force_release_is_kept_across_a_graceful_restart(fx: &dyn Fixture) {
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let stuck = must_acquire(&mut c, acquire("forced", "wedged", LONG, Duration::ZERO)).await;
    let r = c.force_release(force("forced", Some(stuck.fencing_token))).await.expect("force").into_inner();
    assert!(r.released);
    let next = must_acquire(&mut c, acquire("forced", "next", LONG, Duration::ZERO)).await;
    assert!(next.fencing_token > stuck.fencing_token);
    let _ = must_acquire(&mut c, acquire("forced-only", "wedged", LONG, Duration::ZERO)).await;
    assert!(c.force_release(force("forced-only", None)).await.expect("force").into_inner().released);
    let (status, log) = node.terminate();
    assert!(status.success(), "exit 0 on SIGTERM: {status} {log}");
    let node = fx.start(&[]);
    let mut c = client(&node).await;
    let info = get(&mut c, "forced").await;
    assert!(info.held && info.owner == "next" && info.fencing_token == next.fencing_token, "{info:?}");
    let info = get(&mut c, "forced-only").await;
    assert!(!info.held, "the force-released lease is not restored: {info:?}");
    let err = c
        .renew(v1::RenewRequest { key: "forced".into(), fencing_token: stuck.fencing_token, ttl: None })
        .await
        .expect_err("ended");
    assert_eq!(err.code(), Code::NotFound);
}
