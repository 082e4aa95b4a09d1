//! A lock guard: take a lock, do fenced work while the guard renews it in the
//! background, stop the moment the lease is lost, release.
//!
//! Run a coordinator (`cargo run -p turnstile-server`), then
//! `cargo run -p turnstile-client --example lock_guard`.
//! `TURNSTILE_ADDR` overrides the address.

use std::time::Duration;

use turnstile_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("TURNSTILE_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::builder(addr).ttl(Duration::from_secs(2)).connect().await?;

    let guard = client.lock("order:17").await?;
    println!("holding {} as {} with fencing token {}", guard.key(), guard.owner(), guard.fencing_token());

    // Work for three TTLs: the guard renews about every ttl/3 meanwhile.
    // Kill the coordinator while this runs to see the lost-lease signal.
    tokio::select! {
        reason = guard.lost() => {
            println!("lease lost ({reason}): stop, another worker may hold the key now");
            return Ok(());
        }
        () = work(guard.fencing_token()) => println!("work done, lease still valid: {}", guard.is_valid()),
    }
    guard.release().await?;
    println!("released");
    Ok(())
}

/// Stands for writes that storage checks against the fencing token.
async fn work(token: u64) {
    for step in 1..=3 {
        // The sleep stands for real work.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("step {step} written with fencing token {token}");
    }
}
