//! The per-payment lock: a turnstile lease through `turnstile-client`
//! (try once, or wait up to a bound), or nothing at all under `--no-lock`.

use std::time::Duration;

use turnstile_client::{Client, LockGuard, LostReason};

use crate::config::{Config, LockMode};

/// Why the lease was not had.
#[derive(Debug)]
pub(crate) enum AcquireError {
    /// Someone else holds it (at once in try mode, still after the bound in
    /// wait mode).
    Locked {
        /// When their lease ends unless renewed.
        expires_in: Option<Duration>,
    },
    /// turnstiled could not be reached or refused the call.
    Unavailable(turnstile_client::Error),
}

/// How PUTs lock their payment.
pub(crate) enum Locking {
    /// `--no-lock`: no lease, no fence. The broken version.
    Off,
    /// `--lock-mode try`: one attempt.
    Try(Client),
    /// `--lock-mode wait`: wait in turnstile's FIFO queue up to `bound`.
    Wait {
        /// The client.
        client: Client,
        /// The longest wait.
        bound: Duration,
    },
}

/// A lease held for one PUT, or nothing under `--no-lock`.
pub(crate) struct Held(Option<LockGuard>);

impl Held {
    /// The lease's fencing token; `None` without a lock.
    pub(crate) fn token(&self) -> Option<u64> {
        self.0.as_ref().map(LockGuard::fencing_token)
    }

    /// Why the lease is known lost, or `None` while it is valid (and always
    /// `None` without a lock).
    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        self.0.as_ref().and_then(LockGuard::lost_reason)
    }

    /// Releases the lease now rather than on drop, and logs if it had
    /// already been lost (the fenced writes have decided by then what stands).
    pub(crate) async fn release(self) {
        if let Some(guard) = self.0 {
            let (key, token) = (guard.key().to_owned(), guard.fencing_token());
            if let Err(e) = guard.release().await {
                tracing::warn!(%key, token, error = %e, "release failed; the lease ends at its ttl");
            }
        }
    }
}

impl Locking {
    /// The locking the flags ask for. The client connects lazily, so the
    /// service may start before its turnstiled sidecar does.
    pub(crate) fn from_config(config: &Config) -> Result<Locking, turnstile_client::Error> {
        if config.no_lock {
            tracing::warn!("--no-lock: PUTs run without a lock or a fence; concurrent PUTs charge twice");
            return Ok(Locking::Off);
        }
        let client = Client::builder(config.turnstile_addr.clone()).ttl(config.lock_ttl).connect_lazy()?;
        Ok(match config.lock_mode {
            LockMode::Try => Locking::Try(client),
            LockMode::Wait => Locking::Wait { client, bound: config.lock_wait },
        })
    }

    /// Takes the lease on `key` as the mode says.
    pub(crate) async fn acquire(&self, key: &str) -> Result<Held, AcquireError> {
        let got = match self {
            Locking::Off => return Ok(Held(None)),
            Locking::Try(client) => client.try_lock(key).await,
            Locking::Wait { client, bound } => client.lock_timeout(key, *bound).await,
        };
        match got {
            Ok(guard) => {
                tracing::debug!(key, token = guard.fencing_token(), "lease granted");
                Ok(Held(Some(guard)))
            }
            Err(turnstile_client::Error::Contended { holder, expires_in, waiters, .. }) => {
                tracing::info!(key, ?holder, ?expires_in, waiters, "locked by another PUT");
                Err(AcquireError::Locked { expires_in })
            }
            Err(e) => Err(AcquireError::Unavailable(e)),
        }
    }
}
