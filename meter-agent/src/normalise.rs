//! Turns a [`Snapshot`] into the measured values of a reading: the plausibility rules that
//! stand between a device's registers and anything that is traded or settled.
//!
//! - A value the device does not provide keeps that status; it never becomes 0.
//! - A lifetime counter never goes backwards: a lower value than the last good one is flagged
//!   implausible and the last good value is carried instead (SolarEdge accumulators and
//!   battery counters are known to do this). The last good values survive restarts.
//! - Values that do not fit their field are implausible, not truncated.

use gridshare_core::reading::{MAX_SOC_BP, Measured, PowerFlow};

use crate::device::{Sample, Snapshot};

/// The last good lifetime counters, persisted with the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastGood {
    /// Import, Wh.
    pub import_wh: Option<u64>,
    /// Export, Wh.
    pub export_wh: Option<u64>,
    /// Battery charge, Wh.
    pub battery_charge_wh: Option<u64>,
    /// Battery discharge, Wh.
    pub battery_discharge_wh: Option<u64>,
    /// PV production, Wh.
    pub pv_wh: Option<u64>,
}

/// The values of one reading, ready to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurements {
    /// Import, Wh.
    pub import_wh: Measured<u64>,
    /// Export, Wh.
    pub export_wh: Measured<u64>,
    /// Battery charge, Wh.
    pub battery_charge_wh: Measured<u64>,
    /// Battery discharge, Wh.
    pub battery_discharge_wh: Measured<u64>,
    /// Grid power, W, positive = import.
    pub power_w: Measured<i32>,
    /// State of charge, basis points.
    pub soc_bp: Measured<u16>,
    /// PV power and energy, battery power.
    pub flow: PowerFlow,
}

/// Applies the plausibility rules, remembering the last good values.
#[derive(Debug, Clone, Default)]
pub struct Normaliser {
    last: LastGood,
    last_soc_bp: Option<u16>,
}

impl Normaliser {
    /// Starts from persisted last good counters.
    pub fn new(last: LastGood) -> Self {
        Self {
            last,
            last_soc_bp: None,
        }
    }

    /// The last good counters (to persist).
    pub fn last_good(&self) -> LastGood {
        self.last
    }

    /// The measured values of one poll. Does not change the remembered values: call
    /// [`Normaliser::commit`] once the reading is safely stored.
    pub fn measure(&self, snapshot: &Snapshot) -> (Measurements, LastGood) {
        let mut next = self.last;
        let m = Measurements {
            import_wh: counter("import_wh", &snapshot.import_wh, &mut next.import_wh),
            export_wh: counter("export_wh", &snapshot.export_wh, &mut next.export_wh),
            battery_charge_wh: counter(
                "battery_charge_wh",
                &snapshot.battery_charge_wh,
                &mut next.battery_charge_wh,
            ),
            battery_discharge_wh: counter(
                "battery_discharge_wh",
                &snapshot.battery_discharge_wh,
                &mut next.battery_discharge_wh,
            ),
            power_w: power(&snapshot.power_w),
            soc_bp: soc(&snapshot.soc_bp, self.last_soc_bp),
            flow: PowerFlow {
                pv_power_w: match power(&snapshot.pv_power_w) {
                    m if m.value().is_some_and(|w| w < 0) => {
                        tracing::warn!(target: "normalise", "implausible negative PV power {:?} W", m.value());
                        Measured::device_error()
                    }
                    m => m,
                },
                pv_wh: counter("pv_wh", &snapshot.pv_wh, &mut next.pv_wh),
                battery_power_w: power(&snapshot.battery_power_w),
            },
        };
        (m, next)
    }

    /// Remembers the values of a stored reading.
    pub fn commit(&mut self, measurements: &Measurements, last: LastGood) {
        self.last = last;
        if let Some(soc) = measurements.soc_bp.ok_value() {
            self.last_soc_bp = Some(soc);
        }
    }
}

fn counter(name: &str, sample: &Sample, last: &mut Option<u64>) -> Measured<u64> {
    let flag = |last: Option<u64>, why: &str| {
        tracing::warn!(target: "normalise", counter = name, ?last, "implausible: {why}");
        last.map_or_else(Measured::device_error, Measured::implausible)
    };
    match sample {
        Sample::Value(v) => match u64::try_from(*v) {
            Err(_) => flag(*last, &format!("negative lifetime counter {v}")),
            Ok(v) => match *last {
                Some(prev) if v < prev => flag(
                    Some(prev),
                    &format!("went backwards from {prev} to {v} Wh; keeping {prev}"),
                ),
                _ => {
                    *last = Some(v);
                    Measured::ok(v)
                }
            },
        },
        Sample::NotImplemented => Measured::not_implemented(),
        Sample::Implausible(why) => flag(*last, why),
        Sample::DeviceError(why) => {
            tracing::debug!(target: "normalise", counter = name, "device error: {why}");
            Measured::device_error()
        }
    }
}

