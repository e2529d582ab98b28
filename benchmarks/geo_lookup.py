"""Cost of `GeoDB.lookup` on the embedded database, with and without its LRU cache.

    python benchmarks/geo_lookup.py [--lookups 200000] [--distinct 5000] [--repeat 5]

Addresses are random public IPv4 addresses (private and reserved ranges excluded, as those
return before any lookup), as `ipaddress.IPv4Address` objects built beforehand. Three runs:

- `no cache`: every call walks the tree and decodes the record (`cache_size=0`);
- `cache, all distinct`: every call misses the cache (the worst case for the cache);
- `cache, N distinct`: the same N addresses over and over (repeat customers): almost all hits.

Reports the best of `--repeat` rounds as lookups/s and ns per lookup, prints the JSON and writes
it to benchmarks/results/geo_lookup.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import maxminddb  # noqa: E402

from engine.geo import DEFAULT_CACHE_SIZE, DEFAULT_DB_PATH, GeoDB, _reserved_v4  # noqa: E402


def public_ipv4(rng: random.Random, count: int) -> list[ipaddress.IPv4Address]:
    out: list[ipaddress.IPv4Address] = []
    while len(out) < count:
        value = rng.getrandbits(32)
        if not _reserved_v4(value):
            out.append(ipaddress.IPv4Address(value))
    return out


def best_rate(db: GeoDB, addrs: list[ipaddress.IPv4Address], repeat: int, clear: bool) -> float:
    lookup = db.lookup
    best = float("inf")
    for _ in range(repeat):
        if clear and db._cache is not None:
            db._cache.clear()
        start = time.perf_counter()
        for addr in addrs:
            lookup(addr)
        best = min(best, time.perf_counter() - start)
    return len(addrs) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--distinct", type=int, default=5_000, help="distinct addresses in the hit-path run")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    distinct = public_ipv4(rng, args.lookups)
    pool = public_ipv4(rng, args.distinct)
    repeated = [rng.choice(pool) for _ in range(args.lookups)]

    start = time.perf_counter()
    plain = GeoDB.open(DEFAULT_DB_PATH, cache_size=0)
    open_s = time.perf_counter() - start
    cached = GeoDB.open(DEFAULT_DB_PATH)
    known = sum(1 for addr in distinct[:20_000] if plain.lookup(addr).country) / min(20_000, len(distinct))

    runs = {
        "no cache": best_rate(plain, distinct, args.repeat, clear=False),
        "cache, all distinct (misses)": best_rate(cached, distinct, args.repeat, clear=True),
        f"cache, {args.distinct} distinct (hits)": best_rate(cached, repeated, args.repeat, clear=False),
    }
    result = {
        "database": f"{DEFAULT_DB_PATH.name} ({plain.description})",
        "reader": type(plain._reader).__module__ + "." + type(plain._reader).__name__,
        "maxminddb": maxminddb.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "open_gz_ms": round(open_s * 1e3, 1),
        "cache_size": DEFAULT_CACHE_SIZE,
        "lookups_per_run": args.lookups,
        "known_country_share": round(known, 3),
        "runs": {
            name: {"lookups_per_s": round(rate), "ns_per_lookup": round(1e9 / rate)} for name, rate in runs.items()
        },
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = ROOT / "benchmarks" / "results" / "geo_lookup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
