//! The `[chain]` section of the engine's configuration: which chain it settles on, where its
//! contracts and keys are, how deep a block must be to count, and what the engine does on chain
//! besides settling (watching for fraud, proving its meters' epochs).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
