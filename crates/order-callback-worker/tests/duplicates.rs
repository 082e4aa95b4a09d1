//! docs/design.md problem 3, end to end against a real turnstiled and the real
//! worker binary: duplicate deliveries arriving together count once, and a
//! callback that comes before its order commits counts nothing until it is
//! delivered again.

mod common;

use std::collections::BTreeMap;

use common::{request, Service};
use turnstile_testkit::{TempDir, Turnstiled};

const BIN: &str = env!("CARGO_BIN_EXE_order-callback-worker");
const ORDERS: i64 = 100;
const COPIES: usize = 10;
/// Orders per wave of concurrent deliveries.
const WAVE: usize = 10;

/// turnstiled, a temp dir for the database, and one worker.
struct Setup {
    worker: Service,
    _turnstiled: Turnstiled,
    _dir: TempDir,
}

fn start(label: &str) -> Setup {
    let turnstiled = Turnstiled::start(["--data-dir", ""]);
    let dir = TempDir::new(label);
    let db = dir.path().join("orders.db");
    let worker = Service::start(
        BIN,
        &["--turnstile-addr", &turnstiled.url(), "--db", db.to_str().expect("utf-8"), "--lock-ttl", "5s"],
    );
    Setup { worker, _turnstiled: turnstiled, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_duplicates_of_each_of_100_orders_count_each_order_once() {
    let s = start("worker-dups");
    let addr = s.worker.addr;
    for id in 1..=ORDERS {
        let r =
            request(addr, "POST", "/orders", Some(&format!(r#"{{"order_id": {id}, "amount_cents": {}}}"#, id * 10)))
                .await
                .expect("POST /orders");
        assert_eq!(r.status, 201, "{r:?}");
    }

    // The 1000 deliveries in waves of WAVE orders: within a wave, every
    // connection is opened first, then all WAVE × COPIES requests are written
    // together, so the COPIES duplicates of each order always arrive at once.
    // Waves keep the open connections (one file descriptor on each side, in
    // each of the worker and this test) well below the usual 1024 limit.
    let mut answers = Vec::with_capacity(ORDERS as usize * COPIES);
    for first in (1..=ORDERS).step_by(WAVE) {
        let wave: Vec<i64> = (first..(first + WAVE as i64).min(ORDERS + 1)).collect();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(wave.len() * COPIES));
        let mut tasks = tokio::task::JoinSet::new();
        for copy in 0..COPIES {
            for &id in &wave {
                let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let barrier = barrier.clone();
                tasks.spawn(async move {
                    barrier.wait().await;
                    let body = format!(r#"{{"order_id": {id}, "delivery": {copy}}}"#);
                    let r = common::send(stream, addr, "POST", "/callbacks/order-placed", Some(&body)).await;
                    (id, r.expect("delivery"))
                });
            }
        }
        answers.extend(tasks.join_all().await);
    }
    assert_eq!(answers.len(), ORDERS as usize * COPIES);

    let mut outcomes: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (id, r) in &answers {
        assert_eq!(r.status, 200, "order {id}: {r:?}");
        outcomes.entry(*id).or_default().push(r.json["outcome"].as_str().unwrap_or("?").to_owned());
    }
    for (id, outs) in &outcomes {
        let counted = outs.iter().filter(|o| *o == "counted").count();
        let duplicate = outs.iter().filter(|o| *o == "duplicate").count();
        assert_eq!((counted, duplicate), (1, COPIES - 1), "order {id}: {outs:?}");
    }
    let orders = request(addr, "GET", "/orders", None).await.expect("GET /orders");
    let orders = orders.json.as_array().expect("array").clone();
    assert_eq!(orders.len(), ORDERS as usize);
    for o in &orders {
        assert_eq!((o["callback_status"].as_str(), o["times_counted"].as_i64()), (Some("DONE"), Some(1)), "{o}");
    }
    let stats = request(addr, "GET", "/stats", None).await.expect("GET /stats");
    let revenue: i64 = (1..=ORDERS).map(|id| id * 10).sum();
    assert_eq!(stats.json, serde_json::json!({"orders_counted": ORDERS, "revenue_cents": revenue}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_before_its_order_commits_counts_nothing_until_redelivered() {
    let s = start("worker-early");
    let addr = s.worker.addr;
    let deliver = || request(addr, "POST", "/callbacks/order-placed", Some(r#"{"order_id": 77}"#));

    let early = deliver().await.expect("delivery");
    assert_eq!(early.status, 409, "{early:?}");
    assert!(early.json["error"].as_str().unwrap_or_default().contains("not committed yet"), "{early:?}");
    assert_eq!(early.header("retry-after"), Some("1"));
    let stats = request(addr, "GET", "/stats", None).await.expect("stats");
    assert_eq!(stats.json["orders_counted"], 0);

    // The order service commits; the queue delivers again.
    let created =
        request(addr, "POST", "/orders", Some(r#"{"order_id": 77, "amount_cents": 500}"#)).await.expect("POST");
    assert_eq!(created.status, 201, "{created:?}");
    let again = deliver().await.expect("delivery");
    assert_eq!((again.status, again.json["outcome"].as_str()), (200, Some("counted")), "{again:?}");
    let stats = request(addr, "GET", "/stats", None).await.expect("stats");
    assert_eq!(stats.json, serde_json::json!({"orders_counted": 1, "revenue_cents": 500}));

    // Bad input is a 400 with a message, never a count.
    for (body, message) in [
        ("{", "invalid JSON body"),
        (r#"{"id": 77}"#, "missing field `order_id`"),
        (r#"{"order_id": 0}"#, "invalid order_id"),
        (r#"{"order_id": "77"}"#, "invalid JSON body"),
    ] {
        let r = request(addr, "POST", "/callbacks/order-placed", Some(body)).await.expect("request");
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert!(r.json["error"].as_str().unwrap_or_default().contains(message), "{body}: {r:?}");
    }
    let r = request(addr, "POST", "/orders", Some(r#"{"order_id": 77, "amount_cents": 500}"#)).await.expect("POST");
    assert_eq!(r.status, 200, "re-creating an order is idempotent: {r:?}");
    let r = request(addr, "GET", "/orders/78", None).await.expect("GET");
    assert_eq!(r.status, 404, "{r:?}");
}
