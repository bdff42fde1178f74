//! One scenario run: every slot, each household's load, PV and battery; its agent's orders
//! through the community's `gridshare-core` auction; delivery from the households' simulated
//! meters settled with the utility as counterparty of last resort; the core's KPIs; and the
//! feeder's power flow with the resulting net powers.
//!
//! Energy and money are integers throughout, as in the engine: the load and PV of a slot are
//! rounded to whole Wh once, the battery moves whole Wh, and everything after that is the
//! core's integer arithmetic.

use crate::agents::{TradingRule, forecast_order, ramp_price};
use crate::grid::{GridError, GridFile, PowerFlow, PowerFlowError};
use crate::profiles::{PROFILE_STEP_S, ProfileError, ProfileSet};
use crate::rng::SplitMix64;
use crate::scenario::{
    AgentName, BatteryStrategy, MechanismName, PvOrientation, Scenario, ScenarioError,
    SharingKeyName,
};
use crate::solar;
use gridshare_core::market::{
    AccountId, AllocationKey, AreaId, AreaTree, AuctionEntry, ClearingError, Community, FeeProfile,
    HouseholdEnergy, ImbalancePrices, KpiError, Mechanism, MemberFlow, MeterCounters,
    MeterDelivery, MeterId, Order, OrderId, PeriodKpis, Preference, SettlementError, SharingRule,
    Side, SlotCalendar, SlotMarket, Tariff, TermsError, TimeProfile, Trade, clear_call_auction,
    settle_slot, share_slot,
};
use std::collections::BTreeMap;

/// Start of the profile year, 2023-01-01 00:00 CET, in Unix seconds.
pub const PROFILE_YEAR_START: i64 = 1_672_527_600;

/// The utility's account.
pub const UTILITY: AccountId = AccountId(0);
/// The grid operator's account (collects the grid fee).
pub const GRID_OPERATOR: AccountId = AccountId(1);

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    /// The scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The grid file is invalid.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// A profile file is invalid.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The grid has no load bus to put households on.
    #[error(
        "grid {grid} has no in-service load: households are placed on its load buses, in order"
    )]
    NoLoadBus {
        /// The grid.
        grid: String,
    },
    /// A load or PV profile has a negative value.
    #[error(
        "profile {column:?} (used by {key}) is negative ({value}) at row {row}; load and PV profiles must be 0 or more"
    )]
    NegativeProfile {
        /// The scenario key.
        key: String,
        /// The column.
        column: String,
        /// 0-based data row.
        row: usize,
        /// The value.
        value: f64,
    },
    /// A named profile column does not exist.
    #[error(
        "`{key}` names profile {name:?}, which the profile set does not have; it has: {available}"
    )]
    UnknownProfile {
        /// The scenario key.
        key: String,
        /// The missing column.
        name: String,
        /// Columns there are.
        available: String,
    },
    /// The period does not fit the profiles.
    #[error(
        "the period (days {start_day}..{end_day}) does not fit the profiles, which cover {profile_days} days; shorten `period.days` or move `period.start_day`"
    )]
    PeriodBeyondProfiles {
        /// First day.
        start_day: u32,
        /// Day after the last.
        end_day: u64,
        /// Days the profiles cover.
        profile_days: usize,
    },
    /// The market core refused the community's terms.
    #[error("market terms: {0}")]
    Terms(#[from] TermsError),
    /// The market core refused a slot's settlement (a bug if it happens).
    #[error("slot {slot}: settlement failed: {source}")]
    Settlement {
        /// Slot.
        slot: u64,
        /// Why.
        source: SettlementError,
    },
    /// The KPI computation refused a slot's energies (a bug if it happens).
    #[error("slot {slot}: {source}")]
    Kpi {
        /// Slot.
        slot: u64,
        /// Why.
        source: KpiError,
    },
    /// The power flow failed in a slot.
    #[error("slot {slot} ({time}): {source}")]
    PowerFlow {
        /// Slot.
        slot: u64,
        /// When, local time.
        time: String,
        /// Why.
        source: PowerFlowError,
    },
    /// The core refused an agent's order (a simulator bug if it happens).
    #[error("slot {slot}: the market refused an agent's order: {source}")]
    Order {
        /// Slot.
        slot: u64,
        /// Why.
        source: gridshare_core::market::OrderError,
    },
    /// The core refused a slot's sharing (e.g. a price outside a slot's tariff band).
    #[error("slot {slot}: sharing failed: {source}")]
    Sharing {
        /// Slot.
        slot: u64,
        /// Why.
        source: gridshare_core::market::SharingError,
    },
    /// The grid fee tree was refused.
    #[error("grid fee: {0}")]
    Fee(String),
    /// PV of an orientation could not be computed from the weather.
    #[error(transparent)]
    Solar(#[from] solar::SolarError),
    /// The weather year and the profiles differ in length.
    #[error(
        "`pv_orientation` computes PV from the built-in weather year ({weather_rows} quarter-hours), which does not line up with the profile set ({profile_rows} rows); use a profile set of that year or give `pv_profile` columns"
    )]
    WeatherYear {
        /// Rows of the weather.
        weather_rows: usize,
        /// Rows of the profiles.
        profile_rows: usize,
    },
}

/// A household's order for a call auction, worked out before it is placed in the book.
#[derive(Debug, Clone, Copy)]
struct Pending {
    price: u64,
    energy: u64,
    owner: AccountId,
    area: AreaId,
    side: Side,
}

/// A placeholder the call auction's book entries are written over.
const EMPTY_ENTRY: AuctionEntry = AuctionEntry {
    order: Order {
        id: OrderId(0),
        owner: AccountId(0),
        area: AreaId(0),
        side: Side::Buy,
        price_per_kwh: 0,
        energy_wh: 0,
        preference: Preference {
            preferred_partner: None,
            green: false,
        },
    },
    sequence: 0,
};

/// A household in the run.
#[derive(Debug, Clone)]
pub struct Household {
    /// Its name.
    pub name: String,
    /// Position of its bus in the grid file's bus list.
    pub bus: usize,
    /// The bus's id in the grid file.
    pub bus_id: i64,
    /// Its account.
    pub account: AccountId,
    area: AreaId,
    load: usize,
    load_scale_wh: f64,
    /// Further loads (EV, heat pump): profile column and Wh per row unit.
    extra_loads: Vec<(usize, f64)>,
    /// Annual consumption it was given, kWh.
    pub annual_kwh: f64,
    pv: usize,
    pv_scale_wh: f64,
    /// Reactive power from a profile: column and Mvar per unit of it.
    q: Option<(usize, f64)>,
    battery: Option<Battery>,
    agent: AgentName,
    ramp_steps: u32,
    share_weight: f64,
    rule: TradingRule,
    counters: MeterCounters,
    /// What it did over the run.
    pub totals: HouseholdTotals,
}

