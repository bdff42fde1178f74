//! Settlement of delivered slots: delivery from the meters' signed counters, the ledger, and
//! the settled slots the chain outbox sends.

use std::collections::{BTreeSet, HashMap};

use gridshare_core::market::{AreaId, Mechanism, member_flows, settle_slot_disputed, share_slot};

use super::*;

/// What the meters say about one slot.
#[derive(Default)]
struct Measured {
    deliveries: Vec<MeterDelivery>,
    /// SHA-256 (hex) of the readings used, sorted, once each.
    digests: Vec<String>,
    disputes: Vec<Dispute>,
    /// Each settled meter's new position and what it was settled for.
    moved: Vec<Moved>,
}

/// A signed reading's counters, as settlement uses them.
struct Position {
    import_wh: u64,
    export_wh: u64,
    timestamp_ms: i64,
    digest: String,
}

/// One meter settled in a slot: from which reading to which, and its account.
struct Moved {
    meter_id: String,
    account: AccountId,
    from: Position,
    to: Position,
}

/// A meter whose delivery in a slot cannot be established.
struct Dispute {
    meter_id: String,
    account: AccountId,
    reason: String,
}

impl Market {
    /// Settles every closed slot whose settlement time has passed: delivery from the meters'
    /// signed counters, imbalances against the utility, one net amount per account in the
    /// ledger. Returns the slots settled.
    pub async fn settle_due(&self, now_s: i64) -> Result<Vec<u64>, MarketError> {
        let pool = self.store.pool();
        let closed = slot_list(
            pool,
            "SELECT slot FROM slots WHERE status = 'closed' ORDER BY slot",
        )
        .await?;
        let mut settled = Vec::new();
        for slot in closed {
            // Design: a slot that cannot be settled is counted and logged and the later slots
            // settle on time; it is tried again on the next tick.
            match self.settle_slot_due(slot, now_s).await {
                Ok(true) => settled.push(slot),
                Ok(false) => {}
                Err(e) => {
                    self.metrics
                        .settlement_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(target: "market", slot, "slot not settled: {e}");
                }
            }
        }
        Ok(settled)
    }

