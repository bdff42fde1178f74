//! The Gridshare meter agent: reads a solar/battery inverter and grid meter over Modbus
//! (SunSpec or a vendor register profile), signs every reading with the meter's P-256 key and
//! publishes it over MQTT through an on-disk outbox, so that no reading is ever lost.

pub mod profile;
pub mod sunspec;
pub mod value;
