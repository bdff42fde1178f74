//! A neighbourhood on one machine, for demos and for tests: a simulated SunSpec hybrid inverter
//! ([`simulator`]) served by a Modbus register server ([`register_server`]); and what the
//! integration tests of every crate share: a Mosquitto process a test can stop ([`mosquitto`])
//! and one rule for the external peers a test needs ([`peers`]). The embedded MQTT broker is
//! production code of the engine and lives in `gridshare-mqtt`.
//!
//! Design: the demos of both binaries use it (the agent's and the engine's `demo` feature) and the
//! tests of every crate, so no test suite carries its own copy of this plumbing.

pub mod anvil;
pub mod mosquitto;
pub mod peers;
pub mod register_server;
pub mod simulator;

pub use mosquitto::free_port;
