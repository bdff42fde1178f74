//! The on-disk outbox: every signed reading is committed to a local SQLite file before it is
//! published, and kept until the broker acknowledged it (MQTT PUBACK) and `resend_retention_s`
//! has passed since: a broker restarted without persistence loses what it had queued for an
//! absent market engine, and the engine then asks for those readings again
//! ([`gridshare_core::mqtt::ResendRequest`]). The same transaction that stores a reading
//! advances the persisted sequence number and the last good counters, so after a crash or a
//! power cut the agent resumes with no gap and no duplicate sequence number.
//!
//! Design: SQLite in WAL mode with `synchronous = FULL` — a reading acknowledged as stored is
//! on disk, even if the Raspberry Pi loses power the next millisecond.

use std::path::Path;
use std::str::FromStr;

use gridshare_core::reading::{MeterId, SignedReading};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::normalise::LastGood;

/// Why the outbox could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database failed.
    #[error("outbox database {path}: {source}")]
    Database {
        /// The file.
        path: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// The schema could not be created or upgraded.
    #[error("outbox database {path}: migration failed: {source}")]
    Migration {
        /// The file.
        path: String,
        /// The cause.
        source: sqlx::migrate::MigrateError,
    },
    /// The file belongs to another meter: using it would mix two sequence numbers.
    #[error(
        "outbox {path} belongs to meter {found:?}, not {expected:?}: use another data_dir per meter"
    )]
    WrongMeter {
        /// The file.
        path: String,
        /// The meter configured now.
        expected: String,
        /// The meter recorded in the file.
        found: String,
    },
    /// A stored value does not fit its type (a corrupted or hand-edited file).
    #[error("outbox {path}: stored value out of range in {what}")]
    Corrupt {
        /// The file.
        path: String,
        /// Which value.
        what: &'static str,
    },
}

/// What the agent resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentState {
    /// The sequence number of the next reading.
    pub next_seq: u64,
    /// The last good lifetime counters.
    pub last_good: LastGood,
}

/// One reading waiting for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its sequence number.
    pub seq: u64,
    /// The JSON envelope, as it is published.
    pub payload: String,
}

/// The outbox of one meter. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: SqlitePool,
    path: String,
}

