//! Integration tests of the meter agent against real peers: Modbus servers over TCP, the
//! embedded MQTT broker or Mosquitto (`GRIDSHARE_TEST_MQTT_URL`), and the agent binary itself.

// Tests unwrap and index freely: a panic is a test failure with its location.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod agent;
mod cli;
mod home_assistant;
mod modbus;
mod outage;
mod support;
mod vendors;
