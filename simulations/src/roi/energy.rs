//! The energy half: the household's year inside a neighbourhood, simulated by [`crate::sim`]
//! through the `core` market, three times —
//!
//! - **joined**: with its battery, trading through the community's auction;
//! - **solo**: with its battery, everything with the utility (what is left if the network
//!   stops);
//! - **baseline**: without the battery and without local trading (PV alone).
//!
//! Money here is what the simulator settled, integers in the payment token's smallest unit.

use super::input::{RoiError, RoiInput, invalid};
use crate::grid::GridFile;
use crate::profiles::ProfileSet;
use crate::scenario::{AgentName, BatteryStrategy, HouseholdGroup, Scenario};
use crate::sim::{self, HouseholdTotals, RunResult, SimulationError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The neighbourhoods shipped inside the binary (`community.neighbourhood`).
pub const SHIPPED: &[&str] = &["our-street"];

/// The household's group name in the simulated neighbourhood.
const NAME: &str = "roi-household";

/// A neighbourhood ready to simulate: its scenario, grid and profiles.
#[derive(Debug, Clone)]
pub struct Neighbourhood {
    /// Its name (shipped name or scenario file).
    pub name: String,
    scenario: Scenario,
    grid: GridFile,
    profiles: ProfileSet,
}

impl Neighbourhood {
    /// A shipped neighbourhood, from inside the binary (no files read).
    pub fn shipped(name: &str) -> Result<Self, RoiError> {
        let (text, grid_text, grid_name) = match name {
            "our-street" => (
                crate::scenario::EXAMPLE,
                include_str!("../../grids/kerber_landnetz_kabel_2.json"),
                "kerber_landnetz_kabel_2.json",
            ),
            _ => {
                return Err(invalid(
                    "community.neighbourhood",
                    format!("{name:?}"),
                    format!(
                        "expected one of the shipped neighbourhoods: {}",
                        SHIPPED.join(", ")
                    ),
                ));
            }
        };
        let scenario = Scenario::parse(text, name, PathBuf::new())?;
        let grid = GridFile::parse(grid_text, grid_name).map_err(SimulationError::from)?;
        let profiles = sim::load_profiles(&scenario)?;
        Ok(Self {
            name: name.to_owned(),
            scenario,
            grid,
            profiles,
        })
    }

    /// A shipped neighbourhood, parsed once per process and shared from then on.
    ///
    /// Design: the shipped neighbourhoods are compiled into the binary, so their parse (a year
    /// of profiles decompressed and read, the grid, the scenario) never changes; a server
    /// answering many households pays it once instead of per request.
    pub fn shipped_shared(name: &str) -> Result<Arc<Self>, RoiError> {
        static PARSED: [OnceLock<Arc<Neighbourhood>>; SHIPPED.len()] =
            [const { OnceLock::new() }; SHIPPED.len()];
        let Some(cell) = SHIPPED
            .iter()
            .position(|s| *s == name)
            .and_then(|i| PARSED.get(i))
        else {
            // Not shipped: `shipped` names what is.
            return Self::shipped(name).map(Arc::new);
        };
        if let Some(n) = cell.get() {
            return Ok(Arc::clone(n));
        }
        let parsed = Arc::new(Self::shipped(name)?);
        Ok(Arc::clone(cell.get_or_init(|| parsed)))
    }

    /// The neighbourhood of a request that may not name files (the engine's): a shipped one,
    /// parsed once per process ([`Self::shipped_shared`]); an input naming a scenario file is
    /// refused as by [`Self::for_input`] without a base directory.
    pub fn shared_for_input(input: &RoiInput) -> Result<Arc<Self>, RoiError> {
        if input.community.scenario.is_some() {
            return Self::for_input(input, None).map(Arc::new);
        }
        Self::shipped_shared(&input.community.neighbourhood)
    }

    /// Parses every shipped neighbourhood now (e.g. at a server's start, off the request
    /// path), so that the first request finds them parsed.
    pub fn parse_shipped() -> Result<(), RoiError> {
        for name in SHIPPED {
            Self::shipped_shared(name)?;
        }
        Ok(())
    }

    /// A scenario file of the user's, with its grid and profiles.
    pub fn from_file(path: &Path) -> Result<Self, RoiError> {
        let scenario = Scenario::load(path)?;
        let grid = GridFile::load(&scenario.resolve(&scenario.grid.file))
            .map_err(SimulationError::from)?;
        let profiles = sim::load_profiles(&scenario)?;
        Ok(Self {
            name: path.display().to_string(),
            scenario,
            grid,
            profiles,
        })
    }

    /// The neighbourhood an input names: a scenario file (relative to `base_dir`) if it
    /// gives one, else a shipped one.
    pub fn for_input(input: &RoiInput, base_dir: Option<&Path>) -> Result<Self, RoiError> {
        match (&input.community.scenario, base_dir) {
            (Some(p), Some(base)) => Self::from_file(&base.join(p)),
            (Some(p), None) => Err(invalid(
                "community.scenario",
                p.display(),
                "expected no scenario file here: choose a shipped community.neighbourhood",
            )),
            (None, _) => Self::shipped(&input.community.neighbourhood),
        }
    }
}

/// One variant of the household's year, from the simulator's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HouseholdYear {
    /// Consumption, Wh.
    pub load_wh: u64,
    /// PV production, Wh.
    pub pv_wh: u64,
    /// From the grid, Wh.
    pub import_wh: u64,
    /// To the grid, Wh.
    pub export_wh: u64,
    /// Bought from neighbours, Wh.
    pub bought_wh: u64,
    /// Sold to neighbours, Wh.
    pub sold_wh: u64,
    /// Σ over days of positive daily net export, Wh: what the staking rewards are shared by.
    pub net_export_days_wh: u64,
    /// Largest import or export in one slot, kW.
    pub peak_kw_milli: u64,
    /// What the load would cost at retail with nothing of its own, token units.
    pub without_anything: i64,
    /// What it paid net (local purchases less local sales plus the utility's bill), token
    /// units.
    pub bill: i64,
    /// Saved by using its own energy (directly or through the battery), valued at retail.
    pub own_use: i64,
    /// Gained by trading locally: sales, plus what purchases cost below retail.
    pub local_trading: i64,
    /// The rest of the saving: what the utility paid for feed-in.
    pub feed_in: i64,
}

