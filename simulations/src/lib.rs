//! Grid simulations of a neighbourhood: a year of households with load, PV and batteries,
//! trading through the very auctions of `gridshare-core` that the market engine runs, on a
//! radial low-voltage feeder whose AC power flow matches pandapower.
//!
//! - [`scenario`]: the scenario file (TOML);
//! - [`profiles`]: load and PV time series (a default set is built in);
//! - [`solar`]: PV output of any tilt and azimuth from the shipped irradiance;
//! - [`agents`]: the trading agents (Grid Singularity's price ramp, the engine's forecast rule);
//! - [`sim`]: the slot loop — physics of each home, the market, delivery, settlement, KPIs,
//!   the power flow;
//! - [`gas`]: the on-chain cost of settling the period;
//! - [`report`]: KPIs over the run, CSV files and the terminal summary;
//! - [`html`]: the self-contained HTML report with plots;
//! - [`sweep`]: parameter sweeps, sharded across processes and machines;
//! - [`roi`]: "Should I join?", a household's return on investment from its simulated year
//!   and the network token's price paths;
//! - [`grid`]: the neutral grid format and the power flow.

pub mod agents;
pub mod gas;
pub mod grid;
pub mod html;
pub mod profiles;
pub mod report;
pub mod rng;
pub mod roi;
pub mod scenario;
pub mod sim;
pub mod solar;
pub mod sweep;
