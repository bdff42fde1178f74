//! The ingest pipeline: MQTT subscription → checks on the blocking pool → batched storage →
//! acknowledgement to the broker.
//!
//! Design: the subscription uses a persistent session and manual acknowledgements. A reading
//! is acknowledged (PUBACK) only after the transaction that stored it committed, so a crash of
//! the engine between receipt and storage makes the broker deliver the reading again instead
//! of losing it; the duplicate check makes the redelivery harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, Event, Incoming, MqttOptions, Publish, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{broadcast, mpsc, watch};

use gridshare_core::reading::SignedReading;

use crate::ingest::{Checker, IngestMetrics, Rejected, Rejection};
use crate::store::{Store, Stored};

/// Largest number of readings stored in one transaction.
const BATCH: usize = 512;

/// Where the engine subscribes.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS settings, for `mqtts://`.
    pub tls: Option<TlsConfiguration>,
    /// Credentials.
    pub credentials: Option<(String, String)>,
    /// Client id (stable, so the broker keeps the session across restarts).
    pub client_id: String,
    /// Topic filter.
    pub filter: String,
}

/// What the live stream (`/api/v1/stream`) carries.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A reading was verified and stored.
    Reading {
        /// The meter.
        meter_id: String,
        /// Its sequence number.
        seq: u64,
        /// Lifetime import, Wh, if the reading carries it.
        import_wh: Option<u64>,
        /// Lifetime export, Wh, if the reading carries it.
        export_wh: Option<u64>,
        /// Grid power, W, if the reading carries it.
        power_w: Option<i32>,
    },
    /// An order was accepted (no owner: the book is public, its participants are not).
    Order {
        /// Slot.
        slot: u64,
        /// `buy` or `sell`.
        side: &'static str,
        /// Energy, Wh.
        energy_wh: u64,
        /// Limit, per kWh.
        price_per_kwh: u64,
    },
    /// Trades were made (continuously, or at gate closure).
    Trades {
        /// Slot.
        slot: u64,
        /// Number of trades.
        count: usize,
        /// Energy traded, Wh.
        energy_wh: u64,
        /// The uniform price, for a call auction.
        clearing_price: Option<u64>,
    },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Runs the ingest until `shutdown` turns true.
