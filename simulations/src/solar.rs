//! PV output of any tilt and azimuth from irradiance: the sun's position, an isotropic-sky
//! transposition onto the module plane, cell temperature and a PVWatts DC and loss model.
//!
//! The chain, each step as pvlib implements it (`scripts/pv_orientation.py` produces pvlib's
//! figures and `tests/it/solar.rs` holds this module to them):
//!
//! 1. **Sun position** at the middle of each hour of the weather data (hourly values): NOAA's
//!    solar position equations (after Meeus, *Astronomical Algorithms*), within about 0.01° of
//!    the NREL SPA that pvlib uses, with SPA's atmospheric refraction for the site's pressure
//!    (from its altitude) at 12 °C, as pvlib's defaults.
//! 2. **Beam irradiance**: `DNI = (GHI − DHI) / cos(zenith)` while the sun is more than 5°
//!    above the horizon, 0 below (near the horizon the division amplifies measurement noise).
//! 3. **Isotropic sky** (Liu & Jordan 1963): plane-of-array irradiance
//!    `POA = DNI·max(cos AOI, 0) + DHI·(1 + cos β)/2 + GHI·ρ·(1 − cos β)/2`, with `β` the tilt,
//!    `AOI` the angle between the sun and the module's normal and `ρ` the ground albedo
//!    (0.25).
//! 4. **Cell temperature** (Faiman 2008): `T_cell = T_air + POA / (25 + 6.84·wind)`.
//! 5. **PVWatts DC**: `P_dc = POA/1000 · (1 − 0.004·(T_cell − 25))` kW per kWp; then 14 %
//!    system losses and a 96 % inverter, clipped to 1 kW per kWp.
//!
//! The isotropic model gives less than the Perez model of the shipped `pv_south`, `pv_east`
//! and `pv_west` columns (830 against 879 kWh/kWp facing south at 35° on the same data): it
//! ignores the brightening of the sky around the sun and near the horizon.

use crate::profiles::ProfileSet;

/// Where the modules are: the weather data's site.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Site {
    /// Latitude, degrees north.
    pub latitude_deg: f64,
    /// Longitude, degrees east.
    pub longitude_deg: f64,
    /// Altitude, m (sets the pressure for refraction).
    pub altitude_m: f64,
}

/// The site of the shipped weather (`data/weather.csv.gz`): DWD test reference year 2010,
/// region 5, Essen.
pub const ESSEN: Site = Site {
    latitude_deg: 51.40,
    longitude_deg: 6.97,
    altitude_m: 152.0,
};

/// The shipped weather: one year of quarter-hours (hourly values repeated), columns `ghi`,
/// `dhi` (W/m²), `temp_air` (°C), `wind_speed` (m/s). Sources in `data/SOURCES.md`.
pub static DEFAULT_WEATHER_GZ: &[u8] = include_bytes!("../data/weather.csv.gz");

/// How the modules face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Orientation {
    /// Tilt from horizontal, degrees (0 flat, 90 a façade).
    pub tilt_deg: f64,
    /// Azimuth the modules face, degrees clockwise from north (180 south).
    pub azimuth_deg: f64,
}

/// The sun seen from a site.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SunPosition {
    /// Zenith angle with refraction, degrees.
    pub apparent_zenith_deg: f64,
    /// Azimuth, degrees clockwise from north.
    pub azimuth_deg: f64,
}

/// Why PV output could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum SolarError {
    /// The weather lacks a column.
    #[error(
        "weather data lacks column {0:?}; it needs ghi, dhi (W/m²), temp_air (°C) and wind_speed (m/s)"
    )]
    MissingColumn(&'static str),
    /// A value is impossible.
    #[error(
        "weather data row {row}: {what}; irradiance must be 0 or more with diffuse at most global, wind 0 or more"
    )]
    Value {
        /// 0-based data row.
        row: usize,
        /// What is wrong.
        what: String,
    },
}

