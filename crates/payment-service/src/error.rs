//! The API's errors and the one place that maps them to HTTP statuses and
//! JSON bodies (`{"error": "..."}`).

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
    /// `{id}` in the path is not a payment id.
    #[error("payment id must be a positive integer, got {raw:?}")]
    InvalidId {
        /// The path segment as given.
        raw: String,
    },
    /// A query parameter is not what the endpoint takes.
    #[error("invalid query string: {reason}")]
    InvalidQuery {
        /// What is wrong.
        reason: String,
    },
    /// No payment with that id.
    #[error("payment {id} not found")]
    NotFound {
        /// The id asked for.
        id: i64,
    },
    /// Another PUT holds the payment's lock (at once in try mode, after
    /// `--lock-wait` in wait mode). The body is exactly
    /// `{"error":"Resource is locked"}`; the holder goes to the log.
    #[error("Resource is locked")]
    Locked {
        /// When the current lease ends unless renewed, if known.
        expires_in: Option<Duration>,
    },
    /// The fenced write was refused: this PUT's lease had passed to a newer
    /// holder, whose write stands.
    #[error("lease lost: payment {id} was written by a newer lock holder (token {current} > {token}); this PUT wrote nothing")]
    FencedOut {
        /// The payment.
        id: i64,
        /// This PUT's token.
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
    /// The task conducting the payment died.
    #[error("internal error: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson { .. }
            | ApiError::InvalidField { .. }
            | ApiError::InvalidId { .. }
            | ApiError::InvalidQuery { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Locked { .. } | ApiError::FencedOut { .. } => StatusCode::CONFLICT,
            ApiError::LockUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Storage(_) | ApiError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut resp = (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        if let ApiError::Locked { expires_in: Some(d) } = self {
            // Whole seconds, rounded up: when trying again makes sense.
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

/// Parses a JSON body, whatever its content type (so `curl -d` works).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|source| ApiError::InvalidJson { source })
}
