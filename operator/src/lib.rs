//! The operator side of Gridshare's rewards: what the `gridshare` command does, as a library.
//!
//! - [`amount`]: token amounts as people write them ("150", "0.5") and as the chain counts them.
//! - [`registration`]: the meter key's signed registration (or key rotation), checked against
//!   what the contract will verify before the key signs anything.
//! - [`fraud`]: when two signed readings of one meter cannot both be true — the same rule the
//!   staking contract applies, so the watcher never reports what the chain would refuse.
//! - [`proof`]: which two stored readings prove the newest provable epoch, or a given one.
//! - [`watcher`]: follows a community's readings (MQTT) and reports fraud automatically.

pub mod amount;
pub mod fraud;
pub mod proof;
pub mod registration;
pub mod watcher;
