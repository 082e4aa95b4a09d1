//! `fetch_json`: the fetch lock over a typed serde value, handed from the
//! computing caller to the waiting ones as JSON.
//!
//! Run a coordinator, then `cargo run -p turnstile-client --example fetch_json`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use turnstile_client::Client;

/// The value computed once and shared.
#[derive(Debug, Serialize, Deserialize)]
struct Prices {
    currency: String,
    cents: Vec<u32>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("TURNSTILE_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::connect(addr).await?;
    let fetch = |caller: u32| {
        let client = client.clone();
        async move {
            let prices: Prices = client
                .fetch_json("prices:eu", || async move {
                    println!("caller {caller} computes");
                    // The sleep stands for the slow computation.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::io::Error>(Prices { currency: "EUR".into(), cents: vec![299, 499, 999] })
                })
                .await?;
            println!("caller {caller} got {prices:?}");
            Ok::<_, turnstile_client::Error>(())
        }
    };
    let (a, b, c) = tokio::join!(fetch(1), fetch(2), fetch(3));
    a?;
    b?;
    c?;
    Ok(())
}
