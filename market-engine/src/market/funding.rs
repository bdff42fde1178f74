//! Deposits, withdrawals and what each account may spend.

use super::*;
use crate::store::money::{FollowCursor, FundingEntry};

/// Money the Settlement contract's events moved for an account (see
/// [`crate::chain::follow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainMoney {
    /// Tokens arrived in the account (`Deposited`), from the household's own wallet or anyone
    /// else's except the engine's operator key (whose deposits mirror operator-recorded ones).
    Deposited {
        /// The account.
        account: i64,
        /// Token units received.
        amount: i64,
        /// `chain:<tx hash>:<log index>`.
        reference: String,
    },
    /// The household asked for `amount` to be paid out from `ready_at` (unix seconds).
    WithdrawalRequested {
        /// The account.
        account: i64,
        /// Token units added to its pending withdrawal.
        amount: u64,
        /// When it may be paid.
        ready_at: u64,
    },
    /// The household took its pending withdrawal back.
    WithdrawalCancelled {
        /// The account.
        account: i64,
    },
    /// The pending withdrawal was paid out (`paid` less any debt collected from it).
    Withdrawn {
        /// The account.
        account: i64,
        /// Token units that left the contract.
        paid: i64,
        /// `chain:<tx hash>:<log index>`.
        reference: String,
    },
}

impl Market {
    /// Where the engine stands in `contract`'s events, if it read any.
    pub async fn follow_cursor(&self, contract: &str) -> Result<Option<FollowCursor>, MarketError> {
        Ok(self.store.follow_cursor(contract).await?)
    }

    /// Applies the money events of `contract`'s blocks up to `cursor` (which must follow the
    /// last applied) and moves the cursor there, in one transaction: a restart re-reads from
    /// the cursor, so nothing is counted twice or missed. A deposit or payout whose reference
    /// the account already has is not counted again. Returns how many events changed funds.
    pub async fn apply_chain_money(
        &self,
        contract: &str,
        events: &[ChainMoney],
        cursor: &FollowCursor,
        now_ms: u64,
    ) -> Result<u64, MarketError> {
        let mut books = self.books.lock().await;
        let mut tx = self.store.begin().await?;
        // What memory must do once the transaction is committed.
        let mut booked: Vec<(i64, i64)> = Vec::new();
        let mut withdrawing: Vec<(i64, Option<u64>)> = Vec::new();
        for event in events {
            match event {
                ChainMoney::Deposited {
                    account,
                    amount,
                    reference,
                }
                | ChainMoney::Withdrawn {
                    account,
                    paid: amount,
                    reference,
                } => {
                    let signed = if matches!(event, ChainMoney::Withdrawn { .. }) {
                        -amount
                    } else {
                        *amount
                    };
                    if signed != 0
                        && tx
                            .record_chain_funding(*account, signed, reference, now_ms)
                            .await?
                    {
                        booked.push((*account, signed));
                    }
                    if matches!(event, ChainMoney::Withdrawn { .. }) {
                        tx.clear_chain_withdrawal(*account).await?;
                        withdrawing.push((*account, None));
                    }
                }
                ChainMoney::WithdrawalRequested {
                    account,
                    amount,
                    ready_at,
                } => {
                    let total = tx
                        .add_chain_withdrawal(*account, *amount, *ready_at)
                        .await?;
                    withdrawing.push((*account, Some(total)));
                }
                ChainMoney::WithdrawalCancelled { account } => {
                    tx.clear_chain_withdrawal(*account).await?;
                    withdrawing.push((*account, None));
                }
            }
        }
        tx.set_follow_cursor(contract, cursor, now_ms).await?;
        // Checked before the commit, so memory can follow what is written.
        // Net per account, each checked without changing memory (no copy of every account's
        // funds on each step), then booked once the transaction is committed.
        let mut net: std::collections::BTreeMap<i64, i64> = Default::default();
        for (account, amount) in &booked {
            let sum = net.entry(*account).or_default();
            *sum = sum.checked_add(*amount).ok_or_else(|| {
                ExchangeError::OutOfRange(format!("account {account}'s chain money overflows"))
            })?;
        }
        for (account, amount) in &net {
            books.funds.booked(*account, *amount)?;
        }
        tx.commit().await?;
        for (account, amount) in net {
            books.funds.book(account, amount)?;
        }
        for (account, amount) in withdrawing {
            books.funds.set_withdrawing(account, amount.unwrap_or(0));
        }
        let changed = u64::try_from(booked.len()).unwrap_or(u64::MAX);
        for (account, amount) in &booked {
            tracing::info!(target: "market", account, amount, "funds moved on chain");
        }
        Ok(changed)
    }

