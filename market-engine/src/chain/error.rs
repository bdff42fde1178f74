//! Why settling on chain, following the chain's money or proving a meter's epoch failed: one
//! error type for the chain side of the engine, so a caller can tell what a user or operator
//! can act on (a setting, a refusal by a contract) from what is worth trying again (the node
//! is away, storage failed) and from what needs a person (a reorganisation deeper than the
//! configured confirmations, damaged stored data).

use gridshare_contracts::chain::ChainError;

use crate::market::MarketError;
use crate::store::StoreError;

/// Why an operation of the chain settler, the event follower or the prover failed.
#[derive(Debug, thiserror::Error)]
pub enum SettlerError {
    /// A `[chain]` setting is missing or wrong: its key and what it must be.
    #[error("chain.{key}: {expected}")]
    Config {
        /// The key in the `[chain]` section (or the environment variable it names).
        key: &'static str,
        /// What was expected, and what was found.
        expected: String,
    },
    /// The node (or the embedded chain) failed or a contract refused; a contract's custom
    /// error is decoded by name (see [`SettlerError::refused`]).
    #[error("{}", gridshare_contracts::household::describe(.0))]
    Chain(#[from] ChainError),
    /// Reading a contract's state failed; `what` names the call.
    #[error("reading {what}: {}", gridshare_contracts::household::describe(.source))]
    Read {
        /// The contract and function, e.g. `MeterStaking.schedule`.
        what: &'static str,
        /// The chain's error.
        source: ChainError,
    },
    /// The engine's database failed.
    #[error("the engine's storage: {0}")]
    Store(#[from] StoreError),
    /// The engine's books refused or failed.
    #[error(transparent)]
    Market(#[from] MarketError),
    /// A block the follower had read is no longer on the chain: the chain reorganised deeper
    /// than `[chain] confirmations`. Nothing more is followed until an operator resolves it.
    #[error(
        "the chain reorganised below the confirmed depth: block {block} is no longer {hash} \
         (raise [chain] confirmations); deposits and withdrawals are not followed until this \
         is resolved"
    )]
    Reorganised {
        /// The block the follower's cursor is at.
        block: u64,
        /// The hash the follower read for it.
        hash: String,
    },
    /// The node does not know a block below its own head (it is still syncing, or pruned).
    #[error("the node does not know block {block} below its head {head}")]
    MissingBlock {
        /// The block asked for.
        block: u64,
        /// The node's head.
        head: u64,
    },
    /// A file the settler keeps beside the chain (the deployment record, the custody secret).
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Something the engine stored earlier does not parse (a linked wallet, a transaction
    /// hash, a reading digest): a defect or a damaged database, not the request.
    #[error("stored {what} {value:?}: {reason}")]
    Stored {
        /// What it is.
        what: &'static str,
        /// The stored text.
        value: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The engine holds no key for the account: its household linked a wallet of its own.
    #[error("the engine holds no key for account {account}: withdraw with your own wallet")]
    NoKey {
        /// The account.
        account: i64,
    },
    /// The custody master secret, from which the households' custodial keys come, cannot be
    /// read, made or used.
    #[error("custody master secret: {0}")]
    Custody(String),
    /// A log of the Settlement contract the follower cannot book (it does not decode, or its
    /// amount is beyond what the engine books).
    #[error("block {block}: {reason}")]
    Log {
        /// The log's block.
        block: u64,
        /// Why.
        reason: String,
    },
    /// A settled slot cannot become a batch.
    #[error("slot {slot}: {reason}")]
    Batch {
        /// The slot.
        slot: u64,
        /// Why.
        reason: String,
    },
}

impl SettlerError {
    /// Wraps the chain's error of reading `what` (e.g. `MeterStaking.schedule`), for
    /// `map_err`.
    pub fn read(what: &'static str) -> impl Fn(ChainError) -> Self {
        move |source| Self::Read { what, source }
    }

    /// Whether a contract refused (reverted): the request itself was wrong, not the node.
    pub fn refused(&self) -> bool {
        matches!(
            self,
            Self::Chain(ChainError::Reverted { .. } | ChainError::Halted(_))
        )
    }

    /// Whether trying again later may succeed (the node or storage was away).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Chain(e) | Self::Read { source: e, .. } => e.is_transient(),
            Self::Store(e) => e.is_unavailable(),
            Self::MissingBlock { .. } => true,
            _ => false,
        }
    }
}
