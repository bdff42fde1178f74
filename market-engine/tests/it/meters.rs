//! Meters under attack (issue 10): a meter counts only once the community operator approved
//! it, with its rated capacity and installed device; ids and keys cannot be squatted or
//! reused; an account cannot register without bound. On SQLite and on PostgreSQL.

use axum::http::StatusCode;
use gridshare_core::market::SlotTerms;
use gridshare_core::reading::{MeterKey, SignedReading};
use market_engine::ingest::{Checker, KeyRegistry, Rejection};
use market_engine::market::Market;
use market_engine::store::{SlotStatus, Stored};
use proptest::prelude::*;
use ring::rand::SystemRandom;
use serde_json::json;
use std::collections::HashMap;

use crate::api::call;
use crate::market::{expect, login, now_s, signed};
use crate::{databases, unique};

fn new_key() -> MeterKey {
    let rng = SystemRandom::new();
    MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).unwrap(), &rng).unwrap()
}

fn short(id: String) -> String {
    id[id.len().saturating_sub(30)..].to_owned()
}

/// The checks the ingest runs on every message, as it runs them.
fn checker(keys: &KeyRegistry) -> Checker {
    Checker {
        registry: keys.clone(),
        max_future_skew_ms: 30_000,
        max_age_ms: 7 * 24 * 3_600_000,
    }
}

pub(crate) fn check(
    keys: &KeyRegistry,
    signed: &SignedReading,
) -> Result<market_engine::ingest::Accepted, Rejection> {
    let topic = format!("gridshare/v1/c/meters/{}/reading", signed.reading.meter_id);
    checker(keys)
        .check(
            &topic,
            signed.to_json().as_bytes(),
            signed.reading.timestamp_ms,
        )
        .map_err(|r| r.reason)
}

/// A household signed up as a fresh `who`, with one meter of its own key approved at 4 kW:
/// its account id, session, key and meter id.
pub(crate) async fn home_with_meter(
    app: &axum::Router,
    store: &market_engine::store::Store,
    keys: &KeyRegistry,
    who: &str,
) -> (i64, String, MeterKey, String) {
    let name = unique(who);
    let token = login(app, &name).await;
    let id = store.account_by_name(&name).await.unwrap().unwrap().id;
    let key = new_key();
    let meter = short(unique(who));
    market_engine::meters::register(store, keys, id, &meter, &key.public_key().to_hex(), 10, 0)
        .await
        .unwrap();
    crate::approve(store, keys, &meter, &Default::default(), 4_000).await;
    (id, token, key, meter)
}

/// Offers `energy_wh` of `meter` at the feed-in tariff (a sell needs no funds) in a slot
/// whose window is open, and closes that slot's gate; returns the slot's terms.
async fn offer_and_close_the_gate(
    app: &axum::Router,
    market: &Market,
    token: &str,
    meter: &str,
    energy_wh: u64,
) -> SlotTerms {
    let community = market.community();
    let slot = community.calendar.slot_delivering_at(now_s()).unwrap() + 2;
    let terms = community.terms(slot).unwrap();
    let offer = json!({"meter_id": meter, "slot": slot, "side": "sell", "energy_wh": energy_wh, "price_per_kwh": terms.band.feed_in_per_kwh});
    expect(
        app,
        "POST",
        "/api/v1/orders",
        Some(token),
        Some(offer),
        StatusCode::CREATED,
    )
    .await;
    market
        .close_due_gates(terms.slot.gate_closure)
        .await
        .unwrap();
    terms
}

