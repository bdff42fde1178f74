//! The self-contained HTML report: prices against tariffs, energy flows, the voltage band over
//! time, loading duration curves and the per-household KPI table, drawn with uPlot (inlined,
//! see `assets/README.md`), so the file opens offline in any browser.

use crate::sim::RunResult;
use serde_json::json;
use std::fmt::Write as _;

pub(crate) const UPLOT_JS: &str = include_str!("../assets/uPlot.iife.min.js");
pub(crate) const UPLOT_CSS: &str = include_str!("../assets/uPlot.min.css");

/// Points per time series at most; slots are grouped into buckets to stay below.
const MAX_POINTS: usize = 800;
/// Points of each loading duration curve.
const DURATION_POINTS: usize = 400;

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Rounds for the report: four decimals keep the file small and deterministic.
fn r4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

#[allow(clippy::cast_precision_loss, reason = "display only")]
fn fl(x: u64) -> f64 {
    x as f64
}

impl RunResult {
    /// The report as one HTML document.
    #[must_use]
    pub fn html_report(&self) -> String {
        let n = self.slots.len();
        // Buckets of whole fractions of a day (or whole days) keep the time axis readable.
        let per_day = (86_400 / self.slot_s.max(1)) as usize;
        let want = n.div_ceil(MAX_POINTS).max(1);
        let bucket = if want > per_day {
            want.div_ceil(per_day) * per_day
        } else {
            (want..=per_day)
                .find(|b| per_day.is_multiple_of(*b))
                .unwrap_or(per_day)
        };
        let units = self.units_per_currency as f64;
        let (mut t, mut load, mut pv, mut imp, mut exp, mut traded) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut price, mut retail, mut feed_in, mut vmin, mut vmax) =
            (vec![], vec![], vec![], vec![], vec![]);
        for chunk in self.slots.chunks(bucket) {
            let first = chunk[0].slot;
            t.push(self.epoch + i64::try_from(first).unwrap_or(0) * i64::from(self.slot_s));
            let sum = |f: fn(&crate::sim::SlotRecord) -> u64| {
                r4(fl(chunk.iter().map(f).sum::<u64>()) / 1000.0)
            };
            load.push(sum(|r| r.load_wh));
            pv.push(sum(|r| r.pv_wh));
            imp.push(sum(|r| r.import_wh));
            exp.push(sum(|r| r.export_wh));
            traded.push(sum(|r| r.traded_wh));
            let (paid, wh) = chunk
                .iter()
                .fold((0.0, 0.0), |(p, w), r| match r.average_price {
                    Some(a) => (p + fl(a) * fl(r.traded_wh), w + fl(r.traded_wh)),
                    None => (p, w),
                });
            price.push((wh > 0.0).then(|| r4(paid / wh / units)));
            let len = chunk.len() as f64;
            retail.push(r4(chunk.iter().map(|r| fl(r.retail)).sum::<f64>()
                / len
                / units));
            feed_in.push(r4(chunk.iter().map(|r| fl(r.feed_in)).sum::<f64>()
                / len
                / units));
            vmin.push(r4(chunk
                .iter()
                .map(|r| r.v_min)
                .fold(f64::INFINITY, f64::min)));
            vmax.push(r4(chunk
                .iter()
                .map(|r| r.v_max)
                .fold(f64::NEG_INFINITY, f64::max)));
        }
        let duration = |f: fn(&crate::sim::SlotRecord) -> f64| {
            let mut v: Vec<f64> = self.slots.iter().map(f).collect();
            v.sort_by(|a, b| b.total_cmp(a));
            let step = v.len().div_ceil(DURATION_POINTS).max(1);
            v.iter().step_by(step).map(|x| r4(*x)).collect::<Vec<_>>()
        };
        let line_dur = duration(|r| r.max_line_loading);
        let trafo_dur = duration(|r| r.trafo_loading);
        let hours: Vec<f64> = (0..line_dur.len())
            .map(|i| {
                r4(i as f64 * n as f64 / line_dur.len() as f64 * f64::from(self.slot_s) / 3600.0)
            })
            .collect();
        let data = json!({
            "currency": self.currency,
            "bucket_hours": bucket as f64 * f64::from(self.slot_s) / 3600.0,
            "power_flow": self.power_flow,
            "t": t, "load": load, "pv": pv, "import": imp, "export": exp, "traded": traded,
            "price": price, "retail": retail, "feed_in": feed_in, "vmin": vmin, "vmax": vmax,
            "dur_h": hours, "dur_line": line_dur, "dur_trafo": trafo_dur,
        });
        let mut table = String::new();
        for line in self.households_csv().lines() {
            let cells: Vec<&str> = line.split(',').collect();
            let tag = if table.is_empty() { "th" } else { "td" };
            table.push_str("<tr>");
            for c in cells {
                let _ = write!(table, "<{tag}>{}</{tag}>", escape(c));
            }
            table.push_str("</tr>\n");
        }
        let summary = escape(&self.summary_text());
        let title = escape(&self.name);
        format!(
            r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} — gridshare simulation</title>
<style>{UPLOT_CSS}
body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px}} pre{{background:#f6f6f6;padding:1em;overflow:auto}}
table{{border-collapse:collapse;font-size:12px}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} th{{background:#eee}}
h2{{margin-top:1.5em}}</style></head><body>
<h1>{title}</h1>
<pre id="summary">{summary}</pre>
<h2>Prices against tariffs</h2><div id="prices"></div>
<h2>Energy flows</h2><div id="energy"></div>
<h2>Voltage band</h2><div id="voltage"></div>
<h2>Loading duration</h2><div id="duration"></div>
<h2>Households</h2><table id="households">{table}</table>
<script>{UPLOT_JS}</script>
<script>
const d = {data};
const w = Math.min(1080, window.innerWidth - 40);
const cur = d.currency + "/kWh", kwh = "kWh per " + d.bucket_hours + " h";
function plot(id, title, x, series, ys, yLabel, time) {{
  new uPlot({{title, width: w, height: 300, scales: {{x: {{time}}}},
    axes: [{{}}, {{label: yLabel}}],
    series: [{{label: time ? "time" : "hours"}}].concat(series)}},
    [x].concat(ys), document.getElementById(id));
}}
plot("prices", "Average local price and the tariffs", d.t, [
  {{label: "local price", stroke: "#1f77b4", width: 2, spanGaps: false}},
  {{label: "retail", stroke: "#d62728"}}, {{label: "feed-in", stroke: "#2ca02c"}}],
  [d.price, d.retail, d.feed_in], cur, true);
plot("energy", "Energy", d.t, [
  {{label: "load", stroke: "#444"}}, {{label: "PV", stroke: "#ff7f0e"}},
  {{label: "import", stroke: "#d62728"}}, {{label: "export", stroke: "#2ca02c"}},
  {{label: "traded locally", stroke: "#1f77b4", width: 2}}],
  [d.load, d.pv, d.import, d.export, d.traded], kwh, true);
if (d.power_flow) {{
  plot("voltage", "Lowest and highest bus voltage", d.t, [
    {{label: "v min", stroke: "#1f77b4"}}, {{label: "v max", stroke: "#d62728"}}],
    [d.vmin, d.vmax], "p.u.", true);
  plot("duration", "Hours at or above each loading", d.dur_h, [
    {{label: "highest line loading %", stroke: "#1f77b4"}},
    {{label: "transformer loading %", stroke: "#ff7f0e"}}],
    [d.dur_line, d.dur_trafo], "%", false);
}} else {{
  document.getElementById("voltage").textContent = "power flow off";
}}
</script></body></html>
"##
        )
    }
}
