//! Money under attack (issue 10, items 2 and 3): no balance beyond its bound, no conversion
//! that clips, an engine that always starts on the database it wrote, and no trace of a
//! refused order. On SQLite and on PostgreSQL.

use axum::http::StatusCode;
use market_engine::market::{MAX_BALANCE, Market};
use serde_json::json;

use crate::api::call;
use crate::market::{login, now_s};
use crate::{databases, unique};

/// Regression: two operator deposits of i64::MAX were both accepted, the balance was silently
/// capped, and the engine then refused to start.
#[tokio::test]
async fn deposits_cannot_overflow_a_balance_and_the_engine_restarts() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let crate::Fixture {
            store, market, app, ..
        } = crate::Fixture::open(&url).await;
        let community = market.community();
        let operator_name = unique("op");
        let operator = login(&app, &operator_name).await;
        assert!(
            store
                .set_role(&operator_name, market_engine::store::Role::Operator)
                .await
                .unwrap()
        );
        let rich = unique("rich");
        login(&app, &rich).await;
        let path = format!("/api/v1/accounts/{rich}/deposits");
        let deposit = |amount: serde_json::Value, reference: &str| {
            let (app, path, operator) = (app.clone(), path.clone(), operator.clone());
            let body = json!({"amount": amount, "reference": reference});
            async move { call(&app, "POST", &path, Some(&operator), Some(body)).await }
        };
        let (s, body, _) = deposit(json!(i64::MAX), "max-1").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains(&MAX_BALANCE.to_string())
        );
        let (s, _, _) = deposit(json!(u64::MAX), "max-2").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, body, _) = deposit(json!(MAX_BALANCE), "full").await;
        assert_eq!(s, StatusCode::CREATED, "{url}: {body}");
        assert_eq!(body["balance"], MAX_BALANCE);
        let (s, body, _) = deposit(json!(1), "one-more").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert!(body["error"].as_str().unwrap().contains("range"), "{body}");
        // Refused means unrecorded: a restart rebuilds exactly the balance that was accepted.
        drop(app);
        drop(market);
        let market = Market::open(community, store.clone()).await.unwrap();
        let id = store.account_by_name(&rich).await.unwrap().unwrap().id;
        assert_eq!(market.funds(id).await.balance, MAX_BALANCE, "{url}");
    }
}

/// Regression: a refused order (past slot, far-future slot) still created that slot's book;
/// 2 000 such requests produced 2 000 empty settlements and an error line every millisecond,
/// and 25 000 far-future ones leaked memory that was never freed.
#[tokio::test]
async fn a_refused_order_leaves_no_book_behind() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let crate::Fixture {
            store, market, app, ..
        } = crate::Fixture::open(&url).await;
        let community = market.community();
        let name = unique("spammer");
        let token = login(&app, &name).await;
        let (_, meter) = crate::market::new_meter(&app, &store, &token, "s").await;
        let now = community.calendar.slot_delivering_at(now_s()).unwrap();
        let refused = [
            (now - 3, "past"),
            (now + 100_000, "far future"),
            (u64::MAX / 2, "beyond the calendar"),
            (u64::MAX, "last index"),
        ];
        for (slot, what) in refused {
            for _ in 0..20 {
                let order = json!({"meter_id": meter, "slot": slot, "side": "sell", "energy_wh": 100, "price_per_kwh": 10_000});
                let (s, body, _) =
                    call(&app, "POST", "/api/v1/orders", Some(&token), Some(order)).await;
                assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {what}: {body}");
            }
        }
        assert_eq!(
            market.open_books().await,
            0,
            "{url}: no book for a refused order"
        );
        // Every refusal is counted by its reason on /metrics.
        let (s, text, _) = call(&app, "GET", "/metrics", None, None).await;
        assert_eq!(s, StatusCode::OK);
        let text = text.as_str().unwrap().to_owned();
        for line in [
            "gridshare_orders_rejected_total{reason=\"gate_closed\"} 20",
            "gridshare_orders_rejected_total{reason=\"window_not_open\"} 20",
            "gridshare_orders_rejected_total{reason=\"slot_not_trading\"} 40",
            "gridshare_open_books 0",
        ] {
            assert!(text.contains(line), "{url}: {line} not in\n{text}");
        }
        assert!(market.close_due_gates(now_s()).await.unwrap().is_empty());
        let (_, settled, _) = call(&app, "GET", "/api/v1/settlements", None, None).await;
        assert_eq!(
            settled["settlements"].as_array().map_or(0, Vec::len),
            0,
            "{settled}"
        );
        // An order the market takes opens exactly one book.
        let order = json!({"meter_id": meter, "slot": now + 2, "side": "sell", "energy_wh": 100, "price_per_kwh": 10_000});
        let (s, body, _) = call(&app, "POST", "/api/v1/orders", Some(&token), Some(order)).await;
        assert_eq!(s, StatusCode::CREATED, "{url}: {body}");
        assert_eq!(market.open_books().await, 1);
    }
}
