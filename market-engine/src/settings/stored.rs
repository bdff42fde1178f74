//! The market settings as the database keeps them (`market_settings.settings`, one JSON row per
//! change the operator made): versioned, and separate from the `[market]` section of the config
//! file and from the API body, so that either may rename a key without making stored rows
//! unreadable — the engine reads every stored row when it starts, and would not start.
//!
//! # Changing the layout
//!
//! A stored row is never rewritten: it is read in the layout of its `version` and converted, on
//! every start, to the newest layout. To rename, retype or drop a field of the newest layout,
//! version N:
//!
//! 1. copy `SettingsVN` to `SettingsVN+1` and change the copy (its serde names are the stored
//!    keys from then on);
//! 2. add `StoredSettings::VN+1`, set [`CURRENT_VERSION`] to N+1 and read `"N+1"` in
//!    [`StoredSettings::from_json`];
//! 3. convert N → N+1 (`impl From<SettingsVN> for SettingsVN+1`) and make
//!    [`StoredSettings::upgrade`] take a `VN` row through it, so every older row reaches the
//!    newest layout one step at a time;
//! 4. convert [`MarketConfig`] to and from the newest layout only.
//!
//! Keep a test with a literal row of every older version. A field added with a default needs no
//! new version: `#[serde(default)]` reads the rows written without it, as the seller-margin cap
//! and the sharing keys did.

use serde::{Deserialize, Serialize};

use super::{MarketConfig, MechanismName, PriceRuleName, ShareEntry, SharingKeyName};

/// The layout this engine writes.
pub const CURRENT_VERSION: u32 = 1;

/// A stored row of market settings, in the layout it was written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredSettings {
    /// The first layout: `MarketConfig`'s JSON as the engine wrote it from the start. Rows
    /// written before versions existed have no `version` key and are this layout.
    V1(SettingsV1),
}

/// Why a stored row of market settings cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StoredSettingsError {
    /// The row is not a JSON object.
    #[error("stored market settings are not a JSON object: {0}")]
    NotAnObject(String),
    /// The row names a version this engine does not know: a newer engine wrote it.
    #[error(
        "stored market settings are version {version}, which this engine does not read (it \
         reads 1 to {CURRENT_VERSION}); run the engine release that wrote them, or a newer one"
    )]
    UnknownVersion {
        /// The row's `version`, as stored.
        version: String,
    },
    /// The row does not match its version's layout.
    #[error("stored market settings (version {version}) unreadable: {source}")]
    Unreadable {
        /// The row's layout.
        version: u32,
        /// What does not match.
        source: serde_json::Error,
    },
}

/// The first stored layout. Its keys never change: a renamed key is a new version (see the
/// module's documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsV1 {
    /// See [`MarketConfig::mechanism`].
    pub mechanism: MechanismName,
    /// See [`MarketConfig::price_rule`].
    pub price_rule: PriceRuleName,
    /// See [`MarketConfig::k_basis_points`].
    pub k_basis_points: u16,
    /// See [`MarketConfig::seller_max_margin_basis_points`] (rows from before it existed
    /// read as the default).
    #[serde(default = "default_seller_margin")]
    pub seller_max_margin_basis_points: u16,
    /// See [`MarketConfig::slot_length_s`].
    pub slot_length_s: u32,
    /// See [`MarketConfig::window_opens_before_s`].
    pub window_opens_before_s: u32,
    /// See [`MarketConfig::gate_closure_before_s`].
    pub gate_closure_before_s: u32,
    /// See [`MarketConfig::settlement_after_s`].
    pub settlement_after_s: u32,
    /// See [`MarketConfig::retail_per_kwh`].
    pub retail_per_kwh: u64,
    /// See [`MarketConfig::feed_in_per_kwh`].
    pub feed_in_per_kwh: u64,
    /// See [`MarketConfig::grid_fee_per_kwh`].
    pub grid_fee_per_kwh: u64,
    /// See [`MarketConfig::sharing_key`] (rows from before sharing read as the default).
    #[serde(default)]
    pub sharing_key: SharingKeyName,
    /// See [`MarketConfig::sharing_price_per_kwh`].
    #[serde(default)]
    pub sharing_price_per_kwh: Option<u64>,
    /// See [`MarketConfig::sharing_shares`].
    #[serde(default)]
    pub sharing_shares: Vec<ShareEntry>,
}

fn default_seller_margin() -> u16 {
    MarketConfig::default().seller_max_margin_basis_points
}

