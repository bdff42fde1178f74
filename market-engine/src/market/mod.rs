//! The community's market: the `core` mechanisms per delivery slot, an order log on disk, and
//! the scheduler that closes gates and settles delivered slots on wall-clock time.
//!
//! Design: every accepted submit, cancel and amend is appended to `order_events` in the same
//! transaction as the trades it made, before the client hears "accepted". The books of open
//! slots live in memory and are rebuilt after a restart by replaying the log through the same
//! deterministic `core` code — so an acknowledged order survives `kill -9` and a continuous
//! trade is never applied twice (the replay re-creates it; only the original is stored).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use gridshare_core::market::{
    AccountId, BookDepth, Community, MeterCounters, MeterDelivery, MeterId, OrderError, Trade,
};
use tokio::sync::{Mutex, broadcast, mpsc, oneshot};

use crate::exchange::{Exchange, ExchangeError, Mode, OrderEvent, OrderEventKind, account_id};
pub use crate::exchange::{GRID_OPERATOR, MAX_BALANCE, OrderSide, UTILITY};
use crate::ingest::energy_bound_wh;
use crate::pipeline::LiveEvent;
pub use crate::settings::MarketConfig;
use crate::settings::{StoredSettings, StoredSettingsError};

use crate::store::{SlotStatus, Store, StoreError};

mod funding;
pub use funding::{ChainMoney, FollowCursor, FundingEntry};
mod log;
mod settle;

use log::{GROUP_COMMIT, LogFailure, LogJob, LogWrite, log_writer};

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

/// Counters of the market, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct MarketMetrics {
    /// Orders accepted (on disk).
    pub orders_accepted: AtomicU64,
    /// Orders, cancels and amends refused, by reason.
    pub orders_rejected: ReasonCounts,
    /// Trades made.
    pub trades: AtomicU64,
    /// Gate closures.
    pub gate_closures: AtomicU64,
    /// Time spent clearing at gate closure, microseconds in total.
    pub gate_closure_micros: AtomicU64,
    /// Slots settled in the ledger.
    pub slots_settled: AtomicU64,
    /// Seconds from the latest settled slot's settlement time to its settlement (lag).
    pub settlement_lag_s: AtomicU64,
    /// Meter deliveries settled at their capacity bound instead of what the counters said.
    pub deliveries_capped: AtomicU64,
    /// Meters whose delivery in a settled slot could not be established (disputed).
    pub meters_disputed: AtomicU64,
    /// Attempts to settle a slot that failed (the slot is tried again; later slots go on).
    pub settlement_failures: AtomicU64,
}

/// Counters by a fixed set of reasons, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReasonCounts(std::sync::Mutex<BTreeMap<&'static str, u64>>);

impl ReasonCounts {
    /// Counts one `reason`.
    pub fn add(&self, reason: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Every reason counted so far with its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(r, n)| (*r, *n))
            .collect()
    }

    /// The sum over every reason.
    pub fn total(&self) -> u64 {
        self.snapshot().iter().map(|(_, n)| n).sum()
    }
}

/// A settled slot, as it goes on chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledSlot {
    /// Slot index (the batch id on chain).
    pub slot: u64,
    /// Net amount per account id (−1 utility, −2 grid operator); sums to zero.
    pub balances: Vec<(i64, i64)>,
    /// The slot's trades.
    pub trades: Vec<Trade>,
    /// SHA-256 (hex) of the readings the delivery check used.
    pub reading_digests: Vec<String>,
}

/// An account's money: what it has, what its orders and purchases hold, what it may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FundsView {
    /// Deposits less withdrawals plus the settled ledger, token units.
    pub balance: i64,
    /// Held by open bids (their open energy at their limit price).
    pub held_by_bids: u64,
    /// Held by trades bought in slots not yet settled.
    pub held_by_purchases: u64,
    /// Requested for withdrawal on chain and not yet paid out (still in the balance: the
    /// contract takes due debits from it first).
    pub withdrawal_pending: u64,
    /// What new bids and withdrawals may use: balance less the three holds.
    pub available: i64,
}

