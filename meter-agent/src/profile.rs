//! Register profiles: data-driven register maps for devices that do not speak SunSpec (Eastron,
//! Huawei, Sungrow, Growatt, GoodWe, Victron, Chint, ABB, Carlo Gavazzi, Janitza, ...), written as
//! TOML. Each builtin profile names the vendor document its registers come from; the README's
//! device list is generated from these files (`meter-agent devices --markdown`).
//!
//! A profile lists, for each quantity the agent publishes, where the value lives (function code,
//! address), how it is encoded (type, word order), how to scale it to the quantity's unit (a
//! decimal exponent), whether to negate it (sign conventions differ per vendor) and which raw bit
//! patterns mean "invalid" (vendor sentinels such as Huawei's 0x7FFF_FFFF). The transport runs the
//! [`RegisterProfile::read_plan`] (one Modbus request per [`ReadSpan`]) and hands the registers
//! to [`RegisterProfile::decode`]. Nothing here does IO.
//!
//! # TOML format
//!
//! ```toml
//! name = "eastron-sdm630"
//! description = "Eastron SDM630 three-phase meter"
//! address_base = 0              # optional: subtracted from every address (1 or 30001 for
//!                               # vendor docs with 1-based / 30001-style numbering)
//! max_registers_per_read = 100  # optional, 1..=125 (default 100)
//! max_gap = 4                   # optional: unused registers a read may span to merge (default 4;
//!                               # 0 for devices that reject reads over undefined registers)
//! manufacturer = "Eastron"      # optional (required for builtins): for the device list
//! models = "SDM630 V2, SDM630MCT"
//! category = "meter"            # meter | inverter | hybrid inverter | gateway
//! datasheet = "Eastron SDM630 Modbus Protocol V1.8"  # the document the registers come from
//! connection = "RS485 9600 8N1, unit id 1"            # how it is usually reached
//!
//! [[register]]
//! quantity = "power_w"          # import_wh | export_wh | battery_charge_wh |
//!                               # battery_discharge_wh | power_w | soc_percent |
//!                               # pv_power_w | pv_wh | battery_power_w (+ = charging)
//! function = "input"            # "holding" (FC 3) | "input" (FC 4)
//! address = 0x0034              # protocol address before address_base is subtracted
//! type = "f32"                  # u16 i16 u32 i32 u64 i64 f32 f64
//! word_order = "big_endian"     # optional: big_endian (default) | little_endian (low word first)
//! scale = 0                     # optional: value × 10^scale = W, Wh or % (default 0)
//! invert = false                # optional: negate (default false)
//! sentinels = [0x7FFFFFFF]      # optional: raw bit patterns meaning invalid
//! ```
//!
//! A quantity may be given by several registers: their values are added (the three phases of a
//! meter, or import power minus export power with `invert = true` on the second). If any of them
//! has no value, the quantity has none.
//!
//! Decoding: integers become `Scaled { mantissa: raw, exponent: scale }` (signed types
//! sign-extended; a u64 above i64::MAX is out of range); finite floats become
//! `Scaled { mantissa: round(f × 10^(scale+3)), exponent: −3 }` (milli-unit precision, exact
//! from the float's bits), NaN/±Inf are [`PointError::NotANumber`]. A sentinel match on the raw
//! bit pattern (zero-extended from the register's width, before scaling or inversion) is
//! [`PointError::NotImplemented`]. `invert` negates the mantissa.

use std::fmt;

use serde::Deserialize;

use crate::value::{PointError, PointRow, Scaled, float_to_mantissa, raw_hex};

/// The Modbus limit on registers per read request.
const MODBUS_MAX_READ: u16 = 125;
/// Default registers per read request: below the limit, as some devices answer 125 poorly.
const DEFAULT_MAX_READ: u16 = 100;
/// Default number of unused registers a read may span to merge two registers into one request.
const DEFAULT_MAX_GAP: u16 = 4;
/// Decimal digits kept when a float register is converted: milli-units.
const FLOAT_DECIMALS: i8 = 3;

/// What a register contributes to a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Lifetime energy imported from the grid, Wh.
    ImportWh,
    /// Lifetime energy exported to the grid, Wh.
    ExportWh,
    /// Lifetime energy charged into the battery, Wh.
    BatteryChargeWh,
    /// Lifetime energy discharged from the battery, Wh.
    BatteryDischargeWh,
    /// Active power at the grid connection, W; positive = import from the grid.
    PowerW,
    /// Battery state of charge, percent.
    SocPercent,
    /// PV (solar) power, W.
    PvPowerW,
    /// Lifetime energy produced by PV, Wh.
    PvWh,
    /// Battery power, W; positive = charging.
    BatteryPowerW,
}

