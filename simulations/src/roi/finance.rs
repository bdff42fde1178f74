//! The arithmetic of a stream of yearly cash flows: net present value, internal rate of return,
//! payback. Conventions are numpy-financial's: `cash_flows[0]` happens now (not discounted),
//! `cash_flows[t]` at the end of year `t`. `scripts/roi_fixtures.py` checks both functions
//! against `numpy_financial.npv` and `.irr` on random cash flows (`tests/it/roi.rs`).

/// Net present value of `cash_flows` at `rate` per period.
#[must_use]
pub fn npv(rate: f64, cash_flows: &[f64]) -> f64 {
    // Horner in the discount factor: one division, then multiply-adds.
    let x = 1.0 / (1.0 + rate);
    cash_flows.iter().rev().fold(0.0, |acc, c| acc * x + c)
}

/// NPV and its derivative with respect to the discount factor `x = 1 / (1 + rate)`.
fn npv_x(x: f64, cash_flows: &[f64]) -> (f64, f64) {
    let (mut f, mut df) = (0.0, 0.0);
    for c in cash_flows.iter().rev() {
        df = df * x + f;
        f = f * x + c;
    }
    (f, df)
}

/// Internal rate of return: the rate at which the NPV is zero, or `None` when there is none in
/// (−99.99 %, 10 000 %) — a stream that never turns positive (or never negative) has none.
///
/// Design: the NPV is a polynomial in `x = 1 / (1 + rate)`; on `x ∈ (1e-4, 1e4)` (rates from
/// 10 000 % down to −99.99 %) we bracket a sign change, then Newton from the bracket's side,
/// falling back to bisection whenever a step would leave the bracket. With one sign change in
/// the stream (an investment, then returns) the root is unique; with several, this finds the
/// one nearest rate 0 on the side where the stream's sign changes first, which for a battery
/// replacement in mid-life is the economically meaningful one.
#[must_use]
pub fn irr(cash_flows: &[f64]) -> Option<f64> {
    if cash_flows.len() < 2 || cash_flows.iter().any(|c| !c.is_finite()) {
        return None;
    }
    // Bracket around x = 1 (rate 0), widening outwards in both directions.
    let f1 = npv_x(1.0, cash_flows).0;
    if f1 == 0.0 {
        return Some(0.0);
    }
    let mut bracket = None;
    let (mut lo, mut flo) = (1.0, f1);
    let (mut hi, mut fhi) = (1.0, f1);
    for _ in 0..40 {
        // Rates above 0: x below 1.
        let x = lo * 0.8;
        if x >= 1e-4 {
            let f = npv_x(x, cash_flows).0;
            if f.signum() != flo.signum() {
                bracket = Some((x, f, lo, flo));
                break;
            }
            (lo, flo) = (x, f);
        }
        // Rates below 0: x above 1.
        let x = hi * 1.25;
        if x <= 1e4 {
            let f = npv_x(x, cash_flows).0;
            if f.signum() != fhi.signum() {
                bracket = Some((hi, fhi, x, f));
                break;
            }
            (hi, fhi) = (x, f);
        }
    }
    let (mut a, mut fa, mut b, _) = bracket?;
    let mut x = 0.5 * (a + b);
    for _ in 0..200 {
        let (f, df) = npv_x(x, cash_flows);
        if f == 0.0 {
            break;
        }
        if f.signum() == fa.signum() {
            (a, fa) = (x, f);
        } else {
            b = x;
        }
        let newton = x - f / df;
        let next = if df != 0.0 && newton > a.min(b) && newton < a.max(b) {
            newton
        } else {
            0.5 * (a + b)
        };
        if (next - x).abs() <= 1e-15 * x.abs() {
            x = next;
            break;
        }
        x = next;
    }
    let rate = 1.0 / x - 1.0;
    rate.is_finite().then_some(rate)
}

/// Years until the running sum of `cash_flows` (undiscounted, or discounted at `rate`) first
/// turns non-negative for good, interpolated within the year; `None` if it does not within the
/// stream.
#[must_use]
pub fn payback(cash_flows: &[f64], rate: Option<f64>) -> Option<f64> {
    let x = rate.map_or(1.0, |r| 1.0 / (1.0 + r));
    let mut factor = 1.0;
    let mut cumulative = 0.0;
    let mut paid_back: Option<f64> = None;
    for (t, c) in cash_flows.iter().enumerate() {
        let before = cumulative;
        let d = c * factor;
        cumulative += d;
        factor *= x;
        if cumulative >= 0.0 && paid_back.is_none() {
            paid_back = Some(if t == 0 || d <= 0.0 {
                t as f64
            } else {
                (t - 1) as f64 + (-before / d).clamp(0.0, 1.0)
            });
        } else if cumulative < 0.0 {
            // Later costs (a battery replacement) can sink it again: payback is when it stays.
            paid_back = None;
        }
    }
    paid_back
}

/// The `q`-quantile (0..=1) of sorted values, linear between neighbours (numpy's default).
#[must_use]
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "pos is in 0..n-1"
            )]
            let i = pos.floor() as usize;
            let j = (i + 1).min(n - 1);
            sorted[i] + (sorted[j] - sorted[i]) * (pos - i as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_without_a_sign_change_has_no_irr() {
        assert_eq!(irr(&[-100.0, -10.0, -1.0]), None);
        assert_eq!(irr(&[100.0, 10.0]), None);
        assert_eq!(irr(&[-100.0]), None);
    }

    #[test]
    fn payback_interpolates_and_waits_for_a_late_cost() {
        assert_eq!(payback(&[-100.0, 50.0, 50.0], None), Some(2.0));
        assert_eq!(payback(&[-100.0, 40.0, 40.0, 40.0], None), Some(2.5));
        // Paid back in year 2, sunk again by a cost in year 3, back for good in year 4.
        assert_eq!(payback(&[-100.0, 60.0, 60.0, -50.0, 60.0], None), Some(3.5));
        assert_eq!(payback(&[-100.0, 10.0], None), None);
        // Discounted at 10 %: 55 / 1.1 = 50, 66.55 / 1.21 = 55: the last 50 of 55 in year 2.
        let d = payback(&[-100.0, 55.0, 66.55], Some(0.1)).expect("paid back");
        assert!((d - (1.0 + 50.0 / 55.0)).abs() < 1e-12, "{d}");
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((quantile(&v, 0.5) - 2.5).abs() < 1e-12);
        assert!((quantile(&v, 0.1) - 1.3).abs() < 1e-12);
    }
}