/// Regression (issue 10, item 1): a self-registered account with no deposit registered a
/// meter with its own key, published two valid readings whose export counter jumped by 10^9
/// Wh inside one slot, was credited 8 000 000 000 at settlement and withdrew it.
#[tokio::test]
async fn a_self_registered_meter_cannot_mint_money() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let crate::Fixture {
            store,
            market,
            keys,
            app,
        } = crate::Fixture::open(&url).await;
        let mallory_name = unique("mallory");
        let mallory = login(&app, &mallory_name).await;
        let mallory_id = store
            .account_by_name(&mallory_name)
            .await
            .unwrap()
            .unwrap()
            .id;
        let key = new_key();
        let meter = short(unique("mal"));
        let body = json!({"meter_id": meter, "public_key": key.public_key().to_hex()});
        let registered = expect(
            &app,
            "POST",
            "/api/v1/meters",
            Some(&mallory),
            Some(body),
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(registered["status"], "pending", "{url}");

        // Mallory offers energy in a slot (sells need no funds) and the gate closes.
        let terms = offer_and_close_the_gate(&app, &market, &mallory, &meter, 1000).await;

        // Two valid readings, export up by 10^9 Wh inside the slot.
        let (start, end) = (terms.slot.delivery_start, terms.slot.delivery_end);
        let minted = [
            signed(&key, &meter, 1, start, 0, 1_000),
            signed(&key, &meter, 2, end - 1, 0, 1_000_001_000),
        ];
        // Not approved: the ingest refuses both.
        for r in &minted {
            assert_eq!(
                check(&keys, r).unwrap_err(),
                Rejection::NotApproved,
                "{url}"
            );
        }
        // Approved as the 5 kW installation it is: the jump is beyond what 5 kW can export in
        // a quarter of an hour, so the second reading is refused.
        crate::approve(&store, &keys, &meter, &Default::default(), 5_000).await;
        let accepted: Vec<_> = minted.iter().map(|r| check(&keys, r).unwrap()).collect();
        let outcomes = store
            .store_readings(&accepted, 0, &mut HashMap::new())
            .await
            .unwrap();
        assert_eq!(outcomes[0], Stored::Inserted);
        assert!(
            matches!(&outcomes[1], Stored::Implausible(Rejection::ExceedsCapacity, why) if why.contains("5000 W")),
            "{url}: {outcomes:?}"
        );
        market.settle_due(terms.slot.settlement).await.unwrap();
        let funds = market.funds(mallory_id).await;
        assert!(
            funds.balance <= 0,
            "{url}: nothing was delivered, so nothing is credited: {funds:?}"
        );
        let (s, _, _) = call(
            &app,
            "POST",
            "/api/v1/withdrawals",
            Some(&mallory),
            Some(json!({"amount": 8_000_000_000i64, "reference": "cash-out"})),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{url}");
    }
}

/// What a meter is credited in its first settled slot never exceeds capacity × slot length
/// (with the margin), even when its readings bracket the slot from hours apart. (Later slots
/// carry what arrived late, up to capacity × the time since the reading last settled.)
#[tokio::test]
async fn a_slot_settles_at_most_what_the_capacity_allows() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let crate::Fixture {
            store,
            market,
            keys,
            app,
        } = crate::Fixture::open(&url).await;
        let (id, token, key, meter) = home_with_meter(&app, &store, &keys, "sun").await;
        let terms = offer_and_close_the_gate(&app, &market, &token, &meter, 500).await;
        // Silent for ten hours, then 40 kWh more: plausible at 4 kW over ten hours, but not
        // all of it in this one slot.
        let (start, end) = (terms.slot.delivery_start, terms.slot.delivery_end);
        let readings = [
            signed(&key, &meter, 1, start - 10 * 3600, 0, 1_000),
            signed(&key, &meter, 2, end, 0, 41_000),
        ];
        let accepted: Vec<_> = readings.iter().map(|r| check(&keys, r).unwrap()).collect();
        let outcomes = store
            .store_readings(&accepted, 0, &mut HashMap::new())
            .await
            .unwrap();
        assert_eq!(outcomes, vec![Stored::Inserted, Stored::Inserted], "{url}");
        market.settle_due(terms.slot.settlement).await.unwrap();
        let bound = market_engine::ingest::energy_bound_wh(4_000, 900_000);
        assert_eq!(bound, 1_110, "4 kW × 15 min × 110 % + 10 Wh");
        let funds = market.funds(id).await;
        let most = i64::try_from(bound * terms.band.retail_per_kwh / 1000).unwrap();
        assert!(
            funds.balance > 0 && funds.balance <= most,
            "{url}: credited for at most {bound} Wh: {funds:?}"
        );
        assert_eq!(
            market
                .metrics
                .deliveries_capped
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}