impl Quantity {
    /// The TOML name, e.g. `import_wh`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Quantity::ImportWh => "import_wh",
            Quantity::ExportWh => "export_wh",
            Quantity::BatteryChargeWh => "battery_charge_wh",
            Quantity::BatteryDischargeWh => "battery_discharge_wh",
            Quantity::PowerW => "power_w",
            Quantity::SocPercent => "soc_percent",
            Quantity::PvPowerW => "pv_power_w",
            Quantity::PvWh => "pv_wh",
            Quantity::BatteryPowerW => "battery_power_w",
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Modbus read function. In TOML: `"holding"` or `"input"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    /// Read holding registers, function code 3.
    Holding,
    /// Read input registers, function code 4.
    Input,
}

impl Function {
    /// The Modbus function code.
    pub fn code(&self) -> u8 {
        match self {
            Function::Holding => 3,
            Function::Input => 4,
        }
    }
}

/// Register data type. In TOML: `u16`, `i16`, `u32`, `i32`, `u64`, `i64`, `f32`, `f64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterType {
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit, 2 registers.
    U32,
    /// Signed 32-bit, 2 registers.
    I32,
    /// Unsigned 64-bit, 4 registers.
    U64,
    /// Signed 64-bit, 4 registers.
    I64,
    /// IEEE 754 single precision, 2 registers.
    F32,
    /// IEEE 754 double precision, 4 registers.
    F64,
}

impl RegisterType {
    /// Width in registers.
    pub fn width(&self) -> u16 {
        match self {
            RegisterType::U16 | RegisterType::I16 => 1,
            RegisterType::U32 | RegisterType::I32 | RegisterType::F32 => 2,
            RegisterType::U64 | RegisterType::I64 | RegisterType::F64 => 4,
        }
    }
}

/// Order of the 16-bit words of a multi-register value (bytes within a word are always
/// big-endian, as Modbus defines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// High word first, the Modbus norm.
    #[default]
    BigEndian,
    /// Low word first: "swapped" (Sungrow, Carlo Gavazzi int32; SolarEdge floats).
    LittleEndian,
}

/// One register of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterDef {
    /// The quantity it provides.
    pub quantity: Quantity,
    /// Read function.
    pub function: Function,
    /// 0-based protocol address (the TOML's `address` minus the profile's `address_base`).
    pub address: u16,
    /// Data type.
    pub kind: RegisterType,
    /// Word order of multi-register types.
    pub word_order: WordOrder,
    /// Decimal exponent: value × 10^scale = the quantity's unit (Wh, W, %). E.g. SDM630 total
    /// import is a kWh float → scale = 3.
    pub scale: i8,
    /// Negate the value (e.g. a meter whose positive power means export).
    pub invert: bool,
    /// Raw bit patterns (zero-extended from the register's width) meaning not implemented or
    /// invalid, e.g. Huawei 0x7FFF_FFFF.
    pub sentinels: Vec<u64>,
}

impl RegisterDef {
    /// One past the last register this value occupies (u32: the last may be 0xFFFF).
    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.kind.width())
    }
}

/// A register map for a device that does not speak SunSpec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterProfile {
    /// Profile name, e.g. `eastron-sdm630`.
    pub name: String,
    /// What device it is for, and its sources.
    pub description: String,
    /// The registers, one per quantity.
    pub registers: Vec<RegisterDef>,
    /// Largest read request the plan makes (1..=125, default 100).
    pub max_registers_per_read: u16,
    /// Unused registers a read may span to merge neighbours (default 4; 0 = never span unused
    /// registers, for devices that reject reads over undefined addresses).
    pub max_gap: u16,
    /// What the profile is for and where its registers come from.
    pub about: ProfileAbout,
}

/// A profile's description for people: the device list in the README is made from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ProfileAbout {
    /// Manufacturer, e.g. `Eastron`.
    #[serde(default)]
    pub manufacturer: String,
    /// Models or series covered, e.g. `SDM630 V2, SDM630MCT`.
    #[serde(default)]
    pub models: String,
    /// `meter`, `inverter`, `hybrid inverter` or `gateway`.
    #[serde(default)]
    pub category: String,
    /// The vendor document the registers are taken from.
    #[serde(default)]
    pub datasheet: String,
    /// How the device is usually reached (bus, port, unit id).
    #[serde(default)]
    pub connection: String,
}

/// One Modbus read request: function, start address and count — the transport executes these (in one request each) and hands back the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSpan {
    /// Read function.
    pub function: Function,
    /// First register, 0-based protocol address.
    pub address: u16,
    /// Number of registers (1..=125).
    pub count: u16,
}

/// Why a profile cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// The TOML does not parse or does not match the profile format; the message names the key
    /// and line.
    #[error("register profile is not valid TOML for a profile: {message}")]
    Toml {
        /// The parser's message, with the offending key and line.
        message: String,
    },
    /// A key has a value the profile cannot use.
    #[error("register profile key `{key}`: {reason}")]
    Invalid {
        /// The key, e.g. `register[2].scale`.
        key: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// No builtin profile of that name.
    #[error("no builtin register profile named {name:?}; builtin profiles are: {known}")]
    UnknownBuiltin {
        /// The name asked for.
        name: String,
        /// The builtin names, comma-separated.
        known: String,
    },
}

