#!/usr/bin/env python3
"""Build the simulator's default profile set: one year (2023, 35 040 quarter-hours, local
standard time CET without daylight saving) of household load shapes and PV output, written
as `simulations/data/profiles.csv.gz`.

    python3 -m venv .venv && .venv/bin/pip install demandlib pvlib simbench
    .venv/bin/python simulations/scripts/build_profiles.py

Columns (all average power over the quarter-hour):
  h0, h0_dyn, h25      BDEW standard household profiles from demandlib (h0 static, h0 with
                       BDEW's dynamisation, the BDEW 2025 profile), kW for 1 000 kWh a year
  sb_h0_a, _b, _c, _g  SimBench household profiles H0-A, B, C, G (2016), realigned to the
                       weekdays of 2023, kW for 1 000 kWh a year
  sb_ev_home_a, sb_ev_home_b, sb_hp_air, sb_hp_air_semi_parallel
                       SimBench (scenario 2) profiles of electric vehicles charging at home
                       (3.7 kW) and of air-source heat pumps, realigned the same way, kW for
                       1 000 kWh a year
  pv_south, pv_east, pv_west
                       PV AC output in kW per kWp, from the DWD test reference year 2010 of
                       region 5 (Essen; hourly direct and diffuse irradiance, shipped with
                       demandlib) through pvlib: Perez transposition at 35° tilt, PVWatts DC
                       model with cell temperature, 14 % system losses, 96 % inverter
                       efficiency. Each hour's value fills its four quarter-hours.

Sources and licences are listed in simulations/data/SOURCES.md.
"""

import gzip
import io
import pathlib

import numpy as np
import pandas as pd

YEAR = 2023
SLOTS = 35040
HOLIDAYS_2023 = {  # German national holidays
    "2023-01-01": "Neujahr", "2023-04-07": "Karfreitag", "2023-04-10": "Ostermontag",
    "2023-05-01": "Tag der Arbeit", "2023-05-18": "Christi Himmelfahrt",
    "2023-05-29": "Pfingstmontag", "2023-10-03": "Tag der Deutschen Einheit",
    "2023-12-25": "1. Weihnachtstag", "2023-12-26": "2. Weihnachtstag",
}


def bdew_profiles():
    import demandlib.bdew as bdew
    import datetime
    holidays = {datetime.date.fromisoformat(d): n for d, n in HOLIDAYS_2023.items()}
    slp = bdew.ElecSlp(YEAR, holidays=holidays)
    df = slp.get_scaled_power_profiles({"h0": 1000, "h0_dyn": 1000})
    idx = pd.date_range(f"{YEAR}-01-01", periods=SLOTS, freq="15min")
    h25 = bdew.H25(idx, holidays=list(holidays))
    h25 = pd.Series(np.asarray(h25, dtype=float), index=idx)
    # H25 comes in kWh per quarter-hour for some annual total: rescale to 1 000 kWh, in kW.
    h25 = h25 / h25.sum() * 1000 * 4
    out = pd.DataFrame({"h0": df["h0"].values, "h0_dyn": df["h0_dyn"].values,
                        "h25": h25.values})
    return out


def simbench_profiles():
    import simbench as sb
    net = sb.get_simbench_net("1-LV-semiurb5--0-sw")
    profiles = net.profiles["load"]
    out = {}
    for name in ("H0-A", "H0-B", "H0-C", "H0-G"):
        col = f"{name}_pload"
        series = profiles[col].to_numpy(dtype=float)
        # 2016-01-01 is a Friday, 2023-01-01 a Sunday: start at 2016-01-03 (a Sunday) and
        # take 365 days, wrapping the missing tail from the start.
        start = 2 * 96
        shifted = np.concatenate([series[start:], series[:start]])[:SLOTS]
        out["sb_" + name.lower().replace("-", "_")] = shifted / shifted.sum() * 1000 * 4
    # Electric vehicles charging at home (3.7 kW wallbox) and heat pumps, from SimBench's
    # future scenario 2 of the same grid.
    future = sb.get_simbench_net("1-LV-semiurb5--2-sw").profiles["load"]
    for name, col in (("sb_ev_home_a", "HLS_A_3.7_pload"), ("sb_ev_home_b", "HLS_B_3.7_pload"),
                      ("sb_hp_air", "Air_Parallel_2_pload"),
                      ("sb_hp_air_semi_parallel", "Air_Semi-Parallel_2_pload")):
        series = future[col].to_numpy(dtype=float)
        shifted = np.concatenate([series[start:], series[:start]])[:SLOTS]
        out[name] = shifted / shifted.sum() * 1000 * 4
    return pd.DataFrame(out)