/// Regression (issue 11, item 3): a meter whose delivery could not be computed made
/// `settle_slot` fail or charged its owner for energy nobody measured. Here a household sells
/// 500 Wh and its meter then sends nothing: before, it was skipped and its owner charged the
/// whole sale again as a shortfall at the retail price. Now that meter is disputed — its
/// account settled at its traded quantities with nothing for imbalance, listed for the
/// operator and counted — and the rest of the street settles as usual.
#[tokio::test]
async fn a_meter_without_readings_is_disputed_and_the_street_settles() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let crate::Fixture {
            store,
            market,
            keys,
            app,
        } = crate::Fixture::open(&url).await;
        let mut homes = Vec::new();
        for who in ["silent", "buyer"] {
            homes.push(home_with_meter(&app, &store, &keys, who).await);
        }
        let (silent, buyer) = (&homes[0], &homes[1]);
        market.fund(buyer.0, 1_000_000, "opening", 0).await.unwrap();
        let community = market.community();
        let slot = community.calendar.slot_delivering_at(now_s()).unwrap() + 2;
        let terms = community.terms(slot).unwrap();
        for (home, side, price) in [
            (silent, "sell", terms.band.feed_in_per_kwh),
            (buyer, "buy", terms.band.retail_per_kwh),
        ] {
            let order = json!({"meter_id": home.3, "slot": slot, "side": side, "energy_wh": 500, "price_per_kwh": price});
            expect(
                &app,
                "POST",
                "/api/v1/orders",
                Some(&home.1),
                Some(order),
                StatusCode::CREATED,
            )
            .await;
        }
        market
            .close_due_gates(terms.slot.gate_closure)
            .await
            .unwrap();
        let trades = market.trades(slot).await.unwrap();
        assert_eq!(trades.len(), 1, "{url}");
        // The buyer's meter imports exactly what it bought; the seller's sends nothing.
        let (start, end) = (terms.slot.delivery_start, terms.slot.delivery_end);
        let readings = [
            signed(&buyer.2, &buyer.3, 1, start, 1_000, 0),
            signed(&buyer.2, &buyer.3, 2, end, 1_500, 0),
        ];
        let accepted: Vec<_> = readings.iter().map(|r| check(&keys, r).unwrap()).collect();
        store
            .store_readings(&accepted, 0, &mut HashMap::new())
            .await
            .unwrap();
        assert_eq!(
            market.settle_due(terms.slot.settlement).await.unwrap(),
            vec![slot],
            "{url}: the slot settles"
        );
        let t = &trades[0];
        assert_eq!(
            market.funds(silent.0).await.balance,
            i64::try_from(t.amounts.seller_receives).unwrap(),
            "{url}: paid for its sale, charged nothing for a shortfall nobody measured"
        );
        assert_eq!(
            market.funds(buyer.0).await.balance,
            1_000_000 - i64::try_from(t.amounts.buyer_pays).unwrap(),
            "{url}: the buyer settles as usual"
        );
        let metric =
            |m: &std::sync::atomic::AtomicU64| m.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(metric(&market.metrics.meters_disputed), 1, "{url}");
        let operator_name = unique("operator");
        let operator = login(&app, &operator_name).await;
        assert!(
            store
                .set_role(&operator_name, market_engine::store::Role::Operator)
                .await
                .unwrap()
        );
        let listed = expect(
            &app,
            "GET",
            "/api/v1/operator/disputes",
            Some(&operator),
            None,
            StatusCode::OK,
        )
        .await;
        let d = &listed["disputes"][0];
        assert_eq!(d["meter_id"], silent.3.as_str(), "{listed}");
        assert_eq!(d["slot"], slot, "{listed}");
        assert!(
            d["reason"].as_str().unwrap().contains("no reading"),
            "{listed}"
        );
        let (s, _, _) = call(
            &app,
            "GET",
            "/api/v1/operator/disputes",
            Some(&buyer.1),
            None,
        )
        .await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "households do not see other meters"
        );
    }
}

