"""Window stores in Redis: the standalone store (one Lua call per transaction), and what the cluster store shares.

The Redis Cluster store is `engine.windows.redis_cluster`.

Key layout (prefix `P`, entity fields `card_id`, value `c1`; `S` is '' or
`:f<hash of the filter>` for a window with a filter):
- `{P:card_id:c1}:nS`          sorted set of the entity's events (counts)
- `{P:card_id:c1}:z:FIELDS`    sorted set of the events whose FIELD is aggregated: member =
                               transaction id, US (\x1f), the FIELD value (issue 23)
- `{P:card_id:c1}:h:FIELDS`    the previous layout's hash transaction id -> FIELD value: never
                               written; a call that finds one moves its values into the members
- `{P:card_id:c1}:tS`          sorted set of the events of a group with time windows
                               (first seen, since previous, is new) longer than a day:
                               their times alone, capped like a value series (shorter
                               ones read the count series `:nS`)
- `{P:card_id:c1}:d:FIELDS`    distinct index of a group with a distinct window:
                               FIELD value -> time of its newest kept event
- `{P:card_id:c1}:bS`, `:b:FIELDS`  hourly buckets of a group with a window
                               reaching back more than a day: bucket index ->
                               "count" or "count sum min max"
- `P:idem:{TXID}`              idempotency record: fingerprint, newline, the response
                               (zlib-compressed JSON: about 300-500 bytes a transaction),
                               written behind the answer by default (engine/windows/records.py)
With `pseudonyms` (what the server passes unless `RISK_CLEAR_IDS` is on), `c1`
and `TXID` are their keyed hashes (`engine.privacy.Pseudonyms`: `p:` and 32 hex
digits), and so are the string values a group keeps (the ids distinct windows
count); numbers are kept as they are. Equal values hash equally: windows are
the same as on the clear values. The braces are Redis Cluster hash tags: all keys of one entity value share a
slot. Window keys expire after their retention plus the longest accepted event
delay (wall clock), records after the idempotency TTL, so idle entities cost
nothing.

Failure policy: socket timeouts within the budget, no client retries (a
payment cannot wait for redis-py's defaults), and a circuit breaker per
target (`engine.windows.breaker`): the standalone Redis, or each master of a
cluster. Timeouts and connection errors count against a target's breaker; an
error reply to one command (a stray key of the wrong type) or a cluster-wide
state (CLUSTERDOWN, a moved slot) does not, since the node answered. An open
breaker fails the calls that need its target fast (kind 'open'); on a
cluster, calls whose keys live on other masters go on as usual.
"""

from __future__ import annotations

import hashlib
import os
import select
import threading
import weakref
import zlib
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, NamedTuple, NoReturn, cast

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from engine.privacy import Pseudonyms
from engine.transaction import Recorded
from engine.windows.breaker import Breaker, BreakerPolicy
from engine.windows.records import RecordWriter
from engine.windows.spec import AGG_CODES, EXACT, TIME_FIELD, Aggregate, BoundGroup, BoundWindows, Group, WindowPlan
from engine.windows.store import IdempotencyConflict, StoreUnavailable, WindowsOutcome

LUA_SOURCE = resources.files("engine.windows").joinpath("windows.lua").read_text()

#: Check-and-claim of an idempotency record (Redis Cluster: the record lives in
#: its own slot, so it is checked before any entity is touched).
#: {0} reused id, {1, response} answered retry, {3} seen not answered, {4} new (claimed).
CLAIM_SOURCE = """
local seen = redis.call('GET', KEYS[1])
if not seen then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {4}
end
local nl = string.find(seen, '\\n', 1, true)
local fp = seen
if nl then fp = string.sub(seen, 1, nl - 1) end
if fp ~= ARGV[1] then return {0} end
if nl then return {1, string.sub(seen, nl + 1)} end
return {3}
"""


class _PlanScript(NamedTuple):
    """A plan's script, built once per plan: its text, its SHA1 (EVALSHA), and per group
    (by id) its index in the layout and the ends of its keys (after the entity's tag)."""

    source: str
    sha: str
    groups: dict[int, tuple[int, tuple[str, ...]]]


