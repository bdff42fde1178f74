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

use gridshare_core::reading::MAX_ENVELOPE_LEN;

use crate::ingest::{Accepted, Checker, IngestMetrics, Rejected, Rejection};
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
    /// Where the engine's requests to send missing readings again go out: this
    /// subscription's connection, once it exists.
    pub resend: Arc<crate::gaps::ResendLink>,
}

/// What the live stream (`/api/v1/stream`) carries.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A reading was verified and stored. Only its owner's stream carries it.
    Reading {
        /// The meter's owner (not sent: the stream is filtered by it).
        #[serde(skip)]
        account: i64,
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
        /// Battery state of charge, basis points, if the reading carries it.
        soc_bp: Option<u16>,
        /// Solar power, W, if the reading carries it.
        pv_power_w: Option<i32>,
        /// Battery power, W, positive = charging, if the reading carries it.
        battery_power_w: Option<i32>,
        /// Device time of the reading, ms since the epoch.
        timestamp_ms: u64,
    },
    /// An order was accepted. Everyone sees the book's side, size and price; only the
    /// owner's stream also carries the order id.
    Order {
        /// The owner (not sent).
        #[serde(skip)]
        account: i64,
        /// The order id, on the owner's stream only (`None` on the public stream).
        #[serde(skip_serializing_if = "Option::is_none")]
        order_id: Option<u64>,
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
    /// What the neighbourhood's meters report together, anonymised: sums over the latest
    /// reading of every meter heard from in the last minute, sent only when at least
    /// [`crate::pipeline::MIN_METERS_IN_AGGREGATE`] meters contribute.
    Neighbourhood {
        /// Meters contributing.
        meters: usize,
        /// Sum of grid import power, W.
        import_w: u64,
        /// Sum of grid export power, W.
        export_w: u64,
    },
}

/// Fewest meters whose powers the public stream sums: fewer would let a neighbour read one
/// household's consumption from the aggregate.
pub const MIN_METERS_IN_AGGREGATE: usize = 3;

/// Deletes recorded rejections older than `keep_days`, once an hour.
pub async fn expire_rejections(store: Store, keep_days: u32, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let cutoff = now_ms().saturating_sub(u64::from(keep_days) * 86_400_000);
        match store.delete_rejections_before(cutoff).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(target: "ingest", deleted = n, keep_days, "old rejection records deleted")
            }
            Err(e) => tracing::warn!(target: "ingest", "deleting old rejection records: {e}"),
        }
    }
}

/// How often the public stream gets the neighbourhood aggregate.
const NEIGHBOURHOOD_EVERY: Duration = Duration::from_secs(5);

/// A meter counts in the aggregate while its latest reading is this recent.
const NEIGHBOURHOOD_WINDOW: Duration = Duration::from_secs(60);

/// Publishes [`LiveEvent::Neighbourhood`] on `live` every few seconds: the sums of the latest
/// grid power of every meter heard from in the last minute, when enough meters contribute
/// that no single household can be read from it.
pub async fn neighbourhood(live: broadcast::Sender<LiveEvent>, mut stop: watch::Receiver<bool>) {
    let mut rx = live.subscribe();
    let mut latest: HashMap<String, (i32, std::time::Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(NEIGHBOURHOOD_EVERY);
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Ok(LiveEvent::Reading { meter_id, power_w: Some(p), .. }) => {
                    latest.insert(meter_id, (p, std::time::Instant::now()));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                latest.retain(|_, (_, at)| at.elapsed() < NEIGHBOURHOOD_WINDOW);
                if latest.len() >= MIN_METERS_IN_AGGREGATE {
                    let sum = |f: fn(i32) -> u64| latest.values().map(|(p, _)| f(*p)).sum::<u64>();
                    let _ = live.send(LiveEvent::Neighbourhood {
                        meters: latest.len(),
                        import_w: sum(|p| u64::from(p.max(0).unsigned_abs())),
                        export_w: sum(|p| u64::from(p.min(0).unsigned_abs())),
                    });
                }
            }
            _ = stop.changed() => return,
        }
    }
}