    /// Settles `slot` if its settlement time has passed and it is still `closed`; whether it
    /// was settled now.
    async fn settle_slot_due(&self, slot: u64, now_s: i64) -> Result<bool, MarketError> {
        let pool = self.store.pool();
        let community = self.community_for(slot);
        let terms = community
            .terms(slot)
            .map_err(|e| MarketError::Settlement(e.to_string()))?;
        if terms.slot.settlement > now_s {
            return Ok(false);
        }
        let wait_s = i64::from(self.late_readings_wait_s.load(Ordering::Relaxed));
        if now_s < terms.slot.settlement.saturating_add(wait_s) {
            let late = self
                .late_meters(pool, terms.slot.delivery_start, terms.slot.delivery_end)
                .await?;
            if late > 0 {
                tracing::debug!(target: "market", slot, meters = late, "settlement waits for late readings");
                return Ok(false);
            }
        }
        let mut trades = load_trades(pool, slot).await?;
        let traders: BTreeSet<AccountId> =
            trades.iter().flat_map(|t| [t.buyer, t.seller]).collect();
        let measured = self
            .deliveries(
                pool,
                terms.slot.delivery_start,
                terms.slot.delivery_end,
                &traders,
            )
            .await?;
        let disputed: Vec<AccountId> = measured
            .disputes
            .iter()
            .map(|d| d.account)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Design: a sharing community has no orders; its slot's trades are the allocation of
        // what its members fed in, made here from the same metered deliveries that settle it,
        // and stored with the ledger, so a household's history and the batch's Merkle root
        // show them like auction trades. A disputed account neither shares nor is shared with.
        let shared = match &community.mechanism {
            Mechanism::Sharing(rule) => {
                let undisputed: Vec<MeterDelivery> = measured
                    .deliveries
                    .iter()
                    .filter(|d| !disputed.contains(&d.account))
                    .copied()
                    .collect();
                let members = member_flows(&undisputed, AreaId(0))
                    .map_err(|e| MarketError::Settlement(format!("slot {slot}: {e}")))?;
                let shared = share_slot(&rule.key, rule.price_per_kwh, &members, &terms)
                    .map_err(|e| MarketError::Settlement(format!("slot {slot}: sharing: {e}")))?;
                trades.extend(shared.trades.iter().cloned());
                shared.trades
            }
            _ => Vec::new(),
        };
        let settlement = settle_slot_disputed(&trades, &measured.deliveries, &disputed, &terms)
            .map_err(|e| MarketError::Settlement(format!("slot {slot}: {e}")))?;
        // The books lock before the transaction (the order every writer takes them in):
        // no bid sees the slot both held and settled.
        let mut amounts = Vec::with_capacity(settlement.balances.len());
        for b in &settlement.balances {
            let amount = i64::try_from(b.amount).map_err(|_| {
                MarketError::OutOfRange(format!(
                    "slot {slot}: a net amount of {} does not fit in 64 bits",
                    b.amount
                ))
            })?;
            let account = match b.account {
                UTILITY => -1,
                GRID_OPERATOR => -2,
                AccountId(a) => i64::from(a),
            };
            amounts.push((account, amount));
        }
        // Every household's new balance must stay in range before anything is written.
        let mut books = self.books.lock().await;
        for &(account, amount) in &amounts {
            if account >= 0 {
                books.funds.booked(account, amount)?;
            }
        }
        let mut tx = self.store.begin().await?;
        let slot_id = Bind::Int(i64_of(slot));
        insert_rows(
            &mut tx,
            "INSERT INTO ledger (slot, account_id, amount)",
            "",
            amounts
                .iter()
                .map(|&(account, amount)| [slot_id.clone(), Bind::Int(account), Bind::Int(amount)])
                .collect(),
        )
        .await?;
        for t in &shared {
            store_trade(&mut tx, slot, t).await?;
        }
        insert_rows(
            &mut tx,
            "INSERT INTO slot_readings (slot, digest)",
            "",
            measured
                .digests
                .iter()
                .map(|d| [slot_id.clone(), Bind::Text(d.clone())])
                .collect(),
        )
        .await?;
        if let Some(custody) = self
            .custody()
            .filter(|_| amounts.iter().any(|&(_, a)| a != 0))
        {
            // The batch goes into the outbox in the same transaction as the ledger: a slot is
            // never settled without its batch, nor queued twice.
            let settled = SettledSlot {
                slot,
                balances: amounts.clone(),
                trades,
                reading_digests: measured.digests.clone(),
            };
            let excluded = measured
                .disputes
                .iter()
                .map(|d| d.meter_id.clone())
                .collect();
            queue_batch(
                &mut tx,
                &settled,
                terms.slot.delivery_start,
                &excluded,
                custody,
            )
            .await?;
        }
        record_positions(&mut tx, slot, &measured.moved).await?;
        for d in &measured.disputes {
            sqlx::query(
                "INSERT INTO disputed_meters (slot, meter_id, account_id, reason) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(i64_of(slot))
            .bind(d.meter_id.as_str())
            .bind(i64::from(d.account.0))
            .bind(d.reason.as_str())
            .execute(&mut *tx)
            .await?;
        }
        // Only a slot still 'closed' is settled: a second settler changes nothing.
        let done = sqlx::query(
            "UPDATE slots SET status = 'settled' WHERE slot = $1 AND status = 'closed'",
        )
        .bind(i64_of(slot))
        .execute(&mut *tx)
        .await?;
        let done = done.rows_affected() == 1;
        if done {
            tx.commit().await?;
            books.funds.release_bought(slot);
            for &(account, amount) in amounts.iter().filter(|(a, _)| *a >= 0) {
                // Checked before the transaction, under the same lock: cannot fail here.
                if let Err(e) = books.funds.book(account, amount) {
                    tracing::error!(target: "market", slot, account, "{e}");
                }
            }
            self.metrics.slots_settled.fetch_add(1, Ordering::Relaxed);
            self.announce_trades(slot, &shared, None);
            for d in &measured.disputes {
                self.metrics.meters_disputed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "market",
                    slot,
                    meter = %d.meter_id,
                    reason = %d.reason,
                    "delivery not established: settled at traded quantities, no imbalance; the operator should check this meter"
                );
            }
            self.metrics.settlement_lag_s.store(
                u64::try_from(now_s - terms.slot.settlement).unwrap_or(0),
                Ordering::Relaxed,
            );
            tracing::info!(target: "market", slot, accounts = settlement.balances.len(), "slot settled");
        }
        Ok(done)
    }

