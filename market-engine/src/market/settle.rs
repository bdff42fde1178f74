//! Settlement of delivered slots: delivery from the meters' signed counters, the ledger, and
//! the settled slots the chain outbox sends.

use super::*;

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
            let terms = self
                .community_for(slot)
                .terms(slot)
                .map_err(|e| MarketError::Slot(e.to_string()))?;
            if terms.slot.settlement > now_s {
                continue;
            }
            let trades = load_trades(pool, slot).await?;
            let (deliveries, digests) = self
                .deliveries(pool, terms.slot.delivery_start, terms.slot.delivery_end)
                .await?;
            let settlement = settle_slot(&trades, &deliveries, &terms)
                .map_err(|e| MarketError::Slot(format!("slot {slot}: {e}")))?;
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
            for &(account, amount) in &amounts {
                sqlx::query("INSERT INTO ledger (slot, account_id, amount) VALUES ($1, $2, $3)")
                    .bind(i64_of(slot))
                    .bind(account)
                    .bind(amount)
                    .execute(&mut *tx)
                    .await?;
            }
            for digest in &digests {
                sqlx::query("INSERT INTO slot_readings (slot, digest) VALUES ($1, $2)")
                    .bind(i64_of(slot))
                    .bind(digest)
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
            if done.rows_affected() == 1 {
                tx.commit().await?;
                books.funds.release_bought(slot);
                for &(account, amount) in amounts.iter().filter(|(a, _)| *a >= 0) {
                    // Checked before the transaction, under the same lock: cannot fail here.
                    if let Err(e) = books.funds.book(account, amount) {
                        tracing::error!(target: "market", slot, account, "{e}");
                    }
                }
                settled.push(slot);
                self.metrics.slots_settled.fetch_add(1, Ordering::Relaxed);
                self.metrics.settlement_lag_s.store(
                    u64::try_from(now_s - terms.slot.settlement).unwrap_or(0),
                    Ordering::Relaxed,
                );
                tracing::info!(target: "market", slot, accounts = settlement.balances.len(), "slot settled");
            }
        }
        Ok(settled)
    }

    async fn deliveries(
        &self,
        pool: &AnyPool,
        start_s: i64,
        end_s: i64,
    ) -> Result<(Vec<MeterDelivery>, Vec<String>), MarketError> {
        let meters = self.store.meters().await?;
        let mut out = Vec::new();
        let mut digests = Vec::new();
        for (index, meter) in meters.iter().enumerate() {
            let at = |t: i64| {
                sqlx::query(
                    "SELECT import_wh, export_wh, digest FROM readings WHERE meter_id = $1 AND timestamp_ms <= $2 \
                     AND import_wh IS NOT NULL AND export_wh IS NOT NULL \
                     ORDER BY timestamp_ms DESC LIMIT 1",
                )
                .bind(meter.meter_id.clone())
                .bind(t.saturating_mul(1000))
                .fetch_optional(pool)
            };
            let (Some(start), Some(end)) = (at(start_s).await?, at(end_s).await?) else {
                continue;
            };
            let Some(approval) = &meter.approval else {
                continue;
            };
            let counters = |r: &sqlx::any::AnyRow| -> Result<MeterCounters, MarketError> {
                let unsigned = |i: usize| -> Result<u64, MarketError> {
                    let v: i64 = r.try_get(i)?;
                    u64::try_from(v).map_err(|_| {
                        MarketError::Store(StoreError::Corrupt(format!("counter {v}")))
                    })
                };
                Ok(MeterCounters {
                    import_wh: unsigned(0)?,
                    export_wh: unsigned(1)?,
                })
            };
            let start_counters = counters(&start)?;
            let mut end_counters = counters(&end)?;
            // What a meter is credited or charged in one slot never exceeds what its approved
            // capacity can move in the slot (with the ingest's margin), however its readings
            // bracket the slot: a meter that was silent for hours cannot land them all here.
            let slot_ms = u64::try_from(end_s.saturating_sub(start_s))
                .unwrap_or(0)
                .saturating_mul(1000);
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
                let bound = energy_bound_wh(capacity_w, slot_ms);
                if counter.saturating_sub(start_wh) > bound {
                    self.metrics
                        .deliveries_capped
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        target: "market",
                        meter = %meter.meter_id,
                        measured_wh = counter.saturating_sub(start_wh),
                        bound_wh = bound,
                        "{name} in one slot beyond the meter's approved capacity; settled at the bound"
                    );
                    *counter = start_wh + bound;
                }
            }
            out.push(MeterDelivery {
                meter: MeterId(u32::try_from(index).map_err(|_| {
                    MarketError::OutOfRange("more meters than a slot can settle".into())
                })?),
                account: account_id(meter.account_id)?,
                start: start_counters,
                end: end_counters,
            });
            digests.push(start.get::<String, _>(2));
            digests.push(end.get::<String, _>(2));
        }
        digests.sort();
        digests.dedup();
        Ok((out, digests))
    }

    /// Settled slots not yet handed to the chain: each with its net amounts per account
    /// (households by id; −1 the utility, −2 the grid operator), its trades and the digests of
    /// the readings its delivery check used.
    pub async fn unqueued_settlements(&self) -> Result<Vec<SettledSlot>, MarketError> {
        let pool = self.store.pool();
        let slots = slot_list(
            pool,
            "SELECT slot FROM slots WHERE status = 'settled' \
             AND slot NOT IN (SELECT slot FROM chain_batches) ORDER BY slot",
        )
        .await?;
        let mut out = Vec::new();
        for slot in slots {
            let balances =
                sqlx::query("SELECT account_id, amount FROM ledger WHERE slot = $1 ORDER BY id")
                    .bind(i64_of(slot))
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
                    .collect();
            let reading_digests =
                sqlx::query("SELECT digest FROM slot_readings WHERE slot = $1 ORDER BY digest")
                    .bind(i64_of(slot))
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .map(|r| r.get::<String, _>(0))
                    .collect();
            out.push(SettledSlot {
                slot,
                balances,
                trades: load_trades(pool, slot).await?,
                reading_digests,
            });
        }
        Ok(out)
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
             LEFT JOIN chain_batches c ON c.slot = s.slot \
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

    /// Records that a settled slot is in the settlement outbox.
    pub async fn mark_queued(&self, slot: u64, now_ms: u64) -> Result<(), MarketError> {
        sqlx::query("INSERT INTO chain_batches (slot, queued_ms) VALUES ($1, $2) ON CONFLICT (slot) DO NOTHING")
            .bind(i64_of(slot))
            .bind(i64_of(now_ms))
            .execute(self.store.pool())
            .await?;
        Ok(())
    }
}
