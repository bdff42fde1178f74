//! Parameter sweeps: one base scenario, a list of values per key, every combination run as an
//! independent job, one summary row per job.
//!
//! Jobs are numbered in a fixed order (keys sorted, the last key varying fastest), so
//! `--shard i/n` (jobs with `index % n == i`) splits a sweep across processes or machines —
//! a Slurm job array runs one shard per task — and `simulate merge` joins the shards' CSV files
//! into one table (CSV and HTML). Within a process, jobs run in parallel on all cores (rayon).

use crate::scenario::{Scenario, ScenarioError};
use crate::sim::{self, SimulationError};
use rayon::prelude::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A sweep file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// Name of the sweep (output file names).
    pub name: String,
    /// The base scenario, relative to the sweep file.
    pub base: PathBuf,
    /// Scenario keys (dotted, with `[i]` for list entries, e.g. `households[0].pv_kwp`) and
    /// the values each takes.
    pub parameters: BTreeMap<String, Vec<toml::Value>>,
}

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The sweep file could not be read or parsed.
    #[error("sweep {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A parameter key does not exist in the base scenario.
    #[error(
        "sweep parameter `{key}`: {reason}; give a key of the base scenario, e.g. \"market.grid_fee_per_kwh\" or \"households[0].pv_kwp\""
    )]
    Key {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A combination of values makes an invalid scenario.
    #[error("sweep job {job} ({values}): {source}")]
    Variant {
        /// Job index.
        job: usize,
        /// The parameter values.
        values: String,
        /// Why.
        source: ScenarioError,
    },
    /// A job's run failed.
    #[error("sweep job {job} ({values}): {source}")]
    Run {
        /// Job index.
        job: usize,
        /// The parameter values.
        values: String,
        /// Why.
        source: Box<SimulationError>,
    },
    /// A shard specification is invalid.
    #[error("--shard {0}: expected i/n with 0 <= i < n, e.g. 0/4 (Slurm: $SLURM_ARRAY_TASK_ID/4)")]
    Shard(String),
    /// Shard files do not fit together.
    #[error("merge: {0}")]
    Merge(String),
}

/// One job: its index and the values of each parameter.
#[derive(Debug, Clone)]
pub struct Job {
    /// Index in the sweep.
    pub index: usize,
    /// `(key, value)` per parameter, in key order.
    pub values: Vec<(String, toml::Value)>,
}

