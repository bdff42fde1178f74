//! Proof that a household's trades are in a settled slot's batch: the batch's Merkle root, the
//! root the settlement contract holds for the batch (read from the chain, not from the
//! engine's outbox), and for each of the caller's trades its leaf fields and the sibling path,
//! so that the browser (or anyone) recomputes the leaf hash and folds it onto the root the
//! chain holds without trusting the engine's word for it.
//!
//! Design: the batch is rebuilt from the database by [`crate::chain::batch_of`], the function
//! that builds what goes on chain, and the proofs come from a tree over leaves built here the
//! same way; the two roots must agree, so a divergence is an error, never a wrong proof.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use gridshare_contracts::{MerkleTree, TradeLeaf};
use serde::Serialize;

use super::{ApiError, AppState, Authenticated};
use crate::chain::{batch_of, trade_leaf};
use crate::exchange::OrderSide;
use crate::market::SettledSlot;
use crate::store::SlotStatus;

/// The routes of this module (merged into [`super::router`]).
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/my/settlements/{slot}/proof", get(proof))
}

/// The slot as settled: ledger amounts, trades, and the digests of the readings its delivery
/// check used; `None` while it is not settled.
async fn settled_slot(state: &AppState, slot: u64) -> Result<Option<SettledSlot>, ApiError> {
    let (status, _) = state.market.slot_status(slot).await?;
    if status != SlotStatus::Settled {
        return Ok(None);
    }
    Ok(Some(state.market.settled_slot(slot).await?))
}

/// `GET /api/v1/my/settlements/{slot}/proof`.
#[derive(Serialize)]
struct SettlementProof {
    slot: u64,
    batch_id: u64,
    /// The batch's Merkle root as the engine rebuilds it.
    root: String,
    /// The root the Settlement contract holds for the batch; `null` until it is there.
    chain_root: Option<String>,
    on_chain: bool,
    /// Leaves in the batch's tree.
    leaves: usize,
    account_address: String,
    trades: Vec<TradeProof>,
}

/// One of the caller's trades: the leaf's fields, its hash and the sibling path to the root.
#[derive(Serialize)]
struct TradeProof {
    /// The caller's side of the trade.
    side: OrderSide,
    buyer: String,
    seller: String,
    energy_wh: u64,
    /// What the buyer pays, token units, in decimal (as the leaf's uint256).
    amount: String,
    leaf: String,
    proof: Vec<String>,
}

/// The caller's trades in a settled slot with their Merkle proofs against the batch root.
async fn proof(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(slot): Path<u64>,
) -> Result<Json<SettlementProof>, ApiError> {
    let settled = settled_slot(&state, slot).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "slot {slot} is not settled (yet): its batch has no root"
        ))
    })?;
    let custody = state.market.custody().ok_or_else(|| {
        ApiError::NotFound(
            "no chain is configured: settlements stay in the ledger and have no batch root".into(),
        )
    })?;
    let batch = batch_of(&settled, custody).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut leaves = Vec::new();
    let mut mine = Vec::new();
    for t in &settled.trades {
        let (buyer, seller) = (i64::from(t.buyer.0), i64::from(t.seller.0));
        let leaf = trade_leaf(slot, t, custody).hash();
        if buyer == account.id || seller == account.id {
            mine.push((leaves.len(), t, leaf));
        }
        leaves.push(leaf);
    }
    for digest in &settled.reading_digests {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digest, &mut bytes)
            .map_err(|e| ApiError::Internal(format!("reading digest {digest:?}: {e}")))?;
        leaves.push(
            TradeLeaf::Reading {
                batch_id: slot,
                digest: bytes.into(),
            }
            .hash(),
        );
    }
    let count = leaves.len();
    let tree = MerkleTree::new(leaves)
        .ok_or_else(|| ApiError::Internal(format!("slot {slot}: an empty batch")))?;
    if tree.root() != batch.root {
        tracing::error!(target: "api", slot, "proof tree and batch disagree on the root");
        return Err(ApiError::Internal(format!(
            "slot {slot}: the batch root could not be reproduced"
        )));
    }
    // What the Settlement contract recorded for this batch id (`batchRoot`), if it is there yet.
    let chain_root = match &state.settler {
        Some(settler) => settler
            .settled_root(slot)
            .await?
            .map(|root| root.to_string()),
        None => None,
    };
    let trades = mine
        .into_iter()
        .map(|(index, t, leaf)| TradeProof {
            side: if i64::from(t.buyer.0) == account.id {
                OrderSide::Buy
            } else {
                OrderSide::Sell
            },
            buyer: custody.address(i64::from(t.buyer.0)).to_string(),
            seller: custody.address(i64::from(t.seller.0)).to_string(),
            energy_wh: t.energy_wh,
            amount: t.amounts.buyer_pays.to_string(),
            leaf: leaf.to_string(),
            proof: tree
                .proof(index)
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
        .collect();
    Ok(Json(SettlementProof {
        slot,
        batch_id: batch.id,
        root: batch.root.to_string(),
        chain_root,
        on_chain: state.settler.is_some(),
        leaves: count,
        account_address: custody.address(account.id).to_string(),
        trades,
    }))
}
