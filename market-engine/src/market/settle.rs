//! Settlement of delivered slots: delivery from the meters' signed counters, the ledger, and
//! the settled slots the chain outbox sends.

use std::collections::BTreeSet;

use gridshare_core::market::{AreaId, Mechanism, member_flows, settle_slot_disputed, share_slot};

use super::*;
use crate::store::{Position, SettledMeter, Transaction};

/// What the meters say about one slot.
#[derive(Default)]
struct Measured {
    deliveries: Vec<MeterDelivery>,
    /// SHA-256 (hex) of the readings used, sorted, once each.
    digests: Vec<String>,
    disputes: Vec<Dispute>,
    /// Each settled meter's new position and what it was settled for.
    moved: Vec<SettledMeter>,
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
        let closed = self.store.closed_slots().await?;
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
                .store
                .late_meters(terms.slot.delivery_start, terms.slot.delivery_end)
                .await?;
            if late > 0 {
                tracing::debug!(target: "market", slot, meters = late, "settlement waits for late readings");
                return Ok(false);
            }
        }
        let mut trades = self.store.trades(slot).await?;
        let traders: BTreeSet<AccountId> =
            trades.iter().flat_map(|t| [t.buyer, t.seller]).collect();
        let measured = self
            .deliveries(terms.slot.delivery_start, terms.slot.delivery_end, &traders)
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
                MarketError::out_of_range(format!(
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
        tx.book_slot_ledger(slot, &amounts).await?;
        for t in &shared {
            tx.store_trade(slot, t).await?;
        }
        tx.record_slot_readings(slot, &measured.digests).await?;
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
        tx.record_positions(slot, &measured.moved).await?;
        let disputes: Vec<(&str, i64, &str)> = measured
            .disputes
            .iter()
            .map(|d| {
                (
                    d.meter_id.as_str(),
                    i64::from(d.account.0),
                    d.reason.as_str(),
                )
            })
            .collect();
        tx.record_disputes(slot, &disputes).await?;
        // Only a slot still 'closed' is settled: a second settler changes nothing.
        let done = tx.mark_slot_settled(slot).await?;
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
        start_s: i64,
        end_s: i64,
        traders: &BTreeSet<AccountId>,
    ) -> Result<Measured, MarketError> {
        let meters = self.store.meters().await?;
        let mut out = Measured::default();
        // Design: three queries for the whole community (positions, and each meter's latest
        // reading at or before the slot's start and end), not three per meter: settlement of
        // 10 000 meters must finish within a second.
        let mut positions = self.store.settled_positions().await?;
        let mut at_start = self.store.counters_at(start_s, true).await?;
        let mut at_end = self.store.counters_at(end_s, false).await?;
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
                    MarketError::out_of_range("more meters than a slot can settle")
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
            out.moved.push(SettledMeter {
                meter_id: meter.meter_id.clone(),
                account_id: i64::from(account.0),
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
        let slots = self.store.settled_slots_without_batch().await?;
        for &slot in &slots {
            let settled = self.settled_slot(slot).await?;
            let excluded = self.store.disputed_meters(slot).await?;
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
        Ok(SettledSlot {
            slot,
            balances: self.store.slot_ledger(slot).await?,
            trades: self.store.trades(slot).await?,
            reading_digests: self.store.slot_reading_digests(slot).await?,
        })
    }

    /// Settled slots after `after`, oldest first: `(slot, accounts in the batch, total
    /// debits, queued for the chain at ms)`.
    pub async fn settlements(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, i64, i64, Option<i64>)>, MarketError> {
        Ok(self.store.settlements(after, limit).await?)
    }
}

/// Writes a settled slot's batch — its net amounts, the Merkle root of its trades and readings,
/// and its sales between meters (`excluded`: meters whose delivery is disputed earn no sale) —
/// into the settlement outbox, in the caller's transaction.
async fn queue_batch(
    tx: &mut Transaction,
    settled: &SettledSlot,
    delivery_start_s: i64,
    excluded: &BTreeSet<String>,
    custody: &crate::chain::custody::Custody,
) -> Result<(), MarketError> {
    let slot = settled.slot;
    let batch = crate::chain::batch_of(settled, custody)
        .map_err(|e| MarketError::Settlement(e.to_string()))?;
    let meters = tx.submitted_order_meters(slot).await?;
    let delivered_at_ms = u64::try_from(delivery_start_s)
        .unwrap_or_default()
        .saturating_mul(1000);
    let sales = crate::chain::sales_of(settled, delivered_at_ms, &meters, excluded);
    tx.queue_settlement_batch(&batch, &sales, crate::pipeline::now_ms())
        .await?;
    Ok(())
}
