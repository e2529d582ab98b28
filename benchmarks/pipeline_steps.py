"""The scoring pipeline in-process, one transaction at a time: the whole call and each step.

    python benchmarks/pipeline_steps.py [--days 4] [--users 4000] [--warmup 2000] [--stores memory,redis] [--out F]

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

For the Redis stores it also reports Redis's own CPU per transaction (issue 23): the
statistics are reset after the warm-up (`CONFIG RESETSTAT`, the retry records queued by then
written first), and after the run `INFO commandstats` gives each command's calls and
microseconds. The script's commands (`redis.call`) are counted there too, inside the
EVALSHA's time: "command µs" is the time of the commands the store sent (EVALSHA/EVAL, the
retry records' SETs: every SET but the one each script call makes), "script µs/call" the
EVALSHA's own, "redis.calls" the commands the script made per transaction; "process CPU µs"
is the delta of Redis's `used_cpu_sys + used_cpu_user` (parsing, replies and networking
included) per transaction.

Issue 6's goals: the whole call p50 under 60 µs in-process and under 300 µs
with Redis. Issue 23's: Redis CPU per transaction ≤ 120 µs with `--days 30`.
Writes benchmarks/results/pipeline_steps.json.
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


#: Commands the store sends itself (the rest of INFO commandstats is the script's redis.calls,
#: except one SET per script call, the idempotency claim; and what this script sends).
_SENT = ("evalsha", "eval")
_OWN = ("config|resetstat", "info", "ping", "script|load", "client|setinfo", "flushall", "config")


def _redis_stats(client: Any) -> tuple[dict[str, tuple[int, int]], float]:
    """Per command (calls, usec) from INFO commandstats, and Redis's CPU seconds (sys + user)."""
    stats = {}
    for name, row in client.info("commandstats").items():
        stats[name.removeprefix("cmdstat_")] = (int(row["calls"]), int(row["usec"]))
    cpu = client.info("cpu")
    return stats, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def redis_cpu(stats: dict[str, tuple[int, int]], cpu_s: float, transactions: int) -> dict[str, Any]:
    """Redis's CPU per transaction from the statistics of the measured part of a run."""
    scripts = sum(stats.get(c, (0, 0))[0] for c in _SENT)
    script_usec = sum(stats.get(c, (0, 0))[1] for c in _SENT)
    set_calls, set_usec = stats.get("set", (0, 0))
    record_sets = max(0, set_calls - scripts)  # the script SETs each claim; the writer each record
    record_usec = set_usec * record_sets / set_calls if set_calls else 0.0
    inner = {
        c: calls
        for c, (calls, _) in stats.items()
        if c not in _SENT and c not in _OWN and c != "set" and not c.startswith(("config", "client"))
    }
    inner["set"] = set_calls - record_sets
    per = max(1, transactions)
    return {
        "transactions": transactions,
        "command_us_per_txn": round((script_usec + record_usec) / per, 1),
        "script_us_per_call": round(script_usec / scripts, 1) if scripts else 0.0,
        "script_calls_per_txn": round(scripts / per, 3),
        "record_set_us_per_txn": round(record_usec / per, 1),
        "process_cpu_us_per_txn": round(cpu_s * 1e6 / per, 1),
        "redis_calls_per_txn": round(sum(inner.values()) / per, 1),
        "redis_calls_per_txn_by_command": {c: round(n / per, 2) for c, n in sorted(inner.items()) if n},
        "usec_per_txn_by_command": {c: round(u / per, 1) for c, (_, u) in sorted(stats.items()) if c not in _OWN},
    }


def simulated_transactions(days: int, users: int) -> list[Any]:
    """`days` of simulated traffic (every day, not only the last, unlike `shift_to_present`), as
    transactions moved to the present: the last one a minute ago. Shared with redis_groups.py and
    redis_instructions.py."""
    import pyarrow as pa

    from engine.offline.datasets import PRESETS, table_to_dataset
    from engine.offline.synthetic import generate

    rows = generate(days=days, users=users)
    shift = int(time.time() * 1000) - max(int(r["event_time_ms"]) for r in rows) - 60_000
    for r in rows:
        r["event_time_ms"] = int(r["event_time_ms"]) + shift
    return list(table_to_dataset(pa.Table.from_pylist(rows), PRESETS["native"]).transactions)


def measure(store_name: str, days: int, users: int, warmup: int, redis_url: str | None) -> dict[str, Any]:
    from engine.model.predictor import load_model
    from engine.pipeline import Pipeline
    from engine.rules.loader import load_ruleset
    from engine.service.server import tune_gc
    from engine.windows.fallback import FallbackPolicy, FallbackWindows
    from engine.windows.memory import MemoryStore
    from engine.windows.redis_store import RedisStore
    from engine.windows.store import WindowStore

    transactions = simulated_transactions(days, users)
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
    client = None
    if isinstance(store, RedisStore):
        import redis

        client = redis.Redis.from_url(str(redis_url))
    before: tuple[dict[str, tuple[int, int]], float] = ({}, 0.0)
    for i, txn in enumerate(transactions):
        if i == warmup and client is not None:
            store.flush()  # the warm-up's retry records written before the statistics are reset
            client.config_resetstat()
            before = _redis_stats(client)
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
    redis_cost = None
    if client is not None:
        store.flush()  # every measured transaction's record written
        after = _redis_stats(client)
        stats = {
            c: (n - before[0].get(c, (0, 0))[0], u - before[0].get(c, (0, 0))[1]) for c, (n, u) in after[0].items()
        }
        redis_cost = redis_cpu(stats, after[1] - before[1], len(calls))
        client.close()
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
        "redis_cpu": redis_cost,
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
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "pipeline_steps.json"), help="where the JSON goes"
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
    costs = [r for r in results if r["redis_cpu"]]
    if costs:
        print()
        print(f"Redis CPU per transaction ({args.days} days; goal with --days 30: ≤ 120 µs):")
        print(
            "| store | command µs / txn | script µs / call | record SETs µs / txn | process CPU µs / txn"
            " | redis.calls / txn |"
        )
        print("|---|---|---|---|---|---|")
        for r in costs:
            c = r["redis_cpu"]
            print(
                f"| {r['store']} | {c['command_us_per_txn']} | {c['script_us_per_call']} | {c['record_set_us_per_txn']}"
                f" | {c['process_cpu_us_per_txn']} | {c['redis_calls_per_txn']} |"
            )
            print("  redis.calls / txn:", ", ".join(f"{k} {v}" for k, v in c["redis_calls_per_txn_by_command"].items()))
    out = {
        "days": args.days,
        "results": results,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/pipeline_steps.py " + " ".join(sys.argv[1:]),
    }
    path = Path(args.out)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
