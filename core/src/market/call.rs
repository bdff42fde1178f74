//! The periodic call auction: all orders of a slot clear once, at gate closure, at ONE uniform
//! price (pay-as-clear). The rules, the closed form they rest on and the guarantees are on
//! [`CallAuction`].

use super::fees::{PathPricer, PriceAnchor};
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
    /// Power TAC's wholesale rule: the k-factor price, but a seller earns at most
    /// `seller_max_margin_basis_points` above the marginal ask,
    /// `min(a + floor(k × (b − a)), a + floor(a × m))` with `m = seller_max_margin_basis_points
    /// / 10000` (Power TAC: k = 0.5, m = 5 %: ask 20 and bid 32 clear at 21, not 26). It keeps
    /// one high bid — a household with no battery left at a peak — from handing the sellers
    /// most of the spread. Like every rule it sets the price the buyer pays: grid fees come
    /// out of the seller's side, so a cap below the fees leaves sellers less than their asks
    /// and those pairs do not trade.
    KFactorCapped {
        /// k in basis points, 0..=10000.
        basis_points: u16,
        /// The sellers' largest margin over the marginal ask, in basis points of the ask.
        seller_max_margin_basis_points: u16,
    },
}

impl Default for PriceRule {
    fn default() -> Self {
        Self::KFactor {
            basis_points: 5_000,
        }
    }
}

impl PriceRule {
    /// Power TAC's auctioneer defaults: k = 0.5 and a 5 % seller margin cap.
    #[must_use]
    pub const fn power_tac() -> Self {
        Self::KFactorCapped {
            basis_points: 5_000,
            seller_max_margin_basis_points: 500,
        }
    }