impl Job {
    fn label(&self) -> String {
        self.values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A loaded sweep.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The sweep file.
    pub file: SweepFile,
    base: toml::Table,
    base_dir: PathBuf,
    origin: String,
}

/// Parses `i/n`.
pub fn parse_shard(text: &str) -> Result<(usize, usize), SweepError> {
    let bad = || SweepError::Shard(text.to_owned());
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), SweepError> {
    let err = |reason: &str| SweepError::Key {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let segments: Vec<&str> = key.split('.').collect();
    let mut cur: &mut toml::Table = table;
    for (n, seg) in segments.iter().enumerate() {
        let last = n + 1 == segments.len();
        let (name, index) = match seg.split_once('[') {
            Some((name, rest)) => {
                let i: usize = rest
                    .strip_suffix(']')
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| err("a list index is written [0], [1], ..."))?;
                (name, Some(i))
            }
            None => (*seg, None),
        };
        match index {
            None if last => {
                cur.insert(name.to_owned(), value);
                return Ok(());
            }
            None => {
                cur = cur
                    .get_mut(name)
                    .and_then(toml::Value::as_table_mut)
                    .ok_or_else(|| err(&format!("the base scenario has no table `{name}`")))?;
            }
            Some(i) => {
                let list = cur
                    .get_mut(name)
                    .and_then(toml::Value::as_array_mut)
                    .ok_or_else(|| err(&format!("the base scenario has no list `{name}`")))?;
                let len = list.len();
                let item = list
                    .get_mut(i)
                    .ok_or_else(|| err(&format!("`{name}` has {len} entries")))?;
                if last {
                    *item = value;
                    return Ok(());
                }
                cur = item
                    .as_table_mut()
                    .ok_or_else(|| err(&format!("`{name}[{i}]` is not a table")))?;
            }
        }
    }
    Err(err("empty key"))
}

/// Summary columns of each job's row, after the job index and the parameters.
pub const SUMMARY_COLUMNS: &str = "households,consumed_kwh,produced_kwh,traded_kwh,self_sufficiency,self_consumption,avg_buy_price,avg_sell_price,utility_only_cost,actual_cost,savings,savings_share,savings_gini,fees,peak_import_kw,peak_export_kw,voltage_violation_hours,loading_violation_hours,v_min_pu,v_max_pu,max_line_loading_pct";

impl Sweep {
    /// Reads a sweep file and its base scenario.
    pub fn load(path: &Path) -> Result<Self, SweepError> {
        let origin = path.display().to_string();
        let file_err = |message: String| SweepError::File {
            path: origin.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let file: SweepFile = toml::from_str(&text).map_err(|e| file_err(e.to_string()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base_path = if file.base.is_absolute() {
            file.base.clone()
        } else {
            dir.join(&file.base)
        };
        let base_text = std::fs::read_to_string(&base_path)
            .map_err(|e| file_err(format!("base scenario {}: {e}", base_path.display())))?;
        let base: toml::Table = toml::from_str(&base_text)
            .map_err(|e| file_err(format!("base scenario {}: {e}", base_path.display())))?;
        for (k, v) in &file.parameters {
            if v.is_empty() {
                return Err(SweepError::Key {
                    key: k.clone(),
                    reason: "has no values".into(),
                });
            }
        }
        let sweep = Self {
            file,
            base,
            base_dir: base_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            origin: base_path.display().to_string(),
        };
        // Every key must exist and every job must be a valid scenario: fail before running.
        for job in sweep.jobs() {
            sweep.scenario(&job)?;
        }
        Ok(sweep)
    }

    /// Every job, in index order.
    #[must_use]
    pub fn jobs(&self) -> Vec<Job> {
        let params: Vec<(&String, &Vec<toml::Value>)> = self.file.parameters.iter().collect();
        let total: usize = params.iter().map(|(_, v)| v.len()).product();
        (0..total)
            .map(|index| {
                let mut rest = index;
                let mut values = vec![(String::new(), toml::Value::Boolean(false)); params.len()];
                for (slot, (k, v)) in values.iter_mut().zip(params.iter()).rev() {
                    *slot = ((*k).clone(), v[rest % v.len()].clone());
                    rest /= v.len();
                }
                Job { index, values }
            })
            .collect()
    }

    /// The scenario of one job.
    pub fn scenario(&self, job: &Job) -> Result<Scenario, SweepError> {
        let mut table = self.base.clone();
        for (k, v) in &job.values {
            set_path(&mut table, k, v.clone())?;
        }
        let name = format!("{}-{}", self.file.name, job.index);
        table.insert("name".into(), toml::Value::String(name));
        Scenario::from_table(table, &self.origin, self.base_dir.clone()).map_err(|source| {
            SweepError::Variant {
                job: job.index,
                values: job.label(),
                source,
            }
        })
    }

    /// The CSV header.
    #[must_use]
    pub fn header(&self) -> String {
        let keys: Vec<&str> = self.file.parameters.keys().map(String::as_str).collect();
        format!("job,{},{SUMMARY_COLUMNS}\n", keys.join(","))
    }

    /// Runs the jobs of shard `i` of `n` on `threads` threads (0: all cores); returns the CSV
    /// (header and one row per job, in job order).
    pub fn run(&self, shard: (usize, usize), threads: usize) -> Result<String, SweepError> {
        let jobs: Vec<Job> = self
            .jobs()
            .into_iter()
            .filter(|j| j.index % shard.1 == shard.0)
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| SweepError::Shard(e.to_string()))?;
        let rows: Vec<Result<String, SweepError>> = pool.install(|| {
            jobs.par_iter()
                .map(|job| {
                    let s = self.scenario(job)?;
                    let r = sim::run(&s).map_err(|source| SweepError::Run {
                        job: job.index,
                        values: job.label(),
                        source: Box::new(source),
                    })?;
                    Ok(row(job, &r))
                })
                .collect()
        });
        let mut out = self.header();
        for r in rows {
            out.push_str(&r?);
        }
        Ok(out)
    }
}

fn csv_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.replace(',', ";"),
        other => other.to_string().replace(',', ";"),
    }
}

fn row(job: &Job, r: &sim::RunResult) -> String {
    let s = r.summary();
    let opt = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.5}"));
    let mut line = job.index.to_string();
    for (_, v) in &job.values {
        line.push(',');
        line.push_str(&csv_value(v));
    }
    let _ = writeln!(
        line,
        ",{},{:.3},{:.3},{:.3},{:.5},{:.5},{},{},{:.2},{:.2},{:.2},{},{},{:.2},{:.3},{:.3},{:.2},{:.2},{:.6},{:.6},{:.3}",
        s.households,
        s.consumed_kwh,
        s.produced_kwh,
        s.traded_kwh,
        s.self_sufficiency,
        s.self_consumption,
        opt(s.average_buy_price),
        opt(s.average_sell_price),
        s.utility_only_cost,
        s.actual_cost,
        s.savings,
        opt(s.savings_share),
        opt(s.savings_gini),
        s.fees,
        s.peak_import_kw,
        s.peak_export_kw,
        s.voltage_violation_hours,
        s.loading_violation_hours,
        s.v_min,
        s.v_max,
        s.max_line_loading
    );
    line
}

/// Joins shard CSV files: one header, rows sorted by job, no job twice.
pub fn merge(parts: &[String]) -> Result<String, SweepError> {
    let mut header: Option<&str> = None;
    let mut rows: BTreeMap<usize, &str> = BTreeMap::new();
    for (p, text) in parts.iter().enumerate() {
        let mut lines = text.lines();
        let h = lines
            .next()
            .ok_or_else(|| SweepError::Merge(format!("part {p} is empty")))?;
        match header {
            None => header = Some(h),
            Some(first) if first != h => {
                return Err(SweepError::Merge(format!(
                    "part {p} has other columns than part 0; merge shards of one sweep"
                )));
            }
            Some(_) => {}
        }
        for line in lines.filter(|l| !l.is_empty()) {
            let job: usize = line
                .split(',')
                .next()
                .and_then(|j| j.parse().ok())
                .ok_or_else(|| {
                    SweepError::Merge(format!("part {p}: a row without a job index: {line}"))
                })?;
            if rows.insert(job, line).is_some() {
                return Err(SweepError::Merge(format!("job {job} appears twice")));
            }
        }
    }
    let mut out = format!("{}\n", header.unwrap_or_default());
    for line in rows.values() {
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// A merged sweep CSV as an HTML table.
#[must_use]
pub fn html_table(name: &str, csv: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut rows = String::new();
    for (i, line) in csv.lines().enumerate() {
        let tag = if i == 0 { "th" } else { "td" };
        rows.push_str("<tr>");
        for c in line.split(',') {
            let _ = write!(rows, "<{tag}>{}</{tag}>", esc(c));
        }
        rows.push_str("</tr>\n");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{n} — sweep</title>\n<style>body{{font-family:system-ui,sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:12px}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} th{{background:#eee}}</style></head>\n<body><h1>{n}</h1><table>\n{rows}</table></body></html>\n",
        n = esc(name)
    )
}