impl LiveEvent {
    /// What a subscriber may see of this event: `account` is the subscriber's (`None` for an
    /// anonymous one). A household sees its own readings and its orders with their ids;
    /// everyone sees the book's orders without owner, trades and the neighbourhood aggregate.
    pub fn visible_to(&self, account: Option<i64>) -> Option<Self> {
        match self {
            Self::Reading { account: owner, .. } => (Some(*owner) == account).then(|| self.clone()),
            Self::Order {
                account: owner,
                slot,
                side,
                energy_wh,
                price_per_kwh,
                order_id,
            } => Some(Self::Order {
                account: *owner,
                order_id: if Some(*owner) == account {
                    *order_id
                } else {
                    None
                },
                slot: *slot,
                side,
                energy_wh: *energy_wh,
                price_per_kwh: *price_per_kwh,
            }),
            Self::Trades { .. } | Self::Neighbourhood { .. } => Some(self.clone()),
        }
    }
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
    let (tx, rx) = mpsc::unbounded_channel::<(Publish, Option<usize>)>();
    // Two stages, so that one batch is checked while the one before is being stored.
    let (checked_tx, checked_rx) = mpsc::channel::<CheckedBatch>(2);
    let checking = tokio::spawn(check_batches(rx, checker, checked_tx));
    let worker = tokio::spawn(store_batches(
        checked_rx,
        client.clone(),
        store,
        metrics,
        live,
        shutdown.clone(),
    ));
    subscription.resend.set(client.clone());
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
                Ok(Event::Incoming(Incoming::Publish(mut p))) => {
                    // An oversize payload is dropped here, not queued: a flood of large junk
                    // would otherwise sit in memory until checked. The message stays in the
                    // queue (empty) so that acknowledgements keep the broker's order.
                    let oversize = (p.payload.len() > MAX_ENVELOPE_LEN).then(|| {
                        let len = p.payload.len();
                        p.payload = Default::default();
                        len
                    });
                    if tx.send((p, oversize)).is_err() {
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

/// Which rejections are written to the `rejections` table. Every rejection is counted
/// (`/metrics`), but under a flood only the first [`RECORDED_PER_KEY`] per reason and meter and
/// [`RECORDED_PER_REASON`] per reason in each [`SAMPLING_WINDOW`] are recorded, so junk can
/// neither fill the disk nor bury the evidence of a real fault; what is left out is counted
/// as unrecorded.
#[derive(Debug)]
struct RejectionSampler {
    window_start: std::time::Instant,
    per_key: HashMap<(Rejection, String), u32>,
    per_reason: HashMap<Rejection, u32>,
}

/// Rejections recorded per reason and meter in one window.
const RECORDED_PER_KEY: u32 = 10;
/// Rejections recorded per reason in one window (all meters).
const RECORDED_PER_REASON: u32 = 200;
/// The sampling window.
const SAMPLING_WINDOW: Duration = Duration::from_secs(60);
/// Rejections kept in memory while storage fails (two sampling windows' worth at the most
/// every reason records); beyond them, counted as unrecorded.
const REJECTIONS_BACKLOG: usize = 6_000;

impl Default for RejectionSampler {
    fn default() -> Self {
        Self {
            window_start: std::time::Instant::now(),
            per_key: HashMap::new(),
            per_reason: HashMap::new(),
        }
    }
}

impl RejectionSampler {
    /// Whether `r` is recorded.
    fn admit(&mut self, r: &Rejected) -> bool {
        if self.window_start.elapsed() >= SAMPLING_WINDOW {
            *self = Self::default();
        }
        let reason = self.per_reason.entry(r.reason).or_default();
        if *reason >= RECORDED_PER_REASON {
            return false;
        }
        // At most RECORDED_PER_REASON keys per reason exist, so the map stays small whatever
        // meter ids a flood makes up.
        let key = self
            .per_key
            .entry((r.reason, r.meter.clone().unwrap_or_default()))
            .or_default();
        if *key >= RECORDED_PER_KEY {
            return false;
        }
        *key += 1;
        *reason += 1;
        true
    }
}

/// A batch of received messages with the outcome of their checks, in arrival order.
struct CheckedBatch {
    publishes: Vec<Publish>,
    accepted: Vec<Accepted>,
    rejected: Vec<Rejected>,
    received: u64,
}

/// Stage one: takes up to [`BATCH`] received messages at a time and checks them (parse,
/// registered key, signature, clock) on the blocking pool, spread over the cores.
async fn check_batches(
    mut rx: mpsc::UnboundedReceiver<(Publish, Option<usize>)>,
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
                    .map(|(p, oversize)| match oversize {
                        Some(len) => Err(Rejected {
                            reason: Rejection::Oversize,
                            meter: crate::ingest::meter_of_topic(&p.topic).map(str::to_owned),
                            detail: format!("{len} bytes, limit {MAX_ENVELOPE_LEN}"),
                        }),
                        None => check.check(&p.topic, &p.payload, received),
                    })
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
                    // Only what the acknowledgement needs is kept: the payload goes now.
                    checked.publishes.extend(part.into_iter().map(|(mut p, _)| {
                        p.payload = Default::default();
                        p
                    }));
                    for result in results {
                        match result {
                            Ok(accepted) => checked.accepted.push(accepted),
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
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = HashMap::new();
    let mut sampler = RejectionSampler::default();
    let mut unrecorded: Vec<(u64, Rejected)> = Vec::new();
    while let Some(batch) = rx.recv().await {
        let CheckedBatch {
            publishes,
            accepted,
            mut rejected,
            received,
        } = batch;
        // Store until it works: a reading is acknowledged to the broker only once stored. When
        // the engine stops meanwhile, the batch stays unacknowledged and the broker delivers it
        // again to the next run.
        let outcomes = loop {
            match store.store_readings(&accepted, received, &mut last).await {
                Ok(outcomes) => break outcomes,
                Err(e) => {
                    tracing::error!(target: "ingest", "storing readings failed, retrying: {e}");
                    if *shutdown.borrow() {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        for (accepted, outcome) in accepted.iter().zip(outcomes) {
            let signed = &accepted.signed;
            let meter = signed.reading.meter_id.to_string();
            if outcome == Stored::Recovered {
                metrics.recovered.fetch_add(1, Ordering::Relaxed);
            }
            match outcome {
                Stored::Inserted | Stored::Recovered => {
                    metrics.accepted.fetch_add(1, Ordering::Relaxed);
                    let r = &signed.reading;
                    let _ = live.send(LiveEvent::Reading {
                        account: accepted.account,
                        meter_id: meter,
                        seq: r.seq,
                        import_wh: r.import_wh.ok_value(),
                        export_wh: r.export_wh.ok_value(),
                        power_w: r.power_w.ok_value(),
                        soc_bp: r.soc_bp.ok_value(),
                        pv_power_w: r.flow.pv_power_w.ok_value(),
                        battery_power_w: r.flow.battery_power_w.ok_value(),
                        timestamp_ms: r.timestamp_ms,
                    });
                }
                Stored::Duplicate => {
                    metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Stored::Conflicting => rejected.push(Rejected {
                    reason: crate::ingest::Rejection::ConflictingDuplicate,
                    detail: format!(
                        "sequence number {} was already stored with different content",
                        signed.reading.seq
                    ),
                    meter: Some(meter),
                }),
                Stored::Implausible(reason, detail) => rejected.push(Rejected {
                    reason,
                    detail,
                    meter: Some(meter),
                }),
            }
        }
        for r in &rejected {
            metrics.reject(r.reason);
            tracing::debug!(target: "ingest", reason = r.reason.as_str(), meter = ?r.meter, "rejected: {}", r.detail);
        }
        unrecorded.extend(rejected.into_iter().filter_map(|r| {
            let keep = sampler.admit(&r);
            if !keep {
                metrics.skip_recording(r.reason, 1);
            }
            keep.then_some((received, r))
        }));
        // While storage fails, rejections wait (the oldest kept, within a bound) and are
        // recorded with the next batch that can be.
        if !unrecorded.is_empty() {
            match store.record_rejections(&unrecorded).await {
                Ok(()) => unrecorded.clear(),
                Err(e) => {
                    tracing::error!(target: "ingest", waiting = unrecorded.len(), "recording rejections failed, kept for the next batch: {e}");
                    if unrecorded.len() > REJECTIONS_BACKLOG {
                        for (_, r) in unrecorded.drain(REJECTIONS_BACKLOG..) {
                            metrics.skip_recording(r.reason, 1);
                        }
                    }
                }
            }
            metrics.rejections_backlog.store(
                u64::try_from(unrecorded.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        for p in &publishes {
            if let Err(e) = client.ack(p).await {
                tracing::warn!(target: "ingest", "acknowledgement not sent: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(reason: Rejection, meter: &str) -> Rejected {
        Rejected {
            reason,
            meter: Some(meter.to_owned()),
            detail: String::new(),
        }
    }

    #[test]
    fn the_sampler_records_a_bounded_sample_whatever_meter_ids_a_flood_makes_up() {
        let mut sampler = RejectionSampler::default();
        let admitted = (0..10_000)
            .filter(|i| sampler.admit(&rejected(Rejection::UnknownMeter, &format!("fake-{i}"))))
            .count();
        assert_eq!(admitted, 200, "per reason and window");
        assert!(
            sampler.per_key.len() <= 200,
            "memory bounded by the admitted keys"
        );
        // Another reason still gets its own sample; one meter at most 10 per reason.
        let one_meter = (0..100)
            .filter(|_| sampler.admit(&rejected(Rejection::Malformed, "m")))
            .count();
        assert_eq!(one_meter, 10);
    }
}
