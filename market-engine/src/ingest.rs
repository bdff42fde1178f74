//! Ingest of signed readings: every message on `<prefix>/<community>/meters/+/reading` is
//! checked — size, envelope, topic, a meter the operator approved and its key, signature, the
//! device identity it was installed with, clock skew, sequence, and lifetime counters that
//! move forward together with time and no faster than the meter's rated capacity — and either
//! accepted or rejected with a [`Rejection`] that is recorded and counted. Nothing a publisher
//! sends can crash the engine.
//!
//! Design: the checks that need no database ([`Checker::check`]) run on the blocking pool,
//! because signature verification is CPU work (≈ 60 µs); what they accept goes to one writer
//! that stores readings in batches (one transaction per batch), which is what makes thousands
//! of readings per second possible on SQLite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use gridshare_core::reading::{
    DeviceIdentity, MAX_ENVELOPE_LEN, PublicKey, ReadingError, SignedReading,
};

/// Why a message was not accepted as a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Larger than any real envelope.
    Oversize,
    /// Not a parseable envelope (JSON syntax, missing or unknown fields, wrong types).
    Malformed,
    /// A field out of its range (meter id, soc, value/status mismatch).
    InvalidField,
    /// The envelope's meter id differs from the topic's.
    TopicMismatch,
    /// No meter of that id is registered.
    UnknownMeter,
    /// The meter is registered but the community operator has not approved it (yet).
    NotApproved,
    /// Signed by the meter's key, but for another device than the one the operator approved.
    WrongDevice,
    /// Signed by another key than the meter's registered one.
    WrongKey,
    /// The signature does not match the fields.
    BadSignature,
    /// Stamped too far in the future.
    FromTheFuture,
    /// Older than the accepted age.
    TooOld,
    /// A lifetime counter lower than in an earlier reading of the same meter.
    CounterRollback,
    /// The same (meter, sequence number) with different content: evidence of a forged or
    /// faulty meter.
    ConflictingDuplicate,
    /// A counter moved faster than the meter's rated capacity allows over the time between
    /// two readings.
    ExceedsCapacity,
    /// A later reading (higher sequence number) stamped earlier than an earlier one.
    ClockRollback,
}

impl Rejection {
    /// Every reason, for metrics.
    pub const ALL: [Rejection; 15] = [
        Self::Oversize,
        Self::Malformed,
        Self::InvalidField,
        Self::TopicMismatch,
        Self::UnknownMeter,
        Self::NotApproved,
        Self::WrongDevice,
        Self::WrongKey,
        Self::BadSignature,
        Self::FromTheFuture,
        Self::TooOld,
        Self::CounterRollback,
        Self::ConflictingDuplicate,
        Self::ExceedsCapacity,
        Self::ClockRollback,
    ];

    /// Stable name (metrics label, database).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::Malformed => "malformed",
            Self::InvalidField => "invalid_field",
            Self::TopicMismatch => "topic_mismatch",
            Self::UnknownMeter => "unknown_meter",
            Self::NotApproved => "not_approved",
            Self::WrongDevice => "wrong_device",
            Self::WrongKey => "wrong_key",
            Self::BadSignature => "bad_signature",
            Self::FromTheFuture => "from_the_future",
            Self::TooOld => "too_old",
            Self::CounterRollback => "counter_rollback",
            Self::ConflictingDuplicate => "conflicting_duplicate",
            Self::ExceedsCapacity => "exceeds_capacity",
            Self::ClockRollback => "clock_rollback",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// A rejection with the detail a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The reason.
    pub reason: Rejection,
    /// The meter named by the topic, if any.
    pub meter: Option<String>,
    /// What exactly was wrong.
    pub detail: String,
}

