//! Server errors and their one mapping to `tonic::Status`.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
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
    /// `--max-waiters` waiters are parked across all keys already.
    #[error("{limit} waiters are parked already across all keys (max waiters)")]
    TooManyWaiters {
        /// The configured maximum.
        limit: usize,
    },
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
            BackendError::TooManyWaiters { .. } => "too_many_waiters",
            BackendError::Core(CoreError::LeaseNotFound { .. }) => "not_found",
            BackendError::Core(CoreError::Recovering { .. }) => "recovering",
            BackendError::ResultTooLarge { .. } => "result_too_large",
            BackendError::ShuttingDown => "shutting_down",
            BackendError::Unavailable { .. } => "unavailable",
            BackendError::Persist(_) => "persist",
        }
    }
}

/// The domain of every `google.rpc.ErrorInfo` turnstile sends.
pub const ERROR_DOMAIN: &str = "turnstile.v1";

/// A status carrying a `google.rpc.ErrorInfo` (and more details), so that
/// clients act on `reason` and `metadata` instead of parsing the message.
pub fn status_with_info(code: Code, message: String, reason: &str, metadata: &[(&str, String)]) -> Status {
    status_with_details(code, message, info(reason, metadata))
}

fn info(reason: &str, metadata: &[(&str, String)]) -> ErrorDetails {
    let metadata: std::collections::HashMap<String, String> =
        metadata.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
}

fn status_with_details(code: Code, message: String, details: ErrorDetails) -> Status {
    Status::with_error_details(code, message, details)
}

impl From<InvalidArgument> for Status {
    /// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming the field.
    fn from(e: InvalidArgument) -> Status {
        let details = ErrorDetails::with_bad_request_violation(e.field, e.reason.clone());
        status_with_details(Code::InvalidArgument, e.to_string(), details)
    }
}

impl From<BackendError> for Status {
    /// The one mapping of docs/design.md's status codes, each with an
    /// `ErrorInfo` whose reason names the case (`TOO_MANY_WAITERS`,
    /// `RECOVERING` with a `RetryInfo`, ...).
    fn from(e: BackendError) -> Status {
        let message = e.to_string();
        match &e {
            BackendError::Core(CoreError::TooManyWaiters { key, limit }) => status_with_info(
                Code::ResourceExhausted,
                message,
                "TOO_MANY_WAITERS",
                &[("key", key.clone()), ("limit", limit.to_string())],
            ),
            BackendError::TooManyWaiters { limit } => status_with_info(
                Code::ResourceExhausted,
                message,
                "TOO_MANY_WAITERS",
                &[("scope", "all keys".into()), ("limit", limit.to_string())],
            ),
            BackendError::Core(CoreError::TooManyLeases { limit }) => {
                status_with_info(Code::ResourceExhausted, message, "TOO_MANY_LEASES", &[("limit", limit.to_string())])
            }
            BackendError::ResultTooLarge { size, limit } => status_with_info(
                Code::ResourceExhausted,
                message,
                "RESULT_TOO_LARGE",
                &[("field", "result".into()), ("size", size.to_string()), ("limit", limit.to_string())],
            ),
            BackendError::Core(CoreError::LeaseNotFound { key, token }) => status_with_info(
                Code::NotFound,
                message,
                "LEASE_NOT_FOUND",
                &[("key", key.clone()), ("fencing_token", token.to_string())],
            ),
            BackendError::Core(CoreError::Recovering { remaining }) => {
                let secs = ceil_secs(*remaining);
                let mut details = info("RECOVERING", &[("seconds_left", secs.to_string())]);
                details.set_retry_info(Some(*remaining));
                status_with_details(
                    Code::Unavailable,
                    format!(
                        "recovering after a restart: no lease is granted for {secs} more seconds, so that none can overlap a lease granted before the crash"
                    ),
                    details,
                )
            }
            BackendError::ShuttingDown => status_with_info(Code::Unavailable, message, "SHUTTING_DOWN", &[]),
            BackendError::Unavailable { .. } => {
                status_with_info(Code::Unavailable, message, "BACKEND_UNAVAILABLE", &[])
            }
            BackendError::Persist(_) => status_with_info(Code::Unavailable, message, "STATE_NOT_WRITABLE", &[]),
        }
    }
}

/// A call shed because `limit` calls are in progress already
/// (`--max-concurrent-calls`): `RESOURCE_EXHAUSTED`, reason `OVERLOADED`,
/// with a `RetryInfo`. Nothing was done.
pub fn overloaded(limit: usize) -> Status {
    let mut details = info("OVERLOADED", &[("limit", limit.to_string())]);
    details.set_retry_info(Some(Duration::from_millis(100)));
    status_with_details(
        Code::ResourceExhausted,
        format!(
            "turnstiled is overloaded: {limit} calls are in progress already (max concurrent calls); nothing was done, retry shortly"
        ),
        details,
    )
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

    #[test]
    fn statuses_carry_structured_details() {
        let s = Status::from(InvalidArgument { field: "ttl", reason: "must not be negative".into() });
        let bad = s.get_details_bad_request().expect("BadRequest");
        assert_eq!(
            (bad.field_violations[0].field.as_str(), bad.field_violations[0].description.as_str()),
            ("ttl", "must not be negative")
        );
        let s = Status::from(BackendError::Core(CoreError::TooManyWaiters { key: "k".into(), limit: 7 }));
        let info = s.get_details_error_info().expect("ErrorInfo");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("TOO_MANY_WAITERS", ERROR_DOMAIN));
        assert_eq!(info.metadata.get("limit").map(String::as_str), Some("7"));
        let s = Status::from(BackendError::Core(CoreError::Recovering { remaining: Duration::from_secs(9) }));
        assert_eq!(s.get_details_error_info().expect("ErrorInfo").reason, "RECOVERING");
        assert_eq!(s.get_details_retry_info().and_then(|r| r.retry_delay), Some(Duration::from_secs(9)));
    }
}
