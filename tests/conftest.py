"""Shared fixtures: a real Redis we start ourselves, a local cluster, a model trained by the project, a live server.

The code behind them is in `tests/support/` (shared with benchmarks/). Every
test is marked by what it needs, from its folder and its fixtures (see
`pytest_collection_modifyitems` and the markers in pyproject.toml).

Redis: when REDIS_URL is set the tests use it under a unique key prefix that
they delete afterwards; otherwise they start `redis-server` from PATH on a
free port. Neither available is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from engine.offline.synthetic import generate, write_parquet
from engine.offline.train import train
from engine.service.pb import risk_pb2_grpc
from engine.service.server import Running, start
from engine.windows.memory import MemoryStore
from engine.windows.redis_store import RedisStore
from engine.windows.store import WindowStore
from tests.support import ROOT, RULES
from tests.support.cluster import LocalCluster, start_cluster
from tests.support.desk import create_database, drop_database
from tests.support.redis import RedisProcess, free_port
from tests.support.served import TEST_TRAIN_CONFIG, make_config
from tests.support.spark import SparkCluster, start_spark_cluster


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


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis of this test alone, which it may stop, pause and restart."""
    proc = RedisProcess(free_port(), tmp_path)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One real local cluster for the session."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (127.0.0.1:5432, or DESK_TEST_PG), dropped afterwards."""
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture
def desk_rules(tmp_path: Path) -> Path:
    """The shipped rules in a folder of the test's own (the review desk's blocks write its list files)."""
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


@pytest.fixture
def desk_engine(desk_rules: Path, tmp_path: Path, redis_url: tuple[str, str]) -> Iterator[Running]:
    """The engine the review desk works with: the shipped model, a copy of the rules, a real Redis, its
    decision log in tmp_path/decisions, an admin port."""
    running = start(
        make_config(
            ROOT / "models",
            redis_url,
            rules=desk_rules,
            decision_log=tmp_path / "decisions",
            admin_port=0,
            reload_interval_s=0.2,
            # Readable ids in the cases, as the browser test reads them (pseudonymous logs work too:
            # test_data_protection.py blocks a card by its pseudonym).
            clear_ids=True,
        )
    )
    yield running
    running.stop(0.5)


@pytest.fixture(scope="session")
def spark_session() -> Iterator[object]:
    """One local[2] Spark session for the whole test run (its JVM takes seconds to start)."""
    from engine.offline.spark.session import start

    session = start("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A real standalone Spark cluster on this machine: a master and two one-core workers, from the PySpark install."""
    cluster = start_spark_cluster(tmp_path_factory.mktemp("spark-cluster"), free_port())
    yield cluster
    cluster.stop()


#: Fixtures that make a test need something, and the marker that says so.
_NEEDS = {
    "spark_session": "spark",
    "spark_cluster": "spark",
    "pg_url": "postgres",
    "desk_engine": "server",
    "redis_process": "redis",
    "redis_url": "redis",
    "own_redis": "redis",
    "redis_cluster": "cluster",
    "server": "server",
    "stub": "server",
    "trained_registry": "slow",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what its fixtures need (a module marks what they cannot show, with `pytestmark`)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for fixture, marker in _NEEDS.items():
            if fixture in names:
                item.add_marker(marker)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "store" in names and callspec.params.get("store") == "redis":
            item.add_marker("redis")
