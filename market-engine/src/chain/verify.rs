//! Checks a household's trades against the chain, trusting neither the engine nor the node's
//! word for the leaf: from the proof the engine serves (`GET /api/v1/my/settlements/{slot}/proof`),
//! each trade's leaf is rebuilt here from its fields, folded with its path onto the root the
//! Settlement contract holds for the batch, and the contract's own `verifyTrade` is asked the
//! same question. `market-engine verify-trade` runs it against any JSON-RPC node.

use alloy::primitives::{Address, B256, U256};
use gridshare_contracts::batch::{MerkleTree, TradeLeaf};
use gridshare_contracts::bindings::Settlement;
use gridshare_contracts::chain::{Chain, ChainExt};
use serde::Deserialize;

/// The proof document, as the engine serves it (fields this check needs).
#[derive(Debug, Clone, Deserialize)]
pub struct ProofDocument {
    /// The batch (= slot).
    pub batch_id: u64,
    /// The caller's trades.
    pub trades: Vec<ProvenTrade>,
}

/// One trade with its Merkle path.
#[derive(Debug, Clone, Deserialize)]
pub struct ProvenTrade {
    /// Buyer's chain address.
    pub buyer: Address,
    /// Seller's chain address.
    pub seller: Address,
    /// Energy traded, Wh.
    pub energy_wh: u64,
    /// What the buyer paid, fees included (decimal string).
    pub amount: String,
    /// Sibling hashes from the leaf up.
    pub proof: Vec<B256>,
}

/// The verdict on one trade.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TradeCheck {
    /// Position in the document's `trades`.
    pub index: usize,
    /// The leaf rebuilt from the trade's fields.
    pub leaf: B256,
    /// The leaf and path fold onto the root the contract holds.
    pub off_chain: bool,
    /// The contract's `verifyTrade` says yes.
    pub on_chain: bool,
}

/// Checks every trade of `doc` against the Settlement contract at `settlement`. An error means
/// the question could not be asked (the chain, a malformed amount, a batch not on chain);
/// a trade that does not verify is a `false` in its check.
pub async fn verify_trades<C: Chain>(
    chain: &C,
    settlement: Address,
    doc: &ProofDocument,
) -> Result<Vec<TradeCheck>, String> {
    let root = chain
        .view(
            settlement,
            Settlement::batchRootCall {
                batchId: doc.batch_id,
            },
        )
        .await
        .map_err(|e| format!("reading batch {}'s root: {e}", doc.batch_id))?;
    if root == B256::ZERO {
        return Err(format!(
            "batch {} is not settled on this chain (no root at {settlement})",
            doc.batch_id
        ));
    }
    let mut checks = Vec::with_capacity(doc.trades.len());
    for (index, t) in doc.trades.iter().enumerate() {
        let amount: U256 = t
            .amount
            .parse()
            .map_err(|e| format!("trade {index}: amount {:?}: {e}", t.amount))?;
        let leaf = TradeLeaf::Trade {
            batch_id: doc.batch_id,
            buyer: t.buyer,
            seller: t.seller,
            energy_wh: t.energy_wh,
            amount,
        }
        .hash();
        let on_chain = chain
            .view(
                settlement,
                Settlement::verifyTradeCall {
                    batchId: doc.batch_id,
                    buyer: t.buyer,
                    seller: t.seller,
                    energyWh: t.energy_wh,
                    amount,
                    proof: t.proof.clone(),
                },
            )
            .await
            .map_err(|e| format!("trade {index}: verifyTrade: {e}"))?;
        checks.push(TradeCheck {
            index,
            leaf,
            off_chain: MerkleTree::verify(root, leaf, &t.proof),
            on_chain,
        });
    }
    Ok(checks)
}
