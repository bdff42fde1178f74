//! The market's settings: every version with the slot it applies from, and the operator's
//! change of tariffs, fees, the mechanism or the slot timeline.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, Operator, operator_action};
use super::{ApiError, AppState, now_s};

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/v1/market/settings",
        get(get_settings).put(put_settings),
    )
}

operator_action!(
    /// The market's terms are the operator's to set.
    ChangesSettings,
    "changes market settings"
);

/// `GET /api/v1/market/settings`.
#[derive(Serialize)]
struct SettingsBody {
    versions: Vec<SettingsVersion>,
}

/// The settings that apply from a slot on (the `[market]` section's keys).
#[derive(Serialize)]
struct SettingsVersion {
    from_slot: u64,
    settings: crate::market::MarketConfig,
}

/// `PUT /api/v1/market/settings`: the first slot the change applies to.
#[derive(Serialize)]
struct SettingsChanged {
    from_slot: u64,
}

async fn get_settings(State(state): State<AppState>) -> Json<SettingsBody> {
    let versions = state
        .market
        .settings()
        .into_iter()
        .map(|(from_slot, settings)| SettingsVersion {
            from_slot,
            settings,
        })
        .collect();
    Json(SettingsBody { versions })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsRequest {
    mechanism: crate::settings::MechanismName,
    price_rule: crate::settings::PriceRuleName,
    k_basis_points: u16,
    /// For `k-factor-capped`; the current value when absent.
    seller_max_margin_basis_points: Option<u16>,
    retail_per_kwh: u64,
    feed_in_per_kwh: u64,
    grid_fee_per_kwh: u64,
    /// The slot timeline; each keeps its current value when absent.
    window_opens_before_s: Option<u32>,
    gate_closure_before_s: Option<u32>,
    settlement_after_s: Option<u32>,
    /// Accepted only as the current length (slot indices count slots of it).
    slot_length_s: Option<u32>,
    /// For `sharing`; each keeps its current value when absent.
    sharing_key: Option<crate::settings::SharingKeyName>,
    sharing_price_per_kwh: Option<u64>,
    sharing_shares: Option<Vec<crate::settings::ShareEntry>>,
}

/// The community operator changes tariffs, fees, the mechanism or the slot timeline; the change
/// takes effect from the first slot whose order window has not opened, so no open order changes
/// terms.
async fn put_settings(
    State(state): State<AppState>,
    _: Operator<ChangesSettings>,
    JsonBody(req): JsonBody<SettingsRequest>,
) -> Result<Json<SettingsChanged>, ApiError> {
    let current = state
        .market
        .settings()
        .last()
        .map(|(_, c)| c.clone())
        .unwrap_or_default();
    let settings = crate::market::MarketConfig {
        mechanism: req.mechanism,
        price_rule: req.price_rule,
        k_basis_points: req.k_basis_points,
        seller_max_margin_basis_points: req
            .seller_max_margin_basis_points
            .unwrap_or(current.seller_max_margin_basis_points),
        retail_per_kwh: req.retail_per_kwh,
        feed_in_per_kwh: req.feed_in_per_kwh,
        grid_fee_per_kwh: req.grid_fee_per_kwh,
        slot_length_s: req.slot_length_s.unwrap_or(current.slot_length_s),
        window_opens_before_s: req
            .window_opens_before_s
            .unwrap_or(current.window_opens_before_s),
        gate_closure_before_s: req
            .gate_closure_before_s
            .unwrap_or(current.gate_closure_before_s),
        settlement_after_s: req.settlement_after_s.unwrap_or(current.settlement_after_s),
        sharing_key: req.sharing_key.unwrap_or(current.sharing_key),
        sharing_price_per_kwh: req.sharing_price_per_kwh.or(current.sharing_price_per_kwh),
        sharing_shares: req.sharing_shares.unwrap_or(current.sharing_shares),
    };
    let from_slot = state.market.change_settings(settings, now_s()).await?;
    Ok(Json(SettingsChanged { from_slot }))
}
