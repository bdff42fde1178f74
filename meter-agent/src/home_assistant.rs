//! An optional copy of each reading for the household's own broker (often Home Assistant's
//! Mosquitto add-on, not the community's), announced with Home Assistant MQTT discovery so the
//! meter appears as one device with power, import/export energy, battery energy and state of
//! charge, ready for the Energy dashboard without configuration.
//!
//! Design: the poller hands every stored reading (or "the device does not answer") to a
//! `watch` channel; this task keeps only the latest, because Home Assistant shows state, not
//! history — the signed readings with their no-loss guarantee go to the community broker, not
//! here. Discovery configs are published retained on every connection and again whenever Home
//! Assistant announces itself `online` on `<discovery_prefix>/status` (its birth message), so a
//! restarted Home Assistant or a broker that lost its retained messages still finds the meter.
//! Availability is the agent's status: `online` while the device answers, `offline` when it
//! does not, when the agent stops, and (last will) when the agent dies.
//!
//! Discovery fields follow the MQTT Sensor integration: `state_topic` (required), `unique_id`
//! (needed for the device registry), `device.identifiers`, `availability_topic`; energy sensors
//! carry `device_class: energy`, `state_class: total_increasing` and a unit in Wh, which is what
//! the Energy dashboard accepts.

use std::path::PathBuf;
use std::time::Duration;

use gridshare_core::reading::{DeviceIdentity, Reading};
use rumqttc::{AsyncClient, Event, Incoming, LastWill, MqttOptions, QoS, Transport};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::publish::{BrokerUrl, MqttConfigError};

/// `[home_assistant]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Publish a copy of each reading with discovery.
    pub enabled: bool,
    /// The household's broker, `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// User name on that broker.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// CA bundle for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
    /// Prefix of the state and availability topics: `<prefix>/<meter>/state`.
    pub topic_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: "mqtt://homeassistant.local:1883".into(),
            username: None,
            password: None,
            ca_file: None,
            discovery_prefix: "homeassistant".into(),
            topic_prefix: "gridshare".into(),
        }
    }
}

/// What the poller tells this task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeterState {
    /// Nothing polled yet.
    Starting,
    /// The latest stored reading.
    Reading(Box<Reading>),
    /// The device stopped answering.
    DeviceDown,
}

/// One sensor entity of the meter's device.
struct Entity {
    object: &'static str,
    name: &'static str,
    key: &'static str,
    device_class: &'static str,
    state_class: &'static str,
    unit: &'static str,
}

const ENTITIES: [Entity; 6] = [
    Entity {
        object: "power",
        name: "Grid power",
        key: "power_w",
        device_class: "power",
        state_class: "measurement",
        unit: "W",
    },
    Entity {
        object: "import",
        name: "Energy imported",
        key: "import_wh",
        device_class: "energy",
        state_class: "total_increasing",
        unit: "Wh",
    },
    Entity {
        object: "export",
        name: "Energy exported",
        key: "export_wh",
        device_class: "energy",
        state_class: "total_increasing",
        unit: "Wh",
    },
    Entity {
        object: "battery_charge",
        name: "Battery energy charged",
        key: "battery_charge_wh",
        device_class: "energy",
        state_class: "total_increasing",
        unit: "Wh",
    },
    Entity {
        object: "battery_discharge",
        name: "Battery energy discharged",
        key: "battery_discharge_wh",
        device_class: "energy",
        state_class: "total_increasing",
        unit: "Wh",
    },
    Entity {
        object: "soc",
        name: "Battery state of charge",
        key: "soc_percent",
        device_class: "battery",
        state_class: "measurement",
        unit: "%",
    },
];

/// The topics of one meter on the household's broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaTopics {
    /// JSON state of the latest reading.
    pub state: String,
    /// `online` / `offline`, retained.
    pub availability: String,
    /// Where Home Assistant announces itself.
    pub ha_status: String,
    node: String,
    discovery_prefix: String,
}

impl HaTopics {
    /// Topics for `meter` (a meter id: `.` becomes `_`, as Home Assistant allows only
    /// `[a-zA-Z0-9_-]` in discovery node ids).
    pub fn new(config: &HomeAssistantConfig, meter: &str) -> Self {
        let node = format!("gridshare_{}", meter.replace('.', "_"));
        Self {
            state: format!("{}/{meter}/state", config.topic_prefix),
            availability: format!("{}/{meter}/availability", config.topic_prefix),
            ha_status: format!("{}/status", config.discovery_prefix),
            discovery_prefix: config.discovery_prefix.clone(),
            node,
        }
    }

    /// The discovery config topic of one entity.
    fn config(&self, object: &str) -> String {
        format!(
            "{}/sensor/{}/{object}/config",
            self.discovery_prefix, self.node
        )
    }
}