/// What a household's agent reads when it places its order.
///
/// Design: agents place orders in a shuffled order each slot; reading these few fields from a
/// small table instead of the (much larger) households at random keeps that walk in cache.
#[derive(Debug, Clone, Copy)]
struct Trader {
    agent: AgentName,
    ramp_steps: u32,
    rule: TradingRule,
    account: AccountId,
    area: AreaId,
}

#[derive(Debug, Clone, Copy)]
struct Battery {
    capacity_wh: f64,
    power_wh_per_slot: f64,
    eta_one_way: f64,
    soc_wh: f64,
    /// Market-aware: keep the charge while the last local price was below this per kWh.
    hold_below_per_kwh: Option<u64>,
}

impl Battery {
    fn soc_bp(&self) -> u16 {
        let bp = (self.soc_wh / self.capacity_wh * 10_000.0).clamp(0.0, 10_000.0);
        // Clamped into 0..=10000 above, so the cast is exact enough.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped"
        )]
        let bp = bp as u16;
        bp
    }
}

/// One household's totals over the run (the simulator's own accounting, beside the core's
/// KPIs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HouseholdTotals {
    /// Load, Wh.
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
    /// Paid for local purchases, fees included, token units.
    pub paid: u128,
    /// Received for local sales, token units.
    pub received: u128,
    /// Net paid to the utility for deviations (negative: received), token units.
    pub imbalance: i128,
    /// Battery energy charged, Wh (from the household's side).
    pub battery_in_wh: u64,
    /// Battery energy discharged, Wh.
    pub battery_out_wh: u64,
    /// The load valued at each slot's retail tariff: Σ Wh × price per kWh (divide by 1 000
    /// for token units). What the household would have paid the utility with nothing of its own.
    pub load_at_retail: u128,
    /// The load met without importing (own PV, directly or through the battery) valued at each
    /// slot's retail tariff, Σ Wh × price per kWh.
    pub own_use_at_retail: u128,
    /// The energy bought from neighbours valued at each slot's retail tariff, Σ Wh × price per
    /// kWh: against [`Self::paid`], what local purchases saved.
    pub bought_at_retail: u128,
    /// Σ over days of the day's net export (exports less imports), where positive, Wh: the
    /// measure the staking contract pays daily epochs' emission by.
    pub net_export_days_wh: u64,
    /// Largest import or export in one slot, Wh.
    pub peak_slot_wh: u64,
    /// Net export of the current day so far, Wh (folded into `net_export_days_wh` at midnight).
    day_net_export_wh: i64,
}

/// One slot's figures, as written to `slots.csv`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SlotRecord {
    /// Slot index in the run.
    pub slot: u64,
    /// Σ load, Wh.
    pub load_wh: u64,
    /// Σ PV, Wh.
    pub pv_wh: u64,
    /// Σ household imports, Wh.
    pub import_wh: u64,
    /// Σ household exports, Wh.
    pub export_wh: u64,
    /// Traded locally, Wh.
    pub traded_wh: u64,
    /// Uniform price (call auction) per kWh.
    pub clearing_price: Option<u64>,
    /// Volume-weighted price buyers paid per kWh.
    pub average_price: Option<u64>,
    /// Retail tariff per kWh.
    pub retail: u64,
    /// Feed-in tariff per kWh.
    pub feed_in: u64,
    /// Grid fees, token units.
    pub fees: u64,
    /// Lowest bus voltage, p.u.
    pub v_min: f64,
    /// Highest bus voltage, p.u.
    pub v_max: f64,
    /// Highest line loading, %.
    pub max_line_loading: f64,
    /// Highest transformer loading, %.
    pub trafo_loading: f64,
    /// Power from the upstream grid at the slack, kW (negative: fed back).
    pub ext_grid_kw: f64,
    /// Buses outside the voltage band.
    pub voltage_violations: u32,
    /// Lines and transformers above 100 %.
    pub loading_violations: u32,
}

/// Everything a run produces.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The scenario's name.
    pub name: String,
    /// The seed used.
    pub seed: u64,
    /// The grid's name.
    pub grid: String,
    /// Slot length, s.
    pub slot_s: u32,
    /// First slot's start, Unix seconds.
    pub epoch: i64,
    /// Households, with their totals.
    pub households: Vec<Household>,
    /// Per slot.
    pub slots: Vec<SlotRecord>,
    /// The core's KPIs over the period.
    pub kpis: PeriodKpis,
    /// Net token movement per account over the period (households, grid operator, utility).
    pub balances: BTreeMap<AccountId, i128>,
    /// Whether the power flow ran.
    pub power_flow: bool,
    /// Power-flow iterations over the run.
    pub pf_iterations: u64,
    /// Σ seller receipts of local trades.
    pub sellers_received: u128,
    /// Settlement batches the engine would send (slots with any money to move).
    pub settlement_batches: u64,
    /// Gas of those batches (see [`crate::gas`]).
    pub settlement_gas: u128,
    /// Gas price and native token price, if the scenario gives them.
    pub settlement_cost: Option<crate::scenario::SettlementCost>,
    /// Display: units per currency unit, and its name.
    pub units_per_currency: u64,
    /// Currency name.
    pub currency: String,
}

/// Loads the profiles a scenario names (or the built-in set).
pub fn load_profiles(s: &Scenario) -> Result<ProfileSet, SimulationError> {
    Ok(match (&s.grid_households, &s.profiles) {
        (Some(g), _) => ProfileSet::load(&s.resolve(&g.profiles))?,
        (None, Some(p)) => ProfileSet::load(&s.resolve(p))?,
        (None, None) => ProfileSet::default_set()?,
    })
}

/// Unix seconds of `YYYY-MM-DD` 00:00 CET.
#[must_use]
pub fn parse_day(text: &str) -> Option<i64> {
    let mut it = text.split('-');
    let (y, m, d): (i64, i64, i64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400 - 3_600)
}

