"""Window store in Redis: one Lua call per transaction, with a strict time budget.

Key layout (prefix `P`, entity fields `card_id`, value `c1`):
- `{P:card_id:c1}:n`          sorted set of the entity's events (counts)
- `{P:card_id:c1}:z:FIELD`    sorted set of the events whose FIELD is aggregated
- `{P:card_id:c1}:h:FIELD`    hash transaction id -> FIELD value
- `P:idem:{TXID}`             idempotency record: fingerprint, newline, the response
                              (zlib-compressed JSON: about 300-500 bytes a transaction)
The braces are Redis Cluster hash tags: all keys of one entity value share a
slot. Window keys expire after their retention plus the longest accepted event
delay (wall clock), records after the idempotency TTL, so idle entities cost
nothing.

Failure policy: socket timeouts equal to the budget, no client retries (a
payment cannot wait for redis-py's defaults), and after a failure the store
fails fast for `cooldown_s` before it tries Redis again.
"""

from __future__ import annotations

import threading
import time
import weakref
import zlib
from importlib import resources
from typing import NoReturn, cast

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from engine.windows.spec import BoundWindows, WindowPlan
from engine.windows.store import IdempotencyConflict, StoreUnavailable, WindowsOutcome

LUA_SOURCE = resources.files("engine.windows").joinpath("windows.lua").read_text()


class RedisStore:
    """Window and idempotency state in a standalone Redis."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "risk",
        budget_s: float = 0.05,
        connect_budget_s: float | None = None,
        cooldown_s: float = 0.5,
        idempotency_ttl_s: float = 86400.0,
        max_connections: int = 64,
        max_event_delay_s: float = 86400.0 + 300.0,
    ) -> None:
        self.prefix = prefix
        # Keys expire by wall clock, windows are in event time: a key must outlive
        # its retention by the longest an event may be delayed (validation's
        # max age plus lead), or a delayed event would find its history gone.
        self._ttl_extra_ms = int(max_event_delay_s * 1000)
        self.budget_s = budget_s
        no_retry = Retry(NoBackoff(), 0)
        # A blocking pool: a thread waits (up to the budget) for a free connection
        # instead of failing, and the pool never grows past max_connections.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=budget_s,
            socket_timeout=budget_s,
            socket_connect_timeout=connect_budget_s if connect_budget_s is not None else budget_s,
            retry=no_retry,
            health_check_interval=0,
        )
        self._client = redis.Redis(connection_pool=pool, retry=no_retry)
        self._plans: weakref.WeakKeyDictionary[WindowPlan, tuple[Script, dict[int, int]]] = weakref.WeakKeyDictionary()
        self._ttl_ms = int(idempotency_ttl_s * 1000)
        self._cooldown = cooldown_s
        self._open_until = 0.0
        self._lock = threading.Lock()
        self.last_error = ""
        if self._ttl_ms <= 0:
            raise ValueError("idempotency_ttl_s must be positive")

    # -- keys --------------------------------------------------------------
    def _idem_key(self, transaction_id: str) -> str:
        return f"{self.prefix}:idem:{{{transaction_id}}}"

    def _entity_tag(self, group_tag: str, value: str) -> str:
        return f"{{{self.prefix}:{group_tag}:{value}}}"

    # -- store protocol ----------------------------------------------------
    def _compiled(self, plan: WindowPlan) -> tuple[Script, dict[int, int]]:
        """The script for this plan (its layout written in as constants) and each group's index, once per plan."""
        known = self._plans.get(plan)
        if known is not None:
            return known
        groups = []
        for g in plan.groups:
            nums = [0 if g.value_field is None else 1, g.retention_ms, g.retention_ms + self._ttl_extra_ms]
            nums.append(plan.max_events_per_series)
            for w in g.windows:
                nums += [w.output, w.agg_code, w.duration_ms]
            groups.append("{" + ", ".join(str(n) for n in nums) + "}")
        header = f"local LAYOUT = {{{', '.join(groups)}}}\nlocal RAW_SIZE = {plan.raw_size}\n"
        script = cast(Script, self._client.register_script(header + LUA_SOURCE))
        built = (script, {id(g): i + 1 for i, g in enumerate(plan.groups)})
        with self._lock:
            return self._plans.setdefault(plan, built)

    def apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str) -> WindowsOutcome:
        script, index = self._compiled(plan)
        keys = [self._idem_key(bound.transaction_id)]
        args: list[str | int] = [
            bound.transaction_id,
            bound.event_time_ms,
            fingerprint,
            self._ttl_ms,
            len(bound.groups),
        ]
        for bg in bound.groups:
            g = bg.group
            tag = self._entity_tag(g.tag, bg.entity_value)
            if g.value_field is None:
                keys.append(f"{tag}:n")
            else:
                keys.append(f"{tag}:z:{g.value_field}")
                keys.append(f"{tag}:h:{g.value_field}")
            args += [index[id(g)], bg.value]
        reply = self._call(script, keys, args)
        kind = int(reply[0])
        if kind == 0:
            raise IdempotencyConflict(bound.transaction_id)
        if kind == 1:
            body = reply[1]
            assert isinstance(body, bytes)
            return WindowsOutcome(replay=zlib.decompress(body).decode(), raw=())
        return WindowsOutcome(replay=None, raw=tuple(int(v) for v in reply[1:]))

    def remember(self, transaction_id: str, fingerprint: str, response: str) -> None:
        self._guard()
        try:
            record = fingerprint.encode() + b"\n" + zlib.compress(response.encode(), 1)
            self._client.set(self._idem_key(transaction_id), record, px=self._ttl_ms)
        except redis.RedisError as exc:
            self._trip(exc)

    def close(self) -> None:
        self._client.close()

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    # -- failure handling --------------------------------------------------
    def _call(self, script: Script, keys: list[str], args: list[str | int]) -> list[bytes | int]:
        self._guard()
        try:
            return cast(list[bytes | int], script(keys=keys, args=args))
        except redis.RedisError as exc:
            self._trip(exc)
        raise AssertionError("unreachable")

    def _guard(self) -> None:
        if time.monotonic() < self._open_until:
            raise StoreUnavailable(f"redis unavailable (cooling down after: {self.last_error})")

    def _trip(self, exc: Exception) -> NoReturn:
        with self._lock:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._open_until = time.monotonic() + self._cooldown
        raise StoreUnavailable(self.last_error) from exc
