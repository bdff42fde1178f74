//! The signed meter reading: what a meter agent measured, in a form that the market engine, a
//! command-line verifier and a smart contract all check the same way.
//!
//! A [`Reading`] carries cumulative lifetime counters (so a lost message loses no energy), a
//! gap-free sequence number (so a lost message is visible), the device's identity and a
//! timestamp with its clock-synchronisation status — the structure of OCMF, the signed
//! meter-value format of German EV chargers. Every value has a [`ValueStatus`]: a value the
//! device does not implement is *not* zero, it is absent with the reason recorded.
//!
//! # Binary encoding (version 1)
//!
//! A reading without [`PowerFlow`] values is signed over exactly these [`ENCODED_LEN`] = 222
//! bytes, all integers big-endian, no gaps. It is what Solidity produces with
//!
//! ```solidity
//! abi.encodePacked(
//!     bytes32("GRIDSHARE/METER-READING"), uint8(1),
//!     meterId, manufacturer, model, serial,            // bytes32 each
//!     uint64(seq), uint64(timestampMs), uint8(clockSync),
//!     uint8(importStatus), uint64(importWh),
//!     uint8(exportStatus), uint64(exportWh),
//!     uint8(chargeStatus), uint64(batteryChargeWh),
//!     uint8(dischargeStatus), uint64(batteryDischargeWh),
//!     uint8(powerStatus), int32(powerW),
//!     uint8(socStatus), uint16(socBasisPoints))
//! ```
//!
//! | offset | bytes | field |
//! |---:|---:|---|
//! | 0 | 32 | domain tag: ASCII `GRIDSHARE/METER-READING`, right-padded with zero bytes |
//! | 32 | 1 | encoding version, `1` |
//! | 33 | 32 | meter id (ASCII, right-padded with zero bytes) |
//! | 65 | 32 | device manufacturer (SunSpec model 1 `Mn`, UTF-8, zero-padded) |
//! | 97 | 32 | device model (`Md`) |
//! | 129 | 32 | device serial number (`SN`) |
//! | 161 | 8 | sequence number |
//! | 169 | 8 | timestamp, milliseconds since the Unix epoch, UTC |
//! | 177 | 1 | clock sync ([`ClockSync`]: 0 unsynchronised, 1 informative, 2 synchronised, 3 relative) |
//! | 178 | 1 + 8 | import status, lifetime energy imported from the grid, Wh |
//! | 187 | 1 + 8 | export status, lifetime energy exported to the grid, Wh |
//! | 196 | 1 + 8 | battery charge status, lifetime energy charged into the battery, Wh |
//! | 205 | 1 + 8 | battery discharge status, lifetime energy discharged, Wh |
//! | 214 | 1 + 4 | power status, instantaneous grid power, W, signed, positive = import |
//! | 219 | 1 + 2 | state-of-charge status, battery state of charge in basis points (0–10 000) |
//!
//! # Version 2: solar and battery power
//!
//! A reading that carries any [`PowerFlow`] value is signed over [`ENCODED_LEN_V2`] = 241
//! bytes: the 222 bytes above with version byte `2`, followed by
//!
//! | offset | bytes | field |
//! |---:|---:|---|
//! | 222 | 1 + 4 | PV power status, W, signed (never negative) |
//! | 227 | 1 + 8 | PV energy status, lifetime energy produced by the PV generator, Wh |
//! | 236 | 1 + 4 | battery power status, W, signed, positive = charging |
//!
//! The version follows from the fields: a reading whose power-flow values are all "not
//! implemented" is always version 1, so readings signed before version 2 existed, and readings
//! of plain grid meters, keep their bytes and their signatures; a version-2 encoding without a
//! power-flow value is refused as non-canonical. Every offset of version 1 is unchanged, so a
//! contract that reads the counters reads them at the same place in both versions.
//!
//! A status byte is a [`ValueStatus`] (0 ok, 1 not implemented, 2 implausible, 3 device
//! error). When the status says there is no value (not implemented, device error) the value
//! field is zero and carries no meaning; an implausible value carries the last good value.
//!
//! # Signature
//!
//! ECDSA over the NIST P-256 curve with SHA-256 of the encoding, as the fixed 64-byte `r ‖ s`.
//! The P256VERIFY precompile (EIP-7951 at address `0x100`, RIP-7212 on L2s) checks it on chain
//! from `sha256(encoding)`, `r`, `s` and the public key's `x`, `y`. Public keys are SEC1
//! uncompressed points (65 bytes, `0x04 ‖ x ‖ y`); a [`KeyId`] is the first 8 bytes of the
//! SHA-256 of that point.
//!
//! # JSON envelope
//!
//! Over MQTT a signed reading travels as JSON ([`SignedReading::to_json`]): the fields, the key
//! id and the signature. The verifier never trusts bytes it was given: it rebuilds the encoding
//! from the fields, so any changed field breaks the signature.
//!
//! ```
//! use gridshare_core::reading::*;
//! use ring::rand::SystemRandom;
//!
//! let rng = SystemRandom::new();
//! let key = MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).unwrap(), &rng).unwrap();
//! let reading = Reading {
//!     meter_id: MeterId::new("home-07").unwrap(),
//!     device: DeviceIdentity::new("Gridshare", "SIM-HYBRID-5K", "SN0001").unwrap(),
//!     seq: 1,
//!     timestamp_ms: 1_764_000_000_000,
//!     clock: ClockSync::Synchronised,
//!     import_wh: Measured::ok(1_200_000),
//!     export_wh: Measured::ok(3_400_000),
//!     battery_charge_wh: Measured::not_implemented(),
//!     battery_discharge_wh: Measured::not_implemented(),
//!     power_w: Measured::ok(-1_500),
//!     soc_bp: Measured::not_implemented(),
//!     flow: PowerFlow::NOT_MEASURED,
//! };
//! let signed = key.sign(reading, &rng).unwrap();
//! let json = signed.to_json();
//! let received = SignedReading::from_json(&json).unwrap();
//! received.verify(&key.public_key()).unwrap();
//! ```

