//! The community's market: the `core` mechanisms per delivery slot, an order log on disk, and
//! the scheduler that closes gates and settles delivered slots on wall-clock time.
//!
//! Design: every accepted submit, cancel and amend is appended to `order_events` in the same
//! transaction as the trades it made, before the client hears "accepted". The books of open
//! slots live in memory and are rebuilt after a restart by replaying the log through the same
//! deterministic `core` code — so an acknowledged order survives `kill -9` and a continuous
//! trade is never applied twice (the replay re-creates it; only the original is stored).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use gridshare_core::market::{
    AccountId, AreaId, AreaTree, BookDepth, Community, FeeProfile, ImbalancePrices, Mechanism,
    MeterCounters, MeterDelivery, MeterId, Order, OrderError, OrderId, PriceRule, Side,
    SlotCalendar, SlotMarket, Tariff, TimeProfile, Trade, amount_for, settle_slot,
};
use serde::Deserialize;
use sqlx::{AnyPool, Row};
use tokio::sync::{Mutex, broadcast, mpsc, oneshot};

use crate::ingest::energy_bound_wh;
use crate::pipeline::LiveEvent;

use crate::store::{Store, StoreError};

/// The utility, counterparty of last resort.
pub const UTILITY: AccountId = AccountId(u32::MAX);
/// The grid operator, who receives the community's grid fee.
pub const GRID_OPERATOR: AccountId = AccountId(u32::MAX - 1);

/// Market settings of the community.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketConfig {
    /// `call` (uniform price at gate closure), `continuous` (pay-as-bid) or `pay-as-offer`.
    pub mechanism: String,
    /// For `call`: `midpoint`, `k-factor`, `marginal-bid` or `marginal-ask`.
    pub price_rule: String,
    /// For `k-factor`: k in basis points (5000 = 0.5).
    pub k_basis_points: u16,
    /// Slot length, seconds.
    pub slot_length_s: u32,
    /// The order window opens this long before delivery.
    pub window_opens_before_s: u32,
    /// Gate closure this long before delivery.
    pub gate_closure_before_s: u32,
    /// Settlement this long after delivery ends (readings must have arrived).
    pub settlement_after_s: u32,
    /// Retail tariff, token units per kWh: the price ceiling.
    pub retail_per_kwh: u64,
    /// Feed-in tariff, token units per kWh: the price floor.
    pub feed_in_per_kwh: u64,
    /// Grid fee of the community's market, token units per kWh.
    pub grid_fee_per_kwh: u64,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            mechanism: "call".into(),
            price_rule: "k-factor".into(),
            k_basis_points: 5000,
            slot_length_s: 900,
            window_opens_before_s: 86_400,
            gate_closure_before_s: 300,
            settlement_after_s: 900,
            retail_per_kwh: 30_000,
            feed_in_per_kwh: 8_000,
            grid_fee_per_kwh: 1_000,
        }
    }
}

impl MarketConfig {
    /// The `core` community these settings describe.
    pub fn community(&self) -> Result<Community, String> {
        let mechanism = match self.mechanism.as_str() {
            "continuous" => Mechanism::ContinuousDoubleAuction,
            "pay-as-offer" => Mechanism::PayAsOffer,
            "call" => Mechanism::CallAuction(match self.price_rule.as_str() {
                "midpoint" => PriceRule::Midpoint,
                "k-factor" => PriceRule::KFactor {
                    basis_points: self.k_basis_points,
                },
                "marginal-bid" => PriceRule::MarginalBid,
                "marginal-ask" => PriceRule::MarginalAsk,
                other => {
                    return Err(format!(
                        "market.price_rule {other:?}: expected midpoint, k-factor, marginal-bid or marginal-ask"
                    ));
                }
            }),
            other => {
                return Err(format!(
                    "market.mechanism {other:?}: expected call, continuous or pay-as-offer"
                ));
            }
        };
        if self.k_basis_points > 10_000 {
            return Err("market.k_basis_points: at most 10000 (k = 1)".into());
        }
        if self.feed_in_per_kwh > self.retail_per_kwh {
            return Err("market.feed_in_per_kwh must not exceed market.retail_per_kwh".into());
        }
        let calendar = SlotCalendar::new(
            0,
            self.slot_length_s,
            self.window_opens_before_s,
            self.gate_closure_before_s,
            self.settlement_after_s,
        )
        .map_err(|e| format!("market: {e}"))?;
        let fee = if self.grid_fee_per_kwh == 0 {
            FeeProfile::Free
        } else {
            FeeProfile::PerKwh(TimeProfile::constant(self.grid_fee_per_kwh))
        };
        let areas = AreaTree::new(fee, GRID_OPERATOR).map_err(|e| format!("market: {e}"))?;
        Ok(Community {
            calendar,
            tariff: Tariff::flat(self.retail_per_kwh, self.feed_in_per_kwh),
            imbalance: ImbalancePrices::default(),
            areas,
            utility: UTILITY,
            mechanism,
        })
    }
}

