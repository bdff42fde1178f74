//! SunSpec: model definitions generated from the official SunSpec models, decoding of one model
//! block, and discovery of a device's model chain.

pub mod block;
pub mod discovery;
pub mod models;

pub use discovery::{ModelLocation, SunSpecError, SunSpecMap, discover, read_model};
