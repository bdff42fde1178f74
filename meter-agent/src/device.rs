//! What the agent measures at one device, whatever register map it speaks: one
//! [`Snapshot`] per poll, each quantity a [`Sample`] with its reason when it has no value.
//!
//! Sign conventions are normalised here: power is positive when importing from the grid, and
//! energy is split into lifetime import and export counters.

use gridshare_core::reading::DeviceIdentity;
use serde::Deserialize;

use crate::profile::{Function, Quantity, RegisterProfile};
use crate::sunspec::block::ModelBlock;
use crate::sunspec::{self, ModelLocation, SunSpecError, SunSpecMap};
use crate::transport::{LinkError, ModbusLink, Table};
use crate::value::{PointError, Scaled};

/// Grid meter models, in order of preference: integer with scale factors first.
pub const METER_MODELS: [u16; 8] = [203, 201, 202, 204, 213, 211, 212, 214];
/// Inverter models, in order of preference.
pub const INVERTER_MODELS: [u16; 6] = [103, 101, 102, 113, 111, 112];
/// Multiple MPPT model (PV strings and, on hybrid inverters, battery charge/discharge modules).
pub const MPPT_MODEL: u16 = 160;
/// Basic storage model (state of charge `ChaState`).
pub const STORAGE_MODEL: u16 = 124;
/// Lithium-ion battery model (state of charge `SoC`).
pub const BATTERY_MODEL: u16 = 802;

/// One quantity of one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    /// A value in the quantity's unit (Wh, W, or basis points for state of charge).
    Value(i64),
    /// The device does not provide it.
    NotImplemented,
    /// The device reported something that cannot be true (scale factor out of range, a value
    /// too large to represent).
    Implausible(String),
    /// It could not be read (exception, timeout).
    DeviceError(String),
}

impl Sample {
    fn from_point(
        result: Result<Scaled, PointError>,
        convert: impl Fn(Scaled) -> Option<i64>,
    ) -> Self {
        match result {
            Ok(v) => match convert(v) {
                Some(v) => Self::Value(v),
                None => Self::Implausible(format!("value {v} does not fit")),
            },
            Err(PointError::NotImplemented | PointError::UnknownPoint { .. }) => {
                Self::NotImplemented
            }
            // SunSpec floats use NaN as "not implemented".
            Err(PointError::NotANumber) => Self::NotImplemented,
            Err(e @ PointError::NotRead { .. }) => Self::DeviceError(e.to_string()),
            Err(e) => Self::Implausible(e.to_string()),
        }
    }

    fn negate(self) -> Self {
        match self {
            Self::Value(v) => Self::Value(v.saturating_neg()),
            other => other,
        }
    }
}

/// Everything one poll measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Lifetime energy imported from the grid, Wh.
    pub import_wh: Sample,
    /// Lifetime energy exported to the grid, Wh.
    pub export_wh: Sample,
    /// Lifetime energy charged into the battery, Wh.
    pub battery_charge_wh: Sample,
    /// Lifetime energy discharged from the battery, Wh.
    pub battery_discharge_wh: Sample,
    /// Grid power, W, positive = import.
    pub power_w: Sample,
    /// Battery state of charge, basis points.
    pub soc_bp: Sample,
    /// PV power, W (DC).
    pub pv_power_w: Sample,
    /// Lifetime energy produced by PV, Wh.
    pub pv_wh: Sample,
    /// Battery power, W, positive = charging.
    pub battery_power_w: Sample,
}

impl Snapshot {
    /// The sample of one quantity.
    pub fn sample_mut(&mut self, quantity: Quantity) -> &mut Sample {
        match quantity {
            Quantity::ImportWh => &mut self.import_wh,
            Quantity::ExportWh => &mut self.export_wh,
            Quantity::BatteryChargeWh => &mut self.battery_charge_wh,
            Quantity::BatteryDischargeWh => &mut self.battery_discharge_wh,
            Quantity::PowerW => &mut self.power_w,
            Quantity::SocPercent => &mut self.soc_bp,
            Quantity::PvPowerW => &mut self.pv_power_w,
            Quantity::PvWh => &mut self.pv_wh,
            Quantity::BatteryPowerW => &mut self.battery_power_w,
        }
    }

