//! Checks against published numbers: Grid Singularity's grid-fee integration test
//! (`grid_fee.feature`) and Power TAC's auctioneer unit tests (`AuctionServiceTests.java`).

use super::{flat_terms, gsy_terms, open_time, per_kwh, percent};
use gridshare_core::market::{
    AccountId, AreaId, CallAuction, ContinuousBook, ContinuousKind, Order, OrderId, PriceRule,
    SlotTerms, Trade,
};

const LOAD: AccountId = AccountId(1);
const PV: AccountId = AccountId(2);

fn rates(terms: &SlotTerms, t: &Trade, buyer: AreaId, seller: AreaId) -> Vec<u64> {
    terms
        .fees
        .market_rates(buyer, seller, t.anchor)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

/// Load bid rests first, PV offer arrives: trade at the resting bid (pay-as-bid).
fn continuous(
    terms: SlotTerms,
    h1: AreaId,
    h2: AreaId,
    kind: ContinuousKind,
    bid: u64,
    ask: u64,
) -> Trade {
    let now = open_time(&terms);
    let mut book = ContinuousBook::new(terms, kind);
    let (first, second) = (
        Order::bid(OrderId(1), LOAD, h1, bid, 1000),
        Order::ask(OrderId(2), PV, h2, ask, 1000),
    );
    // Pay-as-offer: offers rest, the buyer takes them.
    let (first, second) = match kind {
        ContinuousKind::TwoSided => (first, second),
        ContinuousKind::PayAsOffer => (second, first),
    };
    assert!(book.submit(first, now).unwrap().is_empty());
    let trades = book.submit(second, now).unwrap();
    assert_eq!(trades.len(), 1);
    trades[0]
}

#[test]
fn gsy_constant_fees_pay_as_bid() {
    let (terms, h1, h2) = gsy_terms(per_kwh, 2, 1, 30);
    let t = continuous(terms.clone(), h1, h2, ContinuousKind::TwoSided, 30, 10);
    assert_eq!(rates(&terms, &t, h1, h2), [30, 30, 29, 27, 26]);
    assert_eq!(t.amounts.buyer_pays, 30);
    assert_eq!(t.amounts.seller_receives, 26);
    assert_eq!(t.amounts.fees, 4);
}

#[test]
fn gsy_constant_fees_pay_as_clear() {
    let (terms, h1, h2) = gsy_terms(per_kwh, 2, 1, 30);
    let now = open_time(&terms);
    let mut auction = CallAuction::new(terms.clone(), PriceRule::MarginalBid);
    auction
        .submit(Order::bid(OrderId(1), LOAD, h1, 30, 1000), now)
        .unwrap();
    auction
        .submit(Order::ask(OrderId(2), PV, h2, 10, 1000), now)
        .unwrap();
    let result = auction.clear();
    assert_eq!(result.clearing_price, Some(30));
    assert_eq!(result.trades.len(), 1);
    let t = result.trades[0];
    assert_eq!(rates(&terms, &t, h1, h2), [30, 30, 29, 27, 26]);
    assert_eq!((t.amounts.buyer_pays, t.amounts.seller_receives), (30, 26));
}

#[test]
fn gsy_constant_fees_one_sided_pay_as_offer() {
    let (terms, h1, h2) = gsy_terms(per_kwh, 2, 1, 30);
    let t = continuous(terms.clone(), h1, h2, ContinuousKind::PayAsOffer, 30, 10);
    assert_eq!(rates(&terms, &t, h1, h2), [14, 14, 13, 11, 10]);
    assert_eq!(
        (
            t.amounts.buyer_pays,
            t.amounts.seller_receives,
            t.amounts.fees
        ),
        (14, 10, 4)
    );
}

/// The percentage variant (`non_compounded_grid_fees.py`): 5 % / 10 % / 5 %. Prices in
/// hundredths of a cent so the published quarter-cents are whole units.
#[test]
fn gsy_percentage_fees() {
    let (terms, h1, h2) = gsy_terms(percent, 1_000, 500, 3_000);
    let t = continuous(
        terms.clone(),
        h1,
        h2,
        ContinuousKind::TwoSided,
        3_000,
        1_000,
    );
    assert_eq!(
        rates(&terms, &t, h1, h2),
        [3_000, 3_000, 2_875, 2_625, 2_500]
    );
    assert_eq!(
        (t.amounts.buyer_pays, t.amounts.seller_receives),
        (3_000, 2_500)
    );

    let t = continuous(
        terms.clone(),
        h1,
        h2,
        ContinuousKind::PayAsOffer,
        3_000,
        1_000,
    );
    assert_eq!(
        rates(&terms, &t, h1, h2),
        [1_200, 1_200, 1_150, 1_050, 1_000]
    );
    assert_eq!(
        (t.amounts.buyer_pays, t.amounts.seller_receives),
        (1_200, 1_000)
    );
}

/// Fees above the spread: a 13 ct bid and a 10 ct offer cannot trade across 4 ct of fees.
#[test]
fn gsy_fees_wider_than_the_spread_prevent_the_trade() {
    let (terms, h1, h2) = gsy_terms(per_kwh, 2, 1, 30);
    let now = open_time(&terms);
    let mut book = ContinuousBook::new(terms, ContinuousKind::TwoSided);
    assert!(
        book.submit(Order::bid(OrderId(1), LOAD, h1, 13, 1000), now)
            .unwrap()
            .is_empty()
    );
    assert!(
        book.submit(Order::ask(OrderId(2), PV, h2, 10, 1000), now)
            .unwrap()
            .is_empty()
    );
    assert_eq!(book.len(), 2);
    // At 14 the seller can receive exactly its 10.
    let t = book
        .submit(Order::bid(OrderId(3), LOAD, h1, 14, 1000), now)
        .unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].amounts.buyer_pays, t[0].amounts.seller_receives),
        (14, 10)
    );
}

