"""Shared fixtures: a real Redis we start ourselves, a model trained by the project, a live server.

Redis: when REDIS_URL is set the tests use it under a unique key prefix that
they delete afterwards; otherwise they start `redis-server` from PATH on a
free port. Neither available is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis

from engine.config import ServeConfig
from engine.offline.synthetic import generate, write_parquet
from engine.offline.train import train
from engine.service.pb import risk_pb2_grpc
from engine.service.server import Running, start
from engine.windows.memory import MemoryStore
from engine.windows.redis_store import RedisStore
from engine.windows.store import WindowStore

ROOT = Path(__file__).resolve().parent.parent
# The review desk's fixtures (PostgreSQL database, engine with a decision log, console process).
pytest_plugins = ["tests.desk_fixtures"]
RULES = ROOT / "rules"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A redis-server child process that tests can stop and start again on the same port."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH and REDIS_URL is not set: "
                "install redis-server (apt-get install redis-server) or set REDIS_URL"
            )
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--enable-debug-command",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """Our own redis-server (even when REDIS_URL is set: tests that stop Redis need their own)."""
    proc = RedisProcess(free_port(), tmp_path_factory.mktemp("redis"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(url, prefix) of a Redis for this test; keys under the prefix are deleted afterwards."""
    url = os.environ.get("REDIS_URL") or request.getfixturevalue("redis_process").url
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield url, prefix
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_parquet(generate(days=30, users=300), tmp_path_factory.mktemp("data") / "synthetic.parquet")


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


@pytest.fixture(scope="session")
def train_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "train.yaml"
    path.write_text(TEST_TRAIN_CONFIG)
    return path


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Path, train_config: Path) -> Path:
    """A model registry with one model trained by the project's own command on synthetic data."""
    out = tmp_path_factory.mktemp("models")
    train(synthetic_data, RULES, train_config, out, promote=True, quiet=True)
    return out


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
    )
    return replace(config, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def server(trained_registry: Path, redis_url: tuple[str, str]) -> Iterator[Running]:
    """A live server on a real socket: shipped rules, a trained model, a real Redis."""
    running = start(make_config(trained_registry, redis_url))
    yield running
    running.stop(0.5)


@pytest.fixture
def stub(server: Running) -> Iterator[risk_pb2_grpc.RiskEngineStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield risk_pb2_grpc.RiskEngineStub(channel)
    channel.close()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[WindowStore]:
    """A window store test runs against the in-process store and a real Redis."""
    if request.param == "memory":
        yield MemoryStore()
    else:
        url, prefix = request.getfixturevalue("redis_url")
        s = RedisStore(url, prefix=prefix, budget_s=2.0)
        yield s
        s.close()