def _has_distinct(group: Group) -> bool:
    """Whether the group keeps a distinct index (a distinct window reads it)."""
    return any(w.agg_code == AGG_CODES[Aggregate.DISTINCT] for w in group.windows)


def _has_totals(group: Group) -> bool:
    """Whether the group keeps running totals of its hourly buckets (LAYOUT tells the script):
    it has bucketed windows, and none of them is a min or a max."""
    extremes = (AGG_CODES[Aggregate.MIN], AGG_CODES[Aggregate.MAX])
    return bool(group.bucket_retention_ms) and not any(
        w.mode != EXACT and w.agg_code in extremes for w in group.windows
    )


def _key_ends(g: Group, totals: Callable[[Group], bool] = _has_totals) -> tuple[str, ...]:
    """The group's keys after the entity's tag, in the order the script reads them."""
    if g.value_field == TIME_FIELD:
        return (f":t{g.suffix}",)  # a time series: its events' times alone
    field = g.suffix if g.value_field is None else f":{g.value_field}{g.suffix}"
    # (`:h` is the previous layout's hash of values, only read to migrate it: windows.lua)
    ends = [f":n{g.suffix}"] if g.value_field is None else [f":z{field}", f":h{field}"]
    if _has_distinct(g):
        ends.append(f":d{field}")
    if g.bucket_retention_ms:
        ends.append(f":b{field}")
    if totals(g):
        ends.append(f":r{field}")  # running totals of the hours
    return tuple(ends)


#: Breaker state changes: (target, old state, new state).
OnBreaker = Callable[[str, str, str], None]


def counts_against_target(exc: BaseException) -> bool:
    """Whether an error says the target itself failed (timeout, connection), not one command or the cluster's state."""
    if isinstance(exc, redis.ResponseError):
        return False  # the node answered: WRONGTYPE, CLUSTERDOWN, MOVED, TRYAGAIN, ...
    return isinstance(exc, redis.TimeoutError | redis.ConnectionError | OSError)


def unavailable_kind(exc: BaseException) -> str:
    """StoreUnavailable.kind of a redis-py error."""
    if isinstance(exc, redis.TimeoutError):
        return "timeout"
    if isinstance(exc, redis.ConnectionError | redis.exceptions.ClusterDownError | redis.exceptions.TryAgainError):
        return "connection"
    if isinstance(exc, redis.exceptions.MovedError | redis.exceptions.AskError):
        return "connection"  # the slot moved (failover or resharding): the map is refreshed
    return "other"


