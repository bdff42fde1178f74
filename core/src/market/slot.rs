//! Delivery slots and their timeline: order window, gate closure, delivery, settlement.
//!
//! Time is passed in by the caller as Unix seconds; the market never reads a clock, so the
//! engine (wall clock) and the simulator (simulated clock) drive the same code.

use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch.
pub type UnixSeconds = i64;

/// How a community cuts time into delivery slots, and when each slot's phases begin.
///
/// Slot `n` delivers during `[epoch + n·length, epoch + (n+1)·length)`. Its order window opens
/// `window_opens_before_s` before delivery, its gate closes `gate_closure_before_s` before
/// delivery, and it may be settled `settlement_after_s` after delivery ends (time for the last
/// signed readings to arrive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSlotCalendar")]
pub struct SlotCalendar {
    epoch_s: UnixSeconds,
    slot_length_s: u32,
    window_opens_before_s: u32,
    gate_closure_before_s: u32,
    settlement_after_s: u32,
}

/// The serialized form, checked by [`SlotCalendar::new`] on the way in.
#[derive(Deserialize)]
struct RawSlotCalendar {
    epoch_s: UnixSeconds,
    slot_length_s: u32,
    window_opens_before_s: u32,
    gate_closure_before_s: u32,
    settlement_after_s: u32,
}

impl TryFrom<RawSlotCalendar> for SlotCalendar {
    type Error = SlotError;

    fn try_from(r: RawSlotCalendar) -> Result<Self, SlotError> {
        Self::new(
            r.epoch_s,
            r.slot_length_s,
            r.window_opens_before_s,
            r.gate_closure_before_s,
            r.settlement_after_s,
        )
    }
}

/// Why a slot calendar or a slot index was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The slot length is outside ten seconds to one day.
    #[error("slot length {0} s is outside 10..=86400 s; use e.g. 900 for 15-minute slots")]
    SlotLength(u32),
    /// The gate would close before the order window opens.
    #[error(
        "gate closure {gate_closure_before_s} s before delivery is not after the order window opening {window_opens_before_s} s before delivery; open the window earlier"
    )]
    WindowAfterGate {
        /// Configured window lead.
        window_opens_before_s: u32,
        /// Configured gate-closure lead.
        gate_closure_before_s: u32,
    },
    /// The slot index is so large its times do not fit in Unix seconds.
    #[error("slot {0} lies beyond the representable time range")]
    OutOfRange(u64),
}

impl SlotCalendar {
    /// Default slot length: 15 minutes.
    pub const DEFAULT_SLOT_LENGTH_S: u32 = 900;
    /// Shortest slot: ten seconds, for accelerated time.
    pub const MIN_SLOT_LENGTH_S: u32 = 10;

    /// A calendar with explicit phase leads; `epoch_s` is the start of slot 0 (choose a
    /// midnight so that daily tariff profiles line up with slot indices).
    pub fn new(
        epoch_s: UnixSeconds,
        slot_length_s: u32,
        window_opens_before_s: u32,
        gate_closure_before_s: u32,
        settlement_after_s: u32,
    ) -> Result<Self, SlotError> {
        // Below a minute only makes sense in accelerated time (the demo, tests); real markets
        // run 5- to 60-minute slots.
        if !(Self::MIN_SLOT_LENGTH_S..=86_400).contains(&slot_length_s) {
            return Err(SlotError::SlotLength(slot_length_s));
        }
        if window_opens_before_s <= gate_closure_before_s {
            return Err(SlotError::WindowAfterGate {
                window_opens_before_s,
                gate_closure_before_s,
            });
        }
        Ok(Self {
            epoch_s,
            slot_length_s,
            window_opens_before_s,
            gate_closure_before_s,
            settlement_after_s,
        })
    }

    /// 15-minute slots; the window opens 24 h ahead, the gate closes 5 min before delivery,
    /// settlement starts 15 min after delivery ends.
    #[must_use]
    pub fn quarter_hourly(epoch_s: UnixSeconds) -> Self {
        Self {
            epoch_s,
            slot_length_s: Self::DEFAULT_SLOT_LENGTH_S,
            window_opens_before_s: 86_400,
            gate_closure_before_s: 300,
            settlement_after_s: 900,
        }
    }

    /// Slot length in seconds.
    #[must_use]
    pub fn slot_length_s(&self) -> u32 {
        self.slot_length_s
    }

