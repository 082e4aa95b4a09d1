//! HTTP routes and thin handlers: parse, call [`crate::deliver`] or the
//! store, map the result.
//!
//! | route | what |
//! |---|---|
//! | `POST /orders` | `{"order_id": 7, "amount_cents": 1250}`: commit an order (the order service's side) |
//! | `POST /callbacks/order-placed` | `{"order_id": 7}`: one delivery of the callback |
//! | `GET /stats` | the statistics |
//! | `GET /orders`, `GET /orders/{id}` | orders with callback status, times counted, fence |
//! | `GET /leases` | order leases this process holds now |

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::deliver::{Delivered, Worker};
use crate::error::{parse_json, ApiError};
use crate::inflight::Held;
use crate::store::{self, Created, Order, Stats};

/// The worker's routes.
pub(crate) fn router(worker: Worker) -> Router {
    Router::new()
        .route("/orders", post(create_order).get(list_orders))
        .route("/orders/{id}", get(show_order))
        .route("/callbacks/order-placed", post(order_placed))
        .route("/stats", get(stats))
        .route("/leases", get(leases))
        .with_state(worker)
}

fn check_order_id(order_id: i64) -> Result<i64, ApiError> {
    if order_id <= 0 {
        return Err(ApiError::InvalidField { field: "order_id", reason: "must be a positive integer" });
    }
    Ok(order_id)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    order_id: i64,
    #[serde(default)]
    amount_cents: i64,
}

async fn create_order(State(w): State<Worker>, body: Bytes) -> Result<(StatusCode, Json<Order>), ApiError> {
    let new: NewOrder = parse_json(&body)?;
    let order_id = check_order_id(new.order_id)?;
    if new.amount_cents < 0 {
        return Err(ApiError::InvalidField { field: "amount_cents", reason: "must not be negative" });
    }
    let (created, order) = w.store.run(move |c| store::create_order(c, order_id, new.amount_cents)).await?;
    let status = if created == Created::New { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(order)))
}

#[derive(Debug, Deserialize)]
struct OrderPlaced {
    order_id: i64,
}

async fn order_placed(State(w): State<Worker>, body: Bytes) -> Result<Json<Delivered>, ApiError> {
    let msg: OrderPlaced = parse_json(&body)?;
    let order_id = check_order_id(msg.order_id)?;
    // In its own task: a queue that hangs up must not cut a delivery in half.
    let delivered = tokio::spawn(crate::deliver::deliver(w, order_id)).await??;
    Ok(Json(delivered))
}

async fn stats(State(w): State<Worker>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(w.store.run(|c| store::stats(c)).await?))
}

async fn list_orders(State(w): State<Worker>) -> Result<Json<Vec<Order>>, ApiError> {
    Ok(Json(w.store.run(|c| store::list_orders(c)).await?))
}

async fn show_order(State(w): State<Worker>, Path(raw): Path<String>) -> Result<Json<Order>, ApiError> {
    let order_id = match raw.parse::<i64>() {
        Ok(id) if id > 0 => id,
        _ => return Err(ApiError::InvalidId { raw }),
    };
    let order = w.store.run(move |c| store::get_order(c, order_id)).await?;
    order.map(Json).ok_or(ApiError::NotFound { order_id })
}

async fn leases(State(w): State<Worker>) -> Json<Vec<Held>> {
    Json(w.inflight.snapshot())
}
