//! Deposits, withdrawals and what each account may spend.

use super::*;

impl Market {
    /// Net balance of an account over all settled slots.
    pub async fn balance(&self, account: i64) -> Result<i64, MarketError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger WHERE account_id = $1",
        )
        .bind(account)
        .fetch_one(self.store.pool())
        .await?;
        Ok(row.try_get::<i64, _>(0)?)
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
            return Err(MarketError::Slot("amount must not be zero".into()));
        }
        {
            let mut books = self.books.lock().await;
            let pool = self.store.pool();
            let existing =
                sqlx::query("SELECT amount FROM funding WHERE account_id = $1 AND reference = $2")
                    .bind(account)
                    .bind(reference)
                    .fetch_optional(pool)
                    .await?;
            match existing {
                Some(row) if row.get::<i64, _>(0) == amount => {}
                Some(_) => return Err(MarketError::ReferenceReused(reference.to_owned())),
                None => {
                    if amount < 0 {
                        books.funds.check(account, amount.unsigned_abs())?;
                    }
                    // Refused before it is written if the balance would leave its range.
                    books.funds.credited(account, amount)?;
                    sqlx::query(
                        "INSERT INTO funding (account_id, amount, reference, created_ms) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(account)
                    .bind(amount)
                    .bind(reference)
                    .bind(i64_of(now_ms))
                    .execute(pool)
                    .await?;
                    books.funds.credit(account, amount)?;
                    tracing::info!(target: "market", account, amount, reference, "funds moved");
                }
            }
        }
        Ok(self.funds(account).await)
    }

    /// An account's deposits and withdrawals, newest first: `(amount, reference, at ms)`.
    pub async fn funding(
        &self,
        account: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String, i64)>, MarketError> {
        Ok(sqlx::query(
            "SELECT amount, reference, created_ms FROM funding WHERE account_id = $1 \
             ORDER BY id DESC LIMIT $2",
        )
        .bind(account)
        .bind(i64::from(limit))
        .fetch_all(self.store.pool())
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
    }
}
