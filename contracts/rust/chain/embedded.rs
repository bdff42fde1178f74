//! The embedded chain: the committed bytecode executed in-process by `revm` at the Osaka
//! hardfork (so the P256VERIFY precompile exists), one block per transaction, state written to
//! a file after every transaction so a demo survives a restart.

use super::{Chain, ChainError, ChainLog, Inclusion, TxOutcome, TxStatus};
use alloy::primitives::{Address, B256, Bytes, Log, U256, keccak256};
use revm::context::{BlockEnv, CfgEnv, TxEnv};
use revm::context_interface::result::{ExecutionResult, Output};
use revm::database::{Cache, CacheDB, EmptyDB};
use revm::primitives::TxKind;
use revm::primitives::hardfork::SpecId;
use revm::{Context, ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Osaka's per-transaction gas cap (EIP-7825).
const TX_GAS_LIMIT: u64 = 1 << 24;
/// A mainnet-sized block.
const BLOCK_GAS_LIMIT: u64 = 60_000_000;
/// Identifies the state file format.
const STATE_FORMAT: &str = "gridshare-embedded-chain/1";
/// Receipts the chain keeps (and persists) for [`Chain::transaction`] and [`Chain::logs`]:
/// the latest ones.
const RECEIPTS_KEPT: usize = 4096;

/// Chain id of a fresh embedded chain (anvil's default, so signatures made for one verify on
/// the other in tests).
pub const DEFAULT_CHAIN_ID: u64 = 31_337;

/// An in-process EVM chain; cheap to clone (clones share the state).
#[derive(Clone)]
pub struct EmbeddedChain {
    inner: Arc<Mutex<EmbeddedState>>,
}

impl std::fmt::Debug for EmbeddedChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedChain").finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: String,
    chain_id: u64,
    block_number: u64,
    timestamp: u64,
    clock_offset: u64,
    wall_clock: bool,
    cache: Cache,
    /// Added after format 1 was written: older files have none.
    #[serde(default)]
    receipts: VecDeque<Receipt>,
}

/// A kept receipt.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Receipt {
    tx_hash: B256,
    block_number: u64,
    gas_used: u64,
    success: bool,
    /// The transaction's logs (none if it reverted). Receipts written before logs were kept
    /// have none.
    #[serde(default)]
    logs: Vec<Log>,
}

struct EmbeddedState {
    db: CacheDB<EmptyDB>,
    chain_id: u64,
    block_number: u64,
    /// Timestamp of the latest block.
    timestamp: u64,
    /// Seconds added to the wall clock by [`Chain::advance_time`].
    clock_offset: u64,
    /// Whether block time follows the wall clock; if not, each block is one second after the
    /// last (deterministic runs: gas reports, simulations).
    wall_clock: bool,
    receipts: VecDeque<Receipt>,
    path: Option<PathBuf>,
}

impl EmbeddedChain {
    /// A fresh chain kept in memory only.
    pub fn in_memory() -> Self {
        Self::from_state(EmbeddedState {
            db: CacheDB::new(EmptyDB::new()),
            chain_id: DEFAULT_CHAIN_ID,
            block_number: 0,
            timestamp: unix_now(),
            clock_offset: 0,
            wall_clock: true,
            receipts: VecDeque::new(),
            path: None,
        })
    }

    /// A fresh in-memory chain whose clock starts at `timestamp` and moves one second per block
    /// (plus [`Chain::advance_time`]), independent of the wall clock: runs are reproducible.
    pub fn with_fixed_clock(timestamp: u64) -> Self {
        Self::from_state(EmbeddedState {
            db: CacheDB::new(EmptyDB::new()),
            chain_id: DEFAULT_CHAIN_ID,
            block_number: 0,
            timestamp,
            clock_offset: 0,
            wall_clock: false,
            receipts: VecDeque::new(),
            path: None,
        })
    }

    /// Opens the chain persisted at `path`, or starts a fresh one that will be saved there.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ChainError> {
        let path = path.as_ref().to_path_buf();
        let state_error = |reason: String| ChainError::State {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let snapshot: Snapshot =
                    serde_json::from_slice(&bytes).map_err(|e| state_error(e.to_string()))?;
                if snapshot.format != STATE_FORMAT {
                    return Err(state_error(format!(
                        "format {:?}, expected {STATE_FORMAT:?}",
                        snapshot.format
                    )));
                }
                let mut db = CacheDB::new(EmptyDB::new());
                db.cache = snapshot.cache;
                Ok(Self::from_state(EmbeddedState {
                    db,
                    chain_id: snapshot.chain_id,
                    block_number: snapshot.block_number,
                    timestamp: snapshot.timestamp,
                    clock_offset: snapshot.clock_offset,
                    wall_clock: snapshot.wall_clock,
                    receipts: snapshot.receipts,
                    path: Some(path),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let chain = Self::in_memory();
                chain.lock()?.path = Some(path);
                Ok(chain)
            }
            Err(e) => Err(state_error(e.to_string())),
        }
    }

    /// Chain id reported to contracts (`block.chainid`).
    pub fn chain_id(&self) -> Result<u64, ChainError> {
        Ok(self.lock()?.chain_id)
    }

    fn from_state(state: EmbeddedState) -> Self {
        Self {
            inner: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, EmbeddedState>, ChainError> {
        self.inner
            .lock()
            .map_err(|_| ChainError::Evm("embedded chain state poisoned by a panic".into()))
    }

    /// Runs `f` on the state in a blocking thread: EVM execution and the state file write are
    /// CPU and disk work that must not stall the async runtime.
    async fn with_state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut EmbeddedState) -> Result<T, ChainError> + Send + 'static,
    ) -> Result<T, ChainError> {
        let chain = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = chain.lock()?;
            f(&mut state)
        })
        .await
        .map_err(|e| ChainError::Evm(format!("embedded chain task failed: {e}")))?
    }
}

