//! Orders: a household places a bid or an ask for one of its meters in a delivery slot,
//! cancels it, or amends its price and energy; each answer lists the trades it made at once.
//! It lists its orders still open, rebuilt from the order log.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{Authenticated, JsonBody, RateLimited};
use super::meters::own_meter;
use super::{ApiError, AppState, now_s};
use crate::exchange::OrderEventKind;
use crate::market::{NewOrder, OrderSide};

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/orders", post(place_order))
        .route(
            "/api/v1/orders/{order_id}",
            delete(cancel_order).patch(amend_order),
        )
        .route("/api/v1/my/orders", get(my_orders))
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

/// `GET /api/v1/my/orders`.
#[derive(Serialize)]
struct OpenOrdersBody {
    orders: Vec<OpenOrder>,
}

/// An order still open, with the price and energy of its latest amend.
#[derive(Serialize)]
struct OpenOrder {
    order_id: u64,
    slot: u64,
    meter_id: String,
    side: OrderSide,
    price_per_kwh: u64,
    energy_wh: u64,
    placed_s: i64,
}

/// The caller's orders that are still open: in slots whose gate has not closed, not
/// cancelled, with the price and energy of their latest amend, less what they traded since
/// (continuous mechanisms trade before gate closure).
async fn my_orders(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<OpenOrdersBody>, ApiError> {
    let mut open: BTreeMap<u64, OpenOrder> = BTreeMap::new();
    let mut amended: HashMap<u64, bool> = HashMap::new();
    for e in state.store.account_open_slot_events(account.id).await? {
        let id = e.order_id;
        match (e.kind, e.side) {
            (OrderEventKind::Submit, Some(side)) => {
                open.insert(
                    id,
                    OpenOrder {
                        order_id: id,
                        slot: e.slot,
                        meter_id: e.meter_id,
                        side,
                        price_per_kwh: e.price_per_kwh,
                        energy_wh: e.energy_wh,
                        placed_s: e.at_s,
                    },
                );
            }
            // The store reads a side for every submit.
            (OrderEventKind::Submit, None) => {}
            (OrderEventKind::Cancel, _) => {
                open.remove(&id);
            }
            (OrderEventKind::Amend, _) => {
                if let Some(o) = open.get_mut(&id) {
                    o.price_per_kwh = e.price_per_kwh;
                    o.energy_wh = e.energy_wh;
                    amended.insert(id, true);
                }
            }
        }
    }
    // Energy already traded (continuous mechanisms) is no longer open. An amend restates the
    // open energy, so only orders never amended subtract their trades.
    let ids: Vec<u64> = open.keys().copied().collect();
    for id in ids {
        if amended.contains_key(&id) {
            continue;
        }
        let traded = state.store.order_traded_wh(account.id, id).await?;
        if let Some(o) = open.get_mut(&id) {
            let left = o.energy_wh.saturating_sub(traded);
            if left == 0 {
                open.remove(&id);
            } else {
                o.energy_wh = left;
            }
        }
    }
    Ok(Json(OpenOrdersBody {
        orders: open.into_values().collect(),
    }))
}
