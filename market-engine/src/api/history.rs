//! History over a range of slots: the slot timeline with tariffs and clearing prices, and a
//! household's energy and money per slot (with what the utility alone would have cost, also as
//! CSV or as totals). The power picture now is [`super::power`], open orders are
//! [`super::orders`], the operator's audit is [`super::audit`].
//!
//! Design: every figure is computed from what the engine already records — signed counters at
//! slot boundaries (the same rule settlement uses: the last reading at or before the boundary),
//! the trades table, the ledger and the order log — so the app shows nothing the settlement
//! would not agree with.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gridshare_core::market::{UnixSeconds, amount_for};
use serde::{Deserialize, Serialize};

use super::extract::Authenticated;
use super::{ApiError, AppState, now_s};
use crate::market::MarketConfig;
use crate::settings::MechanismName;
use crate::store::history::CounterSet;
use crate::store::{AccountRow, SlotStatus};

/// Most slots one range request may cover: a year of 15-minute slots.
pub const MAX_SLOTS: u64 = 35_136;

/// The routes of this module (merged into [`super::router`]).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/slots", get(slots))
        .route("/api/v1/my/slots", get(my_slots))
}

pub(super) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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
pub(super) fn settings_for(versions: &[(u64, MarketConfig)], slot: u64) -> MarketConfig {
    versions
        .iter()
        .rev()
        .find(|(from, _)| *from <= slot)
        .or(versions.first())
        .map(|(_, c)| c.clone())
        .unwrap_or_default()
}

/// `GET /api/v1/slots`.
#[derive(Serialize)]
struct SlotsBody {
    now_s: i64,
    slots: Vec<SlotSummary>,
}

/// One slot of the timeline: when its phases are, where it stands, its terms and what traded.
#[derive(Serialize)]
struct SlotSummary {
    slot: u64,
    window_opens_s: UnixSeconds,
    gate_closure_s: UnixSeconds,
    delivery_start_s: UnixSeconds,
    delivery_end_s: UnixSeconds,
    settlement_s: UnixSeconds,
    status: SlotStatus,
    clearing_price: Option<u64>,
    retail_per_kwh: u64,
    feed_in_per_kwh: u64,
    grid_fee_per_kwh: u64,
    mechanism: MechanismName,
    traded_wh: u64,
    trades: u64,
}

