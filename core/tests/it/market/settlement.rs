//! Delivery, imbalance against the utility, netting and key figures, with hand-checked numbers.

use super::{OPERATOR, UTILITY, flat_terms, gsy_terms, open_time, per_kwh};
use gridshare_core::market::{
    AccountId, AreaId, ContinuousBook, ContinuousKind, DeliveryError, HouseholdEnergy,
    MeterCounters, MeterDelivery, MeterId, Order, OrderId, PeriodKpis, SettlementError,
    settle_slot, settle_slot_disputed, slot_kpis,
};

const A: AccountId = AccountId(1);
const B: AccountId = AccountId(2);
const C: AccountId = AccountId(3);

fn delivery(meter: u32, account: AccountId, import_wh: u64, export_wh: u64) -> MeterDelivery {
    MeterDelivery {
        meter: MeterId(meter),
        account,
        start: MeterCounters {
            import_wh: 10_000,
            export_wh: 20_000,
        },
        end: MeterCounters {
            import_wh: 10_000 + import_wh,
            export_wh: 20_000 + export_wh,
        },
    }
}

#[test]
fn imbalances_settle_with_the_utility_and_netting_sums_to_zero() {
    let terms = flat_terms(40, 5);
    let now = open_time(&terms);
    let mut book = ContinuousBook::new(terms.clone(), ContinuousKind::TwoSided);
    book.submit(Order::ask(OrderId(1), B, AreaId(0), 20, 1000), now)
        .unwrap();
    let trades = book
        .submit(Order::bid(OrderId(2), A, AreaId(0), 20, 1000), now)
        .unwrap();
    let deliveries = [
        delivery(1, A, 1500, 0), // bought 1000, used 1500: 500 Wh short at 40
        delivery(2, B, 0, 800),  // sold 1000, delivered 800: 200 Wh short at 40
        delivery(3, C, 0, 300),  // no trade, exported 300: surplus at 5 = 1.5, floored to 1
    ];
    let s = settle_slot(&trades, &deliveries, &terms).unwrap();
    assert_eq!(s.balance(A), -20 - 20);
    assert_eq!(s.balance(B), 20 - 8);
    assert_eq!(s.balance(C), 1);
    assert_eq!(s.balance(UTILITY), 20 + 8 - 1);
    assert_eq!(s.balances.iter().map(|b| b.amount).sum::<i128>(), 0);
    assert_eq!(s.imbalances.len(), 3);

    let households = [
        HouseholdEnergy {
            account: A,
            produced_wh: 0,
            imported_wh: 1500,
            exported_wh: 0,
        },
        HouseholdEnergy {
            account: B,
            produced_wh: 800,
            imported_wh: 0,
            exported_wh: 800,
        },
        HouseholdEnergy {
            account: C,
            produced_wh: 300,
            imported_wh: 0,
            exported_wh: 300,
        },
    ];
    let k = slot_kpis(&terms, &trades, None, &households, &s).unwrap();
    assert_eq!(k.totals.traded_wh, 1000);
    assert_eq!(
        k.totals.average_buyer_price.basis_points(),
        Some(20 * 10_000)
    );
    // Exports of B and C (1100 Wh) were all used by A inside the community.
    assert_eq!(k.totals.community.self_consumed_wh, 1100);
    assert_eq!(
        k.totals.community.self_sufficiency().basis_points(),
        Some(7_333)
    );
    assert_eq!(
        k.totals.community.self_consumption().basis_points(),
        Some(10_000)
    );
    // A: 60 with the utility alone, 40 here. B: paid 4 by the utility alone, 12 here.
    assert_eq!(k.households[0].savings(), 20);
    assert_eq!(k.households[1].savings(), 8);
    assert_eq!(k.households[2].savings(), 0);
    assert_eq!(k.totals.community.savings(), 28);
    assert_eq!(k.households[0].self_sufficiency().basis_points(), Some(0));

    let mut period = PeriodKpis::default();
    period.add(&k);
    period.add(&k);
    assert_eq!(period.slots, 2);
    assert_eq!(period.traded_wh, 2000);
    assert_eq!(period.community.savings(), 56);
    assert_eq!(
        period.average_buyer_price().basis_points(),
        Some(20 * 10_000)
    );
}

/// A disputed account (its meter's delivery cannot be established and is left out) pays and is
/// paid for its trades, and nothing for an imbalance; everyone else settles as usual.
#[test]
fn a_disputed_account_settles_its_trades_and_no_imbalance() {
    let terms = flat_terms(40, 5);
    let now = open_time(&terms);
    let mut book = ContinuousBook::new(terms.clone(), ContinuousKind::TwoSided);
    book.submit(Order::ask(OrderId(1), B, AreaId(0), 20, 1000), now)
        .unwrap();
    let trades = book
        .submit(Order::bid(OrderId(2), A, AreaId(0), 20, 1000), now)
        .unwrap();
    // B's meter went backwards: its delivery is left out and B is disputed.
    let deliveries = [delivery(1, A, 1500, 0), delivery(3, C, 0, 300)];
    let s = settle_slot_disputed(&trades, &deliveries, &[B], &terms).unwrap();
    assert_eq!(s.balance(A), -20 - 20, "A's shortfall is charged as before");
    assert_eq!(
        s.balance(B),
        20,
        "B is paid for its trade, and charged nothing"
    );
    assert_eq!(s.balance(C), 1);
    assert_eq!(s.balances.iter().map(|b| b.amount).sum::<i128>(), 0);
    assert!(s.imbalances.iter().all(|i| i.account != B));
    // Without the dispute, B would be charged for 1 000 Wh it was not measured to deliver.
    let undisputed = settle_slot(&trades, &deliveries, &terms).unwrap();
    assert_eq!(undisputed.balance(B), 20 - 40);
}

