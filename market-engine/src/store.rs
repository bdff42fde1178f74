//! The engine's database: SQLite by default (a file, WAL, `synchronous = FULL` so that
//! whatever the engine acknowledged survives a crash or a power cut), PostgreSQL by URL — the
//! same code through sqlx's `Any` driver, with one migration set per dialect.

use std::collections::HashMap;

use gridshare_core::reading::SignedReading;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor, Row};

use crate::ingest::{Accepted, Approval, CounterSnapshot, Rejected, Rejection, check_step};

/// Why the database failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query or the connection failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be created or upgraded.
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The URL names no supported database.
    #[error("database url {0:?}: expected sqlite://path or postgres://...")]
    Url(String),
    /// A unique name or id is already taken.
    #[error("{0} already exists")]
    Conflict(String),
    /// There is no engine database where one was expected.
    #[error(
        "no market engine database there ({0}); point --config or --database-url at the one \
         `market-engine serve` uses"
    )]
    Missing(String),
    /// A stored value is out of its range: the database was not written by this engine.
    #[error("database holds an invalid value: {0}")]
    Corrupt(String),
    /// A value is beyond what the database stores (i64).
    #[error("{0} is beyond the largest value the engine stores")]
    OutOfRange(&'static str),
    /// Storage failed (a full disk, a read-only or unreachable database) where only a message
    /// survived: a write queued to another task.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether this is storage failing — a full disk, a read-only file or database, a lost
    /// connection, a timeout — rather than a request or the code at fault: the API answers
    /// 503 with Retry-After, and the same request succeeds once storage works again.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(e) => storage_failure(e),
            Self::Unavailable(_) => true,
            _ => false,
        }
    }
}

/// Whether `e` says storage failed rather than the statement: see
/// [`StoreError::is_unavailable`].
pub fn storage_failure(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::BeginFailed
        | E::InvalidSavePointStatement => true,
        E::Database(db) => {
            let Some(code) = db.code() else {
                return false;
            };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite: the primary result code of an extended one — BUSY, LOCKED, NOMEM,
                // READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
                code.parse::<i32>()
                    .is_ok_and(|extended| matches!(extended & 0xff, 5..=8 | 10 | 11 | 13..=15 | 26))
            } else {
                // PostgreSQL SQLSTATE (five characters, often all digits): connection
                // exception, insufficient resources (disk full), operator intervention (a
                // terminated backend), system error, internal error (data corrupted); a
                // read-only transaction; a lock or serialisation conflict that succeeds when
                // tried again.
                matches!(code.get(..2), Some("08" | "53" | "57" | "58" | "XX"))
                    || matches!(&*code, "25006" | "55P03" | "40001" | "40P01")
            }
        }
        _ => false,
    }
}

/// How long a storage probe's answer stands for `/healthz`.
const PROBE_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// How long one storage probe may take before storage counts as failing.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Which SQL dialect is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// What became of one reading offered for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// New, stored.
    Inserted,
    /// New, stored, and it filled a gap in its meter's sequence numbers (typically sent again
    /// at the engine's request, [`crate::gaps`]).
    Recovered,
    /// Already stored with the same content (an agent re-sent it).
    Duplicate,
    /// Already stored with different content.
    Conflicting,
    /// It does not fit between the meter's neighbouring readings: a counter or the clock went
    /// backwards, or a counter moved faster than the meter's capacity allows.
    Implausible(Rejection, String),
}

/// A registered meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterRow {
    /// The meter id.
    pub meter_id: String,
    /// Its owner.
    pub account_id: i64,
    /// SEC1 hex of its public key.
    pub public_key: String,
    /// When it was registered, ms since the epoch.
    pub created_ms: i64,
    /// What the operator approved it with; `None` while pending.
    pub approval: Option<Approval>,
    /// When it was approved, ms since the epoch.
    pub approved_ms: Option<i64>,
}

const METER_COLUMNS: &str = "meter_id, account_id, public_key, created_ms, approved_ms, \
     export_capacity_w, import_capacity_w, manufacturer, model, serial";

