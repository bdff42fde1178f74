//! One simulated year, market and power flow, on one core.
//!
//! - `simbench_year`: SimBench 1-LV-semiurb5--0-sw (111 buses, 104 households, 9 PV) with its
//!   own 2016 profiles, 35 136 quarter-hours, every slot through the call auction, settled,
//!   and a power flow (the shipped `scenarios/simbench-semiurb5.toml`);
//! - `power_flow_year`: the same year's power flows alone, for the ratio against
//!   power-grid-model's and pandapower's (`scripts/bench_reference.py`).
//!
//! Files are read once, outside the timed part.

use criterion::{Criterion, criterion_group, criterion_main};
use gridshare_simulations::grid::{GridFile, PowerFlow};
use gridshare_simulations::scenario::Scenario;
use gridshare_simulations::sim;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

fn scenario() -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/simbench-semiurb5.toml");
    Scenario::load(&path).expect("shipped scenario")
}

fn simbench_year(c: &mut Criterion) {
    let s = scenario();
    let grid = GridFile::load(&s.resolve(&s.grid.file)).expect("grid");
    let profiles = sim::load_profiles(&s).expect("profiles");
    let mut g = c.benchmark_group("year");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("simbench_year", |b| {
        b.iter(|| {
            let r = sim::run_with(&s, grid.clone(), &profiles, |_| {}).expect("run");
            black_box(r.kpis.traded_wh)
        });
    });
    // The power flows of the same year, loads from the grid's profiles.
    let pload: Vec<(usize, usize, usize, f64, f64)> = grid
        .loads
        .iter()
        .filter_map(|l| {
            let p = l.profile.as_deref()?;
            let bus = grid.buses.iter().position(|b| b.id == l.bus)?;
            let pi = profiles
                .names()
                .iter()
                .position(|n| *n == format!("{p}_pload"))?;
            let qi = profiles
                .names()
                .iter()
                .position(|n| *n == format!("{p}_qload"))?;
            Some((bus, pi, qi, l.p_mw, l.q_mvar))
        })
        .collect();
    let sgen: Vec<(usize, usize, f64)> = grid
        .sgens
        .iter()
        .filter_map(|e| {
            let p = e.profile.as_deref()?;
            let bus = grid.buses.iter().position(|b| b.id == e.bus)?;
            let pi = profiles.names().iter().position(|n| n == p)?;
            Some((bus, pi, e.p_mw))
        })
        .collect();
    let mut pf = PowerFlow::new(grid.clone()).expect("grid compiles");
    g.bench_function("power_flow_year", |b| {
        b.iter(|| {
            let mut worst = 2.0f64;
            for t in 0..profiles.len() {
                pf.clear_loads();
                for &(bus, pi, qi, p, q) in &pload {
                    pf.add_load(
                        bus,
                        p * profiles.column_at(pi)[t],
                        q * profiles.column_at(qi)[t],
                    );
                }
                for &(bus, pi, p) in &sgen {
                    pf.add_load(bus, -p * profiles.column_at(pi)[t], 0.0);
                }
                pf.solve().expect("converges");
                worst = worst.min(pf.voltage_range().0);
            }
            black_box(worst)
        });
    });
    g.finish();
}

criterion_group!(benches, simbench_year);
criterion_main!(benches);
