//! Network token amounts: 18 decimals on chain, decimal text for people.

use alloy::primitives::U256;

/// Decimals of the network token.
pub const DECIMALS: usize = 18;

/// Parses "150", "150.5" or "0.000000000000000001" into token units; refuses anything else
/// (negative, more than 18 decimals, empty, not a number) with the reason.
pub fn parse_tokens(text: &str) -> Result<U256, String> {
    let t = text.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(frac.is_empty() || digits(frac)) {
        return Err(format!(
            "`{text}` is not an amount of tokens (write e.g. 150 or 0.5)"
        ));
    }
    if frac.len() > DECIMALS {
        return Err(format!(
            "`{text}` has more than {DECIMALS} decimals, the token's smallest unit"
        ));
    }
    let scale = U256::from(10u64).pow(U256::from(DECIMALS));
    let whole: U256 = whole
        .parse()
        .map_err(|e| format!("`{text}` is too large: {e}"))?;
    let padded = format!("{frac:0<DECIMALS$}");
    let frac: U256 = padded.parse().map_err(|e| format!("`{text}`: {e}"))?;
    whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Formats token units as a decimal number of tokens, without trailing zeros.
pub fn format_tokens(units: U256) -> String {
    let scale = U256::from(10u64).pow(U256::from(DECIMALS));
    let whole = units / scale;
    let frac = units % scale;
    if frac.is_zero() {
        return whole.to_string();
    }
    let frac = format!("{frac:0>DECIMALS$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amounts_parse_and_refuse_with_a_reason() {
        assert_eq!(
            parse_tokens("150").expect("ok"),
            U256::from(150u64) * U256::from(10u64).pow(U256::from(18u64))
        );
        assert_eq!(
            parse_tokens("0.5").expect("ok"),
            U256::from(5u64) * U256::from(10u64).pow(U256::from(17u64))
        );
        for bad in [
            "",
            "-1",
            "1.2.3",
            "abc",
            "1e5",
            "0.0000000000000000001",
            ".",
        ] {
            assert!(parse_tokens(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(units in any::<u128>()) {
            let u = U256::from(units);
            prop_assert_eq!(parse_tokens(&format_tokens(u)).expect("parses"), u);
        }
    }
}
