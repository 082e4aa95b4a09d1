//! Taking a lock: [`Client::lock`], [`Client::try_lock`],
//! [`Client::lock_timeout`], [`Client::with_lock`], and the one acquire loop
//! behind them and behind [`Client::fetch`].

use std::future::Future;
use std::time::{Duration, Instant};

use turnstile_proto::v1;

use crate::client::{check_key, Client};
use crate::error::Error;
use crate::guard::LockGuard;
use crate::info::{duration, proto_duration};
use crate::rpc::Retry;
use crate::schedule::{backoff, needs_confirmation, wait_for_call};

/// How long to wait for a lock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Try once.
    No,
    /// Until this instant.
    Until(Instant),
    /// As long as it takes.
    Forever,
}

/// The outcome of the acquire loop.
pub(crate) enum Acquired {
    /// The lock.
    Lease(LockGuard),
    /// The holder's result, handed over instead of the lock (`share_result`).
    Shared(Vec<u8>),
}

impl Client {
    /// Waits in the key's queue until the lock is granted, however long
    /// that takes: waits past the coordinator's maximum are re-issued, and a
    /// coordinator that is restarting, recovering or unreachable is asked
    /// again with backoff (50 ms doubling to 1 s) for as long as it takes. To
    /// bound the wait, use [`lock_timeout`](Client::lock_timeout) or drop the
    /// future: the coordinator then removes the waiter.
    pub async fn lock(&self, key: &str) -> Result<LockGuard, Error> {
        self.acquire_guard(key, Wait::Forever).await
    }

