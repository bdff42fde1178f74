//! Property tests over thousands of random books: conservation of energy and money, limits
//! and tariff band respected, books never crossed, maximal call-auction volume, and
//! independence from arrival order.

use super::{OPERATOR, SLOT, community, open_time, per_kwh, percent};
use gridshare_core::market::{
    AccountId, AreaId, AreaTree, AuctionEntry, ContinuousBook, ContinuousKind, FeeProfile,
    HouseholdEnergy, MeterCounters, MeterDelivery, MeterId, Order, OrderId, PeriodKpis,
    PriceAnchor, PriceRule, Side, SlotTerms, Trade, amount_for, clear_call_auction, settle_slot,
    slot_kpis,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::HashMap;

const RETAIL: u64 = 40;
const FEED_IN: u64 = 5;
const OWNERS: u32 = 6;

/// Fee setups: none; constant fees; percentage fees; each on a 7-area tree
/// (root, two neighbourhoods, two houses under each).
fn arb_terms() -> impl Strategy<Value = SlotTerms> {
    (
        0u8..3,
        prop::array::uniform3(0u64..4),
        prop::array::uniform3(0u64..1500),
    )
        .prop_map(|(kind, constant, bp)| {
            let fee = |i: usize| match kind {
                0 => FeeProfile::Free,
                1 => per_kwh(constant[i]),
                _ => percent(bp[i]),
            };
            let mut areas = AreaTree::new(fee(0), OPERATOR).unwrap();
            for n in 0..2u32 {
                let nb = areas
                    .add_area(areas.root(), fee(1), AccountId(901 + n))
                    .unwrap();
                for h in 0..2u32 {
                    areas
                        .add_area(nb, fee(2), AccountId(910 + 2 * n + h))
                        .unwrap();
                }
            }
            community(areas, RETAIL, FEED_IN).terms(SLOT).unwrap()
        })
}

#[derive(Debug, Clone, Copy)]
struct OrderSpec {
    owner: u32,
    area: u16,
    buy: bool,
    price: u64,
    energy: u64,
    partner: Option<u32>,
    green: bool,
}

fn arb_spec() -> impl Strategy<Value = OrderSpec> {
    (
        0..OWNERS,
        0u16..7,
        any::<bool>(),
        FEED_IN..=RETAIL,
        1u64..3000,
        prop::option::weighted(0.1, 0..OWNERS),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(owner, area, buy, price, energy, partner, green)| OrderSpec {
                owner,
                area,
                buy,
                price,
                energy,
                partner,
                green,
            },
        )
}

fn order(id: u64, s: &OrderSpec) -> Order {
    let make = if s.buy { Order::bid } else { Order::ask };
    let mut o = make(
        OrderId(id),
        AccountId(s.owner),
        AreaId(s.area),
        s.price,
        s.energy,
    );
    o.preference.preferred_partner = s.partner.map(AccountId);
    o.preference.green = s.green;
    o
}

#[derive(Debug, Clone)]
enum Op {
    Submit(OrderSpec),
    Cancel(usize),
    Amend(usize, u64, u64),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => arb_spec().prop_map(Op::Submit),
        2 => any::<usize>().prop_map(Op::Cancel),
        2 => (any::<usize>(), FEED_IN..=RETAIL, 1u64..3000).prop_map(|(i, p, e)| Op::Amend(i, p, e)),
    ]
}

/// Checks one trade against the limits of its two orders and the tariff band, and the
/// money identity.
fn check_trade(
    terms: &SlotTerms,
    t: &Trade,
    bid: &Order,
    ask: &Order,
) -> Result<(), TestCaseError> {
    let a = t.amounts;
    prop_assert!(t.energy_wh > 0);
    prop_assert_ne!(t.buyer, t.seller, "self-trade");
    prop_assert_eq!(a.buyer_pays, a.seller_receives + a.fees, "money leaked");
    prop_assert!(
        a.buyer_rate_per_kwh <= bid.price_per_kwh,
        "buyer above its limit: {:?}",
        t
    );
    prop_assert!(
        a.seller_rate_per_kwh >= ask.price_per_kwh,
        "seller below its limit: {:?}",
        t
    );
    prop_assert!(terms.band.feed_in_per_kwh <= a.seller_rate_per_kwh);
    prop_assert!(a.buyer_rate_per_kwh <= terms.band.retail_per_kwh);
    prop_assert!(a.buyer_pays <= amount_for(t.energy_wh, bid.price_per_kwh).unwrap());
    prop_assert!(a.seller_receives >= amount_for(t.energy_wh, ask.price_per_kwh).unwrap());
    prop_assert!(
        !bid.preference.green || ask.preference.green,
        "green-only bid got grey energy"
    );
    // Re-pricing gives the same amounts (what settlement relies on).
    let again = terms
        .fees
        .price(t.buyer_area, t.seller_area, t.energy_wh, t.anchor)
        .unwrap();
    prop_assert_eq!(again, a);
    Ok(())
}

