//! Home Assistant beside the agent: the copy of each reading on the household's broker, with
//! discovery payloads checked against what Home Assistant's MQTT Sensor integration and its
//! Energy dashboard require, and availability following the agent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gridshare_testbed::register_server::{Fault, Framing, RegisterServer};
use gridshare_testbed::simulator::{Household, SimulatedDevice};
use meter_agent::agent::{self, AgentStats};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::support;

async fn next_on(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    topic: &str,
    want: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (t, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing matching on {topic} within 15 s"))
            .unwrap();
        if t == topic && want(&payload) {
            return payload;
        }
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[tokio::test]
async fn home_assistant_discovery_gives_one_device_ready_for_the_energy_dashboard() {
    let url = support::broker_url();
    let dir = tempfile::tempdir().unwrap();
    let sim = SimulatedDevice::new(Household::default(), 12 * 3_600_000);
    let bank = sim.bank();
    let server = RegisterServer::start(
        "127.0.0.1:0".parse().unwrap(),
        bank.clone(),
        1,
        Framing::Tcp,
    )
    .await
    .unwrap();
    let community = support::community("ha");
    let meter = "ha-home.1";
    let mut config = support::agent_config(dir.path(), meter, &community, server.addr, &url);
    config.home_assistant.enabled = true;
    config.home_assistant.url.clone_from(&url);
    config.home_assistant.discovery_prefix = format!("{community}-ha");
    config.home_assistant.topic_prefix = format!("{community}-gs");
    config.validate().unwrap();
    let state_topic = format!("{community}-gs/{meter}/state");
    let availability_topic = format!("{community}-gs/{meter}/availability");

    let mut configs = support::subscribe(
        &url,
        &format!("{community}-ha/#"),
        &format!("{community}-ha-sub"),
        false,
    )
    .await;
    let mut states = support::subscribe(
        &url,
        &format!("{community}-gs/#"),
        &format!("{community}-gs-sub"),
        false,
    )
    .await;
    let (stop, shutdown) = watch::channel(false);
    let agent = tokio::spawn(agent::run(
        config,
        shutdown,
        Arc::new(AgentStats::default()),
    ));

    // Six discovery configs, one per entity, all of one device.
    let mut entities: BTreeMap<String, Value> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while entities.len() < 6 {
        let (topic, payload) = tokio::time::timeout_at(deadline, configs.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} discovery configs", entities.len()))
            .unwrap();
        entities.insert(topic, serde_json::from_slice(&payload).unwrap());
    }
    let mut unique_ids = BTreeSet::new();
    let mut devices = BTreeSet::new();
    for (topic, c) in &entities {
        // <discovery_prefix>/sensor/<node_id>/<object_id>/config
        let parts: Vec<&str> = topic.split('/').collect();
        assert_eq!(parts.len(), 5, "{topic}");
        assert_eq!(
            (parts[0], parts[1], parts[4]),
            (&*format!("{community}-ha"), "sensor", "config")
        );
        assert!(is_id(parts[2]) && is_id(parts[3]), "{topic}");
        // Required by the MQTT Sensor: state_topic; for the device registry: unique_id and
        // device.identifiers (a list).
        assert_eq!(c["state_topic"], state_topic.as_str(), "{topic}");
        let uid = c["unique_id"].as_str().unwrap();
        assert!(unique_ids.insert(uid.to_owned()), "unique_id {uid} twice");
        let ids = c["device"]["identifiers"].as_array().unwrap();
        assert!(!ids.is_empty() && ids.iter().all(Value::is_string), "{c}");
        devices.insert(c["device"].to_string());
        assert_eq!(c["device"]["serial_number"], "SIM-000001");
        assert!(c["name"].as_str().is_some_and(|n| !n.is_empty()));
        assert_eq!(c["availability_topic"], availability_topic.as_str());
        assert_eq!(c["payload_available"], "online");
        assert_eq!(c["payload_not_available"], "offline");
        assert!(
            c.get("availability").is_none(),
            "availability and availability_topic must not be combined"
        );
        let template = c["value_template"].as_str().unwrap();
        assert!(template.starts_with("{{ value_json.") && template.ends_with(" }}"));
        let (class, state_class, unit) = (
            c["device_class"].as_str().unwrap(),
            c["state_class"].as_str().unwrap(),
            c["unit_of_measurement"].as_str().unwrap(),
        );
        match class {
            // What the Energy dashboard accepts for grid and battery energy.
            "energy" => {
                assert_eq!(state_class, "total_increasing", "{topic}");
                assert!(["Wh", "kWh", "MWh"].contains(&unit), "{topic}: {unit}");
            }
            "power" => {
                assert_eq!(state_class, "measurement");
                assert!(["W", "kW"].contains(&unit));
            }
            "battery" => {
                assert_eq!(state_class, "measurement");
                assert_eq!(unit, "%");
            }
            other => panic!("{topic}: device_class {other}"),
        }
    }
    assert_eq!(devices.len(), 1, "one device per meter: {devices:?}");
    let classes: Vec<&str> = entities
        .values()
        .map(|c| c["device_class"].as_str().unwrap())
        .collect();
    assert_eq!(classes.iter().filter(|c| **c == "energy").count(), 4);

    // The state carries every key a template names, with the simulated device's counters.
    let state: Value = serde_json::from_slice(
        &next_on(&mut states, &state_topic, |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|v| v["import_wh"].is_u64())
        })
        .await,
    )
    .unwrap();
    for c in entities.values() {
        let template = c["value_template"].as_str().unwrap();
        let key = template
            .trim_start_matches("{{ value_json.")
            .trim_end_matches(" }}");
        assert!(state.get(key).is_some(), "state lacks {key}: {state}");
    }
    let (import, export) = sim.grid_counters_wh();
    assert_eq!(state["import_wh"], import);
    assert_eq!(state["export_wh"], export);
    assert!(
        state["soc_percent"]
            .as_f64()
            .is_some_and(|s| (0.0..=100.0).contains(&s))
    );
    next_on(&mut states, &availability_topic, |p| p == b"online").await;

    // The device stops answering: Home Assistant shows the meter unavailable, then back.
    bank.set_fault(Fault::Silence);
    next_on(&mut states, &availability_topic, |p| p == b"offline").await;
    bank.set_fault(Fault::None);
    next_on(&mut states, &availability_topic, |p| p == b"online").await;

    // The agent stops: offline, retained.
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
    next_on(&mut states, &availability_topic, |p| p == b"offline").await;
    let mut late = support::subscribe(
        &url,
        &availability_topic,
        &format!("{community}-late"),
        false,
    )
    .await;
    assert_eq!(
        next_on(&mut late, &availability_topic, |_| true).await,
        b"offline"
    );
}
