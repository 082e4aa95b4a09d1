//! docs/design.md problem 1, end to end: 20 concurrent PUTs on one payment against
//! a real turnstiled and the real payment-service binary. With the lock the
//! provider is called exactly once; with `--no-lock` it is called more than
//! once (the double charge the lock exists for).

mod common;

use common::{concurrent, request, Response, Service};
use serde_json::Value;
use turnstile_testkit::{TempDir, Turnstiled};

const BIN: &str = env!("CARGO_BIN_EXE_payment-service");
const PUTS: usize = 20;

/// turnstiled, a temp dir for the database, and the service.
struct Setup {
    svc: Service,
    _turnstiled: Turnstiled,
    _dir: TempDir,
}

fn start(label: &str, args: &[&str]) -> Setup {
    let turnstiled = Turnstiled::start(["--data-dir", ""]);
    let dir = TempDir::new(label);
    let db = dir.path().join("payments.db");
    let url = turnstiled.url();
    let mut all = vec!["--turnstile-addr", &url, "--db", db.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    Setup { svc: Service::start(BIN, &all), _turnstiled: turnstiled, _dir: dir }
}

async fn create_payment(svc: &Service) -> i64 {
    let r = request(svc.addr, "POST", "/payments", Some(r#"{"amount_cents": 4200, "currency": "EUR"}"#))
        .await
        .expect("POST /payments");
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["state"], "EMPTY");
    r.json["id"].as_i64().expect("id")
}

async fn provider_charges(svc: &Service, id: i64) -> Vec<Value> {
    let r = request(svc.addr, "GET", &format!("/provider/charges?payment_id={id}"), None).await.expect("GET charges");
    assert_eq!(r.status, 200, "{r:?}");
    r.json["charges"].as_array().expect("charges").clone()
}

async fn payment(svc: &Service, id: i64) -> Value {
    let r = request(svc.addr, "GET", &format!("/payments/{id}"), None).await.expect("GET payment");
    assert_eq!(r.status, 200, "{r:?}");
    r.json
}

fn count(rs: &[Response], status: u16) -> usize {
    rs.iter().filter(|r| r.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn try_mode_charges_once_and_answers_409_to_the_others() {
    // The provider takes 2 s, so all 20 PUTs arrive while the first holds the lock.
    let s = start("pay-try", &["--lock-mode", "try", "--provider-delay", "2s"]);
    let id = create_payment(&s.svc).await;

    let rs = concurrent(s.svc.addr, PUTS, "PUT", &format!("/payments/{id}"), None).await;

    assert_eq!((count(&rs, 200), count(&rs, 409)), (1, PUTS - 1), "{rs:#?}");
    for r in rs.iter().filter(|r| r.status == 409) {
        assert_eq!(r.json, serde_json::json!({"error": "Resource is locked"}));
        assert!(r.header("retry-after").is_some(), "409 without Retry-After: {r:?}");
    }
    let charges = provider_charges(&s.svc, id).await;
    assert_eq!(charges.len(), 1, "provider called more than once: {charges:?}");
    let paid = rs.iter().find(|r| r.status == 200).expect("one 200");
    let stored = payment(&s.svc, id).await;
    assert_eq!(stored["state"], "PAID");
    assert_eq!(stored["charge_id"], charges[0]["charge_id"]);
    assert_eq!(stored, paid.json);
    assert!(stored["fencing_token"].as_u64().expect("token") > 0, "PAID write not fenced: {stored}");

    // A later PUT finds it PAID and charges nothing.
    let again = request(s.svc.addr, "PUT", &format!("/payments/{id}"), None).await.expect("PUT");
    assert_eq!((again.status, &again.json), (200, &stored));
    assert_eq!(provider_charges(&s.svc, id).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_mode_charges_once_and_every_put_gets_the_paid_payment() {
    let s = start("pay-wait", &["--lock-mode", "wait", "--lock-wait", "30s", "--provider-delay", "1s"]);
    let id = create_payment(&s.svc).await;

    let rs = concurrent(s.svc.addr, PUTS, "PUT", &format!("/payments/{id}"), None).await;

    assert_eq!(count(&rs, 200), PUTS, "{rs:#?}");
    let charges = provider_charges(&s.svc, id).await;
    assert_eq!(charges.len(), 1, "provider called more than once: {charges:?}");
    let stored = payment(&s.svc, id).await;
    assert_eq!(stored["state"], "PAID");
    assert_eq!(stored["charge_id"], charges[0]["charge_id"]);
    for r in &rs {
        assert_eq!(r.json, stored, "every PUT answers the same PAID payment");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_lock_concurrent_puts_charge_the_card_more_than_once() {
    // The broken version, so that the demo's "before" is real: every PUT reads
    // EMPTY during the 2 s provider call and charges again.
    let s = start("pay-nolock", &["--no-lock", "--provider-delay", "2s"]);
    let id = create_payment(&s.svc).await;

    let rs = concurrent(s.svc.addr, PUTS, "PUT", &format!("/payments/{id}"), None).await;

    assert_eq!(count(&rs, 200), PUTS, "{rs:#?}");
    let charges = provider_charges(&s.svc, id).await;
    assert!(charges.len() > 1, "expected a double charge without the lock, got {charges:?}");
    assert_eq!(payment(&s.svc, id).await["state"], "PAID");
}
