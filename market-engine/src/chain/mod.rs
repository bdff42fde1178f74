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

mod batch;
mod config;
pub mod custody;
mod error;
pub mod follow;
pub mod link;
mod money;
pub mod outbox;
mod reconcile;
pub mod verify;

use alloy::primitives::{Address, B256, U256};
use gridshare_contracts::bindings::{GridToken, Settlement};
use gridshare_contracts::chain::{Chain, ChainExt, EmbeddedChain, RpcChain};
use gridshare_contracts::deploy::{Deployment, SettlementParams, StakingParams};
use gridshare_contracts::settlement::{ChainSettlement, SettlementBackend};
use serde::{Deserialize, Serialize};

pub use batch::{batch_of, sales_of, trade_leaf};
pub use config::{ChainBackend, ChainConfig};
pub use error::SettlerError;
pub use money::{MoneyProgress, WithdrawalRequest};
pub use reconcile::Reconciliation;

use crate::store::Store;

/// Block ranges ([`follow::BLOCKS_PER_STEP`] each) the event follower reads in one money step
/// while it is behind.
const FOLLOW_RANGES_PER_STEP: usize = 25;

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
    Embedded(ChainSettlement<EmbeddedChain>),
    Rpc {
        settlement: ChainSettlement<RpcChain>,
        url: String,
    },
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
    /// Where the event follower starts without a cursor.
    follow_from: u64,
    /// When a custodial payout was last tried, per account.
    payouts_tried: std::sync::Mutex<std::collections::HashMap<i64, u64>>,
    /// Wallet-link challenges issued, per account ([`link`]).
    challenges: std::sync::Mutex<std::collections::HashMap<i64, link::Issued>>,
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
    pub async fn open(config: &ChainConfig, store: Store) -> Result<Option<Self>, SettlerError> {
        Self::open_with_key(config, store, std::env::var(&config.operator_key_env).ok()).await
    }

    /// As [`ChainSettler::open`], with the RPC operator key given directly.
    pub async fn open_with_key(
        config: &ChainConfig,
        store: Store,
        operator_key: Option<String>,
    ) -> Result<Option<Self>, SettlerError> {
        if config.demo_deposit.is_some() {
            tracing::warn!(target: "chain", "chain.demo_deposit is no longer used: deposits the operator records are deposited on chain for their household");
        }
        if let Some(file) = &config.outbox_file {
            tracing::warn!(target: "chain", file = %file.display(), "chain.outbox_file is no longer used: the settlement outbox lives in the engine's database (batches already on chain are recognised by their root)");
        }
        if config.embedded_epoch_s == 0 || config.embedded_epoch_s > u64::from(u32::MAX) {
            return Err(SettlerError::Config {
                key: "embedded_epoch_s",
                expected: "between 1 and 4294967295 seconds".into(),
            });
        }
        if config.prove_retry_s == 0 {
            return Err(SettlerError::Config {
                key: "prove_retry_s",
                expected: "at least 1 second".into(),
            });
        }
        if config.confirmations == 0 {
            return Err(SettlerError::Config {
                key: "confirmations",
                expected: "at least 1 (1 = in a block)".into(),
            });
        }
        if config.backend == ChainBackend::None {
            return Ok(None);
        }
        // Read (or created) only once the configuration is known to settle on a chain.
        let custody = custody::Custody::load(config)?;
        for (account, address) in store.linked_wallets().await? {
            let wallet: Address =
                address
                    .parse()
                    .map_err(
                        |e: <Address as std::str::FromStr>::Err| SettlerError::Stored {
                            what: "linked wallet",
                            value: format!("{address} (account {account})"),
                            reason: e.to_string(),
                        },
                    )?;
            custody.link(account, wallet);
        }
        let custody = std::sync::Arc::new(custody);
        let mut confirmations = config.confirmations;
        let mut watch = None;
        let backend = match config.backend {
            ChainBackend::None => return Ok(None),
            ChainBackend::Embedded => {
                let chain =
                    EmbeddedChain::open(&config.state_file).map_err(|e| SettlerError::Config {
                        key: "state_file",
                        expected: e.to_string(),
                    })?;
                // v2: the Settlement of issue 14 (opened accounts, allowances, debt). A state
                // file from before names a contract this engine cannot drive; the contracts are
                // deployed again beside it on the same chain (a demo chain: its old balances
                // stay in the old contract).
                let record_path = config.state_file.with_extension("deployment-v2.json");
                let record = match std::fs::read(&record_path) {
                    Ok(bytes) => {
                        serde_json::from_slice::<DeploymentRecord>(&bytes).map_err(|e| {
                            SettlerError::File {
                                path: record_path.display().to_string(),
                                reason: e.to_string(),
                            }
                        })?
                    }
                    Err(_) => {
                        let now = chain.timestamp().await?;
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
                        .await?;
                        chain
                            .transact(
                                EMBEDDED_OPERATOR,
                                d.payment_token,
                                GridToken::approveCall {
                                    spender: d.settlement,
                                    value: U256::MAX,
                                },
                            )
                            .await?;
                        let record = DeploymentRecord {
                            network_token: d.network_token,
                            payment_token: d.payment_token,
                            settlement: d.settlement,
                            staking: d.staking,
                        };
                        let json =
                            serde_json::to_vec_pretty(&record).map_err(|e| SettlerError::File {
                                path: record_path.display().to_string(),
                                reason: e.to_string(),
                            })?;
                        std::fs::write(&record_path, json).map_err(|e| SettlerError::File {
                            path: record_path.display().to_string(),
                            reason: e.to_string(),
                        })?;
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
                let settlement = ChainSettlement::new(chain, record.settlement, EMBEDDED_OPERATOR);
                fund_embedded_treasury(&settlement).await?;
                Backend::Embedded(settlement)
            }
            ChainBackend::Rpc => {
                let key = operator_key.ok_or_else(|| SettlerError::Config {
                    key: "operator_key_env",
                    expected: format!(
                        "backend = \"rpc\" needs the operator's private key in ${}",
                        config.operator_key_env
                    ),
                })?;
                let signer: alloy::signers::local::PrivateKeySigner =
                    key.trim().parse().map_err(|e| SettlerError::Config {
                        key: "operator_key_env",
                        expected: format!("${} holds no private key: {e}", config.operator_key_env),
                    })?;
                let operator = signer.address();
                let chain = RpcChain::connect(&config.rpc_url, Some(signer)).map_err(|e| {
                    SettlerError::Config {
                        key: "rpc_url",
                        expected: e.to_string(),
                    }
                })?;
                let settlement: Address = config.settlement_address.parse().map_err(
                    |e: <Address as std::str::FromStr>::Err| SettlerError::Config {
                        key: "settlement_address",
                        expected: e.to_string(),
                    },
                )?;
                if config.watch && !config.staking_address.is_empty() {
                    let staking: Address = config.staking_address.parse().map_err(
                        |e: <Address as std::str::FromStr>::Err| SettlerError::Config {
                            key: "staking_address",
                            expected: e.to_string(),
                        },
                    )?;
                    watch = Some(WatchTarget {
                        chain: WatchedChain::Rpc(chain.clone()),
                        staking,
                        reporter: operator,
                    });
                }
                let settlement = ChainSettlement::new(chain, settlement, operator);
                check_treasury(&settlement).await;
                Backend::Rpc {
                    settlement,
                    url: config.rpc_url.clone(),
                }
            }
        };
        let follow_from = match &backend {
            Backend::Embedded(_) => 0,
            Backend::Rpc { .. } => config.follow_from_block,
        };
        Ok(Some(Self {
            backend,
            store,
            confirmations,
            follow_from,
            payouts_tried: Default::default(),
            challenges: Default::default(),
            watch,
            custody,
        }))
    }

    /// The chain and Settlement contract this settler writes to.
    pub fn handle(&self) -> ChainHandle<'_> {
        match &self.backend {
            Backend::Embedded(settlement) => ChainHandle::Embedded(settlement),
            Backend::Rpc { settlement, .. } => ChainHandle::Rpc(settlement),
        }
    }

    /// Every account's chain address (and the custodial keys).
    pub fn custody(&self) -> &std::sync::Arc<custody::Custody> {
        &self.custody
    }

    /// Drives the outbox one step (see [`outbox`]): opens the custodial accounts of the next
    /// batch to send, checks every open batch against the chain, in slot order, and sends the
    /// next one once those before it are confirmed.
    pub async fn step(&self, now_ms: u64) -> Result<outbox::Progress, SettlerError> {
        match &self.backend {
            Backend::Embedded(settlement) => {
                let opened = self.open_accounts(settlement).await?;
                self.send(settlement, opened, now_ms).await
            }
            Backend::Rpc { settlement, .. } => {
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
    ) -> Result<outbox::Progress, SettlerError> {
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
    ) -> Result<(u64, u64), SettlerError> {
        let Some(record) = self
            .store
            .open_settlement_batches()
            .await?
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
            if client.is_open(delta.account).await? {
                continue;
            }
            if candidates.is_none() {
                candidates = Some(
                    self.store
                        .account_ids()
                        .await?
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

    /// The Settlement contract's address.
    pub fn settlement_address(&self) -> Address {
        match &self.backend {
            Backend::Embedded(settlement) => settlement.address(),
            Backend::Rpc { settlement, .. } => settlement.address(),
        }
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
    pub async fn settled_root(&self, slot: u64) -> Result<Option<B256>, SettlerError> {
        match &self.backend {
            Backend::Embedded(settlement) => settlement.batch_root(slot).await,
            Backend::Rpc { settlement, .. } => settlement.batch_root(slot).await,
        }
        .map_err(SettlerError::from)
    }

    /// An account's balance in the settlement contract.
    pub async fn balance(&self, account: i64) -> Result<U256, SettlerError> {
        let address = self.custody.address(account);
        match &self.backend {
            Backend::Embedded(settlement) => settlement.balance(address).await,
            Backend::Rpc { settlement, .. } => settlement.balance(address).await,
        }
        .map_err(SettlerError::from)
    }
}

/// The embedded chain's treasury (the operator) keeps a balance in Settlement, so it fronts
/// what an account cannot pay (the utility buying surplus before its own credits came in)
/// instead of the batch's credits being cut.
async fn fund_embedded_treasury(
    settlement: &ChainSettlement<EmbeddedChain>,
) -> Result<(), SettlerError> {
    let balance = settlement.balance(EMBEDDED_OPERATOR).await?;
    if balance.is_zero() {
        settlement
            .chain()
            .transact(
                EMBEDDED_OPERATOR,
                settlement.address(),
                Settlement::depositCall {
                    amount: U256::from(10u64).pow(U256::from(27u64)),
                },
            )
            .await?;
    }
    Ok(())
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
