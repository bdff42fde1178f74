//! A chain reached over JSON-RPC through `alloy`: anvil in development and CI, any
//! Osaka-capable chain or L2 in production (the P256VERIFY precompile must exist).

use super::{Chain, ChainError, ChainLog, Inclusion, TxOutcome, TxStatus};
use alloy::eips::BlockId;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, TransactionInput, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::{RpcError, TransportError};
use std::borrow::Cow;
use std::time::Duration;

/// Gas money a development account is given by [`Chain::prepare_account`] (1 000 ether).
const DEV_BALANCE_WEI: u128 = 1_000 * 1_000_000_000_000_000_000;

/// A JSON-RPC node. Transactions from the local key are signed here; transactions from any
/// other account are sent unsigned (`eth_sendTransaction`), which only development nodes with
/// unlocked or impersonated accounts accept.
#[derive(Clone)]
pub struct RpcChain {
    node: DynProvider,
    signer: Option<(Address, DynProvider)>,
    receipt_timeout: Duration,
}

impl std::fmt::Debug for RpcChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcChain")
            .field("signer", &self.signer.as_ref().map(|(a, _)| a))
            .finish_non_exhaustive()
    }
}

impl RpcChain {
    /// Connects to `url` (http or https); `signer` is the key that signs its own transactions
    /// (the settlement operator, the deployer).
    pub fn connect(url: &str, signer: Option<PrivateKeySigner>) -> Result<Self, ChainError> {
        let url: alloy::transports::http::reqwest::Url = url
            .parse()
            .map_err(|e| ChainError::Transport(format!("invalid node URL {url:?}: {e}")))?;
        let node = ProviderBuilder::new().connect_http(url.clone()).erased();
        let signer = signer.map(|key| {
            let address = key.address();
            let provider = ProviderBuilder::new()
                .wallet(key)
                .connect_http(url)
                .erased();
            (address, provider)
        });
        Ok(Self {
            node,
            signer,
            receipt_timeout: Duration::from_secs(120),
        })
    }

    /// The address of the local signing key, if any.
    pub fn signer_address(&self) -> Option<Address> {
        self.signer.as_ref().map(|(a, _)| *a)
    }

