//! Readings missing between a meter's stored readings, and the requests that bring them back
//! (issue 11, item 6): "no reading lost" holds end to end, not only as far as the broker.
//!
//! An agent deletes nothing it signed until the broker acknowledged it, but a broker that
//! restarts without persistence while the engine is away loses what it had queued. The engine
//! sees this as a gap in a meter's sequence numbers: the sequence numbers it has stored for the
//! meter, from the lowest to the highest, miss some. Each gap is a row of `reading_gaps`,
//! kept in the transaction that stores the readings ([`plan`], applied by
//! [`Store::store_readings`]), so the table is always
//! exactly the missing sequence numbers. A background task ([`run`]) asks the meter's agent
//! for them on the meter's `resend` topic ([`gridshare_core::mqtt::ResendRequest`]); the agent
//! keeps acknowledged readings for its `resend_retention_s` and publishes the very same signed
//! envelopes again, which the ingest stores like any other reading, closing the gap.
//!
//! Design: everything is bounded. One request names at most
//! [`gridshare_core::mqtt::MAX_RESEND_READINGS`] readings in at most
//! [`gridshare_core::mqtt::MAX_RESEND_RANGES`] ranges; at most [`METERS_PER_TICK`] meters are
//! asked per tick; each gap is asked again only after a pause that doubles up to
//! [`MAX_PAUSE_MS`]; and a gap still open [`crate::config::IngestConfig::gap_give_up_after_s`]
//! after it was found is marked unfillable (the agent no longer keeps those readings), counted
//! and listed for the operator (`GET /api/v1/operator/gaps`), never asked for again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gridshare_core::mqtt::{MAX_RESEND_RANGES, MAX_RESEND_READINGS, MeterTopics, ResendRequest};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::watch;

use crate::store::gaps::DueGap;
use crate::store::{Store, StoreError};

/// How often the task looks for gaps to ask for.
pub const TICK: Duration = Duration::from_secs(2);

/// Meters asked per tick, at most: a street that lost everything is asked in rounds.
pub const METERS_PER_TICK: usize = 50;

/// The pause after the first request for a gap, ms; doubled after each further request.
pub const FIRST_PAUSE_MS: u64 = 10_000;

/// The longest pause between two requests for one gap, ms.
pub const MAX_PAUSE_MS: u64 = 600_000;

/// While an agent's answers keep arriving, the rest of a gap is not asked for again until they
/// have stopped this long, ms.
pub const ANSWER_SETTLE_MS: u64 = 2_000;

/// An inclusive range of missing sequence numbers.
pub type SeqRange = (u64, u64);

/// What storing one reading does to its meter's gaps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GapUpdate {
    /// The gap the reading falls into, by its first sequence number, to be replaced by `add`.
    pub fills: Option<u64>,
    /// Gaps to record: the pieces left of the gap it fell into, or a new gap it opened.
    pub add: Vec<SeqRange>,
}