/// Regression (issue 11, item 5): energy a household imported in a slot where nobody placed
/// an order was never billed, and the slot stayed open for ever. Now every slot with metered
/// energy is settled against the utility, and a slot with nothing in it settles to nothing —
/// no ledger rows and no batch for the chain.
#[tokio::test]
async fn slots_without_orders_are_settled_and_empty_ones_produce_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let crate::Fixture {
            store,
            market,
            keys,
            app,
        } = crate::Fixture::open(&url).await;
        let (id, _, key, meter) = home_with_meter(&app, &store, &keys, "quiet").await;
        let community = market.community();
        let slot = community.calendar.slot_delivering_at(now_s()).unwrap() + 2;
        let terms = community.terms(slot).unwrap();
        let next = community.terms(slot + 1).unwrap();
        let readings = [
            signed(&key, &meter, 1, terms.slot.delivery_start, 10_000, 0),
            signed(&key, &meter, 2, terms.slot.delivery_end, 10_400, 0),
        ];
        let accepted: Vec<_> = readings.iter().map(|r| check(&keys, r).unwrap()).collect();
        store
            .store_readings(&accepted, 0, &mut HashMap::new())
            .await
            .unwrap();
        assert_eq!(
            market
                .close_quiet_slots(next.slot.gate_closure - 1)
                .await
                .unwrap(),
            vec![slot],
            "{url}: only slots whose gate closure passed"
        );
        assert_eq!(
            market
                .close_quiet_slots(next.slot.gate_closure)
                .await
                .unwrap(),
            vec![slot + 1],
            "{url}"
        );
        assert!(
            market
                .close_quiet_slots(next.slot.gate_closure)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            market.settle_due(next.slot.settlement).await.unwrap(),
            vec![slot, slot + 1],
            "{url}"
        );
        // 400 Wh imported with no trade: bought from the utility at retail.
        let cost = i64::try_from(400 * terms.band.retail_per_kwh / 1000).unwrap();
        assert_eq!(market.funds(id).await.balance, -cost, "{url}");
        // Nothing to queue before a chain is configured; once one is (with its custody, the
        // accounts' addresses), the settled slot with money in it.
        assert_eq!(market.queue_unqueued().await.unwrap(), 0, "{url}");
        market.queue_batches(std::sync::Arc::new(
            market_engine::chain::custody::Custody::generate().unwrap(),
        ));
        assert_eq!(market.queue_unqueued().await.unwrap(), 1, "{url}");
        let queued: Vec<i64> = sqlx::query_scalar("SELECT slot FROM settlement_batches")
            .fetch_all(store.pool())
            .await
            .unwrap();
        assert_eq!(
            queued,
            vec![i64::try_from(slot).unwrap()],
            "{url}: the empty slot sends no batch"
        );
        assert_eq!(
            market.slot_status(slot + 1).await.unwrap().0,
            SlotStatus::Settled
        );
    }
}