fn checked_column(p: &ProfileSet, key: String, name: &str) -> Result<usize, SimulationError> {
    let i = column(p, key.clone(), name)?;
    match p.first_negative(i) {
        Some((row, value)) => Err(SimulationError::NegativeProfile {
            key,
            column: name.to_owned(),
            row,
            value,
        }),
        None => Ok(i),
    }
}

/// Runs a scenario with its own grid file and profiles.
pub fn run(s: &Scenario) -> Result<RunResult, SimulationError> {
    let grid = GridFile::load(&s.resolve(&s.grid.file))?;
    let profiles = load_profiles(s)?;
    run_with(s, grid, &profiles, |_| {})
}

fn column(p: &ProfileSet, key: String, name: &str) -> Result<usize, SimulationError> {
    p.names()
        .iter()
        .position(|n| n == name)
        .ok_or_else(|| SimulationError::UnknownProfile {
            key,
            name: name.to_owned(),
            available: p.names().join(", "),
        })
}

/// The name of the profile column computed for PV modules of orientation `o`.
#[must_use]
pub fn oriented_pv_column(o: PvOrientation) -> String {
    format!("pv_tilt{}_azimuth{}", o.tilt_deg, o.azimuth_deg)
}

/// `profiles` with a PV column (kW per kWp) for each orientation the scenario's groups name,
/// computed from the built-in weather year; `None` when no group names one.
fn with_oriented_pv(
    s: &Scenario,
    profiles: &ProfileSet,
) -> Result<Option<ProfileSet>, SimulationError> {
    let mut wanted: Vec<PvOrientation> = Vec::new();
    for o in s.groups.iter().filter_map(|g| g.pv_orientation) {
        if !wanted.contains(&o) {
            wanted.push(o);
        }
    }
    if wanted.is_empty() {
        return Ok(None);
    }
    let weather = solar::default_weather()?;
    if weather.len() != profiles.len() {
        return Err(SimulationError::WeatherYear {
            weather_rows: weather.len(),
            profile_rows: profiles.len(),
        });
    }
    let mut out = profiles.clone();
    for o in wanted {
        let orientation = solar::Orientation {
            tilt_deg: o.tilt_deg,
            azimuth_deg: o.azimuth_deg,
        };
        let series = solar::pv_series(&weather, &solar::ESSEN, orientation, PROFILE_YEAR_START)?;
        out.push_column(oriented_pv_column(o), series);
    }
    Ok(Some(out))
}