mod encoding;
mod envelope;
mod registration;
mod signature;

pub use encoding::{
    DOMAIN_TAG, ENCODED_LEN, ENCODED_LEN_V2, ENCODING_VERSION, ENCODING_VERSION_POWER_FLOW,
};
pub use envelope::{ENVELOPE_FORMAT, ENVELOPE_FORMAT_POWER_FLOW, MAX_ENVELOPE_LEN};
pub use registration::{KeyStatement, REGISTRATION_TAG, ROTATION_TAG, STATEMENT_LEN};
pub use signature::{KeyId, MeterKey, PublicKey, Signature, SignedReading};

use serde::{Deserialize, Serialize};

/// Longest meter id, manufacturer, model or serial number, in bytes (one `bytes32`).
pub const MAX_TEXT_LEN: usize = 32;

/// Largest state of charge, in basis points (100 %).
pub const MAX_SOC_BP: u16 = 10_000;

/// Why a reading, its encoding, its envelope or its signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadingError {
    /// The JSON envelope could not be parsed (syntax, a missing or unknown field, a wrong type,
    /// a truncated message).
    #[error("malformed reading envelope: {reason}")]
    Malformed {
        /// What the parser found wrong, with its position.
        reason: String,
    },
    /// The envelope names a format this implementation does not know.
    #[error("unsupported reading format {found:?} (expected {expected:?})")]
    UnsupportedFormat {
        /// The format string found in the envelope.
        found: String,
        /// The format this implementation speaks.
        expected: &'static str,
    },
    /// A field holds a value outside its allowed range or form.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The field's name as in the JSON envelope.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Binary encoding of the wrong length.
    #[error("encoded reading is {got} bytes, expected {expected}")]
    WrongLength {
        /// The length an encoding must have.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// Binary encoding that does not start with the reading domain tag.
    #[error("encoded bytes are not a Gridshare meter reading (domain tag mismatch)")]
    BadDomainTag,
    /// Binary encoding of a version this implementation does not know, or of a version that
    /// does not match its length.
    #[error(
        "unsupported reading encoding version {0} (expected {ENCODING_VERSION} in {ENCODED_LEN} bytes or {ENCODING_VERSION_POWER_FLOW} in {ENCODED_LEN_V2})"
    )]
    UnsupportedVersion(u8),
    /// A public key or private key that cannot be used.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: String,
    },
    /// The envelope's key id is not the id of the key it is checked against.
    #[error("reading is signed by key {envelope}, but was checked against key {key}")]
    KeyIdMismatch {
        /// Key id claimed by the envelope.
        envelope: KeyId,
        /// Id of the key used for verification.
        key: KeyId,
    },
    /// The signature does not match the fields and the key: a field was changed, or the reading
    /// was signed by another key.
    #[error("signature does not match the reading's fields and key {key}")]
    BadSignature {
        /// Id of the key used for verification.
        key: KeyId,
    },
    /// Signing failed inside the cryptography library.
    #[error("signing failed")]
    SigningFailed,
}

/// A meter's identifier inside its community: 1–32 bytes of `A–Z a–z 0–9 - _ .`, so it is safe
/// as an MQTT topic level and as a `bytes32`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MeterId(String);

