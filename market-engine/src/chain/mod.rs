//! Settlement on an EVM chain: each settled slot becomes one batch — net token amounts per
//! account that sum to zero, the Merkle root of the slot's trades and readings, and its local
//! sales for the sellers' meter rewards — written to the settlement outbox ([`outbox`], in the
//! engine's own database, in the slot's settlement transaction) and driven from there to a
//! confirmation `confirmations` blocks deep, never sent twice (the slot index is the batch id).
//!
//! Two backends behind one interface (`gridshare-contracts`): the embedded chain (the same
//! contracts executed in-process by revm, state in a file — the zero-setup default) and any
//! EVM node over JSON-RPC.
//!
//! Accounts are mapped to chain addresses derived from their id (`keccak256("gridshare-account"
//! ‖ id)`). The settlement contract credits and debits only accounts whose key opened them
//! (`openAccount`): on the embedded chain, which is a development and demo chain without
//! signatures, the engine opens them and the operator's treasury deposits for an account whose
//! batch debit its balance would not cover, so the demo settles without wallets; on a real
//! chain a batch naming an account nobody opened is refused (`AccountNotOpened`) until its
//! household opens it.

pub mod outbox;
pub mod verify;

use std::path::PathBuf;

use alloy::primitives::{Address, B256, U256, keccak256};
use gridshare_contracts::batch::{
    MerkleTree, NetDelta, SaleCredit, SettlementBatch, SlotSales, TradeLeaf,
};
use gridshare_contracts::bindings::{GridToken, Settlement};
use gridshare_contracts::chain::{Chain, ChainExt, EmbeddedChain, RpcChain};
use gridshare_contracts::deploy::{Deployment, SettlementParams, StakingParams};
use gridshare_contracts::settlement::{ChainSettlement, SettlementBackend};
use serde::{Deserialize, Serialize};

use crate::market::SettledSlot;
use crate::store::Store;
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
    /// RPC: address of the deployed `MeterStaking` contract, for the fraud watcher; empty:
    /// no watcher. (The embedded chain knows its own.)
    pub staking_address: String,
    /// Watch the community's signed readings and report a meter that signs two readings that
    /// cannot both be true (equivocation, a counter going backwards) to `MeterStaking`, which
    /// slashes it and pays the engine's operator key the reporter's share.
    pub watch: bool,
    /// RPC: blocks on top of (and including) a batch's block before it counts as confirmed;
    /// 1 is "in a block". Pick the depth the chain's reorganisations never reach (or its
    /// finality). The embedded chain never reorganises: 1 there.
    pub confirmations: u64,
    /// No longer used: the settlement outbox lives in the engine's database. Accepted so
    /// that older config files still load; a warning says it is ignored.
    pub outbox_file: Option<PathBuf>,
    /// Embedded: what the treasury deposits for an account that needs it, token units.
    pub demo_deposit: u64,
    /// Prove every finished epoch of every staked meter whose owner made the engine's operator
    /// key its delegate in `MeterStaking`, from the readings the engine holds
    /// ([`crate::prover`]).
    pub prove: bool,
    /// Seconds after an epoch ends before the engine proves it, so late readings are in (at
    /// most half the contract's proof window is used).
    pub prove_after_s: u64,
    /// Seconds before a proof that failed is tried again (while its proof window is open).
    pub prove_retry_s: u64,
    /// Embedded: `MeterStaking`'s epoch length when the engine deploys it (first start). The
    /// proof window is one epoch and the unbonding period seven; the default is a day.
    pub embedded_epoch_s: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            backend: "embedded".into(),
            state_file: "gridshare-chain.json".into(),
            rpc_url: String::new(),
            settlement_address: String::new(),
            operator_key_env: "GRIDSHARE_OPERATOR_KEY".into(),
            staking_address: String::new(),
            watch: true,
            confirmations: 1,
            outbox_file: None,
            demo_deposit: 1_000_000_000,
            prove: true,
            prove_after_s: 300,
            prove_retry_s: 600,
            embedded_epoch_s: 86_400,
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
        settlement: ChainSettlement<EmbeddedChain>,
        demo_deposit: u64,
    },
    Rpc(ChainSettlement<RpcChain>),
}

/// The chain the fraud watcher reports to.
#[derive(Debug, Clone)]
pub enum WatchedChain {
    /// The embedded chain.
    Embedded(EmbeddedChain),
    /// A JSON-RPC node.
    Rpc(RpcChain),
}