/// Ground albedo (pvlib's default).
pub const ALBEDO: f64 = 0.25;
/// Below this elevation the beam is not derived from GHI − DHI.
const MIN_ELEVATION_DEG: f64 = 5.0;

/// The sun's position at `unix_s` (seconds since 1970, UTC).
#[must_use]
pub fn sun_position(site: &Site, unix_s: f64) -> SunPosition {
    let jd = unix_s / 86_400.0 + 2_440_587.5;
    let t = (jd - 2_451_545.0) / 36_525.0;
    let l0 = (280.466_46 + t * (36_000.769_83 + t * 0.000_303_2)).rem_euclid(360.0);
    let m = 357.529_11 + t * (35_999.050_29 - 0.000_153_7 * t);
    let e = 0.016_708_634 - t * (0.000_042_037 + 0.000_000_126_7 * t);
    let mr = m.to_radians();
    let center = mr.sin() * (1.914_602 - t * (0.004_817 + 0.000_014 * t))
        + (2.0 * mr).sin() * (0.019_993 - 0.000_101 * t)
        + (3.0 * mr).sin() * 0.000_289;
    let omega = (125.04 - 1_934.136 * t).to_radians();
    let apparent_long = (l0 + center - 0.005_69 - 0.004_78 * omega.sin()).to_radians();
    let mean_obliquity =
        23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.000_59 - t * 0.001_813))) / 60.0) / 60.0;
    let obliquity = (mean_obliquity + 0.002_56 * omega.cos()).to_radians();
    let declination = (obliquity.sin() * apparent_long.sin()).asin();
    let y = (obliquity / 2.0).tan().powi(2);
    let l0r = l0.to_radians();
    let eq_of_time_min = 4.0
        * (y * (2.0 * l0r).sin() - 2.0 * e * mr.sin() + 4.0 * e * y * mr.sin() * (2.0 * l0r).cos()
            - 0.5 * y * y * (4.0 * l0r).sin()
            - 1.25 * e * e * (2.0 * mr).sin())
        .to_degrees();
    let utc_min = unix_s.rem_euclid(86_400.0) / 60.0;
    let true_solar_min = (utc_min + eq_of_time_min + 4.0 * site.longitude_deg).rem_euclid(1_440.0);
    let hour_angle = (true_solar_min / 4.0 - 180.0).to_radians();
    let lat = site.latitude_deg.to_radians();
    let cos_zenith = (lat.sin() * declination.sin()
        + lat.cos() * declination.cos() * hour_angle.cos())
    .clamp(-1.0, 1.0);
    let zenith = cos_zenith.acos();
    // Azimuth from north, clockwise: atan2 of the east and north components.
    let east = -declination.cos() * hour_angle.sin();
    let north = declination.sin() * lat.cos() - declination.cos() * lat.sin() * hour_angle.cos();
    let azimuth = east.atan2(north).to_degrees().rem_euclid(360.0);
    let elevation = 90.0 - zenith.to_degrees();
    SunPosition {
        apparent_zenith_deg: 90.0 - (elevation + refraction_deg(site, elevation)),
        azimuth_deg: azimuth,
    }
}

/// SPA's refraction correction (Reda & Andreas 2004, eq. 42) at the site's standard pressure
/// and 12 °C; none with the sun below the horizon by more than its radius and refraction.
fn refraction_deg(site: &Site, elevation: f64) -> f64 {
    if elevation < -(0.266_67 + 0.566_7) {
        return 0.0;
    }
    // pvlib's alt2pres: the standard atmosphere, hPa.
    let pressure_hpa = ((44_331.514 - site.altitude_m) / 11_880.516).powf(1.0 / 0.190_262_9);
    let temperature_c = 12.0;
    (pressure_hpa / 1_010.0) * (283.0 / (273.0 + temperature_c)) * 1.02
        / (60.0 * (elevation + 10.3 / (elevation + 5.11)).to_radians().tan())
}

