//! The smallest chain interface the contracts need — send a transaction, make a read-only
//! call, read and (on development chains) move the clock — and its two implementations.
//!
//! Design: everything above this trait (deployment, settlement, tests) is written once and runs
//! unchanged on the in-process EVM and on a real node; the backends differ only here.

mod embedded;
mod rpc;

pub use embedded::{DEFAULT_CHAIN_ID, EmbeddedChain};
pub use rpc::RpcChain;

use alloy::primitives::{Address, B256, Bytes, Log};
use alloy::sol_types::SolInterface;
use std::future::Future;

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The contract reverted; `data` is the revert data (a custom error, decodable with the
    /// contract's `*Errors` enum from [`crate::bindings`]).
    #[error(
        "transaction reverted (revert data 0x{})",
        alloy::primitives::hex::encode(data)
    )]
    Reverted {
        /// ABI-encoded custom error or `Error(string)`, empty when the node gives none.
        data: Bytes,
    },
    /// Execution stopped abnormally (out of gas, invalid opcode, code size limit).
    #[error("transaction halted: {0}")]
    Halted(String),
    /// The node could not be reached or answered with an error that is not a revert; worth
    /// retrying.
    #[error("JSON-RPC transport error: {0}")]
    Transport(String),
    /// The node answered something that could not be understood.
    #[error("unexpected answer from the chain: {0}")]
    Protocol(String),
    /// The embedded EVM rejected the transaction before executing it (nonce, gas, balance).
    #[error("embedded EVM rejected the transaction: {0}")]
    Evm(String),
    /// The embedded chain's state file could not be read or written.
    #[error("embedded chain state file {path}: {reason}")]
    State {
        /// The state file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The operation exists only on development chains (anvil, the embedded EVM).
    #[error("{0} is only available on a development chain")]
    NotDevChain(&'static str),
}

impl ChainError {
    /// Decodes the revert data as one contract's custom errors.
    pub fn decode<E: SolInterface>(&self) -> Option<E> {
        match self {
            Self::Reverted { data } => E::abi_decode(data).ok(),
            _ => None,
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transport(_))
    }
}

/// A mined (embedded: executed) successful transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxOutcome {
    /// Transaction hash (embedded: a hash of block number, sender and nonce).
    pub tx_hash: B256,
    /// Block it was included in.
    pub block_number: u64,
    /// Gas the transaction used, as a receipt reports it (intrinsic and calldata included).
    pub gas_used: u64,
    /// Address of the created contract, for a deployment.
    pub contract_address: Option<Address>,
    /// Logs emitted.
    pub logs: Vec<Log>,
}

/// Where a transaction stands, as the chain answers today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// The node does not know it: never received, dropped from its pool, or reorganised away
    /// without being re-added.
    Unknown,
    /// Known to the node, not yet in a block.
    Pending,
    /// In a block of the canonical chain.
    Included(Inclusion),
}

/// A transaction's place in the canonical chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inclusion {
    /// Block number.
    pub block_number: u64,
    /// Block hash: a reorganisation that replaces the block changes it.
    pub block_hash: B256,
    /// Gas used.
    pub gas_used: u64,
    /// Whether it succeeded (a transaction can be included and revert).
    pub success: bool,
}

/// A log of the canonical chain, with where it was emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLog {
    /// Block it was emitted in.
    pub block_number: u64,
    /// That block's hash (a reorganisation that replaces the block changes it).
    pub block_hash: B256,
    /// Transaction that emitted it.
    pub tx_hash: B256,
    /// Its index among the logs of its block.
    pub log_index: u64,
    /// The log itself (emitting contract, topics, data).
    pub log: Log,
}

/// An EVM chain the contracts run on.
pub trait Chain: Send + Sync {
    /// Sends a transaction from `from` (to `None`: a contract creation) and waits until it is
    /// included. A reverted transaction is an error carrying the revert data.
    fn send(
        &self,
        from: Address,
        to: Option<Address>,
        data: Bytes,
    ) -> impl Future<Output = Result<TxOutcome, ChainError>> + Send;

    /// Hands a transaction to the chain and returns its hash without waiting for a block (the
    /// embedded chain executes it at once). A transaction that would revert is refused with
    /// its revert data, as gas estimation finds it.
    fn submit(
        &self,
        from: Address,
        to: Address,
        data: Bytes,
    ) -> impl Future<Output = Result<B256, ChainError>> + Send;

    /// Where the transaction `hash` stands.
    fn transaction(&self, hash: B256) -> impl Future<Output = Result<TxStatus, ChainError>> + Send;

    /// The number of the latest block.
    fn head(&self) -> impl Future<Output = Result<u64, ChainError>> + Send;

