//! [`LockGuard`]: a held lease, renewed by a background task that follows
//! the clock rule of docs/design.md, signals a lost lease, and releases the lease
//! when the guard is released or dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::error::{Error, LostReason};
use crate::rpc::Inner;
use crate::schedule::{renew_at, renew_retry_delay, valid_until};

/// What the renewal task publishes and the guard reads.
///
/// Loss is permanent. Readers (the guard) and the writer (the renewal task)
/// read the clock while holding the watch channel's lock (read or write), so
/// a reader that saw the validity pass did so before any later write reads
/// the clock; and every write that would extend or end the lease first
/// checks the validity at its own `now` and records a loss instead
/// ([`renewed`](LeaseState::renewed), [`release_at`](LeaseState::release_at)).
/// So once any reader has seen the lease lost, no renew answered later can
/// make it valid again.
#[derive(Debug, Clone, Copy)]
struct LeaseState {
    /// The lease is valid until this instant unless renewed.
    valid_until: Instant,
    /// Set once the lease is known lost; never cleared.
    lost: Option<LostReason>,
    /// Set when the holder released the lease: it is not lost, just over.
    released: bool,
}

impl LeaseState {
    /// The loss as of `now`: the one the task saw, or a validity that has passed.
    fn lost_at(&self, now: Instant) -> Option<LostReason> {
        if self.released {
            return None;
        }
        self.lost.or((now >= self.valid_until).then_some(LostReason::NotRenewed))
    }

    /// Records the loss as of `now`, if any, keeping the first reason known
    /// (`reason` when there was none: the lease is lost now). Returns it.
    fn mark_lost(&mut self, now: Instant, reason: LostReason) -> LostReason {
        let known = self.lost_at(now).unwrap_or(reason);
        self.lost = Some(known);
        known
    }

    /// Applies a renew answered at `now` that keeps the lease valid until
    /// `until`. If the validity had already passed at `now`, the lease stays
    /// lost (and the loss is recorded): returns false.
    fn renewed(&mut self, now: Instant, until: Instant) -> bool {
        if let Some(reason) = self.lost_at(now) {
            self.lost = Some(reason);
            return false;
        }
        self.valid_until = until;
        true
    }

    /// The holder ends the lease at `now`: marks it released, unless it was
    /// lost by then, in which case the loss is recorded and returned.
    fn release_at(&mut self, now: Instant) -> Option<LostReason> {
        let lost = self.lost_at(now);
        match lost {
            Some(reason) => self.lost = Some(reason),
            None => self.released = true,
        }
        lost
    }
}

/// A request to the renewal task to end the lease.
struct ReleaseCmd {
    result: Option<Vec<u8>>,
    reply: oneshot::Sender<Result<(), Error>>,
}

/// A held lease on a key.
///
/// While the guard lives, a background task renews the lease about every
/// third of its TTL. The lease counts as valid until the send time of the last
/// successful grant or renew plus the TTL, on the local monotonic clock (the
/// reply time is never used). [`lost`](LockGuard::lost) completes, and
/// [`is_valid`](LockGuard::is_valid) turns false, the moment the lease is
/// known lost: a renew answered NOT_FOUND, or the validity passed without a
/// successful renew.
///
/// Dropping the guard releases the lease in the background: drop never blocks
/// and never panics, also outside a runtime. If the runtime that acquired the
/// lease has shut down, nothing is sent and the lease expires after its TTL.
///
/// ```no_run
/// # async fn demo(client: turnstile_client::Client) -> Result<(), turnstile_client::Error> {
/// let guard = client.lock("order:17").await?;
/// tokio::select! {
///     reason = guard.lost() => eprintln!("lease lost ({reason}); stop writing"),
///     () = write_with_token(guard.fencing_token()) => {}
/// }
/// guard.release().await?;
/// # Ok(()) }
/// # async fn write_with_token(_t: u64) {}
/// ```
#[must_use = "the lease is released as soon as the guard is dropped"]
pub struct LockGuard {
    key: String,
    owner: String,
    token: u64,
    ttl: Duration,
    state: watch::Receiver<LeaseState>,
    release: Option<oneshot::Sender<ReleaseCmd>>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("owner", &self.owner)
            .field("fencing_token", &self.token)
            .field("ttl", &self.ttl)
            .field("valid", &self.is_valid())
            .finish()
    }
}