    /// Operator-recorded funding rows `ids` went on chain in the deposit `tx_hash` (sent, not
    /// yet in a block).
    pub async fn mark_sent(&self, ids: &[i64], tx_hash: &str) -> Result<(), MarketError> {
        Ok(self.store.mark_funding_sent(ids, tx_hash).await?)
    }

    /// The deposit `tx_hash` is in block `block`.
    pub async fn mark_mirrored(&self, tx_hash: &str, block: u64) -> Result<(), MarketError> {
        Ok(self.store.mark_funding_mirrored(tx_hash, block).await?)
    }

    /// The deposit `tx_hash` was dropped or reverted: its rows are to be sent again.
    pub async fn unmark_mirrored(&self, tx_hash: &str) -> Result<(), MarketError> {
        Ok(self.store.unmark_funding_mirrored(tx_hash).await?)
    }

    /// Withdrawals requested on chain and not yet paid out: (account, ready at, unix s).
    pub async fn due_withdrawals(&self) -> Result<Vec<(i64, u64)>, MarketError> {
        Ok(self.store.due_withdrawals().await?)
    }

    /// Net balance of an account over all settled slots.
    pub async fn balance(&self, account: i64) -> Result<i64, MarketError> {
        Ok(self.store.ledger_balance(account).await?)
    }

    /// An account's money as the market sees it.
    pub async fn funds(&self, account: i64) -> FundsView {
        let books = self.books.lock().await;
        let funds = &books.funds;
        let unsettled = funds.held_by_purchases(account);
        let held = funds.held(account);
        FundsView {
            balance: funds.balance(account),
            held_by_bids: held.saturating_sub(unsettled),
            held_by_purchases: unsettled,
            withdrawal_pending: funds.withdrawing(account),
            available: funds.available(account),
        }
    }

    /// What `account` may still spend on bids.
    pub async fn available(&self, account: i64) -> i64 {
        self.books.lock().await.funds.available(account)
    }

    /// Credits a deposit (positive `amount`) or debits a withdrawal (negative, refused beyond
    /// what is available). A `reference` already used by the account for the same amount
    /// changes nothing (a retried request); for another amount it is refused. Returns the
    /// account's funds afterwards.
    pub async fn fund(
        &self,
        account: i64,
        amount: i64,
        reference: &str,
        now_ms: u64,
    ) -> Result<FundsView, MarketError> {
        if amount == 0 {
            return Err(MarketError::out_of_range("amount must not be zero"));
        }
        {
            let mut books = self.books.lock().await;
            match self.store.funding_amount(account, reference).await? {
                Some(stored) if stored == amount => {}
                Some(_) => return Err(MarketError::ReferenceReused(reference.to_owned())),
                None => {
                    if amount < 0 {
                        books.funds.check(account, amount.unsigned_abs())?;
                    }
                    // Refused before it is written if the balance would leave its range.
                    books.funds.credited(account, amount)?;
                    self.store
                        .record_funding(account, amount, reference, now_ms)
                        .await?;
                    books.funds.credit(account, amount)?;
                    tracing::info!(target: "market", account, amount, reference, "funds moved");
                }
            }
        }
        Ok(self.funds(account).await)
    }

    /// An account's deposits and withdrawals, newest first.
    pub async fn funding(
        &self,
        account: i64,
        limit: u32,
    ) -> Result<Vec<FundingEntry>, MarketError> {
        Ok(self.store.funding(account, limit).await?)
    }
}
