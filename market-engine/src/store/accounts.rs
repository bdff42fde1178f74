//! Accounts, their credentials (sessions and API tokens, by the hash of their secret) and the
//! wallets households link to them: who may do what, and where their money lives on chain.

use std::collections::HashMap;

use super::{Store, StoreError, i64_of, unsigned, unsigned_opt};

/// What an account may do, stored as its lower-case name in `accounts.role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Trades and reads for its own meters only.
    Household,
    /// The community operator: approves meters, records deposits, sets the market's terms.
    Operator,
}

impl Role {
    /// The name stored in `accounts.role` and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Household => "household",
            Self::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "household" => Ok(Self::Household),
            "operator" => Ok(Self::Operator),
            other => Err(format!("{other:?} is not a role (household or operator)")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    /// Id.
    pub id: i64,
    /// Login name.
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// What it may do.
    pub role: Role,
}

/// A row of `accounts` as stored.
#[derive(sqlx::FromRow)]
struct StoredAccount {
    id: i64,
    name: String,
    password_hash: String,
    role: String,
}

impl TryFrom<StoredAccount> for AccountRow {
    type Error = StoreError;

    /// Design: an unknown role is corruption, not a household: reading it as the least
    /// privileged role would hide a row written behind the engine's back.
    fn try_from(r: StoredAccount) -> Result<Self, StoreError> {
        Ok(Self {
            role: r
                .role
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("accounts.role {e}")))?,
            id: r.id,
            name: r.name,
            password_hash: r.password_hash,
        })
    }
}

/// What a credential is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// Issued at login, for the web app.
    Session,
    /// Issued on request, labelled by its owner, for scripts.
    ApiToken,
}

impl CredentialKind {
    /// The name stored in `credentials.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::ApiToken => "api_token",
        }
    }
}

impl std::str::FromStr for CredentialKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "session" => Ok(Self::Session),
            "api_token" => Ok(Self::ApiToken),
            other => Err(format!(
                "{other:?} is not a credential kind (session or api_token)"
            )),
        }
    }
}

/// A session or an API token: only a SHA-256 of its secret is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRow {
    /// Hex SHA-256 of the secret.
    pub token_hash: String,
    /// Session or API token.
    pub kind: CredentialKind,
    /// What it is for (`login` for sessions; the owner's label for tokens).
    pub label: String,
    /// When it was issued, ms since the epoch (unknown for credentials from before that was
    /// recorded).
    pub created_ms: Option<u64>,
    /// When it stops working, ms since the epoch.
    pub expires_ms: u64,
}

/// A row of `credentials` as stored.
#[derive(sqlx::FromRow)]
struct StoredCredential {
    token_hash: String,
    kind: String,
    label: String,
    created_ms: Option<i64>,
    expires_ms: i64,
}

impl TryFrom<StoredCredential> for CredentialRow {
    type Error = StoreError;

    fn try_from(r: StoredCredential) -> Result<Self, StoreError> {
        Ok(Self {
            created_ms: unsigned_opt(r.created_ms, "credentials.created_ms")?,
            expires_ms: unsigned(r.expires_ms, "credentials.expires_ms")?,
            kind: r
                .kind
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("credentials.kind {e}")))?,
            token_hash: r.token_hash,
            label: r.label,
        })
    }
}

/// A row of `linked_wallets`.
#[derive(sqlx::FromRow)]
struct LinkedWallet {
    account_id: i64,
    address: String,
}

/// An account's id and name.
#[derive(sqlx::FromRow)]
struct AccountName {
    id: i64,
    name: String,
}

impl Store {
    /// Creates an account; `Conflict` if the name is taken.
    pub async fn create_account(
        &self,
        name: &str,
        password_hash: &str,
        role: Role,
        now_ms: u64,
    ) -> Result<i64, StoreError> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO accounts (name, password_hash, role, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(i64_of(now_ms))
        .fetch_optional(&self.pool)
        .await?;
        id.ok_or_else(|| StoreError::Conflict(format!("account {name:?}")))
    }

    /// Every linked wallet: (account, address `0x…`).
    pub async fn linked_wallets(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let rows: Vec<LinkedWallet> =
            sqlx::query_as("SELECT account_id, address FROM linked_wallets ORDER BY account_id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|w| (w.account_id, w.address))
            .collect())
    }

    /// Links `address` (lowercase `0x…`) as `account`'s wallet, replacing an earlier link;
    /// `Conflict` if another account has it.
    pub async fn link_wallet(
        &self,
        account: i64,
        address: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let taken: Option<i64> =
            sqlx::query_scalar("SELECT account_id FROM linked_wallets WHERE address = $1")
                .bind(address)
                .fetch_optional(&mut *tx.0)
                .await?;
        if taken.is_some_and(|a| a != account) {
            return Err(StoreError::Conflict(format!(
                "the wallet {address} of another account"
            )));
        }
        sqlx::query(
            "INSERT INTO linked_wallets (account_id, address, linked_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id) DO UPDATE SET address = excluded.address, \
             linked_ms = excluded.linked_ms",
        )
        .bind(account)
        .bind(address)
        .bind(i64_of(now_ms))
        .execute(&mut *tx.0)
        .await?;
        tx.commit().await
    }

