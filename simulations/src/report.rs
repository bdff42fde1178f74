//! What a run is judged by: per-household and community KPIs, the CSV files and the
//! one-screen summary.
//!
//! Every figure written here is derived from integers the run produced; floats appear only in
//! formatted output, with a fixed number of decimals, so the same run gives the same bytes.

use crate::sim::{RunResult, local_time};
use std::fmt::Write as _;
use std::path::Path;

/// Community figures over the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Households.
    pub households: usize,
    /// Days simulated.
    pub days: f64,
    /// Consumed, kWh.
    pub consumed_kwh: f64,
    /// Produced, kWh.
    pub produced_kwh: f64,
    /// Self-sufficiency of the community (local production used locally / consumption).
    pub self_sufficiency: f64,
    /// Self-consumption of the community (local production used locally / production).
    pub self_consumption: f64,
    /// Traded locally, kWh.
    pub traded_kwh: f64,
    /// Average price buyers paid per kWh (fees included), currency.
    pub average_buy_price: Option<f64>,
    /// Average price sellers received per kWh, currency.
    pub average_sell_price: Option<f64>,
    /// Bill with the utility alone (negative: income), currency.
    pub utility_only_cost: f64,
    /// Bill with the community market, currency.
    pub actual_cost: f64,
    /// Savings, currency.
    pub savings: f64,
    /// Savings as a share of the utility-only bill (when it is a cost).
    pub savings_share: Option<f64>,
    /// Lowest and highest household savings, currency.
    pub savings_range: (f64, f64),
    /// Gini coefficient of household savings.
    pub savings_gini: Option<f64>,
    /// Grid fees collected, currency.
    pub fees: f64,
    /// Highest import through the transformer, kW.
    pub peak_import_kw: f64,
    /// Highest export through the transformer, kW (as a positive number).
    pub peak_export_kw: f64,
    /// Hours with any bus outside the voltage band.
    pub voltage_violation_hours: f64,
    /// Hours with any line or transformer above 100 %.
    pub loading_violation_hours: f64,
    /// Lowest voltage, p.u.
    pub v_min: f64,
    /// Highest voltage, p.u.
    pub v_max: f64,
    /// Highest line loading, %.
    pub max_line_loading: f64,
    /// Highest transformer loading, %.
    pub max_trafo_loading: f64,
}

#[allow(clippy::cast_precision_loss, reason = "display only")]
fn f(x: i128) -> f64 {
    x as f64
}

#[allow(clippy::cast_precision_loss, reason = "display only")]
fn fu(x: u128) -> f64 {
    x as f64
}

