//! The read-only queries behind the history and report API ([`crate::api`]'s history
//! module): the slot timeline's results, a household's energy, trades, ledger and open orders
//! per slot, its meters' latest readings, the neighbourhood's aggregate and the operator's
//! audit of rejected readings and disputed meters. Nothing here writes.

use std::collections::HashMap;

use super::{SlotStatus, Store, StoreError, i64_of, unsigned, unsigned_opt};
use crate::exchange::{OrderEventKind, OrderSide};

/// A pair of lifetime counters of a meter, by the column names of the readings table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterSet {
    /// Grid import and export.
    Grid,
    /// Solar production (one counter: the pair repeats it).
    Solar,
    /// Battery charge and discharge.
    Battery,
}

impl CounterSet {
    fn columns(self) -> [&'static str; 2] {
        match self {
            Self::Grid => ["import_wh", "export_wh"],
            Self::Solar => ["pv_wh", "pv_wh"],
            Self::Battery => ["battery_charge_wh", "battery_discharge_wh"],
        }
    }
}

/// A reading's time and one pair of its lifetime counters, Wh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSample {
    /// Device time, ms since the epoch.
    pub timestamp_ms: i64,
    /// The pair's counters, Wh.
    pub counters: (u64, u64),
}

#[derive(sqlx::FromRow)]
struct StoredCounterSample {
    timestamp_ms: i64,
    first: i64,
    second: i64,
}

impl TryFrom<StoredCounterSample> for CounterSample {
    type Error = StoreError;

    fn try_from(r: StoredCounterSample) -> Result<Self, StoreError> {
        Ok(Self {
            timestamp_ms: r.timestamp_ms,
            counters: (
                unsigned(r.first, "readings counter")?,
                unsigned(r.second, "readings counter")?,
            ),
        })
    }
}

/// A slot's status and clearing price.
#[derive(sqlx::FromRow)]
struct StoredSlot {
    slot: i64,
    status: String,
    clearing_price: Option<i64>,
}

/// What a slot traded.
#[derive(sqlx::FromRow)]
struct SlotTraded {
    slot: i64,
    energy_wh: i64,
    trades: i64,
}

/// A trade an account took part in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountTrade {
    /// The slot.
    pub slot: u64,
    /// The buying account.
    pub buyer: i64,
    /// The selling account.
    pub seller: i64,
    /// Energy, Wh.
    pub energy_wh: u64,
    /// What the buyer pays, token units.
    pub buyer_pays: u64,
    /// What the seller receives, token units.
    pub seller_receives: u64,
    /// The fees in what the buyer pays, token units.
    pub fees: u64,
}

#[derive(sqlx::FromRow)]
struct StoredAccountTrade {
    slot: i64,
    buyer: i64,
    seller: i64,
    energy_wh: i64,
    buyer_pays: i64,
    seller_receives: i64,
    fees: i64,
}

/// A slot's net amount for one account.
#[derive(sqlx::FromRow)]
struct SlotAmount {
    slot: i64,
    amount: i64,
}

/// An order event of an account, as its open orders are rebuilt from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountOrderEvent {
    /// The order.
    pub order_id: u64,
    /// Submit, cancel or amend.
    pub kind: OrderEventKind,
    /// Its slot.
    pub slot: u64,
    /// The meter (submits only).
    pub meter_id: String,
    /// Buy or sell (submits only).
    pub side: Option<OrderSide>,
    /// Limit price per kWh (submits and amends).
    pub price_per_kwh: u64,
    /// Energy, Wh (submits and amends).
    pub energy_wh: u64,
    /// When it was placed, unix s.
    pub at_s: i64,
}

#[derive(sqlx::FromRow)]
struct StoredAccountOrderEvent {
    order_id: i64,
    kind: String,
    slot: i64,
    meter_id: String,
    side: String,
    price_per_kwh: i64,
    energy_wh: i64,
    at_s: i64,
}

/// A meter's latest reading, as the live power picture shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LatestReading {
    /// Sequence number.
    pub seq: i64,
    /// Device time, ms since the epoch.
    pub timestamp_ms: i64,
    /// Grid power, W (positive = import).
    pub power_w: Option<i64>,
    /// Battery state of charge, basis points.
    pub soc_bp: Option<i64>,
    /// Lifetime grid import, Wh.
    pub import_wh: Option<i64>,
    /// Lifetime grid export, Wh.
    pub export_wh: Option<i64>,
    /// Lifetime battery charge, Wh.
    pub battery_charge_wh: Option<i64>,
    /// Lifetime battery discharge, Wh.
    pub battery_discharge_wh: Option<i64>,
    /// Solar power, W.
    pub pv_power_w: Option<i64>,
    /// Lifetime solar production, Wh.
    pub pv_wh: Option<i64>,
    /// Battery power as reported, W (positive = charging).
    pub battery_power_w: Option<i64>,
}

/// A reading's time and battery counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct BatterySample {
    /// Device time, ms since the epoch.
    pub timestamp_ms: i64,
    /// Lifetime battery charge, Wh.
    pub battery_charge_wh: i64,
    /// Lifetime battery discharge, Wh.
    pub battery_discharge_wh: i64,
}