/// Runs a scenario on a loaded grid and profile set; `progress` is called with the fraction
/// done every 1 % of the slots.
pub fn run_with(
    s: &Scenario,
    grid: GridFile,
    profiles: &ProfileSet,
    mut progress: impl FnMut(f64),
) -> Result<RunResult, SimulationError> {
    let oriented = with_oriented_pv(s, profiles)?;
    let profiles = oriented.as_ref().unwrap_or(profiles);
    let slot_s = s.period.slot_minutes * 60;
    let rows_per_slot = (slot_s / PROFILE_STEP_S) as usize;
    let slots_per_day = u64::from(86_400 / slot_s);
    let profile_days = profiles.len() / 96;
    let end_day = u64::from(s.period.start_day) + u64::from(s.period.days);
    if end_day > profile_days as u64 {
        return Err(SimulationError::PeriodBeyondProfiles {
            start_day: s.period.start_day,
            end_day,
            profile_days,
        });
    }
    let slots = u64::from(s.period.days) * slots_per_day;
    let first_row = s.period.start_day as usize * 96;
    let year_start = s
        .grid_households
        .as_ref()
        .and_then(|g| parse_day(&g.year_start))
        .unwrap_or(PROFILE_YEAR_START);
    let epoch = year_start + i64::from(s.period.start_day) * 86_400;

    // The community: one street market (root area, charging the grid fee), with a market per
    // feeder under it when feeders charge a fee of their own.
    let fee = if s.market.grid_fee_basis_points > 0 {
        FeeProfile::Percent(TimeProfile::constant(s.market.grid_fee_basis_points))
    } else if s.market.grid_fee_per_kwh > 0 {
        FeeProfile::PerKwh(TimeProfile::constant(s.market.grid_fee_per_kwh))
    } else {
        FeeProfile::Free
    };
    let mut areas =
        AreaTree::new(fee, GRID_OPERATOR).map_err(|e| SimulationError::Fee(e.to_string()))?;
    let retail =
        TimeProfile::repeating(s.market.retail_per_kwh.clone()).map_err(TermsError::from)?;
    let feed_in =
        TimeProfile::repeating(s.market.feed_in_per_kwh.clone()).map_err(TermsError::from)?;

    // Households on the grid's load buses, in order, cycling when there are more households.
    let load_buses: Vec<(usize, i64)> = grid
        .loads
        .iter()
        .filter(|l| l.in_service)
        .filter_map(|l| {
            grid.buses
                .iter()
                .position(|b| b.id == l.bus && b.in_service)
                .map(|i| (i, l.bus))
        })
        .collect();
    if load_buses.is_empty() && !s.groups.is_empty() {
        return Err(SimulationError::NoLoadBus {
            grid: grid.name.clone(),
        });
    }
    let mut pf = PowerFlow::new(grid.clone())?;
    let mut feeder_areas: Vec<Option<AreaId>> = Vec::new();
    let feeder_fee = FeeProfile::PerKwh(TimeProfile::constant(s.market.feeder_fee_per_kwh));
    // Design: a household trades in its feeder's market (or the street's), as the engine's
    // meters trade in the community's one market: an area of its own per household would charge
    // nothing (houses carry no fee) but lengthen every trade's fee path and, beyond 256 areas,
    // send clearing from the volume pass to the greedy one — a market the engine never runs.
    let mut house_area = |areas: &mut AreaTree, bus: usize| -> Result<AreaId, SimulationError> {
        let fee_err = |e: gridshare_core::market::AreaError| SimulationError::Fee(e.to_string());
        // Feeders sit under the street (root) market, so a trade within a feeder pays the
        // feeder's fee and one across feeders both levels.
        Ok(match pf.feeder_of_bus(bus) {
            Some(f) if s.market.feeder_fee_per_kwh > 0 => {
                if feeder_areas.len() <= f {
                    feeder_areas.resize(f + 1, None);
                }
                match feeder_areas[f] {
                    Some(a) => a,
                    None => {
                        let a = areas
                            .add_area(areas.root(), feeder_fee.clone(), GRID_OPERATOR)
                            .map_err(fee_err)?;
                        feeder_areas[f] = Some(a);
                        a
                    }
                }
            }
            _ => areas.root(),
        })
    };
    let mut rng = SplitMix64::new(s.seed);
    let mut households = Vec::with_capacity(s.household_count());
    for (gi, g) in s.groups.iter().enumerate() {
        let loads: Vec<usize> = g
            .load_profiles
            .iter()
            .map(|n| checked_column(profiles, format!("households[{gi}].load_profiles"), n))
            .collect::<Result<_, _>>()?;
        let pv_key = if g.pv_orientation.is_some() {
            "pv_orientation"
        } else {
            "pv_profile"
        };
        let pv = checked_column(
            profiles,
            format!("households[{gi}].{pv_key}"),
            &g.pv_column(),
        )?;
        let mut extra_loads = Vec::new();
        for (key, profile, kwh) in [
            ("ev_profile", &g.ev_profile, g.ev_annual_kwh),
            (
                "heat_pump_profile",
                &g.heat_pump_profile,
                g.heat_pump_annual_kwh,
            ),
        ] {
            if let Some(name) = profile {
                let col = checked_column(profiles, format!("households[{gi}].{key}"), name)?;
                // Profiles are kW for 1 000 kWh a year, like the household load.
                let quarter_h = f64::from(PROFILE_STEP_S) / 3600.0;
                extra_loads.push((col, kwh / 1000.0 * quarter_h * 1000.0));
            }
        }
        let band_mid = (s.market.retail_per_kwh[0] + s.market.feed_in_per_kwh[0]) / 2;
        for k in 0..g.count {
            let i = households.len();
            let (bus, bus_id) = load_buses[i % load_buses.len()];
            let load = loads[rng.below(loads.len())];
            let spread = 1.0 + g.annual_kwh_spread * (2.0 * rng.next_f64() - 1.0);
            let annual_kwh = g.annual_kwh * spread;
            let account = AccountId(u32::try_from(i + 2).unwrap_or(u32::MAX));
            let area = house_area(&mut areas, bus)?;
            // Profiles are kW for 1 000 kWh/a (load) or per kWp (PV) per quarter-hour:
            // energy per row = value × 0.25 h × scale × 1000 Wh/kWh.
            let quarter_h = f64::from(PROFILE_STEP_S) / 3600.0;
            let eta = g.battery_round_trip_efficiency.sqrt();
            households.push(Household {
                name: format!("{}-{}", g.name, k + 1),
                bus,
                bus_id,
                account,
                area,
                load,
                load_scale_wh: annual_kwh / 1000.0 * quarter_h * 1000.0,
                extra_loads: extra_loads.clone(),
                annual_kwh,
                pv,
                pv_scale_wh: g.pv_kwp * quarter_h * 1000.0,
                q: None,
                battery: (g.battery_kwh > 0.0).then(|| Battery {
                    capacity_wh: g.battery_kwh * 1000.0,
                    power_wh_per_slot: g.battery_kw * 1000.0 * f64::from(slot_s) / 3600.0,
                    eta_one_way: eta,
                    soc_wh: 0.0,
                    hold_below_per_kwh: (g.battery_strategy == BatteryStrategy::MarketAware).then(
                        || {
                            g.battery_hold_below_per_kwh.unwrap_or(
                                (s.market.retail_per_kwh[0] + s.market.feed_in_per_kwh[0]) / 2,
                            )
                        },
                    ),
                }),
                agent: g.agent,
                share_weight: g.share_weight,
                ramp_steps: g.ramp_steps,
                rule: TradingRule {
                    sell_at_least: Some(g.sell_at_least_per_kwh.unwrap_or(band_mid)),
                    buy_at_most: Some(g.buy_at_most_per_kwh.unwrap_or(band_mid)),
                    keep_battery_above_bp: g.keep_battery_above_percent.map(|p| {
                        #[allow(
                            clippy::cast_possible_truncation,
                            clippy::cast_sign_loss,
                            reason = "checked 0..=100"
                        )]
                        let bp = (p * 100.0).round() as u16;
                        bp
                    }),
                },
                counters: MeterCounters::default(),
                totals: HouseholdTotals::default(),
            });
        }
    }
    if let Some(gh) = &s.grid_households {
        grid_households(
            s,
            gh,
            &grid,
            profiles,
            &mut areas,
            &mut households,
            &mut house_area,
        )?;
    }
    let sharing = (s.market.mechanism == MechanismName::Sharing).then(|| {
        let price = s
            .market
            .sharing_price_per_kwh
            .unwrap_or((s.market.retail_per_kwh[0] + s.market.feed_in_per_kwh[0]) / 2);
        let key = match s.market.sharing_key {
            SharingKeyName::Proportional => AllocationKey::ProportionalToConsumption,
            SharingKeyName::Fixed => {
                let total: f64 = households.iter().map(|h| h.share_weight).sum();
                AllocationKey::Fixed(
                    households
                        .iter()
                        .map(|h| {
                            let bp = if total > 0.0 {
                                h.share_weight / total * 10_000.0
                            } else {
                                0.0
                            };
                            // Floored into 0..=10000, so the shares never exceed 100 %.
                            #[allow(
                                clippy::cast_possible_truncation,
                                clippy::cast_sign_loss,
                                reason = "floored into 0..=10000"
                            )]
                            let bp = bp.floor().clamp(0.0, 10_000.0) as u32;
                            (h.account, bp)
                        })
                        .collect(),
                )
            }
        };
        (key, price)
    });
    let mechanism = match (&s.market.mechanism, &sharing) {
        (MechanismName::Continuous, _) => Mechanism::ContinuousDoubleAuction,
        (MechanismName::PayAsOffer, _) => Mechanism::PayAsOffer,
        (MechanismName::Sharing, Some((key, price))) => Mechanism::Sharing(SharingRule {
            key: key.clone(),
            price_per_kwh: *price,
        }),
        (MechanismName::Call | MechanismName::Sharing, _) => Mechanism::CallAuction(s.price_rule()),
    };
    let mut members: Vec<MemberFlow> = Vec::with_capacity(households.len());
    let call_rule = match &mechanism {
        Mechanism::CallAuction(rule) => Some(*rule),
        _ => None,
    };
    let traders: Vec<Trader> = households
        .iter()
        .map(|h| Trader {
            agent: h.agent,
            ramp_steps: h.ramp_steps,
            rule: h.rule,
            account: h.account,
            area: h.area,
        })
        .collect();
    // The order window opens one slot before delivery and closes at delivery start.
    let calendar = SlotCalendar::new(epoch, slot_s, slot_s, 0, 0).map_err(TermsError::from)?;
    let community = Community {
        calendar,
        tariff: Tariff { retail, feed_in },
        imbalance: ImbalancePrices::default(),
        areas,
        utility: UTILITY,
        mechanism,
    };

    let grid_name = grid.name.clone();
    let run_pf = s.grid.power_flow.unwrap_or(true);
    let tan_phi = (1.0 - s.grid.power_factor.powi(2)).sqrt() / s.grid.power_factor;

    let mut kpis = PeriodKpis::default();
    // Net token movement per account, indexed by account id (the utility, the grid operator,
    // then the households): no tree lookup per account and slot.
    let mut balances: Vec<Option<i128>> = vec![None; households.len() + 2];
    let mut records = Vec::with_capacity(usize::try_from(slots).unwrap_or(0));
    let mut pf_iterations = 0u64;
    let mut sellers_received = 0u128;
    let (mut settlement_batches, mut settlement_gas) = (0u64, 0u128);
    // The last slot's volume-weighted local price, which market-aware batteries watch.
    let mut last_price: Option<u64> = None;
    let mut net_wh = vec![0i64; households.len()];
    let mut order_of: Vec<usize> = (0..households.len()).collect();
    let mut energies = Vec::with_capacity(households.len());
    let mut open: Vec<Option<OrderId>> = vec![None; households.len()];
    let mut remaining: Vec<u64> = vec![0; households.len()];
    // Each household's call-auction order of the slot, if any.
    let mut pending: Vec<Option<Pending>> = vec![None; households.len()];
    let mut deliveries = Vec::with_capacity(households.len());
    // Each household's net energy in the last slot, and its battery's charge now, which the
    // forecast agents order by.
    let mut last_net_wh = vec![0i64; households.len()];
    let mut soc_now: Vec<Option<u16>> = vec![None; households.len()];
    // A call auction's orders of the slot, and the slot's trades (both reused).
    let mut book: Vec<AuctionEntry> = Vec::with_capacity(households.len());
    let mut trades: Vec<Trade> = Vec::new();
    let progress_every = (slots / 100).max(1);
    // A slot's average power, W, from its energy, Wh: `wh · 3600 / slot_s`. Design: slots of
    // whole divisors of an hour (every length a scenario uses) multiply instead, the same
    // integer without a 64-bit division per household and slot.
    let slot_s_i64 = i64::from(slot_s);
    let per_hour = (3600 % slot_s_i64 == 0).then_some(3600 / slot_s_i64);
    let avg_w_of = |wh: i64| match per_hour {
        Some(k) => wh * k,
        None => wh * 3600 / slot_s_i64,
    };

    for slot in 0..slots {
        let terms = community.terms(slot)?;
        let band = terms.band;
        let row0 = first_row + usize::try_from(slot).unwrap_or(0) * rows_per_slot;
        let mut rec = SlotRecord {
            slot,
            retail: band.retail_per_kwh,
            feed_in: band.feed_in_per_kwh,
            ..SlotRecord::default()
        };

        // Physics of each home: load, PV, battery (self-consumption first); then what its
        // meter counts and what it draws from the feeder, which the market does not change.
        // Design: one pass over the households (each is several cache lines) for everything
        // that follows from its net energy alone.
        energies.clear();
        deliveries.clear();
        let day_ends = (slot + 1) % slots_per_day == 0 || slot + 1 == slots;
        if run_pf {
            pf.clear_loads();
        }
        let to_mw = 3600.0 / f64::from(slot_s) / 1e6;
        for ((h, net), soc) in households
            .iter_mut()
            .zip(net_wh.iter_mut())
            .zip(soc_now.iter_mut())
        {
            let load_col = profiles_column(profiles, h.load);
            let pv_col = profiles_column(profiles, h.pv);
            let rows = row0..row0 + rows_per_slot;
            let extra: f64 = h
                .extra_loads
                .iter()
                .map(|&(col, scale)| {
                    profiles_column(profiles, col)[rows.clone()]
                        .iter()
                        .sum::<f64>()
                        * scale
                })
                .sum();
            let load_wh = wh(load_col[rows.clone()].iter().sum::<f64>() * h.load_scale_wh + extra);
            let pv_wh = wh(pv_col[rows].iter().sum::<f64>() * h.pv_scale_wh);
            let mut n = i64::try_from(load_wh).unwrap_or(i64::MAX)
                - i64::try_from(pv_wh).unwrap_or(i64::MAX);
            if let Some(b) = h.battery.as_mut() {
                if n < 0 {
                    let room = (b.capacity_wh - b.soc_wh) / b.eta_one_way;
                    let c = wh((-n as f64).min(b.power_wh_per_slot).min(room));
                    b.soc_wh += c as f64 * b.eta_one_way;
                    n += i64::try_from(c).unwrap_or(0);
                    h.totals.battery_in_wh += c;
                } else if n > 0
                    && b.hold_below_per_kwh
                        .zip(last_price)
                        .is_none_or(|(hold, price)| price >= hold)
                {
                    // Market-aware: while neighbours sold cheaply in the last slot, buy from them
                    // and keep the charge for when local energy is scarce.
                    let d = wh((n as f64)
                        .min(b.power_wh_per_slot)
                        .min(b.soc_wh * b.eta_one_way));
                    b.soc_wh = (b.soc_wh - d as f64 / b.eta_one_way).max(0.0);
                    n -= i64::try_from(d).unwrap_or(0);
                    h.totals.battery_out_wh += d;
                }
            }
            *net = n;
            *soc = h.battery.as_ref().map(Battery::soc_bp);
            h.totals.load_wh += load_wh;
            h.totals.pv_wh += pv_wh;
            rec.load_wh += load_wh;
            rec.pv_wh += pv_wh;

            // Delivery: the meter counts the net energy.
            let start = h.counters;
            if n > 0 {
                h.counters.import_wh += n.unsigned_abs();
            } else {
                h.counters.export_wh += n.unsigned_abs();
            }
            let (imp, exp) = (
                h.counters.import_wh - start.import_wh,
                h.counters.export_wh - start.export_wh,
            );
            h.totals.import_wh += imp;
            h.totals.export_wh += exp;
            let retail = u128::from(band.retail_per_kwh);
            let load = u128::from(load_wh);
            h.totals.load_at_retail += load * retail;
            h.totals.own_use_at_retail += load.saturating_sub(u128::from(imp)) * retail;
            h.totals.peak_slot_wh = h.totals.peak_slot_wh.max(imp.max(exp));
            h.totals.day_net_export_wh +=
                i64::try_from(exp).unwrap_or(i64::MAX) - i64::try_from(imp).unwrap_or(i64::MAX);
            if day_ends {
                h.totals.net_export_days_wh +=
                    u64::try_from(h.totals.day_net_export_wh.max(0)).unwrap_or(0);
                h.totals.day_net_export_wh = 0;
            }
            rec.import_wh += imp;
            rec.export_wh += exp;
            deliveries.push(MeterDelivery {
                meter: MeterId(h.account.0),
                account: h.account,
                start,
                end: h.counters,
            });
            energies.push(HouseholdEnergy {
                account: h.account,
                produced_wh: pv_wh,
                imported_wh: imp,
                exported_wh: exp,
            });

            if run_pf {
                let p = n as f64 * to_mw;
                let q = match h.q {
                    Some((col, mvar)) => {
                        let rows = &profiles_column(profiles, col)[row0..row0 + rows_per_slot];
                        rows.iter().sum::<f64>() / rows_per_slot as f64 * mvar
                    }
                    None if p > 0.0 => p * tan_phi,
                    None => 0.0,
                };
                pf.add_load(h.bus, p, q);
            }
        }

        // The market: agents trade in the slot's order window, in a seeded random order.
        // Design: a call auction only looks at its orders at gate closure, so they are
        // gathered here, in submission order, into a book kept across slots and cleared by
        // the core's `clear_call_auction` — what `CallAuction` clears, without its per-slot
        // order index (the simulator never amends or cancels a call auction's order).
        let mut market: Option<SlotMarket> = match call_rule {
            Some(_) => None,
            None => Some(community.open_slot(slot)?),
        };
        let call = call_rule.is_some();
        let opens = terms.slot.order_window_opens;
        let mut next_id = 0u64;
        book.clear();
        trades.clear();
        // A call auction only sees the book at gate closure, so ramp agents go straight to
        // the ramp's end there; continuous books see every update.
        let max_steps = if sharing.is_some() {
            0
        } else if call {
            1
        } else {
            households
                .iter()
                .filter(|h| h.agent == AgentName::Ramp)
                .map(|h| h.ramp_steps)
                .max()
                .unwrap_or(1)
        };
        open.iter_mut().for_each(|o| *o = None);
        remaining.iter_mut().for_each(|r| *r = 0);
        // What household `i`'s agent orders at `step`: side, price, energy.
        let want = |i: usize, step: u32| -> Option<(Side, u64, u64)> {
            let h = &traders[i];
            match h.agent {
                AgentName::None => None,
                AgentName::Forecast if step == 0 => {
                    let avg_w = avg_w_of(last_net_wh[i]);
                    forecast_order(&h.rule, avg_w, soc_now[i], slot_s).map(|(side, p, e)| {
                        (side, p.clamp(band.feed_in_per_kwh, band.retail_per_kwh), e)
                    })
                }
                AgentName::Forecast => None,
                AgentName::Ramp if step < h.ramp_steps => {
                    let n = net_wh[i];
                    let side = if n > 0 { Side::Buy } else { Side::Sell };
                    let k = if call { h.ramp_steps - 1 } else { step };
                    (n != 0).then(|| {
                        (
                            side,
                            ramp_price(side, band, k, h.ramp_steps),
                            n.unsigned_abs(),
                        )
                    })
                }
                AgentName::Ramp => None,
            }
        };
        if call && max_steps > 0 {
            // Design: a call auction's orders see nothing of each other before gate closure,
            // so every household's order is worked out in household order (sequential
            // memory), and only placed in the book in the slot's shuffled order, which gives
            // them their time priority: the same book as ordering in the shuffled order.
            rng.shuffle(&mut order_of);
            for ((w, t), i) in pending.iter_mut().zip(&traders).zip(0..) {
                *w =
                    want(i, 0)
                        .filter(|&(_, _, energy)| energy > 0)
                        .map(|(side, price, energy)| Pending {
                            price,
                            energy,
                            owner: t.account,
                            area: t.area,
                            side,
                        });
            }
            for &i in &order_of {
                let Some(p) = pending[i] else {
                    continue;
                };
                next_id += 1;
                // Design: the entry is written in place, field by field. Copied in whole
                // from an order built on the stack, it was read back before the order's
                // narrow fields had left the store buffer: a stall on every order (perf: 4 %
                // of a 1 000-home year).
                let sequence = book.len() as u64;
                book.push(EMPTY_ENTRY);
                if let Some(e) = book.last_mut() {
                    e.sequence = sequence;
                    let o = &mut e.order;
                    o.id = OrderId(next_id);
                    o.owner = p.owner;
                    o.area = p.area;
                    o.side = p.side;
                    o.price_per_kwh = p.price;
                    o.energy_wh = p.energy;
                }
            }
        }
        // Continuous markets: each order meets the book as it stands, in the shuffled order.
        for step in (0..max_steps).filter(|_| !call) {
            let now = opens + i64::from(step) * i64::from(slot_s) / i64::from(max_steps);
            rng.shuffle(&mut order_of);
            for &i in &order_of {
                let h = &traders[i];
                let Some((side, price, energy)) = want(i, step) else {
                    continue;
                };
                if step == 0 {
                    remaining[i] = energy;
                }
                let Some(m) = market.as_mut() else {
                    unreachable!("a market is opened for every mechanism but the call");
                };
                let resting = open[i].and_then(|id| m.open_order(id).map(|o| (id, o.2)));
                let made = match resting {
                    Some((id, left)) => m.amend(id, price, left, now),
                    None if remaining[i] > 0 => {
                        next_id += 1;
                        let id = OrderId(next_id);
                        open[i] = Some(id);
                        m.submit(
                            Order {
                                id,
                                owner: h.account,
                                area: h.area,
                                side,
                                price_per_kwh: price,
                                energy_wh: remaining[i],
                                preference: Preference::default(),
                            },
                            now,
                        )
                    }
                    None => continue,
                };
                // Every order is inside the band, in the window and of positive energy, so
                // the core accepts it; a refusal would be a simulator bug worth surfacing.
                let made = made.map_err(|source| SimulationError::Order { slot, source })?;
                for t in made {
                    for acc in [t.buyer, t.seller] {
                        if let Some(r) = remaining.get_mut(household_index(acc)) {
                            *r = r.saturating_sub(t.energy_wh);
                        }
                    }
                    trades.push(t);
                }
            }
        }
        let clearing_price = match (market, call_rule) {
            (Some(m), _) => {
                let closure = m.close_gate();
                extend_moving(&mut trades, closure.trades);
                closure.clearing_price
            }
            (None, Some(rule)) => {
                let cleared = clear_call_auction(&book, &terms, rule).map_err(|e| {
                    let ClearingError::Order(source) = e;
                    SimulationError::Order { slot, source }
                })?;
                extend_moving(&mut trades, cleared.trades);
                cleared.clearing_price
            }
            (None, None) => unreachable!("a market is opened for every mechanism but the call"),
        };
        rec.clearing_price = clearing_price;
        if let Some((key, price)) = &sharing {
            members.clear();
            members.extend(households.iter().zip(&net_wh).map(|(h, &n)| MemberFlow {
                account: h.account,
                area: h.area,
                injected_wh: if n < 0 { n.unsigned_abs() } else { 0 },
                withdrawn_wh: if n > 0 { n.unsigned_abs() } else { 0 },
            }));
            let shared = share_slot(key, *price, &members, &terms)
                .map_err(|source| SimulationError::Sharing { slot, source })?;
            trades.extend(shared.trades);
        }

        last_net_wh.copy_from_slice(&net_wh);
        let settlement = settle_slot(&trades, &deliveries, &terms)
            .map_err(|source| SimulationError::Settlement { slot, source })?;
        let sk = kpis
            .add_slot(&terms, &trades, clearing_price, &energies, &settlement)
            .map_err(|source| SimulationError::Kpi { slot, source })?;
        for b in &settlement.balances {
            let at = b.account.0 as usize;
            if at >= balances.len() {
                balances.resize(at + 1, None);
            }
            *balances[at].get_or_insert(0) += b.amount;
        }
        let moved = settlement.balances.iter().filter(|b| b.amount != 0).count();
        if moved > 0 {
            settlement_batches += 1;
            settlement_gas += u128::from(crate::gas::batch_gas(moved));
        }
        sellers_received += settlement.sellers_received;
        rec.traded_wh = u64::try_from(sk.traded_wh).unwrap_or(u64::MAX);
        rec.fees = u64::try_from(sk.fees_collected).unwrap_or(u64::MAX);
        for t in &trades {
            let amounts = t.amounts;
            if let Some(h) = households.get_mut(household_index(t.buyer)) {
                h.totals.bought_wh += t.energy_wh;
                h.totals.paid += u128::from(amounts.buyer_pays);
                h.totals.bought_at_retail +=
                    u128::from(t.energy_wh) * u128::from(band.retail_per_kwh);
            }
            if let Some(h) = households.get_mut(household_index(t.seller)) {
                h.totals.sold_wh += t.energy_wh;
                h.totals.received += u128::from(amounts.seller_receives);
            }
        }
        for c in &settlement.imbalances {
            if let Some(h) = households.get_mut(household_index(c.account)) {
                h.totals.imbalance += c.amount;
            }
        }
        rec.average_price = sk.average_buyer_price.basis_points().map(|_| {
            u64::try_from(sk.average_buyer_price.numerator / sk.average_buyer_price.denominator)
                .unwrap_or(u64::MAX)
        });
        last_price = rec.average_price;

        // Physics of the feeder.
        if run_pf {
            let it = pf.solve().map_err(|source| SimulationError::PowerFlow {
                slot,
                time: local_time(epoch + i64::try_from(slot).unwrap_or(0) * i64::from(slot_s)),
                source,
            })?;
            pf_iterations += u64::from(it);
            let (lo, hi, outside) = pf.voltage_summary(s.grid.v_min_pu, s.grid.v_max_pu);
            rec.v_min = lo;
            rec.v_max = hi;
            rec.voltage_violations = u32::try_from(outside).unwrap_or(u32::MAX);
            let (max_line, lines_over) = pf.line_loading_summary();
            rec.max_line_loading = max_line;
            rec.trafo_loading = pf.max_trafo_loading_percent();
            rec.ext_grid_kw = pf.ext_grid_power().0 * 1000.0;
            let trafo_over = (0..pf.grid().trafos.len())
                .filter_map(|t| pf.trafo_loading_percent(t))
                .filter(|&x| x > 100.0)
                .count();
            rec.loading_violations = u32::try_from(lines_over + trafo_over).unwrap_or(u32::MAX);
        } else {
            let net: i64 = net_wh.iter().sum();
            rec.ext_grid_kw = net as f64 * 3600.0 / f64::from(slot_s) / 1000.0;
        }
        records.push(rec);
        if slot % progress_every == 0 {
            progress(slot as f64 / slots as f64);
        }
    }
    progress(1.0);
    Ok(RunResult {
        name: s.name.clone(),
        seed: s.seed,
        grid: grid_name,
        slot_s,
        epoch,
        households,
        slots: records,
        kpis,
        balances: balances
            .into_iter()
            .zip(0u32..)
            .filter_map(|(b, account)| Some((AccountId(account), b?)))
            .collect(),
        power_flow: run_pf,
        pf_iterations,
        sellers_received,
        settlement_batches,
        settlement_gas,
        settlement_cost: s.settlement.clone(),
        units_per_currency: s.market.units_per_currency,
        currency: s.market.currency.clone(),
    })
}

