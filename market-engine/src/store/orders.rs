//! The order log (`order_events`: every accepted submit, cancel and amend, in the order the
//! books saw them), the trades they made, the slots whose gate closed or that settled, and the
//! operator's market settings by the slot they apply from.

use std::collections::HashMap;

use gridshare_core::market::Trade;

use super::{Store, StoreError, Transaction, checked_i64, i64_of, unsigned, unsigned_opt};
use crate::exchange::{OrderEvent, OrderEventKind};

/// A row of `order_events` as stored.
#[derive(sqlx::FromRow)]
pub struct OrderEventRow {
    /// The order the event is about.
    pub order_id: i64,
    kind: String,
    account_id: i64,
    meter_id: String,
    side: String,
    price_per_kwh: i64,
    energy_wh: i64,
    at_s: i64,
}

impl TryFrom<OrderEventRow> for OrderEvent {
    type Error = String;

    /// Checked: a negative id, price or energy, or an unknown kind or side, is an error, not a
    /// value clipped into range.
    fn try_from(r: OrderEventRow) -> Result<Self, String> {
        let unsigned =
            |v: i64, what: &str| u64::try_from(v).map_err(|_| format!("{what} {v} is negative"));
        let order = unsigned(r.order_id, "order id")?;
        let price_per_kwh = unsigned(r.price_per_kwh, "price")?;
        let energy_wh = unsigned(r.energy_wh, "energy")?;
        let (account, at_s) = (r.account_id, r.at_s);
        Ok(match r.kind.parse::<OrderEventKind>()? {
            OrderEventKind::Submit => OrderEvent::Submit {
                order,
                account,
                meter: r.meter_id,
                side: r.side.parse()?,
                price_per_kwh,
                energy_wh,
                at_s,
            },
            OrderEventKind::Cancel => OrderEvent::Cancel {
                order,
                account,
                at_s,
            },
            OrderEventKind::Amend => OrderEvent::Amend {
                order,
                account,
                price_per_kwh,
                energy_wh,
                at_s,
            },
        })
    }
}

/// A row of `market_settings`.
#[derive(sqlx::FromRow)]
struct StoredSettings {
    from_slot: i64,
    settings: String,
}

/// Where a delivery slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotStatus {
    /// Its gate has not closed: orders are taken. Never stored — such a slot has no row in
    /// `slots`.
    Open,
    /// Its gate closed and its trades are final; not settled yet.
    Closed,
    /// Settled against the meters' readings.
    Settled,
}

impl SlotStatus {
    /// The name stored in `slots.status` and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Settled => "settled",
        }
    }

    /// The status a stored `slots.status` names: `closed` or `settled` (a row means the gate
    /// closed, so `open` is as unknown as any other text).
    pub(super) fn stored(text: &str) -> Result<Self, StoreError> {
        match text {
            "closed" => Ok(Self::Closed),
            "settled" => Ok(Self::Settled),
            other => Err(StoreError::Corrupt(format!(
                "slots.status {other:?} is not a slot status (closed or settled)"
            ))),
        }
    }
}

impl std::fmt::Display for SlotStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A slot's row: its status and clearing price.
#[derive(sqlx::FromRow)]
struct SlotRow {
    status: String,
    clearing_price: Option<i64>,
}

/// A submitted order's id and meter.
#[derive(sqlx::FromRow)]
struct OrderMeter {
    order_id: i64,
    meter_id: String,
}

// Design: the statements below spell `slots.status` inline (`'closed'`, `'settled'`), as the
// outbox's statements spell theirs; the column's CHECK admits only those two, and every status
// read back goes through `SlotStatus::stored`.

