"""Cost of explaining one transaction: LightGBM's contributions against the served path, and the score itself.

    python benchmarks/explain_cost.py [--rows 3000] [--model models/]

Field maps hold random values in each feature's training range (from the
model file), a tenth of them missing (NaN), as in `model_step.py`. Each row
is timed on its own (single-threaded), giving mean, p50 and p99 per row:

- `Booster.predict(pred_contrib=True)`: one row, through LightGBM's Python API;
- LightGBM single-row C contributions: `LGBM_BoosterPredictForMatSingleRowFast`
  with `C_API_PREDICT_CONTRIB`, set up once;
- `Model.contributions`: the served path (per-leaf tables, `engine/model/explain.py`);
- `Model.explain`: the same plus picking the top 3 reasons;
- `Model.predict`: the score alone (the fast single-row path), for scale.

Also checks that every path gives LightGBM's contributions, and times setting
the tables up. Writes benchmarks/results/explain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.model_step import field_maps  # noqa: E402
from engine.model.explain import PathTables  # noqa: E402
from engine.model.predictor import explainer, load_model  # noqa: E402
from engine.rules import load_ruleset  # noqa: E402


def per_row_us(fn: Callable[[Any], Any], rows: list[dict[str, float]]) -> list[float]:
    out = []
    for row in rows:
        start = time.perf_counter_ns()
        fn(row)
        out.append((time.perf_counter_ns() - start) / 1000.0)
    return out


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "mean_us": round(statistics.fmean(ordered), 1),
        "p50_us": round(ordered[len(ordered) // 2], 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--model", default=str(ROOT / "models"))
    parser.add_argument("--rules", default=str(ROOT / "rules"))
    args = parser.parse_args()

    model = load_model(args.model, load_ruleset(args.rules))
    start = time.perf_counter()
    served = model.prepare_explanations()
    setup_s = time.perf_counter() - start
    c_api = replace(model, explainer=explainer(model.booster, methods=("lightgbm-single-row",)))
    python_api = replace(model, explainer=explainer(model.booster, methods=("booster-predict",)))
    rows = field_maps(model.features, model.booster, args.rows)

    expected = model.booster.predict(model.matrix(rows), pred_contrib=True, num_threads=1)
    max_diff = {
        name: max(float(np.max(np.abs(m.contributions(row) - expected[i]))) for i, row in enumerate(rows))
        for name, m in (("tables", model), ("lightgbm-single-row", c_api), ("booster-predict", python_api))
    }

    paths: list[tuple[str, Callable[[Any], Any]]] = [
        ("Booster.predict(pred_contrib=True), 1 row", python_api.contributions),
        ("LightGBM single-row C contributions", c_api.contributions),
        (f"Model.contributions (served: {served.method})", model.contributions),
        ("Model.explain, top 3", model.explain),
        ("Model.predict (the score alone)", model.predict),
    ]
    for _, fn in paths:  # warm-up
        per_row_us(fn, rows[:200])
    results = {name: summary(per_row_us(fn, rows)) for name, fn in paths}
    report = {
        "model": model.version,
        "trees": model.booster.num_trees(),
        "features": len(model.features),
        "rows": args.rows,
        "served_method": served.method,
        "tables_setup_s": round(setup_s, 3),
        "table_mb": round(served.compute.table_values * 8 / 1e6, 1) if isinstance(served.compute, PathTables) else 0,
        "max_abs_difference_vs_pred_contrib": max_diff,
        "results": results,
        "load_average": [round(v, 2) for v in os.getloadavg()],  # other work on the machine widens p99
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "versions": {"python": platform.python_version(), "lightgbm": lightgbm.__version__, "numpy": np.__version__},
    }
    out = ROOT / "benchmarks" / "results" / "explain.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    worst = max(max_diff.values())
    print(f"model {model.version}: {report['trees']} trees, {report['features']} features; {args.rows} rows; "
          f"tables ({report['table_mb']} MB) set up in {setup_s:.2f} s; "
          f"max |difference| vs pred_contrib {worst:.3g}; load average {report['load_average']}")  # fmt: skip
    print("| path | mean µs | p50 µs | p99 µs |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['mean_us']:.1f} | {r['p50_us']:.1f} | {r['p99_us']:.1f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
