//! Gridshare's shared rules: the words every part of the platform speaks.
//!
//! This crate is pure — no IO, no async, no clock — so that the market engine and the grid
//! simulator run byte-for-byte the same code:
//!
//! - [`reading`]: the signed meter reading (fields, fixed binary encoding, ECDSA P-256
//!   signature, JSON envelope for MQTT);
//! - [`market`]: delivery slots, order books, double auctions, grid fees, delivery and netting;
//! - [`mqtt`]: the broker URL and the MQTT topic layout readings travel under.

pub mod market;
pub mod mqtt;
pub mod reading;
