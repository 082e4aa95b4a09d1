//! Bearer tokens: who may call, which keys, which verbs. In-process servers
//! over plaintext loopback (TLS is `tls`'s subject).

use tonic::Code;
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};
use turnstile_testkit::TempDir;

use crate::common::{acquire, call, channel, holder, in_process, token_file, ADMIN, INSPECTOR, PAYMENTS};

/// A server that demands tokens, and its token file's directory.
fn server() -> (turnstile_testkit::InProcess, TempDir) {
    let dir = TempDir::new("tokens");
    let file = token_file(dir.path());
    (in_process(&["--auth-token-file", file.to_str().expect("utf-8")]), dir)
}

#[tokio::test]
async fn a_call_without_a_valid_token_is_unauthenticated_and_health_needs_none() {
    let (node, _dir) = server();
    let ch = channel(&node.url()).await;
    let mut c = LockServiceClient::new(ch.clone());
    for token in [None, Some("not-a-known-token-0000"), Some("")] {
        let e = c.acquire(call(acquire("payments/1", "w"), token)).await.expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "Acquire with {token:?}: {e:?}");
        let e = c.get_lock(call(v1::GetLockRequest { key: "payments/1".into() }, token)).await.expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "GetLock with {token:?}: {e:?}");
        let e = c.list_locks(call(v1::ListLocksRequest::default(), token)).await.expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "ListLocks with {token:?}: {e:?}");
        let e = c.renew(call(v1::RenewRequest { key: "payments/1".into(), fencing_token: 1, ttl: None }, token));
        assert_eq!(e.await.expect_err("refused").code(), Code::Unauthenticated);
        let e = c.release(call(v1::ReleaseRequest { key: "payments/1".into(), fencing_token: 1, result: None }, token));
        assert_eq!(e.await.expect_err("refused").code(), Code::Unauthenticated);
    }
    // A Basic credential is not a bearer token.
    let mut r = call(acquire("payments/1", "w"), None);
    r.metadata_mut().insert("authorization", format!("Basic {PAYMENTS}").parse().expect("ascii"));
    assert_eq!(c.acquire(r).await.expect_err("refused").code(), Code::Unauthenticated);
    // Nothing was granted by any of them.
    assert!(!holder(&mut c, "payments/1").await.held);

    // Health and reflection are not LockService: reachable without a token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health");
    assert_eq!(r.into_inner().status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    let mut reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers =
        reflection.server_reflection_info(tokio_stream::iter([req])).await.expect("reflection").into_inner();
    assert!(answers.message().await.expect("reflection answer").is_some());
}

#[tokio::test]
async fn a_key_outside_the_tokens_prefixes_is_permission_denied_and_changes_nothing() {
    let (node, _dir) = server();
    let mut c = LockServiceClient::new(channel(&node.url()).await);
    // An orders/ lease held through the admin token.
    let held = c.acquire(call(acquire("orders/7", "admin"), Some(ADMIN))).await.expect("admin locks").into_inner();
    let token = held.lease.expect("lease").fencing_token;

    let e = c.acquire(call(acquire("orders/8", "pay"), Some(PAYMENTS))).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("payments/"), "the refusal names the token's prefixes: {}", e.message());
    let e = c.acquire(call(acquire("orders/7", "pay"), Some(PAYMENTS))).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied);
    let release =
        v1::ReleaseRequest { key: "orders/7".into(), fencing_token: token, result: Some(b"x".to_vec().into()) };
    let e = c.release(call(release, Some(PAYMENTS))).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied);
    let renew = v1::RenewRequest { key: "orders/7".into(), fencing_token: token, ttl: None };
    assert_eq!(c.renew(call(renew, Some(PAYMENTS))).await.expect_err("refused").code(), Code::PermissionDenied);
    // A prefix is a prefix of the key, not of a path segment's name.
    let e = c.acquire(call(acquire("payments", "pay"), Some(PAYMENTS))).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied);

    // Nothing changed: orders/7 is held as before, orders/8 by nobody.
    let info = holder(&mut c, "orders/7").await;
    assert!(info.held && info.owner == "admin" && info.fencing_token == token, "{info:?}");
    assert!(!holder(&mut c, "orders/8").await.held);
    assert!(!holder(&mut c, "payments").await.held);
    // Within its prefix the token works.
    let r = c.acquire(call(acquire("payments/1", "pay"), Some(PAYMENTS))).await.expect("own prefix").into_inner();
    assert!(r.acquired);
}

#[tokio::test]
async fn an_inspect_only_token_cannot_lock_renew_or_release() {
    let (node, _dir) = server();
    let mut c = LockServiceClient::new(channel(&node.url()).await);
    let lease = c.acquire(call(acquire("payments/9", "pay"), Some(PAYMENTS))).await.expect("lock").into_inner();
    let token = lease.lease.expect("lease").fencing_token;

    let e = c.acquire(call(acquire("payments/10", "peek"), Some(INSPECTOR))).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("may not lock"), "{}", e.message());
    let renew = v1::RenewRequest { key: "payments/9".into(), fencing_token: token, ttl: None };
    assert_eq!(c.renew(call(renew, Some(INSPECTOR))).await.expect_err("refused").code(), Code::PermissionDenied);
    let release = v1::ReleaseRequest { key: "payments/9".into(), fencing_token: token, result: None };
    assert_eq!(c.release(call(release, Some(INSPECTOR))).await.expect_err("refused").code(), Code::PermissionDenied);

    // It may look, everywhere, and what it looks at is unchanged.
    let info = c.get_lock(call(v1::GetLockRequest { key: "payments/9".into() }, Some(INSPECTOR))).await.expect("get");
    let info = info.into_inner();
    assert!(info.held && info.fencing_token == token, "{info:?}");
    assert!(!holder(&mut c, "payments/10").await.held);
    let list = c.list_locks(call(v1::ListLocksRequest::default(), Some(INSPECTOR))).await.expect("list");
    assert_eq!(list.into_inner().locks.len(), 1);
}

