//! Signed readings verified and stored per second through a real MQTT broker, SQLite storage.
//!
//! ```sh
//! scripts/bench-ingest.sh                                      # embedded broker
//! scripts/bench-ingest.sh mosquitto                            # a Mosquitto it starts
//! cargo bench --workspace --bench ingest -- mqtt://host:1883   # any broker
//! cargo bench --workspace --bench ingest -- --no-gate          # embedded, past the gate
//! ```
//!
//! `--no-gate` publishes straight into the embedded rumqttd's loopback port with the engine's
//! own login, skipping the gate that checks logins and topics: the difference is what the
//! access control costs.
//!
//! Pre-signs readings of 100 meters, publishes them as fast as the broker takes them (QoS 1),
//! each meter over its own connection logged in with the credentials the engine issued it
//! (the embedded broker checks every login and every publish's topic), every meter in
//! sequence and all meters at once, and measures until the engine has verified and stored the
//! last one.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gridshare_core::reading::{ClockSync, DeviceIdentity, Measured, MeterId, MeterKey, Reading};
use market_engine::config::{EngineConfig, broker_host_port};
use market_engine::server::Engine;
use ring::rand::SystemRandom;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

const METERS: u64 = 100;
const PER_METER: u64 = 300;

#[tokio::main]
async fn main() {
    let external = std::env::args().skip(1).find(|a| a.starts_with("mqtt://"));
    let no_gate = std::env::args().any(|a| a == "--no-gate");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = EngineConfig {
        community: format!("bench{}", std::process::id()),
        ..EngineConfig::default()
    };
    config.database.url = format!("sqlite://{}", dir.path().join("bench.sqlite").display());
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.chain.backend = market_engine::chain::ChainBackend::None;
    match &external {
        Some(url) => {
            config.mqtt.embedded_listen = String::new();
            config.mqtt.url = url.clone();
        }
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            config.mqtt.embedded_listen = format!("127.0.0.1:{port}");
            config.mqtt.url = format!("mqtt://127.0.0.1:{port}");
        }
    }
    let engine = Engine::start(&config).await.expect("engine");
    let account = engine
        .store
        .create_account("bench", "x", market_engine::store::Role::Household, 0)
        .await
        .expect("account");
    let rng = SystemRandom::new();
    let now = market_engine::pipeline::now_ms();
    let mut meters = Vec::new();
    for m in 0..METERS {
        let key =
            MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).expect("rng"), &rng).expect("key");
        let id = format!("bench-{m:03}");
        let public = key.public_key();
        market_engine::meters::register(
            &engine.store,
            &engine.keys,
            account,
            &id,
            &public.to_hex(),
            u32::MAX,
            0,
        )
        .await
        .expect("meter");
        let approval = market_engine::ingest::Approval {
            export_capacity_w: 10_000,
            import_capacity_w: 20_000,
            device: DeviceIdentity::new("Bench", "Meter", &id).expect("identity"),
        };
        market_engine::meters::approve(&engine.store, &engine.keys, &id, &approval, 0, 0)
            .await
            .expect("approval");
        let password = market_engine::broker::issue_meter_credentials(&engine.store, &id)
            .await
            .expect("credentials");
        let mut messages = Vec::new();
        for seq in 1..=PER_METER {
            let reading = Reading {
                meter_id: MeterId::new(id.clone()).expect("id"),
                device: DeviceIdentity::new("Bench", "Meter", &id).expect("identity"),
                seq,
                timestamp_ms: now - (PER_METER - seq) * 1000,
                clock: ClockSync::Synchronised,
                import_wh: Measured::ok(1_000_000 + seq * 3),
                export_wh: Measured::ok(2_000_000 + seq),
                battery_charge_wh: Measured::not_implemented(),
                battery_discharge_wh: Measured::not_implemented(),
                power_w: Measured::ok(-1200),
                soc_bp: Measured::not_implemented(),
                flow: gridshare_core::reading::PowerFlow::NOT_MEASURED,
            };
            messages.push(key.sign(reading, &rng).expect("sign").to_json());
        }
        meters.push((id, password, messages));
    }
    let total = METERS * PER_METER;
    let (mut host, mut port) = broker_host_port(&config.mqtt.url).expect("url");
    let bypass = engine.broker.as_ref().filter(|_| no_gate).map(|broker| {
        host = broker.internal.ip().to_string();
        port = broker.internal.port();
        broker.engine_login()
    });
    let mut clients = Vec::new();
    for (id, password, messages) in meters {
        let mut options = MqttOptions::new(format!("bench-{id}"), host.clone(), port);
        options
            .set_inflight(100)
            .set_keep_alive(Duration::from_secs(30))
            .set_credentials(id.clone(), password);
        if let Some((user, password)) = &bypass {
            options.set_credentials(user.clone(), password.clone());
        }
        let (client, mut events) = AsyncClient::new(options, 1_000);
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::Disconnect)) | Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Ok(_) => {}
                }
            }
        });
        let topic = gridshare_core::mqtt::MeterTopics::new(
            &config.mqtt.topic_prefix,
            &config.community,
            &id,
        )
        .reading;
        clients.push((client, topic, messages));
    }
    let started = Instant::now();
    for (client, topic, messages) in clients {
        tokio::spawn(async move {
            for payload in messages {
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                    .await
                    .expect("publish");
            }
        });
    }
    while engine.ingest.accepted.load(Ordering::Relaxed) < total {
        if started.elapsed() > Duration::from_secs(300) {
            panic!(
                "only {} of {total} stored after 300 s",
                engine.ingest.accepted.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{total} signed readings of {METERS} meters verified and stored in {secs:.2} s: {:.0} readings/s ({})",
        total as f64 / secs,
        match (&external, &bypass) {
            (Some(url), _) => url.as_str(),
            (None, Some(_)) => "embedded broker, straight into rumqttd past the gate",
            (None, None) => "embedded broker, every meter logged in through the gate",
        }
    );
    engine.stop().await;
}
