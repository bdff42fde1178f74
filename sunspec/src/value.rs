//! Decoded register values: an exact decimal [`Scaled`] number or the [`PointError`] that says
//! why a point has no usable value.
//!
//! Both the SunSpec decoder and the vendor register profiles produce these, so the reading
//! pipeline never sees a device-specific encoding. Values are integers (mantissa × 10^exponent):
//! energy is settled, so no float survives decoding. Device floats are converted once, exactly,
//! by [`float_to_mantissa`] with a stated decimal precision.

use std::fmt;

/// A decoded numeric value: mantissa × 10^exponent. Integers only — floats from devices are converted
/// with a stated precision (see [`float_to_mantissa`]). Never constructed from a not-implemented
/// sentinel: the decoders return [`PointError::NotImplemented`] instead.
///
/// Equality is structural: `15 × 10^-1` and `150 × 10^-2` are different `Scaled` values (they
/// carry different precision); use [`Scaled::cmp_value`] for numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaled {
    /// The integer digits.
    pub mantissa: i64,
    /// The decimal exponent (a SunSpec scale factor, or a profile's `scale`).
    pub exponent: i8,
}

/// 10^k as an i128, or `None` when it does not fit (k > 38).
fn pow10(k: u32) -> Option<i128> {
    10i128.checked_pow(k)
}

/// Divides `n` by `d` (> 0) rounding toward negative infinity.
fn div_floor(n: i128, d: i128) -> i128 {
    n.div_euclid(d)
}

/// Divides `n` by `d` (> 0) rounding half away from zero.
fn div_round_half_away(n: i128, d: i128) -> i128 {
    let q = n / d;
    let r = n % d;
    if r.unsigned_abs() * 2 >= d.unsigned_abs() {
        q + n.signum()
    } else {
        q
    }
}

impl Scaled {
    /// The value `mantissa × 10^exponent`.
    pub fn new(mantissa: i64, exponent: i8) -> Self {
        Scaled { mantissa, exponent }
    }

    /// Value in whole units, rounded toward negative infinity (used for lifetime counters: keeps monotonicity). None on overflow.
    pub fn floor_int(&self) -> Option<i64> {
        self.int_with(i16::from(self.exponent), div_floor)
    }

    /// Value in whole units, rounded half away from zero (power, state of charge). None on overflow.
    pub fn round_int(&self) -> Option<i64> {
        self.int_with(i16::from(self.exponent), div_round_half_away)
    }

    /// Value × 10^shift in whole units, rounded half away from zero (e.g. percent → basis points with shift 2). None on overflow.
    pub fn round_int_shifted(&self, shift: i8) -> Option<i64> {
        self.int_with(
            i16::from(self.exponent) + i16::from(shift),
            div_round_half_away,
        )
    }

    /// `mantissa × 10^exp` converted to an integer, dividing with `div` when `exp < 0`.
    fn int_with(&self, exp: i16, div: fn(i128, i128) -> i128) -> Option<i64> {
        let m = i128::from(self.mantissa);
        let k = u32::from(exp.unsigned_abs());
        let v = if exp >= 0 {
            if m == 0 { 0 } else { m.checked_mul(pow10(k)?)? }
        } else {
            // |m| < 10^19, so dividing by 10^k for any k > 38 gives what dividing by 10^38
            // gives: 0 or −1 for floor, 0 for rounding.
            div(m, pow10(k.min(38))?)
        };
        i64::try_from(v).ok()
    }

    /// Compares the numeric values of two `Scaled` regardless of their exponents.
    pub fn cmp_value(&self, other: &Scaled) -> std::cmp::Ordering {
        // Bring both to the smaller exponent (exact in i128 unless the gap exceeds 10^38).
        let (a, b) = (i16::from(self.exponent), i16::from(other.exponent));
        let e = a.min(b);
        let lift = |s: &Scaled, from: i16| -> Option<i128> {
            i128::from(s.mantissa).checked_mul(pow10(u32::from((from - e).unsigned_abs()))?)
        };
        match (lift(self, a), lift(other, b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            // The lifted side exceeds 10^38 units of the smaller exponent, beyond any i64
            // mantissa of the other side, unless its own mantissa is zero.
            (None, Some(y)) if self.mantissa == 0 => 0.cmp(&y),
            (None, Some(_)) => self.mantissa.signum().cmp(&0),
            (Some(x), None) if other.mantissa == 0 => x.cmp(&0),
            (Some(_), None) => 0.cmp(&other.mantissa.signum()),
            (None, None) => self.mantissa.cmp(&other.mantissa),
        }
    }

    /// The exact sum, at the smaller of the two exponents (a profile that adds the phases of
    /// a meter, or subtracts export power from import power). None if it does not fit.
    pub fn checked_add(&self, other: &Scaled) -> Option<Scaled> {
        let e = self.exponent.min(other.exponent);
        let lift = |s: &Scaled| -> Option<i64> {
            let k = u32::from(s.exponent.abs_diff(e));
            s.mantissa.checked_mul(10i64.checked_pow(k)?)
        };
        Some(Scaled::new(lift(self)?.checked_add(lift(other)?)?, e))
    }

    /// For display only (dumps, logs) — never for anything settled.
    pub fn to_f64(&self) -> f64 {
        #[allow(
            clippy::cast_precision_loss,
            reason = "display only; documented as lossy"
        )]
        let m = self.mantissa as f64;
        m * 10f64.powi(i32::from(self.exponent))
    }
}

