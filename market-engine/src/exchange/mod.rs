//! The exchange's state, pure and synchronous: the books of open slots, the orders they hold,
//! every account's funds, and the next order id. No IO, no clock, no async.
//!
//! Design (as rumqttc's `state.rs` keeps the protocol apart from the event loop): the live path
//! and the replay after a restart call the same [`Exchange::apply`] with the same typed
//! [`OrderEvent`] — the event the order log stores — so a restarted book cannot differ from the
//! one clients were acknowledged against. The only difference between the two is [`Mode`]: a
//! live request is checked against the account's funds first; a replayed event was accepted
//! once and is not checked again (later settlements may have moved the balance).

mod event;
mod funds;

use std::collections::{BTreeMap, HashMap};

use gridshare_core::market::{
    AccountId, AreaId, BookDepth, Community, Mechanism, Order, OrderError, OrderId, Side,
    SlotMarket, Trade,
};

pub use event::{OrderEvent, OrderEventKind, OrderSide};
pub use funds::MAX_BALANCE;
pub(crate) use funds::{Funds, bid_cost};

/// The utility, counterparty of last resort.
pub const UTILITY: AccountId = AccountId(u32::MAX);
/// The grid operator, who receives the community's grid fee.
pub const GRID_OPERATOR: AccountId = AccountId(u32::MAX - 1);

/// Whether an event arrives from a client or from the order log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A client's request: refused if the account cannot pay for it.
    Live,
    /// An event the log holds: it was accepted once and is applied as it was.
    Replay,
}

/// Why the exchange refused a request. Each carries a reason a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The `core` rules refused the order (window, price band, quantity, ...).
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The slot does not trade (outside the calendar, or its gate has closed).
    #[error("slot {slot}: {reason}")]
    NotTrading {
        /// The slot.
        slot: u64,
        /// Why not.
        reason: String,
    },
    /// No such open order, or not the caller's.
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
    /// An amount or quantity beyond what the exchange can represent or allows.
    #[error("{0}")]
    OutOfRange(String),
    /// An account id beyond the range of household accounts.
    #[error("account id {0} out of range")]
    Account(i64),
}

impl ExchangeError {
    /// A stable name of the reason (a metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Order(e) => e.reason(),
            // An account the exchange cannot name trades in no slot.
            Self::NotTrading { .. } | Self::Account(_) => "slot_not_trading",
            Self::UnknownOrder(_) => "unknown_order",
            Self::InsufficientFunds { .. } => "insufficient_funds",
            Self::OutOfRange(_) => "out_of_range",
        }
    }
}

struct OrderInfo {
    slot: u64,
    account: i64,
    /// What the order holds of the account's funds: the most its open energy can cost (bids).
    held: u64,
}

/// The books of open slots, their orders and every account's funds.
pub struct Exchange {
    open: BTreeMap<u64, SlotMarket>,
    orders: HashMap<u64, OrderInfo>,
    next_order_id: u64,
    pub(crate) funds: Funds,
}

impl Default for Exchange {
    fn default() -> Self {
        Self {
            open: BTreeMap::new(),
            orders: HashMap::new(),
            next_order_id: 1,
            funds: Funds::default(),
        }
    }
}

/// A household account as `core` names it.
pub(crate) fn account_id(id: i64) -> Result<AccountId, ExchangeError> {
    u32::try_from(id)
        .ok()
        .filter(|v| *v < GRID_OPERATOR.0)
        .map(AccountId)
        .ok_or(ExchangeError::Account(id))
}

impl Exchange {
    /// The id the next submitted order gets.
    pub fn next_order_id(&self) -> u64 {
        self.next_order_id
    }

    /// Continues ids after `last` (the largest id the order log holds).
    pub fn resume_ids_after(&mut self, last: u64) {
        self.next_order_id = self.next_order_id.max(last.saturating_add(1));
    }

    /// Whether `slot` has an open book.
    pub fn is_open(&self, slot: u64) -> bool {
        self.open.contains_key(&slot)
    }