macro_rules! builtins {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../profiles/", $name, ".toml")))),*]
    };
}

/// Builtin profiles: (name, TOML), sorted by name; each file is `profiles/<name>.toml`.
const BUILTINS: &[(&str, &str)] = builtins![
    "abb-b-series",
    "carlo-gavazzi-em24",
    "chint-dtsu666",
    "eastron-sdm120",
    "eastron-sdm630",
    "eastron-sdm72",
    "goodwe-et",
    "growatt-sph",
    "huawei-sun2000",
    "janitza-b23",
    "sma-inverter",
    "sungrow-sh",
    "victron-gx-grid",
    "victron-gx-system",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    address_base: u32,
    #[serde(default = "default_max_read")]
    max_registers_per_read: u16,
    #[serde(default = "default_max_gap")]
    max_gap: u16,
    #[serde(default)]
    register: Vec<RawRegister>,
    #[serde(default)]
    manufacturer: String,
    #[serde(default)]
    models: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    datasheet: String,
    #[serde(default)]
    connection: String,
}

fn default_max_read() -> u16 {
    DEFAULT_MAX_READ
}

fn default_max_gap() -> u16 {
    DEFAULT_MAX_GAP
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegister {
    quantity: Quantity,
    function: Function,
    address: u32,
    #[serde(rename = "type")]
    kind: RegisterType,
    #[serde(default)]
    word_order: WordOrder,
    #[serde(default)]
    scale: i64,
    #[serde(default)]
    invert: bool,
    #[serde(default)]
    sentinels: Vec<u64>,
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ProfileError {
    ProfileError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl RegisterProfile {
    /// Parses and validates a profile: scale in −10..=10, `max_registers_per_read` in 1..=125
    /// and at least the widest register, addresses within 0..=65535 after `address_base`,
    /// sentinels that fit the register's width, no overlapping registers (a quantity given by
    /// several registers is their sum).
    pub fn from_toml(text: &str) -> Result<RegisterProfile, ProfileError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| ProfileError::Toml {
            message: e.to_string(),
        })?;
        if raw.max_registers_per_read == 0 || raw.max_registers_per_read > MODBUS_MAX_READ {
            return Err(invalid(
                "max_registers_per_read",
                format!(
                    "is {}, expected 1..=125 (the Modbus limit for one read)",
                    raw.max_registers_per_read
                ),
            ));
        }
        if raw.register.is_empty() {
            return Err(invalid(
                "register",
                "no [[register]] entries; a profile needs at least one",
            ));
        }
        let mut registers: Vec<RegisterDef> = Vec::with_capacity(raw.register.len());
        for (i, r) in raw.register.into_iter().enumerate() {
            let key = |field: &str| format!("register[{i}].{field}");
            let address = r
                .address
                .checked_sub(raw.address_base)
                .and_then(|a| u16::try_from(a).ok())
                .ok_or_else(|| {
                    invalid(
                        key("address"),
                        format!(
                            "{} minus address_base {} is not a protocol address in 0..=65535",
                            r.address, raw.address_base
                        ),
                    )
                })?;
            if u32::from(address) + u32::from(r.kind.width()) > 0x1_0000 {
                return Err(invalid(
                    key("address"),
                    format!("a {:?} at {address} runs past register 65535", r.kind),
                ));
            }
            let scale = i8::try_from(r.scale)
                .ok()
                .filter(|s| (-10..=10).contains(s))
                .ok_or_else(|| {
                    invalid(
                        key("scale"),
                        format!("is {}, expected a decimal exponent in -10..=10", r.scale),
                    )
                })?;
            if r.kind.width() > raw.max_registers_per_read {
                return Err(invalid(
                    "max_registers_per_read",
                    format!(
                        "is {}, smaller than the {:?} at register[{i}]",
                        raw.max_registers_per_read, r.kind
                    ),
                ));
            }
            let bits = u32::from(r.kind.width()) * 16;
            if let Some(s) = r.sentinels.iter().find(|&&s| bits < 64 && s >> bits != 0) {
                return Err(invalid(
                    key("sentinels"),
                    format!(
                        "{s:#X} does not fit a {bits}-bit {:?} register (sentinels are raw bit patterns)",
                        r.kind
                    ),
                ));
            }
            let def = RegisterDef {
                quantity: r.quantity,
                function: r.function,
                address,
                kind: r.kind,
                word_order: r.word_order,
                scale,
                invert: r.invert,
                sentinels: r.sentinels,
            };
            if let Some(j) = registers.iter().position(|d| {
                d.function == def.function
                    && u32::from(d.address) < def.end()
                    && u32::from(def.address) < d.end()
            }) {
                return Err(invalid(
                    key("address"),
                    format!(
                        "registers {}..{} overlap register[{j}]",
                        def.address,
                        def.end()
                    ),
                ));
            }
            registers.push(def);
        }
        Ok(RegisterProfile {
            name: raw.name,
            description: raw.description,
            registers,
            max_registers_per_read: raw.max_registers_per_read,
            max_gap: raw.max_gap,
            about: ProfileAbout {
                manufacturer: raw.manufacturer,
                models: raw.models,
                category: raw.category,
                datasheet: raw.datasheet,
                connection: raw.connection,
            },
        })
    }

    /// A profile embedded in the binary: see [`RegisterProfile::builtin_names`].
    pub fn builtin(name: &str) -> Result<RegisterProfile, ProfileError> {
        let (_, text) = BUILTINS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            ProfileError::UnknownBuiltin {
                name: name.to_owned(),
                known: Self::builtin_names().join(", "),
            }
        })?;
        Self::from_toml(text)
    }

    /// Names of the builtin profiles.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTINS.iter().map(|(name, _)| *name).collect()
    }

    /// The reads that cover every register, coalesced per function into spans of at most
    /// `max_registers_per_read`, merging neighbours separated by up to `max_gap` unused
    /// registers. Sorted by function (holding first), then address.
    pub fn read_plan(&self) -> Vec<ReadSpan> {
        let mut regs: Vec<&RegisterDef> = self.registers.iter().collect();
        regs.sort_by_key(|r| (r.function, r.address));
        let limit = u32::from(self.max_registers_per_read);
        let mut plan = Vec::new();
        // (function, start, end) of the span being built; end is exclusive, u32 so 65536 fits.
        let mut open: Option<(Function, u32, u32)> = None;
        for r in regs {
            let (start, end) = (u32::from(r.address), r.end());
            open = match open {
                Some((f, s, e))
                    if f == r.function
                        && start <= e + u32::from(self.max_gap)
                        && end.max(e) - s <= limit =>
                {
                    Some((f, s, end.max(e)))
                }
                other => {
                    if let Some(span) = other {
                        plan.extend(to_span(span));
                    }
                    Some((r.function, start, end))
                }
            };
        }
        if let Some(span) = open {
            plan.extend(to_span(span));
        }
        plan
    }

    /// Decode every quantity from the spans' data (same order as read_plan), in the order the
    /// quantities first appear in the profile; a quantity given by several registers is their
    /// sum, and the first register without a value decides its error. A register not covered
    /// by the data (a failed read, a short answer) is [`PointError::NotRead`] for that
    /// quantity, not a panic.
    pub fn decode(
        &self,
        data: &[(ReadSpan, Vec<u16>)],
    ) -> Vec<(Quantity, Result<Scaled, PointError>)> {
        let mut out: Vec<(Quantity, Result<Scaled, PointError>)> = Vec::new();
        for r in &self.registers {
            let value = decode_register(r, find_words(r, data));
            match out.iter_mut().find(|(q, _)| *q == r.quantity) {
                None => out.push((r.quantity, value)),
                Some((_, sum)) => {
                    *sum = match (&*sum, value) {
                        (Ok(a), Ok(b)) => a.checked_add(&b).ok_or(PointError::OutOfRange {
                            point: r.quantity.as_str().to_owned(),
                        }),
                        (Ok(_), Err(e)) => Err(e),
                        (Err(e), _) => Err(e.clone()),
                    };
                }
            }
        }
        out
    }
}

