//! The call auction: uniform price rules, tie-breaks, preferences, self-trades, lifecycle.

use super::{flat_terms, open_time};
use gridshare_core::market::{
    AccountId, AreaId, AuctionEntry, CallAuction, ClearingError, MatchPass, Order, OrderError,
    OrderId, PriceRule, clear_call_auction,
};

const HOME: AreaId = AreaId(0);

fn entries(orders: &[Order]) -> Vec<AuctionEntry> {
    orders
        .iter()
        .enumerate()
        .map(|(i, &order)| AuctionEntry {
            order,
            sequence: u64::try_from(i).unwrap(),
        })
        .collect()
}

fn book() -> Vec<Order> {
    vec![
        Order::ask(OrderId(1), AccountId(1), HOME, 10, 1000),
        Order::ask(OrderId(2), AccountId(2), HOME, 16, 1000),
        Order::bid(OrderId(3), AccountId(3), HOME, 30, 1000),
        Order::bid(OrderId(4), AccountId(4), HOME, 20, 1000),
    ]
}

#[test]
fn every_price_rule_on_the_same_book() {
    let terms = flat_terms(40, 5);
    let e = entries(&book());
    let price = |rule| clear_call_auction(&e, &terms, rule).unwrap().clearing_price;
    // Marginal pair: ask 16, bid 20.
    assert_eq!(price(PriceRule::Midpoint), Some(18));
    assert_eq!(
        price(PriceRule::KFactor {
            basis_points: 2_500
        }),
        Some(17)
    );
    assert_eq!(price(PriceRule::MarginalBid), Some(20));
    assert_eq!(price(PriceRule::MarginalAsk), Some(16));
    let r = clear_call_auction(&e, &terms, PriceRule::default()).unwrap();
    assert_eq!(r.traded_wh(), 2000);
    assert!(r.trades.iter().all(|t| t.amounts.buyer_rate_per_kwh == 18));
}

#[test]
fn price_is_clamped_into_the_tariff_band() {
    // Band [15, 40]: marginal ask 10 is below feed-in, so marginal-ask pricing gives 15.
    let terms = flat_terms(40, 15);
    let orders = [
        Order::ask(OrderId(1), AccountId(1), HOME, 15, 1000),
        Order::bid(OrderId(2), AccountId(2), HOME, 40, 1000),
    ];
    let r = clear_call_auction(&entries(&orders), &terms, PriceRule::MarginalAsk).unwrap();
    assert_eq!(r.clearing_price, Some(15));
    let r = clear_call_auction(&entries(&orders), &terms, PriceRule::MarginalBid).unwrap();
    assert_eq!(r.clearing_price, Some(40));
}

#[test]
fn equal_prices_are_rationed_by_sequence_then_id() {
    let terms = flat_terms(40, 5);
    let orders = [
        Order::bid(OrderId(9), AccountId(1), HOME, 20, 600),
        Order::bid(OrderId(5), AccountId(2), HOME, 20, 600),
        Order::ask(OrderId(1), AccountId(3), HOME, 10, 1000),
    ];
    let r = clear_call_auction(&entries(&orders), &terms, PriceRule::default()).unwrap();
    // Order 9 arrived first: fully filled; order 5 gets the rest.
    assert_eq!(r.trades[0].bid, OrderId(9));
    assert_eq!(r.trades[0].energy_wh, 600);
    assert_eq!(r.trades[1].energy_wh, 400);
    // Same sequence: the smaller id wins.
    let same: Vec<AuctionEntry> = orders
        .iter()
        .map(|&order| AuctionEntry { order, sequence: 0 })
        .collect();
    let r = clear_call_auction(&same, &terms, PriceRule::default()).unwrap();
    assert_eq!(r.trades[0].bid, OrderId(5));
}

#[test]
fn self_trade_is_skipped_and_energy_goes_elsewhere() {
    let terms = flat_terms(40, 5);
    let orders = [
        Order::ask(OrderId(1), AccountId(1), HOME, 10, 1000),
        Order::ask(OrderId(2), AccountId(2), HOME, 12, 1000),
        Order::bid(OrderId(3), AccountId(1), HOME, 30, 1000),
    ];
    let r = clear_call_auction(&entries(&orders), &terms, PriceRule::default()).unwrap();
    assert_eq!(r.trades.len(), 1);
    assert_eq!(
        (r.trades[0].ask, r.trades[0].seller),
        (OrderId(2), AccountId(2))
    );
    assert!(r.trades.iter().all(|t| t.buyer != t.seller));
}

