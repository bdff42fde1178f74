//! The gaps in meters' sequence numbers (`reading_gaps`): what the engine still asks the agents
//! for and what it gave up ([`crate::gaps`] plans the requests), kept in the transaction that
//! stores each reading, so the table is always exactly the missing sequence numbers.

use super::{Store, StoreError, Transaction, checked_i64, unsigned, unsigned_opt};
use crate::gaps::SeqRange;

/// Whether a gap is still asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GapStatus {
    /// The engine asks the meter's agent again, with growing pauses.
    Requesting,
    /// Given up: the agent keeps readings no longer than that; they are lost.
    Unfillable,
}

/// One gap as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// The meter.
    pub meter_id: String,
    /// First missing sequence number.
    pub first_seq: u64,
    /// Last missing sequence number.
    pub last_seq: u64,
    /// Readings missing (`last_seq - first_seq + 1`).
    pub missing: u64,
    /// When the engine found it, ms since the epoch.
    pub detected_ms: u64,
    /// Requests sent to the meter's agent for it so far.
    pub requests: u64,
    /// When it was last asked for, ms since the epoch.
    pub last_request_ms: Option<u64>,
    /// Whether it is still asked for.
    pub status: GapStatus,
    /// When it was given up, ms since the epoch.
    pub unfillable_ms: Option<u64>,
}

/// Totals over every meter's gaps, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GapTotals {
    /// Gaps still asked for.
    pub open_gaps: u64,
    /// Readings missing in them.
    pub open_missing: u64,
    /// Meters with at least one gap still asked for.
    pub meters_with_open_gaps: u64,
    /// Gaps given up.
    pub unfillable_gaps: u64,
    /// Readings lost in them.
    pub unfillable_missing: u64,
    /// Meters with at least one gap given up.
    pub meters_with_unfillable_gaps: u64,
}

/// A due gap as the request planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueGap {
    /// The meter.
    pub meter_id: String,
    /// The gap's range.
    pub range: SeqRange,
    /// Requests sent for it so far.
    pub requests: u64,
}

/// A row of `reading_gaps` as stored.
#[derive(sqlx::FromRow)]
struct StoredGap {
    meter_id: String,
    first_seq: i64,
    last_seq: i64,
    detected_ms: i64,
    requests: i64,
    last_request_ms: Option<i64>,
    next_request_ms: i64,
    unfillable_ms: Option<i64>,
}

impl StoredGap {
    fn range(&self) -> Result<SeqRange, StoreError> {
        Ok((
            unsigned(self.first_seq, "reading_gaps.first_seq")?,
            unsigned(self.last_seq, "reading_gaps.last_seq")?,
        ))
    }
}

impl TryFrom<StoredGap> for Gap {
    type Error = StoreError;

    fn try_from(r: StoredGap) -> Result<Self, StoreError> {
        let (first, last) = r.range()?;
        let unfillable_ms = unsigned_opt(r.unfillable_ms, "reading_gaps.unfillable_ms")?;
        Ok(Gap {
            first_seq: first,
            last_seq: last,
            missing: last.saturating_sub(first).saturating_add(1),
            detected_ms: unsigned(r.detected_ms, "reading_gaps.detected_ms")?,
            requests: unsigned(r.requests, "reading_gaps.requests")?,
            last_request_ms: unsigned_opt(r.last_request_ms, "reading_gaps.last_request_ms")?,
            status: if unfillable_ms.is_some() {
                GapStatus::Unfillable
            } else {
                GapStatus::Requesting
            },
            unfillable_ms,
            meter_id: r.meter_id,
        })
    }
}

/// Gap totals of one kind (open, or given up).
#[derive(sqlx::FromRow)]
struct StoredGapTotals {
    open: i64,
    gaps: i64,
    missing: i64,
    meters: i64,
}