/// Regressions (issue 10, item 9): one account registered 5 000 meters in 2 s, took a meter id
/// that belonged to another household's installation, reused one key for several meters and
/// registered a public key that is not on the P-256 curve.
#[tokio::test]
async fn meter_registration_refuses_bad_keys_reuse_squatting_and_floods() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let crate::Fixture {
            store,
            market: _,
            keys,
            app,
        } = crate::Fixture::open(&url).await;
        let alice = login(&app, &unique("alice")).await;
        let bob = login(&app, &unique("bob")).await;
        let operator_name = unique("operator");
        let operator = login(&app, &operator_name).await;
        assert!(
            store
                .set_role(&operator_name, market_engine::store::Role::Operator)
                .await
                .unwrap()
        );
        let register = |token: String, meter: String, key: String| {
            let app = app.clone();
            async move {
                call(
                    &app,
                    "POST",
                    "/api/v1/meters",
                    Some(&token),
                    Some(json!({"meter_id": meter, "public_key": key})),
                )
                .await
            }
        };

        // Off the curve.
        let mut off = *new_key().public_key().as_bytes();
        off[64] ^= 1;
        let (s, body, _) = register(alice.clone(), short(unique("a")), hex::encode(off)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(body["error"].as_str().unwrap().contains("P-256"), "{body}");

        // One key, one meter.
        let shared = new_key().public_key().to_hex();
        let (s, _, _) = register(alice.clone(), short(unique("a1")), shared.clone()).await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, body, _) = register(bob.clone(), short(unique("b1")), shared.clone()).await;
        assert_eq!(s, StatusCode::CONFLICT, "{url}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("public key"),
            "{body}"
        );

        // A squatted id: Bob registers the id of Alice's installation first. It never counts
        // (pending), and the operator refuses it, which frees the id for Alice.
        let squatted = short(unique("home"));
        let (s, _, _) = register(
            bob.clone(),
            squatted.clone(),
            new_key().public_key().to_hex(),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, _, _) = register(
            alice.clone(),
            squatted.clone(),
            new_key().public_key().to_hex(),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT);
        let path = format!("/api/v1/meters/{squatted}");
        let (s, _, _) = call(&app, "DELETE", &path, Some(&bob), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "only the operator refuses");
        let (s, _, _) = call(&app, "DELETE", &path, Some(&operator), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{url}");
        assert!(keys.get(&squatted).is_none());
        let (s, _, _) = register(
            alice.clone(),
            squatted.clone(),
            new_key().public_key().to_hex(),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{url}: the id is free again");

        // Approval: the operator's only, with checked values.
        let approval = format!("/api/v1/meters/{squatted}/approval");
        let good = json!({"export_capacity_w": 6000, "import_capacity_w": 11000, "manufacturer": "SolarEdge", "model": "SE5000H", "serial": "7E1234-AB"});
        let (s, _, _) = call(&app, "POST", &approval, Some(&alice), Some(good.clone())).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        for bad in [
            json!({"export_capacity_w": 200_000_000u32, "import_capacity_w": 1, "manufacturer": "x", "model": "y", "serial": "z"}),
            json!({"export_capacity_w": 0, "import_capacity_w": 0, "manufacturer": "x", "model": "y", "serial": "z"}),
            json!({"export_capacity_w": -1, "import_capacity_w": 1, "manufacturer": "x", "model": "y", "serial": "z"}),
        ] {
            let (s, body, _) = call(&app, "POST", &approval, Some(&operator), Some(bad)).await;
            assert!(s.is_client_error(), "{url}: {body}");
        }
        let (s, _, _) = call(
            &app,
            "POST",
            "/api/v1/meters/nobody/approval",
            Some(&operator),
            Some(good.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, body, _) = call(&app, "POST", &approval, Some(&operator), Some(good)).await;
        assert_eq!(s, StatusCode::OK, "{url}: {body}");
        assert_eq!(body["meter"]["status"], "approved");
        assert_eq!(body["meter"]["export_capacity_w"], 6000);
        // The meter's broker login comes with its first approval, shown once.
        assert_eq!(body["mqtt"]["username"], squatted.as_str());
        assert_eq!(
            body["mqtt"]["password"].as_str().unwrap().len(),
            64,
            "{body}"
        );
        let again = json!({"export_capacity_w": 7000, "import_capacity_w": 11000, "manufacturer": "SolarEdge", "model": "SE5000H", "serial": "7E1234-AB"});
        let (s, body, _) = call(&app, "POST", &approval, Some(&operator), Some(again)).await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            body.get("mqtt").is_none(),
            "a new capacity keeps the login: {body}"
        );
        let approved = keys.get(&squatted).unwrap();
        assert_eq!(
            approved.approval.as_ref().unwrap().device.serial,
            "7E1234-AB"
        );
        let (_, mine, _) = call(&app, "GET", "/api/v1/meters", Some(&alice), None).await;
        let statuses: Vec<_> = mine["meters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["status"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(statuses.len(), 2, "{mine}");
        assert!(
            statuses.contains(&"approved".to_owned()) && statuses.contains(&"pending".to_owned())
        );
        // An approved meter stays on record.
        let (s, _, _) = call(
            &app,
            "DELETE",
            &format!("/api/v1/meters/{squatted}"),
            Some(&operator),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, all, _) = call(
            &app,
            "GET",
            "/api/v1/operator/meters",
            Some(&operator),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(all["meters"].as_array().unwrap().len(), 2, "{all}");
        let (s, _, _) = call(&app, "GET", "/api/v1/operator/meters", Some(&alice), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        // A flood: at most `meters_per_account` (10 in this API) per account.
        let carol = login(&app, &unique("carol")).await;
        let mut created = 0;
        let mut refused = None;
        for i in 0..12 {
            let (s, body, _) = register(
                carol.clone(),
                short(unique(&format!("c{i}"))),
                new_key().public_key().to_hex(),
            )
            .await;
            if s == StatusCode::CREATED {
                created += 1;
            } else {
                refused = Some((s, body));
            }
        }
        assert_eq!(created, 10, "{url}");
        let (s, body) = refused.unwrap();
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            body["error"].as_str().unwrap().contains("10 meters"),
            "{body}"
        );
    }
}

/// Issue 11, item 4 and the outage property: with readings arriving late by random numbers of
/// slots (a broker or network outage, an agent's outbox flushed later), settled with or
/// without waiting for late readings, every slot with metered energy is settled once, each
/// slot's money sums to zero, and over the run each meter is settled for exactly the
/// difference of its counters. Before, a slot took each meter's latest reading at or before
/// its end however old it was, and readings that arrived after their slot was settled fell
/// into no slot.
#[derive(Debug, Clone)]
struct Outage {
    /// Per meter and reading: counter increments (import, export), Wh.
    steps: Vec<Vec<(u64, u64)>>,
    /// Per meter and reading: how many slots after its own it arrives.
    delays: Vec<Vec<usize>>,
    /// Whether settlement waits for late readings (`late_readings_wait_s`).
    wait: bool,
}

/// Readings per slot in [`outage_run`]; slots settled; meters.
const PER_SLOT: usize = 3;
const SLOTS: usize = 5;
const METERS: usize = 2;

fn outage() -> impl Strategy<Value = Outage> {
    let readings = PER_SLOT * SLOTS + 1;
    (
        prop::collection::vec(
            prop::collection::vec((0u64..300, 0u64..300), readings),
            METERS,
        ),
        prop::collection::vec(
            prop::collection::vec(prop_oneof![4 => Just(0usize), 1 => 1usize..4], readings),
            METERS,
        ),
        any::<bool>(),
    )
        .prop_map(|(steps, delays, wait)| Outage {
            steps,
            delays,
            wait,
        })
}

async fn outage_run(case: Outage) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("engine.sqlite").display());
    let crate::Fixture {
        store,
        market,
        keys,
        app,
    } = crate::Fixture::open(&url).await;
    if case.wait {
        market.wait_for_late_readings(120);
    }
    let community = market.community();
    let first = community.calendar.slot_delivering_at(now_s()).unwrap() + 2;
    let terms: Vec<SlotTerms> = (0..=SLOTS as u64)
        .map(|i| community.terms(first + i).unwrap())
        .collect();
    let slot_s = terms[0].slot.delivery_end - terms[0].slot.delivery_start;
    let every_s = slot_s / i64::try_from(PER_SLOT).unwrap();
    // Each meter's readings: (slot index it arrives before settling, reading).
    let mut pending: Vec<(usize, SignedReading)> = Vec::new();
    let mut totals = Vec::new();
    for m in 0..METERS {
        let (_, _, key, meter) = home_with_meter(&app, &store, &keys, &format!("outage{m}")).await;
        let (mut import, mut export) = (1_000u64, 2_000u64);
        for (i, &(di, de)) in case.steps[m].iter().enumerate() {
            if i > 0 {
                import += di;
                export += de;
            }
            let ts = terms[0].slot.delivery_start + every_s * i64::try_from(i).unwrap();
            let arrives = (i / PER_SLOT + case.delays[m][i]).min(SLOTS);
            // The first reading is the meter's baseline: it arrives on time.
            let arrives = if i == 0 { 0 } else { arrives };
            pending.push((
                arrives,
                signed(&key, &meter, i as u64 + 1, ts, import, export),
            ));
        }
        totals.push((meter, import - 1_000, export - 2_000));
    }
    for (k, t) in terms.iter().enumerate() {
        let due: Vec<_> = pending
            .iter()
            .filter(|(arrives, _)| *arrives == k)
            .map(|(_, r)| check(&keys, r).unwrap())
            .collect();
        store
            .store_readings(&due, 0, &mut HashMap::new())
            .await
            .unwrap();
        market.close_quiet_slots(t.slot.gate_closure).await.unwrap();
        market.settle_due(t.slot.settlement).await.unwrap();
        market.settle_due(t.slot.settlement + 121).await.unwrap();
    }
    for (k, _) in terms.iter().enumerate() {
        assert_eq!(
            market.slot_status(first + k as u64).await.unwrap().0,
            SlotStatus::Settled,
            "slot {k} of {case:?}"
        );
    }
    let sums: Vec<(i64, i64)> =
        sqlx::query_as("SELECT slot, CAST(SUM(amount) AS BIGINT) FROM ledger GROUP BY slot")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert!(
        sums.iter().all(|(_, sum)| *sum == 0),
        "money conserved: {sums:?}"
    );
    let twice: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM (SELECT slot, account_id FROM ledger \
         GROUP BY slot, account_id HAVING COUNT(*) > 1) AS t",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(twice, 0, "no account settled twice in a slot");
    for (meter, import, export) in totals {
        let settled: (i64, i64) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(import_wh), 0) AS BIGINT), \
             CAST(COALESCE(SUM(export_wh), 0) AS BIGINT) FROM slot_deliveries WHERE meter_id = $1",
        )
        .bind(&meter)
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(
            settled,
            (
                i64::try_from(import).unwrap(),
                i64::try_from(export).unwrap()
            ),
            "{meter}: settled energy = its counters' difference in {case:?}"
        );
    }
    store.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_meter_is_settled_for_exactly_its_counters_across_outages(case in outage()) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(outage_run(case));
    }
}

/// Settlement never derives a chain address (a curve multiplication per account): the
/// scheduler derives each new account's address first, once.
#[tokio::test]
async fn new_accounts_get_their_chain_address_once_before_any_settlement() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let f = crate::Fixture::open(&url).await;
        assert_eq!(
            f.market.derive_addresses().await.unwrap(),
            0,
            "no chain yet"
        );
        f.market.queue_batches(std::sync::Arc::new(
            market_engine::chain::custody::Custody::generate().unwrap(),
        ));
        login(&f.app, &unique("first")).await;
        login(&f.app, &unique("second")).await;
        assert_eq!(f.market.derive_addresses().await.unwrap(), 2, "{url}");
        assert_eq!(f.market.derive_addresses().await.unwrap(), 0, "{url}: once");
        login(&f.app, &unique("third")).await;
        assert_eq!(f.market.derive_addresses().await.unwrap(), 1, "{url}");
    }
}
