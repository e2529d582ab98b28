"""The window store in a Redis Cluster: one script call per entity value, pipelined per master.

Key layout, scripts and failure policy are those of `engine.windows.redis_store`
(a circuit breaker per master: calls whose keys live on other masters go on).
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError
from redis.retry import Retry

from engine.privacy import Pseudonyms
from engine.windows.breaker import Breaker, BreakerPolicy
from engine.windows.redis_store import CLAIM_SOURCE, OnBreaker, _RedisBase, counts_against_target, unavailable_kind
from engine.windows.spec import BoundGroup, BoundWindows, WindowPlan
from engine.windows.store import IdempotencyConflict, StoreUnavailable, WindowsOutcome


def parse_cluster_url(url: str) -> list[tuple[str, int]]:
    """'redis+cluster://h1:p1,h2:p2' -> [(h1, p1), (h2, p2)] (startup nodes)."""
    scheme = "redis+cluster://"
    if not url.startswith(scheme):
        raise ValueError(f"a Redis Cluster URL starts with {scheme}")
    rest = url[len(scheme) :].split("/", 1)[0].split("?", 1)[0]
    if "@" in rest:
        raise ValueError("passwords in a Redis Cluster URL are not supported yet")
    nodes = []
    for part in rest.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{part!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


class RedisClusterStore(_RedisBase):
    """Window and idempotency state in a Redis Cluster.

    Per transaction: (1) one call checks and claims the idempotency record (its
    own slot), before any entity is touched, so a reused id with other content
    never reaches a series; (2) one script call per entity value (its keys share
    a slot), grouped into one pipeline per master and sent to all masters
    together. Each round trip has half the budget. A NOSCRIPT reply (a master
    that lost its script cache: a failover, a restart) is answered with EVAL
    on that master, which caches the script there again.
    """

    name = "redis-cluster"

    def __init__(
        self,
        nodes: Sequence[tuple[str, int]] | str,
        *,
        prefix: str = "risk",
        budget_s: float = 0.05,
        connect_budget_s: float | None = None,
        breaker: BreakerPolicy | None = None,
        on_breaker: OnBreaker | None = None,
        idempotency_ttl_s: float = 86400.0,
        max_connections: int = 64,
        max_event_delay_s: float = 86400.0 + 300.0,
        write_behind: bool = True,
        pseudonyms: Pseudonyms | None = None,
    ) -> None:
        super().__init__(
            prefix, breaker, on_breaker, idempotency_ttl_s, max_event_delay_s, budget_s, write_behind, pseudonyms
        )
        if isinstance(nodes, str):
            nodes = parse_cluster_url(nodes)
        self._startup = [ClusterNode(h, p) for h, p in nodes]
        hop = budget_s / 2
        self._kwargs: dict[str, Any] = {
            "socket_timeout": hop,
            "socket_connect_timeout": connect_budget_s if connect_budget_s is not None else hop,
            "max_connections": max_connections,
            "health_check_interval": 0,
        }
        self._client: RedisCluster | None = None
        self._stale = True  # the slot map must be (re)read before the next call
        self._mapped_at = -1.0  # when the slot map was last read (read again at most every MAP_REFRESH_S)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="risk-cluster")
        self._claim_sha = hashlib.sha1(CLAIM_SOURCE.encode(), usedforsecurity=False).hexdigest()

    # -- topology ----------------------------------------------------------
    #: The slot map is read again after a failure, but at most this often: while a master is
    #: down, every call that needs it would otherwise ask a node for the map.
    MAP_REFRESH_S = 0.05

    def _cluster(self) -> RedisCluster:
        """The client with a fresh slot map (read again after a failure, at most every MAP_REFRESH_S)."""
        client = self._client
        if client is not None and not (self._stale and time.monotonic() - self._mapped_at >= self.MAP_REFRESH_S):
            return client
        with self._lock:
            if self._client is None:
                self._client = RedisCluster(
                    startup_nodes=self._startup,
                    retry=Retry(NoBackoff(), 0),
                    require_full_coverage=False,
                    reinitialize_steps=1,
                    **self._kwargs,
                )
                self._stale = False
            elif self._stale and time.monotonic() - self._mapped_at >= self.MAP_REFRESH_S:
                self._mapped_at = time.monotonic()
                self._client.nodes_manager.initialize()
                self._stale = False
            self._mapped_at = time.monotonic()
            return self._client

    def _node_client(self, cluster: RedisCluster, key: str) -> tuple[str, redis.Redis]:
        node = cluster.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        conn = node.redis_connection or cluster.get_redis_connection(node)
        return node.name, conn

    def _record_breaker(self, key: str) -> Breaker:
        try:
            return self.breaker(self._node_client(self._cluster(), key)[0])
        except (redis.RedisError, OSError) as exc:
            self._stale = True
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}", unavailable_kind(exc)) from exc

    # -- calls -------------------------------------------------------------
    def _run_node(self, conn: redis.Redis, calls: list[tuple[str, str, list[str], list[Any]]]) -> list[Any]:
        """One pipeline to one master: EVALSHA each call; NOSCRIPT ones again with EVAL."""
        pipe = conn.pipeline(transaction=False)
        for sha, _, keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        replies = pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            pipe = conn.pipeline(transaction=False)
            for i in missing:
                _, source, keys, args = calls[i]
                pipe.eval(source, len(keys), *keys, *args)
            for i, r in zip(missing, pipe.execute(raise_on_error=False), strict=True):
                replies[i] = r
        return cast(list[Any], replies)

    def _issue(
        self, per_node: dict[str, tuple[redis.Redis, list[tuple[str, str, list[str], list[Any]]]]]
    ) -> list[tuple[str, list[Any] | BaseException]]:
        """Run the pipelines of all masters together: per node, its replies in call order, or its error."""

        def run(conn: redis.Redis, calls: list[tuple[str, str, list[str], list[Any]]]) -> list[Any] | BaseException:
            try:
                return self._run_node(conn, calls)
            except (redis.RedisError, OSError) as exc:
                return exc

        items = list(per_node.items())
        if len(items) == 1:
            name, (conn, calls) = items[0]
            return [(name, run(conn, calls))]
        futures = [(name, self._pool.submit(run, conn, calls)) for name, (conn, calls) in items]
        return [(name, f.result()) for name, f in futures]

    def _fail(self, breaker: Breaker | None, exc: BaseException) -> NoReturn:
        self._stale = True  # a failover or a moved slot: read the slot map again
        self._failed(breaker, exc)

    @staticmethod
    def _cancel(breakers: dict[str, Breaker], used: str) -> None:
        """Give back the probes granted to a call for the masters it will not call after all."""
        for name, breaker in breakers.items():
            if name != used:
                breaker.cancel()

    def _admit(self, names: list[str]) -> list[Breaker]:
        """The breakers of the masters a call needs, each allowing it; StoreUnavailable('open') if one does not."""
        granted: list[Breaker] = []
        for name in names:
            breaker = self.breaker(name)
            if not breaker.allow():
                for other in granted:
                    other.cancel()
                self._stale = True  # a master that stays down may have been replaced: read the map again
                self._refuse(breaker)
            granted.append(breaker)
        return granted

    def apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str) -> WindowsOutcome:
        return self._apply(plan, bound, fingerprint, dry=False)

    def read(self, plan: WindowPlan, bound: BoundWindows) -> WindowsOutcome:
        """A dry run's windows: read, nothing written, no idempotency record checked or claimed."""
        return self._apply(plan, bound, "", dry=True)

    def _apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str, dry: bool) -> WindowsOutcome:
        script = self._source(plan)
        idem, idem_node, idem_conn = "", "", None
        try:
            cluster = self._cluster()
            if not dry:
                idem = self._idem_key(bound.transaction_id)
                queued = self._queued_answer(bound.transaction_id, idem, fingerprint)
                if queued is not None:
                    return queued
                idem_node, idem_conn = self._node_client(cluster, idem)
            # One script call per entity value, one pipeline per master (built before any call,
            # so that a call needing a master whose breaker is open touches nothing).
            by_entity: dict[tuple[str, str], list[BoundGroup]] = {}
            for bg in bound.groups:
                by_entity.setdefault((bg.group.tag, bg.entity_value), []).append(bg)
            targets: dict[str, tuple[redis.Redis, list[tuple[str, list[BoundGroup]]]]] = {}
            for (tag, value), groups in by_entity.items():
                name, conn = self._node_client(cluster, self._entity_tag(tag, value))
                targets.setdefault(name, (conn, []))[1].append((tag, groups))
        except (redis.RedisError, OSError) as exc:
            self._fail(None, exc)
        names = list(targets) if dry else [idem_node, *(name for name in targets if name != idem_node)]
        breakers = dict(zip(names, self._admit(names), strict=True))
        mode = "D"  # a dry run: no record, nothing written (windows.lua)
        if idem_conn is not None:
            # 1. The idempotency record, in its own slot: checked (and claimed) first.
            try:
                claim = self._run_node(
                    idem_conn, [(self._claim_sha, CLAIM_SOURCE, [idem], [fingerprint, self._ttl_ms])]
                )[0]
                if isinstance(claim, Exception):
                    raise claim
                status = int(claim[0])
            except (redis.RedisError, OSError) as exc:
                self._cancel(breakers, idem_node)
                self._fail(breakers[idem_node], exc)
            if status in (0, 1) or idem_node not in targets:
                breakers[idem_node].success()
            if status == 0:
                self._cancel(breakers, idem_node)
                raise IdempotencyConflict(bound.transaction_id)
            if status == 1:
                self._cancel(breakers, idem_node)
                return WindowsOutcome(replay=zlib.decompress(claim[1]).decode(), raw=())
            mode = "F" if status == 4 else "R"
        # 2. The entity scripts, all masters together.
        per_node: dict[str, tuple[redis.Redis, list[tuple[str, str, list[str], list[Any]]]]] = {}
        for name, (conn, entities) in targets.items():
            calls = per_node.setdefault(name, (conn, []))[1]
            for _, groups in entities:
                keys, args = self._script_args(bound, fingerprint, mode, groups, script.groups)
                calls.append((script.sha, script.source, keys, args))
        raw = [0] * plan.raw_size
        failure: tuple[str, BaseException] | None = None
        for name, replies in self._issue(per_node) if per_node else []:
            breaker = breakers[name]
            if isinstance(replies, BaseException):
                if counts_against_target(replies):
                    breaker.failure(f"{type(replies).__name__}: {replies}")
                else:
                    breaker.success()
                failure = failure or (name, replies)
                continue
            breaker.success()
            for reply in replies:
                if isinstance(reply, Exception):
                    failure = failure or (name, reply)
                    continue
                for i, v in enumerate(reply[1:]):
                    if v:
                        raw[i] += int(v)  # each output belongs to one entity's call; the others return 0
        if failure is not None:
            self._fail(None, failure[1])  # already counted against its master above
        return WindowsOutcome(replay=None, raw=tuple(raw))

    def _write_now(self, key: str, record: bytes) -> None:
        try:
            self._cluster().set(key, record, px=self._ttl_ms)
        except (redis.RedisError, OSError):
            self._stale = True  # a failover or a moved slot: read the slot map again
            raise

    def _write_records(self, items: Sequence[tuple[str, bytes]]) -> None:
        try:
            pipe = self._cluster().pipeline()
            for key, record in items:
                pipe.set(key, record, px=self._ttl_ms)
            pipe.execute()
        except (redis.RedisError, OSError):
            self._stale = True  # a failover or a moved slot: read the slot map again
            raise

    def ping(self) -> bool:
        try:
            return bool(self._cluster().ping(target_nodes=RedisCluster.PRIMARIES))
        except (redis.RedisError, OSError):
            self._stale = True
            return False

    def warm_up(self, plan: WindowPlan | None = None) -> bool:
        """Read the slot map, connect to every master and load the scripts there."""
        try:
            cluster = self._cluster()
            cluster.ping(target_nodes=RedisCluster.PRIMARIES)
            cluster.script_load(CLAIM_SOURCE)  # redis-py sends SCRIPT LOAD to every master
            if plan is not None:
                cluster.script_load(self._source(plan).source)
            return True
        except (redis.RedisError, OSError):
            self._stale = True
            return False

    def close(self) -> None:
        if self.records is not None:
            self.records.close()
        self._pool.shutdown(wait=False)
        if self._client is not None:
            self._client.close()
