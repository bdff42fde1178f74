//! "Should I join?": the arithmetic against numpy-financial, the worked example of the README,
//! the household's simulated year, and the projection's answers.

use gridshare_simulations::roi::{
    self, EmissionSchedule, EnergyYear, Neighbourhood, PriceModel, RoiInput, finance,
};
use std::sync::OnceLock;

#[derive(serde::Deserialize)]
struct Fixtures {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    cash_flows: Vec<f64>,
    npv: Vec<RateNpv>,
    irr: Option<f64>,
}

#[derive(serde::Deserialize)]
struct RateNpv {
    rate: f64,
    npv: f64,
}

#[test]
fn npv_and_irr_match_numpy_financial() {
    let text = include_str!("../fixtures/roi_npv_irr.json");
    let fixtures: Fixtures = serde_json::from_str(text).unwrap();
    assert!(fixtures.cases.len() > 200);
    let mut with_irr = 0;
    for (i, c) in fixtures.cases.iter().enumerate() {
        let scale = c.cash_flows.iter().map(|v| v.abs()).sum::<f64>();
        for r in &c.npv {
            let ours = finance::npv(r.rate, &c.cash_flows);
            assert!(
                (ours - r.npv).abs() <= 1e-9 * scale,
                "case {i} rate {}: {ours} against numpy-financial's {}",
                r.rate,
                r.npv
            );
        }
        let ours = finance::irr(&c.cash_flows);
        match (ours, c.irr) {
            (Some(a), Some(b)) => {
                with_irr += 1;
                assert!(
                    (a - b).abs() <= 1e-8 * (1.0 + b.abs()),
                    "case {i}: irr {a} against numpy-financial's {b}"
                );
            }
            (None, None) => {}
            (a, b) => panic!("case {i}: irr {a:?} against numpy-financial's {b:?}"),
        }
    }
    assert!(with_irr > 150, "{with_irr}");
}

/// The worked example of `simulations/README.md`, which a reader can redo by hand.
#[test]
fn the_worked_example_of_the_readme() {
    let flows = [-1000.0, 300.0, 400.0, 500.0];
    let npv = finance::npv(0.1, &flows);
    // −1000 + 300/1.1 + 400/1.21 + 500/1.331 = −1000 + 272.73 + 330.58 + 375.66 = −21.04
    assert!((npv - -21.036_814).abs() < 1e-6, "{npv}");
    let irr = finance::irr(&flows).unwrap();
    assert!((irr - 0.088_963).abs() < 1e-6, "{irr}");
    assert!((finance::npv(irr, &flows)).abs() < 1e-9);
    // Cumulative −1000, −700, −300, +200: paid back 300/500 into year 3.
    assert!((finance::payback(&flows, None).unwrap() - 2.6).abs() < 1e-12);
}

fn street() -> &'static Neighbourhood {
    static N: OnceLock<Neighbourhood> = OnceLock::new();
    N.get_or_init(|| Neighbourhood::shipped("our-street").unwrap())
}

/// The default household's year, simulated once for every test here (debug builds are slow).
fn year() -> &'static EnergyYear {
    static Y: OnceLock<EnergyYear> = OnceLock::new();
    Y.get_or_init(|| roi::energy::simulate(street(), &RoiInput::default()).unwrap())
}

#[test]
fn the_households_year_comes_from_the_market_three_ways() {
    let e = year();
    let (j, s, b) = (&e.joined, &e.solo, &e.baseline);
    assert_eq!(e.households, 15, "the street's 14 homes and the household");
    // The same home and weather in all three.
    assert_eq!((j.load_wh, j.pv_wh), (s.load_wh, s.pv_wh));
    assert_eq!((j.load_wh, j.pv_wh), (b.load_wh, b.pv_wh));
    assert_eq!(j.without_anything, b.without_anything);
    assert!(
        (3_900_000..=4_100_000).contains(&j.load_wh),
        "{}",
        j.load_wh
    );
    // Only the joined household trades; the battery cuts imports.
    assert!(j.sold_wh > 0 && j.bought_wh > 0, "{j:?}");
    assert_eq!(
        (s.sold_wh, s.bought_wh, b.sold_wh, b.bought_wh),
        (0, 0, 0, 0)
    );
    assert!(s.import_wh < b.import_wh && s.own_use > b.own_use);
    // Local trades pay more than feed-in and cost less than retail: joining beats both.
    assert!(j.local_trading > 0 && j.saving() > s.saving() && s.saving() > b.saving());
    for y in [j, s, b] {
        assert_eq!(y.own_use + y.local_trading + y.feed_in, y.saving());
        assert!(y.feed_in >= 0 && y.net_export_days_wh > 0, "{y:?}");
    }
    // Without trading, feed-in is every exported kWh at the 8 000 units/kWh tariff.
    let at_tariff = i64::try_from(b.export_wh * 8_000 / 1000).unwrap();
    assert!(
        (b.feed_in - at_tariff).abs() <= 35_040,
        "{} vs {at_tariff}",
        b.feed_in
    );
}

