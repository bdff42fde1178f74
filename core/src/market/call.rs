//! The periodic call auction: all orders of a slot clear once, at gate closure, at ONE uniform
//! price (pay-as-clear).
//!
//! 1. **Priority.** Bids are ranked by price descending, asks by price ascending; equal prices
//!    by submission sequence (earlier first), then by order id (smaller first). This is the
//!    only tie-break, and the result depends on arrival order only through the sequence.
//! 2. **Volume.** Walking both ranked lists while the bid price ≥ the ask price gives the
//!    largest volume any single price can clear; the last bid and ask that trade are the
//!    marginal pair.
//! 3. **Price.** The [`PriceRule`] picks the price from the marginal pair, then it is clamped
//!    into `[max(marginal ask, feed-in), min(marginal bid, retail)]`, which is never empty
//!    because every order lies in the tariff band. Rules round down to whole price units.
//! 4. **Allocation.** Each accepted order's accepted energy (the walk's fills; the marginal
//!    order on the long side is rationed by priority) is paired with the other side in
//!    passes: preferred partners, then green-only bids with green asks, then everything else
//!    by priority. A pair is skipped when it is a self-trade or when grid fees would take the
//!    seller below its limit at the clearing price; energy that finds no pair stays unmatched
//!    and falls back to the utility. Every trade is buyer-anchored at the clearing price.