impl MeterId {
    /// Checks and wraps a meter id.
    pub fn new(id: impl Into<String>) -> Result<Self, ReadingError> {
        let id = id.into();
        let invalid = |reason: String| ReadingError::InvalidField {
            field: "meter_id",
            reason,
        };
        if id.is_empty() || id.len() > MAX_TEXT_LEN {
            return Err(invalid(format!(
                "must be 1 to {MAX_TEXT_LEN} bytes, got {}",
                id.len()
            )));
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(invalid(format!(
                "character {c:?} is not allowed (use A-Z a-z 0-9 - _ .)"
            )));
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MeterId {
    type Error = ReadingError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<MeterId> for String {
    fn from(id: MeterId) -> Self {
        id.0
    }
}

impl std::fmt::Display for MeterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The measuring device, as it identifies itself (SunSpec model 1, or a register profile's
/// configured identity). Each field is at most 32 bytes of UTF-8 without NUL bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// Manufacturer (`Mn`).
    pub manufacturer: String,
    /// Model (`Md`).
    pub model: String,
    /// Serial number (`SN`).
    pub serial: String,
}

impl DeviceIdentity {
    /// Checks and builds a device identity.
    pub fn new(
        manufacturer: impl Into<String>,
        model: impl Into<String>,
        serial: impl Into<String>,
    ) -> Result<Self, ReadingError> {
        let identity = Self {
            manufacturer: manufacturer.into(),
            model: model.into(),
            serial: serial.into(),
        };
        identity.validate()?;
        Ok(identity)
    }

    pub(crate) fn validate(&self) -> Result<(), ReadingError> {
        for (field, text) in [
            ("device.manufacturer", &self.manufacturer),
            ("device.model", &self.model),
            ("device.serial", &self.serial),
        ] {
            if text.len() > MAX_TEXT_LEN {
                return Err(ReadingError::InvalidField {
                    field,
                    reason: format!("must be at most {MAX_TEXT_LEN} bytes, got {}", text.len()),
                });
            }
            if text.contains('\0') {
                return Err(ReadingError::InvalidField {
                    field,
                    reason: "must not contain NUL bytes".into(),
                });
            }
        }
        Ok(())
    }
}

/// How far the timestamp can be trusted (OCMF's time status `U`, `I`, `S`, `R`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockSync {
    /// The clock has never been synchronised; the timestamp is a guess.
    Unsynchronised = 0,
    /// The clock was set from a source that is not verified (e.g. the device's own clock).
    Informative = 1,
    /// The clock is synchronised to a reliable time source (NTP/PTP).
    Synchronised = 2,
    /// The timestamp is relative to an earlier reading, not absolute.
    Relative = 3,
}

impl ClockSync {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Unsynchronised,
            1 => Self::Informative,
            2 => Self::Synchronised,
            3 => Self::Relative,
            _ => return None,
        })
    }
}

/// The quality of one measured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueStatus {
    /// Measured and plausible.
    Ok = 0,
    /// The device does not provide this value (a "not implemented" sentinel, or not mapped).
    NotImplemented = 1,
    /// The device reported a value that cannot be true (a lifetime counter that went
    /// backwards, a scale factor out of range); the value carried is the last good one.
    Implausible = 2,
    /// The value could not be read (Modbus exception, timeout, NaN).
    DeviceError = 3,
}

impl ValueStatus {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Ok,
            1 => Self::NotImplemented,
            2 => Self::Implausible,
            3 => Self::DeviceError,
            _ => return None,
        })
    }

    /// Whether a value accompanies this status (ok, or the last good value when implausible).
    pub fn carries_value(self) -> bool {
        matches!(self, Self::Ok | Self::Implausible)
    }
}

/// A value with its status. Invariant: `value` is `Some` exactly when the status
/// [carries a value](ValueStatus::carries_value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Measured<T> {
    value: Option<T>,
    status: ValueStatus,
}

impl<T> Measured<T> {
    /// The device does not provide this value (as a constant).
    pub const NOT_IMPLEMENTED: Self = Self {
        value: None,
        status: ValueStatus::NotImplemented,
    };
}

impl<T: Copy> Measured<T> {
    /// A good value.
    pub fn ok(value: T) -> Self {
        Self {
            value: Some(value),
            status: ValueStatus::Ok,
        }
    }

    /// The device does not provide this value.
    pub fn not_implemented() -> Self {
        Self {
            value: None,
            status: ValueStatus::NotImplemented,
        }
    }

    /// The value could not be read.
    pub fn device_error() -> Self {
        Self {
            value: None,
            status: ValueStatus::DeviceError,
        }
    }

