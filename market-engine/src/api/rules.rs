//! Trading rules: a household's standing prices for one of its meters (sell at least, buy at
//! most, keep the battery above a charge), which autotrade turns into orders each slot.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{Authenticated, JsonBody};
use super::meters::own_meter;
use super::{ApiError, AppState, now_s};
use crate::pipeline::now_ms;
use crate::store::TradingRule;

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/v1/meters/{meter_id}/rule",
        get(get_rule).put(put_rule).delete(delete_rule),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleRequest {
    sell_at_least_per_kwh: Option<u64>,
    buy_at_most_per_kwh: Option<u64>,
    keep_battery_above_bp: Option<u16>,
}

/// A trading rule as the API shows it.
#[derive(Debug, Serialize)]
struct RuleView {
    meter_id: String,
    sell_at_least_per_kwh: Option<u64>,
    buy_at_most_per_kwh: Option<u64>,
    keep_battery_above_bp: Option<u16>,
}

impl From<&TradingRule> for RuleView {
    fn from(rule: &TradingRule) -> Self {
        Self {
            meter_id: rule.meter_id.clone(),
            sell_at_least_per_kwh: rule.sell_at_least,
            buy_at_most_per_kwh: rule.buy_at_most,
            keep_battery_above_bp: rule.keep_battery_above_bp,
        }
    }
}

async fn put_rule(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(meter_id): Path<String>,
    JsonBody(req): JsonBody<RuleRequest>,
) -> Result<Json<RuleView>, ApiError> {
    own_meter(&state, &account, &meter_id).await?;
    if req.sell_at_least_per_kwh.is_none() && req.buy_at_most_per_kwh.is_none() {
        return Err(ApiError::BadRequest(
            "give sell_at_least_per_kwh, buy_at_most_per_kwh or both (DELETE removes the rule)"
                .into(),
        ));
    }
    let community = state.market.community();
    let slot = community.calendar.slot_delivering_at(now_s()).unwrap_or(0);
    let band = community
        .tariff
        .band(slot)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    for (name, price) in [
        ("sell_at_least_per_kwh", req.sell_at_least_per_kwh),
        ("buy_at_most_per_kwh", req.buy_at_most_per_kwh),
    ] {
        if let Some(p) = price
            && !(band.feed_in_per_kwh..=band.retail_per_kwh).contains(&p)
        {
            return Err(ApiError::BadRequest(format!(
                "{name}: {p} is outside the tariff band {}..={} (feed-in..retail)",
                band.feed_in_per_kwh, band.retail_per_kwh
            )));
        }
    }
    if req.keep_battery_above_bp.is_some_and(|bp| bp > 10_000) {
        return Err(ApiError::BadRequest(
            "keep_battery_above_bp: at most 10000 (100 %)".into(),
        ));
    }
    let rule = TradingRule {
        meter_id,
        account_id: account.id,
        sell_at_least: req.sell_at_least_per_kwh,
        buy_at_most: req.buy_at_most_per_kwh,
        keep_battery_above_bp: req.keep_battery_above_bp,
    };
    state.store.set_rule(&rule, now_ms()).await?;
    Ok(Json(RuleView::from(&rule)))
}

async fn get_rule(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(meter_id): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    own_meter(&state, &account, &meter_id).await?;
    let rules = state.store.rules().await?;
    let rule = rules
        .iter()
        .find(|r| r.meter_id == meter_id)
        .ok_or_else(|| ApiError::NotFound(format!("meter {meter_id:?} has no trading rule")))?;
    Ok(Json(RuleView::from(rule)))
}

async fn delete_rule(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(meter_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    own_meter(&state, &account, &meter_id).await?;
    if state.store.delete_rule(&meter_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "meter {meter_id:?} has no trading rule"
        )))
    }
}