/// Plane-of-array irradiance, W/m², from horizontal global and diffuse irradiance and the sun.
#[must_use]
pub fn plane_of_array(ghi: f64, dhi: f64, sun: SunPosition, orientation: Orientation) -> f64 {
    let zenith = sun.apparent_zenith_deg.to_radians();
    let tilt = orientation.tilt_deg.to_radians();
    let cos_zenith = zenith.cos();
    let dni = if cos_zenith > MIN_ELEVATION_DEG.to_radians().sin() {
        (ghi - dhi) / cos_zenith
    } else {
        0.0
    };
    let cos_aoi = (tilt.cos() * cos_zenith
        + tilt.sin()
            * zenith.sin()
            * (sun.azimuth_deg - orientation.azimuth_deg)
                .to_radians()
                .cos())
    .clamp(-1.0, 1.0);
    let beam = (dni * cos_aoi).max(0.0);
    let sky = dhi * (1.0 + tilt.cos()) / 2.0;
    let ground = ghi * ALBEDO * (1.0 - tilt.cos()) / 2.0;
    beam + sky + ground
}

/// AC output per kWp, kW, from plane-of-array irradiance and the weather (steps 4 and 5).
#[must_use]
pub fn ac_per_kwp(poa: f64, temp_air_c: f64, wind_m_s: f64) -> f64 {
    let cell = temp_air_c + poa / (25.0 + 6.84 * wind_m_s);
    let dc = poa / 1_000.0 * (1.0 - 0.004 * (cell - 25.0));
    (dc * (1.0 - 0.14) * 0.96).clamp(0.0, 1.0)
}

/// The weather's columns, checked.
struct Weather<'a> {
    ghi: &'a [f64],
    dhi: &'a [f64],
    temp_air: &'a [f64],
    wind_speed: &'a [f64],
}

impl<'a> Weather<'a> {
    fn of(set: &'a ProfileSet) -> Result<Self, SolarError> {
        let col = |name: &'static str| set.column(name).ok_or(SolarError::MissingColumn(name));
        let w = Self {
            ghi: col("ghi")?,
            dhi: col("dhi")?,
            temp_air: col("temp_air")?,
            wind_speed: col("wind_speed")?,
        };
        for row in 0..w.ghi.len() {
            let (g, d, v) = (w.ghi[row], w.dhi[row], w.wind_speed[row]);
            let what = if g < 0.0 || d < 0.0 {
                format!("negative irradiance (ghi {g}, dhi {d})")
            } else if d > g {
                format!("diffuse {d} W/m² above global {g} W/m²")
            } else if v < 0.0 {
                format!("negative wind speed {v}")
            } else {
                continue;
            };
            return Err(SolarError::Value { row, what });
        }
        Ok(w)
    }
}

/// AC output per kWp (kW) of modules facing `orientation` at `site`, for every quarter-hour
/// of `weather` (hourly values, each repeated over its four quarter-hours, the first hour
/// starting at `start_unix_s`): one value per row, the hour's value in each of its rows.
pub fn pv_series(
    weather: &ProfileSet,
    site: &Site,
    orientation: Orientation,
    start_unix_s: i64,
) -> Result<Vec<f64>, SolarError> {
    let w = Weather::of(weather)?;
    let rows = w.ghi.len();
    let mut out = Vec::with_capacity(rows);
    for hour_start in (0..rows).step_by(4) {
        #[allow(
            clippy::cast_precision_loss,
            reason = "seconds of a profile year, far below 2^52"
        )]
        let middle = start_unix_s as f64 + (hour_start / 4) as f64 * 3_600.0 + 1_800.0;
        let sun = sun_position(site, middle);
        let poa = plane_of_array(w.ghi[hour_start], w.dhi[hour_start], sun, orientation);
        let ac = ac_per_kwp(poa, w.temp_air[hour_start], w.wind_speed[hour_start]);
        out.extend(std::iter::repeat_n(ac, (rows - hour_start).min(4)));
    }
    Ok(out)
}

/// The shipped weather.
pub fn default_weather() -> Result<ProfileSet, crate::profiles::ProfileError> {
    ProfileSet::from_gz(DEFAULT_WEATHER_GZ, "<built-in weather>")
}
