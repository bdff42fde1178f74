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
//!
//! The publisher also listens on the meter's `resend` topic, where the market engine asks for
//! readings it found missing (a broker restarted without persistence loses what it queued for
//! an absent engine). It answers from the acknowledged readings the outbox keeps for
//! `resend_retention_s`, publishing the very same signed envelopes again, ahead of new ones.
//! Bounded: a request names at most [`gridshare_core::mqtt::MAX_RESEND_READINGS`] readings,
//! and at most [`MAX_RESEND_QUEUE`] wait to be sent again; a request beyond that is dropped
//! (the engine asks again later).

use std::collections::{BTreeMap, HashMap, VecDeque};
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
/// The topics of one meter (the layout is `gridshare_core`'s).
pub use gridshare_core::mqtt::MeterTopics as Topics;
use gridshare_core::mqtt::{BrokerUrlError, ResendRequest};

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
    /// Requests from the market engine to send readings again.
    pub resend_requests: AtomicU64,
    /// Of those, refused (malformed, or more than the agent queues at once).
    pub resend_refused: AtomicU64,
    /// Readings published again at the engine's request.
    pub resent: AtomicU64,
}

/// Readings waiting to be published again at the engine's request, at most.
pub const MAX_RESEND_QUEUE: usize = 1000;

/// How often acknowledged readings older than the retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Readings requested again, by sequence number, with their signed envelopes.
type ResendQueue = BTreeMap<u64, String>;

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
    /// How long an acknowledged reading is kept to answer the engine's resend requests.
    pub retention: Duration,
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
        let mut resend = ResendQueue::new();
        let mut prune = tokio::time::interval(PRUNE_EVERY);
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
                        // A clean session: the subscription is made on every connection.
                        if let Err(e) = client.try_subscribe(&self.topics.resend, QoS::AtLeastOnce) {
                            tracing::warn!(target: "mqtt", "not listening for resend requests: {e}");
                        }
                        self.fill(client, &mut queued, &in_flight, &mut cursor, &mut resend).await;
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == self.topics.resend => {
                        self.requested(&p.payload, &mut resend).await;
                        self.fill(client, &mut queued, &in_flight, &mut cursor, &mut resend).await;
                    }
                    Ok(event) => {
                        if self.track(&event, &mut queued, &mut in_flight).await {
                            self.fill(client, &mut queued, &in_flight, &mut cursor, &mut resend).await;
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
                    self.fill(client, &mut queued, &in_flight, &mut cursor, &mut resend).await;
                }
                _ = prune.tick() => self.prune().await,
                _ = shutdown.changed() => {
                    if connected {
                        self.goodbye(
                            client,
                            &mut eventloop,
                            &mut queued,
                            &mut in_flight,
                            &mut cursor,
                            &mut resend,
                        )
                        .await;
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
                    match self.outbox.acknowledge(seq, now_ms()).await {
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

    /// Takes a resend request from the engine: queues the acknowledged readings it names that
    /// the outbox still keeps, within [`MAX_RESEND_QUEUE`].
    async fn requested(&self, payload: &[u8], resend: &mut ResendQueue) {
        self.stats.resend_requests.fetch_add(1, Ordering::Relaxed);
        let request = match ResendRequest::parse(payload) {
            Ok(r) => r,
            Err(e) => {
                self.stats.resend_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "mqtt", "ignoring a resend request: {e}");
                return;
            }
        };
        if resend.len() >= MAX_RESEND_QUEUE {
            self.stats.resend_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "mqtt", waiting = resend.len(), "resend request dropped: the readings asked for before are still being sent");
            return;
        }
        let mut found = 0usize;
        for &(first, last) in &request.ranges {
            let room = u32::try_from(MAX_RESEND_QUEUE - resend.len()).unwrap_or(0);
            if room == 0 {
                break;
            }
            match self.outbox.retained(first, last, room).await {
                Ok(kept) => {
                    found += kept.len();
                    resend.extend(kept.into_iter().map(|p| (p.seq, p.payload)));
                }
                Err(e) => tracing::error!(target: "mqtt", "{e}"),
            }
        }
        tracing::info!(target: "mqtt", ranges = ?request.ranges, found, "the market engine asked for readings again");
    }

    /// Deletes acknowledged readings older than the retention.
    async fn prune(&self) {
        let retention = u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX);
        match self.outbox.prune(now_ms().saturating_sub(retention)).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(target: "mqtt", deleted = n, "acknowledged readings past their retention deleted")
            }
            Err(e) => tracing::error!(target: "mqtt", "{e}"),
        }
    }

    /// Queues readings until the in-flight window is full: those the engine asked for again
    /// first (it is waiting for them), then the outbox's new ones.
    async fn fill(
        &self,
        client: &AsyncClient,
        queued: &mut VecDeque<Option<u64>>,
        in_flight: &HashMap<u16, Option<u64>>,
        cursor: &mut u64,
        resend: &mut ResendQueue,
    ) {
        let window = usize::from(self.config.max_inflight.max(1));
        let mut busy = queued.len() + in_flight.len();
        while busy < window {
            let Some((seq, payload)) = resend.pop_first() else {
                break;
            };
            if client
                .try_publish(
                    &self.topics.reading,
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .is_err()
            {
                // The request channel is full; the next acknowledgement continues.
                resend.insert(seq, payload);
                return;
            }
            queued.push_back(Some(seq));
            self.stats.resent.fetch_add(1, Ordering::Relaxed);
            busy += 1;
        }
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
        cursor: &mut u64,
        resend: &mut ResendQueue,
    ) {
        // Send what the outbox still holds and wait for the broker's acknowledgements before
        // leaving (bounded), so that a clean stop leaves nothing to be sent twice after the
        // restart. Disconnecting first would drop acknowledgements already on their way.
        let flush = async {
            loop {
                self.fill(client, queued, in_flight, cursor, resend).await;
                if queued.is_empty() && in_flight.is_empty() {
                    return true;
                }
                match eventloop.poll().await {
                    Ok(event) => {
                        self.track(&event, queued, in_flight).await;
                    }
                    Err(_) => return false,
                }
            }
        };
        if !tokio::time::timeout(FLUSH_ON_STOP, flush)
            .await
            .unwrap_or(false)
        {
            // The broker is gone or too slow: what is unacknowledged stays in the outbox.
            return;
        }
        // Announce a clean exit (the last will covers crashes).
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

/// How long a stopping agent keeps sending what its outbox holds and waiting for the
/// broker's acknowledgements before it leaves the rest for the next run.
const FLUSH_ON_STOP: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

enum SessionEnd {
    Shutdown,
    Lost { was_connected: bool },
}
