//! One slot's market, whatever mechanism the community chose: the engine and the simulator
//! drive this type, so switching mechanism is a configuration change, not a code change.

use super::book::{ContinuousBook, ContinuousKind};
use super::call::{CallAuction, Unmatched};
use super::order::{Order, OrderError, OrderId, Side};
use super::slot::UnixSeconds;
use super::terms::{Community, Mechanism, SlotTerms, TermsError};
use super::trade::Trade;
use serde::{Deserialize, Serialize};

/// An open slot's market.
#[derive(Debug, Clone)]
pub enum SlotMarket {
    /// Continuous double auction or one-sided pay-as-offer: trades happen on submission.
    Continuous(ContinuousBook),
    /// Call auction: orders collect until gate closure, then clear once.
    Call(CallAuction),
    /// A sharing community's slot: no orders; its energy is shared after delivery
    /// ([`share_slot`](super::share_slot)).
    Sharing(SlotTerms),
}

/// What closing a slot's gate produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateClosure {
    /// Slot index.
    pub slot: u64,
    /// Trades made at gate closure: all of a call auction's trades; none for continuous
    /// mechanisms, whose trades were returned as they happened.
    pub trades: Vec<Trade>,
    /// The call auction's uniform price, if it cleared anything.
    pub clearing_price: Option<u64>,
    /// Energy left on orders that expire now; it falls back to the utility through delivery.
    pub unmatched: Vec<Unmatched>,
}

impl Community {
    /// Opens slot `index` with the community's mechanism.
    pub fn open_slot(&self, index: u64) -> Result<SlotMarket, TermsError> {
        let terms = self.terms(index)?;
        Ok(match self.mechanism {
            Mechanism::ContinuousDoubleAuction => {
                SlotMarket::Continuous(ContinuousBook::new(terms, ContinuousKind::TwoSided))
            }
            Mechanism::PayAsOffer => {
                SlotMarket::Continuous(ContinuousBook::new(terms, ContinuousKind::PayAsOffer))
            }
            Mechanism::CallAuction(rule) => SlotMarket::Call(CallAuction::new(terms, rule)),
            Mechanism::Sharing(_) => SlotMarket::Sharing(terms),
        })
    }
}

/// Open energy per price level on each side of a slot's book: bids from the highest price down,
/// asks from the lowest up. Owners are not shown: the book is public, its participants are not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookDepth {
    /// `(price per kWh, open Wh, orders)` of the bids, best first.
    pub bids: Vec<(u64, u64, u32)>,
    /// `(price per kWh, open Wh, orders)` of the asks, best first.
    pub asks: Vec<(u64, u64, u32)>,
}

fn levels(orders: impl Iterator<Item = (u64, u64)>, descending: bool) -> Vec<(u64, u64, u32)> {
    let mut by_price: std::collections::BTreeMap<u64, (u64, u32)> =
        std::collections::BTreeMap::new();
    for (price, wh) in orders {
        let level = by_price.entry(price).or_default();
        level.0 = level.0.saturating_add(wh);
        level.1 = level.1.saturating_add(1);
    }
    let mut out: Vec<_> = by_price
        .into_iter()
        .map(|(p, (wh, n))| (p, wh, n))
        .collect();
    if descending {
        out.reverse();
    }
    out
}

impl SlotMarket {
    /// The open orders aggregated per price level.
    #[must_use]
    pub fn depth(&self) -> BookDepth {
        let open: Vec<(Side, u64, u64)> = match self {
            Self::Continuous(book) => book
                .resting_orders()
                .into_iter()
                .map(|o| (o.side, o.price_per_kwh, o.remaining_wh))
                .collect(),
            Self::Call(auction) => auction
                .orders()
                .map(|o| (o.side, o.price_per_kwh, o.energy_wh))
                .collect(),
            Self::Sharing(_) => Vec::new(),
        };
        let side = |want: Side| {
            open.iter()
                .filter(move |(s, _, _)| *s == want)
                .map(|(_, p, wh)| (*p, *wh))
        };
        BookDepth {
            bids: levels(side(Side::Buy), true),
            asks: levels(side(Side::Sell), false),
        }
    }

    /// An open order's side, limit price per kWh and energy still open (Wh); `None` once it
    /// is filled, cancelled or was never here.
    #[must_use]
    pub fn open_order(&self, id: OrderId) -> Option<(Side, u64, u64)> {
        match self {
            Self::Continuous(book) => book
                .get(id)
                .map(|o| (o.side, o.price_per_kwh, o.remaining_wh)),
            Self::Call(auction) => auction
                .get(id)
                .map(|o| (o.side, o.price_per_kwh, o.energy_wh)),
            Self::Sharing(_) => None,
        }
    }

