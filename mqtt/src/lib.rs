//! The MQTT edge that the meter agent and the market engine share: how a client trusts a
//! broker's TLS certificate ([`tls_config`]), and, with the `broker` feature, an MQTT broker
//! embedded in the process ([`broker`]).
//!
//! What a message means (topic layout, broker URLs) is protocol and lives in
//! `gridshare_core::mqtt`; this crate holds only what needs sockets, files or TLS.

#[cfg(feature = "broker")]
pub mod broker;
mod tls;

pub use tls::{CaError, tls_config};

/// The default log filter of the binaries. rumqttd logs every client's disconnect at ERROR
/// (`connection-stop`, `router-drop`), so those lines are off; the broker's real failures are
/// reported by our own code.
pub const DEFAULT_LOG_FILTER: &str = "info,rumqttd=warn,rumqttd::server::broker=off";