pub async fn run(
    subscription: Subscription,
    checker: Checker,
    store: Store,
    metrics: Arc<IngestMetrics>,
    live: broadcast::Sender<LiveEvent>,
    mut shutdown: watch::Receiver<bool>,
    subscribed: tokio::sync::oneshot::Sender<()>,
) {
    let mut subscribed = Some(subscribed);
    let mut options = MqttOptions::new(
        &subscription.client_id,
        &subscription.host,
        subscription.port,
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_manual_acks(true)
        // Larger than any envelope, so that an oversize message is rejected by the checks
        // (and recorded) instead of breaking the connection again on every redelivery.
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(1000);
    if let Some((user, password)) = &subscription.credentials {
        options.set_credentials(user, password);
    }
    if let Some(tls) = &subscription.tls {
        options.set_transport(Transport::tls_with_config(tls.clone()));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    // Unbounded on purpose: the broker bounds what is in flight (QoS 1 messages not yet
    // acknowledged), and this loop must never stop polling the connection, which is also what
    // carries the acknowledgements out. A bounded channel that fills would stall both.
    let (tx, rx) = mpsc::unbounded_channel::<Publish>();
    // Two stages, so that one batch is checked while the one before is being stored.
    let (checked_tx, checked_rx) = mpsc::channel::<CheckedBatch>(2);
    let checking = tokio::spawn(check_batches(rx, checker, checked_tx));
    let worker = tokio::spawn(store_batches(
        checked_rx,
        client.clone(),
        store,
        metrics,
        live,
    ));
    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    tracing::info!(target: "ingest", session = ack.session_present, "connected to broker");
                    if ack.session_present {
                        // The broker kept the subscription (and queued what arrived meanwhile).
                        if let Some(s) = subscribed.take() {
                            let _ = s.send(());
                        }
                    } else if let Err(e) = client.subscribe(&subscription.filter, QoS::AtLeastOnce).await {
                        tracing::error!(target: "ingest", "subscribe failed: {e}");
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some(s) = subscribed.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    if tx.send(p).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(target: "ingest", "broker connection: {e}; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => break,
                    }
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(tx);
    let _ = checking.await;
    let _ = worker.await;
    let _ = client.try_disconnect();
}

/// A batch of received messages with the outcome of their checks, in arrival order.
struct CheckedBatch {
    publishes: Vec<Publish>,
    accepted: Vec<SignedReading>,
    rejected: Vec<Rejected>,
    received: u64,
}

/// Stage one: takes up to [`BATCH`] received messages at a time and checks them (parse,
/// registered key, signature, clock) on the blocking pool, spread over the cores.
async fn check_batches(
    mut rx: mpsc::UnboundedReceiver<Publish>,
    checker: Checker,
    out: mpsc::Sender<CheckedBatch>,
) {
    let parts = std::thread::available_parallelism().map_or(1, usize::from);
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let received = now_ms();
        let chunk = batch.len().div_ceil(parts).max(1);
        let mut jobs = Vec::new();
        let mut rest = std::mem::take(&mut batch);
        while !rest.is_empty() {
            let tail = rest.split_off(chunk.min(rest.len()));
            let part = std::mem::replace(&mut rest, tail);
            let check = checker.clone();
            jobs.push(tokio::task::spawn_blocking(move || {
                let results: Vec<_> = part
                    .iter()
                    .map(|p| check.check(&p.topic, &p.payload, received))
                    .collect();
                (part, results)
            }));
        }
        let mut checked = CheckedBatch {
            publishes: Vec::new(),
            accepted: Vec::new(),
            rejected: Vec::new(),
            received,
        };
        for job in jobs {
            match job.await {
                Ok((part, results)) => {
                    checked.publishes.extend(part);
                    for result in results {
                        match result {
                            Ok(signed) => checked.accepted.push(signed),
                            Err(r) => checked.rejected.push(r),
                        }
                    }
                }
                // The part's messages stay unacknowledged; the broker delivers them again.
                Err(e) => tracing::error!(target: "ingest", "checker task failed: {e}"),
            }
        }
        if out.send(checked).await.is_err() {
            return;
        }
    }
}

/// Stage two: stores each checked batch in one transaction, records rejections, then
/// acknowledges the batch's messages to the broker.
async fn store_batches(
    mut rx: mpsc::Receiver<CheckedBatch>,
    client: AsyncClient,
    store: Store,
    metrics: Arc<IngestMetrics>,
    live: broadcast::Sender<LiveEvent>,
) {
    let mut last = HashMap::new();
    while let Some(batch) = rx.recv().await {
        let CheckedBatch {
            publishes,
            accepted,
            mut rejected,
            received,
        } = batch;
        // Store until it works: a reading is acknowledged to the broker only once stored.
        let outcomes = loop {
            match store.store_readings(&accepted, received, &mut last).await {
                Ok(outcomes) => break outcomes,
                Err(e) => {
                    tracing::error!(target: "ingest", "storing readings failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        for (signed, outcome) in accepted.iter().zip(outcomes) {
            let meter = signed.reading.meter_id.to_string();
            match outcome {
                Stored::Inserted => {
                    metrics.accepted.fetch_add(1, Ordering::Relaxed);
                    let r = &signed.reading;
                    let _ = live.send(LiveEvent::Reading {
                        meter_id: meter,
                        seq: r.seq,
                        import_wh: r.import_wh.ok_value(),
                        export_wh: r.export_wh.ok_value(),
                        power_w: r.power_w.ok_value(),
                    });
                }
                Stored::Duplicate => {
                    metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Stored::Conflicting => rejected.push(Rejected {
                    reason: Rejection::ConflictingDuplicate,
                    detail: format!(
                        "sequence number {} was already stored with different content",
                        signed.reading.seq
                    ),
                    meter: Some(meter),
                }),
                Stored::CounterRollback => rejected.push(Rejected {
                    reason: Rejection::CounterRollback,
                    detail: format!(
                        "a lifetime counter of sequence number {} is below an earlier reading's",
                        signed.reading.seq
                    ),
                    meter: Some(meter),
                }),
            }
        }
        for r in &rejected {
            metrics.reject(r.reason);
            tracing::debug!(target: "ingest", reason = r.reason.as_str(), meter = ?r.meter, "rejected: {}", r.detail);
        }
        if !rejected.is_empty()
            && let Err(e) = store.record_rejections(&rejected, received).await
        {
            tracing::error!(target: "ingest", "recording rejections failed: {e}");
        }
        for p in &publishes {
            if let Err(e) = client.ack(p).await {
                tracing::warn!(target: "ingest", "acknowledgement not sent: {e}");
            }
        }
    }
}
