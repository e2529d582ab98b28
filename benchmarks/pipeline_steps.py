"""The scoring pipeline in-process, one transaction at a time: the whole call and each step.

    python benchmarks/pipeline_steps.py [--days 4] [--users 4000] [--warmup 2000] [--stores memory,redis]

Scores simulated gateway traffic (`engine.offline.synthetic`, moved to the
present) with `Pipeline.score`, exactly as the server does for each Score call
(shipped rules and promoted model, the event time checked against a clock, the response recorded for
retries, model reviews and denies explained), with no gRPC around it. Once with
the in-process store a server uses (`MemoryStore()`) and with a Redis
store on a `redis-server` this script starts on a free port (records written
behind the answer, and `redis-direct`: written before it; both keep the fallback windows
of degraded answers as the server does, `redis-nofallback` does not, to show what they cost). Reports
percentiles of the whole call (wall clock around `score`) and of the steps the
pipeline times itself (`Scored.timings_ns`):

- prepare: validation, enrichment, the transaction's place in each window group;
- windows: the store call (idempotency check and every window, one round trip
  for Redis), the window values and the derived features;
- model: the model's score;
- decide: rules, decision, reasons (with an explanation for a model-driven
  review or deny) and the response;
- record: the response kept for retries (with Redis: queued for the background
  writer, or with `redis-direct` a second round trip before the answer).

Issue 6's goals: the whole call p50 under 60 µs in-process and under 300 µs
with Redis. Writes benchmarks/results/pipeline_steps.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS = ("prepare", "windows", "model", "decide", "record")


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def measure(store_name: str, days: int, users: int, warmup: int, redis_url: str | None) -> dict[str, Any]:
    import pyarrow as pa

    from engine.model.predictor import load_model
    from engine.offline.datasets import PRESETS, table_to_dataset
    from engine.offline.synthetic import generate
    from engine.pipeline import Pipeline
    from engine.rules.loader import load_ruleset
    from engine.service.server import tune_gc
    from engine.windows.fallback import FallbackPolicy, FallbackWindows
    from engine.windows.memory import MemoryStore
    from engine.windows.redis_store import RedisStore
    from engine.windows.store import WindowStore

    rows = generate(days=days, users=users)
    shift = int(time.time() * 1000) - max(int(r["event_time_ms"]) for r in rows) - 60_000
    for r in rows:  # moved to the present: the last transaction a minute ago
        r["event_time_ms"] = int(r["event_time_ms"]) + shift
    transactions = table_to_dataset(pa.Table.from_pylist(rows), PRESETS["native"]).transactions
    ruleset = load_ruleset(ROOT / "rules")
    model = load_model(ROOT / "models", ruleset)
    model.prepare_explanations()
    store: WindowStore
    fallback = None
    if store_name in ("redis", "redis-direct", "redis-nofallback"):
        assert redis_url is not None
        # redis: the retry record written behind the answer (the server's default);
        # redis-direct: written by `remember` before the answer (RISK_REDIS_WRITE_BEHIND=off).
        store = RedisStore(redis_url, prefix="bench-steps", write_behind=store_name != "redis-direct")
        if store_name != "redis-nofallback":  # the server keeps the fallback windows with Redis
            fallback = FallbackWindows(FallbackPolicy())
    else:
        store = MemoryStore()
    # The clock the event time is checked against: the traffic's own, a second after each
    # transaction (the days of traffic are replayed in a few seconds).
    now = [0.0]
    pipeline = Pipeline(ruleset, model, store, clock=lambda: now[0], fallback=fallback)
    tune_gc()  # as `risk-engine serve`
    calls: list[float] = []
    steps: dict[str, list[float]] = {s: [] for s in STEPS}
    decisions: dict[str, int] = {}
    degraded = 0
    for i, txn in enumerate(transactions):
        now[0] = txn.event_time_ms / 1000 + 1.0
        t0 = time.perf_counter_ns()
        scored = pipeline.score(txn)
        took = time.perf_counter_ns() - t0
        if i < warmup:
            continue
        calls.append(took / 1000)
        for name, ns in zip(STEPS, scored.timings_ns, strict=True):
            steps[name].append(ns / 1000)
        decision = scored.result.decision.value
        decisions[decision] = decisions.get(decision, 0) + 1
        degraded += scored.result.degraded
    store.close()
    calls.sort()
    for values in steps.values():
        values.sort()
    return {
        "store": store_name,
        "transactions": len(calls),
        "call_us": {q: round(_pct(calls, p), 1) for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
        "steps_p50_us": {name: round(_pct(v, 0.5), 1) for name, v in steps.items()},
        "steps_p99_us": {name: round(_pct(v, 0.99), 1) for name, v in steps.items()},
        "decisions": decisions,
        "degraded": degraded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=4, help="days of simulated traffic (default 4)")
    parser.add_argument("--users", type=int, default=4000, help="simulated users (default 4000)")
    parser.add_argument("--warmup", type=int, default=2000, help="calls not measured at the start (default 2000)")
    parser.add_argument(
        "--stores",
        default="memory,redis,redis-nofallback,redis-direct",
        help="comma-separated: memory, redis, redis-nofallback, redis-direct",
    )
    args = parser.parse_args()

    from benchmarks.loadgen import start_redis

    results = []
    for name in args.stores.split(","):
        if name in ("redis", "redis-direct", "redis-nofallback"):
            with tempfile.TemporaryDirectory() as tmp:
                redis = start_redis(Path(tmp))
                try:
                    results.append(
                        measure(name, args.days, args.users, args.warmup, f"redis://127.0.0.1:{redis.port}/0")
                    )
                finally:
                    redis.stop()
        else:
            results.append(measure(name, args.days, args.users, args.warmup, None))

    goals = {"memory": 60.0, "redis": 300.0, "redis-direct": 300.0, "redis-nofallback": 300.0}
    print("| store | calls | call p50 / p90 / p99 µs | goal p50 | " + " | ".join(f"{s} p50" for s in STEPS) + " |")
    print("|---|---|---|---|" + "---|" * len(STEPS))
    for r in results:
        c = r["call_us"]
        goal = goals[r["store"]]
        met = "met" if c["p50"] < goal else "not met"
        print(
            f"| {r['store']} | {r['transactions']:,} | {c['p50']} / {c['p90']} / {c['p99']} | < {goal:.0f} ({met}) | "
            + " | ".join(str(r["steps_p50_us"][s]) for s in STEPS)
            + " |"
        )
    out = {
        "results": results,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/pipeline_steps.py " + " ".join(sys.argv[1:]),
    }
    path = ROOT / "benchmarks" / "results" / "pipeline_steps.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