impl MeterRow {
    /// From a row selecting [`METER_COLUMNS`] in that order.
    fn of(r: &sqlx::any::AnyRow) -> Result<Self, StoreError> {
        let approved_ms: Option<i64> = r.try_get(4)?;
        let approval = match approved_ms {
            None => None,
            Some(_) => {
                let capacity = |i: usize| -> Result<u32, StoreError> {
                    let v: i64 = r.try_get(i)?;
                    u32::try_from(v).map_err(|_| {
                        StoreError::Corrupt(format!("meter capacity {v} W out of range"))
                    })
                };
                let device = gridshare_core::reading::DeviceIdentity::new(
                    r.try_get::<String, _>(7)?,
                    r.try_get::<String, _>(8)?,
                    r.try_get::<String, _>(9)?,
                )
                .map_err(|e| StoreError::Corrupt(format!("meter device identity: {e}")))?;
                Some(Approval {
                    export_capacity_w: capacity(5)?,
                    import_capacity_w: capacity(6)?,
                    device,
                })
            }
        };
        Ok(Self {
            meter_id: r.try_get(0)?,
            account_id: r.try_get(1)?,
            public_key: r.try_get(2)?,
            created_ms: r.try_get(3)?,
            approval,
            approved_ms,
        })
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
    /// `household` or `operator`.
    pub role: String,
}

impl AccountRow {
    /// From a row selecting `id, name, password_hash, role` in that order.
    fn of(r: &sqlx::any::AnyRow) -> Self {
        Self {
            id: r.get(0),
            name: r.get(1),
            password_hash: r.get(2),
            role: r.get(3),
        }
    }
}

/// A session or an API token: only a SHA-256 of its secret is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRow {
    /// Hex SHA-256 of the secret.
    pub token_hash: String,
    /// `session` or `api_token`.
    pub kind: String,
    /// What it is for (`login` for sessions; the owner's label for tokens).
    pub label: String,
    /// When it was issued, ms since the epoch (unknown for credentials from before that was
    /// recorded).
    pub created_ms: Option<u64>,
    /// When it stops working, ms since the epoch.
    pub expires_ms: u64,
}

/// A household's automatic trading rule for one meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradingRule {
    /// The meter.
    pub meter_id: String,
    /// Its owner.
    pub account_id: i64,
    /// Sell the forecast surplus, asking at least this per kWh (none: never sell).
    pub sell_at_least: Option<u64>,
    /// Buy the forecast need, bidding at most this per kWh (none: never buy).
    pub buy_at_most: Option<u64>,
    /// Sell nothing while the battery is below this state of charge, basis points.
    pub keep_battery_above_bp: Option<u16>,
}

/// Rows per multi-row INSERT (15 parameters each, well below every backend's limit).
const INSERT_CHUNK: usize = 64;

/// The `VALUES` list of a multi-row statement: `rows` tuples of `width` `$n` placeholders,
/// numbered from `$1` — the form SQLite and PostgreSQL both take (sqlx's `Any` query builder
/// writes `?`, which PostgreSQL does not). The text depends only on `rows` and `width`.
pub(crate) fn values_placeholders(rows: usize, width: usize) -> String {
    let mut sql = String::with_capacity(rows * width * 6);
    let mut n = 0usize;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for c in 0..width {
            n += 1;
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&n.to_string());
        }
        sql.push(')');
    }
    sql
}

async fn insert_readings(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[(&SignedReading, String)],
    received_ms: u64,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO readings (meter_id, seq, timestamp_ms, received_ms, import_wh, \
             export_wh, battery_charge_wh, battery_discharge_wh, power_w, soc_bp, pv_power_w, \
             pv_wh, battery_power_w, digest, envelope) VALUES {}",
            values_placeholders(chunk.len(), 15)
        );
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (signed, digest) in chunk {
            let r = &signed.reading;
            let value = |m: gridshare_core::reading::Measured<u64>| m.value().map(i64_of);
            insert = insert
                .bind(r.meter_id.to_string())
                .bind(i64_of(r.seq))
                .bind(i64_of(r.timestamp_ms))
                .bind(i64_of(received_ms))
                .bind(value(r.import_wh))
                .bind(value(r.export_wh))
                .bind(value(r.battery_charge_wh))
                .bind(value(r.battery_discharge_wh))
                .bind(r.power_w.value().map(i64::from))
                .bind(r.soc_bp.value().map(i64::from))
                .bind(r.flow.pv_power_w.value().map(i64::from))
                .bind(value(r.flow.pv_wh))
                .bind(r.flow.battery_power_w.value().map(i64::from))
                .bind(digest.clone())
                .bind(signed.to_json());
        }
        insert.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The stored readings of `meter` just before and just after `seq`.