impl LockGuard {
    /// Starts the renewal task of a lease granted by a request sent at `sent`.
    /// Must be called within a tokio runtime.
    pub(crate) fn start(
        client: Arc<Inner>,
        key: String,
        owner: String,
        token: u64,
        ttl: Duration,
        sent: Instant,
    ) -> LockGuard {
        let state = LeaseState { valid_until: valid_until(sent, ttl), lost: None, released: false };
        let (state_tx, state_rx) = watch::channel(state);
        let (release_tx, release_rx) = oneshot::channel();
        let task =
            Renewal { client, key: key.clone(), token, ttl, last_sent: sent, state: state_tx, release: release_rx };
        tokio::spawn(task.run());
        LockGuard { key, owner, token, ttl, state: state_rx, release: Some(release_tx) }
    }

    /// The key held.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token of the lease: pass it to storage so that a write from
    /// a holder whose lease has passed on can be refused.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// The owner string the lease was granted to.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The TTL the coordinator granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True while the lease is known valid: not reported ended, and its
    /// validity (last successful send time + TTL) has not passed.
    pub fn is_valid(&self) -> bool {
        self.lost_reason().is_none()
    }

    /// Why the lease is lost, or `None` while it is valid.
    pub fn lost_reason(&self) -> Option<LostReason> {
        // The clock is read under the channel's lock (see `LeaseState`).
        let state = self.state.borrow();
        state.lost_at(Instant::now())
    }

    /// Time left before the lease runs out unless a renew succeeds; zero once lost.
    pub fn valid_for(&self) -> Duration {
        let s = self.state.borrow();
        if s.lost.is_some() {
            return Duration::ZERO;
        }
        s.valid_until.saturating_duration_since(Instant::now())
    }

    /// Completes the moment the lease is known lost, with the reason. It does
    /// not borrow the guard, so it can be moved into a task or `select!`. If
    /// the guard is released or dropped first, it never completes.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut rx = self.state.clone();
        async move {
            loop {
                let (state, lost) = {
                    // The clock is read under the channel's lock (see `LeaseState`).
                    let s = rx.borrow_and_update();
                    (*s, s.lost_at(Instant::now()))
                };
                if state.released {
                    return std::future::pending().await;
                }
                if let Some(reason) = lost {
                    return reason;
                }
                // Wake on news from the renewal task, or when the validity
                // runs out even if the task has not noticed yet.
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            // The task is gone: re-check the deadline once more, then wait it out.
                            let state = *rx.borrow();
                            if state.released || state.lost.is_some() {
                                continue;
                            }
                            tokio::time::sleep_until(state.valid_until.into()).await;
                            return LostReason::NotRenewed;
                        }
                    }
                    () = tokio::time::sleep_until(state.valid_until.into()) => {}
                }
            }
        }
    }

    /// Ends the lease now. `Err(LeaseLost)` when it had already ended: the
    /// work done under it may have overlapped with another holder.
    pub async fn release(self) -> Result<(), Error> {
        self.finish(None).await
    }

    /// Ends the lease and hands `result` to every waiter that asked for a
    /// shared result (the fetch lock of docs/design.md). If the coordinator refuses
    /// the result (larger than its maximum: [`Error::ResourceExhausted`]), the
    /// lease is released without it and that error is returned.
    pub async fn release_with_result(self, result: Vec<u8>) -> Result<(), Error> {
        self.finish(Some(result)).await
    }

    async fn finish(mut self, result: Option<Vec<u8>>) -> Result<(), Error> {
        let lost = self.lost_error();
        let (reply_tx, reply_rx) = oneshot::channel();
        let Some(tx) = self.release.take() else { return Err(lost) };
        if tx.send(ReleaseCmd { result, reply: reply_tx }).is_err() {
            // The task has ended: the lease was lost (or the runtime is gone).
            return Err(lost);
        }
        reply_rx.await.unwrap_or(Err(lost))
    }

    /// The `LeaseLost` error for this lease, with the reason as known now.
    pub(crate) fn lost_error(&self) -> Error {
        Error::LeaseLost {
            key: self.key.clone(),
            fencing_token: self.token,
            reason: self.lost_reason().unwrap_or(LostReason::Ended),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Dropping the sender tells the task to release: no await, no runtime
        // needed here, nothing that can panic.
        self.release.take();
    }
}

