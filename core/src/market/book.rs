//! The continuous double auction (price-time priority, pay-as-bid) and one-sided
//! pay-as-offer, both as one limit order book per delivery slot.
//!
//! An incoming order sweeps the opposite side from the best price while prices cross. It
//! trades at the **resting** order's limit: against a resting ask the seller receives its ask
//! and fees are added for the buyer; against a resting bid the buyer pays its bid and fees are
//! deducted for the seller. Priority is the resting orders' limit price, then arrival; a pair
//! is skipped — and left resting — when both orders have the same owner (self-trade
//! prevention), when a green-only bid meets an ask that is not green, or when the grid fees on
//! the pair's path would push the buyer above or the seller below its limit. So after every
//! operation no two resting orders could trade with each other: the book is never crossed.
//!
//! Before the standard sweep, a preference pass trades with crossing orders of a preferred
//! partner (the incoming order's, or a resting order's that prefers the incoming owner).

// Design: resting orders live in a slab (`Vec<Resting>`, 40 bytes each) linked into one FIFO
// per price level; levels sit in a `BTreeMap` per side (only prices in use cost memory, so fine
// price units do not blow up a ladder); an open-addressing table of u32 slab slots maps order
// ids to their slot, so cancel is O(1) plus one level lookup, without SipHash on the hot path.

use super::fees::PriceAnchor;
use super::order::{
    AccountId, AreaId, MAX_BOOK_ORDERS, Order, OrderError, OrderId, Preference, Side,
};
use super::slot::UnixSeconds;
use super::terms::SlotTerms;
use super::trade::{MatchPass, Trade};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Included, Unbounded};

const NIL: u32 = u32::MAX;
const FLAG_GREEN: u8 = 1;
const FLAG_PARTNER: u8 = 2;

#[derive(Debug, Clone, Copy)]
struct Resting {
    id: u64,
    price: u64,
    remaining: u64,
    owner: u32,
    prev: u32,
    next: u32,
    area: u16,
    side: Side,
    flags: u8,
}

/// Bytes one resting order occupies in the slab (the id index adds about 5–11 bytes).
pub const RESTING_ORDER_BYTES: usize = std::mem::size_of::<Resting>();

// The 64-byte budget per resting order leaves 16 bytes for the index and the levels.
const _: () = assert!(RESTING_ORDER_BYTES <= 48);

/// Upper estimate of the bytes one price level costs in a `BTreeMap<u64, Level>`: a leaf
/// holds up to 11 entries of 16 bytes plus ~16 bytes of header (~192 bytes) and is at least
/// about 5/11 full, plus internal nodes.
pub const LEVEL_BYTES_ESTIMATE: usize = 48;

#[derive(Debug, Clone, Copy)]
struct Level {
    head: u32,
    tail: u32,
}

/// The two continuous mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ContinuousKind {
    /// Two-sided continuous double auction: both sides rest and take.
    TwoSided,
    /// One-sided pay-as-offer: only asks rest; a bid takes offers at their price (plus fees)
    /// and whatever it cannot fill is not kept.
    PayAsOffer,
}

/// A resting order as seen from outside the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RestingOrder {
    /// Order id.
    pub id: OrderId,
    /// Owner.
    pub owner: AccountId,
    /// Area.
    pub area: AreaId,
    /// Side.
    pub side: Side,
    /// Limit price per kWh.
    pub price_per_kwh: u64,
    /// Energy still open, Wh.
    pub remaining_wh: u64,
    /// Green flag (see [`Preference::green`]).
    pub green: bool,
}

/// What happened to a submitted (or re-submitted) order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Submitted {
    /// Energy traded immediately, Wh.
    pub traded_wh: u64,
    /// Energy left resting in the book, Wh.
    pub resting_wh: u64,
    /// Energy neither traded nor resting (a pay-as-offer bid's unfilled part), Wh.
    pub dropped_wh: u64,
}

/// One slot's continuous order book.
#[derive(Debug, Clone)]
pub struct ContinuousBook {
    terms: SlotTerms,
    kind: ContinuousKind,
    slab: Vec<Resting>,
    free: u32,
    index: IdIndex,
    bids: BTreeMap<u64, Level>,
    asks: BTreeMap<u64, Level>,
    partners: HashMap<OrderId, AccountId>,
    partnered: [usize; 2],
    live: usize,
    closed: bool,
}

struct Incoming {
    id: u64,
    owner: u32,
    area: u16,
    side: Side,
    price: u64,
    remaining: u64,
    green: bool,
    partner: Option<u32>,
}

