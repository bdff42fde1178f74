//! What settlement leaves for the chain and the operator: the settlement outbox (one batch per
//! settled slot, driven to the chain by [`crate::chain::outbox`]), the readings each settlement
//! used, the meters whose delivery could not be established, the settled slots' summary, and
//! the staking proofs the engine submits ([`crate::prover`]).

use std::collections::BTreeSet;

use alloy::primitives::{B256, hex};
use gridshare_contracts::batch::{NetDelta, SettlementBatch, SlotSales};

use super::{Store, StoreError, Transaction, checked_i64, i64_of, unsigned, unsigned_opt};

/// Where a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Written, not (or no longer) in the chain's pool or blocks.
    Pending,
    /// Accepted by the node; waiting for a block.
    Sent,
    /// In a block, not yet `confirmations` deep.
    Included,
    /// In a block `confirmations` deep.
    Confirmed,
    /// Refused by the contract.
    Rejected,
}

impl BatchStatus {
    /// The status as stored and shown (`pending`, `sent`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Included => "included",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
        }
    }

    /// The status a stored text names, if any.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "sent" => Self::Sent,
            "included" => Self::Included,
            "confirmed" => Self::Confirmed,
            "rejected" => Self::Rejected,
            _ => return None,
        })
    }
}

/// One batch as the outbox records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    /// The batch (its id is the slot).
    pub batch: SettlementBatch,
    /// The local sales it credits to staked seller meters.
    pub sales: SlotSales,
    /// Where it stands.
    pub status: BatchStatus,
    /// Transactions sent (or refused) for it so far.
    pub attempts: u32,
    /// The latest error, if any.
    pub last_error: Option<String>,
    /// For a rejected batch: whether it is tried again by itself.
    pub retry: bool,
    /// Not tried again before this time, ms since the epoch.
    pub next_attempt_ms: u64,
    /// The latest transaction sent for it (or, found on chain, none).
    pub tx_hash: Option<B256>,
    /// The block that includes it.
    pub block_number: Option<u64>,
    /// That block's hash.
    pub block_hash: Option<B256>,
    /// Gas its transaction used.
    pub gas_used: Option<u64>,
    /// When it was written, ms since the epoch.
    pub queued_ms: u64,
}

/// The columns [`StoredBatch`] reads, as a literal for `concat!`.
macro_rules! batch_columns {
    () => {
        "slot, root, deltas, sales, status, attempts, last_error, retry, next_attempt_ms, \
         tx_hash, block_number, block_hash, gas_used, queued_ms"
    };
}

/// A row of `settlement_batches` as stored.
#[derive(sqlx::FromRow)]
struct StoredBatch {
    slot: i64,
    root: String,
    deltas: String,
    sales: String,
    status: String,
    attempts: i64,
    last_error: Option<String>,
    retry: i64,
    next_attempt_ms: i64,
    tx_hash: Option<String>,
    block_number: Option<i64>,
    block_hash: Option<String>,
    gas_used: Option<i64>,
    queued_ms: i64,
}

impl TryFrom<StoredBatch> for BatchRecord {
    type Error = StoreError;

    /// Checked: negative numbers, hashes and roots that do not parse, deltas that are not
    /// whole words and unknown statuses are errors naming the batch.
    fn try_from(r: StoredBatch) -> Result<Self, StoreError> {
        let slot = r.slot;
        let corrupt =
            |what: String| StoreError::Corrupt(format!("settlement batch {slot}: {what}"));
        let number = |v: i64, column: &str| {
            u64::try_from(v).map_err(|_| corrupt(format!("negative {column}")))
        };
        let hash = |text: Option<String>| {
            text.map(|t| t.parse::<B256>().map_err(|e| corrupt(e.to_string())))
                .transpose()
        };
        let deltas = hex::decode(&r.deltas).map_err(|e| corrupt(e.to_string()))?;
        if !deltas.len().is_multiple_of(32) {
            return Err(corrupt("deltas are not whole 32-byte words".into()));
        }
        Ok(BatchRecord {
            batch: SettlementBatch {
                id: number(slot, "slot")?,
                root: r.root.parse().map_err(|e| corrupt(format!("{e}")))?,
                deltas: deltas
                    .chunks_exact(32)
                    .map(|w| NetDelta::from_packed(B256::from_slice(w)))
                    .collect(),
            },
            sales: serde_json::from_str(&r.sales).map_err(|e| corrupt(e.to_string()))?,
            status: BatchStatus::parse(&r.status)
                .ok_or_else(|| corrupt(format!("unknown status {:?}", r.status)))?,
            attempts: u32::try_from(r.attempts)
                .map_err(|_| corrupt("attempts out of range".into()))?,
            last_error: r.last_error,
            retry: r.retry != 0,
            next_attempt_ms: number(r.next_attempt_ms, "next attempt")?,
            tx_hash: hash(r.tx_hash)?,
            block_number: r
                .block_number
                .map(|v| number(v, "block_number"))
                .transpose()?,
            block_hash: hash(r.block_hash)?,
            gas_used: r.gas_used.map(|v| number(v, "gas_used")).transpose()?,
            queued_ms: number(r.queued_ms, "queue time")?,
        })
    }
}

