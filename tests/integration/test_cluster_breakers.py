"""One breaker per Redis Cluster master: killing a master degrades only the calls that need it (issue 16).

A real local 3 + 3 cluster with `cluster-require-full-coverage no` (what the README recommends: with
Redis's default, every node refuses every command for about a second while the dead master's replica
is promoted, and every call is degraded then), a real gRPC server on it, one master killed under load.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest
import redis
from redis.crc import key_slot

from engine.service.pb import risk_pb2_grpc
from engine.service.server import start
from engine.windows.redis_cluster import RedisClusterStore
from tests.support.cluster import LocalCluster, start_cluster
from tests.support.requests import request
from tests.support.served import make_config

pytestmark = [pytest.mark.cluster, pytest.mark.server, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path, full_coverage=False)
    yield c
    c.stop()


def test_a_dead_master_degrades_only_the_calls_whose_keys_it_holds(
    cluster: LocalCluster, trained_registry: Path
) -> None:
    prefix = f"cb-{uuid.uuid4().hex[:8]}"
    ranges = cluster.slot_masters()
    victim = ranges[0][2]

    def master(key: str) -> int:
        slot = key_slot(key.encode())
        return next(port for start, end, port in ranges if start <= slot <= end)

    def keyed(on_victim: bool) -> tuple[str, str]:
        """A fresh (transaction id, card) whose keys all live on the victim's shard, or all elsewhere."""
        while True:
            tid, card = f"t-{uuid.uuid4().hex}", f"c-{uuid.uuid4().hex[:10]}"
            # The keys as the server's store names them (ids as pseudonyms).
            store = cast(RedisClusterStore, running.store)
            homes = {master(store._idem_key(tid)), master(store._entity_tag("card_id", card))}
            if (homes == {victim}) if on_victim else (victim not in homes):
                return tid, card

    running = start(make_config(trained_registry, (cluster.url, prefix), redis_budget_ms=200.0))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = risk_pb2_grpc.RiskEngineStub(channel)

    def score(on_victim: bool) -> bool:
        tid, card = keyed(on_victim)
        # Only a card: no other entity, so the call's keys are its record's and its card's.
        req = request(transaction_id=tid, card_id=card, user_id="", device_id="", ip="", merchant_id="")
        return bool(stub.Score(req, timeout=5).degraded)

    try:
        assert not score(True) and not score(False)
        redis.Redis(port=victim).execute_command("WAIT", 1, 2000)
        cluster.kill(victim)
        survivors_degraded = survivors = victim_degraded = 0
        recovered = 0
        # Most calls need the dead master: a store-wide breaker would open and take the others down too.
        for i in range(8000):  # until the replica took over and the victim's shard answers again
            if i % 4 == 0:
                survivors += 1
                survivors_degraded += score(False)
            elif score(True):
                victim_degraded += 1
                recovered = 0
            elif victim_degraded:
                recovered += 1
                if recovered >= 5:
                    break
        assert victim_degraded > 0, "killing the master should have degraded the calls that need it"
        assert recovered >= 5, "the victim's shard did not come back after the failover"
        assert survivors_degraded == 0, f"{survivors_degraded} of {survivors} calls on surviving masters degraded"
        states = running.store.breakers()
        assert states[f"127.0.0.1:{victim}"] in ("open", "half_open")  # the dead node's breaker, never closed again
        assert all(state == "closed" for name, state in states.items() if name != f"127.0.0.1:{victim}")
    finally:
        channel.close()
        running.stop(0.5)
