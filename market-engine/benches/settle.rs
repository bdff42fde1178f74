//! Settlement of one slot for a large community: from the slot's settlement time to its ledger
//! (and chain batch) committed.
//!
//! ```sh
//! cargo bench --workspace --bench settle                         # 10 000 meters, SQLite
//! cargo bench --workspace --bench settle -- 2000 30              # 2 000 meters, a reading every 30 s
//! cargo bench --workspace --bench settle -- 10000 10 postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! Registers and approves the meters (one household each), stores their signed readings for
//! two consecutive slots (every `interval` seconds, each meter exporting or importing), closes
//! both gates and times `settle_due` for the first slot (each meter's first settlement) and
//! the second (from where the first ended: the steady state). The batch for the chain is
//! written in the same transaction, as in `serve`.

use std::collections::HashMap;
use std::time::Instant;

use gridshare_core::reading::{ClockSync, DeviceIdentity, Measured, MeterId, MeterKey, Reading};
use market_engine::ingest::{Accepted, Approval, Capacity, KeyRegistry};
use market_engine::market::{Market, MarketConfig};
use market_engine::store::Store;
use ring::rand::SystemRandom;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let meters: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let interval_s: i64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().expect("temp dir");
    let url = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("settle.sqlite").display()));
    let store = Store::open(&url).await.expect("database");
    let community = MarketConfig::default().community().expect("community");
    let market = Market::open(community.clone(), store.clone())
        .await
        .expect("market");
    market.queue_batches(std::sync::Arc::new(
        market_engine::chain::custody::Custody::generate().expect("custody"),
    ));
    let keys = KeyRegistry::default();
    let rng = SystemRandom::new();
    let now_s = i64::try_from(market_engine::pipeline::now_ms() / 1000).expect("clock");
    let first = community
        .calendar
        .slot_delivering_at(now_s)
        .expect("calendar")
        + 2;
    let terms = [
        community.terms(first).expect("terms"),
        community.terms(first + 1).expect("terms"),
    ];
    let started = Instant::now();
    let tag = std::process::id();
    let mut batch = Vec::new();
    for m in 0..meters {
        let account = store
            .create_account(
                &format!("home-{tag}-{m}"),
                "x",
                market_engine::store::Role::Household,
                0,
            )
            .await
            .expect("account");
        let id = format!("m{tag}-{m}");
        let own =
            MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).expect("rng"), &rng).expect("key");
        market_engine::meters::register(
            &store,
            &keys,
            account,
            &id,
            &own.public_key().to_hex(),
            1,
            0,
        )
        .await
        .expect("register");
        let approval = Approval {
            export_capacity_w: 10_000,
            import_capacity_w: 10_000,
            device: DeviceIdentity::default(),
        };
        market_engine::meters::approve(&store, &keys, &id, &approval, 0, 0)
            .await
            .expect("approve");
        let exporting = m % 2 == 0;
        let from = terms[0].slot.delivery_start - interval_s;
        let to = terms[1].slot.delivery_end + interval_s;
        for (seq, ts) in (from..=to)
            .step_by(usize::try_from(interval_s).expect("interval"))
            .enumerate()
        {
            let seq = u64::try_from(seq).expect("seq");
            let wh = 1_000 + seq * 5;
            let reading = Reading {
                meter_id: MeterId::new(id.clone()).expect("id"),
                device: DeviceIdentity::default(),
                seq: seq + 1,
                timestamp_ms: u64::try_from(ts).expect("time") * 1000,
                clock: ClockSync::Synchronised,
                import_wh: Measured::ok(if exporting { 1_000 } else { wh }),
                export_wh: Measured::ok(if exporting { wh } else { 1_000 }),
                battery_charge_wh: Measured::not_implemented(),
                battery_discharge_wh: Measured::not_implemented(),
                power_w: Measured::not_implemented(),
                soc_bp: Measured::not_implemented(),
                flow: gridshare_core::reading::PowerFlow::NOT_MEASURED,
            };
            let signed = own.sign(reading, &rng).expect("sign");
            batch.push(Accepted {
                signed,
                capacity: Capacity {
                    export_w: 10_000,
                    import_w: 10_000,
                },
                account,
            });
        }
        if batch.len() >= 5_000 {
            store
                .store_readings(&batch, 0, &mut HashMap::new())
                .await
                .expect("store");
            batch.clear();
        }
    }
    store
        .store_readings(&batch, 0, &mut HashMap::new())
        .await
        .expect("store");
    eprintln!(
        "{meters} meters with a reading every {interval_s} s over two slots stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The engine's scheduler derives each new account's chain address within a second of
    // its creation, long before its first slot settles.
    market.derive_addresses().await.expect("addresses");
    for t in &terms {
        market
            .close_quiet_slots(t.slot.gate_closure)
            .await
            .expect("gate");
    }
    // Closing the first gate closed the earlier slots too (every slot whose gate passed is
    // settled, with or without orders); they hold nothing of these meters: settle them
    // untimed, so each timing below is one slot.
    market
        .settle_due(terms[0].slot.settlement - 1)
        .await
        .expect("earlier slots");
    for (name, t) in [("first settlement", &terms[0]), ("steady state", &terms[1])] {
        let started = Instant::now();
        let settled = market.settle_due(t.slot.settlement).await.expect("settle");
        let elapsed = started.elapsed();
        assert_eq!(settled.len(), 1, "one slot settled");
        println!(
            "settle one slot, {meters} meters ({name}): {:.0} ms, {:.1} µs per meter",
            elapsed.as_secs_f64() * 1000.0,
            elapsed.as_secs_f64() * 1e6 / meters as f64
        );
    }
    store.close().await;
}
