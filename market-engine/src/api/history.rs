//! What the web app (and any dashboard) reads beyond single resources: the slot timeline with
//! tariffs and clearing prices over a range, a household's energy and money per slot (with what
//! the utility alone would have cost, also as CSV), its open orders, the neighbourhood's power
//! now and energy today (anonymised), and the operator's view of rejected readings.
//!
//! Design: every figure is computed from what the engine already records — signed counters at
//! slot boundaries (the same rule settlement uses: the last reading at or before the boundary),
//! the trades table, the ledger and the order log — so the app shows nothing the settlement
//! would not agree with.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gridshare_core::market::amount_for;
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;

use super::{ApiError, AppState, Authenticated, now_s};
use crate::market::MarketConfig;
use crate::pipeline::now_ms;
use crate::store::AccountRow;

/// Most slots one range request may cover: a year of 15-minute slots.
pub const MAX_SLOTS: u64 = 35_136;

/// The routes of this module (merged into [`super::router`]).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/slots", get(slots))
        .route("/api/v1/my/slots", get(my_slots))
        .route("/api/v1/my/orders", get(my_orders))
        .route("/api/v1/my/power", get(my_power))
        .route("/api/v1/neighbourhood", get(neighbourhood))
        .route("/api/v1/operator/rejections", get(rejections))
        .route("/api/v1/operator/disputes", get(disputes))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A range of slots, `from..=to`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    from: u64,
    to: u64,
    /// `json` (default), or for my slots `csv` (a file) or `totals` (sums over the range).
    format: Option<String>,
}

impl RangeQuery {
    fn checked(
        q: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
    ) -> Result<RangeQuery, ApiError> {
        let Query(q) = q.map_err(|e| {
            ApiError::BadRequest(format!(
                "{}; give from and to as slot indices (GET /api/v1/slots/current)",
                e.body_text()
            ))
        })?;
        if q.to < q.from {
            return Err(ApiError::BadRequest(format!(
                "to: {} is before from ({})",
                q.to, q.from
            )));
        }
        if q.to - q.from >= MAX_SLOTS {
            return Err(ApiError::BadRequest(format!(
                "to: at most {MAX_SLOTS} slots per request (a year of 15-minute slots)"
            )));
        }
        match q.format.as_deref() {
            None | Some("json" | "csv" | "totals") => Ok(q),
            Some(other) => Err(ApiError::BadRequest(format!(
                "format: {other:?} is not json, csv or totals"
            ))),
        }
    }
}

/// The settings that govern `slot`, from the versions `(from slot, settings)` oldest first.
fn settings_for(versions: &[(u64, MarketConfig)], slot: u64) -> MarketConfig {
    versions
        .iter()
        .rev()
        .find(|(from, _)| *from <= slot)
        .or(versions.first())
        .map(|(_, c)| c.clone())
        .unwrap_or_default()
}

/// Status and clearing price of the slots in a range that closed (the rest are open).
async fn slot_rows(
    state: &AppState,
    from: u64,
    to: u64,
) -> Result<HashMap<u64, (String, Option<u64>)>, ApiError> {
    let rows = sqlx::query(
        "SELECT slot, status, clearing_price FROM slots WHERE slot >= $1 AND slot <= $2",
    )
    .bind(i64_of(from))
    .bind(i64_of(to))
    .fetch_all(state.store.pool())
    .await
    .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                u64_of(r.get(0)),
                (r.get(1), r.get::<Option<i64>, _>(2).map(u64_of)),
            )
        })
        .collect())
}

fn db(e: sqlx::Error) -> ApiError {
    ApiError::from(crate::store::StoreError::Database(e))
}

