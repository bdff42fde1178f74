//! The order path: a client's submit, cancel or amend applied to the books, logged, and
//! answered once it is on disk; a refusal counted by its reason.

use super::*;

/// An order as a client places it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// The account that pays or is paid.
    pub account: i64,
    /// The meter that delivers or takes the energy (owned by the account).
    pub meter: String,
    /// Delivery slot index.
    pub slot: u64,
    /// Buy or sell.
    pub side: OrderSide,
    /// Limit price, token units per kWh.
    pub price_per_kwh: u64,
    /// Energy, Wh.
    pub energy_wh: u64,
}

impl Market {
    /// Applies a client's order event and logs it: answered once it is on disk. A slot
    /// without a book gets one here, kept only if the event is taken (and never for a slot
    /// whose gate already closed).
    /// Takes the books' guard, so that the id or slot the caller read under it still holds,
    /// and releases it before waiting for the disk.
    async fn accept(
        &self,
        mut books: tokio::sync::MutexGuard<'_, Exchange>,
        slot: u64,
        event: OrderEvent,
    ) -> Result<Vec<Trade>, MarketError> {
        if event.kind() == OrderEventKind::Submit
            && !books.is_open(slot)
            && self.slot_closed(slot).await?
        {
            return Err(self.refused(
                ExchangeError::NotTrading {
                    slot,
                    reason: "gate already closed".into(),
                }
                .into(),
            ));
        }
        let trades = books
            .apply(slot, &event, &self.community_for(slot), Mode::Live)
            .map_err(|e| self.refused(e.into()))?;
        let pending = self
            .queue(LogWrite::Event {
                slot,
                event,
                trades: trades.clone(),
            })
            .await?;
        drop(books);
        self.committed(slot, pending).await?;
        Ok(trades)
    }

    /// Places an order (the caller has checked that the meter belongs to the account).
    /// Returns the order id and the trades it made at once (continuous mechanisms).
    pub async fn submit(
        &self,
        new: &NewOrder,
        now_s: i64,
    ) -> Result<(u64, Vec<Trade>), MarketError> {
        let books = self.books.lock().await;
        let id = books.next_order_id();
        let event = OrderEvent::Submit {
            order: id,
            account: new.account,
            meter: new.meter.clone(),
            side: new.side,
            price_per_kwh: new.price_per_kwh,
            energy_wh: new.energy_wh,
            at_s: now_s,
        };
        // One guard from reading the id to applying the event keeps ids unique.
        let trades = self.accept(books, new.slot, event).await?;
        self.metrics.orders_accepted.fetch_add(1, Ordering::Relaxed);
        let _ = self.live.send(LiveEvent::Order {
            account: new.account,
            order_id: Some(id),
            slot: new.slot,
            side: new.side.as_str(),
            energy_wh: new.energy_wh,
            price_per_kwh: new.price_per_kwh,
        });
        self.announce_trades(new.slot, &trades, None);
        Ok((id, trades))
    }

    /// Counts a refused order, cancel or amend by its reason.
    fn refused(&self, e: MarketError) -> MarketError {
        self.metrics.orders_rejected.add(e.reason());
        e
    }

    /// Cancels one of `account`'s open orders.
    pub async fn cancel(&self, account: i64, order: u64, now_s: i64) -> Result<(), MarketError> {
        let books = self.books.lock().await;
        let slot = self.slot_of(&books, account, order)?;
        let event = OrderEvent::Cancel {
            order,
            account,
            at_s: now_s,
        };
        self.accept(books, slot, event).await.map(drop)
    }

    /// Amends one of `account`'s open orders (it loses time priority if price or size grows).
    pub async fn amend(
        &self,
        account: i64,
        order: u64,
        price_per_kwh: u64,
        energy_wh: u64,
        now_s: i64,
    ) -> Result<Vec<Trade>, MarketError> {
        let books = self.books.lock().await;
        let slot = self.slot_of(&books, account, order)?;
        let event = OrderEvent::Amend {
            order,
            account,
            price_per_kwh,
            energy_wh,
            at_s: now_s,
        };
        self.accept(books, slot, event).await
    }

    /// The slot of one of `account`'s open orders; refused (and counted) otherwise.
    fn slot_of(&self, books: &Exchange, account: i64, order: u64) -> Result<u64, MarketError> {
        books
            .slot_of(account, order)
            .ok_or_else(|| self.refused(ExchangeError::UnknownOrder(order).into()))
    }

    /// Queues a write (call with the book lock held, so the log keeps the book's order).
    pub(super) async fn queue(
        &self,
        write: LogWrite,
    ) -> Result<oneshot::Receiver<Result<(), LogFailure>>, MarketError> {
        let (done, rx) = oneshot::channel();
        self.log
            .send(LogJob { write, done })
            .await
            .map_err(|_| MarketError::Stopped("the order log writer"))?;
        Ok(rx)
    }

    /// Waits for a queued write; on failure rebuilds the slot's book from the log.
    async fn committed(
        &self,
        slot: u64,
        rx: oneshot::Receiver<Result<(), LogFailure>>,
    ) -> Result<(), MarketError> {
        let outcome = rx.await.unwrap_or_else(|_| Err(LogFailure::stopped()));
        if let Err(e) = outcome {
            let mut books = self.books.lock().await;
            self.replay(&mut books, slot).await?;
            return Err(e.refusal("order not stored"));
        }
        Ok(())
    }

    async fn slot_closed(&self, slot: u64) -> Result<bool, MarketError> {
        Ok(self.store.slot_closed(slot).await?)
    }
}
