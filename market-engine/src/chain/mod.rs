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
mod error;
pub mod follow;
pub mod link;
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

pub use error::SettlerError;

use crate::market::{Market, SettledSlot};
use crate::store::Store;
/// Where the engine settles (`[chain] backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainBackend {
    /// The contracts executed in-process by revm, their state in a file: the zero-setup
    /// default, for development and demos.
    #[default]
    Embedded,
    /// Any EVM node over JSON-RPC (anvil, a testnet, a chain in production).
    Rpc,
    /// No chain: settlement stays in the engine's ledger.
    None,
}

/// The `[chain]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// `embedded`, `rpc` or `none` (settle in the ledger only).
    pub backend: ChainBackend,
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
    /// No longer used: operator-recorded deposits are deposited on chain for their household
    /// instead (see [`follow`]). Accepted so that older config files still load.
    pub demo_deposit: Option<u64>,
    /// Where the engine starts reading the Settlement contract's events the first time (its
    /// deployment block; 0 reads from genesis). The embedded chain starts at 0.
    pub follow_from_block: u64,
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
            backend: ChainBackend::Embedded,
            state_file: "gridshare-chain.json".into(),
            rpc_url: String::new(),
            settlement_address: String::new(),
            operator_key_env: "GRIDSHARE_OPERATOR_KEY".into(),
            staking_address: String::new(),
            watch: true,
            confirmations: 1,
            outbox_file: None,
            demo_deposit: None,
            follow_from_block: 0,
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

    /// Money between the engine's books and the chain, one step: every deposit the operator
    /// recorded (money that arrived off chain) is deposited on chain for its household, before
    /// the batches that spend it; the contract's confirmed money events are applied to the
    /// books ([`follow`]); and the custodial accounts' withdrawals that are due are paid out to
    /// their custodial addresses.
    pub async fn money_step(&self, market: &Market, now_ms: u64) -> MoneyProgress {
        match &self.backend {
            Backend::Embedded(settlement) => {
                self.money_step_on(settlement, market, now_ms, |_| {
                    Some(settlement.chain().clone())
                })
                .await
            }
            Backend::Rpc { settlement, url } => {
                self.money_step_on(settlement, market, now_ms, |key| {
                    RpcChain::connect(url, Some(key)).ok()
                })
                .await
            }
        }
    }

    async fn money_step_on<C: Chain + Clone>(
        &self,
        settlement: &ChainSettlement<C>,
        market: &Market,
        now_ms: u64,
        as_household: impl Fn(alloy::signers::local::PrivateKeySigner) -> Option<C>,
    ) -> MoneyProgress {
        let mut progress = MoneyProgress::default();
        match self.mirror_deposits(settlement, market).await {
            Ok((mirrored, failed)) => {
                progress.mirrored = mirrored;
                progress.mirror_failures = failed;
            }
            Err(e) => {
                progress.mirror_failures += 1;
                tracing::warn!(target: "chain", "operator-recorded deposits not deposited on chain: {e}");
            }
        }
        // Catching up (a first start on a long chain) reads up to this many ranges a step.
        for _ in 0..FOLLOW_RANGES_PER_STEP {
            match follow::step(
                market,
                &self.store,
                settlement,
                &self.custody,
                self.confirmations,
                self.follow_from,
                now_ms,
            )
            .await
            {
                Ok(f) => {
                    let applied = progress.follow.map_or(0, |p| p.applied);
                    progress.follow = Some(follow::FollowProgress {
                        applied: applied + f.applied,
                        ..f
                    });
                    if f.behind == 0 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "chain", "deposits and withdrawals on chain not followed: {e}");
                    progress.follow_error = Some(e);
                    break;
                }
            }
        }
        if let Err(e) = self.pay_out(settlement, market, now_ms, as_household).await {
            tracing::warn!(target: "chain", "custodial withdrawals not paid out: {e}");
        }
        progress
    }

    /// Deposits what the operator recorded for each household and is not on chain yet — the
    /// net of its unmirrored rows, so a withdrawal paid off chain before a chain was configured
    /// lowers it — with `depositFor` from the operator key (which must hold the payment
    /// token), opening a custodial account first if needed. The transaction's hash is written
    /// on the rows as soon as the node has it; they count as on chain once it is in a block,
    /// and a dropped or reverted one is sent again. Returns (accounts mirrored, failures).
    async fn mirror_deposits<C: Chain>(
        &self,
        settlement: &ChainSettlement<C>,
        market: &Market,
    ) -> Result<(u64, u64), SettlerError> {
        use alloy::sol_types::SolCall;
        use gridshare_contracts::chain::TxStatus;
        let rows = self.store.unmirrored_funding().await?;
        let (mut mirrored, mut failed) = (0, 0);
        // First what was sent: in a block now, still waiting, or to be sent again.
        let mut waiting = std::collections::BTreeSet::new();
        let sent: std::collections::BTreeMap<&str, i64> = rows
            .iter()
            .filter_map(|r| r.chain_tx.as_deref().map(|tx| (tx, r.account)))
            .collect();
        for (tx, account) in sent {
            let hash: B256 =
                tx.parse()
                    .map_err(|e: alloy::hex::FromHexError| SettlerError::Stored {
                        what: "deposit transaction",
                        value: tx.to_owned(),
                        reason: e.to_string(),
                    })?;
            match settlement.chain().transaction(hash).await? {
                TxStatus::Included(i) if i.success => {
                    market.mark_mirrored(tx, i.block_number).await?;
                    mirrored += 1;
                }
                TxStatus::Pending => {
                    waiting.insert(account);
                }
                _ => {
                    market.unmark_mirrored(tx).await?;
                }
            }
        }
        // Then what is new: one deposit per account, of the net of its rows not yet sent.
        let mut net: std::collections::BTreeMap<i64, (i64, Vec<i64>)> = Default::default();
        for r in rows
            .iter()
            .filter(|r| r.chain_tx.is_none() && !waiting.contains(&r.account))
        {
            let entry = net.entry(r.account).or_default();
            entry.0 = entry.0.saturating_add(r.amount);
            entry.1.push(r.id);
        }
        let client =
            gridshare_contracts::SettlementClient::new(settlement.chain(), settlement.address());
        let operator = settlement.operator();
        for (account, (amount, ids)) in net {
            // Nothing to deposit (more was paid out off chain than recorded since): the rows
            // wait for the next deposit to net against.
            let Ok(amount) = u64::try_from(amount) else {
                continue;
            };
            if amount == 0 {
                continue;
            }
            let address = self.custody.address(account);
            let sent = async {
                if !client.is_open(address).await?
                    && let Some(key) = self.custody.signer(account)
                {
                    let signature = client.open_signature(&key).await?;
                    client.open_for(operator, address, signature).await?;
                }
                client.approve(operator, U256::from(amount)).await?;
                let data = Settlement::depositForCall {
                    account: address,
                    amount: U256::from(amount),
                }
                .abi_encode();
                settlement
                    .chain()
                    .submit(operator, settlement.address(), data.into())
                    .await
            }
            .await;
            match sent {
                Ok(hash) => {
                    let tx = format!("{hash:#x}");
                    market.mark_sent(&ids, &tx).await?;
                    if let TxStatus::Included(i) = settlement.chain().transaction(hash).await?
                        && i.success
                    {
                        market.mark_mirrored(&tx, i.block_number).await?;
                        mirrored += 1;
                    }
                    tracing::info!(target: "chain", account, amount, tx, "operator-recorded deposit deposited on chain");
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(target: "chain", account, amount, error = %gridshare_contracts::household::describe(&e), "could not deposit an operator-recorded deposit on chain (does the operator key hold the payment token?); tried again");
                }
            }
        }
        Ok((mirrored, failed))
    }

    /// Pays out the pending withdrawals of custodial accounts that are due (to the custodial
    /// address, whose key the household can export).
    async fn pay_out<C: Chain + Clone>(
        &self,
        settlement: &ChainSettlement<C>,
        market: &Market,
        now_ms: u64,
        as_household: impl Fn(alloy::signers::local::PrivateKeySigner) -> Option<C>,
    ) -> Result<(), SettlerError> {
        let due = market.due_withdrawals().await?;
        if due.is_empty() {
            return Ok(());
        }
        let chain_now = settlement.chain().timestamp().await?;
        for (account, ready_at) in due {
            if ready_at > chain_now || !self.payout_may_try(account, now_ms) {
                continue;
            }
            let Some(key) = self.custody.signer(account) else {
                continue;
            };
            let from = key.address();
            let Some(chain) = as_household(key) else {
                continue;
            };
            let client = gridshare_contracts::SettlementClient::new(chain, settlement.address());
            match client.withdraw(from).await {
                Ok((paid, out)) => {
                    tracing::info!(target: "chain", account, %paid, tx = %out.tx_hash, "custodial withdrawal paid out");
                }
                Err(e) => {
                    tracing::warn!(target: "chain", account, error = %gridshare_contracts::household::describe(&e), "could not pay out a custodial withdrawal (gas for its address?); tried again in a minute");
                }
            }
        }
        Ok(())
    }

    /// Whether a payout for `account` may be tried now (at most once a minute each).
    fn payout_may_try(&self, account: i64, now_ms: u64) -> bool {
        let mut tried = self
            .payouts_tried
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match tried.get(&account) {
            Some(at) if now_ms < at + 60_000 => false,
            _ => {
                tried.insert(account, now_ms);
                true
            }
        }
    }

    /// Asks the contract, with the account's custodial key, to pay out `amount` after the
    /// withdrawal delay. The books change when the request is confirmed on chain (it then
    /// holds `amount` back from bids) and again when it is paid out.
    pub async fn request_withdrawal(
        &self,
        account: i64,
        amount: u64,
    ) -> Result<WithdrawalRequest, SettlerError> {
        let Some(key) = self.custody.signer(account) else {
            return Err(SettlerError::NoKey { account });
        };
        let from = key.address();
        let outcome = match &self.backend {
            Backend::Embedded(settlement) => {
                gridshare_contracts::SettlementClient::new(settlement.chain(), settlement.address())
                    .request_withdrawal(from, U256::from(amount))
                    .await
            }
            Backend::Rpc { settlement, url } => {
                let chain = RpcChain::connect(url, Some(key))?;
                gridshare_contracts::SettlementClient::new(chain, settlement.address())
                    .request_withdrawal(from, U256::from(amount))
                    .await
            }
        }?;
        let ready_at = outcome
            .logs
            .iter()
            .find_map(|log| {
                use alloy::sol_types::SolEvent;
                Settlement::WithdrawalRequested::decode_log_data(&log.data).ok()
            })
            .map_or(0, |e| e.readyAt);
        Ok(WithdrawalRequest {
            address: from,
            tx: outcome.tx_hash,
            ready_at,
        })
    }

    /// The Settlement contract's address.
    pub fn settlement_address(&self) -> Address {
        match &self.backend {
            Backend::Embedded(settlement) => settlement.address(),
            Backend::Rpc { settlement, .. } => settlement.address(),
        }
    }

    /// Every account's books against the chain (see [`Reconciliation`]).
    pub async fn reconcile(&self) -> Result<Vec<Reconciliation>, SettlerError> {
        match &self.backend {
            Backend::Embedded(settlement) => self.reconcile_on(settlement).await,
            Backend::Rpc { settlement, .. } => self.reconcile_on(settlement).await,
        }
    }

    async fn reconcile_on<C: Chain>(
        &self,
        settlement: &ChainSettlement<C>,
    ) -> Result<Vec<Reconciliation>, SettlerError> {
        let client =
            gridshare_contracts::SettlementClient::new(settlement.chain(), settlement.address());
        // Money on its way: batches not yet applied on chain, deposits not yet mirrored.
        let mut in_flight: std::collections::BTreeMap<Address, i128> = Default::default();
        for record in self.store.open_settlement_batches().await? {
            if settlement.batch_root(record.batch.id).await?.is_none() {
                for d in &record.batch.deltas {
                    *in_flight.entry(d.account).or_default() += d.amount;
                }
            }
        }
        for r in self.store.unmirrored_funding().await? {
            *in_flight
                .entry(self.custody.address(r.account))
                .or_default() += i128::from(r.amount);
        }
        let names = self.store.account_names().await?;
        let mut out = Vec::new();
        for (account, engine) in self.store.booked_balances().await? {
            let address = self.custody.address(account);
            let a = client.account(address).await?;
            let chain = i128::try_from(a.balance).unwrap_or(i128::MAX)
                + i128::try_from(a.pending_withdrawal).unwrap_or(i128::MAX)
                - i128::try_from(a.debt).unwrap_or(i128::MAX);
            let flight = in_flight.get(&address).copied().unwrap_or(0);
            out.push(Reconciliation {
                account,
                name: match account {
                    custody::UTILITY => "(utility)".into(),
                    custody::GRID_OPERATOR => "(grid operator)".into(),
                    _ => names.get(&account).cloned().unwrap_or_default(),
                },
                address,
                engine: i128::from(engine),
                chain_balance: a.balance,
                chain_pending: a.pending_withdrawal,
                chain_debt: a.debt,
                in_flight: flight,
                difference: i128::from(engine) - chain - flight,
            });
        }
        Ok(out)
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

/// What one money step did ([`ChainSettler::money_step`]).
#[derive(Debug, Default)]
pub struct MoneyProgress {
    /// Operator-recorded deposits now on chain.
    pub mirrored: u64,
    /// Attempts to put one there that failed.
    pub mirror_failures: u64,
    /// What the event follower read and applied (`None` if its first range failed).
    pub follow: Option<follow::FollowProgress>,
    /// Why it stopped short, if it did.
    pub follow_error: Option<SettlerError>,
}

/// A withdrawal requested on chain with a custodial key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WithdrawalRequest {
    /// The custodial address it will be paid to.
    pub address: Address,
    /// The request's transaction.
    pub tx: B256,
    /// When it may be paid out (unix seconds).
    pub ready_at: u64,
}

/// One account's books against the chain: `engine` should equal `balanceOf + withdrawalOf −
/// debtOf` plus what is on its way there (`in_flight`: batches not yet applied on chain,
/// operator-recorded deposits not yet deposited); `difference` is what is left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    /// Account id (−1 the utility, −2 the grid operator).
    pub account: i64,
    /// Its name.
    pub name: String,
    /// Its chain address.
    pub address: Address,
    /// Its balance in the engine's books.
    #[serde(with = "as_string")]
    pub engine: i128,
    /// `balanceOf` on chain.
    pub chain_balance: U256,
    /// `withdrawalOf` on chain (requested, not paid out).
    pub chain_pending: U256,
    /// `debtOf` on chain.
    pub chain_debt: U256,
    /// On its way to the chain.
    #[serde(with = "as_string")]
    pub in_flight: i128,
    /// engine − (balance + pending − debt) − in flight; zero when the books agree.
    #[serde(with = "as_string")]
    pub difference: i128,
}

mod as_string {
    pub(super) fn serialize<S: serde::Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
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
