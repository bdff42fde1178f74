//! What a household tells the calculator: three numbers up front (annual consumption, PV kWp,
//! battery kWh), everything else defaulted. Read from TOML (`simulate roi`) or JSON (the
//! engine's `POST /api/v1/roi`); unknown keys and values of the wrong type are refused with the
//! key's full path, values out of range with the field and what is expected.

use serde::{Deserialize, Serialize};

/// A commented example household (`scenarios/household.toml`).
pub const EXAMPLE: &str = include_str!("../../scenarios/household.toml");

/// Why the calculator refused its input.
#[derive(Debug, thiserror::Error)]
pub enum RoiError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Syntax, an unknown key or a value of the wrong type.
    #[error("{origin}: `{field}`: {message}")]
    Parse {
        /// Where the input came from.
        origin: String,
        /// The key's path, e.g. `token.volatility` (`.` for the document).
        field: String,
        /// The parser's message.
        message: String,
    },
    /// A value out of range.
    #[error("`{field}` = {value}: {expected}")]
    Invalid {
        /// The key, e.g. `costs.pv_per_kwp`.
        field: String,
        /// The value found.
        value: String,
        /// What is expected.
        expected: String,
    },
    /// The neighbourhood's scenario is invalid.
    #[error("community: {0}")]
    Scenario(#[from] crate::scenario::ScenarioError),
    /// The simulation of the household's year failed.
    #[error("simulating the household's year: {0}")]
    Simulation(#[from] crate::sim::SimulationError),
}

impl RoiError {
    /// The input field at fault, if one is.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Parse { field, .. } | Self::Invalid { field, .. } => Some(field),
            Self::Scenario(_) => Some("community"),
            Self::Read { .. } | Self::Simulation(_) => None,
        }
    }
}

pub(crate) fn invalid(
    field: impl Into<String>,
    value: impl ToString,
    expected: impl Into<String>,
) -> RoiError {
    RoiError::Invalid {
        field: field.into(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// Everything the calculator needs; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoiInput {
    /// Annual electricity consumption, kWh.
    pub annual_kwh: f64,
    /// PV peak power, kWp (0: none).
    pub pv_kwp: f64,
    /// Battery capacity, kWh (0: none).
    pub battery_kwh: f64,
    /// The household's profiles, battery power and grid connection.
    pub household: HouseholdSettings,
    /// The neighbourhood it would join.
    pub community: CommunitySettings,
    /// Hardware and running costs.
    pub costs: Costs,
    /// Tariffs and their yearly change.
    pub tariffs: Tariffs,
    /// The network token: price, its drift and volatility, the paths to draw, the stake.
    pub token: TokenSettings,
    /// The network's size and growth (rewards are shared among its meters).
    pub network: NetworkSettings,
    /// Discount rate, lifetime, degradation.
    pub finance: Finance,
}

impl Default for RoiInput {
    fn default() -> Self {
        Self {
            annual_kwh: 4_000.0,
            pv_kwp: 8.0,
            battery_kwh: 8.0,
            household: HouseholdSettings::default(),
            community: CommunitySettings::default(),
            costs: Costs::default(),
            tariffs: Tariffs::default(),
            token: TokenSettings::default(),
            network: NetworkSettings::default(),
            finance: Finance::default(),
        }
    }
}

/// The household's profiles, battery power and grid connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HouseholdSettings {
    /// Load profile column of the built-in set (`h0`, `h0_dyn`, `sb_h0_a`, ...).
    pub load_profile: String,
    /// PV profile column (`pv_south`, `pv_east`, `pv_west`).
    pub pv_profile: String,
    /// Battery charge and discharge power, kW (default: half the capacity per hour).
    pub battery_kw: Option<f64>,
    /// Battery round-trip efficiency.
    pub battery_round_trip_efficiency: f64,
    /// The grid connection's rating, kW: PV, battery power and the household's draw must fit.
    pub connection_kw: f64,
}

impl Default for HouseholdSettings {
    fn default() -> Self {
        Self {
            load_profile: "sb_h0_a".into(),
            pv_profile: "pv_south".into(),
            battery_kw: None,
            battery_round_trip_efficiency: 0.9,
            connection_kw: 30.0,
        }
    }
}

/// The neighbourhood the household would join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommunitySettings {
    /// A shipped neighbourhood (`our-street`).
    pub neighbourhood: String,
    /// Or a scenario file (relative to the household file; `simulate roi` only): its
    /// households, grid and market rules, with the household added to them.
    pub scenario: Option<std::path::PathBuf>,
}

impl Default for CommunitySettings {
    fn default() -> Self {
        Self {
            neighbourhood: "our-street".into(),
            scenario: None,
        }
    }
}

