//! Server errors and their one mapping to `tonic::Status`.

use std::time::Duration;

use tonic::{Code, Status};
use turnstile_core::CoreError;

/// A request field that failed validation (G8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidArgument {
    /// The proto field name, e.g. `key` or `ttl`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a backend could not carry out a call.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A limit of the lock table, a missing lease, or recovery in progress.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A result larger than `--max-result-bytes`; the release did not happen.
    #[error("result is {size} bytes, more than the maximum of {limit} bytes (max result bytes)")]
    ResultTooLarge {
        /// The result's size.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// The server is shutting down.
    #[error("turnstiled is shutting down")]
    ShuttingDown,
    /// The store behind the backend cannot be reached or refused the call.
    #[error("backend unavailable: {reason}")]
    Unavailable {
        /// What went wrong, for the operator.
        reason: String,
    },
    /// Persisting the token block or lease horizon failed; nothing was granted.
    #[error("cannot persist lock state: {0}")]
    Persist(#[from] std::io::Error),
}

impl BackendError {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Core(CoreError::TooManyWaiters { .. }) => "too_many_waiters",
            BackendError::Core(CoreError::TooManyLeases { .. }) => "too_many_leases",
            BackendError::Core(CoreError::LeaseNotFound { .. }) => "not_found",
            BackendError::Core(CoreError::Recovering { .. }) => "recovering",
            BackendError::ResultTooLarge { .. } => "result_too_large",
            BackendError::ShuttingDown => "shutting_down",
            BackendError::Unavailable { .. } => "unavailable",
            BackendError::Persist(_) => "persist",
        }
    }
}

impl From<InvalidArgument> for Status {
    fn from(e: InvalidArgument) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

impl From<BackendError> for Status {
    fn from(e: BackendError) -> Status {
        let code = match &e {
            BackendError::Core(CoreError::TooManyWaiters { .. } | CoreError::TooManyLeases { .. })
            | BackendError::ResultTooLarge { .. } => Code::ResourceExhausted,
            BackendError::Core(CoreError::LeaseNotFound { .. }) => Code::NotFound,
            BackendError::Core(CoreError::Recovering { remaining }) => {
                return Status::unavailable(format!(
                    "recovering after a restart: no lease is granted for {} more seconds, so that none can overlap a lease granted before the crash",
                    ceil_secs(*remaining)
                ));
            }
            BackendError::ShuttingDown | BackendError::Unavailable { .. } | BackendError::Persist(_) => {
                Code::Unavailable
            }
        };
        Status::new(code, e.to_string())
    }
}

/// Whole seconds, rounded up, so "0 seconds left" is never said while waiting.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_the_status_code_design_md_names() {
        let s = Status::from(BackendError::Core(CoreError::LeaseNotFound { key: "k".into(), token: 3 }));
        assert_eq!(s.code(), Code::NotFound);
        let s = Status::from(BackendError::Core(CoreError::TooManyWaiters { key: "k".into(), limit: 1 }));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s = Status::from(BackendError::ResultTooLarge { size: 2, limit: 1 });
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s = Status::from(BackendError::Core(CoreError::Recovering { remaining: Duration::from_millis(1500) }));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("2 more seconds"), "{}", s.message());
        let s = Status::from(InvalidArgument { field: "key", reason: "is empty".into() });
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "invalid key: is empty");
    }
}
