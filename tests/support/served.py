"""A served engine for tests and benchmarks: its configuration, a trained model's config, health, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.config import ServeConfig
from tests.support import RULES

TEST_TRAIN_CONFIG = """
name: test-gbm
mapping: native
features: [amount, hour, is_night, card_count_10m, card_count_1d, card_avg_amount_7d, card_max_amount_30d,
           device_distinct_cards_1d, device_count_1h, ip_distinct_cards_1h, user_distinct_devices_1d]
split:
  train: ["2026-01-01", "2026-01-18"]
  early_stopping: ["2026-01-19", "2026-01-22"]
  test: ["2026-01-23", "2026-01-30"]
params: {metric: average_precision, learning_rate: 0.1, num_leaves: 15, min_data_in_leaf: 20}
num_boost_round: 200
early_stopping_rounds: 20
"""


def make_config(model: Path, redis: tuple[str, str] | None = None, **overrides: object) -> ServeConfig:
    config = ServeConfig(
        host="127.0.0.1",
        port=0,
        rules=RULES,
        model=model,
        redis_url=redis[0] if redis else "",
        redis_prefix=redis[1] if redis else "risk",
        threads=8,
        grace_s=2.0,
        metrics_port=0,
        # Shedding by queue wait and degrading past the Redis budget are tested where they are the
        # subject (test_overload.py, test_resilience.py set their own limits): elsewhere a busy test
        # machine must not turn a test's calls into RESOURCE_EXHAUSTED or degraded answers.
        max_queue_ms=10_000.0,
        redis_budget_ms=500.0,
    )
    return replace(config, **overrides)  # type: ignore[arg-type]


def health_metadata(channel: grpc.Channel) -> dict[str, str]:
    stub = health_pb2_grpc.HealthStub(channel)
    response, call = stub.Check.with_call(health_pb2.HealthCheckRequest(service="risk.v1.RiskEngine"), timeout=2)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    return {k: str(v) for k, v in call.trailing_metadata()}


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