async fn neighbours(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    meter: &str,
    seq: u64,
) -> Result<(Option<CounterSnapshot>, Option<CounterSnapshot>), StoreError> {
    let snapshot = |r: sqlx::any::AnyRow| -> Result<CounterSnapshot, StoreError> {
        let unsigned = |i: usize| -> Result<Option<u64>, StoreError> {
            let v: Option<i64> = r.try_get(i)?;
            v.map(|v| {
                u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("reading value {v}")))
            })
            .transpose()
        };
        Ok(CounterSnapshot {
            seq: unsigned(0)?.unwrap_or(0),
            timestamp_ms: unsigned(1)?.unwrap_or(0),
            values: [unsigned(2)?, unsigned(3)?, unsigned(4)?, unsigned(5)?],
        })
    };
    let seq = checked_i64(seq, "seq")?;
    let mut found = [None, None];
    for (i, sql) in [
        "SELECT seq, timestamp_ms, import_wh, export_wh, battery_charge_wh, battery_discharge_wh \
         FROM readings WHERE meter_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT 1",
        "SELECT seq, timestamp_ms, import_wh, export_wh, battery_charge_wh, battery_discharge_wh \
         FROM readings WHERE meter_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT 1",
    ]
    .into_iter()
    .enumerate()
    {
        let row = sqlx::query(sql)
            .bind(meter)
            .bind(seq)
            .fetch_optional(&mut **tx)
            .await?;
        found[i] = row.map(snapshot).transpose()?;
    }
    Ok((found[0], found[1]))
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The latest write probe.
    probed: std::sync::Arc<tokio::sync::Mutex<Option<Probe>>>,
}

/// A write probe: when, and what it found.
type Probe = (std::time::Instant, Result<(), String>);