/// Exact decimal: `1234.5` for `Scaled::new(12345, -1)`, `1200` for `Scaled::new(12, 2)`. The
/// number of decimals is the precision the value carries (`1.500` for `Scaled::new(1500, -3)`).
impl fmt::Display for Scaled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        if self.exponent >= 0 {
            let zeros = if self.mantissa == 0 {
                0
            } else {
                usize::from(self.exponent.unsigned_abs())
            };
            return write!(f, "{sign}{digits}{}", "0".repeat(zeros));
        }
        let decimals = usize::from(self.exponent.unsigned_abs());
        let padded = if digits.len() <= decimals {
            format!("{}{digits}", "0".repeat(decimals + 1 - digits.len()))
        } else {
            digits
        };
        let (int, frac) = padded.split_at(padded.len() - decimals);
        write!(f, "{sign}{int}.{frac}")
    }
}

/// Why a point has no usable value. Every variant is a reason to publish a status, never a
/// substitute number (evcc's "not implemented → 0" is exactly what settlement must not do).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    /// The device reports the SunSpec or vendor "not implemented" sentinel (0x8000, 0xFFFF,
    /// 0x8000_0000, accumulator 0, float NaN 0x7FC0_0000, a profile's `sentinels`, ...).
    #[error(
        "the device reports this point as not implemented (sentinel value), so there is no reading; check that the device measures it or use another point or model"
    )]
    NotImplemented,
    /// The point's scale-factor register holds the not-implemented sentinel 0x8000.
    #[error(
        "scale factor {sf} is not implemented (0x8000) on the device, so the value cannot be scaled; the device's SunSpec map is incomplete"
    )]
    ScaleFactorNotImplemented {
        /// Name of the scale-factor point.
        sf: String,
    },
    /// The scale factor is outside the valid range −10..=10.
    #[error(
        "scale factor {sf} is {value}, outside the valid range -10..=10; the register map is probably misaligned (wrong base address or model length)"
    )]
    ScaleFactorOutOfRange {
        /// Name of the scale-factor point.
        sf: String,
        /// The raw scale factor read.
        value: i16,
    },
    /// A float register holds NaN or ±infinity (other than the not-implemented pattern).
    #[error(
        "the device sent a float that is not a number (NaN or infinity); check the register's word order (swapped words often decode to NaN)"
    )]
    NotANumber,
    /// No point of that name in this model or profile.
    #[error(
        "no point named {point:?} in this model or profile; check the name against the SunSpec definition"
    )]
    UnknownPoint {
        /// The name asked for.
        point: String,
    },
    /// The point exists but does not hold a number (string, pad, address).
    #[error("point {point:?} is not numeric (string, pad or address); read it as text instead")]
    NotNumeric {
        /// The name asked for.
        point: String,
    },
    /// The register was not in the data read (the read failed, or the device answered with
    /// fewer registers than asked for).
    #[error(
        "{point} was not in the registers read (failed or short read); check the transport log for the Modbus error"
    )]
    NotRead {
        /// The point or quantity name.
        point: String,
    },
    /// The value does not fit the conversion (e.g. a uint64 above i64::MAX).
    #[error(
        "point {point:?} holds a value too large to represent; the register is probably misread (word order or type)"
    )]
    OutOfRange {
        /// The name asked for.
        point: String,
    },
}