/// A due gap's range and the requests it has had.
#[derive(sqlx::FromRow)]
struct StoredDueGap {
    first_seq: i64,
    last_seq: i64,
    requests: i64,
}

impl Store {
    /// The gaps of every meter, or of one, lowest first; at most `limit`.
    pub async fn gaps(&self, meter: Option<&str>, limit: u32) -> Result<Vec<Gap>, StoreError> {
        let rows: Vec<StoredGap> = sqlx::query_as(
            "SELECT meter_id, first_seq, last_seq, detected_ms, requests, last_request_ms, \
             next_request_ms, unfillable_ms FROM reading_gaps WHERE ($1 = '' OR meter_id = $1) \
             ORDER BY meter_id, first_seq LIMIT $2",
        )
        .bind(meter.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Gap::try_from).collect()
    }

    /// Totals over every meter's gaps, open and given up.
    pub async fn gap_totals(&self) -> Result<GapTotals, StoreError> {
        // The open/given-up flag as an integer: a bare `IS NULL` is an integer in SQLite and a
        // boolean in PostgreSQL.
        let rows: Vec<StoredGapTotals> = sqlx::query_as(
            "SELECT CAST(CASE WHEN unfillable_ms IS NULL THEN 1 ELSE 0 END AS BIGINT) AS open, \
             CAST(COUNT(*) AS BIGINT) AS gaps, \
             CAST(COALESCE(SUM(last_seq - first_seq + 1), 0) AS BIGINT) AS missing, \
             CAST(COUNT(DISTINCT meter_id) AS BIGINT) AS meters \
             FROM reading_gaps GROUP BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut t = GapTotals::default();
        for r in rows {
            let (gaps, missing, meters) = (
                unsigned(r.gaps, "COUNT(reading_gaps)")?,
                unsigned(r.missing, "SUM(reading_gaps)")?,
                unsigned(r.meters, "COUNT(reading_gaps.meter_id)")?,
            );
            if r.open != 0 {
                (t.open_gaps, t.open_missing, t.meters_with_open_gaps) = (gaps, missing, meters);
            } else {
                (
                    t.unfillable_gaps,
                    t.unfillable_missing,
                    t.meters_with_unfillable_gaps,
                ) = (gaps, missing, meters);
            }
        }
        Ok(t)
    }

    /// Marks every open gap found before `found_before_ms` unfillable as of `now_ms`; how many.
    pub async fn give_up_gaps(&self, now_ms: i64, found_before_ms: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE reading_gaps SET unfillable_ms = $1 \
             WHERE unfillable_ms IS NULL AND detected_ms < $2",
        )
        .bind(now_ms)
        .bind(found_before_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// The meters with open gaps due to be asked for at `now_ms`, those due longest first; at
    /// most `limit`.
    pub async fn meters_with_due_gaps(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT meter_id, MIN(next_request_ms) AS due FROM reading_gaps \
             WHERE unfillable_ms IS NULL AND next_request_ms <= $1 \
             GROUP BY meter_id ORDER BY due, meter_id LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?)
    }

    /// A meter's open gaps due to be asked for at `now_ms`, lowest first; at most `limit`.
    pub async fn due_gaps(
        &self,
        meter_id: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<DueGap>, StoreError> {
        let rows: Vec<StoredDueGap> = sqlx::query_as(
            "SELECT first_seq, last_seq, requests FROM reading_gaps \
             WHERE meter_id = $1 AND unfillable_ms IS NULL AND next_request_ms <= $2 \
             ORDER BY first_seq LIMIT $3",
        )
        .bind(meter_id)
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(DueGap {
                    meter_id: meter_id.to_owned(),
                    range: (
                        unsigned(r.first_seq, "reading_gaps.first_seq")?,
                        unsigned(r.last_seq, "reading_gaps.last_seq")?,
                    ),
                    requests: unsigned(r.requests, "reading_gaps.requests")?,
                })
            })
            .collect()
    }

