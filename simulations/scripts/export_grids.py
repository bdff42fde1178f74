#!/usr/bin/env python3
"""Export pandapower low-voltage test grids, with pandapower's own power-flow results, into the
simulator's neutral grid format (JSON, documented in simulations/README.md#grid-format).

    python3 -m venv .venv && .venv/bin/pip install pandapower simbench
    .venv/bin/python simulations/scripts/export_grids.py [--out simulations/grids] [NAME ...]

Every grid written here is checked by the Rust test `grid_validation` (every bus voltage within
1e-6 p.u., every line loading within 1e-4 percentage points), so any grid this script can export
is a validation case. The reference run uses Newton-Raphson with a tight tolerance so that the
fixture's own error is far below the test's.
"""

import argparse
import json
import math
import pathlib
import sys

import pandapower as pp
import pandapower.networks as pn


# SimBench grids whose year of profiles is exported too (about 1.8 MB each, so only the one
# the benchmark and the SimBench scenario use).
WITH_PROFILES = {"simbench_1-LV-semiurb5--0-sw"}


def _num(v, default=None):
    """A finite float, or `default` for NaN/None."""
    if v is None:
        return default
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(f) else f


def _str(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v)
    return None if s in ("", "nan", "None", "<NA>") else s


def _refuse_unsupported(net, name):
    """The neutral format covers radial LV feeders; refuse what it cannot represent."""
    for table in ("gen", "shunt", "ward", "xward", "impedance", "trafo3w", "dcline", "svc", "tcsc",
                  "ssc", "vsc", "motor", "asymmetric_load", "asymmetric_sgen"):
        if table in net and len(net[table]) and net[table].get("in_service", True).any():
            sys.exit(f"{name}: table '{table}' has in-service elements; the neutral format does not model them")
    if len(net.ext_grid[net.ext_grid.in_service]) != 1:
        sys.exit(f"{name}: needs exactly one in-service ext_grid")
    if len(net.switch) and (net.switch.z_ohm.fillna(0) != 0).any():
        sys.exit(f"{name}: switches with z_ohm != 0 are not supported")