fn project(input: &RoiInput) -> roi::RoiResult {
    roi::project(input, year(), &EmissionSchedule::deployed()).unwrap()
}

#[test]
fn the_projection_is_seeded_and_its_spread_comes_from_the_token() {
    let base = RoiInput::default();
    let a = project(&base);
    assert_eq!(a, project(&base), "same seed, same answer");
    let mut other = base.clone();
    other.token.seed = 2;
    assert_ne!(a.npv, project(&other).npv);
    assert!(
        a.npv.p10 < a.npv.p50 && a.npv.p50 < a.npv.p90,
        "{:?}",
        a.npv
    );
    assert_eq!(a.fan.years.len(), 26);
    assert!(
        a.fan.p10[0] < 0.0 && a.fan.p10[0] == a.fan.p90[0],
        "all paths start alike"
    );
    // Year one's money is the simulated year's.
    assert!((a.year_one.saving * 100_000.0 - year().joined.saving() as f64).abs() < 1e-6);
    // No volatility and no drift: every path is today's price, the "flat" stress scenario.
    let mut still = base.clone();
    still.token.volatility = 0.0;
    let s = project(&still);
    let flat = s.stress.iter().find(|x| x.id == "flat").unwrap();
    assert!((s.npv.p10 - flat.npv).abs() < 1e-6 && (s.npv.p90 - flat.npv).abs() < 1e-6);
    // The stress scenarios hurt.
    let npv = |id: &str| a.stress.iter().find(|x| x.id == id).unwrap().npv;
    assert!(npv("crash-90") < npv("flat"));
    assert!(npv("network-stops") < npv("crash-90"));
    assert!(npv("token-worthless") < npv("flat"));
    assert!(a.split.token_rewards > 0.0 && a.split.token_share > 0.0 && a.split.token_share < 1.0);
}

#[test]
fn at_the_break_even_token_price_the_npv_is_zero() {
    let mut input = RoiInput::default();
    input.costs.pv_per_kwp = 2_500.0; // dear enough to need the token
    input.costs.battery_per_kwh = 1_200.0;
    let p = project(&input).break_even_token_price.unwrap();
    assert!(p > 0.0, "{p}");
    input.token.price = p;
    input.token.volatility = 0.0;
    let r = project(&input);
    assert!(r.npv.p50.abs() < 1e-6 * r.investment, "{:?}", r.npv);
}

#[test]
fn bootstrap_draws_from_the_given_history() {
    let mut input = RoiInput::default();
    input.token.model = PriceModel::Bootstrap;
    // Every monthly return is +5 %: every path is the same.
    input.token.history = (0..13).map(|i| 1.05f64.powi(i)).collect();
    input.token.history_per_year = 12;
    let r = project(&input);
    assert!((r.npv.p10 - r.npv.p90).abs() < 1e-6 * r.npv.p50.abs());
    let mut gbm = input.clone();
    gbm.token.model = PriceModel::Gbm;
    gbm.token.volatility = 0.0;
    gbm.token.drift = 12.0 * 1.05f64.ln();
    assert!((project(&gbm).npv.p50 - r.npv.p50).abs() < 1e-6 * r.npv.p50.abs());
}

#[test]
fn a_household_larger_than_its_connection_is_refused_by_name() {
    let input = RoiInput::from_json(
        br#"{"annual_kwh":60000,"pv_kwp":4,"battery_kwh":0,"household":{"connection_kw":8}}"#,
    )
    .unwrap();
    let e = roi::evaluate(&input, None).unwrap_err();
    assert_eq!(e.field(), Some("household.connection_kw"), "{e}");
    let e = roi::evaluate(
        &RoiInput::from_json(br#"{"household":{"load_profile":"nope"}}"#).unwrap(),
        None,
    )
    .unwrap_err();
    assert_eq!(e.field(), Some("household.load_profile"), "{e}");
    let e = roi::evaluate(
        &RoiInput::from_json(br#"{"community":{"scenario":"../../etc/passwd"}}"#).unwrap(),
        None,
    )
    .unwrap_err();
    assert_eq!(e.field(), Some("community.scenario"), "{e}");
}
