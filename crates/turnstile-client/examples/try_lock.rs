//! Try-lock, the double payment of docs/design.md problem 1: a second concurrent
//! "PUT /payments/42" gets `409 Resource is locked` at once instead of
//! charging the card twice.
//!
//! Run a coordinator, then `cargo run -p turnstile-client --example try_lock`.

use std::time::Duration;

use turnstile_client::{Client, Error};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("TURNSTILE_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::builder(addr).ttl(Duration::from_secs(10)).connect().await?;

    let (first, second) = tokio::join!(conduct(&client, 42), conduct(&client, 42));
    println!("first PUT:  {}", first?);
    println!("second PUT: {}", second?);
    Ok(())
}

/// `PUT /payments/{id}`: read state, charge (slow), mark paid — under a lock.
async fn conduct(client: &Client, id: u32) -> Result<String, Error> {
    let guard = match client.try_lock(&format!("payment:{id}")).await {
        Ok(guard) => guard,
        Err(Error::Contended { holder, expires_in, .. }) => {
            return Ok(format!("409 Resource is locked (by {holder:?}, for {expires_in:?})"));
        }
        Err(e) => return Err(e),
    };
    // The sleep stands for the third-party payment provider (about 3 s in
    // the write-up; shortened here).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let token = guard.fencing_token();
    guard.release().await?;
    Ok(format!("200 charged (fencing token {token})"))
}
