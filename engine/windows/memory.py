"""In-process window store: the embedded default and the store of offline replay.

Same semantics as the Redis store (a property test holds them equal): per
entity value and group, events ordered by (event time, transaction id), each
with the value the group aggregates; when an event at t is added, events
older than t minus the group's retention are dropped, and a value series
keeps at most the plan's cap of events.
"""

from __future__ import annotations

import threading
import time
import zlib
from bisect import bisect_left, bisect_right
from collections import OrderedDict

from engine.windows.spec import AGG_CODES, Aggregate, BoundWindows, WindowPlan
from engine.windows.store import IdempotencyConflict, WindowsOutcome

_COUNT = AGG_CODES[Aggregate.COUNT]
_SUM = AGG_CODES[Aggregate.SUM]
_MIN = AGG_CODES[Aggregate.MIN]
_MAX = AGG_CODES[Aggregate.MAX]
_DISTINCT = AGG_CODES[Aggregate.DISTINCT]
_MAX_ID = "\U0010ffff"  # sorts after every transaction id (ids are printable ASCII)


class _Series:
    """Events of one entity value in one group, in (event time, transaction id) order.

    `values` runs parallel to `events` so that sums, extremes and distinct
    counts work on plain slices.
    """

    __slots__ = ("events", "expires", "times", "values")

    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []  # sorted (event_time_ms, transaction_id)
        self.values: list[int | str] = []  # the aggregated value of each event ('' for counts)
        self.times: dict[str, int] = {}  # transaction id -> event time, to find a re-added id
        self.expires = 0.0  # wall clock (monotonic s) after which the series is idle, as Redis PEXPIRE

    def drop_oldest(self, n: int) -> None:
        for _, dropped in self.events[:n]:
            del self.times[dropped]
        del self.events[:n]
        del self.values[:n]


class MemoryStore:
    """Window and idempotency state in this process's memory.

    Thread-safe (one lock). Memory stays bounded:
    - a series idle for longer than its retention plus `max_event_delay_s`
      (wall clock since its last write, as Redis key expiry) is dropped; the
      series of one group expire in the order they were last written, so
      dropping them costs nothing per call;
    - a value series keeps at most the plan's `max_events_per_series` events;
    - idempotency records live `idempotency_ttl_s` (wall clock) and at most
      `max_records` are kept (the oldest go first), zlib-compressed;
    - `remember_responses=False` keeps no idempotency records at all, for
      replay over history (window updates are idempotent by transaction id
      regardless).
    """

    name = "memory"
    budget_s = 0.0

    def __init__(
        self,
        idempotency_ttl_s: float = 86400.0,
        remember_responses: bool = True,
        max_records: int = 1_000_000,
        max_event_delay_s: float = 86400.0 + 300.0,
    ) -> None:
        self._ttl_extra_s = max_event_delay_s
        # Per group: its series, least recently written first (same TTL, so same order of expiry).
        self._by_write: dict[str, OrderedDict[tuple[str, str], None]] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._seen: OrderedDict[str, tuple[float, str, bytes | None]] = OrderedDict()
        self._ttl = idempotency_ttl_s
        self._max_records = max_records
        self._remember = remember_responses
        self._lock = threading.Lock()

    def apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str) -> WindowsOutcome:
        with self._lock:
            if self._remember:
                now = time.monotonic()
                self._expire(now)
                seen = self._seen.get(bound.transaction_id)
                if seen is not None:
                    if seen[1] != fingerprint:
                        raise IdempotencyConflict(bound.transaction_id)
                    if seen[2] is not None:
                        return WindowsOutcome(replay=zlib.decompress(seen[2]).decode(), raw=())
                else:
                    self._seen[bound.transaction_id] = (now + self._ttl, fingerprint, None)
                    self._bound_records()
            self._drop_idle()
            return WindowsOutcome(replay=None, raw=self._update_and_read(plan, bound))

    def remember(self, transaction_id: str, fingerprint: str, response: str) -> None:
        if not self._remember:
            return
        record = zlib.compress(response.encode(), 1)
        with self._lock:
            self._seen[transaction_id] = (time.monotonic() + self._ttl, fingerprint, record)
            self._seen.move_to_end(transaction_id)
            self._bound_records()

    def close(self) -> None:
        pass

    def _drop_idle(self) -> None:
        """Forget series idle for longer than their TTL, as Redis lets such keys expire."""
        now = time.monotonic()
        for order in self._by_write.values():
            while order:
                key = next(iter(order))
                if self._series[key].expires >= now:
                    break
                del order[key]
                del self._series[key]

    def _bound_records(self) -> None:
        while len(self._seen) > self._max_records:
            self._seen.popitem(last=False)

    def _expire(self, now: float) -> None:
        while self._seen:
            key, (expires, _, _) = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[key]

    def _update_and_read(self, plan: WindowPlan, bound: BoundWindows) -> tuple[int, ...]:
        raw = [0] * plan.raw_size
        t = bound.event_time_ms
        txid = bound.transaction_id
        now = time.monotonic()
        cap = plan.max_events_per_series
        for bg in bound.groups:
            group = bg.group
            key = (group.storage, bg.entity_value)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
            series.expires = now + group.retention_ms / 1000.0 + self._ttl_extra_s
            order = self._by_write.setdefault(group.storage, OrderedDict())
            order[key] = None
            order.move_to_end(key)
            events, values, times = series.events, series.values, series.times
            old = times.get(txid)
            if old is not None:  # the same id again: replace, as ZADD does
                i = bisect_left(events, (old, txid))
                del events[i]
                del values[i]
            i = bisect_left(events, (t, txid))
            events.insert(i, (t, txid))
            values.insert(i, int(bg.value) if group.numeric else bg.value)
            times[txid] = t
            # Drop what no window can need any more: events older than this event's
            # time minus the retention (longest window + allowed lateness).
            cutoff = t - group.retention_ms
            if events[0][0] < cutoff:
                # Events with time < cutoff, as Redis drops scores in [-inf, cutoff).
                series.drop_oldest(bisect_left(events, (cutoff, "")))
            if group.value_field is not None and len(events) > cap:
                # A value series keeps at most `cap` events, oldest first out (as the Lua script).
                series.drop_oldest(len(events) - cap)
            hi = bisect_right(events, (t, _MAX_ID))
            for w in group.windows:
                lo = bisect_right(events, (t - w.duration_ms, _MAX_ID))
                code = w.agg_code
                if code == _COUNT:
                    raw[w.output] = hi - lo
                elif code == _DISTINCT:
                    distinct = set(values[lo:hi])
                    distinct.discard("")
                    raw[w.output] = len(distinct)
                elif code == _SUM:
                    raw[w.output] = sum(values[lo:hi])  # type: ignore[arg-type]
                elif code == _MIN:
                    raw[w.output] = min(values[lo:hi], default=0)  # type: ignore[type-var,assignment]
                elif code == _MAX:
                    raw[w.output] = max(values[lo:hi], default=0)  # type: ignore[type-var,assignment]
        return tuple(raw)