/// Per slot of a range: the timeline, status, clearing price, tariffs, grid fee and traded
/// energy. Public: the market's terms and results are no one's secret.
async fn slots(
    State(state): State<AppState>,
    q: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = RangeQuery::checked(q)?;
    let versions = state.market.settings();
    let status = slot_rows(&state, q.from, q.to).await?;
    let traded = sqlx::query(
        "SELECT slot, CAST(SUM(energy_wh) AS BIGINT), CAST(COUNT(*) AS BIGINT) FROM trades \
         WHERE slot >= $1 AND slot <= $2 GROUP BY slot",
    )
    .bind(i64_of(q.from))
    .bind(i64_of(q.to))
    .fetch_all(state.store.pool())
    .await
    .map_err(db)?
    .into_iter()
    .map(|r| (u64_of(r.get(0)), (u64_of(r.get(1)), u64_of(r.get(2)))))
    .collect::<HashMap<_, _>>();
    let mut out = Vec::new();
    for slot in q.from..=q.to {
        let config = settings_for(&versions, slot);
        let timeline = state
            .market
            .community_for(slot)
            .calendar
            .slot(slot)
            .map_err(|e| ApiError::BadRequest(format!("slot {slot}: {e}")))?;
        let (status, price) = status.get(&slot).cloned().unwrap_or(("open".into(), None));
        let (traded_wh, trades) = traded.get(&slot).copied().unwrap_or((0, 0));
        out.push(json!({
            "slot": slot,
            "window_opens_s": timeline.order_window_opens,
            "gate_closure_s": timeline.gate_closure,
            "delivery_start_s": timeline.delivery_start,
            "delivery_end_s": timeline.delivery_end,
            "settlement_s": timeline.settlement,
            "status": status,
            "clearing_price": price,
            "retail_per_kwh": config.retail_per_kwh,
            "feed_in_per_kwh": config.feed_in_per_kwh,
            "grid_fee_per_kwh": config.grid_fee_per_kwh,
            "mechanism": config.mechanism,
            "traded_wh": traded_wh,
            "trades": trades,
        }));
    }
    Ok(Json(json!({ "now_s": now_s(), "slots": out })))
}

/// Lifetime import and export counters of one reading.
type Counters = (u64, u64);

/// Lifetime counters of a meter, by the column names of the readings table.
#[derive(Clone, Copy)]
enum CounterSet {
    /// Grid import and export.
    Grid,
    /// Solar production.
    Solar,
    /// Battery charge and discharge.
    Battery,
}

impl CounterSet {
    fn columns(self) -> [&'static str; 2] {
        match self {
            // The solar set has one counter; the second column repeats it.
            Self::Grid => ["import_wh", "export_wh"],
            Self::Solar => ["pv_wh", "pv_wh"],
            Self::Battery => ["battery_charge_wh", "battery_discharge_wh"],
        }
    }
}

/// Import and export of `meter` per slot of `from..=to` (slot boundaries every `length_s`
/// seconds from slot 0 at the Unix epoch): the counters of the last reading at or before each
/// boundary, as settlement takes them. A slot without a reading on both sides has none.
async fn meter_energy(
    state: &AppState,
    meter: &str,
    from: u64,
    to: u64,
    length_s: u64,
) -> Result<BTreeMap<u64, Counters>, ApiError> {
    meter_counters(state, meter, CounterSet::Grid, from, to, length_s).await
}

/// What a pair of lifetime counters of `meter` advanced per slot of `from..=to`, by the
/// settlement's rule (the last reading at or before each boundary).
async fn meter_counters(
    state: &AppState,
    meter: &str,
    set: CounterSet,
    from: u64,
    to: u64,
    length_s: u64,
) -> Result<BTreeMap<u64, Counters>, ApiError> {
    let start_ms = i64_of(from.saturating_mul(length_s).saturating_mul(1000));
    let end_ms = i64_of(
        to.saturating_add(1)
            .saturating_mul(length_s)
            .saturating_mul(1000),
    );
    let [a, b] = set.columns();
    let pool = state.store.pool();
    // The column names come from `CounterSet`, never from a request.
    let before = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT timestamp_ms, {a}, {b} FROM readings WHERE meter_id = $1 \
         AND timestamp_ms <= $2 AND {a} IS NOT NULL AND {b} IS NOT NULL \
         ORDER BY timestamp_ms DESC LIMIT 1"
    )))
    .bind(meter)
    .bind(start_ms)
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    // Only the last reading of each slot (a reading exactly at a boundary closes the slot
    // before it): one row per slot leaves the database instead of every reading.
    let inside = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT r.timestamp_ms, r.{a}, r.{b} FROM readings r JOIN ( \
           SELECT MAX(timestamp_ms) AS t FROM readings WHERE meter_id = $1 \
           AND timestamp_ms > $2 AND timestamp_ms <= $3 \
           AND {a} IS NOT NULL AND {b} IS NOT NULL \
           GROUP BY (timestamp_ms - 1) / $4) last ON r.timestamp_ms = last.t \
         WHERE r.meter_id = $1 AND r.{a} IS NOT NULL AND r.{b} IS NOT NULL \
         ORDER BY r.timestamp_ms, r.seq"
    )))
    .bind(meter)
    .bind(start_ms)
    .bind(end_ms)
    .bind(i64_of(length_s.saturating_mul(1000)))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let row = |r: &sqlx::any::AnyRow| (r.get::<i64, _>(0), (u64_of(r.get(1)), u64_of(r.get(2))));
    // Counters at each boundary: walk the readings once.
    let mut out = BTreeMap::new();
    let mut last: Option<Counters> = before.as_ref().map(|r| row(r).1);
    let mut readings = inside.iter().map(row).peekable();
    let mut at_start = last;
    for slot in from..=to {
        let boundary = i64_of(
            slot.saturating_add(1)
                .saturating_mul(length_s)
                .saturating_mul(1000),
        );
        while let Some((ts, c)) = readings.peek().copied() {
            if ts > boundary {
                break;
            }
            last = Some(c);
            readings.next();
        }
        if let (Some(s), Some(e)) = (at_start, last) {
            out.insert(slot, (e.0.saturating_sub(s.0), e.1.saturating_sub(s.1)));
        }
        at_start = last;
    }
    Ok(out)
}