    fn pick(self, ask: u64, bid: u64) -> u64 {
        let spread = u128::from(bid.saturating_sub(ask));
        let up = match self {
            Self::Midpoint => spread / 2,
            Self::KFactor { basis_points } => {
                spread * u128::from(basis_points.min(10_000)) / 10_000
            }
            Self::MarginalBid => spread,
            Self::MarginalAsk => 0,
            Self::KFactorCapped {
                basis_points,
                seller_max_margin_basis_points,
            } => {
                let k = spread * u128::from(basis_points.min(10_000)) / 10_000;
                let cap = u128::from(ask) * u128::from(seller_max_margin_basis_points) / 10_000;
                k.min(cap)
            }
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
    /// The marginal bid: the upper end of the price range that clears the most energy
    /// between different owners and contains the price (a bid's limit).
    pub marginal_bid: Option<u64>,
    /// The marginal ask: the lower end of that range (an ask's limit).
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
///
/// All orders of the slot clear at ONE uniform price (pay-as-clear), trading the most energy
/// between **different owners** that any single price allows.
///
/// An order is *eligible* at price `p` when it is willing to trade there: a bid with limit
/// `≥ p`, an ask with limit `≤ p`. At `p`, let `D` and `S` be the eligible bid and ask energy
/// and `D_o`, `S_o` the part of it owner `o` holds (a household with a battery, or an
/// aggregator, may hold both).
///
/// **Closed form.** The most energy that can trade at `p` when nobody trades with itself is
///
/// ```text
/// V(p) = min( D, S, min_o [ (D − D_o) + (S − S_o) ] ) = min( D, S, D + S − max_o (D_o + S_o) )
/// ```
///
/// Proof: it is a maximum flow from a source through each owner's bids (capacity `D_o`) to
/// every other owner's asks (unbounded) and on to a sink (capacity `S_o`). A finite cut
/// removes the bid arcs of a set `X` of owners and the ask arcs of a set `Y`; the owners left
/// on each side must not be joined by an arc, i.e. no bid owner outside `X` differs from an
/// ask owner outside `Y`. So either every bid arc is cut (`D`), or every ask arc (`S`), or
/// exactly one owner `o` keeps both its arcs (`(D − D_o) + (S − S_o)`); the smallest cut is
/// the minimum of these, and max-flow = min-cut. When no owner has both sides eligible the
/// last term is at least `max(D, S)` and `V(p) = min(D, S)`, the textbook volume. (The tests
/// check the formula against a brute-force maximum flow on small books.)
///
/// 1. **Priority.** Bids are ranked by price descending, asks by price ascending; equal prices
///    by submission sequence (earlier first), then by order id (smaller first). This is the
///    only tie-break, and the result depends on arrival order only through the sequence.
/// 2. **Volume.** `V` changes only at limit prices: it can rise only where an ask becomes
///    eligible and fall only just above a bid's limit. So the prices reaching the largest
///    `V*` form ranges `[a, b]` from an ask's limit `a` to a bid's limit `b`: the *marginal
///    ask and bid*. If no owner holds more eligible energy anywhere between the owner-blind
///    marginal pair than the owner-blind volume (the common case, checked in one pass), that
///    pair's range is the only one — the textbook auction's answer. Otherwise every price is
///    swept in O(n log n).
/// 3. **Price.** The [`PriceRule`] picks the price in each range from its marginal pair,
///    rounded down and clamped into `[max(a, feed-in), min(b, retail)]` (never empty: every
///    order lies in the tariff band), so every price it can pick clears `V*`. When several
///    ranges reach `V*` — possible only when some owner has both sides — the one whose price
///    is closest to the owner-blind price (the marginal pair of pure price priority, which is
///    what the auction clears when no owner has both sides) wins, then the lower price.
/// 4. **Allocation.** Preferred partners, then green-only bids with green asks, are paired
///    first (in priority order, skipping infeasible pairs). Then the **volume pass** trades
///    `F = V(p)` among the remaining eligible bids (not green-only) and the asks that every
///    one of them may trade with after grid fees — all eligible asks when there are no fees,
///    or when the fees fit within every ask's margin:
///    - *Fills.* Each side fills `F` from the top in priority order (the long side is
///      rationed by priority). The fills total `2F`, so at most one owner `o` can hold more
///      than `F` of them — more than the others can take. That owner gives up the excess
///      `E`, half on each side (the extra Wh on the bid side) as far as the other owners'
///      eligible energy allows, so that what it buys less what it sells is what priority gave
///      it; on each side its lowest-ranked fills give way to the next orders of other owners.
///    - *Pairs.* Fills are paired in priority order, never an owner with itself: the first
///      bid with energy left takes the first ask of another owner, at most as much as leaves
///      no third owner holding more than remains to pair; when an owner holds exactly what
///      remains, every pair must include it and the first bid takes that owner's first ask.
///      With the fills above this always pairs all of `F`.
///
///    Whatever is left and could still trade at `p` — asks that grid fees keep from some of
///    the bids — is then paired by priority, skipping infeasible pairs. Energy that finds no
///    pair stays unmatched and falls back to the utility. Every trade is buyer-anchored at
///    the clearing price.
///
/// # Guarantees
///
/// - One price for every trade, within both limits of every trade and the tariff band; no
///   owner trades with itself; no order fills beyond its energy; energy bought equals energy
///   sold.
/// - **Volume.** Without preferences, and with no grid fee that exceeds some eligible ask's
///   margin at the price, the auction trades `max_p V(p)` — no single price could trade more
///   between different owners. Preferences shape pairs first and grid fees can forbid pairs,
///   so then the volume may fall short of that maximum (the price is still chosen by `V`,
///   which ignores fees and preferences).
/// - **Nothing tradeable is left at the clearing price.** After clearing, no bid and ask of
///   different owners that are both unmatched could trade with each other at the clearing
///   price (limits, fees, green-only) — except when an order skipped more than
///   [`MAX_SKIPS_PER_ORDER`] infeasible candidates in a preference or fee-bound pass. In
///   the volume pass this holds because after it either one side of it has no energy left or
///   only the owner whose term binds in the closed form has.
/// - It is **not** promised that no crossed pair of different owners remains: with one price
///   for all, that is sometimes impossible (see the worked examples in the [`market`](super) module docs).
/// - **Arrival order.** The result depends on the input only through each order's fields and
///   sequence number: the same entries in any order clear identically.
#[derive(Debug, Clone)]
pub struct CallAuction {
    terms: SlotTerms,
    rule: PriceRule,
    entries: Vec<AuctionEntry>,
    index: foldhash::HashMap<OrderId, usize>,
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
            index: foldhash::HashMap::default(),
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

    /// Makes room for `additional` more orders, so that a caller who knows how many are
    /// coming does not grow the book step by step.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
        self.index.reserve(additional);
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
    let n_bids = entries.iter().filter(|e| e.order.side == Side::Buy).count();
    let (mut bids, mut asks) = (
        Vec::with_capacity(n_bids),
        Vec::with_capacity(entries.len() - n_bids),
    );
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
            // Design: the radix sort's byte tables cost more than a comparison sort of a
            // small book (a street's slot); either gives the same key order, and equal keys
            // are ordered by id below.
            // Books gathered in submission order at equal prices (a simulated street's
            // agents, one rule each) are ranked already: one pass finds out.
            let ranked = out.windows(2).all(|w| w[0].key <= w[1].key);
            if ranked {
                // Nothing to sort.
            } else if out.len() > RADIX_SORT_FROM {
                radix_sort(out, price_bits + seq_bits);
            } else {
                out.sort_unstable_by_key(|r| r.key);
            }
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

/// Orders on one side from which ranking radix-sorts instead of comparing.
const RADIX_SORT_FROM: usize = 64;

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
    /// The owner as a dense index into per-owner tables ([`Owners`]).
    who: u32,
    area: AreaId,
    green: bool,
    partner: Option<AccountId>,
}

/// Dense indices for the owners of one batch, so per-owner sums are slots of a vector.
struct Owners {
    /// The distinct owner ids in ascending order; empty when ids index directly.
    sparse: Vec<u32>,
    /// Number of slots a per-owner table needs.
    count: usize,
}

impl Owners {
    fn new(entries: &[AuctionEntry]) -> Self {
        let max = entries.iter().map(|e| e.order.owner.0).max().unwrap_or(0);
        // Design: account ids of the engine and the simulator are small and dense, so the id
        // itself is the index; a batch with sparse ids (more than two slots per order) ranks
        // them instead.
        if max as usize <= 2 * entries.len() + 1024 {
            return Self {
                sparse: Vec::new(),
                count: max as usize + 1,
            };
        }
        let mut ids: Vec<u32> = entries.iter().map(|e| e.order.owner.0).collect();
        ids.sort_unstable();
        ids.dedup();
        Self {
            count: ids.len(),
            sparse: ids,
        }
    }

    fn index(&self, owner: AccountId) -> u32 {
        if self.sparse.is_empty() {
            return owner.0;
        }
        // Every owner of the batch is in the list, and the list has fewer than 2^32 entries.
        let at = self.sparse.binary_search(&owner.0).unwrap_or(0);
        u32::try_from(at).unwrap_or(u32::MAX)
    }
}

fn gather(entries: &[AuctionEntry], ranked: &[Ranked], owners: &Owners) -> Vec<Slim> {
    ranked
        .iter()
        .map(|r| {
            let o = &entries[r.at as usize].order;
            Slim {
                id: o.id,
                price: o.price_per_kwh,
                energy: o.energy_wh,
                owner: o.owner,
                who: owners.index(o.owner),
                area: o.area,
                green: o.preference.green,
                partner: o.preference.preferred_partner,
            }
        })
        .collect()
}

/// The chosen uniform price and the marginal pair it was picked between.
#[derive(Debug, Clone, Copy)]
struct PriceChoice {
    ask: u64,
    bid: u64,
    price: u64,
}

fn priced(rule: PriceRule, terms: &SlotTerms, ask: u64, bid: u64) -> PriceChoice {
    let lo = ask.max(terms.band.feed_in_per_kwh);
    let hi = bid.min(terms.band.retail_per_kwh);
    PriceChoice {
        ask,
        bid,
        price: rule.pick(ask, bid).clamp(lo, hi.max(lo)),
    }
}

/// The owner-blind volume walk: both rankings while bid ≥ ask. Returns the marginal pair
/// `(ask, bid)` and the volume, the largest `min(demand(p), supply(p))` of any price.
fn owner_blind_walk(bids: &[Slim], asks: &[Slim]) -> Option<((u64, u64), u128)> {
    let (mut i, mut j) = (0usize, 0usize);
    let (mut bid_left, mut ask_left) = (0u64, 0u64);
    let mut marginal = None;
    let mut volume = 0u128;
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
        volume += u128::from(q);
        marginal = Some((a.price, b.price));
        if bid_left == 0 {
            i += 1;
        }
        if ask_left == 0 {
            j += 1;
        }
    }
    marginal.map(|m| (m, volume))
}

/// Picks the price range with the largest volume between different owners, then the price in
/// it (see [`CallAuction`], steps 2 and 3).
fn choose_price(
    bids: &[Slim],
    asks: &[Slim],
    owners: usize,
    rule: PriceRule,
    terms: &SlotTerms,
) -> Option<PriceChoice> {
    let ((ask, bid), volume) = owner_blind_walk(bids, asks)?;
    let blind = priced(rule, terms, ask, bid);
    // Fast check: if no owner has more energy willing to trade anywhere in [ask, bid] than the
    // walk's volume, every price there clears that volume between different owners too (the
    // closed form's owner term never binds), no price outside it clears as much, and the
    // owner-blind answer stands. It fails only where one owner is a large part of the book.
    let mut sums = vec![0u128; owners];
    for b in bids.iter().take_while(|b| b.price >= ask) {
        sums[b.who as usize] += u128::from(b.energy);
    }
    for a in asks.iter().take_while(|a| a.price <= bid) {
        sums[a.who as usize] += u128::from(a.energy);
    }
    if sums.iter().all(|&s| s <= volume) {
        return Some(blind);
    }
    drop(sums);
    let (best, runs) = volume_runs(bids, asks, owners);
    if best == 0 {
        return None;
    }
    // Among the ranges that clear the most, the one whose price lies closest to the
    // owner-blind price (pure price priority), then the lower.
    runs.into_iter()
        .map(|(a, b)| priced(rule, terms, a, b))
        .min_by_key(|c| (c.price.abs_diff(blind.price), c.price))
}

/// Sweeps every price from the lowest ask up and returns the largest volume between
/// different owners any single price clears,
/// `V(p) = min(D, S, D + S − max_o (D_o + S_o))` (bids ≥ p, asks ≤ p), with the maximal
/// price ranges `[ask, bid]` where it is reached. O(n log n): a lazy max-heap tracks the
/// largest owner.
fn volume_runs(bids: &[Slim], asks: &[Slim], owners: usize) -> (u128, Vec<(u64, u64)>) {
    use std::collections::BinaryHeap;
    let mut held = vec![0u128; owners];
    let mut heap: BinaryHeap<(u128, u32)> = BinaryHeap::new();
    let (mut demand, mut supply) = (0u128, 0u128);
    for b in bids {
        held[b.who as usize] += u128::from(b.energy);
        demand += u128::from(b.energy);
    }
    for b in bids {
        heap.push((held[b.who as usize], b.who));
    }
    let (mut best, mut runs) = (0u128, Vec::new());
    let Some(first) = asks.first() else {
        return (best, runs);
    };
    let (mut next_ask, mut live_bids) = (0usize, bids.len());
    let mut p = first.price;
    // Whether the elementary range just before `p` reached `best` (a run may continue).
    let mut open = false;
    loop {
        while let Some(a) = asks.get(next_ask).filter(|a| a.price <= p) {
            let w = a.who as usize;
            held[w] += u128::from(a.energy);
            supply += u128::from(a.energy);
            heap.push((held[w], a.who));
            next_ask += 1;
        }
        while let Some(b) = live_bids
            .checked_sub(1)
            .map(|k| &bids[k])
            .filter(|b| b.price < p)
        {
            let w = b.who as usize;
            held[w] -= u128::from(b.energy);
            demand -= u128::from(b.energy);
            heap.push((held[w], b.who));
            live_bids -= 1;
        }
        if live_bids == 0 {
            break;
        }
        while let Some(&(h, w)) = heap.peek() {
            if held[w as usize] == h {
                break;
            }
            heap.pop();
        }
        let largest = heap.peek().map_or(0, |&(h, _)| h);
        let v = demand.min(supply).min(demand + supply - largest);
        // The next price where eligibility changes: the next ask, or just above the lowest
        // live bid.
        let next = [
            asks.get(next_ask).map(|a| a.price),
            bids[live_bids - 1].price.checked_add(1),
        ]
        .into_iter()
        .flatten()
        .min();
        let upper = next.map_or(u64::MAX, |n| n - 1);
        if v > best {
            best = v;
            runs.clear();
            runs.push((p, upper));
        } else if v == best && v > 0 {
            match runs.last_mut() {
                Some(last) if open => last.1 = upper,
                _ => runs.push((p, upper)),
            }
        }
        open = v == best && v > 0;
        match next {
            Some(n) => p = n,
            None => break,
        }
    }
    (best, runs)
}

fn clear_validated(entries: &[AuctionEntry], terms: &SlotTerms, rule: PriceRule) -> ClearingResult {
    let (bids, asks) = rank(entries);
    let owners = Owners::new(entries);
    let (bids, asks) = (
        gather(entries, &bids, &owners),
        gather(entries, &asks, &owners),
    );
    let choice = choose_price(&bids, &asks, owners.count, rule, terms);
    let mut result = ClearingResult {
        clearing_price: choice.map(|c| c.price),
        marginal_bid: choice.map(|c| c.bid),
        marginal_ask: choice.map(|c| c.ask),
        trades: Vec::new(),
        unmatched: Vec::new(),
    };
    // Energy still open per ranked order; orders that cannot trade at the price keep all.
    let mut bid_left: Vec<u64> = bids.iter().map(|b| b.energy).collect();
    let mut ask_left: Vec<u64> = asks.iter().map(|a| a.energy).collect();
    if let Some(PriceChoice { price, .. }) = choice {
        let eligible_bids = bids.partition_point(|b| b.price >= price);
        let eligible_asks = asks.partition_point(|a| a.price <= price);
        // Each pair exhausts a bid or an ask, or makes one owner's holding equal what remains,
        // which happens at most twice; so this bounds the number of trades.
        result.trades.reserve(eligible_bids + eligible_asks + 2);
        let mut pairing = Pairing {
            terms,
            price,
            owners: owners.count,
            bids: &bids[..eligible_bids],
            asks: &asks[..eligible_asks],
            bid_left: &mut bid_left[..eligible_bids],
            ask_left: &mut ask_left[..eligible_asks],
            trades: &mut result.trades,
            pricer: PathPricer::new(&terms.fees),
        };
        pairing.run();
    }
    let open = bid_left.iter().chain(&ask_left).filter(|&&l| l > 0).count();
    result.unmatched.reserve_exact(open);
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

/// Most candidates one order may skip (self-trades, fee-infeasible pairs) in a preference or
/// fee-bound pass before its remaining energy is left unmatched. Keeps clearing
/// O(n · bound) on hostile books where every candidate is infeasible.
pub const MAX_SKIPS_PER_ORDER: usize = 1024;

/// Most (buyer area, seller area) combinations the volume pass checks fees for; beyond it,
/// asks are paired by the fee-bound greedy pass alone.
const MAX_AREA_PAIRS: usize = 256;

struct Pairing<'a> {
    terms: &'a SlotTerms,
    price: u64,
    owners: usize,
    bids: &'a [Slim],
    asks: &'a [Slim],
    bid_left: &'a mut [u64],
    ask_left: &'a mut [u64],
    trades: &'a mut Vec<Trade>,
    /// Prices the pairs (one path walk per run of pairs between the same areas).
    pricer: PathPricer<'a>,
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
            let green_bids = positions_where(self.bids.len(), |i| self.bids[i].green);
            let green_asks = positions_where(self.asks.len(), |j| self.asks[j].green);
            self.pair_lists(&green_bids, &green_asks, MatchPass::Green);
        }
        if self.volume_pass() {
            return;
        }
        // Some asks may trade with some bids only (grid fees on their paths): pair what is
        // left in priority order, skipping infeasible pairs.
        let std_bids = positions_where(self.bids.len(), |i| {
            self.bid_left[i] > 0 && !self.bids[i].green
        });
        let std_asks = positions_where(self.asks.len(), |j| self.ask_left[j] > 0);
        self.pair_lists(&std_bids, &std_asks, MatchPass::Standard);
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

    /// The asks with energy left that every open bid of the volume pass may trade with at
    /// the price (grid fees), and whether they are all the asks with energy left.
    fn fee_free_asks(&self, bids: &[usize]) -> (Vec<usize>, bool) {
        let open = positions_where(self.asks.len(), |j| self.ask_left[j] > 0);
        let fees = &self.terms.fees;
        if !fees.any_fee() {
            return (open, true);
        }
        let distinct = |it: &mut dyn ExactSizeIterator<Item = AreaId>| {
            let mut v = Vec::with_capacity(it.len());
            v.extend(it);
            let max = v.iter().map(|a| usize::from(a.0)).max().unwrap_or(0);
            // Design: area ids are small and dense (a community numbers its areas from 0),
            // so a bitmap over them gives the sorted distinct list in linear time; this runs
            // every slot over every order of a large community. Sparse ids are sorted.
            if max <= 4 * v.len() + 256 {
                let mut seen = vec![0u64; max / 64 + 1];
                for a in &v {
                    seen[usize::from(a.0) / 64] |= 1 << (a.0 % 64);
                }
                v.clear();
                for (w, &bits) in seen.iter().enumerate() {
                    let mut bits = bits;
                    while bits != 0 {
                        let b = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        v.push(AreaId(u16::try_from(w * 64 + b).unwrap_or(u16::MAX)));
                    }
                }
            } else {
                v.sort_unstable();
                v.dedup();
            }
            v
        };
        let bid_areas = distinct(&mut bids.iter().map(|&i| self.bids[i].area));
        let ask_areas = distinct(&mut open.iter().map(|&j| self.asks[j].area));
        if bid_areas.len() * ask_areas.len() > MAX_AREA_PAIRS {
            return (Vec::new(), open.is_empty());
        }
        let lowest_bid = bids.iter().map(|&i| self.bids[i].price).min();
        // The least a seller in each ask area receives per kWh from any of the bids.
        let floors: Vec<(AreaId, Option<u64>)> = ask_areas
            .iter()
            .map(|&seller| {
                let floor = bid_areas.iter().try_fold(u64::MAX, |floor, &buyer| {
                    let anchor = PriceAnchor::Buyer(self.price);
                    let a = fees.price(buyer, seller, 1000, anchor).ok()?;
                    let buyer_ok = lowest_bid.is_none_or(|b| a.buyer_rate_per_kwh <= b);
                    buyer_ok.then_some(floor.min(a.seller_rate_per_kwh))
                });
                (seller, floor)
            })
            .collect();
        let floor_of = |area: AreaId| {
            floors
                .binary_search_by_key(&area, |f| f.0)
                .ok()
                .and_then(|k| floors[k].1)
        };
        let mut feasible = Vec::with_capacity(open.len());
        feasible.extend(
            open.iter()
                .copied()
                .filter(|&j| floor_of(self.asks[j].area).is_some_and(|f| self.asks[j].price <= f)),
        );
        let all = feasible.len() == open.len();
        (feasible, all)
    }

    /// The volume pass: among the open bids (not green-only) and the asks every one of them
    /// may trade with, trades the largest volume between different owners,
    /// `F = min(D, S, D + S − max_o (D_o + S_o))`, filling each side in priority order (see
    /// [`CallAuction`], step 4). Returns whether it saw every open ask, so that no other
    /// pass is needed.
    fn volume_pass(&mut self) -> bool {
        let bl = positions_where(self.bids.len(), |i| {
            self.bid_left[i] > 0 && !self.bids[i].green
        });
        let (al, all_asks) = self.fee_free_asks(&bl);
        let mut held = vec![0u128; self.owners];
        let (mut demand, mut supply) = (0u128, 0u128);
        for &i in &bl {
            held[self.bids[i].who as usize] += u128::from(self.bid_left[i]);
            demand += u128::from(self.bid_left[i]);
        }
        for &j in &al {
            held[self.asks[j].who as usize] += u128::from(self.ask_left[j]);
            supply += u128::from(self.ask_left[j]);
        }
        let largest = held.iter().copied().max().unwrap_or(0);
        let volume = demand.min(supply).min(demand + supply - largest);
        if volume == 0 {
            return all_asks;
        }
        let mut x = fill_in_priority(&bl, self.bid_left, volume);
        let mut y = fill_in_priority(&al, self.ask_left, volume);
        let mut bound = largest;
        if largest > volume {
            bound = volume;
            let (bids, asks) = (self.bids, self.asks);
            let mut filled = vec![0u128; self.owners];
            for (k, &i) in bl.iter().enumerate() {
                filled[bids[i].who as usize] += u128::from(x[k]);
            }
            for (k, &j) in al.iter().enumerate() {
                filled[asks[j].who as usize] += u128::from(y[k]);
            }
            // The fills total 2·F, so at most one owner holds more than F of them.
            if let Some(over) = (0..filled.len()).find(|&o| filled[o] > volume) {
                let over = u32::try_from(over).unwrap_or(u32::MAX);
                let side = |list: &[usize], slims: &[Slim], left: &[u64], fill: &[u64]| {
                    let (mut total, mut own, mut own_fill) = (0u128, 0u128, 0u128);
                    for (k, &i) in list.iter().enumerate() {
                        total += u128::from(left[i]);
                        if slims[i].who == over {
                            own += u128::from(left[i]);
                            own_fill += u128::from(fill[k]);
                        }
                    }
                    // The fill can give up what others cannot replace on this side.
                    (
                        own_fill,
                        own_fill.saturating_sub(volume.saturating_sub(total - own)),
                    )
                };
                let (x_own, x_spare) = side(&bl, bids, self.bid_left, &x);
                let (y_own, y_spare) = side(&al, asks, self.ask_left, &y);
                let excess = x_own + y_own - volume;
                let from_bids = excess
                    .div_ceil(2)
                    .max(excess.saturating_sub(y_spare))
                    .min(x_spare);
                refill(&bl, bids, self.bid_left, &mut x, over, from_bids);
                refill(&al, asks, self.ask_left, &mut y, over, excess - from_bids);
            }
        }
        self.pair_fills(&bl, &al, &mut x, &mut y, volume, bound) && all_asks
    }

    /// Pairs the fills `x` (bids `bl`) with the fills `y` (asks `al`), both in priority
    /// order, never an owner with itself: the first bid with energy left takes the first ask
    /// of another owner, as much as it can without leaving some third owner holding more
    /// than remains to pair; when an owner holds exactly what remains, every pair must
    /// include it and the first bid takes that owner's first ask. Returns whether every pair
    /// traded (false only if grid fees refused one the volume pass thought feasible).
    fn pair_fills(
        &mut self,
        bl: &[usize],
        al: &[usize],
        x: &mut [u64],
        y: &mut [u64],
        volume: u128,
        bound: u128,
    ) -> bool {
        let (bids, asks) = (self.bids, self.asks);
        let bid_owner = |k: usize| bids[bl[k]].who;
        let ask_owner = |k: usize| asks[al[k]].who;
        let alive_from = |y: &[u64], from: usize| (from..y.len()).find(|&k| y[k] > 0);
        let other_from = |y: &[u64], from: usize, not: u32| {
            (from..y.len()).find(|&k| y[k] > 0 && ask_owner(k) != not)
        };
        let (n, m) = (x.len(), y.len());
        let mut remaining = volume;
        let mut all_traded = true;
        let mut fb = (0..n).find(|&k| x[k] > 0).unwrap_or(n);
        let mut fa = alive_from(y, 0).unwrap_or(m);
        // First ask with energy left whose owner is not the owner of `fa`.
        let mut fa2 = if fa < m {
            other_from(y, fa + 1, ask_owner(fa)).unwrap_or(m)
        } else {
            m
        };
        let mut careful: Option<Holdings> = None;
        // The fills satisfy max_o (X_o + Y_o) ≤ F, so a pair always exists while energy
        // remains (see `Holdings`); the guards only protect against a broken invariant.
        while remaining > 0 && fb < n && fa < m {
            let i = fb;
            let u = bid_owner(i);
            let mut j = if ask_owner(fa) == u { fa2 } else { fa };
            if j >= m {
                break;
            }
            let mut q = x[i].min(y[j]);
            // Design: while what remains after this pair is at least the largest holding any
            // owner started with, no owner can hold more than remains, so no bookkeeping is
            // needed; only the last `bound` Wh are paired with per-owner holdings.
            if careful.is_none() && remaining - u128::from(q) < bound {
                let open_bids = (fb..n).map(|k| (bid_owner(k), x[k]));
                let open_asks = (fa..m).map(|k| (ask_owner(k), y[k]));
                careful = Some(Holdings::new(self.owners, open_bids.chain(open_asks)));
            }
            if let Some(h) = careful.as_mut() {
                let (other, held) = h.largest_except(u, ask_owner(j));
                if held == remaining {
                    // `other` owns neither the bid nor the ask at `fa` (if `j` is `fa`, `other`
                    // is not its owner; if not, `fa` is the bid owner's): its first ask with
                    // energy left is at or beyond `fa2`.
                    match h.first_ask(other, fa2, |k| y[k] > 0 && ask_owner(k) == other, m) {
                        Some(k) => j = k,
                        None => break,
                    }
                    q = x[i].min(y[j]);
                } else {
                    q = q.min(u64::try_from(remaining - held).unwrap_or(u64::MAX));
                }
                h.take(u, q);
                h.take(ask_owner(j), q);
            }
            if !self.pair(bl[i], al[j], MatchPass::Standard, q) {
                all_traded = false;
            }
            x[i] -= q;
            y[j] -= q;
            remaining -= u128::from(q);
            if x[i] == 0 {
                fb = (fb + 1..n).find(|&k| x[k] > 0).unwrap_or(n);
            }
            if y[j] == 0 {
                if j == fa {
                    let owner = ask_owner(fa);
                    fa = alive_from(y, fa + 1).unwrap_or(m);
                    // Every ask with energy left before `fa2` belongs to the old owner of `fa`.
                    if fa < m && ask_owner(fa) != owner {
                        fa2 = other_from(y, fa.max(fa2) + 1, ask_owner(fa)).unwrap_or(m);
                    }
                } else if j == fa2 {
                    fa2 = other_from(y, fa2 + 1, ask_owner(fa)).unwrap_or(m);
                }
            }
        }
        all_traded && remaining == 0
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
                if self.ask_left[j] > 0 && !self.pair(i, j, pass, u64::MAX) {
                    skips += 1;
                }
                if self.ask_left[j] == 0 || self.bid_left[i] > 0 {
                    k += 1;
                }
            }
        }
    }

    /// Trades up to `most` Wh between bid `i` and ask `j` if they may trade; false if not.
    fn pair(&mut self, i: usize, j: usize, pass: MatchPass, most: u64) -> bool {
        let (bid, ask) = (self.bids[i], self.asks[j]);
        if bid.owner == ask.owner || (bid.green && !ask.green) {
            return false;
        }
        let energy = self.bid_left[i].min(self.ask_left[j]).min(most);
        let anchor = PriceAnchor::Buyer(self.price);
        let Ok(amounts) = self.pricer.price(bid.area, ask.area, energy, anchor, None) else {
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

/// The positions below `n` that `keep` accepts, in order.
///
/// Design: with room for all `n` from the start — a slot's lists hold most of its orders, and
/// a list collected from a filter grows (and is copied) step by step.
fn positions_where(n: usize, mut keep: impl FnMut(usize) -> bool) -> Vec<usize> {
    let mut v = Vec::with_capacity(n);
    v.extend((0..n).filter(|&i| keep(i)));
    v
}

/// Fills `volume` from the top of one side: each order in priority order takes what is left
/// of its energy until the volume is reached.
fn fill_in_priority(list: &[usize], left: &[u64], volume: u128) -> Vec<u64> {
    let mut rest = volume;
    list.iter()
        .map(|&i| {
            let take = u128::from(left[i]).min(rest);
            rest -= take;
            // take ≤ left[i], a u64.
            u64::try_from(take).unwrap_or(0)
        })
        .collect()
}

/// Moves `amount` of one side's fills away from owner `over`: its lowest-ranked fills give
/// up energy first, and the highest-ranked orders of other owners with energy to spare take
/// it.
fn refill(list: &[usize], slims: &[Slim], left: &[u64], fill: &mut [u64], over: u32, amount: u128) {
    let mut cut = amount;
    for k in (0..list.len()).rev() {
        if cut == 0 {
            break;
        }
        if slims[list[k]].who == over {
            let take = u128::from(fill[k]).min(cut);
            // take ≤ fill[k], a u64.
            fill[k] -= u64::try_from(take).unwrap_or(0);
            cut -= take;
        }
    }
    let mut add = amount - cut;
    for k in 0..list.len() {
        if add == 0 {
            break;
        }
        let i = list[k];
        if slims[i].who != over {
            let take = u128::from(left[i] - fill[k]).min(add);
            fill[k] += u64::try_from(take).unwrap_or(0);
            add -= take;
        }
    }
}

/// What each owner still has to pair (bids and asks together) in the last part of
/// [`Pairing::pair_fills`], ordered to find the largest holding.
///
/// Why pairing never gets stuck: with `R` Wh left to pair and holdings `h_o`, a pairing
/// between different owners exists exactly when `max_o h_o ≤ R` (the closed form on
/// [`CallAuction`], applied to the fills). A pair of `q` Wh between `u` and `w` keeps this when
/// `h_o ≤ R − q` for every other owner `o`, which the limit on `q` ensures; and if some `o`
/// holds exactly `R`, the others hold `R` between them, so pairing the first bid (not
/// `o`'s) with an ask of `o` keeps it too. An owner that holds exactly what remains keeps
/// doing so to the end, so at most two owners ever do.
struct Holdings {
    /// Energy each owner (by dense owner index) still holds.
    held: Vec<u64>,
    /// `(holding, owner)` pairs, largest first; a pair whose holding is no longer the owner's
    /// is stale and skipped.
    ///
    /// Design: holdings only shrink, so a heap that gets each new holding pushed and drops
    /// stale pairs when they reach the top finds the largest as an ordered set would (same
    /// order, ties to the larger owner index) without a tree node moved per pair.
    heap: std::collections::BinaryHeap<(u64, u32)>,
    /// Where the search for an owner's first ask resumes (its asks go in priority order).
    cursor: Vec<usize>,
}

impl Holdings {
    /// Design: owners are dense indices below `owners` ([`Owners`]), so their holdings and
    /// cursors are slots of a vector rather than entries of a hash map built every clearing.
    fn new(owners: usize, open: impl Iterator<Item = (u32, u64)>) -> Self {
        let mut held = vec![0u64; owners];
        for (who, e) in open {
            if let Some(h) = held.get_mut(who as usize) {
                *h += e;
            }
        }
        let heap = (0u32..)
            .zip(&held)
            .filter(|&(_, &h)| h > 0)
            .map(|(w, &h)| (h, w))
            .collect();
        Self {
            held,
            heap,
            cursor: vec![0; owners],
        }
    }

    /// Whether `(h, w)` is `w`'s present holding.
    fn current(&self, (h, w): (u64, u32)) -> bool {
        h > 0 && self.held.get(w as usize) == Some(&h)
    }

    /// The owner with the largest holding other than `a` and `b`, and that holding (0 if
    /// none).
    fn largest_except(&mut self, a: u32, b: u32) -> (u32, u128) {
        // At most two current pairs (those of `a` and `b`) are set aside to look below them.
        let mut aside = [None; 2];
        let mut found = (u32::MAX, 0);
        while let Some(&top) = self.heap.peek() {
            if !self.current(top) {
                self.heap.pop();
            } else if top.1 == a || top.1 == b {
                if let Some(free) = aside.iter_mut().find(|x| x.is_none()) {
                    *free = self.heap.pop();
                } else {
                    break;
                }
            } else {
                found = (top.1, u128::from(top.0));
                break;
            }
        }
        self.heap.extend(aside.into_iter().flatten());
        found
    }

    fn take(&mut self, who: u32, q: u64) {
        // A take of nothing leaves the holding (and its one current pair) as it is.
        if let Some(h) = self.held.get_mut(who as usize)
            && *h > 0
            && q > 0
        {
            *h -= q;
            if *h > 0 {
                let pair = (*h, who);
                self.heap.push(pair);
            }
        }
    }

    /// The first position at or after `from` (and after any earlier answer for `who`) that
    /// `is_open` accepts, below `end`.
    fn first_ask(
        &mut self,
        who: u32,
        from: usize,
        is_open: impl Fn(usize) -> bool,
        end: usize,
    ) -> Option<usize> {
        let start = self
            .cursor
            .get(who as usize)
            .copied()
            .unwrap_or(0)
            .max(from);
        let found = (start..end).find(|&k| is_open(k));
        if let (Some(k), Some(c)) = (found, self.cursor.get_mut(who as usize)) {
            *c = k;
        }
        found
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
    fn small_and_large_books_rank_by_price_sequence_id_alike() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        // Around the size from which ranking radix-sorts; few prices and repeated sequences,
        // so that ties are ordered by sequence and then by id.
        for n in [1u64, 5, 63, 64, 65, 66, 300] {
            let entries: Vec<AuctionEntry> = (0..n)
                .map(|k| {
                    let (side, price) = if next(2) == 0 {
                        (Side::Buy, 20 + next(4))
                    } else {
                        (Side::Sell, 10 + next(4))
                    };
                    AuctionEntry {
                        order: Order {
                            side,
                            ..Order::bid(OrderId(1000 - k), AccountId(1), AreaId(0), price, 1)
                        },
                        sequence: next(n / 2 + 1),
                    }
                })
                .collect();
            let (bids, asks) = rank(&entries);
            let ids = |v: &[Ranked]| -> Vec<OrderId> {
                v.iter().map(|r| entries[r.at as usize].order.id).collect()
            };
            let expected = |side: Side| -> Vec<OrderId> {
                let mut v: Vec<&AuctionEntry> =
                    entries.iter().filter(|e| e.order.side == side).collect();
                v.sort_by_key(|e| {
                    let p = e.order.price_per_kwh;
                    let price = if side == Side::Buy { u64::MAX - p } else { p };
                    (price, e.sequence, e.order.id)
                });
                v.iter().map(|e| e.order.id).collect()
            };
            assert_eq!(ids(&bids), expected(Side::Buy), "{n} orders");
            assert_eq!(ids(&asks), expected(Side::Sell), "{n} orders");
        }
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
