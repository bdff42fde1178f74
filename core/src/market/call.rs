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
//! 4. **Allocation.** Every order willing to trade at the price (bids at or above it, asks at
//!    or below it) is paired with the other side in passes: preferred partners, then
//!    green-only bids with green asks, then everything else by priority — so the long side is
//!    rationed by priority and, without constraints, exactly the walk's volume trades. A pair is skipped when it is a self-trade or when grid fees would take the
//!    seller below its limit at the clearing price; energy that finds no pair stays unmatched
//!    and falls back to the utility. Every trade is buyer-anchored at the clearing price.

use super::fees::PriceAnchor;
use super::order::{AccountId, AreaId, MAX_BOOK_ORDERS, Order, OrderError, OrderId, Side};
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

    /// The slot's terms.
    #[must_use]
    pub fn terms(&self) -> &SlotTerms {
        &self.terms
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

    /// The open orders, in submission order.
    pub fn orders(&self) -> impl Iterator<Item = &Order> {
        self.entries.iter().map(|e| &e.order)
    }

    /// The open order with this id.
    #[must_use]
    pub fn get(&self, id: OrderId) -> Option<&Order> {
        self.index.get(&id).map(|&i| &self.entries[i].order)
    }

    /// Accepts an order arriving at `now`.
    pub fn submit(&mut self, order: Order, now: UnixSeconds) -> Result<(), OrderError> {
        self.terms.check_window(order.id, now)?;
        self.terms.validate(&order)?;
        if self.index.contains_key(&order.id) {
            return Err(OrderError::DuplicateOrderId { order: order.id });
        }
        if self.entries.len() as u64 >= MAX_BOOK_ORDERS {
            return Err(OrderError::BookFull {
                order: order.id,
                capacity: MAX_BOOK_ORDERS,
            });
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
        self.terms.check_window(order.id, now)?;
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
        self.terms.check_window(order.id, now)?;
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
    let limit = usize::try_from(MAX_BOOK_ORDERS).unwrap_or(usize::MAX);
    if let Some(first_too_many) = entries.get(limit) {
        return Err(OrderError::BookFull {
            order: first_too_many.order.id,
            capacity: MAX_BOOK_ORDERS,
        }
        .into());
    }
    for e in entries {
        terms.validate(&e.order)?;
    }
    if let Some(order) = duplicate_id(entries) {
        return Err(OrderError::DuplicateOrderId { order }.into());
    }
    Ok(clear_validated(entries, terms, rule))
}

/// The first id that occurs twice, if any.
fn duplicate_id(entries: &[AuctionEntry]) -> Option<OrderId> {
    let max = entries.iter().map(|e| e.order.id.0).max()?;
    let words = usize::try_from(max / 64 + 1).ok();
    match words {
        // Design: engine ids are mostly dense, so a bitmap (at most 64 bits per order) finds
        // duplicates in one pass; sparse ids fall back to sorting.
        Some(words) if words <= entries.len() + 1 => {
            let mut seen = vec![0u64; words];
            for e in entries {
                let id = e.order.id.0;
                let (w, bit) = (usize::try_from(id / 64).ok()?, 1u64 << (id % 64));
                let word = seen.get_mut(w)?;
                if *word & bit != 0 {
                    return Some(e.order.id);
                }
                *word |= bit;
            }
            None
        }
        _ => {
            let mut ids: Vec<u64> = entries.iter().map(|e| e.order.id.0).collect();
            ids.sort_unstable();
            ids.windows(2).find(|w| w[0] == w[1]).map(|w| OrderId(w[0]))
        }
    }
}

/// A ranked order: its sort key and its position in the input.
#[derive(Clone, Copy)]
struct Ranked {
    key: u64,
    at: u32,
}

/// Both sides in priority order: bids by price descending, asks ascending, then sequence,
/// then id.
fn rank(entries: &[AuctionEntry]) -> (Vec<Ranked>, Vec<Ranked>) {
    let (max_price, max_seq) = entries.iter().fold((0, 0), |(p, q), e| {
        (p.max(e.order.price_per_kwh), q.max(e.sequence))
    });
    let price_bits = 64 - max_price.leading_zeros();
    let seq_bits = 64 - max_seq.leading_zeros();
    // Design: when price and sequence fit one u64 together (the common case: prices < 2^24,
    // sequences < 2^40) the key alone orders everything but equal (price, sequence) pairs, and
    // a radix sort over the key's significant bytes replaces comparison sorting; otherwise the
    // triple is compared.
    let packed = price_bits + seq_bits <= 64;
    let (mut bids, mut asks) = (Vec::new(), Vec::new());
    for (i, e) in entries.iter().enumerate() {
        // Bids flip the price so that ascending keys mean descending prices.
        let (p, list) = match e.order.side {
            Side::Buy => (max_price - e.order.price_per_kwh, &mut bids),
            Side::Sell => (e.order.price_per_kwh, &mut asks),
        };
        list.push(Ranked {
            key: if packed {
                p.checked_shl(seq_bits).unwrap_or(0) | e.sequence
            } else {
                p
            },
            // Inputs are limited to MAX_BOOK_ORDERS, so positions fit.
            at: u32::try_from(i).unwrap_or(u32::MAX),
        });
    }
    for out in [&mut bids, &mut asks] {
        let id = |r: &Ranked| entries[r.at as usize].order.id;
        if packed {
            radix_sort(out, price_bits + seq_bits);
            // Equal keys (same price and sequence) are ordered by id.
            let mut start = 0;
            while start < out.len() {
                let key = out[start].key;
                let end = start + out[start..].iter().take_while(|r| r.key == key).count();
                if end - start > 1 {
                    out[start..end].sort_unstable_by_key(id);
                }
                start = end;
            }
        } else {
            out.sort_unstable_by_key(|r| (r.key, entries[r.at as usize].sequence, id(r)));
        }
    }
    (bids, asks)
}

/// LSD radix sort on the low `bits` bits of the key, one byte per pass; passes in which every
/// key has the same byte are skipped.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the shifted key is masked to one byte before the cast"
)]
fn radix_sort(v: &mut Vec<Ranked>, bits: u32) {
    let mut buf = vec![Ranked { key: 0, at: 0 }; v.len()];
    for shift in (0..bits).step_by(8) {
        let byte = |r: &Ranked| ((r.key >> shift) & 0xff) as usize;
        let mut counts = [0usize; 256];
        for r in v.iter() {
            counts[byte(r)] += 1;
        }
        if counts.contains(&v.len()) {
            continue;
        }
        let mut offsets = [0usize; 256];
        let mut sum = 0;
        for (o, c) in offsets.iter_mut().zip(counts) {
            *o = sum;
            sum += c;
        }
        for r in v.iter() {
            let b = byte(r);
            buf[offsets[b]] = *r;
            offsets[b] += 1;
        }
        std::mem::swap(v, &mut buf);
    }
}

