//! PV of any orientation against pvlib: `scripts/pv_orientation.py` computed the sun's position
//! and the isotropic-sky chain of `solar` with pvlib for every hour of the shipped weather year
//! and several orientations (`fixtures/pv_isotropic.json.gz`).

use flate2::read::GzDecoder;
use gridshare_simulations::sim::PROFILE_YEAR_START;
use gridshare_simulations::solar::{self, ESSEN, Orientation};
use std::io::Read as _;

fn fixture() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pv_isotropic.json.gz");
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
        let t = (PROFILE_YEAR_START + hour as i64 * 3600 + 1800) as f64;
        let sun = solar::sun_position(&ESSEN, t);
        worst_zenith = worst_zenith.max((sun.apparent_zenith_deg - zenith[hour]).abs());
        // Azimuth matters while the sun is up (at the zenith it is undefined).
        if zenith[hour] < 90.0 {
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
            assert!(ours[4 * hour..4 * hour + 4].iter().all(|&q| q == ours[4 * hour]));
            worst = worst.max((ours[4 * hour] - p).abs());
        }
        let annual: f64 = ours.iter().sum::<f64>() / 4.0;
        let expected = o["annual_kwh_per_kwp"].as_f64().unwrap();
        eprintln!(
            "{orientation:?}: {annual:.2} kWh/kWp (pvlib {expected}), worst hour {worst:.6} kW/kWp"
        );
        assert!(worst < 1e-3, "{orientation:?}: an hour is off by {worst} kW/kWp");
        assert!((annual - expected).abs() < expected * 1e-3, "{orientation:?}: annual {annual} against {expected}");
    }
}
