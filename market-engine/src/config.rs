//! The engine's configuration: TOML, every key optional, the commented default embedded in the
//! binary (`market-engine config` prints it).

use std::net::SocketAddr;
use std::path::PathBuf;

use gridshare_core::mqtt::BrokerUrl;

use serde::Deserialize;

/// The commented default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../market-engine.toml");

/// Everything the engine needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// The community this engine runs.
    pub community: String,
    /// HTTP settings.
    pub http: HttpConfig,
    /// Database settings.
    pub database: DatabaseConfig,
    /// Broker settings.
    pub mqtt: MqttConfig,
    /// Ingest limits.
    pub ingest: IngestConfig,
    /// The market's rules.
    pub market: crate::market::MarketConfig,
    /// Where settled slots go.
    pub chain: crate::chain::ChainConfig,
    /// Sessions, tokens and login limits.
    pub auth: crate::api::auth::AuthConfig,
}

/// HTTP settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Sustained order requests (place, amend, cancel) per second and account.
    pub orders_per_second: u32,
    /// Order requests an account may send at once.
    pub orders_burst: u32,
    /// Meters one account may register (pending or approved).
    pub meters_per_account: u32,
}

/// Database settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://...`.
    pub url: String,
}

/// Broker settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Address of the embedded broker; empty for none.
    pub embedded_listen: String,
    /// The external broker to subscribe to, `mqtt://host:port` or `mqtts://host:port` (not
    /// used with the embedded broker, which the engine reaches by its own loopback port).
    pub url: String,
    /// User name at the external broker.
    pub username: Option<String>,
    /// Password at the external broker.
    pub password: Option<String>,
    /// PEM file with the CA certificates trusted for `mqtts://`; default: the system bundle.
    pub ca_file: Option<PathBuf>,
    /// Topic prefix.
    pub topic_prefix: String,
}

/// Ingest limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest accepted clock skew into the future, ms.
    pub max_future_skew_ms: u64,
    /// Largest accepted age of a reading when it arrives, ms.
    pub max_age_ms: u64,
    /// Days a recorded rejection is kept.
    pub rejections_kept_days: u32,
    /// How long past a slot's settlement time settlement waits for a meter that reported
    /// during the slot but not yet past its end (a broker or network outage), seconds. What
    /// arrives later is carried into the meter's next settlement.
    pub late_readings_wait_s: u32,
    /// A gap in a meter's sequence numbers is asked for (from the meter's agent) until this
    /// long after it was found, then given up as unfillable, s. Match the agents'
    /// `resend_retention_s`: they keep readings that long after the broker acknowledged them.
    pub gap_give_up_after_s: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            community: "demo".into(),
            http: HttpConfig::default(),
            database: DatabaseConfig::default(),
            mqtt: MqttConfig::default(),
            ingest: IngestConfig::default(),
            market: crate::market::MarketConfig::default(),
            chain: crate::chain::ChainConfig::default(),
            auth: crate::api::auth::AuthConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            orders_per_second: 200,
            orders_burst: 400,
            meters_per_account: 10,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://gridshare-engine.sqlite".into(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            embedded_listen: "127.0.0.1:1883".into(),
            url: "mqtt://127.0.0.1:1883".into(),
            username: None,
            password: None,
            ca_file: None,
            topic_prefix: "gridshare/v1".into(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_future_skew_ms: 30_000,
            max_age_ms: 7 * 24 * 3_600_000,
            rejections_kept_days: 30,
            late_readings_wait_s: 120,
            gap_give_up_after_s: 86_400,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("config {path}: {message}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// What is wrong, naming the key.
    pub message: String,
}

impl EngineConfig {
    /// Parses TOML (`path` only names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        gridshare_core::reading::MeterId::new(self.community.clone()).map_err(|e| {
            format!(
                "community: {}",
                e.to_string().replace("meter_id", "community")
            )
        })?;
        if !self.mqtt.embedded_listen.is_empty() {
            self.mqtt
                .embedded_listen
                .parse::<SocketAddr>()
                .map_err(|e| format!("mqtt.embedded_listen: {e} (expected ip:port or empty)"))?;
        }
        BrokerUrl::parse(&self.mqtt.url).map_err(|e| format!("mqtt.url: {e}"))?;
        self.market.community()?;
        self.auth.validate()?;
        if !(60..=30 * 86_400).contains(&self.ingest.gap_give_up_after_s) {
            return Err(
                "ingest.gap_give_up_after_s: between 60 and 2592000 (30 days), as the agents' \
                 resend_retention_s"
                    .into(),
            );
        }
        if !(self.database.url.starts_with("sqlite:") || self.database.url.starts_with("postgres"))
        {
            return Err("database.url: expected sqlite://path or postgres://...".into());
        }
        Ok(())
    }
}

/// Host and port of a broker URL (`mqtt://` or `mqtts://`).
pub fn broker_host_port(url: &str) -> Result<(String, u16), String> {
    let url = BrokerUrl::parse(url).map_err(|e| e.to_string())?;
    Ok((url.host, url.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commented_default_is_the_default() {
        assert_eq!(
            EngineConfig::parse(DEFAULT_CONFIG, "default").unwrap(),
            EngineConfig::default()
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = EngineConfig::parse("[http]\nlisten = \"nowhere\"\n", "e.toml").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = EngineConfig::parse("[mqtt]\nurl = \"http://x\"\n", "e.toml").unwrap_err();
        assert!(err.to_string().contains("mqtt.url"), "{err}");
        let tls = EngineConfig::parse(
            "[mqtt]\nurl = \"mqtts://broker.example\"\nca_file = \"/etc/gridshare/ca.pem\"\n",
            "e.toml",
        )
        .unwrap();
        assert_eq!(
            BrokerUrl::parse(&tls.mqtt.url).unwrap().port,
            8883,
            "mqtts:// is accepted"
        );
        let err = EngineConfig::parse("[database]\nurl = \"mysql://x\"\n", "e.toml").unwrap_err();
        assert!(err.to_string().contains("database.url"), "{err}");
    }
}