fn power(sample: &Sample) -> Measured<i32> {
    match sample {
        Sample::Value(v) => i32::try_from(*v).map_or_else(
            |_| {
                tracing::warn!(target: "normalise", "implausible power {v} W");
                Measured::device_error()
            },
            Measured::ok,
        ),
        Sample::NotImplemented => Measured::not_implemented(),
        Sample::Implausible(why) => {
            tracing::warn!(target: "normalise", "implausible power: {why}");
            Measured::device_error()
        }
        Sample::DeviceError(_) => Measured::device_error(),
    }
}

fn soc(sample: &Sample, last: Option<u16>) -> Measured<u16> {
    let flag = |why: String| {
        tracing::warn!(target: "normalise", "implausible state of charge: {why}");
        last.map_or_else(Measured::device_error, Measured::implausible)
    };
    match sample {
        Sample::Value(v) => match u16::try_from(*v) {
            Ok(bp) if bp <= MAX_SOC_BP => Measured::ok(bp),
            _ => flag(format!("{v} basis points is outside 0..=10000")),
        },
        Sample::NotImplemented => Measured::not_implemented(),
        Sample::Implausible(why) => flag(why.clone()),
        Sample::DeviceError(_) => Measured::device_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridshare_core::reading::ValueStatus;

    fn snapshot(import: Sample) -> Snapshot {
        Snapshot {
            import_wh: import,
            export_wh: Sample::NotImplemented,
            battery_charge_wh: Sample::DeviceError("timeout".into()),
            battery_discharge_wh: Sample::Value(5),
            power_w: Sample::Value(i64::from(i32::MAX) + 1),
            soc_bp: Sample::Value(10_001),
            pv_power_w: Sample::Value(-5),
            pv_wh: Sample::NotImplemented,
            battery_power_w: Sample::Value(-1_200),
        }
    }

    #[test]
    fn counter_going_backwards_keeps_the_last_good_value_and_is_flagged() {
        let mut n = Normaliser::default();
        let (m, last) = n.measure(&snapshot(Sample::Value(1_000)));
        assert_eq!(m.import_wh, Measured::ok(1_000));
        n.commit(&m, last);
        let (m, last) = n.measure(&snapshot(Sample::Value(999)));
        assert_eq!(m.import_wh, Measured::implausible(1_000));
        n.commit(&m, last);
        assert_eq!(n.last_good().import_wh, Some(1_000));
        let (m, _) = n.measure(&snapshot(Sample::Value(1_001)));
        assert_eq!(m.import_wh, Measured::ok(1_001));
    }

    #[test]
    fn missing_values_are_never_zero() {
        let (m, _) = Normaliser::default().measure(&snapshot(Sample::Implausible("sf".into())));
        assert_eq!(m.import_wh.status(), ValueStatus::DeviceError);
        assert_eq!(m.export_wh, Measured::not_implemented());
        assert_eq!(m.battery_charge_wh, Measured::device_error());
        assert_eq!(m.battery_discharge_wh, Measured::ok(5));
        assert_eq!(m.power_w, Measured::device_error());
        assert_eq!(m.soc_bp, Measured::device_error());
        assert_eq!(
            m.flow.pv_power_w,
            Measured::device_error(),
            "negative PV power"
        );
        assert_eq!(m.flow.pv_wh, Measured::not_implemented());
        assert_eq!(m.flow.battery_power_w, Measured::ok(-1_200));
    }

    #[test]
    fn pv_counter_going_backwards_is_flagged_like_the_grid_counters() {
        let mut n = Normaliser::default();
        let mut s = snapshot(Sample::Value(1));
        s.pv_wh = Sample::Value(5_000);
        let (m, last) = n.measure(&s);
        assert_eq!(m.flow.pv_wh, Measured::ok(5_000));
        n.commit(&m, last);
        s.pv_wh = Sample::Value(4_999);
        let (m, _) = n.measure(&s);
        assert_eq!(m.flow.pv_wh, Measured::implausible(5_000));
    }

    #[test]
    fn negative_counter_is_implausible() {
        let n = Normaliser::new(LastGood {
            import_wh: Some(7),
            ..LastGood::default()
        });
        let (m, last) = n.measure(&snapshot(Sample::Value(-3)));
        assert_eq!(m.import_wh, Measured::implausible(7));
        assert_eq!(last.import_wh, Some(7));
    }
}