    /// Every quantity not implemented: the start of every poll.
    pub fn not_implemented() -> Self {
        Self {
            import_wh: Sample::NotImplemented,
            export_wh: Sample::NotImplemented,
            battery_charge_wh: Sample::NotImplemented,
            battery_discharge_wh: Sample::NotImplemented,
            power_w: Sample::NotImplemented,
            soc_bp: Sample::NotImplemented,
            pv_power_w: Sample::NotImplemented,
            pv_wh: Sample::NotImplemented,
            battery_power_w: Sample::NotImplemented,
        }
    }
}

/// SunSpec options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SunSpecOptions {
    /// Negate the meter's power; default: as the manufacturer's quirks say (SolarEdge meters
    /// report export as positive).
    pub invert_power: Option<bool>,
    /// Model 160 module (1-based) that counts battery charging, if the inverter reports the
    /// battery as MPPT modules; default: the module whose `IDStr` says "charge"/"CHA".
    pub battery_charge_module: Option<usize>,
    /// Model 160 module (1-based) that counts battery discharging; default: the module whose
    /// `IDStr` says "discharge"/"DIS".
    pub battery_discharge_module: Option<usize>,
}

/// Deviations from the SunSpec specification of one manufacturer, recognised by the `Mn` point
/// of model 1 (see `catalog` for the sources).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VendorQuirks {
    /// The grid meter's `W` is positive for export (SolarEdge).
    pub meter_power_export_positive: bool,
    /// Lifetime counters (acc32) carry signed values: a negative counter arrives as a number
    /// above 2^31 (Kostal; mbmd's `FixKostal`, ha-sunspec #249, openHAB #18370).
    pub signed_accumulators: bool,
}

impl VendorQuirks {
    /// The quirks of the manufacturer named in model 1 (case-insensitive, as vendors differ in
    /// spelling: "SolarEdge ", "KOSTAL").
    pub fn of(manufacturer: &str) -> Self {
        let m = manufacturer.trim().to_ascii_lowercase();
        Self {
            meter_power_export_positive: m.starts_with("solaredge"),
            signed_accumulators: m.starts_with("kostal"),
        }
    }
}

/// A Kostal acc32 counter above 2^31 is a negative number written into an unsigned register:
/// its magnitude is the counter (mbmd's `FixKostal`). Only exact acc32 raw values (exponent of
/// the scale factor, mantissa within u32) are touched.
fn unsign_accumulator(v: Result<Scaled, PointError>) -> Result<Scaled, PointError> {
    v.map(|s| {
        if (0x8000_0000..=0xFFFF_FFFF).contains(&s.mantissa) {
            Scaled::new(0x1_0000_0000 - s.mantissa, s.exponent)
        } else {
            s
        }
    })
}

/// Why a poll produced nothing at all.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The device could not be reached or stopped answering.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The SunSpec map is not what discovery found; discover again.
    #[error(transparent)]
    SunSpec(#[from] SunSpecError),
}

/// A SunSpec device and the models the agent reads from it.
#[derive(Debug, Clone)]
pub struct SunSpecDevice {
    /// The discovered map.
    pub map: SunSpecMap,
    /// Identity from model 1.
    pub identity: DeviceIdentity,
    meter: Option<ModelLocation>,
    inverter: Option<ModelLocation>,
    mppt: Option<ModelLocation>,
    storage: Option<ModelLocation>,
    options: SunSpecOptions,
    /// The manufacturer's deviations, from model 1.
    pub quirks: VendorQuirks,
}

impl SunSpecDevice {
    /// Discovers the device and reads its identity (model 1).
    pub async fn discover(
        link: &mut ModbusLink,
        options: SunSpecOptions,
    ) -> Result<Self, PollError> {
        let map = sunspec::discover(link).await?;
        let unknown = map.unknown_models();
        if !unknown.is_empty() {
            tracing::info!(target: "sunspec", ?unknown, "models without a definition are skipped");
        }
        let identity = match map.first_of(&[1]) {
            Some(loc) => {
                let common = sunspec::read_model(link, loc).await?;
                identity_from_common(&common)
            }
            None => {
                tracing::warn!(target: "sunspec", "no common model 1: device identity unknown");
                DeviceIdentity::default()
            }
        };
        let quirks = VendorQuirks::of(&identity.manufacturer);
        if quirks != VendorQuirks::default() {
            tracing::info!(target: "sunspec", manufacturer = %identity.manufacturer, ?quirks, "applying the manufacturer's quirks");
        }
        Ok(Self {
            quirks,
            meter: map.first_of(&METER_MODELS),
            inverter: map.first_of(&INVERTER_MODELS),
            mppt: map.first_of(&[MPPT_MODEL]),
            storage: map.first_of(&[STORAGE_MODEL, BATTERY_MODEL]),
            map,
            identity,
            options,
        })
    }

