//! Settlement on an EVM chain: each settled slot becomes one batch — net token amounts per
//! account that sum to zero, and the Merkle root of the slot's trades and readings — written
//! to the settlement outbox before it is sent, retried until a receipt confirms it, never sent
//! twice (the slot index is the batch id).
//!
//! Two backends behind one interface (`gridshare-contracts`): the embedded chain (the same
//! contracts executed in-process by revm, state in a file — the zero-setup default) and any
//! EVM node over JSON-RPC.
//!
//! Accounts are mapped to chain addresses derived from their id (`keccak256("gridshare-account"
//! ‖ id)`). On the embedded chain, which is a development and demo chain, the operator's
//! treasury deposits for an account whose batch debit its balance would not cover, so the demo
//! settles without wallets; on a real chain households deposit the payment token themselves.

use std::path::{Path, PathBuf};

use alloy::primitives::{Address, B256, U256, keccak256};
use gridshare_contracts::batch::{MerkleTree, NetDelta, SettlementBatch, TradeLeaf};
use gridshare_contracts::bindings::{GridToken, Settlement};
use gridshare_contracts::chain::{Chain, ChainExt, EmbeddedChain, RpcChain};
use gridshare_contracts::deploy::{Deployment, StakingParams};
use gridshare_contracts::outbox::{OutboxEntry, OutboxStatus, RetryPolicy, SettlementOutbox};
use gridshare_contracts::settlement::{ChainSettlement, SettlementBackend};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::market::SettledSlot;

/// The `[chain]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// `embedded`, `rpc` or `none` (settle in the ledger only).
    pub backend: String,
    /// Embedded: the chain's state file.
    pub state_file: PathBuf,
    /// RPC: the node.
    pub rpc_url: String,
    /// RPC: address of the deployed `Settlement` contract.
    pub settlement_address: String,
    /// RPC: environment variable holding the operator's private key (hex).
    pub operator_key_env: String,
    /// The settlement outbox (SQLite file).
    pub outbox_file: PathBuf,
    /// Embedded: what the treasury deposits for an account that needs it, token units.
    pub demo_deposit: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            backend: "embedded".into(),
            state_file: "gridshare-chain.json".into(),
            rpc_url: String::new(),
            settlement_address: String::new(),
            operator_key_env: "GRIDSHARE_OPERATOR_KEY".into(),
            outbox_file: "gridshare-settlement-outbox.sqlite".into(),
            demo_deposit: 1_000_000_000,
        }
    }
}

/// The chain address of an engine account (−1 the utility, −2 the grid operator).
pub fn account_address(account: i64) -> Address {
    let mut seed = b"gridshare-account".to_vec();
    seed.extend_from_slice(&account.to_be_bytes());
    Address::from_slice(&keccak256(&seed)[12..])
}

/// The operator of the embedded chain (deployer, treasury and settlement operator).
pub const EMBEDDED_OPERATOR: Address = Address::repeat_byte(0x0e);

#[derive(Debug, Serialize, Deserialize)]
struct DeploymentRecord {
    network_token: Address,
    payment_token: Address,
    settlement: Address,
    staking: Address,
}

enum Backend {
    Embedded {
        outbox: SettlementOutbox<ChainSettlement<EmbeddedChain>>,
        settlement: Address,
        demo_deposit: u64,
    },
    Rpc(SettlementOutbox<ChainSettlement<RpcChain>>),
}

/// Hands settled slots to the chain through the outbox.
pub struct ChainSettler {
    backend: Backend,
}

/// The chain a settler writes to and its Settlement contract, for what is read beside
/// settlement (the meters' stakes and rewards: [`crate::staking`]).
pub enum ChainHandle<'a> {
    /// The in-process EVM.
    Embedded(&'a ChainSettlement<EmbeddedChain>),
    /// A JSON-RPC node.
    Rpc(&'a ChainSettlement<RpcChain>),
}

async fn outbox_pool(path: &Path) -> Result<sqlx::SqlitePool, String> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| format!("settlement outbox {}: {e}", path.display()))
}

impl ChainSettler {
    /// Opens the configured backend; `None` for `backend = "none"`. The embedded chain is
    /// deployed on first use and its addresses kept next to its state file. The RPC backend's
    /// operator key comes from the environment variable the config names.
    pub async fn open(config: &ChainConfig) -> Result<Option<Self>, String> {
        Self::open_with_key(config, std::env::var(&config.operator_key_env).ok()).await
    }

