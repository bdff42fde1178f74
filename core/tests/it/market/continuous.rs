//! The continuous double auction and one-sided pay-as-offer: priority, partial fills, cancel,
//! amend, gate closure, self-trade prevention, preferences, validation.

use super::{SLOT, flat_terms, open_time};
use gridshare_core::market::{
    AccountId, AreaId, AreaTree, Community, ContinuousBook, ContinuousKind, FeeProfile,
    ImbalancePrices, MatchPass, Mechanism, Order, OrderError, OrderId, PriceAnchor, PriceRule,
    Side, SlotCalendar, SlotPhase, Tariff,
};

const A: AccountId = AccountId(1);
const B: AccountId = AccountId(2);
const C: AccountId = AccountId(3);
const D: AccountId = AccountId(4);
const HOME: AreaId = AreaId(0);

fn book() -> (ContinuousBook, i64) {
    let terms = flat_terms(40, 5);
    let now = open_time(&terms);
    (ContinuousBook::new(terms, ContinuousKind::TwoSided), now)
}

fn bid(id: u64, owner: AccountId, price: u64, wh: u64) -> Order {
    Order::bid(OrderId(id), owner, HOME, price, wh)
}

fn ask(id: u64, owner: AccountId, price: u64, wh: u64) -> Order {
    Order::ask(OrderId(id), owner, HOME, price, wh)
}

#[test]
fn price_then_time_priority_and_resting_price() {
    let (mut book, now) = book();
    book.submit(ask(1, A, 20, 500), now).unwrap();
    book.submit(ask(2, B, 18, 500), now).unwrap();
    book.submit(ask(3, C, 18, 500), now).unwrap();
    let trades = book.submit(bid(4, D, 25, 1200), now).unwrap();
    let fills: Vec<(OrderId, u64, u64)> = trades
        .iter()
        .map(|t| (t.ask, t.energy_wh, t.amounts.buyer_rate_per_kwh))
        .collect();
    // Cheapest first, earlier first at equal price, each at its own (resting) price.
    assert_eq!(
        fills,
        [
            (OrderId(2), 500, 18),
            (OrderId(3), 500, 18),
            (OrderId(1), 200, 20)
        ]
    );
    assert!(
        trades
            .iter()
            .all(|t| matches!(t.anchor, PriceAnchor::Seller(_)))
    );
    assert_eq!(book.resting_orders()[0].remaining_wh, 300);
    assert_eq!(book.best_ask(), Some(20));
    assert_eq!(book.best_bid(), None);
}

#[test]
fn incoming_ask_trades_at_the_resting_bid() {
    let (mut book, now) = book();
    book.submit(bid(1, A, 30, 1000), now).unwrap();
    let t = book.submit(ask(2, B, 10, 400), now).unwrap();
    assert_eq!(t[0].amounts.buyer_rate_per_kwh, 30);
    assert_eq!(t[0].amounts.buyer_pays, 12);
    assert_eq!(t[0].anchor, PriceAnchor::Buyer(30));
    assert_eq!(book.resting_orders()[0].remaining_wh, 600);
}

#[test]
fn cancel_removes_and_unknown_cancel_is_rejected() {
    let (mut book, now) = book();
    book.submit(ask(1, A, 20, 500), now).unwrap();
    assert_eq!(book.cancel(OrderId(1), now).unwrap().remaining_wh, 500);
    assert!(book.is_empty());
    assert_eq!(
        book.cancel(OrderId(1), now),
        Err(OrderError::UnknownOrder { order: OrderId(1) })
    );
    assert!(book.submit(bid(2, B, 30, 500), now).unwrap().is_empty());
}

#[test]
fn amend_down_keeps_priority_amend_up_loses_it() {
    let (mut book, now) = book();
    book.submit(ask(1, A, 20, 500), now).unwrap();
    book.submit(ask(2, B, 20, 500), now).unwrap();
    let mut trades = Vec::new();
    book.amend(OrderId(1), 20, 300, now, &mut trades).unwrap();
    let t = book.submit(bid(3, C, 20, 100), now).unwrap();
    assert_eq!(t[0].ask, OrderId(1), "reduced order keeps its place");

    book.amend(OrderId(1), 20, 900, now, &mut trades).unwrap();
    let t = book.submit(bid(4, C, 20, 100), now).unwrap();
    assert_eq!(t[0].ask, OrderId(2), "grown order went to the back");
    assert!(trades.is_empty());
}

