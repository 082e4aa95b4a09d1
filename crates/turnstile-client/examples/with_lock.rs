//! `with_lock`: run a future under a lock in one call; it is stopped with
//! `LeaseLost` if the lease is lost before it finishes (the duplicate order
//! callback of docs/design.md problem 3: a redelivered callback waits, then finds
//! the order already counted).
//!
//! Run a coordinator, then `cargo run -p turnstile-client --example with_lock`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use turnstile_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("TURNSTILE_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::builder(addr).ttl(Duration::from_secs(5)).connect().await?;
    let counted = Arc::new(AtomicU32::new(0));

    // The queue delivers the same callback twice, at the same time.
    let deliver = |delivery: u32| {
        let (client, counted) = (client.clone(), counted.clone());
        async move {
            client
                .with_lock("order:1001", |token| async move {
                    // Read–check–write under the lock; the token fences the write.
                    if counted.load(Ordering::SeqCst) == 0 {
                        // The sleep stands for the statistics update.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        counted.fetch_add(1, Ordering::SeqCst);
                        println!("delivery {delivery}: counted the order (fencing token {token})");
                    } else {
                        println!("delivery {delivery}: already counted, nothing to do");
                    }
                })
                .await
        }
    };
    let (a, b) = tokio::join!(deliver(1), deliver(2));
    a?;
    b?;
    println!("order counted {} time(s)", counted.load(Ordering::SeqCst));
    Ok(())
}
