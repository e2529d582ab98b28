"""Soak: the fault sequence of benchmarks/faults.py, longer and repeated, against the shipped rules and model.

    python benchmarks/soak.py [--rounds 3] [--hold 5] [--threads 4] [--pause 0.01] [--out benchmarks/results/soak.json]

Starts its own redis-server and `risk-engine serve` (copies of rules/ and
models/ in a scratch folder), runs every fault `--rounds` times with
`--hold` seconds of each fault under load, and writes the counts per fault
(summed over rounds): calls, OK, degraded, errors by status code, slowest
call, worst recovery time, and whether the probe counts matched (nothing
counted twice). Also the server's memory before and after. Exits 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.faults import Server, run_faults  # noqa: E402
from tests.support.redis import RedisProcess, free_port  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hold", type=float, default=5.0, help="seconds each fault lasts")
    parser.add_argument("--threads", type=int, default=4, help="client threads of steady load")
    parser.add_argument("--pause", type=float, default=0.01, help="pause between a thread's calls, s")
    parser.add_argument("--model", default=str(ROOT / "models"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    redis_proc = RedisProcess(free_port(), work)
    redis_proc.start()
    server = Server(work / "srv", ROOT / "rules", Path(args.model), redis_proc.url)
    totals: dict[str, dict[str, object]] = {}
    failures: list[str] = []
    started = time.time()
    try:
        server.start()
        rss_start = server.rss_kb()
        for round_ in range(args.rounds):
            counts = run_faults(
                server,
                redis_proc,
                hold_s=args.hold,
                threads=args.threads,
                pause_s=args.pause,
                log=lambda line, r=round_: print(f"round {r + 1}: {line}", flush=True),
            )
            for name, c in counts.items():
                t = totals.setdefault(
                    name,
                    {"calls": 0, "ok": 0, "degraded": 0, "errors": {}, "max_latency_ms": 0.0, "max_recovery_s": 0.0},
                )
                t["calls"] = int(t["calls"]) + c.calls  # type: ignore[call-overload]
                t["ok"] = int(t["ok"]) + c.ok  # type: ignore[call-overload]
                t["degraded"] = int(t["degraded"]) + c.degraded  # type: ignore[call-overload]
                errors = t["errors"]
                assert isinstance(errors, dict)
                for code, n in c.errors.items():
                    errors[code] = errors.get(code, 0) + n
                t["max_latency_ms"] = max(float(t["max_latency_ms"]), round(c.max_latency_ms, 1))  # type: ignore[arg-type]
                t["max_recovery_s"] = max(float(t["max_recovery_s"]), round(c.recovery_s, 2))  # type: ignore[arg-type]
                if name != "baseline" and c.probe_count_after != c.probe_distinct + 1:
                    failures.append(f"round {round_ + 1} {name}: probe {c.probe_count_after} != {c.probe_distinct}+1")
                if name != "sigterm" and c.errors:
                    failures.append(f"round {round_ + 1} {name}: errors {dict(c.errors)}")
        rss_end = server.rss_kb()
    finally:
        server.kill()
        redis_proc.stop()
    result = {
        "rounds": args.rounds,
        "hold_s": args.hold,
        "threads": args.threads,
        "pause_s": args.pause,
        "seconds": round(time.time() - started, 1),
        "machine": f"{platform.machine()} {platform.system()}, python {platform.python_version()}",
        "server_rss_kb": {"start": rss_start, "end": rss_end},
        "faults": totals,
        "failures": failures,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