impl HouseholdYear {
    fn from_totals(t: &HouseholdTotals, slot_s: u32) -> Self {
        let i = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
        let u = |v: u128| i128::try_from(v).unwrap_or(i128::MAX);
        // Values at retail are Σ Wh × price per kWh: one division by 1 000, rounded down.
        let without = u(t.load_at_retail / 1000);
        let bill = u(t.paid) - u(t.received) + t.imbalance;
        let own_use = u(t.own_use_at_retail / 1000);
        let local = u(t.received) + u(t.bought_at_retail / 1000) - u(t.paid);
        let saving = without - bill;
        Self {
            load_wh: t.load_wh,
            pv_wh: t.pv_wh,
            import_wh: t.import_wh,
            export_wh: t.export_wh,
            bought_wh: t.bought_wh,
            sold_wh: t.sold_wh,
            net_export_days_wh: t.net_export_days_wh,
            peak_kw_milli: t.peak_slot_wh * 3600 / u64::from(slot_s.max(1)),
            without_anything: i(without),
            bill: i(bill),
            own_use: i(own_use),
            local_trading: i(local),
            feed_in: i(saving - own_use - local),
        }
    }

    /// What the year saved against buying everything at retail, token units.
    #[must_use]
    pub fn saving(&self) -> i64 {
        self.without_anything.saturating_sub(self.bill)
    }
}

/// The household's simulated year, three ways, and what the network's meters earn by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnergyYear {
    /// The neighbourhood.
    pub neighbourhood: String,
    /// Households in the simulated neighbourhood, the household included.
    pub households: usize,
    /// Slot length, minutes.
    pub slot_minutes: u32,
    /// Token units per currency unit.
    pub units_per_currency: u64,
    /// Currency name.
    pub currency: String,
    /// With battery, trading locally.
    pub joined: HouseholdYear,
    /// With battery, everything with the utility.
    pub solo: HouseholdYear,
    /// Without battery and without local trading.
    pub baseline: HouseholdYear,
    /// The neighbours' mean Σ positive daily net export, Wh: a network meter's share basis.
    pub neighbour_net_export_days_wh: u64,
}