#[test]
fn amend_to_a_crossing_price_trades_at_once() {
    let (mut book, now) = book();
    book.submit(ask(1, A, 25, 500), now).unwrap();
    book.submit(bid(2, B, 20, 500), now).unwrap();
    let mut trades = Vec::new();
    let s = book.amend(OrderId(2), 25, 500, now, &mut trades).unwrap();
    assert_eq!(s.traded_wh, 500);
    assert_eq!(trades.len(), 1);
    assert!(book.is_empty());
}

#[test]
fn self_trade_is_prevented_and_both_orders_rest() {
    let (mut book, now) = book();
    book.submit(ask(1, A, 20, 500), now).unwrap();
    assert!(book.submit(bid(2, A, 30, 500), now).unwrap().is_empty());
    assert_eq!(book.len(), 2);
    // Another owner still trades with both.
    let t = book.submit(ask(3, B, 10, 500), now).unwrap();
    assert_eq!((t[0].bid, t[0].seller), (OrderId(2), B));
}

/// Issue 18 asked whether self-trade prevention costs the continuous auction volume as it did
/// the call auction. It does not: an arriving order sweeps every crossing resting order,
/// skipping its owner's own without stopping, so the call auction's two books leave no bid
/// and ask of different owners that could trade resting after any arrival.
#[test]
fn an_owners_own_crossing_never_blocks_another_owner() {
    // Owner A bids 30 and asks 10 (they may not trade), then B asks 25: B sells to A's bid at
    // the resting price, past A's own ask.
    let (mut book, now) = book();
    assert!(book.submit(bid(1, A, 30, 1000), now).unwrap().is_empty());
    assert!(book.submit(ask(2, A, 10, 1000), now).unwrap().is_empty());
    let t = book.submit(ask(3, B, 25, 1000), now).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].bid, t[0].ask, t[0].amounts.buyer_rate_per_kwh),
        (OrderId(1), OrderId(3), 30)
    );
    // And a later bid of C at 12 still finds A's ask.
    let t = book.submit(bid(4, C, 12, 1000), now).unwrap();
    assert_eq!(
        (t[0].ask, t[0].amounts.buyer_rate_per_kwh),
        (OrderId(2), 10)
    );
    assert!(book.is_empty());

    // Bids 30 (B) and 20 (C), asks 10 (A) and 10 (C), in that order: the first ask sells to
    // the best bid; C's ask then meets only C's bid and rests beside it. Continuous trading
    // clears each arrival against what rests, so the volume depends on arrival order (1 kWh
    // here, 2 kWh had C's ask come before A's) — but nothing tradeable is left.
    let (mut book, now) = self::book();
    book.submit(bid(1, B, 30, 1000), now).unwrap();
    book.submit(bid(2, C, 20, 1000), now).unwrap();
    assert_eq!(
        book.submit(ask(3, A, 10, 1000), now).unwrap()[0].bid,
        OrderId(1)
    );
    assert!(book.submit(ask(4, C, 10, 1000), now).unwrap().is_empty());
    let resting: Vec<(OrderId, AccountId)> = book
        .resting_orders()
        .iter()
        .map(|r| (r.id, r.owner))
        .collect();
    assert_eq!(resting.len(), 2);
    assert!(resting.iter().all(|&(_, owner)| owner == C));
}

#[test]
fn preferred_partner_goes_before_better_prices() {
    let (mut book, now) = book();
    book.submit(ask(1, A, 10, 500), now).unwrap();
    book.submit(ask(2, B, 20, 500), now).unwrap();
    let t = book
        .submit(bid(3, C, 30, 700).with_partner(B), now)
        .unwrap();
    assert_eq!(
        (t[0].ask, t[0].pass, t[0].energy_wh),
        (OrderId(2), MatchPass::PreferredPartner, 500)
    );
    assert_eq!(
        (t[1].ask, t[1].pass, t[1].energy_wh),
        (OrderId(1), MatchPass::Standard, 200)
    );
}