/// Buy or sell, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderSide {
    /// A bid.
    Buy,
    /// An ask.
    Sell,
}

impl OrderSide {
    fn as_str(self) -> &'static str {
        match self {
            Self::Buy => "buy",
            Self::Sell => "sell",
        }
    }
}

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
    /// What new bids and withdrawals may use: balance less both holds.
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
            Self::UnknownOrder(_) => "unknown_order",
            Self::InsufficientFunds { .. } => "insufficient_funds",
            Self::OutOfRange(_) => "out_of_range",
            Self::ReferenceReused(_) => "reference_reused",
            Self::Store(_) => "storage",
        }
    }
}

impl From<sqlx::Error> for MarketError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(e))
    }
}

/// One entry of the order log, as written.
#[derive(Debug, Clone)]
struct LogEntry {
    order: u64,
    kind: &'static str,
    account: i64,
    meter: String,
    side: &'static str,
    price: u64,
    energy: u64,
    at_s: i64,
}

impl LogEntry {
    /// A cancel or amend of an existing order (side and meter are the original order's).
    fn change(
        order: u64,
        kind: &'static str,
        account: i64,
        price: u64,
        energy: u64,
        at_s: i64,
    ) -> Self {
        Self {
            order,
            kind,
            account,
            meter: String::new(),
            side: "",
            price,
            energy,
            at_s,
        }
    }
}

/// What the log writer commits for one request, in the order requests took the book lock.
#[derive(Debug)]
enum LogWrite {
    /// An order event and the trades it made.
    Event {
        slot: u64,
        entry: LogEntry,
        trades: Vec<Trade>,
    },
    /// A gate closure: the call auction's trades and the slot's row.
    Closure {
        slot: u64,
        trades: Vec<Trade>,
        clearing_price: Option<u64>,
    },
}

struct LogJob {
    write: LogWrite,
    done: oneshot::Sender<Result<(), String>>,
}

/// Largest number of requests committed in one transaction.
const GROUP_COMMIT: usize = 256;