/// A rejected message, as the operator's audit lists it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct RejectionRow {
    /// When it was received, ms since the epoch.
    pub received_ms: i64,
    /// The meter its topic named, if any.
    pub meter_id: Option<String>,
    /// Why it was rejected.
    pub reason: String,
    /// What exactly was wrong.
    pub detail: String,
}

/// A meter whose delivery in a settled slot could not be established.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct DisputeRow {
    /// The slot.
    pub slot: i64,
    /// The meter.
    pub meter_id: String,
    /// Its owner.
    pub account_id: i64,
    /// Why its delivery could not be established.
    pub reason: String,
}

impl Store {
    /// Status and clearing price of the slots in `from..=to` whose gate closed, by slot.
    pub async fn closed_slots_between(
        &self,
        from: u64,
        to: u64,
    ) -> Result<HashMap<u64, (SlotStatus, Option<u64>)>, StoreError> {
        let rows: Vec<StoredSlot> = sqlx::query_as(
            "SELECT slot, status, clearing_price FROM slots WHERE slot >= $1 AND slot <= $2",
        )
        .bind(i64_of(from))
        .bind(i64_of(to))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    unsigned(r.slot, "slots.slot")?,
                    (
                        SlotStatus::stored(&r.status)?,
                        unsigned_opt(r.clearing_price, "slots.clearing_price")?,
                    ),
                ))
            })
            .collect()
    }

    /// Energy traded (Wh) and number of trades per slot of `from..=to` that traded.
    pub async fn traded_per_slot(
        &self,
        from: u64,
        to: u64,
    ) -> Result<HashMap<u64, (u64, u64)>, StoreError> {
        let rows: Vec<SlotTraded> = sqlx::query_as(
            "SELECT slot, CAST(SUM(energy_wh) AS BIGINT) AS energy_wh, \
             CAST(COUNT(*) AS BIGINT) AS trades FROM trades \
             WHERE slot >= $1 AND slot <= $2 GROUP BY slot",
        )
        .bind(i64_of(from))
        .bind(i64_of(to))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    unsigned(r.slot, "trades.slot")?,
                    (
                        unsigned(r.energy_wh, "SUM(trades.energy_wh)")?,
                        unsigned(r.trades, "COUNT(trades)")?,
                    ),
                ))
            })
            .collect()
    }

    /// Energy traded (Wh) in the slots `from..=to` together.
    pub async fn traded_between(&self, from: u64, to: u64) -> Result<u64, StoreError> {
        let traded: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(energy_wh), 0) AS BIGINT) FROM trades WHERE slot >= $1 AND slot <= $2",
        )
        .bind(i64_of(from))
        .bind(i64_of(to))
        .fetch_one(&self.pool)
        .await?;
        unsigned(traded, "SUM(trades.energy_wh)")
    }

    /// A meter's readings with both counters of `set` around `(start_ms, end_ms]`: the last
    /// one at or before `start_ms`, and the last one of each `slot_ms` period inside (a reading
    /// exactly at a boundary closes the period before it), in time order — one row per slot
    /// leaves the database instead of every reading.
    pub async fn counters_per_period(
        &self,
        meter: &str,
        set: CounterSet,
        start_ms: i64,
        end_ms: i64,
        slot_ms: i64,
    ) -> Result<(Option<CounterSample>, Vec<CounterSample>), StoreError> {
        let [a, b] = set.columns();
        // The column names come from `CounterSet`, never from a request.
        let before: Option<StoredCounterSample> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT timestamp_ms, {a} AS first, {b} AS second FROM readings WHERE meter_id = $1 \
             AND timestamp_ms <= $2 AND {a} IS NOT NULL AND {b} IS NOT NULL \
             ORDER BY timestamp_ms DESC LIMIT 1"
        )))
        .bind(meter)
        .bind(start_ms)
        .fetch_optional(&self.pool)
        .await?;
        let inside: Vec<StoredCounterSample> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT r.timestamp_ms, r.{a} AS first, r.{b} AS second FROM readings r JOIN ( \
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
        .bind(slot_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok((
            before.map(CounterSample::try_from).transpose()?,
            inside
                .into_iter()
                .map(CounterSample::try_from)
                .collect::<Result<_, _>>()?,
        ))
    }

    /// The trades of slots `from..=to` in which `account` bought or sold.
    pub async fn account_trades(
        &self,
        account: i64,
        from: u64,
        to: u64,
    ) -> Result<Vec<AccountTrade>, StoreError> {
        let rows: Vec<StoredAccountTrade> = sqlx::query_as(
            "SELECT slot, buyer, seller, energy_wh, buyer_pays, seller_receives, fees FROM trades \
             WHERE slot >= $1 AND slot <= $2 AND (buyer = $3 OR seller = $3)",
        )
        .bind(i64_of(from))
        .bind(i64_of(to))
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|t| {
                Ok(AccountTrade {
                    slot: unsigned(t.slot, "trades.slot")?,
                    buyer: t.buyer,
                    seller: t.seller,
                    energy_wh: unsigned(t.energy_wh, "trades.energy_wh")?,
                    buyer_pays: unsigned(t.buyer_pays, "trades.buyer_pays")?,
                    seller_receives: unsigned(t.seller_receives, "trades.seller_receives")?,
                    fees: unsigned(t.fees, "trades.fees")?,
                })
            })
            .collect()
    }

    /// The account's settled net amount per slot of `from..=to`.
    pub async fn account_ledger(
        &self,
        account: i64,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, i64)>, StoreError> {
        let rows: Vec<SlotAmount> = sqlx::query_as(
            "SELECT l.slot, CAST(SUM(l.amount) AS BIGINT) AS amount FROM ledger l \
             WHERE l.account_id = $1 AND l.slot >= $2 AND l.slot <= $3 GROUP BY l.slot",
        )
        .bind(account)
        .bind(i64_of(from))
        .bind(i64_of(to))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| Ok((unsigned(r.slot, "ledger.slot")?, r.amount)))
            .collect()
    }

    /// The account's order events in slots whose gate has not closed, in log order.
    pub async fn account_open_slot_events(
        &self,
        account: i64,
    ) -> Result<Vec<AccountOrderEvent>, StoreError> {
        let rows: Vec<StoredAccountOrderEvent> = sqlx::query_as(
            "SELECT e.order_id, e.kind, e.slot, e.meter_id, e.side, e.price_per_kwh, e.energy_wh, e.at_s \
             FROM order_events e WHERE e.account_id = $1 \
             AND e.slot NOT IN (SELECT slot FROM slots) ORDER BY e.seq",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|e| {
                let corrupt = |m: String| StoreError::Corrupt(format!("order_events.{m}"));
                let kind: OrderEventKind = e.kind.parse().map_err(corrupt)?;
                let side = match kind {
                    OrderEventKind::Submit => Some(e.side.parse().map_err(corrupt)?),
                    OrderEventKind::Cancel | OrderEventKind::Amend => None,
                };
                Ok(AccountOrderEvent {
                    order_id: unsigned(e.order_id, "order_events.order_id")?,
                    slot: unsigned(e.slot, "order_events.slot")?,
                    price_per_kwh: unsigned(e.price_per_kwh, "order_events.price_per_kwh")?,
                    energy_wh: unsigned(e.energy_wh, "order_events.energy_wh")?,
                    kind,
                    meter_id: e.meter_id,
                    side,
                    at_s: e.at_s,
                })
            })
            .collect()
    }

    /// Energy (Wh) the account's order `order` has traded so far.
    pub async fn order_traded_wh(&self, account: i64, order: u64) -> Result<u64, StoreError> {
        let traded: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(energy_wh), 0) AS BIGINT) FROM trades \
             WHERE (bid_order = $1 AND buyer = $2) OR (ask_order = $1 AND seller = $2)",
        )
        .bind(i64_of(order))
        .bind(account)
        .fetch_one(&self.pool)
        .await?;
        unsigned(traded, "SUM(trades.energy_wh)")
    }

    /// A meter's latest reading.
    pub async fn latest_reading(&self, meter: &str) -> Result<Option<LatestReading>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT seq, timestamp_ms, power_w, soc_bp, import_wh, export_wh, battery_charge_wh, \
             battery_discharge_wh, pv_power_w, pv_wh, battery_power_w FROM readings \
             WHERE meter_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(meter)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A meter's oldest reading with battery counters taken at or after `since_ms`.
    pub async fn battery_counters_since(
        &self,
        meter: &str,
        since_ms: i64,
    ) -> Result<Option<BatterySample>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT timestamp_ms, battery_charge_wh, battery_discharge_wh FROM readings \
             WHERE meter_id = $1 AND timestamp_ms >= $2 AND battery_charge_wh IS NOT NULL \
             AND battery_discharge_wh IS NOT NULL ORDER BY timestamp_ms LIMIT 1",
        )
        .bind(meter)
        .bind(since_ms)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The grid power (W) of each meter's latest reading among those taken at or after
    /// `since_ms`, for meters whose latest reading carries one; no meter ids.
    pub async fn latest_grid_powers(&self, since_ms: i64) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT r.power_w FROM readings r JOIN (SELECT meter_id, MAX(seq) AS seq FROM readings \
             WHERE timestamp_ms >= $1 GROUP BY meter_id) m ON m.meter_id = r.meter_id AND m.seq = r.seq \
             WHERE r.power_w IS NOT NULL",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The latest `limit` rejected messages, newest first.
    pub async fn latest_rejections(&self, limit: u32) -> Result<Vec<RejectionRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT received_ms, meter_id, reason, detail FROM rejections ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Meters whose delivery could not be established in a settled slot, newest slot first;
    /// at most `limit`.
    pub async fn disputes(&self, limit: u32) -> Result<Vec<DisputeRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT slot, meter_id, account_id, reason FROM disputed_meters \
             ORDER BY slot DESC, meter_id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }
}