impl EmbeddedState {
    fn execute(
        &mut self,
        from: Address,
        kind: TxKind,
        data: Bytes,
        commit: bool,
    ) -> Result<(ExecutionResult, u64), ChainError> {
        let nonce = self
            .db
            .load_account(from)
            .map(|a| a.info.nonce)
            .unwrap_or_default();
        let (number, timestamp) = if commit {
            let wall = if self.wall_clock {
                unix_now() + self.clock_offset
            } else {
                0
            };
            let next = wall.max(self.timestamp + 1);
            (self.block_number + 1, next)
        } else {
            (self.block_number, self.timestamp)
        };
        let tx = TxEnv::builder()
            .caller(from)
            .kind(kind)
            .data(data)
            .nonce(nonce)
            .gas_limit(TX_GAS_LIMIT)
            .gas_price(0)
            .chain_id(Some(self.chain_id))
            .build_fill();
        let mut cfg = CfgEnv::new_with_spec(SpecId::OSAKA);
        cfg.chain_id = self.chain_id;
        let block = BlockEnv {
            number: U256::from(number),
            timestamp: U256::from(timestamp),
            gas_limit: BLOCK_GAS_LIMIT,
            basefee: 0,
            ..Default::default()
        };
        let mut evm = Context::mainnet()
            .with_db(&mut self.db)
            .with_cfg(cfg)
            .with_block(block)
            .build_mainnet();
        let result = if commit {
            evm.transact_commit(tx)
        } else {
            evm.transact(tx).map(|r| r.result)
        }
        .map_err(|e| ChainError::Evm(e.to_string()))?;
        if commit {
            self.block_number = number;
            self.timestamp = timestamp;
            // Logs are returned to the caller; the chain does not keep them.
            self.db.cache.logs.clear();
        }
        Ok((result, nonce))
    }

    /// Mines one transaction in a block of its own, keeps its receipt and saves the state.
    fn commit(
        &mut self,
        from: Address,
        kind: TxKind,
        data: Bytes,
    ) -> Result<TxOutcome, ChainError> {
        let (result, nonce) = self.execute(from, kind, data, true)?;
        let tx_hash = keccak256(
            [
                self.block_number.to_be_bytes().as_slice(),
                from.as_slice(),
                nonce.to_be_bytes().as_slice(),
            ]
            .concat(),
        );
        if self.receipts.len() == RECEIPTS_KEPT {
            self.receipts.pop_front();
        }
        self.receipts.push_back(Receipt {
            tx_hash,
            block_number: self.block_number,
            gas_used: result.tx_gas_used(),
            success: result.is_success(),
            logs: result.logs().to_vec(),
        });
        // A reverted transaction still happened (nonce, block): persist either way.
        self.persist()?;
        outcome(result, tx_hash, self.block_number)
    }

    fn persist(&self) -> Result<(), ChainError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let state_error = |reason: String| ChainError::State {
            path: path.display().to_string(),
            reason,
        };
        let snapshot = Snapshot {
            format: STATE_FORMAT.into(),
            chain_id: self.chain_id,
            block_number: self.block_number,
            timestamp: self.timestamp,
            clock_offset: self.clock_offset,
            wall_clock: self.wall_clock,
            cache: self.db.cache.clone(),
            receipts: self.receipts.clone(),
        };
        let bytes = serde_json::to_vec(&snapshot).map_err(|e| state_error(e.to_string()))?;
        // Write-then-rename, so a crash mid-write leaves the previous state intact.
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| state_error(e.to_string()))
    }
}

impl Chain for EmbeddedChain {
    async fn send(
        &self,
        from: Address,
        to: Option<Address>,
        data: Bytes,
    ) -> Result<TxOutcome, ChainError> {
        self.with_state(move |state| {
            let kind = to.map_or(TxKind::Create, TxKind::Call);
            state.commit(from, kind, data)
        })
        .await
    }

