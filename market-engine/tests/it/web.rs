//! The web app served from the binary (over a real socket), and the API the app reads beyond
//! single resources: slots over a range, my slots (JSON and CSV) with the utility-only
//! counterfactual, my open orders, my power now, the neighbourhood, the operator's rejected
//! readings. On SQLite and PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gridshare_core::reading::{ClockSync, DeviceIdentity, Measured, MeterId, MeterKey, Reading};
use market_engine::api::auth::{Auth, AuthConfig};
use market_engine::api::{AppState, RateLimits, router};
use market_engine::ingest::{IngestMetrics, KeyRegistry};
use market_engine::market::{Market, MarketConfig};
use market_engine::store::Store;
use ring::rand::SystemRandom;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use crate::{databases, unique};

fn app(store: &Store, market: &Arc<Market>) -> axum::Router {
    router(AppState {
        store: store.clone(),
        keys: KeyRegistry::default(),
        ingest: Arc::new(IngestMetrics::default()),
        market: market.clone(),
        limits: Arc::new(RateLimits::new(100.0, 100.0)),
        meters_per_account: 10,
        tasks: Default::default(),
        chain: Default::default(),
        settler: None,
        broker_auth: Default::default(),
        auth: Arc::new(Auth::new(AuthConfig::default())),
    })
}

/// One request with the session cookie (if any); status, headers and body bytes.
async fn send(
    app: &axum::Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
        .await
        .unwrap()
        .to_vec();
    (status, headers, bytes)
}

async fn get_json(app: &axum::Router, uri: &str, cookie: Option<&str>) -> (StatusCode, Value) {
    let (s, _, body) = send(app, "GET", uri, cookie, None).await;
    (
        s,
        serde_json::from_slice(&body)
            .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned())),
    )
}

/// Creates an account and signs in; the session cookie (`name=value`).
async fn session(app: &axum::Router, name: &str) -> String {
    let creds = json!({"name": name, "password": "a garden of solar panels 42"});
    let (s, _, _) = send(app, "POST", "/api/v1/accounts", None, Some(creds.clone())).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, headers, _) = send(app, "POST", "/api/v1/sessions", None, Some(creds)).await;
    assert_eq!(s, StatusCode::OK);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

fn signed(
    key: &MeterKey,
    meter: &str,
    seq: u64,
    ts_ms: i64,
    import: u64,
    export: u64,
    power: i32,
) -> gridshare_core::reading::SignedReading {
    let reading = Reading {
        meter_id: MeterId::new(meter).unwrap(),
        device: DeviceIdentity::default(),
        seq,
        timestamp_ms: u64::try_from(ts_ms).unwrap(),
        clock: ClockSync::Synchronised,
        import_wh: Measured::ok(import),
        export_wh: Measured::ok(export),
        battery_charge_wh: Measured::ok(5_000 + seq * 10),
        battery_discharge_wh: Measured::ok(1_000),
        power_w: Measured::ok(power),
        soc_bp: Measured::ok(5_500),
        flow: gridshare_core::reading::PowerFlow::NOT_MEASURED,
    };
    key.sign(reading, &SystemRandom::new()).unwrap()
}

