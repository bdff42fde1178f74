//! Delivery slots: which slot is delivering now, a slot's terms, status and trades, and its
//! order book's depth.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::orders::TradeView;
use super::{ApiError, AppState, now_s};

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/slots/current", get(current_slot))
        .route("/api/v1/slots/{slot}", get(slot_info))
        .route("/api/v1/slots/{slot}/book", get(slot_book))
}

async fn current_slot(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let calendar = &state.market.community().calendar;
    let now = now_s();
    let slot = calendar
        .slot_delivering_at(now)
        .ok_or_else(|| ApiError::Internal("clock before the calendar's epoch".into()))?;
    let next = calendar
        .slot(slot + 1)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(
        json!({ "now_s": now, "delivering": slot, "next": next }),
    ))
}

async fn slot_info(
    State(state): State<AppState>,
    Path(slot): Path<u64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let terms = state
        .market
        .community()
        .terms(slot)
        .map_err(|e| ApiError::BadRequest(format!("slot {slot}: {e}")))?;
    let (status, clearing_price) = state.market.slot_status(slot).await?;
    let trades = state.market.trades(slot).await?;
    Ok(Json(json!({
        "slot": terms.slot, "status": status, "clearing_price": clearing_price,
        "retail_per_kwh": terms.band.retail_per_kwh, "feed_in_per_kwh": terms.band.feed_in_per_kwh,
        "traded_wh": trades.iter().map(|t| t.energy_wh).sum::<u64>(),
        "trades": trades.iter().map(TradeView::from).collect::<Vec<_>>(),
    })))
}

async fn slot_book(
    State(state): State<AppState>,
    Path(slot): Path<u64>,
) -> Json<serde_json::Value> {
    let depth = state.market.depth(slot).await;
    let level = |(price, wh, orders): &(u64, u64, u32)| json!({"price_per_kwh": price, "energy_wh": wh, "orders": orders});
    Json(json!({
        "slot": slot,
        "bids": depth.bids.iter().map(level).collect::<Vec<_>>(),
        "asks": depth.asks.iter().map(level).collect::<Vec<_>>(),
    }))
}