/// Counters of the ingest, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Readings accepted and stored.
    pub accepted: AtomicU64,
    /// Exact duplicates dropped (an agent re-sending after a lost acknowledgement).
    pub duplicates: AtomicU64,
    /// Readings stored that filled a gap in their meter's sequence (most of them sent again
    /// at the engine's request).
    pub recovered: AtomicU64,
    /// Requests for missing readings.
    pub gaps: crate::gaps::GapMetrics,
    /// Rejections waiting to be recorded while storage fails (kept, within a bound, until it
    /// works again).
    pub rejections_backlog: AtomicU64,
    rejected: [AtomicU64; Rejection::ALL.len()],
    unrecorded: [AtomicU64; Rejection::ALL.len()],
}

impl IngestMetrics {
    /// Counts a rejection.
    pub fn reject(&self, reason: Rejection) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Rejections so far for `reason`.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Counts a rejection that was not recorded in the database (sampling under a flood).
    pub fn unrecorded(&self, reason: Rejection) -> u64 {
        self.unrecorded[reason.index()].load(Ordering::Relaxed)
    }

    /// Counts `n` rejections for `reason` left out of the database.
    pub fn skip_recording(&self, reason: Rejection, n: u64) {
        self.unrecorded[reason.index()].fetch_add(n, Ordering::Relaxed);
    }
}

/// What the community operator approved a meter with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Rated export power, W: the most the meter can be credited per hour is this many Wh.
    pub export_capacity_w: u32,
    /// Rated import power, W.
    pub import_capacity_w: u32,
    /// The device the meter was installed with; readings from another device are refused.
    pub device: DeviceIdentity,
}

/// A meter's rated capacity, as the counter checks use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Rated export, W.
    pub export_w: u32,
    /// Rated import, W.
    pub import_w: u32,
}

impl Approval {
    /// The capacity part.
    pub fn capacity(&self) -> Capacity {
        Capacity {
            export_w: self.export_capacity_w,
            import_w: self.import_capacity_w,
        }
    }
}

/// The margin on a meter's rated capacity, percent: inverters briefly exceed their rating and
/// meters' clocks drift a little, so a counter may move up to 110 % of capacity × time.
pub const CAPACITY_MARGIN_PERCENT: u64 = 10;

/// What a counter may move beyond capacity × time between two readings, Wh: one step of a
/// coarse device counter (Eastron, Huawei and others count in 0.01 kWh). The settlement bound
/// per slot ([`energy_bound_wh`] over the slot) caps what such steps could add up to.
pub const COUNTER_RESOLUTION_WH: u64 = 10;

/// The most energy a meter rated `capacity_w` can move in `duration_ms`, with
/// [`CAPACITY_MARGIN_PERCENT`] and [`COUNTER_RESOLUTION_WH`], rounded up.
pub fn energy_bound_wh(capacity_w: u32, duration_ms: u64) -> u64 {
    let scaled = u128::from(capacity_w)
        * u128::from(duration_ms)
        * u128::from(100 + CAPACITY_MARGIN_PERCENT);
    let wh = scaled.div_ceil(100 * 3_600_000);
    // A bound beyond u64 is no bound at all; u64::MAX says exactly that.
    u64::try_from(wh)
        .unwrap_or(u64::MAX)
        .saturating_add(COUNTER_RESOLUTION_WH)
}

/// What the checker knows of a registered meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredMeter {
    /// The meter's public key.
    pub key: PublicKey,
    /// Its owner.
    pub account: i64,
    /// `None` while the operator has not approved it.
    pub approval: Option<Approval>,
}

/// Registered meters, shared between the API (which registers and approves) and the ingest.
#[derive(Debug, Default, Clone)]
pub struct KeyRegistry {
    meters: Arc<RwLock<HashMap<String, Arc<RegisteredMeter>>>>,
}

impl KeyRegistry {
    /// Registers or replaces a meter.
    pub fn insert(&self, meter: &str, registered: RegisteredMeter) {
        // The map holds plain data; a panic elsewhere cannot leave it half-written.
        self.meters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(meter.to_owned(), Arc::new(registered));
    }