    /// The slot's terms.
    #[must_use]
    pub fn terms(&self) -> &SlotTerms {
        match self {
            Self::Continuous(b) => b.terms(),
            Self::Call(a) => a.terms(),
            Self::Sharing(terms) => terms,
        }
    }

    /// Makes room for `additional` more orders in a call auction (continuous books grow by
    /// price level and need no hint).
    pub fn reserve(&mut self, additional: usize) {
        if let Self::Call(a) = self {
            a.reserve(additional);
        }
    }

    /// Submits an order at `now`; returns the trades it made at once (never any in a call
    /// auction).
    pub fn submit(&mut self, order: Order, now: UnixSeconds) -> Result<Vec<Trade>, OrderError> {
        match self {
            Self::Continuous(b) => b.submit(order, now),
            Self::Call(a) => a.submit(order, now).map(|()| Vec::new()),
            Self::Sharing(_) => Err(OrderError::NoOrdersWhenSharing { order: order.id }),
        }
    }

    /// Cancels an open order at `now`.
    pub fn cancel(&mut self, id: OrderId, now: UnixSeconds) -> Result<(), OrderError> {
        match self {
            Self::Continuous(b) => b.cancel(id, now).map(|_| ()),
            Self::Call(a) => a.cancel(id, now).map(|_| ()),
            Self::Sharing(_) => Err(OrderError::UnknownOrder { order: id }),
        }
    }

    /// Changes an open order's price and energy at `now` (see [`ContinuousBook::amend`] and
    /// [`CallAuction::amend`] for priority); returns the trades it made at once.
    pub fn amend(
        &mut self,
        id: OrderId,
        price_per_kwh: u64,
        energy_wh: u64,
        now: UnixSeconds,
    ) -> Result<Vec<Trade>, OrderError> {
        match self {
            Self::Continuous(b) => {
                let mut trades = Vec::new();
                b.amend(id, price_per_kwh, energy_wh, now, &mut trades)?;
                Ok(trades)
            }
            Self::Call(a) => a
                .amend(id, price_per_kwh, energy_wh, now)
                .map(|()| Vec::new()),
            Self::Sharing(_) => Err(OrderError::UnknownOrder { order: id }),
        }
    }

    /// Closes the gate: clears a call auction, expires every open order.
    #[must_use]
    pub fn close_gate(self) -> GateClosure {
        match self {
            Self::Continuous(mut b) => GateClosure {
                slot: b.terms().slot.index,
                trades: Vec::new(),
                clearing_price: None,
                unmatched: b
                    .close_gate()
                    .into_iter()
                    .map(|r| Unmatched {
                        order: r.id,
                        owner: r.owner,
                        side: r.side,
                        energy_wh: r.remaining_wh,
                    })
                    .collect(),
            },
            Self::Call(a) => {
                let slot = a.terms().slot.index;
                let r = a.clear();
                GateClosure {
                    slot,
                    trades: r.trades,
                    clearing_price: r.clearing_price,
                    unmatched: r.unmatched,
                }
            }
            Self::Sharing(terms) => GateClosure {
                slot: terms.slot.index,
                trades: Vec::new(),
                clearing_price: None,
                unmatched: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::{
        AccountId, AllocationKey, AreaId, AreaTree, FeeProfile, ImbalancePrices, SharingRule,
        SlotCalendar, Tariff,
    };

    #[test]
    fn a_sharing_community_takes_no_orders_and_clears_nothing_at_gate_closure() {
        let community = Community {
            calendar: SlotCalendar::new(0, 900, 3600, 300, 900).unwrap(),
            tariff: Tariff::flat(30_000, 8_000),
            imbalance: ImbalancePrices::default(),
            areas: AreaTree::new(FeeProfile::Free, AccountId(9_999)).unwrap(),
            utility: AccountId(0),
            mechanism: Mechanism::Sharing(SharingRule {
                key: AllocationKey::ProportionalToConsumption,
                price_per_kwh: 19_000,
            }),
        };
        let mut market = community.open_slot(10).unwrap();
        let order = Order::bid(OrderId(1), AccountId(1), AreaId(0), 20_000, 500);
        let e = market.submit(order, 8_000).unwrap_err();
        assert_eq!(e, OrderError::NoOrdersWhenSharing { order: OrderId(1) });
        assert!(e.to_string().contains("takes no orders"), "{e}");
        assert_eq!(market.terms().slot.index, 10);
        assert!(market.depth().bids.is_empty());
        let closed = market.close_gate();
        assert!(closed.trades.is_empty() && closed.unmatched.is_empty());
    }
}
