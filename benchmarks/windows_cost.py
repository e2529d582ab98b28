"""Per-transaction cost of the window step (`store.apply`), standalone Redis and Redis Cluster.

    .venv/bin/python benchmarks/windows_cost.py [--n 5000] [--without NAME,NAME] [--no-cluster]

Starts a throwaway redis-server and a 3+3 local cluster (tests/windows_cluster.py),
then applies N synthetic transactions (shipped rules' windows; 2,000 cards, 300
devices, 500 merchants, one minute apart on average) one at a time, and reports
the latency of each `apply` call (one Lua call on standalone; claim + one
pipeline per master on the cluster) and the in-process store's for reference,
and the CPU time per call: of this process for the in-process store, of the
redis-server (its INFO cpu counters) for standalone Redis, which a busy
machine disturbs far less than latency. `--without` leaves windows out of the
shipped plan, to see what they cost (the same stream, the same machine).
Writes benchmarks/results/windows_cost.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.rules.loader import load_ruleset  # noqa: E402
from engine.windows.memory import MemoryStore  # noqa: E402
from engine.windows.redis_cluster import RedisClusterStore  # noqa: E402
from engine.windows.redis_store import RedisStore  # noqa: E402
from tests.support.cluster import start_cluster  # noqa: E402
from tests.support.redis import RedisProcess, free_port  # noqa: E402


def stream(n: int) -> list[tuple[str, int, dict[str, object]]]:
    rng = random.Random(1)
    t = 1_767_225_600_000
    out = []
    for i in range(n):
        t += rng.randrange(0, 120_000)
        fields = {
            "card_id": f"c{rng.randrange(2000)}",
            "user_id": f"u{rng.randrange(1500)}",
            "device_id": f"d{rng.randrange(300)}",
            "ip": f"10.0.{rng.randrange(4)}.{rng.randrange(250)}",
            "merchant_id": f"m{rng.randrange(500)}",
            "amount_base_minor": rng.randrange(100, 100_000),
            "ip_country": rng.choice(["", "DE", "DE", "FR", "US", "CN"]),
            "attributes": {},
        }
        out.append((f"tx{i}", t, fields))
    return out


def redis_cpu_s(store: RedisStore) -> float:
    info = store._client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(store, plan, events, server_cpu=None) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Latency of each apply, and CPU per call: `server_cpu()` (seconds) when given, else this process's."""
    lat = []
    cpu = server_cpu or time.process_time
    cpu_before = cpu()
    for txid, t, fields in events:
        bound = plan.bind(txid, t, fields)
        started = time.perf_counter()
        store.apply(plan, bound, f"fp-{txid}")
        lat.append((time.perf_counter() - started) * 1e6)
    cpu_us = (cpu() - cpu_before) * 1e6 / len(events)
    lat.sort()
    return {
        "mean_us": round(statistics.fmean(lat), 1),
        "p50_us": round(lat[len(lat) // 2], 1),
        "p99_us": round(lat[int(len(lat) * 0.99)], 1),
        ("redis_cpu_us_per_call" if server_cpu else "cpu_us_per_call"): round(cpu_us, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "windows_cost.json"))
    parser.add_argument("--without", default="", help="windows of the shipped rules to leave out, comma-separated")
    parser.add_argument("--no-cluster", action="store_true", help="skip the Redis Cluster")
    args = parser.parse_args()
    shipped = load_ruleset(ROOT / "rules").windows
    left_out = {name for name in args.without.split(",") if name}
    unknown = left_out - set(shipped.names)
    if unknown:
        parser.error(f"--without: no such window {sorted(unknown)}")
    plan = shipped.subset([n for n in shipped.names if n not in left_out])
    events = stream(args.n)
    results: dict[str, object] = {
        "transactions": args.n,
        "windows": len(plan.specs),
        "groups": len(plan.groups),
        "without": sorted(left_out),
    }
    results["memory"] = measure(MemoryStore(), plan, events)
    work = Path(tempfile.mkdtemp())
    proc = RedisProcess(free_port(), work)
    proc.start()
    try:
        s = RedisStore(proc.url, budget_s=1.0)
        s.warm_up(plan)
        results["redis_standalone"] = measure(s, plan, events, lambda: redis_cpu_s(s))
        s.close()
    finally:
        proc.stop()
    if not args.no_cluster:
        cluster = start_cluster(work / "cluster")
        try:
            c = RedisClusterStore(cluster.nodes, budget_s=1.0)
            c.warm_up(plan)
            results["redis_cluster"] = measure(c, plan, events)
            c.close()
        finally:
            cluster.stop()
    results["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