    /// The number of open books.
    pub fn open_books(&self) -> usize {
        self.open.len()
    }

    /// Open slots whose gate closure is at or before `now_s`.
    pub fn due_gates(&self, now_s: i64) -> Vec<u64> {
        self.open
            .iter()
            .filter(|(_, b)| b.terms().slot.gate_closure <= now_s)
            .map(|(s, _)| *s)
            .collect()
    }

    /// Aggregated depth of a slot's book (empty for a slot without one).
    pub fn depth(&self, slot: u64) -> BookDepth {
        self.open
            .get(&slot)
            .map(SlotMarket::depth)
            .unwrap_or_default()
    }

    /// Applies one order event to `slot` under the rules of `community`, opening the slot's
    /// book if it has none. Everything that can refuse the event is checked before anything
    /// changes: a refused event leaves no trace — in particular no book for a slot that is not
    /// trading. Returns the trades it made at once (continuous mechanisms).
    pub fn apply(
        &mut self,
        slot: u64,
        event: &OrderEvent,
        community: &Community,
        mode: Mode,
    ) -> Result<Vec<Trade>, ExchangeError> {
        let trades = match event {
            OrderEvent::Submit {
                order,
                account,
                side,
                price_per_kwh,
                energy_wh,
                at_s,
                meter: _,
            } => {
                if let Mechanism::Sharing(_) = community.mechanism {
                    return Err(OrderError::NoOrdersWhenSharing {
                        order: OrderId(*order),
                    }
                    .into());
                }
                let owner = account_id(*account)?;
                let id = OrderId(*order);
                let new = match side {
                    OrderSide::Buy => Order::bid(id, owner, AreaId(0), *price_per_kwh, *energy_wh),
                    OrderSide::Sell => Order::ask(id, owner, AreaId(0), *price_per_kwh, *energy_wh),
                };
                let fresh = if self.open.contains_key(&slot) {
                    None
                } else {
                    Some(
                        community
                            .open_slot(slot)
                            .map_err(|e| ExchangeError::NotTrading {
                                slot,
                                reason: e.to_string(),
                            })?,
                    )
                };
                let book = fresh.as_ref().or_else(|| self.open.get(&slot));
                let terms = book
                    .ok_or_else(|| ExchangeError::NotTrading {
                        slot,
                        reason: "not open".into(),
                    })?
                    .terms();
                terms.check_window(id, *at_s)?;
                terms.validate(&new)?;
                if mode == Mode::Live && *side == OrderSide::Buy {
                    let need = bid_cost(*price_per_kwh, *energy_wh)?;
                    self.funds.check(*account, need)?;
                }
                let trades = match fresh {
                    Some(mut book) => {
                        let trades = book.submit(new, *at_s)?;
                        self.open.insert(slot, book);
                        trades
                    }
                    None => self
                        .open
                        .get_mut(&slot)
                        .ok_or(ExchangeError::UnknownOrder(*order))?
                        .submit(new, *at_s)?,
                };
                self.next_order_id = self.next_order_id.max(order.saturating_add(1));
                self.orders.insert(
                    *order,
                    OrderInfo {
                        slot,
                        account: *account,
                        held: 0,
                    },
                );
                trades
            }
            OrderEvent::Cancel {
                order,
                account,
                at_s,
            } => {
                self.owned_open_order(slot, *account, *order)?
                    .cancel(OrderId(*order), *at_s)?;
                self.refresh_hold(*order);
                self.orders.remove(order);
                return Ok(Vec::new());
            }
            OrderEvent::Amend {
                order,
                account,
                price_per_kwh,
                energy_wh,
                at_s,
            } => {
                let book = self.owned_open_order(slot, *account, *order)?;
                if mode == Mode::Live
                    && let Some((Side::Buy, _, _)) = book.open_order(OrderId(*order))
                {
                    let held = self.orders.get(order).map_or(0, |o| o.held);
                    let more = bid_cost(*price_per_kwh, *energy_wh)?.saturating_sub(held);
                    self.funds.check(*account, more)?;
                }
                self.owned_open_order(slot, *account, *order)?.amend(
                    OrderId(*order),
                    *price_per_kwh,
                    *energy_wh,
                    *at_s,
                )?
            }
        };
        self.refresh_hold(event.order());
        for t in &trades {
            self.refresh_hold(t.bid.0);
        }
        self.funds.bought(slot, &trades);
        Ok(trades)
    }