/// One household slot, as the app and the CSV show it.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct MySlot {
    slot: u64,
    start_s: i64,
    import_wh: Option<u64>,
    export_wh: Option<u64>,
    bought_wh: u64,
    sold_wh: u64,
    paid: u64,
    received: u64,
    fees: u64,
    settled: Option<i64>,
    utility_only: Option<i64>,
    /// Solar production, Wh (meters whose readings carry a PV counter).
    pv_wh: Option<u64>,
    /// Energy charged into and discharged from the battery, Wh.
    battery_charge_wh: Option<u64>,
    battery_discharge_wh: Option<u64>,
    /// The house's own consumption, Wh: `import + pv + discharge − export − charge`, where the
    /// solar counter is known (a meter without a battery charges and discharges nothing).
    consumption_wh: Option<u64>,
}

/// Self-sufficiency and self-consumption over some slots, in basis points, as Home Assistant's
/// Energy dashboard defines them — except that energy traded with neighbours counts as local:
///
/// - self-sufficiency = 1 − (energy from the utility) / consumption, where energy from the
///   utility is the import less what was bought from neighbours (HA: 1 − grid import /
///   consumption);
/// - self-consumption = 1 − (energy to the utility) / solar production, where energy to the
///   utility is the export less what was sold to neighbours (HA: 1 − grid export / production).
///
/// Only slots whose consumption (respectively production) is known count; `None` without any.
fn shares<'a>(rows: impl Iterator<Item = &'a MySlot> + Clone) -> (Option<u64>, Option<u64>) {
    let bp = |part: u64, whole: u64| (whole > 0).then(|| part.min(whole) * 10_000 / whole);
    let known = rows.clone().filter(|r| r.consumption_wh.is_some());
    let consumption: u64 = known.clone().filter_map(|r| r.consumption_wh).sum();
    let from_utility: u64 = known
        .map(|r| {
            let import = r.import_wh.unwrap_or(0);
            import - r.bought_wh.min(import)
        })
        .sum();
    let produced = rows.filter(|r| r.pv_wh.is_some());
    let pv: u64 = produced.clone().filter_map(|r| r.pv_wh).sum();
    let to_utility: u64 = produced
        .map(|r| {
            let export = r.export_wh.unwrap_or(0);
            export - r.sold_wh.min(export)
        })
        .sum();
    (
        bp(consumption.saturating_sub(from_utility), consumption),
        bp(pv.saturating_sub(to_utility), pv),
    )
}

async fn my_meter_ids(state: &AppState, account: &AccountRow) -> Result<Vec<String>, ApiError> {
    Ok(state
        .store
        .meters()
        .await?
        .into_iter()
        .filter(|m| m.account_id == account.id)
        .map(|m| m.meter_id)
        .collect())
}

