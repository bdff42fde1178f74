//! Grid simulations of a neighbourhood: a year of households with load, PV and batteries,
//! trading through the very auctions of `gridshare-core` that the market engine runs, on a
//! radial low-voltage feeder whose AC power flow matches pandapower.
//!
//! - [`grid`]: the neutral grid format and the power flow;

pub mod grid;