/// What storing reading `seq` changes, given the stored gap that contains it (if any) and the
/// meter's stored neighbours: the highest stored sequence number below it and the lowest
/// above it. Pure, so the bookkeeping is property-tested apart from the database.
pub fn plan(
    seq: u64,
    containing: Option<SeqRange>,
    before: Option<u64>,
    after: Option<u64>,
) -> GapUpdate {
    let piece = |a: u64, b: u64| (a <= b).then_some((a, b));
    if let Some((first, last)) = containing {
        return GapUpdate {
            fills: Some(first),
            add: [
                seq.checked_sub(1).and_then(|below| piece(first, below)),
                seq.checked_add(1).and_then(|above| piece(above, last)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        };
    }
    // Not inside a recorded gap: what lies between the reading and its neighbours is new (a
    // reading beyond the highest stored opens a gap below it; one stored before gaps were
    // recorded may find unrecorded ones either side).
    let below = before.and_then(|b| piece(b.checked_add(1)?, seq.checked_sub(1)?));
    let above = after.and_then(|a| piece(seq.checked_add(1)?, a.checked_sub(1)?));
    GapUpdate {
        fills: None,
        add: [below, above].into_iter().flatten().collect(),
    }
}

/// Counters of the requests, for `/metrics`.
#[derive(Debug, Default)]
pub struct GapMetrics {
    /// Requests published to agents.
    pub requests: AtomicU64,
    /// Readings those requests asked for.
    pub readings_requested: AtomicU64,
    /// Gaps given up as unfillable.
    pub given_up: AtomicU64,
}

/// The MQTT connection requests go out on: the ingest's own, set once it exists (so a request
/// needs no login of its own and goes wherever readings come from).
#[derive(Debug, Default)]
pub struct ResendLink(std::sync::Mutex<Option<AsyncClient>>);

impl ResendLink {
    /// Requests go out through `client` from now on.
    pub fn set(&self, client: AsyncClient) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(client);
    }

    fn client(&self) -> Option<AsyncClient> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One request to send: the meter, what it asks for, and the gaps it covers (by first
/// sequence number, with the requests each has had before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRequest {
    /// The meter.
    pub meter_id: String,
    /// The request.
    pub request: ResendRequest,
    /// The gaps it asks for (first sequence number, requests before this one).
    pub gaps: Vec<(u64, u64)>,
}

/// Groups due gaps (oldest request first) into at most `max_meters` requests, one per meter,
/// each within the bounds of a [`ResendRequest`]: the lowest gaps of the meter first, the last
/// one cut at the reading limit (its rest is asked for next time).
pub fn plan_requests(due: &[DueGap], max_meters: usize) -> Vec<PlannedRequest> {
    let mut order: Vec<&str> = Vec::new();
    let mut by_meter: BTreeMap<&str, Vec<&DueGap>> = BTreeMap::new();
    for gap in due {
        let entry = by_meter.entry(gap.meter_id.as_str()).or_default();
        if entry.is_empty() {
            order.push(gap.meter_id.as_str());
        }
        entry.push(gap);
    }
    order
        .into_iter()
        .take(max_meters)
        .filter_map(|meter| {
            let mut gaps = by_meter.remove(meter).unwrap_or_default();
            gaps.sort_by_key(|g| g.range.0);
            let mut ranges = Vec::new();
            let mut covered = Vec::new();
            let mut budget = MAX_RESEND_READINGS;
            for g in gaps.into_iter().take(MAX_RESEND_RANGES) {
                if budget == 0 {
                    break;
                }
                let (first, last) = g.range;
                let last = last.min(first.saturating_add(budget - 1));
                budget -= last - first + 1;
                ranges.push((first, last));
                covered.push((first, g.requests));
            }
            let request = ResendRequest::new(ranges).ok()?;
            Some(PlannedRequest {
                meter_id: meter.to_owned(),
                request,
                gaps: covered,
            })
        })
        .collect()
}

/// The pause before asking again for a gap asked for `requests` times, ms.
pub fn pause_ms(requests: u64) -> u64 {
    let doublings = u32::try_from(requests.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    FIRST_PAUSE_MS
        .saturating_mul(1u64 << doublings)
        .min(MAX_PAUSE_MS)
}

/// Where requests go and when gaps are given up.
#[derive(Debug, Clone)]
pub struct Requester {
    /// The database.
    pub store: Store,
    /// The connection requests go out on.
    pub link: Arc<ResendLink>,
    /// Topic prefix.
    pub prefix: String,
    /// Community.
    pub community: String,
    /// A gap still open this long after it was found is given up, ms.
    pub give_up_after_ms: u64,
    /// Counters (the ingest's, which hold [`GapMetrics`]).
    pub metrics: Arc<crate::ingest::IngestMetrics>,
}

impl Requester {
    /// Gives up what is too old, then asks for what is due. Returns the requests sent.
    pub async fn tick(&self, now_ms: u64) -> Result<usize, StoreError> {
        let now = crate::store::checked_i64(now_ms, "time")?;
        let cutoff = now.saturating_sub(i64::try_from(self.give_up_after_ms).unwrap_or(i64::MAX));
        let given_up = self.store.give_up_gaps(now, cutoff).await?;
        if given_up > 0 {
            self.metrics
                .gaps
                .given_up
                .fetch_add(given_up, Ordering::Relaxed);
            tracing::warn!(target: "ingest", gaps = given_up, "readings missing longer than the agents keep them: given up (GET /api/v1/operator/gaps)");
        }
        let Some(client) = self.link.client() else {
            return Ok(0);
        };
        // The meters whose gaps are due longest, then each one's lowest due gaps: a meter with
        // thousands of gaps takes one request a tick like any other.
        let mut due = Vec::new();
        for meter in self
            .store
            .meters_with_due_gaps(now, METERS_PER_TICK)
            .await?
        {
            due.extend(self.store.due_gaps(&meter, now, MAX_RESEND_RANGES).await?);
        }
        let mut sent = 0;
        for planned in plan_requests(&due, METERS_PER_TICK) {
            let topic = MeterTopics::new(&self.prefix, &self.community, &planned.meter_id).resend;
            // Not waiting on a full request queue: what is not sent now is due again next tick.
            if client
                .try_publish(topic, QoS::AtLeastOnce, false, planned.request.to_json())
                .is_err()
            {
                break;
            }
            sent += 1;
            self.metrics.gaps.requests.fetch_add(1, Ordering::Relaxed);
            self.metrics.gaps.readings_requested.fetch_add(
                planned.request.ranges.iter().map(|(a, b)| b - a + 1).sum(),
                Ordering::Relaxed,
            );
            self.store
                .record_gap_requests(&planned.meter_id, &planned.gaps, now)
                .await?;
            tracing::info!(target: "ingest", meter = %planned.meter_id, ranges = ?planned.request.ranges, "asked the agent to send missing readings again");
        }
        Ok(sent)
    }
}

/// Asks for missing readings every [`TICK`] until `stop` turns true.
pub async fn run(requester: Requester, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = requester.tick(crate::pipeline::now_ms()).await {
            tracing::warn!(target: "ingest", "asking for missing readings: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_reading_above_the_highest_opens_a_gap_below_it() {
        assert_eq!(
            plan(10, None, Some(4), None),
            GapUpdate {
                fills: None,
                add: vec![(5, 9)]
            }
        );
        assert_eq!(plan(5, None, Some(4), None), GapUpdate::default());
        assert_eq!(plan(1, None, None, None), GapUpdate::default());
    }

    #[test]
    fn a_reading_inside_a_gap_splits_it() {
        assert_eq!(
            plan(7, Some((5, 9)), Some(4), Some(10)),
            GapUpdate {
                fills: Some(5),
                add: vec![(5, 6), (8, 9)]
            }
        );
        assert_eq!(plan(5, Some((5, 5)), Some(4), Some(6)).add, vec![]);
        assert_eq!(plan(5, Some((5, 9)), Some(4), Some(10)).add, vec![(6, 9)]);
        assert_eq!(plan(9, Some((5, 9)), Some(4), Some(10)).add, vec![(5, 8)]);
        // The extremes of u64 neither wrap nor panic.
        assert_eq!(plan(0, Some((0, 0)), None, Some(1)).add, vec![]);
        assert_eq!(
            plan(u64::MAX, None, Some(u64::MAX - 2), None).add,
            vec![(u64::MAX - 1, u64::MAX - 1)]
        );
    }

    #[test]
    fn requests_stay_within_their_bounds_one_per_meter() {
        let gap = |m: &str, a, b| DueGap {
            meter_id: m.into(),
            range: (a, b),
            requests: 0,
        };
        // A huge gap is asked for in pieces of the reading limit.
        let planned = plan_requests(&[gap("m", 1, 1 << 62)], 10);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].request.ranges, vec![(1, MAX_RESEND_READINGS)]);
        // Many small gaps of one meter: one request with the lowest ranges.
        let many: Vec<DueGap> = (0..40)
            .rev()
            .map(|i| gap("m", i * 10, i * 10 + 1))
            .collect();
        let planned = plan_requests(&many, 10);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].request.ranges.len(), MAX_RESEND_RANGES);
        assert_eq!(planned[0].request.ranges[0], (0, 1));
        // Many meters: at most the given number per tick, oldest request first.
        let meters: Vec<DueGap> = (0..100).map(|i| gap(&format!("m{i}"), 1, 2)).collect();
        let planned = plan_requests(&meters, METERS_PER_TICK);
        assert_eq!(planned.len(), METERS_PER_TICK);
        assert_eq!(planned[0].meter_id, "m0");
    }

    #[test]
    fn pauses_double_up_to_the_longest() {
        assert_eq!(pause_ms(1), FIRST_PAUSE_MS);
        assert_eq!(pause_ms(2), 2 * FIRST_PAUSE_MS);
        assert_eq!(pause_ms(10), MAX_PAUSE_MS);
        assert_eq!(pause_ms(u64::MAX), MAX_PAUSE_MS);
    }

    /// The stored gaps, kept by [`plan`] alone, against the truth.
    fn replay(order: &[u64]) -> (BTreeSet<u64>, BTreeMap<u64, u64>) {
        let mut stored = BTreeSet::new();
        let mut gaps: BTreeMap<u64, u64> = BTreeMap::new();
        for &seq in order {
            if !stored.insert(seq) {
                continue;
            }
            let before = stored.range(..seq).next_back().copied();
            let after = stored.range(seq + 1..).next().copied();
            let containing = gaps
                .range(..=seq)
                .next_back()
                .filter(|(_, last)| **last >= seq)
                .map(|(f, l)| (*f, *l));
            let update = plan(seq, containing, before, after);
            if let Some(first) = update.fills {
                gaps.remove(&first);
            }
            for (a, b) in update.add {
                gaps.insert(a, b);
            }
        }
        (stored, gaps)
    }

    proptest! {
        /// Whatever the order readings arrive in (outages, re-sends, duplicates), the gaps are
        /// exactly the sequence numbers missing between the lowest and the highest stored,
        /// as disjoint ranges.
        #[test]
        fn gaps_are_exactly_what_is_missing(
            order in proptest::collection::vec(0u64..200, 1..300)
        ) {
            let (stored, gaps) = replay(&order);
            let (lo, hi) = (*stored.first().unwrap(), *stored.last().unwrap());
            let missing: BTreeSet<u64> = (lo..=hi).filter(|s| !stored.contains(s)).collect();
            let recorded: BTreeSet<u64> = gaps.iter().flat_map(|(a, b)| *a..=*b).collect();
            prop_assert_eq!(&recorded, &missing);
            let count: u64 = gaps.iter().map(|(a, b)| b - a + 1).sum();
            prop_assert_eq!(count, missing.len() as u64, "ranges do not overlap");
        }

        /// Every planned request is one the agent accepts, and asks only for missing readings.
        #[test]
        fn planned_requests_are_valid(
            ranges in proptest::collection::vec((0u64..10_000, 0u64..3_000, 0usize..5), 1..200)
        ) {
            let mut due = Vec::new();
            let mut taken: BTreeMap<usize, u64> = BTreeMap::new();
            for (start, len, meter) in ranges {
                // Disjoint, ascending ranges per meter, as the table holds them.
                let from = taken.get(&meter).map_or(start, |end| end + 2 + start % 7);
                let to = from + len;
                taken.insert(meter, to);
                due.push(DueGap { meter_id: format!("m{meter}"), range: (from, to), requests: 0 });
            }
            for p in plan_requests(&due, METERS_PER_TICK) {
                let parsed = ResendRequest::parse(p.request.to_json().as_bytes()).unwrap();
                for (a, b) in parsed.ranges {
                    prop_assert!(due.iter().any(|g| g.meter_id == p.meter_id
                        && g.range.0 == a && b <= g.range.1));
                }
            }
        }
    }
}
