//! The neutral grid format: one JSON document per network, as written by
//! `simulations/scripts/export_grids.py` from any pandapower net and readable by hand.
//!
//! Units and meanings follow pandapower's element tables (`bus`, `line`, `trafo`, `switch`,
//! `ext_grid`, `load`, `sgen`, `storage`) so that a grid exported from pandapower means the same
//! thing here. Every element carries an integer `id` (its pandapower index) and a `name`; lines,
//! transformers, switches and injections refer to buses by id. Unknown keys are rejected, so a
//! misspelt field never silently takes its default.

use serde::{Deserialize, Serialize};

/// A whole network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridFile {
    /// Short name, e.g. `kerber_dorfnetz`.
    pub name: String,
    /// Where the network comes from (free text).
    #[serde(default)]
    pub source: String,
    /// Per-unit power base in MVA (pandapower's `net.sn_mva`, usually 1).
    #[serde(default = "one")]
    pub sn_mva: f64,
    /// System frequency in Hz.
    #[serde(default = "fifty")]
    pub f_hz: f64,
    /// Buses (nodes).
    pub buses: Vec<BusSpec>,
    /// Lines and cables (π model).
    #[serde(default)]
    pub lines: Vec<LineSpec>,
    /// Two-winding transformers (pandapower's T model, converted to π as pandapower does).
    #[serde(default)]
    pub trafos: Vec<TrafoSpec>,
    /// Switches: bus–bus (`et = "b"`), at a line end (`"l"`) or a transformer end (`"t"`).
    #[serde(default)]
    pub switches: Vec<SwitchSpec>,
    /// The slack: the upstream grid holding one bus at a fixed voltage.
    pub ext_grid: ExtGridSpec,
    /// Consumers (positive `p_mw` draws power).
    #[serde(default)]
    pub loads: Vec<InjectionSpec>,
    /// Static generators, e.g. PV (positive `p_mw` feeds in).
    #[serde(default)]
    pub sgens: Vec<InjectionSpec>,
    /// Storage (positive `p_mw` charges, i.e. draws power).
    #[serde(default)]
    pub storages: Vec<InjectionSpec>,
    /// Results of a reference power flow with the injections above (validation fixtures).
    #[serde(default)]
    pub reference: Option<ReferenceResult>,
}

fn one() -> f64 {
    1.0
}

fn fifty() -> f64 {
    50.0
}

fn yes() -> bool {
    true
}

fn one_u32() -> u32 {
    1
}

/// A bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSpec {
    /// Id referred to by other elements.
    pub id: i64,
    /// Name, used in error messages.
    #[serde(default)]
    pub name: String,
    /// Nominal voltage, kV (the per-unit voltage base).
    pub vn_kv: f64,
    /// Out-of-service buses and everything attached to them are left out.
    #[serde(default = "yes")]
    pub in_service: bool,
}

/// A line or cable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSpec {
    /// Id referred to by switches.
    pub id: i64,
    /// Name, used in error messages.
    #[serde(default)]
    pub name: String,
    /// Bus at the `from` end.
    pub from_bus: i64,
    /// Bus at the `to` end.
    pub to_bus: i64,
    /// Length, km.
    pub length_km: f64,
    /// Series resistance, Ω/km.
    pub r_ohm_per_km: f64,
    /// Series reactance, Ω/km.
    pub x_ohm_per_km: f64,
    /// Shunt capacitance, nF/km.
    #[serde(default)]
    pub c_nf_per_km: f64,
    /// Shunt conductance, µS/km.
    #[serde(default)]
    pub g_us_per_km: f64,
    /// Rated (thermal) current of one system, kA.
    pub max_i_ka: f64,
    /// Derating factor applied to `max_i_ka`.
    #[serde(default = "one")]
    pub df: f64,
    /// Identical systems in parallel.
    #[serde(default = "one_u32")]
    pub parallel: u32,
    /// Out-of-service lines are left out.
    #[serde(default = "yes")]
    pub in_service: bool,
}

impl LineSpec {
    /// The current 100 % loading means, kA: `max_i_ka · df · parallel`.
    #[must_use]
    pub fn rated_i_ka(&self) -> f64 {
        self.max_i_ka * self.df * f64::from(self.parallel)
    }
}

