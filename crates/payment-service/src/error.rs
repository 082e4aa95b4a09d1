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
    /// The claim before charging was refused: a newer lease holder (token
    /// `current`) owns the payment, so this PUT's lease has ended. Nothing
    /// was charged or written.
    #[error(
        "lease lost: payment {id} is owned by a newer lock holder (token {current} >= {token}); this PUT charged nothing"
    )]
    Superseded {
        /// The payment.
        id: i64,
        /// This PUT's token.
        token: u64,
        /// The row's token.
        current: u64,
    },
    /// The lease was known lost after the claim, before charging. Nothing
    /// was charged; a retry takes a new lease.
    #[error("lease lost before charging payment {id} (token {token}: {reason}); this PUT charged nothing")]
    LeaseLost {
        /// The payment.
        id: i64,
        /// This PUT's token.
        token: u64,
        /// Why the lease is lost.
        reason: turnstile_client::LostReason,
    },
    /// The fenced PAID write was refused: while this PUT charged, its lease
    /// passed to a newer holder that claimed the payment, whose write stands.
    /// This PUT's charge happened and was not recorded: it needs a refund.
    #[error(
        "lease lost: payment {id} was taken over by a newer lock holder (token {current} > {token}) while this PUT \
         charged; its charge {charge_id} was not recorded and needs a refund"
    )]
    FencedOut {
        /// The payment.
        id: i64,
        /// This PUT's token.
        token: u64,
        /// The row's token.
        current: u64,
        /// This PUT's charge, which the row does not record.
        charge_id: String,
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
            ApiError::Locked { .. }
            | ApiError::Superseded { .. }
            | ApiError::LeaseLost { .. }
            | ApiError::FencedOut { .. } => StatusCode::CONFLICT,
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