fn check_netting(
    terms: &SlotTerms,
    trades: &[Trade],
    imports: &[(u32, u64, u64)],
) -> Result<(), TestCaseError> {
    let deliveries: Vec<MeterDelivery> = imports
        .iter()
        .enumerate()
        .map(|(i, &(owner, imp, exp))| MeterDelivery {
            meter: MeterId(u32::try_from(i).unwrap()),
            account: AccountId(owner),
            start: MeterCounters {
                import_wh: 5,
                export_wh: 7,
            },
            end: MeterCounters {
                import_wh: 5 + imp,
                export_wh: 7 + exp,
            },
        })
        .collect();
    let s = settle_slot(trades, &deliveries, terms).unwrap();
    prop_assert_eq!(
        s.balances.iter().map(|b| b.amount).sum::<i128>(),
        0,
        "netting does not sum to zero"
    );
    prop_assert_eq!(s.buyers_paid, s.sellers_received + s.fees);
    let fee_total: u64 = s.fees_by_recipient.iter().map(|f| f.1).sum();
    prop_assert_eq!(u128::from(fee_total), s.fees);
    let bought: u64 = trades.iter().map(|t| t.energy_wh).sum();
    let net_traded: i64 = s.positions.iter().map(|p| p.traded_wh).sum();
    prop_assert_eq!(net_traded, 0, "energy bought != energy sold");
    prop_assert!(bought == 0 || !s.positions.is_empty());
    Ok(())
}

