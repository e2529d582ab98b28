"""Windows on a real local Redis Cluster (3 masters + 3 replicas): the pipeline, the gRPC server, failover.

The cluster store checks and claims the idempotency record (its own slot)
first, then sends one script call per entity value, one pipeline per master,
all masters together. These tests score through it, compare it with the
in-process store, flush and lose scripts, and kill a master.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from engine.pipeline import Pipeline
from engine.rules import load_ruleset
from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.service.server import start
from engine.transaction import Transaction
from engine.windows.breaker import BreakerPolicy
from engine.windows.memory import MemoryStore
from engine.windows.redis_cluster import RedisClusterStore
from engine.windows.store import IdempotencyConflict, StoreUnavailable
from tests.support import RULES
from tests.support.cluster import LocalCluster, start_cluster
from tests.support.served import make_config
from tests.support.windows import T0, event, plan, recorded_answer

pytestmark = [pytest.mark.cluster]

MIN = 60_000


@pytest.fixture
def cluster_store(redis_cluster: LocalCluster) -> Iterator[RedisClusterStore]:
    store = RedisClusterStore(redis_cluster.url, prefix=f"t-{uuid.uuid4().hex[:10]}", budget_s=2.0)
    yield store
    store.close()


def test_cluster_store_semantics_and_retries(cluster_store: RedisClusterStore) -> None:
    p = plan()
    assert event(cluster_store, p, "a", T0, amount=100)["card_count_10m"] == 1
    w = event(cluster_store, p, "b", T0 + MIN, device="d1", amount=300)
    assert (w["card_count_10m"], w["card_sum_10m"], w["card_max_10m"], w["device_cards_1h"]) == (2, 4.0, 3.0, 1)
    fields = {"card_id": "c1", "device_id": "d1", "merchant_id": "m1", "amount_base_minor": 300}
    # A retry racing the first attempt (record claimed, no response): nothing counts twice.
    again = cluster_store.apply(p, p.bind("b", T0 + MIN, fields), f"fp-b-{T0 + MIN}-c1-300")
    assert p.finish(again.raw)["card_count_10m"] == 2
    cluster_store.remember("b", f"fp-b-{T0 + MIN}-c1-300", recorded_answer("b"))
    replayed = cluster_store.apply(p, p.bind("b", T0 + MIN, fields), f"fp-b-{T0 + MIN}-c1-300").replay
    assert replayed == recorded_answer("b").to_json()
    # A reused id with other content is refused before any entity is touched.
    other = dict(fields, card_id="c9")
    with pytest.raises(IdempotencyConflict):
        cluster_store.apply(p, p.bind("b", T0 + 2 * MIN, other), "fp-other")
    assert event(cluster_store, p, "z", T0 + 2 * MIN, card="c9")["card_count_10m"] == 1


def test_each_entity_keys_share_a_slot_and_calls_are_one_per_entity(
    redis_cluster: LocalCluster, cluster_store: RedisClusterStore
) -> None:
    from redis.crc import key_slot

    p = plan()
    bound = p.bind("k1", T0, {"card_id": "c1", "device_id": "d1", "merchant_id": "m1", "amount_base_minor": 5})
    per_entity: dict[str, set[int]] = {}
    for bg in bound.groups:
        for key in cluster_store._group_keys(bg):
            per_entity.setdefault(key.split("}")[0], set()).add(key_slot(key.encode()))
    assert all(len(slots) == 1 for slots in per_entity.values())
    assert len(per_entity) == 3  # card, device, card+merchant: three script calls


def test_scripts_lost_on_every_master_are_loaded_again(
    redis_cluster: LocalCluster, cluster_store: RedisClusterStore
) -> None:
    p = plan()
    event(cluster_store, p, "s1", T0)
    for port in redis_cluster.masters():
        redis.Redis(port=port).script_flush()  # as after a failover to a replica, or a restart
    assert event(cluster_store, p, "s2", T0 + 1)["card_count_10m"] == 2
    assert cluster_store.warm_up(p)


def test_pipeline_on_the_cluster_equals_the_in_process_store(redis_cluster: LocalCluster) -> None:
    ruleset = load_ruleset(RULES)
    store = RedisClusterStore(redis_cluster.url, prefix=f"p-{uuid.uuid4().hex[:10]}", budget_s=2.0)
    on_cluster = Pipeline(ruleset, None, store, check_clock=False)
    in_process = Pipeline(ruleset, None, MemoryStore(), check_clock=False)
    try:
        for i in range(60):
            txn = Transaction(
                f"pipe-{i}",
                T0 + (i * 7919 % 60) * 30_000,  # out of order
                1_000 + i * 37,
                "EUR",
                card_id=f"c{i % 4}",
                user_id=f"u{i % 3}",
                device_id=f"d{i % 5}",
                ip=f"10.0.0.{i % 6}",
                merchant_id=f"m{i % 2}",
            )
            a, b = on_cluster.score(txn), in_process.score(txn)
            assert {k: v for k, v in a.fields.items() if k != "score"} == {
                k: v for k, v in b.fields.items() if k != "score"
            }, i
            assert not a.result.degraded
            again = on_cluster.score(txn)  # a retry: answered from the record
            assert again.replayed
    finally:
        store.close()


def test_grpc_server_on_the_cluster(redis_cluster: LocalCluster, trained_registry: Path) -> None:
    running = start(make_config(trained_registry, (redis_cluster.url, f"g-{uuid.uuid4().hex[:10]}")))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        now = Timestamp()
        now.GetCurrentTime()
        counts = []
        for i in range(3):
            request = risk_pb2.ScoreRequest(
                transaction=risk_pb2.Transaction(
                    transaction_id=f"grpc-{uuid.uuid4().hex}-{i}",
                    event_time=now,
                    amount_minor=1_000,
                    currency="EUR",
                    card_id="tok_cluster",
                    device_id="fp_cluster",
                    merchant_id="m-cluster",
                )
            )
            response = stub.Score(request, timeout=5)
            assert not response.degraded
            counts.append(response.features["card_count_10m"])
        assert counts == [1, 2, 3]
    finally:
        channel.close()
        running.stop(0.5)


def test_failover_keeps_answering_and_counts_once(tmp_path: Path) -> None:
    """Kill the master of a card's slot: calls degrade, then recover after failover, and nothing counts twice."""
    cluster = start_cluster(tmp_path)
    store = RedisClusterStore(cluster.url, prefix="fo", budget_s=0.2, breaker=BreakerPolicy(open_s=0.2))
    p = plan()
    fields = {"card_id": "c1", "device_id": "d1", "merchant_id": "m1", "amount_base_minor": 100}
    sent: list[tuple[str, int]] = []

    def apply(txid: str, t: int) -> dict[str, float]:
        return p.finish(store.apply(p, p.bind(txid, t, fields), f"fp-{txid}").raw)

    try:
        for i in range(5):
            sent.append((f"e{i}", T0 + i))
            apply(*sent[-1])
        victim = cluster.master_of(store._entity_tag("card_id", "c1"))
        redis.Redis(port=victim).execute_command("WAIT", 1, 2000)  # the replica has every write
        cluster.kill(victim)
        degraded = answered = 0
        deadline = time.monotonic() + 30
        i = 5
        while time.monotonic() < deadline:
            txid, t = f"e{i}", T0 + i
            try:
                w = apply(txid, t)
            except StoreUnavailable as exc:
                assert exc.kind in ("timeout", "connection", "open", "other")
                degraded += 1
                # The gateway retries the same transaction later (same id, same content).
                time.sleep(0.05)
                continue
            sent.append((txid, t))
            answered += 1
            i += 1
            if answered >= 3:
                break
        assert degraded > 0, "killing the master should have degraded some calls"
        assert answered >= 3, "the engine did not recover after the failover"
        # Every transaction (with the retried ones) is counted exactly once.
        for txid, t in sent:  # retries of everything: no change
            apply(txid, t)
        w = apply("final", T0 + 1000)
        assert w["card_count_10m"] == len(sent) + 1
        assert w["card_sum_10m"] == (len(sent) + 1) * 1.0
        assert victim not in cluster.masters()
    finally:
        store.close()
        cluster.stop()
