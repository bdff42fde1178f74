//! Scenario files (TOML): the grid, the households and their assets, the market rules, the
//! period and the seed. Every table rejects unknown keys, and errors name the key and what was
//! expected. `simulate example` prints a commented scenario.

use gridshare_core::market::PriceRule;
pub use gridshare_core::market::{MechanismName, PriceRuleName, SharingKeyName};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A commented example scenario (`scenarios/our-street.toml`).
pub const EXAMPLE: &str = include_str!("../scenarios/our-street.toml");

/// The example as `simulate example` prints it: for a file saved at the repository root, so
/// its grid path points into `simulations/grids/`.
#[must_use]
pub fn example_at_repo_root() -> String {
    EXAMPLE.replace("\"../grids/", "\"simulations/grids/")
}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short name, used for the output directory.
    pub name: String,
    /// Seeds every random choice: same seed, same bytes out.
    #[serde(default)]
    pub seed: u64,
    /// What period to simulate.
    pub period: Period,
    /// The feeder.
    pub grid: GridSettings,
    /// The market rules.
    pub market: MarketSettings,
    /// Household groups.
    #[serde(rename = "households", default)]
    pub groups: Vec<HouseholdGroup>,
    /// The grid's own loads and generators as households, with the grid's profiles.
    #[serde(default)]
    pub grid_households: Option<GridHouseholds>,
    /// Prices for the on-chain cost of settlement.
    #[serde(default)]
    pub settlement: Option<SettlementCost>,
    /// A profile file instead of the built-in set (path relative to the scenario file).
    #[serde(default)]
    pub profiles: Option<PathBuf>,
    /// Directory the scenario was read from (relative paths resolve against it).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// What settling on chain costs: the gas price and the chain's native token in the scenario's
/// currency.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementCost {
    /// Gas price, gwei.
    pub gas_price_gwei: f64,
    /// Price of one native token (ETH on Ethereum and most L2s), in the market's currency.
    pub native_token_price: f64,
}

/// The simulated period, in days of the profile year.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// First day (0 = the profiles' first day, 1 January).
    #[serde(default)]
    pub start_day: u32,
    /// Number of days.
    pub days: u32,
    /// Slot length in minutes: a multiple of the profiles' 15 minutes.
    #[serde(default = "fifteen")]
    pub slot_minutes: u32,
}

fn fifteen() -> u32 {
    15
}

/// The feeder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSettings {
    /// Grid file in the neutral format (relative to the scenario file).
    pub file: PathBuf,
    /// Power factor of household consumption (inductive); feed-in is at unity.
    #[serde(default = "power_factor")]
    pub power_factor: f64,
    /// Lowest allowed voltage, p.u.
    #[serde(default = "v_min")]
    pub v_min_pu: f64,
    /// Highest allowed voltage, p.u.
    #[serde(default = "v_max")]
    pub v_max_pu: f64,
    /// Skip the power flow (market only).
    #[serde(default)]
    pub power_flow: Option<bool>,
}

fn power_factor() -> f64 {
    0.95
}
fn v_min() -> f64 {
    0.9
}
fn v_max() -> f64 {
    1.1
}

