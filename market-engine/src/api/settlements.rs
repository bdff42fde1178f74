//! Settlements: each settled slot's batch — accounts, total debits, when it was queued for the
//! chain and what the chain did with it — and the operator's re-send of a refused batch.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::extract::{Operator, Page, operator_action};
use super::{ApiError, AppState};
use crate::store::settlement::{BatchRecord, BatchStatus};

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/settlements", get(settlements))
        .route(
            "/api/v1/operator/settlements/{slot}/resend",
            post(resend_settlement),
        )
}

operator_action!(
    /// Re-sending a refused batch is the operator's.
    ResendsBatches,
    "re-sends settlement batches"
);

/// One settled slot's batch as the API shows it.
#[derive(Debug, Serialize)]
struct SettlementEntry {
    slot: u64,
    /// The batch's id on chain: its slot.
    batch_id: u64,
    accounts: i64,
    total_debits: i64,
    /// When the batch entered the chain outbox; null without a chain.
    queued_for_chain_ms: Option<i64>,
    /// The outbox's record of the batch; null without a chain.
    chain: Option<BatchView>,
}

/// The outbox's record of a batch, as the API shows it.
#[derive(Debug, Serialize)]
struct BatchView {
    status: BatchStatus,
    tx_hash: Option<String>,
    block: Option<u64>,
    block_hash: Option<String>,
    root: String,
    gas_used: Option<u64>,
    attempts: u32,
    last_error: Option<String>,
    /// Whether the outbox tries it again without the operator (a rejected batch only after a
    /// re-send).
    retries_by_itself: bool,
    /// When it is tried next, ms; null once confirmed or when due now.
    next_attempt_ms: Option<u64>,
    /// The local sales it credits to staked seller meters.
    sales_credited: usize,
}

impl From<BatchRecord> for BatchView {
    fn from(r: BatchRecord) -> Self {
        Self {
            tx_hash: r.tx_hash.map(|h| h.to_string()),
            block: r.block_number,
            block_hash: r.block_hash.map(|h| h.to_string()),
            root: r.batch.root.to_string(),
            gas_used: r.gas_used,
            attempts: r.attempts,
            retries_by_itself: r.status != BatchStatus::Rejected || r.retry,
            next_attempt_ms: (r.status != BatchStatus::Confirmed && r.next_attempt_ms > 0)
                .then_some(r.next_attempt_ms),
            sales_credited: r.sales.sales.len(),
            last_error: r.last_error,
            status: r.status,
        }
    }
}

/// A page of settled slots.
#[derive(Debug, Serialize)]
struct Settlements {
    settlements: Vec<SettlementEntry>,
}

/// A batch queued again.
#[derive(Debug, Serialize)]
struct Resent {
    slot: u64,
    chain: Option<BatchView>,
}

async fn settlements(
    State(state): State<AppState>,
    page: Page,
) -> Result<Json<Settlements>, ApiError> {
    let mut settlements = Vec::new();
    for (slot, accounts, total_debits, queued_for_chain_ms) in
        state.market.settlements(page.after, page.limit).await?
    {
        let chain = state
            .store
            .settlement_batch(slot)
            .await?
            .map(BatchView::from);
        settlements.push(SettlementEntry {
            slot,
            batch_id: slot,
            accounts,
            total_debits,
            queued_for_chain_ms,
            chain,
        });
    }
    Ok(Json(Settlements { settlements }))
}

/// The operator's re-send of a batch the contract refused (after the cause is fixed, say a
/// household topped up its balance on chain): tried again at the outbox's next step.
async fn resend_settlement(
    State(state): State<AppState>,
    _: Operator<ResendsBatches>,
    Path(slot): Path<u64>,
) -> Result<Json<Resent>, ApiError> {
    if !state
        .store
        .resend_settlement_batch(slot, crate::pipeline::now_ms())
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "slot {slot} has no settlement batch waiting to be sent (it is not in the outbox, \
             or it is already sent or confirmed)"
        )));
    }
    let record = state.store.settlement_batch(slot).await?;
    Ok(Json(Resent {
        slot,
        chain: record.map(BatchView::from),
    }))
}
