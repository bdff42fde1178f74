//! Readings (the meters' signed counters), the audit trail of rejected input, the gaps in a
//! meter's sequence numbers ([`crate::gaps`]), and each meter's settled position — the reading
//! its last settlement ended at, from which the next one starts.

use std::collections::HashMap;

use gridshare_core::reading::SignedReading;

use super::{
    Bind, Store, StoreError, Transaction, checked_i64, i64_of, truncated, unsigned, unsigned_opt,
    values_placeholders,
};
use crate::gaps::{DueGap, Gap, GapTotals, SeqRange};
use crate::ingest::{Accepted, CounterSnapshot, Rejected, Rejection, check_step};

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

/// A signed reading's counters, as settlement uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Lifetime import, Wh.
    pub import_wh: u64,
    /// Lifetime export, Wh.
    pub export_wh: u64,
    /// Device time, ms since the epoch.
    pub timestamp_ms: i64,
    /// SHA-256 (hex) of the signed reading.
    pub digest: String,
}

/// One meter settled in a slot: from which reading to which, and its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledMeter {
    /// The meter.
    pub meter_id: String,
    /// Its owner.
    pub account_id: i64,
    /// Where its previous settlement ended (or its first reading's counters).
    pub from: Position,
    /// The reading this settlement ends at.
    pub to: Position,
}

/// A row of counters by meter: `meter_positions`, or a reading chosen for a slot boundary.
#[derive(sqlx::FromRow)]
struct StoredPosition {
    meter_id: String,
    import_wh: i64,
    export_wh: i64,
    timestamp_ms: i64,
    digest: String,
}

/// Counters by meter (the first row of a meter wins); a row whose counters are out of range
/// is kept as the reason, for settlement to dispute that meter instead of failing the slot.
fn positions_by_meter(rows: Vec<StoredPosition>) -> HashMap<String, Result<Position, String>> {
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let counter =
            |v: i64| u64::try_from(v).map_err(|_| format!("stored counter {v} is negative"));
        let position = counter(r.import_wh).and_then(|import_wh| {
            Ok(Position {
                import_wh,
                export_wh: counter(r.export_wh)?,
                timestamp_ms: r.timestamp_ms,
                digest: r.digest,
            })
        });
        out.entry(r.meter_id).or_insert(position);
    }
    out
}

/// A reading's time and grid counters.
#[derive(sqlx::FromRow)]
struct GridSample {
    timestamp_ms: i64,
    import_wh: i64,
    export_wh: i64,
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
                "unfillable"
            } else {
                "requesting"
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

/// Rejected input counted by reason.
#[derive(sqlx::FromRow)]
struct ReasonCount {
    reason: String,
    rejected: i64,
}

/// Rows per multi-row INSERT (15 parameters each, well below every backend's limit).
const INSERT_CHUNK: usize = 64;

async fn insert_readings(
    tx: &mut Transaction,
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
        insert.execute(&mut *tx.0).await?;
    }
    Ok(())
}

/// A stored reading's place and counters, as the checks between readings read them.
#[derive(sqlx::FromRow)]
struct StoredSnapshot {
    seq: i64,
    timestamp_ms: i64,
    import_wh: Option<i64>,
    export_wh: Option<i64>,
    battery_charge_wh: Option<i64>,
    battery_discharge_wh: Option<i64>,
}

impl TryFrom<StoredSnapshot> for CounterSnapshot {
    type Error = StoreError;

    fn try_from(r: StoredSnapshot) -> Result<Self, StoreError> {
        Ok(Self {
            seq: unsigned(r.seq, "readings.seq")?,
            timestamp_ms: unsigned(r.timestamp_ms, "readings.timestamp_ms")?,
            values: [
                unsigned_opt(r.import_wh, "readings.import_wh")?,
                unsigned_opt(r.export_wh, "readings.export_wh")?,
                unsigned_opt(r.battery_charge_wh, "readings.battery_charge_wh")?,
                unsigned_opt(r.battery_discharge_wh, "readings.battery_discharge_wh")?,
            ],
        })
    }
}

/// The stored readings of `meter` just before and just after `seq`.
async fn neighbours(
    tx: &mut Transaction,
    meter: &str,
    seq: u64,
) -> Result<(Option<CounterSnapshot>, Option<CounterSnapshot>), StoreError> {
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
        let row: Option<StoredSnapshot> = sqlx::query_as(sql)
            .bind(meter)
            .bind(seq)
            .fetch_optional(&mut *tx.0)
            .await?;
        found[i] = row.map(CounterSnapshot::try_from).transpose()?;
    }
    Ok((found[0], found[1]))
}