/// The grid's own loads (and generators on their buses) as households.
fn grid_households(
    s: &Scenario,
    gh: &crate::scenario::GridHouseholds,
    grid: &GridFile,
    profiles: &ProfileSet,
    areas: &mut AreaTree,
    households: &mut Vec<Household>,
    house_area: &mut dyn FnMut(&mut AreaTree, usize) -> Result<AreaId, SimulationError>,
) -> Result<(), SimulationError> {
    let quarter_h = f64::from(PROFILE_STEP_S) / 3600.0;
    let band_mid = (s.market.retail_per_kwh[0] + s.market.feed_in_per_kwh[0]) / 2;
    let bus_pos = |id: i64| grid.buses.iter().position(|b| b.id == id && b.in_service);
    let new_household = |name: String,
                         bus: usize,
                         bus_id: i64,
                         areas: &mut AreaTree,
                         households: &mut Vec<Household>,
                         house_area: &mut dyn FnMut(
        &mut AreaTree,
        usize,
    ) -> Result<AreaId, SimulationError>| {
        let i = households.len();
        let area = house_area(areas, bus)?;
        households.push(Household {
            name,
            bus,
            bus_id,
            account: AccountId(u32::try_from(i + 2).unwrap_or(u32::MAX)),
            area,
            load: 0,
            load_scale_wh: 0.0,
            extra_loads: Vec::new(),
            annual_kwh: 0.0,
            pv: 0,
            pv_scale_wh: 0.0,
            q: None,
            battery: None,
            agent: gh.agent,
            share_weight: 1.0,
            ramp_steps: gh.ramp_steps,
            rule: TradingRule {
                sell_at_least: Some(gh.sell_at_least_per_kwh.unwrap_or(band_mid)),
                buy_at_most: Some(gh.buy_at_most_per_kwh.unwrap_or(band_mid)),
                keep_battery_above_bp: None,
            },
            counters: MeterCounters::default(),
            totals: HouseholdTotals::default(),
        });
        Ok::<usize, SimulationError>(i)
    };
    let first = households.len();
    for l in grid.loads.iter().filter(|l| l.in_service) {
        let (Some(profile), Some(bus)) = (l.profile.as_deref(), bus_pos(l.bus)) else {
            continue;
        };
        let key = format!("grid load {} ({})", l.id, l.name);
        let p = checked_column(profiles, key.clone(), &format!("{profile}_pload"))?;
        let q = column(profiles, key, &format!("{profile}_qload"))?;
        let i = new_household(l.name.clone(), bus, l.bus, areas, households, house_area)?;
        let h = &mut households[i];
        h.load = p;
        h.load_scale_wh = l.p_mw * l.scaling * 1e6 * quarter_h;
        h.q = Some((q, l.q_mvar * l.scaling));
        let rows = profiles.column(&profiles.names()[p]).unwrap_or(&[]);
        h.annual_kwh = rows.iter().sum::<f64>() * h.load_scale_wh / 1000.0;
    }
    for g in grid.sgens.iter().filter(|g| g.in_service) {
        let (Some(profile), Some(bus)) = (g.profile.as_deref(), bus_pos(g.bus)) else {
            continue;
        };
        let col = checked_column(
            profiles,
            format!("grid sgen {} ({})", g.id, g.name),
            profile,
        )?;
        let at = households[first..]
            .iter()
            .position(|h| h.bus == bus && h.pv_scale_wh == 0.0)
            .map(|k| k + first);
        let i = match at {
            Some(i) => i,
            None => new_household(g.name.clone(), bus, g.bus, areas, households, house_area)?,
        };
        households[i].pv = col;
        households[i].pv_scale_wh = g.p_mw * g.scaling * 1e6 * quarter_h;
    }
    if households.len() == first {
        return Err(SimulationError::NoLoadBus {
            grid: format!("{} (no in-service load with a profile)", grid.name),
        });
    }
    Ok(())
}