fn side_ix(side: Side) -> usize {
    match side {
        Side::Buy => 0,
        Side::Sell => 1,
    }
}

impl ContinuousBook {
    /// An empty book for the slot described by `terms`.
    #[must_use]
    pub fn new(terms: SlotTerms, kind: ContinuousKind) -> Self {
        Self::with_capacity(terms, kind, 0)
    }

    /// An empty book with room for `orders` resting orders.
    #[must_use]
    pub fn with_capacity(terms: SlotTerms, kind: ContinuousKind, orders: usize) -> Self {
        Self {
            terms,
            kind,
            slab: Vec::with_capacity(orders),
            free: NIL,
            index: IdIndex::with_capacity(orders),
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            partners: HashMap::new(),
            partnered: [0, 0],
            live: 0,
            closed: false,
        }
    }

    /// The slot's terms.
    #[must_use]
    pub fn terms(&self) -> &SlotTerms {
        &self.terms
    }

    /// Number of resting orders.
    #[must_use]
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no order rests.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Highest resting bid price.
    #[must_use]
    pub fn best_bid(&self) -> Option<u64> {
        self.bids.last_key_value().map(|(&p, _)| p)
    }

    /// Lowest resting ask price.
    #[must_use]
    pub fn best_ask(&self) -> Option<u64> {
        self.asks.first_key_value().map(|(&p, _)| p)
    }

    /// The resting order with this id, if it is still open.
    #[must_use]
    pub fn get(&self, id: OrderId) -> Option<RestingOrder> {
        self.index
            .find(id.0, &self.slab)
            .map(|(_, at)| self.view(at))
    }