impl Store {
    /// The operator's market settings as stored (JSON), by the slot each applies from,
    /// ascending.
    pub async fn market_settings(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let rows: Vec<StoredSettings> =
            sqlx::query_as("SELECT from_slot, settings FROM market_settings ORDER BY from_slot")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    unsigned(r.from_slot, "market_settings.from_slot")?,
                    r.settings,
                ))
            })
            .collect()
    }

    /// Stores market settings (JSON) that apply from `from_slot`, replacing any stored for
    /// that slot.
    pub async fn save_market_settings(
        &self,
        from_slot: u64,
        settings: &str,
        created_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO market_settings (from_slot, settings, created_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (from_slot) DO UPDATE SET settings = excluded.settings, created_ms = excluded.created_ms",
        )
        .bind(i64_of(from_slot))
        .bind(settings)
        .bind(created_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The highest order id in the log, if any order was placed.
    pub async fn last_order_id(&self) -> Result<Option<u64>, StoreError> {
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(order_id) FROM order_events")
            .fetch_one(&self.pool)
            .await?;
        unsigned_opt(max, "order_events.order_id")
    }

    /// Slots with trades that are not settled yet (their purchases still hold funds).
    pub async fn slots_with_unsettled_trades(&self) -> Result<Vec<u64>, StoreError> {
        self.slot_list(
            "SELECT DISTINCT slot FROM trades WHERE slot NOT IN \
             (SELECT slot FROM slots WHERE status = 'settled')",
        )
        .await
    }

    /// Slots with logged orders whose gate has not closed (their books are open), ascending.
    pub async fn slots_with_open_books(&self) -> Result<Vec<u64>, StoreError> {
        self.slot_list(
            "SELECT DISTINCT slot FROM order_events WHERE slot NOT IN (SELECT slot FROM slots) ORDER BY slot",
        )
        .await
    }

    /// Slots whose gate closed and that are not settled yet, ascending.
    pub async fn closed_slots(&self) -> Result<Vec<u64>, StoreError> {
        self.slot_list("SELECT slot FROM slots WHERE status = 'closed' ORDER BY slot")
            .await
    }

    /// The slots a query selects (its only column).
    pub(super) async fn slot_list(&self, sql: &'static str) -> Result<Vec<u64>, StoreError> {
        let slots: Vec<i64> = sqlx::query_scalar(sql).fetch_all(&self.pool).await?;
        slots.into_iter().map(|s| unsigned(s, "slot")).collect()
    }

    /// Whether the slot's gate has closed (it has a row in `slots`).
    pub async fn slot_closed(&self, slot: u64) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 FROM slots WHERE slot = $1")
            .bind(i64_of(slot))
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// The latest slot whose gate closed.
    pub async fn last_closed_slot(&self) -> Result<Option<u64>, StoreError> {
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(slot) FROM slots")
            .fetch_one(&self.pool)
            .await?;
        unsigned_opt(max, "slots.slot")
    }

    /// Closes the gate of a slot nobody traded in (no trades, no clearing price); a slot
    /// already closed stays as it is.
    pub async fn close_quiet_slot(&self, slot: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO slots (slot, status, clearing_price) VALUES ($1, 'closed', NULL) \
             ON CONFLICT (slot) DO NOTHING",
        )
        .bind(i64_of(slot))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Status ([`SlotStatus::Closed`] or [`SlotStatus::Settled`]) and clearing price of a slot
    /// whose gate closed; `None` for a slot still open.
    pub async fn slot_status(
        &self,
        slot: u64,
    ) -> Result<Option<(SlotStatus, Option<u64>)>, StoreError> {
        let row: Option<SlotRow> =
            sqlx::query_as("SELECT status, clearing_price FROM slots WHERE slot = $1")
                .bind(i64_of(slot))
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok((
                SlotStatus::stored(&r.status)?,
                unsigned_opt(r.clearing_price, "slots.clearing_price")?,
            ))
        })
        .transpose()
    }

    /// A slot's trades as stored, in the order they were made.
    pub async fn trades(&self, slot: u64) -> Result<Vec<Trade>, StoreError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT trade_json FROM trades WHERE slot = $1 ORDER BY id")
                .bind(checked_i64(slot, "slot")?)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|json| {
                serde_json::from_str::<Trade>(json).map_err(|e| {
                    StoreError::Corrupt(format!("slot {slot}: stored trade unreadable: {e}"))
                })
            })
            .collect()
    }

    /// A slot's order events in the order they were accepted.
    pub async fn order_events(&self, slot: u64) -> Result<Vec<OrderEventRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT order_id, kind, account_id, meter_id, side, price_per_kwh, energy_wh, at_s \
             FROM order_events WHERE slot = $1 ORDER BY seq",
        )
        .bind(i64_of(slot))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether the meter already has an order in the slot's log (rules place one per slot).
    pub async fn has_order(&self, meter_id: &str, slot: u64) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "SELECT 1 FROM order_events WHERE slot = $1 AND meter_id = $2 AND kind = 'submit' LIMIT 1",
        )
        .bind(i64_of(slot))
        .bind(meter_id)
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }
}

