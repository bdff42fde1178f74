//! The live stream tells each household only its own data (issue 10, item 4): a stranger
//! used to get every household's meter readings once a second from `GET /api/v1/stream`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures_util::StreamExt;
use market_engine::ingest::KeyRegistry;
use market_engine::market::{Market, MarketConfig};
use market_engine::pipeline::LiveEvent;
use market_engine::store::Store;
use serde_json::Value;
use tower::ServiceExt;

use crate::market::login;
use crate::unique;

/// Opens the stream with `token` (none: anonymous) and returns its events as JSON.
async fn open(
    app: &axum::Router,
    token: Option<&str>,
) -> (StatusCode, futures_util::stream::BoxStream<'static, Value>) {
    let mut req = Request::builder().uri("/api/v1/stream");
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let events = res
        .into_body()
        .into_data_stream()
        .filter_map(|chunk| async move {
            let text = String::from_utf8(chunk.ok()?.to_vec()).ok()?;
            let data = text.lines().find_map(|l| l.strip_prefix("data: "))?;
            serde_json::from_str(data).ok()
        })
        .boxed();
    (status, events)
}

async fn next(events: &mut futures_util::stream::BoxStream<'static, Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream stays open")
}

fn reading(account: i64, meter: &str) -> LiveEvent {
    LiveEvent::Reading {
        account,
        meter_id: meter.into(),
        seq: 7,
        import_wh: Some(1_000),
        export_wh: Some(2_000),
        power_w: Some(-1_500),
        soc_bp: None,
        pv_power_w: None,
        battery_power_w: None,
        timestamp_ms: 0,
    }
}

#[tokio::test]
async fn the_stream_carries_a_households_own_data_and_only_aggregates_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("engine.sqlite").display());
    let store = Store::open(&url).await.unwrap();
    let community = MarketConfig::default().community().unwrap();
    let market = Arc::new(Market::open(community, store.clone()).await.unwrap());
    let app = crate::market::api_with(&store, &market, &KeyRegistry::default());
    let (alice_name, bob_name) = (unique("alice"), unique("bob"));
    let alice = login(&app, &alice_name).await;
    let bob = login(&app, &bob_name).await;
    let id = |name: String| {
        let store = store.clone();
        async move { store.account_by_name(&name).await.unwrap().unwrap().id }
    };
    let alice_id = id(alice_name).await;

    let (s, _) = open(&app, Some("not-a-session")).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a bad token is refused, not served as public"
    );
    let (s, mut anonymous) = open(&app, None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, mut own) = open(&app, Some(&alice)).await;
    let (_, mut other) = open(&app, Some(&bob)).await;

    let live = market.live();
    live.send(reading(alice_id, "alice-meter")).unwrap();
    live.send(LiveEvent::Order {
        account: alice_id,
        order_id: Some(42),
        slot: 9,
        side: "sell",
        energy_wh: 500,
        price_per_kwh: 12_000,
    })
    .unwrap();
    live.send(LiveEvent::Neighbourhood {
        meters: 3,
        import_w: 900,
        export_w: 4_500,
    })
    .unwrap();

    // Alice: her reading, her order with its id, the aggregate.
    let first = next(&mut own).await;
    assert_eq!(first["type"], "reading");
    assert_eq!(first["meter_id"], "alice-meter");
    assert!(first.get("account").is_none(), "{first}");
    let order = next(&mut own).await;
    assert_eq!(
        (order["type"].as_str(), order["order_id"].as_u64()),
        (Some("order"), Some(42))
    );
    assert_eq!(next(&mut own).await["type"], "neighbourhood");
    // Bob and a stranger: the book's order without owner or id, then the aggregate; never
    // Alice's reading.
    for events in [&mut other, &mut anonymous] {
        let order = next(events).await;
        assert_eq!(order["type"], "order", "{order}");
        assert!(order.get("order_id").is_none(), "{order}");
        assert!(order.get("account").is_none(), "{order}");
        let aggregate = next(events).await;
        assert_eq!(aggregate["type"], "neighbourhood");
        assert_eq!(aggregate["export_w"], 4_500);
    }
}

/// The OpenAPI document lists the stream and the meter approval routes.
#[tokio::test]
async fn openapi_lists_the_stream_and_the_meter_routes() {
    let doc: Value = serde_json::from_str(include_str!("../../openapi.json")).unwrap();
    for path in [
        "/api/v1/stream",
        "/api/v1/meters",
        "/api/v1/meters/{meter_id}",
        "/api/v1/meters/{meter_id}/approval",
        "/api/v1/operator/meters",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from openapi.json"
        );
    }
}

/// Every route the engine's source declares is in the OpenAPI document with each of its
/// methods (`/api/v1/stream` was served for months without being documented). The routes are
/// read from the source, where `Router::route` is called, so a new route without its
/// documentation fails here.
#[test]
fn every_route_in_the_source_is_in_openapi() {
    let doc: Value = serde_json::from_str(include_str!("../../openapi.json")).unwrap();
    // Every file under src/api/: a resource module added there is checked without being listed.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut sources: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    assert!(
        sources.len() >= 10,
        "src/api/ holds {} files",
        sources.len()
    );
    sources.sort();
    let mut checked = 0;
    for source in &sources {
        for (i, _) in source.match_indices(".route(") {
            let rest = &source[i + ".route(".len()..];
            let Some(path) = rest
                .trim_start()
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            // The handlers up to the next builder call.
            let end = [
                ".route(",
                ".merge(",
                ".fallback(",
                ".layer(",
                ".with_state(",
            ]
            .iter()
            .filter_map(|m| rest.find(m))
            .min()
            .unwrap_or(rest.len());
            let handlers = &rest[..end];
            for method in ["get", "post", "put", "delete", "patch"] {
                let called = handlers.match_indices(&format!("{method}(")).any(|(j, _)| {
                    j == 0
                        || !handlers.as_bytes()[j - 1].is_ascii_alphanumeric()
                            && handlers.as_bytes()[j - 1] != b'_'
                });
                if called {
                    assert!(
                        doc["paths"][path].get(method).is_some(),
                        "{} {path} is routed but not in openapi.json",
                        method.to_uppercase()
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(
        checked >= 30,
        "only {checked} routes found: is the parser still right?"
    );
}
