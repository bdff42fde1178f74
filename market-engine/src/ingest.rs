//! Ingest of signed readings: every message on `<prefix>/<community>/meters/+/reading` is
//! checked — size, envelope, topic, registered meter and key, signature, clock skew, sequence
//! and lifetime counters — and either accepted or rejected with a [`Rejection`] that is
//! recorded and counted. Nothing a publisher sends can crash the engine.
//!
//! Design: the checks that need no database ([`Checker::check`]) run on the blocking pool,
//! because signature verification is CPU work (≈ 60 µs); what they accept goes to one writer
//! that stores readings in batches (one transaction per batch), which is what makes thousands
//! of readings per second possible on SQLite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use gridshare_core::reading::{MAX_ENVELOPE_LEN, PublicKey, ReadingError, SignedReading};

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
}

impl Rejection {
    /// Every reason, for metrics.
    pub const ALL: [Rejection; 11] = [
        Self::Oversize,
        Self::Malformed,
        Self::InvalidField,
        Self::TopicMismatch,
        Self::UnknownMeter,
        Self::WrongKey,
        Self::BadSignature,
        Self::FromTheFuture,
        Self::TooOld,
        Self::CounterRollback,
        Self::ConflictingDuplicate,
    ];

    /// Stable name (metrics label, database).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::Malformed => "malformed",
            Self::InvalidField => "invalid_field",
            Self::TopicMismatch => "topic_mismatch",
            Self::UnknownMeter => "unknown_meter",
            Self::WrongKey => "wrong_key",
            Self::BadSignature => "bad_signature",
            Self::FromTheFuture => "from_the_future",
            Self::TooOld => "too_old",
            Self::CounterRollback => "counter_rollback",
            Self::ConflictingDuplicate => "conflicting_duplicate",
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
    rejected: [AtomicU64; Rejection::ALL.len()],
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
}

/// What the checker knows of a registered meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisteredKey {
    /// The meter's public key.
    pub key: PublicKey,
}

/// Registered meter keys, shared between the API (which registers) and the ingest.
#[derive(Debug, Default, Clone)]
pub struct KeyRegistry {
    keys: Arc<RwLock<HashMap<String, RegisteredKey>>>,
}

impl KeyRegistry {
    /// Registers or replaces a meter's key.
    pub fn insert(&self, meter: &str, key: PublicKey) {
        // The map holds plain data; a panic elsewhere cannot leave it half-written.
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(meter.to_owned(), RegisteredKey { key });
    }

    /// The key of a meter.
    pub fn get(&self, meter: &str) -> Option<RegisteredKey> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(meter)
            .copied()
    }
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
    pub fn check(
        &self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<SignedReading, Rejected> {
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
        signed.verify(&registered.key).map_err(|e| {
            let reason = match e {
                ReadingError::KeyIdMismatch { .. } => Rejection::WrongKey,
                ReadingError::InvalidField { .. } => Rejection::InvalidField,
                _ => Rejection::BadSignature,
            };
            reject(reason, e.to_string())
        })?;
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
        Ok(signed)
    }
}
