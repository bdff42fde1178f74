//! The fixed binary encoding of a reading (version 1, or version 2 with the power flow), the
//! bytes that are signed.

use super::{
    ClockSync, DeviceIdentity, MAX_TEXT_LEN, Measured, MeterId, PowerFlow, Reading, ReadingError,
    ValueStatus,
};

/// The domain tag that starts every encoded reading: `bytes32("GRIDSHARE/METER-READING")`.
/// It keeps a reading signature from being valid for anything else signed by the same key.
pub const DOMAIN_TAG: [u8; 32] = *b"GRIDSHARE/METER-READING\0\0\0\0\0\0\0\0\0";

/// Version byte of the encoding of a reading without power-flow values.
pub const ENCODING_VERSION: u8 = 1;

/// Version byte of the encoding of a reading with power-flow values.
pub const ENCODING_VERSION_POWER_FLOW: u8 = 2;

/// Length of a version-1 encoded reading in bytes.
pub const ENCODED_LEN: usize = 32 + 1 + 4 * 32 + 8 + 8 + 1 + 4 * (1 + 8) + (1 + 4) + (1 + 2);

/// Length of a version-2 encoded reading: version 1 and the power flow.
pub const ENCODED_LEN_V2: usize = ENCODED_LEN + (1 + 4) + (1 + 8) + (1 + 4);

impl Reading {
    /// The encoding version of this reading: 2 when it carries a power-flow value, else 1.
    pub fn encoding_version(&self) -> u8 {
        if self.flow.is_measured() {
            ENCODING_VERSION_POWER_FLOW
        } else {
            ENCODING_VERSION
        }
    }

    /// The exact bytes that are signed: [`ENCODED_LEN`] bytes of version 1, or
    /// [`ENCODED_LEN_V2`] of version 2. See the [module documentation](super) for the layout.
    pub fn encode(&self) -> Vec<u8> {
        let version = self.encoding_version();
        let len = if version == ENCODING_VERSION {
            ENCODED_LEN
        } else {
            ENCODED_LEN_V2
        };
        let mut w = Writer {
            buf: vec![0u8; len],
            at: 0,
        };
        w.put(&DOMAIN_TAG);
        w.put(&[version]);
        for text in [
            self.meter_id.as_str(),
            &self.device.manufacturer,
            &self.device.model,
            &self.device.serial,
        ] {
            w.put_text(text);
        }
        w.put(&self.seq.to_be_bytes());
        w.put(&self.timestamp_ms.to_be_bytes());
        w.put(&[self.clock as u8]);
        for counter in [
            self.import_wh,
            self.export_wh,
            self.battery_charge_wh,
            self.battery_discharge_wh,
        ] {
            w.put(&[counter.status() as u8]);
            w.put(&counter.value().unwrap_or(0).to_be_bytes());
        }
        w.put(&[self.power_w.status() as u8]);
        w.put(&self.power_w.value().unwrap_or(0).to_be_bytes());
        w.put(&[self.soc_bp.status() as u8]);
        w.put(&self.soc_bp.value().unwrap_or(0).to_be_bytes());
        if version == ENCODING_VERSION_POWER_FLOW {
            let f = &self.flow;
            w.put(&[f.pv_power_w.status() as u8]);
            w.put(&f.pv_power_w.value().unwrap_or(0).to_be_bytes());
            w.put(&[f.pv_wh.status() as u8]);
            w.put(&f.pv_wh.value().unwrap_or(0).to_be_bytes());
            w.put(&[f.battery_power_w.status() as u8]);
            w.put(&f.battery_power_w.value().unwrap_or(0).to_be_bytes());
        }
        debug_assert_eq!(w.at, len);
        w.buf
    }

