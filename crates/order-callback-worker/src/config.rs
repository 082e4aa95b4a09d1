//! Command-line flags (each with an environment variable) and their checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The smallest lease ttl turnstiled grants; shorter asks are clamped up.
const MIN_TTL: Duration = Duration::from_millis(100);

/// order-callback-worker: counts each "order placed" callback exactly once,
/// though the queue delivers it at least once, possibly twice at the same
/// time, and possibly before the order is committed.
#[derive(Debug, Clone, Parser)]
#[command(name = "order-callback-worker", version, about, long_about = None)]
pub(crate) struct Config {
    /// HTTP listen address; port 0 picks a free port (the ready line on
    /// stdout names the one bound).
    #[arg(long, env = "WORKER_LISTEN", default_value = "127.0.0.1:8081")]
    pub(crate) listen: SocketAddr,

    /// SQLite database file (created if missing); several workers may share it.
    #[arg(long, env = "WORKER_DB", default_value = "orders.db")]
    pub(crate) db: PathBuf,

    /// turnstiled's gRPC address.
    #[arg(long, env = "TURNSTILE_ADDR", default_value = "http://127.0.0.1:7700")]
    pub(crate) turnstile_addr: String,

    /// Lease ttl; renewed while a delivery is processed, and the longest an
    /// order stays wedged after a worker crashes holding it.
    #[arg(long, env = "WORKER_LOCK_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) lock_ttl: Duration,

    /// The longest a delivery waits for the order's lease (a concurrent
    /// duplicate waits in turnstile's queue, woken when the lease frees).
    #[arg(long, env = "WORKER_LOCK_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) lock_wait: Duration,

    /// Simulated processing time between taking the lease and writing
    /// (e.g. enriching the order): the window in which a worker can crash or
    /// stall while holding the lease.
    #[arg(long, env = "WORKER_WORK_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub(crate) work_delay: Duration,

    /// Log filter (tracing `EnvFilter` syntax), logs go to stderr.
    #[arg(long, env = "WORKER_LOG", default_value = "info")]
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
    /// No time to wait for a lease.
    #[error("--lock-wait must be greater than 0")]
    ZeroWait,
}

impl Config {
    /// Checks the flags together.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.lock_ttl < MIN_TTL {
            return Err(ConfigError::TtlTooShort { min: MIN_TTL, got: self.lock_ttl });
        }
        if self.lock_wait.is_zero() {
            return Err(ConfigError::ZeroWait);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("order-callback-worker").chain(args.iter().copied())).expect("parse")
    }

    #[test]
    fn defaults_match_the_readme() {
        let c = parse(&[]);
        assert_eq!(
            (c.lock_ttl, c.lock_wait, c.work_delay),
            (Duration::from_secs(10), Duration::from_secs(30), Duration::ZERO)
        );
        assert_eq!(c.turnstile_addr, "http://127.0.0.1:7700");
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn refuses_what_cannot_work() {
        assert!(matches!(parse(&["--lock-ttl", "50ms"]).validate(), Err(ConfigError::TtlTooShort { .. })));
        assert_eq!(parse(&["--lock-wait", "0s"]).validate(), Err(ConfigError::ZeroWait));
        assert_eq!(parse(&["--work-delay", "1500ms"]).work_delay, Duration::from_millis(1500));
    }
}
