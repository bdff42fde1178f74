//! Integration tests of the meter agent against real peers: Modbus servers over TCP, the
//! embedded MQTT broker or Mosquitto (`GRIDSHARE_TEST_MQTT_URL`), and the agent binary itself.

mod agent;
mod modbus;
mod outage;
mod support;
