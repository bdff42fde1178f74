//! A sharing community (issue 19: EU collective self-consumption run by the engine): it takes
//! no orders; after delivery each slot's local generation is shared among the members by the
//! allocation key at the community's price, through the engine's own settlement, from the
//! members' signed counters. On SQLite and on PostgreSQL.

use axum::http::StatusCode;
use market_engine::market::MarketConfig;
use market_engine::settings::{MechanismName, ShareEntry, SharingKeyName};
use serde_json::json;
use std::collections::HashMap;

use crate::market::{expect, now_s, signed};
use crate::meters::{check, home_with_meter};
use crate::{Fixture, databases};

/// One producer feeds in 900 Wh while two neighbours draw 400 and 200 Wh: with the
/// proportional key both neighbours are covered in full at the community's price (plus the
/// grid fee), the producer is paid for 600 Wh at that price and the utility buys the other
/// 300 Wh at the feed-in tariff; with static shares of 25 % and 75 % of the injection, the
/// first neighbour gets 225 Wh (its share) and buys the rest from the utility.
#[tokio::test]
async fn a_sharing_community_takes_no_orders_and_shares_its_generation_by_its_key() {
    for fixed in [false, true] {
        // Fresh databases for each key: both runs settle the same slot.
        let dir = tempfile::tempdir().unwrap();
        for url in databases(dir.path()).await {
            let mut config = MarketConfig {
                mechanism: MechanismName::Sharing,
                sharing_price_per_kwh: Some(20_000),
                ..MarketConfig::default()
            };
            let f = Fixture::open_with(&url, config.clone()).await;
            let (sun, sun_token, sun_key, sun_meter) =
                home_with_meter(&f.app, &f.store, &f.keys, "sun").await;
            let (a, _, a_key, a_meter) = home_with_meter(&f.app, &f.store, &f.keys, "a").await;
            let (b, _, b_key, b_meter) = home_with_meter(&f.app, &f.store, &f.keys, "b").await;
            if fixed {
                config.sharing_key = SharingKeyName::Fixed;
                config.sharing_shares = vec![
                    ShareEntry {
                        account: u32::try_from(a).unwrap(),
                        basis_points: 2_500,
                    },
                    ShareEntry {
                        account: u32::try_from(b).unwrap(),
                        basis_points: 7_500,
                    },
                ];
                // Told two days ago: in force from yesterday's slots on.
                f.market
                    .change_settings(config.clone(), now_s() - 2 * 86_400)
                    .await
                    .unwrap();
            }
            let community = f.market.community();
            let slot = community.calendar.slot_delivering_at(now_s()).unwrap() + 2;
            let terms = f.market.community_for(slot).terms(slot).unwrap();

            // No orders: a clear refusal, nothing booked.
            let refused = expect(
                &f.app,
                "POST",
                "/api/v1/orders",
                Some(&sun_token),
                Some(json!({"meter_id": sun_meter, "slot": slot, "side": "sell",
                            "energy_wh": 500, "price_per_kwh": terms.band.feed_in_per_kwh})),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
            assert!(
                refused.to_string().contains("takes no orders"),
                "{url}: {refused}"
            );
            assert!(f.market.depth(slot).await.asks.is_empty());

            let (start, end) = (terms.slot.delivery_start, terms.slot.delivery_end);
            let readings = [
                signed(&sun_key, &sun_meter, 1, start, 0, 5_000),
                signed(&sun_key, &sun_meter, 2, end, 0, 5_900),
                signed(&a_key, &a_meter, 1, start, 1_000, 0),
                signed(&a_key, &a_meter, 2, end, 1_400, 0),
                signed(&b_key, &b_meter, 1, start, 2_000, 0),
                signed(&b_key, &b_meter, 2, end, 2_200, 0),
            ];
            let accepted: Vec<_> = readings
                .iter()
                .map(|r| check(&f.keys, r).unwrap())
                .collect();
            f.store
                .store_readings(&accepted, 0, &mut HashMap::new())
                .await
                .unwrap();
            f.market
                .close_quiet_slots(terms.slot.gate_closure)
                .await
                .unwrap();
            assert_eq!(
                f.market.settle_due(terms.slot.settlement).await.unwrap(),
                vec![slot],
                "{url}"
            );

            let (a_wh, b_wh) = if fixed { (225, 200) } else { (400, 200) };
            let info = expect(
                &f.app,
                "GET",
                &format!("/api/v1/slots/{slot}"),
                None,
                None,
                StatusCode::OK,
            )
            .await;
            assert_eq!(info["status"], "settled", "{url}: {info}");
            assert_eq!(info["traded_wh"], a_wh + b_wh, "{url}: {info}");
            let trades = f.market.trades(slot).await.unwrap();
            assert_eq!(trades.len(), 2, "{url}: {trades:?}");
            for t in &trades {
                assert_eq!(t.seller.0, u32::try_from(sun).unwrap());
                assert_eq!(t.amounts.seller_rate_per_kwh, 20_000);
                assert_eq!(
                    t.amounts.buyer_rate_per_kwh, 21_000,
                    "price plus the grid fee"
                );
            }

            let retail = terms.band.retail_per_kwh;
            let feed_in = terms.band.feed_in_per_kwh;
            let shared = a_wh + b_wh;
            let balance = |id: i64| {
                let market = f.market.clone();
                async move { market.funds(id).await.balance }
            };
            assert_eq!(
                balance(sun).await,
                i64::try_from((shared * 20_000 + (900 - shared) * feed_in) / 1000).unwrap(),
                "{url}: paid the price for what it shared, feed-in for the rest"
            );
            assert_eq!(
                balance(a).await,
                -i64::try_from((a_wh * 21_000 + (400 - a_wh) * retail) / 1000).unwrap(),
                "{url}"
            );
            assert_eq!(balance(b).await, -(200 * 21_000 / 1000), "{url}");
            let total: i64 = sqlx::query_scalar::<_, i64>(
                "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger WHERE slot = $1",
            )
            .bind(i64::try_from(slot).unwrap())
            .fetch_one(f.store.pool())
            .await
            .unwrap();
            assert_eq!(total, 0, "{url}: the slot's money sums to zero");
        }
    }
}
