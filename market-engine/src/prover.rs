//! Proofs of every finished epoch, submitted by the engine from the signed readings it already
//! holds, for every staked meter whose owner made the engine's operator key its delegate in
//! `MeterStaking` (`gridshare delegate <meter> <engine address>`). Without them a meter's
//! settled sales earn nothing: the contract credits `min(sold, proven export, capacity) ×
//! coverage`, and only the owner or its delegate may prove.
//!
//! Each epoch is proven on its own, oldest first, contiguous from the meter's last proven
//! reading (the contract keeps it), `[chain] prove_after_s` after it ends so late readings are
//! in, and within its proof window. A proof the contract refuses, or that cannot be sent, is
//! tried again `prove_retry_s` later while the window is open; later epochs of that meter wait
//! behind it, so one epoch's export is never credited to the next.
//!
//! Design: what is proven is read back from the chain on every round — the meter's last proven
//! sequence number, time and counters — so a restart, even between sending a proof and
//! recording its receipt, can neither prove a reading twice (the contract would refuse it as
//! not contiguous, and the planner never offers it) nor skip one. The `epoch_proofs` table
//! holds only what the chain cannot say: what was tried, why it failed, when to try again.
//! Failures are logged, counted on /metrics and shown in the meter's stake
//! (`GET /api/v1/meters/{meter_id}/stake`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use alloy::primitives::Address;
use gridshare_contracts::chain::{Chain, ChainError};
use gridshare_contracts::staking::{StakingClient, describe, text_id};
use gridshare_core::reading::SignedReading;
use gridshare_operator::proof::{LastProven, PlanError, ProofPlan, Schedule, plan_epoch};
use tokio::sync::watch;

use crate::chain::{ChainHandle, ChainSettler, SettlerError};
use crate::metrics::ChainMetrics;
use crate::store::settlement::{ProofAttempt, ProofStatus};
use crate::store::{Store, StoreError};

/// Readings fetched on each side of an epoch boundary: enough to step over a few whose clock
/// was not synchronised or whose counters were not readable.
const BOUNDARY_READINGS: i64 = 32;

/// How the prover paces itself (`[chain]` keys `prove_after_s`, `prove_retry_s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProverSettings {
    /// Seconds after an epoch ends before it is proven (at most half the proof window).
    pub after_s: u64,
    /// Seconds before a failed proof is tried again.
    pub retry_s: u64,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Epochs proven.
    pub proved: u64,
    /// Proofs that failed (refused by the contract or not sent).
    pub failed: u64,
    /// Meters whose oldest unproven epoch is failing, after the round.
    pub failing: u64,
    /// Chain time (s) at which the next round has something to do.
    pub next_due_s: u64,
}

/// Seconds between looks at a chain whose Settlement credits no staking contract (one may be
/// set later).
const IDLE_S: u64 = 600;

/// Seconds before a round that could not read the database or the chain runs again.
const ROUND_RETRY_S: u64 = 10;

/// Keeps an attempt at proving `meter`'s `epoch`.
async fn record(
    store: &Store,
    meter: &str,
    epoch: u64,
    outcome: Attempt<'_>,
    now_ms: u64,
) -> Result<(), StoreError> {
    let (status, end_seq, tx, credited, error, next) = match outcome {
        Attempt::Sending { end_seq } => (ProofStatus::Sending, end_seq, None, None, None, now_ms),
        Attempt::Proved {
            end_seq,
            tx,
            credited_wh,
        } => (
            ProofStatus::Proved,
            end_seq,
            Some(tx),
            Some(credited_wh),
            None,
            now_ms,
        ),
        Attempt::Failed {
            end_seq,
            error,
            retry_at_ms,
        } => (
            ProofStatus::Failed,
            end_seq,
            None,
            None,
            Some(error),
            retry_at_ms,
        ),
    };
    let attempt = ProofAttempt {
        status,
        end_seq,
        tx_hash: tx,
        credited_wh: credited,
        error,
        next_attempt_ms: next,
    };
    store.record_proof(meter, epoch, attempt, now_ms).await
}

enum Attempt<'a> {
    Sending {
        end_seq: u64,
    },
    Proved {
        end_seq: u64,
        tx: String,
        credited_wh: u64,
    },
    Failed {
        end_seq: u64,
        error: &'a str,
        retry_at_ms: u64,
    },
}

/// When a failed proof of `epoch` may be tried again (chain time, s), if it failed.
async fn retry_at(store: &Store, meter: &str, epoch: u64) -> Result<Option<u64>, StoreError> {
    Ok(store
        .proof_retry_at_ms(meter, epoch)
        .await?
        .map(|ms| ms / 1000))
}

/// Marks a proof sent before a restart as proved when the chain has it: the meter's last
/// proven reading is at or past the reading that proof ended at.
async fn settle_sending(store: &Store, meter: &str, proven_seq: u64) -> Result<(), StoreError> {
    store.mark_sent_proofs_proved(meter, proven_seq).await
}

