"""Latency of `Score` over loopback: a real server process, a real Redis, the shipped rules and model.

    python benchmarks/score_latency.py [--requests 5000] [--warmup 500] [--store redis|memory]

Starts its own redis-server on a free port (or uses --redis-url), starts
`risk-engine serve` as a separate process, sends synthetic gateway traffic
(engine.offline.synthetic, moved to the present) with one request in flight,
and reports p50 / p90 / p99 / p99.9 of the client-observed latency, plus the
server-side `elapsed_us` the responses carry. Writes benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.offline.datasets import PRESETS, table_to_dataset  # noqa: E402
from engine.offline.synthetic import generate  # noqa: E402
from engine.service.convert import from_transaction  # noqa: E402
from engine.service.pb import risk_pb2, risk_pb2_grpc  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(port: int, proc: subprocess.Popen[bytes]) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited during start")
        try:
            if (
                health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                == health_pb2.HealthCheckResponse.SERVING
            ):
                channel.close()
                return
        except grpc.RpcError:
            time.sleep(0.1)
    raise SystemExit("the server did not become SERVING within 60 s")


def requests(n: int) -> list[risk_pb2.ScoreRequest]:
    """The last n transactions of a synthetic stream, moved to the present."""
    rows = generate(days=7, users=5000, merchants=300)[-n:]  # ~10k a day: the last n fit in the accepted day
    txns = table_to_dataset(pa.Table.from_pylist(rows), PRESETS["native"]).transactions
    shift = int(time.time() * 1000) - 60_000 - txns[-1].event_time_ms
    run = time.time_ns()
    return [
        from_transaction(
            replace(t, transaction_id=f"bench-{run}-{t.transaction_id}", event_time_ms=t.event_time_ms + shift)
        )
        for t in txns
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument(
        "--store",
        choices=("redis", "memory", "trivial"),
        default="redis",
        help="window store of the engine, or 'trivial': a server returning a fixed response (the gRPC ceiling)",
    )
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()

    redis_proc = None
    workdir = tempfile.mkdtemp(prefix="bench-")
    redis_url = args.redis_url
    if args.store == "redis" and not redis_url:
        port = free_port()
        redis_proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
        )
        redis_url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.3)
    port = free_port()
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--port", str(port)]
    if args.store == "trivial":
        cmd = [sys.executable, str(ROOT / "benchmarks" / "trivial_server.py"), str(port)]
    if args.store == "redis":
        cmd += ["--redis-url", redis_url]
    server = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_serving(port, server)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        reqs = requests(args.requests + args.warmup)
        for r in reqs[: args.warmup]:
            stub.Score(r, timeout=5)
        lat = []
        server_us = []
        degraded = 0
        decisions: dict[str, int] = {}
        started = time.perf_counter()
        for r in reqs[args.warmup :]:
            t0 = time.perf_counter()
            resp = stub.Score(r, timeout=5)
            lat.append(time.perf_counter() - t0)
            server_us.append(resp.elapsed_us)
            degraded += resp.degraded
            name = risk_pb2.Decision.Name(resp.decision)
            decisions[name] = decisions.get(name, 0) + 1
        wall = time.perf_counter() - started
        ms = np.array(lat) * 1000
        result = {
            "benchmark": "score_latency, 1 request in flight, loopback",
            "store": args.store,
            "requests": len(lat),
            "rate_per_s": round(len(lat) / wall, 1),
            "client_ms": {
                q: round(float(np.percentile(ms, p)), 3)
                for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
            },
            "server_pipeline_us": {q: int(np.percentile(server_us, p)) for q, p in (("p50", 50), ("p99", 99))},
            "degraded": degraded,
            "decisions": decisions,
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": platform.processor() or platform.machine(),
                "python": platform.python_version(),
            },
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        out = ROOT / "benchmarks" / "results" / f"score_latency_{args.store}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        channel.close()
    finally:
        server.terminate()
        server.wait(15)
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
