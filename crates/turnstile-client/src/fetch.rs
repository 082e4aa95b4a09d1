//! The fetch lock of docs/design.md problem 2: [`Client::fetch`] and its typed
//! form [`Client::fetch_json`]. Of many concurrent callers one computes, the
//! others receive its bytes; if it fails or dies, the next one computes.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::acquire::{Acquired, Wait};
use crate::client::Client;
use crate::error::Error;

impl Client {
    /// Returns the value for `key`, computing it at most once among
    /// concurrent callers (across processes): the caller that gets the lock
    /// runs `compute` and hands its bytes to every caller waiting at that
    /// moment; those never run `compute`. If `compute` fails, its caller gets
    /// [`Error::Compute`] and the next waiter computes; if its caller dies or
    /// is cancelled, the lease is released (or expires) and the next waiter
    /// computes. Results are handed over, never stored: check your cache
    /// before calling, and fill it from the computing caller.
    ///
    /// The computing caller finishes `compute` even if its lease is lost
    /// meanwhile (the value is still right; only its sharing is lost). A value
    /// larger than the coordinator's maximum result size is returned to the
    /// computing caller but not shared: the waiters then compute themselves.
    ///
    /// ```no_run
    /// # async fn demo(client: turnstile_client::Client) -> Result<(), turnstile_client::Error> {
    /// let page = client
    ///     .fetch("render:/home", || async { Ok::<_, std::io::Error>(b"<html>...".to_vec()) })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn fetch<F, Fut, E>(&self, key: &str, compute: F) -> Result<Vec<u8>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let guard = match self.acquire(key, Wait::Forever, true).await? {
            Acquired::Shared(bytes) => return Ok(bytes),
            Acquired::Lease(guard) => guard,
        };
        match compute().await {
            Ok(bytes) => {
                // Waiters that do not get the result are granted the lock
                // instead and compute themselves: nothing is lost by ignoring
                // a failed hand-over here.
                let _ = guard.release_with_result(bytes.clone()).await;
                Ok(bytes)
            }
            Err(e) => {
                let _ = guard.release().await;
                Err(Error::Compute { source: e.into() })
            }
        }
    }

    /// [`fetch`](Client::fetch) for any serde value, handed over as JSON.
    ///
    /// ```no_run
    /// # async fn demo(client: turnstile_client::Client) -> Result<(), turnstile_client::Error> {
    /// let prices: Vec<u32> = client
    ///     .fetch_json("prices:eu", || async { Ok::<_, std::io::Error>(vec![3, 5, 8]) })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn fetch_json<T, F, Fut, E>(&self, key: &str, compute: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let json = |source| Error::Json { key: key.to_owned(), source };
        let bytes = self
            .fetch(key, || async {
                let value = compute().await.map_err(Into::into)?;
                serde_json::to_vec(&value).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .await?;
        serde_json::from_slice(&bytes).map_err(json)
    }
}
