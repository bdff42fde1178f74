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
    AccountId, BookDepth, Community, MeterCounters, MeterDelivery, MeterId, Trade,
};
use tokio::sync::{Mutex, broadcast, mpsc, oneshot};

use crate::exchange::{Exchange, Mode, OrderEvent, OrderEventKind, account_id};
pub use crate::exchange::{ExchangeError, GRID_OPERATOR, MAX_BALANCE, OrderSide, UTILITY};
use crate::ingest::energy_bound_wh;
use crate::pipeline::LiveEvent;
pub use crate::settings::MarketConfig;
use crate::settings::{StoredSettings, StoredSettingsError};

use crate::store::{SlotStatus, Store, StoreError};

mod error;
mod funding;
mod gate;
mod log;
mod metrics;
mod orders;
mod settle;

pub use error::MarketError;
pub use funding::ChainMoney;
pub use metrics::{MarketMetrics, ReasonCounts};
pub use orders::NewOrder;

use log::{GROUP_COMMIT, LogFailure, LogJob, LogWrite, log_writer};

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
