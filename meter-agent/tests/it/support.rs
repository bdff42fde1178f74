//! Shared test plumbing: brokers, subscribers, keys, simulated devices.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gridshare_core::reading::{PublicKey, SignedReading};
use gridshare_testbed::register_server::{Framing, RegisterServer};
use gridshare_testbed::simulator::Household;
pub(crate) use gridshare_testbed::{free_port, mosquitto::Mosquitto};
use meter_agent::config::AgentConfig;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

/// The broker for tests that do not stop it: `GRIDSHARE_TEST_MQTT_URL` (Mosquitto in CI) or
/// an embedded rumqttd on a free port.
pub(crate) fn broker_url() -> String {
    if let Ok(url) = std::env::var("GRIDSHARE_TEST_MQTT_URL") {
        return url;
    }
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    gridshare_mqtt::broker::start_embedded(addr).unwrap();
    format!("mqtt://{addr}")
}

/// A community name no other test uses, so tests can share one broker.
pub(crate) fn community(test: &str) -> String {
    format!("t{}-{test}", std::process::id())
}

fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").unwrap().1;
    let (h, p) = rest.rsplit_once(':').unwrap();
    (h.to_owned(), p.parse().unwrap())
}

/// Subscribes to `filter` and forwards every message; `session` keeps a persistent session so
/// that messages published while the subscriber is away are kept for it.
pub(crate) async fn subscribe(
    url: &str,
    filter: &str,
    client_id: &str,
    session: bool,
) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let (host, port) = host_port(url);
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_session(!session);
    let (client, mut events) = AsyncClient::new(options, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let filter = filter.to_owned();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    if !ack.session_present {
                        let _ = client.subscribe(&filter, QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .expect("subscription within 10 s")
        .unwrap();
    rx
}

/// Receives readings until `n` distinct sequence numbers arrived (duplicates dropped, as the
/// engine drops them), verifying each; returns them in arrival order.
pub(crate) async fn collect_readings(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    key: &PublicKey,
    n: usize,
    within: Duration,
) -> Vec<SignedReading> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while seen.len() < n {
        let (topic, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} readings arrived", seen.len()))
            .unwrap();
        if !topic.ends_with("/reading") {
            continue;
        }
        let signed = SignedReading::from_json_bytes(&payload).unwrap();
        signed.verify(key).unwrap();
        if seen.insert(signed.reading.seq) {
            out.push(signed);
        }
    }
    out
}

/// Asserts the sequence numbers are `first, first+1, ...` in this order.
pub(crate) fn assert_gap_free(readings: &[SignedReading], first: u64) {
    for (i, r) in readings.iter().enumerate() {
        assert_eq!(
            r.reading.seq,
            first + i as u64,
            "sequence numbers out of order or with a gap: {:?}",
            readings.iter().map(|r| r.reading.seq).collect::<Vec<_>>()
        );
    }
}

/// A simulated hybrid inverter served over Modbus TCP, time advancing `speed`× in the
/// background.
pub(crate) async fn simulated_device(speed_ms_per_tick: u64) -> RegisterServer {
    gridshare_testbed::simulator::serve(
        Household::default(),
        11 * 3_600_000,
        "127.0.0.1:0".parse().unwrap(),
        Framing::Tcp,
        50,
        speed_ms_per_tick as f64 / 50.0,
    )
    .await
    .unwrap()
}

/// A config for a test agent: key, data dir, device, broker.
pub(crate) fn agent_config(
    dir: &Path,
    meter: &str,
    community: &str,
    device: SocketAddr,
    mqtt: &str,
) -> AgentConfig {
    let key_file = dir.join("meter.key");
    if !key_file.exists() {
        meter_agent::keys::generate(&key_file, false).unwrap();
    }
    let mut c = AgentConfig {
        meter_id: meter.into(),
        community: community.into(),
        key_file,
        data_dir: dir.to_path_buf(),
        poll_interval_ms: 100,
        backoff_initial_ms: 100,
        backoff_max_ms: 1000,
        ..AgentConfig::default()
    };
    c.modbus.address = device.to_string();
    c.modbus.timeout_ms = 500;
    c.mqtt.url = mqtt.into();
    c.mqtt.reconnect_initial_ms = 100;
    c.mqtt.reconnect_max_ms = 500;
    c
}

/// The public key of a test agent.
pub(crate) fn public_key(config: &AgentConfig) -> PublicKey {
    meter_agent::keys::load(&config.key_file)
        .unwrap()
        .public_key()
}

/// Mosquitto with persistence in `dir` (so persistent sessions survive a restart), on a free
/// port, for broker outages; `None` (reported) where this machine has no Mosquitto.
pub(crate) fn persistent_mosquitto(dir: &Path) -> Option<Mosquitto> {
    Mosquitto::start(
        dir,
        &format!(
            "persistence true\npersistence_location {}/\nautosave_interval 1\n",
            dir.display()
        ),
    )
}