/// Gini coefficient of `values` by the mean absolute difference, `Σ|xi − xj| / (2 n² |mean|)`;
/// `None` when the mean is zero. With negative values (households that lose) it can exceed 1.
#[must_use]
pub fn gini(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if mean == 0.0 {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    // Σ_i Σ_j |xi − xj| = 2 Σ_i (2i − n + 1) x_(i) over the sorted values.
    let total: f64 = sorted
        .iter()
        .enumerate()
        .map(|(i, x)| (2.0 * i as f64 - n + 1.0) * x)
        .sum::<f64>()
        * 2.0;
    Some(total / (2.0 * n * n * mean.abs()))
}

impl RunResult {
    /// Token units → currency.
    fn money(&self, units: i128) -> f64 {
        f(units) / self.units_per_currency as f64
    }

    /// Each household's savings, currency, in household order.
    #[must_use]
    pub fn household_savings(&self) -> Vec<f64> {
        self.households
            .iter()
            .map(|h| {
                self.kpis
                    .household(h.account)
                    .map_or(0.0, |k| self.money(k.savings()))
            })
            .collect()
    }

    /// The community figures.
    #[must_use]
    pub fn summary(&self) -> Summary {
        let c = &self.kpis.community;
        let slot_h = f64::from(self.slot_s) / 3600.0;
        let savings = self.household_savings();
        let traded = self.kpis.traded_wh;
        let per_kwh = |amount: u128| {
            (traded > 0).then(|| fu(amount) * 1000.0 / fu(traded) / self.units_per_currency as f64)
        };
        let utility_only = self.money(c.utility_only_cost);
        let pf = self.power_flow;
        let fold = |g: fn(&crate::sim::SlotRecord) -> f64, init: f64, pick: fn(f64, f64) -> f64| {
            self.slots.iter().map(g).fold(init, pick)
        };
        Summary {
            households: self.households.len(),
            days: self.slots.len() as f64 * slot_h / 24.0,
            consumed_kwh: fu(c.consumed_wh) / 1000.0,
            produced_kwh: fu(c.produced_wh) / 1000.0,
            self_sufficiency: c.self_sufficiency().as_f64().unwrap_or(0.0),
            self_consumption: c.self_consumption().as_f64().unwrap_or(0.0),
            traded_kwh: fu(traded) / 1000.0,
            average_buy_price: per_kwh(self.kpis.buyers_paid),
            average_sell_price: per_kwh(self.sellers_received),
            utility_only_cost: utility_only,
            actual_cost: self.money(c.actual_cost),
            savings: self.money(c.savings()),
            savings_share: (utility_only > 0.0).then(|| self.money(c.savings()) / utility_only),
            savings_range: savings
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &s| {
                    (lo.min(s), hi.max(s))
                }),
            savings_gini: gini(&savings),
            fees: fu(self.kpis.fees_collected) / self.units_per_currency as f64,
            peak_import_kw: fold(|r| r.ext_grid_kw, 0.0, f64::max),
            peak_export_kw: -fold(|r| r.ext_grid_kw, 0.0, f64::min),
            voltage_violation_hours: self
                .slots
                .iter()
                .filter(|r| r.voltage_violations > 0)
                .count() as f64
                * slot_h,
            loading_violation_hours: self
                .slots
                .iter()
                .filter(|r| r.loading_violations > 0)
                .count() as f64
                * slot_h,
            v_min: if pf {
                fold(|r| r.v_min, f64::INFINITY, f64::min)
            } else {
                f64::NAN
            },
            v_max: if pf {
                fold(|r| r.v_max, f64::NEG_INFINITY, f64::max)
            } else {
                f64::NAN
            },
            max_line_loading: fold(|r| r.max_line_loading, 0.0, f64::max),
            max_trafo_loading: fold(|r| r.trafo_loading, 0.0, f64::max),
        }
    }

    /// `slots.csv`: one row per slot.
    #[must_use]
    pub fn slots_csv(&self) -> String {
        let mut out = String::from(
            "slot,time_cet,load_wh,pv_wh,import_wh,export_wh,traded_wh,clearing_price_per_kwh,average_price_per_kwh,retail_per_kwh,feed_in_per_kwh,fees,v_min_pu,v_max_pu,max_line_loading_pct,trafo_loading_pct,transformer_kw,voltage_violations,loading_violations\n",
        );
        let opt = |x: Option<u64>| x.map_or(String::new(), |v| v.to_string());
        for r in &self.slots {
            let t = self.epoch + i64::try_from(r.slot).unwrap_or(0) * i64::from(self.slot_s);
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.6},{:.3},{:.3},{:.3},{},{}",
                r.slot,
                local_time(t),
                r.load_wh,
                r.pv_wh,
                r.import_wh,
                r.export_wh,
                r.traded_wh,
                opt(r.clearing_price),
                opt(r.average_price),
                r.retail,
                r.feed_in,
                r.fees,
                r.v_min,
                r.v_max,
                r.max_line_loading,
                r.trafo_loading,
                r.ext_grid_kw,
                r.voltage_violations,
                r.loading_violations
            );
        }
        out
    }

    /// `households.csv`: one row per household.
    #[must_use]
    pub fn households_csv(&self) -> String {
        let mut out = format!(
            "household,bus,consumption_kwh,pv_kwh,import_kwh,export_kwh,self_sufficiency,self_consumption,bought_kwh,sold_kwh,avg_buy_price_per_kwh,avg_sell_price_per_kwh,utility_only_cost_{c},actual_cost_{c},savings_{c}\n",
            c = self.currency
        );
        let u = self.units_per_currency as f64;
        for h in &self.households {
            let Some(k) = self.kpis.household(h.account) else {
                continue;
            };
            let t = &h.totals;
            let price = |amount: u128, wh: u64| {
                if wh == 0 {
                    String::new()
                } else {
                    format!("{:.5}", fu(amount) * 1000.0 / fu(u128::from(wh)) / u)
                }
            };
            let _ = writeln!(
                out,
                "{},{},{:.3},{:.3},{:.3},{:.3},{:.4},{:.4},{:.3},{:.3},{},{},{:.2},{:.2},{:.2}",
                h.name,
                h.bus_id,
                fu(k.consumed_wh) / 1000.0,
                fu(k.produced_wh) / 1000.0,
                fu(u128::from(t.import_wh)) / 1000.0,
                fu(u128::from(t.export_wh)) / 1000.0,
                k.self_sufficiency().as_f64().unwrap_or(0.0),
                k.self_consumption().as_f64().unwrap_or(0.0),
                fu(u128::from(t.bought_wh)) / 1000.0,
                fu(u128::from(t.sold_wh)) / 1000.0,
                price(t.paid, t.bought_wh),
                price(t.received, t.sold_wh),
                self.money(k.utility_only_cost),
                self.money(k.actual_cost),
                self.money(k.savings()),
            );
        }
        out
    }

    /// The one-screen summary.
    #[must_use]
    pub fn summary_text(&self) -> String {
        let s = self.summary();
        let c = &self.currency;
        let mut o = String::new();
        let pct = |x: f64| format!("{:.1} %", x * 100.0);
        let price = |x: Option<f64>| x.map_or("-".to_owned(), |p| format!("{p:.4} {c}/kWh"));
        let _ = writeln!(
            o,
            "Scenario {:?}: {} households on grid {}, {:.0} days in {}-minute slots, seed {}",
            self.name,
            s.households,
            self.grid,
            s.days,
            self.slot_s / 60,
            self.seed
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Energy      consumed {:.0} kWh, produced {:.0} kWh, traded between neighbours {:.0} kWh",
            s.consumed_kwh, s.produced_kwh, s.traded_kwh
        );
        let _ = writeln!(
            o,
            "            self-sufficiency {}, self-consumption {}",
            pct(s.self_sufficiency),
            pct(s.self_consumption)
        );
        let _ = writeln!(
            o,
            "Prices      buyers paid {} (fees included), sellers received {}",
            price(s.average_buy_price),
            price(s.average_sell_price)
        );
        let _ = writeln!(
            o,
            "Money       utility-only bill {:.2} {c}, with the community market {:.2} {c}, grid fees {:.2} {c}",
            s.utility_only_cost, s.actual_cost, s.fees
        );
        let share = s
            .savings_share
            .map_or(String::new(), |x| format!(" ({})", pct(x)));
        let gini = s.savings_gini.map_or("-".to_owned(), |g| format!("{g:.3}"));
        let _ = writeln!(
            o,
            "Savings     the street saves {:.2} {c}{share}; per household {:.2} to {:.2} {c}, Gini {gini}",
            s.savings, s.savings_range.0, s.savings_range.1
        );
        let cost = self.settlement_cost.as_ref().map_or(String::new(), |cost| {
            let eth = fu(self.settlement_gas) * cost.gas_price_gwei * 1e-9;
            format!(
                ", {:.2} {c} at {} gwei and {} {c} per native token",
                eth * cost.native_token_price,
                cost.gas_price_gwei,
                cost.native_token_price
            )
        });
        let _ = writeln!(
            o,
            "Chain       {} settlement batches, {:.1} M gas{cost}",
            self.settlement_batches,
            fu(self.settlement_gas) / 1e6
        );
        let _ = writeln!(
            o,
            "Transformer peak import {:.1} kW, peak export {:.1} kW",
            s.peak_import_kw, s.peak_export_kw
        );
        if self.power_flow {
            let _ = writeln!(
                o,
                "Grid        voltage {:.4}..{:.4} p.u., max line loading {:.1} %, max transformer loading {:.1} %",
                s.v_min, s.v_max, s.max_line_loading, s.max_trafo_loading
            );
            let _ = writeln!(
                o,
                "            hours with voltage outside the band {:.2}, with an overloaded line or transformer {:.2}",
                s.voltage_violation_hours, s.loading_violation_hours
            );
        } else {
            let _ = writeln!(o, "Grid        power flow off (grid.power_flow = false)");
        }
        o
    }

    /// Writes `slots.csv`, `households.csv`, `summary.txt` and `report.html` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("slots.csv"), self.slots_csv())?;
        std::fs::write(dir.join("households.csv"), self.households_csv())?;
        std::fs::write(dir.join("summary.txt"), self.summary_text())?;
        std::fs::write(dir.join("report.html"), self.html_report())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn gini_of_equal_savings_is_zero_and_of_one_winner_is_near_one() {
        assert_eq!(gini(&[5.0, 5.0, 5.0]), Some(0.0));
        let g = gini(&[0.0, 0.0, 0.0, 10.0]).unwrap();
        assert!((g - 0.75).abs() < 1e-12, "{g}");
        assert_eq!(gini(&[1.0, -1.0]), None);
        assert_eq!(gini(&[]), None);
    }
}