    /// Heap bytes the book holds, from its containers' capacities: the slab, the id index,
    /// the preference side table, and [`LEVEL_BYTES_ESTIMATE`] per price level.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.slab.capacity() * RESTING_ORDER_BYTES
            + self.index.table.capacity() * std::mem::size_of::<u32>()
            + self.partners.capacity() * (std::mem::size_of::<(OrderId, AccountId)>() + 1)
            + (self.bids.len() + self.asks.len()) * LEVEL_BYTES_ESTIMATE
    }

    /// Submits an order at time `now`; returns the trades it made.
    pub fn submit(&mut self, order: Order, now: UnixSeconds) -> Result<Vec<Trade>, OrderError> {
        let mut trades = Vec::new();
        self.submit_into(order, now, &mut trades)?;
        Ok(trades)
    }

    /// Submits an order at time `now`, appending its trades to `trades` (reuse the vector on
    /// hot paths).
    pub fn submit_into(
        &mut self,
        order: Order,
        now: UnixSeconds,
        trades: &mut Vec<Trade>,
    ) -> Result<Submitted, OrderError> {
        self.check_open(order.id, now)?;
        self.terms.validate(&order)?;
        if self.index.find(order.id.0, &self.slab).is_some() {
            return Err(OrderError::DuplicateOrderId { order: order.id });
        }
        if self.live as u64 >= MAX_BOOK_ORDERS {
            return Err(OrderError::BookFull {
                order: order.id,
                capacity: MAX_BOOK_ORDERS,
            });
        }
        Ok(self.place(order, trades))
    }

    /// Cancels a resting order at time `now` (before gate closure); returns what was still
    /// open.
    pub fn cancel(&mut self, id: OrderId, now: UnixSeconds) -> Result<RestingOrder, OrderError> {
        self.check_open(id, now)?;
        let (_, at) = self
            .index
            .find(id.0, &self.slab)
            .ok_or(OrderError::UnknownOrder { order: id })?;
        let view = self.view(at);
        self.remove(at);
        Ok(view)
    }

    /// Changes a resting order's limit price and open energy at time `now`.
    ///
    /// Reducing the energy at the same price keeps the order's place in the queue; any other
    /// change (a new price, or more energy) re-enters it at the back, and it may trade at once.
    pub fn amend(
        &mut self,
        id: OrderId,
        price_per_kwh: u64,
        energy_wh: u64,
        now: UnixSeconds,
        trades: &mut Vec<Trade>,
    ) -> Result<Submitted, OrderError> {
        let (_, at) = self
            .index
            .find(id.0, &self.slab)
            .ok_or(OrderError::UnknownOrder { order: id })?;
        let r = self.slab[at as usize];
        let order = Order {
            id,
            owner: AccountId(r.owner),
            area: AreaId(r.area),
            side: r.side,
            price_per_kwh,
            energy_wh,
            preference: Preference {
                preferred_partner: self.partners.get(&id).copied(),
                green: r.flags & FLAG_GREEN != 0,
            },
        };
        self.check_open(order.id, now)?;
        self.terms.validate(&order)?;
        if price_per_kwh == r.price && energy_wh <= r.remaining {
            self.slab[at as usize].remaining = energy_wh;
            return Ok(Submitted {
                traded_wh: 0,
                resting_wh: energy_wh,
                dropped_wh: 0,
            });
        }
        self.remove(at);
        Ok(self.place(order, trades))
    }

    /// Closes the gate: no more orders; every resting order expires and is returned.
    pub fn close_gate(&mut self) -> Vec<RestingOrder> {
        self.closed = true;
        let expired = self.resting_orders();
        self.slab.clear();
        self.free = NIL;
        self.index = IdIndex::with_capacity(0);
        self.bids.clear();
        self.asks.clear();
        self.partners.clear();
        self.partnered = [0, 0];
        self.live = 0;
        expired
    }

    /// Every resting order: bids best first, then asks best first, FIFO within a price.
    #[must_use]
    pub fn resting_orders(&self) -> Vec<RestingOrder> {
        let mut out = Vec::with_capacity(self.live);
        for level in self.bids.values().rev().chain(self.asks.values()) {
            let mut at = level.head;
            while at != NIL {
                out.push(self.view(at));
                at = self.slab[at as usize].next;
            }
        }
        out
    }

    fn check_open(&self, order: OrderId, now: UnixSeconds) -> Result<(), OrderError> {
        if self.closed {
            return Err(OrderError::GateClosed {
                order,
                slot: self.terms.slot.index,
                now,
                gate_closure: self.terms.slot.gate_closure,
            });
        }
        self.terms.check_window(order, now)
    }

    fn view(&self, at: u32) -> RestingOrder {
        let r = &self.slab[at as usize];
        RestingOrder {
            id: OrderId(r.id),
            owner: AccountId(r.owner),
            area: AreaId(r.area),
            side: r.side,
            price_per_kwh: r.price,
            remaining_wh: r.remaining,
            green: r.flags & FLAG_GREEN != 0,
        }
    }

    fn place(&mut self, order: Order, trades: &mut Vec<Trade>) -> Submitted {
        let mut inc = Incoming {
            id: order.id.0,
            owner: order.owner.0,
            area: order.area.0,
            side: order.side,
            price: order.price_per_kwh,
            remaining: order.energy_wh,
            green: order.preference.green,
            partner: order.preference.preferred_partner.map(|a| a.0),
        };
        let takes = !(self.kind == ContinuousKind::PayAsOffer && order.side == Side::Sell);
        if takes {
            let opposite = match order.side {
                Side::Buy => Side::Sell,
                Side::Sell => Side::Buy,
            };
            if inc.partner.is_some() || self.partnered[side_ix(opposite)] > 0 {
                self.sweep(&mut inc, MatchPass::PreferredPartner, trades);
            }
            self.sweep(&mut inc, MatchPass::Standard, trades);
        }
        let traded_wh = order.energy_wh - inc.remaining;
        if inc.remaining == 0 {
            return Submitted {
                traded_wh,
                resting_wh: 0,
                dropped_wh: 0,
            };
        }
        if self.kind == ContinuousKind::PayAsOffer && order.side == Side::Buy {
            return Submitted {
                traded_wh,
                resting_wh: 0,
                dropped_wh: inc.remaining,
            };
        }
        let mut flags = 0;
        if inc.green {
            flags |= FLAG_GREEN;
        }
        if let Some(p) = order.preference.preferred_partner {
            flags |= FLAG_PARTNER;
            self.partners.insert(order.id, p);
            self.partnered[side_ix(order.side)] += 1;
        }
        self.insert(Resting {
            id: inc.id,
            price: inc.price,
            remaining: inc.remaining,
            owner: inc.owner,
            prev: NIL,
            next: NIL,
            area: inc.area,
            side: inc.side,
            flags,
        });
        Submitted {
            traded_wh,
            resting_wh: inc.remaining,
            dropped_wh: 0,
        }
    }

    fn next_level(&self, inc: &Incoming, cursor: Option<u64>) -> Option<(u64, u32)> {
        match inc.side {
            Side::Buy => {
                let lo = cursor.map_or(Unbounded, Excluded);
                self.asks
                    .range((lo, Included(inc.price)))
                    .next()
                    .map(|(&p, l)| (p, l.head))
            }
            Side::Sell => {
                let hi = cursor.map_or(Unbounded, Excluded);
                self.bids
                    .range((Included(inc.price), hi))
                    .next_back()
                    .map(|(&p, l)| (p, l.head))
            }
        }
    }

    fn sweep(&mut self, inc: &mut Incoming, pass: MatchPass, trades: &mut Vec<Trade>) {
        let mut cursor = None;
        while inc.remaining > 0 {
            let Some((price, head)) = self.next_level(inc, cursor) else {
                break;
            };
            cursor = Some(price);
            let mut at = head;
            while at != NIL && inc.remaining > 0 {
                let r = self.slab[at as usize];
                let next = r.next;
                if let Some(trade) = self.try_trade(inc, &r, pass) {
                    inc.remaining -= trade.energy_wh;
                    if trade.energy_wh == r.remaining {
                        self.remove(at);
                    } else {
                        self.slab[at as usize].remaining -= trade.energy_wh;
                    }
                    trades.push(trade);
                }
                at = next;
            }
        }
    }

    fn try_trade(&self, inc: &Incoming, r: &Resting, pass: MatchPass) -> Option<Trade> {
        if r.owner == inc.owner {
            return None;
        }
        let r_green = r.flags & FLAG_GREEN != 0;
        let (bid_green_only, ask_green) = match inc.side {
            Side::Buy => (inc.green, r_green),
            Side::Sell => (r_green, inc.green),
        };
        if bid_green_only && !ask_green {
            return None;
        }
        if pass == MatchPass::PreferredPartner {
            let theirs = r.flags & FLAG_PARTNER != 0
                && self.partners.get(&OrderId(r.id)) == Some(&AccountId(inc.owner));
            if inc.partner != Some(r.owner) && !theirs {
                return None;
            }
        }
        let (bid_price, ask_price, buyer_area, seller_area) = match inc.side {
            Side::Buy => (inc.price, r.price, inc.area, r.area),
            Side::Sell => (r.price, inc.price, r.area, inc.area),
        };
        let fees = &self.terms.fees;
        if fees.any_fee()
            && !fees.crosses(
                bid_price,
                ask_price,
                AreaId(buyer_area),
                AreaId(seller_area),
            )
        {
            return None;
        }
        let energy_wh = inc.remaining.min(r.remaining);
        let anchor = match r.side {
            Side::Sell => PriceAnchor::Seller(r.price),
            Side::Buy => PriceAnchor::Buyer(r.price),
        };
        // Orders were validated so that no amount overflows; a pair that still cannot be
        // priced is treated like any other pair that cannot trade.
        let amounts = fees
            .price(AreaId(buyer_area), AreaId(seller_area), energy_wh, anchor)
            .ok()?;
        let (bid, ask, buyer, seller) = match inc.side {
            Side::Buy => (inc.id, r.id, inc.owner, r.owner),
            Side::Sell => (r.id, inc.id, r.owner, inc.owner),
        };
        Some(Trade {
            bid: OrderId(bid),
            ask: OrderId(ask),
            buyer: AccountId(buyer),
            seller: AccountId(seller),
            buyer_area: AreaId(buyer_area),
            seller_area: AreaId(seller_area),
            energy_wh,
            anchor,
            amounts,
            pass,
        })
    }

    fn insert(&mut self, mut r: Resting) {
        let levels = match r.side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        let level = levels.entry(r.price).or_insert(Level {
            head: NIL,
            tail: NIL,
        });
        r.prev = level.tail;
        let at = if self.free == NIL {
            let at = u32::try_from(self.slab.len()).unwrap_or(NIL);
            self.slab.push(r);
            at
        } else {
            let at = self.free;
            self.free = self.slab[at as usize].next;
            self.slab[at as usize] = r;
            at
        };
        if level.tail == NIL {
            level.head = at;
        } else {
            self.slab[level.tail as usize].next = at;
        }
        level.tail = at;
        self.index.insert(r.id, at, &self.slab);
        self.live += 1;
    }

    fn remove(&mut self, at: u32) {
        let r = self.slab[at as usize];
        let levels = match r.side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        if r.prev != NIL {
            self.slab[r.prev as usize].next = r.next;
        }
        if r.next != NIL {
            self.slab[r.next as usize].prev = r.prev;
        }
        if let Some(level) = levels.get_mut(&r.price) {
            if level.head == at {
                level.head = r.next;
            }
            if level.tail == at {
                level.tail = r.prev;
            }
            if level.head == NIL {
                levels.remove(&r.price);
            }
        }
        if let Some((pos, _)) = self.index.find(r.id, &self.slab) {
            self.index.remove_at(pos, &self.slab);
        }
        if r.flags & FLAG_PARTNER != 0 {
            self.partners.remove(&OrderId(r.id));
            self.partnered[side_ix(r.side)] -= 1;
        }
        self.slab[at as usize].next = self.free;
        self.free = at;
        self.live -= 1;
    }
}

