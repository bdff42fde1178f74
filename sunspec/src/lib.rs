//! SunSpec over Modbus without the Modbus: the model definitions generated from the official
//! SunSpec models ([`models`]), the codec of one model block ([`block`]) and the exact decimal
//! values it produces ([`value`]).
//!
//! Design: this is pure data and arithmetic, kept apart from any transport (as tokio-modbus keeps
//! codec and client apart), so that the agent that decodes a real device and the simulated device
//! that a demo or a test serves use one encoding, and the market engine can run a simulated
//! neighbourhood without compiling the agent's serial and Modbus stack.

pub mod block;
pub mod models;
pub mod value;

/// `SunS` as two registers: the marker a SunSpec map starts with.
pub const SUNS_MARKER: [u16; 2] = [0x5375, 0x6e53];

/// Where SunSpec maps start on real devices, in the order they are probed.
pub const BASE_ADDRESSES: [u16; 3] = [40000, 0, 50000];

/// The model id that ends a chain.
pub const END_MODEL_ID: u16 = 0xFFFF;