/// The fields clearing needs, gathered once in priority order so every later pass reads
/// memory sequentially instead of jumping around the input.
#[derive(Clone, Copy)]
struct Slim {
    id: OrderId,
    price: u64,
    energy: u64,
    owner: AccountId,
    area: AreaId,
    green: bool,
    partner: Option<AccountId>,
}

fn gather(entries: &[AuctionEntry], ranked: &[Ranked]) -> Vec<Slim> {
    ranked
        .iter()
        .map(|r| {
            let o = &entries[r.at as usize].order;
            Slim {
                id: o.id,
                price: o.price_per_kwh,
                energy: o.energy_wh,
                owner: o.owner,
                area: o.area,
                green: o.preference.green,
                partner: o.preference.preferred_partner,
            }
        })
        .collect()
}

fn clear_validated(entries: &[AuctionEntry], terms: &SlotTerms, rule: PriceRule) -> ClearingResult {
    let (bids, asks) = rank(entries);
    let (bids, asks) = (gather(entries, &bids), gather(entries, &asks));

    // Volume walk: finds the marginal pair of the largest single-price volume.
    let (mut i, mut j) = (0usize, 0usize);
    let (mut bid_left, mut ask_left) = (0u64, 0u64);
    let mut marginal: Option<(u64, u64)> = None;
    while i < bids.len() && j < asks.len() {
        let (b, a) = (&bids[i], &asks[j]);
        if b.price < a.price {
            break;
        }
        if bid_left == 0 {
            bid_left = b.energy;
        }
        if ask_left == 0 {
            ask_left = a.energy;
        }
        let q = bid_left.min(ask_left);
        bid_left -= q;
        ask_left -= q;
        marginal = Some((a.price, b.price));
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
    // Energy still open per ranked order; orders that cannot trade at the price keep all.
    let mut bid_left: Vec<u64> = bids.iter().map(|b| b.energy).collect();
    let mut ask_left: Vec<u64> = asks.iter().map(|a| a.energy).collect();
    if let Some((ask_m, bid_m)) = marginal {
        let lo = ask_m.max(terms.band.feed_in_per_kwh);
        let hi = bid_m.min(terms.band.retail_per_kwh);
        let price = rule.pick(ask_m, bid_m).clamp(lo, hi.max(lo));
        result.clearing_price = Some(price);
        // Every order willing to trade at the price takes part in pairing, not only those the
        // walk accepted: without self-trades, green constraints or fees the priority pairing
        // fills exactly the walk's volume min(demand(p), supply(p)); with them, the extra
        // orders at the price can stand in for pairs that may not form.
        let eligible_bids = bids.partition_point(|b| b.price >= price);
        let eligible_asks = asks.partition_point(|a| a.price <= price);
        // Each pair exhausts a bid or an ask, so this bounds the number of trades.
        result.trades.reserve(eligible_bids + eligible_asks);
        let mut pairing = Pairing {
            terms,
            price,
            bids: &bids[..eligible_bids],
            asks: &asks[..eligible_asks],
            bid_left: &mut bid_left[..eligible_bids],
            ask_left: &mut ask_left[..eligible_asks],
            trades: &mut result.trades,
        };
        pairing.run();
    }
    let sides = bids
        .iter()
        .zip(&bid_left)
        .map(|o| (o, Side::Buy))
        .chain(asks.iter().zip(&ask_left).map(|o| (o, Side::Sell)));
    for ((o, &left), side) in sides {
        if left > 0 {
            result.unmatched.push(Unmatched {
                order: o.id,
                owner: o.owner,
                side,
                energy_wh: left,
            });
        }
    }
    result
}

/// Most candidates one order may skip (self-trades, fee-infeasible pairs) in a pass before
/// its remaining energy is left unmatched. Keeps clearing O(n · bound) on hostile books where
/// every candidate is infeasible.
pub const MAX_SKIPS_PER_ORDER: usize = 1024;

struct Pairing<'a> {
    terms: &'a SlotTerms,
    price: u64,
    bids: &'a [Slim],
    asks: &'a [Slim],
    bid_left: &'a mut [u64],
    ask_left: &'a mut [u64],
    trades: &'a mut Vec<Trade>,
}