    /// The device reported something impossible; `last_good` is carried instead.
    pub fn implausible(last_good: T) -> Self {
        Self {
            value: Some(last_good),
            status: ValueStatus::Implausible,
        }
    }

    /// Builds a measured value from its parts, checking the invariant.
    pub fn from_parts(
        value: Option<T>,
        status: ValueStatus,
        field: &'static str,
    ) -> Result<Self, ReadingError> {
        match (value.is_some(), status.carries_value()) {
            (true, true) | (false, false) => Ok(Self { value, status }),
            (false, true) => Err(ReadingError::InvalidField {
                field,
                reason: format!("status {status:?} requires a value"),
            }),
            (true, false) => Err(ReadingError::InvalidField {
                field,
                reason: format!("status {status:?} must not carry a value (use null)"),
            }),
        }
    }

    /// The value, if the status carries one.
    pub fn value(&self) -> Option<T> {
        self.value
    }

    /// The value only if it is good.
    pub fn ok_value(&self) -> Option<T> {
        if self.status == ValueStatus::Ok {
            self.value
        } else {
            None
        }
    }

    /// The status.
    pub fn status(&self) -> ValueStatus {
        self.status
    }
}

/// One reading of one meter. See the [module documentation](self) for its encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reading {
    /// The meter within its community.
    pub meter_id: MeterId,
    /// The measuring device.
    pub device: DeviceIdentity,
    /// Gap-free sequence number, persisted by the agent across restarts.
    pub seq: u64,
    /// When the device was read, in milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: u64,
    /// How far the timestamp can be trusted.
    pub clock: ClockSync,
    /// Lifetime energy imported from the grid, Wh.
    pub import_wh: Measured<u64>,
    /// Lifetime energy exported to the grid, Wh.
    pub export_wh: Measured<u64>,
    /// Lifetime energy charged into the battery, Wh.
    pub battery_charge_wh: Measured<u64>,
    /// Lifetime energy discharged from the battery, Wh.
    pub battery_discharge_wh: Measured<u64>,
    /// Instantaneous power at the grid connection, W; positive = import.
    pub power_w: Measured<i32>,
    /// Battery state of charge in basis points (10 000 = 100 %).
    pub soc_bp: Measured<u16>,
    /// Solar production and battery power (encoding version 2); all not implemented for a
    /// device that reports only the grid, and then the reading encodes as version 1.
    pub flow: PowerFlow,
}

/// What a hybrid inverter reports beyond the grid connection: the household's solar
/// production and its battery's power. With the grid counters and power these give the house's
/// own consumption (`load = pv + grid − battery`), and so self-sufficiency and
/// self-consumption.
///
/// Design: a separate group, appended to the signed bytes as encoding version 2 only when one
/// of its values is present, so that every reading signed before it existed — and every reading
/// of a plain grid meter — keeps its exact version-1 bytes and signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PowerFlow {
    /// Instantaneous PV power, W (DC side of the inverter), never negative.
    pub pv_power_w: Measured<i32>,
    /// Lifetime energy produced by the PV generator, Wh.
    pub pv_wh: Measured<u64>,
    /// Instantaneous battery power, W; positive = charging, negative = discharging.
    pub battery_power_w: Measured<i32>,
}

impl PowerFlow {
    /// Nothing beyond the grid connection is measured.
    pub const NOT_MEASURED: PowerFlow = PowerFlow {
        pv_power_w: Measured::NOT_IMPLEMENTED,
        pv_wh: Measured::NOT_IMPLEMENTED,
        battery_power_w: Measured::NOT_IMPLEMENTED,
    };

    /// Whether any of its values is reported (the reading then encodes as version 2).
    pub fn is_measured(&self) -> bool {
        *self != Self::NOT_MEASURED
    }
}

impl Default for PowerFlow {
    fn default() -> Self {
        Self::NOT_MEASURED
    }
}

impl Reading {
    /// Checks the invariants that the types alone do not enforce.
    pub fn validate(&self) -> Result<(), ReadingError> {
        self.device.validate()?;
        if let Some(soc) = self.soc_bp.value()
            && soc > MAX_SOC_BP
        {
            return Err(ReadingError::InvalidField {
                field: "soc_bp",
                reason: format!("{soc} exceeds {MAX_SOC_BP} basis points (100 %)"),
            });
        }
        if let Some(pv) = self.flow.pv_power_w.value()
            && pv < 0
        {
            return Err(ReadingError::InvalidField {
                field: "pv_power_w",
                reason: format!("{pv} W: solar power cannot be negative"),
            });
        }
        Ok(())
    }
}