/// Converts a finite device float to the integer `round(v × 10^decimals)`, rounding half away
/// from zero. It is computed exactly from the IEEE 754 bits (no float arithmetic), so the result
/// is the correctly rounded decimal of the value the device sent. `f32` inputs convert
/// losslessly with `f64::from`.
///
/// Errors: [`PointError::NotANumber`] for NaN/±Inf; [`PointError::OutOfRange`] (with an empty
/// point name, which callers that know the point replace) when the result exceeds an i64.
pub fn float_to_mantissa(v: f64, decimals: i8) -> Result<i64, PointError> {
    let overflow = || PointError::OutOfRange {
        point: String::new(),
    };
    if !v.is_finite() {
        return Err(PointError::NotANumber);
    }
    let bits = v.to_bits();
    let negative = bits >> 63 == 1;
    let biased = i32::try_from((bits >> 52) & 0x7ff).map_err(|_| overflow())?;
    let fraction = bits & ((1u64 << 52) - 1);
    // v = ±m × 2^e exactly.
    let (m, e) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1u64 << 52), biased - 1075)
    };
    if m == 0 {
        return Ok(0);
    }
    // |v| × 10^decimals = m × 2^(e + decimals) × 5^decimals = n / d with n, d positive integers.
    let e2 = e + i32::from(decimals);
    let five = 5u128.checked_pow(u32::from(decimals.unsigned_abs()));
    let mut n = u128::from(m);
    let mut d: u128 = 1;
    if decimals >= 0 {
        n = five.and_then(|f| n.checked_mul(f)).ok_or_else(overflow)?;
    } else {
        match five {
            Some(f) => d = f,
            // d > 2^128 while n = m < 2^53: rounds to zero.
            None => return Ok(0),
        }
    }
    let shift = e2.unsigned_abs();
    if e2 >= 0 {
        // The result must stay below 2^63, so n must have room for the shift.
        if shift >= n.leading_zeros() {
            return Err(overflow());
        }
        n <<= shift;
    } else {
        let n_bits = 128 - n.leading_zeros();
        if shift > n_bits {
            // n < 2^(shift-1) ≤ d/2: rounds to zero.
            return Ok(0);
        }
        match 1u128.checked_shl(shift).and_then(|s| d.checked_mul(s)) {
            Some(scaled) => d = scaled,
            // d ≥ 2^128 > n. With a factor 5 in d, n = m < 2^53 rounds to zero; otherwise
            // d = 2^128 exactly (shift ≤ n_bits ≤ 128) and n ≥ d/2 iff its top bit is set.
            None => {
                let up = d == 1 && n >> 127 == 1;
                return Ok(match (up, negative) {
                    (false, _) => 0,
                    (true, false) => 1,
                    (true, true) => -1,
                });
            }
        }
    }
    let q = n / d;
    let r = n % d;
    let q = if r >= d - r { q + 1 } else { q };
    let q = i64::try_from(q).map_err(|_| overflow())?;
    Ok(if negative { -q } else { q })
}

/// One decoded point as `meter-agent discover` shows it (table or JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointRow {
    /// SunSpec model id, or the register profile's name.
    pub model: String,
    /// The point (SunSpec name, with `[i]` for a repeating-group instance) or the quantity.
    pub point: String,
    /// Raw registers in hex, as read.
    pub raw: String,
    /// The decimal exponent applied (SunSpec scale factor, profile `scale`), if any.
    pub scale_factor: Option<i8>,
    /// The value (exact decimal, or text), if it has one.
    pub value: Option<String>,
    /// Its unit.
    pub unit: Option<String>,
    /// `ok`, or why there is no value (`not implemented`, ...).
    pub status: String,
}