/// Why the renewal task woke up.
enum Wake<T> {
    /// The guard asked to release (`Some`) or was dropped (`None`).
    Release(Option<ReleaseCmd>),
    /// The validity passed.
    Expired,
    /// The awaited step finished.
    Done(T),
}

/// The background task behind a [`LockGuard`].
struct Renewal {
    client: Arc<Inner>,
    key: String,
    token: u64,
    ttl: Duration,
    last_sent: Instant,
    state: watch::Sender<LeaseState>,
    release: oneshot::Receiver<ReleaseCmd>,
}

impl Renewal {
    async fn run(mut self) {
        loop {
            let next = renew_at(self.last_sent, self.ttl);
            match self.race(tokio::time::sleep_until(next.into())).await {
                Wake::Release(cmd) => return self.release(cmd).await,
                Wake::Expired => return self.expired().await,
                Wake::Done(()) => {}
            }
            // Renew until it works, the lease is reported ended, or the validity passes.
            loop {
                let sent = Instant::now();
                let until = self.state.borrow().valid_until;
                let timeout = self.client.call_timeout.min(until.saturating_duration_since(sent));
                let client = self.client.clone();
                let (key, token) = (self.key.clone(), self.token);
                match self.race(async move { client.renew_once(&key, token, timeout).await }).await {
                    Wake::Release(cmd) => return self.release(cmd).await,
                    Wake::Expired => return self.expired().await,
                    Wake::Done(Ok(ttl)) => {
                        // Answered after the validity passed (the timer had
                        // not fired yet): too late, the lease stays lost.
                        let mut in_time = false;
                        self.state.send_modify(|s| in_time = s.renewed(Instant::now(), valid_until(sent, ttl)));
                        if !in_time {
                            return self.expired().await;
                        }
                        self.last_sent = sent;
                        self.ttl = ttl;
                        break;
                    }
                    Wake::Done(Err(status)) if status.code() == tonic::Code::NotFound => {
                        self.state.send_modify(|s| {
                            s.mark_lost(Instant::now(), LostReason::Ended);
                        });
                        return;
                    }
                    // Unreachable, unavailable, or any other refusal: try
                    // again until the validity runs out.
                    Wake::Done(Err(_)) => {
                        let pause = tokio::time::sleep(renew_retry_delay(self.ttl));
                        match self.race(pause).await {
                            Wake::Release(cmd) => return self.release(cmd).await,
                            Wake::Expired => return self.expired().await,
                            Wake::Done(()) => {}
                        }
                    }
                }
            }
        }
    }

    /// Awaits `step`, unless a release request comes or the validity passes
    /// first (checked in that order).
    async fn race<T>(&mut self, step: impl Future<Output = T>) -> Wake<T> {
        let until = self.state.borrow().valid_until;
        tokio::select! {
            biased;
            cmd = &mut self.release => Wake::Release(cmd.ok()),
            () = tokio::time::sleep_until(until.into()) => Wake::Expired,
            v = step => Wake::Done(v),
        }
    }

    /// The validity passed: report the loss, then release in case the
    /// coordinator still has the lease, so the key frees at once.
    async fn expired(self) {
        self.state.send_modify(|s| {
            s.mark_lost(Instant::now(), LostReason::NotRenewed);
        });
        let _ = self.client.release(&self.key, self.token, None).await;
    }

