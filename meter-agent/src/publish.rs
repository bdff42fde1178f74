//! Publishing the outbox over MQTT (QoS 1), oldest first, deleting a reading only when the
//! broker acknowledged it.
//!
//! Design: every connection gets a fresh rumqttc event loop with a clean session, and on each
//! CONNACK the publisher starts again from the oldest reading still in the outbox. rumqttc's
//! own retransmission of unacknowledged packets is therefore never relied on: the outbox is
//! the single source of what is still owed. A reading whose PUBACK was lost in an outage is
//! sent again; receivers drop the duplicate by (meter, sequence number). PUBACKs carry only a
//! packet id, so each publish is matched to its packet id through the `Outgoing::Publish`
//! events, which rumqttc emits in the order the publishes were queued.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS, Transport,
};
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use crate::outbox::Outbox;

pub use gridshare_core::mqtt::BrokerUrl;
use gridshare_core::mqtt::BrokerUrlError;
/// The topics of one meter (the layout is `gridshare_core`'s).
pub use gridshare_core::mqtt::MeterTopics as Topics;

/// Broker settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or, with TLS, `mqtts://host:port`.
    pub url: String,
    /// Client id; default `meter-agent-<meter id>`.
    pub client_id: Option<String>,
    /// User name, if the broker requires one.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// PEM file with the CA certificates trusted for `mqtts://`; default: the system bundle
    /// `/etc/ssl/certs/ca-certificates.crt`.
    pub ca_file: Option<PathBuf>,
    /// Topic prefix; readings go to `<prefix>/<community>/meters/<meter>/reading`.
    pub topic_prefix: String,
    /// MQTT keep-alive, seconds.
    pub keep_alive_s: u64,
    /// Readings in flight (published, not yet acknowledged).
    pub max_inflight: u16,
    /// First wait before reconnecting, doubled on each failure up to `reconnect_max_ms`.
    pub reconnect_initial_ms: u64,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_ms: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: None,
            username: None,
            password: None,
            ca_file: None,
            topic_prefix: "gridshare/v1".into(),
            keep_alive_s: 30,
            max_inflight: 32,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
        }
    }
}