/// Raw registers as `0x1234ABCD` (or a register count for long strings).
pub fn raw_hex(words: &[u16]) -> String {
    if words.len() <= 4 {
        let digits: String = words.iter().map(|x| format!("{x:04X}")).collect();
        format!("0x{digits}")
    } else {
        format!("{} regs", words.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn checked_add_aligns_exponents_exactly() {
        // 1234.5 W + (−200 W) at the finer exponent.
        assert_eq!(
            Scaled::new(12345, -1).checked_add(&Scaled::new(-2, 2)),
            Some(Scaled::new(10345, -1))
        );
        assert_eq!(
            Scaled::new(i64::MAX, 0).checked_add(&Scaled::new(1, 0)),
            None
        );
        assert_eq!(Scaled::new(1, 10).checked_add(&Scaled::new(1, -10)), None);
    }

    #[test]
    fn display_is_exact_decimal() {
        assert_eq!(Scaled::new(12345, -1).to_string(), "1234.5");
        assert_eq!(Scaled::new(-5, -3).to_string(), "-0.005");
        assert_eq!(Scaled::new(12, 2).to_string(), "1200");
        assert_eq!(Scaled::new(0, 2).to_string(), "0");
        assert_eq!(Scaled::new(0, -2).to_string(), "0.00");
        assert_eq!(Scaled::new(1500, -3).to_string(), "1.500");
        assert_eq!(
            Scaled::new(i64::MIN, -1).to_string(),
            "-922337203685477580.8"
        );
    }

    #[test]
    fn rounding_rules() {
        assert_eq!(Scaled::new(-15, -1).floor_int(), Some(-2));
        assert_eq!(Scaled::new(-15, -1).round_int(), Some(-2));
        assert_eq!(Scaled::new(-14, -1).round_int(), Some(-1));
        assert_eq!(Scaled::new(15, -1).round_int(), Some(2));
        assert_eq!(Scaled::new(19, -1).floor_int(), Some(1));
        assert_eq!(Scaled::new(7, 3).floor_int(), Some(7000));
        assert_eq!(Scaled::new(4567, -2).round_int_shifted(2), Some(4567));
        assert_eq!(Scaled::new(45675, -3).round_int_shifted(2), Some(4568));
        assert_eq!(Scaled::new(1, 19).round_int(), None);
        assert_eq!(Scaled::new(0, 100).round_int(), Some(0));
        assert_eq!(Scaled::new(i64::MAX, 1).floor_int(), None);
        assert_eq!(Scaled::new(-1, -100).floor_int(), Some(-1));
        assert_eq!(Scaled::new(i64::MAX, -100).round_int(), Some(0));
        assert_eq!(Scaled::new(i64::MIN, -128).floor_int(), Some(-1));
    }

    #[test]
    fn float_conversion_is_exact_and_rounds_half_away() {
        assert_eq!(float_to_mantissa(1.5, 3), Ok(1500));
        assert_eq!(float_to_mantissa(-0.0005, 3), Ok(-1));
        assert_eq!(float_to_mantissa(0.0, 3), Ok(0));
        // 0.1f32 is 0.100000001490116...; × 1000 rounds to 100.
        assert_eq!(float_to_mantissa(f64::from(0.1f32), 3), Ok(100));
        // 1234.567f32 is 1234.5670166015625.
        assert_eq!(
            float_to_mantissa(f64::from(1234.567f32), 6),
            Ok(1_234_567_017)
        );
        assert_eq!(float_to_mantissa(f64::NAN, 3), Err(PointError::NotANumber));
        assert_eq!(
            float_to_mantissa(f64::NEG_INFINITY, 3),
            Err(PointError::NotANumber)
        );
        assert!(float_to_mantissa(1e30, 3).is_err());
        assert_eq!(float_to_mantissa(f64::MIN_POSITIVE, 3), Ok(0));
        assert_eq!(float_to_mantissa(123_456.0, -2), Ok(1235));
        assert_eq!(float_to_mantissa(f64::from(f32::MAX), -30), Ok(340_282_347));
    }

    #[test]
    fn cmp_value_ignores_exponent() {
        use std::cmp::Ordering::*;
        assert_eq!(Scaled::new(15, -1).cmp_value(&Scaled::new(150, -2)), Equal);
        assert_eq!(Scaled::new(15, -1).cmp_value(&Scaled::new(151, -2)), Less);
        assert_eq!(
            Scaled::new(1, 100).cmp_value(&Scaled::new(i64::MAX, 0)),
            Greater
        );
        assert_eq!(
            Scaled::new(-1, 100).cmp_value(&Scaled::new(i64::MAX, 0)),
            Less
        );
        assert_eq!(Scaled::new(0, 100).cmp_value(&Scaled::new(-3, 0)), Greater);
    }

    proptest! {
        #[test]
        fn floor_brackets_the_exact_value(m in any::<i64>(), e in -20i8..=0) {
            // floor ≤ exact < floor + 1, checked in integers at the mantissa's precision.
            let f = i128::from(Scaled::new(m, e).floor_int().unwrap());
            let unit = pow10(u32::from(e.unsigned_abs())).unwrap();
            prop_assert!(f * unit <= i128::from(m));
            prop_assert!(i128::from(m) < (f + 1) * unit);
        }

        #[test]
        fn round_is_within_half_a_unit(m in any::<i64>(), e in -20i8..=0) {
            let r = i128::from(Scaled::new(m, e).round_int().unwrap());
            let unit = pow10(u32::from(e.unsigned_abs())).unwrap();
            prop_assert!((i128::from(m) - r * unit).abs() * 2 <= unit);
        }

        #[test]
        fn float_conversion_matches_float_rounding(v in -1.0e6f32..1.0e6f32) {
            let exact = float_to_mantissa(f64::from(v), 3).unwrap();
            // An f32 has 24 significant bits, so f32 × 1000 is exact in f64 and f64::round
            // (half away from zero) must agree with the integer conversion.
            let approx = (f64::from(v) * 1000.0).round();
            #[allow(clippy::cast_precision_loss, reason = "|exact| < 2^31, exact in f64")]
            let exact = exact as f64;
            prop_assert_eq!(exact, approx);
        }

        #[test]
        fn display_keeps_every_digit(m in any::<i64>(), e in -12i8..=0) {
            let s = Scaled::new(m, e).to_string();
            let digits: String = s.chars().filter(|c| *c != '.').collect();
            prop_assert_eq!(digits.parse::<i128>().unwrap(), i128::from(m));
        }
    }
}
