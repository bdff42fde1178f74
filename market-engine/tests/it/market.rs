//! Orders through the API into the `core` auction, gate closure, settlement against signed
//! readings, and the order log that survives a restart. On SQLite and PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use futures_util::StreamExt;
use gridshare_core::reading::{ClockSync, DeviceIdentity, Measured, MeterId, MeterKey, Reading};
use market_engine::api::auth::{Auth, AuthConfig};
use market_engine::api::{AppState, RateLimits, router};
use market_engine::chain::custody::{GRID_OPERATOR, UTILITY};
use market_engine::ingest::{IngestMetrics, KeyRegistry};
use market_engine::market::{Market, MarketConfig};
use market_engine::store::{SlotStatus, Store};
use ring::rand::SystemRandom;
use serde_json::json;
use sqlx::Row;
use tower::ServiceExt;

use crate::api::{call, session_of};
use crate::{databases, unique};

pub(crate) fn now_s() -> i64 {
    i64::try_from(market_engine::pipeline::now_ms() / 1000).unwrap()
}

/// The API over `store` and `market`, as the engine serves it.
pub(crate) fn api(store: &Store, market: &Arc<Market>) -> axum::Router {
    api_with(store, market, &KeyRegistry::default())
}

/// The API over `store` and `market` with the ingest's registry `keys`.
pub(crate) fn api_with(store: &Store, market: &Arc<Market>, keys: &KeyRegistry) -> axum::Router {
    api_with_settler(store, market, keys, None)
}

/// The API as an engine that settles on chain through `settler` serves it.
pub(crate) fn api_with_settler(
    store: &Store,
    market: &Arc<Market>,
    keys: &KeyRegistry,
    settler: Option<Arc<market_engine::chain::ChainSettler>>,
) -> axum::Router {
    router(AppState {
        store: store.clone(),
        keys: keys.clone(),
        ingest: Arc::new(IngestMetrics::default()),
        market: market.clone(),
        limits: Arc::new(RateLimits::new(100.0, 100.0)),
        meters_per_account: 10,
        tasks: Default::default(),
        chain: Default::default(),
        settler,
        broker_auth: Default::default(),
        auth: Arc::new(Auth::new(AuthConfig::default())),
    })
}

/// Calls the API and checks the status; returns the body.
pub(crate) async fn expect(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
    status: StatusCode,
) -> serde_json::Value {
    let (s, body, _) = call(app, method, path, token, body).await;
    assert_eq!(s, status, "{method} {path}: {body}");
    body
}

/// A new meter key, registered for the account behind `token` under a unique id.
pub(crate) async fn new_meter(
    app: &axum::Router,
    store: &Store,
    token: &str,
    prefix: &str,
) -> (MeterKey, String) {
    let rng = SystemRandom::new();
    let key = MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).unwrap(), &rng).unwrap();
    let meter = unique(prefix);
    let meter = meter[meter.len().saturating_sub(30)..].to_owned();
    let body = json!({"meter_id": meter, "public_key": key.public_key().to_hex()});
    expect(
        app,
        "POST",
        "/api/v1/meters",
        Some(token),
        Some(body),
        StatusCode::CREATED,
    )
    .await;
    let approval = market_engine::ingest::Approval {
        export_capacity_w: market_engine::meters::MAX_CAPACITY_W,
        import_capacity_w: market_engine::meters::MAX_CAPACITY_W,
        device: crate::simulated_device("SIM-000001"),
    };
    assert!(store.approve_meter(&meter, &approval, 0, 0).await.unwrap());
    (key, meter)
}

/// `(balance, held by bids, held by purchases, available)` from `GET /api/v1/balance`.
async fn funds_of(app: &axum::Router, token: &str) -> (i64, i64, i64, i64) {
    let body = expect(
        app,
        "GET",
        "/api/v1/balance",
        Some(token),
        None,
        StatusCode::OK,
    )
    .await;
    let field = |name: &str| {
        body[name]
            .as_i64()
            .unwrap_or_else(|| panic!("{name}: {body}"))
    };
    (
        field("balance"),
        field("held_by_bids"),
        field("held_by_purchases"),
        field("available"),
    )
}

pub(crate) async fn login(app: &axum::Router, name: &str) -> String {
    let creds = json!({"name": name, "password": "correct horse battery"});
    let (s, _, _) = call(app, "POST", "/api/v1/accounts", None, Some(creds.clone())).await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, _, cookie) = call(app, "POST", "/api/v1/sessions", None, Some(creds)).await;
    session_of(cookie)
}

pub(crate) fn signed(
    key: &MeterKey,
    meter: &str,
    seq: u64,
    ts_s: i64,
    import: u64,
    export: u64,
) -> gridshare_core::reading::SignedReading {
    let reading = Reading {
        meter_id: MeterId::new(meter).unwrap(),
        device: DeviceIdentity::default(),
        seq,
        timestamp_ms: u64::try_from(ts_s).unwrap() * 1000,
        clock: ClockSync::Synchronised,
        import_wh: Measured::ok(import),
        export_wh: Measured::ok(export),
        battery_charge_wh: Measured::not_implemented(),
        battery_discharge_wh: Measured::not_implemented(),
        power_w: Measured::not_implemented(),
        soc_bp: Measured::not_implemented(),
        flow: gridshare_core::reading::PowerFlow::NOT_MEASURED,
    };
    key.sign(reading, &SystemRandom::new()).unwrap()
}

