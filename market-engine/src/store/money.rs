//! Money: the settled ledger (one net amount per account and slot), funding (deposits and
//! withdrawals, recorded by the operator or read from the chain, with their mirror on chain),
//! withdrawals requested on chain and not yet paid out, and how far the engine has followed
//! the Settlement contract's events.

use super::{Bind, Store, StoreError, Transaction, checked_i64, i64_of, unsigned};

/// An amount per account.
#[derive(sqlx::FromRow)]
struct AccountAmount {
    account_id: i64,
    amount: i64,
}

/// A row of `chain_follow`.
#[derive(sqlx::FromRow)]
struct StoredCursor {
    block: i64,
    block_hash: String,
}

/// A withdrawal requested on chain: whose, and from when it may be paid.
#[derive(sqlx::FromRow)]
struct DueWithdrawal {
    account_id: i64,
    ready_at: i64,
}

/// How far the engine has applied the contract's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowCursor {
    /// The last block applied.
    pub block: u64,
    /// Its hash, `0x…`.
    pub block_hash: String,
}

/// One deposit or withdrawal of an account.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FundingEntry {
    /// Token units, positive in, negative out.
    pub amount: i64,
    /// Its reference (`chain:<tx>:<log>` for one read from the chain).
    pub reference: String,
    /// When the engine booked it, ms.
    pub at_ms: i64,
    /// Who booked it: the community operator, or the chain's events.
    pub source: FundingSource,
    /// For an operator-recorded deposit on a chain: the transaction that deposited it there.
    pub chain_tx: Option<String>,
    /// Whether that transaction is in a block (or the entry came from the chain).
    pub on_chain: bool,
}

/// Who booked a deposit or withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FundingSource {
    /// The community operator recorded it (money that arrived off chain).
    Operator,
    /// Read from the Settlement contract's events.
    Chain,
}

impl FundingSource {
    /// The source a stored `funding.source` names.
    fn stored(text: &str) -> Result<Self, StoreError> {
        match text {
            "operator" => Ok(Self::Operator),
            "chain" => Ok(Self::Chain),
            other => Err(StoreError::Corrupt(format!(
                "funding.source {other:?} is not a funding source (operator or chain)"
            ))),
        }
    }
}

/// A row of `funding` as an account's history shows it.
#[derive(sqlx::FromRow)]
struct StoredFunding {
    amount: i64,
    reference: String,
    created_ms: i64,
    source: String,
    chain_tx: Option<String>,
    chain_block: Option<i64>,
}

/// An operator-recorded funding row not yet in a block on chain.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UnmirroredFunding {
    /// The funding row.
    pub id: i64,
    /// Its account.
    pub account: i64,
    /// Token units, positive in, negative out.
    pub amount: i64,
    /// The deposit it was sent in, if sent.
    pub chain_tx: Option<String>,
}