/// Power TAC prices in currency units with two decimals: 20.5 is 2050 here; MWh are 10^6 Wh.
const MWH: u64 = 1_000_000;

fn power_tac(asks: &[(u64, u64)], bids: &[(u64, u64)]) -> gridshare_core::market::ClearingResult {
    power_tac_with(PriceRule::default(), asks, bids)
}

fn power_tac_with(
    rule: PriceRule,
    asks: &[(u64, u64)],
    bids: &[(u64, u64)],
) -> gridshare_core::market::ClearingResult {
    let terms = flat_terms(10_000, 0);
    let now = open_time(&terms);
    let mut auction = CallAuction::new(terms, rule);
    let mut id = 0;
    for &(energy, price) in asks {
        id += 1;
        auction
            .submit(
                Order::ask(
                    OrderId(id),
                    AccountId(100 + u32::try_from(id).unwrap()),
                    AreaId(0),
                    price,
                    energy,
                ),
                now,
            )
            .unwrap();
    }
    for &(energy, price) in bids {
        id += 1;
        auction
            .submit(
                Order::bid(
                    OrderId(id),
                    AccountId(200 + u32::try_from(id).unwrap()),
                    AreaId(0),
                    price,
                    energy,
                ),
                now,
            )
            .unwrap();
    }
    auction.clear()
}

#[test]
fn power_tac_one_ask_one_bid_clears_at_the_midpoint() {
    let r = power_tac(&[(MWH, 2_000)], &[(MWH, 2_200)]);
    assert_eq!(r.clearing_price, Some(2_100));
    assert_eq!(r.traded_wh(), MWH);
}

#[test]
fn power_tac_one_ask_two_bids_clears_at_20_5() {
    let r = power_tac(
        &[(MWH, 2_000)],
        &[(6 * MWH / 10, 2_200), (6 * MWH / 10, 2_100)],
    );
    assert_eq!(r.clearing_price, Some(2_050));
    // b2 (22) gets 0.6 MWh, b1 (21) gets 0.4 and keeps 0.2 unmatched.
    let got = |bid: u64| -> u64 {
        r.trades
            .iter()
            .filter(|t| t.bid == OrderId(bid))
            .map(|t| t.energy_wh)
            .sum()
    };
    assert_eq!(got(2), 6 * MWH / 10);
    assert_eq!(got(3), 4 * MWH / 10);
    assert_eq!(r.unmatched.len(), 1);
    assert_eq!(r.unmatched[0].order, OrderId(3));
    assert_eq!(r.unmatched[0].energy_wh, 2 * MWH / 10);
}

#[test]
fn power_tac_three_asks_two_bids_clear_1_9_mwh_at_20_5() {
    let r = power_tac(
        &[(9 * MWH / 10, 1_800), (MWH, 2_000), (MWH, 2_150)],
        &[(14 * MWH / 10, 2_100), (6 * MWH / 10, 2_200)],
    );
    assert_eq!(r.clearing_price, Some(2_050));
    assert_eq!(r.traded_wh(), 19 * MWH / 10);
}

