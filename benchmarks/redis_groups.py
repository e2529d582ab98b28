"""Where the Redis script's time goes: its cost per window group of the shipped plan.

    python benchmarks/redis_groups.py [--days 30] [--users 4000] [--warmup 2000]

Scores the stream of `benchmarks/pipeline_steps.py` (simulated traffic moved to the
present, the shipped rules and model) through a Redis store that sends each window group
of a transaction in a script call of its own (same script, same keys), and reads Redis's
SLOWLOG with a threshold of 0: the microseconds of every call, summed per group (named by
its key ends). Each call pays the script's fixed cost (a few µs: the call, the plan's
layout table, the idempotency record); the last column's `calls` are the commands the
script made for that group (INFO commandstats, measured one group at a time would take
14 runs: here they are the whole plan's, per transaction). Writes
benchmarks/results/redis_groups.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "redis_groups.json"))
    args = parser.parse_args()

    import redis

    from benchmarks.loadgen import start_redis
    from benchmarks.pipeline_steps import simulated_transactions
    from engine.model.predictor import load_model
    from engine.pipeline import Pipeline
    from engine.rules.loader import load_ruleset
    from engine.windows.redis_store import RedisStore, _key_ends
    from engine.windows.spec import BoundWindows, WindowPlan
    from engine.windows.store import WindowsOutcome

    class PerGroupStore(RedisStore):
        """One script call per group (each with an idempotency record of its own)."""

        def apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str) -> WindowsOutcome:
            raw = [0] * plan.raw_size
            for i, bg in enumerate(bound.groups):
                one = bound._replace(transaction_id=f"{bound.transaction_id}#{i}", groups=(bg,))
                out = super().apply(plan, one, fingerprint)
                for k, v in enumerate(out.raw):
                    raw[k] += v
            return WindowsOutcome(replay=None, raw=tuple(raw))

    transactions = simulated_transactions(args.days, args.users)
    ruleset = load_ruleset(ROOT / "rules")
    model = load_model(ROOT / "models", ruleset)
    plan = ruleset.windows
    names = {
        "".join(_key_ends(g)) + (f" ({g.tag})" if g.tag else ""): g for g in plan.groups
    }  # a readable name per group
    by_key = {(g.tag, _key_ends(g)[0]): name for name, g in names.items()}

    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp))
        url = f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(url)
        store = PerGroupStore(url, prefix="bench-groups", write_behind=False)
        now = [0.0]
        pipeline = Pipeline(ruleset, model, store, clock=lambda: now[0])
        usec: dict[str, list[int]] = {name: [0, 0] for name in names}
        measured = 0
        unknown = [0]

        def drain() -> None:
            for entry in client.slowlog_get(-1):
                cmd = entry["command"].split(b" ")
                if cmd[0].upper() != b"EVALSHA" or len(cmd) < 5:
                    continue
                key = cmd[4].decode()  # after the sha, the key count and the idempotency record
                tag_end = key.index("}") + 1
                tag = key[1 : tag_end - 1].split(":")[1]
                name = by_key.get((tag, key[tag_end:]))
                if name is not None:
                    usec[name][0] += entry["duration"]
                    usec[name][1] += 1
                else:
                    unknown[0] += 1
            client.slowlog_reset()

        try:
            for i, txn in enumerate(transactions):
                now[0] = txn.event_time_ms / 1000 + 1.0
                if i == args.warmup:
                    client.config_set("slowlog-max-len", 200_000)
                    client.config_set("slowlog-log-slower-than", 0)
                    client.slowlog_reset()
                    client.config_resetstat()
                pipeline.score(txn)
                if i >= args.warmup:
                    measured += 1
                    if measured % 500 == 0:
                        drain()
            drain()
            stats = {k.removeprefix("cmdstat_"): v for k, v in client.info("commandstats").items()}
        finally:
            store.close()
            client.close()
            server.stop()

    total = sum(u for u, _ in usec.values())
    if unknown[0]:
        print(f"({unknown[0]} script calls not matched to a group)")
    rows_out: list[dict[str, Any]] = []
    print(f"Script µs per transaction by group ({args.days} days, {measured:,} transactions, one call per group):")
    print("| group | µs / txn | share | calls / txn | µs / call |")
    print("|---|---|---|---|---|")
    for name, (u, n) in sorted(usec.items(), key=lambda kv: -kv[1][0]):
        row = {
            "group": name,
            "us_per_txn": round(u / measured, 1),
            "share": round(u / total, 3) if total else 0.0,
            "calls_per_txn": round(n / measured, 3),
            "us_per_call": round(u / n, 1) if n else 0.0,
        }
        rows_out.append(row)
        print(f"| {name} | {row['us_per_txn']} | {row['share']:.0%} | {row['calls_per_txn']} | {row['us_per_call']} |")
    print(f"| total | {total / measured:.1f} | | | |")
    inner = {
        c: round(v["calls"] / measured, 2)
        for c, v in stats.items()
        if c not in ("evalsha", "eval", "slowlog|get", "slowlog|reset", "config|set", "config|resetstat", "info")
    }
    print("redis.calls / txn:", inner)
    Path(args.out).write_text(
        json.dumps(
            {
                "days": args.days,
                "transactions": measured,
                "groups": rows_out,
                "total_us_per_txn": round(total / measured, 1),
                "redis_calls_per_txn": inner,
                "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "command": "python benchmarks/redis_groups.py " + " ".join(sys.argv[1:]),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
