//! When two readings signed by one meter key cannot both be true. This is the staking
//! contract's rule (`MeterStaking._contradict`), kept here so a watcher reports only what the
//! chain will accept:
//!
//! - taken at the same instant, their lifetime counters differ (equivocation);
//! - with both clocks synchronised, a lifetime counter is lower in the later reading
//!   (rollback), whatever the sequence numbers — an agent that lost its state and reused a
//!   sequence number with counters that still move forward cheated nobody;
//! - without trusted clocks, a counter is lower at a higher sequence number.

use gridshare_core::reading::{ClockSync, Measured, Reading, ValueStatus};

/// Why two readings contradict each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contradiction {
    /// Same instant, different counters.
    Equivocation,
    /// A lifetime counter went down.
    Rollback,
}

impl std::fmt::Display for Contradiction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Equivocation => "two different readings at one instant",
            Self::Rollback => "a lifetime counter went backwards",
        })
    }
}

/// Whether `a` and `b` (of one meter) cannot both be true, and why.
pub fn contradiction(a: &Reading, b: &Reading) -> Option<Contradiction> {
    if a.meter_id != b.meter_id {
        return None;
    }
    if a.timestamp_ms == b.timestamp_ms {
        return (!same_counters(a, b)).then_some(Contradiction::Equivocation);
    }
    let (earlier, later) =
        if a.clock != ClockSync::Synchronised || b.clock != ClockSync::Synchronised {
            if a.seq == b.seq {
                return None;
            }
            if a.seq < b.seq { (a, b) } else { (b, a) }
        } else if a.timestamp_ms < b.timestamp_ms {
            (a, b)
        } else {
            (b, a)
        };
    backwards(earlier, later).then_some(Contradiction::Rollback)
}

fn counters(r: &Reading) -> [Measured<u64>; 4] {
    [
        r.import_wh,
        r.export_wh,
        r.battery_charge_wh,
        r.battery_discharge_wh,
    ]
}

/// Status and value as the encoding carries them (a value without meaning is zero).
fn encoded(m: Measured<u64>) -> (ValueStatus, u64) {
    (m.status(), m.value().unwrap_or(0))
}

fn same_counters(a: &Reading, b: &Reading) -> bool {
    counters(a)
        .into_iter()
        .zip(counters(b))
        .all(|(x, y)| encoded(x) == encoded(y))
}

fn carries_value(status: ValueStatus) -> bool {
    matches!(status, ValueStatus::Ok | ValueStatus::Implausible)
}

fn backwards(earlier: &Reading, later: &Reading) -> bool {
    counters(earlier)
        .into_iter()
        .zip(counters(later))
        .any(|(x, y)| {
            let ((sx, vx), (sy, vy)) = (encoded(x), encoded(y));
            carries_value(sx) && carries_value(sy) && vy < vx
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridshare_core::reading::{DeviceIdentity, MeterId};

    fn reading(seq: u64, t: u64, export: u64) -> Reading {
        Reading {
            meter_id: MeterId::new("home-07").expect("id"),
            device: DeviceIdentity::new("Gridshare", "SIM", "SN-1").expect("device"),
            seq,
            timestamp_ms: t,
            clock: ClockSync::Synchronised,
            import_wh: Measured::ok(10),
            export_wh: Measured::ok(export),
            battery_charge_wh: Measured::not_implemented(),
            battery_discharge_wh: Measured::not_implemented(),
            power_w: Measured::ok(0),
            soc_bp: Measured::not_implemented(),
            flow: gridshare_core::reading::PowerFlow::NOT_MEASURED,
        }
    }

    #[test]
    fn the_contract_rule() {
        let e = Some(Contradiction::Equivocation);
        let r = Some(Contradiction::Rollback);
        assert_eq!(
            contradiction(&reading(5, 1_000, 100), &reading(5, 1_000, 150)),
            e
        );
        assert_eq!(
            contradiction(&reading(5, 1_000, 100), &reading(5, 1_000, 100)),
            None
        );
        assert_eq!(
            contradiction(&reading(5, 1_000, 100), &reading(6, 2_000, 90)),
            r
        );
        assert_eq!(
            contradiction(&reading(6, 2_000, 90), &reading(5, 1_000, 100)),
            r
        );
        // A reused or restarted sequence number with counters moving forward in time.
        assert_eq!(
            contradiction(&reading(5, 1_000, 100), &reading(5, 9_000, 180)),
            None
        );
        assert_eq!(
            contradiction(&reading(900, 1_000, 100), &reading(1, 9_000, 180)),
            None
        );
        // Without synchronised clocks, one sequence number is never judged.
        let mut a = reading(5, 1_000, 100);
        a.clock = ClockSync::Unsynchronised;
        assert_eq!(contradiction(&a, &reading(5, 9_000, 50)), None);
        assert_eq!(contradiction(&a, &reading(6, 9_000, 50)), r);
    }
}
