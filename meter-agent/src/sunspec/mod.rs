//! SunSpec on a live device: discovery of its model chain and reading one model block. The model
//! definitions and the block codec are pure and live in `gridshare-sunspec` (re-exported here),
//! so the simulated device of `gridshare-testbed` encodes with the very code the agent decodes
//! with.

pub mod discovery;

pub use discovery::{ModelLocation, SunSpecError, SunSpecMap, discover, read_model};
pub use gridshare_sunspec::{block, models};