/// Order id → slab slot, open addressing with linear probing and backward-shift deletion.
///
/// Stores only the 4-byte slot; the id is read from the slab, which keeps the index at a few
/// bytes per order. Ids are assigned by the engine, not chosen by users, so a fixed mixing
/// function (not a keyed hash) is safe here.
#[derive(Debug, Clone)]
struct IdIndex {
    table: Vec<u32>,
    len: usize,
}

fn mix(id: u64) -> u64 {
    // splitmix64 finaliser: consecutive ids spread over the whole table.
    let mut z = id;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl IdIndex {
    fn with_capacity(n: usize) -> Self {
        let cap = (n.saturating_mul(2)).next_power_of_two().max(16);
        Self {
            table: vec![NIL; cap],
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    fn home(&self, id: u64) -> usize {
        // Masking keeps only the low bits, which always fit in usize.
        usize::try_from(mix(id) & (self.mask() as u64)).unwrap_or(0)
    }

    fn find(&self, id: u64, slab: &[Resting]) -> Option<(usize, u32)> {
        let mask = self.mask();
        let mut pos = self.home(id);
        loop {
            let at = self.table[pos];
            if at == NIL {
                return None;
            }
            if slab[at as usize].id == id {
                return Some((pos, at));
            }
            pos = (pos + 1) & mask;
        }
    }

    fn insert(&mut self, id: u64, at: u32, slab: &[Resting]) {
        if (self.len + 1) * 4 > self.table.len() * 3 {
            self.grow(slab);
        }
        let mask = self.mask();
        let mut pos = self.home(id);
        while self.table[pos] != NIL {
            pos = (pos + 1) & mask;
        }
        self.table[pos] = at;
        self.len += 1;
    }

    fn grow(&mut self, slab: &[Resting]) {
        let doubled = vec![NIL; self.table.len() * 2];
        let old = std::mem::replace(&mut self.table, doubled);
        let mask = self.mask();
        for at in old.into_iter().filter(|&a| a != NIL) {
            let mut pos = self.home(slab[at as usize].id);
            while self.table[pos] != NIL {
                pos = (pos + 1) & mask;
            }
            self.table[pos] = at;
        }
    }

    fn remove_at(&mut self, pos: usize, slab: &[Resting]) {
        let mask = self.mask();
        let mut hole = pos;
        let mut j = pos;
        loop {
            j = (j + 1) & mask;
            let at = self.table[j];
            if at == NIL {
                break;
            }
            let k = self.home(slab[at as usize].id);
            // The entry at j may move into the hole unless its home lies cyclically in
            // (hole, j]; moving it then would put it before its home and lose it.
            let stays = if hole <= j {
                hole < k && k <= j
            } else {
                hole < k || k <= j
            };
            if !stays {
                self.table[hole] = at;
                hole = j;
            }
        }
        self.table[hole] = NIL;
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn id_index_survives_churn() {
        let mut slab = Vec::new();
        let mut idx = IdIndex::with_capacity(0);
        for i in 0..1000u64 {
            slab.push(Resting {
                id: i * 7919,
                price: 0,
                remaining: 1,
                owner: 0,
                prev: NIL,
                next: NIL,
                area: 0,
                side: Side::Buy,
                flags: 0,
            });
            idx.insert(i * 7919, u32::try_from(i).unwrap(), &slab);
        }
        for i in (0..1000u64).step_by(3) {
            let (pos, _) = idx.find(i * 7919, &slab).unwrap();
            idx.remove_at(pos, &slab);
        }
        for i in 0..1000u64 {
            let found = idx.find(i * 7919, &slab).map(|(_, at)| at);
            if i % 3 == 0 {
                assert_eq!(found, None);
            } else {
                assert_eq!(found, Some(u32::try_from(i).unwrap()));
            }
        }
        assert_eq!(idx.len, 1000 - 334);
    }
}
