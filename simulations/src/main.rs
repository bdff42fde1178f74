//! `simulate`: run grid simulations from scenario files.
//!
//! `simulate run <scenario.toml>` runs a scenario and writes `slots.csv`, `households.csv`
//! and `summary.txt` to `simulate-out/<name>/`, printing the summary; `simulate example`
//! prints a commented scenario; `simulate check-grid <grid.json>` solves a grid file's base
//! case and compares it with the reference results it carries; `simulate roi <household.toml>`
//! answers "should I join?" for a household (`scenarios/household.toml`).

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gridshare_simulations::grid::{GridFile, PowerFlow};
use gridshare_simulations::scenario::{Scenario, example_at_repo_root};
use gridshare_simulations::{roi, sim, sweep};
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "simulate",
    version,
    about = "Grid simulations of a neighbourhood through the gridshare market"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario.
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// Output directory (default: simulate-out/<scenario name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Print nothing but errors.
        #[arg(long)]
        quiet: bool,
    },
    /// Run every combination of a sweep file's parameters (in parallel), one summary row each.
    Sweep {
        /// The sweep file.
        sweep: PathBuf,
        /// Run only shard i of n (0-based): the jobs whose index % n == i.
        #[arg(long, default_value = "0/1")]
        shard: String,
        /// Threads (default: all cores).
        #[arg(long, default_value_t = 0)]
        jobs: usize,
        /// Output directory (default: simulate-out/<sweep name>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Merge the CSV files of a sweep's shards into sweep.csv and sweep.html.
    Merge {
        /// Shard CSV files.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        /// Output directory.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Should I join? A household's return on investment, its year simulated in a
    /// neighbourhood and the token's price drawn along many paths.
    Roi {
        /// The household file (every key defaulted; see scenarios/household.toml).
        household: PathBuf,
        /// Output directory for roi.html and roi.json (default: simulate-out/roi-<file name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the answer as JSON (the engine's POST /api/v1/roi answer) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Print a commented example scenario (save it at the repository root).
    Example,
    /// Solve a grid file's base case; compare with its reference results if it has any.
    CheckGrid {
        /// The grid file.
        grid: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Example => {
            print!("{}", example_at_repo_root());
            Ok(())
        }
        Command::CheckGrid { grid } => check_grid(&grid),
        Command::Roi {
            household,
            out,
            json,
        } => roi(&household, out, json),
        Command::Sweep {
            sweep,
            shard,
            jobs,
            out,
        } => {
            let shard = sweep::parse_shard(&shard)?;
            let sw = sweep::Sweep::load(&sweep)?;
            let started = Instant::now();
            let csv = sw.run(shard, jobs)?;
            let dir = out.unwrap_or_else(|| PathBuf::from("simulate-out").join(&sw.file.name));
            std::fs::create_dir_all(&dir)?;
            let (file, html) = if shard.1 == 1 {
                ("sweep.csv".to_owned(), true)
            } else {
                (format!("sweep-shard-{}-of-{}.csv", shard.0, shard.1), false)
            };
            std::fs::write(dir.join(&file), &csv)?;
            if html {
                std::fs::write(
                    dir.join("sweep.html"),
                    sweep::html_table(&sw.file.name, &csv),
                )?;
            }
            println!(
                "{} jobs in {:.2} s; {}",
                csv.lines().count() - 1,
                started.elapsed().as_secs_f64(),
                dir.join(file).display()
            );
            Ok(())
        }
        Command::Merge { parts, out } => {
            let texts = parts
                .iter()
                .map(|p| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let csv = sweep::merge(&texts)?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("sweep.csv"), &csv)?;
            std::fs::write(out.join("sweep.html"), sweep::html_table("sweep", &csv))?;
            println!(
                "{} jobs merged into {}",
                csv.lines().count() - 1,
                out.join("sweep.csv").display()
            );
            Ok(())
        }
        Command::Run {
            scenario,
            out,
            seed,
            quiet,
        } => {
            let mut s = Scenario::load(&scenario)?;
            if let Some(seed) = seed {
                s.seed = seed;
            }
            let grid = GridFile::load(&s.resolve(&s.grid.file))?;
            let profiles = sim::load_profiles(&s)?;
            let started = Instant::now();
            let tty = std::io::stderr().is_terminal() && !quiet;
            let mut shown = false;
            let result = sim::run_with(&s, grid, &profiles, |done| {
                // A progress line only for runs longer than a second, and only on a terminal.
                if tty && started.elapsed().as_secs_f64() > 1.0 {
                    shown = true;
                    eprint!("\r{:5.1} % of {} ", done * 100.0, s.name);
                    let _ = std::io::stderr().flush();
                }
            })?;
            if shown {
                eprintln!();
            }
            let elapsed = started.elapsed();
            let dir = out.unwrap_or_else(|| PathBuf::from("simulate-out").join(&s.name));
            result
                .write(&dir)
                .with_context(|| format!("writing results to {}", dir.display()))?;
            if !quiet {
                print!("{}", result.summary_text());
                println!(
                    "\n{} slots in {:.2} s; results in {}/ (report.html, slots.csv, households.csv, summary.txt)",
                    result.slots.len(),
                    elapsed.as_secs_f64(),
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

fn roi(path: &std::path::Path, out: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let input = roi::RoiInput::from_toml(&text, &path.display().to_string())?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let started = Instant::now();
    let neighbourhood = roi::Neighbourhood::for_input(&input, Some(base))?;
    let energy = roi::energy::simulate(&neighbourhood, &input)?;
    let simulated = started.elapsed();
    let result = roi::project(&input, &energy, &roi::EmissionSchedule::deployed())?;
    let projected = started.elapsed() - simulated;
    let stem = path
        .file_stem()
        .map_or_else(|| "household".into(), |s| s.to_string_lossy().into_owned());
    let dir = out.unwrap_or_else(|| PathBuf::from("simulate-out").join(format!("roi-{stem}")));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let answer = serde_json::to_string_pretty(&result)?;
    std::fs::write(dir.join("roi.json"), &answer)?;
    std::fs::write(dir.join("roi.html"), result.html_report())?;
    if json {
        println!("{answer}");
    } else {
        print!("{}", result.table_text());
        println!(
            "\nThe year simulated three ways in {:.2} s, {} price paths projected in {:.0} ms; fan chart in {}/roi.html, every figure in roi.json",
            simulated.as_secs_f64(),
            input.token.paths,
            projected.as_secs_f64() * 1000.0,
            dir.display()
        );
    }
    Ok(())
}

fn check_grid(path: &std::path::Path) -> anyhow::Result<()> {
    let grid = GridFile::load(path)?;
    let reference = grid.reference.clone();
    let mut pf = PowerFlow::new(grid)?;
    pf.add_base_case();
    let it = pf.solve()?;
    let (lo, hi) = pf.voltage_range();
    println!(
        "{}: converged in {it} iterations; voltage {lo:.6}..{hi:.6} p.u., max line loading {:.4} %",
        path.display(),
        pf.max_line_loading_percent()
    );
    if let Some(r) = reference {
        let dv = r
            .bus_vm_pu
            .iter()
            .enumerate()
            .filter_map(|(i, w)| Some((w.as_ref()? - pf.bus_vm_pu(i)?).abs()))
            .fold(0.0, f64::max);
        let dl = r
            .line_loading_percent
            .iter()
            .enumerate()
            .map(|(i, w)| (w.unwrap_or(0.0) - pf.line_loading_percent(i).unwrap_or(0.0)).abs())
            .fold(0.0, f64::max);
        println!(
            "against {}: max |ΔVm| {dv:.2e} p.u., max |Δloading| {dl:.2e} %-points",
            r.tool
        );
        anyhow::ensure!(
            dv < 1e-6 && dl < 1e-4,
            "the power flow does not match the reference"
        );
    }
    Ok(())
}