def pv_profiles():
    import pvlib
    import demandlib.vdi
    path = pathlib.Path(demandlib.vdi.__file__).parent / "resources_weather" / "TRY2010_05_Jahr.dat"
    lines = path.read_text(encoding="latin-1").splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("***")) + 1
    rows = [l.split() for l in lines[start:] if l.strip()]
    df = pd.DataFrame(rows).astype(float)
    df.columns = ["RG", "IS", "MM", "DD", "HH", "N", "WR", "WG", "t", "p", "x", "RF", "W", "B",
                  "D", "IK", "A", "E", "IL"][: df.shape[1]]
    assert len(df) == 8760, len(df)
    # HH is the hour ending at HH (CET); its middle is the sun position we use.
    times = pd.date_range(f"{YEAR}-01-01 00:30", periods=8760, freq="h", tz="Etc/GMT-1")
    lat, lon, alt = 51.40, 6.97, 152
    loc = pvlib.location.Location(lat, lon, tz="Etc/GMT-1", altitude=alt)
    sun = loc.get_solarposition(times)
    ghi = (df["B"] + df["D"]).to_numpy()
    dhi = df["D"].to_numpy()
    cosz = np.cos(np.radians(sun["apparent_zenith"].to_numpy()))
    dni = np.where(cosz > 0.087, df["B"].to_numpy() / np.maximum(cosz, 0.087), 0.0)
    dni_extra = pvlib.irradiance.get_extra_radiation(times).to_numpy()
    airmass = pvlib.atmosphere.get_relative_airmass(sun["apparent_zenith"]).to_numpy()
    out = {}
    for name, azimuth in (("pv_south", 180), ("pv_east", 90), ("pv_west", 270)):
        poa = pvlib.irradiance.get_total_irradiance(
            35, azimuth, sun["apparent_zenith"], sun["azimuth"], dni, ghi, dhi,
            dni_extra=dni_extra, airmass=airmass, model="perez")
        poa_global = np.nan_to_num(poa["poa_global"].to_numpy(), nan=0.0)
        cell = pvlib.temperature.faiman(poa_global, df["t"].to_numpy(), df["WG"].to_numpy())
        dc = pvlib.pvsystem.pvwatts_dc(poa_global, cell, pdc0=1.0, gamma_pdc=-0.004)
        ac = np.clip(dc * (1 - 0.14) * 0.96, 0.0, 1.0)
        out[name] = np.repeat(ac, 4)
    return pd.DataFrame(out)


def main():
    out_dir = pathlib.Path(__file__).resolve().parent.parent / "data"
    frames = [bdew_profiles(), simbench_profiles(), pv_profiles()]
    df = pd.concat([f.reset_index(drop=True) for f in frames], axis=1)
    assert len(df) == SLOTS and not df.isna().any().any()
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.5g", lineterminator="\n")
    # mtime=0 keeps the file byte-identical between runs.
    with gzip.GzipFile(out_dir / "profiles.csv.gz", "wb", mtime=0) as f:
        f.write(buf.getvalue().encode())
    for c in df.columns:
        print(f"{c:10s} sum/4 = {df[c].sum() / 4:9.1f}  max = {df[c].max():.4f}")


if __name__ == "__main__":
    main()