#[test]
fn resting_preference_is_honoured_when_the_partner_arrives() {
    let (mut book, now) = book();
    book.submit(bid(1, A, 30, 500), now).unwrap();
    book.submit(bid(2, B, 25, 500).with_partner(C), now)
        .unwrap();
    let t = book.submit(ask(3, C, 20, 500), now).unwrap();
    assert_eq!(
        (t[0].bid, t[0].pass),
        (OrderId(2), MatchPass::PreferredPartner)
    );
}

#[test]
fn green_only_bid_skips_grey_offers() {
    let (mut book, now) = book();
    book.submit(ask(1, A, 10, 500), now).unwrap();
    book.submit(ask(2, B, 20, 500).green(), now).unwrap();
    let t = book.submit(bid(3, C, 30, 1000).green(), now).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].ask, OrderId(2));
    // The rest of the green bid rests although a cheaper grey offer is there.
    assert_eq!(book.len(), 2);
}

#[test]
fn pay_as_offer_bids_take_offers_and_never_rest() {
    let terms = flat_terms(40, 5);
    let now = open_time(&terms);
    let mut book = ContinuousBook::new(terms, ContinuousKind::PayAsOffer);
    book.submit(ask(1, A, 12, 500), now).unwrap();
    book.submit(ask(2, B, 15, 500), now).unwrap();
    let mut trades = Vec::new();
    let s = book
        .submit_into(bid(3, C, 40, 1200), now, &mut trades)
        .unwrap();
    assert_eq!((s.traded_wh, s.resting_wh, s.dropped_wh), (1000, 0, 200));
    assert_eq!(trades[0].amounts.buyer_rate_per_kwh, 12);
    assert_eq!(trades[1].amounts.buyer_rate_per_kwh, 15);
    assert!(book.is_empty());
}

#[test]
fn timeline_gate_closure_and_window() {
    let (mut book, _) = book();
    let slot = book.terms().slot;
    assert_eq!(slot.phase_at(slot.gate_closure - 1), SlotPhase::OrderWindow);
    assert_eq!(slot.phase_at(slot.gate_closure), SlotPhase::GateClosed);
    assert_eq!(slot.phase_at(slot.delivery_start), SlotPhase::Delivery);
    assert_eq!(
        slot.phase_at(slot.delivery_end),
        SlotPhase::AwaitingReadings
    );
    assert_eq!(slot.phase_at(slot.settlement), SlotPhase::Settlement);
    assert_eq!(
        book.submit(bid(1, A, 20, 1), slot.gate_closure),
        Err(OrderError::GateClosed {
            order: OrderId(1),
            slot: SLOT,
            now: slot.gate_closure,
            gate_closure: slot.gate_closure
        })
    );
    assert!(matches!(
        book.submit(bid(1, A, 20, 1), slot.order_window_opens - 1),
        Err(OrderError::WindowNotOpen { .. })
    ));
    book.submit(bid(1, A, 20, 100), slot.order_window_opens)
        .unwrap();
    book.submit(ask(2, B, 30, 50), slot.gate_closure - 1)
        .unwrap();
    let expired = book.close_gate();
    assert_eq!(expired.len(), 2);
    assert!(book.is_empty());
    assert!(matches!(
        book.submit(bid(3, A, 20, 1), slot.gate_closure - 1),
        Err(OrderError::GateClosed { .. })
    ));
}