    /// The slot an open order of `account` rests in, if it does.
    pub fn slot_of(&self, account: i64, order: u64) -> Option<u64> {
        self.orders
            .get(&order)
            .filter(|o| o.account == account)
            .map(|o| o.slot)
    }

    /// The book of one of `account`'s open orders in `slot`.
    fn owned_open_order(
        &mut self,
        slot: u64,
        account: i64,
        order: u64,
    ) -> Result<&mut SlotMarket, ExchangeError> {
        if self.slot_of(account, order) != Some(slot) {
            return Err(ExchangeError::UnknownOrder(order));
        }
        self.open
            .get_mut(&slot)
            .ok_or(ExchangeError::UnknownOrder(order))
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

    /// Takes a slot's book out to close its gate; its orders keep their holds until
    /// [`Exchange::gate_closed`] (or [`Exchange::forget_slot`] when the closure is not stored).
    pub fn take_book(&mut self, slot: u64) -> Option<SlotMarket> {
        self.open.remove(&slot)
    }

    /// After a slot's gate closure was stored: its orders expire and its trades' cost is held
    /// until settlement.
    pub fn gate_closed(&mut self, slot: u64, trades: &[Trade]) {
        self.drop_orders(slot);
        self.funds.bought(slot, trades);
    }

    /// Forgets everything about `slot` — its book, its orders and their holds, its purchases —
    /// before it is rebuilt from the log.
    pub fn forget_slot(&mut self, slot: u64) {
        self.open.remove(&slot);
        self.drop_orders(slot);
        self.funds.release_bought(slot);
    }

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::settings::{MarketConfig, MechanismName};

    /// A request a client might make.
    #[derive(Debug, Clone)]
    enum Request {
        Submit {
            account: i64,
            slot: u64,
            side: OrderSide,
            price: u64,
            energy: u64,
        },
        Cancel {
            account: i64,
            nth: usize,
        },
        Amend {
            account: i64,
            nth: usize,
            price: u64,
            energy: u64,
        },
        Deposit {
            account: i64,
            amount: i64,
        },
    }

    fn request() -> impl Strategy<Value = Request> {
        let side = prop_oneof![Just(OrderSide::Buy), Just(OrderSide::Sell)];
        // Prices partly outside the 8 000..=30 000 band, energy partly zero: refusals too.
        prop_oneof![
            5 => (0..4i64, 0..3u64, side, 7_000..31_000u64, 0..4_000u64).prop_map(
                |(account, slot, side, price, energy)| Request::Submit { account, slot, side, price, energy }
            ),
            2 => (0..4i64, 0..20usize).prop_map(|(account, nth)| Request::Cancel { account, nth }),
            2 => (0..4i64, 0..20usize, 7_000..31_000u64, 0..4_000u64).prop_map(
                |(account, nth, price, energy)| Request::Amend { account, nth, price, energy }
            ),
            1 => (0..4i64, 1..200_000i64).prop_map(|(account, amount)| Request::Deposit { account, amount }),
        ]
    }

    /// Everything observable of an exchange, to compare two of them.
    fn observe(x: &Exchange) -> impl PartialEq + std::fmt::Debug + use<> {
        let mut orders: Vec<_> = x
            .orders
            .iter()
            .map(|(id, o)| (*id, o.slot, o.account, o.held))
            .collect();
        orders.sort_unstable();
        let depths: Vec<_> = x
            .open
            .iter()
            .map(|(slot, book)| (*slot, format!("{:?}", book.depth())))
            .collect();
        (x.next_order_id, orders, depths, x.funds.clone())
    }

    fn run(mechanism: MechanismName, requests: &[Request]) {
        let config = MarketConfig {
            mechanism,
            ..MarketConfig::default()
        };
        let community = config.community().unwrap();
        let now = 1_800_000_000i64;
        let first = community.calendar.slot_delivering_at(now + 3_600).unwrap();
        let mut live = Exchange::default();
        let mut log: Vec<(u64, OrderEvent)> = Vec::new();
        let mut deposits: BTreeMap<i64, i64> = BTreeMap::new();
        for (i, r) in requests.iter().enumerate() {
            let at_s = now + i64::try_from(i).unwrap();
            let event = match r {
                Request::Deposit { account, amount } => {
                    live.funds.credit(*account, *amount).unwrap();
                    *deposits.entry(*account).or_default() += amount;
                    continue;
                }
                Request::Submit {
                    account,
                    slot,
                    side,
                    price,
                    energy,
                } => (
                    first + slot,
                    OrderEvent::Submit {
                        order: live.next_order_id(),
                        account: *account,
                        meter: format!("m{account}"),
                        side: *side,
                        price_per_kwh: *price,
                        energy_wh: *energy,
                        at_s,
                    },
                ),
                Request::Cancel { account, nth } | Request::Amend { account, nth, .. } => {
                    let mine: Vec<u64> = {
                        let mut ids: Vec<u64> = live
                            .orders
                            .iter()
                            .filter(|(_, o)| o.account == *account)
                            .map(|(id, _)| *id)
                            .collect();
                        ids.sort_unstable();
                        ids
                    };
                    let Some(&order) = mine.get(nth % mine.len().max(1)) else {
                        continue;
                    };
                    let slot = live.slot_of(*account, order).unwrap();
                    let event = match r {
                        Request::Amend { price, energy, .. } => OrderEvent::Amend {
                            order,
                            account: *account,
                            price_per_kwh: *price,
                            energy_wh: *energy,
                            at_s,
                        },
                        _ => OrderEvent::Cancel {
                            order,
                            account: *account,
                            at_s,
                        },
                    };
                    (slot, event)
                }
            };
            let before = observe(&live);
            match live.apply(event.0, &event.1, &community, Mode::Live) {
                Ok(_) => log.push(event),
                Err(_) => assert_eq!(observe(&live), before, "a refused event changes nothing"),
            }
            for account in 0..4 {
                assert!(
                    live.funds.available(account) >= 0,
                    "account {account} spent more than it has"
                );
            }
        }

        // The replay after a restart: the deposits as the database sums them, then the log.
        let mut replayed = Exchange::default();
        for (account, amount) in &deposits {
            replayed.funds.book(*account, *amount).unwrap();
        }
        for (slot, event) in &log {
            replayed
                .apply(*slot, event, &community, Mode::Replay)
                .expect("an event accepted live is accepted again");
        }
        assert_eq!(observe(&replayed), observe(&live));

        // Gate closure of every slot gives the same trades and funds on both.
        let later = now + 86_400;
        for x in [&mut live, &mut replayed] {
            for slot in x.due_gates(later) {
                let closure = x.take_book(slot).unwrap().close_gate();
                x.gate_closed(slot, &closure.trades);
            }
            assert!(x.orders.is_empty() && x.open.is_empty());
        }
        assert_eq!(observe(&replayed), observe(&live));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The live path and the replay apply the same events through the same code: a
        /// restarted exchange equals the one clients were acknowledged against, books, holds,
        /// purchases and ids alike.
        #[test]
        fn replay_rebuilds_exactly_what_the_live_path_built(
            requests in proptest::collection::vec(request(), 1..80),
            continuous in any::<bool>(),
        ) {
            let mechanism = if continuous { MechanismName::Continuous } else { MechanismName::Call };
            run(mechanism, &requests);
        }
    }
}
