"""Stalls of the in-process pipeline caused by Python's full garbage collections.

    python benchmarks/gc_stalls.py [--days 6] [--users 4000]

Scores simulated traffic (engine.offline.synthetic) one transaction at a time
through the pipeline with the in-process window store, the shipped rules and
the promoted model, in a fresh process with Python's default collector
settings and in one with the settings `risk-engine serve` applies
(`engine.service.server.tune_gc`), and reports the slowest calls and the
full collections seen. Writes benchmarks/results/gc_stalls.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(days: int, users: int, tuned: bool) -> dict[str, object]:
    import pyarrow as pa

    from engine.model.predictor import load_model
    from engine.offline.datasets import PRESETS, table_to_dataset
    from engine.offline.synthetic import generate
    from engine.pipeline import Pipeline
    from engine.rules.loader import load_ruleset
    from engine.service.server import tune_gc
    from engine.windows.memory import MemoryStore

    transactions = table_to_dataset(pa.Table.from_pylist(generate(days=days, users=users)), PRESETS["native"])
    ruleset = load_ruleset(ROOT / "rules")
    model = load_model(ROOT / "models", ruleset)
    model.prepare_explanations()
    pipeline = Pipeline(ruleset, model, MemoryStore(), check_clock=False)
    if tuned:
        tune_gc()
    full: list[float] = []
    started = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            full.append((time.perf_counter() - started[0]) * 1000)

    gc.callbacks.append(watch)
    calls = []
    for txn in transactions.transactions:
        t0 = time.perf_counter()
        pipeline.score(txn)
        calls.append((time.perf_counter() - t0) * 1000)
    calls.sort()
    return {
        "gc": "tuned (serve)" if tuned else "Python defaults",
        "transactions": len(calls),
        "p50_ms": round(calls[len(calls) // 2], 3),
        "p99_ms": round(calls[int(len(calls) * 0.99)], 3),
        "p99_99_ms": round(calls[int(len(calls) * 0.9999)], 3),
        "max_ms": round(calls[-1], 1),
        "full_collections": len(full),
        "longest_full_collection_ms": round(max(full, default=0.0), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=6)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--one", choices=("default", "tuned"), help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run(args.days, args.users, args.one == "tuned")))
        return
    results = []
    for mode in ("default", "tuned"):  # each in a fresh interpreter: collector state is per process
        out = subprocess.run(
            [sys.executable, __file__, "--one", mode, "--days", str(args.days), "--users", str(args.users)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print("| collector | transactions | p50 ms | p99 ms | p99.99 ms | max ms | full collections | longest ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['gc']} | {r['transactions']:,} | {r['p50_ms']} | {r['p99_ms']} | {r['p99_99_ms']} | {r['max_ms']} "
            f"| {r['full_collections']} | {r['longest_full_collection_ms']} |"
        )
    out_path = ROOT / "benchmarks" / "results" / "gc_stalls.json"
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
