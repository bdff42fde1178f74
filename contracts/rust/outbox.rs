//! The settlement outbox: a batch is written to SQLite before it is sent, retried with
//! exponential backoff while the chain is unreachable, marked confirmed only from a receipt
//! (or from the contract's own record of the batch id), and never sent twice.
//!
//! Design: batches are sent strictly in id order, because a slot's debits may rely on the
//! previous slot's credits. Before every send the outbox asks the contract whether the id is
//! already settled — a transaction that landed just before a crash is confirmed, not resent.
//! A batch the contract rejects (say, an account would go below zero) is marked `rejected`
//! with the decoded reason and stops the flush: it needs an operator, not a retry.

use crate::batch::{NetDelta, SettlementBatch};
use crate::bindings::Settlement;
use crate::chain::ChainError;
use crate::settlement::{SettlementBackend, SettlementReceipt};
use alloy::primitives::B256;
use sqlx::{Row, SqlitePool};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why the outbox could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The SQLite database failed.
    #[error("settlement outbox database: {0}")]
    Database(#[from] sqlx::Error),
    /// The outbox table could not be created or migrated.
    #[error("settlement outbox migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The batch id is already used by a different batch (in the outbox or on chain).
    #[error("batch {batch_id} conflicts with a different batch of the same id: {reason}")]
    Conflict {
        /// The batch.
        batch_id: u64,
        /// Where the other batch was found.
        reason: String,
    },
    /// The contract rejected the batch; it will not be retried.
    #[error("batch {batch_id} was rejected by the settlement contract: {reason}")]
    Rejected {
        /// The batch.
        batch_id: u64,
        /// The decoded revert reason.
        reason: String,
    },
    /// The chain stayed unreachable through every retry; the batch stays pending.
    #[error("batch {batch_id} still pending after {attempts} attempts: {last_error}")]
    RetriesExhausted {
        /// The batch.
        batch_id: u64,
        /// Attempts made in this flush.
        attempts: u32,
        /// The last error.
        last_error: String,
    },
    /// Batch ids are stored as SQLite integers (i64).
    #[error("batch id {0} does not fit a SQLite integer")]
    BatchIdOutOfRange(u64),
    /// A stored row cannot be read back.
    #[error("settlement outbox row for batch {batch_id} is corrupt: {reason}")]
    Corrupt {
        /// The batch.
        batch_id: i64,
        /// What is wrong.
        reason: String,
    },
}

/// How often and how patiently a flush retries a transient chain failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure.
    pub initial_backoff: Duration,
    /// Longest wait between attempts (the wait doubles up to this).
    pub max_backoff: Duration,
    /// Attempts per batch in one flush before giving up (the batch stays pending).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: 8,
        }
    }
}

/// Where a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxStatus {
    /// Written, not yet confirmed on chain.
    Pending,
    /// Settled on chain.
    Confirmed,
    /// Refused by the contract; needs an operator.
    Rejected,
}

/// One batch as the outbox records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The batch.
    pub batch: SettlementBatch,
    /// Where it stands.
    pub status: OutboxStatus,
    /// Send attempts so far.
    pub attempts: u32,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// The confirming transaction, when this outbox sent it.
    pub tx_hash: Option<B256>,
    /// The block that included it.
    pub block_number: Option<u64>,
    /// Gas it used.
    pub gas_used: Option<u64>,
}

/// The outbox over a SQLite pool and a settlement backend.
#[derive(Debug)]
pub struct SettlementOutbox<B> {
    pool: SqlitePool,
    backend: B,
    retry: RetryPolicy,
}

impl<B: SettlementBackend> SettlementOutbox<B> {
    /// Opens the outbox, creating its table if needed. The pool may be shared with the
    /// engine's own tables: the migration version is unique and other migrations are ignored.
    pub async fn open(
        pool: SqlitePool,
        backend: B,
        retry: RetryPolicy,
    ) -> Result<Self, OutboxError> {
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        Ok(Self {
            pool,
            backend,
            retry,
        })
    }