/// Per slot of a range, for the caller's account: metered import and export (all its meters),
/// energy bought and sold, what the trades paid and received, the grid fees in what it paid,
/// the settled net amount (once settled) and what the utility alone would have cost
/// (`import × retail − export × feed-in`, each by the engine's one rounding rule). As JSON,
/// with `format=csv` as a CSV file, with `format=totals` as the sums over the range.
async fn my_slots(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    q: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = RangeQuery::checked(q)?;
    let versions = state.market.settings();
    let length_s = u64::from(settings_for(&versions, q.from).slot_length_s);
    let mut rows: BTreeMap<u64, MySlot> = (q.from..=q.to)
        .map(|slot| {
            (
                slot,
                MySlot {
                    slot,
                    start_s: i64_of(slot.saturating_mul(length_s)),
                    ..MySlot::default()
                },
            )
        })
        .collect();
    let add = |into: &mut Option<u64>, v: u64| *into = Some(into.unwrap_or(0) + v);
    for meter in my_meter_ids(&state, &account).await? {
        for (slot, (import, export)) in meter_energy(&state, &meter, q.from, q.to, length_s).await?
        {
            if let Some(row) = rows.get_mut(&slot) {
                add(&mut row.import_wh, import);
                add(&mut row.export_wh, export);
            }
        }
        let solar =
            meter_counters(&state, &meter, CounterSet::Solar, q.from, q.to, length_s).await?;
        let battery =
            meter_counters(&state, &meter, CounterSet::Battery, q.from, q.to, length_s).await?;
        for (slot, (pv, _)) in solar {
            if let Some(row) = rows.get_mut(&slot) {
                let (charge, discharge) = battery.get(&slot).copied().unwrap_or_default();
                add(&mut row.pv_wh, pv);
                add(&mut row.battery_charge_wh, charge);
                add(&mut row.battery_discharge_wh, discharge);
            }
        }
    }
    let pool = state.store.pool();
    let trades = sqlx::query(
        "SELECT slot, buyer, seller, energy_wh, buyer_pays, seller_receives, fees FROM trades \
         WHERE slot >= $1 AND slot <= $2 AND (buyer = $3 OR seller = $3)",
    )
    .bind(i64_of(q.from))
    .bind(i64_of(q.to))
    .bind(account.id)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    for t in trades {
        let Some(row) = rows.get_mut(&u64_of(t.get(0))) else {
            continue;
        };
        let (buyer, seller): (i64, i64) = (t.get(1), t.get(2));
        let energy = u64_of(t.get(3));
        if buyer == account.id {
            row.bought_wh += energy;
            row.paid += u64_of(t.get(4));
            row.fees += u64_of(t.get(6));
        }
        if seller == account.id {
            row.sold_wh += energy;
            row.received += u64_of(t.get(5));
        }
    }
    let ledger = sqlx::query(
        "SELECT l.slot, CAST(SUM(l.amount) AS BIGINT) FROM ledger l \
         WHERE l.account_id = $1 AND l.slot >= $2 AND l.slot <= $3 GROUP BY l.slot",
    )
    .bind(account.id)
    .bind(i64_of(q.from))
    .bind(i64_of(q.to))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    for r in ledger {
        if let Some(row) = rows.get_mut(&u64_of(r.get(0))) {
            row.settled = Some(r.get(1));
        }
    }
    for row in rows.values_mut() {
        let (Some(import), Some(export)) = (row.import_wh, row.export_wh) else {
            continue;
        };
        if let Some(pv) = row.pv_wh {
            let gained = import + pv + row.battery_discharge_wh.unwrap_or(0);
            let left = export + row.battery_charge_wh.unwrap_or(0);
            row.consumption_wh = Some(gained.saturating_sub(left));
        }
        let c = settings_for(&versions, row.slot);
        let cost = amount_for(import, c.retail_per_kwh).unwrap_or(u64::MAX);
        let credit = amount_for(export, c.feed_in_per_kwh).unwrap_or(u64::MAX);
        row.utility_only = Some(i64_of(cost) - i64_of(credit));
    }
    let (self_sufficiency, self_consumption) = shares(rows.values());
    if q.format.as_deref() == Some("totals") {
        // The sums over the range; money only over settled slots, so what was paid and what
        // the utility alone would have cost compare like with like.
        let settled: Vec<&MySlot> = rows.values().filter(|r| r.settled.is_some()).collect();
        let sum = |f: fn(&MySlot) -> u64| rows.values().map(f).sum::<u64>();
        return Ok(Json(json!({
            "account": account.name, "from": q.from, "to": q.to, "slot_length_s": length_s,
            "import_wh": sum(|r| r.import_wh.unwrap_or(0)),
            "export_wh": sum(|r| r.export_wh.unwrap_or(0)),
            "bought_wh": sum(|r| r.bought_wh), "sold_wh": sum(|r| r.sold_wh),
            "paid": sum(|r| r.paid), "received": sum(|r| r.received), "fees": sum(|r| r.fees),
            "settled_slots": settled.len(),
            "settled": settled.iter().filter_map(|r| r.settled).sum::<i64>(),
            "utility_only": settled.iter().filter_map(|r| r.utility_only).sum::<i64>(),
            "pv_wh": sum(|r| r.pv_wh.unwrap_or(0)),
            "consumption_wh": sum(|r| r.consumption_wh.unwrap_or(0)),
            "self_sufficiency_bp": self_sufficiency,
            "self_consumption_bp": self_consumption,
        }))
        .into_response());
    }
    if q.format.as_deref() == Some("csv") {
        let mut csv = String::from(
            "slot,start_utc_s,import_wh,export_wh,bought_wh,sold_wh,paid,received,fees,settled,utility_only,pv_wh,consumption_wh\n",
        );
        let opt = |v: Option<String>| v.unwrap_or_default();
        for r in rows.values() {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                r.slot,
                r.start_s,
                opt(r.import_wh.map(|v| v.to_string())),
                opt(r.export_wh.map(|v| v.to_string())),
                r.bought_wh,
                r.sold_wh,
                r.paid,
                r.received,
                r.fees,
                opt(r.settled.map(|v| v.to_string())),
                opt(r.utility_only.map(|v| v.to_string())),
                opt(r.pv_wh.map(|v| v.to_string())),
                opt(r.consumption_wh.map(|v| v.to_string())),
            ));
        }
        let file = format!(
            "attachment; filename=\"gridshare-{}-slots-{}-{}.csv\"",
            account.name, q.from, q.to
        );
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::CONTENT_DISPOSITION, file),
            ],
            csv,
        )
            .into_response());
    }
    Ok(Json(json!({
        "account": account.name,
        "slot_length_s": length_s,
        "self_sufficiency_bp": self_sufficiency,
        "self_consumption_bp": self_consumption,
        "slots": rows.into_values().collect::<Vec<_>>(),
    }))
    .into_response())
}