    async fn submit(&self, from: Address, to: Address, data: Bytes) -> Result<B256, ChainError> {
        self.with_state(move |state| {
            // As a node's gas estimation does, a transaction that would revert is refused
            // before it is mined.
            let (dry_run, _) = state.execute(from, TxKind::Call(to), data.clone(), false)?;
            outcome(dry_run, B256::ZERO, state.block_number)?;
            state
                .commit(from, TxKind::Call(to), data)
                .map(|outcome| outcome.tx_hash)
        })
        .await
    }

    async fn transaction(&self, hash: B256) -> Result<TxStatus, ChainError> {
        let state = self.lock()?;
        Ok(state
            .receipts
            .iter()
            .rev()
            .find(|r| r.tx_hash == hash)
            .map_or(TxStatus::Unknown, |r| {
                TxStatus::Included(Inclusion {
                    block_number: r.block_number,
                    block_hash: block_hash(state.chain_id, r.block_number),
                    gas_used: r.gas_used,
                    success: r.success,
                })
            }))
    }

    async fn head(&self) -> Result<u64, ChainError> {
        Ok(self.lock()?.block_number)
    }

    async fn call_at(
        &self,
        from: Address,
        to: Address,
        data: Bytes,
        block: Option<u64>,
    ) -> Result<Bytes, ChainError> {
        self.with_state(move |state| {
            if let Some(block) = block.filter(|b| *b != state.block_number) {
                return Err(ChainError::Evm(format!(
                    "the embedded chain keeps only its latest state (block {}), not block {block}",
                    state.block_number
                )));
            }
            let (result, _) = state.execute(from, TxKind::Call(to), data, false)?;
            match result {
                ExecutionResult::Success { output, .. } => Ok(output.into_data()),
                ExecutionResult::Revert { output, .. } => {
                    Err(ChainError::Reverted { data: output })
                }
                ExecutionResult::Halt { reason, .. } => {
                    Err(ChainError::Halted(format!("{reason:?}")))
                }
            }
        })
        .await
    }

    async fn timestamp(&self) -> Result<u64, ChainError> {
        Ok(self.lock()?.timestamp)
    }

    async fn advance_time(&self, seconds: u64) -> Result<(), ChainError> {
        self.with_state(move |state| {
            state.clock_offset += seconds;
            state.timestamp += seconds;
            state.persist()
        })
        .await
    }

    async fn logs(
        &self,
        address: Address,
        from: u64,
        to: u64,
    ) -> Result<Vec<ChainLog>, ChainError> {
        let state = self.lock()?;
        // One transaction per block: the kept receipts are the blocks from the oldest kept on.
        if let Some(oldest) = state.receipts.front()
            && state.receipts.len() == RECEIPTS_KEPT
            && from < oldest.block_number
        {
            return Err(ChainError::Evm(format!(
                "the embedded chain keeps the logs of its last {RECEIPTS_KEPT} blocks (from block {}), not block {from}",
                oldest.block_number
            )));
        }
        Ok(state
            .receipts
            .iter()
            .filter(|r| (from..=to).contains(&r.block_number))
            .flat_map(|r| {
                r.logs.iter().enumerate().map(|(i, log)| ChainLog {
                    block_number: r.block_number,
                    block_hash: block_hash(state.chain_id, r.block_number),
                    tx_hash: r.tx_hash,
                    log_index: u64::try_from(i).unwrap_or(u64::MAX),
                    log: log.clone(),
                })
            })
            .filter(|l| l.log.address == address)
            .collect())
    }

    async fn block_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        let state = self.lock()?;
        Ok((number <= state.block_number).then(|| block_hash(state.chain_id, number)))
    }

    async fn prepare_account(&self, _account: Address) -> Result<(), ChainError> {
        // Gas is free on the embedded chain (base fee and gas price are zero).
        Ok(())
    }
}

fn outcome(
    result: ExecutionResult,
    tx_hash: B256,
    block_number: u64,
) -> Result<TxOutcome, ChainError> {
    let gas_used = result.tx_gas_used();
    match result {
        ExecutionResult::Success { logs, output, .. } => Ok(TxOutcome {
            tx_hash,
            block_number,
            gas_used,
            contract_address: match output {
                Output::Create(_, address) => address,
                Output::Call(_) => None,
            },
            logs,
        }),
        ExecutionResult::Revert { output, .. } => Err(ChainError::Reverted { data: output }),
        ExecutionResult::Halt { reason, .. } => Err(ChainError::Halted(format!("{reason:?}"))),
    }
}

/// The embedded chain never reorganises: a block's hash is a function of the chain and its
/// number.
fn block_hash(chain_id: u64, number: u64) -> B256 {
    keccak256(
        [
            b"gridshare-embedded-block".as_slice(),
            chain_id.to_be_bytes().as_slice(),
            number.to_be_bytes().as_slice(),
        ]
        .concat(),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
