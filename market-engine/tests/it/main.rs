//! Integration tests of the market engine against real peers: an MQTT broker (embedded, or
//! Mosquitto via `GRIDSHARE_TEST_MQTT_URL`), SQLite and PostgreSQL
//! (`GRIDSHARE_TEST_POSTGRES_URL`), and a real meter agent reading a simulated device.

// Tests unwrap freely: a panic is a test failure with its location.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod api;
mod auth;
mod broker;
mod chain_money;
mod cli;
mod crash;
mod demo;
mod funds;
mod gaps;
mod ingest;
mod market;
mod meters;
mod money;
mod outbox;
mod privacy;
mod prover;
mod roi;
mod sharing;
mod staking;
mod storage;
mod store;
mod watcher;
mod web;

use gridshare_core::reading::DeviceIdentity;
use gridshare_testbed::register_server::{Framing, RegisterServer};
use gridshare_testbed::simulator::Household;
use market_engine::config::{EngineConfig, broker_host_port};
use market_engine::ingest::{Approval, KeyRegistry};
use market_engine::server::Engine;
use market_engine::store::{Role, Store};
use rumqttc::MqttOptions;

pub(crate) use gridshare_testbed::free_port;
pub(crate) use gridshare_testbed::mosquitto::{self, Mosquitto};
pub(crate) use gridshare_testbed::peers::{self, Peer};

/// A unique name for this test run (tests share PostgreSQL and the broker across runs).
pub(crate) fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// The databases every storage test runs on: SQLite always, PostgreSQL when this machine has
/// one (`GRIDSHARE_TEST_POSTGRES_URL`, which `.ci/run` sets; see `gridshare_testbed::peers`). Each test gets a schema of its
/// own on the shared server, so runs never see each other's slots.
pub(crate) async fn databases(dir: &std::path::Path) -> Vec<String> {
    let mut urls = vec![format!("sqlite://{}", dir.join("engine.sqlite").display())];
    if let Some(url) = peers::available(Peer::Postgres).map(|l| l.as_str()) {
        sqlx::any::install_default_drivers();
        let schema = unique("t").replace('-', "_");
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        // The name is generated here, not user input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        urls.push(format!("{url}{sep}options=-c%20search_path%3D{schema}"));
    }
    urls
}

/// An engine config on free ports: the embedded broker, or the external one named by
/// `GRIDSHARE_TEST_MQTT_URL`.
pub(crate) fn engine_config(community: &str, database_url: &str) -> EngineConfig {
    let mut c = EngineConfig {
        community: community.into(),
        ..EngineConfig::default()
    };
    c.database.url = database_url.into();
    c.http.listen = ([127, 0, 0, 1], 0).into();
    // The chain is tested on its own (market.rs); these tests are about ingest.
    c.chain.backend = market_engine::chain::ChainBackend::None;
    match std::env::var("GRIDSHARE_TEST_MQTT_URL") {
        Ok(url) => {
            c.mqtt.embedded_listen = String::new();
            c.mqtt.url = url;
        }
        Err(_) => {
            let port = free_port();
            c.mqtt.embedded_listen = format!("127.0.0.1:{port}");
            c.mqtt.url = format!("mqtt://127.0.0.1:{port}");
        }
    }
    c
}

/// A simulated hybrid inverter (`Household::default()`) served over Modbus TCP on a free
/// port, its day starting at noon and its clock running 1 200 times real time (a minute of
/// its day every 50 ms tick).
pub(crate) async fn simulated_inverter() -> RegisterServer {
    gridshare_testbed::simulator::serve(
        Household::default(),
        12 * 3_600_000,
        "127.0.0.1:0".parse().unwrap(),
        Framing::Tcp,
        50,
        1200.0,
    )
    .await
    .unwrap()
}

/// A new household account (a unique name from `name`; no password: these tests do not log
/// it in).
pub(crate) async fn household_account(store: &Store, name: &str) -> i64 {
    store
        .create_account(&unique(name), "unused-hash", Role::Household, 0)
        .await
        .unwrap()
}

