//! A watcher anyone can run: it follows the signed readings a community's meters publish,
//! keeps each meter's recent readings, and when a meter's key signs two readings that cannot
//! both be true ([`crate::fraud`]) it reports them to the staking contract (commit, then
//! reveal), earning the reporter's share of the slashed stake.
//!
//! Design: [`ReadingHistory`] is the pure part (no IO): readings in, evidence out. [`Watcher`]
//! adds the chain (the meter keys readings must verify under, the reports) and [`run_mqtt`] the
//! broker, so the same history is fed from MQTT here and from stored readings elsewhere.

use crate::fraud::{Contradiction, contradiction};
use alloy::primitives::{Address, B256, Bytes};
use gridshare_contracts::bindings::MeterStaking::MeterStakingErrors as E;
use gridshare_contracts::chain::{Chain, ChainError};
use gridshare_contracts::staking::{StakingClient, describe, is_error};
use gridshare_core::reading::{PublicKey, SignedReading};
use std::collections::{HashMap, HashSet, VecDeque};

/// Readings kept per meter (at one reading a minute, more than a day).
pub const DEFAULT_READINGS_PER_METER: usize = 2_048;

/// Two readings of one meter that cannot both be true.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The meter.
    pub meter: String,
    /// Why they contradict.
    pub contradiction: Contradiction,
    /// The reading seen first.
    pub first: SignedReading,
    /// The reading that contradicts it.
    pub second: SignedReading,
}

/// The recent readings of every meter, and the contradictions among them.
#[derive(Debug)]
pub struct ReadingHistory {
    per_meter: HashMap<String, VecDeque<SignedReading>>,
    capacity: usize,
}

impl ReadingHistory {
    /// Keeps up to `capacity` readings per meter.
    pub fn new(capacity: usize) -> Self {
        Self {
            per_meter: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Adds a (verified) reading; returns evidence if it contradicts one already kept.
    pub fn observe(&mut self, reading: SignedReading) -> Option<Evidence> {
        let meter = reading.reading.meter_id.as_str().to_owned();
        let kept = self.per_meter.entry(meter.clone()).or_default();
        let encoded = reading.encoded();
        if kept.iter().any(|k| k.encoded() == encoded) {
            return None;
        }
        let found = kept.iter().find_map(|k| {
            contradiction(&k.reading, &reading.reading).map(|c| Evidence {
                meter: meter.clone(),
                contradiction: c,
                first: k.clone(),
                second: reading.clone(),
            })
        });
        if kept.len() == self.capacity {
            kept.pop_front();
        }
        kept.push_back(reading);
        found
    }
}

/// What became of a reading the watcher saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Kept; nothing contradicts it.
    Kept,
    /// The meter is not registered on chain (or its id does not fit): nothing to slash.
    UnknownMeter,
    /// The signature does not verify under the meter's registered key: not evidence.
    BadSignature,
    /// Evidence was reported and the meter slashed.
    Slashed {
        /// The meter.
        meter: String,
        /// Why.
        contradiction: Contradiction,
        /// The reveal transaction.
        tx: B256,
    },
    /// Evidence found, but the meter was already slashed.
    AlreadySlashed,
}

/// The watcher: history, meter keys from the chain, reports.
#[derive(Debug)]
pub struct Watcher<C> {
    client: StakingClient<C>,
    reporter: Address,
    history: ReadingHistory,
    keys: HashMap<String, PublicKey>,
    slashed: HashSet<String>,
}

impl<C: Chain> Watcher<C> {
    /// Reports from `reporter` through `client`.
    pub fn new(client: StakingClient<C>, reporter: Address) -> Self {
        Self {
            client,
            reporter,
            history: ReadingHistory::new(DEFAULT_READINGS_PER_METER),
            keys: HashMap::new(),
            slashed: HashSet::new(),
        }
    }

    async fn key_of(&mut self, meter: &str) -> Result<Option<PublicKey>, ChainError> {
        if let Some(k) = self.keys.get(meter) {
            return Ok(Some(*k));
        }
        let Ok(id) = gridshare_contracts::staking::text_id(meter) else {
            return Ok(None);
        };
        let record = self.client.meter(id).await?;
        if record.owner == Address::ZERO {
            return Ok(None);
        }
        let mut sec1 = [0u8; 65];
        sec1[0] = 4;
        sec1[1..33].copy_from_slice(record.keyX.as_slice());
        sec1[33..].copy_from_slice(record.keyY.as_slice());
        let Ok(key) = PublicKey::from_sec1(&sec1) else {
            return Ok(None);
        };
        if record.slashed {
            self.slashed.insert(meter.to_owned());
        }
        self.keys.insert(meter.to_owned(), key);
        Ok(Some(key))
    }