    /// Forgets a meter (a pending registration the operator refused).
    pub fn remove(&self, meter: &str) {
        self.meters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(meter);
    }

    /// A registered meter.
    pub fn get(&self, meter: &str) -> Option<Arc<RegisteredMeter>> {
        self.meters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(meter)
            .cloned()
    }

    /// The owner of a registered meter.
    pub fn owner(&self, meter: &str) -> Option<i64> {
        self.get(meter).map(|m| m.account)
    }
}

/// A reading that passed the checks that need no database, with what the counter checks need.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The reading.
    pub signed: SignedReading,
    /// Its meter's rated capacity.
    pub capacity: Capacity,
    /// Its meter's owner.
    pub account: i64,
}

/// A reading's position and lifetime counters, for the checks between readings of one meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Sequence number.
    pub seq: u64,
    /// Device time, ms since the epoch.
    pub timestamp_ms: u64,
    /// Import, export, battery charge, battery discharge, Wh (`None` where not reported).
    pub values: [Option<u64>; 4],
}

impl CounterSnapshot {
    /// Of a reading.
    pub fn of(r: &SignedReading) -> Self {
        let r = &r.reading;
        Self {
            seq: r.seq,
            timestamp_ms: r.timestamp_ms,
            values: [
                r.import_wh.ok_value(),
                r.export_wh.ok_value(),
                r.battery_charge_wh.ok_value(),
                r.battery_discharge_wh.ok_value(),
            ],
        }
    }
}