/// Appends `more` to `list`, taking `more`'s buffer when `list` is empty instead of copying
/// every element (a slot's trades, hundreds of them in a large community).
fn extend_moving<T>(list: &mut Vec<T>, mut more: Vec<T>) {
    if list.is_empty() {
        std::mem::swap(list, &mut more);
    } else {
        list.append(&mut more);
    }
}

/// Households hold accounts 2, 3, ... in order (0 is the utility, 1 the grid operator).
fn household_index(account: AccountId) -> usize {
    (account.0 as usize).wrapping_sub(2)
}

fn profiles_column(p: &ProfileSet, i: usize) -> &[f64] {
    p.column_at(i)
}

/// Rounds a non-negative energy to whole Wh: `x.round().clamp(0.0, 9.0e15)`, half away from
/// zero, NaN to 0.
///
/// Design: `f64::round` is a libm call on the baseline x86-64 target (no SSE4.1), made for
/// every household twice a slot; within `0..=9e15 < 2^53` the truncating cast and the
/// fraction `x − trunc(x)` are exact, so this gives the same integer without the call.
fn wh(x: f64) -> u64 {
    // Profiles are checked finite and non-negative; the clamp keeps the cast total (NaN: 0).
    let x = x.clamp(0.0, 9.0e15);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "clamped to 0..2^53, where the cast truncates exactly and back is exact"
    )]
    // Design: through i64, which x86-64 converts in one instruction each way (u64 needs a
    // branch and a fix-up per conversion); the clamped value fits either.
    let (whole, back) = {
        let t = x as i64;
        (t as u64, t as f64)
    };
    whole + u64::from(x - back >= 0.5)
}

