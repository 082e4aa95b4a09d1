//! The fetch lock against a real turnstiled: one computation for many
//! concurrent callers, and the next caller computing when the first fails or
//! is aborted.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, eventually, server, within};
use turnstile_client::{Client, Error};

const TTL: Duration = Duration::from_secs(5);
const CALLERS: usize = 50;

/// Waits until `n` callers are queued on `key`.
async fn queued(c: &Client, key: &str, n: u32) {
    eventually(Duration::from_secs(10), "callers queued", || async {
        (c.get(key).await.ok()?.waiters == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_fetches_compute_once_and_all_get_the_value() {
    let node = server();
    let c = client(&node, TTL).await;
    let computed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (c, computed) = (c.clone(), computed.clone());
            tokio::spawn(async move {
                let probe = c.clone();
                c.fetch("cold:1", || async move {
                    computed.fetch_add(1, Ordering::SeqCst);
                    // Compute only once every other caller waits for us.
                    queued(&probe, "cold:1", (CALLERS - 1) as u32).await;
                    Ok::<_, std::io::Error>(b"expensive value".to_vec())
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        let v = within(Duration::from_secs(20), "fetch", t).await.expect("task").expect("fetch");
        assert_eq!(v, b"expensive value");
    }
    assert_eq!(computed.load(Ordering::SeqCst), 1, "exactly one computation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_computing_caller_is_aborted_the_next_one_computes() {
    let node = server();
    let c = client(&node, TTL).await;
    let computed = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (c, computed, started) = (c.clone(), computed.clone(), started_tx.clone());
            tokio::spawn(async move {
                c.fetch("cold:2", || async move {
                    if computed.fetch_add(1, Ordering::SeqCst) == 0 {
                        // The first computation hangs until its caller is aborted.
                        let _ = started.send(i);
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, std::io::Error>(b"second try".to_vec())
                })
                .await
            })
        })
        .collect();
    let first = within(Duration::from_secs(10), "first computation starts", started_rx.recv()).await.expect("index");
    queued(&c, "cold:2", (CALLERS - 1) as u32).await;
    tasks[first].abort();
    for (i, t) in tasks.into_iter().enumerate() {
        let res = within(Duration::from_secs(20), "fetch", t).await;
        if i == first {
            assert!(res.expect_err("aborted").is_cancelled());
        } else {
            assert_eq!(res.expect("task").expect("fetch"), b"second try");
        }
    }
    assert_eq!(computed.load(Ordering::SeqCst), 2, "the aborted computation and one more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_computation_fails_the_next_caller_computes() {
    let node = server();
    let c = client(&node, TTL).await;
    let computed = Arc::new(AtomicUsize::new(0));
    let n = 5;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, computed) = (c.clone(), computed.clone());
            tokio::spawn(async move {
                let probe = c.clone();
                c.fetch("cold:3", || async move {
                    if computed.fetch_add(1, Ordering::SeqCst) == 0 {
                        queued(&probe, "cold:3", n - 1).await;
                        return Err(std::io::Error::other("backend down"));
                    }
                    Ok(b"v".to_vec())
                })
                .await
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        match within(Duration::from_secs(20), "fetch", t).await.expect("task") {
            Ok(v) => assert_eq!(v, b"v"),
            Err(Error::Compute { source }) => {
                assert_eq!(source.to_string(), "backend down");
                failed += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((failed, computed.load(Ordering::SeqCst)), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_json_hands_over_typed_values() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Prices {
        eur: Vec<u32>,
    }
    let node = server();
    let c = client(&node, TTL).await;
    let computed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (c, computed) = (c.clone(), computed.clone());
            tokio::spawn(async move {
                let probe = c.clone();
                c.fetch_json("prices", || async move {
                    computed.fetch_add(1, Ordering::SeqCst);
                    queued(&probe, "prices", 2).await;
                    Ok::<_, std::io::Error>(Prices { eur: vec![3, 5, 8] })
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        let p: Prices = within(Duration::from_secs(20), "fetch_json", t).await.expect("task").expect("fetch");
        assert_eq!(p, Prices { eur: vec![3, 5, 8] });
    }
    assert_eq!(computed.load(Ordering::SeqCst), 1);
}
