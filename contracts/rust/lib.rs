//! Gridshare's on-chain half, seen from Rust: typed bindings to the committed contract
//! artifacts and the two chain backends the engine settles through.
//!
//! - [`bindings`]: `sol!` types generated from `contracts/artifacts/*.json` (ABI and bytecode
//!   compiled by the pinned solc-js; CI fails if they drift from `contracts/src`).
//! - [`chain`]: the [`Chain`] trait — send a transaction, make a call, read the clock — with
//!   [`EmbeddedChain`] (the same bytecode in-process on `revm`, state persisted to a file) and
//!   [`RpcChain`] (any EVM node over JSON-RPC through `alloy`).
//! - [`settlement`]: [`SettlementBackend`], the interface the market engine uses, implemented
//!   once over any [`Chain`]; [`EmbeddedBackend`] and [`RpcBackend`] are its two backends.
//! - [`batch`]: a slot's net deltas and the Merkle tree of its trades and readings.
//! - [`deploy`]: deploys the token, settlement and staking contracts on any [`Chain`].
//! - [`household`]: [`SettlementClient`], the calls households and the owner make to
//!   `Settlement` with their own keys.
//! - [`staking`]: [`StakingClient`], every call an operator, a verifier or a watcher makes to
//!   `MeterStaking`.

pub mod batch;
pub mod bindings;
pub mod chain;
pub mod deploy;
pub mod household;
pub mod settlement;
pub mod staking;

pub use batch::{
    BatchError, MerkleTree, NetDelta, SaleCredit, SettlementBatch, SlotSales, TradeLeaf,
};
pub use chain::{
    Chain, ChainError, ChainExt, EmbeddedChain, Inclusion, RpcChain, TxOutcome, TxStatus,
};
pub use deploy::{
    Deployment, P256VERIFY, REFERENCE_FEE_PER_KWH, SettlementParams, StakingParams,
    p256_precompile_available,
};
pub use household::{AccountStatus, SettlementClient};
pub use settlement::{
    ChainSettlement, EmbeddedBackend, RpcBackend, SettlementBackend, SettlementReceipt,
};
pub use staking::StakingClient;
