//! `/metrics`: every counter the engine keeps, rendered in the Prometheus/OpenMetrics text
//! format by the maintained `prometheus-client` library (`Content-Type:
//! application/openmetrics-text`). Design: the counters stay plain atomics beside the code
//! that counts them; a scrape takes one [`Snapshot`] of them and a [`Collector`] encodes it,
//! so nothing on the hot paths knows about the exporter.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::ingest::Rejection;

/// One value with its labels.
type Labelled = Vec<(Vec<(&'static str, String)>, u64)>;

/// One metric family.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    values: Labelled,
}

/// Every value at the moment of a scrape.
#[derive(Debug, Default)]
pub struct Snapshot {
    families: Vec<Family>,
}

impl Snapshot {
    /// Adds a counter (the exporter appends `_total`).
    pub fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.labelled_counter(name, help, vec![(Vec::new(), value)]);
    }

    /// Adds a counter with one value per label set.
    pub fn labelled_counter(&mut self, name: &'static str, help: &'static str, values: Labelled) {
        self.families.push(Family {
            name,
            help,
            kind: MetricType::Counter,
            values,
        });
    }

    /// Adds a gauge.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.families.push(Family {
            name,
            help,
            kind: MetricType::Gauge,
            values: vec![(Vec::new(), value)],
        });
    }

    /// Adds the engine's state: ingest, market, tasks and chain.
    pub async fn of_engine(state: &crate::api::AppState) -> Self {
        let mut s = Self::default();
        let ingest = &state.ingest;
        s.counter(
            "gridshare_readings_accepted",
            "Signed readings verified and stored.",
            ingest.accepted.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_readings_duplicate",
            "Exact re-deliveries of stored readings, dropped.",
            ingest.duplicates.load(Ordering::Relaxed),
        );
        s.labelled_counter(
            "gridshare_readings_rejected",
            "Readings rejected, by reason (every one counted).",
            Rejection::ALL
                .iter()
                .map(|r| (vec![("reason", r.as_str().to_owned())], ingest.rejected(*r)))
                .collect(),
        );
        s.labelled_counter(
            "gridshare_readings_rejections_unrecorded",
            "Rejections counted but not written to the rejections table (sampling under a flood), by reason.",
            Rejection::ALL
                .iter()
                .map(|r| (vec![("reason", r.as_str().to_owned())], ingest.unrecorded(*r)))
                .collect(),
        );
        s.counter(
            "gridshare_readings_recovered",
            "Readings stored that filled a gap in their meter's sequence numbers (most sent again by the agent at the engine's request).",
            ingest.recovered.load(Ordering::Relaxed),
        );
        s.gauge(
            "gridshare_rejections_backlog",
            "Rejections waiting to be recorded while storage fails.",
            ingest.rejections_backlog.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_resend_requests",
            "Requests to meter agents to send missing readings again.",
            ingest.gaps.requests.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_resend_readings_requested",
            "Readings those requests asked for.",
            ingest.gaps.readings_requested.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_reading_gaps_given_up",
            "Gaps in meters' sequence numbers given up as unfillable (older than the agents keep readings).",
            ingest.gaps.given_up.load(Ordering::Relaxed),
        );
        // A scrape while storage fails reports no gap totals rather than zeros.
        if let Ok(t) = state.store.gap_totals().await {
            s.gauge(
                "gridshare_reading_gaps_open",
                "Gaps in meters' sequence numbers still asked for (GET /api/v1/operator/gaps).",
                t.open_gaps,
            );
            s.gauge(
                "gridshare_readings_missing",
                "Readings missing in those gaps.",
                t.open_missing,
            );
            s.gauge(
                "gridshare_meters_with_gaps",
                "Meters with readings missing that are still asked for.",
                t.meters_with_open_gaps,
            );
            s.gauge(
                "gridshare_reading_gaps_unfillable",
                "Gaps given up as unfillable: their readings are lost.",
                t.unfillable_gaps,
            );
            s.gauge(
                "gridshare_readings_lost",
                "Readings missing in unfillable gaps.",
                t.unfillable_missing,
            );
            s.gauge(
                "gridshare_meters_with_unfillable_gaps",
                "Meters with at least one unfillable gap.",
                t.meters_with_unfillable_gaps,
            );
        }
        let m = &state.market.metrics;
        s.counter(
            "gridshare_orders_accepted",
            "Orders accepted (on disk before the answer).",
            m.orders_accepted.load(Ordering::Relaxed),
        );
        s.labelled_counter(
            "gridshare_orders_rejected",
            "Orders, amends and cancels refused, by reason.",
            m.orders_rejected
                .snapshot()
                .into_iter()
                .map(|(r, n)| (vec![("reason", r.to_owned())], n))
                .collect(),
        );
        s.counter(
            "gridshare_trades",
            "Trades made.",
            m.trades.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_gate_closures",
            "Gate closures (call auctions cleared, orders expired).",
            m.gate_closures.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_gate_closure_microseconds",
            "Time spent clearing at gate closure, microseconds in total (divide by gate closures for the mean).",
            m.gate_closure_micros.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_slots_settled",
            "Slots settled in the ledger against the signed readings.",
            m.slots_settled.load(Ordering::Relaxed),
        );
        s.gauge(
            "gridshare_settlement_lag_seconds",
            "Seconds between the latest settled slot's settlement time and its settlement.",
            m.settlement_lag_s.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_deliveries_capped",
            "Meter deliveries settled at their approved capacity bound instead of what the counters said.",
            m.deliveries_capped.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_meters_disputed",
            "Meters whose delivery in a settled slot could not be established: their accounts were settled at traded quantities with no imbalance (see GET /api/v1/operator/disputes).",
            m.meters_disputed.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_settlement_failures",
            "Attempts to settle a slot that failed; the slot is tried again and later slots settle on time.",
            m.settlement_failures.load(Ordering::Relaxed),
        );
        s.gauge(
            "gridshare_open_books",
            "Slots with an open order book.",
            u64::try_from(state.market.open_books().await).unwrap_or(u64::MAX),
        );
        let chain = &state.chain;
        s.gauge(
            "gridshare_chain_outbox_depth",
            "Settlement batches in the chain outbox not yet confirmed.",
            chain.outbox_depth.load(Ordering::Relaxed),
        );
        s.gauge(
            "gridshare_chain_batches_rejected",
            "Settlement batches the contract refused; the first one holds back every later batch (see GET /api/v1/settlements, market-engine settlement resend).",
            chain.rejected.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_chain_batches_confirmed",
            "Settlement batches confirmed on chain (in a block the configured number of confirmations deep).",
            chain.confirmed.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_chain_refusals",
            "Times the settlement contract refused a batch.",
            chain.refusals.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_chain_batches_fell_back",
            "Batches sent again because their transaction was dropped, reverted in its block, or its block was reorganised away.",
            chain.fell_back.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_chain_accounts_opened",
            "Custodial accounts the engine opened on chain with their keys' OpenAccount signatures before a batch naming them.",
            chain.accounts_opened.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_chain_account_open_failures",
            "Custodial accounts the engine could not open on chain (the batch waits, refused AccountNotOpened, and is tried again).",
            chain.account_open_failures.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_chain_money_events",
            "Deposits, withdrawal requests, cancellations and payouts read from the Settlement contract's events (confirmed blocks only) and applied to the engine's books.",
            chain.money_events.load(Ordering::Relaxed),
        );
        s.gauge(
            "gridshare_chain_followed_block",
            "The last block whose Settlement events the engine applied.",
            chain.followed_block.load(Ordering::Relaxed),
        );
        s.gauge(
            "gridshare_chain_follow_behind_blocks",
            "Confirmed blocks whose Settlement events the engine has not read yet.",
            chain.follow_behind.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_chain_follow_failures",
            "Steps of the Settlement event follower that failed (node or database away, or a reorganisation deeper than [chain] confirmations); tried again.",
            chain.follow_failures.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_chain_deposits_mirrored",
            "Operator-recorded deposits (money that arrived off chain) that the engine deposited on chain for their household with depositFor.",
            chain.deposits_mirrored.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_chain_deposit_mirror_failures",
            "Attempts to deposit an operator-recorded deposit on chain that failed (the operator key lacks tokens or gas, the node is away); tried again.",
            chain.deposit_mirror_failures.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_watcher_slashes",
            "Meters the engine's fraud watcher reported to MeterStaking and had slashed (two signed readings that cannot both be true).",
            chain.slashes.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_epoch_proofs",
            "Epochs the engine proved to MeterStaking for meters whose owner made it their delegate.",
            chain.proofs.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_epoch_proof_failures",
            "Epoch proofs that failed (refused by the contract, or not sent); tried again while the proof window is open.",
            chain.proof_failures.load(Ordering::Relaxed),
        );
        s.gauge(
            "gridshare_epoch_proofs_failing",
            "Meters whose oldest unproven epoch failed to be proven in the latest round.",
            chain.proofs_failing.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_chain_flush_failures",
            "Outbox steps that failed because the database or the chain could not be asked (retried).",
            chain.failures.load(Ordering::Relaxed),
        );
        let auth = &state.auth.metrics;
        s.counter(
            "gridshare_logins_succeeded",
            "Logins with the right name and password.",
            auth.logins_succeeded.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_logins_failed",
            "Logins with a wrong name or password.",
            auth.logins_failed.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_logins_throttled",
            "Logins answered 429 because their name or address failed too often.",
            auth.logins_throttled.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_password_hashing_busy",
            "Logins and sign-ups answered 503 because the password hashing queue was full.",
            auth.hashing_busy.load(Ordering::Relaxed),
        );
        s.counter(
            "gridshare_password_hashes",
            "Argon2 computations started.",
            auth.password_hashes.load(Ordering::Relaxed),
        );
        s.gauge(
            "gridshare_password_hashes_running",
            "Argon2 computations running now.",
            auth.hashes_running.load(Ordering::Relaxed),
        );
        let broker = &state.broker_auth;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        s.labelled_counter(
            "gridshare_broker_logins",
            "Logins at the embedded broker, by outcome.",
            vec![
                (
                    vec![("outcome", "accepted".to_owned())],
                    load(&broker.logins_accepted),
                ),
                (
                    vec![("outcome", "refused".to_owned())],
                    load(&broker.logins_refused),
                ),
            ],
        );
        s.labelled_counter(
            "gridshare_broker_acl_denials",
            "Packets refused by the embedded broker's access rules, by action (the client is disconnected).",
            vec![
                (vec![("action", "publish".to_owned())], load(&broker.denied_publish)),
                (vec![("action", "subscribe".to_owned())], load(&broker.denied_subscribe)),
                (vec![("action", "will".to_owned())], load(&broker.denied_will)),
            ],
        );
        s.counter(
            "gridshare_broker_sessions_revoked",
            "Broker sessions ended because their credentials were revoked or issued anew.",
            load(&broker.sessions_revoked),
        );
        s.labelled_counter(
            "gridshare_task_restarts",
            "Background tasks restarted after a panic, by task.",
            state
                .tasks
                .restarts
                .snapshot()
                .into_iter()
                .map(|(t, n)| (vec![("task", t.to_owned())], n))
                .collect(),
        );
        s
    }

    /// The OpenMetrics text.
    pub fn render(self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            let value =
                |e: prometheus_client::encoding::MetricEncoder<'_>, v: u64| match family.kind {
                    MetricType::Gauge => {
                        ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(e)
                    }
                    _ => ConstCounter::new(v).encode(e),
                };
            match family.values.as_slice() {
                [(labels, v)] if labels.is_empty() => value(metric, *v)?,
                values => {
                    for (labels, v) in values {
                        value(metric.encode_family(labels)?, *v)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Counters of the chain outbox driver.
#[derive(Debug, Default)]
pub struct ChainMetrics {
    /// Batches in the outbox not yet confirmed, after the latest step.
    pub outbox_depth: std::sync::atomic::AtomicU64,
    /// Of those, batches the contract refused (the first blocks every later one).
    pub rejected: std::sync::atomic::AtomicU64,
    /// Batches confirmed.
    pub confirmed: std::sync::atomic::AtomicU64,
    /// Refusals by the contract.
    pub refusals: std::sync::atomic::AtomicU64,
    /// Batches whose transaction was dropped or whose block was reorganised away.
    pub fell_back: std::sync::atomic::AtomicU64,
    /// Outbox steps that failed (the database or the chain could not be asked; retried).
    pub failures: std::sync::atomic::AtomicU64,
    /// Meters the engine's fraud watcher had slashed.
    pub slashes: std::sync::atomic::AtomicU64,
    /// Custodial accounts the engine opened on chain (`openAccountFor`).
    pub accounts_opened: std::sync::atomic::AtomicU64,
    /// Custodial accounts it could not open (tried again at the next step).
    pub account_open_failures: std::sync::atomic::AtomicU64,
    /// Epochs the engine proved for its meters ([`crate::prover`]).
    pub proofs: std::sync::atomic::AtomicU64,
    /// Proofs that failed (refused by the contract, or not sent); tried again.
    pub proof_failures: std::sync::atomic::AtomicU64,
    /// Meters whose oldest unproven epoch is failing, after the latest round.
    pub proofs_failing: std::sync::atomic::AtomicU64,
    /// Deposits, withdrawal requests, cancellations and payouts read from the contract's
    /// events and applied to the books ([`crate::chain::follow`]).
    pub money_events: std::sync::atomic::AtomicU64,
    /// The last block whose events the engine applied.
    pub followed_block: std::sync::atomic::AtomicU64,
    /// Confirmed blocks not yet read, after the latest step.
    pub follow_behind: std::sync::atomic::AtomicU64,
    /// Steps of the event follower that failed (the node, the database, or a reorganisation
    /// deeper than `confirmations`).
    pub follow_failures: std::sync::atomic::AtomicU64,
    /// Operator-recorded deposits deposited on chain for their household (`depositFor`).
    pub deposits_mirrored: std::sync::atomic::AtomicU64,
    /// Attempts to do so that failed (tried again at the next step).
    pub deposit_mirror_failures: std::sync::atomic::AtomicU64,
}