    /// The backend batches are sent to.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Records a batch to be sent. Enqueuing the same batch again is a no-op; a different
    /// batch under a used id is a [`OutboxError::Conflict`].
    pub async fn enqueue(&self, batch: &SettlementBatch) -> Result<(), OutboxError> {
        let id = sql_id(batch.id)?;
        let deltas = packed_bytes(batch);
        let now = unix_now();
        let inserted = sqlx::query(
            "INSERT INTO settlement_outbox (batch_id, root, deltas, status, created_at, updated_at)
             VALUES (?, ?, ?, 'pending', ?, ?)
             ON CONFLICT (batch_id) DO NOTHING",
        )
        .bind(id)
        .bind(batch.root.as_slice())
        .bind(&deltas)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            let row = sqlx::query("SELECT root, deltas FROM settlement_outbox WHERE batch_id = ?")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
            let root: Vec<u8> = row.try_get("root")?;
            let stored: Vec<u8> = row.try_get("deltas")?;
            if root != batch.root.as_slice() || stored != deltas {
                return Err(OutboxError::Conflict {
                    batch_id: batch.id,
                    reason: "a different batch with this id is already in the outbox".into(),
                });
            }
        }
        Ok(())
    }

    /// One batch's record.
    pub async fn entry(&self, batch_id: u64) -> Result<Option<OutboxEntry>, OutboxError> {
        let row = sqlx::query(
            "SELECT batch_id, root, deltas, status, attempts, last_error, tx_hash, block_number,
             gas_used FROM settlement_outbox WHERE batch_id = ?",
        )
        .bind(sql_id(batch_id)?)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| entry_from_row(&r)).transpose()
    }

    /// Ids of the batches still to be confirmed, in sending order.
    pub async fn pending(&self) -> Result<Vec<u64>, OutboxError> {
        let rows = sqlx::query(
            "SELECT batch_id FROM settlement_outbox WHERE status = 'pending' ORDER BY batch_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get("batch_id")?;
                u64::try_from(id).map_err(|_| OutboxError::Corrupt {
                    batch_id: id,
                    reason: "negative batch id".into(),
                })
            })
            .collect()
    }

    /// Sends every pending batch in id order until each is confirmed; returns how many were
    /// confirmed. Stops at the first batch the contract rejects or that stays unreachable
    /// through the retry policy (it remains pending for the next flush).
    pub async fn flush(&self) -> Result<usize, OutboxError> {
        let mut confirmed = 0;
        for batch_id in self.pending().await? {
            let Some(entry) = self.entry(batch_id).await? else {
                continue;
            };
            self.deliver(&entry.batch).await?;
            confirmed += 1;
        }
        Ok(confirmed)
    }

    async fn deliver(&self, batch: &SettlementBatch) -> Result<(), OutboxError> {
        let mut backoff = self.retry.initial_backoff;
        let mut last_error = String::new();
        for attempt in 1..=self.retry.max_attempts.max(1) {
            match self.try_deliver(batch).await {
                Ok(receipt) => {
                    self.mark_confirmed(batch.id, receipt.as_ref()).await?;
                    return Ok(());
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Rejected(reason)) => {
                    self.mark(batch.id, "rejected", &reason).await?;
                    tracing::error!(target: "gridshare::settlement", batch_id = batch.id, %reason, "batch rejected");
                    return Err(OutboxError::Rejected {
                        batch_id: batch.id,
                        reason,
                    });
                }
                Err(Attempt::Retry(error)) => {
                    last_error = error.to_string();
                    self.mark(batch.id, "pending", &last_error).await?;
                    tracing::warn!(target: "gridshare::settlement", batch_id = batch.id, attempt, error = %last_error, "settlement failed, retrying");
                    if attempt < self.retry.max_attempts {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.retry.max_backoff);
                    }
                }
            }
        }
        Err(OutboxError::RetriesExhausted {
            batch_id: batch.id,
            attempts: self.retry.max_attempts.max(1),
            last_error,
        })
    }

    /// One attempt: `Ok(Some)` sent and confirmed by receipt, `Ok(None)` found already
    /// settled with the same root.
    async fn try_deliver(
        &self,
        batch: &SettlementBatch,
    ) -> Result<Option<SettlementReceipt>, Attempt> {
        match self.backend.batch_root(batch.id).await {
            Ok(Some(root)) if root == batch.root => return Ok(None),
            Ok(Some(root)) => {
                return Err(Attempt::Fatal(OutboxError::Conflict {
                    batch_id: batch.id,
                    reason: format!("settled on chain with root {root}"),
                }));
            }
            Ok(None) => {}
            Err(e) => return Err(classify(e)),
        }
        match self.backend.submit_batch(batch).await {
            Ok(receipt) => Ok(Some(receipt)),
            // Someone (an earlier attempt whose answer was lost) settled it meanwhile: the next
            // attempt's root check confirms it.
            Err(e)
                if matches!(
                    e.decode(),
                    Some(Settlement::SettlementErrors::BatchAlreadySettled(_))
                ) =>
            {
                Err(Attempt::Retry(e))
            }
            Err(e) => Err(classify(e)),
        }
    }

    async fn mark_confirmed(
        &self,
        batch_id: u64,
        receipt: Option<&SettlementReceipt>,
    ) -> Result<(), OutboxError> {
        sqlx::query(
            "UPDATE settlement_outbox
             SET status = 'confirmed', attempts = attempts + ?, last_error = NULL,
                 tx_hash = ?, block_number = ?, gas_used = ?, updated_at = ?
             WHERE batch_id = ?",
        )
        .bind(i64::from(receipt.is_some()))
        .bind(receipt.map(|r| r.tx_hash.to_vec()))
        .bind(receipt.and_then(|r| i64::try_from(r.block_number).ok()))
        .bind(receipt.and_then(|r| i64::try_from(r.gas_used).ok()))
        .bind(unix_now())
        .bind(sql_id(batch_id)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mark(&self, batch_id: u64, status: &str, error: &str) -> Result<(), OutboxError> {
        sqlx::query(
            "UPDATE settlement_outbox
             SET status = ?, attempts = attempts + 1, last_error = ?, updated_at = ?
             WHERE batch_id = ?",
        )
        .bind(status)
        .bind(error)
        .bind(unix_now())
        .bind(sql_id(batch_id)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

enum Attempt {
    Retry(ChainError),
    Rejected(String),
    Fatal(OutboxError),
}

fn classify(error: ChainError) -> Attempt {
    match &error {
        ChainError::Transport(_) => Attempt::Retry(error),
        ChainError::Reverted { .. } => Attempt::Rejected(
            error
                .decode::<Settlement::SettlementErrors>()
                .map_or_else(|| error.to_string(), |e| format!("{e:?}")),
        ),
        _ => Attempt::Rejected(error.to_string()),
    }
}

fn entry_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<OutboxEntry, OutboxError> {
    let id: i64 = row.try_get("batch_id")?;
    let corrupt = |reason: &str| OutboxError::Corrupt {
        batch_id: id,
        reason: reason.into(),
    };
    let root: Vec<u8> = row.try_get("root")?;
    let deltas: Vec<u8> = row.try_get("deltas")?;
    let status: String = row.try_get("status")?;
    let attempts: i64 = row.try_get("attempts")?;
    let tx_hash: Option<Vec<u8>> = row.try_get("tx_hash")?;
    let count = |column: &str| -> Result<Option<u64>, OutboxError> {
        let v: Option<i64> = row.try_get(column)?;
        v.map(|v| u64::try_from(v).map_err(|_| corrupt("negative block number or gas")))
            .transpose()
    };
    if root.len() != 32 || !deltas.len().is_multiple_of(32) {
        return Err(corrupt("root or deltas of the wrong length"));
    }
    let batch = SettlementBatch {
        id: u64::try_from(id).map_err(|_| corrupt("negative batch id"))?,
        root: B256::from_slice(&root),
        deltas: deltas
            .chunks_exact(32)
            .map(|w| NetDelta::from_packed(B256::from_slice(w)))
            .collect(),
    };
    Ok(OutboxEntry {
        batch,
        status: match status.as_str() {
            "pending" => OutboxStatus::Pending,
            "confirmed" => OutboxStatus::Confirmed,
            "rejected" => OutboxStatus::Rejected,
            _ => return Err(corrupt("unknown status")),
        },
        attempts: u32::try_from(attempts).map_err(|_| corrupt("attempts out of range"))?,
        last_error: row.try_get("last_error")?,
        tx_hash: match tx_hash {
            Some(h) if h.len() == 32 => Some(B256::from_slice(&h)),
            Some(_) => return Err(corrupt("tx hash of the wrong length")),
            None => None,
        },
        block_number: count("block_number")?,
        gas_used: count("gas_used")?,
    })
}

fn packed_bytes(batch: &SettlementBatch) -> Vec<u8> {
    batch.packed_deltas().iter().flat_map(|w| w.0).collect()
}

fn sql_id(batch_id: u64) -> Result<i64, OutboxError> {
    i64::try_from(batch_id).map_err(|_| OutboxError::BatchIdOutOfRange(batch_id))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or_default()
}
