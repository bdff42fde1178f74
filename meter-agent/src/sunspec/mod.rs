//! SunSpec: model definitions, block decoding, and discovery of a device's model chain.

pub mod block;
pub mod models;