/// Alice (who sells) and Bob (who buys), each with an approved meter, and the community
/// operator, on one database, with `slot` open for orders: the fixture of the tests that follow
/// an order from the API through gate closure and settlement against signed readings to the
/// chain. Its stages (`orders`, `amended`, `closed`, `settled`) each bring the street one step
/// further, so every test starts from the state the one before it checks.
struct Street {
    url: String,
    store: Store,
    market: Arc<Market>,
    app: axum::Router,
    alice: String,
    bob: String,
    bob_name: String,
    operator: String,
    keys: HashMap<&'static str, MeterKey>,
    meters: HashMap<&'static str, String>,
    slot: u64,
    terms: gridshare_core::market::SlotTerms,
}

impl Street {
    async fn open(url: &str) -> Self {
        let store = Store::open(url).await.unwrap();
        let config = MarketConfig::default();
        let market = Arc::new(
            Market::open(config.community().unwrap(), store.clone())
                .await
                .unwrap(),
        );
        let app = api(&store, &market);
        let alice = login(&app, &unique("alice")).await;
        let bob_name = unique("bob");
        let bob = login(&app, &bob_name).await;
        let operator_name = unique("operator");
        let operator = login(&app, &operator_name).await;
        assert!(
            store
                .set_role(&operator_name, market_engine::store::Role::Operator)
                .await
                .unwrap()
        );
        let mut keys = HashMap::new();
        let mut meters = HashMap::new();
        for (who, token) in [("a", &alice), ("b", &bob)] {
            let (key, meter) = new_meter(&app, &store, token, who).await;
            keys.insert(who, key);
            meters.insert(who, meter);
        }
        // A slot whose order window is open now.
        let community = market.community().clone();
        let slot = community.calendar.slot_delivering_at(now_s()).unwrap() + 2;
        let terms = community.terms(slot).unwrap();
        Self {
            url: url.to_owned(),
            store,
            market,
            app,
            alice,
            bob,
            bob_name,
            operator,
            keys,
            meters,
            slot,
            terms,
        }
    }

    /// An order of `who`'s meter for the street's slot.
    fn order(&self, who: &str, side: &str, wh: i64, price: i64) -> serde_json::Value {
        json!({"meter_id": self.meters[who], "slot": self.slot, "side": side, "energy_wh": wh, "price_per_kwh": price})
    }

    async fn post_order(
        &self,
        token: &str,
        order: serde_json::Value,
        status: StatusCode,
    ) -> serde_json::Value {
        expect(
            &self.app,
            "POST",
            "/api/v1/orders",
            Some(token),
            Some(order),
            status,
        )
        .await
    }

    /// The operator records money Bob paid in.
    async fn deposit_for_bob(&self, amount: i64, reference: &str) -> serde_json::Value {
        let path = format!("/api/v1/accounts/{}/deposits", self.bob_name);
        let body = json!({"amount": amount, "reference": reference});
        expect(
            &self.app,
            "POST",
            &path,
            Some(&self.operator),
            Some(body),
            StatusCode::CREATED,
        )
        .await
    }

    /// Stage: Alice sells 1 kWh at ≥ 10, Bob (40 000 paid in) buys 1.5 kWh at ≤ 25 (thousandths
    /// of a token per kWh). Returns Bob's order id.
    async fn orders(&self) -> u64 {
        self.post_order(
            &self.alice,
            self.order("a", "sell", 1000, 10_000),
            StatusCode::CREATED,
        )
        .await;
        self.deposit_for_bob(40_000, "bank-transfer-1").await;
        let body = self
            .post_order(
                &self.bob,
                self.order("b", "buy", 1500, 25_000),
                StatusCode::CREATED,
            )
            .await;
        body["order_id"].as_u64().unwrap()
    }

    /// Stage: the orders, then Bob lowers his limit to 24.
    async fn amended(&self) -> u64 {
        let bob_order = self.orders().await;
        let path = format!("/api/v1/orders/{bob_order}");
        let lower = json!({"energy_wh": 1500, "price_per_kwh": 24_000});
        expect(
            &self.app,
            "PATCH",
            &path,
            Some(&self.bob),
            Some(lower),
            StatusCode::OK,
        )
        .await;
        bob_order
    }

    /// The engine restarts: the market is opened again from the order log.
    async fn restart(&mut self) {
        let community = self.market.community().clone();
        self.market = Arc::new(Market::open(community, self.store.clone()).await.unwrap());
        self.app = api(&self.store, &self.market);
    }

