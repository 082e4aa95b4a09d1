//! The cache stampede of docs/design.md problem 2: N concurrent requests miss the
//! cache for one cold key; with `fetch`, one computes and the others receive
//! its value, with no second computation and no second cache read.
//!
//! Run a coordinator, then
//! `cargo run -p turnstile-client --example fetch_stampede [N]` (default 50).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use turnstile_client::Client;

/// The application's cache (the coordinator hands results over, never stores them).
type Cache = Arc<Mutex<HashMap<String, Vec<u8>>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("TURNSTILE_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let client = Client::connect(addr).await?;
    let cache: Cache = Arc::default();
    let computations = Arc::new(AtomicU32::new(0));

    let started = Instant::now();
    let requests: Vec<_> = (0..n)
        .map(|_| {
            let (client, cache, computations) = (client.clone(), cache.clone(), computations.clone());
            tokio::spawn(async move { handle_request(&client, &cache, &computations, "report:2024-06").await })
        })
        .collect();
    for r in requests {
        let body = r.await??;
        assert_eq!(body, b"the expensive report");
    }
    println!(
        "{n} concurrent requests for one cold key: {} computation(s), {:?}",
        computations.load(Ordering::SeqCst),
        started.elapsed()
    );
    Ok(())
}

/// One request: cache hit, or a fetch that computes at most once among all
/// concurrent callers.
async fn handle_request(
    client: &Client,
    cache: &Cache,
    computations: &AtomicU32,
    key: &str,
) -> Result<Vec<u8>, turnstile_client::Error> {
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
        return Ok(hit.clone());
    }
    client
        .fetch(key, || async {
            computations.fetch_add(1, Ordering::SeqCst);
            // The sleep stands for the slow query behind the cache.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let value = b"the expensive report".to_vec();
            cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_owned(), value.clone());
            Ok::<_, std::io::Error>(value)
        })
        .await
}
