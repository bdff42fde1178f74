//! The settlement interface the market engine calls, implemented once over any [`Chain`].

use crate::batch::{SettlementBatch, SlotSales};
use crate::bindings::Settlement;
use crate::chain::{Chain, ChainError, ChainExt, EmbeddedChain, RpcChain};
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::sol_types::SolCall;
use std::future::Future;

/// Proof that a batch was settled by the transaction this backend sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettlementReceipt {
    /// The batch.
    pub batch_id: u64,
    /// The `settle` transaction.
    pub tx_hash: B256,
    /// Block it was included in.
    pub block_number: u64,
    /// Gas it used.
    pub gas_used: u64,
}

/// Where settlement batches go. The engine talks to this trait only, through
/// the market engine's settlement outbox.
pub trait SettlementBackend: Send + Sync {
    /// Sends one batch and waits for its receipt. A batch id that was settled before is
    /// rejected by the contract (`Settlement::BatchAlreadySettled`), so a retry can never
    /// settle twice.
    fn submit_batch(
        &self,
        batch: &SettlementBatch,
    ) -> impl Future<Output = Result<SettlementReceipt, ChainError>> + Send;

    /// The Merkle root a batch id was settled with, `None` if it was not settled.
    fn batch_root(
        &self,
        batch_id: u64,
    ) -> impl Future<Output = Result<Option<B256>, ChainError>> + Send;

    /// A participant's settlement balance (payment token units).
    fn balance(&self, account: Address) -> impl Future<Output = Result<U256, ChainError>> + Send;
}

/// The settlement contract at `settlement` on chain `C`, driven by the `operator` key.
#[derive(Debug, Clone)]
pub struct ChainSettlement<C> {
    chain: C,
    settlement: Address,
    operator: Address,
}

/// Settlement on the in-process EVM.
pub type EmbeddedBackend = ChainSettlement<EmbeddedChain>;
/// Settlement on a JSON-RPC node.
pub type RpcBackend = ChainSettlement<RpcChain>;

impl<C: Chain> ChainSettlement<C> {
    /// Settles through the contract at `settlement`; `operator` must be its operator key (on an
    /// [`RpcChain`], the chain's signer).
    pub fn new(chain: C, settlement: Address, operator: Address) -> Self {
        Self {
            chain,
            settlement,
            operator,
        }
    }

    /// The chain underneath.
    pub fn chain(&self) -> &C {
        &self.chain
    }

    /// The settlement contract.
    pub fn address(&self) -> Address {
        self.settlement
    }

    /// The operator key batches are sent from.
    pub fn operator(&self) -> Address {
        self.operator
    }

    /// Hands a batch to the chain and returns its transaction hash without waiting for a block:
    /// `settle`, or `settleWithSales` when it carries local sales to credit to the sellers'
    /// staked meters. The caller follows the transaction with [`Chain::transaction`].
    pub async fn send_batch(
        &self,
        batch: &SettlementBatch,
        sales: &SlotSales,
    ) -> Result<B256, ChainError> {
        let data = if sales.sales.is_empty() {
            Bytes::from(
                Settlement::settleCall {
                    batchId: batch.id,
                    root: batch.root,
                    deltas: batch.packed_deltas(),
                }
                .abi_encode(),
            )
        } else {
            Bytes::from(
                Settlement::settleWithSalesCall {
                    batchId: batch.id,
                    root: batch.root,
                    deltas: batch.packed_deltas(),
                    deliveredAtMs: sales.delivered_at_ms,
                    sales: sales
                        .sales
                        .iter()
                        .map(|s| Settlement::Sale {
                            seller: s.seller,
                            buyer: s.buyer,
                            energyWh: s.energy_wh,
                        })
                        .collect(),
                }
                .abi_encode(),
            )
        };
        self.chain
            .submit(self.operator, self.settlement, data)
            .await
    }

    /// The root batch `batch_id` was settled with in the state after block `block` (`None`:
    /// the latest block), `None` if it was not settled there.
    pub async fn batch_root_at(
        &self,
        batch_id: u64,
        block: Option<u64>,
    ) -> Result<Option<B256>, ChainError> {
        let root = self
            .chain
            .view_at(
                self.settlement,
                Settlement::batchRootCall { batchId: batch_id },
                block,
            )
            .await?;
        Ok((root != B256::ZERO).then_some(root))
    }
}

impl<C: Chain> SettlementBackend for ChainSettlement<C> {
    async fn submit_batch(&self, batch: &SettlementBatch) -> Result<SettlementReceipt, ChainError> {
        let call = Settlement::settleCall {
            batchId: batch.id,
            root: batch.root,
            deltas: batch.packed_deltas(),
        };
        let outcome = self
            .chain
            .transact(self.operator, self.settlement, call)
            .await?;
        tracing::info!(
            target: "gridshare::settlement",
            batch_id = batch.id,
            accounts = batch.deltas.len(),
            gas_used = outcome.gas_used,
            "batch settled"
        );
        Ok(SettlementReceipt {
            batch_id: batch.id,
            tx_hash: outcome.tx_hash,
            block_number: outcome.block_number,
            gas_used: outcome.gas_used,
        })
    }

    async fn batch_root(&self, batch_id: u64) -> Result<Option<B256>, ChainError> {
        self.batch_root_at(batch_id, None).await
    }

    async fn balance(&self, account: Address) -> Result<U256, ChainError> {
        self.chain
            .view(self.settlement, Settlement::balanceOfCall { account })
            .await
    }
}