#[tokio::test]
async fn a_payments_token_can_neither_lock_nor_list_orders() {
    let (node, _dir) = server();
    let mut c = LockServiceClient::new(channel(&node.url()).await);
    for key in ["orders/1", "orders/2", "payments/1", "payments/2", "payments/3", "refunds/1"] {
        assert!(c.acquire(call(acquire(key, "admin"), Some(ADMIN))).await.expect("admin locks").into_inner().acquired);
    }

    let e = c.acquire(call(acquire("orders/3", "pay"), Some(PAYMENTS))).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied);
    let list = |prefix: &str, page_size: u32, page_token: &str| {
        call(v1::ListLocksRequest { prefix: prefix.into(), page_size, page_token: page_token.into() }, Some(PAYMENTS))
    };
    let e = c.list_locks(list("orders/", 0, "")).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = c.get_lock(call(v1::GetLockRequest { key: "orders/1".into() }, Some(PAYMENTS))).await.expect_err("no");
    assert_eq!(e.code(), Code::PermissionDenied);

    // Listing everything, or a prefix wider than its own, shows only payments/,
    // page by page.
    for prefix in ["", "p"] {
        let mut keys = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = c.list_locks(list(prefix, 2, &page_token)).await.expect("list").into_inner();
            keys.extend(page.locks.into_iter().map(|l| l.key));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(keys, ["payments/1", "payments/2", "payments/3"], "prefix {prefix:?}");
    }
    // An admin sees them all.
    let all = c.list_locks(call(v1::ListLocksRequest::default(), Some(ADMIN))).await.expect("list").into_inner();
    assert_eq!(all.locks.len(), 6);
}

#[tokio::test]
async fn the_client_crate_sends_its_bearer_token() {
    let (node, _dir) = server();
    let client = |token: Option<&str>| {
        let b = turnstile_client::Client::builder(node.url());
        match token {
            Some(t) => b.bearer_token(t),
            None => b,
        }
        .connect_lazy()
        .expect("client")
    };
    let pay = client(Some(PAYMENTS));
    let guard = pay.try_lock("payments/42").await.expect("lock through the client crate");
    let err = pay.try_lock("orders/42").await.expect_err("outside its prefixes");
    assert!(matches!(err, turnstile_client::Error::PermissionDenied { .. }), "{err:?}");
    assert_eq!(pay.list("").await.expect("list").len(), 1);
    guard.release().await.expect("release");
    let err = client(None).list("").await.expect_err("no token");
    assert!(matches!(err, turnstile_client::Error::Unauthenticated { .. }), "{err:?}");
}

/// ForceRelease needs the admin verb: lock and inspect, even on the token's
/// own prefix, are PERMISSION_DENIED (no token: UNAUTHENTICATED), and the
/// lease and its waiter stay as they were; the admin token frees the key.
#[tokio::test]
async fn force_release_needs_the_admin_verb_and_a_refusal_changes_nothing() {
    let (node, _dir) = server();
    let mut c = LockServiceClient::new(channel(&node.url()).await);
    let held = c.acquire(call(acquire("payments/9", "pay"), Some(PAYMENTS))).await.expect("lock").into_inner();
    let token = held.lease.expect("lease").fencing_token;
    let mut wc = c.clone();
    let waiter = tokio::spawn(async move {
        let req = v1::AcquireRequest {
            wait_timeout: Some(prost_types::Duration { seconds: 20, nanos: 0 }),
            ..acquire("payments/9", "next")
        };
        wc.acquire(call(req, Some(PAYMENTS))).await
    });
    turnstile_testkit::eventually("the waiter on payments/9 is parked", std::time::Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { (holder(&mut c, "payments/9").await.waiters >= 1).then_some(()) }
    })
    .await;
    let force = || v1::ForceReleaseRequest { key: "payments/9".into(), fencing_token: None };
    for t in [PAYMENTS, INSPECTOR] {
        let e = c.force_release(call(force(), Some(t))).await.expect_err("refused");
        assert_eq!(e.code(), Code::PermissionDenied, "{t}: {e:?}");
        assert!(e.message().contains("admin"), "the refusal names the verb: {}", e.message());
    }
    let e = c.force_release(call(force(), None)).await.expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated);
    let info = holder(&mut c, "payments/9").await;
    assert!(info.held && info.fencing_token == token && info.waiters == 1, "nothing changed: {info:?}");

    let r = c.force_release(call(force(), Some(ADMIN))).await.expect("admin may").into_inner();
    assert!(r.released && r.previous.is_some_and(|p| p.fencing_token == token));
    let granted = waiter.await.expect("waiter task").expect("waiter's acquire").into_inner();
    assert!(granted.acquired && granted.lease.is_some_and(|l| l.fencing_token > token));
}