impl Store {
    /// Where the engine stands in `contract`'s events, if it read any.
    pub async fn follow_cursor(&self, contract: &str) -> Result<Option<FollowCursor>, StoreError> {
        let row: Option<StoredCursor> =
            sqlx::query_as("SELECT block, block_hash FROM chain_follow WHERE contract = $1")
                .bind(contract)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(FollowCursor {
                block: unsigned(r.block, "chain_follow.block")?,
                block_hash: r.block_hash,
            })
        })
        .transpose()
    }

    /// Every household's balance: its funding plus its settled ledger, by account (the
    /// utility and grid operator, negative ids, left out).
    pub async fn household_balances(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows: Vec<AccountAmount> = sqlx::query_as(
            "SELECT account_id, CAST(SUM(amount) AS BIGINT) AS amount FROM \
             (SELECT account_id, amount FROM funding \
              UNION ALL SELECT account_id, amount FROM ledger WHERE account_id >= 0) AS f \
             GROUP BY account_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.account_id, r.amount)).collect())
    }

    /// Every account's balance in the engine's books (deposits less withdrawals plus the
    /// settled ledger; the utility and grid operator included), by account id ascending.
    pub async fn booked_balances(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows: Vec<AccountAmount> = sqlx::query_as(
            "SELECT account_id, CAST(SUM(amount) AS BIGINT) AS amount FROM \
             (SELECT account_id, amount FROM funding \
              UNION ALL SELECT account_id, amount FROM ledger) AS f \
             GROUP BY account_id ORDER BY account_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.account_id, r.amount)).collect())
    }

    /// Withdrawals requested on chain and not yet paid out: (account, token units).
    pub async fn pending_withdrawals(&self) -> Result<Vec<(i64, u64)>, StoreError> {
        let rows: Vec<AccountAmount> =
            sqlx::query_as("SELECT account_id, amount FROM chain_withdrawals")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.account_id,
                    unsigned(r.amount, "chain_withdrawals.amount")?,
                ))
            })
            .collect()
    }

    /// Withdrawals requested on chain and not yet paid out: (account, ready at, unix s),
    /// soonest first.
    pub async fn due_withdrawals(&self) -> Result<Vec<(i64, u64)>, StoreError> {
        let rows: Vec<DueWithdrawal> =
            sqlx::query_as("SELECT account_id, ready_at FROM chain_withdrawals ORDER BY ready_at")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.account_id,
                    unsigned(r.ready_at, "chain_withdrawals.ready_at")?,
                ))
            })
            .collect()
    }

    /// Net ledger balance of an account over all settled slots.
    pub async fn ledger_balance(&self, account: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger WHERE account_id = $1",
        )
        .bind(account)
        .fetch_one(&self.pool)
        .await?)
    }

    /// A settled slot's net amounts per account, in the order they were booked.
    pub async fn slot_ledger(&self, slot: u64) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows: Vec<AccountAmount> =
            sqlx::query_as("SELECT account_id, amount FROM ledger WHERE slot = $1 ORDER BY id")
                .bind(i64_of(slot))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| (r.account_id, r.amount)).collect())
    }

    /// The amount of the account's funding with this reference, if there is one.
    pub async fn funding_amount(
        &self,
        account: i64,
        reference: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT amount FROM funding WHERE account_id = $1 AND reference = $2",
        )
        .bind(account)
        .bind(reference)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records an operator's deposit (positive) or withdrawal (negative).
    pub async fn record_funding(
        &self,
        account: i64,
        amount: i64,
        reference: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO funding (account_id, amount, reference, created_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(account)
        .bind(amount)
        .bind(reference)
        .bind(i64_of(now_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An account's deposits and withdrawals, newest first; at most `limit`.
    pub async fn funding(&self, account: i64, limit: u32) -> Result<Vec<FundingEntry>, StoreError> {
        let rows: Vec<StoredFunding> = sqlx::query_as(
            "SELECT amount, reference, created_ms, source, chain_tx, chain_block FROM funding \
             WHERE account_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(account)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let source = FundingSource::stored(&r.source)?;
                Ok(FundingEntry {
                    on_chain: r.chain_block.is_some() || source == FundingSource::Chain,
                    amount: r.amount,
                    reference: r.reference,
                    at_ms: r.created_ms,
                    source,
                    chain_tx: r.chain_tx,
                })
            })
            .collect()
    }

    /// Operator-recorded funding not yet in a block on chain, oldest first.
    pub async fn unmirrored_funding(&self) -> Result<Vec<UnmirroredFunding>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, account_id AS account, amount, chain_tx FROM funding \
             WHERE source = 'operator' AND chain_block IS NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Operator-recorded funding rows `ids` went on chain in the deposit `tx_hash` (sent, not
    /// yet in a block), in one transaction.
    pub async fn mark_funding_sent(&self, ids: &[i64], tx_hash: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for id in ids {
            sqlx::query("UPDATE funding SET chain_tx = $1 WHERE id = $2")
                .bind(tx_hash)
                .bind(id)
                .execute(&mut *tx.0)
                .await?;
        }
        tx.commit().await
    }

    /// The deposit `tx_hash` is in block `block`.
    pub async fn mark_funding_mirrored(&self, tx_hash: &str, block: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE funding SET chain_block = $1 WHERE chain_tx = $2")
            .bind(i64_of(block))
            .bind(tx_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The deposit `tx_hash` was dropped or reverted: its rows are to be sent again.
    pub async fn unmark_funding_mirrored(&self, tx_hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE funding SET chain_tx = NULL WHERE chain_tx = $1 AND chain_block IS NULL",
        )
        .bind(tx_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Transaction {
    /// Records money moved on chain for an account (a deposit, or a payout as a negative
    /// amount) under its `chain:<tx>:<log>` reference; whether it is new (a reference the
    /// account already has is not counted again).
    pub async fn record_chain_funding(
        &mut self,
        account: i64,
        amount: i64,
        reference: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO funding (account_id, amount, reference, created_ms, source) \
             VALUES ($1, $2, $3, $4, 'chain') \
             ON CONFLICT (account_id, reference) DO NOTHING",
        )
        .bind(account)
        .bind(amount)
        .bind(reference)
        .bind(i64_of(now_ms))
        .execute(&mut *self.0)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Adds `amount` to the account's pending withdrawal on chain, payable from `ready_at`;
    /// returns the pending total.
    pub async fn add_chain_withdrawal(
        &mut self,
        account: i64,
        amount: u64,
        ready_at: u64,
    ) -> Result<u64, StoreError> {
        let total: i64 = sqlx::query_scalar(
            "INSERT INTO chain_withdrawals (account_id, amount, ready_at) \
             VALUES ($1, $2, $3) ON CONFLICT (account_id) DO UPDATE SET \
             amount = chain_withdrawals.amount + excluded.amount, \
             ready_at = excluded.ready_at RETURNING amount",
        )
        .bind(account)
        .bind(checked_i64(amount, "withdrawal")?)
        .bind(i64_of(ready_at))
        .fetch_one(&mut *self.0)
        .await?;
        unsigned(total, "chain_withdrawals.amount")
    }

    /// The account's pending withdrawal on chain is gone (paid out or taken back).
    pub async fn clear_chain_withdrawal(&mut self, account: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM chain_withdrawals WHERE account_id = $1")
            .bind(account)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    /// Moves the follower's cursor in `contract`'s events to `cursor`.
    pub async fn set_follow_cursor(
        &mut self,
        contract: &str,
        cursor: &FollowCursor,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO chain_follow (contract, block, block_hash, updated_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (contract) DO UPDATE SET \
             block = excluded.block, block_hash = excluded.block_hash, \
             updated_ms = excluded.updated_ms",
        )
        .bind(contract)
        .bind(checked_i64(cursor.block, "block")?)
        .bind(&cursor.block_hash)
        .bind(i64_of(now_ms))
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    /// Books a settled slot's net amount per account (households by id; −1 the utility, −2
    /// the grid operator).
    pub async fn book_slot_ledger(
        &mut self,
        slot: u64,
        amounts: &[(i64, i64)],
    ) -> Result<(), StoreError> {
        let slot = Bind::Int(i64_of(slot));
        self.insert_rows(
            "INSERT INTO ledger (slot, account_id, amount)",
            "",
            amounts
                .iter()
                .map(|&(account, amount)| [slot.clone(), Bind::Int(account), Bind::Int(amount)])
                .collect(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A funding source the engine never writes is corruption naming the column (before, any
    /// text was shown as it was and read as off chain).
    #[test]
    fn an_unknown_funding_source_is_corrupt() {
        assert_eq!(
            FundingSource::stored("operator").unwrap(),
            FundingSource::Operator
        );
        assert_eq!(
            FundingSource::stored("chain").unwrap(),
            FundingSource::Chain
        );
        assert_eq!(
            serde_json::to_value([FundingSource::Operator, FundingSource::Chain]).unwrap(),
            serde_json::json!(["operator", "chain"])
        );
        match FundingSource::stored("bank") {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("funding.source"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