/// Per slot of a range: the timeline, status, clearing price, tariffs, grid fee and traded
/// energy. Public: the market's terms and results are no one's secret.
async fn slots(
    State(state): State<AppState>,
    q: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SlotsBody>, ApiError> {
    let q = RangeQuery::checked(q)?;
    let versions = state.market.settings();
    let status = state.store.closed_slots_between(q.from, q.to).await?;
    let traded = state.store.traded_per_slot(q.from, q.to).await?;
    let mut out = Vec::new();
    for slot in q.from..=q.to {
        let config = settings_for(&versions, slot);
        let timeline = state
            .market
            .community_for(slot)
            .calendar
            .slot(slot)
            .map_err(|e| ApiError::BadRequest(format!("slot {slot}: {e}")))?;
        let (status, price) = status
            .get(&slot)
            .cloned()
            .unwrap_or((SlotStatus::Open, None));
        let (traded_wh, trades) = traded.get(&slot).copied().unwrap_or((0, 0));
        out.push(SlotSummary {
            slot,
            window_opens_s: timeline.order_window_opens,
            gate_closure_s: timeline.gate_closure,
            delivery_start_s: timeline.delivery_start,
            delivery_end_s: timeline.delivery_end,
            settlement_s: timeline.settlement,
            status,
            clearing_price: price,
            retail_per_kwh: config.retail_per_kwh,
            feed_in_per_kwh: config.feed_in_per_kwh,
            grid_fee_per_kwh: config.grid_fee_per_kwh,
            mechanism: config.mechanism,
            traded_wh,
            trades,
        });
    }
    Ok(Json(SlotsBody {
        now_s: now_s(),
        slots: out,
    }))
}

/// Lifetime import and export counters of one reading.
type Counters = (u64, u64);

/// Import and export of `meter` per slot of `from..=to` (slot boundaries every `length_s`
/// seconds from slot 0 at the Unix epoch): the counters of the last reading at or before each
/// boundary, as settlement takes them. A slot without a reading on both sides has none.
pub(super) async fn meter_energy(
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
    let (before, inside) = state
        .store
        .counters_per_period(
            meter,
            set,
            start_ms,
            end_ms,
            i64_of(length_s.saturating_mul(1000)),
        )
        .await?;
    // Counters at each boundary: walk the readings once.
    let mut out = BTreeMap::new();
    let mut last: Option<Counters> = before.map(|r| r.counters);
    let mut readings = inside
        .iter()
        .map(|r| (r.timestamp_ms, r.counters))
        .peekable();
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
#[derive(Debug, Default, Clone, Serialize)]
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

/// `GET /api/v1/my/slots`.
#[derive(Serialize)]
struct MySlotsBody {
    account: String,
    slot_length_s: u64,
    self_sufficiency_bp: Option<u64>,
    self_consumption_bp: Option<u64>,
    slots: Vec<MySlot>,
}

/// `GET /api/v1/my/slots?format=totals`: the sums over the range; money only over settled
/// slots, so what was paid and what the utility alone would have cost compare like with like.
#[derive(Serialize)]
struct MyTotals {
    account: String,
    from: u64,
    to: u64,
    slot_length_s: u64,
    import_wh: u64,
    export_wh: u64,
    bought_wh: u64,
    sold_wh: u64,
    paid: u64,
    received: u64,
    fees: u64,
    settled_slots: usize,
    settled: i64,
    utility_only: i64,
    pv_wh: u64,
    consumption_wh: u64,
    self_sufficiency_bp: Option<u64>,
    self_consumption_bp: Option<u64>,
}

pub(super) async fn my_meter_ids(
    state: &AppState,
    account: &AccountRow,
) -> Result<Vec<String>, ApiError> {
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
    for t in state.store.account_trades(account.id, q.from, q.to).await? {
        let Some(row) = rows.get_mut(&t.slot) else {
            continue;
        };
        if t.buyer == account.id {
            row.bought_wh += t.energy_wh;
            row.paid += t.buyer_pays;
            row.fees += t.fees;
        }
        if t.seller == account.id {
            row.sold_wh += t.energy_wh;
            row.received += t.seller_receives;
        }
    }
    for (slot, amount) in state.store.account_ledger(account.id, q.from, q.to).await? {
        if let Some(row) = rows.get_mut(&slot) {
            row.settled = Some(amount);
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
        let settled: Vec<&MySlot> = rows.values().filter(|r| r.settled.is_some()).collect();
        let sum = |f: fn(&MySlot) -> u64| rows.values().map(f).sum::<u64>();
        return Ok(Json(MyTotals {
            account: account.name,
            from: q.from,
            to: q.to,
            slot_length_s: length_s,
            import_wh: sum(|r| r.import_wh.unwrap_or(0)),
            export_wh: sum(|r| r.export_wh.unwrap_or(0)),
            bought_wh: sum(|r| r.bought_wh),
            sold_wh: sum(|r| r.sold_wh),
            paid: sum(|r| r.paid),
            received: sum(|r| r.received),
            fees: sum(|r| r.fees),
            settled_slots: settled.len(),
            settled: settled.iter().filter_map(|r| r.settled).sum(),
            utility_only: settled.iter().filter_map(|r| r.utility_only).sum(),
            pv_wh: sum(|r| r.pv_wh.unwrap_or(0)),
            consumption_wh: sum(|r| r.consumption_wh.unwrap_or(0)),
            self_sufficiency_bp: self_sufficiency,
            self_consumption_bp: self_consumption,
        })
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
    Ok(Json(MySlotsBody {
        account: account.name,
        slot_length_s: length_s,
        self_sufficiency_bp: self_sufficiency,
        self_consumption_bp: self_consumption,
        slots: rows.into_values().collect(),
    })
    .into_response())
}
