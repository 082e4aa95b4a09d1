//! A worker that dies or stalls while it holds an order's lease, end to end:
//! two worker processes share one SQLite file and one turnstiled.
//! - SIGKILL mid-work: after the ttl the other worker processes the order;
//!   nothing is counted twice and nothing is lost.
//! - SIGSTOP past the ttl, then SIGCONT: the stalled worker's write comes
//!   after the other worker's and is refused by the fence.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, request, Service};
use serde_json::Value;
use turnstile_testkit::{TempDir, Turnstiled};

const BIN: &str = env!("CARGO_BIN_EXE_order-callback-worker");

/// turnstiled and a temp dir holding the shared database.
struct Shared {
    turnstiled: Turnstiled,
    dir: TempDir,
}

impl Shared {
    fn new(label: &str) -> Shared {
        Shared { turnstiled: Turnstiled::start(["--data-dir", ""]), dir: TempDir::new(label) }
    }

    /// A worker on the shared database with `args` added.
    fn worker(&self, args: &[&str]) -> Service {
        let db = self.dir.path().join("orders.db");
        let url = self.turnstiled.url();
        let mut all = vec!["--turnstile-addr", &url, "--db", db.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        Service::start(BIN, &all)
    }
}

async fn deliver(worker: &Service, order_id: i64) -> common::Response {
    let body = format!(r#"{{"order_id": {order_id}}}"#);
    request(worker.addr, "POST", "/callbacks/order-placed", Some(&body)).await.expect("delivery")
}

async fn get(worker: &Service, path: &str) -> Value {
    let r = request(worker.addr, "GET", path, None).await.expect("GET");
    assert_eq!(r.status, 200, "{path}: {r:?}");
    r.json
}

/// Waits until `worker` holds the lease of `order_id` (it is in its
/// `--work-delay`), and returns the lease's fencing token.
async fn holding(worker: &Service, order_id: i64) -> u64 {
    eventually("the worker to hold the order's lease", Duration::from_secs(10), || async {
        let r = request(worker.addr, "GET", "/leases", None).await.ok()?;
        let held = r.json.as_array()?.iter().find(|h| h["order_id"] == order_id)?.clone();
        held["fencing_token"].as_u64()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_holding_a_lease_loses_nothing_and_counts_nothing_twice() {
    let shared = Shared::new("worker-kill");
    // A is slow (30 s of work per delivery) and will be killed mid-work.
    let a = shared.worker(&["--lock-ttl", "1s", "--work-delay", "30s"]);
    let b = shared.worker(&["--lock-ttl", "1s"]);
    for id in [1, 2] {
        let body = format!(r#"{{"order_id": {id}, "amount_cents": 700}}"#);
        let r = request(b.addr, "POST", "/orders", Some(&body)).await.expect("POST /orders");
        assert_eq!(r.status, 201, "{r:?}");
    }

    let a_addr = a.addr;
    let first =
        tokio::spawn(
            async move { request(a_addr, "POST", "/callbacks/order-placed", Some(r#"{"order_id": 1}"#)).await },
        );
    let a_token = holding(&a, 1).await;
    // Leases are per order: order 2 goes through while A holds order 1.
    let other = deliver(&b, 2).await;
    assert_eq!((other.status, other.json["outcome"].as_str()), (200, Some("counted")), "{other:?}");

    let _ = a.kill();
    let lost = first.await.expect("task");
    assert!(lost.is_err(), "the killed worker answered: {lost:?}");

    // The queue redelivers to B, which waits for A's lease to expire (1 s ttl).
    let started = Instant::now();
    let redelivered = deliver(&b, 1).await;
    assert_eq!((redelivered.status, redelivered.json["outcome"].as_str()), (200, Some("counted")), "{redelivered:?}");
    assert!(redelivered.json["fencing_token"].as_u64().expect("token") > a_token);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?} to take over", started.elapsed());
    // And once more, as at-least-once queues do.
    let again = deliver(&b, 1).await;
    assert_eq!((again.status, again.json["outcome"].as_str()), (200, Some("duplicate")), "{again:?}");

    assert_eq!(get(&b, "/stats").await, serde_json::json!({"orders_counted": 2, "revenue_cents": 1400}));
    for id in [1, 2] {
        let o = get(&b, &format!("/orders/{id}")).await;
        assert_eq!((o["callback_status"].as_str(), o["times_counted"].as_i64()), (Some("DONE"), Some(1)), "{o}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_writing_after_the_takeover_is_fenced_out() {
    let shared = Shared::new("worker-pause");
    // A holds its lease for 1.5 s of work with a 500 ms ttl, renewed while it runs.
    let a = shared.worker(&["--lock-ttl", "500ms", "--work-delay", "1500ms"]);
    let b = shared.worker(&["--lock-ttl", "500ms"]);
    let r = request(b.addr, "POST", "/orders", Some(r#"{"order_id": 9, "amount_cents": 300}"#)).await.expect("POST");
    assert_eq!(r.status, 201, "{r:?}");

    let a_addr = a.addr;
    let first =
        tokio::spawn(
            async move { request(a_addr, "POST", "/callbacks/order-placed", Some(r#"{"order_id": 9}"#)).await },
        );
    let a_token = holding(&a, 9).await;
    // A stalls mid-work (GC pause, VM migration): it cannot renew, and its
    // lease expires on the coordinator.
    a.signal(libc::SIGSTOP);

    // The redelivery to B waits for A's lease to expire, then counts the order.
    let taken_over = deliver(&b, 9).await;
    assert_eq!((taken_over.status, taken_over.json["outcome"].as_str()), (200, Some("counted")), "{taken_over:?}");
    let b_token = taken_over.json["fencing_token"].as_u64().expect("token");
    assert!(b_token > a_token);

    // A wakes up, finishes its work and writes with its old token: refused.
    a.signal(libc::SIGCONT);
    let stale = first.await.expect("task").expect("A's answer");
    assert_eq!(stale.status, 409, "{stale:?}");
    let error = stale.json["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("fenced out"), "{error}");

    assert_eq!(get(&b, "/stats").await, serde_json::json!({"orders_counted": 1, "revenue_cents": 300}));
    let o = get(&b, "/orders/9").await;
    assert_eq!(o["times_counted"], 1, "{o}");
    assert_eq!(o["fencing_token"].as_u64(), Some(b_token), "B's write stands: {o}");
    let log = a.stop();
    assert!(log.contains("fenced out"), "A's log does not say it was fenced out:\n{log}");
}