/// Rounds a price in currency per kWh to token units per kWh.
fn units(field: &str, v: f64, per_currency: u64) -> Result<u64, RoiError> {
    #[allow(clippy::cast_precision_loss, reason = "units per currency are small")]
    let x = (v * per_currency as f64).round();
    if (0.0..9e15).contains(&x) {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked just above"
        )]
        Ok(x as u64)
    } else {
        Err(invalid(field, v, "expected a price per kWh of 0 or more"))
    }
}

/// The scenario of one variant: the neighbourhood with the household added, a whole year,
/// market only.
fn variant(
    n: &Neighbourhood,
    input: &RoiInput,
    battery: bool,
    trading: bool,
) -> Result<Scenario, RoiError> {
    let mut s = n.scenario.clone();
    s.period.start_day = 0;
    s.period.days = 365;
    s.grid.power_flow = Some(false);
    let per = s.market.units_per_currency;
    let t = &input.tariffs;
    if let Some(r) = t.retail_per_kwh {
        s.market.retail_per_kwh = vec![units("tariffs.retail_per_kwh", r, per)?];
    }
    if let Some(f) = t.feed_in_per_kwh {
        s.market.feed_in_per_kwh = vec![units("tariffs.feed_in_per_kwh", f, per)?];
    }
    if let Some(g) = t.grid_fee_per_kwh {
        s.market.grid_fee_per_kwh = units("tariffs.grid_fee_per_kwh", g, per)?;
        s.market.grid_fee_basis_points = 0;
    }
    let retail_min = s.market.retail_per_kwh.iter().min().copied().unwrap_or(0);
    let feed_in_max = s.market.feed_in_per_kwh.iter().max().copied().unwrap_or(0);
    if feed_in_max > retail_min {
        return Err(invalid(
            "tariffs.feed_in_per_kwh",
            feed_in_max as f64 / per as f64,
            format!(
                "expected at most the retail tariff ({})",
                retail_min as f64 / per as f64
            ),
        ));
    }
    let h = &input.household;
    let names = n.profiles.names();
    for (field, col) in [
        ("household.load_profile", &h.load_profile),
        ("household.pv_profile", &h.pv_profile),
    ] {
        if !names.contains(col) {
            return Err(invalid(
                field,
                format!("{col:?}"),
                format!("expected a profile of the set: {}", names.join(", ")),
            ));
        }
    }
    let battery_kwh = if battery { input.battery_kwh } else { 0.0 };
    if !trading {
        // Design: a household that trades with nobody settles only with the utility, slot by
        // slot at the slot's own tariffs, and its self-consumption battery follows its own
        // meter: nothing of its year depends on the neighbours, whose trading cost two thirds
        // of the three years' work. It is simulated alone (the test below checks that alone
        // and in the street give the same year).
        s.groups.clear();
        s.grid_households = None;
    }
    s.groups.push(HouseholdGroup {
        name: NAME.into(),
        count: 1,
        load_profiles: vec![h.load_profile.clone()],
        annual_kwh: input.annual_kwh,
        annual_kwh_spread: 0.0,
        ev_profile: None,
        ev_annual_kwh: 0.0,
        heat_pump_profile: None,
        heat_pump_annual_kwh: 0.0,
        pv_kwp: input.pv_kwp,
        pv_profile: Some(h.pv_profile.clone()),
        pv_orientation: None,
        battery_kwh,
        share_weight: 1.0,
        battery_kw: if battery_kwh > 0.0 {
            input.battery_kw()
        } else {
            0.0
        },
        battery_strategy: BatteryStrategy::SelfConsumption,
        battery_hold_below_per_kwh: None,
        battery_round_trip_efficiency: h.battery_round_trip_efficiency,
        // The ramp agent trades the household's whole surplus and need (the shipped street's
        // PV homes use it); `none` keeps everything with the utility.
        agent: if trading {
            AgentName::Ramp
        } else {
            AgentName::None
        },
        ramp_steps: 5,
        sell_at_least_per_kwh: None,
        buy_at_most_per_kwh: None,
        keep_battery_above_percent: None,
    });
    s.check()?;
    Ok(s)
}