    /// The timeline of slot `index`.
    pub fn slot(&self, index: u64) -> Result<DeliverySlot, SlotError> {
        let out = || SlotError::OutOfRange(index);
        let offset = i64::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(i64::from(self.slot_length_s)))
            .ok_or_else(out)?;
        let delivery_start = self.epoch_s.checked_add(offset).ok_or_else(out)?;
        let delivery_end = delivery_start
            .checked_add(i64::from(self.slot_length_s))
            .ok_or_else(out)?;
        let before = |lead: u32| delivery_start.checked_sub(i64::from(lead)).ok_or_else(out);
        Ok(DeliverySlot {
            index,
            order_window_opens: before(self.window_opens_before_s)?,
            gate_closure: before(self.gate_closure_before_s)?,
            delivery_start,
            delivery_end,
            settlement: delivery_end
                .checked_add(i64::from(self.settlement_after_s))
                .ok_or_else(out)?,
        })
    }

    /// The index of the slot being delivered at `t`, if `t` is not before slot 0.
    #[must_use]
    pub fn slot_delivering_at(&self, t: UnixSeconds) -> Option<u64> {
        let since = t.checked_sub(self.epoch_s)?;
        // Negative offsets are before slot 0; try_from rejects them.
        u64::try_from(since)
            .ok()
            .map(|s| s / u64::from(self.slot_length_s))
    }
}

/// One delivery slot and the instants that bound its phases (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeliverySlot {
    /// Slot index in its calendar; tariff and fee profiles are indexed by it.
    pub index: u64,
    /// Orders are accepted from here …
    pub order_window_opens: UnixSeconds,
    /// … until here (exclusive): the gate closure. The call auction clears here.
    pub gate_closure: UnixSeconds,
    /// Energy flows from here …
    pub delivery_start: UnixSeconds,
    /// … until here (exclusive).
    pub delivery_end: UnixSeconds,
    /// From here readings are complete and the slot may be settled.
    pub settlement: UnixSeconds,
}

/// Where a slot stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SlotPhase {
    /// Orders are not yet accepted.
    BeforeOrderWindow,
    /// Orders are accepted, amended, cancelled.
    OrderWindow,
    /// Gate closed; no order changes; delivery has not started.
    GateClosed,
    /// Energy is being delivered.
    Delivery,
    /// Delivery ended; waiting for the last readings.
    AwaitingReadings,
    /// Ready to settle.
    Settlement,
}

impl DeliverySlot {
    /// The phase of this slot at `now`.
    #[must_use]
    pub fn phase_at(&self, now: UnixSeconds) -> SlotPhase {
        if now < self.order_window_opens {
            SlotPhase::BeforeOrderWindow
        } else if now < self.gate_closure {
            SlotPhase::OrderWindow
        } else if now < self.delivery_start {
            SlotPhase::GateClosed
        } else if now < self.delivery_end {
            SlotPhase::Delivery
        } else if now < self.settlement {
            SlotPhase::AwaitingReadings
        } else {
            SlotPhase::Settlement
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quarter_hour_timeline() {
        let c = SlotCalendar::quarter_hourly(1_000_000);
        let s = c.slot(4).unwrap();
        assert_eq!(s.delivery_start, 1_000_000 + 3_600);
        assert_eq!(s.delivery_end, s.delivery_start + 900);
        assert_eq!(s.gate_closure, s.delivery_start - 300);
        assert_eq!(s.order_window_opens, s.delivery_start - 86_400);
        assert_eq!(s.settlement, s.delivery_end + 900);
        assert_eq!(c.slot_delivering_at(s.delivery_start + 899), Some(4));
        assert_eq!(c.slot_delivering_at(999_999), None);
    }

    #[test]
    fn bad_calendars_and_slots_are_rejected() {
        assert_eq!(
            SlotCalendar::new(0, 9, 600, 0, 0),
            Err(SlotError::SlotLength(9))
        );
        assert!(matches!(
            SlotCalendar::new(0, 900, 300, 300, 0),
            Err(SlotError::WindowAfterGate { .. })
        ));
        let c = SlotCalendar::new(i64::MAX - 1_000, 900, 900, 0, 0).unwrap();
        assert_eq!(c.slot(u64::MAX), Err(SlotError::OutOfRange(u64::MAX)));
        assert_eq!(c.slot(2), Err(SlotError::OutOfRange(2)));
        let c = SlotCalendar::new(i64::MIN, 900, 900, 0, 0).unwrap();
        assert_eq!(c.slot(0), Err(SlotError::OutOfRange(0)));
        let zero_length = r#"{"epoch_s":0,"slot_length_s":0,"window_opens_before_s":9,"gate_closure_before_s":0,"settlement_after_s":0}"#;
        assert!(serde_json::from_str::<SlotCalendar>(zero_length).is_err());
    }
}
