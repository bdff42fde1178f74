//! Gate closure: the books whose gate closure has passed are cleared and closed, and slots
//! nobody traded in are closed too, so that their metered energy is still settled.

use super::*;

impl Market {
    /// Closes the gate of every open slot whose gate closure has passed: the call auction
    /// clears, remaining orders expire. Returns the slots closed.
    pub async fn close_due_gates(&self, now_s: i64) -> Result<Vec<u64>, MarketError> {
        let mut books = self.books.lock().await;
        let due = books.due_gates(now_s);
        for slot in &due {
            let Some(book) = books.take_book(*slot) else {
                continue;
            };
            let started = std::time::Instant::now();
            let closure = book.close_gate();
            self.metrics.gate_closures.fetch_add(1, Ordering::Relaxed);
            self.metrics.gate_closure_micros.fetch_add(
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            let pending = self
                .queue(LogWrite::Closure {
                    slot: *slot,
                    trades: closure.trades.clone(),
                    clearing_price: closure.clearing_price,
                })
                .await?;
            // Holding the lock: no order for this slot can slip in while its closure commits.
            let outcome = pending.await.unwrap_or_else(|_| Err(LogFailure::stopped()));
            if let Err(e) = outcome {
                self.replay(&mut books, *slot).await?;
                return Err(e.refusal(&format!("slot {slot}: gate closure not stored")));
            }
            books.gate_closed(*slot, &closure.trades);
            self.announce_trades(*slot, &closure.trades, closure.clearing_price);
            tracing::info!(
                target: "market",
                slot,
                trades = closure.trades.len(),
                clearing_price = ?closure.clearing_price,
                "gate closed"
            );
        }
        Ok(due)
    }

    /// Closes the gate of every slot that had no order book and whose gate closure has
    /// passed, from the slot after the latest one closed (or the first with a reading) on, so
    /// that the energy metered in a slot nobody traded in is still settled against the
    /// utility (issue 11, item 5). At most `MAX_QUIET_SLOTS_PER_CALL` a call: an engine back
    /// after a long stop catches up tick by tick. Returns the slots closed.
    pub async fn close_quiet_slots(&self, now_s: i64) -> Result<Vec<u64>, MarketError> {
        const MAX_QUIET_SLOTS_PER_CALL: u64 = 96;
        let first = match self.store.last_closed_slot().await? {
            Some(last) => last + 1,
            None => {
                let Some(ms) = self.store.earliest_reading_ms().await? else {
                    return Ok(Vec::new());
                };
                let Some(slot) = self.community().calendar.slot_delivering_at(ms / 1000) else {
                    return Ok(Vec::new());
                };
                slot
            }
        };
        // Once a second, usually with nothing due: no lock then.
        let due = |slot: u64| {
            self.community_for(slot)
                .terms(slot)
                .is_ok_and(|t| t.slot.gate_closure <= now_s)
        };
        if !due(first) {
            return Ok(Vec::new());
        }
        let books = self.books.lock().await;
        let mut closed = Vec::new();
        for slot in first..first.saturating_add(MAX_QUIET_SLOTS_PER_CALL) {
            if !due(slot) {
                break;
            }
            if books.is_open(slot) {
                // Its gate closure (with its trades) is close_due_gates' work.
                continue;
            }
            self.store.close_quiet_slot(slot).await?;
            closed.push(slot);
        }
        Ok(closed)
    }
}