/// The market rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketSettings {
    /// `"call"`, `"continuous"`, `"pay-as-offer"` or `"sharing"`.
    pub mechanism: MechanismName,
    /// For `"sharing"`: `"proportional"` (to consumption, the French default) or `"fixed"`.
    #[serde(default)]
    pub sharing_key: SharingKeyName,
    /// For `"sharing"`: what producers receive per kWh shared (default: midway between the
    /// tariffs); consumers pay it plus the grid fee.
    #[serde(default)]
    pub sharing_price_per_kwh: Option<u64>,
    /// For `"call"`: `"midpoint"`, `"k-factor"`, `"k-factor-capped"`, `"marginal-bid"`,
    /// `"marginal-ask"`.
    #[serde(default = "midpoint")]
    pub price_rule: PriceRuleName,
    /// k for `"k-factor"` and `"k-factor-capped"`, basis points.
    #[serde(default = "half")]
    pub k_basis_points: u16,
    /// For `"k-factor-capped"`: the sellers' largest margin over the marginal ask, basis
    /// points of the ask (Power TAC: 500 = 5 %). It bounds the price buyers pay, fees
    /// included: keep it above the grid fees' share of the asks, or sellers would receive
    /// less than they ask and nothing trades.
    #[serde(default = "five_percent")]
    pub seller_max_margin_basis_points: u16,
    /// Retail tariff per kWh: one value, or one per slot of a day (repeating daily).
    pub retail_per_kwh: Vec<u64>,
    /// Feed-in tariff per kWh, same shape rules.
    pub feed_in_per_kwh: Vec<u64>,
    /// Grid fee of the street market per kWh traded locally.
    #[serde(default)]
    pub grid_fee_per_kwh: u64,
    /// Grid fee of each feeder's market per kWh: paid by every trade within or out of a
    /// feeder (houses sit under their feeder, feeders under the street market).
    #[serde(default)]
    pub feeder_fee_per_kwh: u64,
    /// Or a percentage of the seller's receipt, in basis points (not both).
    #[serde(default)]
    pub grid_fee_basis_points: u64,
    /// Token units per currency unit, for display (e.g. 100 000 units = 1 EUR).
    #[serde(default = "units")]
    pub units_per_currency: u64,
    /// Currency name for display.
    #[serde(default = "eur")]
    pub currency: String,
}

fn midpoint() -> PriceRuleName {
    PriceRuleName::Midpoint
}
fn half() -> u16 {
    5_000
}
fn five_percent() -> u16 {
    500
}
fn units() -> u64 {
    100_000
}
fn eur() -> String {
    "EUR".into()
}

/// A trading agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentName {
    /// Grid Singularity's price ramp: offers start at retail and fall to feed-in, bids start at
    /// feed-in and rise to retail, over the slot's order window; energy from a perfect forecast.
    Ramp,
    /// The engine's automatic rule: one order per slot sized from the last slot's net grid
    /// energy (persistence), at fixed limit prices.
    Forecast,
    /// No trading: everything with the utility.
    None,
}

/// The grid's own loads and static generators (SimBench) as households: each in-service load
/// with a `profile` is a household drawing `p_mw × <profile>_pload(t)` and
/// `q_mvar × <profile>_qload(t)`; each generator with a profile feeds `p_mw × <profile>(t)` at
/// the household on its bus (or is a producer of its own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridHouseholds {
    /// The grid's profile file (relative to the scenario file), as written by
    /// `export_grids.py`; its rows are the quarter-hours of the profile year.
    pub profiles: PathBuf,
    /// First day of the profile year, `YYYY-MM-DD` (for the time column of the output).
    #[serde(default = "simbench_year")]
    pub year_start: String,
    /// The trading agent of every household.
    #[serde(default = "forecast")]
    pub agent: AgentName,
    /// Ramp agent: price updates per slot.
    #[serde(default = "ramp_steps")]
    pub ramp_steps: u32,
    /// Forecast agent: sell surplus at no less than this per kWh (default: midway).
    #[serde(default)]
    pub sell_at_least_per_kwh: Option<u64>,
    /// Forecast agent: buy need at no more than this per kWh (default: midway).
    #[serde(default)]
    pub buy_at_most_per_kwh: Option<u64>,
}

fn simbench_year() -> String {
    "2016-01-01".into()
}
fn forecast() -> AgentName {
    AgentName::Forecast
}

/// How a battery is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatteryStrategy {
    /// Charge from surplus, discharge into every need.
    SelfConsumption,
    /// Charge from surplus; discharge only while local energy is not cheap (the last slot's
    /// local price at or above a threshold, or no local trade).
    MarketAware,
}

fn self_consumption() -> BatteryStrategy {
    BatteryStrategy::SelfConsumption
}

