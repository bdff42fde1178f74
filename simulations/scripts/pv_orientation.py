#!/usr/bin/env python3
"""The weather behind PV of any tilt and azimuth, and pvlib's figures to check ours against.

    python3 -m venv .venv && .venv/bin/pip install pvlib==0.16.1 demandlib==0.2.2
    .venv/bin/python simulations/scripts/pv_orientation.py

Writes
  simulations/data/weather.csv.gz
      one year (2023, 35 040 quarter-hours, CET without daylight saving) of the DWD test
      reference year TRY2010 region 5 (Essen, 51.40° N 6.97° E, shipped with demandlib):
      ghi and dhi (global and diffuse horizontal irradiance, W/m²), temp_air (°C) and
      wind_speed (m/s); each hourly value fills its four quarter-hours, as in profiles.csv.gz.
  simulations/tests/fixtures/pv_isotropic.json
      pvlib's AC output per kWp, every hour of the year, for several orientations, through the
      chain the simulator implements (simulations/src/solar.rs): sun position at the middle of
      each hour (pvlib's NREL SPA), DNI = (GHI − DHI) / cos(zenith) above 5° of elevation,
      isotropic-sky transposition (Liu & Jordan) with ground albedo 0.25, Faiman cell
      temperature, PVWatts DC (γ = −0.4 %/K), 14 % system losses, 96 % inverter efficiency,
      clipped to 1 kW/kWp; and the sun's apparent zenith and azimuth for every hour.

The shipped profile columns pv_south, pv_east and pv_west (scripts/build_profiles.py) are the
same data through pvlib's Perez model; the simulator computes the isotropic model itself, for
any orientation, and the Rust test `pv_orientation_matches_pvlib` holds it to these figures.
"""

import gzip
import io
import json
import pathlib

import numpy as np
import pandas as pd

YEAR = 2023
LAT, LON, ALT = 51.40, 6.97, 152
ALBEDO = 0.25
ORIENTATIONS = [  # (tilt, azimuth), degrees; azimuth clockwise from north
    (35, 180), (35, 90), (35, 270), (10, 135), (45, 225), (90, 180), (0, 180), (60, 20),
]


def read_try():
    import demandlib.vdi
    path = (pathlib.Path(demandlib.vdi.__file__).parent / "resources_weather"
            / "TRY2010_05_Jahr.dat")
    lines = path.read_text(encoding="latin-1").splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("***")) + 1
    rows = [l.split() for l in lines[start:] if l.strip()]
    df = pd.DataFrame(rows).astype(float)
    df.columns = ["RG", "IS", "MM", "DD", "HH", "N", "WR", "WG", "t", "p", "x", "RF", "W", "B",
                  "D", "IK", "A", "E", "IL"][: df.shape[1]]
    assert len(df) == 8760, len(df)
    return df


def main():
    import pvlib
    root = pathlib.Path(__file__).resolve().parent.parent
    df = read_try()
    weather = pd.DataFrame({
        "ghi": (df["B"] + df["D"]).to_numpy(),
        "dhi": df["D"].to_numpy(),
        "temp_air": df["t"].to_numpy(),
        "wind_speed": df["WG"].to_numpy(),
    })
    quarter = weather.loc[weather.index.repeat(4)].reset_index(drop=True)
    buf = io.StringIO()
    quarter.to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    # mtime=0 keeps the file byte-identical between runs.
    with gzip.GzipFile(root / "data" / "weather.csv.gz", "wb", mtime=0) as f:
        f.write(buf.getvalue().encode())

    # The hour ending at HH (CET): its middle is the sun position used.
    times = pd.date_range(f"{YEAR}-01-01 00:30", periods=8760, freq="h", tz="Etc/GMT-1")
    loc = pvlib.location.Location(LAT, LON, tz="Etc/GMT-1", altitude=ALT)
    sun = loc.get_solarposition(times)
    zen = sun["apparent_zenith"].to_numpy()
    azi = sun["azimuth"].to_numpy()
    ghi, dhi = weather["ghi"].to_numpy(), weather["dhi"].to_numpy()
    cosz = np.cos(np.radians(zen))
    dni = np.where(cosz > np.sin(np.radians(5)), (ghi - dhi) / np.maximum(cosz, 1e-9), 0.0)
    out = {
        "source": "simulations/scripts/pv_orientation.py, pvlib " + pvlib.__version__,
        "latitude": LAT, "longitude": LON, "utc_offset_hours": 1,
        "albedo": ALBEDO,
        "apparent_zenith": [round(float(v), 5) for v in zen],
        "azimuth": [round(float(v), 5) for v in azi],
        "orientations": [],
    }
    for tilt, azimuth in ORIENTATIONS:
        poa = pvlib.irradiance.get_total_irradiance(
            tilt, azimuth, zen, azi, dni, ghi, dhi, albedo=ALBEDO, model="isotropic")
        poa_global = np.nan_to_num(np.asarray(poa["poa_global"], dtype=float), nan=0.0)
        cell = pvlib.temperature.faiman(poa_global, weather["temp_air"].to_numpy(),
                                        weather["wind_speed"].to_numpy())
        dc = pvlib.pvsystem.pvwatts_dc(poa_global, cell, pdc0=1.0, gamma_pdc=-0.004)
        ac = np.clip(dc * (1 - 0.14) * 0.96, 0.0, 1.0)
        out["orientations"].append({
            "tilt": tilt, "azimuth": azimuth,
            "annual_kwh_per_kwp": round(float(ac.sum()), 4),
            "ac_kw_per_kwp": [round(float(v), 6) for v in ac],
        })
        print(f"tilt {tilt:2d} azimuth {azimuth:3d}: {ac.sum():7.1f} kWh/kWp")
    path = root / "tests" / "fixtures" / "pv_isotropic.json.gz"
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(json.dumps(out, separators=(",", ":")).encode())


if __name__ == "__main__":
    main()