#[test]
fn invalid_orders_are_rejected_with_a_reason() {
    let (mut book, now) = book();
    assert_eq!(
        book.submit(bid(1, A, 41, 1), now),
        Err(OrderError::PriceAboveRetail {
            order: OrderId(1),
            price_per_kwh: 41,
            retail_per_kwh: 40
        })
    );
    assert_eq!(
        book.submit(ask(1, A, 4, 1), now),
        Err(OrderError::PriceBelowFeedIn {
            order: OrderId(1),
            price_per_kwh: 4,
            feed_in_per_kwh: 5
        })
    );
    assert_eq!(
        book.submit(ask(1, A, 10, 0), now),
        Err(OrderError::ZeroEnergy { order: OrderId(1) })
    );
    assert!(matches!(
        book.submit(ask(1, A, 10, u64::MAX), now),
        Err(OrderError::EnergyTooLarge { .. })
    ));
    assert!(matches!(
        book.submit(Order::ask(OrderId(1), A, AreaId(7), 10, 1), now),
        Err(OrderError::UnknownArea { .. })
    ));
    book.submit(ask(1, A, 10, 1), now).unwrap();
    assert_eq!(
        book.submit(ask(1, B, 10, 1), now),
        Err(OrderError::DuplicateOrderId { order: OrderId(1) })
    );
    let msg = OrderError::PriceAboveRetail {
        order: OrderId(1),
        price_per_kwh: 41,
        retail_per_kwh: 40,
    }
    .to_string();
    assert!(msg.contains("at most 40"), "{msg}");
}

#[test]
fn depth_aggregates_open_energy_per_price_level_best_first() {
    let community = community_for_depth();
    let slot = community.calendar.slot_delivering_at(0).unwrap_or(0) + 10;
    let now = community.terms(slot).unwrap().slot.gate_closure - 100;
    for mechanism in [
        Mechanism::ContinuousDoubleAuction,
        Mechanism::CallAuction(PriceRule::default()),
    ] {
        let mut c = community.clone();
        c.mechanism = mechanism.clone();
        let mut market = c.open_slot(slot).unwrap();
        let o = |id, side, price, wh| {
            if side == Side::Buy {
                Order::bid(OrderId(id), AccountId(id as u32), AreaId(0), price, wh)
            } else {
                Order::ask(OrderId(id), AccountId(id as u32), AreaId(0), price, wh)
            }
        };
        // Bids below every ask: nothing trades, everything rests.
        for order in [
            o(1, Side::Buy, 12_000, 100),
            o(2, Side::Buy, 14_000, 200),
            o(3, Side::Buy, 12_000, 50),
            o(4, Side::Sell, 20_000, 300),
            o(5, Side::Sell, 18_000, 10),
        ] {
            assert!(market.submit(order, now).unwrap().is_empty());
        }
        let depth = market.depth();
        assert_eq!(
            depth.bids,
            vec![(14_000, 200, 1), (12_000, 150, 2)],
            "{mechanism:?}"
        );
        assert_eq!(
            depth.asks,
            vec![(18_000, 10, 1), (20_000, 300, 1)],
            "{mechanism:?}"
        );
        assert_eq!(
            market.open_order(OrderId(2)),
            Some((Side::Buy, 14_000, 200))
        );
        assert_eq!(market.open_order(OrderId(9)), None);
        if mechanism == Mechanism::ContinuousDoubleAuction {
            // A partial fill leaves the rest open; the filled order is gone.
            let trades = market.submit(o(6, Side::Sell, 13_000, 250), now).unwrap();
            assert_eq!(trades.len(), 1);
            assert_eq!(market.open_order(OrderId(2)), None);
            assert_eq!(
                market.open_order(OrderId(1)),
                Some((Side::Buy, 12_000, 100))
            );
            assert_eq!(
                market.open_order(OrderId(6)),
                Some((Side::Sell, 13_000, 50))
            );
        }
        market.cancel(OrderId(1), now).unwrap();
        assert_eq!(market.open_order(OrderId(1)), None);
    }
}

fn community_for_depth() -> Community {
    Community {
        calendar: SlotCalendar::new(0, 900, 86_400, 300, 900).unwrap(),
        tariff: Tariff::flat(30_000, 8_000),
        imbalance: ImbalancePrices::default(),
        areas: AreaTree::new(FeeProfile::Free, AccountId(u32::MAX - 1)).unwrap(),
        utility: AccountId(u32::MAX),
        mechanism: Mechanism::ContinuousDoubleAuction,
    }
}
