//! PV of any orientation against pvlib: `scripts/pv_orientation.py` computed the sun's position
//! and the isotropic-sky chain of `solar` with pvlib for every hour of the shipped weather year
//! and several orientations (`fixtures/pv_isotropic.json.gz`).

use flate2::read::GzDecoder;
use gridshare_simulations::grid::GridFile;
use gridshare_simulations::profiles::ProfileSet;
use gridshare_simulations::scenario::Scenario;
use gridshare_simulations::sim::{self, PROFILE_YEAR_START};
use gridshare_simulations::solar::{self, ESSEN, Orientation};
use std::io::Read as _;
use std::path::PathBuf;

fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pv_isotropic.json.gz"
    );
    let mut text = String::new();
    GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn sun_position_matches_pvlib_spa() {
    let f = fixture();
    let (zenith, azimuth) = (floats(&f["apparent_zenith"]), floats(&f["azimuth"]));
    let (mut worst_zenith, mut worst_azimuth) = (0.0f64, 0.0f64);
    for hour in 0..zenith.len() {
        let t = (PROFILE_YEAR_START + i64::try_from(hour).unwrap() * 3600 + 1800) as f64;
        let sun = solar::sun_position(&ESSEN, t);
        // While the sun is up (below the horizon only the refraction cut-off differs, by a
        // hundredth of a degree of elevation, and no PV is computed there).
        if zenith[hour] < 90.0 {
            worst_zenith = worst_zenith.max((sun.apparent_zenith_deg - zenith[hour]).abs());
            let d = (sun.azimuth_deg - azimuth[hour]).rem_euclid(360.0);
            worst_azimuth = worst_azimuth.max(d.min(360.0 - d));
        }
    }
    assert!(worst_zenith < 0.02, "zenith off by {worst_zenith}°");
    assert!(worst_azimuth < 0.02, "azimuth off by {worst_azimuth}°");
}

#[test]
fn pv_orientation_matches_pvlib() {
    let f = fixture();
    let weather = solar::default_weather().unwrap();
    for o in f["orientations"].as_array().unwrap() {
        let orientation = Orientation {
            tilt_deg: o["tilt"].as_f64().unwrap(),
            azimuth_deg: o["azimuth"].as_f64().unwrap(),
        };
        let ours = solar::pv_series(&weather, &ESSEN, orientation, PROFILE_YEAR_START).unwrap();
        let theirs = floats(&o["ac_kw_per_kwp"]);
        assert_eq!(ours.len(), theirs.len() * 4);
        let mut worst = 0.0f64;
        for (hour, &p) in theirs.iter().enumerate() {
            assert!(
                ours[4 * hour..4 * hour + 4]
                    .iter()
                    .all(|&q| q == ours[4 * hour])
            );
            worst = worst.max((ours[4 * hour] - p).abs());
        }
        let annual: f64 = ours.iter().sum::<f64>() / 4.0;
        let expected = o["annual_kwh_per_kwp"].as_f64().unwrap();
        eprintln!(
            "{orientation:?}: {annual:.2} kWh/kWp (pvlib {expected}), worst hour {worst:.6} kW/kWp"
        );
        assert!(
            worst < 5e-4,
            "{orientation:?}: an hour is off by {worst} kW/kWp"
        );
        assert!(
            (annual - expected).abs() < expected * 1e-4,
            "{orientation:?}: annual {annual} against {expected}"
        );
    }
}

fn scenario_text() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(dir.join("scenarios/our-street.toml")).unwrap()
}

fn parse(text: &str) -> Result<Scenario, String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    Scenario::parse(text, "x.toml", dir).map_err(|e| e.to_string())
}

/// A group with `pv_orientation` gets the computed series: its homes' PV over the year is the
/// kWp times pvlib's annual yield for that orientation (within the Wh rounding of each slot).
#[test]
fn a_scenario_with_a_pv_orientation_produces_that_orientations_year() {
    let s = parse(&east_group_with(
        "pv_orientation = { tilt_deg = 45, azimuth_deg = 225 }",
    ))
    .unwrap();
    assert!(s.groups[1].pv_orientation.is_some());
    let r = sim::run(&s).unwrap();
    let f = fixture();
    let expected_kwh_per_kwp = f["orientations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["tilt"] == 45 && o["azimuth"] == 225)
        .unwrap()["annual_kwh_per_kwp"]
        .as_f64()
        .unwrap();
    let kwp = s.groups[1].pv_kwp;
    let homes: Vec<_> = r
        .households
        .iter()
        .filter(|h| h.name.starts_with("pv-") && !h.name.starts_with("pv-battery"))
        .collect();
    assert_eq!(homes.len(), 4);
    for h in homes {
        let kwh = h.totals.pv_wh as f64 / 1000.0;
        // 35 040 slots, each rounded to whole Wh: at most 17.5 kWh apart; pvlib within 0.01 %.
        let want = expected_kwh_per_kwp * kwp;
        assert!(
            (kwh - want).abs() < 1e-4 * want + 17.6,
            "{}: {kwh} kWh, pvlib {want}",
            h.name
        );
    }
}

/// The shipped street with its east-facing group's `pv_profile` line replaced by `line`.
fn east_group_with(line: &str) -> String {
    scenario_text().replace("pv_profile = \"pv_east\"\n", &format!("{line}\n"))
}

#[test]
fn a_pv_orientation_is_checked_and_exclusive_with_a_profile() {
    let e = parse(&east_group_with(
        "pv_profile = \"pv_east\"\npv_orientation = { tilt_deg = 30, azimuth_deg = 90 }",
    ))
    .unwrap_err();
    assert!(
        e.contains("households[1].pv_orientation") && e.contains("not both"),
        "{e}"
    );
    let e = parse(&east_group_with(
        "pv_orientation = { tilt_deg = 95, azimuth_deg = 90 }",
    ))
    .unwrap_err();
    assert!(
        e.contains("households[1].pv_orientation.tilt_deg") && e.contains("90"),
        "{e}"
    );
    let e = parse(&east_group_with(
        "pv_orientation = { tilt = 30, azimuth_deg = 90 }",
    ))
    .unwrap_err();
    assert!(e.contains("tilt") && e.contains("tilt_deg"), "{e}");
    // The weather year is 2023's 35 040 quarter-hours: a profile set of another length cannot
    // take a computed orientation.
    let short = ProfileSet::parse("load,pv_south\n1,0\n1,0\n", "short").unwrap();
    let s = parse(&east_group_with(
        "pv_orientation = { tilt_deg = 30, azimuth_deg = 90 }",
    ))
    .unwrap();
    let grid = GridFile::load(&s.resolve(&s.grid.file)).unwrap();
    let e = sim::run_with(&s, grid, &short, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("pv_orientation") && e.contains("35040"), "{e}");
}