impl Pairing<'_> {
    fn run(&mut self) {
        let any_pref = self
            .bids
            .iter()
            .chain(self.asks)
            .any(|o| o.partner.is_some() || o.green);
        if any_pref {
            self.partner_pass();
            let green_bids: Vec<usize> = (0..self.bids.len())
                .filter(|&i| self.bids[i].green)
                .collect();
            let green_asks: Vec<usize> = (0..self.asks.len())
                .filter(|&j| self.asks[j].green)
                .collect();
            self.pair_lists(&green_bids, &green_asks, MatchPass::Green);
            let std_bids: Vec<usize> = (0..self.bids.len())
                .filter(|&i| self.bid_left[i] > 0 && !self.bids[i].green)
                .collect();
            let std_asks: Vec<usize> = (0..self.asks.len())
                .filter(|&j| self.ask_left[j] > 0)
                .collect();
            self.pair_lists(&std_bids, &std_asks, MatchPass::Standard);
        } else {
            // No preference pass ran, so every eligible order is still whole: pair the ranked
            // slices directly, without index lists.
            let (n_bids, n_asks) = (self.bids.len(), self.asks.len());
            self.pair_indexed(n_bids, |k| k, n_asks, |k| k, MatchPass::Standard);
        }
    }

    /// Preferred partners: a bid naming an owner takes that owner's asks, then an ask naming
    /// an owner goes to that owner's bids, each in priority order.
    fn partner_pass(&mut self) {
        let mut asks_by_owner: HashMap<AccountId, Vec<usize>> = HashMap::new();
        let mut bids_by_owner: HashMap<AccountId, Vec<usize>> = HashMap::new();
        for (j, a) in self.asks.iter().enumerate() {
            asks_by_owner.entry(a.owner).or_default().push(j);
        }
        for (i, b) in self.bids.iter().enumerate() {
            bids_by_owner.entry(b.owner).or_default().push(i);
        }
        for i in 0..self.bids.len() {
            if let Some(p) = self.bids[i].partner
                && let Some(list) = asks_by_owner.get(&p)
            {
                self.pair_lists(&[i], list, MatchPass::PreferredPartner);
            }
        }
        for j in 0..self.asks.len() {
            if let Some(p) = self.asks[j].partner
                && let Some(list) = bids_by_owner.get(&p)
            {
                self.pair_lists(list, &[j], MatchPass::PreferredPartner);
            }
        }
    }

    /// Pairs bids with asks, both lists in priority order, skipping infeasible pairs.
    fn pair_lists(&mut self, bids: &[usize], asks: &[usize], pass: MatchPass) {
        self.pair_indexed(bids.len(), |k| bids[k], asks.len(), |k| asks[k], pass);
    }

    /// Pairs the `n_bids` bids `bid_at(0..)` with the `n_asks` asks `ask_at(0..)`, both in
    /// priority order, skipping infeasible pairs.
    fn pair_indexed(
        &mut self,
        n_bids: usize,
        bid_at: impl Fn(usize) -> usize,
        n_asks: usize,
        ask_at: impl Fn(usize) -> usize,
        pass: MatchPass,
    ) {
        let mut first = 0usize;
        for b in 0..n_bids {
            let i = bid_at(b);
            while first < n_asks && self.ask_left[ask_at(first)] == 0 {
                first += 1;
            }
            let mut skips = 0usize;
            let mut k = first;
            // After a successful pair either the bid is full (loop ends) or the ask is empty
            // (move on), so every step makes progress.
            while self.bid_left[i] > 0 && k < n_asks && skips <= MAX_SKIPS_PER_ORDER {
                let j = ask_at(k);
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
        let (bid, ask) = (self.bids[i], self.asks[j]);
        if bid.owner == ask.owner || (bid.green && !ask.green) {
            return false;
        }
        let energy = self.bid_left[i].min(self.ask_left[j]);
        let anchor = PriceAnchor::Buyer(self.price);
        let Ok(amounts) = self.terms.fees.price(bid.area, ask.area, energy, anchor) else {
            return false;
        };
        if amounts.seller_rate_per_kwh < ask.price || amounts.buyer_rate_per_kwh > bid.price {
            return false;
        }
        self.bid_left[i] -= energy;
        self.ask_left[j] -= energy;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn radix_sort_agrees_with_a_comparison_sort() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut v: Vec<Ranked> = (0..5_000u32)
            .map(|at| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Ranked {
                    key: x % (1 << 30),
                    at,
                }
            })
            .collect();
        let mut expected: Vec<u64> = v.iter().map(|r| r.key).collect();
        expected.sort_unstable();
        radix_sort(&mut v, 30);
        assert_eq!(v.iter().map(|r| r.key).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn ranking_without_packed_keys_uses_price_sequence_id() {
        let entry = |id, side, price, sequence| AuctionEntry {
            order: Order {
                side,
                ..Order::bid(OrderId(id), AccountId(1), AreaId(0), price, 1)
            },
            sequence,
        };
        // Sequences near 2^64 leave no room to pack the price beside them.
        let entries = [
            entry(1, Side::Buy, 20, u64::MAX),
            entry(2, Side::Buy, 20, 3),
            entry(3, Side::Buy, 25, u64::MAX),
            entry(4, Side::Sell, 10, u64::MAX),
            entry(5, Side::Sell, 10, u64::MAX),
            entry(6, Side::Sell, 9, u64::MAX - 1),
        ];
        let (bids, asks) = rank(&entries);
        let ids = |v: &[Ranked]| -> Vec<u64> {
            v.iter()
                .map(|r| entries[r.at as usize].order.id.0)
                .collect()
        };
        assert_eq!(ids(&bids), [3, 2, 1]);
        assert_eq!(ids(&asks), [6, 4, 5]);
    }

    #[test]
    fn price_rules_pick_within_the_pair() {
        assert_eq!(PriceRule::Midpoint.pick(20, 23), 21);
        assert_eq!(PriceRule::default().pick(20, 22), 21);
        assert_eq!(
            PriceRule::KFactor {
                basis_points: 10_000
            }
            .pick(20, 22),
            22
        );
        assert_eq!(
            PriceRule::KFactor {
                basis_points: u16::MAX
            }
            .pick(20, 22),
            22
        );
        assert_eq!(PriceRule::MarginalBid.pick(20, 22), 22);
        assert_eq!(PriceRule::MarginalAsk.pick(20, 22), 20);
        assert_eq!(
            PriceRule::Midpoint.pick(u64::MAX - 2, u64::MAX),
            u64::MAX - 1
        );
    }

    #[test]
    fn duplicate_ids_are_found_dense_or_sparse() {
        let entry = |id| AuctionEntry {
            order: Order::bid(OrderId(id), AccountId(1), AreaId(0), 1, 1),
            sequence: 0,
        };
        assert_eq!(
            duplicate_id(&[entry(1), entry(2), entry(1)]),
            Some(OrderId(1))
        );
        assert_eq!(duplicate_id(&[entry(1), entry(2), entry(3)]), None);
        let sparse = [entry(u64::MAX), entry(7), entry(u64::MAX)];
        assert_eq!(duplicate_id(&sparse), Some(OrderId(u64::MAX)));
        assert_eq!(duplicate_id(&[entry(u64::MAX), entry(7)]), None);
        assert_eq!(duplicate_id(&[]), None);
    }
}