    /// Reads the models that make a reading, each in one request.
    pub async fn poll(&self, link: &mut ModbusLink) -> Result<Snapshot, PollError> {
        let mut snapshot = Snapshot::not_implemented();
        if let Some(loc) = self.meter {
            match read_or_sample(link, loc).await? {
                Ok(meter) => {
                    snapshot.import_wh =
                        Sample::from_point(self.counter(meter.value("TotWhImp")), floor);
                    snapshot.export_wh =
                        Sample::from_point(self.counter(meter.value("TotWhExp")), floor);
                    let power = Sample::from_point(meter.value("W"), round);
                    let invert = self
                        .options
                        .invert_power
                        .unwrap_or(self.quirks.meter_power_export_positive);
                    snapshot.power_w = if invert { power.negate() } else { power };
                }
                Err(sample) => {
                    snapshot.import_wh = sample.clone();
                    snapshot.export_wh = sample.clone();
                    snapshot.power_w = sample;
                }
            }
        }
        let mut battery_modules = false;
        if let Some(loc) = self.mppt {
            match read_or_sample(link, loc).await? {
                Ok(mppt) => {
                    let (charge, discharge) = self.battery_modules(&mppt);
                    battery_modules = charge.is_some() || discharge.is_some();
                    if let Some(i) = charge {
                        snapshot.battery_charge_wh =
                            Sample::from_point(mppt.group_value(i, "DCWH"), floor);
                    }
                    if let Some(i) = discharge {
                        snapshot.battery_discharge_wh =
                            Sample::from_point(mppt.group_value(i, "DCWH"), floor);
                    }
                    // Battery power as evcc's SunSpec battery template takes it: the charge
                    // module's DC power less the discharge module's.
                    if let (Some(c), Some(d)) = (charge, discharge) {
                        snapshot.battery_power_w = difference(
                            Sample::from_point(mppt.group_value(c, "DCW"), round),
                            Sample::from_point(mppt.group_value(d, "DCW"), round),
                        );
                    }
                    // Every other module is a PV string.
                    let strings: Vec<usize> = (0..mppt.group_count())
                        .filter(|i| Some(*i) != charge && Some(*i) != discharge)
                        .collect();
                    if !strings.is_empty() {
                        snapshot.pv_power_w = sum(strings
                            .iter()
                            .map(|i| Sample::from_point(mppt.group_value(*i, "DCW"), round)));
                        snapshot.pv_wh = sum(strings.iter().map(|i| {
                            Sample::from_point(self.counter(mppt.group_value(*i, "DCWH")), floor)
                        }));
                    }
                }
                Err(sample) => {
                    snapshot.battery_charge_wh = sample.clone();
                    snapshot.battery_discharge_wh = sample.clone();
                    snapshot.pv_power_w = sample.clone();
                    snapshot.pv_wh = sample;
                }
            }
        }
        let no_meter = self.meter.is_none();
        // Without PV strings in model 160, the inverter's DC side is the PV generator as long
        // as no battery shares it (no storage model, no battery modules).
        let inverter_is_pv = snapshot.pv_power_w == Sample::NotImplemented
            && self.storage.is_none()
            && !battery_modules;
        if let Some(loc) = self.inverter
            && (no_meter || inverter_is_pv)
        {
            match read_or_sample(link, loc).await? {
                Ok(inverter) => {
                    if no_meter {
                        // No grid meter: the inverter's lifetime production is what it feeds
                        // out, and its output power flows toward the grid (negative import).
                        snapshot.export_wh =
                            Sample::from_point(self.counter(inverter.value("WH")), floor);
                        snapshot.power_w = Sample::from_point(inverter.value("W"), round).negate();
                    }
                    if inverter_is_pv {
                        snapshot.pv_power_w = match inverter.value("DCW") {
                            Err(PointError::NotImplemented | PointError::UnknownPoint { .. }) => {
                                Sample::from_point(inverter.value("W"), round)
                            }
                            dcw => Sample::from_point(dcw, round),
                        };
                        snapshot.pv_wh =
                            Sample::from_point(self.counter(inverter.value("WH")), floor);
                    }
                }
                Err(sample) => {
                    if no_meter {
                        snapshot.export_wh = sample.clone();
                        snapshot.power_w = sample.clone();
                    }
                    if inverter_is_pv {
                        snapshot.pv_power_w = sample.clone();
                        snapshot.pv_wh = sample;
                    }
                }
            }
        }
        if let Some(loc) = self.storage {
            let point = if loc.id == STORAGE_MODEL {
                "ChaState"
            } else {
                "SoC"
            };
            snapshot.soc_bp = match read_or_sample(link, loc).await? {
                Ok(storage) => Sample::from_point(storage.value(point), percent_to_bp),
                Err(sample) => sample,
            };
        }
        Ok(snapshot)
    }