    /// Executes a read-only call against the state after block `block` (`None`: the latest
    /// block — never the pending one, which holds transactions that may still be dropped).
    fn call_at(
        &self,
        from: Address,
        to: Address,
        data: Bytes,
        block: Option<u64>,
    ) -> impl Future<Output = Result<Bytes, ChainError>> + Send;

    /// Executes a read-only call against the latest block's state.
    fn call(
        &self,
        from: Address,
        to: Address,
        data: Bytes,
    ) -> impl Future<Output = Result<Bytes, ChainError>> + Send {
        self.call_at(from, to, data, None)
    }

    /// Timestamp of the latest block, seconds.
    fn timestamp(&self) -> impl Future<Output = Result<u64, ChainError>> + Send;

    /// Development chains only: moves the clock forward by `seconds`.
    fn advance_time(&self, seconds: u64) -> impl Future<Output = Result<(), ChainError>> + Send;

    /// The logs `address` emitted in blocks `from..=to` of the canonical chain, oldest first.
    fn logs(
        &self,
        address: Address,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<ChainLog>, ChainError>> + Send;

    /// The hash of the canonical block `number`; `None` beyond the head.
    fn block_hash(
        &self,
        number: u64,
    ) -> impl Future<Output = Result<Option<B256>, ChainError>> + Send;

    /// Development chains only: lets `account` send transactions (gas money, and on a node the
    /// right to send unsigned transactions as it).
    fn prepare_account(
        &self,
        account: Address,
    ) -> impl Future<Output = Result<(), ChainError>> + Send;
}

/// Typed calls on any [`Chain`], with the `sol!` call types of [`crate::bindings`].
pub trait ChainExt: Chain {
    /// Sends `call` to the contract at `to` from `from`.
    fn transact<T: alloy::sol_types::SolCall + Send>(
        &self,
        from: Address,
        to: Address,
        call: T,
    ) -> impl Future<Output = Result<TxOutcome, ChainError>> + Send {
        let data = Bytes::from(call.abi_encode());
        self.send(from, Some(to), data)
    }

    /// Calls a view function and decodes its return value.
    fn view<T: alloy::sol_types::SolCall + Send>(
        &self,
        to: Address,
        call: T,
    ) -> impl Future<Output = Result<T::Return, ChainError>> + Send {
        self.view_at(to, call, None)
    }

    /// Calls a view function against the state after block `block` (`None`: the latest).
    fn view_at<T: alloy::sol_types::SolCall + Send>(
        &self,
        to: Address,
        call: T,
        block: Option<u64>,
    ) -> impl Future<Output = Result<T::Return, ChainError>> + Send {
        let data = Bytes::from(call.abi_encode());
        async move {
            let out = self.call_at(Address::ZERO, to, data, block).await?;
            T::abi_decode_returns(&out)
                .map_err(|e| ChainError::Protocol(format!("cannot decode the return value: {e}")))
        }
    }
}

impl<C: Chain + ?Sized> ChainExt for C {}

/// A borrowed chain is a chain, so backends and helpers can share one.
impl<C: Chain> Chain for &C {
    fn send(
        &self,
        from: Address,
        to: Option<Address>,
        data: Bytes,
    ) -> impl Future<Output = Result<TxOutcome, ChainError>> + Send {
        (**self).send(from, to, data)
    }

    fn submit(
        &self,
        from: Address,
        to: Address,
        data: Bytes,
    ) -> impl Future<Output = Result<B256, ChainError>> + Send {
        (**self).submit(from, to, data)
    }

    fn transaction(&self, hash: B256) -> impl Future<Output = Result<TxStatus, ChainError>> + Send {
        (**self).transaction(hash)
    }

    fn head(&self) -> impl Future<Output = Result<u64, ChainError>> + Send {
        (**self).head()
    }

    fn call_at(
        &self,
        from: Address,
        to: Address,
        data: Bytes,
        block: Option<u64>,
    ) -> impl Future<Output = Result<Bytes, ChainError>> + Send {
        (**self).call_at(from, to, data, block)
    }

    fn timestamp(&self) -> impl Future<Output = Result<u64, ChainError>> + Send {
        (**self).timestamp()
    }

    fn advance_time(&self, seconds: u64) -> impl Future<Output = Result<(), ChainError>> + Send {
        (**self).advance_time(seconds)
    }

    fn logs(
        &self,
        address: Address,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<ChainLog>, ChainError>> + Send {
        (**self).logs(address, from, to)
    }

    fn block_hash(
        &self,
        number: u64,
    ) -> impl Future<Output = Result<Option<B256>, ChainError>> + Send {
        (**self).block_hash(number)
    }

    fn prepare_account(
        &self,
        account: Address,
    ) -> impl Future<Output = Result<(), ChainError>> + Send {
        (**self).prepare_account(account)
    }
}
