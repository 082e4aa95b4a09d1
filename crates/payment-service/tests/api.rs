//! The payment API's edges, end to end: bad input gets 400 with a message,
//! unknown payments 404; and a PUT whose lease passed to another instance
//! while it was paused (SIGSTOP) has its PAID write refused by the fence,
//! whether it writes after the newer holder or before it.

mod common;

use std::time::Duration;

use common::{eventually, request, Response, Service};
use serde_json::Value;
use turnstile_testkit::{TempDir, Turnstiled};

const BIN: &str = env!("CARGO_BIN_EXE_payment-service");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_message() {
    let turnstiled = Turnstiled::start(["--data-dir", ""]);
    let dir = TempDir::new("pay-api");
    let db = dir.path().join("p.db");
    let svc = Service::start(BIN, &["--turnstile-addr", &turnstiled.url(), "--db", db.to_str().expect("utf-8")]);

    let cases = [
        ("POST", "/payments", Some("not json"), 400, "invalid JSON body"),
        ("POST", "/payments", Some(r#"{"amount": 5}"#), 400, "unknown field `amount`"),
        ("POST", "/payments", Some(r#"{"amount_cents": "5"}"#), 400, "invalid JSON body"),
        ("POST", "/payments", Some(r#"{"amount_cents": 0}"#), 400, "invalid amount_cents"),
        ("POST", "/payments", Some(r#"{"amount_cents": 5, "currency": "euro"}"#), 400, "invalid currency"),
        ("GET", "/payments/abc", None, 400, "positive integer"),
        ("PUT", "/payments/-3", None, 400, "positive integer"),
        ("GET", "/payments/999", None, 404, "payment 999 not found"),
        ("PUT", "/payments/999", None, 404, "payment 999 not found"),
        ("GET", "/provider/charges?payment_id=x", None, 400, "invalid query string"),
    ];
    for (method, path, body, status, message) in cases {
        let r = request(svc.addr, method, path, body).await.expect("request");
        let error = r.json["error"].as_str().unwrap_or_default();
        assert_eq!(r.status, status, "{method} {path} {body:?}: {r:?}");
        assert!(error.contains(message), "{method} {path} {body:?}: {error:?} lacks {message:?}");
    }
    let r = request(svc.addr, "POST", "/payments", Some(r#"{"amount_cents": 5}"#)).await.expect("POST");
    assert_eq!((r.status, r.header("location")), (201, Some("/payments/1")), "{r:?}");
    assert_eq!(r.json["currency"], "EUR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_cannot_overwrite_the_newer_holders_payment() {
    let turnstiled = Turnstiled::start(["--data-dir", ""]);
    let dir = TempDir::new("pay-pause");
    let db = dir.path().join("shared.db");
    let db = db.to_str().expect("utf-8");
    let url = turnstiled.url();
    // Two instances on one database, as two replicas behind a load balancer.
    let a =
        Service::start(BIN, &["--turnstile-addr", &url, "--db", db, "--lock-ttl", "500ms", "--provider-delay", "2s"]);
    let b = Service::start(
        BIN,
        &[
            "--turnstile-addr",
            &url,
            "--db",
            db,
            "--lock-ttl",
            "500ms",
            "--lock-mode",
            "wait",
            "--provider-delay",
            "100ms",
        ],
    );
    let created = request(a.addr, "POST", "/payments", Some(r#"{"amount_cents": 990}"#)).await.expect("POST");
    let id = created.json["id"].as_i64().expect("id");
    let path = format!("/payments/{id}");
    let charges_path = format!("/provider/charges?payment_id={id}");

    // A takes the lease and calls the provider (the charge is booked at once).
    let a_addr = a.addr;
    let a_put = tokio::spawn({
        let path = path.clone();
        async move { request(a_addr, "PUT", &path, None).await }
    });
    eventually("A to be inside the provider call", Duration::from_secs(10), || async {
        let r = request(a.addr, "GET", &charges_path, None).await.ok()?;
        (r.json["count"] == 1).then_some(())
    })
    .await;
    // A stalls (a GC pause, a VM migration) and cannot renew its 500 ms lease.
    a.signal(libc::SIGSTOP);

    // B waits in turnstile's queue until A's lease expires, then conducts the
    // payment: A never wrote PAID, so B reads EMPTY and charges.
    let b_put = request(b.addr, "PUT", &path, None).await.expect("PUT on B");
    assert_eq!(b_put.status, 200, "{b_put:?}");
    assert_eq!(b_put.json["state"], "PAID");

    // A wakes up, finishes its provider call and tries to write PAID.
    a.signal(libc::SIGCONT);
    let a_put = a_put.await.expect("task").expect("PUT on A");
    assert_eq!(a_put.status, 409, "the stale holder's write must be refused: {a_put:?}");
    let error = a_put.json["error"].as_str().unwrap_or_default();
    assert!(error.contains("newer lock holder"), "{error}");

    // B's write stands. Both charges happened: a fence protects the storage,
    // it cannot take back a call already made (see the README).
    let stored = request(b.addr, "GET", &path, None).await.expect("GET");
    assert_eq!(stored.json, b_put.json);
    let charges = request(b.addr, "GET", &format!("/provider/charges?payment_id={id}"), None).await.expect("GET");
    assert_eq!(charges.json["count"], 2, "{:?}", charges.json);
    assert_eq!(stored.json["charge_id"], charges.json["charges"][1]["charge_id"]);
    let log = a.stop();
    assert!(log.contains("fenced out"), "A's log does not say it was fenced out:\n{log}");
}

async fn get_json(svc: &Service, path: &str) -> Value {
    let r = request(svc.addr, "GET", path, None).await.expect("GET");
    assert_eq!(r.status, 200, "{path}: {r:?}");
    r.json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_writing_first_after_the_takeover_is_refused_and_the_newer_charge_stands() {
    let turnstiled = Turnstiled::start(["--data-dir", ""]);
    let dir = TempDir::new("pay-reverse");
    let db = dir.path().join("shared.db");
    let db = db.to_str().expect("utf-8");
    let url = turnstiled.url();
    // A: short lease, will be paused past it. B: waits for A's lease, with a
    // lease long enough to outlive its own pause below.
    let a =
        Service::start(BIN, &["--turnstile-addr", &url, "--db", db, "--lock-ttl", "500ms", "--provider-delay", "2s"]);
    let mut b_args = vec!["--turnstile-addr", &url, "--db", db, "--lock-ttl", "10s", "--lock-mode", "wait"];
    b_args.extend(["--lock-wait", "20s", "--provider-delay", "3s"]);
    let b = Service::start(BIN, &b_args);
    let created = request(a.addr, "POST", "/payments", Some(r#"{"amount_cents": 990}"#)).await.expect("POST");
    let id = created.json["id"].as_i64().expect("id");
    let path = format!("/payments/{id}");
    let charges_path = format!("/provider/charges?payment_id={id}");
    let put = |addr| {
        let path = path.clone();
        tokio::spawn(async move { request(addr, "PUT", &path, None).await })
    };

    // A claims the payment and calls the provider (the charge is booked at
    // once), then stalls inside the call past its 500 ms ttl.
    let a_put = put(a.addr);
    eventually("A to be inside the provider call", Duration::from_secs(10), || async {
        let r = request(a.addr, "GET", &charges_path, None).await.ok()?;
        (r.json["count"] == 1).then_some(())
    })
    .await;
    a.signal(libc::SIGSTOP);
    let claimed_by_a = get_json(&b, &path).await;
    assert_eq!(claimed_by_a["state"], "EMPTY", "{claimed_by_a}");
    let a_token = claimed_by_a["fencing_token"].as_u64().expect("token");
    assert!(a_token > 0, "A charged without claiming the row first: {claimed_by_a}");

    // B gets the lease once A's expires, claims the row and charges; it is
    // paused inside its provider call, before its PAID write.
    let b_put = put(b.addr);
    eventually("B to be inside the provider call", Duration::from_secs(10), || async {
        let r = request(b.addr, "GET", &charges_path, None).await.ok()?;
        (r.json["count"] == 2).then_some(())
    })
    .await;
    let claimed_by_b = get_json(&b, &path).await;
    b.signal(libc::SIGSTOP);
    assert_eq!(claimed_by_b["state"], "EMPTY", "{claimed_by_b}");
    let b_token = claimed_by_b["fencing_token"].as_u64().expect("token");
    assert!(b_token > a_token, "B did not claim the row over A: {claimed_by_b}");

    // A wakes first, finishes its provider call and writes: refused, because
    // the row carries B's claim. Nothing is written.
    a.signal(libc::SIGCONT);
    let a_put: Response = a_put.await.expect("task").expect("PUT on A");
    assert_eq!(a_put.status, 409, "the stale holder's write must be refused: {a_put:?}");
    let error = a_put.json["error"].as_str().unwrap_or_default();
    assert!(error.contains("newer lock holder") && error.contains("needs a refund"), "{error}");
    let after_a = get_json(&a, &path).await;
    assert_eq!((&after_a["state"], after_a["fencing_token"].as_u64()), (&Value::from("EMPTY"), Some(b_token)));

    // B wakes and writes: its charge (the second one) is the one recorded.
    b.signal(libc::SIGCONT);
    let b_put = b_put.await.expect("task").expect("PUT on B");
    assert_eq!(b_put.status, 200, "{b_put:?}");
    let charges = get_json(&b, &charges_path).await;
    assert_eq!(charges["count"], 2, "{charges}");
    let stored = get_json(&b, &path).await;
    assert_eq!(stored, b_put.json);
    assert_eq!((&stored["state"], stored["fencing_token"].as_u64()), (&Value::from("PAID"), Some(b_token)));
    assert_eq!(stored["charge_id"], charges["charges"][1]["charge_id"], "B's charge must stand: {charges}");
    let log = a.stop();
    assert!(log.contains("fenced out"), "A's log does not say it was fenced out:\n{log}");
}