    /// Takes one signed reading: checks it against the meter's key on chain, keeps it, and
    /// reports fraud it reveals. Chain failures are returned (the caller retries or logs).
    pub async fn observe(&mut self, reading: SignedReading) -> Result<Outcome, ChainError> {
        let meter = reading.reading.meter_id.as_str().to_owned();
        let Some(key) = self.key_of(&meter).await? else {
            return Ok(Outcome::UnknownMeter);
        };
        if reading.verify(&key).is_err() {
            return Ok(Outcome::BadSignature);
        }
        let Some(evidence) = self.history.observe(reading) else {
            return Ok(Outcome::Kept);
        };
        if self.slashed.contains(&meter) {
            return Ok(Outcome::AlreadySlashed);
        }
        let arg = |r: &SignedReading| {
            (
                Bytes::copy_from_slice(&r.encoded()),
                Bytes::copy_from_slice(&r.signature.0),
            )
        };
        match self
            .client
            .report_fraud(self.reporter, arg(&evidence.first), arg(&evidence.second))
            .await
        {
            Ok(outcome) => {
                self.slashed.insert(meter.clone());
                tracing::warn!(target: "watcher", meter = %meter, reason = %evidence.contradiction, tx = %outcome.tx_hash, "meter slashed for fraud");
                Ok(Outcome::Slashed {
                    meter,
                    contradiction: evidence.contradiction,
                    tx: outcome.tx_hash,
                })
            }
            Err(e) if is_error(&e, |e| matches!(e, E::MeterSlashed(_))) => {
                self.slashed.insert(meter);
                Ok(Outcome::AlreadySlashed)
            }
            Err(e) => {
                tracing::error!(target: "watcher", meter = %meter, error = %describe(&e), "fraud report failed");
                Err(e)
            }
        }
    }
}

/// Where the watcher listens.
#[derive(Debug, Clone)]
pub struct MqttSource {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Topic prefix (`gridshare/v1`).
    pub prefix: String,
    /// The community whose readings to follow.
    pub community: String,
    /// MQTT client id.
    pub client_id: String,
    /// Optional user name and password.
    pub credentials: Option<(String, String)>,
    /// TLS settings, for `mqtts://`.
    pub tls: Option<rumqttc::TlsConfiguration>,
}

/// Follows the community's readings on the broker until `shutdown` turns true, feeding every
/// reading to `watcher`. Malformed payloads are skipped with a log line; chain failures are
/// logged and the reading kept for the next contradiction.
pub async fn run_mqtt<C: Chain>(
    watcher: &mut Watcher<C>,
    source: &MqttSource,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut on_outcome: impl FnMut(&Outcome),
) -> Result<(), rumqttc::ClientError> {
    let mut options = rumqttc::MqttOptions::new(&source.client_id, &source.host, source.port);
    options.set_keep_alive(std::time::Duration::from_secs(30));
    if let Some((user, password)) = &source.credentials {
        options.set_credentials(user, password);
    }
    if let Some(tls) = &source.tls {
        options.set_transport(rumqttc::Transport::tls_with_config(tls.clone()));
    }
    let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
    let filter = gridshare_core::mqtt::readings_filter(&source.prefix, &source.community);
    client.subscribe(&filter, rumqttc::QoS::AtLeastOnce).await?;
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            event = events.poll() => event,
        };
        match event {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                match SignedReading::from_json_bytes(&p.payload) {
                    Ok(reading) => match watcher.observe(reading).await {
                        Ok(outcome) => on_outcome(&outcome),
                        Err(e) => {
                            tracing::error!(target: "watcher", error = %e, "chain unreachable")
                        }
                    },
                    Err(e) => {
                        tracing::debug!(target: "watcher", topic = %p.topic, error = %e, "not a signed reading")
                    }
                }
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                // A new session (after a broker restart) needs the subscription again.
                client.subscribe(&filter, rumqttc::QoS::AtLeastOnce).await?;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: "watcher", error = %e, "broker connection lost; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}
