//! The API's errors and the one place that maps them to HTTP statuses and
//! JSON bodies (`{"error": "..."}`). Every "try again later" answer (409 and
//! 503) carries `Retry-After`, which is what an at-least-once queue needs.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The body is not the JSON the endpoint takes.
    #[error("invalid JSON body: {source}")]
    InvalidJson {
        /// serde's description, with line and column.
        source: serde_json::Error,
    },
    /// A field parsed but its value is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `{id}` in the path is not an order id.
    #[error("order id must be a positive integer, got {raw:?}")]
    InvalidId {
        /// The path segment as given.
        raw: String,
    },
    /// No order with that id.
    #[error("order {order_id} not found")]
    NotFound {
        /// The id asked for.
        order_id: i64,
    },
    /// The callback came before the order's own transaction committed
    /// (the second bug of docs/design.md problem 3): nothing was counted.
    #[error("order {order_id} is not committed yet: retry later")]
    NotCommitted {
        /// The order.
        order_id: i64,
    },
    /// Another delivery of the same order held the lease for all of `--lock-wait`.
    #[error("order {order_id} is being processed by another delivery: retry later")]
    Busy {
        /// The order.
        order_id: i64,
        /// Time left on the holder's lease, if known.
        expires_in: Option<Duration>,
    },
    /// The fenced write was refused: this delivery's lease ended while it
    /// worked and a newer holder has written the order. Nothing was counted.
    #[error("fenced out: order {order_id} was written by a newer lease holder (token {current}, ours {token}); this delivery counted nothing")]
    FencedOut {
        /// The order.
        order_id: i64,
        /// This delivery's token.
        token: u64,
        /// The row's token.
        current: u64,
    },
    /// turnstiled cannot be reached or refused the call.
    #[error("lock service unavailable: {0}")]
    LockUnavailable(#[source] turnstile_client::Error),
    /// SQLite failed.
    #[error("storage error: {0}")]
    Storage(#[from] StoreError),
    /// The task processing the delivery died.
    #[error("internal error: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson { .. } | ApiError::InvalidField { .. } | ApiError::InvalidId { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::NotCommitted { .. } | ApiError::Busy { .. } | ApiError::FencedOut { .. } => StatusCode::CONFLICT,
            ApiError::LockUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Storage(_) | ApiError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds after which a retry makes sense, for `Retry-After`.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::NotCommitted { .. } | ApiError::LockUnavailable(_) => Some(1),
            ApiError::Busy { expires_in, .. } => {
                Some(expires_in.map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1))
            }
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let retry_after = self.retry_after();
        let mut resp = (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Parses a JSON body, whatever its content type (so `curl -d` works).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|source| ApiError::InvalidJson { source })
}