class _RedisBase:
    """What both stores share: keys, the per-plan script, the failure policy."""

    name = "redis"
    budget_s: float
    uses_fingerprints = True  # idempotency records live in Redis
    reads_groups = True
    records: RecordWriter | None

    def __init__(
        self,
        prefix: str,
        breaker: BreakerPolicy | None,
        on_breaker: OnBreaker | None,
        idempotency_ttl_s: float,
        max_event_delay_s: float,
        budget_s: float,
        write_behind: bool,
        pseudonyms: Pseudonyms | None = None,
    ) -> None:
        self.prefix = prefix
        #: Entity values (and the values distinct windows count) go to Redis as these keyed hashes; None: in clear.
        self.pseudonyms = pseudonyms
        self.budget_s = budget_s
        # Keys expire by wall clock, windows are in event time: a key must outlive
        # its retention by the longest an event may be delayed (validation's
        # max age plus lead), or a delayed event would find its history gone.
        self._ttl_extra_ms = int(max_event_delay_s * 1000)
        self._ttl_ms = int(idempotency_ttl_s * 1000)
        if self._ttl_ms <= 0:
            raise ValueError("idempotency_ttl_s must be positive")
        self._breaker_policy = breaker or BreakerPolicy()
        self._on_breaker = on_breaker
        self._breakers: dict[str, Breaker] = {}
        self._lock = threading.Lock()
        self._sources: weakref.WeakKeyDictionary[WindowPlan, _PlanScript] = weakref.WeakKeyDictionary()
        self.last_error = ""
        #: Retry records written behind the answer (None: written by `remember` itself, a round trip).
        self.records = RecordWriter(self._write_records, on_error=self._record_failed) if write_behind else None

    # -- retry records -----------------------------------------------------
    def remember(self, transaction_id: str, fingerprint: str, response: Recorded) -> None:
        key = self._idem_key(transaction_id)
        breaker = self._record_breaker(key)
        if breaker.state == "open":  # the target is down: do not queue records it cannot take
            self._refuse(breaker)
        if self.records is not None:
            self.records.put(key, fingerprint, response)
            return
        if not breaker.allow():
            self._refuse(breaker)
        try:
            self._write_now(key, RecordWriter.encode(fingerprint, response.to_json()))
        except (redis.RedisError, OSError) as exc:
            self._failed(breaker, exc)
        breaker.success()

    def _queued_answer(self, transaction_id: str, key: str, fingerprint: str) -> WindowsOutcome | None:
        """A retry of a transaction whose record is still queued here: answered as Redis would."""
        if self.records is None:
            return None
        queued = self.records.pending(key)
        if queued is None:
            return None
        if queued[0] != fingerprint:
            raise IdempotencyConflict(transaction_id)
        return WindowsOutcome(replay=queued[1], raw=())

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Write the queued retry records now; False when they are not all written within `timeout_s`."""
        return True if self.records is None else self.records.flush(timeout_s)

    def _write_now(self, key: str, record: bytes) -> None:
        """Write one record (write-behind off)."""
        raise NotImplementedError

    def _write_records(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Write the writer thread's batch of records."""
        raise NotImplementedError

    # -- keys --------------------------------------------------------------
    def _idem_key(self, transaction_id: str) -> str:
        if self.pseudonyms is not None:
            transaction_id = self.pseudonyms.of_once(transaction_id)
        return f"{self.prefix}:idem:{{{transaction_id}}}"

    def _entity_tag(self, group_tag: str, value: str) -> str:
        if self.pseudonyms is not None:
            value = self.pseudonyms.of(value)
        return f"{{{self.prefix}:{group_tag}:{value}}}"

    def _stored_value(self, bg: BoundGroup) -> str:
        """The value a group keeps with an event: a number as it is; an id (distinct windows) as its pseudonym."""
        if self.pseudonyms is None or bg.group.numeric or not bg.value:
            return bg.value
        return self.pseudonyms.of(bg.value)

    def _group_keys(self, bg: BoundGroup) -> list[str]:
        tag = self._entity_tag(bg.group.tag, bg.entity_value)
        return [tag + end for end in _key_ends(bg.group, self._totals)]

    #: The script (a test gives an older one, with its rule for running totals, to play a worker not upgraded).
    _lua = LUA_SOURCE
    _totals = staticmethod(_has_totals)

    def _source(self, plan: WindowPlan) -> _PlanScript:
        """The script for this plan (its layout written in as constants), built once per plan."""
        known = self._sources.get(plan)
        if known is not None:
            return known
        groups = []
        for g in plan.groups:
            ttl = max(g.retention_ms, g.bucket_retention_ms) + self._ttl_extra_ms
            timed = g.value_field == TIME_FIELD
            nums = [0 if g.value_field is None or timed else 1, g.retention_ms, ttl, plan.max_events_per_series]
            nums += [g.bucket_retention_ms, 1 if _has_distinct(g) else 0, 1 if self._totals(g) else 0, int(timed)]
            for w in g.windows:
                nums += [w.output, w.agg_code, w.duration_ms + w.delay_ms, w.delay_ms, w.mode]
            groups.append("{" + ", ".join(str(n) for n in nums) + "}")
        header = f"local LAYOUT = {{{', '.join(groups)}}}\nlocal RAW_SIZE = {plan.raw_size}\n"
        source = header + self._lua
        built = _PlanScript(
            source,
            hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest(),
            {id(g): (i + 1, _key_ends(g, self._totals)) for i, g in enumerate(plan.groups)},
        )
        with self._lock:
            return self._sources.setdefault(plan, built)

    def _script_args(
        self,
        bound: BoundWindows,
        fingerprint: str,
        mode: str,
        groups: Sequence[BoundGroup],
        index: dict[int, tuple[int, tuple[str, ...]]],
    ) -> tuple[list[str], list[str | int]]:
        keys: list[str] = []
        args: list[str | int] = [
            bound.transaction_id,
            bound.event_time_ms,
            fingerprint,
            self._ttl_ms,
            len(groups),
            mode,
        ]
        for bg in groups:
            at, ends = index[id(bg.group)]
            tag = self._entity_tag(bg.group.tag, bg.entity_value)
            keys += [tag + end for end in ends]
            args += [at, self._stored_value(bg), 1 if bg.add else 0]
        return keys, args

    # -- failure handling --------------------------------------------------
    def breaker(self, target: str) -> Breaker:
        """The circuit breaker of one target (created closed on first use)."""
        found = self._breakers.get(target)
        if found is not None:
            return found
        with self._lock:
            return self._breakers.setdefault(target, Breaker(target, self._breaker_policy, on_change=self._on_breaker))

    def breakers(self) -> dict[str, str]:
        """Each target's breaker state (closed, half_open, open), for metrics and Status."""
        return {name: b.state for name, b in list(self._breakers.items())}

    def _record_breaker(self, key: str) -> Breaker:
        """The breaker of the target that holds a retry record."""
        raise NotImplementedError

    def _refuse(self, breaker: Breaker) -> NoReturn:
        raise StoreUnavailable(f"redis {breaker.name} unavailable (breaker open after: {breaker.last_error})", "open")

    def _failed(self, breaker: Breaker | None, exc: BaseException) -> NoReturn:
        """A call failed: count it against its target's breaker when the target itself failed, then raise."""
        error = f"{type(exc).__name__}: {exc}"
        self.last_error = error
        if breaker is not None:
            if counts_against_target(exc):
                breaker.failure(error)
            else:
                breaker.success()  # the node answered (an error reply): it is up
        raise StoreUnavailable(error, unavailable_kind(exc)) from exc

    def _record_failed(self, exc: BaseException) -> str:
        """The record writer's failures: noted like a call's; returns the StoreUnavailable kind."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        return unavailable_kind(exc)


class RedisStore(_RedisBase):
    """Window and idempotency state in a standalone Redis: one script call per transaction."""

    name = "redis"

    def __init__(
        self,
        url: str,
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
        no_retry = Retry(NoBackoff(), 0)
        # The pool serves the other commands (ping, the script's load, records written while the
        # answer waits): a thread waits (up to the budget) for a free connection instead of
        # failing, and the pool never grows past max_connections.
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
        # Each scoring thread's own connection (`_connection`), made from the pool's settings: taking one
        # from the pool and giving it back (its queue, a poll of the socket, redis-py's bookkeeping)
        # cost about 40 µs of CPU per call. A thread uses its connection for one command at a time
        # and reads every reply (or drops the connection), so nothing is ever left on it.
        self._local = threading.local()
        self._thread_conns: weakref.WeakSet[redis.Connection] = weakref.WeakSet()  # closed by `close`
        self._record_conn: redis.Connection | None = None  # the record writer's (write-behind)
        self._record_pid = 0
        kw = pool.connection_kwargs
        #: The one target's name, as its breaker and metrics know it.
        self.target = f"{kw['host']}:{kw['port']}" if "host" in kw else str(kw.get("path", "redis"))
        self._target_breaker = self.breaker(self.target)

    def _record_breaker(self, key: str) -> Breaker:
        return self._target_breaker

    def apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str) -> WindowsOutcome:
        idem = self._idem_key(bound.transaction_id)
        queued = self._queued_answer(bound.transaction_id, idem, fingerprint)
        if queued is not None:
            return queued
        script = self._source(plan)
        keys, args = self._script_args(bound, fingerprint, "S", bound.groups, script.groups)
        reply = self._call(script, [idem, *keys], args)
        kind = int(reply[0])
        if kind == 0:
            raise IdempotencyConflict(bound.transaction_id)
        if kind == 1:
            body = reply[1]
            assert isinstance(body, bytes)
            return WindowsOutcome(replay=zlib.decompress(body).decode(), raw=())
        return WindowsOutcome(replay=None, raw=tuple(int(v) for v in reply[1:]))

    def read(self, plan: WindowPlan, bound: BoundWindows) -> WindowsOutcome:
        """A dry run's windows: read, nothing written, no idempotency record checked or claimed."""
        script = self._source(plan)
        keys, args = self._script_args(bound, "", "D", bound.groups, script.groups)
        reply = self._call(script, keys, args)
        return WindowsOutcome(replay=None, raw=tuple(int(v) for v in reply[1:]))

    def _write_now(self, key: str, record: bytes) -> None:
        self._client.set(key, record, px=self._ttl_ms)

    def _write_records(self, items: Sequence[tuple[str, bytes]]) -> None:
        # The writer's own connection, the SETs sent as one packed write: half the CPU
        # of a redis-py pipeline object, and no pooled connection taken from the callers.
        conn = self._record_conn
        if conn is None or self._record_pid != os.getpid():  # first batch, or a forked worker's
            conn = self._record_conn = redis.Connection(**self._client.connection_pool.connection_kwargs)
            self._record_pid = os.getpid()
        commands = [("SET", key, record, "PX", self._ttl_ms) for key, record in items]
        try:
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            for _ in commands:
                conn.read_response()
        except BaseException:
            conn.disconnect()  # replies may be left unread: a new connection next time
            raise

    def close(self) -> None:
        if self.records is not None:
            self.records.close()
        if self._record_conn is not None and self._record_pid == os.getpid():
            self._record_conn.disconnect()
        with self._lock:
            conns = list(self._thread_conns)
        for conn in conns:
            conn.disconnect()
        self._client.close()

    def _connection(self) -> redis.Connection:
        """This thread's connection (connected on first use; made again in a forked process).

        A connection between two calls has nothing to read. When its socket is readable, Redis
        closed it (a restart, a failover, an idle timeout) or sent something nobody asked for:
        it is dropped and the call connects again, as the pool does for a connection it hands out.
        """
        local = self._local
        conn: redis.Connection | None = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            pool = self._client.connection_pool
            conn = local.conn = pool.connection_class(**pool.connection_kwargs)
            local.pid = os.getpid()
            with self._lock:
                self._thread_conns.add(conn)  # (a thread that ends takes its connection with it)
            return conn
        sock = conn._sock
        if sock is not None:
            try:
                stale = bool(select.select((sock,), (), (), 0)[0])
            except (OSError, ValueError):
                stale = True
            if stale:
                conn.disconnect()
        return conn

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def warm_up(self, plan: WindowPlan | None = None) -> bool:
        """Open a pooled connection and load the plan's script, before the first call needs them."""
        try:
            self._client.ping()
            if plan is not None:
                self._client.script_load(self._source(plan).source)
            return True
        except redis.RedisError:
            return False

    def _call(self, script: _PlanScript, keys: list[str], args: list[str | int]) -> list[bytes | int]:
        """EVALSHA on a pooled connection (EVAL when Redis lost its script cache: a restart, SCRIPT FLUSH).

        The connection is used directly, the command packed by hiredis itself: redis-py's
        Script and command layers (and its packer's pass over every argument) add tens
        of microseconds per call on a slow box, for retries this store turns off.
        """
        breaker = self._target_breaker
        if not breaker.allow():
            self._refuse(breaker)
        conn = self._connection()
        try:
            try:
                # (hiredis's stub types the argument as a 1-tuple)
                packed = hiredis.pack_command(cast(Any, ("EVALSHA", script.sha, len(keys), *keys, *args)))
                conn.send_packed_command([packed], check_health=False)
                reply = conn.read_response()
            except NoScriptError:  # a whole reply was read: the connection is in step
                conn.send_command("EVAL", script.source, len(keys), *keys, *args, check_health=False)
                reply = conn.read_response()
        except redis.ResponseError as exc:
            self._failed(breaker, exc)
        except BaseException as exc:
            conn.disconnect()  # a reply may still come: never read by the next call
            if isinstance(exc, redis.RedisError | OSError):
                self._failed(breaker, exc)
            raise
        breaker.success()
        return cast(list[bytes | int], reply)
