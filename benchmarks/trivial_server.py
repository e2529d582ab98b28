"""A trivial RiskEngine server: returns a fixed ScoreResponse. The ceiling of Python gRPC on this machine.

python benchmarks/trivial_server.py PORT

Pinned to one core as `risk-engine serve` pins itself (`RISK_CPU_AFFINITY`, on by default): the
ceiling is the same server setup with nothing to do (unpinned it does about a fifth less and
costs more CPU per call, so comparing the engine with it would flatter the engine).

`TRIVIAL_BURN_US=N` makes each call first burn N µs of CPU in Python (a busy loop on the thread's
CPU clock): what gRPC's own cost per call becomes when a handler holds the GIL that long
(benchmarks/README.md, "Cost per call"): `TRIVIAL_BURN_US=235 python benchmarks/loadgen.py --targets trivial`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.service.server import pin_to_one_core

FIXED = risk_pb2.ScoreResponse(
    transaction_id="fixed",
    decision=risk_pb2.DECISION_ALLOW,
    score=0.01,
    ruleset_version="trivial",
    model_version="trivial",
    features={f"feature_{i}": float(i) for i in range(40)},
)


BURN_NS = int(float(os.environ.get("TRIVIAL_BURN_US", "0")) * 1000)


class Trivial(risk_pb2_grpc.RiskEngineServicer):
    def Score(self, request: risk_pb2.ScoreRequest, context: grpc.ServicerContext) -> risk_pb2.ScoreResponse:  # noqa: N802
        if BURN_NS:
            end = time.thread_time_ns() + BURN_NS
            while time.thread_time_ns() < end:
                pass
        return FIXED


def main() -> None:
    pin_to_one_core(0)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    risk_pb2_grpc.add_RiskEngineServicer_to_server(Trivial(), server)
    h = health.HealthServicer()
    h.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop(1).wait()


if __name__ == "__main__":
    main()
