"""Does the review desk change `Score` latency? The engine with its decision log, with and without a console.

    python benchmarks/desk_score_latency.py [--requests 3000] [--rounds 2] [--server postgresql://...]

Starts a redis-server and `risk-engine serve` (shipped rules and model,
Redis store, `--decision-log`) as separate processes and sends the
synthetic traffic of `score_latency.py` one request in flight. Rounds
alternate two phases of `--requests` calls each: without a console, and
with `risk-engine console` tailing the decision log into a PostgreSQL
database of its own (every decision into the history table, every review
into a case). Alternating cancels out slow drifts of a shared machine. It
reports client latency percentiles per phase, and for the console phases
how long a decision took to become a case (the case's `created_at_ms` minus
the decision's `decided_at_ms`). Writes benchmarks/results/desk_score_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import httpx
import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from score_latency import free_port, requests, wait_serving  # noqa: E402

from engine.service.pb import risk_pb2_grpc  # noqa: E402


def percentiles(values: list[float]) -> dict[str, float]:
    ms = np.array(values) * 1000
    return {
        q: round(float(np.percentile(ms, p)), 3) for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="calls per phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="desk-bench-"))
    name = f"desk_lat_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = f"{args.server.rpartition('/')[0]}/{name}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    redis_port, port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    shutil.which("redis-server") or "redis-server",
                    *("--port", str(redis_port), "--save", "", "--appendonly", "no", "--dir", str(work)),
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        time.sleep(0.3)
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "engine.cli", "serve", "--port", str(port)),
                *("--redis-url", f"redis://127.0.0.1:{redis_port}/0", "--decision-log", str(work / "decisions")),
                *("--metrics-port", "off", "--admin-port", "off"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(server)
        wait_serving(port, server)
        stub = risk_pb2_grpc.RiskEngineStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        reqs = requests(args.warmup + 2 * args.rounds * args.requests)
        now_ms = int(time.time() * 1000)
        for i, r in enumerate(reqs):  # the traffic squeezed into the last minutes: all inside the accepted day
            when = now_ms - (len(reqs) - i) * 50
            r.transaction.event_time.seconds, r.transaction.event_time.nanos = when // 1000, when % 1000 * 1_000_000
        for r in reqs[: args.warmup]:
            stub.Score(r, timeout=5)
        phases: dict[str, list[float]] = {"without console": [], "with console": []}
        shed = dict.fromkeys(phases, 0)
        console_windows: list[tuple[int, int]] = []  # (from, to) ms of the phases with a console running
        at = args.warmup
        for _ in range(args.rounds):
            for phase in ("without console", "with console"):
                console = None
                if phase == "with console":
                    console_port = free_port()
                    console = subprocess.Popen(
                        [
                            *(sys.executable, "-m", "engine.cli", "console", "--db", db),
                            *("--port", str(console_port), "--decision-log", str(work / "decisions")),
                            *("--engine", "off"),
                        ],
                        cwd=work,
                        env=env,
                        stdout=open(work / "console.log", "ab"),
                        stderr=subprocess.STDOUT,
                    )
                    deadline = time.monotonic() + 60
                    while True:  # serving, and caught up with what the log holds so far
                        try:
                            serving = httpx.get(f"http://127.0.0.1:{console_port}/healthz", timeout=2).is_success
                            with psycopg.connect(db) as conn:
                                row = conn.execute("SELECT count(*) FROM decisions").fetchone()
                            if serving and row is not None and row[0] >= at:
                                break
                        except (httpx.HTTPError, psycopg.Error):
                            pass
                        if time.monotonic() > deadline:
                            log = (work / "console.log").read_text(errors="replace")[-3000:]
                            raise SystemExit(f"the console did not catch up with the decision log:\n{log}")
                        time.sleep(0.2)
                began = int(time.time() * 1000)
                for r in reqs[at : at + args.requests]:
                    t0 = time.perf_counter()
                    try:
                        stub.Score(r, timeout=5)
                    except grpc.RpcError as exc:  # shed by the server (a starved machine): counted, not timed
                        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        shed[phase] += 1
                        continue
                    phases[phase].append(time.perf_counter() - t0)
                at += args.requests
                if console is not None:
                    console_windows.append((began, int(time.time() * 1000)))
                    time.sleep(2)  # let it project the phase's last lines
                    console.terminate()
                    console.wait(15)
        with psycopg.connect(db) as conn:
            rows = conn.execute("SELECT decided_at_ms, created_at_ms FROM cases").fetchall()
            n_decisions = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]  # type: ignore[index]
        # Reviews decided while a console ran along (the others were caught up when a console started).
        lag_phase = [int(c - d) for d, c in rows if any(a <= d <= b for a, b in console_windows)]
        result = {
            "benchmark": "desk_score_latency: Score, one request in flight, engine with decision log, with and "
            "without risk-engine console projecting it into PostgreSQL",
            "requests_per_phase": args.requests,
            "rounds": args.rounds,
            "client_ms": {phase: percentiles(values) for phase, values in phases.items()},
            "shed_resource_exhausted": shed,
            "decisions_projected": n_decisions,
            "cases": len(rows),
            "cases_decided_with_a_console_running": len(lag_phase),
            "decision_to_case_ms": {
                "p50": float(np.percentile(lag_phase, 50)) if lag_phase else None,
                "p99": float(np.percentile(lag_phase, 99)) if lag_phase else None,
                "max": max(lag_phase) if lag_phase else None,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        out = ROOT / "benchmarks" / "results" / "desk_score_latency.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        with psycopg.connect(args.server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