/// A group of similar households.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HouseholdGroup {
    /// Name prefix (households are `name-1`, `name-2`, ...).
    pub name: String,
    /// How many.
    #[serde(default = "one")]
    pub count: u32,
    /// Load profile column(s); with several, each household draws one (seeded).
    pub load_profiles: Vec<String>,
    /// Annual consumption, kWh.
    pub annual_kwh: f64,
    /// Each household's consumption varies by up to ± this fraction (seeded).
    #[serde(default)]
    pub annual_kwh_spread: f64,
    /// Electric-vehicle charging profile column (e.g. `sb_ev_home_a`), added to the load.
    #[serde(default)]
    pub ev_profile: Option<String>,
    /// Annual energy of the EV charging, kWh.
    #[serde(default)]
    pub ev_annual_kwh: f64,
    /// Heat-pump profile column (e.g. `sb_hp_air`), added to the load.
    #[serde(default)]
    pub heat_pump_profile: Option<String>,
    /// Annual electricity of the heat pump, kWh.
    #[serde(default)]
    pub heat_pump_annual_kwh: f64,
    /// PV peak power, kWp (0: none).
    #[serde(default)]
    pub pv_kwp: f64,
    /// PV profile column (kW per kWp; default `pv_south`). Give this or `pv_orientation`.
    #[serde(default)]
    pub pv_profile: Option<String>,
    /// PV computed from the built-in irradiance year for modules of this tilt and azimuth
    /// (`{ tilt_deg = 30, azimuth_deg = 200 }`; see [`crate::solar`]), instead of a profile
    /// column.
    #[serde(default)]
    pub pv_orientation: Option<PvOrientation>,
    /// Battery capacity, kWh (0: none).
    #[serde(default)]
    pub battery_kwh: f64,
    /// Weight of each household of the group in a fixed sharing key.
    #[serde(default = "weight")]
    pub share_weight: f64,
    /// Battery charge and discharge power, kW.
    #[serde(default)]
    pub battery_kw: f64,
    /// `"self-consumption"` (discharge into every need) or `"market-aware"` (keep the charge
    /// while the last slot's local price was below `battery_hold_below_per_kwh`).
    #[serde(default = "self_consumption")]
    pub battery_strategy: BatteryStrategy,
    /// Market-aware battery: the local price below which it buys rather than discharges
    /// (default: midway between the tariffs).
    #[serde(default)]
    pub battery_hold_below_per_kwh: Option<u64>,
    /// Round-trip efficiency (split evenly between charging and discharging).
    #[serde(default = "efficiency")]
    pub battery_round_trip_efficiency: f64,
    /// The trading agent.
    #[serde(default = "ramp")]
    pub agent: AgentName,
    /// Ramp agent: price updates per slot.
    #[serde(default = "ramp_steps")]
    pub ramp_steps: u32,
    /// Forecast agent: sell surplus at no less than this per kWh (default: midway).
    #[serde(default)]
    pub sell_at_least_per_kwh: Option<u64>,
    /// Forecast agent: buy need at no more than this per kWh (default: midway).
    #[serde(default)]
    pub buy_at_most_per_kwh: Option<u64>,
    /// Forecast agent: sell nothing while the battery is below this, %.
    #[serde(default)]
    pub keep_battery_above_percent: Option<f64>,
}

/// How a group's PV modules face.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvOrientation {
    /// Tilt from horizontal, degrees: 0 (flat) to 90 (a façade).
    pub tilt_deg: f64,
    /// Direction the modules face, degrees clockwise from north: 90 east, 180 south, 270 west.
    pub azimuth_deg: f64,
}

impl HouseholdGroup {
    /// The profile column of the group's PV: the one named, or the one computed for its
    /// orientation (see [`crate::sim::oriented_pv_column`]).
    #[must_use]
    pub fn pv_column(&self) -> String {
        match (&self.pv_profile, self.pv_orientation) {
            (_, Some(o)) => crate::sim::oriented_pv_column(o),
            (Some(name), None) => name.clone(),
            (None, None) => "pv_south".into(),
        }
    }
}

fn weight() -> f64 {
    1.0
}
fn one() -> u32 {
    1
}
fn efficiency() -> f64 {
    0.9
}
fn ramp() -> AgentName {
    AgentName::Ramp
}
fn ramp_steps() -> u32 {
    5
}

/// Why a scenario was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("scenario {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with the key, line and expectation.
        message: String,
    },
    /// A value out of range.
    #[error("scenario: `{key}` = {value}: {expected}")]
    Invalid {
        /// The key, e.g. `households[1].pv_kwp`.
        key: String,
        /// The value found.
        value: String,
        /// What is expected.
        expected: String,
    },
}