    /// Stage: amended, a restart, then the gate closes and the auction clears. The trade.
    async fn closed(&mut self) -> gridshare_core::market::Trade {
        self.amended().await;
        self.restart().await;
        let closed = self
            .market
            .close_due_gates(self.terms.slot.gate_closure)
            .await
            .unwrap();
        assert_eq!(closed, vec![self.slot]);
        let trades = self.market.trades(self.slot).await.unwrap();
        assert_eq!(trades.len(), 1, "{}", self.url);
        trades[0]
    }

    /// Stage: closed, then delivery — Alice exports 1.2 kWh, Bob imports 1.5 kWh in the slot
    /// (signed readings) — and the slot settles. The trade and the slot's ledger rows
    /// (account, amount).
    async fn settled(&mut self) -> (gridshare_core::market::Trade, Vec<(i64, i64)>) {
        let t = self.closed().await;
        let (start, end) = (self.terms.slot.delivery_start, self.terms.slot.delivery_end);
        let (a, b) = (&self.meters["a"], &self.meters["b"]);
        let readings = vec![
            signed(&self.keys["a"], a, 1, start - 1, 5_000, 20_000),
            signed(&self.keys["a"], a, 2, end, 5_000, 21_200),
            signed(&self.keys["b"], b, 1, start, 9_000, 100),
            signed(&self.keys["b"], b, 2, end - 1, 10_500, 100),
        ];
        let mut last = HashMap::new();
        self.store
            .store_readings(&crate::accepted(&readings), 0, &mut last)
            .await
            .unwrap();
        assert!(
            self.market
                .settle_due(self.terms.slot.settlement - 1)
                .await
                .unwrap()
                .is_empty(),
            "not before settlement time"
        );
        assert_eq!(
            self.market
                .settle_due(self.terms.slot.settlement)
                .await
                .unwrap(),
            vec![self.slot]
        );
        let rows = sqlx::query("SELECT account_id, amount FROM ledger WHERE slot = $1")
            .bind(i64::try_from(self.slot).unwrap())
            .fetch_all(self.store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
            .collect();
        (t, rows)
    }

    /// What settlement booked for `token`'s account (`settled` of `GET /api/v1/balance`).
    async fn settled_amount(&self, token: &str) -> i64 {
        let body = expect(
            &self.app,
            "GET",
            "/api/v1/balance",
            Some(token),
            None,
            StatusCode::OK,
        )
        .await;
        body["settled"]
            .as_i64()
            .unwrap_or_else(|| panic!("{}: {body}", self.url))
    }
}

/// An order for another account's meter, a negative, absurd or zero energy, a price above
/// retail or an unknown meter: each refused with its status, and none is in the book.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_orders_are_refused_with_their_reason_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let s = Street::open(&url).await;
        let alice = s.alice.as_str();
        s.post_order(
            alice,
            s.order("b", "sell", 1000, 10_000),
            StatusCode::FORBIDDEN,
        )
        .await;
        s.post_order(
            alice,
            s.order("a", "sell", -5, 10_000),
            StatusCode::BAD_REQUEST,
        )
        .await;
        let absurd = json!({"meter_id": s.meters["a"], "slot": s.slot, "side": "sell", "energy_wh": 1e30, "price_per_kwh": 10_000});
        s.post_order(alice, absurd, StatusCode::BAD_REQUEST).await;
        s.post_order(
            alice,
            s.order("a", "sell", 0, 10_000),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let body = s
            .post_order(
                alice,
                s.order("a", "sell", 1000, 50_000),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        assert!(
            body["error"].as_str().is_some(),
            "price above retail: {body}"
        );
        let mut unknown = s.order("a", "sell", 1000, 10_000);
        unknown["meter_id"] = json!("no-such-meter");
        s.post_order(alice, unknown, StatusCode::NOT_FOUND).await;
        let path = format!("/api/v1/slots/{}/book", s.slot);
        let book = expect(&s.app, "GET", &path, None, None, StatusCode::OK).await;
        assert_eq!(
            (
                book["bids"].as_array().map(Vec::len),
                book["asks"].as_array().map(Vec::len)
            ),
            (Some(0), Some(0)),
            "{url}: {book}"
        );
    }
}

/// A bid needs the money it could cost: refused while Bob has paid nothing in, with what it
/// needs; only the operator records deposits, and a retried one (same reference) counts once;
/// a second bid or a withdrawal beyond what is left is refused; the funding list shows both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bid_needs_funds_a_retried_deposit_counts_once_and_nothing_leaves_beyond_what_is_available()
 {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let s = Street::open(&url).await;
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        let bid = s.order("b", "buy", 1500, 25_000);
        let body = s.post_order(&s.bob, bid.clone(), unprocessable).await;
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("insufficient funds") && error.contains("37500"),
            "{error}"
        );
        let deposits = format!("/api/v1/accounts/{}/deposits", s.bob_name);
        let deposit =
            |amount: i64, reference: &str| Some(json!({"amount": amount, "reference": reference}));
        expect(
            &s.app,
            "POST",
            &deposits,
            Some(&s.alice),
            deposit(40_000, "bank-transfer-1"),
            StatusCode::FORBIDDEN,
        )
        .await;
        for _ in 0..2 {
            let body = s.deposit_for_bob(40_000, "bank-transfer-1").await;
            assert_eq!(body["available"], 40_000, "{body}");
        }
        expect(
            &s.app,
            "POST",
            &deposits,
            Some(&s.operator),
            deposit(50_000, "bank-transfer-1"),
            StatusCode::CONFLICT,
        )
        .await;
        for bad in [
            json!({"amount": 0}),
            json!({"amount": -5}),
            json!({"amount": 10, "reference": ""}),
        ] {
            expect(
                &s.app,
                "POST",
                &deposits,
                Some(&s.operator),
                Some(bad),
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
        let nobody = "/api/v1/accounts/nobody-here/deposits";
        expect(
            &s.app,
            "POST",
            nobody,
            Some(&s.operator),
            deposit(10, "x"),
            StatusCode::NOT_FOUND,
        )
        .await;
        s.post_order(&s.bob, bid, StatusCode::CREATED).await;
        assert_eq!(funds_of(&s.app, &s.bob).await, (40_000, 37_500, 0, 2_500));
        s.post_order(&s.bob, s.order("b", "buy", 200, 25_000), unprocessable)
            .await;
        let out = |amount: i64| Some(json!({ "amount": amount }));
        expect(
            &s.app,
            "POST",
            "/api/v1/withdrawals",
            Some(&s.bob),
            out(2_501),
            unprocessable,
        )
        .await;
        expect(
            &s.app,
            "POST",
            "/api/v1/withdrawals",
            Some(&s.bob),
            out(1_000),
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(funds_of(&s.app, &s.bob).await, (39_000, 37_500, 0, 1_500));
        let listed = expect(
            &s.app,
            "GET",
            "/api/v1/funding",
            Some(&s.bob),
            None,
            StatusCode::OK,
        )
        .await;
        assert_eq!(listed["funding"][0]["amount"], -1_000, "{listed}");
        assert_eq!(
            listed["funding"][1]["reference"], "bank-transfer-1",
            "{listed}"
        );
    }
}

/// The live stream (Server-Sent Events) announces an accepted order; the public book shows
/// both orders per price level, without their owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_orders_reach_the_stream_and_the_public_book_without_their_owners() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let s = Street::open(&url).await;
        let stream = s
            .app
            .clone()
            .oneshot(
                axum::http::Request::get("/api/v1/stream")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            stream.headers()[axum::http::header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut events = stream.into_body().into_data_stream();
        s.orders().await;
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let first = String::from_utf8(first.to_vec()).unwrap();
        assert!(first.starts_with("data: {\"type\":\"order\""), "{first}");
        assert!(first.contains("\"energy_wh\":1000"), "{first}");
        let path = format!("/api/v1/slots/{}/book", s.slot);
        let book = expect(&s.app, "GET", &path, None, None, StatusCode::OK).await;
        assert_eq!(book["bids"][0]["energy_wh"], 1500, "{url}: {book}");
        assert_eq!(book["asks"][0]["price_per_kwh"], 10_000, "{book}");
        assert!(!book.to_string().contains("account"));
    }
}

/// Bob lowers his limit (the amend goes through the order log like the order did) and his
/// hold shrinks with it; growing the bid needs the difference; nobody amends or cancels
/// another account's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_amends_or_cancels_and_a_growing_bid_needs_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let s = Street::open(&url).await;
        let bob_order = s.amended().await;
        assert_eq!(
            funds_of(&s.app, &s.bob).await,
            (40_000, 36_000, 0, 4_000),
            "{url}"
        );
        // 2 kWh at 25 needs 14 000 more; 4 000 are left.
        let path = format!("/api/v1/orders/{bob_order}");
        let grown = json!({"energy_wh": 2000, "price_per_kwh": 25_000});
        expect(
            &s.app,
            "PATCH",
            &path,
            Some(&s.bob),
            Some(grown),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let theirs = json!({"energy_wh": 1, "price_per_kwh": 24_000});
        expect(
            &s.app,
            "PATCH",
            &path,
            Some(&s.alice),
            Some(theirs),
            StatusCode::NOT_FOUND,
        )
        .await;
        expect(
            &s.app,
            "DELETE",
            &path,
            Some(&s.alice),
            None,
            StatusCode::NOT_FOUND,
        )
        .await;
        assert_eq!(funds_of(&s.app, &s.bob).await, (40_000, 36_000, 0, 4_000));
    }
}

/// A restart before gate closure rebuilds the book, the funds and the holds from the order
/// log; at gate closure the auction clears once, the bid's hold becomes what the trade costs,
/// and the closed slot takes no more orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_before_gate_closure_rebuilds_the_book_and_the_gate_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let mut s = Street::open(&url).await;
        s.amended().await;
        s.restart().await;
        let bob_id = s
            .store
            .account_by_name(&s.bob_name)
            .await
            .unwrap()
            .unwrap()
            .id;
        let held = s.market.funds(bob_id).await;
        assert_eq!(
            (held.balance, held.held_by_bids, held.available),
            (40_000, 36_000, 4_000),
            "{url}: funds and holds are rebuilt after a restart"
        );
        let closed = s
            .market
            .close_due_gates(s.terms.slot.gate_closure)
            .await
            .unwrap();
        assert_eq!(closed, vec![s.slot]);
        let trades = s.market.trades(s.slot).await.unwrap();
        assert_eq!(trades.len(), 1);
        let counted =
            |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(counted(&s.market.metrics.gate_closures), 1);
        assert_eq!(counted(&s.market.metrics.trades), 1);
        let t = trades[0];
        assert_eq!(t.energy_wh, 1000);
        // The bid's hold became what the trade costs, until the slot settles.
        let held = s.market.funds(bob_id).await;
        assert_eq!(
            (held.held_by_bids, held.held_by_purchases),
            (0, t.amounts.buyer_pays)
        );
        assert_eq!(
            t.amounts.buyer_pays,
            t.amounts.seller_receives + t.amounts.fees
        );
        let (status, price) = s.market.slot_status(s.slot).await.unwrap();
        assert_eq!(status, SlotStatus::Closed);
        // k = 0.5 between the marginal ask 10 000 and bid 24 000 (fees ride on top for the
        // seller).
        assert!(price.unwrap() >= 10_000 && price.unwrap() <= 24_000);
        let body = s
            .post_order(
                &s.alice,
                s.order("a", "sell", 1000, 10_000),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        assert!(body["error"].as_str().unwrap().contains("gate"), "{body}");
    }
}