fn arb_meters() -> impl Strategy<Value = Vec<(u32, u64, u64)>> {
    prop::collection::vec((0..OWNERS, 0u64..5000, 0u64..5000), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4000,
        // Failing seeds are kept beside this file (tests/it/market/properties.*).
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    /// Continuous books (both kinds) under random submit/cancel/amend sequences.
    #[test]
    fn continuous_book_conserves_and_never_crosses(
        terms in arb_terms(),
        one_sided in prop::bool::weighted(0.25),
        ops in prop::collection::vec(arb_op(), 1..60),
        meters in arb_meters(),
    ) {
        let kind = if one_sided { ContinuousKind::PayAsOffer } else { ContinuousKind::TwoSided };
        let now = open_time(&terms);
        let mut book = ContinuousBook::new(terms.clone(), kind);
        // Current limit of each order, and the energy ledger: submitted = traded + open + gone.
        let mut orders: HashMap<OrderId, Order> = HashMap::new();
        let mut submitted: HashMap<OrderId, u64> = HashMap::new();
        let mut traded: HashMap<OrderId, u64> = HashMap::new();
        let mut gone: HashMap<OrderId, u64> = HashMap::new();
        let mut ids: Vec<OrderId> = Vec::new();
        let mut all_trades = Vec::new();
        for (n, op) in ops.iter().enumerate() {
            let mut trades = Vec::new();
            match op {
                Op::Submit(spec) => {
                    let o = order(u64::try_from(n).unwrap(), spec);
                    let s = book.submit_into(o, now, &mut trades).unwrap();
                    prop_assert_eq!(s.traded_wh + s.resting_wh + s.dropped_wh, o.energy_wh);
                    orders.insert(o.id, o);
                    submitted.insert(o.id, o.energy_wh);
                    *gone.entry(o.id).or_default() += s.dropped_wh;
                    ids.push(o.id);
                }
                Op::Cancel(i) if !ids.is_empty() => {
                    let id = ids[i % ids.len()];
                    if let Ok(r) = book.cancel(id, now) {
                        *gone.entry(id).or_default() += r.remaining_wh;
                    }
                }
                Op::Amend(i, price, energy) if !ids.is_empty() => {
                    let id = ids[i % ids.len()];
                    let before = book.resting_orders().into_iter().find(|r| r.id == id);
                    if let Ok(s) = book.amend(id, *price, *energy, now, &mut trades) {
                        let before = before.unwrap().remaining_wh;
                        // The amend replaces the open energy: account the difference.
                        *submitted.get_mut(&id).unwrap() += *energy;
                        *gone.entry(id).or_default() += before;
                        *gone.entry(id).or_default() += s.dropped_wh;
                        let o = orders.get_mut(&id).unwrap();
                        o.price_per_kwh = *price;
                    }
                }
                _ => {}
            }
            for t in &trades {
                check_trade(&terms, t, &orders[&t.bid], &orders[&t.ask])?;
                match t.anchor {
                    PriceAnchor::Buyer(p) => prop_assert_eq!(p, orders[&t.bid].price_per_kwh),
                    PriceAnchor::Seller(p) => prop_assert_eq!(p, orders[&t.ask].price_per_kwh),
                }
                *traded.entry(t.bid).or_default() += t.energy_wh;
                *traded.entry(t.ask).or_default() += t.energy_wh;
            }
            all_trades.extend(trades);

            // Never crossed: no two resting orders that could legally trade.
            let resting = book.resting_orders();
            for b in resting.iter().filter(|r| r.side == Side::Buy) {
                for a in resting.iter().filter(|r| r.side == Side::Sell) {
                    let could = b.owner != a.owner
                        && (!b.green || a.green)
                        && terms.fees.crosses(b.price_per_kwh, a.price_per_kwh, b.area, a.area);
                    prop_assert!(!could, "crossed book: {:?} / {:?}", b, a);
                }
            }
            if kind == ContinuousKind::PayAsOffer {
                prop_assert!(resting.iter().all(|r| r.side == Side::Sell));
            }
        }
        let open: HashMap<OrderId, u64> =
            book.resting_orders().into_iter().map(|r| (r.id, r.remaining_wh)).collect();
        for (id, total) in &submitted {
            let accounted = traded.get(id).copied().unwrap_or(0)
                + open.get(id).copied().unwrap_or(0)
                + gone.get(id).copied().unwrap_or(0);
            prop_assert_eq!(*total, accounted, "energy of {:?} not conserved", id);
        }
        check_netting(&terms, &all_trades, &meters)?;
    }

    /// Call auction with fees, preferences and shared owners: limits, band, one price,
    /// conservation, netting.
    #[test]
    fn call_auction_respects_limits_and_conserves(
        terms in arb_terms(),
        specs in prop::collection::vec(arb_spec(), 0..80),
        rule in arb_rule(),
        meters in arb_meters(),
    ) {
        let entries = to_entries(&specs);
        let r = clear_call_auction(&entries, &terms, rule).unwrap();
        let by_id: HashMap<OrderId, Order> = entries.iter().map(|e| (e.order.id, e.order)).collect();
        let mut filled: HashMap<OrderId, u64> = HashMap::new();
        for t in &r.trades {
            check_trade(&terms, t, &by_id[&t.bid], &by_id[&t.ask])?;
            prop_assert_eq!(t.anchor, PriceAnchor::Buyer(r.clearing_price.unwrap()), "not one uniform price");
            *filled.entry(t.bid).or_default() += t.energy_wh;
            *filled.entry(t.ask).or_default() += t.energy_wh;
        }
        if let (Some(p), Some(a), Some(b)) = (r.clearing_price, r.marginal_ask, r.marginal_bid) {
            prop_assert!(a.max(terms.band.feed_in_per_kwh) <= p && p <= b.min(terms.band.retail_per_kwh));
        }
        let left: HashMap<OrderId, u64> = r.unmatched.iter().map(|u| (u.order, u.energy_wh)).collect();
        for e in &entries {
            let f = filled.get(&e.order.id).copied().unwrap_or(0);
            prop_assert_eq!(f + left.get(&e.order.id).copied().unwrap_or(0), e.order.energy_wh);
        }
        check_netting(&terms, &r.trades, &meters)?;
    }

    /// Arrival order matters only through the sequence numbers: the same entries in any
    /// order clear identically.
    #[test]
    fn call_auction_ignores_arrival_order(
        terms in arb_terms(),
        specs in prop::collection::vec(arb_spec(), 0..60),
        seqs in prop::collection::vec(0u64..20, 60),
        rule in arb_rule(),
        seed in any::<u64>(),
    ) {
        let mut entries = to_entries(&specs);
        // Few distinct sequences, so the id tie-break is exercised too.
        for (e, s) in entries.iter_mut().zip(&seqs) {
            e.sequence = *s;
        }
        let base = clear_call_auction(&entries, &terms, rule).unwrap();
        let mut shuffled = entries.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            let j = usize::try_from(x % u64::try_from(i + 1).unwrap()).unwrap();
            shuffled.swap(i, j);
        }
        prop_assert_eq!(clear_call_auction(&shuffled, &terms, rule).unwrap(), base);
    }

    /// Money identity and rounding bounds of the fee arithmetic itself, on any energy and
    /// rate, both anchors, all fee setups.
    #[test]
    fn every_priced_trade_conserves_money(
        terms in arb_terms(),
        buyer in 0u16..7,
        seller in 0u16..7,
        energy in 1u64..(1 << 40),
        rate in 0u64..1_000_000,
        seller_anchored in any::<bool>(),
    ) {
        let anchor = if seller_anchored { PriceAnchor::Seller(rate) } else { PriceAnchor::Buyer(rate) };
        if let Ok(a) = terms.fees.price(AreaId(buyer), AreaId(seller), energy, anchor) {
            prop_assert_eq!(a.buyer_pays, a.seller_receives + a.fees);
            prop_assert!(a.seller_rate_per_kwh <= a.buyer_rate_per_kwh);
            let (amounts, legs) = terms.fees.fee_legs(AreaId(buyer), AreaId(seller), energy, anchor).unwrap();
            prop_assert_eq!(amounts, a);
            prop_assert_eq!(legs.as_slice().iter().map(|l| l.amount).sum::<u64>(), a.fees);
            match anchor {
                PriceAnchor::Buyer(p) => prop_assert_eq!(a.buyer_pays, amount_for(energy, p).unwrap()),
                PriceAnchor::Seller(s) => prop_assert_eq!(a.seller_receives, amount_for(energy, s).unwrap()),
            }
        }
    }
}