/// A row as written: the layout's keys after its `version`.
///
/// Design: the version is written as a string, `"1"`, as the engine has written it since rows
/// had versions, so an engine rolled back to an earlier release still reads the rows this one
/// wrote.
#[derive(Serialize)]
struct Versioned<'a, T> {
    version: String,
    #[serde(flatten)]
    settings: &'a T,
}

impl From<&MarketConfig> for SettingsV1 {
    fn from(c: &MarketConfig) -> Self {
        Self {
            mechanism: c.mechanism,
            price_rule: c.price_rule,
            k_basis_points: c.k_basis_points,
            seller_max_margin_basis_points: c.seller_max_margin_basis_points,
            slot_length_s: c.slot_length_s,
            window_opens_before_s: c.window_opens_before_s,
            gate_closure_before_s: c.gate_closure_before_s,
            settlement_after_s: c.settlement_after_s,
            retail_per_kwh: c.retail_per_kwh,
            feed_in_per_kwh: c.feed_in_per_kwh,
            grid_fee_per_kwh: c.grid_fee_per_kwh,
            sharing_key: c.sharing_key,
            sharing_price_per_kwh: c.sharing_price_per_kwh,
            sharing_shares: c.sharing_shares.clone(),
        }
    }
}

impl From<SettingsV1> for MarketConfig {
    fn from(v: SettingsV1) -> Self {
        Self {
            mechanism: v.mechanism,
            price_rule: v.price_rule,
            k_basis_points: v.k_basis_points,
            seller_max_margin_basis_points: v.seller_max_margin_basis_points,
            slot_length_s: v.slot_length_s,
            window_opens_before_s: v.window_opens_before_s,
            gate_closure_before_s: v.gate_closure_before_s,
            settlement_after_s: v.settlement_after_s,
            retail_per_kwh: v.retail_per_kwh,
            feed_in_per_kwh: v.feed_in_per_kwh,
            grid_fee_per_kwh: v.grid_fee_per_kwh,
            sharing_key: v.sharing_key,
            sharing_price_per_kwh: v.sharing_price_per_kwh,
            sharing_shares: v.sharing_shares,
        }
    }
}

impl StoredSettings {
    /// The stored form of `config`, in the newest layout.
    pub fn from_config(config: &MarketConfig) -> Self {
        Self::V1(config.into())
    }

    /// The row's version.
    pub fn version(&self) -> u32 {
        match self {
            Self::V1(_) => 1,
        }
    }

    /// The row in the newest layout: each older layout converted one version at a time.
    pub fn upgrade(self) -> SettingsV1 {
        match self {
            Self::V1(v) => v,
        }
    }

    /// The settings a stored row describes, whatever its layout.
    pub fn into_config(self) -> MarketConfig {
        self.upgrade().into()
    }

    /// Writes the stored JSON: `version` first, then the layout's keys.
    pub fn to_json(&self) -> String {
        let version = self.version().to_string();
        let written = match self {
            Self::V1(settings) => serde_json::to_string(&Versioned { version, settings }),
        };
        // A struct of plain numbers, strings and enums always serialises.
        written.unwrap_or_default()
    }

    /// Reads a stored row in the layout its `version` names; a row without `version` is the
    /// first layout.
    pub fn from_json(text: &str) -> Result<Self, StoredSettingsError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| StoredSettingsError::NotAnObject(e.to_string()))?;
        let serde_json::Value::Object(mut row) = value else {
            return Err(StoredSettingsError::NotAnObject(format!("found {value}")));
        };
        // Every version this engine reads, with its layout.
        match row.remove("version") {
            None => layout(1, row).map(Self::V1),
            Some(serde_json::Value::String(v)) if v == "1" => layout(1, row).map(Self::V1),
            Some(other) => Err(StoredSettingsError::UnknownVersion {
                version: match other {
                    serde_json::Value::String(v) => v,
                    v => v.to_string(),
                },
            }),
        }
    }
}