/// Where the fraud watcher reports: the chain, the `MeterStaking` contract and the reporter
/// (the engine's operator key).
#[derive(Debug, Clone)]
pub struct WatchTarget {
    /// The chain.
    pub chain: WatchedChain,
    /// `MeterStaking`.
    pub staking: Address,
    /// The reporting account.
    pub reporter: Address,
}

/// Drives the settlement outbox in the engine's database to the chain.
pub struct ChainSettler {
    backend: Backend,
    store: Store,
    confirmations: u64,
    watch: Option<WatchTarget>,
}

/// The chain a settler writes to and its Settlement contract, for what is read beside
/// settlement (the meters' stakes and rewards: [`crate::staking`]).
pub enum ChainHandle<'a> {
    /// The in-process EVM.
    Embedded(&'a ChainSettlement<EmbeddedChain>),
    /// A JSON-RPC node.
    Rpc(&'a ChainSettlement<RpcChain>),
}

impl ChainSettler {
    /// Opens the configured backend; `None` for `backend = "none"`. The embedded chain is
    /// deployed on first use and its addresses kept next to its state file. The RPC backend's
    /// operator key comes from the environment variable the config names.
    pub async fn open(config: &ChainConfig, store: Store) -> Result<Option<Self>, String> {
        Self::open_with_key(config, store, std::env::var(&config.operator_key_env).ok()).await
    }

    /// As [`ChainSettler::open`], with the RPC operator key given directly.
    pub async fn open_with_key(
        config: &ChainConfig,
        store: Store,
        operator_key: Option<String>,
    ) -> Result<Option<Self>, String> {
        if let Some(file) = &config.outbox_file {
            tracing::warn!(target: "chain", file = %file.display(), "chain.outbox_file is no longer used: the settlement outbox lives in the engine's database (batches already on chain are recognised by their root)");
        }
        if config.embedded_epoch_s == 0 || config.embedded_epoch_s > u64::from(u32::MAX) {
            return Err("chain.embedded_epoch_s: between 1 and 4294967295 seconds".into());
        }
        if config.prove_retry_s == 0 {
            return Err("chain.prove_retry_s: at least 1 second".into());
        }
        if config.confirmations == 0 {
            return Err("chain.confirmations: must be at least 1 (1 = in a block)".into());
        }
        let mut confirmations = config.confirmations;
        let mut watch = None;
        let backend = match config.backend.as_str() {
            "none" => return Ok(None),
            "embedded" => {
                let chain = EmbeddedChain::open(&config.state_file)
                    .map_err(|e| format!("chain.state_file: {e}"))?;
                // v2: the Settlement of issue 14 (opened accounts, allowances, debt). A state
                // file from before names a contract this engine cannot drive; the contracts are
                // deployed again beside it on the same chain (a demo chain: its old balances
                // stay in the old contract).
                let record_path = config.state_file.with_extension("deployment-v2.json");
                let record = match std::fs::read(&record_path) {
                    Ok(bytes) => serde_json::from_slice::<DeploymentRecord>(&bytes)
                        .map_err(|e| format!("{}: {e}", record_path.display()))?,
                    Err(_) => {
                        let now = chain.timestamp().await.map_err(|e| e.to_string())?;
                        let supply = U256::from(10u64).pow(U256::from(30u64));
                        // A development chain: no allowance limit by default, so the demo's
                        // utility and grid-operator accounts settle any volume.
                        let settlement_params = SettlementParams {
                            default_allowance: (1u128 << 80) - 1,
                            ..SettlementParams::standard()
                        };
                        let d = Deployment::deploy_with(
                            &chain,
                            EMBEDDED_OPERATOR,
                            EMBEDDED_OPERATOR,
                            None,
                            supply,
                            &StakingParams::with_epoch(now, config.embedded_epoch_s),
                            &settlement_params,
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
                // One block per transaction and no reorganisations: in a block is final.
                confirmations = 1;
                watch = config.watch.then(|| WatchTarget {
                    chain: WatchedChain::Embedded(chain.clone()),
                    staking: record.staking,
                    reporter: EMBEDDED_OPERATOR,
                });
                Backend::Embedded {
                    settlement: ChainSettlement::new(chain, record.settlement, EMBEDDED_OPERATOR),
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
                if config.watch && !config.staking_address.is_empty() {
                    let staking: Address = config
                        .staking_address
                        .parse()
                        .map_err(|e| format!("chain.staking_address: {e}"))?;
                    watch = Some(WatchTarget {
                        chain: WatchedChain::Rpc(chain.clone()),
                        staking,
                        reporter: operator,
                    });
                }
                Backend::Rpc(ChainSettlement::new(chain, settlement, operator))
            }
            other => {
                return Err(format!(
                    "chain.backend {other:?}: expected embedded, rpc or none"
                ));
            }
        };
        Ok(Some(Self {
            backend,
            store,
            confirmations,
            watch,
        }))
    }

    /// The chain and Settlement contract this settler writes to.
    pub fn handle(&self) -> ChainHandle<'_> {
        match &self.backend {
            Backend::Embedded { settlement, .. } => ChainHandle::Embedded(settlement),
            Backend::Rpc(settlement) => ChainHandle::Rpc(settlement),
        }
    }

    /// Drives the outbox one step (see [`outbox`]): checks every open batch against the
    /// chain, in slot order, and sends the next one once those before it are confirmed.
    pub async fn step(&self, now_ms: u64) -> Result<outbox::Progress, String> {
        match &self.backend {
            Backend::Embedded {
                settlement,
                demo_deposit,
            } => {
                self.demo_deposits(settlement, *demo_deposit).await?;
                outbox::step(&self.store, settlement, self.confirmations, now_ms).await
            }
            Backend::Rpc(settlement) => {
                outbox::step(&self.store, settlement, self.confirmations, now_ms).await
            }
        }
    }

    /// Development chain: opens every account of the open batches (the embedded chain takes
    /// any sender without a signature) and the treasury backs every debit that the account's
    /// balance would not cover.
    async fn demo_deposits(
        &self,
        settlement: &ChainSettlement<EmbeddedChain>,
        demo_deposit: u64,
    ) -> Result<(), String> {
        for record in outbox::open_batches(&self.store)
            .await
            .map_err(|e| e.to_string())?
        {
            for delta in &record.batch.deltas {
                let open = settlement
                    .chain()
                    .view(
                        settlement.address(),
                        Settlement::isOpenCall {
                            account: delta.account,
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if !open {
                    settlement
                        .chain()
                        .transact(
                            delta.account,
                            settlement.address(),
                            Settlement::openAccountCall {},
                        )
                        .await
                        .map_err(|e| format!("opening {} on the demo chain: {e}", delta.account))?;
                }
            }
            for delta in record.batch.deltas.iter().filter(|d| d.amount < 0) {
                let balance = settlement
                    .balance(delta.account)
                    .await
                    .map_err(|e| e.to_string())?;
                let need = U256::from(delta.amount.unsigned_abs());
                if balance < need {
                    let amount = need.max(U256::from(demo_deposit));
                    settlement
                        .chain()
                        .transact(
                            EMBEDDED_OPERATOR,
                            settlement.address(),
                            Settlement::depositForCall {
                                account: delta.account,
                                amount,
                            },
                        )
                        .await
                        .map_err(|e| format!("demo deposit for {}: {e}", delta.account))?;
                }
            }
        }
        Ok(())
    }

    /// Where the fraud watcher reports, if it runs.
    pub fn watch_target(&self) -> Option<&WatchTarget> {
        self.watch.as_ref()
    }

    /// Blocks a batch must be deep before it counts as confirmed.
    pub fn confirmations(&self) -> u64 {
        self.confirmations
    }

    /// The batch root recorded on chain for a slot (latest block), once settled there.
    pub async fn settled_root(&self, slot: u64) -> Result<Option<B256>, String> {
        match &self.backend {
            Backend::Embedded { settlement, .. } => settlement.batch_root(slot).await,
            Backend::Rpc(settlement) => settlement.batch_root(slot).await,
        }
        .map_err(|e| e.to_string())
    }

    /// An account's balance in the settlement contract.
    pub async fn balance(&self, account: i64) -> Result<U256, String> {
        let address = account_address(account);
        match &self.backend {
            Backend::Embedded { settlement, .. } => settlement.balance(address).await,
            Backend::Rpc(settlement) => settlement.balance(address).await,
        }
        .map_err(|e| e.to_string())
    }
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

fn hex_digest(text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|e| format!("reading digest {text:?}: {e}"))?;
    Ok(out)
}