    /// Approved meters that sent a reading during `[start_s, end_s)` but none yet at or after
    /// `end_s`: their readings across the slot's end are late, not missing.
    async fn late_meters(
        &self,
        pool: &AnyPool,
        start_s: i64,
        end_s: i64,
    ) -> Result<i64, MarketError> {
        Ok(sqlx::query(
            // Per meter through the (meter_id, timestamp_ms) index: two seeks each, however
            // long the history of readings.
            "SELECT CAST(COUNT(*) AS BIGINT) FROM meters m WHERE m.approved_ms IS NOT NULL \
             AND EXISTS (SELECT 1 FROM readings r WHERE r.meter_id = m.meter_id \
                         AND r.timestamp_ms >= $1 AND r.timestamp_ms < $2) \
             AND NOT EXISTS (SELECT 1 FROM readings l WHERE l.meter_id = m.meter_id \
                             AND l.timestamp_ms >= $2)",
        )
        .bind(start_s.saturating_mul(1000))
        .bind(end_s.saturating_mul(1000))
        .fetch_one(pool)
        .await?
        .get::<i64, _>(0))
    }

    /// Each approved meter's delivery in the slot ending at `end_s`, from its signed counters:
    /// from where its previous settlement ended (its position; for its first settlement, its
    /// latest reading at or before `start_s`) to its latest reading at or before `end_s`. A
    /// reading that arrives after its slot was settled is thereby carried into the next
    /// settlement, and over any run of slots a meter is settled for exactly its counters'
    /// difference. Also the digests of the readings used, and the meters whose delivery cannot
    /// be established: a counter that went backwards or is corrupt, or — for a meter whose
    /// account traded in the slot — no reading bracketing it. A meter that did not trade and
    /// sent nothing has nothing to settle.
    async fn deliveries(
        &self,
        pool: &AnyPool,
        start_s: i64,
        end_s: i64,
        traders: &BTreeSet<AccountId>,
    ) -> Result<Measured, MarketError> {
        let meters = self.store.meters().await?;
        let mut out = Measured::default();
        // Design: three queries for the whole community (positions, and each meter's latest
        // reading at or before the slot's start and end), not three per meter: settlement of
        // 10 000 meters must finish within a second.
        let mut positions = counters_by_meter(
            sqlx::query(
                "SELECT meter_id, import_wh, export_wh, timestamp_ms, digest FROM meter_positions",
            )
            .fetch_all(pool)
            .await?,
        );
        let mut at_start = counters_by_meter(latest_readings(pool, start_s, true).await?);
        let mut at_end = counters_by_meter(latest_readings(pool, end_s, false).await?);
        for (index, meter) in meters.iter().enumerate() {
            let Some(approval) = &meter.approval else {
                continue;
            };
            let account = account_id(meter.account_id)?;
            let mut dispute = |reason: String| {
                out.disputes.push(Dispute {
                    meter_id: meter.meter_id.clone(),
                    account,
                    reason,
                });
            };
            let settled_to = positions.remove(&meter.meter_id);
            let first_settlement = settled_to.is_none();
            let start = match settled_to {
                Some(p) => Some(p),
                None => at_start.remove(&meter.meter_id),
            };
            let (start, end) = match (start, at_end.remove(&meter.meter_id)) {
                (Some(start), Some(end)) => (start, end),
                (start, _) => {
                    if traders.contains(&account) {
                        let when = if start.is_none() { "start" } else { "end" };
                        dispute(format!("no reading at or before the slot's {when}"));
                    }
                    continue;
                }
            };
            let (start, end) = match (start, end) {
                (Ok(s), Ok(e)) => (s, e),
                (Err(e), _) | (_, Err(e)) => {
                    dispute(e);
                    continue;
                }
            };
            // Settled past this slot's end already (a later slot settled first): nothing left.
            let end = if end.timestamp_ms < start.timestamp_ms {
                Position {
                    import_wh: start.import_wh,
                    export_wh: start.export_wh,
                    timestamp_ms: start.timestamp_ms,
                    digest: start.digest.clone(),
                }
            } else {
                end
            };
            if end.timestamp_ms == start.timestamp_ms
                && !first_settlement
                && !traders.contains(&account)
            {
                // Nothing new from a meter that did not trade: nothing to settle. (A meter's
                // first settlement is recorded even so: it fixes where its counters start.)
                continue;
            }
            let start_counters = MeterCounters {
                import_wh: start.import_wh,
                export_wh: start.export_wh,
            };
            let mut end_counters = MeterCounters {
                import_wh: end.import_wh,
                export_wh: end.export_wh,
            };
            // What a meter is credited or charged never exceeds what its approved capacity can
            // move (with the ingest's margin) in the slot — or, once the meter has settled
            // before, since the reading it last settled to, so that what arrived late is
            // carried in full. A meter's first settlement cannot bring in hours of history.
            let slot_ms = u64::try_from(end_s.saturating_sub(start_s))
                .unwrap_or(0)
                .saturating_mul(1000);
            let elapsed_ms =
                u64::try_from(end.timestamp_ms.saturating_sub(start.timestamp_ms)).unwrap_or(0);
            let span_ms = if first_settlement {
                slot_ms
            } else {
                slot_ms.max(elapsed_ms)
            };
            for (counter, start_wh, capacity_w, name) in [
                (
                    &mut end_counters.export_wh,
                    start_counters.export_wh,
                    approval.export_capacity_w,
                    "export",
                ),
                (
                    &mut end_counters.import_wh,
                    start_counters.import_wh,
                    approval.import_capacity_w,
                    "import",
                ),
            ] {
                let bound = energy_bound_wh(capacity_w, span_ms);
                if counter.saturating_sub(start_wh) > bound {
                    self.metrics
                        .deliveries_capped
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        target: "market",
                        meter = %meter.meter_id,
                        measured_wh = counter.saturating_sub(start_wh),
                        bound_wh = bound,
                        "{name} beyond the meter's approved capacity; settled at the bound"
                    );
                    *counter = start_wh + bound;
                }
            }
            let delivery = MeterDelivery {
                meter: MeterId(u32::try_from(index).map_err(|_| {
                    MarketError::OutOfRange("more meters than a slot can settle".into())
                })?),
                account,
                start: start_counters,
                end: end_counters,
            };
            if let Err(e) = delivery.net_import_wh() {
                dispute(e.to_string());
                continue;
            }
            out.deliveries.push(delivery);
            out.digests.push(start.digest.clone());
            out.digests.push(end.digest.clone());
            out.moved.push(Moved {
                meter_id: meter.meter_id.clone(),
                account,
                from: start,
                to: end,
            });
        }
        out.digests.sort();
        out.digests.dedup();
        Ok(out)
    }

    /// Puts the settled slots that have no batch in the outbox yet — slots settled before the
    /// chain was configured, or by an engine older than the outbox in its database — each in
    /// a transaction of its own. Returns how many were queued.
    pub async fn queue_unqueued(&self) -> Result<usize, MarketError> {
        let Some(custody) = self.custody() else {
            return Ok(0);
        };
        let pool = self.store.pool();
        let slots = slot_list(
            pool,
            "SELECT slot FROM slots WHERE status = 'settled' \
             AND slot NOT IN (SELECT slot FROM settlement_batches) \
             AND slot IN (SELECT slot FROM ledger WHERE amount <> 0) ORDER BY slot",
        )
        .await?;
        for &slot in &slots {
            let settled = self.settled_slot(slot).await?;
            let excluded = texts_of_slot(
                pool,
                "SELECT meter_id FROM disputed_meters WHERE slot = $1",
                slot,
            )
            .await?
            .into_iter()
            .collect();
            let start = self
                .community_for(slot)
                .terms(slot)
                .map_err(|e| MarketError::Settlement(e.to_string()))?
                .slot
                .delivery_start;
            let mut tx = self.store.begin().await?;
            queue_batch(&mut tx, &settled, start, &excluded, custody).await?;
            tx.commit().await?;
        }
        Ok(slots.len())
    }

    /// A settled slot as it goes on chain, rebuilt from the ledger: its net amounts per account
    /// (households by id; −1 the utility, −2 the grid operator), its trades and the digests of
    /// the readings its delivery check used.
    pub async fn settled_slot(&self, slot: u64) -> Result<SettledSlot, MarketError> {
        let pool = self.store.pool();
        let balances =
            sqlx::query("SELECT account_id, amount FROM ledger WHERE slot = $1 ORDER BY id")
                .bind(i64_of(slot))
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
                .collect();
        let reading_digests = texts_of_slot(
            pool,
            "SELECT digest FROM slot_readings WHERE slot = $1 ORDER BY digest",
            slot,
        )
        .await?;
        Ok(SettledSlot {
            slot,
            balances,
            trades: load_trades(pool, slot).await?,
            reading_digests,
        })
    }

    /// Settled slots after `after`, oldest first: `(slot, accounts in the batch, total
    /// debits, queued for the chain at ms)`.
    pub async fn settlements(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, i64, i64, Option<i64>)>, MarketError> {
        let rows = sqlx::query(
            "SELECT s.slot, CAST(COUNT(l.id) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN l.amount < 0 THEN -l.amount ELSE 0 END), 0) AS BIGINT), \
             MAX(c.queued_ms) \
             FROM slots s LEFT JOIN ledger l ON l.slot = s.slot \
             LEFT JOIN settlement_batches c ON c.slot = s.slot \
             WHERE s.status = 'settled' AND s.slot > $1 GROUP BY s.slot ORDER BY s.slot LIMIT $2",
        )
        .bind(i64_of(after))
        .bind(i64::from(limit))
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (u64_of(r.get(0)), r.get(1), r.get(2), r.get(3)))
            .collect())
    }
}