/// Settlement against the signed readings, once, at settlement time: the ledger sums to zero;
/// each household pays or gets its trade plus its imbalance with the utility (Alice's 200 Wh
/// of surplus at feed-in, Bob's 500 Wh of shortfall at retail); the grid operator gets the
/// fees; nothing is held any more; an engine without a chain queues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_against_signed_readings_conserves_money_and_charges_imbalances() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let mut s = Street::open(&url).await;
        let (t, rows) = s.settled().await;
        assert!(
            s.market
                .settle_due(s.terms.slot.settlement + 10)
                .await
                .unwrap()
                .is_empty(),
            "settled once"
        );
        let total: i64 = rows.iter().map(|r| r.1).sum();
        assert_eq!(total, 0, "{url}: money is neither created nor destroyed");
        let (a, b) = (
            s.settled_amount(&s.alice).await,
            s.settled_amount(&s.bob).await,
        );
        // Settled: nothing held any more; the balance is what he paid in less what he owes,
        // below zero by the imbalance (energy he used without buying it is charged regardless).
        assert_eq!(
            funds_of(&s.app, &s.bob).await,
            (40_000 + b, 0, 0, 40_000 + b),
            "{url}"
        );
        // Alice: her trade plus 200 Wh of surplus sold to the utility at feed-in (8 000/kWh).
        assert_eq!(a, i64::try_from(t.amounts.seller_receives).unwrap() + 1_600);
        // Bob: his trade plus 500 Wh of shortfall bought from the utility at retail (30 000/kWh).
        assert_eq!(b, -(i64::try_from(t.amounts.buyer_pays).unwrap() + 15_000));
        let operator: i64 = rows
            .iter()
            .filter(|r| r.0 == GRID_OPERATOR)
            .map(|r| r.1)
            .sum();
        assert_eq!(operator, i64::try_from(t.amounts.fees).unwrap());
        assert!(rows.iter().any(|r| r.0 == UTILITY), "{rows:?}");

        let listed = expect(
            &s.app,
            "GET",
            "/api/v1/settlements",
            None,
            None,
            StatusCode::OK,
        )
        .await;
        let entry = &listed["settlements"][0];
        assert_eq!(entry["slot"], s.slot, "{listed}");
        assert!(entry["queued_for_chain_ms"].is_null(), "{listed}");
        assert_eq!(
            entry["total_debits"], -b,
            "bob's debit is the slot's only one"
        );
        assert!(entry["chain"].is_null(), "an engine without a chain");
    }
}