    /// Gives an existing account a role; whether it exists.
    pub async fn set_role(&self, name: &str, role: Role) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE accounts SET role = $1 WHERE name = $2")
            .bind(role.as_str())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every account's id, ascending.
    pub async fn account_ids(&self) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM accounts ORDER BY id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// The ids of accounts created after account `after`, ascending (ids only grow).
    pub async fn account_ids_after(&self, after: i64) -> Result<Vec<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM accounts WHERE id > $1 ORDER BY id")
                .bind(after)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// An account by login name.
    pub async fn account_by_name(&self, name: &str) -> Result<Option<AccountRow>, StoreError> {
        let row: Option<StoredAccount> =
            sqlx::query_as("SELECT id, name, password_hash, role FROM accounts WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        row.map(AccountRow::try_from).transpose()
    }

    /// Every account's name by id.
    pub async fn account_names(&self) -> Result<HashMap<i64, String>, StoreError> {
        let rows: Vec<AccountName> = sqlx::query_as("SELECT id, name FROM accounts")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|a| (a.id, a.name)).collect())
    }

    /// Stores a credential (session or API token) by the hash of its secret.
    pub async fn insert_credential(
        &self,
        credential: &CredentialRow,
        account_id: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO credentials (token_hash, account_id, kind, label, created_ms, expires_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(credential.token_hash.as_str())
        .bind(account_id)
        .bind(credential.kind.as_str())
        .bind(credential.label.as_str())
        .bind(credential.created_ms.map(i64_of))
        .bind(i64_of(credential.expires_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The account's unexpired credentials of one kind, newest first.
    pub async fn credentials(
        &self,
        account_id: i64,
        kind: CredentialKind,
        now_ms: u64,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let rows: Vec<StoredCredential> = sqlx::query_as(
            "SELECT token_hash, kind, label, created_ms, expires_ms FROM credentials \
             WHERE account_id = $1 AND kind = $2 AND expires_ms > $3 \
             ORDER BY created_ms DESC, token_hash",
        )
        .bind(account_id)
        .bind(kind.as_str())
        .bind(i64_of(now_ms))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(CredentialRow::try_from).collect()
    }

    /// Deletes the account's credential of `kind` whose hash starts with `hash_prefix`;
    /// whether there was one. Another account's credential is never touched.
    pub async fn delete_credential(
        &self,
        account_id: i64,
        kind: CredentialKind,
        hash_prefix: &str,
    ) -> Result<bool, StoreError> {
        // Hex only, so the prefix holds no LIKE wildcards.
        if hash_prefix.is_empty() || !hash_prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let done = sqlx::query(
            "DELETE FROM credentials WHERE account_id = $1 AND kind = $2 AND token_hash LIKE $3",
        )
        .bind(account_id)
        .bind(kind.as_str())
        .bind(format!("{}%", hash_prefix.to_ascii_lowercase()))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a session by the hash of its secret (logout); whether there was one.
    pub async fn delete_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM credentials WHERE token_hash = $1 AND kind = $2")
            .bind(token_hash)
            .bind(CredentialKind::Session.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes the account's expired credentials; how many.
    pub async fn delete_expired_credentials(
        &self,
        account_id: i64,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM credentials WHERE account_id = $1 AND expires_ms <= $2")
                .bind(account_id)
                .bind(i64_of(now_ms))
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    /// Gives every credential without an expiry (issued before tokens expired) this one; how
    /// many there were.
    pub async fn expire_unbounded_credentials(&self, expires_ms: u64) -> Result<u64, StoreError> {
        let done = sqlx::query("UPDATE credentials SET expires_ms = $1 WHERE expires_ms IS NULL")
            .bind(i64_of(expires_ms))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// The account behind a valid, unexpired credential.
    pub async fn account_by_credential(
        &self,
        token_hash: &str,
        now_ms: u64,
    ) -> Result<Option<AccountRow>, StoreError> {
        let row: Option<StoredAccount> = sqlx::query_as(
            "SELECT a.id, a.name, a.password_hash, a.role FROM credentials c \
             JOIN accounts a ON a.id = c.account_id \
             WHERE c.token_hash = $1 AND (c.expires_ms IS NULL OR c.expires_ms > $2)",
        )
        .bind(token_hash)
        .bind(i64_of(now_ms))
        .fetch_optional(&self.pool)
        .await?;
        row.map(AccountRow::try_from).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(role: &str) -> StoredAccount {
        StoredAccount {
            id: 1,
            name: "home-01".into(),
            password_hash: "x".into(),
            role: role.into(),
        }
    }

    #[test]
    fn an_unknown_role_is_corruption_not_a_household() {
        match AccountRow::try_from(stored("admin")) {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.contains("accounts.role"), "{message}");
                assert!(message.contains("admin"), "{message}");
            }
            other => panic!("expected a corrupt role, got {other:?}"),
        }
        for role in [Role::Household, Role::Operator] {
            assert_eq!(
                AccountRow::try_from(stored(role.as_str())).unwrap().role,
                role
            );
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
    }

    #[test]
    fn an_unknown_credential_kind_is_corruption() {
        let stored = |kind: &str| StoredCredential {
            token_hash: "ab".into(),
            kind: kind.into(),
            label: "login".into(),
            created_ms: None,
            expires_ms: 1,
        };
        for kind in [CredentialKind::Session, CredentialKind::ApiToken] {
            assert_eq!(
                CredentialRow::try_from(stored(kind.as_str())).unwrap().kind,
                kind
            );
        }
        match CredentialRow::try_from(stored("cookie")) {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.contains("credentials.kind"), "{message}")
            }
            other => panic!("expected a corrupt kind, got {other:?}"),
        }
    }
}