/// Why the broker settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MqttConfigError {
    /// The URL is not `mqtt://host:port` or `mqtts://host:port`.
    #[error("mqtt.url {0}")]
    Url(#[from] BrokerUrlError),
    /// The CA file cannot be read or holds no certificate.
    #[error(transparent)]
    Ca(#[from] gridshare_mqtt::CaError),
}

/// Counters the publisher keeps (for logs, the status topic, and tests).
#[derive(Debug, Default)]
pub struct PublishStats {
    /// Readings acknowledged by the broker.
    pub acknowledged: AtomicU64,
    /// Successful connections.
    pub connections: AtomicU64,
}

/// Everything the publisher needs.
pub struct Publisher {
    /// Broker settings.
    pub config: MqttConfig,
    /// The meter's topics.
    pub topics: Topics,
    /// Client id.
    pub client_id: String,
    /// Retained `online` payload.
    pub online_payload: String,
    /// The outbox to drain.
    pub outbox: Outbox,
    /// Woken when a reading was appended.
    pub wake: Arc<Notify>,
    /// Counters.
    pub stats: Arc<PublishStats>,
}

const OFFLINE: &str = r#"{"state":"offline"}"#;

impl Publisher {
    fn options(&self) -> Result<MqttOptions, MqttConfigError> {
        let url = BrokerUrl::parse(&self.config.url)?;
        let mut options = MqttOptions::new(&self.client_id, url.host, url.port);
        options
            .set_keep_alive(Duration::from_secs(self.config.keep_alive_s.max(5)))
            .set_clean_session(true)
            .set_inflight(self.config.max_inflight.max(1))
            .set_last_will(LastWill::new(
                &self.topics.status,
                OFFLINE,
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(user) = &self.config.username {
            options.set_credentials(user, self.config.password.clone().unwrap_or_default());
        }
        if url.tls {
            options.set_transport(Transport::tls_with_config(gridshare_mqtt::tls_config(
                self.config.ca_file.as_deref(),
            )?));
        }
        Ok(options)
    }

    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), MqttConfigError> {
        self.options().map(|_| ())
    }

    /// Publishes until `shutdown` turns true; then announces `offline` and disconnects.
    /// Whatever is not acknowledged stays in the outbox for the next run.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), MqttConfigError> {
        let options = self.options()?;
        let mut backoff = self.config.reconnect_initial_ms.max(10);
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let (client, eventloop) = AsyncClient::new(options.clone(), 256);
            match self.session(&client, eventloop, &mut shutdown).await {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Lost { was_connected } => {
                    if was_connected {
                        backoff = self.config.reconnect_initial_ms.max(10);
                    }
                }
            }
            tracing::debug!(target: "mqtt", backoff_ms = backoff, "reconnecting after a pause");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
            backoff = (backoff * 2).min(self.config.reconnect_max_ms.max(backoff));
        }
    }

    async fn session(
        &self,
        client: &AsyncClient,
        mut eventloop: EventLoop,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let mut connected = false;
        // Publishes queued but not yet given a packet id (None = a status message).
        let mut queued: VecDeque<Option<u64>> = VecDeque::new();
        let mut in_flight: HashMap<u16, Option<u64>> = HashMap::new();
        // Highest sequence number queued in this session.
        let mut cursor = 0u64;
        loop {
            tokio::select! {
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        tracing::info!(target: "mqtt", code = ?ack.code, "connected to broker");
                        connected = true;
                        self.stats.connections.fetch_add(1, Ordering::Relaxed);
                        if client
                            .try_publish(&self.topics.status, QoS::AtLeastOnce, true, self.online_payload.clone())
                            .is_ok()
                        {
                            queued.push_back(None);
                        }
                        self.fill(client, &mut queued, &in_flight, &mut cursor).await;
                    }
                    Ok(event) => {
                        if self.track(&event, &mut queued, &mut in_flight).await {
                            self.fill(client, &mut queued, &in_flight, &mut cursor).await;
                        }
                    }
                    Err(e) => {
                        if connected {
                            tracing::warn!(target: "mqtt", "connection to broker lost: {e}");
                        } else {
                            tracing::warn!(target: "mqtt", url = %self.config.url, "cannot connect to broker: {e}");
                        }
                        return SessionEnd::Lost { was_connected: connected };
                    }
                },
                () = self.wake.notified(), if connected => {
                    self.fill(client, &mut queued, &in_flight, &mut cursor).await;
                }
                _ = shutdown.changed() => {
                    if connected {
                        self.goodbye(client, &mut eventloop, &mut queued, &mut in_flight).await;
                    }
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    /// Follows packet ids: a queued publish gets its id when it goes out (rumqttc emits these
    /// in queue order), and an acknowledged reading is deleted from the outbox. Returns whether
    /// an acknowledgement made room in the window.
    async fn track(
        &self,
        event: &Event,
        queued: &mut VecDeque<Option<u64>>,
        in_flight: &mut HashMap<u16, Option<u64>>,
    ) -> bool {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(entry) = queued.pop_front() {
                    in_flight.insert(*pkid, entry);
                }
                false
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(Some(seq)) = in_flight.remove(&ack.pkid) {
                    match self.outbox.acknowledge(seq).await {
                        Ok(()) => {
                            // Once per run: the line a household looks for in the journal
                            // after installing (and what the install figure is timed to).
                            if self.stats.acknowledged.fetch_add(1, Ordering::Relaxed) == 0 {
                                tracing::info!(target: "mqtt", seq, "first reading acknowledged by the broker");
                            }
                        }
                        Err(e) => tracing::error!(target: "mqtt", "{e}"),
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Queues readings from the outbox until the in-flight window is full.
    async fn fill(
        &self,
        client: &AsyncClient,
        queued: &mut VecDeque<Option<u64>>,
        in_flight: &HashMap<u16, Option<u64>>,
        cursor: &mut u64,
    ) {
        let window = usize::from(self.config.max_inflight.max(1));
        let busy = queued.len() + in_flight.len();
        if busy >= window {
            return;
        }
        let room = u32::try_from(window - busy).unwrap_or(u32::MAX);
        let pending = match self.outbox.pending(*cursor, room).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(target: "mqtt", "{e}");
                return;
            }
        };
        for p in pending {
            if client
                .try_publish(&self.topics.reading, QoS::AtLeastOnce, false, p.payload)
                .is_err()
            {
                // The request channel is full; the next acknowledgement continues.
                break;
            }
            queued.push_back(Some(p.seq));
            *cursor = p.seq;
        }
    }

    async fn goodbye(
        &self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        queued: &mut VecDeque<Option<u64>>,
        in_flight: &mut HashMap<u16, Option<u64>>,
    ) {
        // Announce a clean exit (the last will covers crashes) and give in-flight readings a
        // moment to be acknowledged, so they are not sent twice after the restart.
        let _ = client.try_publish(&self.topics.status, QoS::AtLeastOnce, true, OFFLINE);
        queued.push_back(None);
        let _ = client.try_disconnect();
        let drain = async {
            while let Ok(event) = eventloop.poll().await {
                self.track(&event, queued, in_flight).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}

enum SessionEnd {
    Shutdown,
    Lost { was_connected: bool },
}