/// A settled slot's summary.
#[derive(sqlx::FromRow)]
struct StoredSettlement {
    slot: i64,
    accounts: i64,
    debits: i64,
    queued_ms: Option<i64>,
}

/// Where the engine's proof of a meter's epoch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProofStatus {
    /// A transaction is about to go out, or went out before a restart: counts as an attempt.
    Sending,
    /// The staking contract accepted the proof.
    Proved,
    /// The latest attempt failed; it is tried again later.
    Failed,
}

impl ProofStatus {
    /// The name stored in `epoch_proofs.status` and shown by the stake API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::Proved => "proved",
            Self::Failed => "failed",
        }
    }

    /// The status a stored `epoch_proofs.status` names.
    fn stored(text: &str) -> Result<Self, StoreError> {
        match text {
            "sending" => Ok(Self::Sending),
            "proved" => Ok(Self::Proved),
            "failed" => Ok(Self::Failed),
            other => Err(StoreError::Corrupt(format!(
                "epoch_proofs.status {other:?} is not a proof status (sending, proved or failed)"
            ))),
        }
    }
}

/// One row of `epoch_proofs`, as the stake API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProofRecord {
    /// The epoch.
    pub epoch: u64,
    /// Where the proof stands.
    pub status: ProofStatus,
    /// Transactions tried.
    pub attempts: u64,
    /// Sequence number of the reading the proof ends at.
    pub end_seq: u64,
    /// The proof's transaction, once proven.
    pub tx_hash: Option<String>,
    /// Wh the contract credited the epoch after the proof.
    pub credited_wh: Option<u64>,
    /// Why the latest attempt failed.
    pub last_error: Option<String>,
    /// When it is tried again (chain time, ms since the Unix epoch), if failed.
    pub next_attempt_ms: Option<u64>,
}

/// A row of `epoch_proofs` as stored.
#[derive(sqlx::FromRow)]
struct StoredProof {
    epoch: i64,
    status: String,
    attempts: i64,
    end_seq: i64,
    tx_hash: Option<String>,
    credited_wh: Option<i64>,
    last_error: Option<String>,
    next_attempt_ms: i64,
}

impl TryFrom<StoredProof> for ProofRecord {
    type Error = StoreError;

    fn try_from(r: StoredProof) -> Result<Self, StoreError> {
        let next = unsigned(r.next_attempt_ms, "epoch_proofs.next_attempt_ms")?;
        let status = ProofStatus::stored(&r.status)?;
        Ok(ProofRecord {
            epoch: unsigned(r.epoch, "epoch_proofs.epoch")?,
            attempts: unsigned(r.attempts, "epoch_proofs.attempts")?,
            end_seq: unsigned(r.end_seq, "epoch_proofs.end_seq")?,
            tx_hash: r.tx_hash,
            credited_wh: unsigned_opt(r.credited_wh, "epoch_proofs.credited_wh")?,
            last_error: r.last_error,
            next_attempt_ms: (status == ProofStatus::Failed).then_some(next),
            status,
        })
    }
}

/// One attempt at proving a meter's epoch, as [`Store::record_proof`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofAttempt<'a> {
    /// Where the proof stands after this attempt ([`ProofStatus::Sending`] counts as an
    /// attempt).
    pub status: ProofStatus,
    /// Sequence number of the reading the proof ends at.
    pub end_seq: u64,
    /// The proof's transaction, once proven.
    pub tx_hash: Option<String>,
    /// Wh the contract credited the epoch, once proven.
    pub credited_wh: Option<u64>,
    /// Why it failed (kept from an earlier attempt when this one has none).
    pub error: Option<&'a str>,
    /// When it is tried again (chain time, ms).
    pub next_attempt_ms: u64,
}

impl Store {
    /// One slot's batch in the outbox.
    pub async fn settlement_batch(&self, slot: u64) -> Result<Option<BatchRecord>, StoreError> {
        let row: Option<StoredBatch> = sqlx::query_as(concat!(
            "SELECT ",
            batch_columns!(),
            " FROM settlement_batches WHERE slot = $1"
        ))
        .bind(i64_of(slot))
        .fetch_optional(&self.pool)
        .await?;
        row.map(BatchRecord::try_from).transpose()
    }