    /// Records, in one transaction, that a meter's gaps (by first sequence number, with the
    /// requests each had) were asked for at `now_ms`: each has had one request more and is
    /// not due again before its pause ([`crate::gaps::pause_ms`]) has passed.
    pub async fn record_gap_requests(
        &self,
        meter_id: &str,
        gaps: &[(u64, u64)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for (first, requests) in gaps {
            let requests = requests.saturating_add(1);
            let pause = i64::try_from(crate::gaps::pause_ms(requests)).unwrap_or(i64::MAX);
            sqlx::query(
                "UPDATE reading_gaps SET requests = $1, last_request_ms = $2, \
                 next_request_ms = $3 WHERE meter_id = $4 AND first_seq = $5",
            )
            .bind(checked_i64(requests, "requests")?)
            .bind(now_ms)
            .bind(now_ms.saturating_add(pause))
            .bind(meter_id)
            .bind(checked_i64(*first, "seq")?)
            .execute(&mut *tx.0)
            .await?;
        }
        tx.commit().await
    }
}

impl Transaction {
    /// Records what storing reading `seq` of `meter` (received at `now_ms`) does to the meter's
    /// gaps ([`crate::gaps::plan`]), in the transaction that stores it. `before` and `after` are
    /// the meter's stored neighbours; `known_highest` says the caller knows `seq` is above
    /// every stored reading (then no stored gap can contain it and none is looked up). Returns
    /// whether it filled a gap.
    pub(super) async fn record_gaps(
        &mut self,
        meter: &str,
        seq: u64,
        before: Option<u64>,
        after: Option<u64>,
        known_highest: bool,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let s = checked_i64(seq, "seq")?;
        let containing: Option<StoredGap> = if known_highest {
            None
        } else {
            sqlx::query_as(
                "SELECT meter_id, first_seq, last_seq, detected_ms, requests, last_request_ms, \
                 next_request_ms, unfillable_ms FROM reading_gaps \
                 WHERE meter_id = $1 AND first_seq <= $2 AND last_seq >= $2",
            )
            .bind(meter)
            .bind(s)
            .fetch_optional(&mut *self.0)
            .await?
        };
        let range = containing.as_ref().map(StoredGap::range).transpose()?;
        let update = crate::gaps::plan(seq, range, before, after);
        if update.add.is_empty() && update.fills.is_none() {
            return Ok(false);
        }
        let now = checked_i64(now_ms, "time")?;
        // A new gap is asked for at once; the pieces of a gap keep its history, but the part
        // above an answer that is still arriving waits for the rest of the answer first.
        let (detected, requests, last_request, mut next_request, unfillable) = match &containing {
            Some(r) => (
                r.detected_ms,
                r.requests,
                r.last_request_ms,
                r.next_request_ms,
                r.unfillable_ms,
            ),
            None => (now, 0, None, now, None),
        };
        if let Some(first) = update.fills {
            sqlx::query("DELETE FROM reading_gaps WHERE meter_id = $1 AND first_seq = $2")
                .bind(meter)
                .bind(checked_i64(first, "seq")?)
                .execute(&mut *self.0)
                .await?;
        }
        for (first, last) in &update.add {
            if update.fills.is_some() && *first > seq {
                next_request = next_request.min(
                    now.saturating_add(i64::try_from(crate::gaps::ANSWER_SETTLE_MS).unwrap_or(0)),
                );
            }
            sqlx::query(
                "INSERT INTO reading_gaps (meter_id, first_seq, last_seq, detected_ms, requests, \
                 last_request_ms, next_request_ms, unfillable_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(meter)
            .bind(checked_i64(*first, "seq")?)
            .bind(checked_i64(*last, "seq")?)
            .bind(detected)
            .bind(requests)
            .bind(last_request)
            .bind(next_request)
            .bind(unfillable)
            .execute(&mut *self.0)
            .await?;
        }
        Ok(update.fills.is_some())
    }
}