impl Transaction {
    /// Appends an accepted order event to the log.
    pub async fn log_order_event(&mut self, slot: u64, e: &OrderEvent) -> Result<(), StoreError> {
        let (meter, side, price, energy) = match e {
            OrderEvent::Submit {
                meter,
                side,
                price_per_kwh,
                energy_wh,
                ..
            } => (meter.as_str(), side.as_str(), *price_per_kwh, *energy_wh),
            OrderEvent::Cancel { .. } => ("", "", 0, 0),
            OrderEvent::Amend {
                price_per_kwh,
                energy_wh,
                ..
            } => ("", "", *price_per_kwh, *energy_wh),
        };
        sqlx::query(
            "INSERT INTO order_events (slot, order_id, kind, account_id, meter_id, side, price_per_kwh, energy_wh, at_s) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(checked_i64(slot, "slot")?)
        .bind(checked_i64(e.order(), "order")?)
        .bind(e.kind().as_str())
        .bind(e.account())
        .bind(meter)
        .bind(side)
        .bind(checked_i64(price, "price")?)
        .bind(checked_i64(energy, "energy")?)
        .bind(e.at_s())
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    /// Stores a trade of `slot`.
    pub async fn store_trade(&mut self, slot: u64, t: &Trade) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO trades (slot, bid_order, ask_order, buyer, seller, energy_wh, buyer_pays, \
             seller_receives, fees, buyer_rate, seller_rate, trade_json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(checked_i64(slot, "slot")?)
        .bind(checked_i64(t.bid.0, "order")?)
        .bind(checked_i64(t.ask.0, "order")?)
        .bind(i64::from(t.buyer.0))
        .bind(i64::from(t.seller.0))
        .bind(checked_i64(t.energy_wh, "energy_wh")?)
        .bind(checked_i64(t.amounts.buyer_pays, "buyer_pays")?)
        .bind(checked_i64(t.amounts.seller_receives, "seller_receives")?)
        .bind(checked_i64(t.amounts.fees, "fees")?)
        .bind(checked_i64(
            t.amounts.buyer_rate_per_kwh,
            "buyer_rate_per_kwh",
        )?)
        .bind(checked_i64(
            t.amounts.seller_rate_per_kwh,
            "seller_rate_per_kwh",
        )?)
        .bind(serde_json::to_string(t).unwrap_or_default())
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    /// Records a slot's gate closure with the call auction's clearing price.
    pub async fn close_slot(
        &mut self,
        slot: u64,
        clearing_price: Option<u64>,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO slots (slot, status, clearing_price) VALUES ($1, 'closed', $2)")
            .bind(checked_i64(slot, "slot")?)
            .bind(
                clearing_price
                    .map(|p| checked_i64(p, "clearing price"))
                    .transpose()?,
            )
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    /// Marks a `closed` slot settled; whether it was (a slot already settled, by a second
    /// settler, is not).
    pub async fn mark_slot_settled(&mut self, slot: u64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE slots SET status = 'settled' WHERE slot = $1 AND status = 'closed'",
        )
        .bind(i64_of(slot))
        .execute(&mut *self.0)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The meter of each order submitted in `slot`, by order id.
    pub async fn submitted_order_meters(
        &mut self,
        slot: u64,
    ) -> Result<HashMap<u64, String>, StoreError> {
        let rows: Vec<OrderMeter> = sqlx::query_as(
            "SELECT order_id, meter_id FROM order_events WHERE slot = $1 AND kind = 'submit'",
        )
        .bind(i64_of(slot))
        .fetch_all(&mut *self.0)
        .await?;
        rows.into_iter()
            .map(|r| Ok((unsigned(r.order_id, "order_events.order_id")?, r.meter_id)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status the engine never writes reads as corruption naming the column, not as a slot
    /// in some state (the column's CHECK keeps one out in the first place).
    #[test]
    fn an_unknown_slot_status_is_corrupt() {
        assert_eq!(SlotStatus::stored("closed").unwrap(), SlotStatus::Closed);
        assert_eq!(SlotStatus::stored("settled").unwrap(), SlotStatus::Settled);
        for text in ["open", "Settled", ""] {
            match SlotStatus::stored(text) {
                Err(StoreError::Corrupt(m)) => assert!(m.contains("slots.status"), "{m}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert_eq!(
            serde_json::to_string(&[SlotStatus::Open, SlotStatus::Closed, SlotStatus::Settled])
                .unwrap(),
            r#"["open","closed","settled"]"#
        );
    }
}