/// Hardware and running costs, in the community's currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Costs {
    /// PV system per kWp, installed (0 if the panels are already on the roof).
    pub pv_per_kwp: f64,
    /// Battery per kWh, installed.
    pub battery_per_kwh: f64,
    /// The meter box (Raspberry Pi, meter, enclosure) the network needs.
    pub meter_box: f64,
    /// Installation beyond the per-kWp and per-kWh prices (electrician, scaffolding).
    pub installation: f64,
    /// Battery life, years; it is replaced at the end of each life inside the lifetime.
    pub battery_life_years: u32,
    /// Replacement battery per kWh.
    pub battery_replacement_per_kwh: f64,
    /// Running costs per year (insurance, maintenance, the meter box's connection).
    pub operation_per_year: f64,
}

impl Default for Costs {
    fn default() -> Self {
        Self {
            pv_per_kwp: 1_300.0,
            battery_per_kwh: 600.0,
            meter_box: 350.0,
            installation: 1_500.0,
            battery_life_years: 12,
            battery_replacement_per_kwh: 350.0,
            operation_per_year: 150.0,
        }
    }
}

/// Tariffs, in the community's currency per kWh (default: the community's own), and their
/// yearly change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tariffs {
    /// Retail tariff per kWh (default: the community's).
    pub retail_per_kwh: Option<f64>,
    /// Feed-in tariff per kWh (default: the community's).
    pub feed_in_per_kwh: Option<f64>,
    /// Grid fee per kWh traded locally (default: the community's).
    pub grid_fee_per_kwh: Option<f64>,
    /// Yearly change of the retail tariff (0.02 = +2 % a year).
    pub retail_change: f64,
    /// Yearly change of the feed-in tariff.
    pub feed_in_change: f64,
}

impl Default for Tariffs {
    fn default() -> Self {
        Self {
            retail_per_kwh: None,
            feed_in_per_kwh: None,
            grid_fee_per_kwh: None,
            retail_change: 0.02,
            feed_in_change: 0.0,
        }
    }
}

/// How token prices are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PriceModel {
    /// Geometric Brownian motion with `drift` and `volatility`, yearly steps.
    Gbm,
    /// Each year's return drawn from the log returns of `history` (with replacement).
    Bootstrap,
}

/// The network token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// Price of one token now, in the community's currency.
    pub price: f64,
    /// Expected yearly log-return drift (GBM's μ).
    pub drift: f64,
    /// Yearly volatility (GBM's σ; 0.8 = 80 %).
    pub volatility: f64,
    /// `"gbm"` or `"bootstrap"`.
    pub model: PriceModel,
    /// For `"bootstrap"`: observed prices at regular intervals, oldest first.
    pub history: Vec<f64>,
    /// For `"bootstrap"`: observations per year in `history` (12 monthly, 52 weekly, 365 daily).
    pub history_per_year: u32,
    /// Price paths drawn.
    pub paths: u32,
    /// Seeds the paths: same seed, same answer.
    pub seed: u64,
    /// Tokens the household stakes on its meter (default: the contracts' minimum stake).
    pub stake_tokens: Option<f64>,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            price: 0.05,
            drift: 0.0,
            volatility: 0.8,
            model: PriceModel::Gbm,
            history: Vec::new(),
            history_per_year: 12,
            paths: 10_000,
            seed: 1,
            stake_tokens: None,
        }
    }
}

/// The network the emission is shared across.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSettings {
    /// Meters earning rewards in the household's first year.
    pub meters: f64,
    /// Yearly growth of the number of meters (0.25 = +25 % a year).
    pub growth: f64,
    /// The number of meters stops growing here.
    pub max_meters: f64,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            meters: 2_000.0,
            growth: 0.25,
            max_meters: 200_000.0,
        }
    }
}

/// Discount rate, lifetime, degradation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Finance {
    /// Yearly discount rate (what the money would earn elsewhere).
    pub discount_rate: f64,
    /// Years the investment runs.
    pub lifetime_years: u32,
    /// Yearly loss of PV output (0.005 = 0.5 % a year).
    pub degradation: f64,
}

impl Default for Finance {
    fn default() -> Self {
        Self {
            discount_rate: 0.04,
            lifetime_years: 25,
            degradation: 0.005,
        }
    }
}

fn path_error<E: std::fmt::Display>(origin: &str, e: serde_path_to_error::Error<E>) -> RoiError {
    RoiError::Parse {
        origin: origin.to_owned(),
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    }
}