impl Store {
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
                    let existing: Option<String> = sqlx::query_scalar(
                        "SELECT digest FROM readings WHERE meter_id = $1 AND seq = $2",
                    )
                    .bind(meter)
                    .bind(checked_i64(r.seq, "seq")?)
                    .fetch_optional(&mut *tx.0)
                    .await?;
                    match existing {
                        Some(stored) if stored == digest => Err(Stored::Duplicate),
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
                && tx
                    .record_gaps(meter, r.seq, before, after, highest, received_ms)
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

    /// The battery state of charge of the meter's latest reading that carries one, basis points.
    pub async fn latest_soc(&self, meter_id: &str) -> Result<Option<u16>, StoreError> {
        let soc: Option<i64> = sqlx::query_scalar(
            "SELECT soc_bp FROM readings WHERE meter_id = $1 AND soc_bp IS NOT NULL ORDER BY seq DESC LIMIT 1",
        )
        .bind(meter_id)
        .fetch_optional(&self.pool)
        .await?;
        soc.map(|v| {
            u16::try_from(v)
                .map_err(|_| StoreError::Corrupt(format!("readings.soc_bp {v} is out of range")))
        })
        .transpose()
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
        let newest: Option<GridSample> = sqlx::query_as(
            "SELECT timestamp_ms, import_wh, export_wh FROM readings WHERE meter_id = $1 \
             AND import_wh IS NOT NULL AND export_wh IS NOT NULL ORDER BY seq DESC LIMIT 1",
        )
        .bind(meter_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(newest) = newest {
            let t1 = newest.timestamp_ms;
            let oldest: GridSample = sqlx::query_as(
                "SELECT timestamp_ms, import_wh, export_wh FROM readings WHERE meter_id = $1 \
                 AND import_wh IS NOT NULL AND export_wh IS NOT NULL AND timestamp_ms >= $2 \
                 ORDER BY timestamp_ms ASC LIMIT 1",
            )
            .bind(meter_id)
            .bind(t1.saturating_sub(i64_of(window_ms)))
            .fetch_one(&self.pool)
            .await?;
            let t0 = oldest.timestamp_ms;
            if t1 > t0 {
                let net = |r: &GridSample| i128::from(r.import_wh) - i128::from(r.export_wh);
                // Wh over ms to W: × 3 600 000.
                let watts = (net(&newest) - net(&oldest)) * 3_600_000 / i128::from(t1 - t0);
                return Ok(Some(i64::try_from(watts).unwrap_or(0)));
            }
        }
        let powers: Vec<i64> = sqlx::query_scalar(
            "SELECT power_w FROM readings WHERE meter_id = $1 AND power_w IS NOT NULL \
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(meter_id)
        .bind(i64::from(fallback))
        .fetch_all(&self.pool)
        .await?;
        let count = i64::try_from(powers.len()).unwrap_or(i64::MAX);
        if count == 0 {
            return Ok(None);
        }
        let sum: i64 = powers.iter().sum();
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
            .execute(&mut *tx.0)
            .await?;
        }
        tx.commit().await
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
        Ok(sqlx::query_scalar(
            "SELECT envelope FROM readings WHERE meter_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(meter_id)
        .bind(i64_of(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The signed envelopes of a meter's readings taken in `[from_ms, to_ms)`, at most
    /// `limit`: the newest of them when `newest`, else the oldest; newest or oldest first
    /// accordingly.
    pub async fn readings_taken_between(
        &self,
        meter_id: &str,
        from_ms: u64,
        to_ms: u64,
        limit: i64,
        newest: bool,
    ) -> Result<Vec<String>, StoreError> {
        let sql = if newest {
            "SELECT envelope FROM readings WHERE meter_id = $1 AND timestamp_ms >= $2 \
             AND timestamp_ms < $3 ORDER BY timestamp_ms DESC, seq DESC LIMIT $4"
        } else {
            "SELECT envelope FROM readings WHERE meter_id = $1 AND timestamp_ms >= $2 \
             AND timestamp_ms < $3 ORDER BY timestamp_ms, seq LIMIT $4"
        };
        Ok(sqlx::query_scalar(sql)
            .bind(meter_id)
            .bind(checked_i64(from_ms, "timestamp")?)
            .bind(checked_i64(to_ms, "timestamp")?)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Counts of rejections by reason (for tests and audits).
    pub async fn rejection_reasons(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<ReasonCount> = sqlx::query_as(
            "SELECT reason, COUNT(*) AS rejected FROM rejections GROUP BY reason ORDER BY reason",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.reason, r.rejected)).collect())
    }

    /// When the earliest stored reading was taken, ms since the epoch.
    pub async fn earliest_reading_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT MIN(timestamp_ms) FROM readings")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Approved meters that sent a reading during `[start_s, end_s)` but none yet at or after
    /// `end_s`: their readings across the slot's end are late, not missing.
    pub async fn late_meters(&self, start_s: i64, end_s: i64) -> Result<u64, StoreError> {
        let late: i64 = sqlx::query_scalar(
            // Per meter through the (meter_id, timestamp_ms) index: two seeks each, however
            // long the history of readings.
            "SELECT CAST(COUNT(*) AS BIGINT) FROM meters m WHERE m.approved_ms IS NOT NULL \
             AND EXISTS (SELECT 1 FROM readings r WHERE r.meter_id = m.meter_id \
                         AND r.timestamp_ms >= $1 AND r.timestamp_ms < $2) \
             AND NOT EXISTS (SELECT 1 FROM readings l WHERE l.meter_id = m.meter_id \
                             AND l.timestamp_ms >= $2)",
        )
        .bind(start_s.saturating_mul(1000))
        .bind(end_s.saturating_mul(1000))
        .fetch_one(&self.pool)
        .await?;
        unsigned(late, "COUNT(late meters)")
    }

    /// Each meter's settled position (where its last settlement ended), by meter.
    pub async fn settled_positions(
        &self,
    ) -> Result<HashMap<String, Result<Position, String>>, StoreError> {
        let rows: Vec<StoredPosition> = sqlx::query_as(
            "SELECT meter_id, import_wh, export_wh, timestamp_ms, digest FROM meter_positions",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(positions_by_meter(rows))
    }

    /// Each approved meter's latest reading with both counters at or before `at_s` (only meters
    /// without a settled position, when `unpositioned`), by meter. Ties on the timestamp go
    /// to the lowest digest, so the choice does not depend on the database.
    pub async fn counters_at(
        &self,
        at_s: i64,
        unpositioned: bool,
    ) -> Result<HashMap<String, Result<Position, String>>, StoreError> {
        let only = if unpositioned {
            "AND NOT EXISTS (SELECT 1 FROM meter_positions p WHERE p.meter_id = m.meter_id)"
        } else {
            ""
        };
        // The scalar subquery walks the (meter_id, timestamp_ms) index backwards from `at_s` and
        // stops at the first reading with both counters: its cost does not grow with history.
        // `CROSS JOIN` makes SQLite drive the join from the meters (one index seek each); with a
        // plain join it scanned every stored reading and ran the subquery for each.
        let rows: Vec<StoredPosition> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT r.meter_id, r.import_wh, r.export_wh, r.timestamp_ms, r.digest \
             FROM meters m CROSS JOIN readings r \
             WHERE r.meter_id = m.meter_id AND r.timestamp_ms = \
               (SELECT l.timestamp_ms FROM readings l WHERE l.meter_id = m.meter_id \
                AND l.timestamp_ms <= $1 AND l.import_wh IS NOT NULL AND l.export_wh IS NOT NULL \
                ORDER BY l.timestamp_ms DESC LIMIT 1) \
             AND m.approved_ms IS NOT NULL AND r.import_wh IS NOT NULL AND r.export_wh IS NOT NULL {only} \
             ORDER BY r.meter_id, r.digest"
        )))
        .bind(at_s.saturating_mul(1000))
        .fetch_all(&self.pool)
        .await?;
        Ok(positions_by_meter(rows))
    }

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
    async fn record_gaps(
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

    /// Moves each settled meter's position to the reading its slot was settled to, and
    /// records what the slot settled for it.
    pub async fn record_positions(
        &mut self,
        slot: u64,
        settled: &[SettledMeter],
    ) -> Result<(), StoreError> {
        let wh = |v: u64| checked_i64(v, "a meter's counter (Wh)").map(Bind::Int);
        let slot = Bind::Int(checked_i64(slot, "slot")?);
        let mut positions = Vec::with_capacity(settled.len());
        let mut deliveries = Vec::with_capacity(settled.len());
        for m in settled {
            positions.push([
                Bind::Text(m.meter_id.clone()),
                wh(m.to.import_wh)?,
                wh(m.to.export_wh)?,
                Bind::Int(m.to.timestamp_ms),
                Bind::Text(m.to.digest.clone()),
                slot.clone(),
            ]);
            deliveries.push([
                slot.clone(),
                Bind::Text(m.meter_id.clone()),
                Bind::Int(m.account_id),
                wh(m.to.import_wh.saturating_sub(m.from.import_wh))?,
                wh(m.to.export_wh.saturating_sub(m.from.export_wh))?,
                Bind::Int(m.from.timestamp_ms),
                Bind::Int(m.to.timestamp_ms),
            ]);
        }
        self.insert_rows(
            "INSERT INTO meter_positions (meter_id, import_wh, export_wh, timestamp_ms, digest, slot)",
            " ON CONFLICT (meter_id) DO UPDATE SET \
             import_wh = excluded.import_wh, export_wh = excluded.export_wh, \
             timestamp_ms = excluded.timestamp_ms, digest = excluded.digest, slot = excluded.slot",
            positions,
        )
        .await?;
        self.insert_rows(
            "INSERT INTO slot_deliveries (slot, meter_id, account_id, import_wh, export_wh, from_ms, to_ms)",
            "",
            deliveries,
        )
        .await
    }

    /// Records the digests of the readings a slot's settlement used.
    pub async fn record_slot_readings(
        &mut self,
        slot: u64,
        digests: &[String],
    ) -> Result<(), StoreError> {
        let slot = Bind::Int(checked_i64(slot, "slot")?);
        self.insert_rows(
            "INSERT INTO slot_readings (slot, digest)",
            "",
            digests
                .iter()
                .map(|d| [slot.clone(), Bind::Text(d.clone())])
                .collect(),
        )
        .await
    }
}