    /// Polls for the receipt, starting fast (a development node mines at once) and backing off
    /// to one poll per second (a public chain mines every few seconds).
    async fn wait_for_receipt(
        &self,
        hash: alloy::primitives::B256,
    ) -> Result<alloy::rpc::types::TransactionReceipt, ChainError> {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(5);
        loop {
            if let Some(receipt) = self
                .node
                .get_transaction_receipt(hash)
                .await
                .map_err(map_error)?
            {
                return Ok(receipt);
            }
            if started.elapsed() > self.receipt_timeout {
                return Err(ChainError::Transport(format!(
                    "no receipt for transaction {hash} after {:?}",
                    self.receipt_timeout
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    /// How long to wait for a sent transaction's receipt before reporting a (retryable)
    /// transport error; two minutes by default.
    pub fn with_receipt_timeout(mut self, timeout: Duration) -> Self {
        self.receipt_timeout = timeout;
        self
    }

    async fn dev_request(
        &self,
        what: &'static str,
        method: &'static str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, ChainError> {
        self.node
            .raw_request::<_, serde_json::Value>(Cow::Borrowed(method), params)
            .await
            .map_err(|e| match e {
                RpcError::ErrorResp(_) => ChainError::NotDevChain(what),
                other => map_error(other),
            })
    }
}

impl RpcChain {
    /// Signs (or, for another account, hands unsigned) and broadcasts; the hash once the node
    /// accepted it.
    async fn broadcast(
        &self,
        from: Address,
        to: Option<Address>,
        data: Bytes,
    ) -> Result<B256, ChainError> {
        // The nonce is read from the node for every transaction: a cached nonce would be
        // consumed by a transaction that failed gas estimation (a revert) and never sent,
        // leaving a gap that stalls every later transaction from the account.
        let nonce = self
            .node
            .get_transaction_count(from)
            .pending()
            .await
            .map_err(map_error)?;
        let tx = TransactionRequest {
            from: Some(from),
            to: Some(to.map_or(TxKind::Create, TxKind::Call)),
            input: TransactionInput::new(data),
            nonce: Some(nonce),
            ..Default::default()
        };
        let provider = match &self.signer {
            Some((address, signed)) if *address == from => signed,
            _ => &self.node,
        };
        // Gas estimation runs the transaction first, so a revert surfaces here with its data.
        let pending = provider.send_transaction(tx).await.map_err(map_error)?;
        Ok(*pending.tx_hash())
    }
}

impl Chain for RpcChain {
    async fn send(
        &self,
        from: Address,
        to: Option<Address>,
        data: Bytes,
    ) -> Result<TxOutcome, ChainError> {
        let hash = self.broadcast(from, to, data).await?;
        let receipt = self.wait_for_receipt(hash).await?;
        if !receipt.status() {
            return Err(ChainError::Reverted { data: Bytes::new() });
        }
        Ok(TxOutcome {
            tx_hash: receipt.transaction_hash,
            block_number: receipt.block_number.unwrap_or_default(),
            gas_used: receipt.gas_used,
            contract_address: receipt.contract_address,
            logs: receipt
                .inner
                .logs()
                .iter()
                .map(|l| l.inner.clone())
                .collect(),
        })
    }

    async fn submit(&self, from: Address, to: Address, data: Bytes) -> Result<B256, ChainError> {
        self.broadcast(from, Some(to), data).await
    }

    async fn transaction(&self, hash: B256) -> Result<TxStatus, ChainError> {
        if let Some(receipt) = self
            .node
            .get_transaction_receipt(hash)
            .await
            .map_err(map_error)?
        {
            let (Some(block_number), Some(block_hash)) = (receipt.block_number, receipt.block_hash)
            else {
                return Ok(TxStatus::Pending);
            };
            return Ok(TxStatus::Included(Inclusion {
                block_number,
                block_hash,
                gas_used: receipt.gas_used,
                success: receipt.status(),
            }));
        }
        let known = self
            .node
            .get_transaction_by_hash(hash)
            .await
            .map_err(map_error)?;
        Ok(if known.is_some() {
            TxStatus::Pending
        } else {
            TxStatus::Unknown
        })
    }

    async fn head(&self) -> Result<u64, ChainError> {
        self.node.get_block_number().await.map_err(map_error)
    }

    async fn call_at(
        &self,
        from: Address,
        to: Address,
        data: Bytes,
        block: Option<u64>,
    ) -> Result<Bytes, ChainError> {
        let tx = TransactionRequest {
            from: Some(from),
            to: Some(TxKind::Call(to)),
            input: TransactionInput::new(data),
            ..Default::default()
        };
        // Always a mined block: without one, a node (anvil) answers from its pending block,
        // which holds transactions that may never be mined.
        let at = block.map_or_else(BlockId::latest, BlockId::number);
        self.node.call(tx).block(at).await.map_err(map_error)
    }

    async fn timestamp(&self) -> Result<u64, ChainError> {
        let block = self
            .node
            .raw_request::<_, serde_json::Value>(
                Cow::Borrowed("eth_getBlockByNumber"),
                ("latest", false),
            )
            .await
            .map_err(map_error)?;
        block
            .get("timestamp")
            .and_then(|t| t.as_str())
            .and_then(|t| u64::from_str_radix(t.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| ChainError::Protocol(format!("latest block without timestamp: {block}")))
    }

    async fn advance_time(&self, seconds: u64) -> Result<(), ChainError> {
        self.dev_request(
            "advance_time",
            "evm_increaseTime",
            serde_json::json!([seconds]),
        )
        .await?;
        self.dev_request("advance_time", "evm_mine", serde_json::json!([]))
            .await?;
        Ok(())
    }

    async fn logs(
        &self,
        address: Address,
        from: u64,
        to: u64,
    ) -> Result<Vec<ChainLog>, ChainError> {
        let filter = Filter::new().address(address).from_block(from).to_block(to);
        let logs = self.node.get_logs(&filter).await.map_err(map_error)?;
        logs.into_iter()
            .filter(|l| !l.removed)
            .map(|l| {
                match (
                    l.block_number,
                    l.block_hash,
                    l.transaction_hash,
                    l.log_index,
                ) {
                    (Some(block_number), Some(block_hash), Some(tx_hash), Some(log_index)) => {
                        Ok(ChainLog {
                            block_number,
                            block_hash,
                            tx_hash,
                            log_index,
                            log: l.inner,
                        })
                    }
                    _ => Err(ChainError::Protocol(format!(
                        "the node answered eth_getLogs with a log outside a block: {l:?}"
                    ))),
                }
            })
            .collect()
    }

    async fn block_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        let block = self
            .node
            .raw_request::<_, serde_json::Value>(
                Cow::Borrowed("eth_getBlockByNumber"),
                (format!("{number:#x}"), false),
            )
            .await
            .map_err(map_error)?;
        if block.is_null() {
            return Ok(None);
        }
        block
            .get("hash")
            .and_then(|h| h.as_str())
            .and_then(|h| h.parse().ok())
            .map(Some)
            .ok_or_else(|| ChainError::Protocol(format!("block {number} without a hash: {block}")))
    }

    async fn prepare_account(&self, account: Address) -> Result<(), ChainError> {
        let balance = format!("{:#x}", U256::from(DEV_BALANCE_WEI));
        self.dev_request(
            "prepare_account",
            "anvil_setBalance",
            serde_json::json!([account, balance]),
        )
        .await?;
        if self.signer_address() != Some(account) {
            self.dev_request(
                "prepare_account",
                "anvil_impersonateAccount",
                serde_json::json!([account]),
            )
            .await?;
        }
        Ok(())
    }
}

/// Sorts a JSON-RPC failure into a revert (with its data), a transient transport failure, or
/// an answer we do not understand.
fn map_error(error: TransportError) -> ChainError {
    match error {
        RpcError::ErrorResp(payload) => match payload.as_revert_data() {
            Some(data) => ChainError::Reverted { data },
            None if payload.message.contains("revert") => {
                ChainError::Reverted { data: Bytes::new() }
            }
            None => ChainError::Protocol(payload.to_string()),
        },
        RpcError::Transport(kind) => ChainError::Transport(kind.to_string()),
        other => ChainError::Protocol(other.to_string()),
    }
}