/// Design: group commit. Requests are applied to the in-memory book under the lock and queued
/// here in that same order; one transaction commits every queued request, then each caller is
/// answered. One fsync serves many orders, and the log order is the order the book saw. A failed
/// transaction fails every request still queued, so nothing after a failure is committed
/// before the callers have rebuilt their books from the log.
async fn log_writer(store: Store, mut rx: mpsc::Receiver<LogJob>) {
    let mut jobs = Vec::with_capacity(GROUP_COMMIT);
    while rx.recv_many(&mut jobs, GROUP_COMMIT).await > 0 {
        let result = commit(&store, &jobs).await;
        let failed = result.is_err();
        let outcome = result.map_err(|e| e.to_string());
        for job in jobs.drain(..) {
            let _ = job.done.send(outcome.clone());
        }
        if failed {
            while let Ok(job) = rx.try_recv() {
                let _ = job
                    .done
                    .send(Err("an earlier order-log write failed; retry".into()));
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
                entry,
                trades,
            } => {
                log_event(&mut tx, *slot, entry).await?;
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

struct OrderInfo {
    slot: u64,
    account: i64,
    /// What the order holds of the account's funds: the most its open energy can cost (bids).
    held: u64,
}

/// What each account may spend. Design: kept in memory beside the books and changed under the
/// same lock, so a bid is checked against exactly the funds the orders before it left; rebuilt
/// from the database (funding, ledger, trades) and the order log after a restart.
#[derive(Debug, Default)]
struct Funds {
    /// Deposits less withdrawals plus settled ledger amounts, per account.
    balance: HashMap<i64, i64>,
    /// Held per account: by open bids plus by purchases in slots not yet settled.
    held: HashMap<i64, u64>,
    /// What each buyer's trades cost, per slot not yet settled.
    bought: BTreeMap<u64, HashMap<i64, u64>>,
}

/// A bid's most possible cost: its open energy at its limit price (which includes the fees,
/// and of which each trade pays at most its floor).
fn bid_cost(price_per_kwh: u64, energy_wh: u64) -> Result<u64, MarketError> {
    amount_for(energy_wh, price_per_kwh).map_err(|_| {
        MarketError::OutOfRange(format!(
            "{energy_wh} Wh at {price_per_kwh} per kWh does not fit in a token amount"
        ))
    })
}

/// The largest balance an account may hold, token units (10^15). Deposits beyond it are
/// refused, so balances, holds and their sums always fit in 64 bits — in memory and in the
/// database's SUM when the engine starts.
pub const MAX_BALANCE: i64 = 1_000_000_000_000_000;

impl Funds {
    fn available(&self, account: i64) -> i64 {
        let balance = i128::from(self.balance.get(&account).copied().unwrap_or(0));
        let held = i128::from(self.held.get(&account).copied().unwrap_or(0));
        i64::try_from(balance - held).unwrap_or(i64::MIN)
    }

    /// Refuses `need` if the account cannot cover it on top of what it already holds.
    fn check(&self, account: i64, need: u64) -> Result<(), MarketError> {
        let available = self.available(account);
        if need > 0 && i128::from(need) > i128::from(available) {
            return Err(MarketError::InsufficientFunds { need, available });
        }
        Ok(())
    }

    fn hold(&mut self, account: i64, old: u64, new: u64) {
        let held = self.held.entry(account).or_default();
        *held = held.saturating_sub(old).saturating_add(new);
    }

    fn bought(&mut self, slot: u64, trades: &[Trade]) {
        for t in trades {
            let buyer = i64::from(t.buyer.0);
            *self
                .bought
                .entry(slot)
                .or_default()
                .entry(buyer)
                .or_default() += t.amounts.buyer_pays;
            self.hold(buyer, 0, t.amounts.buyer_pays);
        }
    }

    /// Forgets a slot's purchases (settled, or about to be reloaded).
    fn release_bought(&mut self, slot: u64) {
        for (account, cost) in self.bought.remove(&slot).unwrap_or_default() {
            self.hold(account, cost, 0);
        }
    }

    /// The balance after adding `amount` (negative: taking it away), if it stays within
    /// ±[`MAX_BALANCE`]; changes nothing.
    fn credited(&self, account: i64, amount: i64) -> Result<i64, MarketError> {
        let balance = self.balance.get(&account).copied().unwrap_or(0);
        balance
            .checked_add(amount)
            .filter(|b| b.unsigned_abs() <= MAX_BALANCE.unsigned_abs())
            .ok_or_else(|| {
                MarketError::OutOfRange(format!(
                    "a balance of {balance} plus {amount} leaves the range of ±{MAX_BALANCE} token units"
                ))
            })
    }

    /// Adds `amount`; refused, changing nothing, as [`Funds::credited`] refuses it.
    fn credit(&mut self, account: i64, amount: i64) -> Result<(), MarketError> {
        let new = self.credited(account, amount)?;
        self.balance.insert(account, new);
        Ok(())
    }

    /// The balance after booking what the ledger says (a settled slot, or the sums read at
    /// start-up): only the 64-bit range is checked, since the ledger is the record and memory
    /// must follow it. Changes nothing.
    fn booked(&self, account: i64, amount: i64) -> Result<i64, MarketError> {
        let balance = self.balance.get(&account).copied().unwrap_or(0);
        balance.checked_add(amount).ok_or_else(|| {
            MarketError::OutOfRange(format!("account {account}'s balance overflows"))
        })
    }

    /// Books `amount`; refused, changing nothing, as [`Funds::booked`] refuses it.
    fn book(&mut self, account: i64, amount: i64) -> Result<(), MarketError> {
        let new = self.booked(account, amount)?;
        self.balance.insert(account, new);
        Ok(())
    }
}

struct Books {
    open: BTreeMap<u64, SlotMarket>,
    orders: HashMap<u64, OrderInfo>,
    next_order_id: u64,
    funds: Funds,
}

impl Books {
    /// The slot and book of one of `account`'s open orders.
    fn owned_open_order(
        &mut self,
        account: i64,
        order: u64,
    ) -> Result<(u64, &mut SlotMarket), MarketError> {
        let slot = match self.orders.get(&order) {
            Some(info) if info.account == account => info.slot,
            _ => return Err(MarketError::UnknownOrder(order)),
        };
        let book = self
            .open
            .get_mut(&slot)
            .ok_or(MarketError::UnknownOrder(order))?;
        Ok((slot, book))
    }

    /// Starts tracking an accepted order (its hold is set by [`Books::refresh_hold`]).
    fn track(&mut self, order: u64, slot: u64, account: i64) {
        self.orders.insert(
            order,
            OrderInfo {
                slot,
                account,
                held: 0,
            },
        );
    }

    /// Sets what an order holds from the book's view of it: a bid's open energy at its limit
    /// price, nothing for an ask or an order no longer open.
    fn refresh_hold(&mut self, order: u64) {
        let Some(info) = self.orders.get_mut(&order) else {
            return;
        };
        let new = self
            .open
            .get(&info.slot)
            .and_then(|b| b.open_order(OrderId(order)))
            .filter(|(side, _, _)| *side == Side::Buy)
            // An open bid passed `SlotTerms::validate`, which checks that this amount fits.
            .map_or(0, |(_, price, wh)| bid_cost(price, wh).unwrap_or(u64::MAX));
        self.funds.hold(info.account, info.held, new);
        info.held = new;
    }

    /// After an event in `slot`: the holds of the order and of every bid its trades filled,
    /// and the purchases.
    fn after_event(&mut self, slot: u64, order: u64, trades: &[Trade]) {
        self.refresh_hold(order);
        for t in trades {
            self.refresh_hold(t.bid.0);
        }
        self.funds.bought(slot, trades);
    }

    /// Drops a slot's orders and their holds (gate closed, or the slot is being replayed).
    fn drop_orders(&mut self, slot: u64) {
        let funds = &mut self.funds;
        self.orders.retain(|_, o| {
            if o.slot == slot {
                funds.hold(o.account, o.held, 0);
                false
            } else {
                true
            }
        });
    }
}

/// The market of one community.
pub struct Market {
    /// The rules by the slot they take effect from, ascending; the first applies from slot 0.
    versions: std::sync::RwLock<Vec<(u64, MarketConfig, Community)>>,
    store: Store,
    books: Mutex<Books>,
    live: broadcast::Sender<LiveEvent>,
    log: mpsc::Sender<LogJob>,
    /// Counters for `/metrics`.
    pub metrics: MarketMetrics,
}

fn account_id(id: i64) -> Result<AccountId, MarketError> {
    u32::try_from(id)
        .ok()
        .filter(|v| *v < GRID_OPERATOR.0)
        .map(AccountId)
        .ok_or_else(|| MarketError::Slot(format!("account id {id} out of range")))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A u64 for a row the order log writes: money, energy and ids are refused, never clipped,
/// when beyond the database's i64 (the write fails, so the order is refused and its book
/// rebuilt from the log).
fn db(v: u64, what: &'static str) -> Result<i64, sqlx::Error> {
    i64::try_from(v).map_err(|_| {
        sqlx::Error::Encode(
            format!("{what} {v} is beyond the largest value the engine stores").into(),
        )
    })
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
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
        let rows =
            sqlx::query("SELECT from_slot, settings FROM market_settings ORDER BY from_slot")
                .fetch_all(store.pool())
                .await?;
        for row in rows {
            let text: String = row.get(1);
            let settings: MarketConfig = serde_json::from_str(&text).map_err(|e| {
                MarketError::Slot(format!("stored market settings unreadable: {e}"))
            })?;
            let community = settings.community().map_err(MarketError::Slot)?;
            versions.push((u64_of(row.get(0)), settings, community));
        }
        let (log, log_rx) = mpsc::channel(4 * GROUP_COMMIT);
        tokio::spawn(log_writer(store.clone(), log_rx));
        let market = Self {
            versions: std::sync::RwLock::new(versions),
            metrics: MarketMetrics::default(),
            log,
            live: broadcast::channel(1024).0,
            store,
            books: Mutex::new(Books {
                open: BTreeMap::new(),
                orders: HashMap::new(),
                next_order_id: 1,
                funds: Funds::default(),
            }),
        };
        {
            let pool = market.store.pool();
            let max: Option<i64> = sqlx::query("SELECT MAX(order_id) FROM order_events")
                .fetch_one(pool)
                .await?
                .get(0);
            let mut books = market.books.lock().await;
            books.next_order_id = max.map_or(1, |m| u64_of(m) + 1);
            let balances = sqlx::query(
                "SELECT account_id, CAST(SUM(amount) AS BIGINT) FROM \
                 (SELECT account_id, amount FROM funding \
                  UNION ALL SELECT account_id, amount FROM ledger WHERE account_id >= 0) AS f \
                 GROUP BY account_id",
            )
            .fetch_all(pool)
            .await?;
            for row in balances {
                books.funds.book(row.try_get(0)?, row.try_get(1)?)?;
            }
            for slot in slot_list(
                pool,
                "SELECT DISTINCT slot FROM trades WHERE slot NOT IN \
                 (SELECT slot FROM slots WHERE status = 'settled')",
            )
            .await?
            {
                market.reload_bought(&mut books, slot).await?;
            }
            for slot in slot_list(
                pool,
                "SELECT DISTINCT slot FROM order_events WHERE slot NOT IN (SELECT slot FROM slots) ORDER BY slot",
            )
            .await?
            {
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
            return Err(MarketError::Slot(format!(
                "market.slot_length_s: the community's slots are {} s long and slot indices count \
                 them, so the length cannot change; a new community (its own database) can have \
                 another",
                base.slot_length_s
            )));
        }
        let community = settings.community().map_err(MarketError::Slot)?;
        let lead = settings
            .window_opens_before_s
            .max(base.window_opens_before_s);
        let horizon = now_s.saturating_add(i64::from(lead));
        let from = calendar.slot_delivering_at(horizon).map_or(0, |s| s + 1);
        let text =
            serde_json::to_string(&settings).map_err(|e| MarketError::Slot(e.to_string()))?;
        sqlx::query(
            "INSERT INTO market_settings (from_slot, settings, created_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (from_slot) DO UPDATE SET settings = excluded.settings, created_ms = excluded.created_ms",
        )
        .bind(i64_of(from))
        .bind(text)
        .bind(now_s.saturating_mul(1000))
        .execute(self.store.pool())
        .await?;
        let mut versions = self.versions.write().unwrap_or_else(|e| e.into_inner());
        versions.retain(|(f, _, _)| *f < from);
        versions.push((from, settings, community));
        Ok(from)
    }

    /// Reloads what a slot's stored trades cost their buyers.
    async fn reload_bought(&self, books: &mut Books, slot: u64) -> Result<(), MarketError> {
        books.funds.release_bought(slot);
        let trades = load_trades(self.store.pool(), slot).await?;
        books.funds.bought(slot, &trades);
        Ok(())
    }

    /// Rebuilds one slot's book, its orders' holds and its purchases from the log.
    async fn replay(&self, books: &mut Books, slot: u64) -> Result<(), MarketError> {
        let mut book = self
            .community_for(slot)
            .open_slot(slot)
            .map_err(|e| MarketError::Slot(e.to_string()))?;
        books.drop_orders(slot);
        let events = sqlx::query(
            "SELECT order_id, kind, account_id, side, price_per_kwh, energy_wh, at_s \
             FROM order_events WHERE slot = $1 ORDER BY seq",
        )
        .bind(i64_of(slot))
        .fetch_all(self.store.pool())
        .await?;
        for e in events {
            let id = u64_of(e.get(0));
            let kind: String = e.get(1);
            let account: i64 = e.get(2);
            let side: String = e.get(3);
            let price = u64_of(e.get(4));
            let energy = u64_of(e.get(5));
            let at: i64 = e.get(6);
            // Each event was accepted once by the same deterministic code; it is accepted again.
            let outcome = match kind.as_str() {
                "submit" => {
                    let owner = account_id(account)?;
                    let order = if side == "buy" {
                        Order::bid(OrderId(id), owner, AreaId(0), price, energy)
                    } else {
                        Order::ask(OrderId(id), owner, AreaId(0), price, energy)
                    };
                    books.track(id, slot, account);
                    book.submit(order, at).map(drop)
                }
                "cancel" => book.cancel(OrderId(id), at),
                _ => book.amend(OrderId(id), price, energy, at).map(drop),
            };
            if let Err(e) = outcome {
                tracing::error!(target: "market", slot, order = id, "replayed event refused: {e}");
            }
        }
        books.open.insert(slot, book);
        let ids: Vec<u64> = books
            .orders
            .iter()
            .filter(|(_, o)| o.slot == slot)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            books.refresh_hold(id);
        }
        self.reload_bought(books, slot).await
    }

    /// Places an order (the caller has checked that the meter belongs to the account).
    /// Returns the order id and the trades it made at once (continuous mechanisms).
    pub async fn submit(
        &self,
        new: &NewOrder,
        now_s: i64,
    ) -> Result<(u64, Vec<Trade>), MarketError> {
        let NewOrder {
            account,
            ref meter,
            slot,
            side,
            price_per_kwh,
            energy_wh,
        } = *new;
        let owner = account_id(account)?;
        let mut books = self.books.lock().await;
        let id = books.next_order_id;
        let order = match side {
            OrderSide::Buy => Order::bid(OrderId(id), owner, AreaId(0), price_per_kwh, energy_wh),
            OrderSide::Sell => Order::ask(OrderId(id), owner, AreaId(0), price_per_kwh, energy_wh),
        };
        // Everything that can refuse the order is checked before anything changes: a refused
        // request leaves no trace, in particular no book for a slot that is not trading
        // (a phantom book would be closed, settled and sent on chain empty).
        let refused = |e: MarketError| self.refused(e);
        // A slot without a book gets one here, kept only if the order is taken.
        let fresh = if books.open.contains_key(&slot) {
            None
        } else {
            Some(
                self.community_for(slot)
                    .open_slot(slot)
                    .map_err(|e| refused(MarketError::Slot(format!("slot {slot}: {e}"))))?,
            )
        };
        let terms = match (&fresh, books.open.get(&slot)) {
            (Some(book), _) | (None, Some(book)) => book.terms(),
            (None, None) => {
                return Err(refused(MarketError::Slot(format!(
                    "slot {slot} is not open"
                ))));
            }
        };
        terms
            .check_window(OrderId(id), now_s)
            .and_then(|()| terms.validate(&order))
            .map_err(|e| refused(e.into()))?;
        if side == OrderSide::Buy {
            let need = bid_cost(price_per_kwh, energy_wh).map_err(refused)?;
            books.funds.check(account, need).map_err(refused)?;
        }
        let trades = match fresh {
            None => books
                .open
                .get_mut(&slot)
                .ok_or_else(|| refused(MarketError::Slot(format!("slot {slot} is not open"))))?
                .submit(order, now_s)
                .map_err(|e| refused(e.into()))?,
            Some(mut book) => {
                if self.slot_closed(slot).await? {
                    return Err(refused(MarketError::Slot(format!(
                        "slot {slot}: gate already closed"
                    ))));
                }
                let trades = book.submit(order, now_s).map_err(|e| refused(e.into()))?;
                books.open.insert(slot, book);
                trades
            }
        };
        let entry = LogEntry {
            order: id,
            kind: "submit",
            account,
            meter: meter.clone(),
            side: side.as_str(),
            price: price_per_kwh,
            energy: energy_wh,
            at_s: now_s,
        };
        let pending = self.queue_event(slot, entry, trades.clone()).await?;
        books.next_order_id += 1;
        books.track(id, slot, account);
        books.after_event(slot, id, &trades);
        drop(books);
        self.committed(slot, pending).await?;
        self.metrics.orders_accepted.fetch_add(1, Ordering::Relaxed);
        let _ = self.live.send(LiveEvent::Order {
            account,
            order_id: Some(id),
            slot,
            side: side.as_str(),
            energy_wh,
            price_per_kwh,
        });
        self.announce_trades(slot, &trades, None);
        Ok((id, trades))
    }

    /// Counts a refused order, cancel or amend by its reason.
    fn refused(&self, e: MarketError) -> MarketError {
        self.metrics.orders_rejected.add(e.reason());
        e
    }

    /// Cancels one of `account`'s open orders.
    pub async fn cancel(&self, account: i64, order: u64, now_s: i64) -> Result<(), MarketError> {
        let mut books = self.books.lock().await;
        let (slot, book) = books
            .owned_open_order(account, order)
            .map_err(|e| self.refused(e))?;
        book.cancel(OrderId(order), now_s)
            .map_err(|e| self.refused(e.into()))?;
        let pending = self
            .queue_event(
                slot,
                LogEntry::change(order, "cancel", account, 0, 0, now_s),
                Vec::new(),
            )
            .await?;
        books.refresh_hold(order);
        books.orders.remove(&order);
        drop(books);
        self.committed(slot, pending).await
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
        let mut books = self.books.lock().await;
        let (_, book) = books
            .owned_open_order(account, order)
            .map_err(|e| self.refused(e))?;
        if let Some((Side::Buy, _, _)) = book.open_order(OrderId(order)) {
            let held = books.orders.get(&order).map_or(0, |o| o.held);
            let more = bid_cost(price_per_kwh, energy_wh)
                .map_err(|e| self.refused(e))?
                .saturating_sub(held);
            books
                .funds
                .check(account, more)
                .map_err(|e| self.refused(e))?;
        }
        let (slot, book) = books.owned_open_order(account, order)?;
        let trades = book
            .amend(OrderId(order), price_per_kwh, energy_wh, now_s)
            .map_err(|e| self.refused(e.into()))?;
        let pending = self
            .queue_event(
                slot,
                LogEntry::change(order, "amend", account, price_per_kwh, energy_wh, now_s),
                trades.clone(),
            )
            .await?;
        books.after_event(slot, order, &trades);
        drop(books);
        self.committed(slot, pending).await?;
        Ok(trades)
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
    ) -> Result<oneshot::Receiver<Result<(), String>>, MarketError> {
        let (done, rx) = oneshot::channel();
        self.log
            .send(LogJob { write, done })
            .await
            .map_err(|_| MarketError::Slot("the order log writer stopped".into()))?;
        Ok(rx)
    }

    /// Queues an order event and the trades it made.
    async fn queue_event(
        &self,
        slot: u64,
        entry: LogEntry,
        trades: Vec<Trade>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, MarketError> {
        self.queue(LogWrite::Event {
            slot,
            entry,
            trades,
        })
        .await
    }

    /// Waits for a queued write; on failure rebuilds the slot's book from the log.
    async fn committed(
        &self,
        slot: u64,
        rx: oneshot::Receiver<Result<(), String>>,
    ) -> Result<(), MarketError> {
        let outcome = rx
            .await
            .unwrap_or_else(|_| Err("the order log writer stopped".into()));
        if let Err(e) = outcome {
            let mut books = self.books.lock().await;
            self.replay(&mut books, slot).await?;
            return Err(MarketError::Slot(format!("order not stored: {e}")));
        }
        Ok(())
    }

    async fn slot_closed(&self, slot: u64) -> Result<bool, MarketError> {
        Ok(sqlx::query("SELECT 1 FROM slots WHERE slot = $1")
            .bind(i64_of(slot))
            .fetch_optional(self.store.pool())
            .await?
            .is_some())
    }

    /// Closes the gate of every open slot whose gate closure has passed: the call auction
    /// clears, remaining orders expire. Returns the slots closed.
    pub async fn close_due_gates(&self, now_s: i64) -> Result<Vec<u64>, MarketError> {
        let mut books = self.books.lock().await;
        let due: Vec<u64> = books
            .open
            .iter()
            .filter(|(_, b)| b.terms().slot.gate_closure <= now_s)
            .map(|(s, _)| *s)
            .collect();
        for slot in &due {
            let Some(book) = books.open.remove(slot) else {
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
            let outcome = pending
                .await
                .unwrap_or_else(|_| Err("the order log writer stopped".into()));
            if let Err(e) = outcome {
                self.replay(&mut books, *slot).await?;
                return Err(MarketError::Slot(format!(
                    "slot {slot}: gate closure not stored: {e}"
                )));
            }
            books.drop_orders(*slot);
            books.funds.bought(*slot, &closure.trades);
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

    /// Net balance of an account over all settled slots.
    pub async fn balance(&self, account: i64) -> Result<i64, MarketError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger WHERE account_id = $1",
        )
        .bind(account)
        .fetch_one(self.store.pool())
        .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// An account's money as the market sees it.
    pub async fn funds(&self, account: i64) -> FundsView {
        let books = self.books.lock().await;
        let funds = &books.funds;
        let unsettled: u64 = funds.bought.values().filter_map(|m| m.get(&account)).sum();
        let held = funds.held.get(&account).copied().unwrap_or(0);
        FundsView {
            balance: funds.balance.get(&account).copied().unwrap_or(0),
            held_by_bids: held.saturating_sub(unsettled),
            held_by_purchases: unsettled,
            available: funds.available(account),
        }
    }

    /// What `account` may still spend on bids.
    pub async fn available(&self, account: i64) -> i64 {
        self.books.lock().await.funds.available(account)
    }

    /// Credits a deposit (positive `amount`) or debits a withdrawal (negative, refused beyond
    /// what is available). A `reference` already used by the account for the same amount
    /// changes nothing (a retried request); for another amount it is refused. Returns the
    /// account's funds afterwards.
    pub async fn fund(
        &self,
        account: i64,
        amount: i64,
        reference: &str,
        now_ms: u64,
    ) -> Result<FundsView, MarketError> {
        if amount == 0 {
            return Err(MarketError::Slot("amount must not be zero".into()));
        }
        {
            let mut books = self.books.lock().await;
            let pool = self.store.pool();
            let existing =
                sqlx::query("SELECT amount FROM funding WHERE account_id = $1 AND reference = $2")
                    .bind(account)
                    .bind(reference)
                    .fetch_optional(pool)
                    .await?;
            match existing {
                Some(row) if row.get::<i64, _>(0) == amount => {}
                Some(_) => return Err(MarketError::ReferenceReused(reference.to_owned())),
                None => {
                    if amount < 0 {
                        books.funds.check(account, amount.unsigned_abs())?;
                    }
                    // Refused before it is written if the balance would leave its range.
                    books.funds.credited(account, amount)?;
                    sqlx::query(
                        "INSERT INTO funding (account_id, amount, reference, created_ms) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(account)
                    .bind(amount)
                    .bind(reference)
                    .bind(i64_of(now_ms))
                    .execute(pool)
                    .await?;
                    books.funds.credit(account, amount)?;
                    tracing::info!(target: "market", account, amount, reference, "funds moved");
                }
            }
        }
        Ok(self.funds(account).await)
    }

    /// An account's deposits and withdrawals, newest first: `(amount, reference, at ms)`.
    pub async fn funding(
        &self,
        account: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String, i64)>, MarketError> {
        Ok(sqlx::query(
            "SELECT amount, reference, created_ms FROM funding WHERE account_id = $1 \
             ORDER BY id DESC LIMIT $2",
        )
        .bind(account)
        .bind(i64::from(limit))
        .fetch_all(self.store.pool())
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
    }

    /// How many slots have an open book (orders accepted, gate not yet closed).
    pub async fn open_books(&self) -> usize {
        self.books.lock().await.open.len()
    }

    /// The open book of a slot, aggregated per price level (empty once its gate closed).
    pub async fn depth(&self, slot: u64) -> BookDepth {
        self.books
            .lock()
            .await
            .open
            .get(&slot)
            .map(SlotMarket::depth)
            .unwrap_or_default()
    }

    /// Trades of a slot (as stored).
    pub async fn trades(&self, slot: u64) -> Result<Vec<Trade>, MarketError> {
        load_trades(self.store.pool(), slot).await
    }

    /// Status and clearing price of a slot: `open`, `closed` or `settled`.
    pub async fn slot_status(&self, slot: u64) -> Result<(String, Option<u64>), MarketError> {
        let row = sqlx::query("SELECT status, clearing_price FROM slots WHERE slot = $1")
            .bind(i64_of(slot))
            .fetch_optional(self.store.pool())
            .await?;
        Ok(match row {
            Some(r) => (r.get(0), r.get::<Option<i64>, _>(1).map(u64_of)),
            None => ("open".into(), None),
        })
    }
}

/// The slot indices a query selects (its first column).
async fn slot_list(pool: &AnyPool, sql: &'static str) -> Result<Vec<u64>, sqlx::Error> {
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
    e: &LogEntry,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO order_events (slot, order_id, kind, account_id, meter_id, side, price_per_kwh, energy_wh, at_s) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(db(slot, "slot")?)
    .bind(db(e.order, "order")?)
    .bind(e.kind)
    .bind(e.account)
    .bind(e.meter.as_str())
    .bind(e.side)
    .bind(db(e.price, "price")?)
    .bind(db(e.energy, "energy")?)
    .bind(e.at_s)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn store_trade(
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

async fn load_trades(pool: &AnyPool, slot: u64) -> Result<Vec<Trade>, MarketError> {
    let rows = sqlx::query("SELECT trade_json FROM trades WHERE slot = $1 ORDER BY id")
        .bind(db(slot, "slot")?)
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            serde_json::from_str::<Trade>(&r.get::<String, _>(0)).map_err(|e| {
                MarketError::Slot(format!("slot {slot}: stored trade unreadable: {e}"))
            })
        })
        .collect()
}
