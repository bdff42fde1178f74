//! The JSON envelope in which a signed reading travels over MQTT.

use serde::{Deserialize, Serialize};

use super::{
    ClockSync, DeviceIdentity, KeyId, Measured, MeterId, PowerFlow, Reading, ReadingError,
    Signature, SignedReading, ValueStatus,
};

/// The `format` field of the envelope of a reading without power-flow values (encoding
/// version 1).
pub const ENVELOPE_FORMAT: &str = "gridshare-reading/1";

/// The `format` field of the envelope of a reading with power-flow values (encoding version
/// 2): the version-1 fields plus `pv_power_w`, `pv_wh` and `battery_power_w`, each optional
/// (absent = not implemented).
pub const ENVELOPE_FORMAT_POWER_FLOW: &str = "gridshare-reading/2";

/// Largest envelope accepted, in bytes. A real envelope is about 900 bytes; anything far larger
/// is refused before parsing so a hostile publisher cannot make a receiver allocate at will.
pub const MAX_ENVELOPE_LEN: usize = 4096;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: String,
    meter_id: MeterId,
    device: DeviceIdentity,
    seq: u64,
    timestamp_ms: u64,
    clock: ClockSync,
    import_wh: RawMeasured<u64>,
    export_wh: RawMeasured<u64>,
    battery_charge_wh: RawMeasured<u64>,
    battery_discharge_wh: RawMeasured<u64>,
    power_w: RawMeasured<i32>,
    soc_bp: RawMeasured<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pv_power_w: Option<RawMeasured<i32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pv_wh: Option<RawMeasured<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    battery_power_w: Option<RawMeasured<i32>>,
    key_id: String,
    signature: String,
}

/// A power-flow value in the envelope: left out when not implemented.
fn optional<T: Copy>(m: Measured<T>) -> Option<RawMeasured<T>> {
    (m.status() != ValueStatus::NotImplemented).then(|| m.into())
}

fn flow_value<T: Copy>(
    raw: Option<RawMeasured<T>>,
    field: &'static str,
) -> Result<Measured<T>, ReadingError> {
    raw.map_or(Ok(Measured::NOT_IMPLEMENTED), |r| r.check(field))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeasured<T> {
    value: Option<T>,
    status: ValueStatus,
}

impl<T: Copy> From<Measured<T>> for RawMeasured<T> {
    fn from(m: Measured<T>) -> Self {
        Self {
            value: m.value(),
            status: m.status(),
        }
    }
}

impl<T: Copy> RawMeasured<T> {
    fn check(self, field: &'static str) -> Result<Measured<T>, ReadingError> {
        Measured::from_parts(self.value, self.status, field)
    }
}

impl SignedReading {
    /// The JSON envelope (one line).
    pub fn to_json(&self) -> String {
        let r = &self.reading;
        let format = if r.flow.is_measured() {
            ENVELOPE_FORMAT_POWER_FLOW
        } else {
            ENVELOPE_FORMAT
        };
        let envelope = Envelope {
            format: format.to_owned(),
            meter_id: r.meter_id.clone(),
            device: r.device.clone(),
            seq: r.seq,
            timestamp_ms: r.timestamp_ms,
            clock: r.clock,
            import_wh: r.import_wh.into(),
            export_wh: r.export_wh.into(),
            battery_charge_wh: r.battery_charge_wh.into(),
            battery_discharge_wh: r.battery_discharge_wh.into(),
            power_w: r.power_w.into(),
            soc_bp: r.soc_bp.into(),
            pv_power_w: optional(r.flow.pv_power_w),
            pv_wh: optional(r.flow.pv_wh),
            battery_power_w: optional(r.flow.battery_power_w),
            key_id: self.key_id.to_string(),
            signature: self.signature.to_hex(),
        };
        // Serialising plain strings and integers into a String cannot fail.
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// Parses an envelope and checks every field. The signature is *not* checked here: call
    /// [`SignedReading::verify`] with the meter's registered key.
    pub fn from_json(text: &str) -> Result<Self, ReadingError> {
        Self::from_json_bytes(text.as_bytes())
    }

    /// As [`SignedReading::from_json`], from raw bytes (an MQTT payload).
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, ReadingError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(ReadingError::Malformed {
                reason: format!(
                    "envelope is {} bytes, more than the limit of {MAX_ENVELOPE_LEN}",
                    bytes.len()
                ),
            });
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let e: Envelope = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            // Name the offending field: "seq: invalid value: integer `-1`, expected u64 ...".
            let path = e.path().to_string();
            let inner = e.into_inner();
            ReadingError::Malformed {
                reason: if path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                },
            }
        })?;
        de.end().map_err(|e| ReadingError::Malformed {
            reason: format!("trailing data after the envelope: {e}"),
        })?;
        if e.format != ENVELOPE_FORMAT && e.format != ENVELOPE_FORMAT_POWER_FLOW {
            return Err(ReadingError::UnsupportedFormat {
                found: e.format,
                expected: ENVELOPE_FORMAT_POWER_FLOW,
            });
        }
        let flow = PowerFlow {
            pv_power_w: flow_value(e.pv_power_w, "pv_power_w")?,
            pv_wh: flow_value(e.pv_wh, "pv_wh")?,
            battery_power_w: flow_value(e.battery_power_w, "battery_power_w")?,
        };
        // One envelope per reading: the format says whether power-flow values follow.
        if flow.is_measured() != (e.format == ENVELOPE_FORMAT_POWER_FLOW) {
            return Err(ReadingError::InvalidField {
                field: "format",
                reason: format!(
                    "{:?} with{} power-flow values: use {ENVELOPE_FORMAT_POWER_FLOW:?} exactly \
                     when pv_power_w, pv_wh or battery_power_w is reported",
                    e.format,
                    if flow.is_measured() { "" } else { "out" }
                ),
            });
        }
        let reading = Reading {
            meter_id: e.meter_id,
            device: e.device,
            seq: e.seq,
            timestamp_ms: e.timestamp_ms,
            clock: e.clock,
            import_wh: e.import_wh.check("import_wh")?,
            export_wh: e.export_wh.check("export_wh")?,
            battery_charge_wh: e.battery_charge_wh.check("battery_charge_wh")?,
            battery_discharge_wh: e.battery_discharge_wh.check("battery_discharge_wh")?,
            power_w: e.power_w.check("power_w")?,
            soc_bp: e.soc_bp.check("soc_bp")?,
            flow,
        };
        reading.validate()?;
        Ok(Self {
            reading,
            key_id: KeyId::from_hex(&e.key_id)?,
            signature: Signature::from_hex(&e.signature)?,
        })
    }
}