/// On chain: the settled slot becomes one batch in the settlement outbox (the engine's own
/// database), with the trade as a local sale for the seller meter's rewards, sent to the
/// embedded chain and (where this machine has one) to anvil, never twice; the books agree with
/// the chain account by account; the settlements list shows where the batch stands; the
/// inclusion proof names the root the contract holds, and `verify-trade`'s check passes on and
/// off chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_slot_is_one_batch_on_chain_and_the_books_agree_with_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let mut s = Street::open(&url).await;
        let (t, rows) = s.settled().await;
        let a = s.settled_amount(&s.alice).await;
        let (store, market, slot) = (s.store.clone(), s.market.clone(), s.slot);
        let settled = market.settled_slot(slot).await.unwrap();
        let (settlers, _anvil) = settlers(dir.path(), &url, &store).await;
        // Every settler of this database shares one custody (one master secret): the same
        // addresses on both chains.
        market.queue_batches(settlers[0].custody().clone());
        let batch = market_engine::chain::batch_of(&settled, market.custody().unwrap()).unwrap();
        for settler in settlers {
            // Each chain starts from a fresh outbox, with no deposit on it yet.
            sqlx::query("DELETE FROM settlement_batches")
                .execute(store.pool())
                .await
                .unwrap();
            sqlx::query("UPDATE funding SET chain_tx = NULL, chain_block = NULL")
                .execute(store.pool())
                .await
                .unwrap();
            assert_eq!(market.queue_unqueued().await.unwrap(), 1);
            assert_eq!(market.queue_unqueued().await.unwrap(), 0, "queued once");
            let sales = store.settlement_batch(slot).await.unwrap().unwrap().sales;
            let id = |m: &str| gridshare_contracts::staking::text_id(m).unwrap();
            assert_eq!(
                sales.sales,
                vec![gridshare_contracts::batch::SaleCredit {
                    seller: id(&s.meters["a"]),
                    buyer: id(&s.meters["b"]),
                    energy_wh: t.energy_wh,
                }],
                "{url}"
            );
            let now = market_engine::pipeline::now_ms();
            crate::outbox::confirm(&settler, now, 1).await;
            assert_eq!(
                settler.step(now).await.unwrap(),
                Default::default(),
                "never sent twice"
            );
            assert_eq!(settler.settled_root(slot).await.unwrap(), Some(batch.root));
            // Issue 14: the deposit the operator recorded for bob goes on chain for him (after
            // the batch here, so his debit was fronted as debt and is now collected), and then
            // every account's books agree with the chain — alice, bob, the utility and the
            // grid operator.
            let mut books = Vec::new();
            for _ in 0..50 {
                settler.money_step(&market, now).await;
                books = settler.reconcile().await.unwrap();
                if books.iter().all(|r| r.in_flight == 0) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert!(books.len() >= 4, "{url}: {books:?}");
            for r in &books {
                assert_eq!((r.in_flight, r.difference), (0, 0), "{url}: {r:?}");
            }
            let alice_id = rows.iter().find(|r| r.1 == a).unwrap().0;
            let on_chain = settler.balance(alice_id).await.unwrap();
            assert_eq!(
                on_chain,
                alloy::primitives::U256::from(u64::try_from(a).unwrap()),
                "alice's credit on chain"
            );
            // Issue 11, item 10: where the batch stands on chain, at a glance.
            let settler = Arc::new(settler);
            let app = api_with_settler(
                &store,
                &market,
                &KeyRegistry::default(),
                Some(settler.clone()),
            );
            let (_, listed, _) = call(&app, "GET", "/api/v1/settlements", None, None).await;
            let entry = &listed["settlements"][0];
            assert!(
                entry["queued_for_chain_ms"].as_u64().is_some_and(|t| t > 0),
                "{listed}"
            );
            let chain = &entry["chain"];
            assert_eq!(chain["status"], "confirmed", "{listed}");
            assert_eq!(chain["root"], batch.root.to_string(), "{listed}");
            assert_eq!(chain["attempts"], 1, "{listed}");
            assert!(chain["block"].as_u64().is_some_and(|b| b > 0), "{listed}");
            assert!(
                chain["gas_used"].as_u64().is_some_and(|g| g > 21_000),
                "{listed}"
            );
            assert_eq!(
                chain["tx_hash"].as_str().map(str::len),
                Some(66),
                "{listed}"
            );
            // The inclusion proof names the root the Settlement contract holds for the batch
            // (read from the chain), which the browser checks the trades against.
            let path = format!("/api/v1/my/settlements/{slot}/proof");
            let (status, proof, _) = call(&app, "GET", &path, Some(&s.alice), None).await;
            assert_eq!(status, StatusCode::OK, "{proof}");
            assert_eq!(proof["on_chain"], true);
            assert_eq!(proof["chain_root"], batch.root.to_string(), "{proof}");
            assert_eq!(proof["root"], proof["chain_root"]);
            // The document the endpoint serves is what `market-engine verify-trade` checks:
            // each leaf rebuilt from its fields verifies off chain and in the contract.
            use market_engine::chain::ChainHandle;
            use market_engine::chain::verify::{ProofDocument, verify_trades};
            let doc: ProofDocument = serde_json::from_value(proof.clone()).unwrap();
            let checks = match settler.handle() {
                ChainHandle::Embedded(s) => verify_trades(s.chain(), s.address(), &doc).await,
                ChainHandle::Rpc(s) => verify_trades(s.chain(), s.address(), &doc).await,
            }
            .unwrap();
            assert!(!checks.is_empty(), "{proof}");
            assert!(
                checks.iter().all(|c| c.on_chain && c.off_chain),
                "{checks:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trading_rules_place_one_order_per_slot_from_the_meters_own_forecast() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.unwrap();
        let market = Arc::new(
            Market::open(MarketConfig::default().community().unwrap(), store.clone())
                .await
                .unwrap(),
        );
        let app = api(&store, &market);
        let carol = login(&app, &unique("carol")).await;
        let dave_name = unique("dave");
        let dave = login(&app, &dave_name).await;
        let rng = SystemRandom::new();
        let (key, meter) = new_meter(&app, &store, &carol, "c").await;
        let rule_path = format!("/api/v1/meters/{meter}/rule");
        let rule = json!({"sell_at_least_per_kwh": 12_000, "buy_at_most_per_kwh": 25_000, "keep_battery_above_bp": 2_000});
        let (s, _, _) = call(&app, "PUT", &rule_path, Some(&dave), Some(rule.clone())).await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "nobody sets a rule for another account's meter"
        );
        let (s, body, _) = call(
            &app,
            "PUT",
            &rule_path,
            Some(&carol),
            Some(json!({"sell_at_least_per_kwh": 99_000})),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().unwrap().contains("tariff band"),
            "{body}"
        );
        let (s, _, _) = call(&app, "PUT", &rule_path, Some(&carol), Some(json!({}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, body, _) = call(&app, "PUT", &rule_path, Some(&carol), Some(rule)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let (_, got, _) = call(&app, "GET", &rule_path, Some(&carol), None).await;
        assert_eq!(got["keep_battery_above_bp"], 2_000);

        // Carol's last readings: her export counter says 3.6 kW (1 Wh a second), with the
        // battery at 80 %. The counters decide, not the momentary power sample.
        let now = now_s();
        let readings: Vec<_> = (1..=5)
            .map(|seq| {
                let mut r = signed(
                    &key,
                    &meter,
                    seq,
                    now - 10 + i64::try_from(seq).unwrap(),
                    1_000,
                    2_000 + seq,
                )
                .reading;
                r.power_w = Measured::ok(-500);
                r.soc_bp = Measured::ok(8_000);
                key.sign(r, &rng).unwrap()
            })
            .collect();
        store
            .store_readings(&crate::accepted(&readings), 0, &mut HashMap::new())
            .await
            .unwrap();
        assert_eq!(
            market_engine::autotrade::trade_once(&market, &store, now).await,
            1
        );
        assert_eq!(
            market_engine::autotrade::trade_once(&market, &store, now).await,
            0,
            "one order per slot"
        );
        let calendar = market.community().calendar;
        let slot = (calendar.slot_delivering_at(now).unwrap() + 1..)
            .find(|s| calendar.slot(*s).unwrap().gate_closure > now + 2)
            .unwrap();
        let depth = market.depth(slot).await;
        // 3.6 kW over a 15-minute slot = 900 Wh, offered at the rule's floor.
        assert_eq!(depth.asks, vec![(12_000, 900, 1)], "{url}");

        // Dave imports 7.2 kW by his counters: his rule buys only what his funds pay for.
        let (dave_key, dave_meter) = new_meter(&app, &store, &dave, "d").await;
        let rule = Some(json!({"buy_at_most_per_kwh": 25_000}));
        let path = format!("/api/v1/meters/{dave_meter}/rule");
        expect(&app, "PUT", &path, Some(&dave), rule, StatusCode::OK).await;
        let readings: Vec<_> = (1..=3)
            .map(|seq| {
                signed(
                    &dave_key,
                    &dave_meter,
                    seq,
                    now - 10 + i64::try_from(seq).unwrap(),
                    5_000 + 2 * seq,
                    0,
                )
            })
            .collect();
        store
            .store_readings(&crate::accepted(&readings), 0, &mut HashMap::new())
            .await
            .unwrap();
        assert_eq!(
            market_engine::autotrade::trade_once(&market, &store, now).await,
            0,
            "no funds, no bid"
        );
        let dave_id = store.account_by_name(&dave_name).await.unwrap().unwrap().id;
        market.fund(dave_id, 10_000, "opening", 0).await.unwrap();
        assert_eq!(
            market_engine::autotrade::trade_once(&market, &store, now).await,
            1
        );
        // 1 800 Wh needed; 10 000 token units buy 400 Wh at 25 000 per kWh.
        assert_eq!(
            market.depth(slot).await.bids,
            vec![(25_000, 400, 1)],
            "{url}"
        );
        assert_eq!(market.available(dave_id).await, 0);
        let (s, _, _) = call(&app, "DELETE", &rule_path, Some(&carol), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _, _) = call(&app, "GET", &rule_path, Some(&carol), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_changes_tariffs_for_slots_whose_window_has_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.unwrap();
        let market = Arc::new(
            Market::open(MarketConfig::default().community().unwrap(), store.clone())
                .await
                .unwrap(),
        );
        let app = api(&store, &market);
        let household = login(&app, &unique("erin")).await;
        let operator_name = unique("operator");
        let hash = market_engine::api::auth::hash_password("operator password")
            .await
            .unwrap();
        store
            .create_account(
                &operator_name,
                &hash,
                market_engine::store::Role::Operator,
                0,
            )
            .await
            .unwrap();
        let (_, _, cookie) = call(
            &app,
            "POST",
            "/api/v1/sessions",
            None,
            Some(json!({"name": operator_name, "password": "operator password"})),
        )
        .await;
        let operator = session_of(cookie);

        let change = json!({"mechanism": "call", "price_rule": "midpoint", "k_basis_points": 5000, "retail_per_kwh": 32_000, "feed_in_per_kwh": 7_000, "grid_fee_per_kwh": 1_500, "gate_closure_before_s": 600});
        let (s, _, _) = call(
            &app,
            "PUT",
            "/api/v1/market/settings",
            Some(&household),
            Some(change.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "only the operator sets tariffs");
        let (s, body, _) = call(&app, "PUT", "/api/v1/market/settings", Some(&operator), Some(json!({"mechanism": "call", "price_rule": "midpoint", "k_basis_points": 5000, "retail_per_kwh": 5_000, "feed_in_per_kwh": 7_000, "grid_fee_per_kwh": 0}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "feed-in above retail: {body}");
        let mut other_length = change.clone();
        other_length["slot_length_s"] = json!(300);
        let body = expect(
            &app,
            "PUT",
            "/api/v1/market/settings",
            Some(&operator),
            Some(other_length),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(
            body["error"].as_str().unwrap().contains("slot_length_s"),
            "{body}"
        );
        let (s, body, _) = call(
            &app,
            "PUT",
            "/api/v1/market/settings",
            Some(&operator),
            Some(change),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let from = body["from_slot"].as_u64().unwrap();

        // Slots whose window is open keep their terms; later ones get the new tariffs.
        let now = now_s();
        let open_slot = market.community().calendar.slot_delivering_at(now).unwrap() + 2;
        assert!(open_slot < from);
        assert_eq!(
            market
                .community_for(open_slot)
                .terms(open_slot)
                .unwrap()
                .band
                .retail_per_kwh,
            30_000
        );
        assert_eq!(
            market
                .community_for(from)
                .terms(from)
                .unwrap()
                .band
                .retail_per_kwh,
            32_000
        );
        // So does the timeline: gate closure 10 minutes ahead from `from` on, 5 before it.
        let lead = |slot: u64| {
            let t = market.community_for(slot).terms(slot).unwrap().slot;
            t.delivery_start - t.gate_closure
        };
        assert_eq!((lead(open_slot), lead(from)), (300, 600));
        let (_, listed, _) = call(&app, "GET", "/api/v1/market/settings", None, None).await;
        assert_eq!(listed["versions"].as_array().unwrap().len(), 2);

        // The change survives a restart.
        drop(app);
        drop(market);
        let market = Market::open(MarketConfig::default().community().unwrap(), store.clone())
            .await
            .unwrap();
        assert_eq!(
            market
                .community_for(from)
                .terms(from)
                .unwrap()
                .band
                .feed_in_per_kwh,
            7_000
        );
        assert_eq!(
            market
                .community_for(from - 1)
                .terms(from - 1)
                .unwrap()
                .band
                .feed_in_per_kwh,
            8_000
        );
    }
}

/// The account whose ledger amount in this slot is `amount`.
/// The chain backends to settle on: the embedded chain always, anvil where this machine has it
/// (see `gridshare_testbed::peers`; returned, to live as long as its settler). On anvil the
/// contracts are deployed fresh; nobody opens the households' accounts but the engine, with
/// their custodial keys, and the treasury holds the money to front what a debited household
/// has not deposited (its debt).
async fn settlers(
    dir: &std::path::Path,
    db: &str,
    store: &Store,
) -> (
    Vec<market_engine::chain::ChainSettler>,
    Option<gridshare_testbed::anvil::Anvil>,
) {
    use market_engine::chain::{ChainConfig, ChainSettler};

    let tag = if db.starts_with("sqlite") {
        "sqlite"
    } else {
        "pg"
    };
    let custody_key_file = Some(dir.join(format!("custody-{tag}.key")));
    let embedded = ChainConfig {
        backend: market_engine::chain::ChainBackend::Embedded,
        state_file: dir.join(format!("chain-{tag}.json")),
        custody_key_file: custody_key_file.clone(),
        ..ChainConfig::default()
    };
    let mut out = vec![
        ChainSettler::open(&embedded, store.clone())
            .await
            .unwrap()
            .unwrap(),
    ];
    let node = gridshare_testbed::anvil::Anvil::start();
    if let Some(url) = node.as_ref().map(|n| n.url.clone()) {
        let (chain, d, treasury) = crate::outbox::deploy(&url).await;
        crate::outbox::deposit(&chain, &d, treasury, treasury, 1_000_000).await;
        let rpc = ChainConfig {
            backend: market_engine::chain::ChainBackend::Rpc,
            rpc_url: url,
            settlement_address: d.settlement.to_string(),
            custody_key_file,
            ..ChainConfig::default()
        };
        out.push(
            ChainSettler::open_with_key(&rpc, store.clone(), Some(crate::outbox::ANVIL_KEY.into()))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    (out, node)
}
