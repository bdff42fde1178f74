#!/usr/bin/env python3
"""Reference NPV and IRR from numpy-financial for the ROI calculator's arithmetic.

    python3 -m venv .venv && .venv/bin/pip install numpy-financial
    .venv/bin/python simulations/scripts/roi_fixtures.py > simulations/tests/fixtures/roi_npv_irr.json

Writes random yearly cash-flow streams (seeded, so the file is reproducible) shaped like a
household's investment: a payment now, then mostly returns over 1 to 40 years, some with a
mid-life cost; plus streams without an IRR (never positive) and numpy-financial's own docstring
examples. For each: npv at three rates and irr (null where numpy-financial finds none).
`tests/it/roi.rs` checks `roi::finance::npv` and `irr` against every case.

Only streams with one sign change are random: with several, NPV = 0 can have several roots and
numpy-financial returns the one closest to 0, a convention, not arithmetic.
"""

import json
import math
import random

import numpy as np
import numpy_financial as npf

RATES = [0.0, 0.04, 0.12]


def case(flows):
    irr = float(npf.irr(flows))
    return {
        "cash_flows": flows,
        "npv": [{"rate": r, "npv": float(npf.npv(r, flows))} for r in RATES],
        "irr": None if math.isnan(irr) else irr,
    }


def main():
    rng = random.Random(16)
    cases = []
    for _ in range(200):
        years = rng.randint(1, 40)
        invest = -rng.uniform(100.0, 50_000.0)
        yearly = rng.uniform(0.01, 0.4) * -invest
        flows = [invest] + [yearly * rng.uniform(0.5, 1.5) for _ in range(years)]
        cases.append(case([round(f, 6) for f in flows]))
    for _ in range(20):
        years = rng.randint(1, 30)
        cases.append(case([round(-rng.uniform(1.0, 1000.0), 6) for _ in range(years + 1)]))
    for flows in ([-100, 39, 59, 55, 20], [-100, 0, 0, 74], [-100, 100, 0, 7]):
        cases.append(case([float(f) for f in flows]))
    print(json.dumps({
        "generator": "simulations/scripts/roi_fixtures.py",
        "numpy_financial": npf.__version__,
        "numpy": np.__version__,
        "cases": cases,
    }, indent=1))


if __name__ == "__main__":
    main()