fn household_of(r: &RunResult) -> &sim::Household {
    r.households
        .iter()
        .find(|h| h.name.starts_with(NAME))
        .unwrap_or_else(|| unreachable!("the household was added to the scenario"))
}

/// Simulates the household's three years (in parallel) and checks it fits its connection.
pub fn simulate(n: &Neighbourhood, input: &RoiInput) -> Result<EnergyYear, RoiError> {
    let joined = variant(n, input, true, true)?;
    let solo = variant(n, input, true, false)?;
    let baseline = variant(n, input, false, false)?;
    let run = |s: &Scenario| sim::run_with(s, n.grid.clone(), &n.profiles, |_| {});
    let (a, (b, c)) = rayon::join(
        || run(&joined),
        || rayon::join(|| run(&solo), || run(&baseline)),
    );
    let (a, b, c) = (a?, b?, c?);
    let slot_s = a.slot_s;
    let you = HouseholdYear::from_totals(&household_of(&a).totals, slot_s);
    let neighbours: Vec<u64> = a
        .households
        .iter()
        .filter(|h| !h.name.starts_with(NAME))
        .map(|h| h.totals.net_export_days_wh)
        .collect();
    let neighbour_mean = if neighbours.is_empty() {
        0
    } else {
        neighbours.iter().sum::<u64>() / neighbours.len() as u64
    };
    let energy = EnergyYear {
        neighbourhood: n.name.clone(),
        households: a.households.len(),
        slot_minutes: slot_s / 60,
        units_per_currency: a.units_per_currency,
        currency: a.currency.clone(),
        joined: you,
        solo: HouseholdYear::from_totals(&household_of(&b).totals, slot_s),
        baseline: HouseholdYear::from_totals(&household_of(&c).totals, slot_s),
        neighbour_net_export_days_wh: neighbour_mean,
    };
    let peak_kw = energy
        .joined
        .peak_kw_milli
        .max(energy.baseline.peak_kw_milli) as f64
        / 1000.0;
    if peak_kw > input.household.connection_kw {
        return Err(invalid(
            "household.connection_kw",
            input.household.connection_kw,
            format!(
                "the simulated household draws or feeds in {peak_kw:.1} kW in its peak slot, more than its grid connection carries: raise household.connection_kw or lower annual_kwh / pv_kwp"
            ),
        ));
    }
    Ok(energy)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_shipped_neighbourhood_is_parsed_once_and_shared() {
        let first = Neighbourhood::shipped_shared("our-street").unwrap();
        Neighbourhood::parse_shipped().unwrap();
        let again = Neighbourhood::shared_for_input(&RoiInput::default()).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "parsed a second time");
        assert_eq!(first.name, "our-street");
        assert_eq!(first.profiles.len(), 35_040);
    }

    /// The household that keeps everything with the utility is simulated alone: its year is
    /// the one it has among its trading neighbours, to the Wh and the token unit.
    #[test]
    fn a_household_that_does_not_trade_has_the_same_year_alone_as_in_the_street() {
        let n = Neighbourhood::shipped_shared("our-street").unwrap();
        let input = RoiInput::default();
        for battery in [true, false] {
            let alone = variant(&n, &input, battery, false).unwrap();
            assert_eq!(alone.groups.len(), 1);
            let mut street = variant(&n, &input, battery, true).unwrap();
            let household = street.groups.last_mut().unwrap();
            household.agent = AgentName::None;
            let run = |s: &Scenario| sim::run_with(s, n.grid.clone(), &n.profiles, |_| {}).unwrap();
            let (a, b) = (run(&alone), run(&street));
            assert!(b.households.len() > 1);
            assert_eq!(
                household_of(&a).totals,
                household_of(&b).totals,
                "battery {battery}"
            );
        }
    }

    #[test]
    fn the_shared_lookup_refuses_what_the_parse_refuses() {
        let e = Neighbourhood::shipped_shared("elm-street")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("community.neighbourhood") && e.contains("our-street"),
            "{e}"
        );
        let mut input = RoiInput::default();
        input.community.scenario = Some(PathBuf::from("street.toml"));
        let e = Neighbourhood::shared_for_input(&input)
            .unwrap_err()
            .to_string();
        assert!(e.contains("community.scenario"), "{e}");
    }
}