/// The text column of a query over one slot's rows.
async fn texts_of_slot(
    pool: &AnyPool,
    query: &'static str,
    slot: u64,
) -> Result<Vec<String>, MarketError> {
    Ok(sqlx::query(query)
        .bind(i64_of(slot))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| r.get::<String, _>(0))
        .collect())
}

/// A stored reading's counters (`meter_id, import_wh, export_wh, timestamp_ms, digest`).
fn position(r: &sqlx::any::AnyRow) -> Result<Position, String> {
    let unsigned = |i: usize| -> Result<u64, String> {
        let v: i64 = r.try_get(i).map_err(|e| e.to_string())?;
        u64::try_from(v).map_err(|_| format!("stored counter {v} is negative"))
    };
    Ok(Position {
        import_wh: unsigned(1)?,
        export_wh: unsigned(2)?,
        timestamp_ms: r.try_get(3).map_err(|e| e.to_string())?,
        digest: r.try_get(4).map_err(|e| e.to_string())?,
    })
}

/// Rows of `meter_id, import_wh, export_wh, timestamp_ms, digest` by meter (the first row of
/// a meter wins); a row that does not read as counters is kept as its error, for a dispute.
fn counters_by_meter(rows: Vec<sqlx::any::AnyRow>) -> HashMap<String, Result<Position, String>> {
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let Ok(meter) = r.try_get::<String, _>(0) else {
            continue;
        };
        out.entry(meter).or_insert_with(|| position(r));
    }
    out
}