proptest! {
    // A brute-force maximum flow per price level: fewer cases than above.
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    /// Owners on both sides (few owners, few prices, so they overlap and tie often), no fees
    /// or preferences: the closed form equals a brute-force maximum flow at every price, the
    /// auction trades the most any single price allows between different owners, and no bid
    /// and ask of different owners that could trade at the clearing price are left.
    #[test]
    fn call_auction_maximises_volume_between_different_owners(
        specs in prop::collection::vec(arb_small_spec(), 0..24),
        rule in arb_rule(),
    ) {
        let terms = plain_terms();
        let entries = to_entries(&specs);
        let r = clear_call_auction(&entries, &terms, rule).unwrap();
        let mut best = 0;
        // V(p) only changes at limit prices, so the levels cover every price.
        for p in (0..6).map(|level| FEED_IN + 7 * level) {
            let flow = max_flow_at(&specs, p);
            prop_assert_eq!(closed_form_at(&specs, p), flow, "closed form at {}", p);
            best = best.max(flow);
        }
        prop_assert_eq!(u128::from(r.traded_wh()), best);
        prop_assert!(r.trades.iter().all(|t| t.buyer != t.seller));
        if let Some(p) = r.clearing_price {
            prop_assert_eq!(max_flow_at(&specs, p), best, "the price itself clears the most");
            let open = |side: Side| -> Vec<(u64, AccountId)> {
                r.unmatched.iter().filter(|u| u.side == side).map(|u| (price_of(&entries, u.order), u.owner)).collect()
            };
            for (bp, buyer) in open(Side::Buy).into_iter().filter(|&(bp, _)| bp >= p) {
                for (ap, seller) in open(Side::Sell) {
                    prop_assert!(ap > p || seller == buyer, "bid {} ({:?}) and ask {} ({:?}) left at {}", bp, buyer, ap, seller, p);
                }
            }
        } else {
            prop_assert_eq!(best, 0);
        }
    }

    /// Sequence numbers decide who is rationed, never how much trades or at what price:
    /// renumbering every order leaves the clearing price and the volume as they were.
    #[test]
    fn call_auction_price_and_volume_ignore_sequence(
        specs in prop::collection::vec(arb_small_spec(), 0..40),
        rule in arb_rule(),
        seed in any::<u64>(),
    ) {
        let terms = plain_terms();
        let entries = to_entries(&specs);
        let base = clear_call_auction(&entries, &terms, rule).unwrap();
        let mut renumbered = entries.clone();
        let mut x = seed | 1;
        for e in &mut renumbered {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            e.sequence = x % 8;
        }
        let again = clear_call_auction(&renumbered, &terms, rule).unwrap();
        prop_assert_eq!(again.clearing_price, base.clearing_price);
        prop_assert_eq!(again.traded_wh(), base.traded_wh());
    }
}

