//! "Should I join?": the projection of an already simulated year over 10 000 token price paths
//! of 25 years (cash flows, NPV, IRR, payback and discounted payback per path, the fan's
//! quantiles, stress scenarios), on one core. The energy year is simulated once, outside the
//! timed part: the engine caches it per household, so this is what a slider move costs.

use criterion::{Criterion, criterion_group, criterion_main};
use gridshare_simulations::roi::{self, EmissionSchedule, Neighbourhood, PriceModel, RoiInput};
use std::hint::black_box;
use std::time::Duration;

fn projection(c: &mut Criterion) {
    let input = RoiInput::default();
    assert_eq!(
        (input.token.paths, input.finance.lifetime_years),
        (10_000, 25)
    );
    let street = Neighbourhood::shipped("our-street").expect("shipped neighbourhood");
    let energy = roi::energy::simulate(&street, &input).expect("energy year");
    let emission = EmissionSchedule::deployed();
    let mut g = c.benchmark_group("roi");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.bench_function("gbm_10000_paths_25_years", |b| {
        b.iter(|| {
            black_box(
                roi::project(&input, &energy, &emission)
                    .expect("projection")
                    .npv,
            )
        });
    });
    let mut boot = input.clone();
    boot.token.model = PriceModel::Bootstrap;
    boot.token.history = (0..60)
        .map(|i| 0.05 * (1.0 + 0.3 * (f64::from(i) * 0.7).sin()))
        .collect();
    g.bench_function("bootstrap_monthly_10000_paths_25_years", |b| {
        b.iter(|| {
            black_box(
                roi::project(&boot, &energy, &emission)
                    .expect("projection")
                    .npv,
            )
        });
    });
    g.finish();
    let mut one = c.benchmark_group("roi_energy");
    one.sample_size(10)
        .measurement_time(Duration::from_secs(20));
    one.bench_function("our_street_year_three_ways", |b| {
        b.iter(|| black_box(roi::energy::simulate(&street, &input).expect("energy year")));
    });
    one.finish();
}

criterion_group!(benches, projection);
criterion_main!(benches);