/// A u64 as the database stores it; readings beyond i64 are refused by the ingest checks
/// and money beyond it by the market, so this never clips what they let through.
fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A u64 for the database, or an error naming `what`.
pub fn checked_i64(v: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::OutOfRange(what))
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, true).await
    }

    /// Opens the database of an engine that has run before: refuses, creating nothing, if
    /// there is none at `url` (a command pointed at the wrong place must not start a new,
    /// empty community beside the real one).
    pub async fn open_existing(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, false).await
    }

    async fn open_with(url: &str, create: bool) -> Result<Self, StoreError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') && !url.contains(":memory:") => {
                if create {
                    format!("{url}?mode=rwc")
                } else {
                    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
                    if !std::path::Path::new(path).exists() {
                        return Err(StoreError::Missing(format!("no file {path}")));
                    }
                    format!("{url}?mode=rw")
                }
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 10 })
            // Design: a connection goes back to the pool only in a known state. A transaction
            // whose COMMIT or ROLLBACK failed (SQLite rolls back by itself on a full disk, and
            // sqlx's ROLLBACK then fails) leaves sqlx counting an open transaction, and every
            // later BEGIN on that connection failed with "attempted to call begin_with at
            // non-zero transaction depth" until a restart (issue 11, item 9). Such a
            // connection is closed instead, and so is a PostgreSQL session left read-only
            // (`default_transaction_read_only` is read when a session starts, so only a new
            // one sees the database writable again); the pool opens fresh ones as needed.
            .after_release(move |conn, _| {
                Box::pin(async move {
                    // On SQLite this waits for a rollback queued by a dropped transaction.
                    sqlx::Connection::ping(&mut *conn).await?;
                    if sqlx::Connection::is_in_transaction(&*conn) {
                        tracing::warn!(target: "store", "closing a connection left inside a failed transaction");
                        return Ok(false);
                    }
                    if backend == Backend::Postgres {
                        let read_only: String =
                            sqlx::query_scalar("SHOW default_transaction_read_only")
                            .fetch_one(&mut *conn)
                            .await?;
                        return Ok(read_only != "on");
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if !create
            && let Err(e) = sqlx::query("SELECT 1 FROM _sqlx_migrations LIMIT 1")
                .fetch_optional(&pool)
                .await
        {
            pool.close().await;
            return Err(StoreError::Missing(format!("no engine schema: {e}")));
        }
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Self {
            pool,
            backend,
            probed: Default::default(),
        })
    }

    /// Writes one row in a transaction of its own: whether storage takes writes now (a
    /// read-only file or database, a full disk, a lost connection fail here).
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let probe = async {
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO storage_probe (id, probed_ms) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET probed_ms = excluded.probed_ms",
            )
            .bind(i64_of(crate::pipeline::now_ms()))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<(), StoreError>(())
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "a one-row write took longer than {} s",
                PROBE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Whether storage takes writes, from a probe at most [`PROBE_FRESH`] old (`/healthz`
    /// asks often; one probe a second answers them all).
    pub async fn writable(&self) -> Result<(), String> {
        let mut probed = self.probed.lock().await;
        if let Some((at, result)) = probed.as_ref()
            && at.elapsed() < PROBE_FRESH
        {
            return result.clone();
        }
        let result = self.probe_write().await.map_err(|e| e.to_string());
        *probed = Some((std::time::Instant::now(), result.clone()));
        result
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads and then writes fails with "database is
    /// locked" when another connection wrote in between.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// The connection pool, for the market's queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The dialect.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Creates an account; `Conflict` if the name is taken.
    pub async fn create_account(
        &self,
        name: &str,
        password_hash: &str,
        role: &str,
        now_ms: u64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO accounts (name, password_hash, role, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(password_hash)
        .bind(role)
        .bind(i64_of(now_ms))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.get::<i64, _>(0))
            .ok_or_else(|| StoreError::Conflict(format!("account {name:?}")))
    }

    /// Every linked wallet: (account, address `0x…`).
    pub async fn linked_wallets(&self) -> Result<Vec<(i64, String)>, StoreError> {
        Ok(
            sqlx::query("SELECT account_id, address FROM linked_wallets ORDER BY account_id")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()?,
        )
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
            sqlx::query("SELECT account_id FROM linked_wallets WHERE address = $1")
                .bind(address)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
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
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives an existing account a role (`household` or `operator`); whether it exists.
    pub async fn set_role(&self, name: &str, role: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE accounts SET role = $1 WHERE name = $2")
            .bind(role)
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

    /// An account by login name.
    pub async fn account_by_name(&self, name: &str) -> Result<Option<AccountRow>, StoreError> {
        let row = sqlx::query("SELECT id, name, password_hash, role FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| AccountRow::of(&r)))
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
        kind: &str,
        now_ms: u64,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT token_hash, kind, label, created_ms, expires_ms FROM credentials \
             WHERE account_id = $1 AND kind = $2 AND expires_ms > $3 \
             ORDER BY created_ms DESC, token_hash",
        )
        .bind(account_id)
        .bind(kind)
        .bind(i64_of(now_ms))
        .fetch_all(&self.pool)
        .await?;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(rows
            .into_iter()
            .map(|r| CredentialRow {
                token_hash: r.get(0),
                kind: r.get(1),
                label: r.get(2),
                created_ms: r.get::<Option<i64>, _>(3).map(u),
                expires_ms: u(r.get(4)),
            })
            .collect())
    }

    /// Deletes the account's credential of `kind` whose hash starts with `hash_prefix`;
    /// whether there was one. Another account's credential is never touched.
    pub async fn delete_credential(
        &self,
        account_id: i64,
        kind: &str,
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
        .bind(kind)
        .bind(format!("{}%", hash_prefix.to_ascii_lowercase()))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a session by the hash of its secret (logout); whether there was one.
    pub async fn delete_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM credentials WHERE token_hash = $1 AND kind = 'session'")
                .bind(token_hash)
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
        let row = sqlx::query(
            "SELECT a.id, a.name, a.password_hash, a.role FROM credentials c \
             JOIN accounts a ON a.id = c.account_id \
             WHERE c.token_hash = $1 AND (c.expires_ms IS NULL OR c.expires_ms > $2)",
        )
        .bind(token_hash)
        .bind(i64_of(now_ms))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| AccountRow::of(&r)))
    }

    /// Registers a meter; `Conflict` if the id is taken.
    pub async fn register_meter(
        &self,
        meter_id: &str,
        account_id: i64,
        public_key: &str,
        key_id: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let key_taken = sqlx::query("SELECT 1 FROM meters WHERE public_key = $1")
            .bind(public_key)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if key_taken {
            return Err(StoreError::Conflict(
                "a meter with this public key (each meter needs a key of its own)".into(),
            ));
        }
        let done = sqlx::query(
            "INSERT INTO meters (meter_id, account_id, public_key, key_id, created_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(meter_id)
        .bind(account_id)
        .bind(public_key)
        .bind(key_id)
        .bind(i64_of(now_ms))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("meter {meter_id:?}")));
        }
        Ok(())
    }

    /// Records the operator's approval of a registered meter (or changes it). `false` if no
    /// such meter.
    pub async fn approve_meter(
        &self,
        meter_id: &str,
        approval: &Approval,
        by: i64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE meters SET approved_ms = $2, approved_by = $3, export_capacity_w = $4, \
             import_capacity_w = $5, manufacturer = $6, model = $7, serial = $8 WHERE meter_id = $1",
        )
        .bind(meter_id)
        .bind(checked_i64(now_ms, "time")?)
        .bind(by)
        .bind(i64::from(approval.export_capacity_w))
        .bind(i64::from(approval.import_capacity_w))
        .bind(&approval.device.manufacturer)
        .bind(&approval.device.model)
        .bind(&approval.device.serial)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a meter registration that was never approved and has no readings (the
    /// operator refused it). `false` if there is no such pending meter.
    pub async fn delete_pending_meter(&self, meter_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM trading_rules WHERE meter_id = $1")
            .bind(meter_id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "DELETE FROM meters WHERE meter_id = $1 AND approved_ms IS NULL \
             AND NOT EXISTS (SELECT 1 FROM readings WHERE readings.meter_id = meters.meter_id)",
        )
        .bind(meter_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many meters an account has registered (pending or approved).
    pub async fn meter_count(&self, account_id: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM meters WHERE account_id = $1")
            .bind(account_id)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Every account's name by id.
    pub async fn account_names(&self) -> Result<HashMap<i64, String>, StoreError> {
        let rows = sqlx::query("SELECT id, name FROM accounts")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Every registered meter, pending or approved (to load the key registry at start).
    pub async fn meters(&self) -> Result<Vec<MeterRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {METER_COLUMNS} FROM meters ORDER BY meter_id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(MeterRow::of).collect()
    }

    /// One registered meter.
    pub async fn meter(&self, meter_id: &str) -> Result<Option<MeterRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {METER_COLUMNS} FROM meters WHERE meter_id = $1"
        )))
        .bind(meter_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(MeterRow::of).transpose()
    }

    /// The meter's owner, if registered.
    pub async fn meter_owner(&self, meter_id: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT account_id FROM meters WHERE meter_id = $1")
            .bind(meter_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Stores a batch of verified readings in one transaction, checking duplicates and the
    /// step from each meter's neighbouring readings (time and counters forward, no faster than
    /// its capacity) against what is stored, and keeping each meter's gaps (sequence numbers
    /// missing between its stored readings, [`crate::gaps`]) in the same transaction. Returns
    /// one outcome per reading. `last` caches each meter's latest stored reading across
    /// batches; it changes only when the transaction commits.
    pub async fn store_readings(
        &self,
        batch: &[Accepted],
        received_ms: u64,
        last: &mut HashMap<String, CounterSnapshot>,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut tx = self.begin().await?;
        let mut latest: HashMap<String, CounterSnapshot> = HashMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        // Accepted readings are inserted many rows per statement: one round trip to the
        // database thread per chunk instead of per reading.
        let mut pending: Vec<(&SignedReading, String)> = Vec::new();
        for accepted in batch {
            let signed = &accepted.signed;
            let r = &signed.reading;
            let meter = r.meter_id.as_str();
            let this = CounterSnapshot::of(signed);
            let digest = hex::encode(signed.digest());
            let cached = latest.get(meter).or_else(|| last.get(meter)).copied();
            let refused = |e: (Rejection, String)| Stored::Implausible(e.0, e.1);
            // Where the reading goes: its stored neighbours, and whether it is the highest.
            let placed = match cached {
                // The common case: the next reading of a meter whose last reading is known.
                Some(prev) if r.seq > prev.seq => check_step(&prev, &this, accepted.capacity)
                    .map(|()| (Some(prev.seq), None, true))
                    .map_err(refused),
                _ => {
                    // This check reads what is stored: store what is pending first.
                    insert_readings(&mut tx, &pending, received_ms).await?;
                    pending.clear();
                    let existing =
                        sqlx::query("SELECT digest FROM readings WHERE meter_id = $1 AND seq = $2")
                            .bind(meter)
                            .bind(checked_i64(r.seq, "seq")?)
                            .fetch_optional(&mut *tx)
                            .await?;
                    match existing {
                        Some(row) if row.try_get::<String, _>(0)? == digest => {
                            Err(Stored::Duplicate)
                        }
                        Some(_) => Err(Stored::Conflicting),
                        None => {
                            let (before, after) = neighbours(&mut tx, meter, r.seq).await?;
                            match before {
                                Some(p) => check_step(&p, &this, accepted.capacity),
                                None => Ok(()),
                            }
                            .and_then(|()| match after {
                                Some(n) => check_step(&this, &n, accepted.capacity),
                                None => Ok(()),
                            })
                            .map(|()| (before.map(|b| b.seq), after.map(|a| a.seq), false))
                            .map_err(refused)
                        }
                    }
                }
            };
            let (before, after, highest) = match placed {
                Ok(placed) => placed,
                Err(outcome) => {
                    outcomes.push(outcome);
                    continue;
                }
            };
            let next_in_line = highest && before.is_some_and(|b| b.checked_add(1) == Some(r.seq));
            let filled = !next_in_line
                && crate::gaps::record(&mut tx, meter, r.seq, before, after, highest, received_ms)
                    .await?;
            pending.push((signed, digest));
            // Only the meter's highest stored reading is cached: a gap filled below it (the
            // cache empty after a restart) must not become the reading the next one follows.
            if after.is_none() {
                latest.insert(meter.to_owned(), this);
            }
            outcomes.push(if filled {
                Stored::Recovered
            } else {
                Stored::Inserted
            });
        }
        insert_readings(&mut tx, &pending, received_ms).await?;
        tx.commit().await?;
        last.extend(latest);
        Ok(outcomes)
    }

    /// Sets (replaces) a meter's trading rule.
    pub async fn set_rule(&self, rule: &TradingRule, now_ms: u64) -> Result<(), StoreError> {
        let opt = |v: Option<u64>| v.map(i64_of);
        sqlx::query(
            "INSERT INTO trading_rules (meter_id, account_id, sell_at_least, buy_at_most, keep_battery_above, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (meter_id) DO UPDATE SET \
             account_id = excluded.account_id, sell_at_least = excluded.sell_at_least, \
             buy_at_most = excluded.buy_at_most, keep_battery_above = excluded.keep_battery_above, \
             updated_ms = excluded.updated_ms",
        )
        .bind(rule.meter_id.as_str())
        .bind(rule.account_id)
        .bind(opt(rule.sell_at_least))
        .bind(opt(rule.buy_at_most))
        .bind(rule.keep_battery_above_bp.map(i64::from))
        .bind(i64_of(now_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a meter's trading rule; whether there was one.
    pub async fn delete_rule(&self, meter_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM trading_rules WHERE meter_id = $1")
            .bind(meter_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every trading rule.
    pub async fn rules(&self) -> Result<Vec<TradingRule>, StoreError> {
        let rows = sqlx::query(
            "SELECT meter_id, account_id, sell_at_least, buy_at_most, keep_battery_above \
             FROM trading_rules ORDER BY meter_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let u = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        Ok(rows
            .into_iter()
            .map(|r| TradingRule {
                meter_id: r.get(0),
                account_id: r.get(1),
                sell_at_least: u(r.get(2)),
                buy_at_most: u(r.get(3)),
                keep_battery_above_bp: r
                    .get::<Option<i64>, _>(4)
                    .and_then(|v| u16::try_from(v).ok()),
            })
            .collect())
    }

    /// Whether the meter already has an order in the slot's log (rules place one per slot).
    pub async fn has_order(&self, meter_id: &str, slot: u64) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "SELECT 1 FROM order_events WHERE slot = $1 AND meter_id = $2 AND kind = 'submit' LIMIT 1",
        )
        .bind(i64_of(slot))
        .bind(meter_id)
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    /// The battery state of charge of the meter's latest reading that carries one, basis points.
    pub async fn latest_soc(&self, meter_id: &str) -> Result<Option<u16>, StoreError> {
        let row = sqlx::query(
            "SELECT soc_bp FROM readings WHERE meter_id = $1 AND soc_bp IS NOT NULL ORDER BY seq DESC LIMIT 1",
        )
        .bind(meter_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| u16::try_from(r.get::<i64, _>(0)).ok()))
    }

    /// Average grid power (W, positive = import) over the meter's last `window_ms` of signed
    /// counters: the net imported energy between the newest reading and the oldest one in the
    /// window, over the time between them. This is what the meter will be settled on (and it
    /// holds in accelerated time, where counters run faster than the clock). With fewer than
    /// two such readings, the average of the last `fallback` power samples; `None` without
    /// either.
    pub async fn recent_grid_power(
        &self,
        meter_id: &str,
        window_ms: u64,
        fallback: u32,
    ) -> Result<Option<i64>, StoreError> {
        let newest = sqlx::query(
            "SELECT timestamp_ms, import_wh, export_wh FROM readings WHERE meter_id = $1 \
             AND import_wh IS NOT NULL AND export_wh IS NOT NULL ORDER BY seq DESC LIMIT 1",
        )
        .bind(meter_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(newest) = newest {
            let t1: i64 = newest.get(0);
            let oldest = sqlx::query(
                "SELECT timestamp_ms, import_wh, export_wh FROM readings WHERE meter_id = $1 \
                 AND import_wh IS NOT NULL AND export_wh IS NOT NULL AND timestamp_ms >= $2 \
                 ORDER BY timestamp_ms ASC LIMIT 1",
            )
            .bind(meter_id)
            .bind(t1.saturating_sub(i64_of(window_ms)))
            .fetch_one(&self.pool)
            .await?;
            let t0: i64 = oldest.get(0);
            if t1 > t0 {
                let net = |r: &sqlx::any::AnyRow| {
                    i128::from(r.get::<i64, _>(1)) - i128::from(r.get::<i64, _>(2))
                };
                // Wh over ms to W: × 3 600 000.
                let watts = (net(&newest) - net(&oldest)) * 3_600_000 / i128::from(t1 - t0);
                return Ok(Some(i64::try_from(watts).unwrap_or(0)));
            }
        }
        let rows = sqlx::query(
            "SELECT power_w FROM readings WHERE meter_id = $1 AND power_w IS NOT NULL \
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(meter_id)
        .bind(i64::from(fallback))
        .fetch_all(&self.pool)
        .await?;
        let count = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        if count == 0 {
            return Ok(None);
        }
        let sum: i64 = rows.iter().map(|r| r.get::<i64, _>(0)).sum();
        Ok(Some(sum / count))
    }

    /// Records rejected messages, each with when it was received (the audit trail of bad
    /// input).
    pub async fn record_rejections(&self, rejected: &[(u64, Rejected)]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for (received_ms, r) in rejected {
            sqlx::query(
                "INSERT INTO rejections (received_ms, meter_id, reason, detail) VALUES ($1, $2, $3, $4)",
            )
            .bind(i64_of(*received_ms))
            // A topic's meter id and a detail are bounded here: both can come from junk.
            .bind(r.meter.as_deref().map(|m| truncated(m, 64)))
            .bind(r.reason.as_str())
            .bind(truncated(&r.detail, 512))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes rejection records received before `cutoff_ms`; returns how many.
    pub async fn delete_rejections_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM rejections WHERE received_ms < $1")
            .bind(checked_i64(cutoff_ms, "time")?)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Stored readings of a meter with a sequence number above `after`, oldest first.
    pub async fn readings(
        &self,
        meter_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT envelope FROM readings WHERE meter_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(meter_id)
        .bind(i64_of(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Counts of stored readings and rejections by reason (for tests and audits).
    pub async fn rejection_reasons(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY reason")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    /// The two dialects' migrations are one schema: they may differ only in how an
    /// auto-incrementing key is spelled. A change made to one and not the other fails here.
    #[test]
    fn postgres_migrations_are_the_sqlite_ones_with_bigserial_keys() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let names = |d: &str| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir.join(d))
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        let sqlite = names("sqlite");
        assert!(!sqlite.is_empty());
        assert_eq!(
            sqlite,
            names("postgres"),
            "the same migrations in both dialects"
        );
        for name in sqlite {
            let read =
                |d: &str| std::fs::read_to_string(dir.join(d).join(&name)).unwrap_or_default();
            let normalise = |text: String| {
                text.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "<serial key>")
                    .replace("BIGSERIAL PRIMARY KEY", "<serial key>")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            assert_eq!(
                normalise(read("sqlite")),
                normalise(read("postgres")),
                "{name} differs between the dialects beyond the key type"
            );
        }
    }
}