fn arb_rule() -> impl Strategy<Value = PriceRule> {
    prop_oneof![
        Just(PriceRule::Midpoint),
        (0u16..=10_000, 0u16..2_000).prop_map(|(basis_points, seller_max_margin_basis_points)| {
            PriceRule::KFactorCapped {
                basis_points,
                seller_max_margin_basis_points,
            }
        }),
        (0u16..=10_000).prop_map(|basis_points| PriceRule::KFactor { basis_points }),
        Just(PriceRule::MarginalBid),
        Just(PriceRule::MarginalAsk),
    ]
}

fn plain_terms() -> SlotTerms {
    community(
        AreaTree::new(FeeProfile::Free, OPERATOR).unwrap(),
        RETAIL,
        FEED_IN,
    )
    .terms(SLOT)
    .unwrap()
}

fn to_entries(specs: &[OrderSpec]) -> Vec<AuctionEntry> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = u64::try_from(i).unwrap();
            AuctionEntry {
                order: order(n, s),
                sequence: n,
            }
        })
        .collect()
}

fn price_of(entries: &[AuctionEntry], id: OrderId) -> u64 {
    entries
        .iter()
        .find(|e| e.order.id == id)
        .unwrap()
        .order
        .price_per_kwh
}

/// Plain orders from 3 owners at 6 prices, each owner on both sides.
fn arb_small_spec() -> impl Strategy<Value = OrderSpec> {
    (0u32..3, any::<bool>(), 0u64..6, 1u64..2000).prop_map(|(owner, buy, level, energy)| {
        OrderSpec {
            owner,
            area: 0,
            buy,
            price: FEED_IN + 7 * level,
            energy,
            partner: None,
            green: false,
        }
    })
}

/// An order's owner and energy.
type Holding = (u32, u64);

/// Eligible energy at `p`: bids and asks, per owner.
fn eligible_at(specs: &[OrderSpec], p: u64) -> (Vec<Holding>, Vec<Holding>) {
    let pick = |buy: bool| {
        specs
            .iter()
            .filter(|s| s.buy == buy && if buy { s.price >= p } else { s.price <= p })
            .map(|s| (s.owner, s.energy))
            .collect()
    };
    (pick(true), pick(false))
}

/// `min(D, S, D + S − max_o (D_o + S_o))`, the module docs' closed form.
fn closed_form_at(specs: &[OrderSpec], p: u64) -> u128 {
    let (bids, asks) = eligible_at(specs, p);
    let mut held: HashMap<u32, u128> = HashMap::new();
    for &(o, e) in bids.iter().chain(&asks) {
        *held.entry(o).or_default() += u128::from(e);
    }
    let d: u128 = bids.iter().map(|b| u128::from(b.1)).sum();
    let s: u128 = asks.iter().map(|a| u128::from(a.1)).sum();
    let largest = held.values().copied().max().unwrap_or(0);
    d.min(s).min(d + s - largest)
}

