#!/usr/bin/env python3
"""Time the reference tools on the benchmark year: SimBench 1-LV-semiurb5--0-sw with its own
profiles, all 35 136 quarter-hours of 2016, power flow only, one core each.

    python3 -m venv .venv && .venv/bin/pip install pandapower simbench numba power-grid-model
    .venv/bin/python simulations/scripts/bench_reference.py [--steps N] [--skip-pandapower]

Prints the wall and CPU time of pandapower's run_timeseries (Newton-Raphson, numba) and of
power-grid-model's batch Newton-Raphson (threading=-1: one thread), with each tool's year
extremes (lowest and highest bus voltage, highest line loading) so that the accuracy can be
compared with `simulate run simulations/scenarios/simbench-semiurb5.toml`. Compare ratios,
not absolute times: the machine is shared.
"""

import argparse
import copy
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np
import pandapower as pp
import simbench as sb

CODE = "1-LV-semiurb5--0-sw"


def absolute_profiles(net, steps):
    prof = sb.get_absolute_values(net, profiles_instead_of_study_cases=True)
    return {k: v.iloc[:steps] for k, v in prof.items()}


def run_pandapower(net, prof, steps):
    from pandapower.control import ConstControl
    from pandapower.timeseries import DFData, OutputWriter, run_timeseries
    net = copy.deepcopy(net)
    for (elm, col), df in prof.items():
        if elm in ("load", "sgen", "storage") and len(df.columns):
            ConstControl(net, element=elm, variable=col, element_index=df.columns,
                         data_source=DFData(df), profile_name=df.columns)
    ow = OutputWriter(net, time_steps=range(steps), output_path=None)
    ow.log_variable("res_bus", "vm_pu")
    ow.log_variable("res_line", "loading_percent")
    t, c = time.perf_counter(), time.process_time()
    run_timeseries(net, time_steps=range(steps), verbose=False)
    elapsed = (time.perf_counter() - t, time.process_time() - c)
    vm = ow.output["res_bus.vm_pu"].to_numpy()
    ld = ow.output["res_line.loading_percent"].to_numpy()
    return elapsed, np.nanmin(vm), np.nanmax(vm), np.nanmax(ld)


def run_pgm(net, prof, steps):
    from power_grid_model import CalculationMethod, PowerGridModel, initialize_array
    from power_grid_model_io.converters import PandaPowerConverter
    net = copy.deepcopy(net)
    net.trafo["vector_group"] = net.trafo["vector_group"].fillna("Dyn5")
    converter = PandaPowerConverter()
    input_data, extra = converter.load_input_data(net)
    model = PowerGridModel(input_data)
    # power-grid-model-io maps each pandapower load to three sym_loads (constant power,
    # impedance, current); with SimBench's constant-power loads only the first carries power.
    ids = converter.get_id
    load_p = prof[("load", "p_mw")].to_numpy() * 1e6
    load_q = prof[("load", "q_mvar")].to_numpy() * 1e6
    sgen_p = prof[("sgen", "p_mw")].to_numpy() * 1e6
    sym = input_data["sym_load"]
    upd = initialize_array("update", "sym_load", (steps, len(sym)))
    upd["id"] = sym["id"]
    upd["p_specified"] = 0.0
    upd["q_specified"] = 0.0
    col = {int(i): k for k, i in enumerate(sym["id"])}
    for j, idx in enumerate(prof[("load", "p_mw")].columns):
        k = col[ids("load", idx, "const_power")]
        upd["p_specified"][:, k] = load_p[:, j]
        upd["q_specified"][:, k] = load_q[:, j]
    update = {"sym_load": upd}
    if "sym_gen" in input_data and len(input_data["sym_gen"]):
        gen = input_data["sym_gen"]
        gupd = initialize_array("update", "sym_gen", (steps, len(gen)))
        gupd["id"] = gen["id"]
        gcol = {int(i): k for k, i in enumerate(gen["id"])}
        gupd["p_specified"] = 0.0
        gupd["q_specified"] = 0.0
        for j, idx in enumerate(prof[("sgen", "p_mw")].columns):
            gupd["p_specified"][:, gcol[ids("sgen", idx)]] = sgen_p[:, j]
        update["sym_gen"] = gupd
    t, c = time.perf_counter(), time.process_time()
    out = model.calculate_power_flow(update_data=update, calculation_method=CalculationMethod.newton_raphson,
                                     threading=-1, error_tolerance=1e-8)
    elapsed = (time.perf_counter() - t, time.process_time() - c)
    vm = out["node"]["u_pu"]
    line = out["line"]
    ld = line["loading"] * 100
    return elapsed, vm.min(), vm.max(), ld.max()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=35136)
    ap.add_argument("--skip-pandapower", action="store_true")
    args = ap.parse_args()
    net = sb.get_simbench_net(CODE)
    prof = absolute_profiles(net, args.steps)
    print(f"{CODE}: {len(net.bus)} buses, {len(net.load)} loads, {args.steps} steps")
    e, lo, hi, ld = run_pgm(net, prof, args.steps)
    from importlib.metadata import version
    print(f"power-grid-model {version('power-grid-model')} batch NR, 1 thread: "
          f"{e[0]:.2f} s wall, {e[1]:.2f} s CPU; vm {lo:.5f}..{hi:.5f} p.u., max line loading {ld:.2f} %")
    if not args.skip_pandapower:
        e, lo, hi, ld = run_pandapower(net, prof, args.steps)
        print(f"pandapower {pp.__version__} run_timeseries (NR): {e[0]:.1f} s wall, {e[1]:.1f} s CPU; "
              f"vm {lo:.5f}..{hi:.5f} p.u., max line loading {ld:.2f} %")


if __name__ == "__main__":
    main()