#[tokio::test]
async fn the_web_app_is_served_from_the_binary_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("engine.sqlite").display());
    let store = Store::open(&url).await.unwrap();
    let market = Arc::new(
        Market::open(MarketConfig::default().community().unwrap(), store.clone())
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app(&store, &market)).into_future());
    let raw = |request: String| async move {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        socket.read_to_end(&mut out).await.unwrap();
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(out[..split].to_vec())
            .unwrap()
            .to_lowercase();
        (head, out[split + 4..].to_vec())
    };
    let index = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../web/index.html")).unwrap();
    let (head, body) = raw("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into()).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(head.contains("content-security-policy:"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(body, index, "the page is the committed web/index.html");
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .to_owned();

    // A browser that accepts gzip gets the committed gzip form of the file.
    let (head, body) = raw(
        "GET / HTTP/1.1\r\nhost: x\r\naccept-encoding: gzip, br\r\nconnection: close\r\n\r\n"
            .into(),
    )
    .await;
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzip stream");
    assert!(body.len() < index.len());
    // Revalidation: the same ETag answers 304 without a body.
    let (head, body) = raw(format!(
        "GET / HTTP/1.1\r\nhost: x\r\nif-none-match: {etag}\r\nconnection: close\r\n\r\n"
    ))
    .await;
    assert!(head.starts_with("http/1.1 304"), "{head}");
    assert!(body.is_empty());

    // Every module and the chart library, with its type.
    for asset in market_engine::web::ASSETS {
        let (head, body) = raw(format!(
            "GET {} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            asset.path
        ))
        .await;
        assert!(head.starts_with("http/1.1 200"), "{}: {head}", asset.path);
        assert!(
            head.contains(&format!("content-type: {}", asset.content_type)),
            "{}: {head}",
            asset.path
        );
        assert_eq!(body, asset.body, "{}", asset.path);
    }
    let (head, _) =
        raw("GET /js/nope.js HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into()).await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_follows_readings_orders_trades_and_settlement() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.unwrap();
        let config = MarketConfig::default();
        let market = Arc::new(
            Market::open(config.community().unwrap(), store.clone())
                .await
                .unwrap(),
        );
        let app = app(&store, &market);
        let alice_name = unique("alice");
        let alice = session(&app, &alice_name).await;
        let bob_name = unique("bob");
        let bob = session(&app, &bob_name).await;
        let operator_name = unique("op");
        let operator = session(&app, &operator_name).await;
        assert!(
            store
                .set_role(&operator_name, market_engine::store::Role::Operator)
                .await
                .unwrap()
        );
        let rng = SystemRandom::new();
        let mut keys = HashMap::new();
        for (who, cookie) in [("a", &alice), ("b", &bob)] {
            let key = MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).unwrap(), &rng).unwrap();
            let meter = unique(who);
            let meter = meter[meter.len().saturating_sub(30)..].to_owned();
            let body = json!({"meter_id": meter, "public_key": key.public_key().to_hex()});
            let (s, _, b) = send(&app, "POST", "/api/v1/meters", Some(cookie), Some(body)).await;
            assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
            // Its readings count once the operator approves it.
            crate::approve(
                &store,
                &KeyRegistry::default(),
                &meter,
                &DeviceIdentity::default(),
                market_engine::meters::MAX_CAPACITY_W,
            )
            .await;
            keys.insert(who, (key, meter));
        }
        let deposit = json!({"amount": 1_000_000, "reference": "bank-1"});
        let (s, _, _) = send(
            &app,
            "POST",
            &format!("/api/v1/accounts/{bob_name}/deposits"),
            Some(&operator),
            Some(deposit),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);

        let community = market.community();
        let now = i64::try_from(market_engine::pipeline::now_ms() / 1000).unwrap();
        let slot = community.calendar.slot_delivering_at(now).unwrap() + 2;
        let terms = community.terms(slot).unwrap();
        let (start, end) = (terms.slot.delivery_start, terms.slot.delivery_end);

        // Ranges are checked.
        for bad in [
            format!("/api/v1/slots?from={slot}&to={}", slot - 1),
            format!("/api/v1/slots?from={slot}&to={}", slot + 40_000),
            "/api/v1/slots?from=x&to=1".into(),
            format!("/api/v1/my/slots?from={slot}&to={slot}&format=xml"),
        ] {
            let (s, body) = get_json(&app, &bad, Some(&alice)).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
        let (s, _) = get_json(
            &app,
            &format!("/api/v1/my/slots?from={slot}&to={slot}"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        // The slot timeline with its terms.
        let (s, body) = get_json(
            &app,
            &format!("/api/v1/slots?from={slot}&to={}", slot + 1),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let first = &body["slots"][0];
        assert_eq!(first["slot"], slot);
        assert_eq!(first["delivery_start_s"], start);
        assert_eq!(first["gate_closure_s"], terms.slot.gate_closure);
        assert_eq!(first["retail_per_kwh"], config.retail_per_kwh);
        assert_eq!(first["feed_in_per_kwh"], config.feed_in_per_kwh);
        assert_eq!(first["grid_fee_per_kwh"], config.grid_fee_per_kwh);
        assert_eq!(first["status"], "open");
        assert_eq!(body["slots"].as_array().unwrap().len(), 2);

        // Open orders: placed, amended, cancelled; nobody sees another's.
        let order = |meter: &str, side: &str, wh: u64, price: u64| json!({"meter_id": meter, "slot": slot, "side": side, "energy_wh": wh, "price_per_kwh": price});
        let (s, _, b) = send(
            &app,
            "POST",
            "/api/v1/orders",
            Some(&alice),
            Some(order(&keys["a"].1, "sell", 1_000, 10_000)),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        let ask: Value = serde_json::from_slice(&b).unwrap();
        let (s, _, b) = send(
            &app,
            "POST",
            "/api/v1/orders",
            Some(&alice),
            Some(order(&keys["a"].1, "sell", 300, 20_000)),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let spare: Value = serde_json::from_slice(&b).unwrap();
        let (s, _, _) = send(
            &app,
            "POST",
            "/api/v1/orders",
            Some(&bob),
            Some(order(&keys["b"].1, "buy", 1_500, 25_000)),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, _, _) = send(
            &app,
            "PATCH",
            &format!("/api/v1/orders/{}", ask["order_id"]),
            Some(&alice),
            Some(json!({"energy_wh": 800, "price_per_kwh": 11_000})),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _, _) = send(
            &app,
            "DELETE",
            &format!("/api/v1/orders/{}", spare["order_id"]),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (_, mine) = get_json(&app, "/api/v1/my/orders", Some(&alice)).await;
        let orders = mine["orders"].as_array().unwrap();
        assert_eq!(orders.len(), 1, "{mine}");
        assert_eq!(orders[0]["order_id"], ask["order_id"]);
        assert_eq!(orders[0]["energy_wh"], 800, "the amend's energy");
        assert_eq!(orders[0]["price_per_kwh"], 11_000);
        assert_eq!(orders[0]["side"], "sell");
        let (_, theirs) = get_json(&app, "/api/v1/my/orders", Some(&bob)).await;
        assert_eq!(theirs["orders"].as_array().unwrap().len(), 1);
        assert_eq!(theirs["orders"][0]["side"], "buy");

        // Signed readings around the slot: Alice exports 700 Wh and imports 50 Wh in it,
        // Bob imports 900 Wh.
        let (ka, ma) = &keys["a"];
        let (kb, mb) = &keys["b"];
        let s_ms = start * 1000;
        let e_ms = end * 1000;
        let readings = [
            signed(ka, ma, 1, s_ms - 60_000, 100, 1_000, -2_000),
            signed(ka, ma, 2, s_ms - 1_000, 110, 1_200, -2_000),
            signed(ka, ma, 3, s_ms + 400_000, 140, 1_500, -2_500),
            signed(ka, ma, 4, e_ms - 2_000, 160, 1_900, -1_500),
            signed(kb, mb, 1, s_ms - 5_000, 5_000, 0, 3_000),
            signed(kb, mb, 2, e_ms, 5_900, 0, 3_600),
        ];
        let outcomes = store
            .store_readings(
                &crate::accepted(&readings),
                market_engine::pipeline::now_ms(),
                &mut HashMap::new(),
            )
            .await
            .unwrap();
        assert!(
            outcomes
                .iter()
                .all(|o| *o == market_engine::store::Stored::Inserted)
        );

        // Gate closure: the call auction trades 800 Wh; then settlement against the readings.
        market
            .close_due_gates(terms.slot.gate_closure)
            .await
            .unwrap();
        let (_, mine) = get_json(&app, "/api/v1/my/orders", Some(&alice)).await;
        assert_eq!(
            mine["orders"].as_array().unwrap().len(),
            0,
            "a closed gate leaves no open order"
        );
        market.settle_due(terms.slot.settlement).await.unwrap();

        let range = format!("/api/v1/my/slots?from={}&to={slot}", slot - 1);
        let (s, body) = get_json(&app, &range, Some(&alice)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let row = &body["slots"][1];
        assert_eq!(row["slot"], slot);
        assert_eq!(row["import_wh"], 50, "{row}");
        assert_eq!(row["export_wh"], 700, "{row}");
        assert_eq!(row["sold_wh"], 800);
        assert_eq!(row["bought_wh"], 0);
        let trades = market.trades(slot).await.unwrap();
        let received: u64 = trades.iter().map(|t| t.amounts.seller_receives).sum();
        assert_eq!(row["received"], received);
        // Utility alone: 50 Wh at retail less 700 Wh at feed-in.
        let utility = i64::try_from(50 * config.retail_per_kwh / 1000).unwrap()
            - i64::try_from(700 * config.feed_in_per_kwh / 1000).unwrap();
        assert_eq!(row["utility_only"], utility);
        let settled: i64 = sqlx::query_scalar(
            "SELECT CAST(SUM(amount) AS BIGINT) FROM ledger WHERE slot = $1 AND account_id = $2",
        )
        .bind(i64::try_from(slot).unwrap())
        .bind(
            store
                .account_by_name(&alice_name)
                .await
                .unwrap()
                .unwrap()
                .id,
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(row["settled"], settled, "the ledger's net amount");
        assert!(
            body["slots"][0]["import_wh"].is_null(),
            "no reading before the first slot's start"
        );
        let (_, body) = get_json(&app, &range, Some(&bob)).await;
        assert_eq!(body["slots"][1]["import_wh"], 900);
        assert_eq!(body["slots"][1]["bought_wh"], 800);
        assert!(body["slots"][1]["paid"].as_u64().unwrap() > 0);

        // Sums over the range, money over settled slots only.
        let (s, totals) = get_json(&app, &format!("{range}&format=totals"), Some(&alice)).await;
        assert_eq!(s, StatusCode::OK, "{totals}");
        assert_eq!(totals["export_wh"], 700);
        assert_eq!(totals["sold_wh"], 800);
        assert_eq!(totals["settled_slots"], 1);
        assert_eq!(totals["settled"], settled);
        assert_eq!(totals["utility_only"], utility);

        // The same as CSV, for a spreadsheet.
        let (s, headers, csv) = send(
            &app,
            "GET",
            &format!("{range}&format=csv"),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
        assert!(
            headers[header::CONTENT_DISPOSITION]
                .to_str()
                .unwrap()
                .contains("attachment")
        );
        let csv = String::from_utf8(csv).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "{csv}");
        assert!(lines[0].starts_with("slot,start_utc_s,import_wh,export_wh,bought_wh,sold_wh"));
        assert!(
            lines[2].starts_with(&format!("{slot},{start},50,700,0,800,")),
            "{csv}"
        );
        assert!(
            lines[2].ends_with(&format!(",{settled},{utility},,")),
            "{csv}: no solar counter, no solar or consumption column"
        );

        // The slot after gate closure: status and clearing price, traded energy.
        let (_, body) = get_json(&app, &format!("/api/v1/slots?from={slot}&to={slot}"), None).await;
        assert_eq!(body["slots"][0]["status"], "settled");
        assert_eq!(body["slots"][0]["traded_wh"], 800);
        assert!(body["slots"][0]["clearing_price"].as_u64().is_some());

        // My power now: the latest reading and the battery's direction from its counters.
        let (s, body) = get_json(&app, "/api/v1/my/power", Some(&alice)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["meters"][0]["meter_id"], ma.as_str());
        assert_eq!(body["meters"][0]["reading"]["seq"], 4);
        assert_eq!(body["meters"][0]["reading"]["power_w"], -1_500);
        assert_eq!(body["meters"][0]["reading"]["soc_bp"], 5_500);

        // The neighbourhood names nobody.
        let (s, body) = get_json(&app, "/api/v1/neighbourhood", None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(!body.to_string().contains(ma.as_str()) && !body.to_string().contains(mb.as_str()));
        assert!(body["now"]["power_w"].is_array());

        // Rejected readings are the operator's to see.
        let (s, _) = get_json(&app, "/api/v1/operator/rejections", Some(&alice)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, body) = get_json(&app, "/api/v1/operator/rejections", Some(&operator)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert!(body["by_reason"].is_array() && body["latest"].is_array());

        // Inclusion proofs of my trades against the settled batch's root.
        let proof_path = format!("/api/v1/my/settlements/{slot}/proof");
        let (s, _) = get_json(&app, &proof_path, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        // Without a chain there is no batch and no chain address: nothing to prove against.
        let (s, body) = get_json(&app, &proof_path, Some(&alice)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
        // With one (its custody gives every account's address), the slot's batch.
        let custody =
            std::sync::Arc::new(market_engine::chain::custody::Custody::generate().unwrap());
        market.queue_batches(custody.clone());
        let (s, body) = get_json(
            &app,
            &format!("/api/v1/my/settlements/{}/proof", slot + 5),
            Some(&alice),
        )
        .await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "an unsettled slot has no root: {body}"
        );
        for (cookie, side) in [(&alice, "sell"), (&bob, "buy")] {
            let (s, body) = get_json(&app, &proof_path, Some(cookie)).await;
            assert_eq!(s, StatusCode::OK, "{body}");
            assert_eq!(body["batch_id"], slot);
            let root: alloy::primitives::B256 = body["root"].as_str().unwrap().parse().unwrap();
            let trades = body["trades"].as_array().unwrap();
            assert_eq!(trades.len(), 1, "{body}");
            let t = &trades[0];
            assert_eq!(t["side"], side);
            let leaf = gridshare_contracts::TradeLeaf::Trade {
                batch_id: slot,
                buyer: t["buyer"].as_str().unwrap().parse().unwrap(),
                seller: t["seller"].as_str().unwrap().parse().unwrap(),
                energy_wh: t["energy_wh"].as_u64().unwrap(),
                amount: t["amount"].as_str().unwrap().parse().unwrap(),
            }
            .hash();
            assert_eq!(t["leaf"].as_str().unwrap(), leaf.to_string());
            let proof: Vec<alloy::primitives::B256> = t["proof"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().parse().unwrap())
                .collect();
            assert!(gridshare_contracts::MerkleTree::verify(root, leaf, &proof));
            // A trade with another amount is not in the root.
            let forged = gridshare_contracts::TradeLeaf::Trade {
                batch_id: slot,
                buyer: t["buyer"].as_str().unwrap().parse().unwrap(),
                seller: t["seller"].as_str().unwrap().parse().unwrap(),
                energy_wh: t["energy_wh"].as_u64().unwrap(),
                amount: alloy::primitives::U256::from(1u8),
            }
            .hash();
            assert!(!gridshare_contracts::MerkleTree::verify(
                root, forged, &proof
            ));
        }
        let settled_slot = market_engine::market::SettledSlot {
            slot,
            balances: Vec::new(),
            trades: market.trades(slot).await.unwrap(),
            reading_digests: sqlx::query_scalar(
                "SELECT digest FROM slot_readings WHERE slot = $1 ORDER BY digest",
            )
            .bind(i64::try_from(slot).unwrap())
            .fetch_all(store.pool())
            .await
            .unwrap(),
        };
        let (_, body) = get_json(&app, &proof_path, Some(&alice)).await;
        assert_eq!(
            body["root"].as_str().unwrap(),
            market_engine::chain::batch_of(&settled_slot, &custody)
                .unwrap()
                .root
                .to_string(),
            "the root of the batch the engine sends to the chain"
        );

        // Every route added for the app is in the OpenAPI document.
        let (_, doc) = get_json(&app, "/openapi.json", None).await;
        for path in [
            "/api/v1/slots",
            "/api/v1/my/slots",
            "/api/v1/my/orders",
            "/api/v1/my/power",
            "/api/v1/neighbourhood",
            "/api/v1/operator/rejections",
            "/api/v1/my/settlements/{slot}/proof",
            "/api/v1/meters/{meter_id}/stake",
        ] {
            assert!(
                doc["paths"][path]["get"].is_object(),
                "{path} in /openapi.json"
            );
        }
        store.close().await;
    }
}

/// The Home page's power-flow picture and gauges from readings with solar and battery power
/// (encoding version 2): the house's power now is grid + solar − battery, and over a slot the
/// consumption is import + solar + discharge − export − charge, self-sufficiency and
/// self-consumption as Home Assistant's Energy dashboard defines them. A meter whose readings
/// carry no solar counter has neither.
#[tokio::test]
async fn power_flow_readings_give_the_house_power_and_the_days_shares() {
    use gridshare_core::reading::PowerFlow;
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.unwrap();
        let market = Arc::new(
            Market::open(MarketConfig::default().community().unwrap(), store.clone())
                .await
                .unwrap(),
        );
        let app = app(&store, &market);
        let cookie = session(&app, &unique("sunny")).await;
        let rng = SystemRandom::new();
        let key = MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).unwrap(), &rng).unwrap();
        let meter = unique("s");
        let meter = meter[meter.len().saturating_sub(30)..].to_owned();
        let body = json!({"meter_id": meter, "public_key": key.public_key().to_hex()});
        let (s, _, _) = send(&app, "POST", "/api/v1/meters", Some(&cookie), Some(body)).await;
        assert_eq!(s, StatusCode::CREATED);
        crate::approve(
            &store,
            &KeyRegistry::default(),
            &meter,
            &DeviceIdentity::default(),
            market_engine::meters::MAX_CAPACITY_W,
        )
        .await;

        let length = i64::from(MarketConfig::default().slot_length_s);
        let now = i64::try_from(market_engine::pipeline::now_ms() / 1000).unwrap();
        let slot = u64::try_from(now / length - 3).unwrap();
        let start_ms = i64::try_from(slot).unwrap() * length * 1000;
        // (seq, time, import, export, pv Wh, charge, discharge, grid W, pv W, battery W)
        let rows = [
            (
                1,
                start_ms - 1_000,
                1_000,
                500,
                10_000,
                2_000,
                3_000,
                100,
                0,
                -100,
            ),
            (
                2,
                start_ms + length * 1000 - 1_000,
                1_300,
                1_500,
                12_000,
                2_500,
                3_100,
                -700,
                2_500,
                400,
            ),
        ];
        let readings: Vec<_> = rows
            .iter()
            .map(|&(seq, ts, imp, exp, pv, ch, dis, grid, pv_w, batt)| {
                let mut r = signed(&key, &meter, seq, ts, imp, exp, grid).reading;
                r.battery_charge_wh = Measured::ok(ch);
                r.battery_discharge_wh = Measured::ok(dis);
                r.flow = PowerFlow {
                    pv_power_w: Measured::ok(pv_w),
                    pv_wh: Measured::ok(pv),
                    battery_power_w: Measured::ok(batt),
                };
                key.sign(r, &rng).unwrap()
            })
            .collect();
        store
            .store_readings(&crate::accepted(&readings), 0, &mut HashMap::new())
            .await
            .unwrap();

        let (s, body) = get_json(&app, "/api/v1/my/power", Some(&cookie)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let m = &body["meters"][0];
        assert_eq!(m["reading"]["pv_power_w"], 2_500, "{body}");
        assert_eq!(m["reading"]["pv_wh"], 12_000);
        assert_eq!(m["reading"]["battery_power_w"], 400);
        assert_eq!(m["battery_w"], 400, "the reported battery power");
        assert_eq!(m["house_w"], -700 + 2_500 - 400, "grid + solar − battery");

        let range = format!("/api/v1/my/slots?from={}&to={slot}", slot - 1);
        let (s, body) = get_json(&app, &range, Some(&cookie)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let row = &body["slots"][1];
        assert_eq!(row["pv_wh"], 2_000, "{row}");
        assert_eq!(row["battery_charge_wh"], 500);
        assert_eq!(row["battery_discharge_wh"], 100);
        // 300 imported + 2 000 solar + 100 from the battery − 1 000 exported − 500 charged.
        assert_eq!(row["consumption_wh"], 900);
        assert!(body["slots"][0]["pv_wh"].is_null(), "no reading before");
        // Self-sufficiency: 1 − 300 / 900; self-consumption: 1 − 1 000 / 2 000.
        assert_eq!(body["self_sufficiency_bp"], 6_666, "{body}");
        assert_eq!(body["self_consumption_bp"], 5_000);
        let (_, totals) = get_json(&app, &format!("{range}&format=totals"), Some(&cookie)).await;
        assert_eq!(totals["pv_wh"], 2_000, "{totals}");
        assert_eq!(totals["consumption_wh"], 900);
        assert_eq!(totals["self_sufficiency_bp"], 6_666);
        assert_eq!(totals["self_consumption_bp"], 5_000);
        let (_, headers, csv) = send(
            &app,
            "GET",
            &format!("{range}&format=csv"),
            Some(&cookie),
            None,
        )
        .await;
        assert_eq!(headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
        let csv = String::from_utf8(csv).unwrap();
        assert!(
            csv.lines()
                .next()
                .unwrap()
                .ends_with(",pv_wh,consumption_wh"),
            "{csv}"
        );
        assert!(csv.lines().nth(2).unwrap().ends_with(",2000,900"), "{csv}");

        // The slot before has no reading on both sides: no shares to show.
        let before = format!("/api/v1/my/slots?from={}&to={}", slot - 1, slot - 1);
        let (_, body) = get_json(&app, &before, Some(&cookie)).await;
        assert!(body["self_sufficiency_bp"].is_null() && body["self_consumption_bp"].is_null());
        store.close().await;
    }
}