/// Maximum flow source → each eligible bid → every eligible ask of another owner → sink
/// (Edmonds–Karp on a capacity matrix): what any allocation at `p` could trade.
fn max_flow_at(specs: &[OrderSpec], p: u64) -> u128 {
    let (bids, asks) = eligible_at(specs, p);
    let n = bids.len() + asks.len() + 2;
    let (source, sink) = (n - 2, n - 1);
    let mut cap = vec![vec![0u128; n]; n];
    for (i, &(bo, be)) in bids.iter().enumerate() {
        cap[source][i] = u128::from(be);
        for (j, &(ao, _)) in asks.iter().enumerate() {
            if ao != bo {
                cap[i][bids.len() + j] = u128::MAX / 4;
            }
        }
    }
    for (j, &(_, ae)) in asks.iter().enumerate() {
        cap[bids.len() + j][sink] = u128::from(ae);
    }
    let mut flow = 0u128;
    loop {
        let mut prev = vec![usize::MAX; n];
        prev[source] = source;
        let mut queue = std::collections::VecDeque::from([source]);
        while let Some(v) = queue.pop_front() {
            for w in 0..n {
                if prev[w] == usize::MAX && cap[v][w] > 0 {
                    prev[w] = v;
                    queue.push_back(w);
                }
            }
        }
        if prev[sink] == usize::MAX {
            return flow;
        }
        let mut push = u128::MAX;
        let mut v = sink;
        while v != source {
            push = push.min(cap[prev[v]][v]);
            v = prev[v];
        }
        let mut v = sink;
        while v != source {
            cap[prev[v]][v] -= push;
            cap[v][prev[v]] += push;
            v = prev[v];
        }
        flow += push;
    }
}

/// One household's slot energy: produced, imported, and exported up to what it produced and
/// imported.
fn arb_energy() -> impl Strategy<Value = (u64, u64, u64)> {
    (0u64..4000, 0u64..4000, 0u64..=10_000).prop_map(|(produced, imported, share)| {
        (produced, imported, (produced + imported) * share / 10_000)
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 500,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    /// `PeriodKpis::add_slot` (the simulator's path: each household straight into the period)
    /// adds exactly what `slot_kpis` and `PeriodKpis::add` do, slot after slot — households
    /// listed as before, a slot listing others, a refused slot that must add nothing — and
    /// returns the slot's community figures.
    #[test]
    fn adding_a_slot_in_place_equals_computing_then_adding_it(
        terms in arb_terms(),
        slots in prop::collection::vec(
            (
                prop::collection::vec(arb_spec(), 0..30),
                prop::collection::vec(arb_energy(), OWNERS as usize),
                0u32..3,
            ),
            1..6,
        ),
    ) {
        let (mut in_place, mut by_table) = (PeriodKpis::default(), PeriodKpis::default());
        for (specs, energy, shape) in &slots {
            let cleared = clear_call_auction(&to_entries(specs), &terms, PriceRule::Midpoint).unwrap();
            // Shape 0: every owner in account order; 1: every other owner (another list);
            // 2: the first household exports more than it produced and imported (refused).
            let households: Vec<HouseholdEnergy> = (0..OWNERS)
                .filter(|&o| *shape != 1 || o % 2 == 0)
                .map(|o| {
                    let (produced_wh, imported_wh, exported_wh) = energy[o as usize];
                    let forged = *shape == 2 && o == 0;
                    HouseholdEnergy {
                        account: AccountId(o),
                        produced_wh,
                        imported_wh,
                        exported_wh: if forged { produced_wh + imported_wh + 1 } else { exported_wh },
                    }
                })
                .collect();
            let meters: Vec<(u32, u64, u64)> =
                households.iter().map(|h| (h.account.0, h.imported_wh, h.exported_wh)).collect();
            let deliveries: Vec<MeterDelivery> = meters
                .iter()
                .map(|&(owner, imp, exp)| MeterDelivery {
                    meter: MeterId(owner),
                    account: AccountId(owner),
                    start: MeterCounters::default(),
                    end: MeterCounters { import_wh: imp, export_wh: exp },
                })
                .collect();
            let settled = settle_slot(&cleared.trades, &deliveries, &terms).unwrap();
            let price = cleared.clearing_price;
            let computed = slot_kpis(&terms, &cleared.trades, price, &households, &settled);
            let before = in_place.clone();
            let added = in_place.add_slot(&terms, &cleared.trades, price, &households, &settled);
            match computed {
                Ok(k) => {
                    by_table.add(&k);
                    let totals = added.unwrap();
                    prop_assert_eq!(totals, k.totals);
                }
                Err(e) => {
                    prop_assert_eq!(added.unwrap_err(), e);
                    prop_assert_eq!(&in_place, &before, "a refused slot added something");
                }
            }
            prop_assert_eq!(&in_place, &by_table);
        }
    }
}
