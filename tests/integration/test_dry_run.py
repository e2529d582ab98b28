"""Dry runs (the sandbox): scored against live state, read-only, on a real server with a real Redis or Redis Cluster."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from engine.decision_log import read_records
from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.service.server import Running, start
from engine.transaction import Action, Transaction
from engine.windows.memory import MemoryStore
from tests.support.redis import redis_contents, redis_or_cluster
from tests.support.requests import now_ms, request
from tests.support.served import make_config


@pytest.fixture(params=["redis", "cluster"])
def served(
    request: pytest.FixtureRequest, trained_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Running, list[redis.Redis], str]]:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    prefix = f"dry-{uuid.uuid4().hex[:10]}"
    url, clients = redis_or_cluster(request)
    running = start(make_config(trained_registry, (url, prefix), decision_log=tmp_path / "decisions"))
    yield running, clients, prefix
    running.stop(0.5)
    for c in clients:
        for k in list(c.scan_iter(match=f"*{prefix}*", count=1000)):
            c.delete(k)
        c.close()


def test_a_thousand_dry_runs_leave_every_window_and_record_unchanged(
    served: tuple[Running, list[redis.Redis], str],
) -> None:
    running, clients, prefix = served
    stub = risk_pb2_grpc.RiskEngineStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    t0 = now_ms() - 60_000
    real = []
    for i in range(6):  # real history: two cards, devices shared, a merchant with spaces in its id
        req = request(
            card_id=f"c-{i % 2}",
            device_id=f"d-{i % 3}",
            merchant_id="ACME Coffee 咖啡",
            amount_minor=1_000 + i,
            event_time_ms=t0 + i,
        )
        answer = stub.Score(req, timeout=5)
        assert not answer.dry_run and not answer.degraded
        real.append((req, answer))
    assert running.store.flush(5.0)
    before = redis_contents(clients, f"*{prefix}*")
    assert len(before) > 10

    for i in range(1000):
        if i % 4 == 0:  # the id of a transaction scored for real: not replayed, not a conflict
            req = risk_pb2.ScoreRequest()
            req.CopyFrom(real[i % 6][0])
            req.transaction.amount_minor += 1
        else:
            req = request(
                card_id=f"c-{i % 3}",  # c-2 is new
                device_id=f"d-{i % 5}",
                user_id=f"u-{i}",
                merchant_id="ACME Coffee 咖啡",
                event_time_ms=t0 + 10 + i,
            )
        req.dry_run = True
        answer = stub.Score(req, timeout=5)
        assert answer.dry_run and not answer.degraded
        # Live state is read: a card with history sees it (without the dry run itself in it).
        if i % 4 == 0:
            continue  # at the time of a real one: its windows end there
        if req.transaction.card_id == "c-0":
            assert answer.features["card_count_10m"] == 3
        elif req.transaction.card_id == "c-2":
            assert answer.features["card_count_10m"] == 0
    assert running.store.flush(5.0)
    assert redis_contents(clients, f"*{prefix}*") == before

    # The real transactions still answer their retries from their records, and the windows go on from there.
    for req, answer in real:
        assert stub.Score(req, timeout=5) == answer
    nxt = stub.Score(request(card_id="c-0", event_time_ms=t0 + 5_000), timeout=5)
    assert nxt.features["card_count_10m"] == 4 and not nxt.dry_run

    assert running.decisions is not None
    records = list(read_records(running.decisions.folder))
    assert sum(1 for r in records if r.get("dry_run")) == 1000
    assert sum(1 for r in records if not r.get("dry_run")) == 7


def test_a_dry_run_on_the_in_process_store_writes_nothing(trained_registry: Path) -> None:
    running = start(make_config(trained_registry, None))
    try:
        store = running.store
        assert isinstance(store, MemoryStore)
        txn = Transaction("dr-1", now_ms(), 2_500, "EUR", card_id="c-mem", device_id="d-mem")
        running.pipeline.score(txn)
        count, records = store.series_count(), len(store._seen)
        for i in range(200):
            result = running.pipeline.score(
                Transaction(f"dr-x{i}", now_ms(), 100 + i, "EUR", card_id=f"c-new-{i}", device_id="d-mem"),
                dry_run=True,
            ).result
            assert result.dry_run and result.decision in (Action.ALLOW, Action.REVIEW, Action.DENY)
        assert (store.series_count(), len(store._seen)) == (count, records)
        again = running.pipeline.score(Transaction("dr-2", now_ms(), 2_500, "EUR", card_id="c-mem")).result
        assert again.features["card_count_10m"] == 2
    finally:
        running.stop(0.5)
