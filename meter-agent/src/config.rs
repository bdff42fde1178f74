//! The agent's configuration: TOML with every key optional, a commented default embedded in
//! the binary (`meter-agent config` prints it), flags override the file.

use std::path::{Path, PathBuf};

use gridshare_core::reading::{DeviceIdentity, MeterId};
use serde::Deserialize;

use crate::device::{ExtraDevice, ProfileDevice, SunSpecOptions};
use crate::home_assistant::HomeAssistantConfig;
use crate::profile::{Quantity, RegisterProfile};
use crate::publish::{BrokerUrl, MqttConfig};
use crate::transport::{LinkConfig, TransportKind};

/// The commented default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../meter-agent.toml");

/// How long acknowledged readings are kept for the engine's resend requests by default, s
/// (a day: at one reading a second, 86 400 rows of about 700 bytes).
pub const DEFAULT_RESEND_RETENTION_S: u64 = 86_400;

/// The longest retention accepted, s (30 days).
pub const MAX_RESEND_RETENTION_S: u64 = 30 * 86_400;

/// Everything the agent needs to run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The meter's id in its community.
    pub meter_id: String,
    /// The community (market).
    pub community: String,
    /// PKCS#8 key file.
    pub key_file: PathBuf,
    /// Directory of the outbox.
    pub data_dir: PathBuf,
    /// How long a reading stays in the outbox after the broker acknowledged it, s, so that the
    /// market engine can ask for it again if the broker lost it.
    pub resend_retention_s: u64,
    /// Poll period, ms.
    pub poll_interval_ms: u64,
    /// First wait after a device failure, ms.
    pub backoff_initial_ms: u64,
    /// Longest wait after repeated device failures, ms.
    pub backoff_max_ms: u64,
    /// Clock status policy.
    pub clock_sync: ClockPolicy,
    /// How to reach the device.
    pub modbus: LinkConfig,
    /// What to read from it.
    pub device: DeviceConfig,
    /// The broker.
    pub mqtt: MqttConfig,
    /// A copy of each reading for Home Assistant, on the household's own broker.
    pub home_assistant: HomeAssistantConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            meter_id: "home-01".into(),
            community: "demo".into(),
            key_file: "/var/lib/gridshare/meter.key".into(),
            data_dir: "/var/lib/gridshare".into(),
            resend_retention_s: DEFAULT_RESEND_RETENTION_S,
            poll_interval_ms: 1000,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
            clock_sync: ClockPolicy::Auto,
            modbus: LinkConfig::default(),
            device: DeviceConfig::default(),
            mqtt: MqttConfig::default(),
            home_assistant: HomeAssistantConfig::default(),
        }
    }
}

/// How the clock status of each reading is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockPolicy {
    /// Synchronised when the system reports NTP sync, else unsynchronised.
    Auto,
    /// Always synchronised (the operator vouches for the clock).
    Synchronised,
    /// Always informative.
    Informative,
    /// Always unsynchronised.
    Unsynchronised,
}

/// Which register map the device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// SunSpec, discovered.
    Sunspec,
    /// A register profile.
    Profile,
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    /// SunSpec or a register profile.
    pub kind: DeviceKind,
    /// Built-in profile name.
    pub profile: Option<String>,
    /// Profile file.
    pub profile_file: Option<PathBuf>,
    /// Manufacturer, for devices without SunSpec model 1.
    pub manufacturer: String,
    /// Model, for devices without SunSpec model 1.
    pub model: String,
    /// Serial number, for devices without SunSpec model 1.
    pub serial: String,
    /// SunSpec options.
    pub sunspec: SunSpecOptions,
    /// Further devices on the same bus, read in the same poll.
    pub extra: Vec<ExtraSource>,
}

/// Another device on the bus (`[[device.extra]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraSource {
    /// Its unit id.
    pub unit_id: u8,
    /// Built-in profile name.
    pub profile: Option<String>,
    /// Profile file.
    pub profile_file: Option<PathBuf>,
    /// The quantities it provides; empty: whatever the devices before it lack.
    #[serde(default)]
    pub quantities: Vec<Quantity>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            kind: DeviceKind::Sunspec,
            profile: None,
            profile_file: None,
            manufacturer: String::new(),
            model: String::new(),
            serial: String::new(),
            sunspec: SunSpecOptions::default(),
            extra: Vec::new(),
        }
    }
}

/// A builtin profile by name or a profile file; the error names the key and the reason.
fn resolve_profile<'k>(
    name: Option<&str>,
    file: Option<&Path>,
    name_key: &'k str,
    file_key: &'k str,
) -> Result<RegisterProfile, (&'k str, String)> {
    match (name, file) {
        (Some(_), Some(_)) => Err((
            name_key,
            format!("give either {name_key} or {file_key}, not both"),
        )),
        (Some(name), None) => RegisterProfile::builtin(name).map_err(|e| (name_key, e.to_string())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| (file_key, format!("{}: {e}", path.display())))?;
            RegisterProfile::from_toml(&text)
                .map_err(|e| (file_key, format!("{}: {e}", path.display())))
        }
        (None, None) => Err((
            name_key,
            format!("a register profile is needed: set {name_key} or {file_key}"),
        )),
    }
}