def export(net, name, source, out_dir):
    _refuse_unsupported(net, name)
    pp.runpp(net, algorithm="nr", tolerance_mva=1e-10, max_iteration=50,
             calculate_voltage_angles=True, init="dc")
    grid = {
        "name": name,
        "source": source,
        "sn_mva": float(net.sn_mva),
        "f_hz": float(net.f_hz),
        "buses": [
            {"id": int(i), "name": _str(b["name"]) or f"bus {i}", "vn_kv": float(b.vn_kv),
             "in_service": bool(b.in_service)}
            for i, b in net.bus.iterrows()
        ],
        "lines": [
            {"id": int(i), "name": _str(l["name"]) or f"line {i}", "from_bus": int(l.from_bus),
             "to_bus": int(l.to_bus), "length_km": float(l.length_km),
             "r_ohm_per_km": float(l.r_ohm_per_km), "x_ohm_per_km": float(l.x_ohm_per_km),
             "c_nf_per_km": float(l.c_nf_per_km), "g_us_per_km": _num(l.get("g_us_per_km"), 0.0),
             "max_i_ka": float(l.max_i_ka), "df": _num(l.get("df"), 1.0),
             "parallel": int(l.parallel), "in_service": bool(l.in_service)}
            for i, l in net.line.iterrows()
        ],
        "trafos": [
            {"id": int(i), "name": _str(t["name"]) or f"trafo {i}", "hv_bus": int(t.hv_bus),
             "lv_bus": int(t.lv_bus), "sn_mva": float(t.sn_mva), "vn_hv_kv": float(t.vn_hv_kv),
             "vn_lv_kv": float(t.vn_lv_kv), "vk_percent": float(t.vk_percent),
             "vkr_percent": float(t.vkr_percent), "pfe_kw": float(t.pfe_kw),
             "i0_percent": float(t.i0_percent), "shift_degree": _num(t.shift_degree, 0.0),
             "tap_side": _str(t.tap_side), "tap_changer_type": _str(t.get("tap_changer_type")),
             "tap_neutral": _num(t.tap_neutral, 0.0), "tap_pos": _num(t.tap_pos, 0.0),
             "tap_step_percent": _num(t.tap_step_percent, 0.0),
             "tap_step_degree": _num(t.tap_step_degree, 0.0),
             "parallel": int(t.parallel), "df": _num(t.get("df"), 1.0),
             "in_service": bool(t.in_service)}
            for i, t in net.trafo.iterrows()
        ],
        "switches": [
            {"bus": int(s.bus), "element": int(s.element), "et": str(s.et), "closed": bool(s.closed)}
            for _, s in net.switch.iterrows()
        ],
        "ext_grid": next(
            {"bus": int(e.bus), "vm_pu": float(e.vm_pu), "va_degree": _num(e.va_degree, 0.0)}
            for _, e in net.ext_grid.iterrows() if e.in_service
        ),
        "loads": [_injection(i, e, "load") for i, e in net.load.iterrows()],
        "sgens": [_injection(i, e, "sgen") for i, e in net.sgen.iterrows()],
        "storages": [_injection(i, e, "storage") for i, e in net.storage.iterrows()],
        "reference": {
            "tool": f"pandapower {pp.__version__} runpp(algorithm='nr', tolerance_mva=1e-10, calculate_voltage_angles=True)",
            "bus_vm_pu": [_num(v) for v in net.res_bus.vm_pu],
            "bus_va_degree": [_num(v) for v in net.res_bus.va_degree],
            "line_loading_percent": [_num(v) for v in net.res_line.loading_percent],
            "line_i_ka": [_num(v) for v in net.res_line.i_ka],
            "trafo_loading_percent": [_num(v) for v in net.res_trafo.loading_percent],
            "ext_grid_p_mw": float(net.res_ext_grid.p_mw.iloc[0]),
            "ext_grid_q_mvar": float(net.res_ext_grid.q_mvar.iloc[0]),
        },
    }
    if name in WITH_PROFILES:
        _write_profiles(net, out_dir / f"{name}.profiles.csv.gz")
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(grid, indent=1) + "\n")
    r = net.res_bus.vm_pu
    print(f"{path}: {len(net.bus)} buses, {len(net.line)} lines, {len(net.trafo)} trafos, "
          f"vm {r.min():.5f}..{r.max():.5f}, max line loading {net.res_line.loading_percent.max():.2f} %")


def _write_profiles(net, path):
    """SimBench's relative profiles for this grid's loads (`<profile>_pload`, `_qload`) and
    generators (`<profile>`), one row per quarter-hour of 2016: an element's power at a time is
    its `p_mw` (`q_mvar`) times its profile's value, as in simbench.get_absolute_values."""
    import gzip
    import io
    cols = {}
    for prof in sorted(set(net.load.profile.dropna())):
        for suffix in ("_pload", "_qload"):
            cols[prof + suffix] = net.profiles["load"][prof + suffix].to_numpy(dtype=float)
    for prof in sorted(set(net.sgen.profile.dropna())):
        cols[prof] = net.profiles["renewables"][prof].to_numpy(dtype=float)
    import pandas as pd
    df = pd.DataFrame(cols)
    # Reactive-power profiles can be negative (capacitive); they keep their sign.
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.5g", lineterminator="\n")
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(buf.getvalue().encode())
    print(f"{path}: {len(df)} rows, {len(df.columns)} profiles")


def _injection(i, e, kind):
    out = {"id": int(i), "name": _str(e.get("name")) or f"{kind} {i}", "bus": int(e.bus),
           "p_mw": float(e.p_mw), "q_mvar": _num(e.get("q_mvar"), 0.0),
           "scaling": _num(e.get("scaling"), 1.0), "in_service": bool(e.in_service)}
    profile = _str(e.get("profile"))
    if profile is not None:
        out["profile"] = profile
    if kind == "load":
        for key in ("const_z_p_percent", "const_i_p_percent", "const_z_q_percent", "const_i_q_percent"):
            out[key] = _num(e.get(key), 0.0)
    return out


