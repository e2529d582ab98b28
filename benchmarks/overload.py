"""Overload benchmark: what a `risk-engine serve` process answers when offered more than it can score.

    python benchmarks/overload.py                  # ~3 minutes: quiet, 1.5x and 3x the measured maximum
    python benchmarks/overload.py --max 1800       # skip the measurement of the maximum
    python benchmarks/overload.py --quick          # shorter phases (a smoke run)

One server process on the shipped rules and model, default settings, with its own redis-server, as
a gateway would run it; clients on the same machine (open loop: requests on a fixed schedule, each
with a 200 ms deadline, from `benchmarks/loadgen.py`'s client processes). Phases:

1. the maximum: closed loop at 32 in flight (or `--max`);
2. quiet: 300 requests a second;
3. 1.5x and 3x the maximum, open loop.

Through the quiet phase and each overload phase, a card-testing attack runs beside the load: 200
payments of 1.00 EUR on one card (a new card per phase), 20 a second, each with a 200 ms deadline,
from a client thread of this process. For each phase the report gives the share of answers scored,
degraded and shed (RESOURCE_EXHAUSTED), other errors, and the attack's outcomes (allow, review, deny,
refused). Deny, review and any refusal are safe; an allow of the attack is a fraud let through.
Results: benchmarks/results/overload.json and the table between the `overload` markers of
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import Runner, Service, build_pool, free_port, machine, start_redis, start_server  # noqa: E402

README_BEGIN = "<!-- overload:begin -->"
README_END = "<!-- overload:end -->"
DEADLINE_S = 0.2


class Attack:
    """200 payments of 1.00 EUR on one card, `rate` a second, each with a 200 ms deadline."""

    def __init__(self, port: int, payments: int = 200, rate: float = 20.0) -> None:
        self.port = port
        self.payments = payments
        self.rate = rate
        self.outcomes: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name="attack", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        import grpc
        from google.protobuf.timestamp_pb2 import Timestamp

        from engine.service.pb import risk_pb2, risk_pb2_grpc

        card = f"tok-attack-{uuid.uuid4().hex[:10]}"
        names = {v.number: v.name.removeprefix("DECISION_").lower() for v in risk_pb2.Decision.DESCRIPTOR.values}
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=[("grpc.use_local_subchannel_pool", 1)])
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        start = time.monotonic()
        for i in range(self.payments):
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ms = int(time.time() * 1000)
            txn = risk_pb2.Transaction(
                transaction_id=f"{card}-{i}",
                amount_minor=100,
                currency="EUR",
                card_id=card,
                user_id=f"u-{card}",
                device_id=f"fp-{uuid.uuid4().hex[:8]}",
                ip=f"85.214.132.{i % 250 + 1}",  # public addresses in Germany, like the card
                merchant_id="m-attacked",
                country="DE",
                channel=risk_pb2.CHANNEL_WEB,
            )
            txn.event_time.CopyFrom(Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000))
            try:
                resp = stub.Score(risk_pb2.ScoreRequest(transaction=txn), timeout=DEADLINE_S)
            except grpc.RpcError as exc:
                self.outcomes[exc.code().name] += 1
                continue
            self.outcomes[names[resp.decision] + (" (degraded)" if resp.degraded else "")] += 1
        channel.close()


def scrape(port: int) -> dict[str, float]:
    """The server's shed and degraded counters (for the report)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("risk_shed_total", "risk_degraded_total", "risk_store_errors_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def run_phase(
    runner: Runner, server: Service, metrics_port: int, name: str, rate: float, procs: int, attack: bool
) -> dict[str, Any]:
    before = scrape(metrics_port)
    hit = Attack(server.port) if attack else None
    if hit is not None:
        # The clients start 2.5 s after the call, then warm up: the attack runs in the measured part.
        threading.Timer(2.5 + runner.warmup_s, hit.start).start()
    result = runner.phase(server, "open", procs, rate=rate, label=name, timeout_s=DEADLINE_S)
    if hit is not None:
        time.sleep(0.5)
        hit.join()
    s = result.summary()
    answered = s["completed"]
    shed = s["errors"].get("RESOURCE_EXHAUSTED", 0)
    degraded = s["degraded"]
    scored = s["ok"] - degraded
    other = {k: v for k, v in s["errors"].items() if k != "RESOURCE_EXHAUSTED"}
    row = {
        "phase": name,
        "offered_per_s": round(rate),
        "answered_per_s": round(answered / runner.duration_s, 1),
        "calls": answered,
        "scored_pct": round(100 * scored / answered, 2) if answered else 0.0,
        "degraded_pct": round(100 * degraded / answered, 3) if answered else 0.0,
        "shed_pct": round(100 * shed / answered, 2) if answered else 0.0,
        "other_errors": other,
        "latency_ms": s["latency_ms"],
        "attack": dict(sorted(hit.outcomes.items())) if hit is not None else {},
        "server_counters": delta(scrape(metrics_port), before),
    }
    print(f"  {name}: {json.dumps({k: row[k] for k in ('scored_pct', 'degraded_pct', 'shed_pct', 'attack')})}")
    return row


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Run {report['when']} on {m.get('cpu', '?')} ({m.get('cpus', '?')} cores, load average"
        f" {m.get('load_average_at_end', '?')} at the end), `python benchmarks/overload.py`: one `risk-engine serve`"
        " process with default settings and its own Redis, open-loop clients on the same"
        f" box, 200 ms deadlines; maximum {report['max_per_s']:,.0f}/s ({report['max_source']}).",
        "",
        "| phase | offered /s | answered /s | scored | degraded | shed (RESOURCE_EXHAUSTED) | other errors |"
        " p50 / p99 ms | card-testing attack (200 payments of 1 EUR) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["phases"]:
        attack = ", ".join(f"{k} {v}" for k, v in r["attack"].items()) or "-"
        other = ", ".join(f"{k} {v}" for k, v in r["other_errors"].items()) or "0"
        lines.append(
            f"| {r['phase']} | {r['offered_per_s']:,} | {r['answered_per_s']:,.0f} | {r['scored_pct']:.1f} %"
            f" | {r['degraded_pct']:.2f} % | {r['shed_pct']:.1f} % | {other}"
            f" | {r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f} | {attack} |"
        )
    return "\n".join(lines)


def update_readme(table: str, path: Path) -> None:
    text = path.read_text()
    block = f"{README_BEGIN}\n{table}\n{README_END}"
    if README_BEGIN in text:
        head, rest = text.split(README_BEGIN, 1)
        text = head + block + rest.split(README_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Overload (`benchmarks/overload.py`)\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max", type=float, default=0.0, help="the server's maximum rate (default: measure it)")
    parser.add_argument("--quiet-rate", type=float, default=300.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per phase (>= 11: the attack)")
    parser.add_argument("--quick", action="store_true", help="shorter phases")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overload.json"))
    parser.add_argument("--readme", default=str(ROOT / "benchmarks" / "README.md"), help="'' to leave it alone")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.duration = 1.0, 11.0
    workdir = Path(tempfile.mkdtemp(prefix="overload-"))
    services: list[Service] = []
    try:
        peak = max(args.max, 1800.0) * 3
        size = build_pool(
            int(peak * (args.warmup + args.duration + 3) + args.quiet_rate * 20) + 20_000, workdir / "pool"
        )
        runner = Runner(workdir / "pool", size, args.warmup, args.duration)
        redis = start_redis(workdir)
        services.append(redis)
        metrics_port = free_port()
        server = start_server("redis", workdir, redis, metrics_port=metrics_port)
        services.append(server)
        source = "given with --max"
        maximum = args.max
        if not maximum:
            best = runner.phase(server, "closed", 1, 32, label="maximum", timeout_s=2.0)
            maximum, source = best.rate, "closed loop, 32 in flight, measured in this run"
        phases = [run_phase(runner, server, metrics_port, "quiet", args.quiet_rate, 1, attack=True)]
        for factor in (1.5, 3.0):
            phases.append(
                run_phase(runner, server, metrics_port, f"{factor}x maximum", maximum * factor, 2, attack=True)
            )
    finally:
        for svc in reversed(services):
            svc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "benchmark": "overload: shed, degraded and scored answers beyond capacity, with a card-testing attack",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "max_per_s": maximum,
        "max_source": source,
        "deadline_s": DEADLINE_S,
        "phases": phases,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    print()
    print(table)
    if args.readme:
        update_readme(table, Path(args.readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