/// A configuration that cannot be used, naming the key and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and key.
        message: String,
    },
    /// A value of the right type but unusable.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// The key, e.g. `modbus.timeout_ms`.
        key: &'static str,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A `[[device.extra]]` entry that cannot be used.
    #[error("config key `{key}`: {reason}")]
    Extra {
        /// The key, e.g. `device.extra[1].profile`.
        key: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl AgentConfig {
    /// Parses TOML text (`path` only names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.meter_id()?;
        MeterId::new(self.community.clone())
            .map_err(|e| invalid("community", e.to_string().replace("meter_id", "community")))?;
        if self.resend_retention_s > MAX_RESEND_RETENTION_S {
            return Err(invalid(
                "resend_retention_s",
                format!("must be at most {MAX_RESEND_RETENTION_S} (30 days)"),
            ));
        }
        if self.poll_interval_ms < 100 {
            return Err(invalid("poll_interval_ms", "must be at least 100"));
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return Err(invalid(
                "backoff_max_ms",
                "backoff_initial_ms must be > 0 and backoff_max_ms >= backoff_initial_ms",
            ));
        }
        if !(10..=60_000).contains(&self.modbus.timeout_ms) {
            return Err(invalid("modbus.timeout_ms", "must be between 10 and 60000"));
        }
        if self.modbus.transport != TransportKind::Rtu && self.modbus.address.trim().is_empty() {
            return Err(invalid("modbus.address", "host:port is required for tcp"));
        }
        if !matches!(self.modbus.stop_bits, 1 | 2) {
            return Err(invalid("modbus.stop_bits", "must be 1 or 2"));
        }
        if self.modbus.unit_id > 247 && self.modbus.unit_id != 255 {
            return Err(invalid("modbus.unit_id", "must be 0-247 (or 255)"));
        }
        if self.device.kind == DeviceKind::Profile {
            self.profile()?;
        }
        self.identity()?;
        self.extra_devices()?;
        BrokerUrl::parse(&self.mqtt.url).map_err(|e| invalid("mqtt.url", e.to_string()))?;
        if self.mqtt.max_inflight == 0 {
            return Err(invalid("mqtt.max_inflight", "must be at least 1"));
        }
        if self.home_assistant.enabled {
            crate::home_assistant::validate(&self.home_assistant)
                .map_err(|e| invalid("home_assistant.url", e.to_string()))?;
            for (key, value) in [
                (
                    "home_assistant.discovery_prefix",
                    &self.home_assistant.discovery_prefix,
                ),
                (
                    "home_assistant.topic_prefix",
                    &self.home_assistant.topic_prefix,
                ),
            ] {
                if value.is_empty() || value.contains(['+', '#']) {
                    return Err(invalid(key, "must be a non-empty topic without + or #"));
                }
            }
        }
        Ok(())
    }

    /// The meter id, checked.
    pub fn meter_id(&self) -> Result<MeterId, ConfigError> {
        MeterId::new(self.meter_id.clone()).map_err(|e| invalid("meter_id", e.to_string()))
    }

    /// The configured identity (for profile devices).
    pub fn identity(&self) -> Result<DeviceIdentity, ConfigError> {
        let d = &self.device;
        DeviceIdentity::new(&d.manufacturer, &d.model, &d.serial)
            .map_err(|e| invalid("device.serial", e.to_string()))
    }

    /// The register profile, for `kind = "profile"`.
    pub fn profile(&self) -> Result<RegisterProfile, ConfigError> {
        resolve_profile(
            self.device.profile.as_deref(),
            self.device.profile_file.as_deref(),
            "device.profile",
            "device.profile_file",
        )
        .map_err(|(key, reason)| invalid(key, reason))
    }

    /// The further devices on the bus (`[[device.extra]]`), their profiles loaded.
    pub fn extra_devices(&self) -> Result<Vec<ExtraDevice>, ConfigError> {
        self.device
            .extra
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let fail = |key: &str, reason: String| ConfigError::Extra {
                    key: format!("device.extra[{i}].{key}"),
                    reason,
                };
                if !(1..=247).contains(&e.unit_id) {
                    return Err(fail("unit_id", "must be 1-247".into()));
                }
                let profile = resolve_profile(
                    e.profile.as_deref(),
                    e.profile_file.as_deref(),
                    "profile",
                    "profile_file",
                )
                .map_err(|(key, reason)| fail(key, reason))?;
                Ok(ExtraDevice {
                    unit_id: e.unit_id,
                    device: ProfileDevice {
                        profile,
                        identity: DeviceIdentity::default(),
                    },
                    quantities: e.quantities.clone(),
                })
            })
            .collect()
    }

    /// The outbox file.
    pub fn outbox_path(&self) -> PathBuf {
        self.data_dir.join("outbox.sqlite")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commented_default_parses_to_the_defaults() {
        let parsed = AgentConfig::parse(DEFAULT_CONFIG, "default").unwrap();
        assert_eq!(parsed, AgentConfig::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let err = AgentConfig::parse("[modbus]\ntimeout = 5\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
        let err = AgentConfig::parse("poll_interval_ms = \"fast\"\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("poll_interval_ms"), "{err}");
        let err = AgentConfig::parse("[modbus]\ntransport = \"udp\"\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("udp"), "{err}");

        let c = AgentConfig {
            meter_id: "home 1".into(),
            ..AgentConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("meter_id"));
        let mut c = AgentConfig::default();
        c.device.kind = DeviceKind::Profile;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("device.profile"), "{err}");
        c.device.profile = Some("no-such-meter".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("eastron-sdm630"), "{err}");
        let mut c = AgentConfig::default();
        c.mqtt.url = "http://broker".into();
        assert!(c.validate().unwrap_err().to_string().contains("mqtt.url"));
    }
}
