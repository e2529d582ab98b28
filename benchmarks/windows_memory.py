"""Redis memory of the window state: per entity, projected to one million, and one hot merchant.

    .venv/bin/python benchmarks/windows_memory.py [--entities 20000]

Starts a throwaway redis-server, writes the shipped rules' windows for
`--entities` cards (each with its own user, device and IP, 5 transactions a
day for 3 days, one merchant per card out of 1,000) and reports `used_memory`
per active entity set (card + user + device + IP + their share of merchants),
projected to one million; then one hot merchant with 200,000 transactions over
30 days (about 6,700 a day) and the size of each of its keys (MEMORY USAGE).
Writes benchmarks/results/windows_memory.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.rules.loader import load_ruleset  # noqa: E402
from engine.windows.redis_store import RedisStore  # noqa: E402
from tests.support.redis import RedisProcess, free_port  # noqa: E402

T0 = 1_767_225_600_000
DAY = 86_400_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--hot", type=int, default=200_000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "windows_memory.json"))
    args = parser.parse_args()
    plan = load_ruleset(ROOT / "rules").windows
    proc = RedisProcess(free_port(), Path(tempfile.mkdtemp()))
    proc.start()
    client = redis.Redis(port=proc.port)
    results: dict[str, object] = {}
    try:
        store = RedisStore(proc.url, budget_s=5.0, prefix="m")
        base = client.info("memory")["used_memory"]
        n = 0
        for day in range(3):
            for k in range(5):
                for e in range(args.entities):
                    t = T0 + day * DAY + k * 3 * 3_600_000 + e
                    fields = {
                        "card_id": f"card{e}", "user_id": f"user{e}", "device_id": f"dev{e}",
                        "ip": f"10.{e // 65536}.{e // 256 % 256}.{e % 256}", "merchant_id": f"m{e % 1000}",
                        "amount_base_minor": 1000 + e % 5000, "ip_country": ["DE", "FR", ""][e % 3], "attributes": {},
                    }  # fmt: skip
                    store.apply(plan, plan.bind(f"t{n}", t, fields), "")
                    n += 1
        # Idempotency records are not window state: drop them before measuring.
        for key in client.scan_iter(match="m:idem:*", count=5000):
            client.delete(key)
        used = client.info("memory")["used_memory"] - base
        per = used / args.entities
        results["entities"] = {
            "active_cards": args.entities,
            "transactions": n,
            "window_bytes_total": used,
            "bytes_per_card_with_its_user_device_ip": round(per),
            "projected_bytes_for_1M": round(per * 1_000_000),
            "projected_GiB_for_1M": round(per * 1_000_000 / 2**30, 2),
        }
        client.flushall()
        hot = RedisStore(proc.url, budget_s=5.0, prefix="h")
        step = 30 * DAY // args.hot
        started = time.perf_counter()
        for i in range(args.hot):
            fields = {
                "card_id": f"hc{i % 50_000}", "user_id": "", "device_id": "", "ip": "",
                "merchant_id": "hot", "amount_base_minor": 100 + i % 900, "ip_country": "DE", "attributes": {},
            }  # fmt: skip
            hot.apply(plan, plan.bind(f"h{i}", T0 + i * step, fields), "")
        elapsed = time.perf_counter() - started
        sizes = {key.decode(): client.memory_usage(key) for key in client.scan_iter(match="{h:merchant_id:hot}*")}
        results["hot_merchant"] = {
            "transactions_over_30d": args.hot,
            "keys_bytes": sizes,
            "members": {k: client.zcard(k) if client.type(k) == b"zset" else client.hlen(k) for k in sizes},
            "mean_apply_us": round(elapsed / args.hot * 1e6, 1),
        }
        results["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
    finally:
        client.close()
        proc.stop()


if __name__ == "__main__":
    main()