    /// A lifetime counter as the manufacturer meant it.
    fn counter(&self, v: Result<Scaled, PointError>) -> Result<Scaled, PointError> {
        if self.quirks.signed_accumulators {
            unsign_accumulator(v)
        } else {
            v
        }
    }

    /// 0-based indexes of the model 160 modules that count battery charge and discharge:
    /// as configured, or found by their `IDStr` label.
    fn battery_modules(&self, mppt: &ModelBlock) -> (Option<usize>, Option<usize>) {
        let labels: Vec<String> = (0..mppt.group_count())
            .map(|i| {
                mppt.group_text(i, "IDStr")
                    .unwrap_or_default()
                    .to_ascii_lowercase()
            })
            .collect();
        let discharge = labels.iter().position(|l| l.contains("dis"));
        let charge = labels
            .iter()
            .position(|l| l.contains("cha") && !l.contains("dis"));
        let pick = |configured: Option<usize>, found| match configured {
            Some(n) => n.checked_sub(1),
            None => found,
        };
        (
            pick(self.options.battery_charge_module, charge),
            pick(self.options.battery_discharge_module, discharge),
        )
    }
}

/// The sum of samples: a value only when every one has a value; otherwise the first reason.
fn sum(samples: impl Iterator<Item = Sample>) -> Sample {
    let mut total = 0i64;
    for sample in samples {
        match sample {
            Sample::Value(v) => total = total.saturating_add(v),
            other => return other,
        }
    }
    Sample::Value(total)
}

/// `a − b`, a value only when both have one.
fn difference(a: Sample, b: Sample) -> Sample {
    sum([a, b.negate()].into_iter())
}

/// A model that answered with an exception gives device-error samples for its quantities; a
/// broken link ends the whole poll.
async fn read_or_sample(
    link: &mut ModbusLink,
    loc: ModelLocation,
) -> Result<Result<ModelBlock, Sample>, PollError> {
    match sunspec::read_model(link, loc).await {
        Ok(block) => Ok(Ok(block)),
        Err(SunSpecError::Link(e)) if e.is_exception() => {
            Ok(Err(Sample::DeviceError(format!("model {}: {e}", loc.id))))
        }
        Err(SunSpecError::Decode { id, reason }) => {
            Ok(Err(Sample::DeviceError(format!("model {id}: {reason}"))))
        }
        Err(e) => Err(e.into()),
    }
}

fn identity_from_common(common: &ModelBlock) -> DeviceIdentity {
    let text = |point: &str| {
        let mut t = common.text(point).unwrap_or_default();
        // Keep within a bytes32 on a character boundary.
        while t.len() > gridshare_core::reading::MAX_TEXT_LEN {
            t.pop();
        }
        t.replace('\0', "")
    };
    // Trimmed to 32 bytes without NULs above, so the identity is always valid.
    DeviceIdentity::new(text("Mn"), text("Md"), text("SN")).unwrap_or_default()
}

fn floor(v: Scaled) -> Option<i64> {
    v.floor_int()
}

fn round(v: Scaled) -> Option<i64> {
    v.round_int()
}

fn percent_to_bp(v: Scaled) -> Option<i64> {
    v.round_int_shifted(2)
}

/// A device read through a register profile.
#[derive(Debug, Clone)]
pub struct ProfileDevice {
    /// The register map.
    pub profile: RegisterProfile,
    /// Identity from the configuration (such meters have no identity registers in common).
    pub identity: DeviceIdentity,
}

