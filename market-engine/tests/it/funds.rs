//! Property: a household spends only its own money. Over random sequences of deposits, bids,
//! asks, amends, cancels and withdrawals on a continuous market (trades happen at once), no
//! account ever commits more than it has, what its purchases hold is exactly what its trades
//! cost, and a restart rebuilds every account's funds as they were.

use std::collections::HashMap;
use std::sync::Arc;

use market_engine::market::{
    ExchangeError, FundsView, Market, MarketConfig, MarketError, NewOrder, OrderSide,
};
use market_engine::store::Store;
use proptest::prelude::*;

const ACCOUNTS: i64 = 3;

#[derive(Debug, Clone)]
enum Op {
    Deposit(i64, u32),
    Withdraw(i64, u32),
    Order(i64, OrderSide, u64, u64),
    Amend(usize, u64, u64),
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let account = 1..=ACCOUNTS;
    let price = 10_000u64..=20_000;
    let energy = 1u64..3_000;
    prop_oneof![
        1 => (account.clone(), 1u32..100_000).prop_map(|(a, n)| Op::Deposit(a, n)),
        1 => (account.clone(), 1u32..50_000).prop_map(|(a, n)| Op::Withdraw(a, n)),
        5 => (account, any::<bool>(), price.clone(), energy.clone()).prop_map(|(a, buy, p, e)| {
            Op::Order(a, if buy { OrderSide::Buy } else { OrderSide::Sell }, p, e)
        }),
        1 => (any::<usize>(), price, energy).prop_map(|(i, p, e)| Op::Amend(i, p, e)),
        1 => any::<usize>().prop_map(Op::Cancel),
    ]
}

async fn views(market: &Market) -> Vec<FundsView> {
    let mut out = Vec::new();
    for a in 1..=ACCOUNTS {
        out.push(market.funds(a).await);
    }
    out
}

async fn run(opening: Vec<u32>, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("funds.sqlite").display());
    let store = Store::open(&url).await.unwrap();
    let config = MarketConfig {
        mechanism: market_engine::settings::MechanismName::Continuous,
        ..MarketConfig::default()
    };
    let market = Arc::new(
        Market::open_with(config.clone(), config.community().unwrap(), store.clone())
            .await
            .unwrap(),
    );
    let now = i64::try_from(market_engine::pipeline::now_ms() / 1000).unwrap();
    let slot = market.community().calendar.slot_delivering_at(now).unwrap() + 2;
    let mut placed: Vec<(i64, u64)> = Vec::new();
    let mut paid_in: HashMap<i64, i64> = HashMap::new();
    for (account, amount) in (1..=ACCOUNTS).zip(opening) {
        if amount > 0 {
            market
                .fund(account, i64::from(amount), "opening", 0)
                .await
                .unwrap();
            paid_in.insert(account, i64::from(amount));
        }
    }
    for (n, op) in ops.into_iter().enumerate() {
        let outcome = match op {
            Op::Deposit(a, amount) => market
                .fund(a, i64::from(amount), &format!("d{n}"), 0)
                .await
                .map(|_| *paid_in.entry(a).or_default() += i64::from(amount)),
            Op::Withdraw(a, amount) => market
                .fund(a, -i64::from(amount), &format!("w{n}"), 0)
                .await
                .map(|_| *paid_in.entry(a).or_default() -= i64::from(amount)),
            Op::Order(account, side, price, energy) => {
                let order = NewOrder {
                    account,
                    meter: format!("m{account}"),
                    slot,
                    side,
                    price_per_kwh: price,
                    energy_wh: energy,
                };
                market
                    .submit(&order, now)
                    .await
                    .map(|(id, _)| placed.push((account, id)))
            }
            Op::Amend(i, price, energy) if !placed.is_empty() => {
                let (account, id) = placed[i % placed.len()];
                market
                    .amend(account, id, price, energy, now)
                    .await
                    .map(drop)
            }
            Op::Cancel(i) if !placed.is_empty() => {
                let (account, id) = placed[i % placed.len()];
                market.cancel(account, id, now).await
            }
            Op::Amend(..) | Op::Cancel(_) => Ok(()),
        };
        match outcome {
            Ok(())
            | Err(MarketError::Exchange(
                ExchangeError::InsufficientFunds { .. }
                | ExchangeError::UnknownOrder(_)
                | ExchangeError::Order(_),
            )) => {}
            Err(e) => panic!("op {n}: unexpected {e}"),
        }
        let trades = market.trades(slot).await.unwrap();
        for (i, view) in views(&market).await.iter().enumerate() {
            let account = i64::try_from(i).unwrap() + 1;
            assert!(
                view.available >= 0,
                "op {n}: account {account} overcommitted: {view:?}"
            );
            assert_eq!(
                view.balance,
                paid_in.get(&account).copied().unwrap_or(0),
                "op {n}: nothing settled, so the balance is what was paid in"
            );
            let bought: u64 = trades
                .iter()
                .filter(|t| i64::from(t.buyer.0) == account)
                .map(|t| t.amounts.buyer_pays)
                .sum();
            assert_eq!(view.held_by_purchases, bought, "op {n}: account {account}");
            assert_eq!(
                i128::from(view.available),
                i128::from(view.balance)
                    - i128::from(view.held_by_bids)
                    - i128::from(view.held_by_purchases)
            );
        }
    }
    let before = views(&market).await;
    drop(market);
    let reopened = Market::open_with(config.clone(), config.community().unwrap(), store.clone())
        .await
        .unwrap();
    assert_eq!(
        views(&reopened).await,
        before,
        "funds rebuilt after a restart"
    );
    store.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn no_account_commits_more_than_it_has(
        opening in prop::collection::vec(prop_oneof![Just(0u32), 0u32..200_000], 3),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(opening, ops));
    }
}