    /// Parses an encoding back into a reading, checking tag, version (and that it matches the
    /// length), text fields, status bytes and ranges. `decode(encode(r)) == r` for every valid
    /// reading, and only the canonical encoding is accepted: a version-2 encoding without a
    /// power-flow value is refused.
    pub fn decode(bytes: &[u8]) -> Result<Reading, ReadingError> {
        let expected_version = match bytes.len() {
            ENCODED_LEN => ENCODING_VERSION,
            ENCODED_LEN_V2 => ENCODING_VERSION_POWER_FLOW,
            got => {
                return Err(ReadingError::WrongLength {
                    expected: if got < ENCODED_LEN_V2 {
                        ENCODED_LEN
                    } else {
                        ENCODED_LEN_V2
                    },
                    got,
                });
            }
        };
        let mut r = Reader { bytes, at: 0 };
        if r.take::<32>() != DOMAIN_TAG {
            return Err(ReadingError::BadDomainTag);
        }
        let [version] = r.take::<1>();
        if version != expected_version {
            return Err(ReadingError::UnsupportedVersion(version));
        }
        let meter_id = MeterId::new(r.text("meter_id")?)?;
        let device = DeviceIdentity::new(
            r.text("device.manufacturer")?,
            r.text("device.model")?,
            r.text("device.serial")?,
        )?;
        let seq = u64::from_be_bytes(r.take());
        let timestamp_ms = u64::from_be_bytes(r.take());
        let [clock] = r.take::<1>();
        let clock = ClockSync::from_byte(clock).ok_or_else(|| ReadingError::InvalidField {
            field: "clock",
            reason: format!("unknown clock sync status {clock}"),
        })?;
        let import_wh = r.measured("import_wh", u64::from_be_bytes)?;
        let export_wh = r.measured("export_wh", u64::from_be_bytes)?;
        let battery_charge_wh = r.measured("battery_charge_wh", u64::from_be_bytes)?;
        let battery_discharge_wh = r.measured("battery_discharge_wh", u64::from_be_bytes)?;
        let power_w = r.measured("power_w", i32::from_be_bytes)?;
        let soc_bp = r.measured("soc_bp", u16::from_be_bytes)?;
        let flow = if version == ENCODING_VERSION_POWER_FLOW {
            let flow = PowerFlow {
                pv_power_w: r.measured("pv_power_w", i32::from_be_bytes)?,
                pv_wh: r.measured("pv_wh", u64::from_be_bytes)?,
                battery_power_w: r.measured("battery_power_w", i32::from_be_bytes)?,
            };
            if !flow.is_measured() {
                return Err(ReadingError::InvalidField {
                    field: "flow",
                    reason: "a version-2 encoding carries at least one power-flow value \
                             (without one, the reading is encoded as version 1)"
                        .into(),
                });
            }
            flow
        } else {
            PowerFlow::NOT_MEASURED
        };
        let reading = Reading {
            meter_id,
            device,
            seq,
            timestamp_ms,
            clock,
            import_wh,
            export_wh,
            battery_charge_wh,
            battery_discharge_wh,
            power_w,
            soc_bp,
            flow,
        };
        reading.validate()?;
        Ok(reading)
    }
}

struct Writer {
    buf: Vec<u8>,
    at: usize,
}

impl Writer {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    /// Text is validated to fit 32 bytes before a reading can exist; zero-padded on the right
    /// like Solidity's `bytes32("...")`.
    fn put_text(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let len = bytes.len().min(MAX_TEXT_LEN);
        self.buf[self.at..self.at + len].copy_from_slice(&bytes[..len]);
        self.at += MAX_TEXT_LEN;
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.at..self.at + N]);
        self.at += N;
        out
    }

    fn text(&mut self, field: &'static str) -> Result<String, ReadingError> {
        let raw = self.take::<MAX_TEXT_LEN>();
        let end = raw.iter().position(|&b| b == 0).unwrap_or(MAX_TEXT_LEN);
        if raw[end..].iter().any(|&b| b != 0) {
            return Err(ReadingError::InvalidField {
                field,
                reason: "non-zero byte after the zero padding".into(),
            });
        }
        String::from_utf8(raw[..end].to_vec()).map_err(|e| ReadingError::InvalidField {
            field,
            reason: format!("not UTF-8: {e}"),
        })
    }

    fn measured<T: Copy + Default + PartialEq, const N: usize>(
        &mut self,
        field: &'static str,
        from_be: fn([u8; N]) -> T,
    ) -> Result<Measured<T>, ReadingError> {
        let [status] = self.take::<1>();
        let value = from_be(self.take::<N>());
        let status = ValueStatus::from_byte(status).ok_or_else(|| ReadingError::InvalidField {
            field,
            reason: format!("unknown value status {status}"),
        })?;
        if status.carries_value() {
            Measured::from_parts(Some(value), status, field)
        } else if value == T::default() {
            Measured::from_parts(None, status, field)
        } else {
            Err(ReadingError::InvalidField {
                field,
                reason: format!("status {status:?} requires a zero value field"),
            })
        }
    }
}
