//! Readings (the meters' signed counters), the audit trail of rejected input, and each meter's
//! settled position — the reading its last settlement ended at, from which the next one starts.
//! Storing a reading also records what it does to its meter's gaps ([`super::gaps`]), in the
//! same transaction.

use std::collections::HashMap;

use gridshare_core::reading::SignedReading;

use super::{
    Bind, Store, StoreError, Transaction, checked_i64, i64_of, truncated, unsigned, unsigned_opt,
    values_placeholders,
};
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
}

impl Transaction {
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