impl RoiInput {
    /// Parses and checks TOML.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, RoiError> {
        let de = toml::Deserializer::parse(text).map_err(|e| RoiError::Parse {
            origin: origin.to_owned(),
            field: ".".into(),
            message: e.to_string(),
        })?;
        let input: Self =
            serde_path_to_error::deserialize(de).map_err(|e| path_error(origin, e))?;
        input.check()?;
        Ok(input)
    }

    /// Parses and checks JSON.
    pub fn from_json(text: &[u8]) -> Result<Self, RoiError> {
        let mut de = serde_json::Deserializer::from_slice(text);
        let input: Self =
            serde_path_to_error::deserialize(&mut de).map_err(|e| path_error("request", e))?;
        input.check()?;
        Ok(input)
    }

    /// Parses and checks a JSON value (an HTTP body already read as JSON).
    pub fn from_json_value(value: serde_json::Value) -> Result<Self, RoiError> {
        let input: Self =
            serde_path_to_error::deserialize(value).map_err(|e| path_error("request", e))?;
        input.check()?;
        Ok(input)
    }

    /// What the simulated year depends on, as a cache key: two inputs with the same key have
    /// the same [`super::EnergyYear`] (the token, costs and finance do not enter it).
    #[must_use]
    pub fn energy_key(&self) -> String {
        serde_json::json!([
            self.annual_kwh,
            self.pv_kwp,
            self.battery_kwh,
            self.household,
            self.community,
            self.tariffs.retail_per_kwh,
            self.tariffs.feed_in_per_kwh,
            self.tariffs.grid_fee_per_kwh,
        ])
        .to_string()
    }

    /// The battery's power, kW.
    #[must_use]
    pub fn battery_kw(&self) -> f64 {
        self.household.battery_kw.unwrap_or(self.battery_kwh / 2.0)
    }

    /// Checks every value's range; the error names the field.
    pub fn check(&self) -> Result<(), RoiError> {
        let range = |field: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    v,
                    format!("expected a number from {lo} to {hi}"),
                ))
            }
        };
        let cost = |field: &str, v: f64| {
            if (0.0..=1e9).contains(&v) {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    v,
                    "expected a cost of 0 or more (at most 1e9)",
                ))
            }
        };
        let h = &self.household;
        range("household.connection_kw", h.connection_kw, 1.0, 1_000.0)?;
        range("annual_kwh", self.annual_kwh, 1.0, 1e6)?;
        // A household drawing its whole year's energy at the connection's full rating all
        // year long is the most a connection can carry.
        if self.annual_kwh > h.connection_kw * 8_760.0 {
            return Err(invalid(
                "annual_kwh",
                self.annual_kwh,
                format!(
                    "expected at most what the {} kW grid connection can carry in a year ({} kWh); raise household.connection_kw if the connection is larger",
                    h.connection_kw,
                    h.connection_kw * 8_760.0
                ),
            ));
        }
        range("pv_kwp", self.pv_kwp, 0.0, 1_000.0)?;
        if self.pv_kwp > h.connection_kw {
            return Err(invalid(
                "pv_kwp",
                self.pv_kwp,
                format!(
                    "expected at most the grid connection's {} kW (household.connection_kw): the PV could not feed in",
                    h.connection_kw
                ),
            ));
        }
        range("battery_kwh", self.battery_kwh, 0.0, 1_000.0)?;
        if let Some(kw) = h.battery_kw {
            range("household.battery_kw", kw, 0.0, 1_000.0)?;
            if self.battery_kwh > 0.0 && kw <= 0.0 {
                return Err(invalid(
                    "household.battery_kw",
                    kw,
                    "expected a power above 0 for a battery",
                ));
            }
        }
        if self.battery_kw() > h.connection_kw {
            return Err(invalid(
                "household.battery_kw",
                self.battery_kw(),
                format!(
                    "expected at most the grid connection's {} kW (household.connection_kw)",
                    h.connection_kw
                ),
            ));
        }
        let eta = h.battery_round_trip_efficiency;
        if !(eta.is_finite() && eta > 0.0 && eta <= 1.0) {
            return Err(invalid(
                "household.battery_round_trip_efficiency",
                eta,
                "expected a fraction in (0, 1]",
            ));
        }
        let c = &self.costs;
        cost("costs.pv_per_kwp", c.pv_per_kwp)?;
        cost("costs.battery_per_kwh", c.battery_per_kwh)?;
        cost("costs.meter_box", c.meter_box)?;
        cost("costs.installation", c.installation)?;
        cost(
            "costs.battery_replacement_per_kwh",
            c.battery_replacement_per_kwh,
        )?;
        cost("costs.operation_per_year", c.operation_per_year)?;
        if c.battery_life_years == 0 {
            return Err(invalid(
                "costs.battery_life_years",
                0,
                "expected at least 1 year",
            ));
        }
        let t = &self.tariffs;
        for (field, v) in [
            ("tariffs.retail_per_kwh", t.retail_per_kwh),
            ("tariffs.feed_in_per_kwh", t.feed_in_per_kwh),
            ("tariffs.grid_fee_per_kwh", t.grid_fee_per_kwh),
        ] {
            if let Some(v) = v {
                range(field, v, 0.0, 100.0)?;
            }
        }
        range("tariffs.retail_change", t.retail_change, -0.5, 0.5)?;
        range("tariffs.feed_in_change", t.feed_in_change, -0.5, 0.5)?;
        let k = &self.token;
        range("token.price", k.price, 0.0, 1e9)?;
        range("token.drift", k.drift, -1.0, 1.0)?;
        // Design: 200 % a year is already beyond any token that lived long; above that the
        // lognormal's median and mean drift apart by more than e², and the answer says nothing.
        range("token.volatility", k.volatility, 0.0, 2.0)?;
        if k.paths == 0 || k.paths > 100_000 {
            return Err(invalid("token.paths", k.paths, "expected 1 to 100000"));
        }
        if k.history_per_year == 0 || k.history_per_year > 366 {
            return Err(invalid(
                "token.history_per_year",
                k.history_per_year,
                "expected 1 to 366",
            ));
        }
        if k.history.len() > 100_000 {
            return Err(invalid(
                "token.history",
                format!("a list of {}", k.history.len()),
                "expected at most 100000 prices",
            ));
        }
        if let Some(i) = k.history.iter().position(|p| !(p.is_finite() && *p > 0.0)) {
            return Err(invalid(
                format!("token.history[{i}]"),
                k.history[i],
                "expected a price above 0",
            ));
        }
        if k.model == PriceModel::Bootstrap && k.history.len() < 2 {
            return Err(invalid(
                "token.history",
                format!("a list of {}", k.history.len()),
                "expected at least 2 prices for model = \"bootstrap\"",
            ));
        }
        if let Some(s) = k.stake_tokens {
            range("token.stake_tokens", s, 0.0, 1e15)?;
        }
        let n = &self.network;
        range("network.meters", n.meters, 1.0, 1e9)?;
        range("network.growth", n.growth, -0.5, 2.0)?;
        range("network.max_meters", n.max_meters, n.meters, 1e9)?;
        let f = &self.finance;
        range("finance.discount_rate", f.discount_rate, -0.5, 1.0)?;
        if f.lifetime_years == 0 || f.lifetime_years > 50 {
            return Err(invalid(
                "finance.lifetime_years",
                f.lifetime_years,
                "expected 1 to 50 years",
            ));
        }
        range("finance.degradation", f.degradation, 0.0, 0.2)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_to_the_defaults_and_three_numbers_suffice() {
        let example = RoiInput::from_toml(EXAMPLE, "household.toml").expect("example");
        assert_eq!(example, RoiInput::default());
        let three = RoiInput::from_json(br#"{"annual_kwh":3500,"pv_kwp":6,"battery_kwh":5}"#)
            .expect("three numbers");
        assert!((three.battery_kw() - 2.5).abs() < 1e-12);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_field() {
        let e = RoiInput::from_toml("[token]\nvolatilty = 0.5\n", "h.toml").unwrap_err();
        assert_eq!(e.field(), Some("token.volatilty"), "{e}");
        assert!(e.to_string().contains("volatilty"), "{e}");
        let e = RoiInput::from_json(br#"{"costs":{"meter_box":"cheap"}}"#).unwrap_err();
        assert_eq!(e.field(), Some("costs.meter_box"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        for (json, field) in [
            (r#"{"costs":{"pv_per_kwp":-1}}"#, "costs.pv_per_kwp"),
            (
                r#"{"finance":{"lifetime_years":0}}"#,
                "finance.lifetime_years",
            ),
            (r#"{"token":{"volatility":5}}"#, "token.volatility"),
            (r#"{"pv_kwp":40}"#, "pv_kwp"),
            (r#"{"annual_kwh":300000}"#, "annual_kwh"),
            (r#"{"household":{"battery_kw":50}}"#, "household.battery_kw"),
            (r#"{"token":{"model":"bootstrap"}}"#, "token.history"),
            (r#"{"token":{"history":[1,0]}}"#, "token.history[1]"),
            (
                r#"{"network":{"meters":10,"max_meters":5}}"#,
                "network.max_meters",
            ),
        ] {
            let e = RoiInput::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(e.field(), Some(field), "{json}: {e}");
        }
    }
}
