//! Several `turnstiled` sidecars over one etcd: mutual exclusion and FIFO
//! across them, tokens that grow whoever grants, and waiters that neither
//! poll nor stampede.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use turnstile_testkit::Etcd;

use crate::common::*;

/// G1 across sidecars: 3 sidecars, 64 clients spread over them, 8 keys; an
/// occupancy counter per key, kept outside turnstile, never sees two holders,
/// and tokens grow in the order holders enter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_64_clients_8_keys_never_two_holders() {
    const KEYS: usize = 8;
    const ROUNDS: usize = 4;
    let etcd = Etcd::start();
    let nodes: Vec<_> = (0..3).map(|_| sidecar(&etcd, &[])).collect();
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(client(node).await);
    }
    let inside: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let tokens: Arc<Vec<Mutex<Vec<u64>>>> = Arc::new((0..KEYS).map(|_| Mutex::new(Vec::new())).collect());
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (mut c, inside, tokens) = (clients[i % 3].clone(), inside.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let k = i % KEYS;
            for round in 0..ROUNDS {
                let lease = must_acquire(&mut c, acquire(&format!("k{k}"), &format!("client-{i}"), LONG, WAIT)).await;
                let before = inside[k].fetch_add(1, Ordering::SeqCst);
                assert_eq!(before, 0, "client-{i} round {round} entered k{k} while another holder was inside");
                tokens[k].lock().unwrap().push(lease.fencing_token);
                tokio::time::sleep(Duration::from_millis(1)).await; // the critical section
                inside[k].fetch_sub(1, Ordering::SeqCst);
                must_release(&mut c, &lease).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    for (k, tokens) in tokens.iter().enumerate() {
        let tokens = tokens.lock().unwrap();
        assert_eq!(tokens.len(), 64 / KEYS * ROUNDS);
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "k{k}: tokens not increasing in grant order: {tokens:?}");
    }
}

/// G4 across sidecars: waiters arriving through three sidecars in turn are
/// granted in arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_three_sidecars_are_granted_in_arrival_order() {
    let etcd = Etcd::start();
    let nodes: Vec<_> = (0..3).map(|_| sidecar(&etcd, &[])).collect();
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(client(node).await);
    }
    let mut c0 = clients[0].clone();
    let holder = must_acquire(&mut c0, acquire("fifo", "holder", LONG, Duration::ZERO)).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..24u32 {
        let (mut c, order) = (clients[i as usize % 3].clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let lease = must_acquire(&mut c, acquire("fifo", &format!("w{i}"), LONG, WAIT)).await;
            order.lock().unwrap().push(i);
            must_release(&mut c, &lease).await;
        }));
        // Arrival order: the queue holds waiter i before waiter i+1 is sent.
        await_waiters(&clients[(i as usize + 1) % 3], "fifo", i + 1).await;
    }
    must_release(&mut c0, &holder).await;
    for t in tasks {
        t.await.expect("waiter task");
    }
    assert_eq!(*order.lock().unwrap(), (0..24).collect::<Vec<_>>());
}

/// G2 across sidecars: two sidecars granting one key alternately hand out
/// strictly increasing tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_increase_when_two_sidecars_grant_alternately() {
    let etcd = Etcd::start();
    let (a, b) = (sidecar(&etcd, &[]), sidecar(&etcd, &[]));
    let mut clients = [client(&a).await, client(&b).await];
    let mut last = 0;
    for i in 0..40 {
        let c = &mut clients[i % 2];
        let lease = must_acquire(c, acquire("alt", &format!("o{i}"), LONG, Duration::ZERO)).await;
        assert!(lease.fencing_token > last, "grant {i}: token {} after {last}", lease.fencing_token);
        last = lease.fencing_token;
        must_release(c, &lease).await;
    }
}

/// Sum of etcd's KV calls answered so far (reads and transactions).
fn kv_calls(etcd: &Etcd) -> f64 {
    etcd.metric_sum("grpc_server_handled_total", &[r#"grpc_service="etcdserverpb.KV""#])
}

/// Watch streams etcd has opened so far.
fn watches(etcd: &Etcd) -> f64 {
    etcd.metric_sum("grpc_server_started_total", &[r#"grpc_method="Watch""#])
}

/// No polling and no thundering herd: 20 parked waiters cost etcd nothing
/// while they wait, and a hand-off costs a few calls, not one per waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_waiters_do_not_poll_and_a_handoff_wakes_only_the_next() {
    const WAITERS: u32 = 20;
    let etcd = Etcd::start();
    let node = sidecar(&etcd, &[]);
    let mut c = client(&node).await;
    let holder = must_acquire(&mut c, acquire("herd", "holder", LONG, Duration::ZERO)).await;
    let watches_before = watches(&etcd);
    let (granted_tx, mut granted) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..WAITERS {
        let (mut wc, granted_tx) = (c.clone(), granted_tx.clone());
        tasks.push(tokio::spawn(async move {
            let lease = must_acquire(&mut wc, acquire("herd", &format!("w{i}"), LONG, WAIT)).await;
            let _ = granted_tx.send(lease);
        }));
    }
    await_waiters(&c, "herd", WAITERS).await;
    // Parked: each waiter has read what is ahead of it and watches it.
    eventually("every waiter watches the entry ahead", Duration::from_secs(10), || async {
        watches(&etcd) >= watches_before + f64::from(WAITERS)
    })
    .await;

    let (calls, streams) = (kv_calls(&etcd), watches(&etcd));
    assert!(calls > 0.0, "etcd's gRPC metrics are missing");
    // The scenario: waiters parked for a while (their keep-alives are due only every ttl/3 = 10 s).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(kv_calls(&etcd), calls, "parked waiters must not read etcd (no polling)");
    assert_eq!(watches(&etcd), streams, "parked waiters must not re-watch");

    // Hand-off to the first waiter; the others must not be woken.
    let before_release = kv_calls(&etcd);
    must_release(&mut c, &holder).await;
    let lease = granted.recv().await.expect("a waiter is granted");
    assert!(lease.fencing_token > holder.fencing_token);
    let handoff_calls = kv_calls(&etcd) - before_release;
    assert!(
        handoff_calls <= 4.0,
        "the hand-off took {handoff_calls} etcd KV calls; a thundering herd would take at least {WAITERS}"
    );
    assert_eq!(watches(&etcd), streams, "the hand-off opened new watches: other waiters were woken");
    for t in tasks {
        t.abort();
    }
}