/// A two-winding transformer with an optional tap changer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafoSpec {
    /// Id referred to by switches.
    pub id: i64,
    /// Name, used in error messages.
    #[serde(default)]
    pub name: String,
    /// High-voltage bus.
    pub hv_bus: i64,
    /// Low-voltage bus.
    pub lv_bus: i64,
    /// Rated power, MVA.
    pub sn_mva: f64,
    /// Rated high voltage, kV.
    pub vn_hv_kv: f64,
    /// Rated low voltage, kV.
    pub vn_lv_kv: f64,
    /// Short-circuit voltage, %.
    pub vk_percent: f64,
    /// Real part of the short-circuit voltage, %.
    pub vkr_percent: f64,
    /// Iron losses, kW.
    #[serde(default)]
    pub pfe_kw: f64,
    /// No-load current, %.
    #[serde(default)]
    pub i0_percent: f64,
    /// Phase shift of the vector group, degrees (e.g. 150 for Dyn5).
    #[serde(default)]
    pub shift_degree: f64,
    /// Side of the tap changer: `"hv"`, `"lv"` or none.
    #[serde(default)]
    pub tap_side: Option<String>,
    /// `"Ratio"`, `"Symmetrical"` or `"Ideal"`; none means the tap position is ignored, as in
    /// pandapower 3.
    #[serde(default)]
    pub tap_changer_type: Option<String>,
    /// Neutral tap position.
    #[serde(default)]
    pub tap_neutral: f64,
    /// Current tap position.
    #[serde(default)]
    pub tap_pos: f64,
    /// Voltage change per tap step, %.
    #[serde(default)]
    pub tap_step_percent: f64,
    /// Angle change per tap step, degrees.
    #[serde(default)]
    pub tap_step_degree: f64,
    /// Identical transformers in parallel.
    #[serde(default = "one_u32")]
    pub parallel: u32,
    /// Derating factor applied to `sn_mva` for loading.
    #[serde(default = "one")]
    pub df: f64,
    /// Out-of-service transformers are left out.
    #[serde(default = "yes")]
    pub in_service: bool,
}

/// A switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSpec {
    /// The bus the switch sits at.
    pub bus: i64,
    /// The other bus (`et = "b"`), or the line or transformer id.
    pub element: i64,
    /// `"b"` (bus–bus), `"l"` (line end) or `"t"` (transformer end).
    pub et: String,
    /// A closed bus–bus switch joins its two buses into one node; an open line or
    /// transformer switch disconnects that element's end at `bus`.
    pub closed: bool,
}

/// The slack bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtGridSpec {
    /// The bus held at the fixed voltage.
    pub bus: i64,
    /// Voltage magnitude, p.u.
    #[serde(default = "one")]
    pub vm_pu: f64,
    /// Voltage angle, degrees.
    #[serde(default)]
    pub va_degree: f64,
}

/// A load, static generator or storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectionSpec {
    /// Id (pandapower index).
    pub id: i64,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Bus.
    pub bus: i64,
    /// Active power, MW (sign per element kind, see [`GridFile`]).
    pub p_mw: f64,
    /// Reactive power, Mvar (same sign convention as `p_mw`).
    #[serde(default)]
    pub q_mvar: f64,
    /// Multiplies `p_mw` and `q_mvar`.
    #[serde(default = "one")]
    pub scaling: f64,
    /// Out-of-service injections are left out.
    #[serde(default = "yes")]
    pub in_service: bool,
    /// Name of the element's time profile (SimBench), in the grid's profile file.
    #[serde(default)]
    pub profile: Option<String>,
    /// Loads only: share of `p_mw` that is constant impedance, %.
    #[serde(default)]
    pub const_z_p_percent: f64,
    /// Loads only: share of `p_mw` that is constant current, %.
    #[serde(default)]
    pub const_i_p_percent: f64,
    /// Loads only: share of `q_mvar` that is constant impedance, %.
    #[serde(default)]
    pub const_z_q_percent: f64,
    /// Loads only: share of `q_mvar` that is constant current, %.
    #[serde(default)]
    pub const_i_q_percent: f64,
}

/// A reference power flow's results, in the order of the elements above; `None` where the
/// reference reports no value (an isolated or out-of-service element).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceResult {
    /// The tool and its settings.
    pub tool: String,
    /// Bus voltage magnitudes, p.u.
    pub bus_vm_pu: Vec<Option<f64>>,
    /// Bus voltage angles, degrees.
    pub bus_va_degree: Vec<Option<f64>>,
    /// Line loadings, %.
    pub line_loading_percent: Vec<Option<f64>>,
    /// Line currents (larger end), kA.
    pub line_i_ka: Vec<Option<f64>>,
    /// Transformer loadings, %.
    pub trafo_loading_percent: Vec<Option<f64>>,
    /// Active power drawn from the external grid, MW.
    pub ext_grid_p_mw: f64,
    /// Reactive power drawn from the external grid, Mvar.
    pub ext_grid_q_mvar: f64,
}
