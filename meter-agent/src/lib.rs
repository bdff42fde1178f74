//! The Gridshare meter agent: reads a solar/battery inverter and grid meter over Modbus
//! (SunSpec or a vendor register profile), signs every reading with the meter's P-256 key and
//! publishes it over MQTT through an on-disk outbox, so that no reading is ever lost.
//!
//! The path of a reading: [`transport`] (one Modbus master per bus) → [`sunspec`] or
//! [`profile`] decoding into [`value::Scaled`] → [`device::Snapshot`] with import/export sign
//! conventions → [`normalise`] (plausibility, never 0 for a missing value) → signed
//! [`gridshare_core::reading::SignedReading`] → [`outbox`] (SQLite, before publishing) →
//! [`publish`] (MQTT QoS 1, deleted on PUBACK).
//!
//! The simulated inverter and the embedded broker of `meter-agent demo` come from
//! `gridshare-testbed` and `gridshare-mqtt`, only with the `demo` feature: the agent installed
//! in a home carries neither.

pub mod agent;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod device;
pub mod doctor;
pub mod home_assistant;
pub mod keys;
pub mod normalise;
pub mod outbox;
pub mod profile;
pub mod publish;
pub mod sunspec;
pub mod transport;

pub use gridshare_sunspec::value;
