//! HTTP routes and thin handlers: parse, call [`crate::conduct`] or the
//! store, map the result.
//!
//! | route | what |
//! |---|---|
//! | `POST /payments` | `{"amount_cents": 1999, "currency": "EUR"}` → 201, payment in state EMPTY |
//! | `GET /payments/{id}` | the payment |
//! | `PUT /payments/{id}` | conduct it: lock, claim the row, charge, fenced write PAID |
//! | `GET /provider/charges[?payment_id=N]` | the simulated provider's ledger |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::error::{parse_json, ApiError};
use crate::lock::Locking;
use crate::provider::Provider;
use crate::store::{self, Payment, Store};

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct App {
    /// The payments database.
    pub(crate) store: Store,
    /// The simulated payment provider.
    pub(crate) provider: Provider,
    /// How PUTs lock.
    pub(crate) locking: Arc<Locking>,
}

/// The service's routes.
pub(crate) fn router(app: App) -> Router {
    Router::new()
        .route("/payments", post(create))
        .route("/payments/{id}", get(show).put(conduct))
        .route("/provider/charges", get(charges))
        .with_state(app)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPayment {
    amount_cents: i64,
    #[serde(default = "default_currency")]
    currency: String,
}

fn default_currency() -> String {
    "EUR".to_owned()
}

impl NewPayment {
    fn validate(&self) -> Result<(), ApiError> {
        if self.amount_cents <= 0 {
            return Err(ApiError::InvalidField { field: "amount_cents", reason: "must be greater than 0" });
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::InvalidField { field: "currency", reason: "must be three uppercase letters" });
        }
        Ok(())
    }
}

fn payment_id(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::InvalidId { raw: raw.to_owned() }),
    }
}

async fn create(State(app): State<App>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let new: NewPayment = parse_json(&body)?;
    new.validate()?;
    let payment = app.store.run(move |c| store::create_payment(c, new.amount_cents, &new.currency)).await?;
    let location = format!("/payments/{}", payment.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(payment)))
}

async fn show(State(app): State<App>, Path(raw): Path<String>) -> Result<Json<Payment>, ApiError> {
    let id = payment_id(&raw)?;
    let payment = app.store.run(move |c| store::get_payment(c, id)).await?;
    payment.map(Json).ok_or(ApiError::NotFound { id })
}

async fn conduct(State(app): State<App>, Path(raw): Path<String>) -> Result<Json<Payment>, ApiError> {
    let id = payment_id(&raw)?;
    // In its own task: a client that hangs up must not cut a charge in half
    // (charged at the provider but never marked PAID).
    let paid = tokio::spawn(crate::conduct::conduct(app, id)).await??;
    Ok(Json(paid))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargesQuery {
    payment_id: Option<i64>,
}

async fn charges(
    State(app): State<App>,
    query: Result<Query<ChargesQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::InvalidQuery { reason: e.body_text() })?;
    let payment_id = q.payment_id;
    let charges = app.store.run(move |c| store::charges(c, payment_id)).await?;
    Ok(Json(serde_json::json!({ "count": charges.len(), "charges": charges })))
}