    /// The batches not yet confirmed, in sending order.
    pub async fn open_settlement_batches(&self) -> Result<Vec<BatchRecord>, StoreError> {
        let rows: Vec<StoredBatch> = sqlx::query_as(concat!(
            "SELECT ",
            batch_columns!(),
            " FROM settlement_batches WHERE status <> 'confirmed' ORDER BY slot"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(BatchRecord::try_from).collect()
    }

    /// The operator's re-send: a rejected (or waiting) batch is tried again at the next step,
    /// whatever refused it before. Whether there was such a batch.
    pub async fn resend_settlement_batch(
        &self,
        slot: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE settlement_batches SET status = 'pending', retry = 1, next_attempt_ms = 0, \
             updated_ms = $2 WHERE slot = $1 AND status IN ('rejected', 'pending')",
        )
        .bind(i64_of(slot))
        .bind(i64_of(now_ms))
        .execute(&self.pool)
        .await?;
        Ok(changed.rows_affected() == 1)
    }

    /// Saves where a batch stands after a step of the outbox.
    pub async fn save_settlement_batch(
        &self,
        r: &BatchRecord,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE settlement_batches SET status = $2, attempts = $3, last_error = $4, retry = $5, \
             next_attempt_ms = $6, tx_hash = $7, block_number = $8, block_hash = $9, gas_used = $10, \
             updated_ms = $11 WHERE slot = $1",
        )
        .bind(i64_of(r.batch.id))
        .bind(r.status.as_str())
        .bind(i64::from(r.attempts))
        .bind(r.last_error.clone())
        .bind(i64::from(r.retry))
        .bind(i64_of(r.next_attempt_ms))
        .bind(r.tx_hash.map(|h| h.to_string()))
        .bind(r.block_number.map(i64_of))
        .bind(r.block_hash.map(|h| h.to_string()))
        .bind(r.gas_used.map(i64_of))
        .bind(i64_of(now_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes a settled slot's batch into the outbox in a transaction of its own (see
    /// [`Transaction::queue_settlement_batch`]).
    pub async fn queue_settlement_batch(
        &self,
        batch: &SettlementBatch,
        sales: &SlotSales,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.queue_settlement_batch(batch, sales, now_ms).await?;
        tx.commit().await
    }

    /// Settled slots with net amounts to move that have no batch in the outbox yet, ascending.
    pub async fn settled_slots_without_batch(&self) -> Result<Vec<u64>, StoreError> {
        self.slot_list(
            "SELECT slot FROM slots WHERE status = 'settled' \
             AND slot NOT IN (SELECT slot FROM settlement_batches) \
             AND slot IN (SELECT slot FROM ledger WHERE amount <> 0) ORDER BY slot",
        )
        .await
    }

    /// The meters whose delivery in a settled slot could not be established.
    pub async fn disputed_meters(&self, slot: u64) -> Result<BTreeSet<String>, StoreError> {
        let meters: Vec<String> =
            sqlx::query_scalar("SELECT meter_id FROM disputed_meters WHERE slot = $1")
                .bind(i64_of(slot))
                .fetch_all(&self.pool)
                .await?;
        Ok(meters.into_iter().collect())
    }

    /// The digests of the readings a slot's settlement used, sorted.
    pub async fn slot_reading_digests(&self, slot: u64) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT digest FROM slot_readings WHERE slot = $1 ORDER BY digest")
                .bind(i64_of(slot))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Settled slots after `after`, oldest first: `(slot, accounts in the batch, total
    /// debits, queued for the chain at ms)`.
    pub async fn settlements(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, i64, i64, Option<i64>)>, StoreError> {
        let rows: Vec<StoredSettlement> = sqlx::query_as(
            "SELECT s.slot, CAST(COUNT(l.id) AS BIGINT) AS accounts, \
             CAST(COALESCE(SUM(CASE WHEN l.amount < 0 THEN -l.amount ELSE 0 END), 0) AS BIGINT) AS debits, \
             MAX(c.queued_ms) AS queued_ms \
             FROM slots s LEFT JOIN ledger l ON l.slot = s.slot \
             LEFT JOIN settlement_batches c ON c.slot = s.slot \
             WHERE s.status = 'settled' AND s.slot > $1 GROUP BY s.slot ORDER BY s.slot LIMIT $2",
        )
        .bind(i64_of(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    unsigned(r.slot, "slots.slot")?,
                    r.accounts,
                    r.debits,
                    r.queued_ms,
                ))
            })
            .collect()
    }

    /// The latest `limit` proof records of a meter, newest epoch first.
    pub async fn proof_records(
        &self,
        meter: &str,
        limit: u32,
    ) -> Result<Vec<ProofRecord>, StoreError> {
        let rows: Vec<StoredProof> = sqlx::query_as(
            "SELECT epoch, status, attempts, end_seq, tx_hash, credited_wh, last_error, \
             next_attempt_ms FROM epoch_proofs WHERE meter_id = $1 ORDER BY epoch DESC LIMIT $2",
        )
        .bind(meter)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ProofRecord::try_from).collect()
    }