#[test]
fn power_tac_ask_above_bid_does_not_clear() {
    let r = power_tac(&[(MWH, 2_300)], &[(MWH, 2_200)]);
    assert_eq!(r.clearing_price, None);
    assert!(r.trades.is_empty());
    assert_eq!(r.unmatched.len(), 2);
}

/// `testActivate1HighMargin`: ask 20, bid 32. The k = 0.5 price 26 is capped at 5 % above the
/// ask: 21.
#[test]
fn power_tac_seller_margin_cap_binds_at_21() {
    let r = power_tac_with(PriceRule::power_tac(), &[(MWH, 2_000)], &[(MWH, 3_200)]);
    assert_eq!(r.clearing_price, Some(2_100));
    assert_eq!(r.traded_wh(), MWH);
    // Without the cap the same book clears at the midpoint.
    let r = power_tac(&[(MWH, 2_000)], &[(MWH, 3_200)]);
    assert_eq!(r.clearing_price, Some(2_600));
}

/// Power TAC's other vectors do not reach the cap: the capped rule gives their prices.
#[test]
fn power_tac_seller_margin_cap_leaves_the_other_vectors_alone() {
    let rule = PriceRule::power_tac();
    let r = power_tac_with(rule, &[(MWH, 2_000)], &[(MWH, 2_200)]);
    assert_eq!(r.clearing_price, Some(2_100));
    let r = power_tac_with(
        rule,
        &[(MWH, 2_000)],
        &[(6 * MWH / 10, 2_200), (6 * MWH / 10, 2_100)],
    );
    assert_eq!(r.clearing_price, Some(2_050));
    let r = power_tac_with(
        rule,
        &[(9 * MWH / 10, 1_800), (MWH, 2_000), (MWH, 2_150)],
        &[(14 * MWH / 10, 2_100), (6 * MWH / 10, 2_200)],
    );
    assert_eq!(
        (r.clearing_price, r.traded_wh()),
        (Some(2_050), 19 * MWH / 10)
    );
    let r = power_tac_with(rule, &[(MWH, 2_300)], &[(MWH, 2_200)]);
    assert_eq!(r.clearing_price, None);
}

/// `testActivate3_eq_tradeable`: asks 0.9 @ 18, 1.0 @ 20 and 1.0 @ 21 (the last two from one
/// seller), bids 0.8, 0.2, 0.2, 0.2 @ 21 (one buyer) and 0.6 @ 22: 2.0 MWh at 21, and
/// 0.9 MWh of the ask at 21 left.
#[test]
fn power_tac_equal_prices_clear_2_mwh_at_21() {
    let terms = flat_terms(10_000, 0);
    let now = open_time(&terms);
    let mut auction = CallAuction::new(terms, PriceRule::power_tac());
    let (s1, s2, b1, b2) = (AccountId(1), AccountId(2), AccountId(3), AccountId(4));
    let orders = [
        Order::ask(OrderId(1), s1, AreaId(0), 1_800, 9 * MWH / 10),
        Order::ask(OrderId(2), s2, AreaId(0), 2_000, MWH),
        Order::ask(OrderId(3), s2, AreaId(0), 2_100, MWH),
        Order::bid(OrderId(4), b1, AreaId(0), 2_100, 8 * MWH / 10),
        Order::bid(OrderId(5), b1, AreaId(0), 2_100, 2 * MWH / 10),
        Order::bid(OrderId(6), b1, AreaId(0), 2_100, 2 * MWH / 10),
        Order::bid(OrderId(7), b1, AreaId(0), 2_100, 2 * MWH / 10),
        Order::bid(OrderId(8), b2, AreaId(0), 2_200, 6 * MWH / 10),
    ];
    for o in orders {
        auction.submit(o, now).unwrap();
    }
    let r = auction.clear();
    assert_eq!(r.clearing_price, Some(2_100));
    assert_eq!(r.traded_wh(), 2 * MWH);
    assert_eq!(r.unmatched.len(), 1);
    assert_eq!(
        (r.unmatched[0].order, r.unmatched[0].energy_wh),
        (OrderId(3), 9 * MWH / 10)
    );
}