impl RegisterProfile {
    /// Every register as a row for `discover`: raw words, scale, decoded value (before
    /// registers of one quantity are added), and why there is none.
    pub fn rows(&self, data: &[(ReadSpan, Vec<u16>)]) -> Vec<PointRow> {
        self.registers
            .iter()
            .map(|r| {
                let words = find_words(r, data);
                let decoded = decode_register(r, words);
                let unit = match r.quantity {
                    Quantity::PowerW | Quantity::PvPowerW | Quantity::BatteryPowerW => "W",
                    Quantity::SocPercent => "%",
                    _ => "Wh",
                };
                PointRow {
                    model: self.name.clone(),
                    point: format!("{} @ {} {}", r.quantity, r.function.code(), r.address),
                    raw: words.map(raw_hex).unwrap_or_default(),
                    scale_factor: Some(r.scale),
                    value: decoded.as_ref().ok().map(ToString::to_string),
                    unit: Some(unit.to_owned()),
                    status: match decoded {
                        Ok(_) => "ok".to_owned(),
                        Err(e) => e.to_string(),
                    },
                }
            })
            .collect()
    }
}

fn to_span((function, start, end): (Function, u32, u32)) -> Option<ReadSpan> {
    Some(ReadSpan {
        function,
        address: u16::try_from(start).ok()?,
        count: u16::try_from(end - start).ok()?,
    })
}