/// Each approved meter's latest reading with both counters at or before `at_s` (only meters
/// without a settled position, when `unpositioned`). Ties on the timestamp come out in digest
/// order, so the choice does not depend on the database.
async fn latest_readings(
    pool: &AnyPool,
    at_s: i64,
    unpositioned: bool,
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let only = if unpositioned {
        "AND NOT EXISTS (SELECT 1 FROM meter_positions p WHERE p.meter_id = m.meter_id)"
    } else {
        ""
    };
    // The scalar subquery walks the (meter_id, timestamp_ms) index backwards from `at_s` and
    // stops at the first reading with both counters: its cost does not grow with history.
    // `CROSS JOIN` makes SQLite drive the join from the meters (one index seek each); with a
    // plain join it scanned every stored reading and ran the subquery for each.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT r.meter_id, r.import_wh, r.export_wh, r.timestamp_ms, r.digest \
         FROM meters m CROSS JOIN readings r \
         WHERE r.meter_id = m.meter_id AND r.timestamp_ms = \
           (SELECT l.timestamp_ms FROM readings l WHERE l.meter_id = m.meter_id \
            AND l.timestamp_ms <= $1 AND l.import_wh IS NOT NULL AND l.export_wh IS NOT NULL \
            ORDER BY l.timestamp_ms DESC LIMIT 1) \
         AND m.approved_ms IS NOT NULL AND r.import_wh IS NOT NULL AND r.export_wh IS NOT NULL {only} \
         ORDER BY r.meter_id, r.digest"
    )))
    .bind(at_s.saturating_mul(1000))
    .fetch_all(pool)
    .await
}