#[test]
fn preferences_pair_first_without_changing_the_price() {
    let terms = flat_terms(40, 5);
    let orders = [
        Order::ask(OrderId(1), AccountId(1), HOME, 10, 1000),
        Order::ask(OrderId(2), AccountId(2), HOME, 12, 1000).green(),
        Order::bid(OrderId(3), AccountId(3), HOME, 30, 1000),
        Order::bid(OrderId(4), AccountId(4), HOME, 30, 1000).with_partner(AccountId(1)),
    ];
    let r = clear_call_auction(&entries(&orders), &terms, PriceRule::default()).unwrap();
    assert_eq!(r.clearing_price, Some(21));
    let first = r.trades[0];
    assert_eq!(
        (first.bid, first.ask, first.pass),
        (OrderId(4), OrderId(1), MatchPass::PreferredPartner)
    );
    assert_eq!((r.trades[1].bid, r.trades[1].ask), (OrderId(3), OrderId(2)));
    assert!(r.trades.iter().all(|t| t.amounts.buyer_rate_per_kwh == 21));
}

#[test]
fn green_only_bid_takes_only_green_energy() {
    let terms = flat_terms(40, 5);
    let orders = [
        Order::ask(OrderId(1), AccountId(1), HOME, 10, 1000),
        Order::ask(OrderId(2), AccountId(2), HOME, 12, 300).green(),
        Order::bid(OrderId(3), AccountId(3), HOME, 30, 1000).green(),
    ];
    let r = clear_call_auction(&entries(&orders), &terms, PriceRule::default()).unwrap();
    assert_eq!(r.trades.len(), 1);
    assert_eq!(
        (r.trades[0].ask, r.trades[0].energy_wh, r.trades[0].pass),
        (OrderId(2), 300, MatchPass::Green)
    );
}

#[test]
fn lifecycle_cancel_amend_and_duplicates() {
    let terms = flat_terms(40, 5);
    let now = open_time(&terms);
    let mut a = CallAuction::new(terms.clone(), PriceRule::default());
    for o in book() {
        a.submit(o, now).unwrap();
    }
    assert_eq!(
        a.submit(book()[0], now),
        Err(OrderError::DuplicateOrderId { order: OrderId(1) })
    );
    a.cancel(OrderId(2), now).unwrap();
    a.amend(OrderId(4), 25, 500, now).unwrap();
    assert!(matches!(
        a.amend(OrderId(4), 25, 500, terms.slot.gate_closure),
        Err(OrderError::GateClosed { .. })
    ));
    assert_eq!(a.len(), 3);
    let r = a.clear();
    // Ask 10 (1000 Wh) against bids 30 (1000) and 25 (500): 1000 Wh, marginal pair (10, 30).
    assert_eq!(r.traded_wh(), 1000);
    assert_eq!(r.clearing_price, Some(20));

    let dup = entries(&[book()[0], book()[0]]);
    assert_eq!(
        clear_call_auction(&dup, &terms, PriceRule::default()),
        Err(ClearingError::Order(OrderError::DuplicateOrderId {
            order: OrderId(1)
        }))
    );
}

#[test]
fn every_mechanism_through_the_slot_market() {
    use gridshare_core::market::{AreaTree, FeeProfile, Mechanism, Side};
    let expected = [
        // (mechanism, traded Wh, price the buyer paid per kWh, clearing price)
        (Mechanism::ContinuousDoubleAuction, 600, 12, None),
        (Mechanism::PayAsOffer, 600, 12, None),
        (
            Mechanism::CallAuction(PriceRule::Midpoint),
            600,
            21,
            Some(21),
        ),
    ];
    for (mechanism, wh, rate, clearing) in expected {
        let mut community = super::community(
            AreaTree::new(FeeProfile::Free, super::OPERATOR).unwrap(),
            40,
            5,
        );
        community.mechanism = mechanism;
        let mut market = community.open_slot(super::SLOT).unwrap();
        let now = open_time(market.terms());
        let mut trades = market
            .submit(Order::ask(OrderId(1), AccountId(1), HOME, 12, 600), now)
            .unwrap();
        trades.extend(
            market
                .submit(Order::bid(OrderId(2), AccountId(2), HOME, 30, 1000), now)
                .unwrap(),
        );
        market
            .submit(Order::ask(OrderId(3), AccountId(3), HOME, 35, 100), now)
            .unwrap();
        market.cancel(OrderId(3), now).unwrap();
        let closed = market.close_gate();
        trades.extend(closed.trades.iter().copied());
        assert_eq!(
            trades.iter().map(|t| t.energy_wh).sum::<u64>(),
            wh,
            "{mechanism:?}"
        );
        assert!(
            trades.iter().all(|t| t.amounts.buyer_rate_per_kwh == rate),
            "{mechanism:?}"
        );
        assert_eq!(closed.clearing_price, clearing);
        // The bid's 400 Wh rest is unmatched, except in pay-as-offer where it never rested.
        let rest: Vec<(OrderId, Side, u64)> = closed
            .unmatched
            .iter()
            .map(|u| (u.order, u.side, u.energy_wh))
            .collect();
        match mechanism {
            Mechanism::PayAsOffer => assert!(rest.is_empty()),
            _ => assert_eq!(rest, [(OrderId(2), Side::Buy, 400)], "{mechanism:?}"),
        }
    }
}