fn to_i64(v: u64) -> i64 {
    // Sequence numbers and Wh counters stay far below 2^63 in any real deployment; saturate
    // rather than wrap if a device ever claims otherwise.
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Outbox {
    /// Opens (or creates) the outbox file for `meter`.
    pub async fn open(path: &Path, meter: &MeterId) -> Result<(Self, AgentState), OutboxError> {
        let shown = path.display().to_string();
        let db = |source| OutboxError::Database {
            path: shown.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{shown}"))
            .map_err(db)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(5))
            // A small page cache: the agent runs on small boxes (RSS goal 15 MB).
            .pragma("cache_size", "-256");
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(db)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| OutboxError::Migration {
                path: shown.clone(),
                source,
            })?;
        sqlx::query(
            "INSERT INTO agent_state (id, meter_id, next_seq) VALUES (1, ?, 1) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(meter.as_str())
        .execute(&pool)
        .await
        .map_err(db)?;
        let row = sqlx::query(
            "SELECT meter_id, next_seq, last_import_wh, last_export_wh, last_charge_wh, \
             last_discharge_wh, last_pv_wh FROM agent_state WHERE id = 1",
        )
        .fetch_one(&pool)
        .await
        .map_err(db)?;
        let found: String = row.get(0);
        if found != meter.as_str() {
            return Err(OutboxError::WrongMeter {
                path: shown,
                expected: meter.to_string(),
                found,
            });
        }
        let corrupt = |what| OutboxError::Corrupt {
            path: shown.clone(),
            what,
        };
        let counter = |i: usize, what| -> Result<Option<u64>, OutboxError> {
            row.get::<Option<i64>, _>(i)
                .map(|v| u64::try_from(v).map_err(|_| corrupt(what)))
                .transpose()
        };
        let state = AgentState {
            next_seq: u64::try_from(row.get::<i64, _>(1)).map_err(|_| corrupt("next_seq"))?,
            last_good: LastGood {
                import_wh: counter(2, "last_import_wh")?,
                export_wh: counter(3, "last_export_wh")?,
                battery_charge_wh: counter(4, "last_charge_wh")?,
                battery_discharge_wh: counter(5, "last_discharge_wh")?,
                pv_wh: counter(6, "last_pv_wh")?,
            },
        };
        Ok((Self { pool, path: shown }, state))
    }

    fn err(&self, source: sqlx::Error) -> OutboxError {
        OutboxError::Database {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores a signed reading and advances the sequence number and last good counters, in one
    /// transaction. When this returns, the reading survives a crash.
    pub async fn append(
        &self,
        signed: &SignedReading,
        last_good: &LastGood,
    ) -> Result<(), OutboxError> {
        let seq = to_i64(signed.reading.seq);
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::query("INSERT INTO outbox (seq, payload, created_ms) VALUES (?, ?, ?)")
            .bind(seq)
            .bind(signed.to_json())
            .bind(to_i64(signed.reading.timestamp_ms))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        sqlx::query(
            "UPDATE agent_state SET next_seq = ?, last_import_wh = ?, last_export_wh = ?, \
             last_charge_wh = ?, last_discharge_wh = ?, last_pv_wh = ? WHERE id = 1",
        )
        .bind(seq.saturating_add(1))
        .bind(last_good.import_wh.map(to_i64))
        .bind(last_good.export_wh.map(to_i64))
        .bind(last_good.battery_charge_wh.map(to_i64))
        .bind(last_good.battery_discharge_wh.map(to_i64))
        .bind(last_good.pv_wh.map(to_i64))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Up to `limit` readings not yet acknowledged with a sequence number above `after`,
    /// oldest first.
    pub async fn pending(&self, after: u64, limit: u32) -> Result<Vec<Pending>, OutboxError> {
        let rows = sqlx::query(
            "SELECT seq, payload FROM outbox WHERE seq > ? AND acked_ms IS NULL \
             ORDER BY seq LIMIT ?",
        )
        .bind(to_i64(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        self.rows(rows)
    }

    fn rows(&self, rows: Vec<sqlx::sqlite::SqliteRow>) -> Result<Vec<Pending>, OutboxError> {
        rows.into_iter()
            .map(|row| {
                Ok(Pending {
                    seq: u64::try_from(row.get::<i64, _>(0)).map_err(|_| OutboxError::Corrupt {
                        path: self.path.clone(),
                        what: "outbox.seq",
                    })?,
                    payload: row.get(1),
                })
            })
            .collect()
    }

    /// Up to `limit` acknowledged readings still kept, with a sequence number in
    /// `first..=last`, oldest first: what a resend request can be answered with.
    pub async fn retained(
        &self,
        first: u64,
        last: u64,
        limit: u32,
    ) -> Result<Vec<Pending>, OutboxError> {
        let rows = sqlx::query(
            "SELECT seq, payload FROM outbox WHERE seq >= ? AND seq <= ? \
             AND acked_ms IS NOT NULL ORDER BY seq LIMIT ?",
        )
        .bind(to_i64(first))
        .bind(to_i64(last))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        self.rows(rows)
    }

    /// Marks a reading the broker acknowledged at `now_ms` (the first acknowledgement counts:
    /// a reading sent again at the engine's request keeps its retention).
    pub async fn acknowledge(&self, seq: u64, now_ms: u64) -> Result<(), OutboxError> {
        sqlx::query("UPDATE outbox SET acked_ms = COALESCE(acked_ms, ?) WHERE seq = ?")
            .bind(to_i64(now_ms))
            .bind(to_i64(seq))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Deletes the readings acknowledged before `before_ms`; returns how many.
    pub async fn prune(&self, before_ms: u64) -> Result<u64, OutboxError> {
        let done = sqlx::query("DELETE FROM outbox WHERE acked_ms IS NOT NULL AND acked_ms < ?")
            .bind(to_i64(before_ms))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    /// Number of acknowledged readings kept for resend requests.
    pub async fn retained_len(&self) -> Result<u64, OutboxError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE acked_ms IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Number of readings waiting for the broker's acknowledgement.
    pub async fn len(&self) -> Result<u64, OutboxError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE acked_ms IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Whether nothing is waiting.
    pub async fn is_empty(&self) -> Result<bool, OutboxError> {
        Ok(self.len().await? == 0)
    }

    /// Closes the database cleanly (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
