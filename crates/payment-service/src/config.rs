//! Command-line flags (each with an environment variable) and their checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The smallest lease ttl turnstiled grants; shorter asks are clamped up.
const MIN_TTL: Duration = Duration::from_millis(100);

/// How a PUT that finds the payment locked behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LockMode {
    /// One attempt: `409 {"error":"Resource is locked"}` at once.
    Try,
    /// Wait in turnstile's FIFO queue up to `--lock-wait`, then answer.
    Wait,
}

/// payment-service: a payment API that charges each payment once, by holding
/// a per-payment turnstile lease around read, charge and write.
#[derive(Debug, Clone, Parser)]
#[command(name = "payment-service", version, about, long_about = None)]
pub(crate) struct Config {
    /// HTTP listen address; port 0 picks a free port (the ready line on
    /// stdout names the one bound).
    #[arg(long, env = "PAYMENT_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,

    /// SQLite database file (created if missing).
    #[arg(long, env = "PAYMENT_DB", default_value = "payments.db")]
    pub(crate) db: PathBuf,

    /// turnstiled's gRPC address.
    #[arg(long, env = "TURNSTILE_ADDR", default_value = "http://127.0.0.1:7700")]
    pub(crate) turnstile_addr: String,

    /// What a PUT does when another PUT holds the payment's lock.
    #[arg(long, env = "PAYMENT_LOCK_MODE", value_enum, default_value_t = LockMode::Try)]
    pub(crate) lock_mode: LockMode,

    /// Run WITHOUT the lock and the fenced write: the broken version of
    /// docs/design.md problem 1, for the demo. Concurrent PUTs charge twice.
    #[arg(long, env = "PAYMENT_NO_LOCK")]
    pub(crate) no_lock: bool,

    /// Lease ttl; the guard renews it while a PUT runs, and it frees the
    /// payment this long after the service crashes.
    #[arg(long, env = "PAYMENT_LOCK_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) lock_ttl: Duration,

    /// In `--lock-mode wait`: the longest a PUT waits for the lock.
    #[arg(long, env = "PAYMENT_LOCK_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) lock_wait: Duration,

    /// Latency of the simulated payment provider.
    #[arg(long, env = "PAYMENT_PROVIDER_DELAY", default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) provider_delay: Duration,

    /// Log filter (tracing `EnvFilter` syntax), logs go to stderr.
    #[arg(long, env = "PAYMENT_LOG", default_value = "info")]
    pub(crate) log: String,
}

/// A flag combination that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ConfigError {
    /// `--lock-ttl` below what turnstiled grants.
    #[error("--lock-ttl must be at least {min:?}, got {got:?}")]
    TtlTooShort {
        /// The minimum.
        min: Duration,
        /// What was given.
        got: Duration,
    },
    /// `--lock-mode wait` with no time to wait.
    #[error("--lock-wait must be greater than 0 with --lock-mode wait")]
    ZeroWait,
}

impl Config {
    /// Checks the flags together.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.no_lock {
            return Ok(());
        }
        if self.lock_ttl < MIN_TTL {
            return Err(ConfigError::TtlTooShort { min: MIN_TTL, got: self.lock_ttl });
        }
        if self.lock_mode == LockMode::Wait && self.lock_wait.is_zero() {
            return Err(ConfigError::ZeroWait);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("payment-service").chain(args.iter().copied())).expect("parse")
    }

    #[test]
    fn defaults_match_the_readme() {
        let c = parse(&[]);
        assert_eq!(c.lock_mode, LockMode::Try);
        assert_eq!(c.provider_delay, Duration::from_secs(3));
        assert_eq!(c.turnstile_addr, "http://127.0.0.1:7700");
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn durations_take_units() {
        let c = parse(&["--provider-delay", "300ms", "--lock-ttl", "1s", "--lock-mode", "wait"]);
        assert_eq!((c.provider_delay, c.lock_ttl), (Duration::from_millis(300), Duration::from_secs(1)));
    }

    #[test]
    fn refuses_what_cannot_work() {
        assert!(matches!(parse(&["--lock-ttl", "10ms"]).validate(), Err(ConfigError::TtlTooShort { .. })));
        assert_eq!(parse(&["--lock-mode", "wait", "--lock-wait", "0s"]).validate(), Err(ConfigError::ZeroWait));
        assert_eq!(parse(&["--no-lock", "--lock-ttl", "10ms"]).validate(), Ok(()));
    }
}