fn invalid(
    key: impl Into<String>,
    value: impl ToString,
    expected: impl Into<String>,
) -> ScenarioError {
    ScenarioError::Invalid {
        key: key.into(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// Parses and checks scenario text; relative paths resolve against `base_dir`.
    pub fn parse(text: &str, origin: &str, base_dir: PathBuf) -> Result<Self, ScenarioError> {
        let mut s: Self = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        s.base_dir = base_dir;
        s.check()?;
        Ok(s)
    }

    /// Checks a scenario given as a TOML table (a sweep's variant of a base scenario).
    pub fn from_table(
        table: toml::Table,
        origin: &str,
        base_dir: PathBuf,
    ) -> Result<Self, ScenarioError> {
        let mut s: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ScenarioError::Parse {
                path: origin.to_owned(),
                message: e.to_string(),
            })?;
        s.base_dir = base_dir;
        s.check()?;
        Ok(s)
    }

    /// A path from the scenario, resolved against the scenario's directory.
    #[must_use]
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub(crate) fn check(&self) -> Result<(), ScenarioError> {
        let p = &self.period;
        if p.days == 0 {
            return Err(invalid("period.days", p.days, "expected at least 1"));
        }
        if p.slot_minutes == 0 || !p.slot_minutes.is_multiple_of(15) || p.slot_minutes > 1440 {
            return Err(invalid(
                "period.slot_minutes",
                p.slot_minutes,
                "expected a multiple of 15 (the profiles' resolution) up to 1440",
            ));
        }
        if !1440u32.is_multiple_of(p.slot_minutes) {
            return Err(invalid(
                "period.slot_minutes",
                p.slot_minutes,
                "expected a divisor of a day (15, 30, 45 is not, 60, ...)",
            ));
        }
        if let Some(c) = &self.settlement {
            for (key, v) in [
                ("settlement.gas_price_gwei", c.gas_price_gwei),
                ("settlement.native_token_price", c.native_token_price),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(invalid(key, v, "expected a finite number, 0 or more"));
                }
            }
        }
        let g = &self.grid;
        if !(g.power_factor > 0.0 && g.power_factor <= 1.0) {
            return Err(invalid(
                "grid.power_factor",
                g.power_factor,
                "expected a number in (0, 1]",
            ));
        }
        if !(g.v_min_pu > 0.0 && g.v_min_pu < g.v_max_pu) {
            return Err(invalid(
                "grid.v_min_pu",
                g.v_min_pu,
                "expected a positive number below grid.v_max_pu",
            ));
        }
        let m = &self.market;
        let slots_per_day = usize::try_from(1440 / p.slot_minutes).unwrap_or(96);
        for (key, v) in [
            ("market.retail_per_kwh", &m.retail_per_kwh),
            ("market.feed_in_per_kwh", &m.feed_in_per_kwh),
        ] {
            if v.len() != 1 && v.len() != slots_per_day {
                return Err(invalid(
                    key,
                    format!("a list of {}", v.len()),
                    format!("expected one value, or {slots_per_day} (one per slot of a day)"),
                ));
            }
        }
        for i in 0..slots_per_day {
            let r = m.retail_per_kwh[i % m.retail_per_kwh.len()];
            let f = m.feed_in_per_kwh[i % m.feed_in_per_kwh.len()];
            if f > r {
                return Err(invalid(
                    "market.feed_in_per_kwh",
                    f,
                    format!("expected at most the retail tariff {r} (slot {i} of the day)"),
                ));
            }
        }
        if m.grid_fee_per_kwh > 0 && m.grid_fee_basis_points > 0 {
            return Err(invalid(
                "market.grid_fee_basis_points",
                m.grid_fee_basis_points,
                "expected 0 when market.grid_fee_per_kwh is set (one kind of fee)",
            ));
        }
        if m.grid_fee_basis_points > 10_000 {
            return Err(invalid(
                "market.grid_fee_basis_points",
                m.grid_fee_basis_points,
                "expected at most 10000 (100 %)",
            ));
        }
        if m.k_basis_points > 10_000 {
            return Err(invalid(
                "market.k_basis_points",
                m.k_basis_points,
                "expected at most 10000",
            ));
        }
        if m.units_per_currency == 0 {
            return Err(invalid(
                "market.units_per_currency",
                0,
                "expected at least 1",
            ));
        }
        if self.groups.is_empty() && self.grid_households.is_none() {
            return Err(invalid(
                "households",
                "[]",
                "expected at least one [[households]] group, or a [grid_households] table",
            ));
        }
        if let Some(g) = &self.grid_households {
            if g.ramp_steps == 0 || g.ramp_steps > 100 {
                return Err(invalid(
                    "grid_households.ramp_steps",
                    g.ramp_steps,
                    "expected 1 to 100",
                ));
            }
            if crate::sim::parse_day(&g.year_start).is_none() {
                return Err(invalid(
                    "grid_households.year_start",
                    &g.year_start,
                    "expected a date YYYY-MM-DD",
                ));
            }
        }
        for (i, h) in self.groups.iter().enumerate() {
            let key = |k: &str| format!("households[{i}].{k}");
            let non_neg = |k: &str, v: f64| {
                if v.is_finite() && v >= 0.0 {
                    Ok(())
                } else {
                    Err(invalid(key(k), v, "expected a finite number, 0 or more"))
                }
            };
            non_neg("annual_kwh", h.annual_kwh)?;
            non_neg("ev_annual_kwh", h.ev_annual_kwh)?;
            non_neg("heat_pump_annual_kwh", h.heat_pump_annual_kwh)?;
            non_neg("pv_kwp", h.pv_kwp)?;
            non_neg("battery_kwh", h.battery_kwh)?;
            non_neg("battery_kw", h.battery_kw)?;
            non_neg("share_weight", h.share_weight)?;
            if h.pv_profile.is_some() && h.pv_orientation.is_some() {
                return Err(invalid(
                    key("pv_orientation"),
                    "given with pv_profile",
                    "expected either pv_profile (a profile column) or pv_orientation (computed from irradiance), not both",
                ));
            }
            if let Some(o) = h.pv_orientation {
                if !(0.0..=90.0).contains(&o.tilt_deg) {
                    return Err(invalid(
                        key("pv_orientation.tilt_deg"),
                        o.tilt_deg,
                        "expected 0 (flat) to 90 (vertical) degrees",
                    ));
                }
                if !(0.0..=360.0).contains(&o.azimuth_deg) {
                    return Err(invalid(
                        key("pv_orientation.azimuth_deg"),
                        o.azimuth_deg,
                        "expected 0 to 360 degrees clockwise from north (180: south)",
                    ));
                }
            }
            if h.count == 0 {
                return Err(invalid(key("count"), 0, "expected at least 1"));
            }
            if h.load_profiles.is_empty() {
                return Err(invalid(
                    key("load_profiles"),
                    "[]",
                    "expected at least one profile column",
                ));
            }
            if !(0.0..1.0).contains(&h.annual_kwh_spread) {
                return Err(invalid(
                    key("annual_kwh_spread"),
                    h.annual_kwh_spread,
                    "expected a fraction in [0, 1)",
                ));
            }
            if !(h.battery_round_trip_efficiency > 0.0 && h.battery_round_trip_efficiency <= 1.0) {
                return Err(invalid(
                    key("battery_round_trip_efficiency"),
                    h.battery_round_trip_efficiency,
                    "expected a fraction in (0, 1]",
                ));
            }
            if h.battery_kwh > 0.0 && h.battery_kw <= 0.0 {
                return Err(invalid(
                    key("battery_kw"),
                    h.battery_kw,
                    "expected a power above 0 for a battery",
                ));
            }
            if h.ramp_steps == 0 || h.ramp_steps > 100 {
                return Err(invalid(
                    key("ramp_steps"),
                    h.ramp_steps,
                    "expected 1 to 100",
                ));
            }
            if let Some(k) = h
                .keep_battery_above_percent
                .filter(|k| !(0.0..=100.0).contains(k))
            {
                return Err(invalid(
                    key("keep_battery_above_percent"),
                    k,
                    "expected 0 to 100",
                ));
            }
        }
        Ok(())
    }

    /// The core's price rule for this scenario.
    #[must_use]
    pub fn price_rule(&self) -> PriceRule {
        self.market.price_rule.rule(
            self.market.k_basis_points,
            self.market.seller_max_margin_basis_points,
        )
    }

    /// Total households.
    #[must_use]
    pub fn household_count(&self) -> usize {
        self.groups.iter().map(|g| g.count as usize).sum()
    }
}