/// The registers of `r` in the data, if some span with its function covers them.
fn find_words<'a>(r: &RegisterDef, data: &'a [(ReadSpan, Vec<u16>)]) -> Option<&'a [u16]> {
    data.iter().find_map(|(span, words)| {
        if span.function != r.function || r.address < span.address {
            return None;
        }
        let offset = usize::from(r.address - span.address);
        let end = offset + usize::from(r.kind.width());
        if end > usize::from(span.count) {
            return None;
        }
        words.get(offset..end)
    })
}

/// Decodes one register from its words (`None` = not in the data).
fn decode_register(r: &RegisterDef, words: Option<&[u16]>) -> Result<Scaled, PointError> {
    let point = || r.quantity.as_str().to_owned();
    let words = words.ok_or_else(|| PointError::NotRead { point: point() })?;
    // Words in high-first order, then the raw bit pattern zero-extended to u64.
    let mut ordered = words.to_vec();
    if r.word_order == WordOrder::LittleEndian {
        ordered.reverse();
    }
    let bits = ordered
        .iter()
        .fold(0u64, |acc, &w| (acc << 16) | u64::from(w));
    if r.sentinels.contains(&bits) {
        return Err(PointError::NotImplemented);
    }
    let out_of_range = || PointError::OutOfRange { point: point() };
    let (mantissa, exponent) = match r.kind {
        RegisterType::F32 | RegisterType::F64 => {
            let v = match r.kind {
                RegisterType::F32 => f64::from(f32::from_bits(
                    u32::try_from(bits).map_err(|_| out_of_range())?,
                )),
                _ => f64::from_bits(bits),
            };
            let m = float_to_mantissa(v, r.scale + FLOAT_DECIMALS).map_err(|e| match e {
                PointError::OutOfRange { .. } => out_of_range(),
                other => other,
            })?;
            (m, -FLOAT_DECIMALS)
        }
        RegisterType::U16 | RegisterType::U32 => {
            (i64::try_from(bits).map_err(|_| out_of_range())?, r.scale)
        }
        RegisterType::U64 => (i64::try_from(bits).map_err(|_| out_of_range())?, r.scale),
        RegisterType::I16 => {
            let v = u16::try_from(bits).map_err(|_| out_of_range())?;
            (i64::from(i16::from_ne_bytes(v.to_ne_bytes())), r.scale)
        }
        RegisterType::I32 => {
            let v = u32::try_from(bits).map_err(|_| out_of_range())?;
            (i64::from(i32::from_ne_bytes(v.to_ne_bytes())), r.scale)
        }
        RegisterType::I64 => (i64::from_ne_bytes(bits.to_ne_bytes()), r.scale),
    };
    let mantissa = if r.invert {
        mantissa.checked_neg().ok_or_else(out_of_range)?
    } else {
        mantissa
    };
    Ok(Scaled::new(mantissa, exponent))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn f32_words(v: f32) -> [u16; 2] {
        let b = v.to_bits().to_be_bytes();
        [
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        ]
    }

    fn one(kind: &str, extra: &str) -> String {
        format!(
            "name = \"t\"\n[[register]]\nquantity = \"import_wh\"\nfunction = \"holding\"\naddress = 10\ntype = \"{kind}\"\n{extra}\n"
        )
    }

    fn decode_one(profile: &RegisterProfile, words: &[u16]) -> Result<Scaled, PointError> {
        let span = profile.read_plan()[0];
        let mut w = vec![0u16; usize::from(span.count)];
        let off = usize::from(profile.registers[0].address - span.address);
        w[off..off + words.len()].copy_from_slice(words);
        profile.decode(&[(span, w)]).remove(0).1
    }

    #[test]
    fn every_builtin_parses() {
        for name in RegisterProfile::builtin_names() {
            let p = RegisterProfile::builtin(name).unwrap();
            assert_eq!(&p.name, name);
            assert!(!p.read_plan().is_empty());
            let a = &p.about;
            for (field, value) in [
                ("manufacturer", &a.manufacturer),
                ("models", &a.models),
                ("datasheet", &a.datasheet),
                ("connection", &a.connection),
            ] {
                assert!(!value.is_empty(), "builtin {name} has no {field}");
            }
            assert!(
                ["meter", "inverter", "hybrid inverter", "gateway"].contains(&a.category.as_str()),
                "builtin {name}: category {:?}",
                a.category
            );
        }
        assert_eq!(
            RegisterProfile::builtin("nope"),
            Err(ProfileError::UnknownBuiltin {
                name: "nope".into(),
                known: RegisterProfile::builtin_names().join(", ")
            })
        );
    }

    #[test]
    fn sdm630_decodes_power_and_energy() {
        let p = RegisterProfile::builtin("eastron-sdm630").unwrap();
        let plan = p.read_plan();
        assert_eq!(
            plan,
            vec![
                ReadSpan {
                    function: Function::Input,
                    address: 0x34,
                    count: 2
                },
                ReadSpan {
                    function: Function::Input,
                    address: 0x48,
                    count: 4
                },
            ]
        );
        let mut energy = f32_words(12_345.678).to_vec();
        energy.extend(f32_words(0.5));
        let data = vec![(plan[0], f32_words(-1523.4).to_vec()), (plan[1], energy)];
        let got = p.decode(&data);
        assert_eq!(got[0], (Quantity::PowerW, Ok(Scaled::new(-1_523_400, -3))));
        // 12345.678f32 = 12345.677734375 kWh → Wh with milli precision.
        assert_eq!(
            got[1],
            (Quantity::ImportWh, Ok(Scaled::new(12_345_677_734, -3)))
        );
        assert_eq!(got[1].1.as_ref().unwrap().floor_int(), Some(12_345_677));
        assert_eq!(got[2], (Quantity::ExportWh, Ok(Scaled::new(500_000, -3))));
    }

    #[test]
    fn word_swapped_u32_and_f32_decode_to_the_same_value() {
        let value: u32 = 0x0001_E240; // 123456
        let (hi, lo) = (
            u16::try_from(value >> 16).unwrap(),
            u16::try_from(value & 0xFFFF).unwrap(),
        );
        let be = RegisterProfile::from_toml(&one("u32", "")).unwrap();
        let le = RegisterProfile::from_toml(&one("u32", "word_order = \"little_endian\"")).unwrap();
        assert_eq!(decode_one(&be, &[hi, lo]), Ok(Scaled::new(123_456, 0)));
        assert_eq!(decode_one(&le, &[lo, hi]), Ok(Scaled::new(123_456, 0)));

        let [fh, fl] = f32_words(123_456.0);
        let bef = RegisterProfile::from_toml(&one("f32", "")).unwrap();
        let lef =
            RegisterProfile::from_toml(&one("f32", "word_order = \"little_endian\"")).unwrap();
        assert_eq!(
            decode_one(&bef, &[fh, fl]),
            Ok(Scaled::new(123_456_000, -3))
        );
        assert_eq!(
            decode_one(&lef, &[fl, fh]),
            Ok(Scaled::new(123_456_000, -3))
        );

        let le64 =
            RegisterProfile::from_toml(&one("i64", "word_order = \"little_endian\"")).unwrap();
        assert_eq!(
            decode_one(&le64, &[0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF]),
            Ok(Scaled::new(-2, 0))
        );
    }

    #[test]
    fn signed_types_sign_extend_and_u64_overflow_is_reported() {
        let i16p = RegisterProfile::from_toml(&one("i16", "scale = -1")).unwrap();
        assert_eq!(decode_one(&i16p, &[0xFFF6]), Ok(Scaled::new(-10, -1)));
        let i32p = RegisterProfile::from_toml(&one("i32", "")).unwrap();
        assert_eq!(
            decode_one(&i32p, &[0xFFFF, 0xFF38]),
            Ok(Scaled::new(-200, 0))
        );
        let u64p = RegisterProfile::from_toml(&one("u64", "")).unwrap();
        assert_eq!(
            decode_one(&u64p, &[0x8000, 0, 0, 0]),
            Err(PointError::OutOfRange {
                point: "import_wh".into()
            })
        );
        let f64p = RegisterProfile::from_toml(&one("f64", "scale = 3")).unwrap();
        let b = 1.25f64.to_bits().to_be_bytes();
        let w: Vec<u16> = b
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(decode_one(&f64p, &w), Ok(Scaled::new(1_250_000, -3)));
    }

    #[test]
    fn sentinels_are_not_implemented_before_scaling_and_inversion() {
        let p = RegisterProfile::from_toml(&one(
            "i32",
            "invert = true\nscale = 1\nsentinels = [0x7FFFFFFF]",
        ))
        .unwrap();
        assert_eq!(
            decode_one(&p, &[0x7FFF, 0xFFFF]),
            Err(PointError::NotImplemented)
        );
        assert_eq!(
            decode_one(&p, &[0x7FFF, 0xFFFE]),
            Ok(Scaled::new(-0x7FFF_FFFE, 1))
        );
        let u16p = RegisterProfile::from_toml(&one("u16", "sentinels = [0xFFFF]")).unwrap();
        assert_eq!(
            decode_one(&u16p, &[0xFFFF]),
            Err(PointError::NotImplemented)
        );
        assert_eq!(
            decode_one(&u16p, &[0]),
            Ok(Scaled::new(0, 0)),
            "0 is a value, not a sentinel"
        );
        let f32p = RegisterProfile::from_toml(&one("f32", "sentinels = [0xFFFFFFFF]")).unwrap();
        assert_eq!(
            decode_one(&f32p, &[0xFFFF, 0xFFFF]),
            Err(PointError::NotImplemented)
        );
        // Other NaN/Inf are not numbers.
        assert_eq!(
            decode_one(&f32p, &f32_words(f32::NAN)),
            Err(PointError::NotANumber)
        );
        assert_eq!(
            decode_one(&f32p, &f32_words(f32::NEG_INFINITY)),
            Err(PointError::NotANumber)
        );
    }

    #[test]
    fn invert_negates() {
        let p = RegisterProfile::from_toml(&one("i16", "invert = true")).unwrap();
        assert_eq!(decode_one(&p, &[5]), Ok(Scaled::new(-5, 0)));
        assert_eq!(decode_one(&p, &[0xFFFB]), Ok(Scaled::new(5, 0)));
        let f = RegisterProfile::from_toml(&one("f32", "invert = true")).unwrap();
        assert_eq!(decode_one(&f, &f32_words(-2.5)), Ok(Scaled::new(2500, -3)));
        let i64p = RegisterProfile::from_toml(&one("i64", "invert = true")).unwrap();
        assert_eq!(
            decode_one(&i64p, &[0x8000, 0, 0, 0]),
            Err(PointError::OutOfRange {
                point: "import_wh".into()
            })
        );
    }

    #[test]
    fn registers_of_one_quantity_are_added() {
        // Growatt-style: power to the user (import) minus power to the grid (export), 0.1 W.
        let p = RegisterProfile::from_toml(
            "name = \"t\"\n\
             [[register]]\nquantity = \"power_w\"\nfunction = \"input\"\naddress = 0\ntype = \"u32\"\nscale = -1\n\
             [[register]]\nquantity = \"power_w\"\nfunction = \"input\"\naddress = 2\ntype = \"u32\"\nscale = -1\ninvert = true\n\
             [[register]]\nquantity = \"import_wh\"\nfunction = \"input\"\naddress = 4\ntype = \"u16\"\nscale = 1\nsentinels = [0xFFFF]\n\
             [[register]]\nquantity = \"import_wh\"\nfunction = \"input\"\naddress = 5\ntype = \"u16\"\n",
        )
        .unwrap();
        let span = p.read_plan()[0];
        let got = p.decode(&[(span, vec![0, 15, 0, 40_005, 7, 3])]);
        assert_eq!(got.len(), 2, "one result per quantity: {got:?}");
        assert_eq!(got[0], (Quantity::PowerW, Ok(Scaled::new(-39_990, -1))));
        assert_eq!(got[1], (Quantity::ImportWh, Ok(Scaled::new(73, 0))));
        // One part not implemented: the whole quantity is not implemented, never a partial sum.
        let got = p.decode(&[(span, vec![0, 15, 0, 40_005, 0xFFFF, 3])]);
        assert_eq!(
            got[1],
            (Quantity::ImportWh, Err(PointError::NotImplemented))
        );
        let got = p.decode(&[(span, vec![0x7FFF, 0xFFFF, 0, 0, 0xFFFF, 3])]);
        assert_eq!(got[0].1, Ok(Scaled::new(0x7FFF_FFFF, -1)));
    }

    #[test]
    fn read_plan_coalesces_and_respects_the_limit() {
        let mut toml = String::from("name = \"t\"\nmax_registers_per_read = 125\nmax_gap = 120\n");
        let quantities = [
            "import_wh",
            "export_wh",
            "battery_charge_wh",
            "battery_discharge_wh",
            "power_w",
            "soc_percent",
        ];
        // With max_gap 120: 0..2, 60..62 and 120..122 merge (span 0..122 = 122 ≤ 125);
        // 124..126 would make the span 126 > 125: new span. Input registers are separate.
        let regs = [
            ("holding", 0, "u32"),
            ("holding", 60, "u32"),
            ("holding", 120, "u32"),
            ("holding", 124, "f32"),
            ("input", 0, "u16"),
            ("input", 200, "u16"),
        ];
        for (q, (f, a, t)) in quantities.iter().zip(regs) {
            toml.push_str(&format!("[[register]]\nquantity = \"{q}\"\nfunction = \"{f}\"\naddress = {a}\ntype = \"{t}\"\n"));
        }
        let p = RegisterProfile::from_toml(&toml).unwrap();
        let plan = p.read_plan();
        assert_eq!(
            plan,
            vec![
                ReadSpan {
                    function: Function::Holding,
                    address: 0,
                    count: 122
                },
                ReadSpan {
                    function: Function::Holding,
                    address: 124,
                    count: 2
                },
                ReadSpan {
                    function: Function::Input,
                    address: 0,
                    count: 1
                },
                ReadSpan {
                    function: Function::Input,
                    address: 200,
                    count: 1
                },
            ]
        );
        assert!(plan.iter().all(|s| s.count <= 125));
        // With the default gap allowance 0..2 and 60..62 stay apart.
        let strict =
            RegisterProfile::from_toml(&toml.replace("max_gap = 120", "max_gap = 4")).unwrap();
        assert_eq!(
            strict.read_plan()[0],
            ReadSpan {
                function: Function::Holding,
                address: 0,
                count: 2
            }
        );
        // Decoding with a missing span reports that quantity only.
        let data: Vec<(ReadSpan, Vec<u16>)> = plan[..1]
            .iter()
            .map(|s| (*s, vec![0u16; usize::from(s.count)]))
            .collect();
        let got = p.decode(&data);
        assert_eq!(got[0].1, Ok(Scaled::new(0, 0)));
        assert_eq!(
            got[3].1,
            Err(PointError::NotRead {
                point: "battery_discharge_wh".into()
            })
        );
        // A short answer: the span claims 122 registers, the data holds 3.
        let short = p.decode(&[(plan[0], vec![0, 7, 0])]);
        assert_eq!(short[0].1, Ok(Scaled::new(7, 0)));
        assert_eq!(
            short[1].1,
            Err(PointError::NotRead {
                point: "export_wh".into()
            })
        );
    }

    #[test]
    fn address_base_converts_vendor_numbering() {
        let p = RegisterProfile::from_toml(
            "name = \"t\"\naddress_base = 30001\n[[register]]\nquantity = \"power_w\"\nfunction = \"input\"\naddress = 30053\ntype = \"f32\"\n",
        )
        .unwrap();
        assert_eq!(p.registers[0].address, 52);
        let err = RegisterProfile::from_toml(
            "name = \"t\"\naddress_base = 30001\n[[register]]\nquantity = \"power_w\"\nfunction = \"input\"\naddress = 52\ntype = \"f32\"\n",
        )
        .unwrap_err();
        assert!(
            matches!(&err, ProfileError::Invalid { key, .. } if key == "register[0].address"),
            "{err}"
        );
    }

    #[test]
    fn toml_errors_name_the_key() {
        let cases: &[(String, &str)] = &[
            (one("u16", "scale = 11"), "register[0].scale"),
            (one("u16", "scale = -300"), "register[0].scale"),
            (one("u16", "sentinels = [0x10000]"), "register[0].sentinels"),
            (
                one("u16", "")
                    .replace("name = \"t\"", "name = \"t\"\nmax_registers_per_read = 126"),
                "max_registers_per_read",
            ),
            (one("u16", "").replace("holding", "coil"), "function"),
            (
                one("u16", "").replace("import_wh", "import_kwh"),
                "quantity",
            ),
            (one("u17", ""), "type"),
            (one("u16", "scal = 1"), "scal"),
            (one("u16", "word_order = \"middle\""), "word_order"),
            (
                one("u16", "").replace("address = 10", "address = 70000"),
                "register[0].address",
            ),
            ("name = \"t\"\n".to_owned(), "register"),
        ];
        for (text, key) in cases {
            let err = RegisterProfile::from_toml(text).unwrap_err().to_string();
            assert!(
                err.contains(key),
                "error for {key:?} does not name it: {err}"
            );
        }
        let overlap = format!(
            "{}[[register]]\nquantity = \"power_w\"\nfunction = \"holding\"\naddress = 11\ntype = \"u16\"\n",
            one("u32", "")
        );
        let err = RegisterProfile::from_toml(&overlap)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("register[1].address") && err.contains("overlap"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn plan_covers_every_register_within_limits(
            addrs in proptest::collection::btree_set(0u16..2000, 1..6),
            limit in 4u16..=125,
            gap in 0u16..10,
        ) {
            let quantities = ["import_wh", "export_wh", "battery_charge_wh", "battery_discharge_wh", "power_w", "soc_percent"];
            let mut toml = format!("name = \"t\"\nmax_registers_per_read = {limit}\nmax_gap = {gap}\n");
            // Addresses spaced ×4 so 2-register values never overlap.
            for (q, a) in quantities.iter().zip(&addrs) {
                toml.push_str(&format!("[[register]]\nquantity = \"{q}\"\nfunction = \"holding\"\naddress = {}\ntype = \"u32\"\n", u32::from(*a) * 4));
            }
            let p = RegisterProfile::from_toml(&toml).unwrap();
            let plan = p.read_plan();
            for s in &plan {
                prop_assert!(s.count >= 1 && s.count <= limit);
            }
            for r in &p.registers {
                prop_assert!(plan.iter().any(|s| s.address <= r.address && u32::from(r.address) + 2 <= u32::from(s.address) + u32::from(s.count)));
            }
        }

        #[test]
        fn any_u32_decodes_the_same_in_both_word_orders(v in any::<u32>()) {
            let (hi, lo) = (u16::try_from(v >> 16).unwrap(), u16::try_from(v & 0xFFFF).unwrap());
            let be = RegisterProfile::from_toml(&one("u32", "")).unwrap();
            let le = RegisterProfile::from_toml(&one("u32", "word_order = \"little_endian\"")).unwrap();
            prop_assert_eq!(decode_one(&be, &[hi, lo]), decode_one(&le, &[lo, hi]));
            prop_assert_eq!(decode_one(&be, &[hi, lo]), Ok(Scaled::new(i64::from(v), 0)));
        }
    }
}