/// Why the market refused a request.
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    /// The `core` rules refused the order (gate closed, price outside the band, ...).
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The slot cannot be traded (outside the calendar, already closed).
    #[error("{0}")]
    Slot(String),
    /// A slot could not be settled or put into a chain batch: the engine's failure, not the
    /// request's (the slot is tried again; `gridshare_settlement_failures`).
    #[error("{0}")]
    Settlement(String),
    /// A task the market relies on has stopped (the engine is shutting down).
    #[error("{0} stopped")]
    Stopped(&'static str),
    /// Market settings that cannot apply (the operator's request, or a stored row).
    #[error("{0}")]
    Settings(String),
    /// A stored row of market settings cannot be read (a newer engine wrote it).
    #[error(transparent)]
    StoredSettings(#[from] StoredSettingsError),
    /// No such order, or not the caller's.
    #[error("order {0} not found among your open orders")]
    UnknownOrder(u64),
    /// The account cannot pay for what it asks.
    #[error(
        "insufficient funds: this needs {need} token units, the account has {available} available \
         (deposits and settled balance, less what open bids and unsettled purchases hold)"
    )]
    InsufficientFunds {
        /// What the bid could cost at its limit price (or the withdrawal), token units.
        need: u64,
        /// What the account may still spend, token units.
        available: i64,
    },
    /// An amount or quantity beyond what the engine can represent or allows.
    #[error("{0}")]
    OutOfRange(String),
    /// A deposit or withdrawal with a reference already used for a different amount.
    #[error("reference {0:?} was already used for a different amount")]
    ReferenceReused(String),
    /// The database failed; the slot's book was rebuilt from the log.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MarketError {
    /// A stable name of the reason (a metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Order(e) => e.reason(),
            Self::Slot(_) => "slot_not_trading",
            Self::Settlement(_) => "settlement",
            Self::Stopped(_) => "stopped",
            Self::Settings(_) => "invalid_settings",
            Self::StoredSettings(_) => "stored_settings",
            Self::UnknownOrder(_) => "unknown_order",
            Self::InsufficientFunds { .. } => "insufficient_funds",
            Self::OutOfRange(_) => "out_of_range",
            Self::ReferenceReused(_) => "reference_reused",
            Self::Store(_) => "storage",
        }
    }
}

impl From<ExchangeError> for MarketError {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::Order(e) => Self::Order(e),
            ExchangeError::NotTrading { .. } | ExchangeError::Account(_) => {
                Self::Slot(e.to_string())
            }
            ExchangeError::UnknownOrder(order) => Self::UnknownOrder(order),
            ExchangeError::InsufficientFunds { need, available } => {
                Self::InsufficientFunds { need, available }
            }
            ExchangeError::OutOfRange(m) => Self::OutOfRange(m),
        }
    }
}

/// The market of one community.
pub struct Market {
    /// The rules by the slot they take effect from, ascending; the first applies from slot 0.
    versions: std::sync::RwLock<Vec<(u64, MarketConfig, Community)>>,
    store: Store,
    books: Mutex<Exchange>,
    live: broadcast::Sender<LiveEvent>,
    log: mpsc::Sender<LogJob>,
    /// Whether settlement writes each slot's batch into the chain outbox (a chain is
    /// configured).
    queue_batches: std::sync::OnceLock<std::sync::Arc<crate::chain::custody::Custody>>,
    /// The highest account id whose chain address [`Market::derive_addresses`] derived.
    addresses_derived_to: std::sync::atomic::AtomicI64,
    /// How long past its settlement time a slot waits for late readings, s.
    late_readings_wait_s: std::sync::atomic::AtomicU32,
    /// Counters for `/metrics`.
    pub metrics: MarketMetrics,
}

impl Market {
    /// The market, with the books of open slots rebuilt from the order log.
    pub async fn open(community: Community, store: Store) -> Result<Self, MarketError> {
        Self::open_with(MarketConfig::default(), community, store).await
    }

