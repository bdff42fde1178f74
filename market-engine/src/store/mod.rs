//! The engine's database: SQLite by default (a file, WAL, `synchronous = FULL` so that
//! whatever the engine acknowledged survives a crash or a power cut), PostgreSQL by URL — the
//! same code through sqlx's `Any` driver, with one migration set per dialect.
//!
//! Design: this module owns every SQL statement the engine makes. The rest of the engine calls
//! methods named for what they do in the domain and never sees a pool, a row or a column
//! index, so a schema change is made in one place and a stored value is checked once, on its
//! way out: a negative id, counter or slot is a [`StoreError::Corrupt`] naming its column,
//! never a value clipped into range. Statements are split by table family, each file an
//! `impl Store` (and, for what must commit together, an `impl Transaction`):
//!
//! - [`accounts`]: accounts, their credentials and linked wallets;
//! - [`meters`]: meters, their trading rules and MQTT credentials;
//! - [`readings`]: readings, rejected input and the counter positions settlement moves;
//! - [`gaps`]: gaps in a meter's sequence numbers, recorded as readings are stored;
//! - [`orders`]: the order log, trades, slots and market settings;
//! - [`money`]: the ledger, funding, withdrawals on chain and the chain follower's cursor;
//! - [`settlement`]: the settlement outbox, disputed meters and staking proofs;
//! - [`history`]: the read-only queries behind the history and report API.

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

pub mod accounts;
pub mod gaps;
pub mod history;
pub mod meters;
pub mod money;
pub mod orders;
pub mod readings;
pub mod settlement;

pub use accounts::{AccountRow, CredentialKind, CredentialRow, Role};
pub use meters::{MeterRow, TradingRule};
pub use orders::SlotStatus;
pub use readings::{Position, SettledMeter, Stored};

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
fn storage_failure(e: &sqlx::Error) -> bool {
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

/// A stored integer that must not be negative (an id, a slot, a counter, a time), or
/// [`StoreError::Corrupt`] naming its column.
fn unsigned(v: i64, column: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column} {v} is negative")))
}

/// [`unsigned`] for a column that may be NULL.
fn unsigned_opt(v: Option<i64>, column: &str) -> Result<Option<u64>, StoreError> {
    v.map(|v| unsigned(v, column)).transpose()
}

/// The `VALUES` list of a multi-row statement: `rows` tuples of `width` `$n` placeholders,
/// numbered from `$1` — the form SQLite and PostgreSQL both take (sqlx's `Any` query builder
/// writes `?`, which PostgreSQL does not). The text depends only on `rows` and `width`.
fn values_placeholders(rows: usize, width: usize) -> String {
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

/// Bound values per multi-row statement. Design: small on purpose. sqlx's SQLite driver finds
/// each `$n` by name among the statement's parameters, a linear search, so binding costs grow
/// with the square of the parameters per statement: 4 000 per statement made settling 10 000
/// meters spend 60 % of its time in `sqlite3_bind_parameter_name` (perf); at about a hundred
/// that cost vanishes and the round trips saved stay.
const MAX_BINDS: usize = 120;

/// A value bound into a multi-row statement.
#[derive(Clone)]
enum Bind {
    Int(i64),
    Text(String),
}

/// A write transaction: what the engine must change atomically, as methods named for what
/// they record (defined beside the tables they write). Dropped without
/// [`Transaction::commit`], it rolls back.
///
/// Design: the engine holds no raw connection. Where it checks something in memory between
/// two statements of one transaction (funds that must stay in range before a settlement
/// commits), it holds this and calls the statements it needs.
pub struct Transaction(sqlx::Transaction<'static, sqlx::Any>);

impl Transaction {
    /// Commits everything written in the transaction.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.0.commit().await?;
        Ok(())
    }

    /// Runs `head VALUES (..), (..) tail` over `rows`, in statements of at most
    /// [`MAX_BINDS`] bound values: one round trip per chunk instead of one per row.
    async fn insert_rows<const WIDTH: usize>(
        &mut self,
        head: &str,
        tail: &str,
        rows: Vec<[Bind; WIDTH]>,
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks((MAX_BINDS / WIDTH.max(1)).max(1)) {
            let sql = format!(
                "{head} VALUES {}{tail}",
                values_placeholders(chunk.len(), WIDTH)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for row in chunk {
                for v in row {
                    q = match v {
                        Bind::Int(i) => q.bind(*i),
                        Bind::Text(t) => q.bind(t.as_str()),
                    };
                }
            }
            q.execute(&mut *self.0).await?;
        }
        Ok(())
    }
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
            .execute(&mut *tx.0)
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
    /// Starts a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads and then writes fails with "database is
    /// locked" when another connection wrote in between.
    pub async fn begin(&self) -> Result<Transaction, StoreError> {
        Ok(Transaction(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        }))
    }

    /// The connection pool, for tests only: they look into tables the engine has no query
    /// for, or hold connections to exhaust the pool. The engine itself goes through the
    /// methods of this module.
    #[doc(hidden)]
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The dialect.
    pub fn backend(&self) -> Backend {
        self.backend
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