/// Whether `later` (a higher sequence number) may follow `earlier` of the same meter: time and
/// every counter move forward, and import and export no faster than `capacity` allows over
/// the time between them. The reason and a detail the meter's owner can act on if not.
pub fn check_step(
    earlier: &CounterSnapshot,
    later: &CounterSnapshot,
    capacity: Capacity,
) -> Result<(), (Rejection, String)> {
    if later.timestamp_ms < earlier.timestamp_ms {
        return Err((
            Rejection::ClockRollback,
            format!(
                "sequence number {} is stamped {} ms before sequence number {}",
                later.seq,
                earlier.timestamp_ms - later.timestamp_ms,
                earlier.seq
            ),
        ));
    }
    const NAMES: [&str; 4] = [
        "import_wh",
        "export_wh",
        "battery_charge_wh",
        "battery_discharge_wh",
    ];
    let elapsed = later.timestamp_ms - earlier.timestamp_ms;
    for (i, (a, b)) in earlier.values.iter().zip(&later.values).enumerate() {
        let (Some(a), Some(b)) = (a, b) else {
            continue;
        };
        if b < a {
            return Err((
                Rejection::CounterRollback,
                format!(
                    "{} of sequence number {} is {b}, below {a} of sequence number {}",
                    NAMES[i], later.seq, earlier.seq
                ),
            ));
        }
        let rated = match i {
            0 => Some(capacity.import_w),
            1 => Some(capacity.export_w),
            _ => None,
        };
        if let Some(rated) = rated {
            let bound = energy_bound_wh(rated, elapsed);
            if b - a > bound {
                return Err((
                    Rejection::ExceedsCapacity,
                    format!(
                        "{} rose {} Wh in {elapsed} ms between sequence numbers {} and {}; the \
                         meter's approved capacity of {rated} W allows at most {bound} Wh",
                        NAMES[i],
                        b - a,
                        earlier.seq,
                        later.seq
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The checks that need no database.
#[derive(Debug, Clone)]
pub struct Checker {
    /// Registered keys.
    pub registry: KeyRegistry,
    /// Largest accepted clock skew into the future, ms.
    pub max_future_skew_ms: u64,
    /// Largest accepted age, ms.
    pub max_age_ms: u64,
}

/// The meter id in `<prefix>/<community>/meters/<meter>/reading`.
pub fn meter_of_topic(topic: &str) -> Option<&str> {
    let mut parts = topic.rsplit('/');
    let last = parts.next()?;
    let meter = parts.next()?;
    let meters = parts.next()?;
    (last == "reading" && meters == "meters" && !meter.is_empty()).then_some(meter)
}

impl Checker {
    /// Parses and checks one message received at `now_ms`.
    pub fn check(&self, topic: &str, payload: &[u8], now_ms: u64) -> Result<Accepted, Rejected> {
        let topic_meter = meter_of_topic(topic);
        let reject = |reason, detail: String| Rejected {
            reason,
            meter: topic_meter.map(str::to_owned),
            detail,
        };
        if payload.len() > MAX_ENVELOPE_LEN {
            return Err(reject(
                Rejection::Oversize,
                format!("{} bytes, limit {MAX_ENVELOPE_LEN}", payload.len()),
            ));
        }
        let signed = SignedReading::from_json_bytes(payload).map_err(|e| {
            let reason = match e {
                ReadingError::InvalidField { .. } => Rejection::InvalidField,
                _ => Rejection::Malformed,
            };
            reject(reason, e.to_string())
        })?;
        let meter = signed.reading.meter_id.as_str();
        if topic_meter != Some(meter) {
            return Err(reject(
                Rejection::TopicMismatch,
                format!("topic {topic} carries a reading of meter {meter}"),
            ));
        }
        let registered = self.registry.get(meter).ok_or_else(|| {
            reject(
                Rejection::UnknownMeter,
                format!("meter {meter} is not registered"),
            )
        })?;
        let Some(approval) = &registered.approval else {
            return Err(reject(
                Rejection::NotApproved,
                format!(
                    "meter {meter} is registered but not approved by the community operator; \
                     its readings count from the approval on"
                ),
            ));
        };
        signed.verify(&registered.key).map_err(|e| {
            let reason = match e {
                ReadingError::KeyIdMismatch { .. } => Rejection::WrongKey,
                ReadingError::InvalidField { .. } => Rejection::InvalidField,
                _ => Rejection::BadSignature,
            };
            reject(reason, e.to_string())
        })?;
        if signed.reading.device != approval.device {
            let d = &signed.reading.device;
            let a = &approval.device;
            return Err(reject(
                Rejection::WrongDevice,
                format!(
                    "the reading comes from {} {} serial {}, the meter was approved for {} {} \
                     serial {}",
                    d.manufacturer, d.model, d.serial, a.manufacturer, a.model, a.serial
                ),
            ));
        }
        // The database keeps integers as i64: a value beyond it is refused here, never
        // stored clipped.
        let r = &signed.reading;
        for (field, value) in [
            ("seq", Some(r.seq)),
            ("timestamp_ms", Some(r.timestamp_ms)),
            ("import_wh", r.import_wh.value()),
            ("export_wh", r.export_wh.value()),
            ("battery_charge_wh", r.battery_charge_wh.value()),
            ("battery_discharge_wh", r.battery_discharge_wh.value()),
        ] {
            if let Some(v) = value
                && i64::try_from(v).is_err()
            {
                return Err(reject(
                    Rejection::InvalidField,
                    format!(
                        "{field} {v} is beyond the largest value the engine stores ({})",
                        i64::MAX
                    ),
                ));
            }
        }
        let ts = signed.reading.timestamp_ms;
        if ts > now_ms.saturating_add(self.max_future_skew_ms) {
            return Err(reject(
                Rejection::FromTheFuture,
                format!(
                    "timestamp {ts} is {} ms ahead of the engine's clock",
                    ts - now_ms
                ),
            ));
        }
        if ts.saturating_add(self.max_age_ms) < now_ms {
            return Err(reject(
                Rejection::TooOld,
                format!("timestamp {ts} is {} ms old", now_ms - ts),
            ));
        }
        Ok(Accepted {
            capacity: approval.capacity(),
            account: registered.account,
            signed,
        })
    }
}
