//! The order log on disk: group commit of order events, trades and gate closures.

use super::*;

/// What the log writer commits for one request, in the order requests took the book lock.
#[derive(Debug)]
pub(super) enum LogWrite {
    /// An order event and the trades it made.
    Event {
        slot: u64,
        event: OrderEvent,
        trades: Vec<Trade>,
    },
    /// A gate closure: the call auction's trades and the slot's row.
    Closure {
        slot: u64,
        trades: Vec<Trade>,
        clearing_price: Option<u64>,
    },
}

pub(super) struct LogJob {
    pub(super) write: LogWrite,
    pub(super) done: oneshot::Sender<Result<(), LogFailure>>,
}

/// Why a queued write was not committed.
#[derive(Debug, Clone)]
pub(super) struct LogFailure {
    /// Storage failed (full disk, read-only or lost database), not the write itself.
    storage: bool,
    message: String,
}

impl LogFailure {
    fn of(e: &sqlx::Error) -> Self {
        Self {
            storage: crate::store::storage_failure(e),
            message: e.to_string(),
        }
    }

    pub(super) fn stopped() -> Self {
        Self {
            storage: false,
            message: "the order log writer stopped".into(),
        }
    }

    /// The error the request gets, `what` failed: storage failing is
    /// [`StoreError::Unavailable`] (the API answers 503, try again), anything else refuses
    /// the request.
    pub(super) fn refusal(self, what: &str) -> MarketError {
        let message = format!("{what}: {}", self.message);
        if self.storage {
            MarketError::Store(StoreError::Unavailable(message))
        } else {
            MarketError::OutOfRange(message)
        }
    }
}

/// Largest number of requests committed in one transaction.
pub(super) const GROUP_COMMIT: usize = 256;

/// Design: group commit. Requests are applied to the in-memory book under the lock and queued
/// here in that same order; one transaction commits every queued request, then each caller is
/// answered. One fsync serves many orders, and the log order is the order the book saw. A failed
/// transaction fails every request still queued, so nothing after a failure is committed
/// before the callers have rebuilt their books from the log.
pub(super) async fn log_writer(store: Store, mut rx: mpsc::Receiver<LogJob>) {
    let mut jobs = Vec::with_capacity(GROUP_COMMIT);
    while rx.recv_many(&mut jobs, GROUP_COMMIT).await > 0 {
        let outcome = commit(&store, &jobs).await.map_err(|e| LogFailure::of(&e));
        for job in jobs.drain(..) {
            let _ = job.done.send(outcome.clone());
        }
        if let Err(failure) = outcome {
            while let Ok(job) = rx.try_recv() {
                let _ = job.done.send(Err(LogFailure {
                    storage: failure.storage,
                    message: "an earlier order-log write failed; retry".into(),
                }));
            }
        }
    }
}

async fn commit(store: &Store, jobs: &[LogJob]) -> Result<(), sqlx::Error> {
    let mut tx = store.begin().await?;
    for job in jobs {
        match &job.write {
            LogWrite::Event {
                slot,
                event,
                trades,
            } => {
                log_event(&mut tx, *slot, event).await?;
                for t in trades {
                    store_trade(&mut tx, *slot, t).await?;
                }
            }
            LogWrite::Closure {
                slot,
                trades,
                clearing_price,
            } => {
                for t in trades {
                    store_trade(&mut tx, *slot, t).await?;
                }
                sqlx::query(
                    "INSERT INTO slots (slot, status, clearing_price) VALUES ($1, 'closed', $2)",
                )
                .bind(db(*slot, "slot")?)
                .bind(
                    clearing_price
                        .map(|p| db(p, "clearing price"))
                        .transpose()?,
                )
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await
}

/// The slot indices a query selects (its first column).
pub(super) async fn slot_list(pool: &AnyPool, sql: &'static str) -> Result<Vec<u64>, sqlx::Error> {
    Ok(sqlx::query(sql)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| u64_of(r.get(0)))
        .collect())
}

async fn log_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    slot: u64,
    e: &OrderEvent,
) -> Result<(), sqlx::Error> {
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
    .bind(db(slot, "slot")?)
    .bind(db(e.order(), "order")?)
    .bind(e.kind().as_str())
    .bind(e.account())
    .bind(meter)
    .bind(side)
    .bind(db(price, "price")?)
    .bind(db(energy, "energy")?)
    .bind(e.at_s())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A row of `order_events` as stored.
#[derive(sqlx::FromRow)]
pub(super) struct OrderEventRow {
    pub(super) order_id: i64,
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

pub(super) async fn store_trade(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    slot: u64,
    t: &Trade,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO trades (slot, bid_order, ask_order, buyer, seller, energy_wh, buyer_pays, \
         seller_receives, fees, buyer_rate, seller_rate, trade_json) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(db(slot, "slot")?)
    .bind(db(t.bid.0, "order")?)
    .bind(db(t.ask.0, "order")?)
    .bind(i64::from(t.buyer.0))
    .bind(i64::from(t.seller.0))
    .bind(db(t.energy_wh, "energy_wh")?)
    .bind(db(t.amounts.buyer_pays, "buyer_pays")?)
    .bind(db(t.amounts.seller_receives, "seller_receives")?)
    .bind(db(t.amounts.fees, "fees")?)
    .bind(db(t.amounts.buyer_rate_per_kwh, "buyer_rate_per_kwh")?)
    .bind(db(t.amounts.seller_rate_per_kwh, "seller_rate_per_kwh")?)
    .bind(serde_json::to_string(t).unwrap_or_default())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn load_trades(pool: &AnyPool, slot: u64) -> Result<Vec<Trade>, MarketError> {
    let rows = sqlx::query("SELECT trade_json FROM trades WHERE slot = $1 ORDER BY id")
        .bind(db(slot, "slot")?)
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            serde_json::from_str::<Trade>(&r.get::<String, _>(0)).map_err(|e| {
                StoreError::Corrupt(format!("slot {slot}: stored trade unreadable: {e}")).into()
            })
        })
        .collect()
}