/// The stored readings of `meter` around `epoch`: the last ones inside it after
/// `from_ms`, and for a key's first proof the last ones before it and the first ones in it.
async fn readings_near(
    store: &Store,
    meter: &str,
    schedule: Schedule,
    epoch: u64,
    last: Option<LastProven>,
) -> Result<Vec<SignedReading>, StoreError> {
    let starts_ms = (schedule.genesis + epoch * schedule.epoch_duration) * 1000;
    let ends_ms = starts_ms + schedule.epoch_duration * 1000;
    let from_ms = last.map_or(starts_ms, |l| l.timestamp_ms.max(starts_ms));
    let query = |lo: u64, hi: u64, newest: bool| {
        store.readings_taken_between(meter, lo, hi, BOUNDARY_READINGS, newest)
    };
    let mut envelopes = query(from_ms, ends_ms, true).await?;
    if last.is_none() {
        envelopes.extend(query(0, starts_ms, true).await?);
        envelopes.extend(query(starts_ms, ends_ms, false).await?);
    }
    // Stored readings passed the ingest's checks; one that no longer parses is skipped.
    Ok(envelopes
        .iter()
        .filter_map(|e| SignedReading::from_json(e).ok())
        .collect())
}

/// The chain time now: the latest block's, or the wall clock when blocks are older (the next
/// block takes the wall clock).
async fn chain_now<C: Chain>(chain: &C) -> Result<u64, ChainError> {
    let block = chain.timestamp().await?;
    Ok(block.max(crate::pipeline::now_ms() / 1000))
}

