//! The calculator's answer for people: a table for the terminal and a self-contained HTML
//! report with the fan chart of cumulative cash flow (uPlot, inlined like the run report).

use super::{MaybeSpread, RoiResult};
use crate::html::{UPLOT_CSS, UPLOT_JS, escape};
use std::fmt::Write as _;

fn money(v: f64) -> String {
    // Whole currency units with thin grouping: "−12 345".
    let r = v.round();
    let digits = format!("{:.0}", r.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    if r < 0.0 { format!("−{out}") } else { out }
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "none".into(), |v| format!("{:.1} %", v * 100.0))
}

fn years(v: Option<f64>) -> String {
    v.map_or_else(|| "never".into(), |v| format!("{v:.1} y"))
}

fn row3(out: &mut String, label: &str, s: &MaybeSpread, f: fn(Option<f64>) -> String) {
    let _ = writeln!(
        out,
        "  {label:<26} {:>12} {:>12} {:>12}",
        f(s.p10),
        f(s.p50),
        f(s.p90)
    );
}

impl RoiResult {
    /// The answer as a terminal table.
    #[must_use]
    pub fn table_text(&self) -> String {
        let c = &self.currency;
        let i = &self.input;
        let y = &self.year_one;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Should I join? {} kWh/a, {} kWp PV, {} kWh battery in {} ({} homes), {} years at {:.1} %",
            i.annual_kwh,
            i.pv_kwp,
            i.battery_kwh,
            self.energy.neighbourhood,
            self.energy.households,
            i.finance.lifetime_years,
            i.finance.discount_rate * 100.0
        );
        let _ = writeln!(
            out,
            "Paid now: {} {c} (hardware {} {c}, stake {} tokens at {} {c})",
            money(self.investment),
            money(self.investment - self.stake_tokens * i.token.price),
            self.stake_tokens,
            i.token.price
        );
        let _ = writeln!(
            out,
            "Year 1: saves {} {c} against buying everything at retail (PV alone: {}, with the battery but no trading: {}; joining adds {}), plus {:.0} reward tokens ({} {c} at today's price)\n",
            money(y.saving),
            money(y.saving_baseline),
            money(y.saving_solo),
            money(y.joining_adds),
            y.reward_tokens,
            money(y.rewards_at_todays_price)
        );
        let _ = writeln!(
            out,
            "  {:<26} {:>12} {:>12} {:>12}",
            format!("{} token price paths", i.token.paths),
            "P10",
            "P50",
            "P90"
        );
        let _ = writeln!(
            out,
            "  {:<26} {:>12} {:>12} {:>12}",
            format!("NPV, {c}"),
            money(self.npv.p10),
            money(self.npv.p50),
            money(self.npv.p90)
        );
        row3(&mut out, "IRR", &self.irr, percent);
        row3(&mut out, "payback", &self.payback_years, years);
        row3(
            &mut out,
            "discounted payback",
            &self.discounted_payback_years,
            years,
        );
        let _ = writeln!(
            out,
            "  (P10: 90 % of paths do better; a loss on {:.1} % of paths)\n",
            self.probability_of_loss * 100.0
        );
        let _ = writeln!(
            out,
            "Break-even token price: {}",
            match self.break_even_token_price {
                Some(0.0) => "none needed: it pays with a worthless token".to_owned(),
                Some(p) => format!("{p:.4} {c} (today {} {c})", i.token.price),
                None => "no token price makes it pay".to_owned(),
            }
        );
        let s = &self.split;
        let _ = writeln!(
            out,
            "\nWhere the return comes from (present value, token at today's price), {c}:"
        );
        for (label, v) in [
            ("own use of own energy", s.own_use),
            ("local sales and purchases", s.local_trading),
            ("feed-in", s.feed_in),
            ("token rewards", s.token_rewards),
            ("stake (back at the end less now)", s.stake),
            ("hardware and running costs", s.costs),
        ] {
            let _ = writeln!(out, "  {label:<34} {:>12}", money(v));
        }
        let _ = writeln!(
            out,
            "  token rewards are {:.1} % of the return\n\nStress scenarios:",
            s.token_share * 100.0
        );
        let _ = writeln!(
            out,
            "  {:<18} {:>12} {:>10} {:>10}",
            "",
            format!("NPV, {c}"),
            "IRR",
            "payback"
        );
        for st in &self.stress {
            let _ = writeln!(
                out,
                "  {:<18} {:>12} {:>10} {:>10}  {}",
                st.id,
                money(st.npv),
                percent(st.irr),
                years(st.payback_years),
                st.name
            );
        }
        let _ = writeln!(
            out,
            "\nEmission and stake from {}: {} tokens a {} s epoch, halving every {} epochs, minimum stake {} tokens.",
            self.emission.source,
            self.emission.initial_tokens_per_epoch,
            self.emission.epoch_s,
            self.emission.halving_epochs,
            self.emission.min_stake_tokens
        );
        out
    }

    /// The answer as one HTML document with the fan chart.
    #[must_use]
    pub fn html_report(&self) -> String {
        let data = serde_json::to_string(&self.fan).unwrap_or_else(|_| "null".into());
        let stress = serde_json::to_string(&self.stress).unwrap_or_else(|_| "[]".into());
        let table = escape(&self.table_text());
        let currency = escape(&self.currency);
        format!(
            r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Should I join? — gridshare</title>
<style>{UPLOT_CSS}
body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px}} pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body>
<h1>Should I join?</h1>
<h2>Cumulative cash flow, {currency}</h2><div id="fan"></div>
<pre id="table">{table}</pre>
<script>{UPLOT_JS}</script>
<script>
const f = {data}, stress = {stress};
const w = Math.min(1080, window.innerWidth - 40);
const series = [{{label: "year"}},
  {{label: "P10", stroke: "#9ecae1"}}, {{label: "P25", stroke: "#4292c6"}},
  {{label: "median", stroke: "#08519c", width: 2}},
  {{label: "P75", stroke: "#4292c6"}}, {{label: "P90", stroke: "#9ecae1"}}];
const ys = [f.p10, f.p25, f.p50, f.p75, f.p90];
for (const s of stress) {{ series.push({{label: s.id, stroke: "#d62728", dash: [4, 4]}}); ys.push(s.cumulative); }}
new uPlot({{title: "Cumulative cash flow over the token price paths", width: w, height: 360,
  scales: {{x: {{time: false}}}}, axes: [{{label: "year"}}, {{label: "{currency}"}}], series,
  bands: [{{series: [5, 1], fill: "rgba(33,113,181,0.12)"}}, {{series: [4, 2], fill: "rgba(33,113,181,0.22)"}}]}},
  [f.years].concat(ys), document.getElementById("fan"));
</script></body></html>
"##
        )
    }
}
