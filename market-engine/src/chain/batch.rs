//! A settled slot as the chain sees it: its batch (net amounts per address and the Merkle root
//! of its trades and readings), a trade's leaf, and the slot's local sales for the meters'
//! rewards.

use alloy::primitives::{B256, U256};
use gridshare_contracts::batch::{
    MerkleTree, NetDelta, SaleCredit, SettlementBatch, SlotSales, TradeLeaf,
};

use super::{SettlerError, custody};
use crate::market::SettledSlot;

/// A trade's leaf in its slot's batch: buyer's and seller's chain addresses from `custody`,
/// energy, and what the buyer pays (fees included).
pub fn trade_leaf(
    slot: u64,
    t: &gridshare_core::market::Trade,
    custody: &custody::Custody,
) -> TradeLeaf {
    TradeLeaf::Trade {
        batch_id: slot,
        buyer: custody.address(i64::from(t.buyer.0)),
        seller: custody.address(i64::from(t.seller.0)),
        energy_wh: t.energy_wh,
        amount: U256::from(t.amounts.buyer_pays),
    }
}

/// The on-chain batch of a settled slot, every account at its address in `custody`.
pub fn batch_of(
    settled: &SettledSlot,
    custody: &custody::Custody,
) -> Result<SettlementBatch, SettlerError> {
    let slot = settled.slot;
    let mut leaves: Vec<B256> = settled
        .trades
        .iter()
        .map(|t| trade_leaf(slot, t, custody).hash())
        .collect();
    for digest in &settled.reading_digests {
        let bytes: [u8; 32] = hex_digest(digest)?;
        leaves.push(
            TradeLeaf::Reading {
                batch_id: slot,
                digest: B256::from(bytes),
            }
            .hash(),
        );
    }
    let root = MerkleTree::new(leaves)
        .map(|t| t.root())
        .ok_or_else(|| SettlerError::Batch {
            slot,
            reason: "no trades and no readings to commit to".into(),
        })?;
    let transfers = settled.balances.iter().map(|(account, amount)| NetDelta {
        account: custody.address(*account),
        amount: i128::from(*amount),
    });
    SettlementBatch::new(slot, root, transfers).map_err(|e| SettlerError::Batch {
        slot,
        reason: e.to_string(),
    })
}

/// The local sales of a settled slot for `settleWithSales`: each trade between two meters whose
/// ids fit `MeterStaking`'s bytes32 ids, at its traded energy. `meters` gives the meter that
/// placed each order; sales involving a meter in `excluded` (its delivery is disputed) earn
/// nothing.
pub fn sales_of(
    settled: &SettledSlot,
    delivered_at_ms: u64,
    meters: &std::collections::HashMap<u64, String>,
    excluded: &std::collections::BTreeSet<String>,
) -> SlotSales {
    let id = |order: u64| {
        meters
            .get(&order)
            .filter(|m| !excluded.contains(*m))
            .and_then(|m| gridshare_contracts::staking::text_id(m).ok())
    };
    let sales = settled
        .trades
        .iter()
        .filter(|t| t.energy_wh > 0)
        .filter_map(|t| {
            Some(SaleCredit {
                seller: id(t.ask.0)?,
                buyer: id(t.bid.0)?,
                energy_wh: t.energy_wh,
            })
        })
        .collect();
    SlotSales {
        delivered_at_ms,
        sales,
    }
}

fn hex_digest(text: &str) -> Result<[u8; 32], SettlerError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|e| SettlerError::Stored {
        what: "reading digest",
        value: text.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(out)
}
