//! Delivery slots: which slot is delivering now, a slot's terms, status and trades, and its
//! order book's depth.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use gridshare_core::market::DeliverySlot;
use serde::Serialize;

use super::orders::TradeView;
use super::{ApiError, AppState, now_s};
use crate::store::SlotStatus;

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/slots/current", get(current_slot))
        .route("/api/v1/slots/{slot}", get(slot_info))
        .route("/api/v1/slots/{slot}/book", get(slot_book))
}

/// `GET /api/v1/slots/current`: the slot delivering now and the next one's timeline.
#[derive(Serialize)]
struct CurrentSlot {
    now_s: i64,
    delivering: u64,
    next: DeliverySlot,
}

/// `GET /api/v1/slots/{slot}`: a slot's timeline, where it stands, its tariffs and trades.
#[derive(Serialize)]
struct SlotInfo {
    slot: DeliverySlot,
    status: SlotStatus,
    clearing_price: Option<u64>,
    retail_per_kwh: u64,
    feed_in_per_kwh: u64,
    traded_wh: u64,
    trades: Vec<TradeView>,
}

/// `GET /api/v1/slots/{slot}/book`: the open orders by price level, best first.
#[derive(Serialize)]
struct BookBody {
    slot: u64,
    bids: Vec<BookLevel>,
    asks: Vec<BookLevel>,
}

/// The open orders at one price.
#[derive(Serialize)]
struct BookLevel {
    price_per_kwh: u64,
    energy_wh: u64,
    orders: u32,
}

impl From<&(u64, u64, u32)> for BookLevel {
    fn from(&(price_per_kwh, energy_wh, orders): &(u64, u64, u32)) -> Self {
        Self {
            price_per_kwh,
            energy_wh,
            orders,
        }
    }
}

async fn current_slot(State(state): State<AppState>) -> Result<Json<CurrentSlot>, ApiError> {
    let calendar = &state.market.community().calendar;
    let now = now_s();
    let slot = calendar
        .slot_delivering_at(now)
        .ok_or_else(|| ApiError::Internal("clock before the calendar's epoch".into()))?;
    let next = calendar
        .slot(slot + 1)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(CurrentSlot {
        now_s: now,
        delivering: slot,
        next,
    }))
}

async fn slot_info(
    State(state): State<AppState>,
    Path(slot): Path<u64>,
) -> Result<Json<SlotInfo>, ApiError> {
    let terms = state
        .market
        .community()
        .terms(slot)
        .map_err(|e| ApiError::BadRequest(format!("slot {slot}: {e}")))?;
    let (status, clearing_price) = state.market.slot_status(slot).await?;
    let trades = state.market.trades(slot).await?;
    Ok(Json(SlotInfo {
        slot: terms.slot,
        status,
        clearing_price,
        retail_per_kwh: terms.band.retail_per_kwh,
        feed_in_per_kwh: terms.band.feed_in_per_kwh,
        traded_wh: trades.iter().map(|t| t.energy_wh).sum(),
        trades: trades.iter().map(TradeView::from).collect(),
    }))
}

async fn slot_book(State(state): State<AppState>, Path(slot): Path<u64>) -> Json<BookBody> {
    let depth = state.market.depth(slot).await;
    Json(BookBody {
        slot,
        bids: depth.bids.iter().map(BookLevel::from).collect(),
        asks: depth.asks.iter().map(BookLevel::from).collect(),
    })
}