/// The caller's orders that are still open: in slots whose gate has not closed, not
/// cancelled, with the price and energy of their latest amend, less what they traded since
/// (continuous mechanisms trade before gate closure).
async fn my_orders(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pool = state.store.pool();
    let events = sqlx::query(
        "SELECT e.order_id, e.kind, e.slot, e.meter_id, e.side, e.price_per_kwh, e.energy_wh, e.at_s \
         FROM order_events e WHERE e.account_id = $1 \
         AND e.slot NOT IN (SELECT slot FROM slots) ORDER BY e.seq",
    )
    .bind(account.id)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut open: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    let mut amended: HashMap<u64, bool> = HashMap::new();
    for e in events {
        let id = u64_of(e.get(0));
        let kind: String = e.get(1);
        match kind.as_str() {
            "submit" => {
                open.insert(
                    id,
                    json!({
                        "order_id": id, "slot": u64_of(e.get(2)), "meter_id": e.get::<String, _>(3),
                        "side": e.get::<String, _>(4), "price_per_kwh": u64_of(e.get(5)),
                        "energy_wh": u64_of(e.get(6)), "placed_s": e.get::<i64, _>(7),
                    }),
                );
            }
            "cancel" => {
                open.remove(&id);
            }
            _ => {
                if let Some(o) = open.get_mut(&id) {
                    o["price_per_kwh"] = json!(u64_of(e.get(5)));
                    o["energy_wh"] = json!(u64_of(e.get(6)));
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
        let traded: i64 = sqlx::query(
            "SELECT CAST(COALESCE(SUM(energy_wh), 0) AS BIGINT) FROM trades \
             WHERE (bid_order = $1 AND buyer = $2) OR (ask_order = $1 AND seller = $2)",
        )
        .bind(i64_of(id))
        .bind(account.id)
        .fetch_one(pool)
        .await
        .map_err(db)?
        .get(0);
        if let Some(o) = open.get_mut(&id) {
            let left = o["energy_wh"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(u64_of(traded));
            if left == 0 {
                open.remove(&id);
            } else {
                o["energy_wh"] = json!(left);
            }
        }
    }
    Ok(Json(
        json!({ "orders": open.into_values().collect::<Vec<_>>() }),
    ))
}

/// How far back the battery's power is averaged from its counters.
const BATTERY_WINDOW_MS: i64 = 60_000;

/// Each of the caller's meters now, for the live power-flow picture: its latest reading (grid
/// power, solar power, battery power and state of charge, lifetime counters, when it was
/// taken); the battery's power (positive = charging) as the reading reports it, or else its
/// average over the last minute of signed counters; and the house's own power,
/// `grid + solar − battery`, when the reading carries solar power.
async fn my_power(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pool = state.store.pool();
    let mut meters = Vec::new();
    for meter in my_meter_ids(&state, &account).await? {
        let latest = sqlx::query(
            "SELECT seq, timestamp_ms, power_w, soc_bp, import_wh, export_wh, battery_charge_wh, \
             battery_discharge_wh, pv_power_w, pv_wh, battery_power_w FROM readings \
             WHERE meter_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(&meter)
        .fetch_optional(pool)
        .await
        .map_err(db)?;
        let Some(r) = latest else {
            meters.push(json!({ "meter_id": meter, "reading": null }));
            continue;
        };
        let ts: i64 = r.get(1);
        let (charge, discharge): (Option<i64>, Option<i64>) = (r.get(6), r.get(7));
        let mut battery_w = None;
        if let (Some(c1), Some(d1)) = (charge, discharge) {
            let old = sqlx::query(
                "SELECT timestamp_ms, battery_charge_wh, battery_discharge_wh FROM readings \
                 WHERE meter_id = $1 AND timestamp_ms >= $2 AND battery_charge_wh IS NOT NULL \
                 AND battery_discharge_wh IS NOT NULL ORDER BY timestamp_ms LIMIT 1",
            )
            .bind(&meter)
            .bind(ts - BATTERY_WINDOW_MS)
            .fetch_optional(pool)
            .await
            .map_err(db)?;
            if let Some(o) = old {
                let t0: i64 = o.get(0);
                if ts > t0 {
                    let net = (c1 - o.get::<i64, _>(1)) - (d1 - o.get::<i64, _>(2));
                    // Wh over ms to W.
                    battery_w = Some(net.saturating_mul(3_600_000) / (ts - t0));
                }
            }
        }
        let grid: Option<i64> = r.get(2);
        let (pv, battery_reported): (Option<i64>, Option<i64>) = (r.get(8), r.get(10));
        // A meter without battery counters, power or state of charge has no battery.
        let no_battery =
            charge.is_none() && battery_reported.is_none() && r.get::<Option<i64>, _>(3).is_none();
        let battery = battery_reported.or(battery_w).or(no_battery.then_some(0));
        let house_w = match (grid, pv, battery) {
            (Some(g), Some(p), Some(b)) => Some((g + p - b).max(0)),
            _ => None,
        };
        meters.push(json!({
            "meter_id": meter,
            "reading": {
                "seq": r.get::<i64, _>(0), "timestamp_ms": ts,
                "power_w": grid, "soc_bp": r.get::<Option<i64>, _>(3),
                "import_wh": r.get::<Option<i64>, _>(4), "export_wh": r.get::<Option<i64>, _>(5),
                "pv_power_w": pv, "pv_wh": r.get::<Option<i64>, _>(9),
                "battery_power_w": battery_reported,
            },
            "battery_w": battery,
            "house_w": house_w,
        }));
    }
    Ok(Json(json!({ "now_ms": now_ms(), "meters": meters })))
}

/// Readings younger than this count as "now" on the neighbourhood page.
const NOW_WINDOW_MS: u64 = 120_000;

/// The neighbourhood at a glance, anonymised: each meter's latest grid power (no ids, rounded
/// to 100 W, sorted, and only when at least [`crate::pipeline::MIN_METERS_IN_AGGREGATE`] meters
/// report),
/// and per slot of the last day of slots the community's metered import and export, the part of
/// the imports its own exports could cover (`min(Σ export, Σ import)` per slot) and what it
/// traded locally.
async fn neighbourhood(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let pool = state.store.pool();
    let now = now_ms();
    let since = i64_of(now.saturating_sub(NOW_WINDOW_MS));
    let latest = sqlx::query(
        "SELECT r.power_w FROM readings r JOIN (SELECT meter_id, MAX(seq) AS seq FROM readings \
         WHERE timestamp_ms >= $1 GROUP BY meter_id) m ON m.meter_id = r.meter_id AND m.seq = r.seq \
         WHERE r.power_w IS NOT NULL",
    )
    .bind(since)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    // Anonymised as the live stream's aggregate is: nothing per meter unless enough meters
    // report that none stands out, each rounded to 100 W, sorted, without ids.
    let mut powers: Vec<i64> = latest
        .iter()
        .map(|r| {
            // Integer rounding to the nearest 100 W, halves away from zero.
            let w: i64 = r.get(0);
            (w + 50 * w.signum()) / 100 * 100
        })
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
    let traded = sqlx::query(
        "SELECT CAST(COALESCE(SUM(energy_wh), 0) AS BIGINT) FROM trades WHERE slot >= $1 AND slot <= $2",
    )
    .bind(i64_of(from))
    .bind(i64_of(to))
    .fetch_one(pool)
    .await
    .map_err(db)?
    .get::<i64, _>(0);
    let import: u64 = per_slot.values().map(|v| v.0).sum();
    let export: u64 = per_slot.values().map(|v| v.1).sum();
    let covered: u64 = per_slot.values().map(|(i, e)| (*i).min(*e)).sum();
    Ok(Json(json!({
        "now": {
            "meters": powers.len(),
            "producing": powers.iter().filter(|p| **p < 0).count(),
            "consuming": powers.iter().filter(|p| **p > 0).count(),
            "power_w": powers,
            "import_w": powers.iter().filter(|p| **p > 0).sum::<i64>(),
            "export_w": -powers.iter().filter(|p| **p < 0).sum::<i64>(),
        },
        "day": {
            "from_slot": from, "to_slot": to,
            "import_wh": import, "export_wh": export,
            "covered_locally_wh": covered,
            "from_utility_wh": import - covered,
            "traded_wh": u64_of(traded),
            "self_sufficiency_bp": (covered * 10_000).checked_div(import),
            "slots": per_slot.iter().map(|(s, (i, e))| json!({"slot": s, "import_wh": i, "export_wh": e})).collect::<Vec<_>>(),
        },
    })))
}

/// The operator's audit of bad input: rejected readings counted by reason, and the latest 50
/// with their meter and detail.
async fn rejections(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    if account.role != "operator" {
        return Err(ApiError::Forbidden(
            "only the community operator sees rejected readings".into(),
        ));
    }
    let by_reason: Vec<_> = state
        .store
        .rejection_reasons()
        .await?
        .into_iter()
        .map(|(reason, count)| json!({"reason": reason, "count": count}))
        .collect();
    let latest: Vec<_> = sqlx::query(
        "SELECT received_ms, meter_id, reason, detail FROM rejections ORDER BY id DESC LIMIT 50",
    )
    .fetch_all(state.store.pool())
    .await
    .map_err(db)?
    .into_iter()
    .map(|r| {
        json!({
            "received_ms": r.get::<i64, _>(0), "meter_id": r.get::<Option<String>, _>(1),
            "reason": r.get::<String, _>(2), "detail": r.get::<String, _>(3),
        })
    })
    .collect();
    Ok(Json(json!({ "by_reason": by_reason, "latest": latest })))
}

/// Meters whose delivery could not be established in a settled slot, newest first (operator).
async fn disputes(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    if account.role != "operator" {
        return Err(ApiError::Forbidden(
            "only the community operator sees disputed meters".into(),
        ));
    }
    let rows: Vec<DisputeRow> = sqlx::query_as(
        "SELECT slot, meter_id, account_id, reason FROM disputed_meters \
         ORDER BY slot DESC, meter_id LIMIT 200",
    )
    .fetch_all(state.store.pool())
    .await
    .map_err(db)?;
    Ok(Json(json!({ "disputes": rows })))
}

/// A row of `disputed_meters`.
#[derive(sqlx::FromRow, serde::Serialize)]
struct DisputeRow {
    slot: i64,
    meter_id: String,
    account_id: i64,
    reason: String,
}
