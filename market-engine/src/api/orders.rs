//! Orders: a household places a bid or an ask for one of its meters in a delivery slot,
//! cancels it, or amends its price and energy; each answer lists the trades it made at once.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, RateLimited};
use super::meters::own_meter;
use super::{ApiError, AppState, now_s};
use crate::market::{NewOrder, OrderSide};

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/orders", post(place_order))
        .route(
            "/api/v1/orders/{order_id}",
            delete(cancel_order).patch(amend_order),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRequest {
    meter_id: String,
    slot: u64,
    side: OrderSide,
    energy_wh: u64,
    price_per_kwh: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmendRequest {
    energy_wh: u64,
    price_per_kwh: u64,
}

/// A trade as the API shows it: the two orders, the energy and what each side pays or gets.
#[derive(Debug, Serialize)]
pub(super) struct TradeView {
    bid: u64,
    ask: u64,
    energy_wh: u64,
    buyer_pays: u64,
    seller_receives: u64,
    fees: u64,
    buyer_rate_per_kwh: u64,
    seller_rate_per_kwh: u64,
}

impl From<&gridshare_core::market::Trade> for TradeView {
    fn from(t: &gridshare_core::market::Trade) -> Self {
        Self {
            bid: t.bid.0,
            ask: t.ask.0,
            energy_wh: t.energy_wh,
            buyer_pays: t.amounts.buyer_pays,
            seller_receives: t.amounts.seller_receives,
            fees: t.amounts.fees,
            buyer_rate_per_kwh: t.amounts.buyer_rate_per_kwh,
            seller_rate_per_kwh: t.amounts.seller_rate_per_kwh,
        }
    }
}

/// The answer to a new order: its id, its slot and the trades it made at once.
#[derive(Debug, Serialize)]
struct PlacedOrder {
    order_id: u64,
    slot: u64,
    trades: Vec<TradeView>,
}

/// The answer to an amendment: the order and the trades its new terms made at once.
#[derive(Debug, Serialize)]
struct AmendedOrder {
    order_id: u64,
    trades: Vec<TradeView>,
}

async fn place_order(
    State(state): State<AppState>,
    RateLimited(account): RateLimited,
    JsonBody(req): JsonBody<OrderRequest>,
) -> Result<(StatusCode, Json<PlacedOrder>), ApiError> {
    own_meter(&state, &account, &req.meter_id).await?;
    let slot = req.slot;
    let new = NewOrder {
        account: account.id,
        meter: req.meter_id,
        slot,
        side: req.side,
        price_per_kwh: req.price_per_kwh,
        energy_wh: req.energy_wh,
    };
    let (order_id, trades) = state.market.submit(&new, now_s()).await?;
    Ok((
        StatusCode::CREATED,
        Json(PlacedOrder {
            order_id,
            slot,
            trades: trades.iter().map(TradeView::from).collect(),
        }),
    ))
}

async fn cancel_order(
    State(state): State<AppState>,
    RateLimited(account): RateLimited,
    Path(order_id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    state.market.cancel(account.id, order_id, now_s()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn amend_order(
    State(state): State<AppState>,
    RateLimited(account): RateLimited,
    Path(order_id): Path<u64>,
    JsonBody(req): JsonBody<AmendRequest>,
) -> Result<Json<AmendedOrder>, ApiError> {
    let trades = state
        .market
        .amend(
            account.id,
            order_id,
            req.price_per_kwh,
            req.energy_wh,
            now_s(),
        )
        .await?;
    Ok(Json(AmendedOrder {
        order_id,
        trades: trades.iter().map(TradeView::from).collect(),
    }))
}