/// Proves what is due: for every meter the engine knows whose owner made `me` its delegate
/// (or that `me` owns), each finished epoch in turn from its last proven reading, on the
/// `MeterStaking` contract at `staking`.
pub async fn round<C: Chain>(
    store: &Store,
    chain: &C,
    staking: Address,
    me: Address,
    settings: ProverSettings,
) -> Result<Round, SettlerError> {
    let client = StakingClient::new(chain, staking);
    let (genesis, epoch_duration, proof_window) = client
        .schedule()
        .await
        .map_err(SettlerError::read("MeterStaking.schedule"))?;
    let schedule = Schedule {
        genesis,
        epoch_duration,
        proof_window,
    };
    let after_s = settings.after_s.min(proof_window / 2);
    let now = chain_now(chain)
        .await
        .map_err(SettlerError::read("the chain's time"))?;
    let current = now.saturating_sub(genesis) / epoch_duration.max(1);
    let ends = |e: u64| genesis + (e + 1) * epoch_duration;
    let mut out = Round {
        next_due_s: ends(current) + after_s,
        ..Round::default()
    };
    let meters = store.meters().await?;
    for row in meters.iter().filter(|m| m.approval.is_some()) {
        let Ok(id) = text_id(&row.meter_id) else {
            continue;
        };
        let m = client
            .meter(id)
            .await
            .map_err(SettlerError::read("MeterStaking.meters"))?;
        let operated = m.owner == me || (m.delegate == me && me != Address::ZERO);
        if m.owner == Address::ZERO || !operated || !m.active || !m.attested || m.slashed {
            continue;
        }
        if m.bondedSince == 0 {
            continue;
        }
        // The first epoch the stake was bonded through from its start.
        let bonded = m.bondedSince.saturating_sub(genesis);
        let first_earning = bonded.div_ceil(epoch_duration);
        // The oldest epoch whose proof window is still open: ends(e) + window > now.
        let open_from = now.saturating_sub(genesis + proof_window) / epoch_duration.max(1);
        let mut last = (m.lastTimestampMs != 0).then_some(LastProven {
            seq: m.lastSeq,
            timestamp_ms: m.lastTimestampMs,
            export_wh: m.lastExportWh,
            import_wh: m.lastImportWh,
        });
        if let Some(l) = last {
            settle_sending(store, &row.meter_id, l.seq).await?;
        }
        let proven_epoch = last.and_then(|l| schedule.epoch_of(l.timestamp_ms));
        let from = first_earning.max(open_from).max(proven_epoch.unwrap_or(0));
        let mut epoch = from;
        while epoch < current && ends(epoch) + after_s <= now {
            if !schedule.provable(epoch, now) {
                epoch += 1;
                continue;
            }
            if let Some(at) = retry_at(store, &row.meter_id, epoch).await?
                && at > now
            {
                out.failing += 1;
                out.next_due_s = out.next_due_s.min(at);
                break;
            }
            let readings = readings_near(store, &row.meter_id, schedule, epoch, last).await?;
            let plan = match plan_epoch(&readings, last, schedule, epoch) {
                Ok(plan) => plan,
                Err(PlanError::NothingToProve | PlanError::NoStart) => {
                    epoch += 1;
                    continue;
                }
            };
            match prove(store, &client, me, id, &row.meter_id, &plan, settings, now).await? {
                Ok(()) => {
                    out.proved += 1;
                    let (export_wh, import_wh) = (
                        plan.end.reading.export_wh.value().unwrap_or(0),
                        plan.end.reading.import_wh.value().unwrap_or(0),
                    );
                    last = Some(LastProven {
                        seq: plan.end.reading.seq,
                        timestamp_ms: plan.end.reading.timestamp_ms,
                        export_wh,
                        import_wh,
                    });
                    epoch += 1;
                }
                Err(retry_at_s) => {
                    out.failed += 1;
                    out.failing += 1;
                    out.next_due_s = out.next_due_s.min(retry_at_s);
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Sends one proof. The outer error is the database's (the round stops); the inner one says
/// the proof failed and when to try again (chain time, s).
#[allow(clippy::too_many_arguments)]
async fn prove<C: Chain>(
    store: &Store,
    client: &StakingClient<C>,
    me: Address,
    id: alloy::primitives::B256,
    meter: &str,
    plan: &ProofPlan,
    settings: ProverSettings,
    now: u64,
) -> Result<Result<(), u64>, SettlerError> {
    let end_seq = plan.end.reading.seq;
    let wall_ms = crate::pipeline::now_ms();
    record(
        store,
        meter,
        plan.epoch,
        Attempt::Sending { end_seq },
        wall_ms,
    )
    .await?;
    let arg = |r: &SignedReading| {
        (
            alloy::primitives::Bytes::copy_from_slice(&r.encoded()),
            alloy::primitives::Bytes::copy_from_slice(&r.signature.0),
        )
    };
    let sent = client
        .prove_epoch(
            me,
            id,
            plan.start.as_ref().map(arg).unwrap_or_default(),
            arg(&plan.end),
        )
        .await;
    match sent {
        Ok(outcome) => {
            let credited = client
                .credit(id, plan.epoch)
                .await
                .map(|c| c.creditedWh)
                .unwrap_or(0);
            tracing::info!(target: "prover", meter, epoch = plan.epoch, end_seq, credited_wh = credited, gas = outcome.gas_used, "epoch proven");
            record(
                store,
                meter,
                plan.epoch,
                Attempt::Proved {
                    end_seq,
                    tx: outcome.tx_hash.to_string(),
                    credited_wh: credited,
                },
                crate::pipeline::now_ms(),
            )
            .await?;
            Ok(Ok(()))
        }
        Err(e) => {
            let reason = describe(&e);
            let retry_s = now + settings.retry_s;
            tracing::warn!(target: "prover", meter, epoch = plan.epoch, end_seq, "proof failed, tried again in {}s: {reason}", settings.retry_s);
            record(
                store,
                meter,
                plan.epoch,
                Attempt::Failed {
                    end_seq,
                    error: &reason,
                    retry_at_ms: retry_s * 1000,
                },
                wall_ms,
            )
            .await?;
            Ok(Err(retry_s))
        }
    }
}

/// One round on the settler's chain, as the engine's operator key; `None` when its Settlement
/// credits no staking contract (nothing to prove).
pub async fn step(
    settler: &ChainSettler,
    store: &Store,
    settings: ProverSettings,
) -> Result<Option<Round>, SettlerError> {
    async fn on<C: Chain>(
        s: &gridshare_contracts::settlement::ChainSettlement<C>,
        store: &Store,
        settings: ProverSettings,
    ) -> Result<Option<Round>, SettlerError> {
        match crate::staking::staking_contract(s.chain(), s.address()).await? {
            Some(staking) => round(store, s.chain(), staking, s.operator(), settings)
                .await
                .map(Some),
            None => Ok(None),
        }
    }
    match settler.handle() {
        ChainHandle::Embedded(s) => on(s, store, settings).await,
        ChainHandle::Rpc(s) => on(s, store, settings).await,
    }
}

/// The settler's chain time, s.
async fn settler_now(settler: &ChainSettler) -> Result<u64, ChainError> {
    match settler.handle() {
        ChainHandle::Embedded(s) => chain_now(s.chain()).await,
        ChainHandle::Rpc(s) => chain_now(s.chain()).await,
    }
}

/// Runs rounds until `stop` turns true: at start (what a restart left), when the current
/// epoch's proofs fall due, and when a failed proof may be tried again.
pub async fn run(
    settler: Arc<ChainSettler>,
    store: Store,
    settings: ProverSettings,
    metrics: Arc<ChainMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due_s = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = match settler_now(&settler).await {
            Ok(now) if now < due_s => continue,
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(target: "prover", "chain time: {e}");
                continue;
            }
        };
        match step(&settler, &store, settings).await {
            Ok(Some(r)) => {
                metrics.proofs.fetch_add(r.proved, Ordering::Relaxed);
                metrics
                    .proof_failures
                    .fetch_add(r.failed, Ordering::Relaxed);
                metrics.proofs_failing.store(r.failing, Ordering::Relaxed);
                due_s = r.next_due_s;
            }
            Ok(None) => due_s = now + IDLE_S,
            Err(e) => {
                metrics.proof_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "prover", "proof round failed, tried again in {ROUND_RETRY_S}s: {e}");
                due_s = now + ROUND_RETRY_S;
            }
        }
    }
}
