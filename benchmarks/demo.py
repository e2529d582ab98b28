"""The engine at work, in one command: a server, simulated traffic through it, decisions and latency live.

    make demo                                   # = python benchmarks/demo.py
    python benchmarks/demo.py --duration 60 --rate 30 [--all] [--redis-url redis://...]

Starts `risk-engine serve` (shipped rules and model, the embedded window store unless
--redis-url) on a free port, simulates a day of gateway traffic with labeled attacks
(engine.offline.synthetic: card testing, account takeover, device farms, geo mismatch,
bust-outs, a compromised merchant), moves it to the present and sends it at --rate per second.
Every flagged payment is printed with its reasons and the simulator's ground truth, allowed
ones are sampled (--all prints every one), and a status line every two seconds shows the
decision counts and the client-observed latency percentiles. Stops after --duration seconds or
on Ctrl-C, and stops the server either way.
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from loadgen import Service, free_port, percentile  # noqa: E402

from engine.offline.synthetic import generate, shift_to_present  # noqa: E402
from engine.service.traffic import stream  # noqa: E402

COLOURS = {"deny": "\033[31m", "review": "\033[33m", "allow": "\033[32m"}
RESET = "\033[0m"


class Display:
    def __init__(self, show_all: bool, colour: bool, sample_every: int = 10) -> None:
        self.show_all, self.colour, self.sample_every = show_all, colour, sample_every
        self.started = time.monotonic()
        self.last_status = self.started
        self.recent: deque[tuple[float, float]] = deque()
        self.all_ms: list[float] = []
        self.decisions: Counter[str] = Counter()
        self.caught: Counter[str] = Counter()  # attacks flagged, by scenario
        self.attacks: Counter[str] = Counter()
        self.false_flags = 0
        self.errors: Counter[str] = Counter()
        self.n = 0

    def paint(self, text: str, decision: str) -> str:
        return f"{COLOURS.get(decision, '')}{text}{RESET}" if self.colour else text

    def __call__(self, row: dict[str, Any], resp: Any, ms: float, code: str | None) -> None:
        from engine.service.pb import risk_pb2

        self.n += 1
        now = time.monotonic()
        self.recent.append((now, ms))
        while self.recent and self.recent[0][0] < now - 5:
            self.recent.popleft()
        bisect.insort(self.all_ms, ms)
        truth = row["scenario"]
        if truth != "genuine":
            self.attacks[truth] += 1
        if code is not None:
            self.errors[code] += 1
            print(f"  error {code} for {row['transaction_id']}")
        else:
            decision = risk_pb2.Decision.Name(resp.decision).removeprefix("DECISION_").lower()
            self.decisions[decision] += 1
            flagged = decision != "allow"
            if flagged and truth != "genuine":
                self.caught[truth] += 1
            elif flagged:
                self.false_flags += 1
            if flagged or self.show_all or truth != "genuine" or self.n % self.sample_every == 0:
                self.line(row, resp, decision, ms)
        if now - self.last_status >= 2:
            self.last_status = now
            self.status()

    def line(self, row: dict[str, Any], resp: Any, decision: str, ms: float) -> None:
        amount = row["amount_minor"] / (1 if row["currency"] == "JPY" else 100)
        reasons = ", ".join(r.code for r in resp.reasons) or "-"
        shadow = ", ".join(r.code for r in resp.shadow_reasons)
        truth = row["scenario"]
        score = "  nan" if resp.score != resp.score else f"{resp.score:.3f}"
        head = self.paint(f"{decision:6}", decision)
        print(
            f"{time.strftime('%H:%M:%S')} {head} score {score}  {amount:>10,.2f} {row['currency']}"
            f"  {row['channel']:12} {row['card_id']:<16} mcc {row['merchant_category']}  {ms:5.1f} ms"
            f"  truth: {truth:<20} reasons: {reasons}" + (f"  shadow: {shadow}" if shadow else ""),
            flush=True,
        )

    def status(self) -> None:
        recent = sorted(ms for _, ms in self.recent)
        elapsed = time.monotonic() - self.started
        d = self.decisions
        print(
            f"--- {elapsed:5.0f} s  {self.n:,} sent ({self.n / max(elapsed, 1e-9):.0f}/s)"
            f"  allow {d['allow']:,} review {d['review']:,} deny {d['deny']:,}"
            f"  | latency last 5 s p50 {percentile(recent, 50):.2f} p99 {percentile(recent, 99):.2f} ms"
            f"  all p50 {percentile(self.all_ms, 50):.2f} p99 {percentile(self.all_ms, 99):.2f}"
            f" p99.9 {percentile(self.all_ms, 99.9):.2f} ms" + (f"  errors {dict(self.errors)}" if self.errors else ""),
            flush=True,
        )

    def summary(self) -> None:
        self.status()
        print("\nattacks flagged (review or deny) by the shipped rules and model, per scenario:")
        for scenario, n in sorted(self.attacks.items()):
            print(f"  {scenario:22} {self.caught[scenario]:>4} of {n:>4}")
        genuine = self.n - sum(self.attacks.values())
        print(f"  genuine payments flagged: {self.false_flags:,} of {genuine:,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to stream (default 30)")
    parser.add_argument("--rate", type=float, default=25.0, help="transactions per second (default 25)")
    parser.add_argument("--users", type=int, default=0, help="simulated users (default: enough for the duration)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--redis-url", default="", help="use this Redis for the windows (default: embedded store)")
    parser.add_argument("--all", action="store_true", help="print every transaction, not a sample of allowed ones")
    parser.add_argument("--no-colour", action="store_true")
    args = parser.parse_args(argv)

    users = args.users or max(300, int(args.rate * args.duration / 1.6))
    rows = shift_to_present(generate(days=1, users=users, merchants=max(users // 10, 30), seed=args.seed))
    print(f"simulated {len(rows):,} transactions of {users:,} users (one day, moved to the present)")

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RISK_METRICS_PORT": "off", "RISK_ADMIN_PORT": "off"}
    env.pop("REDIS_URL", None)
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--port", str(port)]
    cmd += ["--rules", str(ROOT / "rules"), "--model", str(ROOT / "models")]
    if args.redis_url:
        cmd += ["--redis-url", args.redis_url]
    logdir = Path(tempfile.mkdtemp(prefix="demo-"))
    print(f"starting risk-engine serve on 127.0.0.1:{port} (log: {logdir / 'server-demo.log'}) ...", flush=True)
    server = Service("demo", cmd, port, logdir / "server-demo.log", env, new_session=True)
    display = Display(args.all, sys.stdout.isatty() and not args.no_colour)
    try:
        server.wait_serving()
        print(
            f"serving ({'Redis' if args.redis_url else 'embedded'} store, shipped rules and model);"
            f" streaming at {args.rate:g}/s for {args.duration:g} s, Ctrl-C stops\n",
            flush=True,
        )
        display.started = display.last_status = time.monotonic()
        stream(rows, f"127.0.0.1:{port}", args.rate, duration_s=args.duration, on_response=display)
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        server.stop()
    display.summary()
    print("server stopped")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        sys.exit(130)