#[test]
fn fees_are_paid_to_each_market_on_the_path() {
    let (terms, h1, h2) = gsy_terms(per_kwh, 2, 1, 30);
    let now = open_time(&terms);
    let mut book = ContinuousBook::new(terms.clone(), ContinuousKind::TwoSided);
    book.submit(Order::bid(OrderId(1), A, h1, 30, 2000), now)
        .unwrap();
    let trades = book
        .submit(Order::ask(OrderId(2), B, h2, 10, 2000), now)
        .unwrap();
    let deliveries = [delivery(1, A, 2000, 0), delivery(2, B, 0, 2000)];
    let s = settle_slot(&trades, &deliveries, &terms).unwrap();
    assert_eq!(s.balance(A), -60);
    assert_eq!(s.balance(B), 52);
    assert_eq!(s.balance(OPERATOR), 4); // grid market, 2 per kWh
    assert_eq!(s.balance(AccountId(901)), 2); // N1
    assert_eq!(s.balance(AccountId(902)), 2); // N2
    assert!(s.imbalances.is_empty());
    assert_eq!(s.buyers_paid, s.sellers_received + s.fees);
    assert_eq!(s.balances.iter().map(|b| b.amount).sum::<i128>(), 0);
}

#[test]
fn bad_meter_data_and_foreign_trades_are_rejected() {
    let terms = flat_terms(40, 5);
    let mut backwards = delivery(1, A, 0, 0);
    backwards.end.import_wh = 9_000;
    assert!(matches!(
        settle_slot(&[], &[backwards], &terms),
        Err(SettlementError::Delivery(
            DeliveryError::CounterWentBackwards { .. }
        ))
    ));
    assert!(matches!(
        settle_slot(&[], &[delivery(1, A, 1, 0), delivery(1, B, 1, 0)], &terms),
        Err(SettlementError::Delivery(
            DeliveryError::DuplicateMeter { .. }
        ))
    ));
    // A trade priced under fees does not settle in a fee-free slot.
    let (fee_terms, h1, h2) = gsy_terms(per_kwh, 2, 1, 30);
    let now = open_time(&fee_terms);
    let mut book = ContinuousBook::new(fee_terms, ContinuousKind::TwoSided);
    book.submit(Order::bid(OrderId(1), A, h1, 30, 1000), now)
        .unwrap();
    let trades = book
        .submit(Order::ask(OrderId(2), B, h2, 10, 1000), now)
        .unwrap();
    let three_areas = super::gsy_terms(per_kwh, 0, 0, 30).0;
    assert!(matches!(
        settle_slot(&trades, &[], &three_areas),
        Err(SettlementError::AmountsMismatch { .. })
    ));
}

#[test]
fn configured_imbalance_prices_replace_the_tariffs() {
    use gridshare_core::market::{AreaTree, FeeProfile, ImbalancePrices, TimeProfile};
    let mut community = super::community(AreaTree::new(FeeProfile::Free, OPERATOR).unwrap(), 40, 5);
    community.imbalance = ImbalancePrices {
        shortfall: Some(TimeProfile::constant(60)),
        surplus: Some(TimeProfile::constant(2)),
    };
    let terms = community.terms(super::SLOT).unwrap();
    let s = settle_slot(
        &[],
        &[delivery(1, A, 1000, 0), delivery(2, B, 0, 1000)],
        &terms,
    )
    .unwrap();
    assert_eq!(s.balance(A), -60);
    assert_eq!(s.balance(B), 2);
    assert_eq!(s.balance(UTILITY), 58);
}

/// Settlement sums per account in a table indexed by account id while ids are small, and in a
/// tree beyond that: an account numbered in the billions settles exactly as a small one, in
/// account order.
#[test]
fn sparse_account_ids_settle_like_dense_ones() {
    let terms = flat_terms(40, 5);
    let now = open_time(&terms);
    let settle = |seller: AccountId| {
        let mut book = ContinuousBook::new(terms.clone(), ContinuousKind::TwoSided);
        book.submit(Order::ask(OrderId(1), seller, AreaId(0), 20, 1000), now)
            .unwrap();
        let trades = book
            .submit(Order::bid(OrderId(2), A, AreaId(0), 20, 1000), now)
            .unwrap();
        let deliveries = [
            delivery(1, A, 1500, 0),
            delivery(2, C, 0, 300),
            delivery(3, seller, 0, 800),
        ];
        settle_slot(&trades, &deliveries, &terms).unwrap()
    };
    let far = AccountId(3_000_000_000);
    let (dense, sparse) = (settle(B), settle(far));
    let mut expected: Vec<(AccountId, i128)> = dense
        .balances
        .iter()
        .map(|b| (if b.account == B { far } else { b.account }, b.amount))
        .collect();
    expected.sort_by_key(|&(account, _)| account);
    let got: Vec<(AccountId, i128)> = sparse
        .balances
        .iter()
        .map(|b| (b.account, b.amount))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(sparse.balance(far), dense.balance(B));
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
}

/// Meters listed out of order are still checked for repeats, and the first repeat is named.
#[test]
fn a_repeated_meter_is_found_in_any_order() {
    let terms = flat_terms(40, 5);
    let deliveries = [
        delivery(2, A, 1, 0),
        delivery(1, B, 1, 0),
        delivery(3, C, 1, 0),
        delivery(1, C, 1, 0),
    ];
    assert_eq!(
        settle_slot(&[], &deliveries, &terms),
        Err(SettlementError::Delivery(DeliveryError::DuplicateMeter {
            meter: MeterId(1)
        }))
    );
}