    /// Takes the lock if it is free, else fails at once with
    /// [`Error::Contended`] naming the holder.
    ///
    /// ```no_run
    /// # async fn demo(client: turnstile_client::Client) -> Result<(), turnstile_client::Error> {
    /// use turnstile_client::Error;
    /// match client.try_lock("payment:42").await {
    ///     Ok(guard) => { /* charge the card */ drop(guard) }
    ///     Err(Error::Contended { holder, .. }) => println!("409: locked by {holder:?}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_lock(&self, key: &str) -> Result<LockGuard, Error> {
        self.acquire_guard(key, Wait::No).await
    }

    /// Waits at most `timeout` for the lock; [`Error::Contended`] when it was
    /// not granted in time. A zero timeout is a [`try_lock`](Client::try_lock).
    pub async fn lock_timeout(&self, key: &str, timeout: Duration) -> Result<LockGuard, Error> {
        let wait = if timeout.is_zero() { Wait::No } else { Wait::Until(Instant::now() + timeout) };
        self.acquire_guard(key, wait).await
    }

    /// Runs `work` under the lock on `key` (waiting for it as
    /// [`lock`](Client::lock) does), with the fencing token as argument, then
    /// releases the lock. If the lease is lost before `work` finishes, `work`
    /// is dropped at that moment and the result is [`Error::LeaseLost`]; so it
    /// is when the release finds that the lease had already ended (the work
    /// may have overlapped with another holder). A release that cannot reach
    /// the coordinator after `work` finished does not change the result: the
    /// lease then expires after its TTL.
    ///
    /// ```no_run
    /// # async fn demo(client: turnstile_client::Client) -> Result<(), turnstile_client::Error> {
    /// let receipt = client
    ///     .with_lock("payment:42", |token| async move { format!("charged under token {token}") })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_lock<F, Fut, T>(&self, key: &str, work: F) -> Result<T, Error>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock(key).await?;
        let lost = guard.lost();
        let work = work(guard.fencing_token());
        let value = tokio::select! {
            biased;
            _ = lost => return Err(guard.lost_error()),
            v = work => v,
        };
        match guard.release().await {
            // The lease had ended before the release: the value was made
            // without the lock's protection for part of the time.
            Err(e @ Error::LeaseLost { .. }) => Err(e),
            // Unanswered: the value stands; the lease expires after its TTL.
            Ok(()) | Err(_) => Ok(value),
        }
    }

    async fn acquire_guard(&self, key: &str, wait: Wait) -> Result<LockGuard, Error> {
        match self.acquire(key, wait, false).await? {
            Acquired::Lease(guard) => Ok(guard),
            // The coordinator only shares results with callers that asked.
            Acquired::Shared(_) => Err(Error::Protocol { what: "shared_result without share_result" }),
        }
    }

    /// The acquire loop: one owner for the whole loop (so a retry after a lost
    /// answer gets the same lease back), waits split into calls the
    /// coordinator accepts, failures to reach it retried with backoff: for
    /// [`Wait::Until`], up to the per-call timeout in a row and never past the
    /// wait's end; for [`Wait::Forever`], without end. (A [`Wait::No`] call
    /// retries failures to reach the coordinator within the per-call timeout,
    /// in `Inner::call`.)
    pub(crate) async fn acquire(&self, key: &str, wait: Wait, share_result: bool) -> Result<Acquired, Error> {
        check_key(key)?;
        let inner = &self.inner;
        if !matches!(wait, Wait::No) && !inner.has_reached() {
            // A queued Acquire may rightly go unanswered for its whole wait:
            // first make sure, within the call timeout, that the coordinator
            // answers at all (not merely accepts connections).
            inner.probe("Acquire").await?;
        }
        let owner = inner.next_owner();
        let mut confirmed = false;
        let mut failures: u32 = 0;
        let mut failing_since: Option<Instant> = None;
        loop {
            let sent = Instant::now();
            let wait_now = match wait {
                Wait::No => Duration::ZERO,
                Wait::Until(until) => wait_for_call(Some(until.saturating_duration_since(sent))),
                Wait::Forever => wait_for_call(None),
            };
            let msg = v1::AcquireRequest {
                key: key.to_owned(),
                owner: owner.clone(),
                ttl: Some(proto_duration(inner.ttl)),
                wait_timeout: (!wait_now.is_zero()).then(|| proto_duration(wait_now)),
                share_result,
            };
            let deadline = sent + wait_now + inner.call_timeout;
            // A wait is asked anew with the time left; a try is simply repeated.
            let retry = if wait_now.is_zero() { Retry::Transport } else { Retry::Never };
            let res = inner.call("Acquire", msg, deadline, retry, |mut c, r| async move { c.acquire(r).await });
            let resp = match res.await {
                Ok(resp) => {
                    failures = 0;
                    failing_since = None;
                    resp
                }
                Err(e) if e.is_transient() => {
                    // The coordinator is restarting, recovering or
                    // unreachable: keep the place in line as well as we can
                    // by asking again.
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let pause = backoff(failures);
                    failures = failures.saturating_add(1);
                    let out_of_time = match wait {
                        Wait::No => true,
                        Wait::Until(until) => {
                            Instant::now() + pause >= until || since.elapsed() + pause >= inner.call_timeout
                        }
                        // The caller asked to wait as long as it takes (a
                        // restart or crash recovery may take longer than a
                        // call); it bounds the wait by dropping the future.
                        // A coordinator never reached at all is more likely
                        // a wrong address: that fails after one call timeout.
                        Wait::Forever => !inner.has_reached() && since.elapsed() + pause >= inner.call_timeout,
                    };
                    if out_of_time {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(result) = resp.shared_result {
                return Ok(Acquired::Shared(result.to_vec()));
            }
            if resp.acquired {
                let lease = resp.lease.ok_or(Error::Protocol { what: "acquired without a lease" })?;
                let ttl = duration(lease.ttl).ok_or(Error::Protocol { what: "lease without a ttl" })?;
                if !confirmed && needs_confirmation(sent, Instant::now(), ttl) {
                    // The grant came after a long wait, so send time + TTL
                    // leaves little validity: ask again as the same owner,
                    // which returns the same lease refreshed (or a new one,
                    // or none if it expired meanwhile).
                    confirmed = true;
                    continue;
                }
                return Ok(Acquired::Lease(LockGuard::start(
                    self.inner.clone(),
                    key.to_owned(),
                    owner,
                    lease.fencing_token,
                    ttl,
                    sent,
                )));
            }
            let out_of_time = match wait {
                Wait::No => true,
                Wait::Until(until) => Instant::now() >= until,
                Wait::Forever => false,
            };
            if out_of_time {
                let current = resp.current.map(crate::info::LockInfo::from);
                let (holder, waiters) = match current {
                    Some(c) => (c.holder, c.waiters),
                    None => (None, 0),
                };
                return Err(Error::Contended {
                    key: key.to_owned(),
                    expires_in: holder.as_ref().map(|h| h.expires_in),
                    holder: holder.map(|h| h.owner),
                    waiters,
                });
            }
        }
    }
}