/// The retained discovery messages, one per entity: (topic, JSON payload).
pub fn discovery(topics: &HaTopics, meter: &str, device: &DeviceIdentity) -> Vec<(String, String)> {
    let or = |s: &str, default: &str| {
        if s.is_empty() {
            default.to_owned()
        } else {
            s.to_owned()
        }
    };
    let mut dev = json!({
        "identifiers": [topics.node],
        "name": format!("Gridshare meter {meter}"),
        "manufacturer": or(&device.manufacturer, "Gridshare"),
        "model": or(&device.model, "meter-agent"),
        "sw_version": concat!("meter-agent ", env!("CARGO_PKG_VERSION")),
    });
    if !device.serial.is_empty() {
        dev["serial_number"] = Value::from(device.serial.clone());
    }
    ENTITIES
        .iter()
        .map(|e| {
            let payload = json!({
                "name": e.name,
                "unique_id": format!("{}_{}", topics.node, e.object),
                "object_id": format!("{}_{}", topics.node, e.object),
                "state_topic": topics.state,
                "value_template": format!("{{{{ value_json.{} }}}}", e.key),
                "device_class": e.device_class,
                "state_class": e.state_class,
                "unit_of_measurement": e.unit,
                "availability_topic": topics.availability,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": dev,
            });
            (topics.config(e.object), payload.to_string())
        })
        .collect()
}

/// The state payload of a reading: every quantity, `null` where the device gave no value.
pub fn state_payload(r: &Reading) -> String {
    let soc = r.soc_bp.value().map(|bp| f64::from(bp) / 100.0);
    json!({
        "power_w": r.power_w.value(),
        "import_wh": r.import_wh.value(),
        "export_wh": r.export_wh.value(),
        "battery_charge_wh": r.battery_charge_wh.value(),
        "battery_discharge_wh": r.battery_discharge_wh.value(),
        "soc_percent": soc,
        "seq": r.seq,
        "timestamp_ms": r.timestamp_ms,
    })
    .to_string()
}

fn options(
    config: &HomeAssistantConfig,
    client_id: &str,
    topics: &HaTopics,
) -> Result<MqttOptions, MqttConfigError> {
    let url = BrokerUrl::parse(&config.url)?;
    let mut options = MqttOptions::new(client_id, url.host, url.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_last_will(LastWill::new(
            &topics.availability,
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(user) = &config.username {
        options.set_credentials(user, config.password.clone().unwrap_or_default());
    }
    if url.tls {
        options.set_transport(Transport::tls_with_config(gridshare_mqtt::tls_config(
            config.ca_file.as_deref(),
        )?));
    }
    Ok(options)
}

/// Checks the settings without connecting.
pub fn validate(config: &HomeAssistantConfig) -> Result<(), MqttConfigError> {
    let topics = HaTopics::new(config, "m");
    options(config, "check", &topics).map(|_| ())
}

/// Publishes until `shutdown` turns true, then marks the meter `offline`.
pub async fn run(
    config: HomeAssistantConfig,
    meter: String,
    mut states: watch::Receiver<MeterState>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), MqttConfigError> {
    let topics = HaTopics::new(&config, &meter);
    let options = options(&config, &format!("meter-agent-ha-{meter}"), &topics)?;
    let (client, mut events) = AsyncClient::new(options, 64);
    // The identity discovery was last published with; None = publish on the next chance.
    let mut announced: Option<DeviceIdentity> = None;
    let mut connected = false;
    let mut last_error_logged = false;
    loop {
        tokio::select! {
            event = events.poll() => match event {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    connected = true;
                    last_error_logged = false;
                    announced = None;
                    let _ = client.subscribe(&topics.ha_status, QoS::AtMostOnce).await;
                    tracing::info!(target: "home_assistant", url = %config.url, "connected");
                    let current = states.borrow().clone();
                    publish_state(&client, &topics, &meter, &current, &mut announced).await;
                }
                Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == topics.ha_status => {
                    if p.payload.as_ref() == b"online" {
                        // Home Assistant (re)started: announce again.
                        announced = None;
                        let current = states.borrow().clone();
                        publish_state(&client, &topics, &meter, &current, &mut announced).await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    connected = false;
                    if !last_error_logged {
                        tracing::warn!(target: "home_assistant", url = %config.url, "broker unreachable: {e}");
                        last_error_logged = true;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            },
            changed = states.changed() => {
                if changed.is_err() {
                    break;
                }
                if connected {
                    let current = states.borrow_and_update().clone();
                    publish_state(&client, &topics, &meter, &current, &mut announced).await;
                }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    if connected {
        let _ = client
            .publish(&topics.availability, QoS::AtLeastOnce, true, "offline")
            .await;
        let _ = client.disconnect().await;
        // Drive the event loop until the broker has the offline status and the disconnect.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(event) = events.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    Ok(())
}

async fn publish_state(
    client: &AsyncClient,
    topics: &HaTopics,
    meter: &str,
    state: &MeterState,
    announced: &mut Option<DeviceIdentity>,
) {
    match state {
        MeterState::Starting => {}
        MeterState::DeviceDown => {
            let _ = client
                .publish(&topics.availability, QoS::AtLeastOnce, true, "offline")
                .await;
        }
        MeterState::Reading(r) => {
            if announced.as_ref() != Some(&r.device) {
                for (topic, payload) in discovery(topics, meter, &r.device) {
                    let _ = client.publish(topic, QoS::AtLeastOnce, true, payload).await;
                }
                *announced = Some(r.device.clone());
            }
            let _ = client
                .publish(&topics.availability, QoS::AtLeastOnce, true, "online")
                .await;
            let _ = client
                .publish(&topics.state, QoS::AtMostOnce, true, state_payload(r))
                .await;
        }
    }
}