use super::fees::PriceAnchor;
use super::order::{AccountId, Order, OrderError, OrderId, Side};
use super::slot::UnixSeconds;
use super::terms::SlotTerms;
use super::trade::{MatchPass, Trade};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How the uniform price is chosen between the marginal ask `a` and marginal bid `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PriceRule {
    /// `floor((a + b) / 2)`.
    Midpoint,
    /// `a + floor(k × (b − a))` with `k = basis_points / 10000` (Power TAC's k-double
    /// auction; k = 0.5 is the default).
    KFactor {
        /// k in basis points, 0..=10000.
        basis_points: u16,
    },
    /// `b`: sellers capture the surplus (GSy-e's pay-as-clear rate).
    MarginalBid,
    /// `a`: buyers capture the surplus.
    MarginalAsk,
}

impl Default for PriceRule {
    fn default() -> Self {
        Self::KFactor {
            basis_points: 5_000,
        }
    }
}

impl PriceRule {
    fn pick(self, ask: u64, bid: u64) -> u64 {
        let spread = u128::from(bid.saturating_sub(ask));
        let up = match self {
            Self::Midpoint => spread / 2,
            Self::KFactor { basis_points } => {
                spread * u128::from(basis_points.min(10_000)) / 10_000
            }
            Self::MarginalBid => spread,
            Self::MarginalAsk => 0,
        };
        // `up` never exceeds the spread, so ask + up ≤ bid fits.
        ask.saturating_add(u64::try_from(up).unwrap_or(0))
    }
}

/// An order with its submission sequence (the time priority of the call auction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuctionEntry {
    /// The order.
    pub order: Order,
    /// Submission sequence: smaller is earlier.
    pub sequence: u64,
}

/// Energy of one order that the auction did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Unmatched {
    /// The order.
    pub order: OrderId,
    /// Its owner.
    pub owner: AccountId,
    /// Its side.
    pub side: Side,
    /// Energy left, Wh; bought from or sold to the utility at the tariffs (through delivery).
    pub energy_wh: u64,
}

/// The outcome of clearing one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearingResult {
    /// The uniform price every buyer pays per kWh, if anything cleared.
    pub clearing_price: Option<u64>,
    /// The lowest accepted bid price.
    pub marginal_bid: Option<u64>,
    /// The highest accepted ask price.
    pub marginal_ask: Option<u64>,
    /// The trades, in formation order.
    pub trades: Vec<Trade>,
    /// Every order with energy left: bids then asks, each in priority order (so the list does
    /// not depend on input order).
    pub unmatched: Vec<Unmatched>,
}

impl ClearingResult {
    /// Total energy traded, Wh.
    #[must_use]
    pub fn traded_wh(&self) -> u64 {
        self.trades.iter().map(|t| t.energy_wh).sum()
    }
}

/// One slot's call auction: collects orders until gate closure, then clears once.
#[derive(Debug, Clone)]
pub struct CallAuction {
    terms: SlotTerms,
    rule: PriceRule,
    entries: Vec<AuctionEntry>,
    index: HashMap<OrderId, usize>,
    next_sequence: u64,
}

impl CallAuction {
    /// An empty auction for the slot described by `terms`.
    #[must_use]
    pub fn new(terms: SlotTerms, rule: PriceRule) -> Self {
        Self {
            terms,
            rule,
            entries: Vec::new(),
            index: HashMap::new(),
            next_sequence: 0,
        }
    }

    /// Number of open orders.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no order is open.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Accepts an order arriving at `now`.
    pub fn submit(&mut self, order: Order, now: UnixSeconds) -> Result<(), OrderError> {
        self.terms.check_window(&order, now)?;
        self.terms.validate(&order)?;
        if self.index.contains_key(&order.id) {
            return Err(OrderError::DuplicateOrderId { order: order.id });
        }
        self.index.insert(order.id, self.entries.len());
        self.entries.push(AuctionEntry {
            order,
            sequence: self.next_sequence,
        });
        self.next_sequence += 1;
        Ok(())
    }

    /// Withdraws an order before gate closure at `now`.
    pub fn cancel(&mut self, id: OrderId, now: UnixSeconds) -> Result<Order, OrderError> {
        let &i = self
            .index
            .get(&id)
            .ok_or(OrderError::UnknownOrder { order: id })?;
        let order = self.entries[i].order;
        self.terms.check_window(&order, now)?;
        self.index.remove(&id);
        self.entries.swap_remove(i);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.order.id, i);
        }
        Ok(order)
    }

    /// Changes an order's price and energy at `now`. Reducing the energy at the same price
    /// keeps its sequence; any other change gives it a new (last) sequence.
    pub fn amend(
        &mut self,
        id: OrderId,
        price_per_kwh: u64,
        energy_wh: u64,
        now: UnixSeconds,
    ) -> Result<(), OrderError> {
        let &i = self
            .index
            .get(&id)
            .ok_or(OrderError::UnknownOrder { order: id })?;
        let old = self.entries[i];
        let order = Order {
            price_per_kwh,
            energy_wh,
            ..old.order
        };
        self.terms.check_window(&order, now)?;
        self.terms.validate(&order)?;
        let keeps = price_per_kwh == old.order.price_per_kwh && energy_wh <= old.order.energy_wh;
        let sequence = if keeps {
            old.sequence
        } else {
            self.next_sequence += 1;
            self.next_sequence - 1
        };
        self.entries[i] = AuctionEntry { order, sequence };
        Ok(())
    }

    /// Clears the slot (call at gate closure); the auction is consumed.
    #[must_use]
    pub fn clear(self) -> ClearingResult {
        // Every entry was validated on entry and ids are unique, so clearing cannot fail.
        clear_validated(&self.entries, &self.terms, self.rule)
    }
}

/// Why a batch of orders could not be cleared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClearingError {
    /// An order is invalid for this slot.
    #[error(transparent)]
    Order(#[from] OrderError),
}

/// Clears a batch of orders (for callers that keep their own order list, such as the
/// simulator). Validates every order and rejects duplicate ids.
pub fn clear_call_auction(
    entries: &[AuctionEntry],
    terms: &SlotTerms,
    rule: PriceRule,
) -> Result<ClearingResult, ClearingError> {
    for e in entries {
        terms.validate(&e.order)?;
    }
    let mut ids: Vec<u64> = entries.iter().map(|e| e.order.id.0).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(OrderError::DuplicateOrderId { order: OrderId(w[0]) }.into());
    }
    Ok(clear_validated(entries, terms, rule))
}

/// A ranked order: sort key, id tie-break, and position in the input.
#[derive(Clone, Copy)]
struct Ranked {
    key: u64,
    id: u64,
    at: u32,
}

fn rank(entries: &[AuctionEntry], side: Side) -> Vec<Ranked> {
    let max_price = entries
        .iter()
        .map(|e| e.order.price_per_kwh)
        .max()
        .unwrap_or(0);
    let max_seq = entries.iter().map(|e| e.sequence).max().unwrap_or(0);
    let price_bits = 64 - max_price.leading_zeros();
    let seq_bits = 64 - max_seq.leading_zeros();
    // Design: when price and sequence fit one u64 together (the common case: prices < 2^24,
    // sequences < 2^40) the sort compares single words; otherwise it compares the triple.
    let packed = price_bits + seq_bits <= 64;
    let flip = |p: u64| match side {
        Side::Buy => max_price - p,
        Side::Sell => p,
    };
    let mut out: Vec<Ranked> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.order.side == side)
        .map(|(i, e)| {
            let p = flip(e.order.price_per_kwh);
            Ranked {
                key: if packed {
                    p.checked_shl(seq_bits).unwrap_or(0) | e.sequence
                } else {
                    p
                },
                id: e.order.id.0,
                // Inputs beyond 2^32 orders are not supported (far above any slot's book).
                at: u32::try_from(i).unwrap_or(u32::MAX),
            }
        })
        .collect();
    if packed {
        out.sort_unstable_by_key(|r| (r.key, r.id));
    } else {
        out.sort_unstable_by_key(|r| (r.key, entries[r.at as usize].sequence, r.id));
    }
    out
}

fn clear_validated(entries: &[AuctionEntry], terms: &SlotTerms, rule: PriceRule) -> ClearingResult {
    let bids = rank(entries, Side::Buy);
    let asks = rank(entries, Side::Sell);
    let order_of = |r: &Ranked| &entries[r.at as usize].order;

    // Volume walk: accepted energy per ranked position.
    let mut bid_acc = vec![0u64; bids.len()];
    let mut ask_acc = vec![0u64; asks.len()];
    let (mut i, mut j) = (0usize, 0usize);
    let (mut bid_left, mut ask_left) = (0u64, 0u64);
    let mut marginal: Option<(u64, u64)> = None;
    while i < bids.len() && j < asks.len() {
        let (b, a) = (order_of(&bids[i]), order_of(&asks[j]));
        if b.price_per_kwh < a.price_per_kwh {
            break;
        }
        if bid_left == 0 {
            bid_left = b.energy_wh;
        }
        if ask_left == 0 {
            ask_left = a.energy_wh;
        }
        let q = bid_left.min(ask_left);
        bid_acc[i] += q;
        ask_acc[j] += q;
        bid_left -= q;
        ask_left -= q;
        marginal = Some((a.price_per_kwh, b.price_per_kwh));
        if bid_left == 0 {
            i += 1;
        }
        if ask_left == 0 {
            j += 1;
        }
    }

    let mut result = ClearingResult {
        clearing_price: None,
        marginal_bid: marginal.map(|m| m.1),
        marginal_ask: marginal.map(|m| m.0),
        trades: Vec::new(),
        unmatched: Vec::new(),
    };
    let mut traded = vec![0u64; entries.len()];
    if let Some((ask_m, bid_m)) = marginal {
        let lo = ask_m.max(terms.band.feed_in_per_kwh);
        let hi = bid_m.min(terms.band.retail_per_kwh);
        let price = rule.pick(ask_m, bid_m).clamp(lo, hi.max(lo));
        result.clearing_price = Some(price);
        let mut pairing = Pairing {
            entries,
            terms,
            price,
            bids: &bids,
            asks: &asks,
            bid_left: bid_acc,
            ask_left: ask_acc,
            traded: &mut traded,
            trades: &mut result.trades,
        };
        pairing.run();
    }
    for r in bids.iter().chain(&asks) {
        let e = &entries[r.at as usize];
        let t = traded[r.at as usize];
        if t < e.order.energy_wh {
            result.unmatched.push(Unmatched {
                order: e.order.id,
                owner: e.order.owner,
                side: e.order.side,
                energy_wh: e.order.energy_wh - t,
            });
        }
    }
    result
}

/// Most candidates one order may skip (self-trades, fee-infeasible pairs) in a pass before
/// its remaining accepted energy is left unmatched. Keeps clearing O(n · bound) on hostile
/// books where every candidate is infeasible.
pub const MAX_SKIPS_PER_ORDER: usize = 1024;

struct Pairing<'a> {
    entries: &'a [AuctionEntry],
    terms: &'a SlotTerms,
    price: u64,
    bids: &'a [Ranked],
    asks: &'a [Ranked],
    bid_left: Vec<u64>,
    ask_left: Vec<u64>,
    traded: &'a mut [u64],
    trades: &'a mut Vec<Trade>,
}

impl Pairing<'_> {
    fn order(&self, r: &Ranked) -> &Order {
        &self.entries[r.at as usize].order
    }

    fn run(&mut self) {
        let any_pref = self.entries.iter().any(|e| {
            e.order.preference.preferred_partner.is_some() || e.order.preference.green
        });
        if any_pref {
            self.partner_pass();
            let green_bids: Vec<usize> = (0..self.bids.len())
                .filter(|&i| self.order(&self.bids[i]).preference.green)
                .collect();
            let green_asks: Vec<usize> = (0..self.asks.len())
                .filter(|&j| self.order(&self.asks[j]).preference.green)
                .collect();
            self.pair_lists(&green_bids, &green_asks, MatchPass::Green);
        }
        let std_bids: Vec<usize> = (0..self.bids.len())
            .filter(|&i| self.bid_left[i] > 0 && !self.order(&self.bids[i]).preference.green)
            .collect();
        let std_asks: Vec<usize> = (0..self.asks.len())
            .filter(|&j| self.ask_left[j] > 0)
            .collect();
        self.pair_lists(&std_bids, &std_asks, MatchPass::Standard);
    }

    /// Preferred partners: a bid naming an owner takes that owner's accepted asks, then an
    /// ask naming an owner goes to that owner's accepted bids, each in priority order.
    fn partner_pass(&mut self) {
        let mut asks_by_owner: HashMap<AccountId, Vec<usize>> = HashMap::new();
        let mut bids_by_owner: HashMap<AccountId, Vec<usize>> = HashMap::new();
        for j in 0..self.asks.len() {
            if self.ask_left[j] > 0 {
                asks_by_owner
                    .entry(self.order(&self.asks[j]).owner)
                    .or_default()
                    .push(j);
            }
        }
        for i in 0..self.bids.len() {
            if self.bid_left[i] > 0 {
                bids_by_owner
                    .entry(self.order(&self.bids[i]).owner)
                    .or_default()
                    .push(i);
            }
        }
        for i in 0..self.bids.len() {
            let bid = *self.order(&self.bids[i]);
            if let Some(p) = bid.preference.preferred_partner
                && let Some(list) = asks_by_owner.get(&p)
            {
                self.pair_lists(&[i], list, MatchPass::PreferredPartner);
            }
        }
        for j in 0..self.asks.len() {
            let ask = *self.order(&self.asks[j]);
            if let Some(p) = ask.preference.preferred_partner
                && let Some(list) = bids_by_owner.get(&p)
            {
                self.pair_lists(list, &[j], MatchPass::PreferredPartner);
            }
        }
    }

    /// Pairs bids with asks, both lists in priority order, skipping infeasible pairs.
    fn pair_lists(&mut self, bids: &[usize], asks: &[usize], pass: MatchPass) {
        let mut first = 0usize;
        for &i in bids {
            while first < asks.len() && self.ask_left[asks[first]] == 0 {
                first += 1;
            }
            let mut skips = 0usize;
            let mut k = first;
            // After a successful pair either the bid is full (loop ends) or the ask is empty
            // (move on), so every step makes progress.
            while self.bid_left[i] > 0 && k < asks.len() && skips <= MAX_SKIPS_PER_ORDER {
                let j = asks[k];
                if self.ask_left[j] > 0 && !self.pair(i, j, pass) {
                    skips += 1;
                }
                if self.ask_left[j] == 0 || self.bid_left[i] > 0 {
                    k += 1;
                }
            }
        }
    }

    fn pair(&mut self, i: usize, j: usize, pass: MatchPass) -> bool {
        let bid = *self.order(&self.bids[i]);
        let ask = *self.order(&self.asks[j]);
        if bid.owner == ask.owner || (bid.preference.green && !ask.preference.green) {
            return false;
        }
        let energy = self.bid_left[i].min(self.ask_left[j]);
        let anchor = PriceAnchor::Buyer(self.price);
        let Ok(amounts) = self.terms.fees.price(bid.area, ask.area, energy, anchor) else {
            return false;
        };
        if amounts.seller_rate_per_kwh < ask.price_per_kwh
            || amounts.buyer_rate_per_kwh > bid.price_per_kwh
        {
            return false;
        }
        self.bid_left[i] -= energy;
        self.ask_left[j] -= energy;
        self.traded[self.bids[i].at as usize] += energy;
        self.traded[self.asks[j].at as usize] += energy;
        self.trades.push(Trade {
            bid: bid.id,
            ask: ask.id,
            buyer: bid.owner,
            seller: ask.owner,
            buyer_area: bid.area,
            seller_area: ask.area,
            energy_wh: energy,
            anchor,
            amounts,
            pass,
        });
        true
    }
}
