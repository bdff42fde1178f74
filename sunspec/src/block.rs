//! Decoding (and, for simulators, encoding) of one SunSpec model block.
//!
//! A block is the `L` registers that follow a model's ID/L header. The transport reads it in one
//! Modbus request, so every value and the scale factor it is scaled with come from the same
//! instant (Fronius changes scale factors at run time; reading them separately gives 10× spikes).
//! Nothing here does IO.
//!
//! Value rules (SunSpec information model spec, as implemented by pysunspec2 `mb.py`):
//! * not-implemented sentinels: int16 0x8000, uint16/count/enum16/bitfield16 0xFFFF, sunssf
//!   0x8000, int32 0x8000_0000, uint32/enum32/bitfield32 0xFFFF_FFFF, int64 0x8000_0000_0000_0000,
//!   uint64 0xFFFF_FFFF_FFFF_FFFF, and **0 for the accumulators acc16/acc32/acc64** (gosunspec
//!   disagrees and uses all-ones; we follow the spec and pysunspec2/OpenEMS). Float NaN (any NaN,
//!   canonically 0x7FC0_0000) is not implemented too; ±infinity is [`PointError::NotANumber`].
//!   A sentinel is always an error, never 0.
//! * scale factors are read from the same block: a group point's SF is looked up in its own group
//!   instance first, then in the fixed part. An SF outside −10..=10 is rejected.
//! * float points convert to `Scaled` with milli-unit precision: mantissa = round(f × 1000),
//!   exponent = −3, computed exactly from the float's bits.
//! * Kostal quirk: some Kostal inverters write *signed* values into acc32 points (a negative export
//!   counter shows up as a number near 2^32). acc32 is unsigned by definition, so it is decoded
//!   as such and **not** auto-fixed here; the normalisation layer flags the resulting jump.
//! * a block may be shorter than the definition only by trailing `Pad` registers (SolarEdge's
//!   common model has L = 65, the definition 66); such missing pads read as not implemented.
//!
//! Models the generator does not cover (nested groups, vendor models) decode to a block without a
//! definition whose registers are kept raw, so discovery can still report them.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::models::{self, GroupDef, ModelDef, PointDef, PointKind, ScaleRef};
use crate::value::{PointError, PointRow, Scaled, float_to_mantissa, raw_hex};

/// Decimal digits kept when a float point is converted: milli-units.
const FLOAT_DECIMALS: i8 = 3;

/// Largest valid magnitude of a scale factor.
const MAX_SF: i16 = 10;

/// Why a block cannot be decoded at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The block is shorter than the model's fixed part (trailing pads excepted).
    #[error(
        "model {model} block has {got} registers but its fixed part needs at least {expected}; the device's L does not match the SunSpec definition (check the base address and the model chain)"
    )]
    TooShort {
        /// Model ID.
        model: u16,
        /// Registers the fixed part needs.
        expected: usize,
        /// Registers given.
        got: usize,
    },
    /// More registers than a 16-bit L can describe.
    #[error(
        "model {model} block has {got} registers, more than the 65535 a model length can describe; the chain walk is misreading L"
    )]
    TooLong {
        /// Model ID.
        model: u16,
        /// Registers given.
        got: usize,
    },
}

/// One decoded SunSpec model block. `regs` are the L registers that follow the ID and L header — read in ONE Modbus request so values and scale factors agree.
#[derive(Debug, Clone)]
pub struct ModelBlock {
    id: u16,
    def: Option<&'static ModelDef>,
    regs: Vec<u16>,
}

/// A decoded point value before scaling.
enum Number {
    Int(i64),
    Float(f64),
}

/// Registers of the fixed part that must be present: everything up to the last non-pad point.
fn required_len(def: &ModelDef) -> usize {
    def.points
        .iter()
        .filter(|p| p.kind != PointKind::Pad)
        .map(|p| usize::from(p.offset) + usize::from(p.size))
        .max()
        .unwrap_or(0)
}

fn u32_of(w: &[u16]) -> u32 {
    w.iter().fold(0u32, |acc, &x| (acc << 16) | u32::from(x))
}

fn u64_of(w: &[u16]) -> u64 {
    w.iter().fold(0u64, |acc, &x| (acc << 16) | u64::from(x))
}

fn u128_of(w: &[u16]) -> u128 {
    w.iter().fold(0u128, |acc, &x| (acc << 16) | u128::from(x))
}