    /// As [`ChainSettler::open`], with the RPC operator key given directly.
    pub async fn open_with_key(
        config: &ChainConfig,
        operator_key: Option<String>,
    ) -> Result<Option<Self>, String> {
        let retry = RetryPolicy::default();
        let backend = match config.backend.as_str() {
            "none" => return Ok(None),
            "embedded" => {
                let chain = EmbeddedChain::open(&config.state_file)
                    .map_err(|e| format!("chain.state_file: {e}"))?;
                let record_path = config.state_file.with_extension("deployment.json");
                let record = match std::fs::read(&record_path) {
                    Ok(bytes) => serde_json::from_slice::<DeploymentRecord>(&bytes)
                        .map_err(|e| format!("{}: {e}", record_path.display()))?,
                    Err(_) => {
                        let now = chain.timestamp().await.map_err(|e| e.to_string())?;
                        let supply = U256::from(10u64).pow(U256::from(30u64));
                        let d = Deployment::deploy(
                            &chain,
                            EMBEDDED_OPERATOR,
                            EMBEDDED_OPERATOR,
                            None,
                            supply,
                            &StakingParams::daily(now),
                        )
                        .await
                        .map_err(|e| format!("deploying to the embedded chain: {e}"))?;
                        chain
                            .transact(
                                EMBEDDED_OPERATOR,
                                d.payment_token,
                                GridToken::approveCall {
                                    spender: d.settlement,
                                    value: U256::MAX,
                                },
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                        let record = DeploymentRecord {
                            network_token: d.network_token,
                            payment_token: d.payment_token,
                            settlement: d.settlement,
                            staking: d.staking,
                        };
                        let json = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
                        std::fs::write(&record_path, json)
                            .map_err(|e| format!("{}: {e}", record_path.display()))?;
                        tracing::info!(target: "chain", settlement = %d.settlement, "contracts deployed to the embedded chain");
                        record
                    }
                };
                let pool = outbox_pool(&config.outbox_file).await?;
                let backend = ChainSettlement::new(chain, record.settlement, EMBEDDED_OPERATOR);
                Backend::Embedded {
                    outbox: SettlementOutbox::open(pool, backend, retry)
                        .await
                        .map_err(|e| e.to_string())?,
                    settlement: record.settlement,
                    demo_deposit: config.demo_deposit,
                }
            }
            "rpc" => {
                let key = operator_key.ok_or_else(|| {
                    format!(
                        "chain.backend = \"rpc\" needs the operator's private key in ${}",
                        config.operator_key_env
                    )
                })?;
                let signer: alloy::signers::local::PrivateKeySigner = key
                    .trim()
                    .parse()
                    .map_err(|e| format!("${}: not a private key: {e}", config.operator_key_env))?;
                let operator = signer.address();
                let chain = RpcChain::connect(&config.rpc_url, Some(signer))
                    .map_err(|e| format!("chain.rpc_url: {e}"))?;
                let settlement: Address = config
                    .settlement_address
                    .parse()
                    .map_err(|e| format!("chain.settlement_address: {e}"))?;
                let pool = outbox_pool(&config.outbox_file).await?;
                Backend::Rpc(
                    SettlementOutbox::open(
                        pool,
                        ChainSettlement::new(chain, settlement, operator),
                        retry,
                    )
                    .await
                    .map_err(|e| e.to_string())?,
                )
            }
            other => {
                return Err(format!(
                    "chain.backend {other:?}: expected embedded, rpc or none"
                ));
            }
        };
        Ok(Some(Self { backend }))
    }

    /// The chain and Settlement contract this settler writes to.
    pub fn handle(&self) -> ChainHandle<'_> {
        match &self.backend {
            Backend::Embedded { outbox, .. } => ChainHandle::Embedded(outbox.backend()),
            Backend::Rpc(outbox) => ChainHandle::Rpc(outbox.backend()),
        }
    }

    /// Writes a settled slot's batch into the outbox (idempotent).
    pub async fn enqueue(&self, settled: &SettledSlot) -> Result<(), String> {
        let batch = batch_of(settled)?;
        match &self.backend {
            Backend::Embedded {
                outbox,
                settlement,
                demo_deposit,
            } => {
                // Development chain: back every debit from the treasury.
                for delta in batch.deltas.iter().filter(|d| d.amount < 0) {
                    let balance = outbox
                        .backend()
                        .balance(delta.account)
                        .await
                        .map_err(|e| e.to_string())?;
                    let need = U256::from(delta.amount.unsigned_abs());
                    if balance < need {
                        let amount = need.max(U256::from(*demo_deposit));
                        outbox
                            .backend()
                            .chain()
                            .transact(
                                EMBEDDED_OPERATOR,
                                *settlement,
                                Settlement::depositForCall {
                                    account: delta.account,
                                    amount,
                                },
                            )
                            .await
                            .map_err(|e| format!("demo deposit for {}: {e}", delta.account))?;
                    }
                }
                outbox.enqueue(&batch).await.map_err(|e| e.to_string())
            }
            Backend::Rpc(outbox) => outbox.enqueue(&batch).await.map_err(|e| e.to_string()),
        }
    }

