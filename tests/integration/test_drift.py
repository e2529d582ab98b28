"""The drift gauge of a real server process moves when the traffic it serves shifts.

A `risk-engine serve` process (embedded store, a model trained by the
project, so with reference histograms) scores the last simulated day, then
the same transactions with their amounts multiplied by 50. The PSI of the
amount, read from the /metrics endpoint, is small after the first and large
after the second; the test waits for the gauge's row count to include every
call, never for a time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from engine.offline.synthetic import generate, shift_to_present
from engine.service.pb import risk_pb2_grpc
from engine.service.traffic import to_request
from tests.support import ROOT
from tests.support.redis import free_port
from tests.support.requests import wait_serving
from tests.support.served import wait_for

pytestmark = pytest.mark.server


def gauges(port: int) -> dict[str, float]:
    """`risk_model_drift_psi` per feature, and `rows`, from the metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {m[1]: float(m[2]) for m in re.finditer(r'^risk_model_drift_psi\{feature="([^"]+)"\} (\S+)$', text, re.M)}
    rows = re.search(r"^risk_model_drift_rows (\S+)$", text, re.M)
    out["rows"] = float(rows[1]) if rows else 0.0
    return out


def test_the_drift_gauge_moves_when_the_served_amounts_shift(trained_registry: Path) -> None:
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RISK_DRIFT_INTERVAL_S": "0.2"}
    for name in ("REDIS_URL", "RISK_LOG_FORMAT", "RISK_METRICS_PORT"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "engine.cli", "serve", "--port", str(port), "--model", str(trained_registry)),
            *("--metrics-port", str(metrics_port), "--admin-port", "off", "--reload-interval", "0"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        wait_serving(channel, proc)
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        day = shift_to_present(generate(days=3, users=150, seed=11))[:400]

        for row in day:
            assert not stub.Score(to_request(row, "a-"), timeout=5).degraded
        wait_for(lambda: gauges(metrics_port)["rows"] == len(day), "the drift gauge to count the first calls")
        before = gauges(metrics_port)
        assert {"score", "amount"} <= set(before)
        assert before["amount"] < 0.25  # the same generator as the training data: no shift worth a look

        for row in day:
            shifted = {**row, "amount_minor": row["amount_minor"] * 50}
            stub.Score(to_request(shifted, "b-"), timeout=5)
        wait_for(lambda: gauges(metrics_port)["rows"] == 2 * len(day), "the drift gauge to count the shifted calls")
        after = gauges(metrics_port)
        assert after["amount"] > 0.25 and after["amount"] > before["amount"] + 0.25
        channel.close()
    finally:
        proc.terminate()
        proc.wait(20)