    /// The market with the rules of `config` (and the operator's later changes from the
    /// database), books of open slots rebuilt from the order log.
    pub async fn open_with(
        config: MarketConfig,
        community: Community,
        store: Store,
    ) -> Result<Self, MarketError> {
        let mut versions = vec![(0, config, community)];
        for (from_slot, text) in store.market_settings().await? {
            let settings = StoredSettings::from_json(&text)?.into_config();
            let community = settings.community().map_err(MarketError::Settings)?;
            versions.push((from_slot, settings, community));
        }
        let (log, log_rx) = mpsc::channel(4 * GROUP_COMMIT);
        tokio::spawn(log_writer(store.clone(), log_rx));
        let market = Self {
            queue_batches: std::sync::OnceLock::new(),
            addresses_derived_to: std::sync::atomic::AtomicI64::new(0),
            late_readings_wait_s: std::sync::atomic::AtomicU32::new(0),
            versions: std::sync::RwLock::new(versions),
            metrics: MarketMetrics::default(),
            log,
            live: broadcast::channel(1024).0,
            store,
            books: Mutex::new(Exchange::default()),
        };
        {
            let store = &market.store;
            let mut books = market.books.lock().await;
            if let Some(max) = store.last_order_id().await? {
                books.resume_ids_after(max);
            }
            for (account, balance) in store.household_balances().await? {
                books.funds.book(account, balance)?;
            }
            for (account, amount) in store.pending_withdrawals().await? {
                books.funds.set_withdrawing(account, amount);
            }
            for slot in store.slots_with_unsettled_trades().await? {
                market.reload_bought(&mut books, slot).await?;
            }
            for slot in store.slots_with_open_books().await? {
                market.replay(&mut books, slot).await?;
            }
        }
        Ok(market)
    }

    /// The live event stream (orders, trades; the ingest adds readings).
    pub fn live(&self) -> broadcast::Sender<LiveEvent> {
        self.live.clone()
    }

    /// The community's rules.
    pub fn community(&self) -> Community {
        self.community_for(u64::MAX)
    }

    /// The rules that govern `slot`.
    pub fn community_for(&self, slot: u64) -> Community {
        let versions = self.versions.read().unwrap_or_else(|e| e.into_inner());
        // The configured rules sit at slot 0 from `open_with` on, so a version always applies.
        let (_, _, community) = versions
            .iter()
            .rev()
            .find(|(from, _, _)| *from <= slot)
            .unwrap_or(&versions[0]);
        community.clone()
    }

