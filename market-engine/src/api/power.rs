//! The power picture now: each of a household's meters (grid, solar, battery, the house's own
//! power) and the neighbourhood at a glance, anonymised, with its energy over the last day.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::extract::Authenticated;
use super::history::{i64_of, meter_energy, my_meter_ids, settings_for};
use super::{ApiError, AppState, now_s};
use crate::pipeline::now_ms;

/// The routes of this module (merged into [`super::router`]).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/my/power", get(my_power))
        .route("/api/v1/neighbourhood", get(neighbourhood))
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// How far back the battery's power is averaged from its counters.
const BATTERY_WINDOW_MS: i64 = 60_000;

/// `GET /api/v1/my/power`.
#[derive(Serialize)]
struct MyPowerBody {
    now_ms: u64,
    meters: Vec<MeterPower>,
}

/// One meter now: its latest reading (`null` before its first) and, with one, the flows
/// derived from it.
#[derive(Serialize)]
struct MeterPower {
    meter_id: String,
    reading: Option<PowerReading>,
    #[serde(flatten)]
    flows: Option<PowerFlows>,
}

/// What the live picture shows of a reading.
#[derive(Serialize)]
struct PowerReading {
    seq: i64,
    timestamp_ms: i64,
    power_w: Option<i64>,
    soc_bp: Option<i64>,
    import_wh: Option<i64>,
    export_wh: Option<i64>,
    pv_power_w: Option<i64>,
    pv_wh: Option<i64>,
    battery_power_w: Option<i64>,
}

/// The battery's power (positive = charging) and the house's own power, W, where known.
#[derive(Serialize)]
struct PowerFlows {
    battery_w: Option<i64>,
    house_w: Option<i64>,
}