    /// Records an attempt at proving a meter's epoch.
    pub async fn record_proof(
        &self,
        meter: &str,
        epoch: u64,
        attempt: ProofAttempt<'_>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        // A new attempt counts when a transaction is about to go out.
        let counts = i64::from(attempt.status == ProofStatus::Sending);
        sqlx::query(
            "INSERT INTO epoch_proofs (meter_id, epoch, status, attempts, end_seq, tx_hash, \
             credited_wh, last_error, next_attempt_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (meter_id, epoch) DO UPDATE SET status = excluded.status, \
             attempts = epoch_proofs.attempts + excluded.attempts, end_seq = excluded.end_seq, \
             tx_hash = excluded.tx_hash, credited_wh = excluded.credited_wh, \
             last_error = COALESCE(excluded.last_error, epoch_proofs.last_error), \
             next_attempt_ms = excluded.next_attempt_ms, updated_ms = excluded.updated_ms",
        )
        .bind(meter)
        .bind(checked_i64(epoch, "epoch")?)
        .bind(attempt.status.as_str())
        .bind(counts)
        .bind(checked_i64(attempt.end_seq, "seq")?)
        .bind(attempt.tx_hash)
        .bind(
            attempt
                .credited_wh
                .map(|c| checked_i64(c, "credited_wh"))
                .transpose()?,
        )
        .bind(attempt.error)
        .bind(checked_i64(attempt.next_attempt_ms, "next_attempt_ms")?)
        .bind(checked_i64(now_ms, "updated_ms")?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When a failed proof of a meter's epoch may be tried again (chain time, ms), if it
    /// failed.
    pub async fn proof_retry_at_ms(
        &self,
        meter: &str,
        epoch: u64,
    ) -> Result<Option<u64>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT next_attempt_ms FROM epoch_proofs WHERE meter_id = $1 AND epoch = $2 \
             AND status = 'failed'",
        )
        .bind(meter)
        .bind(checked_i64(epoch, "epoch")?)
        .fetch_optional(&self.pool)
        .await?;
        unsigned_opt(next, "epoch_proofs.next_attempt_ms")
    }

    /// Marks a meter's proofs sent before a restart as proved when the chain has them: its
    /// last proven reading is at or past the reading each ended at.
    pub async fn mark_sent_proofs_proved(
        &self,
        meter: &str,
        proven_seq: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE epoch_proofs SET status = 'proved' WHERE meter_id = $1 AND status = 'sending' \
             AND end_seq <= $2",
        )
        .bind(meter)
        .bind(checked_i64(proven_seq, "seq")?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Transaction {
    /// Writes a settled slot's batch into the outbox, in the slot's settlement transaction: a
    /// slot is never settled without its batch. A slot already in the outbox is left as it is.
    pub async fn queue_settlement_batch(
        &mut self,
        batch: &SettlementBatch,
        sales: &SlotSales,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let deltas: Vec<u8> = batch.packed_deltas().iter().flat_map(|w| w.0).collect();
        let sales = serde_json::to_string(sales).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO settlement_batches (slot, root, deltas, sales, status, queued_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $5) ON CONFLICT (slot) DO NOTHING",
        )
        .bind(checked_i64(batch.id, "a batch id")?)
        .bind(batch.root.to_string())
        .bind(hex::encode_prefixed(deltas))
        .bind(sales)
        .bind(i64_of(now_ms))
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    /// Records the meters whose delivery in `slot` could not be established: (meter,
    /// account, reason).
    pub async fn record_disputes(
        &mut self,
        slot: u64,
        disputes: &[(&str, i64, &str)],
    ) -> Result<(), StoreError> {
        for &(meter, account, reason) in disputes {
            sqlx::query(
                "INSERT INTO disputed_meters (slot, meter_id, account_id, reason) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(i64_of(slot))
            .bind(meter)
            .bind(account)
            .bind(reason)
            .execute(&mut *self.0)
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proof status the engine never writes reads as corruption naming the column (before,
    /// any text was shown as it was and counted as not failed).
    #[test]
    fn an_unknown_proof_status_is_corrupt() {
        for status in [
            ProofStatus::Sending,
            ProofStatus::Proved,
            ProofStatus::Failed,
        ] {
            assert_eq!(ProofStatus::stored(status.as_str()).unwrap(), status);
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        match ProofStatus::stored("proven") {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("epoch_proofs.status"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