    /// Sends what is pending, in order, until confirmed or the retry policy gives up (the
    /// rest stays pending for the next call). Returns how many batches were confirmed.
    pub async fn flush(&self) -> Result<usize, String> {
        match &self.backend {
            Backend::Embedded { outbox, .. } => outbox.flush().await.map_err(|e| e.to_string()),
            Backend::Rpc(outbox) => outbox.flush().await.map_err(|e| e.to_string()),
        }
    }

    /// How many batches wait in the outbox for their confirmation.
    pub async fn pending(&self) -> Result<usize, String> {
        match &self.backend {
            Backend::Embedded { outbox, .. } => outbox.pending().await.map(|p| p.len()),
            Backend::Rpc(outbox) => outbox.pending().await.map(|p| p.len()),
        }
        .map_err(|e| e.to_string())
    }

    /// Where a slot's batch stands in the settlement outbox (pending, confirmed or rejected,
    /// with its transaction, block and gas once confirmed); `None` if it was never queued.
    pub async fn batch(&self, slot: u64) -> Result<Option<OutboxEntry>, String> {
        match &self.backend {
            Backend::Embedded { outbox, .. } => outbox.entry(slot).await,
            Backend::Rpc(outbox) => outbox.entry(slot).await,
        }
        .map_err(|e| e.to_string())
    }

    /// The batch root recorded on chain for a slot, once settled there.
    pub async fn settled_root(&self, slot: u64) -> Result<Option<B256>, String> {
        match &self.backend {
            Backend::Embedded { outbox, .. } => outbox.backend().batch_root(slot).await,
            Backend::Rpc(outbox) => outbox.backend().batch_root(slot).await,
        }
        .map_err(|e| e.to_string())
    }

    /// An account's balance in the settlement contract.
    pub async fn balance(&self, account: i64) -> Result<U256, String> {
        let address = account_address(account);
        match &self.backend {
            Backend::Embedded { outbox, .. } => outbox.backend().balance(address).await,
            Backend::Rpc(outbox) => outbox.backend().balance(address).await,
        }
        .map_err(|e| e.to_string())
    }
}

/// A batch's place in the outbox as the API shows it: `status` (`pending`, `confirmed`,
/// `rejected`), `tx_hash`, `block`, `root`, `gas_used`, `attempts` and `last_error`.
pub fn batch_status(e: &OutboxEntry) -> serde_json::Value {
    let status = match e.status {
        OutboxStatus::Pending => "pending",
        OutboxStatus::Confirmed => "confirmed",
        OutboxStatus::Rejected => "rejected",
    };
    serde_json::json!({
        "status": status,
        "tx_hash": e.tx_hash.map(|h| h.to_string()),
        "block": e.block_number,
        "root": e.batch.root.to_string(),
        "gas_used": e.gas_used,
        "attempts": e.attempts,
        "last_error": e.last_error,
    })
}

/// The on-chain batch of a settled slot.
pub fn batch_of(settled: &SettledSlot) -> Result<SettlementBatch, String> {
    let slot = settled.slot;
    let mut leaves: Vec<B256> = settled
        .trades
        .iter()
        .map(|t| {
            TradeLeaf::Trade {
                batch_id: slot,
                buyer: account_address(i64::from(t.buyer.0)),
                seller: account_address(i64::from(t.seller.0)),
                energy_wh: t.energy_wh,
                amount: U256::from(t.amounts.buyer_pays),
            }
            .hash()
        })
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
        .ok_or_else(|| format!("slot {slot}: no trades and no readings to commit to"))?;
    let transfers = settled.balances.iter().map(|(account, amount)| NetDelta {
        account: account_address(*account),
        amount: i128::from(*amount),
    });
    SettlementBatch::new(slot, root, transfers).map_err(|e| format!("slot {slot}: {e}"))
}

fn hex_digest(text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|e| format!("reading digest {text:?}: {e}"))?;
    Ok(out)
}