/// The identity of the simulated inverter (`Household::default()` has serial `SIM-000001`).
pub(crate) fn simulated_device(serial: &str) -> DeviceIdentity {
    DeviceIdentity::new("Gridshare", "SIM-HYBRID", serial).unwrap()
}

/// Registers `meter` of `account` with `public` and approves it as the community operator
/// would, for `device` and the largest capacity an approval allows (the tests' devices run
/// on accelerated clocks).
pub(crate) async fn register_approved(
    store: &Store,
    keys: &KeyRegistry,
    meter: &str,
    account: i64,
    public: gridshare_core::reading::PublicKey,
    device: &DeviceIdentity,
) {
    market_engine::meters::register(store, keys, account, meter, &public.to_hex(), u32::MAX, 0)
        .await
        .unwrap();
    approve(
        store,
        keys,
        meter,
        device,
        market_engine::meters::MAX_CAPACITY_W,
    )
    .await;
}

/// Approves a registered meter for `device`, rated `capacity_w` both ways.
pub(crate) async fn approve(
    store: &Store,
    keys: &KeyRegistry,
    meter: &str,
    device: &DeviceIdentity,
    capacity_w: u32,
) {
    let approval = Approval {
        export_capacity_w: capacity_w,
        import_capacity_w: capacity_w,
        device: device.clone(),
    };
    market_engine::meters::approve(store, keys, meter, &approval, 0, 0)
        .await
        .unwrap();
}

/// Readings as the ingest checks pass them on, for meters rated at the largest capacity.
pub(crate) fn accepted(
    readings: &[gridshare_core::reading::SignedReading],
) -> Vec<market_engine::ingest::Accepted> {
    readings
        .iter()
        .map(|signed| market_engine::ingest::Accepted {
            signed: signed.clone(),
            capacity: market_engine::ingest::Capacity {
                export_w: market_engine::meters::MAX_CAPACITY_W,
                import_w: market_engine::meters::MAX_CAPACITY_W,
            },
            account: 0,
        })
        .collect()
}

/// Polls a test client's connection for as long as the test runs. An error is printed and the
/// next poll connects again, so one dropped connection cannot leave the publishes that follow
/// queued in the client and unsent (a poller that stopped at its first error did).
pub(crate) fn keep_polling(mut events: rumqttc::EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = events.poll().await {
                eprintln!("test client connection: {e}; connecting again");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    })
}

/// Options for a test client that may publish anywhere: at the embedded broker it logs in with
/// the engine's own credential; the external test broker lets anyone in.
pub(crate) fn engine_client(engine: &Engine, config: &EngineConfig, id: String) -> MqttOptions {
    let (host, port) = broker_host_port(&config.mqtt.url).unwrap();
    let mut options = MqttOptions::new(id, host, port);
    if let Some(broker) = &engine.broker {
        let (user, password) = broker.engine_login();
        options.set_credentials(user, password);
    }
    options
}

/// A market on `url` with the default rules, the ingest's registry and the API over both, as
/// the engine wires them (no broker, no background tasks: the test drives the clock).
pub(crate) struct Fixture {
    pub(crate) store: Store,
    pub(crate) market: std::sync::Arc<market_engine::market::Market>,
    pub(crate) keys: KeyRegistry,
    pub(crate) app: axum::Router,
}

impl Fixture {
    pub(crate) async fn open(url: &str) -> Self {
        Self::open_with(url, market_engine::market::MarketConfig::default()).await
    }

    /// As [`Fixture::open`], with the market rules `config`.
    pub(crate) async fn open_with(url: &str, config: market_engine::market::MarketConfig) -> Self {
        let store = Store::open(url).await.unwrap();
        let community = config.community().unwrap();
        let market = std::sync::Arc::new(
            market_engine::market::Market::open(community, store.clone())
                .await
                .unwrap(),
        );
        let keys = KeyRegistry::default();
        let app = market::api_with(&store, &market, &keys);
        Self {
            store,
            market,
            keys,
            app,
        }
    }
}