/// Moves each settled meter's position to the reading its slot was settled to, and records
/// what the slot settled for it, in the settlement's transaction.
async fn record_positions(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    slot: u64,
    moved: &[Moved],
) -> Result<(), MarketError> {
    let wh = |v: u64| {
        i64::try_from(v)
            .map(Bind::Int)
            .map_err(|_| MarketError::OutOfRange(format!("counter {v} Wh")))
    };
    let slot = Bind::Int(i64_of(slot));
    let mut positions = Vec::with_capacity(moved.len());
    let mut deliveries = Vec::with_capacity(moved.len());
    for m in moved {
        positions.push([
            Bind::Text(m.meter_id.clone()),
            wh(m.to.import_wh)?,
            wh(m.to.export_wh)?,
            Bind::Int(m.to.timestamp_ms),
            Bind::Text(m.to.digest.clone()),
            slot.clone(),
        ]);
        deliveries.push([
            slot.clone(),
            Bind::Text(m.meter_id.clone()),
            Bind::Int(i64::from(m.account.0)),
            wh(m.to.import_wh.saturating_sub(m.from.import_wh))?,
            wh(m.to.export_wh.saturating_sub(m.from.export_wh))?,
            Bind::Int(m.from.timestamp_ms),
            Bind::Int(m.to.timestamp_ms),
        ]);
    }
    insert_rows(
        tx,
        "INSERT INTO meter_positions (meter_id, import_wh, export_wh, timestamp_ms, digest, slot)",
        " ON CONFLICT (meter_id) DO UPDATE SET \
         import_wh = excluded.import_wh, export_wh = excluded.export_wh, \
         timestamp_ms = excluded.timestamp_ms, digest = excluded.digest, slot = excluded.slot",
        positions,
    )
    .await?;
    insert_rows(
        tx,
        "INSERT INTO slot_deliveries (slot, meter_id, account_id, import_wh, export_wh, from_ms, to_ms)",
        "",
        deliveries,
    )
    .await?;
    Ok(())
}

/// Bound values per multi-row statement. Design: small on purpose. sqlx's SQLite driver finds
/// each `$n` by name among the statement's parameters, a linear search, so binding costs grow
/// with the square of the parameters per statement: 4 000 per statement made settling 10 000
/// meters spend 60 % of its time in `sqlite3_bind_parameter_name` (perf); at about a hundred
/// that cost vanishes and the round trips saved stay.
const MAX_BINDS: usize = 120;

/// A value bound into a multi-row statement.
#[derive(Clone)]
enum Bind {
    Int(i64),
    Text(String),
}

/// Runs `head VALUES (..), (..) tail` over `rows`, in statements of at most [`MAX_BINDS`]
/// bound values: one round trip per chunk instead of one per row.
async fn insert_rows<const WIDTH: usize>(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    head: &str,
    tail: &str,
    rows: Vec<[Bind; WIDTH]>,
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks((MAX_BINDS / WIDTH.max(1)).max(1)) {
        let sql = format!(
            "{head} VALUES {}{tail}",
            crate::store::values_placeholders(chunk.len(), WIDTH)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            for v in row {
                q = match v {
                    Bind::Int(i) => q.bind(*i),
                    Bind::Text(t) => q.bind(t.as_str()),
                };
            }
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Writes a settled slot's batch — its net amounts, the Merkle root of its trades and readings,
/// and its sales between meters (`excluded`: meters whose delivery is disputed earn no sale) —
/// into the settlement outbox, in the caller's transaction.
async fn queue_batch(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    settled: &SettledSlot,
    delivery_start_s: i64,
    excluded: &BTreeSet<String>,
    custody: &crate::chain::custody::Custody,
) -> Result<(), MarketError> {
    let slot = settled.slot;
    let batch = crate::chain::batch_of(settled, custody)
        .map_err(|e| MarketError::Settlement(e.to_string()))?;
    let meters: HashMap<u64, String> = sqlx::query(
        "SELECT order_id, meter_id FROM order_events WHERE slot = $1 AND kind = 'submit'",
    )
    .bind(i64_of(slot))
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|r| (u64_of(r.get(0)), r.get::<String, _>(1)))
    .collect();
    let delivered_at_ms = u64::try_from(delivery_start_s)
        .unwrap_or_default()
        .saturating_mul(1000);
    let sales = crate::chain::sales_of(settled, delivered_at_ms, &meters, excluded);
    crate::chain::outbox::insert(tx, &batch, &sales, crate::pipeline::now_ms()).await?;
    Ok(())
}
