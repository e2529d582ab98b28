"""Cost of the model step for one transaction: LightGBM's `Booster.predict` on a 1-row array
against the served fast path (LightGBM's single-row C call, set up once at load).

    python benchmarks/model_step.py [--rows 5000] [--rounds 5] [--model models/]

Field maps hold random values in each feature's training range (from the
model file), a tenth of them missing (NaN). Timed per row, single-threaded,
best and median of the rounds:

- `Booster.predict`: what `Model.predict` did before (`predict_many` on one row:
  the field map to a 1-row array, then `Booster.predict`);
- fast path: `Model.predict` now (the field map to a reused row buffer, then
  `LGBM_BoosterPredictForMatSingleRowFast`).

Also checks that both give the same scores. Writes benchmarks/results/model_step.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import lightgbm
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.model.predictor import load_model  # noqa: E402
from engine.rules import load_ruleset  # noqa: E402


def field_maps(model_features: tuple[str, ...], booster: lightgbm.Booster, n: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(1)
    infos = booster.dump_model()["feature_infos"]
    rows: list[dict[str, float]] = [{} for _ in range(n)]
    for name in model_features:
        info = infos.get(name, {})
        lo, hi = float(info.get("min_value", 0.0)), float(info.get("max_value", 100.0))
        values = rng.uniform(lo, hi, size=n)
        values[rng.random(n) < 0.1] = np.nan
        for row, v in zip(rows, values.tolist(), strict=True):
            row[name] = v
    return rows


def per_row_us(fn, rows: list[dict[str, float]], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for row in rows:
            fn(row)
        out.append((time.perf_counter_ns() - start) / len(rows) / 1000.0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default=str(ROOT / "models"))
    parser.add_argument("--rules", default=str(ROOT / "rules"))
    args = parser.parse_args()

    model = load_model(args.model, load_ruleset(args.rules))
    if model.single_row is None:
        print("the fast single-row path could not be set up for this model", file=sys.stderr)
        return 1
    rows = field_maps(model.features, model.booster, args.rows)
    slow = [model.predict_many((row,))[0] for row in rows]
    fast = [model.predict(row) for row in rows]
    max_diff = max(abs(a - b) for a, b in zip(slow, fast, strict=True))

    def lightgbm_one(row: dict[str, float]) -> float:
        return model.predict_many((row,))[0]

    per_row_us(lightgbm_one, rows[:500], 1)  # warm-up
    per_row_us(model.predict, rows[:500], 1)
    results = {}
    for name, fn in (("Booster.predict (1-row array)", lightgbm_one), ("fast single-row path", model.predict)):
        times = per_row_us(fn, rows, args.rounds)
        results[name] = {"best_us": round(min(times), 2), "median_us": round(statistics.median(times), 2)}
    report = {
        "model": model.version,
        "trees": model.booster.num_trees(),
        "features": len(model.features),
        "rows": args.rows,
        "rounds": args.rounds,
        "max_abs_difference": max_diff,
        "results": results,
        "machine": {"cpu_count": __import__("os").cpu_count(), "processor": platform.processor() or platform.machine()},
        "versions": {"python": platform.python_version(), "lightgbm": lightgbm.__version__, "numpy": np.__version__},
    }
    out = ROOT / "benchmarks" / "results" / "model_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"model {model.version}: {report['trees']} trees, {report['features']} features; "
          f"{args.rows} rows x {args.rounds} rounds; max |difference| {max_diff:.3g}")  # fmt: skip
    print("| path | best µs/row | median µs/row |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['best_us']:.1f} | {r['median_us']:.1f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