/// The keys of a row (without `version`) read as the layout of `version`.
fn layout<T: serde::de::DeserializeOwned>(
    version: u32,
    row: serde_json::Map<String, serde_json::Value>,
) -> Result<T, StoredSettingsError> {
    serde_json::from_value(serde_json::Value::Object(row))
        .map_err(|source| StoredSettingsError::Unreadable { version, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the engine wrote for the default settings from issue 19 (sharing) on: the
    /// `version` first, then every key of `MarketConfig`.
    const WRITTEN_WITH_SHARING: &str = r#"{"version":"1","mechanism":"call","price_rule":"k-factor","k_basis_points":5000,"seller_max_margin_basis_points":500,"slot_length_s":900,"window_opens_before_s":86400,"gate_closure_before_s":300,"settlement_after_s":900,"retail_per_kwh":30000,"feed_in_per_kwh":8000,"grid_fee_per_kwh":1000,"sharing_key":"proportional","sharing_price_per_kwh":null,"sharing_shares":[]}"#;

    #[test]
    fn a_row_written_by_todays_engine_is_read_and_written_alike() {
        let read = StoredSettings::from_json(WRITTEN_WITH_SHARING).unwrap();
        assert_eq!(read.version(), 1);
        assert_eq!(read.clone().into_config(), MarketConfig::default());
        assert_eq!(read.to_json(), WRITTEN_WITH_SHARING);
        assert_eq!(
            StoredSettings::from_config(&MarketConfig::default()).to_json(),
            WRITTEN_WITH_SHARING
        );
    }

    /// Rows written before the sharing keys existed (issue 18: versioned, with the
    /// seller-margin cap) read them as the defaults.
    #[test]
    fn a_row_without_the_sharing_keys_reads_them_as_defaults() {
        let row = r#"{"version":"1","mechanism":"pay-as-offer","price_rule":"k-factor-capped","k_basis_points":4000,"seller_max_margin_basis_points":300,"slot_length_s":900,"window_opens_before_s":3600,"gate_closure_before_s":300,"settlement_after_s":900,"retail_per_kwh":31000,"feed_in_per_kwh":8000,"grid_fee_per_kwh":0}"#;
        let read = StoredSettings::from_json(row).unwrap().into_config();
        assert_eq!(
            read,
            MarketConfig {
                mechanism: MechanismName::PayAsOffer,
                price_rule: PriceRuleName::KFactorCapped,
                k_basis_points: 4000,
                seller_max_margin_basis_points: 300,
                window_opens_before_s: 3600,
                retail_per_kwh: 31_000,
                grid_fee_per_kwh: 0,
                ..MarketConfig::default()
            }
        );
    }

    /// Rows written before settings had versions (the config struct itself, serialised, without
    /// the seller-margin cap) are the first layout.
    #[test]
    fn rows_without_a_version_are_the_first_layout() {
        let old = r#"{"mechanism":"continuous","price_rule":"midpoint","k_basis_points":5000,
            "slot_length_s":900,"window_opens_before_s":86400,"gate_closure_before_s":300,
            "settlement_after_s":900,"retail_per_kwh":31000,"feed_in_per_kwh":8000,
            "grid_fee_per_kwh":1000}"#;
        let read = StoredSettings::from_json(old).unwrap();
        assert_eq!(read.version(), 1);
        let read = read.into_config();
        assert_eq!(read.mechanism, MechanismName::Continuous);
        assert_eq!(read.price_rule, PriceRuleName::Midpoint);
        assert_eq!(read.retail_per_kwh, 31_000);
        assert_eq!(read.seller_max_margin_basis_points, 500);
    }

    #[test]
    fn a_row_of_an_unknown_version_is_refused_naming_it() {
        let newer = WRITTEN_WITH_SHARING.replace(r#""version":"1""#, r#""version":"2""#);
        for (row, version) in [(newer.as_str(), "2"), (r#"{"version":7}"#, "7")] {
            let e = StoredSettings::from_json(row).unwrap_err();
            assert!(
                matches!(&e, StoredSettingsError::UnknownVersion { version: v } if v == version),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(text.contains(&format!("version {version}")), "{text}");
            assert!(text.contains("reads 1 to 1"), "{text}");
        }
    }

    #[test]
    fn a_row_that_does_not_match_its_layout_says_which_version() {
        let e = StoredSettings::from_json(r#"{"version":"1","mechanism":"dutch"}"#).unwrap_err();
        assert!(matches!(
            e,
            StoredSettingsError::Unreadable { version: 1, .. }
        ));
        assert!(e.to_string().contains("version 1"), "{e}");
        assert!(matches!(
            StoredSettings::from_json("[1]").unwrap_err(),
            StoredSettingsError::NotAnObject(_)
        ));
    }

    #[test]
    fn stored_settings_round_trip_with_their_version() {
        let config: MarketConfig = toml::from_str(
            "mechanism = \"sharing\"\nsharing_key = \"fixed\"\nsharing_price_per_kwh = 19000\n\
             grid_fee_per_kwh = 0\n\
             sharing_shares = [{ account = 2, basis_points = 4000 }, { account = 1, basis_points = 6000 }]",
        )
        .unwrap();
        let text = StoredSettings::from_config(&config).to_json();
        assert!(text.starts_with(r#"{"version":"1","#), "{text}");
        assert_eq!(
            StoredSettings::from_json(&text).unwrap().into_config(),
            config
        );
    }
}