impl ProfileDevice {
    /// Reads every span of the profile, each in one request.
    pub async fn poll(&self, link: &mut ModbusLink) -> Result<Snapshot, PollError> {
        let mut data = Vec::new();
        for span in self.profile.read_plan() {
            let table = match span.function {
                Function::Holding => Table::Holding,
                Function::Input => Table::Input,
            };
            match link.read(table, span.address, span.count).await {
                Ok(regs) => data.push((span, regs)),
                // The registers of this span read as `NotRead`: device errors, not zeros.
                Err(e) if e.is_exception() => {
                    tracing::warn!(target: "profile", ?span, "read refused: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut snapshot = Snapshot::not_implemented();
        for (quantity, result) in self.profile.decode(&data) {
            match quantity {
                Quantity::ImportWh => snapshot.import_wh = Sample::from_point(result, floor),
                Quantity::ExportWh => snapshot.export_wh = Sample::from_point(result, floor),
                Quantity::BatteryChargeWh => {
                    snapshot.battery_charge_wh = Sample::from_point(result, floor);
                }
                Quantity::BatteryDischargeWh => {
                    snapshot.battery_discharge_wh = Sample::from_point(result, floor);
                }
                Quantity::PowerW => snapshot.power_w = Sample::from_point(result, round),
                Quantity::SocPercent => snapshot.soc_bp = Sample::from_point(result, percent_to_bp),
                Quantity::PvPowerW => snapshot.pv_power_w = Sample::from_point(result, round),
                Quantity::PvWh => snapshot.pv_wh = Sample::from_point(result, floor),
                Quantity::BatteryPowerW => {
                    snapshot.battery_power_w = Sample::from_point(result, round);
                }
            }
        }
        Ok(snapshot)
    }
}

/// Another device on the same bus (another unit id) that completes the reading: a grid meter
/// beside an inverter, or another service of a gateway (Victron GX).
#[derive(Debug, Clone)]
pub struct ExtraDevice {
    /// Its unit id.
    pub unit_id: u8,
    /// Its register map.
    pub device: ProfileDevice,
    /// The quantities it provides; empty: whatever the devices before it do not implement.
    pub quantities: Vec<Quantity>,
}

impl ExtraDevice {
    /// Reads it on `link` (switching to its unit id and back to `home_unit`) and puts what it
    /// provides into `snapshot`.
    pub async fn poll_into(
        &self,
        link: &mut ModbusLink,
        home_unit: u8,
        snapshot: &mut Snapshot,
    ) -> Result<(), PollError> {
        link.set_unit(self.unit_id);
        let polled = self.device.poll(link).await;
        link.set_unit(home_unit);
        let mut polled = polled?;
        for q in QUANTITIES {
            let ours = polled.sample_mut(q);
            let take = if self.quantities.is_empty() {
                *snapshot.sample_mut(q) == Sample::NotImplemented && *ours != Sample::NotImplemented
            } else {
                self.quantities.contains(&q)
            };
            if take {
                *snapshot.sample_mut(q) = std::mem::replace(ours, Sample::NotImplemented);
            }
        }
        Ok(())
    }
}

const QUANTITIES: [Quantity; 9] = [
    Quantity::ImportWh,
    Quantity::ExportWh,
    Quantity::BatteryChargeWh,
    Quantity::BatteryDischargeWh,
    Quantity::PowerW,
    Quantity::SocPercent,
    Quantity::PvPowerW,
    Quantity::PvWh,
    Quantity::BatteryPowerW,
];

/// The device as configured: SunSpec (discovered) or a register profile.
#[derive(Debug, Clone)]
pub enum Device {
    /// A SunSpec device.
    SunSpec(SunSpecDevice),
    /// A device read through a register profile.
    Profile(ProfileDevice),
}

impl Device {
    /// Its identity.
    pub fn identity(&self) -> &DeviceIdentity {
        match self {
            Self::SunSpec(d) => &d.identity,
            Self::Profile(d) => &d.identity,
        }
    }

    /// One poll.
    pub async fn poll(&self, link: &mut ModbusLink) -> Result<Snapshot, PollError> {
        match self {
            Self::SunSpec(d) => d.poll(link).await,
            Self::Profile(d) => d.poll(link).await,
        }
    }
}