    /// The settings now in force and those scheduled, as `(from slot, settings)`.
    pub fn settings(&self) -> Vec<(u64, MarketConfig)> {
        self.versions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(from, config, _)| (*from, config.clone()))
            .collect()
    }

    /// Sets new market rules (the community operator's call): tariffs, fees, mechanism and the
    /// slot timeline (when the order window opens, gate closure, settlement) change from the
    /// first slot whose order window has not opened yet under the old rules or the new ones,
    /// which is returned. The slot length stays: slot indices count slots of that length.
    pub async fn change_settings(
        &self,
        settings: MarketConfig,
        now_s: i64,
    ) -> Result<u64, MarketError> {
        let current = self.community();
        let calendar = current.calendar;
        let base = self
            .settings()
            .last()
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        if settings.slot_length_s != base.slot_length_s {
            return Err(MarketError::Settings(format!(
                "market.slot_length_s: the community's slots are {} s long and slot indices count \
                 them, so the length cannot change; a new community (its own database) can have \
                 another",
                base.slot_length_s
            )));
        }
        let community = settings.community().map_err(MarketError::Settings)?;
        let lead = settings
            .window_opens_before_s
            .max(base.window_opens_before_s);
        let horizon = now_s.saturating_add(i64::from(lead));
        let from = calendar.slot_delivering_at(horizon).map_or(0, |s| s + 1);
        let text = StoredSettings::from_config(&settings).to_json();
        self.store
            .save_market_settings(from, &text, now_s.saturating_mul(1000))
            .await?;
        let mut versions = self.versions.write().unwrap_or_else(|e| e.into_inner());
        versions.retain(|(f, _, _)| *f < from);
        versions.push((from, settings, community));
        Ok(from)
    }

    /// Reloads what a slot's stored trades cost their buyers.
    async fn reload_bought(&self, books: &mut Exchange, slot: u64) -> Result<(), MarketError> {
        books.funds.release_bought(slot);
        let trades = self.store.trades(slot).await?;
        books.funds.bought(slot, &trades);
        Ok(())
    }

    /// Rebuilds one slot's book, its orders' holds and its purchases from the log, through
    /// the same [`Exchange::apply`] that accepted each event.
    async fn replay(&self, books: &mut Exchange, slot: u64) -> Result<(), MarketError> {
        books.forget_slot(slot);
        let community = self.community_for(slot);
        for row in self.store.order_events(slot).await? {
            let order = row.order_id;
            let outcome = OrderEvent::try_from(row).map_err(|e| ExchangeError::NotTrading {
                slot,
                reason: format!("stored order event unreadable: {e}"),
            });
            // Each event was accepted once by the same deterministic code; it is accepted again.
            if let Err(e) =
                outcome.and_then(|event| books.apply(slot, &event, &community, Mode::Replay))
            {
                tracing::error!(target: "market", slot, order, "replayed event refused: {e}");
            }
        }
        // What was bought is what the log stored (replayed continuous trades are the same).
        self.reload_bought(books, slot).await
    }

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
            return Err(self.refused(MarketError::Slot(format!(
                "slot {slot}: gate already closed"
            ))));
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
            .ok_or_else(|| self.refused(MarketError::UnknownOrder(order)))
    }

    fn announce_trades(&self, slot: u64, trades: &[Trade], clearing_price: Option<u64>) {
        self.metrics.trades.fetch_add(
            u64::try_from(trades.len()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if !trades.is_empty() {
            let _ = self.live.send(LiveEvent::Trades {
                slot,
                count: trades.len(),
                energy_wh: trades.iter().map(|t| t.energy_wh).sum(),
                clearing_price,
            });
        }
    }

    /// Queues a write (call with the book lock held, so the log keeps the book's order).
    async fn queue(
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

    /// From now on, settle each slot's batch into the chain outbox (in the settlement's own
    /// transaction), each account at its address in `custody`; the engine turns this on when
    /// a chain is configured. The first custody given stays (addresses never change under a
    /// running engine).
    pub fn queue_batches(&self, custody: std::sync::Arc<crate::chain::custody::Custody>) {
        let _ = self.queue_batches.set(custody);
    }

    /// Every account's chain address, once a chain is configured.
    pub fn custody(&self) -> Option<&std::sync::Arc<crate::chain::custody::Custody>> {
        self.queue_batches.get()
    }

    /// Derives the chain address of every account created since the last call (the engine's
    /// scheduler calls this every second); how many were derived.
    ///
    /// Design: an address is a curve multiplication (tens of µs); left to settlement, a
    /// community's first slot after a start paid it for every account inside the slot's
    /// settlement (45 % of settling 10 000 meters, perf). Accounts are created long before
    /// their first slot settles, so doing it here takes it off that path entirely.
    pub async fn derive_addresses(&self) -> Result<usize, MarketError> {
        let Some(custody) = self.custody().cloned() else {
            return Ok(0);
        };
        let after = self.addresses_derived_to.load(Ordering::Relaxed);
        let ids = self.store.account_ids_after(after).await?;
        let Some(&last) = ids.last() else {
            return Ok(0);
        };
        let derived = ids.len();
        tokio::task::spawn_blocking(move || {
            for id in ids {
                custody.address(id);
            }
        })
        .await
        .map_err(|e| MarketError::Settlement(format!("deriving chain addresses: {e}")))?;
        self.addresses_derived_to.store(last, Ordering::Relaxed);
        Ok(derived)
    }

    /// Lets settlement wait up to `seconds` past a slot's settlement time for a meter that
    /// reported during the slot but not yet past its end (0, the default of a bare market:
    /// never wait). The engine sets `[ingest] late_readings_wait_s`.
    pub fn wait_for_late_readings(&self, seconds: u32) {
        self.late_readings_wait_s.store(seconds, Ordering::Relaxed);
    }

    /// Whether settlement queues batches for the chain.
    pub fn queues_batches(&self) -> bool {
        self.queue_batches.get().is_some()
    }

    /// How many slots have an open book (orders accepted, gate not yet closed).
    pub async fn open_books(&self) -> usize {
        self.books.lock().await.open_books()
    }

    /// The open book of a slot, aggregated per price level (empty once its gate closed).
    pub async fn depth(&self, slot: u64) -> BookDepth {
        self.books.lock().await.depth(slot)
    }

    /// Trades of a slot (as stored).
    pub async fn trades(&self, slot: u64) -> Result<Vec<Trade>, MarketError> {
        Ok(self.store.trades(slot).await?)
    }

    /// Status and clearing price of a slot: open, closed or settled.
    pub async fn slot_status(&self, slot: u64) -> Result<(SlotStatus, Option<u64>), MarketError> {
        Ok(self
            .store
            .slot_status(slot)
            .await?
            .unwrap_or((SlotStatus::Open, None)))
    }
}