/// `YYYY-MM-DD HH:MM` in CET (UTC+1, no daylight saving), the profiles' clock.
#[must_use]
pub fn local_time(unix_s: i64) -> String {
    let t = unix_s + 3600;
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_wh_round_like_f64_round() {
        let reference = |x: f64| {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "the definition being checked"
            )]
            let v = x.round().clamp(0.0, 9.0e15) as u64;
            v
        };
        let mut rng = SplitMix64::new(3);
        let mut cases = vec![
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            0.499_999_999_999_999_94,
            4_503_599_627_370_495.5,
            9.0e15,
            9.1e15,
            1e300,
            -0.4,
            -3.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for _ in 0..100_000 {
            let magnitude = 10f64.powi(i32::try_from(rng.below(17)).unwrap_or(0));
            cases.push(rng.next_f64() * magnitude);
            cases.push(rng.below(1 << 20) as f64 + 0.5);
        }
        for x in cases {
            assert_eq!(wh(x), reference(x), "{x:e}");
        }
    }

    #[test]
    fn local_time_is_cet() {
        assert_eq!(local_time(PROFILE_YEAR_START), "2023-01-01 00:00");
        assert_eq!(
            local_time(PROFILE_YEAR_START + 365 * 86_400 - 900),
            "2023-12-31 23:45"
        );
        assert_eq!(
            local_time(PROFILE_YEAR_START + 59 * 86_400 + 3_600),
            "2023-03-01 01:00"
        );
    }
}