fn bytes_of(w: &[u16]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// Decodes a numeric point from exactly its registers; sentinels become `NotImplemented`.
fn decode_number(p: &PointDef, w: &[u16]) -> Result<Number, PointError> {
    use PointKind as K;
    let ni = Err(PointError::NotImplemented);
    let first = w.first().copied().unwrap_or(0);
    match p.kind {
        K::Int16 | K::Sunssf => {
            let v = i16::from_ne_bytes(first.to_ne_bytes());
            if v == i16::MIN {
                ni
            } else {
                Ok(Number::Int(i64::from(v)))
            }
        }
        K::Uint16 | K::Count | K::Enum16 | K::Bitfield16 => {
            if first == u16::MAX {
                ni
            } else {
                Ok(Number::Int(i64::from(first)))
            }
        }
        K::Acc16 => {
            if first == 0 {
                ni
            } else {
                Ok(Number::Int(i64::from(first)))
            }
        }
        K::Int32 => {
            let v = i32::from_ne_bytes(u32_of(w).to_ne_bytes());
            if v == i32::MIN {
                ni
            } else {
                Ok(Number::Int(i64::from(v)))
            }
        }
        K::Uint32 | K::Enum32 | K::Bitfield32 => {
            let v = u32_of(w);
            if v == u32::MAX {
                ni
            } else {
                Ok(Number::Int(i64::from(v)))
            }
        }
        K::Acc32 => {
            let v = u32_of(w);
            if v == 0 {
                ni
            } else {
                Ok(Number::Int(i64::from(v)))
            }
        }
        K::Int64 => {
            let v = i64::from_ne_bytes(u64_of(w).to_ne_bytes());
            if v == i64::MIN {
                ni
            } else {
                Ok(Number::Int(v))
            }
        }
        K::Uint64 | K::Acc64 => {
            let v = u64_of(w);
            let sentinel = if p.kind == K::Acc64 { 0 } else { u64::MAX };
            if v == sentinel {
                return ni;
            }
            i64::try_from(v)
                .map(Number::Int)
                .map_err(|_| PointError::OutOfRange {
                    point: p.name.to_owned(),
                })
        }
        K::Float32 => float_number(f64::from(f32::from_bits(u32_of(w)))),
        K::Float64 => float_number(f64::from_bits(u64_of(w))),
        K::String | K::Pad | K::Ipaddr | K::Ipv6addr | K::Eui48 => Err(PointError::NotNumeric {
            point: p.name.to_owned(),
        }),
    }
}

fn float_number(v: f64) -> Result<Number, PointError> {
    if v.is_nan() {
        // SunSpec's not-implemented float is NaN (0x7FC0_0000); pysunspec2 treats every NaN so.
        Err(PointError::NotImplemented)
    } else if v.is_infinite() {
        Err(PointError::NotANumber)
    } else {
        Ok(Number::Float(v))
    }
}

/// Text of a string/address point; `None` when not implemented.
fn decode_text(p: &PointDef, w: &[u16]) -> Option<String> {
    match p.kind {
        PointKind::String => {
            let bytes = bytes_of(w);
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            let text = String::from_utf8_lossy(&bytes[..end]);
            let text = text.trim_end_matches([' ', '\0']);
            (!text.is_empty()).then(|| text.to_owned())
        }
        PointKind::Ipaddr => {
            let v = u32_of(w);
            (v != 0).then(|| Ipv4Addr::from(v).to_string())
        }
        PointKind::Ipv6addr => {
            let v = u128_of(w);
            (v != 0).then(|| Ipv6Addr::from(v).to_string())
        }
        PointKind::Eui48 => {
            let bytes = bytes_of(w);
            let mac = bytes.get(2..8)?;
            if mac.iter().all(|&b| b == 0) || mac.iter().all(|&b| b == 0xFF) {
                return None;
            }
            let parts: Vec<String> = mac.iter().map(|b| format!("{b:02X}")).collect();
            Some(parts.join(":"))
        }
        _ => None,
    }
}

impl ModelBlock {
    /// Decodes the `regs` following the ID/L header of model `id`. Unknown model ids decode to a
    /// block with no definition whose registers are kept raw (discovery reports them).
    pub fn decode(id: u16, regs: &[u16]) -> Result<ModelBlock, BlockError> {
        if regs.len() > usize::from(u16::MAX) {
            return Err(BlockError::TooLong {
                model: id,
                got: regs.len(),
            });
        }
        let def = models::definition(id);
        if let Some(def) = def {
            let expected = required_len(def);
            if regs.len() < expected {
                return Err(BlockError::TooShort {
                    model: id,
                    expected,
                    got: regs.len(),
                });
            }
        }
        Ok(ModelBlock {
            id,
            def,
            regs: regs.to_vec(),
        })
    }

    /// Model ID.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The model's definition, `None` for a model the generator does not cover.
    pub fn def(&self) -> Option<&'static ModelDef> {
        self.def
    }

    /// Block length L in registers (ID/L header excluded).
    pub fn len(&self) -> u16 {
        // decode() rejects more than u16::MAX registers.
        u16::try_from(self.regs.len()).unwrap_or(u16::MAX)
    }

    /// Whether the block has no registers (a model with L = 0).
    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }

    /// Number of repeating-group instances present (0 if the model has none); computed from the block length (and cross-checked with a count point like "N" if the model has one — on mismatch, use the smaller and don't panic).
    pub fn group_count(&self) -> usize {
        let Some(def) = self.def else { return 0 };
        let Some(group) = &def.repeating else {
            return 0;
        };
        if group.len == 0 {
            return 0;
        }
        let by_len =
            self.regs.len().saturating_sub(usize::from(def.fixed_len)) / usize::from(group.len);
        let declared = group
            .count_point
            .and_then(|cp| self.value(cp).ok())
            .and_then(|n| usize::try_from(n.mantissa).ok());
        match declared {
            Some(n) => n.min(by_len),
            None => by_len,
        }
    }

    /// Registers after the fixed part and the last complete group instance (0 for a block that
    /// matches its definition). Non-zero means the device's L disagrees with the definition.
    pub fn extra_registers(&self) -> usize {
        let Some(def) = self.def else { return 0 };
        let fixed = usize::from(def.fixed_len);
        let used = match &def.repeating {
            Some(g) => {
                let by_len = self.regs.len().saturating_sub(fixed) / usize::from(g.len.max(1));
                fixed + by_len * usize::from(g.len)
            }
            None => fixed,
        };
        self.regs.len().saturating_sub(used)
    }

    /// Numeric point of the fixed part with its scale factor applied (SF read from the SAME
    /// block). Errors: [`PointError::NotImplemented`] for sentinels (see the module docs),
    /// [`PointError::ScaleFactorNotImplemented`], [`PointError::ScaleFactorOutOfRange`]
    /// (|sf| > 10), [`PointError::NotANumber`] for an infinite float, [`PointError::UnknownPoint`],
    /// [`PointError::NotNumeric`], [`PointError::OutOfRange`] (uint64 above i64::MAX).
    pub fn value(&self, point: &str) -> Result<Scaled, PointError> {
        let def = self.def.ok_or_else(|| unknown(point))?;
        let p = def.point(point).ok_or_else(|| unknown(point))?;
        self.scaled(p, 0, None)
    }

    /// Same for point `point` of repeating-group instance `index` (0-based). The SF may be in the
    /// fixed part (as in model 160 DCA_SF etc.). An index at or beyond
    /// [`ModelBlock::group_count`] is an [`PointError::UnknownPoint`] named `group[index].point`.
    pub fn group_value(&self, index: usize, point: &str) -> Result<Scaled, PointError> {
        let (group, base) = self.instance(index, point)?;
        let p = group.point(point).ok_or_else(|| unknown(point))?;
        self.scaled(p, base, Some((group, base)))
    }

    /// String point (e.g. model 1 "Mn", "Md", "SN"), trailing NULs/spaces trimmed; None if not
    /// implemented (all zero) or unknown. Address points (ipaddr, ipv6addr, eui48) are rendered
    /// as text too; other kinds give `None`.
    pub fn text(&self, point: &str) -> Option<String> {
        let p = self.def?.point(point)?;
        decode_text(p, self.words(0, p)?)
    }

    /// [`ModelBlock::text`] for a point of repeating-group instance `index`.
    pub fn group_text(&self, index: usize, point: &str) -> Option<String> {
        let (group, base) = self.instance(index, point).ok()?;
        let p = group.point(point)?;
        decode_text(p, self.words(base, p)?)
    }

    /// Raw registers of the block.
    pub fn registers(&self) -> &[u16] {
        &self.regs
    }

    /// The repeating group and the register offset of instance `index`.
    fn instance(
        &self,
        index: usize,
        point: &str,
    ) -> Result<(&'static GroupDef, usize), PointError> {
        let def = self.def.ok_or_else(|| unknown(point))?;
        let group = def.repeating.as_ref().ok_or_else(|| unknown(point))?;
        if index >= self.group_count() {
            return Err(unknown(&format!("{}[{index}].{point}", group.name)));
        }
        let base = usize::from(def.fixed_len) + index * usize::from(group.len);
        Ok((group, base))
    }

    /// The registers of point `p` in the group starting at `base`; `None` if outside the block.
    fn words(&self, base: usize, p: &PointDef) -> Option<&[u16]> {
        let start = base + usize::from(p.offset);
        self.regs.get(start..start + usize::from(p.size))
    }

    fn scaled(
        &self,
        p: &PointDef,
        base: usize,
        group: Option<(&'static GroupDef, usize)>,
    ) -> Result<Scaled, PointError> {
        if matches!(
            p.kind,
            PointKind::String
                | PointKind::Pad
                | PointKind::Ipaddr
                | PointKind::Ipv6addr
                | PointKind::Eui48
        ) {
            return Err(PointError::NotNumeric {
                point: p.name.to_owned(),
            });
        }
        // Only trailing pads may lie outside the block (checked in decode); treat as missing.
        let w = self.words(base, p).ok_or(PointError::NotImplemented)?;
        let number = decode_number(p, w)?;
        let sf = self.scale_factor(p.sf, group)?;
        match number {
            Number::Int(m) => Ok(Scaled::new(m, sf)),
            Number::Float(f) => {
                let m = float_to_mantissa(f, FLOAT_DECIMALS).map_err(|e| match e {
                    PointError::OutOfRange { .. } => PointError::OutOfRange {
                        point: p.name.to_owned(),
                    },
                    other => other,
                })?;
                // |sf| ≤ 10, so the sum stays within −13..=7.
                Ok(Scaled::new(m, sf - FLOAT_DECIMALS))
            }
        }
    }

    /// Resolves a scale factor: the group instance first, then the fixed part.
    fn scale_factor(
        &self,
        sf: Option<ScaleRef>,
        group: Option<(&'static GroupDef, usize)>,
    ) -> Result<i8, PointError> {
        let name = match sf {
            None => return Ok(0),
            Some(ScaleRef::Fixed(v)) => return Ok(v),
            Some(ScaleRef::Point(name)) => name,
        };
        let located = group
            .and_then(|(g, base)| g.point(name).map(|p| (p, base)))
            .or_else(|| self.def.and_then(|d| d.point(name)).map(|p| (p, 0)));
        let not_impl = || PointError::ScaleFactorNotImplemented {
            sf: name.to_owned(),
        };
        let (p, base) = located.ok_or_else(not_impl)?;
        let raw = self
            .words(base, p)
            .and_then(|w| w.first().copied())
            .ok_or_else(not_impl)?;
        let v = i16::from_ne_bytes(raw.to_ne_bytes());
        if v == i16::MIN {
            return Err(not_impl());
        }
        if !(-MAX_SF..=MAX_SF).contains(&v) {
            return Err(PointError::ScaleFactorOutOfRange {
                sf: name.to_owned(),
                value: v,
            });
        }
        i8::try_from(v).map_err(|_| PointError::ScaleFactorOutOfRange {
            sf: name.to_owned(),
            value: v,
        })
    }

    fn fmt_points(
        &self,
        f: &mut fmt::Formatter<'_>,
        points: &[PointDef],
        base: usize,
        group: Option<(&'static GroupDef, usize)>,
        indent: &str,
    ) -> fmt::Result {
        for p in points {
            let Some(w) = self.words(base, p) else {
                writeln!(
                    f,
                    "{indent}{:<16} {:<32} {:<14} (outside the block)",
                    p.name, p.label, "-"
                )?;
                continue;
            };
            let hex = if w.len() <= 4 {
                let digits: String = w.iter().map(|x| format!("{x:04X}")).collect();
                format!("0x{digits}")
            } else {
                format!("{} regs", w.len())
            };
            let shown = match p.kind {
                PointKind::String | PointKind::Ipaddr | PointKind::Ipv6addr | PointKind::Eui48 => {
                    match decode_text(p, w) {
                        Some(t) => format!("{t:?}"),
                        None => "(not implemented)".to_owned(),
                    }
                }
                PointKind::Pad => String::new(),
                _ => match self.scaled(p, base, group) {
                    Ok(v) => match p.units {
                        Some(u) => format!("{v} {u}"),
                        None => v.to_string(),
                    },
                    Err(e) => format!("({})", short_reason(&e)),
                },
            };
            writeln!(
                f,
                "{indent}{:<16} {:<32} {hex:<14} {shown}",
                p.name, p.label
            )?;
        }
        Ok(())
    }
}

impl ModelBlock {
    /// Every point (fixed part, then each repeating-group instance) as a row for `discover`;
    /// pads are left out.
    pub fn rows(&self) -> Vec<PointRow> {
        let mut rows = Vec::new();
        let Some(def) = self.def else {
            return rows;
        };
        self.push_rows(&mut rows, def.points, 0, None, "");
        if let Some(g) = &def.repeating {
            for index in 0..self.group_count() {
                let base = usize::from(def.fixed_len) + index * usize::from(g.len);
                self.push_rows(
                    &mut rows,
                    g.points,
                    base,
                    Some((g, base)),
                    &format!("{}[{index}].", g.name),
                );
            }
        }
        rows
    }

    fn push_rows(
        &self,
        rows: &mut Vec<PointRow>,
        points: &[PointDef],
        base: usize,
        group: Option<(&'static GroupDef, usize)>,
        prefix: &str,
    ) {
        for p in points {
            if p.kind == PointKind::Pad {
                continue;
            }
            let mut row = PointRow {
                model: self.id.to_string(),
                point: format!("{prefix}{}", p.name),
                raw: String::new(),
                scale_factor: None,
                value: None,
                unit: p.units.map(str::to_owned),
                status: "ok".to_owned(),
            };
            let Some(w) = self.words(base, p) else {
                row.status = "outside the block".to_owned();
                rows.push(row);
                continue;
            };
            row.raw = raw_hex(w);
            match p.kind {
                PointKind::String | PointKind::Ipaddr | PointKind::Ipv6addr | PointKind::Eui48 => {
                    match decode_text(p, w) {
                        Some(t) => row.value = Some(t),
                        None => row.status = "not implemented".to_owned(),
                    }
                }
                _ => match self.scaled(p, base, group) {
                    Ok(v) => {
                        if p.sf.is_some() {
                            row.scale_factor = Some(v.exponent);
                        }
                        row.value = Some(v.to_string());
                    }
                    Err(e) => row.status = short_reason(&e),
                },
            }
            rows.push(row);
        }
    }
}

/// A short reason for dumps; the full message is the error's Display.
fn short_reason(e: &PointError) -> String {
    match e {
        PointError::NotImplemented => "not implemented".to_owned(),
        PointError::ScaleFactorNotImplemented { sf } => {
            format!("scale factor {sf} not implemented")
        }
        PointError::ScaleFactorOutOfRange { sf, value } => {
            format!("scale factor {sf} = {value} out of range")
        }
        PointError::NotANumber => "not a number".to_owned(),
        PointError::UnknownPoint { point } => format!("unknown point {point}"),
        PointError::NotNumeric { .. } => "not numeric".to_owned(),
        PointError::OutOfRange { .. } => "out of range".to_owned(),
        PointError::NotRead { .. } => "not read".to_owned(),
    }
}

fn unknown(point: &str) -> PointError {
    PointError::UnknownPoint {
        point: point.to_owned(),
    }
}

/// Human-readable dump of every point (name, label, raw hex, scaled value with units or the reason it has none), fixed part then each group instance — used by `meter-agent discover`.
impl fmt::Display for ModelBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(def) = self.def else {
            writeln!(
                f,
                "model {} (no definition), L={}: raw registers",
                self.id,
                self.regs.len()
            )?;
            for (i, chunk) in self.regs.chunks(8).enumerate() {
                let words: Vec<String> = chunk.iter().map(|x| format!("{x:04X}")).collect();
                writeln!(f, "  +{:<4} {}", i * 8, words.join(" "))?;
            }
            return Ok(());
        };
        write!(
            f,
            "model {} {} \"{}\", L={}",
            def.id,
            def.name,
            def.label,
            self.regs.len()
        )?;
        if let Some(g) = &def.repeating {
            write!(f, ", {} x {}", self.group_count(), g.name)?;
        }
        writeln!(f)?;
        self.fmt_points(f, def.points, 0, None, "  ")?;
        if let Some(g) = &def.repeating {
            for index in 0..self.group_count() {
                writeln!(f, "  {}[{index}]", g.name)?;
                let base = usize::from(def.fixed_len) + index * usize::from(g.len);
                self.fmt_points(f, g.points, base, Some((g, base)), "    ")?;
            }
        }
        let extra = self.extra_registers();
        if extra > 0 {
            writeln!(
                f,
                "  ({extra} registers beyond the definition, not decoded)"
            )?;
        }
        Ok(())
    }
}

/// The not-implemented encoding of a point of `kind` spanning `size` registers.
fn sentinel_words(kind: PointKind, size: usize) -> Vec<u16> {
    use PointKind as K;
    let mut w = vec![0u16; size];
    match kind {
        K::Int16 | K::Sunssf | K::Pad | K::Int32 | K::Int64 => {
            if let Some(first) = w.first_mut() {
                *first = 0x8000;
            }
        }
        K::Uint16
        | K::Count
        | K::Enum16
        | K::Bitfield16
        | K::Uint32
        | K::Enum32
        | K::Bitfield32
        | K::Uint64
        | K::Eui48 => {
            w.fill(0xFFFF);
        }
        K::Float32 | K::Float64 => {
            if let Some(first) = w.first_mut() {
                *first = if kind == K::Float32 { 0x7FC0 } else { 0x7FF8 };
            }
        }
        K::Acc16 | K::Acc32 | K::Acc64 | K::String | K::Ipaddr | K::Ipv6addr => {}
    }
    w
}

/// Writes `raw` as a two's-complement integer `w.len()` registers wide, big-endian words
/// (truncated to the width, sign-extended beyond 64 bits).
fn write_int(w: &mut [u16], raw: i64) {
    let bytes = raw.to_be_bytes();
    let fill = if raw < 0 { 0xFFFF } else { 0 };
    for (j, slot) in w.iter_mut().rev().enumerate() {
        *slot = if j < 4 {
            u16::from_be_bytes([bytes[6 - 2 * j], bytes[7 - 2 * j]])
        } else {
            fill
        };
    }
}

/// Builds the registers of a model block for a simulated device: every point starts at its
/// not-implemented sentinel (pad = 0x8000 as the SunSpec spec says, strings all zero, accumulators
/// 0, floats NaN).
///
/// The setters panic on a point name the model does not have (and on a group index beyond the
/// instances built): the builder is for simulators and tests, where a typo is a bug to surface.
#[derive(Debug, Clone)]
pub struct BlockBuilder {
    def: &'static ModelDef,
    count: usize,
    regs: Vec<u16>,
}

impl BlockBuilder {
    /// A block of model `id` without repeating-group instances; `None` for a model without
    /// definition.
    pub fn new(id: u16) -> Option<BlockBuilder> {
        Self::with_groups(id, 0)
    }

    /// A block of model `id` with `count` repeating-group instances; sets the count point (e.g.
    /// 160 "N") if the model has one. `None` for a model without definition, `count > 0` for a
    /// model without repeating group, or a block longer than 65535 registers.
    pub fn with_groups(id: u16, count: usize) -> Option<BlockBuilder> {
        let def = models::definition(id)?;
        let group_len = match &def.repeating {
            Some(g) => usize::from(g.len),
            None if count == 0 => 0,
            None => return None,
        };
        let total = usize::from(def.fixed_len).checked_add(group_len.checked_mul(count)?)?;
        if total > usize::from(u16::MAX) {
            return None;
        }
        let mut regs = vec![0u16; total];
        let place = |regs: &mut [u16], base: usize, points: &[PointDef]| {
            for p in points {
                let start = base + usize::from(p.offset);
                let size = usize::from(p.size);
                regs[start..start + size].copy_from_slice(&sentinel_words(p.kind, size));
            }
        };
        place(&mut regs, 0, def.points);
        if let Some(g) = &def.repeating {
            for i in 0..count {
                place(
                    &mut regs,
                    usize::from(def.fixed_len) + i * group_len,
                    g.points,
                );
            }
        }
        let mut builder = BlockBuilder { def, count, regs };
        if let Some(cp) = def.repeating.as_ref().and_then(|g| g.count_point) {
            builder.set_raw(cp, i64::try_from(count).ok()?);
        }
        Some(builder)
    }

    /// The registers of `point` in the fixed part (index `None`) or group instance `index`.
    fn slot(&mut self, index: Option<usize>, point: &str) -> (&'static PointDef, &mut [u16]) {
        let def = self.def;
        let (points, base) = match index {
            None => (def.points, 0),
            Some(i) => {
                let g = def
                    .repeating
                    .as_ref()
                    .unwrap_or_else(|| panic!("model {} has no repeating group", def.id));
                assert!(
                    i < self.count,
                    "model {}: group instance {i} not built (count {})",
                    def.id,
                    self.count
                );
                (
                    g.points,
                    usize::from(def.fixed_len) + i * usize::from(g.len),
                )
            }
        };
        let p = points
            .iter()
            .find(|p| p.name == point)
            .unwrap_or_else(|| panic!("model {} has no point {point:?} here", def.id));
        let start = base + usize::from(p.offset);
        (p, &mut self.regs[start..start + usize::from(p.size)])
    }

    /// Writes `raw` in the point's width as a two's-complement integer (truncated to the width:
    /// `-1` in an int16 is 0xFFFF, in a uint32 0xFFFF_FFFF; wider points are sign-extended). For
    /// float points it writes the raw bit pattern. Panics only on unknown point names.
    pub fn set_raw(&mut self, point: &str, raw: i64) -> &mut Self {
        write_int(self.slot(None, point).1, raw);
        self
    }

    /// Writes `text` as bytes into a string point, truncated to its size and NUL-padded.
    /// Panics only on unknown point names.
    pub fn set_text(&mut self, point: &str, text: &str) -> &mut Self {
        write_text(self.slot(None, point).1, text);
        self
    }

    /// Writes a float into a float32 (or float64) point — float models 111–113, 211–214. Panics
    /// on unknown point names and on points that are not floats.
    pub fn set_f32(&mut self, point: &str, v: f32) -> &mut Self {
        let (p, w) = self.slot(None, point);
        write_float(p, w, v);
        self
    }

    /// [`BlockBuilder::set_raw`] for a point of repeating-group instance `index`. Panics on
    /// unknown point names and an index beyond the instances built.
    pub fn set_group_raw(&mut self, index: usize, point: &str, raw: i64) -> &mut Self {
        write_int(self.slot(Some(index), point).1, raw);
        self
    }

    /// [`BlockBuilder::set_text`] for a point of repeating-group instance `index`.
    pub fn set_group_text(&mut self, index: usize, point: &str, text: &str) -> &mut Self {
        write_text(self.slot(Some(index), point).1, text);
        self
    }

    /// [`BlockBuilder::set_f32`] for a point of repeating-group instance `index`.
    pub fn set_group_f32(&mut self, index: usize, point: &str, v: f32) -> &mut Self {
        let (p, w) = self.slot(Some(index), point);
        write_float(p, w, v);
        self
    }

    /// The block's registers: exactly L registers (not including ID/L).
    pub fn registers(&self) -> Vec<u16> {
        self.regs.clone()
    }

    /// The block decoded (always succeeds: the builder produces a complete block).
    pub fn build(&self) -> Result<ModelBlock, BlockError> {
        ModelBlock::decode(self.def.id, &self.regs)
    }
}

fn write_text(w: &mut [u16], text: &str) {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(w.len() * 2, 0);
    for (slot, pair) in w.iter_mut().zip(bytes.chunks_exact(2)) {
        *slot = u16::from_be_bytes([pair[0], pair[1]]);
    }
}

fn write_float(p: &PointDef, w: &mut [u16], v: f32) {
    match p.kind {
        PointKind::Float32 => {
            let b = v.to_bits().to_be_bytes();
            w.copy_from_slice(&[
                u16::from_be_bytes([b[0], b[1]]),
                u16::from_be_bytes([b[2], b[3]]),
            ]);
        }
        PointKind::Float64 => {
            let b = f64::from(v).to_bits().to_be_bytes();
            for (slot, pair) in w.iter_mut().zip(b.chunks_exact(2)) {
                *slot = u16::from_be_bytes([pair[0], pair[1]]);
            }
        }
        other => panic!("point {} is {other:?}, not a float", p.name),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn is_numeric(k: PointKind) -> bool {
        !matches!(
            k,
            PointKind::String
                | PointKind::Pad
                | PointKind::Ipaddr
                | PointKind::Ipv6addr
                | PointKind::Eui48
        )
    }

    /// A distinct non-sentinel raw value for a point; negative for signed kinds.
    fn sample(p: &PointDef, salt: usize) -> i64 {
        let v = i64::try_from((usize::from(p.offset) * 7 + salt) % 1000 + 1).unwrap();
        match p.kind {
            PointKind::Int16 | PointKind::Int32 | PointKind::Int64 => -v,
            _ => v,
        }
    }

    /// SF value used in the round trip for an SF point.
    fn sample_sf(p: &PointDef) -> i64 {
        i64::from(p.offset % 7) - 3
    }

    fn fill(b: &mut BlockBuilder, points: &[PointDef], index: Option<usize>, salt: usize) {
        let count_point = b.def.repeating.as_ref().and_then(|g| g.count_point);
        for p in points {
            if index.is_none() && count_point == Some(p.name) {
                continue; // keeps the instance count the builder wrote
            }
            match (p.kind, index) {
                (PointKind::Sunssf, None) => b.set_raw(p.name, sample_sf(p)),
                (PointKind::Sunssf, Some(i)) => b.set_group_raw(i, p.name, sample_sf(p)),
                (PointKind::Float32 | PointKind::Float64, None) => b.set_f32(
                    p.name,
                    f32::from(u16::try_from(sample(p, salt)).unwrap()) + 0.25,
                ),
                (PointKind::Float32 | PointKind::Float64, Some(i)) => b.set_group_f32(
                    i,
                    p.name,
                    f32::from(u16::try_from(sample(p, salt)).unwrap()) + 0.25,
                ),
                (PointKind::String, None) => b.set_text(p.name, "Gridshare"),
                (PointKind::String, Some(i)) => b.set_group_text(i, p.name, "Gridshare"),
                (k, None) if is_numeric(k) => b.set_raw(p.name, sample(p, salt)),
                (k, Some(i)) if is_numeric(k) => b.set_group_raw(i, p.name, sample(p, salt)),
                _ => b,
            };
        }
    }

    fn expected_sf(block_def: &ModelDef, group: Option<&GroupDef>, p: &PointDef) -> i8 {
        match p.sf {
            None => 0,
            Some(ScaleRef::Fixed(v)) => v,
            Some(ScaleRef::Point(name)) => {
                let sfp = group
                    .and_then(|g| g.point(name))
                    .or_else(|| block_def.point(name))
                    .unwrap();
                i8::try_from(sample_sf(sfp)).unwrap()
            }
        }
    }

    fn check(
        block: &ModelBlock,
        def: &ModelDef,
        group: Option<&GroupDef>,
        index: Option<usize>,
        salt: usize,
    ) {
        let points = group.map_or(def.points, |g| g.points);
        for p in points {
            let got = match index {
                None => block.value(p.name),
                Some(i) => block.group_value(i, p.name),
            };
            if group.is_some_and(|g| g.count_point == Some(p.name))
                || def
                    .repeating
                    .as_ref()
                    .is_some_and(|g| g.count_point == Some(p.name))
            {
                continue; // the builder wrote the instance count here
            }
            let sf = expected_sf(def, group, p);
            match p.kind {
                PointKind::Sunssf => assert_eq!(
                    got,
                    Ok(Scaled::new(sample_sf(p), 0)),
                    "{} {}",
                    def.id,
                    p.name
                ),
                PointKind::Float32 | PointKind::Float64 => {
                    let m = sample(p, salt) * 1000 + 250;
                    assert_eq!(got, Ok(Scaled::new(m, sf - 3)), "{} {}", def.id, p.name);
                }
                PointKind::String => {
                    assert!(matches!(got, Err(PointError::NotNumeric { .. })));
                    let text = match index {
                        None => block.text(p.name),
                        Some(i) => block.group_text(i, p.name),
                    };
                    let expect = if p.size >= 5 {
                        "Gridshare"
                    } else {
                        &"Gridshare"[..usize::from(p.size) * 2]
                    };
                    assert_eq!(text.as_deref(), Some(expect), "{} {}", def.id, p.name);
                }
                k if is_numeric(k) => assert_eq!(
                    got,
                    Ok(Scaled::new(sample(p, salt), sf)),
                    "{} {}",
                    def.id,
                    p.name
                ),
                _ => assert!(matches!(got, Err(PointError::NotNumeric { .. }))),
            }
        }
    }

    #[test]
    fn every_generated_model_round_trips() {
        for def in models::all() {
            let count = usize::from(def.repeating.is_some()) * 2;
            let mut b = BlockBuilder::with_groups(def.id, count).unwrap();
            fill(&mut b, def.points, None, 0);
            for i in 0..count {
                fill(
                    &mut b,
                    def.repeating.as_ref().unwrap().points,
                    Some(i),
                    i + 1,
                );
            }
            let regs = b.registers();
            let block = ModelBlock::decode(def.id, &regs).unwrap();
            assert_eq!(usize::from(block.len()), regs.len());
            assert_eq!(block.group_count(), count, "model {}", def.id);
            check(&block, def, None, None, 0);
            for i in 0..count {
                check(&block, def, def.repeating.as_ref(), Some(i), i + 1);
            }
            assert!(block.to_string().contains(def.name));
        }
    }

    #[test]
    fn a_fresh_builder_is_not_implemented_everywhere() {
        for def in models::all() {
            let count = usize::from(def.repeating.is_some());
            let block = BlockBuilder::with_groups(def.id, count)
                .unwrap()
                .build()
                .unwrap();
            for p in def.points {
                if def
                    .repeating
                    .as_ref()
                    .is_some_and(|g| g.count_point == Some(p.name))
                {
                    continue;
                }
                if is_numeric(p.kind) {
                    assert_eq!(
                        block.value(p.name),
                        Err(PointError::NotImplemented),
                        "{} {}",
                        def.id,
                        p.name
                    );
                } else {
                    assert_eq!(block.text(p.name), None, "{} {}", def.id, p.name);
                }
            }
            if let Some(g) = &def.repeating {
                for p in g.points.iter().filter(|p| is_numeric(p.kind)) {
                    assert_eq!(
                        block.group_value(0, p.name),
                        Err(PointError::NotImplemented),
                        "{} {}",
                        def.id,
                        p.name
                    );
                }
            }
        }
    }

    /// One point of each kind, its sentinel, and a neighbouring value that must decode.
    #[test]
    fn sentinels_are_not_implemented_and_never_zero() {
        // (model, point, kind, sentinel, neighbour, neighbour's value)
        let cases: &[(u16, &str, PointKind, i64, i64, i64)] = &[
            (203, "W", PointKind::Int16, -0x8000, -0x7FFF, -0x7FFF),
            (203, "A", PointKind::Int16, -0x8000, 0x7FFF, 0x7FFF),
            (120, "DERTyp", PointKind::Enum16, 0xFFFF, 0xFFFE, 0xFFFE),
            (103, "St", PointKind::Enum16, 0xFFFF, 4, 4),
            (802, "AHRtg", PointKind::Uint16, 0xFFFF, 0, 0),
            (160, "N", PointKind::Count, 0xFFFF, 0, 0),
            (
                203,
                "TotWhImp",
                PointKind::Acc32,
                0,
                0xFFFF_FFFF,
                0xFFFF_FFFF,
            ),
            (103, "WH", PointKind::Acc32, 0, 1, 1),
            (802, "NCyc", PointKind::Uint32, 0xFFFF_FFFF, 0, 0),
            (103, "Evt1", PointKind::Bitfield32, 0xFFFF_FFFF, 0, 0),
            (701, "TotWhInj", PointKind::Uint64, -1, 0, 0),
            (122, "ActWh", PointKind::Acc64, 0, -1, -1),
        ];
        for &(model, point, kind, sentinel, neighbour, want) in cases {
            let def = models::definition(model).unwrap();
            assert_eq!(def.point(point).unwrap().kind, kind, "{model} {point}");
            let mut b = BlockBuilder::with_groups(model, 0).unwrap();
            for sf in def.points.iter().filter(|p| p.kind == PointKind::Sunssf) {
                b.set_raw(sf.name, 0);
            }
            b.set_raw(point, sentinel);
            let block = b.build().unwrap();
            assert_eq!(
                block.value(point),
                Err(PointError::NotImplemented),
                "{model} {point}"
            );
            b.set_raw(point, neighbour);
            let got = b.build().unwrap().value(point);
            if kind == PointKind::Acc64 {
                // 0xFFFF_FFFF_FFFF_FFFF does not fit an i64 mantissa.
                assert_eq!(
                    got,
                    Err(PointError::OutOfRange {
                        point: point.to_owned()
                    })
                );
            } else {
                assert_eq!(got, Ok(Scaled::new(want, 0)), "{model} {point}");
            }
        }
    }

    #[test]
    fn int32_int64_float_and_sf_sentinels() {
        // int32 (model 802 has none; 122's int32? use a builder on raw words instead).
        let int32 = PointDef {
            name: "X",
            label: "X",
            offset: 0,
            size: 2,
            kind: PointKind::Int32,
            sf: None,
            units: None,
            mandatory: false,
        };
        assert!(matches!(
            decode_number(&int32, &[0x8000, 0]),
            Err(PointError::NotImplemented)
        ));
        assert!(matches!(
            decode_number(&int32, &[0xFFFF, 0xFFFF]),
            Ok(Number::Int(-1))
        ));
        let int64 = PointDef {
            kind: PointKind::Int64,
            size: 4,
            ..int32
        };
        assert!(matches!(
            decode_number(&int64, &[0x8000, 0, 0, 0]),
            Err(PointError::NotImplemented)
        ));
        assert!(
            matches!(decode_number(&int64, &[0x8000, 0, 0, 1]), Ok(Number::Int(v)) if v == i64::MIN + 1)
        );
        let acc16 = PointDef {
            kind: PointKind::Acc16,
            size: 1,
            ..int32
        };
        assert!(matches!(
            decode_number(&acc16, &[0]),
            Err(PointError::NotImplemented)
        ));
        let f64p = PointDef {
            kind: PointKind::Float64,
            size: 4,
            ..int32
        };
        assert!(matches!(
            decode_number(&f64p, &[0x7FF8, 0, 0, 0]),
            Err(PointError::NotImplemented)
        ));
        let e32 = PointDef {
            kind: PointKind::Enum32,
            size: 2,
            ..int32
        };
        assert!(matches!(
            decode_number(&e32, &[0xFFFF, 0xFFFF]),
            Err(PointError::NotImplemented)
        ));
        // sunssf read as a value
        let mut b = BlockBuilder::new(103).unwrap();
        b.set_raw("W", 5);
        assert_eq!(
            b.build().unwrap().value("W_SF"),
            Err(PointError::NotImplemented)
        );
    }

    #[test]
    fn scale_factor_out_of_range_is_an_error() {
        for bad in [11, -11, 0x7FFF] {
            let mut b = BlockBuilder::new(203).unwrap();
            b.set_raw("W", 1500).set_raw("W_SF", bad);
            assert_eq!(
                b.build().unwrap().value("W"),
                Err(PointError::ScaleFactorOutOfRange {
                    sf: "W_SF".into(),
                    value: i16::try_from(bad).unwrap()
                })
            );
        }
        let mut b = BlockBuilder::new(203).unwrap();
        b.set_raw("W", 1500).set_raw("W_SF", -10);
        assert_eq!(b.build().unwrap().value("W"), Ok(Scaled::new(1500, -10)));
    }

    #[test]
    fn scale_factor_not_implemented_is_an_error() {
        let mut b = BlockBuilder::new(103).unwrap();
        b.set_raw("WH", 123_456);
        assert_eq!(
            b.build().unwrap().value("WH"),
            Err(PointError::ScaleFactorNotImplemented { sf: "WH_SF".into() })
        );
        // A not-implemented value wins over a not-implemented SF.
        assert_eq!(
            b.build().unwrap().value("W"),
            Err(PointError::NotImplemented)
        );
    }

    #[test]
    fn inverter_103_reads_power_and_energy_with_their_sfs() {
        let mut b = BlockBuilder::new(103).unwrap();
        b.set_raw("W", -1234)
            .set_raw("W_SF", -1)
            .set_raw("WH", 98_765_432)
            .set_raw("WH_SF", 1);
        let regs = b.registers();
        assert_eq!(regs.len(), 50);
        assert_eq!(regs[12], 0xFB2E, "W at +14 from the model start");
        let block = ModelBlock::decode(103, &regs).unwrap();
        assert_eq!(block.value("W"), Ok(Scaled::new(-1234, -1)));
        assert_eq!(block.value("W").unwrap().to_string(), "-123.4");
        assert_eq!(block.value("WH").unwrap().floor_int(), Some(987_654_320));
        let dump = block.to_string();
        assert!(dump.contains("-123.4 W"), "{dump}");
        assert!(dump.contains("(not implemented)"), "{dump}");
    }

    #[test]
    fn kostal_signed_acc32_is_decoded_unsigned_not_fixed() {
        let mut b = BlockBuilder::new(203).unwrap();
        b.set_raw("TotWhExp", -5).set_raw("TotWh_SF", 0);
        assert_eq!(
            b.build().unwrap().value("TotWhExp"),
            Ok(Scaled::new(4_294_967_291, 0))
        );
    }

    #[test]
    fn too_short_block_is_an_error() {
        let regs = BlockBuilder::new(203).unwrap().registers();
        assert_eq!(regs.len(), 105);
        assert_eq!(
            ModelBlock::decode(203, &regs[..50]).unwrap_err(),
            BlockError::TooShort {
                model: 203,
                expected: 105,
                got: 50
            }
        );
        assert!(
            ModelBlock::decode(203, &[])
                .unwrap_err()
                .to_string()
                .contains("needs at least 105")
        );
    }

    #[test]
    fn common_model_without_trailing_pad_is_accepted() {
        let mut b = BlockBuilder::new(1).unwrap();
        b.set_text("Mn", "SolarEdge ")
            .set_text("Md", "SE5000H")
            .set_text("SN", "7E1234AB")
            .set_raw("DA", 1);
        let regs = b.registers();
        assert_eq!(regs.len(), 66);
        let block = ModelBlock::decode(1, &regs[..65]).unwrap();
        assert_eq!(block.text("Mn").as_deref(), Some("SolarEdge"));
        assert_eq!(block.text("Md").as_deref(), Some("SE5000H"));
        assert_eq!(block.text("SN").as_deref(), Some("7E1234AB"));
        assert_eq!(block.text("Opt"), None);
        assert_eq!(block.text("Nope"), None);
        assert_eq!(block.value("DA"), Ok(Scaled::new(1, 0)));
        assert_eq!(
            block.value("Pad"),
            Err(PointError::NotNumeric {
                point: "Pad".into()
            })
        );
        assert_eq!(
            block.value("Mn"),
            Err(PointError::NotNumeric { point: "Mn".into() })
        );
        assert_eq!(
            block.value("Nope"),
            Err(PointError::UnknownPoint {
                point: "Nope".into()
            })
        );
        assert!(block.to_string().contains("\"SolarEdge\""));
    }

    #[test]
    fn mppt_160_with_four_modules() {
        let mut b = BlockBuilder::with_groups(160, 4).unwrap();
        b.set_raw("DCA_SF", -2)
            .set_raw("DCV_SF", -1)
            .set_raw("DCW_SF", 0)
            .set_raw("DCWH_SF", 1);
        for i in 0..4 {
            let k = i64::try_from(i).unwrap();
            b.set_group_raw(i, "ID", k + 1)
                .set_group_text(i, "IDStr", &format!("MPPT{}", i + 1))
                .set_group_raw(i, "DCW", 1000 + k)
                .set_group_raw(i, "DCA", 500 + k)
                .set_group_raw(i, "DCWH", 10_000 * (k + 1));
        }
        let regs = b.registers();
        assert_eq!(regs.len(), 8 + 4 * 20);
        let block = ModelBlock::decode(160, &regs).unwrap();
        assert_eq!(block.group_count(), 4);
        assert_eq!(block.value("N"), Ok(Scaled::new(4, 0)));
        for i in 0..4 {
            let k = i64::try_from(i).unwrap();
            assert_eq!(block.group_value(i, "DCW"), Ok(Scaled::new(1000 + k, 0)));
            assert_eq!(block.group_value(i, "DCA"), Ok(Scaled::new(500 + k, -2)));
            assert_eq!(
                block.group_value(i, "DCWH"),
                Ok(Scaled::new(10_000 * (k + 1), 1))
            );
            assert_eq!(block.group_value(i, "DCV"), Err(PointError::NotImplemented));
            assert_eq!(block.group_text(i, "IDStr"), Some(format!("MPPT{}", i + 1)));
        }
        assert_eq!(
            block.group_value(4, "DCW"),
            Err(PointError::UnknownPoint {
                point: "module[4].DCW".into()
            })
        );
        assert_eq!(
            block.group_value(0, "Nope"),
            Err(PointError::UnknownPoint {
                point: "Nope".into()
            })
        );
        let dump = block.to_string();
        assert!(
            dump.contains("4 x module") && dump.contains("module[3]"),
            "{dump}"
        );

        // N disagreeing with L: the smaller wins, no panic.
        let mut b5 = b.clone();
        b5.set_raw("N", 5);
        assert_eq!(b5.build().unwrap().group_count(), 4);
        b5.set_raw("N", 3);
        assert_eq!(b5.build().unwrap().group_count(), 3);
        b5.set_raw("N", 0xFFFF);
        assert_eq!(
            b5.build().unwrap().group_count(),
            4,
            "not-implemented N falls back to L"
        );
        // A truncated last instance is not counted.
        let block = ModelBlock::decode(160, &regs[..regs.len() - 3]).unwrap();
        assert_eq!(block.group_count(), 3);
        assert_eq!(block.extra_registers(), 17);
    }

    #[test]
    fn float_meter_213_values() {
        let mut b = BlockBuilder::new(213).unwrap();
        b.set_f32("W", -1234.5678)
            .set_f32("TotWhImp", 16_777_216.0)
            .set_raw("TotWhExp", 0x7FC0_0000);
        b.set_f32("VAR", f32::INFINITY).set_raw("Hz", 0x7FC0_0001);
        let regs = b.registers();
        assert_eq!(regs.len(), 124);
        let block = ModelBlock::decode(213, &regs).unwrap();
        // -1234.5678f32 is -1234.5677490234375: milli-unit precision.
        assert_eq!(block.value("W"), Ok(Scaled::new(-1_234_568, -3)));
        assert_eq!(
            block.value("TotWhImp").unwrap().floor_int(),
            Some(16_777_216)
        );
        assert_eq!(block.value("TotWhExp"), Err(PointError::NotImplemented));
        assert_eq!(block.value("Hz"), Err(PointError::NotImplemented));
        assert_eq!(block.value("VAR"), Err(PointError::NotANumber));
        assert_eq!(block.value("PF"), Err(PointError::NotImplemented));
    }

    #[test]
    fn unknown_model_is_kept_raw() {
        let block = ModelBlock::decode(64_999, &[1, 2, 3]).unwrap();
        assert!(block.def().is_none());
        assert_eq!(block.registers(), &[1, 2, 3]);
        assert_eq!(block.group_count(), 0);
        assert_eq!(
            block.value("W"),
            Err(PointError::UnknownPoint { point: "W".into() })
        );
        assert!(block.to_string().contains("no definition"));
        assert!(BlockBuilder::new(64_999).is_none());
        assert!(BlockBuilder::with_groups(103, 1).is_none());
    }

    #[test]
    #[should_panic(expected = "no point")]
    fn builder_panics_on_unknown_point() {
        BlockBuilder::new(103).unwrap().set_raw("Watts", 1);
    }

    proptest! {
        #[test]
        fn any_i16_with_any_sf_round_trips(raw in any::<i16>(), sf in -10i8..=10) {
            let mut b = BlockBuilder::new(203).unwrap();
            b.set_raw("W", i64::from(raw)).set_raw("W_SF", i64::from(sf));
            let got = ModelBlock::decode(203, &b.registers()).unwrap().value("W");
            if raw == i16::MIN {
                prop_assert_eq!(got, Err(PointError::NotImplemented));
            } else {
                prop_assert_eq!(got, Ok(Scaled::new(i64::from(raw), sf)));
            }
        }

        #[test]
        fn any_acc32_with_any_sf_round_trips(raw in any::<u32>(), sf in -10i8..=10) {
            let mut b = BlockBuilder::new(203).unwrap();
            b.set_raw("TotWhImp", i64::from(raw)).set_raw("TotWh_SF", i64::from(sf));
            let got = ModelBlock::decode(203, &b.registers()).unwrap().value("TotWhImp");
            if raw == 0 {
                prop_assert_eq!(got, Err(PointError::NotImplemented));
            } else {
                prop_assert_eq!(got, Ok(Scaled::new(i64::from(raw), sf)));
            }
        }

        #[test]
        fn any_i32_round_trips(raw in any::<i32>()) {
            let int32 = PointDef { name: "X", label: "X", offset: 0, size: 2, kind: PointKind::Int32, sf: None, units: None, mandatory: false };
            let mut w = [0u16; 2];
            write_int(&mut w, i64::from(raw));
            match decode_number(&int32, &w) {
                Ok(Number::Int(v)) => prop_assert_eq!(v, i64::from(raw)),
                Err(PointError::NotImplemented) => prop_assert_eq!(raw, i32::MIN),
                _ => prop_assert!(false),
            }
        }

        #[test]
        fn decoding_arbitrary_registers_never_panics(regs in proptest::collection::vec(any::<u16>(), 0..140), id in prop::sample::select(vec![1u16, 103, 160, 203, 213, 701, 802, 804, 9999])) {
            if let Ok(block) = ModelBlock::decode(id, &regs) {
                let _ = block.to_string();
                for i in 0..block.group_count() {
                    let _ = block.group_value(i, "DCW");
                }
            }
        }
    }
}
