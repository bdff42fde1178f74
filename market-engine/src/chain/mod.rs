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
//! Each account's chain address comes from [`custody::Custody`]: a custodial key the engine
//! holds for it (or the configured address of the utility and the grid operator). The
//! settlement contract credits and debits only accounts whose key opened them: before a batch
//! is sent, the engine opens every custodial account in it with an EIP-712 `OpenAccount`
//! signature of that account's key (`openAccountFor`), on any chain. On the embedded chain,
//! a development and demo chain, the operator's treasury also deposits for an account whose
//! batch debit its balance would not cover, so the demo settles without wallets.

pub mod custody;
pub mod outbox;
pub mod verify;

use std::path::PathBuf;

use alloy::primitives::{Address, B256, U256};
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
    /// Environment variable holding the custody master secret (32 bytes, hex) from which the
    /// households' custodial keys are derived; unset: `custody_key_file`.
    pub custody_key_env: String,
    /// File holding the custody master secret (mode 0600), created on first start when
    /// absent; default: beside `state_file`, with the extension `custody.key`.
    pub custody_key_file: Option<PathBuf>,
    /// Address the utility's legs settle to (it must open its account and keep it funded);
    /// empty: a custodial key of the engine.
    pub utility_address: String,
    /// Address the grid operator's legs settle to; empty: a custodial key of the engine.
    pub grid_operator_address: String,
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
            custody_key_env: "GRIDSHARE_CUSTODY_KEY".into(),
            custody_key_file: None,
            utility_address: String::new(),
            grid_operator_address: String::new(),
            prove: true,
            prove_after_s: 300,
            prove_retry_s: 600,
            embedded_epoch_s: 86_400,
        }
    }
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
    custody: std::sync::Arc<custody::Custody>,
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
        match config.backend.as_str() {
            "none" => return Ok(None),
            "embedded" | "rpc" => {}
            other => {
                return Err(format!(
                    "chain.backend {other:?}: expected embedded, rpc or none"
                ));
            }
        }
        // Read (or created) only once the configuration is known to settle on a chain.
        let custody = std::sync::Arc::new(custody::Custody::load(config)?);
        let mut confirmations = config.confirmations;
        let mut watch = None;
        let backend = match config.backend.as_str() {
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
                let settlement = ChainSettlement::new(chain, settlement, operator);
                check_treasury(&settlement).await;
                Backend::Rpc(settlement)
            }
            _ => unreachable!("the backend was checked above"),
        };
        Ok(Some(Self {
            backend,
            store,
            confirmations,
            watch,
            custody,
        }))
    }

    /// The chain and Settlement contract this settler writes to.
    pub fn handle(&self) -> ChainHandle<'_> {
        match &self.backend {
            Backend::Embedded { settlement, .. } => ChainHandle::Embedded(settlement),
            Backend::Rpc(settlement) => ChainHandle::Rpc(settlement),
        }
    }

    /// Every account's chain address (and the custodial keys).
    pub fn custody(&self) -> &std::sync::Arc<custody::Custody> {
        &self.custody
    }

    /// Drives the outbox one step (see [`outbox`]): opens the custodial accounts of the next
    /// batch to send, checks every open batch against the chain, in slot order, and sends the
    /// next one once those before it are confirmed.
    pub async fn step(&self, now_ms: u64) -> Result<outbox::Progress, String> {
        match &self.backend {
            Backend::Embedded {
                settlement,
                demo_deposit,
            } => {
                let opened = self.open_accounts(settlement).await?;
                self.demo_deposits(settlement, *demo_deposit).await?;
                self.send(settlement, opened, now_ms).await
            }
            Backend::Rpc(settlement) => {
                let opened = self.open_accounts(settlement).await?;
                self.send(settlement, opened, now_ms).await
            }
        }
    }

    /// The outbox's step proper, once the accounts of its next batch were opened (`opened`:
    /// how many were opened, how many could not be), counted in the step's progress.
    async fn send<C: Chain>(
        &self,
        settlement: &ChainSettlement<C>,
        (opened, failures): (u64, u64),
        now_ms: u64,
    ) -> Result<outbox::Progress, String> {
        let progress = outbox::step(&self.store, settlement, self.confirmations, now_ms).await?;
        Ok(outbox::Progress {
            accounts_opened: opened,
            account_open_failures: failures,
            ..progress
        })
    }

    /// Opens, with its custodial key's `OpenAccount` signature (`openAccountFor`, sent by the
    /// operator), every custodial account of the first batch not yet confirmed that is not
    /// open. Idempotent: an open account is left alone, so a restart or a second step does
    /// nothing twice. An account that cannot be opened now (the node is away) is logged and
    /// the batch goes on to be refused `AccountNotOpened`, a refusal tried again by itself.
    /// Returns (accounts opened, accounts that could not be opened).
    async fn open_accounts<C: Chain>(
        &self,
        settlement: &ChainSettlement<C>,
    ) -> Result<(u64, u64), String> {
        let Some(record) = outbox::open_batches(&self.store)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
        else {
            return Ok((0, 0));
        };
        let (mut opened_count, mut failed) = (0, 0);
        let client =
            gridshare_contracts::SettlementClient::new(settlement.chain(), settlement.address());
        let mut candidates: Option<Vec<i64>> = None;
        for delta in &record.batch.deltas {
            if client
                .is_open(delta.account)
                .await
                .map_err(|e| e.to_string())?
            {
                continue;
            }
            if candidates.is_none() {
                candidates = Some(
                    self.store
                        .account_ids()
                        .await
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .chain([custody::UTILITY, custody::GRID_OPERATOR])
                        .collect(),
                );
            }
            let ids = candidates.iter().flatten().copied();
            let Some(key) = self
                .custody
                .custodial_account(delta.account, ids)
                .and_then(|a| self.custody.signer(a))
            else {
                tracing::warn!(target: "chain", slot = record.batch.id, account = %delta.account, "an account of the next batch is not open and the engine holds no key for it; its owner must open it");
                continue;
            };
            let opened = match client.open_signature(&key).await {
                Ok(signature) => {
                    client
                        .open_for(settlement.operator(), delta.account, signature)
                        .await
                }
                Err(e) => Err(e),
            };
            match opened {
                Ok(_) => {
                    opened_count += 1;
                    tracing::info!(target: "chain", slot = record.batch.id, account = %delta.account, "custodial account opened on chain");
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(target: "chain", slot = record.batch.id, account = %delta.account, error = %gridshare_contracts::household::describe(&e), "could not open a custodial account; the batch waits");
                }
            }
        }
        Ok((opened_count, failed))
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
        let address = self.custody.address(account);
        match &self.backend {
            Backend::Embedded { settlement, .. } => settlement.balance(address).await,
            Backend::Rpc(settlement) => settlement.balance(address).await,
        }
        .map_err(|e| e.to_string())
    }
}

/// Says in the log when the treasury has nothing in Settlement to front shortfalls with: then
/// a debit an account cannot pay — a household's, or the utility's when it buys surplus at
/// feed-in before its own credits came in — is cut from that batch's credits instead of being
/// fronted. A chain that cannot be asked now is left to the outbox to report.
async fn check_treasury<C: Chain>(settlement: &ChainSettlement<C>) {
    let chain = settlement.chain();
    let Ok(treasury) = chain
        .view(settlement.address(), Settlement::treasuryCall {})
        .await
    else {
        return;
    };
    if let Ok(balance) = settlement.balance(treasury).await
        && balance.is_zero()
    {
        tracing::warn!(target: "chain", %treasury, "the treasury holds nothing in Settlement: debits an account cannot pay (the utility buying surplus before its credits, an empty household) will be cut from the batch's credits instead of fronted; deposit into the treasury's account");
    }
}

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
) -> Result<SettlementBatch, String> {
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
        .ok_or_else(|| format!("slot {slot}: no trades and no readings to commit to"))?;
    let transfers = settled.balances.iter().map(|(account, amount)| NetDelta {
        account: custody.address(*account),
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