/// Each of the caller's meters now, for the live power-flow picture: its latest reading (grid
/// power, solar power, battery power and state of charge, lifetime counters, when it was
/// taken); the battery's power (positive = charging) as the reading reports it, or else its
/// average over the last minute of signed counters; and the house's own power,
/// `grid + solar − battery`, when the reading carries solar power.
async fn my_power(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<MyPowerBody>, ApiError> {
    let mut meters = Vec::new();
    for meter in my_meter_ids(&state, &account).await? {
        let latest = state.store.latest_reading(&meter).await?;
        let Some(r) = latest else {
            meters.push(MeterPower {
                meter_id: meter,
                reading: None,
                flows: None,
            });
            continue;
        };
        let ts = r.timestamp_ms;
        let (charge, discharge) = (r.battery_charge_wh, r.battery_discharge_wh);
        let mut battery_w = None;
        if let (Some(c1), Some(d1)) = (charge, discharge) {
            let old = state
                .store
                .battery_counters_since(&meter, ts - BATTERY_WINDOW_MS)
                .await?;
            if let Some(o) = old {
                let t0 = o.timestamp_ms;
                if ts > t0 {
                    let net = (c1 - o.battery_charge_wh) - (d1 - o.battery_discharge_wh);
                    // Wh over ms to W.
                    battery_w = Some(net.saturating_mul(3_600_000) / (ts - t0));
                }
            }
        }
        let grid = r.power_w;
        let (pv, battery_reported) = (r.pv_power_w, r.battery_power_w);
        // A meter without battery counters, power or state of charge has no battery.
        let no_battery = charge.is_none() && battery_reported.is_none() && r.soc_bp.is_none();
        let battery = battery_reported.or(battery_w).or(no_battery.then_some(0));
        let house_w = match (grid, pv, battery) {
            (Some(g), Some(p), Some(b)) => Some((g + p - b).max(0)),
            _ => None,
        };
        meters.push(MeterPower {
            meter_id: meter,
            reading: Some(PowerReading {
                seq: r.seq,
                timestamp_ms: ts,
                power_w: grid,
                soc_bp: r.soc_bp,
                import_wh: r.import_wh,
                export_wh: r.export_wh,
                pv_power_w: pv,
                pv_wh: r.pv_wh,
                battery_power_w: battery_reported,
            }),
            flows: Some(PowerFlows {
                battery_w: battery,
                house_w,
            }),
        });
    }
    Ok(Json(MyPowerBody {
        now_ms: now_ms(),
        meters,
    }))
}

/// Readings younger than this count as "now" on the neighbourhood page.
const NOW_WINDOW_MS: u64 = 120_000;

/// `GET /api/v1/neighbourhood`.
#[derive(Serialize)]
struct NeighbourhoodBody {
    now: NeighbourhoodNow,
    day: NeighbourhoodDay,
}

/// The meters reporting now, anonymised.
#[derive(Serialize)]
struct NeighbourhoodNow {
    meters: usize,
    producing: usize,
    consuming: usize,
    /// Each meter's grid power, rounded to 100 W, sorted, without ids.
    power_w: Vec<i64>,
    import_w: i64,
    export_w: i64,
}

/// The community's energy over the last day of slots.
#[derive(Serialize)]
struct NeighbourhoodDay {
    from_slot: u64,
    to_slot: u64,
    import_wh: u64,
    export_wh: u64,
    covered_locally_wh: u64,
    from_utility_wh: u64,
    traded_wh: u64,
    self_sufficiency_bp: Option<u64>,
    slots: Vec<SlotEnergy>,
}

/// The community's metered import and export in one slot.
#[derive(Serialize)]
struct SlotEnergy {
    slot: u64,
    import_wh: u64,
    export_wh: u64,
}

/// The neighbourhood at a glance, anonymised: each meter's latest grid power (no ids, rounded
/// to 100 W, sorted, and only when at least [`crate::pipeline::MIN_METERS_IN_AGGREGATE`] meters
/// report),
/// and per slot of the last day of slots the community's metered import and export, the part of
/// the imports its own exports could cover (`min(Σ export, Σ import)` per slot) and what it
/// traded locally.
async fn neighbourhood(State(state): State<AppState>) -> Result<Json<NeighbourhoodBody>, ApiError> {
    let now = now_ms();
    let since = i64_of(now.saturating_sub(NOW_WINDOW_MS));
    let latest = state.store.latest_grid_powers(since).await?;
    // Anonymised as the live stream's aggregate is: nothing per meter unless enough meters
    // report that none stands out, each rounded to 100 W, sorted, without ids.
    let mut powers: Vec<i64> = latest
        .iter()
        // Integer rounding to the nearest 100 W, halves away from zero.
        .map(|&w| (w + 50 * w.signum()) / 100 * 100)
        .collect();
    if powers.len() < crate::pipeline::MIN_METERS_IN_AGGREGATE {
        powers.clear();
    }
    powers.sort_unstable();
    let versions = state.market.settings();
    let now_s = now_s();
    let length = u64::from(settings_for(&versions, u64::MAX).slot_length_s.max(1));
    let current = u64_of(now_s) / length;
    // A day of slots, at most 96 (a day of quarter hours; fewer, longer slots for longer ones).
    let count = (86_400 / length).clamp(1, 96);
    let from = current.saturating_sub(count);
    let to = current.saturating_sub(1);
    let mut per_slot: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for meter in state.store.meters().await? {
        for (slot, (import, export)) in
            meter_energy(&state, &meter.meter_id, from, to, length).await?
        {
            let e = per_slot.entry(slot).or_default();
            e.0 += import;
            e.1 += export;
        }
    }
    let traded = state.store.traded_between(from, to).await?;
    let import: u64 = per_slot.values().map(|v| v.0).sum();
    let export: u64 = per_slot.values().map(|v| v.1).sum();
    let covered: u64 = per_slot.values().map(|(i, e)| (*i).min(*e)).sum();
    Ok(Json(NeighbourhoodBody {
        now: NeighbourhoodNow {
            meters: powers.len(),
            producing: powers.iter().filter(|p| **p < 0).count(),
            consuming: powers.iter().filter(|p| **p > 0).count(),
            import_w: powers.iter().filter(|p| **p > 0).sum(),
            export_w: -powers.iter().filter(|p| **p < 0).sum::<i64>(),
            power_w: powers,
        },
        day: NeighbourhoodDay {
            from_slot: from,
            to_slot: to,
            import_wh: import,
            export_wh: export,
            covered_locally_wh: covered,
            from_utility_wh: import - covered,
            traded_wh: traded,
            self_sufficiency_bp: (covered * 10_000).checked_div(import),
            slots: per_slot
                .into_iter()
                .map(|(slot, (import_wh, export_wh))| SlotEnergy {
                    slot,
                    import_wh,
                    export_wh,
                })
                .collect(),
        },
    }))
}