    /// Ends the lease for the guard; `cmd` is `None` when the guard was dropped.
    async fn release(self, cmd: Option<ReleaseCmd>) {
        let mut lost = None;
        self.state.send_modify(|s| lost = s.release_at(Instant::now()));
        let (result, reply) = match cmd {
            Some(c) => (c.result, Some(c.reply)),
            None => (None, None),
        };
        let outcome = match lost {
            // Past its validity the lease may be someone else's already; still
            // release it (a stale token changes nothing) so the key frees early.
            Some(reason) => {
                let _ = self.client.release(&self.key, self.token, None).await;
                Err(reason)
            }
            None => match self.client.release(&self.key, self.token, result.clone()).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(LostReason::Ended),
                Err(Error::ResourceExhausted { message }) if result.is_some() => {
                    // The result was refused and the lease kept: release without it.
                    let _ = self.client.release(&self.key, self.token, None).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(Error::ResourceExhausted { message }));
                    }
                    return;
                }
                Err(e) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e));
                    }
                    return;
                }
            },
        };
        if let Some(reply) = reply {
            let _ = reply.send(outcome.map_err(|reason| Error::LeaseLost {
                key: self.key.clone(),
                fencing_token: self.token,
                reason,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_lost_when_its_validity_passes_unless_released() {
        let t0 = Instant::now();
        let s = LeaseState { valid_until: t0 + Duration::from_secs(1), lost: None, released: false };
        assert_eq!(s.lost_at(t0), None);
        assert_eq!(s.lost_at(t0 + Duration::from_secs(1)), Some(LostReason::NotRenewed));
        let ended = LeaseState { lost: Some(LostReason::Ended), ..s };
        assert_eq!(ended.lost_at(t0), Some(LostReason::Ended));
        let released = LeaseState { released: true, ..s };
        assert_eq!(released.lost_at(t0 + Duration::from_secs(5)), None);
    }

    #[test]
    fn a_renew_answered_in_time_extends_the_validity() {
        let t0 = Instant::now();
        let mut s = LeaseState { valid_until: t0 + Duration::from_secs(1), lost: None, released: false };
        assert!(s.renewed(t0 + Duration::from_millis(999), t0 + Duration::from_secs(2)));
        assert_eq!(s.lost_at(t0 + Duration::from_millis(1500)), None);
    }

    /// Loss is sticky: a renew answered just after the validity passed (the
    /// lease may already have been reported lost) does not revive the lease.
    #[test]
    fn a_renew_answered_after_the_validity_passed_does_not_revive_the_lease() {
        let t0 = Instant::now();
        let mut s = LeaseState { valid_until: t0 + Duration::from_secs(1), lost: None, released: false };
        let late = t0 + Duration::from_secs(1);
        assert_eq!(s.lost_at(late), Some(LostReason::NotRenewed), "a reader sees the loss");
        assert!(!s.renewed(late + Duration::from_millis(1), t0 + Duration::from_secs(10)));
        assert_eq!(s.valid_until, t0 + Duration::from_secs(1), "validity not extended");
        assert_eq!(s.lost, Some(LostReason::NotRenewed), "the loss is recorded");
        for now in [t0, late, t0 + Duration::from_secs(5)] {
            assert_eq!(s.lost_at(now), Some(LostReason::NotRenewed), "lost at every later reading");
        }
        assert!(!s.renewed(t0, t0 + Duration::from_secs(10)), "no renew revives it");
    }

    #[test]
    fn a_later_reason_does_not_replace_the_first() {
        let t0 = Instant::now();
        let mut s = LeaseState { valid_until: t0 + Duration::from_secs(1), lost: None, released: false };
        assert_eq!(s.mark_lost(t0 + Duration::from_secs(2), LostReason::Ended), LostReason::NotRenewed);
        assert_eq!(s.mark_lost(t0, LostReason::Ended), LostReason::NotRenewed);
        let mut fresh = LeaseState { lost: None, ..s };
        assert_eq!(fresh.mark_lost(t0, LostReason::Ended), LostReason::Ended);
    }

    #[test]
    fn a_release_after_the_validity_passed_reports_and_keeps_the_loss() {
        let t0 = Instant::now();
        let s = LeaseState { valid_until: t0 + Duration::from_secs(1), lost: None, released: false };
        let mut late = s;
        assert_eq!(late.release_at(t0 + Duration::from_secs(1)), Some(LostReason::NotRenewed));
        assert!(!late.released);
        assert_eq!(late.lost_at(t0), Some(LostReason::NotRenewed));
        let mut in_time = s;
        assert_eq!(in_time.release_at(t0), None);
        assert!(in_time.released);
    }
}