def tap_changer_case():
    """CIGRE LV with active tap changers on both sides (pandapower 3 applies a tap only when
    tap_changer_type is set): trafo 0 taps +2 on the HV side, trafo 1 taps -1 on the LV side,
    trafo 2 keeps tap_pos 2 with no tap_changer_type, which pandapower ignores."""
    net = pn.create_cigre_network_lv()
    for t, side, pos, kind in ((0, "hv", 2, "Ratio"), (1, "lv", -1, "Ratio"), (2, "hv", 2, None)):
        net.trafo.loc[t, ["tap_side", "tap_neutral", "tap_min", "tap_max", "tap_step_percent",
                          "tap_step_degree", "tap_pos"]] = [side, 0, -2, 2, 2.5, 0, pos]
        net.trafo.loc[t, "tap_changer_type"] = kind
    net.trafo.loc[0, ["pfe_kw", "i0_percent"]] = [1.4, 0.3]  # a magnetising branch as well
    return net


def open_switch_case():
    """Kerber Dorfnetz with one line switch opened: the line stays energised from its other
    end (its charging current counts) and the buses behind it move to the other feeder...
    here they are cut off, so we open a switch at a feeder end whose line leads to a leaf."""
    net = pn.create_kerber_dorfnetz()
    leaf_lines = [i for i, l in net.line.iterrows()
                  if (net.line.from_bus == l.to_bus).sum() == 0]
    line = leaf_lines[0]
    pp.create_switch(net, bus=int(net.line.at[line, "to_bus"]), element=line, et="l", closed=False)
    # The leaf bus behind the open switch is now isolated: take its load out of service and the
    # bus too, as a planner would when opening it.
    leaf = int(net.line.at[line, "to_bus"])
    net.load.loc[net.load.bus == leaf, "in_service"] = False
    net.bus.loc[leaf, "in_service"] = False
    return net


def grids():
    import simbench as sb
    yield "cigre_lv", "pandapower.networks.create_cigre_network_lv()", pn.create_cigre_network_lv
    yield "kerber_dorfnetz", "pandapower.networks.create_kerber_dorfnetz()", pn.create_kerber_dorfnetz
    yield ("kerber_vorstadtnetz_kabel_1", "pandapower.networks.create_kerber_vorstadtnetz_kabel_1()",
           pn.create_kerber_vorstadtnetz_kabel_1)
    yield ("kerber_landnetz_kabel_2", "pandapower.networks.create_kerber_landnetz_kabel_2()",
           pn.create_kerber_landnetz_kabel_2)
    yield ("kb_extrem_landnetz_kabel_trafo",
           "pandapower.networks.kb_extrem_landnetz_kabel_trafo() (overloaded: voltage and loading violations)",
           pn.kb_extrem_landnetz_kabel_trafo)
    yield ("village_1_sgen", "pandapower.networks.create_synthetic_voltage_control_lv_network('village_1')",
           lambda: pn.create_synthetic_voltage_control_lv_network("village_1"))
    yield ("simbench_1-LV-semiurb5--0-sw", "simbench.get_simbench_net('1-LV-semiurb5--0-sw')",
           lambda: sb.get_simbench_net("1-LV-semiurb5--0-sw"))
    yield ("simbench_1-LV-rural1--0-sw", "simbench.get_simbench_net('1-LV-rural1--0-sw')",
           lambda: sb.get_simbench_net("1-LV-rural1--0-sw"))
    yield "cigre_lv_tap_changers", "cigre_lv with active tap changers (see tap_changer_case)", tap_changer_case
    yield "kerber_dorfnetz_open_switch", "kerber_dorfnetz with an open line switch (see open_switch_case)", open_switch_case


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent.parent / "grids"))
    ap.add_argument("names", nargs="*", help="grids to export (default: all)")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, source, make in grids():
        if args.names and name not in args.names:
            continue
        export(make(), name, source, out)


if __name__ == "__main__":
    main()
